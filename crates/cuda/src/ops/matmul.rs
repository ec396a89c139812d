//! Linear layers through cuBLASLt: Y = X·Wᵀ + b with W stored (n×k) as nn.Linear does, the bias
//! fused as cuBLASLt's BIAS epilogue, and the activation (when the schedule fuses one) applied by
//! the elementwise kernel to the pre-activation, which the backward needs anyway — except GELU
//! where cuBLASLt's GELU_AUX epilogue applies (N a multiple of 8): then the matmul writes both.
//!
//! One or two rows (a decode step's batch) take matmul.cu's `gemv_rows` instead, bias and
//! activation fused: one pass over W where cuBLASLt ran split-K kernels and a reduce
//! (`TPERF_GEMV=0` keeps cuBLASLt, for an A/B).
//!
//! Backward: dpre = dy·act'(pre) (when fused), dX = dpre·W (β = 1 when accumulating into an
//! existing gradient), dW = dpreᵀ·X written in f32 from bf16 operands, db = Σ_rows dpre.

use super::activation::act_code;
use super::aligned_16;
use crate::backend::{dt_code, unsupported, CudaBackend};
use crate::blas::Gemm;
use crate::error::driver;
use crate::gpu::Arg;
use tperf_core::backend::{BackendError, OpCall};
use tperf_core::dtype::DType;
use tperf_core::ops::activation::ActivationKind;
use tperf_core::ops::matmul::{Matmul, MatmulBackwardIo, MatmulIo};
use tperf_core::tensor::Tensor;

/// matmul.cu's gemv_rows: threads and warps a block, columns a warp takes at once, the most
/// rows, and the most bytes of X it stages in shared memory.
const GEMV_THREADS: u32 = 128;
const GEMV_WARPS: u64 = GEMV_THREADS as u64 / 32;
const GEMV_COLS: u64 = 2;
const GEMV_MAX_ROWS: usize = 8;
const GEMV_MAX_X: usize = 48 * 1024;
/// gemv_rows_split takes the products for which gemv_rows would run fewer blocks than this per SM.
const GEMV_SPLIT_BELOW_BLOCKS_PER_SM: u64 = 4;

/// The most rows a product sends to gemv_rows (the kernel takes up to GEMV_MAX_ROWS). Measured
/// on the H200, gpt2-124m decode back to back against cuBLASLt (`TPERF_GEMV=0`), ms a step: B1
/// 0.41 vs 0.50, B2 0.47 vs 0.50, B4 0.57 vs 0.50, B8 0.70 vs 0.52
/// (bench-results/2026-12-03-h200-session12/hostcost): past two rows each W word's arithmetic
/// for every row, not the loads, bounds it.
const GEMV_ROWS: usize = 2;
const _: () = assert!(GEMV_ROWS <= GEMV_MAX_ROWS);

/// Whether a forward product takes gemv_rows: 1..=GEMV_ROWS rows of 16-bit X and W at
/// 16-byte-aligned addresses, K a whole number of 16-byte words and X small enough to stage.
fn gemv_fits(mm: &Matmul, dtype: DType, x: u64, w: u64) -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let on = *ON.get_or_init(|| std::env::var_os("TPERF_GEMV").is_none_or(|v| v != "0"));
    on && (1..=GEMV_ROWS).contains(&mm.m)
        && mm.k > 0
        && mm.k.is_multiple_of(8)
        && mm.m * mm.k * 2 <= GEMV_MAX_X
        && mm.n > 0
        && matches!(dtype, DType::Bf16 | DType::F16)
        && aligned_16(x)
        && aligned_16(w)
}

