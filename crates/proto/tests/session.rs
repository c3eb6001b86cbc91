//! The server session core driven in memory: RFC 1939's example transcript, every state rule,
//! and input split into chunks of every size from 1 to 512 octets.

use bytes::BytesMut;
use pillarbox_proto::server::{
    AuthFailure, Credential, Event, Expire, ExpireCapa, Listing, ListingEntry, Login, ServerSession, SessionConfig,
};
#[path = "common/transcript.rs"]
mod transcript;
use pillarbox_proto::{CrlfCounter, UniqueId, apop};
use transcript::Step;

const TS: &str = "<1896.697170952@dbc.mtview.ca.us>";

/// An in-memory driver: one user `mrose` with password `secret` and APOP secret `tanstaaf`.
struct Harness {
    session: ServerSession,
    messages: Vec<Vec<u8>>,
    output: Vec<u8>,
    committed: Option<Vec<usize>>,
    retrieved: Vec<usize>,
    locked: bool,
    expire: Option<Expire>,
    tls_starts: usize,
}

fn config() -> SessionConfig {
    SessionConfig {
        greeting: "Pillarbox ready".into(),
        apop_timestamp: Some(TS.into()),
        tls_active: false,
        stls_available: true,
        cleartext_allowed: true,
        implementation: Some("Pillarbox".into()),
        expire: None,
        login_delay: None,
        sasl: vec!["PLAIN".into()],
    }
}

impl Harness {
    fn new(config: SessionConfig, messages: Vec<Vec<u8>>) -> Self {
        let mut h = Self {
            session: ServerSession::new(config),
            messages,
            output: Vec::new(),
            committed: None,
            retrieved: Vec::new(),
            locked: false,
            expire: None,
            tls_starts: 0,
        };
        h.collect();
        h
    }

    fn with_rfc_messages() -> Self {
        Self::new(
            config(),
            vec![
                include_bytes!("transcripts/rfc1939-1.eml").to_vec(),
                include_bytes!("transcripts/rfc1939-2.eml").to_vec(),
            ],
        )
    }

    fn collect(&mut self) {
        let out = self.session.take_output();
        self.output.extend_from_slice(&out);
    }

    fn listing(&self) -> Listing {
        let entries = self
            .messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let mut c = CrlfCounter::new();
                c.update(m);
                ListingEntry { size: c.size(), uid: UniqueId::new(format!("uid-{i}")).expect("valid") }
            })
            .collect();
        Listing { entries }
    }

    /// Feed bytes and run the session until it needs input or closes.
    fn send(&mut self, bytes: &[u8]) -> Event {
        self.session.feed(bytes);
        loop {
            let event = self.session.poll();
            match event {
                Event::NeedInput | Event::Close => {
                    self.collect();
                    return event;
                }
                Event::Flush => self.collect(),
                Event::Authenticate { user, credential } => {
                    let ok = user == "mrose"
                        && match credential {
                            Credential::Password(p) => p.expose() == b"secret",
                            Credential::Apop { timestamp, digest } => {
                                apop::verify(&timestamp, b"tanstaaf", digest.expose())
                            }
                        };
                    if !ok {
                        self.session.auth_failed(AuthFailure::Credentials);
                    } else if self.locked {
                        self.session.auth_failed(AuthFailure::InUse);
                    } else {
                        let listing = self.listing();
                        self.session.authenticated("mrose", listing, Login { expire: self.expire, login_delay: None });
                    }
                }
                Event::Retrieve { index, top } => {
                    let mut enc = self.session.begin_message(index, top);
                    let msg = self.messages[index].clone();
                    for chunk in msg.chunks(7) {
                        enc.encode(chunk, self.session.output_mut());
                    }
                    enc.finish(self.session.output_mut());
                }
                Event::StartTls => {
                    self.collect();
                    self.tls_starts += 1;
                    self.session.tls_established(vec!["PLAIN".into()]);
                }
                Event::SaslStart { initial: None, .. } => self.session.sasl_challenge(b""),
                Event::SaslCancelled => self.session.auth_failed(AuthFailure::Cancelled),
                Event::SaslStart { initial: Some(data), .. } | Event::SaslResponse(data) => {
                    let parts: Vec<&[u8]> = data.expose().split(|&b| b == 0).collect();
                    if parts.len() == 3 && parts[1] == b"mrose" && parts[2] == b"secret" {
                        let listing = self.listing();
                        self.session.authenticated(
                            "mrose",
                            listing,
                            Login { expire: self.expire, login_delay: Some(900) },
                        );
                    } else {
                        self.session.auth_failed(AuthFailure::Credentials);
                    }
                }
                Event::Commit { deleted, retrieved } => {
                    self.committed = Some(deleted);
                    self.retrieved = retrieved;
                    self.session.committed(Ok(()));
                }
            }
        }
    }

    fn cmd(&mut self, line: &str) -> String {
        self.output.clear();
        self.send(format!("{line}\r\n").as_bytes());
        String::from_utf8_lossy(&self.output).into_owned()
    }

    fn login(&mut self) {
        assert!(self.cmd("USER mrose").starts_with("+OK"));
        assert!(self.cmd("PASS secret").starts_with("+OK"));
    }
}

