//! Host side of the elementwise ops, each with its own kernel file
//! (kernels/{activation,gated,residual,cast}.cu).

use crate::backend::CudaBackend;
use crate::gpu::Arg;
use tperf_core::backend::{BackendError, OpCall};
use tperf_core::ops::activation::{Activation, ActivationBackwardIo, ActivationIo, ActivationKind};
use tperf_core::ops::cast::{Cast, CastIo};
use tperf_core::ops::residual::{ResidualAdd, ResidualAddIo};
use tperf_core::ops::swiglu::{SwiGlu, SwiGluBackwardIo, SwiGluIo};
use tperf_core::tensor::Tensor;

pub(crate) fn act_code(kind: ActivationKind) -> i32 {
    match kind {
        ActivationKind::Gelu => 0,
        ActivationKind::Relu => 1,
        ActivationKind::Silu => 2,
    }
}

/// The grid of `gated_forward`/`gated_backward` (256 threads a block): x covers a row's F
/// columns at 4 a thread (the vector path's width), y one block row per matrix row up to the
/// grid's limit, beyond which the rows go grid-stride.
pub(crate) fn gated_grid(rows: u64, f: u64) -> (u32, u32, u32) {
    let x = f.div_ceil(4 * 256).clamp(1, 1 << 16) as u32;
    let y = rows.clamp(1, 65_535) as u32;
    (x, y, 1)
}

impl CudaBackend {
    pub(crate) fn activation_forward(
        &mut self,
        call: &OpCall,
        a: &Activation,
    ) -> Result<(), BackendError> {
        let io: ActivationIo = call.operands(a)?;
        let n = a.numel as u64;
        let args = [
            self.arg(call, &io.x, n)?,
            self.arg(call, &io.y, n)?,
            Arg::I64(n as i64),
            Arg::I32(act_code(a.kind)),
        ];
        self.launch_1d(call, "activation", "activation_forward", n, &args)
    }

    pub(crate) fn activation_backward(
        &mut self,
        call: &OpCall,
        a: &Activation,
    ) -> Result<(), BackendError> {
        let io: ActivationBackwardIo = call.operands(a)?;
        let n = a.numel as u64;
        let args = [
            self.arg(call, &io.x, n)?,
            self.arg(call, &io.dy, n)?,
            self.arg(call, &io.dx, n)?,
            Arg::I64(n as i64),
            Arg::I32(act_code(a.kind)),
        ];
        self.launch_1d(call, "activation", "activation_backward", n, &args)
    }

    pub(crate) fn swiglu_forward(&mut self, call: &OpCall, s: &SwiGlu) -> Result<(), BackendError> {
        let io: SwiGluIo = call.operands(s)?;
        let (n, f) = (s.n as u64, s.f as u64);
        let tensors = [(&io.h, 2 * n * f), (&io.g, n * f)];
        self.launch_gated(
            call,
            "gated_forward",
            &tensors,
            (n, f),
            ActivationKind::Silu,
        )
    }

    pub(crate) fn swiglu_backward(
        &mut self,
        call: &OpCall,
        s: &SwiGlu,
    ) -> Result<(), BackendError> {
        let io: SwiGluBackwardIo = call.operands(s)?;
        let (n, f) = (s.n as u64, s.f as u64);
        let tensors = [(&io.h, 2 * n * f), (&io.dg, n * f), (&io.dh, 2 * n * f)];
        self.launch_gated(
            call,
            "gated_backward",
            &tensors,
            (n, f),
            ActivationKind::Silu,
        )
    }

    /// One launch of the gated pair SwiGLU and GeGLU share (`gated_forward`: h, g;
    /// `gated_backward`: h, dg, dh), over n rows of f gated columns with activation `kind`.
    pub(crate) fn launch_gated(
        &mut self,
        call: &OpCall,
        kernel: &'static str,
        tensors: &[(&Tensor, u64)],
        (n, f): (u64, u64),
        kind: ActivationKind,
    ) -> Result<(), BackendError> {
        let mut args = Vec::with_capacity(tensors.len() + 3);
        for (t, numel) in tensors {
            args.push(self.arg(call, t, *numel)?);
        }
        args.extend([
            Arg::I64(n as i64),
            Arg::I64(f as i64),
            Arg::I32(act_code(kind)),
        ]);
        if n * f == 0 {
            return Ok(());
        }
        let grid = gated_grid(n, f);
        self.launch(call, "gated", kernel, grid, (256, 1, 1), 0, &args)
    }

    pub(crate) fn residual_add(
        &mut self,
        call: &OpCall,
        r: &ResidualAdd,
    ) -> Result<(), BackendError> {
        let io: ResidualAddIo = call.operands(r)?;
        let n = r.numel as u64;
        let args = [
            self.arg(call, &io.a, n)?,
            self.arg(call, &io.b, n)?,
            self.arg(call, &io.sum, n)?,
            Arg::I64(n as i64),
        ];
        self.launch_1d(call, "residual", "residual_add", n, &args)
    }

    pub(crate) fn cast(&mut self, call: &OpCall, c: &Cast) -> Result<(), BackendError> {
        let io: CastIo = call.operands(c)?;
        for (src, dst) in io.src.iter().zip(&io.dst) {
            let n = dst.numel();
            let args = [
                self.arg(call, src, n)?,
                self.arg(call, dst, n)?,
                Arg::I64(n as i64),
            ];
            self.launch_1d(call, "cast", "cast", n, &args)?;
        }
        Ok(())
    }
}
