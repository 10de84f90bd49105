//! End users of the quarantine console: recipients in a managed domain's directory who
//! registered (an activation link mailed to them), their sessions, their own approved
//! senders (compiled into the policy snapshot, applied by the engine), whether they
//! want the daily digest; signed links for the digest's one-click releases; and the
//! text of the mail the console sends.

use std::collections::HashSet;

use hmac::{Hmac, Mac};
use rusqlite::{OptionalExtension, params};
use sha2::Sha256;

use crate::accounts::AccountError;
use crate::store::{Store, StoreError, now, token_hash};

/// How long an activation link works.
pub const ACTIVATION_LIFETIME: i64 = 24 * 3600;
/// How long a password reset link works.
pub const RESET_LIFETIME: i64 = 3600;
/// How long a digest's release links work.
pub const RELEASE_LINK_LIFETIME: i64 = 7 * 24 * 3600;
/// Account mail to one address at most this often per hour (registration and resets).
pub const LINKS_PER_HOUR: i64 = 3;
/// An end user's session lasts this long.
pub const SESSION_LIFETIME: i64 = 12 * 3600;
/// Personal approved senders per user at most.
pub const MAX_PERSONAL_SENDERS: i64 = 500;

/// Why a link was mailed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Activate,
    Reset,
}

impl Purpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Activate => "activate",
            Purpose::Reset => "reset",
        }
    }
    fn parse(s: &str) -> Option<Purpose> {
        match s {
            "activate" => Some(Purpose::Activate),
            "reset" => Some(Purpose::Reset),
            _ => None,
        }
    }
}

/// What a registration or reset request came to.
#[derive(Debug, PartialEq, Eq)]
pub enum LinkRequest {
    /// Mail this link token to the address.
    Send(Purpose, String),
    /// The address is not in a managed domain's directory (the page does not say so).
    Unknown,
    /// Too many links to this address in the last hour.
    TooMany,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct EndUser {
    pub address: String,
    pub active: bool,
    pub digest: bool,
    pub created_at: i64,
}

/// A signed-in end user.
#[derive(Debug, Clone)]
pub struct UserSession {
    pub address: String,
    pub csrf: String,
}

fn random_token() -> Result<String, StoreError> {
    let mut raw = [0u8; 24];
    getrandom::fill(&mut raw).map_err(|e| StoreError::Random(e.to_string()))?;
    Ok(raw.iter().map(|b| format!("{b:02x}")).collect())
}

/// Lower case, trimmed, and shaped like an address, or `None`.
pub fn normalize_address(a: &str) -> Option<String> {
    let a = a.trim().to_ascii_lowercase();
    bulwark_policy::address::check_directory_address(&a)
        .is_ok()
        .then_some(a)
}

impl Store {
    /// Whether `address` is listed in the directory of a managed domain.
    pub fn in_directory(&self, address: &str) -> Result<bool, StoreError> {
        let Some((_, domain)) = address.rsplit_once('@') else {
            return Ok(false);
        };
        Ok(self
            .conn
            .query_row(
                "SELECT 1 FROM directory WHERE domain = ?1 AND address = ?2 COLLATE NOCASE",
                params![domain.to_ascii_lowercase(), address],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    pub fn end_user(&self, address: &str) -> Result<Option<EndUser>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT address, active, digest, created_at FROM end_users WHERE address = ?1",
                [address],
                |r| {
                    Ok(EndUser {
                        address: r.get(0)?,
                        active: r.get(1)?,
                        digest: r.get(2)?,
                        created_at: r.get(3)?,
                    })
                },
            )
            .optional()?)
    }

