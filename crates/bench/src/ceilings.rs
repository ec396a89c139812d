//! The machine's measured ceilings, beside its datasheet (or detected) peaks: on the CPU the
//! matmul rate through the CPU backend's own kernel and the memory bandwidth of a large copy; on
//! a GPU what `tperf_cuda::ceilings` measures. Both become the rows of one hardware-entry format.

use crate::stats::Summary;
use serde::Serialize;
use std::time::Instant;
use tperf_core::cost::hardware::Hardware;
use tperf_core::cost::measured::{Ceiling, HardwareEntry, Sets, Unit};
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

/// Bytes read plus bytes written per second by an in-place update, a ← a + s·b, over two
/// buffers of `bytes` each. Unlike a copy, every cache line it writes it has also read, so no
/// write-allocate traffic goes uncounted: this is the bandwidth the optimizer's and the
/// elementwise ops' read-modify-write loops reach (a copy's counted bytes miss the destination's
/// reads, so its figure is about a third low on write-allocate caches).
pub fn update_bandwidth(bytes: usize, repeats: usize) -> f64 {
    use rayon::prelude::*;
    let n = bytes / 4;
    let b = random(n, 4);
    let mut a = random(n, 5);
    let chunk = (n / rayon::current_num_threads().max(1)).max(1 << 16);
    let mut times = Vec::new();
    for _ in 0..repeats.max(1) + 1 {
        let t0 = Instant::now();
        a.par_chunks_mut(chunk)
            .zip(b.par_chunks(chunk))
            .for_each(|(a, b)| {
                for (x, y) in a.iter_mut().zip(b) {
                    *x += 1e-3 * y;
                }
            });
        times.push(t0.elapsed().as_secs_f64());
    }
    times.remove(0);
    let s = Summary::of(&times).expect("at least one repeat");
    std::hint::black_box(&a);
    3.0 * (n * 4) as f64 / s.median
}

/// The in-place update as a hardware-entry row (a candidate for the memory bandwidth).
pub fn update_row(bytes: usize, bytes_per_s: f64, cpu: &Hardware) -> Ceiling {
    Ceiling {
        name: format!("update a ← a + s·b, 2 × {} MiB", bytes >> 20),
        group: "dram".into(),
        unit: Unit::BytesPerS,
        value: bytes_per_s,
        datasheet: Some(cpu.mem_bw_bytes_per_s),
        sets: Some(Sets::MemBwBytesPerS),
        method:
            "parallel chunked in-place update, 2 reads + 1 write per element counted, wall clock"
                .into(),
    }
}

/// Where the CPU's ceilings come from when no `--hw` is given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuCeilingPolicy {
    /// The cached measurement, measured (quickly) and cached first when there is none for this
    /// CPU.
    Cached,
    /// Measure again and replace the cache.
    Remeasure,
    /// No measurement: the detected estimate (cores × clock × SIMD width; bandwidth guessed).
    Detected,
}

impl CpuCeilingPolicy {
    /// The environment variable that chooses the policy: `detected` (or `off`, `0`) disables
    /// measuring, `remeasure` measures again; anything else, or unset, is the cache.
    pub const ENV: &'static str = "TPERF_CPU_CEILINGS";

    pub fn from_env() -> CpuCeilingPolicy {
        match std::env::var(Self::ENV).as_deref().map(str::trim) {
            Ok("detected" | "off" | "0" | "no") => CpuCeilingPolicy::Detected,
            Ok("remeasure") => CpuCeilingPolicy::Remeasure,
            _ => CpuCeilingPolicy::Cached,
        }
    }
}

/// The quick measurement at start: matmuls of 256, 512 and 1024 and a 64 MiB copy and update,
/// three repeats each (under a second on a laptop core), as a hardware entry.
pub fn quick_cpu_entry(cpu: &Hardware, provenance: serde_json::Value) -> HardwareEntry {
    const BYTES: usize = 64 << 20;
    let points = matmul(&[256, 512, 1024], 3);
    let copy = copy_bandwidth(BYTES, 3);
    let update = update_bandwidth(BYTES, 3);
    let mut rows = cpu_rows(&points, copy, cpu);
    if let Some(last) = rows.last_mut() {
        last.name = format!("copy {} MiB", BYTES >> 20);
    }
    rows.push(update_row(BYTES, update, cpu));
    HardwareEntry::new(
        cpu.clone(),
        format!("cpu ({})", cpu.name),
        rows,
        vec![
            "a quick measurement taken at start (`tperf hw measure` measures at more sizes)".into(),
        ],
        provenance,
    )
}

/// The CPU's roofline entry and, where it was measured, the cache file it is kept in.
#[derive(Clone, Debug)]
pub struct CpuCeilings {
    pub hardware: Hardware,
    pub cache: Option<std::path::PathBuf>,
    /// Whether this call measured (rather than read the cache or took the estimate).
    pub measured_now: bool,
}

