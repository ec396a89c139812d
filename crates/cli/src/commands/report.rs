//! `tperf report`: re-render the HTML report of a results.json; and the writing of a run's
//! folder (results.json, report.html, per-op CSVs) that `tperf study` shares.

use anyhow::{Context, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use tperf_report::html;
use tperf_report::results::{ops_csv, Provenance, Results};

#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// A results.json written by `tperf study` (or by hand, in its schema).
    #[arg(required_unless_present_any = ["serving", "scaling"], conflicts_with_all = ["serving", "scaling"])]
    pub results: Option<PathBuf>,
    /// Instead: the JSON files of `tperf bench serve --json` runs (a sweep, a static and a
    /// continuous server, VTC and FCFS fairness runs, …), drawn together on one page.
    #[arg(long, num_args = 1.., conflicts_with = "scaling")]
    pub serving: Vec<PathBuf>,
    /// Instead: the JSON files of `tperf bench MODEL --ranks|--gpus 1,2,4 --scaling
    /// weak|strong [--zero1] --json PATH` runs, one section each: step time, efficiency and
    /// communication against N, measured beside modelled, with the table.
    #[arg(long, num_args = 1..)]
    pub scaling: Vec<PathBuf>,
    /// Folder to write report.html into (default: the (first) input file's folder).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn run(args: ReportArgs) -> Result<()> {
    let first = args
        .results
        .clone()
        .or_else(|| args.serving.first().cloned())
        .or_else(|| args.scaling.first().cloned())
        .context("name a results.json, bench serve JSON files with --serving, or bench --scaling JSON files with --scaling")?;
    let dir = match &args.out {
        Some(d) => d.clone(),
        None => first
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf),
    };
    let page = if !args.serving.is_empty() {
        serving_page(&args.serving)?
    } else if !args.scaling.is_empty() {
        scaling_page(&args.scaling)?
    } else {
        let text = std::fs::read_to_string(&first)
            .with_context(|| format!("cannot read {}", first.display()))?;
        let r = Results::from_json(&text).with_context(|| format!("in {}", first.display()))?;
        html::render(&r)?
    };
    create_dir(&dir)?;
    let path = dir.join("report.html");
    write_atomic(&path, page.as_bytes())?;
    println!("wrote {}", path.display());
    Ok(())
}

/// A file's JSON, and the provenance line the page shows for it: its name, then the command
/// line, version, revision and date of the run that wrote it.
fn read_run(f: &Path) -> Result<(serde_json::Value, (String, String))> {
    let text =
        std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?;
    let doc: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", f.display()))?;
    let p = &doc["provenance"];
    let command = p["command_line"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str())
                .collect::<Vec<_>>()
                .join(" ")
                // The server's address stays, its scheme goes: the page names no URL.
                .replace("http://", "")
        })
        .unwrap_or_default();
    let line = (
        f.file_name()
            .map_or_else(|| f.display().to_string(), |n| n.to_string_lossy().into()),
        format!(
            "{command} (tperf {}, {}, {})",
            p["tperf_version"].as_str().unwrap_or("?"),
            p["git_revision"].as_str().unwrap_or("?"),
            iso_date(p["date_unix"].as_u64().unwrap_or(0))
        ),
    );
    Ok((doc, line))
}

/// One page of the scaling runs of several `tperf bench --scaling --json` files.
fn scaling_page(files: &[PathBuf]) -> Result<String> {
    let mut runs = Vec::new();
    let mut lines = Vec::new();
    for f in files {
        let (doc, line) = read_run(f)?;
        if !doc["rows"].is_array() || doc["scaling"].as_str().is_none() {
            anyhow::bail!(
                "{} has no scaling rows (written by `tperf bench MODEL --ranks|--gpus 1,2 --scaling weak|strong --json PATH`?)",
                f.display()
            );
        }
        runs.push(doc);
        lines.push(line);
    }
    Ok(html::render_scaling(
        "tperf data-parallel scaling report",
        &lines,
        &runs,
    )?)
}

/// One page of the serving records of several `tperf bench serve --json` files.
fn serving_page(files: &[PathBuf]) -> Result<String> {
    use tperf_bench::serve::summary::ServingSummary;
    let mut parts = Vec::new();
    let mut lines = Vec::new();
    for f in files {
        let (doc, line) = read_run(f)?;
        let part = ServingSummary::deserialize(&doc["serving"]).with_context(|| {
            format!(
                "{} has no serving record (written by `tperf bench serve --json`?)",
                f.display()
            )
        })?;
        lines.push(line);
        parts.push(part);
    }
    let merged = ServingSummary::merge(parts);
    Ok(html::render_serving(
        "tperf serving report",
        &lines,
        &serde_json::to_value(&merged)?,
    )?)
}

pub fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| {
        format!(
            "cannot create the output folder {} (choose another with --out)",
            dir.display()
        )
    })
}

/// Writes beside the destination and renames over it: a reader (or a run that dies half-way)
/// sees the old file or the new one, never half of one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".to_string());
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let _in_flight = tperf_runtime::checkpoint::InFlight::register(&tmp);
    let written = std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .with_context(|| format!("cannot write {}", path.display()));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Everything a run records about where its numbers came from.
pub fn provenance(device: &str) -> Provenance {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let driver = std::fs::read_to_string("/proc/driver/nvidia/version")
        .ok()
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_else(|| "none".to_string());
    Provenance {
        tperf_version: env!("CARGO_PKG_VERSION").to_string(),
        git_revision: env!("TPERF_GIT_REV").to_string(),
        device: device.to_string(),
        driver,
        cpu: tperf_core::cost::hardware::detect_local_cpu().source,
        date: iso_date(now),
        date_unix: now,
    }
}

/// UTC civil date from Unix seconds (Howard Hinnant's days-from-civil inverse), so that the
/// provenance carries a readable date without a date-time dependency.
pub fn iso_date(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Writes `<out>/<run_id>/`: results.json, one ops-<i>.csv per analysis, then report.html
/// last, each through a temporary name. Returns the folder.
/// Writes the run's folder; `extra` files (name, contents) go beside the report.
pub fn write_run(out: &Path, r: &Results, extra: &[(String, String)]) -> Result<PathBuf> {
    let dir = out.join(&r.run_id);
    create_dir(&dir)?;
    // Render first: a document the report cannot draw leaves no files behind.
    let page = html::render(r)?;
    let views = r.analysis_views()?;
    write_atomic(
        &dir.join("results.json"),
        serde_json::to_string_pretty(r)?.as_bytes(),
    )?;
    for (i, a) in views.iter().enumerate() {
        write_atomic(&dir.join(format!("ops-{i}.csv")), ops_csv(a).as_bytes())?;
    }
    for (name, contents) in extra {
        write_atomic(&dir.join(name), contents.as_bytes())?;
    }
    write_atomic(&dir.join("report.html"), page.as_bytes())?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::iso_date;

    #[test]
    fn dates() {
        assert_eq!(iso_date(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso_date(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(iso_date(1_767_225_599), "2025-12-31T23:59:59Z");
    }
}
