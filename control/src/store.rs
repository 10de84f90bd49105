//! The control store: SQLite, with numbered migrations applied at open.

use std::path::Path;

use bulwark_policy::filtering::{RuleSpec, VerdictSpec};
use bulwark_policy::{Domain, Policy, Route};
use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};

/// Schema migrations, applied in order, each once. Never edit one that has shipped:
/// add the next.
const MIGRATIONS: &[&str] = &[
    // 1: domains, API tokens, and the policy generation counter.
    "CREATE TABLE domains (
        name TEXT PRIMARY KEY NOT NULL,
        route_host TEXT NOT NULL,
        route_port INTEGER NOT NULL,
        created_at INTEGER NOT NULL
     );
     CREATE TABLE tokens (
        hash TEXT PRIMARY KEY NOT NULL,
        name TEXT NOT NULL,
        created_at INTEGER NOT NULL
     );
     CREATE TABLE meta (
        key TEXT PRIMARY KEY NOT NULL,
        value INTEGER NOT NULL
     );
     INSERT INTO meta (key, value) VALUES ('generation', 1);",
    // 2: recipient directories, sender lists (scope '' is global), IP lists.
    "CREATE TABLE directory (
        domain TEXT NOT NULL REFERENCES domains(name) ON DELETE CASCADE,
        address TEXT NOT NULL,
        name TEXT NOT NULL,
        PRIMARY KEY (domain, address)
     );
     CREATE TABLE senders (
        scope TEXT NOT NULL,
        pattern TEXT NOT NULL,
        action TEXT NOT NULL CHECK (action IN ('approved', 'blocked')),
        PRIMARY KEY (scope, pattern)
     );
     CREATE TABLE ips (
        cidr TEXT PRIMARY KEY NOT NULL,
        action TEXT NOT NULL CHECK (action IN ('allow', 'block'))
     );",
    // 3: limits and harvest settings, with the engine's defaults.
    "INSERT INTO meta (key, value) VALUES
        ('message_size', 52428800), ('recipients', 1000),
        ('harvest_max_unknown', 20), ('harvest_window_secs', 600), ('harvest_block_secs', 3600);",
    // 4: TLS policy of each route.
    "ALTER TABLE domains ADD COLUMN tls TEXT NOT NULL DEFAULT 'opportunistic'
        CHECK (tls IN ('opportunistic', 'required', 'none'));
     ALTER TABLE domains ADD COLUMN tls_ca TEXT NOT NULL DEFAULT '';",
    // 5: published artifacts: the compiled inspection rules and the classifier model.
    "CREATE TABLE artifacts (
        kind TEXT PRIMARY KEY NOT NULL CHECK (kind IN ('rules', 'model')),
        sha256 TEXT NOT NULL,
        bytes BLOB NOT NULL,
        report TEXT NOT NULL,
        updated INTEGER NOT NULL
     );",
    // 6: thresholds and actions of the verdict classes (scope '' is global, else a
    // domain), and the ordered policy rules; each kept as the JSON people wrote.
    "CREATE TABLE verdicts (
        scope TEXT PRIMARY KEY NOT NULL,
        spec TEXT NOT NULL
     );
     CREATE TABLE policy_rules (
        position INTEGER PRIMARY KEY NOT NULL,
        name TEXT NOT NULL UNIQUE,
        spec TEXT NOT NULL
     );",
    // 7: a published URL blocklist is an artifact too (SQLite cannot change a CHECK in
    // place: the table is rebuilt).
    "CREATE TABLE artifacts_new (
        kind TEXT PRIMARY KEY NOT NULL CHECK (kind IN ('rules', 'model', 'urls')),
        sha256 TEXT NOT NULL,
        bytes BLOB NOT NULL,
        report TEXT NOT NULL,
        updated INTEGER NOT NULL
     );
     INSERT INTO artifacts_new SELECT kind, sha256, bytes, report, updated FROM artifacts;
     DROP TABLE artifacts;
     ALTER TABLE artifacts_new RENAME TO artifacts;",
    // 8: addresses dropped by the XDP program, and the throttles of the sender groups
    // with the engine's defaults (the limits table's; a test holds them equal).
    "CREATE TABLE ips_new (
        cidr TEXT PRIMARY KEY NOT NULL,
        action TEXT NOT NULL CHECK (action IN ('allow', 'block', 'drop'))
     );
     INSERT INTO ips_new SELECT cidr, action FROM ips;
     DROP TABLE ips;
     ALTER TABLE ips_new RENAME TO ips;
     INSERT INTO meta (key, value) VALUES
        ('throttle_unknown_connections', 50),
        ('throttle_unknown_connections_per_minute', 0),
        ('throttle_unknown_messages_per_session', 100),
        ('throttle_unknown_recipients_per_hour', 0),
        ('throttle_unknown_failed_recipients_per_hour', 0),
        ('throttle_unknown_protocol_errors_per_hour', 0),
        ('throttle_suspect_connections', 5),
        ('throttle_suspect_connections_per_minute', 20),
        ('throttle_suspect_messages_per_session', 10),
        ('throttle_suspect_recipients_per_hour', 100),
        ('throttle_suspect_failed_recipients_per_hour', 20),
        ('throttle_suspect_protocol_errors_per_hour', 10),
        ('throttle_block_after', 10),
        ('throttle_block_window_secs', 600),
        ('throttle_block_secs', 900),
        ('throttle_block_max_secs', 86400),
        ('throttle_ipv4_prefix', 32),
        ('throttle_ipv6_prefix', 64);",
    // 9: DNS block and allow lists, in the order they were given, and their thresholds.
    "CREATE TABLE dnsbl_zones (
        position INTEGER PRIMARY KEY NOT NULL,
        zone TEXT NOT NULL UNIQUE,
        weight INTEGER NOT NULL,
        dynamic INTEGER NOT NULL,
        answers TEXT NOT NULL
     );
     INSERT INTO meta (key, value) VALUES ('dnsbl_threshold', 1), ('dnsbl_allow_threshold', 0);",
    // 10: antivirus signatures compiled from imported ClamAV files are an artifact too.
    "CREATE TABLE artifacts_new (
        kind TEXT PRIMARY KEY NOT NULL CHECK (kind IN ('rules', 'model', 'urls', 'av')),
        sha256 TEXT NOT NULL,
        bytes BLOB NOT NULL,
        report TEXT NOT NULL,
        updated INTEGER NOT NULL
     );
     INSERT INTO artifacts_new SELECT kind, sha256, bytes, report, updated FROM artifacts;
     DROP TABLE artifacts;
     ALTER TABLE artifacts_new RENAME TO artifacts;",
    // 11: console accounts (the main administrator and sub-accounts limited to roles and
    // domains), their browser sessions and API tokens, and the audit log. Tokens made
    // before accounts existed (`token create`) stay the main administrator's.
    "CREATE TABLE accounts (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE COLLATE NOCASE,
        password TEXT NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('readonly', 'quarantine', 'policy', 'admin')),
        domains TEXT NOT NULL DEFAULT '',
        main INTEGER NOT NULL DEFAULT 0,
        disabled INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL
     );
     CREATE TABLE sessions (
        hash TEXT PRIMARY KEY NOT NULL,
        account INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
        csrf TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL
     );
     ALTER TABLE tokens ADD COLUMN account INTEGER REFERENCES accounts(id) ON DELETE CASCADE;
     CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        t INTEGER NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        detail TEXT NOT NULL
     );
     CREATE INDEX audit_t ON audit(t);",
    // 12: end users of the quarantine console (registered recipients), the links mailed
    // to them, their sessions and their own approved senders; secrets (the key that
    // signs digest links).
    "CREATE TABLE end_users (
        address TEXT PRIMARY KEY NOT NULL COLLATE NOCASE,
        password TEXT NOT NULL DEFAULT '',
        active INTEGER NOT NULL DEFAULT 0,
        digest INTEGER NOT NULL DEFAULT 1,
        created_at INTEGER NOT NULL,
        activated_at INTEGER
     );
     CREATE TABLE end_user_links (
        hash TEXT PRIMARY KEY NOT NULL,
        address TEXT NOT NULL COLLATE NOCASE REFERENCES end_users(address) ON DELETE CASCADE,
        purpose TEXT NOT NULL CHECK (purpose IN ('activate', 'reset')),
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL
     );
     CREATE INDEX end_user_links_address ON end_user_links(address, created_at);
     CREATE TABLE end_user_sessions (
        hash TEXT PRIMARY KEY NOT NULL,
        address TEXT NOT NULL COLLATE NOCASE REFERENCES end_users(address) ON DELETE CASCADE,
        csrf TEXT NOT NULL,
        expires_at INTEGER NOT NULL
     );
     CREATE TABLE personal_senders (
        address TEXT NOT NULL COLLATE NOCASE,
        pattern TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (address, pattern)
     );
     CREATE TABLE secrets (
        name TEXT PRIMARY KEY NOT NULL,
        value BLOB NOT NULL
     );
     CREATE TABLE digested (
        id TEXT NOT NULL,
        address TEXT NOT NULL,
        PRIMARY KEY (id, address)
     );",
];

