//! Bulwark's data plane.

pub mod config;
pub mod metrics;
pub mod queue;
pub mod smtp;
