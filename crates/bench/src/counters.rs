//! Hardware counters per op, from Nsight Compute.
//!
//! `tperf profile --counters` runs tperf again as a child under `ncu` (the child runs the same
//! scenario: warm-up, then one step eagerly inside an NVTX range, see
//! [`crate::profile::counted_step`]); `ncu --csv --page raw` prints one row per kernel with the
//! metrics asked for and the NVTX ranges that were open when it was launched. The op ranges carry
//! their index (`matmul attn.qkv h0 #57`) and the step's range its first op's
//! (`tperf counted step first op #40`), so every kernel joins the schedule's op by position, the
//! same join the CUPTI kernel table makes. docs/counters.md says why ncu rather than CUPTI's
//! range profiler, and what each number means.

use crate::profile::COUNTED_STEP_RANGE;
use crate::tiles::{self, OpAtTiles};
use serde::Serialize;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use tperf_core::cost::analysis::{Analysis, OpRow};
use tperf_core::ops::{OpClass, Phase};

/// The counters tperf asks ncu for. The `sass_thread_inst_executed_op_*` counts are thread-level
/// instructions with the predicate on (what the student report summed), so an FFMA counts once
/// per thread that executed it.
pub mod metric {
    pub const DURATION: &str = "gpu__time_duration.sum";
    pub const FADD: &str = "smsp__sass_thread_inst_executed_op_fadd_pred_on.sum";
    pub const FMUL: &str = "smsp__sass_thread_inst_executed_op_fmul_pred_on.sum";
    pub const FFMA: &str = "smsp__sass_thread_inst_executed_op_ffma_pred_on.sum";
    pub const HADD: &str = "smsp__sass_thread_inst_executed_op_hadd_pred_on.sum";
    pub const HMUL: &str = "smsp__sass_thread_inst_executed_op_hmul_pred_on.sum";
    pub const HFMA: &str = "smsp__sass_thread_inst_executed_op_hfma_pred_on.sum";
    pub const DADD: &str = "smsp__sass_thread_inst_executed_op_dadd_pred_on.sum";
    pub const DMUL: &str = "smsp__sass_thread_inst_executed_op_dmul_pred_on.sum";
    pub const DFMA: &str = "smsp__sass_thread_inst_executed_op_dfma_pred_on.sum";
    pub const DRAM_READ: &str = "dram__bytes_read.sum";
    pub const DRAM_WRITE: &str = "dram__bytes_write.sum";
    pub const L2_BYTES: &str = "lts__t_bytes.sum";
    /// Achieved occupancy: active warps over the SM's maximum, while the SM was active.
    pub const OCCUPANCY: &str = "sm__warps_active.avg.pct_of_peak_sustained_active";
    pub const SM_THROUGHPUT: &str = "sm__throughput.avg.pct_of_peak_sustained_elapsed";
    pub const MEMORY_THROUGHPUT: &str =
        "gpu__compute_memory_throughput.avg.pct_of_peak_sustained_elapsed";
    /// Tensor-core math operations by source type, as Hopper (gh100) names them; each counts
    /// floating-point operations, a multiply-add being two: on the H200 a bf16 matmul of
    /// 64×768 by 768×2304 counts 226,492,416 = 2mnk exactly (tests/fixtures).
    pub const TENSOR: [&str; 3] = [
        "sm__ops_path_tensor_src_bf16_dst_fp32.sum",
        "sm__ops_path_tensor_src_fp16.sum",
        "sm__ops_path_tensor_src_tf32_dst_fp32.sum",
    ];
}

/// Which counters to ask for. Each extra counter can cost ncu another replay pass of every
/// kernel: the full set takes about 0.3 s a kernel on the H200, so the batch sweep asks for the
/// FLOP and byte counters only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricSet {
    /// Everything the per-op table shows.
    Full,
    /// FLOPs, DRAM and L2 bytes, duration (no occupancy or throughput).
    FlopsAndBytes,
}

/// The metrics of `set`, comma-separated, as `ncu --metrics` takes them.
pub fn metric_list(set: MetricSet) -> String {
    use metric::*;
    let mut all = vec![DURATION, FADD, FMUL, FFMA, DRAM_READ, DRAM_WRITE, L2_BYTES];
    all.extend(TENSOR);
    if set == MetricSet::Full {
        all.extend([
            HADD,
            HMUL,
            HFMA,
            DADD,
            DMUL,
            DFMA,
            OCCUPANCY,
            SM_THROUGHPUT,
            MEMORY_THROUGHPUT,
        ]);
    }
    all.join(",")
}

