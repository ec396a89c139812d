//! `tperf hw list`: the hardware table with each entry's source. `tperf hw measure`: this
//! machine's ceilings (the CPU's, or with `--device cuda` the GPU's) beside the datasheet, saved
//! as a hardware entry that `--hw measured:PATH` loads.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use tperf_bench::device::Device;
use tperf_core::cost::hardware::{self, Hardware};
use tperf_core::cost::measured::{self, Ceiling, HardwareEntry, Unit};
use tperf_core::dtype::DType;
use tperf_report::table::Table;
use tperf_report::units;

#[derive(clap::Args, Debug)]
pub struct HwArgs {
    #[command(subcommand)]
    pub command: HwCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum HwCommand {
    /// List the hardware tperf knows, with datasheet figures and their sources.
    List {
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Measure this machine's ceilings beside its datasheet or detected peaks: on the CPU the
    /// matmul rate and copy bandwidth; with --device cuda GEMM rates (bf16, fp16, tf32, fp32),
    /// DRAM and L2 bandwidth, launch latency and host↔device bandwidth.
    Measure {
        /// cpu, or cuda / cuda:N for a GPU.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Square matmul sizes to time (CPU; the GPU times 1024…8192 and decode shapes).
        #[arg(long, value_delimiter = ',', default_value = "256,512,1024,2048", value_parser = super::parse_positive)]
        sizes: Vec<usize>,
        /// Timed repeats per measurement (the median is reported). Default: 5 on the CPU, 10 on
        /// a GPU.
        #[arg(long, value_parser = super::parse_positive)]
        repeats: Option<usize>,
        /// The datasheet entry to compare with (default: the catalogue entry of the GPU's name).
        #[arg(long)]
        hw: Option<String>,
        /// Save the measured hardware entry here (GPU default: the cache folder,
        /// ~/.cache/tperf/hardware/<key>-measured.json); load it with --hw measured:PATH.
        #[arg(long)]
        save: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

pub fn table(entries: &[Hardware]) -> Table {
    let mut t = Table::new(&[
        "key",
        "name",
        "memory",
        "bandwidth",
        "fp32",
        "bf16 (dense)",
        "ridge bf16",
        "link/dir",
    ]);
    for h in entries {
        t.row(vec![
            h.key.clone(),
            h.name.clone(),
            units::bytes(h.memory_bytes),
            units::si(h.mem_bw_bytes_per_s, "B/s"),
            units::si(h.peak_f32_flops, "FLOP/s"),
            units::si(h.peak_bf16_flops, "FLOP/s"),
            format!("{:.0} FLOP/B", h.ridge_point(DType::Bf16)),
            units::si(h.link_bw_bytes_per_s, "B/s"),
        ]);
    }
    for h in entries {
        t.note(format!("{}: {}", h.key, h.source));
    }
    t
}

pub fn run(args: HwArgs) -> Result<()> {
    match args.command {
        HwCommand::Measure {
            device,
            sizes,
            repeats,
            hw,
            save,
            json,
        } => {
            let device: Device = device.parse()?;
            if let Device::Cuda(ordinal) = device {
                return measure_gpu(ordinal, repeats.unwrap_or(10), hw.as_deref(), save, json);
            }
            let repeats = repeats.unwrap_or(5);
            let cpu = hardware::detect_local_cpu();
            let points = tperf_bench::ceilings::matmul(&sizes, repeats);
            let copy = tperf_bench::ceilings::copy_bandwidth(256 << 20, repeats);
            let saved = match &save {
                Some(path) => {
                    let rows = tperf_bench::ceilings::cpu_rows(&points, copy, &cpu);
                    let entry = HardwareEntry::new(
                        cpu.clone(),
                        format!("cpu ({})", cpu.name),
                        rows,
                        vec![],
                        super::model::provenance(),
                    );
                    entry.save(path)?;
                    Some(path.clone())
                }
                None => None,
            };
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "provenance": super::model::provenance(),
                        "hardware": cpu,
                        "threads": rayon_threads(),
                        "matmul": points,
                        "copy_bytes_per_s": copy,
                    }))?
                );
                return Ok(());
            }
            let mut t = Table::new(&["n", "median", "GFLOP/s", "% of peak"]).titled(format!(
                "Matmul n×n×n (f32, x·Wᵀ through the CPU backend's kernel), {} threads",
                rayon_threads()
            ));
            for p in &points {
                t.row(vec![
                    p.n.to_string(),
                    units::seconds(p.seconds.median),
                    format!("{:.1}", p.flops_per_s / 1e9),
                    units::percent(p.flops_per_s / cpu.peak_f32_flops),
                ]);
            }
            t.note(format!(
                "peak {} — {}",
                units::si(cpu.peak_f32_flops, "FLOP/s"),
                cpu.source
            ));
            t.note(format!(
                "copy of 256 MiB: {} (bytes read + written); the table's estimate is {}",
                units::si(copy, "B/s"),
                units::si(cpu.mem_bw_bytes_per_s, "B/s")
            ));
            print!("{}", t.render());
            if let Some(path) = saved {
                println!("{}", saved_line(&path));
            }
        }
        HwCommand::List { json } => {
            let mut entries = hardware::catalogue();
            entries.push(hardware::detect_local_cpu());
            if json {
                println!("{}", serde_json::to_string_pretty(&entries)?);
            } else {
                print!(
                    "{}",
                    table(&entries)
                        .titled("Hardware (datasheet figures; dense rates)")
                        .render()
                );
            }
        }
    }
    Ok(())
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn saved_line(path: &Path) -> String {
    format!(
        "saved the measured hardware entry to {0}; use it with --hw measured:{0}",
        path.display()
    )
}

