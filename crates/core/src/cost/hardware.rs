//! The hardware table: datasheet figures for accelerators and CPUs, each saying where its
//! numbers come from, plus the local CPU detected at run time.
//!
//! Conventions: `peak_*_flops` are dense (no 2:4 sparsity) FLOP/s, a FLOP being one add or one
//! multiply; `mem_bw_bytes_per_s` is the datasheet memory bandwidth; `link_bw_bytes_per_s` is the
//! per-device, per-direction bandwidth of the fastest device-to-device link (NVLink, Infinity
//! Fabric, PCIe), which the collective cost model uses.

use crate::dtype::DType;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    Gpu,
    Cpu,
}

/// Where an entry's ceilings come from, which every table and report quoting it says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Basis {
    /// The vendor's datasheet (the catalogue).
    #[default]
    Datasheet,
    /// Read from the running system (the local CPU's cores, clock and ISA).
    Detected,
    /// Reached on this machine by `tperf hw measure` and loaded with `--hw measured:PATH`.
    Measured,
}

impl Basis {
    pub const fn name(self) -> &'static str {
        match self {
            Basis::Datasheet => "datasheet",
            Basis::Detected => "detected",
            Basis::Measured => "measured",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hardware {
    /// Short lowercase name used on the command line: "h100-sxm", "a100-80gb", "cpu".
    pub key: String,
    /// Full name for tables: "NVIDIA H100 SXM5 80GB".
    pub name: String,
    pub kind: DeviceKind,
    pub memory_bytes: u64,
    pub mem_bw_bytes_per_s: f64,
    /// Plain fp32 (CUDA cores / SIMD FMA), not TF32.
    pub peak_f32_flops: f64,
    /// Dense matrix-unit rate with bf16 inputs and fp32 accumulation.
    pub peak_bf16_flops: f64,
    /// Dense matrix-unit rate with fp16 inputs and fp32 accumulation.
    pub peak_f16_flops: f64,
    pub link_bw_bytes_per_s: f64,
    /// Where the numbers come from (datasheet and its date, or "detected: …").
    pub source: String,
    /// Datasheet, detected or measured; absent in files written before it existed (datasheet).
    #[serde(default)]
    pub basis: Basis,
}

impl Hardware {
    /// The peak rate for arithmetic whose operands are `dtype`.
    pub fn peak_flops(&self, dtype: DType) -> f64 {
        match dtype {
            DType::F32 | DType::I32 => self.peak_f32_flops,
            DType::Bf16 => self.peak_bf16_flops,
            DType::F16 => self.peak_f16_flops,
        }
    }

    /// The arithmetic intensity (FLOP per byte) above which an op is compute-bound.
    pub fn ridge_point(&self, dtype: DType) -> f64 {
        self.peak_flops(dtype) / self.mem_bw_bytes_per_s
    }
}

/// Marketed accelerator memory sizes are binary: DRAM dies come in power-of-two densities, so
/// NVIDIA's "80GB" HBM3 is 80 GiB physical (nvidia-smi shows 81559 MiB after the driver's
/// reservation), AMD's "192 GB" is 192 GiB, and so on; read as 10^9 the visible sizes would exceed
/// the total. Every catalogue entry is therefore `N * GIB`: the physical size, before driver
/// reservations and (on GDDR parts with ECC on) the 1/16 that ECC takes.
const GIB: u64 = 1 << 30;
/// Bandwidths and rates, unlike sizes, are quoted in decimal units.
const GB: f64 = 1e9;
const TFLOPS: f64 = 1e12;

/// The key of the detected local CPU; not in the static table because it is read at run time.
pub const CPU_KEY: &str = "cpu";

/// Names people type for a catalogue key.
const ALIASES: &[(&str, &str)] = &[
    ("h100", "h100-sxm"),
    ("a100", "a100-80gb"),
    ("4090", "rtx4090"),
    ("rtx-4090", "rtx4090"),
    ("h200-sxm", "h200"),
];

/// One datasheet row; `Hardware` owns its strings, so the table is kept in this const form.
struct Spec {
    key: &'static str,
    name: &'static str,
    memory_bytes: u64,
    mem_bw: f64,
    f32: f64,
    bf16: f64,
    f16: f64,
    link: f64,
    source: &'static str,
}

// NVIDIA's Hopper, Ada and Blackwell datasheets quote tensor rates "with sparsity" (2:4 structured
// sparsity skips half the multiplies), so a dense matmul runs at half the quoted figure; the
// Ampere and Turing datasheets and the whitepapers quote dense figures directly. Link figures are
// per direction: NVIDIA and AMD quote the bidirectional total (NVLink 4: 18 links × 25 GB/s × 2
// directions = 900 GB/s), and a ring collective is limited by what one device can send.
const SPECS: &[Spec] = &[
    Spec {
        key: "a100-40gb",
        name: "NVIDIA A100 SXM4 40GB",
        memory_bytes: 40 * GIB,
        mem_bw: 1555.0 * GB,
        f32: 19.5 * TFLOPS,
        bf16: 312.0 * TFLOPS,
        f16: 312.0 * TFLOPS,
        link: 300.0 * GB,
        source: "NVIDIA A100 Tensor Core GPU datasheet (2020) and NVIDIA A100 Tensor Core GPU \
                 Architecture whitepaper (2020), SXM4 40GB; dense figures as quoted (sparse = 2x); \
                 link = NVLink 3, 600 GB/s total / 2 directions",
    },
    Spec {
        key: "a100-80gb",
        name: "NVIDIA A100 SXM4 80GB",
        memory_bytes: 80 * GIB,
        mem_bw: 2039.0 * GB,
        f32: 19.5 * TFLOPS,
        bf16: 312.0 * TFLOPS,
        f16: 312.0 * TFLOPS,
        link: 300.0 * GB,
        source: "NVIDIA A100 Tensor Core GPU datasheet (2021), 80GB SXM column; dense figures as \
                 quoted (sparse = 2x); link = NVLink 3, 600 GB/s total / 2 directions",
    },
    Spec {
        key: "h100-sxm",
        name: "NVIDIA H100 SXM5 80GB",
        memory_bytes: 80 * GIB,
        mem_bw: 3350.0 * GB,
        f32: 67.0 * TFLOPS,
        bf16: 989.5 * TFLOPS,
        f16: 989.5 * TFLOPS,
        link: 450.0 * GB,
        source: "NVIDIA H100 Tensor Core GPU datasheet (2023), H100 SXM column; dense figures = \
                 half the sparse 1,979 TFLOPS quoted (whitepaper: 989.4); link = NVLink 4, \
                 900 GB/s total / 2 directions",
    },
    Spec {
        key: "h100-pcie",
        name: "NVIDIA H100 PCIe 80GB",
        memory_bytes: 80 * GIB,
        mem_bw: 2000.0 * GB,
        f32: 51.0 * TFLOPS,
        bf16: 756.5 * TFLOPS,
        f16: 756.5 * TFLOPS,
        link: 64.0 * GB,
        source: "NVIDIA H100 Tensor Core GPU datasheet (2023), H100 PCIe column; dense figures = \
                 half the sparse 1,513 TFLOPS quoted; link = PCIe Gen5 x16, 128 GB/s total / 2 \
                 (the optional 600 GB/s NVLink bridge joins pairs only, so collectives over more \
                 cards run at PCIe speed)",
    },
    Spec {
        key: "h100-nvl",
        name: "NVIDIA H100 NVL 94GB",
        memory_bytes: 94 * GIB,
        mem_bw: 3900.0 * GB,
        f32: 60.0 * TFLOPS,
        bf16: 835.5 * TFLOPS,
        f16: 835.5 * TFLOPS,
        link: 64.0 * GB,
        source: "NVIDIA H100 Tensor Core GPU datasheet (2023), H100 NVL column (per card); dense \
                 figures = half the sparse 1,671 TFLOPS quoted; link = PCIe Gen5 x16, 128 GB/s \
                 total / 2 (the 600 GB/s NVLink bridge joins pairs only)",
    },
    Spec {
        key: "h200",
        name: "NVIDIA H200 SXM 141GB",
        memory_bytes: 141 * GIB,
        mem_bw: 4800.0 * GB,
        f32: 67.0 * TFLOPS,
        bf16: 989.5 * TFLOPS,
        f16: 989.5 * TFLOPS,
        link: 450.0 * GB,
        source: "NVIDIA H200 Tensor Core GPU datasheet (2024), H200 SXM column; dense figures = \
                 half the sparse 1,979 TFLOPS quoted; link = NVLink 4, 900 GB/s total / 2 \
                 directions",
    },
    Spec {
        key: "b200",
        name: "NVIDIA B200 180GB (HGX)",
        memory_bytes: 180 * GIB,
        mem_bw: 8000.0 * GB,
        f32: 75.0 * TFLOPS,
        bf16: 2250.0 * TFLOPS,
        f16: 2250.0 * TFLOPS,
        link: 900.0 * GB,
        source:
            "NVIDIA HGX B200 / DGX B200 datasheets (2024), per GPU = 8-GPU totals / 8 (1,000 W \
                 configuration; GB200 parts run faster); dense figures = half the sparse \
                 4.5 PFLOPS per GPU; link = NVLink 5, 1.8 TB/s total / 2 directions",
    },
    Spec {
        key: "l4",
        name: "NVIDIA L4 24GB",
        memory_bytes: 24 * GIB,
        mem_bw: 300.0 * GB,
        f32: 30.3 * TFLOPS,
        bf16: 121.0 * TFLOPS,
        f16: 121.0 * TFLOPS,
        link: 32.0 * GB,
        source: "NVIDIA L4 Tensor Core GPU datasheet (2023); dense figures = half the sparse \
                 242 TFLOPS quoted (data-centre Ada runs fp32 accumulate at full rate, per the \
                 Ada Lovelace whitepaper); link = PCIe Gen4 x16, 64 GB/s total / 2",
    },
    Spec {
        key: "t4",
        name: "NVIDIA T4 16GB",
        memory_bytes: 16 * GIB,
        mem_bw: 320.0 * GB,
        f32: 8.1 * TFLOPS,
        // Turing has no bf16 datapath; bf16 work falls back to (at best) fp32 arithmetic, so the
        // fp32 rate is the honest ceiling.
        bf16: 8.1 * TFLOPS,
        f16: 65.0 * TFLOPS,
        link: 16.0 * GB,
        source: "NVIDIA T4 Tensor Core GPU datasheet (2019); fp16 = the 65 TFLOPS mixed-precision \
                 (fp16 in, fp32 accumulate) figure, dense (Turing has no sparsity); no bf16 \
                 support, so bf16 = the fp32 rate; link = PCIe Gen3 x16, 32 GB/s total / 2",
    },
    Spec {
        key: "rtx4090",
        name: "NVIDIA GeForce RTX 4090 24GB",
        memory_bytes: 24 * GIB,
        mem_bw: 1008.0 * GB,
        f32: 82.6 * TFLOPS,
        bf16: 165.2 * TFLOPS,
        f16: 165.2 * TFLOPS,
        link: 32.0 * GB,
        source: "NVIDIA Ada Lovelace GPU Architecture whitepaper (2022), RTX 4090 column; dense \
                 fp16/bf16 with fp32 accumulate = 165.2 TFLOPS (GeForce runs fp32 accumulate at \
                 half rate; the 330 figure is fp16 accumulate, 660 with sparsity); link = PCIe \
                 Gen4 x16, 64 GB/s total / 2 (no NVLink, and peer-to-peer is disabled on \
                 GeForce, so real transfers stage through host memory and are slower)",
    },
    Spec {
        key: "mi250x",
        name: "AMD Instinct MI250X 128GB",
        memory_bytes: 128 * GIB,
        mem_bw: 3276.8 * GB,
        // The packed-fp32 / fp32-matrix rate: full fp32 precision, and what rocBLAS sgemm runs
        // at; unpacked vector code gets half (47.9 TFLOPS).
        f32: 95.7 * TFLOPS,
        bf16: 383.0 * TFLOPS,
        f16: 383.0 * TFLOPS,
        link: 400.0 * GB,
        source: "AMD Instinct MI250X accelerator data sheet (2021) and CDNA 2 whitepaper; whole \
                 OAM (two GCDs, shown by ROCm as two 64 GiB devices); memory bandwidth = the \
                 exact form of the quoted 3.2 TB/s; fp32 = packed/matrix 95.7 TFLOPS (unpacked \
                 vector 47.9); fp16/bf16 dense as quoted (CDNA 2 has no sparsity); link = 8 \
                 Infinity Fabric links × 50 GB/s per direction (800 GB/s aggregate / 2)",
    },
    Spec {
        key: "mi300x",
        name: "AMD Instinct MI300X 192GB",
        memory_bytes: 192 * GIB,
        mem_bw: 5300.0 * GB,
        // As for the MI250X: AMD's vector fp32 figure counts packed fp32, equal to the fp32
        // matrix rate; unpacked vector code gets half (81.7 TFLOPS).
        f32: 163.4 * TFLOPS,
        bf16: 1307.4 * TFLOPS,
        f16: 1307.4 * TFLOPS,
        link: 448.0 * GB,
        source: "AMD Instinct MI300X accelerator data sheet (2023) and CDNA 3 whitepaper; dense \
                 fp16/bf16 = 1,307.4 TFLOPS as quoted (2,614.9 is with sparsity); fp32 = the \
                 163.4 TFLOPS vector/matrix figure (unpacked 81.7); link = 7 Infinity Fabric \
                 links × 64 GB/s per direction (896 GB/s aggregate / 2), spread over 7 peers in \
                 a fully connected 8-GPU mesh",
    },
];

/// Datasheet entries for the accelerators tperf knows, in the order of `SPECS`.
pub fn catalogue() -> Vec<Hardware> {
    SPECS
        .iter()
        .map(|s| Hardware {
            key: s.key.to_string(),
            name: s.name.to_string(),
            kind: DeviceKind::Gpu,
            memory_bytes: s.memory_bytes,
            mem_bw_bytes_per_s: s.mem_bw,
            peak_f32_flops: s.f32,
            peak_bf16_flops: s.bf16,
            peak_f16_flops: s.f16,
            link_bw_bytes_per_s: s.link,
            source: s.source.to_string(),
            basis: Basis::Datasheet,
        })
        .collect()
}

/// Every key `find` accepts besides aliases: the catalogue's plus the detected CPU's.
pub fn known_keys() -> Vec<String> {
    SPECS
        .iter()
        .map(|s| s.key.to_string())
        .chain(std::iter::once(CPU_KEY.to_string()))
        .collect()
}

/// A hardware name that is neither a key nor an alias.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown hardware `{name}`{hint}; known hardware: {known}",
    hint = did_you_mean(.suggestion),
    known = .known.join(", ")
)]
pub struct UnknownHardware {
    /// What was asked for, as typed.
    pub name: String,
    /// The canonical key nearest to `name`, if any is a plausible typo.
    pub suggestion: Option<String>,
    pub known: Vec<String>,
}

