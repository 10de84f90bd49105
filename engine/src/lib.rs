//! Bulwark's data plane.

pub mod config;
pub mod queue;
pub mod smtp;
