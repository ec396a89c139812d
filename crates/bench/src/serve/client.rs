//! The benchmark's HTTP side: one streaming request to an OpenAI-compatible server, timed chunk
//! by chunk, and the run that sends a whole schedule of them.
//!
//! HTTP is hyper's HTTP/1.1 client on tokio, one connection per request, rather than reqwest:
//! a serving benchmark talks plain HTTP to a server on the same host or cluster, and what it
//! needs is the moment each body frame arrives. hyper hands over frames as the socket delivers
//! them, with no pool, redirect or decompression layer between the socket and the timestamp,
//! and without a TLS stack to compile (an https server is reached through a local proxy).

use super::dataset::{Prompt, RequestSpec};
use super::metrics::RequestOutcome;
use super::sse::{Event, SseDecoder};
use super::ServeBenchError;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tperf_runtime::tokenizer::Tokenizer;

/// Why an exchange with the server failed. A failed request's outcome records this text, and
/// the summary counts failures by it, so it names the failure without the request's own data.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP handshake: {0}")]
    Handshake(#[source] hyper::Error),
    #[error("building the request: {0}")]
    BuildRequest(#[source] hyper::http::Error),
    #[error("sending the request: {0}")]
    Send(#[source] hyper::Error),
    #[error("reading the response: {0}")]
    ReadBody(#[source] hyper::Error),
    /// The server answered with another status than 200; `message` is what its error body says.
    #[error("HTTP {status}: {message}")]
    Status { status: StatusCode, message: String },
    #[error("not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    #[error("not UTF-8: {0}")]
    NotUtf8(#[source] std::string::FromUtf8Error),
    /// The request could not be written for this endpoint (the chat API given token ids).
    #[error(transparent)]
    Body(#[from] ServeBenchError),
    #[error("the stream broke off: {0}")]
    StreamBroke(#[source] hyper::Error),
    /// `chunk` is the start of the chunk's data.
    #[error("a stream chunk is not JSON ({source}): {chunk}")]
    ChunkNotJson {
        chunk: String,
        #[source]
        source: serde_json::Error,
    },
    /// The server sent an error event, or a chunk with an `error` field.
    #[error("error in stream: {message}")]
    InStream { message: String },
    #[error("the stream ended before data: [DONE]")]
    NoDone,
    #[error("the stream carried no output")]
    NoOutput,
    /// The whole response, to its last chunk, took longer than `--timeout-s`.
    #[error("no complete response within {timeout_s} s")]
    Timeout { timeout_s: f64 },
    /// A GET of one of the server's endpoints (`/v1/models`, `/metrics`) failed.
    #[error("GET {path}: {source}")]
    Get {
        path: &'static str,
        #[source]
        source: Box<ClientError>,
    },
}

/// Where the server is: `http://host[:port][/prefix]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    /// A path the endpoints sit under ("" for none), without a trailing slash.
    pub prefix: String,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, ServeBenchError> {
        let bad = |why: &str| ServeBenchError::Invalid(format!("--url {url}: {why}"));
        let uri: hyper::Uri = url.parse().map_err(|_| bad("not a URL"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(bad(
                    "https is not spoken here (plain HTTP/1.1 only): benchmark the server directly or through a local TLS proxy",
                ))
            }
            _ => return Err(bad("write it as http://HOST:PORT")),
        }
        let host = uri.host().ok_or_else(|| bad("no host"))?;
        Ok(Target {
            host: host.trim_matches(['[', ']']).to_string(),
            port: uri.port_u16().unwrap_or(80),
            prefix: uri.path().trim_end_matches('/').to_string(),
        })
    }

    pub fn url(&self) -> String {
        format!(
            "http://{}:{}{}",
            self.authority_host(),
            self.port,
            self.prefix
        )
    }

    fn authority_host(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        }
    }
}

/// Which OpenAI API the endpoint speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    /// `/v1/completions`: a prompt (text or token ids), chunks in `choices[0].text`.
    Completions,
    /// `/v1/chat/completions`: one user message, chunks in `choices[0].delta.content`.
    Chat,
}

impl Api {
    pub fn of_endpoint(endpoint: &str) -> Api {
        if endpoint.trim_end_matches('/').ends_with("chat/completions") {
            Api::Chat
        } else {
            Api::Completions
        }
    }
}

#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub target: Target,
    pub endpoint: String,
    pub model: String,
    pub api: Api,
    /// Sent as vLLM's `ignore_eos` so outputs run to `max_tokens`; a server that ignores it and
    /// stops early is counted by what it sent.
    pub ignore_eos: bool,
    pub api_key: Option<String>,
    pub request_timeout: Duration,
}

impl ClientConfig {
    pub fn body(&self, spec: &RequestSpec, client: usize) -> Result<Value, ServeBenchError> {
        let mut body = json!({
            "model": self.model,
            "max_tokens": spec.output_len,
            "temperature": 0.0,
            "stream": true,
            "stream_options": {"include_usage": true},
            "user": client_name(client),
        });
        match (self.api, &spec.prompt) {
            (Api::Completions, Prompt::Text(t)) => body["prompt"] = json!(t),
            (Api::Completions, Prompt::Ids(ids)) => body["prompt"] = json!(ids),
            (Api::Chat, Prompt::Text(t)) => {
                body["messages"] = json!([{"role": "user", "content": t}])
            }
            (Api::Chat, Prompt::Ids(_)) => {
                return Err(ServeBenchError::Invalid(
                    "the chat API takes text: use --random-prompt text with /v1/chat/completions"
                        .into(),
                ))
            }
        }
        if self.ignore_eos {
            body["ignore_eos"] = json!(true);
        }
        Ok(body)
    }
}

/// The `user` field of a client's requests: what a fair scheduler tells clients apart by.
pub fn client_name(client: usize) -> String {
    format!("client-{client}")
}

async fn connect(
    target: &Target,
) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, ClientError> {
    let stream = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|source| ClientError::Connect {
            url: target.url(),
            source,
        })?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(ClientError::Handshake)?;
    // The connection task ends with the request; its error, if any, reaches the body reader.
    tokio::spawn(conn);
    Ok(sender)
}

fn request(
    cfg_target: &Target,
    method: Method,
    path: &str,
    api_key: Option<&str>,
    body: Bytes,
) -> Result<Request<Full<Bytes>>, ClientError> {
    let mut b = Request::builder()
        .method(method)
        .uri(format!("{}{path}", cfg_target.prefix))
        .header(
            hyper::header::HOST,
            format!("{}:{}", cfg_target.authority_host(), cfg_target.port),
        )
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::ACCEPT, "text/event-stream, application/json");
    if let Some(key) = api_key {
        b = b.header(hyper::header::AUTHORIZATION, format!("Bearer {key}"));
    }
    b.body(Full::new(body)).map_err(ClientError::BuildRequest)
}

