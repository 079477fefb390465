//! Incremental Server-Sent Events framing (the WHATWG event-stream rules we need).
//!
//! Bytes arrive in arbitrary pieces — an event, a line, even a CRLF can be split anywhere — and
//! are fed as they pass to the client. Lines end in LF, CRLF or CR; `data:` lines of one event
//! are joined with `\n`; `event:` names it; lines starting with `:` are comments; a blank line
//! dispatches. One event's data is bounded (`max_event`), generously: a terminal Responses event
//! carries the whole response and its usage must still be read; a larger event is skipped and
//! counted, never buffered without bound.

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub event: String,
    pub data: String,
}

/// Buffers are reused from one event to the next: decoding allocates only while they grow.
pub struct SseDecoder {
    line: Vec<u8>,
    /// The event being assembled (`event` name and joined `data`).
    current: Event,
    data_lines: usize,
    /// The previous chunk ended in CR: a LF at the start of the next one belongs to it.
    pending_cr: bool,
    /// The current event outgrew `max_event`; its lines are dropped until it ends.
    oversized: bool,
    max_event: usize,
    skipped: u64,
}

impl SseDecoder {
    pub fn new(max_event: usize) -> Self {
        SseDecoder {
            line: Vec::new(),
            current: Event {
                event: String::new(),
                data: String::new(),
            },
            data_lines: 0,
            pending_cr: false,
            oversized: false,
            max_event,
            skipped: 0,
        }
    }

    /// Events skipped because they exceeded the size bound.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Feed bytes; `on_event` is called for every event they complete (borrowed: clone it to
    /// keep it).
    pub fn feed(&mut self, mut bytes: &[u8], on_event: &mut impl FnMut(&Event)) {
        if self.pending_cr {
            self.pending_cr = false;
            if let Some(rest) = bytes.strip_prefix(b"\n") {
                bytes = rest;
            }
        }
        while let Some(pos) = bytes.iter().position(|b| *b == b'\n' || *b == b'\r') {
            self.push_line_bytes(&bytes[..pos]);
            let is_cr = bytes[pos] == b'\r';
            bytes = &bytes[pos + 1..];
            if is_cr {
                match bytes.first() {
                    Some(b'\n') => bytes = &bytes[1..],
                    Some(_) => {}
                    None => self.pending_cr = true,
                }
            }
            self.end_line(on_event);
        }
        self.push_line_bytes(bytes);
    }

    fn push_line_bytes(&mut self, bytes: &[u8]) {
        if self.oversized {
            return;
        }
        if self.line.len() + bytes.len() + self.current.data.len() > self.max_event {
            self.oversized = true;
            self.line.clear();
            self.current.data.clear();
            return;
        }
        self.line.extend_from_slice(bytes);
    }

    fn end_line(&mut self, on_event: &mut impl FnMut(&Event)) {
        if self.line.is_empty() {
            self.dispatch(on_event);
            return;
        }
        if !self.oversized {
            let line = String::from_utf8_lossy(&self.line);
            if !line.starts_with(':') {
                let (field, value) = match line.split_once(':') {
                    Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                    None => (line.as_ref(), ""),
                };
                let current = &mut self.current;
                match field {
                    "data" => {
                        if self.data_lines > 0 {
                            current.data.push('\n');
                        }
                        current.data.push_str(value);
                        self.data_lines += 1;
                    }
                    "event" => {
                        current.event.clear();
                        current.event.push_str(value);
                    }
                    _ => {}
                }
            }
        }
        self.line.clear();
    }

    fn dispatch(&mut self, on_event: &mut impl FnMut(&Event)) {
        if self.oversized {
            self.skipped += 1;
        } else if self.data_lines > 0 {
            on_event(&self.current);
        }
        self.current.event.clear();
        self.current.data.clear();
        self.data_lines = 0;
        self.oversized = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(chunks: &[&[u8]]) -> Vec<Event> {
        let mut d = SseDecoder::new(1 << 20);
        let mut out = Vec::new();
        for c in chunks {
            d.feed(c, &mut |e| out.push(e.clone()));
        }
        out
    }

    #[test]
    fn framing_rules() {
        let text =
            b": comment\r\nevent: a\r\ndata: one\r\ndata:two\r\n\r\ndata: x\n\nid: 1\rdata: y\r\r";
        let events = decode(&[text]);
        assert_eq!(
            events,
            vec![
                Event {
                    event: "a".into(),
                    data: "one\ntwo".into()
                },
                Event {
                    event: String::new(),
                    data: "x".into()
                },
                Event {
                    event: String::new(),
                    data: "y".into()
                },
            ]
        );
        for i in 0..=text.len() {
            assert_eq!(decode(&[&text[..i], &text[i..]]), events, "split at {i}");
        }
    }

    #[test]
    fn oversized_events_are_skipped_and_counted() {
        let mut d = SseDecoder::new(16);
        let mut out = Vec::new();
        d.feed(
            b"data: this line is far too long\n\ndata: ok\n\n",
            &mut |e| out.push(e.clone()),
        );
        assert_eq!(
            out,
            vec![Event {
                event: String::new(),
                data: "ok".into()
            }]
        );
        assert_eq!(d.skipped(), 1);
    }
}
