//! `pillarbox backup`: encrypted incremental archives of the local store, made from mail that
//! `pillarbox fetch` really downloaded, checked by restoring them and by opening them with the
//! standard tools (age, zstd, tar).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::genmail;
use common::{PASSWORD, Pillarbox, bin, require_tool};
use serde_json::Value;

const PASSPHRASE: &str = "tiger vault mango 7 ripple";

/// A local store: an accounts file whose account delivers into `mail`, fetch's state in `state`.
struct Store {
    dir: tempfile::TempDir,
    accounts: PathBuf,
    mail: PathBuf,
    state: PathBuf,
    out: PathBuf,
}

impl Store {
    fn new(pop3s_port: u16, cert: &Path) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mail = dir.path().join("Mail");
        let accounts = dir.path().join("accounts.toml");
        std::fs::write(
            &accounts,
            format!(
                "# my accounts\n[accounts.home]\nhost = \"localhost\"\nport = {pop3s_port}\nusername = \"alice\"\n\
                 password_command = \"echo '{PASSWORD}'\"\nca_file = \"{}\"\ndeliver = {{ maildir = \"{}\" }}\n",
                cert.display(),
                mail.display()
            ),
        )
        .expect("accounts");
        let state = dir.path().join("state/fetch");
        let out = dir.path().join("backups");
        Store { dir, accounts, mail, state, out }
    }

    /// Run `pillarbox backup ARGS` for this store.
    fn backup(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(bin());
        cmd.arg("backup").args(args).env("PILLARBOX_ACCOUNTS", &self.accounts).env_remove("PILLARBOX_PASSPHRASE");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("pillarbox backup")
    }

    fn create(&self, extra: &[&str], env: &[(&str, &str)]) -> Value {
        let out_dir = self.out.display().to_string();
        let state = self.state.display().to_string();
        let mut args = vec!["create", "--json", "--to", &out_dir, "--state-dir", &state];
        args.extend(extra);
        let out = self.backup(&args, env);
        assert!(out.status.success(), "backup create: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("JSON")
    }

    /// A key pair from `backup keygen`: the secret key's file and the public key.
    fn keygen(&self) -> (PathBuf, String) {
        let key = self.dir.path().join("key.txt");
        let public = ok(&self.backup(&["keygen", "--out", &key.display().to_string()], &[]));
        (key, public.trim().to_owned())
    }

    /// No staging folder of a restore is left beside the restore targets.
    fn assert_no_restore_leftovers(&self) {
        let names: Vec<String> = std::fs::read_dir(self.dir.path())
            .expect("dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(!names.iter().any(|n| n.starts_with(".pillarbox-restore")), "{names:?}");
    }

    fn fetch(&self) {
        let out = Command::new(bin())
            .args(["fetch", "--quiet", "--accounts-file"])
            .arg(&self.accounts)
            .arg("--state-dir")
            .arg(&self.state)
            .env("PILLARBOX_SEARCH_INDEX", self.dir.path().join("no-index"))
            .output()
            .expect("fetch");
        assert!(out.status.success(), "fetch: {}", String::from_utf8_lossy(&out.stderr));
    }
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every file under `dir` except in Maildir `tmp/` folders: relative path -> bytes.
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            if e.file_type().expect("type").is_dir() {
                if e.file_name() != "tmp" {
                    stack.push(e.path());
                }
            } else {
                let rel = e.path().strip_prefix(dir).expect("inside").to_string_lossy().into_owned();
                out.insert(rel, std::fs::read(e.path()).expect("read"));
            }
        }
    }
    out
}

/// A server with `n` generated messages for alice (numbered from `first`), and a store fetching
/// from it.
fn server_with_mail(first: usize, n: usize) -> Pillarbox {
    let pb = Pillarbox::new();
    deliver_generated(&pb, first, n);
    pb
}

fn deliver_generated(pb: &Pillarbox, first: usize, n: usize) {
    let mut rng = genmail::Rng::new(first as u64);
    for i in first..first + n {
        pb.deliver("alice", &genmail::message(&mut rng, i, 1_790_000_000).bytes);
    }
}

/// The archives in a folder (not the lock file beside them).
fn archives_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("backups")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("pillarbox-"))
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}

fn archive_path(v: &Value) -> PathBuf {
    PathBuf::from(v["path"].as_str().expect("path"))
}

