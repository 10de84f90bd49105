//! Bulwark's policy snapshot: the one schema both the control plane and the engine use.
//!
//! A snapshot is an immutable byte image: a fixed header (magic, schema version,
//! generation, payload length, CRC-32 of the payload) followed by an rkyv archive of
//! [`Policy`]. The builder side turns a [`Policy`] into such an image; the reader side
//! ([`Snapshot::from_bytes`]) checks every field of the header and the archive before any
//! lookup is made, so a corrupt or truncated image is refused and never half-applied.
//! [`shm`] carries images from a publisher to the engine's cores through shared memory.

pub mod address;
pub mod directory_csv;
pub mod dnsbl;
pub mod filtering;
pub mod limits;
mod schema;
pub mod shm;
mod snapshot;

pub use schema::{
    ArchivedCidr, ArchivedDnsblPolicy, ArchivedDomain, ArchivedIpLists, ArchivedLimits,
    ArchivedPolicy, ArchivedRoute, ArchivedSenderLists, Cidr, DnsblPolicy, DnsblZone, Domain,
    GroupLimits, Harvest, InspectionArtifacts, IpLists, IpVerdict, Limits, PersonalList, Policy,
    Route, SenderLists, SenderVerdict, Throttle, TlsPolicy, artifact_path, dynamic_key,
    dynamic_key_network,
};
pub use snapshot::{HEADER_LEN, MAGIC, SCHEMA_VERSION, Snapshot, SnapshotError, encode};
