//! `pillarbox fetch` against a real Dovecot and against Pillarbox: every TLS mode, keep policies
//! over several runs with injected time, mbox and MDA delivery, a misbehaving server, and crash
//! trials with kill -9.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::dovecot::Dovecot;
use common::{PASSWORD, Pillarbox, bin, message, require_tool};

/// Run `pillarbox fetch --json` with these accounts; returns the output and the parsed events.
fn fetch(dir: &Path, accounts: &str, extra: &[&str]) -> (Output, Vec<serde_json::Value>) {
    fetch_at(dir, accounts, extra, None)
}

/// [`fetch`] at an injected time (`PILLARBOX_NOW`).
fn fetch_at(dir: &Path, accounts: &str, extra: &[&str], now: Option<u64>) -> (Output, Vec<serde_json::Value>) {
    let file = dir.join("accounts.toml");
    std::fs::write(&file, accounts).expect("accounts");
    let out = Command::new(bin())
        .args(["fetch", "--json", "--accounts-file"])
        .arg(&file)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(extra)
        .envs(now.map(|n| ("PILLARBOX_NOW", n.to_string())))
        .output()
        .expect("fetch");
    let events = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    (out, events)
}

fn count(events: &[serde_json::Value], kind: &str) -> usize {
    events.iter().filter(|e| e["event"] == kind).count()
}

/// Message texts in a Maildir, sorted.
fn maildir(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = ["new", "cur"]
        .iter()
        .flat_map(|s| std::fs::read_dir(dir.join(s)).into_iter().flatten())
        .map(|e| String::from_utf8_lossy(&std::fs::read(e.expect("entry").path()).expect("read")).into_owned())
        .collect();
    v.sort();
    v
}

fn account(name: &str, port: u16, extra: &str, maildir: &Path) -> String {
    format!(
        "[accounts.{name}]\nhost = \"localhost\"\nport = {port}\nusername = \"alice\"\n\
         password_command = \"echo '{PASSWORD}'\"\ndeliver = {{ maildir = \"{}\" }}\n{extra}\n",
        maildir.display()
    )
}

/// An account on Pillarbox's POP3S port that trusts its self-signed certificate.
fn tls_account(pb: &Pillarbox, name: &str, extra: &str, maildir: &Path) -> String {
    let settings = format!("ca_file = \"{}\"\n{extra}", pb.cert().display());
    account(name, pb.pop3s.expect("pop3s").port(), &settings, maildir)
}

/// [`tls_account`] delivering into an mbox file.
fn tls_mbox_account(pb: &Pillarbox, name: &str, mbox: &Path) -> String {
    tls_mbox_account_with(pb, name, "", mbox)
}

/// [`tls_mbox_account`] with `extra` lines.
fn tls_mbox_account_with(pb: &Pillarbox, name: &str, extra: &str, mbox: &Path) -> String {
    let placeholder = mbox.with_extension("unused");
    let acct = tls_account(pb, name, extra, &placeholder).replace(
        &format!("{{ maildir = \"{}\" }}", placeholder.display()),
        &format!("{{ mbox = \"{}\" }}", mbox.display()),
    );
    assert!(acct.contains("mbox ="), "{acct}");
    acct
}