fn did_you_mean(suggestion: &Option<String>) -> String {
    match suggestion {
        Some(key) => format!(" (did you mean `{key}`?)"),
        None => String::new(),
    }
}

impl UnknownHardware {
    fn new(name: &str) -> Self {
        let known = known_keys();
        // Aliases are candidates too: "h10O" is one edit from "h100" but five from "h100-sxm".
        let candidates = known
            .iter()
            .map(String::as_str)
            .chain(ALIASES.iter().map(|&(alias, _)| alias));
        let suggestion = crate::suggest::nearest(name.trim(), candidates)
            .map(|hit| resolve_alias(hit).to_string());
        UnknownHardware {
            name: name.to_string(),
            suggestion,
            known,
        }
    }
}

fn resolve_alias(name: &str) -> &str {
    ALIASES
        .iter()
        .find(|&&(alias, _)| alias == name)
        .map_or(name, |&(_, key)| key)
}

/// Looks hardware up by key or alias, ignoring case; "cpu" detects the local CPU.
pub fn find(key: &str) -> Result<Hardware, UnknownHardware> {
    let wanted = key.trim().to_lowercase();
    let canonical = resolve_alias(&wanted);
    if canonical == CPU_KEY {
        return Ok(detect_local_cpu());
    }
    catalogue()
        .into_iter()
        .find(|hw| hw.key == canonical)
        .ok_or_else(|| UnknownHardware::new(key))
}

