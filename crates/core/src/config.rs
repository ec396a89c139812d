//! Model configurations: the knobs of a decoder (or encoder) transformer, checked once where
//! they enter (STYLE.md principle 7), and the derived sizes the schedule uses.
//!
//! Symbols used throughout tperf:
//!   V vocabulary, T sequence length, C = d_model, F = d_ff, L layers, H query heads,
//!   H_kv key/value heads, D = head_dim (C / H unless a config says otherwise), B batch.

use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Norm {
    LayerNorm,
    RmsNorm,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mlp {
    /// up (C→F), GELU (tanh approximation), down (F→C).
    Gelu,
    /// up (C→F), ReLU, down (F→C).
    Relu,
    /// gate and up (C→2F fused), silu(gate)·up, down (F→C).
    SwiGlu,
    /// gate and up (C→2F fused), gelu(gate)·up, down (F→C): Gemma, T5 v1.1.
    GeGlu,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum Positions {
    /// A learned table of `context` × C added to the token embedding (GPT-2).
    Learned,
    /// Rotary embeddings applied to queries and keys in every layer: pair i of a head turns
    /// by position × θ^(−2i/D), that frequency rescaled by `scaling` (long-context variants).
    Rope {
        theta: f64,
        #[serde(default, skip_serializing_if = "RopeScaling::is_none")]
        scaling: RopeScaling,
    },
    /// The fixed sin/cos table of "Attention is all you need", added to the embedding.
    Sinusoidal,
}

/// How a long-context model rescales RoPE's frequencies (Hugging Face's `rope_scaling`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "type")]
pub enum RopeScaling {
    /// Every frequency as θ gives it.
    #[default]
    None,
    /// Every frequency divided by `factor` (positions interpolated: "linear" in transformers).
    Linear { factor: f64 },
    /// Llama 3.1's: frequencies whose wavelength exceeds original_context / low_freq_factor are
    /// divided by `factor`, those shorter than original_context / high_freq_factor are kept,
    /// and those between are blended, linearly in 1 / wavelength.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        /// The context the model was pre-trained at (`original_max_position_embeddings`).
        original_context: usize,
    },
}

/// A scaling as three numbers, the form the kernels take: a frequency of wavelength λ = 2π/f
/// is kept when λ < `keep_below`, divided by `factor` when λ > `divide_above`, and in between
/// blended as (1 − s)·f/factor + s·f with s = (1/λ − 1/divide_above) / (1/keep_below −
/// 1/divide_above). No scaling is factor 1; linear is both bands 0 (every λ is above).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RopeBands {
    pub factor: f64,
    pub keep_below: f64,
    pub divide_above: f64,
}

impl RopeScaling {
    pub fn is_none(&self) -> bool {
        matches!(self, RopeScaling::None)
    }

    pub fn bands(&self) -> RopeBands {
        match *self {
            RopeScaling::None => RopeBands {
                factor: 1.0,
                keep_below: 0.0,
                divide_above: 0.0,
            },
            RopeScaling::Linear { factor } => RopeBands {
                factor,
                keep_below: 0.0,
                divide_above: 0.0,
            },
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_context,
            } => RopeBands {
                factor,
                keep_below: original_context as f64 / high_freq_factor,
                divide_above: original_context as f64 / low_freq_factor,
            },
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let positive = |field: &'static str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(ConfigError::Invalid {
                    field,
                    value: v.to_string(),
                    why: "must be a positive finite number",
                })
            }
        };
        match *self {
            RopeScaling::None => Ok(()),
            RopeScaling::Linear { factor } => positive("rope_scaling.factor", factor),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_context,
            } => {
                positive("rope_scaling.factor", factor)?;
                positive("rope_scaling.low_freq_factor", low_freq_factor)?;
                positive("rope_scaling.high_freq_factor", high_freq_factor)?;
                if high_freq_factor <= low_freq_factor {
                    return Err(ConfigError::Invalid {
                        field: "rope_scaling.high_freq_factor",
                        value: high_freq_factor.to_string(),
                        why: "must exceed low_freq_factor (the blended band lies between them)",
                    });
                }
                if original_context == 0 {
                    return Err(ConfigError::Zero {
                        field: "rope_scaling.original_max_position_embeddings",
                    });
                }
                Ok(())
            }
        }
    }
}

