//! What an op's CPU dispatch sees while it runs: its call, its inputs (read from the backend's
//! storage) and its outputs (taken out of the storage for the duration, so that they can be
//! written while the inputs are borrowed). Each op's dispatch lives beside its kernel in
//! `kernels/<op>.rs` and reads its operands by name through [`OpCall::operands`].

use half::{bf16, f16};
use rayon::prelude::*;
use std::collections::HashMap;
use std::ops::Deref;
use std::sync::Mutex;
use tperf_core::backend::{BackendError, OpCall};
use tperf_core::comm::Communicator;
use tperf_core::tensor::{Tensor, TensorId, TensorName};

pub(crate) const NAME: &str = "cpu";

/// A tensor's storage. Kernels compute in f32; a 16-bit tensor is widened when an op reads it
/// ([`Exec::f32`]) and, when an op writes it, widened into an f32 temporary for the op and
/// narrowed back when the op finishes (`CpuBackend::exec`).
pub(crate) enum Data {
    F32(Vec<f32>),
    Bf16(Vec<bf16>),
    F16(Vec<f16>),
    I32(Vec<i32>),
}

/// Elements per rayon task when widening or narrowing: 64 Ki elements (256 KiB of f32) is
/// enough work to hide a task's overhead and small enough to split a 2048-wide row block.
const CONVERT_CHUNK: usize = 1 << 16;

/// A 16-bit float format the storage holds.
pub(crate) trait Half: Copy + Send + Sync {
    fn widen(self) -> f32;
    /// Round to nearest even: the same function as `tperf_core::ops::cast::round_to`, so a
    /// stored value is bit for bit what the f32 emulation held.
    fn narrow(x: f32) -> Self;
}

impl Half for bf16 {
    fn widen(self) -> f32 {
        self.to_f32()
    }
    fn narrow(x: f32) -> Self {
        bf16::from_f32(x)
    }
}

impl Half for f16 {
    fn widen(self) -> f32 {
        self.to_f32()
    }
    fn narrow(x: f32) -> Self {
        f16::from_f32(x)
    }
}

/// `src` as f32, exactly (every bf16 and f16 value is an f32).
pub(crate) fn widen<H: Half>(src: &[H]) -> Vec<f32> {
    let mut out = vec![0.0; src.len()];
    widen_into(src, &mut out);
    out
}

/// dst = `src` as f32, in parallel.
fn widen_into<H: Half>(src: &[H], dst: &mut [f32]) {
    dst.par_chunks_mut(CONVERT_CHUNK)
        .zip(src.par_chunks(CONVERT_CHUNK))
        .for_each(|(o, s)| o.iter_mut().zip(s).for_each(|(o, &s)| *o = s.widen()));
}

/// Vectors that 16-bit inputs are widened into, reused from op to op. A fresh vector per read
/// costs more than the widening: glibc maps an allocation above 32 MiB and unmaps it when it
/// is freed, so every matmul's W (16 to 262 MB for a 1.5B model) was page-faulted in anew,
/// 4 KiB at a time, at every call. Kept: at most [`WidenPool::KEPT`] vectors, enough for one
/// op's 16-bit inputs (a matmul's W and bias, a norm's gain and bias), so the pool holds at
/// most the f32 size of the four largest weights (the head, 262 MB, and three under 100 MB
/// for the 1.5B model).
#[derive(Default)]
pub(crate) struct WidenPool(Mutex<Vec<Vec<f32>>>);

impl WidenPool {
    const KEPT: usize = 4;

    /// A vector of `n` elements (their values are whatever the last user left).
    fn take(&self, n: usize) -> Vec<f32> {
        let mut kept = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // The smallest that holds n, else the largest (grown below).
        let fits = (0..kept.len())
            .filter(|&i| kept[i].capacity() >= n)
            .min_by_key(|&i| kept[i].capacity());
        let largest = (0..kept.len()).max_by_key(|&i| kept[i].capacity());
        let mut v = match fits.or(largest) {
            Some(i) => kept.swap_remove(i),
            None => Vec::new(),
        };
        drop(kept);
        v.resize(n, 0.0);
        v
    }

