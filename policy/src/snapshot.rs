//! The snapshot image: header + rkyv archive, and its validation.

use rkyv::rancor;
use rkyv::util::AlignedVec;

use crate::schema::{ArchivedPolicy, Policy};

/// First four bytes of every snapshot image.
pub const MAGIC: [u8; 4] = *b"BWPS";
/// Bumped whenever the archived layout of [`Policy`] changes.
pub const SCHEMA_VERSION: u32 = 11;
/// magic(4) + schema(4) + generation(8) + payload length(8) + crc32(4) + reserved(4).
pub const HEADER_LEN: usize = 32;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnapshotError {
    #[error("snapshot is {0} bytes, shorter than its {HEADER_LEN}-byte header")]
    Truncated(usize),
    #[error("snapshot does not start with the magic bytes BWPS")]
    BadMagic,
    #[error("snapshot schema version {found} is not the supported version {SCHEMA_VERSION}")]
    SchemaVersion { found: u32 },
    #[error("snapshot payload should be {expected} bytes but {found} are present")]
    Length { expected: u64, found: usize },
    #[error("snapshot checksum mismatch (header {expected:08x}, payload {found:08x})")]
    Checksum { expected: u32, found: u32 },
    #[error("snapshot archive is invalid: {0}")]
    Archive(String),
    #[error("snapshot header says generation {header} but the archive says {archive}")]
    Generation { header: u64, archive: u64 },
    #[error("policy could not be serialized: {0}")]
    Serialize(String),
}

/// Serializes `policy` (normalized first) into a complete snapshot image.
pub fn encode(policy: &Policy) -> Result<Vec<u8>, SnapshotError> {
    let mut policy = policy.clone();
    policy.normalize();
    let payload = rkyv::to_bytes::<rancor::Error>(&policy)
        .map_err(|e| SnapshotError::Serialize(e.to_string()))?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&SCHEMA_VERSION.to_le_bytes());
    out.extend_from_slice(&policy.generation.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&[0u8; 4]);
    out.extend_from_slice(&payload);
    Ok(out)
}

/// A validated snapshot. Lookups go straight to the archived data, without copying.
pub struct Snapshot {
    payload: AlignedVec,
    generation: u64,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("generation", &self.generation)
            .field("bytes", &self.payload.len())
            .finish()
    }
}

impl Snapshot {
    /// Checks the header, the checksum and the archive; refuses anything short of whole.
    pub fn from_bytes(image: &[u8]) -> Result<Self, SnapshotError> {
        if image.len() < HEADER_LEN {
            return Err(SnapshotError::Truncated(image.len()));
        }
        let (header, body) = image.split_at(HEADER_LEN);
        if header[0..4] != MAGIC {
            return Err(SnapshotError::BadMagic);
        }
        let u32_at = |at: usize| {
            u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
        };
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&header[at..at + 8]);
            u64::from_le_bytes(b)
        };
        let schema = u32_at(4);
        if schema != SCHEMA_VERSION {
            return Err(SnapshotError::SchemaVersion { found: schema });
        }
        let generation = u64_at(8);
        let expected_len = u64_at(16);
        if expected_len != body.len() as u64 {
            return Err(SnapshotError::Length {
                expected: expected_len,
                found: body.len(),
            });
        }
        let expected_crc = u32_at(24);
        let crc = crc32fast::hash(body);
        if crc != expected_crc {
            return Err(SnapshotError::Checksum {
                expected: expected_crc,
                found: crc,
            });
        }
        let mut payload = AlignedVec::with_capacity(body.len());
        payload.extend_from_slice(body);
        let archived = rkyv::access::<ArchivedPolicy, rancor::Error>(&payload)
            .map_err(|e| SnapshotError::Archive(e.to_string()))?;
        let archived_gen = archived.generation.to_native();
        if archived_gen != generation {
            return Err(SnapshotError::Generation {
                header: generation,
                archive: archived_gen,
            });
        }
        Ok(Snapshot {
            payload,
            generation,
        })
    }

    /// Builds a snapshot straight from a policy (the engine's embedded-config path).
    pub fn from_policy(policy: &Policy) -> Result<Self, SnapshotError> {
        Self::from_bytes(&encode(policy)?)
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The archived policy. Validated once in `from_bytes`, so this is a pointer cast.
    pub fn policy(&self) -> &ArchivedPolicy {
        // SAFETY: `payload` was checked with `rkyv::access` in `from_bytes` and is never
        // mutated afterwards.
        unsafe { rkyv::access_unchecked::<ArchivedPolicy>(&self.payload) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{Domain, Limits, Route};

    fn sample() -> Policy {
        Policy {
            generation: 7,
            domains: vec![
                Domain {
                    name: "Zeta.Test".into(),
                    route: Route {
                        host: "10.0.0.2".into(),
                        port: 25,
                        ..Default::default()
                    },
                    ..Default::default()
                },
                Domain {
                    name: "alpha.test".into(),
                    route: Route {
                        host: "mx.alpha.test".into(),
                        port: 2526,
                        ..Default::default()
                    },
                    ..Default::default()
                },
            ],
            limits: Limits {
                message_size: 1 << 20,
                recipients: 100,
            },
            ..Default::default()
        }
    }

    #[test]
    fn round_trip_and_case_insensitive_lookup() {
        let snap = Snapshot::from_policy(&sample()).unwrap();
        assert_eq!(snap.generation(), 7);
        let p = snap.policy();
        let d = p.domain("ZETA.test").unwrap();
        assert_eq!(d.route.host.as_str(), "10.0.0.2");
        assert_eq!(d.route.port.to_native(), 25);
        assert_eq!(
            p.domain("alpha.test.").unwrap().route.port.to_native(),
            2526
        );
        assert!(p.domain("beta.test").is_none());
        assert!(p.domain("").is_none());
        assert_eq!(p.limits.recipients.to_native(), 100);
    }

    #[test]
    fn every_truncation_is_refused() {
        let image = encode(&sample()).unwrap();
        for len in 0..image.len() {
            assert!(
                Snapshot::from_bytes(&image[..len]).is_err(),
                "accepted {len} bytes"
            );
        }
    }

    #[test]
    fn every_single_bit_flip_is_refused() {
        let image = encode(&sample()).unwrap();
        for byte in 0..image.len() {
            // The reserved header bytes carry no meaning.
            if (28..32).contains(&byte) {
                continue;
            }
            let mut bad = image.clone();
            bad[byte] ^= 0x10;
            assert!(
                Snapshot::from_bytes(&bad).is_err(),
                "accepted flip at {byte}"
            );
        }
    }

    #[test]
    fn wrong_schema_version_is_named() {
        let mut image = encode(&sample()).unwrap();
        image[4] = 99;
        assert_eq!(
            Snapshot::from_bytes(&image).unwrap_err(),
            SnapshotError::SchemaVersion { found: 99 }
        );
    }
}
