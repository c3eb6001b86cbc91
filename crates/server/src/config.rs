//! The server configuration: one TOML file, parsed once into validated types. A bad file is
//! reported with its path, the line and the field (`pop3.idle_timeout`), never silently ignored.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

pub use pillarbox_config::{HumanDuration, HumanSize};
use pillarbox_config::{key_line, number_or_text, toml_location};
pub use pillarbox_core::DeliveryPolicy;
use pillarbox_proto::Expire;
use pillarbox_proto::limits::MIN_AUTOLOGOUT_SECS;
use serde::Deserialize;

/// The file name of the configuration inside a data folder.
pub const CONFIG_FILE: &str = "pillarbox.toml";

/// The configuration written into a new data folder: every key, with its default and meaning.
pub const DEFAULT_CONFIG: &str = r#"# Pillarbox configuration (TOML). Relative paths are relative to data_dir.

# Folder for users, mail and certificates; relative paths here are relative to this file.
data_dir = "."

[listen]
# POP3 with STLS (RFC 1939, RFC 2595). The standard port is 110.
pop3 = ["127.0.0.1:1110"]
# POP3 over implicit TLS (RFC 8314). The standard port is 995.
pop3s = ["127.0.0.1:1995"]
# LMTP (RFC 2033) for the MTA to deliver into; keep it on loopback or a private network.
lmtp = ["127.0.0.1:2424"]
# LMTP on a Unix socket as well (e.g. for Postfix: lmtp:unix:/path), its permissions, and the
# group it belongs to (the MTA's, e.g. "postfix", so that the MTA may connect; empty: the server's).
# lmtp_unix = "/var/spool/postfix/private/pillarbox-lmtp"
lmtp_unix_mode = "0660"
lmtp_unix_group = ""
# HTTPS for mail clients that set themselves up (Thunderbird's autoconfig, Outlook's
# Autodiscover), with the [tls] certificates; point autoconfig.DOMAIN and autodiscover.DOMAIN
# at it (`pillarbox domain dns DOMAIN` prints the records). The standard port is 443. Empty: off.
https = []
# Plain HTTP, which answers ACME's HTTP-01 checks and redirects everything else to HTTPS. The
# standard port is 80. Empty: off.
http = []

[tls]
# PEM certificate chain and private key. A self-signed pair was generated on first start;
# replace them with your own (e.g. from Let's Encrypt) for clients on other machines. Files
# replaced on disk are served from the next connection on (checked every few seconds; SIGHUP
# reads them at once); a pair that does not load is logged and the old one kept.
cert = "tls/cert.pem"
key = "tls/key.pem"
# A certificate per server name: clients that ask for the name (SNI) get it, others get the
# pair above. "*.example.com" serves every name one label below example.com.
# [tls.names."pop.example.com"]
# cert = "tls/pop.example.com.pem"
# key = "tls/pop.example.com.key"

[pop3]
# Exclusive access to a maildrop (RFC 1939 section 8): a second session for the same user gets
# -ERR [IN-USE]. With false, concurrent sessions each see their own snapshot.
lock = true
# Inactivity autologout (RFC 1939 section 3; at least 10 minutes). Units: s, m, h.
idle_timeout = "10m"
# Allow an idle_timeout below the RFC's 10 minutes (not recommended; some clients idle between
# commands while the user reads).
allow_short_idle_timeout = false
# Offer APOP to users who were given an APOP secret (`pillarbox user apop`).
apop = true
# Retention announced and enforced (RFC 2449 EXPIRE): "never", or the number of days after a
# message was first retrieved when the server removes it; 0 removes retrieved messages at QUIT.
# `pillarbox user expire` sets it per user.
expire = "never"
# How often retrieved messages past their retention are looked for.
expunge_interval = "1h"
# Seconds a user must wait between logins (RFC 2449 LOGIN-DELAY); 0 for none.
# `pillarbox user login-delay` sets it per user.
login_delay = 0

[auth]
# The user file (`pillarbox user add|passwd|del|list`).
users = "users"
# The domain file (`pillarbox domain add|set|del|list`); with [database], a table there.
domains = "domains"
# Networks where USER/PASS, AUTH PLAIN and AUTH LOGIN may be used without TLS. Everywhere else
# clients must use STLS or port 995 first (SCRAM is allowed everywhere).
trusted_networks = ["127.0.0.0/8", "::1/128"]
# Offer SCRAM-SHA-1 for old clients (SCRAM-SHA-256 is always offered). Users get SHA-1 keys when
# their password is next set or used.
scram_sha1 = false
# Replace an imported password hash ({SHA512-CRYPT}, {PLAIN}, ...) with argon2id and SCRAM keys at
# the user's first password login. false keeps the imported hash as it is.
upgrade_hashes = true
# Lowest accepted password strength for `pillarbox user add|passwd` (zxcvbn score, 0 to 4).
min_password_score = 3
# After a failed login the answer is delayed: fail_delay, doubling with each further failure from
# the same address (IPv6 by /64) or against the same account, up to fail_delay_max.
fail_delay = "2s"
fail_delay_max = "15s"

# Logins with an identity provider's access tokens (SASL OAUTHBEARER and XOAUTH2), offered
# where PLAIN is (TLS or a trusted network). A token names its user by a claim; the user must
# exist here. JWT access tokens are checked against the issuer's keys; other tokens are asked
# about at its introspection endpoint (RFC 7662), which needs this server's own client id.
# [auth.oauth2]
# The issuer, exactly as its tokens' iss claim (its discovery document is read from
# ISSUER/.well-known/openid-configuration).
# issuer = "https://id.example.com"
# This server's name in the tokens' aud claim.
# audience = "pop3://mail.example.com"
# The claim that names the user: email, preferred_username, sub...
# username_claim = "email"
# Default: jwks_uri and introspection_endpoint from the discovery document.
# jwks_url = "https://id.example.com/jwks"
# introspection_url = "https://id.example.com/token/introspection"
# This server's own client at the provider, for introspection.
# client_id = "pillarbox"
# client_secret_file = "/etc/pillarbox/oauth2-secret"
# CA certificates (PEM) for a private issuer, besides the system's.
# ca_file = ""

[store]
# Root of the users' Maildirs: user alice reads ROOT/alice/{cur,new,tmp}.
maildir = "mail"

[delivery]
# Domains whose mail goes to the user named by the local part (alice@example.org is alice), as on
# a single-domain server; empty, with no domain added by `pillarbox domain add`, takes every domain.
domains = []
# user+detail@domain is delivered to user.
recipient_delimiter = "+"
# Largest message accepted (units: B, KB, MB, GB, KiB, MiB, GiB).
max_message_size = "50MB"
max_recipients = 100
# Default quotas for users without their own (`pillarbox user quota`); 0 means none.
quota_bytes = "0"
quota_messages = 0
# Over quota: "permanent" (552 5.2.2, the sender bounces) or "temporary" (452 4.2.2, it retries).
over_quota = "permanent"
# LMTP autologout.
idle_timeout = "5m"

[limits]
# Simultaneous connections; more are answered with -ERR [SYS/TEMP] and closed.
max_connections = 1000
# Simultaneous POP3 connections from one address (IPv6: one network of ipv6_prefix bits).
max_connections_per_ip = 20
# IPv6 addresses are counted by network: connections and failed logins by this prefix (one
# subscriber's network), failed logins also by the wider ipv6_aggregate_prefix (whoever holds a
# whole /48 cannot try from a fresh /64 each time).
ipv6_prefix = 64
ipv6_aggregate_prefix = 48
# Logins to one account in progress at once (each waits out its failure delay); more are told
# -ERR [SYS/TEMP] without being checked. 0: no limit.
max_concurrent_attempts_per_account = 3
# A connection that has not logged in after this long is closed (the idle timeout applies after
# login).
prelogin_timeout = "60s"
# Stop reading a client's commands while this much of the answers to them is still unsent (a
# client that pipelines commands and never reads cannot make the server buffer without bound).
max_unsent_output = "1MiB"
# LMTP connections have their own pool, so that neither side can crowd out the other.
lmtp_max_connections = 200
lmtp_max_connections_per_ip = 20
# Simultaneous POP3 sessions of one user; more get -ERR [IN-USE]. 0: no limit (with lock = true a
# maildrop has one session anyway; this bounds a user when lock = false).
max_sessions_per_user = 0
# On SIGTERM/SIGINT: how long open sessions may go on (and QUIT normally) before they are closed.
shutdown_grace = "10s"

[process]
# Started as root (to listen on ports 110, 995 and 24), switch to this user, and its group unless
# group is given, once the listeners are open and before any client byte is read. The data folder,
# the user file, the Maildirs and (for SIGHUP reloads) the TLS key must then be theirs to read.
user = ""
group = ""

