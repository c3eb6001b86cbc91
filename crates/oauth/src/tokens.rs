//! The client's tokens, one set per account: in the desktop's keyring (the Secret Service, as
//! GNOME Keyring and KeePassXC offer it) when one answers, otherwise in a file under
//! `$XDG_STATE_HOME/pillarbox/oauth2`, readable by its owner only (the folder 0700, the file
//! 0600) and replaced atomically (a new file synced, renamed over the old, the folder synced), so
//! that a crash while a rotated refresh token is written leaves either the old token set or the
//! new one, never none. (A keyring item's secret is replaced in one call.) A refresh happens
//! under an exclusive lock on the account's lock file, and the tokens are read again once the
//! lock is held: two fetches of one account never both spend the same refresh token (a provider
//! that rotates them would revoke the grant for that).

use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// An account's tokens as kept.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenSet {
    pub access_token: String,
    /// Unix time the access token expires (`None`: the provider did not say).
    pub expires_at: Option<u64>,
    pub refresh_token: Option<String>,
    /// The scopes granted, as the provider said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Whose tokens: the token endpoint and client they came from (a changed `[oauth2]` table
    /// needs a new authorization).
    pub token_url: String,
    pub client_id: String,
    /// Unix time they were obtained.
    pub obtained_at: u64,
}

impl std::fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSet")
            .field("access_token", &"***")
            .field("expires_at", &self.expires_at)
            .field("refresh_token", &self.refresh_token.as_ref().map(|_| "***"))
            .field("scope", &self.scope)
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .finish()
    }
}

impl TokenSet {
    /// Whether the access token is good for at least `margin` seconds more at `now`.
    pub fn fresh(&self, now: u64, margin: u64) -> bool {
        self.expires_at.is_none_or(|e| e > now + margin)
    }
}

/// Where the tokens are kept: the keyring, when one answers, and the folder of the token files
/// (and of the lock files, in every case).
#[derive(Clone)]
pub struct TokenStore {
    dir: PathBuf,
    keyring: Option<keyring::Keyring>,
}

impl std::fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenStore").field("dir", &self.dir).field("keyring", &self.keyring.is_some()).finish()
    }
}

impl Default for TokenStore {
    /// The keyring if one answers (`PILLARBOX_KEYRING=off` says not to ask), and
    /// `$XDG_STATE_HOME/pillarbox/oauth2`.
    fn default() -> Self {
        let dir = pillarbox_os::xdg_dir("XDG_STATE_HOME", ".local/state").join("oauth2");
        let wanted = std::env::var("PILLARBOX_KEYRING").map_or(true, |v| !matches!(v.as_str(), "off" | "0" | "no"));
        Self { dir, keyring: if wanted { keyring::Keyring::open() } else { None } }
    }
}

/// The Secret Service (freedesktop.org) keyring, through the keyring-core crates.
mod keyring {
    use std::sync::Arc;

    use keyring_core::Error;
    use keyring_core::api::CredentialStoreApi;

    /// Items are the service's, one per account.
    const SERVICE: &str = "pillarbox-oauth2";

    #[derive(Clone)]
    pub struct Keyring {
        #[cfg(target_os = "linux")]
        store: Arc<zbus_secret_service_keyring_store::Store>,
    }

    impl Keyring {
        /// The keyring, if a Secret Service answers on the session bus and lets us read.
        #[cfg(target_os = "linux")]
        pub fn open() -> Option<Self> {
            // Without a session bus there is nothing to ask (and nothing to wait for).
            if std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_none()
                && !std::env::var_os("XDG_RUNTIME_DIR").is_some_and(|d| std::path::Path::new(&d).join("bus").exists())
            {
                return None;
            }
            let store = zbus_secret_service_keyring_store::Store::new().ok()?;
            let k = Self { store };
            match k.entry("(probe)").and_then(|e| e.get_password()) {
                Ok(_) | Err(Error::NoEntry) => Some(k),
                Err(_) => None,
            }
        }

        #[cfg(not(target_os = "linux"))]
        pub fn open() -> Option<Self> {
            None
        }

        #[cfg(target_os = "linux")]
        fn entry(&self, account: &str) -> keyring_core::Result<keyring_core::Entry> {
            let label = format!("Pillarbox OAuth2 tokens of account {account}");
            let mods = std::collections::HashMap::from([("label", label.as_str())]);
            self.store.build(SERVICE, account, Some(&mods))
        }

        #[cfg(not(target_os = "linux"))]
        fn entry(&self, _account: &str) -> keyring_core::Result<keyring_core::Entry> {
            Err(Error::NoEntry)
        }

        pub fn get(&self, account: &str) -> Result<Option<String>, String> {
            match self.entry(account).and_then(|e| e.get_password()) {
                Ok(s) => Ok(Some(s)),
                Err(Error::NoEntry) => Ok(None),
                Err(e) => Err(format!("the keyring: {e}")),
            }
        }

        pub fn set(&self, account: &str, secret: &str) -> Result<(), String> {
            self.entry(account).and_then(|e| e.set_password(secret)).map_err(|e| format!("the keyring: {e}"))
        }

        pub fn delete(&self, account: &str) -> Result<(), String> {
            match self.entry(account).and_then(|e| e.delete_credential()) {
                Ok(()) | Err(Error::NoEntry) => Ok(()),
                Err(e) => Err(format!("the keyring: {e}")),
            }
        }
    }
}

