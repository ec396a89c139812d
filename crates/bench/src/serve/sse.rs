//! Server-sent events, decoded incrementally: bytes arrive in whatever pieces the network
//! delivers (an event split across reads, several events in one read), and each complete event
//! is handed out as soon as its terminating blank line has arrived, so the caller can time it.
//!
//! The rules followed are the WHATWG event-stream format's: lines end in LF, CRLF or CR; a
//! line starting with ':' is a comment (servers send them as keep-alive pings); `field: value`
//! with one optional space after the colon; `data` lines accumulate, joined by LF; a blank line
//! dispatches the event; an event with no data is not dispatched.

/// One dispatched event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// The `event:` field, when the server named the event (`error`, for instance).
    pub name: Option<String>,
    pub data: String,
}

#[derive(Default)]
pub struct SseDecoder {
    /// Bytes of a line not yet terminated.
    partial: Vec<u8>,
    /// A CR ended the last line: an LF that follows belongs to it.
    after_cr: bool,
    name: Option<String>,
    data: Option<String>,
}

impl SseDecoder {
    pub fn new() -> SseDecoder {
        SseDecoder::default()
    }

    /// Feeds bytes; returns the events they complete, in order.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Event> {
        let mut out = Vec::new();
        for &b in bytes {
            if self.after_cr {
                self.after_cr = false;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    let line = std::mem::take(&mut self.partial);
                    if let Some(e) = self.line(&line) {
                        out.push(e);
                    }
                }
                _ => self.partial.push(b),
            }
        }
        out
    }

    /// The stream ended: an event whose blank line never came is dispatched anyway (a server
    /// that closes right after its last `data:` line still said what it said).
    pub fn finish(&mut self) -> Option<Event> {
        let line = std::mem::take(&mut self.partial);
        if !line.is_empty() {
            if let Some(e) = self.line(&line) {
                return Some(e);
            }
        }
        self.dispatch()
    }

    fn dispatch(&mut self) -> Option<Event> {
        let name = self.name.take();
        self.data.take().map(|data| Event { name, data })
    }

    fn line(&mut self, line: &[u8]) -> Option<Event> {
        if line.is_empty() {
            return self.dispatch();
        }
        if line[0] == b':' {
            return None;
        }
        let text = String::from_utf8_lossy(line);
        let (field, value) = match text.find(':') {
            Some(i) => {
                let v = &text[i + 1..];
                (&text[..i], v.strip_prefix(' ').unwrap_or(v))
            }
            None => (&text[..], ""),
        };
        match field {
            "data" => match &mut self.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            },
            "event" => self.name = Some(value.to_string()),
            // id and retry matter to a reconnecting browser, not to a benchmark.
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(s: &str) -> Event {
        Event {
            name: None,
            data: s.into(),
        }
    }

    #[test]
    fn events_split_anywhere_come_out_whole() {
        let stream = b"data: {\"a\": 1}\n\n: ping\n\ndata: {\"b\": 2}\r\n\r\ndata: [DONE]\n\n";
        let whole = SseDecoder::new().feed(stream);
        assert_eq!(
            whole,
            vec![data("{\"a\": 1}"), data("{\"b\": 2}"), data("[DONE]")]
        );
        // Every split point, and byte-at-a-time, give the same events.
        for cut in 0..stream.len() {
            let mut d = SseDecoder::new();
            let mut got = d.feed(&stream[..cut]);
            got.extend(d.feed(&stream[cut..]));
            assert_eq!(got, whole, "cut at {cut}");
        }
        let mut d = SseDecoder::new();
        let got: Vec<_> = stream.iter().flat_map(|b| d.feed(&[*b])).collect();
        assert_eq!(got, whole);
    }

    #[test]
    fn a_crlf_split_between_reads_is_one_line_end() {
        let mut d = SseDecoder::new();
        assert!(d.feed(b"data: x\r").is_empty());
        // The LF completes the CR: one line end, not a blank line that would dispatch.
        assert!(d.feed(b"\n").is_empty());
        assert_eq!(d.feed(b"\r\n"), vec![data("x")]);
        assert_eq!(d.feed(b"data: y\n\n"), vec![data("y")]);
    }

    #[test]
    fn multi_line_data_named_events_and_no_space() {
        let got = SseDecoder::new().feed(b"event: error\ndata:{\"error\":\ndata: 1}\n\n");
        assert_eq!(
            got,
            vec![Event {
                name: Some("error".into()),
                data: "{\"error\":\n1}".into()
            }]
        );
    }

    #[test]
    fn an_unterminated_last_event_is_kept_and_an_empty_one_is_not() {
        let mut d = SseDecoder::new();
        assert!(d.feed(b"data: [DONE]").is_empty());
        assert_eq!(d.finish(), Some(data("[DONE]")));
        let mut d = SseDecoder::new();
        assert!(d.feed(b"event: x\n\n: c\n").is_empty());
        assert_eq!(d.finish(), None);
    }
}
