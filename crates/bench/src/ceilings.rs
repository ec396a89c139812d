//! The machine's measured ceilings, beside its datasheet (or detected) peaks: on the CPU the
//! matmul rate through the CPU backend's own kernel and the memory bandwidth of a large copy; on
//! a GPU what `tperf_cuda::ceilings` measures. Both become the rows of one hardware-entry format.

use crate::stats::Summary;
use serde::Serialize;
use std::time::Instant;
use tperf_core::cost::hardware::Hardware;
use tperf_core::cost::measured::{Ceiling, Sets, Unit};
use tperf_core::ops::matmul::Matmul;
use tperf_core::rng::Rng;
use tperf_cuda::ceilings::{GemmType, GpuCeilings};

#[derive(Clone, Debug, Serialize)]
pub struct MatmulPoint {
    pub n: usize,
    /// 2n³ over the median time.
    pub flops_per_s: f64,
    pub seconds: Summary,
}

fn random(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..len)
        .map(|_| (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
        .collect()
}

/// n×n×n matmuls (x·Wᵀ, the layout of every linear layer) on random data.
pub fn matmul(sizes: &[usize], repeats: usize) -> Vec<MatmulPoint> {
    sizes
        .iter()
        .map(|&n| {
            let x = random(n * n, 1);
            let w = random(n * n, 2);
            let mut y = vec![0f32; n * n];
            let mm = Matmul::new(n, n, n, false);
            tperf_cpu::kernels::matmul::forward(&mm, &x, &w, None, &mut y, None);
            let times: Vec<f64> = (0..repeats.max(1))
                .map(|_| {
                    let t0 = Instant::now();
                    tperf_cpu::kernels::matmul::forward(&mm, &x, &w, None, &mut y, None);
                    t0.elapsed().as_secs_f64()
                })
                .collect();
            let s = Summary::of(&times).expect("at least one repeat");
            MatmulPoint {
                n,
                flops_per_s: 2.0 * (n as f64).powi(3) / s.median,
                seconds: s,
            }
        })
        .collect()
}

/// Bytes read plus bytes written per second copying a buffer of `bytes` (parallel over chunks,
/// as a bandwidth-bound kernel would run).
pub fn copy_bandwidth(bytes: usize, repeats: usize) -> f64 {
    use rayon::prelude::*;
    let n = bytes / 4;
    let src = random(n, 3);
    let mut dst = vec![0f32; n];
    let chunk = (n / rayon::current_num_threads().max(1)).max(1 << 16);
    let mut times = Vec::new();
    for _ in 0..repeats.max(1) + 1 {
        let t0 = Instant::now();
        dst.par_chunks_mut(chunk)
            .zip(src.par_chunks(chunk))
            .for_each(|(d, s)| d.copy_from_slice(s));
        times.push(t0.elapsed().as_secs_f64());
    }
    times.remove(0); // the first pass faults the destination's pages in
    let s = Summary::of(&times).expect("at least one repeat");
    std::hint::black_box(&dst);
    2.0 * (n * 4) as f64 / s.median
}

/// The CPU's measurements as hardware-entry rows (the format `--hw measured:PATH` reads, common
/// to the CPU and the GPU): the best matmul rate stands for the f32 peak, the copy for the
/// memory bandwidth.
pub fn cpu_rows(points: &[MatmulPoint], copy_bytes_per_s: f64, cpu: &Hardware) -> Vec<Ceiling> {
    let mut rows: Vec<Ceiling> = points
        .iter()
        .map(|p| Ceiling {
            name: format!("matmul f32 {0}×{0}×{0}", p.n),
            group: "gemm".into(),
            unit: Unit::FlopsPerS,
            value: p.flops_per_s,
            datasheet: Some(cpu.peak_f32_flops),
            sets: Some(Sets::PeakF32Flops),
            method: format!(
                "the CPU backend's matmul kernel, wall clock, median of {}",
                p.seconds.n
            ),
        })
        .collect();
    rows.push(Ceiling {
        name: "copy 256 MiB".into(),
        group: "dram".into(),
        unit: Unit::BytesPerS,
        value: copy_bytes_per_s,
        datasheet: Some(cpu.mem_bw_bytes_per_s),
        sets: Some(Sets::MemBwBytesPerS),
        method: "parallel chunked copy, read + written bytes counted, wall clock".into(),
    });
    rows
}

/// The datasheet's dense TF32 rate where the catalogue's entry implies one: Ampere, Hopper and
/// Blackwell data-centre parts quote TF32 at exactly half their bf16 rate. None elsewhere (the
/// consumer and inference parts differ), and the row then shows no ratio.
fn datasheet_tf32(hw: &Hardware) -> Option<f64> {
    let k = hw.key.as_str();
    ["a100", "h100", "h200", "b200"]
        .iter()
        .any(|p| k.starts_with(p))
        .then_some(hw.peak_bf16_flops / 2.0)
}

/// The GPU's measurements as hardware-entry rows, each beside `datasheet`'s figure where it
/// quotes one.
pub fn gpu_rows(c: &GpuCeilings, datasheet: &Hardware) -> Vec<Ceiling> {
    let gemm_method = format!(
        "cuBLASLt x·Wᵀ (heuristic's first algorithm), CUDA events, median of {} after {} warm-up, \
         L2 flushed ({} MiB memset) before each",
        c.repeats,
        c.warmup,
        tperf_cuda::ceilings::FLUSH_BYTES >> 20
    );
    let mut rows: Vec<Ceiling> = c
        .gemm
        .iter()
        .map(|p| {
            let (sheet, sets) = match p.dtype {
                GemmType::Bf16 => (Some(datasheet.peak_bf16_flops), Some(Sets::PeakBf16Flops)),
                GemmType::F16 => (Some(datasheet.peak_f16_flops), Some(Sets::PeakF16Flops)),
                GemmType::Tf32 => (datasheet_tf32(datasheet), None),
                GemmType::F32 => (Some(datasheet.peak_f32_flops), Some(Sets::PeakF32Flops)),
            };
            Ceiling {
                name: format!("gemm {} {}×{}×{}", p.dtype.name(), p.m, p.n, p.k),
                group: "gemm".into(),
                unit: Unit::FlopsPerS,
                value: p.flops_per_s,
                datasheet: sheet,
                sets,
                method: gemm_method.clone(),
            }
        })
        .collect();
    for r in &c.dram {
        rows.push(Ceiling {
            name: format!("dram {}", r.name),
            group: "dram".into(),
            unit: Unit::BytesPerS,
            value: r.bytes_per_s,
            datasheet: Some(datasheet.mem_bw_bytes_per_s),
            sets: Some(Sets::MemBwBytesPerS),
            method: r.method.clone(),
        });
    }
    rows.push(Ceiling {
        name: "l2 read".into(),
        group: "l2".into(),
        unit: Unit::BytesPerS,
        value: c.l2.bytes_per_s,
        datasheet: None,
        sets: None,
        method: c.l2.method.clone(),
    });
    for r in &c.host {
        rows.push(Ceiling {
            name: format!("host {}", r.name),
            group: "host".into(),
            unit: Unit::BytesPerS,
            value: r.bytes_per_s,
            datasheet: None,
            sets: None,
            method: r.method.clone(),
        });
    }
    let l = &c.launch;
    let n = l.launches;
    for (name, value, method) in [
        (
            "launch eager, per kernel (GPU)",
            l.eager_s,
            format!("{n} empty kernels back to back, CUDA events around the batch / {n}"),
        ),
        (
            "launch eager, per call (host)",
            l.eager_host_s,
            format!("wall clock of those {n} cuLaunchKernel calls / {n}"),
        ),
        (
            "launch + synchronise (round trip)",
            l.roundtrip_s,
            "one empty kernel then cuStreamSynchronize, wall clock".to_string(),
        ),
        (
            "launch in a graph, per node",
            l.graph_node_s,
            format!("a captured graph of {n} empty kernels, CUDA events / {n}"),
        ),
    ] {
        rows.push(Ceiling {
            name: name.into(),
            group: "launch".into(),
            unit: Unit::Seconds,
            value,
            datasheet: None,
            sets: None,
            method: format!("{method}; median of {}", c.repeats),
        });
    }
    rows
}
