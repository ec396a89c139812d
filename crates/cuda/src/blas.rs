//! Matmuls through cuBLASLt, in row-major terms.
//!
//! cuBLASLt is column-major. A row-major matrix P (r×c) in memory *is* the column-major matrix
//! Pᵀ (c×r, leading dimension c), so the row-major product C = op(A)·op(B) (M×N) is computed as
//! the column-major product Cᵀ = op(B)ᵀ·op(A)ᵀ (N×M): cuBLASLt's "A" is our B and its "B" is our
//! A, and a row-major operand that is *not* transposed is passed with op N on its memory as is.
//!
//! The descriptor and layouts are cached per shape, so a training step builds them only in its
//! first step. The algorithm the heuristic chose is cached per shape *class*: M rounded up to
//! [`algo_rows`], the rest exact. A served step's M is its token rows, different almost every
//! step while prefill chunks come and go, and the heuristic query is the expensive part of a new
//! shape (on the H200, steps with prefill spent 5.5–13 ms issuing while their shapes were new
//! and ~1.4 ms once they repeated: bench-results/2026-12-04-h200-session14). A new shape of a known
//! class asks `cublasLtMatmulAlgoCheck` whether the class's algorithm runs it (it checks the
//! alignment, the workspace, the split-K bounds) and queries the heuristic only where it does
//! not. A shape that is its class's own M (a training step's B·T, a multiple of 64) always
//! queries the heuristic and its choice becomes the class's, so training runs what the
//! heuristic picks for its exact shape, as before.
//! `TPERF_GEMM_EXACT_ALGO=1` queries the heuristic for every new shape, for an A/B.

use crate::error::{blas as err, CudaError};
use cudarc::cublaslt::{result as lt, sys};
use std::collections::HashMap;
use std::ffi::c_void;
use tperf_core::dtype::DType;

/// 32 MiB, what cuBLASLt's Hopper kernels ask for at most (split-K reductions, stream-K).
pub const WORKSPACE_BYTES: usize = 32 << 20;

/// One row-major matmul: C (M×N) = α·op(A)·op(B) + β·C, with op(A) M×K and op(B) K×N.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Gemm {
    pub m: u64,
    pub n: u64,
    pub k: u64,
    /// A is stored K×M (row-major) and used transposed.
    pub trans_a: bool,
    /// B is stored N×K (row-major) and used transposed.
    pub trans_b: bool,
    pub ab_dtype: DType,
    pub c_dtype: DType,
    /// C is read (β = 1) rather than overwritten (β = 0).
    pub accumulate: bool,
    /// A bias of length N added to every row, in C's dtype (the BIAS epilogue).
    pub bias: bool,
    /// C receives GELU (tanh approximation) of the product (plus bias), and a second M×N buffer,
    /// the auxiliary output, receives the pre-activation itself, which the backward needs (the
    /// GELU_AUX epilogues). N must be a multiple of 8 (cuBLASLt's rule for the auxiliary's
    /// leading dimension).
    pub gelu_aux: bool,
    /// C's row stride in elements when it is not N (C's rows then lie `ldc` apart, N ≤ ldc):
    /// the padded scratch of `matmul_forward`'s alignment fix.
    pub ldc: Option<u64>,
}

impl Gemm {
    /// C's row stride in elements.
    pub fn c_row_stride(&self) -> u64 {
        self.ldc.unwrap_or(self.n)
    }
}

fn cuda_type(d: DType) -> sys::cudaDataType {
    match d {
        DType::F32 => sys::cudaDataType::CUDA_R_32F,
        DType::Bf16 => sys::cudaDataType::CUDA_R_16BF,
        DType::F16 => sys::cudaDataType::CUDA_R_16F,
        DType::I32 => sys::cudaDataType::CUDA_R_32I,
    }
}

/// The arithmetic cuBLASLt may use. Every op of tperf's schedule runs `F32` (fp32 accumulation,
/// fp32 inputs computed in full fp32); `Tf32` lets fp32 inputs run on the tensor cores rounded to
/// TF32, which `tperf hw measure` times as a ceiling of its own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Compute {
    #[default]
    F32,
    Tf32,
}

/// The M at which a product's algorithm is chosen for every M of its class: the next power of two
/// up to 64, then the next multiple of 64. cuBLASLt's Hopper tiles are 64–256 rows, so the shapes
/// of one class fill the same tiles but the last; 2048 token rows make 38 classes, not 2048
/// shapes, of each weight's product.
pub fn algo_rows(m: u64) -> u64 {
    if m <= 64 {
        m.next_power_of_two()
    } else {
        m.div_ceil(64) * 64
    }
}

