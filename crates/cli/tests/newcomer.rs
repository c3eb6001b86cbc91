//! What a new user meets first: commands run before there is an accounts file, the names the
//! documentation uses, addresses on a local network.

mod common;

use std::process::Command;

use common::{Pillarbox, bin, require_tool};

fn run(home: &std::path::Path, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(bin())
        .args(args)
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("XDG_STATE_HOME", home.join("state"))
        .env("XDG_DATA_HOME", home.join("data"))
        .env_remove("PILLARBOX_ACCOUNTS")
        .output()
        .expect("run");
    (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn the_first_fetch_or_mail_list_without_an_accounts_file_says_what_to_do() {
    let home = tempfile::tempdir().expect("tempdir");
    for args in [&["fetch"][..], &["mail", "list"], &["fetch", "--dry-run"]] {
        let (code, said) = run(home.path(), args);
        assert_ne!(code, Some(0), "{args:?}: {said}");
        assert_eq!(said.matches("pillarbox account add").count(), 1, "{args:?}, once: {said}");
        assert!(!said.contains("No such file"), "{args:?}: {said}");
    }
    let (code, _) = run(home.path(), &["fetch"]);
    assert_eq!(code, Some(78));
    // Nothing was created on the way.
    assert_eq!(std::fs::read_dir(home.path()).expect("home").count(), 0);
}

#[test]
fn accounts_is_accepted_as_well_as_accounts_file() {
    let home = tempfile::tempdir().expect("tempdir");
    let file = home.path().join("mine.toml");
    std::fs::write(
        &file,
        "[accounts.a]\nhost = \"127.0.0.1\"\nport = 1\nusername = \"u\"\npassword_command = \"true\"\n\
                           deliver = { maildir = \"m\" }\nkeep = \"sometimes\"\n",
    )
    .expect("write");
    for flag in ["--accounts", "--accounts-file"] {
        let (code, said) = run(home.path(), &["fetch", flag, &file.display().to_string()]);
        // The file was read: its mistake is reported with its name, line and field.
        assert_eq!(code, Some(78), "{flag}: {said}");
        assert!(said.contains("mine.toml") && said.contains("keep"), "{flag}: {said}");
    }
}

#[test]
fn an_address_on_a_dotless_domain_is_an_address() {
    let home = tempfile::tempdir().expect("tempdir");
    let file = home.path().join("accounts.toml");
    for address in ["bob@localhost", "me@mailhost"] {
        let (_, said) = run(
            home.path(),
            &["account", "add", address, "--accounts-file", &file.display().to_string(), "--timeout", "1s"],
        );
        assert!(!said.contains("not an email address"), "{address}: {said}");
        assert!(said.contains("Looking for the POP3 server of"), "{address}: {said}");
    }
    for bad in ["bob@", "@localhost", "bob@-x", "bob@a..b", "bob"] {
        let (code, said) = run(home.path(), &["account", "add", bad, "--accounts-file", &file.display().to_string()]);
        assert_ne!(code, Some(0));
        assert!(said.contains("not an email address"), "{bad}: {said}");
    }
}

#[test]
fn a_backup_without_a_folder_goes_to_a_private_default_and_says_where() {
    use std::os::unix::fs::PermissionsExt;
    let home = tempfile::tempdir().expect("tempdir");
    let h = home.path();
    let maildir = h.join("Mail");
    for sub in ["new", "cur", "tmp"] {
        std::fs::create_dir_all(maildir.join(sub)).expect("mkdir");
    }
    std::fs::write(maildir.join("new/1.M1P1.host"), "Subject: kept\n\nsafe\n").expect("message");
    let config = h.join("config/pillarbox");
    std::fs::create_dir_all(&config).expect("mkdir");
    std::fs::write(
        config.join("accounts.toml"),
        format!(
            "[accounts.home]\nhost = \"pop.example.org\"\nusername = \"me\"\npassword_command = \"true\"\n\
             deliver = {{ maildir = \"{}\" }}\n",
            maildir.display()
        ),
    )
    .expect("accounts");
    let out = Command::new(bin())
        .args(["backup", "create"])
        .env("HOME", h)
        .env("XDG_CONFIG_HOME", h.join("config"))
        .env("XDG_STATE_HOME", h.join("state"))
        .env("XDG_DATA_HOME", h.join("data"))
        .env("PILLARBOX_PASSPHRASE", "quartz mongoose lantern 7 wide rivers")
        .env_remove("PILLARBOX_BACKUP_DIR")
        .output()
        .expect("backup");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{said}");
    let dir = h.join("data/pillarbox/backups");
    assert!(said.contains(&dir.display().to_string()) && said.contains("the default"), "{said}");
    let archives: Vec<_> = std::fs::read_dir(&dir).expect("backups").flatten().collect();
    assert!(archives.iter().any(|e| e.file_name().to_string_lossy().ends_with(".tar.zst.age")), "{archives:?}");
    assert_eq!(std::fs::metadata(&dir).expect("dir").permissions().mode() & 0o777, 0o700);
}

#[test]
fn user_names_say_how_they_are_stored_and_what_is_allowed() {
    let pb = common::Pillarbox::without_users();
    let out = pb.run(&["user", "add", "Eve", "--password-stdin"], b"a long and fine password 2026\n");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("added user eve") && said.contains("Eve logs in as eve"), "{said}");
    let out = pb.run(&["user", "add", "müller", "--password-stdin"], b"a long and fine password 2026\n");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "added user müller");
    let out = pb.run(&["user", "add", "a/b", "--password-stdin"], b"a long and fine password 2026\n");
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(65));
    assert!(said.contains("letters (of any script") && !said.contains("a-z, 0-9"), "{said}");
}

