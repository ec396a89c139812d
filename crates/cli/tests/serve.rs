//! `tperf serve` end to end on the CPU with a tiny byte-level model: every endpoint, streaming
//! as OpenAI clients parse it, every error with OpenAI's body and status, a client that hangs up
//! mid-stream, many concurrent streams, and a clean exit on SIGINT. The HTTP client is a few
//! lines over a TcpStream (HTTP/1.1, Connection: close), so the test needs no client crate.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn tiny_config(dir: &Path) -> PathBuf {
    let cfg = json!({
        "name": "tiny",
        "biases": {"attn_out": true, "lm_head": false, "mlp": true, "norm": true, "qkv": true},
        "causal": true, "context": 64, "d_ff": 64, "d_model": 32, "final_norm": true,
        "head_dim": 8, "mlp": "gelu", "n_heads": 4, "n_kv_heads": 4, "n_layers": 2,
        "norm": "layernorm", "norm_eps": 1e-5, "norm_placement": "pre",
        "positions": {"kind": "learned"}, "scale_embedding": false, "sliding_window": null,
        "tied_embeddings": true, "vocab_size": 256
    });
    let path = dir.join("tiny.json");
    std::fs::write(&path, cfg.to_string()).expect("write config");
    path
}

struct Server {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
    model: String,
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = tiny_config(dir.path());
        let model = cfg.to_str().expect("utf-8").to_string();
        Server::start_model(model, dir, extra)
    }

    fn start_model(model: String, dir: tempfile::TempDir, extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tperf"))
            .args(["serve", &model, "--device", "cpu", "--port", "0"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tperf serve runs");
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        let port = loop {
            let line = lines
                .next()
                .expect("the server says where it listens")
                .expect("stderr line");
            if let Some(rest) = line.split("http://127.0.0.1:").nth(1) {
                break rest
                    .split('/')
                    .next()
                    .and_then(|p| p.parse().ok())
                    .expect("a port");
            }
        };
        // Keep draining stderr so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines.by_ref() {});
        Server {
            child,
            port,
            _dir: dir,
            model,
        }
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(120))).ok();
        s
    }

    fn send(&self, method: &str, path: &str, body: &str, headers: &[(&str, &str)]) -> TcpStream {
        let mut s = self.connect();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(body);
        s.write_all(req.as_bytes()).expect("write");
        s
    }

    /// (status, body) of a request answered in full.
    fn call(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        let mut s = self.send(method, path, body, &[]);
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).expect("read");
        parse_response(&raw)
    }

    /// (status, body) of a request the server may answer before it has read all of it (a body
    /// over the limit): the body is written from another thread, and a write cut short by the
    /// server closing its end (broken pipe, reset) is expected, not a failure; the answer the
    /// server sent before closing is still read.
    fn call_refused_early(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        let mut s = self.connect();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let mut writer = s.try_clone().expect("clone the stream");
        let request = [head.as_bytes(), body.as_bytes()].concat();
        let write = std::thread::spawn(move || {
            let _ = writer.write_all(&request);
        });
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
                Err(e) if !raw.is_empty() && e.kind() == std::io::ErrorKind::ConnectionReset => {
                    break
                }
                Err(e) => panic!("read: {e}"),
            }
        }
        s.shutdown(std::net::Shutdown::Both).ok();
        write.join().expect("the writer thread");
        parse_response(&raw)
    }

    fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let (status, text) = self.call("POST", path, &body.to_string());
        let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        (status, v)
    }

    fn metric(&self, name: &str) -> f64 {
        let (_, text) = self.call("GET", "/metrics", "");
        text.lines()
            .find(|l| l.starts_with(name) && !l.starts_with('#'))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in {text}"))
    }

    /// Waits for the blocks in use to return to `want`.
    fn wait_blocks(&self, want: f64) {
        let t = Instant::now();
        while self.metric("tperf_kv_blocks_used") != want {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "KV blocks stay in use"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Status and body, the body de-chunked when the transfer encoding is chunked.
fn parse_response(raw: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("headers end");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    if !chunked {
        return (status, body.to_string());
    }
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&tail[..n]);
        rest = &tail[n + 2..];
    }
    (status, out)
}

