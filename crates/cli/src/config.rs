//! Configuration: `voronka.toml` merged with `VORONKA_*` environment variables, and the
//! secret key that encrypts channel credentials.

use anyhow::{bail, Context};
use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use voronka_core::crypto::SecretKey;

/// The configuration file read when `--config` is not given (if it exists).
pub const DEFAULT_CONFIG_FILE: &str = "voronka.toml";
/// The database used when none is configured.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://./voronka-data/voronka.db";
/// Where the key file lives when the database is not a local SQLite file.
pub const DEFAULT_DATA_DIR: &str = "./voronka-data";
/// Name of the generated key file.
pub const KEY_FILE: &str = "secret.key";

/// Every configuration key; each can be set in the file or as `VORONKA_<KEY>`.
pub const KEYS: [&str; 10] = [
    "listen",
    "database_url",
    "public_url",
    "secret_key",
    "log_format",
    "log_level",
    "telegram_api_url",
    "telegram_poll_timeout_secs",
    "outbox_lease_secs",
    "outgoing_allow",
];

/// Keys whose values are numbers.
const NUMERIC_KEYS: [&str; 2] = ["telegram_poll_timeout_secs", "outbox_lease_secs"];

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The merged configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP server listens on.
    pub listen: SocketAddr,
    /// `sqlite://path/to/file.db` or `postgres://…`.
    pub database_url: String,
    /// The URL users reach the server at (behind a proxy), for logs and links.
    pub public_url: Option<String>,
    /// Base64 key that encrypts channel credentials; when absent the key file is used.
    pub secret_key: Option<String>,
    /// `text` or `json`.
    pub log_format: LogFormat,
    /// A tracing filter (`info`, `voronka=debug,info`); `RUST_LOG` overrides it.
    pub log_level: String,
    /// Base URL of the Telegram Bot API (change only for a local Bot API server or
    /// Voronka's fake).
    pub telegram_api_url: String,
    /// How long one `getUpdates` long poll waits (polling mode).
    pub telegram_poll_timeout_secs: u64,
    /// How long a message being sent stays with its worker before it is retried by
    /// another (after a crash).
    pub outbox_lease_secs: u64,
    /// Addresses flow HTTP steps may call although they are loopback or private
    /// (`127.0.0.1, 10.0.0.0/8, [::1]:8080`); everything else private is refused.
    pub outgoing_allow: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            database_url: DEFAULT_DATABASE_URL.to_string(),
            public_url: None,
            secret_key: None,
            log_format: LogFormat::Text,
            log_level: "info".to_string(),
            telegram_api_url: "https://api.telegram.org".to_string(),
            telegram_poll_timeout_secs: 25,
            outbox_lease_secs: 30,
            outgoing_allow: String::new(),
        }
    }
}

impl Config {
    /// Loads defaults, then the file (`explicit` or `./voronka.toml` if present), then the
    /// `VORONKA_*` variables among `env`.
    pub fn load(
        explicit: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> anyhow::Result<Config> {
        let file = match explicit {
            Some(p) if !p.exists() => bail!("configuration file {} does not exist", p.display()),
            Some(p) => Some(p.to_path_buf()),
            None => {
                let p = PathBuf::from(DEFAULT_CONFIG_FILE);
                p.exists().then_some(p)
            }
        };
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(f) = &file {
            figment = figment.merge(Toml::file_exact(f));
        }
        // Only the known keys: other VORONKA_* variables (VORONKA_PASSWORD…) are not
        // configuration.
        // Variables are text; numeric keys are parsed here so `VORONKA_OUTBOX_LEASE_SECS=2`
        // works (a value that is no number stays text and is refused by name below).
        let vars: BTreeMap<String, serde_json::Value> = env
            .into_iter()
            .filter_map(|(k, v)| {
                let key = k.strip_prefix("VORONKA_")?.to_ascii_lowercase();
                if !KEYS.contains(&key.as_str()) {
                    return None;
                }
                let value = match v.trim().parse::<u64>() {
                    Ok(n) if NUMERIC_KEYS.contains(&key.as_str()) => serde_json::Value::from(n),
                    _ => serde_json::Value::String(v),
                };
                Some((key, value))
            })
            .collect();
        figment = figment.merge(Serialized::globals(vars));
        figment.extract().map_err(|e| {
            let mut msg = String::from("invalid configuration: ");
            for (i, err) in e.into_iter().enumerate() {
                if i > 0 {
                    msg.push_str("; ");
                }
                msg.push_str(&describe(&err));
            }
            anyhow::anyhow!(msg)
        })
    }

    /// The messaging runtime's settings.
    pub fn messaging(&self) -> anyhow::Result<voronka_engine::messaging::MessagingConfig> {
        let api = url::Url::parse(&self.telegram_api_url)
            .ok()
            .filter(|u| u.scheme() == "http" || u.scheme() == "https")
            .with_context(|| {
                format!(
                    "invalid configuration: `telegram_api_url` {} is not an http(s) URL",
                    self.telegram_api_url
                )
            })?;
        if let Some(p) = &self.public_url {
            url::Url::parse(p)
                .ok()
                .filter(|u| u.scheme() == "http" || u.scheme() == "https")
                .with_context(|| {
                    format!("invalid configuration: `public_url` {p} is not an http(s) URL")
                })?;
        }
        if self.outbox_lease_secs == 0 || self.telegram_poll_timeout_secs > 50 {
            anyhow::bail!("invalid configuration: `outbox_lease_secs` must be at least 1 and `telegram_poll_timeout_secs` at most 50");
        }
        Ok(voronka_engine::messaging::MessagingConfig {
            telegram_api_url: api.as_str().trim_end_matches('/').to_string(),
            public_url: self.public_url.clone(),
            poll_timeout: std::time::Duration::from_secs(self.telegram_poll_timeout_secs),
            outbox_lease: std::time::Duration::from_secs(self.outbox_lease_secs),
            ..Default::default()
        })
    }

    /// The flow runtime's settings.
    pub fn flows(&self) -> anyhow::Result<voronka_engine::flows::FlowsConfig> {
        let allow = voronka_engine::outgoing::OutgoingPolicy::parse_allow(&self.outgoing_allow)
            .map_err(|e| anyhow::anyhow!("invalid configuration: `outgoing_allow`: {e}"))?;
        let mut config = voronka_engine::flows::FlowsConfig::default();
        config.outgoing.allow = allow;
        Ok(config)
    }

    /// True when the database is PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        self.database_url.starts_with("postgres://")
            || self.database_url.starts_with("postgresql://")
    }

