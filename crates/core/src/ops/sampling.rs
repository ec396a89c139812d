//! Sampling the next token from the last position's logits (b × V): divide by the temperature
//! V, max V, exp V, sum V, and a top-k selection or the cumulative draw V → 5V FLOPs per row.
//! Bytes: the io rule (logits read, b token ids written).

use serde::Serialize;

/// How the next token is drawn. Temperature 0 means greedy (argmax).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Sampling {
    pub temperature: f64,
    pub top_k: Option<usize>,
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            temperature: 1.0,
            top_k: None,
            seed: 0,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Sample {
    pub b: usize,
    pub v: usize,
    pub sampling: Sampling,
}

impl Sample {
    pub fn flops(&self) -> u64 {
        5 * self.b as u64 * self.v as u64
    }
}
