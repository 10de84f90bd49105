//! The quarantine store: messages that inspection kept back instead of delivering.
//!
//! One file per message, `<queue id>.bwq`, in one directory shared by every core: a
//! first line `BWQ1 <length>`, the message's metadata as JSON of that length and a line
//! end, then the content exactly as it would have been delivered (Received and result
//! headers included). A file is written under a `.tmp` name, synced, renamed and the
//! directory synced before the session answers `250`, so a quarantined message survives
//! a crash as an accepted one does; a `.tmp` file is never read back.
//!
//! Each recipient's copy is released or deleted on its own: the file is rewritten
//! (again through a `.tmp` name) without that recipient, and removed with its last one.
//! A released copy goes through the normal queue under a new queue id, with an
//! `X-Bulwark-Released` header naming the quarantine entry. Messages are removed after
//! the retention period, counted from the arrival time the queue id encodes.
//!
//! Core 0 serves the operations (`bulwark quarantine …` on its admin socket) and the
//! expiry; every core writes the messages it quarantines.

use std::cell::RefCell;
use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use glommio::io::{BufferedFile, Directory};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::deliver::{Deliverer, Message};
use crate::queue::{Location, QueueIds, Spool, unix_now};

const MAGIC: &str = "BWQ1";
/// The longest metadata accepted when reading a file back.
const MAX_META: usize = 1 << 20;
/// Content returned by `show`, at most.
const SHOW_LIMIT: usize = 256 * 1024;
/// Pieces in which a streamed message is copied from the spool.
const COPY_PIECE: u64 = 1 << 20;
/// How often expired messages are looked for (more often with a short retention).
const EXPIRY_PERIOD: Duration = Duration::from_secs(600);
/// A `.tmp` file older than this is left over from a crash.
const STALE_TMP: Duration = Duration::from_secs(3600);

/// What is known about a quarantined message besides its content.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Meta {
    pub id: String,
    /// Unix seconds.
    pub arrival: u64,
    pub sender: String,
    /// Recipients whose copy is still in quarantine.
    pub recipients: Vec<String>,
    pub client_ip: String,
    pub helo: String,
    /// The verdict class and the action's reason.
    pub verdict: String,
    pub score: f64,
    pub rules: Vec<String>,
    /// The Subject as received (decoded where it was encoded), at most 256 characters.
    pub subject: String,
    /// Octets of content.
    pub size: u64,
    /// Spool flags (8BITMIME, SMTPUTF8) for the released copy.
    pub flags: u8,
    /// Unix seconds after which it is removed.
    #[serde(default)]
    pub expires: u64,
}

/// The store on disk.
#[derive(Debug, Clone)]
pub struct Quarantine {
    dir: PathBuf,
    retention: Duration,
}

fn file_name(id: &str) -> Option<String> {
    // Queue ids are upper-case hex: anything else could name a path outside the store.
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    Some(format!("{id}.bwq"))
}

/// The arrival (Unix seconds) a queue id encodes: its first 13 hex digits are microseconds.
fn arrival_of(id: &str) -> Option<u64> {
    let micros = u64::from_str_radix(id.get(..13)?, 16).ok()?;
    Some(micros / 1_000_000)
}

fn encode(meta: &Meta, parts: &[&[u8]]) -> io::Result<Vec<u8>> {
    let json = serde_json::to_vec(meta).map_err(io::Error::other)?;
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut out = Vec::with_capacity(json.len() + len + 32);
    out.extend_from_slice(format!("{MAGIC} {}\n", json.len()).as_bytes());
    out.extend_from_slice(&json);
    out.push(b'\n');
    for p in parts {
        out.extend_from_slice(p);
    }
    Ok(out)
}

/// The metadata and where the content starts, from the start of a file. `Ok(None)`:
/// the head is longer than `head` (read more).
fn decode_head(head: &[u8]) -> io::Result<Option<(Meta, usize)>> {
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
    let Some(nl) = memchr::memchr(b'\n', head) else {
        return if head.len() > 32 {
            Err(bad("no header line"))
        } else {
            Ok(None)
        };
    };
    let line = std::str::from_utf8(&head[..nl]).map_err(|_| bad("header line is not text"))?;
    let len: usize = line
        .strip_prefix(MAGIC)
        .and_then(|r| r.trim().parse().ok())
        .ok_or_else(|| bad("not a quarantine file"))?;
    if len > MAX_META {
        return Err(bad("metadata too long"));
    }
    let start = nl + 1;
    if head.len() < start + len + 1 {
        return Ok(None);
    }
    let meta: Meta = serde_json::from_slice(&head[start..start + len])
        .map_err(|e| bad(&format!("metadata: {e}")))?;
    Ok(Some((meta, start + len + 1)))
}