/// The catalogue entry for a GPU as its driver names it ("NVIDIA H100 80GB HBM3"), or None when
/// the catalogue has no such GPU. The memory size is the driver's, so the entry's capacity is
/// what this very card has.
pub fn match_gpu_name(name: &str, memory_bytes: u64) -> Option<Hardware> {
    let n = name.to_lowercase();
    let key = if n.contains("h100") {
        if n.contains("pcie") {
            "h100-pcie"
        } else if n.contains("nvl") {
            "h100-nvl"
        } else {
            "h100-sxm"
        }
    } else if n.contains("h200") {
        "h200"
    } else if n.contains("b200") {
        "b200"
    } else if n.contains("a100") {
        if memory_bytes > 48 * GIB {
            "a100-80gb"
        } else {
            "a100-40gb"
        }
    } else if n.contains(" l4") {
        "l4"
    } else if n.contains("t4") {
        "t4"
    } else if n.contains("4090") {
        "rtx4090"
    } else {
        return None;
    };
    let mut hw = catalogue().into_iter().find(|h| h.key == key)?;
    hw.memory_bytes = memory_bytes;
    hw.source = format!("{} (matched from the device name '{name}')", hw.source);
    Some(hw)
}

// ---------------------------------------------------------------------------------------------
// The local CPU.

