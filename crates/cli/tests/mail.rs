//! `pillarbox mail list|show`: the local store read offline, on messages as mail programs write
//! them (RFC 2047 encoded headers, multipart/alternative with HTML, base64 attachments).

mod common;

use std::path::Path;
use std::process::Command;

use base64::Engine as _;
use common::bin;

/// A small PDF-like attachment (any bytes will do).
const BLOB: &[u8] = b"%PDF-1.4\n\x00\x01\x02binary\xff\xfe attachment bytes\n";

fn messages() -> Vec<(&'static str, String)> {
    let b64 = base64::engine::general_purpose::STANDARD.encode(BLOB);
    vec![
        (
            "1790000001.M1P1.host,S=0:2,S",
            "From: =?UTF-8?Q?J=C3=BCrgen_M=C3=BCller?= <jm@example.de>\r\nTo: me@example.org\r\n\
             Subject: =?UTF-8?B?R3LDvMOfZSBhdXMgQmVybGlu?=\r\nDate: Mon, 02 Nov 2026 10:00:00 +0100\r\n\
             Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n\
             Sch=C3=B6ne Gr=C3=BC=C3=9Fe.\r\n"
                .to_owned(),
        ),
        (
            "1790000002.M2P1.host,S=0",
            "From: Shop <news@shop.example>\r\nTo: me@example.org\r\nSubject: Offers\r\n\
             Date: Tue, 10 Nov 2026 08:00:00 +0000\r\nMIME-Version: 1.0\r\n\
             Content-Type: multipart/alternative; boundary=\"alt\"\r\n\r\n--alt\r\n\
             Content-Type: text/html; charset=utf-8\r\n\r\n<html><body><p>Big &amp; small</p><ul><li>one</li>\
             <li>two</li></ul></body></html>\r\n--alt--\r\n"
                .to_owned(),
        ),
        (
            "1790000003.M3P1.host,S=0",
            format!(
                "From: Ann <ann@example.org>\r\nTo: me@example.org\r\nSubject: The report\r\n\
                 Date: Wed, 25 Nov 2026 09:30:00 +0000\r\nMIME-Version: 1.0\r\n\
                 Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\n\
                 Content-Type: text/plain; charset=us-ascii\r\n\r\nHere it is.\r\n--b1\r\n\
                 Content-Type: application/pdf; name=\"report.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\
                 Content-Disposition: attachment; filename=\"report.pdf\"\r\n\r\n{b64}\r\n--b1--\r\n"
            ),
        ),
    ]
}

fn setup(dir: &Path) -> String {
    let md = dir.join("Mail/home");
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(md.join(sub)).expect("mkdir");
    }
    for (name, text) in messages() {
        let sub = if name.contains(':') { "cur" } else { "new" };
        std::fs::write(md.join(sub).join(name), text).expect("write");
    }
    local_account(dir, &md)
}

/// An accounts file in `dir` with one account, `home`, delivering into the Maildir `md` (never
/// fetched from: these tests read the local store only).
fn local_account(dir: &Path, md: &Path) -> String {
    let accounts = dir.join("accounts.toml");
    std::fs::write(
        &accounts,
        format!(
            "[accounts.home]\nhost = \"pop.example.org\"\nusername = \"me\"\npassword_env = \"X\"\n\
             deliver = {{ maildir = \"{}\" }}\n",
            md.display()
        ),
    )
    .expect("accounts");
    accounts.display().to_string()
}