#[test]
fn rfc1939_example_session() {
    let mut h = Harness::with_rfc_messages();
    let steps = transcript::parse(include_str!("transcripts/rfc1939.txt")).expect("transcript parses");
    let mut lines: Vec<String> = Vec::new();
    let mut pos = 0;
    for step in steps {
        match step {
            Step::Send(line) => {
                let line = transcript::expand(&line, Some(TS));
                h.output.clear();
                h.send(format!("{line}\r\n").as_bytes());
                lines = String::from_utf8(h.output.clone())
                    .expect("utf8")
                    .split_inclusive("\r\n")
                    .map(str::to_owned)
                    .collect();
                pos = 0;
            }
            Step::Expect(want) => {
                let got = if lines.is_empty() {
                    String::from_utf8(h.output.clone()).expect("utf8")
                } else {
                    lines[pos].clone()
                };
                let got = got.split_inclusive("\r\n").next().unwrap_or("").to_owned();
                assert_eq!(got, format!("{want}\r\n"));
                pos += 1;
            }
            Step::ExpectPrefix(want) => {
                let got = if lines.is_empty() {
                    String::from_utf8(h.output.clone()).expect("utf8")
                } else {
                    lines[pos].clone()
                };
                assert!(got.starts_with(&want), "{got:?} does not start with {want:?}");
                pos += 1;
            }
        }
    }
    assert_eq!(h.committed, Some(vec![0, 1]));
}

#[test]
fn greeting_carries_apop_timestamp_only_when_apop_is_possible() {
    let h = Harness::with_rfc_messages();
    assert_eq!(String::from_utf8_lossy(&h.output), format!("+OK Pillarbox ready {TS}\r\n"));
    let h = Harness::new(SessionConfig { apop_timestamp: None, ..config() }, vec![]);
    assert_eq!(String::from_utf8_lossy(&h.output), "+OK Pillarbox ready\r\n");
    let mut h = Harness::new(SessionConfig { apop_timestamp: None, ..config() }, vec![]);
    assert!(h.cmd("APOP mrose c4c9334bac560ecc979e58001b3e22fb").starts_with("-ERR"));
}

