//! The ceiling of the rule matcher on this host: Vectorscan by itself (no Bulwark code)
//! scanning the same 1 MiB of corpus text as `benches/inspect.rs` with the 5,000
//! literal-heavy rules' patterns, compiled with Bulwark's flags. Prints MiB/s (best of 30)
//! and the number of match callbacks for: one literal, the 4,000 plain phrases caseless,
//! case-sensitive, without SINGLEMATCH, and all 5,000 patterns.
//!
//! `cargo run --release -p bulwark-bench --example hs-ceiling`

use hyperscan::prelude::*;
use std::time::Instant;
fn main() {
    let msg = bulwark_bench::inspection::text_message(1 << 20);
    let views = bulwark_inspect::mime::parse(&msg, &Default::default());
    let body = views.body.as_bytes().to_vec();
    let path = bulwark_bench::inspection::own_rules_file(5000);
    let text = std::fs::read_to_string(path).unwrap();
    let pats: Vec<String> = text
        .lines()
        .filter_map(|l| {
            l.strip_prefix("pattern = '")
                .map(|p| p.trim_end_matches('\'').to_string())
        })
        .collect();
    for (label, n, caseless, single, lit_only) in [
        ("1 literal", 1, true, true, true),
        ("4000 lit caseless single", 5000, true, true, true),
        ("4000 lit case single", 5000, false, true, true),
        ("4000 lit caseless multi", 5000, true, false, true),
        ("5000 caseless single", 5000, true, true, false),
    ] {
        let mut ps = Vec::new();
        for (i, p) in pats
            .iter()
            .filter(|p| !lit_only || !p.contains('\\'))
            .take(n)
            .enumerate()
        {
            let mut f = CompileFlags::MULTILINE;
            if caseless {
                f |= CompileFlags::CASELESS;
            }
            if single {
                f |= CompileFlags::SINGLEMATCH;
            }
            let mut pat = Pattern::with_flags(p.as_str(), f).unwrap();
            pat.id = Some(i);
            ps.push(pat);
        }
        let db: BlockDatabase = Patterns::from(ps).build().unwrap();
        let scratch = db.alloc_scratch().unwrap();
        let mut best = f64::MAX;
        let mut hits = 0;
        for _ in 0..30 {
            let t = Instant::now();
            hits = 0;
            db.scan(&body, &scratch, |_, _, _, _| {
                hits += 1;
                Matching::Continue
            })
            .unwrap();
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!(
            "{label}: {:.0} MiB/s, {hits} callbacks",
            body.len() as f64 / best / 1048576.0
        );
    }
}
