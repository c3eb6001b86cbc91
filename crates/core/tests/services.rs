//! The service layer's rules, through its own API, over the in-memory directory, gate and store
//! (and the Maildir store where files matter).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pillarbox_auth::{Directory, DomainName, DomainRecord, DomainSet, MemoryDirectory, UserRecord};
use pillarbox_core::admin::{AdminError, Imported, NewPassword, Setting};
use pillarbox_core::deliver::Refusal;
use pillarbox_core::login::Attempt;
use pillarbox_core::{MemoryGate, Policy, Services};
use pillarbox_proto::server::{AuthFailure, Credential};
use pillarbox_proto::{Expire, Secret, UserName};
use pillarbox_store::Mailstore;
use pillarbox_store::maildir::MaildirStore;
use pillarbox_store::memory::MemoryStore;

const PASSWORD: &str = "correct horse battery staple 2026";

fn name(s: &str) -> UserName {
    UserName::new(s).expect("name")
}

fn services(policy: Policy) -> (Services, Arc<MemoryDirectory>, MemoryStore) {
    let directory = Arc::new(MemoryDirectory::new());
    let store = MemoryStore::new();
    let s = Services::new(policy, directory.clone(), Arc::new(store.clone()), Arc::new(MemoryGate::new()))
        .expect("services");
    (s, directory, store)
}

fn password(p: &str) -> Credential {
    Credential::Password(Secret::new(p.as_bytes().to_vec()))
}

fn attempt() -> Attempt<'static> {
    Attempt { peer: SocketAddr::from(([192, 0, 2, 7], 40000)), tls: true, mechanism: "USER/PASS" }
}

async fn add(s: &Services, user: &str) {
    s.add_user(&name(user), NewPassword::Given(Secret::new(PASSWORD.as_bytes().to_vec()))).await.expect("add");
}

fn message(n: usize) -> Box<dyn std::io::Read + Send> {
    Box::new(std::io::Cursor::new(format!("Subject: {n}\n\nbody {n}\n").into_bytes()))
}

#[tokio::test]
async fn logins_check_credentials_and_open_the_maildrop() {
    let (s, _, _) = services(Policy::default());
    add(&s, "alice").await;
    assert!(s.check_credential("alice", password("wrong password")).await.verified().is_none());
    assert!(s.check_credential("nobody", password(PASSWORD)).await.verified().is_none());
    let v = s.check_credential("ALICE", password(PASSWORD)).await.verified().expect("canonical name, right password");
    assert_eq!(v.name().as_str(), "alice");
    let session = s.open_session(&attempt(), v).await.expect("open");
    assert!(session.maildrop.lease().is_some(), "lock = true leases the maildrop");
    let again = s.check_credential("alice", password(PASSWORD)).await.verified().expect("verified");
    assert!(matches!(s.open_session(&attempt(), again).await, Err(AuthFailure::InUse)));
    drop(session);
    let again = s.check_credential("alice", password(PASSWORD)).await.verified().expect("verified");
    assert!(s.open_session(&attempt(), again).await.is_ok(), "the maildrop is free again");
}

#[tokio::test]
async fn a_login_upgrade_never_undoes_a_password_change_made_meanwhile() {
    let (s, directory, _) = services(Policy::default());
    let alice = name("alice");
    // An imported hash, upgraded at the next password login.
    directory.create(&alice, UserRecord::with_hash("{PLAIN}imported secret".into())).await.expect("create");
    let verified =
        s.check_credential("alice", password("imported secret")).await.verified().expect("imported hash verifies");
    // Between the check and the upgrade, the administrator sets a new password.
    s.set_password(&alice, NewPassword::Given(Secret::new(PASSWORD.as_bytes().to_vec()))).await.expect("passwd");
    drop(s.open_session(&attempt(), verified).await.expect("the login itself goes on"));
    let entry = directory.lookup(&alice).await.expect("lookup").expect("alice");
    assert!(directory.verify_password(Some(&entry), PASSWORD.as_bytes()), "the administrator's password stands");
    assert!(!directory.verify_password(Some(&entry), b"imported secret"), "the old one is not brought back");

    // Without a change meanwhile, the upgrade happens: argon2id and SCRAM keys.
    let bob = name("bob");
    directory.create(&bob, UserRecord::with_hash("{PLAIN}imported secret".into())).await.expect("create");
    let verified = s.check_credential("bob", password("imported secret")).await.verified().expect("verifies");
    drop(s.open_session(&attempt(), verified).await.expect("open"));
    let entry = directory.lookup(&bob).await.expect("lookup").expect("bob");
    assert!(entry.record.password_hash.starts_with("$argon2id$"), "{}", entry.record.password_hash);
    assert!(entry.record.scram_sha256.is_some());
    assert!(directory.verify_password(Some(&entry), b"imported secret"));
}

