//! The LMTP receiver driven in memory: RFC 2033 transactions, pipelining in every chunking,
//! BDAT, limits and bad input.

use pillarbox_lmtp::{Config, Event, Reply, Session};

#[derive(Default)]
struct Outcome {
    output: String,
    /// One entry per completed message: (recipients' users, text).
    messages: Vec<(Vec<String>, Vec<u8>)>,
    aborted: usize,
    closed: bool,
}

fn config(max: u64) -> Config {
    Config { hostname: "mx.test".into(), max_message_size: max, max_recipients: 3 }
}

/// Feed `input` in chunks of `size`, answering events like a driver with users alice and bob.
fn run(input: &[u8], size: usize, max: u64) -> Outcome {
    let mut s = Session::new(config(max));
    let mut o = Outcome::default();
    let mut current: Option<(Vec<String>, Vec<u8>)> = None;
    let collect = |s: &mut Session, o: &mut Outcome| o.output.push_str(&String::from_utf8_lossy(&s.take_output()));
    collect(&mut s, &mut o);
    let mut chunks = input.chunks(size.max(1));
    loop {
        match s.poll() {
            Event::NeedInput => {
                collect(&mut s, &mut o);
                match chunks.next() {
                    Some(c) => s.feed(c),
                    None => break,
                }
            }
            Event::Recipient { address, .. } => {
                let local = address.split('@').next().unwrap_or("").to_ascii_lowercase();
                let local = local.split('+').next().unwrap_or("").to_owned();
                if local == "alice" || local == "bob" {
                    s.accept_recipient(address, local);
                } else {
                    s.reject_recipient(Reply::new(550, (5, 1, 1), "no such user"));
                }
            }
            Event::BeginMessage { recipients, .. } => {
                assert!(current.is_none(), "nested message");
                current = Some((recipients.into_iter().map(|r| r.user).collect(), Vec::new()));
            }
            Event::Body(b) => current.as_mut().expect("body inside a message").1.extend_from_slice(&b),
            Event::AbortMessage => {
                current = None;
                o.aborted += 1;
            }
            Event::EndMessage => {
                let (users, text) = current.take().expect("end inside a message");
                let replies = users.iter().map(|u| Reply::new(250, (2, 0, 0), format!("delivered to {u}"))).collect();
                o.messages.push((users, text));
                s.delivered(replies);
            }
            Event::Close => {
                collect(&mut s, &mut o);
                o.closed = true;
                break;
            }
        }
    }
    o
}

const SIZES: [usize; 12] = [1, 2, 3, 5, 8, 13, 32, 64, 128, 256, 512, 4096];

#[test]
fn rfc2033_example_with_one_reply_per_recipient() {
    let input = b"LHLO client.test\r\nMAIL FROM:<chris@bar.com>\r\nRCPT TO:<alice@foo.com>\r\nRCPT TO:<nobody@foo.com>\r\nRCPT TO:<Bob+lists@foo.com>\r\nDATA\r\nSubject: hi\r\n\r\n..stuffed\r\n.\r\nQUIT\r\n";
    let mut reference: Option<String> = None;
    for size in SIZES {
        let o = run(input, size, 1000);
        assert_eq!(
            o.messages,
            vec![(vec!["alice".to_owned(), "bob".to_owned()], b"Subject: hi\r\n\r\n.stuffed\r\n".to_vec())],
            "chunk {size}"
        );
        assert!(o.closed);
        match &reference {
            None => reference = Some(o.output),
            Some(r) => assert_eq!(&o.output, r, "chunk {size}"),
        }
    }
    let out = reference.expect("ran");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        vec![
            "220 mx.test LMTP Pillarbox ready",
            "250-mx.test",
            "250-PIPELINING",
            "250-ENHANCEDSTATUSCODES",
            "250-8BITMIME",
            "250-SIZE 1000",
            "250 CHUNKING",
            "250 2.1.0 sender ok",
            "250 2.1.5 recipient ok",
            "550 5.1.1 no such user",
            "250 2.1.5 recipient ok",
            "354 send the message, end with <CRLF>.<CRLF>",
            "250 2.0.0 delivered to alice",
            "250 2.0.0 delivered to bob",
            "221 2.0.0 bye",
        ]
    );
}

#[test]
fn bdat_chunks_and_a_chunk_without_recipients() {
    let input = b"LHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<alice@x>\r\nBDAT 5\r\nhel.\nBDAT 7 LAST\r\nlo\r\n.\r\nMAIL FROM:<a@b>\r\nRCPT TO:<ghost@x>\r\nBDAT 4 LAST\r\nxxxxNOOP\r\n";
    for size in SIZES {
        let o = run(input, size, 1000);
        assert_eq!(
            o.messages,
            vec![(vec!["alice".to_owned()], b"hel.\nlo\r\n.\r\n".to_vec())],
            "chunk {size}: no unstuffing in BDAT"
        );
        assert!(o.output.contains("250 2.0.0 5 octets received\r\n"), "{}", o.output);
        assert!(
            o.output.ends_with("550 5.1.1 no such user\r\n503 5.5.1 no valid recipients\r\n250 2.0.0 ok\r\n"),
            "{}",
            o.output
        );
    }
}

