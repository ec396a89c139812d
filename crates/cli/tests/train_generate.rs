//! `tperf train` and `tperf generate` end to end on a tiny byte-level model: checkpoints, exact
//! resumption, Ctrl-C, generation with and without the KV cache, and every bad input refused
//! with a clear message and without touching existing files.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn tperf(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tperf"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("the tperf binary runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

/// A GPT-2-style config shrunk to a few tens of thousands of parameters, byte vocabulary.
fn tiny_config(dir: &Path, name: &str, n_layers: usize) -> PathBuf {
    let cfg = serde_json::json!({
        "name": name,
        "biases": {"attn_out": true, "lm_head": false, "mlp": true, "norm": true, "qkv": true},
        "causal": true, "context": 32, "d_ff": 128, "d_model": 32, "final_norm": true,
        "head_dim": 8, "mlp": "gelu", "n_heads": 4, "n_kv_heads": 4, "n_layers": n_layers,
        "norm": "layernorm", "norm_eps": 1e-5, "norm_placement": "pre",
        "positions": {"kind": "learned"}, "scale_embedding": false, "sliding_window": null,
        "tied_embeddings": true, "vocab_size": 256
    });
    let path = dir.join(format!("{name}.json"));
    fs::write(&path, cfg.to_string()).expect("write config");
    path
}

fn text_file(dir: &Path) -> PathBuf {
    let path = dir.join("text.txt");
    let text = "The quick brown fox jumps over the lazy dog. A stitch in time saves nine. \
                All that glitters is not gold. Where there is a will there is a way.\n"
        .repeat(60);
    fs::write(&path, text).expect("write text");
    path
}

struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
    data: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = tiny_config(dir.path(), "tiny", 2);
    let data = text_file(dir.path());
    Setup { dir, config, data }
}

impl Setup {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `tperf train` on the tiny config and text with a fixed recipe, plus `extra`.
    fn train(&self, steps: u64, extra: &[&str]) -> Output {
        let steps = steps.to_string();
        let mut args = vec![
            "train",
            s(&self.config),
            "--data",
            s(&self.data),
            "--steps",
            &steps,
            "--batch",
            "4",
            "--seq",
            "16",
            "--lr",
            "3e-3",
            "--warmup",
            "5",
            "--eval-every",
            "10",
            "--eval-batches",
            "2",
            "--device",
            "cpu",
        ];
        args.extend_from_slice(extra);
        tperf(&args)
    }
}

/// (step, loss as written) from a training log; the loss is f32's shortest round-trip text,
/// so equal strings are equal bits.
fn log_losses(path: &Path) -> Vec<(u64, String)> {
    let text = fs::read_to_string(path).expect("the log exists");
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("step,lr,loss,val_loss,tokens,dur_s,tokens_per_s,saved")
    );
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[0].parse().expect("step"), f[2].to_string())
        })
        .collect()
}

fn mean(xs: &[(u64, String)]) -> f64 {
    xs.iter()
        .map(|(_, l)| l.parse::<f64>().expect("loss"))
        .sum::<f64>()
        / xs.len() as f64
}