#[tokio::test]
async fn scram_keys_of_unknown_users_look_like_real_ones_and_stay_the_same() {
    let (s, _, _) = services(Policy::default());
    add(&s, "alice").await;
    let hash = pillarbox_auth::ScramHash::Sha256;
    let (user, real) = s.scram_keys("alice", hash).await.expect("the directory answers");
    assert_eq!(user.map(|u| u.to_string()), Some("alice".into()));
    let (none, fake) = s.scram_keys("mallory", hash).await.expect("the directory answers");
    assert!(none.is_none());
    assert_eq!((fake.salt.len(), fake.iterations), (real.salt.len(), real.iterations));
    assert_eq!(
        s.scram_keys("mallory", hash).await.expect("the directory answers").1.salt,
        fake.salt,
        "the same salt every time"
    );
}

#[tokio::test]
async fn scram_salts_do_not_tell_which_users_exist() {
    let (s, _, _) = services(Policy::default());
    add(&s, "alice").await;
    let hash = pillarbox_auth::ScramHash::Sha256;
    // For alice every spelling of the name gives her salt; for mallory, who does not exist,
    // every spelling must give one salt too, or comparing them would tell the two apart.
    for user in ["alice", "mallory"] {
        let salts: Vec<Vec<u8>> = futures_salts(&s, user, hash).await;
        assert!(salts.windows(2).all(|w| w[0] == w[1]), "{user}: {salts:?}");
    }
    assert_ne!(
        s.scram_keys("mallory", hash).await.expect("the directory answers").1.salt,
        s.scram_keys("mallory", pillarbox_auth::ScramHash::Sha1).await.expect("the directory answers").1.salt,
        "each hash its own made-up salt, as a real user has"
    );
}

async fn futures_salts(s: &Services, user: &str, hash: pillarbox_auth::ScramHash) -> Vec<Vec<u8>> {
    let upper = user.to_uppercase();
    let soft = format!("{}\u{AD}{}", &user[..2], &user[2..]);
    let mut v = Vec::new();
    for spelling in [user, upper.as_str(), soft.as_str()] {
        v.push(s.scram_keys(spelling, hash).await.expect("the directory answers").1.salt);
    }
    v
}

