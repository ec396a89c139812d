//! AdamW (kernels/adamw.cu): one launch over every parameter, from a tensor table
//! (ops/tensor_table.rs), in place on θ, m and v as the CPU backend updates them. The gradient
//! factor clip(‖g‖/S)/S (S = the op's loss scale, `grad_scale`) is derived on the device from
//! the norm tensor GradNorm wrote, and so is the decision to skip the step when S > 1 and the
//! norm is not finite: no host synchronisation. Weight decay applies to 2-D tensors only; the
//! optional copies receive θ rounded to their dtype.

use super::aligned_16;
use super::tensor_table::{Table, BLOCKS_PER_SM, THREADS};
use crate::backend::{dt_code, unsupported, CudaBackend};
use crate::gpu::Arg;
use tperf_core::backend::{BackendError, OpCall};
use tperf_core::comm::shard_range;
use tperf_core::dtype::DType;
use tperf_core::ops::adamw::{AdamW, AdamWIo};
use tperf_core::tensor::Tensor;

const SRC: &str = "adamw";

/// Elements per work item: `ADAM_CHUNK` of adamw.cu.
const ADAM_CHUNK: u64 = 2048;

impl CudaBackend {
    /// AdamW's table: per parameter {θ, g, m, v, copy, n, first item, dtypes | flags << 32},
    /// the dtype codes 4 bits each (θ, g, m, v, copy from the low end), flags bit 0 weight
    /// decay, bit 1 every pointer 16-byte aligned and floating-point (the vector path).
    /// Under ZeRO-1 θ, g and the copy point at this rank's shard and n counts it.
    pub(super) fn adam_table(
        &self,
        call: &OpCall,
        io: &AdamWIo,
        shards: usize,
    ) -> Result<Table, BackendError> {
        let rank = self.shard_rank(call, shards)?;
        let mut table = Table::new(ADAM_CHUNK, io.theta.len(), 5);
        for (i, theta) in io.theta.iter().enumerate() {
            let (g, m, v) = (&io.grads[i], &io.m[i], &io.v[i]);
            if [theta, m, v].iter().any(|t| t.dtype == DType::I32) {
                return Err(unsupported(call, "AdamW state must be floating-point"));
            }
            let whole = theta.numel();
            let shard = shard_range(whole as usize, rank, shards);
            let n = shard.len() as u64;
            if n == 0 {
                continue;
            }
            // The replicated tensors from the shard's first element; m and v are the shard.
            let from = |a: Arg, t: &Tensor| match a {
                Arg::Buf(p, dt) if p != 0 => {
                    Arg::Buf(p + shard.start as u64 * t.dtype.size_bytes(), dt)
                }
                other => other,
            };
            let copy = match io.copies.get(i) {
                Some(c) if c.dtype != DType::I32 => from(self.arg(call, c, whole)?, c),
                _ => Arg::Buf(0, 0),
            };
            let mut ptrs = [0u64; 5];
            let mut dts = 0u64;
            let mut float = true;
            let args = [
                from(self.arg(call, theta, whole)?, theta),
                from(self.arg(call, g, whole)?, g),
                self.arg(call, m, n)?,
                self.arg(call, v, n)?,
                copy,
            ];
            for (k, a) in args.iter().enumerate() {
                let Arg::Buf(p, dt) = *a else {
                    unreachable!("arg returns a Buf")
                };
                ptrs[k] = p;
                dts |= (dt as u32 as u64 & 15) << (4 * k);
                float &= p == 0 || dt != dt_code(DType::I32);
            }
            let decay = u64::from(theta.shape.len() == 2);
            let vec = u64::from(float && ptrs.iter().all(|&p| aligned_16(p)));
            table.push(&ptrs, n, dts | (decay | vec << 1) << 32);
        }
        Ok(table)
    }

    pub(crate) fn adamw(&mut self, call: &OpCall, adam: &AdamW) -> Result<(), BackendError> {
        // The reader checks the counts: P of each of θ, g, m and v, and none or P copies.
        let io: AdamWIo = call.operands(adam)?;
        let h = &adam.hyper;
        let t = h.step.max(1) as i32;
        let c1 = (1.0 - h.beta1.powi(t)) as f32;
        let c2 = (1.0 - h.beta2.powi(t)) as f32;
        // In a captured step the kernel reads lr, c1 and c2 from here instead (graph.rs).
        let step_scalars = Arg::Ptr(self.op_scalars);
        let norm = self.arg(call, &io.norm, 1)?;
        let table = self.adam_table(call, &io, adam.shards)?;
        let (count, items) = (table.count, table.items);
        if count == 0 {
            return Ok(());
        }
        let ptr = self.upload(table)?;
        let args = [
            Arg::Ptr(ptr),
            Arg::I32(count as i32),
            Arg::I64(items as i64),
            norm,
            Arg::F32(h.beta1 as f32),
            Arg::F32(h.beta2 as f32),
            Arg::F32(c1),
            Arg::F32(c2),
            Arg::F32(h.lr as f32),
            Arg::F32(h.eps as f32),
            Arg::F32(h.weight_decay as f32),
            Arg::I32(i32::from(h.max_grad_norm.is_some())),
            Arg::F64(h.max_grad_norm.unwrap_or(0.0)),
            Arg::F64(adam.grad_scale),
            Arg::I32(i32::from(adam.shards > 1)),
            step_scalars,
        ];
        // One wave of resident blocks; the items go grid-stride.
        let blocks = items.min(BLOCKS_PER_SM * self.gpu.info.sms.max(1) as u64) as u32;
        self.launch(
            call,
            SRC,
            "adamw_update_multi",
            (blocks, 1, 1),
            (THREADS, 1, 1),
            0,
            &args,
        )
    }
}