#[test]
fn deleted_message_is_invisible_and_rset_restores_it() {
    let mut h = Harness::with_rfc_messages();
    h.login();
    assert_eq!(h.cmd("DELE 1"), "+OK message 1 deleted\r\n");
    assert_eq!(h.cmd("STAT"), "+OK 1 200\r\n");
    assert_eq!(h.cmd("LIST"), "+OK 1 messages (200 octets)\r\n2 200\r\n.\r\n");
    assert_eq!(h.cmd("UIDL"), "+OK unique-id listing follows\r\n2 uid-1\r\n.\r\n");
    for c in ["LIST 1", "UIDL 1", "RETR 1", "TOP 1 0", "DELE 1"] {
        assert!(h.cmd(c).starts_with("-ERR"), "{c}");
    }
    assert!(h.cmd("RSET").starts_with("+OK maildrop has 2 messages (320 octets)"));
    assert_eq!(h.cmd("LIST 1"), "+OK 1 120\r\n");
    assert_eq!(h.cmd("UIDL 1"), "+OK 1 uid-0\r\n");
    assert!(h.cmd("LIST 3").starts_with("-ERR"));
    assert!(h.cmd("QUIT").starts_with("+OK"));
    assert_eq!(h.committed, Some(vec![]));
}

#[test]
fn dropped_connection_commits_nothing() {
    let mut h = Harness::with_rfc_messages();
    h.login();
    h.cmd("DELE 1");
    // The peer goes away: the driver never sees a Commit event.
    assert_eq!(h.send(b""), Event::NeedInput);
    assert_eq!(h.committed, None);
    h.session.shutdown();
    h.collect();
    assert_eq!(h.session.poll(), Event::Close);
    assert_eq!(h.committed, None);
}

#[test]
fn top_sends_header_blank_line_and_exact_body_lines() {
    let mut h = Harness::new(config(), vec![b"A: 1\nB: 2\n\nl1\n.l2\nl3\n".to_vec()]);
    h.login();
    assert_eq!(h.cmd("TOP 1 0"), "+OK top of message follows\r\nA: 1\r\nB: 2\r\n\r\n.\r\n");
    assert_eq!(h.cmd("TOP 1 2"), "+OK top of message follows\r\nA: 1\r\nB: 2\r\n\r\nl1\r\n..l2\r\n.\r\n");
    assert_eq!(h.cmd("RETR 1"), "+OK 27 octets\r\nA: 1\r\nB: 2\r\n\r\nl1\r\n..l2\r\nl3\r\n.\r\n");
}

#[test]
fn commands_in_the_wrong_state_get_err_and_session_goes_on() {
    let mut h = Harness::with_rfc_messages();
    for c in ["STAT", "LIST", "RETR 1", "DELE 1", "NOOP", "RSET", "TOP 1 1", "UIDL", "PASS x"] {
        assert!(h.cmd(c).starts_with("-ERR"), "{c} before login");
    }
    h.login();
    for c in [
        "USER mrose",
        "PASS secret",
        "APOP mrose c4c9334bac560ecc979e58001b3e22fb",
        "STLS",
        "AUTH PLAIN",
        "RETR",
        "TOP 1",
    ] {
        assert!(h.cmd(c).starts_with("-ERR"), "{c} after login");
    }
    assert_eq!(h.cmd("NOOP"), "+OK\r\n");
}

#[test]
fn capa_lists_what_is_true_in_each_state() {
    let mut h = Harness::with_rfc_messages();
    let before = h.cmd("CAPA");
    assert_eq!(
        before,
        "+OK capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\nUSER\r\nSASL PLAIN\r\nSTLS\r\nUTF8 USER\r\nIMPLEMENTATION Pillarbox\r\n.\r\n"
    );
    h.login();
    let after = h.cmd("CAPA");
    assert!(after.contains("\r\nUSER\r\n"), "USER stays listed after login (RFC 2449 section 5)");
    assert!(!after.contains("STLS"), "STLS is not valid after login");
    // Without cleartext permission and without TLS, USER is not offered and is refused.
    let mut h = Harness::new(SessionConfig { cleartext_allowed: false, ..config() }, vec![]);
    assert!(!h.cmd("CAPA").contains("\r\nUSER\r\n"));
    let refusal = h.cmd("USER mrose");
    assert!(refusal.starts_with("-ERR [AUTH]") && refusal.contains("STLS"), "{refusal}");
    // After STLS the same connection may use USER.
    assert!(h.cmd("STLS").starts_with("+OK"));
    assert!(h.cmd("CAPA").contains("\r\nUSER\r\n"));
    assert!(h.cmd("USER mrose").starts_with("+OK"));
}