#[test]
fn train_writes_a_checkpoint_and_the_loss_falls() {
    let t = setup();
    let ckpt = t.path("run.safetensors");
    let o = t.train(60, &["--checkpoint", s(&ckpt)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(ckpt.is_file());
    let out = stdout(&o);
    assert!(out.contains("summary: steps 0→60"), "{out}");
    assert!(out.contains("GFLOP/s"), "{out}");
    // The log defaults to <checkpoint>.csv.
    let losses = log_losses(&t.path("run.csv"));
    assert_eq!(losses.len(), 60);
    let (first, last) = (mean(&losses[..5]), mean(&losses[55..]));
    assert!(last < first - 1.5, "loss {first} → {last}");
}

#[test]
fn a_synthetic_run_writes_a_checkpoint() {
    let t = setup();
    let ckpt = t.path("syn.safetensors");
    let o = tperf(&[
        "train",
        s(&t.config),
        "--synthetic",
        "--steps",
        "3",
        "--batch",
        "2",
        "--seq",
        "8",
        "--eval-every",
        "0",
        "--checkpoint",
        s(&ckpt),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(ckpt.is_file());
    assert!(stdout(&o).contains("synthetic"));
}

#[test]
fn resume_continues_at_the_right_step_with_the_same_losses() {
    let t = setup();
    let whole = t.path("whole.safetensors");
    assert!(t.train(20, &["--checkpoint", s(&whole)]).status.success());

    let part = t.path("part.safetensors");
    // --steps is the whole run's length (the learning-rate schedule spans it); --stop-at ends
    // this session at step 10 and the resumed run takes steps 11..=20.
    let o = t.train(20, &["--checkpoint", s(&part), "--stop-at", "10"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("stopped at step 10"), "{}", stdout(&o));
    let o = t.train(20, &["--resume", s(&part)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("summary: steps 10→20"),
        "{}",
        stdout(&o)
    );

    let resumed = log_losses(&t.path("part.csv"));
    let steps: Vec<u64> = resumed.iter().map(|r| r.0).collect();
    assert_eq!(steps, (1..=20).collect::<Vec<_>>(), "the log continues");
    // The driver's and stepper's tests explain why this is bit-identical.
    assert_eq!(resumed, log_losses(&t.path("whole.csv")));
}

#[test]
fn ctrl_c_saves_a_checkpoint_and_exits_130() {
    let t = setup();
    let ckpt = t.path("int.safetensors");
    let log = t.path("int.csv");
    let child = Command::new(env!("CARGO_BIN_EXE_tperf"))
        .args([
            "train",
            s(&t.config),
            "--data",
            s(&t.data),
            "--steps",
            "1000000",
            "--batch",
            "2",
            "--seq",
            "8",
            "--eval-every",
            "0",
            "--checkpoint",
            s(&ckpt),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(60);
    while fs::read_to_string(&log).map_or(0, |l| l.lines().count()) < 4 {
        assert!(Instant::now() < deadline, "no steps logged");
        std::thread::sleep(Duration::from_millis(20));
    }
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
    let o = child.wait_with_output().expect("wait");
    assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("interrupted after step"),
        "{}",
        stderr(&o)
    );
    // The checkpoint holds the last logged step.
    let last = log_losses(&log).last().map(|r| r.0).expect("steps");
    let g = tperf(&["generate", s(&ckpt), "--prompt", "The", "--max-new", "1"]);
    assert!(g.status.success(), "{}", stderr(&g));
    assert!(
        stderr(&g).contains(&format!("after {last} training steps")),
        "{}",
        stderr(&g)
    );
}

#[test]
fn greedy_generation_is_the_same_paged_contiguous_and_without_the_kv_cache() {
    let t = setup();
    let ckpt = t.path("gen.safetensors");
    assert!(t.train(40, &["--checkpoint", s(&ckpt)]).status.success());
    let run = |extra: &[&str]| {
        let mut args = vec![
            "generate",
            s(&ckpt),
            "--prompt",
            "The quick",
            "--max-new",
            "20",
            "--temperature",
            "0",
        ];
        args.extend_from_slice(extra);
        let o = tperf(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(stderr(&o).contains("time to first token"), "{}", stderr(&o));
        assert!(
            stderr(&o).contains("time per output token"),
            "{}",
            stderr(&o)
        );
        stdout(&o)
    };
    // The default is the serving engine's paged cache; the contiguous loop and the cache-less
    // one must agree with it token for token.
    let cached = run(&[]);
    let contiguous = run(&["--contiguous-kv"]);
    let uncached = run(&["--no-kv-cache"]);
    assert!(cached.starts_with("The quick") && cached.len() > "The quick".len());
    assert_eq!(cached, contiguous);
    assert_eq!(cached, uncached);
}

#[test]
fn a_preset_generates_with_random_weights_and_says_so() {
    let t = setup();
    let o = tperf(&["generate", s(&t.config), "--prompt", "hi", "--max-new", "3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("random weights"), "{}", stderr(&o));
}

/// Where a tensor's data starts in a safetensors file: after the 8-byte header length and the
/// JSON header, at the tensor's first data offset.
fn tensor_offset(bytes: &[u8], name: &str) -> usize {
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).expect("header");
    let start = header[name]["data_offsets"][0].as_u64().expect("offset");
    8 + n + start as usize
}

/// Runs `args`, expects a non-zero exit whose stderr contains `message`, and checks that the
/// files in `keep` are byte-for-byte what they were.
fn refused(args: &[&str], message: &str, keep: &[&Path]) {
    let before: Vec<Vec<u8>> = keep.iter().map(|p| fs::read(p).expect("read")).collect();
    let o = tperf(args);
    assert!(!o.status.success(), "{args:?} succeeded");
    let err = stderr(&o);
    assert!(err.contains("error: "), "{err}");
    assert!(
        err.contains(message),
        "{args:?}: expected '{message}' in:\n{err}"
    );
    for (p, b) in keep.iter().zip(before) {
        assert!(fs::read(p).expect("read") == b, "{} changed", p.display());
    }
}

#[test]
fn bad_inputs_are_refused_clearly_and_touch_nothing() {
    let t = setup();
    let ckpt = t.path("good.safetensors");
    let log = t.path("good.csv");
    assert!(t.train(5, &["--checkpoint", s(&ckpt)]).status.success());
    let keep = [ckpt.as_path(), log.as_path()];
    let cfg = s(&t.config);

    let empty = t.path("empty.txt");
    fs::write(&empty, "").expect("write");
    let train_on = |data: &Path| {
        vec![
            "train".to_string(),
            cfg.to_string(),
            "--data".into(),
            s(data).into(),
            "--steps".into(),
            "3".into(),
            "--seq".into(),
            "16".into(),
            "--checkpoint".into(),
            s(&ckpt).into(),
            "--overwrite".into(),
        ]
    };
    let args = train_on(&empty);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    refused(&args, "empty", &keep);
    let args = train_on(&t.path("missing.txt"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    refused(&args, "missing.txt", &keep);

    // A new run does not overwrite another run's checkpoint unless asked to.
    refused(
        &[
            "train",
            cfg,
            "--synthetic",
            "--steps",
            "2",
            "--seq",
            "8",
            "--checkpoint",
            s(&ckpt),
        ],
        "already exists",
        &keep,
    );

    // A different model cannot resume this checkpoint.
    let other = tiny_config(t.dir.path(), "other", 3);
    refused(
        &[
            "train",
            s(&other),
            "--data",
            s(&t.data),
            "--steps",
            "10",
            "--seq",
            "16",
            "--resume",
            s(&ckpt),
        ],
        "n_layers is 2 in the checkpoint but 3",
        &keep,
    );

    // A flipped bit in the tensor data: the checksum catches it, for generate and for resume.
    let corrupt = t.path("corrupt.safetensors");
    let mut bytes = fs::read(&ckpt).expect("read");
    let i = tensor_offset(&bytes, "wte") + 40;
    bytes[i] ^= 0x10;
    fs::write(&corrupt, &bytes).expect("write");
    let keep_corrupt = [ckpt.as_path(), log.as_path(), corrupt.as_path()];
    refused(
        &["generate", s(&corrupt), "--prompt", "hi"],
        "corrupt",
        &keep_corrupt,
    );
    refused(
        &[
            "train",
            cfg,
            "--data",
            s(&t.data),
            "--steps",
            "10",
            "--seq",
            "16",
            "--resume",
            s(&corrupt),
        ],
        "corrupt",
        &keep_corrupt,
    );
    // Cut short: the header promises more than the file holds.
    let truncated = t.path("truncated.safetensors");
    fs::write(&truncated, &fs::read(&ckpt).expect("read")[..2000]).expect("write");
    refused(
        &["generate", s(&truncated), "--prompt", "hi"],
        "truncated",
        &[truncated.as_path()],
    );

    // A tokenizer that does not fit the checkpoint's vocabulary.
    refused(
        &[
            "generate",
            s(&ckpt),
            "--prompt",
            "hi",
            "--tokenizer",
            "gpt2",
        ],
        "vocab",
        &keep,
    );
    let long = "x".repeat(40);
    refused(
        &["generate", s(&ckpt), "--prompt", &long],
        "the prompt has 40 tokens; the model's context is 32",
        &keep,
    );
    refused(
        &["generate", s(&ckpt), "--prompt", ""],
        "the prompt is empty",
        &keep,
    );
    refused(
        &[
            "train",
            cfg,
            "--synthetic",
            "--steps",
            "2",
            "--device",
            "cuda:x",
        ],
        "unknown device 'cuda:x'",
        &keep,
    );
    refused(
        &["generate", s(&ckpt), "--prompt", "hi", "--device", "tpu"],
        "unknown device 'tpu'",
        &keep,
    );
}

/// `--ranks 2` starts two processes that meet over TCP and average gradients: with `--batch 2`
/// each, they train on the global batch of 4 and log what one process with `--batch 4` logs
/// (to f32 rounding: the mean gradient is summed in another order). Rank 0 alone writes the
/// log and the checkpoint.
#[test]
fn two_cpu_ranks_train_like_one_process_on_the_whole_batch() {
    let t = setup();
    let one = t.path("one.safetensors");
    let out = t.train(6, &["--checkpoint", s(&one)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let dp = t.path("dp.safetensors");
    let mut args = vec![
        "train",
        s(&t.config),
        "--data",
        s(&t.data),
        "--steps",
        "6",
        "--batch",
        "2",
        "--seq",
        "16",
        "--lr",
        "3e-3",
        "--warmup",
        "5",
        "--eval-every",
        "10",
        "--eval-batches",
        "2",
        "--device",
        "cpu",
        "--checkpoint",
    ];
    args.push(s(&dp));
    args.extend_from_slice(&["--ranks", "2"]);
    let out = tperf(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("starting 2 ranks"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        stdout(&out).matches("summary:").count(),
        1,
        "rank 0 alone reports: {}",
        stdout(&out)
    );
    let (a, b) = (
        log_losses(&one.with_extension("csv")),
        log_losses(&dp.with_extension("csv")),
    );
    assert_eq!(a.len(), 6);
    assert_eq!(a.len(), b.len(), "one log row per step");
    for ((step, x), (_, y)) in a.iter().zip(&b) {
        let (x, y): (f64, f64) = (x.parse().unwrap(), y.parse().unwrap());
        assert!((x - y).abs() <= 1e-4 * x.abs(), "step {step}: {x} vs {y}");
    }
    assert!(dp.exists(), "rank 0 wrote the checkpoint");
}

/// A rank that dies mid-run makes the others exit, with an error naming the collective, well
/// within 60 s (a closed connection is noticed at once; a hung rank would take the group
/// timeout). The two ranks are started by hand, as torchrun would start them, so no launcher
/// stops the survivor for it; ZeRO-1 with accumulation, so the failure reaches a reduce-scatter
/// or the step's loss all-reduce.
#[test]
fn a_rank_that_dies_makes_the_other_exit_with_an_error_instead_of_hanging() {
    use std::time::{Duration, Instant};
    let t = setup();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
        .to_string();
    let rank = |r: &str| {
        Command::new(env!("CARGO_BIN_EXE_tperf"))
            .args([
                "train",
                s(&t.config),
                "--synthetic",
                "--steps",
                "1000000",
                "--batch",
                "1",
                "--seq",
                "16",
                "--eval-every",
                "0",
                "--device",
                "cpu",
                "--ranks",
                "2",
                "--zero1",
                "--grad-accum",
                "2",
            ])
            .env("RANK", r)
            .env("WORLD_SIZE", "2")
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", &port)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("a rank starts")
    };
    let mut survivor = rank("0");
    let mut victim = rank("1");
    // Let them meet and take steps, then kill rank 1 outright (no chance to say goodbye).
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        survivor.try_wait().expect("poll").is_none(),
        "rank 0 is still training"
    );
    victim.kill().expect("kill rank 1");
    victim.wait().expect("reap rank 1");
    let killed = Instant::now();
    let status = loop {
        if let Some(st) = survivor.try_wait().expect("poll") {
            break st;
        }
        if killed.elapsed() > Duration::from_secs(60) {
            survivor.kill().ok();
            panic!("rank 0 still runs 60 s after rank 1 died");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut survivor.stderr.take().expect("stderr"), &mut err)
        .expect("read stderr");
    assert!(!status.success(), "rank 0 must fail: {err}");
    assert!(
        err.contains("rank 0") && (err.contains("exited") || err.contains("no reply")),
        "the error says the group broke: {err}"
    );
    eprintln!("rank 0 exited {:?} after rank 1 died", killed.elapsed());
}
