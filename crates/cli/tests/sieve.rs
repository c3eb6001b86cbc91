//! `pillarbox sieve check|test`: a realistic script (lists by List-Id, subaddress routing, spam
//! headers, words in the text, flags by sender) over generated mail, message by message; broken
//! scripts named by file and line.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::bin;

const RULES: &str = r#"# Filing rules for a personal mailbox.
require ["fileinto", "variables", "envelope", "subaddress", "imap4flags", "body", "regex"];

if address :domain :is "from" ["example.de", "example.is"] {
    addflag "\\Flagged";
}
if header :matches "List-Id" "*<*.lists.example.org>" {
    fileinto "lists.${2}";
    stop;
}
if envelope :detail :matches "to" "*" {
    set :lower "tag" "${1}";
    fileinto "tagged.${tag}";
    stop;
}
if anyof (header :is "X-Spam-Flag" "YES", header :regex "X-Spam-Score" "^[1-9][0-9]+") {
    fileinto "Junk";
    stop;
}
if body :text :contains "invoice" {
    fileinto "invoices";
}
"#;

fn sieve(args: &[&str], script: &Path) -> Output {
    let mut c = Command::new(bin());
    c.arg("sieve").arg(args[0]).arg(script).args(&args[1..]);
    c.output().expect("pillarbox sieve")
}

#[test]
fn generated_mail_is_filed_as_the_rules_say() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = dir.path().join("rules.sieve");
    std::fs::write(&rules, RULES).expect("write");
    let out = sieve(&["check"], &rules);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid (it requires body, envelope, fileinto"));
    let mut rng = common::genmail::Rng::new(5);
    let mut seen = std::collections::BTreeMap::new();
    for i in 0..40 {
        let g = common::genmail::message(&mut rng, i, 1_790_000_000);
        let (extra, folder) = match i % 5 {
            0 => ("List-Id: The team <Team.lists.example.org>\r\n".to_owned(), Some("lists.Team".to_owned())),
            1 => ("Delivered-To: me+Shop@example.org\r\n".to_owned(), Some("tagged.shop".to_owned())),
            2 if i % 2 == 0 => ("X-Spam-Flag: YES\r\n".to_owned(), Some("Junk".to_owned())),
            2 => ("X-Spam-Score: 12.5\r\n".to_owned(), Some("Junk".to_owned())),
            _ => ("X-Spam-Score: 3.1\r\n".to_owned(), g.sentence.contains("invoice").then(|| "invoices".to_owned())),
        };
        let file = dir.path().join(format!("m{i}.eml"));
        std::fs::write(&file, [extra.as_bytes(), &g.bytes].concat()).expect("write");
        let out = sieve(&["test", &file.display().to_string(), "--json"], &rules);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let got: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        let flags: Vec<&str> = if g.from_addr.ends_with("example.de") || g.from_addr.ends_with("example.is") {
            vec!["\\Flagged"]
        } else {
            vec![]
        };
        let want = serde_json::json!({
            "deliveries": [{"folder": folder, "flags": flags}],
            "discarded": false,
        });
        assert_eq!(got, want, "message {i} from {} ({:?})", g.from_addr, g.sentence);
        *seen.entry(folder.unwrap_or_default()).or_insert(0) += 1;
    }
    // Every rule was taken by some message, the inbox included.
    assert_eq!(seen.len(), 5, "{seen:?}");
    // Without --json: a line per folder.
    let file = dir.path().join("m1.eml");
    let out = sieve(&["test", &file.display().to_string()], &rules);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "store in tagged.shop\n");
}

#[test]
fn a_broken_script_names_its_file_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = dir.path().join("rules.sieve");
    std::fs::write(&rules, "require \"fileinto\";\nif header :contains \"subject\" \"x\" {\n  fileint \"a\";\n}\n")
        .expect("write");
    let out = sieve(&["check"], &rules);
    assert_eq!(out.status.code(), Some(78));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        format!("pillarbox sieve: {}:3: unknown command \"fileint\"", rules.display())
    );
    // A script that fails on a message says so, and what fetch does then.
    std::fs::write(&rules, "require [\"fileinto\", \"variables\"];\nfileinto \"${nothing}\";\n").expect("write");
    let msg = dir.path().join("m.eml");
    std::fs::write(&msg, "Subject: hi\r\n\r\nhello\r\n").expect("write");
    let out = sieve(&["test", &msg.display().to_string()], &rules);
    assert_eq!(out.status.code(), Some(65));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not a folder name") && err.contains("fetch stores such a message in the inbox"), "{err}");
}
