//! Connection-level reputation: what is known about a client before its mail is read.

pub mod dnsbl;
pub mod guard;
pub mod pregreet;