/// The shape whose algorithm `g` may share: `g` with M rounded up to [`algo_rows`].
fn algo_class(g: &Gemm) -> Gemm {
    Gemm {
        m: algo_rows(g.m),
        ..*g
    }
}

struct Plan {
    desc: sys::cublasLtMatmulDesc_t,
    layouts: [sys::cublasLtMatrixLayout_t; 3],
    algo: sys::cublasLtMatmulAlgo_t,
}

pub struct Blas {
    handle: sys::cublasLtHandle_t,
    workspace: u64,
    plans: HashMap<(Gemm, Compute), Plan>,
    /// The algorithm of each shape class (the Gemm with `m` = [`algo_rows`]): the heuristic's
    /// choice for the class's own shape once it has been seen, before that for the first shape
    /// of the class that needed a query.
    algos: HashMap<(Gemm, Compute), sys::cublasLtMatmulAlgo_t>,
    /// `TPERF_GEMM_EXACT_ALGO` set: no class sharing (the module comment).
    exact_algos: bool,
}

impl Blas {
    /// `workspace` is a device buffer of [`WORKSPACE_BYTES`] the caller owns.
    pub fn new(workspace: u64) -> Result<Self, CudaError> {
        // SAFETY: only asks the loader whether libcublasLt was found; no cuBLASLt function is
        // called before.
        if !unsafe { sys::is_culib_present() } {
            return Err(CudaError::NoCublasLt);
        }
        let handle = lt::create_handle().map_err(err("create"))?;
        Ok(Blas {
            handle,
            workspace,
            plans: HashMap::new(),
            algos: HashMap::new(),
            exact_algos: std::env::var_os("TPERF_GEMM_EXACT_ALGO").is_some_and(|v| v != "0"),
        })
    }

    fn plan(&mut self, g: &Gemm, compute: Compute) -> Result<&Plan, CudaError> {
        let key = (*g, compute);
        if !self.plans.contains_key(&key) {
            let plan = self.make_plan(g, compute)?;
            let class = algo_class(g);
            if g.m == class.m {
                // The class's own shape: its heuristic choice is the class's from now on.
                self.algos.insert((class, compute), plan.algo);
            } else {
                self.algos.entry((class, compute)).or_insert(plan.algo);
            }
            self.plans.insert(key, plan);
        }
        Ok(&self.plans[&key])
    }