/// `hw measure --device cuda:N`: measure, print beside the datasheet, save the entry.
fn measure_gpu(
    ordinal: usize,
    repeats: usize,
    hw: Option<&str>,
    save: Option<PathBuf>,
    json: bool,
) -> Result<()> {
    match tperf_cuda::device_count() {
        Ok(n) if ordinal < n => {}
        Ok(0) => bail!("--device cuda: this machine has no CUDA device; `tperf hw measure --device cpu` (the default) measures the CPU"),
        Ok(n) => bail!("--device cuda:{ordinal}: this machine has {n} CUDA device(s) (cuda:0 … cuda:{})", n - 1),
        Err(e) => bail!(
            "--device cuda: {}; `tperf hw measure --device cpu` (the default) measures the CPU",
            tperf_core::error::report(&e)
        ),
    }
    // The datasheet entry is settled first, so a bad --hw fails before a minute of measuring.
    let named = hw.map(super::find_hw).transpose()?;
    let opts = tperf_cuda::ceilings::Options {
        repeats,
        ..Default::default()
    };
    let started = std::time::Instant::now();
    let c = tperf_cuda::ceilings::measure(ordinal, &opts, |step| {
        if !json {
            eprintln!("measuring: {step}");
        }
    })
    .with_context(|| format!("measuring the ceilings of cuda:{ordinal}"))?;
    let took = started.elapsed();
    let datasheet = match named {
        Some(h) => h,
        None => hardware::match_gpu_name(&c.info.name, c.info.total_bytes).with_context(|| {
            format!(
                "'{}' is not in tperf's hardware catalogue: pass --hw with the nearest entry of `tperf hw list` to compare with",
                c.info.name
            )
        })?,
    };
    let mut notes = c.skipped.clone();
    notes.push(format!(
        "{} (sm_{}{}, {} SMs, driver {}); took {:.1} s",
        c.info.name,
        c.info.cc.0,
        c.info.cc.1,
        c.info.sms,
        c.info.driver_version,
        took.as_secs_f64()
    ));
    let rows = tperf_bench::ceilings::gpu_rows(&c, &datasheet);
    let entry = HardwareEntry::new(
        datasheet,
        format!("cuda:{ordinal} {}", c.info.name),
        rows,
        notes,
        super::model::provenance(),
    );
    let path = match save.or_else(|| measured::default_path(&entry.hardware.key)) {
        Some(p) => p,
        None => bail!("no cache folder (neither XDG_CACHE_HOME nor HOME is set): pass --save PATH"),
    };
    entry.save(&path)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&entry)?);
    } else {
        print!("{}", entry_table(&entry).render());
        println!("{}", saved_line(&path));
    }
    Ok(())
}

fn value(unit: Unit, v: f64) -> String {
    match unit {
        Unit::Seconds => units::seconds(v),
        u => units::si(v, u.symbol()),
    }
}

/// Every ceiling beside the datasheet, then the roofline figures the entry hands the model.
pub fn entry_table(e: &HardwareEntry) -> Table {
    let mut t = Table::new(&[
        "measurement",
        "measured",
        "datasheet",
        "measured / datasheet",
    ])
    .titled(format!(
        "Measured ceilings of {} against {} (datasheet)",
        e.device, e.datasheet.key
    ));
    let mut group = "";
    for c in &e.ceilings {
        if c.group != group && !group.is_empty() {
            t.row(vec![String::new(); 4]);
        }
        group = &c.group;
        t.row(ceiling_row(c));
    }
    let mut methods: Vec<(&str, &str)> = Vec::new();
    for c in &e.ceilings {
        if !methods.iter().any(|(g, m)| *g == c.group && *m == c.method) {
            methods.push((&c.group, &c.method));
        }
    }
    for (g, m) in methods {
        t.note(format!("{g}: {m}"));
    }
    for field in measured::Sets::ALL {
        t.note(format!(
            "roofline {}: {} measured (datasheet {})",
            field.field(),
            units::si(field.get(&e.hardware), unit_of(field)),
            units::si(field.get(&e.datasheet), unit_of(field)),
        ));
    }
    for n in &e.notes {
        t.note(n.clone());
    }
    t
}

fn unit_of(field: measured::Sets) -> &'static str {
    match field {
        measured::Sets::MemBwBytesPerS => "B/s",
        _ => "FLOP/s",
    }
}

fn ceiling_row(c: &Ceiling) -> Vec<String> {
    vec![
        c.name.clone(),
        value(c.unit, c.value),
        c.datasheet.map_or("—".into(), |d| value(c.unit, d)),
        c.ratio().map_or("—".into(), units::percent),
    ]
}
