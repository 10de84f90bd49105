//! The spool on a real executor and a real disk: group commit against batch size, and
//! one core's whole in-process receive → spool path.

use std::rc::Rc;
use std::time::{Duration, Instant};

use bulwark::queue::Spool;
use bulwark::smtp::{Event, Session};
use bulwark_bench::{AcceptAll, TempDir, session_config, transaction};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use glommio::LocalExecutorBuilder;

/// Runs `f` on a fresh glommio executor on this thread.
fn on_executor<T>(f: impl std::future::Future<Output = T>) -> T {
    LocalExecutorBuilder::default()
        .io_memory(1 << 20)
        .make()
        .expect("executor")
        .run(f)
}

fn group_commit(c: &mut Criterion) {
    let dir = TempDir::new("commit");
    let body = vec![b'x'; 4096];
    let rcpts = vec!["user@example.test".to_string()];
    let mut g = c.benchmark_group("spool_group_commit");
    g.sample_size(20);
    for batch in [1usize, 8, 32, 128] {
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_function(format!("batch_{batch}"), |b| {
            b.iter_custom(|iters| {
                on_executor(async {
                    let (spool, _) = Spool::open(&dir.0, 0, 1, 256 << 20).await.expect("spool");
                    let body = Rc::new(body.clone());
                    let start = Instant::now();
                    for _ in 0..iters {
                        // `batch` transactions complete together and share one sync.
                        let tasks: Vec<_> = (0..batch)
                            .map(|i| {
                                let (s, body, rcpts) = (spool.clone(), body.clone(), rcpts.clone());
                                glommio::spawn_local(async move {
                                    s.append_message(
                                        &format!("ID{i}"),
                                        0,
                                        0,
                                        "s@bench.test",
                                        &rcpts,
                                        b"",
                                        &body,
                                    )
                                    .await
                                    .expect("append")
                                })
                            })
                            .collect();
                        for t in tasks {
                            let loc = t.await;
                            spool.mark_done(loc, "ID");
                        }
                    }
                    start.elapsed()
                })
            })
        });
    }
    g.finish();
}

/// 32 sessions each feeding 4 KiB transactions through the protocol and into the
/// spool, as one core does under load (no sockets).
fn receive_to_spool(c: &mut Criterion) {
    let dir = TempDir::new("receive");
    let tx = Rc::new(transaction(4096));
    const SESSIONS: u64 = 32;
    let mut g = c.benchmark_group("receive_to_spool");
    g.sample_size(20);
    g.throughput(Throughput::Elements(SESSIONS));
    g.bench_function("32_sessions_4k", |b| {
        b.iter_custom(|iters| {
            on_executor(async {
                let (spool, _) = Spool::open(&dir.0, 0, 1, 256 << 20).await.expect("spool");
                let start = Instant::now();
                let tasks: Vec<_> = (0..SESSIONS)
                    .map(|_| {
                        let (spool, tx) = (spool.clone(), tx.clone());
                        glommio::spawn_local(async move {
                            let mut s = Session::new(session_config());
                            let _ = s.feed(b"EHLO bench.test\r\n", &AcceptAll);
                            for _ in 0..iters {
                                let mut at = 0;
                                loop {
                                    let p = s.feed(&tx[at..], &AcceptAll);
                                    at += p.consumed;
                                    match p.event {
                                        Some(Event::Message(m)) => {
                                            let loc = spool
                                                .append_message(
                                                    "ID",
                                                    0,
                                                    0,
                                                    &m.mail_from,
                                                    &m.rcpts,
                                                    b"",
                                                    &m.body,
                                                )
                                                .await
                                                .expect("append");
                                            spool.mark_done(loc, "ID");
                                            s.spooled("ID");
                                        }
                                        None => break,
                                        Some(_) => unreachable!(),
                                    }
                                }
                                s.clear_output();
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await;
                }
                let elapsed = start.elapsed();
                // Let the last done records reach the disk before the next sample.
                glommio::timer::sleep(Duration::from_millis(5)).await;
                elapsed
            })
        })
    });
    g.finish();
}

criterion_group!(benches, group_commit, receive_to_spool);
criterion_main!(benches);
