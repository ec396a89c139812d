//! The prompts a benchmark sends: random prompts of a given token length (text or token ids),
//! or the first turns of ShareGPT conversations.

use super::ServeBenchError;
use tperf_core::rng::Rng;
use tperf_runtime::tokenizer::{Tokenizer, GPT2_VOCAB};

#[derive(Clone, Debug, PartialEq)]
pub enum Prompt {
    Text(String),
    /// Token ids, sent as the completions API's array prompt.
    Ids(Vec<u32>),
}

/// One request to send: its prompt, the prompt's length in tokens, and how many tokens to ask
/// for (`max_tokens`).
#[derive(Clone, Debug, PartialEq)]
pub struct RequestSpec {
    pub prompt: Prompt,
    pub prompt_len: usize,
    pub output_len: usize,
}

/// vLLM's random dataset: lengths uniform over [L(1 − r), L(1 + r)], inclusive.
#[derive(Clone, Copy, Debug)]
pub struct RandomLengths {
    pub input_len: usize,
    pub output_len: usize,
    pub range_ratio: f64,
}

/// The lengths [`uniform_len`] draws from: [⌊L(1 − r)⌋ (at least 1), ⌈L(1 + r)⌉].
pub fn uniform_len_range(len: usize, ratio: f64) -> (usize, usize) {
    let lo = ((len as f64 * (1.0 - ratio)).floor() as usize).max(1);
    let hi = ((len as f64 * (1.0 + ratio)).ceil() as usize).max(lo);
    (lo, hi)
}

/// A length drawn uniformly from [`uniform_len_range`]: vLLM's range ratio.
pub fn uniform_len(rng: &mut Rng, len: usize, ratio: f64) -> usize {
    let (lo, hi) = uniform_len_range(len, ratio);
    lo + (rng.uniform() * (hi - lo + 1) as f64) as usize % (hi - lo + 1)
}

/// GPT-2 tokens that are a space and a lowercase word and encode back to themselves. GPT-2's
/// pre-tokenizer splits text before every " word", so BPE never merges across two of them:
/// text made of n such tokens encodes to exactly those n tokens, and a prompt of a requested
/// token length needs no trial and error.
pub fn word_tokens(tok: &Tokenizer) -> Vec<u32> {
    (0..GPT2_VOCAB as u32)
        .filter(|&id| {
            let s = tok.decode(&[id]);
            let word = s.strip_prefix(' ').unwrap_or("");
            word.len() >= 2
                && word.bytes().all(|b| b.is_ascii_lowercase())
                && tok.encode(&s) == [id]
        })
        .collect()
}

pub fn random(
    n: usize,
    lens: RandomLengths,
    as_ids: bool,
    tok: &Tokenizer,
    rng: &mut Rng,
) -> Result<Vec<RequestSpec>, ServeBenchError> {
    if !(0.0..1.0).contains(&lens.range_ratio) {
        return Err(ServeBenchError::Invalid(format!(
            "--random-range-ratio {} must be in [0, 1)",
            lens.range_ratio
        )));
    }
    if lens.input_len == 0 || lens.output_len == 0 {
        return Err(ServeBenchError::Invalid(
            "random input and output lengths must be at least 1".into(),
        ));
    }
    let words = word_tokens(tok);
    Ok((0..n)
        .map(|_| {
            let prompt_len = uniform_len(rng, lens.input_len, lens.range_ratio);
            let output_len = uniform_len(rng, lens.output_len, lens.range_ratio);
            let ids: Vec<u32> = (0..prompt_len)
                .map(|_| words[(rng.next_u64() % words.len() as u64) as usize])
                .collect();
            let prompt = if as_ids {
                Prompt::Ids(ids)
            } else {
                Prompt::Text(tok.decode(&ids))
            };
            RequestSpec {
                prompt,
                prompt_len,
                output_len,
            }
        })
        .collect())
}

/// vLLM's filter on ShareGPT pairs: too-short sequences say nothing, too-long ones do not fit
/// the models the dataset is used with.
const MIN_LEN: usize = 4;
const MAX_PROMPT_LEN: usize = 1024;
const MAX_TOTAL_LEN: usize = 2048;

