//! LayerNorm and RMSNorm (kernels/norms.cu): one kernel pair serves both norms.
//!
//! Forward: one block per row; y and the stats from x, γ and β (LayerNorm with a bias), with the
//! fused residual add from x + add, written out as sum. Stats per row are (μ, rstd) for
//! LayerNorm, (rstd) for RMSNorm.
//!
//! Backward: dx, dγ and dβ (LayerNorm with a bias) from x, the stats, γ and dy. dx is added into
//! when the op accumulates (the residual-stream gradient); dγ and dβ are overwritten. A grid of
//! G blocks strides over the rows, each block summing its rows' weight gradients into a slice of
//! a scratch buffer, and a second kernel adds the G slices in a fixed order (deterministic).
//!
//! Both directions have a vectorised kernel (`norm_forward_vec`, `norm_backward_vec`: each
//! thread holds 8-column chunks of a row in registers, read once by 16-byte loads) where C is a
//! multiple of 8, C ≤ 8192 and every pointer is 16-byte aligned — every model tperf ships —
//! and the plain kernels otherwise.

use super::all_aligned_16;
use super::ROW_THREADS;
use crate::backend::{unsupported, CudaBackend};
use crate::error::driver;
use crate::gpu::Arg;
use tperf_core::backend::{BackendError, OpCall};
use tperf_core::ops::layernorm::{LayerNorm, LayerNormBackwardIo, LayerNormIo};
use tperf_core::ops::rmsnorm::{RmsNorm, RmsNormBackwardIo, RmsNormIo};

const SRC: &str = "norms";

/// Weight-gradient sums of a block stay in shared memory up to this many bytes (LayerNorm with
/// β up to C = 12288), and go straight to the scratch buffer for wider rows.
const MAX_SHARED_ACC_BYTES: u64 = 96 * 1024;

/// Threads a block of the vectorised kernels needs for rows of `c` columns: one per 8-column
/// chunk, rounded up to a warp, at most 1024 (C ≤ 8192); None where they do not apply (C not a
/// multiple of 8, wider rows, or a pointer that is not 16-byte aligned).
fn vec_threads(c: u64, args: &[&Arg]) -> Option<u32> {
    // An absent operand is a null Buf, aligned like any other.
    let chunks = c / 8;
    if !all_aligned_16(args) || !c.is_multiple_of(8) || chunks == 0 || chunks > 1024 {
        return None;
    }
    Some(chunks.next_multiple_of(32) as u32)
}

/// Rows a block of `norm_backward_vec` takes: each costs the block a memory latency, and each
/// block adds a row of partial sums. 4 unless TPERF_NORM_BWD_ROWS says otherwise (a tuning
/// knob for measuring the trade, read once).
fn vec_rows_per_block() -> u64 {
    static ROWS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *ROWS.get_or_init(|| {
        let Ok(v) = std::env::var("TPERF_NORM_BWD_ROWS") else {
            return 4;
        };
        match v.parse() {
            Ok(r) if r > 0 => r,
            _ => {
                eprintln!("warning: TPERF_NORM_BWD_ROWS={v:?} is not a positive whole number of rows; using 4");
                4
            }
        }
    })
}

/// Thread rows of `norm_weight_grads` (NWG_ROWS in norms.cu).
const NWG_ROWS: u32 = 32;

/// What the forward and backward need to know of either norm.
struct Shape {
    n: u64,
    c: u64,
    rms: bool,
    bias: bool,
    eps: f64,
    residual: bool,
    accumulate: bool,
}

impl Shape {
    fn stats_width(&self) -> u64 {
        if self.rms {
            1
        } else {
            2
        }
    }
}

impl From<&LayerNorm> for Shape {
    fn from(ln: &LayerNorm) -> Self {
        Shape {
            n: ln.n as u64,
            c: ln.c as u64,
            rms: false,
            bias: ln.bias,
            eps: ln.eps,
            residual: ln.residual,
            accumulate: ln.accumulate,
        }
    }
}

impl From<&RmsNorm> for Shape {
    fn from(rn: &RmsNorm) -> Self {
        Shape {
            n: rn.n as u64,
            c: rn.c as u64,
            rms: true,
            bias: false,
            eps: rn.eps,
            residual: rn.residual,
            accumulate: rn.accumulate,
        }
    }
}

