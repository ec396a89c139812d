//! `tperf hw list`: the hardware table with each entry's source.

use anyhow::Result;
use tperf_core::cost::hardware::{self, Hardware};
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
    /// Measure this machine's ceilings (matmul rate, copy bandwidth) beside its detected peaks.
    Measure {
        /// Square matmul sizes to time.
        #[arg(long, value_delimiter = ',', default_value = "256,512,1024,2048", value_parser = super::parse_positive)]
        sizes: Vec<usize>,
        /// Timed repeats per size (the median is reported).
        #[arg(long, default_value_t = 5, value_parser = super::parse_positive)]
        repeats: usize,
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
            sizes,
            repeats,
            json,
        } => {
            let cpu = hardware::detect_local_cpu();
            let points = tperf_bench::ceilings::matmul(&sizes, repeats);
            let copy = tperf_bench::ceilings::copy_bandwidth(256 << 20, repeats);
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