/// Why there are no counters (or not all of them). Each says exactly what happened and what would
/// make the counters readable; the run carries on without them.
#[derive(Debug, thiserror::Error)]
pub enum CountersError {
    #[error("hardware counters are read on CUDA devices only (this run is on the CPU)")]
    NotCuda,
    #[error("no `ncu` on the PATH (Nsight Compute; or set TPERF_NCU to its path)")]
    NoNcu,
    #[error("ncu is not allowed to read the GPU's performance counters (ERR_NVGPUCTRPERM): run as root, or load the driver with NVreg_RestrictProfilingToAdminUsers=0 (https://developer.nvidia.com/ERR_NVGPUCTRPERM)")]
    Permission,
    #[error("ncu cannot read counters on this GPU ({0}); virtualised GPUs (gVisor, many cloud vGPUs) expose none")]
    Unsupported(String),
    #[error("cannot start {}: {source}", path.display())]
    Spawn {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("ncu exited with {status} and printed no counters: {tail}")]
    Failed { status: String, tail: String },
    #[error("ncu's CSV cannot be read: {0}")]
    Csv(String),
}

/// One kernel as ncu counted it.
#[derive(Clone, Debug, Serialize)]
pub struct KernelCount {
    /// ncu's kernel ID (launch order among the profiled kernels).
    pub id: u64,
    pub name: String,
    /// The op that launched it, as its position in the counted step's schedule; None for a
    /// kernel outside every op range (a fill of a fresh tensor, an input copy).
    pub op: Option<usize>,
    /// The launch's grid and block, (x, y, z), where ncu printed them ("Grid Size", "Block
    /// Size"): the grid is how [`crate::tiles`] reads a matrix kernel's tiles and split-K.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grid: Option<[u64; 3]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block: Option<[u64; 3]>,
    /// Metric name → value in base units (bytes, seconds, counts, percent).
    pub metrics: BTreeMap<String, f64>,
}

impl KernelCount {
    pub(crate) fn get(&self, name: &str) -> f64 {
        self.metrics.get(name).copied().unwrap_or(0.0)
    }
}

/// What ncu printed: the kernels of the counted step, and its own messages.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Parsed {
    pub kernels: Vec<KernelCount>,
    /// ncu's `==PROF==`/`==WARNING==`/`==ERROR==` lines, in order.
    pub messages: Vec<String>,
}

/// Reads `ncu --csv --page raw --print-units base --nvtx` output: lines before the header (the
/// program's own output, ncu's messages) are skipped, the units row converts values to base
/// units, thousands separators are dropped. Rows outside the counted step's range are dropped
/// (ncu's NVTX filter already leaves them out; a run without the filter keeps them out here).
pub fn parse_csv(text: &str) -> Result<Parsed, CountersError> {
    let mut parsed = Parsed::default();
    let mut body = String::new();
    let mut in_table = false;
    for line in text.lines() {
        if line.starts_with("==") {
            parsed.messages.push(line.to_string());
        } else if in_table {
            body.push_str(line);
            body.push('\n');
        } else if line.starts_with("\"ID\",") {
            in_table = true;
            body.push_str(line);
            body.push('\n');
        }
    }
    if !in_table {
        return Ok(parsed);
    }
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(body.as_bytes());
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| CountersError::Csv(e.to_string()))?
        .iter()
        .map(str::to_string)
        .collect();
    let col = |name: &str| header.iter().position(|h| h == name);
    let id_col = col("ID").ok_or_else(|| CountersError::Csv("no ID column".into()))?;
    let name_col =
        col("Kernel Name").ok_or_else(|| CountersError::Csv("no \"Kernel Name\" column".into()))?;
    let (grid_col, block_col) = (col("Grid Size"), col("Block Size"));
    // ncu names its NVTX column after the thread and the range kinds it shows.
    let nvtx_cols: Vec<usize> = header
        .iter()
        .enumerate()
        .filter(|(_, h)| h.contains("Push/Pop") || h.contains("NVTX"))
        .map(|(i, _)| i)
        .collect();
    let metric_cols: Vec<usize> = header
        .iter()
        .enumerate()
        .filter(|(_, h)| is_metric_name(h))
        .map(|(i, _)| i)
        .collect();
    let mut scale: Vec<f64> = vec![1.0; header.len()];
    for record in reader.records() {
        let record = record.map_err(|e| CountersError::Csv(e.to_string()))?;
        let field = |i: usize| record.get(i).unwrap_or("");
        if field(id_col).is_empty() {
            // The units row.
            for &c in &metric_cols {
                scale[c] = unit_scale(field(c));
            }
            continue;
        }
        let id = parse_number(field(id_col))
            .ok_or_else(|| CountersError::Csv(format!("kernel ID '{}'", field(id_col))))?
            as u64;
        let ranges: String = nvtx_cols
            .iter()
            .map(|&c| field(c))
            .collect::<Vec<_>>()
            .join(" ");
        let Some(place) = place_in_step(&ranges) else {
            continue;
        };
        let metrics = metric_cols
            .iter()
            .filter_map(|&c| parse_number(field(c)).map(|v| (header[c].clone(), v * scale[c])))
            .collect();
        parsed.kernels.push(KernelCount {
            id,
            name: field(name_col).to_string(),
            op: place,
            grid: grid_col.and_then(|c| parse_dim3(field(c))),
            block: block_col.and_then(|c| parse_dim3(field(c))),
            metrics,
        });
    }
    Ok(parsed)
}