fn mail(accounts: &str, args: &[&str]) -> String {
    // The default index lives under XDG_STATE_HOME: the test's own folder, not the home's.
    let folder = Path::new(accounts).parent().expect("folder");
    let out = Command::new(bin())
        .arg("mail")
        .args(args)
        .args(["--accounts-file", accounts])
        .env("XDG_STATE_HOME", folder.join("xdg-state"))
        .env("XDG_RUNTIME_DIR", folder.join("xdg-runtime"))
        .stdin(std::process::Stdio::null())
        .output()
        .expect("mail");
    assert!(out.status.success(), "mail {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("UTF-8")
}

fn json_lines(s: &str) -> Vec<serde_json::Value> {
    s.lines().map(|l| serde_json::from_str(l).expect("JSON")).collect()
}

#[test]
fn list_decodes_headers_newest_first_and_filters() {
    let dir = tempfile::tempdir().expect("tempdir");
    let acc = setup(dir.path());
    let all = json_lines(&mail(&acc, &["list", "--json"]));
    let subjects: Vec<&str> = all.iter().map(|m| m["subject"].as_str().unwrap_or_default()).collect();
    assert_eq!(subjects, ["The report", "Offers", "Grüße aus Berlin"]);
    assert_eq!(all[2]["from"], "Jürgen Müller <jm@example.de>");
    assert_eq!((all[0]["attachments"].as_u64(), all[1]["attachments"].as_u64()), (Some(1), Some(0)));
    assert_eq!(all[0]["account"], "home");
    assert_eq!(json_lines(&mail(&acc, &["list", "--json", "--limit", "1"])).len(), 1);
    let since = json_lines(&mail(&acc, &["list", "--json", "--since", "2026-11-10"]));
    assert_eq!(since.len(), 2);
    let from = json_lines(&mail(&acc, &["list", "--json", "--from", "MÜLLER"]));
    assert_eq!(from.len(), 1, "{from:?}");
    let text = mail(&acc, &["list"]);
    let lines: Vec<&str> = text.lines().collect();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(header, ["ID", "DATE", "ACCOUNT", "FROM", "SUBJECT", "SIZE", "ATTACHED"], "{text}");
    let first = lines[1];
    assert!(first.contains("2026-11-25 09:30") && first.contains("  home  ") && first.contains("The report"), "{text}");
    assert!(first.trim_end().ends_with(" 1"), "one attachment: {text}");
    assert!(lines[3].contains("Jürgen Müller") && !lines[3].contains("jm@example.de"), "{text}");
}

#[test]
fn show_gives_text_html_as_text_attachments_and_raw_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let acc = setup(dir.path());
    let all = json_lines(&mail(&acc, &["list", "--json"]));
    let id = |i: usize| all[i]["id"].as_str().expect("id").to_owned();
    let greeting = mail(&acc, &["show", &id(2)]);
    assert!(greeting.contains("Subject: Grüße aus Berlin") && greeting.contains("Schöne Grüße."), "{greeting}");
    let html = mail(&acc, &["show", &id(1)[..8]]);
    assert!(html.contains("Big & small\n") && html.contains("* one\n* two"), "{html}");
    assert!(!html.contains("<li>") && !html.contains("</p>") && !html.contains("&amp;"), "{html}");
    let report = mail(&acc, &["show", &id(0)]);
    assert!(report.contains("Here it is.") && report.contains("report.pdf  application/pdf"), "{report}");
    let raw =
        Command::new(bin()).args(["mail", "show", &id(0), "--raw", "--accounts-file", &acc]).output().expect("raw");
    assert_eq!(String::from_utf8_lossy(&raw.stdout), messages()[2].1);
    let saved = dir.path().join("saved");
    mail(&acc, &["show", &id(0), "--save-attachments", &saved.display().to_string()]);
    assert_eq!(std::fs::read(saved.join("report.pdf")).expect("saved"), BLOB);
    // An unknown id is an error that says so.
    let out =
        Command::new(bin()).args(["mail", "show", "ffffffffffff", "--accounts-file", &acc]).output().expect("show");
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no message with an id"));
}

#[test]
fn export_writes_an_mboxrd_file_that_mail_readers_split_correctly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let acc = setup(dir.path());
    // A body line that looks like an mbox separator, and one already quoted.
    std::fs::write(
        dir.path().join("Mail/home/new/1790000004.M4P1.host,S=0"),
        "From: Bo <bo@example.org>\r\nSubject: quoting\r\nDate: Thu, 26 Nov 2026 08:00:00 +0000\r\n\r\n\
         From the start of a line\r\n>From a quoted line\r\nlast line\r\n",
    )
    .expect("write");
    let mbox = dir.path().join("out.mbox");
    let said = mail(&acc, &["export", "--mbox", &mbox.display().to_string()]);
    assert!(said.contains("wrote 4 messages"), "{said}");
    let text = std::fs::read_to_string(&mbox).expect("mbox");
    assert!(text.contains("\n>From the start of a line\n>>From a quoted line\nlast line\n\n"), "{text}");
    // Python's mailbox module (a mail reader of its own) finds the four messages, oldest first.
    let script = "import mailbox, sys\nfor m in mailbox.mbox(sys.argv[1]): print(m['Subject'])\n";
    let out = Command::new("python3").args(["-c", script]).arg(&mbox).output().expect("python3");
    let subjects = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        subjects.lines().collect::<Vec<_>>(),
        ["=?UTF-8?B?R3LDvMOfZSBhdXMgQmVybGlu?=", "Offers", "The report", "quoting"],
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // An existing file is never replaced.
    let out = Command::new(bin())
        .args(["mail", "export", "--mbox"])
        .arg(&mbox)
        .args(["--accounts-file", &acc])
        .output()
        .expect("export");
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("exists already"));
}