#[test]
fn stls_discards_buffered_plaintext() {
    let mut h = Harness::with_rfc_messages();
    h.output.clear();
    h.send(b"STLS\r\nCAPA\r\nUSER mrose\r\n");
    assert_eq!(String::from_utf8_lossy(&h.output), "+OK begin TLS negotiation\r\n");
    assert_eq!(h.tls_starts, 1);
    // Nothing of the injected commands is answered inside TLS.
    assert_eq!(h.send(b""), Event::NeedInput);
    assert_eq!(String::from_utf8_lossy(&h.output), "+OK begin TLS negotiation\r\n");
    // STLS inside TLS is refused.
    assert!(h.cmd("STLS").starts_with("-ERR"));
    assert!(h.cmd("PASS secret").starts_with("-ERR"), "USER from before the handshake was forgotten");
}

#[test]
fn failed_logins_and_in_use() {
    let mut h = Harness::with_rfc_messages();
    h.locked = true;
    h.cmd("USER mrose");
    assert!(h.cmd("PASS secret").starts_with("-ERR [IN-USE]"));
    h.locked = false;
    h.cmd("USER mrose");
    assert!(h.cmd("PASS wrong").starts_with("-ERR [AUTH]"));
    h.cmd("USER nobody");
    let last = h.cmd("PASS secret");
    assert!(last.starts_with("-ERR [AUTH]") && last.contains("closing"), "{last}");
    assert!(h.session.is_closed());
}

#[test]
fn over_long_and_garbage_lines_get_err() {
    let mut h = Harness::with_rfc_messages();
    let long = format!("USER {}", "a".repeat(300));
    assert_eq!(h.cmd(&long), "-ERR line too long\r\n");
    assert_eq!(h.cmd("\0\u{1}\u{2}"), "-ERR unknown command\r\n");
    assert_eq!(h.cmd("NOOP"), "-ERR command not valid in this state\r\n");
    h.login();
    assert_eq!(h.cmd("NOOP"), "+OK\r\n");
}

#[test]
fn endless_garbage_is_bounded() {
    let mut h = Harness::with_rfc_messages();
    let mut closed = false;
    for _ in 0..100 {
        if h.send(b"garbage\r\n") == Event::Close {
            closed = true;
            break;
        }
    }
    assert!(closed, "a stream of invalid commands is cut off");
}

/// The same client script, delivered in chunks of every size, gives byte-identical output.
#[test]
fn pipelined_script_in_every_chunking() {
    let script = b"CAPA\r\nUSER mrose\r\nPASS secret\r\nSTAT\r\nLIST\r\nUIDL\r\nTOP 2 1\r\nRETR 1\r\nDELE 1\r\nLIST 1\r\nRSET\r\nDELE 2\r\nQUIT\r\n";
    let mut reference: Option<Vec<u8>> = None;
    for size in (1..=16).chain([32, 64, 128, 256, 512]) {
        let mut h = Harness::with_rfc_messages();
        for chunk in script.chunks(size) {
            h.send(chunk);
        }
        assert_eq!(h.committed, Some(vec![1]), "chunk size {size}");
        match &reference {
            None => reference = Some(h.output.clone()),
            Some(r) => assert_eq!(&h.output, r, "chunk size {size}"),
        }
    }
}

proptest::proptest! {
    /// Any bytes at all: no panic, and every byte of output is part of a CRLF-terminated line.
    #[test]
    fn arbitrary_input_never_panics(chunks in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300), 0..8)) {
        let mut h = Harness::with_rfc_messages();
        for c in &chunks {
            if h.send(c) == Event::Close { break; }
        }
        proptest::prop_assert!(h.output.is_empty() || h.output.ends_with(b"\r\n"));
    }
}

