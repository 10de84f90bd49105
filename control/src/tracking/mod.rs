//! Message tracking: the events the engines write (see the engine's `tracking` module),
//! ingested into a store partitioned by day and searched by the API, the consoles and
//! `bulwark-control tracking search`.
//!
//! The store is behind [`TrackingStore`]; [`sqlite::SqliteTracking`] is the embedded
//! one. Events are placed in the partition of their message's arrival day (which its
//! queue id encodes), so a message and its whole timeline live and expire together;
//! events without a queue id (refused connections and commands) go by their own time.

pub mod bench;
pub mod ingest;
pub mod sqlite;

use serde::{Deserialize, Serialize};

/// Milliseconds in a day.
pub const DAY_MS: i64 = 86_400_000;
/// The most rows one search returns.
pub const MAX_LIMIT: usize = 1000;
/// The longest search range, in days.
pub const MAX_RANGE_DAYS: i64 = 400;

/// One event line as the engine writes it: the fields the store indexes (the whole line
/// is kept for the timeline).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Event {
    pub t: i64,
    pub ev: String,
    #[serde(default)]
    pub qid: String,
    #[serde(default)]
    pub ip: String,
    #[serde(default)]
    pub helo: String,
    #[serde(default)]
    pub tls: Option<bool>,
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub rcpt: String,
    #[serde(default)]
    pub rcpts: Vec<String>,
    #[serde(default)]
    pub size: Option<i64>,
    #[serde(default)]
    pub subject: String,
    #[serde(default)]
    pub verdict: String,
    #[serde(default)]
    pub score: Option<f64>,
    #[serde(default)]
    pub rules: Vec<String>,
    #[serde(default)]
    pub action: String,
    #[serde(default)]
    pub stage: String,
    #[serde(default)]
    pub reply: String,
}

/// An event with its identity in the ingested stream (unique: the segment's number and
/// the line's offset) and its raw line.
#[derive(Debug, Clone)]
pub struct Ingested {
    pub key: i64,
    pub event: Event,
    pub line: String,
}

/// Which tab of the tracking search.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Traffic {
    Accepted,
    Blocked,
}

/// A search. Times are Unix milliseconds; addresses match whole (case-insensitive), or
/// every address of a domain when written `@domain`.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub since: i64,
    pub until: i64,
    pub traffic: Option<Traffic>,
    pub sender: Option<String>,
    pub recipient: Option<String>,
    pub ip: Option<String>,
    pub qid: Option<String>,
    /// A substring of the subject (at least 3 characters).
    pub subject: Option<String>,
    pub verdict: Option<String>,
    pub action: Option<String>,
    pub status: Option<String>,
    /// Only messages with a recipient (or, for outbound mail, the sender) in one of
    /// these domains: an account limited to domains.
    pub domains: Option<Vec<String>>,
    pub limit: usize,
    /// Paging: only rows older than this (`first_t`, `id`) of the previous page's last.
    pub before: Option<(i64, i64)>,
}

/// One recipient of a message and what became of it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Recipient {
    pub address: String,
    pub status: String,
}

/// One row of a search: a message, or a refused connection or command.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub id: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qid: Option<String>,
    pub traffic: Traffic,
    /// First and last event (Unix milliseconds).
    pub first: i64,
    pub last: i64,
    pub kind: String,
    pub client_ip: String,
    pub helo: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<bool>,
    pub sender: String,
    pub recipients: Vec<Recipient>,
    pub subject: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<i64>,
    pub verdict: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    pub rules: Vec<String>,
    pub action: String,
    pub status: String,
    pub reply: String,
}

/// A message with its whole timeline.
#[derive(Debug, Clone, Serialize)]
pub struct Timeline {
    pub message: Row,
    pub events: Vec<serde_json::Value>,
}

