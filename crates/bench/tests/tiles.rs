//! The model at the kernels' tiles against four real H200 runs of the `report` preset
//! (tests/fixtures/ncu-report-*.csv, README.md there says how they were taken and trimmed),
//! whose dimensions (C = 200, V = 33,278, B·T = 35·B) are multiples of no tile: every cuBLAS
//! kernel's FLOPs at its tiles against what ncu counted for it, each op's verdict, and the
//! whole step against the plain model and the model at tiles.

use tperf_bench::counters::{self, metric, CounterReport, KernelCount, Verdict};
use tperf_bench::tiles::{self, Family};
use tperf_core::cost::analysis::{self, Analysis, Scenario, Workload};
use tperf_core::cost::hardware;
use tperf_core::schedule::{Options, Precision};

struct Fixture {
    file: &'static str,
    workload: Workload,
    batch: usize,
    precision: Precision,
}

const F32_B16: Fixture = Fixture {
    file: "ncu-report-fwdbwd-b16-f32.csv",
    workload: Workload::FwdBwd,
    batch: 16,
    precision: Precision::Fp32,
};
const F32_B256: Fixture = Fixture {
    file: "ncu-report-fwdbwd-b256-f32.csv",
    workload: Workload::FwdBwd,
    batch: 256,
    precision: Precision::Fp32,
};
const BF16_FWD: Fixture = Fixture {
    file: "ncu-report-fwd-b16-bf16.csv",
    workload: Workload::Forward,
    batch: 16,
    precision: Precision::Bf16,
};
const BF16_B16: Fixture = Fixture {
    file: "ncu-report-fwdbwd-b16-bf16.csv",
    workload: Workload::FwdBwd,
    batch: 16,
    precision: Precision::Bf16,
};
const ALL: [&Fixture; 4] = [&F32_B16, &F32_B256, &BF16_FWD, &BF16_B16];

/// The scenario the fixture counted: `tperf profile report --phase … --batch … --seq 35
/// [--dtype bf16] --counters --all-layers`.
fn analysis_of(f: &Fixture) -> Analysis {
    let cfg = tperf_core::presets::find("report").unwrap().config;
    let sc = Scenario {
        workload: f.workload,
        batch: f.batch,
        seq: 35,
        opts: Options {
            precision: f.precision,
            ..Options::default()
        },
    };
    analysis::analyze(&cfg, &sc, &hardware::detect_local_cpu()).unwrap()
}

