#![no_main]
//! The SASL mechanisms of both sides on arbitrary bytes: every server mechanism (PLAIN, LOGIN,
//! SCRAM with and without channel binding, OAUTHBEARER, XOAUTH2) stepped through messages split
//! at 0xff, its requests answered as a server would, and every client mechanism answering
//! arbitrary challenges. Each must refuse cleanly or go on, never panic.
use libfuzzer_sys::fuzz_target;
use pillarbox_proto::Secret;
use pillarbox_sasl::client::ClientMech;
use pillarbox_sasl::scram::ScramKeys;
use pillarbox_sasl::server::{MECHANISMS, Mech, Step};

fuzz_target!(|data: &[u8]| {
    let messages: Vec<&[u8]> = data.split(|&b| b == 0xff).collect();
    for name in MECHANISMS {
        let Some(mut m) = Mech::new(name, Some(vec![7u8; 32])) else { continue };
        let mut step = m.step(None);
        for msg in &messages {
            step = match step {
                Step::NeedScramKeys { hash, .. } => {
                    m.scram_keys(msg.len() % 2 == 0, ScramKeys::derive(hash, b"pencil", b"salt", 1))
                }
                Step::CheckBearer { user, .. } => m.bearer_checked(user.filter(|_| msg.is_empty())),
                Step::Challenge(_) => m.step(Some(msg)),
                Step::CheckPassword { .. } | Step::Verified(_) | Step::Failed { .. } => break,
            };
        }
        let _ = m.cancel();
        let mut c = match ClientMech::new(name, "user", &Secret::new(b"pencil".to_vec()), Some(vec![7u8; 32])) {
            Ok(c) => c,
            Err(_) => continue,
        };
        for msg in &messages {
            if c.respond(msg).is_err() {
                break;
            }
        }
        let _ = c.finish();
    }
    let _ = pillarbox_sasl::saslprep(&String::from_utf8_lossy(data));
});