/// A metric column tperf reads: `unit__counter.sum` or a `pct_of_peak` ratio. `--page raw` also
/// prints every device attribute, launch statistic and the .avg/.min/.max of each counter; those
/// are left out.
fn is_metric_name(h: &str) -> bool {
    h.contains("__") && !h.contains(' ') && (h.ends_with(".sum") || h.contains(".pct_of_peak"))
}

/// The factor from a units-row entry to base units.
fn unit_scale(unit: &str) -> f64 {
    match unit.trim() {
        "nsecond" | "ns" => 1e-9,
        "usecond" | "us" => 1e-6,
        "msecond" | "ms" => 1e-3,
        "Kbyte" | "KB" => 1e3,
        "Mbyte" | "MB" => 1e6,
        "Gbyte" | "GB" => 1e9,
        "Kibyte" | "KiB" => 1024.0,
        "Mibyte" | "MiB" => 1024.0 * 1024.0,
        _ => 1.0,
    }
}

/// "1,234,567.5" → 1234567.5; "n/a" and empty → None.
fn parse_number(s: &str) -> Option<f64> {
    let clean: String = s.chars().filter(|c| *c != ',').collect();
    clean.trim().parse().ok()
}

/// "(18, 19, 1)" → [18, 19, 1]; anything else → None.
fn parse_dim3(s: &str) -> Option<[u64; 3]> {
    let inner = s.trim().strip_prefix('(')?.strip_suffix(')')?;
    let v: Vec<u64> = inner
        .split(',')
        .map(|p| p.trim().parse().ok())
        .collect::<Option<_>>()?;
    v.try_into().ok()
}