/// The SHA-256 of a PEM certificate's DER, as tls_fingerprint takes it.
fn fingerprint(pem: &Path) -> String {
    let out = Command::new("openssl").args(["x509", "-outform", "der", "-in"]).arg(pem).output().expect("openssl");
    use sha2::Digest;
    let hex: String = sha2::Sha256::digest(&out.stdout).iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

#[test]
fn from_dovecot_over_plain_stls_pop3s_with_ca_and_with_a_pinned_certificate() {
    require_tool("swaks");
    require_tool("openssl");
    // A certificate for localhost, made by Pillarbox's own first start.
    let certs = Pillarbox::without_users();
    let (cert, key) = (certs.cert(), certs.data().join("tls/key.pem"));
    let dovecot = Dovecot::start_with(&[("alice", PASSWORD)], Some((&cert, &key)));
    for i in 0..5 {
        let out = Command::new("swaks")
            .args(["--protocol", "LMTP", "--server", &dovecot.lmtp.to_string(), "--to", "alice@localhost"])
            .args(["--from", "s@example.org", "--header", &format!("Subject: dovecot {i}"), "--timeout", "20"])
            .args(["--body", "line one\n.line with a dot\nFrom the start of a line\n"])
            .output()
            .expect("swaks");
        assert!(out.status.success());
    }
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let (plain, tls) = (dovecot.pop3.port(), dovecot.pop3s.expect("pop3s").port());
    let ca = format!("ca_file = \"{}\"", cert.display());
    let accounts = [
        account("plain", plain, "tls = \"none\"\ninsecure = true\nkeep = \"keep\"", &w.join("m-plain")),
        account("stls", plain, &format!("tls = \"starttls\"\n{ca}\nkeep = \"keep\""), &w.join("m-stls")),
        account("implicit", tls, &format!("{ca}\nkeep = \"keep\""), &w.join("m-implicit")),
        account(
            "pinned",
            tls,
            &format!("tls_fingerprint = \"{}\"\nkeep = \"keep\"", fingerprint(&cert)),
            &w.join("m-pinned"),
        ),
    ];
    // The same mailbox four ways: each account its own state folder.
    for (i, a) in accounts.iter().enumerate() {
        let dir = w.join(format!("run{i}"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let (out, events) = fetch(&dir, a, &[]);
        assert!(out.status.success(), "{}\n{:?}", String::from_utf8_lossy(&out.stderr), events);
        assert_eq!(count(&events, "delivered"), 5, "{a}");
        // Each delivered message names its file, in the account's new/.
        let new = w.join(format!("m-{}/new", ["plain", "stls", "implicit", "pinned"][i]));
        let mut named: Vec<PathBuf> = events
            .iter()
            .filter(|e| e["event"] == "delivered")
            .map(|e| PathBuf::from(e["file"].as_str().expect("a file")))
            .collect();
        named.sort();
        let mut listed: Vec<PathBuf> = std::fs::read_dir(&new).expect("new").flatten().map(|e| e.path()).collect();
        listed.sort();
        assert_eq!(named, listed);
        let connected = events.iter().find(|e| e["event"] == "connected").expect("connected");
        assert_eq!(connected["tls"], i > 0, "{connected}");
        // keep = "keep" and UIDL: a second run downloads nothing.
        let (_, again) = fetch(&dir, a, &[]);
        assert_eq!(count(&again, "delivered"), 0);
    }
    let reference = maildir(&w.join("m-plain"));
    assert_eq!(reference.len(), 5);
    // Readable by the user only, and nothing left in tmp/.
    for e in std::fs::read_dir(w.join("m-plain/new")).expect("new").flatten() {
        use std::os::unix::fs::PermissionsExt;
        let mode = e.metadata().expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", e.path().display());
    }
    assert_eq!(std::fs::read_dir(w.join("m-plain/tmp")).expect("tmp").count(), 0);
    assert!(reference[0].contains("\n.line with a dot\n") && !reference[0].contains('\r'), "unstuffed, LF line ends");
    for m in ["m-stls", "m-implicit", "m-pinned"] {
        assert_eq!(maildir(&w.join(m)), reference, "{m}");
    }

    // Without the CA the self-signed certificate is refused, and nothing is sent.
    let bad = account("unverified", tls, "keep = \"keep\"", &w.join("m-bad"));
    let (out, events) = fetch(w, &bad, &[]);
    assert_eq!(out.status.code(), Some(69), "{events:?}");
    let err = events.iter().find(|e| e["event"] == "error").expect("error event");
    assert_eq!(err["code"], "tls");
    let wrong_pin =
        account("wrongpin", tls, &format!("tls_fingerprint = \"sha256:{}\"", "00".repeat(32)), &w.join("m-bad"));
    let (out, _) = fetch(w, &wrong_pin, &[]);
    assert_eq!(out.status.code(), Some(69));
    assert!(!w.join("m-bad/new").exists() || maildir(&w.join("m-bad")).is_empty());
}

#[test]
fn from_courier_messages_with_utf8_headers_arrive_as_sent() {
    let courier = common::courier::Courier::start(&[("alice", PASSWORD)]);
    courier.deliver("alice", "1.M1P1.test", "Subject: Grüße aus Köln\nMessage-ID: <u1@c>\n\nhallo\n".as_bytes());
    courier.deliver("alice", "2.M1P1.test", b"Subject: plain\nMessage-ID: <a2@c>\n\nascii only\n");
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let acct = account("courier", courier.pop3.port(), "tls = \"none\"\ninsecure = true", &w.join("m"))
        .replace("\"localhost\"", "\"127.0.0.1\"");
    let (out, ev) = fetch(w, &acct, &[]);
    assert!(out.status.success(), "{ev:?}\n{}", courier.log());
    let stored = maildir(&w.join("m"));
    assert_eq!(stored.len(), 2, "{stored:?}");
    // Without UTF8 (RFC 6856) Courier hands over a "Cannot display Unicode content" notice with
    // the original attached as message/global, and that notice is what would be stored.
    assert!(stored.iter().any(|m| m.starts_with("Subject: Grüße aus Köln\n")), "{stored:?}");
    assert!(!stored.iter().any(|m| m.contains("Cannot display Unicode")), "{stored:?}");
    assert_eq!(courier.stored("alice"), 0, "deleted on the server once stored");
}

#[test]
fn keep_policies_over_runs_with_injected_time() {
    let mut pb = Pillarbox::new();
    for i in 0..4 {
        pb.deliver("alice", &message(i));
    }
    pb.start();
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let ca = format!("ca_file = \"{}\"", pb.cert().display());
    let port = pb.pop3s.expect("pop3s").port();
    let days = account("aged", port, &format!("{ca}\nkeep = \"3d\""), &w.join("m"));
    let t0: u64 = 2_000_000_000;
    let kept = |ev: &[serde_json::Value]| ev.iter().find(|e| e["event"] == "summary").map(|e| e["kept"].clone());
    let (out, ev) = fetch_at(w, &days, &[], Some(t0));
    assert!(out.status.success(), "{ev:?}");
    assert_eq!((count(&ev, "delivered"), count(&ev, "deleted")), (4, 0));
    assert_eq!(kept(&ev), Some(4.into()), "downloaded by this run and left on the server: kept");
    assert_eq!(pb.stored("alice"), 4);
    let (_, ev) = fetch_at(w, &days, &[], Some(t0 + 2 * 86_400));
    assert_eq!((count(&ev, "delivered"), count(&ev, "deleted")), (0, 0), "two days later: kept");
    assert_eq!(kept(&ev), Some(4.into()));
    pb.deliver("alice", &message(9));
    let (_, ev) = fetch_at(w, &days, &[], Some(t0 + 3 * 86_400 + 1));
    assert_eq!((count(&ev, "delivered"), count(&ev, "deleted")), (1, 4), "three days after the first download");
    assert_eq!(kept(&ev), Some(1.into()), "the new one stays; the four old ones went");
    assert_eq!(pb.stored("alice"), 1, "the new message stays for its own three days");
    assert_eq!(maildir(&w.join("m")).len(), 5);

    // keep = "delete" (the default), on a fresh state folder: downloaded, then deleted.
    let w2 = w.join("second");
    std::fs::create_dir_all(&w2).expect("mkdir");
    let w = w2.as_path();
    let del = account("del", port, &ca, &w.join("m2"));
    let (out, ev) = fetch(w, &del, &[]);
    assert!(out.status.success(), "{ev:?}");
    assert_eq!((count(&ev, "delivered"), count(&ev, "deleted")), (1, 1));
    assert_eq!(pb.stored("alice"), 0);

    // Dry run: says what it would do and changes nothing.
    pb.deliver("alice", &message(10));
    let (_, ev) = fetch(w, &del, &["--dry-run"]);
    let planned: Vec<&serde_json::Value> = ev.iter().filter(|e| e["event"] == "planned").collect();
    assert_eq!(planned.len(), 1);
    assert_eq!(planned[0]["action"], "download");
    assert_eq!(pb.stored("alice"), 1);
    assert_eq!(maildir(&w.join("m2")).len(), 1);
    // A dry run into a destination that does not exist yet creates nothing.
    let fresh = account("fresh", port, &ca, &w.join("not-yet"));
    let dry = w.join("dry");
    std::fs::create_dir_all(&dry).expect("mkdir");
    let (out, ev) = fetch(&dry, &fresh, &["--dry-run"]);
    assert!(out.status.success(), "{ev:?}");
    assert!(!w.join("not-yet").exists(), "the dry run created the Maildir");
}

#[test]
fn a_dry_run_shows_a_table_of_senders_subjects_dates_and_reasons_with_days() {
    let mut pb = Pillarbox::new();
    pb.deliver(
        "alice",
        b"From: Ann Example <ann@example.org>\nSubject: Quarterly figures\nDate: Mon, 30 Nov 2026 09:12:00 +0000\n\nhi\n",
    );
    pb.start();
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let days = tls_account(&pb, "aged", "keep = \"7d\"", &w.join("m"));
    let t0 = epoch_of_day("2026-11-30") + 10 * 3600;
    let (out, _) = fetch_at(w, &days, &[], Some(t0));
    assert!(out.status.success());
    let long = "someone.with.a.rather.long.name@subdomain.example.org";
    pb.deliver("alice", format!("From: {long}\nSubject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?=\n\nhallo\n").as_bytes());

    // Not a terminal, no --json: the plan as text, not JSON.
    let file = w.join("accounts.toml");
    let out = Command::new(bin())
        .args(["fetch", "--dry-run", "--accounts-file"])
        .arg(&file)
        .arg("--state-dir")
        .arg(w.join("state"))
        .env("PILLARBOX_NOW", (t0 + 86_400).to_string())
        .output()
        .expect("fetch");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(!text.contains('{'), "no JSON without --json: {text}");
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("aged (localhost:") && lines[0].ends_with("2 messages on the server"), "{text}");
    for column in ["#", "ACTION", "SIZE", "DATE", "FROM", "SUBJECT", "WHY"] {
        assert!(lines[1].contains(column), "header row: {text}");
    }
    let old = lines.iter().find(|l| l.contains("Quarterly figures")).expect("the old message");
    assert!(old.contains("keep") && old.contains("2026-11-30 09:12") && old.contains("Ann Example"), "{text}");
    assert!(!old.contains("ann@example.org"), "the name, not the address: {text}");
    assert!(old.contains("first downloaded 2026-11-30, deleted after 2026-12-07"), "{text}");
    let new = lines.iter().find(|l| l.contains("Grüße")).expect("the new message, its subject decoded");
    assert!(new.contains("download") && new.contains(long) && new.trim_end().ends_with("new"), "{text}");
    assert!(text.contains("would download 1 ("), "{text}");
    assert!(text.contains("delete 0, keep 1, skip 0; nothing was done"), "{text}");
    assert!(!text.contains(&t0.to_string()), "no epoch seconds: {text}");
    assert_eq!(pb.stored("alice"), 2);
    assert_eq!(maildir(&w.join("m")).len(), 1, "nothing downloaded");

    // With --json: the same plan, with the headers as fields.
    let (_, ev) = fetch_at(w, &days, &["--dry-run"], Some(t0 + 86_400));
    let planned: Vec<&serde_json::Value> = ev.iter().filter(|e| e["event"] == "planned").collect();
    assert_eq!(planned[0]["from"], "Ann Example <ann@example.org>");
    assert_eq!(planned[0]["date"], "2026-11-30T09:12:00Z");
    assert_eq!(planned[1]["subject"], "Grüße");
}

#[test]
fn a_second_run_stops_at_once_with_75_and_check_says_so() {
    let mut pb = Pillarbox::new();
    pb.deliver("alice", &message(1));
    pb.start();
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let acct = tls_account(&pb, "home", "keep = \"keep\"", &w.join("m"));
    let (out, _) = fetch(w, &acct, &[]);
    assert!(out.status.success());
    let folders: Vec<PathBuf> =
        std::fs::read_dir(w.join("state")).expect("state").map(|e| e.expect("entry").path()).collect();
    assert_eq!(folders.len(), 1, "{folders:?}");
    // Another run holds the account's lock (a lock on its own open file, as a process has).
    let lock = std::fs::File::open(folders[0].join("lock")).expect("lock file");
    lock.lock().expect("lock");

    pb.deliver("alice", &message(2));
    let started = Instant::now();
    let (out, ev) = fetch(w, &acct, &[]);
    assert_eq!(out.status.code(), Some(75), "{ev:?}");
    assert!(started.elapsed() < Duration::from_secs(30), "it does not wait for the other run");
    assert!(ev.iter().any(|e| e["code"] == "locked"), "{ev:?}");
    assert_eq!(maildir(&w.join("m")).len(), 1, "nothing was downloaded by the second run");

    let out = Command::new(bin())
        .args(["check", "--accounts-file"])
        .arg(w.join("accounts.toml"))
        .arg("--state-dir")
        .arg(w.join("state"))
        .output()
        .expect("check");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("a `pillarbox fetch` is running for this account now"), "{text}");
    assert!(text.contains("stops at once (exit 75)") && !text.contains("wait for its turn"), "{text}");
    drop(lock);
    let (out, ev) = fetch(w, &acct, &[]);
    assert!(out.status.success(), "{ev:?}");
    assert_eq!(count(&ev, "delivered"), 1);
}

/// Seconds since the epoch at the start of a day, for readable test times.
fn epoch_of_day(day: &str) -> u64 {
    let out = Command::new("date").args(["-u", "-d", day, "+%s"]).output().expect("date");
    String::from_utf8_lossy(&out.stdout).trim().parse().expect("seconds")
}

#[test]
fn mboxrd_and_mda_delivery() {
    let mut pb = Pillarbox::new();
    pb.deliver("alice", b"Subject: a\n\nFrom the top\n>From quoted\nend\n");
    pb.deliver("alice", b"Subject: b\n\nno final newline");
    pb.start();
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let ca = format!("ca_file = \"{}\"", pb.cert().display());
    let port = pb.pop3s.expect("pop3s").port();
    let mbox = w.join("inbox.mbox");
    let accounts = format!(
        "[accounts.mbox]\nhost = \"localhost\"\nport = {port}\nusername = \"alice\"\npassword_env = \"TEST_PW\"\n{ca}\n\
         keep = \"keep\"\ndeliver = {{ mbox = \"{}\" }}\n\n\
         [accounts.mda]\nhost = \"localhost\"\nport = {port}\nusername = \"alice\"\npassword_env = \"TEST_PW\"\n{ca}\n\
         keep = \"keep\"\ndeliver = {{ mda = \"cat > {}/mda-$$.eml\" }}\n",
        mbox.display(),
        w.display()
    );
    // Two accounts on one mailbox are refused; each gets its own run and state folder here.
    let file = w.join("accounts.toml");
    std::fs::write(&file, &accounts).expect("write");
    let out = Command::new(bin()).args(["fetch", "--accounts-file"]).arg(&file).output().expect("fetch");
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("fetch the same mailbox"));
    for (i, section) in accounts.split("\n\n").enumerate() {
        let file = w.join(format!("accounts{i}.toml"));
        std::fs::write(&file, section).expect("write");
        let out = Command::new(bin())
            .args(["fetch", "--json", "--accounts-file"])
            .arg(&file)
            .arg("--state-dir")
            .arg(w.join(format!("state{i}")))
            .env("TEST_PW", PASSWORD)
            .output()
            .expect("fetch");
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("size-mismatch"),
            "a message without a final newline is no mismatch"
        );
    }
    let text = std::fs::read_to_string(&mbox).expect("mbox");
    let bodies: Vec<&str> = text
        .split("From MAILER-DAEMON ")
        .filter(|s| !s.is_empty())
        .map(|s| s.split_once('\n').expect("line").1)
        .collect();
    assert_eq!(
        bodies,
        vec!["Subject: a\n\n>From the top\n>>From quoted\nend\n\n", "Subject: b\n\nno final newline\n\n"]
    );
    let mut mda: Vec<String> = std::fs::read_dir(w)
        .expect("dir")
        .map(|e| e.expect("e").path())
        .filter(|p| p.extension().is_some_and(|x| x == "eml"))
        .map(|p| std::fs::read_to_string(p).expect("read"))
        .collect();
    mda.sort();
    // POP3 cannot carry a missing final line end: the server ends the last line before the dot.
    assert_eq!(mda, vec!["Subject: a\n\nFrom the top\n>From quoted\nend\n", "Subject: b\n\nno final newline\n"]);
}

