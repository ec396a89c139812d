//! Errors shared by the crates: the error of every `FromStr` for a name a person types, and the
//! one-line rendering of an error with its sources.

use std::error::Error;

/// A name that is not one tperf knows (a dtype, a phase, a device), with the names it does.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} '{got}': use {expected}")]
pub struct UnknownName {
    /// What kind of name was expected ("dtype", "phase").
    pub what: &'static str,
    pub got: String,
    /// The accepted names, as a phrase ("one of fp32, bf16, fp16").
    pub expected: &'static str,
}

impl UnknownName {
    pub fn new(what: &'static str, got: &str, expected: &'static str) -> Self {
        UnknownName {
            what,
            got: got.to_string(),
            expected,
        }
    }
}

/// `e` and each of its sources, joined by ": " (what anyhow's `{:#}` prints), for where an
/// error becomes text: a message inside [`crate::backend::BackendError`], a note, a skip reason.
/// Typed errors here keep the failed library call as `source()` and out of their own Display, so
/// this is how the whole story is told once.
pub fn report(e: &dyn Error) -> String {
    let mut s = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        next = cause.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("reading the checkpoint")]
    struct Outer {
        #[source]
        source: std::io::Error,
    }

    #[test]
    fn report_joins_the_sources() {
        let e = Outer {
            source: std::io::Error::other("disk on fire"),
        };
        assert_eq!(report(&e), "reading the checkpoint: disk on fire");
    }
}
