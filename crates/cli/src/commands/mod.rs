pub mod attention;
pub mod bench;
pub mod calibrate;
pub mod conformance;
pub mod counters;
pub mod generate;
pub mod hw;
pub mod launch;
pub mod model;
pub mod plan;
pub mod precision;
pub mod profile;
pub mod report;
pub mod scaling;
pub mod serve;
pub mod serve_bench;
pub mod study;
mod study_serving;
pub mod train;

use anyhow::Result;
use tperf_bench::device::Device;
use tperf_core::cost::hardware::{self, Hardware};
use tperf_core::schedule::{AttentionKernel, Options, Precision, Recompute};

/// The options every analysing command shares.
#[derive(clap::Args, Clone, Debug)]
pub struct ScheduleArgs {
    /// Precision policy: fp32, or bf16/fp16 compute with fp32 master weights.
    #[arg(long, default_value = "fp32", value_parser = parse_precision)]
    pub dtype: Precision,
    /// Attention kernel: naive (materialises T×T scores) or flash.
    #[arg(long, default_value = "flash", value_parser = parse_attention)]
    pub attention: AttentionKernel,
    /// Activation recomputation: none, selective or full.
    #[arg(long, default_value = "none", value_parser = parse_recompute)]
    pub recompute: Recompute,
    /// Run every op unfused (no residual+norm, matmul epilogue or in-place loss gradient fusion).
    #[arg(long)]
    pub no_fuse: bool,
    /// Decode without a KV cache (each step recomputes the whole prefix).
    #[arg(long)]
    pub no_kv_cache: bool,
}

impl ScheduleArgs {
    pub fn options(&self) -> Options {
        Options {
            precision: self.dtype,
            attention: self.attention,
            kv_cache: !self.no_kv_cache,
            recompute: self.recompute,
            fused: !self.no_fuse,
            data_parallel: None,
            grad_accum: 1,
        }
    }
}

/// A run that Ctrl-C stopped after saving: the binary exits with 130 (the shell's code for
/// SIGINT) rather than 2, so a script can tell "interrupted, resumable" from "failed".
#[derive(Debug)]
pub struct Interrupted {
    pub step: u64,
    pub checkpoint: Option<std::path::PathBuf>,
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "interrupted after step {}", self.step)?;
        match &self.checkpoint {
            Some(p) => write!(
                f,
                "; the checkpoint {} holds it: rerun with --resume {} to continue",
                p.display(),
                p.display()
            ),
            None => write!(f, "; nothing was saved (no --checkpoint)"),
        }
    }
}

impl std::error::Error for Interrupted {}

/// A command that a signal stopped after keeping what it had finished (the message says what
/// and where): exits with 130 like [`Interrupted`].
#[derive(Debug)]
pub struct Stopped(pub String);

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Stopped {}

fn parse_precision(s: &str) -> Result<Precision, tperf_core::error::UnknownName> {
    s.parse()
}
fn parse_attention(s: &str) -> Result<AttentionKernel, tperf_core::error::UnknownName> {
    s.parse()
}
fn parse_recompute(s: &str) -> Result<Recompute, tperf_core::error::UnknownName> {
    s.parse()
}

/// A hardware key from the command line: a catalogue key or alias, `cpu`, or `measured:PATH`
/// (an entry saved by `tperf hw measure`, whose measured ceilings the roofline then uses).
pub fn find_hw(key: &str) -> Result<Hardware> {
    match tperf_core::cost::measured::load_key(key) {
        Some(loaded) => Ok(loaded?),
        None => Ok(hardware::find(key)?),
    }
}

/// One element of a comma-separated list of positive integers: "1,2,4,8".
pub fn parse_positive(s: &str) -> Result<usize, String> {
    let x = s.trim();
    x.parse::<usize>()
        .ok()
        .filter(|&v| v > 0)
        .ok_or_else(|| format!("'{x}' is not a positive integer (lists look like 1,2,4,8)"))
}

/// A count that may be written 3e11 or 300000000000 or 300B/300G/300M/300k.
pub fn parse_count(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let (num, scale) = match t.chars().last() {
        Some('T' | 't') => (&t[..t.len() - 1], 1e12),
        Some('B' | 'b' | 'G' | 'g') => (&t[..t.len() - 1], 1e9),
        Some('M' | 'm') => (&t[..t.len() - 1], 1e6),
        Some('k' | 'K') => (&t[..t.len() - 1], 1e3),
        _ => (t, 1.0),
    };
    num.parse::<f64>()
        .ok()
        .map(|v| v * scale)
        .filter(|v| v.is_finite() && *v > 0.0)
        .ok_or_else(|| format!("'{s}' is not a positive number (e.g. 3e11, 300B, 2.5T)"))
}