#[test]
fn import_from_mbox_and_maildir_skips_what_is_already_there() {
    let dir = tempfile::tempdir().expect("tempdir");
    let acc = setup(dir.path());
    let mbox = dir.path().join("all.mbox");
    mail(&acc, &["export", "--mbox", &mbox.display().to_string()]);
    // A second account with an empty Maildir.
    let other = dir.path().join("Mail/other");
    let text = std::fs::read_to_string(&acc).expect("accounts");
    std::fs::write(
        &acc,
        format!(
            "{text}\n[accounts.other]\nhost = \"pop.example.net\"\nusername = \"me\"\npassword_env = \"X\"\n\
             deliver = {{ maildir = \"{}\" }}\n",
            other.display()
        ),
    )
    .expect("accounts");
    let said = mail(&acc, &["import", &mbox.display().to_string(), "other"]);
    assert!(said.contains("3 added to other") && said.contains("0 already there"), "{said}");
    // Imported mail is the owner's alone, whatever the umask (it was written with it).
    for f in std::fs::read_dir(other.join("new")).expect("new") {
        let mode = std::os::unix::fs::PermissionsExt::mode(&f.expect("entry").metadata().expect("meta").permissions());
        assert_eq!(mode & 0o777, 0o600, "imported message mode");
    }
    // Again, and from the first account's Maildir (the same mail with CRLF line ends): nothing new.
    let said = mail(&acc, &["import", &mbox.display().to_string(), "other"]);
    assert!(said.contains("0 added") && said.contains("3 already there"), "{said}");
    let said = mail(&acc, &["import", &dir.path().join("Mail/home").display().to_string(), "other"]);
    assert!(said.contains("0 added") && said.contains("3 already there"), "{said}");
    // The imported copies read like the originals.
    let listed = json_lines(&mail(&acc, &["list", "other", "--json"]));
    let subjects: Vec<&str> = listed.iter().map(|m| m["subject"].as_str().unwrap_or_default()).collect();
    assert_eq!(subjects, ["The report", "Offers", "Grüße aus Berlin"]);
    let report = mail(&acc, &["show", listed[0]["id"].as_str().expect("id")]);
    assert!(report.contains("Here it is.") && report.contains("report.pdf"), "{report}");
    // Two accounts need a name.
    let out = Command::new(bin())
        .args(["mail", "import"])
        .arg(&mbox)
        .args(["--accounts-file", &acc])
        .output()
        .expect("import");
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("name the account"));
}

