//! Ragged batches over a paged KV cache: the contract continuous batching needs. A step carries
//! S sequences, each bringing some new tokens (a whole prompt, a chunk of one, or the one token
//! of a decode step) at its own position; their rows are packed into one (N, ·) batch, so every
//! per-token op (embedding, matmuls, norms, MLP) is unchanged, and only the position-dependent
//! ops read per-row metadata from device tensors the host writes before the step:
//!   positions (N) i32    absolute position of each row (RoPE, learned position tables)
//!   slots (N) i32        where each row's key and value go in the pools (block · bs + offset)
//!   row_seq (N) i32      the sequence of each row
//!   ctx_lens (S) i32     keys of each sequence after the append
//!   block_table (S, MB)  each sequence's blocks, in order (unused entries 0)
//!   last_rows (S) i32    each sequence's last row, whose logits are sampled
//! The cache is, per layer, K and V pools of (num_blocks, H_kv, block_size, D): vLLM's
//! PagedAttention layout. The contiguous cache (B, H_kv, T_cap, D) is its special case with one
//! block of T_cap per sequence and the identity block table.

use super::{Emit, Keep, Kv, Transformer};
use crate::backend::{Backend, BackendError};
use crate::config::Positions;
use crate::dtype::DType;
use crate::ops::embedding::EmbeddingIo;
use crate::ops::kv_cache::{PagedKvAppend, PagedKvAppendIo};
use crate::ops::paged_attention::{PagedAttention, PagedAttentionIo, SeqLens};
use crate::ops::rope::RopeIo;
use crate::ops::take_last::{TakeRows, TakeRowsIo};
use crate::ops::{Op, Phase};
use crate::tensor::{MemCategory, Tensor, TensorName, TensorSpec};
use thiserror::Error;

/// Tokens per block of a paged cache unless a caller chooses otherwise (vLLM's default).
pub const DEFAULT_BLOCK_SIZE: usize = 16;

/// One sequence of a ragged step: `q_len` new tokens at positions pos..pos + q_len.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeqSpan {
    pub pos: usize,
    pub q_len: usize,
}

/// The sequences of one ragged step, in the order their rows are packed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaggedBatch {
    pub seqs: Vec<SeqSpan>,
}

impl RaggedBatch {
    /// Packed rows: Σ q_len.
    pub fn rows(&self) -> usize {
        self.seqs.iter().map(|s| s.q_len).sum()
    }

    pub fn lens(&self) -> Vec<SeqLens> {
        self.seqs
            .iter()
            .map(|s| SeqLens {
                q_len: s.q_len,
                ctx_len: s.pos + s.q_len,
            })
            .collect()
    }
}

/// A paged KV cache: per layer, K and V pools of (num_blocks, H_kv, block_size, D).
pub struct PagedKvCache {
    pub block_size: usize,
    pub num_blocks: usize,
    pub k: Vec<Tensor>,
    pub v: Vec<Tensor>,
}

/// What is wrong with a ragged step's layout.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum LayoutError {
    #[error("a ragged step needs at least one sequence with at least one new token")]
    Empty,
    #[error("{tables} block tables for {seqs} sequences: give each sequence its own")]
    TableCount { tables: usize, seqs: usize },
    #[error("sequence {seq} brings no new token: leave it out of the step")]
    NoTokens { seq: usize },
    #[error("sequence {seq} needs {needed} blocks of {block_size} for {ctx_len} positions, its block table has {given}")]
    ShortTable {
        seq: usize,
        needed: usize,
        given: usize,
        block_size: usize,
        ctx_len: usize,
    },
    #[error("sequence {seq}'s block table is longer ({given}) than the step's max_blocks ({max_blocks})")]
    WideTable {
        seq: usize,
        given: usize,
        max_blocks: usize,
    },
    #[error("sequence {seq} names block {block}, but the cache has {num_blocks}")]
    NoSuchBlock {
        seq: usize,
        block: usize,
        num_blocks: usize,
    },
    #[error("sequence {seq} reaches position {ctx_len}, past the model's context of {context}")]
    PastContext {
        seq: usize,
        ctx_len: usize,
        context: usize,
    },
}