[database]
# Cluster mode: users, mail, maildrop leases and failed-login counts in PostgreSQL, shared by any
# number of nodes (then [auth] users and [store] maildir are not used, and a node keeps nothing
# but this file and its TLS files). Empty: this machine's files. The environment variable
# PILLARBOX_DATABASE_URL overrides it. `pillarbox db init` creates the schema. For example:
# "postgresql://pillarbox@db1,db2/mail?target_session_attrs=read-write"
url = ""
# Connections each node keeps to the database at most.
pool_size = 16
# How long a maildrop lease lasts unless its session renews it: a node that dies keeps its users'
# maildrops locked this long at most.
lease = "30s"
# CA certificates (PEM) for the database's TLS certificate, besides the system's. TLS is required
# for a database on another machine unless the url says sslmode=disable.
ca_file = ""
# Users kept by a control panel (the PostfixAdmin kind), read-only, as Dovecot's password_query:
# the query gives the password hash of login $1, in a scheme `pillarbox user import` reads
# ({SHA512-CRYPT}, {BLF-CRYPT}, a bare crypt string, ...). Logins are then PLAIN, LOGIN and
# USER/PASS only (no SCRAM keys can exist for such hashes); a user's mailbox is made in
# Pillarbox's own tables at the first login or delivery. For example:
# "SELECT password FROM mailbox WHERE username = $1 AND active"
password_query = ""
# With password_query: the quotas of login $1 (octets, messages; NULL or 0 for the [delivery]
# defaults), e.g. "SELECT quota, 0 FROM mailbox WHERE username = $1".
user_query = ""

[acme]
# Certificates from an ACME certificate authority (RFC 8555), for `names`, renewed by themselves
# at two thirds of their lifetime; served for those names (SNI) without a restart. The account
# and the certificates are kept in DATA/acme (readable by the server only); in cluster mode in
# the database, one node ordering for all (a lease), every node serving them. Empty: off.
# Let's Encrypt: "https://acme-v02.api.letsencrypt.org/directory"
directory = ""
# Where the CA may write about expiring certificates, e.g. ["mailto:admin@example.com"].
contact = []
# e.g. ["pop.example.com", "autoconfig.example.com"]
names = []
# Also the server names of every mail domain (`pillarbox domain add example.com --name
# pop.example.com`), ordered when the domain is added. Names of [tls.names] keep their own.
domain_names = true
# How the CA checks that the names are this server's: "tls-alpn-01" (RFC 8737) on [listen]
# https (port 443), or "http-01" on [listen] http (port 80).
challenge = "tls-alpn-01"
# CA certificates (PEM) to trust for the ACME server, besides the system's (a private CA).
ca_file = ""

# Mail domains are added with `pillarbox domain add` (kept in [auth] domains, or the database);
# the domains of [delivery] domains are domains too. A domain's settings may also be named here
# (the registry's win where both set one):
# [domains."example.com"]
# Server names whose TLS connections (the name the client asks for, SNI) log in to the domain:
# a user of example.com types `alice` for alice@example.com there.
# names = ["pop.example.com"]
# Other domains whose mail is this domain's (alice@example.net is alice@example.com).
# aliases = ["example.net"]
# Defaults for the domain's users (a user's own setting wins), and whether they may use POP3.
# quota_bytes = "2GB"
# quota_messages = 10000
# expire = "30"
# pop3 = true

[autoconfig]
# What the autoconfiguration answers ([listen] https) tell mail clients besides the POP3
# listeners, the login mechanisms and the retention they read from this configuration.
# The POP3 server's name (empty: the first name of the [tls] certificate, else this machine's).
pop_host = ""
# The outgoing server, which every answer must name (empty: smtp.DOMAIN), its port, and
# "starttls", "implicit" or "none".
smtp_host = ""
smtp_port = 587
smtp_tls = "starttls"

[admin]
# The admin API (JSON under /api/v1, described at /api/v1/openapi.json) and the web console (at
# /) on these addresses, e.g. ["127.0.0.1:8443"]; empty: off. Callers need a token from
# `pillarbox admin token create`. It is served over TLS with the [tls] certificates; without TLS
# (tls = false, or no [tls] section) only on loopback addresses.
listen = []
# tls = true
# Requests a minute one client address may make (a refused token counts as ten).
rate_limit = 600
# The claim an identity provider's token ([auth.oauth2]) must carry to be accepted as an
# administrator's: true for every right, or a scope name (admin, read, domain:NAME) or a list of
# them for those.
oauth2_claim = "pillarbox_admin"
# Sign in to the console through the identity provider of [auth.oauth2] (the code flow with
# PKCE): the client registered there for the console, public (no secret), whose redirect URI is
# the console's address, e.g. "https://mail.example.com:8443/"; empty: tokens only.
oauth2_client_id = ""
# The scopes the console asks for.
oauth2_scope = "openid"

[antivirus]
# Scan every message delivered over LMTP with ClamAV's clamd, at its socket
# ("/run/clamav/clamd.ctl") or "HOST:PORT"; empty: off.
clamd = ""
# An infected message: "reject" (refused with 554 5.7.1 naming what was found; the MTA bounces
# it to its sender) or "quarantine" (accepted, delivered to nobody, and held for an
# administrator: `pillarbox quarantine list|show|release|delete`; on one machine the held
# messages are a Maildir, DATA/quarantine, in cluster mode a table of the database).
on_infected = "reject"
# When clamd cannot scan a message (not running, or the message over its StreamMaxLength, which
# should be at least [delivery] max_message_size): "defer" (451 4.3.0: the MTA keeps the message
# and retries) or "accept" (delivered unscanned, with a warning in the log). Never a silent pass.
on_unavailable = "defer"

[metrics]
# Prometheus metrics at http://ADDRESS/metrics, e.g. "127.0.0.1:9110"; empty: off. They carry no
# user names or addresses; keep the address private all the same.
listen = ""

[log]
# error, warn, info (one line per session and per login), debug or trace; or directives such as
# "info,pillarbox::auth=debug". The PILLARBOX_LOG or RUST_LOG environment variable, or
# --log-level, overrides it; --log-format json writes one JSON object per line.
level = "info"
"#;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}, line {line}, field `{field}`: {message}")]
    Field { path: PathBuf, line: usize, field: String, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// An IP network in CIDR notation (`127.0.0.0/8`, `::1/128`); a bare address is a /32 or /128.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => mask_eq(&net.octets(), &ip.octets(), self.prefix),
            (IpAddr::V6(net), IpAddr::V6(ip)) => mask_eq(&net.octets(), &ip.octets(), self.prefix),
            _ => false,
        }
    }
}

fn mask_eq(a: &[u8], b: &[u8], prefix: u8) -> bool {
    let full = usize::from(prefix / 8);
    let rest = prefix % 8;
    if a[..full] != b[..full] {
        return false;
    }
    rest == 0 || {
        let mask = 0xffu8 << (8 - rest);
        a[full] & mask == b[full] & mask
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| format!("{s:?} is not an IP network (example: 10.0.0.0/8)"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => {
                p.parse::<u8>().ok().filter(|&p| p <= max).ok_or_else(|| format!("{s:?}: prefix must be 0..={max}"))?
            }
        };
        Ok(Self { addr: addr.to_canonical(), prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default = "dot")]
    data_dir: PathBuf,
    #[serde(default)]
    listen: RawListen,
    tls: Option<RawTls>,
    #[serde(default)]
    pop3: RawPop3,
    #[serde(default)]
    auth: RawAuth,
    #[serde(default)]
    store: RawStore,
    #[serde(default)]
    delivery: RawDelivery,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    database: RawDatabase,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default)]
    antivirus: RawAntivirus,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    autoconfig: RawAutoconfig,
    #[serde(default)]
    acme: RawAcme,
    /// `[domains."example.com"]`: per domain settings.
    #[serde(default)]
    domains: std::collections::BTreeMap<String, RawDomain>,
    #[serde(default)]
    process: RawProcess,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawProcess {
    user: String,
    group: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawDatabase {
    url: String,
    pool_size: usize,
    lease: HumanDuration,
    ca_file: PathBuf,
    password_query: String,
    user_query: String,
}

impl Default for RawDatabase {
    fn default() -> Self {
        Self {
            url: String::new(),
            pool_size: 16,
            lease: HumanDuration(Duration::from_secs(30)),
            ca_file: PathBuf::new(),
            password_query: String::new(),
            user_query: String::new(),
        }
    }
}

/// `[database]`: cluster mode.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseConfig {
    pub url: String,
    pub pool_size: usize,
    pub lease: Duration,
    pub ca_file: Option<PathBuf>,
    /// Users read from a control panel's table: the query that gives a login's password hash.
    pub password_query: Option<String>,
    /// And the one that gives its quotas (bytes, messages).
    pub user_query: Option<String>,
}

