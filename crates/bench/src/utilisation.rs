//! The GPU's utilisation over a run, sampled through NVML on a background thread: utilisation %,
//! memory-controller utilisation, SM clock, memory used, power and temperature every 100 ms.
//!
//! NVML (libnvidia-ml) comes with the driver and is loaded at run time by `nvml-wrapper`, so
//! neither building tperf nor starting it needs the library; where it is absent (a CPU-only
//! machine, a container without the driver's libraries) `Sampler::start` says why and the run
//! goes on without a timeline. The caller prints that one line and stores [`Utilisation`]'s
//! "not collected" form, which the report shows as such.
//!
//! What the numbers mean (NVML's definitions): "GPU utilisation" is the percent of the sample
//! period during which at least one kernel ran, not how many SMs were busy, so a step of tiny
//! kernels can read 100%; "memory utilisation" is the percent of the period the memory
//! controller was reading or writing. Both are averaged by the driver over its own period
//! (about 1/6 s to 1 s depending on the GPU), so samples closer together repeat values.
//!
//! The NVML index is taken to be the CUDA ordinal. They agree when CUDA_DEVICE_ORDER=PCI_BUS_ID or
//! on one-GPU machines; CUDA_VISIBLE_DEVICES and the default fastest-first order can make them
//! differ on mixed multi-GPU hosts.

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The default sampling period.
pub const INTERVAL: Duration = Duration::from_millis(100);

/// One reading. A field the GPU or driver does not report is None.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds since sampling started.
    pub t_s: f64,
    pub gpu_util_pct: Option<u32>,
    pub mem_util_pct: Option<u32>,
    pub sm_clock_mhz: Option<u32>,
    pub mem_used_bytes: Option<u64>,
    pub power_w: Option<f64>,
    pub temp_c: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Timeline {
    /// The GPU as NVML names it.
    pub device: String,
    pub nvml_index: u32,
    pub interval_ms: u64,
    pub samples: Vec<Sample>,
}

/// What a run prints after it and stores beside the timeline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UtilSummary {
    pub samples: usize,
    pub duration_s: f64,
    pub mean_gpu_util_pct: Option<f64>,
    pub max_gpu_util_pct: Option<u32>,
    pub mean_mem_util_pct: Option<f64>,
    pub mean_sm_clock_mhz: Option<f64>,
    pub peak_mem_used_bytes: Option<u64>,
    pub mean_power_w: Option<f64>,
    /// ∫ power dt over the samples (trapezoids), joules.
    pub energy_j: Option<f64>,
    pub max_temp_c: Option<u32>,
}

fn mean(xs: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, n) = xs.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    (n > 0).then(|| sum / n as f64)
}

impl Timeline {
    /// None for an empty timeline: a mean of nothing is not zero.
    pub fn summary(&self) -> Option<UtilSummary> {
        let s = &self.samples;
        let (first, last) = (s.first()?, s.last()?);
        let power: Vec<(f64, f64)> = s
            .iter()
            .filter_map(|x| x.power_w.map(|p| (x.t_s, p)))
            .collect();
        // Trapezoids between consecutive power readings; one reading alone spans no time.
        let energy_j = (power.len() >= 2).then(|| {
            power
                .windows(2)
                .map(|w| (w[1].0 - w[0].0) * (w[0].1 + w[1].1) / 2.0)
                .sum()
        });
        Some(UtilSummary {
            samples: s.len(),
            duration_s: last.t_s - first.t_s,
            mean_gpu_util_pct: mean(s.iter().filter_map(|x| x.gpu_util_pct).map(f64::from)),
            max_gpu_util_pct: s.iter().filter_map(|x| x.gpu_util_pct).max(),
            mean_mem_util_pct: mean(s.iter().filter_map(|x| x.mem_util_pct).map(f64::from)),
            mean_sm_clock_mhz: mean(s.iter().filter_map(|x| x.sm_clock_mhz).map(f64::from)),
            peak_mem_used_bytes: s.iter().filter_map(|x| x.mem_used_bytes).max(),
            mean_power_w: mean(power.iter().map(|p| p.1)),
            energy_j,
            max_temp_c: s.iter().filter_map(|x| x.temp_c).max(),
        })
    }
}