    pub fn end_users(&self) -> Result<Vec<EndUser>, StoreError> {
        let mut st = self.conn.prepare(
            "SELECT address, active, digest, created_at FROM end_users ORDER BY address",
        )?;
        let rows = st.query_map([], |r| {
            Ok(EndUser {
                address: r.get(0)?,
                active: r.get(1)?,
                digest: r.get(2)?,
                created_at: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// A registration or a forgotten password for `address`: a link to mail, when the
    /// address may have one. An address with an active account gets a reset link, any
    /// other an activation link (the pages say the same either way, so they tell
    /// nobody who is registered).
    pub fn request_link(&mut self, address: &str) -> Result<LinkRequest, StoreError> {
        if !self.in_directory(address)? {
            return Ok(LinkRequest::Unknown);
        }
        let t = now();
        let tx = self.conn.transaction()?;
        tx.execute("DELETE FROM end_user_links WHERE expires_at < ?1", [t])?;
        let recent: i64 = tx.query_row(
            "SELECT COUNT(*) FROM end_user_links WHERE address = ?1 AND created_at > ?2",
            params![address, t - 3600],
            |r| r.get(0),
        )?;
        if recent >= LINKS_PER_HOUR {
            return Ok(LinkRequest::TooMany);
        }
        let active: Option<bool> = tx
            .query_row(
                "SELECT active FROM end_users WHERE address = ?1",
                [address],
                |r| r.get(0),
            )
            .optional()?;
        // A reset for an address that never activated is its activation.
        let purpose = if active == Some(true) {
            Purpose::Reset
        } else {
            Purpose::Activate
        };
        if active.is_none() {
            tx.execute(
                "INSERT INTO end_users (address, created_at) VALUES (?1, ?2)",
                params![address, t],
            )?;
        }
        let token = random_token()?;
        let lifetime = match purpose {
            Purpose::Activate => ACTIVATION_LIFETIME,
            Purpose::Reset => RESET_LIFETIME,
        };
        tx.execute(
            "INSERT INTO end_user_links (hash, address, purpose, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![token_hash(&token), address, purpose.as_str(), t, t + lifetime],
        )?;
        tx.commit()?;
        Ok(LinkRequest::Send(purpose, token))
    }

    /// The address and purpose of a live link, without using it up.
    pub fn link(&self, token: &str) -> Result<Option<(String, Purpose)>, StoreError> {
        let row: Option<(String, String)> = self
            .conn
            .query_row(
                "SELECT address, purpose FROM end_user_links WHERE hash = ?1 AND expires_at > ?2",
                params![token_hash(token), now()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        Ok(row.and_then(|(a, p)| Purpose::parse(&p).map(|p| (a, p))))
    }

    /// Sets the password (its argon2 `hash`) through a live link: the account is
    /// active, every link of the address is used up and every other session of it
    /// ends. Returns the address; `None` when the link is not live.
    pub fn use_link_hashed(
        &mut self,
        token: &str,
        hash: &str,
    ) -> Result<Option<String>, StoreError> {
        let Some((address, _)) = self.link(token)? else {
            return Ok(None);
        };
        let tx = self.conn.transaction()?;
        tx.execute(
            "UPDATE end_users SET password = ?2, active = 1, activated_at = COALESCE(activated_at, ?3) WHERE address = ?1",
            params![address, hash, now()],
        )?;
        tx.execute("DELETE FROM end_user_links WHERE address = ?1", [&address])?;
        tx.execute(
            "DELETE FROM end_user_sessions WHERE address = ?1",
            [&address],
        )?;
        tx.commit()?;
        Ok(Some(address))
    }

    /// The stored hash of an active end user's password.
    pub fn end_user_password(&self, address: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT password FROM end_users WHERE address = ?1 AND active = 1",
                [address],
                |r| r.get(0),
            )
            .optional()?)
    }

    pub fn create_user_session(&mut self, address: &str) -> Result<(String, String), StoreError> {
        let (token, csrf) = (random_token()?, random_token()?);
        let t = now();
        self.conn
            .execute("DELETE FROM end_user_sessions WHERE expires_at < ?1", [t])?;
        self.conn.execute(
            "INSERT INTO end_user_sessions (hash, address, csrf, expires_at) VALUES (?1, ?2, ?3, ?4)",
            params![token_hash(&token), address, csrf, t + SESSION_LIFETIME],
        )?;
        Ok((token, csrf))
    }

    pub fn user_session(&self, token: &str) -> Result<Option<UserSession>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT s.address, s.csrf FROM end_user_sessions s JOIN end_users u ON u.address = s.address
                 WHERE s.hash = ?1 AND s.expires_at > ?2 AND u.active = 1",
                params![token_hash(token), now()],
                |r| {
                    Ok(UserSession {
                        address: r.get(0)?,
                        csrf: r.get(1)?,
                    })
                },
            )
            .optional()?)
    }

    pub fn close_user_session(&mut self, token: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "DELETE FROM end_user_sessions WHERE hash = ?1",
            [token_hash(token)],
        )?;
        Ok(())
    }

    /// Removes an end user: their account, sessions, links and approved senders (they
    /// may register again while their address is in a directory). Returns the new
    /// generation when they had approved senders.
    pub fn remove_end_user(&mut self, address: &str) -> Result<Option<u64>, StoreError> {
        let tx = self.conn.transaction()?;
        if tx.execute("DELETE FROM end_users WHERE address = ?1", [address])? == 0 {
            return Err(StoreError::NotFound(address.to_string()));
        }
        let generation =
            if tx.execute("DELETE FROM personal_senders WHERE address = ?1", [address])? > 0 {
                Some(crate::store::bump(&tx)?)
            } else {
                None
            };
        tx.commit()?;
        Ok(generation)
    }

    pub fn set_digest(&mut self, address: &str, on: bool) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE end_users SET digest = ?2 WHERE address = ?1",
            params![address, on],
        )?;
        Ok(())
    }