fn search(acc: &str, index: &Path, query: &[&str]) -> Vec<String> {
    let out = Command::new(bin())
        .args(["mail", "search", "--json", "--accounts-file", acc, "--index"])
        .arg(index)
        .args(query)
        .output()
        .expect("search");
    // Exit 1, like grep, when nothing matches; nothing said besides with --json.
    let nothing = out.status.code() == Some(1) && out.stdout.is_empty() && out.stderr.is_empty();
    assert!(out.status.success() || nothing, "search {query:?}: {}", String::from_utf8_lossy(&out.stderr));
    json_lines(&String::from_utf8_lossy(&out.stdout))
        .iter()
        .map(|m| m["subject"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Rows in the index, read with Python's own SQLite module.
fn indexed(index: &Path) -> usize {
    let out = Command::new("python3")
        .args(["-c", "import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute('select count(*) from messages').fetchone()[0])"])
        .arg(index)
        .output()
        .expect("python3");
    String::from_utf8_lossy(&out.stdout).trim().parse().expect("a count")
}

#[test]
fn search_finds_words_and_terms_and_follows_the_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let acc = setup(dir.path());
    let index = dir.path().join("state/search.sqlite");
    assert_eq!(search(&acc, &index, &["small"]), ["Offers"], "HTML text is indexed as text");
    assert_eq!(search(&acc, &index, &["schöne"]), ["Grüße aus Berlin"]);
    assert_eq!(search(&acc, &index, &["from:muller"]), ["Grüße aus Berlin"], "diacritics fold");
    assert_eq!(search(&acc, &index, &["subject:report"]), ["The report"]);
    assert_eq!(search(&acc, &index, &["to:me@example.org", "after:2026-11-10"]), ["The report", "Offers"]);
    assert_eq!(search(&acc, &index, &["before:2026-11-10"]), ["Grüße aus Berlin"]);
    assert!(search(&acc, &index, &["nothing-like-this"]).is_empty());
    assert_eq!(search(&acc, &index, &["grüsse"]), ["Grüße aus Berlin"], "ß is ss");
    assert_eq!(search(&acc, &index, &["subject:GRÜẞE"]), ["Grüße aus Berlin"]);
    assert_eq!(search(&acc, &index, &["pdf"]), ["The report"], "attachment names are indexed");
    assert_eq!(search(&acc, &index, &["attachment:report.pdf"]), ["The report"]);
    assert!(search(&acc, &index, &["attachment:here"]).is_empty(), "only names, in that field");
    // Without --json, a search that finds nothing says so.
    let out = Command::new(bin())
        .args(["mail", "search", "--accounts-file", &acc, "--index"])
        .arg(&index)
        .args(["nothing-like-this"])
        .output()
        .expect("search");
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert_eq!(String::from_utf8_lossy(&out.stderr).trim(), "no message matches nothing-like-this");
    assert_eq!(indexed(&index), 3);
    // New mail and removed mail are seen at the next search.
    let md = dir.path().join("Mail/home");
    std::fs::write(
        md.join("new/1790000009.M9P1.host,S=0"),
        "From: Zed <zed@example.org>\r\nSubject: Budget 2027\r\nDate: Thu, 26 Nov 2026 11:00:00 +0000\r\n\r\nNumbers.\r\n",
    )
    .expect("write");
    let gone = std::fs::read_dir(md.join("new"))
        .expect("new")
        .flatten()
        .find(|e| std::fs::read_to_string(e.path()).is_ok_and(|t| t.contains("Subject: Offers")));
    std::fs::remove_file(gone.expect("the Offers file").path()).expect("remove");
    assert_eq!(search(&acc, &index, &["budget"]), ["Budget 2027"]);
    assert!(search(&acc, &index, &["small"]).is_empty());
    assert_eq!(indexed(&index), 3);
    // A damaged index (a database whose pages are garbage) is rebuilt: it is only a cache.
    let mut damaged = b"SQLite format 3\0".to_vec();
    damaged.extend_from_slice(&[0x5a; 8192]);
    std::fs::write(&index, &damaged).expect("write");
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", index.display()));
    }
    assert_eq!(search(&acc, &index, &["numbers"]), ["Budget 2027"]);
    assert_eq!(indexed(&index), 3);
    // A file that is no index at all is refused and left as it was (it was once deleted).
    let notes = dir.path().join("notes.txt");
    std::fs::write(&notes, "not a database").expect("write");
    let out = Command::new(bin())
        .args(["mail", "search", "--accounts-file", &acc, "--index"])
        .arg(&notes)
        .arg("numbers")
        .output()
        .expect("search");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a Pillarbox search index"), "{out:?}");
    assert_eq!(std::fs::read_to_string(&notes).expect("kept"), "not a database");
}

/// An accounts file with one account, `home`, fetching alice's mail from `pb` and delivering
/// as `deliver` says (`maildir = "..."` or `mbox = "..."`).
fn fetching_account(pb: &common::Pillarbox, dir: &Path, deliver: &str) -> String {
    let acc = dir.join("accounts.toml");
    std::fs::write(
        &acc,
        format!(
            "[accounts.home]\nhost = \"localhost\"\nport = {}\nusername = \"alice\"\npassword_command = \"echo '{}'\"\n\
             ca_file = \"{}\"\ndeliver = {{ {deliver} }}\n",
            pb.pop3s.expect("pop3s").port(),
            common::PASSWORD,
            pb.cert().display(),
        ),
    )
    .expect("accounts");
    acc.display().to_string()
}

/// `pillarbox fetch` for that account, with fetch's state in `dir` and the search index `index`.
fn fetch(acc: &str, dir: &Path, index: &Path) {
    let out = Command::new(bin())
        .args(["fetch", "--quiet", "--accounts-file", acc, "--state-dir"])
        .arg(dir.join("state"))
        .env("PILLARBOX_SEARCH_INDEX", index)
        .output()
        .expect("fetch");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_fetch_brings_an_existing_search_index_up_to_date() {
    let mut pb = common::Pillarbox::new();
    pb.deliver("alice", b"Subject: fetched one\n\nabout the harbour\n");
    pb.deliver("alice", b"Subject: fetched two\n\nabout the lighthouse\n");
    pb.start();
    let dir = tempfile::tempdir().expect("tempdir");
    let md = dir.path().join("Mail");
    let acc = fetching_account(&pb, dir.path(), &format!("maildir = \"{}\"", md.display()));
    let index = dir.path().join("search.sqlite");
    // Searching once creates the (empty) index...
    assert!(search(&acc, &index, &["harbour"]).is_empty());
    assert_eq!(indexed(&index), 0);
    // ...which every fetch from then on keeps current, without a search.
    fetch(&acc, dir.path(), &index);
    assert_eq!(indexed(&index), 2);
    assert_eq!(search(&acc, &index, &["lighthouse"]), ["fetched two"]);
}

/// The whole offline-reading path on generated mail: every message listed with its decoded
/// sender, subject, date and attachment count; shown with its text and attachments; found by its
/// own word and by header terms.
#[test]
fn generated_mail_is_listed_shown_and_found_as_generated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let md = dir.path().join("Mail/home");
    let generated = common::genmail::fill(&md, 7, 0, 120);
    let acc = local_account(dir.path(), &md);
    let listed = json_lines(&mail(&acc, &["list", "--json"]));
    assert_eq!(listed.len(), generated.len());
    let mut by_date = generated.clone();
    by_date.sort_by_key(|g| std::cmp::Reverse(g.date));
    for (l, g) in listed.iter().zip(&by_date) {
        assert_eq!(l["subject"], g.subject.as_str(), "{l}");
        assert_eq!(l["from"], format!("{} <{}>", g.from_name, g.from_addr).as_str(), "{l}");
        assert_eq!(l["date"].as_u64(), Some(g.date), "{l}");
        assert_eq!(l["attachments"].as_u64(), Some(g.attachments.len() as u64), "{l}");
        assert_eq!(l["size"].as_u64(), Some(g.bytes.len() as u64), "{l}");
    }
    // Shown: the text (from HTML when there is no text part) and the attachments as generated.
    for (l, g) in listed.iter().zip(&by_date).filter(|(_, g)| g.html_only || !g.attachments.is_empty()).take(12) {
        let shown: serde_json::Value =
            serde_json::from_str(&mail(&acc, &["show", "--json", l["id"].as_str().expect("id")])).expect("JSON");
        let text = shown["text"].as_str().expect("text");
        assert!(text.contains(&g.sentence), "{text:?} lacks {:?}", g.sentence);
        assert!(!text.contains("<p>") && !text.contains("color: #333"), "{text:?}");
        let atts: Vec<(String, String, usize)> = shown["attachments"]
            .as_array()
            .expect("attachments")
            .iter()
            .map(|a| {
                (
                    a["name"].as_str().expect("name").to_owned(),
                    a["mime"].as_str().expect("mime").to_owned(),
                    a["size"].as_u64().expect("size") as usize,
                )
            })
            .collect();
        assert_eq!(atts, g.attachments);
    }
    // Found: by a word only its text has, by sender (encoded in the header), by subject term.
    let index = dir.path().join("search.sqlite");
    for g in generated.iter().step_by(17) {
        assert_eq!(search(&acc, &index, &[&g.word]), std::slice::from_ref(&g.subject), "{}", g.word);
    }
    let zoe = search(&acc, &index, &["from:Ångström"]);
    assert_eq!(zoe.len(), generated.iter().filter(|g| g.from_name.contains("Ångström")).count());
    assert!(!zoe.is_empty());
    let streets = generated.iter().filter(|g| g.subject.contains("Straße")).count();
    assert_eq!(search(&acc, &index, &["subject:straße"]).len(), streets.min(50));
}

/// An account that delivers into an mbox file: fetched mail is listed, shown and found; more mail
/// appended is added to the index, and a rewrite by another mail program (a message removed) is
/// followed.
#[test]
fn mbox_accounts_are_read_too() {
    let mut pb = common::Pillarbox::new();
    let mut rng = common::genmail::Rng::new(21);
    let first: Vec<_> = (0..6).map(|i| common::genmail::message(&mut rng, i, 1_790_000_000)).collect();
    for m in &first {
        pb.deliver("alice", &m.bytes);
    }
    pb.start();
    let dir = tempfile::tempdir().expect("tempdir");
    let mbox = dir.path().join("inbox.mbox");
    let acc = fetching_account(&pb, dir.path(), &format!("mbox = \"{}\"", mbox.display()));
    let index = dir.path().join("search.sqlite");
    fetch(&acc, dir.path(), &index);
    let list = |args: &[&str]| {
        let mut all = vec!["list", "--json", "--index"];
        let i = index.display().to_string();
        all.push(&i);
        all.extend(args);
        json_lines(&mail(&acc, &all))
    };
    let listed = list(&[]);
    assert_eq!(listed.len(), 6);
    let mut subjects: Vec<&str> = listed.iter().map(|m| m["subject"].as_str().expect("subject")).collect();
    subjects.sort();
    let mut expected: Vec<&str> = first.iter().map(|g| g.subject.as_str()).collect();
    expected.sort();
    assert_eq!(subjects, expected);
    let with_attachment = first.iter().find(|g| !g.attachments.is_empty()).expect("one with an attachment");
    let id = listed.iter().find(|m| m["subject"] == with_attachment.subject.as_str()).expect("listed")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let shown = mail(&acc, &["show", &id]);
    assert!(shown.contains(&with_attachment.sentence) && shown.contains(&with_attachment.attachments[0].0), "{shown}");
    assert_eq!(search(&acc, &index, &[&first[1].word]), std::slice::from_ref(&first[1].subject));

    // More mail, appended by the next fetch.
    let more = common::genmail::message(&mut rng, 50, 1_790_000_000);
    pb.deliver("alice", &more.bytes);
    fetch(&acc, dir.path(), &index);
    assert_eq!(list(&[]).len(), 7);
    assert_eq!(search(&acc, &index, &[&more.word]), std::slice::from_ref(&more.subject));

    // Another program rewrites the mbox without its first message.
    let data = std::fs::read(&mbox).expect("mbox");
    let second = data.windows(6).skip(1).position(|w| w == b"\nFrom ").expect("a second message") + 2;
    std::fs::write(&mbox, &data[second..]).expect("rewrite");
    let after = list(&[]);
    assert_eq!(after.len(), 6);
    let found: usize = first.iter().chain([&more]).map(|g| search(&acc, &index, &[&g.word]).len()).sum();
    assert_eq!(found, 6, "each remaining message is found once, the removed one not at all");
    for m in &after {
        let raw = Command::new(bin())
            .args(["mail", "show", "--raw", m["id"].as_str().expect("id"), "--accounts-file", &acc])
            .output()
            .expect("show");
        assert!(
            raw.status.success() && raw.stdout.starts_with(b"Return-Path:"),
            "{}",
            String::from_utf8_lossy(&raw.stderr)
        );
    }
}

/// Every file under `dir`, its bytes.
fn all_bytes(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(all_bytes(&p));
        } else if let Ok(b) = std::fs::read(&p) {
            out.push((p, b));
        }
    }
    out
}