/// Where a kernel sits, from the NVTX ranges open at its launch (ncu writes the thread's stack
/// of push/pop ranges into one cell): None when it is outside the counted step; Some(None)
/// inside the step but outside every op; Some(Some(i)) in the op at position i of the step.
/// The step's range is found by its name whatever the order ncu lists the stack in; the op's
/// index is the last `#N` elsewhere in the cell (the innermost op range).
fn place_in_step(ranges: &str) -> Option<Option<usize>> {
    let marker = format!("{COUNTED_STEP_RANGE} first op #");
    let at = ranges.find(&marker)?;
    let digits: String = ranges[at + marker.len()..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    let first: usize = digits.parse().ok()?;
    let rest = format!(
        "{} {}",
        &ranges[..at],
        &ranges[at + marker.len() + digits.len()..]
    );
    Some(
        hash_numbers(&rest)
            .last()
            .and_then(|&op| op.checked_sub(first)),
    )
}

/// Every `#123` in the text, in order.
fn hash_numbers(text: &str) -> Vec<usize> {
    text.split('#')
        .skip(1)
        .filter_map(|s| {
            let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect()
}

/// Counters summed over a set of kernels (an op's, the step's).
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Counted {
    pub kernels: usize,
    /// fadd + fmul + 2·ffma (thread instructions).
    pub fp32_flops: f64,
    /// The same for half-precision instructions (fp16 and bf16 outside the tensor cores).
    pub f16_flops: f64,
    pub f64_flops: f64,
    /// Tensor-core floating-point operations.
    pub tensor_flops: f64,
    pub dram_read_bytes: f64,
    pub dram_write_bytes: f64,
    pub l2_bytes: f64,
    /// Kernel durations under the profiler (each kernel replayed alone, caches flushed).
    pub seconds: f64,
    /// Duration-weighted means of the per-kernel percentages.
    pub occupancy_pct: f64,
    pub sm_throughput_pct: f64,
    pub memory_throughput_pct: f64,
}

impl Counted {
    pub fn flops(&self) -> f64 {
        self.fp32_flops + self.f16_flops + self.f64_flops + self.tensor_flops
    }
    pub fn dram_bytes(&self) -> f64 {
        self.dram_read_bytes + self.dram_write_bytes
    }

    fn add(&mut self, k: &KernelCount) {
        use metric::*;
        let seconds = k.get(DURATION);
        let weighted = |mean: f64, total: f64, x: f64| {
            if total + seconds > 0.0 {
                (mean * total + x * seconds) / (total + seconds)
            } else {
                mean
            }
        };
        self.occupancy_pct = weighted(self.occupancy_pct, self.seconds, k.get(OCCUPANCY));
        self.sm_throughput_pct =
            weighted(self.sm_throughput_pct, self.seconds, k.get(SM_THROUGHPUT));
        self.memory_throughput_pct = weighted(
            self.memory_throughput_pct,
            self.seconds,
            k.get(MEMORY_THROUGHPUT),
        );
        self.kernels += 1;
        self.fp32_flops += k.get(FADD) + k.get(FMUL) + 2.0 * k.get(FFMA);
        self.f16_flops += k.get(HADD) + k.get(HMUL) + 2.0 * k.get(HFMA);
        self.f64_flops += k.get(DADD) + k.get(DMUL) + 2.0 * k.get(DFMA);
        self.tensor_flops += TENSOR.iter().map(|m| k.get(m)).sum::<f64>();
        self.dram_read_bytes += k.get(DRAM_READ);
        self.dram_write_bytes += k.get(DRAM_WRITE);
        self.l2_bytes += k.get(L2_BYTES);
        self.seconds += seconds;
    }

    pub fn of<'a>(kernels: impl IntoIterator<Item = &'a KernelCount>) -> Counted {
        let mut c = Counted::default();
        for k in kernels {
            c.add(k);
        }
        c
    }
}

/// One op's counters beside the model's count of the same op.
#[derive(Clone, Debug, Serialize)]
pub struct OpCounters {
    /// Position in the schedule (the index of the modelled row).
    pub index: usize,
    pub counted: Counted,
    pub model_flops: u64,
    /// The model's minimum bytes: every input read once, every output written once.
    pub model_bytes: u64,
    /// The model with each cuBLAS product at its kernel's tiles (2mnk replaced by what the
    /// kernel executes on whole tiles, [`crate::tiles`]); the plain model for an op that is no
    /// cuBLAS product or whose tiles were not read.
    pub model_at_tiles_flops: f64,
    /// How the op's products were read at their kernels' tiles, kernel by kernel.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tiles: Option<OpAtTiles>,
    /// Why a cuBLAS product's tiles were not read (it keeps the plain model).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tiles_not_read: Option<String>,
    pub verdict: Verdict,
}

/// What an op's counters say against the model, in a word.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// FLOPs within 5% (matrix products) and DRAM bytes within 0.8–1.25× of the minimum.
    Matches,
    /// A matrix-class backward op counting more FLOPs than modelled: work done again (flash
    /// attention's backward recomputes the scores and probabilities).
    Recompute,
    /// A matrix-class forward op counting more FLOPs than modelled: masked or padded work the
    /// kernel computes anyway (a causal tile on the diagonal computes all of it).
    ExtraFlops,
    /// A matrix-class op counting fewer FLOPs than modelled: work the kernel skips, or that the
    /// FP counters do not see.
    FewerFlops,
    /// A cuBLAS product counting more than 5% off 2mnk but within 2% of the model at its
    /// kernels' tiles: the padding of whole tiles, nothing else.
    PaddedTiles,
    /// More DRAM traffic than the minimum: operands read more than once, spills, partial writes.
    ExtraTraffic,
    /// Less DRAM traffic than the minimum: the outputs were still in the L2 (write-back) when
    /// the kernel ended, or an input was not read whole.
    L2Resident,
    /// Nothing was counted for the op (it launched no kernel, or the profiler stopped first).
    NoKernels,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Matches => "matches",
            Verdict::Recompute => "recompute",
            Verdict::ExtraFlops => "extra-flops",
            Verdict::FewerFlops => "fewer-flops",
            Verdict::PaddedTiles => "padded-tiles",
            Verdict::ExtraTraffic => "extra-traffic",
            Verdict::L2Resident => "l2-resident",
            Verdict::NoKernels => "no-kernels",
        }
    }

    /// For matrix products the FLOPs decide first: 2mnk is what the kernel must do. For the
    /// other ops the model's FLOPs are a convention (a few per element; the kernels' instruction
    /// counts differ by design, and exp or rsqrt are not counted at all), so bytes decide.
    /// `at_tiles`: the op's model at its kernels' tiles, where they were read.
    pub fn of(counted: &Counted, row: &OpRow, at_tiles: Option<f64>) -> Verdict {
        if counted.kernels == 0 {
            return Verdict::NoKernels;
        }
        if row.class == OpClass::Matmul {
            if let Some(r) = ratio(counted.flops(), row.flops as f64) {
                let padded = at_tiles
                    .and_then(|t| ratio(counted.flops(), t))
                    .is_some_and(|t| (t - 1.0).abs() <= 0.02);
                if !(0.95..=1.05).contains(&r) && padded {
                    return Verdict::PaddedTiles;
                }
                if r > 1.05 {
                    return if row.phase == Phase::Forward {
                        Verdict::ExtraFlops
                    } else {
                        Verdict::Recompute
                    };
                }
                if r < 0.95 {
                    return Verdict::FewerFlops;
                }
            }
        }
        match ratio(counted.dram_bytes(), row.bytes as f64) {
            Some(r) if r > 1.25 => Verdict::ExtraTraffic,
            Some(r) if r < 0.8 => Verdict::L2Resident,
            _ => Verdict::Matches,
        }
    }
}

