//! A Hugging Face model folder (what `save_pretrained` writes, or a snapshot in the hub cache):
//! `config.json`, the weights as `model.safetensors` or shards `model-0000k-of-0000n.safetensors`
//! listed in `model.safetensors.index.json`, `tokenizer.json`, and optionally
//! `tokenizer_config.json` (special tokens, chat template), `chat_template.jinja` and
//! `generation_config.json`.
//!
//! [`HfModel::open`] reads the config (through `tperf_core::hf`), maps every shard (memmap2: the
//! file's pages are the kernel's page cache, not a copy on the heap) and checks every tensor's
//! name, dtype and shape against the model before anything is loaded; [`HfModel::load_weights`]
//! then converts one parameter at a time to f32 and writes it into the backend, which stores it
//! at the run's dtype. Beside the backend's own storage the host holds one parameter in f32
//! (the largest is the embedding, V × C) and the file pages of the tensors being read: each
//! tensor's pages are released from the resident set once copied out (madvise DONTNEED).
//!
//! How Hugging Face's parameters map onto tperf's (`schedule::weights`, nn.Linear layout, weight
//! (out, in)):
//!
//! | tperf | gpt2 (`transformer.` prefix optional) | llama, mistral, qwen2 (`model.` prefix) |
//! |---|---|---|
//! | `wte`, `wpe` | `wte.weight`, `wpe.weight` | `embed_tokens.weight` |
//! | `h{l}.ln_1.w/.b` | `h.{l}.ln_1.weight/.bias` | `layers.{l}.input_layernorm.weight` |
//! | `h{l}.attn.qkv.w/.b` | `h.{l}.attn.c_attn.weight`ᵀ, `.bias` | rows of q_proj, k_proj, v_proj (RoPE-permuted q, k) |
//! | `h{l}.attn.proj.w/.b` | `h.{l}.attn.c_proj.weight`ᵀ, `.bias` | `self_attn.o_proj.weight/.bias` |
//! | `h{l}.ln_2.w/.b` | `h.{l}.ln_2.weight/.bias` | `post_attention_layernorm.weight` |
//! | `h{l}.mlp.fc.w/.b` | `h.{l}.mlp.c_fc.weight`ᵀ, `.bias` | rows of gate_proj then up_proj |
//! | `h{l}.mlp.proj.w/.b` | `h.{l}.mlp.c_proj.weight`ᵀ, `.bias` | `mlp.down_proj.weight/.bias` |
//! | `ln_f.w/.b` | `ln_f.weight/.bias` | `norm.weight` |
//! | `lm_head.w` | tied to `wte` | `lm_head.weight` (tied when `tie_word_embeddings`) |
//!
//! GPT-2 stores its projections as `Conv1D`, weight (in, out), the transpose of nn.Linear's; its
//! `c_attn` is already q, k, v in tperf's order (all query heads, then keys, then values).
//!
//! RoPE: Hugging Face's Llama rotates the two halves of a head (`rotate_half`: element i pairs
//! with i + D/2), tperf's op rotates interleaved pairs (2i, 2i + 1), both by p·θ^(−2i/D). So the
//! rows of each q and k head are permuted, tperf row 2i ← HF row i and 2i + 1 ← HF row i + D/2
//! (biases alike): tperf then computes exactly HF's rotated q and k, in another order of their
//! D elements, and q·k is the same sum. The proof is `tests/hf.rs`: logits equal transformers'.
//! V and the output projection are not permuted (the attention output keeps HF's order).

use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::tensor::{Dtype, SafeTensors};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;
use tperf_core::backend::{Backend, BackendError};
use tperf_core::config::{ModelConfig, Positions};
use tperf_core::hf::HfConfigError;
use tperf_core::schedule::Transformer;

use crate::tokenizer::{HfTokenizer, Tokenizer};

