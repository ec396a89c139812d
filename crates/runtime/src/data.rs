//! Training data: a UTF-8 text file tokenized once, split into a training part and a held-out
//! validation part (the last 10% of tokens by default), and batches of (tokens, targets) of
//! B × T with targets the next token, in an order fixed by a seed. A synthetic source of random
//! tokens stands in for data when only speed matters.
//!
//! Batching. The training split is cut into windows of T + 1 tokens with stride T: window w is
//! tokens[w·T ..= w·T + T], its first T tokens the inputs and its last T the targets, so every
//! token but the first is a target exactly once per epoch. Each epoch visits all windows in a
//! fresh random order (a permutation drawn from the stream `(seed, epoch)`); a batch takes the
//! next B windows and runs on into the next epoch when one ends. The loader's position is
//! therefore (epoch, cursor), two numbers that a checkpoint saves and a resumed run restores
//! in O(1) to continue with exactly the batches it would have seen.

use crate::rng::Rng;
use crate::tokenizer::Tokenizer;
use serde::{Deserialize, Serialize};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;

/// The held-out fraction when none is given.
pub const DEFAULT_VAL_FRACTION: f64 = 0.1;

#[derive(Debug, Error)]
pub enum DataError {
    #[error("the data file {} does not exist", path.display())]
    NotFound { path: PathBuf },
    #[error("cannot read the data file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the data file {} is empty", path.display())]
    Empty { path: PathBuf },
    #[error("the data file {} is not valid UTF-8 (the first bad byte is at offset {offset}): tperf reads text; convert it (iconv -t UTF-8) or use --synthetic", path.display())]
    NotUtf8 { path: PathBuf, offset: usize },
    #[error("the data file has {tokens} tokens; --seq {seq} needs at least {} ({source_name}, {tokenizer} tokenizer)", seq + 1)]
    TooShort {
        source_name: String,
        tokenizer: &'static str,
        tokens: usize,
        seq: usize,
    },
    #[error("the {split} split has {tokens} of the data's {total} tokens; --seq {seq} needs at least {}: use a longer file, a shorter --seq, or another --val-fraction (0 holds nothing out)", seq + 1)]
    SplitTooShort {
        split: &'static str,
        tokens: usize,
        total: usize,
        seq: usize,
    },
    #[error("--val-fraction must be at least 0 and below 1 (got {0})")]
    BadValFraction(f64),
    #[error("{field} must be at least 1 (got 0)")]
    Zero { field: &'static str },
    #[error("cannot resume the data loader: {0}")]
    Resume(String),
}

/// A tokenized text, split into training and validation tokens.
#[derive(Clone, Debug)]
pub struct Corpus {
    /// Where the text came from, for messages.
    pub source_name: String,
    pub tokenizer: &'static str,
    pub train: Vec<u32>,
    pub val: Vec<u32>,
}

impl Corpus {
    /// Reads, checks and tokenizes a UTF-8 text file.
    pub fn load(
        path: &Path,
        tokenizer: &Tokenizer,
        val_fraction: f64,
    ) -> Result<Corpus, DataError> {
        check_fraction(val_fraction)?;
        let bytes = std::fs::read(path).map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                DataError::NotFound {
                    path: path.to_path_buf(),
                }
            } else {
                DataError::Io {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
        if bytes.is_empty() {
            return Err(DataError::Empty {
                path: path.to_path_buf(),
            });
        }
        let text = std::str::from_utf8(&bytes).map_err(|e| DataError::NotUtf8 {
            path: path.to_path_buf(),
            offset: e.valid_up_to(),
        })?;
        Corpus::from_text(&path.display().to_string(), text, tokenizer, val_fraction)
    }

    /// Tokenizes text already in memory.
    pub fn from_text(
        source_name: &str,
        text: &str,
        tokenizer: &Tokenizer,
        val_fraction: f64,
    ) -> Result<Corpus, DataError> {
        check_fraction(val_fraction)?;
        Ok(Corpus::from_tokens(
            source_name,
            tokenizer.name(),
            tokenizer.encode(text),
            val_fraction,
        ))
    }

    /// Splits a token stream: the last ⌊N · val_fraction⌋ tokens are held out. The split is
    /// contiguous, not sampled, so no validation window overlaps text the model trained on.
    pub fn from_tokens(
        source_name: &str,
        tokenizer: &'static str,
        mut tokens: Vec<u32>,
        val_fraction: f64,
    ) -> Corpus {
        let n_val = (tokens.len() as f64 * val_fraction.clamp(0.0, 1.0)).floor() as usize;
        let val = tokens.split_off(tokens.len() - n_val.min(tokens.len()));
        Corpus {
            source_name: source_name.to_string(),
            tokenizer,
            train: tokens,
            val,
        }
    }

    pub fn total_tokens(&self) -> usize {
        self.train.len() + self.val.len()
    }

    /// Checks that both splits hold at least one window of T + 1 tokens (the validation split
    /// only when there is one).
    pub fn check_seq(&self, seq: usize) -> Result<(), DataError> {
        if seq == 0 {
            return Err(DataError::Zero { field: "seq" });
        }
        let total = self.total_tokens();
        if total < seq + 1 {
            return Err(DataError::TooShort {
                source_name: self.source_name.clone(),
                tokenizer: self.tokenizer,
                tokens: total,
                seq,
            });
        }
        for (split, tokens) in [("training", &self.train), ("validation", &self.val)] {
            if split == "validation" && tokens.is_empty() {
                continue;
            }
            if tokens.len() < seq + 1 {
                return Err(DataError::SplitTooShort {
                    split,
                    tokens: tokens.len(),
                    total,
                    seq,
                });
            }
        }
        Ok(())
    }
}

fn check_fraction(f: f64) -> Result<(), DataError> {
    if (0.0..1.0).contains(&f) {
        Ok(())
    } else {
        Err(DataError::BadValFraction(f))
    }
}

/// One batch, ready for `Backend::write_i32`: row-major (B, T) token ids and next-token
/// targets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    pub b: usize,
    pub t: usize,
    pub tokens: Vec<i32>,
    pub targets: Vec<i32>,
}

impl Batch {
    fn with_capacity(b: usize, t: usize) -> Self {
        Batch {
            b,
            t,
            tokens: Vec::with_capacity(b * t),
            targets: Vec::with_capacity(b * t),
        }
    }