impl UtilSummary {
    /// "GPU util mean 87% (max 100%), SM clock 1980 MHz, memory peak 12.3 GiB, power 512 W,
    /// energy 1.2 kJ over 2.4 s (24 samples)"; a figure NVML did not report reads "n/a".
    pub fn line(&self) -> String {
        let na = || "n/a".to_string();
        let pct = |v: Option<f64>| v.map_or_else(na, |v| format!("{v:.0}%"));
        let gib = |b: u64| format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64);
        let energy = |j: f64| {
            if j >= 1e3 {
                format!("{:.2} kJ", j / 1e3)
            } else {
                format!("{j:.1} J")
            }
        };
        format!(
            "GPU util mean {} (max {}), memory-controller util {}, SM clock {}, memory peak {}, \
             power mean {}, energy {} over {:.1} s ({} samples)",
            pct(self.mean_gpu_util_pct),
            self.max_gpu_util_pct.map_or_else(na, |v| format!("{v}%")),
            pct(self.mean_mem_util_pct),
            self.mean_sm_clock_mhz
                .map_or_else(na, |v| format!("{v:.0} MHz")),
            self.peak_mem_used_bytes.map_or_else(na, gib),
            self.mean_power_w.map_or_else(na, |v| format!("{v:.0} W")),
            self.energy_j.map_or_else(na, energy),
            self.duration_s,
            self.samples
        )
    }
}

/// What a run's JSON holds under "utilisation": the timeline and its summary, or why there is
/// none.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Utilisation {
    pub collected: bool,
    /// Why nothing was collected (no NVML, a CPU run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<UtilSummary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<Timeline>,
}

impl Utilisation {
    pub fn not_collected(why: impl Into<String>) -> Self {
        Utilisation {
            collected: false,
            why: Some(why.into()),
            summary: None,
            timeline: None,
        }
    }

    pub fn from_timeline(t: Timeline) -> Self {
        Utilisation {
            collected: true,
            why: None,
            summary: t.summary(),
            timeline: Some(t),
        }
    }

    /// The line printed after a run.
    pub fn line(&self) -> String {
        match (&self.summary, &self.why) {
            (Some(s), _) => format!("utilisation: {}", s.line()),
            (None, Some(why)) => format!("utilisation: not collected ({why})"),
            (None, None) => "utilisation: no samples (the run was shorter than one period)".into(),
        }
    }
}