#[test]
fn a_port_in_use_is_told_once_with_what_to_change_and_config_check_warns() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = busy.local_addr().expect("addr").port();
    let pb = common::Pillarbox::without_users();
    pb.edit_config("pop3 = [\"127.0.0.1:1110\"]", &format!("pop3 = [\"127.0.0.1:{port}\"]"));
    pb.edit_config("pop3s = [\"127.0.0.1:1995\"]", "pop3s = [\"127.0.0.1:0\"]");
    pb.edit_config("lmtp = [\"127.0.0.1:2424\"]", "lmtp = [\"127.0.0.1:0\"]");
    let out = pb.run(&["serve"], b"");
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{said}");
    assert_eq!(said.matches("cannot listen").count(), 1, "once: {said}");
    assert!(
        said.contains(&format!("127.0.0.1:{port}"))
            && said.contains("--pop3 ADDRESS")
            && said.contains("[listen] pop3"),
        "{said}"
    );
    // config check: the file is fine; the port in use is a warning, not a failure.
    let out = pb.run(&["config", "check"], b"");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("OK") && stderr.contains("warning") && stderr.contains(&port.to_string()),
        "{stdout}{stderr}"
    );
    drop(busy);
    let out = pb.run(&["config", "check"], b"");
    assert!(out.status.success() && !String::from_utf8_lossy(&out.stderr).contains("warning"));
    // Run while this configuration's own server holds the port (before a SIGHUP): no warning.
    let mut pb = pb;
    pb.start_with(&["--pop3", &format!("127.0.0.1:{port}")]);
    let out = pb.run(&["config", "check"], b"");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !stderr.contains("warning"), "{stderr}");
}

#[test]
fn shell_completions_offer_no_hidden_test_knob() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(bin()).args(["completions", shell]).output().expect("completions");
        assert!(out.status.success());
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(script.contains("accounts-file"), "{shell}");
        assert!(!script.contains("--now") && !script.contains("-l now"), "{shell}");
    }
}

#[test]
fn with_json_logs_every_line_serve_writes_is_a_json_object() {
    use std::io::BufRead;
    let pb = common::Pillarbox::without_users();
    let mut child = Command::new(bin())
        .args(["--log-format", "json", "--data-dir"])
        .arg(pb.data())
        .args(["serve", "--pop3", "127.0.0.1:0", "--pop3s", "127.0.0.1:0", "--lmtp", "127.0.0.1:0"])
        .env("PILLARBOX_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("serve");
    let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut seen = Vec::new();
    while !seen.iter().any(|v: &serde_json::Value| v["event"] == "hint") {
        let line = lines.next().expect("a line").expect("read");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        seen.push(v);
    }
    let services: Vec<&str> =
        seen.iter().filter(|v| v["event"] == "listening").filter_map(|v| v["service"].as_str()).collect();
    assert_eq!(services, ["pop3", "pop3s", "lmtp"], "{seen:?}");
    assert!(seen.iter().any(|v| v["event"] == "certificate" && v["fingerprint"].as_str().is_some_and(|f| f.starts_with("sha256:"))));
    assert!(seen.iter().all(|v| v["timestamp"].as_str().is_some_and(|t| t.ends_with('Z'))));
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let out = child.wait_with_output().expect("wait");
    for line in String::from_utf8_lossy(&out.stderr).lines() {
        assert!(serde_json::from_str::<serde_json::Value>(line).is_ok(), "stderr, not JSON: {line}");
    }
    // An error at start is a JSON object too.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let out = Command::new(bin())
        .args(["--log-format", "json", "--data-dir"])
        .arg(pb.data())
        .args(["serve", "--pop3", &busy.local_addr().expect("addr").to_string()])
        .output()
        .expect("serve");
    assert_eq!(out.status.code(), Some(69));
    for line in String::from_utf8_lossy(&out.stdout).lines().chain(String::from_utf8_lossy(&out.stderr).lines()) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["message"].is_string(), "{v}");
    }
}

