//! Terminal sessions: the types and limits shared by the agent, nexusd and nexusctl.
//!
//! A terminal is a PTY session in the guest. Between nexusd and the agent it is one HTTP/2
//! request (`POST /v1/terminal`) whose request and response bodies are both streams of
//! [`TermFrame`]s: data frames carry terminal bytes, control frames carry one JSON
//! [`TermControl`]. Between a client and nexusd it is a WebSocket: binary messages are terminal
//! bytes, text messages are the same [`TermControl`] JSON. One type for both hops, so the control
//! language cannot drift between them.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

/// Most PTY sessions one VM keeps (running or exited and not yet forgotten).
pub const MAX_SESSIONS: usize = 32;
/// Most clients attached to one session at once.
pub const MAX_CLIENTS_PER_SESSION: usize = 8;
/// Scrollback each session keeps and replays on attach.
pub const SCROLLBACK_BYTES: usize = 1024 * 1024;
/// Largest payload of one frame (agent hop) or one WebSocket message (client hop).
pub const MAX_FRAME_PAYLOAD: usize = 64 * 1024;
/// Window size bounds.
pub const MAX_COLS: u16 = 1000;
pub const MAX_ROWS: u16 = 1000;
/// Bounds of a command given instead of the shell.
pub const MAX_CMD_ARGS: usize = 64;
pub const MAX_CMD_BYTES: usize = 4096;
/// Longest `TERM` value.
pub const MAX_TERM_BYTES: usize = 64;
/// Length of a session id: lowercase hex.
pub const SESSION_ID_LEN: usize = 12;

const HEADER_BYTES: usize = 5;
const KIND_DATA: u8 = 0;
const KIND_CONTROL: u8 = 1;

/// A control message, in either direction, on either hop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum TermControl {
    /// Client → agent, first frame of the agent hop only: open a new session or attach to one.
    Open(TermOpen),
    /// Server → client, first: the session the client is attached to.
    Session { id: String, created: bool },
    /// Client → server: the client's window size changed.
    Resize { cols: u16, rows: u16 },
    /// Client → server: send a signal to the session's foreground process group.
    Signal { signal: i32 },
    /// Server → client, last: the session's process ended.
    Exit {
        code: Option<i32>,
        signal: Option<i32>,
    },
    /// Server → client, last: the attachment ended for another reason (VM stopped, session
    /// killed, client too slow); the session itself may still run.
    Closed { reason: String },
}

/// What a client asks for when it connects.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TermOpen {
    /// Attach to this session; a new one is started when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    pub cols: u16,
    pub rows: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<String>,
    /// The command instead of the login shell (new sessions only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub argv: Vec<String>,
}

impl TermOpen {
    /// Checks every field against the limits; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        validate_size(self.cols, self.rows)?;
        if let Some(id) = &self.session {
            validate_session_id(id)?;
            if !self.argv.is_empty() {
                return Err("cmd: a command can only be given for a new session".into());
            }
        }
        if let Some(term) = &self.term {
            let ok = !term.is_empty()
                && term.len() <= MAX_TERM_BYTES
                && term
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-+".contains(&b));
            if !ok {
                return Err(format!(
                    "term: 1 to {MAX_TERM_BYTES} characters of [A-Za-z0-9._+-]"
                ));
            }
        }
        validate_argv(&self.argv)
    }
}

/// Cols and rows within 1..=[`MAX_COLS`] and 1..=[`MAX_ROWS`].
pub fn validate_size(cols: u16, rows: u16) -> Result<(), String> {
    if !(1..=MAX_COLS).contains(&cols) {
        return Err(format!("cols: must be 1 to {MAX_COLS}, not {cols}"));
    }
    if !(1..=MAX_ROWS).contains(&rows) {
        return Err(format!("rows: must be 1 to {MAX_ROWS}, not {rows}"));
    }
    Ok(())
}

/// A session id is [`SESSION_ID_LEN`] lowercase hex digits.
pub fn validate_session_id(id: &str) -> Result<(), String> {
    if id.len() == SESSION_ID_LEN && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err(format!(
            "session: a session id is {SESSION_ID_LEN} lowercase hex digits"
        ))
    }
}

