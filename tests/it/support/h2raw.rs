//! A minimal HTTP/2 client speaking raw frames, for what a real client refuses to send: requests
//! without `:authority`, connection-specific header fields, more streams than the server allows.
//!
//! Header blocks are HPACK literals without indexing (no Huffman), so any field can be written.
//! Of the answer only the `:status` is decoded (static-table index or a literal, Huffman digits
//! included): enough to tell a response from a stream reset.

use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub const DATA: u8 = 0;
pub const HEADERS: u8 = 1;
pub const RST_STREAM: u8 = 3;
pub const SETTINGS: u8 = 4;
pub const PING: u8 = 6;
pub const GOAWAY: u8 = 7;
pub const WINDOW_UPDATE: u8 = 8;
pub const CONTINUATION: u8 = 9;

pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;

/// RST_STREAM / GOAWAY error codes (RFC 9113 §7).
pub const PROTOCOL_ERROR: u32 = 0x1;
pub const REFUSED_STREAM: u32 = 0x7;
pub const CANCEL: u32 = 0x8;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

#[derive(Debug, Clone)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

/// How the server answered one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// A response head with this `:status`.
    Status(u16),
    /// RST_STREAM with this error code.
    Reset(u32),
    /// GOAWAY with this error code, or the connection closed, before an answer.
    Gone(Option<u32>),
    /// Nothing within the wait.
    Silent,
}

/// How a connection ended, as [`H2::gone`] saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gone {
    /// GOAWAY with this error code.
    GoAway(u32),
    /// EOF or a read error without a GOAWAY.
    Closed,
    /// Still open at the end of the wait.
    Open,
}

/// One frame's bytes: the 9-byte head and `payload`.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut frame = Vec::with_capacity(9 + payload.len());
    frame.extend_from_slice(&len.to_be_bytes()[1..]);
    frame.push(kind);
    frame.push(flags);
    frame.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

pub struct H2<S> {
    io: S,
}

impl<S> H2<S> {
    /// A frame reader or writer over `io`, past the handshake (e.g. one half of a split).
    pub fn new(io: S) -> H2<S> {
        H2 { io }
    }