/// RMSNorm's operands as LayerNorm's without β (the kernels take either norm's): its rstd is
/// the stats.
fn as_layernorm(io: RmsNormIo) -> LayerNormIo {
    LayerNormIo {
        x: io.x,
        add: io.add,
        gamma: io.gamma,
        beta: None,
        sum: io.sum,
        y: io.y,
        stats: io.rstd,
    }
}

fn as_layernorm_backward(io: RmsNormBackwardIo) -> LayerNormBackwardIo {
    LayerNormBackwardIo {
        x: io.x,
        stats: io.rstd,
        gamma: io.gamma,
        dy: io.dy,
        dx_in: io.dx_in,
        dx: io.dx,
        dgamma: io.dgamma,
        dbeta: None,
    }
}

fn int(call: &OpCall, what: &str, v: u64) -> Result<i32, BackendError> {
    i32::try_from(v)
        .map_err(|_| unsupported(call, format!("{what} = {v} exceeds the kernels' i32")))
}

impl CudaBackend {
    pub(crate) fn layernorm_forward(
        &mut self,
        call: &OpCall,
        ln: &LayerNorm,
    ) -> Result<(), BackendError> {
        let io: LayerNormIo = call.operands(ln)?;
        self.norm_forward(call, &ln.into(), io)
    }

    pub(crate) fn layernorm_backward(
        &mut self,
        call: &OpCall,
        ln: &LayerNorm,
    ) -> Result<(), BackendError> {
        let io: LayerNormBackwardIo = call.operands(ln)?;
        self.norm_backward(call, &ln.into(), io)
    }

    pub(crate) fn rmsnorm_forward(
        &mut self,
        call: &OpCall,
        rn: &RmsNorm,
    ) -> Result<(), BackendError> {
        let io: RmsNormIo = call.operands(rn)?;
        self.norm_forward(call, &rn.into(), as_layernorm(io))
    }

    pub(crate) fn rmsnorm_backward(
        &mut self,
        call: &OpCall,
        rn: &RmsNorm,
    ) -> Result<(), BackendError> {
        let io: RmsNormBackwardIo = call.operands(rn)?;
        self.norm_backward(call, &rn.into(), as_layernorm_backward(io))
    }

    fn norm_forward(
        &mut self,
        call: &OpCall,
        s: &Shape,
        io: LayerNormIo,
    ) -> Result<(), BackendError> {
        let (n, c) = (s.n, s.c);
        let nc = n * c;
        // add and sum are operands exactly when s.residual holds, β when s.bias does.
        let x = self.arg(call, &io.x, nc)?;
        let add = self.arg_opt(call, io.add.as_ref(), nc)?;
        let gamma = self.arg(call, &io.gamma, c)?;
        let beta = self.arg_opt(call, io.beta.as_ref(), c)?;
        let sum = self.arg_opt(call, io.sum.as_ref(), nc)?;
        let y = self.arg(call, &io.y, nc)?;
        let stats = self.arg(call, &io.stats, n * s.stats_width())?;
        if n == 0 {
            return Ok(());
        }
        let args = [
            x,
            add,
            gamma,
            beta,
            sum,
            y,
            stats,
            Arg::I32(int(call, "C", c)?),
            Arg::I32(i32::from(s.rms)),
            Arg::I32(i32::from(s.residual)),
            Arg::I32(i32::from(s.bias)),
            Arg::F32(s.eps as f32),
        ];
        let grid = (int(call, "rows", n)? as u32, 1, 1);
        match vec_threads(c, &[&x, &add, &gamma, &beta, &sum, &y]) {
            Some(threads) => self.launch(
                call,
                SRC,
                "norm_forward_vec",
                grid,
                (threads, 1, 1),
                0,
                &args,
            ),
            None => self.launch(
                call,
                SRC,
                "norm_forward",
                grid,
                (ROW_THREADS, 1, 1),
                0,
                &args,
            ),
        }
    }

