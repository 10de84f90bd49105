//! Sockets, executors and TLS: everything that does I/O for the SMTP server.

pub mod session;
pub mod stream;
pub mod tls;
