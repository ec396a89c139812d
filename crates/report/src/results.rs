//! The results document: everything a run produced, with its provenance, as one JSON file
//! (`results.json`) from which the HTML report is rendered and re-rendered.
//!
//! The report crate reads records; it does not depend on the model. So the analyses are kept as
//! the JSON `tperf model --json` emits (lossless: nothing is dropped when a results file is
//! re-rendered by a newer tperf) and read through the typed views below, which name only the
//! fields the report draws. The measurement side fills `bench`, `attention`, `precision` and `serving`
//! when it lands; until then they are absent and the report says so.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use thiserror::Error;

/// Bumped when a field changes meaning; readers refuse documents newer than they know.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Provenance {
    pub tperf_version: String,
    pub git_revision: String,
    /// What produced the numbers: "meta (analytic model)" until a backend measures.
    pub device: String,
    /// GPU driver version, or "none".
    pub driver: String,
    pub cpu: String,
    /// UTC, ISO 8601.
    pub date: String,
    pub date_unix: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Results {
    pub schema_version: u32,
    /// Names the run's folder: tperf-out/<run_id>/.
    pub run_id: String,
    pub provenance: Provenance,
    /// Each as `tperf model --json` prints it, with `memory.timeline`.
    pub analyses: Vec<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bench: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention: Option<serde_json::Value>,
    /// As `tperf precision --json` prints it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<serde_json::Value>,
    /// The student report's experiment as `tperf counters --json` prints it, or
    /// {"not_collected": why}.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counters: Option<serde_json::Value>,
    /// Serving runs in the shape `tperf bench serve` records under `serving` (the summary of
    /// `tperf_bench::serve::summary`), with the study's notes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving: Option<serde_json::Value>,
}

#[derive(Debug, Error)]
pub enum ResultsError {
    #[error("not a tperf results document: {0}")]
    Parse(#[from] serde_json::Error),
    #[error("results schema version {found} is newer than this tperf reads ({SCHEMA_VERSION}); re-render with a newer tperf")]
    TooNew { found: u32 },
    #[error("analysis {index} ({model}) lacks what the report draws: {source}")]
    Analysis {
        index: usize,
        model: String,
        source: serde_json::Error,
    },
}

impl Results {
    pub fn from_json(text: &str) -> Result<Results, ResultsError> {
        let r: Results = serde_json::from_str(text)?;
        if r.schema_version > SCHEMA_VERSION {
            return Err(ResultsError::TooNew {
                found: r.schema_version,
            });
        }
        Ok(r)
    }

    pub fn analysis_views(&self) -> Result<Vec<AnalysisView>, ResultsError> {
        self.analyses
            .iter()
            .enumerate()
            .map(|(index, v)| {
                AnalysisView::deserialize(v).map_err(|source| ResultsError::Analysis {
                    index,
                    model: v["model"].as_str().unwrap_or("?").to_string(),
                    source,
                })
            })
            .collect()
    }
}

/// What the report reads of one analysis.
#[derive(Clone, Debug, Deserialize)]
pub struct AnalysisView {
    pub model: String,
    #[serde(default)]
    pub scenario: serde_json::Value,
    pub hardware: HardwareView,
    pub ops: Vec<OpView>,
    pub memory: MemoryView,
    #[serde(default)]
    pub by_op: BTreeMap<String, TotalsView>,
    #[serde(default)]
    pub predicted: Option<PredictedView>,
}

impl AnalysisView {
    /// "train · batch 4 × seq 256 · bf16 · flash" from the scenario, as far as it is present.
    pub fn scenario_line(&self) -> String {
        let s = &self.scenario;
        let o = &s["opts"];
        let mut parts = Vec::new();
        if let Some(w) = s["workload"].as_str() {
            parts.push(w.to_string());
        }
        if let (Some(b), Some(t)) = (s["batch"].as_u64(), s["seq"].as_u64()) {
            parts.push(format!("batch {b} × seq {t}"));
        }
        for k in ["precision", "attention"] {
            if let Some(v) = o[k].as_str() {
                parts.push(v.to_string());
            }
        }
        if let Some(r) = o["recompute"].as_str() {
            parts.push(format!("recompute {r}"));
        }
        parts.join(" · ")
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct HardwareView {
    pub key: String,
    pub name: String,
    pub memory_bytes: u64,
    pub mem_bw_bytes_per_s: f64,
    pub peak_f32_flops: f64,
    pub peak_bf16_flops: f64,
    pub peak_f16_flops: f64,
}

#[derive(Clone, Debug, Deserialize)]
pub struct OpView {
    pub index: usize,
    pub name: String,
    pub label: String,
    pub layer: Option<usize>,
    pub phase: String,
    pub class: String,
    pub dtype: String,
    pub flops: u64,
    pub bytes: u64,
    pub intensity: f64,
    pub bound: String,
    /// The roofline prediction.
    pub seconds: f64,
    /// Filled by a measuring backend, joined by `index`; drawn beside the prediction.
    #[serde(default)]
    pub measured_seconds: Option<f64>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct MemoryView {
    pub peak_bytes: u64,
    pub peak_at_op: usize,
    #[serde(default)]
    pub timeline: Vec<TimelinePoint>,
}

/// Bytes in use by category at one op index (the highest reached between the previous op and
/// this one, so that transient peaks survive the thinning to one point per op).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TimelinePoint {
    pub op: usize,
    pub total_bytes: u64,
    pub by_category: BTreeMap<String, u64>,
}

#[derive(Clone, Copy, Debug, Deserialize)]
pub struct TotalsView {
    pub count: usize,
    pub flops: u64,
    pub bytes: u64,
    pub seconds: f64,
}

#[derive(Clone, Copy, Debug, Deserialize)]
pub struct PredictedView {
    pub step_seconds: f64,
    #[serde(default)]
    pub tokens_per_second: f64,
    #[serde(default)]
    pub mfu: f64,
}

/// The per-op table as CSV: one row per op, every field the report reads.
pub fn ops_csv(a: &AnalysisView) -> String {
    let mut t = crate::table::Table::new(&[
        "index",
        "phase",
        "layer",
        "op",
        "label",
        "class",
        "dtype",
        "flops",
        "bytes",
        "intensity",
        "bound",
        "predicted_seconds",
        "measured_seconds",
    ]);
    for o in &a.ops {
        t.row(vec![
            o.index.to_string(),
            o.phase.clone(),
            o.layer.map_or(String::new(), |l| l.to_string()),
            o.name.clone(),
            o.label.clone(),
            o.class.clone(),
            o.dtype.clone(),
            o.flops.to_string(),
            o.bytes.to_string(),
            format!("{}", o.intensity),
            o.bound.clone(),
            format!("{:e}", o.seconds),
            o.measured_seconds
                .map_or(String::new(), |s| format!("{s:e}")),
        ]);
    }
    t.to_csv()
}