impl DatabaseConfig {
    /// The URL with any password in it replaced, for messages and logs: in the user part
    /// (`postgresql://user:secret@host`), as a parameter (`?password=secret`) or in the
    /// key=value form (`password=secret`).
    pub fn url_for_display(&self) -> String {
        let url = &self.url;
        let mut shown = match (url.find("://"), url.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => match url[scheme + 3..at].split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.clone(),
            },
            _ => url.clone(),
        };
        let mut from = 0;
        while let Some(i) = shown[from..].find("password=").map(|i| i + from) {
            let start = i + "password=".len();
            let end = shown[start..].find(['&', ' ', '\t']).map_or(shown.len(), |e| e + start);
            shown.replace_range(start..end, "***");
            from = start + 3;
        }
        shown
    }
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &self.url_for_display())
            .field("pool_size", &self.pool_size)
            .field("lease", &self.lease)
            .field("ca_file", &self.ca_file)
            .field("password_query", &self.password_query)
            .field("user_query", &self.user_query)
            .finish()
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawDomain {
    /// Server names whose connections log in to this domain: `alice` is `alice@DOMAIN` there.
    names: Vec<String>,
    /// Other domains whose mail is this domain's.
    aliases: Vec<String>,
    /// Defaults for the domain's users.
    quota_bytes: Option<HumanSize>,
    quota_messages: Option<u64>,
    expire: Option<ExpireSetting>,
    /// Whether the domain's users may log in over POP3.
    pop3: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAcme {
    directory: String,
    contact: Vec<String>,
    names: Vec<String>,
    domain_names: bool,
    challenge: String,
    ca_file: PathBuf,
}

impl Default for RawAcme {
    fn default() -> Self {
        Self {
            directory: String::new(),
            contact: Vec::new(),
            names: Vec::new(),
            domain_names: true,
            challenge: "tls-alpn-01".into(),
            ca_file: PathBuf::new(),
        }
    }
}

/// `[acme]`: certificates from an ACME certificate authority (RFC 8555) for these names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeSettings {
    pub directory: String,
    pub contact: Vec<String>,
    pub names: Vec<String>,
    /// The server names of every mail domain (`pillarbox domain add --name`) too.
    pub domain_names: bool,
    /// Names `[tls.names]` gives a certificate of their own: never ordered.
    pub exclude: Vec<String>,
    /// `tls-alpn-01` (RFC 8737, on the HTTPS listener) or `http-01` (on the HTTP listener).
    pub challenge: String,
    /// CA certificates (PEM) to trust for the ACME server (a private one), besides the system's.
    pub ca_file: Option<PathBuf>,
    /// Where the account and the certificates are kept.
    pub dir: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAutoconfig {
    pop_host: String,
    smtp_host: String,
    smtp_port: u16,
    smtp_tls: String,
}

impl Default for RawAutoconfig {
    fn default() -> Self {
        Self { pop_host: String::new(), smtp_host: String::new(), smtp_port: 587, smtp_tls: "starttls".into() }
    }
}

/// `[autoconfig]`: what the autoconfiguration answers name besides this server's own listeners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutoconfigSettings {
    /// The POP3 server's name as clients should use it (`None`: the first name of the default
    /// certificate, else this machine's name).
    pub pop_host: Option<String>,
    /// The outgoing (SMTP) server every answer must name (`None`: `smtp.DOMAIN`).
    pub smtp_host: Option<String>,
    pub smtp_port: u16,
    /// `starttls`, `implicit` or `none`.
    pub smtp_tls: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAntivirus {
    clamd: String,
    on_infected: String,
    on_unavailable: String,
}

impl Default for RawAntivirus {
    fn default() -> Self {
        Self { clamd: String::new(), on_infected: "reject".into(), on_unavailable: "defer".into() }
    }
}

/// `[antivirus]`: every message delivered over LMTP is scanned by clamd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Antivirus {
    pub clamd: pillarbox_clamav::Clamd,
    /// Hold an infected message for an administrator instead of refusing it.
    pub quarantine: bool,
    /// Deliver a message clamd could not scan (with a warning), instead of deferring it.
    pub accept_unscanned: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawMetrics {
    listen: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAdmin {
    listen: Vec<SocketAddr>,
    tls: Option<bool>,
    rate_limit: u32,
    oauth2_claim: String,
    oauth2_client_id: String,
    oauth2_scope: String,
}

impl Default for RawAdmin {
    fn default() -> Self {
        Self {
            listen: Vec::new(),
            tls: None,
            rate_limit: 600,
            oauth2_claim: "pillarbox_admin".into(),
            oauth2_client_id: String::new(),
            oauth2_scope: "openid".into(),
        }
    }
}

/// `[admin]`: the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminSettings {
    pub listen: Vec<SocketAddr>,
    /// Served over TLS with the `[tls]` certificates (else only on loopback).
    pub tls: bool,
    /// Requests a minute per client address.
    pub rate_limit: u32,
    pub oauth2_claim: String,
    /// The console's sign-in through the identity provider: its public client, and the scopes
    /// it asks for.
    pub oauth2_client_id: Option<String>,
    pub oauth2_scope: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLog {
    level: String,
}

impl Default for RawLog {
    fn default() -> Self {
        Self { level: "info".into() }
    }
}

/// A log filter: comma-separated `level` or `target=level` directives.
fn valid_log_filter(s: &str) -> bool {
    const LEVELS: [&str; 6] = ["error", "warn", "info", "debug", "trace", "off"];
    !s.trim().is_empty()
        && s.split(',').all(|d| {
            let level = d.rsplit('=').next().unwrap_or("");
            let target_ok = d.split_once('=').is_none_or(|(t, _)| {
                !t.is_empty() && t.chars().all(|c| c.is_ascii_alphanumeric() || "_:-".contains(c))
            });
            target_ok && LEVELS.contains(&level.trim().to_ascii_lowercase().as_str())
        })
}

fn dot() -> PathBuf {
    PathBuf::from(".")
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListen {
    #[serde(default)]
    pop3: Vec<SocketAddr>,
    #[serde(default)]
    pop3s: Vec<SocketAddr>,
    #[serde(default)]
    lmtp: Vec<SocketAddr>,
    #[serde(default)]
    lmtp_unix: Option<PathBuf>,
    #[serde(default = "default_socket_mode")]
    lmtp_unix_mode: FileMode,
    #[serde(default)]
    lmtp_unix_group: String,
    #[serde(default)]
    http: Vec<SocketAddr>,
    #[serde(default)]
    https: Vec<SocketAddr>,
}

fn default_socket_mode() -> FileMode {
    FileMode(0o660)
}

/// Permission bits written in octal, like `"0660"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileMode(pub u32);

impl Default for FileMode {
    fn default() -> Self {
        default_socket_mode()
    }
}

impl<'de> Deserialize<'de> for FileMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        u32::from_str_radix(s.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .map(FileMode)
            .ok_or_else(|| serde::de::Error::custom(format!("{s:?} is not an octal file mode like \"0660\"")))
    }
}

/// A retention policy: `"never"` or a number of days.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpireSetting(pub Expire);

impl FromStr for ExpireSetting {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        pillarbox_auth::parse_expire(s).map(Self).ok_or_else(|| format!("{s:?}: use \"never\" or a number of days"))
    }
}

impl<'de> Deserialize<'de> for ExpireSetting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        number_or_text(d, |n| Self(Expire::Days(u32::try_from(n).unwrap_or(u32::MAX))))
    }
}

/// What to answer when a delivery would exceed a quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum OverQuota {
    /// 552 5.2.2: the sender's MTA bounces the message.
    Permanent,
    /// 452 4.2.2: the sender's MTA keeps it and retries.
    Temporary,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawDelivery {
    domains: Vec<String>,
    recipient_delimiter: String,
    max_message_size: HumanSize,
    max_recipients: usize,
    quota_bytes: HumanSize,
    quota_messages: u64,
    over_quota: OverQuota,
    idle_timeout: HumanDuration,
}

