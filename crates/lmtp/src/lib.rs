//! The receiving side of LMTP (RFC 2033) as a sans-IO state machine, in the style of the POP3
//! core: the driver feeds bytes, polls [`Event`]s, answers them, and writes the output.
//!
//! Implements LHLO, MAIL (with SIZE, RFC 1870, and BODY, RFC 6152), RCPT, DATA, BDAT (CHUNKING,
//! RFC 3030), RSET, NOOP, VRFY (252), QUIT, with PIPELINING (RFC 2920) and enhanced status codes
//! (RFC 2034, RFC 3463). After the message text, one reply per accepted recipient, in RCPT order
//! (RFC 2033 section 4.2). The message size limit is enforced while the text arrives: the session
//! never holds more than one received chunk of it.
#![forbid(unsafe_code)]

use std::fmt::Write as _;

use bytes::{BufMut, Bytes, BytesMut};
use pillarbox_proto::{LineDecoder, LineEvent, Unstuffed, Unstuffer};

/// RFC 5321 section 4.5.3.1.4: a command line is at most 512 octets including CRLF.
pub const MAX_COMMAND_LINE: usize = 510;
/// Consecutive invalid commands before the connection is closed.
pub const MAX_BAD_COMMANDS: u32 = 20;

/// Settings for one session.
#[derive(Debug, Clone)]
pub struct Config {
    /// This server's name, for the greeting and LHLO.
    pub hostname: String,
    /// Largest accepted message text, in octets (the SIZE extension's value).
    pub max_message_size: u64,
    /// Most recipients in one transaction (RFC 5321 section 4.5.3.1.8 asks for at least 100).
    pub max_recipients: usize,
}

/// An SMTP reply: code, enhanced status code and text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// RFC 3463 `class.subject.detail`.
    pub status: (u8, u16, u16),
    pub text: String,
}

impl Reply {
    pub fn new(code: u16, status: (u8, u16, u16), text: impl Into<String>) -> Self {
        Self { code, status, text: text.into() }
    }

    fn encode(&self, out: &mut BytesMut) {
        let (a, b, c) = self.status;
        // BytesMut is a fmt::Write of its own: no intermediate String.
        let _ = write!(out, "{} {a}.{b}.{c} ", self.code);
        for &byte in self.text.as_bytes() {
            out.put_u8(if byte == b'\r' || byte == b'\n' { b' ' } else { byte });
        }
        out.put_slice(b"\r\n");
    }
}

/// An accepted recipient and the local user the driver mapped it to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    pub address: String,
    pub user: String,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// Write the pending output, then read more.
    NeedInput,
    /// Check a recipient; answer with [`Session::accept_recipient`] or
    /// [`Session::reject_recipient`].
    Recipient { address: String, size_hint: Option<u64> },
    /// The message text starts: open one delivery per recipient and write the trace headers.
    BeginMessage { sender: String, lhlo: String, recipients: Vec<Recipient> },
    /// Message text (dot-stuffing undone) to append to every open delivery.
    Body(Bytes),
    /// The text is complete: commit the deliveries and call [`Session::delivered`] with one reply
    /// per recipient, in RCPT order.
    EndMessage,
    /// Discard the open deliveries (the message is too large or the transaction was abandoned).
    AbortMessage,
    /// Write the pending output and close the connection.
    Close,
}

#[derive(Debug, Default)]
struct Txn {
    sender: String,
    size_hint: Option<u64>,
    recipients: Vec<Recipient>,
    /// Octets of text received so far (DATA or BDAT chunks).
    received: u64,
    /// BeginMessage was emitted (deliveries are open).
    begun: bool,
    /// BDAT chunks were used: DATA is no longer allowed.
    chunking: bool,
    /// The size limit was crossed: the rest of the text is read and discarded.
    too_large: bool,
}

#[derive(Debug)]
enum State {
    /// Before LHLO.
    Start,
    /// After LHLO, no transaction.
    Ready,
    /// After MAIL: collecting recipients.
    Mail(Txn),
    /// Waiting for the driver's answer on a recipient.
    CheckingRecipient(Txn),
    /// Receiving DATA text.
    Data(Txn, Unstuffer),
    /// Receiving a BDAT chunk of `size` octets, `left` still to come. Without a transaction
    /// (`txn` is `None`) or recipients, the chunk is read only to stay in step, then refused.
    Bdat {
        txn: Option<Txn>,
        size: u64,
        left: u64,
        last: bool,
    },
    /// Text complete; waiting for the driver to commit.
    Committing(Txn),
    Closed,
}

