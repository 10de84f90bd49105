//! Snapshot transport through shared memory (`/dev/shm`, or any directory).
//!
//! For a snapshot path `P` (for example `/dev/shm/bulwark/policy`):
//! * `P` is a 64-byte header: the magic `BWPH0001`, then the generation in force as an
//!   8-byte atomic. Readers map it once and load the generation with one atomic load.
//! * `P.<generation as 16 hex digits>` is the complete snapshot image of that
//!   generation (see [`crate::encode`]). It is written under a temporary name and renamed
//!   into place before the header's generation is raised, so a reader never sees a
//!   generation whose file is incomplete; the image's own checksum and generation are
//!   verified anyway.
//! * Old images are unlinked after a grace period; a reader that still holds one keeps
//!   its copy.
//!
//! The header is memory another process can write. Its directory is created 0700 and the
//! header 0600, sizes are checked before mapping, and the generation is reached through a
//! raw pointer into the mapping (never a Rust reference over memory someone else
//! changes). If the header file is truncated while mapped, touching it would raise
//! SIGBUS in every core: a process-wide guard ([`fault`]) replaces the vanished page with
//! zeros instead, so readers see generation 0 ("nothing new") and keep the policy they
//! have; [`Follower::reopen_if_replaced`] maps the header again once it is recreated.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use memmap2::{Mmap, MmapMut};

use crate::snapshot::{Snapshot, SnapshotError};

const HEADER_MAGIC: [u8; 8] = *b"BWPH0001";
const HEADER_SIZE: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ShmError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}: not a Bulwark policy header (bad magic or size)")]
    BadHeader(PathBuf),
    #[error("{path}: generation {generation} is refused: {source}")]
    Invalid {
        path: PathBuf,
        generation: u64,
        source: SnapshotError,
    },
    #[error("generation {new} is not newer than the published {current}")]
    NotNewer { new: u64, current: u64 },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ShmError + '_ {
    move |source| ShmError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The image file of a generation.
pub fn image_path(header: &Path, generation: u64) -> PathBuf {
    let mut name = header
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".{generation:016x}"));
    header.with_file_name(name)
}

/// The generation word of a mapped header.
///
/// # Safety
/// `base` must point to a live mapping of at least `HEADER_SIZE` bytes that is page
/// aligned (so offset 8 is 8-byte aligned) and stays mapped for `'a`. Other processes may
/// write the word at any time; it is only ever accessed atomically, and every bit pattern
/// is a valid `u64`. If the file under it shrinks, [`fault`] keeps the page readable.
unsafe fn generation_cell<'a>(base: *const u8) -> &'a AtomicU64 {
    // SAFETY: see above; `AtomicU64::from_ptr` is the sanctioned way to treat shared
    // memory as an atomic.
    unsafe { AtomicU64::from_ptr(base.add(8) as *mut u64) }
}

/// Opens a header file for mapping, refusing anything that is not exactly a header.
fn check_header_file(path: &Path, file: &File) -> Result<(), ShmError> {
    let meta = file.metadata().map_err(io(path))?;
    if !meta.is_file() || meta.len() != HEADER_SIZE as u64 {
        return Err(ShmError::BadHeader(path.to_path_buf()));
    }
    Ok(())
}

/// Keeps mapped headers readable when their files are truncated under them.
///
/// A SIGBUS whose address lies in a registered header mapping is answered by mapping
/// an anonymous zero page over it (MAP_FIXED), after which the faulting load re-executes
/// and reads zeros. Any other SIGBUS goes to the handler that was installed before (the
/// Rust runtime's), or to the default action.
pub mod fault {
    use std::sync::Once;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

    const SLOTS: usize = 256;
    static START: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
    static LEN: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
    static FAULTS: AtomicU64 = AtomicU64::new(0);
    static INSTALL: Once = Once::new();
    static mut PREVIOUS: Option<libc::sigaction> = None;

    /// Header pages replaced by zeros so far (their files had been truncated).
    pub fn faults() -> u64 {
        FAULTS.load(Ordering::Relaxed)
    }