#[derive(Debug, Error)]
pub enum HfError {
    #[error("{}: no config.json there; a Hugging Face model folder holds config.json, model.safetensors (or shards with model.safetensors.index.json) and tokenizer.json", dir.display())]
    NotAModelDir { dir: PathBuf },
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] HfConfigError),
    #[error("{}: {what} is not supported by tperf's loader: {detail}", path.display())]
    Unsupported {
        path: PathBuf,
        what: &'static str,
        detail: String,
    },
    #[error("{}: no weights: neither model.safetensors nor model.safetensors.index.json is there (PyTorch .bin files are not read: convert them with safetensors)", dir.display())]
    NoWeights { dir: PathBuf },
    #[error("{}: {why}", path.display())]
    BadIndex { path: PathBuf, why: String },
    #[error("{} is not a valid safetensors file ({reason}){hint}", path.display())]
    CorruptShard {
        path: PathBuf,
        reason: String,
        hint: &'static str,
    },
    #[error("{}: tensor '{name}' is listed in the index under {} but that shard does not hold it", dir.display(), shard.display())]
    NotInShard {
        dir: PathBuf,
        name: String,
        shard: PathBuf,
    },
    #[error("{}: {} tensor(s) the {family} model needs are missing: {}", dir.display(), names.len(), list(names))]
    MissingTensors {
        dir: PathBuf,
        family: String,
        names: Vec<String>,
    },
    #[error("{}: {} tensor(s) are not part of a {family} model with this config: {} (a different architecture, or a config that does not match the weights)", dir.display(), names.len(), list(names))]
    UnknownTensors {
        dir: PathBuf,
        family: String,
        names: Vec<String>,
    },
    #[error("{}: tensor '{name}' has shape {found:?} but the config needs {expected:?}", dir.display())]
    ShapeMismatch {
        dir: PathBuf,
        name: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("{}: tensor '{name}' is stored as {dtype}; tperf reads F32, BF16 and F16", dir.display())]
    UnsupportedDtype {
        dir: PathBuf,
        name: String,
        dtype: String,
    },
    #[error("{}: tensor '{name}' holds {value} at index {index}: the file is corrupt or the model diverged", dir.display())]
    NonFinite {
        dir: PathBuf,
        name: String,
        index: usize,
        value: f32,
    },
    #[error("{}: cannot load the tokenizer: {why}", path.display())]
    Tokenizer { path: PathBuf, why: String },
    #[error("the model's parameter '{name}' has no Hugging Face source: tperf's layout and this loader disagree (a bug)")]
    NoMapping { name: String },
    #[error("writing '{name}' on the backend: {source}")]
    Backend {
        name: String,
        #[source]
        source: BackendError,
    },
    #[error("{} ships no chat template (no chat_template in tokenizer_config.json, no chat_template.jinja)", dir.display())]
    NoChatTemplate { dir: PathBuf },
    #[error("{}: the chat template is not one tperf implements (ChatML, Llama 3 headers, [INST]); format the prompt yourself", dir.display())]
    UnknownChatTemplate { dir: PathBuf },
}

fn list(names: &[String]) -> String {
    const SHOWN: usize = 8;
    let mut s = names
        .iter()
        .take(SHOWN)
        .map(|n| format!("'{n}'"))
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        s.push_str(&format!(", … ({} more)", names.len() - SHOWN));
    }
    s
}

/// The families the loader maps (those `tperf_core::hf` imports).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Gpt2,
    Llama,
    Mistral,
    Qwen2,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Gpt2 => "gpt2",
            Family::Llama => "llama",
            Family::Mistral => "mistral",
            Family::Qwen2 => "qwen2",
        }
    }
}

/// Whether `path` is a folder with a config.json: what `generate` and the config loader test to
/// tell a Hugging Face folder from a preset name or a file.
pub fn is_model_dir(path: &Path) -> bool {
    path.is_dir() && path.join("config.json").is_file()
}

/// One message of a chat, as OpenAI's API and Hugging Face's templates take it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// The chat formats tperf writes in Rust instead of running the folder's Jinja template. Which
/// one applies is read off the template's text (its marker tokens), so a fine-tune that keeps
/// its base model's format works whatever its model_type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChatFormat {
    /// `<|im_start|>role\ncontent<|im_end|>\n` per message (Qwen2, and many fine-tunes).
    ChatMl,
    /// `<bos><|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|>` (Llama 3).
    Llama3,
    /// `<bos>[INST] user [/INST]assistant<eos>` (Mistral, Llama 2).
    Inst,
}

struct Shard {
    path: PathBuf,
    map: Mmap,
}

/// Where a tensor is: which shard, with its dtype and shape from the shard's header.
#[derive(Clone, Debug)]
struct Entry {
    shard: usize,
    dtype: Dtype,
    shape: Vec<usize>,
}

/// A Hugging Face model folder, opened and checked.
pub struct HfModel {
    pub dir: PathBuf,
    pub family: Family,
    pub config: ModelConfig,
    /// From tokenizer.json, when the folder has one.
    pub tokenizer: Option<Tokenizer>,
    /// Generation stops at any of these (generation_config.json's eos_token_id, else the
    /// config's, else the tokenizer's eos_token).
    pub eos_token_ids: Vec<u32>,
    pub chat_template: Option<String>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    shards: Vec<Shard>,
    tensors: BTreeMap<String, Entry>,
    /// "transformer." or "model." when the file's names carry it.
    prefix: &'static str,
}

fn read_json(path: &Path) -> Result<Option<Value>, HfError> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|source| HfError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| HfError::BadIndex {
            path: path.to_path_buf(),
            why: format!("not valid JSON ({e})"),
        })
}

/// Token ids given as an integer or a list of integers (eos_token_id in both forms).
fn ids(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|n| n as u32).into_iter().collect(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_u64)
            .map(|n| n as u32)
            .collect(),
        _ => Vec::new(),
    }
}

/// A special token in tokenizer_config.json: a string, or an AddedToken object with "content".
fn token_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