#[test]
fn two_backups_of_fetched_mail_restore_byte_identical() {
    let mut pb = server_with_mail(0, 30);
    pb.start();
    let store = Store::new(pb.pop3s.expect("pop3s").port(), &pb.cert());
    store.fetch();
    let env = [("PILLARBOX_PASSPHRASE", PASSPHRASE)];
    let first = store.create(&[], &env);
    // 30 messages, the journal and the record of whose it is, the accounts file.
    assert_eq!(
        (first["seq"].as_u64(), first["files"].as_u64(), first["stored"].as_u64()),
        (Some(0), Some(33), Some(33))
    );
    assert!(archive_path(&first).to_string_lossy().ends_with(".tar.zst.age"), "{first}");

    // More mail arrives and is fetched; a message is read (moved to cur/ with a flag), another
    // deleted.
    deliver_generated(&pb, 100, 10);
    store.fetch();
    let new = store.mail.join("new");
    let mut names: Vec<_> = std::fs::read_dir(&new).expect("new/").flatten().map(|e| e.file_name()).collect();
    names.sort();
    std::fs::rename(new.join(&names[0]), store.mail.join("cur").join(format!("{}:2,S", names[0].to_string_lossy())))
        .expect("read one");
    std::fs::remove_file(new.join(&names[1])).expect("delete one");
    let second = store.create(&[], &env);
    // Only the 10 new messages and the grown journal are stored again.
    assert_eq!((second["seq"].as_u64(), second["chain"].as_str()), (Some(1), first["chain"].as_str()));
    assert_eq!((second["files"].as_u64(), second["stored"].as_u64()), (Some(42), Some(11)), "{second}");
    assert!(second["archive_bytes"].as_u64() < first["archive_bytes"].as_u64());

    let listed = ok(&store.backup(&["list", &store.out.display().to_string()], &[]));
    assert!(
        listed.contains("2 archives") && listed.contains("complete") && listed.contains("incremental 1"),
        "{listed}"
    );
    let verified =
        ok(&store.backup(&["verify", first["path"].as_str().expect("p"), second["path"].as_str().expect("p")], &env));
    assert_eq!(verified.lines().filter(|l| l.starts_with("OK ")).count(), 2, "{verified}");

    // Restore from the last archive alone (the full one is found beside it) into a new folder.
    let to = store.dir.path().join("restored");
    let out =
        ok(&store.backup(&["restore", second["path"].as_str().expect("p"), "--to", &to.display().to_string()], &env));
    assert!(out.contains("restored 42 files"), "{out}");
    assert_eq!(tree(&to.join("mail/home")), tree(&store.mail), "the Maildir comes back byte for byte");
    assert!(to.join("mail/home/tmp").is_dir());
    assert_eq!(
        tree(&to.join("state/fetch")),
        tree(&store.state).into_iter().filter(|(k, _)| !k.ends_with("/lock")).collect()
    );
    let config = std::fs::read_to_string(to.join("config/accounts.toml")).expect("accounts file");
    assert!(config.contains("# my accounts") && config.contains("[accounts.home]"), "{config}");
    assert!(!config.contains(PASSWORD) && !config.contains("password_command ="), "{config}");
    // The restored Maildir is one pillarbox reads.
    let shown = Command::new(bin())
        .args(["mail", "list", "--json", "--maildir"])
        .arg(to.join("mail/home"))
        .env("XDG_STATE_HOME", store.dir.path().join("xdg"))
        .output()
        .expect("mail list");
    assert_eq!(ok(&shown).lines().count(), 39);

    // A second restore into the (now full) folder is refused.
    let again =
        store.backup(&["restore", second["path"].as_str().expect("p"), "--to", &to.display().to_string()], &env);
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("not empty"));
}

