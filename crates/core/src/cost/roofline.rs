//! The roofline: an op can go no faster than its arithmetic at the peak rate nor than its bytes
//! at the memory bandwidth, so its predicted time is the larger of the two, and which one is
//! larger says what bounds it. The ridge point, peak / bandwidth, is the arithmetic intensity
//! where the two meet.
//!
//! Which peak: matrix-class ops (linear layers, attention products) run on the matrix units at
//! the rate of their input dtype; everything else runs on the vector units at the plain fp32
//! rate, whatever its storage dtype. Collectives are bounded by the device link instead.

use super::hardware::Hardware;
use crate::dtype::DType;
use crate::ops::{Cost, OpClass};
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Bound {
    Compute,
    Memory,
    Communication,
}

impl Bound {
    pub const fn name(self) -> &'static str {
        match self {
            Bound::Compute => "compute",
            Bound::Memory => "memory",
            Bound::Communication => "comm",
        }
    }
}

#[derive(Clone, Copy, Debug, Serialize)]
pub struct OpTime {
    pub seconds: f64,
    pub compute_seconds: f64,
    pub memory_seconds: f64,
    pub bound: Bound,
    /// The peak FLOP/s this op was held to.
    pub peak_flops: f64,
}

/// The peak an op of `class` with operands of `dtype` can reach on `hw`.
pub fn peak_for(hw: &Hardware, class: OpClass, dtype: DType) -> f64 {
    match class {
        OpClass::Matmul => hw.peak_flops(dtype),
        _ => hw.peak_f32_flops,
    }
}

pub fn op_time(cost: Cost, class: OpClass, dtype: DType, hw: &Hardware) -> OpTime {
    let peak = peak_for(hw, class, dtype);
    let compute = cost.flops as f64 / peak;
    if class == OpClass::Communication {
        let link = cost.bytes as f64 / hw.link_bw_bytes_per_s;
        return OpTime {
            seconds: link.max(compute),
            compute_seconds: compute,
            memory_seconds: link,
            bound: Bound::Communication,
            peak_flops: peak,
        };
    }
    let memory = cost.bytes as f64 / hw.mem_bw_bytes_per_s;
    OpTime {
        seconds: compute.max(memory),
        compute_seconds: compute,
        memory_seconds: memory,
        bound: if compute >= memory {
            Bound::Compute
        } else {
            Bound::Memory
        },
        peak_flops: peak,
    }
}