/// What the CPU backend can assume when nothing can be read: low enough not to flatter it.
const FALLBACK_CLOCK_HZ: f64 = 2.0e9;
const FALLBACK_MEMORY_BYTES: u64 = 4 * GIB;
/// A rough per-core share of DRAM bandwidth on current servers and desktops; one core alone
/// rarely streams more, and the cap is about what a desktop's two or a small server's few
/// channels deliver. Only an estimate: this function does not measure.
const BW_PER_CORE: f64 = 10.0 * GB;
const BW_CAP: f64 = 100.0 * GB;

/// What /proc/cpuinfo says about the first processor (all cores share one model on the
/// machines we target; hybrid parts share one flag set).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CpuInfo {
    pub model_name: Option<String>,
    pub vendor_id: Option<String>,
    pub cpu_family: Option<u32>,
    /// x86 "flags" or aarch64 "Features".
    pub flags: Vec<String>,
    /// The current clock (x86 only), which can be an idle frequency.
    pub mhz: Option<f64>,
    /// Logical CPUs per package ("siblings") and physical cores per package ("cpu cores"),
    /// whose ratio is the SMT width.
    pub siblings: Option<u32>,
    pub cpu_cores: Option<u32>,
}

/// Parses /proc/cpuinfo text, keeping the first value of each field.
pub fn parse_cpuinfo(text: &str) -> CpuInfo {
    let mut info = CpuInfo::default();
    let mut have_flags = false;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key.trim() {
            "model name" if info.model_name.is_none() && !value.is_empty() => {
                info.model_name = Some(value.to_string());
            }
            "vendor_id" if info.vendor_id.is_none() => info.vendor_id = Some(value.to_string()),
            "cpu family" if info.cpu_family.is_none() => info.cpu_family = value.parse().ok(),
            "flags" | "Features" if !have_flags => {
                info.flags = value.split_whitespace().map(str::to_string).collect();
                have_flags = true;
            }
            "cpu MHz" if info.mhz.is_none() => {
                info.mhz = value
                    .parse()
                    .ok()
                    .filter(|m: &f64| m.is_finite() && *m > 0.0);
            }
            "siblings" if info.siblings.is_none() => info.siblings = value.parse().ok(),
            "cpu cores" if info.cpu_cores.is_none() => info.cpu_cores = value.parse().ok(),
            _ => {}
        }
    }
    info
}

/// Parses `MemTotal` from /proc/meminfo into bytes (its "kB" are KiB).
pub fn parse_meminfo_total(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line
        .trim_start_matches("MemTotal:")
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    kib.checked_mul(1024).filter(|&b| b > 0)
}

/// Parses cpufreq's `cpuinfo_max_freq` (kHz) into Hz.
pub fn parse_max_freq_khz(text: &str) -> Option<f64> {
    let khz: u64 = text.trim().parse().ok()?;
    (khz > 0).then_some(khz as f64 * 1e3)
}

/// The widest f32 FMA path the flags promise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VectorIsa {
    Avx512,
    /// Zen 4 accepts AVX-512 but executes it on 256-bit datapaths, so it peaks like AVX2.
    Avx512On256,
    Avx2Fma,
    /// aarch64 Advanced SIMD (128-bit).
    Neon,
    /// Anything else: 128-bit SSE without FMA, or an unknown architecture.
    Baseline,
}