fn csv_of(f: &Fixture) -> String {
    let path = format!("{}/tests/fixtures/{}", env!("CARGO_MANIFEST_DIR"), f.file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn report_of(f: &Fixture) -> (Analysis, CounterReport) {
    let a = analysis_of(f);
    let c = CounterReport::join(&a, counters::parse_csv(&csv_of(f)).unwrap());
    assert!(c.notes.is_empty(), "{}: {:?}", f.file, c.notes);
    (a, c)
}

/// A kernel's arithmetic as ncu counted it, straight from its metrics: FP32 fadd + fmul +
/// 2·ffma and the tensor-core operations (the FP16 and FP64 counters, which cuBLAS's kernels
/// touch only for a few register moves, are left out).
fn counted_fp32_and_tensor(k: &KernelCount) -> f64 {
    let m = |name: &str| k.metrics.get(name).copied().unwrap_or(0.0);
    m(metric::FADD)
        + m(metric::FMUL)
        + 2.0 * m(metric::FFMA)
        + metric::TENSOR.iter().map(|t| m(t)).sum::<f64>()
}

#[test]
fn every_cublas_kernel_executes_its_tiles_as_counted() {
    for f in ALL {
        let (a, c) = report_of(f);
        let mut read = 0;
        for o in &c.ops {
            let r = &a.rows[o.index];
            if tiles::products_of(r).is_none() {
                assert!(o.tiles.is_none() && o.tiles_not_read.is_none());
                continue;
            }
            let t = o.tiles.as_ref().unwrap_or_else(|| {
                panic!(
                    "{} op {} {} {}: {:?}",
                    f.file, o.index, r.name, r.label, o.tiles_not_read
                )
            });
            for kt in &t.kernels {
                let pos = c.kernels.iter().position(|k| k.id == kt.id).unwrap();
                let mut counted = counted_fp32_and_tensor(&c.kernels[pos]);
                // A split-K reduction is modelled with the kernel it reduces.
                if kt.at.reduce_flops > 0.0 {
                    let reduce = &c.kernels[pos + 1];
                    assert!(tiles::is_split_k_reduce(&reduce.name), "{}", reduce.name);
                    counted += counted_fp32_and_tensor(reduce);
                }
                let err = kt.at.flops() / counted - 1.0;
                println!(
                    "{:<32} op {:>2} {:<22} {:<11} {:<17} {:>4}x{:<4}x{:<3} grid {:?} m={} n={} k={} → {}×{}×{}: at tiles {:.0}, counted {:.0} ({:+.4}%), 2mnk {:.0}",
                    f.file, o.index, r.name, r.label, kt.at.tile.family.name(),
                    kt.at.tile.m, kt.at.tile.n, kt.at.tile.k, kt.at.grid,
                    kt.at.product.m, kt.at.product.n, kt.at.product.k,
                    kt.at.padded_m, kt.at.padded_n, kt.at.padded_k,
                    kt.at.flops(), counted, 100.0 * err,
                    2.0 * (kt.at.product.m * kt.at.product.n * kt.at.product.k) as f64,
                );
                // Every family's rule was read off these launches: they agree to the FLOP.
                assert!(
                    err.abs() < 1e-9,
                    "{} op {} {}: {} at tiles {} against counted {counted}",
                    f.file,
                    o.index,
                    r.label,
                    kt.name,
                    kt.at.flops()
                );
                read += 1;
            }
        }
        assert!(read > 0, "{}", f.file);
    }
}

#[test]
fn each_product_is_within_one_percent_of_its_model_at_tiles_and_says_padded_tiles() {
    for f in ALL {
        let (a, c) = report_of(f);
        for o in &c.ops {
            let r = &a.rows[o.index];
            let Some(t) = &o.tiles else { continue };
            let at = o.model_at_tiles_flops;
            let counted = o.counted.flops();
            println!(
                "{:<32} op {:>2} {:<22} {:<11} model {:>14.0} at tiles {:>14.0} counted {:>14.0}  ×model {:.4} ×tiles {:.4}  {}",
                f.file, o.index, r.name, r.label, o.model_flops, at, counted,
                counted / o.model_flops as f64, counted / at, o.verdict.name()
            );
            assert!(
                (counted / at - 1.0).abs() < 0.01,
                "{} op {} {} {}: counted {counted} against {at} at tiles",
                f.file,
                o.index,
                r.name,
                r.label
            );
            // The padding is real on this model: every product counts more than 2mnk (the
            // least, b256's lm_head forward, 0.85% more: 8960 rows are 70 whole tiles).
            assert!(counted > o.model_flops as f64, "{} op {}", f.file, o.index);
            assert!(t.products_at_tiles_flops > t.products_model_flops);
            if counted > 1.05 * o.model_flops as f64 {
                assert_eq!(o.verdict, Verdict::PaddedTiles, "{} op {}", f.file, o.index);
            }
        }
    }
}

#[test]
fn the_families_seen_are_the_ones_expected() {
    let families = |f: &Fixture| {
        let (_, c) = report_of(f);
        let mut v: Vec<Family> = c
            .ops
            .iter()
            .filter_map(|o| o.tiles.as_ref())
            .flat_map(|t| t.kernels.iter().map(|k| k.at.tile.family))
            .collect();
        v.sort_by_key(|f| f.name());
        v.dedup();
        v
    };
    assert_eq!(
        families(&F32_B16),
        [Family::CutlassSimt, Family::Xmma],
        "fp32: cuBLAS's xmma and CUTLASS's SIMT kernels"
    );
    assert_eq!(families(&F32_B256), [Family::CutlassSimt, Family::Xmma]);
    assert_eq!(families(&BF16_FWD), [Family::CutlassWmma, Family::Nvjet]);
    assert_eq!(
        families(&BF16_B16),
        [Family::CutlassTensorOp, Family::CutlassWmma, Family::Nvjet]
    );
}

/// The whole step: counted FLOPs against the model and the model at the kernels' tiles. The
/// bounds are this data's (H200, 2026-12-04): docs/counters.md and bench-results/counters say
/// what is left between the counters and the model at tiles.
#[test]
fn the_whole_step_at_tiles() {
    for (f, gap_at_most) in [
        (&F32_B16, 0.05),
        (&F32_B256, 0.05),
        (&BF16_FWD, 0.05),
        (&BF16_B16, 0.05),
    ] {
        let (_, c) = report_of(f);
        let counted = c.step.flops();
        let model = c.model_flops as f64;
        let at = c.model_at_tiles_flops;
        // The step's counted FLOPs are the CSV's, summed over every kernel of the step.
        let from_csv: f64 = c
            .kernels
            .iter()
            .map(|k| {
                let m = |n: &str| k.metrics.get(n).copied().unwrap_or(0.0);
                counted_fp32_and_tensor(k)
                    + m(metric::HADD)
                    + m(metric::HMUL)
                    + 2.0 * m(metric::HFMA)
                    + m(metric::DADD)
                    + m(metric::DMUL)
                    + 2.0 * m(metric::DFMA)
            })
            .sum();
        assert!((counted - from_csv).abs() <= 1e-9 * counted);
        println!(
            "{}: counted {:.4} GFLOP, model {:.4} ({:+.2}%), model at tiles {:.4} ({:+.2}%), {} ops at tiles, {} not read",
            f.file,
            counted / 1e9,
            model / 1e9,
            100.0 * (counted / model - 1.0),
            at / 1e9,
            100.0 * (counted / at - 1.0),
            c.ops_at_tiles,
            c.ops_tiles_not_read
        );
        assert_eq!(c.ops_tiles_not_read, 0, "{}", f.file);
        assert!(
            counted / model - 1.0 > 0.2,
            "{}: the plain model's gap",
            f.file
        );
        assert!(
            (counted / at - 1.0).abs() < gap_at_most,
            "{}: counted {counted} against {at} at tiles",
            f.file
        );
    }
}

#[test]
fn an_unknown_kernel_keeps_the_plain_model() {
    // The qkv product's kernel renamed to a family tperf has not measured.
    let csv = csv_of(&F32_B16).replacen(
        "sm80_xmma_gemm_f32f32_f32f32_f32_tn_n_tilesize32x32x8",
        "sm90_xmma_gemm_f32f32_f32f32_f32_tn_n_tilesize32x32x8",
        1,
    );
    let a = analysis_of(&F32_B16);
    let c = CounterReport::join(&a, counters::parse_csv(&csv).unwrap());
    let qkv = &c.ops[1];
    assert_eq!(a.rows[1].label, "attn.qkv");
    assert!(qkv.tiles.is_none());
    assert!(
        qkv.tiles_not_read
            .as_deref()
            .is_some_and(|w| w.contains("tile not readable")),
        "{:?}",
        qkv.tiles_not_read
    );
    assert_eq!(qkv.model_at_tiles_flops, qkv.model_flops as f64);
    assert_eq!(
        qkv.verdict,
        Verdict::L2Resident,
        "the old verdict: 1.04× 2mnk"
    );
    assert_eq!(c.ops_tiles_not_read, 1);
    // A grid that does not fit the product is not read either (the attn.proj's on the qkv).
    let csv = csv_of(&F32_B16).replacen("\"(18, 19, 1)\"", "\"(18, 7, 1)\"", 1);
    let c = CounterReport::join(&a, counters::parse_csv(&csv).unwrap());
    assert!(c.ops[1].tiles.is_none());
    assert!(c.ops[1].tiles_not_read.as_deref().unwrap().contains("grid"));
}

#[test]
fn the_old_fixture_without_grids_keeps_the_plain_model() {
    // The small preset's CSV (2026-12-02) has no grid column: nothing is read at tiles, and its
    // products still match 2mnk.
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/ncu-small-forward-bf16.csv"
    ))
    .unwrap();
    let parsed = counters::parse_csv(&text).unwrap();
    assert!(parsed.kernels.iter().all(|k| k.grid.is_none()));
    let cfg = tperf_core::presets::find("small").unwrap().config;
    let sc = Scenario {
        workload: Workload::Forward,
        batch: 1,
        seq: 64,
        opts: Options {
            precision: Precision::Bf16,
            ..Options::default()
        },
    };
    let a = analysis::analyze(&cfg, &sc, &hardware::detect_local_cpu()).unwrap();
    let c = CounterReport::join(&a, parsed);
    assert_eq!(c.ops_at_tiles, 0);
    assert!(c.ops_tiles_not_read > 0);
    assert_eq!(c.model_at_tiles_flops, c.model_flops as f64);
}
