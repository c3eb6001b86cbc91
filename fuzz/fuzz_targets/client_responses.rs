#![no_main]
//! What the client reads from a server and writes to it: status lines (with response codes),
//! lines and multi-line answers taken from a buffer filled in arbitrary chunks (bounded, each
//! line at most once), message text through the dot-unstuffer (it must end exactly once, never
//! emit more than it got), CAPA lines, and commands built from arbitrary arguments (never more
//! than one line).
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pillarbox_fetch::conn::Capa;
use pillarbox_proto::client::{ClientCommand, Item, MAX_LINE, MultiLine, encode, parse_status, take_line};
use pillarbox_proto::{Unstuffed, Unstuffer};

fuzz_target!(|data: &[u8]| {
    let mut u = Unstuffer::new();
    let mut out = BytesMut::new();
    let mut fed = 0usize;
    for chunk in pillarbox_fuzz::chunks(data) {
        fed += chunk.len();
        if let Unstuffed::Done(n) = u.decode(chunk, &mut out) {
            assert!(n <= chunk.len());
            break;
        }
    }
    assert!(out.len() <= fed);

    let mut buf = BytesMut::new();
    let mut ml = MultiLine::new(1000, 100_000);
    let mut taken = 0usize;
    'feed: for chunk in pillarbox_fuzz::chunks(data) {
        buf.extend_from_slice(chunk);
        loop {
            match ml.next(&mut buf) {
                Ok(Some(Item::Line(l))) => {
                    taken += 1;
                    assert!(l.len() <= MAX_LINE && !l.contains('\n'));
                }
                Ok(Some(Item::End)) | Err(_) => break 'feed,
                Ok(None) => break,
            }
        }
    }
    assert!(taken <= data.iter().filter(|&&b| b == b'\n').count());
    let mut buf = BytesMut::from(data);
    while let Ok(Some(l)) = take_line(&mut buf, MAX_LINE) {
        let line = String::from_utf8_lossy(&l);
        if let Some(s) = parse_status(&line) {
            assert!(line.starts_with(if s.ok { "+OK" } else { "-ERR" }));
        }
    }

    let text = String::from_utf8_lossy(data);
    for command in [ClientCommand::User(&text), ClientCommand::Pass(data), ClientCommand::Auth("PLAIN", Some(&text)), ClientCommand::SaslResponse(&text), ClientCommand::Apop(&text, "d")] {
        let mut out = BytesMut::new();
        if encode(&mut out, &command).is_ok() {
            let body = &out[..out.len() - 2];
            assert!(out.ends_with(b"\r\n") && !body.contains(&b'\r') && !body.contains(&b'\n'), "{command:?}");
        }
    }
    let capa = Capa { lines: text.lines().map(str::to_owned).collect() };
    let _ = (capa.has("UIDL"), capa.sasl(), capa.login_delay());
});