impl Quarantine {
    pub fn new(dir: PathBuf, retention: Duration) -> Quarantine {
        Quarantine { dir, retention }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Creates the directory (mode 0700) if it is missing.
    pub fn prepare(&self) -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        if !self.dir.exists() {
            std::fs::create_dir_all(&self.dir)?;
            std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))?;
        }
        Ok(())
    }

    fn path(&self, id: &str) -> io::Result<PathBuf> {
        file_name(id)
            .map(|n| self.dir.join(n))
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a queue id"))
    }

    /// Writes a message durably: when this returns `Ok`, it is on disk under its name.
    pub async fn store(&self, meta: &mut Meta, parts: &[&[u8]]) -> io::Result<()> {
        meta.expires = meta.arrival + self.retention.as_secs();
        let bytes = encode(meta, parts)?;
        self.write(&meta.id, bytes).await
    }

    async fn write(&self, id: &str, bytes: Vec<u8>) -> io::Result<()> {
        let mut f = TmpFile::create(self.path(id)?).await?;
        match f.append(bytes).await {
            Ok(()) => f.finish(self).await,
            Err(e) => {
                f.abort().await;
                Err(e)
            }
        }
    }

    /// Like [`Quarantine::store`] for a message already in the spool (streamed): its
    /// content is copied a piece at a time, never held whole.
    pub async fn store_from_spool(
        &self,
        meta: &mut Meta,
        spool: &Spool,
        loc: Location,
    ) -> io::Result<()> {
        meta.expires = meta.arrival + self.retention.as_secs();
        let mut f = TmpFile::create(self.path(&meta.id)?).await?;
        let copied = async {
            f.append(encode(meta, &[])?).await?;
            let mut at = 0;
            while at < loc.len {
                let n = COPY_PIECE.min(loc.len - at);
                let piece = spool.read_range(loc, at, n).await?;
                if piece.is_empty() {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "spool content ended early",
                    ));
                }
                at += piece.len() as u64;
                f.append(piece).await?;
            }
            Ok(())
        }
        .await;
        match copied {
            Ok(()) => f.finish(self).await,
            Err(e) => {
                f.abort().await;
                Err(e)
            }
        }
    }

    async fn sync_dir(&self) -> io::Result<()> {
        let d = Directory::open(&self.dir).await?;
        d.sync().await?;
        d.close().await?;
        Ok(())
    }

    /// Reads a file's metadata, and its content when `content` is set.
    async fn read(&self, id: &str, content: bool) -> io::Result<(Meta, Vec<u8>)> {
        let file = match BufferedFile::open(self.path(id)?).await {
            Ok(f) => f,
            Err(e) => {
                let e = io::Error::from(e);
                return Err(if e.kind() == io::ErrorKind::NotFound {
                    io::Error::new(e.kind(), format!("no message {id} in quarantine"))
                } else {
                    e
                });
            }
        };
        let result = async {
            let size = file.file_size().await?;
            let mut want = if content {
                size as usize
            } else {
                (size as usize).min(16 * 1024)
            };
            loop {
                let head = file.read_at(0, want).await?;
                match decode_head(&head)? {
                    Some((meta, start)) => {
                        let body = if content {
                            head[start..].to_vec()
                        } else {
                            Vec::new()
                        };
                        return Ok((meta, body));
                    }
                    None if want < size as usize => {
                        want = (want * 4).min(size as usize).min(MAX_META + 64)
                    }
                    None => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "truncated quarantine file",
                        ));
                    }
                }
            }
        }
        .await;
        let _ = file.close().await;
        result
    }

    /// The ids in the store, oldest first.
    fn ids(&self) -> io::Result<Vec<String>> {
        let mut ids = Vec::new();
        for e in std::fs::read_dir(&self.dir)? {
            let e = e?;
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(id) = name.strip_suffix(".bwq") {
                ids.push(id.to_string());
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Every message (or those held for `recipient`), oldest first. A file that cannot
    /// be read is logged and left out.
    pub async fn list(&self, recipient: Option<&str>) -> io::Result<Vec<Meta>> {
        let mut out = Vec::new();
        for id in self.ids()? {
            match self.read(&id, false).await {
                Ok((meta, _)) => {
                    if recipient
                        .is_none_or(|r| meta.recipients.iter().any(|x| x.eq_ignore_ascii_case(r)))
                    {
                        out.push(meta);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => warn!(%id, "unreadable quarantine file: {e}"),
            }
            glommio::yield_if_needed().await;
        }
        Ok(out)
    }

    /// Removes `recipients` from a message (all of them when `None`); the file goes
    /// with its last recipient. Returns the metadata as it was, the content and the
    /// recipients removed.
    async fn take(
        &self,
        id: &str,
        recipient: Option<&str>,
    ) -> io::Result<(Meta, Vec<u8>, Vec<String>)> {
        let (meta, content) = self.read(id, true).await?;
        let (taken, kept): (Vec<String>, Vec<String>) = meta
            .recipients
            .iter()
            .cloned()
            .partition(|r| recipient.is_none_or(|want| r.eq_ignore_ascii_case(want)));
        if taken.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "{id} is not in quarantine for {}",
                    recipient.unwrap_or_default()
                ),
            ));
        }
        if kept.is_empty() {
            glommio::io::remove(self.path(id)?).await?;
            self.sync_dir().await?;
        } else {
            let mut rest = meta.clone();
            rest.recipients = kept;
            let bytes = encode(&rest, &[&content])?;
            self.write(id, bytes).await?;
        }
        Ok((meta, content, taken))
    }

    /// Removes messages past their retention; returns how many.
    pub async fn expire(&self, now: u64) -> io::Result<usize> {
        let mut removed = 0;
        for id in self.ids()? {
            let Some(arrival) = arrival_of(&id) else {
                continue;
            };
            if arrival + self.retention.as_secs() > now {
                // Ids sort by arrival: the rest are younger.
                break;
            }
            match glommio::io::remove(self.path(&id)?)
                .await
                .map_err(io::Error::from)
            {
                Ok(()) => {
                    removed += 1;
                    info!(%id, "quarantined message expired");
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => warn!(%id, "cannot remove an expired quarantined message: {e}"),
            }
        }
        if removed > 0 {
            self.sync_dir().await?;
        }
        Ok(removed)
    }

    /// Removes `.tmp` files left by a crash (never answered, so nothing is lost).
    fn sweep_tmp(&self) -> io::Result<usize> {
        let mut n = 0;
        for e in std::fs::read_dir(&self.dir)? {
            let e = e?;
            let p = e.path();
            if p.extension().is_some_and(|x| x == "tmp") {
                let old = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > STALE_TMP);
                if old && std::fs::remove_file(&p).is_ok() {
                    n += 1;
                }
            }
        }
        Ok(n)
    }
}

