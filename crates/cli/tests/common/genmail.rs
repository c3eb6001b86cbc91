//! Realistic generated mail for tests of the local store: plain text in quoted-printable UTF-8,
//! multipart/alternative with an HTML part, HTML only, and multipart/mixed with base64
//! attachments (some with UTF-8 names, RFC 2231); senders and subjects in RFC 2047 encoded words
//! (B and Q, long subjects folded over several words). Deterministic for a seed, and every
//! message comes with what a reader should see, so tests can check results against it.

use std::path::Path;

use base64::Engine as _;

/// What was generated, as a reader should see it.
#[derive(Debug, Clone)]
pub struct Generated {
    /// The file name in the Maildir (in `cur/` when it has flags).
    pub file: String,
    pub from_name: String,
    pub from_addr: String,
    pub subject: String,
    /// Seconds since the epoch (the Date header).
    pub date: u64,
    /// A word found only in this message's text.
    pub word: String,
    /// A sentence of the text part (or of the HTML, as text).
    pub sentence: String,
    pub html_only: bool,
    /// Name, MIME type, decoded size.
    pub attachments: Vec<(String, String, usize)>,
    pub bytes: Vec<u8>,
}

const NAMES: &[(&str, &str)] = &[
    ("Jürgen Müller", "juergen@example.de"),
    ("Zoë Ångström", "zoe@example.se"),
    ("李雷", "lilei@example.cn"),
    ("Ann Smith", "ann@example.org"),
    ("Ólafur Þórsson", "olafur@example.is"),
    ("Renée O'Connor", "renee@example.ie"),
];
const WORDS: &[&str] = &[
    "budget",
    "harbour",
    "Grüße",
    "café",
    "meeting",
    "résumé",
    "invoice",
    "Überweisung",
    "lighthouse",
    "naïve",
    "quarterly",
    "report",
    "holiday",
    "señor",
    "garden",
    "Straße",
    "concert",
    "ticket",
    "draft",
    "review",
];
const ATTACHMENTS: &[(&str, &str)] = &[
    ("report.pdf", "application/pdf"),
    ("photo.jpg", "image/jpeg"),
    ("Übersicht März.xlsx", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"),
    ("notes.txt", "text/plain"),
];

/// A small deterministic generator (SplitMix64).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// RFC 2047 encoded words for a header value, B or Q, each word at most 75 characters; a long
/// value becomes several words on folded lines.
pub fn encode_words(text: &str, q: bool) -> String {
    if text.is_ascii() {
        return text.to_owned();
    }
    let mut words = Vec::new();
    let mut chunk = String::new();
    for c in text.chars() {
        if chunk.len() + c.len_utf8() > 30 {
            words.push(std::mem::take(&mut chunk));
        }
        chunk.push(c);
    }
    words.push(chunk);
    words
        .iter()
        .map(|w| {
            if q {
                let mut out = String::from("=?UTF-8?Q?");
                for b in w.bytes() {
                    match b {
                        b' ' => out.push('_'),
                        b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' => out.push(b as char),
                        _ => out.push_str(&format!("={b:02X}")),
                    }
                }
                out + "?="
            } else {
                format!("=?UTF-8?B?{}?=", base64::engine::general_purpose::STANDARD.encode(w))
            }
        })
        .collect::<Vec<_>>()
        .join("\r\n ")
}

/// Quoted-printable (RFC 2045), lines at most 76 characters.
fn quoted_printable(text: &str) -> String {
    let mut out = String::new();
    for line in text.split('\n') {
        let mut len = 0;
        for b in line.bytes() {
            let piece = match b {
                b'=' => "=3D".to_owned(),
                33..=126 | b' ' => (b as char).to_string(),
                _ => format!("={b:02X}"),
            };
            if len + piece.len() > 75 {
                out.push_str("=\r\n");
                len = 0;
            }
            len += piece.len();
            out.push_str(&piece);
        }
        out.push_str("\r\n");
    }
    out
}

fn base64_lines(bytes: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
    b64.as_bytes().chunks(76).map(|c| format!("{}\r\n", String::from_utf8_lossy(c))).collect()
}

/// RFC 2231 `filename*=UTF-8''...` for non-ASCII names.
fn filename_param(name: &str) -> String {
    if name.is_ascii() {
        return format!("filename=\"{name}\"");
    }
    let enc: String = name
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"._-".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") }
        })
        .collect();
    format!("filename*=UTF-8''{enc}")
}

