//! The serving benchmark client against an in-process mock of an OpenAI-compatible server
//! whose streams follow a known schedule: chunk i of a request leaves at TTFT + i·ITL after the
//! request arrived, so the client's TTFT, TPOT, ITL, E2EL, throughput and percentiles can be
//! checked against it. The prompt tells the mock what to do:
//!   "ttft=MS itl=MS"  stream with that schedule (defaults 50 and 10)
//!   "fail500"         answer 500 with OpenAI's error body
//!   "close"           two chunks, then the connection is cut mid-stream
//!   "nodone"          a clean end of the body without data: [DONE]
//!   "nousage"         no usage chunk: the client counts tokens itself
//!   "errorevent"      one chunk, then an error event in the stream
//! Tolerances: the mock and client share a 2-core machine with other work, so a chunk may be
//! late by scheduling noise (a few ms, more under load) but never early.

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tperf_bench::serve::client::{self, Api, ClientConfig, ClientError, Scheduled, Target};
use tperf_bench::serve::dataset::{Prompt, RequestSpec};
use tperf_bench::serve::metrics::{Metrics, Slo};
use tperf_runtime::tokenizer::Tokenizer;

/// A body fed from a channel; an Err item makes hyper abort the connection mid-body.
struct ChannelBody(mpsc::Receiver<Result<Bytes, std::io::Error>>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.0.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data)))
    }
}

fn param(prompt: &str, key: &str, default: u64) -> u64 {
    prompt
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
        .unwrap_or(default)
}

fn chunk(text: &str) -> Bytes {
    let c = json!({"object": "text_completion", "choices": [{"index": 0, "text": text, "finish_reason": null}]});
    Bytes::from(format!("data: {c}\n\n"))
}

async fn handle(
    req: Request<hyper::body::Incoming>,
) -> Result<Response<ChannelBody>, hyper::Error> {
    let arrived = Instant::now();
    let path = req.uri().path().to_string();
    let body = req.into_body().collect().await?.to_bytes();
    let (tx, rx) = mpsc::channel(64);
    let respond = |status: u16, rx| {
        Response::builder()
            .status(status)
            .header("content-type", "text/event-stream")
            .body(ChannelBody(rx))
            .expect("a valid response")
    };
    if path == "/v1/models" {
        let _ = tx.try_send(Ok(Bytes::from(
            json!({"object": "list", "data": [{"id": "mock-model"}]}).to_string(),
        )));
        return Ok(respond(200, rx));
    }
    let v: Value = serde_json::from_slice(&body).unwrap_or_default();
    let prompt = v["prompt"].as_str().unwrap_or("").to_string();
    let n = v["max_tokens"].as_u64().unwrap_or(1);
    assert_eq!(v["stream"], true);
    assert_eq!(v["stream_options"]["include_usage"], true);
    if prompt.contains("fail500") {
        let _ = tx.try_send(Ok(Bytes::from(
            r#"{"error":{"message":"the mock fails","type":"server_error","code":500}}"#,
        )));
        return Ok(respond(500, rx));
    }
    let (ttft, itl) = (param(&prompt, "ttft", 50), param(&prompt, "itl", 10));
    tokio::spawn(async move {
        let at = |i: u64| arrived + Duration::from_millis(ttft + i * itl);
        for i in 0..n {
            tokio::time::sleep_until(at(i).into()).await;
            if prompt.contains("close") && i == 2 {
                let _ = tx.send(Err(std::io::Error::other("cut"))).await;
                return;
            }
            if prompt.contains("errorevent") && i == 1 {
                let _ = tx
                    .send(Ok(Bytes::from(
                        "event: error\ndata: {\"error\": {\"message\": \"engine died\"}}\n\n",
                    )))
                    .await;
                return;
            }
            // The first chunk in two writes a little apart: the client must join them.
            if i == 0 {
                let c = chunk(" a");
                let _ = tx.send(Ok(c.slice(..10))).await;
                tokio::time::sleep(Duration::from_millis(2)).await;
                let _ = tx.send(Ok(c.slice(10..))).await;
            } else {
                let _ = tx.send(Ok(chunk(" a"))).await;
            }
        }
        if !prompt.contains("nousage") {
            let usage = json!({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": n, "total_tokens": 7 + n}});
            let _ = tx
                .send(Ok(Bytes::from(format!(
                    ": keep-alive\n\ndata: {usage}\n\n"
                ))))
                .await;
        }
        if !prompt.contains("nodone") {
            let _ = tx.send(Ok(Bytes::from("data: [DONE]\n\n"))).await;
        }
    });
    Ok(respond(200, rx))
}

async fn mock() -> Target {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), hyper::service::service_fn(handle))
                    .await;
            });
        }
    });
    Target::parse(&format!("http://127.0.0.1:{port}")).unwrap()
}

