//! Import of a Hugging Face `config.json` for Llama-, Mistral-, Qwen2- and GPT-2-style models,
//! so any published model of those families can be analysed without its weights.
//!
//! Each family's defaults are the ones its `transformers` configuration class applies when a
//! key is absent; the details that change cost are carried over: grouped KV heads, an explicit
//! head_dim, Qwen2's q/k/v biases, Mistral's sliding window, tied embeddings, GPT-2's n_inner.

use crate::config::{
    Biases, ConfigError, Mlp, ModelConfig, Norm, NormPlacement, Positions, RopeScaling,
};
use serde_json::{Map, Value};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum HfConfigError {
    #[error("{path}: not valid JSON ({reason}); check the file is a Hugging Face config.json")]
    Json {
        path: String,
        reason: serde_json::Error,
    },
    #[error("{path}: the top level must be a JSON object")]
    NotObject { path: String },
    #[error("{path}: missing \"{key}\", which a {family} config must have")]
    Missing {
        path: String,
        key: &'static str,
        family: &'static str,
    },
    #[error("{path}: \"{key}\" must be {expected} (found {found})")]
    WrongType {
        path: String,
        key: &'static str,
        expected: &'static str,
        found: String,
    },
    #[error("{path}: model_type \"{model_type}\" is not supported; tperf imports llama, mistral, qwen2 and gpt2 configs (write a tperf config for others)")]
    UnsupportedFamily { path: String, model_type: String },
    #[error("{path}: {what} is not supported for {family} import: {detail}")]
    Unsupported {
        path: String,
        family: &'static str,
        what: &'static str,
        detail: String,
    },
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: ConfigError },
}

/// Parses `text`, the contents of a config.json found at `path` (used in messages and as the
/// model's name when the file does not carry one).
pub fn parse(path: &str, text: &str) -> Result<ModelConfig, HfConfigError> {
    let value: Value = serde_json::from_str(text).map_err(|reason| HfConfigError::Json {
        path: path.to_string(),
        reason,
    })?;
    let obj = value.as_object().ok_or_else(|| HfConfigError::NotObject {
        path: path.to_string(),
    })?;
    let r = Reader { path, obj };
    let model_type = r.model_type()?;
    let config = match model_type.as_str() {
        "llama" => r.llama_like("llama", Family::Llama)?,
        "mistral" => r.llama_like("mistral", Family::Mistral)?,
        "qwen2" => r.llama_like("qwen2", Family::Qwen2)?,
        "gpt2" => r.gpt2()?,
        _ => {
            return Err(HfConfigError::UnsupportedFamily {
                path: path.to_string(),
                model_type,
            })
        }
    };
    config.validate().map_err(|reason| HfConfigError::Invalid {
        path: path.to_string(),
        reason,
    })?;
    Ok(config)
}

#[derive(Clone, Copy, PartialEq)]
enum Family {
    Llama,
    Mistral,
    Qwen2,
}

struct Reader<'a> {
    path: &'a str,
    obj: &'a Map<String, Value>,
}

