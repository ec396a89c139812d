//! Where a model comes from: a preset name, a Hugging Face config.json, or tperf's own JSON
//! config (the serialised `ModelConfig`, as `tperf model --json` prints under "config").

use anyhow::{bail, Context, Result};
use std::path::Path;
use tperf_core::config::ModelConfig;
use tperf_core::{hf, presets};

/// A model and the batch and sequence length it is usually studied at.
pub struct LoadedModel {
    pub config: ModelConfig,
    pub description: String,
    pub default_batch: usize,
    pub default_seq: usize,
}

pub fn load(spec: &str) -> Result<LoadedModel> {
    let looks_like_file = spec.ends_with(".json")
        || spec.contains('/')
        || Path::new(spec).is_file()
        || tperf_runtime::hf::is_model_dir(Path::new(spec));
    if !looks_like_file {
        // `tperf plan fit` lists the size ladder's shapes beside the presets; each name it
        // prints is accepted here too.
        if let Some(cfg) = tperf_core::cost::plan::size_ladder()
            .into_iter()
            .find(|c| c.name.eq_ignore_ascii_case(spec))
        {
            let default_seq = cfg.context.min(1024);
            return Ok(LoadedModel {
                description: format!(
                    "{}: a Llama-style shape of the sizing ladder (tperf plan fit)",
                    cfg.name
                ),
                config: cfg,
                default_batch: 1,
                default_seq,
            });
        }
        let p = presets::find(spec)?;
        return Ok(LoadedModel {
            config: p.config,
            description: p.description.to_string(),
            default_batch: p.default_batch,
            default_seq: p.default_seq,
        });
    }
    let folder = Path::new(spec);
    // A Hugging Face model folder: its config (weights are loaded by the commands that run it).
    let config_in_folder = folder.join("config.json");
    let path = if tperf_runtime::hf::is_model_dir(folder) {
        config_in_folder.as_path()
    } else {
        folder
    };
    let spec = &path.display().to_string();
    if !path.is_file() {
        bail!("no such file '{spec}': give a preset name (see `tperf model --list`) or the path of a config.json");
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {spec}"))?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "{spec}: not valid JSON ({e}); check the file is a Hugging Face or tperf config"
        )
    })?;
    let config = if value.get("model_type").is_some() || value.get("architectures").is_some() {
        hf::parse(spec, &text)?
    } else {
        let cfg: ModelConfig = serde_json::from_value(value).map_err(|e| {
            anyhow::anyhow!(
                "{spec}: not a Hugging Face config (no model_type) nor a tperf config: {e}"
            )
        })?;
        cfg.validate().with_context(|| spec.to_string())?;
        cfg
    };
    let default_seq = config.context.min(1024);
    Ok(LoadedModel {
        description: format!("from {spec}"),
        config,
        default_batch: 1,
        default_seq,
    })
}
