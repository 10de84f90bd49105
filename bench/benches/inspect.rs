//! Content inspection: the rules over a parsed message (body scan throughput with the
//! built-in rules, Debian's SpamAssassin rules and 5,000 literal-heavy rules of our own),
//! and a whole inspection (parse, rules, classifier, verdict) by message size.

use std::hint::black_box;
use std::net::IpAddr;

use bulwark_bench::inspection::{builtin, own_rules, own_rules_alone, spamassassin, text_message};
use bulwark_inspect::compiled::{PseudoHeaders, Scanner};
use bulwark_inspect::inspector::{Envelope, Inspector};
use bulwark_inspect::mime::{Limits, parse};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn env() -> Envelope<'static> {
    Envelope {
        client_ip: IpAddr::from([192, 0, 2, 1]),
        helo: "client.example.org",
        mail_from: "alice@example.org",
        hostname: "mx.bench.test",
        queue_id: "0",
        arrival: 1_796_115_600,
        auth: None,
        approved: false,
        verdicts: None,
    }
}

fn body_scan(c: &mut Criterion) {
    let msg = text_message(1 << 20);
    let limits = Limits::default();
    let views = parse(&msg, &limits);
    let sets: Vec<(&str, Inspector)> = vec![
        ("builtin", builtin()),
        ("spamassassin", spamassassin()),
        ("own_5000", own_rules(5000)),
    ];
    let mut g = c.benchmark_group("rules_1MiB_text");
    g.throughput(Throughput::Bytes(views.body.len() as u64));
    for (name, ins) in &sets {
        let mut scanner = ins.scanner().expect("scratch");
        let pseudo = PseudoHeaders { values: Vec::new() };
        g.bench_function(*name, |b| {
            b.iter(|| black_box(scanner.scan(&ins.compiled, &views, &pseudo, |_| false)))
        });
    }
    // The 5,000 rules by themselves: the body database over the decoded text, without
    // the built-in rules' other classes and their heavier patterns.
    let alone = own_rules_alone(5000);
    let mut scanner = Scanner::new(&alone).expect("scratch");
    let pseudo = PseudoHeaders { values: Vec::new() };
    g.bench_function("own_5000_alone", |b| {
        b.iter(|| black_box(scanner.scan(&alone, &views, &pseudo, |_| false)))
    });
    g.finish();
}

fn whole(c: &mut Criterion) {
    let ins = spamassassin();
    let mut scanner = ins.scanner().expect("scratch");
    let mut g = c.benchmark_group("inspect_spamassassin");
    for size in [4 << 10, 100 << 10, 5 << 20] {
        let msg = text_message(size);
        g.throughput(Throughput::Bytes(msg.len() as u64));
        if size > 1 << 20 {
            g.sample_size(10);
        }
        g.bench_function(format!("{}k", size >> 10), |b| {
            b.iter(|| black_box(ins.inspect(&mut scanner, &msg, &env())))
        });
    }
    g.finish();
}

criterion_group!(benches, body_scan, whole);
criterion_main!(benches);
