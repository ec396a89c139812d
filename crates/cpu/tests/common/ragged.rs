//! The ragged, paged contract checked on any compute backend: a batch of sequences of lengths
//! 1, 7 and 300, prefilled together (one of them in two chunks beside the others' decode rows)
//! through a paged cache of 16-token blocks scattered over the pool, gives, row for row, the
//! logits each sequence gives alone through the contiguous cache. Shared by the CPU and CUDA
//! test binaries (`#[path]`), with the tolerance the caller states.

use tperf_core::backend::Backend;
use tperf_core::config::ModelConfig;
use tperf_core::presets;
use tperf_core::rng::Rng;
use tperf_core::schedule::ragged::{PagedStep, RaggedBatch, RaggedLayout, SeqSpan};
use tperf_core::schedule::{alloc_step_tokens, Options, Precision, Transformer};

pub const LENS: [usize; 3] = [1, 7, 300];
pub const BLOCK: usize = 16;

/// A preset shrunk to a few thousand parameters with room for 300 + 1 positions.
pub fn tiny(preset: &str, window: Option<usize>) -> ModelConfig {
    let mut cfg = presets::find(preset).expect("preset exists").config;
    cfg.vocab_size = 61;
    cfg.context = 320;
    cfg.d_model = 32;
    cfg.d_ff = 48;
    cfg.n_layers = 2;
    cfg.sliding_window = window;
    let cfg = cfg.with_heads(4, 2).expect("4 heads divide 32");
    cfg.validate().expect("tiny config is valid");
    cfg
}

/// The families the contract must hold for: RoPE + GQA (Llama-style), learned positions
/// (GPT-2-style), and a sliding window.
pub fn families() -> Vec<(&'static str, ModelConfig)> {
    vec![
        ("llama", tiny("small", None)),
        ("gpt2", tiny("gpt2", None)),
        ("llama+window", tiny("small", Some(50))),
    ]
}

fn tokens(seed: u64, len: usize, vocab: usize) -> Vec<i32> {
    let mut rng = Rng::new(seed);
    (0..len)
        .map(|_| (rng.next_u64() % vocab as u64) as i32)
        .collect()
}

/// Logits of the last of `toks` after the prefix `prefix`, through the contiguous cache: the
/// prefill of `prefix + toks` when the prefix is empty, else a prefill then one more step.
fn alone<B: Backend>(
    be: &mut B,
    model: &Transformer,
    prompt: &[i32],
    next: i32,
) -> (Vec<f32>, Vec<f32>) {
    let mut cache = model.alloc_kv_cache(be, 1, prompt.len() + 1).unwrap();
    let t = alloc_step_tokens(be, 1, prompt.len()).unwrap();
    be.write_i32(&t, prompt).unwrap();
    let logits = model.step_logits(be, t, Some(&mut cache)).unwrap();
    let prefill = be.read_f32(&logits).unwrap();
    be.free(logits);
    let t = alloc_step_tokens(be, 1, 1).unwrap();
    be.write_i32(&t, &[next]).unwrap();
    let logits = model.step_logits(be, t, Some(&mut cache)).unwrap();
    let decode = be.read_f32(&logits).unwrap();
    be.free(logits);
    model.free_kv_cache(be, cache);
    (prefill, decode)
}