/// counted / model, None where the model counts nothing.
pub fn ratio(counted: f64, model: f64) -> Option<f64> {
    (model > 0.0).then(|| counted / model)
}

/// The counted step: every op's counters beside its model, what ran outside every op, and the
/// whole step.
#[derive(Clone, Debug, Serialize)]
pub struct CounterReport {
    pub ops: Vec<OpCounters>,
    pub outside_ops: Counted,
    pub step: Counted,
    pub model_flops: u64,
    pub model_bytes: u64,
    /// The step's model with every cuBLAS product whose tiles were read at its kernels' tiles;
    /// the other ops at the plain model.
    pub model_at_tiles_flops: f64,
    /// Ops that are cuBLAS products: modelled at their tiles, and not (their tiles unread).
    pub ops_at_tiles: usize,
    pub ops_tiles_not_read: usize,
    pub kernels: Vec<KernelCount>,
    /// Why the set is incomplete, where it is (ncu failed half-way, rows that did not join).
    pub notes: Vec<String>,
}

impl CounterReport {
    /// Rolls the kernels up to the ops of `analysis` (the model of the same scenario, the
    /// schedule the child ran).
    pub fn join(analysis: &Analysis, parsed: Parsed) -> CounterReport {
        let n = analysis.rows.len();
        let mut by_op: Vec<Vec<&KernelCount>> = vec![vec![]; n];
        let mut outside = vec![];
        let mut unjoined = 0;
        for k in &parsed.kernels {
            match k.op {
                Some(i) if i < n => by_op[i].push(k),
                Some(_) => unjoined += 1,
                None => outside.push(k),
            }
        }
        let ops: Vec<OpCounters> = analysis
            .rows
            .iter()
            .zip(&by_op)
            .map(|(r, ks)| {
                let counted = Counted::of(ks.iter().copied());
                let read = match tiles::products_of(r) {
                    None => None,
                    Some(Err(why)) => Some(Err(why)),
                    Some(Ok(_)) if ks.is_empty() => Some(Err("no kernels counted".into())),
                    Some(Ok(products)) => Some(tiles::op_at_tiles(&products, ks)),
                };
                let (tiles, tiles_not_read) = match read {
                    None => (None, None),
                    Some(Ok(t)) => (Some(t), None),
                    Some(Err(why)) => (None, Some(why)),
                };
                let at_tiles = tiles
                    .as_ref()
                    .map(|t| r.flops as f64 - t.products_model_flops + t.products_at_tiles_flops);
                OpCounters {
                    index: r.index,
                    counted,
                    model_flops: r.flops,
                    model_bytes: r.bytes,
                    model_at_tiles_flops: at_tiles.unwrap_or(r.flops as f64),
                    verdict: Verdict::of(&counted, r, at_tiles),
                    tiles,
                    tiles_not_read,
                }
            })
            .collect();
        let mut notes: Vec<String> = parsed
            .messages
            .iter()
            // ncu's warning that the clocks are not locked is what tperf asked for.
            .filter(|m| m.starts_with("==ERROR==") || m.contains("WARN"))
            .filter(|m| !m.contains("unmodified GPU clocks"))
            .cloned()
            .collect();
        if unjoined > 0 {
            notes.push(format!(
                "{unjoined} kernel(s) carried an op index past the schedule's {n} ops: not joined"
            ));
        }
        CounterReport {
            outside_ops: Counted::of(outside.iter().copied()),
            step: Counted::of(&parsed.kernels),
            model_flops: analysis.rows.iter().map(|r| r.flops).sum(),
            model_bytes: analysis.rows.iter().map(|r| r.bytes).sum(),
            model_at_tiles_flops: ops.iter().map(|o| o.model_at_tiles_flops).sum(),
            ops_at_tiles: ops.iter().filter(|o| o.tiles.is_some()).count(),
            ops_tiles_not_read: ops.iter().filter(|o| o.tiles_not_read.is_some()).count(),
            ops,
            kernels: parsed.kernels,
            notes,
        }
    }
}

