//! The client side of POP3 without I/O (RFC 1939, RFC 2449, RFC 5034): commands encoded so that
//! no argument can split a line or inject a second command, status lines parsed with their
//! response codes (RFC 2449 section 8, RFC 3206) instead of searched for substrings, and lines
//! and multi-line answers taken from a receive buffer with bounds. Message text goes through
//! [`Unstuffer`](crate::Unstuffer). A driver reads bytes into a buffer and asks these for the
//! next line, status or listing item; nothing here waits.

use bytes::{BufMut, BytesMut};

use crate::RespCode;

/// Longest status or listing line accepted from a server (RFC 1939 allows 512 octets; servers
/// that send longer UIDL or CAPA lines exist).
pub const MAX_LINE: usize = 8 * 1024;

/// A command the client sends. Message numbers are 1-based, as on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCommand<'a> {
    Capa,
    Stls,
    /// RFC 6856: the server may send UTF-8 from now on.
    Utf8,
    User(&'a str),
    /// The password, as octets.
    Pass(&'a [u8]),
    /// APOP name digest (RFC 1939 section 7).
    Apop(&'a str, &'a str),
    /// AUTH mechanism, with the base64 initial response (RFC 5034; `=` for an empty one).
    Auth(&'a str, Option<&'a str>),
    /// A base64 answer to a SASL challenge, or `*` to cancel: a line of its own.
    SaslResponse(&'a str),
    Stat,
    List(Option<u32>),
    Uidl(Option<u32>),
    Retr(u32),
    Top(u32, u64),
    Dele(u32),
    Noop,
    Rset,
    Quit,
}

impl ClientCommand<'_> {
    /// The command's keyword; empty for a SASL response line, which has none.
    pub fn keyword(&self) -> &'static str {
        use ClientCommand as C;
        match self {
            C::Capa => "CAPA",
            C::Stls => "STLS",
            C::Utf8 => "UTF8",
            C::User(_) => "USER",
            C::Pass(_) => "PASS",
            C::Apop(..) => "APOP",
            C::Auth(..) => "AUTH",
            C::SaslResponse(_) => "",
            C::Stat => "STAT",
            C::List(_) => "LIST",
            C::Uidl(_) => "UIDL",
            C::Retr(_) => "RETR",
            C::Top(..) => "TOP",
            C::Dele(_) => "DELE",
            C::Noop => "NOOP",
            C::Rset => "RSET",
            C::Quit => "QUIT",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// An argument holds CR, LF or NUL, which would end the command early (and let whatever
    /// follows be read as a second command), or a space where one word is expected.
    #[error("the {0} argument contains a line break, NUL or space, which a command cannot carry")]
    BadArgument(&'static str),
}

/// Append `command` and its CRLF to `out`; nothing is appended when an argument is refused.
pub fn encode(out: &mut BytesMut, command: &ClientCommand<'_>) -> Result<(), EncodeError> {
    use ClientCommand as C;
    let word = |arg: &[u8], what| {
        if arg.is_empty() || arg.iter().any(|&b| matches!(b, b'\r' | b'\n' | 0 | b' ')) {
            Err(EncodeError::BadArgument(what))
        } else {
            Ok(())
        }
    };
    // PASS takes the rest of the line: spaces are part of a password (RFC 1939 section 7).
    let rest = |arg: &[u8], what| {
        if arg.iter().any(|&b| matches!(b, b'\r' | b'\n' | 0)) { Err(EncodeError::BadArgument(what)) } else { Ok(()) }
    };
    match command {
        C::User(u) => word(u.as_bytes(), "USER")?,
        C::Pass(p) => rest(p, "PASS")?,
        C::Apop(u, d) => {
            word(u.as_bytes(), "APOP name")?;
            word(d.as_bytes(), "APOP digest")?;
        }
        C::Auth(m, initial) => {
            word(m.as_bytes(), "AUTH mechanism")?;
            if let Some(i) = initial {
                word(i.as_bytes(), "AUTH initial response")?;
            }
        }
        C::SaslResponse(r) => rest(r.as_bytes(), "SASL response")?,
        _ => {}
    }
    let n = |out: &mut BytesMut, v: u64| {
        out.put_u8(b' ');
        out.put_slice(v.to_string().as_bytes());
    };
    out.put_slice(command.keyword().as_bytes());
    if matches!(command, C::User(_) | C::Pass(_) | C::Apop(..) | C::Auth(..)) {
        out.put_u8(b' ');
    }
    match command {
        C::User(u) => out.put_slice(u.as_bytes()),
        C::Pass(p) => out.put_slice(p),
        C::Apop(u, d) => {
            out.put_slice(u.as_bytes());
            out.put_u8(b' ');
            out.put_slice(d.as_bytes());
        }
        C::Auth(m, initial) => {
            out.put_slice(m.as_bytes());
            if let Some(i) = initial {
                out.put_u8(b' ');
                out.put_slice(i.as_bytes());
            }
        }
        C::SaslResponse(r) => out.put_slice(r.as_bytes()),
        C::List(Some(m)) | C::Uidl(Some(m)) | C::Retr(m) | C::Dele(m) => n(out, u64::from(*m)),
        C::Top(m, lines) => {
            n(out, u64::from(*m));
            n(out, *lines);
        }
        _ => {}
    }
    out.put_slice(b"\r\n");
    Ok(())
}

/// A response code (RFC 2449 section 8): one Pillarbox knows, or another server's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Code {
    Known(RespCode),
    /// Any other code, as sent (`UTF8`, a vendor's extension...).
    Other(String),
}

impl Code {
    fn parse(s: &str) -> Self {
        let known = [RespCode::InUse, RespCode::LoginDelay, RespCode::SysTemp, RespCode::SysPerm, RespCode::Auth];
        match known.into_iter().find(|c| c.as_str().eq_ignore_ascii_case(s)) {
            Some(c) => Code::Known(c),
            None => Code::Other(s.to_owned()),
        }
    }

    pub fn is(&self, code: RespCode) -> bool {
        *self == Code::Known(code)
    }
}

/// A status line: `+OK` or `-ERR`, its response code and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub ok: bool,
    pub code: Option<Code>,
    pub text: String,
}

impl Status {
    /// Whether the line carries this response code.
    pub fn has(&self, code: RespCode) -> bool {
        self.code.as_ref().is_some_and(|c| c.is(code))
    }
}

/// Parse a status line (without its line ending). `None` when it is neither `+OK` nor `-ERR`.
/// A code is the bracketed first word of the text (`-ERR [SYS/TEMP] try later`), matched
/// without regard to case; a bracket anywhere else is just text.
pub fn parse_status(line: &str) -> Option<Status> {
    let (ok, rest) = if let Some(r) = line.strip_prefix("+OK") {
        (true, r)
    } else if let Some(r) = line.strip_prefix("-ERR") {
        (false, r)
    } else {
        return None;
    };
    // "+OKAY" is not "+OK": the keyword ends the line or is followed by a space.
    if !(rest.is_empty() || rest.starts_with(' ')) {
        return None;
    }
    let rest = rest.trim_start_matches(' ');
    let (code, text) = match rest.strip_prefix('[').and_then(|r| r.split_once(']')) {
        Some((code, text)) if !code.is_empty() && !code.contains(' ') => (Some(Code::parse(code)), text.trim_start()),
        _ => (None, rest),
    };
    Some(Status { ok, code, text: printable(text).into_owned() })
}

/// Server text made safe to show on a terminal: control characters (ESC, BEL, the C1 controls
/// such as CSI) become U+FFFD, so a hostile server cannot move the cursor, retitle the window or
/// hide what it said. Tabs stay.
/// Borrowed when there is nothing to replace (every line of a listing goes through here).
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    let control = |c: char| c != '\t' && c.is_control();
    if !text.chars().any(control) {
        return std::borrow::Cow::Borrowed(text);
    }
    std::borrow::Cow::Owned(text.chars().map(|c| if control(c) { '\u{FFFD}' } else { c }).collect())
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("a response line longer than {0} octets")]
    LineTooLong(usize),
    #[error("a multi-line answer longer than {0} lines or octets")]
    ListingTooLong(usize),
}

