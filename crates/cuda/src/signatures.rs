//! Every kernel's parameter list, declared once. `Gpu::launch` checks each launch against it,
//! because the driver does not: cuLaunchKernel reads as many parameter slots as the kernel
//! declares, so a missing or mistyped argument is undefined behaviour on the device rather than
//! an error. The tests check this table against the `extern "C" __global__` signatures parsed
//! from `kernels/*.cu`, and every launch site in `ops/` that names its kernel and builds its
//! arguments as an array literal against the table (count, and kind where the expression says),
//! so that neither side can change alone without a CPU test failing.

use crate::gpu::Arg;

/// A kernel parameter as `Params` lays it out: the `Buf` struct of common.cuh, a scalar, or a
/// raw device pointer (`float*`, `const int*`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgKind {
    Buf,
    I64,
    /// `int`.
    I32,
    F32,
    /// `double`.
    F64,
    Ptr,
}

impl Arg {
    pub fn kind(&self) -> ArgKind {
        match self {
            Arg::Buf(..) => ArgKind::Buf,
            Arg::I64(_) => ArgKind::I64,
            Arg::I32(_) => ArgKind::I32,
            Arg::F32(_) => ArgKind::F32,
            Arg::F64(_) => ArgKind::F64,
            Arg::Ptr(_) => ArgKind::Ptr,
        }
    }
}

use ArgKind::*;

/// MMA_FWD_PARAMS of tensor_core.cuh, the flash forwards' one parameter list (flash_attention.cu,
/// flash_mma.cu, flash_wgmma.cu).
const FLASH_FWD: &[ArgKind] = &[
    Buf, Buf, I64, I64, I64, I64, Buf, I64, I64, I64, I64, Buf, Buf, I32, I32, I32, I32, I32, I32,
    I64, F32, Ptr,
];

/// MMA_BWD_PARAMS of tensor_core.cuh, the flash backwards' one parameter list (flash_attention.cu,
/// flash_mma.cu, flash_wgmma.cu).
const FLASH_BWD: &[ArgKind] = &[
    Buf, Buf, Buf, Ptr, Ptr, Buf, I32, I32, I32, I32, I32, I32, I64, F32,
];

/// PAGED_MMA_PARAMS of flash_mma.cu, the tensor-core paged prefill kernels.
const PAGED_MMA: &[ArgKind] = &[
    Buf, Buf, Buf, Buf, Buf, Buf, Buf, Buf, Buf, I32, I32, I32, I32, I32, I64, F32,
];

/// DEC_PARAMS of decode_attention.cu, which all of its split kernels take.
const DECODE_SPLIT: &[ArgKind] = &[
    Buf, Buf, Buf, Buf, Buf, Buf, Buf, Buf, Ptr, Ptr, Buf, Buf, I32, I32, I32, I32, I32, I32, I32,
    I32, I64, F32, I32, Ptr,
];