    fn give(&self, v: Vec<f32>) {
        let mut kept = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        kept.push(v);
        if kept.len() > Self::KEPT {
            let smallest = (0..kept.len()).min_by_key(|&i| kept[i].capacity());
            if let Some(i) = smallest {
                kept.swap_remove(i);
            }
        }
    }
}

/// An input's data as f32 for a kernel: the storage itself, or a 16-bit tensor widened into a
/// pooled vector that goes back to the pool when the kernel drops it.
pub(crate) enum F32Input<'a> {
    Stored(&'a [f32]),
    Widened { data: Vec<f32>, pool: &'a WidenPool },
}

impl Deref for F32Input<'_> {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        match self {
            F32Input::Stored(v) => v,
            F32Input::Widened { data, .. } => data,
        }
    }
}

impl Drop for F32Input<'_> {
    fn drop(&mut self) {
        if let F32Input::Widened { data, pool } = self {
            pool.give(std::mem::take(data));
        }
    }
}

/// dst = src rounded to `H`.
pub(crate) fn narrow_into<H: Half>(src: &[f32], dst: &mut [H]) {
    dst.par_chunks_mut(CONVERT_CHUNK)
        .zip(src.par_chunks(CONVERT_CHUNK))
        .for_each(|(d, s)| d.iter_mut().zip(s).for_each(|(d, &s)| *d = H::narrow(s)));
}

impl Data {
    /// Bytes the storage holds.
    pub(crate) fn bytes(&self) -> usize {
        match self {
            Data::F32(v) => std::mem::size_of_val(&v[..]),
            Data::Bf16(v) => std::mem::size_of_val(&v[..]),
            Data::F16(v) => std::mem::size_of_val(&v[..]),
            Data::I32(v) => std::mem::size_of_val(&v[..]),
        }
    }

    /// Elements held, whatever the storage.
    pub(crate) fn len(&self) -> usize {
        match self {
            Data::F32(v) => v.len(),
            Data::Bf16(v) => v.len(),
            Data::F16(v) => v.len(),
            Data::I32(v) => v.len(),
        }
    }
}

pub(crate) struct Buffer {
    pub name: TensorName,
    pub data: Data,
}

pub(crate) fn missing(what: String) -> BackendError {
    BackendError::Device {
        backend: NAME,
        message: what,
    }
}