pub struct Session {
    config: Config,
    state: State,
    lhlo: String,
    decoder: LineDecoder,
    /// Raw octets while receiving message text.
    raw: BytesMut,
    body: BytesMut,
    out: BytesMut,
    bad_commands: u32,
    /// Pending event produced while processing (e.g. AbortMessage, EndMessage after a Body).
    queued: Option<Event>,
    delivered_count: u64,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("state", &self.state).finish_non_exhaustive()
    }
}

fn ok(text: &str) -> Reply {
    Reply::new(250, (2, 0, 0), text)
}

fn bad_sequence(text: &str) -> Reply {
    Reply::new(503, (5, 5, 1), text)
}

impl Session {
    /// A new session; the 220 greeting is in the output.
    pub fn new(config: Config) -> Self {
        let mut s = Self {
            state: State::Start,
            lhlo: String::new(),
            decoder: LineDecoder::new(MAX_COMMAND_LINE),
            raw: BytesMut::new(),
            body: BytesMut::new(),
            out: BytesMut::new(),
            bad_commands: 0,
            queued: None,
            delivered_count: 0,
            config,
        };
        let greeting = format!("{} LMTP Pillarbox ready", s.config.hostname);
        s.reply_plain(220, &greeting);
        s
    }

    fn reply(&mut self, r: &Reply) {
        r.encode(&mut self.out);
    }

    /// A reply without an enhanced status code (the greeting, RFC 2034 section 3).
    fn reply_plain(&mut self, code: u16, text: &str) {
        let _ = write!(self.out, "{code} {text}\r\n");
    }

    pub fn feed(&mut self, data: &[u8]) {
        match self.state {
            State::Data(..) | State::Bdat { .. } => self.raw.extend_from_slice(data),
            State::Closed => {}
            _ => self.decoder.feed(data),
        }
    }

    pub fn take_output(&mut self) -> BytesMut {
        self.out.split()
    }

