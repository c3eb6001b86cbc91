//! Real POP3 clients against the real server: Python's poplib, curl and mpop.

mod common;

use std::path::Path;
use std::process::Command;

use common::{PASSWORD, Pillarbox, crlf, message, python, require_tool};

/// Messages with the awkward cases: dot lines, CRLF storage, no final newline, 8-bit header.
fn tricky_messages() -> Vec<Vec<u8>> {
    vec![
        message(1),
        b"From: a@example.org\r\nSubject: stored with CRLF\r\n\r\nline\r\n.\r\n..\r\nend\r\n".to_vec(),
        b"From: b@example.org\nSubject: no final newline\n\nfirst\nlast line without newline".to_vec(),
        "From: c@example.org\nSubject: Gr\u{fc}\u{df}e aus K\u{f6}ln\n\nUTF-8 body \u{2713}\n".as_bytes().to_vec(),
    ]
}

#[test]
fn python_poplib_user_pass_apop_top_uidl_stls_and_pop3s() {
    let mut pb = Pillarbox::new();
    pb.add_user("mrose", "a long enough password");
    let out = pb.run(&["user", "apop", "mrose", "--secret-stdin"], b"tanstaaf\n");
    assert!(out.status.success());
    let mut files = Vec::new();
    for (i, m) in tricky_messages().iter().enumerate() {
        pb.deliver("alice", m);
        let f = pb.data().join(format!("msg{i}.eml"));
        std::fs::write(&f, m).expect("write");
        files.push(f.display().to_string());
    }
    pb.start();
    let mut args = vec![
        "127.0.0.1".to_owned(),
        pb.pop3.expect("pop3").port().to_string(),
        pb.pop3s.expect("pop3s").port().to_string(),
        pb.cert().display().to_string(),
        "alice".into(),
        PASSWORD.into(),
        "mrose".into(),
        "tanstaaf".into(),
    ];
    args.extend(files);
    assert_eq!(python("poplib_check.py", &args).trim(), "ok");
    assert_eq!(pb.stored("alice"), 0);
}

fn curl(args: &[&str]) -> Vec<u8> {
    require_tool("curl");
    let out = Command::new("curl").args(["-sS", "--max-time", "20"]).args(args).output().expect("curl");
    assert!(out.status.success(), "curl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

#[test]
fn curl_list_retr_dele_over_pop3_stls_and_pop3s() {
    let mut pb = Pillarbox::new();
    let msgs = tricky_messages();
    for m in &msgs {
        pb.deliver("alice", m);
    }
    pb.start();
    let user = format!("alice:{PASSWORD}");
    let plain = format!("pop3://127.0.0.1:{}", pb.pop3.expect("pop3").port());
    let tls = format!("pop3s://127.0.0.1:{}", pb.pop3s.expect("pop3s").port());
    let cert = pb.cert().display().to_string();

    // curl prints the message as sent, minus the terminating line.
    let expect = |m: &[u8]| {
        let mut w = crlf(m);
        if !w.ends_with(b"\r\n") {
            w.extend_from_slice(b"\r\n");
        }
        w
    };
    // LIST counts exactly those octets (the CRLF after a last line without one included).
    let list = String::from_utf8(curl(&["-u", &user, &format!("{plain}/")])).expect("utf8");
    let want: String = msgs.iter().enumerate().map(|(i, m)| format!("{} {}\r\n", i + 1, expect(m).len())).collect();
    assert_eq!(list, want);
    assert_eq!(curl(&["-u", &user, &format!("{plain}/1")]), expect(&msgs[0]));
    assert_eq!(curl(&["-u", &user, "--ssl-reqd", "--cacert", &cert, &format!("{plain}/2")]), expect(&msgs[1]));
    assert_eq!(curl(&["-u", &user, "--cacert", &cert, &format!("{tls}/3")]), expect(&msgs[2]));
    // A wrong CA is refused: certificate verification is real.
    let out = Command::new("curl").args(["-sS", "-u", &user, &format!("{tls}/1")]).output().expect("curl");
    assert!(!out.status.success(), "curl accepted a self-signed certificate without --cacert");

    curl(&["-u", &user, "--cacert", &cert, "-X", "DELE", "-I", &format!("{tls}/2")]);
    assert_eq!(pb.stored("alice"), 3);
    let list = String::from_utf8(curl(&["-u", &user, &format!("{plain}/")])).expect("utf8");
    assert_eq!(list.lines().count(), 3);
}

fn mpop_run(pb: &Pillarbox, conf: &str, account: &str) -> String {
    require_tool("mpop");
    let path = pb.data().join(format!("mpoprc-{account}"));
    std::fs::write(&path, conf).expect("conf");
    // mpop insists on a private configuration file.
    Command::new("chmod").args(["600", &path.display().to_string()]).status().expect("chmod");
    let out = Command::new("mpop").arg("-C").arg(&path).arg(account).output().expect("mpop");
    assert!(
        out.status.success(),
        "mpop failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn maildir_contents(dir: &Path) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = ["new", "cur"]
        .iter()
        .flat_map(|s| std::fs::read_dir(dir.join(s)).into_iter().flatten())
        .map(|e| std::fs::read(e.expect("entry").path()).expect("read"))
        .collect();
    v.sort();
    v
}

#[test]
fn mpop_pipelined_download_into_a_maildir_over_stls_and_pop3s() {
    let mut pb = Pillarbox::new();
    let mut sent: Vec<Vec<u8>> = (0..40).map(message).collect();
    sent.extend(tricky_messages());
    for m in &sent {
        pb.deliver("alice", m);
    }
    pb.start();
    let local = pb.data().join("local");
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(local.join(sub)).expect("mkdir");
    }
    let common = format!(
        "defaults\nauth user\nuser alice\npasswordeval echo '{PASSWORD}'\ntls on\ntls_trust_file {}\n\
         delivery maildir {}\nuidls_file {}/mpop-uidls-%U-%H\npipelining auto\n",
        pb.cert().display(),
        local.display(),
        pb.data().display()
    );
    // Implicit TLS, keeping the mail on the server: a second run must download nothing new.
    let keep = format!(
        "{common}account keep\nhost 127.0.0.1\nport {}\ntls_starttls off\nkeep on\n",
        pb.pop3s.expect("pop3s").port()
    );
    mpop_run(&pb, &keep, "keep");
    assert_eq!(maildir_contents(&local).len(), sent.len());
    mpop_run(&pb, &keep, "keep");
    assert_eq!(maildir_contents(&local).len(), sent.len(), "UIDLs let mpop skip what it has");
    assert_eq!(pb.stored("alice"), sent.len());

    // STLS on the plain port, deleting on the server.
    for e in std::fs::read_dir(local.join("new")).expect("new") {
        std::fs::remove_file(e.expect("entry").path()).expect("rm");
    }
    let fetch = format!(
        "{common}account fetch\nhost 127.0.0.1\nport {}\ntls_starttls on\nkeep off\nonly_new off\n",
        pb.pop3.expect("pop3").port()
    );
    mpop_run(&pb, &fetch, "fetch");
    let got = maildir_contents(&local);
    assert_eq!(got.len(), sent.len());
    // mpop stores with LF line ends and may add a Received header; each message's text is there.
    for m in &sent {
        let body = String::from_utf8_lossy(m).replace("\r\n", "\n");
        let body = body.split("\n\n").nth(1).expect("body");
        assert!(
            got.iter().any(|g| String::from_utf8_lossy(g).replace("\r\n", "\n").contains(body)),
            "missing {body:?}"
        );
    }
    assert_eq!(pb.stored("alice"), 0, "mpop deleted everything after downloading");
}
