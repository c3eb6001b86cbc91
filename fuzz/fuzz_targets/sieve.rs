#![no_main]
//! Sieve scripts: any text either compiles or names a line, and a script that compiles runs over
//! any message to an outcome or an error, never a panic. The input is the script, a NUL, then
//! the message; bytes 0x01-0x1F in the script stand for the language's own words, so that the
//! fuzzer writes scripts that get past the parser.
use libfuzzer_sys::fuzz_target;

const WORDS: [&str; 31] = [
    "require [\"fileinto\", \"variables\", \"body\", \"regex\", \"relational\", \"date\", \"imap4flags\", \
     \"envelope\", \"subaddress\", \"copy\", \"encoded-character\", \"comparator-i;ascii-numeric\"];\n",
    "if ", "elsif ", "else ", "{ ", "} ", "; ", "fileinto ", "keep", "discard", "stop", "set ", "header ",
    "address ", "envelope ", "body ", "date ", "currentdate ", "string ", "hasflag ", "addflag ", "allof(",
    "anyof(", "not ", ":matches ", ":regex ", ":contains ", ":count \"ge\" ", ":value \"lt\" ", "\"${1}${a}*\" ",
    "\"subject\" ",
];

fuzz_target!(|data: &[u8]| {
    let (script, message) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &b"Subject: a\r\nFrom: b@c.example\r\n\r\nbody\r\n"[..]),
    };
    let mut text = String::new();
    for chunk in String::from_utf8_lossy(script).chars() {
        match chunk as u32 {
            n @ 1..=31 => text.push_str(WORDS[n as usize - 1]),
            _ => text.push(chunk),
        }
    }
    match pillarbox_sieve::Script::compile(&text) {
        Ok(s) => {
            let env = pillarbox_sieve::Environment::of_message(message);
            if let Ok(out) = s.run(message, &env) {
                assert!(out.deliveries.len() <= 64);
                assert!(!out.deliveries.is_empty() || out.discarded, "no delivery without a discard");
            }
        }
        Err(e) => assert!(e.line >= 1 && e.line <= text.lines().count().max(1) + 1, "{e}"),
    }
});
