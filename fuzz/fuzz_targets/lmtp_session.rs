#![no_main]
//! The LMTP receiver fed arbitrary input in arbitrary chunks: no panic, one reply per accepted
//! recipient after the text, and never more body octets than were sent.
use libfuzzer_sys::fuzz_target;
use pillarbox_lmtp::{Config, Event, Reply, Session};

fuzz_target!(|data: &[u8]| {
    let input = pillarbox_fuzz::fold(data, pillarbox_fuzz::LMTP);
    let mut s = Session::new(Config { hostname: "fuzz".into(), max_message_size: 4096, max_recipients: 4 });
    let mut body = 0usize;
    let mut open = 0usize;
    'outer: for chunk in pillarbox_fuzz::chunks(&input) {
        s.feed(chunk);
        loop {
            match s.poll() {
                Event::NeedInput => break,
                Event::Close => break 'outer,
                Event::Recipient { address, .. } => {
                    if address.starts_with('u') {
                        s.accept_recipient(address.clone(), address);
                    } else {
                        s.reject_recipient(Reply::new(550, (5, 1, 1), "no such user"));
                    }
                }
                Event::BeginMessage { recipients, .. } => {
                    assert!(!recipients.is_empty() && recipients.len() <= 4);
                    open = recipients.len();
                }
                Event::Body(b) => body += b.len(),
                Event::EndMessage => {
                    s.delivered((0..open).map(|_| Reply::new(250, (2, 0, 0), "ok")).collect());
                    open = 0;
                }
                Event::AbortMessage => open = 0,
            }
        }
        let _ = s.take_output();
    }
    assert!(body <= input.len());
});