/// Where `ncu` is: `TPERF_NCU`, else the first `ncu` on the PATH.
pub fn find_ncu() -> Result<PathBuf, CountersError> {
    find_ncu_in(std::env::var_os("TPERF_NCU"), std::env::var_os("PATH"))
}

/// [`find_ncu`] with the two variables given.
pub fn find_ncu_in(
    tperf_ncu: Option<OsString>,
    path: Option<OsString>,
) -> Result<PathBuf, CountersError> {
    if let Some(p) = tperf_ncu {
        return Ok(PathBuf::from(p));
    }
    let path = path.ok_or(CountersError::NoNcu)?;
    std::env::split_paths(&path)
        .map(|d| d.join("ncu"))
        .find(|p| p.is_file())
        .ok_or(CountersError::NoNcu)
}

/// The arguments tperf gives ncu before the child's command line.
pub fn ncu_args(set: MetricSet) -> Vec<String> {
    [
        // Leave the clocks as they are: ncu's default locks them to base, which no real run
        // sees (and on a shared machine is not ours to change).
        "--clock-control",
        "none",
        "--replay-mode",
        "kernel",
        "--csv",
        "--page",
        "raw",
        "--print-units",
        "base",
        "--nvtx",
        "--nvtx-include",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        format!("regex:{COUNTED_STEP_RANGE}.*/"),
        "--metrics".into(),
        metric_list(set),
    ])
    .collect()
}

/// Runs `exe child_args` under `ncu` and reads its CSV. A run that failed but printed rows keeps
/// them (the report's notes say it failed); one that printed none says why, from ncu's output.
pub fn collect(
    ncu: &Path,
    exe: &Path,
    child_args: &[OsString],
    set: MetricSet,
) -> Result<Parsed, CountersError> {
    let out = Command::new(ncu)
        .args(ncu_args(set))
        .arg(exe)
        .args(child_args)
        .output()
        .map_err(|source| CountersError::Spawn {
            path: ncu.to_path_buf(),
            source,
        })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    interpret(
        &stdout,
        &stderr,
        out.status.success(),
        &out.status.to_string(),
    )
}

