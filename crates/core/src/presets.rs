//! Named model configurations: the seed's Llama-style sizes, GPT-2, and the student report's
//! PyTorch word_language_model Transformer.

use crate::config::{Biases, Mlp, ModelConfig, Norm, NormPlacement, Positions, RopeScaling};
use crate::suggest;
use thiserror::Error;

/// A preset and the batch and sequence length it is usually studied at.
#[derive(Clone, Debug)]
pub struct Preset {
    pub key: &'static str,
    pub description: &'static str,
    pub config: ModelConfig,
    pub default_batch: usize,
    pub default_seq: usize,
}

#[derive(Debug, Error)]
#[error("unknown preset '{name}'{hint}; known presets: {known}")]
pub struct UnknownPreset {
    pub name: String,
    pub hint: String,
    pub known: String,
}

/// The seed's language model: RMSNorm, SwiGLU with the given d_ff, RoPE θ = 10000, no biases,
/// untied output layer, vocabulary 10,000. Context 1,024 covers every length the seed runs.
fn seed_lm(
    name: &str,
    d_model: usize,
    d_ff: usize,
    n_layers: usize,
    n_heads: usize,
) -> ModelConfig {
    ModelConfig {
        name: name.to_string(),
        vocab_size: 10_000,
        context: 1024,
        d_model,
        d_ff,
        n_layers,
        n_heads,
        n_kv_heads: n_heads,
        head_dim: d_model / n_heads,
        norm: Norm::RmsNorm,
        norm_eps: 1e-5,
        mlp: Mlp::SwiGlu,
        positions: Positions::Rope {
            theta: 10_000.0,
            scaling: RopeScaling::None,
        },
        biases: Biases::NONE,
        tied_embeddings: false,
        causal: true,
        norm_placement: NormPlacement::Pre,
        final_norm: true,
        scale_embedding: false,
        sliding_window: None,
    }
}

/// GPT-2 as OpenAI released it: LayerNorm, GELU (tanh), learned positions, biases everywhere
/// but the output layer, which is tied to the token embedding.
fn gpt2(name: &str, d_model: usize, n_layers: usize, n_heads: usize) -> ModelConfig {
    ModelConfig {
        name: name.to_string(),
        vocab_size: 50_257,
        context: 1024,
        d_model,
        d_ff: 4 * d_model,
        n_layers,
        n_heads,
        n_kv_heads: n_heads,
        head_dim: d_model / n_heads,
        norm: Norm::LayerNorm,
        norm_eps: 1e-5,
        mlp: Mlp::Gelu,
        positions: Positions::Learned,
        biases: Biases {
            qkv: true,
            attn_out: true,
            mlp: true,
            norm: true,
            lm_head: false,
        },
        tied_embeddings: true,
        causal: true,
        norm_placement: NormPlacement::Pre,
        final_norm: true,
        scale_embedding: false,
        sliding_window: None,
    }
}

/// PyTorch's examples/word_language_model TransformerModel as the student report ran it
/// (WikiText-2 vocabulary of 33,278, emsize = nhid = 200, 2 heads, 2 layers, bptt 35): an
/// nn.TransformerEncoder of post-norm layers with ReLU and biases, a final LayerNorm, sinusoidal
/// positions added to an embedding scaled by √C, an untied output Linear with bias, and the
/// square causal mask it builds for language modelling.
fn word_language_model() -> ModelConfig {
    ModelConfig {
        name: "report".to_string(),
        vocab_size: 33_278,
        context: 5000, // PositionalEncoding's max_len
        d_model: 200,
        d_ff: 200,
        n_layers: 2,
        n_heads: 2,
        n_kv_heads: 2,
        head_dim: 100,
        norm: Norm::LayerNorm,
        norm_eps: 1e-5,
        mlp: Mlp::Relu,
        positions: Positions::Sinusoidal,
        biases: Biases {
            qkv: true,
            attn_out: true,
            mlp: true,
            norm: true,
            lm_head: true,
        },
        tied_embeddings: false,
        causal: true,
        norm_placement: NormPlacement::Post,
        final_norm: true,
        scale_embedding: true,
        sliding_window: None,
    }
}

