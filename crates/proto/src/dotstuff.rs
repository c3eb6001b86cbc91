//! Streaming message transfer for RETR and TOP (RFC 1939 sections 3, 7 and 11).
//!
//! [`MessageEncoder`] turns stored message bytes, fed in chunks of any size, into what goes on the
//! wire: every line ends in CRLF (a bare LF gains a CR), a line starting with `.` is stuffed with a
//! second `.`, a missing final line end is supplied before the terminating `.CRLF`, and for TOP
//! output stops after the header, the blank line and exactly the requested number of body lines.
//! It holds no message data of its own, so a 50 MB message costs no more memory than one chunk.
//!
//! [`CrlfCounter`] counts the octets of the same CRLF form (what LIST and STAT report, RFC 1939
//! section 11: sizes are of the message as sent, before stuffing, with CRLF line ends) using
//! exactly the same line-end rule, so the two can never disagree.

use std::io::{self, Read};

use bytes::{BufMut, BytesMut};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Limit {
    /// RETR: everything.
    All,
    /// TOP: still in the header; after it, this many body lines.
    Header { body_lines: u64 },
    /// TOP: in the body, this many lines still to send.
    Body { left: u64 },
}

#[derive(Debug, Clone)]
pub struct MessageEncoder {
    at_line_start: bool,
    prev_cr: bool,
    line_len: u64,
    limit: Limit,
    done: bool,
}

impl MessageEncoder {
    /// The whole message (RETR).
    pub fn retr() -> Self {
        Self::with_limit(Limit::All)
    }

    /// The header, the blank line that ends it, and `body_lines` lines of the body (TOP).
    pub fn top(body_lines: u64) -> Self {
        Self::with_limit(Limit::Header { body_lines })
    }

    fn with_limit(limit: Limit) -> Self {
        Self { at_line_start: true, prev_cr: false, line_len: 0, limit, done: false }
    }

    /// Whether the encoder wants no more input (TOP reached its last line).
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Encode one chunk of the stored message into `out`.
    pub fn encode(&mut self, mut input: &[u8], out: &mut BytesMut) {
        while !input.is_empty() && !self.done {
            if self.at_line_start && input[0] == b'.' {
                out.put_u8(b'.');
            }
            match memchr::memchr(b'\n', input) {
                Some(i) => {
                    let content = &input[..i];
                    out.put_slice(content);
                    let cr_before = if i > 0 { content[i - 1] == b'\r' } else { self.prev_cr };
                    if cr_before {
                        out.put_u8(b'\n');
                    } else {
                        out.put_slice(b"\r\n");
                    }
                    let content_len = self.line_len + i as u64 - u64::from(cr_before);
                    self.end_line(content_len == 0);
                    input = &input[i + 1..];
                }
                None => {
                    out.put_slice(input);
                    self.line_len += input.len() as u64;
                    self.prev_cr = input.last() == Some(&b'\r');
                    self.at_line_start = false;
                    input = &[];
                }
            }
        }
    }

    fn end_line(&mut self, empty: bool) {
        self.at_line_start = true;
        self.prev_cr = false;
        self.line_len = 0;
        match self.limit {
            Limit::All => {}
            Limit::Header { body_lines } => {
                if empty {
                    self.limit = Limit::Body { left: body_lines };
                    self.done = body_lines == 0;
                }
            }
            Limit::Body { left } => {
                let left = left.saturating_sub(1);
                self.limit = Limit::Body { left };
                self.done = left == 0;
            }
        }
    }

    /// Close the response: a CRLF if the message did not end with one, then `.CRLF`.
    pub fn finish(self, out: &mut BytesMut) {
        if !self.at_line_start {
            out.put_slice(b"\r\n");
        }
        out.put_slice(b".\r\n");
    }
}