/// The `data:` payloads of an SSE body.
fn events(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

fn error_of(v: &Value) -> (&str, Option<&str>) {
    let e = &v["error"];
    assert!(e["message"].is_string(), "{v}");
    assert!(e.get("code").is_some(), "{v}");
    (e["type"].as_str().expect("type"), e["param"].as_str())
}

#[test]
fn completions_chat_models_health_and_metrics() {
    let srv = Server::start(&[]);
    let (status, _) = srv.call("GET", "/health", "");
    assert_eq!(status, 200);
    let (status, text) = srv.call("GET", "/v1/models", "");
    assert_eq!(status, 200);
    let models: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(models["data"][0]["id"], srv.model.as_str());
    assert_eq!(models["data"][0]["max_model_len"], 64);

    let (status, v) = srv.post(
        "/v1/completions",
        json!({"model": srv.model, "prompt": "Hello", "max_tokens": 5, "temperature": 0, "ignore_eos": true}),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert!(v["choices"][0]["text"].is_string());
    assert_eq!(v["usage"]["prompt_tokens"], 5);
    assert_eq!(v["usage"]["completion_tokens"], 5);
    assert_eq!(v["usage"]["total_tokens"], 10);
    // Greedy is deterministic; token ids work as a prompt.
    let (_, again) = srv.post(
        "/v1/completions",
        json!({"prompt": [72, 101, 108, 108, 111], "max_tokens": 5, "temperature": 0, "ignore_eos": true}),
    );
    assert_eq!(again["choices"][0]["text"], v["choices"][0]["text"]);

    let (status, c) = srv.post(
        "/v1/chat/completions",
        json!({"model": srv.model, "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], "max_tokens": 4, "seed": 3}),
    );
    assert_eq!(status, 200, "{c}");
    assert_eq!(c["object"], "chat.completion");
    assert_eq!(c["choices"][0]["message"]["role"], "assistant");
    assert!(c["choices"][0]["message"]["content"].is_string());
    assert!(c["usage"]["completion_tokens"].as_u64().expect("count") <= 4);

    assert_eq!(srv.metric("tperf_kv_blocks_used"), 0.0);
    assert!(srv.metric("tperf_generation_tokens_total") >= 10.0);
    assert!(srv.metric("tperf_time_to_first_token_seconds_count") >= 3.0);
    assert_eq!(srv.metric("tperf_num_requests_running"), 0.0);
}

fn hf_fixture(family: &str) -> (String, Value) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../runtime/tests/fixtures/hf")
        .join(family);
    let expected = std::fs::read_to_string(dir.join("expected.json")).expect("expected.json");
    (
        dir.to_str().expect("utf-8").to_string(),
        serde_json::from_str(&expected).expect("json"),
    )
}

#[test]
fn a_hugging_face_folder_serves_transformers_greedy_text_and_its_chat_template() {
    // Qwen2 (ChatML template) and Llama with Llama 3.1's RoPE scaling, through the engine's
    // paged, per-row-position path: the greedy completion of the fixture's prompt is the
    // continuation transformers generated for it.
    for family in ["qwen2", "llama31"] {
        let (folder, e) = hf_fixture(family);
        let srv = Server::start_model(folder.clone(), tempfile::tempdir().expect("tempdir"), &[]);
        let n = e["greedy"].as_array().expect("greedy").len();
        let (status, v) = srv.post(
            "/v1/completions",
            json!({"model": folder, "prompt": e["prompt"], "max_tokens": n, "temperature": 0, "ignore_eos": true}),
        );
        assert_eq!(status, 200, "{family}: {v}");
        assert_eq!(
            v["usage"]["prompt_tokens"].as_u64(),
            Some(e["ids"].as_array().expect("ids").len() as u64),
            "{family}: the folder's tokenizer"
        );
        // The text as it reads after the prompt: transformers' decoding of prompt and
        // continuation together, from the end of the prompt on. (Its decoding of the
        // continuation alone differs for SentencePiece-style tokenizers, which drop a word
        // boundary's space at the start of a decode.)
        let all = e["decode_all"].as_str().expect("decode_all");
        let prompt = e["prompt"].as_str().expect("prompt");
        let after = &all[all.find(prompt).expect("the prompt in decode_all") + prompt.len()..];
        assert_eq!(v["choices"][0]["text"], after, "{family}: {v}");
        assert_eq!(v["usage"]["completion_tokens"].as_u64(), Some(n as u64));

        // Chat: the messages rendered by the folder's template are the prompt — the same
        // tokens and the same greedy reply as completing the rendering. Llama's is the one
        // transformers wrote; the Qwen2 fixture's 64-token context holds only a short
        // conversation, rendered here in ChatML as its template writes it.
        let (messages, rendered) = if family == "qwen2" {
            (
                json!([{"role": "user", "content": "What is 42?"}]),
                json!("<|im_start|>user\nWhat is 42?<|im_end|>\n<|im_start|>assistant\n"),
            )
        } else {
            (e["chat_messages"].clone(), e["chat"].clone())
        };
        let (status, c) = srv.post(
            "/v1/chat/completions",
            json!({"messages": messages, "max_tokens": 6, "temperature": 0, "ignore_eos": true}),
        );
        assert_eq!(status, 200, "{family}: {c}");
        assert_eq!(c["choices"][0]["message"]["role"], "assistant");
        // The rendering's tokens, its turn markers as the special tokens they are.
        let tok = tperf_runtime::hf::HfModel::open(Path::new(&folder))
            .expect("opens")
            .tokenizer
            .expect("tokenizer.json");
        let ids = tok.encode_special(rendered.as_str().expect("text"), false);
        assert!(
            ids.len() < rendered.as_str().unwrap().len() / 2,
            "{family}: markers are single tokens"
        );
        let (status, plain) = srv.post(
            "/v1/completions",
            json!({"prompt": ids, "max_tokens": 6, "temperature": 0, "ignore_eos": true}),
        );
        assert_eq!(status, 200, "{family}: {plain}");
        assert_eq!(
            c["usage"]["prompt_tokens"], plain["usage"]["prompt_tokens"],
            "{family}: the chat prompt is the template's rendering"
        );
        assert_eq!(
            c["choices"][0]["message"]["content"], plain["choices"][0]["text"],
            "{family}"
        );
    }
}

#[test]
fn streaming_sends_openai_chunks_usage_and_done() {
    let srv = Server::start(&[]);
    let body = json!({"prompt": "Hello", "max_tokens": 6, "temperature": 0, "ignore_eos": true, "stream": true, "stream_options": {"include_usage": true}});
    let (status, text) = srv.call("POST", "/v1/completions", &body.to_string());
    assert_eq!(status, 200);
    let ev = events(&text);
    assert_eq!(ev.last().map(String::as_str), Some("[DONE]"), "{text}");
    let chunks: Vec<Value> = ev[..ev.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).expect("json chunk"))
        .collect();
    let usage = chunks.last().expect("usage chunk");
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 6);
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "length");
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    let (_, whole) = srv.post(
        "/v1/completions",
        json!({"prompt": "Hello", "max_tokens": 6, "temperature": 0, "ignore_eos": true}),
    );
    assert_eq!(
        streamed,
        whole["choices"][0]["text"].as_str().expect("text")
    );
    for c in &chunks[..chunks.len() - 1] {
        assert_eq!(c["object"], "text_completion");
        assert!(c["usage"].is_null());
    }

    // Chat: a role chunk first, then content deltas, then the finish reason; no usage unasked.
    let body = json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "stream": true, "ignore_eos": true, "temperature": 0});
    let (status, text) = srv.call("POST", "/v1/chat/completions", &body.to_string());
    assert_eq!(status, 200);
    let ev = events(&text);
    assert_eq!(ev.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = ev[..ev.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).expect("json"))
        .collect();
    assert_eq!(chunks[0]["object"], "chat.completion.chunk");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks.iter().all(|c| c.get("usage").is_none()));
    let last = chunks.last().expect("finish");
    assert!(last["choices"][0]["finish_reason"].is_string());
    srv.wait_blocks(0.0);
}

