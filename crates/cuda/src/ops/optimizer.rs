//! The optimizer step (kernels/optimizer.cu), issued without a host synchronisation so that a
//! whole training step can be captured in a CUDA graph.
//!
//! GradNorm: the norm of every gradient. Each launch sums the squares of up to eight gradient
//! tensors in f64 into one slot per block of a small scratch buffer; a last one-block kernel adds
//! the slots in a fixed order and writes √Σ. Deterministic, no atomics.
//!
//! AdamW: one launch per parameter tensor, in place on θ, m and v as the CPU backend updates
//! them. The gradient factor clip(‖g‖/S)/S (S = the op's loss scale, `grad_scale`) is derived on
//! the device from the norm tensor, and so is the decision to skip the step when S > 1 and the
//! norm is not finite (every launch reads the same norm, so all tensors skip or none do): no host
//! synchronisation. Weight decay applies to 2-D tensors only; the optional copies receive θ
//! rounded to their dtype.

use crate::backend::{unsupported, CudaBackend};
use crate::error::driver;
use crate::gpu::Arg;
use cudarc::driver::result as cu;
use tperf_core::backend::{BackendError, OpCall};
use tperf_core::dtype::DType;
use tperf_core::ops::adamw::{AdamW, AdamWIo};
use tperf_core::ops::grad_norm::{GradNorm, GradNormIo};

const SRC: &str = "optimizer";

/// Gradient tensors per `grad_sum_sq` launch (its parameter list).
const TENSORS_PER_LAUNCH: usize = 8;

/// Threads per block of the optimizer kernels (a multiple of 32).
const THREADS: u32 = 256;

impl CudaBackend {
    pub(crate) fn grad_norm(&mut self, call: &OpCall, g: &GradNorm) -> Result<(), BackendError> {
        let io: GradNormIo = call.operands(g)?;
        let norm = self.arg(call, &io.norm, 1)?;
        let mut grads = Vec::with_capacity(io.grads.len());
        for t in &io.grads {
            if t.dtype == DType::I32 {
                return Err(unsupported(call, "gradients are floating-point tensors"));
            }
            let numel = t.numel();
            grads.push((self.arg(call, t, numel)?, numel));
        }
        // One f64 slot per block; every launch uses at most `blocks` blocks.
        let blocks = (4 * self.gpu.info.sms.max(1) as u64).min(1024);
        let scratch = self
            .alloc
            .alloc(blocks * 8)
            .map_err(driver("scratch for the gradient norm"))?;
        let result = (|| {
            // SAFETY: `scratch` was just allocated with blocks × 8 bytes and is freed after the
            // kernels that read it, in stream order.
            unsafe {
                cu::memset_d8_async(scratch.ptr, 0, (blocks * 8) as usize, self.gpu.cu_stream())
            }
            .map_err(driver("zeroing the gradient norm's scratch"))?;
            for group in grads.chunks(TENSORS_PER_LAUNCH) {
                let total: u64 = group.iter().map(|(_, n)| n).sum();
                if total == 0 {
                    continue;
                }
                let mut args = Vec::with_capacity(2 * TENSORS_PER_LAUNCH + 1);
                for k in 0..TENSORS_PER_LAUNCH {
                    args.push(group.get(k).map_or(Arg::Buf(0, 0), |g| g.0));
                }
                for k in 0..TENSORS_PER_LAUNCH {
                    args.push(Arg::I64(group.get(k).map_or(0, |g| g.1 as i64)));
                }
                args.push(Arg::Ptr(scratch.ptr));
                let grid = (total.div_ceil(THREADS as u64).min(blocks) as u32, 1, 1);
                self.launch(call, SRC, "grad_sum_sq", grid, (THREADS, 1, 1), 0, &args)?;
            }
            let args = [Arg::Ptr(scratch.ptr), Arg::I32(blocks as i32), norm];
            self.launch(
                call,
                SRC,
                "grad_norm_finish",
                (1, 1, 1),
                (THREADS, 1, 1),
                0,
                &args,
            )
        })();
        // The stream orders the block's next user after the kernels above.
        self.alloc.free(scratch);
        result
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
        for (i, theta) in io.theta.iter().enumerate() {
            let (g, m, v) = (&io.grads[i], &io.m[i], &io.v[i]);
            let n = theta.numel();
            if [theta, m, v].iter().any(|t| t.dtype == DType::I32) {
                return Err(unsupported(call, "AdamW state must be floating-point"));
            }
            let decay = theta.shape.len() == 2;
            let copy = match io.copies.get(i) {
                Some(c) if c.dtype != DType::I32 => self.arg(call, c, n)?,
                _ => Arg::Buf(0, 0),
            };
            let args = [
                norm,
                self.arg(call, theta, n)?,
                self.arg(call, g, n)?,
                self.arg(call, m, n)?,
                self.arg(call, v, n)?,
                copy,
                Arg::I64(n as i64),
                Arg::F32(h.beta1 as f32),
                Arg::F32(h.beta2 as f32),
                Arg::F32(c1),
                Arg::F32(c2),
                Arg::F32(h.lr as f32),
                Arg::F32(h.eps as f32),
                Arg::F32(if decay { h.weight_decay as f32 } else { 0.0 }),
                Arg::I32(i32::from(h.max_grad_norm.is_some())),
                Arg::F64(h.max_grad_norm.unwrap_or(0.0)),
                Arg::F64(adam.grad_scale),
                step_scalars,
            ];
            self.launch_1d(call, SRC, "adamw_update", n, &args)?;
        }
        Ok(())
    }
}
