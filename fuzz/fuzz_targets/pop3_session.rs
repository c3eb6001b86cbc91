#![no_main]
//! The server session state machine fed arbitrary input in arbitrary chunks, with a driver
//! that answers every event (logins succeed for mrose/secret, messages exist, QUIT commits).
//! Checks: no panic, output only ever in whole CRLF-terminated lines, and nothing is committed
//! except after QUIT.
use libfuzzer_sys::fuzz_target;
use pillarbox_proto::UniqueId;
use pillarbox_proto::server::{
    AuthFailure, Credential, Event, Listing, ListingEntry, Login, ServerSession, SessionConfig,
};

const MESSAGES: [&[u8]; 3] = [b"Subject: a\r\n\r\nbody\r\n", b"Subject: b\r\n\r\n.dot\r\n..two\r\n", b"x"];

fn listing() -> Listing {
    let entries = MESSAGES
        .iter()
        .enumerate()
        .map(|(i, m)| ListingEntry {
            size: m.len() as u64 + 2,
            uid: UniqueId::new(format!("uid-{i}")).expect("valid uid"),
        })
        .collect();
    Listing { entries }
}

fuzz_target!(|data: &[u8]| {
    let input = pillarbox_fuzz::fold(data, pillarbox_fuzz::POP3);
    let mut s = ServerSession::new(SessionConfig {
        greeting: "ready".into(),
        apop_timestamp: Some("<1.2@fuzz>".into()),
        tls_active: false,
        stls_available: true,
        cleartext_allowed: true,
        implementation: None,
        expire: None,
        login_delay: None,
        sasl: vec!["PLAIN".into()],
    });
    let mut output = Vec::new();
    let mut fed = 0usize;
    'outer: for chunk in pillarbox_fuzz::chunks(&input) {
        fed += chunk.len();
        // Across chunk boundaries: QUIT may arrive split.
        let quit_seen = input[..fed].windows(4).any(|w| w.eq_ignore_ascii_case(b"QUIT"));
        s.feed(chunk);
        loop {
            match s.poll() {
                Event::NeedInput => break,
                Event::Flush => output.extend_from_slice(&s.take_output()),
                Event::Close => break 'outer,
                Event::Authenticate { user, credential } => {
                    let ok =
                        user == "mrose" && matches!(&credential, Credential::Password(p) if p.expose() == b"secret");
                    if ok {
                        s.authenticated("mrose", listing(), Login { expire: None, login_delay: None });
                    } else {
                        s.auth_failed(AuthFailure::Credentials);
                    }
                }
                Event::SaslStart { initial: None, .. } => s.sasl_challenge(b""),
                Event::SaslCancelled => s.auth_failed(AuthFailure::Cancelled),
                Event::SaslStart { initial: Some(d), .. } | Event::SaslResponse(d) => {
                    if d.expose() == b"\0mrose\0secret" {
                        s.authenticated("mrose", listing(), Login { expire: None, login_delay: None });
                    } else {
                        s.auth_failed(AuthFailure::Credentials);
                    }
                }
                Event::Retrieve { index, top } => {
                    let mut enc = s.begin_message(index, top);
                    enc.encode(MESSAGES[index % MESSAGES.len()], s.output_mut());
                    enc.finish(s.output_mut());
                }
                Event::StartTls => {
                    output.extend_from_slice(&s.take_output());
                    s.tls_established(vec!["PLAIN".into()]);
                }
                Event::Commit { deleted, .. } => {
                    assert!(quit_seen, "committed without QUIT");
                    assert!(deleted.iter().all(|&i| i < MESSAGES.len()));
                    s.committed(Ok(()));
                }
            }
        }
        output.extend_from_slice(&s.take_output());
    }
    output.extend_from_slice(&s.take_output());
    assert!(output.is_empty() || output.ends_with(b"\r\n"), "output ends inside a line");
});
