//! The client against the real clamd (Debian's clamav-daemon), with signatures the test writes.

use pillarbox_clamav::{Clamd, ScanError, Scanner, Verdict};
use pillarbox_testclamd::{EICAR, TestClamd};

/// A message with `attachment` as a base64 attachment, and `padding` octets of text before it.
fn message(attachment: &[u8], padding: usize) -> Vec<u8> {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut encoded = Vec::new();
    for (i, c) in attachment.chunks(3).enumerate() {
        let n = c.iter().enumerate().fold(0u32, |n, (k, b)| n | u32::from(*b) << (16 - 8 * k));
        for k in 0..4 {
            encoded.push(if k <= c.len() { B64[(n >> (18 - 6 * k) & 63) as usize] } else { b'=' });
        }
        if i % 19 == 18 {
            encoded.extend_from_slice(b"\r\n");
        }
    }
    let text = "All work and no play.\r\n".repeat(padding / 23 + 1);
    let mut m = format!(
        "From: a@example.org\r\nTo: b@example.org\r\nSubject: report\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\n{text}\r\n\
         --b1\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"r.bin\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n"
    )
    .into_bytes();
    m.extend_from_slice(&encoded);
    m.extend_from_slice(b"\r\n--b1--\r\n");
    m
}

/// A generated "malware" attachment: bytes no real signature knows.
fn sample() -> Vec<u8> {
    (0u32..5000).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect()
}

#[test]
fn clamd_finds_what_its_signatures_name_over_its_socket_and_tcp() {
    let mut clamd = TestClamd::start(&[("Pillarbox.Test.Sample", &sample()), ("Eicar-Test", EICAR)], 1 << 20);
    for at in [clamd.socket.display().to_string(), clamd.tcp.clone()] {
        let scanner = Scanner::new(at.parse().expect("address"));
        scanner.ping().expect("ping");
        assert!(scanner.version().expect("version").starts_with("ClamAV "));
        let clean = message(b"nothing to see here, just a report", 100);
        assert_eq!(scanner.scan(&clean).expect("scan"), Verdict::Clean, "{}", clamd.log());
        let found = scanner.scan(&message(EICAR, 100)).expect("scan");
        assert_eq!(found, Verdict::Infected("Eicar-Test.UNOFFICIAL".into()), "{}", clamd.log());
        // Streamed as it arrives, in writes of every size, across the chunk boundaries.
        let big = message(&sample(), 300_000);
        let mut scan = scanner.start().expect("start");
        let mut rest = big.as_slice();
        let mut step = 1;
        while !rest.is_empty() {
            let (now, later) = rest.split_at(step.min(rest.len()));
            scan.write(now).expect("write");
            rest = later;
            step = step * 7 % 100_003 + 1;
        }
        assert_eq!(scan.sent(), big.len() as u64);
        assert_eq!(scan.finish().expect("scan"), Verdict::Infected("Pillarbox.Test.Sample.UNOFFICIAL".into()));
    }
    // Over its StreamMaxLength, clamd says so: not scanned, and not "clean".
    let scanner = Scanner::new(Clamd::Unix(clamd.socket.clone()));
    match scanner.scan(&message(b"x", 3 << 20)) {
        Err(ScanError::Failed { reply, .. }) => assert!(reply.contains("size limit"), "{reply}"),
        other => panic!("{other:?}"),
    }
    // Gone: unavailable, never a verdict.
    clamd.stop();
    assert!(matches!(scanner.scan(b"Subject: x\r\n\r\ny\r\n"), Err(ScanError::Unavailable { .. })));
    let tcp = Scanner::new(Clamd::Tcp(clamd.tcp.clone()));
    let err = tcp.scan(b"x").expect_err("clamd is stopped");
    assert!(err.to_string().starts_with(&format!("clamd at {} is unavailable: ", clamd.tcp)), "{err}");
}