#[test]
fn public_key_archives_open_with_age_zstd_and_tar() {
    require_tool("age");
    require_tool("zstd");
    let store = Store::new(995, Path::new("/nonexistent"));
    genmail::fill(&store.mail, 3, 0, 25);
    // A Maildir++ folder (as Sieve rules file into) is part of the store.
    genmail::fill(&store.mail.join(".lists.rust"), 3, 100, 5);
    let key = store.dir.path().join("backup-key.txt");
    let public = ok(&store.backup(&["keygen", "--out", &key.display().to_string()], &[]));
    let public = public.trim();
    assert!(public.starts_with("age1"), "{public}");
    let again = store.backup(&["keygen", "--out", &key.display().to_string()], &[]);
    assert!(!again.status.success(), "an existing key is never replaced");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&key).expect("key").permissions().mode() & 0o777, 0o600);

    // The public key in the accounts file: no secret is needed to back up.
    let mut text = std::fs::read_to_string(&store.accounts).expect("accounts");
    text.push_str(&format!("\n[backup]\ndir = \"{}\"\nrecipients = [\"{public}\"]\n", store.out.display()));
    std::fs::write(&store.accounts, text).expect("accounts");
    let state = store.state.display().to_string();
    let made = ok(&store.backup(&["create", "--state-dir", &state], &[]));
    assert!(made.contains("(full)") && made.contains("31 files"), "{made}");
    let [archive] = archives_in(&store.out).try_into().expect("one archive");

    // age -d | zstd -d | tar x gives the store's own tree.
    let x = store.dir.path().join("x");
    std::fs::create_dir(&x).expect("mkdir");
    let sh =
        format!("age -d -i '{}' '{}' | zstd -d -q | tar -x -C '{}'", key.display(), archive.display(), x.display());
    let out = Command::new("sh").args(["-c", &sh]).output().expect("sh");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(tree(&x.join("mail/home")), tree(&store.mail));
    assert_eq!(tree(&x.join("mail/home/.lists.rust")).len(), 5);
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(x.join("manifest.json")).expect("manifest")).expect("JSON");
    assert_eq!(manifest["files"].as_array().expect("files").len(), 31);

    // Reading needs the secret key, and says so.
    let no_key = store.backup(&["verify", &archive.display().to_string()], &[]);
    assert!(!no_key.status.success() && String::from_utf8_lossy(&no_key.stderr).contains("--identity"));
    let verified =
        ok(&store.backup(&["verify", &archive.display().to_string(), "--identity", &key.display().to_string()], &[]));
    assert!(verified.starts_with("OK "), "{verified}");
    let listed = ok(&store.backup(&["list"], &[]));
    assert!(listed.contains("1 archive,") && listed.contains("full"), "{listed}");
}

#[test]
fn damaged_archives_fail_verification_and_restore_nothing() {
    let store = Store::new(995, Path::new("/nonexistent"));
    genmail::fill(&store.mail, 4, 0, 60);
    let (key, public) = store.keygen();
    let made = store.create(&["--recipient", &public], &[]);
    let good = archive_path(&made);
    let bytes = std::fs::read(&good).expect("archive");
    let key = key.display().to_string();

    let flipped = store.dir.path().join("flipped.tar.zst.age");
    let mut b = bytes.clone();
    let middle = b.len() / 2;
    b[middle] ^= 0x01;
    std::fs::write(&flipped, &b).expect("write");
    let truncated = store.dir.path().join("truncated.tar.zst.age");
    std::fs::write(&truncated, &bytes[..bytes.len() - 1000]).expect("write");
    for bad in [&flipped, &truncated] {
        let out = store.backup(&["verify", &bad.display().to_string(), "--identity", &key], &[]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{text}");
        assert!(text.starts_with("FAILED") && text.contains("damaged"), "{text}");
        let to = store.dir.path().join("restored");
        let out = store.backup(
            &["restore", &bad.display().to_string(), "--to", &to.display().to_string(), "--identity", &key],
            &[],
        );
        assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("damaged"));
        assert!(!to.exists(), "nothing is restored from a damaged archive");
    }
    let out = ok(&store.backup(&["verify", &good.display().to_string(), "--identity", &key], &[]));
    assert!(out.contains("61 stored contents"), "{out}"); // and the accounts file
    store.assert_no_restore_leftovers();
}