/// The host-side values of a ragged step's device tensors (see the module doc).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaggedLayout {
    pub max_blocks: usize,
    pub positions: Vec<i32>,
    pub slots: Vec<i32>,
    pub row_seq: Vec<i32>,
    pub ctx_lens: Vec<i32>,
    pub block_table: Vec<i32>,
    pub last_rows: Vec<i32>,
}

impl RaggedLayout {
    /// Lays out `batch` with each sequence's blocks (`block_tables[s]`, in order), checking that
    /// every table covers its sequence and names blocks the cache has, and that no sequence
    /// runs past the model's `context`.
    pub fn new<T: AsRef<[usize]>>(
        batch: &RaggedBatch,
        block_tables: &[T],
        block_size: usize,
        num_blocks: usize,
        max_blocks: usize,
        context: usize,
    ) -> Result<Self, LayoutError> {
        if batch.seqs.is_empty() {
            return Err(LayoutError::Empty);
        }
        if block_tables.len() != batch.seqs.len() {
            return Err(LayoutError::TableCount {
                tables: block_tables.len(),
                seqs: batch.seqs.len(),
            });
        }
        let mut l = RaggedLayout {
            max_blocks,
            positions: Vec::with_capacity(batch.rows()),
            slots: Vec::with_capacity(batch.rows()),
            row_seq: Vec::with_capacity(batch.rows()),
            ctx_lens: Vec::with_capacity(batch.seqs.len()),
            block_table: vec![0; batch.seqs.len() * max_blocks],
            last_rows: Vec::with_capacity(batch.seqs.len()),
        };
        for (s, (span, table)) in batch.seqs.iter().zip(block_tables).enumerate() {
            let table = table.as_ref();
            if span.q_len == 0 {
                return Err(LayoutError::NoTokens { seq: s });
            }
            let ctx_len = span.pos + span.q_len;
            if ctx_len > context {
                return Err(LayoutError::PastContext {
                    seq: s,
                    ctx_len,
                    context,
                });
            }
            let needed = ctx_len.div_ceil(block_size);
            if table.len() < needed {
                return Err(LayoutError::ShortTable {
                    seq: s,
                    needed,
                    given: table.len(),
                    block_size,
                    ctx_len,
                });
            }
            if table.len() > max_blocks {
                return Err(LayoutError::WideTable {
                    seq: s,
                    given: table.len(),
                    max_blocks,
                });
            }
            if let Some(&block) = table.iter().find(|&&b| b >= num_blocks) {
                return Err(LayoutError::NoSuchBlock {
                    seq: s,
                    block,
                    num_blocks,
                });
            }
            for (j, &b) in table.iter().enumerate() {
                l.block_table[s * max_blocks + j] = b as i32;
            }
            for p in span.pos..ctx_len {
                l.positions.push(p as i32);
                l.slots
                    .push((table[p / block_size] * block_size + p % block_size) as i32);
                l.row_seq.push(s as i32);
            }
            l.ctx_lens.push(ctx_len as i32);
            l.last_rows.push(l.positions.len() as i32 - 1);
        }
        Ok(l)
    }
}

/// The device tensors of a ragged step (i32, category io).
#[derive(Clone)]
pub struct RaggedInputs {
    pub tokens: Tensor,
    pub positions: Tensor,
    pub slots: Tensor,
    pub row_seq: Tensor,
    pub ctx_lens: Tensor,
    pub block_table: Tensor,
    pub last_rows: Tensor,
}

impl RaggedInputs {
    fn all(&self) -> [&Tensor; 7] {
        [
            &self.tokens,
            &self.positions,
            &self.slots,
            &self.row_seq,
            &self.ctx_lens,
            &self.block_table,
            &self.last_rows,
        ]
    }
}

/// One ragged step as the schedule sees it: the batch (for the shapes and the cost), its device
/// layout and the cache.
pub struct PagedStep<'a> {
    pub batch: &'a RaggedBatch,
    pub inputs: &'a RaggedInputs,
    pub cache: &'a PagedKvCache,
}

