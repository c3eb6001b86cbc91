#![no_main]
//! The SASL parsers: SCRAM client-first and client-final messages (with and without channel
//! binding) from arbitrary bytes must be refused cleanly or parsed, never panic.
use libfuzzer_sys::fuzz_target;
use pillarbox_auth::ScramHash;
use pillarbox_auth::scram::{ScramKeys, ScramServer};

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == 0xff).unwrap_or(data.len());
    let (first, last) = data.split_at(split);
    for (hash, plus) in [(ScramHash::Sha256, false), (ScramHash::Sha256, true), (ScramHash::Sha1, false)] {
        let cb = plus.then(|| vec![7u8; 32]);
        let mut server = ScramServer::new(hash, plus, cb);
        if server.client_first(first).is_ok() {
            let keys = ScramKeys::derive(hash, b"pencil", b"salt", 1);
            let _ = server.server_first(keys, &[1u8; 18]);
            let _ = server.client_final(last.get(1..).unwrap_or_default());
        }
    }
    let _ = pillarbox_auth::saslprep(&String::from_utf8_lossy(data));
});