    fn page() -> usize {
        // SAFETY: sysconf has no preconditions.
        let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if p > 0 { p as usize } else { 4096 }
    }

    /// Guards `[start, start + len)`; returns the slot to release, or `None` when all
    /// slots are taken (the mapping then goes unguarded).
    pub(super) fn register(start: *const u8, len: usize) -> Option<usize> {
        INSTALL.call_once(install);
        let len = len.div_ceil(page()) * page();
        for (i, s) in START.iter().enumerate() {
            if s.compare_exchange(0, usize::MAX, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                LEN[i].store(len, Ordering::Release);
                s.store(start as usize, Ordering::Release);
                return Some(i);
            }
        }
        None
    }

    pub(super) fn release(slot: usize) {
        START[slot].store(0, Ordering::Release);
    }

    fn install() {
        // SAFETY: a plain sigaction call with a handler that only does async-signal-safe
        // work (atomics, mmap, sigaction).
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_sigbus as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut sa.sa_mask);
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(libc::SIGBUS, &sa, &mut old) == 0 {
                PREVIOUS = Some(old);
            }
        }
    }

    extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
        // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
        let addr = unsafe { (*info).si_addr() } as usize;
        for i in 0..SLOTS {
            let start = START[i].load(Ordering::Acquire);
            if start == 0 || start == usize::MAX {
                continue;
            }
            let len = LEN[i].load(Ordering::Acquire);
            if addr >= start && addr < start + len {
                // SAFETY: the range is a header mapping this process owns; replacing it
                // with anonymous memory of the same size keeps every pointer into it valid.
                let r = unsafe {
                    libc::mmap(
                        start as *mut libc::c_void,
                        len,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_FIXED | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                        -1,
                        0,
                    )
                };
                if r != libc::MAP_FAILED {
                    FAULTS.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
        // Not ours: hand it on.
        // SAFETY: PREVIOUS is written once, before the handler is installed.
        unsafe {
            #[allow(static_mut_refs)]
            match PREVIOUS {
                Some(old)
                    if old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN =>
                {
                    if old.sa_flags & libc::SA_SIGINFO != 0 {
                        let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                            std::mem::transmute(old.sa_sigaction);
                        f(sig, info, ctx);
                    } else {
                        let f: extern "C" fn(libc::c_int) = std::mem::transmute(old.sa_sigaction);
                        f(sig);
                    }
                }
                _ => {
                    // Default action: the faulting instruction runs again and ends the
                    // process as an unhandled SIGBUS would have.
                    let mut sa: libc::sigaction = std::mem::zeroed();
                    sa.sa_sigaction = libc::SIG_DFL;
                    libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut());
                }
            }
        }
    }
}

/// A header mapping registered with the [`fault`] guard while it lives.
struct Guarded<M> {
    map: M,
    slot: Option<usize>,
}

impl<M: std::ops::Deref<Target = [u8]>> Guarded<M> {
    fn new(map: M) -> Self {
        let slot = fault::register(map.as_ptr(), map.len());
        Guarded { map, slot }
    }

    fn generation(&self) -> &AtomicU64 {
        // SAFETY: the mapping is HEADER_SIZE bytes (checked before mapping), page
        // aligned, and lives as long as `self`.
        unsafe { generation_cell(self.map.as_ptr()) }
    }
}

impl<M> Drop for Guarded<M> {
    fn drop(&mut self) {
        if let Some(s) = self.slot {
            fault::release(s);
        }
    }
}

/// The writing side (the control service, or `bulwark publish-policy`).
pub struct Publisher {
    header_path: PathBuf,
    header: Guarded<MmapMut>,
    identity: (u64, u64),
    grace: Duration,
    /// Images on disk, oldest first, with when they were published, for unlinking.
    published: VecDeque<(u64, SystemTime)>,
}