impl Default for RawDelivery {
    fn default() -> Self {
        Self {
            domains: Vec::new(),
            recipient_delimiter: "+".into(),
            max_message_size: HumanSize(50 * 1000 * 1000),
            max_recipients: 100,
            quota_bytes: HumanSize(0),
            quota_messages: 0,
            over_quota: OverQuota::Permanent,
            idle_timeout: HumanDuration(Duration::from_secs(300)),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: PathBuf,
    key: PathBuf,
    /// `[tls.names."pop.example.com"]`: a certificate for the clients that ask for that name.
    #[serde(default)]
    names: std::collections::BTreeMap<String, RawPair>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPair {
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawPop3 {
    lock: bool,
    idle_timeout: HumanDuration,
    /// Accept an idle_timeout below RFC 1939's 10-minute minimum (for tests and special setups).
    allow_short_idle_timeout: bool,
    apop: bool,
    expire: ExpireSetting,
    expunge_interval: HumanDuration,
    login_delay: u32,
}

impl Default for RawPop3 {
    fn default() -> Self {
        Self {
            lock: true,
            idle_timeout: HumanDuration(Duration::from_secs(MIN_AUTOLOGOUT_SECS)),
            allow_short_idle_timeout: false,
            apop: true,
            expire: ExpireSetting(Expire::Never),
            expunge_interval: HumanDuration(Duration::from_secs(3600)),
            login_delay: 0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAuth {
    users: PathBuf,
    domains: PathBuf,
    trusted_networks: Vec<Cidr>,
    scram_sha1: bool,
    upgrade_hashes: bool,
    min_password_score: u8,
    fail_delay: HumanDuration,
    fail_delay_max: HumanDuration,
    oauth2: Option<RawOAuth2>,
}

/// `[auth.oauth2]`: logins with an identity provider's access tokens.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOAuth2 {
    issuer: String,
    audience: String,
    #[serde(default = "email")]
    username_claim: String,
    #[serde(default)]
    jwks_url: String,
    #[serde(default)]
    introspection_url: String,
    #[serde(default)]
    client_id: String,
    #[serde(default)]
    client_secret_file: PathBuf,
    #[serde(default)]
    ca_file: PathBuf,
}

fn email() -> String {
    "email".into()
}

impl Default for RawAuth {
    fn default() -> Self {
        Self {
            users: PathBuf::from("users"),
            domains: PathBuf::from("domains"),
            trusted_networks: vec![LOOPBACK4, LOOPBACK6],
            scram_sha1: false,
            upgrade_hashes: true,
            min_password_score: 3,
            fail_delay: HumanDuration(Duration::from_secs(2)),
            fail_delay_max: HumanDuration(Duration::from_secs(15)),
            oauth2: None,
        }
    }
}

const LOOPBACK4: Cidr = Cidr { addr: IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 0)), prefix: 8 };
const LOOPBACK6: Cidr = Cidr { addr: IpAddr::V6(std::net::Ipv6Addr::LOCALHOST), prefix: 128 };

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawStore {
    maildir: PathBuf,
}

impl Default for RawStore {
    fn default() -> Self {
        Self { maildir: PathBuf::from("mail") }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLimits {
    max_connections: usize,
    max_connections_per_ip: usize,
    max_sessions_per_user: usize,
    shutdown_grace: HumanDuration,
    ipv6_prefix: u8,
    ipv6_aggregate_prefix: u8,
    max_concurrent_attempts_per_account: usize,
    prelogin_timeout: HumanDuration,
    max_unsent_output: HumanSize,
    lmtp_max_connections: usize,
    lmtp_max_connections_per_ip: usize,
}

impl Default for RawLimits {
    fn default() -> Self {
        Self {
            max_connections: 1000,
            max_connections_per_ip: 20,
            max_sessions_per_user: 0,
            shutdown_grace: HumanDuration(Duration::from_secs(10)),
            ipv6_prefix: 64,
            ipv6_aggregate_prefix: 48,
            max_concurrent_attempts_per_account: 3,
            prelogin_timeout: HumanDuration(Duration::from_secs(60)),
            max_unsent_output: HumanSize(pillarbox_proto::server::DEFAULT_OUTPUT_LIMIT as u64),
            lmtp_max_connections: 200,
            lmtp_max_connections_per_ip: 20,
        }
    }
}

/// The validated configuration, with every path absolute or relative to the working directory.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from.
    pub source: PathBuf,
    pub data_dir: PathBuf,
    pub pop3: Vec<SocketAddr>,
    pub pop3s: Vec<SocketAddr>,
    pub lmtp: Vec<SocketAddr>,
    pub lmtp_unix: Option<PathBuf>,
    pub lmtp_unix_mode: u32,
    /// The group given to the LMTP socket (`None`: the server's).
    pub lmtp_unix_group: Option<String>,
    pub tls: Option<TlsPaths>,
    pub lock: bool,
    pub idle_timeout: Duration,
    pub apop: bool,
    /// Default retention (RFC 2449 EXPIRE).
    pub expire: Expire,
    pub expunge_interval: Duration,
    /// Default seconds between logins (RFC 2449 LOGIN-DELAY).
    pub login_delay: u32,
    pub users_file: PathBuf,
    /// The domain registry's file (`[auth] domains`), when there is no database.
    pub domains_file: PathBuf,
    pub trusted_networks: Vec<Cidr>,
    pub scram_sha1: bool,
    /// Replace imported hashes with argon2id at the first password login.
    pub upgrade_hashes: bool,
    pub min_password_score: u8,
    pub fail_delay: Duration,
    pub fail_delay_max: Duration,
    pub max_connections_per_ip: usize,
    pub max_sessions_per_user: usize,
    /// How IPv6 addresses are grouped (`ipv6_prefix`, `ipv6_aggregate_prefix`).
    pub ip_grouping: pillarbox_core::gate::IpGrouping,
    pub max_concurrent_attempts_per_account: usize,
    /// Before login, a connection is closed after this long (the idle timeout applies after).
    pub prelogin_timeout: Duration,
    /// Input is not read while this many octets of output are unsent.
    pub max_unsent_output: usize,
    pub lmtp_max_connections: usize,
    pub lmtp_max_connections_per_ip: usize,
    pub maildir_root: PathBuf,
    pub max_connections: usize,
    pub shutdown_grace: Duration,
    /// The log filter (`[log] level`).
    pub log_level: String,
    /// Where Prometheus metrics are served (`[metrics] listen`), if anywhere.
    pub metrics: Option<SocketAddr>,
    /// The admin API (`[admin]`), if it is served.
    pub admin: Option<AdminSettings>,
    /// HTTP (redirects to HTTPS) and HTTPS (autoconfiguration) listeners.
    pub http: Vec<SocketAddr>,
    pub https: Vec<SocketAddr>,
    pub autoconfig: AutoconfigSettings,
    /// Certificates by ACME, when `[acme] directory` is set.
    pub acme: Option<AcmeSettings>,
    /// The domains named here: `[delivery] domains` (their users may be bare names) and the
    /// `[domains."D"]` tables (settings, aliases, and the server names whose TLS connections log
    /// in to the domain). The domain registry's are added to them.
    pub domains: std::sync::Arc<pillarbox_auth::DomainSet>,
    /// The user and group to run as after binding (`[process]`), if set.
    pub run_as: Option<(String, Option<String>)>,
    /// The rules of delivery (domains, sizes, quotas), as the service layer applies them.
    pub delivery: DeliveryPolicy,
    /// LMTP autologout.
    pub lmtp_idle_timeout: Duration,
    /// Cluster mode: `[database]` (or `PILLARBOX_DATABASE_URL`), when a URL is set.
    pub database: Option<DatabaseConfig>,
    /// Virus scanning of LMTP deliveries (`[antivirus]`), when a clamd is named.
    pub antivirus: Option<Antivirus>,
    /// OAUTHBEARER and XOAUTH2 logins (`[auth.oauth2]`), when configured.
    pub oauth2: Option<pillarbox_oauth::verify::ServerSettings>,
}

/// `[tls]`: the default certificate (for clients that name no server, or one without a
/// certificate of its own) and one per server name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub names: Vec<NamedPair>,
}

/// A certificate for a server name (`pop.example.com`, or `*.example.com` for every name one
/// label below).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedPair {
    /// Lower case, without a final dot.
    pub name: String,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsPaths {
    /// Every certificate and key file named, for watching them.
    pub fn files(&self) -> Vec<&Path> {
        let mut v = vec![self.cert.as_path(), self.key.as_path()];
        for n in &self.names {
            v.push(&n.cert);
            v.push(&n.key);
        }
        v
    }
}

/// A server name a certificate may be chosen for: a DNS name, or `*.` and one (RFC 6125
/// section 6.4.3: the wildcard is the whole leftmost label).
fn server_name(raw: &str) -> Result<String, String> {
    let name = raw.trim().trim_end_matches('.').to_ascii_lowercase();
    let host = name.strip_prefix("*.").unwrap_or(&name);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if host.parse::<std::net::IpAddr>().is_ok() {
        return Err(format!(
            "{raw:?} is an address: clients send only names in SNI (the default certificate serves addresses)"
        ));
    }
    if host.len() > 253 || !host.contains('.') || !host.split('.').all(label_ok) {
        return Err(format!("{raw:?} is not a server name like \"pop.example.com\" or \"*.example.com\""));
    }
    Ok(name)
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| field_error(text, path, &e))?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let data_dir = clean(&base.join(&raw.data_dir));
        let rel = |p: &Path| data_dir.join(p);
        let invalid = |message: String| ConfigError::Invalid { path: path.to_owned(), message };
        if raw.pop3.idle_timeout.0.is_zero()
            || (!raw.pop3.allow_short_idle_timeout
                && raw.pop3.idle_timeout.0 < Duration::from_secs(MIN_AUTOLOGOUT_SECS))
        {
            return Err(field_at(
                text,
                path,
                "pop3",
                "idle_timeout",
                format!(
                    "must be at least 10m: RFC 1939 section 3 requires an autologout timer of at least 10 minutes (got {}s; \
                 set allow_short_idle_timeout = true to override)",
                    raw.pop3.idle_timeout.0.as_secs()
                ),
            ));
        }
        if raw.auth.min_password_score > 4 {
            return Err(field_at(text, path, "auth", "min_password_score", "is a zxcvbn score from 0 to 4".into()));
        }
        if raw.limits.max_connections_per_ip == 0 {
            return Err(field_at(text, path, "limits", "max_connections_per_ip", "must be at least 1".into()));
        }
        if raw.limits.max_connections == 0 {
            return Err(field_at(text, path, "limits", "max_connections", "must be at least 1".into()));
        }
        let l = &raw.limits;
        if !(1..=128).contains(&l.ipv6_prefix) {
            return Err(field_at(text, path, "limits", "ipv6_prefix", "is a prefix length from 1 to 128".into()));
        }
        if l.ipv6_aggregate_prefix > l.ipv6_prefix {
            return Err(field_at(
                text,
                path,
                "limits",
                "ipv6_aggregate_prefix",
                format!("must not be longer than ipv6_prefix ({}): it is the wider network", l.ipv6_prefix),
            ));
        }
        for (key, value) in [
            ("lmtp_max_connections", l.lmtp_max_connections),
            ("lmtp_max_connections_per_ip", l.lmtp_max_connections_per_ip),
        ] {
            if value == 0 {
                return Err(field_at(text, path, "limits", key, "must be at least 1".into()));
            }
        }
        if l.prelogin_timeout.0 < Duration::from_secs(1) {
            return Err(field_at(text, path, "limits", "prelogin_timeout", "must be at least 1s".into()));
        }
        if l.max_unsent_output.0 < 4096 {
            return Err(field_at(text, path, "limits", "max_unsent_output", "must be at least 4KiB".into()));
        }
        if !raw.listen.pop3s.is_empty() && raw.tls.is_none() {
            return Err(invalid("[listen] pop3s needs a [tls] section with cert and key".into()));
        }
        if raw.listen.pop3.is_empty() && raw.listen.pop3s.is_empty() {
            return Err(invalid("[listen] has no pop3 or pop3s address; the server would accept nothing".into()));
        }
        let antivirus = match raw.antivirus.clamd.trim() {
            "" => None,
            c => Some(Antivirus {
                clamd: c.parse().map_err(|why| field_at(text, path, "antivirus", "clamd", why))?,
                quarantine: match raw.antivirus.on_infected.as_str() {
                    "reject" => false,
                    "quarantine" => true,
                    other => {
                        return Err(field_at(
                            text,
                            path,
                            "antivirus",
                            "on_infected",
                            format!("{other:?}: use \"reject\" or \"quarantine\""),
                        ));
                    }
                },
                accept_unscanned: match raw.antivirus.on_unavailable.as_str() {
                    "defer" => false,
                    "accept" => true,
                    other => {
                        return Err(field_at(
                            text,
                            path,
                            "antivirus",
                            "on_unavailable",
                            format!("{other:?}: use \"defer\" or \"accept\""),
                        ));
                    }
                },
            }),
        };
        let metrics = match raw.metrics.listen.trim() {
            "" => None,
            a => Some(a.parse::<SocketAddr>().map_err(|_| {
                field_at(text, path, "metrics", "listen", format!("{a:?} is not an address like \"127.0.0.1:9110\""))
            })?),
        };
        if !valid_log_filter(&raw.log.level) {
            return Err(field_at(
                text,
                path,
                "log",
                "level",
                format!(
                    "{:?}: use error, warn, info, debug or trace, or directives like \"info,pillarbox::auth=debug\"",
                    raw.log.level
                ),
            ));
        }
        if raw.delivery.max_recipients == 0 {
            return Err(field_at(text, path, "delivery", "max_recipients", "must be at least 1".into()));
        }
        if raw.delivery.max_message_size.0 == 0 {
            return Err(field_at(text, path, "delivery", "max_message_size", "must be more than 0".into()));
        }
        // The environment's URL wins over the file's (a secret kept out of the file).
        let url =
            std::env::var("PILLARBOX_DATABASE_URL").ok().filter(|u| !u.trim().is_empty()).unwrap_or(raw.database.url);
        let database = if url.trim().is_empty() {
            None
        } else {
            if raw.database.pool_size == 0 {
                return Err(field_at(text, path, "database", "pool_size", "must be at least 1".into()));
            }
            if raw.database.lease.0 < Duration::from_secs(1) {
                return Err(field_at(text, path, "database", "lease", "must be at least 1s".into()));
            }
            if let Err(e) = pillarbox_pg::check_url(&url) {
                return Err(field_at(text, path, "database", "url", e));
            }
            for (key, q) in [("password_query", &raw.database.password_query), ("user_query", &raw.database.user_query)]
            {
                if !q.trim().is_empty() && !q.contains("$1") {
                    return Err(field_at(text, path, "database", key, "the query must take the login as $1".into()));
                }
            }
            if raw.database.password_query.trim().is_empty() && !raw.database.user_query.trim().is_empty() {
                return Err(field_at(text, path, "database", "user_query", "only used with password_query".into()));
            }
            Some(DatabaseConfig {
                url: url.trim().to_owned(),
                pool_size: raw.database.pool_size,
                lease: raw.database.lease.0,
                ca_file: (!raw.database.ca_file.as_os_str().is_empty()).then(|| rel(&raw.database.ca_file)),
                password_query: Some(raw.database.password_query.trim().to_owned()).filter(|q| !q.is_empty()),
                user_query: Some(raw.database.user_query.trim().to_owned()).filter(|q| !q.is_empty()),
            })
        };
        if raw.pop3.expunge_interval.0.is_zero() {
            return Err(field_at(text, path, "pop3", "expunge_interval", "must be more than 0".into()));
        }
        if !raw.listen.https.is_empty() && raw.tls.is_none() {
            return Err(invalid("[listen] https needs a [tls] section with cert and key".into()));
        }
        let admin = if raw.admin.listen.is_empty() {
            None
        } else {
            let tls = raw.admin.tls.unwrap_or(raw.tls.is_some());
            if tls && raw.tls.is_none() {
                return Err(field_at(text, path, "admin", "tls", "needs a [tls] section with cert and key".into()));
            }
            if let Some(a) = raw.admin.listen.iter().find(|a| !tls && !a.ip().is_loopback()) {
                return Err(field_at(
                    text,
                    path,
                    "admin",
                    "listen",
                    format!(
                        "{a} is not a loopback address: without TLS the admin API is served only on loopback \
                         (add a [tls] section, or listen on 127.0.0.1 or [::1])"
                    ),
                ));
            }
            if raw.admin.rate_limit == 0 {
                return Err(field_at(text, path, "admin", "rate_limit", "must be at least 1".into()));
            }
            let claim = raw.admin.oauth2_claim.trim();
            if claim.is_empty() {
                return Err(field_at(text, path, "admin", "oauth2_claim", "must name a claim".into()));
            }
            let client_id = raw.admin.oauth2_client_id.trim();
            if !client_id.is_empty() && raw.auth.oauth2.is_none() {
                return Err(field_at(
                    text,
                    path,
                    "admin",
                    "oauth2_client_id",
                    "signing in to the console through an identity provider needs its [auth.oauth2] section".into(),
                ));
            }
            let scope = raw.admin.oauth2_scope.split_whitespace().collect::<Vec<_>>().join(" ");
            if !client_id.is_empty() && scope.is_empty() {
                return Err(field_at(text, path, "admin", "oauth2_scope", "must name a scope, e.g. openid".into()));
            }
            Some(AdminSettings {
                listen: raw.admin.listen.clone(),
                tls,
                rate_limit: raw.admin.rate_limit,
                oauth2_claim: claim.to_owned(),
                oauth2_client_id: (!client_id.is_empty()).then(|| client_id.to_owned()),
                oauth2_scope: scope,
            })
        };
        let autoconfig = {
            let a = &raw.autoconfig;
            let host = |key: &str, h: &str| -> Result<Option<String>, ConfigError> {
                let h = h.trim().trim_end_matches('.').to_ascii_lowercase();
                if h.is_empty() {
                    return Ok(None);
                }
                server_name(&h).map(Some).map_err(|e| field_at(text, path, "autoconfig", key, e))
            };
            if !["starttls", "implicit", "none"].contains(&a.smtp_tls.as_str()) {
                return Err(field_at(
                    text,
                    path,
                    "autoconfig",
                    "smtp_tls",
                    "use \"starttls\", \"implicit\" or \"none\"".into(),
                ));
            }
            AutoconfigSettings {
                pop_host: host("pop_host", &a.pop_host)?,
                smtp_host: host("smtp_host", &a.smtp_host)?,
                smtp_port: a.smtp_port,
                smtp_tls: a.smtp_tls.clone(),
            }
        };
        let domains = {
            use pillarbox_auth::{DomainName, DomainRecord, DomainSet};
            let mut set = DomainSet::default();
            for (i, raw_domain) in raw.delivery.domains.iter().enumerate() {
                let name = DomainName::new(raw_domain)
                    .map_err(|e| field_at(text, path, "delivery", "domains", format!("item {}: {e}", i + 1)))?;
                set.domains.insert(name, DomainRecord { local: true, ..DomainRecord::default() });
            }
            for (raw_domain, d) in &raw.domains {
                let table = format!("domains.\"{raw_domain}\"");
                let err = |key: &str, m: String| field_at(text, path, &table, key, m);
                let name = DomainName::new(raw_domain).map_err(|e| err("names", e))?;
                let hosts = |key: &str, list: &[String]| {
                    list.iter().map(|n| DomainName::new(n).map_err(|e| err(key, e))).collect::<Result<_, _>>()
                };
                let rec = set.domains.entry(name).or_default();
                rec.names = hosts("names", &d.names)?;
                rec.aliases = hosts("aliases", &d.aliases)?;
                rec.quota_bytes = d.quota_bytes.map(|q| q.0);
                rec.quota_messages = d.quota_messages;
                rec.expire = d.expire.map(|e| e.0);
                rec.pop3 = d.pop3.unwrap_or(true);
                set.check().map_err(|e| err(if e.contains("server name") { "names" } else { "aliases" }, e))?;
            }
            std::sync::Arc::new(set)
        };
        let acme = match raw.acme.directory.trim() {
            "" => None,
            directory => {
                let err = |key: &str, m: String| field_at(text, path, "acme", key, m);
                if !directory.starts_with("https://") {
                    return Err(err("directory", "the ACME directory is an https URL".into()));
                }
                if raw.tls.is_none() {
                    return Err(err(
                        "directory",
                        "ACME needs a [tls] section (its pair serves the other names)".into(),
                    ));
                }
                let names = raw
                    .acme
                    .names
                    .iter()
                    .map(|n| server_name(n).map_err(|e| err("names", e)))
                    .collect::<Result<Vec<_>, _>>()?;
                if names.is_empty() && !raw.acme.domain_names {
                    return Err(err(
                        "names",
                        "name the server names to get certificates for (or set domain_names = true)".into(),
                    ));
                }
                if let Some(n) = names.iter().find(|n| n.starts_with("*.")) {
                    return Err(err("names", format!("{n}: wildcards need DNS-01, which Pillarbox does not do")));
                }
                let challenge = raw.acme.challenge.trim().to_ascii_lowercase();
                match challenge.as_str() {
                    "tls-alpn-01" if raw.listen.https.is_empty() => {
                        return Err(err(
                            "challenge",
                            "tls-alpn-01 is answered on [listen] https, which is empty".into(),
                        ));
                    }
                    "http-01" if raw.listen.http.is_empty() => {
                        return Err(err("challenge", "http-01 is answered on [listen] http, which is empty".into()));
                    }
                    "tls-alpn-01" | "http-01" => {}
                    other => return Err(err("challenge", format!("{other:?}: use \"tls-alpn-01\" or \"http-01\""))),
                }
                Some(AcmeSettings {
                    directory: directory.to_owned(),
                    contact: raw.acme.contact.clone(),
                    names,
                    domain_names: raw.acme.domain_names,
                    exclude: raw
                        .tls
                        .as_ref()
                        .map(|t| t.names.keys().filter_map(|n| server_name(n).ok()).collect())
                        .unwrap_or_default(),
                    challenge,
                    ca_file: (!raw.acme.ca_file.as_os_str().is_empty()).then(|| rel(&raw.acme.ca_file)),
                    dir: rel(Path::new("acme")),
                })
            }
        };
        let tls = match raw.tls.clone() {
            None => None,
            Some(t) => {
                let mut names = Vec::new();
                for (raw_name, pair) in t.names {
                    let table = format!("tls.names.\"{raw_name}\"");
                    let name = server_name(&raw_name).map_err(|e| field_at(text, path, &table, "cert", e))?;
                    if names.iter().any(|n: &NamedPair| n.name == name) {
                        return Err(field_at(text, path, &table, "cert", format!("{name} is named twice")));
                    }
                    names.push(NamedPair { name, cert: rel(&pair.cert), key: rel(&pair.key) });
                }
                Some(TlsPaths { cert: rel(&t.cert), key: rel(&t.key), names })
            }
        };
        let oauth2 = match raw.auth.oauth2.clone() {
            None => None,
            Some(o) => Some(oauth2_settings(o, &rel).map_err(|(key, e)| field_at(text, path, "auth.oauth2", key, e))?),
        };
        Ok(Self {
            source: path.to_owned(),
            pop3: raw.listen.pop3,
            pop3s: raw.listen.pop3s,
            lmtp: raw.listen.lmtp,
            lmtp_unix: raw.listen.lmtp_unix.map(|p| rel(&p)),
            lmtp_unix_mode: raw.listen.lmtp_unix_mode.0,
            lmtp_unix_group: Some(raw.listen.lmtp_unix_group.clone()).filter(|g| !g.is_empty()),
            tls,
            lock: raw.pop3.lock,
            idle_timeout: raw.pop3.idle_timeout.0,
            apop: raw.pop3.apop,
            expire: raw.pop3.expire.0,
            expunge_interval: raw.pop3.expunge_interval.0,
            login_delay: raw.pop3.login_delay,
            scram_sha1: raw.auth.scram_sha1,
            upgrade_hashes: raw.auth.upgrade_hashes,
            min_password_score: raw.auth.min_password_score,
            fail_delay: raw.auth.fail_delay.0,
            fail_delay_max: raw.auth.fail_delay_max.0,
            max_connections_per_ip: raw.limits.max_connections_per_ip,
            max_sessions_per_user: raw.limits.max_sessions_per_user,
            ip_grouping: pillarbox_core::gate::IpGrouping {
                prefix: raw.limits.ipv6_prefix,
                aggregate: raw.limits.ipv6_aggregate_prefix,
            },
            max_concurrent_attempts_per_account: raw.limits.max_concurrent_attempts_per_account,
            prelogin_timeout: raw.limits.prelogin_timeout.0,
            max_unsent_output: usize::try_from(raw.limits.max_unsent_output.0).unwrap_or(usize::MAX),
            lmtp_max_connections: raw.limits.lmtp_max_connections,
            lmtp_max_connections_per_ip: raw.limits.lmtp_max_connections_per_ip,
            users_file: rel(&raw.auth.users),
            domains_file: rel(&raw.auth.domains),
            trusted_networks: raw.auth.trusted_networks,
            maildir_root: rel(&raw.store.maildir),
            max_connections: raw.limits.max_connections,
            shutdown_grace: raw.limits.shutdown_grace.0,
            log_level: raw.log.level.clone(),
            metrics,
            admin,
            http: raw.listen.http.clone(),
            https: raw.listen.https.clone(),
            autoconfig,
            acme,
            domains,
            run_as: (!raw.process.user.trim().is_empty()).then(|| {
                let g = raw.process.group.trim();
                (raw.process.user.trim().to_owned(), (!g.is_empty()).then(|| g.to_owned()))
            }),
            delivery: DeliveryPolicy {
                recipient_delimiter: raw.delivery.recipient_delimiter,
                max_message_size: raw.delivery.max_message_size.0,
                max_recipients: raw.delivery.max_recipients,
                quota_bytes: raw.delivery.quota_bytes.0,
                quota_messages: raw.delivery.quota_messages,
                over_quota: match raw.delivery.over_quota {
                    OverQuota::Permanent => pillarbox_core::OverQuota::Permanent,
                    OverQuota::Temporary => pillarbox_core::OverQuota::Temporary,
                },
            },
            lmtp_idle_timeout: raw.delivery.idle_timeout.0,
            database,
            oauth2,
            antivirus,
            data_dir,
        })
    }

    /// The rules of the service layer, from this configuration.
    pub fn policy(&self) -> pillarbox_core::Policy {
        pillarbox_core::Policy {
            lock: self.lock,
            apop: self.apop,
            expire: self.expire,
            login_delay: self.login_delay,
            scram_sha1: self.scram_sha1,
            // Users from a panel's database have no SCRAM keys, and their hashes are the panel's.
            scram: !self.panel_users(),
            oauth2: self.oauth2.is_some(),
            upgrade_hashes: self.upgrade_hashes && !self.panel_users(),
            min_password_score: self.min_password_score,
            fail_delay: self.fail_delay,
            fail_delay_max: self.fail_delay_max,
            max_sessions_per_user: self.max_sessions_per_user,
            max_concurrent_attempts_per_account: self.max_concurrent_attempts_per_account,
            delivery: self.delivery.clone(),
            domains: self.domains.clone(),
        }
    }

    /// Whether users are read from a control panel's database (`[database] password_query`).
    pub fn panel_users(&self) -> bool {
        self.database.as_ref().is_some_and(|d| d.password_query.is_some())
    }

    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted_networks.iter().any(|n| n.contains(ip))
    }

    /// What a reload from `new` changes: the settings, by name, that take effect now, and those
    /// that changed but need a restart (listening sockets, the user file and mail folders, the
    /// sizes of the connection pools...). The configuration returned is `new` with the running
    /// values kept for the latter, so that what is in force is what is reported.
    pub fn reloaded(&self, mut new: Config) -> (Config, Changes) {
        // Every field is named below, as restart or live: a field added to `Config` without a
        // place in one of the lists does not compile.
        let Config {
            source: _,
            data_dir: _,
            pop3: _,
            pop3s: _,
            lmtp: _,
            lmtp_unix: _,
            lmtp_unix_mode: _,
            lmtp_unix_group: _,
            tls: _,
            lock: _,
            idle_timeout: _,
            apop: _,
            expire: _,
            expunge_interval: _,
            login_delay: _,
            users_file: _,
            domains_file: _,
            trusted_networks: _,
            scram_sha1: _,
            upgrade_hashes: _,
            min_password_score: _,
            fail_delay: _,
            fail_delay_max: _,
            max_connections_per_ip: _,
            max_sessions_per_user: _,
            ip_grouping: _,
            max_concurrent_attempts_per_account: _,
            prelogin_timeout: _,
            max_unsent_output: _,
            lmtp_max_connections: _,
            lmtp_max_connections_per_ip: _,
            maildir_root: _,
            max_connections: _,
            shutdown_grace: _,
            log_level: _,
            metrics: _,
            admin: _,
            http: _,
            https: _,
            autoconfig: _,
            acme: _,
            domains: _,
            run_as: _,
            delivery:
                pillarbox_core::DeliveryPolicy {
                    recipient_delimiter: _,
                    max_message_size: _,
                    max_recipients: _,
                    quota_bytes: _,
                    quota_messages: _,
                    over_quota: _,
                },
            lmtp_idle_timeout: _,
            database: _,
            oauth2: _,
            antivirus: _,
        } = self;
        let mut changes = Changes::default();
        let differs = |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") != format!("{b:?}");
        macro_rules! restart {
            ($($field:ident $(. $sub:ident)? => $name:expr),* $(,)?) => {$(
                if differs(&self.$field $(. $sub)?, &new.$field $(. $sub)?) {
                    changes.need_restart.push($name);
                    new.$field $(. $sub)? = self.$field $(. $sub)?.clone();
                }
            )*};
        }
        macro_rules! live {
            ($($field:ident $(. $sub:ident)? => $name:expr),* $(,)?) => {$(
                if differs(&self.$field $(. $sub)?, &new.$field $(. $sub)?) {
                    changes.applied.push($name);
                }
            )*};
        }
        // With a [tls] section added or removed the listeners would be set up differently.
        if self.tls.is_some() != new.tls.is_some() {
            changes.need_restart.push("[tls]");
            new.tls.clone_from(&self.tls);
        }
        restart! {
            data_dir => "data_dir",
            pop3 => "[listen] pop3",
            pop3s => "[listen] pop3s",
            lmtp => "[listen] lmtp",
            lmtp_unix => "[listen] lmtp_unix",
            lmtp_unix_mode => "[listen] lmtp_unix_mode",
            lmtp_unix_group => "[listen] lmtp_unix_group",
            users_file => "[auth] users",
            domains_file => "[auth] domains",
            maildir_root => "[store] maildir",
            ip_grouping => "[limits] ipv6_prefix / ipv6_aggregate_prefix",
            max_connections => "[limits] max_connections",
            lmtp_max_connections => "[limits] lmtp_max_connections",
            metrics => "[metrics] listen",
            admin => "[admin]",
            http => "[listen] http",
            acme => "[acme]",
            https => "[listen] https",
            run_as => "[process] user / group",
            database => "[database]",
        }
        live! {
            antivirus => "[antivirus]",
            tls => "[tls] cert / key",
            lock => "[pop3] lock",
            idle_timeout => "[pop3] idle_timeout",
            apop => "[pop3] apop",
            expire => "[pop3] expire",
            expunge_interval => "[pop3] expunge_interval",
            login_delay => "[pop3] login_delay",
            trusted_networks => "[auth] trusted_networks",
            scram_sha1 => "[auth] scram_sha1",
            upgrade_hashes => "[auth] upgrade_hashes",
            min_password_score => "[auth] min_password_score",
            fail_delay => "[auth] fail_delay",
            fail_delay_max => "[auth] fail_delay_max",
            oauth2 => "[auth.oauth2]",
            autoconfig => "[autoconfig]",
            domains => "[delivery] domains, [domains]",
            delivery.recipient_delimiter => "[delivery] recipient_delimiter",
            delivery.max_message_size => "[delivery] max_message_size",
            delivery.max_recipients => "[delivery] max_recipients",
            delivery.quota_bytes => "[delivery] quota_bytes",
            delivery.quota_messages => "[delivery] quota_messages",
            delivery.over_quota => "[delivery] over_quota",
            lmtp_idle_timeout => "[delivery] idle_timeout",
            max_connections_per_ip => "[limits] max_connections_per_ip",
            max_concurrent_attempts_per_account => "[limits] max_concurrent_attempts_per_account",
            prelogin_timeout => "[limits] prelogin_timeout",
            max_unsent_output => "[limits] max_unsent_output",
            lmtp_max_connections_per_ip => "[limits] lmtp_max_connections_per_ip",
            max_sessions_per_user => "[limits] max_sessions_per_user",
            shutdown_grace => "[limits] shutdown_grace",
            log_level => "[log] level",
        }
        (new, changes)
    }
}

/// What a configuration reload changed (see [`Config::reloaded`]).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    /// Settings in force from now on (new connections, logins and deliveries).
    pub applied: Vec<&'static str>,
    /// Settings that changed in the file but keep their running value until a restart.
    pub need_restart: Vec<&'static str>,
}