/// A command: at most [`MAX_CMD_ARGS`] arguments, [`MAX_CMD_BYTES`] in all, no NUL, a program.
pub fn validate_argv(argv: &[String]) -> Result<(), String> {
    if argv.is_empty() {
        return Ok(());
    }
    let total: usize = argv.iter().map(|a| a.len() + 1).sum();
    if argv.len() > MAX_CMD_ARGS || total > MAX_CMD_BYTES {
        return Err(format!(
            "cmd: at most {MAX_CMD_ARGS} arguments and {MAX_CMD_BYTES} bytes"
        ));
    }
    if argv[0].is_empty() || argv.iter().any(|a| a.contains('\0')) {
        return Err("cmd: must name a program and contain no NUL bytes".into());
    }
    Ok(())
}

/// Query of `GET /v1/vms/{vm}/terminal` (documentation; parsed by [`parse_terminal_query`]
/// because `cmd` repeats).
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TerminalQuery {
    /// Attach to this session (12 hex digits); a new session is started when absent.
    #[param(pattern = "^[0-9a-f]{12}$")]
    pub session: Option<String>,
    /// Window width, 1 to 1000 (default 80).
    #[param(minimum = 1, maximum = 1000)]
    pub cols: Option<u16>,
    /// Window height, 1 to 1000 (default 24).
    #[param(minimum = 1, maximum = 1000)]
    pub rows: Option<u16>,
    /// `TERM` for a new session (default `xterm-256color`).
    pub term: Option<String>,
    /// The command instead of the shell, one argument per `cmd` (new sessions only).
    #[param(style = Form, explode)]
    pub cmd: Option<Vec<String>>,
}

/// Parses a terminal query string into what to open; the error names the field.
pub fn parse_terminal_query(raw: &str) -> Result<TermOpen, (&'static str, String)> {
    let pairs = crate::agent::parse_query(raw).ok_or(("query", "malformed query string".into()))?;
    let mut open = TermOpen {
        cols: 80,
        rows: 24,
        ..TermOpen::default()
    };
    let number = |field: &'static str, v: &str| {
        v.parse::<u16>()
            .map_err(|_| (field, format!("{field}: not a number from 1 to 1000")))
    };
    for (key, value) in pairs {
        match key.as_str() {
            "session" => open.session = Some(value),
            "cols" => open.cols = number("cols", &value)?,
            "rows" => open.rows = number("rows", &value)?,
            "term" => open.term = Some(value),
            "cmd" if open.argv.len() < MAX_CMD_ARGS => open.argv.push(value),
            "cmd" => return Err(("cmd", format!("cmd: at most {MAX_CMD_ARGS} arguments"))),
            other => return Err(("query", format!("unknown query parameter {other:?}"))),
        }
    }
    open.validate().map_err(|m| {
        let field = match m.split(':').next() {
            Some("cols") => "cols",
            Some("rows") => "rows",
            Some("session") => "session",
            Some("term") => "term",
            _ => "cmd",
        };
        (field, m)
    })?;
    Ok(open)
}

/// The query string for `open` (the client side of [`parse_terminal_query`]).
pub fn terminal_query(open: &TermOpen) -> String {
    let enc = crate::agent::encode_query_value;
    let mut q = format!("cols={}&rows={}", open.cols, open.rows);
    if let Some(s) = &open.session {
        q.push_str(&format!("&session={}", enc(s)));
    }
    if let Some(t) = &open.term {
        q.push_str(&format!("&term={}", enc(t)));
    }
    for a in &open.argv {
        q.push_str(&format!("&cmd={}", enc(a)));
    }
    q
}

/// One entry of a session listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SessionInfo {
    pub id: String,
    /// The command the session runs.
    pub argv: Vec<String>,
    pub cols: u16,
    pub rows: u16,
    /// Clients attached now.
    pub clients: usize,
    /// Milliseconds since the guest booted when the session started.
    pub started_ms: u64,
    /// Set once the process ended (exited sessions are kept a little while for late attaches).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_signal: Option<i32>,
    pub running: bool,
}

/// One frame of the agent hop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TermFrame {
    Data(Bytes),
    Control(TermControl),
}