    /// Addresses that turned the digest off.
    pub fn digest_opt_outs(&self) -> Result<std::collections::HashSet<String>, StoreError> {
        let mut st = self
            .conn
            .prepare("SELECT address FROM end_users WHERE digest = 0")?;
        let rows = st.query_map([], |r| r.get::<_, String>(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn personal_senders(&self, address: &str) -> Result<Vec<String>, StoreError> {
        let mut st = self
            .conn
            .prepare("SELECT pattern FROM personal_senders WHERE address = ?1 ORDER BY pattern")?;
        let rows = st.query_map([address], |r| r.get::<_, String>(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every personal list, by address: for the compiled policy.
    pub fn all_personal_senders(&self) -> Result<Vec<(String, String)>, StoreError> {
        let mut st = self
            .conn
            .prepare("SELECT address, pattern FROM personal_senders ORDER BY address, pattern")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Adds `pattern` to `address`'s approved senders; returns the new generation.
    pub fn add_personal_sender(
        &mut self,
        address: &str,
        pattern: &str,
    ) -> Result<u64, AccountError> {
        let pattern = pattern.trim().to_ascii_lowercase();
        bulwark_policy::address::check_sender_pattern(&pattern).map_err(|m| {
            AccountError::Invalid {
                field: "sender",
                message: m,
            }
        })?;
        let tx = self.conn.transaction()?;
        let n: i64 = tx.query_row(
            "SELECT COUNT(*) FROM personal_senders WHERE address = ?1",
            [address],
            |r| r.get(0),
        )?;
        if n >= MAX_PERSONAL_SENDERS {
            return Err(AccountError::Invalid {
                field: "sender",
                message: format!("at most {MAX_PERSONAL_SENDERS} approved senders"),
            });
        }
        tx.execute(
            "INSERT INTO personal_senders (address, pattern, created_at) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
            params![address, pattern, now()],
        )?;
        let generation = crate::store::bump(&tx)?;
        tx.commit()?;
        Ok(generation)
    }

    pub fn remove_personal_sender(
        &mut self,
        address: &str,
        pattern: &str,
    ) -> Result<u64, StoreError> {
        let tx = self.conn.transaction()?;
        if tx.execute(
            "DELETE FROM personal_senders WHERE address = ?1 AND pattern = ?2",
            params![address, pattern],
        )? == 0
        {
            return Err(StoreError::NotListed(pattern.to_string()));
        }
        let generation = crate::store::bump(&tx)?;
        tx.commit()?;
        Ok(generation)
    }

    /// The key that signs the digest's release links, made on first use.
    pub fn link_key(&self) -> Result<Vec<u8>, StoreError> {
        let existing: Option<Vec<u8>> = self
            .conn
            .query_row(
                "SELECT value FROM secrets WHERE name = 'link_key'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(k) = existing {
            return Ok(k);
        }
        let mut k = vec![0u8; 32];
        getrandom::fill(&mut k).map_err(|e| StoreError::Random(e.to_string()))?;
        self.conn.execute(
            "INSERT OR IGNORE INTO secrets (name, value) VALUES ('link_key', ?1)",
            [&k],
        )?;
        Ok(self.conn.query_row(
            "SELECT value FROM secrets WHERE name = 'link_key'",
            [],
            |r| r.get(0),
        )?)
    }

    /// The day (days since 1970) the scheduled digest last went out.
    pub fn digest_day(&self) -> Result<Option<i64>, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'digest_day'", [], |r| {
                r.get(0)
            })
            .optional()?)
    }

    pub fn set_digest_day(&mut self, day: i64) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES ('digest_day', ?1) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [day],
        )?;
        Ok(())
    }

    /// The (message, recipient) pairs already listed in a digest.
    pub fn digested(&self) -> Result<HashSet<(String, String)>, StoreError> {
        let mut st = self.conn.prepare("SELECT id, address FROM digested")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn mark_digested(&mut self, address: &str, ids: &[&str]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        {
            let mut st =
                tx.prepare("INSERT OR IGNORE INTO digested (id, address) VALUES (?1, ?2)")?;
            for id in ids {
                st.execute(params![id, address])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Forgets the pairs no longer held (released, deleted or expired).
    pub fn forget_digested(&mut self, held: &HashSet<(String, String)>) -> Result<(), StoreError> {
        let gone: Vec<(String, String)> = self
            .digested()?
            .into_iter()
            .filter(|p| !held.contains(p))
            .collect();
        let tx = self.conn.transaction()?;
        {
            let mut st = tx.prepare("DELETE FROM digested WHERE id = ?1 AND address = ?2")?;
            for (id, a) in &gone {
                st.execute(params![id, a])?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}

/// The signature of a one-click release: message `id` for `rcpt`, until `expires`.
pub fn sign_release(key: &[u8], id: &str, rcpt: &str, expires: i64) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return String::new();
    };
    mac.update(format!("release\n{id}\n{}\n{expires}", rcpt.to_ascii_lowercase()).as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `sig` signs that release and it has not expired.
pub fn check_release(key: &[u8], id: &str, rcpt: &str, expires: i64, sig: &str) -> bool {
    let Some(raw) = (0..sig.len())
        .step_by(2)
        .map(|i| {
            sig.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
    else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return false;
    };
    mac.update(format!("release\n{id}\n{}\n{expires}", rcpt.to_ascii_lowercase()).as_bytes());
    expires > now() && mac.verify_slice(&raw).is_ok()
}

/// A header field value as RFC 2047 UTF-8 words when it is not plain ASCII.
fn header_text(v: &str) -> String {
    let v: String = v.chars().filter(|c| !c.is_control()).collect();
    if v.is_ascii() {
        return v;
    }
    // Encoded words of at most 75 characters: 45 octets of text in base64 is 60.
    let mut out = Vec::new();
    let mut chunk = String::new();
    for c in v.chars() {
        if chunk.len() + c.len_utf8() > 45 {
            out.push(encoded_word(&chunk));
            chunk.clear();
        }
        chunk.push(c);
    }
    if !chunk.is_empty() {
        out.push(encoded_word(&chunk));
    }
    out.join("\r\n ")
}

fn encoded_word(s: &str) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut e = String::new();
    for c in b.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                e.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                e.push('=');
            }
        }
    }
    format!("=?UTF-8?B?{e}?=")
}

/// A whole plain-text message from the console.
pub fn compose(from: &str, to: &str, subject: &str, body: &str) -> String {
    let t = now();
    let mut id = [0u8; 12];
    let _ = getrandom::fill(&mut id);
    let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let host = from.rsplit_once('@').map_or("localhost", |(_, d)| d);
    let date = httpdate(t);
    let ascii = body.is_ascii();
    format!(
        "From: Bulwark quarantine <{from}>\r\nTo: <{to}>\r\nSubject: {}\r\nDate: {date}\r\nMessage-ID: <{id}@{host}>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: {}\r\nAuto-Submitted: auto-generated\r\n\r\n{}",
        header_text(subject),
        if ascii { "7bit" } else { "8bit" },
        body.replace("\r\n", "\n").replace('\n', "\r\n")
    )
}

/// An RFC 5322 date in UTC.
fn httpdate(t: i64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = t.div_euclid(86400);
    let secs = t.rem_euclid(86400);
    let (y, m, d) = crate::tracking::civil_from_days(days);
    format!(
        "{}, {d} {} {y} {:02}:{:02}:{:02} +0000",
        DAYS[days.rem_euclid(7) as usize],
        MONTHS[(m as usize).saturating_sub(1) % 12],
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// The activation or reset mail.
pub fn link_mail(from: &str, to: &str, purpose: Purpose, url: &str) -> String {
    let (subject, what, hours) = match purpose {
        Purpose::Activate => (
            "Activate your quarantine account",
            "Someone (we hope you) asked for an account on the mail quarantine console for this address.\nTo choose your password and activate the account, open this link",
            ACTIVATION_LIFETIME / 3600,
        ),
        Purpose::Reset => (
            "Reset your quarantine password",
            "Someone (we hope you) asked to reset the password of your mail quarantine account.\nTo choose a new password, open this link",
            RESET_LIFETIME / 3600,
        ),
    };
    let body = format!(
        "{what} within {hours} hour{}:\n\n{url}\n\nIf you did not ask for this, ignore this message: nothing changes.\n",
        if hours == 1 { "" } else { "s" }
    );
    compose(from, to, subject, &body)
}

/// One quarantined message as a digest lists it.
pub struct DigestEntry {
    pub id: String,
    pub arrival: i64,
    pub sender: String,
    pub subject: String,
    pub verdict: String,
}

/// Entries listed in one digest at most; the rest are counted.
pub const DIGEST_MAX: usize = 100;

/// The digest for `to`: each new quarantined message with its release link.
pub fn digest_mail(
    from: &str,
    to: &str,
    console_url: &str,
    key: &[u8],
    entries: &[DigestEntry],
) -> String {
    let expires = now() + RELEASE_LINK_LIFETIME;
    let n = entries.len();
    let mut body = format!(
        "{n} new message{} to {to} {} held in quarantine since the last digest.\n\
         Release one with its link (it works for {} days, no sign-in needed), or sign in\n\
         to see, release or delete them all: {console_url}/quarantine/\n\n",
        if n == 1 { "" } else { "s" },
        if n == 1 { "was" } else { "were" },
        RELEASE_LINK_LIFETIME / 86400,
    );
    for e in entries.iter().take(DIGEST_MAX) {
        // "2026-12-02T03:00:36Z" as "2026-12-02 03:00 UTC".
        let at = crate::tracking::rfc3339(e.arrival * 1000);
        let clean = |s: &str| -> String {
            s.chars()
                .filter(|c| !c.is_control())
                .take(120)
                .collect::<String>()
        };
        let sig = sign_release(key, &e.id, to, expires);
        body.push_str(&format!(
            "{} {} UTC  From: {}\n  Subject: {}\n  Why: {}\n  Release: {console_url}/quarantine/release?id={}&to={}&exp={expires}&sig={sig}\n\n",
            at.get(..10).unwrap_or(""),
            at.get(11..16).unwrap_or(""),
            clean(if e.sender.is_empty() { "<>" } else { &e.sender }),
            clean(if e.subject.is_empty() { "(no subject)" } else { &e.subject }),
            clean(&e.verdict),
            crate::web::url_encode(&e.id),
            crate::web::url_encode(to),
        ));
    }
    if n > DIGEST_MAX {
        body.push_str(&format!(
            "... and {} more: sign in to see them all.\n\n",
            n - DIGEST_MAX
        ));
    }
    body.push_str("You can turn this digest off on the console's Settings page.\n");
    compose(
        from,
        to,
        &format!(
            "Quarantine digest: {n} new message{}",
            if n == 1 { "" } else { "s" }
        ),
        &body,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(name: &str) -> Store {
        let p = std::env::temp_dir().join(format!(
            "bulwark-endusers-{name}-{}.sqlite",
            std::process::id()
        ));
        for ext in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{ext}", p.display()));
        }
        let mut s = Store::open(&p).unwrap();
        s.add_domain("example.test", "127.0.0.1", 25, "opportunistic", "")
            .unwrap();
        s.import_directory(
            "example.test",
            &[crate::csv::Entry {
                address: "alice@example.test".into(),
                name: "Alice".into(),
            }],
        )
        .unwrap();
        s
    }

    #[test]
    fn registration_needs_a_directory_address_and_a_link_activates_once() {
        let mut s = store("register");
        assert_eq!(
            s.request_link("mallory@example.test").unwrap(),
            LinkRequest::Unknown
        );
        assert_eq!(
            s.request_link("alice@other.test").unwrap(),
            LinkRequest::Unknown
        );
        let LinkRequest::Send(Purpose::Activate, token) =
            s.request_link("alice@example.test").unwrap()
        else {
            panic!("no activation link")
        };
        assert!(s.end_user_password("alice@example.test").unwrap().is_none());
        let hash = crate::accounts::hash_password("a long enough password").unwrap();
        assert_eq!(s.link(&token).unwrap().unwrap().1, Purpose::Activate);
        assert_eq!(
            s.use_link_hashed(&token, &hash).unwrap(),
            Some("alice@example.test".into())
        );
        let stored = s.end_user_password("alice@example.test").unwrap();
        assert!(crate::accounts::check_hash(
            stored.as_deref(),
            "a long enough password"
        ));
        // Used up.
        assert_eq!(s.use_link_hashed(&token, &hash).unwrap(), None);
        assert!(s.link(&token).unwrap().is_none());
        // Registering again mails a reset link instead.
        assert!(matches!(
            s.request_link("alice@example.test").unwrap(),
            LinkRequest::Send(Purpose::Reset, _)
        ));
    }

    #[test]
    fn account_mail_to_one_address_is_limited_per_hour() {
        let mut s = store("limit");
        for _ in 0..LINKS_PER_HOUR {
            assert!(matches!(
                s.request_link("alice@example.test").unwrap(),
                LinkRequest::Send(..)
            ));
        }
        assert_eq!(
            s.request_link("alice@example.test").unwrap(),
            LinkRequest::TooMany
        );
    }

    #[test]
    fn release_links_are_bound_to_message_recipient_and_time() {
        let key = b"0123456789abcdef0123456789abcdef";
        let exp = now() + 60;
        let sig = sign_release(key, "ID1", "Alice@example.test", exp);
        assert!(check_release(key, "ID1", "alice@example.test", exp, &sig));
        assert!(!check_release(key, "ID2", "alice@example.test", exp, &sig));
        assert!(!check_release(key, "ID1", "bob@example.test", exp, &sig));
        assert!(!check_release(
            key,
            "ID1",
            "alice@example.test",
            exp + 1,
            &sig
        ));
        assert!(!check_release(
            b"another key",
            "ID1",
            "alice@example.test",
            exp,
            &sig
        ));
        assert!(!check_release(key, "ID1", "alice@example.test", exp, "zz"));
        let old = now() - 1;
        let sig = sign_release(key, "ID1", "alice@example.test", old);
        assert!(!check_release(key, "ID1", "alice@example.test", old, &sig));
    }

    #[test]
    fn mail_headers_are_encoded_and_free_of_injected_lines() {
        let m = compose(
            "q@mx.test",
            "alice@example.test",
            "Digest: café\r\nBcc: x@evil.test",
            "hello\n",
        );
        let header = m.split("\r\n\r\n").next().unwrap();
        assert!(
            !header.split("\r\n").any(|l| l.starts_with("Bcc")),
            "{header}"
        );
        assert!(header.contains("=?UTF-8?B?"), "{header}");
        let plain = compose("q@mx.test", "a@example.test", "x\r\nBcc: y@evil.test", "");
        let header = plain.split("\r\n\r\n").next().unwrap();
        assert!(
            !header.split("\r\n").any(|l| l.starts_with("Bcc")),
            "{header}"
        );
        assert!(header.contains("Subject: xBcc: y@evil.test"), "{header}");
        assert!(m.ends_with("hello\r\n"));
        assert_eq!(httpdate(0), "Thu, 1 Jan 1970 00:00:00 +0000");
    }
}