/// A request on the admin socket (`bulwark quarantine …`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    QuarantineList {
        #[serde(default)]
        recipient: Option<String>,
    },
    QuarantineShow {
        id: String,
    },
    QuarantineRelease {
        id: String,
        #[serde(default)]
        recipient: Option<String>,
        /// Who released it, for the header and the log.
        #[serde(default)]
        by: Option<String>,
    },
    QuarantineDelete {
        id: String,
        #[serde(default)]
        recipient: Option<String>,
        /// Who deleted it, for tracking and the log.
        #[serde(default)]
        by: Option<String>,
    },
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entries: Vec<Meta>,
    /// `show`: the content (lossy text), at most 256 KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(default)]
    pub truncated: bool,
    /// `release`: the queue id of the released copy; `release`/`delete`: the recipients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued_as: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recipients: Vec<String>,
}

impl Response {
    fn error(e: impl Into<String>) -> Response {
        Response {
            error: Some(e.into()),
            ..Default::default()
        }
    }
}

/// A file written under a `.tmp` name and renamed over its target once synced.
struct TmpFile {
    file: BufferedFile,
    tmp: PathBuf,
    target: PathBuf,
    at: u64,
}

impl TmpFile {
    async fn create(target: PathBuf) -> io::Result<TmpFile> {
        let tmp = target.with_extension("tmp");
        let file = BufferedFile::create(&tmp).await?;
        Ok(TmpFile {
            file,
            tmp,
            target,
            at: 0,
        })
    }

    async fn append(&mut self, mut bytes: Vec<u8>) -> io::Result<()> {
        while !bytes.is_empty() {
            let n = self.file.write_at(bytes.clone(), self.at).await?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::WriteZero, "short write"));
            }
            self.at += n as u64;
            bytes.drain(..n);
        }
        Ok(())
    }

    async fn finish(self, store: &Quarantine) -> io::Result<()> {
        let synced = self.file.fdatasync().await.map_err(io::Error::from);
        let closed = self.file.close().await.map_err(io::Error::from);
        if let Err(e) = synced.and(closed) {
            let _ = glommio::io::remove(&self.tmp).await;
            return Err(e);
        }
        glommio::io::rename(&self.tmp, &self.target).await?;
        store.sync_dir().await
    }

    async fn abort(self) {
        let _ = self.file.close().await;
        let _ = glommio::io::remove(&self.tmp).await;
    }
}

