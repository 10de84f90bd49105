//! The ranges of the policy's limits: one table for the engine's configuration file, the
//! control service's API and store, and its OpenAPI document (a test holds them equal).

/// A limit's name (as the control API and store call it), its bounds and its default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub name: &'static str,
    pub min: u64,
    pub max: u64,
    pub default: u64,
}

impl Range {
    pub fn contains(&self, v: u64) -> bool {
        (self.min..=self.max).contains(&v)
    }
}

const DAY: u64 = 86_400;

/// Largest message, in octets (`[limits] message_size`).
pub const MESSAGE_SIZE: Range = Range {
    name: "message_size",
    min: 1024,
    max: 1 << 32,
    default: 52_428_800,
};
/// Recipients per transaction (`[limits] recipients`).
pub const RECIPIENTS: Range = Range {
    name: "recipients",
    min: 1,
    max: 100_000,
    default: 1000,
};
/// Unknown recipients before a client is blocked; 0 turns harvest protection off
/// (`[harvest] max_unknown`).
pub const HARVEST_MAX_UNKNOWN: Range = Range {
    name: "harvest_max_unknown",
    min: 0,
    max: 1_000_000,
    default: 20,
};
/// The counting window, seconds (`[harvest] window`).
pub const HARVEST_WINDOW_SECS: Range = Range {
    name: "harvest_window_secs",
    min: 1,
    max: 30 * DAY,
    default: 600,
};
/// How long a client stays blocked, seconds (`[harvest] block`).
pub const HARVEST_BLOCK_SECS: Range = Range {
    name: "harvest_block_secs",
    min: 1,
    max: 30 * DAY,
    default: 3600,
};

/// Every limit, in the order the control API lists them.
pub const ALL: [Range; 5] = [
    MESSAGE_SIZE,
    RECIPIENTS,
    HARVEST_MAX_UNKNOWN,
    HARVEST_WINDOW_SECS,
    HARVEST_BLOCK_SECS,
];