/// The settable limits and their allowed ranges.
pub const LIMITS: [(&str, i64, i64); bulwark_policy::limits::ALL.len()] = {
    let all = bulwark_policy::limits::ALL;
    let mut out = [("", 0i64, 0i64); bulwark_policy::limits::ALL.len()];
    let mut i = 0;
    while i < all.len() {
        out[i] = (all[i].name, all[i].min as i64, all[i].max as i64);
        i += 1;
    }
    out
};

/// What is stored of an artifact, besides its bytes.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ArtifactInfo {
    pub sha256: String,
    pub size: u64,
    /// JSON: what importing or training reported.
    pub report: String,
    /// Unix seconds.
    pub updated: i64,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("domain {0} already exists")]
    Exists(String),
    #[error("domain {0} does not exist")]
    NotFound(String),
    #[error("no randomness for a token: {0}")]
    Random(String),
    #[error("{0} is not listed")]
    NotListed(String),
    #[error("stored {what} cannot be read: {message}")]
    Corrupt { what: String, message: String },
}

#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
pub struct SenderRecord {
    pub pattern: String,
    pub action: String,
    /// The domain the entry is for; absent for global entries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
pub struct IpRecord {
    pub cidr: String,
    pub action: String,
}

#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
pub struct DirectoryRecord {
    pub address: String,
    pub name: String,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct DomainRecord {
    pub name: String,
    pub route: String,
    /// `opportunistic`, `required` or `none`.
    pub tls: String,
    /// CA file the engines verify the route against when `tls` is `required`; empty:
    /// the web PKI roots.
    pub tls_ca: String,
}

pub struct Store {
    pub(crate) conn: Connection,
}

pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Hex SHA-256 of a token: only hashes are stored.
pub fn token_hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Store {
    /// Opens (creating) the database and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)", [])?;
        let done: i64 = conn.query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            [],
            |r| r.get(0),
        )?;
        let mut store = Store { conn };
        for (i, sql) in MIGRATIONS.iter().enumerate() {
            let version = i as i64 + 1;
            if version <= done {
                continue;
            }
            let tx = store.conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)",
                params![version, now()],
            )?;
            tx.commit()?;
        }
        Ok(store)
    }

    #[cfg(test)]
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT MAX(version) FROM schema_migrations", [], |r| {
                r.get(0)
            })?)
    }

    /// Creates a token; returns it (shown once; only its hash is kept).
    pub fn create_token(&self, name: &str) -> Result<String, StoreError> {
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw).map_err(|e| StoreError::Random(e.to_string()))?;
        let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        self.conn.execute(
            "INSERT INTO tokens (hash, name, created_at) VALUES (?1, ?2, ?3)",
            params![token_hash(&token), name, now()],
        )?;
        Ok(token)
    }

    pub fn domains(&self) -> Result<Vec<DomainRecord>, StoreError> {
        let mut st = self.conn.prepare(
            "SELECT name, route_host, route_port, tls, tls_ca FROM domains ORDER BY name",
        )?;
        let rows = st.query_map([], |r| {
            let host: String = r.get(1)?;
            let port: u16 = r.get(2)?;
            let route = if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            };
            Ok(DomainRecord {
                name: r.get(0)?,
                route,
                tls: r.get(3)?,
                tls_ca: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Adds a domain (name lower case; route already validated as host and port).
    pub fn add_domain(
        &mut self,
        name: &str,
        host: &str,
        port: u16,
        tls: &str,
        tls_ca: &str,
    ) -> Result<u64, StoreError> {
        let tx = self.conn.transaction()?;
        let exists = tx
            .query_row(
                "SELECT 1 FROM domains WHERE name = ?1",
                params![name],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        if exists {
            return Err(StoreError::Exists(name.to_string()));
        }
        tx.execute(
            "INSERT INTO domains (name, route_host, route_port, created_at, tls, tls_ca) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![name, host, port, now(), tls, tls_ca],
        )?;
        let generation = bump(&tx)?;
        tx.commit()?;
        Ok(generation)
    }

    pub fn remove_domain(&mut self, name: &str) -> Result<u64, StoreError> {
        let tx = self.conn.transaction()?;
        if tx.execute("DELETE FROM domains WHERE name = ?1", params![name])? == 0 {
            return Err(StoreError::NotFound(name.to_string()));
        }
        tx.execute("DELETE FROM verdicts WHERE scope = ?1", params![name])?;
        let generation = bump(&tx)?;
        tx.commit()?;
        Ok(generation)
    }

    fn domain_exists(tx: &rusqlite::Transaction<'_>, name: &str) -> Result<(), StoreError> {
        match tx
            .query_row(
                "SELECT 1 FROM domains WHERE name = ?1",
                params![name],
                |_| Ok(()),
            )
            .optional()?
        {
            Some(()) => Ok(()),
            None => Err(StoreError::NotFound(name.to_string())),
        }
    }

    /// Adds or updates directory entries of a domain.
    pub fn import_directory(
        &mut self,
        domain: &str,
        entries: &[crate::csv::Entry],
    ) -> Result<u64, StoreError> {
        let tx = self.conn.transaction()?;
        Self::domain_exists(&tx, domain)?;
        {
            let mut st = tx.prepare("INSERT INTO directory (domain, address, name) VALUES (?1, ?2, ?3) ON CONFLICT (domain, address) DO UPDATE SET name = excluded.name")?;
            for e in entries {
                st.execute(params![domain, e.address, e.name])?;
            }
        }
        let generation = bump(&tx)?;
        tx.commit()?;
        Ok(generation)
    }

    pub fn directory(&self, domain: &str) -> Result<Vec<DirectoryRecord>, StoreError> {
        let mut st = self
            .conn
            .prepare("SELECT address, name FROM directory WHERE domain = ?1 ORDER BY address")?;
        let rows = st.query_map(params![domain], |r| {
            Ok(DirectoryRecord {
                address: r.get(0)?,
                name: r.get(1)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Lists a sender pattern as approved or blocked, globally or for one domain.
    pub fn set_sender(
        &mut self,
        domain: Option<&str>,
        pattern: &str,
        action: &str,
    ) -> Result<u64, StoreError> {
        let tx = self.conn.transaction()?;
        if let Some(d) = domain {
            Self::domain_exists(&tx, d)?;
        }
        tx.execute(
            "INSERT INTO senders (scope, pattern, action) VALUES (?1, ?2, ?3) ON CONFLICT (scope, pattern) DO UPDATE SET action = excluded.action",
            params![domain.unwrap_or(""), pattern, action],
        )?;
        let generation = bump(&tx)?;
        tx.commit()?;
        Ok(generation)
    }

    pub fn remove_sender(
        &mut self,
        domain: Option<&str>,
        pattern: &str,
    ) -> Result<u64, StoreError> {
        let tx = self.conn.transaction()?;
        if tx.execute(
            "DELETE FROM senders WHERE scope = ?1 AND pattern = ?2",
            params![domain.unwrap_or(""), pattern],
        )? == 0
        {
            return Err(StoreError::NotListed(pattern.to_string()));
        }
        let generation = bump(&tx)?;
        tx.commit()?;
        Ok(generation)
    }

    pub fn senders(&self) -> Result<Vec<SenderRecord>, StoreError> {
        let mut st = self
            .conn
            .prepare("SELECT scope, pattern, action FROM senders ORDER BY scope, pattern")?;
        let rows = st.query_map([], |r| {
            let scope: String = r.get(0)?;
            Ok(SenderRecord {
                pattern: r.get(1)?,
                action: r.get(2)?,
                domain: (!scope.is_empty()).then_some(scope),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn set_ip(&mut self, cidr: &str, action: &str) -> Result<u64, StoreError> {
        let tx = self.conn.transaction()?;
        tx.execute("INSERT INTO ips (cidr, action) VALUES (?1, ?2) ON CONFLICT (cidr) DO UPDATE SET action = excluded.action", params![cidr, action])?;
        let generation = bump(&tx)?;
        tx.commit()?;
        Ok(generation)
    }

    pub fn remove_ip(&mut self, cidr: &str) -> Result<u64, StoreError> {
        let tx = self.conn.transaction()?;
        if tx.execute("DELETE FROM ips WHERE cidr = ?1", params![cidr])? == 0 {
            return Err(StoreError::NotListed(cidr.to_string()));
        }
        let generation = bump(&tx)?;
        tx.commit()?;
        Ok(generation)
    }

    pub fn ips(&self) -> Result<Vec<IpRecord>, StoreError> {
        let mut st = self
            .conn
            .prepare("SELECT cidr, action FROM ips ORDER BY cidr")?;
        let rows = st.query_map([], |r| {
            Ok(IpRecord {
                cidr: r.get(0)?,
                action: r.get(1)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The limits, by the names in [`LIMITS`].
    pub fn limits(&self) -> Result<Vec<(&'static str, i64)>, StoreError> {
        LIMITS
            .iter()
            .map(|(k, _, _)| {
                Ok((
                    *k,
                    self.conn.query_row(
                        "SELECT value FROM meta WHERE key = ?1",
                        params![k],
                        |r| r.get(0),
                    )?,
                ))
            })
            .collect()
    }

    /// Sets some limits (names from [`LIMITS`], values already range-checked).
    pub fn set_limits(&mut self, values: &[(&str, i64)]) -> Result<u64, StoreError> {
        let tx = self.conn.transaction()?;
        for (k, v) in values {
            tx.execute("UPDATE meta SET value = ?2 WHERE key = ?1", params![k, v])?;
        }
        let generation = bump(&tx)?;
        tx.commit()?;
        Ok(generation)
    }

    pub fn generation(&self) -> Result<u64, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'generation'", [], |r| {
                r.get::<_, i64>(0)
            })? as u64)
    }

    /// Raises the generation to at least `floor` (a published one it must exceed).
    pub fn raise_generation(&mut self, floor: u64) -> Result<u64, StoreError> {
        self.conn.execute(
            "UPDATE meta SET value = MAX(value, ?1) WHERE key = 'generation'",
            params![floor as i64],
        )?;
        self.generation()
    }

    /// The policy the store describes, at its generation.
    pub fn compile(&self) -> Result<Policy, StoreError> {
        let mut st = self.conn.prepare(
            "SELECT name, route_host, route_port, tls, tls_ca FROM domains ORDER BY name",
        )?;
        let mut domains = st
            .query_map([], |r| {
                Ok(Domain {
                    name: r.get(0)?,
                    route: Route {
                        host: r.get(1)?,
                        port: r.get(2)?,
                        tls: bulwark_policy::TlsPolicy::parse(&r.get::<_, String>(3)?)
                            .unwrap_or_default(),
                        tls_ca: r.get(4)?,
                    },
                    ..Default::default()
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let senders = self.senders()?;
        let mut global = bulwark_policy::SenderLists::default();
        for d in &mut domains {
            d.directory = self
                .directory(&d.name)?
                .into_iter()
                .map(|e| e.address)
                .collect();
            // A domain has a directory as soon as one address is listed for it.
            d.has_directory = !d.directory.is_empty();
        }
        for (address, pattern) in self.all_personal_senders()? {
            let domain = address.rsplit_once('@').map_or("", |(_, d)| d);
            let Some(d) = domains.iter_mut().find(|d| d.name == domain) else {
                continue;
            };
            match d.personal.last_mut() {
                Some(l) if l.address == address => l.approved.push(pattern),
                _ => d.personal.push(bulwark_policy::PersonalList {
                    address,
                    approved: vec![pattern],
                }),
            }
        }
        for s in senders {
            let lists = match &s.domain {
                None => &mut global,
                Some(name) => match domains.iter_mut().find(|d| &d.name == name) {
                    Some(d) => &mut d.senders,
                    None => continue,
                },
            };
            match s.action.as_str() {
                "approved" => lists.approved.push(s.pattern),
                _ => lists.blocked.push(s.pattern),
            }
        }
        let mut ips = bulwark_policy::IpLists::default();
        for ip in self.ips()? {
            if let Some(c) = bulwark_policy::Cidr::parse(&ip.cidr) {
                match ip.action.as_str() {
                    "allow" => ips.allow.push(c),
                    "drop" => ips.drop.push(c),
                    _ => ips.block.push(c),
                }
            }
        }
        let mut verdicts = bulwark_policy::filtering::VerdictPolicy::default();
        for (scope, spec) in self.verdicts()? {
            let compiled = spec.compile().map_err(|e| StoreError::Corrupt {
                what: format!("verdicts of {scope:?}"),
                message: e.to_string(),
            })?;
            if scope.is_empty() {
                verdicts = compiled;
            } else if let Some(d) = domains.iter_mut().find(|d| d.name == scope) {
                d.verdicts = compiled;
            }
        }
        let rules =
            bulwark_policy::filtering::compile_rules(&self.policy_rules()?).map_err(|e| {
                StoreError::Corrupt {
                    what: "policy rules".into(),
                    message: e.to_string(),
                }
            })?;
        let l: std::collections::HashMap<&str, i64> = self.limits()?.into_iter().collect();
        let get = |k: &str| l.get(k).copied().unwrap_or(0).max(0);
        Ok(Policy {
            generation: self.generation()?,
            domains,
            limits: bulwark_policy::Limits {
                message_size: get("message_size") as u64,
                recipients: get("recipients") as u32,
            },
            senders: global,
            ips,
            harvest: bulwark_policy::Harvest {
                max_unknown: get("harvest_max_unknown") as u32,
                window_secs: get("harvest_window_secs") as u32,
                block_secs: get("harvest_block_secs") as u32,
            },
            inspection: bulwark_policy::InspectionArtifacts {
                rules: self
                    .artifact_info("rules")?
                    .map(|a| a.sha256)
                    .unwrap_or_default(),
                model: self
                    .artifact_info("model")?
                    .map(|a| a.sha256)
                    .unwrap_or_default(),
                url_blocklist: self
                    .artifact_info("urls")?
                    .map(|a| a.sha256)
                    .unwrap_or_default(),
                antivirus: self
                    .artifact_info("av")?
                    .map(|a| a.sha256)
                    .unwrap_or_default(),
            },
            verdicts,
            rules,
            throttle: bulwark_policy::Throttle::from_limits(|k| get(k) as u64),
            dnsbl: self.dnsbl()?,
        })
    }

    /// Thresholds and actions by scope (`""` global, else a domain), as written.
    pub fn verdicts(&self) -> Result<Vec<(String, VerdictSpec)>, StoreError> {
        let mut st = self
            .conn
            .prepare("SELECT scope, spec FROM verdicts ORDER BY scope")?;
        let rows = st
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(|(scope, spec)| {
                serde_json::from_str(&spec)
                    .map(|v| (scope.clone(), v))
                    .map_err(|e| StoreError::Corrupt {
                        what: format!("verdicts of {scope:?}"),
                        message: e.to_string(),
                    })
            })
            .collect()
    }

    /// Sets (or, with an empty spec, clears) the thresholds and actions of a scope: `""`
    /// for every domain, or a domain's name. The spec is already validated.
    pub fn set_verdicts(&mut self, scope: &str, spec: &VerdictSpec) -> Result<u64, StoreError> {
        let tx = self.conn.transaction()?;
        if !scope.is_empty() {
            Self::domain_exists(&tx, scope)?;
        }
        if *spec == VerdictSpec::default() {
            tx.execute("DELETE FROM verdicts WHERE scope = ?1", params![scope])?;
        } else {
            let json = serde_json::to_string(spec).map_err(|e| StoreError::Corrupt {
                what: "verdicts".into(),
                message: e.to_string(),
            })?;
            tx.execute(
                "INSERT INTO verdicts (scope, spec) VALUES (?1, ?2)
                 ON CONFLICT(scope) DO UPDATE SET spec = ?2",
                params![scope, json],
            )?;
        }
        let generation = bump(&tx)?;
        tx.commit()?;
        Ok(generation)
    }

    /// The policy rules in order, as written.
    /// The DNS lists and their thresholds.
    pub fn dnsbl(&self) -> Result<bulwark_policy::DnsblPolicy, StoreError> {
        let mut st = self
            .conn
            .prepare("SELECT zone, weight, dynamic, answers FROM dnsbl_zones ORDER BY position")?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let mut zones = Vec::with_capacity(rows.len());
        for (zone, weight, dynamic, answers) in rows {
            let answers: Vec<String> =
                serde_json::from_str(&answers).map_err(|e| StoreError::Corrupt {
                    what: format!("answers of DNS list {zone:?}"),
                    message: e.to_string(),
                })?;
            zones.push(bulwark_policy::DnsblZone {
                zone,
                weight: weight as i32,
                dynamic: dynamic != 0,
                answers,
            });
        }
        let meta = |k: &str| -> Result<i64, StoreError> {
            Ok(self
                .conn
                .query_row("SELECT value FROM meta WHERE key = ?1", params![k], |r| {
                    r.get(0)
                })?)
        };
        Ok(bulwark_policy::DnsblPolicy {
            zones,
            threshold: meta("dnsbl_threshold")? as i32,
            allow_threshold: meta("dnsbl_allow_threshold")? as i32,
        })
    }

    /// Replaces the DNS lists and thresholds (already validated).
    pub fn set_dnsbl(&mut self, p: &bulwark_policy::DnsblPolicy) -> Result<u64, StoreError> {
        let tx = self.conn.transaction()?;
        tx.execute("DELETE FROM dnsbl_zones", [])?;
        for (i, z) in p.zones.iter().enumerate() {
            let answers = serde_json::to_string(&z.answers).unwrap_or_else(|_| "[]".into());
            tx.execute(
                "INSERT INTO dnsbl_zones (position, zone, weight, dynamic, answers) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![i as i64, z.zone, z.weight, z.dynamic as i64, answers],
            )?;
        }
        tx.execute(
            "UPDATE meta SET value = ?1 WHERE key = 'dnsbl_threshold'",
            params![p.threshold],
        )?;
        tx.execute(
            "UPDATE meta SET value = ?1 WHERE key = 'dnsbl_allow_threshold'",
            params![p.allow_threshold],
        )?;
        let generation = bump(&tx)?;
        tx.commit()?;
        Ok(generation)
    }

    pub fn policy_rules(&self) -> Result<Vec<RuleSpec>, StoreError> {
        let mut st = self
            .conn
            .prepare("SELECT name, spec FROM policy_rules ORDER BY position")?;
        let rows = st
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(|(name, spec)| {
                serde_json::from_str(&spec).map_err(|e| StoreError::Corrupt {
                    what: format!("policy rule {name:?}"),
                    message: e.to_string(),
                })
            })
            .collect()
    }

    /// Replaces the policy rules (already validated) with `rules`, in that order.
    pub fn set_policy_rules(&mut self, rules: &[RuleSpec]) -> Result<u64, StoreError> {
        let tx = self.conn.transaction()?;
        tx.execute("DELETE FROM policy_rules", [])?;
        for (i, r) in rules.iter().enumerate() {
            let json = serde_json::to_string(r).map_err(|e| StoreError::Corrupt {
                what: format!("policy rule {:?}", r.name),
                message: e.to_string(),
            })?;
            tx.execute(
                "INSERT INTO policy_rules (position, name, spec) VALUES (?1, ?2, ?3)",
                params![i as i64, r.name, json],
            )?;
        }
        let generation = bump(&tx)?;
        tx.commit()?;
        Ok(generation)
    }

    /// Stores an artifact (`rules`, `model`) with its report, replacing the previous one.
    pub fn set_artifact(
        &mut self,
        kind: &str,
        bytes: &[u8],
        report: &str,
    ) -> Result<String, StoreError> {
        let sha = hex(&Sha256::digest(bytes));
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO artifacts (kind, sha256, bytes, report, updated) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(kind) DO UPDATE SET sha256 = ?2, bytes = ?3, report = ?4, updated = ?5",
            params![kind, sha, bytes, report, now()],
        )?;
        bump(&tx)?;
        tx.commit()?;
        Ok(sha)
    }

    /// An artifact's digest, size, report and time, without its bytes.
    pub fn artifact_info(&self, kind: &str) -> Result<Option<ArtifactInfo>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT sha256, length(bytes), report, updated FROM artifacts WHERE kind = ?1",
                [kind],
                |r| {
                    Ok(ArtifactInfo {
                        sha256: r.get(0)?,
                        size: r.get::<_, i64>(1)? as u64,
                        report: r.get(2)?,
                        updated: r.get(3)?,
                    })
                },
            )
            .optional()?)
    }

    pub fn artifact_bytes(&self, kind: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT bytes FROM artifacts WHERE kind = ?1", [kind], |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// Removes an artifact; false when there was none.
    pub fn remove_artifact(&mut self, kind: &str) -> Result<bool, StoreError> {
        let tx = self.conn.transaction()?;
        let n = tx.execute("DELETE FROM artifacts WHERE kind = ?1", [kind])?;
        if n > 0 {
            bump(&tx)?;
        }
        tx.commit()?;
        Ok(n > 0)
    }
}

pub(crate) fn bump(tx: &rusqlite::Transaction<'_>) -> Result<u64, StoreError> {
    tx.execute(
        "UPDATE meta SET value = value + 1 WHERE key = 'generation'",
        [],
    )?;
    Ok(
        tx.query_row("SELECT value FROM meta WHERE key = 'generation'", [], |r| {
            r.get::<_, i64>(0)
        })? as u64,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!(
            "bulwark-store-{name}-{}.sqlite",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&p);
        p
    }

    #[test]
    fn migrations_apply_once_and_data_survives_reopen() {
        let p = tmp("migrate");
        let mut s = Store::open(&p).unwrap();
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as i64);
        assert_eq!(s.generation().unwrap(), 1);
        assert_eq!(
            s.add_domain("example.test", "127.0.0.1", 2526, "opportunistic", "")
                .unwrap(),
            2
        );
        drop(s);
        let s = Store::open(&p).unwrap();
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as i64);
        assert_eq!(
            s.domains().unwrap(),
            [DomainRecord {
                name: "example.test".into(),
                route: "127.0.0.1:2526".into(),
                tls: "opportunistic".into(),
                tls_ca: String::new(),
            }]
        );
        let policy = s.compile().unwrap();
        assert_eq!(policy.generation, 2);
        assert_eq!(policy.domains[0].route.port, 2526);
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn domains_and_tokens() {
        let p = tmp("domains");
        let mut s = Store::open(&p).unwrap();
        s.add_domain("a.test", "::1", 25, "required", "/etc/ca.pem")
            .unwrap();
        assert!(matches!(
            s.add_domain("a.test", "x", 25, "none", ""),
            Err(StoreError::Exists(_))
        ));
        assert_eq!(s.domains().unwrap()[0].route, "[::1]:25");
        assert_eq!(
            s.compile().unwrap().domains[0].route.tls,
            bulwark_policy::TlsPolicy::Required
        );
        assert_eq!(s.compile().unwrap().domains[0].route.tls_ca, "/etc/ca.pem");
        assert_eq!(s.remove_domain("a.test").unwrap(), 3);
        assert!(matches!(
            s.remove_domain("a.test"),
            Err(StoreError::NotFound(_))
        ));
        let t = s.create_token("admin").unwrap();
        assert_eq!(t.len(), 64);
        assert!(s.token_actor(&t).unwrap().is_some());
        assert!(s.token_actor("nope").unwrap().is_none());
        assert_eq!(s.raise_generation(10).unwrap(), 10);
        assert_eq!(s.raise_generation(5).unwrap(), 10);
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn lists_compile_into_the_policy() {
        let p = tmp("lists");
        let mut s = Store::open(&p).unwrap();
        s.add_domain("example.test", "127.0.0.1", 25, "opportunistic", "")
            .unwrap();
        let entries = vec![crate::csv::Entry {
            address: "alice@example.test".into(),
            name: "Alice".into(),
        }];
        s.import_directory("example.test", &entries).unwrap();
        assert!(matches!(
            s.import_directory("nowhere.test", &entries),
            Err(StoreError::NotFound(_))
        ));
        s.set_sender(None, "spam.test", "blocked").unwrap();
        s.set_sender(Some("example.test"), "friend@spam.test", "approved")
            .unwrap();
        s.set_ip("192.0.2.0/24", "block").unwrap();
        let policy = s.compile().unwrap();
        assert_eq!(policy.domains[0].directory, ["alice@example.test"]);
        assert!(policy.domains[0].has_directory);
        assert_eq!(policy.senders.blocked, ["spam.test"]);
        assert_eq!(policy.domains[0].senders.approved, ["friend@spam.test"]);
        assert_eq!(policy.ips.block.len(), 1);
        assert_eq!(policy.limits.message_size, 52_428_800);
        assert_eq!(policy.harvest.max_unknown, 20);
        s.set_limits(&[("message_size", 4096), ("harvest_max_unknown", 0)])
            .unwrap();
        let policy = s.compile().unwrap();
        assert_eq!(
            (
                policy.limits.message_size,
                policy.limits.recipients,
                policy.harvest.max_unknown
            ),
            (4096, 1000, 0)
        );
        // The store's defaults are the limits table's; throttles compile into the policy.
        for (k, v) in s.limits().unwrap() {
            let r = bulwark_policy::limits::ALL
                .iter()
                .find(|r| r.name == k)
                .unwrap();
            if k != "message_size" && k != "harvest_max_unknown" {
                assert_eq!(v as u64, r.default, "{k}");
            }
        }
        assert_eq!(policy.throttle, bulwark_policy::Throttle::defaults());
        s.set_limits(&[("throttle_suspect_connections", 3)])
            .unwrap();
        s.set_ip("198.18.0.0/15", "drop").unwrap();
        let policy = s.compile().unwrap();
        assert_eq!(policy.throttle.suspect.connections, 3);
        assert_eq!(policy.ips.drop.len(), 1);
        s.remove_sender(None, "spam.test").unwrap();
        assert!(matches!(
            s.remove_sender(None, "spam.test"),
            Err(StoreError::NotListed(_))
        ));
        s.remove_domain("example.test").unwrap();
        assert!(
            s.directory("example.test").unwrap().is_empty(),
            "the directory goes with its domain"
        );
        let _ = std::fs::remove_file(&p);
    }
}