impl VectorIsa {
    pub fn from_cpuinfo(info: &CpuInfo) -> Self {
        let has = |flag: &str| info.flags.iter().any(|f| f == flag);
        // Family 25 (0x19) is Zen 3 and Zen 4; only Zen 4 has AVX-512. Zen 5 (family 26) has
        // full-width 512-bit datapaths on server and desktop parts.
        let zen4 = info.vendor_id.as_deref() == Some("AuthenticAMD") && info.cpu_family == Some(25);
        if has("avx512f") {
            if zen4 {
                VectorIsa::Avx512On256
            } else {
                VectorIsa::Avx512
            }
        } else if has("avx2") && has("fma") {
            VectorIsa::Avx2Fma
        } else if has("asimd") {
            VectorIsa::Neon
        } else {
            VectorIsa::Baseline
        }
    }

    /// f32 lanes per FMA unit (effective, for Zen 4's AVX-512).
    pub fn f32_lanes(self) -> u32 {
        match self {
            VectorIsa::Avx512 => 16,
            VectorIsa::Avx512On256 | VectorIsa::Avx2Fma => 8,
            VectorIsa::Neon | VectorIsa::Baseline => 4,
        }
    }

    /// FMA units per core. Two for AVX2/AVX-512: ports 0 and 1 (5 on Skylake-SP Gold/Platinum)
    /// on Intel since Haswell, two FMA pipes on Zen; this overstates Xeon Bronze/Silver and
    /// client Ice Lake, which have one 512-bit FMA. Two 128-bit pipes on the common Cortex-A7x
    /// and Neoverse N cores (Neoverse V and Apple cores have four, so they are understated).
    /// One for SSE-only x86, which has a separate multiplier and adder: one FMA's worth.
    pub fn fma_units(self) -> u32 {
        match self {
            VectorIsa::Baseline => 1,
            _ => 2,
        }
    }

    fn label(self) -> &'static str {
        match self {
            VectorIsa::Avx512 => "AVX-512 FMA",
            VectorIsa::Avx512On256 => "AVX-512 on 256-bit datapaths (Zen 4) FMA",
            VectorIsa::Avx2Fma => "AVX2 FMA",
            VectorIsa::Neon => "NEON FMA",
            VectorIsa::Baseline => "128-bit SIMD, no FMA",
        }
    }
}

/// What `detect_local_cpu` could read from the system; `None` where it could not.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CpuProbe {
    pub cpuinfo: Option<CpuInfo>,
    pub logical_cpus: Option<usize>,
    pub max_freq_hz: Option<f64>,
    pub mem_total_bytes: Option<u64>,
}

/// Builds the CPU's `Hardware` from what was read, filling gaps with conservative defaults and
/// saying so in `source`.
pub fn cpu_from_probe(probe: &CpuProbe) -> Hardware {
    let mut notes: Vec<String> = Vec::new();
    let info = match &probe.cpuinfo {
        Some(info) => info.clone(),
        None => {
            notes.push("no /proc/cpuinfo: no SIMD assumed".to_string());
            CpuInfo::default()
        }
    };
    let model = info
        .model_name
        .clone()
        .unwrap_or_else(|| "unknown CPU".to_string());
    let isa = VectorIsa::from_cpuinfo(&info);

    let logical = match probe.logical_cpus.filter(|&n| n > 0) {
        Some(n) => n,
        None => {
            notes.push("core count unknown, assumed 1".to_string());
            1
        }
    };
    // SMT siblings share their core's FMA units, so logical CPUs overstate peak FLOPs by the SMT
    // width. available_parallelism counts logical CPUs (respecting affinity and cgroup quotas).
    let smt = match (info.siblings, info.cpu_cores) {
        (Some(s), Some(c)) if c > 0 && s >= c => (s / c).max(1) as usize,
        _ => 1,
    };
    let cores = logical.div_ceil(smt).max(1);
    let cores_text = if smt > 1 {
        format!("{cores} cores ({logical} logical CPUs, {smt}-way SMT)")
    } else {
        format!("{cores} cores")
    };

    // The maximum frequency beats cpuinfo's "cpu MHz", which is whatever the core ran at when
    // read (often an idle clock under frequency scaling).
    let clock_hz = match (probe.max_freq_hz, info.mhz) {
        (Some(hz), _) if hz.is_finite() && hz > 0.0 => hz,
        (_, Some(mhz)) if mhz.is_finite() && mhz > 0.0 => mhz * 1e6,
        _ => {
            notes.push(format!(
                "clock unknown, assumed {:.1} GHz",
                FALLBACK_CLOCK_HZ / 1e9
            ));
            FALLBACK_CLOCK_HZ
        }
    };

    let memory_bytes = match probe.mem_total_bytes.filter(|&b| b > 0) {
        Some(b) => b,
        None => {
            notes.push(format!(
                "memory unknown, assumed {} GiB",
                FALLBACK_MEMORY_BYTES / GIB
            ));
            FALLBACK_MEMORY_BYTES
        }
    };

    let fma_flops = 2.0; // one FMA = one multiply + one add
    let peak_f32 = cores as f64
        * clock_hz
        * f64::from(isa.f32_lanes())
        * fma_flops
        * f64::from(isa.fma_units());

    let has = |flag: &str| info.flags.iter().any(|f| f == flag);
    if has("avx512_bf16") || has("amx_bf16") || has("bf16") {
        notes.push(
            "bf16 instructions present but unused: the CPU backend computes in f32".to_string(),
        );
    }

    let mem_bw = (cores as f64 * BW_PER_CORE).min(BW_CAP);
    let mut source = format!(
        "detected: {model}, {cores_text} @ {:.2} GHz, {} ×{}; bandwidth estimated \
         ({} GB/s per core, capped at {} GB/s)",
        clock_hz / 1e9,
        isa.label(),
        isa.fma_units(),
        BW_PER_CORE / GB,
        BW_CAP / GB,
    );
    for note in &notes {
        source.push_str("; ");
        source.push_str(note);
    }

    Hardware {
        key: CPU_KEY.to_string(),
        name: model,
        kind: DeviceKind::Cpu,
        memory_bytes,
        mem_bw_bytes_per_s: mem_bw,
        peak_f32_flops: peak_f32,
        // The CPU backend computes in f32 whatever the storage type, so narrower types gain no
        // arithmetic rate, only bandwidth.
        peak_bf16_flops: peak_f32,
        peak_f16_flops: peak_f32,
        // Ranks on one host exchange through DRAM, where each byte moved is read once and written
        // once.
        link_bw_bytes_per_s: mem_bw / 2.0,
        source,
        basis: Basis::Detected,
    }
}

