//! Test doubles shared by the integration tests: a backend that keeps every buffer as a host
//! vector of f32 and computes nothing, and a tiny model config. A test double, not a product:
//! the real compute backends live in their own crates.
#![allow(dead_code)]

use std::collections::HashMap;
use tperf_core::backend::{Backend, BackendError, OpCall};
use tperf_core::config::ModelConfig;
use tperf_core::schedule::{Options, Precision, Transformer};
use tperf_core::tensor::{Tensor, TensorId, TensorSpec};

#[derive(Default)]
pub struct HostBackend {
    bufs: HashMap<TensorId, Vec<f32>>,
    next_id: u32,
    /// Fail every `read_f32` after this many have succeeded (to make a save fail midway).
    pub fail_reads_after: Option<usize>,
    reads: usize,
    /// Count of successful `write_f32` calls, to check that a failed load wrote nothing.
    pub writes: usize,
}

impl HostBackend {
    pub fn new() -> Self {
        Self::default()
    }

    fn buf(&mut self, t: &Tensor) -> Result<&mut Vec<f32>, BackendError> {
        self.bufs
            .get_mut(&t.id)
            .ok_or_else(|| BackendError::Device {
                backend: "host",
                message: format!("tensor {} is not allocated", t.id.0),
            })
    }
}

impl Backend for HostBackend {
    fn name(&self) -> String {
        "host".into()
    }

    fn alloc(&mut self, spec: TensorSpec) -> Result<Tensor, BackendError> {
        let id = TensorId(self.next_id);
        self.next_id += 1;
        self.bufs.insert(id, vec![0.0; spec.numel() as usize]);
        Ok(Tensor {
            id,
            shape: spec.shape,
            dtype: spec.dtype,
            category: spec.category,
        })
    }

    fn free(&mut self, tensor: Tensor) {
        self.bufs.remove(&tensor.id);
    }

    fn exec(&mut self, _call: OpCall) -> Result<(), BackendError> {
        Ok(())
    }

    fn write_f32(&mut self, tensor: &Tensor, data: &[f32]) -> Result<(), BackendError> {
        let buf = self.buf(tensor)?;
        if buf.len() != data.len() {
            return Err(BackendError::Device {
                backend: "host",
                message: format!("{} values for {} slots", data.len(), buf.len()),
            });
        }
        buf.copy_from_slice(data);
        self.writes += 1;
        Ok(())
    }

    fn write_i32(&mut self, tensor: &Tensor, data: &[i32]) -> Result<(), BackendError> {
        let as_f32: Vec<f32> = data.iter().map(|&x| x as f32).collect();
        self.write_f32(tensor, &as_f32)
    }

    fn read_f32(&mut self, tensor: &Tensor) -> Result<Vec<f32>, BackendError> {
        if let Some(n) = self.fail_reads_after {
            if self.reads >= n {
                return Err(BackendError::Device {
                    backend: "host",
                    message: "injected read failure".into(),
                });
            }
        }
        self.reads += 1;
        Ok(self.buf(tensor)?.clone())
    }
}

/// GPT-2-shaped and tiny: every kind of parameter (learned positions, norm biases, linear
/// biases, tied output layer) in a few hundred floats.
pub fn tiny_config() -> ModelConfig {
    // GPT-2's architecture shrunk to a byte vocabulary and a handful of parameters.
    let mut cfg = tperf_core::presets::find("gpt2-124m")
        .expect("preset")
        .config;
    cfg.name = "tiny".into();
    cfg.vocab_size = 256;
    cfg.context = 16;
    cfg.d_model = 8;
    cfg.d_ff = 16;
    cfg.n_layers = 2;
    cfg.with_heads(2, 2).expect("2 heads divide 8")
}

pub fn model(
    be: &mut HostBackend,
    cfg: &ModelConfig,
    precision: Precision,
    training: bool,
) -> Transformer {
    let opts = Options {
        precision,
        ..Options::default()
    };
    Transformer::new(be, cfg, opts, training).expect("the host backend never runs out of memory")
}

/// Gives every master weight, and each moment when present, distinct values derived from
/// `salt`, so a round trip that mixed up two tensors or two elements would show.
pub fn fill(be: &mut HostBackend, model: &Transformer, salt: f32) {
    for (i, p) in model.weights.all_params().into_iter().enumerate() {
        let n = p.numel() as usize;
        let values = |k: f32| -> Vec<f32> {
            (0..n)
                .map(|j| salt + k + i as f32 * 0.01 + j as f32 * 1e-5)
                .collect()
        };
        be.write_f32(&p.master, &values(0.0)).unwrap();
        if let Some(m) = &p.m {
            be.write_f32(m, &values(1.0)).unwrap();
        }
        if let Some(v) = &p.v {
            be.write_f32(v, &values(2.0)).unwrap();
        }
    }
}

/// Every master, copy and moment, in parameter order, as the backend holds them.
pub fn snapshot(be: &mut HostBackend, model: &Transformer) -> Vec<(String, Vec<f32>)> {
    let mut out = Vec::new();
    for p in model.weights.all_params() {
        let tensors = [
            ("", Some(&p.master)),
            (".copy", p.copy.as_ref()),
            (".adam_m", p.m.as_ref()),
            (".adam_v", p.v.as_ref()),
        ];
        for (suffix, t) in tensors {
            if let Some(t) = t {
                out.push((format!("{}{suffix}", p.name), be.read_f32(t).unwrap()));
            }
        }
    }
    out
}