#[test]
fn manual_pages_have_exit_status_files_environment_and_examples_and_section_5_pages() {
    require_tool("groff");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(bin()).arg("man").arg(dir.path()).output().expect("man");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let render = |page: &str| {
        let out = Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-rLL=200n"])
            .arg(dir.path().join(page))
            .output()
            .expect("groff");
        let warnings = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && warnings.is_empty(), "{page}: {warnings}");
        // Without the overstriking groff uses for bold and underline on a terminal.
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut plain = String::new();
        for c in text.chars() {
            if c == '\u{8}' {
                plain.pop();
            } else {
                plain.push(c);
            }
        }
        plain
    };
    for page in std::fs::read_dir(dir.path()).expect("dir").map(|e| e.expect("entry").file_name()) {
        render(&page.to_string_lossy());
    }
    for page in [
        "pillarbox.1",
        "pillarbox-fetch.1",
        "pillarbox-check.1",
        "pillarbox-account-add.1",
        "pillarbox-serve.1",
        "pillarbox-mail-search.1",
        "pillarbox-deliver.1",
        "pillarbox-backup-create.1",
        "pillarbox-sieve-test.1",
    ] {
        let text = render(page);
        for section in ["EXIT STATUS", "ENVIRONMENT", "FILES", "EXAMPLES", "SEE ALSO"] {
            assert!(text.contains(&format!("\n{section}\n")), "{page} has no {section}:\n{text}");
        }
    }
    let fetch = render("pillarbox-fetch.1");
    for status in ["69", "75", "77", "78"] {
        assert!(fetch.contains(&format!("\n       {status} ")), "pillarbox-fetch(1) explains {status}:\n{fetch}");
    }
    assert!(fetch.contains("accounts.toml(5)") && fetch.contains("PILLARBOX_ACCOUNTS"), "{fetch}");

    // pillarbox.toml(5) names every key of the configuration a new data folder gets, with its
    // default (the test harness changes a few values of its own, not the keys).
    let pb = Pillarbox::new();
    let config = std::fs::read_to_string(pb.config_path()).expect("config");
    let manual = render("pillarbox.toml.5");
    assert!(manual.contains("idle_timeout = \"10m\"") && manual.contains("Default: \"10m\""), "{manual}");
    let mut keys = 0;
    for line in config.lines().filter(|l| !l.starts_with('#') && l.contains(" = ")) {
        let (key, _) = line.split_once(" = ").expect("key");
        assert!(manual.contains(&format!("\n       {key} = ")), "pillarbox.toml(5) lacks {key}");
        keys += 1;
    }
    assert!(keys > 30, "{keys} keys");
    assert!(manual.contains("RELOADING"), "{manual}");
    let accounts = render("accounts.toml.5");
    for key in [
        "host",
        "port",
        "tls",
        "username",
        "password_command",
        "password_file",
        "password_env",
        "auth",
        "ca_file",
        "tls_fingerprint",
        "deliver",
        "keep",
        "max_size",
        "oversize",
        "recipients",
        "passphrase_file",
    ] {
        assert!(accounts.contains(&format!("\n       {key}")), "accounts.toml(5) lacks {key}:\n{accounts}");
    }
}

#[test]
fn ctrl_c_at_any_password_prompt_gives_the_terminal_back_with_echo() {
    require_tool("python3");
    let pb = Pillarbox::new();
    let work = tempfile::tempdir().expect("tempdir");
    // user add (the server's side) and backup create (the client's), each interrupted at its
    // password prompt: the terminal echoes again and nothing was done.
    let accounts = work.path().join("accounts.toml");
    std::fs::write(
        &accounts,
        format!(
            "[accounts.a]\nhost = \"h\"\nusername = \"u\"\npassword_env = \"P\"\ndeliver = {{ maildir = \"{}\" }}\n",
            work.path().join("m").display()
        ),
    )
    .expect("accounts");
    let commands: [(&str, Vec<String>); 2] = [
        (
            "Password for bob:",
            vec!["--data-dir".into(), pb.data().display().to_string(), "user".into(), "add".into(), "bob".into()],
        ),
        (
            "Backup passphrase:",
            vec![
                "backup".into(),
                "create".into(),
                "--accounts-file".into(),
                accounts.display().to_string(),
                "--to".into(),
                work.path().join("backups").display().to_string(),
                "--state-dir".into(),
                work.path().join("state").display().to_string(),
            ],
        ),
    ];
    for (prompt, args) in commands {
        let mut full: Vec<String> = vec!["--status".into(), "130".into(), prompt.into(), "<ctrl-c-at-password>".into()];
        full.push("--".into());
        full.push(bin().display().to_string());
        full.extend(args);
        // Typed while the prompt reads without echo: the terminal is put back, and it says so.
        let transcript = common::python("pty_drive.py", &full);
        assert!(transcript.contains("--- terminal echo on") && transcript.contains("interrupted"), "{transcript}");
    }
    let users = pb.run(&["user", "list"], b"");
    assert!(!String::from_utf8_lossy(&users.stdout).contains("bob"), "bob was not added");
    assert!(
        !work.path().join("backups").exists()
            || std::fs::read_dir(work.path().join("backups")).expect("dir").count() == 0
    );
}
