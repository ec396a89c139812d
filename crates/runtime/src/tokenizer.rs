//! Tokenizers: GPT-2's byte-level BPE (r50k_base, 50,257 tokens, through `tiktoken-rs`, whose
//! ranks ship inside the crate so nothing is downloaded), a byte tokenizer (256 tokens, one
//! per byte) for models with tiny vocabularies, and a Hugging Face model folder's own
//! `tokenizer.json` (through Hugging Face's `tokenizers` crate; see `crate::hf`).

use std::fmt;
use std::sync::{Arc, OnceLock};
use thiserror::Error;
use tiktoken_rs::CoreBPE;
use tperf_core::config::ModelConfig;

/// GPT-2's vocabulary: 50,000 merges + 256 bytes + `<|endoftext|>`.
pub const GPT2_VOCAB: usize = 50_257;
/// GPT-2's `<|endoftext|>`, the document separator.
pub const GPT2_EOT: u32 = 50_256;
pub const BYTE_VOCAB: usize = 256;

#[derive(Debug, Error, PartialEq)]
pub enum TokenizerError {
    #[error("unknown tokenizer '{0}': use gpt2 (GPT-2's BPE, 50,257 tokens) or byte (256 tokens)")]
    Unknown(String),
    #[error("the model '{model}' has a vocabulary of {model_vocab} tokens, smaller than the {tokenizer} tokenizer's {tokenizer_vocab}: its token ids would index past the embedding table; use --tokenizer byte, or a model with vocab_size ≥ {tokenizer_vocab}")]
    VocabTooSmall {
        model: String,
        model_vocab: usize,
        tokenizer: &'static str,
        tokenizer_vocab: usize,
    },
}

/// A folder's `tokenizer.json` and the ids that end a generation.
pub struct HfTokenizer {
    inner: tokenizers::Tokenizer,
    eos: Vec<u32>,
    vocab: usize,
}

impl HfTokenizer {
    pub fn new(inner: tokenizers::Tokenizer, eos: Vec<u32>) -> Self {
        let vocab = inner.get_vocab_size(true);
        HfTokenizer { inner, eos, vocab }
    }

    /// The ids that end a generation (a model may have several: Llama 3's two).
    pub fn end_tokens(&self) -> &[u32] {
        &self.eos
    }
}

/// GPT-2's BPE with every token's bytes laid end to end: decoding is a copy per token. A
/// serving step decodes each running sequence's newest tokens, and tiktoken's only public way
/// to a token's bytes that does not fail on a split UTF-8 character (`_decode_native_and_split`)
/// allocates the id list and clones each token's bytes, which made detokenising most of the
/// engine's host time per step.
pub struct Gpt2Bpe {
    bpe: &'static CoreBPE,
    /// Token t's bytes are `bytes[ends[t - 1]..ends[t]]` (from 0 for t = 0).
    bytes: Vec<u8>,
    ends: Vec<u32>,
}

impl Gpt2Bpe {
    fn new(bpe: &'static CoreBPE) -> Self {
        let (mut bytes, mut ends) = (Vec::new(), Vec::with_capacity(GPT2_VOCAB));
        for token in bpe._decode_native_and_split((0..GPT2_VOCAB as u32).collect()) {
            bytes.extend_from_slice(&token);
            ends.push(bytes.len() as u32);
        }
        Gpt2Bpe { bpe, bytes, ends }
    }

    /// The bytes of token `id`, which must be below [`GPT2_VOCAB`].
    fn token(&self, id: u32) -> &[u8] {
        let id = id as usize;
        let start = if id == 0 { 0 } else { self.ends[id - 1] };
        &self.bytes[start as usize..self.ends[id] as usize]
    }
}

/// A closed set of tokenizers: an enum rather than a trait object because a checkpoint names
/// its tokenizer and must be able to rebuild it from that name (a `tokenizer.json` is rebuilt
/// from its folder, `crate::hf::HfModel::open`).
#[derive(Clone)]
pub enum Tokenizer {
    /// GPT-2's BPE. The encoder is built once per process (a lazily initialised static inside
    /// tiktoken-rs) because parsing its 50k ranks takes a noticeable fraction of a second; the
    /// decoding table beside it is built once too.
    Gpt2(&'static Gpt2Bpe),
    /// Each UTF-8 byte is a token.
    Byte,
    /// A Hugging Face `tokenizer.json`.
    Hf(Arc<HfTokenizer>),
}

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tokenizer({})", self.name())
    }
}

impl PartialEq for Tokenizer {
    fn eq(&self, other: &Self) -> bool {
        self.name() == other.name()
    }
}

impl Tokenizer {
    pub fn gpt2() -> Self {
        static GPT2: OnceLock<Gpt2Bpe> = OnceLock::new();
        Tokenizer::Gpt2(GPT2.get_or_init(|| Gpt2Bpe::new(tiktoken_rs::r50k_base_singleton())))
    }

    pub fn byte() -> Self {
        Tokenizer::Byte
    }

    /// By name, as the CLI and checkpoints spell it.
    pub fn from_name(name: &str) -> Result<Self, TokenizerError> {
        match name.to_ascii_lowercase().as_str() {
            "gpt2" | "gpt-2" | "r50k_base" | "r50k" => Ok(Tokenizer::gpt2()),
            "byte" | "bytes" => Ok(Tokenizer::Byte),
            _ => Err(TokenizerError::Unknown(name.to_string())),
        }
    }