/// Undoes dot-stuffing of a multi-line transfer (RFC 1939 section 3, RFC 5321 section 4.5.2),
/// chunk by chunk, and finds the terminating `.CRLF` line. Line ends pass through unchanged.
///
/// Two readings of "a line": [`Unstuffer::new`] (for a POP3 client reading RETR) also ends a line
/// at a bare LF, so a lone `.` line ended by a bare LF terminates too (some servers use bare LF
/// throughout); [`Unstuffer::strict`] (for LMTP DATA) knows only CRLF, so the text ends only at
/// `CRLF . CRLF` and `LF . LF`, `LF . CRLF` or `. LF` are text. A receiver that ended DATA at those
/// would let a sender smuggle a second message past the MTA in front of it (the SMTP-smuggling
/// class of attacks), since the MTA reads them as text.
#[derive(Debug, Clone)]
pub struct Unstuffer {
    state: Unstuff,
    /// Only CRLF ends a line.
    strict: bool,
    /// The last octet of text seen was CR (a line end may straddle two chunks). In the
    /// [`Unstuffer::to_lf`] form that CR is held back until the next octet shows whether it ends
    /// a line.
    prev_cr: bool,
    /// Write line ends as LF: a CR directly before an LF is dropped (a client's local store).
    lf: bool,
    /// The CRs dropped so far.
    dropped: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unstuff {
    /// At the start of a line.
    LineStart,
    /// A line started with `.`.
    Dot,
    /// A line started with `.CR`.
    DotCr,
    /// Inside a line.
    Middle,
    /// The terminator was seen.
    Done,
}

/// What [`Unstuffer::decode`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unstuffed {
    /// All input was consumed; the text goes on.
    More,
    /// The terminator ended after this many octets of the input; the rest is not part of the text.
    Done(usize),
}

impl Default for Unstuffer {
    fn default() -> Self {
        Self::new()
    }
}

impl Unstuffer {
    /// Lines end at CRLF or a bare LF.
    pub fn new() -> Self {
        Self { state: Unstuff::LineStart, strict: false, prev_cr: false, lf: false, dropped: 0 }
    }

    /// The text with LF line ends, in the same pass: each CR directly followed by LF is dropped,
    /// any other CR is text. For a client storing messages with local line ends;
    /// [`Unstuffer::crs_dropped`] gives back the size of the text as sent.
    pub fn to_lf(self) -> Self {
        Self { lf: true, ..self }
    }

    /// How many CRs [`Unstuffer::to_lf`] has dropped so far.
    pub fn crs_dropped(&self) -> u64 {
        self.dropped
    }

    /// Lines end only at CRLF (RFC 5321 section 2.3.8): for text an MTA hands on.
    pub fn strict() -> Self {
        Self { strict: true, ..Self::new() }
    }

    /// Append the unstuffed text of `input` to `out`.
    pub fn decode(&mut self, input: &[u8], out: &mut BytesMut) -> Unstuffed {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                Unstuff::Done => return Unstuffed::Done(i),
                Unstuff::LineStart => {
                    if input[i] == b'.' {
                        self.state = Unstuff::Dot;
                        i += 1;
                    } else {
                        self.state = Unstuff::Middle;
                    }
                }
                Unstuff::Dot => match input[i] {
                    b'\r' => {
                        self.state = Unstuff::DotCr;
                        i += 1;
                    }
                    // `. LF` is no terminator where only CRLF ends a line: the dot is text.
                    b'\n' if self.strict => {
                        out.put_u8(b'.');
                        self.prev_cr = false;
                        self.state = Unstuff::Middle;
                    }
                    b'\n' => {
                        self.state = Unstuff::Done;
                        return Unstuffed::Done(i + 1);
                    }
                    // The stuffed dot is dropped; the rest of the line is text.
                    _ => self.state = Unstuff::Middle,
                },
                Unstuff::DotCr => {
                    if input[i] == b'\n' {
                        self.state = Unstuff::Done;
                        return Unstuffed::Done(i + 1);
                    }
                    // ".CR" followed by something else: the CR is text.
                    out.put_u8(b'\r');
                    self.prev_cr = !self.lf;
                    self.state = Unstuff::Middle;
                }
                Unstuff::Middle => match memchr::memchr(b'\n', &input[i..]) {
                    // A CR held back at the end of the previous chunk is text unless an LF follows.
                    _ if self.lf && self.prev_cr && input[i] != b'\n' => {
                        out.put_u8(b'\r');
                        self.prev_cr = false;
                    }
                    Some(j) => {
                        let crlf = if j > 0 { input[i + j - 1] == b'\r' } else { self.prev_cr };
                        if self.lf && crlf {
                            // The CR is dropped: the one before the LF, or the one held back.
                            out.put_slice(&input[i..(i + j).saturating_sub(1).max(i)]);
                            out.put_u8(b'\n');
                            self.dropped += 1;
                        } else {
                            out.put_slice(&input[i..=i + j]);
                        }
                        i += j + 1;
                        self.prev_cr = false;
                        // A bare LF does not start a line where only CRLF ends one.
                        if crlf || !self.strict {
                            self.state = Unstuff::LineStart;
                        }
                    }
                    None => {
                        let ends_cr = input.last() == Some(&b'\r');
                        out.put_slice(&input[i..input.len() - usize::from(self.lf && ends_cr)]);
                        self.prev_cr = ends_cr;
                        i = input.len();
                    }
                },
            }
        }
        if self.state == Unstuff::Done { Unstuffed::Done(i) } else { Unstuffed::More }
    }

    /// Whether the terminator has been seen.
    pub fn is_done(&self) -> bool {
        self.state == Unstuff::Done
    }

    /// Whether the text so far ends at a line boundary.
    pub fn at_line_start(&self) -> bool {
        self.state == Unstuff::LineStart
    }
}