impl Reader<'_> {
    fn model_type(&self) -> Result<String, HfConfigError> {
        if let Some(t) = self.obj.get("model_type").and_then(Value::as_str) {
            return Ok(t.to_ascii_lowercase());
        }
        // Older configs name only the architecture class.
        let arch = self
            .obj
            .get("architectures")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .and_then(Value::as_str)
            .unwrap_or("");
        let guess = [
            ("Llama", "llama"),
            ("Mistral", "mistral"),
            ("Qwen2", "qwen2"),
            ("GPT2", "gpt2"),
        ]
        .iter()
        .find(|(prefix, _)| arch.starts_with(prefix))
        .map(|(_, t)| t.to_string());
        guess.ok_or_else(|| HfConfigError::Missing {
            path: self.path.to_string(),
            key: "model_type",
            family: "Hugging Face",
        })
    }

    fn found(v: &Value) -> String {
        let s = v.to_string();
        if s.len() > 40 {
            format!("{}…", &s[..40])
        } else {
            s
        }
    }

    fn usize_opt(&self, key: &'static str) -> Result<Option<usize>, HfConfigError> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| HfConfigError::WrongType {
                    path: self.path.to_string(),
                    key,
                    expected: "a non-negative integer",
                    found: Self::found(v),
                }),
        }
    }

    fn usize_req(&self, key: &'static str, family: &'static str) -> Result<usize, HfConfigError> {
        self.usize_opt(key)?.ok_or(HfConfigError::Missing {
            path: self.path.to_string(),
            key,
            family,
        })
    }

    fn f64_or(&self, key: &'static str, default: f64) -> Result<f64, HfConfigError> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v.as_f64().ok_or_else(|| HfConfigError::WrongType {
                path: self.path.to_string(),
                key,
                expected: "a number",
                found: Self::found(v),
            }),
        }
    }

    fn bool_or(&self, key: &'static str, default: bool) -> Result<bool, HfConfigError> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| HfConfigError::WrongType {
                path: self.path.to_string(),
                key,
                expected: "true or false",
                found: Self::found(v),
            }),
        }
    }

    fn str_or<'s>(&'s self, key: &'static str, default: &'s str) -> &'s str {
        self.obj.get(key).and_then(Value::as_str).unwrap_or(default)
    }

    /// RoPE's frequency scaling: "rope_scaling" (transformers < 5) or "rope_parameters" (≥ 5),
    /// its kind under "rope_type" (or the older "type"). Linear and Llama 3's are read; a kind
    /// tperf does not compute (dynamic NTK, YaRN, LongRoPE) is left as none here, because the
    /// cost model does not depend on it, and refused where weights are loaded
    /// (`tperf_runtime::hf`), because the logits would.
    fn rope_scaling(&self, family: &'static str) -> Result<RopeScaling, HfConfigError> {
        let Some(p) = ["rope_scaling", "rope_parameters"]
            .iter()
            .find_map(|k| self.obj.get(*k).filter(|v| v.is_object()))
        else {
            return Ok(RopeScaling::None);
        };
        let kind = p
            .get("rope_type")
            .or_else(|| p.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("default");
        let number = |key: &'static str, field: &str| -> Result<f64, HfConfigError> {
            match p.get(field) {
                None | Some(Value::Null) => Err(HfConfigError::Missing {
                    path: self.path.to_string(),
                    key,
                    family,
                }),
                Some(v) => v.as_f64().ok_or_else(|| HfConfigError::WrongType {
                    path: self.path.to_string(),
                    key,
                    expected: "a number",
                    found: Self::found(v),
                }),
            }
        };
        Ok(match kind {
            "linear" => RopeScaling::Linear {
                factor: number("rope_scaling.factor", "factor")?,
            },
            "llama3" => {
                let context = number(
                    "rope_scaling.original_max_position_embeddings",
                    "original_max_position_embeddings",
                )?;
                if !(context.fract() == 0.0 && (1.0..1e15).contains(&context)) {
                    return Err(HfConfigError::WrongType {
                        path: self.path.to_string(),
                        key: "rope_scaling.original_max_position_embeddings",
                        expected: "a positive integer",
                        found: context.to_string(),
                    });
                }
                RopeScaling::Llama3 {
                    factor: number("rope_scaling.factor", "factor")?,
                    low_freq_factor: number("rope_scaling.low_freq_factor", "low_freq_factor")?,
                    high_freq_factor: number("rope_scaling.high_freq_factor", "high_freq_factor")?,
                    original_context: context as usize,
                }
            }
            _ => RopeScaling::None,
        })
    }

    fn name(&self) -> String {
        let from_file = self.str_or("_name_or_path", "");
        if from_file.is_empty() {
            self.path.to_string()
        } else {
            from_file.to_string()
        }
    }

    fn llama_like(&self, family: &'static str, kind: Family) -> Result<ModelConfig, HfConfigError> {
        let d_model = self.usize_req("hidden_size", family)?;
        let n_heads = self.usize_req("num_attention_heads", family)?;
        let n_kv_heads = self.usize_opt("num_key_value_heads")?.unwrap_or(n_heads);
        let head_dim = match self.usize_opt("head_dim")? {
            Some(d) => d,
            None if n_heads > 0 && d_model % n_heads == 0 => d_model / n_heads,
            None => {
                return Err(HfConfigError::Invalid {
                    path: self.path.to_string(),
                    reason: ConfigError::HeadsDoNotDivide { d_model, n_heads },
                })
            }
        };
        let act = self.str_or("hidden_act", "silu");
        let mlp = match act {
            "silu" | "swish" => Mlp::SwiGlu,
            "gelu" | "gelu_new" | "gelu_pytorch_tanh" => Mlp::GeGlu,
            _ => {
                return Err(HfConfigError::Unsupported {
                    path: self.path.to_string(),
                    family,
                    what: "hidden_act",
                    detail: format!(
                        "\"{act}\" (tperf's gated MLPs are SwiGLU, silu, and GeGLU, gelu)"
                    ),
                })
            }
        };
        // transformers' defaults: Llama θ = 10000, Mistral θ = 10000, Qwen2 θ = 10000 (the
        // released Qwen2 configs all set 1e6 explicitly).
        // transformers ≥ 5 writes θ under "rope_parameters"; earlier versions at the top level.
        let theta = match self
            .obj
            .get("rope_parameters")
            .and_then(|p| p.get("rope_theta"))
        {
            Some(v) => v.as_f64().ok_or_else(|| HfConfigError::WrongType {
                path: self.path.to_string(),
                key: "rope_parameters.rope_theta",
                expected: "a number",
                found: Self::found(v),
            })?,
            None => self.f64_or("rope_theta", 10_000.0)?,
        };
        let attention_bias = self.bool_or("attention_bias", false)?;
        let mlp_bias = self.bool_or("mlp_bias", false)?;
        let biases = match kind {
            // Qwen2 puts a bias on q, k and v, none on the output projection.
            Family::Qwen2 => Biases {
                qkv: true,
                ..Biases::NONE
            },
            Family::Llama | Family::Mistral => Biases {
                qkv: attention_bias,
                attn_out: attention_bias,
                mlp: mlp_bias,
                ..Biases::NONE
            },
        };
        let sliding_window = match kind {
            Family::Mistral => self.usize_opt("sliding_window")?,
            Family::Qwen2 if self.bool_or("use_sliding_window", false)? => {
                self.usize_opt("sliding_window")?
            }
            _ => None,
        };
        Ok(ModelConfig {
            name: self.name(),
            vocab_size: self.usize_req("vocab_size", family)?,
            context: self.usize_opt("max_position_embeddings")?.unwrap_or(2048),
            d_model,
            d_ff: self.usize_req("intermediate_size", family)?,
            n_layers: self.usize_req("num_hidden_layers", family)?,
            n_heads,
            n_kv_heads,
            head_dim,
            norm: Norm::RmsNorm,
            norm_eps: self.f64_or("rms_norm_eps", 1e-6)?,
            mlp,
            positions: Positions::Rope {
                theta,
                scaling: self.rope_scaling(family)?,
            },
            biases,
            tied_embeddings: self.bool_or("tie_word_embeddings", false)?,
            causal: true,
            norm_placement: NormPlacement::Pre,
            final_norm: true,
            scale_embedding: false,
            sliding_window,
        })
    }

    fn gpt2(&self) -> Result<ModelConfig, HfConfigError> {
        let family = "gpt2";
        let d_model = self.usize_opt("n_embd")?.unwrap_or(768);
        let n_heads = self.usize_opt("n_head")?.unwrap_or(12);
        if n_heads == 0 || d_model % n_heads != 0 {
            return Err(HfConfigError::Invalid {
                path: self.path.to_string(),
                reason: ConfigError::HeadsDoNotDivide { d_model, n_heads },
            });
        }
        let act = self.str_or("activation_function", "gelu_new");
        let mlp = match act {
            "gelu_new" | "gelu" | "gelu_pytorch_tanh" | "gelu_fast" => Mlp::Gelu,
            "relu" => Mlp::Relu,
            other => {
                return Err(HfConfigError::Unsupported {
                    path: self.path.to_string(),
                    family,
                    what: "activation_function",
                    detail: format!("\"{other}\""),
                })
            }
        };
        Ok(ModelConfig {
            name: self.name(),
            vocab_size: self.usize_opt("vocab_size")?.unwrap_or(50_257),
            context: self.usize_opt("n_positions")?.unwrap_or(1024),
            d_model,
            d_ff: self.usize_opt("n_inner")?.unwrap_or(4 * d_model),
            n_layers: self.usize_opt("n_layer")?.unwrap_or(12),
            n_heads,
            n_kv_heads: n_heads,
            head_dim: d_model / n_heads,
            norm: Norm::LayerNorm,
            norm_eps: self.f64_or("layer_norm_epsilon", 1e-5)?,
            mlp,
            positions: Positions::Learned,
            biases: Biases {
                qkv: true,
                attn_out: true,
                mlp: true,
                norm: true,
                lm_head: false,
            },
            tied_embeddings: self.bool_or("tie_word_embeddings", true)?,
            causal: true,
            norm_placement: NormPlacement::Pre,
            final_norm: true,
            scale_embedding: false,
            sliding_window: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Abridged from the published config.json files of these models.
    const LLAMA3_8B: &str = r#"{"architectures":["LlamaForCausalLM"],"attention_bias":false,
        "hidden_act":"silu","hidden_size":4096,"intermediate_size":14336,
        "max_position_embeddings":8192,"model_type":"llama","num_attention_heads":32,
        "num_hidden_layers":32,"num_key_value_heads":8,"rms_norm_eps":1e-05,
        "rope_theta":500000.0,"tie_word_embeddings":false,"vocab_size":128256}"#;
    const MISTRAL_7B: &str = r#"{"architectures":["MistralForCausalLM"],"hidden_act":"silu",
        "hidden_size":4096,"intermediate_size":14336,"max_position_embeddings":32768,
        "model_type":"mistral","num_attention_heads":32,"num_hidden_layers":32,
        "num_key_value_heads":8,"rms_norm_eps":1e-05,"rope_theta":10000.0,
        "sliding_window":4096,"tie_word_embeddings":false,"vocab_size":32000}"#;
    const QWEN2_05B: &str = r#"{"architectures":["Qwen2ForCausalLM"],"hidden_act":"silu",
        "hidden_size":896,"intermediate_size":4864,"max_position_embeddings":32768,
        "max_window_layers":24,"model_type":"qwen2","num_attention_heads":14,
        "num_hidden_layers":24,"num_key_value_heads":2,"rms_norm_eps":1e-06,
        "rope_theta":1000000.0,"sliding_window":32768,"tie_word_embeddings":true,
        "use_sliding_window":false,"vocab_size":151936}"#;
    const GPT2: &str = r#"{"activation_function":"gelu_new","architectures":["GPT2LMHeadModel"],
        "layer_norm_epsilon":1e-05,"model_type":"gpt2","n_ctx":1024,"n_embd":768,"n_head":12,
        "n_inner":null,"n_layer":12,"n_positions":1024,"vocab_size":50257}"#;

    #[test]
    fn llama3_8b_has_its_published_size() {
        let c = parse("llama3.json", LLAMA3_8B).unwrap();
        assert_eq!((c.n_heads, c.n_kv_heads, c.head_dim), (32, 8, 128));
        assert_eq!(c.param_count(), 8_030_261_248);
    }

    #[test]
    fn a_gelu_gated_mlp_imports_as_geglu_and_other_activations_are_refused() {
        let gelu = LLAMA3_8B.replace(
            "\"hidden_act\":\"silu\"",
            "\"hidden_act\":\"gelu_pytorch_tanh\"",
        );
        let c = parse("g.json", &gelu).unwrap();
        assert_eq!(c.mlp, crate::config::Mlp::GeGlu);
        // Same parameters as the SwiGLU model: only the gate's activation differs.
        assert_eq!(c.param_count(), 8_030_261_248);
        let odd = LLAMA3_8B.replace("\"hidden_act\":\"silu\"", "\"hidden_act\":\"mish\"");
        let err = parse("o.json", &odd).unwrap_err().to_string();
        assert!(err.contains("mish") && err.contains("GeGLU"), "{err}");
    }

    #[test]
    fn mistral_keeps_its_sliding_window() {
        let c = parse("m.json", MISTRAL_7B).unwrap();
        assert_eq!(c.sliding_window, Some(4096));
        assert_eq!(c.param_count(), 7_241_732_096);
    }

    #[test]
    fn qwen2_has_qkv_biases_and_tied_embeddings() {
        let c = parse("q.json", QWEN2_05B).unwrap();
        assert!(c.biases.qkv && !c.biases.attn_out && c.tied_embeddings);
        assert_eq!(c.sliding_window, None, "use_sliding_window is false");
        assert_eq!(c.param_count(), 494_032_768);
    }

    #[test]
    fn rope_theta_is_read_where_transformers_5_writes_it() {
        let v5 = LLAMA3_8B.replace(
            "\"rope_theta\":500000.0",
            "\"rope_parameters\":{\"rope_theta\":250000.0,\"rope_type\":\"default\"}",
        );
        let c = parse("v5.json", &v5).unwrap();
        assert_eq!(
            c.positions,
            crate::config::Positions::Rope {
                theta: 250000.0,
                scaling: RopeScaling::None
            }
        );
    }

    #[test]
    fn llama3_and_linear_rope_scaling_are_read_and_checked() {
        let scaled = LLAMA3_8B.replace(
            "\"rope_theta\":500000.0",
            "\"rope_theta\":500000.0,\"rope_scaling\":{\"factor\":8.0,\"low_freq_factor\":1.0,\
             \"high_freq_factor\":4.0,\"original_max_position_embeddings\":8192,\"rope_type\":\"llama3\"}",
        );
        let c = parse("l31.json", &scaled).unwrap();
        assert_eq!(
            c.positions,
            crate::config::Positions::Rope {
                theta: 500000.0,
                scaling: RopeScaling::Llama3 {
                    factor: 8.0,
                    low_freq_factor: 1.0,
                    high_freq_factor: 4.0,
                    original_context: 8192
                }
            }
        );
        let linear = LLAMA3_8B.replace(
            "\"rope_theta\":500000.0",
            "\"rope_theta\":500000.0,\"rope_scaling\":{\"type\":\"linear\",\"factor\":2.0}",
        );
        let c = parse("lin.json", &linear).unwrap();
        assert!(matches!(
            c.positions,
            crate::config::Positions::Rope {
                scaling: RopeScaling::Linear { factor: 2.0 },
                ..
            }
        ));
        // A missing field and a band that is empty are named.
        let e = parse("bad.json", &scaled.replace("\"low_freq_factor\":1.0,", ""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("rope_scaling.low_freq_factor"), "{e}");
        let e = parse(
            "bad.json",
            &scaled.replace("\"high_freq_factor\":4.0", "\"high_freq_factor\":0.5"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("high_freq_factor") && e.contains("low_freq_factor"),
            "{e}"
        );
    }

    #[test]
    fn gpt2_matches_the_preset() {
        let c = parse("gpt2.json", GPT2).unwrap();
        assert_eq!(c.param_count(), 124_439_808);
        assert_eq!(c.d_ff, 3072);
    }

    #[test]
    fn bad_inputs_name_the_problem() {
        let e = parse("x.json", "{not json").unwrap_err().to_string();
        assert!(e.contains("not valid JSON"), "{e}");
        let e = parse("x.json", "[1,2]").unwrap_err().to_string();
        assert!(e.contains("JSON object"), "{e}");
        let e = parse("x.json", r#"{"model_type":"llama","hidden_size":64}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("num_attention_heads"), "{e}");
        let e = parse("x.json", r#"{"model_type":"t5"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not supported"), "{e}");
        let bad = LLAMA3_8B.replace("\"num_key_value_heads\":8", "\"num_key_value_heads\":5");
        let e = parse("x.json", &bad).unwrap_err().to_string();
        assert!(e.contains("not divisible by n_kv_heads"), "{e}");
        let bad = LLAMA3_8B.replace("\"hidden_size\":4096", "\"hidden_size\":-3");
        let e = parse("x.json", &bad).unwrap_err().to_string();
        assert!(e.contains("non-negative integer"), "{e}");
    }
}
