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