#[tokio::test(start_paused = true)]
async fn a_wrong_password_of_a_fast_imported_hash_takes_as_long_as_an_unknown_user() {
    let (s, _, _) = services(Policy::default());
    s.import_users("fast:{PLAIN}imported secret\n", false).await.expect("import");
    // An unknown user pays the dummy slow check; that sets how long a slow check takes. (The
    // clock is paused: the check runs on its own thread in real time, while waits are on the
    // paused clock, so what is compared is how long the server makes the client wait.)
    assert!(s.check_credential("nobody", password("guess")).await.verified().is_none());
    let t0 = tokio::time::Instant::now();
    assert!(s.check_credential("nobody", password("guess")).await.verified().is_none());
    let unknown = tokio::time::Instant::now() - t0;
    let t1 = tokio::time::Instant::now();
    assert!(s.check_credential("fast", password("guess")).await.verified().is_none());
    let fast = tokio::time::Instant::now() - t1;
    assert!(fast > Duration::ZERO, "a failed fast check is held back");
    // Both wait until the average slow check is over (the average moves a little with each).
    let (lo, hi) = (unknown.min(fast), unknown.max(fast));
    assert!(hi <= lo * 2, "unknown {unknown:?}, fast {fast:?}");
    // A right password is not held back.
    let t2 = tokio::time::Instant::now();
    assert!(s.check_credential("fast", password("imported secret")).await.verified().is_some());
    assert_eq!(tokio::time::Instant::now() - t2, Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn failed_logins_wait_longer_each_time_up_to_the_cap() {
    let policy =
        Policy { fail_delay: Duration::from_secs(2), fail_delay_max: Duration::from_secs(7), ..Policy::default() };
    let (s, _, _) = services(policy);
    let mut waited = Vec::new();
    for _ in 0..4 {
        let start = tokio::time::Instant::now();
        s.login_failed(&attempt(), "alice").await;
        waited.push(start.elapsed().as_secs());
    }
    assert_eq!(waited, vec![2, 4, 7, 7]);
    // A success clears the count.
    add(&s, "alice").await;
    let v = s.check_credential("alice", password(PASSWORD)).await.verified().expect("verified");
    drop(s.open_session(&attempt(), v).await.expect("open"));
    let start = tokio::time::Instant::now();
    s.login_failed(&attempt(), "alice").await;
    assert_eq!(start.elapsed().as_secs(), 2);
}

#[tokio::test(start_paused = true)]
async fn login_delay_and_sessions_per_user() {
    let policy = Policy { lock: false, login_delay: 60, max_sessions_per_user: 2, ..Policy::default() };
    let (s, _, _) = services(policy);
    add(&s, "alice").await;
    let login = async || s.check_credential("alice", password(PASSWORD)).await.verified().expect("verified");
    let first = s.open_session(&attempt(), login().await).await.expect("first");
    assert_eq!(first.login.login_delay, Some(60));
    assert!(matches!(s.open_session(&attempt(), login().await).await, Err(AuthFailure::LoginDelay)));
    // Per user: a shorter delay of their own.
    s.set(&name("alice"), Setting::LoginDelay(Some(1))).await.expect("set");
    tokio::time::advance(Duration::from_secs(1)).await;
    let second = s.open_session(&attempt(), login().await).await.expect("second");
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(matches!(s.open_session(&attempt(), login().await).await, Err(AuthFailure::InUse)), "two at most");
    drop(second);
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(s.open_session(&attempt(), login().await).await.is_ok());
    drop(first);
}

#[tokio::test]
async fn announce_reflects_per_user_settings() {
    let (s, _, _) = services(Policy { expire: Expire::Days(30), ..Policy::default() });
    add(&s, "alice").await;
    let a = s.announce().await;
    assert!(!a.apop && !a.expire.per_user && a.login_delay.is_none());
    s.set(&name("alice"), Setting::Expire(Some(Expire::Days(3)))).await.expect("set");
    s.set_apop(&name("alice"), Some(Secret::new(b"apop secret".to_vec()))).await.expect("apop");
    let a = s.announce().await;
    assert!(a.expire.per_user);
    assert!(!a.apop, "APOP is off in this policy");
    let (s, _, _) = services(Policy { apop: true, ..Policy::default() });
    add(&s, "bob").await;
    s.set_apop(&name("bob"), Some(Secret::new(b"apop secret".to_vec()))).await.expect("apop");
    assert!(s.announce().await.apop);
}

/// A policy whose configuration names `local` as a domain of bare user names.
fn with_local_domain(local: &str) -> Policy {
    let mut set = DomainSet::default();
    set.domains
        .insert(DomainName::new(local).expect("domain"), DomainRecord { local: true, ..DomainRecord::default() });
    Policy { domains: Arc::new(set), ..Policy::default() }
}

#[tokio::test]
async fn recipients_map_to_users_within_the_configured_domains() {
    let (s, _, _) = services(with_local_domain("example.org"));
    add(&s, "alice").await;
    assert_eq!(s.recipient("Alice+lists@EXAMPLE.org", None).await.map(|u| u.to_string()), Ok("alice".into()));
    assert_eq!(s.recipient("alice@example.com", None).await, Err(Refusal::NotHere("example.com".into())));
    assert_eq!(s.recipient("bob@example.org", None).await, Err(Refusal::UnknownUser));
    assert_eq!(s.recipient("b o b@example.org", None).await, Err(Refusal::UnknownUser));
}

#[tokio::test]
async fn every_delivery_path_enforces_the_quota() {
    let mut policy = Policy::default();
    policy.delivery.quota_messages = 2;
    let (s, _, store) = services(policy);
    add(&s, "alice").await;
    // The MDA path (`pillarbox deliver`), which once skipped the quota.
    s.deliver("alice", message(1), None).await.expect("first");
    s.deliver("alice", message(2), None).await.expect("second");
    assert_eq!(s.deliver("alice", message(3), None).await, Err(Refusal::OverQuota { permanent: true }));
    // The LMTP path: refused at RCPT already.
    assert_eq!(s.recipient("alice", Some(10)).await, Err(Refusal::OverQuota { permanent: true }));
    assert_eq!(store.usage(&name("alice")).await.expect("usage").messages, 2);
    // A user's own quota overrides the default; a temporary policy asks the sender to retry.
    s.set(&name("alice"), Setting::Quota { bytes: Some(1_000_000), messages: Some(10) }).await.expect("set");
    s.deliver("alice", message(3), None).await.expect("within the user's own quota");
    let mut policy = Policy::default();
    policy.delivery.quota_bytes = 30;
    policy.delivery.over_quota = pillarbox_core::OverQuota::Temporary;
    let (s, _, _) = services(policy);
    add(&s, "bob").await;
    s.deliver("bob", message(1), None).await.expect("fits");
    let r = s.deliver("bob", message(2), None).await;
    assert_eq!(r, Err(Refusal::OverQuota { permanent: false }));
    assert!(r.err().is_some_and(|r| r.is_temporary()));
}

#[tokio::test]
async fn the_size_limit_and_unknown_users_store_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(MaildirStore::new(dir.path()));
    let s =
        Services::new(Policy::default(), Arc::new(MemoryDirectory::new()), store.clone(), Arc::new(MemoryGate::new()))
            .expect("services");
    add(&s, "alice").await;
    let big: Box<dyn std::io::Read + Send> = Box::new(std::io::Cursor::new(vec![b'x'; 200_000]));
    assert_eq!(s.deliver("alice", big, Some(100_000)).await, Err(Refusal::TooLarge { limit: 100_000 }));
    assert_eq!(s.deliver("nobody", message(1), None).await, Err(Refusal::UnknownUser));
    assert_eq!(store.usage(&name("alice")).await.expect("usage").messages, 0);
    assert_eq!(std::fs::read_dir(dir.path().join("alice/tmp")).expect("tmp").count(), 0, "no partial file left");
    assert!(!dir.path().join("nobody").exists(), "no maildrop made for an unknown user");
    let d = s.deliver("alice", message(1), Some(100_000)).await.expect("deliver");
    assert!(dir.path().join("alice/new").join(&d.name).is_file());
}

#[tokio::test]
async fn administration_keeps_its_rules() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Services::new(
        Policy::default(),
        Arc::new(MemoryDirectory::new()),
        Arc::new(MaildirStore::new(dir.path())),
        Arc::new(MemoryGate::new()),
    )
    .expect("services");
    let alice = name("alice");
    let weak = s.add_user(&alice, NewPassword::Given(Secret::new(b"password1".to_vec()))).await;
    assert!(matches!(weak, Err(AdminError::WeakPassword(_))), "{weak:?}");
    let generated = s.add_user(&alice, NewPassword::Generate).await.expect("add").expect("generated");
    assert!(dir.path().join("alice/new").is_dir(), "the maildrop exists before the first delivery");
    let v = s.check_credential("alice", password(&generated)).await;
    assert!(v.verified().is_some(), "the generated password works");
    assert!(matches!(s.add_user(&alice, NewPassword::Generate).await, Err(AdminError::Exists(_))));
    assert!(matches!(s.set(&name("bob"), Setting::ClearQuota).await, Err(AdminError::NoSuchUser(_))));
    assert!(matches!(s.set(&alice, Setting::Quota { bytes: None, messages: None }).await, Err(AdminError::Invalid(_))));
    assert!(matches!(s.set_apop(&alice, Some(Secret::new(Vec::new()))).await, Err(AdminError::Invalid(_))));
    let kept = s.remove_user(&alice).await.expect("remove");
    assert_eq!(kept, dir.path().join("alice").display().to_string());
    assert!(dir.path().join("alice/new").is_dir(), "the mail is kept");
    assert!(s.check_credential("alice", password(&generated)).await.verified().is_none());

    let report = s
        .import_users(
            "# a Dovecot passwd-file\ncarol:{PLAIN}carol secret::::::\nbad name:{PLAIN}x\ndave:{CRAM-MD5}abc\nnocolon\n",
            false,
        )
        .await
        .expect("import");
    assert_eq!(report.imported, 1);
    assert_eq!(report.skipped.len(), 3, "{:?}", report.skipped);
    assert!(s.check_credential("carol", password("carol secret")).await.verified().is_some());
    let again = s.import_users("carol:{PLAIN}other\n", false).await.expect("import");
    assert_eq!(again, Imported { imported: 0, skipped: vec!["carol: already exists (use --replace)".into()] });
}