impl Publisher {
    /// Opens the header at `path`, creating it (and its directory, 0700) if needed. A
    /// header found empty (truncated by someone) is laid out again.
    pub fn open(path: &Path, grace: Duration) -> Result<Publisher, ShmError> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
            && !dir.exists()
        {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io(dir))?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(io(path))?;
        let len = file.metadata().map_err(io(path))?.len();
        if len == 0 {
            file.set_len(HEADER_SIZE as u64).map_err(io(path))?;
        }
        check_header_file(path, &file)?;
        // SAFETY: the file is ours and fixed-size; the generation is only accessed
        // atomically and the magic is written once, before any reader can trust it.
        let mut header = unsafe { MmapMut::map_mut(&file) }.map_err(io(path))?;
        let published = existing_images(path);
        if len == 0 {
            header[..8].copy_from_slice(&HEADER_MAGIC);
            // A header laid out again (it was removed or cut short) continues from the
            // newest image still there: readers have seen that generation, so the next
            // one must be newer, not a reused number with other contents.
            let newest = published.back().map_or(0, |&(g, _)| g);
            // SAFETY: the mapping was just made from a header-sized file.
            unsafe { generation_cell(header.as_ptr()) }.store(newest, Ordering::Release);
        } else if header[..8] != HEADER_MAGIC {
            return Err(ShmError::BadHeader(path.to_path_buf()));
        }
        Ok(Publisher {
            header_path: path.to_path_buf(),
            identity: identity(&file.metadata().map_err(io(path))?),
            header: Guarded::new(header),
            grace,
            published,
        })
    }

    /// The generation in force.
    pub fn generation(&self) -> u64 {
        self.header.generation().load(Ordering::Acquire)
    }

    /// Publishes a complete snapshot image. Its generation must be newer than the one in
    /// force; it is checked before anything is written. A header that was truncated or
    /// replaced since it was opened is laid out again first.
    /// The header's path (images and artifacts are named after it).
    pub fn path(&self) -> &Path {
        &self.header_path
    }

    pub fn publish(&mut self, image: &[u8]) -> Result<u64, ShmError> {
        if !intact(&self.header_path, self.identity, &self.header.map) {
            let fresh = Publisher::open(&self.header_path, self.grace)?;
            self.header = fresh.header;
            self.identity = fresh.identity;
        }
        let snap = Snapshot::from_bytes(image).map_err(|source| ShmError::Invalid {
            path: self.header_path.clone(),
            generation: 0,
            source,
        })?;
        let generation = snap.generation();
        let current = self.generation();
        if generation <= current {
            return Err(ShmError::NotNewer {
                new: generation,
                current,
            });
        }
        let target = image_path(&self.header_path, generation);
        let mut tmp = target.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        {
            let mut f = File::create(&tmp).map_err(io(&tmp))?;
            f.write_all(image).map_err(io(&tmp))?;
            // On tmpfs this is free; on a real disk it makes the image durable first.
            f.sync_all().map_err(io(&tmp))?;
        }
        std::fs::rename(&tmp, &target).map_err(io(&target))?;
        self.header
            .generation()
            .store(generation, Ordering::Release);
        self.published.push_back((generation, SystemTime::now()));
        self.unlink_old();
        Ok(generation)
    }

    /// Unlinks images older than the grace period, always keeping the one in force and
    /// the one before it.
    fn unlink_old(&mut self) {
        while self.published.len() > 2 {
            let Some(&(generation, at)) = self.published.front() else {
                break;
            };
            if at.elapsed().unwrap_or_default() < self.grace {
                break;
            }
            let _ = std::fs::remove_file(image_path(&self.header_path, generation));
            self.published.pop_front();
        }
    }
}

/// Images already published next to `header` (by this or an earlier publisher).
fn existing_images(header: &Path) -> VecDeque<(u64, SystemTime)> {
    let (Some(dir), Some(name)) = (header.parent(), header.file_name().and_then(|n| n.to_str()))
    else {
        return VecDeque::new();
    };
    let prefix = format!("{name}.");
    let mut found: Vec<(u64, SystemTime)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let file = e.file_name();
            let hex = file.to_str()?.strip_prefix(&prefix)?;
            if hex.len() != 16 {
                return None;
            }
            let generation = u64::from_str_radix(hex, 16).ok()?;
            let at = e
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            Some((generation, at))
        })
        .collect();
    found.sort();
    found.into()
}

