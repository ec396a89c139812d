//! The devices a measurement runs on, behind one trait: what the harness needs beyond the
//! Backend trait (synchronise, the peak of the memory ledger, per-op times, memory events), so
//! that every benchmark, profile and attention sweep is written once for the CPU and the GPU.

use crate::kernels::KernelTable;
use std::fmt;
use std::str::FromStr;
use std::time::Instant;
use tperf_core::backend::{Backend, BackendError};
use tperf_core::cost::hardware::{self, Hardware};
use tperf_core::error::{report, UnknownName};
use tperf_core::ledger::{Ledger, MemEvent};
use tperf_cpu::CpuBackend;
use tperf_cuda::{CudaBackend, CudaError, GraphStats};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda(usize),
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// Why a device cannot be used for what was asked.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error(transparent)]
    Unknown(#[from] UnknownName),
    #[error("device cuda:{asked} does not exist: {}", match count { 0 => "this machine has no CUDA device; use --device cpu (or auto, which falls back to the CPU)".to_string(), n => format!("this machine has {n} CUDA device(s), cuda:0 … cuda:{}; choose one of them, or --device cpu", n - 1) })]
    NoSuchGpu { asked: usize, count: usize },
    #[error("--device cuda:{asked} cannot be used: {why}; install the NVIDIA driver, or use --device cpu (or auto, which falls back to the CPU)")]
    GpuUnavailable { asked: usize, why: String },
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Cuda(#[from] CudaError),
    #[error(
        "'{0}' is not in tperf's hardware catalogue (tperf hw list): its roofline needs an entry"
    )]
    UnknownGpu(String),
    #[error("kernel tracing is for GPUs (the CPU's ops are the trace)")]
    NoKernelTrace,
}

impl FromStr for Device {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, UnknownName> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" => Ok(Device::Cpu),
            "cuda" | "gpu" => Ok(Device::Cuda(0)),
            d => match d.strip_prefix("cuda:").map(str::parse) {
                Some(Ok(i)) => Ok(Device::Cuda(i)),
                _ => Err(UnknownName::new("device", s, "cpu, cuda, cuda:N or auto")),
            },
        }
    }
}

/// What `auto` (or an explicit device) resolves to on this machine, with a note to print when
/// the choice was not the one asked for. `auto` falls back to the CPU when there is no GPU; an
/// explicit `cuda` / `cuda:N` that cannot be opened is an error saying what to do, since running
/// a GPU job on the CPU instead can take a hundred times as long.
pub fn resolve(asked: &str) -> Result<(Device, Option<String>), DeviceError> {
    let auto = asked.eq_ignore_ascii_case("auto");
    let wanted = if auto {
        Device::Cuda(0)
    } else {
        asked.parse()?
    };
    match wanted {
        Device::Cpu => Ok((Device::Cpu, None)),
        Device::Cuda(i) => match tperf_cuda::device_count() {
            Ok(n) if i < n => Ok((Device::Cuda(i), None)),
            Ok(0) if auto => Ok((
                Device::Cpu,
                Some("note: --device auto: no CUDA device found; running on the CPU".into()),
            )),
            Ok(n) => Err(DeviceError::NoSuchGpu { asked: i, count: n }),
            Err(why) if auto => Ok((
                Device::Cpu,
                Some(format!(
                    "note: --device auto: {}; running on the CPU",
                    report(&why)
                )),
            )),
            Err(why) => Err(DeviceError::GpuUnavailable {
                asked: i,
                why: report(&why),
            }),
        },
    }
}

/// The hardware entry a device's roofline comes from: the CPU's measured ceilings (measured
/// quickly once and cached, see [`cpu_hardware`]), or the catalogue entry matching the GPU's name
/// (an unknown GPU is an error naming `--hw`).
pub fn hardware_of(device: Device) -> Result<Hardware, DeviceError> {
    match device {
        Device::Cpu => Ok(cpu_hardware().hardware),
        Device::Cuda(i) => {
            let be = CudaBackend::new(i)?;
            let info = be.info();
            hardware::match_gpu_name(&info.name, info.total_bytes)
                .ok_or_else(|| DeviceError::UnknownGpu(info.name.clone()))
        }
    }
}

/// The CPU's roofline entry by default: its ceilings measured on this machine, read from the
/// cache file (`~/.cache/tperf/hardware/cpu-measured.json`) or, the first time, measured in
/// under a second and cached; the detected estimate only when `TPERF_CPU_CEILINGS=detected`.
pub fn cpu_hardware() -> crate::ceilings::CpuCeilings {
    use crate::ceilings::{self, CpuCeilingPolicy};
    let path = ceilings::cpu_cache_path();
    ceilings::cpu_ceilings(CpuCeilingPolicy::from_env(), path.as_deref(), |cpu| {
        let provenance = serde_json::json!({
            "tperf_version": env!("CARGO_PKG_VERSION"),
            "date_unix": std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            "how": "measured at start because no cached entry matched this CPU",
        });
        ceilings::quick_cpu_entry(cpu, provenance)
    })
}

/// One op's time as the device ran it, seconds; `start` is from the first timed op.
#[derive(Clone, Copy, Debug)]
pub struct OpTime {
    pub index: usize,
    pub start: f64,
    pub duration: f64,
}