pub fn all() -> Vec<Preset> {
    let seed = |key, d, f, l, h, description| Preset {
        key,
        description,
        config: seed_lm(key, d, f, l, h),
        default_batch: 4,
        default_seq: 256,
    };
    let gpt = |key, d, l, h, description| Preset {
        key,
        description,
        config: gpt2(key, d, l, h),
        default_batch: 8,
        default_seq: 1024,
    };
    vec![
        seed("small", 768, 3072, 12, 12, "seed LM small: 768/3072/12/12"),
        seed(
            "medium",
            1024,
            4096,
            24,
            16,
            "seed LM medium: 1024/4096/24/16",
        ),
        seed(
            "large",
            1280,
            5120,
            36,
            20,
            "seed LM large: 1280/5120/36/20",
        ),
        seed("xl", 1600, 6400, 48, 25, "seed LM xl: 1600/6400/48/25"),
        seed(
            "2.7B",
            2560,
            10240,
            32,
            32,
            "seed LM 2.7B: 2560/10240/32/32",
        ),
        seed("10B", 4608, 12288, 50, 36, "seed LM 10B: 4608/12288/50/36"),
        gpt("gpt2-124m", 768, 12, 12, "GPT-2 small (124M)"),
        gpt("gpt2-355m", 1024, 24, 16, "GPT-2 medium (355M)"),
        gpt("gpt2-774m", 1280, 36, 20, "GPT-2 large (774M)"),
        gpt("gpt2-1.5b", 1600, 48, 25, "GPT-2 XL (1.5B)"),
        Preset {
            key: "report",
            description: "the student report's PyTorch word_language_model Transformer",
            config: word_language_model(),
            default_batch: 20,
            default_seq: 35,
        },
    ]
}

/// Looks a preset up by key, case-insensitively, accepting a few spellings people use.
pub fn find(name: &str) -> Result<Preset, UnknownPreset> {
    let wanted = match name.to_ascii_lowercase().as_str() {
        "gpt2" | "gpt2-small" | "gpt2-124" => "gpt2-124m".to_string(),
        "gpt2-medium" => "gpt2-355m".to_string(),
        "gpt2-large" => "gpt2-774m".to_string(),
        "gpt2-xl" => "gpt2-1.5b".to_string(),
        "2.7b" => "2.7B".to_string(),
        "10b" => "10B".to_string(),
        other => other.to_string(),
    };
    let presets = all();
    if let Some(p) = presets.iter().find(|p| p.key == wanted) {
        return Ok(p.clone());
    }
    let keys: Vec<&str> = presets.iter().map(|p| p.key).collect();
    let hint = suggest::nearest(name, keys.iter().copied())
        .map(|k| format!(" (did you mean '{k}'?)"))
        .unwrap_or_default();
    Err(UnknownPreset {
        name: name.to_string(),
        hint,
        known: keys.join(", "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_is_valid() {
        for p in all() {
            p.config
                .validate()
                .unwrap_or_else(|e| panic!("{}: {e}", p.key));
            p.config.check_seq(p.default_seq).unwrap();
        }
    }

    #[test]
    fn gpt2_124m_has_the_published_parameter_count() {
        // The count Hugging Face's GPT2LMHeadModel reports with the output layer tied.
        assert_eq!(find("gpt2-124m").unwrap().config.param_count(), 124_439_808);
    }

    #[test]
    fn gpt2_family_counts() {
        // Known totals of the released checkpoints (tied output layer, no lm_head bias).
        assert_eq!(find("gpt2-355m").unwrap().config.param_count(), 354_823_168);
        assert_eq!(find("gpt2-774m").unwrap().config.param_count(), 774_030_080);
        assert_eq!(
            find("gpt2-1.5b").unwrap().config.param_count(),
            1_557_611_200
        );
    }

    /// Closed form of the seed LM: per layer 4C² (q, k, v, o with MHA) + 3CF (SwiGLU) + 2C
    /// (two RMSNorm gains); plus V·C in, V·C out and the final norm's C.
    #[test]
    fn seed_sizes_match_their_closed_form() {
        for key in ["small", "medium", "large", "xl", "2.7B", "10B"] {
            let c = find(key).unwrap().config;
            let (d, f, l, v) = (
                c.d_model as u64,
                c.d_ff as u64,
                c.n_layers as u64,
                c.vocab_size as u64,
            );
            let closed = l * (4 * d * d + 3 * d * f + 2 * d) + 2 * v * d + d;
            assert_eq!(c.param_count(), closed, "{key}");
        }
        // Spot-check one by hand: small = 12·(4·768² + 3·768·3072 + 2·768) + 2·10000·768 + 768.
        assert_eq!(find("small").unwrap().config.param_count(), 128_625_408);
    }

    /// The report's model: the per-layer count matches torchinfo's 242,000 for one
    /// TransformerEncoderLayer; embedding 6,655,600; decoder Linear 6,688,878; final norm 400.
    #[test]
    fn report_model_matches_torchinfo() {
        let c = find("report").unwrap().config;
        let rows = c.param_breakdown();
        let get = |name: &str| rows.iter().find(|r| r.0 == name).unwrap().1;
        let per_layer = (get("attention norms")
            + get("attention qkv")
            + get("attention output")
            + get("mlp norms")
            + get("mlp"))
            / 2;
        assert_eq!(per_layer, 242_000);
        assert_eq!(get("token embedding"), 6_655_600);
        assert_eq!(get("output layer"), 6_688_878);
        assert_eq!(get("final norm"), 400);
    }

    #[test]
    fn unknown_preset_suggests_the_nearest() {
        let e = find("smal").unwrap_err();
        assert!(e.to_string().contains("did you mean 'small'"), "{e}");
        assert!(find("GPT2").is_ok());
        assert!(find("2.7b").is_ok());
    }
}
