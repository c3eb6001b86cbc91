//! The schema, as numbered migrations applied in order (each once, in its own transaction; the
//! table `pillarbox_schema` records which). A database whose schema is newer than this program
//! is refused rather than used.
//!
//! Every table of per-user data is keyed by `account_id`, a surrogate that never changes (a
//! login can be renamed without moving anything), so that the schema distributes by that one
//! column (Citus: `create_distributed_table('messages', 'account_id')` and so on, with `logins`
//! a reference table). Bodies are kept in chunk rows of about 256 KiB (CRLF, not dot-stuffed):
//! read a few per query, never one giant value, never large objects.

use tokio_postgres::types::Type;

use crate::PgError;

/// The schema this program writes and reads.
pub const VERSION: i32 = 3;

const MIGRATIONS: [(i32, &str); 3] = [
    (
        1,
        r#"
CREATE SEQUENCE account_ids;
CREATE TABLE accounts (
    account_id     bigint PRIMARY KEY DEFAULT nextval('account_ids'),
    login          text NOT NULL,
    password_hash  text NOT NULL,
    scram_sha256   text,
    scram_sha1     text,
    apop_secret    bytea,
    secret_version bigint NOT NULL DEFAULT 1,
    quota_bytes    bigint,
    quota_messages bigint,
    expire         text,
    login_delay    integer,
    -- The next message number: UIDs are never reused, not even after a deletion.
    next_message   bigint NOT NULL DEFAULT 1,
    messages       bigint NOT NULL DEFAULT 0,
    bytes          bigint NOT NULL DEFAULT 0,
    created_at     timestamptz NOT NULL DEFAULT now()
);

-- Login to account: the one place a name is looked up (a reference table on Citus). Byte order
-- ("C"), whatever the database's locale: users are listed in pages by it, through the index.
CREATE TABLE logins (
    login      text COLLATE "C" PRIMARY KEY,
    account_id bigint NOT NULL UNIQUE
);

CREATE TABLE messages (
    account_id   bigint NOT NULL,
    message_id   bigint NOT NULL,
    uidl         text NOT NULL,
    body_id      bigint NOT NULL,
    size         bigint NOT NULL,
    raw_size     bigint NOT NULL,
    delivered_at timestamptz NOT NULL DEFAULT now(),
    retrieved_at bigint,
    PRIMARY KEY (account_id, message_id),
    UNIQUE (account_id, uidl)
);

-- Bodies are written chunk by chunk before the message row that links them exists. A delivery
-- in progress is listed in pending_bodies until the transaction that links its body commits
-- (which removes the entry); one listed for hours died, and its chunks are collected by a job.
CREATE SEQUENCE body_ids;
CREATE TABLE pending_bodies (
    account_id bigint NOT NULL,
    body_id    bigint NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, body_id)
);
CREATE TABLE bodies (
    account_id bigint NOT NULL,
    body_id    bigint NOT NULL,
    seq        integer NOT NULL,
    data       bytea NOT NULL,
    written_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, body_id, seq)
);

-- Exclusive access (RFC 1939 section 8) across nodes: a lease with an expiry and a fencing
-- token that only ever grows.
CREATE SEQUENCE lease_tokens;
CREATE TABLE leases (
    account_id bigint PRIMARY KEY,
    token      bigint NOT NULL,
    holder     text NOT NULL,
    expires_at timestamptz NOT NULL
);

-- Failed logins and LOGIN-DELAY, shared by every node.
CREATE TABLE login_failures (
    key        text PRIMARY KEY,
    count      integer NOT NULL,
    last_at    timestamptz NOT NULL
);
CREATE TABLE last_logins (
    login      text PRIMARY KEY,
    at         timestamptz NOT NULL
);