/// Core 0's side of the store: the operations and the expiry.
pub struct Desk {
    store: Quarantine,
    spool: Spool,
    ids: Rc<QueueIds>,
    deliverer: Rc<Deliverer>,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    core: usize,
    /// Ids with an operation under way (two releases of one message never both run).
    busy: RefCell<HashSet<String>>,
}

impl Desk {
    pub fn start(
        store: Quarantine,
        spool: Spool,
        ids: Rc<QueueIds>,
        deliverer: Rc<Deliverer>,
        metrics: std::sync::Arc<crate::metrics::Metrics>,
        core: usize,
    ) -> Rc<Desk> {
        match store.sweep_tmp() {
            Ok(0) => {}
            Ok(n) => info!(files = n, "removed unfinished quarantine files"),
            Err(e) => warn!(dir = %store.dir.display(), "cannot sweep the quarantine: {e}"),
        }
        let desk = Rc::new(Desk {
            store,
            spool,
            ids,
            deliverer,
            metrics,
            core,
            busy: RefCell::new(HashSet::new()),
        });
        let d = desk.clone();
        let period = EXPIRY_PERIOD
            .min(d.store.retention / 4)
            .max(Duration::from_secs(1));
        glommio::spawn_local(async move {
            loop {
                match d.store.expire(unix_now()).await {
                    Ok(0) => {}
                    Ok(n) => {
                        d.count(2, n);
                        info!(messages = n, "expired quarantined messages removed")
                    }
                    Err(e) => warn!("quarantine expiry: {e}"),
                }
                glommio::timer::sleep(period).await;
            }
        })
        .detach();
        desk
    }

    pub async fn handle(&self, req: Request) -> Response {
        match req {
            Request::QuarantineList { recipient } => {
                match self.store.list(recipient.as_deref()).await {
                    Ok(entries) => Response {
                        ok: true,
                        entries,
                        ..Default::default()
                    },
                    Err(e) => Response::error(format!("cannot read the quarantine: {e}")),
                }
            }
            Request::QuarantineShow { id } => match self.store.read(&id, true).await {
                Ok((meta, content)) => {
                    let truncated = content.len() > SHOW_LIMIT;
                    let shown = &content[..content.len().min(SHOW_LIMIT)];
                    Response {
                        ok: true,
                        entries: vec![meta],
                        content: Some(String::from_utf8_lossy(shown).into_owned()),
                        truncated,
                        ..Default::default()
                    }
                }
                Err(e) => Response::error(describe(&id, &e)),
            },
            Request::QuarantineRelease { id, recipient, by } => {
                let Some(_busy) = self.claim(&id) else {
                    return Response::error(format!("{id}: another operation is under way"));
                };
                self.release(&id, recipient.as_deref(), by.as_deref().unwrap_or("admin"))
                    .await
            }
            Request::QuarantineDelete { id, recipient, by } => {
                let Some(_busy) = self.claim(&id) else {
                    return Response::error(format!("{id}: another operation is under way"));
                };
                match self.store.take(&id, recipient.as_deref()).await {
                    Ok((_, _, taken)) => {
                        self.count(1, 1);
                        let by = clean_by(by.as_deref().unwrap_or("admin"));
                        info!(%id, recipients = %taken.join(","), %by, "quarantined message deleted");
                        self.deliverer.tracker().record(crate::tracking::Event {
                            ev: "deleted",
                            qid: &id,
                            rcpts: &taken,
                            stage: "quarantine",
                            by: &by,
                            ..Default::default()
                        });
                        Response {
                            ok: true,
                            recipients: taken,
                            ..Default::default()
                        }
                    }
                    Err(e) => Response::error(describe(&id, &e)),
                }
            }
        }
    }

    fn count(&self, op: usize, n: usize) {
        self.metrics.shard(self.core).quarantine_ops[op].add(n as u64);
    }

