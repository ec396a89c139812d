//! The engine on the CUDA backend (needs a device; where there is none, CI, each test says it
//! skipped): iterations of several decode steps — the later steps fed the step before's sampled
//! ids on the device, each step kind replayed from its own CUDA graph — give exactly the tokens
//! of one step an iteration, on a model whose heads take the tensor-core paths (d 64: the
//! paged prefill kernel for chunks of 16 rows or more, flash-decoding for decode rows).

use std::sync::mpsc::{self, Receiver};
use tperf_core::ops::sampling::Sampling;
use tperf_core::presets;
use tperf_core::schedule::{Options, Precision, Transformer};
use tperf_cuda::conformance::gpu_or_skip;
use tperf_engine::{EngineConfig, EngineCore, Event, Request};
use tperf_runtime::tokenizer::Tokenizer;

/// gpt2's shape shrunk: 4 heads of 64, 2 layers, a 512-token vocabulary (the byte tokenizer's
/// 256 and room), context 256.
fn config() -> tperf_core::config::ModelConfig {
    let mut cfg = presets::find("gpt2").expect("preset").config;
    cfg.vocab_size = 512;
    cfg.context = 256;
    cfg.d_model = 256;
    cfg.d_ff = 1024;
    cfg.n_layers = 2;
    let cfg = cfg.with_heads(4, 4).expect("heads");
    cfg.validate().expect("valid");
    cfg
}

fn prompt(seed: u32, len: usize) -> Vec<u32> {
    (0..len as u32)
        .map(|i| (seed * 37 + i * 11) % 256)
        .collect()
}

/// Every request's token ids from one engine run on the GPU.
fn run(decode_steps: usize, reqs: &[Request]) -> Option<Vec<Vec<u32>>> {
    let mut be = gpu_or_skip()?;
    be.set_graphs(true);
    be.set_paged_mma(true);
    let opts = Options {
        precision: Precision::Bf16,
        ..Options::default()
    };
    let model = Transformer::new(&mut be, &config(), opts, false).expect("model");
    model.init_weights(&mut be, 11).expect("init");
    let cfg = EngineConfig {
        max_num_seqs: 16,
        max_num_batched_tokens: 256,
        kv_blocks: 256,
        decode_steps,
        ..EngineConfig::default()
    };
    let mut e = EngineCore::new(be, model, Tokenizer::byte(), cfg).expect("engine");
    let rxs: Vec<Receiver<Event>> = reqs
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let (tx, rx) = mpsc::channel();
            e.add(i as u64, r.clone(), Box::new(tx)).expect("accepted");
            rx
        })
        .collect();
    let mut iterations = 0;
    while !e.is_idle() {
        e.step().expect("step");
        iterations += 1;
        assert!(iterations < 10_000, "the engine does not finish");
    }
    assert_eq!(e.blocks_used(), 0, "blocks left in use");
    let (mut be, model) = e.into_parts();
    model.free(&mut be);
    Some(
        rxs.iter()
            .map(|rx| {
                rx.try_iter()
                    .filter_map(|ev| match ev {
                        Event::Token { id, .. } => Some(id),
                        Event::Finished { .. } => None,
                    })
                    .collect()
            })
            .collect(),
    )
}

#[test]
fn several_decode_steps_an_iteration_give_one_steps_tokens_on_the_gpu() {
    let sampled = Sampling {
        temperature: 0.7,
        top_k: Some(50),
        top_p: Some(0.9),
        seed: 3,
    };
    // Prompts of 3 to 70 tokens (the longer ones prefilled on tensor cores), outputs ending at
    // different steps of an iteration, greedy and seeded.
    let reqs: Vec<Request> = (0..12)
        .map(|i| Request {
            ignore_eos: true,
            sampling: if i % 3 == 0 {
                sampled
            } else {
                Request::greedy(vec![], 1).sampling
            },
            ..Request::greedy(prompt(i, 3 + (i as usize * 17) % 68), 9 + 5 * i as usize)
        })
        .collect();
    let Some(one) = run(1, &reqs) else { return };
    let Some(four) = run(4, &reqs) else { return };
    for (i, (a, b)) in one.iter().zip(&four).enumerate() {
        assert_eq!(a.len(), reqs[i].max_tokens, "request {i}");
        assert_eq!(
            a, b,
            "request {i}: 4 decode steps an iteration changed its tokens"
        );
    }
}
