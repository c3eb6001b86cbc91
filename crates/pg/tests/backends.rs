//! The PostgreSQL backends against a private PostgreSQL server (Debian's `postgresql`): the
//! conformance suites every directory and store passes, and what only a shared database can
//! show (schema versions, leases between nodes).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use pillarbox_pg::{Db, Settings, schema};
use pillarbox_testpg::TestPg;

fn server() -> &'static TestPg {
    static PG: OnceLock<TestPg> = OnceLock::new();
    PG.get_or_init(TestPg::start)
}

/// A fresh database with the schema, and its URL.
async fn fresh(lease: Duration) -> (Db, String) {
    static N: AtomicUsize = AtomicUsize::new(0);
    let name = format!("t{}_{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
    let url = server().database(&name);
    let db = Db::new(Settings { url: url.clone(), pool_size: 8, lease, ..Settings::default() }).expect("pool");
    assert_eq!(schema::init(&db).await.expect("init"), schema::VERSION);
    (db, name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quarantine_conforms() {
    let (db, _) = fresh(Duration::from_secs(30)).await;
    pillarbox_core::quarantine::conformance::run(&pillarbox_pg::quarantine::PgQuarantine::new(db)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_directory_conforms() {
    let (db, _) = fresh(Duration::from_secs(30)).await;
    pillarbox_auth::directory::conformance::run(&pillarbox_pg::directory::PgDirectory::new(db)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_domain_registry_conforms_and_two_nodes_cannot_give_one_alias_twice() {
    use pillarbox_auth::domains::{DomainRecord, DomainRegistry};
    use pillarbox_auth::{DirectoryError, DomainName};
    let (db, name) = fresh(Duration::from_secs(30)).await;
    pillarbox_auth::domains::conformance::run(&pillarbox_pg::domains::PgDomains::new(db.clone())).await;
    // Two nodes each give one new alias to another domain at the same moment: one wins.
    let d = |s: &str| DomainName::new(s).expect("test");
    let url = server().url(&name);
    let other = Db::new(Settings { url, pool_size: 2, ..Settings::default() }).expect("pool");
    let (a, b) = (pillarbox_pg::domains::PgDomains::new(db), pillarbox_pg::domains::PgDomains::new(other));
    a.add(&d("one.test"), DomainRecord::default()).await.expect("test");
    a.add(&d("two.test"), DomainRecord::default()).await.expect("test");
    async fn give(reg: &pillarbox_pg::domains::PgDomains, to: &str) -> Result<(), DirectoryError> {
        let change = Box::new(|r: &mut DomainRecord| {
            r.aliases.insert(DomainName::new("shared.test").expect("test"));
        });
        reg.modify(&DomainName::new(to).expect("test"), change).await
    }
    let (ra, rb) = tokio::join!(give(&a, "one.test"), give(&b, "two.test"));
    assert!(ra.is_ok() != rb.is_ok(), "{ra:?} {rb:?}");
    assert!(matches!(ra.err().or(rb.err()), Some(DirectoryError::Refused(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_tokens_and_the_audit_log_conform() {
    let (db, _) = fresh(Duration::from_secs(30)).await;
    pillarbox_core::access::conformance::run(&pillarbox_pg::access::PgAccess::new(db)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_sessions_conform_and_one_node_ends_another_nodes_session() {
    use pillarbox_core::sessions::{SessionInfo, SessionRegistry};
    use pillarbox_pg::sessions::PgSessions;
    let (db, name) = fresh(Duration::from_secs(30)).await;
    pillarbox_core::sessions::conformance::run(&PgSessions::new(db.clone(), "a".into())).await;
    let other = Db::new(Settings { url: server().url(&name), pool_size: 2, ..Settings::default() }).expect("pool");
    let (a, b) = (PgSessions::new(db, "node-a".into()), PgSessions::new(other, "node-b".into()));
    let info = SessionInfo {
        id: pillarbox_core::sessions::new_id(),
        user: "alice@example.com".into(),
        client: "[2001:db8::1]:40000".into(),
        tls: true,
        mechanism: "SCRAM-SHA-256".into(),
        started_at: 1_700_000_000,
        node: String::new(),
    };
    let mut live = a.open(info.clone()).await;
    let seen = b.list().await.expect("list");
    assert_eq!(seen.len(), 1);
    assert_eq!((seen[0].user.as_str(), seen[0].node.as_str()), ("alice@example.com", "node-a"), "{seen:?}");
    assert!(b.end(&info.id).await.expect("end"), "node b finds node a's session");
    // Node a learns it at its next poll.
    tokio::time::timeout(pillarbox_pg::sessions::POLL * 10, live.ended()).await.expect("ended on node a");
    drop(live);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !b.list().await.expect("list").is_empty() {
        assert!(std::time::Instant::now() < deadline, "an ended session leaves every node's list");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!b.end(&info.id).await.expect("end"), "an ended session cannot be ended again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schema_is_made_once_upgraded_in_place_and_a_newer_one_is_refused() {
    let (db, name) = fresh(Duration::from_secs(30)).await;
    assert_eq!(schema::init(&db).await.expect("again"), schema::VERSION, "idempotent");
    schema::check(&db).await.expect("current");
    let status = schema::status(&db).await.expect("status");
    assert_eq!((status.version, status.users, status.messages, status.leases), (schema::VERSION, 0, 0, 0));
    server().psql(&name, &format!("INSERT INTO pillarbox_schema (version) VALUES ({})", schema::VERSION + 1));
    let refused = schema::init(&db).await.expect_err("newer");
    assert!(refused.to_string().contains("newer than this program"), "{refused}");
    assert!(schema::check(&db).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_conforms() {
    let (db, name) = fresh(Duration::from_secs(30)).await;
    let store = pillarbox_pg::store::PgStore::new(db);
    let lose = |user: &pillarbox_proto::UserName| {
        server().psql(
            &name,
            &format!(
                "UPDATE leases SET expires_at = now() - interval '1 second' \
                 WHERE account_id = (SELECT account_id FROM logins WHERE login = '{user}')"
            ),
        );
    };
    pillarbox_store::conformance::run(&store, &lose).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_login_gate_conforms_and_two_nodes_count_together() {
    use pillarbox_core::gate::{IpGrouping, LoginGate};
    let (db, name) = fresh(Duration::from_secs(30)).await;
    pillarbox_core::gate::conformance::run(&pillarbox_pg::gate::PgLoginGate::new(db.clone(), IpGrouping::default()))
        .await;
    // The counts were kept in the database (not only by the node's fallback).
    let kept: u32 = server().psql(&name, "SELECT count(*) FROM login_failures").parse().expect("count");
    assert!(kept > 5, "{kept} counts in the database");
    // Two nodes: a guesser who spreads over them is counted once.
    let one = pillarbox_pg::gate::PgLoginGate::new(db.clone(), IpGrouping::default());
    let two = pillarbox_pg::gate::PgLoginGate::new(db, IpGrouping::default());
    let from: std::net::IpAddr = "203.0.113.77".parse().expect("ip");
    let mut last = 0;
    for i in 0..6 {
        let node: &dyn LoginGate = if i % 2 == 0 { &one } else { &two };
        last = node.failure(from, "spread").await;
    }
    assert_eq!(last, 6, "six failures over two nodes are six");
    let erin = pillarbox_proto::UserName::new("erin").expect("name");
    assert!(one.login_allowed(&erin, Duration::from_secs(60)).await);
    assert!(!two.login_allowed(&erin, Duration::from_secs(60)).await, "LOGIN-DELAY holds on every node");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_claims_a_round_and_dead_deliveries_are_collected() {
    use pillarbox_store::Mailstore;
    let (db, name) = fresh(Duration::from_secs(30)).await;
    let one = pillarbox_pg::store::PgStore::new(db.clone());
    let two = pillarbox_pg::store::PgStore::new(db);
    let hour = Duration::from_secs(3600);
    assert!(one.claim_job("expunge", hour).await.expect("claim"));
    assert!(!two.claim_job("expunge", hour).await.expect("claim"), "claimed by the other node for an hour");
    assert!(!one.claim_job("expunge", hour).await.expect("claim"));
    assert!(two.claim_job("orphans", hour).await.expect("claim"), "another job is claimed apart");

    // A delivery that died after two chunks: nothing links them.
    let bob = pillarbox_proto::UserName::new("bob").expect("name");
    let mut p = one.begin_delivery(&bob).await.expect("begin");
    p.write(&vec![b'x'; 600 * 1024]).await.expect("write");
    drop(p);
    let kept = pillarbox_store::conformance::deliver(&one, &bob, b"Subject: kept\n\nx\n").await;
    assert_eq!(server().psql(&name, "SELECT count(*) FROM bodies"), "3", "two chunks of the dead one, one kept");
    assert_eq!(one.collect_garbage().await.expect("gc"), 0, "a delivery that may still be running stays");
    server().psql(&name, "UPDATE pending_bodies SET started_at = now() - interval '7 hours'");
    assert_eq!(one.collect_garbage().await.expect("gc"), 2);
    assert_eq!(server().psql(&name, "SELECT count(*) FROM bodies"), "1");
    assert_eq!(one.open(&bob, false).await.expect("open").listing.entries.len(), 1, "{kept:?} stays");
}

/// A private CA and a certificate for 127.0.0.1 it signed (openssl), in `dir`.
fn certificates(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl").args(args).current_dir(dir).output().expect("openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=Test database CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    ]);
    run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n").expect("ext");
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "server.pem",
    ]);
    (dir.join("ca.pem"), dir.join("server.pem"), dir.join("server.key"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_the_database_is_verified() {
    let pg = TestPg::start();
    let url = pg.database("secure");
    let work = tempfile::tempdir().expect("tempdir");
    let (ca, cert, key) = certificates(work.path());
    pg.enable_tls(&cert, &key);
    let required = format!("{url}?sslmode=require");
    // With the database's CA: TLS, and the server says the connection is encrypted.
    let db = Db::new(Settings { url: required.clone(), ca_file: Some(ca), ..Settings::default() }).expect("pool");
    let c = db.client().await.expect("a TLS connection");
    let row = c.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).await.expect("query");
    assert!(row.get::<_, bool>(0), "the connection is encrypted");
    drop(c);
    // Without it, a certificate nobody vouches for is refused (verification is on).
    let untrusted = Db::new(Settings { url: required, ..Settings::default() }).expect("pool");
    let refused = untrusted.client().await.expect_err("an unverified certificate");
    assert!(refused.to_string().to_lowercase().contains("certificate"), "{refused}");
}
