//! What an op's CPU dispatch sees while it runs: its call, its inputs (read from the backend's
//! storage) and its outputs (taken out of the storage for the duration, so that they can be
//! written while the inputs are borrowed). Each op's dispatch lives beside its kernel in
//! `kernels/<op>.rs` and reads its operands by name through [`OpCall::operands`].

use std::collections::HashMap;
use tperf_core::backend::{BackendError, OpCall};
use tperf_core::comm::Communicator;
use tperf_core::tensor::{Tensor, TensorId};

pub(crate) const NAME: &str = "cpu";

pub(crate) enum Data {
    F32(Vec<f32>),
    I32(Vec<i32>),
}

pub(crate) struct Buffer {
    pub name: String,
    pub data: Data,
}

pub(crate) fn missing(what: String) -> BackendError {
    BackendError::Device {
        backend: NAME,
        message: what,
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
            Data::F32(_) => Err(missing("an i32 output is f32".into())),
        }
    }
}

/// One op's execution context.
pub(crate) struct Exec<'a> {
    pub call: &'a OpCall,
    pub buffers: &'a HashMap<TensorId, Buffer>,
    pub outs: &'a mut Outs,
    /// A reusable temporary (the fused activation's backward).
    pub scratch: &'a mut Vec<f32>,
    /// How many sampling calls came before this one (each draws from its own stream).
    pub sample_calls: u64,
    /// The rank group collectives run over; None when the backend runs alone.
    pub comm: Option<&'a dyn Communicator>,
}

impl<'a> Exec<'a> {
    /// An input's f32 data.
    pub fn f32(&self, t: &Tensor) -> Result<&'a [f32], BackendError> {
        match self.buffers.get(&t.id).map(|b| &b.data) {
            Some(Data::F32(v)) => Ok(v),
            Some(Data::I32(_)) => Err(missing(format!(
                "tensor #{} is i32 where f32 was expected",
                t.id.0
            ))),
            None => Err(missing(format!(
                "tensor #{} is not allocated (or is also an output)",
                t.id.0
            ))),
        }
    }

    /// An optional input's f32 data.
    pub fn f32_opt(&self, t: &Option<Tensor>) -> Result<Option<&'a [f32]>, BackendError> {
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
