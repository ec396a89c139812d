//! Hardware entries measured on this machine: what `tperf hw measure --save` writes and
//! `--hw measured:PATH` loads, so that the roofline can be held to the ceilings this machine
//! reached rather than (or beside) the datasheet's.
//!
//! One format for the CPU and the GPU: a list of [`Ceiling`] rows (every measurement, each with
//! its method and, where a datasheet quotes one, the datasheet figure), and the [`Hardware`] the
//! model uses, derived from the rows: each roofline figure is the best row that sets it, and a
//! figure nothing measured keeps the datasheet's value (the entry's notes say which).

use super::hardware::{Basis, DeviceKind, Hardware};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The `format` field of every entry this version writes and reads.
pub const FORMAT: &str = "tperf-hardware-entry/1";

/// The prefix that selects a measured entry wherever a hardware key is taken.
pub const PREFIX: &str = "measured:";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Unit {
    #[serde(rename = "FLOP/s")]
    FlopsPerS,
    #[serde(rename = "B/s")]
    BytesPerS,
    #[serde(rename = "s")]
    Seconds,
}

impl Unit {
    pub const fn symbol(self) -> &'static str {
        match self {
            Unit::FlopsPerS => "FLOP/s",
            Unit::BytesPerS => "B/s",
            Unit::Seconds => "s",
        }
    }
}

/// The roofline figure of [`Hardware`] a ceiling stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sets {
    PeakF32Flops,
    PeakBf16Flops,
    PeakF16Flops,
    MemBwBytesPerS,
}

impl Sets {
    pub const ALL: [Sets; 4] = [
        Sets::PeakF32Flops,
        Sets::PeakBf16Flops,
        Sets::PeakF16Flops,
        Sets::MemBwBytesPerS,
    ];

    pub const fn field(self) -> &'static str {
        match self {
            Sets::PeakF32Flops => "peak_f32_flops",
            Sets::PeakBf16Flops => "peak_bf16_flops",
            Sets::PeakF16Flops => "peak_f16_flops",
            Sets::MemBwBytesPerS => "mem_bw_bytes_per_s",
        }
    }

    pub fn get(self, hw: &Hardware) -> f64 {
        match self {
            Sets::PeakF32Flops => hw.peak_f32_flops,
            Sets::PeakBf16Flops => hw.peak_bf16_flops,
            Sets::PeakF16Flops => hw.peak_f16_flops,
            Sets::MemBwBytesPerS => hw.mem_bw_bytes_per_s,
        }
    }

    fn set(self, hw: &mut Hardware, v: f64) {
        match self {
            Sets::PeakF32Flops => hw.peak_f32_flops = v,
            Sets::PeakBf16Flops => hw.peak_bf16_flops = v,
            Sets::PeakF16Flops => hw.peak_f16_flops = v,
            Sets::MemBwBytesPerS => hw.mem_bw_bytes_per_s = v,
        }
    }
}

/// One measurement: the median of its repetitions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ceiling {
    /// What was measured, for tables: "gemm bf16 8192×8192×8192".
    pub name: String,
    /// The family it belongs to: "gemm", "dram", "l2", "launch", "host".
    pub group: String,
    pub unit: Unit,
    pub value: f64,
    /// The datasheet's figure for the same thing, where it quotes one.
    pub datasheet: Option<f64>,
    /// The roofline figure this row is a candidate for (the best candidate wins).
    pub sets: Option<Sets>,
    /// How it was timed and what was counted: "CUDA events, median of 10, L2 flushed".
    pub method: String,
}

impl Ceiling {
    /// Measured over datasheet, where both exist. For a time (launch latency) the ratio is still
    /// measured / datasheet, so above 1 means slower.
    pub fn ratio(&self) -> Option<f64> {
        self.datasheet.filter(|d| *d > 0.0).map(|d| self.value / d)
    }
}