#[test]
fn output_buffer_is_reused_not_grown_per_message() {
    // A sanity check on the streaming API: the encoder writes into the session's buffer and the
    // driver takes it away; nothing is kept between chunks.
    let mut h = Harness::new(config(), vec![vec![b'x'; 100_000]]);
    h.login();
    h.session.feed(b"RETR 1\r\n");
    let Event::Retrieve { index, top } = h.session.poll() else { panic!("expected Retrieve") };
    let mut enc = h.session.begin_message(index, top);
    let mut sent = 0;
    let mut max_buffered = 0;
    for chunk in vec![b'x'; 100_000].chunks(4096) {
        enc.encode(chunk, h.session.output_mut());
        max_buffered = max_buffered.max(h.session.output_len());
        sent += h.session.take_output().len();
    }
    let mut tail = BytesMut::new();
    enc.finish(&mut tail);
    assert!(max_buffered <= 4096 + 64);
    assert_eq!(sent + tail.len(), "+OK 100000 octets\r\n".len() + 100_000 + 5);
}

#[test]
fn expire_is_announced_and_expire_zero_deletes_retrieved_messages_at_quit() {
    let capa = ExpireCapa { default: Expire::Days(30), per_user: true };
    let mut h = Harness::new(
        SessionConfig { expire: Some(capa), ..config() },
        vec![b"a\n".to_vec(), b"b\n".to_vec(), b"c\n".to_vec()],
    );
    assert!(h.cmd("CAPA").contains("\r\nEXPIRE 30 USER\r\n"));
    h.expire = Some(Expire::Days(0));
    h.login();
    assert!(h.cmd("CAPA").contains("\r\nEXPIRE 0\r\n"), "after login: the user's value");
    h.cmd("RETR 1");
    h.cmd("TOP 2 0");
    h.cmd("DELE 3");
    h.cmd("QUIT");
    assert_eq!(h.committed, Some(vec![0, 2]), "RETR'd and DELE'd go; TOP does not count as retrieval");
    assert_eq!(h.retrieved, vec![0]);

    let mut h = Harness::new(
        SessionConfig { expire: Some(ExpireCapa { default: Expire::Never, per_user: false }), ..config() },
        vec![b"a\n".to_vec()],
    );
    assert!(h.cmd("CAPA").contains("\r\nEXPIRE NEVER\r\n"));
    h.expire = Some(Expire::Days(7));
    h.login();
    h.cmd("RETR 1");
    h.cmd("QUIT");
    assert_eq!(h.committed, Some(vec![]), "EXPIRE 7 keeps the message for now");
    assert_eq!(h.retrieved, vec![0], "and the retrieval is reported so its age can be tracked");
}

#[test]
fn sasl_plain_with_and_without_initial_response_cancel_and_bad_base64() {
    let mut h = Harness::with_rfc_messages();
    assert_eq!(h.cmd("AUTH"), "+OK SASL mechanisms follow\r\nPLAIN\r\n.\r\n");
    assert_eq!(h.cmd("AUTH CRAM-MD5"), "-ERR unsupported SASL mechanism\r\n");
    assert_eq!(h.cmd("AUTH PLAIN !!!"), "-ERR the initial response is not valid base64\r\n");
    assert_eq!(h.cmd("AUTH PLAIN"), "+ \r\n");
    assert_eq!(h.cmd("*"), "-ERR authentication cancelled\r\n");
    assert_eq!(h.cmd("AUTH PLAIN"), "+ \r\n");
    assert_eq!(h.cmd("not base64"), "-ERR the response is not valid base64; authentication aborted\r\n");
    // "\0mrose\0wrong", then "\0mrose\0secret" as an initial response.
    assert!(h.cmd("AUTH PLAIN AG1yb3NlAHdyb25n").starts_with("-ERR [AUTH]"));
    assert!(h.cmd("AUTH plain AG1yb3NlAHNlY3JldA==").starts_with("+OK maildrop has 2 messages"));
    let capa = h.cmd("CAPA");
    assert!(capa.contains("\r\nLOGIN-DELAY 900\r\n") && !capa.contains("UTF8"), "{capa}");
    assert!(h.cmd("AUTH PLAIN AG1yb3NlAHNlY3JldA==").starts_with("-ERR"));
}