impl RopeBands {
    /// The frequency `inv_freq` after scaling.
    pub fn apply(&self, inv_freq: f64) -> f64 {
        let wavelength = 2.0 * std::f64::consts::PI / inv_freq;
        if wavelength < self.keep_below {
            inv_freq
        } else if wavelength > self.divide_above {
            inv_freq / self.factor
        } else {
            let s = (1.0 / wavelength - 1.0 / self.divide_above)
                / (1.0 / self.keep_below - 1.0 / self.divide_above);
            (1.0 - s) * inv_freq / self.factor + s * inv_freq
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NormPlacement {
    /// x + f(norm(x)): GPT-2, Llama.
    Pre,
    /// norm(x + f(x)): the original Transformer and PyTorch's default encoder layer.
    Post,
}

/// Which linear layers and norms carry a bias (LayerNorm's β counts as the norm's bias).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Biases {
    pub qkv: bool,
    pub attn_out: bool,
    pub mlp: bool,
    pub norm: bool,
    pub lm_head: bool,
}

impl Biases {
    pub const NONE: Biases = Biases {
        qkv: false,
        attn_out: false,
        mlp: false,
        norm: false,
        lm_head: false,
    };
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub name: String,
    /// V
    pub vocab_size: usize,
    /// The longest sequence the model accepts (T_max); sizes the learned position table and
    /// the KV cache.
    pub context: usize,
    /// C
    pub d_model: usize,
    /// F
    pub d_ff: usize,
    /// L
    pub n_layers: usize,
    /// H
    pub n_heads: usize,
    /// H_kv: equal to H for MHA, 1 for MQA, in between for GQA.
    pub n_kv_heads: usize,
    /// D: C / H unless the model says otherwise (some published models decouple them).
    pub head_dim: usize,
    pub norm: Norm,
    pub norm_eps: f64,
    pub mlp: Mlp,
    pub positions: Positions,
    pub biases: Biases,
    pub tied_embeddings: bool,
    pub causal: bool,
    pub norm_placement: NormPlacement,
    /// A norm after the last layer, before the output projection.
    pub final_norm: bool,
    /// Multiply the token embedding by √C (the original Transformer and its PyTorch example).
    pub scale_embedding: bool,
    /// Each query sees at most this many keys (Mistral's sliding window).
    pub sliding_window: Option<usize>,
}

#[derive(Debug, Error, PartialEq)]
pub enum ConfigError {
    #[error("{field} must be at least 1 (got 0)")]
    Zero { field: &'static str },
    #[error("d_model ({d_model}) is not divisible by n_heads ({n_heads}): choose n_heads that divides d_model, or set head_dim explicitly")]
    HeadsDoNotDivide { d_model: usize, n_heads: usize },
    #[error("n_heads ({n_heads}) is not divisible by n_kv_heads ({n_kv_heads}): grouped-query attention shares each key/value head among n_heads / n_kv_heads query heads")]
    KvHeadsDoNotDivide { n_heads: usize, n_kv_heads: usize },
    #[error("n_kv_heads ({n_kv_heads}) exceeds n_heads ({n_heads}): use n_kv_heads ≤ n_heads")]
    TooManyKvHeads { n_heads: usize, n_kv_heads: usize },
    #[error("head_dim ({head_dim}) must be even for rotary position embeddings")]
    OddRopeHeadDim { head_dim: usize },
    #[error("{what} is too large: {detail}; reduce it")]
    TooLarge { what: &'static str, detail: String },
    #[error("{field} = {value} is not valid: {why}")]
    Invalid {
        field: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("sequence length {seq} exceeds the model's context of {context} tokens: use --seq ≤ {context}")]
    SeqTooLong { seq: usize, context: usize },
}

/// Sizes whose products stay far from u64 overflow in every cost formula: 2^24 covers any
/// published model dimension (the largest d_ff is ~10^5, vocabularies ~10^6, contexts ~10^7).
const MAX_DIM: usize = 1 << 24;
const MAX_LAYERS: usize = 1 << 16;

impl ModelConfig {
    /// Checks every invariant the schedule relies on. Call where a config enters tperf.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (field, value) in [
            ("vocab_size", self.vocab_size),
            ("context", self.context),
            ("d_model", self.d_model),
            ("d_ff", self.d_ff),
            ("n_layers", self.n_layers),
            ("n_heads", self.n_heads),
            ("n_kv_heads", self.n_kv_heads),
            ("head_dim", self.head_dim),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero { field });
            }
            let limit = if field == "n_layers" {
                MAX_LAYERS
            } else {
                MAX_DIM
            };
            if value > limit {
                return Err(ConfigError::TooLarge {
                    what: field,
                    detail: format!("{value} > {limit}"),
                });
            }
        }
        if self.n_kv_heads > self.n_heads {
            return Err(ConfigError::TooManyKvHeads {
                n_heads: self.n_heads,
                n_kv_heads: self.n_kv_heads,
            });
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return Err(ConfigError::KvHeadsDoNotDivide {
                n_heads: self.n_heads,
                n_kv_heads: self.n_kv_heads,
            });
        }
        if matches!(self.positions, Positions::Rope { .. }) && !self.head_dim.is_multiple_of(2) {
            return Err(ConfigError::OddRopeHeadDim {
                head_dim: self.head_dim,
            });
        }
        if let Positions::Rope { theta, scaling } = self.positions {
            if !(theta.is_finite() && theta > 0.0) {
                return Err(ConfigError::Invalid {
                    field: "rope_theta",
                    value: theta.to_string(),
                    why: "must be a positive finite number",
                });
            }
            scaling.validate()?;
        }
        if !(self.norm_eps.is_finite() && self.norm_eps >= 0.0) {
            return Err(ConfigError::Invalid {
                field: "norm_eps",
                value: self.norm_eps.to_string(),
                why: "must be a non-negative finite number",
            });
        }
        if self.sliding_window == Some(0) {
            return Err(ConfigError::Zero {
                field: "sliding_window",
            });
        }
        if self.n_heads * self.head_dim > MAX_DIM {
            return Err(ConfigError::TooLarge {
                what: "n_heads × head_dim",
                detail: format!("{} × {}", self.n_heads, self.head_dim),
            });
        }
        if self.param_count_u128() > u64::MAX as u128 / 64 {
            return Err(ConfigError::TooLarge {
                what: "the parameter count",
                detail: format!("{} parameters", self.param_count_u128()),
            });
        }
        Ok(())
    }