#[test]
fn a_wrong_passphrase_restores_nothing() {
    let store = Store::new(995, Path::new("/nonexistent"));
    genmail::fill(&store.mail, 5, 0, 10);
    let made = store.create(&[], &[("PILLARBOX_PASSPHRASE", PASSPHRASE)]);
    let to = store.dir.path().join("restored");
    let out = store.backup(
        &["restore", made["path"].as_str().expect("p"), "--to", &to.display().to_string()],
        &[("PILLARBOX_PASSPHRASE", "tiger vault mango 7 rippled")],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("wrong passphrase"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!to.exists());
    store.assert_no_restore_leftovers();
    // The passphrase from a file works.
    let pass_file = store.dir.path().join("pass");
    std::fs::write(&pass_file, format!("{PASSPHRASE}\n")).expect("pass");
    ok(&store.backup(
        &[
            "restore",
            made["path"].as_str().expect("p"),
            "--to",
            &to.display().to_string(),
            "--passphrase-file",
            &pass_file.display().to_string(),
        ],
        &[],
    ));
    assert_eq!(tree(&to.join("mail/home")), tree(&store.mail));
}

#[test]
fn unencrypted_only_when_asked_and_weak_passphrases_are_refused() {
    let store = Store::new(995, Path::new("/nonexistent"));
    genmail::fill(&store.mail, 6, 0, 5);
    let out_dir = store.out.display().to_string();
    let state = store.state.display().to_string();
    let args = ["create", "--to", &out_dir, "--state-dir", &state];
    let none = store.backup(&args, &[]);
    let err = String::from_utf8_lossy(&none.stderr);
    assert!(!none.status.success() && err.contains("--no-encrypt") && err.contains("PILLARBOX_PASSPHRASE"), "{err}");
    let weak = store.backup(&args, &[("PILLARBOX_PASSPHRASE", "password1")]);
    let err = String::from_utf8_lossy(&weak.stderr);
    assert!(!weak.status.success() && err.contains("passphrase is too weak"), "{err}");
    assert!(std::fs::read_dir(&store.out).map_or(true, |mut d| d.next().is_none()), "nothing was written");

    let plain = store.create(&["--no-encrypt"], &[]);
    let path = archive_path(&plain);
    assert!(path.to_string_lossy().ends_with(".tar.zst"), "{plain}");
    let listed = ok(&store.backup(&["list", &out_dir], &[]));
    assert!(listed.contains("(not encrypted)"), "{listed}");
    ok(&store.backup(&["verify", &path.display().to_string()], &[]));
}

#[test]
fn a_missing_archive_breaks_its_chain_visibly_and_the_next_backup_starts_a_new_one() {
    let store = Store::new(995, Path::new("/nonexistent"));
    let (key, public) = store.keygen();
    let r = ["--recipient", public.as_str()];
    genmail::fill(&store.mail, 8, 0, 5);
    let a0 = store.create(&r, &[]);
    genmail::fill(&store.mail, 8, 5, 5);
    let a1 = store.create(&r, &[]);
    genmail::fill(&store.mail, 8, 10, 5);
    let a2 = store.create(&r, &[]);
    assert_eq!((a1["stored"].as_u64(), a2["stored"].as_u64(), a2["seq"].as_u64()), (Some(5), Some(5), Some(2)));
    std::fs::remove_file(archive_path(&a1)).expect("lose one");

    let listed = ok(&store.backup(&["list", &store.out.display().to_string()], &[]));
    assert!(listed.contains("INCOMPLETE: missing number 1"), "{listed}");
    let to = store.dir.path().join("r");
    let key = key.display().to_string();
    let out = store.backup(
        &["restore", a2["path"].as_str().expect("p"), "--to", &to.display().to_string(), "--identity", &key],
        &[],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("archive number 1") && err.contains("missing"), "{err}");
    assert!(!to.exists());
    // The chain's first archive still restores its own time.
    ok(&store.backup(
        &["restore", a0["path"].as_str().expect("p"), "--to", &to.display().to_string(), "--identity", &key],
        &[],
    ));
    assert_eq!(
        std::fs::read_dir(to.join("mail/home/new")).expect("new").count()
            + std::fs::read_dir(to.join("mail/home/cur")).expect("cur").count(),
        5
    );

    let next = store.create(&r, &[]);
    assert_eq!(next["seq"].as_u64(), Some(0));
    assert_ne!(next["chain"], a0["chain"]);
    assert!(next["full_because"].as_str().is_some_and(|w| w.contains("no longer in")), "{next}");
}

#[test]
fn the_passphrase_is_asked_for_on_a_terminal() {
    let store = Store::new(995, Path::new("/nonexistent"));
    genmail::fill(&store.mail, 9, 0, 3);
    let env = format!("PILLARBOX_ACCOUNTS={}", store.accounts.display());
    let create: Vec<String> = [
        "Backup passphrase:",
        PASSPHRASE,
        "Repeat the passphrase:",
        PASSPHRASE,
        "(full)",
        "",
        "--",
        "/usr/bin/env",
        &env,
        &bin().display().to_string(),
        "backup",
        "create",
        "--to",
        &store.out.display().to_string(),
        "--state-dir",
        &store.state.display().to_string(),
    ]
    .map(String::from)
    .to_vec();
    common::python("pty_drive.py", &create);
    let [archive] = archives_in(&store.out).try_into().expect("one archive");
    let to = store.dir.path().join("r");
    let restore: Vec<String> = [
        "Backup passphrase:",
        PASSPHRASE,
        "restored 4 files",
        "",
        "--",
        "/usr/bin/env",
        &env,
        &bin().display().to_string(),
        "backup",
        "restore",
        &archive.display().to_string(),
        "--to",
        &to.display().to_string(),
    ]
    .map(String::from)
    .to_vec();
    common::python("pty_drive.py", &restore);
    assert_eq!(tree(&to.join("mail/home")), tree(&store.mail));
}

/// A backup killed at any moment leaves no archive under a final name (or a complete one), and
/// the next run succeeds and continues the chain correctly.
#[test]
fn a_killed_backup_leaves_nothing_half_written() {
    let store = Store::new(995, Path::new("/nonexistent"));
    genmail::fill(&store.mail, 11, 0, 400);
    let (key, public) = store.keygen();
    let (out_dir, state) = (store.out.display().to_string(), store.state.display().to_string());
    for (round, wait_ms) in [5u64, 20, 40, 80, 120, 200, 400, 3000].into_iter().enumerate() {
        genmail::fill(&store.mail, 11, 1000 + round * 10, 10);
        let child = Command::new(bin())
            .args(["backup", "create", "--to", &out_dir, "--state-dir", &state, "--recipient", &public])
            .env("PILLARBOX_ACCOUNTS", &store.accounts)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn");
        let mut child = common::KillOnDrop(child);
        std::thread::sleep(std::time::Duration::from_millis(wait_ms));
        let _ = child.0.kill();
        let _ = child.0.wait();
    }
    // Whatever was completed verifies; then a clean run works and restores the whole store.
    let last = store.create(&["--recipient", &public], &[]);
    let names: Vec<String> = std::fs::read_dir(&store.out)
        .expect("out")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.starts_with(".pillarbox-2")), "partial archives were cleared: {names:?}");
    let key = key.display().to_string();
    let mut archives: Vec<String> =
        names.iter().filter(|n| n.starts_with("pillarbox-")).map(|n| store.out.join(n).display().to_string()).collect();
    archives.sort();
    let mut args = vec!["verify", "--identity", &key];
    args.extend(archives.iter().map(String::as_str));
    ok(&store.backup(&args, &[]));
    let to = store.dir.path().join("r");
    ok(&store.backup(
        &["restore", last["path"].as_str().expect("p"), "--to", &to.display().to_string(), "--identity", &key],
        &[],
    ));
    assert_eq!(tree(&to.join("mail/home")), tree(&store.mail));
}