/// Counts of one day for the dashboards.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Volume {
    /// Start of the hour (Unix milliseconds).
    pub hour: i64,
    pub accepted: i64,
    pub blocked: i64,
    pub delivered: i64,
    pub quarantined: i64,
    /// By verdict class.
    pub verdicts: std::collections::BTreeMap<String, i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum TrackingError {
    #[error("tracking store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("tracking store: {0}")]
    Io(#[from] std::io::Error),
}

/// Searching the tracking store (shared by the API's requests; never waits for
/// ingestion). The embedded store is SQLite; the multi-node one will be PostgreSQL.
pub trait TrackingSearch: Send + Sync {
    /// The rows matching `q`, newest first.
    fn search(&self, q: &Query) -> Result<Vec<Row>, TrackingError>;
    /// A message and its events, by queue id.
    fn timeline(&self, qid: &str) -> Result<Option<Timeline>, TrackingError>;
    /// Hourly counts from `since` to `until`: of all mail, or of the mail to `domains`
    /// (a message to several of them counts once for each).
    fn volume(
        &self,
        since: i64,
        until: i64,
        domains: Option<&[String]>,
    ) -> Result<Vec<Volume>, TrackingError>;
}

/// Writing the tracking store (one ingesting thread).
pub trait TrackingIngest: Send {
    /// Applies a batch of events; an event whose key was applied before is skipped.
    /// Returns how many were new.
    fn ingest(&mut self, events: &[Ingested]) -> Result<usize, TrackingError>;
    /// Drops what is older than the retention; returns the partitions dropped.
    fn expire(&mut self, now: i64) -> Result<usize, TrackingError>;
}

/// The arrival (Unix milliseconds) a queue id encodes: its first 13 hex digits are
/// microseconds.
pub fn arrival_of(qid: &str) -> Option<i64> {
    let micros = i64::from_str_radix(qid.get(..13)?, 16).ok()?;
    Some(micros / 1000)
}

/// Whether `qid` looks like a queue id (upper-case hex, 13 to 40 digits).
pub fn valid_qid(qid: &str) -> bool {
    (13..=40).contains(&qid.len()) && qid.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Days since 1970-01-01 of a civil date (proleptic Gregorian).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day number.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

/// `YYYY-MM-DD` of a day number.
pub fn day_name(day: i64) -> String {
    let (y, m, d) = civil_from_days(day);
    format!("{y:04}-{m:02}-{d:02}")
}

/// RFC 3339 (UTC, seconds) of a time in milliseconds.
pub fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s % 3600 / 60,
        s % 60
    )
}

/// A time as people write it, in Unix milliseconds: RFC 3339 (`2026-12-01T10:00:00Z`,
/// with an offset, or without seconds), a date (`2026-12-01`, midnight UTC), Unix
/// seconds, `now`, or an age (`90s`, `30m`, `2h`, `7d`, `2w` ago).
pub fn parse_time(text: &str, now_ms: i64) -> Result<i64, String> {
    let t = text.trim();
    let bad = || {
        format!(
            "{text:?} is not a time: use 2026-12-01, 2026-12-01T10:00:00Z, Unix seconds, or an age such as 2h or 7d"
        )
    };
    if t.is_empty() || t.len() > 40 {
        return Err(bad());
    }
    if t == "now" {
        return Ok(now_ms);
    }
    if let Some(unit) = t.chars().last().filter(|c| c.is_ascii_alphabetic())
        && t.len() > 1
        && t[..t.len() - 1]
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'-')
    {
        let n: i64 = t[..t.len() - 1].parse().map_err(|_| bad())?;
        let per = match unit {
            's' => 1000,
            'm' => 60_000,
            'h' => 3_600_000,
            'd' => DAY_MS,
            'w' => 7 * DAY_MS,
            _ => return Err(bad()),
        };
        if !(0..=100_000).contains(&n) {
            return Err(bad());
        }
        return Ok(now_ms - n * per);
    }
    if t.bytes().all(|b| b.is_ascii_digit()) {
        let secs: i64 = t.parse().map_err(|_| bad())?;
        if secs > 100_000_000_000 {
            return Err(bad());
        }
        return Ok(secs * 1000);
    }
    let b = t.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Result<i64, String> {
        let s = t.get(r).ok_or_else(bad)?;
        if !s.bytes().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        s.parse().map_err(|_| bad())
    };
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return Err(bad());
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || !(1970..=9999).contains(&y) {
        return Err(bad());
    }
    let day = days_from_civil(y, mo as u32, d as u32);
    if civil_from_days(day) != (y, mo as u32, d as u32) {
        return Err(bad());
    }
    let mut ms = day * DAY_MS;
    if b.len() == 10 {
        return Ok(ms);
    }
    if b[10] != b'T' && b[10] != b't' && b[10] != b' ' {
        return Err(bad());
    }
    let rest = &t[11..];
    // hh:mm[:ss[.fff]] then Z or ±hh:mm
    let (clock, zone) = match rest.find(['Z', 'z', '+', '-']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "Z"),
    };
    let parts: Vec<&str> = clock.split(':').collect();
    if parts.len() < 2 || parts.len() > 3 {
        return Err(bad());
    }
    let field = |s: &str, max: i64| -> Result<i64, String> {
        let v: i64 = s.parse().map_err(|_| bad())?;
        if s.len() != 2 || !(0..=max).contains(&v) {
            return Err(bad());
        }
        Ok(v)
    };
    let h = field(parts[0], 23)?;
    let mi = field(parts[1], 59)?;
    let (s, frac) = match parts.get(2) {
        Some(p) => {
            let (whole, frac) = p.split_once('.').unwrap_or((p, ""));
            let frac_ms = if frac.is_empty() {
                0
            } else {
                if !frac.bytes().all(|c| c.is_ascii_digit()) || frac.len() > 9 {
                    return Err(bad());
                }
                let padded = format!("{frac:0<3}");
                padded[..3].parse::<i64>().map_err(|_| bad())?
            };
            (field(whole, 60)?, frac_ms)
        }
        None => (0, 0),
    };
    ms += (h * 3600 + mi * 60 + s) * 1000 + frac;
    if zone.eq_ignore_ascii_case("z") {
        return Ok(ms);
    }
    let sign = if zone.starts_with('-') { -1 } else { 1 };
    let z = &zone[1..];
    let (zh, zm) = z.split_once(':').ok_or_else(bad)?;
    let off = field(zh, 23)? * 3600 + field(zm, 59)? * 60;
    Ok(ms - sign * off * 1000)
}

