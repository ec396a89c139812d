//! The hardware table: datasheet figures for accelerators and CPUs, each saying where its
//! numbers come from, plus the local CPU detected at run time.
//!
//! Conventions: `peak_*_flops` are dense (no 2:4 sparsity) FLOP/s, a FLOP being one add or one
//! multiply; `mem_bw_bytes_per_s` is the datasheet memory bandwidth; `link_bw_bytes_per_s` is the
//! per-device, per-direction bandwidth of the fastest device-to-device link (NVLink, Infinity
//! Fabric, PCIe), which the collective cost model uses.

use crate::dtype::DType;
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    Gpu,
    Cpu,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Hardware {
    /// Short lowercase name used on the command line: "h100-sxm", "a100-80gb", "cpu".
    pub key: String,
    /// Full name for tables: "NVIDIA H100 SXM5 80GB".
    pub name: String,
    pub kind: DeviceKind,
    pub memory_bytes: u64,
    pub mem_bw_bytes_per_s: f64,
    /// Plain fp32 (CUDA cores / SIMD FMA), not TF32.
    pub peak_f32_flops: f64,
    /// Dense matrix-unit rate with bf16 inputs and fp32 accumulation.
    pub peak_bf16_flops: f64,
    /// Dense matrix-unit rate with fp16 inputs and fp32 accumulation.
    pub peak_f16_flops: f64,
    pub link_bw_bytes_per_s: f64,
    /// Where the numbers come from (datasheet and its date, or "detected: …").
    pub source: String,
}

impl Hardware {
    /// The peak rate for arithmetic whose operands are `dtype`.
    pub fn peak_flops(&self, dtype: DType) -> f64 {
        match dtype {
            DType::F32 | DType::I32 => self.peak_f32_flops,
            DType::Bf16 => self.peak_bf16_flops,
            DType::F16 => self.peak_f16_flops,
        }
    }

    /// The arithmetic intensity (FLOP per byte) above which an op is compute-bound.
    pub fn ridge_point(&self, dtype: DType) -> f64 {
        self.peak_flops(dtype) / self.mem_bw_bytes_per_s
    }
}