impl HfModel {
    /// Opens `dir`: the config, the tokenizer and the shards' headers, every tensor checked
    /// against the config (presence, extra tensors, dtype, shape). No weight is read yet.
    pub fn open(dir: &Path) -> Result<HfModel, HfError> {
        let config_path = dir.join("config.json");
        if !config_path.is_file() {
            return Err(HfError::NotAModelDir {
                dir: dir.to_path_buf(),
            });
        }
        let text = std::fs::read_to_string(&config_path).map_err(|source| HfError::Io {
            path: config_path.clone(),
            source,
        })?;
        let mut config = tperf_core::hf::parse(&config_path.display().to_string(), &text)?;
        let raw: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let family = match config_family(&config, &raw) {
            Some(f) => f,
            None => {
                return Err(HfError::Unsupported {
                    path: config_path,
                    what: "model_type",
                    detail: "not gpt2, llama, mistral or qwen2".into(),
                })
            }
        };
        check_loadable(&config_path, family, &raw)?;
        if config.name == config_path.display().to_string() {
            config.name = dir
                .file_name()
                .map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into());
        }

        let (shards, tensors) = open_shards(dir)?;
        let prefix = match family {
            Family::Gpt2 if tensors.keys().any(|n| n.starts_with("transformer.")) => "transformer.",
            Family::Gpt2 => "",
            _ if tensors.keys().any(|n| n.starts_with("model.")) => "model.",
            _ => "",
        };

        let tok_config = read_json(&dir.join("tokenizer_config.json"))?;
        let gen_config = read_json(&dir.join("generation_config.json"))?;
        let tok_field = |k: &str| tok_config.as_ref().and_then(|c| c.get(k));
        let bos_token = token_text(tok_field("bos_token"));
        let eos_token = token_text(tok_field("eos_token"));
        let chat_template = match tok_field("chat_template") {
            Some(Value::String(s)) => Some(s.clone()),
            // A list of named templates: the "default" one.
            Some(Value::Array(a)) => a
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .and_then(|t| t.get("template")?.as_str().map(str::to_string)),
            // transformers ≥ 4.47 may write it beside the config instead (≥ 5 always does).
            _ => std::fs::read_to_string(dir.join("chat_template.jinja")).ok(),
        };

        let tokenizer_path = dir.join("tokenizer.json");
        let tokenizer = if tokenizer_path.is_file() {
            let inner = tokenizers::Tokenizer::from_file(&tokenizer_path).map_err(|e| {
                HfError::Tokenizer {
                    path: tokenizer_path.clone(),
                    why: e.to_string(),
                }
            })?;
            Some(inner)
        } else {
            None
        };

        let mut eos_token_ids = ids(gen_config.as_ref().and_then(|g| g.get("eos_token_id")));
        if eos_token_ids.is_empty() {
            eos_token_ids = ids(raw.get("eos_token_id"));
        }
        if eos_token_ids.is_empty() {
            if let (Some(t), Some(text)) = (&tokenizer, &eos_token) {
                eos_token_ids.extend(t.token_to_id(text));
            }
        }
        let tokenizer = tokenizer
            .map(|inner| Tokenizer::Hf(Arc::new(HfTokenizer::new(inner, eos_token_ids.clone()))));

