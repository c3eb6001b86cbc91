#![no_main]
//! What the client reads from a server: multi-line message text through the dot-unstuffer in
//! arbitrary chunks (it must end exactly once, never emit more than it got), and CAPA lines.
use libfuzzer_sys::fuzz_target;
use pillarbox_client::conn::Capa;
use pillarbox_proto::{Unstuffed, Unstuffer};

fuzz_target!(|data: &[u8]| {
    let mut u = Unstuffer::new();
    let mut out = bytes::BytesMut::new();
    let mut fed = 0usize;
    for chunk in pillarbox_fuzz::chunks(data) {
        fed += chunk.len();
        if let Unstuffed::Done(n) = u.decode(chunk, &mut out) {
            assert!(n <= chunk.len());
            break;
        }
    }
    assert!(out.len() <= fed);
    let capa = Capa { lines: String::from_utf8_lossy(data).lines().map(str::to_owned).collect() };
    let _ = (capa.has("UIDL"), capa.sasl(), capa.login_delay());
});
