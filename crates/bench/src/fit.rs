//! Whether a step fits in the memory of the device it is about to run on, asked of the model
//! (the Meta backend's record of every allocation) before anything is allocated. Every command
//! that builds a model or a step calls [`check`], so a run that cannot fit is refused in
//! milliseconds with the prediction and what would fit, instead of growing toward the kernel's
//! OOM killer or aborting in the allocator.

use crate::device::Device;
use crate::model::cpu_bytes_needed;
use tperf_core::config::ModelConfig;
use tperf_core::cost::analysis::{self, Analysis, AnalysisError, Scenario};
use tperf_core::cost::hardware;
use tperf_core::schedule::{AttentionKernel, Precision, Recompute};

/// The memory a step may use on a device, and where the number came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Budget {
    pub bytes: u64,
    pub source: String,
}

#[derive(Debug, thiserror::Error)]
pub enum FitError {
    #[error(transparent)]
    Analysis(#[from] AnalysisError),
    /// The whole explanation: what was asked, the prediction, the budget, what would fit.
    #[error("{0}")]
    TooLarge(String),
}

/// `MemAvailable` from /proc/meminfo (the kernel's estimate of what can be allocated without
/// swapping), in bytes; its "kB" are KiB.
pub fn parse_mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line
        .trim_start_matches("MemAvailable:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

/// What `device` can give a step now: the host's available RAM on the CPU, the GPU's free
/// memory on a GPU (total where the free figure cannot be read).
pub fn budget(device: Device) -> Budget {
    match device {
        Device::Cpu => {
            let avail = std::fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|t| parse_mem_available(&t));
            match avail {
                Some(bytes) => Budget {
                    bytes,
                    source: "this machine's available RAM (MemAvailable)".into(),
                },
                None => {
                    let hw = hardware::detect_local_cpu();
                    Budget {
                        bytes: hw.memory_bytes,
                        source: format!("{}'s memory", hw.name),
                    }
                }
            }
        }
        Device::Cuda(i) => match tperf_cuda::CudaBackend::new(i) {
            Ok(be) => match be.free_bytes() {
                Ok(bytes) => Budget {
                    bytes,
                    source: format!("cuda:{i}'s free memory ({})", be.info().name),
                },
                Err(_) => Budget {
                    bytes: be.info().total_bytes,
                    source: format!("cuda:{i}'s memory ({})", be.info().name),
                },
            },
            // The command opening the device will report why it cannot; nothing to refuse here.
            Err(_) => Budget {
                bytes: u64::MAX,
                source: format!("cuda:{i}"),
            },
        },
    }
}

/// The bytes `device` needs for the predicted peak: the CPU backend stores bf16/f16 as f32.
pub fn needed(device: Device, a: &Analysis) -> u64 {
    match device {
        Device::Cpu => cpu_bytes_needed(a),
        Device::Cuda(_) => a.memory.peak_bytes,
    }
}

/// The model's prediction for `sc`, or [`FitError::TooLarge`] when it will not fit in
/// `device`'s memory now. The memory prediction does not depend on the hardware's speeds, so
/// this analyses on the local CPU's entry.
pub fn check(device: Device, cfg: &ModelConfig, sc: &Scenario) -> Result<Analysis, FitError> {
    check_within(device, cfg, sc, &budget(device))
}

/// [`check`] against a given budget (tests, and commands that read the budget once).
pub fn check_within(
    device: Device,
    cfg: &ModelConfig,
    sc: &Scenario,
    budget: &Budget,
) -> Result<Analysis, FitError> {
    let hw = hardware::detect_local_cpu();
    let a = analysis::analyze(cfg, sc, &hw)?;
    let need = needed(device, &a);
    if need <= budget.bytes {
        return Ok(a);
    }
    Err(FitError::TooLarge(message(device, cfg, sc, need, budget)))
}

fn gib(b: u64) -> String {
    format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
}

fn message(device: Device, cfg: &ModelConfig, sc: &Scenario, need: u64, budget: &Budget) -> String {
    let advice = advice(device, cfg, sc, budget.bytes);
    format!(
        "out of memory, predicted before allocating: {} {} batch {} × seq {} {} on {device} needs {} (the model's peak); {} is {}. {}",
        cfg.name,
        sc.workload.name(),
        sc.batch,
        sc.seq,
        sc.opts.precision.name(),
        gib(need),
        budget.source,
        gib(budget.bytes),
        if advice.is_empty() {
            "Nothing tried fits (smaller batches and sequences, and the memory-saving options not already on): use a smaller model or a machine with more memory.".to_string()
        } else {
            format!("What would fit: {}.", advice.join("; "))
        }
    )
}

/// The changes that would fit, each with its predicted need: the largest batch, the largest
/// sequence length, then each memory-saving option that is not already on.
pub fn advice(device: Device, cfg: &ModelConfig, sc: &Scenario, budget: u64) -> Vec<String> {
    let hw = hardware::detect_local_cpu();
    let need_of = |s: &Scenario| {
        analysis::analyze(cfg, s, &hw)
            .ok()
            .map(|a| needed(device, &a))
    };
    let fits = |s: &Scenario| need_of(s).is_some_and(|n| n <= budget);
    let mut out = Vec::new();
    // Memory grows with the batch and with the sequence length: the largest that fits is found
    // by bisection.
    let largest = |max: usize, with: &dyn Fn(usize) -> Scenario| -> Option<usize> {
        if max <= 1 || !fits(&with(1)) {
            return None;
        }
        let (mut lo, mut hi) = (1, max - 1);
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if fits(&with(mid)) {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        Some(lo)
    };
    let with_batch = |b| Scenario { batch: b, ..*sc };
    if let Some(b) = largest(sc.batch, &with_batch) {
        let n = need_of(&with_batch(b)).unwrap_or(0);
        out.push(format!("--batch {b} (the largest, {})", gib(n)));
    }
    let with_seq = |t| Scenario { seq: t, ..*sc };
    if let Some(t) = largest(sc.seq, &with_seq) {
        let n = need_of(&with_seq(t)).unwrap_or(0);
        out.push(format!("--seq {t} (the largest at this batch, {})", gib(n)));
    }
    let mut tries: Vec<(&str, Scenario)> = Vec::new();
    if sc.opts.attention != AttentionKernel::Flash {
        let mut s = *sc;
        s.opts.attention = AttentionKernel::Flash;
        tries.push(("--attention flash", s));
    }
    if sc.opts.precision == Precision::Fp32 && device != Device::Cpu {
        // On the CPU bf16 is stored as f32: it saves nothing there.
        let mut s = *sc;
        s.opts.precision = Precision::Bf16;
        tries.push(("--dtype bf16", s));
    }
    if sc.opts.recompute != Recompute::Full && sc.workload.name() != "forward" {
        let mut s = *sc;
        s.opts.recompute = Recompute::Full;
        tries.push(("--recompute full", s));
    }
    for (what, s) in tries {
        if let Some(n) = need_of(&s).filter(|&n| n <= budget) {
            out.push(format!("{what} ({})", gib(n)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tperf_core::cost::analysis::Workload;
    use tperf_core::schedule::Options;

    #[test]
    fn mem_available_is_read_in_bytes() {
        let text = "MemTotal:       24683656 kB\nMemFree:  100 kB\nMemAvailable:   12000000 kB\n";
        assert_eq!(parse_mem_available(text), Some(12_000_000 * 1024));
        assert_eq!(parse_mem_available("MemTotal: 5 kB\n"), None);
        assert_eq!(parse_mem_available("MemAvailable: lots kB\n"), None);
    }

    #[test]
    fn a_step_too_large_is_refused_with_the_largest_batch_that_fits() {
        let cfg = tperf_core::presets::find("small").unwrap().config;
        let sc = Scenario {
            workload: Workload::Train,
            batch: 64,
            seq: 128,
            opts: Options::default(),
        };
        let one = check_within(
            Device::Cpu,
            &cfg,
            &Scenario { batch: 1, ..sc },
            &Budget {
                bytes: u64::MAX,
                source: "test".into(),
            },
        )
        .unwrap();
        let budget = Budget {
            bytes: cpu_bytes_needed(&one) * 3,
            source: "the test's budget".into(),
        };
        let err = check_within(Device::Cpu, &cfg, &sc, &budget)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("out of memory, predicted before allocating"),
            "{err}"
        );
        assert!(err.contains("the test's budget"), "{err}");
        assert!(err.contains("--batch "), "{err}");
        let b: usize = err
            .split("--batch ")
            .nth(1)
            .and_then(|s| s.split(' ').next())
            .and_then(|s| s.parse().ok())
            .unwrap();
        assert!((1..64).contains(&b));
        assert!(check_within(Device::Cpu, &cfg, &Scenario { batch: b, ..sc }, &budget).is_ok());
        assert!(
            check_within(Device::Cpu, &cfg, &Scenario { batch: b + 1, ..sc }, &budget).is_err()
        );
        // Flash attention is already on: it is not suggested.
        assert!(!err.contains("--attention flash"), "{err}");
    }
}