#[tokio::test]
async fn the_expunge_round_removes_what_is_past_retention() {
    let (s, _, store) = services(Policy { expire: Expire::Days(1), ..Policy::default() });
    add(&s, "alice").await;
    add(&s, "bob").await;
    s.set(&name("bob"), Setting::Expire(Some(Expire::Never))).await.expect("set");
    for user in ["alice", "bob"] {
        s.deliver(user, message(1), None).await.expect("deliver");
        s.deliver(user, message(2), None).await.expect("deliver");
        let mut opened = store.open(&name(user), true).await.expect("open");
        let long_ago = pillarbox_os::unix_now() - 3 * 86_400;
        opened
            .maildrop
            .commit(&pillarbox_store::Update { deleted: &[], retrieved: &[0], now: long_ago })
            .await
            .expect("retrieved three days ago");
    }
    assert_eq!(s.expunge_round().await, 1, "alice's old message; bob keeps his");
    assert_eq!(store.usage(&name("alice")).await.expect("usage").messages, 1);
    assert_eq!(store.usage(&name("bob")).await.expect("usage").messages, 2);
    // A maildrop in use is left for the next round.
    let held = s.check_credential("alice", password(PASSWORD)).await.verified().expect("verified");
    let held = s.open_session(&attempt(), held).await.expect("open");
    assert_eq!(s.expunge_round().await, 0);
    drop(held);
}