/// An encrypted store: the key made with a passphrase, its public half in the account; after a
/// fetch no subject, sender or word of text is in any byte under the store, fetch's state or the
/// search index; `mail list`, `search` and `show` give what they give for the same mail kept in
/// plaintext, once the passphrase opens the key, and refuse without it.
#[test]
fn an_encrypted_store_holds_no_plaintext_and_reads_as_a_plaintext_one() {
    let mut pb = common::Pillarbox::new();
    let words = ["Quetzalcoatl", "Zanzibarian", "Xylophonist"];
    for (i, w) in words.iter().enumerate() {
        let text = format!(
            "From: Sender{i} <sender{i}@{w}.example>\nSubject: About {w}\nDate: Mon, 0{} Nov 2026 10:00:00 +0000\n\n\
             The {w} text of message {i}.\n",
            i + 1
        );
        pb.deliver("alice", text.as_bytes());
    }
    pb.start();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (key, pass) = (d.join("keys/store-key.age"), d.join("passphrase"));
    std::fs::write(&pass, "harbour lighthouse ferry quay 2026\n").expect("passphrase");
    let keygen = |extra: &[&str]| {
        Command::new(bin()).args(["mail", "keygen", "--key"]).arg(&key).args(extra).output().expect("keygen")
    };
    let made = keygen(&["--passphrase-file", &pass.display().to_string()]);
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let line = String::from_utf8(made.stdout).expect("UTF-8");
    assert!(line.starts_with("encrypt = { recipient = \"age1"), "{line}");
    let again = keygen(&["--passphrase-file", &pass.display().to_string()]);
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("exists already"));

    let secret = d.join("Secret");
    let acc = fetching_account(&pb, d, &format!("maildir = \"{}\"", secret.display()));
    let text = std::fs::read_to_string(&acc).expect("accounts") + "keep = \"keep\"\n" + &line;
    std::fs::write(&acc, text).expect("accounts");
    let index = d.join("search.sqlite");
    // An index that exists: a fetch adds nothing of an encrypted account to it.
    assert!(search(&acc, &index, &["nothing"]).is_empty());
    fetch(&acc, d, &index);
    assert_eq!(std::fs::read_dir(secret.join("new")).expect("new").count(), 3);
    let leaks = |when: &str| {
        for (path, bytes) in all_bytes(d).into_iter().filter(|(p, _)| !p.starts_with(d.join("plain"))) {
            let text = String::from_utf8_lossy(&bytes).to_lowercase();
            for w in words.iter().chain(&["sender0", "about"]) {
                assert!(!text.contains(&w.to_lowercase()), "{when}: {w} in {}", path.display());
            }
        }
    };
    leaks("after the fetch");
    // A backup (even one not encrypted itself) keeps the messages as they are: encrypted.
    let backup = |args: &[&str]| {
        let out = Command::new(bin())
            .arg("backup")
            .args(args)
            .env("PILLARBOX_ACCOUNTS", &acc)
            .env_remove("PILLARBOX_PASSPHRASE")
            .output()
            .expect("backup");
        assert!(out.status.success(), "backup {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let (bk, bk_state, restored) = (d.join("bk"), d.join("bk-state"), d.join("restored"));
    let made: serde_json::Value = serde_json::from_str(
        backup(&[
            "create",
            "--json",
            "--no-encrypt",
            "--to",
            &bk.display().to_string(),
            "--state-dir",
            &bk_state.display().to_string(),
        ])
        .lines()
        .last()
        .expect("a line"),
    )
    .expect("JSON");
    backup(&["restore", made["path"].as_str().expect("path"), "--to", &restored.display().to_string()]);
    let messages: Vec<_> = all_bytes(&restored)
        .into_iter()
        .filter(|(p, _)| p.parent().and_then(|d| d.file_name()).is_some_and(|n| n == "new"))
        .collect();
    assert_eq!(messages.len(), 3, "{:?}", all_bytes(&restored).iter().map(|(p, _)| p.clone()).collect::<Vec<_>>());
    assert!(messages.iter().all(|(_, b)| b.starts_with(b"age-encryption.org/v1\n")));
    leaks("after a backup and its restore");

    // The same mail kept in plaintext, for comparison.
    let plain_dir = d.join("plain");
    std::fs::create_dir(&plain_dir).expect("mkdir");
    let plain = fetching_account(&pb, &plain_dir, &format!("maildir = \"{}\"", plain_dir.join("Mail").display()));
    fetch(&plain, &plain_dir, &plain_dir.join("search.sqlite"));
    let key_args = ["--key", &key.display().to_string(), "--passphrase-file", &pass.display().to_string()];
    let listed = |acc: &str, extra: &[&str]| -> Vec<(String, String, String)> {
        let mut v: Vec<_> = json_lines(&mail(acc, &[&["list", "--json"], extra].concat()))
            .iter()
            .map(|m| (m["from"].to_string(), m["subject"].to_string(), m["date"].to_string()))
            .collect();
        v.sort();
        v
    };
    assert_eq!(listed(&acc, &key_args), listed(&plain, &[]));
    assert_eq!(listed(&acc, &key_args).len(), 3);
    let found = mail(&acc, &[&["search", "Zanzibarian"], &key_args[..]].concat());
    assert!(found.contains("About Zanzibarian") && !found.contains("Quetzalcoatl"), "{found}");
    leaks("after list and search");
    let id = json_lines(&mail(&acc, &[&["list", "--json"], &key_args[..]].concat()))
        .into_iter()
        .find(|m| m["subject"] == "About Xylophonist")
        .and_then(|m| m["id"].as_str().map(str::to_owned))
        .expect("id");
    let raw = mail(&acc, &[&["show", &id, "--raw"], &key_args[..]].concat());
    assert!(raw.contains("The Xylophonist text of message 2."), "{raw}");

    // Without the passphrase nothing is read, and the reason is said.
    let (state, runtime) = (d.join("xdg-state"), d.join("xdg-runtime"));
    let locked = || {
        let out = Command::new(bin())
            .args(["mail", "list", "--accounts-file", &acc, "--key"])
            .arg(&key)
            .env("XDG_STATE_HOME", &state)
            .env("XDG_RUNTIME_DIR", &runtime)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("mail");
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        !out.status.success() && err.contains("the store is encrypted") && err.contains("mail unlock")
    };
    assert!(locked());

    // Unlocked for a while: an agent holds the key, and no passphrase is asked for.
    struct Agent<'a>(&'a Path);
    impl Drop for Agent<'_> {
        fn drop(&mut self) {
            let _ = Command::new(bin()).args(["mail", "lock"]).env("XDG_RUNTIME_DIR", self.0).output();
        }
    }
    let agent = |args: &[&str]| {
        let out = Command::new(bin()).arg("mail").args(args).env("XDG_RUNTIME_DIR", &runtime).output().expect("mail");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let unlocked = agent(&[&["unlock", "--for", "10m"], &key_args[..]].concat());
    let _agent = Agent(&runtime);
    assert!(unlocked.starts_with("the store is unlocked until "), "{unlocked}");
    let socket = runtime.join("pillarbox/store-agent.sock");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(socket.parent().expect("dir")).expect("dir").permissions().mode() & 0o777, 0o700);
    assert_eq!(json_lines(&mail(&acc, &["list", "--json"])).len(), 3);
    assert!(mail(&acc, &["search", "Quetzalcoatl"]).contains("About Quetzalcoatl"));
    assert_eq!(agent(&["lock"]).trim(), "the store is locked");
    assert!(locked(), "locked again");
    assert!(!socket.exists());
    let wrong = d.join("wrong");
    std::fs::write(&wrong, "not the passphrase\n").expect("write");
    let out = Command::new(bin())
        .args(["mail", "list", "--accounts-file", &acc, "--key"])
        .arg(&key)
        .arg("--passphrase-file")
        .arg(&wrong)
        .env("XDG_STATE_HOME", &state)
        .output()
        .expect("mail");
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("does not open"));
}