#[test]
fn misbehaving_servers_lose_nothing_and_are_reported() {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let mut results = BTreeMap::new();
    for mode in [
        "good",
        "size-mismatch",
        "bare-lf",
        "long-line",
        "drop",
        "dup-uidl",
        "nouidl",
        "garbage",
        "retr-err",
        "no-stls",
        "no-pipelining",
        "pipelining",
        "endless",
        "utf8",
    ] {
        let dir = w.join(mode);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let deleted = dir.join("deleted");
        let (server, port) = common::scripted_server(mode, &deleted);
        let tls = if mode == "no-stls" { "tls = \"starttls\"" } else { "tls = \"none\"\ninsecure = true" };
        let acct = account("bad", port, tls, &dir.join("m"));
        let (out, events) = fetch(&dir, &acct, &[]);
        let stored = maildir(&dir.join("m"));
        let gone_list = std::fs::read_to_string(&deleted).unwrap_or_default();
        let gone = gone_list.lines().count();
        drop(server);
        if mode == "retr-err" {
            // Regression: a refused RETR in a pipelined batch once shifted which message got DELE.
            assert_eq!(gone_list, "1\n3\n", "exactly the two stored messages are deleted");
        }
        results.insert(mode, (out.status.code(), stored, gone, events));
    }
    let (code, stored, gone, _) = &results["good"];
    assert_eq!((*code, stored.len(), *gone), (Some(0), 3, 3));
    // Without PIPELINING every command waits for the answer to the one before (QUIT too).
    let (code, stored, gone, ev) = &results["no-pipelining"];
    assert_eq!((*code, stored.len(), *gone), (Some(0), 3, 3), "{ev:?}");
    let early = std::fs::read_to_string(w.join("no-pipelining/deleted.pipelined")).unwrap_or_default();
    assert_eq!(early, "", "commands sent before the answer to the one before");
    // With PIPELINING, the capabilities after the login, LIST and UIDL go in one write (the
    // CAPA before the login is sent alone: the login depends on its answer).
    let (code, stored, gone, ev) = &results["pipelining"];
    assert_eq!((*code, stored.len(), *gone), (Some(0), 3, 3), "{ev:?}");
    let early = std::fs::read_to_string(w.join("pipelining/deleted.pipelined")).unwrap_or_default();
    let early: Vec<&str> = early.lines().collect();
    assert!(early.starts_with(&["CAPA", "LIST"]), "commands read with the next already waiting: {early:?}");
    // Wrong sizes: a warning, and the mail is still stored once and deleted.
    let (code, stored, gone, ev) = &results["size-mismatch"];
    assert_eq!((*code, stored.len(), *gone), (Some(0), 3, 3));
    assert!(ev.iter().any(|e| e["code"] == "size-mismatch"));
    let (code, stored, _, _) = &results["bare-lf"];
    assert_eq!((*code, stored.len()), (Some(0), 3));
    assert!(stored.iter().any(|m| m.contains("\n.dot\n")), "bare LF lines are unstuffed too");
    let (code, stored, _, _) = &results["long-line"];
    assert_eq!((*code, stored.len()), (Some(0), 3));
    assert!(stored.iter().any(|m| m.len() > 100_000));
    // A dropped connection: message 1 is stored (its batch was not committed, so it stays on the
    // server too); nothing is half-written; nothing was deleted.
    let (code, stored, gone, ev) = &results["drop"];
    assert_eq!((*code, *gone), (Some(75), 0), "{ev:?}");
    assert!(
        stored.iter().all(|m| m.contains("Message-ID: <1@bad>") || m.contains("Message-ID: <3@bad>")),
        "no partial message"
    );
    assert_eq!(std::fs::read_dir(w.join("drop/m/tmp")).expect("tmp").count(), 0);
    let (code, stored, gone, ev) = &results["dup-uidl"];
    assert_eq!((*code, stored.len(), *gone), (Some(0), 3, 3));
    assert!(ev.iter().any(|e| e["code"] == "duplicate-uidl"));
    let (code, stored, gone, _) = &results["nouidl"];
    assert_eq!((*code, stored.len(), *gone), (Some(0), 3, 3));
    let (code, _, gone, ev) = &results["garbage"];
    assert_eq!((*code, *gone), (Some(69), 0), "{ev:?}");
    assert!(ev.iter().any(|e| e["code"] == "protocol"));
    let (code, stored, gone, ev) = &results["retr-err"];
    assert_eq!((*code, stored.len(), *gone), (Some(0), 2, 2));
    assert!(ev.iter().any(|e| e["code"] == "retr-refused"));
    let (code, stored, gone, ev) = &results["no-stls"];
    assert_eq!((*code, stored.len(), *gone), (Some(69), 0, 0));
    assert!(ev.iter().any(|e| e["code"] == "starttls-missing"), "never falls back to plaintext");
    // A server that downgrades messages with UTF-8 headers for clients that do not send UTF8
    // (as Courier's pop3d does): fetch sends it, and stores the original.
    let (code, stored, gone, ev) = &results["utf8"];
    assert_eq!((*code, stored.len(), *gone), (Some(0), 3, 3), "{ev:?}");
    assert!(stored.iter().any(|m| m.contains("Subject: Grüße aus Köln")), "{stored:?}");
    assert!(!stored.iter().any(|m| m.contains("Cannot display Unicode")), "{stored:?}");
    // A message far larger than announced: the run stops, nothing of it is kept, nothing deleted.
    let (code, stored, gone, ev) = &results["endless"];
    assert_eq!((*code, *gone), (Some(69), 0), "{ev:?}");
    assert!(stored.iter().all(|m| !m.contains("Message-ID: <2@bad>")), "no part of the oversized message");
    assert!(ev.iter().any(|e| e["message"].as_str().is_some_and(|m| m.contains("larger than announced"))), "{ev:?}");
    assert_eq!(std::fs::read_dir(w.join("endless/m/tmp")).expect("tmp").count(), 0);

    // Text from the server never reaches the terminal with escape sequences in it.
    let dir = w.join("escape");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let (server, port) = common::scripted_server("escape", &dir.join("deleted"));
    let file = dir.join("accounts.toml");
    std::fs::write(&file, account("bad", port, "tls = \"none\"\ninsecure = true", &dir.join("m"))).expect("write");
    let out = Command::new(bin())
        .args(["fetch", "--quiet", "--accounts-file"])
        .arg(&file)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .output()
        .expect("fetch");
    drop(server);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && said.contains("bad password"), "{said}");
    assert!(!said.contains('\x1b') && !said.contains('\x07') && !said.contains('\u{9b}'), "{said:?}");

    // A server without UIDL cannot honour keep policies: refused with a reason.
    let dir = w.join("nouidl-keep");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let (server, port) = common::scripted_server("nouidl", &dir.join("deleted"));
    let (out, ev) =
        fetch(&dir, &account("k", port, "tls = \"none\"\ninsecure = true\nkeep = \"keep\"", &dir.join("m")), &[]);
    drop(server);
    assert_eq!(out.status.code(), Some(78));
    assert!(
        ev.iter().any(|e| e["code"] == "policy" && e["message"].as_str().is_some_and(|m| m.contains("UIDL"))),
        "{ev:?}"
    );
}

/// A fixed-seed generator for the crash trials.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// `total` messages for alice, written straight into her Maildir (as an MTA would): enough mail
/// that a fetch takes a while.
fn write_crash_mail(pb: &Pillarbox, total: usize) {
    let new = pb.maildir("alice").join("new");
    for i in 0..total {
        let mut m = message(i);
        m.extend(std::iter::repeat_n(b'z', 2000 + (i * 37) % 20_000));
        m.push(b'\n');
        std::fs::write(new.join(format!("{}.M{i}P1.test", 1_700_000_000 + i)), &m).expect("write");
    }
}

/// What the crash trials look at in the local store and the fetch's process (its PID given).
struct Probe<'a> {
    /// Grows as messages arrive (files or octets written).
    progress: &'a dyn Fn(u32) -> u64,
    /// Whether one batch was being committed while the next one downloaded (asked just before
    /// the kill).
    overlapped: &'a dyn Fn(u32) -> bool,
    /// What must hold after each kill (given how many so far), checked where there is one.
    after_kill: Option<&'a dyn Fn(usize)>,
}

/// How many files under `dir` the process has open (its messages being written, named or not:
/// a file without a name shows as `dir/#INODE (deleted)`).
fn open_under(pid: u32, dir: &Path) -> u64 {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).into_iter().flatten().flatten();
    // Files in it: the folder itself, which the fetch keeps open, is not one.
    fds.filter(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.starts_with(dir) && t != dir)).count() as u64
}

/// Start `fetch` with these accounts and kill -9 it, up to 12 times (at most a minute, and only
/// while alice has mail left): one run in four after a random 10-260 ms (during the login), one
/// in four of the held runs (below) within 150 ms of the probe seeing a batch committed while
/// the next one downloads, the others a random 0-250 ms after messages start arriving. Returns how many times, and how many
/// of the kills came while one batch was being committed and the next one downloading. Three
/// runs in four hold each batch 200 ms between its sync and its journal record (a debug build's
/// test hook), which makes such kills likely. Every third run writes named files in `tmp/` (a
/// file system without `O_TMPFILE`; a debug build's test hook).
/// The crash trials aim their kills at moments of a fetch, and a machine busy with a clamd that
/// starts or scans makes them miss (a run finishes before it is caught): they hold this for
/// reading, the tests that run clamd for writing, so the two never overlap.
static TIMING: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn kill_9_trials(pb: &Pillarbox, accounts: &Path, state: &Path, seed: u64, probe: &Probe) -> (usize, usize) {
    let _quiet = TIMING.read().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut rng = Rng(seed);
    let started = Instant::now();
    let (mut trials, mut overlaps) = (0usize, 0);
    while trials < 12 && started.elapsed() < Duration::from_secs(60) && pb.stored("alice") > 0 {
        trials += 1;
        let pause = if trials % 4 == 1 { "0" } else { "200" };
        let mut child = Command::new(bin())
            .args(["fetch", "--quiet", "--accounts-file"])
            .arg(accounts)
            .arg("--state-dir")
            .arg(state)
            .env("PILLARBOX_TEST_COMMIT_PAUSE_MS", pause)
            .envs((trials % 3 == 0).then_some(("PILLARBOX_TEST_NAMED_TMP", "1")))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("fetch");
        let pid = child.id();
        let running = |child: &mut std::process::Child| child.try_wait().ok().flatten().is_none();
        let deadline = Instant::now() + Duration::from_secs(20);
        match rng.next() % 4 {
            0 => std::thread::sleep(Duration::from_millis(10 + rng.next() % 250)),
            // Aimed at the overlap, however slow a loaded machine makes the download: once a
            // batch is held before its record while the next downloads, within the hold.
            1 if pause != "0" => {
                // Not past 3 s: a run that finished would take the rest of the mail with it.
                let soon = Instant::now() + Duration::from_secs(3);
                while !(probe.overlapped)(pid) && Instant::now() < soon && running(&mut child) {
                    std::thread::sleep(Duration::from_millis(2));
                }
                std::thread::sleep(Duration::from_millis(rng.next() % 150));
            }
            _ => {
                let before = (probe.progress)(pid);
                while (probe.progress)(pid) == before && Instant::now() < deadline && running(&mut child) {
                    std::thread::sleep(Duration::from_millis(2));
                }
                std::thread::sleep(Duration::from_millis(rng.next() % 250));
            }
        }
        overlaps += usize::from((probe.overlapped)(child.id()));
        let _ = Command::new("kill").args(["-KILL", &child.id().to_string()]).status();
        let _ = child.wait();
        if let Some(check) = probe.after_kill {
            check(trials);
        }
    }
    (trials, overlaps)
}

/// The files under `dir` (recursively) named `name`.
fn find_named(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            found.extend(find_named(&p, name));
        } else if e.file_name() == name {
            found.push(p);
        }
    }
    found
}

/// How many messages the account's journal under `state` records as stored.
fn journaled(state: &Path) -> usize {
    let mut ids = std::collections::HashSet::new();
    for j in find_named(state, "journal") {
        for l in std::fs::read_to_string(j).expect("journal").lines() {
            match l.strip_suffix(" .").map(|l| l.split(' ').collect::<Vec<_>>()).as_deref() {
                Some(["+", id, _]) => ids.insert(id.to_string()),
                Some(["-", id]) => ids.remove(*id),
                _ => false,
            };
        }
    }
    ids.len()
}

/// The crash trials' setting: a server holding `total` messages for alice, and in a new work
/// folder an account `name` (with `extra` lines) fetching them over TLS into the Maildir `m/`.
struct CrashSetup {
    pb: Pillarbox,
    work: tempfile::TempDir,
    account: String,
    accounts_file: PathBuf,
}