/// `path` without `.` components (`data/./users` reads badly in messages); `.` if that is all.
fn clean(path: &Path) -> PathBuf {
    let p: PathBuf = path.components().filter(|c| !matches!(c, std::path::Component::CurDir)).collect();
    if p.as_os_str().is_empty() { PathBuf::from(".") } else { p }
}

/// Turn a TOML error into "file, line, field: message".
fn field_error(text: &str, path: &Path, e: &toml::de::Error) -> ConfigError {
    let (line, field) = toml_location(text, e.span().map_or(0, |s| s.start));
    ConfigError::Field { path: path.to_owned(), line, field, message: e.message().trim().to_owned() }
}

/// An error for `table.key`, located at the line where the key is written (or 0 if absent).
/// `[auth.oauth2]` checked, its client secret read: or the key at fault and why.
fn oauth2_settings(
    o: RawOAuth2,
    rel: &dyn Fn(&Path) -> PathBuf,
) -> Result<pillarbox_oauth::verify::ServerSettings, (&'static str, String)> {
    let some = |s: String| Some(s.trim().to_owned()).filter(|s| !s.is_empty());
    let path = |p: PathBuf| (!p.as_os_str().is_empty()).then(|| rel(&p));
    let client_secret = match path(o.client_secret_file) {
        None => None,
        Some(file) => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| ("client_secret_file", format!("cannot read {}: {e}", file.display())))?;
            Some(pillarbox_oauth::verify::SecretText(text.trim().to_owned()))
        }
    };
    let client_id = some(o.client_id);
    if client_id.is_some() && client_secret.is_none() {
        return Err(("client_secret_file", "client_id needs its secret, in a file readable by the server only".into()));
    }
    let settings = pillarbox_oauth::verify::ServerSettings {
        issuer: o.issuer.trim().to_owned(),
        audience: o.audience.trim().to_owned(),
        username_claim: o.username_claim.trim().to_owned(),
        jwks_url: some(o.jwks_url),
        introspection_url: some(o.introspection_url),
        client_id,
        client_secret,
        ca_file: path(o.ca_file),
    };
    settings.check()?;
    if let Some(ca) = &settings.ca_file
        && !ca.is_file()
    {
        return Err(("ca_file", format!("{} is not a file", ca.display())));
    }
    Ok(settings)
}