/// (source, kernel, parameters) of every kernel in `kernels/*.cu`, in file order.
pub const KERNELS: &[(&str, &str, &[ArgKind])] = &[
    ("activation", "activation_forward", &[Buf, Buf, I64, I32]),
    (
        "activation",
        "activation_backward",
        &[Buf, Buf, Buf, I64, I32],
    ),
    ("gated", "gated_forward", &[Buf, Buf, I64, I64, I32]),
    ("gated", "gated_backward", &[Buf, Buf, Buf, I64, I64, I32]),
    ("residual", "residual_add", &[Buf, Buf, Buf, I64]),
    ("cast", "cast", &[Buf, Buf, I64]),
    (
        "kv_cache",
        "kv_append",
        &[Buf, Buf, Buf, I32, I32, I32, I32, I32, I32, I32, Ptr],
    ),
    (
        "kv_cache",
        "paged_kv_append",
        &[Buf, Buf, Buf, Buf, I64, I32, I32, I32, I32],
    ),
    ("take_last", "take_last", &[Buf, Buf, I32, I32, I32]),
    ("take_last", "take_rows", &[Buf, Buf, Buf, I32, I32]),
    ("matmul", "column_sum", &[Buf, Buf, I64, I64]),
    ("matmul", "narrow_rows", &[Buf, Buf, I64, I32, I32]),
    (
        "matmul",
        "gemv_rows",
        &[Buf, Buf, Buf, Buf, Buf, I32, I32, I32, I32],
    ),
    (
        "matmul",
        "gemv_rows_split",
        &[Buf, Buf, Buf, Buf, Buf, I32, I32, I32, I32],
    ),
    (
        "norms",
        "norm_forward",
        &[Buf, Buf, Buf, Buf, Buf, Buf, Buf, I32, I32, I32, I32, F32],
    ),
    (
        "norms",
        "norm_backward",
        &[Buf, Buf, Buf, Buf, Buf, Ptr, I64, I32, I32, I32, I32, I32],
    ),
    (
        "norms",
        "norm_forward_vec",
        &[Buf, Buf, Buf, Buf, Buf, Buf, Buf, I32, I32, I32, I32, F32],
    ),
    (
        "norms",
        "norm_backward_vec",
        &[Buf, Buf, Buf, Buf, Buf, Ptr, I64, I32, I32, I32],
    ),
    (
        "norms",
        "norm_backward_vec_beta",
        &[Buf, Buf, Buf, Buf, Buf, Ptr, I64, I32, I32, I32],
    ),
    (
        "norms",
        "norm_backward_vec2",
        &[Buf, Buf, Buf, Buf, Buf, Ptr, I64, I32, I32, I32],
    ),
    (
        "norms",
        "norm_backward_vec2_beta",
        &[Buf, Buf, Buf, Buf, Buf, Ptr, I64, I32, I32, I32],
    ),
    (
        "norms",
        "norm_weight_grads",
        &[Ptr, I32, I32, I32, Buf, Buf],
    ),
    (
        "rope",
        "rope",
        &[
            Buf, Buf, I64, I32, I32, I32, I32, I32, F64, F64, F64, F64, F64, I32, Ptr,
        ],
    ),
    (
        "embedding",
        "embedding_forward",
        &[
            Buf, Buf, Buf, Buf, Buf, I64, I32, I32, I32, I32, F32, I32, Ptr,
        ],
    ),
    (
        "embedding",
        "embedding_backward",
        &[Buf, Buf, Ptr, Ptr, I64, I32, I32, I32, F32],
    ),
    (
        "cross_entropy",
        "cross_entropy_forward",
        &[Buf, Buf, Buf, I64, I32, I32, I32],
    ),
    (
        "cross_entropy",
        "cross_entropy_backward",
        &[Buf, Buf, Buf, I64, I32, F32, I32, I32],
    ),
    ("grad_norm", "grad_sum_sq_multi", &[Ptr, I32, I64, Ptr]),
    ("grad_norm", "grad_norm_finish", &[Ptr, I32, I32, Buf]),
    (
        "adamw",
        "adamw_update_multi",
        &[
            Ptr, I32, I64, Buf, F32, F32, F32, F32, F32, F32, F32, I32, F64, F64, I32, Ptr,
        ],
    ),
    (
        "attention",
        "attn_gemm",
        &[
            Buf, I64, I64, I64, I32, I64, I64, I64, Buf, I64, I64, I64, I32, I64, I64, I64, Buf,
            I64, I64, I64, I64, I64, I32, I32, I32, I32, I32, F32,
        ],
    ),
    ("attention", "attn_softmax", &[Buf, Buf, I32, I32, I32, I64]),
    ("attention", "attn_softmax_backward", &[Buf, Buf, Buf, I32]),
    ("flash_attention", "flash_fwd_d64", FLASH_FWD),
    ("flash_attention", "flash_fwd_d128", FLASH_FWD),
    ("flash_attention", "flash_fwd_d256", FLASH_FWD),
    (
        "flash_attention",
        "flash_bwd_di",
        &[Buf, Buf, Ptr, I64, I32, I32, I32],
    ),
    (
        "flash_attention",
        "flash_bwd_dq",
        &[Ptr, Buf, I64, I64, I64],
    ),
    ("flash_attention", "flash_bwd_d64", FLASH_BWD),
    ("flash_attention", "flash_bwd_d128", FLASH_BWD),
    ("flash_attention", "flash_bwd_d256", FLASH_BWD),
    ("flash_mma", "flash_mma_fwd_d64_bf16", FLASH_FWD),
    ("flash_mma", "flash_mma_fwd_d64_f16", FLASH_FWD),
    ("flash_mma", "flash_mma_fwd_d80_bf16", FLASH_FWD),
    ("flash_mma", "flash_mma_fwd_d128_bf16", FLASH_FWD),
    ("flash_mma", "flash_mma_fwd_d80_f16", FLASH_FWD),
    ("flash_mma", "flash_mma_fwd_d128_f16", FLASH_FWD),
    ("flash_mma", "paged_mma_fwd_d64_bf16", PAGED_MMA),
    ("flash_mma", "paged_mma_fwd_d64_f16", PAGED_MMA),
    ("flash_mma", "paged_mma_fwd_d80_bf16", PAGED_MMA),
    ("flash_mma", "paged_mma_fwd_d80_f16", PAGED_MMA),
    ("flash_mma", "paged_mma_fwd_d128_bf16", PAGED_MMA),
    ("flash_mma", "paged_mma_fwd_d128_f16", PAGED_MMA),
    ("flash_wgmma", "flash_wgmma_fwd_d64_bf16", FLASH_FWD),
    ("flash_wgmma", "flash_wgmma_fwd_d64_f16", FLASH_FWD),
    ("flash_wgmma", "flash_wgmma_fwd_d128_bf16", FLASH_FWD),
    ("flash_wgmma", "flash_wgmma_fwd_d128_f16", FLASH_FWD),
    ("flash_wgmma", "flash_wgmma_bwd_d64_bf16", FLASH_BWD),
    ("flash_wgmma", "flash_wgmma_bwd_d64_f16", FLASH_BWD),
    ("flash_wgmma", "flash_wgmma_bwd_d128_bf16", FLASH_BWD),
    ("flash_wgmma", "flash_wgmma_bwd_d128_f16", FLASH_BWD),
    ("flash_wgmma", "flash_wgmma_ws_fwd_d64_bf16", FLASH_FWD),
    ("flash_wgmma", "flash_wgmma_ws_fwd_d64_f16", FLASH_FWD),
    ("flash_wgmma", "flash_wgmma_ws_fwd_d128_bf16", FLASH_FWD),
    ("flash_wgmma", "flash_wgmma_ws_fwd_d128_f16", FLASH_FWD),
    ("flash_wgmma", "flash_wgmma_ws_fwd_d64_s2_bf16", FLASH_FWD),
    ("flash_wgmma", "flash_wgmma_ws_fwd_d64_s2_f16", FLASH_FWD),
    ("flash_wgmma", "flash_wgmma_ws_fwd_d64_s4_bf16", FLASH_FWD),
    ("flash_wgmma", "flash_wgmma_ws_fwd_d64_s4_f16", FLASH_FWD),
    ("flash_wgmma", "flash_wgmma_ws_fwd_d128_s3_bf16", FLASH_FWD),
    ("flash_wgmma", "flash_wgmma_ws_fwd_d128_s3_f16", FLASH_FWD),
    ("flash_wgmma", "flash_wgmma_ws_bwd_d64_bf16", FLASH_BWD),
    ("flash_wgmma", "flash_wgmma_ws_bwd_d64_f16", FLASH_BWD),
    ("flash_wgmma", "flash_wgmma_ws_bwd_d64_s2_bf16", FLASH_BWD),
    ("flash_wgmma", "flash_wgmma_ws_bwd_d64_s2_f16", FLASH_BWD),
    ("flash_wgmma", "flash_wgmma_ws_bwd_d128_bf16", FLASH_BWD),
    ("flash_wgmma", "flash_wgmma_ws_bwd_d128_f16", FLASH_BWD),
    ("flash_wgmma", "flash_wgmma_ws_bwd_d128_s3_bf16", FLASH_BWD),
    ("flash_wgmma", "flash_wgmma_ws_bwd_d128_s3_f16", FLASH_BWD),
    ("flash_wgmma", "flash_wgmma_ws4_bwd_d64_bf16", FLASH_BWD),
    ("flash_wgmma", "flash_wgmma_ws4_bwd_d64_f16", FLASH_BWD),
    ("flash_wgmma", "flash_wgmma_ws4_bwd_d128_bf16", FLASH_BWD),
    ("flash_wgmma", "flash_wgmma_ws4_bwd_d128_f16", FLASH_BWD),
    ("flash_wgmma", "flash_wgmma_ws5_bwd_d64_bf16", FLASH_BWD),
    ("flash_wgmma", "flash_wgmma_ws5_bwd_d64_f16", FLASH_BWD),
    ("flash_mma", "flash_mma_bwd_d64_bf16", FLASH_BWD),
    ("flash_mma", "flash_mma_bwd_d64_f16", FLASH_BWD),
    ("flash_mma", "flash_mma_bwd_d80_bf16", FLASH_BWD),
    ("flash_mma", "flash_mma_bwd_d128_bf16", FLASH_BWD),
    ("flash_mma", "flash_mma_bwd_d80_f16", FLASH_BWD),
    ("flash_mma", "flash_mma_bwd_d128_f16", FLASH_BWD),
    (
        "paged_attention",
        "paged_attention",
        &[
            Buf, Buf, Buf, Buf, Buf, Buf, Buf, Buf, I32, I32, I32, I32, I32, I32, I32,
        ],
    ),
    ("sampling", "sample_rows", &[Buf, Buf, I32, Ptr, I32, Ptr]),
    ("decode_attention", "decode_split_r2", DECODE_SPLIT),
    ("decode_attention", "decode_split_r2_deep", DECODE_SPLIT),
    ("decode_attention", "decode_split_r8", DECODE_SPLIT),
    ("ceilings", "fill_random", &[Buf, I64, I32]),
    ("ceilings", "copy_words", &[Ptr, Ptr, I64]),
    ("ceilings", "l2_read", &[Ptr, I64, I32, Ptr]),
    ("ceilings", "empty", &[]),
];