#[test]
fn sequence_errors_and_unknown_commands() {
    let o = run(b"MAIL FROM:<a@b>\r\nHELO x\r\nEHLO x\r\nLHLO x\r\nRCPT TO:<alice@x>\r\nDATA\r\nMAIL FROM:<a@b>\r\nMAIL FROM:<a@b>\r\nDATA\r\nRCPT TO:<alice@x> NOTIFY=NEVER\r\nRCPT TO:alice\r\nXYZZY\r\nVRFY alice\r\nRSET\r\nQUIT\r\n", 64, 1000);
    let codes: Vec<&str> = o.output.lines().filter(|l| !l.starts_with("250-")).map(|l| &l[..3]).collect();
    assert_eq!(
        codes,
        vec![
            "220", "503", "500", "500", "250", "503", "503", "250", "503", "503", "555", "501", "500", "252", "250",
            "221"
        ]
    );
    assert!(o.messages.is_empty());
}

#[test]
fn size_limits_at_mail_and_while_receiving() {
    let mut input = b"LHLO c\r\nMAIL FROM:<a@b> SIZE=5000\r\nMAIL FROM:<a@b> SIZE=50 BODY=8BITMIME\r\nRCPT TO:<alice@x>\r\nRCPT TO:<bob@x>\r\nDATA\r\n".to_vec();
    input.extend(std::iter::repeat_n(b'x', 3000));
    input.extend_from_slice(b"\r\n.\r\nMAIL FROM:<a@b>\r\nRCPT TO:<alice@x>\r\nDATA\r\nsmall\r\n.\r\n");
    for size in [1, 7, 100, 4096] {
        let o = run(&input, size, 1000);
        assert!(o.output.contains("552 5.3.4"), "{}", o.output);
        let too_large = o.output.matches("552 5.3.4").count();
        assert_eq!(too_large, 3, "once at MAIL SIZE, then once per recipient: {}", o.output);
        assert_eq!(o.aborted, 1);
        assert_eq!(o.messages, vec![(vec!["alice".to_owned()], b"small\r\n".to_vec())], "the session goes on");
    }
}

#[test]
fn too_many_recipients_get_452() {
    let o = run(b"LHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<alice@x>\r\nRCPT TO:<alice@x>\r\nRCPT TO:<alice@x>\r\nRCPT TO:<alice@x>\r\n", 512, 1000);
    assert!(o.output.ends_with("250 2.1.5 recipient ok\r\n452 4.5.3 too many recipients\r\n"), "{}", o.output);
}

#[test]
fn over_long_command_line_is_refused_without_buffering() {
    let mut input = b"LHLO c\r\nNOOP ".to_vec();
    input.extend(std::iter::repeat_n(b'z', 2000));
    input.extend_from_slice(b"\r\nNOOP\r\n");
    let o = run(&input, 64, 1000);
    assert!(o.output.ends_with("500 5.5.2 line too long\r\n250 2.0.0 ok\r\n"), "{}", o.output);
}

proptest::proptest! {
    #[test]
    fn arbitrary_input_never_panics(input in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2000), size in 1usize..300) {
        let mut prefixed = b"LHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<alice@x>\r\n".to_vec();
        prefixed.extend_from_slice(&input);
        let o = run(&prefixed, size, 500);
        proptest::prop_assert!(o.output.ends_with("\r\n"));
    }
}

/// A non-ASCII octet where `FROM:` or `TO:` is expected once made the keyword check slice a
/// character in half and panic; every such line gets a syntax reply and the session goes on.
#[test]
fn non_ascii_octets_inside_the_path_keyword_get_a_reply_not_a_panic() {
    let input = "LHLO x\r\nMAIL FRÖÖ:<a@b>\r\nMAIL FROM:<a@b>\r\nRCPT ÖÖ:<alice@x>\r\nRCPT TÖ:<alice@x>\r\nRCPT TO:<alice@x>\r\nRSET\r\nQUIT\r\n";
    for size in [1, 2, 3, 7, 64, 4096] {
        let o = run(input.as_bytes(), size, 1000);
        assert_eq!(o.output.matches("501 5.").count(), 3, "chunks of {size}: {}", o.output);
        assert!(o.output.contains("250 2.1.5"), "the valid RCPT after them is accepted: {}", o.output);
        assert!(o.output.ends_with("221 2.0.0 bye\r\n"), "{}", o.output);
    }
}

/// SMTP smuggling: an MTA in front passes `LF . LF` (and `LF . CRLF`, `. LF`) on as text, so
/// DATA must not end there, or the rest would be read as a second, forged transaction.
#[test]
fn data_ends_only_at_crlf_dot_crlf_so_nothing_is_smuggled() {
    for smuggled in ["\n.\n", "\n.\r\n", "\r\n.\n"] {
        let input = format!(
            "LHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<alice@x>\r\nDATA\r\nSubject: one\r\n\r\nhello{smuggled}MAIL FROM:<forged@x>\r\nRCPT TO:<bob@x>\r\nDATA\r\nSubject: forged\r\n\r\n.\r\nQUIT\r\n"
        );
        for size in [1, 2, 5, 64, 4096] {
            let o = run(input.as_bytes(), size, 100_000);
            assert_eq!(o.messages.len(), 1, "{smuggled:?} chunks of {size}: {}", o.output);
            let (users, text) = &o.messages[0];
            assert_eq!(users, &["alice"], "nothing reached bob");
            let text = String::from_utf8_lossy(text);
            assert!(text.contains("MAIL FROM:<forged@x>") && text.contains("Subject: forged"), "all one text: {text}");
        }
    }
}