    /// The tokenizer a model gets when none is asked for: GPT-2's when the model's vocabulary
    /// can hold it, bytes otherwise (the seed's 10,000-token models train on bytes rather than
    /// fail).
    pub fn default_for(cfg: &ModelConfig) -> Self {
        if cfg.vocab_size >= GPT2_VOCAB {
            Tokenizer::gpt2()
        } else {
            Tokenizer::Byte
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Tokenizer::Gpt2(_) => "gpt2",
            Tokenizer::Byte => "byte",
            Tokenizer::Hf(_) => "tokenizer.json",
        }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            Tokenizer::Gpt2(_) => GPT2_VOCAB,
            Tokenizer::Byte => BYTE_VOCAB,
            Tokenizer::Hf(t) => t.vocab,
        }
    }

    /// The end-of-text token, where the tokenizer has one (a folder's first eos id).
    pub fn eot(&self) -> Option<u32> {
        match self {
            Tokenizer::Gpt2(_) => Some(GPT2_EOT),
            Tokenizer::Byte => None,
            Tokenizer::Hf(t) => t.eos.first().copied(),
        }
    }

    /// Every id that ends a generation.
    pub fn end_tokens(&self) -> Vec<u32> {
        match self {
            Tokenizer::Hf(t) => t.eos.clone(),
            _ => self.eot().into_iter().collect(),
        }
    }

    /// Text to ids with the tokenizer's special-token rules: for a `tokenizer.json`, its
    /// post-processor adds what the model expects (Llama's BOS) when `add_special_tokens`, and
    /// special tokens written in the text (a chat template's `<|im_start|>`) are matched as
    /// such — what `transformers`' `tokenizer(text)` does. Pass false for text that already
    /// holds them (a chat template's output). GPT-2 and byte tokenizers encode as [`encode`].
    ///
    /// [`encode`]: Tokenizer::encode
    pub fn encode_special(&self, text: &str, add_special_tokens: bool) -> Vec<u32> {
        match self {
            Tokenizer::Hf(t) => t
                .inner
                .encode(text, add_special_tokens)
                .map(|e| e.get_ids().to_vec())
                .unwrap_or_default(),
            _ => self.encode(text),
        }
    }

    /// Text to token ids. `<|endoftext|>` written in the text is encoded as ordinary text, not
    /// as the special token: a data file cannot inject control tokens by accident (this is
    /// what tiktoken's `encode_ordinary` and llm.c's data preparation do). A `tokenizer.json`
    /// encodes as `transformers` does by default: [`encode_special`]`(text, true)`.
    ///
    /// [`encode_special`]: Tokenizer::encode_special
    pub fn encode(&self, text: &str) -> Vec<u32> {
        match self {
            Tokenizer::Gpt2(gpt2) => gpt2.bpe.encode_ordinary(text),
            Tokenizer::Byte => text.bytes().map(u32::from).collect(),
            Tokenizer::Hf(_) => self.encode_special(text, true),
        }
    }

    /// Token ids to text. Never fails: a model samples any id below its own vocabulary, which
    /// may exceed the tokenizer's (GPT-2 models are often padded to 50,304), and a sequence of
    /// byte-level tokens may stop inside a UTF-8 character. Ids the tokenizer does not know and
    /// invalid UTF-8 both become U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        if let Tokenizer::Hf(t) = self {
            // Unknown ids would be dropped silently; show them as the others are.
            let mut out = String::new();
            let mut run: Vec<u32> = Vec::new();
            let flush = |run: &mut Vec<u32>, out: &mut String| {
                if !run.is_empty() {
                    out.push_str(&t.inner.decode(run, false).unwrap_or_default());
                    run.clear();
                }
            };
            for &id in ids {
                if (id as usize) < t.vocab {
                    run.push(id);
                } else {
                    flush(&mut run, &mut out);
                    out.push('\u{FFFD}');
                }
            }
            flush(&mut run, &mut out);
            return out;
        }
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        match self {
            Tokenizer::Gpt2(gpt2) => {
                for &id in ids {
                    if (id as usize) < GPT2_VOCAB {
                        bytes.extend_from_slice(gpt2.token(id));
                    } else {
                        bytes.extend_from_slice("\u{FFFD}".as_bytes());
                    }
                }
            }
            Tokenizer::Hf(_) => unreachable!("decoded above"),
            Tokenizer::Byte => {
                for &id in ids {
                    match u8::try_from(id) {
                        Ok(b) => bytes.push(b),
                        Err(_) => bytes.extend_from_slice("\u{FFFD}".as_bytes()),
                    }
                }
            }
        }
        // Valid UTF-8 (almost every decode) becomes the string in place; `from_utf8_lossy`
        // alone would copy it.
        String::from_utf8(bytes)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }

    /// Checks, where a model and a tokenizer meet, that every id the tokenizer produces indexes
    /// a row of the model's embedding. A larger model vocabulary is fine (padding).
    pub fn check_model(&self, cfg: &ModelConfig) -> Result<(), TokenizerError> {
        if cfg.vocab_size < self.vocab_size() {
            return Err(TokenizerError::VocabTooSmall {
                model: cfg.name.clone(),
                model_vocab: cfg.vocab_size,
                tokenizer: self.name(),
                tokenizer_vocab: self.vocab_size(),
            });
        }
        Ok(())
    }
}