    fn make_plan(&self, g: &Gemm, compute: Compute) -> Result<Plan, CudaError> {
        let compute_type = match compute {
            Compute::F32 => sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            Compute::Tf32 => sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32,
        };
        let desc = lt::create_matmul_desc(compute_type, sys::cudaDataType::CUDA_R_32F)
            .map_err(err("matmul descriptor"))?;
        // SAFETY: `desc` was created above and `value` points to `size` bytes of a local that
        // outlives the call, of the type the attribute takes (i32 ops, epilogue, u64 pointers).
        let set = |attr, value: *const c_void, size: usize| unsafe {
            lt::set_matmul_desc_attribute(desc, attr, value, size)
                .map_err(err("descriptor attribute"))
        };
        // cuBLASLt's A is our B, its B our A (module comment).
        let op_a: i32 = g.trans_b as i32;
        let op_b: i32 = g.trans_a as i32;
        use sys::cublasLtMatmulDescAttributes_t as D;
        set(
            D::CUBLASLT_MATMUL_DESC_TRANSA,
            (&op_a as *const i32).cast(),
            4,
        )?;
        set(
            D::CUBLASLT_MATMUL_DESC_TRANSB,
            (&op_b as *const i32).cast(),
            4,
        )?;
        use sys::cublasLtEpilogue_t as E;
        let epi = match (g.bias, g.gelu_aux) {
            (false, false) => None,
            (true, false) => Some(E::CUBLASLT_EPILOGUE_BIAS),
            (false, true) => Some(E::CUBLASLT_EPILOGUE_GELU_AUX),
            (true, true) => Some(E::CUBLASLT_EPILOGUE_GELU_AUX_BIAS),
        };
        if let Some(epi) = epi {
            set(
                D::CUBLASLT_MATMUL_DESC_EPILOGUE,
                (&epi as *const sys::cublasLtEpilogue_t).cast(),
                std::mem::size_of::<sys::cublasLtEpilogue_t>(),
            )?;
        }
        if g.gelu_aux {
            // The auxiliary output is C-shaped: column-major N×M, leading dimension N.
            let ld = g.n as i64;
            set(
                D::CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD,
                (&ld as *const i64).cast(),
                8,
            )?;
        }
        if g.bias {
            let bias_type = cuda_type(g.c_dtype);
            set(
                D::CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE,
                (&bias_type as *const sys::cudaDataType).cast(),
                std::mem::size_of::<sys::cudaDataType>(),
            )?;
        }
        let ab = cuda_type(g.ab_dtype);
        // Column-major shapes: our B (K×N used) is cuBLASLt's A (N×K used).
        let a_layout = if g.trans_b {
            lt::create_matrix_layout(ab, g.k, g.n, g.k as i64)
        } else {
            lt::create_matrix_layout(ab, g.n, g.k, g.n as i64)
        }
        .map_err(err("layout"))?;
        let b_layout = if g.trans_a {
            lt::create_matrix_layout(ab, g.m, g.k, g.m as i64)
        } else {
            lt::create_matrix_layout(ab, g.k, g.m, g.k as i64)
        }
        .map_err(err("layout"))?;
        let c_layout =
            lt::create_matrix_layout(cuda_type(g.c_dtype), g.n, g.m, g.c_row_stride() as i64)
                .map_err(err("layout"))?;
        // The class's own shape (a training step's M) always asks the heuristic, so it runs
        // what the heuristic picks for it whatever came before.
        let class = algo_class(g);
        let shared = (g.m != class.m && !self.exact_algos)
            .then(|| self.algos.get(&(class, compute)))
            .flatten();
        if let Some(algo) = shared {
            // SAFETY: the handle, descriptor and layouts are live objects created above for this
            // shape; `algo` is an algorithm cuBLASLt's heuristic returned for this handle, and the
            // check only reads it and writes `checked`, a plain struct it fills.
            let mut checked: sys::cublasLtMatmulHeuristicResult_t = unsafe { std::mem::zeroed() };
            let status = unsafe {
                sys::cublasLtMatmulAlgoCheck(
                    self.handle,
                    desc,
                    a_layout,
                    b_layout,
                    c_layout,
                    c_layout,
                    algo,
                    &mut checked,
                )
            };
            let fits = status == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS
                && checked.state == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS
                && checked.workspaceSize <= WORKSPACE_BYTES;
            if fits {
                return Ok(Plan {
                    desc,
                    layouts: [a_layout, b_layout, c_layout],
                    algo: *algo,
                });
            }
        }
        let pref = lt::create_matmul_pref().map_err(err("preference"))?;
        let ws = WORKSPACE_BYTES as u64;
        // SAFETY: `pref` was created above; the attribute is a u64 and `ws` outlives the call.
        unsafe {
            lt::set_matmul_pref_attribute(
                pref,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                (&ws as *const u64).cast(),
                8,
            )
        }
        .map_err(err("preference attribute"))?;
        // SAFETY: the handle, descriptor, layouts and preference are live objects created above for
        // this shape.
        let heuristic = unsafe {
            lt::get_matmul_algo_heuristic(
                self.handle,
                desc,
                a_layout,
                b_layout,
                c_layout,
                c_layout,
                pref,
            )
        };
        // SAFETY: `pref` was created above and is used by nothing after the heuristic query.
        let _ = unsafe { lt::destroy_matmul_pref(pref) };
        let heuristic = heuristic.map_err(|source| CudaError::NoAlgorithm { gemm: *g, source })?;
        Ok(Plan {
            desc,
            layouts: [a_layout, b_layout, c_layout],
            algo: heuristic.algo,
        })
    }