/// A measured hardware entry, as saved.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HardwareEntry {
    pub format: String,
    /// The entry the model uses: the datasheet's (or detected) entry with each measured figure
    /// replaced by the best ceiling that sets it. `basis` is `measured`.
    pub hardware: Hardware,
    /// The entry the ceilings were measured against.
    pub datasheet: Hardware,
    /// The device as its driver names it, with its ordinal: "cuda:0 NVIDIA H200".
    pub device: String,
    pub ceilings: Vec<Ceiling>,
    /// What the entry does not measure, and anything else a reader should know.
    pub notes: Vec<String>,
    /// Version, commit, date, host: whatever the writer records about the run.
    #[serde(default)]
    pub provenance: serde_json::Value,
}

/// Why a measured entry could not be loaded or saved.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    #[error("cannot read the hardware entry {}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the hardware entry {}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a tperf hardware entry (JSON from `tperf hw measure --save`)", .path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{} has format `{found}`; this tperf reads `{FORMAT}` (measure again with `tperf hw measure --save`)", .path.display())]
    Format { path: PathBuf, found: String },
    #[error("{}: {why}", .path.display())]
    Invalid { path: PathBuf, why: String },
    #[error(
        "`{PREFIX}` needs a file: --hw {PREFIX}PATH (as written by `tperf hw measure --save`)"
    )]
    NoPath,
}

impl HardwareEntry {
    /// Builds the entry from `datasheet` and the ceilings measured against it. Each figure that
    /// some ceiling sets takes the best such ceiling; the others keep the datasheet's value, and a
    /// note says so. On a CPU the backend computes bf16 and fp16 in f32, so those follow the f32
    /// figure, as they do in the detected entry.
    pub fn new(
        datasheet: Hardware,
        device: String,
        ceilings: Vec<Ceiling>,
        mut notes: Vec<String>,
        provenance: serde_json::Value,
    ) -> Self {
        let mut hw = datasheet.clone();
        let mut kept = Vec::new();
        for field in Sets::ALL {
            let best = ceilings
                .iter()
                .filter(|c| c.sets == Some(field) && c.value.is_finite() && c.value > 0.0)
                .map(|c| c.value)
                .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
            match best {
                Some(v) => field.set(&mut hw, v),
                None if datasheet.kind == DeviceKind::Cpu
                    && matches!(field, Sets::PeakBf16Flops | Sets::PeakF16Flops) =>
                {
                    // `Sets::ALL` lists f32 first, so this is already the measured f32 figure.
                    let f32 = hw.peak_f32_flops;
                    field.set(&mut hw, f32)
                }
                None => kept.push(field.field()),
            }
        }
        if !kept.is_empty() {
            notes.push(format!(
                "not measured, {} value kept: {}",
                datasheet.basis.name(),
                kept.join(", ")
            ));
        }
        notes.push(format!(
            "not measured, {} value kept: link_bw_bytes_per_s (the device-to-device link)",
            datasheet.basis.name()
        ));
        hw.key = format!("{}-measured", datasheet.key);
        hw.name = format!("{} (measured)", datasheet.name);
        hw.basis = Basis::Measured;
        hw.source = format!(
            "measured on {device} by `tperf hw measure`; compared with: {}",
            datasheet.source
        );
        HardwareEntry {
            format: FORMAT.to_string(),
            hardware: hw,
            datasheet,
            device,
            ceilings,
            notes,
            provenance,
        }
    }

    /// Reads and checks an entry: the format, and every roofline figure positive and finite.
    pub fn load(path: &Path) -> Result<Self, EntryError> {
        let text = std::fs::read_to_string(path).map_err(|source| EntryError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// As [`load`](Self::load), from text already read; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, EntryError> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|source| EntryError::Parse {
                path: path.to_path_buf(),
                source,
            })?;
        let found = value.get("format").and_then(|f| f.as_str()).unwrap_or("");
        if found != FORMAT {
            return Err(EntryError::Format {
                path: path.to_path_buf(),
                found: if found.is_empty() {
                    "(none)".to_string()
                } else {
                    found.to_string()
                },
            });
        }
        let entry: HardwareEntry =
            serde_json::from_value(value).map_err(|source| EntryError::Parse {
                path: path.to_path_buf(),
                source,
            })?;
        let hw = &entry.hardware;
        for (field, v) in [
            ("mem_bw_bytes_per_s", hw.mem_bw_bytes_per_s),
            ("peak_f32_flops", hw.peak_f32_flops),
            ("peak_bf16_flops", hw.peak_bf16_flops),
            ("peak_f16_flops", hw.peak_f16_flops),
            ("link_bw_bytes_per_s", hw.link_bw_bytes_per_s),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(EntryError::Invalid {
                    path: path.to_path_buf(),
                    why: format!("hardware.{field} is {v}; every ceiling must be positive"),
                });
            }
        }
        Ok(entry)
    }

    /// Writes the entry as pretty JSON, creating the folder. Written to a temporary name and
    /// renamed, so an interrupted run leaves no half-written entry for the model to load.
    pub fn save(&self, path: &Path) -> Result<(), EntryError> {
        let write = |source| EntryError::Write {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(write)?;
        }
        let text = serde_json::to_string_pretty(self).expect("an entry serialises");
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, text + "\n").map_err(write)?;
        std::fs::rename(&tmp, path).map_err(write)
    }
}