    fn norm_backward(
        &mut self,
        call: &OpCall,
        s: &Shape,
        io: LayerNormBackwardIo,
    ) -> Result<(), BackendError> {
        let (n, c) = (s.n, s.c);
        let nc = n * c;
        let x = self.arg(call, &io.x, nc)?;
        let stats = self.arg(call, &io.stats, n * s.stats_width())?;
        let gamma = self.arg(call, &io.gamma, c)?;
        let dy = self.arg(call, &io.dy, nc)?;
        let dx = self.arg(call, &io.dx, nc)?;
        let dgamma = self.arg(call, &io.dgamma, c)?;
        // dβ is an operand exactly when s.bias holds.
        let dbeta = self.arg_opt(call, io.dbeta.as_ref(), c)?;
        let width = if s.bias { 2 * c } else { c };
        let width_i32 = int(call, "2C", width)?;
        if n == 0 || c == 0 {
            // No rows: the weight gradients are the empty sum (dx has nothing to hold).
            self.zero(&io.dgamma)?;
            if let Some(dbeta) = &io.dbeta {
                self.zero(dbeta)?;
            }
            return Ok(());
        }
        let sms = self.gpu.info.sms.max(1) as u64;
        let acc_bytes = width * 4;
        let vec = vec_threads(c, &[&x, &gamma, &dy, &dx]);
        // The vectorised kernel: G blocks of `vec_rows_per_block` rows each, up to 8 a SM. The plain
        // kernel: block per row, G blocks of at least ~4 rows each, up to 4 per SM, the column
        // sums in shared memory up to MAX_SHARED_ACC_BYTES, else in the scratch itself.
        let acc_global = acc_bytes > MAX_SHARED_ACC_BYTES;
        let blocks = match vec {
            Some(_) => n.div_ceil(vec_rows_per_block()).clamp(1, 8 * sms),
            None => n.div_ceil(4).clamp(1, 4 * sms),
        };
        let scratch = self
            .alloc
            .alloc(blocks * acc_bytes)
            .map_err(driver("scratch for the norm's weight gradients"))?;
        let result = (|| {
            let grid = (blocks as u32, 1, 1);
            let (c_arg, rms) = (Arg::I32(int(call, "C", c)?), Arg::I32(i32::from(s.rms)));
            let accumulate = Arg::I32(i32::from(s.accumulate));
            match vec {
                Some(threads) => {
                    let args = [
                        x,
                        stats,
                        gamma,
                        dy,
                        dx,
                        Arg::Ptr(scratch.ptr),
                        Arg::I64(n as i64),
                        c_arg,
                        rms,
                        accumulate,
                    ];
                    let block = (threads, 1, 1);
                    // β's sums are compiled into a kernel of their own, and rows up to 512
                    // threads (C ≤ 4096) take two rows a pass (norms.cu says why).
                    let kernel = match (threads <= 512, s.bias) {
                        (true, false) => "norm_backward_vec2",
                        (true, true) => "norm_backward_vec2_beta",
                        (false, false) => "norm_backward_vec",
                        (false, true) => "norm_backward_vec_beta",
                    };
                    self.launch(call, SRC, kernel, grid, block, 0, &args)?
                }
                None => {
                    let args = [
                        x,
                        stats,
                        gamma,
                        dy,
                        dx,
                        Arg::Ptr(scratch.ptr),
                        Arg::I64(n as i64),
                        c_arg,
                        rms,
                        Arg::I32(i32::from(s.bias)),
                        accumulate,
                        Arg::I32(i32::from(acc_global)),
                    ];
                    let shared = if acc_global { 0 } else { acc_bytes as u32 };
                    self.launch(
                        call,
                        SRC,
                        "norm_backward",
                        grid,
                        (ROW_THREADS, 1, 1),
                        shared,
                        &args,
                    )?
                }
            }
            let args = [
                Arg::Ptr(scratch.ptr),
                Arg::I32(blocks as i32),
                Arg::I32(width_i32),
                Arg::I32(c as i32),
                dgamma,
                dbeta,
            ];
            let grid = (width.div_ceil(32) as u32, 1, 1);
            self.launch(
                call,
                SRC,
                "norm_weight_grads",
                grid,
                (32, NWG_ROWS, 1),
                0,
                &args,
            )
        })();
        // The stream orders the block's next user after the kernels above.
        self.alloc.free(scratch);
        result
    }
}