/// Message `i` of the generator seeded with `seed`.
pub fn message(rng: &mut Rng, i: usize, base_time: u64) -> Generated {
    let (from_name, from_addr) = NAMES[rng.below(NAMES.len())];
    let mut subject_words: Vec<&str> = (0..2 + rng.below(4)).map(|_| WORDS[rng.below(WORDS.len())]).collect();
    if i.is_multiple_of(7) {
        // Long subjects need several encoded words.
        subject_words.extend(WORDS.iter().take(8));
    }
    let subject = format!("{} #{i}", subject_words.join(" "));
    let word = format!("kestrel{i:05}x");
    let sentence = format!(
        "Dear reader, the {} is ready ({word}) — with {} and {}.",
        WORDS[rng.below(WORDS.len())],
        WORDS[rng.below(WORDS.len())],
        WORDS[rng.below(WORDS.len())]
    );
    let date = base_time + i as u64 * 3600 + rng.below(3000) as u64;
    let boundary = format!("=_pbx_{:016x}", rng.next());
    let mut head = format!(
        "Return-Path: <{from_addr}>\r\nMessage-ID: <{i}.{:x}@gen.example>\r\nDate: {}\r\nFrom: {} <{from_addr}>\r\n\
         To: Me <me@example.org>\r\nSubject: {}\r\nMIME-Version: 1.0\r\n",
        rng.next(),
        pillarbox_os::date::rfc5322(date),
        encode_words(from_name, i.is_multiple_of(2)),
        encode_words(&subject, i.is_multiple_of(3)),
    );
    let text_part = format!(
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n{}",
        quoted_printable(&format!("{sentence}\nKind regards,\n{from_name}\n"))
    );
    let html = format!(
        "<html><head><style>p {{ color: #333 }}</style></head><body><p>{}</p><p>Kind regards,<br>{from_name}</p></body></html>",
        sentence.replace('&', "&amp;")
    );
    let html_part = format!(
        "Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n{}",
        quoted_printable(&html)
    );
    let mut attachments = Vec::new();
    let html_only = i % 4 == 2;
    let body = match i % 4 {
        0 => {
            head.push_str("Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n");
            quoted_printable(&format!("{sentence}\nKind regards,\n{from_name}\n"))
        }
        1 => {
            head.push_str(&format!("Content-Type: multipart/alternative; boundary=\"{boundary}\"\r\n"));
            format!(
                "This is a multi-part message in MIME format.\r\n--{boundary}\r\n{text_part}--{boundary}\r\n{html_part}--{boundary}--\r\n"
            )
        }
        2 => {
            head.push_str("Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n");
            quoted_printable(&html)
        }
        _ => {
            head.push_str(&format!("Content-Type: multipart/mixed; boundary=\"{boundary}\"\r\n"));
            let mut body = format!("--{boundary}\r\n{text_part}");
            for _ in 0..1 + rng.below(2) {
                let (name, mime) = ATTACHMENTS[rng.below(ATTACHMENTS.len())];
                let size = 200 + rng.below(20_000);
                let content = rng.bytes(size);
                body.push_str(&format!(
                    "--{boundary}\r\nContent-Type: {mime}; name=\"{}\"\r\nContent-Transfer-Encoding: base64\r\n\
                     Content-Disposition: attachment; {}\r\n\r\n{}",
                    encode_words(name, false),
                    filename_param(name),
                    base64_lines(&content)
                ));
                attachments.push((name.to_owned(), mime.to_owned(), size));
            }
            body.push_str(&format!("--{boundary}--\r\n"));
            body
        }
    };
    let bytes = format!("{head}\r\n{body}").into_bytes();
    let flags = if i.is_multiple_of(3) { ":2,S" } else { "" };
    let file = format!("{date}.M{i}P4242.genmail,S={}{flags}", bytes.len());
    Generated {
        file,
        from_name: from_name.to_owned(),
        from_addr: from_addr.to_owned(),
        subject,
        date,
        word,
        sentence,
        html_only,
        attachments,
        bytes,
    }
}

/// Write `count` messages (numbered from `first`) into the Maildir `dir` (created if needed):
/// flagged ones in `cur/`, the others in `new/`.
pub fn fill(dir: &Path, seed: u64, first: usize, count: usize) -> Vec<Generated> {
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(dir.join(sub)).expect("Maildir");
    }
    let mut rng = Rng::new(seed.wrapping_add(first as u64));
    (first..first + count)
        .map(|i| {
            let m = message(&mut rng, i, 1_790_000_000);
            let sub = if m.file.contains(':') { "cur" } else { "new" };
            std::fs::write(dir.join(sub).join(&m.file), &m.bytes).expect("write message");
            m
        })
        .collect()
}