/// The domain of an address, lower-case (empty when it has none).
pub fn domain_of(addr: &str) -> String {
    addr.rsplit_once('@')
        .map(|(_, d)| d.trim_end_matches('.').to_ascii_lowercase())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_round_trip() {
        for day in [-1000, 0, 1, 59, 365, 11_016, 20_423, 20_788, 100_000] {
            let (y, m, d) = civil_from_days(day);
            assert_eq!(days_from_civil(y, m, d), day);
        }
        assert_eq!(days_from_civil(2026, 12, 1), 20_788);
        assert_eq!(day_name(20_788), "2026-12-01");
        assert_eq!(rfc3339(20_788 * DAY_MS + 3_723_000), "2026-12-01T01:02:03Z");
    }

    #[test]
    fn times_people_write() {
        let now = 20_788 * DAY_MS + 12 * 3_600_000;
        let day = 20_788 * DAY_MS;
        assert_eq!(parse_time("2026-12-01", now), Ok(day));
        assert_eq!(
            parse_time("2026-12-01T10:00:00Z", now),
            Ok(day + 36_000_000)
        );
        assert_eq!(parse_time("2026-12-01T10:00Z", now), Ok(day + 36_000_000));
        assert_eq!(
            parse_time("2026-12-01T10:00:00.5Z", now),
            Ok(day + 36_000_500)
        );
        assert_eq!(
            parse_time("2026-12-01T11:00:00+01:00", now),
            Ok(day + 36_000_000)
        );
        assert_eq!(
            parse_time("2026-12-01T09:30:00-00:30", now),
            Ok(day + 36_000_000)
        );
        assert_eq!(parse_time("2h", now), Ok(now - 7_200_000));
        assert_eq!(parse_time("7d", now), Ok(now - 7 * DAY_MS));
        assert_eq!(parse_time("now", now), Ok(now));
        assert_eq!(parse_time("1764547200", now), Ok(1_764_547_200_000));
        for bad in [
            "",
            "yesterday",
            "2026-13-01",
            "2026-02-30",
            "2026-12-01T25:00Z",
            "2026-12-01X10:00",
            "99999999999999999999",
            "5y",
            "-5d",
            "2026-12-01T10:00:00+1",
            "２０２６-12-01",
        ] {
            assert!(parse_time(bad, now).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn queue_ids_give_their_arrival() {
        // 13 hex digits of microseconds, then the core and a sequence number.
        let micros: i64 = 1_764_547_200_123_456;
        let qid = format!("{micros:013X}00A001");
        assert!(valid_qid(&qid));
        assert_eq!(arrival_of(&qid), Some(1_764_547_200_123));
        assert!(!valid_qid("../etc/passwd"));
        assert!(!valid_qid("12"));
    }
}