/// Counts the octets of a message's CRLF form, chunk by chunk.
#[derive(Debug, Clone, Default)]
pub struct CrlfCounter {
    converted: u64,
    prev_cr: bool,
    /// The last octet seen was LF (or nothing was seen).
    at_line_start: bool,
    any: bool,
}

impl CrlfCounter {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, chunk: &[u8]) {
        self.converted += chunk.len() as u64;
        for i in memchr::memchr_iter(b'\n', chunk) {
            let cr_before = if i > 0 { chunk[i - 1] == b'\r' } else { self.prev_cr };
            if !cr_before {
                self.converted += 1;
            }
        }
        if let Some(&last) = chunk.last() {
            self.prev_cr = last == b'\r';
            self.at_line_start = last == b'\n';
            self.any = true;
        }
    }

    /// The size of the message as RETR sends it (before stuffing): every line end a CRLF, and
    /// the CRLF that [`MessageEncoder::finish`] supplies when the message does not end with a
    /// line end. What LIST and STAT report.
    pub fn size(&self) -> u64 {
        self.converted + self.missing_line_end()
    }

    /// The CRLF size of the octets alone, without a supplied final line end: what a Maildir
    /// name's `W=` records (as Dovecot's do).
    pub fn converted(&self) -> u64 {
        self.converted
    }

    /// What to append so that the message ends with a line end while RETR still sends the same
    /// octets: nothing, LF, or CRLF after a final CR (an LF would join it into one line end).
    pub fn line_end_to_append(&self) -> &'static [u8] {
        match (self.missing_line_end(), self.prev_cr) {
            (0, _) => b"",
            (_, true) => b"\r\n",
            (_, false) => b"\n",
        }
    }

    /// 2 when the message is not empty and does not end with a line end, else 0.
    pub fn missing_line_end(&self) -> u64 {
        if self.any && !self.at_line_start { 2 } else { 0 }
    }
}

