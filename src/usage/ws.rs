//! WebSocket framing (RFC 6455), read from a copy of the bytes as they pass: the relay writes
//! what it read, untouched, and then feeds the same bytes here. Nothing is ever re-encoded.
//!
//! Frames may arrive split anywhere (inside the 2-byte head, the extended length, the mask, the
//! payload). Client frames are masked and unmasked here; a message fragmented over several
//! frames is reassembled, control frames may come between its fragments. A message larger than
//! `max_message` is not kept (it still passes to the other side) and is reported as
//! [`Frame::Oversized`]. Bytes that break the framing rules (a reserved bit without an agreed
//! extension, an unknown opcode, a fragmented or long control frame) stop the parse of that
//! direction for good ([`Frame::Broken`]): the endpoints enforce the protocol, the decoder only
//! reads along.

/// What a complete frame or message was.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A whole text (`binary: false`) or binary message, reassembled and unmasked.
    Message {
        binary: bool,
        data: &'a [u8],
    },
    /// A message over the bound: relayed, not read.
    Oversized {
        binary: bool,
        len: u64,
    },
    Ping,
    Pong,
    /// A close frame, with its status code if it carried one.
    Close(Option<u16>),
    /// The bytes stopped following the framing rules; nothing more is parsed.
    Broken(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Collecting the head: 2 bytes, then the extended length and the mask key.
    Head,
    /// Inside a payload: `remaining` bytes left.
    Payload,
    Broken,
}

/// An incremental decoder for one direction of a socket.
pub struct FrameDecoder {
    state: State,
    head: Vec<u8>,
    /// Of the frame being read.
    fin: bool,
    opcode: u8,
    mask: Option<[u8; 4]>,
    remaining: u64,
    /// Payload bytes read so far of this frame (for the mask offset).
    offset: u64,
    /// A control frame's payload.
    control: Vec<u8>,
    /// The message being assembled: whether it is binary, its bytes, its length so far.
    message: Option<(bool, Vec<u8>, u64)>,
    oversized: bool,
    max_message: usize,
}

impl FrameDecoder {
    pub fn new(max_message: usize) -> Self {
        FrameDecoder {
            state: State::Head,
            head: Vec::with_capacity(14),
            fin: false,
            opcode: 0,
            mask: None,
            remaining: 0,
            offset: 0,
            control: Vec::new(),
            message: None,
            oversized: false,
            max_message,
        }
    }

    /// Whether the bytes fed so far end exactly between two frames: a frame of our own (a
    /// close) can be written there without corrupting the stream.
    pub fn at_frame_boundary(&self) -> bool {
        self.state == State::Head && self.head.is_empty()
    }