fn crash_setup(total: usize, name: &str, extra: &str) -> CrashSetup {
    let mut pb = Pillarbox::new();
    write_crash_mail(&pb, total);
    pb.start();
    let work = tempfile::tempdir().expect("tempdir");
    let account = tls_account(&pb, name, extra, &work.path().join("m"));
    let accounts_file = work.path().join("accounts.toml");
    std::fs::write(&accounts_file, &account).expect("accounts");
    CrashSetup { pb, work, account, accounts_file }
}

#[test]
fn kill_9_at_random_moments_never_loses_or_duplicates_mail() {
    let total = 1500;
    // A run the machine's load let finish before its kill takes all the mail with it (or lets the
    // first run finish, after a single kill): then the whole trial is made again from the start
    // (each one's end is checked all the same).
    let (mut overlaps, mut most_kills) = (0, 0);
    for attempt in 0..3u64 {
        let CrashSetup { pb, work, account: acct, accounts_file: file } = crash_setup(total, "crash", "");
        let w = work.path();
        let state = w.join("state");
        let md = w.join("m");
        let count = |sub: &str| std::fs::read_dir(md.join(sub)).map_or(0, |d| d.count());
        // Killed after a batch was moved into place and before its record, with the next batch's
        // files being written: the next run must recognise the first and redo the second.
        let tmp = md.join("tmp");
        let overlapped = |pid| open_under(pid, &tmp) > 0 && count("new") > journaled(&state);
        let progress = |pid| open_under(pid, &tmp) + count("new") as u64;
        // A record goes to disk only after its messages' names.
        let after_kill = |kills| {
            let (named, recorded) = (count("new"), journaled(&state));
            assert!(recorded <= named, "after kill {kills}: {recorded} messages journaled, {named} in new/");
        };
        let probe = Probe { progress: &progress, overlapped: &overlapped, after_kill: Some(&after_kill) };
        let (trials, caught) = kill_9_trials(&pb, &file, &state, 0x5eed_1234_abcd_9876 + attempt, &probe);
        eprintln!("{trials} kills, {caught} while a batch was committed and the next downloading");
        overlaps += caught;
        most_kills = most_kills.max(trials);
        // Finish normally, then check: every message exactly once locally, none left on the server.
        let (out, ev) = fetch(w, &acct, &[]);
        assert!(out.status.success(), "{ev:?}");
        assert_eq!(pb.stored("alice"), 0, "everything was deleted on the server after being stored");
        let stored = maildir(&w.join("m"));
        let mut ids: Vec<String> = stored
            .iter()
            .map(|m| m.lines().find(|l| l.starts_with("Message-ID:")).expect("message id").to_owned())
            .collect();
        ids.sort();
        let before = ids.len();
        ids.dedup();
        assert_eq!(before, ids.len(), "no message stored twice ({trials} kills)");
        assert_eq!(ids.len(), total, "no message lost ({trials} kills)");
        assert_eq!(std::fs::read_dir(w.join("m/tmp")).expect("tmp").count(), 0, "no partial files left behind");
        if overlaps >= 1 && most_kills >= 2 {
            break;
        }
    }
    assert!(most_kills >= 2, "the fetch was interrupted at most {most_kills} time(s) in each of three trials");
    assert!(overlaps >= 1, "no kill came while a batch was committed and the next downloading, in three trials");
}

/// The crash trials' rules: messages numbered ...0 discarded, odd ones filed into `odd`, the rest
/// kept in the inbox (see [`odd_rules_want`]).
const ODD_RULES: &str = "require \"fileinto\";\n\
    if header :matches \"Subject\" \"*0\" { discard; }\n\
    elsif header :matches \"Subject\" [\"*1\", \"*3\", \"*5\", \"*7\", \"*9\"] { fileinto \"odd\"; }\n";

/// Where [`ODD_RULES`] put `total` messages: the numbers in `odd`, and those in the inbox.
fn odd_rules_want(total: usize) -> (Vec<usize>, Vec<usize>) {
    ((0..total).filter(|n| n % 2 == 1).collect(), (0..total).filter(|n| n % 2 == 0 && n % 10 != 0).collect())
}

/// The guarantee with Sieve rules: killed at random moments, every message is handled exactly
/// once by the rules (in the inbox, or in the folder they name, or discarded because they say)
/// or is still on the server.
#[test]
fn kill_9_with_sieve_rules_handles_every_message_exactly_once() {
    let total = 900;
    let CrashSetup { pb, work, account: acct, accounts_file: file } =
        crash_setup(total, "ruled-crash", "sieve = \"rules.sieve\"");
    let w = work.path();
    std::fs::write(w.join("rules.sieve"), ODD_RULES).expect("rules");
    let state = w.join("state");
    let md = w.join("m");
    let count = |sub: &str| std::fs::read_dir(md.join(sub)).map_or(0, |d| d.count());
    let tmp = md.join("tmp");
    let placed = || count("new") + count(".odd/new");
    // Discarded messages have no file, so the journal cannot be set against the files here:
    // aimed at messages being written once some are placed (which includes the held batches).
    let overlapped = |pid| open_under(pid, &tmp) > 0 && placed() > 0;
    let progress = |pid| open_under(pid, &tmp) + placed() as u64;
    let probe = Probe { progress: &progress, overlapped: &overlapped, after_kill: None };
    let (trials, overlaps) = kill_9_trials(&pb, &file, &state, 0x0dd_5eed_4321, &probe);
    assert!(trials >= 2, "the fetch was interrupted {trials} time(s)");
    eprintln!("{trials} kills, {overlaps} while messages were written after others were placed");
    let (out, ev) = fetch(w, &acct, &[]);
    assert!(out.status.success(), "{ev:?}");
    assert_eq!(pb.stored("alice"), 0, "everything was handled and deleted on the server");
    let numbers = |dir: &Path| -> Vec<usize> {
        let mut v: Vec<usize> = maildir(dir)
            .iter()
            .map(|m| {
                let subject = m.lines().find_map(|l| l.strip_prefix("Subject: test message ")).expect("subject");
                subject.parse().expect("number")
            })
            .collect();
        v.sort_unstable();
        v
    };
    let inbox = numbers(&md);
    let odd = numbers(&md.join(".odd"));
    let (want_odd, want_inbox) = odd_rules_want(total);
    assert_eq!(odd, want_odd, "each odd message once in its folder ({trials} kills)");
    assert_eq!(inbox, want_inbox, "each even message once in the inbox ({trials} kills)");
    assert_eq!(count("tmp") + count(".odd/tmp"), 0, "no partial files left behind");
}

/// `pillarbox mail ARGS --json` over the accounts file and a search index in `w`: its objects.
fn mail_json(w: &Path, args: &[&str]) -> Vec<serde_json::Value> {
    let out = Command::new(bin())
        .arg("mail")
        .args(args)
        .args(["--json", "--accounts-file"])
        .arg(w.join("accounts.toml"))
        .arg("--index")
        .arg(w.join("search.sqlite"))
        .output()
        .expect("mail");
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("json")).collect()
}

/// The folder of each message `mail --json` printed (`-`: the inbox).
fn folder_of(v: &[serde_json::Value]) -> Vec<String> {
    v.iter().map(|m| m["folder"].as_str().unwrap_or("-").to_owned()).collect()
}

/// The subjects' numbers of the messages of an mbox file (`test message N`), in order.
fn mbox_numbers(mbox: &Path) -> Vec<usize> {
    let text = std::fs::read_to_string(mbox).unwrap_or_default();
    let mut v: Vec<usize> = text
        .lines()
        .filter_map(|l| l.strip_prefix("Subject: test message "))
        .map(|n| n.parse().expect("number"))
        .collect();
    v.sort_unstable();
    v
}

/// The Sieve guarantee over an mbox account, whose batches go to several files at once (the
/// inbox and a folder): killed at random moments, every message is in the file the rules name
/// once, or discarded because they say, or still on the server.
#[test]
fn kill_9_with_sieve_rules_over_mbox_files_handles_every_message_exactly_once() {
    let mut pb = Pillarbox::new();
    let total = 900;
    write_crash_mail(&pb, total);
    pb.start();
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    std::fs::write(w.join("rules.sieve"), ODD_RULES).expect("rules");
    let mbox = w.join("inbox");
    let acct = tls_mbox_account_with(&pb, "ruled-mbox", "sieve = \"rules.sieve\"", &mbox);
    let file = w.join("accounts.toml");
    std::fs::write(&file, &acct).expect("accounts");
    let state = w.join("state");
    let staged = |name: &str| find_named(&state, name).into_iter().filter_map(|p| std::fs::metadata(p).ok());
    // Killed while one batch was appended to both files (or held before its record) and the next staged.
    let overlapped = |_| staged("mbox-batch").next().is_some() && staged("mbox-batch.odd").next().is_some();
    let progress = |_| -> u64 {
        ["mbox-batch", "mbox-batch.1", "mbox-batch.odd", "mbox-batch.odd.1", "mbox-message"]
            .iter()
            .flat_map(|n| staged(n))
            .map(|m| m.len())
            .sum()
    };
    let probe = Probe { progress: &progress, overlapped: &overlapped, after_kill: None };
    let (trials, overlaps) = kill_9_trials(&pb, &file, &state, 0x05ee_d0dd_b0c5, &probe);
    assert!(trials >= 2, "the fetch was interrupted {trials} time(s)");
    eprintln!("{trials} kills, {overlaps} while a batch was committed and the next staged");
    let (out, ev) = fetch(w, &acct, &[]);
    assert!(out.status.success(), "{ev:?}");
    assert_eq!(pb.stored("alice"), 0, "everything was handled and deleted on the server");
    let (want_odd, want_inbox) = odd_rules_want(total);
    let odd = mbox_numbers(&w.join("inbox.folders/odd"));
    assert_eq!(odd, want_odd, "each odd message once in its folder ({trials} kills)");
    let inbox = mbox_numbers(&mbox);
    assert_eq!(inbox, want_inbox, "each even message once in the inbox ({trials} kills)");
    let left: Vec<_> =
        std::fs::read_dir(w.join("inbox.folders")).expect("folders").flatten().map(|e| e.file_name()).collect();
    assert_eq!(left, ["odd"], "no lock left behind");
}

