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

/// One limit of a throttled sender group; 0 turns it off.
const fn group(name: &'static str, max: u64, default: u64) -> Range {
    Range {
        name,
        min: 0,
        max,
        default,
    }
}

// Throttles of the sender groups (a Host Access Table's): *unknown* clients and
// *suspect* ones (listed by DNS lists whose weights stay under the threshold). Approved
// addresses are never throttled; blocked ones are refused.
/// Connections open at once from one client (`[throttle.unknown] max_connections`).
pub const UNKNOWN_CONNECTIONS: Range = group("throttle_unknown_connections", 100_000, 50);
/// New connections per minute from one client.
pub const UNKNOWN_CONNECTION_RATE: Range =
    group("throttle_unknown_connections_per_minute", 1_000_000, 0);
/// Messages in one session.
pub const UNKNOWN_MESSAGES: Range = group("throttle_unknown_messages_per_session", 100_000, 100);
/// Accepted recipients per hour from one client.
pub const UNKNOWN_RECIPIENTS: Range = group("throttle_unknown_recipients_per_hour", 100_000_000, 0);
/// Refused recipients per hour from one client.
pub const UNKNOWN_FAILED: Range = group(
    "throttle_unknown_failed_recipients_per_hour",
    100_000_000,
    0,
);
/// Protocol errors per hour from one client.
pub const UNKNOWN_ERRORS: Range = group("throttle_unknown_protocol_errors_per_hour", 1_000_000, 0);
pub const SUSPECT_CONNECTIONS: Range = group("throttle_suspect_connections", 100_000, 5);
pub const SUSPECT_CONNECTION_RATE: Range =
    group("throttle_suspect_connections_per_minute", 1_000_000, 20);
pub const SUSPECT_MESSAGES: Range = group("throttle_suspect_messages_per_session", 100_000, 10);
pub const SUSPECT_RECIPIENTS: Range =
    group("throttle_suspect_recipients_per_hour", 100_000_000, 100);
pub const SUSPECT_FAILED: Range = group(
    "throttle_suspect_failed_recipients_per_hour",
    100_000_000,
    20,
);
pub const SUSPECT_ERRORS: Range = group("throttle_suspect_protocol_errors_per_hour", 1_000_000, 10);
/// Throttle refusals of one client within the window that make a dynamic block; 0
/// never blocks (`[throttle] block_after`).
pub const BLOCK_AFTER: Range = group("throttle_block_after", 1_000_000, 10);
/// The window those refusals are counted in, seconds (`[throttle] block_window`).
pub const BLOCK_WINDOW_SECS: Range = Range {
    name: "throttle_block_window_secs",
    min: 1,
    max: DAY,
    default: 600,
};
/// A client's first dynamic block, seconds; each next one doubles (`[throttle] block`).
pub const BLOCK_SECS: Range = Range {
    name: "throttle_block_secs",
    min: 1,
    max: 30 * DAY,
    default: 900,
};
/// The longest dynamic block, seconds (`[throttle] block_max`).
pub const BLOCK_MAX_SECS: Range = Range {
    name: "throttle_block_max_secs",
    min: 1,
    max: 30 * DAY,
    default: DAY,
};
/// Clients are counted by this IPv4 prefix (`[throttle] ipv4_prefix`: 32 or down to 24).
pub const IPV4_PREFIX: Range = Range {
    name: "throttle_ipv4_prefix",
    min: 24,
    max: 32,
    default: 32,
};
/// And by this IPv6 prefix (`[throttle] ipv6_prefix`: 64, 56 or 48 typically).
pub const IPV6_PREFIX: Range = Range {
    name: "throttle_ipv6_prefix",
    min: 48,
    max: 64,
    default: 64,
};

/// Every limit, in the order the control API lists them.
pub const ALL: [Range; 23] = [
    MESSAGE_SIZE,
    RECIPIENTS,
    HARVEST_MAX_UNKNOWN,
    HARVEST_WINDOW_SECS,
    HARVEST_BLOCK_SECS,
    UNKNOWN_CONNECTIONS,
    UNKNOWN_CONNECTION_RATE,
    UNKNOWN_MESSAGES,
    UNKNOWN_RECIPIENTS,
    UNKNOWN_FAILED,
    UNKNOWN_ERRORS,
    SUSPECT_CONNECTIONS,
    SUSPECT_CONNECTION_RATE,
    SUSPECT_MESSAGES,
    SUSPECT_RECIPIENTS,
    SUSPECT_FAILED,
    SUSPECT_ERRORS,
    BLOCK_AFTER,
    BLOCK_WINDOW_SECS,
    BLOCK_SECS,
    BLOCK_MAX_SECS,
    IPV4_PREFIX,
    IPV6_PREFIX,
];
