//! What a row is: its input, its documented answer, what happens to the connection and what
//! may reach a destination; with the builders the table is written in.

use super::*;
use crate::support::upstream::Seen;

/// What a row sends.
pub(super) enum Input {
    /// Raw bytes to a proxy listener.
    Listener(Vec<u8>),
    /// Raw bytes to the deny proxy's admin listener.
    Admin(Vec<u8>),
    /// `CONNECT target`, TLS with `sni` (ALPN http/1.1, trusting the proxy CA), then raw bytes.
    Mitm {
        target: String,
        sni: &'static str,
        bytes: Vec<u8>,
    },
    /// Raw h2 (ALPN h2) inside an intercepted connection to api.openai.com: one HEADERS frame
    /// with these fields and END_STREAM, on stream 1.
    H2(Vec<(String, String)>),
    /// Anything else: the function makes its own checks.
    Custom(for<'a> fn(&'a Stage) -> BoxFuture<'a, Result<(), String>>),
}

/// The documented answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Want {
    Status(u16),
    /// The connection closes without any answer.
    Closed,
    /// h2 RST_STREAM with this code.
    Reset(u32),
    /// A custom row's own checks.
    Custom(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Conn {
    /// EOF after the answer.
    Closes,
    /// A normal follow-up request on the same connection is answered 200.
    KeepAlive,
    /// A `200` to CONNECT: the connection is now a tunnel or intercepted.
    Established,
    /// Checked by the custom row itself.
    Custom,
}

pub(super) type Check = Box<dyn Fn(&Seen) -> Result<(), String>>;

/// What reached the destinations.
pub(super) enum Dest {
    /// Neither the mock provider nor the plain destination saw a request.
    Nothing,
    /// Exactly one request at the mock provider, nothing at the plain destination.
    Mock(Check),
    /// Exactly one request at the plain destination, nothing at the mock provider.
    Plain(Check),
    /// Checked by the custom row itself.
    Custom,
}

pub(super) struct Row {
    pub(super) id: &'static str,
    pub(super) px: Px,
    pub(super) input: String,
    pub(super) send: Input,
    pub(super) want: Want,
    pub(super) conn: Conn,
    pub(super) dest: Dest,
    pub(super) reason: Option<&'static str>,
}

impl Row {
    pub(super) fn new(id: &'static str, px: Px, send: Input) -> Row {
        let input = match &send {
            Input::Listener(b) | Input::Admin(b) => shown(b),
            Input::Mitm { target, bytes, .. } => format!("[in CONNECT {target}] {}", shown(bytes)),
            Input::H2(fields) => format!(
                "[h2] {}",
                fields
                    .iter()
                    .map(|(n, v)| format!("{n}: {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Input::Custom(_) => String::new(),
        };
        Row {
            id,
            px,
            input,
            send,
            want: Want::Closed,
            conn: Conn::Closes,
            dest: Dest::Nothing,
            reason: None,
        }
    }

    pub(super) fn note(mut self, input: impl Into<String>) -> Row {
        self.input = input.into();
        self
    }

    pub(super) fn status(mut self, status: u16) -> Row {
        self.want = Want::Status(status);
        self
    }

    pub(super) fn reset(mut self, code: u32) -> Row {
        self.want = Want::Reset(code);
        self
    }

    pub(super) fn closes(mut self) -> Row {
        self.conn = Conn::Closes;
        self
    }

    pub(super) fn keeps(mut self) -> Row {
        self.conn = Conn::KeepAlive;
        self
    }

    pub(super) fn established(mut self) -> Row {
        self.conn = Conn::Established;
        self
    }

    pub(super) fn reason(mut self, reason: &'static str) -> Row {
        self.reason = Some(reason);
        self
    }

    pub(super) fn mock(mut self, check: impl Fn(&Seen) -> Result<(), String> + 'static) -> Row {
        self.dest = Dest::Mock(Box::new(check));
        self
    }

    pub(super) fn plain(mut self, check: impl Fn(&Seen) -> Result<(), String> + 'static) -> Row {
        self.dest = Dest::Plain(Box::new(check));
        self
    }

    /// What the row expects, for the printed table.
    pub(super) fn expected(&self) -> String {
        let answer = match self.want {
            Want::Status(s) => s.to_string(),
            Want::Closed => "closed, no answer".into(),
            Want::Reset(c) => format!("RST_STREAM {c:#x}"),
            Want::Custom(what) => what.into(),
        };
        let conn = match self.conn {
            Conn::Closes => ", close",
            Conn::KeepAlive => ", keep-alive",
            Conn::Established => ", established",
            Conn::Custom => "",
        };
        let dest = match self.dest {
            Dest::Nothing => ", nothing forwarded",
            Dest::Mock(_) => ", 1 request upstream",
            Dest::Plain(_) => ", 1 request at the destination",
            Dest::Custom => "",
        };
        let reason = self
            .reason
            .map(|r| format!(", reason {r}"))
            .unwrap_or_default();
        format!("{answer}{conn}{dest}{reason}")
    }
}

pub(super) fn listener(id: &'static str, px: Px, bytes: impl Into<Vec<u8>>) -> Row {
    Row::new(id, px, Input::Listener(bytes.into()))
}

pub(super) fn admin(id: &'static str, bytes: impl Into<Vec<u8>>) -> Row {
    Row::new(id, Px::Deny, Input::Admin(bytes.into()))
}

pub(super) fn mitm(id: &'static str, bytes: impl Into<Vec<u8>>) -> Row {
    mitm_to(id, Px::Deny, "api.openai.com:443", "api.openai.com", bytes)
}

pub(super) fn mitm_to(
    id: &'static str,
    px: Px,
    target: &str,
    sni: &'static str,
    bytes: impl Into<Vec<u8>>,
) -> Row {
    Row::new(
        id,
        px,
        Input::Mitm {
            target: target.to_string(),
            sni,
            bytes: bytes.into(),
        },
    )
}

pub(super) fn h2(id: &'static str, fields: &[(&str, &str)]) -> Row {
    let fields = fields
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    Row::new(id, Px::Deny, Input::H2(fields))
}

pub(super) fn custom(
    id: &'static str,
    px: Px,
    input: &str,
    want: &'static str,
    f: for<'a> fn(&'a Stage) -> BoxFuture<'a, Result<(), String>>,
) -> Row {
    let mut row = Row::new(id, px, Input::Custom(f)).note(input);
    row.want = Want::Custom(want);
    row.conn = Conn::Custom;
    row.dest = Dest::Custom;
    row
}

/// A printable prefix of raw bytes.
pub(super) fn shown(bytes: &[u8]) -> String {
    let text: String = String::from_utf8_lossy(&bytes[..bytes.len().min(90)])
        .escape_debug()
        .collect();
    if bytes.len() > 90 {
        format!("{text}… ({} bytes)", bytes.len())
    } else {
        text
    }
}

// === destination checks ===

pub(super) fn body_is(expected: &'static [u8]) -> impl Fn(&Seen) -> Result<(), String> {
    move |seen| {
        if seen.body.as_ref() == expected {
            Ok(())
        } else {
            Err(format!(
                "destination got body {:?}, expected {:?}",
                shown(&seen.body),
                shown(expected)
            ))
        }
    }
}

/// No upgrade field reached the destination.
pub(super) fn no_upgrade(seen: &Seen) -> Result<(), String> {
    match ["upgrade", "connection", "http2-settings"]
        .iter()
        .find(|h| seen.headers.contains_key(**h))
    {
        Some(h) => Err(format!("{h} forwarded")),
        None => Ok(()),
    }
}

pub(super) fn any_request(_: &Seen) -> Result<(), String> {
    Ok(())
}

/// The provider's key is the only credential, and none of `gone` arrived.
pub(super) fn only_key(
    header: &'static str,
    key: &'static str,
    gone: &'static [&'static str],
) -> Check {
    Box::new(move |seen| {
        let values: Vec<_> = seen.headers.get_all(header).iter().collect();
        if values != [key] {
            return Err(format!(
                "{header} upstream: {values:?}, expected only {key:?}"
            ));
        }
        for name in gone {
            if seen.headers.contains_key(*name) {
                return Err(format!("{name} reached the upstream: {:?}", seen.headers));
            }
        }
        Ok(())
    })
}

pub(super) const OPENAI_KEY: &str = "Bearer sk-provider-openai-0123456789";
pub(super) const ANTHROPIC_KEY: &str = "sk-ant-provider-0123456789";
