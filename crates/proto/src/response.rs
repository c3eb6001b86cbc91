//! Encoding of server responses (RFC 1939 section 3, RFC 2449 section 8 response codes,
//! RFC 3206 `SYS` and `AUTH` codes). Every byte the server sends goes through this module or
//! through [`MessageEncoder`](crate::MessageEncoder) for message content.

use std::fmt::Write as _;

use bytes::{BufMut, BytesMut};

/// Extended response codes (RFC 2449 section 8, RFC 3206).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RespCode {
    /// RFC 2449 section 8.1.1: the maildrop is locked by another session.
    InUse,
    /// RFC 2449 section 8.1.2: the user may not log in again so soon.
    LoginDelay,
    /// RFC 3206 section 4: a temporary system problem; try again later.
    SysTemp,
    /// RFC 3206 section 4: a permanent system problem; do not retry.
    SysPerm,
    /// RFC 3206 section 5: the credentials were wrong (or not acceptable).
    Auth,
}

impl RespCode {
    pub fn as_str(self) -> &'static str {
        match self {
            RespCode::InUse => "IN-USE",
            RespCode::LoginDelay => "LOGIN-DELAY",
            RespCode::SysTemp => "SYS/TEMP",
            RespCode::SysPerm => "SYS/PERM",
            RespCode::Auth => "AUTH",
        }
    }
}

/// Append `text` with every CR and LF replaced by a space: response text can never split a line.
fn put_text(out: &mut BytesMut, text: &str) {
    for &b in text.as_bytes() {
        out.put_u8(if b == b'\r' || b == b'\n' { b' ' } else { b });
    }
}

/// `+OK text CRLF`
pub fn ok(out: &mut BytesMut, text: &str) {
    out.put_slice(b"+OK");
    if !text.is_empty() {
        out.put_u8(b' ');
        put_text(out, text);
    }
    out.put_slice(b"\r\n");
}

/// `+OK` with formatted text, without an intermediate `String`.
pub fn ok_fmt(out: &mut BytesMut, args: std::fmt::Arguments<'_>) {
    out.put_slice(b"+OK ");
    let start = out.len();
    let _ = out.write_fmt(args);
    sanitize_from(out, start);
    out.put_slice(b"\r\n");
}

/// `-ERR [CODE] text CRLF`
pub fn err(out: &mut BytesMut, code: Option<RespCode>, text: &str) {
    out.put_slice(b"-ERR");
    if let Some(code) = code {
        out.put_slice(b" [");
        out.put_slice(code.as_str().as_bytes());
        out.put_u8(b']');
    }
    if !text.is_empty() {
        out.put_u8(b' ');
        put_text(out, text);
    }
    out.put_slice(b"\r\n");
}

/// One line of a multi-line response, dot-stuffed (RFC 1939 section 3).
pub fn line(out: &mut BytesMut, text: &str) {
    if text.starts_with('.') {
        out.put_u8(b'.');
    }
    put_text(out, text);
    out.put_slice(b"\r\n");
}

/// A formatted line of a multi-line response. Only for scan and unique-id listings, whose lines
/// start with a message number and so never need dot-stuffing.
pub fn line_fmt(out: &mut BytesMut, args: std::fmt::Arguments<'_>) {
    let start = out.len();
    let _ = out.write_fmt(args);
    sanitize_from(out, start);
    debug_assert_ne!(out.get(start), Some(&b'.'), "line_fmt is for listings only");
    out.put_slice(b"\r\n");
}

/// The terminating `.CRLF` of a multi-line response.
pub fn end(out: &mut BytesMut) {
    out.put_slice(b".\r\n");
}

fn sanitize_from(out: &mut BytesMut, start: usize) {
    for b in &mut out[start..] {
        if *b == b'\r' || *b == b'\n' {
            *b = b' ';
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_codes_and_strips_line_breaks() {
        let mut out = BytesMut::new();
        ok(&mut out, "hello");
        err(&mut out, Some(RespCode::InUse), "locked\r\nCAPA");
        err(&mut out, None, "");
        ok_fmt(&mut out, format_args!("{} {}", 2, 320));
        line(&mut out, ".hidden");
        line_fmt(&mut out, format_args!("{} {}", 1, 120));
        end(&mut out);
        assert_eq!(
            &out[..],
            b"+OK hello\r\n-ERR [IN-USE] locked  CAPA\r\n-ERR\r\n+OK 2 320\r\n..hidden\r\n1 120\r\n.\r\n"
        );
    }
}
