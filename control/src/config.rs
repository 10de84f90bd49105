//! The control service's configuration file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub database: PathBuf,
    pub snapshot: PathBuf,
    /// Metrics endpoints (`IP:port`) of the engines, for `snapshot show`.
    pub engines: Vec<SocketAddr>,
    /// The admin socket directory of the engine on this host (`[server] admin_dir`),
    /// for `ip check` and dynamic blocks.
    pub engine_admin_dir: Option<PathBuf>,
    /// The engines' tracking directories (`[tracking] dir` of each).
    pub tracking_dirs: Vec<PathBuf>,
    /// Where the tracking store keeps its partitions (default: `tracking` beside the
    /// database).
    pub tracking_store: PathBuf,
    pub tracking_retention_days: i64,
    /// Accounts at most, the main administrator included.
    pub max_accounts: usize,
    /// Session cookies carry `Secure` (browsers then send them only over HTTPS, or to
    /// localhost).
    pub cookie_secure: bool,
    /// The console's address as users reach it, for the links in account mail and
    /// digests (default `http://` and `listen`).
    pub console_url: String,
    /// Envelope sender and From of the mail the consoles send.
    pub notify_from: String,
    /// Hour of the day (UTC) the quarantine digest goes out; `None`: no digests.
    pub digest_hour: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    control: Section,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Section {
    listen: Option<String>,
    database: Option<String>,
    snapshot: Option<String>,
    engines: Option<Vec<String>>,
    engine_admin_dir: Option<String>,
    tracking_dirs: Option<Vec<String>>,
    tracking_store: Option<String>,
    tracking_retention_days: Option<i64>,
    max_accounts: Option<i64>,
    cookie_secure: Option<bool>,
    console_url: Option<String>,
    notify_from: Option<String>,
    digest_hour: Option<i64>,
}

impl Config {
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let file: File =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let c = file.control;
        let listen = c.listen.as_deref().unwrap_or("127.0.0.1:8025");
        let listen: SocketAddr = listen.parse().with_context(|| {
            format!(
                "{}: control.listen: {listen:?} is not IP:port",
                path.display()
            )
        })?;
        let database = PathBuf::from(
            c.database
                .as_deref()
                .unwrap_or("/var/lib/bulwark/control.sqlite"),
        );
        let snapshot = PathBuf::from(c.snapshot.as_deref().unwrap_or("/dev/shm/bulwark/policy"));
        for (key, p) in [
            ("control.database", &database),
            ("control.snapshot", &snapshot),
        ] {
            if !p.is_absolute() {
                bail!(
                    "{}: {key}: {} must be an absolute path",
                    path.display(),
                    p.display()
                );
            }
        }
        let mut engines = Vec::new();
        for (i, e) in c.engines.unwrap_or_default().iter().enumerate() {
            engines.push(e.parse().with_context(|| {
                format!(
                    "{}: control.engines[{i}]: {e:?} is not IP:port",
                    path.display()
                )
            })?);
        }
        let engine_admin_dir = c.engine_admin_dir.map(PathBuf::from);
        if let Some(d) = &engine_admin_dir
            && !d.is_absolute()
        {
            bail!(
                "{}: control.engine_admin_dir: {} must be an absolute path",
                path.display(),
                d.display()
            );
        }
        let mut tracking_dirs = Vec::new();
        for (i, d) in c.tracking_dirs.unwrap_or_default().iter().enumerate() {
            let p = PathBuf::from(d);
            if !p.is_absolute() {
                bail!(
                    "{}: control.tracking_dirs[{i}]: {d:?} must be an absolute path",
                    path.display()
                );
            }
            tracking_dirs.push(p);
        }
        let tracking_store = match c.tracking_store {
            Some(s) => PathBuf::from(s),
            None => database.parent().unwrap_or(Path::new("/")).join("tracking"),
        };
        if !tracking_store.is_absolute() {
            bail!(
                "{}: control.tracking_store: {} must be an absolute path",
                path.display(),
                tracking_store.display()
            );
        }
        let tracking_retention_days = c.tracking_retention_days.unwrap_or(30);
        if !(1..=3650).contains(&tracking_retention_days) {
            bail!(
                "{}: control.tracking_retention_days: {tracking_retention_days} must be from 1 to 3650",
                path.display()
            );
        }
        let max_accounts = c.max_accounts.unwrap_or(100);
        if !(1..=100_000).contains(&max_accounts) {
            bail!(
                "{}: control.max_accounts: {max_accounts} must be from 1 to 100000",
                path.display()
            );
        }
        let console_url = c
            .console_url
            .unwrap_or_else(|| format!("http://{listen}"))
            .trim_end_matches('/')
            .to_string();
        if !(console_url.starts_with("http://") || console_url.starts_with("https://"))
            || console_url
                .bytes()
                .any(|b| b <= b' ' || b == b'"' || b == b'<' || b == b'>')
        {
            bail!(
                "{}: control.console_url: {console_url:?} must be an http:// or https:// URL",
                path.display()
            );
        }
        let notify_from = match c.notify_from {
            Some(a) => a,
            None => format!("quarantine@{}", host_name()),
        };
        if bulwark_policy::address::check_directory_address(&notify_from).is_err() {
            bail!(
                "{}: control.notify_from: {notify_from:?} is not an address",
                path.display()
            );
        }
        let digest_hour = match c.digest_hour.unwrap_or(7) {
            -1 => None,
            h @ 0..=23 => Some(h as u32),
            h => bail!(
                "{}: control.digest_hour: {h} must be an hour from 0 to 23, or -1 for no digests",
                path.display()
            ),
        };
        Ok(Config {
            console_url,
            notify_from,
            digest_hour,
            max_accounts: max_accounts as usize,
            cookie_secure: c.cookie_secure.unwrap_or(true),
            listen,
            database,
            snapshot,
            engines,
            engine_admin_dir,
            tracking_dirs,
            tracking_store,
            tracking_retention_days,
        })
    }
}

/// This host's name, for the default sender of the consoles' mail.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_ascii_lowercase())
        .filter(|h| !h.is_empty() && h.contains('.'))
        .unwrap_or_else(|| "localhost.localdomain".into())
}
