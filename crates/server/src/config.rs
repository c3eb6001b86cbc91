//! The server configuration: one TOML file, parsed once into validated types. A bad file is
//! reported with its path, the line and the field (`pop3.idle_timeout`), never silently ignored.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

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

[tls]
# PEM certificate chain and private key. A self-signed pair was generated on first start;
# replace them with your own (e.g. from Let's Encrypt) for clients on other machines.
cert = "tls/cert.pem"
key = "tls/key.pem"

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

[auth]
# The user file (`pillarbox user add|passwd|del|list`).
users = "users"
# Networks where USER/PASS may be used without TLS. Everywhere else clients must use STLS or
# port 995 first.
trusted_networks = ["127.0.0.0/8", "::1/128"]

[store]
# Root of the users' Maildirs: user alice reads ROOT/alice/{cur,new,tmp}.
maildir = "mail"

[limits]
# Simultaneous connections; more are answered with -ERR [SYS/TEMP] and closed.
max_connections = 1000
# On SIGTERM/SIGINT: how long open sessions may go on (and QUIT normally) before they are closed.
shutdown_grace = "10s"
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

/// A duration written as `30s`, `10m`, `1h` or a number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a duration (examples: 30s, 10m, 1h)"))?;
        let mult = match unit.trim() {
            "" | "s" => 1,
            "m" => 60,
            "h" => 3600,
            other => return Err(format!("unknown unit {other:?} in {s:?}; use s, m or h")),
        };
        Ok(Self(Duration::from_secs(n.saturating_mul(mult))))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Secs(n) => Ok(Self(Duration::from_secs(n))),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
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
    limits: RawLimits,
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
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
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
}

impl Default for RawPop3 {
    fn default() -> Self {
        Self {
            lock: true,
            idle_timeout: HumanDuration(Duration::from_secs(MIN_AUTOLOGOUT_SECS)),
            allow_short_idle_timeout: false,
            apop: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAuth {
    users: PathBuf,
    trusted_networks: Vec<Cidr>,
}

impl Default for RawAuth {
    fn default() -> Self {
        Self { users: PathBuf::from("users"), trusted_networks: vec![LOOPBACK4, LOOPBACK6] }
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
    shutdown_grace: HumanDuration,
}

impl Default for RawLimits {
    fn default() -> Self {
        Self { max_connections: 1000, shutdown_grace: HumanDuration(Duration::from_secs(10)) }
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
    pub tls: Option<TlsPaths>,
    pub lock: bool,
    pub idle_timeout: Duration,
    pub apop: bool,
    pub users_file: PathBuf,
    pub trusted_networks: Vec<Cidr>,
    pub maildir_root: PathBuf,
    pub max_connections: usize,
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone)]
pub struct TlsPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
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
        if raw.limits.max_connections == 0 {
            return Err(field_at(text, path, "limits", "max_connections", "must be at least 1".into()));
        }
        if !raw.listen.pop3s.is_empty() && raw.tls.is_none() {
            return Err(invalid("[listen] pop3s needs a [tls] section with cert and key".into()));
        }
        if raw.listen.pop3.is_empty() && raw.listen.pop3s.is_empty() {
            return Err(invalid("[listen] has no pop3 or pop3s address; the server would accept nothing".into()));
        }
        Ok(Self {
            source: path.to_owned(),
            pop3: raw.listen.pop3,
            pop3s: raw.listen.pop3s,
            tls: raw.tls.map(|t| TlsPaths { cert: rel(&t.cert), key: rel(&t.key) }),
            lock: raw.pop3.lock,
            idle_timeout: raw.pop3.idle_timeout.0,
            apop: raw.pop3.apop,
            users_file: rel(&raw.auth.users),
            trusted_networks: raw.auth.trusted_networks,
            maildir_root: rel(&raw.store.maildir),
            max_connections: raw.limits.max_connections,
            shutdown_grace: raw.limits.shutdown_grace.0,
            data_dir,
        })
    }

    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted_networks.iter().any(|n| n.contains(ip))
    }
}

/// `path` without `.` components (`data/./users` reads badly in messages); `.` if that is all.
fn clean(path: &Path) -> PathBuf {
    let p: PathBuf = path.components().filter(|c| !matches!(c, std::path::Component::CurDir)).collect();
    if p.as_os_str().is_empty() { PathBuf::from(".") } else { p }
}

/// Turn a TOML error into "file, line, field: message".
fn field_error(text: &str, path: &Path, e: &toml::de::Error) -> ConfigError {
    let offset = e.span().map_or(0, |s| s.start);
    let line = text[..offset.min(text.len())].matches('\n').count() + 1;
    let field = field_at_line(text, line).unwrap_or_else(|| "(top level)".into());
    ConfigError::Field { path: path.to_owned(), line, field, message: e.message().trim().to_owned() }
}

/// "table.key" for the key on `line` (1-based), from the nearest `[table]` header above it.
fn field_at_line(text: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let this = lines.get(line.checked_sub(1)?)?.trim();
    let key = this.split('=').next().map(str::trim).filter(|k| !k.is_empty() && !k.starts_with('['));
    let table = lines[..line - 1]
        .iter()
        .rev()
        .map(|l| l.trim())
        .find(|l| l.starts_with('[') && !l.starts_with("[["))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_owned());
    match (table, key) {
        (Some(t), Some(k)) => Some(format!("{t}.{k}")),
        (None, Some(k)) => Some(k.to_owned()),
        (Some(t), None) => Some(t),
        (None, None) => None,
    }
}

/// An error for `table.key`, located at the line where the key is written (or 0 if absent).
fn field_at(text: &str, path: &Path, table: &str, key: &str, message: String) -> ConfigError {
    let mut in_table = false;
    let mut line_no = 0;
    for (i, l) in text.lines().enumerate() {
        let t = l.trim();
        if t.starts_with('[') {
            in_table = t.trim_matches(|c| c == '[' || c == ']').trim() == table;
        } else if in_table && t.split('=').next().map(str::trim) == Some(key) {
            line_no = i + 1;
        }
    }
    ConfigError::Field { path: path.to_owned(), line: line_no, field: format!("{table}.{key}"), message }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/pillarbox/pillarbox.toml"))
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
    fn durations_and_cidrs() {
        assert_eq!("90".parse::<HumanDuration>().map(|d| d.0), Ok(Duration::from_secs(90)));
        assert_eq!("2h".parse::<HumanDuration>().map(|d| d.0), Ok(Duration::from_secs(7200)));
        assert!("2d".parse::<HumanDuration>().is_err());
        let n: Cidr = "10.1.0.0/16".parse().expect("cidr");
        assert!(n.contains("10.1.200.3".parse().expect("ip")) && !n.contains("10.2.0.1".parse().expect("ip")));
        let n: Cidr = "2001:db8::/33".parse().expect("cidr");
        assert!(
            n.contains("2001:db8:7fff::1".parse().expect("ip")) && !n.contains("2001:db8:8000::1".parse().expect("ip"))
        );
        assert!("0.0.0.0/0".parse::<Cidr>().expect("any").contains("192.0.2.1".parse().expect("ip")));
    }
}