fn config(target: Target) -> Arc<ClientConfig> {
    Arc::new(ClientConfig {
        target,
        endpoint: "/v1/completions".into(),
        model: "mock-model".into(),
        api: Api::Completions,
        ignore_eos: true,
        api_key: None,
        request_timeout: Duration::from_secs(10),
    })
}

fn spec(prompt: &str, output_len: usize) -> RequestSpec {
    RequestSpec {
        prompt: Prompt::Text(prompt.into()),
        prompt_len: 3,
        output_len,
    }
}

fn at_once(specs: Vec<RequestSpec>) -> Vec<Scheduled> {
    specs
        .into_iter()
        .map(|spec| Scheduled {
            spec,
            client: 0,
            at_s: 0.0,
        })
        .collect()
}

async fn run(
    target: Target,
    schedule: Vec<Scheduled>,
    cap: Option<usize>,
) -> (Vec<tperf_bench::serve::metrics::RequestOutcome>, f64) {
    client::run(
        config(target),
        Tokenizer::gpt2(),
        schedule,
        cap,
        Arc::new(|_| {}),
    )
    .await
}

/// Late by at most `slack` seconds, never early.
fn near(got: f64, want: f64, slack: f64) -> bool {
    got >= want - 1e-3 && got <= want + slack
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latencies_follow_the_mock_schedule() {
    let target = mock().await;
    assert_eq!(
        client::models(&target, None).await.unwrap(),
        vec!["mock-model".to_string()]
    );
    // TTFTs of 20, 40, 60, 120, 160 ms, 8 tokens 10 ms apart: E2EL = TTFT + 70 ms, TPOT 10 ms.
    let specs: Vec<_> = [20, 40, 60, 120, 160]
        .iter()
        .map(|t| spec(&format!("ttft={t} itl=10"), 8))
        .collect();
    let (outcomes, duration) = run(target, at_once(specs), None).await;
    let slo = Slo {
        ttft_ms: Some(100.0),
        ..Slo::default()
    };
    let m = Metrics::of(&outcomes, duration, &[50.0, 90.0], &slo);
    assert_eq!((m.completed, m.failed), (5, 0), "{:?}", m.errors);
    for (r, t) in outcomes.iter().zip([0.02, 0.04, 0.06, 0.12, 0.16]) {
        assert!(near(r.ttft_s, t, 0.03), "ttft {} for {t}", r.ttft_s);
        assert!(near(r.e2el_s, t + 0.07, 0.04), "e2el {}", r.e2el_s);
        assert_eq!((r.output_tokens, r.prompt_tokens), (8, 7), "from usage");
        assert!(r.usage_reported);
        assert_eq!(r.chunk_s.len(), 8, "the split first chunk is one chunk");
    }
    let ttft = m.ttft.unwrap();
    assert!(near(ttft.median_ms / 1e3, 0.06, 0.03));
    // numpy: p90 of 20, 40, 60, 120, 160 = 120 + 0.6·40 = 144 ms.
    assert!(near(ttft.percentiles_ms[1].1 / 1e3, 0.144, 0.03));
    let tpot = m.tpot.unwrap();
    // A late first chunk (it is sent in two writes 2 ms apart) shortens the gaps after it, so
    // these two are checked both ways.
    assert!((tpot.mean_ms - 10.0).abs() < 4.0, "tpot {}", tpot.mean_ms);
    let itl = m.itl.unwrap();
    assert_eq!(itl.n, 5 * 7);
    assert!((itl.median_ms - 10.0).abs() < 4.0, "itl {}", itl.median_ms);
    // All five at once: the run lasts as long as the slowest, 230 ms.
    assert!(near(duration, 0.23, 0.1), "duration {duration}");
    assert_eq!(m.max_concurrent_requests, 5);
    assert!((m.request_throughput - 5.0 / duration).abs() < 1e-9);
    assert_eq!(m.total_output_tokens, 40);
    assert!((m.output_throughput * duration - 40.0).abs() < 1e-9);
    assert!((m.total_token_throughput * duration - 75.0).abs() < 1e-9);
    // TTFT ≤ 100 ms: the first three (late by less than 40 ms), not the last two.
    assert!((m.request_goodput.unwrap() * duration - 3.0).abs() < 1e-9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrency_cap_and_a_rate_shape_the_run() {
    let target = mock().await;
    // One at a time: four requests of 50 + 3·10 ms each, back to back.
    let specs: Vec<_> = (0..4).map(|_| spec("ttft=50 itl=10", 4)).collect();
    let (outcomes, duration) = run(target.clone(), at_once(specs), Some(1)).await;
    let m = Metrics::of(&outcomes, duration, &[99.0], &Slo::default());
    assert_eq!(m.completed, 4);
    assert_eq!(m.max_concurrent_requests, 1);
    assert!(near(duration, 0.32, 0.12), "duration {duration}");
    // The queueing for the slot is the client's: each TTFT is the server's 50 ms.
    assert!(outcomes.iter().all(|r| near(r.ttft_s, 0.05, 0.03)));
    // Sent on a schedule: each request leaves at its time.
    let schedule: Vec<_> = [0.0, 0.03, 0.09, 0.1]
        .iter()
        .map(|&at_s| Scheduled {
            spec: spec("ttft=20 itl=5", 2),
            client: 0,
            at_s,
        })
        .collect();
    let (outcomes, _) = run(target, schedule.clone(), None).await;
    for (r, s) in outcomes.iter().zip(&schedule) {
        assert!(
            near(r.sent_s, s.at_s, 0.02),
            "sent {} for {}",
            r.sent_s,
            s.at_s
        );
        assert!(r.ok());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_counted_not_dropped() {
    let target = mock().await;
    let specs = vec![
        spec("fail500", 4),
        spec("close ttft=5 itl=5", 6),
        spec("nodone ttft=5 itl=5", 3),
        spec("errorevent ttft=5 itl=5", 3),
        spec("nousage ttft=5 itl=5", 5),
        spec("ttft=5 itl=5", 3),
    ];
    let (outcomes, duration) = run(target, at_once(specs), None).await;
    let errs: Vec<_> = outcomes.iter().map(|r| r.error.clone()).collect();
    let has = |i: usize, s: &str| errs[i].as_deref().is_some_and(|e| e.contains(s));
    assert!(
        has(0, "HTTP 500") && has(0, "the mock fails"),
        "{:?}",
        errs[0]
    );
    assert!(has(1, "broke off"), "{:?}", errs[1]);
    assert!(has(2, "[DONE]"), "{:?}", errs[2]);
    assert!(has(3, "engine died"), "{:?}", errs[3]);
    assert!(errs[4].is_none() && errs[5].is_none(), "{errs:?}");
    // Without usage the tokenizer counts: " a" five times is five GPT-2 tokens.
    assert!(!outcomes[4].usage_reported);
    assert_eq!(outcomes[4].output_tokens, 5);
    assert_eq!(outcomes[4].prompt_tokens, 3, "the dataset's count");
    let m = Metrics::of(&outcomes, duration, &[99.0], &Slo::default());
    assert_eq!((m.completed, m.failed), (2, 4));
    assert_eq!(m.errors.values().sum::<usize>(), 4);
    assert_eq!(m.total_output_tokens, 8);
    // Nobody listening: a failed outcome, not a panic or a hang.
    let closed = Target::parse("http://127.0.0.1:1").unwrap();
    let (outcomes, _) = run(closed.clone(), at_once(vec![spec("x", 1)]), None).await;
    assert!(outcomes[0]
        .error
        .as_deref()
        .is_some_and(|e| e.contains("connect")));
    // A GET names its path before the cause, which it keeps.
    let err = client::models(&closed, None).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Get { path: "/v1/models", source }
            if matches!(**source, ClientError::Connect { .. })),
        "{err}"
    );
    assert!(err
        .to_string()
        .starts_with("GET /v1/models: cannot connect to http://127.0.0.1:1"));
}
