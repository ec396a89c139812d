//! Global gradient norm, ‖g‖₂ over all parameters, for clipping: a square and an add per
//! element (2 FLOPs); bytes by the io rule (every gradient read once, one scalar written).

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct GradNorm {
    pub numel: u64,
}

impl GradNorm {
    pub fn flops(&self) -> u64 {
        2 * self.numel
    }
}