/// ShareGPT's format: `[{"conversations": [{"from": "human", "value": …}, {"from": "gpt",
/// "value": …}, …]}, …]`. The first turn is the prompt and the second's length in tokens the
/// output length (or `fixed_output_len`); conversations shorter than two turns, and pairs
/// outside vLLM's length filter, are skipped. Shuffled by `rng`, the first `n` kept.
pub fn sharegpt(
    json: &str,
    n: usize,
    fixed_output_len: Option<usize>,
    tok: &Tokenizer,
    rng: &mut Rng,
) -> Result<Vec<RequestSpec>, ServeBenchError> {
    let bad = |e: String| ServeBenchError::Dataset(e);
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| bad(format!("not JSON: {e}")))?;
    let entries = v
        .as_array()
        .ok_or_else(|| bad("expected a JSON array of conversations".into()))?;
    let mut pairs: Vec<(&str, &str)> = entries
        .iter()
        .filter_map(|e| {
            let turns = e.get("conversations")?.as_array()?;
            let text = |i: usize| turns.get(i)?.get("value")?.as_str();
            Some((text(0)?, text(1)?))
        })
        .collect();
    // Fisher–Yates with the benchmark's seed, so a run's prompts can be repeated.
    for i in (1..pairs.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        pairs.swap(i, j);
    }
    let mut out = Vec::with_capacity(n);
    for (prompt, reply) in pairs {
        if out.len() == n {
            break;
        }
        let prompt_len = tok.encode(prompt).len();
        let output_len = fixed_output_len.unwrap_or_else(|| tok.encode(reply).len());
        let too_short =
            prompt_len < MIN_LEN || (fixed_output_len.is_none() && output_len < MIN_LEN);
        if too_short || prompt_len > MAX_PROMPT_LEN || prompt_len + output_len > MAX_TOTAL_LEN {
            continue;
        }
        out.push(RequestSpec {
            prompt: Prompt::Text(prompt.to_string()),
            prompt_len,
            output_len,
        });
    }
    if out.is_empty() {
        return Err(bad(
            "no conversation with a prompt and a reply of 4 to 1024 tokens (2048 together)".into(),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_text_prompts_have_the_requested_token_length() {
        let tok = Tokenizer::gpt2();
        let lens = RandomLengths {
            input_len: 100,
            output_len: 20,
            range_ratio: 0.5,
        };
        let reqs = random(50, lens, false, &tok, &mut Rng::new(3)).unwrap();
        for r in &reqs {
            assert!((50..=150).contains(&r.prompt_len));
            assert!((10..=30).contains(&r.output_len));
            let Prompt::Text(t) = &r.prompt else {
                panic!("asked for text")
            };
            assert_eq!(tok.encode(t).len(), r.prompt_len);
        }
        let fixed = RandomLengths {
            range_ratio: 0.0,
            ..lens
        };
        let reqs = random(5, fixed, true, &tok, &mut Rng::new(3)).unwrap();
        assert!(reqs
            .iter()
            .all(|r| r.prompt_len == 100 && r.output_len == 20));
        assert!(matches!(&reqs[0].prompt, Prompt::Ids(ids) if ids.len() == 100));
    }

    #[test]
    fn sharegpt_takes_the_first_turn_and_the_reply_length() {
        let tok = Tokenizer::gpt2();
        let json = r#"[
            {"id": "a", "conversations": [
                {"from": "human", "value": "What is the capital of France, please?"},
                {"from": "gpt", "value": "The capital of France is Paris, a city on the Seine."},
                {"from": "human", "value": "ignored"}]},
            {"id": "short", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello there friend"}]},
            {"id": "one turn", "conversations": [{"from": "human", "value": "a prompt with no reply at all"}]},
            {"id": "no conversations"}
        ]"#;
        let reqs = sharegpt(json, 10, None, &tok, &mut Rng::new(0)).unwrap();
        assert_eq!(reqs.len(), 1);
        let r = &reqs[0];
        assert_eq!(
            r.prompt,
            Prompt::Text("What is the capital of France, please?".into())
        );
        assert_eq!(
            r.prompt_len,
            tok.encode("What is the capital of France, please?").len()
        );
        assert_eq!(
            r.output_len,
            tok.encode("The capital of France is Paris, a city on the Seine.")
                .len()
        );
        let fixed = sharegpt(json, 10, Some(7), &tok, &mut Rng::new(0)).unwrap();
        assert_eq!(fixed[0].output_len, 7);
        assert!(matches!(
            sharegpt("{}", 1, None, &tok, &mut Rng::new(0)),
            Err(ServeBenchError::Dataset(_))
        ));
        assert!(sharegpt("[]", 1, None, &tok, &mut Rng::new(0)).is_err());
    }
}