    /// Feed the next bytes; `on` gets every frame or message they complete.
    pub fn feed(&mut self, mut bytes: &[u8], on: &mut impl FnMut(Frame<'_>)) {
        while !bytes.is_empty() {
            match self.state {
                State::Broken => return,
                State::Head => {
                    let need = self.head_len().saturating_sub(self.head.len()).max(1);
                    let take = need.min(bytes.len());
                    self.head.extend_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                    if self.head.len() >= 2 && self.head.len() == self.head_len() {
                        if let Err(why) = self.begin_frame() {
                            self.state = State::Broken;
                            on(Frame::Broken(why));
                            return;
                        }
                        if self.remaining == 0 {
                            self.end_frame(on);
                        }
                    }
                }
                State::Payload => {
                    let take = (self.remaining.min(bytes.len() as u64)) as usize;
                    self.payload(&bytes[..take]);
                    bytes = &bytes[take..];
                    self.remaining -= take as u64;
                    if self.remaining == 0 {
                        self.end_frame(on);
                    }
                }
            }
        }
    }

    /// The length of the head being read, as far as its first bytes tell.
    fn head_len(&self) -> usize {
        if self.head.len() < 2 {
            return 2;
        }
        let masked = self.head[1] & 0x80 != 0;
        let ext = match self.head[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        2 + ext + if masked { 4 } else { 0 }
    }

    fn begin_frame(&mut self) -> Result<(), &'static str> {
        let (b0, b1) = (self.head[0], self.head[1]);
        if b0 & 0x70 != 0 {
            return Err("reserved bit set without an extension");
        }
        self.fin = b0 & 0x80 != 0;
        self.opcode = b0 & 0x0f;
        let len7 = u64::from(b1 & 0x7f);
        let (len, rest) = match len7 {
            126 => (
                u64::from(u16::from_be_bytes([self.head[2], self.head[3]])),
                4,
            ),
            127 => {
                let mut eight = [0u8; 8];
                eight.copy_from_slice(&self.head[2..10]);
                let len = u64::from_be_bytes(eight);
                if len >> 63 != 0 {
                    return Err("payload length with the top bit set");
                }
                (len, 10)
            }
            n => (n, 2),
        };
        self.mask = (b1 & 0x80 != 0).then(|| {
            let mut key = [0u8; 4];
            key.copy_from_slice(&self.head[rest..rest + 4]);
            key
        });
        self.remaining = len;
        self.offset = 0;
        self.head.clear();
        self.state = State::Payload;
        match self.opcode {
            0x8..=0xa => {
                if !self.fin || len > 125 {
                    return Err("fragmented or long control frame");
                }
                self.control.clear();
            }
            0x0 => {
                if self.message.is_none() {
                    return Err("continuation without a message");
                }
                self.grow(len);
            }
            0x1 | 0x2 => {
                if self.message.is_some() {
                    return Err("new message inside a fragmented one");
                }
                self.message = Some((self.opcode == 0x2, Vec::new(), 0));
                self.oversized = false;
                self.grow(len);
            }
            _ => return Err("unknown opcode"),
        }
        Ok(())
    }

    /// Account `len` more bytes to the message being assembled; past the bound it is dropped.
    fn grow(&mut self, len: u64) {
        if let Some((_, data, total)) = self.message.as_mut() {
            *total = total.saturating_add(len);
            if *total > self.max_message as u64 {
                self.oversized = true;
                *data = Vec::new();
            }
        }
    }

    fn payload(&mut self, bytes: &[u8]) {
        let control = self.opcode >= 0x8;
        let keep = control || !self.oversized;
        if keep {
            let offset = self.offset;
            let unmasked = bytes.iter().enumerate().map(|(i, b)| match self.mask {
                Some(key) => b ^ key[((offset + i as u64) % 4) as usize],
                None => *b,
            });
            if control {
                self.control.extend(unmasked);
            } else if let Some((_, data, _)) = self.message.as_mut() {
                data.extend(unmasked);
            }
        }
        self.offset += bytes.len() as u64;
    }

    fn end_frame(&mut self, on: &mut impl FnMut(Frame<'_>)) {
        self.state = State::Head;
        match self.opcode {
            0x8 => {
                let code = (self.control.len() >= 2)
                    .then(|| u16::from_be_bytes([self.control[0], self.control[1]]));
                on(Frame::Close(code));
            }
            0x9 => on(Frame::Ping),
            0xa => on(Frame::Pong),
            _ if self.fin => {
                if let Some((binary, data, total)) = self.message.take() {
                    if self.oversized {
                        on(Frame::Oversized { binary, len: total });
                    } else {
                        on(Frame::Message {
                            binary,
                            data: &data,
                        });
                    }
                }
            }
            _ => {}
        }
    }
}

/// A close frame of our own: `code` and no reason, masked as a client must (`masked`) with a
/// fixed key — it carries no secret, and masking only guards intermediaries' caches.
pub fn close_frame(code: u16, masked: bool) -> Vec<u8> {
    let payload = code.to_be_bytes();
    if !masked {
        return vec![0x88, 0x02, payload[0], payload[1]];
    }
    let key = [0x5a, 0x17, 0xc3, 0x9e];
    vec![
        0x88,
        0x82,
        key[0],
        key[1],
        key[2],
        key[3],
        payload[0] ^ key[0],
        payload[1] ^ key[1],
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encode one frame (a reference encoder for the tests).
    fn frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
        let m = if mask.is_some() { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => out.push(m | n as u8),
            n if n <= u16::MAX as usize => {
                out.push(m | 126);
                out.extend((n as u16).to_be_bytes());
            }
            n => {
                out.push(m | 127);
                out.extend((n as u64).to_be_bytes());
            }
        }
        match mask {
            Some(key) => {
                out.extend(key);
                out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
            }
            None => out.extend(payload),
        }
        out
    }

    #[derive(Debug, PartialEq, Eq)]
    enum Seen {
        Text(String),
        Binary(Vec<u8>),
        Oversized(u64),
        Ping,
        Pong,
        Close(Option<u16>),
        Broken(&'static str),
    }

    fn decode(chunks: &[&[u8]], max: usize) -> Vec<Seen> {
        let mut d = FrameDecoder::new(max);
        let mut out = Vec::new();
        for c in chunks {
            d.feed(c, &mut |f| {
                out.push(match f {
                    Frame::Message {
                        binary: false,
                        data,
                    } => Seen::Text(String::from_utf8_lossy(data).into()),
                    Frame::Message { binary: true, data } => Seen::Binary(data.to_vec()),
                    Frame::Oversized { len, .. } => Seen::Oversized(len),
                    Frame::Ping => Seen::Ping,
                    Frame::Pong => Seen::Pong,
                    Frame::Close(c) => Seen::Close(c),
                    Frame::Broken(why) => Seen::Broken(why),
                })
            });
        }
        out
    }

    fn stream() -> (Vec<u8>, Vec<Seen>) {
        let key = Some([1, 2, 3, 4]);
        let big = "x".repeat(70_000);
        let mut bytes = Vec::new();
        bytes.extend(frame(true, 0x1, br#"{"type":"response.create"}"#, key));
        // A fragmented text message with a ping between its fragments.
        bytes.extend(frame(false, 0x1, b"hel", key));
        bytes.extend(frame(true, 0x9, b"p", key));
        bytes.extend(frame(false, 0x0, b"lo ", key));
        bytes.extend(frame(true, 0x0, "wörld".as_bytes(), key));
        bytes.extend(frame(true, 0x2, &[0, 1, 2], None));
        bytes.extend(frame(true, 0x1, big.as_bytes(), None)); // 64-bit length
        bytes.extend(frame(true, 0x1, &vec![b'y'; 300], key)); // 16-bit length
        bytes.extend(frame(true, 0xa, b"", None));
        bytes.extend(frame(true, 0x8, &1000u16.to_be_bytes(), key));
        let want = vec![
            Seen::Text(r#"{"type":"response.create"}"#.into()),
            Seen::Ping,
            Seen::Text("hello wörld".into()),
            Seen::Binary(vec![0, 1, 2]),
            Seen::Text(big),
            Seen::Text("y".repeat(300)),
            Seen::Pong,
            Seen::Close(Some(1000)),
        ];
        (bytes, want)
    }

    #[test]
    fn frames_decode_whole_split_anywhere_and_byte_by_byte() {
        let (bytes, want) = stream();
        assert_eq!(decode(&[&bytes], 1 << 20), want);
        // Every cut inside the small frames, then every 997th through the big ones.
        let cuts = (0..400).chain((400..bytes.len()).step_by(997));
        for cut in cuts {
            assert_eq!(
                decode(&[&bytes[..cut], &bytes[cut..]], 1 << 20),
                want,
                "cut at {cut}"
            );
        }
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(decode(&singles, 1 << 20), want);
    }

    #[test]
    fn a_message_over_the_bound_is_reported_not_kept_and_the_next_one_is_read() {
        let mut bytes = frame(false, 0x1, &[b'a'; 600], None);
        bytes.extend(frame(true, 0x0, &[b'b'; 600], None));
        bytes.extend(frame(true, 0x1, b"next", None));
        assert_eq!(
            decode(&[&bytes], 1000),
            vec![Seen::Oversized(1200), Seen::Text("next".into())]
        );
    }

    #[test]
    fn rule_breaking_bytes_stop_the_parse() {
        for (bytes, why) in [
            (frame(true, 0x1 | 0x40, b"x", None), "reserved bit"),
            (frame(true, 0x3, b"x", None), "unknown opcode"),
            (frame(false, 0x9, b"x", None), "fragmented or long control"),
            (frame(true, 0x0, b"x", None), "continuation without"),
        ] {
            let mut all = bytes.clone();
            all.extend(frame(true, 0x1, b"after", None));
            let seen = decode(&[&all], 100);
            assert!(
                matches!(seen.as_slice(), [Seen::Broken(w)] if w.contains(why)),
                "{why}: {seen:?}"
            );
        }
    }

    #[test]
    fn frame_boundaries_are_known_and_our_close_frames_decode() {
        let mut d = FrameDecoder::new(100);
        let f = frame(true, 0x1, b"hello", None);
        d.feed(&f[..3], &mut |_| {});
        assert!(!d.at_frame_boundary());
        d.feed(&f[3..], &mut |_| {});
        assert!(d.at_frame_boundary());
        for masked in [false, true] {
            assert_eq!(
                decode(&[&close_frame(1008, masked)], 100),
                vec![Seen::Close(Some(1008))]
            );
        }
    }
}