    /// Issues `g` on `stream`: C = op(A)·op(B) (+ C) (+ bias), or with `gelu_aux` C = GELU of
    /// that and `aux` = that. Pointers are device addresses of buffers at least as large as the
    /// shapes say.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm(
        &mut self,
        g: &Gemm,
        a: u64,
        b: u64,
        c: u64,
        bias: Option<u64>,
        aux: Option<u64>,
        stream: cudarc::driver::sys::CUstream,
    ) -> Result<(), CudaError> {
        self.gemm_with(g, Compute::F32, a, b, c, bias, aux, stream)
    }

    /// As [`gemm`](Self::gemm), with the arithmetic `compute` allows.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_with(
        &mut self,
        g: &Gemm,
        compute: Compute,
        a: u64,
        b: u64,
        c: u64,
        bias: Option<u64>,
        aux: Option<u64>,
        stream: cudarc::driver::sys::CUstream,
    ) -> Result<(), CudaError> {
        if g.m == 0 || g.n == 0 {
            return Ok(());
        }
        if g.gelu_aux != aux.is_some() {
            return Err(CudaError::GeluAuxMismatch);
        }
        if g.gelu_aux && !g.n.is_multiple_of(8) {
            return Err(CudaError::GeluAuxN { n: g.n });
        }
        let workspace = self.workspace;
        let handle = self.handle;
        let plan = self.plan(g, compute)?;
        // This call's device addresses of the epilogue's operands, on the cached plan.
        use sys::cublasLtMatmulDescAttributes_t as D;
        let pointers = [
            (D::CUBLASLT_MATMUL_DESC_BIAS_POINTER, bias, "bias pointer"),
            (
                D::CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER,
                aux,
                "auxiliary pointer",
            ),
        ];
        for (attr, ptr, what) in pointers {
            let Some(ptr) = ptr else { continue };
            // SAFETY: `plan.desc` is live (owned by `self.plans`); a pointer attribute is a u64
            // device address, read during the call from `ptr`, which outlives it.
            unsafe {
                lt::set_matmul_desc_attribute(plan.desc, attr, (&ptr as *const u64).cast(), 8)
            }
            .map_err(err(what))?;
        }
        let alpha = 1.0f32;
        // K = 0 is an empty sum: cuBLASLt then scales C by β, so β = 0 writes zeros as wanted.
        let beta = if g.accumulate { 1.0f32 } else { 0.0 };
        let [la, lb, lc] = plan.layouts;
        // SAFETY: the descriptor and layouts describe exactly the shapes `g` gives, and the caller
        // guarantees a, b, c (and bias, aux) are device buffers at least that large, alive until
        // the stream has run the matmul; alpha and beta are f32 as the CUBLAS_COMPUTE_32F scale
        // type requires, and the workspace is WORKSPACE_BYTES bytes owned by the backend.
        unsafe {
            lt::matmul(
                handle,
                plan.desc,
                (&alpha as *const f32).cast(),
                (&beta as *const f32).cast(),
                b as *const c_void,
                la,
                a as *const c_void,
                lb,
                c as *const c_void,
                lc,
                c as *mut c_void,
                lc,
                &plan.algo,
                workspace as *mut c_void,
                WORKSPACE_BYTES,
                stream as sys::cudaStream_t,
            )
        }
        .map_err(err("matmul"))
    }
}

impl Drop for Blas {
    fn drop(&mut self) {
        for (_, p) in self.plans.drain() {
            // SAFETY: each plan's descriptor and layouts were created by `make_plan` and are
            // destroyed once, here; no matmul can be queued after the Blas is dropped.
            unsafe {
                let _ = lt::destroy_matmul_desc(p.desc);
                for l in p.layouts {
                    let _ = lt::destroy_matrix_layout(l);
                }
            }
        }
        // SAFETY: the handle was created in `new` and every plan using it was destroyed above.
        let _ = unsafe { lt::destroy_handle(self.handle) };
    }
}

#[cfg(test)]
mod tests {
    use super::algo_rows;

    #[test]
    fn shape_classes_round_m_up_and_keep_training_shapes_exact() {
        let cases = [
            (1, 1),
            (3, 4),
            (33, 64),
            (64, 64),
            (65, 128),
            (125, 128),
            (1965, 1984),
        ];
        for (m, class) in cases {
            assert_eq!(algo_rows(m), class, "m = {m}");
        }
        // A training step's B·T rows (multiples of 64) are classes of their own.
        for m in [128u64, 512, 1024, 4096, 8192] {
            assert_eq!(algo_rows(m), m);
        }
        // Never below M, and a class holds at most 64 rows' worth of shapes past 64.
        for m in 1..5000u64 {
            let c = algo_rows(m);
            assert!(c >= m && (m <= 64 || c - m < 64), "m = {m}: {c}");
        }
        // 2048 token rows (the engine's default budget) make 38 classes.
        let classes: std::collections::BTreeSet<u64> = (1..=2048).map(algo_rows).collect();
        assert_eq!(classes.len(), 38);
    }
}