    /// The usual constructor for configs whose head_dim is C / H.
    pub fn with_heads(mut self, n_heads: usize, n_kv_heads: usize) -> Result<Self, ConfigError> {
        if n_heads == 0 {
            return Err(ConfigError::Zero { field: "n_heads" });
        }
        if !self.d_model.is_multiple_of(n_heads) {
            return Err(ConfigError::HeadsDoNotDivide {
                d_model: self.d_model,
                n_heads,
            });
        }
        self.n_heads = n_heads;
        self.n_kv_heads = n_kv_heads;
        self.head_dim = self.d_model / n_heads;
        Ok(self)
    }

    /// Width of the fused QKV projection's output: (H + 2 H_kv) D.
    pub fn qkv_dim(&self) -> usize {
        (self.n_heads + 2 * self.n_kv_heads) * self.head_dim
    }

    /// Width of the attention output before the output projection: H D.
    pub fn attn_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    /// Width of the MLP's first projection: 2F for SwiGLU (gate and up fused), F otherwise.
    pub fn mlp_in_dim(&self) -> usize {
        match self.mlp {
            Mlp::SwiGlu | Mlp::GeGlu => 2 * self.d_ff,
            Mlp::Gelu | Mlp::Relu => self.d_ff,
        }
    }

    pub fn has_learned_positions(&self) -> bool {
        matches!(self.positions, Positions::Learned)
    }

    /// Parameters by component, in the order a reader expects them; each count is derived
    /// from the shapes the schedule allocates (see `schedule::weights`), so tests that compare
    /// this closed form with the schedule's allocations check both.
    pub fn param_breakdown(&self) -> Vec<(&'static str, u64)> {
        let (c, f, v) = (
            self.d_model as u64,
            self.d_ff as u64,
            self.vocab_size as u64,
        );
        let l = self.n_layers as u64;
        let b = |on: bool, n: u64| if on { n } else { 0 };
        let norm = c + b(self.norm == Norm::LayerNorm && self.biases.norm, c);
        let qkv = c * self.qkv_dim() as u64 + b(self.biases.qkv, self.qkv_dim() as u64);
        let out = self.attn_dim() as u64 * c + b(self.biases.attn_out, c);
        let mlp_in = self.mlp_in_dim() as u64;
        let mlp = c * mlp_in + b(self.biases.mlp, mlp_in) + f * c + b(self.biases.mlp, c);
        let mut rows = vec![("token embedding", v * c)];
        if self.has_learned_positions() {
            rows.push(("position embedding", self.context as u64 * c));
        }
        rows.push(("attention norms", l * norm));
        rows.push(("attention qkv", l * qkv));
        rows.push(("attention output", l * out));
        rows.push(("mlp norms", l * norm));
        rows.push(("mlp", l * mlp));
        if self.final_norm {
            rows.push(("final norm", norm));
        }
        if !self.tied_embeddings {
            rows.push(("output layer", c * v + b(self.biases.lm_head, v)));
        } else if self.biases.lm_head {
            rows.push(("output bias", v));
        }
        rows
    }