/// ncu's output to counters or the reason there are none.
pub fn interpret(
    stdout: &str,
    stderr: &str,
    success: bool,
    status: &str,
) -> Result<Parsed, CountersError> {
    let both = format!("{stdout}\n{stderr}");
    let mut parsed = parse_csv(stdout)?;
    if parsed.kernels.is_empty() {
        if both.contains("ERR_NVGPUCTRPERM") {
            return Err(CountersError::Permission);
        }
        for line in both.lines() {
            let l = line.to_ascii_lowercase();
            if l.contains("==error==")
                && (l.contains("not supported")
                    || l.contains("librarynotloaded")
                    || l.contains("failed to initialize"))
            {
                return Err(CountersError::Unsupported(line.trim().to_string()));
            }
        }
        let tail: String = both
            .lines()
            .filter(|l| !l.trim().is_empty())
            .rev()
            .take(6)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join(" | ");
        return Err(CountersError::Failed {
            status: status.to_string(),
            tail: if tail.is_empty() {
                "no output".into()
            } else {
                tail
            },
        });
    }
    if !success {
        parsed.messages.push(format!(
            "==ERROR== ncu exited with {status} after counting {} kernels: the table holds what it collected",
            parsed.kernels.len()
        ));
    }
    for line in stderr.lines().filter(|l| l.starts_with("==")) {
        parsed.messages.push(line.to_string());
    }
    Ok(parsed)
}

/// A straight line fitted by least squares: y ≈ intercept + slope·x, and the slope of the line
/// through the origin (y ≈ slope·x), which is what "measured = k × estimated" means.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct LineFit {
    pub slope: f64,
    pub intercept: f64,
    pub slope_through_origin: f64,
    /// The coefficient of determination of the line with an intercept.
    pub r2: f64,
}

/// None for fewer than two points or x all equal.
pub fn least_squares(points: &[(f64, f64)]) -> Option<LineFit> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let syy: f64 = points.iter().map(|p| (p.1 - my).powi(2)).sum();
    if sxx <= 0.0 {
        return None;
    }
    let slope = sxy / sxx;
    let x2: f64 = points.iter().map(|p| p.0 * p.0).sum();
    let xy: f64 = points.iter().map(|p| p.0 * p.1).sum();
    Some(LineFit {
        slope,
        intercept: my - slope * mx,
        slope_through_origin: xy / x2,
        r2: if syy > 0.0 {
            sxy * sxy / (sxx * syy)
        } else {
            1.0
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_joins_the_op_range_it_was_launched_in() {
        let r = "4015  \"<default domain>:tperf counted step first op #40:none\" \"<default domain>:matmul attn.qkv h0 #57:none\" ";
        assert_eq!(place_in_step(r), Some(Some(17)));
        // Innermost first, as a stack may be listed.
        let r = "\"matmul attn.qkv h0 #57:none\" \"tperf counted step first op #40:none\"";
        assert_eq!(place_in_step(r), Some(Some(17)));
        assert_eq!(place_in_step("tperf counted step first op #40"), Some(None));
        assert_eq!(place_in_step("matmul attn.qkv h0 #57"), None);
    }

    #[test]
    fn least_squares_recovers_a_line() {
        let pts: Vec<(f64, f64)> = (1..6).map(|i| (i as f64, 3.0 * i as f64 + 2.0)).collect();
        let f = least_squares(&pts).unwrap();
        assert!((f.slope - 3.0).abs() < 1e-12 && (f.intercept - 2.0).abs() < 1e-12);
        assert!((f.r2 - 1.0).abs() < 1e-12);
        // Through the origin: Σxy / Σx² = (3·55 + 2·15) / 55.
        assert!((f.slope_through_origin - (3.0 * 55.0 + 30.0) / 55.0).abs() < 1e-12);
        assert!(least_squares(&pts[..1]).is_none());
    }

    #[test]
    fn numbers_lose_their_separators_and_units_scale() {
        assert_eq!(parse_number("1,234,567.5"), Some(1234567.5));
        assert_eq!(parse_number("n/a"), None);
        assert_eq!(unit_scale("nsecond"), 1e-9);
        assert_eq!(unit_scale("byte"), 1.0);
        assert_eq!(parse_dim3("(18, 19, 1)"), Some([18, 19, 1]));
        assert_eq!(parse_dim3("(5,1,26)"), Some([5, 1, 26]));
        assert_eq!(parse_dim3("(5, 1)"), None);
        assert_eq!(parse_dim3(""), None);
    }
}