/// A compute backend with the instruments measuring needs: synchronisation, the memory ledger's
/// peak, per-op timers, memory events and kernel traces.
pub trait Instrumented: Backend {
    /// Waits until every op issued so far has finished.
    fn sync(&mut self) -> Result<(), BackendError>;
    /// The tensors' bytes at their dtype widths: in use, peak, event log.
    fn ledger(&self) -> &Ledger;
    fn ledger_mut(&mut self) -> &mut Ledger;
    fn reset_peak(&mut self) {
        self.ledger_mut().reset_peak()
    }
    /// The largest bytes in use since the last reset, at the tensors' dtype widths.
    fn peak_bytes(&self) -> u64 {
        self.ledger().peak_bytes()
    }
    fn bytes_in_use(&self) -> u64 {
        self.ledger().total_bytes_in_use()
    }
    fn ops_run(&self) -> usize;
    /// Times every op from now on.
    fn start_op_timing(&mut self) -> Result<(), BackendError>;
    /// The ops timed since the last call (synchronising first).
    fn take_op_timing(&mut self) -> Result<Vec<OpTime>, BackendError>;
    fn start_memory_events(&mut self) {
        self.ledger_mut().enable_events()
    }
    fn take_memory_events(&mut self) -> Vec<MemEvent> {
        self.ledger_mut().take_events()
    }
    /// Starts tracing the device's kernels (CUPTI on a GPU); Err says why there is no trace.
    fn start_kernel_trace(&mut self) -> Result<(), DeviceError> {
        Err(DeviceError::NoKernelTrace)
    }
    /// Ends the trace after a synchronisation, with the kernel table of what ran. `first_op` is
    /// [`ops_run`](Self::ops_run) when the traced step began: the table numbers each op's
    /// kernels from it, by the op's position in the schedule.
    fn finish_kernel_trace(
        &mut self,
        _first_op: usize,
    ) -> Result<Option<KernelTable>, DeviceError> {
        Ok(None)
    }
    /// Opens a named NVTX range where the device has them (a no-op elsewhere, and on a GPU
    /// when no tool is attached); [`pop_range`](Self::pop_range) closes it.
    fn push_range(&mut self, _name: &str) {}
    fn pop_range(&mut self) {}
    /// Turns graph capture of repeated steps on or off where the device has it.
    fn set_step_graphs(&mut self, _on: bool) {}
    /// How repeated steps ran so far; None where the device has no graphs.
    fn step_graphs(&self) -> Option<GraphStats> {
        None
    }
}

impl Instrumented for CpuBackend {
    fn sync(&mut self) -> Result<(), BackendError> {
        Ok(())
    }
    fn ledger(&self) -> &Ledger {
        CpuBackend::ledger(self)
    }
    fn ledger_mut(&mut self) -> &mut Ledger {
        CpuBackend::ledger_mut(self)
    }
    fn ops_run(&self) -> usize {
        CpuBackend::ops_run(self)
    }
    fn start_op_timing(&mut self) -> Result<(), BackendError> {
        self.enable_timing();
        Ok(())
    }
    fn take_op_timing(&mut self) -> Result<Vec<OpTime>, BackendError> {
        let log = self.timing.take().unwrap_or_default();
        self.enable_timing();
        let origin: Option<Instant> = log.first().map(|l| l.1);
        Ok(log
            .into_iter()
            .map(|(index, start, dur)| OpTime {
                index,
                start: origin.map_or(0.0, |o| start.duration_since(o).as_secs_f64()),
                duration: dur.as_secs_f64(),
            })
            .collect())
    }
}

impl Instrumented for CudaBackend {
    fn sync(&mut self) -> Result<(), BackendError> {
        self.synchronize()
    }
    fn set_step_graphs(&mut self, on: bool) {
        self.set_graphs(on)
    }
    fn push_range(&mut self, name: &str) {
        CudaBackend::push_range(self, name)
    }
    fn pop_range(&mut self) {
        CudaBackend::pop_range(self)
    }
    fn step_graphs(&self) -> Option<GraphStats> {
        Some(self.graph_stats())
    }
    fn ledger(&self) -> &Ledger {
        CudaBackend::ledger(self)
    }
    fn ledger_mut(&mut self) -> &mut Ledger {
        CudaBackend::ledger_mut(self)
    }
    fn ops_run(&self) -> usize {
        CudaBackend::ops_run(self)
    }
    fn start_op_timing(&mut self) -> Result<(), BackendError> {
        self.enable_timing()
    }
    fn take_op_timing(&mut self) -> Result<Vec<OpTime>, BackendError> {
        Ok(self
            .take_timings()?
            .into_iter()
            .map(|(index, start_ms, dur_ms)| OpTime {
                index,
                start: start_ms * 1e-3,
                duration: dur_ms * 1e-3,
            })
            .collect())
    }
    fn start_kernel_trace(&mut self) -> Result<(), DeviceError> {
        self.synchronize()?;
        Ok(CudaBackend::start_kernel_trace(self)?)
    }
    fn finish_kernel_trace(&mut self, first_op: usize) -> Result<Option<KernelTable>, DeviceError> {
        self.synchronize()?;
        let (out, wall_start, wall_end) = CudaBackend::finish_kernel_trace(self)?;
        Ok(Some(KernelTable::of_trace(
            out, wall_start, wall_end, first_op,
        )))
    }
}