/// (source, kernel) of the kernels that begin with `PDL_ENTRY()` (common.cuh): they wait for
/// the grids before them themselves, so `Gpu::launch` may launch them early (programmatic
/// dependent launch, Hopper and later). The inference path's kernels, which run as long chains
/// of small grids. A test checks this list against the sources in both directions: a listed
/// kernel that did not wait would read its inputs before they are written.
pub const EARLY_LAUNCH: &[(&str, &str)] = &[
    ("activation", "activation_forward"),
    ("residual", "residual_add"),
    ("kv_cache", "kv_append"),
    ("kv_cache", "paged_kv_append"),
    ("take_last", "take_last"),
    ("take_last", "take_rows"),
    ("matmul", "gemv_rows"),
    ("matmul", "gemv_rows_split"),
    ("matmul", "narrow_rows"),
    ("norms", "norm_forward"),
    ("norms", "norm_forward_vec"),
    ("rope", "rope"),
    ("embedding", "embedding_forward"),
    ("paged_attention", "paged_attention"),
    ("decode_attention", "decode_split_r2"),
    ("decode_attention", "decode_split_r2_deep"),
    ("decode_attention", "decode_split_r8"),
    ("sampling", "sample_rows"),
];

/// Whether `kernel` of `source` waits for its predecessors itself (`EARLY_LAUNCH`).
pub fn launches_early(source: &str, kernel: &str) -> bool {
    EARLY_LAUNCH
        .iter()
        .any(|&(s, k)| s == source && k == kernel)
}