/// The hardware of `--hw measured:PATH`: the entry's measured `hardware`.
pub fn load_key(key: &str) -> Option<Result<Hardware, EntryError>> {
    let path = key.trim().strip_prefix(PREFIX)?;
    if path.trim().is_empty() {
        return Some(Err(EntryError::NoPath));
    }
    Some(HardwareEntry::load(&expand_home(path.trim())).map(|e| e.hardware))
}

/// `~/x` as `$HOME/x`: the shell leaves a `~` after `measured:` alone, since it expands only a
/// leading one.
fn expand_home(path: &str) -> PathBuf {
    match (path.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(path),
    }
}

/// Where `hw measure` saves without `--save`: `$XDG_CACHE_HOME/tperf/hardware/<key>.json`, else
/// `~/.cache/tperf/hardware/<key>.json`; None when neither variable is set.
pub fn default_path(key: &str) -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(
        base.join("tperf")
            .join("hardware")
            .join(format!("{key}.json")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cost::hardware::find;

    fn ceiling(name: &str, value: f64, sets: Option<Sets>) -> Ceiling {
        Ceiling {
            name: name.to_string(),
            group: "gemm".to_string(),
            unit: Unit::FlopsPerS,
            value,
            datasheet: None,
            sets,
            method: "synthetic".to_string(),
        }
    }

    #[test]
    fn the_best_ceiling_sets_each_figure_and_the_rest_keep_the_datasheet() {
        let h200 = find("h200").unwrap();
        let e = HardwareEntry::new(
            h200.clone(),
            "cuda:0 test".into(),
            vec![
                ceiling("a", 600e12, Some(Sets::PeakBf16Flops)),
                ceiling("b", 700e12, Some(Sets::PeakBf16Flops)),
                ceiling("c", 4.0e12, Some(Sets::MemBwBytesPerS)),
                ceiling("tf32", 400e12, None),
            ],
            vec![],
            serde_json::Value::Null,
        );
        assert_eq!(e.hardware.peak_bf16_flops, 700e12);
        assert_eq!(e.hardware.mem_bw_bytes_per_s, 4.0e12);
        assert_eq!(e.hardware.peak_f16_flops, h200.peak_f16_flops);
        assert_eq!(e.hardware.basis, Basis::Measured);
        assert_eq!(e.hardware.key, "h200-measured");
        assert!(e.notes.iter().any(|n| n.contains("peak_f16_flops")));
    }

    #[test]
    fn a_cpu_entry_follows_f32_for_narrow_types() {
        let cpu = crate::cost::hardware::detect_local_cpu();
        let e = HardwareEntry::new(
            cpu,
            "cpu".into(),
            vec![ceiling("mm", 123e9, Some(Sets::PeakF32Flops))],
            vec![],
            serde_json::Value::Null,
        );
        assert_eq!(e.hardware.peak_bf16_flops, 123e9);
        assert_eq!(e.hardware.peak_f16_flops, 123e9);
    }

    #[test]
    fn ratios_need_a_datasheet_figure() {
        let mut c = ceiling("x", 500.0, None);
        assert_eq!(c.ratio(), None);
        c.datasheet = Some(1000.0);
        assert_eq!(c.ratio(), Some(0.5));
    }
}