/// The padded row stride (elements) a forward product Y = X·Wᵀ (+ b) is computed at, when Y's
/// rows are not 16-byte multiples: None when they are, or when the product is not the plain
/// overwriting kind `padded_product` handles.
///
/// Why: cuBLASLt chooses alignment-1 kernels (Turing-era `cutlass_75_…_align1`, no TMA, no
/// wgmma) when C's leading dimension is not a multiple of 16 bytes. gpt2's lm_head writes rows
/// of 50,257 logits, and took 110 µs at B32 and 127 µs at B128 on the H200 against a floor of
/// ~16 µs (reading the 77 MB of W once; CUPTI, bench-results/2026-12-03-h200-session11/verify/
/// profile-decode-b32.txt and -b128.txt), a sixth of the decode step.
fn padded_stride(g: &Gemm) -> Option<u64> {
    let per_16_bytes = 16 / g.c_dtype.size_bytes();
    let aligned = g.n.is_multiple_of(per_16_bytes);
    let plain = !g.accumulate && !g.gelu_aux && !g.trans_a && g.trans_b && g.ldc.is_none();
    (!aligned && plain && g.n > per_16_bytes && g.k > 0).then(|| g.n.next_multiple_of(per_16_bytes))
}

impl CudaBackend {
    /// Y = X·Wᵀ (+ b) for Y (M×N) whose rows are not 16-byte multiples (`padded_stride`): into a
    /// scratch of rows `stride` apart, as two products whose every row start and column count
    /// is 16-byte aligned — the columns below the last multiple of the vector width, then the
    /// few after it (W's rows from there, the bias and the scratch offset alike, all still on
    /// 16 bytes because the first part's width is a multiple of the vector) — then narrowed
    /// into Y's packed rows by one copy kernel. Costs M·N·2 extra bytes of traffic, a few µs
    /// where the product itself went from alignment-1 kernels to the aligned ones.
    fn padded_product(
        &mut self,
        call: &OpCall,
        g: Gemm,
        stride: u64,
        (x, w, y): (u64, u64, u64),
        bias: Option<u64>,
    ) -> Result<(), BackendError> {
        let elem = g.c_dtype.size_bytes();
        let wide = g.n - g.n % (16 / elem);
        let scratch = self
            .alloc
            .alloc(g.m * stride * elem)
            .map_err(driver("scratch for a padded matmul output"))?;
        let head = Gemm {
            n: wide,
            ldc: Some(stride),
            ..g
        };
        let tail = Gemm {
            n: g.n - wide,
            ldc: Some(stride),
            ..g
        };
        let w_elem = g.ab_dtype.size_bytes();
        let result = self
            .gemm(call, &head, x, w, scratch.ptr, bias, None)
            .and_then(|()| {
                self.gemm(
                    call,
                    &tail,
                    x,
                    w + wide * g.k * w_elem,
                    scratch.ptr + wide * elem,
                    bias.map(|b| b + wide * elem),
                    None,
                )
            })
            .and_then(|()| {
                let dt = dt_code(g.c_dtype);
                let args = [
                    Arg::Buf(scratch.ptr, dt),
                    Arg::Buf(y, dt),
                    Arg::I64(g.m as i64),
                    Arg::I32(stride as i32),
                    Arg::I32(g.n as i32),
                ];
                self.launch_1d(call, "matmul", "narrow_rows", g.m * g.n, &args)
            });
        // Back to the cache at once: the stream orders its reuse after the kernels above.
        self.alloc.free(scratch);
        result
    }

    /// C = op(A)·op(B) (+ C), or the empty sum when K = 0.
    fn gemm_or_zero(
        &mut self,
        call: &OpCall,
        g: Gemm,
        a: u64,
        b: u64,
        c: &Tensor,
        bias: Option<u64>,
    ) -> Result<(), BackendError> {
        if g.k == 0 {
            if bias.is_some() {
                return Err(unsupported(call, "a matmul with K = 0 and a bias"));
            }
            if !g.accumulate {
                self.zero(c)?;
            }
            return Ok(());
        }
        let cp = self.ptr(c)?;
        self.gemm(call, &g, a, b, cp, bias, None)
    }

