//! Imports Debian's stock SpamAssassin rules (`/usr/share/spamassassin`, installed by
//! `scripts/setup.sh`) and scans real messages with them.

use std::path::PathBuf;
use std::time::Instant;

use bulwark_inspect::compiled::{Compiled, PseudoHeaders, Scanner};
use bulwark_inspect::mime::{Limits, parse};
use bulwark_inspect::rules::load_paths;

const STOCK: &str = "/usr/share/spamassassin";

#[test]
fn the_stock_rules_import_compile_and_scan() {
    let t0 = Instant::now();
    let set = load_paths(&[PathBuf::from(STOCK)])
        .expect("the stock rules load (apt-get install spamassassin)");
    let parsed = t0.elapsed();
    let t1 = Instant::now();
    let compiled = Compiled::compile(&set).expect("compiles");
    let compile_time = t1.elapsed();
    let modes = compiled.modes();
    let regex = modes.hyperscan + modes.prefilter + modes.pcre;
    eprintln!(
        "parsed {} rules in {parsed:?}, compiled in {compile_time:?}: {modes:?}, skipped {}",
        set.rules.len(),
        compiled.skipped.len()
    );
    assert!(regex > 1400, "{modes:?}");
    assert!(modes.meta > 800, "{modes:?}");
    assert!(modes.hyperscan as f64 / regex as f64 > 0.8, "{modes:?}");
    let eval_skips = compiled
        .skipped
        .iter()
        .filter(|s| s.reason.starts_with("eval:"))
        .count();
    assert!(eval_skips > 100, "eval rules are reported: {eval_skips}");
    assert!(
        compiled
            .skipped
            .iter()
            .all(|s| s.origin.line > 0 && s.origin.file.ends_with(".cf"))
    );

    let bytes = compiled.to_bytes();
    let t2 = Instant::now();
    let loaded = Compiled::from_bytes(&bytes).expect("loads");
    eprintln!(
        "serialized {} bytes, loaded in {:?}",
        bytes.len(),
        t2.elapsed()
    );

    let gtube = b"Subject: test\r\n\r\nXJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X\r\n";
    let mut scanner = Scanner::new(&loaded).expect("scratch");
    let v = parse(gtube, &Limits::default());
    let hits = scanner.scan(&loaded, &v, &PseudoHeaders::default(), |_| false);
    let gtube_rule = loaded.rule_index("GTUBE").expect("GTUBE is a stock rule");
    assert!(hits.hit(gtube_rule));
}