/// Why sampling could not start.
#[derive(Debug, thiserror::Error)]
pub enum SamplerError {
    #[error("a CPU run: NVML samples NVIDIA GPUs")]
    CpuRun,
    #[error("NVML (libnvidia-ml.so.1, part of the NVIDIA driver) could not be loaded or initialised: {0}")]
    NoNvml(#[source] nvml_wrapper::error::NvmlError),
    #[error("NVML has no GPU at index {index}: {source}")]
    NoDevice {
        index: u32,
        #[source]
        source: nvml_wrapper::error::NvmlError,
    },
    #[error("the sampling thread could not be started: {0}")]
    Thread(#[source] std::io::Error),
    #[error("the sampling thread could not be started: it ended early")]
    ThreadEnded,
}

/// Starts NVML sampling of one GPU; see [`Sampler::start`].
pub struct Sampler;

/// A running sampler; [`stop`](SamplerHandle::stop) ends it and hands back the timeline.
pub struct SamplerHandle {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Timeline>,
}

impl Sampler {
    /// Samples GPU `index` every 100 ms on a background thread until the handle is stopped.
    /// Fails at once, without a thread left behind, when NVML or the GPU is not there.
    pub fn start(index: usize) -> Result<SamplerHandle, SamplerError> {
        Self::start_every(index, INTERVAL)
    }

    pub fn start_every(index: usize, interval: Duration) -> Result<SamplerHandle, SamplerError> {
        let index = index as u32;
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let flag = stop.clone();
        // NVML is opened on the sampling thread itself, so nothing of it crosses threads; the
        // thread reports whether it could open it before sampling.
        let thread = std::thread::Builder::new()
            .name("tperf-nvml".into())
            .spawn(move || sample_loop(index, interval, &flag, &ready_tx))
            .map_err(SamplerError::Thread)?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(SamplerHandle { stop, thread }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(SamplerError::ThreadEnded)
            }
        }
    }
}

impl SamplerHandle {
    /// Stops sampling (after at most one period) and returns what was sampled.
    pub fn stop(self) -> Timeline {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_else(|_| Timeline {
            device: "(the sampling thread panicked)".into(),
            nvml_index: 0,
            interval_ms: 0,
            samples: Vec::new(),
        })
    }
}

fn sample_loop(
    index: u32,
    interval: Duration,
    stop: &AtomicBool,
    ready: &mpsc::Sender<Result<(), SamplerError>>,
) -> Timeline {
    use nvml_wrapper::enum_wrappers::device::{Clock, TemperatureSensor};
    let mut timeline = Timeline {
        device: String::new(),
        nvml_index: index,
        interval_ms: interval.as_millis() as u64,
        samples: Vec::new(),
    };
    let nvml = match nvml_wrapper::Nvml::init() {
        Ok(n) => n,
        Err(e) => {
            let _ = ready.send(Err(SamplerError::NoNvml(e)));
            return timeline;
        }
    };
    let dev = match nvml.device_by_index(index) {
        Ok(d) => d,
        Err(e) => {
            let _ = ready.send(Err(SamplerError::NoDevice { index, source: e }));
            return timeline;
        }
    };
    timeline.device = dev.name().unwrap_or_else(|_| "unknown GPU".into());
    let _ = ready.send(Ok(()));
    let start = Instant::now();
    let mut next = start;
    loop {
        let util = dev.utilization_rates().ok();
        timeline.samples.push(Sample {
            t_s: start.elapsed().as_secs_f64(),
            gpu_util_pct: util.as_ref().map(|u| u.gpu),
            mem_util_pct: util.as_ref().map(|u| u.memory),
            sm_clock_mhz: dev.clock_info(Clock::SM).ok(),
            mem_used_bytes: dev.memory_info().ok().map(|m| m.used),
            power_w: dev.power_usage().ok().map(|mw| f64::from(mw) / 1e3),
            temp_c: dev.temperature(TemperatureSensor::Gpu).ok(),
        });
        if stop.load(Ordering::Relaxed) {
            return timeline;
        }
        // Fixed-rate: the next reading is one period after the last one was due, so the time the
        // readings take does not stretch the period; sleep in short slices to stop promptly.
        next += interval;
        while Instant::now() < next {
            if stop.load(Ordering::Relaxed) {
                return timeline;
            }
            std::thread::sleep((next - Instant::now()).min(Duration::from_millis(10)));
        }
    }
}

/// For a run on `device`: a started sampler, or why there is none (printed after the run, and
/// stored as the "not collected" record).
pub fn start_for(device: crate::device::Device) -> Result<SamplerHandle, SamplerError> {
    match device {
        crate::device::Device::Cpu => Err(SamplerError::CpuRun),
        crate::device::Device::Cuda(i) => Sampler::start(i),
    }
}

/// Ends what [`start_for`] began.
pub fn finish(started: Result<SamplerHandle, SamplerError>) -> Utilisation {
    match started {
        Ok(h) => Utilisation::from_timeline(h.stop()),
        Err(why) => Utilisation::not_collected(why.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t_s: f64, util: u32, clock: u32, mem: u64, power: f64) -> Sample {
        Sample {
            t_s,
            gpu_util_pct: Some(util),
            mem_util_pct: Some(util / 2),
            sm_clock_mhz: Some(clock),
            mem_used_bytes: Some(mem),
            power_w: Some(power),
            temp_c: Some(40 + util / 10),
        }
    }

    fn synthetic() -> Timeline {
        Timeline {
            device: "synthetic".into(),
            nvml_index: 0,
            interval_ms: 100,
            samples: vec![
                sample(0.0, 0, 1000, 1 << 30, 100.0),
                sample(0.1, 100, 2000, 3 << 30, 500.0),
                sample(0.2, 50, 1500, 2 << 30, 300.0),
            ],
        }
    }

    #[test]
    fn the_summary_of_a_synthetic_timeline() {
        let s = synthetic().summary().unwrap();
        assert_eq!(s.samples, 3);
        assert!((s.duration_s - 0.2).abs() < 1e-12);
        assert_eq!(s.mean_gpu_util_pct, Some(50.0));
        assert_eq!(s.max_gpu_util_pct, Some(100));
        assert_eq!(s.mean_mem_util_pct, Some(25.0));
        assert_eq!(s.mean_sm_clock_mhz, Some(1500.0));
        assert_eq!(s.peak_mem_used_bytes, Some(3 << 30));
        assert_eq!(s.mean_power_w, Some(300.0));
        // 0.1 s × (100 + 500)/2 + 0.1 s × (500 + 300)/2 = 30 + 40 J.
        assert!((s.energy_j.unwrap() - 70.0).abs() < 1e-9);
        assert_eq!(s.max_temp_c, Some(50));
        let line = s.line();
        for part in [
            "mean 50%", "max 100%", "1500 MHz", "3.00 GiB", "300 W", "70.0 J",
        ] {
            assert!(line.contains(part), "{part} in {line}");
        }
    }

    #[test]
    fn missing_readings_are_left_out_not_counted_as_zero() {
        let mut t = synthetic();
        t.samples[1].power_w = None;
        t.samples[1].gpu_util_pct = None;
        let s = t.summary().unwrap();
        assert_eq!(s.mean_gpu_util_pct, Some(25.0));
        assert_eq!(s.mean_power_w, Some(200.0));
        // One trapezoid over the two readings left, 0.2 s apart.
        assert!((s.energy_j.unwrap() - 40.0).abs() < 1e-9);
        for x in &mut t.samples {
            x.power_w = None;
        }
        let s = t.summary().unwrap();
        assert_eq!((s.mean_power_w, s.energy_j), (None, None));
        assert!(s.line().contains("power mean n/a"), "{}", s.line());
        t.samples.clear();
        assert_eq!(t.summary(), None);
    }

    #[test]
    fn utilisation_round_trips_through_json() {
        for u in [
            Utilisation::from_timeline(synthetic()),
            Utilisation::not_collected("no NVML"),
        ] {
            let text = serde_json::to_string(&u).unwrap();
            let back: Utilisation = serde_json::from_str(&text).unwrap();
            assert_eq!(back, u);
        }
        let v = serde_json::to_value(Utilisation::not_collected("no NVML")).unwrap();
        assert_eq!(v["collected"], false);
        assert_eq!(v["why"], "no NVML");
        assert!(v.get("timeline").is_none());
    }

    #[test]
    fn without_nvml_the_sampler_says_why_and_leaves_nothing_running() {
        match Sampler::start(0) {
            Ok(h) => {
                // A machine with a driver: sampling works, and stopping ends it.
                std::thread::sleep(Duration::from_millis(250));
                let t = h.stop();
                assert!(!t.samples.is_empty());
            }
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.contains("NVML"), "{msg}");
                let u = finish(Err(e));
                assert!(!u.collected);
                assert!(u.line().starts_with("utilisation: not collected (NVML"));
            }
        }
        let cpu = finish(start_for(crate::device::Device::Cpu));
        assert!(!cpu.collected);
        assert!(cpu.line().contains("a CPU run"), "{}", cpu.line());
    }
}
