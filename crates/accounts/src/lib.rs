//! Accounts for `pillarbox fetch`: one TOML table per account, validated once. A mistake names the
//! file, the line and the field.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use pillarbox_config::HumanSize;
use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// TLS from the first byte (RFC 8314), port 995 by default.
    Implicit,
    /// STLS on the plain port (RFC 2595), port 110 by default; never falls back to plaintext.
    Starttls,
    /// No TLS at all; only with `insecure = true`.
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthChoice {
    /// The strongest the server offers (SCRAM-SHA-256, then PLAIN/LOGIN/USER over TLS, then APOP;
    /// with a `token_command`, OAUTHBEARER, then XOAUTH2), and only that one: a refused password
    /// is not tried again with another mechanism.
    Auto,
    ScramSha256,
    Plain,
    Login,
    Apop,
    User,
    /// RFC 7628, with an OAuth2 access token.
    #[serde(rename = "oauthbearer")]
    OAuthBearer,
    /// Google's and Microsoft's XOAUTH2, with an OAuth2 access token.
    #[serde(rename = "xoauth2")]
    XOAuth2,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deliver {
    /// A Maildir (created if missing): exactly once, even across crashes.
    Maildir(PathBuf),
    /// An mbox file in mboxrd format, locked while written.
    Mbox(PathBuf),
    /// A command that receives each message on standard input; exit 0 means delivered.
    Mda(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Delete from the server once stored locally.
    Delete,
    /// Leave on the server (needs UIDL).
    Keep,
    /// Delete this many days after the first download (needs UIDL).
    Days(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Oversize {
    Skip,
    Delete,
}

/// Whose OAuth2 endpoints an account's tokens come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OAuth2Provider {
    Google,
    Microsoft,
    /// Any other: from `issuer` (discovery) or the endpoints given.
    Custom,
}

impl OAuth2Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            OAuth2Provider::Google => "google",
            OAuth2Provider::Microsoft => "microsoft",
            OAuth2Provider::Custom => "custom",
        }
    }
}

/// Where an OAuth2 client secret comes from (never written inline in the accounts file).
#[derive(Clone, PartialEq, Eq)]
pub enum ClientSecret {
    Command(String),
    File(PathBuf),
}

impl std::fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientSecret::Command(_) => f.write_str("ClientSecret::Command(..)"),
            ClientSecret::File(p) => write!(f, "ClientSecret::File({})", p.display()),
        }
    }
}

/// `[accounts.NAME.oauth2]`: how the account's access tokens are obtained and refreshed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuth2 {
    pub provider: OAuth2Provider,
    pub client_id: String,
    pub client_secret: Option<ClientSecret>,
    /// Microsoft: the directory (tenant) id or domain; default `common`.
    pub tenant: Option<String>,
    /// Empty: the provider's scopes for POP.
    pub scopes: Vec<String>,
    pub issuer: Option<String>,
    pub authorization_url: Option<String>,
    pub token_url: Option<String>,
    pub device_url: Option<String>,
}

#[derive(Clone, PartialEq, Eq)]
pub enum PasswordSource {
    Command(String),
    File(PathBuf),
    Env(String),
    /// Not a password: a command that prints an OAuth2 access token (`token_command`, what
    /// users of mutt_oauth2.py and oama have), for OAUTHBEARER or XOAUTH2.
    TokenCommand(String),
    /// OAuth2 tokens obtained by `pillarbox account authorize` and kept refreshed.
    OAuth2(Box<OAuth2>),
}

impl PasswordSource {
    /// Whether the secret is an OAuth2 access token rather than a password.
    pub fn is_token(&self) -> bool {
        matches!(self, PasswordSource::TokenCommand(_) | PasswordSource::OAuth2(_))
    }
}

impl std::fmt::Debug for PasswordSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PasswordSource::Command(_) => f.write_str("PasswordSource::Command(..)"),
            PasswordSource::File(p) => write!(f, "PasswordSource::File({})", p.display()),
            PasswordSource::Env(v) => write!(f, "PasswordSource::Env({v})"),
            PasswordSource::TokenCommand(_) => f.write_str("PasswordSource::TokenCommand(..)"),
            PasswordSource::OAuth2(o) => write!(f, "PasswordSource::OAuth2({o:?})"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Account {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    pub insecure: bool,
    pub username: String,
    pub password: PasswordSource,
    pub auth: AuthChoice,
    pub ca_file: Option<PathBuf>,
    /// SHA-256 of the server's certificate (DER), when pinned.
    pub fingerprint: Option<[u8; 32]>,
    pub deliver: Deliver,
    pub keep: Keep,
    pub max_size: Option<u64>,
    pub oversize: Oversize,
    /// `sieve = "rules.sieve"`: the rules that file each fetched message, compiled.
    pub sieve: Option<Sieve>,
    /// The file's `[antivirus]`: every fetched message is scanned by clamd.
    pub antivirus: Option<Antivirus>,
    /// `encrypt = { recipient = "age1..." }`: every message is stored encrypted to the store
    /// key's public half (`pillarbox mail keygen`).
    pub encrypt: Option<age::x25519::Recipient>,
}

/// `[antivirus]` of the accounts file: clamd scans every message fetch downloads, beside the
/// download; an infected one goes to the `Quarantine` folder, never the inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Antivirus {
    pub clamd: pillarbox_clamav::Clamd,
    /// Store a message clamd could not scan (with a warning), instead of leaving it on the
    /// server for the next run (`on_unavailable = "accept"`; the default is `"defer"`).
    pub accept_unscanned: bool,
}