    pub(crate) fn matmul_forward(
        &mut self,
        call: &OpCall,
        mm: &Matmul,
    ) -> Result<(), BackendError> {
        let io: MatmulIo = call.operands(mm)?;
        let (m, k, n) = (mm.m as u64, mm.k as u64, mm.n as u64);
        let (x, w, pre) = (&io.x, &io.w, &io.y);
        self.arg(call, x, m * k)?;
        self.arg(call, w, n * k)?;
        self.arg(call, pre, m * n)?;
        if x.dtype != w.dtype {
            return Err(unsupported(
                call,
                format!(
                    "X is {} but W is {}: cast the weights first",
                    x.dtype, w.dtype
                ),
            ));
        }
        let bias = match &io.bias {
            Some(b) => {
                self.arg(call, b, n)?;
                if b.dtype != pre.dtype {
                    return Err(unsupported(
                        call,
                        format!("the bias is {} but the output {}", b.dtype, pre.dtype),
                    ));
                }
                Some(self.ptr(b)?)
            }
            None => None,
        };
        let mut g = Gemm {
            m,
            n,
            k,
            trans_a: false,
            trans_b: true,
            ab_dtype: x.dtype,
            c_dtype: pre.dtype,
            accumulate: false,
            bias: bias.is_some(),
            gelu_aux: false,
            ldc: None,
        };
        let (xp, wp) = (self.ptr(x)?, self.ptr(w)?);
        if gemv_fits(mm, x.dtype, xp, wp) {
            let none = Arg::Buf(0, 0);
            let (act, kind) = match (mm.activation, &io.act) {
                (Some(kind), Some(act)) => (self.arg(call, act, m * n)?, act_code(kind)),
                _ => (none, -1),
            };
            let bias = match &io.bias {
                Some(b) => self.arg(call, b, n)?,
                None => none,
            };
            let args = [
                self.arg(call, x, m * k)?,
                self.arg(call, w, n * k)?,
                bias,
                self.arg(call, pre, m * n)?,
                act,
                Arg::I32(m as i32),
                Arg::I32(k as i32),
                Arg::I32(n as i32),
                Arg::I32(kind),
            ];
            // A warp a column group while that gives every SM several blocks, else the block's
            // warps share one (gemv_rows_split; matmul.cu says why).
            let sms = self.gpu.info.sms.max(1) as u64;
            let groups = n.div_ceil(GEMV_COLS * GEMV_WARPS);
            let (kernel, blocks) = if groups < GEMV_SPLIT_BELOW_BLOCKS_PER_SM * sms {
                ("gemv_rows_split", n.div_ceil(GEMV_COLS).min(16 * sms))
            } else {
                ("gemv_rows", groups.min(8 * sms))
            };
            let shared = (m * k * 2) as u32;
            return self.launch(
                call,
                "matmul",
                kernel,
                (blocks as u32, 1, 1),
                (GEMV_THREADS, 1, 1),
                shared,
                &args,
            );
        }
        // GELU in cuBLASLt's epilogue: the activation is written from the accumulator and the
        // pre-activation beside it, which saves the separate kernel's launch and its read of
        // the pre-activation (its tanh approximation is GPT-2's, the reference's).
        let act = io.act.as_ref().filter(|a| a.dtype == pre.dtype);
        if let (Some(ActivationKind::Gelu), Some(act), true) = (
            mm.activation,
            act,
            self.gelu_epilogue && k > 0 && n.is_multiple_of(8),
        ) {
            g.gelu_aux = true;
            let (actp, prep) = (self.ptr(act)?, self.ptr(pre)?);
            return self.gemm(call, &g, xp, wp, actp, bias, Some(prep));
        }
        if let Some(stride) = padded_stride(&g) {
            let prep = self.ptr(pre)?;
            self.padded_product(call, g, stride, (xp, wp, prep), bias)?;
        } else {
            self.gemm_or_zero(call, g, xp, wp, pre, bias)?;
        }
        // act is an operand exactly when an activation is fused.
        if let (Some(kind), Some(act)) = (mm.activation, &io.act) {
            let args = [
                self.arg(call, pre, m * n)?,
                self.arg(call, act, m * n)?,
                Arg::I64((m * n) as i64),
                Arg::I32(act_code(kind)),
            ];
            self.launch_1d(call, "activation", "activation_forward", m * n, &args)?;
        }
        Ok(())
    }

