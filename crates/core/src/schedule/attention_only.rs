//! Attention alone — the seed's naive-versus-flash benchmark — as a schedule of its own, so the
//! Meta backend predicts its time and memory (and out-of-memory before anything runs) and a
//! compute backend measures the very same op calls. Buffers and op lists are those of a block
//! (see the module doc of `schedule`): q, k and v in one fused (B·T, (H + 2H_kv)·D) buffer.

use super::attention::AttentionCore;
use super::{AttentionKernel, Emit};
use crate::backend::{Backend, BackendError};
use crate::dtype::DType;
use crate::ops::attention::Attention;
use crate::ops::Phase;
use crate::tensor::{MemCategory, Tensor, TensorName, TensorSpec};

#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct AttentionOnly {
    pub shape: Attention,
    pub kernel: AttentionKernel,
    pub dtype: DType,
}

/// What the forward keeps for the backward.
pub struct Kept {
    pub out: Tensor,
    /// Naive: the probabilities (B, H, T, T); flash: the log-sum-exp (B, H, T).
    pub saved: Tensor,
}

impl AttentionOnly {
    fn alloc(
        be: &mut impl Backend,
        name: &'static str,
        shape: &[usize],
        dtype: DType,
        category: MemCategory,
    ) -> Result<Tensor, BackendError> {
        be.alloc(TensorSpec::new(
            TensorName::fixed(name),
            shape,
            dtype,
            category,
        ))
    }

    fn core(&self) -> AttentionCore {
        AttentionCore {
            kernel: self.kernel,
            shape: self.shape,
            dtype: self.dtype,
            layer: None,
        }
    }

    /// The fused q/k/v input and the output's gradient: (B·T, (H + 2H_kv)·D) and (B·T, H·D).
    pub fn alloc_inputs(&self, be: &mut impl Backend) -> Result<(Tensor, Tensor), BackendError> {
        let a = &self.shape;
        let n = a.b * a.tq;
        let qkv = Self::alloc(
            be,
            "qkv",
            &[n, (a.h + 2 * a.h_kv) * a.d],
            self.dtype,
            MemCategory::Io,
        )?;
        let dout = Self::alloc(be, "d_out", &[n, a.h * a.d], self.dtype, MemCategory::Io)?;
        Ok((qkv, dout))
    }

    /// The block's attention core alone, forward.
    pub fn forward(&self, be: &mut impl Backend, qkv: &Tensor) -> Result<Kept, BackendError> {
        let a = self.shape;
        let out = Self::alloc(
            be,
            "out",
            &[a.b * a.tq, a.h * a.d],
            self.dtype,
            MemCategory::Activations,
        )?;
        let mut e = Emit::new(be, Phase::Forward);
        let saved = self.core().forward(&mut e, qkv, None, &out)?;
        Ok(Kept { out, saved })
    }

    /// The block's attention core alone, backward. Frees what the forward kept and the gradient
    /// it computes.
    pub fn backward(
        &self,
        be: &mut impl Backend,
        qkv: &Tensor,
        kept: Kept,
        dout: &Tensor,
    ) -> Result<(), BackendError> {
        let dqkv = Self::alloc(
            be,
            "d_qkv",
            &qkv.shape,
            self.dtype,
            MemCategory::ActivationGradients,
        )?;
        let mut e = Emit::new(be, Phase::Backward);
        self.core()
            .backward(&mut e, qkv, &kept.out, dout, Some(kept.saved), &dqkv)?;
        be.free(kept.out);
        be.free(dqkv);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::MetaBackend;

    /// Naive attention keeps the B·H·T² probabilities for the backward; flash keeps B·H·T floats.
    #[test]
    fn memory_before_the_backward() {
        for kernel in [AttentionKernel::Naive, AttentionKernel::Flash] {
            let shape = Attention {
                b: 8,
                h: 1,
                h_kv: 1,
                tq: 1024,
                tk: 1024,
                d: 64,
                causal: true,
                window: None,
                kv_cache: false,
            };
            let case = AttentionOnly {
                shape,
                kernel,
                dtype: DType::F32,
            };
            let mut be = MetaBackend::new();
            let (qkv, dout) = case.alloc_inputs(&mut be).unwrap();
            let kept = case.forward(&mut be, &qkv).unwrap();
            let held: i64 = be.mem_events().iter().map(|e| e.delta_bytes).sum();
            let inputs = (qkv.size_bytes() + dout.size_bytes()) as i64;
            let out = 8 * 1024 * 64 * 4;
            let expected = match kernel {
                AttentionKernel::Naive => out + 8 * 1024 * 1024 * 4,
                AttentionKernel::Flash => out + 8 * 1024 * 4,
            };
            assert_eq!(held - inputs, expected, "{kernel:?}");
            case.backward(&mut be, &qkv, kept, &dout).unwrap();
            be.free(qkv);
            be.free(dout);
            assert!(be.errors.is_empty(), "{:?}", be.errors);
            assert_eq!(
                be.mem_events().iter().map(|e| e.delta_bytes).sum::<i64>(),
                0
            );
        }
    }
}