/// `mail encrypt` and `mail decrypt` killed at random moments: every message stays whole in one
/// form or the other (its name unchanged), and running again finishes the work; the search
/// index keeps no word of the encrypted account; decrypting gives back every octet.
#[test]
fn converting_a_store_killed_at_random_moments_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let md = d.join("Mail/home");
    let mut originals = std::collections::BTreeMap::new();
    for (i, folder) in (0..120).map(|i| (i, if i % 4 == 0 { ".lists" } else { "" })) {
        let root = md.join(folder);
        for sub in ["cur", "new", "tmp"] {
            std::fs::create_dir_all(root.join(sub)).expect("mkdir");
        }
        let name = format!("17900{i:05}.M{i}P1.host,S=0");
        let text = format!("From: a{i}@example.org\nSubject: Wombat number {i}\n\nmarsupial text {i}\n");
        std::fs::write(root.join("new").join(&name), &text).expect("write");
        originals.insert(name, text.into_bytes());
    }
    std::fs::write(md.join(".lists/maildirfolder"), "").expect("mark");
    let acc = local_account(d, &md);
    let (key, pass) = (d.join("store-key.age"), d.join("passphrase"));
    std::fs::write(&pass, "numbat quokka bilby potoroo\n").expect("passphrase");
    let key_args = ["--key", &key.display().to_string(), "--passphrase-file", &pass.display().to_string()];
    let made = Command::new(bin()).args(["mail", "keygen"]).args(key_args).output().expect("keygen");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    // The index holds the account's words while it is in plaintext.
    assert!(mail(&acc, &["search", "marsupial"]).contains("Wombat number"));
    let index = d.join("xdg-state/pillarbox/search.sqlite");
    assert!(index.exists(), "{}", index.display());
    let plaintext_account = std::fs::read_to_string(&acc).expect("accounts");
    std::fs::write(&acc, format!("{plaintext_account}{}", String::from_utf8_lossy(&made.stdout))).expect("accounts");

    let files = || -> std::collections::BTreeMap<String, Vec<u8>> {
        ["", ".lists"]
            .iter()
            .flat_map(|f| ["new", "cur"].map(|s| md.join(f).join(s)))
            .flat_map(|p| std::fs::read_dir(p).into_iter().flatten().flatten())
            .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).expect("read")))
            .collect()
    };
    let sealed = |b: &[u8]| b.starts_with(b"age-encryption.org/v1\n");
    let mut seed =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(7, |t| t.as_nanos() as u64);
    // How many kills left the store part converted, part not.
    let mut trials = |args: &[&str], done: &dyn Fn(&[u8], &[u8]) -> bool| {
        let mut mixed = 0;
        for _ in 0..6 {
            let mut child = Command::new(bin())
                .arg("mail")
                .args(args)
                .args(["--accounts-file", &acc])
                .args(key_args)
                .env("XDG_STATE_HOME", d.join("xdg-state"))
                .env("XDG_RUNTIME_DIR", d.join("xdg-runtime"))
                .env("PILLARBOX_TEST_CONVERT_PAUSE_MS", "3")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("mail");
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            std::thread::sleep(std::time::Duration::from_millis(30 + (seed >> 33) % 250));
            let _ = child.kill();
            let _ = child.wait();
            let now = files();
            assert_eq!(now.len(), originals.len(), "no message lost or doubled");
            for (name, bytes) in &now {
                let original = originals.get(name).unwrap_or_else(|| panic!("{name} was renamed"));
                assert!(bytes == original || sealed(bytes), "{name} is whole in one form");
            }
            let finished = now.iter().filter(|(n, b)| done(b, &originals[*n])).count();
            if finished == now.len() {
                break;
            }
            if finished > 0 {
                mixed += 1;
            }
        }
        let out = Command::new(bin())
            .arg("mail")
            .args(args)
            .args(["--accounts-file", &acc])
            .args(key_args)
            .env("XDG_STATE_HOME", d.join("xdg-state"))
            .output()
            .expect("mail");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(files().iter().all(|(n, b)| done(b, &originals[n])));
        mixed
    };
    assert!(trials(&["encrypt", "home"], &|b, _| sealed(b)) > 0, "a run was cut short midway");
    let index_bytes = String::from_utf8_lossy(&std::fs::read(&index).expect("index")).to_lowercase();
    assert!(!index_bytes.contains("marsupial") && !index_bytes.contains("wombat"), "the index keeps no word");
    let listed = json_lines(&mail(&acc, &[&["list", "--json"], &key_args[..]].concat()));
    assert_eq!(listed.len(), originals.len());
    assert!(mail(&acc, &[&["search", "--folder", "lists", "marsupial"], &key_args[..]].concat()).lines().count() >= 30);

    std::fs::write(&acc, &plaintext_account).expect("accounts");
    // Unlocked once (an agent), so that each run starts converting at once.
    let unlock = |what: &[&str]| {
        Command::new(bin()).arg("mail").args(what).env("XDG_RUNTIME_DIR", d.join("xdg-runtime")).output().expect("mail")
    };
    assert!(unlock(&[&["unlock", "--for", "5m"], &key_args[..]].concat()).status.success());
    let decrypted = trials(&["decrypt", "home"], &|b, o| b == o);
    unlock(&["lock"]);
    assert!(decrypted > 0, "a run was cut short midway");
    assert_eq!(files(), originals, "every octet back");
}