    /// Messages delivered to at least one recipient in this session.
    pub fn delivered_count(&self) -> u64 {
        self.delivered_count
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// Whether message text is being received (a disconnect now must discard deliveries).
    pub fn in_message(&self) -> bool {
        match &self.state {
            State::Data(t, _) | State::Committing(t) | State::Bdat { txn: Some(t), .. } => t.begun,
            _ => false,
        }
    }

    pub fn poll(&mut self) -> Event {
        if let Some(e) = self.queued.take() {
            return e;
        }
        loop {
            match &mut self.state {
                State::Closed => return Event::Close,
                State::CheckingRecipient(_) | State::Committing(_) => return Event::Close,
                State::Data(..) | State::Bdat { .. } => {
                    if let Some(e) = self.text() {
                        return e;
                    }
                    if matches!(self.state, State::Data(..) | State::Bdat { .. }) {
                        return Event::NeedInput;
                    }
                }
                State::Start | State::Ready | State::Mail(_) => {
                    let Some(ev) = self.decoder.next_event() else { return Event::NeedInput };
                    match ev {
                        LineEvent::Line(line) => {
                            if let Some(e) = self.command(&line) {
                                return e;
                            }
                        }
                        LineEvent::TooLong => self.bad(Reply::new(500, (5, 5, 2), "line too long")),
                        LineEvent::Overflow => {
                            self.reply(&Reply::new(421, (4, 7, 0), "line too long, closing connection"));
                            self.state = State::Closed;
                        }
                    }
                }
            }
        }
    }

    fn bad(&mut self, r: Reply) {
        self.bad_commands += 1;
        if self.bad_commands >= MAX_BAD_COMMANDS {
            self.reply(&Reply::new(421, (4, 7, 0), "too many invalid commands, closing connection"));
            self.state = State::Closed;
        } else {
            self.reply(&r);
        }
    }

    /// Process raw message text in the Data/Bdat states; returns an event to hand out.
    fn text(&mut self) -> Option<Event> {
        let max = self.config.max_message_size;
        let state = std::mem::replace(&mut self.state, State::Closed);
        let (event, state) = match state {
            State::Data(mut txn, mut unstuffer) => {
                let start = self.body.len();
                let result = unstuffer.decode(&self.raw, &mut self.body);
                let consumed = match result {
                    Unstuffed::More => self.raw.len(),
                    Unstuffed::Done(n) => n,
                };
                let _ = self.raw.split_to(consumed);
                txn.received += (self.body.len() - start) as u64;
                let aborted = self.check_size(&mut txn, max);
                let body = self.take_body(&txn);
                match result {
                    Unstuffed::More => (body.or(aborted), State::Data(txn, unstuffer)),
                    Unstuffed::Done(_) => {
                        self.end_chunk();
                        self.finish_text(txn, body.or(aborted))
                    }
                }
            }
            State::Bdat { txn, size, left, last } => {
                let n = (self.raw.len() as u64).min(left) as usize;
                let chunk = self.raw.split_to(n);
                let left = left - n as u64;
                match txn {
                    Some(mut txn) if txn.begun => {
                        if !txn.too_large {
                            self.body.extend_from_slice(&chunk);
                        }
                        txn.received += n as u64;
                        let event = self.check_size(&mut txn, max).or_else(|| self.take_body(&txn));
                        if left > 0 {
                            (event, State::Bdat { txn: Some(txn), size, left, last })
                        } else {
                            self.end_chunk();
                            if last || txn.too_large {
                                self.finish_text(txn, event)
                            } else {
                                self.reply(&ok(&format!("{size} octets received")));
                                (event, State::Mail(txn))
                            }
                        }
                    }
                    txn if left > 0 => (None, State::Bdat { txn, size, left, last }),
                    txn => {
                        self.end_chunk();
                        self.reply(&bad_sequence("no valid recipients"));
                        (None, txn.map_or(State::Ready, State::Mail))
                    }
                }
            }
            other => (None, other),
        };
        self.state = state;
        event
    }

    /// Octets after the end of the text are the next pipelined commands.
    fn end_chunk(&mut self) {
        let rest = self.raw.split();
        self.decoder.feed(&rest);
    }

    fn take_body(&mut self, txn: &Txn) -> Option<Event> {
        if self.body.is_empty() || txn.too_large {
            self.body.clear();
            return None;
        }
        Some(Event::Body(self.body.split().freeze()))
    }

    /// Cross the size limit once: stop passing text on and tell the driver to discard.
    fn check_size(&mut self, txn: &mut Txn, max: u64) -> Option<Event> {
        if txn.received > max && !txn.too_large {
            txn.too_large = true;
            self.body.clear();
            return Some(Event::AbortMessage);
        }
        None
    }

    /// The text ended: either commit, or answer "too large" for every recipient (LMTP answers
    /// the end of the text once per recipient).
    fn finish_text(&mut self, txn: Txn, pending: Option<Event>) -> (Option<Event>, State) {
        if txn.too_large {
            let r = Reply::new(
                552,
                (5, 3, 4),
                format!("message exceeds the size limit of {} octets", self.config.max_message_size),
            );
            for _ in &txn.recipients {
                self.reply(&r);
            }
            return (pending, State::Ready);
        }
        match pending {
            Some(e) => {
                self.queued = Some(Event::EndMessage);
                (Some(e), State::Committing(txn))
            }
            None => (Some(Event::EndMessage), State::Committing(txn)),
        }
    }

    fn command(&mut self, line: &[u8]) -> Option<Event> {
        let Ok(text) = std::str::from_utf8(line) else {
            self.bad(Reply::new(500, (5, 5, 2), "command is not valid UTF-8"));
            return None;
        };
        let (verb, rest) = text.split_once(' ').unwrap_or((text, ""));
        let verb = verb.to_ascii_uppercase();
        let rest = rest.trim();
        match verb.as_str() {
            "LHLO" => {
                if rest.is_empty() {
                    self.bad(Reply::new(501, (5, 5, 4), "LHLO needs a host name"));
                    return None;
                }
                self.bad_commands = 0;
                self.lhlo = rest.chars().filter(|c| c.is_ascii_graphic()).take(255).collect();
                let host = self.config.hostname.clone();
                let max = self.config.max_message_size;
                let lines = [
                    host,
                    "PIPELINING".into(),
                    "ENHANCEDSTATUSCODES".into(),
                    "8BITMIME".into(),
                    format!("SIZE {max}"),
                    "CHUNKING".into(),
                ];
                for (i, l) in lines.iter().enumerate() {
                    let sep = if i + 1 == lines.len() { ' ' } else { '-' };
                    let _ = write!(self.out, "250{sep}{l}\r\n");
                }
                self.state = State::Ready;
                None
            }
            "HELO" | "EHLO" => {
                self.bad(Reply::new(500, (5, 5, 1), "this is an LMTP server: use LHLO"));
                None
            }
            "MAIL" => self.mail(rest),
            "RCPT" => self.rcpt(rest),
            "DATA" => self.data(rest),
            "BDAT" => self.bdat(rest),
            "RSET" => {
                self.bad_commands = 0;
                if matches!(self.state, State::Mail(_)) {
                    self.state = State::Ready;
                }
                self.reply(&ok("reset"));
                None
            }
            "NOOP" => {
                self.reply(&ok("ok"));
                None
            }
            "VRFY" => {
                self.reply(&Reply::new(252, (2, 5, 2), "cannot verify the user, but will accept the message"));
                None
            }
            "QUIT" => {
                self.reply(&Reply::new(221, (2, 0, 0), "bye"));
                self.state = State::Closed;
                None
            }
            _ => {
                self.bad(Reply::new(500, (5, 5, 2), "unknown command"));
                None
            }
        }
    }

    fn mail(&mut self, rest: &str) -> Option<Event> {
        match self.state {
            State::Start => {
                self.bad(bad_sequence("send LHLO first"));
                return None;
            }
            State::Mail(_) => {
                self.bad(bad_sequence("nested MAIL command"));
                return None;
            }
            _ => {}
        }
        let Some((path, params)) = parse_path(rest, "FROM:") else {
            self.bad(Reply::new(501, (5, 5, 4), "syntax: MAIL FROM:<address>"));
            return None;
        };
        let mut size_hint = None;
        for p in params.split_whitespace() {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            match k.to_ascii_uppercase().as_str() {
                "SIZE" => match v.parse::<u64>() {
                    Ok(n) if n > self.config.max_message_size => {
                        self.reply(&Reply::new(
                            552,
                            (5, 3, 4),
                            format!("message exceeds the size limit of {} octets", self.config.max_message_size),
                        ));
                        return None;
                    }
                    Ok(n) => size_hint = Some(n),
                    Err(_) => {
                        self.bad(Reply::new(501, (5, 5, 4), "SIZE needs a number"));
                        return None;
                    }
                },
                "BODY" if v.eq_ignore_ascii_case("7BIT") || v.eq_ignore_ascii_case("8BITMIME") => {}
                _ => {
                    self.bad(Reply::new(555, (5, 5, 4), format!("unsupported MAIL parameter {k}")));
                    return None;
                }
            }
        }
        self.bad_commands = 0;
        self.state = State::Mail(Txn { sender: path, size_hint, ..Txn::default() });
        self.reply(&Reply::new(250, (2, 1, 0), "sender ok"));
        None
    }

    fn rcpt(&mut self, rest: &str) -> Option<Event> {
        let State::Mail(txn) = &mut self.state else {
            self.bad(bad_sequence("send MAIL first"));
            return None;
        };
        let parsed = parse_path(rest, "TO:");
        let too_many = txn.recipients.len() >= self.config.max_recipients;
        match parsed {
            Some((path, params)) if !path.is_empty() && params.trim().is_empty() => {
                if too_many {
                    self.reply(&Reply::new(452, (4, 5, 3), "too many recipients"));
                    return None;
                }
                let size_hint = txn.size_hint;
                let txn = std::mem::take(txn);
                self.state = State::CheckingRecipient(txn);
                Some(Event::Recipient { address: path, size_hint })
            }
            Some((_, params)) if !params.trim().is_empty() => {
                self.bad(Reply::new(555, (5, 5, 4), "RCPT parameters are not supported"));
                None
            }
            _ => {
                self.bad(Reply::new(501, (5, 1, 3), "syntax: RCPT TO:<address>"));
                None
            }
        }
    }

    /// The driver accepted the recipient of [`Event::Recipient`], for local user `user`.
    pub fn accept_recipient(&mut self, address: String, user: String) {
        if let State::CheckingRecipient(txn) = &mut self.state {
            let mut txn = std::mem::take(txn);
            txn.recipients.push(Recipient { address, user });
            self.bad_commands = 0;
            self.state = State::Mail(txn);
            self.reply(&Reply::new(250, (2, 1, 5), "recipient ok"));
        }
    }

    /// The driver refused the recipient of [`Event::Recipient`] with this reply.
    pub fn reject_recipient(&mut self, reply: Reply) {
        if let State::CheckingRecipient(txn) = &mut self.state {
            let txn = std::mem::take(txn);
            self.state = State::Mail(txn);
            self.reply(&reply);
        }
    }

    fn data(&mut self, rest: &str) -> Option<Event> {
        if !rest.is_empty() {
            self.bad(Reply::new(501, (5, 5, 4), "DATA takes no argument"));
            return None;
        }
        let State::Mail(txn) = &mut self.state else {
            self.bad(bad_sequence("send MAIL and RCPT first"));
            return None;
        };
        if txn.recipients.is_empty() || txn.chunking {
            let text = if txn.chunking { "DATA cannot follow BDAT" } else { "no valid recipients" };
            self.bad(bad_sequence(text));
            return None;
        }
        let mut txn = std::mem::take(txn);
        txn.begun = true;
        let event = Event::BeginMessage {
            sender: txn.sender.clone(),
            lhlo: self.lhlo.clone(),
            recipients: txn.recipients.clone(),
        };
        self.reply_plain(354, "send the message, end with <CRLF>.<CRLF>");
        self.raw = self.decoder.take_buffered();
        self.state = State::Data(txn, Unstuffer::strict());
        Some(event)
    }

    fn bdat(&mut self, rest: &str) -> Option<Event> {
        let mut words = rest.split_whitespace();
        let size = words.next().and_then(|n| n.parse::<u64>().ok());
        let last = match words.next() {
            None => false,
            Some(w) if w.eq_ignore_ascii_case("LAST") => true,
            Some(_) => {
                self.bad(Reply::new(501, (5, 5, 4), "syntax: BDAT <size> [LAST]"));
                return None;
            }
        };
        let Some(size) = size.filter(|_| words.next().is_none()) else {
            // Without a valid size the chunk cannot be skipped: the stream is out of sync.
            self.reply(&Reply::new(501, (5, 5, 4), "syntax: BDAT <size> [LAST]; closing connection"));
            self.state = State::Closed;
            return None;
        };
        let mut txn = match &mut self.state {
            State::Mail(txn) => Some(std::mem::take(txn)),
            _ => None,
        };
        let mut begin = None;
        if let Some(t) = txn.as_mut().filter(|t| !t.recipients.is_empty()) {
            t.chunking = true;
            if !t.begun {
                t.begun = true;
                begin = Some(Event::BeginMessage {
                    sender: t.sender.clone(),
                    lhlo: self.lhlo.clone(),
                    recipients: t.recipients.clone(),
                });
            }
        }
        self.raw = self.decoder.take_buffered();
        self.state = State::Bdat { txn, size, left: size, last };
        begin
    }

    /// The driver's answer to [`Event::EndMessage`]: one reply per recipient, in RCPT order.
    pub fn delivered(&mut self, replies: Vec<Reply>) {
        if let State::Committing(_) = self.state {
            if replies.iter().any(|r| r.code / 100 == 2) {
                self.delivered_count += 1;
            }
            for r in &replies {
                self.reply(r);
            }
            self.state = State::Ready;
        }
    }

    /// Idle too long: say so and close (RFC 5321 section 4.5.3.2).
    pub fn idle_timeout(&mut self) -> Option<Event> {
        self.close_with(Reply::new(421, (4, 4, 2), "idle timeout, closing connection"))
    }

    /// The server is shutting down.
    pub fn shutdown(&mut self) -> Option<Event> {
        self.close_with(Reply::new(421, (4, 3, 2), "server shutting down, try again later"))
    }

    fn close_with(&mut self, r: Reply) -> Option<Event> {
        if self.is_closed() {
            return None;
        }
        let abandon = self.in_message().then_some(Event::AbortMessage);
        self.reply(&r);
        self.state = State::Closed;
        abandon
    }
}

/// `FROM:<path> params` or `TO:<path> params` (case-insensitive keyword, optional space after the
/// colon as some clients send it). Returns the path without brackets and the parameter text.
fn parse_path<'a>(rest: &'a str, keyword: &str) -> Option<(String, &'a str)> {
    // `get`, not indexing: a non-ASCII octet may straddle the keyword's length.
    if !rest.get(..keyword.len()).is_some_and(|k| k.eq_ignore_ascii_case(keyword)) {
        return None;
    }
    let after = rest[keyword.len()..].trim_start();
    let inner = after.strip_prefix('<')?;
    let end = inner.find('>')?;
    let path = &inner[..end];
    if path.chars().any(|c| c.is_control() || c == ' ') {
        return None;
    }
    // A source route (`@a,@b:user@c`, RFC 5321 section 4.1.2) is ignored, as the RFC allows.
    let path = path.rsplit_once(':').filter(|_| path.starts_with('@')).map_or(path, |(_, p)| p);
    Some((path.to_owned(), &inner[end + 1..]))
}
