//! Test ports, shared by the engine's and the control service's integration tests.

use std::net::TcpListener;

/// A port free right now on 127.0.0.1, never handed out twice by this test process.
/// Ports come from a counter below the kernel's ephemeral range, so a port an engine
/// gives up across a restart is not given to another test meanwhile (regression: a
/// restarted engine found its port taken by a parallel test's sink).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ = NEXT.compare_exchange(
        0,
        20_000 + (std::process::id() % 500) as u16 * 20,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    loop {
        let p = NEXT.fetch_add(1, Ordering::SeqCst);
        let p = if p >= 32_000 { 20_000 + p % 12_000 } else { p };
        if TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}
