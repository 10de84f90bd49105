//! The sans-IO SMTP core: command parsing, the DATA phase, whole transactions.

use std::hint::black_box;

use bulwark::smtp::command;
use bulwark::smtp::data::DataScanner;
use bulwark::smtp::{Event, Session};
use bulwark_bench::{AcceptAll, data_payload, session_config, transaction};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const COMMANDS: &[&[u8]] = &[
    b"EHLO client.example.org",
    b"MAIL FROM:<sender@example.org> SIZE=4096 BODY=8BITMIME",
    b"RCPT TO:<user@example.test>",
    b"DATA",
    b"NOOP",
    b"RSET",
    b"BDAT 4096 LAST",
];

fn parse(c: &mut Criterion) {
    let bytes: usize = COMMANDS.iter().map(|l| l.len() + 2).sum();
    let mut g = c.benchmark_group("command_parse");
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function("seven_commands", |b| {
        b.iter(|| {
            for line in COMMANDS {
                let _ = black_box(command::parse(black_box(line)));
            }
        })
    });
    g.finish();
}

fn data_phase(c: &mut Criterion) {
    let mut g = c.benchmark_group("data_phase");
    for size in [4096usize, 65536, 1 << 20] {
        let input = data_payload(size);
        let mut body = Vec::with_capacity(input.len());
        g.throughput(Throughput::Bytes(input.len() as u64));
        g.bench_function(format!("{size}"), |b| {
            b.iter(|| {
                body.clear();
                let mut s = DataScanner::new(usize::MAX);
                let r = s.scan(black_box(&input), &mut body);
                assert!(r.done);
            })
        });
    }
    g.finish();
}

/// A session greeting once, then running pipelined 4 KiB transactions; the spool is
/// answered at once, so this is the protocol's own cost per message.
fn session(c: &mut Criterion) {
    let tx = transaction(4096);
    let mut g = c.benchmark_group("session");
    g.throughput(Throughput::Bytes(tx.len() as u64));
    let mut s = Session::new(session_config());
    let _ = s.feed(b"EHLO bench.test\r\n", &AcceptAll);
    s.clear_output();
    g.bench_function("transaction_4k", |b| {
        b.iter(|| {
            let mut at = 0;
            loop {
                let p = s.feed(&tx[at..], &AcceptAll);
                at += p.consumed;
                match p.event {
                    Some(Event::Message(m)) => {
                        black_box(m);
                        s.spooled("0123456789ABCDEF00");
                    }
                    None => break,
                    Some(_) => unreachable!(),
                }
            }
            s.clear_output();
        })
    });
    g.finish();
}

criterion_group!(benches, parse, data_phase, session);
criterion_main!(benches);
