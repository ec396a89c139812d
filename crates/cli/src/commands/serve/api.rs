//! OpenAI's request and response shapes, as far as tperf serves them: what the `openai` client
//! and `vllm bench serve`-style clients send and parse.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

#[derive(Deserialize, Debug)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

#[derive(Deserialize, Debug)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

impl Stop {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s],
            Stop::Many(v) => v,
        }
    }
}

#[derive(Deserialize, Debug, Default)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// The sampling and stopping fields both endpoints share. Fields tperf does not know are
/// ignored (clients send many); a known field of the wrong type is a 400.
#[derive(Deserialize, Debug, Default)]
pub struct Common {
    pub model: Option<String>,
    pub max_tokens: Option<u64>,
    /// The chat endpoint's newer name for max_tokens.
    pub max_completion_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    /// vLLM's extension; -1 (or 0) means no cut.
    pub top_k: Option<i64>,
    pub seed: Option<u64>,
    pub stop: Option<Stop>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub user: Option<String>,
    pub n: Option<u64>,
    /// vLLM's extension: generate exactly max_tokens (benchmarks use it).
    #[serde(default)]
    pub ignore_eos: bool,
}

#[derive(Deserialize, Debug)]
pub struct CompletionRequest {
    pub prompt: Prompt,
    #[serde(flatten)]
    pub common: Common,
}

#[derive(Deserialize, Debug)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Deserialize, Debug)]
pub struct Part {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: String,
}

#[derive(Deserialize, Debug)]
pub struct Message {
    pub role: String,
    pub content: Option<Content>,
}

#[derive(Deserialize, Debug)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    #[serde(flatten)]
    pub common: Common,
}

impl Content {
    pub fn text(&self) -> Result<String, String> {
        match self {
            Content::Text(s) => Ok(s.clone()),
            Content::Parts(parts) => parts
                .iter()
                .map(|p| match p.kind.as_str() {
                    "text" => Ok(p.text.as_str()),
                    other => Err(format!("content parts of type '{other}' are not supported: tperf's models read text")),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(|v| v.concat()),
        }
    }
}

/// tperf's chat template, for models trained on plain text (there are no special tokens to
/// mark turns): a system message first as a paragraph, then each turn on its own line as
/// `User: …` / `Assistant: …`, ending with `Assistant:` for the model to continue. Generation
/// also stops at "\nUser:", where the model starts writing the user's next turn.
pub const CHAT_STOP: &str = "\nUser:";

pub fn chat_prompt(messages: &[Message]) -> Result<String, String> {
    let mut out = String::new();
    for m in messages {
        let text = match &m.content {
            Some(c) => c.text()?,
            None => String::new(),
        };
        match m.role.as_str() {
            "system" | "developer" => {
                out.push_str(&text);
                out.push_str("\n\n");
            }
            "user" => {
                out.push_str("User: ");
                out.push_str(&text);
                out.push('\n');
            }
            "assistant" => {
                out.push_str("Assistant: ");
                out.push_str(&text);
                out.push('\n');
            }
            other => {
                return Err(format!(
                    "unknown message role '{other}': use system, user or assistant"
                ))
            }
        }
    }
    out.push_str("Assistant:");
    Ok(out)
}

#[derive(Serialize, Clone, Copy, Debug)]
pub struct UsageJson {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

impl From<tperf_engine::Usage> for UsageJson {
    fn from(u: tperf_engine::Usage) -> Self {
        UsageJson {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.prompt_tokens + u.completion_tokens,
        }
    }
}

/// OpenAI's error body: {"error": {"message", "type", "param", "code"}}.
pub fn error_body(message: &str, kind: &str, param: Option<&str>, code: Option<&str>) -> Value {
    json!({"error": {"message": message, "type": kind, "param": param, "code": code}})
}