    /// Appends one row from a window of T + 1 tokens. Token ids fit i32: vocabularies are
    /// capped at 2^24 by config validation and tokenizers stay below that.
    fn push_window(&mut self, window: &[u32]) {
        debug_assert_eq!(window.len(), self.t + 1);
        self.tokens
            .extend(window[..self.t].iter().map(|&x| x as i32));
        self.targets.extend(window[1..].iter().map(|&x| x as i32));
    }

    pub fn n_tokens(&self) -> usize {
        self.b * self.t
    }
}

/// Where a loader stands: what a checkpoint saves to resume the data stream exactly.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LoaderState {
    Text {
        seed: u64,
        seq: usize,
        /// Epochs completed.
        epoch: u64,
        /// Windows of the current epoch already served.
        cursor: usize,
        /// Number of windows and a CRC-32 of the training tokens, so a resumed run notices a
        /// different file, tokenizer or split before it trains on the wrong data.
        windows: usize,
        tokens_crc32: u32,
    },
    Synthetic {
        seed: u64,
        seq: usize,
        vocab: usize,
        /// Batches served.
        batches: u64,
    },
}

/// Serves training batches from a corpus's training split and evaluation batches from its
/// validation split.
#[derive(Clone, Debug)]
pub struct TextLoader {
    corpus: Arc<Corpus>,
    b: usize,
    t: usize,
    seed: u64,
    epoch: u64,
    cursor: usize,
    /// The current epoch's window order.
    order: Vec<usize>,
    tokens_crc32: u32,
}