/// Sieve rules over an mbox account: folders are mbox files in `inbox.folders/`, `\Seen` is a
/// `Status: RO` line, discarded messages are deleted from the server too; `mail list` and
/// `mail search` show each message's folder.
#[test]
fn sieve_rules_file_mbox_mail_into_folder_files() {
    let mut pb = Pillarbox::new();
    for i in 0..12 {
        let extra = match i % 3 {
            0 => "List-Id: The team <Team.lists.example.org>\r\n",
            1 => "X-Spam-Flag: YES\r\n",
            _ => "",
        };
        pb.deliver(
            "alice",
            format!("From: a@example.org\r\n{extra}Subject: note {i}\r\n\r\nbody of {i}\r\n").as_bytes(),
        );
    }
    pb.start();
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    std::fs::write(
        w.join("rules.sieve"),
        r#"require ["fileinto", "variables", "imap4flags"];
if header :is "X-Spam-Flag" "YES" { discard; stop; }
if header :matches "List-Id" "*<*.lists.example.org>" { fileinto :flags "\\Seen" "lists/${2}"; }
"#,
    )
    .expect("rules");
    let mbox = w.join("inbox");
    let acc = tls_mbox_account_with(&pb, "ruled", "sieve = \"rules.sieve\"", &mbox);
    let (out, events) = fetch(w, &acc, &[]);
    assert!(out.status.success(), "{}\n{events:?}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(count(&events, "delivered"), 12, "discarded messages are handled too");
    assert_eq!(pb.stored("alice"), 0);
    let folder = w.join("inbox.folders/lists.Team");
    let text = std::fs::read_to_string(&folder).expect("folder file");
    assert_eq!(text.matches("\nStatus: RO\n").count(), 4, "{text}");
    assert_eq!(text.matches("Subject: note").count(), 4);
    let inbox = std::fs::read_to_string(&mbox).expect("inbox");
    assert_eq!(inbox.matches("Subject: note").count(), 4);
    assert!(!inbox.contains("Status:") && !inbox.contains("X-Spam-Flag"), "{inbox}");
    let (_, again) = fetch(w, &acc, &[]);
    assert_eq!(count(&again, "delivered"), 0, "nothing comes twice");
    let mail = |args: &[&str]| mail_json(w, args);
    assert_eq!(mail(&["list"]).len(), 8);
    assert_eq!(folder_of(&mail(&["list", "--folder", "lists/Team"])), ["lists.Team"; 4]);
    assert_eq!(folder_of(&mail(&["list", "--folder", "INBOX"])), ["-"; 4]);
    assert_eq!(folder_of(&mail(&["search", "--folder", "lists.Team", "body"])), ["lists.Team"; 4]);
}

/// Another mbox writer (what procmail or the MTA's local delivery does): every few milliseconds,
/// under the dotlock and flock, one message with its own Message-ID. Returns how many it wrote.
fn other_mbox_writer(mbox: PathBuf, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> usize {
    use std::io::Write;
    let dot = mbox.with_extension("mbox.lock");
    let mut written = 0;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&dot) {
            Ok(mut d) => d.write_all(b"0\n").expect("dotlock"),
            Err(_) => {
                // A dotlock left by a killed fetch goes when the next run recovers; this writer
                // breaks one only when it is very old, as procmail does.
                let old = std::fs::metadata(&dot)
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t.elapsed().unwrap_or_default() > Duration::from_secs(30));
                if old {
                    let _ = std::fs::remove_file(&dot);
                }
                std::thread::sleep(Duration::from_millis(2));
                continue;
            }
        }
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&mbox).expect("mbox");
        f.lock().expect("flock");
        write!(f, "From other@example.org Thu Jan  1 00:00:00 2026\nMessage-ID: <other-{written}@example.org>\n\nfrom procmail\n\n")
            .expect("append");
        drop(f);
        std::fs::remove_file(&dot).expect("dotlock");
        written += 1;
        std::thread::sleep(Duration::from_millis(15));
    }
    written
}

#[test]
fn kill_9_next_to_another_mbox_writer_never_loses_cuts_or_duplicates_mail() {
    let mut pb = Pillarbox::new();
    let total = 1500;
    write_crash_mail(&pb, total);
    pb.start();
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let mbox = w.join("inbox.mbox");
    let acct = tls_mbox_account(&pb, "crash", &mbox);
    let file = w.join("accounts.toml");
    std::fs::write(&file, &acct).expect("accounts");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (mbox, stop) = (mbox.clone(), stop.clone());
        std::thread::spawn(move || other_mbox_writer(mbox, stop))
    };
    let state = w.join("state");
    // Killed while one batch was appended (or waiting for its record) and the next was staged.
    let overlapped =
        |_| !find_named(&state, "mbox-batch").is_empty() && !find_named(&state, "mbox-batch.odd").is_empty();
    // The staged octets (the mbox itself grows with the other writer's mail all the time).
    let progress = |_| -> u64 {
        let size = |p: PathBuf| std::fs::metadata(p).map_or(0, |m| m.len());
        ["mbox-batch", "mbox-batch.odd"].iter().flat_map(|n| find_named(&state, n)).map(size).sum()
    };
    let probe = Probe { progress: &progress, overlapped: &overlapped, after_kill: None };
    let (trials, overlaps) = kill_9_trials(&pb, &file, &state, 0x0dd_ba11_5eed_f00d, &probe);
    assert!(trials >= 2, "the fetch was interrupted {trials} time(s)");
    eprintln!("{trials} kills, {overlaps} while a batch was committed and the next staged");
    assert!(overlaps >= 1, "no kill came while a batch was committed and the next staged ({trials} kills)");
    let (out, ev) = fetch(w, &acct, &[]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let others = writer.join().expect("writer");
    assert!(out.status.success(), "{ev:?}");
    assert_eq!(pb.stored("alice"), 0, "everything was deleted on the server after being stored");

    // The mbox: each message starts with a From_ line and has one Message-ID; every one of the
    // other writer's messages is there once, and every server message once.
    let text = std::fs::read_to_string(&mbox).expect("mbox");
    assert!(text.starts_with("From "), "{}", &text[..80.min(text.len())]);
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for m in text.split("\n\nFrom ") {
        let ids: Vec<&str> = m.lines().filter(|l| l.starts_with("Message-ID:")).collect();
        assert_eq!(ids.len(), 1, "a message that is not whole: {:?}", &m[..200.min(m.len())]);
        if ids[0].contains("<other-") { theirs.push(ids[0]) } else { ours.push(ids[0]) }
    }
    let count = |v: &mut Vec<&str>| {
        v.sort_unstable();
        let n = v.len();
        v.dedup();
        (n, v.len())
    };
    assert_eq!(count(&mut theirs), (others, others), "the other writer's mail, each once ({trials} kills)");
    assert_eq!(count(&mut ours), (total, total), "the server's mail, each once ({trials} kills)");
}

#[test]
fn switching_from_mpop_fetchmail_or_getmail_downloads_nothing_twice() {
    require_tool("mpop");
    require_tool("fetchmail");
    let mut pb = Pillarbox::new();
    for i in 0..3 {
        pb.deliver("alice", &message(i));
    }
    pb.start();
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let port = pb.pop3.expect("pop3").port();
    // The other clients download the three messages and keep them on the server.
    let md = w.join("other");
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(md.join(sub)).expect("mkdir");
    }
    let mpoprc = w.join("mpoprc");
    std::fs::write(
        &mpoprc,
        format!(
            "account x\nhost 127.0.0.1\nport {port}\ntls off\nauth user\nuser alice\npasswordeval echo '{PASSWORD}'\n\
             delivery maildir {}\nkeep on\nuidls_file {}/mpop-uidls\n",
            md.display(),
            w.display()
        ),
    )
    .expect("mpoprc");
    Command::new("chmod").args(["600", &mpoprc.display().to_string()]).status().expect("chmod");
    assert!(Command::new("mpop").arg("-C").arg(&mpoprc).arg("x").output().expect("mpop").status.success());
    let fetchmailrc = w.join("fetchmailrc");
    std::fs::write(
        &fetchmailrc,
        format!("poll 127.0.0.1 port {port} proto pop3 uidl user \"alice\" password \"{PASSWORD}\" keep sslproto \"\" mda \"cat > /dev/null\"\n"),
    )
    .expect("rc");
    Command::new("chmod").args(["600", &fetchmailrc.display().to_string()]).status().expect("chmod");
    let st = Command::new("fetchmail")
        .arg("-f")
        .arg(&fetchmailrc)
        .arg("-i")
        .arg(w.join("fetchids"))
        .env("HOME", w)
        .output()
        .expect("fetchmail");
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    // getmail keeps one file per account: UIDL, NUL, time.
    let mut c = pb.login();
    c.ok("UIDL");
    let uidl = String::from_utf8_lossy(&c.multiline()).into_owned();
    c.ok("QUIT");
    let oldmail: String =
        uidl.lines().map(|l| format!("{}\u{0}1700000000.0\n", l.split(' ').nth(1).expect("uid"))).collect();
    std::fs::write(w.join("oldmail-127.0.0.1-pop3-alice"), oldmail).expect("oldmail");

    pb.deliver("alice", &message(99));
    let ca = format!("ca_file = \"{}\"\nkeep = \"keep\"", pb.cert().display());
    for (format, file) in
        [("mpop", "mpop-uidls"), ("fetchmail", "fetchids"), ("getmail", "oldmail-127.0.0.1-pop3-alice")]
    {
        let dir = w.join(format);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let acct =
            account("switched", pb.pop3s.expect("pop3s").port(), &ca, &dir.join("m")).replace("localhost", "127.0.0.1");
        std::fs::write(dir.join("accounts.toml"), &acct).expect("write");
        let out = Command::new(bin())
            .args(["fetch", "--accounts-file"])
            .arg(dir.join("accounts.toml"))
            .arg("--state-dir")
            .arg(dir.join("state"))
            .args(["--import-state", format])
            .arg(w.join(file))
            .arg("switched")
            .output()
            .expect("import");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("imported 3 message ids"),
            "{format}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (out, ev) = fetch(&dir, &acct, &[]);
        assert!(out.status.success(), "{format}: {ev:?}");
        assert_eq!(count(&ev, "delivered"), 1, "{format}: only the message the other client never saw");
    }
}

#[test]
fn every_keeps_fetching_new_mail_and_never_logs_in_sooner_than_login_delay() {
    let mut pb = Pillarbox::new();
    assert!(pb.run(&["user", "login-delay", "alice", "--seconds", "2"], b"").status.success());
    pb.start();
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let acct = tls_account(&pb, "daemon", "", &w.join("m"));
    std::fs::write(w.join("accounts.toml"), &acct).expect("write");
    let mut child = common::KillOnDrop(
        Command::new(bin())
            .args(["fetch", "--json", "--every", "1s", "--accounts-file"])
            .arg(w.join("accounts.toml"))
            .arg("--state-dir")
            .arg(w.join("state"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("daemon"),
    );
    let child = &mut child.0;
    let (tx, rx) = std::sync::mpsc::channel::<serde_json::Value>();
    let stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str(&line) {
                let _ = tx.send(v);
            }
        }
    });
    let delivered_within = |limit: Duration| {
        let start = Instant::now();
        while let Ok(e) = rx.recv_timeout(limit.saturating_sub(start.elapsed())) {
            if e["event"] == "delivered" {
                return true;
            }
        }
        false
    };
    pb.deliver("alice", &message(1));
    assert!(delivered_within(Duration::from_secs(20)), "the first message arrives");
    pb.deliver("alice", &message(2));
    assert!(delivered_within(Duration::from_secs(20)), "mail delivered later is picked up by a later run");
    let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "the daemon stops on SIGINT");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    let log = pb.log();
    assert!(log.matches("result=\"ok\"").count() >= 2, "several runs logged in");
    assert!(!log.contains("result=\"login-delay\""), "never refused for logging in too soon");
    assert_eq!(maildir(&w.join("m")).len(), 2);
}

