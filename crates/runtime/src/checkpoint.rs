//! Checkpoints in safetensors: every parameter's master weights as f32 under its schedule name
//! (`wte`, `h0.attn.qkv.w`, …), AdamW's moments when training as `<param>.adam_m` and
//! `<param>.adam_v`, and in the string map `__metadata__`: the format, tperf version, model
//! config (JSON), precision, step, seed, data-loader position (JSON), tokenizer, and a CRC-32
//! per tensor.
//!
//! Why the checksums: safetensors validates its header and sizes but not the data, so a flipped
//! bit in a weight would load silently. CRC-32 (crc32fast, several GB/s) costs a fraction of
//! the time of reading the file.
//!
//! Saving is atomic: the file is written beside its destination under a temporary name,
//! fsynced, renamed over the destination (atomic on POSIX file systems), and the directory
//! fsynced, so a crash or a failed save leaves either the previous checkpoint or the new one,
//! never a mixture. Values are read from the backend and checked before the file is created:
//! a save that fails (a backend error, a NaN in the weights) leaves the previous checkpoint as
//! it was.
//!
//! ZeRO-1 (`tperf train --zero1`): a rank holds AdamW's moments, and current f32 masters, only
//! for its shard of each parameter. A checkpoint is still the whole state, as one device would
//! write it: [`save_ranked`] gathers the shards over the rank group (every rank calls it; rank 0
//! writes), and [`load_ranked`] has every rank read the whole file and keep its shard. So a
//! checkpoint does not record how many ranks wrote it, and resumes on any number.
//!
//! Loading checks everything — the file, the metadata, the config against the model, every
//! tensor's presence, dtype, shape and checksum — before it writes a single value into the
//! backend, so a failed load changes nothing.

use crate::data::LoaderState;
use safetensors::tensor::{Dtype, SafeTensors, View};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use thiserror::Error;
use tperf_core::backend::{Backend, BackendError};
use tperf_core::comm::{shard_range, CommError, Communicator, Solo};
use tperf_core::config::ModelConfig;
use tperf_core::schedule::Transformer;
use tperf_core::tensor::Tensor;

/// Written in every checkpoint; a reader refuses formats it does not know.
pub const FORMAT: &str = "tperf-checkpoint/1";
pub const ADAM_M_SUFFIX: &str = ".adam_m";
pub const ADAM_V_SUFFIX: &str = ".adam_v";

#[derive(Debug, Error)]
pub enum CheckpointError {
    #[error("gathering the ZeRO-1 shards of '{name}' from the other ranks: {source}")]
    Gather {
        name: String,
        #[source]
        source: CommError,
    },
    #[error("no checkpoint at {}", path.display())]
    NotFound { path: PathBuf },
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not a valid safetensors file: {reason}", path.display())]
    NotSafetensors { path: PathBuf, reason: String },
    #[error("{} is a safetensors file but not a tperf checkpoint: {why}", path.display())]
    NotTperf { path: PathBuf, why: String },
    #[error("{}: the checkpoint's metadata '{field}' {why}", path.display())]
    Metadata {
        path: PathBuf,
        field: &'static str,
        why: String,
    },
    #[error("{} was saved from a different model: {field} is {saved} in the checkpoint but {model} in this model", path.display())]
    ConfigMismatch {
        path: PathBuf,
        field: String,
        saved: String,
        model: String,
    },
    #[error("{} has no tensor '{name}', which the model needs", path.display())]
    MissingTensor { path: PathBuf, name: String },
    #[error("{}: tensor '{name}' has shape {saved:?} in the checkpoint but {model:?} in the model", path.display())]
    ShapeMismatch {
        path: PathBuf,
        name: String,
        saved: Vec<usize>,
        model: Vec<usize>,
    },
    #[error("{}: tensor '{name}' is stored as {dtype}; tperf checkpoints hold f32", path.display())]
    WrongDtype {
        path: PathBuf,
        name: String,
        dtype: String,
    },
    #[error("{}: tensor '{name}' is not part of this model", path.display())]
    UnexpectedTensor { path: PathBuf, name: String },
    #[error("{} is corrupt: tensor '{name}' does not match its checksum", path.display())]
    Checksum { path: PathBuf, name: String },
    #[error("{} holds weights without AdamW's moments, so training cannot resume from it exactly; load it as weights only (a fresh optimizer)", path.display())]
    NoSavedOptimizerState { path: PathBuf },
    #[error("the model was built for inference and holds no AdamW moments to {action}")]
    NoModelOptimizerState { action: &'static str },
    #[error("refusing to save: '{name}' holds {value} at index {index} (training diverged?); the previous checkpoint is kept")]
    NonFinite {
        name: String,
        index: usize,
        value: f32,
    },
    #[error("the backend returned {got} values for '{name}' of shape {shape:?}")]
    WrongLength {
        name: String,
        got: usize,
        shape: Vec<usize>,
    },
    #[error("{action} '{name}' on the backend: {source}")]
    Backend {
        action: &'static str,
        name: String,
        #[source]
        source: BackendError,
    },
    #[error("cannot encode the checkpoint's {what} as JSON: {source}")]
    Encode {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("{} is not a file path", path.display())]
    NotAFilePath { path: PathBuf },
}

/// What a checkpoint holds, or what to restore from one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Contents {
    /// Master weights only: for inference, or to start a new run from trained weights.
    Weights,
    /// Weights and AdamW's moments: what resuming a run exactly needs.
    WeightsAndOptimizer,
}

