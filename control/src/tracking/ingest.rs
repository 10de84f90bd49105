//! Reads the engines' tracking segments (`[control] tracking_dirs`) into the store.
//!
//! Each segment file gets a number the first time it is seen (never reused) and a
//! cursor: the offset up to which its lines were applied. An event's key is the
//! segment's number and the line's offset, so applying a line twice (control stopped
//! between storing events and storing the cursor) changes nothing: no event is lost
//! when control is down, and none is counted twice. A segment read to its end whose core
//! has moved on to a newer one is removed, with its cursor.
//!
//! Work is done in batches of at most [`BATCH`] events, each its own transaction, so a
//! backlog after an outage never holds the store for long and searches (which read
//! through their own connections) go on meanwhile. While a batch is written the next
//! one is read and parsed: its cursors are kept apart (`read`) and stored only once it
//! is applied in turn, and if a write fails reading starts again from the stored ones.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use super::{Event, Ingested, TrackingError, TrackingIngest};

/// Events applied in one transaction, at most.
pub const BATCH: usize = 20_000;
/// Octets read from one segment per round, at most.
const READ_CHUNK: u64 = 8 << 20;
/// Bits of an event key that hold the line's offset.
const OFFSET_BITS: u32 = 40;
/// The longest line taken as an event; longer ones are skipped as damaged.
const MAX_LINE: usize = 1 << 20;

/// What the ingester has done, for `/api/v1/tracking/status` and `/metrics`.
#[derive(Debug, Default)]
pub struct Stats {
    pub events: AtomicU64,
    pub duplicates: AtomicU64,
    pub damaged: AtomicU64,
    pub batches: AtomicU64,
    pub errors: AtomicU64,
    pub segments_removed: AtomicU64,
    /// Octets in the segments not read yet, as of the last round.
    pub backlog_bytes: AtomicU64,
    /// Time (Unix ms) of the newest event applied.
    pub newest_event: AtomicI64,
    /// When (Unix ms) the last round finished.
    pub last_round: AtomicI64,
}

#[derive(Debug, Serialize)]
pub struct StatsView {
    pub events: u64,
    pub duplicates: u64,
    pub damaged_lines: u64,
    pub batches: u64,
    pub errors: u64,
    pub segments_removed: u64,
    pub backlog_bytes: u64,
    pub newest_event: i64,
    pub last_round: i64,
}

impl Stats {
    pub fn view(&self) -> StatsView {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsView {
            events: g(&self.events),
            duplicates: g(&self.duplicates),
            damaged_lines: g(&self.damaged),
            batches: g(&self.batches),
            errors: g(&self.errors),
            segments_removed: g(&self.segments_removed),
            backlog_bytes: g(&self.backlog_bytes),
            newest_event: self.newest_event.load(Ordering::Relaxed),
            last_round: self.last_round.load(Ordering::Relaxed),
        }
    }
}

/// One segment as last seen.
#[derive(Debug, Clone)]
struct Cursor {
    no: i64,
    /// Up to here its events are in the store (as stored in the state database).
    offset: u64,
    /// Up to here its events have been read (ahead of `offset` while they are written).
    read: u64,
    /// The first octets of the file when first seen: a file of the same name with other
    /// content is another file.
    head: Vec<u8>,
}

/// A segment found in a directory.
struct Found {
    path: PathBuf,
    size: u64,
    /// Whether its core has a newer segment (so nothing more is written to this one).
    finished: bool,
}

pub struct Ingester {
    dirs: Vec<PathBuf>,
    state: Connection,
    cursors: HashMap<PathBuf, Cursor>,
    pub stats: Arc<Stats>,
}

const HEAD: usize = 64;