impl Transformer {
    /// A paged KV cache of `num_blocks` blocks of `block_size` positions, in the compute dtype.
    pub fn alloc_paged_kv_cache(
        &self,
        be: &mut impl Backend,
        num_blocks: usize,
        block_size: usize,
    ) -> Result<PagedKvCache, BackendError> {
        let shape = [
            num_blocks,
            self.cfg.n_kv_heads,
            block_size,
            self.cfg.head_dim,
        ];
        let dt = self.act_dtype();
        let (mut k, mut v) = (Vec::new(), Vec::new());
        for l in 0..self.cfg.n_layers {
            for (pool, name) in [(&mut k, "k_pool"), (&mut v, "v_pool")] {
                let spec =
                    TensorSpec::new(TensorName::layer(l, name), &shape, dt, MemCategory::KvCache);
                pool.push(be.alloc(spec)?);
            }
        }
        Ok(PagedKvCache {
            block_size,
            num_blocks,
            k,
            v,
        })
    }

    pub fn free_paged_kv_cache(&self, be: &mut impl Backend, cache: PagedKvCache) {
        for t in cache.k.into_iter().chain(cache.v) {
            be.free(t);
        }
    }

    /// The device tensors of a step of `batch` whose block tables are at most `max_blocks` wide.
    pub fn alloc_ragged_inputs(
        &self,
        be: &mut impl Backend,
        batch: &RaggedBatch,
        max_blocks: usize,
    ) -> Result<RaggedInputs, BackendError> {
        let (n, s) = (batch.rows(), batch.seqs.len());
        let mut i32s = |name: &'static str, shape: &[usize]| {
            let name = TensorName::fixed(name);
            be.alloc(TensorSpec::new(name, shape, DType::I32, MemCategory::Io))
        };
        Ok(RaggedInputs {
            tokens: i32s("tokens", &[n])?,
            positions: i32s("positions", &[n])?,
            slots: i32s("slots", &[n])?,
            row_seq: i32s("row_seq", &[n])?,
            ctx_lens: i32s("ctx_lens", &[s])?,
            block_table: i32s("block_table", &[s, max_blocks])?,
            last_rows: i32s("last_rows", &[s])?,
        })
    }

    /// Writes a step's token ids and layout (checked when it was made) into its device tensors.
    pub fn write_ragged_inputs(
        &self,
        be: &mut impl Backend,
        inputs: &RaggedInputs,
        tokens: &[i32],
        layout: &RaggedLayout,
    ) -> Result<(), BackendError> {
        be.write_i32(&inputs.tokens, tokens)?;
        be.write_i32(&inputs.positions, &layout.positions)?;
        be.write_i32(&inputs.slots, &layout.slots)?;
        be.write_i32(&inputs.row_seq, &layout.row_seq)?;
        be.write_i32(&inputs.ctx_lens, &layout.ctx_lens)?;
        be.write_i32(&inputs.block_table, &layout.block_table)?;
        be.write_i32(&inputs.last_rows, &layout.last_rows)
    }

    pub fn free_ragged_inputs(&self, be: &mut impl Backend, inputs: RaggedInputs) {
        for t in inputs.all() {
            be.free(t.clone());
        }
    }

    /// One ragged step's forward: appends every sequence's new keys and values to the paged
    /// cache and returns the logits (S, V) of each sequence's last new token, which the caller
    /// reads (or samples) and frees.
    pub fn ragged_logits(
        &self,
        be: &mut impl Backend,
        step: &PagedStep<'_>,
    ) -> Result<Tensor, BackendError> {
        let n = step.batch.rows();
        let s = step.batch.seqs.len();
        let (c, v) = (self.cfg.d_model, self.cfg.vocab_size);
        let dt = self.act_dtype();
        let mut e = Emit::new(be, Phase::Forward);
        // Embedding, each row at its own position.
        let x0 = e.alloc("x.emb", &[n, c], dt, MemCategory::Activations)?;
        let mut emb = self.embedding_op(1, n, 0);
        emb.per_row = true;
        let w = &self.weights;
        let io = EmbeddingIo {
            tokens: step.inputs.tokens.clone(),
            wte: w.token_embedding.w().clone(),
            wpe: w.position_embedding.as_ref().map(|p| p.w().clone()),
            positions: Some(step.inputs.positions.clone()),
            x: x0.clone(),
        };
        e.run(emb, Op::Embedding, io, "embedding")?;
        let (mut stream, mut pending) = (x0, None);
        for l in 0..self.cfg.n_layers {
            e.layer = Some(l);
            let (_, next, branch) = self.block_forward(
                &mut e,
                l,
                stream,
                pending,
                1,
                n,
                Keep::NOTHING,
                false,
                &Kv::Paged(step),
            )?;
            stream = next;
            pending = branch;
        }
        e.layer = None;
        let (fin, head_input) = self.final_norm(&mut e, stream, pending, n, false)?;
        if let Some(fin) = fin {
            e.be.free(fin.stream);
            e.be.free(fin.stats);
        }
        // Only each sequence's last row goes to the output layer.
        let last = e.alloc("x.last", &[s, c], dt, MemCategory::Activations)?;
        let io = TakeRowsIo {
            x: head_input.clone(),
            rows: step.inputs.last_rows.clone(),
            out: last.clone(),
        };
        e.run(TakeRows { s, c }, Op::TakeRows, io, "take_last")?;
        e.be.free(head_input);
        let logits = e.alloc("logits", &[s, v], dt, MemCategory::Activations)?;
        self.lm_head(&mut e, &last, &logits)?;
        e.be.free(last);
        Ok(logits)
    }

    /// Block `l`'s attention over a ragged batch: RoPE at each row's position, the new keys and
    /// values into their slots, then paged attention; returns the attention output (N, H·D).
    pub(super) fn paged_attention_forward(
        &self,
        e: &mut Emit<'_, impl Backend>,
        l: usize,
        qkv: &Tensor,
        step: &PagedStep<'_>,
    ) -> Result<Tensor, BackendError> {
        let cfg = &self.cfg;
        let n = step.batch.rows();
        if let Positions::Rope { theta, scaling } = cfg.positions {
            let mut rope = self.rope_op(1, n, 0, theta, scaling);
            rope.per_row = true;
            let io = RopeIo {
                positions: Some(step.inputs.positions.clone()),
                qkv: qkv.clone(),
            };
            e.run(rope, Op::Rope, io, "attn.rope")?;
        }
        let append = PagedKvAppend {
            n,
            h_q: cfg.n_heads,
            h_kv: cfg.n_kv_heads,
            d: cfg.head_dim,
            block_size: step.cache.block_size,
        };
        let (k_pool, v_pool) = (&step.cache.k[l], &step.cache.v[l]);
        let io = PagedKvAppendIo {
            qkv: qkv.clone(),
            slots: step.inputs.slots.clone(),
            k_pool: k_pool.clone(),
            v_pool: v_pool.clone(),
        };
        e.run(append, Op::PagedKvAppend, io, "attn.kv_append")?;
        let attn = e.alloc(
            TensorName::layer(l, "attn"),
            &[n, cfg.attn_dim()],
            self.act_dtype(),
            MemCategory::Activations,
        )?;
        let op = PagedAttention {
            h: cfg.n_heads,
            h_kv: cfg.n_kv_heads,
            d: cfg.head_dim,
            causal: cfg.causal,
            window: cfg.sliding_window,
            block_size: step.cache.block_size,
            max_blocks: step.inputs.block_table.shape[1],
            seqs: step.batch.lens(),
        };
        let io = PagedAttentionIo {
            qkv: qkv.clone(),
            k_pool: k_pool.clone(),
            v_pool: v_pool.clone(),
            positions: step.inputs.positions.clone(),
            row_seq: step.inputs.row_seq.clone(),
            ctx_lens: step.inputs.ctx_lens.clone(),
            block_table: step.inputs.block_table.clone(),
            out: attn.clone(),
        };
        e.run(op, Op::PagedAttention, io, "attn.paged")?;
        Ok(attn)
    }
}