-- Background work any node may claim (FOR UPDATE SKIP LOCKED): no leader, nothing done twice.
CREATE TABLE jobs (
    name       text PRIMARY KEY,
    due_at     timestamptz NOT NULL,
    claimed_by text,
    done_at    timestamptz
);
INSERT INTO jobs (name, due_at) VALUES ('expunge', now()), ('orphans', now());
"#,
    ),
    (
        2,
        r#"
-- Mail domains (`pillarbox domain`): settings for their users, alias domains and the server
-- names whose connections log in to them. Few rows, changed rarely, read whole by every node
-- (a reference table on Citus).
CREATE TABLE domains (
    name           text COLLATE "C" PRIMARY KEY,
    quota_bytes    bigint,
    quota_messages bigint,
    expire         text,
    pop3           boolean NOT NULL DEFAULT true,
    aliases        text[] NOT NULL DEFAULT '{}',
    names          text[] NOT NULL DEFAULT '{}',
    created_at     timestamptz NOT NULL DEFAULT now()
);

-- ACME (RFC 8555) for every node: the account (one per CA directory), the certificates every
-- node serves, the challenge answers every node gives while one node validates, and which node
-- orders (a lease it renews while it lives).
CREATE TABLE acme_accounts (
    directory   text PRIMARY KEY,
    credentials text NOT NULL
);
CREATE TABLE acme_certificates (
    name       text COLLATE "C" PRIMARY KEY,
    cert_pem   text NOT NULL,
    key_pem    text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE acme_challenges (
    kind       text NOT NULL,
    key        text NOT NULL,
    value      text NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (kind, key)
);
CREATE TABLE acme_leader (
    id         integer PRIMARY KEY CHECK (id = 1),
    holder     text NOT NULL,
    expires_at timestamptz NOT NULL
);

-- Administration: an account an administrator turned off; the POP3 sessions live on any node
-- (each node renews its rows' heartbeat and ends the ones asked to end); the admin API's tokens
-- (only their SHA-256 is kept) and the audit log of every change made through it.
ALTER TABLE accounts ADD COLUMN disabled boolean NOT NULL DEFAULT false;
CREATE TABLE sessions (
    id            text PRIMARY KEY,
    node          text NOT NULL,
    login         text NOT NULL,
    client        text NOT NULL,
    tls           boolean NOT NULL,
    mechanism     text NOT NULL,
    started_at    bigint NOT NULL,
    heartbeat_at  timestamptz NOT NULL DEFAULT now(),
    end_requested boolean NOT NULL DEFAULT false
);
CREATE INDEX sessions_node ON sessions (node);
CREATE TABLE admin_tokens (
    name       text COLLATE "C" PRIMARY KEY,
    id         text NOT NULL UNIQUE,
    sha256     text NOT NULL,
    scopes     text[] NOT NULL,
    created_at bigint NOT NULL,
    expires_at bigint
);
CREATE SEQUENCE audit_ids;
CREATE TABLE audit_log (
    id      bigint PRIMARY KEY DEFAULT nextval('audit_ids'),
    at      bigint NOT NULL,
    actor   text NOT NULL,
    action  text NOT NULL,
    target  text NOT NULL,
    client  text NOT NULL,
    outcome text NOT NULL
);
"#,
    ),
    (
        3,
        r#"
-- Messages the virus scanner found infected, held for an administrator (`[antivirus]
-- on_infected = "quarantine"`): few, read whole, so one row each with the text in it.
CREATE SEQUENCE quarantine_ids;
CREATE TABLE quarantine (
    id         bigint PRIMARY KEY DEFAULT nextval('quarantine_ids'),
    held_at    bigint NOT NULL,
    signature  text NOT NULL,
    sender     text NOT NULL,
    recipients text[] NOT NULL,
    size       bigint NOT NULL,
    text       bytea NOT NULL
);
"#,
    ),
];

/// What `db status` reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// The schema's version (0: none yet).
    pub version: i32,
    pub users: i64,
    pub messages: i64,
    /// Octets of mail in CRLF form.
    pub bytes: i64,
    /// Leases held now (sessions in the TRANSACTION state, on any node).
    pub leases: i64,
}

/// Create or upgrade the schema; the version it has now. Idempotent; refuses a newer schema.
pub async fn init(db: &crate::Db) -> Result<i32, PgError> {
    let mut client = db.client().await?;
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS pillarbox_schema (version integer PRIMARY KEY, \
             applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await?;
    for (version, sql) in MIGRATIONS {
        let tx = client.transaction().await?;
        // One node at a time applies migrations.
        tx.batch_execute("LOCK TABLE pillarbox_schema IN EXCLUSIVE MODE").await?;
        let newest: i32 =
            tx.query_typed_one("SELECT coalesce(max(version), 0) FROM pillarbox_schema", &[]).await?.get(0);
        if newest > VERSION {
            return Err(PgError::Schema(format!(
                "the database's schema is version {newest}, newer than this program's ({VERSION}): upgrade Pillarbox"
            )));
        }
        if newest >= version {
            continue;
        }
        tx.batch_execute(sql).await?;
        tx.execute_typed("INSERT INTO pillarbox_schema (version) VALUES ($1)", &[(&version, Type::INT4)]).await?;
        tx.commit().await?;
        tracing::info!(version, "database schema migrated");
    }
    version(db).await
}

/// The schema's version (0 when there is none).
pub async fn version(db: &crate::Db) -> Result<i32, PgError> {
    let client = db.client().await?;
    let exists: bool = client.query_typed_one("SELECT to_regclass('pillarbox_schema') IS NOT NULL", &[]).await?.get(0);
    if !exists {
        return Ok(0);
    }
    Ok(client.query_typed_one("SELECT coalesce(max(version), 0) FROM pillarbox_schema", &[]).await?.get(0))
}

/// Refuse to serve from a database without this program's schema.
pub async fn check(db: &crate::Db) -> Result<(), PgError> {
    match version(db).await? {
        VERSION => Ok(()),
        0 => Err(PgError::Schema("the database has no Pillarbox schema yet: run `pillarbox db init`".into())),
        v if v < VERSION => Err(PgError::Schema(format!(
            "the database's schema is version {v}, older than this program's ({VERSION}): run `pillarbox db init`"
        ))),
        v => Err(PgError::Schema(format!(
            "the database's schema is version {v}, newer than this program's ({VERSION}): upgrade Pillarbox"
        ))),
    }
}

pub async fn status(db: &crate::Db) -> Result<Status, PgError> {
    let version = version(db).await?;
    if version == 0 {
        return Ok(Status::default());
    }
    let client = db.client().await?;
    let row = client
        .query_typed_one(
            "SELECT (SELECT count(*) FROM accounts), (SELECT coalesce(sum(messages), 0)::bigint FROM accounts), \
             (SELECT coalesce(sum(bytes), 0)::bigint FROM accounts), \
             (SELECT count(*) FROM leases WHERE expires_at > now())",
            &[],
        )
        .await?;
    Ok(Status { version, users: row.get(0), messages: row.get(1), bytes: row.get(2), leases: row.get(3) })
}