    pub fn param_count(&self) -> u64 {
        self.param_breakdown().iter().map(|(_, n)| n).sum()
    }

    /// Parameters excluding the embedding tables (Kaplan's N, used by 6N-style estimates).
    pub fn non_embedding_param_count(&self) -> u64 {
        self.param_breakdown()
            .iter()
            .filter(|(name, _)| !name.contains("embedding"))
            .map(|(_, n)| n)
            .sum()
    }

    /// The same count in u128, for the overflow check before any u64 arithmetic is trusted.
    fn param_count_u128(&self) -> u128 {
        let (c, f, v) = (
            self.d_model as u128,
            self.d_ff as u128,
            self.vocab_size as u128,
        );
        let qkv = (self.n_heads + 2 * self.n_kv_heads) as u128 * self.head_dim as u128;
        let per_layer = c * qkv + qkv + self.attn_dim() as u128 * c + 3 * c * f + 4 * c;
        self.n_layers as u128 * per_layer + 2 * v * c + self.context as u128 * c
    }

    /// Checks a sequence length against the model before any schedule is built.
    pub fn check_seq(&self, seq: usize) -> Result<(), ConfigError> {
        if seq == 0 {
            return Err(ConfigError::Zero { field: "seq" });
        }
        if seq > self.context {
            return Err(ConfigError::SeqTooLong {
                seq,
                context: self.context,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod rope_scaling_tests {
    use super::*;

    #[test]
    fn llama3_bands_keep_blend_and_divide() {
        // Llama 3.1 8B's numbers: bands at 8192 / 4 = 2048 and 8192 / 1 = 8192 positions.
        let s = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_context: 8192,
        };
        let b = s.bands();
        let tau = 2.0 * std::f64::consts::PI;
        let f_of = |wavelength: f64| tau / wavelength;
        // Short wavelengths keep their frequency, long ones are divided by the factor.
        assert_eq!(b.apply(f_of(100.0)), f_of(100.0));
        assert_eq!(b.apply(f_of(10_000.0)), f_of(10_000.0) / 8.0);
        // Between, 1/λ is blended linearly: at λ = 4096, s = (8192/4096 − 1) / (4 − 1) = 1/3.
        let f = f_of(4096.0);
        let want = (2.0 / 3.0) * f / 8.0 + (1.0 / 3.0) * f;
        assert!(
            (b.apply(f) - want).abs() < 1e-15 * f,
            "{} vs {want}",
            b.apply(f)
        );
        // The blend meets each band's edge continuously.
        for edge in [2048.0, 8192.0] {
            let (below, above) = (
                b.apply(f_of(edge * 0.999_999)),
                b.apply(f_of(edge * 1.000_001)),
            );
            assert!(
                (below - above).abs() < 1e-5 * below,
                "discontinuous at {edge}"
            );
        }
        assert_eq!(
            RopeScaling::Linear { factor: 4.0 }.bands().apply(0.5),
            0.125
        );
        assert_eq!(RopeScaling::None.bands().apply(0.5), 0.5);
    }

    #[test]
    fn configs_without_scaling_serialise_as_before() {
        let p = Positions::Rope {
            theta: 1e4,
            scaling: RopeScaling::None,
        };
        assert_eq!(
            serde_json::to_string(&p).unwrap(),
            r#"{"kind":"rope","theta":10000.0}"#
        );
        let back: Positions = serde_json::from_str(r#"{"kind":"rope","theta":10000.0}"#).unwrap();
        assert_eq!(back, p);
        let scaled = Positions::Rope {
            theta: 1e4,
            scaling: RopeScaling::Linear { factor: 2.0 },
        };
        let text = serde_json::to_string(&scaled).unwrap();
        assert_eq!(serde_json::from_str::<Positions>(&text).unwrap(), scaled);
    }
}