    /// The SQLite database file, when the database is SQLite.
    pub fn sqlite_path(&self) -> Option<PathBuf> {
        if self.is_postgres() {
            return None;
        }
        let url = &self.database_url;
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .unwrap_or(url);
        Some(PathBuf::from(path))
    }

    /// Where the key file is kept: beside the SQLite database, or in `./voronka-data`.
    pub fn key_file(&self) -> PathBuf {
        let dir = self
            .sqlite_path()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or_else(|| match self.sqlite_path() {
                Some(_) => PathBuf::from("."),
                None => PathBuf::from(DEFAULT_DATA_DIR),
            });
        dir.join(KEY_FILE)
    }

    /// The credentials key: `secret_key` if set, else the key file, created on first use.
    pub fn secret(&self) -> anyhow::Result<SecretKey> {
        match &self.secret_key {
            Some(text) => SecretKey::from_base64(text).context("invalid configuration: secret_key"),
            None => load_or_create_key(&self.key_file()),
        }
    }
}

/// Names the key and where the bad value came from (the file, or the variable).
fn describe(err: &figment::Error) -> String {
    let key = err.path.join(".");
    let mut s = if key.is_empty() {
        err.kind.to_string()
    } else {
        format!("`{key}`: {}", err.kind)
    };
    match err.metadata.as_ref().and_then(|m| m.source.as_ref()) {
        Some(figment::Source::File(path)) => s.push_str(&format!(" (in {})", path.display())),
        // Defaults are always valid, so a bad value from code came from the environment.
        Some(figment::Source::Code(_)) if !key.is_empty() => s.push_str(&format!(
            " (in the environment variable VORONKA_{})",
            key.to_ascii_uppercase()
        )),
        _ => {}
    }
    s
}

/// Writes a file readable only by its owner (mode 0600 on Unix), complete or not at all:
/// it is written under a temporary name and then linked into place, which fails with
/// `AlreadyExists` if the file exists (another process got there first).
pub fn write_private_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let written = (|| -> std::io::Result<()> {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()
    })();
    let linked = written.and_then(|()| std::fs::hard_link(&tmp, path));
    let _ = std::fs::remove_file(&tmp);
    linked
}

