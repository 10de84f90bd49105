//! SMTP protocol logic without I/O: command parsing, the DATA/BDAT content readers and
//! the server session state machine. The network driver lives in `net/`.

pub mod command;
pub mod data;
pub mod server;

pub use server::{
    EnvelopePolicy, Event, Progress, RcptVerdict, Session, SessionConfig, SessionStats,
    Transaction, Waiting,
};