/// An input as it is stored, for kernels that read part of a 16-bit weight (the embedding's
/// gather of n rows of V) instead of widening it all.
#[derive(Clone, Copy)]
pub(crate) enum Stored<'a> {
    F32(&'a [f32]),
    Bf16(&'a [bf16]),
    F16(&'a [f16]),
}

impl Stored<'_> {
    pub fn len(&self) -> usize {
        match self {
            Stored::F32(v) => v.len(),
            Stored::Bf16(v) => v.len(),
            Stored::F16(v) => v.len(),
        }
    }

    /// dst = elements `start..start + dst.len()` as f32, on the calling thread (callers run it
    /// inside their own parallel tasks).
    pub fn widen_into(&self, start: usize, dst: &mut [f32]) {
        let end = start + dst.len();
        match self {
            Stored::F32(v) => dst.copy_from_slice(&v[start..end]),
            Stored::Bf16(v) => dst
                .iter_mut()
                .zip(&v[start..end])
                .for_each(|(d, s)| *d = s.widen()),
            Stored::F16(v) => dst
                .iter_mut()
                .zip(&v[start..end])
                .for_each(|(d, s)| *d = s.widen()),
        }
    }
}

/// The outputs of one op, taken out of the storage while the op runs.
pub(crate) struct Outs(pub Vec<(TensorId, Data)>);

impl Outs {
    fn index(&self, t: &Tensor) -> Result<usize, BackendError> {
        self.0
            .iter()
            .position(|(id, _)| *id == t.id)
            .ok_or_else(|| missing(format!("tensor #{} is not an output of this op", t.id.0)))
    }

    /// `N` distinct f32 outputs at once.
    pub fn f32s<const N: usize>(
        &mut self,
        ts: [&Tensor; N],
    ) -> Result<[&mut [f32]; N], BackendError> {
        let mut at = [0; N];
        for (slot, t) in at.iter_mut().zip(ts) {
            *slot = self.index(t)?;
        }
        let data = self
            .0
            .get_disjoint_mut(at)
            .map_err(|_| missing("an op writes one output twice".into()))?;
        let mut out = Vec::with_capacity(N);
        for (_, d) in data {
            match d {
                Data::F32(v) => out.push(&mut v[..]),
                // The backend widens 16-bit outputs into f32 temporaries before the op runs.
                Data::Bf16(_) | Data::F16(_) => {
                    return Err(missing("a 16-bit output was not widened for the op".into()))
                }
                Data::I32(_) => return Err(missing("an f32 output is i32".into())),
            }
        }
        Ok(out.try_into().unwrap_or_else(|_| unreachable!("N outputs")))
    }

    pub fn f32(&mut self, t: &Tensor) -> Result<&mut [f32], BackendError> {
        let [v] = self.f32s([t])?;
        Ok(v)
    }

    pub fn i32(&mut self, t: &Tensor) -> Result<&mut [i32], BackendError> {
        let i = self.index(t)?;
        match &mut self.0[i].1 {
            Data::I32(v) => Ok(v),
            _ => Err(missing("an i32 output is a float tensor".into())),
        }
    }
}

/// One op's execution context.
pub(crate) struct Exec<'a> {
    pub call: &'a OpCall,
    pub buffers: &'a HashMap<TensorId, Buffer>,
    /// Where 16-bit inputs are widened.
    pub widened: &'a WidenPool,
    pub outs: &'a mut Outs,
    /// A reusable temporary (the fused activation's backward).
    pub scratch: &'a mut Vec<f32>,
    /// How many sampling calls came before this one (each draws from its own stream).
    pub sample_calls: u64,
    /// The rank group collectives run over; None when the backend runs alone.
    pub comm: Option<&'a dyn Communicator>,
}