/// Reads the key file, or generates a key and writes it with mode 0600. The file appears
/// complete or not at all: it is written under a temporary name and then linked into
/// place, which fails if another process got there first (whose key then wins).
pub fn load_or_create_key(path: &Path) -> anyhow::Result<SecretKey> {
    if path.exists() {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the key file {}", path.display()))?;
        return SecretKey::from_base64(&text)
            .with_context(|| format!("the key file {} is not a valid key", path.display()));
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let key = SecretKey::generate();
    let linked = write_private_file(path, format!("{}\n", key.to_base64()).as_bytes());
    match linked {
        Ok(()) => {
            tracing::info!(path = %path.display(), "generated a new secret key");
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => load_or_create_key(path),
        Err(e) => Err(e).with_context(|| format!("cannot write the key file {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_apply_without_file_or_env() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("none.toml");
        assert!(
            Config::load(Some(&missing), env(&[])).is_err(),
            "an explicit file must exist"
        );
        let empty = dir.path().join("empty.toml");
        std::fs::write(&empty, "").expect("write");
        let c = Config::load(
            Some(&empty),
            env(&[("VORONKA_PASSWORD", "x"), ("HOME", "/")]),
        )
        .expect("loads");
        assert_eq!(c, Config::default());
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(
            c.sqlite_path(),
            Some(PathBuf::from("./voronka-data/voronka.db"))
        );
        assert_eq!(c.key_file(), PathBuf::from("./voronka-data/secret.key"));
    }

    #[test]
    fn env_overrides_file_and_unknown_keys_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("voronka.toml");
        std::fs::write(
            &file,
            "listen = \"0.0.0.0:9000\"\nlog_level = \"debug\"\ndatabase_url = \"postgres://db/x\"\n",
        )
        .expect("write");
        let c = Config::load(
            Some(&file),
            env(&[
                ("VORONKA_LOG_LEVEL", "warn"),
                ("VORONKA_LOG_FORMAT", "json"),
            ]),
        )
        .expect("loads");
        assert_eq!(c.listen.to_string(), "0.0.0.0:9000");
        assert_eq!(c.log_level, "warn");
        assert_eq!(c.log_format, LogFormat::Json);
        assert!(c.is_postgres());
        assert_eq!(c.key_file(), PathBuf::from("./voronka-data/secret.key"));

        std::fs::write(&file, "listen = \"0.0.0.0:9000\"\nlisten_port = 5\n").expect("write");
        let e = Config::load(Some(&file), env(&[]))
            .expect_err("unknown key")
            .to_string();
        assert!(e.contains("listen_port"), "{e}");
        let e = Config::load(
            Some(&file.with_file_name("none.toml")),
            env(&[("VORONKA_LISTEN", "nowhere")]),
        );
        assert!(e.is_err());
        std::fs::write(&file, "").expect("write");
        let e = Config::load(Some(&file), env(&[("VORONKA_LISTEN", "nowhere")]))
            .expect_err("bad address")
            .to_string();
        assert!(e.contains("listen"), "{e}");
        let e = Config::load(Some(&file), env(&[("VORONKA_LOG_FORMAT", "xml")]))
            .expect_err("bad format")
            .to_string();
        assert!(e.contains("log_format"), "{e}");
        // Numbers from the environment are numbers; text where a number belongs is named.
        let c = Config::load(
            Some(&file),
            env(&[
                ("VORONKA_OUTBOX_LEASE_SECS", "2"),
                ("VORONKA_TELEGRAM_POLL_TIMEOUT_SECS", "1"),
                ("VORONKA_TELEGRAM_API_URL", "http://127.0.0.1:8081"),
            ]),
        )
        .expect("numbers from the environment");
        let m = c.messaging().expect("messaging settings");
        assert_eq!(m.outbox_lease, std::time::Duration::from_secs(2));
        assert_eq!(m.poll_timeout, std::time::Duration::from_secs(1));
        assert_eq!(m.telegram_api_url, "http://127.0.0.1:8081");
        let e = Config::load(Some(&file), env(&[("VORONKA_OUTBOX_LEASE_SECS", "soon")]))
            .expect_err("not a number")
            .to_string();
        assert!(e.contains("VORONKA_OUTBOX_LEASE_SECS"), "{e}");
        let e = Config::load(Some(&file), env(&[("VORONKA_TELEGRAM_API_URL", "ftp://x")]))
            .expect("loads")
            .messaging()
            .expect_err("not http")
            .to_string();
        assert!(e.contains("telegram_api_url"), "{e}");
    }

    #[test]
    fn key_file_is_created_once_with_mode_0600() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = Config {
            database_url: format!("sqlite://{}/data/v.db", dir.path().display()),
            ..Config::default()
        };
        let path = c.key_file();
        assert_eq!(path, dir.path().join("data").join(KEY_FILE));
        let k1 = c.secret().expect("creates");
        let k2 = c.secret().expect("reads");
        assert_eq!(k1.id(), k2.id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path)
                .expect("exists")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().expect("dir"))
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from(KEY_FILE)]);
        let explicit = Config {
            secret_key: Some(k1.to_base64()),
            ..Config::default()
        };
        assert_eq!(explicit.secret().expect("explicit").id(), k1.id());
        let bad = Config {
            secret_key: Some("short".into()),
            ..Config::default()
        };
        assert!(bad.secret().is_err());
    }
}