impl Ingester {
    /// `state` is the cursors' database (created if missing).
    pub fn open(
        dirs: Vec<PathBuf>,
        state: &Path,
        stats: Arc<Stats>,
    ) -> Result<Ingester, TrackingError> {
        let conn = Connection::open(state)?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;
             CREATE TABLE IF NOT EXISTS segments (
                no INTEGER PRIMARY KEY AUTOINCREMENT,
                path TEXT NOT NULL UNIQUE,
                offset INTEGER NOT NULL,
                head BLOB NOT NULL
             );",
        )?;
        let mut cursors = HashMap::new();
        {
            let mut st = conn.prepare("SELECT no, path, offset, head FROM segments")?;
            let rows = st.query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                ))
            })?;
            for r in rows {
                let (no, path, offset, head) = r?;
                cursors.insert(
                    PathBuf::from(path),
                    Cursor {
                        no,
                        offset: offset as u64,
                        read: offset as u64,
                        head,
                    },
                );
            }
        }
        Ok(Ingester {
            dirs,
            state: conn,
            cursors,
            stats,
        })
    }

    /// The segments in the directories, each core's in order.
    fn scan(&self) -> Vec<Found> {
        let mut out = Vec::new();
        for dir in &self.dirs {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            // core -> [(seq, path, size)]
            let mut cores: HashMap<String, Vec<(u64, PathBuf, u64)>> = HashMap::new();
            for e in entries.flatten() {
                let name = e.file_name();
                let Some(name) = name.to_str() else { continue };
                let Some(stem) = name.strip_suffix(".events") else {
                    continue;
                };
                let Some((core, seq)) = stem.rsplit_once('-') else {
                    continue;
                };
                let Ok(seq) = seq.parse::<u64>() else {
                    continue;
                };
                let size = e.metadata().map(|m| m.len()).unwrap_or(0);
                cores
                    .entry(core.to_string())
                    .or_default()
                    .push((seq, e.path(), size));
            }
            for (_, mut segs) in cores {
                segs.sort();
                let newest = segs.last().map(|s| s.0).unwrap_or(0);
                for (seq, path, size) in segs {
                    out.push(Found {
                        path,
                        size,
                        finished: seq < newest,
                    });
                }
            }
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        out
    }

    /// The cursor of `path`: the stored one if it is the same file, else a new one.
    fn cursor(&mut self, path: &Path) -> Result<Cursor, TrackingError> {
        let mut head = vec![0u8; HEAD];
        let n = std::fs::File::open(path)
            .and_then(|mut f| f.read(&mut head))
            .unwrap_or(0);
        head.truncate(n);
        if let Some(c) = self.cursors.get(path) {
            let same = if c.head.len() <= head.len() {
                head.starts_with(&c.head)
            } else {
                c.head.starts_with(&head)
            };
            if same {
                let mut c = c.clone();
                if c.head.len() < head.len() {
                    c.head = head;
                    self.state.execute(
                        "UPDATE segments SET head = ?2 WHERE no = ?1",
                        params![c.no, c.head],
                    )?;
                    self.cursors.insert(path.to_path_buf(), c.clone());
                }
                return Ok(c);
            }
            // Another file under a known name (a spool recreated): start afresh.
            self.state
                .execute("DELETE FROM segments WHERE no = ?1", [c.no])?;
        }
        let text = path.to_string_lossy();
        self.state.execute(
            "INSERT INTO segments (path, offset, head) VALUES (?1, 0, ?2)",
            params![text, head],
        )?;
        let no: i64 = self
            .state
            .query_row("SELECT no FROM segments WHERE path = ?1", [&text], |r| {
                r.get(0)
            })
            .optional()?
            .unwrap_or(0);
        let c = Cursor {
            no,
            offset: 0,
            read: 0,
            head,
        };
        self.cursors.insert(path.to_path_buf(), c.clone());
        Ok(c)
    }

    /// Reads what is new, up to a batch, from where the last read stopped (which may be
    /// ahead of the stored cursors while a batch is being written).
    fn read(&mut self) -> Result<Pending, TrackingError> {
        let found = self.scan();
        let mut batch: Vec<Ingested> = Vec::new();
        let mut advanced: Vec<(PathBuf, i64, u64)> = Vec::new();
        let mut finished_read: Vec<PathBuf> = Vec::new();
        for f in &found {
            let cur = self.cursor(&f.path)?;
            let from = cur.read;
            if f.size < from {
                // Truncated under us: nothing there to read again.
                advanced.push((f.path.clone(), cur.no, f.size));
                continue;
            }
            let left = f.size - from;
            if left == 0 {
                if f.finished {
                    finished_read.push(f.path.clone());
                }
                continue;
            }
            if batch.len() >= BATCH {
                continue;
            }
            let want = left.min(READ_CHUNK);
            let mut buf = vec![0u8; want as usize];
            let read = std::fs::File::open(&f.path).and_then(|mut file| {
                file.seek(SeekFrom::Start(from))?;
                file.read_exact(&mut buf)
            });
            if read.is_err() {
                continue;
            }
            let mut at = 0usize;
            let mut consumed = 0usize;
            while batch.len() < BATCH {
                let Some(nl) = memchr::memchr(b'\n', &buf[at..]) else {
                    break;
                };
                let line = &buf[at..at + nl];
                let offset = from + at as u64;
                at += nl + 1;
                consumed = at;
                if line.is_empty() {
                    continue;
                }
                match parse(line) {
                    Some((event, text)) => batch.push(Ingested {
                        key: (cur.no << OFFSET_BITS) | offset as i64,
                        event,
                        line: text,
                    }),
                    None => {
                        self.stats.damaged.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            let mut new_offset = from + consumed as u64;
            if consumed == 0 && want as usize >= MAX_LINE && left >= MAX_LINE as u64 {
                // No line end in a whole chunk: not an event; skip to the next line end.
                self.stats.damaged.fetch_add(1, Ordering::Relaxed);
                new_offset = from + want;
            }
            // A finished segment whose remainder has no line end (its core stopped in
            // the middle of a write): that remainder is never completed.
            if f.finished
                && new_offset < f.size
                && memchr::memchr(b'\n', &buf[consumed..]).is_none()
                && want == left
            {
                self.stats.damaged.fetch_add(1, Ordering::Relaxed);
                new_offset = f.size;
            }
            if new_offset != from {
                advanced.push((f.path.clone(), cur.no, new_offset));
            }
        }
        for (path, no, offset) in &advanced {
            if let Some(c) = self.cursors.get_mut(path)
                && c.no == *no
            {
                c.read = *offset;
            }
        }
        Ok(Pending {
            batch,
            advanced,
            finished_read,
            found,
        })
    }

    /// After `pending`'s events are in the store (`applied` of them new): stores the
    /// cursors past them, removes the segments read to their end.
    fn finish(&mut self, pending: Pending, applied: usize) -> Result<(), TrackingError> {
        let Pending {
            batch,
            advanced,
            finished_read,
            found,
        } = pending;
        let n = batch.len();
        if n > 0 {
            self.stats
                .events
                .fetch_add(applied as u64, Ordering::Relaxed);
            self.stats
                .duplicates
                .fetch_add((n - applied) as u64, Ordering::Relaxed);
            self.stats.batches.fetch_add(1, Ordering::Relaxed);
            if let Some(t) = batch.iter().map(|e| e.event.t).max() {
                self.stats.newest_event.fetch_max(t, Ordering::Relaxed);
            }
        }
        if !advanced.is_empty() {
            let tx = self.state.transaction()?;
            for (path, no, offset) in &advanced {
                if let Some(c) = self.cursors.get_mut(path)
                    && c.no == *no
                {
                    c.offset = *offset;
                    tx.execute(
                        "UPDATE segments SET offset = ?2 WHERE no = ?1",
                        params![c.no, *offset as i64],
                    )?;
                }
            }
            tx.commit()?;
        }
        let backlog: u64 = found
            .iter()
            .map(|f| {
                let at = self.cursors.get(&f.path).map_or(0, |c| c.offset);
                f.size.saturating_sub(at)
            })
            .sum();
        self.stats.backlog_bytes.store(backlog, Ordering::Relaxed);
        for path in finished_read {
            if std::fs::remove_file(&path).is_ok() || !path.exists() {
                if let Some(c) = self.cursors.remove(&path) {
                    self.state
                        .execute("DELETE FROM segments WHERE no = ?1", [c.no])?;
                }
                self.stats.segments_removed.fetch_add(1, Ordering::Relaxed);
            }
        }
        // Cursors of segments that are gone (removed by their engine).
        let gone: Vec<PathBuf> = self
            .cursors
            .keys()
            .filter(|p| !found.iter().any(|f| &f.path == *p))
            .cloned()
            .collect();
        for p in gone {
            if !p.exists()
                && let Some(c) = self.cursors.remove(&p)
            {
                self.state
                    .execute("DELETE FROM segments WHERE no = ?1", [c.no])?;
            }
        }
        self.stats
            .last_round
            .store(super::sqlite::now_ms(), Ordering::Relaxed);
        Ok(())
    }

    /// Reading starts again from the stored cursors (what was read past them was not
    /// applied).
    fn rewind(&mut self) {
        for c in self.cursors.values_mut() {
            c.read = c.offset;
        }
    }

    /// Applies everything there is, reading (and parsing) each batch while the one
    /// before it is written, until the segments hold nothing new or `stop` says so.
    /// Returns the events read.
    pub fn drain(
        &mut self,
        store: &mut dyn TrackingIngest,
        stop: &std::sync::atomic::AtomicBool,
    ) -> Result<usize, TrackingError> {
        let mut total = 0;
        let mut pending = self.read()?;
        loop {
            let n = pending.batch.len();
            if n == 0 {
                self.finish(pending, 0)?;
                return Ok(total);
            }
            let more = n >= BATCH && !stop.load(Ordering::Relaxed);
            let (applied, next) = std::thread::scope(|scope| {
                let batch = &pending.batch;
                let store = &mut *store;
                let writing = scope.spawn(move || store.ingest(batch));
                let next = more.then(|| self.read());
                let applied = writing.join().unwrap_or_else(|_| {
                    Err(TrackingError::Io(std::io::Error::other(
                        "the tracking writer panicked",
                    )))
                });
                (applied, next)
            });
            let applied = match applied {
                Ok(new) => new,
                Err(e) => {
                    // The next batch was read past cursors that are not stored: read
                    // it again next time.
                    self.rewind();
                    return Err(e);
                }
            };
            self.finish(pending, applied)?;
            total += n;
            match next {
                Some(Ok(p)) => pending = p,
                Some(Err(e)) => {
                    self.rewind();
                    return Err(e);
                }
                None => return Ok(total),
            }
        }
    }

    /// Runs until `stop` says so: everything there is, then again after `poll`. Old
    /// partitions are dropped once an hour.
    pub fn run(
        mut self,
        store: &mut dyn TrackingIngest,
        poll: Duration,
        stop: &std::sync::atomic::AtomicBool,
    ) {
        let mut last_expiry: Option<Instant> = None;
        while !stop.load(Ordering::Relaxed) {
            if last_expiry.is_none_or(|t| t.elapsed() > Duration::from_secs(3600)) {
                match store.expire(super::sqlite::now_ms()) {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(partitions = n, "old tracking partitions dropped"),
                    Err(e) => tracing::warn!("tracking expiry: {e}"),
                }
                last_expiry = Some(Instant::now());
            }
            if let Err(e) = self.drain(store, stop) {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("tracking ingestion: {e}");
                std::thread::sleep(Duration::from_secs(1));
            }
            std::thread::sleep(poll);
        }
    }
}

/// A batch read from the segments and not yet applied.
struct Pending {
    batch: Vec<Ingested>,
    /// Segments (path and number) and the offsets their cursors move to once the batch
    /// is applied.
    advanced: Vec<(PathBuf, i64, u64)>,
    /// Finished segments read to their end: removed once the batch is applied.
    finished_read: Vec<PathBuf>,
    /// The segments as found when the batch was read.
    found: Vec<Found>,
}

/// An event line, parsed; `None` when it is not one.
fn parse(line: &[u8]) -> Option<(Event, String)> {
    if line.len() > MAX_LINE {
        return None;
    }
    let text = std::str::from_utf8(line).ok()?;
    let ev: Event = serde_json::from_str(text).ok()?;
    if ev.ev.is_empty() || ev.t <= 0 {
        return None;
    }
    if !ev.qid.is_empty() && !super::valid_qid(&ev.qid) {
        return None;
    }
    Some((ev, text.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracking::sqlite::SqliteTracking;
    use std::sync::atomic::AtomicBool;

    static NO_STOP: AtomicBool = AtomicBool::new(false);

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "bulwark-tracking-ingest-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("events")).unwrap();
        d
    }

    /// An ingester of `d/events` with its cursors in `d/cursors.sqlite`.
    fn open_ingester(d: &Path, stats: &Arc<Stats>) -> Ingester {
        Ingester::open(
            vec![d.join("events")],
            &d.join("cursors.sqlite"),
            stats.clone(),
        )
        .unwrap()
    }

    fn line(t: i64, n: u32) -> String {
        format!(
            "{{\"t\":{t},\"ev\":\"accepted\",\"qid\":\"{:013X}000{n:03X}\",\"from\":\"a@b.test\",\"rcpts\":[\"c@d.test\"],\"action\":\"deliver\"}}\n",
            t * 1000
        )
    }

    fn append(path: &Path, text: &str) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    #[test]
    fn a_line_counts_once_its_end_is_written() {
        let d = dir("partial");
        let seg = d.join("events/core-0-0000000001.events");
        let mut store = SqliteTracking::open(&d.join("store"), 30).unwrap();
        let stats = Arc::new(Stats::default());
        let mut ing = open_ingester(&d, &stats);
        let t = crate::tracking::sqlite::now_ms();
        let full = line(t, 1);
        let (a, b) = full.split_at(30);
        append(&seg, a);
        assert_eq!(ing.drain(&mut store, &NO_STOP).unwrap(), 0);
        append(&seg, b);
        append(&seg, &line(t, 2));
        assert_eq!(ing.drain(&mut store, &NO_STOP).unwrap(), 2);
        assert_eq!(ing.drain(&mut store, &NO_STOP).unwrap(), 0);
        // Started again from the stored cursors: nothing read twice.
        let mut again = open_ingester(&d, &stats);
        assert_eq!(again.drain(&mut store, &NO_STOP).unwrap(), 0);
        assert_eq!(stats.view().events, 2);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_finished_segment_is_removed_and_its_torn_tail_skipped() {
        let d = dir("finished");
        let events = d.join("events");
        let mut store = SqliteTracking::open(&d.join("store"), 30).unwrap();
        let stats = Arc::new(Stats::default());
        let mut ing = open_ingester(&d, &stats);
        let t = crate::tracking::sqlite::now_ms();
        let old = events.join("core-0-0000000001.events");
        append(&old, &line(t, 1));
        append(&old, "{\"t\":1,\"ev\":\"acc");
        append(&events.join("core-0-0000000002.events"), &line(t, 2));
        assert_eq!(ing.drain(&mut store, &NO_STOP).unwrap(), 2);
        assert_eq!(stats.view().damaged_lines, 1);
        ing.drain(&mut store, &NO_STOP).unwrap();
        assert!(!old.exists());
        assert!(events.join("core-0-0000000002.events").exists());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn another_file_under_a_known_name_is_read_from_its_start() {
        let d = dir("renamed");
        let events = d.join("events");
        let seg = events.join("core-0-0000000001.events");
        let mut store = SqliteTracking::open(&d.join("store"), 30).unwrap();
        let stats = Arc::new(Stats::default());
        let mut ing = open_ingester(&d, &stats);
        let t = crate::tracking::sqlite::now_ms();
        append(&seg, &line(t, 1));
        append(&seg, &line(t, 2));
        assert_eq!(ing.drain(&mut store, &NO_STOP).unwrap(), 2);
        // The spool was recreated: a new segment 1 with other events.
        std::fs::remove_file(&seg).unwrap();
        append(&seg, &line(t + 7, 3));
        assert_eq!(ing.drain(&mut store, &NO_STOP).unwrap(), 1);
        assert_eq!(stats.view().events, 3);
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// Messages stored, over every partition of the store in `dir`.
    fn stored(dir: &Path) -> i64 {
        let search = crate::tracking::sqlite::SqliteSearch::new(dir);
        let mut n = 0;
        for day in search.days().unwrap() {
            for shard in 0..crate::tracking::sqlite::SHARDS {
                let conn = Connection::open(search.path(day, shard)).unwrap();
                n += conn
                    .query_row("SELECT count(*) FROM messages", [], |r| r.get::<_, i64>(0))
                    .unwrap();
            }
        }
        n
    }

    fn backlog(seg: &Path, t: i64, n: u32) {
        let text: String = (0..n).map(|i| line(t, i)).collect();
        append(seg, &text);
    }

    #[test]
    fn a_backlog_of_several_batches_is_applied_once_each() {
        let d = dir("backlog");
        let seg = d.join("events/core-0-0000000001.events");
        let n = (BATCH * 5 / 2) as u32;
        backlog(&seg, crate::tracking::sqlite::now_ms(), n);
        let mut store = SqliteTracking::open(&d.join("store"), 30).unwrap();
        let stats = Arc::new(Stats::default());
        let mut ing = open_ingester(&d, &stats);
        assert_eq!(ing.drain(&mut store, &NO_STOP).unwrap(), n as usize);
        assert_eq!(stats.view().batches, 3);
        assert_eq!(stats.view().backlog_bytes, 0);
        // The cursors stored are past every batch: started again, nothing is read.
        let mut again = open_ingester(&d, &stats);
        assert_eq!(again.drain(&mut store, &NO_STOP).unwrap(), 0);
        assert_eq!(stats.view().events, n as u64);
        assert_eq!(stats.view().duplicates, 0);
        assert_eq!(stored(&d.join("store")), n as i64);
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// The real store, failing its `fail`th batch (the disk full, say).
    struct Failing {
        store: SqliteTracking,
        calls: usize,
        fail: usize,
    }

    impl TrackingIngest for Failing {
        fn ingest(&mut self, events: &[Ingested]) -> Result<usize, TrackingError> {
            self.calls += 1;
            if self.calls == self.fail {
                return Err(TrackingError::Io(std::io::Error::other("disk full")));
            }
            self.store.ingest(events)
        }
        fn expire(&mut self, now: i64) -> Result<usize, TrackingError> {
            self.store.expire(now)
        }
    }

    #[test]
    fn a_batch_read_while_a_failing_one_was_written_is_read_again() {
        let d = dir("failing");
        let seg = d.join("events/core-0-0000000001.events");
        let n = (BATCH * 5 / 2) as u32;
        backlog(&seg, crate::tracking::sqlite::now_ms(), n);
        let mut store = Failing {
            store: SqliteTracking::open(&d.join("store"), 30).unwrap(),
            calls: 0,
            fail: 2,
        };
        let stats = Arc::new(Stats::default());
        let mut ing = open_ingester(&d, &stats);
        // The first batch goes in; the second fails while the third is being read.
        assert!(ing.drain(&mut store, &NO_STOP).is_err());
        assert_eq!(stats.view().events, BATCH as u64);
        assert_eq!(stored(&d.join("store")), BATCH as i64);
        // The next drain starts from the second batch: every event once.
        assert_eq!(ing.drain(&mut store, &NO_STOP).unwrap(), n as usize - BATCH);
        assert_eq!(stats.view().events, n as u64);
        assert_eq!(stats.view().duplicates, 0);
        assert_eq!(stored(&d.join("store")), n as i64);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
