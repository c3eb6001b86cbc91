//! Shared by the fuzz targets: the protocol alphabet folding.
//!
//! Random bytes rarely spell `USER ` or `RCPT TO:<`, so a fuzzer would spend its time in the
//! "unknown command" branch. Folding maps every byte below 0x20 (other than CR and LF) to one
//! whole token of the protocol, so a single mutation can produce a valid keyword and the fuzzer
//! reaches the states behind it; every other byte passes through unchanged, so arbitrary input
//! is still possible.

pub fn fold(data: &[u8], tokens: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() * 4);
    for &b in data {
        if b < 0x20 && b != b'\r' && b != b'\n' && !tokens.is_empty() {
            out.extend_from_slice(tokens[usize::from(b) % tokens.len()]);
        } else {
            out.push(b);
        }
    }
    out
}

/// Split `data` into chunks whose sizes come from the data itself, so that every split point of
/// the input is tried (the decoders must not depend on how TCP cut the stream).
pub fn chunks(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    let mut i = 0usize;
    while !rest.is_empty() {
        let n = (usize::from(rest[0]) % 17 + 1 + i % 5).min(rest.len());
        let (a, b) = rest.split_at(n);
        out.push(a);
        rest = b;
        i += 1;
    }
    out
}

pub const POP3: &[&[u8]] = &[
    b"USER ",
    b"PASS ",
    b"APOP ",
    b"STAT\r\n",
    b"LIST",
    b"RETR ",
    b"DELE ",
    b"NOOP\r\n",
    b"RSET\r\n",
    b"QUIT\r\n",
    b"TOP ",
    b"UIDL",
    b"CAPA\r\n",
    b"STLS\r\n",
    b"AUTH ",
    b"UTF8\r\n",
    b"PLAIN ",
    b"*\r\n",
    b"USER mrose\r\n",
    b"PASS secret\r\n",
    b" 1",
    b" 2 0",
    b"\r\n",
    b"AHVzZXIAcGFzcw==",
    b"=",
];

pub const LMTP: &[&[u8]] = &[
    b"LHLO x\r\n",
    b"MAIL FROM:<",
    b"RCPT TO:<",
    b"DATA\r\n",
    b"BDAT ",
    b" LAST\r\n",
    b"RSET\r\n",
    b"NOOP\r\n",
    b"QUIT\r\n",
    b"> SIZE=",
    b">\r\n",
    b"\r\n.\r\n",
    b"..",
    b"a@b",
    b"user+x@host",
    b"\r\n",
    // Non-ASCII where a keyword is expected (a sliced character once panicked here), and the
    // bare-LF terminator shapes that must stay text (SMTP smuggling).
    "MAIL FR\u{d6}\u{d6}:<".as_bytes(),
    "RCPT \u{d6}\u{d6}:<".as_bytes(),
    "\u{e9}".as_bytes(),
    b"\n.\n",
    b"\n.\r\n",
    b"\r\n.\n",
];
