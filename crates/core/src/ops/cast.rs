//! Cast between dtypes (the fp32 master weights to their bf16/fp16 compute copy): no
//! arithmetic; bytes by the io rule (4 read + 2 written per element for fp32 → bf16).

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Cast {
    pub numel: u64,
}
