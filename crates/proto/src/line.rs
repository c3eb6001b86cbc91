//! Bounded CRLF line framing for command input (RFC 1939 section 3, RFC 2449 section 4).
//!
//! "Need more bytes" is `None`, not an error. A line longer than the limit is read to its end and
//! thrown away without being buffered, then reported once as [`LineEvent::TooLong`]; a "line" that
//! goes on past [`MAX_DISCARDED_LINE`](crate::limits::MAX_DISCARDED_LINE) octets is reported as
//! [`LineEvent::Overflow`] so the driver can close the connection.

use bytes::{Bytes, BytesMut};

use crate::limits::MAX_DISCARDED_LINE;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineEvent {
    /// One line without its terminating CRLF (a bare LF is accepted as a terminator too).
    Line(Bytes),
    /// A line longer than the limit ended; its content was discarded.
    TooLong,
    /// An over-long line went on past the discard bound; the peer should be disconnected.
    Overflow,
}

#[derive(Debug)]
pub struct LineDecoder {
    buf: BytesMut,
    max: usize,
    /// `Some(n)`: inside an over-long line, `n` octets discarded so far.
    discarding: Option<usize>,
    /// Octets of `buf` already searched for LF without finding one.
    scanned: usize,
}

impl LineDecoder {
    /// `max` is the longest accepted line, not counting the CRLF.
    pub fn new(max: usize) -> Self {
        Self { buf: BytesMut::with_capacity(max + 2), max, discarding: None, scanned: 0 }
    }

    /// Change the longest accepted line (SASL responses may exceed the command limit).
    pub fn set_max(&mut self, max: usize) {
        self.max = max;
    }

    pub fn feed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Octets received but not yet returned as lines.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Take everything buffered but not yet returned as lines (for a protocol that switches from
    /// lines to raw octets, such as LMTP DATA and BDAT).
    pub fn take_buffered(&mut self) -> BytesMut {
        self.scanned = 0;
        self.discarding = None;
        self.buf.split()
    }

    /// Throw away everything buffered (RFC 2595 section 4 / the STARTTLS injection class: input
    /// that arrived in plaintext must never be interpreted after the TLS handshake).
    pub fn clear(&mut self) {
        self.buf.clear();
        self.discarding = None;
        self.scanned = 0;
    }

    pub fn next_event(&mut self) -> Option<LineEvent> {
        if let Some(discarded) = self.discarding {
            return match memchr::memchr(b'\n', &self.buf) {
                Some(i) => {
                    let _ = self.buf.split_to(i + 1);
                    self.discarding = None;
                    self.scanned = 0;
                    Some(LineEvent::TooLong)
                }
                None => {
                    let total = discarded + self.buf.len();
                    self.buf.clear();
                    if total > MAX_DISCARDED_LINE {
                        self.discarding = None;
                        Some(LineEvent::Overflow)
                    } else {
                        self.discarding = Some(total);
                        None
                    }
                }
            };
        }
        match memchr::memchr(b'\n', &self.buf[self.scanned..]) {
            Some(i) => {
                let end = self.scanned + i;
                self.scanned = 0;
                let mut line = self.buf.split_to(end + 1);
                line.truncate(end);
                if line.last() == Some(&b'\r') {
                    line.truncate(end - 1);
                }
                if line.len() > self.max { Some(LineEvent::TooLong) } else { Some(LineEvent::Line(line.freeze())) }
            }
            None => {
                // The longest acceptable line plus its CR is still allowed to be pending.
                if self.buf.len() > self.max + 1 {
                    self.discarding = Some(self.buf.len());
                    self.buf.clear();
                    self.scanned = 0;
                    return self.next_event();
                }
                self.scanned = self.buf.len();
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(dec: &mut LineDecoder) -> Vec<LineEvent> {
        std::iter::from_fn(|| dec.next_event()).collect()
    }

    /// Feed `input` split into chunks of `size` octets, collecting every event.
    fn chunked(input: &[u8], size: usize, max: usize) -> Vec<LineEvent> {
        let mut dec = LineDecoder::new(max);
        let mut out = Vec::new();
        for chunk in input.chunks(size) {
            dec.feed(chunk);
            out.extend(drain(&mut dec));
        }
        out
    }

    fn line(s: &str) -> LineEvent {
        LineEvent::Line(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn splits_crlf_and_bare_lf_in_every_chunking() {
        let input = b"USER a\r\nPASS b c\nSTAT\r\n\r\nQUIT\r";
        for size in [1, 2, 3, 4, 8, 16, 32, 64, 128, 256, 512] {
            assert_eq!(
                chunked(input, size, 255),
                vec![line("USER a"), line("PASS b c"), line("STAT"), line(""),],
                "chunk size {size}"
            );
        }
    }

    #[test]
    fn over_long_line_is_reported_once_and_not_buffered() {
        let mut input = vec![b'A'; 10_000];
        input.extend_from_slice(b"\r\nNOOP\r\n");
        for size in [1, 7, 64, 512] {
            let mut dec = LineDecoder::new(255);
            let mut events = Vec::new();
            for chunk in input.chunks(size) {
                dec.feed(chunk);
                events.extend(drain(&mut dec));
                assert!(dec.buffered() <= 255 + 1 + size, "buffer grew to {}", dec.buffered());
            }
            assert_eq!(events, vec![LineEvent::TooLong, line("NOOP")], "chunk size {size}");
        }
    }

    #[test]
    fn line_of_exactly_the_limit_is_accepted() {
        let mut input = vec![b'x'; 255];
        input.extend_from_slice(b"\r\n");
        for size in [1, 2, 4, 255, 256, 512] {
            assert_eq!(chunked(&input, size, 255), vec![LineEvent::Line(Bytes::from(vec![b'x'; 255]))]);
        }
        let mut input = vec![b'x'; 256];
        input.extend_from_slice(b"\r\n");
        for size in [1, 2, 4, 255, 256, 512] {
            assert_eq!(chunked(&input, size, 255), vec![LineEvent::TooLong]);
        }
    }

    #[test]
    fn endless_line_overflows() {
        let input = vec![b'Z'; MAX_DISCARDED_LINE + 600];
        let events = chunked(&input, 512, 255);
        assert_eq!(events, vec![LineEvent::Overflow]);
    }

    #[test]
    fn clear_discards_pipelined_plaintext() {
        let mut dec = LineDecoder::new(255);
        dec.feed(b"STLS\r\nCAPA\r\n");
        assert_eq!(dec.next_event(), Some(line("STLS")));
        dec.clear();
        assert_eq!(dec.next_event(), None);
    }
}
