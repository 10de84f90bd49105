//! Bulwark's data plane.

pub mod admin;
pub mod antivirus;
pub mod auth;
pub mod config;
pub mod deliver;
pub mod filtering;
pub mod inspection;
pub mod memory;
pub mod metrics;
pub mod net;
pub mod policy;
pub mod quarantine;
pub mod queue;
pub mod reputation;
pub mod runtime;
pub mod smtp;
pub mod tracking;
pub mod util;