#[test]
fn sasl_response_may_exceed_the_command_line_limit() {
    let mut h = Harness::with_rfc_messages();
    assert_eq!(h.cmd("AUTH PLAIN"), "+ \r\n");
    let long = format!("AG1yb3Nl{}", "A".repeat(4000));
    assert!(h.cmd(&long).starts_with("-ERR [AUTH]"), "decoded and checked, not refused as too long");
    assert_eq!(h.cmd(&format!("NOOP {}", "x".repeat(300))), "-ERR line too long\r\n", "the limit is back");
}

/// Tokens do not fit 255 octets: where a bearer mechanism is offered, `AUTH XOAUTH2 <token>` may
/// be up to 8 KiB on one line (many clients send it so); nothing else may.
#[test]
fn a_bearer_auth_line_may_carry_a_long_initial_response() {
    let mut h = Harness::new(SessionConfig { sasl: vec!["XOAUTH2".into(), "PLAIN".into()], ..config() }, vec![]);
    let token = "A".repeat(3000);
    let reply = h.cmd(&format!("AUTH XOAUTH2 {token}"));
    assert!(reply.starts_with("-ERR [AUTH]"), "decoded and checked, not refused as too long: {reply}");
    assert_eq!(h.cmd(&format!("AUTH PLAIN {token}")), "-ERR line too long\r\n");
    assert_eq!(h.cmd(&format!("NOOP {}", "x".repeat(300))), "-ERR line too long\r\n");
    assert_eq!(h.cmd(&format!("AUTH XOAUTH2 {}", "A".repeat(9000))), "-ERR line too long\r\n", "8 KiB at most");
    assert!(h.cmd("CAPA").starts_with("+OK"), "the session goes on");
    // Not offered (no bearer mechanism): the command line limit stands.
    let mut h = Harness::new(config(), vec![]);
    assert_eq!(h.cmd(&format!("AUTH XOAUTH2 {token}")), "-ERR line too long\r\n");
}

#[test]
fn cleartext_sasl_is_refused_without_tls_and_utf8_is_accepted() {
    let mut h = Harness::new(SessionConfig { cleartext_allowed: false, sasl: vec![], ..config() }, vec![]);
    let l = h.cmd("AUTH PLAIN AG1yb3NlAHNlY3JldA==");
    assert!(l.starts_with("-ERR [AUTH]") && l.contains("STLS"), "{l}");
    assert!(!h.cmd("CAPA").contains("SASL"));
    assert_eq!(h.cmd("UTF8"), "+OK UTF-8 user names and passwords are welcome\r\n");
    assert!(h.session.utf8());
    let capa = Harness::new(SessionConfig { login_delay: Some((300, true)), ..config() }, vec![]).cmd("CAPA");
    assert!(capa.contains("\r\nLOGIN-DELAY 300 USER\r\n"), "{capa}");
}

#[test]
fn pipelined_commands_wait_while_unsent_output_is_over_the_bound() {
    let mut h = Harness::with_rfc_messages();
    h.login();
    h.session.limit_output(40);
    h.session.feed(b"UIDL\r\nUIDL\r\nUIDL\r\nNOOP\r\n");
    // One UIDL answer is over 40 octets: each is followed by a Flush before the next command.
    let mut events = Vec::new();
    loop {
        let e = h.session.poll();
        let unsent = h.session.take_output().len();
        let done = e == Event::NeedInput;
        events.push((e, unsent));
        if done {
            break;
        }
    }
    let flushes = events.iter().filter(|(e, _)| *e == Event::Flush).count();
    assert_eq!(flushes, 3, "{events:?}");
    assert!(events.iter().all(|(_, unsent)| *unsent < 40 + 60), "{events:?}");
}
