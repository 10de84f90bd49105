//! Accounts of the consoles and the API: the main administrator and sub-accounts, each
//! with a role and, optionally, the domains it is limited to; passwords hashed with
//! argon2; browser sessions (a random token in a cookie, its hash stored, with its own
//! CSRF token); API tokens per account with the account's scopes; the audit log; and
//! the login throttle.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use crate::store::{Store, StoreError, now, token_hash};

/// What an account may do; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read everything in its domains: tracking, quarantine, settings.
    ReadOnly,
    /// And release or delete quarantined mail.
    Quarantine,
    /// And change the filtering policy: senders, IP lists, rules, thresholds.
    Policy,
    /// And domains, accounts, tokens, the queue.
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::ReadOnly, Role::Quarantine, Role::Policy, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::ReadOnly => "readonly",
            Role::Quarantine => "quarantine",
            Role::Policy => "policy",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// Who is asking: an account (through a session or one of its tokens), or a token made
/// with `token create` (the main administrator's).
#[derive(Debug, Clone, Serialize)]
pub struct Actor {
    pub account: Option<i64>,
    pub name: String,
    pub role: Role,
    /// The domains it is limited to; `None`: every domain (and global settings).
    pub domains: Option<Vec<String>>,
    pub main: bool,
}

impl Actor {
    pub fn can(&self, role: Role) -> bool {
        self.role >= role
    }

    /// Whether it may see or act on `domain`'s mail and settings.
    pub fn covers(&self, domain: &str) -> bool {
        let d = domain.trim_end_matches('.').to_ascii_lowercase();
        match &self.domains {
            None => true,
            Some(list) => list.contains(&d),
        }
    }

    /// Whether it may see or act on mail to or from `address`.
    pub fn covers_address(&self, address: &str) -> bool {
        self.domains.is_none()
            || address
                .rsplit_once('@')
                .is_some_and(|(_, d)| self.covers(d))
    }

    pub fn unrestricted(&self) -> bool {
        self.domains.is_none()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Account {
    pub id: i64,
    pub name: String,
    pub role: Role,
    pub domains: Vec<String>,
    pub main: bool,
    pub disabled: bool,
    pub created_at: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TokenInfo {
    pub id: i64,
    pub name: String,
    pub account: Option<String>,
    pub created_at: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct AuditEntry {
    pub t: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub detail: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("an account named {0} exists already")]
    Exists(String),
    #[error("no account {0}")]
    NotFound(String),
    #[error("{0}")]
    Store(#[from] StoreError),
}

impl From<rusqlite::Error> for AccountError {
    fn from(e: rusqlite::Error) -> AccountError {
        AccountError::Store(StoreError::Sql(e))
    }
}

fn invalid(field: &'static str, message: impl Into<String>) -> AccountError {
    AccountError::Invalid {
        field,
        message: message.into(),
    }
}

/// Browser sessions last this long (from login).
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);

fn random_token() -> Result<String, StoreError> {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(|e| StoreError::Random(e.to_string()))?;
    Ok(raw.iter().map(|b| format!("{b:02x}")).collect())
}

pub fn hash_password(password: &str) -> Result<String, AccountError> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| StoreError::Random(e.to_string()))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| invalid("password", e.to_string()))?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| invalid("password", e.to_string()))
}