/// Bytes written with a binary unit: 40GiB, 512MiB, 80G (taken as GiB).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let units = [
        ("tib", 1u64 << 40),
        ("gib", 1 << 30),
        ("mib", 1 << 20),
        ("kib", 1 << 10),
        ("tb", 1 << 40),
        ("gb", 1 << 30),
        ("mb", 1 << 20),
        ("t", 1 << 40),
        ("g", 1 << 30),
        ("m", 1 << 20),
        ("b", 1),
    ];
    for (suffix, scale) in units {
        if let Some(num) = t.strip_suffix(suffix) {
            return num
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v > 0.0)
                .map(|v| (v * scale as f64) as u64)
                .ok_or_else(|| format!("'{s}' is not a size (e.g. 40GiB, 512MiB)"));
        }
    }
    Err(format!("'{s}' has no unit: write e.g. 40GiB or 512MiB"))
}

/// The device a command runs on: `auto` takes the first GPU where there is one and the CPU
/// otherwise, saying so; an explicit `cuda:N` that cannot be opened falls back to the CPU with a
/// note when the machine has no GPU at all, and is an error when it names a GPU that is not there.
pub fn resolve_device(asked: &str) -> Result<Device> {
    let (device, note) = tperf_bench::device::resolve(asked)?;
    if let Some(note) = note {
        eprintln!("{note}");
    }
    Ok(device)
}

/// The model's prediction for `sc`, refusing it — before anything is allocated — when it will
/// not fit in `device`'s memory now (host RAM on the CPU, free memory on a GPU), with the
/// prediction and what would fit. Every command that allocates a model or a step calls this.
pub fn check_fits(
    device: Device,
    cfg: &tperf_core::config::ModelConfig,
    sc: &tperf_core::cost::analysis::Scenario,
) -> Result<tperf_core::cost::analysis::Analysis> {
    Ok(tperf_bench::fit::check(device, cfg, sc)?)
}

/// The hardware entry whose roofline a measurement on `device` is compared with: `--hw` when
/// given, else the detected CPU or the catalogue entry matching the GPU's name.
pub fn hardware_for(
    device: Device,
    hw: Option<&str>,
) -> Result<tperf_core::cost::hardware::Hardware> {
    match hw {
        Some(key) => find_hw(key),
        None if device == Device::Cpu => {
            let c = tperf_bench::device::cpu_hardware();
            if c.measured_now {
                eprintln!(
                    "measured this CPU's ceilings for the roofline (matmul {}, memory {}){}",
                    tperf_report::units::si(c.hardware.peak_f32_flops, "FLOP/s"),
                    tperf_report::units::si(c.hardware.mem_bw_bytes_per_s, "B/s"),
                    c.cache
                        .as_ref()
                        .map_or(String::new(), |p| format!("; cached in {}", p.display()))
                );
            }
            Ok(c.hardware)
        }
        None => tperf_bench::device::hardware_of(device).map_err(|e| {
            anyhow::anyhow!(
                "{}; pass --hw with one of `tperf hw list`",
                tperf_core::error::report(&e)
            )
        }),
    }
}

/// The calibration of `--calibration FILE`, if given, with a note when it was measured against
/// another entry than `hw` (its curves map from its own entry's roofline, which it recomputes).
pub fn load_calibration(
    path: Option<&std::path::Path>,
    hw: &Hardware,
) -> Result<Option<tperf_core::cost::calibration::Calibration>> {
    let Some(path) = path else {
        return Ok(None);
    };
    let cal = tperf_core::cost::calibration::Calibration::load(path)?;
    // "h200-measured" is the H200 measured: the same machine as "h200" for this purpose.
    let machine = |k: &str| k.trim_end_matches("-measured").to_string();
    if machine(&cal.hardware.key) != machine(&hw.key) {
        eprintln!(
            "note: {} was calibrated on {} ({}); its curves predict that machine's kernels, not {}'s",
            path.display(),
            cal.device,
            cal.hardware.key,
            hw.key
        );
    }
    Ok(Some(cal))
}

/// Checks, before any work, that `path` can be written as a file: it is not a folder, its
/// folder exists (created if needed) and takes a new file, and an existing file there is
/// writable. `flag` names the option in the error.
pub fn check_output_file(path: &std::path::Path, flag: &str) -> Result<()> {
    use anyhow::{bail, Context};
    if path.is_dir() {
        bail!(
            "{flag} {} is a folder: give a file path, e.g. {}",
            path.display(),
            path.join(if flag == "--log" {
                "run.csv"
            } else {
                "run.safetensors"
            })
            .display()
        );
    }
    if path.file_name().is_none() {
        bail!("{flag} '{}' is not a file path", path.display());
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    std::fs::create_dir_all(dir)
        .with_context(|| format!("{flag} {}: cannot create {}", path.display(), dir.display()))?;
    let probe = dir.join(format!(".tperf-write-test-{}", std::process::id()));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
        }
        Err(e) => bail!(
            "{flag} {}: cannot write in {}: {e}",
            path.display(),
            dir.display()
        ),
    }
    if path.exists() {
        std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .with_context(|| format!("{flag} {}: cannot write to it", path.display()))?;
    }
    Ok(())
}
