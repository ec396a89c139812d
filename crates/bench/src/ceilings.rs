//! The machine's measured ceilings, beside its datasheet (or detected) peaks: the matmul rate
//! through the CPU backend's own kernel, and the memory bandwidth of a large copy.

use crate::stats::Summary;
use serde::Serialize;
use std::time::Instant;
use tperf_core::ops::matmul::Matmul;
use tperf_core::rng::Rng;

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
