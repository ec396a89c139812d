//! Sampling on the device (kernels/sampling.cu): one block per row of logits, one launch for the
//! batch; the sampled ids are the op's output and nothing is read back.
//!
//! The settings (one for all rows, or one per row) travel as 32-bit words in device memory:
//! eagerly copied into a buffer the backend keeps for them, in a captured or replayed step staged
//! with the step's dynamic scalars (graph.rs), so a replayed decode step draws with this step's
//! seeds. The per-call counter of the reference's random stream lives on the device and the
//! kernel advances it, so replays advance it too.

use crate::backend::{invalid, unsupported, CudaBackend};
use crate::error::driver;
use crate::gpu::Arg;
use cudarc::driver::result as cu;
use tperf_core::backend::{BackendError, OpCall};
use tperf_core::dtype::DType;
use tperf_core::ops::sampling::{Sample, SampleIo, Sampling};

const SRC: &str = "sampling";
/// kernels/sampling.cu's SAMPLE_THREADS.
const THREADS: u32 = 1024;
/// kernels/sampling.cu's SETTING_WORDS.
pub(crate) const SETTING_WORDS: usize = 7;
/// Fixed-point weights of 2^40 each sum exactly in a u64 for rows of up to 2^23 tokens.
const MAX_V: usize = 1 << 23;

/// One setting as the kernel reads it: seed, temperature, top_p (2.0 when there is no cut) and
/// top_k clamped to 1..=V as the reference clamps it (V when unset).
fn setting_words(s: &Sampling, v: usize) -> [u32; SETTING_WORDS] {
    let k = s.top_k.map_or(v, |k| k.clamp(1, v)) as u32;
    let top_p = s.top_p.filter(|&p| p < 1.0).unwrap_or(2.0);
    let t = s.temperature.to_bits();
    let p = top_p.to_bits();
    [
        s.seed as u32,
        (s.seed >> 32) as u32,
        t as u32,
        (t >> 32) as u32,
        p as u32,
        (p >> 32) as u32,
        k,
    ]
}

/// The settings of `s` as words: one setting, or one per row when `per_row` is set.
pub(crate) fn sample_words(s: &Sample) -> Vec<u32> {
    if s.per_row.is_empty() {
        setting_words(&s.sampling, s.v).to_vec()
    } else {
        s.per_row
            .iter()
            .flat_map(|p| setting_words(p, s.v))
            .collect()
    }
}

impl CudaBackend {
    /// Draws the next samples from the start of the sampling stream, as a fresh backend does.
    pub fn restart_sampling(&mut self) -> Result<(), BackendError> {
        // SAFETY: the counter block holds 16 bytes owned by this backend; the memset is ordered
        // on the stream after every sampling kernel already issued.
        unsafe { cu::memset_d8_async(self.sample_state.ptr, 0, 16, self.gpu.cu_stream()) }
            .map_err(driver("resetting the sampling counter"))?;
        Ok(())
    }

    pub(crate) fn sample(&mut self, call: &OpCall, s: &Sample) -> Result<(), BackendError> {
        let io: SampleIo = call.operands(s)?;
        if io.ids.dtype != DType::I32 {
            return Err(unsupported(call, "the sampled ids must be an i32 tensor"));
        }
        if s.v == 0 || s.v > MAX_V {
            return Err(unsupported(
                call,
                format!("V = {} (device sampling takes 1..={MAX_V})", s.v),
            ));
        }
        if !s.per_row.is_empty() && s.per_row.len() != s.b {
            return Err(invalid(
                call,
                format!("{} per-row settings for {} rows", s.per_row.len(), s.b),
            ));
        }
        let rows =
            u32::try_from(s.b).map_err(|_| unsupported(call, "more rows than a grid holds"))?;
        let logits = self.arg(call, &io.logits, (s.b * s.v) as u64)?;
        let ids = self.arg(call, &io.ids, s.b as u64)?;
        if s.b == 0 {
            return Ok(());
        }
        let params = if self.op_scalars != 0 {
            self.op_scalars
        } else {
            self.upload_sample_words(&sample_words(s))?
        };
        let args = [
            logits,
            ids,
            Arg::I32(s.v as i32),
            Arg::Ptr(params),
            Arg::I32(i32::from(!s.per_row.is_empty())),
            Arg::Ptr(self.sample_state.ptr),
        ];
        self.launch(
            call,
            SRC,
            "sample_rows",
            (rows, 1, 1),
            (THREADS, 1, 1),
            0,
            &args,
        )?;
        self.set_id_range(&io.ids, (0, s.v as i32 - 1));
        Ok(())
    }

    /// Copies an eager call's settings to the device buffer kept for them (grown as needed) and
    /// returns its address. The copy is ordered on the stream, after the kernels that read the
    /// previous settings.
    fn upload_sample_words(&mut self, words: &[u32]) -> Result<u64, BackendError> {
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        if self.sample_params.bytes < bytes.len() as u64 {
            let block = self
                .alloc
                .alloc(bytes.len() as u64)
                .map_err(driver("allocating the sampling settings"))?;
            let old = std::mem::replace(&mut self.sample_params, block);
            if old.bytes > 0 {
                self.alloc.free(old);
            }
        }
        // SAFETY: `sample_params` holds at least `bytes.len()` bytes and stays allocated while
        // the backend lives; `bytes` is pageable host memory, which the driver stages before the
        // call returns.
        unsafe { cu::memcpy_htod_async(self.sample_params.ptr, &bytes, self.gpu.cu_stream()) }
            .map_err(driver("copying the sampling settings"))?;
        Ok(self.sample_params.ptr)
    }
}