/// Device and inode of a file.
fn identity(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

/// Whether the header at `path` is still the intact file a mapping was made from.
fn intact(path: &Path, id: (u64, u64), map: &[u8]) -> bool {
    std::fs::metadata(path).is_ok_and(|m| {
        identity(&m) == id && m.len() == HEADER_SIZE as u64 && map[..8] == HEADER_MAGIC
    })
}

/// The reading side: one per engine core.
pub struct Follower {
    header_path: PathBuf,
    header: Guarded<Mmap>,
    /// Device and inode of the mapped header file.
    identity: (u64, u64),
}

impl Follower {
    pub fn open(path: &Path) -> Result<Follower, ShmError> {
        let file = File::open(path).map_err(io(path))?;
        check_header_file(path, &file)?;
        let meta = file.metadata().map_err(io(path))?;
        // SAFETY: read-only mapping of a header-sized file; the generation is read
        // atomically through a raw pointer, and truncation is caught by the fault guard.
        let header = unsafe { Mmap::map(&file) }.map_err(io(path))?;
        if header.len() != HEADER_SIZE || header[..8] != HEADER_MAGIC {
            return Err(ShmError::BadHeader(path.to_path_buf()));
        }
        Ok(Follower {
            header_path: path.to_path_buf(),
            header: Guarded::new(header),
            identity: identity(&meta),
        })
    }

    /// The generation in force: one atomic load.
    pub fn generation(&self) -> u64 {
        self.header.generation().load(Ordering::Acquire)
    }

    /// When the header file was truncated, replaced or removed since it was mapped, and
    /// a valid one is there now: that one, mapped. Call it now and then (it costs a
    /// `stat`); meanwhile the old mapping reads its last value, or zeros if its file was
    /// cut short.
    pub fn reopen_if_replaced(&self) -> Option<Follower> {
        if intact(&self.header_path, self.identity, &self.header.map) {
            return None;
        }
        Follower::open(&self.header_path).ok()
    }

    /// Reads and validates the image of `generation`.
    pub fn load(&self, generation: u64) -> Result<Snapshot, ShmError> {
        let path = image_path(&self.header_path, generation);
        let image = std::fs::read(&path).map_err(io(&path))?;
        let snap = Snapshot::from_bytes(&image).map_err(|source| ShmError::Invalid {
            path: path.clone(),
            generation,
            source,
        })?;
        if snap.generation() != generation {
            return Err(ShmError::Invalid {
                path,
                generation,
                source: SnapshotError::Generation {
                    header: generation,
                    archive: snap.generation(),
                },
            });
        }
        Ok(snap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Domain, Limits, Policy, Route, encode};

    fn policy(generation: u64, domain: &str) -> Vec<u8> {
        encode(&Policy {
            generation,
            domains: vec![Domain {
                name: domain.into(),
                route: Route {
                    host: "127.0.0.1".into(),
                    port: 25,
                    ..Default::default()
                },
                ..Default::default()
            }],
            limits: Limits {
                message_size: 1000,
                recipients: 10,
            },
            ..Default::default()
        })
        .unwrap()
    }

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("bulwark-shm-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn publish_and_follow() {
        let d = dir("follow");
        let path = d.join("policy");
        let mut p = Publisher::open(&path, Duration::ZERO).unwrap();
        let f = Follower::open(&path).unwrap();
        assert_eq!(f.generation(), 0);
        p.publish(&policy(1, "a.test")).unwrap();
        assert_eq!(f.generation(), 1);
        assert!(f.load(1).unwrap().policy().domain("a.test").is_some());
        p.publish(&policy(2, "b.test")).unwrap();
        assert_eq!(f.generation(), 2);
        assert!(f.load(2).unwrap().policy().domain("b.test").is_some());
        assert!(matches!(
            p.publish(&policy(2, "c.test")),
            Err(ShmError::NotNewer { new: 2, current: 2 })
        ));
        // A second publisher on the same header continues where the first left off.
        let p2 = Publisher::open(&path, Duration::ZERO).unwrap();
        assert_eq!(p2.generation(), 2);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_header_truncated_or_corrupted_under_its_readers_crashes_nothing() {
        use std::os::unix::fs::PermissionsExt;
        let d = dir("truncate");
        let path = d.join("policy");
        let mut p = Publisher::open(&path, Duration::ZERO).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&d), 0o700);
        assert_eq!(mode(&path), 0o600);
        p.publish(&policy(1, "a.test")).unwrap();
        let f = Follower::open(&path).unwrap();
        assert_eq!(f.generation(), 1);
        // Another process cuts the file short: the next read would be SIGBUS.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(0)
            .unwrap();
        let before = fault::faults();
        assert_eq!(f.generation(), 0, "a vanished header reads as nothing new");
        assert!(fault::faults() > before);
        assert_eq!(f.generation(), 0);
        // Not yet usable again: the empty file is not a header.
        assert!(f.reopen_if_replaced().is_none());
        assert!(matches!(Follower::open(&path), Err(ShmError::BadHeader(_))));
        // The publisher lays the header out again, continuing from the newest image.
        assert!(matches!(
            p.publish(&policy(1, "b.test")),
            Err(ShmError::NotNewer { new: 1, current: 1 })
        ));
        p.publish(&policy(2, "b.test")).unwrap();
        let f = f.reopen_if_replaced().expect("the header was recreated");
        assert_eq!(f.generation(), 2);
        assert!(f.reopen_if_replaced().is_none());
        // Garbage written over the generation: a load of it is refused, nothing else.
        std::fs::write(&path, [0xffu8; HEADER_SIZE]).unwrap();
        assert_eq!(f.generation(), u64::MAX);
        assert!(matches!(f.load(u64::MAX), Err(ShmError::Io { .. })));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn old_images_are_unlinked_keeping_two() {
        let d = dir("unlink");
        let path = d.join("policy");
        let mut p = Publisher::open(&path, Duration::ZERO).unwrap();
        for g in 1..=5 {
            p.publish(&policy(g, "a.test")).unwrap();
        }
        let images: Vec<u64> = (1..=5).filter(|g| image_path(&path, *g).exists()).collect();
        assert_eq!(images, [4, 5]);
        // A new publisher process finds what is there and unlinks it in its turn.
        drop(p);
        let mut p = Publisher::open(&path, Duration::ZERO).unwrap();
        p.publish(&policy(6, "a.test")).unwrap();
        let images: Vec<u64> = (1..=6).filter(|g| image_path(&path, *g).exists()).collect();
        assert_eq!(images, [5, 6]);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn corrupt_and_truncated_images_are_refused() {
        let d = dir("corrupt");
        let path = d.join("policy");
        let mut p = Publisher::open(&path, Duration::ZERO).unwrap();
        p.publish(&policy(1, "a.test")).unwrap();
        let f = Follower::open(&path).unwrap();
        let good = policy(2, "b.test");
        std::fs::write(image_path(&path, 2), &good[..good.len() - 5]).unwrap();
        assert!(matches!(
            f.load(2),
            Err(ShmError::Invalid {
                generation: 2,
                source: SnapshotError::Length { .. },
                ..
            })
        ));
        let mut bad = good.clone();
        let n = bad.len() - 3;
        bad[n] ^= 0xff;
        std::fs::write(image_path(&path, 2), &bad).unwrap();
        assert!(matches!(
            f.load(2),
            Err(ShmError::Invalid {
                source: SnapshotError::Checksum { .. },
                ..
            })
        ));
        // An image filed under the wrong generation is refused too.
        std::fs::write(image_path(&path, 3), &good).unwrap();
        assert!(matches!(
            f.load(3),
            Err(ShmError::Invalid {
                source: SnapshotError::Generation { .. },
                ..
            })
        ));
        // The publisher never writes an invalid image.
        assert!(matches!(p.publish(&bad), Err(ShmError::Invalid { .. })));
        assert!(matches!(
            Follower::open(&d.join("nothing")),
            Err(ShmError::Io { .. })
        ));
        std::fs::write(d.join("junk"), [0u8; 64]).unwrap();
        assert!(matches!(
            Follower::open(&d.join("junk")),
            Err(ShmError::BadHeader(_))
        ));
        let _ = std::fs::remove_dir_all(&d);
    }
}