impl TextLoader {
    pub fn new(corpus: Arc<Corpus>, b: usize, t: usize, seed: u64) -> Result<Self, DataError> {
        if b == 0 {
            return Err(DataError::Zero { field: "batch" });
        }
        corpus.check_seq(t)?;
        let tokens_crc32 = crc_tokens(&corpus.train);
        let mut loader = TextLoader {
            corpus,
            b,
            t,
            seed,
            epoch: 0,
            cursor: 0,
            order: Vec::new(),
            tokens_crc32,
        };
        loader.order = loader.epoch_order(0);
        Ok(loader)
    }

    /// Windows of T + 1 tokens with stride T in the training split.
    pub fn windows(&self) -> usize {
        (self.corpus.train.len() - 1) / self.t
    }

    pub fn corpus(&self) -> &Corpus {
        &self.corpus
    }

    fn epoch_order(&self, epoch: u64) -> Vec<usize> {
        Rng::derive(self.seed, epoch).permutation(self.windows())
    }

    pub fn next_batch(&mut self) -> Batch {
        let mut batch = Batch::with_capacity(self.b, self.t);
        for _ in 0..self.b {
            if self.cursor == self.order.len() {
                self.epoch += 1;
                self.cursor = 0;
                self.order = self.epoch_order(self.epoch);
            }
            let start = self.order[self.cursor] * self.t;
            self.cursor += 1;
            batch.push_window(&self.corpus.train[start..start + self.t + 1]);
        }
        batch
    }

    pub fn state(&self) -> LoaderState {
        LoaderState::Text {
            seed: self.seed,
            seq: self.t,
            epoch: self.epoch,
            cursor: self.cursor,
            windows: self.windows(),
            tokens_crc32: self.tokens_crc32,
        }
    }

    /// Continues from a saved position. The batch size may differ from the saved run's (the
    /// position counts windows, not batches); the sequence length and the data may not.
    /// The saved seed replaces this loader's, since the order is the saved run's.
    pub fn restore(&mut self, state: &LoaderState) -> Result<(), DataError> {
        let LoaderState::Text {
            seed,
            seq,
            epoch,
            cursor,
            windows,
            tokens_crc32,
        } = *state
        else {
            return Err(DataError::Resume(
                "the checkpoint was trained on synthetic data, this run reads a text file".into(),
            ));
        };
        if seq != self.t {
            return Err(DataError::Resume(format!(
                "the checkpoint was trained with --seq {seq}, this run asks for --seq {}",
                self.t
            )));
        }
        if windows != self.windows() || tokens_crc32 != self.tokens_crc32 {
            return Err(DataError::Resume(format!(
                "the training data differs from the checkpoint's ({windows} windows, CRC-32 {tokens_crc32:08x}; now {} windows, CRC-32 {:08x}): use the same file, tokenizer and --val-fraction",
                self.windows(),
                self.tokens_crc32
            )));
        }
        if cursor > windows {
            return Err(DataError::Resume(format!(
                "the saved cursor {cursor} is past the epoch's {windows} windows"
            )));
        }
        self.seed = seed;
        self.epoch = epoch;
        self.cursor = cursor;
        self.order = self.epoch_order(epoch);
        Ok(())
    }

    /// The first `n` batches of the validation split, in order: the same windows at every
    /// evaluation, so validation losses are comparable across steps. Windows wrap around when
    /// the split holds fewer than n · B of them. Empty without a validation split.
    pub fn eval_batches(&self, n: usize) -> Vec<Batch> {
        let val = &self.corpus.val;
        if val.len() < self.t + 1 {
            return Vec::new();
        }
        let windows = (val.len() - 1) / self.t;
        let mut next = 0;
        (0..n)
            .map(|_| {
                let mut batch = Batch::with_capacity(self.b, self.t);
                for _ in 0..self.b {
                    let start = next * self.t;
                    batch.push_window(&val[start..start + self.t + 1]);
                    next = (next + 1) % windows;
                }
                batch
            })
            .collect()
    }
}