    fn claim(&self, id: &str) -> Option<Claim<'_>> {
        if !self.busy.borrow_mut().insert(id.to_string()) {
            return None;
        }
        Some(Claim {
            set: &self.busy,
            id: id.to_string(),
        })
    }

    /// Queues the quarantined copy (for one recipient or all) under a new id, durably,
    /// and only then removes it from the store: a crash in between delivers it twice
    /// rather than never.
    async fn release(&self, id: &str, recipient: Option<&str>, by: &str) -> Response {
        let (meta, content) = match self.store.read(id, true).await {
            Ok(x) => x,
            Err(e) => return Response::error(describe(id, &e)),
        };
        let rcpts: Vec<String> = meta
            .recipients
            .iter()
            .filter(|r| recipient.is_none_or(|want| r.eq_ignore_ascii_case(want)))
            .cloned()
            .collect();
        if rcpts.is_empty() {
            return Response::error(format!(
                "{id} is not in quarantine for {}",
                recipient.unwrap_or_default()
            ));
        }
        let new_id = self.ids.next();
        let now = unix_now();
        let by = clean_by(by);
        let header = format!(
            "X-Bulwark-Released: from quarantine {id} by {by}; {}\r\n",
            crate::util::rfc5322_date(now)
        )
        .into_bytes();
        let location = match self
            .spool
            .append_message(
                &new_id,
                now,
                meta.flags,
                &meta.sender,
                &rcpts,
                &header,
                &content,
            )
            .await
        {
            Ok(l) => l,
            Err(e) => return Response::error(format!("{id}: cannot queue the release: {e}")),
        };
        let tracker = self.deliverer.tracker();
        tracker.record(crate::tracking::Event {
            ev: "released",
            qid: id,
            rcpts: &rcpts,
            queued_as: &new_id,
            by: &by,
            ..Default::default()
        });
        tracker.record(crate::tracking::Event {
            ev: "accepted",
            qid: &new_id,
            from: Some(&meta.sender),
            rcpts: &rcpts,
            size: Some((header.len() + content.len()) as u64),
            subject: &meta.subject,
            verdict: &meta.verdict,
            action: "deliver",
            stage: "release",
            queued_as: id,
            by: &by,
            ..Default::default()
        });
        let cached = self.deliverer.cache_content(header, content);
        self.deliverer.enqueue(Message::new(
            new_id.clone(),
            now,
            meta.flags,
            meta.sender.clone(),
            rcpts.clone(),
            location,
            cached,
        ));
        self.count(0, 1);
        info!(%id, queued_as = %new_id, recipients = %rcpts.join(","), %by, "quarantined message released");
        // Now the copy is in the queue; take those recipients out of the store.
        if let Err(e) = self.store.take(id, recipient).await {
            warn!(%id, "released, but not removed from the quarantine: {e}");
        }
        Response {
            ok: true,
            queued_as: Some(new_id),
            recipients: rcpts,
            ..Default::default()
        }
    }
}

/// Who released or deleted a message, as it may appear in a header and the log.
fn clean_by(by: &str) -> String {
    by.chars().filter(|c| !c.is_control()).take(128).collect()
}

fn describe(id: &str, e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => e.to_string(),
        io::ErrorKind::InvalidInput => format!("{id:?} is not a queue id"),
        _ => format!("{id}: {e}"),
    }
}

/// An id marked busy until dropped.
struct Claim<'a> {
    set: &'a RefCell<HashSet<String>>,
    id: String,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.set.borrow_mut().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Meta {
        Meta {
            id: "0006123456789000001A".into(),
            arrival: 1_700_000_000,
            sender: "a@example.org".into(),
            recipients: vec!["x@example.com".into(), "y@example.com".into()],
            client_ip: "192.0.2.1".into(),
            helo: "mx.example.org".into(),
            verdict: "spam".into(),
            score: 17.5,
            rules: vec!["GTUBE".into()],
            subject: "hello\nthere".into(),
            size: 5,
            flags: 0,
            expires: 0,
        }
    }

    #[test]
    fn head_round_trips_and_needs_its_whole_length() {
        let bytes = encode(&meta(), &[b"Subj", b"ect"]).unwrap();
        let (m, start) = decode_head(&bytes).unwrap().unwrap();
        assert_eq!(m, meta());
        assert_eq!(&bytes[start..], b"Subject");
        assert!(decode_head(&bytes[..start - 2]).unwrap().is_none());
        assert!(decode_head(b"BWQ1 9999999999\n{}").is_err());
        assert!(decode_head(b"NOPE 3\n{}\n").is_err());
    }

    #[test]
    fn ids_that_could_escape_the_directory_are_refused() {
        assert!(file_name("../etc/passwd").is_none());
        assert!(file_name("").is_none());
        assert!(file_name("a/b").is_none());
        assert_eq!(file_name("ABC123").as_deref(), Some("ABC123.bwq"));
    }

    #[test]
    fn arrival_comes_from_the_queue_id() {
        let id = crate::queue::QueueIds::new(1).next();
        let a = arrival_of(&id).unwrap();
        assert!(a.abs_diff(unix_now()) < 5);
        assert_eq!(arrival_of("xyz"), None);
    }
}
