//! The seed's attention benchmark: naive against flash attention, forward and backward time and
//! the memory the forward leaves for the backward, predicted by the Meta backend (which also
//! says, before anything runs, when a size will not fit) and measured on the compute backend.

use crate::device::{Device, Instrumented};
use crate::model::BenchError;
use crate::stats::Summary;
use serde::Serialize;
use std::time::Instant;
use tperf_core::backend::{Backend, BackendError};
use tperf_core::cost::hardware::Hardware;
use tperf_core::cost::memory;
use tperf_core::cost::roofline;
use tperf_core::meta::MetaBackend;
use tperf_core::ops::Phase;
use tperf_core::rng::Rng;
use tperf_core::schedule::attention_only::AttentionOnly;
use tperf_cpu::CpuBackend;
use tperf_cuda::CudaBackend;

#[derive(Clone, Copy, Debug, Serialize)]
pub struct Predicted {
    pub forward_seconds: f64,
    pub backward_seconds: f64,
    pub forward_flops: u64,
    pub backward_flops: u64,
    /// Bytes the forward leaves allocated for the backward, inputs excluded.
    pub memory_before_backward_bytes: u64,
    /// The largest bytes in use at any point, inputs included.
    pub peak_bytes: u64,
}

/// The case as the compute backend ran it: forward and backward times over the timed steps, and
/// the memory, beside [`Predicted`].
#[derive(Clone, Copy, Debug, Serialize)]
pub struct AttentionMeasurement {
    pub forward: Summary,
    pub backward: Summary,
    pub memory_before_backward_bytes: u64,
    pub peak_bytes: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct AttentionRow {
    pub case: AttentionOnly,
    pub predicted: Predicted,
    /// None when the prediction says the case does not fit; `skipped` says why.
    pub measured: Option<AttentionMeasurement>,
    pub skipped: Option<String>,
}

pub fn predict(case: &AttentionOnly, hw: &Hardware) -> Result<Predicted, BackendError> {
    let mut be = MetaBackend::new();
    let (qkv, dout) = case.alloc_inputs(&mut be)?;
    let inputs = qkv.size_bytes() + dout.size_bytes();
    let kept = case.forward(&mut be, &qkv)?;
    let held: i64 = be.mem_events().iter().map(|e| e.delta_bytes).sum();
    case.backward(&mut be, &qkv, kept, &dout)?;
    be.free(qkv);
    be.free(dout);
    let (mut fs, mut bs, mut ff, mut bf) = (0.0, 0.0, 0, 0);
    for r in &be.ops {
        let dtype = r.call.inputs.first().map_or(case.dtype, |t| t.dtype);
        let t = roofline::op_time(r.cost, r.call.op.class(), dtype, hw).seconds;
        if r.call.phase == Phase::Forward {
            fs += t;
            ff += r.cost.flops;
        } else {
            bs += t;
            bf += r.cost.flops;
        }
    }
    Ok(Predicted {
        forward_seconds: fs,
        backward_seconds: bs,
        forward_flops: ff,
        backward_flops: bf,
        memory_before_backward_bytes: (held as u64).saturating_sub(inputs),
        peak_bytes: memory::summarize(be.mem_events()).peak_bytes,
    })
}

/// Host bytes the CPU needs: it stores low-precision activations in f32.
fn cpu_bytes(case: &AttentionOnly, bytes: u64) -> u64 {
    bytes * 4 / case.dtype.size_bytes().max(1)
}

pub fn measure_cpu(
    case: &AttentionOnly,
    warmup: usize,
    steps: usize,
    on_step: impl FnMut(),
) -> Result<AttentionMeasurement, BenchError> {
    measure_on(CpuBackend::new(), case, warmup, steps, on_step)
}

/// Forward and backward of `case` timed on `be`, each half followed by a synchronisation.
fn measure_on<B: Instrumented>(
    mut be: B,
    case: &AttentionOnly,
    warmup: usize,
    steps: usize,
    mut on_step: impl FnMut(),
) -> Result<AttentionMeasurement, BenchError> {
    if steps == 0 {
        return Err(BenchError::NoSteps);
    }
    let (qkv, dout) = case.alloc_inputs(&mut be)?;
    let mut rng = Rng::new(11);
    let mut random = |n: u64| -> Vec<f32> {
        (0..n)
            .map(|_| (rng.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0)
            .collect()
    };
    be.write_f32(&qkv, &random(qkv.numel()))?;
    be.write_f32(&dout, &random(dout.numel()))?;
    be.sync()?;
    let base = be.bytes_in_use();
    let (mut fwd, mut bwd) = (Vec::new(), Vec::new());
    let mut before_backward = 0;
    be.reset_peak();
    for i in 0..warmup + steps {
        let t0 = Instant::now();
        let kept = case.forward(&mut be, &qkv)?;
        be.sync()?;
        let t1 = Instant::now();
        before_backward = be.bytes_in_use() - base;
        case.backward(&mut be, &qkv, kept, &dout)?;
        be.sync()?;
        let t2 = Instant::now();
        if i >= warmup {
            fwd.push((t1 - t0).as_secs_f64());
            bwd.push((t2 - t1).as_secs_f64());
        }
        on_step();
    }
    let peak = be.peak_bytes();
    be.free(qkv);
    be.free(dout);
    Ok(AttentionMeasurement {
        forward: Summary::of(&fwd).ok_or(BenchError::NoSteps)?,
        backward: Summary::of(&bwd).ok_or(BenchError::NoSteps)?,
        memory_before_backward_bytes: before_backward,
        peak_bytes: peak,
    })
}

/// Predict, and measure unless the prediction says it will not fit in `hw`'s memory.
pub fn run_cpu(
    case: &AttentionOnly,
    hw: &Hardware,
    warmup: usize,
    steps: usize,
    on_step: impl FnMut(),
) -> Result<AttentionRow, BenchError> {
    run(Device::Cpu, case, hw, warmup, steps, on_step)
}

/// Predict, and measure on `device` unless the prediction says it will not fit in `hw`'s
/// memory (the CPU stores low-precision tensors as f32, so it needs more than the model's
/// bytes).
pub fn run(
    device: Device,
    case: &AttentionOnly,
    hw: &Hardware,
    warmup: usize,
    steps: usize,
    on_step: impl FnMut(),
) -> Result<AttentionRow, BenchError> {
    let predicted = predict(case, hw)?;
    let needed = match device {
        Device::Cpu => cpu_bytes(case, predicted.peak_bytes),
        Device::Cuda(_) => predicted.peak_bytes,
    };
    // What the device can give now (available RAM, free GPU memory), not only its size.
    let budget = crate::fit::budget(device);
    let (limit, source) = if budget.bytes < hw.memory_bytes {
        (budget.bytes, budget.source)
    } else {
        (hw.memory_bytes, format!("{}'s memory", hw.name))
    };
    if needed > limit {
        return Ok(AttentionRow {
            case: *case,
            predicted,
            measured: None,
            skipped: Some(format!(
                "out of memory: predicted peak {:.2} GiB, {source} is {:.2} GiB",
                needed as f64 / (1u64 << 30) as f64,
                limit as f64 / (1u64 << 30) as f64
            )),
        });
    }
    let measured = match device {
        Device::Cpu => measure_cpu(case, warmup, steps, on_step)?,
        Device::Cuda(i) => measure_on(CudaBackend::new(i)?, case, warmup, steps, on_step)?,
    };
    Ok(AttentionRow {
        case: *case,
        predicted,
        measured: Some(measured),
        skipped: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tperf_core::cost::hardware;
    use tperf_core::dtype::DType;
    use tperf_core::ops::attention::Attention;
    use tperf_core::schedule::AttentionKernel;

    #[test]
    fn measured_memory_matches_the_prediction_and_too_big_is_refused() {
        let hw = hardware::detect_local_cpu();
        for kernel in [AttentionKernel::Naive, AttentionKernel::Flash] {
            let shape = Attention {
                b: 2,
                h: 2,
                h_kv: 1,
                tq: 33,
                tk: 33,
                d: 16,
                causal: true,
                window: None,
                kv_cache: false,
            };
            let case = AttentionOnly {
                shape,
                kernel,
                dtype: DType::F32,
            };
            let row = run_cpu(&case, &hw, 1, 2, || {}).unwrap();
            let m = row.measured.unwrap();
            assert_eq!(
                m.memory_before_backward_bytes,
                row.predicted.memory_before_backward_bytes
            );
            assert_eq!(m.peak_bytes, row.predicted.peak_bytes);
        }
        // 64 sequences of 65,536 positions: the naive scores alone are 1 TiB.
        let shape = Attention {
            b: 64,
            h: 1,
            h_kv: 1,
            tq: 65536,
            tk: 65536,
            d: 16,
            causal: true,
            window: None,
            kv_cache: false,
        };
        let case = AttentionOnly {
            shape,
            kernel: AttentionKernel::Naive,
            dtype: DType::F32,
        };
        let row = run_cpu(&case, &hw, 1, 1, || {}).unwrap();
        assert!(row.measured.is_none());
        assert!(row.skipped.unwrap().contains("out of memory"));
    }
}