/// The message of an OpenAI-style error body (`{"error": {"message": …}}`, or vLLM's older
/// `{"message": …}`), else the body's text, cut short.
fn error_message(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    if let Ok(v) = serde_json::from_str::<Value>(&text) {
        let msg = v
            .get("error")
            .and_then(|e| e.get("message").or(Some(e)))
            .or_else(|| v.get("message"));
        if let Some(m) = msg {
            return m.as_str().map_or_else(|| m.to_string(), str::to_string);
        }
    }
    text.chars().take(200).collect()
}

/// GET `path`: the body of a 200 answer.
async fn get(
    target: &Target,
    path: &'static str,
    api_key: Option<&str>,
) -> Result<Bytes, ClientError> {
    let mut sender = connect(target).await?;
    let req = request(target, Method::GET, path, api_key, Bytes::new())?;
    let resp = sender.send_request(req).await.map_err(ClientError::Send)?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(ClientError::ReadBody)?
        .to_bytes();
    if status != StatusCode::OK {
        return Err(ClientError::Status {
            status,
            message: error_message(&body),
        });
    }
    Ok(body)
}

impl ClientError {
    fn during_get(self, path: &'static str) -> ClientError {
        ClientError::Get {
            path,
            source: Box::new(self),
        }
    }
}

/// GET `/v1/models`: the ids the server serves.
pub async fn models(target: &Target, api_key: Option<&str>) -> Result<Vec<String>, ClientError> {
    const PATH: &str = "/v1/models";
    let body = get(target, PATH, api_key)
        .await
        .map_err(|e| e.during_get(PATH))?;
    let v: Value =
        serde_json::from_slice(&body).map_err(|e| ClientError::NotJson(e).during_get(PATH))?;
    Ok(v["data"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| m["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default())
}

/// The server's `/metrics` text (Prometheus' exposition), for the engine's step counters.
pub async fn metrics_text(target: &Target, api_key: Option<&str>) -> Result<String, ClientError> {
    const PATH: &str = "/metrics";
    let body = get(target, PATH, api_key)
        .await
        .map_err(|e| e.during_get(PATH))?;
    String::from_utf8(body.to_vec()).map_err(|e| ClientError::NotUtf8(e).during_get(PATH))
}

/// What the stream has said so far.
#[derive(Default)]
struct Stream {
    chunk_s: Vec<f64>,
    text: String,
    usage_prompt: Option<u64>,
    usage_output: Option<u64>,
    finish_reason: Option<String>,
    done: bool,
}

impl Stream {
    /// One event, arrived `at_s` after the request was sent. An output chunk is one whose
    /// choice carries text (vLLM times every chunk with a choice; a chat stream's opening
    /// chunk carries only the role, and timing it would shorten the TTFT by a chunk).
    fn event(&mut self, api: Api, e: &Event, at_s: f64) -> Result<(), ClientError> {
        if e.data.trim() == "[DONE]" {
            self.done = true;
            return Ok(());
        }
        let v: Value =
            serde_json::from_str(&e.data).map_err(|source| ClientError::ChunkNotJson {
                chunk: e.data.chars().take(80).collect(),
                source,
            })?;
        if e.name.as_deref() == Some("error") || v.get("error").is_some_and(|x| !x.is_null()) {
            return Err(ClientError::InStream {
                message: error_message(e.data.as_bytes()),
            });
        }
        if let Some(choice) = v["choices"].as_array().and_then(|c| c.first()) {
            let text = match api {
                Api::Completions => choice["text"].as_str(),
                Api::Chat => choice["delta"]["content"].as_str(),
            };
            if let Some(t) = text.filter(|t| api == Api::Completions || !t.is_empty()) {
                self.chunk_s.push(at_s);
                self.text.push_str(t);
            }
            if let Some(r) = choice["finish_reason"].as_str() {
                self.finish_reason = Some(r.to_string());
            }
        }
        if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
            self.usage_prompt = u["prompt_tokens"].as_u64().or(self.usage_prompt);
            self.usage_output = u["completion_tokens"].as_u64().or(self.usage_output);
        }
        Ok(())
    }
}

/// Sends one request and times its stream; never fails: a failure is an outcome with its
/// error, kept and counted.
pub async fn send(
    cfg: &ClientConfig,
    tok: &Tokenizer,
    spec: &RequestSpec,
    client: usize,
    t0: Instant,
) -> RequestOutcome {
    let start = Instant::now();
    let mut out = RequestOutcome {
        client,
        sent_s: (start - t0).as_secs_f64(),
        prompt_tokens: spec.prompt_len as u64,
        ..Default::default()
    };
    let mut stream = Stream::default();
    let result = tokio::time::timeout(
        cfg.request_timeout,
        stream_one(cfg, spec, client, start, &mut stream),
    )
    .await
    .unwrap_or_else(|_| {
        Err(ClientError::Timeout {
            timeout_s: cfg.request_timeout.as_secs_f64(),
        })
    });
    let end_s = start.elapsed().as_secs_f64();
    out.chunk_s = stream.chunk_s;
    out.finish_reason = stream.finish_reason;
    out.error = match result {
        Ok(()) if out.chunk_s.is_empty() => Some(ClientError::NoOutput.to_string()),
        Ok(()) => None,
        Err(e) => Some(e.to_string()),
    };
    out.ttft_s = out.chunk_s.first().copied().unwrap_or(end_s);
    out.e2el_s = if out.ok() {
        out.chunk_s.last().copied().unwrap_or(end_s)
    } else {
        end_s
    };
    out.usage_reported = stream.usage_output.is_some();
    if let Some(p) = stream.usage_prompt {
        out.prompt_tokens = p;
    }
    out.output_tokens = stream
        .usage_output
        .unwrap_or_else(|| tok.encode(&stream.text).len() as u64);
    out
}

async fn stream_one(
    cfg: &ClientConfig,
    spec: &RequestSpec,
    client: usize,
    start: Instant,
    stream: &mut Stream,
) -> Result<(), ClientError> {
    let body = cfg.body(spec, client)?;
    let mut sender = connect(&cfg.target).await?;
    let req = request(
        &cfg.target,
        Method::POST,
        &cfg.endpoint,
        cfg.api_key.as_deref(),
        Bytes::from(body.to_string()),
    )?;
    let resp = sender.send_request(req).await.map_err(ClientError::Send)?;
    let status = resp.status();
    let mut body = resp.into_body();
    if status != StatusCode::OK {
        let bytes = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        return Err(ClientError::Status {
            status,
            message: error_message(&bytes),
        });
    }
    let mut sse = SseDecoder::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(ClientError::StreamBroke)?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        let at_s = start.elapsed().as_secs_f64();
        for e in sse.feed(data) {
            stream.event(cfg.api, &e, at_s)?;
        }
        if stream.done {
            return Ok(());
        }
    }
    if let Some(e) = sse.finish() {
        stream.event(cfg.api, &e, start.elapsed().as_secs_f64())?;
    }
    if stream.done {
        Ok(())
    } else {
        Err(ClientError::NoDone)
    }
}

/// One request of a run: what to send, for which client, and when (seconds from the start).
#[derive(Clone, Debug)]
pub struct Scheduled {
    pub spec: RequestSpec,
    pub client: usize,
    pub at_s: f64,
}

/// Sends every request at its time (waiting for a slot first when `max_concurrency` caps the
/// requests in flight, as vLLM does: the wait is the client's and not in TTFT), and returns the
/// outcomes in schedule order with the run's duration: from the start to the last finish.
pub async fn run(
    cfg: Arc<ClientConfig>,
    tok: Tokenizer,
    schedule: Vec<Scheduled>,
    max_concurrency: Option<usize>,
    on_done: Arc<dyn Fn(&RequestOutcome) + Send + Sync>,
) -> (Vec<RequestOutcome>, f64) {
    let slots = max_concurrency.map(|n| Arc::new(Semaphore::new(n.max(1))));
    let t0 = Instant::now();
    let mut tasks = Vec::with_capacity(schedule.len());
    for s in schedule {
        tokio::time::sleep_until((t0 + Duration::from_secs_f64(s.at_s.max(0.0))).into()).await;
        let (cfg, slots, on_done, tok) = (cfg.clone(), slots.clone(), on_done.clone(), tok.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = match &slots {
                Some(s) => s.clone().acquire_owned().await.ok(),
                None => None,
            };
            let out = send(&cfg, &tok, &s.spec, s.client, t0).await;
            on_done(&out);
            out
        }));
    }
    let mut outcomes = Vec::with_capacity(tasks.len());
    for t in tasks {
        outcomes.push(t.await.unwrap_or_else(|e| RequestOutcome {
            error: Some(format!("the request's task failed: {e}")),
            ..Default::default()
        }));
    }
    (outcomes, t0.elapsed().as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = Target::parse("http://127.0.0.1:8000").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.prefix.as_str()),
            ("127.0.0.1", 8000, "")
        );
        let t = Target::parse("http://example:9/api/").unwrap();
        assert_eq!((t.port, t.prefix.as_str()), (9, "/api"));
        assert_eq!(Target::parse("http://h").unwrap().port, 80);
        assert_eq!(Target::parse("http://[::1]:8000").unwrap().host, "::1");
        assert!(Target::parse("https://h:1").is_err());
        assert!(Target::parse("127.0.0.1:8000").is_err());
    }

    #[test]
    fn stream_events() {
        let ev = |s: &str| Event {
            name: None,
            data: s.into(),
        };
        let mut s = Stream::default();
        s.event(
            Api::Chat,
            &ev(r#"{"choices":[{"delta":{"role":"assistant","content":""}}]}"#),
            0.1,
        )
        .unwrap();
        assert!(s.chunk_s.is_empty(), "a role-only chunk is not output");
        s.event(
            Api::Chat,
            &ev(r#"{"choices":[{"delta":{"content":"hi"}}]}"#),
            0.2,
        )
        .unwrap();
        s.event(
            Api::Chat,
            &ev(r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}"#),
            0.3,
        )
        .unwrap();
        s.event(Api::Chat, &ev("[DONE]"), 0.3).unwrap();
        assert_eq!(s.chunk_s, vec![0.2]);
        assert_eq!(
            (s.usage_prompt, s.usage_output, s.done),
            (Some(3), Some(1), true)
        );
        let err = Stream::default()
            .event(
                Api::Completions,
                &ev(r#"{"error":{"message":"out of blocks","code":500}}"#),
                0.0,
            )
            .unwrap_err();
        assert!(err.to_string().contains("out of blocks"), "{err}");
        let named = Event {
            name: Some("error".into()),
            data: "{}".into(),
        };
        assert!(Stream::default()
            .event(Api::Completions, &named, 0.0)
            .is_err());
        assert!(Stream::default()
            .event(Api::Completions, &ev("not json"), 0.0)
            .is_err());
    }

    #[test]
    fn error_bodies() {
        assert_eq!(
            error_message(
                br#"{"error":{"message":"prompt too long","type":"invalid_request_error"}}"#
            ),
            "prompt too long"
        );
        assert_eq!(error_message(br#"{"message":"old style"}"#), "old style");
        assert_eq!(
            error_message(b"Internal Server Error"),
            "Internal Server Error"
        );
    }
}