/// Take one line (ended by CRLF, or a bare LF as some servers send) from the front of `buf`,
/// without its ending. `Ok(None)`: more bytes are needed.
pub fn take_line(buf: &mut BytesMut, max: usize) -> Result<Option<BytesMut>, ReadError> {
    match memchr::memchr(b'\n', buf) {
        Some(i) if i > max => Err(ReadError::LineTooLong(max)),
        Some(i) => {
            let mut l = buf.split_to(i + 1);
            l.truncate(if i > 0 && l[i - 1] == b'\r' { i - 1 } else { i });
            Ok(Some(l))
        }
        None if buf.len() > max => Err(ReadError::LineTooLong(max)),
        None => Ok(None),
    }
}

/// One item of a multi-line answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A line, dot-unstuffed (RFC 1939 section 3).
    Line(String),
    /// The terminating `.`.
    End,
}

/// Reads a multi-line answer (CAPA, LIST, UIDL) line by line, within bounds on lines and octets
/// so that a server's endless listing cannot fill memory.
#[derive(Debug, Clone)]
pub struct MultiLine {
    lines: usize,
    octets: usize,
    max_lines: usize,
    max_octets: usize,
}

impl MultiLine {
    pub fn new(max_lines: usize, max_octets: usize) -> Self {
        Self { lines: 0, octets: 0, max_lines, max_octets }
    }