#[test]
fn a_full_disk_stops_the_fetch_and_deletes_nothing_it_could_not_store() {
    let mut pb = Pillarbox::new();
    for i in 0..40 {
        let mut m = message(i);
        m.extend(std::iter::repeat_n(b'q', 60_000));
        m.push(b'\n');
        pb.deliver("alice", &m);
    }
    pb.start();
    // A 1 MiB file system for the local store: about 16 of the 40 messages fit.
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let small = w.join("small");
    std::fs::create_dir_all(&small).expect("mkdir");
    let mounted =
        Command::new("mount").args(["-t", "tmpfs", "-o", "size=1m"]).arg("tmpfs").arg(&small).status().expect("mount");
    assert!(mounted.success(), "mounting a small tmpfs needs root");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(small.clone());
    let acct = tls_account(&pb, "full", "", &small.join("m"));
    let (out, ev) = fetch(w, &acct, &[]);
    assert_eq!(out.status.code(), Some(74), "{ev:?}");
    assert!(ev.iter().any(|e| e["code"] == "local-delivery"), "{ev:?}");
    let stored = maildir(&small.join("m"));
    // Whatever was stored is whole, and exactly what is gone from the server.
    assert!(stored.iter().all(|m| m.ends_with(&format!("{}\n", "q".repeat(60_000)))), "no partial message");
    assert_eq!(pb.stored("alice") + stored.len(), 40, "every message is on the server or stored");
    assert_eq!(std::fs::read_dir(small.join("m/tmp")).expect("tmp").count(), 0);

    // An mbox with the fetch's state (its staging files) on another full file system: the disk
    // fills while a message is staged or while a batch is appended.
    let left = pb.stored("alice");
    let small = w.join("small-mbox");
    std::fs::create_dir_all(&small).expect("mkdir");
    let mounted =
        Command::new("mount").args(["-t", "tmpfs", "-o", "size=1m"]).arg("tmpfs").arg(&small).status().expect("mount");
    assert!(mounted.success());
    let _guard = Unmount(small.clone());
    let mbox = small.join("inbox.mbox");
    let acct = tls_mbox_account(&pb, "full", &mbox);
    let (out, ev) = fetch(&small, &acct, &[]);
    assert_eq!(out.status.code(), Some(74), "{ev:?}");
    let text = std::fs::read_to_string(&mbox).unwrap_or_default();
    let messages: Vec<&str> = text.split("From MAILER-DAEMON ").filter(|m| !m.is_empty()).collect();
    let whole = format!("{}\n\n", "q".repeat(60_000));
    assert!(messages.iter().all(|m| m.ends_with(&whole)), "no partial message in the mbox");
    assert!(messages.len() < left, "the disk filled before all {left} were stored");
    assert_eq!(pb.stored("alice") + messages.len(), left, "every message is on the server or in the mbox");
}

/// A batch of Maildir messages keeps its files open until it is in place, and the next one
/// grows while it is committed: under a low limit on open files (128, where the batches would
/// otherwise grow to hundreds) the batches stay small enough, and everything arrives.
#[test]
fn a_low_limit_on_open_files_keeps_batches_small_and_loses_nothing() {
    require_tool("prlimit");
    let total = 400;
    let CrashSetup { pb, work, accounts_file: file, .. } = crash_setup(total, "few-files", "");
    let w = work.path();
    // Each commit held 100 ms, so that the next batch would grow while it waits.
    let out = Command::new("prlimit")
        .args(["--nofile=128:128", "--"])
        .arg(bin())
        .args(["fetch", "--json", "--accounts-file"])
        .arg(&file)
        .arg("--state-dir")
        .arg(w.join("state"))
        .env("PILLARBOX_TEST_COMMIT_PAUSE_MS", "100")
        .output()
        .expect("fetch");
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(maildir(&w.join("m")).len(), total);
    assert_eq!(pb.stored("alice"), 0);
}