/// The CPU's ceilings under `policy`, cached at `cache` (None: nowhere to cache, so measured
/// each time). A cached entry is used only when it was measured against this very detected CPU
/// (same model, cores, clock and memory); otherwise it is measured again. The entry's name says
/// "measured on this machine" and its source where the cache is and how to turn measuring off.
pub fn cpu_ceilings(
    policy: CpuCeilingPolicy,
    cache: Option<&std::path::Path>,
    measure: impl FnOnce(&Hardware) -> HardwareEntry,
) -> CpuCeilings {
    let cpu = tperf_core::cost::hardware::detect_local_cpu();
    if policy == CpuCeilingPolicy::Detected {
        let mut hardware = cpu;
        hardware.source.push_str(&format!(
            "; not measured ({}=detected)",
            CpuCeilingPolicy::ENV
        ));
        return CpuCeilings {
            hardware,
            cache: None,
            measured_now: false,
        };
    }
    let cached = match (policy, cache) {
        (CpuCeilingPolicy::Cached, Some(path)) => HardwareEntry::load(path)
            .ok()
            .filter(|e| e.datasheet == cpu),
        _ => None,
    };
    let (entry, measured_now) = match cached {
        Some(e) => (e, false),
        None => {
            let e = measure(&cpu);
            if let Some(path) = cache {
                // A cache that cannot be written costs a re-measurement next time, nothing more.
                let _ = e.save(path);
            }
            (e, true)
        }
    };
    let mut hardware = entry.hardware;
    hardware.name = format!("{} (measured on this machine)", cpu.name);
    let place = cache.map_or("not cached".to_string(), |p| {
        format!("cached in {}", p.display())
    });
    hardware.source = format!(
        "measured on this machine ({place}; {}=detected for the estimate, =remeasure to measure again); the estimate was: {}",
        CpuCeilingPolicy::ENV,
        cpu.source
    );
    CpuCeilings {
        hardware,
        cache: cache.map(|p| p.to_path_buf()),
        measured_now,
    }
}

/// The default cache file of the CPU's measured ceilings.
pub fn cpu_cache_path() -> Option<std::path::PathBuf> {
    tperf_core::cost::measured::default_path("cpu-measured")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_entry(cpu: &Hardware, bw: f64) -> HardwareEntry {
        let rows = vec![Ceiling {
            name: "copy".into(),
            group: "dram".into(),
            unit: Unit::BytesPerS,
            value: bw,
            datasheet: Some(cpu.mem_bw_bytes_per_s),
            sets: Some(Sets::MemBwBytesPerS),
            method: "synthetic".into(),
        }];
        HardwareEntry::new(
            cpu.clone(),
            "cpu".into(),
            rows,
            vec![],
            serde_json::Value::Null,
        )
    }

    #[test]
    fn the_cpu_is_measured_once_then_read_from_the_cache_and_labelled() {
        let dir = std::env::temp_dir().join(format!("tperf-cpu-ceil-{}", std::process::id()));
        let path = dir.join("cpu-measured.json");
        let _ = std::fs::remove_file(&path);
        let mut calls = 0;
        let first = cpu_ceilings(CpuCeilingPolicy::Cached, Some(&path), |c| {
            calls += 1;
            fake_entry(c, 33e9)
        });
        assert!(first.measured_now && path.exists());
        assert_eq!(first.hardware.mem_bw_bytes_per_s, 33e9);
        assert!(first.hardware.name.contains("measured on this machine"));
        assert!(first.hardware.source.contains(CpuCeilingPolicy::ENV));
        let second = cpu_ceilings(CpuCeilingPolicy::Cached, Some(&path), |c| {
            calls += 1;
            fake_entry(c, 1.0)
        });
        assert_eq!(calls, 1, "the second call reads the cache");
        assert!(!second.measured_now);
        assert_eq!(second.hardware.mem_bw_bytes_per_s, 33e9);
        let again = cpu_ceilings(CpuCeilingPolicy::Remeasure, Some(&path), |c| {
            fake_entry(c, 44e9)
        });
        assert!(again.measured_now);
        assert_eq!(again.hardware.mem_bw_bytes_per_s, 44e9);
        // A cache measured on another CPU is not taken.
        let mut other = HardwareEntry::load(&path).unwrap();
        other.datasheet.name = "another CPU".into();
        other.save(&path).unwrap();
        let fresh = cpu_ceilings(CpuCeilingPolicy::Cached, Some(&path), |c| {
            fake_entry(c, 55e9)
        });
        assert!(fresh.measured_now);
        assert_eq!(fresh.hardware.mem_bw_bytes_per_s, 55e9);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn measuring_can_be_turned_off() {
        let c = cpu_ceilings(CpuCeilingPolicy::Detected, None, |_| {
            panic!("nothing is measured")
        });
        assert_eq!(
            c.hardware.basis,
            tperf_core::cost::hardware::Basis::Detected
        );
        assert!(c.hardware.source.contains("not measured"));
    }

    #[test]
    fn the_quick_measurement_is_a_measured_entry_with_both_bandwidths() {
        // Small buffers keep the test fast; the rows and the figures they set are what matter.
        let cpu = tperf_core::cost::hardware::detect_local_cpu();
        let update = update_bandwidth(4 << 20, 1);
        let copy = copy_bandwidth(4 << 20, 1);
        assert!(update > 0.0 && copy > 0.0);
        let mut rows = cpu_rows(&matmul(&[32], 1), copy, &cpu);
        rows.push(update_row(4 << 20, update, &cpu));
        let e = HardwareEntry::new(cpu, "cpu".into(), rows, vec![], serde_json::Value::Null);
        assert_eq!(e.hardware.mem_bw_bytes_per_s, copy.max(update));
        assert_eq!(
            e.hardware.basis,
            tperf_core::cost::hardware::Basis::Measured
        );
    }
}