    /// The next item from `buf`; `Ok(None)`: more bytes are needed.
    pub fn next(&mut self, buf: &mut BytesMut) -> Result<Option<Item>, ReadError> {
        let Some(l) = take_line(buf, MAX_LINE)? else { return Ok(None) };
        if l[..] == b"."[..] {
            return Ok(Some(Item::End));
        }
        self.lines += 1;
        self.octets += l.len();
        if self.lines > self.max_lines || self.octets > self.max_octets {
            return Err(ReadError::ListingTooLong(self.max_lines));
        }
        let l = l.strip_prefix(b".").unwrap_or(&l);
        Ok(Some(Item::Line(String::from_utf8_lossy(l).into_owned())))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn server_text_loses_its_terminal_controls() {
        assert_eq!(
            printable("\u{1b}]0;owned\u{7}\u{1b}[2Jbad\tpassword\u{9b}1m"),
            "\u{FFFD}]0;owned\u{FFFD}\u{FFFD}[2Jbad\tpassword\u{FFFD}1m"
        );
        let s = parse_status("-ERR [AUTH] \u{1b}[31mno").expect("status");
        assert_eq!(s.text, "\u{FFFD}[31mno");
    }

    use super::*;

    fn enc(c: ClientCommand<'_>) -> Result<String, EncodeError> {
        let mut out = BytesMut::new();
        encode(&mut out, &c).map(|()| String::from_utf8(out.to_vec()).expect("ascii"))
    }

    #[test]
    fn commands_encode_and_refuse_line_breaks() {
        use ClientCommand as C;
        assert_eq!(enc(C::User("alice")), Ok("USER alice\r\n".into()));
        assert_eq!(enc(C::Pass(b"a pass phrase")), Ok("PASS a pass phrase\r\n".into()));
        assert_eq!(enc(C::Top(3, 0)), Ok("TOP 3 0\r\n".into()));
        assert_eq!(enc(C::Uidl(None)), Ok("UIDL\r\n".into()));
        assert_eq!(enc(C::Auth("PLAIN", Some("AGFsaWNlAHB3"))), Ok("AUTH PLAIN AGFsaWNlAHB3\r\n".into()));
        assert_eq!(enc(C::SaslResponse("*")), Ok("*\r\n".into()));
        for bad in [C::User("alice\r\nDELE 1"), C::User("a b"), C::User(""), C::Pass(b"pw\nQUIT"), C::Pass(b"p\0w")] {
            assert!(enc(bad).is_err(), "{bad:?}");
        }
        assert!(enc(C::Apop("alice", "d1\r\n")).is_err());
        assert!(enc(C::Auth("PLAIN", Some("x\ry"))).is_err());
        let mut out = BytesMut::from(&b"kept"[..]);
        assert!(encode(&mut out, &C::User("x\ny")).is_err());
        assert_eq!(&out[..], b"kept", "a refused command appends nothing");
    }

    #[test]
    fn status_lines_and_codes() {
        let s = parse_status("-ERR [IN-USE] locked by another session").expect("status");
        assert!(!s.ok && s.has(RespCode::InUse));
        assert_eq!(s.text, "locked by another session");
        assert!(parse_status("-ERR [sys/temp] later").expect("status").has(RespCode::SysTemp));
        assert!(parse_status("-err [SYS/PERM]").is_none(), "keywords are upper case on the wire");
        let s = parse_status("+OK [UTF8] now UTF-8").expect("status");
        assert!(s.ok && s.code == Some(Code::Other("UTF8".into())));
        let s = parse_status("-ERR wrong password [IN-USE] is just text here").expect("status");
        assert_eq!(s.code, None, "a bracket after the first word is text");
        assert!(!s.has(RespCode::InUse));
        assert_eq!(parse_status("+OK").map(|s| (s.ok, s.text)), Some((true, String::new())));
        assert_eq!(parse_status("+OKAY"), None);
        assert_eq!(parse_status("* OK IMAP4rev1"), None);
        assert_eq!(parse_status("-ERR [] x").and_then(|s| s.code), None);
    }

    #[test]
    fn lines_and_listings_in_any_chunking() {
        let wire = b"+OK 2 messages\r\n1 120\n2 .dotted\r\n..two\r\n.\r\nNEXT";
        for chunk in 1..=wire.len() {
            let mut buf = BytesMut::new();
            let mut items = Vec::new();
            let mut status = None;
            let mut ml = MultiLine::new(10, 1000);
            for piece in wire.chunks(chunk) {
                buf.extend_from_slice(piece);
                if status.is_none() {
                    match take_line(&mut buf, MAX_LINE).expect("line") {
                        Some(l) => status = Some(String::from_utf8(l.to_vec()).expect("utf8")),
                        None => continue,
                    }
                }
                while let Some(item) = ml.next(&mut buf).expect("listing") {
                    let end = item == Item::End;
                    items.push(item);
                    if end {
                        break;
                    }
                }
                if items.last() == Some(&Item::End) {
                    break;
                }
            }
            assert_eq!(status.as_deref(), Some("+OK 2 messages"));
            assert_eq!(
                items,
                vec![Item::Line("1 120".into()), Item::Line("2 .dotted".into()), Item::Line(".two".into()), Item::End],
                "chunks of {chunk}"
            );
        }
    }

    #[test]
    fn bounds_hold() {
        let mut buf = BytesMut::from(&vec![b'x'; MAX_LINE + 1][..]);
        assert_eq!(take_line(&mut buf, MAX_LINE), Err(ReadError::LineTooLong(MAX_LINE)));
        let mut buf = BytesMut::from(&b"a\nb\nc\n.\n"[..]);
        let mut ml = MultiLine::new(2, 100);
        assert!(ml.next(&mut buf).is_ok() && ml.next(&mut buf).is_ok());
        assert_eq!(ml.next(&mut buf), Err(ReadError::ListingTooLong(2)));
    }
}