impl TermFrame {
    /// `[kind u8][len u32 BE][payload]`. Data longer than a frame is split by the caller.
    pub fn encode(&self) -> Bytes {
        let (kind, payload) = match self {
            Self::Data(data) => (KIND_DATA, data.clone()),
            Self::Control(c) => (
                KIND_CONTROL,
                Bytes::from(serde_json::to_vec(c).unwrap_or_default()),
            ),
        };
        let mut out = BytesMut::with_capacity(HEADER_BYTES + payload.len());
        out.put_u8(kind);
        out.put_u32(payload.len() as u32);
        out.put_slice(&payload);
        out.freeze()
    }
}

/// Why a frame stream was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("terminal frame of {0} bytes is over the {MAX_FRAME_PAYLOAD}-byte limit")]
    TooLarge(usize),
    #[error("unknown terminal frame kind {0}")]
    UnknownKind(u8),
    #[error("malformed terminal control message: {0}")]
    BadControl(String),
    #[error("terminal stream ended inside a frame")]
    Truncated,
}

/// Splits a byte stream into [`TermFrame`]s, holding at most one frame's bytes.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: BytesMut,
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds bytes and returns every frame now complete.
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<TermFrame>, FrameError> {
        self.buf.extend_from_slice(data);
        let mut frames = Vec::new();
        while self.buf.len() >= HEADER_BYTES {
            let kind = self.buf[0];
            let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
            let len = len as usize;
            if len > MAX_FRAME_PAYLOAD {
                return Err(FrameError::TooLarge(len));
            }
            if self.buf.len() < HEADER_BYTES + len {
                break;
            }
            self.buf.advance(HEADER_BYTES);
            let payload = self.buf.split_to(len).freeze();
            frames.push(match kind {
                KIND_DATA => TermFrame::Data(payload),
                KIND_CONTROL => TermFrame::Control(
                    serde_json::from_slice(&payload)
                        .map_err(|e| FrameError::BadControl(e.to_string()))?,
                ),
                other => return Err(FrameError::UnknownKind(other)),
            });
        }
        Ok(frames)
    }

    /// At the end of the stream: nothing may be left over.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Truncated)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_when_split_anywhere() {
        let frames = vec![
            TermFrame::Control(TermControl::Resize { cols: 80, rows: 24 }),
            TermFrame::Data(Bytes::from_static(b"echo hi\r")),
        ];
        let wire: Vec<u8> = frames.iter().flat_map(|f| f.encode().to_vec()).collect();
        let mut decoder = FrameDecoder::new();
        let mut got = Vec::new();

        for byte in &wire {
            got.extend(decoder.push(std::slice::from_ref(byte)).unwrap());
        }

        assert_eq!(got, frames);
        assert_eq!(decoder.finish(), Ok(()));
    }

    #[test]
    fn oversized_frame_header_is_refused_before_buffering() {
        let mut decoder = FrameDecoder::new();

        let err = decoder.push(&[0, 0xff, 0xff, 0xff, 0xff]).unwrap_err();

        assert_eq!(err, FrameError::TooLarge(u32::MAX as usize));
    }

    #[test]
    fn open_with_out_of_range_size_is_refused() {
        let open = TermOpen {
            cols: 0,
            rows: 24,
            ..TermOpen::default()
        };

        assert!(open.validate().unwrap_err().starts_with("cols"));
    }

    #[test]
    fn session_id_must_be_twelve_hex_digits() {
        assert!(validate_session_id("0123456789ab").is_ok());
        assert!(validate_session_id("../etc").is_err());
        assert!(validate_session_id("0123456789AB").is_err());
    }

    #[test]
    fn terminal_query_round_trips_a_command() {
        let open = TermOpen {
            cols: 100,
            rows: 30,
            term: Some("xterm".into()),
            argv: vec!["sh".into(), "-c".into(), "echo a&b=c".into()],
            session: None,
        };

        assert_eq!(parse_terminal_query(&terminal_query(&open)), Ok(open));
    }

    #[test]
    fn open_control_round_trips() {
        let open = TermControl::Open(TermOpen {
            cols: 1,
            rows: 2,
            ..TermOpen::default()
        });
        let json = serde_json::to_string(&open).unwrap();

        assert_eq!(serde_json::from_str::<TermControl>(&json).unwrap(), open);
    }

    #[test]
    fn control_json_is_tagged_by_type() {
        let json = serde_json::to_string(&TermControl::Exit {
            code: Some(3),
            signal: None,
        })
        .unwrap();

        assert_eq!(json, r#"{"type":"exit","code":3,"signal":null}"#);
    }
}