/// An account's Sieve script: where it was read from, and compiled.
#[derive(Debug, Clone)]
pub struct Sieve {
    pub path: PathBuf,
    pub script: std::sync::Arc<pillarbox_sieve::Script>,
}

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}, line {line}, field `{field}`: {message}")]
    Field { path: PathBuf, line: usize, field: String, message: String },
    /// A change to the file that cannot be made (an account name taken, say).
    #[error("{path}: {message}")]
    Edit { path: PathBuf, message: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    /// Read one by one (see [`parse_accounts`]), so that one broken account leaves the others.
    #[serde(default, rename = "accounts")]
    _accounts: BTreeMap<String, serde::de::IgnoredAny>,
    #[serde(default)]
    backup: RawBackup,
    #[serde(default)]
    antivirus: RawAntivirus,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAntivirus {
    clamd: Option<String>,
    on_unavailable: Option<String>,
}

/// The `[antivirus]` table checked: a mistake names its line and key.
fn antivirus_of(raw: RawAntivirus, text: &str, path: &Path) -> Result<Option<Antivirus>, AccountError> {
    let err = |key: &str, message: String| AccountError::Field {
        path: path.to_owned(),
        line: pillarbox_config::key_line(text, "antivirus", key),
        field: format!("antivirus.{key}"),
        message,
    };
    let accept_unscanned = match raw.on_unavailable.as_deref() {
        None | Some("defer") => false,
        Some("accept") => true,
        Some(other) => return Err(err("on_unavailable", format!("{other:?}: use \"defer\" or \"accept\""))),
    };
    match raw.clamd.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(c) => Ok(Some(Antivirus { clamd: c.parse().map_err(|why| err("clamd", why))?, accept_unscanned })),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawBackup {
    dir: Option<PathBuf>,
    #[serde(default)]
    recipients: Vec<String>,
    passphrase_file: Option<PathBuf>,
}

/// The `[backup]` table: where `pillarbox backup create` writes and how it encrypts, so that a
/// timer can run it without flags.
#[derive(Debug, Clone, Default)]
pub struct BackupSettings {
    pub dir: Option<PathBuf>,
    /// age public keys: archives are encrypted to them (no passphrase needed to back up).
    pub recipients: Vec<age::x25519::Recipient>,
    pub passphrase_file: Option<PathBuf>,
}

/// The `[backup]` table of an accounts file (empty when the file does not exist).
pub fn backup_settings(path: &Path) -> Result<BackupSettings, AccountError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BackupSettings::default()),
        Err(source) => return Err(AccountError::Read { path: path.to_owned(), source }),
    };
    parse(&text, path)?;
    let raw: RawFile =
        toml::from_str(&text).map_err(|e| AccountError::Edit { path: path.to_owned(), message: e.to_string() })?;
    let mut recipients = Vec::new();
    for r in &raw.backup.recipients {
        recipients.push(r.trim().parse().map_err(|e| AccountError::Field {
            path: path.to_owned(),
            line: pillarbox_config::key_line(&text, "backup", "recipients"),
            field: "backup.recipients".into(),
            message: format!("{r:?} is not an age public key (age1...): {e}"),
        })?);
    }
    Ok(BackupSettings {
        dir: raw.backup.dir.map(|d| expand_home(&d)),
        recipients,
        passphrase_file: raw.backup.passphrase_file.map(|p| expand_home(&p)),
    })
}