/// Where a run stands, saved beside the weights. Together with the weights and moments this is
/// all the state of a run: tperf's ops draw no random numbers during training (no dropout),
/// and the data order is a function of the seed and the loader's position.
#[derive(Clone, Debug, PartialEq)]
pub struct RunInfo {
    /// Optimizer steps completed.
    pub step: u64,
    pub seed: u64,
    /// None for checkpoints written outside a training run (an export, a conversion).
    pub loader: Option<LoaderState>,
    /// The tokenizer's name, so `generate` decodes with the one the model was trained with.
    pub tokenizer: String,
    /// The command-line settings that change the run (batch, learning rate, schedule, …) by
    /// flag name, so a resumed run can refuse different ones; empty in older checkpoints.
    pub flags: BTreeMap<String, String>,
}

/// A checkpoint's metadata, parsed and checked.
#[derive(Clone, Debug, PartialEq)]
pub struct Metadata {
    pub tperf_version: String,
    pub config: ModelConfig,
    /// The precision policy of the run that saved it ("fp32", "bf16", "fp16"). The stored
    /// weights are always the f32 masters, so a checkpoint loads under any policy.
    pub precision: String,
    /// Whether AdamW's moments are in the file.
    pub optimizer_state: bool,
    pub run: RunInfo,
    checksums: BTreeMap<String, u32>,
}

