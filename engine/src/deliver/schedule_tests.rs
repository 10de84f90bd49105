//! Delivery's schedule, exactly, on a manual clock: retries at the configured delays, the
//! delay notice once the message has waited `delay_warning`, expiry with 4.4.7 and a
//! bounce at the end of the lifetime. The route is a closed port on this machine, so
//! every attempt is a real connection that is refused; time itself is advanced by the
//! test, never slept through.

use std::rc::Rc;
use std::time::Duration;

use glommio::LocalExecutorBuilder;

use super::clock::ManualClock;
use super::ops::{Entry, Request};
use super::*;
use crate::config::Config;
use crate::memory::Budget;
use crate::metrics::Metrics;
use crate::policy::CorePolicy;

const T0: u64 = 1_800_000_000;

fn closed_port() -> u16 {
    // Bound and dropped: nothing listens there for the test's few seconds; a connection
    // is refused at once.
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn entries(d: &Rc<Deliverer>) -> Vec<Entry> {
    let mut v = d.handle(Request::List).entries;
    v.sort_by(|a, b| a.id.cmp(&b.id));
    v
}

/// Waits (in real time, briefly) until `f` holds for the queue.
async fn settle(d: &Rc<Deliverer>, what: &str, f: impl Fn(&[Entry]) -> bool) -> Vec<Entry> {
    for _ in 0..200 {
        let e = entries(d);
        if f(&e) {
            return e;
        }
        glommio::timer::sleep(Duration::from_millis(25)).await;
    }
    panic!("{what}: {:#?}", entries(d));
}

#[test]
fn retries_delay_notice_and_expiry_follow_the_schedule_exactly() {
    let dir = std::env::temp_dir().join(format!("bulwark-schedule-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let port = closed_port();
    let cfg = Config::parse(&format!(
        "[spool]\ndir = \"{}\"\n[queue]\nlifetime = \"10d\"\nretry = [\"1m\", \"5m\", \"1h\"]\ndelay_warning = \"4h\"\n\
         [[domains]]\nname = \"example.test\"\nroute = \"127.0.0.1:{port}\"\n",
        dir.display()
    ))
    .unwrap();
    let d2 = dir.clone();
    LocalExecutorBuilder::default()
        .spawn(move || async move {
            let metrics = Metrics::new(1);
            let snap = bulwark_policy::Snapshot::from_bytes(
                &bulwark_policy::encode(&cfg.policy()).unwrap(),
            )
            .unwrap();
            let policy = Rc::new(CorePolicy::new(snap, None, 0, metrics.clone()));
            let (spool, _) = Spool::open(&d2, 0, 1, 1 << 20).await.unwrap();
            let clock = Rc::new(ManualClock::at(T0));
            let settings = Settings {
                hostname: "mx.test".into(),
                lifetime: cfg.queue.lifetime,
                retry: cfg.queue.retry.clone(),
                delay_warning: cfg.queue.delay_warning,
                timeouts: Timeouts {
                    connect: Duration::from_secs(2),
                    command: Duration::from_secs(2),
                    data: Duration::from_secs(2),
                },
                limits: Limits {
                    connections: 2,
                    interval: None,
                },
                destination_limits: HashMap::new(),
                idle_time: Duration::from_millis(100),
                // The destination's backoff and its probes have tests of their own
                // (tests/delivery.rs): here the route stays suspended after the first
                // refusal, so every later attempt is the schedule's alone.
                backoff_min: Duration::from_secs(100 * 86_400),
                backoff_max: Duration::from_secs(100 * 86_400),
                line_length_limit: None,
            };
            let d = Deliverer::new(
                0,
                settings,
                spool.clone(),
                Rc::new(QueueIds::new(0)),
                metrics.clone(),
                policy,
                dns::Dns::start(&[]).unwrap(),
                crate::net::tls::opportunistic_client_config(),
                Budget::new(1 << 20, 0, metrics.clone()),
                clock.clone(),
                crate::tracking::Tracker::disabled(),
            );
            let rcpts = vec!["u@example.test".to_string()];
            let loc = spool
                .append_message(
                    "M1",
                    T0,
                    0,
                    "s@example.test",
                    &rcpts,
                    b"",
                    b"Subject: s\r\n\r\nx\r\n",
                )
                .await
                .unwrap();
            d.enqueue(Message::new(
                "M1".into(),
                T0,
                0,
                "s@example.test".into(),
                rcpts,
                loc,
                None,
            ));

            // The first attempt is at once; the next one 1 minute later.
            let e = settle(&d, "first attempt", |e| {
                e[0].attempts == 1 && e[0].state == "deferred"
            })
            .await;
            let first = e[0].next_attempt.unwrap();
            assert_eq!(first, T0 + 60, "{e:#?}");
            assert!(e[0].last_error.contains("4.4.1"), "{}", e[0].last_error);
            // 59 seconds on: nothing is due yet.
            clock.advance(Duration::from_secs(59));
            glommio::timer::sleep(Duration::from_millis(500)).await;
            assert_eq!(entries(&d)[0].attempts, 1, "retried early");
            // At 60 s the second attempt runs, and the third is 5 minutes after it.
            clock.advance(Duration::from_secs(1));
            let e = settle(&d, "second attempt", |e| {
                e[0].attempts == 2 && e[0].state == "deferred"
            })
            .await;
            let at = clock.unix();
            assert!(e[0].next_attempt.unwrap().abs_diff(at + 300) <= 1, "{e:#?}");
            // Then every hour (the last delay repeats).
            clock.advance(Duration::from_secs(300));
            let e = settle(&d, "third attempt", |e| {
                e[0].attempts == 3 && e[0].state == "deferred"
            })
            .await;
            assert!(e[0].next_attempt.unwrap().abs_diff(clock.unix() + 3600) <= 1);
            assert_eq!(entries(&d).len(), 1, "no delay notice before 4 hours");
            // Past 4 hours: the attempt then sends the one delay notice (queued to the
            // sender's domain, which is also ours, so it waits in the queue too).
            for _ in 0..4 {
                clock.advance(Duration::from_secs(3600));
                let n = entries(&d)[0].attempts;
                settle(&d, "hourly attempt", |e| {
                    e.iter()
                        .any(|m| m.id == "M1" && m.attempts == n + 1 && m.state == "deferred")
                })
                .await;
            }
            let e = settle(&d, "delay notice", |e| e.len() == 2).await;
            let notice = e.iter().find(|m| m.id != "M1").unwrap();
            assert_eq!(notice.sender, "", "a DSN has the null sender");
            assert_eq!(notice.recipients[0].address, "s@example.test");
            assert_eq!(metrics.shard(0).delay_notices.get(), 1);
            // Ten days after arrival the message expires: recipients fail with 4.4.7 and
            // the sender gets a bounce; the original leaves the queue.
            let left = T0 + 10 * 86_400 - clock.unix();
            clock.advance(Duration::from_secs(left - 1));
            glommio::timer::sleep(Duration::from_millis(500)).await;
            assert!(
                entries(&d).iter().any(|m| m.id == "M1"),
                "expired a second early"
            );
            clock.advance(Duration::from_secs(3600));
            let e = settle(&d, "expiry", |e| !e.iter().any(|m| m.id == "M1")).await;
            assert_eq!(
                metrics.shard(0).delay_notices.get(),
                1,
                "one delay notice only"
            );
            assert_eq!(metrics.shard(0).dsns.get(), 1, "the bounce");
            assert!(
                e.iter().all(|m| m.sender.is_empty()),
                "only DSNs are left: {e:#?}"
            );
        })
        .unwrap()
        .join()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
