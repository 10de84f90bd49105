//! The embedded tracking store: one SQLite file per day (`YYYY-MM-DD.sqlite` in the
//! store's directory), so retention is removing a file. Each holds the messages (and
//! refused connections and commands) of its day, their recipients, their events, a
//! trigram index of subjects and hourly counts for the dashboards.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use rusqlite::types::Value as Sql;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::{
    DAY_MS, Ingested, Query, Recipient, Row, Timeline, TrackingError, TrackingIngest,
    TrackingSearch, Traffic, Volume, arrival_of, day_name, domain_of,
};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    qid TEXT,
    blocked INTEGER NOT NULL DEFAULT 0,
    first_t INTEGER NOT NULL,
    last_t INTEGER NOT NULL,
    kind TEXT NOT NULL DEFAULT '',
    ip TEXT NOT NULL DEFAULT '',
    helo TEXT NOT NULL DEFAULT '',
    tls INTEGER,
    sender TEXT NOT NULL DEFAULT '',
    sender_domain TEXT NOT NULL DEFAULT '',
    subject TEXT NOT NULL DEFAULT '',
    size INTEGER,
    verdict TEXT NOT NULL DEFAULT '',
    score REAL,
    rules TEXT NOT NULL DEFAULT '',
    action TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL DEFAULT '',
    reply TEXT NOT NULL DEFAULT ''
);
CREATE UNIQUE INDEX IF NOT EXISTS messages_qid ON messages(qid) WHERE qid IS NOT NULL;
CREATE INDEX IF NOT EXISTS messages_time ON messages(first_t);
CREATE INDEX IF NOT EXISTS messages_sender ON messages(sender);
CREATE INDEX IF NOT EXISTS messages_sender_domain ON messages(sender_domain);
CREATE INDEX IF NOT EXISTS messages_ip ON messages(ip);
CREATE TABLE IF NOT EXISTS recipients (
    msg INTEGER NOT NULL,
    rcpt TEXT NOT NULL,
    domain TEXT NOT NULL,
    status TEXT NOT NULL,
    t INTEGER NOT NULL,
    PRIMARY KEY (msg, rcpt)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS recipients_rcpt ON recipients(rcpt);
CREATE INDEX IF NOT EXISTS recipients_domain ON recipients(domain);
CREATE TABLE IF NOT EXISTS events (
    msg INTEGER NOT NULL,
    id INTEGER NOT NULL,
    t INTEGER NOT NULL,
    line TEXT NOT NULL,
    PRIMARY KEY (msg, id)
) WITHOUT ROWID;
CREATE VIRTUAL TABLE IF NOT EXISTS subjects USING fts5(subject, content='', tokenize='trigram', detail='none');
CREATE TABLE IF NOT EXISTS counts (
    hour INTEGER NOT NULL,
    name TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (hour, name)
) WITHOUT ROWID;
";

/// Each day is split by message into this many files, written by as many threads at
/// once (SQLite has one writer per file) and searched together.
pub const SHARDS: usize = 2;

/// Days kept open for writing at once.
const OPEN_WRITERS: usize = 4;

/// The shard of a message (by its queue id), or of an event without one (by its key).
/// FNV-1a: stable across versions and runs.
fn shard_of(qid: &str, key: i64) -> usize {
    if qid.is_empty() {
        return key.rem_euclid(SHARDS as i64) as usize;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in qid.bytes() {
        h = (h ^ u64::from(b.to_ascii_uppercase())).wrapping_mul(0x0100_0000_01b3);
    }
    (h % SHARDS as u64) as usize
}

/// Searches over the partitions in a directory (opened read-only per search).
#[derive(Debug, Clone)]
pub struct SqliteSearch {
    dir: PathBuf,
}

impl SqliteSearch {
    pub fn new(dir: &Path) -> SqliteSearch {
        SqliteSearch {
            dir: dir.to_path_buf(),
        }
    }

    /// A day's file of one shard: `YYYY-MM-DD.sqlite` for the first (as a store of one
    /// shard had it), `YYYY-MM-DD.N.sqlite` for the others.
    pub fn path(&self, day: i64, shard: usize) -> PathBuf {
        match shard {
            0 => self.dir.join(format!("{}.sqlite", day_name(day))),
            n => self.dir.join(format!("{}.{n}.sqlite", day_name(day))),
        }
    }

    /// The days that have a partition, oldest first.
    pub fn days(&self) -> Result<Vec<i64>, TrackingError> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.dir)? {
            let name = e?.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(day) = name.strip_suffix(".sqlite") else {
                continue;
            };
            if let Ok(ms) = super::parse_time(day, 0)
                && day.len() == 10
            {
                out.push(day_of_ms(ms));
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    fn reader(&self, day: i64, shard: usize) -> Result<Option<Connection>, TrackingError> {
        let path = self.path(day, shard);
        if !path.exists() {
            return Ok(None);
        }
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(Some(conn))
    }
}

/// The ingesting side: the partitions open for writing.
pub struct SqliteTracking {
    search: SqliteSearch,
    retention_days: i64,
    /// Each open day's connections, one per shard.
    writers: HashMap<i64, Vec<Connection>>,
    /// Use order of `writers`, most recent last.
    recent: Vec<i64>,
    /// Events dropped because their day is past the retention.
    pub expired_events: u64,
}

fn day_of_ms(ms: i64) -> i64 {
    ms.div_euclid(DAY_MS)
}

/// The partition an event belongs to: its message's arrival day, else its own.
fn partition(ev: &super::Event) -> i64 {
    if !ev.qid.is_empty()
        && let Some(a) = arrival_of(&ev.qid)
    {
        return day_of_ms(a);
    }
    day_of_ms(ev.t)
}

fn lower(s: &str) -> String {
    s.to_lowercase()
}

impl SqliteTracking {
    pub fn open(dir: &Path, retention_days: i64) -> Result<SqliteTracking, TrackingError> {
        std::fs::create_dir_all(dir)?;
        Ok(SqliteTracking {
            search: SqliteSearch::new(dir),
            retention_days,
            writers: HashMap::new(),
            recent: Vec::new(),
            expired_events: 0,
        })
    }

    /// A day's connections (opened, and its files created, on first use).
    fn take_writers(&mut self, day: i64) -> Result<Vec<Connection>, TrackingError> {
        self.recent.retain(|d| *d != day);
        if let Some(w) = self.writers.remove(&day) {
            return Ok(w);
        }
        while self.writers.len() >= OPEN_WRITERS && !self.recent.is_empty() {
            let old = self.recent.remove(0);
            self.writers.remove(&old);
        }
        (0..SHARDS)
            .map(|shard| {
                let conn = Connection::open(self.search.path(day, shard))?;
                conn.execute_batch(
                    "PRAGMA page_size=8192; PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA cache_size=-131072;
                     PRAGMA wal_autocheckpoint=16384; PRAGMA temp_store=MEMORY;",
                )?;
                conn.execute_batch(SCHEMA)?;
                conn.set_prepared_statement_cache_capacity(64);
                Ok(conn)
            })
            .collect()
    }

    fn put_writers(&mut self, day: i64, w: Vec<Connection>) {
        self.recent.push(day);
        self.writers.insert(day, w);
    }
}

/// Applies one day's events of one shard in one transaction; how many were new.
fn apply_batch(conn: &mut Connection, events: &[&Ingested]) -> Result<usize, TrackingError> {
    let tx = conn.transaction()?;
    let mut new = 0;
    let mut counts: BTreeMap<(i64, String), i64> = BTreeMap::new();
    let mut ids: HashMap<String, i64> = HashMap::new();
    let mut plan = Fold::plan(events);
    for e in events {
        if apply(&tx, e, &mut ids, &mut counts, &mut plan)? {
            new += 1;
        }
    }
    {
        let mut up = tx.prepare_cached(
            "INSERT INTO counts (hour, name, n) VALUES (?1, ?2, ?3)
             ON CONFLICT (hour, name) DO UPDATE SET n = n + excluded.n",
        )?;
        for ((hour, name), n) in counts {
            up.execute(params![hour, name, n])?;
        }
    }
    tx.commit()?;
    Ok(new)
}

fn is_outcome(ev: &str) -> bool {
    matches!(ev, "delivered" | "deferred" | "bounced" | "expired")
}

/// Delivery outcomes that follow their message's `accepted` in the same batch (as nearly
/// all do: a delivery takes milliseconds) are folded into the message's first write: its
/// recipients are inserted with their outcome and the message with its final status,
/// last time and reply, instead of an update of both per outcome. Only their timeline
/// rows are written when their turn comes. A message with any other event after its
/// `accepted` in the batch is not folded.
#[derive(Default)]
struct Fold<'a> {
    /// By the key of an `accepted` event: the outcomes to fold into it, in order.
    later: HashMap<i64, Vec<&'a Ingested>>,
    /// Keys of outcomes already folded into their message.
    folded: std::collections::HashSet<i64>,
}

impl<'a> Fold<'a> {
    fn plan(events: &[&'a Ingested]) -> Fold<'a> {
        let mut accepted: HashMap<&str, i64> = HashMap::new();
        let mut spoiled: std::collections::HashSet<&str> = std::collections::HashSet::new();
        let mut later: HashMap<i64, Vec<&'a Ingested>> = HashMap::new();
        for e in events {
            let ev = &e.event;
            if ev.qid.is_empty() {
                continue;
            }
            match accepted.get(ev.qid.as_str()) {
                None if ev.ev == "accepted" => {
                    accepted.insert(&ev.qid, e.key);
                }
                None => {}
                Some(&key) if is_outcome(&ev.ev) && !ev.rcpt.is_empty() => {
                    later.entry(key).or_default().push(*e);
                }
                Some(_) => {
                    spoiled.insert(&ev.qid);
                }
            }
        }
        later.retain(|_, outcomes| {
            outcomes
                .first()
                .is_some_and(|o| !spoiled.contains(o.event.qid.as_str()))
        });
        Fold {
            later,
            folded: Default::default(),
        }
    }
}

/// Counts `name` for each distinct domain of `rcpts` too, as `d:DOMAIN:NAME` (the
/// volume a domain-limited account sees).
fn count_domains<'r>(
    counts: &mut BTreeMap<(i64, String), i64>,
    t: i64,
    rcpts: impl IntoIterator<Item = &'r String>,
    name: &str,
) {
    let mut seen: Vec<String> = Vec::new();
    for r in rcpts {
        let d = domain_of(&lower(r));
        if !d.is_empty() && !seen.contains(&d) {
            count(counts, t, &format!("d:{d}:{name}"));
            seen.push(d);
        }
    }
}

fn count(counts: &mut BTreeMap<(i64, String), i64>, t: i64, name: &str) {
    *counts
        .entry((t.div_euclid(3_600_000) * 3_600_000, name.to_string()))
        .or_default() += 1;
}

/// The id of `qid`'s message row, if it has one.
fn message_id(
    tx: &rusqlite::Transaction<'_>,
    qid: &str,
    ids: &mut HashMap<String, i64>,
) -> Result<Option<i64>, TrackingError> {
    if let Some(id) = ids.get(qid) {
        return Ok(Some(*id));
    }
    let found: Option<i64> = tx
        .prepare_cached("SELECT id FROM messages WHERE qid = ?1")?
        .query_row([qid], |r| r.get(0))
        .optional()?;
    if let Some(id) = found {
        remember(ids, qid, id);
    }
    Ok(found)
}

fn remember(ids: &mut HashMap<String, i64>, qid: &str, id: i64) {
    if ids.len() > 100_000 {
        ids.clear();
    }
    ids.insert(qid.to_string(), id);
}

fn set_recipient(
    tx: &rusqlite::Transaction<'_>,
    msg: i64,
    rcpt: &str,
    status: &str,
    t: i64,
) -> Result<(), TrackingError> {
    let rcpt = lower(rcpt);
    let domain = domain_of(&rcpt);
    tx.prepare_cached(
        "INSERT INTO recipients (msg, rcpt, domain, status, t) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (msg, rcpt) DO UPDATE SET status = excluded.status, t = excluded.t
         WHERE excluded.t >= recipients.t",
    )?
    .execute(params![msg, rcpt, domain, status, t])?;
    Ok(())
}

/// After an event at `t`: the message's last time, its reply if `reply` is set, and its
/// status from its recipients' (theirs when they agree, else `mixed`).
fn touch(
    tx: &rusqlite::Transaction<'_>,
    msg: i64,
    t: i64,
    reply: Option<&str>,
) -> Result<(), TrackingError> {
    tx.prepare_cached(
        "UPDATE messages SET first_t = min(first_t, ?2), last_t = max(last_t, ?2),
             reply = coalesce(?3, reply),
             status = coalesce((SELECT CASE WHEN count(DISTINCT status) = 1
                 THEN max(status) ELSE 'mixed' END FROM recipients WHERE msg = ?1), status)
         WHERE id = ?1",
    )?
    .execute(params![msg, t, reply])?;
    Ok(())
}

/// What the timeline keeps of an event whose other fields are the message's own
/// (`accepted`, `rejected`): its kind, time and stage; of the others, the whole line.
fn timeline_line(e: &Ingested) -> String {
    let ev = &e.event;
    match ev.ev.as_str() {
        "accepted" | "rejected" | "quarantined" => {
            let mut v = serde_json::json!({"t": ev.t, "ev": ev.ev});
            if !ev.stage.is_empty() {
                v["stage"] = ev.stage.clone().into();
            }
            if !ev.reply.is_empty() {
                v["reply"] = ev.reply.clone().into();
            }
            v.to_string()
        }
        _ => e.line.clone(),
    }
}

/// Applies one event; false when it was applied before.
fn apply(
    tx: &rusqlite::Transaction<'_>,
    e: &Ingested,
    ids: &mut HashMap<String, i64>,
    counts: &mut BTreeMap<(i64, String), i64>,
    fold: &mut Fold<'_>,
) -> Result<bool, TrackingError> {
    let ev = &e.event;
    let t = ev.t;
    if ev.qid.is_empty() {
        return apply_blocked(tx, e, counts);
    }
    let message_event = matches!(ev.ev.as_str(), "accepted" | "rejected");
    // A message event whose queue id this batch has not seen is nearly always a new
    // message: its row is inserted without looking first, and only when the queue id
    // has a row already (the unique index says so) is that row looked up.
    let mut existing = match ids.get(&ev.qid) {
        Some(id) => Some(*id),
        None if message_event => None,
        None => message_id(tx, &ev.qid, ids)?,
    };
    if existing.is_none() {
        let msg = e.key;
        let inserted = if message_event {
            let outcomes = match fold.later.remove(&e.key) {
                Some(o) if ev.ev == "accepted" => o,
                _ => Vec::new(),
            };
            let done = new_row(insert_new(tx, msg, ev, &outcomes))?;
            if done {
                fold.folded.extend(outcomes.iter().map(|o| o.key));
            }
            done
        } else {
            tx.prepare_cached(
                "INSERT INTO messages (id, qid, first_t, last_t, status) VALUES (?1, ?2, ?3, ?3, 'queued')",
            )?
            .execute(params![msg, ev.qid, t])?;
            true
        };
        if inserted {
            remember(ids, &ev.qid, msg);
            tx.prepare_cached("INSERT INTO events (id, msg, t, line) VALUES (?1, ?2, ?3, ?4)")?
                .execute(params![e.key, msg, t, timeline_line(e)])?;
        } else {
            existing = message_id(tx, &ev.qid, ids)?;
            if existing.is_none() {
                return Err(TrackingError::Io(std::io::Error::other(format!(
                    "message {} conflicts with a row that is not there",
                    ev.qid
                ))));
            }
        }
    }
    let msg = match existing {
        // Seen before: the event may be too (applied, then control stopped before its
        // cursor was stored).
        Some(msg) => {
            let n = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO events (id, msg, t, line) VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![e.key, msg, t, timeline_line(e)])?;
            if n == 0 {
                return Ok(false);
            }
            msg
        }
        None => e.key,
    };
    match ev.ev.as_str() {
        "accepted" | "rejected" => {
            let rejected = ev.ev == "rejected";
            let status = message_status(ev);
            if existing.is_some() {
                update_message(tx, msg, ev)?;
            }
            // A new message's recipients went in with its row.
            for r in ev.rcpts.iter().filter(|_| existing.is_some()) {
                // Outcomes read first (another core's file) stay.
                let rcpt = lower(r);
                tx.prepare_cached(
                    "INSERT OR IGNORE INTO recipients (msg, rcpt, domain, status, t)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )?
                .execute(params![msg, rcpt, domain_of(&rcpt), status, t])?;
            }
            if existing.is_some() {
                touch(tx, msg, t, None)?;
            }
            if !ev.subject.is_empty() {
                tx.prepare_cached("INSERT INTO subjects (rowid, subject) VALUES (?1, ?2)")?
                    .execute(params![msg, ev.subject])?;
            }
            let traffic = if rejected { "blocked" } else { "accepted" };
            count(counts, t, traffic);
            count_domains(counts, t, &ev.rcpts, traffic);
            if !ev.verdict.is_empty() {
                let verdict = format!("verdict:{}", ev.verdict);
                count(counts, t, &verdict);
                count_domains(counts, t, &ev.rcpts, &verdict);
            }
            if rejected {
                count(counts, t, &format!("reason:{}", ev.verdict));
            }
        }
        "quarantined" => {
            touch(tx, msg, t, None)?;
            count(counts, t, "quarantined");
            count_domains(counts, t, &ev.rcpts, "quarantined");
        }
        "delivered" | "deferred" | "bounced" | "expired" if fold.folded.remove(&e.key) => {
            count(counts, t, &ev.ev);
            count_domains(counts, t, [&ev.rcpt], &ev.ev);
        }
        "delivered" | "deferred" | "bounced" | "expired" => {
            set_recipient(tx, msg, &ev.rcpt, &ev.ev, t)?;
            let reply = (ev.ev != "delivered").then_some(ev.reply.as_str());
            touch(tx, msg, t, reply)?;
            count(counts, t, &ev.ev);
            count_domains(counts, t, [&ev.rcpt], &ev.ev);
        }
        "released" => {
            for r in &ev.rcpts {
                set_recipient(tx, msg, r, "released", t)?;
            }
            touch(tx, msg, t, None)?;
            count(counts, t, "released");
        }
        "deleted" => {
            if !ev.rcpts.is_empty() {
                for r in &ev.rcpts {
                    set_recipient(tx, msg, r, "deleted", t)?;
                }
            } else {
                // From the queue: every recipient still pending (or those of a domain).
                let domain = (!ev.rcpt.is_empty() && !ev.rcpt.contains('@'))
                    .then(|| ev.rcpt.to_ascii_lowercase());
                tx.prepare_cached(
                    "UPDATE recipients SET status = 'deleted', t = ?2 WHERE msg = ?1
                     AND status IN ('queued', 'deferred') AND (?3 IS NULL OR domain = ?3)",
                )?
                .execute(params![msg, t, domain])?;
            }
            touch(tx, msg, t, None)?;
        }
        _ => touch(tx, msg, t, None)?,
    }
    Ok(true)
}

/// The status a message starts with, from its `accepted` or `rejected` event.
fn message_status(ev: &super::Event) -> &'static str {
    if ev.ev == "rejected" {
        if ev.reply.starts_with('4') {
            "deferred"
        } else {
            "rejected"
        }
    } else if ev.action == "quarantine" {
        "quarantined"
    } else {
        "queued"
    }
}

const MESSAGE_FIELDS: &str = "blocked, kind, ip, helo, tls, sender, sender_domain, subject, size,
    verdict, score, rules, action, reply, status";

fn message_values(ev: &super::Event) -> [Sql; 15] {
    let sender = lower(ev.from.as_deref().unwrap_or_default());
    let domain = domain_of(&sender);
    let kind = if ev.stage.is_empty() {
        ev.ev.clone()
    } else {
        ev.stage.clone()
    };
    [
        Sql::Integer((ev.ev == "rejected") as i64),
        Sql::Text(kind),
        Sql::Text(ev.ip.clone()),
        Sql::Text(ev.helo.clone()),
        ev.tls.map_or(Sql::Null, |b| Sql::Integer(b as i64)),
        Sql::Text(sender),
        Sql::Text(domain),
        Sql::Text(ev.subject.clone()),
        ev.size.map_or(Sql::Null, Sql::Integer),
        Sql::Text(ev.verdict.clone()),
        ev.score.map_or(Sql::Null, Sql::Real),
        Sql::Text(ev.rules.join(" ")),
        Sql::Text(ev.action.clone()),
        Sql::Text(ev.reply.clone()),
        Sql::Text(message_status(ev).to_string()),
    ]
}

/// Whether an insert made a new message row: false when its queue id (or its id) has one
/// already.
fn new_row(r: Result<(), TrackingError>) -> Result<bool, TrackingError> {
    match r {
        Ok(()) => Ok(true),
        Err(TrackingError::Sqlite(rusqlite::Error::SqliteFailure(e, _)))
            if e.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// A new message's row and recipients, with the outcomes that follow it in the batch
/// (if any): what `set_recipient` and `touch` would leave after each of them, written
/// once.
fn insert_new(
    tx: &rusqlite::Transaction<'_>,
    msg: i64,
    ev: &super::Event,
    outcomes: &[&Ingested],
) -> Result<(), TrackingError> {
    let initial = message_status(ev);
    // Recipient -> (status, time), in the order they were first named.
    let mut rcpts: Vec<(String, &str, i64)> = Vec::new();
    for r in &ev.rcpts {
        let r = lower(r);
        if !rcpts.iter().any(|(x, ..)| *x == r) {
            rcpts.push((r, initial, ev.t));
        }
    }
    let (mut first, mut last) = (ev.t, ev.t);
    let mut reply = ev.reply.as_str();
    for o in outcomes {
        let oe = &o.event;
        let r = lower(&oe.rcpt);
        match rcpts.iter_mut().find(|(x, ..)| *x == r) {
            Some(entry) if oe.t >= entry.2 => (entry.1, entry.2) = (oe.ev.as_str(), oe.t),
            Some(_) => {}
            None => rcpts.push((r, oe.ev.as_str(), oe.t)),
        }
        (first, last) = (first.min(oe.t), last.max(oe.t));
        if oe.ev != "delivered" {
            reply = &oe.reply;
        }
    }
    let status = match rcpts.first() {
        Some((_, s, _)) if rcpts.iter().all(|(_, x, _)| x == s) => s.to_string(),
        Some(_) => "mixed".to_string(),
        None => initial.to_string(),
    };
    let mut args = vec![
        Sql::Integer(msg),
        Sql::Text(ev.qid.clone()),
        Sql::Integer(first),
        Sql::Integer(last),
    ];
    let mut values = message_values(ev);
    values[13] = Sql::Text(reply.to_string());
    values[14] = Sql::Text(status);
    args.extend(values);
    tx.prepare_cached(&format!(
        "INSERT INTO messages (id, qid, first_t, last_t, {MESSAGE_FIELDS})
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)"
    ))?
    .execute(rusqlite::params_from_iter(args))?;
    let mut st = tx.prepare_cached(
        "INSERT OR IGNORE INTO recipients (msg, rcpt, domain, status, t) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for (r, status, t) in &rcpts {
        st.execute(params![msg, r, domain_of(r), status, t])?;
    }
    Ok(())
}

fn update_message(
    tx: &rusqlite::Transaction<'_>,
    msg: i64,
    ev: &super::Event,
) -> Result<(), TrackingError> {
    let mut args = vec![Sql::Integer(msg)];
    args.extend(message_values(ev));
    tx.prepare_cached(
        "UPDATE messages SET blocked = ?2, kind = ?3, ip = ?4, helo = ?5, tls = ?6, sender = ?7,
         sender_domain = ?8, subject = ?9, size = ?10, verdict = ?11, score = ?12, rules = ?13,
         action = ?14, reply = ?15, status = ?16 WHERE id = ?1",
    )?
    .execute(rusqlite::params_from_iter(args))?;
    Ok(())
}

/// A refused connection or envelope command: a row of blocked traffic of its own.
fn apply_blocked(
    tx: &rusqlite::Transaction<'_>,
    e: &Ingested,
    counts: &mut BTreeMap<(i64, String), i64>,
) -> Result<bool, TrackingError> {
    let ev = &e.event;
    let t = ev.t;
    let status = if ev.reply.starts_with('4') {
        "deferred"
    } else {
        "refused"
    };
    let verdict = if ev.stage.is_empty() {
        envelope_reason(&ev.reply)
    } else {
        ev.stage.as_str()
    };
    let sender = lower(ev.from.as_deref().unwrap_or_default());
    let n = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO messages (id, qid, blocked, first_t, last_t, kind, ip, helo,
             sender, sender_domain, verdict, action, status, reply)
             VALUES (?1, NULL, 1, ?2, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'reject', ?9, ?10)",
        )?
        .execute(params![
            e.key,
            t,
            ev.ev,
            ev.ip,
            ev.helo,
            sender,
            domain_of(&sender),
            verdict,
            status,
            ev.reply
        ])?;
    if n == 0 {
        return Ok(false);
    }
    if !ev.rcpt.is_empty() {
        set_recipient(tx, e.key, &ev.rcpt, status, t)?;
    }
    count(counts, t, "blocked");
    count(counts, t, &format!("reason:{verdict}"));
    count_domains(counts, t, [&ev.rcpt], "blocked");
    Ok(true)
}

/// What an envelope refusal was, from its reply.
fn envelope_reason(reply: &str) -> &'static str {
    if reply.contains("5.1.1") {
        "unknown_user"
    } else if reply.contains("Relaying denied") {
        "relay_denied"
    } else if reply.contains("Sender address rejected") {
        "blocked_sender"
    } else if reply.contains("5.3.4") {
        "message_size"
    } else if reply.starts_with('4') {
        "tempfail"
    } else {
        "policy"
    }
}

/// An FTS5 query for the rows whose subject holds every trigram of `text` (an index
/// without positions takes no phrases): `"inv" AND "nvo" AND …`.
fn trigrams(text: &str) -> String {
    let chars: Vec<char> = text.to_lowercase().chars().collect();
    let mut seen = std::collections::BTreeSet::new();
    for w in chars.windows(3) {
        seen.insert(w.iter().collect::<String>());
    }
    seen.into_iter()
        .take(64)
        .map(|t| format!("\"{}\"", t.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// The WHERE clause and parameters of a search within one partition.
fn where_clause(q: &Query, from: i64, to: i64) -> (String, Vec<Sql>) {
    let mut sql = String::from("m.first_t >= ? AND m.first_t < ?");
    let mut args = vec![Sql::Integer(from), Sql::Integer(to)];
    match q.traffic {
        Some(Traffic::Accepted) => sql.push_str(" AND m.blocked = 0"),
        Some(Traffic::Blocked) => sql.push_str(" AND m.blocked = 1"),
        None => {}
    }
    if let Some(s) = &q.sender {
        let s = lower(s);
        if let Some(d) = s.strip_prefix('@') {
            sql.push_str(" AND m.sender_domain = ?");
            args.push(Sql::Text(d.to_string()));
        } else {
            sql.push_str(" AND m.sender = ?");
            args.push(Sql::Text(s));
        }
    }
    if let Some(r) = &q.recipient {
        let r = lower(r);
        if let Some(d) = r.strip_prefix('@') {
            sql.push_str(" AND m.id IN (SELECT msg FROM recipients WHERE domain = ?)");
            args.push(Sql::Text(d.to_string()));
        } else {
            sql.push_str(" AND m.id IN (SELECT msg FROM recipients WHERE rcpt = ?)");
            args.push(Sql::Text(r));
        }
    }
    if let Some(ip) = &q.ip {
        sql.push_str(" AND m.ip = ?");
        args.push(Sql::Text(ip.clone()));
    }
    if let Some(qid) = &q.qid {
        sql.push_str(" AND m.qid = ?");
        args.push(Sql::Text(qid.to_ascii_uppercase()));
    }
    if let Some(s) = &q.subject {
        // The trigram index finds the candidates (it keeps no positions); the text
        // itself decides.
        sql.push_str(
            " AND m.id IN (SELECT rowid FROM subjects WHERE subjects MATCH ?) AND m.subject LIKE ? ESCAPE '\\'",
        );
        args.push(Sql::Text(trigrams(s)));
        let like = s
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        args.push(Sql::Text(format!("%{like}%")));
    }
    for (col, v) in [
        ("verdict", &q.verdict),
        ("action", &q.action),
        ("status", &q.status),
    ] {
        if let Some(v) = v {
            sql.push_str(&format!(" AND m.{col} = ?"));
            args.push(Sql::Text(v.clone()));
        }
    }
    if let Some(domains) = &q.domains {
        if domains.is_empty() {
            sql.push_str(" AND 0");
        } else {
            let marks = vec!["?"; domains.len()].join(",");
            sql.push_str(&format!(
                " AND (m.sender_domain IN ({marks}) OR m.id IN (SELECT msg FROM recipients WHERE domain IN ({marks})))"
            ));
            for _ in 0..2 {
                for d in domains {
                    args.push(Sql::Text(d.to_ascii_lowercase()));
                }
            }
        }
    }
    if let Some((t, id)) = q.before {
        sql.push_str(" AND (m.first_t < ? OR (m.first_t = ? AND m.id < ?))");
        args.extend([Sql::Integer(t), Sql::Integer(t), Sql::Integer(id)]);
    }
    (sql, args)
}

const COLUMNS: &str = "m.id, m.qid, m.blocked, m.first_t, m.last_t, m.kind, m.ip, m.helo, m.tls,
    m.sender, m.subject, m.size, m.verdict, m.score, m.rules, m.action, m.status, m.reply";

fn row_of(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    let rules: String = r.get(14)?;
    Ok(Row {
        id: r.get(0)?,
        qid: r.get(1)?,
        traffic: if r.get::<_, i64>(2)? != 0 {
            Traffic::Blocked
        } else {
            Traffic::Accepted
        },
        first: r.get(3)?,
        last: r.get(4)?,
        kind: r.get(5)?,
        client_ip: r.get(6)?,
        helo: r.get(7)?,
        tls: r.get::<_, Option<i64>>(8)?.map(|v| v != 0),
        sender: r.get(9)?,
        recipients: Vec::new(),
        subject: r.get(10)?,
        size: r.get(11)?,
        verdict: r.get(12)?,
        score: r.get(13)?,
        rules: rules.split_whitespace().map(str::to_string).collect(),
        action: r.get(15)?,
        status: r.get(16)?,
        reply: r.get(17)?,
    })
}

fn recipients(conn: &Connection, msg: i64) -> Result<Vec<Recipient>, TrackingError> {
    let mut st =
        conn.prepare_cached("SELECT rcpt, status FROM recipients WHERE msg = ?1 ORDER BY rcpt")?;
    let rows = st.query_map([msg], |r| {
        Ok(Recipient {
            address: r.get(0)?,
            status: r.get(1)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

impl TrackingIngest for SqliteTracking {
    fn ingest(&mut self, events: &[Ingested]) -> Result<usize, TrackingError> {
        let mut by_day: BTreeMap<i64, Vec<Vec<&Ingested>>> = BTreeMap::new();
        let oldest = day_of_ms(now_ms()) - self.retention_days;
        for e in events {
            let day = partition(&e.event);
            if day < oldest {
                self.expired_events += 1;
                continue;
            }
            by_day
                .entry(day)
                .or_insert_with(|| vec![Vec::new(); SHARDS])[shard_of(&e.event.qid, e.key)]
            .push(e);
        }
        let mut new = 0;
        for (day, shards) in by_day {
            let mut conns = self.take_writers(day)?;
            // The shards of a day are written at once, one thread each.
            let results: Vec<Result<usize, TrackingError>> = std::thread::scope(|scope| {
                let running: Vec<_> = conns
                    .iter_mut()
                    .zip(&shards)
                    .map(|(conn, evs)| scope.spawn(move || apply_batch(conn, evs)))
                    .collect();
                running
                    .into_iter()
                    .map(|h| {
                        h.join().unwrap_or_else(|_| {
                            Err(TrackingError::Io(std::io::Error::other(
                                "a tracking writer thread panicked",
                            )))
                        })
                    })
                    .collect()
            });
            self.put_writers(day, conns);
            for r in results {
                new += r?;
            }
        }
        Ok(new)
    }

    fn expire(&mut self, now: i64) -> Result<usize, TrackingError> {
        let oldest = day_of_ms(now) - self.retention_days;
        let mut dropped = 0;
        for day in self.search.days()? {
            if day >= oldest {
                break;
            }
            self.writers.remove(&day);
            self.recent.retain(|d| *d != day);
            for shard in 0..SHARDS {
                let path = self.search.path(day, shard);
                for suffix in ["-wal", "-shm"] {
                    let mut p = path.clone().into_os_string();
                    p.push(suffix);
                    let _ = std::fs::remove_file(p);
                }
                if shard == 0 || path.exists() {
                    std::fs::remove_file(&path)?;
                }
            }
            dropped += 1;
        }
        Ok(dropped)
    }
}

impl TrackingSearch for SqliteSearch {
    fn search(&self, q: &Query) -> Result<Vec<Row>, TrackingError> {
        let mut out = Vec::new();
        let first_day = day_of_ms(q.since);
        let last_day = day_of_ms(q.until);
        let mut days: Vec<i64> = self
            .days()?
            .into_iter()
            .filter(|d| (first_day..=last_day).contains(d))
            .collect();
        days.reverse();
        let limit = q.limit.clamp(1, super::MAX_LIMIT);
        for day in days {
            if out.len() >= limit {
                break;
            }
            // Each shard's newest, merged: the page is the newest of them all.
            let mut found: Vec<Row> = Vec::new();
            for shard in 0..SHARDS {
                let Some(conn) = self.reader(day, shard)? else {
                    continue;
                };
                let (cond, mut args) = where_clause(q, q.since, q.until);
                args.push(Sql::Integer((limit - out.len()) as i64));
                let sql = format!(
                    "SELECT {COLUMNS} FROM messages m WHERE {cond} ORDER BY m.first_t DESC, m.id DESC LIMIT ?"
                );
                let mut st = match conn.prepare(&sql) {
                    Ok(st) => st,
                    // A partition being created right now has no tables yet.
                    Err(rusqlite::Error::SqliteFailure(_, Some(m)))
                        if m.contains("no such table") =>
                    {
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                };
                let rows: Vec<Row> = st
                    .query_map(rusqlite::params_from_iter(args), row_of)?
                    .collect::<Result<_, _>>()?;
                for mut row in rows {
                    row.recipients = recipients(&conn, row.id)?;
                    found.push(row);
                }
            }
            found.sort_by_key(|r| std::cmp::Reverse((r.first, r.id)));
            found.truncate(limit - out.len());
            out.extend(found);
        }
        Ok(out)
    }

    fn timeline(&self, qid: &str) -> Result<Option<Timeline>, TrackingError> {
        let Some(arrival) = arrival_of(qid) else {
            return Ok(None);
        };
        let Some(conn) = self.reader(day_of_ms(arrival), shard_of(qid, 0))? else {
            return Ok(None);
        };
        let sql = format!("SELECT {COLUMNS} FROM messages m WHERE m.qid = ?1");
        let Some(mut row) = conn
            .query_row(&sql, [qid.to_ascii_uppercase()], row_of)
            .optional()?
        else {
            return Ok(None);
        };
        row.recipients = recipients(&conn, row.id)?;
        let mut st = conn.prepare("SELECT line FROM events WHERE msg = ?1 ORDER BY t, id")?;
        let events = st
            .query_map([row.id], |r| r.get::<_, String>(0))?
            .filter_map(|l| l.ok())
            .filter_map(|l| serde_json::from_str(&l).ok())
            .collect();
        Ok(Some(Timeline {
            message: row,
            events,
        }))
    }

    fn volume(
        &self,
        since: i64,
        until: i64,
        domains: Option<&[String]>,
    ) -> Result<Vec<Volume>, TrackingError> {
        let mut hours: BTreeMap<i64, Volume> = BTreeMap::new();
        let (first_day, last_day) = (day_of_ms(since), day_of_ms(until));
        for day in self.days()? {
            if !(first_day..=last_day).contains(&day) {
                continue;
            }
            for shard in 0..SHARDS {
                let Some(conn) = self.reader(day, shard)? else {
                    continue;
                };
                let mut st = match conn
                    .prepare("SELECT hour, name, n FROM counts WHERE hour >= ?1 AND hour < ?2")
                {
                    Ok(st) => st,
                    Err(_) => continue,
                };
                let rows = st.query_map(params![since, until], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })?;
                for r in rows {
                    let (hour, name, n) = r?;
                    // Every domain's counts, or the listed domains' (`d:DOMAIN:NAME`).
                    let name = match (domains, name.strip_prefix("d:")) {
                        (None, None) => name.as_str(),
                        (Some(list), Some(rest)) => match rest.split_once(':') {
                            Some((d, name)) if list.iter().any(|x| x == d) => name,
                            _ => continue,
                        },
                        _ => continue,
                    };
                    let v = hours.entry(hour).or_insert_with(|| Volume {
                        hour,
                        ..Default::default()
                    });
                    match name {
                        "accepted" => v.accepted += n,
                        "blocked" => v.blocked += n,
                        "delivered" => v.delivered += n,
                        "quarantined" => v.quarantined += n,
                        other => {
                            if let Some(verdict) = other.strip_prefix("verdict:") {
                                *v.verdicts.entry(verdict.to_string()).or_default() += n;
                            }
                        }
                    }
                }
            }
        }
        Ok(hours.into_values().collect())
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracking::Event;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "bulwark-tracking-store-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn qid(t: i64, n: u32) -> String {
        format!("{:013X}000{n:03X}", t * 1000)
    }

    fn ev(key: i64, line: String) -> Ingested {
        let event: Event = serde_json::from_str(&line).unwrap();
        Ingested { key, event, line }
    }

    fn accepted(key: i64, t: i64, q: &str, subject: &str) -> Ingested {
        ev(
            key,
            format!(
                r#"{{"t":{t},"ev":"accepted","qid":"{q}","ip":"192.0.2.1","from":"Alice@Sender.test","rcpts":["bob@example.test","carol@other.test"],"size":10,"subject":"{subject}","verdict":"clean","score":0.5,"rules":["R1"],"action":"deliver"}}"#
            ),
        )
    }

    fn outcome(key: i64, t: i64, q: &str, kind: &str, rcpt: &str) -> Ingested {
        ev(
            key,
            format!(r#"{{"t":{t},"ev":"{kind}","qid":"{q}","rcpt":"{rcpt}","reply":"451 later"}}"#),
        )
    }

    fn all(since: i64) -> Query {
        Query {
            since,
            until: since + DAY_MS,
            limit: 100,
            ..Default::default()
        }
    }

    /// SQLite as the bundled build configures it (`SQLITE_ENABLE_MEMORY_MANAGEMENT`) keeps
    /// one page cache for every connection behind one lock, and counts every allocation
    /// behind another: the shard writers of a day then wait on each other for each page
    /// they touch (1M events: 76-86 k events/s with them, 111-115 k without).
    /// `.cargo/config.toml` builds it without both.
    #[test]
    fn shard_writers_do_not_share_one_page_cache_lock() {
        let conn = Connection::open_in_memory().unwrap();
        let options: Vec<String> = conn
            .prepare("PRAGMA compile_options")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            !options.iter().any(|o| o == "ENABLE_MEMORY_MANAGEMENT"),
            "SQLite was built with one page cache for all connections: {options:?}"
        );
        assert!(
            options.iter().any(|o| o == "DEFAULT_MEMSTATUS=0"),
            "SQLite was built counting allocations under a global lock: {options:?}"
        );
    }

    #[test]
    fn outcomes_folded_into_their_message_leave_what_one_by_one_would() {
        let d = dir("fold");
        let t = now_ms() - 60_000;
        let q = qid(t, 9);
        let events = || {
            vec![
                accepted(1, t, &q, "hello"),
                outcome(2, t + 5, &q, "deferred", "bob@example.test"),
                outcome(3, t + 9, &q, "delivered", "bob@example.test"),
                outcome(4, t + 7, &q, "bounced", "carol@other.test"),
                // Older than what carol has: ignored either way.
                outcome(5, t + 6, &q, "delivered", "carol@other.test"),
            ]
        };
        let mut seen = Vec::new();
        for together in [true, false] {
            let _ = std::fs::remove_dir_all(&d);
            let mut w = SqliteTracking::open(&d, 30).unwrap();
            if together {
                assert_eq!(w.ingest(&events()).unwrap(), 5);
            } else {
                for e in events() {
                    assert_eq!(w.ingest(&[e]).unwrap(), 1);
                }
            }
            let tl = SqliteSearch::new(&d).timeline(&q).unwrap().unwrap();
            let m = tl.message;
            let rcpts: Vec<_> = m
                .recipients
                .iter()
                .map(|r| (r.address.clone(), r.status.clone()))
                .collect();
            seen.push((m.status, m.reply, m.first, m.last, rcpts, tl.events.len()));
        }
        assert_eq!(seen[0], seen[1]);
        assert_eq!(seen[0].0, "mixed");
        assert_eq!(seen[0].1, "451 later");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn messages_spread_over_shards_are_found_in_time_order() {
        let d = dir("shards");
        let mut w = SqliteTracking::open(&d, 30).unwrap();
        let r = SqliteSearch::new(&d);
        let t = now_ms() - 60_000;
        let mut batch = Vec::new();
        let mut qids = Vec::new();
        for n in 0..40u32 {
            let q = qid(t + i64::from(n) * 100, n);
            batch.push(accepted(
                i64::from(n) * 2 + 1,
                t + i64::from(n) * 100,
                &q,
                "hello",
            ));
            batch.push(outcome(
                i64::from(n) * 2 + 2,
                t + i64::from(n) * 100 + 5,
                &q,
                "delivered",
                "bob@example.test",
            ));
            qids.push(q);
        }
        assert_eq!(w.ingest(&batch).unwrap(), 80);
        let day = day_of_ms(arrival_of(&qids[0]).unwrap());
        for shard in 0..SHARDS {
            assert!(r.path(day, shard).exists(), "shard {shard} has no file");
        }
        let rows = r.search(&all(t - 1000)).unwrap();
        assert_eq!(rows.len(), 40);
        assert!(
            rows.windows(2).all(|p| p[0].first >= p[1].first),
            "not newest first"
        );
        let mut q = all(t - 1000);
        q.limit = 7;
        let page = r.search(&q).unwrap();
        let newest: Vec<_> = rows.iter().take(7).map(|m| m.id).collect();
        assert_eq!(page.iter().map(|m| m.id).collect::<Vec<_>>(), newest);
        for q in &qids {
            let tl = r.timeline(q).unwrap().unwrap();
            assert_eq!(tl.message.status, "mixed", "{q}");
            assert_eq!(tl.events.len(), 2);
        }
        let v = r.volume(t - DAY_MS, t + DAY_MS, None).unwrap();
        assert_eq!(v.iter().map(|h| h.accepted).sum::<i64>(), 40);
        assert_eq!(w.expire(now_ms() + 40 * DAY_MS).unwrap(), 1);
        for shard in 0..SHARDS {
            assert!(
                !r.path(day, shard).exists(),
                "shard {shard} outlived its day"
            );
        }
    }

    #[test]
    fn an_event_applied_twice_counts_once() {
        let d = dir("twice");
        let mut w = SqliteTracking::open(&d, 30).unwrap();
        let r = SqliteSearch::new(&d);
        let t = now_ms() - 1000;
        let q = qid(t, 1);
        let batch = vec![
            accepted(1, t, &q, "hello"),
            outcome(2, t + 5, &q, "delivered", "bob@example.test"),
        ];
        assert_eq!(w.ingest(&batch).unwrap(), 2);
        assert_eq!(w.ingest(&batch).unwrap(), 0);
        let rows = r.search(&all(t - 1000)).unwrap();
        assert_eq!(rows.len(), 1);
        let v = r.volume(t - DAY_MS, t + DAY_MS, None).unwrap();
        assert_eq!(v.iter().map(|h| h.accepted).sum::<i64>(), 1);
        assert_eq!(v.iter().map(|h| h.delivered).sum::<i64>(), 1);
        // A domain-limited view: the mail to its domains only.
        let mine = |d: &[&str]| {
            let d: Vec<String> = d.iter().map(|x| x.to_string()).collect();
            let v = r.volume(t - DAY_MS, t + DAY_MS, Some(&d)).unwrap();
            (
                v.iter().map(|h| h.accepted).sum::<i64>(),
                v.iter().map(|h| h.delivered).sum::<i64>(),
                v.iter()
                    .map(|h| h.verdicts.values().sum::<i64>())
                    .sum::<i64>(),
            )
        };
        assert_eq!(mine(&["example.test"]), (1, 1, 1));
        assert_eq!(mine(&["other.test"]), (1, 0, 1));
        assert_eq!(mine(&["example.test", "other.test"]), (2, 1, 2));
        assert_eq!(mine(&["elsewhere.test"]), (0, 0, 0));
        let tl = r.timeline(&q).unwrap().unwrap();
        assert_eq!(tl.events.len(), 2);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn outcomes_read_before_their_message_are_kept() {
        let d = dir("order");
        let mut w = SqliteTracking::open(&d, 30).unwrap();
        let r = SqliteSearch::new(&d);
        let t = now_ms() - 1000;
        let q = qid(t, 2);
        w.ingest(&[outcome(10, t + 5, &q, "deferred", "carol@other.test")])
            .unwrap();
        w.ingest(&[accepted(11, t, &q, "late")]).unwrap();
        let rows = r.search(&all(t - 1000)).unwrap();
        assert_eq!(rows.len(), 1, "{rows:?}");
        let row = &rows[0];
        assert_eq!(row.first, t);
        assert_eq!(row.last, t + 5);
        assert_eq!(row.sender, "alice@sender.test");
        assert_eq!(row.subject, "late");
        assert_eq!(row.status, "mixed");
        let statuses: Vec<(&str, &str)> = row
            .recipients
            .iter()
            .map(|x| (x.address.as_str(), x.status.as_str()))
            .collect();
        assert_eq!(
            statuses,
            [
                ("bob@example.test", "queued"),
                ("carol@other.test", "deferred")
            ]
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn searches_filter_and_restrict_to_domains() {
        let d = dir("filters");
        let mut w = SqliteTracking::open(&d, 30).unwrap();
        let r = SqliteSearch::new(&d);
        let t = now_ms() - 10_000;
        let (q1, q2) = (qid(t, 3), qid(t + 1, 4));
        w.ingest(&[
            accepted(20, t, &q1, "100% off_sale"),
            accepted(21, t + 1, &q2, "1000 offers"),
            ev(
                22,
                format!(
                    r#"{{"t":{t},"ev":"rcpt_refused","ip":"198.51.100.9","from":"x@spam.test","rcpt":"nobody@example.test","reply":"550 5.1.1 Recipient address rejected: user unknown"}}"#
                ),
            ),
        ])
        .unwrap();
        let count = |q: Query| r.search(&q).unwrap().len();
        let base = all(t - 1000);
        assert_eq!(count(base.clone()), 3);
        // LIKE's own wildcards in the text are literal.
        let subject = |s: &str| Query {
            subject: Some(s.into()),
            ..base.clone()
        };
        assert_eq!(count(subject("100% off_")), 1);
        assert_eq!(count(subject("0% off")), 1);
        assert_eq!(count(subject("off")), 2);
        assert_eq!(count(subject("_sa")), 1);
        assert_eq!(
            count(Query {
                traffic: Some(Traffic::Blocked),
                ..base.clone()
            }),
            1
        );
        let blocked = r
            .search(&Query {
                recipient: Some("nobody@example.test".into()),
                ..base.clone()
            })
            .unwrap();
        assert_eq!(blocked[0].verdict, "unknown_user");
        assert_eq!(
            count(Query {
                sender: Some("@SENDER.test".into()),
                ..base.clone()
            }),
            2
        );
        // An account limited to other.test sees the messages with a recipient there,
        // not the refused recipient of example.test.
        assert_eq!(
            count(Query {
                domains: Some(vec!["other.test".into()]),
                ..base.clone()
            }),
            2
        );
        assert_eq!(
            count(Query {
                domains: Some(vec![]),
                ..base.clone()
            }),
            0
        );
        // Paging: the second page starts after the first's last row.
        let first = r
            .search(&Query {
                limit: 2,
                ..base.clone()
            })
            .unwrap();
        let last = first.last().unwrap();
        let rest = r
            .search(&Query {
                before: Some((last.first, last.id)),
                ..base.clone()
            })
            .unwrap();
        assert_eq!(first.len() + rest.len(), 3);
        assert!(rest.iter().all(|x| first.iter().all(|y| y.id != x.id)));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn retention_drops_whole_days() {
        let d = dir("retention");
        let mut w = SqliteTracking::open(&d, 3).unwrap();
        let now = now_ms();
        for (i, age) in [0i64, 2, 5].iter().enumerate() {
            let t = now - age * DAY_MS;
            w.ingest(&[accepted(30 + i as i64, t, &qid(t, i as u32), "x")])
                .unwrap();
        }
        // The 5-day-old event was past the retention already: never stored.
        assert_eq!(w.expired_events, 1);
        assert_eq!(w.search.days().unwrap().len(), 2);
        assert_eq!(w.expire(now + 2 * DAY_MS).unwrap(), 1);
        assert_eq!(w.search.days().unwrap().len(), 1);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