impl<'a> Exec<'a> {
    /// An input's data as f32: the storage itself for an f32 tensor, a widened copy for a
    /// 16-bit one, which lives as long as the kernel holds it (so an op's widened inputs go
    /// back to the pool when it returns). Widening costs a pass per call: for a matmul's weight, 2 bytes
    /// read and 4 written per element before the gemm reads its 4, so about 10 bytes of memory
    /// traffic per weight where f32 storage moved 4 (what bounds a decode step, m = 1), and
    /// n·k·4 bytes of temporary while the op runs. A matmul widening W a block of rows at a
    /// time, one gemm per block, was tried and dropped: gemm's blocking over k depends on n,
    /// so a block's sums differ from the whole matmul's in the last bits (seen at k = 2048),
    /// and 16-bit storage is to give the results the f32 storage gave, bit for bit.
    pub fn f32(&self, t: &Tensor) -> Result<F32Input<'a>, BackendError> {
        let pool = self.widened;
        Ok(match self.stored(t)? {
            Stored::F32(v) => F32Input::Stored(v),
            Stored::Bf16(v) => {
                let mut data = pool.take(v.len());
                widen_into(v, &mut data);
                F32Input::Widened { data, pool }
            }
            Stored::F16(v) => {
                let mut data = pool.take(v.len());
                widen_into(v, &mut data);
                F32Input::Widened { data, pool }
            }
        })
    }

    /// An input's float data as stored (see [`Stored`]).
    pub fn stored(&self, t: &Tensor) -> Result<Stored<'a>, BackendError> {
        match self.buffers.get(&t.id).map(|b| &b.data) {
            Some(Data::F32(v)) => Ok(Stored::F32(v)),
            Some(Data::Bf16(v)) => Ok(Stored::Bf16(v)),
            Some(Data::F16(v)) => Ok(Stored::F16(v)),
            Some(Data::I32(_)) => Err(missing(format!(
                "tensor #{} is i32 where a float tensor was expected",
                t.id.0
            ))),
            None => Err(missing(format!(
                "tensor #{} is not allocated (or is also an output)",
                t.id.0
            ))),
        }
    }

    /// An optional input's f32 data.
    pub fn f32_opt(&self, t: &Option<Tensor>) -> Result<Option<F32Input<'a>>, BackendError> {
        t.as_ref().map(|t| self.f32(t)).transpose()
    }

    /// An input's i32 data.
    pub fn i32(&self, t: &Tensor) -> Result<&'a [i32], BackendError> {
        match self.buffers.get(&t.id).map(|b| &b.data) {
            Some(Data::I32(v)) => Ok(v),
            _ => Err(missing(format!(
                "tensor #{} is not an allocated i32 tensor",
                t.id.0
            ))),
        }
    }

    pub fn invalid(&self, why: String) -> BackendError {
        BackendError::InvalidInput {
            op: self.call.op.name(),
            label: self.call.label,
            backend: NAME,
            why,
        }
    }

    pub fn unsupported(&self, why: impl Into<String>) -> BackendError {
        BackendError::Unsupported {
            op: self.call.op.name(),
            label: self.call.label,
            backend: NAME,
            why: why.into(),
        }
    }

    /// Fails unless `what` holds at least the `want` elements the op reads.
    pub fn check_len(&self, what: &str, got: usize, want: usize) -> Result<(), BackendError> {
        if got < want {
            return Err(self.unsupported(format!(
                "{what} holds {got} elements where the op reads {want}"
            )));
        }
        Ok(())
    }

    /// Fails on an id outside 0..vocab (user data: token ids and targets).
    pub fn check_ids(&self, ids: &[i32], vocab: usize, what: &str) -> Result<(), BackendError> {
        match ids.iter().position(|&t| t < 0 || t as usize >= vocab) {
            Some(i) => Err(self.invalid(format!(
                "{what} id {} at position {i} is outside the vocabulary of {vocab}",
                ids[i]
            ))),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tperf_core::dtype::DType;
    use tperf_core::ops::cast::round_to;

    /// f32 bit patterns that cover every exponent (normals, subnormals, ±0, ±∞, NaN) and
    /// mantissas at and around the halfway points that rounding to 16 bits decides.
    fn probes() -> Vec<f32> {
        let mut bits = vec![];
        for exponent in 0u32..256 {
            for mantissa in [
                0, 1, 0x7fff, 0x8000, 0x8001, 0x1_8000, 0x7f_ffff, 0x1000, 0x0fff,
            ] {
                for sign in [0, 1u32 << 31] {
                    bits.push(sign | exponent << 23 | mantissa);
                }
            }
        }
        bits.into_iter().map(f32::from_bits).collect()
    }

    #[test]
    fn narrowing_then_widening_is_the_emulations_rounding_bit_for_bit() {
        let xs = probes();
        let mut b = vec![bf16::ZERO; xs.len()];
        let mut h = vec![f16::ZERO; xs.len()];
        narrow_into(&xs, &mut b);
        narrow_into(&xs, &mut h);
        for (dtype, widened) in [(DType::Bf16, widen(&b)), (DType::F16, widen(&h))] {
            for (x, w) in xs.iter().zip(&widened) {
                let want = round_to(dtype, *x);
                if want.is_nan() {
                    assert!(w.is_nan(), "{dtype:?} {x:e}: {w} is not NaN");
                } else {
                    assert_eq!(
                        w.to_bits(),
                        want.to_bits(),
                        "{dtype:?} {x:e}: {w:e} vs {want:e}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_widening_pool_reuses_vectors_and_keeps_a_few() {
        let pool = WidenPool::default();
        let big = pool.take(1000);
        let big_ptr = big.as_ptr();
        pool.give(big);
        // A smaller request reuses the kept vector (no new mapping), at the length asked.
        let small = pool.take(10);
        assert_eq!((small.len(), small.as_ptr()), (10, big_ptr));
        pool.give(small);
        let taken: Vec<_> = (0..6).map(|i| pool.take(100 * (i + 1))).collect();
        taken.into_iter().for_each(|v| pool.give(v));
        let kept = pool.0.lock().unwrap();
        assert_eq!(kept.len(), WidenPool::KEPT);
        // The smallest were dropped.
        assert!(
            kept.iter().all(|v| v.capacity() >= 300),
            "{:?}",
            kept.iter().map(|v| v.capacity()).collect::<Vec<_>>()
        );
    }
}
