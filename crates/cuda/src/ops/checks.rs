//! The checks on host-written integer data (token and target ids, positions, slots, block
//! tables) that keep a kernel from reading or writing out of bounds. Such tensors enter only
//! through `write_i32`, which records each one's (min, max) on the host, so a check needs no
//! read back from the device. Each op's launch checks its own operands (the checks are in its
//! file); [`CudaBackend::check_replayed`] runs the same checks for an op that a replayed graph
//! step does not launch.

use super::kv_cache::check_kv_room;
use crate::backend::{invalid, unsupported, CudaBackend};
use crate::gpu::Arg;
use tperf_core::backend::{BackendError, OpCall};
use tperf_core::dtype::DType;
use tperf_core::ops::cross_entropy::{CrossEntropyBackwardIo, CrossEntropyIo};
use tperf_core::ops::embedding::{EmbeddingBackwardIo, EmbeddingIo};
use tperf_core::ops::kv_cache::{KvAppendIo, PagedKvAppendIo};
use tperf_core::ops::paged_attention::PagedAttentionIo;
use tperf_core::ops::rope::RopeIo;
use tperf_core::ops::take_last::TakeRowsIo;
use tperf_core::ops::Op;
use tperf_core::tensor::Tensor;

impl CudaBackend {
    /// `t` as i32 ids, checked to be in 0..limit before they reach a kernel (an id past the
    /// table would read out of bounds). Ids enter only through `write_i32`, which records their
    /// range on the host, so the check needs no read back from the device.
    pub(crate) fn check_ids(
        &self,
        call: &OpCall,
        t: &Tensor,
        n: usize,
        limit: usize,
        what: &str,
    ) -> Result<Arg, BackendError> {
        if t.dtype != DType::I32 {
            return Err(unsupported(call, format!("{what} ids must be i32")));
        }
        let arg = self.arg(call, t, n as u64)?;
        self.check_id_range(call, t, limit, what)?;
        Ok(arg)
    }

    pub(crate) fn check_id_range(
        &self,
        call: &OpCall,
        t: &Tensor,
        limit: usize,
        what: &str,
    ) -> Result<(), BackendError> {
        if let Some((lo, hi)) = self.buf(t)?.id_range {
            let bad = if lo < 0 { lo } else { hi };
            if lo < 0 || hi as usize >= limit {
                return Err(invalid(
                    call,
                    format!("{what} id {bad} is outside the vocabulary of {limit}"),
                ));
            }
        }
        Ok(())
    }

    /// Fails when the host-written ids of `t` leave lo..hi (unchecked when a kernel wrote them).
    pub(crate) fn check_range(
        &self,
        call: &OpCall,
        t: &Tensor,
        (lo, hi): (i64, i64),
        what: &str,
    ) -> Result<(), BackendError> {
        if let Some((min, max)) = self.buf(t)?.id_range {
            if i64::from(min) < lo || i64::from(max) >= hi {
                let bad = if i64::from(min) < lo { min } else { max };
                return Err(invalid(call, format!("{what} {bad} is outside {lo}..{hi}")));
            }
        }
        Ok(())
    }

    /// The checks on data an op's launch would have made, for an op that is not launched (in a
    /// replayed graph step, where token ids and positions are new), so bad data fails the same
    /// way whether the step is replayed or run. Each op's operands are read once.
    pub(crate) fn check_replayed(&self, call: &OpCall) -> Result<(), BackendError> {
        match &call.op {
            Op::Embedding(e) => {
                let io: EmbeddingIo = call.operands(e)?;
                self.check_embedding_positions(call, e, &io)?;
                self.check_id_range(call, &io.tokens, e.vocab, "token")
            }
            Op::EmbeddingBackward(e) => {
                let io: EmbeddingBackwardIo = call.operands(e)?;
                self.check_id_range(call, &io.tokens, e.vocab, "token")
            }
            Op::CrossEntropy(ce) => {
                let io: CrossEntropyIo = call.operands(ce)?;
                self.check_id_range(call, &io.targets, ce.v, "target")
            }
            Op::CrossEntropyBackward(ce) => {
                let io: CrossEntropyBackwardIo = call.operands(ce)?;
                self.check_id_range(call, &io.targets, ce.v, "target")
            }
            Op::Rope(r) | Op::RopeBackward(r) => {
                let io: RopeIo = call.operands(r)?;
                self.check_rope_positions(call, &io)
            }
            Op::KvAppend(k) => {
                let io: KvAppendIo = call.operands(k)?;
                check_kv_room(call, k, &io.k_cache)
            }
            Op::PagedKvAppend(k) => {
                let io: PagedKvAppendIo = call.operands(k)?;
                self.check_paged_kv_append(call, k, &io)
            }
            Op::PagedAttention(a) => {
                let io: PagedAttentionIo = call.operands(a)?;
                self.check_paged_attention(call, a, &io)
            }
            Op::TakeRows(t) => {
                let io: TakeRowsIo = call.operands(t)?;
                self.check_take_rows(call, t, &io)
            }
            _ => Ok(()),
        }
    }
}