/// The accounts file as kept in a backup: `password_command`, `token_command` and OAuth2
/// `client_secret_command` values are removed (a command may hold a password or a client secret), with a comment saying so;
/// everything else is kept as written.
pub fn without_secrets(text: &str) -> String {
    let Ok(mut doc) = text.parse::<toml_edit::DocumentMut>() else {
        return String::new();
    };
    if let Some(accounts) = doc.get_mut("accounts").and_then(|a| a.as_table_like_mut()) {
        for (_, account) in accounts.iter_mut() {
            let Some(t) = account.as_table_like_mut() else { continue };
            let mut removed: Vec<&str> =
                ["password_command", "token_command"].into_iter().filter(|k| t.remove(k).is_some()).collect();
            if let Some(o) = t.get_mut("oauth2").and_then(|o| o.as_table_like_mut())
                && o.remove("client_secret_command").is_some()
            {
                removed.push("oauth2.client_secret_command");
            }
            for key in removed {
                let note = format!("# {key} was removed by `pillarbox backup` (it may hold a secret): set it again\n");
                if let Some(table) = account.as_table_mut() {
                    let decor = table.decor_mut();
                    let prefix = decor.prefix().and_then(|p| p.as_str()).unwrap_or("").to_owned();
                    decor.set_prefix(format!("{prefix}{note}"));
                }
            }
        }
    }
    doc.to_string()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccount {
    host: String,
    port: Option<u16>,
    tls: Option<TlsMode>,
    #[serde(default)]
    insecure: bool,
    username: String,
    password_command: Option<String>,
    password_file: Option<PathBuf>,
    password_env: Option<String>,
    token_command: Option<String>,
    oauth2: Option<RawOAuth2>,
    auth: Option<AuthChoice>,
    ca_file: Option<PathBuf>,
    tls_fingerprint: Option<String>,
    deliver: RawDeliver,
    keep: Option<String>,
    max_size: Option<HumanSize>,
    oversize: Option<Oversize>,
    sieve: Option<PathBuf>,
    encrypt: Option<RawEncrypt>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEncrypt {
    recipient: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOAuth2 {
    provider: OAuth2Provider,
    client_id: String,
    client_secret_command: Option<String>,
    client_secret_file: Option<PathBuf>,
    /// Refused with an explanation: a secret does not belong in this file.
    client_secret: Option<toml::Value>,
    tenant: Option<String>,
    scopes: Option<Vec<String>>,
    issuer: Option<String>,
    authorization_url: Option<String>,
    token_url: Option<String>,
    device_url: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDeliver {
    maildir: Option<PathBuf>,
    mbox: Option<PathBuf>,
    mda: Option<String>,
}

impl Account {
    /// An account for probing a server (discovery, `check --host`): no password, nothing kept.
    pub fn probe(host: &str, port: u16, tls: TlsMode) -> Self {
        Self {
            name: format!("{host}:{port}"),
            host: host.to_owned(),
            port,
            tls,
            insecure: tls == TlsMode::None,
            username: String::new(),
            password: PasswordSource::Env(String::new()),
            auth: AuthChoice::Auto,
            ca_file: None,
            fingerprint: None,
            deliver: Deliver::Mda(String::new()),
            keep: Keep::Delete,
            max_size: None,
            oversize: Oversize::Skip,
            sieve: None,
            antivirus: None,
            encrypt: None,
        }
    }
}

impl std::str::FromStr for Keep {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "delete" => Ok(Keep::Delete),
            "keep" => Ok(Keep::Keep),
            _ => s
                .strip_suffix('d')
                .and_then(|n| n.parse().ok())
                .map(Keep::Days)
                .ok_or_else(|| format!("{s:?}: use \"delete\", \"keep\" or a number of days like \"7d\"")),
        }
    }
}

impl std::fmt::Display for Keep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Keep::Delete => f.write_str("delete"),
            Keep::Keep => f.write_str("keep"),
            Keep::Days(d) => write!(f, "{d}d"),
        }
    }
}

impl std::str::FromStr for TlsMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "implicit" => Ok(TlsMode::Implicit),
            "starttls" => Ok(TlsMode::Starttls),
            "none" => Ok(TlsMode::None),
            _ => Err(format!("{s:?}: use \"implicit\" (port 995), \"starttls\" (port 110) or \"none\"")),
        }
    }
}

impl TlsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::Implicit => "implicit",
            TlsMode::Starttls => "starttls",
            TlsMode::None => "none",
        }
    }
}

const AUTH_NAMES: [(&str, AuthChoice); 8] = [
    ("auto", AuthChoice::Auto),
    ("scram-sha-256", AuthChoice::ScramSha256),
    ("plain", AuthChoice::Plain),
    ("login", AuthChoice::Login),
    ("apop", AuthChoice::Apop),
    ("user", AuthChoice::User),
    ("oauthbearer", AuthChoice::OAuthBearer),
    ("xoauth2", AuthChoice::XOAuth2),
];

impl std::str::FromStr for AuthChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        AUTH_NAMES
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(s))
            .map(|(_, a)| *a)
            .ok_or_else(|| format!("{s:?}: use one of {}", AUTH_NAMES.map(|(n, _)| n).join(", ")))
    }
}

impl AuthChoice {
    pub fn as_str(self) -> &'static str {
        AUTH_NAMES.iter().find(|(_, a)| *a == self).map_or("auto", |(n, _)| n)
    }
}

/// `sha256:` and the bytes in hex with colons, upper case, as openssl and browsers show them
/// (for reading out to someone who compares).
pub fn fingerprint_display(f: &[u8; 32]) -> String {
    let pairs: Vec<String> = f.iter().map(|b| format!("{b:02X}")).collect();
    format!("sha256:{}", pairs.join(":"))
}

