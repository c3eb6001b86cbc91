//! The data folder: where the embedded default keeps its configuration, users, certificate and
//! mail. Every command prepares it on first use, so `pillarbox user add` works before the first
//! `pillarbox serve`.

use std::fs;
use std::path::{Path, PathBuf};

use crate::config::{CONFIG_FILE, Config, ConfigError, DEFAULT_CONFIG};
use crate::tls;

/// What `prepare` had to create.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Prepared {
    pub created_config: bool,
    pub created_certificate: bool,
    pub created_users: bool,
}

impl Prepared {
    pub fn created_anything(&self) -> bool {
        self.created_config || self.created_certificate || self.created_users
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("preparing data folder {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Users(#[from] pillarbox_auth::AuthError),
}

/// Load the configuration of a data folder, writing the default one first if there is none.
pub fn load_or_create(data_dir: &Path) -> Result<(Config, Prepared), DataDirError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| DataDirError::Io { path, source }
    };
    fs::create_dir_all(data_dir).map_err(io(data_dir))?;
    let path = data_dir.join(CONFIG_FILE);
    let mut prepared = Prepared::default();
    if !path.exists() {
        fs::write(&path, DEFAULT_CONFIG).map_err(io(&path))?;
        prepared.created_config = true;
    }
    let config = Config::load(&path)?;
    let more = prepare(&config, true)?;
    prepared.created_certificate = more.created_certificate;
    prepared.created_users = more.created_users;
    Ok((config, prepared))
}

/// Create what a configuration names but is missing: the user file, the maildir root, and (only
/// when `self_signed` is allowed) a self-signed certificate.
pub fn prepare(config: &Config, self_signed: bool) -> Result<Prepared, DataDirError> {
    let mut prepared = Prepared::default();
    // In cluster mode users and mail are the database's: nothing of them on the node.
    let local = config.database.is_none();
    if local {
        fs::create_dir_all(&config.maildir_root)
            .map_err(|source| DataDirError::Io { path: config.maildir_root.clone(), source })?;
    }
    if local && !config.users_file.exists() {
        pillarbox_auth::UserFile::new(&config.users_file).create_if_missing()?;
        prepared.created_users = true;
    }
    if let Some(t) = &config.tls
        && self_signed
        && !t.cert.exists()
        && !t.key.exists()
    {
        tls::generate_self_signed(&t.cert, &t.key)?;
        prepared.created_certificate = true;
    }
    Ok(prepared)
}