#[test]
fn a_terminal_gets_a_progress_bar_per_account() {
    require_tool("script");
    let mut pb = Pillarbox::new();
    for i in 0..3 {
        pb.deliver("alice", &message(i));
    }
    pb.start();
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let acct = tls_account(&pb, "term", "", &w.join("m"));
    std::fs::write(w.join("accounts.toml"), &acct).expect("write");
    // `script` runs the command on a pseudo-terminal, as a person at a terminal would.
    let cmd = format!(
        "{} fetch --accounts-file {} --state-dir {}",
        bin().display(),
        w.join("accounts.toml").display(),
        w.join("state").display()
    );
    let out = Command::new("script").args(["-qec", &cmd, "/dev/null"]).output().expect("script");
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{screen}");
    assert!(screen.contains("term [") && screen.contains("3/3 messages"), "{screen}");
    // The rate reads as a person says it: at most one decimal (not `1,100.4274/s`).
    let rates: Vec<&str> =
        screen.split("messages, ").skip(1).filter_map(|r| r.split_once("/s").map(|(n, _)| n)).collect();
    assert!(!rates.is_empty(), "{screen}");
    for rate in rates {
        let decimals = rate.split_once('.').map_or(0, |(_, d)| d.len());
        assert!(decimals <= 1 && !rate.contains(',') && rate.len() < 8, "rate {rate:?} in {screen}");
    }
    assert!(screen.contains("3 new ("), "the bar ends with a summary: {screen}");
    // Without a terminal: nothing but errors.
    let (out, _) = fetch(w, &acct, &[]);
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_refused_password_is_tried_once_and_a_moved_account_is_told_how_to_get_scram_keys() {
    let mut pb = Pillarbox::without_users();
    let users = pb.data().join("dovecot-users");
    std::fs::write(&users, format!("alice:{{PLAIN}}{PASSWORD}:1000:1000::/home/alice::\n")).expect("users");
    let out = pb.run(&["user", "import", &users.display().to_string()], b"");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    pb.deliver("alice", &message(1));
    pb.start();
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let failures = |pb: &Pillarbox| pb.log().matches("authentication failed").count();

    // The imported user has no SCRAM keys yet: SCRAM fails, and nothing else is tried (the
    // server would count a second failure against the account).
    let acct = tls_account(&pb, "migrated", "keep = \"keep\"", &w.join("m"));
    let (out, ev) = fetch(w, &acct, &[]);
    assert_eq!(out.status.code(), Some(77), "{ev:?}");
    let error = ev.iter().find(|e| e["code"] == "auth-failed").expect("auth-failed event");
    let error = error["message"].as_str().expect("message");
    assert!(error.contains("SCRAM-SHA-256") && error.contains("auth = \"plain\""), "{error}");
    assert_eq!(failures(&pb), 1, "one failure, one mechanism: {}", pb.log());

    // Once with PLAIN (over TLS), as the hint says: the server makes the SCRAM keys.
    let plain = acct.replace("keep = \"keep\"", "keep = \"keep\"\nauth = \"plain\"");
    let (out, ev) = fetch(w, &plain, &[]);
    assert!(out.status.success(), "{ev:?}");
    let mech = |ev: &[serde_json::Value]| ev.iter().find(|e| e["event"] == "connected").map(|e| e["mechanism"].clone());
    assert_eq!(mech(&ev), Some("PLAIN".into()));
    let (out, ev) = fetch(w, &acct, &[]);
    assert!(out.status.success(), "{ev:?}");
    assert_eq!(mech(&ev), Some("SCRAM-SHA-256-PLUS".into()), "the password login created the SCRAM keys");

    // A wrong password: one attempt, one failure on the server.
    let before = failures(&pb);
    let wrong = acct.replace(PASSWORD, "not the password");
    assert_ne!(wrong, acct);
    let (out, ev) = fetch(w, &wrong, &[]);
    assert_eq!(out.status.code(), Some(77), "{ev:?}");
    assert_eq!(failures(&pb), before + 1, "{}", pb.log());
}

#[test]
fn a_journal_kept_under_the_old_folder_name_is_adopted_and_nothing_is_downloaded_twice() {
    let mut pb = Pillarbox::without_users();
    pb.add_user("jürgen", PASSWORD);
    for i in 0..3 {
        pb.deliver("jürgen", &message(i));
    }
    pb.start();
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let juergen = tls_account(&pb, "juergen", "keep = \"keep\"", &w.join("m")).replace("\"alice\"", "\"jürgen\"");
    let (out, ev) = fetch(w, &juergen, &[]);
    assert!(out.status.success(), "{ev:?}");
    assert_eq!(count(&ev, "delivered"), 3);

    // Make the folder what an earlier version left: the old name (non-ASCII folded to `_`), no
    // owner record.
    let port = pb.pop3s.expect("pop3s").port();
    let state = w.join("state");
    let new: Vec<PathBuf> = std::fs::read_dir(&state).expect("state").map(|e| e.expect("entry").path()).collect();
    assert_eq!(new.len(), 1, "{new:?}");
    assert!(new[0].to_string_lossy().contains('~'), "the new name is told apart from jörgen's: {new:?}");
    let old = state.join(format!("localhost_{port}_j_rgen"));
    std::fs::rename(&new[0], &old).expect("rename");
    std::fs::remove_file(old.join("account")).expect("owner record");

    pb.deliver("jürgen", &message(7));
    let (out, ev) = fetch(w, &juergen, &[]);
    assert!(out.status.success(), "{ev:?}");
    assert_eq!(count(&ev, "delivered"), 1, "only the new message: {ev:?}");
    assert!(ev.iter().any(|e| e["code"] == "state-renamed"), "{ev:?}");
    assert!(!old.exists() && new[0].join("journal").exists());
    assert_eq!(maildir(&w.join("m")).len(), 4);

    // With jörgen in the same accounts file, the old folder could be either's: it is set aside
    // and the mail downloaded again (into a fresh Maildir here, so that no file there is
    // recognised) rather than counted as the other account's.
    std::fs::rename(&new[0], &old).expect("rename");
    std::fs::remove_file(old.join("account")).expect("owner record");
    let fresh = juergen.replace(&format!("{}\"", w.join("m").display()), &format!("{}\"", w.join("m2").display()));
    let both = format!("{fresh}\n{}", fresh.replace("juergen]", "joergen]").replace("\"jürgen\"", "\"jörgen\""));
    let (_, ev) = fetch(w, &both, &["juergen"]);
    assert_eq!(count(&ev, "delivered"), 4, "{ev:?}");
    assert!(ev.iter().any(|e| e["message"].as_str().is_some_and(|m| m.contains("shared by accounts"))), "{ev:?}");
    assert!(state.join(format!("localhost_{port}_j_rgen.shared/journal")).exists());
}

#[test]
fn two_accounts_on_one_mailbox_or_a_broken_account_stop_only_themselves() {
    let mut pb = Pillarbox::new();
    pb.add_user("bob", "bob has a long password 2026");
    pb.deliver("alice", &message(1));
    pb.deliver("bob", &message(2));
    pb.start();
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let good = tls_account(&pb, "good", "", &w.join("good"));
    let twin = |name: &str| {
        tls_account(&pb, name, "", &w.join(name))
            .replace("\"alice\"", "\"bob\"")
            .replace(&format!("echo '{PASSWORD}'"), "echo 'bob has a long password 2026'")
    };
    // And one that says too little to be fetched (its host is missing).
    let broken =
        "[accounts.broken]\nusername = \"carol\"\npassword_env = \"X\"\ndeliver = { maildir = \"/nowhere\" }\n";
    let accounts = format!("{good}\n{}\n{}\n{broken}", twin("twin1"), twin("twin2"));
    let (out, ev) = fetch(w, &accounts, &[]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{said}");
    assert_eq!(count(&ev, "delivered"), 1, "the good account is fetched: {ev:?}");
    assert_eq!(maildir(&w.join("good")).len(), 1);
    for twin in ["twin1", "twin2"] {
        assert!(said.contains(&format!("account {twin} is not fetched")), "{said}");
        assert!(!w.join(twin).exists(), "{twin} was not touched");
    }
    assert_eq!(pb.stored("bob"), 1, "bob's mail stays on the server");
    assert!(said.contains("account broken is not fetched") && said.contains("missing field `host`"), "{said}");
    assert!(said.contains("accounts.toml, line "), "the place in the file: {said}");
    // Named on the command line, it is told the same way (not "no account named").
    let (out, _) = fetch(w, &accounts, &["broken"]);
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing field `host`"));

    // check examines every account and reports the two as failing their configuration.
    let out = Command::new(bin())
        .args(["check", "--json", "--accounts-file"])
        .arg(w.join("accounts.toml"))
        .arg("--state-dir")
        .arg(w.join("state"))
        .output()
        .expect("check");
    let reports: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert_eq!(reports.len(), 4, "{reports:?}");
    assert_eq!(out.status.code(), Some(1));
    for r in &reports {
        let config_failed =
            r["checks"].as_array().expect("checks").iter().any(|c| c["id"] == "config" && c["status"] == "fail");
        assert_eq!(config_failed, r["account"] != "good", "{r}");
    }
}

#[test]
fn the_fingerprint_serve_prints_and_the_one_openssl_prints_both_pin_the_server() {
    let pb = Pillarbox::new();
    pb.deliver("alice", &message(1));
    // serve says its certificate's fingerprint at start.
    let mut serve = common::KillOnDrop(
        Command::new(bin())
            .arg("--data-dir")
            .arg(pb.data())
            .args(["serve", "--pop3", "127.0.0.1:0", "--pop3s", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("serve"),
    );
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(serve.0.stdout.take().expect("stdout")));
    let (mut pop3s, mut printed) = (None, None);
    while printed.is_none() {
        let line = lines.next().expect("output").expect("line");
        if let Some(rest) = line.strip_prefix("pillarbox: pop3s listening on ") {
            pop3s = rest.split_whitespace().next().and_then(|a| a.parse::<std::net::SocketAddr>().ok());
        }
        if let Some((_, fp)) = line.split_once(" has fingerprint ") {
            printed = fp.split_whitespace().next().map(str::to_owned);
        }
    }
    std::thread::spawn(move || for _ in lines {});
    let printed = printed.expect("fingerprint");
    let ours = fingerprint(&pb.cert());
    assert_eq!(
        pillarbox_accounts::parse_fingerprint(&printed),
        pillarbox_accounts::parse_fingerprint(&ours),
        "{printed}"
    );
    assert!(printed.contains(':') && printed[7..].chars().all(|c| c == ':' || c.is_ascii_hexdigit()), "{printed}");
    // What openssl prints (`sha256 Fingerprint=AB:CD:...`) is accepted as it is.
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(pb.cert())
        .output()
        .expect("openssl");
    let openssl = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(openssl.to_ascii_lowercase().starts_with("sha256 fingerprint="), "{openssl}");
    let port = pop3s.expect("pop3s").port();
    for (i, pin) in [openssl.as_str(), printed.as_str()].iter().enumerate() {
        // Each in a state folder of its own (one mailbox, downloaded once per journal).
        let work = tempfile::tempdir().expect("tempdir");
        let w = work.path();
        let acct =
            account(&format!("pin{i}"), port, &format!("tls_fingerprint = \"{pin}\"\nkeep = \"keep\""), &w.join("m"));
        let (out, ev) = fetch(w, &acct, &[]);
        assert!(out.status.success(), "{pin}: {ev:?}");
        assert_eq!(count(&ev, "delivered"), 1, "{pin}");
    }
    drop(serve);
}

#[test]
fn an_oauth2_token_from_token_command_logs_in_with_oauthbearer_or_xoauth2() {
    require_tool("python3");
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    // A server that takes only OAUTHBEARER and XOAUTH2, as the large providers do.
    let (_server, port) = common::scripted_server("oauth", &w.join("deleted"));
    let with = |token: &str, extra: &str| {
        format!(
            "[accounts.oauth]\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\ninsecure = true\n\
             username = \"alice\"\ntoken_command = \"{token}\"\nkeep = \"keep\"\n{extra}\n\
             deliver = {{ maildir = \"{}\" }}\n",
            w.join("m").display()
        )
    };
    let mech = |ev: &[serde_json::Value]| ev.iter().find(|e| e["event"] == "connected").map(|e| e["mechanism"].clone());

    // auto: OAUTHBEARER, the standard one, when offered.
    let (out, ev) = fetch(w, &with("echo GOOD-TOKEN", ""), &[]);
    assert!(out.status.success(), "{ev:?}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(mech(&ev), Some("OAUTHBEARER".into()));
    assert_eq!(count(&ev, "delivered"), 3);
    // Chosen: XOAUTH2.
    let (out, ev) = fetch(w, &with("echo GOOD-TOKEN", "auth = \"xoauth2\""), &[]);
    assert!(out.status.success(), "{ev:?}");
    assert_eq!(mech(&ev), Some("XOAUTH2".into()));
    // A real token does not fit the 255-octet AUTH line: it goes in the two-line form (the server
    // refuses a longer line), for both mechanisms.
    for auth in ["oauthbearer", "xoauth2"] {
        let (out, ev) = fetch(w, &with("printf LONG-%0400d 0", &format!("auth = \"{auth}\"")), &[]);
        assert!(out.status.success(), "{auth}: {ev:?}");
    }
    // A token the server refuses: its error challenge is answered as each mechanism says, and
    // what the server said is reported; exit 77 like a refused password.
    for auth in ["oauthbearer", "xoauth2"] {
        let (out, ev) = fetch(w, &with("echo EXPIRED", &format!("auth = \"{auth}\"")), &[]);
        assert_eq!(out.status.code(), Some(77), "{auth}: {ev:?}");
        let error = ev.iter().find(|e| e["code"] == "auth-failed").expect("auth-failed")["message"].to_string();
        assert!(error.contains("invalid token") && error.contains("invalid_token"), "{auth}: {error}");
    }
    let mechs = std::fs::read_to_string(w.join("deleted.mechs")).expect("mechanisms used");
    assert_eq!(
        mechs.lines().collect::<Vec<_>>(),
        ["OAUTHBEARER", "XOAUTH2", "OAUTHBEARER", "XOAUTH2", "OAUTHBEARER", "XOAUTH2"]
    );

    // A token is not a password: with a password mechanism the account is refused as written.
    let (out, _) = fetch(w, &with("echo GOOD-TOKEN", "auth = \"plain\""), &[]);
    assert_eq!(out.status.code(), Some(78));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("token_command gives an OAuth2 token") && said.contains("auth"), "{said}");
    // check explains a refused token.
    std::fs::write(w.join("accounts.toml"), with("echo EXPIRED", "")).expect("accounts");
    let check = || {
        Command::new(bin())
            .args(["check", "--accounts-file"])
            .arg(w.join("accounts.toml"))
            .arg("--state-dir")
            .arg(w.join("state"))
            .output()
            .expect("check")
    };
    let out = check();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("refused the OAuth2 token for alice (OAUTHBEARER)") && text.contains("token_command"),
        "{text}"
    );
    // A token the server takes at AUTH and then refuses every command for (Microsoft's answer to
    // a token for another mailbox, or a mailbox without POP): check confirms with STAT and says so.
    std::fs::write(w.join("accounts.toml"), with("echo OTHER-MAILBOX", "")).expect("accounts");
    let out = check();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        text.contains("took the OAuth2 token at AUTH, then refused the mailbox of alice")
            && text.contains("not connected")
            && text.contains("POP is enabled"),
        "{text}"
    );
}

/// An account's Sieve rules file each fetched message once: into Maildir++ folders (made on
/// demand, flags in cur/), twice with :copy (one file, two links), or nowhere when discarded;
/// rules that fail leave the message in the inbox and say so. Every message, discarded ones
/// included, is deleted from the server once handled, and a second run fetches nothing.
#[test]
fn sieve_rules_file_flag_copy_and_discard_fetched_mail() {
    let mut pb = Pillarbox::new();
    let kinds = ["list", "spam", "shop", "broken", "archive", "plain"];
    for i in 0..24 {
        let kind = kinds[i % kinds.len()];
        let extra = match kind {
            "list" => "List-Id: The team <Team.lists.example.org>\r\n",
            "spam" => "X-Spam-Flag: YES\r\n",
            "shop" => "Delivered-To: alice+Shop@example.org\r\n",
            _ => "",
        };
        let text = format!("From: a@example.org\r\n{extra}Subject: {kind} {i}\r\n\r\nbody of {i}\r\n");
        pb.deliver("alice", text.as_bytes());
    }
    pb.start();
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    std::fs::write(
        w.join("rules.sieve"),
        r#"require ["fileinto", "variables", "imap4flags", "envelope", "subaddress", "copy"];
if header :is "X-Spam-Flag" "YES" { discard; stop; }
if header :matches "List-Id" "*<*.lists.example.org>" { fileinto :flags "\\Seen" "lists.${2}"; stop; }
if envelope :detail :matches "to" "*" { fileinto "tagged/${1}"; }
if header :contains "Subject" "broken" { fileinto "${nothing}"; }
if header :contains "Subject" "archive" { fileinto :copy "INBOX.Archive"; }
"#,
    )
    .expect("rules");
    let m = w.join("m");
    let acc = tls_account(&pb, "ruled", "sieve = \"rules.sieve\"", &m);
    let (out, events) = fetch(w, &acc, &[]);
    assert!(out.status.success(), "{}\n{events:?}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(count(&events, "delivered"), 24, "discarded messages are handled too");
    assert_eq!(pb.stored("alice"), 0, "every handled message is deleted from the server");
    let names = |dir: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        v.sort();
        v
    };
    let subjects = |dir: &Path| -> Vec<String> {
        let mut v: Vec<String> = names(dir)
            .iter()
            .map(|n| {
                let text = std::fs::read_to_string(dir.join(n)).expect("read");
                text.lines().find_map(|l| l.strip_prefix("Subject: ")).expect("subject").to_owned()
            })
            .collect();
        v.sort_by_key(|s| s.split(' ').nth(1).and_then(|n| n.parse::<u32>().ok()));
        v
    };
    assert_eq!(subjects(&m.join(".lists.Team/cur")), ["list 0", "list 6", "list 12", "list 18"]);
    assert!(names(&m.join(".lists.Team/cur")).iter().all(|n| n.ends_with(":2,S")), "\\Seen is S");
    assert!(names(&m.join(".lists.Team/new")).is_empty());
    assert!(m.join(".lists.Team/maildirfolder").exists());
    assert_eq!(subjects(&m.join(".tagged.Shop/new")), ["shop 2", "shop 8", "shop 14", "shop 20"]);
    assert_eq!(subjects(&m.join(".Archive/new")), ["archive 4", "archive 10", "archive 16", "archive 22"]);
    assert_eq!(
        subjects(&m.join("new")),
        [
            "broken 3",
            "archive 4",
            "plain 5",
            "broken 9",
            "archive 10",
            "plain 11",
            "broken 15",
            "archive 16",
            "plain 17",
            "broken 21",
            "archive 22",
            "plain 23"
        ]
    );
    assert!(names(&m.join("cur")).is_empty() && names(&m.join("tmp")).is_empty());
    // :copy is one file with two names.
    use std::os::unix::fs::MetadataExt;
    let archived = names(&m.join(".Archive/new"));
    let inode = |p: PathBuf| std::fs::metadata(p).expect("stat").ino();
    assert_eq!(inode(m.join(".Archive/new").join(&archived[0])), inode(m.join("new").join(&archived[0])));
    // The failing rule is told, message by message.
    let warned = events.iter().filter(|e| e["event"] == "warning" && e["code"] == "sieve").count();
    assert_eq!(warned, 4, "{events:?}");
    // Nothing comes twice.
    let (_, again) = fetch(w, &acc, &[]);
    assert_eq!(count(&again, "delivered"), 0);
    let show = Command::new(bin())
        .args(["account", "show", "ruled", "--accounts-file"])
        .arg(w.join("accounts.toml"))
        .output()
        .expect("account show");
    let shown = String::from_utf8_lossy(&show.stdout);
    assert!(
        shown.contains(&format!("rules     {} (Sieve; requires copy, envelope", w.join("rules.sieve").display())),
        "{shown}"
    );
    // The folders are listed and searched with the inbox, and one at a time.
    let mail = |args: &[&str]| mail_json(w, args);
    assert_eq!(mail(&["list"]).len(), 24, "4 in lists.Team, 4 in tagged.Shop, 4 in Archive, 12 in the inbox");
    assert_eq!(folder_of(&mail(&["list", "--folder", "lists.Team"])), ["lists.Team"; 4]);
    assert_eq!(folder_of(&mail(&["list", "--folder", "INBOX"])), ["-"; 12]);
    assert_eq!(folder_of(&mail(&["search", "--folder", "INBOX.tagged/Shop", "shop"])), ["tagged.Shop"; 4]);
    assert_eq!(folder_of(&mail(&["search", "archive"])).iter().filter(|f| *f == "Archive").count(), 4);

    // A script that does not compile is the account's configuration error: file and line.
    std::fs::write(w.join("rules.sieve"), "require \"fileinto\";\nfileinto :bogus \"x\";\n").expect("rules");
    let (out, _) = fetch(w, &acc, &[]);
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("field `accounts.ruled.sieve`") && err.contains("rules.sieve, line 2: fileinto has no tag :bogus"),
        "{err}"
    );
}

