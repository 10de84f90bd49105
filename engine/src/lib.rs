//! Bulwark's data plane.

pub mod config;
pub mod smtp;