fn verify_password(password: &str, stored: &str) -> bool {
    PasswordHash::new(stored).is_ok_and(|h| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// A password an account may have: 10 to 256 characters.
pub fn check_password(password: &str) -> Result<(), AccountError> {
    let n = password.chars().count();
    if n < 10 {
        return Err(invalid("password", "must be at least 10 characters long"));
    }
    if n > 256 {
        return Err(invalid("password", "must be at most 256 characters long"));
    }
    Ok(())
}

/// A login name: 1 to 128 characters of letters, digits and `.@_+-`.
pub fn check_name(name: &str) -> Result<(), AccountError> {
    if name.is_empty() || name.len() > 128 {
        return Err(invalid("name", "must be 1 to 128 characters long"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || ".@_+-".contains(c))
    {
        return Err(invalid(
            "name",
            "may hold only letters, digits and . @ _ + -",
        ));
    }
    Ok(())
}

/// Domains as given (space or comma separated), checked and lower-cased.
pub fn parse_domains(text: &str) -> Result<Vec<String>, AccountError> {
    let mut out = Vec::new();
    for d in text.split([' ', ',', '\n', '\t']).filter(|d| !d.is_empty()) {
        let d = d.trim_end_matches('.').to_ascii_lowercase();
        if !bulwark_policy::address::is_hostname(&d) {
            return Err(invalid("domains", format!("{d:?} is not a domain name")));
        }
        if !out.contains(&d) {
            out.push(d);
        }
    }
    Ok(out)
}

fn account_of(r: &rusqlite::Row<'_>) -> rusqlite::Result<Account> {
    account_at(r, 0)
}

/// An account from `ACCOUNT_COLUMNS` starting at column `i`.
fn account_at(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Account> {
    let role: String = r.get(i + 2)?;
    let domains: String = r.get(i + 3)?;
    Ok(Account {
        id: r.get(i)?,
        name: r.get(i + 1)?,
        role: Role::parse(&role).unwrap_or(Role::ReadOnly),
        domains: domains.split_whitespace().map(str::to_string).collect(),
        main: r.get::<_, i64>(i + 4)? != 0,
        disabled: r.get::<_, i64>(i + 5)? != 0,
        created_at: r.get(i + 6)?,
    })
}

const ACCOUNT_COLUMNS: &str = "id, name, role, domains, main, disabled, created_at";

fn actor_of(a: &Account) -> Actor {
    Actor {
        account: Some(a.id),
        name: a.name.clone(),
        role: a.role,
        domains: (!a.domains.is_empty() && !a.main).then(|| a.domains.clone()),
        main: a.main,
    }
}

impl Store {
    pub fn accounts(&self) -> Result<Vec<Account>, AccountError> {
        let mut st = self.conn.prepare(&format!(
            "SELECT {ACCOUNT_COLUMNS} FROM accounts ORDER BY main DESC, name"
        ))?;
        let rows = st.query_map([], account_of)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn account(&self, name: &str) -> Result<Option<Account>, AccountError> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE name = ?1"),
                [name],
                account_of,
            )
            .optional()?)
    }

    /// Creates an account. The first one is the main administrator (role admin, every
    /// domain); `max` counts it.
    pub fn create_account(
        &mut self,
        name: &str,
        password: &str,
        role: Role,
        domains: &[String],
        max: usize,
    ) -> Result<Account, AccountError> {
        check_name(name)?;
        check_password(password)?;
        let hash = hash_password(password)?;
        let tx = self.conn.transaction()?;
        let n: i64 = tx.query_row("SELECT count(*) FROM accounts", [], |r| r.get(0))?;
        if n as usize >= max {
            return Err(invalid(
                "name",
                format!(
                    "there are {n} accounts already, the most allowed ([control] max_accounts)"
                ),
            ));
        }
        let main = n == 0;
        let (role, domains) = if main {
            (Role::Admin, String::new())
        } else {
            (role, domains.join(" "))
        };
        let done = tx.execute(
            "INSERT OR IGNORE INTO accounts (name, password, role, domains, main, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![name, hash, role.as_str(), domains, main as i64, now()],
        )?;
        if done == 0 {
            return Err(AccountError::Exists(name.to_string()));
        }
        tx.commit()?;
        self.account(name)?
            .ok_or_else(|| AccountError::NotFound(name.to_string()))
    }

    /// Changes an account's role, domains, password or disabled state. The main
    /// administrator stays an unrestricted administrator.
    pub fn update_account(
        &mut self,
        name: &str,
        role: Option<Role>,
        domains: Option<&[String]>,
        password: Option<&str>,
        disabled: Option<bool>,
    ) -> Result<Account, AccountError> {
        let a = self
            .account(name)?
            .ok_or_else(|| AccountError::NotFound(name.to_string()))?;
        if a.main && (role.is_some_and(|r| r != Role::Admin) || disabled == Some(true)) {
            return Err(invalid(
                "role",
                "the main administrator stays an administrator and cannot be disabled",
            ));
        }
        if a.main && domains.is_some_and(|d| !d.is_empty()) {
            return Err(invalid(
                "domains",
                "the main administrator is not limited to domains",
            ));
        }
        let tx = self.conn.transaction()?;
        if let Some(r) = role {
            tx.execute(
                "UPDATE accounts SET role = ?2 WHERE id = ?1",
                params![a.id, r.as_str()],
            )?;
        }
        if let Some(d) = domains {
            tx.execute(
                "UPDATE accounts SET domains = ?2 WHERE id = ?1",
                params![a.id, d.join(" ")],
            )?;
        }
        if let Some(p) = password {
            check_password(p)?;
            tx.execute(
                "UPDATE accounts SET password = ?2 WHERE id = ?1",
                params![a.id, hash_password(p)?],
            )?;
            // A new password ends the account's other sessions.
            tx.execute("DELETE FROM sessions WHERE account = ?1", [a.id])?;
        }
        if let Some(off) = disabled {
            tx.execute(
                "UPDATE accounts SET disabled = ?2 WHERE id = ?1",
                params![a.id, off as i64],
            )?;
            if off {
                tx.execute("DELETE FROM sessions WHERE account = ?1", [a.id])?;
            }
        }
        tx.commit()?;
        self.account(name)?
            .ok_or_else(|| AccountError::NotFound(name.to_string()))
    }

    pub fn delete_account(&mut self, name: &str) -> Result<(), AccountError> {
        let a = self
            .account(name)?
            .ok_or_else(|| AccountError::NotFound(name.to_string()))?;
        if a.main {
            return Err(invalid("name", "the main administrator cannot be deleted"));
        }
        self.conn
            .execute("DELETE FROM accounts WHERE id = ?1", [a.id])?;
        Ok(())
    }

    /// What a sign-in as `name` is checked against: the stored hash and the account
    /// (`None` for an unknown name). Checked with [`check_login`] outside the store's
    /// lock: argon2 takes tens of milliseconds.
    pub fn login_record(&self, name: &str) -> Result<Option<(String, Account)>, AccountError> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT password, {ACCOUNT_COLUMNS} FROM accounts WHERE name = ?1"),
                [name],
                |r| Ok((r.get(0)?, account_at(r, 1)?)),
            )
            .optional()?)
    }

    /// The account `name` with `password`, if it may log in.
    #[cfg(test)]
    pub fn verify_login(&self, name: &str, password: &str) -> Result<Option<Actor>, AccountError> {
        Ok(check_login(self.login_record(name)?, password))
    }

    /// Starts a session; returns its token (for the cookie) and its CSRF token.
    pub fn create_session(&mut self, account: i64) -> Result<(String, String), AccountError> {
        let token = random_token()?;
        let csrf = random_token()?;
        let t = now();
        self.conn
            .execute("DELETE FROM sessions WHERE expires_at < ?1", [t])?;
        self.conn.execute(
            "INSERT INTO sessions (hash, account, csrf, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![token_hash(&token), account, csrf, t, t + SESSION_LIFETIME.as_secs() as i64],
        )?;
        Ok((token, csrf))
    }

    /// The actor and CSRF token of a live session.
    pub fn session(&self, token: &str) -> Result<Option<(Actor, String)>, AccountError> {
        let columns = ACCOUNT_COLUMNS
            .split(", ")
            .map(|c| format!("a.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let row = self
            .conn
            .query_row(
                &format!(
                    "SELECT s.csrf, {columns} FROM sessions s JOIN accounts a ON a.id = s.account
                     WHERE s.hash = ?1 AND s.expires_at > ?2 AND a.disabled = 0"
                ),
                params![token_hash(token), now()],
                |r| Ok((actor_of(&account_at(r, 1)?), r.get::<_, String>(0)?)),
            )
            .optional()?;
        Ok(row)
    }

    pub fn end_session(&mut self, token: &str) -> Result<(), AccountError> {
        self.conn
            .execute("DELETE FROM sessions WHERE hash = ?1", [token_hash(token)])?;
        Ok(())
    }

    /// An API token for `account` (`None`: the main administrator's, as `token create`
    /// makes); returned once.
    pub fn create_account_token(
        &mut self,
        account: Option<i64>,
        name: &str,
    ) -> Result<String, AccountError> {
        if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
            return Err(invalid("name", "a token's name is 1 to 128 characters"));
        }
        let token = random_token()?;
        self.conn.execute(
            "INSERT INTO tokens (hash, name, created_at, account) VALUES (?1, ?2, ?3, ?4)",
            params![token_hash(&token), name, now(), account],
        )?;
        Ok(token)
    }

    /// Tokens (of one account, or all).
    pub fn tokens(&self, account: Option<i64>) -> Result<Vec<TokenInfo>, AccountError> {
        let mut st = self.conn.prepare(
            "SELECT t.rowid, t.name, a.name, t.created_at FROM tokens t
             LEFT JOIN accounts a ON a.id = t.account
             WHERE ?1 IS NULL OR t.account = ?1 ORDER BY t.created_at, t.rowid",
        )?;
        let rows = st.query_map([account], |r| {
            Ok(TokenInfo {
                id: r.get(0)?,
                name: r.get(1)?,
                account: r.get(2)?,
                created_at: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Revokes a token (only one of `account`'s, when given).
    pub fn delete_token(&mut self, id: i64, account: Option<i64>) -> Result<bool, AccountError> {
        let n = self.conn.execute(
            "DELETE FROM tokens WHERE rowid = ?1 AND (?2 IS NULL OR account = ?2)",
            params![id, account],
        )?;
        Ok(n > 0)
    }

    /// Who a bearer token acts for.
    pub fn token_actor(&self, token: &str) -> Result<Option<Actor>, AccountError> {
        let row: Option<(String, Option<i64>)> = self
            .conn
            .query_row(
                "SELECT name, account FROM tokens WHERE hash = ?1",
                [token_hash(token)],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((name, account)) = row else {
            return Ok(None);
        };
        let Some(id) = account else {
            return Ok(Some(Actor {
                account: None,
                name: format!("token:{name}"),
                role: Role::Admin,
                domains: None,
                main: true,
            }));
        };
        let a = self
            .conn
            .query_row(
                &format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = ?1"),
                [id],
                account_of,
            )
            .optional()?;
        Ok(a.filter(|a| !a.disabled).map(|a| {
            let mut actor = actor_of(&a);
            actor.name = format!("{} (token {name})", a.name);
            actor
        }))
    }

    /// Records a change: who, what, on what, and its details.
    pub fn audit(&self, actor: &str, action: &str, target: &str, detail: &str) {
        let r = self.conn.execute(
            "INSERT INTO audit (t, actor, action, target, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![now(), actor, action, target, detail],
        );
        if let Err(e) = r {
            tracing::warn!("cannot write the audit log: {e}");
        }
    }

    pub fn audit_log(&self, limit: usize) -> Result<Vec<AuditEntry>, AccountError> {
        let mut st = self.conn.prepare(
            "SELECT t, actor, action, target, detail FROM audit ORDER BY id DESC LIMIT ?1",
        )?;
        let rows = st.query_map([limit as i64], |r| {
            Ok(AuditEntry {
                t: r.get(0)?,
                actor: r.get(1)?,
                action: r.get(2)?,
                target: r.get(3)?,
                detail: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// Whether `password` opens the account of a [`Store::login_record`]; an unknown name
/// costs as long as a wrong password, so timing does not tell names apart.
pub fn check_login(record: Option<(String, Account)>, password: &str) -> Option<Actor> {
    match record {
        Some((hash, a)) if !a.disabled && verify_password(password, &hash) => Some(actor_of(&a)),
        Some(_) => None,
        None => {
            let _ = verify_password(password, DUMMY_HASH);
            None
        }
    }
}

/// Whether `password` matches a stored hash; with none, the same work is done against a
/// dummy, so the time taken does not tell whether the address has an account.
pub fn check_hash(stored: Option<&str>, password: &str) -> bool {
    match stored {
        Some(h) => verify_password(password, h),
        None => {
            let _ = verify_password(password, DUMMY_HASH);
            false
        }
    }
}

/// An argon2 hash of nothing anyone types, verified against when the name is unknown.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$0P6WVP1a0o6UB3dXAVmkFRCtk5NwfuPmnhGqwYkf2T8";

/// Failed logins, by name and by client address: past the limit, logins are refused
/// without checking the password until the window has passed.
pub struct Throttle {
    inner: Mutex<HashMap<String, (u32, Instant)>>,
    pub per_name: u32,
    pub per_ip: u32,
    pub window: Duration,
}

impl Default for Throttle {
    fn default() -> Throttle {
        Throttle {
            inner: Mutex::new(HashMap::new()),
            per_name: 5,
            per_ip: 20,
            window: Duration::from_secs(900),
        }
    }
}

impl Throttle {
    fn keys(name: &str, ip: &str) -> [(String, bool); 2] {
        [
            (format!("n:{}", name.to_ascii_lowercase()), true),
            (format!("i:{ip}"), false),
        ]
    }

    /// How long until `name` from `ip` may try again, if it may not now.
    pub fn blocked(&self, name: &str, ip: &str) -> Option<Duration> {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut wait = None;
        for (k, by_name) in Throttle::keys(name, ip) {
            let limit = if by_name { self.per_name } else { self.per_ip };
            if let Some((n, since)) = map.get(&k)
                && *n >= limit
                && since.elapsed() < self.window
            {
                let left = self.window - since.elapsed();
                wait = Some(wait.map_or(left, |w: Duration| w.max(left)));
            }
        }
        wait
    }

    pub fn failed(&self, name: &str, ip: &str) {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 100_000 {
            let window = self.window;
            map.retain(|_, (_, since)| since.elapsed() < window);
        }
        for (k, _) in Throttle::keys(name, ip) {
            let e = map.entry(k).or_insert((0, Instant::now()));
            if e.1.elapsed() >= self.window {
                *e = (0, Instant::now());
            }
            e.0 += 1;
        }
    }

    pub fn succeeded(&self, name: &str) {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&format!("n:{}", name.to_ascii_lowercase()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(name: &str) -> Store {
        let p = std::env::temp_dir().join(format!(
            "bulwark-accounts-{name}-{}.sqlite",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&p);
        Store::open(&p).unwrap()
    }

    #[test]
    fn the_first_account_is_the_main_administrator_and_the_limit_holds() {
        let mut s = store("limit");
        let main = s
            .create_account(
                "root",
                "correct horse battery",
                Role::ReadOnly,
                &["a.test".into()],
                3,
            )
            .unwrap();
        assert!(main.main);
        assert_eq!(main.role, Role::Admin);
        assert!(main.domains.is_empty());
        let sub = s
            .create_account(
                "ops",
                "another long secret",
                Role::Quarantine,
                &["a.test".into()],
                3,
            )
            .unwrap();
        assert!(!sub.main);
        s.create_account("ro", "yet another secret", Role::ReadOnly, &[], 3)
            .unwrap();
        let e = s
            .create_account("four", "too many accounts", Role::ReadOnly, &[], 3)
            .unwrap_err();
        assert!(e.to_string().contains("max_accounts"), "{e}");
        assert!(matches!(
            s.create_account("OPS", "another long secret", Role::ReadOnly, &[], 10),
            Err(AccountError::Exists(_))
        ));
        assert!(s.delete_account("root").is_err());
        assert!(
            s.update_account("root", Some(Role::ReadOnly), None, None, None)
                .is_err()
        );
    }

    #[test]
    fn logins_sessions_and_tokens_carry_the_accounts_scopes() {
        let mut s = store("login");
        s.create_account("root", "correct horse battery", Role::Admin, &[], 100)
            .unwrap();
        s.create_account(
            "ops",
            "another long secret",
            Role::Quarantine,
            &["a.test".into()],
            100,
        )
        .unwrap();
        assert!(s.verify_login("ops", "wrong password!").unwrap().is_none());
        assert!(
            s.verify_login("nobody", "whatever it is")
                .unwrap()
                .is_none()
        );
        let a = s
            .verify_login("ops", "another long secret")
            .unwrap()
            .unwrap();
        assert_eq!(a.role, Role::Quarantine);
        assert!(a.covers("A.TEST") && !a.covers("b.test"));
        assert!(a.covers_address("u@a.test") && !a.covers_address("u@b.test"));
        let (token, csrf) = s.create_session(a.account.unwrap()).unwrap();
        let (b, c) = s.session(&token).unwrap().unwrap();
        assert_eq!((b.name.as_str(), c), ("ops", csrf));
        s.end_session(&token).unwrap();
        assert!(s.session(&token).unwrap().is_none());
        let t = s.create_account_token(a.account, "script").unwrap();
        let by_token = s.token_actor(&t).unwrap().unwrap();
        assert_eq!(by_token.role, Role::Quarantine);
        assert_eq!(by_token.domains, Some(vec!["a.test".to_string()]));
        // Disabled: no login, no session, no token.
        let (token, _) = s.create_session(a.account.unwrap()).unwrap();
        s.update_account("ops", None, None, None, Some(true))
            .unwrap();
        assert!(
            s.verify_login("ops", "another long secret")
                .unwrap()
                .is_none()
        );
        assert!(s.session(&token).unwrap().is_none());
        assert!(s.token_actor(&t).unwrap().is_none());
        // The stored password is an argon2 hash, not the password.
        let stored: String = s
            .conn
            .query_row(
                "SELECT password FROM accounts WHERE name = 'ops'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(stored.starts_with("$argon2id$"), "{stored}");
    }

    #[test]
    fn the_throttle_stops_guessing_by_name_and_by_address() {
        let t = Throttle::default();
        for _ in 0..5 {
            assert!(t.blocked("root", "192.0.2.1").is_none());
            t.failed("root", "192.0.2.1");
        }
        assert!(t.blocked("root", "192.0.2.9").is_some());
        assert!(t.blocked("other", "192.0.2.1").is_none());
        for i in 0..20 {
            t.failed(&format!("n{i}"), "198.51.100.1");
        }
        assert!(t.blocked("fresh", "198.51.100.1").is_some());
    }

    #[test]
    fn the_dummy_hash_is_a_valid_argon2_hash() {
        assert!(PasswordHash::new(DUMMY_HASH).is_ok());
    }
}
