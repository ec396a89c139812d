//! `tperf bench serve` and `tperf plan serve` as a user runs them: the binary against a tiny
//! OpenAI-compatible stub (plain threads and sockets: a fixed two-token stream per request),
//! its table, its JSON with provenance, and the prediction beside it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::Command;

/// Answers every connection: /v1/models with one model, anything else with a stream of two
/// tokens, a usage chunk and [DONE], the body delimited by closing the connection.
fn stub() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut first = String::new();
                let mut length = 0;
                let _ = reader.read_line(&mut first);
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                let mut out = stream;
                if first.starts_with("GET /v1/models") {
                    let b = r#"{"object":"list","data":[{"id":"stub-model"}]}"#;
                    let _ = write!(
                        out,
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{b}",
                        b.len()
                    );
                    return;
                }
                let _ = write!(out, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n");
                for t in [" a", " b"] {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    let _ = write!(
                        out,
                        "data: {{\"choices\":[{{\"index\":0,\"text\":\"{t}\"}}]}}\n\n"
                    );
                    let _ = out.flush();
                }
                let _ = write!(out, "data: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":16,\"completion_tokens\":2}}}}\n\ndata: [DONE]\n\n");
            });
        }
    });
    port
}

#[test]
fn bench_serve_measures_a_stub_and_writes_json_with_provenance() {
    let port = stub();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("run.json");
    let o = Command::new(env!("CARGO_BIN_EXE_tperf"))
        .args([
            "bench",
            "serve",
            "--url",
            &format!("http://127.0.0.1:{port}"),
            "--num-prompts",
            "12",
            "--random-input-len",
            "16",
            "--random-output-len",
            "2",
            "--request-rate",
            "200",
            "--clients",
            "2",
            "--goodput",
            "ttft:1000",
            "--model-config",
            "gpt2-124m",
            "--hw",
            "h200",
            "--dtype",
            "bf16",
            "--json",
            json.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{}\n{out}",
        String::from_utf8_lossy(&o.stderr)
    );
    for s in [
        "mean TTFT (ms)",
        "p99 TPOT (ms)",
        "predicted",
        "Service per client",
        "largest service gap",
    ] {
        assert!(out.contains(s), "{s} missing from\n{out}");
    }
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(v["metrics"]["completed"], 12);
    assert_eq!(v["metrics"]["failed"], 0);
    assert_eq!(v["metrics"]["total_output_tokens"], 24);
    assert_eq!(v["metrics"]["total_input_tokens"], 12 * 16);
    assert!(v["vllm"]["p99_ttft_ms"].as_f64().unwrap() > 0.0);
    assert!(v["metrics"]["request_goodput"].as_f64().unwrap() > 0.0);
    assert_eq!(v["provenance"]["model"], "stub-model");
    assert!(v["provenance"]["git_revision"].is_string());
    assert!(v["provenance"]["command_line"].as_array().unwrap().len() > 5);
    assert_eq!(v["requests"].as_array().unwrap().len(), 12);
    assert_eq!(v["fairness"]["service"].as_array().unwrap().len(), 2);
    assert!(
        v["prediction"]["saturation"]["output_throughput"]
            .as_f64()
            .unwrap()
            > 0.0
    );
}

/// A sweep of three rates against the stub: a row per rate, the SLO's verdict, the sweep's
/// JSON, and `tperf report --serving` drawing it beside a second labelled sweep.
#[test]
fn bench_serve_sweeps_rates_and_the_report_draws_them() {
    let port = stub();
    let dir = tempfile::tempdir().unwrap();
    let sweep = |label: &str| {
        let json = dir.path().join(format!("{label}.json"));
        let o = Command::new(env!("CARGO_BIN_EXE_tperf"))
            .args([
                "bench",
                "serve",
                "--url",
                &format!("http://127.0.0.1:{port}"),
                "--num-prompts",
                "20",
                "--random-input-len",
                "16",
                "--random-output-len",
                "2",
                "--request-rate",
                "50,400,inf",
                "--sweep-duration-s",
                "0.2",
                "--ttft-p99-slo-ms",
                "10000",
                "--label",
                label,
                "--omit-requests",
                "--json",
                json.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(
            o.status.success(),
            "{}\n{out}",
            String::from_utf8_lossy(&o.stderr)
        );
        (json, out)
    };
    let (a, out) = sweep("continuous");
    assert!(out.contains("Request-rate sweep"), "{out}");
    assert!(
        out.contains("continuous: the highest rate with p99 TTFT ≤ 10000 ms is inf req/s"),
        "{out}"
    );
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&a).unwrap()).unwrap();
    let runs = v["sweep"].as_array().unwrap();
    assert_eq!(runs.len(), 3);
    // 0.2 s of arrivals at 50 req/s is 10 prompts, raised to the floor of 16; inf sends all 20.
    assert_eq!(runs[0]["metrics"]["completed"], 16);
    assert_eq!(runs[2]["metrics"]["completed"], 20);
    assert!(runs[0].get("requests").is_none());
    let summary = &v["serving"]["runs"];
    assert_eq!(summary[1]["request_rate"], 400.0);
    assert!(summary[2]["request_rate"].is_null());
    assert!(summary[2]["ttft"]["p99_ms"].as_f64().unwrap() > 0.0);
    assert!(!summary[0]["ttft_cdf"].as_array().unwrap().is_empty());
    let (b, _) = sweep("static");
    let page = dir.path().join("page");
    let o = Command::new(env!("CARGO_BIN_EXE_tperf"))
        .args(["report", "--serving"])
        .args([&a, &b])
        .arg("--out")
        .arg(&page)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let html = std::fs::read_to_string(page.join("report.html")).unwrap();
    assert!(html.matches("<svg").count() >= 5, "{html}");
    assert!(html.contains("static @ 400 req/s"));
    for bad in ["http://", "https://", "src=", "href="] {
        assert!(!html.contains(bad), "the page names {bad}");
    }
}

#[test]
fn bench_serve_without_a_server_says_so() {
    let o = Command::new(env!("CARGO_BIN_EXE_tperf"))
        .args([
            "bench",
            "serve",
            "--url",
            "http://127.0.0.1:1",
            "--num-prompts",
            "2",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot connect"));
}

#[test]
fn plan_serve_json() {
    let o = Command::new(env!("CARGO_BIN_EXE_tperf"))
        .args([
            "plan",
            "serve",
            "gpt2-124m",
            "--hw",
            "h200",
            "--dtype",
            "bf16",
            "--request-rate",
            "10,1e9",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["saturation"]["batch"], 256);
    assert!(v["rates"][0]["ttft_seconds"].as_f64().unwrap() > 0.0);
    assert!(v["rates"][1]["ttft_seconds"].is_null(), "past saturation");
}