/// The CRLF size of everything `reader` yields.
pub fn crlf_size(mut reader: impl Read) -> io::Result<u64> {
    let mut counter = CrlfCounter::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return Ok(counter.size()),
            Ok(n) => counter.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encode_chunked(enc: MessageEncoder, input: &[u8], size: usize) -> Vec<u8> {
        let mut enc = enc;
        let mut out = BytesMut::new();
        for chunk in input.chunks(size.max(1)) {
            enc.encode(chunk, &mut out);
        }
        enc.finish(&mut out);
        out.to_vec()
    }

    /// Reference: normalise to CRLF the slow way.
    fn to_crlf(input: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, &b) in input.iter().enumerate() {
            if b == b'\n' && (i == 0 || input[i - 1] != b'\r') {
                out.push(b'\r');
            }
            out.push(b);
        }
        out
    }

    /// Reference: undo dot-stuffing and strip the terminator, as a client would.
    fn unstuff(wire: &[u8]) -> Vec<u8> {
        assert!(wire.ends_with(b".\r\n"), "no terminator");
        let body = &wire[..wire.len() - 3];
        let mut out = Vec::new();
        for line in body.split_inclusive(|&b| b == b'\n') {
            out.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
        }
        out
    }

    fn unstuff_chunked(wire: &[u8], size: usize) -> (Vec<u8>, Option<usize>) {
        unstuff_with(Unstuffer::new(), wire, size)
    }

    fn unstuff_with(mut u: Unstuffer, wire: &[u8], size: usize) -> (Vec<u8>, Option<usize>) {
        let mut out = BytesMut::new();
        let mut offset = 0;
        for chunk in wire.chunks(size.max(1)) {
            if let Unstuffed::Done(n) = u.decode(chunk, &mut out) {
                return (out.to_vec(), Some(offset + n));
            }
            offset += chunk.len();
        }
        (out.to_vec(), None)
    }

    /// What both readings of a line agree on: CRLF text, stuffed dots, where the text ends.
    const CRLF_ANSWERS: &[(&[u8], &[u8], Option<usize>)] = &[
        (b".\r\n", b"", Some(3)),
        (b"a\r\n.\r\nNEXT", b"a\r\n", Some(6)),
        (b"..x\r\n...\r\n.\r\n", b".x\r\n..\r\n", Some(13)),
        (b".\rx\r\n.\r\n", b"\rx\r\n", Some(8)),
        (b"x.\r\n", b"x.\r\n", None),
        (b".x", b"x", None),
    ];

    #[test]
    fn unstuffer_known_answers() {
        check_unstuffer(Unstuffer::new, CRLF_ANSWERS);
        check_unstuffer(Unstuffer::new, &[(b"a\n.\n", b"a\n", Some(4))]);
    }

    const SIZES: [usize; 10] = [1, 2, 3, 4, 8, 16, 64, 128, 512, 4096];

    /// Each (wire, text, end of the terminator) of `table`, in every chunk size.
    fn check_unstuffer(make: fn() -> Unstuffer, table: &[(&[u8], &[u8], Option<usize>)]) {
        for (wire, text, end) in table {
            for size in SIZES {
                assert_eq!(
                    unstuff_with(make(), wire, size),
                    (text.to_vec(), *end),
                    "{:?} chunk {size}",
                    String::from_utf8_lossy(wire)
                );
            }
        }
    }

    /// LMTP DATA: only CRLF . CRLF ends the text; the bare-LF shapes an MTA reads as text stay
    /// text (SMTP smuggling), in every chunking, and stuffed dots are still undone.
    #[test]
    fn strict_unstuffer_ends_only_at_crlf_dot_crlf() {
        check_unstuffer(Unstuffer::strict, CRLF_ANSWERS);
        let table: &[(&[u8], &[u8], Option<usize>)] = &[
            (b"a\n.\nMAIL FROM:<x>\r\n", b"a\n.\nMAIL FROM:<x>\r\n", None),
            (b"a\n.\r\nMAIL", b"a\n.\r\nMAIL", None),
            (b".\nx\r\n", b".\nx\r\n", None),
            (b"a\r\n.\nb\r\n.\r\n", b"a\r\n.\nb\r\n", Some(11)),
            (b"a\r\n..\n.\r\n", b"a\r\n.\n.\r\n", None),
            (b"a\r\r\n.\r\n", b"a\r\r\n", Some(7)),
        ];
        check_unstuffer(Unstuffer::strict, table);
    }

    #[test]
    fn known_answers_retr() {
        let table: &[(&[u8], &[u8])] = &[
            (b"", b".\r\n"),
            (b"a\nb\n", b"a\r\nb\r\n.\r\n"),
            (b"a\r\nb\r\n", b"a\r\nb\r\n.\r\n"),
            (b"no final newline", b"no final newline\r\n.\r\n"),
            (b".\n..\n.x\nx.\n", b"..\r\n...\r\n..x\r\nx.\r\n.\r\n"),
            (b"a\r\r\nb", b"a\r\r\nb\r\n.\r\n"),
            (b"lone\rcr\n", b"lone\rcr\r\n.\r\n"),
        ];
        for (input, expected) in table {
            for size in SIZES {
                assert_eq!(
                    encode_chunked(MessageEncoder::retr(), input, size),
                    expected.to_vec(),
                    "input {:?} chunk {size}",
                    String::from_utf8_lossy(input)
                );
            }
        }
    }

    #[test]
    fn top_counts_from_the_body_not_the_start() {
        let msg = b"From: a\nSubject: b\n\nline1\n.line2\nline3\n";
        let cases: &[(u64, &[u8])] = &[
            (0, b"From: a\r\nSubject: b\r\n\r\n.\r\n"),
            (1, b"From: a\r\nSubject: b\r\n\r\nline1\r\n.\r\n"),
            (2, b"From: a\r\nSubject: b\r\n\r\nline1\r\n..line2\r\n.\r\n"),
            (3, b"From: a\r\nSubject: b\r\n\r\nline1\r\n..line2\r\nline3\r\n.\r\n"),
            (99, b"From: a\r\nSubject: b\r\n\r\nline1\r\n..line2\r\nline3\r\n.\r\n"),
        ];
        for (n, expected) in cases {
            for size in SIZES {
                assert_eq!(
                    encode_chunked(MessageEncoder::top(*n), msg, size),
                    expected.to_vec(),
                    "TOP {n} chunk {size}"
                );
            }
        }
        // CRLF storage, and a header without a body at all.
        assert_eq!(
            encode_chunked(MessageEncoder::top(1), b"A: b\r\n\r\nx\r\ny\r\n", 3),
            b"A: b\r\n\r\nx\r\n.\r\n".to_vec()
        );
        assert_eq!(encode_chunked(MessageEncoder::top(0), b"A: b", 3), b"A: b\r\n.\r\n".to_vec());
    }

    /// Reference: drop each CR directly followed by LF.
    fn crlf_to_lf(text: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, &b) in text.iter().enumerate() {
            if !(b == b'\r' && text.get(i + 1) == Some(&b'\n')) {
                out.push(b);
            }
        }
        out
    }

    #[test]
    fn lf_unstuffer_known_answers() {
        let lf = || Unstuffer::new().to_lf();
        check_unstuffer(
            lf,
            &[
                (b".\r\n", b"", Some(3)),
                (b"a\r\n.\r\nNEXT", b"a\n", Some(6)),
                (b"..x\r\n...\r\n.\r\n", b".x\n..\n", Some(13)),
                (b".\rx\r\n.\r\n", b"\rx\n", Some(8)),
                (b"a\rb\r\r\n\r.\r\n", b"a\rb\r\n\r.\n", None),
                (b"a\n.\n", b"a\n", Some(4)),
                (b"x\r", b"x", None),
            ],
        );
    }

    proptest! {
        /// Unstuffing to LF in one pass gives what unstuffing and then converting gives, in
        /// every chunking of any wire text (bare CRs, CRs at chunk ends, stuffed dots), ends at
        /// the same place, and counts the CRs it dropped.
        #[test]
        fn lf_unstuffer_matches_unstuffing_then_converting(
            wire in proptest::collection::vec(prop_oneof![Just(b'.'), Just(b'\r'), Just(b'\n'), Just(b'a')], 0..400),
            size in 1usize..40,
        ) {
            let (crlf, end) = unstuff_chunked(&wire, size);
            let mut u = Unstuffer::new().to_lf();
            let mut out = BytesMut::new();
            let mut lf_end = None;
            let mut offset = 0;
            for chunk in wire.chunks(size) {
                if let Unstuffed::Done(n) = u.decode(chunk, &mut out) {
                    lf_end = Some(offset + n);
                    break;
                }
                offset += chunk.len();
            }
            prop_assert_eq!(lf_end, end);
            let expected = crlf_to_lf(&crlf);
            // A CR held back at the very end of unfinished text is not out yet.
            let held = usize::from(end.is_none() && crlf.ends_with(b"\r"));
            prop_assert_eq!(&out[..], &expected[..expected.len() - held]);
            prop_assert_eq!(out.len() as u64 + u.crs_dropped(), (crlf.len() - held) as u64);
        }

        #[test]
        fn retr_roundtrips_and_size_matches(
            msg in proptest::collection::vec(prop_oneof![Just(b'.'), Just(b'\r'), Just(b'\n'), Just(b'a'), any::<u8>()], 0..600),
            size in 1usize..70,
        ) {
            let wire = encode_chunked(MessageEncoder::retr(), &msg, size);
            let crlf = to_crlf(&msg);
            let mut counter = CrlfCounter::new();
            for chunk in msg.chunks(size) { counter.update(chunk); }
            prop_assert_eq!(counter.converted(), crlf.len() as u64);
            // The wire form contains no bare LF.
            for (i, &b) in wire.iter().enumerate() {
                if b == b'\n' { prop_assert!(i > 0 && wire[i - 1] == b'\r'); }
            }
            let mut expected = crlf.clone();
            if !expected.is_empty() && !expected.ends_with(b"\n") { expected.extend_from_slice(b"\r\n"); }
            prop_assert_eq!(unstuff(&wire), expected.clone());
            // LIST and STAT report exactly the octets the client ends up with.
            prop_assert_eq!(counter.size(), expected.len() as u64);
            // Completing the last line changes nothing a client sees, and needs no more.
            let mut completed = msg.clone();
            completed.extend_from_slice(counter.line_end_to_append());
            prop_assert_eq!(encode_chunked(MessageEncoder::retr(), &completed, size), wire.clone());
            let mut again = CrlfCounter::new();
            again.update(&completed);
            prop_assert_eq!((again.missing_line_end(), again.size()), (0, counter.size()));
            // The streaming unstuffer agrees, and finds the end exactly at the terminator.
            prop_assert_eq!(unstuff_chunked(&wire, size), (expected, Some(wire.len())));
        }
    }
}