/// A message with `attachment` as a base64 MIME part (where clamd's mail parser finds it).
fn with_attachment(n: usize, attachment: &[u8]) -> Vec<u8> {
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(attachment);
    format!(
        "From: a@example.org\r\nSubject: note {n}\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nbody of {n}\r\n\
         --b\r\nContent-Type: application/octet-stream; name=\"file.com\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{encoded}\r\n--b--\r\n"
    )
    .into_bytes()
}

/// With `[antivirus]`, clamd (the real daemon, with the test's signature) scans every message
/// as it downloads: infected ones are filed in Quarantine (a Maildir++ folder, or an mbox folder
/// file), never the inbox, reported one by one and in the summary, and deleted from the server
/// as `keep` says. With clamd stopped, a message stays on the server (`on_unavailable =
/// "defer"`) or is stored with a warning (`"accept"`); nothing is passed silently.
#[test]
fn clamd_scans_fetched_mail_into_quarantine_and_never_the_inbox() {
    use pillarbox_testclamd::{EICAR, TestClamd};
    let _busy = TIMING.write().unwrap_or_else(std::sync::PoisonError::into_inner);
    for mbox in [false, true] {
        let mut clamd = TestClamd::start(&[("Eicar-Test", EICAR)], 64 << 20);
        let mut pb = Pillarbox::new();
        for i in 0..8 {
            let text = if i % 3 == 1 { with_attachment(i, EICAR) } else { with_attachment(i, b"harmless\n") };
            pb.deliver("alice", &text);
        }
        pb.start();
        let work = tempfile::tempdir().expect("tempdir");
        let w = work.path();
        let store = w.join("Mail");
        let acc = if mbox { tls_mbox_account(&pb, "scanned", &store) } else { tls_account(&pb, "scanned", "", &store) };
        let with = |socket: &Path, unavailable: &str| {
            format!("{acc}\n[antivirus]\nclamd = \"{}\"\non_unavailable = \"{unavailable}\"\n", socket.display())
        };
        let (out, events) = fetch(w, &with(&clamd.socket, "defer"), &[]);
        assert!(out.status.success(), "{}\n{events:?}", String::from_utf8_lossy(&out.stderr));
        let quarantined: Vec<&serde_json::Value> = events.iter().filter(|e| e["event"] == "quarantined").collect();
        assert_eq!(quarantined.len(), 3, "mbox {mbox}: {events:?}");
        assert!(quarantined.iter().all(|e| e["signature"] == "Eicar-Test.UNOFFICIAL"), "{quarantined:?}");
        let summary = events.iter().find(|e| e["event"] == "summary").expect("summary");
        assert_eq!((summary["delivered"].clone(), summary["quarantined"].clone()), (5.into(), 3.into()));
        assert_eq!(pb.stored("alice"), 0, "keep = \"delete\": the infected ones go from the server too");
        let subjects = |folder: &str| -> Vec<String> {
            let mut s: Vec<String> = mail_json(w, &["list", "--folder", folder])
                .iter()
                .map(|m| m["subject"].as_str().unwrap_or_default().to_owned())
                .collect();
            s.sort();
            s
        };
        assert_eq!(subjects("Quarantine"), ["note 1", "note 4", "note 7"], "mbox {mbox}");
        assert_eq!(subjects("INBOX"), ["note 0", "note 2", "note 3", "note 5", "note 6"]);
        let quarantine = if mbox { w.join("Mail.folders/Quarantine") } else { store.join(".Quarantine") };
        assert!(quarantine.exists(), "{}", quarantine.display());

        // clamd goes away: nothing is stored unscanned unless the account file says so.
        clamd.stop();
        for i in 10..12 {
            pb.deliver("alice", &with_attachment(i, b"harmless\n"));
        }
        let (out, events) = fetch(w, &with(&clamd.socket, "defer"), &[]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let unscanned = events.iter().filter(|e| e["event"] == "warning" && e["code"] == "unscanned").count();
        assert_eq!((unscanned, count(&events, "delivered")), (2, 0), "{events:?}");
        assert_eq!(pb.stored("alice"), 2, "left on the server for the next run");
        assert_eq!(subjects("INBOX").len(), 5);
        let (out, events) = fetch(w, &with(&clamd.socket, "accept"), &[]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let unscanned = events.iter().filter(|e| e["event"] == "warning" && e["code"] == "unscanned").count();
        assert_eq!((unscanned, count(&events, "delivered")), (2, 2), "{events:?}");
        assert_eq!((pb.stored("alice"), subjects("INBOX").len()), (0, 7));
    }
}

/// clamd stopped in the middle of a fetch: every message is either stored after a verdict or
/// still on the server (with a warning each), none is lost and none reaches the inbox unscanned.
/// An MDA is given a message only once it is known clean: an infected one stays on the server.
#[test]
fn clamd_stopped_mid_run_leaves_every_unscanned_message_on_the_server() {
    use pillarbox_testclamd::{EICAR, TestClamd};
    use std::io::BufRead;
    let _busy = TIMING.write().unwrap_or_else(std::sync::PoisonError::into_inner);
    let total = 400;
    let mut clamd = TestClamd::start(&[("Eicar-Test", EICAR)], 64 << 20);
    let CrashSetup { pb, work, account, accounts_file } = crash_setup(total, "scanned", "");
    let w = work.path();
    let settings = format!("{account}\n[antivirus]\nclamd = \"{}\"\n", clamd.socket.display());
    std::fs::write(&accounts_file, &settings).expect("accounts");
    // Batches of at most 32 messages (a low limit on open files), each commit held 200 ms: clamd
    // goes once the first batch is in, with most messages still to download.
    require_tool("prlimit");
    let mut child = Command::new("prlimit")
        .args(["--nofile=128:128", "--"])
        .arg(bin())
        .args(["fetch", "--json", "--accounts-file"])
        .arg(&accounts_file)
        .arg("--state-dir")
        .arg(w.join("state"))
        .env("PILLARBOX_TEST_COMMIT_PAUSE_MS", "200")
        .stdout(Stdio::piped())
        .spawn()
        .expect("fetch");
    let mut events = Vec::new();
    let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    for line in lines.by_ref() {
        let e: serde_json::Value = serde_json::from_str(&line.expect("line")).expect("json");
        let first = e["event"] == "delivered";
        events.push(e);
        if first {
            clamd.stop();
            break;
        }
    }
    events.extend(lines.map(|l| serde_json::from_str::<serde_json::Value>(&l.expect("line")).expect("json")));
    assert!(child.wait().expect("wait").success(), "{events:?}");
    let stored = maildir(&w.join("m")).len();
    let left = pb.stored("alice");
    let unscanned = events.iter().filter(|e| e["event"] == "warning" && e["code"] == "unscanned").count();
    assert_eq!(stored, count(&events, "delivered"));
    assert!(stored >= 8 && left >= total / 2, "stored {stored}, left {left}");
    assert_eq!((stored + left, unscanned), (total, left), "each message stored or on the server, and said so");
    drop(pb);

    // An MDA gets the clean messages only.
    let clamd = TestClamd::start(&[("Eicar-Test", EICAR)], 64 << 20);
    let mut pb = Pillarbox::new();
    for i in 0..3 {
        pb.deliver("alice", &with_attachment(i, if i == 1 { EICAR } else { b"fine\n" }));
    }
    pb.start();
    let out_dir = w.join("mda");
    std::fs::create_dir(&out_dir).expect("mda dir");
    let mda = tls_account(&pb, "piped", "", &w.join("unused")).replace(
        &format!("{{ maildir = \"{}\" }}", w.join("unused").display()),
        &format!("{{ mda = \"cat > {}/$$.eml\" }}", out_dir.display()),
    );
    let (out, events) =
        fetch(&w.join("mda"), &format!("{mda}\n[antivirus]\nclamd = \"{}\"\n", clamd.socket.display()), &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let infected = events.iter().filter(|e| e["event"] == "warning" && e["code"] == "infected").count();
    assert_eq!((count(&events, "delivered"), infected), (2, 1), "{events:?}");
    let given: Vec<String> = std::fs::read_dir(&out_dir)
        .expect("mda dir")
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "eml"))
        .map(|e| std::fs::read_to_string(e.path()).expect("read"))
        .collect();
    assert_eq!(given.len(), 2);
    assert!(given.iter().all(|m| !m.contains("Subject: note 1")), "the infected one is not given");
    assert_eq!(pb.stored("alice"), 1, "it stays on the server");
}