/// A tensor on the host, as safetensors serialises it: little-endian f32.
struct HostTensor {
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl View for &HostTensor {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

fn moment_names(param: &str) -> [String; 2] {
    [
        format!("{param}{ADAM_M_SUFFIX}"),
        format!("{param}{ADAM_V_SUFFIX}"),
    ]
}

fn has_optimizer_state(model: &Transformer) -> bool {
    model
        .weights
        .all_params()
        .iter()
        .all(|p| p.m.is_some() && p.v.is_some())
}

// -------------------------------------------------------------------------------------------
// Saving
// -------------------------------------------------------------------------------------------

/// Saves `model`'s weights (and, with [`Contents::WeightsAndOptimizer`], AdamW's moments) from
/// `be` to `path`, atomically. Creates the directory if needed.
pub fn save<B: Backend>(
    path: &Path,
    be: &mut B,
    model: &Transformer,
    run: &RunInfo,
    contents: Contents,
) -> Result<(), CheckpointError> {
    save_ranked(path, be, model, run, contents, &Solo)
}

/// [`save`] for one rank of `group`: a ZeRO-1 model's shards are gathered from every rank
/// (each must call this, in step), and rank 0 alone writes the file.
pub fn save_ranked<B: Backend>(
    path: &Path,
    be: &mut B,
    model: &Transformer,
    run: &RunInfo,
    contents: Contents,
    group: &dyn Communicator,
) -> Result<(), CheckpointError> {
    let with_optimizer = contents == Contents::WeightsAndOptimizer;
    if with_optimizer && !has_optimizer_state(model) {
        return Err(CheckpointError::NoModelOptimizerState { action: "save" });
    }
    let shards = model.opts.zero1().map_or(1, |d| d.world);
    // A replicated model is read whole by whichever rank saves; a sharded one needs its group.
    if shards > 1 && shards != group.world() {
        return Err(CheckpointError::Gather {
            name: "the model".into(),
            source: CommError::Mismatch {
                rank: group.rank(),
                during: "checkpoint",
                len: shards,
                other: group.rank(),
                other_len: group.world(),
            },
        });
    }
    // Read everything before touching the file system: a backend error or a non-finite value
    // must not cost the previous checkpoint.
    let mut tensors: Vec<(String, HostTensor)> = Vec::new();
    for p in model.weights.all_params() {
        let shape = &p.master.shape;
        let master = read_sharded(be, &p.master, shape, &p.name, group, shards)?;
        tensors.push((p.name.clone(), master));
        if with_optimizer {
            let [m_name, v_name] = moment_names(&p.name);
            if let (Some(m), Some(v)) = (&p.m, &p.v) {
                let m = read_sharded(be, m, shape, &m_name, group, shards)?;
                tensors.push((m_name.clone(), m));
                let v = read_sharded(be, v, shape, &v_name, group, shards)?;
                tensors.push((v_name.clone(), v));
            }
        }
    }
    if group.rank() != 0 {
        return Ok(());
    }
    let checksums: BTreeMap<&str, u32> = tensors
        .iter()
        .map(|(name, t)| (name.as_str(), crc32fast::hash(&t.bytes)))
        .collect();
    let meta = metadata_map(model, run, with_optimizer, &checksums)?;
    write_atomically(path, |tmp| {
        safetensors::serialize_to_file(
            tensors.iter().map(|(name, t)| (name.as_str(), t)),
            Some(meta),
            tmp,
        )
        .map_err(|e| match e {
            safetensors::SafeTensorError::IoError(source) => CheckpointError::Io {
                action: "write",
                path: tmp.to_path_buf(),
                source,
            },
            other => CheckpointError::NotSafetensors {
                path: tmp.to_path_buf(),
                reason: other.to_string(),
            },
        })
    })
}

/// The whole tensor of `shape` whose backend tensor `t` is either all of it or (`shards` > 1)
/// this rank's ZeRO-1 shard of it, or, for a master weight, holds all of it with only the shard
/// current: the shards are gathered over `group` in rank order.
fn read_sharded<B: Backend>(
    be: &mut B,
    t: &Tensor,
    shape: &[usize],
    name: &str,
    group: &dyn Communicator,
    shards: usize,
) -> Result<HostTensor, CheckpointError> {
    let values = be.read_f32(t).map_err(|source| CheckpointError::Backend {
        action: "reading",
        name: name.to_string(),
        source,
    })?;
    if shards <= 1 {
        return host_tensor(values, t, name);
    }
    let numel: usize = shape.iter().product();
    let counts: Vec<usize> = (0..shards)
        .map(|r| shard_range(numel, r, shards).len())
        .collect();
    let mine = shard_range(numel, group.rank(), shards);
    // A master holds the whole tensor (its shard at the shard's place), a moment the shard.
    let own = if values.len() == numel {
        &values[mine.clone()]
    } else if values.len() >= mine.len() {
        &values[..mine.len()]
    } else {
        return Err(CheckpointError::WrongLength {
            name: name.to_string(),
            got: values.len(),
            shape: t.shape.clone(),
        });
    };
    let mut whole = vec![0.0f32; numel];
    whole[mine].copy_from_slice(own);
    group
        .all_gather(&mut whole, &counts)
        .map_err(|source| CheckpointError::Gather {
            name: name.to_string(),
            source,
        })?;
    let full = Tensor {
        shape: shape.to_vec(),
        ..t.clone()
    };
    host_tensor(whole, &full, name)
}

/// `values` of `t` as the f32 bytes a checkpoint stores, checked for length and finiteness.
fn host_tensor(values: Vec<f32>, t: &Tensor, name: &str) -> Result<HostTensor, CheckpointError> {
    if values.len() as u64 != t.numel() {
        return Err(CheckpointError::WrongLength {
            name: name.to_string(),
            got: values.len(),
            shape: t.shape.clone(),
        });
    }
    if let Some((index, &value)) = values.iter().enumerate().find(|(_, x)| !x.is_finite()) {
        return Err(CheckpointError::NonFinite {
            name: name.to_string(),
            index,
            value,
        });
    }
    let mut bytes = Vec::with_capacity(values.len() * 4);
    for x in values {
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    Ok(HostTensor {
        shape: t.shape.clone(),
        bytes,
    })
}

fn metadata_map(
    model: &Transformer,
    run: &RunInfo,
    with_optimizer: bool,
    checksums: &BTreeMap<&str, u32>,
) -> Result<HashMap<String, String>, CheckpointError> {
    let mut m = HashMap::new();
    m.insert("format".into(), FORMAT.into());
    m.insert("tperf_version".into(), crate::TPERF_VERSION.into());
    m.insert("config".into(), to_json("config", &model.cfg)?);
    m.insert("precision".into(), model.opts.precision.name().into());
    m.insert("optimizer_state".into(), with_optimizer.to_string());
    m.insert("step".into(), run.step.to_string());
    m.insert("seed".into(), run.seed.to_string());
    if let Some(loader) = &run.loader {
        m.insert("loader".into(), to_json("loader", loader)?);
    }
    m.insert("tokenizer".into(), run.tokenizer.clone());
    if !run.flags.is_empty() {
        m.insert("run_flags".into(), to_json("run_flags", &run.flags)?);
    }
    m.insert("checksums".into(), to_json("checksums", checksums)?);
    Ok(m)
}

fn to_json<T: serde::Serialize + ?Sized>(
    what: &'static str,
    value: &T,
) -> Result<String, CheckpointError> {
    serde_json::to_string(value).map_err(|source| CheckpointError::Encode { what, source })
}

/// Writes through `write` into a temporary file beside `path`, fsyncs it, renames it over
/// `path` and fsyncs the directory; on any failure removes the temporary file and leaves
/// `path` untouched.
fn write_atomically(
    path: &Path,
    write: impl FnOnce(&Path) -> Result<(), CheckpointError>,
) -> Result<(), CheckpointError> {
    let file_name = path
        .file_name()
        .ok_or_else(|| CheckpointError::NotAFilePath {
            path: path.to_path_buf(),
        })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let io_err = |action, p: &Path| {
        let p = p.to_path_buf();
        move |source| CheckpointError::Io {
            action,
            path: p,
            source,
        }
    };
    fs::create_dir_all(&dir).map_err(io_err("create the directory", &dir))?;
    // Hidden, and named after the process, so two processes writing one path do not share a
    // temporary file and a leftover from a crash is recognisable and never loaded.
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let _in_flight = InFlight::register(&tmp);
    let result = (|| {
        write(&tmp)?;
        fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io_err("flush", &tmp))?;
        fs::rename(&tmp, path).map_err(io_err("replace", path))?;
        sync_dir(&dir);
        Ok(())
    })();
    if result.is_err() {
        // Best effort: the error being returned matters more than a leftover temporary file.
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Temporary files being written now, so that an exit that skips the normal return (a second
/// Ctrl-C calling `process::exit`) can remove them first.
static IN_FLIGHT: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// Holds a temporary path in the list [`remove_temporary_files`] clears for as long as it
/// lives: any writer of a file through a temporary name (the report, results.json) can use it.
pub struct InFlight(PathBuf);

impl InFlight {
    pub fn register(path: &Path) -> Self {
        if let Ok(mut v) = IN_FLIGHT.lock() {
            v.push(path.to_path_buf());
        }
        InFlight(path.to_path_buf())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Ok(mut v) = IN_FLIGHT.lock() {
            v.retain(|p| p != &self.0);
        }
    }
}

/// Removes every registered temporary file being written now. For an exit that does not
/// return through the save (a signal handler's `process::exit`); the checkpoint itself is the
/// previous one, untouched.
pub fn remove_temporary_files() {
    // try_lock: a handler must not wait on a lock its own process may hold forever.
    if let Ok(v) = IN_FLIGHT.try_lock() {
        for p in v.iter() {
            let _ = fs::remove_file(p);
        }
    }
}

/// Makes the rename durable. Only POSIX systems can fsync a directory; elsewhere the rename's
/// own guarantees are all there is. A failure here is not reported: the new checkpoint is
/// complete and in place, only its survival of a power cut in the next seconds is less sure.
fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}

// -------------------------------------------------------------------------------------------
// Loading
// -------------------------------------------------------------------------------------------

/// Reads and checks a checkpoint's metadata without reading its tensors: what `generate`
/// needs to build the model a checkpoint belongs to.
pub fn read_metadata(path: &Path) -> Result<Metadata, CheckpointError> {
    let mut file = fs::File::open(path).map_err(|e| open_error(path, e))?;
    let invalid = |reason: String| CheckpointError::NotSafetensors {
        path: path.to_path_buf(),
        reason,
    };
    let mut n = [0u8; 8];
    file.read_exact(&mut n)
        .map_err(|e| invalid(format!("cannot read the header length: {e}")))?;
    let n = u64::from_le_bytes(n);
    // safetensors' own limit on the header (100 MB): anything larger is not a header.
    if n > 100_000_000 {
        return Err(invalid(format!("header length {n} is implausible")));
    }
    let mut header = vec![0u8; n as usize];
    file.read_exact(&mut header)
        .map_err(|e| invalid(format!("the header is cut short: {e}")))?;
    #[derive(serde::Deserialize)]
    struct Header {
        #[serde(rename = "__metadata__")]
        metadata: Option<HashMap<String, String>>,
    }
    let header: Header =
        serde_json::from_slice(&header).map_err(|e| invalid(format!("bad header: {e}")))?;
    parse_metadata(path, header.metadata.as_ref())
}

/// Loads a checkpoint into `model` on `be`: the master weights (and their low-precision copies)
/// and, with [`Contents::WeightsAndOptimizer`], AdamW's moments. Everything is checked before
/// anything is written; on error the backend holds what it held before.
pub fn load<B: Backend>(
    path: &Path,
    be: &mut B,
    model: &Transformer,
    contents: Contents,
) -> Result<Metadata, CheckpointError> {
    load_ranked(path, be, model, contents, 0)
}

/// [`load`] for rank `rank` of a ZeRO-1 model: the whole checkpoint is read and checked, and
/// the moments keep this rank's shard (the masters are written whole). The checkpoint may have
/// been written by any number of ranks.
pub fn load_ranked<B: Backend>(
    path: &Path,
    be: &mut B,
    model: &Transformer,
    contents: Contents,
    rank: usize,
) -> Result<Metadata, CheckpointError> {
    let shards = model.opts.zero1().map_or(1, |d| d.world);
    let bytes = fs::read(path).map_err(|e| open_error(path, e))?;
    let invalid = |e: safetensors::SafeTensorError| CheckpointError::NotSafetensors {
        path: path.to_path_buf(),
        reason: match e {
            // The usual cause of a header that promises more data than the file holds.
            safetensors::SafeTensorError::MetadataIncompleteBuffer => format!(
                "{e}: the file ({} bytes) is shorter or longer than its header says (truncated?)",
                bytes.len()
            ),
            e => e.to_string(),
        },
    };
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(invalid)?;
    let st = SafeTensors::deserialize(&bytes).map_err(invalid)?;
    let meta = parse_metadata(path, header.metadata().as_ref())?;
    if let Some((field, saved, model_value)) = first_difference(&meta.config, &model.cfg) {
        return Err(CheckpointError::ConfigMismatch {
            path: path.to_path_buf(),
            field,
            saved,
            model: model_value,
        });
    }
    let with_optimizer = contents == Contents::WeightsAndOptimizer;
    if with_optimizer {
        if !has_optimizer_state(model) {
            return Err(CheckpointError::NoModelOptimizerState { action: "restore" });
        }
        if !meta.optimizer_state {
            return Err(CheckpointError::NoSavedOptimizerState {
                path: path.to_path_buf(),
            });
        }
    }

    // What to write where: each stored tensor, its whole shape, and the backend tensors that
    // receive it (a ZeRO-1 moment receives its rank's shard).
    let mut plan: Vec<(String, &[usize], Vec<&Tensor>)> = Vec::new();
    let mut expected: HashSet<String> = HashSet::new();
    for p in model.weights.all_params() {
        let mut targets = vec![&p.master];
        targets.extend(p.copy.as_ref());
        let shape = p.master.shape.as_slice();
        plan.push((p.name.clone(), shape, targets));
        expected.insert(p.name.clone());
        let [m_name, v_name] = moment_names(&p.name);
        if with_optimizer {
            if let (Some(m), Some(v)) = (&p.m, &p.v) {
                plan.push((m_name.clone(), shape, vec![m]));
                plan.push((v_name.clone(), shape, vec![v]));
            }
        }
        if meta.optimizer_state {
            expected.insert(m_name);
            expected.insert(v_name);
        }
    }
    let mut names = st.names();
    names.sort_unstable();
    if let Some(name) = names.iter().find(|n| !expected.contains(**n)) {
        return Err(CheckpointError::UnexpectedTensor {
            path: path.to_path_buf(),
            name: name.to_string(),
        });
    }

    // Check every tensor before writing any.
    let mut views = Vec::with_capacity(plan.len());
    for (name, shape, _) in &plan {
        let view = st
            .tensor(name)
            .map_err(|_| CheckpointError::MissingTensor {
                path: path.to_path_buf(),
                name: name.clone(),
            })?;
        if view.dtype() != Dtype::F32 {
            return Err(CheckpointError::WrongDtype {
                path: path.to_path_buf(),
                name: name.clone(),
                dtype: format!("{:?}", view.dtype()),
            });
        }
        if view.shape() != *shape {
            return Err(CheckpointError::ShapeMismatch {
                path: path.to_path_buf(),
                name: name.clone(),
                saved: view.shape().to_vec(),
                model: shape.to_vec(),
            });
        }
        let Some(&crc) = meta.checksums.get(name) else {
            return Err(CheckpointError::Metadata {
                path: path.to_path_buf(),
                field: "checksums",
                why: format!("has no entry for tensor '{name}'"),
            });
        };
        if crc32fast::hash(view.data()) != crc {
            return Err(CheckpointError::Checksum {
                path: path.to_path_buf(),
                name: name.clone(),
            });
        }
        views.push(view);
    }

    for ((name, _, targets), view) in plan.iter().zip(&views) {
        // The data of an f32 tensor is not necessarily 4-byte aligned in the file buffer, so
        // decode rather than reinterpret.
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        for t in targets {
            let values = if t.numel() as usize == values.len() {
                Cow::Borrowed(&values[..])
            } else {
                // A ZeRO-1 moment: this rank's shard, zero past its end (the last rank's
                // shard can be shorter than the ⌈n/W⌉ allocated).
                let mut own = values[shard_range(values.len(), rank, shards)].to_vec();
                own.resize(t.numel() as usize, 0.0);
                Cow::Owned(own)
            };
            be.write_f32(t, &values)
                .map_err(|source| CheckpointError::Backend {
                    action: "writing",
                    name: name.clone(),
                    source,
                })?;
        }
    }
    Ok(meta)
}

fn open_error(path: &Path, e: io::Error) -> CheckpointError {
    if e.kind() == io::ErrorKind::NotFound {
        CheckpointError::NotFound {
            path: path.to_path_buf(),
        }
    } else {
        CheckpointError::Io {
            action: "read",
            path: path.to_path_buf(),
            source: e,
        }
    }
}

fn parse_metadata(
    path: &Path,
    map: Option<&HashMap<String, String>>,
) -> Result<Metadata, CheckpointError> {
    let Some(map) = map else {
        return Err(CheckpointError::NotTperf {
            path: path.to_path_buf(),
            why: "it has no __metadata__".into(),
        });
    };
    match map.get("format") {
        None => {
            return Err(CheckpointError::NotTperf {
                path: path.to_path_buf(),
                why: "its metadata has no 'format'".into(),
            })
        }
        Some(f) if f != FORMAT => {
            return Err(CheckpointError::NotTperf {
                path: path.to_path_buf(),
                why: format!("its format is '{f}' and this build of tperf reads '{FORMAT}'"),
            })
        }
        Some(_) => {}
    }
    let meta_err = |field: &'static str, why: String| CheckpointError::Metadata {
        path: path.to_path_buf(),
        field,
        why,
    };
    let get = |field: &'static str| {
        map.get(field)
            .ok_or_else(|| meta_err(field, "is missing".into()))
    };
    fn parse<T: std::str::FromStr>(
        s: &str,
        field: &'static str,
        err: &dyn Fn(&'static str, String) -> CheckpointError,
    ) -> Result<T, CheckpointError>
    where
        T::Err: std::fmt::Display,
    {
        s.parse()
            .map_err(|e: T::Err| err(field, format!("is not valid ('{s}'): {e}")))
    }
    fn json<T: serde::de::DeserializeOwned>(
        s: &str,
        field: &'static str,
        err: &dyn Fn(&'static str, String) -> CheckpointError,
    ) -> Result<T, CheckpointError> {
        serde_json::from_str(s).map_err(|e| err(field, format!("is not valid JSON here: {e}")))
    }
    let config: ModelConfig = json(get("config")?, "config", &meta_err)?;
    config
        .validate()
        .map_err(|e| meta_err("config", format!("is not a valid model: {e}")))?;
    let loader = match map.get("loader") {
        Some(s) => Some(json(s, "loader", &meta_err)?),
        None => None,
    };
    Ok(Metadata {
        tperf_version: get("tperf_version")?.clone(),
        config,
        precision: get("precision")?.clone(),
        optimizer_state: parse(get("optimizer_state")?, "optimizer_state", &meta_err)?,
        run: RunInfo {
            step: parse(get("step")?, "step", &meta_err)?,
            seed: parse(get("seed")?, "seed", &meta_err)?,
            loader,
            tokenizer: get("tokenizer")?.clone(),
            flags: match map.get("run_flags") {
                Some(s) => json(s, "run_flags", &meta_err)?,
                None => BTreeMap::new(),
            },
        },
        checksums: json(get("checksums")?, "checksums", &meta_err)?,
    })
}

/// The first field, in the order `ModelConfig` declares them, whose value differs between the
/// saved and the model's config, as (field path, saved value, model value) in JSON. The name is
/// skipped: it labels a config, and the same architecture under another name (a preset and its
/// config.json) holds the same weights.
pub fn first_difference(
    saved: &ModelConfig,
    model: &ModelConfig,
) -> Option<(String, String, String)> {
    let a = ordered_fields(saved);
    let b = ordered_fields(model);
    for ((key, va), (_, vb)) in a.iter().zip(&b) {
        if key == "name" || va == vb {
            continue;
        }
        // Name the innermost field that differs (biases.qkv rather than biases).
        if let (serde_json::Value::Object(oa), serde_json::Value::Object(ob)) = (va, vb) {
            let keys: std::collections::BTreeSet<&String> = oa.keys().chain(ob.keys()).collect();
            for k in keys {
                let (x, y) = (oa.get(k), ob.get(k));
                if x != y {
                    let show = |v: Option<&serde_json::Value>| {
                        v.map_or_else(|| "absent".to_string(), |v| v.to_string())
                    };
                    return Some((format!("{key}.{k}"), show(x), show(y)));
                }
            }
        }
        return Some((key.clone(), va.to_string(), vb.to_string()));
    }
    if a.is_empty() && saved != model {
        return Some(("config".into(), format!("{saved:?}"), format!("{model:?}")));
    }
    None
}

/// A config's top-level fields in declaration order. serde_json's `Value` map sorts its keys
/// (unless a crate enables `preserve_order`), so the order is read from the serialised text,
/// which serde writes in declaration order.
fn ordered_fields(cfg: &ModelConfig) -> Vec<(String, serde_json::Value)> {
    use serde::de::{Deserializer, MapAccess, Visitor};
    struct Fields;
    impl<'de> Visitor<'de> for Fields {
        type Value = Vec<(String, serde_json::Value)>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
            let mut out = Vec::new();
            while let Some(entry) = map.next_entry()? {
                out.push(entry);
            }
            Ok(out)
        }
    }
    // Serialising a ModelConfig cannot fail (plain fields, string keys); were it to, every
    // config would compare equal field by field and the mismatch would go unnamed, not unseen:
    // `load` also compares the configs whole.
    let Ok(text) = serde_json::to_string(cfg) else {
        return Vec::new();
    };
    serde_json::Deserializer::from_str(&text)
        .deserialize_map(Fields)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tperf_core::presets;

    #[test]
    fn config_difference_names_the_first_field_in_declaration_order() {
        let a = presets::find("small").map(|p| p.config).ok();
        let Some(a) = a else {
            panic!("preset 'small' exists")
        };
        let mut b = a.clone();
        assert_eq!(first_difference(&a, &b), None);
        b.name = "renamed".into();
        assert_eq!(first_difference(&a, &b), None, "the name is a label");
        b.n_layers += 1;
        b.d_ff += 1;
        let (field, saved, model) = first_difference(&a, &b).unwrap_or_default();
        // d_ff is declared before n_layers.
        assert_eq!(field, "d_ff");
        assert_eq!(saved, a.d_ff.to_string());
        assert_eq!(model, b.d_ff.to_string());
        let mut c = a.clone();
        c.biases.qkv = true;
        let (field, ..) = first_difference(&a, &c).unwrap_or_default();
        assert_eq!(field, "biases.qkv");
    }
}