    pub fn into_inner(self) -> S {
        self.io
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> H2<S> {
    /// Send the preface and an empty SETTINGS, and acknowledge the server's SETTINGS.
    pub async fn handshake(mut io: S) -> std::io::Result<H2<S>> {
        io.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
        let mut h2 = H2 { io };
        h2.send(SETTINGS, 0, 0, &[]).await?;
        loop {
            let frame = h2.read_frame(super::WAIT).await?;
            if frame.kind == SETTINGS && frame.flags & ACK == 0 {
                h2.send(SETTINGS, ACK, 0, &[]).await?;
                return Ok(h2);
            }
        }
    }

    /// Read frames until `stream` is answered (response head or reset) or the connection ends.
    pub async fn reply(&mut self, stream: u32) -> Reply {
        loop {
            let frame = match self.read_frame(super::WAIT).await {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return Reply::Silent,
                Err(_) => return Reply::Gone(None),
            };
            match frame.kind {
                SETTINGS if frame.flags & ACK == 0 => {
                    let _ = self.send(SETTINGS, ACK, 0, &[]).await;
                }
                HEADERS if frame.stream == stream => {
                    return Reply::Status(decode_status(&frame.payload).unwrap_or(0));
                }
                RST_STREAM if frame.stream == stream => {
                    return Reply::Reset(code(&frame.payload, 0));
                }
                GOAWAY => return Reply::Gone(Some(code(&frame.payload, 4))),
                _ => {}
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> H2<S> {
    pub async fn send(
        &mut self,
        kind: u8,
        flags: u8,
        stream: u32,
        payload: &[u8],
    ) -> std::io::Result<()> {
        self.send_raw(&frame(kind, flags, stream, payload)).await
    }

    /// Write already-built frames (see [`frame`]) in one go.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.io.write_all(bytes).await?;
        self.io.flush().await
    }

    /// A HEADERS frame carrying `fields` in order (pseudo-fields first, as the caller lists them).
    pub async fn headers(
        &mut self,
        stream: u32,
        fields: &[(&str, &str)],
        end_stream: bool,
    ) -> std::io::Result<()> {
        let flags = END_HEADERS | if end_stream { END_STREAM } else { 0 };
        self.send(HEADERS, flags, stream, &encode(fields)).await
    }
}

impl<S: AsyncRead + Unpin> H2<S> {
    /// Read (and drop) frames until a GOAWAY, the end of the connection, or `wait` passes; also
    /// returns how many frames came before.
    pub async fn gone(&mut self, wait: Duration) -> (Gone, usize) {
        let deadline = tokio::time::Instant::now() + wait;
        let mut frames = 0;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.read_frame(left).await {
                Ok(f) if f.kind == GOAWAY => return (Gone::GoAway(code(&f.payload, 4)), frames),
                Ok(_) => frames += 1,
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return (Gone::Open, frames),
                Err(_) => return (Gone::Closed, frames),
            }
        }
    }

    pub async fn read_frame(&mut self, wait: Duration) -> std::io::Result<Frame> {
        let read = async {
            let mut head = [0u8; 9];
            self.io.read_exact(&mut head).await?;
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; len];
            self.io.read_exact(&mut payload).await?;
            Ok(Frame {
                kind: head[3],
                flags: head[4],
                stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
                payload,
            })
        };
        tokio::time::timeout(wait, read)
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
    }
}

fn code(payload: &[u8], at: usize) -> u32 {
    payload
        .get(at..at + 4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .unwrap_or(u32::MAX)
}

/// HPACK literal header fields without indexing, new names, no Huffman (RFC 7541 §6.2.2).
pub fn encode(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        integer(&mut out, 7, 0x00, name.len());
        out.extend_from_slice(name.as_bytes());
        integer(&mut out, 7, 0x00, value.len());
        out.extend_from_slice(value.as_bytes());
    }
    out
}

fn integer(out: &mut Vec<u8>, prefix: u8, first: u8, mut n: usize) {
    let max = (1usize << prefix) - 1;
    if n < max {
        out.push(first | n as u8);
        return;
    }
    out.push(first | max as u8);
    n -= max;
    while n >= 128 {
        out.push((n % 128) as u8 | 0x80);
        n /= 128;
    }
    out.push(n as u8);
}

fn read_integer(block: &[u8], at: &mut usize, prefix: u8) -> Option<usize> {
    let max = (1usize << prefix) - 1;
    let mut n = (*block.get(*at)? as usize) & max;
    *at += 1;
    if n < max {
        return Some(n);
    }
    let mut shift = 0;
    loop {
        let b = *block.get(*at)?;
        *at += 1;
        n += ((b & 0x7f) as usize) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            return Some(n);
        }
    }
}

/// The `:status` of a response header block, when it is the first field (as h2 writes it).
pub fn decode_status(block: &[u8]) -> Option<u16> {
    let mut at = 0;
    // Dynamic table size updates may come first.
    while block.get(at)? & 0xe0 == 0x20 {
        read_integer(block, &mut at, 5)?;
    }
    let first = *block.get(at)?;
    if first & 0x80 != 0 {
        let index = read_integer(block, &mut at, 7)?;
        return match index {
            8 => Some(200),
            9 => Some(204),
            10 => Some(206),
            11 => Some(304),
            12 => Some(400),
            13 => Some(404),
            14 => Some(500),
            _ => None,
        };
    }
    // A literal whose name is static index 8 (`:status`), with or without indexing.
    let prefix = if first & 0xc0 == 0x40 { 6 } else { 4 };
    if read_integer(block, &mut at, prefix)? != 8 {
        return None;
    }
    let huffman = block.get(at)? & 0x80 != 0;
    let len = read_integer(block, &mut at, 7)?;
    let raw = block.get(at..at + len)?;
    let text = if huffman {
        huffman_digits(raw)?
    } else {
        String::from_utf8(raw.to_vec()).ok()?
    };
    text.parse().ok()
}

/// Decode a Huffman string made of digits only (RFC 7541 Appendix B: `0`–`2` are five bits
/// `00000`–`00010`, `3`–`9` six bits `011001`–`011111`); the padding is all ones.
fn huffman_digits(raw: &[u8]) -> Option<String> {
    let bits: Vec<u8> = raw
        .iter()
        .flat_map(|b| (0..8).rev().map(move |i| (b >> i) & 1))
        .collect();
    let mut out = String::new();
    let mut at = 0;
    while at < bits.len() {
        if bits[at..].iter().all(|b| *b == 1) && bits.len() - at < 8 {
            break;
        }
        let value = |n: usize| -> Option<u8> {
            bits.get(at..at + n)
                .map(|s| s.iter().fold(0u8, |acc, b| (acc << 1) | b))
        };
        match value(5)? {
            v @ 0..=2 => {
                out.push(char::from(b'0' + v));
                at += 5;
            }
            _ => match value(6)? {
                v @ 25..=31 => {
                    out.push(char::from(b'0' + v - 22));
                    at += 6;
                }
                _ => return None,
            },
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_decode() {
        assert_eq!(decode_status(&[0x88]), Some(200));
        assert_eq!(decode_status(&[0x8c]), Some(400));
        assert_eq!(decode_status(&[0x48, 0x03, b'4', b'2', b'1']), Some(421));
        // "421" in Huffman: 011010 00010 00001, exactly 16 bits.
        assert_eq!(decode_status(&[0x48, 0x82, 0x68, 0x41]), Some(421));
        // "403": 011010 00000 011001 and seven padding ones.
        assert_eq!(huffman_digits(&[0x68, 0x0c, 0xff]).as_deref(), Some("403"));
        let mut out = Vec::new();
        integer(&mut out, 7, 0, 300);
        let mut at = 0;
        assert_eq!(read_integer(&out, &mut at, 7), Some(300));
    }
}