/// An mbox account's folders (the files its Sieve rules filed into) are backed up and restored
/// beside its mbox file.
#[test]
fn an_mbox_account_is_backed_up_with_its_folder_files() {
    let mut pb = server_with_mail(0, 6);
    pb.start();
    let store = Store::new(pb.pop3s.expect("pop3s").port(), &pb.cert());
    let mbox = store.dir.path().join("inbox");
    let text = std::fs::read_to_string(&store.accounts).expect("accounts");
    let text = text.replace(
        &format!("{{ maildir = \"{}\" }}", store.mail.display()),
        &format!("{{ mbox = \"{}\" }}", mbox.display()),
    );
    std::fs::write(&store.accounts, format!("{text}sieve = \"rules.sieve\"\n")).expect("accounts");
    std::fs::write(
        store.dir.path().join("rules.sieve"),
        "require \"fileinto\";\nif header :contains \"Subject\" [\"1\", \"3\", \"5\"] { fileinto \"odd\"; }\n",
    )
    .expect("rules");
    store.fetch();
    let folder = store.dir.path().join("inbox.folders/odd");
    assert!(std::fs::metadata(&folder).expect("the folder file").len() > 0);
    let env = [("PILLARBOX_PASSPHRASE", PASSPHRASE)];
    let made = store.create(&[], &env);
    let to = store.dir.path().join("restored");
    ok(&store.backup(&["restore", made["path"].as_str().expect("p"), "--to", &to.display().to_string()], &env));
    let read = |p: &Path| std::fs::read(p).expect("read");
    assert_eq!(read(&to.join("mail/home.mbox")), read(&mbox));
    assert_eq!(read(&to.join("mail/home.folders/odd")), read(&folder));
}