#[test]
fn bad_requests_get_openai_errors_with_the_right_status() {
    let srv = Server::start(&[
        "--max-queue",
        "1",
        "--max-num-seqs",
        "1",
        "--debug-step-delay-ms",
        "20",
    ]);
    let bad = |body: &str, want: u16, param: Option<&str>| {
        let (status, text) = srv.call("POST", "/v1/completions", body);
        assert_eq!(status, want, "{body}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        let (_, p) = error_of(&v);
        if param.is_some() {
            assert_eq!(p, param, "{text}");
        }
    };
    bad("{not json", 400, None);
    bad("", 400, None);
    bad(r#"{"prompt": 5}"#, 400, None);
    bad(r#"{"prompt": "hi", "max_tokens": "ten"}"#, 400, None);
    bad(r#"{"prompt": "hi", "max_tokens": -1}"#, 400, None);
    bad(r#"{"prompt": "hi", "temperature": "hot"}"#, 400, None);
    bad(r#"{"prompt": "hi", "stream": 1}"#, 400, None);
    bad(
        r#"{"prompt": "hi", "max_tokens": 0}"#,
        400,
        Some("max_tokens"),
    );
    bad(
        r#"{"prompt": "hi", "max_tokens": 1000000}"#,
        400,
        Some("max_tokens"),
    );
    bad(
        r#"{"prompt": "hi", "max_tokens": 18446744073709551615}"#,
        400,
        Some("max_tokens"),
    );
    let long = "x".repeat(100);
    bad(&json!({"prompt": long}).to_string(), 400, Some("prompt"));
    bad(r#"{"prompt": ""}"#, 400, Some("prompt"));
    bad(r#"{"prompt": [300]}"#, 400, Some("prompt"));
    bad(r#"{"prompt": "hi", "top_p": 2}"#, 400, Some("top_p"));
    bad(r#"{"prompt": "hi", "n": 2}"#, 400, Some("n"));
    bad(r#"{"prompt": "hi", "model": "gpt-4"}"#, 404, Some("model"));
    let (status, text) = srv.call("POST", "/v1/chat/completions", r#"{"messages": []}"#);
    assert_eq!(status, 400, "{text}");
    let (status, text) = srv.call(
        "POST",
        "/v1/chat/completions",
        r#"{"messages": [{"role": "wizard", "content": "x"}]}"#,
    );
    assert_eq!(status, 400, "{text}");
    let (status, _) = srv.call("GET", "/v1/nothing", "");
    assert_eq!(status, 404);
    // Too large a body.
    let huge = format!(r#"{{"prompt": "{}"}}"#, "a".repeat(5 << 20));
    let (status, _) = srv.call_refused_early("POST", "/v1/completions", &huge);
    assert_eq!(status, 413);

    // A queue of 1 behind a batch of 1: hold the seat and the queue with two slow streams,
    // then the third request is refused with 429.
    let slow =
        json!({"prompt": "a", "max_tokens": 60, "ignore_eos": true, "stream": true}).to_string();
    let mut held = vec![srv.send("POST", "/v1/completions", &slow, &[])];
    let t = Instant::now();
    while srv.metric("tperf_num_requests_running") < 1.0 {
        assert!(t.elapsed() < Duration::from_secs(20));
    }
    held.push(srv.send("POST", "/v1/completions", &slow, &[]));
    while srv.metric("tperf_num_requests_waiting") < 1.0 {
        assert!(t.elapsed() < Duration::from_secs(20));
    }
    let (status, text) = srv.call(
        "POST",
        "/v1/completions",
        r#"{"prompt": "hi", "max_tokens": 2}"#,
    );
    // 60 tokens at 20 ms a step outlast this call.
    assert_eq!(status, 429, "{text}");
    let v: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(error_of(&v).0, "rate_limit_error");
    drop(held);
    srv.wait_blocks(0.0);
}

#[test]
fn a_client_that_hangs_up_mid_stream_frees_its_blocks() {
    // 20 ms a step: the request outlasts the test's reading and hanging up. Static batching:
    // a request alone in its batch is served, and freed, as under continuous batching.
    let srv = Server::start(&["--debug-step-delay-ms", "20", "--batching", "static"]);
    let body =
        json!({"prompt": "Hello there", "max_tokens": 50, "ignore_eos": true, "stream": true})
            .to_string();
    let s = srv.send("POST", "/v1/completions", &body, &[]);
    // Read the first event, then hang up.
    let mut r = BufReader::new(s);
    let mut line = String::new();
    while !line.starts_with("data: ") {
        line.clear();
        r.read_line(&mut line).expect("read");
    }
    assert!(srv.metric("tperf_kv_blocks_used") > 0.0);
    drop(r);
    srv.wait_blocks(0.0);
    assert_eq!(srv.metric("tperf_num_requests_running"), 0.0);
    let (_, text) = srv.call("GET", "/metrics", "");
    assert!(text.contains("finished_reason=\"cancelled\"} 1"), "{text}");
}

/// The issue's reliability case: a thousand streaming connections at once on the CPU, short
/// outputs, every one served and every KV block returned (about two seconds).
#[test]
fn many_concurrent_streams_finish_and_return_every_block() {
    let n: usize = std::env::var("TPERF_SERVE_STREAMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    // This process holds one socket per stream too: lift its soft limit on open files as the
    // server lifts its own.
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes, and setrlimit reads, the struct given, which outlives both.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
    let srv = Server::start(&["--max-queue", "100000"]);
    let srv = std::sync::Arc::new(srv);
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let srv = srv.clone();
            std::thread::spawn(move || {
                let body = json!({"prompt": format!("request {i}"), "max_tokens": 4, "ignore_eos": true, "stream": true, "user": format!("client{}", i % 3)}).to_string();
                let mut s = srv.send("POST", "/v1/completions", &body, &[]);
                let mut raw = Vec::new();
                s.read_to_end(&mut raw).expect("read");
                let (status, text) = parse_response(&raw);
                assert_eq!(status, 200, "{text}");
                let ev = events(&text);
                assert_eq!(ev.last().map(String::as_str), Some("[DONE]"), "{text}");
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a stream failed");
    }
    srv.wait_blocks(0.0);
    assert_eq!(srv.metric("tperf_num_requests_waiting"), 0.0);
    let (_, text) = srv.call("GET", "/metrics", "");
    assert!(
        text.contains(&format!("finished_reason=\"length\"}} {n}")),
        "{text}"
    );
}

#[test]
fn sigint_stops_accepting_finishes_in_flight_and_exits_0() {
    let mut srv = Server::start(&["--policy", "vtc", "--debug-step-delay-ms", "20"]);
    let body =
        json!({"prompt": "a", "max_tokens": 20, "ignore_eos": true, "stream": true}).to_string();
    let mut s = srv.send("POST", "/v1/completions", &body, &[]);
    let t = Instant::now();
    while srv.metric("tperf_num_requests_running") < 1.0 {
        assert!(t.elapsed() < Duration::from_secs(20));
    }
    let kill = Command::new("kill")
        .args(["-INT", &srv.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
    // The stream in flight still completes.
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read");
    let (status, text) = parse_response(&raw);
    assert_eq!(status, 200);
    assert!(text.contains("\"finish_reason\":\"length\""), "{text}");
    let t = Instant::now();
    let code = loop {
        if let Some(st) = srv.child.try_wait().expect("wait") {
            break st.code();
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the server did not exit"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(code, Some(0));
}

/// `tperf bench serve` costs the engine's host time per step from these sums: they exist from
/// the start, and a request's steps add to both parts and to the count.
#[test]
fn metrics_split_each_step_into_host_and_device_time_and_grow_with_a_request() {
    let srv = Server::start(&[]);
    let part = |suffix: &str, part: &str| {
        srv.metric(&format!(
            "tperf_engine_step_seconds_{suffix}{{model_name=\"{}\",part=\"{part}\"}}",
            srv.model
        ))
    };
    let read = || {
        (
            part("sum", "host"),
            part("sum", "device"),
            part("count", "host"),
            part("count", "device"),
            srv.metric("tperf_engine_step_sequences_total"),
        )
    };
    let before = read();
    let (status, v) = srv.post(
        "/v1/completions",
        json!({"prompt": "Hello", "max_tokens": 6, "temperature": 0, "ignore_eos": true}),
    );
    assert_eq!(status, 200, "{v}");
    let after = read();
    // One prefill step and five decode steps at least (the prompt fits one step's budget).
    assert!(after.2 - before.2 >= 6.0, "{before:?} → {after:?}");
    assert_eq!(
        after.2, after.3,
        "one count for both parts: every step has both"
    );
    assert!(
        after.4 - before.4 >= after.2 - before.2,
        "a step carries ≥ 1 sequence"
    );
    assert!(
        after.0 > before.0,
        "host seconds grew: {before:?} → {after:?}"
    );
    assert!(
        after.1 > before.1,
        "device seconds grew: {before:?} → {after:?}"
    );
}