fn crc_tokens(tokens: &[u32]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for t in tokens {
        h.update(&t.to_le_bytes());
    }
    h.finalize()
}

/// Uniformly random tokens, for benchmarking without a data file. Batch k is drawn from the
/// stream `(seed, k)`, so a position is one counter; evaluation batches come from streams no
/// training batch uses.
#[derive(Clone, Debug)]
pub struct SyntheticLoader {
    b: usize,
    t: usize,
    vocab: usize,
    seed: u64,
    batches: u64,
}

/// Evaluation streams count down from here; training would need 2^63 batches to meet them.
const EVAL_STREAM_BASE: u64 = u64::MAX;

impl SyntheticLoader {
    pub fn new(b: usize, t: usize, vocab: usize, seed: u64) -> Result<Self, DataError> {
        for (field, v) in [("batch", b), ("seq", t), ("vocab_size", vocab)] {
            if v == 0 {
                return Err(DataError::Zero { field });
            }
        }
        Ok(SyntheticLoader {
            b,
            t,
            vocab,
            seed,
            batches: 0,
        })
    }

    fn draw(&self, stream: u64) -> Batch {
        let mut rng = Rng::derive(self.seed, stream);
        let mut batch = Batch::with_capacity(self.b, self.t);
        let mut window = vec![0u32; self.t + 1];
        for _ in 0..self.b {
            for x in window.iter_mut() {
                *x = rng.below(self.vocab as u64) as u32;
            }
            batch.push_window(&window);
        }
        batch
    }

    pub fn next_batch(&mut self) -> Batch {
        let batch = self.draw(self.batches);
        self.batches += 1;
        batch
    }

    pub fn state(&self) -> LoaderState {
        LoaderState::Synthetic {
            seed: self.seed,
            seq: self.t,
            vocab: self.vocab,
            batches: self.batches,
        }
    }

    pub fn restore(&mut self, state: &LoaderState) -> Result<(), DataError> {
        let LoaderState::Synthetic {
            seed,
            seq,
            vocab,
            batches,
        } = *state
        else {
            return Err(DataError::Resume(
                "the checkpoint was trained on a text file, this run asks for --synthetic".into(),
            ));
        };
        if seq != self.t || vocab != self.vocab {
            return Err(DataError::Resume(format!(
                "the checkpoint's synthetic data had --seq {seq} and vocabulary {vocab}, this run has --seq {} and vocabulary {}",
                self.t, self.vocab
            )));
        }
        self.seed = seed;
        self.batches = batches;
        Ok(())
    }

    pub fn eval_batches(&self, n: usize) -> Vec<Batch> {
        (0..n as u64)
            .map(|k| self.draw(EVAL_STREAM_BASE - k))
            .collect()
    }
}

/// Either source, as the training loop sees it.
#[derive(Clone, Debug)]
pub enum Loader {
    Text(TextLoader),
    Synthetic(SyntheticLoader),
}

impl Loader {
    pub fn batch(&self) -> usize {
        match self {
            Loader::Text(l) => l.b,
            Loader::Synthetic(l) => l.b,
        }
    }

    pub fn seq(&self) -> usize {
        match self {
            Loader::Text(l) => l.t,
            Loader::Synthetic(l) => l.t,
        }
    }

    pub fn next_batch(&mut self) -> Batch {
        match self {
            Loader::Text(l) => l.next_batch(),
            Loader::Synthetic(l) => l.next_batch(),
        }
    }

    pub fn state(&self) -> LoaderState {
        match self {
            Loader::Text(l) => l.state(),
            Loader::Synthetic(l) => l.state(),
        }
    }

    pub fn restore(&mut self, state: &LoaderState) -> Result<(), DataError> {
        match self {
            Loader::Text(l) => l.restore(state),
            Loader::Synthetic(l) => l.restore(state),
        }
    }

    pub fn eval_batches(&self, n: usize) -> Vec<Batch> {
        match self {
            Loader::Text(l) => l.eval_batches(n),
            Loader::Synthetic(l) => l.eval_batches(n),
        }
    }
}