/// Reads what the system says about the local CPU. Never panics: unreadable files are `None`.
pub fn probe_local_cpu() -> CpuProbe {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let logical_cpus = std::thread::available_parallelism().ok().map(|n| n.get());
    if cfg!(target_os = "linux") {
        CpuProbe {
            cpuinfo: read("/proc/cpuinfo").map(|t| parse_cpuinfo(&t)),
            logical_cpus,
            max_freq_hz: read("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
                .and_then(|t| parse_max_freq_khz(&t)),
            mem_total_bytes: read("/proc/meminfo").and_then(|t| parse_meminfo_total(&t)),
        }
    } else {
        CpuProbe {
            logical_cpus,
            ..CpuProbe::default()
        }
    }
}

/// The local CPU as a `Hardware` entry, with key "cpu".
pub fn detect_local_cpu() -> Hardware {
    let mut hw = cpu_from_probe(&probe_local_cpu());
    if !cfg!(target_os = "linux") {
        hw.source
            .push_str("; not Linux: nothing read, conservative defaults used");
    }
    hw
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sapphire Rapids with Hyper-Threading: AVX-512, AMX and bf16, 2-way SMT, cpufreq absent.
    const XEON_AVX512: &str = "\
processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 143
model name\t: Intel(R) Xeon(R) Platinum 8488C
stepping\t: 8
cpu MHz\t\t: 2400.000
cache size\t: 107520 KB
physical id\t: 0
siblings\t: 96
core id\t\t: 0
cpu cores\t: 48
flags\t\t: fpu vme de pse tsc msr pae sse sse2 ht ssse3 fma cx16 sse4_1 sse4_2 avx f16c avx2 bmi2 avx512f avx512dq avx512cd avx512bw avx512vl avx512_bf16 amx_bf16 amx_tile amx_int8
bogomips\t: 4800.00

processor\t: 1
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8488C
cpu MHz\t\t: 800.000
flags\t\t: fpu sse sse2
";

    /// Zen 3 EPYC: AVX2 + FMA, no SMT visible to the guest.
    const EPYC_AVX2: &str = "\
processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC 7R13 Processor
cpu MHz\t\t: 2649.998
siblings\t: 8
cpu cores\t: 8
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sse sse2 ht syscall nx mmxext fxsr_opt pdpe1gb rdtscp lm pni pclmulqdq ssse3 fma cx16 sse4_1 sse4_2 movbe popcnt aes xsave avx f16c rdrand hypervisor lahf_lm cmp_legacy abm sse4a misalignsse 3dnowprefetch bmi1 avx2 smep bmi2
";

    /// Zen 4 EPYC: advertises AVX-512 but runs it on 256-bit datapaths.
    const EPYC_ZEN4: &str = "\
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC 9R14 96-Core Processor
cpu MHz\t\t: 2600.000
siblings\t: 2
cpu cores\t: 1
flags\t\t: fpu sse sse2 fma avx avx2 avx512f avx512dq avx512_bf16
";

    /// Graviton2 (Neoverse N1): no model name, no MHz, "Features" instead of "flags".
    const AARCH64: &str = "\
processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x3
CPU part\t: 0xd0c
CPU revision\t: 1

processor\t: 1
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs
";

    const MEMINFO: &str = "\
MemTotal:       24683656 kB
MemFree:        23954644 kB
MemAvailable:   24398076 kB
";

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
    }

    #[test]
    fn catalogue_figures_are_positive_finite_and_sourced() {
        let cat = catalogue();
        assert_eq!(cat.len(), 12);
        for hw in &cat {
            assert!(hw.memory_bytes > 0, "{}", hw.key);
            for (what, v) in [
                ("mem bw", hw.mem_bw_bytes_per_s),
                ("f32", hw.peak_f32_flops),
                ("bf16", hw.peak_bf16_flops),
                ("f16", hw.peak_f16_flops),
                ("link", hw.link_bw_bytes_per_s),
            ] {
                assert!(v.is_finite() && v > 0.0, "{} {what} = {v}", hw.key);
            }
            assert!(!hw.source.trim().is_empty(), "{}", hw.key);
            assert!(!hw.name.trim().is_empty(), "{}", hw.key);
            assert_eq!(hw.kind, DeviceKind::Gpu);
            // Matrix units never lose to plain fp32, and links are slower than local memory.
            assert!(hw.peak_bf16_flops >= hw.peak_f32_flops, "{}", hw.key);
            assert!(hw.peak_f16_flops >= hw.peak_f32_flops, "{}", hw.key);
            assert!(hw.link_bw_bytes_per_s < hw.mem_bw_bytes_per_s, "{}", hw.key);
        }
    }

    #[test]
    fn keys_are_unique_lowercase_and_aliases_do_not_shadow_them() {
        let keys = known_keys();
        let mut sorted = keys.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), keys.len(), "duplicate keys in {keys:?}");
        for key in &keys {
            assert_eq!(key, &key.to_lowercase());
            assert!(!key.contains(char::is_whitespace), "{key}");
        }
        for &(alias, target) in ALIASES {
            assert_eq!(alias, alias.to_lowercase());
            assert!(
                !keys.iter().any(|k| k == alias),
                "alias {alias} shadows a key"
            );
            assert!(
                keys.iter().any(|k| k == target),
                "alias {alias} → missing {target}"
            );
        }
    }

    #[test]
    fn memory_sizes_are_marketed_gib() {
        let h100 = find("h100-sxm").expect("h100-sxm");
        assert_eq!(h100.memory_bytes, 80 * 1024 * 1024 * 1024);
        // nvidia-smi's visible 81559 MiB must fit in what we call the physical size.
        assert!(h100.memory_bytes >= 81559 * 1024 * 1024);
    }

    #[test]
    fn ridge_points_are_sane() {
        let h100 = find("h100-sxm").expect("h100-sxm");
        let ridge = h100.ridge_point(DType::Bf16);
        assert!((200.0..400.0).contains(&ridge), "H100 bf16 ridge {ridge}");
        for hw in catalogue() {
            let bf16 = hw.ridge_point(DType::Bf16);
            let f32 = hw.ridge_point(DType::F32);
            assert!(
                (10.0..1000.0).contains(&bf16),
                "{} bf16 ridge {bf16}",
                hw.key
            );
            assert!((1.0..200.0).contains(&f32), "{} f32 ridge {f32}", hw.key);
        }
    }

    #[test]
    fn dense_figures_are_half_the_sparse_ones() {
        let h100 = find("h100-sxm").expect("h100-sxm");
        assert!(close(h100.peak_bf16_flops * 2.0, 1979e12));
        let rtx = find("rtx4090").expect("rtx4090");
        assert!(close(rtx.peak_f16_flops, 165.2e12));
        let t4 = find("t4").expect("t4");
        assert!(close(t4.peak_bf16_flops, t4.peak_f32_flops));
    }

    #[test]
    fn find_is_case_insensitive_and_knows_aliases() {
        assert_eq!(find("H100").expect("H100").key, "h100-sxm");
        assert_eq!(find(" A100 ").expect("A100").key, "a100-80gb");
        assert_eq!(find("4090").expect("4090").key, "rtx4090");
        assert_eq!(find("MI300X").expect("MI300X").key, "mi300x");
        assert_eq!(find("CPU").expect("CPU").key, CPU_KEY);
    }

    #[test]
    fn find_suggests_the_nearest_key() {
        let err = find("h10O").expect_err("h10O is not hardware");
        assert_eq!(err.suggestion.as_deref(), Some("h100-sxm"));
        let msg = err.to_string();
        assert!(msg.contains("h10O"), "{msg}");
        assert!(msg.contains("did you mean `h100-sxm`"), "{msg}");
        assert!(msg.contains("mi300x") && msg.contains("cpu"), "{msg}");

        let err = find("mi300").expect_err("mi300 is not a key");
        assert_eq!(err.suggestion.as_deref(), Some("mi300x"));

        let err = find("zzzzzzzzzzzzzz").expect_err("nonsense");
        assert_eq!(err.suggestion, None);
        assert!(!err.to_string().contains("did you mean"));
    }

    #[test]
    fn parses_avx512_xeon() {
        let info = parse_cpuinfo(XEON_AVX512);
        assert_eq!(
            info.model_name.as_deref(),
            Some("Intel(R) Xeon(R) Platinum 8488C")
        );
        // The first processor's values win over later ones.
        assert_eq!(info.mhz, Some(2400.0));
        assert_eq!((info.siblings, info.cpu_cores), (Some(96), Some(48)));
        assert_eq!(VectorIsa::from_cpuinfo(&info), VectorIsa::Avx512);

        let hw = cpu_from_probe(&CpuProbe {
            cpuinfo: Some(info),
            logical_cpus: Some(96),
            max_freq_hz: None,
            mem_total_bytes: Some(64 * GIB),
        });
        // 48 physical cores × 2.4 GHz × 16 lanes × 2 FLOP × 2 FMA units.
        assert!(close(hw.peak_f32_flops, 48.0 * 2.4e9 * 16.0 * 2.0 * 2.0));
        assert!(close(hw.peak_bf16_flops, hw.peak_f32_flops));
        assert!(close(hw.mem_bw_bytes_per_s, 100e9), "capped");
        assert_eq!(hw.memory_bytes, 64 * GIB);
        assert!(hw.source.contains("48 cores (96 logical CPUs, 2-way SMT)"));
        assert!(hw.source.contains("AVX-512 FMA ×2"), "{}", hw.source);
        assert!(hw.source.contains("unused"), "{}", hw.source);
    }

    #[test]
    fn parses_avx2_epyc() {
        let info = parse_cpuinfo(EPYC_AVX2);
        assert_eq!(info.model_name.as_deref(), Some("AMD EPYC 7R13 Processor"));
        assert_eq!(info.cpu_family, Some(25));
        assert_eq!(VectorIsa::from_cpuinfo(&info), VectorIsa::Avx2Fma);

        // cpufreq's maximum beats cpuinfo's current MHz.
        let max = parse_max_freq_khz("3600000\n");
        assert_eq!(max, Some(3.6e9));
        let hw = cpu_from_probe(&CpuProbe {
            cpuinfo: Some(info),
            logical_cpus: Some(8),
            max_freq_hz: max,
            mem_total_bytes: parse_meminfo_total(MEMINFO),
        });
        assert!(close(hw.peak_f32_flops, 8.0 * 3.6e9 * 8.0 * 2.0 * 2.0));
        assert!(close(hw.mem_bw_bytes_per_s, 80e9));
        assert_eq!(hw.memory_bytes, 24683656 * 1024);
        assert!(
            hw.source
                .starts_with("detected: AMD EPYC 7R13 Processor, 8 cores @ 3.60 GHz, AVX2 FMA ×2;"),
            "{}",
            hw.source
        );
    }

    #[test]
    fn zen4_avx512_counts_as_256_bit() {
        let info = parse_cpuinfo(EPYC_ZEN4);
        assert_eq!(VectorIsa::from_cpuinfo(&info), VectorIsa::Avx512On256);
        let hw = cpu_from_probe(&CpuProbe {
            cpuinfo: Some(info),
            logical_cpus: Some(2),
            max_freq_hz: None,
            mem_total_bytes: Some(8 * GIB),
        });
        // One physical core (2-way SMT) × 2.6 GHz × 8 lanes × 2 FLOP × 2 units.
        assert!(close(hw.peak_f32_flops, 2.6e9 * 8.0 * 2.0 * 2.0));
    }

    #[test]
    fn parses_aarch64_without_x86_flags() {
        let info = parse_cpuinfo(AARCH64);
        assert_eq!(info.model_name, None);
        assert_eq!(info.mhz, None);
        assert!(info.flags.iter().any(|f| f == "asimd"));
        assert_eq!(VectorIsa::from_cpuinfo(&info), VectorIsa::Neon);

        let hw = cpu_from_probe(&CpuProbe {
            cpuinfo: Some(info.clone()),
            logical_cpus: Some(2),
            max_freq_hz: parse_max_freq_khz("2500000"),
            mem_total_bytes: Some(4 * GIB),
        });
        assert!(close(hw.peak_f32_flops, 2.0 * 2.5e9 * 4.0 * 2.0 * 2.0));
        assert!(hw.source.contains("unknown CPU"), "{}", hw.source);

        // No clock anywhere: the fallback is used and said.
        let hw = cpu_from_probe(&CpuProbe {
            cpuinfo: Some(info),
            logical_cpus: Some(2),
            max_freq_hz: None,
            mem_total_bytes: None,
        });
        assert!(close(hw.peak_f32_flops, 2.0 * 2.0e9 * 4.0 * 2.0 * 2.0));
        assert!(hw.source.contains("clock unknown"), "{}", hw.source);
        assert!(hw.source.contains("memory unknown"), "{}", hw.source);
    }

    #[test]
    fn garbage_and_nothing_fall_back_without_panicking() {
        assert_eq!(parse_cpuinfo(""), CpuInfo::default());
        let info = parse_cpuinfo("cpu MHz : fast\nsiblings : many\n:::\nflags\n");
        assert_eq!(info.mhz, None);
        assert_eq!(info.siblings, None);
        assert_eq!(parse_meminfo_total("MemTotal: lots kB"), None);
        assert_eq!(parse_meminfo_total(""), None);
        assert_eq!(parse_max_freq_khz("0"), None);
        assert_eq!(parse_max_freq_khz("-5"), None);

        let hw = cpu_from_probe(&CpuProbe::default());
        assert!(hw.peak_f32_flops > 0.0 && hw.mem_bw_bytes_per_s > 0.0);
        assert_eq!(hw.memory_bytes, FALLBACK_MEMORY_BYTES);
        // 1 core × 2 GHz × 4 lanes × 2 FLOP × 1 unit.
        assert!(close(hw.peak_f32_flops, 16e9));
        assert!(hw.source.contains("core count unknown"), "{}", hw.source);
    }

    #[test]
    fn detects_this_machine() {
        let hw = detect_local_cpu();
        assert_eq!(hw.key, CPU_KEY);
        assert_eq!(hw.kind, DeviceKind::Cpu);
        assert!(hw.memory_bytes > 0);
        for v in [
            hw.mem_bw_bytes_per_s,
            hw.peak_f32_flops,
            hw.peak_bf16_flops,
            hw.peak_f16_flops,
            hw.link_bw_bytes_per_s,
        ] {
            assert!(v.is_finite() && v > 0.0, "{hw:?}");
        }
        assert!(hw.source.starts_with("detected: "), "{}", hw.source);
    }
}
