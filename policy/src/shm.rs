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

fn generation_cell(map: &[u8]) -> &AtomicU64 {
    // SAFETY: the mapping is at least HEADER_SIZE bytes, page aligned, so offset 8 is
    // 8-byte aligned; AtomicU64 has the layout of u64 and every bit pattern is valid.
    unsafe { &*(map.as_ptr().add(8) as *const AtomicU64) }
}

/// The writing side (the control service, or `bulwark publish-policy`).
pub struct Publisher {
    header_path: PathBuf,
    header: MmapMut,
    grace: Duration,
    /// Images on disk, oldest first, with when they were published, for unlinking.
    published: VecDeque<(u64, SystemTime)>,
}

impl Publisher {
    /// Opens the header at `path`, creating it (and its directory) if needed.
    pub fn open(path: &Path, grace: Duration) -> Result<Publisher, ShmError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io(path))?;
        let len = file.metadata().map_err(io(path))?.len();
        if len == 0 {
            file.set_len(HEADER_SIZE as u64).map_err(io(path))?;
        } else if len != HEADER_SIZE as u64 {
            return Err(ShmError::BadHeader(path.to_path_buf()));
        }
        // SAFETY: the file is ours and fixed-size; the generation is only accessed
        // atomically and the magic is written once, before any reader can trust it.
        let mut header = unsafe { MmapMut::map_mut(&file) }.map_err(io(path))?;
        if len == 0 {
            header[..8].copy_from_slice(&HEADER_MAGIC);
        } else if header[..8] != HEADER_MAGIC {
            return Err(ShmError::BadHeader(path.to_path_buf()));
        }
        let published = existing_images(path);
        Ok(Publisher {
            header_path: path.to_path_buf(),
            header,
            grace,
            published,
        })
    }

    /// The generation in force.
    pub fn generation(&self) -> u64 {
        generation_cell(&self.header).load(Ordering::Acquire)
    }

    /// Publishes a complete snapshot image. Its generation must be newer than the one in
    /// force; it is checked before anything is written.
    pub fn publish(&mut self, image: &[u8]) -> Result<u64, ShmError> {
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
        generation_cell(&self.header).store(generation, Ordering::Release);
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

/// The reading side: one per engine core.
pub struct Follower {
    header_path: PathBuf,
    header: Mmap,
}

impl Follower {
    pub fn open(path: &Path) -> Result<Follower, ShmError> {
        let file = File::open(path).map_err(io(path))?;
        if file.metadata().map_err(io(path))?.len() != HEADER_SIZE as u64 {
            return Err(ShmError::BadHeader(path.to_path_buf()));
        }
        // SAFETY: read-only mapping of a fixed-size file; the generation is read atomically.
        let header = unsafe { Mmap::map(&file) }.map_err(io(path))?;
        if header[..8] != HEADER_MAGIC {
            return Err(ShmError::BadHeader(path.to_path_buf()));
        }
        Ok(Follower {
            header_path: path.to_path_buf(),
            header,
        })
    }

    /// The generation in force: one atomic load.
    pub fn generation(&self) -> u64 {
        generation_cell(&self.header).load(Ordering::Acquire)
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
