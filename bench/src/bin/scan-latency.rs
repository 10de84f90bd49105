//! Per-message inspection cost by size (p50, p99, max over many runs), with the built-in
//! rules plus Debian's SpamAssassin rules and a classifier trained on the corpus:
//! `cargo run --release -p bulwark-bench --bin scan-latency [RUNS]`.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use bulwark_bench::inspection::{corpus_dir, spamassassin, text_message};
use bulwark_inspect::corpus;
use bulwark_inspect::inspector::{Envelope, Inspector};
use bulwark_inspect::mime::{Limits, parse};

fn pct(v: &[Duration], p: f64) -> Duration {
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(400);
    let base = spamassassin();
    let limits = Limits::default();
    let (model, _, _) =
        corpus::train(&[corpus_dir().join("spam")], &[corpus_dir().join("ham")]).expect("corpus");
    let ins = Inspector::from_shared(
        base.compiled.clone(),
        Some(std::sync::Arc::new(model)),
        base.settings.clone(),
        base.origin,
    );
    let mut scanner = ins.scanner().expect("scratch");
    let env = Envelope {
        client_ip: IpAddr::from([192, 0, 2, 1]),
        helo: "client.example.org",
        mail_from: "alice@example.org",
        hostname: "mx.bench.test",
        queue_id: "0",
        arrival: 1_796_115_600,
        auth: None,
        approved: false,
        verdicts: None,
    };
    if std::env::args().any(|a| a == "--profile") {
        // Which PCRE2-run rules cost the most on 100 KiB of text.
        let msg = text_message(100 << 10);
        let views = parse(&msg, &limits);
        let pseudo = bulwark_inspect::compiled::PseudoHeaders { values: Vec::new() };
        let costs = ins.compiled.pcre_costs(&views, &pseudo);
        let total: Duration = costs.iter().map(|c| c.1).sum();
        println!(
            "PCRE2 on 100 KiB: {} rules, {total:.2?} in all",
            costs.len()
        );
        for (name, d) in costs.iter().take(25) {
            println!("{d:>12.2?}  {name}");
        }
        return;
    }
    println!(
        "| size | runs | p50 | p99 | max | parse p50 | rules+classifier p50 |\n|---|---|---|---|---|---|---|"
    );
    for size in [4usize << 10, 100 << 10, 5 << 20] {
        let msg = text_message(size);
        let n = if size > 1 << 20 { runs / 20 } else { runs }.max(10);
        let mut total = Vec::with_capacity(n);
        let mut parse_t = Vec::with_capacity(n);
        let mut rules_t = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            let r = ins.inspect(&mut scanner, &msg, &env);
            total.push(t.elapsed());
            parse_t.push(r.parse_time);
            rules_t.push(r.rules_time);
        }
        for v in [&mut total, &mut parse_t, &mut rules_t] {
            v.sort();
        }
        println!(
            "| {} KiB | {n} | {:.2?} | {:.2?} | {:.2?} | {:.2?} | {:.2?} |",
            msg.len() >> 10,
            pct(&total, 0.5),
            pct(&total, 0.99),
            total[n - 1],
            pct(&parse_t, 0.5),
            pct(&rules_t, 0.5)
        );
    }
}