    pub(crate) fn matmul_backward(
        &mut self,
        call: &OpCall,
        mm: &Matmul,
    ) -> Result<(), BackendError> {
        let io: MatmulBackwardIo = call.operands(mm)?;
        let (m, k, n) = (mm.m as u64, mm.k as u64, mm.n as u64);
        let (x, w, dy, dx, dw) = (&io.x, &io.w, &io.dy, &io.dx, &io.dw);
        self.arg(call, x, m * k)?;
        self.arg(call, w, n * k)?;
        self.arg(call, dy, m * n)?;
        self.arg(call, dx, m * k)?;
        self.arg(call, dw, n * k)?;
        if x.dtype != w.dtype || dy.dtype != x.dtype {
            return Err(unsupported(
                call,
                format!(
                    "X, W and dY must share a dtype (got {}, {}, {})",
                    x.dtype, w.dtype, dy.dtype
                ),
            ));
        }
        // dpre: dy itself, or dy·act'(pre) in a temporary block (freed to the cache at the end;
        // the stream orders its reuse after the kernels below). pre is an operand exactly when
        // an activation is fused.
        let mut scratch = None;
        let dpre = match (mm.activation, &io.pre) {
            (Some(kind), Some(pre)) => {
                let bytes = m * n * dy.dtype.size_bytes();
                let block = self
                    .alloc
                    .alloc(bytes)
                    .map_err(crate::error::driver("scratch for dpre"))?;
                let args = [
                    self.arg(call, pre, m * n)?,
                    self.arg(call, dy, m * n)?,
                    Arg::Buf(block.ptr, crate::backend::dt_code(dy.dtype)),
                    Arg::I64((m * n) as i64),
                    Arg::I32(act_code(kind)),
                ];
                self.launch_1d(call, "activation", "activation_backward", m * n, &args)?;
                scratch = Some(block);
                block.ptr
            }
            _ => self.ptr(dy)?,
        };
        let ab = x.dtype;
        let (xp, wp) = (self.ptr(x)?, self.ptr(w)?);
        let result = (|| {
            // dX (m×k) = dpre (m×n) · W (n×k)
            let g_dx = Gemm {
                m,
                n: k,
                k: n,
                trans_a: false,
                trans_b: false,
                ab_dtype: ab,
                c_dtype: dx.dtype,
                accumulate: mm.accumulate_dx,
                bias: false,
                gelu_aux: false,
                ldc: None,
            };
            self.gemm_or_zero(call, g_dx, dpre, wp, dx, None)?;
            // dW (n×k) = dpreᵀ (n×m) · X (m×k)
            let g_dw = Gemm {
                m: n,
                n: k,
                k: m,
                trans_a: true,
                trans_b: false,
                ab_dtype: ab,
                c_dtype: dw.dtype,
                accumulate: false,
                bias: false,
                gelu_aux: false,
                ldc: None,
            };
            self.gemm_or_zero(call, g_dw, dpre, xp, dw, None)?;
            if let Some(db) = io.db.as_ref().filter(|_| n > 0) {
                let args = [
                    Arg::Buf(dpre, crate::backend::dt_code(dy.dtype)),
                    self.arg(call, db, n)?,
                    Arg::I64(m as i64),
                    Arg::I64(n as i64),
                ];
                // A block of 32×32 threads for each 32 columns (COLSUM_COLS and COLSUM_WARPS
                // in kernels/matmul.cu).
                let blocks = n.div_ceil(32) as u32;
                self.launch(
                    call,
                    "matmul",
                    "column_sum",
                    (blocks, 1, 1),
                    (32, 32, 1),
                    0,
                    &args,
                )?;
            }
            Ok(())
        })();
        if let Some(block) = scratch {
            self.alloc.free(block);
        }
        result
    }
}