/// An account name as a file name: letters, digits, `-`, `_` and `.` kept, the rest as `%XX`.
fn file_stem(account: &str) -> String {
    let mut s = String::new();
    for b in account.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || (b == b'.' && !s.is_empty()) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

impl TokenStore {
    /// Token files in `dir`, no keyring.
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into(), keyring: None }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The token file of `account` (used when there is no keyring).
    pub fn path(&self, account: &str) -> PathBuf {
        self.dir.join(format!("{}.json", file_stem(account)))
    }

    /// Where `account`'s tokens are kept, for the user.
    pub fn location(&self, account: &str) -> String {
        match &self.keyring {
            Some(_) => format!("the desktop's keyring (item \"Pillarbox OAuth2 tokens of account {account}\")"),
            None => self.path(account).display().to_string(),
        }
    }

    fn ensure_dir(&self) -> std::io::Result<()> {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&self.dir)?;
        // A folder made by someone else's umask: readable by the owner only all the same.
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
    }

    /// The account's tokens, if it has been authorized (from the keyring, or the file: tokens
    /// kept while no keyring ran are still found).
    pub fn load(&self, account: &str) -> Result<Option<TokenSet>, String> {
        if let Some(k) = &self.keyring
            && let Some(json) = k.get(account)?
        {
            return serde_json::from_str(&json).map(Some).map_err(|e| {
                format!("the keyring's tokens of {account} are damaged ({e}); run `pillarbox account authorize {account}` again")
            });
        }
        let path = self.path(account);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                format!("{} is damaged ({e}); run `pillarbox account authorize {account}` again", path.display())
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// Replace the account's tokens atomically: in the keyring (then the file, if one was left
    /// from before, goes), or, without one or when it fails, in the file.
    pub fn save(&self, account: &str, tokens: &TokenSet) -> Result<(), String> {
        if let Some(k) = &self.keyring {
            let json = serde_json::to_string(tokens).map_err(|e| e.to_string())?;
            match k.set(account, &json) {
                Ok(()) => {
                    let _ = std::fs::remove_file(self.path(account));
                    return Ok(());
                }
                Err(e) => tracing::warn!(error = e, "cannot keep the tokens in the keyring; keeping them in a file"),
            }
        }
        self.save_file(account, tokens)
    }

    fn save_file(&self, account: &str, tokens: &TokenSet) -> Result<(), String> {
        let path = self.path(account);
        let fail = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
        self.ensure_dir().map_err(fail)?;
        let json = serde_json::to_vec_pretty(tokens).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        pillarbox_os::write_private(&path, &json).map_err(fail)
    }

    /// Forget the account's tokens (`account remove`, or a new authorization that failed).
    pub fn remove(&self, account: &str) -> Result<(), String> {
        if let Some(k) = &self.keyring {
            k.delete(account)?;
        }
        for p in [self.path(account), self.dir.join(format!("{}.lock", file_stem(account)))] {
            match std::fs::remove_file(&p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(format!("{}: {e}", p.display())),
                _ => {}
            }
        }
        Ok(())
    }

    /// Hold the account's refresh lock (blocking until another process lets go of it).
    pub async fn lock(&self, account: &str) -> Result<File, String> {
        let path = self.dir.join(format!("{}.lock", file_stem(account)));
        self.ensure_dir().map_err(|e| format!("cannot make {}: {e}", self.dir.display()))?;
        tokio::task::spawn_blocking(move || {
            let f = pillarbox_os::open_lock_file(&path).map_err(|e| e.to_string())?;
            rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)
                .map_err(|e| format!("cannot lock {}: {e}", path.display()))?;
            Ok(f)
        })
        .await
        .map_err(|e| format!("the lock thread failed: {e}"))?
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    fn tokens(access: &str) -> TokenSet {
        TokenSet {
            access_token: access.into(),
            expires_at: Some(1_000),
            refresh_token: Some("refresh-secret".into()),
            scope: None,
            token_url: "https://id.example.com/token".into(),
            client_id: "c".into(),
            obtained_at: 900,
        }
    }

    #[test]
    fn saved_tokens_are_private_replaced_whole_and_never_shown() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = TokenStore::at(dir.path().join("oauth2"));
        assert_eq!(store.load("me@example.com"), Ok(None));
        store.save("me@example.com", &tokens("a1")).expect("save");
        store.save("me@example.com", &tokens("a2")).expect("save again");
        assert_eq!(store.load("me@example.com").expect("load").map(|t| t.access_token), Some("a2".into()));
        let meta = std::fs::metadata(store.path("me@example.com")).expect("file");
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(store.dir()).expect("dir").mode() & 0o777, 0o700);
        let names: Vec<_> =
            std::fs::read_dir(store.dir()).expect("dir").map(|e| e.expect("entry").file_name()).collect();
        assert_eq!(names.len(), 1, "no temporary file left: {names:?}");
        let shown = format!("{:?}", tokens("a-secret"));
        assert!(!shown.contains("a-secret") && !shown.contains("refresh-secret"), "{shown}");
        assert!(tokens("x").fresh(900, 60) && !tokens("x").fresh(950, 60));
        store.remove("me@example.com").expect("remove");
        assert_eq!(store.load("me@example.com"), Ok(None));
    }

    #[test]
    fn account_names_make_safe_file_names() {
        assert_eq!(file_stem("work-mail_2"), "work-mail_2");
        assert_eq!(file_stem("../x/y"), "%2E.%2Fx%2Fy");
        assert_eq!(file_stem("a b"), "a%20b");
    }
}
