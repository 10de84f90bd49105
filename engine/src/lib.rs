//! Bulwark's data plane.

pub mod smtp;
