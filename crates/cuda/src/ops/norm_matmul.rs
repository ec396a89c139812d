//! The pre-norm and its product as one op (kernels/norm_matmul.cu): where the product takes
//! gemv_rows (one or two rows of 16-bit X and W, matmul.rs's `gemv_fits`) and a row is at most
//! 1024 wide, one kernel that normalises the rows in every block and multiplies them, which
//! saves the norm's launch; any other shape runs the norm kernel into a scratch and the product as the Matmul op runs it
//! (cuBLASLt), the two launches the unfused ops would have made.

use super::elementwise::act_code;
use super::matmul::{gemv_fits, Product, GEMV_THREADS};
use super::norms::{NormForwardArgs, Shape};
use crate::backend::{dt_code, CudaBackend};
use crate::error::driver;
use crate::gpu::Arg;
use tperf_core::backend::{BackendError, OpCall};
use tperf_core::dtype::DType;
use tperf_core::ops::norm_matmul::{NormMatmul, NormMatmulIo, PreNorm};

const SRC: &str = "norm_matmul";
/// norm_matmul.cu's NORM_ROWS and NORM_MAX_K: the rows it normalises and the widest row (one
/// 8-element word a thread of gemv's GEMV_THREADS).
const NORM_ROWS: u64 = 2;
const NORM_MAX_K: u64 = 8 * GEMV_THREADS as u64;

/// Whether a kernel argument is a buffer the 16-byte vector loads of norm_matmul.cu can read
/// (the null buffer of an absent operand is).
fn vector_aligned(a: &Arg) -> bool {
    matches!(a, Arg::Buf(p, _) if p.is_multiple_of(16))
}

/// TPERF_NORM_GEMV_BLOCKS_PER_SM: caps the split kernel's grid at this many blocks an SM (each
/// block then takes several column groups and normalises the rows once for them), for
/// measuring the trade against gemv's grid (read once; unset: gemv's grid).
fn blocks_per_sm() -> Option<u32> {
    static CAP: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    *CAP.get_or_init(|| {
        let v = std::env::var("TPERF_NORM_GEMV_BLOCKS_PER_SM").ok()?;
        match v.parse() {
            Ok(n) if n > 0 => Some(n),
            _ => {
                eprintln!("warning: TPERF_NORM_GEMV_BLOCKS_PER_SM={v:?} is not a positive whole number; using gemv's grid");
                None
            }
        }
    })
}

/// TPERF_NORM_ONE_PASS=1: LayerNorm's statistics from Σx and Σx² in one block reduction instead
/// of the two-pass mean then squared deviations (an experiment; read once).
fn one_pass() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("TPERF_NORM_ONE_PASS").is_some_and(|v| v == "1"))
}

impl CudaBackend {
    pub(crate) fn norm_matmul_forward(
        &mut self,
        call: &OpCall,
        op: &NormMatmul,
    ) -> Result<(), BackendError> {
        let io: NormMatmulIo = call.operands(op)?;
        let mm = &op.mm;
        let (m, k, n) = (mm.m as u64, mm.k as u64, mm.n as u64);
        let shape: Shape = match &op.norm {
            PreNorm::Layer(ln) => ln.into(),
            PreNorm::Rms(rn) => rn.into(),
        };
        // add and sum are operands exactly when the residual add is fused, β with a bias.
        let norm = NormForwardArgs {
            x: self.arg(call, &io.x, m * k)?,
            add: self.arg_opt(call, io.add.as_ref(), m * k)?,
            gamma: self.arg(call, &io.gamma, k)?,
            beta: self.arg_opt(call, io.beta.as_ref(), k)?,
            sum: self.arg_opt(call, io.sum.as_ref(), m * k)?,
            y: Arg::Buf(0, 0),
            stats: Arg::Buf(0, 0),
        };
        let x_dtype = io.x.dtype;
        let product = Product {
            w: io.w,
            bias: io.bias,
            y: io.y,
            act: io.act,
        };
        if m == 0 {
            return Ok(());
        }
        let (xp, wp) = (self.ptr(&io.x)?, self.ptr(&product.w)?);
        let norm_aligned = [norm.x, norm.add, norm.gamma, norm.beta, norm.sum]
            .iter()
            .all(vector_aligned);
        let fits = gemv_fits(mm, x_dtype, xp, wp) && m <= NORM_ROWS && k <= NORM_MAX_K;
        if fits && norm_aligned && product.w.dtype == x_dtype {
            let none = Arg::Buf(0, 0);
            let (act, kind) = match (mm.activation, &product.act) {
                (Some(kind), Some(act)) => (self.arg(call, act, m * n)?, act_code(kind)),
                _ => (none, -1),
            };
            let bias = self.arg_opt(call, product.bias.as_ref(), n)?;
            let args = [
                norm.x,
                norm.add,
                norm.gamma,
                norm.beta,
                norm.sum,
                self.arg(call, &product.w, n * k)?,
                bias,
                self.arg(call, &product.y, m * n)?,
                act,
                Arg::I32(m as i32),
                Arg::I32(k as i32),
                Arg::I32(n as i32),
                Arg::I32(kind),
                Arg::I32(i32::from(matches!(op.norm, PreNorm::Rms(_)))),
                Arg::I32(i32::from(op.residual())),
                Arg::I32(i32::from(op.has_beta())),
                Arg::I32(i32::from(one_pass())),
                Arg::F32(op.eps() as f32),
            ];
            let (split, mut blocks) = self.gemv_grid(n);
            if let (true, Some(per_sm)) = (split, blocks_per_sm()) {
                blocks = blocks.min(per_sm * self.gpu.info.sms.max(1) as u32);
            }
            let kernel = if split {
                "norm_gemv_rows_split"
            } else {
                "norm_gemv_rows"
            };
            let shared = (m * k * 2) as u32;
            return self.launch(
                call,
                SRC,
                kernel,
                (blocks, 1, 1),
                (GEMV_THREADS, 1, 1),
                shared,
                &args,
            );
        }
        // The norm's rows and statistics into scratch blocks (freed to the cache at the end;
        // the stream orders their reuse after the product), then the product from them.
        let normed = self
            .alloc
            .alloc(m * k * x_dtype.size_bytes())
            .map_err(driver("scratch for the pre-norm's rows"))?;
        let stats = match self
            .alloc
            .alloc(m * shape.stats_width() * 4)
            .map_err(driver("scratch for the pre-norm's statistics"))
        {
            Ok(block) => block,
            Err(e) => {
                self.alloc.free(normed);
                return Err(e.into());
            }
        };
        let args = NormForwardArgs {
            y: Arg::Buf(normed.ptr, dt_code(x_dtype)),
            stats: Arg::Buf(stats.ptr, dt_code(DType::F32)),
            ..norm
        };
        let result = self
            .launch_norm_forward(call, &shape, &args)
            .and_then(|()| self.forward_product(call, mm, (normed.ptr, x_dtype), &product));
        self.alloc.free(stats);
        self.alloc.free(normed);
        result
    }
}