        let model = HfModel {
            dir: dir.to_path_buf(),
            family,
            config,
            tokenizer,
            eos_token_ids,
            chat_template,
            bos_token,
            eos_token,
            shards,
            tensors,
            prefix,
        };
        model.check_tensors()?;
        Ok(model)
    }

    /// The Hugging Face tensors each of tperf's parameters is made of, for this config.
    fn recipes(&self) -> BTreeMap<String, Recipe> {
        let cfg = &self.config;
        let mut r = BTreeMap::new();
        let p = self.prefix;
        let (c, f, v) = (cfg.d_model, cfg.d_ff, cfg.vocab_size);
        let (hd, kvd) = (cfg.attn_dim(), cfg.n_kv_heads * cfg.head_dim);
        match self.family {
            Family::Gpt2 => {
                r.insert(
                    "wte".into(),
                    Recipe::copy(format!("{p}wte.weight"), &[v, c]),
                );
                if matches!(cfg.positions, Positions::Learned) {
                    let wpe = format!("{p}wpe.weight");
                    r.insert("wpe".into(), Recipe::copy(wpe, &[cfg.context, c]));
                }
                let norm = |r: &mut BTreeMap<String, Recipe>, tp: String, hf: String| {
                    r.insert(
                        format!("{tp}.w"),
                        Recipe::copy(format!("{hf}.weight"), &[c]),
                    );
                    r.insert(format!("{tp}.b"), Recipe::copy(format!("{hf}.bias"), &[c]));
                };
                for l in 0..cfg.n_layers {
                    let (t, h) = (format!("h{l}."), format!("{p}h.{l}."));
                    norm(&mut r, format!("{t}ln_1"), format!("{h}ln_1"));
                    norm(&mut r, format!("{t}ln_2"), format!("{h}ln_2"));
                    let qkv = cfg.qkv_dim();
                    let conv = [
                        ("attn.qkv", "attn.c_attn", qkv, c),
                        ("attn.proj", "attn.c_proj", c, hd),
                        ("mlp.fc", "mlp.c_fc", cfg.mlp_in_dim(), c),
                        ("mlp.proj", "mlp.c_proj", c, f),
                    ];
                    for (tn, hn, out, inp) in conv {
                        r.insert(
                            format!("{t}{tn}.w"),
                            Recipe::transposed(format!("{h}{hn}.weight"), out, inp),
                        );
                        r.insert(
                            format!("{t}{tn}.b"),
                            Recipe::copy(format!("{h}{hn}.bias"), &[out]),
                        );
                    }
                }
                norm(&mut r, "ln_f".into(), format!("{p}ln_f"));
            }
            Family::Llama | Family::Mistral | Family::Qwen2 => {
                let emb = format!("{p}embed_tokens.weight");
                r.insert("wte".into(), Recipe::copy(emb, &[v, c]));
                let d = cfg.head_dim;
                for l in 0..cfg.n_layers {
                    let (t, h) = (format!("h{l}."), format!("{p}layers.{l}."));
                    let a = format!("{h}self_attn.");
                    let m = format!("{h}mlp.");
                    r.insert(
                        format!("{t}ln_1.w"),
                        Recipe::copy(format!("{h}input_layernorm.weight"), &[c]),
                    );
                    r.insert(
                        format!("{t}ln_2.w"),
                        Recipe::copy(format!("{h}post_attention_layernorm.weight"), &[c]),
                    );
                    for (suffix, cols) in [("weight", Some(c)), ("bias", None)] {
                        let tn = if cols.is_some() { "w" } else { "b" };
                        r.insert(
                            format!("{t}attn.qkv.{tn}"),
                            Recipe::rows(
                                vec![
                                    (format!("{a}q_proj.{suffix}"), hd, Some(d)),
                                    (format!("{a}k_proj.{suffix}"), kvd, Some(d)),
                                    (format!("{a}v_proj.{suffix}"), kvd, None),
                                ],
                                cols,
                            ),
                        );
                        r.insert(
                            format!("{t}mlp.fc.{tn}"),
                            Recipe::rows(
                                vec![
                                    (format!("{m}gate_proj.{suffix}"), f, None),
                                    (format!("{m}up_proj.{suffix}"), f, None),
                                ],
                                cols,
                            ),
                        );
                    }
                    let o = format!("{a}o_proj.");
                    r.insert(
                        format!("{t}attn.proj.w"),
                        Recipe::copy(format!("{o}weight"), &[c, hd]),
                    );
                    r.insert(
                        format!("{t}attn.proj.b"),
                        Recipe::copy(format!("{o}bias"), &[c]),
                    );
                    let down = format!("{m}down_proj.");
                    r.insert(
                        format!("{t}mlp.proj.w"),
                        Recipe::copy(format!("{down}weight"), &[c, f]),
                    );
                    r.insert(
                        format!("{t}mlp.proj.b"),
                        Recipe::copy(format!("{down}bias"), &[c]),
                    );
                }
                r.insert(
                    "ln_f.w".into(),
                    Recipe::copy(format!("{p}norm.weight"), &[c]),
                );
                r.insert(
                    "lm_head.w".into(),
                    Recipe::copy("lm_head.weight".into(), &[v, c]),
                );
            }
        }
        r
    }

    /// The recipes of the parameters this config has, by tperf name, in tperf's order.
    fn plan(&self) -> Result<Vec<(String, Recipe)>, HfError> {
        let mut recipes = self.recipes();
        expected_params(&self.config)
            .into_iter()
            .map(|name| {
                recipes
                    .remove(&name)
                    .map(|r| (name.clone(), r))
                    .ok_or(HfError::NoMapping { name })
            })
            .collect()
    }

    fn check_tensors(&self) -> Result<(), HfError> {
        let plan = self.plan()?;
        let mut needed: BTreeSet<&str> = BTreeSet::new();
        let mut missing = Vec::new();
        for (_, recipe) in &plan {
            for part in &recipe.parts {
                needed.insert(&part.name);
                let Some(entry) = self.tensors.get(&part.name) else {
                    missing.push(part.name.clone());
                    continue;
                };
                if !matches!(entry.dtype, Dtype::F32 | Dtype::BF16 | Dtype::F16) {
                    return Err(HfError::UnsupportedDtype {
                        dir: self.dir.clone(),
                        name: part.name.clone(),
                        dtype: format!("{:?}", entry.dtype),
                    });
                }
                if entry.shape != part.shape {
                    return Err(HfError::ShapeMismatch {
                        dir: self.dir.clone(),
                        name: part.name.clone(),
                        found: entry.shape.clone(),
                        expected: part.shape.clone(),
                    });
                }
            }
        }
        if !missing.is_empty() {
            return Err(HfError::MissingTensors {
                dir: self.dir.clone(),
                family: self.family.name().into(),
                names: missing,
            });
        }
        let tied_head = self.config.tied_embeddings;
        let unknown: Vec<String> = self
            .tensors
            .keys()
            .filter(|n| !needed.contains(n.as_str()))
            .filter(|n| !ignorable(n, tied_head))
            .cloned()
            .collect();
        if !unknown.is_empty() {
            return Err(HfError::UnknownTensors {
                dir: self.dir.clone(),
                family: self.family.name().into(),
                names: unknown,
            });
        }
        Ok(())
    }

    /// Writes every parameter of `model` (built from [`HfModel::config`]) on `be`, converted
    /// from the file's dtype to f32 and by the backend to its own. Values are checked finite.
    pub fn load_weights<B: Backend>(&self, be: &mut B, model: &Transformer) -> Result<(), HfError> {
        let plan: HashMap<String, Recipe> = self.plan()?.into_iter().collect();
        for p in model.weights.all_params() {
            let recipe = plan.get(&p.name).ok_or_else(|| HfError::NoMapping {
                name: p.name.clone(),
            })?;
            let values = self.assemble(recipe)?;
            let mut targets = vec![&p.master];
            targets.extend(p.copy.as_ref());
            for t in targets {
                be.write_f32(t, &values)
                    .map_err(|source| HfError::Backend {
                        name: p.name.clone(),
                        source,
                    })?;
            }
        }
        Ok(())
    }

    fn assemble(&self, recipe: &Recipe) -> Result<Vec<f32>, HfError> {
        let total: usize = recipe
            .parts
            .iter()
            .map(|p| p.shape.iter().product::<usize>())
            .sum();
        let mut out = Vec::with_capacity(total);
        for part in &recipe.parts {
            let values = self.read_f32(&part.name)?;
            match part.layout {
                Layout::AsIs => out.extend_from_slice(&values),
                Layout::Transposed => {
                    // The file holds (in, out); tperf wants (out, in).
                    let (inp, outd) = (part.shape[0], part.shape[1]);
                    let base = out.len();
                    out.resize(base + values.len(), 0.0);
                    for i in 0..inp {
                        for o in 0..outd {
                            out[base + o * inp + i] = values[i * outd + o];
                        }
                    }
                }
                Layout::RopePermuted { head_dim } => {
                    // Per head, row 2i ← i and row 2i + 1 ← i + D/2 (see the module's comment).
                    let row = values.len() / part.shape[0];
                    let half = head_dim / 2;
                    let base = out.len();
                    out.resize(base + values.len(), 0.0);
                    for head in 0..part.shape[0] / head_dim {
                        for i in 0..half {
                            for (dst, src) in [(2 * i, i), (2 * i + 1, i + half)] {
                                let d = base + (head * head_dim + dst) * row;
                                let s = (head * head_dim + src) * row;
                                out[d..d + row].copy_from_slice(&values[s..s + row]);
                            }
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    fn read_f32(&self, name: &str) -> Result<Vec<f32>, HfError> {
        let entry = &self.tensors[name];
        let shard = &self.shards[entry.shard];
        let st = SafeTensors::deserialize(&shard.map).map_err(|e| corrupt(&shard.path, e))?;
        let view = st.tensor(name).map_err(|_| HfError::NotInShard {
            dir: self.dir.clone(),
            name: name.to_string(),
            shard: shard.path.clone(),
        })?;
        // Tensor data is not necessarily aligned in the file, so decode rather than cast.
        let bytes = view.data();
        let (offset, len) = (
            bytes.as_ptr() as usize - shard.map.as_ptr() as usize,
            bytes.len(),
        );
        let values: Vec<f32> = match entry.dtype {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => {
                return Err(HfError::UnsupportedDtype {
                    dir: self.dir.clone(),
                    name: name.to_string(),
                    dtype: format!("{other:?}"),
                })
            }
        };
        drop(view);
        drop(st);
        release_pages(&shard.map, offset, len);
        if let Some((index, &value)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(HfError::NonFinite {
                dir: self.dir.clone(),
                name: name.to_string(),
                index,
                value,
            });
        }
        Ok(values)
    }

    /// Writes `model`'s weights (read from `be`, e.g. after `tperf train`) as a `save_pretrained`
    /// folder `out` that transformers loads: model.safetensors under Hugging Face's names, each
    /// tensor in the dtype this folder stored it in (the inverse of [`HfModel::load_weights`]'s
    /// mapping: transposes and RoPE permutations undone, fused tensors split), beside copies of
    /// this folder's config, generation config and tokenizer files. A tied head is not written,
    /// as transformers does not. Holds the whole file in host memory while it writes.
    pub fn save_pretrained<B: Backend>(
        &self,
        be: &mut B,
        model: &Transformer,
        out: &Path,
    ) -> Result<(), HfError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| HfError::Io { path, source }
        };
        std::fs::create_dir_all(out).map_err(io(out))?;
        // The shards are mapped: writing over them would change the weights being read.
        let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        };
        if same(out, &self.dir) {
            return Err(HfError::Unsupported {
                path: out.to_path_buf(),
                what: "saving into the folder the model was loaded from",
                detail: "choose another folder".into(),
            });
        }
        let plan: HashMap<String, Recipe> = self.plan()?.into_iter().collect();
        let mut tensors: Vec<(String, OwnedTensor)> = Vec::new();
        for p in model.weights.all_params() {
            let recipe = plan.get(&p.name).ok_or_else(|| HfError::NoMapping {
                name: p.name.clone(),
            })?;
            let values = be.read_f32(&p.master).map_err(|source| HfError::Backend {
                name: p.name.clone(),
                source,
            })?;
            let mut at = 0;
            for part in &recipe.parts {
                let n: usize = part.shape.iter().product();
                let Some(src) = values.get(at..at + n) else {
                    return Err(HfError::NoMapping {
                        name: p.name.clone(),
                    });
                };
                at += n;
                let file_order = unmap(part, src);
                let dtype = self.tensors.get(&part.name).map_or(Dtype::F32, |e| e.dtype);
                tensors.push((
                    part.name.clone(),
                    OwnedTensor::new(dtype, &part.shape, &file_order),
                ));
            }
        }
        let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
        let dest = out.join("model.safetensors");
        let tmp = out.join("model.safetensors.tmp");
        safetensors::serialize_to_file(tensors.iter().map(|(n, t)| (n, t)), Some(meta), &tmp)
            .map_err(|e| HfError::CorruptShard {
                path: tmp.clone(),
                reason: e.to_string(),
                hint: "",
            })?;
        std::fs::rename(&tmp, &dest).map_err(io(&dest))?;
        // A sharded source's index would point at shards this folder does not have.
        let stale = out.join("model.safetensors.index.json");
        if stale.is_file() {
            std::fs::remove_file(&stale).map_err(io(&stale))?;
        }
        for name in [
            "config.json",
            "generation_config.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "special_tokens_map.json",
            "chat_template.jinja",
        ] {
            let from = self.dir.join(name);
            if from.is_file() {
                std::fs::copy(&from, out.join(name)).map_err(io(&from))?;
            }
        }
        Ok(())
    }

    /// The chat format of the folder's template, read off its marker tokens.
    pub fn chat_format(&self) -> Result<ChatFormat, HfError> {
        let t = self
            .chat_template
            .as_deref()
            .ok_or(HfError::NoChatTemplate {
                dir: self.dir.clone(),
            })?;
        if t.contains("<|im_start|>") {
            Ok(ChatFormat::ChatMl)
        } else if t.contains("<|start_header_id|>") {
            Ok(ChatFormat::Llama3)
        } else if t.contains("[INST]") {
            Ok(ChatFormat::Inst)
        } else {
            Err(HfError::UnknownChatTemplate {
                dir: self.dir.clone(),
            })
        }
    }

    /// The prompt text for `messages`, ending with the assistant's turn opened when
    /// `add_generation_prompt` (what `/v1/chat/completions` needs). Encode it with
    /// [`Tokenizer::encode_special`]`(text, false)`: it already holds the BOS token.
    ///
    /// Simplified against the folders' Jinja templates: no tools, no per-model default system
    /// prompt (Qwen2's "You are a helpful assistant" is added only when the template would
    /// and the caller gives no system message — not here: pass it), and [INST]'s system message
    /// is put before the first user message with a blank line (Mistral's newer templates place it
    /// before the last one; Llama 2 wraps it in <<SYS>>). ChatML and Llama 3 are exact for
    /// plain text messages; `tests/hf.rs` compares each with transformers' rendering.
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, HfError> {
        let bos = self.bos_token.clone().unwrap_or_default();
        let eos = self.eos_token.clone().unwrap_or_default();
        let mut s = String::new();
        match self.chat_format()? {
            ChatFormat::ChatMl => {
                for m in messages {
                    s += &format!("<|im_start|>{}\n{}<|im_end|>\n", m.role, m.content);
                }
                if add_generation_prompt {
                    s += "<|im_start|>assistant\n";
                }
            }
            ChatFormat::Llama3 => {
                s += &bos;
                for m in messages {
                    s += &format!(
                        "<|start_header_id|>{}<|end_header_id|>\n\n{}<|eot_id|>",
                        m.role, m.content
                    );
                }
                if add_generation_prompt {
                    s += "<|start_header_id|>assistant<|end_header_id|>\n\n";
                }
            }
            ChatFormat::Inst => {
                s += &bos;
                let mut system: Option<&str> = None;
                for m in messages {
                    match m.role.as_str() {
                        "system" => system = Some(&m.content),
                        "assistant" => s += &format!("{}{eos}", m.content),
                        _ => match system.take() {
                            Some(sys) => s += &format!("[INST] {sys}\n\n{} [/INST]", m.content),
                            None => s += &format!("[INST] {} [/INST]", m.content),
                        },
                    }
                }
            }
        }
        Ok(s)
    }
}

/// tperf's parameter names for `cfg`, in allocation order: the schedule's own (Meta backend,
/// no memory), so the loader cannot drift from `schedule::weights`.
fn expected_params(cfg: &ModelConfig) -> Vec<String> {
    let mut meta = tperf_core::meta::MetaBackend::new();
    let opts = tperf_core::schedule::Options::default();
    match Transformer::new(&mut meta, cfg, opts, false) {
        Ok(t) => t
            .weights
            .all_params()
            .iter()
            .map(|p| p.name.clone())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Tensors that are buffers, not parameters, in some published files: GPT-2's causal-mask
/// buffers, Llama's rotary inverse frequencies, and a tied head saved beside its embedding.
fn ignorable(name: &str, tied_head: bool) -> bool {
    name.ends_with(".attn.bias")
        || name.ends_with(".attn.masked_bias")
        || name.ends_with("rotary_emb.inv_freq")
        || (tied_head && name == "lm_head.weight")
}

fn config_family(cfg: &ModelConfig, raw: &Value) -> Option<Family> {
    let t = raw
        .get("model_type")
        .and_then(Value::as_str)
        .map(str::to_ascii_lowercase);
    match t.as_deref() {
        Some("gpt2") => Some(Family::Gpt2),
        Some("llama") => Some(Family::Llama),
        Some("mistral") => Some(Family::Mistral),
        Some("qwen2") => Some(Family::Qwen2),
        Some(_) => None,
        // `tperf_core::hf` guessed it from the architecture; GPT-2 is the one with learned positions.
        None if cfg.has_learned_positions() => Some(Family::Gpt2),
        None => {
            let arch = raw.get("architectures")?.as_array()?.first()?.as_str()?;
            [
                ("Llama", Family::Llama),
                ("Mistral", Family::Mistral),
                ("Qwen2", Family::Qwen2),
            ]
            .into_iter()
            .find(|(p, _)| arch.starts_with(p))
            .map(|(_, f)| f)
        }
    }
}

/// Config keys that change the computation in ways tperf's schedule does not implement: loading
/// such a model would run without error and give wrong logits, so it is refused.
fn check_loadable(path: &Path, family: Family, raw: &Value) -> Result<(), HfError> {
    // transformers < 5: "rope_scaling"; ≥ 5: "rope_parameters" (with the default type for plain RoPE).
    for key in ["rope_scaling", "rope_parameters"] {
        let Some(p) = raw.get(key).filter(|v| !v.is_null()) else {
            continue;
        };
        let kind = p
            .get("rope_type")
            .or_else(|| p.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("?");
        // tperf_core::hf reads the linear and Llama 3 scalings into the schedule's RoPE; the
        // others change frequencies in ways it does not compute (dynamic NTK rescales θ with
        // the running sequence length, YaRN and LongRoPE also rescale attention).
        if !matches!(kind, "default" | "linear" | "llama3") {
            return Err(HfError::Unsupported {
                path: path.to_path_buf(),
                what: "rope scaling",
                detail: format!(
                    "{key} type \"{kind}\" (tperf's RoPE implements \"linear\" and \"llama3\" \
                     scaling; remove {key} to run at the pre-training context)"
                ),
            });
        }
    }
    if family == Family::Qwen2 {
        let window = raw
            .get("use_sliding_window")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let max_window = raw.get("max_window_layers").and_then(Value::as_u64);
        let layers = raw.get("num_hidden_layers").and_then(Value::as_u64);
        if window && max_window.is_some() && max_window != layers {
            return Err(HfError::Unsupported {
                path: path.to_path_buf(),
                what: "use_sliding_window with max_window_layers",
                detail: "a sliding window on some layers only".into(),
            });
        }
    }
    if family == Family::Gpt2 {
        for k in ["scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"] {
            if raw.get(k).and_then(Value::as_bool) == Some(true) {
                return Err(HfError::Unsupported {
                    path: path.to_path_buf(),
                    what: "a GPT-2 attention variant",
                    detail: format!("{k} = true"),
                });
            }
        }
    }
    Ok(())
}

/// Drops the pages of a tensor already copied out from this process's resident set, so that
/// loading a model holds one tensor of the file at a time rather than the whole file (the pages
/// of a file mapping count in RSS until unmapped). Advice only: a failure changes nothing.
fn release_pages(map: &Mmap, offset: usize, len: usize) {
    #[cfg(unix)]
    // SAFETY: no slice of `map` is alive across the call (the values were copied out and the
    // view dropped), and the mapping is a read-only map of a file, never written: a later read
    // of a released page faults it in again from the file, with the same bytes.
    unsafe {
        let _ = map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, len);
    }
    #[cfg(not(unix))]
    let _ = (map, offset, len);
}

fn corrupt(path: &Path, e: safetensors::SafeTensorError) -> HfError {
    let truncated = matches!(
        e,
        safetensors::SafeTensorError::MetadataIncompleteBuffer
            | safetensors::SafeTensorError::HeaderTooSmall
            | safetensors::SafeTensorError::InvalidHeaderLength
    );
    HfError::CorruptShard {
        path: path.to_path_buf(),
        reason: e.to_string(),
        hint: if truncated {
            ": the file is shorter than its header says — truncated (an interrupted download?)"
        } else {
            ""
        },
    }
}

type Shards = (Vec<Shard>, BTreeMap<String, Entry>);

fn open_shards(dir: &Path) -> Result<Shards, HfError> {
    let index_path = dir.join("model.safetensors.index.json");
    let single = dir.join("model.safetensors");
    let files: Vec<PathBuf> = if let Some(index) = read_json(&index_path)? {
        let map = index
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| HfError::BadIndex {
                path: index_path.clone(),
                why: "no \"weight_map\" object".into(),
            })?;
        let mut names = BTreeSet::new();
        for (tensor, file) in map {
            let file = file.as_str().ok_or_else(|| HfError::BadIndex {
                path: index_path.clone(),
                why: format!("the shard of '{tensor}' is not a file name"),
            })?;
            if file.contains('/') || file.contains('\\') || file == ".." {
                return Err(HfError::BadIndex {
                    path: index_path.clone(),
                    why: format!("shard '{file}' is not a file name in the folder"),
                });
            }
            names.insert(file.to_string());
        }
        names.into_iter().map(|n| dir.join(n)).collect()
    } else if single.is_file() {
        vec![single]
    } else {
        return Err(HfError::NoWeights {
            dir: dir.to_path_buf(),
        });
    };
    let mut shards = Vec::with_capacity(files.len());
    let mut tensors = BTreeMap::new();
    for (i, path) in files.into_iter().enumerate() {
        let file = File::open(&path).map_err(|source| HfError::Io {
            path: path.clone(),
            source,
        })?;
        // SAFETY: the map is read-only; a file changed underneath by another process while
        // tperf reads it is outside what any reader of a file can defend against, and safetensors
        // rechecks every offset against the map's length.
        let map = unsafe { Mmap::map(&file) }.map_err(|source| HfError::Io {
            path: path.clone(),
            source,
        })?;
        // `deserialize` checks that the header parses and every tensor lies inside the file.
        let st = SafeTensors::deserialize(&map).map_err(|e| corrupt(&path, e))?;
        for (name, view) in st.tensors() {
            let entry = Entry {
                shard: i,
                dtype: view.dtype(),
                shape: view.shape().to_vec(),
            };
            if tensors.insert(name.clone(), entry).is_some() {
                return Err(HfError::BadIndex {
                    path: path.clone(),
                    why: format!("tensor '{name}' is in more than one shard"),
                });
            }
        }
        drop(st);
        shards.push(Shard { path, map });
    }
    Ok((shards, tensors))
}

#[derive(Clone, Copy, Debug)]
enum Layout {
    AsIs,
    /// A Conv1D weight, (in, out) in the file.
    Transposed,
    /// q or k rows: half-split RoPE pairs reordered to interleaved, per head of `head_dim`.
    RopePermuted {
        head_dim: usize,
    },
}

#[derive(Clone, Debug)]
struct Part {
    name: String,
    /// As stored in the file.
    shape: Vec<usize>,
    layout: Layout,
}

/// A tperf parameter as the concatenation of its Hugging Face parts' rows.
#[derive(Clone, Debug)]
struct Recipe {
    parts: Vec<Part>,
}

impl Recipe {
    fn copy(name: String, shape: &[usize]) -> Recipe {
        Recipe {
            parts: vec![Part {
                name,
                shape: shape.to_vec(),
                layout: Layout::AsIs,
            }],
        }
    }

    fn transposed(name: String, out: usize, inp: usize) -> Recipe {
        Recipe {
            parts: vec![Part {
                name,
                shape: vec![inp, out],
                layout: Layout::Transposed,
            }],
        }
    }

    /// Row blocks (rows, optional RoPE head_dim); `cols` None for a bias (1-D).
    fn rows(parts: Vec<(String, usize, Option<usize>)>, cols: Option<usize>) -> Recipe {
        Recipe {
            parts: parts
                .into_iter()
                .map(|(name, rows, rope)| Part {
                    name,
                    shape: match cols {
                        Some(c) => vec![rows, c],
                        None => vec![rows],
                    },
                    layout: match rope {
                        Some(head_dim) => Layout::RopePermuted { head_dim },
                        None => Layout::AsIs,
                    },
                })
                .collect(),
        }
    }
}

/// One part of a tperf parameter back in the file's layout (the inverse of `assemble`).
fn unmap(part: &Part, src: &[f32]) -> Vec<f32> {
    let mut out = vec![0.0; src.len()];
    match part.layout {
        Layout::AsIs => out.copy_from_slice(src),
        Layout::Transposed => {
            let (inp, outd) = (part.shape[0], part.shape[1]);
            for i in 0..inp {
                for o in 0..outd {
                    out[i * outd + o] = src[o * inp + i];
                }
            }
        }
        Layout::RopePermuted { head_dim } => {
            let row = src.len() / part.shape[0];
            let half = head_dim / 2;
            for head in 0..part.shape[0] / head_dim {
                for i in 0..half {
                    for (tperf, file) in [(2 * i, i), (2 * i + 1, i + half)] {
                        let s = (head * head_dim + tperf) * row;
                        let d = (head * head_dim + file) * row;
                        out[d..d + row].copy_from_slice(&src[s..s + row]);
                    }
                }
            }
        }
    }
    out
}

/// A tensor to write, little-endian in its file dtype.
struct OwnedTensor {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl OwnedTensor {
    fn new(dtype: Dtype, shape: &[usize], values: &[f32]) -> OwnedTensor {
        let (dtype, bytes) = match dtype {
            Dtype::BF16 => (
                dtype,
                values
                    .iter()
                    .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
                    .collect(),
            ),
            Dtype::F16 => (
                dtype,
                values
                    .iter()
                    .flat_map(|&v| f16::from_f32(v).to_le_bytes())
                    .collect(),
            ),
            _ => (
                Dtype::F32,
                values.iter().flat_map(|&v| v.to_le_bytes()).collect(),
            ),
        };
        OwnedTensor {
            dtype,
            shape: shape.to_vec(),
            bytes,
        }
    }
}

impl safetensors::View for &OwnedTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}