/// `sha256:` and 64 hex digits.
pub fn fingerprint_text(f: &[u8; 32]) -> String {
    let hex: String = f.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// The account as an accounts.toml table.
fn to_table(a: &Account) -> toml_edit::Table {
    use toml_edit::{InlineTable, Item, value};
    let mut t = toml_edit::Table::new();
    t["host"] = value(&a.host);
    t["port"] = value(i64::from(a.port));
    t["tls"] = value(a.tls.as_str());
    if a.insecure {
        t["insecure"] = value(true);
    }
    t["username"] = value(&a.username);
    match &a.password {
        PasswordSource::Command(c) => t["password_command"] = value(c),
        PasswordSource::File(f) => t["password_file"] = value(f.display().to_string()),
        PasswordSource::Env(v) => t["password_env"] = value(v),
        PasswordSource::TokenCommand(c) => t["token_command"] = value(c),
        PasswordSource::OAuth2(o) => {
            let mut o2 = toml_edit::Table::new();
            o2["provider"] = value(o.provider.as_str());
            o2["client_id"] = value(&o.client_id);
            match &o.client_secret {
                Some(ClientSecret::Command(c)) => o2["client_secret_command"] = value(c),
                Some(ClientSecret::File(f)) => o2["client_secret_file"] = value(f.display().to_string()),
                None => {}
            }
            let keys = [
                ("tenant", &o.tenant),
                ("issuer", &o.issuer),
                ("authorization_url", &o.authorization_url),
                ("token_url", &o.token_url),
                ("device_url", &o.device_url),
            ];
            for (k, v) in keys {
                if let Some(v) = v {
                    o2[k] = value(v);
                }
            }
            if !o.scopes.is_empty() {
                o2["scopes"] = value(o.scopes.iter().collect::<toml_edit::Array>());
            }
            t["oauth2"] = Item::Table(o2);
        }
    }
    if a.auth != AuthChoice::Auto {
        t["auth"] = value(a.auth.as_str());
    }
    if let Some(ca) = &a.ca_file {
        t["ca_file"] = value(ca.display().to_string());
    }
    if let Some(fp) = &a.fingerprint {
        t["tls_fingerprint"] = value(fingerprint_text(fp));
    }
    let mut d = InlineTable::new();
    match &a.deliver {
        Deliver::Maildir(p) => d.insert("maildir", p.display().to_string().into()),
        Deliver::Mbox(p) => d.insert("mbox", p.display().to_string().into()),
        Deliver::Mda(c) => d.insert("mda", c.as_str().into()),
    };
    t["deliver"] = Item::Value(d.into());
    t["keep"] = value(a.keep.to_string());
    if let Some(m) = a.max_size {
        t["max_size"] = value(i64::try_from(m).unwrap_or(i64::MAX));
    }
    if a.oversize != Oversize::Skip {
        t["oversize"] = value("delete");
    }
    t
}

const NEW_FILE_HEADER: &str = "# Pillarbox accounts: one [accounts.NAME] table each.\n\
# `pillarbox account add ADDRESS` writes them; `pillarbox check` tests them.\n\n";

/// Edit the accounts file: the rest of the file (comments, order, other accounts) is kept, the
/// result is validated like any accounts file, then written atomically and readable only by its
/// owner.
fn edit_file(
    path: &Path,
    change: impl FnOnce(&mut toml_edit::DocumentMut) -> Result<(), String>,
) -> Result<(), AccountError> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let field_err = |message: String| AccountError::Edit { path: path.to_owned(), message };
    let (text, header) = match std::fs::read_to_string(path) {
        Ok(t) => (t, ""),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (String::new(), NEW_FILE_HEADER),
        Err(source) => return Err(AccountError::Read { path: path.to_owned(), source }),
    };
    let mut doc: toml_edit::DocumentMut = text.parse().map_err(|e: toml_edit::TomlError| {
        let (line, field) = pillarbox_config::toml_location(&text, e.span().map_or(0, |s| s.start));
        AccountError::Field { path: path.to_owned(), line, field, message: e.message().trim().to_owned() }
    })?;
    change(&mut doc).map_err(field_err)?;
    let new = format!("{header}{doc}");
    parse(&new, path)?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let io = |source| AccountError::Read { path: path.to_owned(), source };
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io)?;
    let tmp = dir.join(format!(".{}.tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("accounts.toml")));
    let mut f =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(io)?;
    f.write_all(new.as_bytes()).and_then(|()| f.sync_all()).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(())
}

/// Add `account` to the accounts file (created if missing).
pub fn add_to_file(path: &Path, account: &Account) -> Result<(), AccountError> {
    edit_file(path, |doc| {
        let accounts = doc
            .entry("accounts")
            .or_insert_with(|| {
                let mut t = toml_edit::Table::new();
                t.set_implicit(true);
                toml_edit::Item::Table(t)
            })
            .as_table_mut()
            .ok_or("`accounts` is not a table")?;
        if accounts.contains_key(&account.name) {
            return Err(format!("an account named {} already exists (choose another with --name)", account.name));
        }
        accounts.insert(&account.name, toml_edit::Item::Table(to_table(account)));
        Ok(())
    })
}

/// Remove the account `name`; false when there is none.
pub fn remove_from_file(path: &Path, name: &str) -> Result<bool, AccountError> {
    let mut removed = false;
    edit_file(path, |doc| {
        removed = doc.get_mut("accounts").and_then(|a| a.as_table_mut()).and_then(|t| t.remove(name)).is_some();
        Ok(())
    })?;
    Ok(removed)
}

/// `~/x` relative to the home directory.
pub fn expand_home(p: &Path) -> PathBuf {
    match (p.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => p.to_owned(),
    }
}

/// Where accounts are read from by default: `$XDG_CONFIG_HOME/pillarbox/accounts.toml`.
pub fn default_path() -> PathBuf {
    pillarbox_os::xdg_dir("XDG_CONFIG_HOME", ".config").join("accounts.toml")
}

/// `sha256:` followed by 64 hex digits (colons allowed between bytes, as tools print them).
/// Also the forms tools print: `SHA256 Fingerprint=F4:7A:...` (openssl), `F4:7A:...`
/// (browsers), upper or lower case, with colons or spaces between bytes.
pub fn parse_fingerprint(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    let lower = s.to_ascii_lowercase();
    let rest = ["sha256 fingerprint=", "sha256fingerprint=", "sha256:", "sha256="]
        .iter()
        .find_map(|p| lower.strip_prefix(p))
        .unwrap_or(&lower);
    let hex: String = rest.chars().filter(|c| *c != ':' && !c.is_whitespace()).collect();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

pub fn load(path: &Path) -> Result<Vec<Account>, AccountError> {
    let text = std::fs::read_to_string(path).map_err(|source| AccountError::Read { path: path.to_owned(), source })?;
    parse(&text, path)
}

/// An account that cannot be used as it is, and why (with the place in the file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub account: String,
    pub error: String,
    /// What to do about it.
    pub fix: &'static str,
}

/// Every account of the file that can be used, and the problems that stop the others (a key
/// missing or wrong in one account: that one; two accounts on one mailbox: both), so that one
/// broken account never stops the others. A file that cannot be read or is not TOML at all is
/// still an error.
pub fn load_all(path: &Path) -> Result<(Vec<Account>, Vec<Problem>), AccountError> {
    let text = std::fs::read_to_string(path).map_err(|source| AccountError::Read { path: path.to_owned(), source })?;
    let (accounts, broken) = parse_accounts(&text, path)?;
    let mut problems: Vec<Problem> = broken
        .into_iter()
        .map(|(account, e)| Problem {
            account,
            error: e.to_string(),
            fix: "correct this account in the accounts file (see accounts.toml(5)); the other accounts are not affected",
        })
        .collect();
    for (a, b, e) in shared_mailboxes(&accounts, &text, path) {
        let error = e.to_string();
        let fix = "give each mailbox one account in the accounts file (remove or change one of them)";
        problems.push(Problem { account: a, error: error.clone(), fix });
        problems.push(Problem { account: b, error, fix });
    }
    Ok((accounts, problems))
}

/// Every account of the file, or the first problem of any of them.
pub fn parse(text: &str, path: &Path) -> Result<Vec<Account>, AccountError> {
    let (out, mut broken) = parse_accounts(text, path)?;
    if !broken.is_empty() {
        return Err(broken.swap_remove(0).1);
    }
    match shared_mailboxes(&out, text, path).into_iter().next() {
        Some((_, _, e)) => Err(e),
        None => Ok(out),
    }
}

/// The accounts that can be used, and each one that cannot (by name) with its error.
type Parsed = (Vec<Account>, Vec<(String, AccountError)>);

fn parse_accounts(text: &str, path: &Path) -> Result<Parsed, AccountError> {
    let located = |e: toml::de::Error| {
        let (line, field) = pillarbox_config::toml_location(text, e.span().map_or(0, |s| s.start));
        AccountError::Field { path: path.to_owned(), line, field, message: e.message().trim().to_owned() }
    };
    // The file as a whole (TOML, and nothing but [accounts.*], [backup] and [antivirus]) ...
    let whole: RawFile = toml::from_str(text).map_err(located)?;
    let antivirus = antivirus_of(whole.antivirus, text, path)?;
    // ... then each account on its own, its errors still located in the file.
    let doc = toml::de::DeTable::parse(text).map_err(located)?;
    let mut out = Vec::new();
    let mut broken = Vec::new();
    let tables = doc.get_ref().iter().filter(|(k, _)| k.get_ref() == "accounts").map(|(_, v)| v.get_ref());
    for table in tables {
        let toml::de::DeValue::Table(accounts) = table else { continue };
        for (name, value) in accounts {
            let name = name.get_ref().to_string();
            let account = RawAccount::deserialize(toml::de::ValueDeserializer::from(value.clone()))
                .map_err(located)
                .and_then(|raw| account_of(text, path, name.clone(), raw))
                .map(|a| Account { antivirus: antivirus.clone(), ..a });
            match account {
                Ok(a) => out.push(a),
                Err(e) => broken.push((name, e)),
            }
        }
    }
    // In the order of their names, as `account list` and `fetch` show them.
    out.sort_by(|a: &Account, b| a.name.cmp(&b.name));
    Ok((out, broken))
}

fn account_of(text: &str, path: &Path, name: String, a: RawAccount) -> Result<Account, AccountError> {
    let err = |key: &str, message: String| {
        let line = pillarbox_config::key_line(text, &format!("accounts.{name}"), key);
        AccountError::Field { path: path.to_owned(), line, field: format!("accounts.{name}.{key}"), message }
    };
    let tls = a.tls.unwrap_or(TlsMode::Implicit);
    if tls == TlsMode::None && !a.insecure {
        return Err(err("tls", "\"none\" sends the password and mail in cleartext; it needs insecure = true".into()));
    }
    let oauth2 = match a.oauth2 {
        None => None,
        Some(o) => Some(oauth2_of(text, path, &name, o)?),
    };
    let password = match (a.password_command, a.password_file, a.password_env, a.token_command, oauth2) {
        (Some(c), None, None, None, None) => PasswordSource::Command(c),
        (None, Some(f), None, None, None) => PasswordSource::File(expand_home(&f)),
        (None, None, Some(v), None, None) => PasswordSource::Env(v),
        (None, None, None, Some(c), None) => PasswordSource::TokenCommand(c),
        (None, None, None, None, Some(o)) => PasswordSource::OAuth2(Box::new(o)),
        (None, None, None, None, None) => {
            return Err(err(
                "password_command",
                "give one of password_command, password_file, password_env, token_command or an [oauth2] table".into(),
            ));
        }
        _ => {
            return Err(err(
                "password_command",
                "give only one of password_command, password_file, password_env, token_command, [oauth2]".into(),
            ));
        }
    };
    let auth = a.auth.unwrap_or(AuthChoice::Auto);
    if password.is_token() && !matches!(auth, AuthChoice::Auto | AuthChoice::OAuthBearer | AuthChoice::XOAuth2) {
        return Err(err(
            "auth",
            format!(
                "{} gives an OAuth2 token, which logs in with \"oauthbearer\" or \"xoauth2\", not {:?}",
                if matches!(password, PasswordSource::TokenCommand(_)) {
                    "token_command"
                } else {
                    "the [oauth2] table"
                },
                auth.as_str()
            ),
        ));
    }
    let deliver = match (a.deliver.maildir, a.deliver.mbox, a.deliver.mda) {
        (Some(m), None, None) => Deliver::Maildir(expand_home(&m)),
        (None, Some(m), None) => Deliver::Mbox(expand_home(&m)),
        (None, None, Some(c)) => Deliver::Mda(c),
        _ => {
            return Err(err(
                "deliver",
                "give exactly one of { maildir = PATH }, { mbox = PATH }, { mda = COMMAND }".into(),
            ));
        }
    };
    let keep = match a.keep.as_deref() {
        None => Keep::Delete,
        Some(s) => s.parse().map_err(|m| err("keep", m))?,
    };
    let fingerprint = match a.tls_fingerprint {
        None => None,
        Some(f) => Some(
            parse_fingerprint(&f).ok_or_else(|| err("tls_fingerprint", "expected sha256: and 64 hex digits".into()))?,
        ),
    };
    let sieve = match a.sieve {
        None => None,
        Some(file) => {
            // Relative to the accounts file, like a script beside it.
            let file = expand_home(&file);
            let file = if file.is_relative() { path.parent().unwrap_or(Path::new(".")).join(file) } else { file };
            if matches!(deliver, Deliver::Mda(_)) {
                return Err(err(
                    "sieve",
                    "Sieve rules file into the folders of a Maildir or an mbox; this account delivers to a program"
                        .into(),
                ));
            }
            let text = std::fs::read_to_string(&file).map_err(|e| err("sieve", format!("{}: {e}", file.display())))?;
            let script = pillarbox_sieve::Script::compile(&text)
                .map_err(|e| err("sieve", format!("{}, line {}: {}", file.display(), e.line, e.message)))?;
            Some(Sieve { path: file, script: std::sync::Arc::new(script) })
        }
    };
    let encrypt = match a.encrypt {
        None => None,
        Some(e) => {
            if !matches!(deliver, Deliver::Maildir(_)) {
                return Err(err(
                    "encrypt",
                    "an encrypted store is a Maildir (each message a file of its own, encrypted); \
                     this account delivers to an mbox or a program"
                        .into(),
                ));
            }
            Some(e.recipient.trim().parse::<age::x25519::Recipient>().map_err(|why| {
                err("encrypt", format!("{:?} is not an age public key (age1...): {why}", e.recipient))
            })?)
        }
    };
    Ok(Account {
        sieve,
        antivirus: None,
        encrypt,
        port: a.port.unwrap_or(if tls == TlsMode::Implicit { 995 } else { 110 }),
        name,
        host: a.host,
        tls,
        insecure: a.insecure,
        username: a.username,
        password,
        auth,
        ca_file: a.ca_file.map(|p| expand_home(&p)),
        fingerprint,
        deliver,
        keep,
        max_size: a.max_size.map(|s| s.0),
        oversize: a.oversize.unwrap_or(Oversize::Skip),
    })
}

/// `[accounts.NAME.oauth2]` checked: a mistake names its line and key.
fn oauth2_of(text: &str, path: &Path, name: &str, o: RawOAuth2) -> Result<OAuth2, AccountError> {
    let table = format!("accounts.{name}.oauth2");
    let err = |key: &str, message: String| AccountError::Field {
        path: path.to_owned(),
        line: pillarbox_config::key_line(text, &table, key),
        field: format!("{table}.{key}"),
        message,
    };
    if o.client_secret.is_some() {
        return Err(err(
            "client_secret",
            "a client secret is not written in this file: use client_secret_command or client_secret_file".into(),
        ));
    }
    if o.client_id.trim().is_empty() {
        return Err(err(
            "client_id",
            "the OAuth2 client id you registered with the provider (see accounts.toml(5), OAUTH2)".into(),
        ));
    }
    let client_secret = match (o.client_secret_command, o.client_secret_file) {
        (None, None) => None,
        (Some(c), None) => Some(ClientSecret::Command(c)),
        (None, Some(f)) => Some(ClientSecret::File(expand_home(&f))),
        (Some(_), Some(_)) => {
            return Err(err("client_secret_file", "give client_secret_command or client_secret_file, not both".into()));
        }
    };
    let some = |s: Option<String>| s.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
    let oauth2 = OAuth2 {
        provider: o.provider,
        client_id: o.client_id.trim().to_owned(),
        client_secret,
        tenant: some(o.tenant),
        scopes: o
            .scopes
            .unwrap_or_default()
            .into_iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect(),
        issuer: some(o.issuer),
        authorization_url: some(o.authorization_url),
        token_url: some(o.token_url),
        device_url: some(o.device_url),
    };
    if oauth2.tenant.is_some() && oauth2.provider != OAuth2Provider::Microsoft {
        return Err(err("tenant", "only Microsoft has tenants".into()));
    }
    if oauth2.provider == OAuth2Provider::Custom
        && oauth2.issuer.is_none()
        && (oauth2.token_url.is_none() || (oauth2.authorization_url.is_none() && oauth2.device_url.is_none()))
    {
        return Err(err(
            "issuer",
            "a custom provider needs its issuer (to discover its endpoints) or token_url with authorization_url or \
             device_url"
                .into(),
        ));
    }
    for (key, url) in [
        ("issuer", &oauth2.issuer),
        ("authorization_url", &oauth2.authorization_url),
        ("token_url", &oauth2.token_url),
        ("device_url", &oauth2.device_url),
    ] {
        if let Some(u) = url
            && !(u.starts_with("https://")
                || u.starts_with("http://127.")
                || u.starts_with("http://[::1]")
                || u.starts_with("http://localhost"))
        {
            return Err(err(key, format!("{u} must be an https URL (plain http only to this machine)")));
        }
    }
    Ok(oauth2)
}

/// Pairs of accounts on one mailbox, with the error naming them. The journal (what was
/// downloaded) belongs to the mailbox, not to the account's name: two accounts on one mailbox
/// would each think the other's downloads were their own.
fn shared_mailboxes(out: &[Account], text: &str, path: &Path) -> Vec<(String, String, AccountError)> {
    let mut pairs = Vec::new();
    for (i, a) in out.iter().enumerate() {
        if let Some(b) = out[..i]
            .iter()
            .find(|b| b.host.eq_ignore_ascii_case(&a.host) && b.port == a.port && b.username == a.username)
        {
            let e = AccountError::Field {
                path: path.to_owned(),
                line: pillarbox_config::key_line(text, &format!("accounts.{}", a.name), "host"),
                field: format!("accounts.{}.host", a.name),
                message: format!(
                    "accounts {} and {} fetch the same mailbox ({}@{}:{}); keep one of them",
                    b.name, a.name, a.username, a.host, a.port
                ),
            };
            pairs.push((b.name.clone(), a.name.clone(), e));
        }
    }
    pairs
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_broken_account_leaves_the_others() {
        let text = "[accounts.good]\nhost = \"h\"\nusername = \"u\"\npassword_env = \"P\"\n\
                    deliver = { maildir = \"/m\" }\n\n\
                    [accounts.nohost]\nusername = \"u\"\npassword_env = \"P\"\ndeliver = { maildir = \"/n\" }\n\n\
                    [accounts.badport]\nhost = \"h2\"\nport = \"pop\"\nusername = \"u\"\npassword_env = \"P\"\n\
                    deliver = { maildir = \"/b\" }\n";
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("accounts.toml");
        std::fs::write(&path, text).expect("write");
        let (ok, problems) = super::load_all(&path).expect("the file as a whole is fine");
        assert_eq!(ok.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(), ["good"]);
        let said = |name: &str| problems.iter().find(|p| p.account == name).map(|p| p.error.clone()).expect(name);
        assert!(said("nohost").contains("line 7") && said("nohost").contains("missing field `host`"), "{problems:?}");
        assert!(
            said("badport").contains("line 14") && said("badport").contains("accounts.badport.port"),
            "{problems:?}"
        );
        assert!(super::load(&path).is_err(), "load wants every account");
        // Not TOML at all: the whole file is an error.
        std::fs::write(&path, "[accounts.x\n").expect("write");
        assert!(super::load_all(&path).is_err());
    }

    #[test]
    fn fingerprints_in_every_form_tools_print() {
        let bytes: Vec<u8> = (0u8..32).map(|b| b.wrapping_mul(7)).collect();
        let want: [u8; 32] = bytes.clone().try_into().expect("32");
        let lower: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let colons = fingerprint_display(&want);
        assert!(colons.starts_with("sha256:00:07:0E:"), "{colons}");
        for form in [
            format!("sha256:{lower}"),
            lower.clone(),
            colons.clone(),
            colons.trim_start_matches("sha256:").to_owned(),
            format!("SHA256 Fingerprint={}", colons.trim_start_matches("sha256:")),
            format!("sha256 Fingerprint={}", colons.trim_start_matches("sha256:").to_lowercase()),
            colons.trim_start_matches("sha256:").replace(':', " "),
        ] {
            assert_eq!(parse_fingerprint(&form), Some(want), "{form}");
        }
        assert_eq!(parse_fingerprint(&fingerprint_text(&want)), Some(want));
        assert_eq!(parse_fingerprint("sha256:abcd"), None);
        assert_eq!(parse_fingerprint(&format!("md5:{lower}")), None);
    }

    use super::*;

    #[test]
    fn backups_keep_the_accounts_file_without_password_commands() {
        let text = "# mine\n[accounts.work]\nhost = \"pop.example.org\"\nusername = \"ann\"\npassword_command = \"echo hunter2\"\ndeliver = { maildir = \"~/Mail\" }\n\n[accounts.home]\nhost = \"pop.example.net\"\nusername = \"ann\"\npassword_file = \"~/.pw\"\ndeliver = { maildir = \"~/Home\" }\n";
        let kept = without_secrets(text);
        assert!(!kept.contains("hunter2"), "{kept}");
        assert!(kept.contains("# mine") && kept.contains("password_file = \"~/.pw\""), "{kept}");
        assert!(kept.contains("password_command was removed"), "{kept}");
        assert!(parse(&kept, Path::new("a.toml")).is_err(), "the restored file says what to set again");
    }

    const GOOD: &str = r#"
[accounts.work]
host = "pop.example.com"
username = "me@example.com"
password_command = "pass show mail/work"
deliver = { maildir = "/tmp/Mail/work" }
keep = "7d"
max_size = "20MB"

[accounts.home]
host = "127.0.0.1"
port = 1110
tls = "starttls"
username = "me"
password_env = "HOME_PW"
deliver = { mbox = "/tmp/home.mbox" }
tls_fingerprint = "sha256:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
"#;

    #[test]
    fn parses_and_defaults() {
        let a = parse(GOOD, Path::new("accounts.toml")).expect("valid");
        let home = &a[0];
        assert_eq!((home.name.as_str(), home.port, home.tls), ("home", 1110, TlsMode::Starttls));
        assert_eq!(home.fingerprint.map(|f| f[1]), Some(0x11));
        let work = &a[1];
        assert_eq!(
            (work.port, work.tls, work.keep, work.max_size),
            (995, TlsMode::Implicit, Keep::Days(7), Some(20_000_000))
        );
        assert!(!format!("{:?}", work.password).contains("pass show"), "the command may contain secrets");
    }

    #[test]
    fn antivirus_applies_to_every_account_and_its_mistakes_name_their_line() {
        let a = parse(GOOD, Path::new("a.toml")).expect("valid");
        assert!(a.iter().all(|a| a.antivirus.is_none()), "off unless named");
        let on = format!("{GOOD}\n[antivirus]\nclamd = \"127.0.0.1:3310\"\n");
        let a = parse(&on, Path::new("a.toml")).expect("valid");
        let want = Antivirus { clamd: pillarbox_clamav::Clamd::Tcp("127.0.0.1:3310".into()), accept_unscanned: false };
        assert!(a.iter().all(|a| a.antivirus.as_ref() == Some(&want)));
        let accept = format!("{on}on_unavailable = \"accept\"\n");
        assert!(
            parse(&accept, Path::new("a.toml")).expect("valid")[0]
                .antivirus
                .as_ref()
                .is_some_and(|v| v.accept_unscanned)
        );
        let bad = format!("{on}on_unavailable = \"pass\"\n");
        let e = parse(&bad, Path::new("a.toml")).expect_err("bad").to_string();
        let line = bad.lines().count();
        assert!(e.starts_with(&format!("a.toml, line {line}, field `antivirus.on_unavailable`")), "{e}");
        let bad = on.replace("127.0.0.1:3310", "clamd.ctl");
        let e = parse(&bad, Path::new("a.toml")).expect_err("relative").to_string();
        assert!(e.contains("field `antivirus.clamd`"), "{e}");
    }

    #[test]
    fn errors_name_line_and_field() {
        let bad = GOOD.replace("keep = \"7d\"", "keep = \"sometimes\"");
        let e = parse(&bad, Path::new("a.toml")).expect_err("bad keep").to_string();
        assert!(e.starts_with("a.toml, line 7, field `accounts.work.keep`"), "{e}");
        let bad = GOOD.replace("tls = \"starttls\"", "tls = \"none\"");
        let e = parse(&bad, Path::new("a.toml")).expect_err("insecure").to_string();
        assert!(e.contains("field `accounts.home.tls`") && e.contains("insecure = true"), "{e}");
        let twice = format!(
            "{GOOD}\n[accounts.again]\nhost = \"POP.example.com\"\nusername = \"me@example.com\"\npassword_env = \"X\"\ndeliver = {{ mbox = \"/tmp/x\" }}\n"
        );
        let e = parse(&twice, Path::new("a.toml")).expect_err("same mailbox").to_string();
        assert!(
            e.contains("accounts again and work fetch the same mailbox") || e.contains("accounts work and again"),
            "{e}"
        );
        let bad = GOOD.replace("port = 1110", "prot = 1110");
        let e = parse(&bad, Path::new("a.toml")).expect_err("unknown").to_string();
        assert!(e.contains("line 12, field `accounts.home.prot`") && e.contains("unknown field"), "{e}");
    }
}
