//! Tracking events: what happened to every connection and message, for the control
//! service's tracking store (`bulwark-control tracking search`).
//!
//! Each core appends its events, one JSON object per line, to its own segment files in
//! `[tracking] dir`: `core-<core>-<sequence>.events`, a new segment at every start and
//! when one reaches `segment_size`. Recording an event only formats it into the core's
//! pending buffer; a task of the core writes the buffer out every `flush_interval` and
//! syncs the segment every `sync_interval`, so mail never waits for tracking. The control
//! service reads the segments from its own offsets (a line counts once its line end is
//! written) and removes a segment once it has read all of it and the core has moved on
//! to a newer one. When nothing reads them, a core keeps at most `max_size` of segments
//! and removes its oldest (counted in `bulwark_tracking_segments_removed_total`).
//!
//! An event names its kind (`ev`), its time (`t`, Unix milliseconds) and the core; the
//! other fields are those the kind has. Kinds: `refused` (a connection, with `stage` and
//! `reply`), `mail_refused` and `rcpt_refused` (one envelope command), `rejected` and
//! `accepted` (a message after its content, with inspection's verdict and action),
//! `quarantined`, `delivered` / `deferred` / `bounced` / `expired` (one recipient and
//! one attempt), `dsn` (the bounce sent to the sender), `released` and `deleted`
//! (a quarantined copy, or a queued one an operator deleted).

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::io::{BufferedFile, OpenOptions};
use serde::Serialize;
use tracing::warn;

use crate::metrics::Metrics;

/// Pending events a core holds while its writes fail; past it new events are dropped
/// (and counted) rather than growing without bound.
const MAX_PENDING: usize = 16 << 20;

/// `[tracking]`.
#[derive(Debug, Clone)]
pub struct Settings {
    pub enabled: bool,
    /// Default: `tracking` in the spool directory.
    pub dir: PathBuf,
    /// A core starts a new segment past this size.
    pub segment_size: u64,
    /// The most a core keeps of its segments when nothing removes them.
    pub max_size: u64,
    pub flush_interval: Duration,
    pub sync_interval: Duration,
}

impl Settings {
    pub fn new(dir: PathBuf) -> Settings {
        Settings {
            enabled: true,
            dir,
            segment_size: 64 << 20,
            max_size: 2 << 30,
            flush_interval: Duration::from_millis(100),
            sync_interval: Duration::from_secs(1),
        }
    }
}

/// One event. Empty strings, empty lists and `None` are left out of the line.
#[derive(Debug, Default, Serialize)]
pub struct Event<'a> {
    pub t: u64,
    pub core: usize,
    pub ev: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub qid: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub ip: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub helo: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<&'a str>,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub rcpt: &'a str,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub rcpts: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub subject: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub msgid: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub verdict: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub rules: &'a [String],
    #[serde(skip_serializing_if = "str::is_empty")]
    pub action: &'a str,
    /// Connection refusals: which check (`ip`, `dnsbl`, `pregreet`, …).
    #[serde(skip_serializing_if = "str::is_empty")]
    pub stage: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub reply: &'a str,
    /// Delivery: the host and address tried.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub dest: &'a str,
    /// Delivery: seconds since arrival; the attempt's number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// `released`: the queue id of the released copy; `dsn`: the bounce's.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub queued_as: &'a str,
    /// `released`, `deleted`: who did it.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub by: &'a str,
}

/// One core's tracking: the pending lines and the counters.
pub struct Tracker {
    core: usize,
    enabled: bool,
    pending: RefCell<Vec<u8>>,
    metrics: Option<Arc<Metrics>>,
    /// Something was recorded since the writer last looked.
    dirty: Cell<bool>,
}

fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Tracker {
    /// A tracker that records nothing (tracking off, and tests without a core).
    pub fn disabled() -> Rc<Tracker> {
        Rc::new(Tracker {
            core: 0,
            enabled: false,
            pending: RefCell::new(Vec::new()),
            metrics: None,
            dirty: Cell::new(false),
        })
    }

    /// Opens core `core`'s next segment in `settings.dir` and starts its writer.
    pub async fn start(
        core: usize,
        settings: &Settings,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Rc<Tracker>> {
        if !settings.enabled {
            return Ok(Tracker::disabled());
        }
        std::fs::create_dir_all(&settings.dir)?;
        let segments = own_segments(&settings.dir, core)?;
        let next = segments.last().map_or(1, |(seq, _, _)| seq + 1);
        let writer = Writer::open(settings.clone(), core, next).await?;
        let t = Rc::new(Tracker {
            core,
            enabled: true,
            pending: RefCell::new(Vec::with_capacity(64 << 10)),
            metrics: Some(metrics),
            dirty: Cell::new(false),
        });
        let me = t.clone();
        glommio::spawn_local(async move { writer.run(me).await }).detach();
        Ok(t)
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Formats `ev` into the pending buffer (its time and core filled in).
    pub fn record(&self, mut ev: Event<'_>) {
        if !self.enabled {
            return;
        }
        let shard = self.metrics.as_ref().map(|m| m.shard(self.core));
        let Ok(mut p) = self.pending.try_borrow_mut() else {
            return;
        };
        if p.len() >= MAX_PENDING {
            if let Some(s) = shard {
                s.tracking_dropped.inc();
            }
            return;
        }
        ev.t = unix_millis();
        ev.core = self.core;
        let mark = p.len();
        if serde_json::to_writer(&mut *p, &ev).is_err() {
            p.truncate(mark);
            return;
        }
        p.push(b'\n');
        self.dirty.set(true);
        if let Some(s) = shard {
            s.tracking_events.inc();
        }
    }

    fn take(&self, into: &mut Vec<u8>) {
        if let Ok(mut p) = self.pending.try_borrow_mut() {
            if into.is_empty() {
                std::mem::swap(&mut *p, into);
            } else {
                into.extend_from_slice(&p);
                p.clear();
            }
        }
        self.dirty.set(false);
    }

    fn shard(&self) -> Option<&crate::metrics::Shard> {
        self.metrics.as_ref().map(|m| m.shard(self.core))
    }
}

/// A core's segments in `dir`: sequence, path and size, oldest first.
fn own_segments(dir: &Path, core: usize) -> std::io::Result<Vec<(u64, PathBuf, u64)>> {
    let prefix = format!("core-{core}-");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(seq) = name
            .strip_prefix(&prefix)
            .and_then(|r| r.strip_suffix(".events"))
            .and_then(|s| s.parse::<u64>().ok())
        else {
            continue;
        };
        let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
        out.push((seq, entry.path(), size));
    }
    out.sort();
    Ok(out)
}

/// The name of core `core`'s segment `seq`.
pub fn segment_name(core: usize, seq: u64) -> String {
    format!("core-{core}-{seq:010}.events")
}

struct Writer {
    settings: Settings,
    core: usize,
    seq: u64,
    file: BufferedFile,
    at: u64,
    /// Written since the last sync.
    unsynced: bool,
}

impl Writer {
    async fn open(settings: Settings, core: usize, seq: u64) -> std::io::Result<Writer> {
        let path = settings.dir.join(segment_name(core, seq));
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .buffered_open(&path)
            .await?;
        // The new name is durable before anything is written into it.
        if let Ok(d) = glommio::io::Directory::open(&settings.dir).await {
            let _ = d.sync().await;
            let _ = d.close().await;
        }
        Ok(Writer {
            settings,
            core,
            seq,
            file,
            at: 0,
            unsynced: false,
        })
    }

    async fn run(mut self, tracker: Rc<Tracker>) {
        let mut out: Vec<u8> = Vec::with_capacity(64 << 10);
        let mut last_sync = Instant::now();
        self.trim(&tracker);
        loop {
            glommio::timer::sleep(self.settings.flush_interval).await;
            if tracker.dirty.get() {
                tracker.take(&mut out);
            }
            if !out.is_empty() {
                match self.write(&out).await {
                    Ok(()) => out.clear(),
                    Err(e) => {
                        // Kept for the next round in a new segment (the failed one may
                        // end in a partial line, which readers skip).
                        if let Some(s) = tracker.shard() {
                            s.tracking_write_errors.inc();
                        }
                        warn!(core = self.core, "cannot write tracking events: {e}");
                        if out.len() > MAX_PENDING {
                            if let Some(s) = tracker.shard() {
                                s.tracking_dropped
                                    .add(memchr::memchr_iter(b'\n', &out).count() as u64);
                            }
                            out.clear();
                        }
                        self.rotate(&tracker).await;
                        continue;
                    }
                }
            }
            if self.unsynced && last_sync.elapsed() >= self.settings.sync_interval {
                if let Err(e) = self.file.fdatasync().await {
                    warn!(core = self.core, "cannot sync tracking events: {e}");
                }
                self.unsynced = false;
                last_sync = Instant::now();
            }
            if self.at >= self.settings.segment_size {
                self.rotate(&tracker).await;
            }
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let mut done = 0;
        while done < bytes.len() {
            let n = self.file.write_at(bytes[done..].to_vec(), self.at).await?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::WriteZero,
                    "short write",
                ));
            }
            done += n;
            self.at += n as u64;
        }
        self.unsynced = true;
        Ok(())
    }

    /// Closes the segment (synced) and opens the next one.
    async fn rotate(&mut self, tracker: &Tracker) {
        let _ = self.file.fdatasync().await;
        let next = self.seq + 1;
        match Writer::open(self.settings.clone(), self.core, next).await {
            Ok(w) => {
                let old = std::mem::replace(self, w);
                let _ = old.file.close().await;
                self.trim(tracker);
            }
            Err(e) => {
                warn!(core = self.core, "cannot start a tracking segment: {e}");
                // Try again after a pause rather than spinning.
                glommio::timer::sleep(Duration::from_secs(1)).await;
            }
        }
    }

    /// Removes this core's oldest segments past `max_size` (never the current one).
    fn trim(&self, tracker: &Tracker) {
        let Ok(segments) = own_segments(&self.settings.dir, self.core) else {
            return;
        };
        let mut total: u64 = segments.iter().map(|s| s.2).sum();
        for (seq, path, size) in segments {
            if total <= self.settings.max_size || seq >= self.seq {
                break;
            }
            if std::fs::remove_file(&path).is_ok() {
                warn!(core = self.core, segment = %path.display(), "tracking segment removed unread: [tracking] max_size reached");
                if let Some(s) = tracker.shard() {
                    s.tracking_segments_removed.inc();
                }
            }
            total = total.saturating_sub(size);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_leave_out_empty_fields() {
        let rcpts = vec!["a@example.com".to_string()];
        let ev = Event {
            t: 5,
            ev: "accepted",
            qid: "0123",
            rcpts: &rcpts,
            size: Some(10),
            ..Default::default()
        };
        let line = serde_json::to_string(&ev).unwrap();
        assert_eq!(
            line,
            r#"{"t":5,"core":0,"ev":"accepted","qid":"0123","rcpts":["a@example.com"],"size":10}"#
        );
    }

    #[test]
    fn a_disabled_tracker_records_nothing() {
        let t = Tracker::disabled();
        t.record(Event {
            ev: "accepted",
            ..Default::default()
        });
        assert!(t.pending.borrow().is_empty());
    }

    #[test]
    fn segments_are_found_in_order_per_core() {
        let dir = std::env::temp_dir().join(format!("bulwark-tracking-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for name in [
            segment_name(0, 2),
            segment_name(0, 10),
            segment_name(1, 1),
            "core-0-x.events".into(),
            "other".into(),
        ] {
            std::fs::write(dir.join(name), b"").unwrap();
        }
        let seqs: Vec<u64> = own_segments(&dir, 0)
            .unwrap()
            .into_iter()
            .map(|s| s.0)
            .collect();
        assert_eq!(seqs, vec![2, 10]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