fn field_at(text: &str, path: &Path, table: &str, key: &str, message: String) -> ConfigError {
    ConfigError::Field {
        path: path.to_owned(),
        line: key_line(text, table, key),
        field: format!("{table}.{key}"),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/pillarbox/pillarbox.toml"))
    }

    #[test]
    fn the_consoles_identity_provider_sign_in_needs_the_providers_section() {
        let with = |extra: &str| {
            DEFAULT_CONFIG
                .replace("listen = []\n# tls = true", "listen = [\"127.0.0.1:8443\"]\n# tls = true")
                .replace("oauth2_client_id = \"\"", &format!("oauth2_client_id = \"pillarbox-console\"\n{extra}"))
        };
        let e = parse(&with("")).expect_err("no [auth.oauth2]").to_string();
        assert!(e.contains("admin.oauth2_client_id") && e.contains("[auth.oauth2]"), "{e}");
        let provider = "\n[auth.oauth2]\nissuer = \"https://id.example.com\"\naudience = \"pop3://mail.example.com\"\n";
        let c = parse(&format!("{}{provider}", with(""))).expect("with the provider");
        let admin = c.admin.expect("admin");
        assert_eq!(
            (admin.oauth2_client_id.as_deref(), admin.oauth2_scope.as_str()),
            (Some("pillarbox-console"), "openid")
        );
        let text = format!("{}{provider}", with("").replace("oauth2_scope = \"openid\"", "oauth2_scope = \"  \""));
        let e = parse(&text).expect_err("no scope").to_string();
        assert!(e.contains("admin.oauth2_scope"), "{e}");
        assert_eq!(parse(DEFAULT_CONFIG).expect("default").admin, None);
    }

    #[test]
    fn a_database_password_is_never_shown() {
        let shown = |url: &str| DatabaseConfig {
            url: url.into(),
            pool_size: 1,
            lease: Duration::from_secs(1),
            ca_file: None,
            password_query: None,
            user_query: None,
        };
        for (url, want) in [
            (
                "postgresql://pb:s3cret@db1,db2/mail?target_session_attrs=read-write",
                "postgresql://pb:***@db1,db2/mail?target_session_attrs=read-write",
            ),
            (
                "postgresql://db/mail?user=pb&password=s3cret&sslmode=require",
                "postgresql://db/mail?user=pb&password=***&sslmode=require",
            ),
            ("host=db user=pb password=s3cret dbname=mail", "host=db user=pb password=*** dbname=mail"),
            ("postgresql://pb@db/mail", "postgresql://pb@db/mail"),
        ] {
            let d = shown(url);
            assert_eq!(d.url_for_display(), want);
            assert!(!format!("{d:?}").contains("s3cret"));
        }
    }

    #[test]
    fn a_reload_applies_what_can_change_and_keeps_the_rest_running() {
        let old = parse(DEFAULT_CONFIG).expect("default config");
        let edited = DEFAULT_CONFIG
            .replace("expire = \"never\"", "expire = \"30\"")
            .replace("users = \"users\"", "users = \"other-users\"")
            .replace("quota_messages = 0", "quota_messages = 500")
            .replace("[tls]\n", "")
            .replace("cert = \"tls/cert.pem\"\n", "")
            .replace("key = \"tls/key.pem\"\n", "")
            .replace("pop3s = [\"127.0.0.1:1995\"]", "pop3s = []");
        let (now, changes) = old.reloaded(parse(&edited).expect("edited"));
        assert_eq!(changes.applied, ["[pop3] expire", "[delivery] quota_messages"]);
        assert_eq!(changes.need_restart, ["[tls]", "[listen] pop3s", "[auth] users"]);
        assert_eq!((now.expire, now.delivery.quota_messages), (Expire::Days(30), 500));
        assert_eq!(now.users_file, old.users_file, "the running value stays until a restart");
        assert!(now.tls.is_some());
        let (_, none) = old.reloaded(parse(DEFAULT_CONFIG).expect("same"));
        assert_eq!(none, Changes::default());
    }

    #[test]
    fn default_config_parses() {
        let c = parse(DEFAULT_CONFIG).expect("default config");
        assert_eq!(c.pop3, vec!["127.0.0.1:1110".parse().expect("addr")]);
        assert_eq!(c.idle_timeout, Duration::from_secs(600));
        assert!(c.lock && c.apop);
        assert_eq!(c.users_file, Path::new("/etc/pillarbox/users"));
        assert!(c.is_trusted("127.0.0.2".parse().expect("ip")));
        assert!(c.is_trusted("::1".parse().expect("ip")));
        assert!(c.is_trusted("::ffff:127.0.0.1".parse().expect("ip")));
        assert!(!c.is_trusted("192.0.2.1".parse().expect("ip")));
        assert_eq!(c.lmtp, vec!["127.0.0.1:2424".parse().expect("addr")]);
        assert_eq!(c.delivery.max_message_size, 50_000_000);
        assert_eq!(c.expire, Expire::Never);
        assert_eq!(c.lmtp_unix_mode, 0o660);
    }

    #[test]
    fn sizes_and_expire() {
        assert_eq!("50MB".parse::<HumanSize>().map(|s| s.0), Ok(50_000_000));
        assert_eq!("2GiB".parse::<HumanSize>().map(|s| s.0), Ok(2 << 30));
        assert_eq!("4096".parse::<HumanSize>().map(|s| s.0), Ok(4096));
        assert!("5 parsecs".parse::<HumanSize>().is_err());
        let c = parse("[listen]\npop3 = [\"127.0.0.1:1\"]\n[pop3]\nexpire = 30\n[delivery]\nquota_bytes = \"1GB\"\n")
            .expect("valid");
        assert_eq!((c.expire, c.delivery.quota_bytes), (Expire::Days(30), 1_000_000_000));
        let e =
            parse("[listen]\npop3 = [\"127.0.0.1:1\"]\n[delivery]\nover_quota = \"maybe\"\n").expect_err("bad enum");
        assert!(e.to_string().contains("line 4, field `delivery.over_quota`"), "{e}");
    }

    #[test]
    fn antivirus_names_clamd_by_socket_or_address() {
        let base = "[listen]\npop3 = [\"127.0.0.1:1\"]\n[antivirus]\n";
        assert_eq!(parse(base).expect("valid").antivirus, None, "off by default");
        let c = parse(&format!("{base}clamd = \"/run/clamav/clamd.ctl\"\n")).expect("valid");
        let want = Antivirus {
            clamd: pillarbox_clamav::Clamd::Unix("/run/clamav/clamd.ctl".into()),
            quarantine: false,
            accept_unscanned: false,
        };
        assert_eq!(c.antivirus, Some(want));
        let c = parse(&format!("{base}clamd = \"127.0.0.1:3310\"\non_unavailable = \"accept\"\n")).expect("valid");
        assert!(c.antivirus.is_some_and(|a| a.accept_unscanned && !a.quarantine));
        let c = parse(&format!("{base}clamd = \"/c\"\non_infected = \"quarantine\"\n")).expect("valid");
        assert!(c.antivirus.is_some_and(|a| a.quarantine));
        let e = parse(&format!("{base}clamd = \"/c\"\non_infected = \"drop\"\n")).expect_err("bad");
        assert!(e.to_string().contains("line 5, field `antivirus.on_infected`"), "{e}");
        let e = parse(&format!("{base}clamd = \"clamd.ctl\"\n")).expect_err("relative");
        assert!(e.to_string().contains("line 4, field `antivirus.clamd`"), "{e}");
        let e = parse(&format!("{base}clamd = \"/c\"\non_unavailable = \"pass\"\n")).expect_err("bad");
        assert!(e.to_string().contains("line 5, field `antivirus.on_unavailable`"), "{e}");
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let e = parse("[listen]\npop3 = [\"127.0.0.1:110\"]\n[pop3]\nlock = \"yes\"\n").expect_err("bad type");
        let s = e.to_string();
        assert!(s.starts_with("/etc/pillarbox/pillarbox.toml, line 4, field `pop3.lock`:"), "{s}");
        let e = parse("[listen]\npop3 = [\"127.0.0.1:110\"]\n[pop3]\nlok = true\n").expect_err("unknown");
        assert!(e.to_string().contains("line 4, field `pop3.lok`") && e.to_string().contains("unknown field"), "{e}");
        let e = parse("[listen]\npop3 = [\"127.0.0.1:110\"]\n[pop3]\nidle_timeout = \"1m\"\n").expect_err("too short");
        assert!(
            e.to_string().contains("line 4, field `pop3.idle_timeout`") && e.to_string().contains("RFC 1939"),
            "{e}"
        );
        let e = parse("[listen]\npop3 = [\"localhost\"]\n").expect_err("bad addr");
        assert!(e.to_string().contains("line 2, field `listen.pop3`"), "{e}");
        let e = parse("[listen]\npop3 = [\"127.0.0.1:1\"]\n[auth]\ntrusted_networks = [\"10.0.0.0/33\"]\n")
            .expect_err("bad cidr");
        assert!(e.to_string().contains("field `auth.trusted_networks`") && e.to_string().contains("prefix"), "{e}");
        let e = parse("[listen]\npop3s = [\"127.0.0.1:995\"]\n").expect_err("no tls");
        assert!(e.to_string().contains("[tls]"), "{e}");
    }

    #[test]
    fn domains_from_delivery_and_domain_tables() {
        let base = "[listen]\npop3 = [\"127.0.0.1:1\"]\n[delivery]\ndomains = [\"Example.ORG\"]\n";
        let c = parse(&format!(
            "{base}[domains.\"example.com\"]\nnames = [\"pop.example.com\"]\naliases = [\"example.net\"]\n\
             quota_bytes = \"2GB\"\nexpire = \"never\"\npop3 = false\n"
        ))
        .expect("domains");
        let d = &c.domains;
        assert!(d.resolve("example.org").is_some_and(|(_, r)| r.local && r.pop3));
        let (name, r) = d.resolve("example.net").expect("alias");
        assert_eq!(name.as_str(), "example.com");
        assert_eq!(
            (r.quota_bytes, r.expire, r.pop3, r.local),
            (Some(2_000_000_000), Some(Expire::Never), false, false)
        );
        assert_eq!(d.realm("pop.example.com").map(|n| n.as_str()), Some("example.com"));
        let e = parse("[listen]\npop3 = [\"127.0.0.1:1\"]\n[delivery]\ndomains = [\"a.test\", \"not a domain\"]\n")
            .expect_err("bad domain");
        assert!(e.to_string().contains("line 4, field `delivery.domains`: item 2"), "{e}");
        let e = parse(&format!(
            "{base}[domains.\"a.test\"]\naliases = [\"x.test\"]\n[domains.\"b.test\"]\naliases = [\"x.test\"]\n"
        ))
        .expect_err("one alias, two domains");
        assert!(e.to_string().contains("field `domains.\"b.test\".aliases`: x.test is an alias of a.test"), "{e}");
    }

    #[test]
    fn log_levels() {
        let e = parse("[listen]\npop3 = [\"127.0.0.1:1\"]\n[log]\nlevel = \"loud\"\n").expect_err("bad level");
        assert!(e.to_string().contains("line 4, field `log.level`"), "{e}");
        for ok in ["warn", "info,pillarbox::auth=debug", "DEBUG", "off"] {
            let c = parse(&format!("[listen]\npop3 = [\"127.0.0.1:1\"]\n[log]\nlevel = \"{ok}\"\n")).expect(ok);
            assert_eq!(c.log_level, ok);
        }
        assert!(!valid_log_filter("info,=debug") && !valid_log_filter(""));
    }

    #[test]
    fn durations_and_cidrs() {
        assert_eq!("90".parse::<HumanDuration>().map(|d| d.0), Ok(Duration::from_secs(90)));
        assert_eq!("2h".parse::<HumanDuration>().map(|d| d.0), Ok(Duration::from_secs(7200)));
        assert!("2w".parse::<HumanDuration>().is_err());
        assert_eq!("250ms".parse::<HumanDuration>().map(|d| d.0), Ok(Duration::from_millis(250)));
        let n: Cidr = "10.1.0.0/16".parse().expect("cidr");
        assert!(n.contains("10.1.200.3".parse().expect("ip")) && !n.contains("10.2.0.1".parse().expect("ip")));
        let n: Cidr = "2001:db8::/33".parse().expect("cidr");
        assert!(
            n.contains("2001:db8:7fff::1".parse().expect("ip")) && !n.contains("2001:db8:8000::1".parse().expect("ip"))
        );
        assert!("0.0.0.0/0".parse::<Cidr>().expect("any").contains("192.0.2.1".parse().expect("ip")));
    }
}
