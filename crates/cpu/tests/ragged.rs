//! Ragged batches over a paged KV cache on the CPU backend (see common/ragged.rs), and the
//! Meta backend's record of a ragged step: every allocation freed, the attention cost the sum of
//! the sequences' own costs.
//!
//! Tolerance: the paged kernel and the contiguous path (flash attention) reduce in different
//! orders, a few ulps per op: f32 logits agree to 1e-4 absolute (seen: 6e-8), bf16 to 1e-2.

#[path = "common/ragged.rs"]
mod ragged;

use ragged::{check_ragged_matches_alone, families, BLOCK};
use tperf_core::backend::Backend;
use tperf_core::meta::MetaBackend;
use tperf_core::ops::Op;
use tperf_core::schedule::ragged::{PagedStep, RaggedBatch, RaggedLayout, SeqSpan};
use tperf_core::schedule::{Options, Precision, Transformer};
use tperf_cpu::CpuBackend;

#[test]
fn a_ragged_batch_gives_each_sequence_its_own_logits() {
    for (name, cfg) in families() {
        let mut be = CpuBackend::new();
        check_ragged_matches_alone(&mut be, name, &cfg, Precision::Fp32, 1e-4);
        // bf16 storage: a one-ulp difference of an intermediate can flip a rounding; two bf16
        // ulps of a logit of order 1.
        check_ragged_matches_alone(&mut be, name, &cfg, Precision::Bf16, 1e-2);
    }
}

#[test]
fn a_bad_layout_is_an_error_that_names_the_sequence() {
    let batch = RaggedBatch {
        seqs: vec![SeqSpan { pos: 0, q_len: 20 }, SeqSpan { pos: 3, q_len: 0 }],
    };
    let short = RaggedLayout::new(&batch, &[vec![0], vec![1]], BLOCK, 4, 2, 100).unwrap_err();
    assert!(
        short.to_string().contains("sequence 0 needs 2 blocks"),
        "{short}"
    );
    let empty = RaggedLayout::new(&batch, &[vec![0, 1], vec![2]], BLOCK, 4, 2, 100).unwrap_err();
    assert!(
        empty.to_string().contains("sequence 1 brings no new token"),
        "{empty}"
    );
    let batch = RaggedBatch {
        seqs: vec![SeqSpan { pos: 0, q_len: 3 }],
    };
    let missing = RaggedLayout::new(&batch, &[vec![9]], BLOCK, 4, 2, 100).unwrap_err();
    assert!(missing.to_string().contains("block 9"), "{missing}");
    let two = RaggedLayout::new(&batch, &[vec![0], vec![1]], BLOCK, 4, 2, 100).unwrap_err();
    assert!(
        two.to_string().contains("2 block tables for 1 sequences"),
        "{two}"
    );
}

#[test]
fn the_meta_record_of_a_ragged_step_balances_and_costs_each_sequence() {
    let cfg = ragged::tiny("small", None);
    let mut be = MetaBackend::new();
    let model = Transformer::new(&mut be, &cfg, Options::default(), false).unwrap();
    let cache = model.alloc_paged_kv_cache(&mut be, 32, BLOCK).unwrap();
    let batch = RaggedBatch {
        seqs: vec![
            SeqSpan { pos: 0, q_len: 7 },
            SeqSpan { pos: 40, q_len: 1 },
            SeqSpan { pos: 16, q_len: 30 },
        ],
    };
    let inputs = model.alloc_ragged_inputs(&mut be, &batch, 4).unwrap();
    let in_use = |be: &MetaBackend| be.mem_events().iter().map(|e| e.delta_bytes).sum::<i64>();
    let held = in_use(&be);
    let logits = model
        .ragged_logits(
            &mut be,
            &PagedStep {
                batch: &batch,
                inputs: &inputs,
                cache: &cache,
            },
        )
        .unwrap();
    assert_eq!(logits.shape, vec![3, cfg.vocab_size]);
    be.free(logits);
    assert_eq!(in_use(&be), held, "the step frees what it allocates");
    assert!(be.errors.is_empty(), "{:?}", be.errors);
    let mut seen = 0;
    for rec in &be.ops {
        if let Op::PagedAttention(a) = &rec.call.op {
            let own: u64 = a.seqs.iter().map(|s| a.dense(s).pairs()).sum();
            assert_eq!(a.pairs(), own);
            // 7·8/2 causal pairs for the prompt, 41 keys for the decode row, and rows 16..46
            // of the chunk: Σ (p + 1) for p in 16..46, per head.
            let per_head = 28 + 41 + (17..=46).sum::<u64>();
            assert_eq!(a.pairs(), per_head * cfg.n_heads as u64);
            seen += 1;
        }
    }
    assert_eq!(seen, cfg.n_layers, "one paged attention per layer");
}