/// The parameters of `kernel` in `source`, or None when the table does not list it.
pub fn signature(source: &str, kernel: &str) -> Option<&'static [ArgKind]> {
    KERNELS
        .iter()
        .find(|(s, k, _)| *s == source && *k == kernel)
        .map(|(_, _, params)| *params)
}

/// Whether `args` match `params` in number and kind, position by position.
pub fn matches(params: &[ArgKind], args: &[Arg]) -> bool {
    params.len() == args.len() && params.iter().zip(args).all(|(p, a)| *p == a.kind())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::SOURCES;
    use std::collections::BTreeMap;

    /// Text without `//` and `/* */` comments.
    fn strip_comments(s: &str) -> String {
        let mut out = String::with_capacity(s.len());
        let mut rest = s;
        while !rest.is_empty() {
            if let Some(r) = rest.strip_prefix("//") {
                rest = r.find('\n').map_or("", |i| &r[i..]);
            } else if let Some(r) = rest.strip_prefix("/*") {
                rest = r.find("*/").map_or("", |i| &r[i + 2..]);
            } else if let Some(r) = rest.strip_prefix("'\"'") {
                // The quote character, not a string's start.
                out.push_str("'\"'");
                rest = r;
            } else if let Some(r) = rest.strip_prefix('"') {
                // A string literal is kept whole: a "/*" or "//" inside one (a path like
                // "targets/*/lib") starts no comment.
                let mut end = r.len();
                let mut escaped = false;
                for (i, c) in r.char_indices() {
                    match c {
                        _ if escaped => escaped = false,
                        '\\' => escaped = true,
                        '"' => {
                            end = i + 1;
                            break;
                        }
                        _ => {}
                    }
                }
                out.push('"');
                out.push_str(&r[..end]);
                rest = &r[end..];
            } else {
                let c = rest.chars().next().unwrap();
                out.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
        out
    }

    /// `#define NAME body` (continuation lines joined), the way the flash kernels share one
    /// parameter list.
    fn defines(s: &str) -> BTreeMap<String, String> {
        let joined = s.replace("\\\n", " ");
        joined
            .lines()
            .filter_map(|l| l.trim().strip_prefix("#define"))
            .filter_map(|d| {
                let d = d.trim();
                let end = d.find(|c: char| c.is_whitespace())?;
                Some((d[..end].to_string(), d[end..].trim().to_string()))
            })
            .collect()
    }

    fn kind_of(param: &str) -> ArgKind {
        let ty = param
            .trim()
            .rsplit_once(|c: char| c.is_whitespace() || c == '*')
            .map_or(param, |(ty, _name)| ty)
            .trim();
        if param.contains('*') {
            return Ptr;
        }
        match ty {
            "Buf" => Buf,
            "i64" => I64,
            "int" => I32,
            "float" => F32,
            "double" => F64,
            other => panic!("parameter type '{other}' ({param}) has no ArgKind"),
        }
    }

    /// (kernel, parameters) of every `extern "C" __global__` function in one source.
    fn parse_kernels(text: &str) -> Vec<(String, Vec<ArgKind>)> {
        let text = strip_comments(text);
        let macros = defines(&text);
        let mut out = Vec::new();
        for piece in text.split("extern \"C\" __global__").skip(1) {
            let open = piece.find('(').expect("a kernel has a parameter list");
            let mut head = &piece[..open];
            let mut rest = &piece[open..];
            // `__launch_bounds__(N)` or `__maxnreg__(N)` comes before the name.
            if head.contains("__launch_bounds__") || head.contains("__maxnreg__") {
                let close = rest.find(')').unwrap();
                rest = &rest[close + 1..];
                let open = rest.find('(').unwrap();
                head = &rest[..open];
                rest = &rest[open..];
            }
            let name = head.split_whitespace().last().unwrap().to_string();
            let close = rest.find(')').unwrap();
            let mut params = rest[1..close].trim().to_string();
            if let Some(body) = macros.get(&params) {
                params = body.clone();
            }
            let kinds = params
                .split(',')
                .filter(|p| !p.trim().is_empty())
                .map(kind_of)
                .collect();
            out.push((name, kinds));
        }
        out
    }

    /// (kernel, its body's first statement) of every kernel in one source.
    fn first_statements(text: &str) -> Vec<(String, String)> {
        let text = strip_comments(text);
        let mut out = Vec::new();
        for piece in text.split("extern \"C\" __global__").skip(1) {
            // The name is the word before the parameter list, which is the first `(` after
            // any `__launch_bounds__(N)` / `__maxnreg__(N)`.
            let mut rest = piece;
            if rest[..rest.find('(').unwrap()].contains("__") {
                rest = &rest[rest.find(')').unwrap() + 1..];
            }
            let open = rest.find('(').unwrap();
            let name = rest[..open].split_whitespace().last().unwrap().to_string();
            let body = &rest[rest[open..].find('{').unwrap() + open + 1..];
            // Up to the first `;`, or the closing brace of an empty body.
            let end = body.find([';', '}']).unwrap();
            let first = body[..end].trim().to_string();
            out.push((name, first));
        }
        out
    }

    #[test]
    fn kernels_launched_early_wait_first_and_only_they() {
        let mut waiting = Vec::new();
        for src in SOURCES {
            for (kernel, first) in first_statements(src.text) {
                let listed = launches_early(src.name, &kernel);
                assert_eq!(
                    first == "PDL_ENTRY()",
                    listed,
                    "{}::{kernel}: its first statement is '{first}', and EARLY_LAUNCH {} it \
                     (a kernel launched early must begin with PDL_ENTRY(); one that begins \
                     with it belongs in the list)",
                    src.name,
                    if listed { "lists" } else { "does not list" }
                );
                if listed {
                    waiting.push((src.name, kernel));
                }
            }
        }
        assert_eq!(
            waiting.len(),
            EARLY_LAUNCH.len(),
            "EARLY_LAUNCH names a kernel no .cu defines"
        );
    }

    #[test]
    fn the_table_is_the_kernels_signatures() {
        let mut parsed = Vec::new();
        for src in SOURCES {
            // A parameter-list macro may live in one of the source's headers (which define no
            // kernels themselves).
            let headers: String = src.headers.iter().map(|(_, text)| *text).collect();
            for (kernel, params) in parse_kernels(&(headers + src.text)) {
                parsed.push((src.name, kernel, params));
            }
        }
        assert!(parsed.len() >= 30, "the parser found only {}", parsed.len());
        for (source, kernel, params) in &parsed {
            assert_eq!(
                signature(source, kernel),
                Some(params.as_slice()),
                "{source}::{kernel}: the table disagrees with {source}.cu"
            );
        }
        assert_eq!(
            KERNELS.len(),
            parsed.len(),
            "the table lists a kernel no .cu defines"
        );
    }

    /// The top-level, comma-separated items of `text` up to the bracket that closes the one
    /// before it, and the rest after that bracket.
    fn items(text: &str) -> (Vec<&str>, &str) {
        let (mut depth, mut from, mut out) = (0i32, 0, Vec::new());
        for (i, c) in text.char_indices() {
            match c {
                '(' | '[' | '{' => depth += 1,
                ')' | ']' | '}' if depth == 0 => {
                    out.push(text[from..i].trim());
                    out.retain(|a| !a.is_empty());
                    return (out, &text[i + 1..]);
                }
                ')' | ']' | '}' => depth -= 1,
                ',' if depth == 0 => {
                    out.push(text[from..i].trim());
                    from = i + 1;
                }
                _ => {}
            }
        }
        panic!("unbalanced brackets");
    }

    /// What an argument expression evaluates to, where its text says so.
    fn kind_of_expr(arg: &str) -> Option<ArgKind> {
        let kinds = [
            ("Arg::Buf(", Buf),
            ("self.arg(", Buf),
            ("self.arg_opt(", Buf),
            ("Arg::I64(", I64),
            ("Arg::I32(", I32),
            ("Arg::F32(", F32),
            ("Arg::F64(", F64),
            ("Arg::Ptr(", Ptr),
        ];
        kinds
            .iter()
            .find(|(prefix, _)| arg.starts_with(prefix))
            .map(|(_, k)| *k)
    }

    /// A launch in a Rust source: the module and kernel it names, and, where its arguments are
    /// an array literal bound just before it in the same function (`let args = [..];`), what
    /// each argument is (None where the expression does not say).
    struct Site {
        module: String,
        kernel: String,
        args: Option<Vec<Option<ArgKind>>>,
    }

    /// Every `self.launch(` / `self.launch_1d(` / `gpu.launch(` / `gpu.launch_1d(` call whose kernel is a string literal (a kernel
    /// chosen at run time, a variant's name, is left to the table test and the check at launch).
    fn launch_sites(text: &str) -> Vec<Site> {
        let text = &strip_comments(text);
        let consts: BTreeMap<&str, &str> = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("const "))
            .filter_map(|l| {
                let (name, rest) = l.split_once(": &str = \"")?;
                Some((name.trim(), rest.split('"').next()?))
            })
            .collect();
        let mut out = Vec::new();
        // The backend's launches take the op call first; the device's (`gpu.launch*`, used by
        // self-tests outside an op) start with the module.
        for (pat, first) in [
            ("self.launch(", 1),
            ("self.launch_1d(", 1),
            ("gpu.launch(", 0),
            ("gpu.launch_1d(", 0),
        ] {
            for (at, _) in text.match_indices(pat) {
                let (call, _) = items(&text[at + pat.len()..]);
                if call.len() < first + 2 {
                    continue;
                }
                let unquote = |a: &str| a.strip_prefix('"')?.strip_suffix('"').map(String::from);
                let module =
                    unquote(call[first]).or_else(|| consts.get(call[first]).map(|m| m.to_string()));
                let (Some(module), Some(kernel)) = (module, unquote(call[first + 1])) else {
                    continue;
                };
                let args = call
                    .last()
                    .and_then(|a| a.strip_prefix('&'))
                    .and_then(|name| {
                        let before = &text[..at];
                        let bind = before.rfind(&format!("let {name} = ["))?;
                        if before[bind..].contains("fn ") {
                            return None;
                        }
                        let open = bind + before[bind..].find('[')? + 1;
                        let (elems, _) = items(&text[open..]);
                        Some(elems.iter().map(|e| kind_of_expr(e)).collect())
                    });
                out.push(Site {
                    module,
                    kernel,
                    args,
                });
            }
        }
        out
    }

    #[test]
    fn every_launch_site_matches_its_kernel() {
        let ops = [
            include_str!("ops/attention.rs"),
            include_str!("ops/decode.rs"),
            include_str!("ops/activation.rs"),
            include_str!("ops/gated.rs"),
            include_str!("ops/swiglu.rs"),
            include_str!("ops/residual.rs"),
            include_str!("ops/cast.rs"),
            include_str!("ops/geglu.rs"),
            include_str!("ops/cross_entropy.rs"),
            include_str!("ops/embedding.rs"),
            include_str!("ops/matmul.rs"),
            include_str!("ops/norms.rs"),
            include_str!("ops/grad_norm.rs"),
            include_str!("ops/adamw.rs"),
            include_str!("ops/kv_cache.rs"),
            include_str!("ops/paged_attention.rs"),
            include_str!("ops/take_last.rs"),
            include_str!("ops/rope.rs"),
            include_str!("ops/sampling.rs"),
            include_str!("ceilings.rs"),
            include_str!("backend.rs"),
            include_str!("cupti/collector.rs"),
        ];
        let (mut sites, mut counted) = (0, 0);
        for text in ops {
            for site in launch_sites(text) {
                let (m, k) = (&site.module, &site.kernel);
                let params = signature(m, k)
                    .unwrap_or_else(|| panic!("{m}::{k} is launched but not in KERNELS"));
                sites += 1;
                let Some(args) = site.args else { continue };
                counted += 1;
                assert_eq!(args.len(), params.len(), "{m}::{k}: argument count");
                for (i, (arg, param)) in args.iter().zip(params).enumerate() {
                    if let Some(arg) = arg {
                        assert_eq!(arg, param, "{m}::{k}: argument {i}");
                    }
                }
            }
        }
        // Guards against the scan silently finding nothing after the sources change shape.
        assert!(sites >= 20, "found only {sites} launch sites");
        assert!(
            counted >= 20,
            "only {counted} launch sites had countable arguments"
        );
    }

    #[test]
    fn a_launch_is_checked_in_number_and_kind() {
        let params = signature("residual", "residual_add").unwrap();
        let buf = Arg::Buf(0, 0);
        assert!(matches(params, &[buf, buf, buf, Arg::I64(4)]));
        assert!(!matches(params, &[buf, buf, buf]), "one argument short");
        assert!(
            !matches(params, &[buf, buf, buf, Arg::I32(4)]),
            "int for i64"
        );
    }
}