#[tokio::test]
async fn domains_deliver_log_in_and_default_by_domain() {
    let (s, _, store) = services(with_local_domain("example.org"));
    let rec = DomainRecord {
        quota_messages: Some(1),
        expire: Some(Expire::Days(7)),
        aliases: [DomainName::new("example.net").expect("alias")].into(),
        ..DomainRecord::default()
    };
    s.add_domain("Example.COM", rec).await.expect("add domain");
    s.add_domain("closed.test", DomainRecord { pop3: false, ..DomainRecord::default() }).await.expect("add");
    // A user of a domain that is not here, or named through an alias, is refused with the fix.
    let refused = |r: Result<Option<String>, AdminError>| match r {
        Err(AdminError::Invalid(why)) => why,
        other => panic!("{other:?}"),
    };
    let given = || NewPassword::Given(Secret::new(PASSWORD.as_bytes().to_vec()));
    assert!(refused(s.add_user(&name("x@nowhere.test"), given()).await).contains("pillarbox domain add nowhere.test"));
    assert!(refused(s.add_user(&name("x@example.net"), given()).await).contains("add x@example.com instead"));
    for u in ["alice", "alice@example.com", "carol@closed.test"] {
        add(&s, u).await;
    }

    // Delivery: each domain its own alice; the alias is the domain; bare names only for the
    // configuration's domain; other domains are not delivered here.
    let to = async |a: &str| s.recipient(a, None).await.map(|u| u.to_string());
    assert_eq!(to("alice@example.org").await, Ok("alice".into()));
    assert_eq!(to("alice@example.com").await, Ok("alice@example.com".into()));
    assert_eq!(to("Alice+x@EXAMPLE.net").await, Ok("alice@example.com".into()));
    assert_eq!(to("bob@example.com").await, Err(Refusal::UnknownUser), "no bare fallback for a virtual domain");
    assert_eq!(to("alice@else.test").await, Err(Refusal::NotHere("else.test".into())));
    // The domain's quota is its users' default: one message.
    s.deliver("alice@example.com", message(1), None).await.expect("first");
    assert_eq!(to("alice@example.com").await, Err(Refusal::OverQuota { permanent: true }));
    s.deliver("alice", message(1), None).await.expect("the bare alice has the server's default");
    s.deliver("alice", message(2), None).await.expect("no limit");
    assert_eq!(store.usage(&name("alice@example.com")).await.expect("usage").messages, 1);

    // Login: the domain's retention; POP3 off for closed.test (after the password, which is
    // checked as always).
    let v = s.check_credential("alice@example.com", password(PASSWORD)).await.verified().expect("verified");
    let session = s.open_session(&attempt(), v).await.expect("open");
    assert_eq!(session.login.expire, Some(Expire::Days(7)));
    assert!(s.announce().await.expire.per_user, "a domain's retention is announced as per-user");
    let v = s.check_credential("carol@closed.test", password(PASSWORD)).await.verified().expect("verified");
    assert!(matches!(s.open_session(&attempt(), v).await, Err(AuthFailure::Disabled)));

    // Listing counts users per domain; a domain with users is removed only with force.
    let list = s.domain_list().await.expect("list");
    let users: Vec<(String, usize)> = list.iter().map(|d| (d.name.to_string(), d.users)).collect();
    assert_eq!(users, [("closed.test".into(), 1), ("example.com".into(), 1), ("example.org".into(), 1)]);
    assert!(matches!(s.remove_domain("closed.test", false).await, Err(AdminError::Invalid(_))));
    assert_eq!(s.remove_domain("closed.test", true).await.expect("forced"), 1);
    assert!(
        matches!(s.remove_domain("example.org", false).await, Err(AdminError::Invalid(m)) if m.contains("configuration"))
    );
}