/// One ragged step: returns the logits (S, V) row by row.
fn step<B: Backend>(
    be: &mut B,
    model: &Transformer,
    cache: &tperf_core::schedule::ragged::PagedKvCache,
    batch: &RaggedBatch,
    tables: &[Vec<usize>],
    toks: &[i32],
) -> Vec<Vec<f32>> {
    let max_blocks = tables.iter().map(Vec::len).max().unwrap();
    let layout = RaggedLayout::new(
        batch,
        tables,
        cache.block_size,
        cache.num_blocks,
        max_blocks,
        model.cfg.context,
    )
    .expect("the layout is valid");
    let inputs = model.alloc_ragged_inputs(be, batch, max_blocks).unwrap();
    model
        .write_ragged_inputs(be, &inputs, toks, &layout)
        .unwrap();
    let logits = model
        .ragged_logits(
            be,
            &PagedStep {
                batch,
                inputs: &inputs,
                cache,
            },
        )
        .unwrap();
    let all = be.read_f32(&logits).unwrap();
    be.free(logits);
    model.free_ragged_inputs(be, inputs);
    let v = model.cfg.vocab_size;
    all.chunks(v).map(<[f32]>::to_vec).collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Checks the contract on `be` for `cfg` at `precision`, logits within `tol` (absolute).
pub fn check_ragged_matches_alone<B: Backend>(
    be: &mut B,
    name: &str,
    cfg: &ModelConfig,
    precision: Precision,
    tol: f32,
) {
    let opts = Options {
        precision,
        ..Options::default()
    };
    let model = Transformer::new(be, cfg, opts, false).unwrap();
    model.init_weights(be, 11).unwrap();
    let v = cfg.vocab_size;
    let prompts: Vec<Vec<i32>> = LENS
        .iter()
        .enumerate()
        .map(|(s, &len)| tokens(100 + s as u64, len, v))
        .collect();
    let next: Vec<i32> = (0..LENS.len())
        .map(|s| (7 * s + 3) as i32 % v as i32)
        .collect();
    let want: Vec<(Vec<f32>, Vec<f32>)> = prompts
        .iter()
        .zip(&next)
        .map(|(p, &n)| alone(be, &model, p, n))
        .collect();

    // Blocks scattered over the pool, interleaved between the sequences.
    let blocks_of = |len: usize| (len + 1).div_ceil(BLOCK);
    let total: usize = LENS.iter().map(|&l| blocks_of(l)).sum();
    let num_blocks = total + 5;
    let mut free: Vec<usize> = (0..num_blocks).rev().collect();
    free.rotate_left(3);
    let mut tables = vec![Vec::new(); LENS.len()];
    for j in 0..blocks_of(*LENS.iter().max().unwrap()) {
        for (s, &len) in LENS.iter().enumerate() {
            if j < blocks_of(len) {
                tables[s].push(free.pop().unwrap());
            }
        }
    }
    let cache = model.alloc_paged_kv_cache(be, num_blocks, BLOCK).unwrap();

    // Step 1: sequences 0 and 1 whole, sequence 2's first 200 tokens.
    let chunk = 200;
    let batch = RaggedBatch {
        seqs: vec![
            SeqSpan {
                pos: 0,
                q_len: LENS[0],
            },
            SeqSpan {
                pos: 0,
                q_len: LENS[1],
            },
            SeqSpan {
                pos: 0,
                q_len: chunk,
            },
        ],
    };
    let toks: Vec<i32> = [&prompts[0][..], &prompts[1][..], &prompts[2][..chunk]].concat();
    let got = step(be, &model, &cache, &batch, &tables, &toks);
    for s in 0..2 {
        let d = max_abs_diff(&got[s], &want[s].0);
        assert!(
            d <= tol,
            "{name}: sequence {s}'s prefill differs by {d} (tolerance {tol})"
        );
    }

    // Step 2: decode rows for 0 and 1 beside the rest of 2's prompt (chunked prefill).
    let batch = RaggedBatch {
        seqs: vec![
            SeqSpan {
                pos: LENS[0],
                q_len: 1,
            },
            SeqSpan {
                pos: LENS[1],
                q_len: 1,
            },
            SeqSpan {
                pos: chunk,
                q_len: LENS[2] - chunk,
            },
        ],
    };
    let toks: Vec<i32> = [&[next[0], next[1]][..], &prompts[2][chunk..]].concat();
    let got = step(be, &model, &cache, &batch, &tables, &toks);
    for s in 0..2 {
        let d = max_abs_diff(&got[s], &want[s].1);
        assert!(
            d <= tol,
            "{name}: sequence {s}'s decode differs by {d} (tolerance {tol})"
        );
    }
    let d = max_abs_diff(&got[2], &want[2].0);
    assert!(
        d <= tol,
        "{name}: sequence 2's chunked prefill differs by {d} (tolerance {tol})"
    );

    // Step 3: sequence 2 decodes alone.
    let batch = RaggedBatch {
        seqs: vec![SeqSpan {
            pos: LENS[2],
            q_len: 1,
        }],
    };
    let got = step(be, &model, &cache, &batch, &tables[2..], &[next[2]]);
    let d = max_abs_diff(&got[0], &want[2].1);
    assert!(
        d <= tol,
        "{name}: sequence 2's decode differs by {d} (tolerance {tol})"
    );
    model.free_paged_kv_cache(be, cache);
    model.free(be);
}
