//! Attachment and virus scan cost per message, the built-in engine against clamd on the
//! same messages: a 1 MB PDF, a 10 MB zip of 300 files, and a nested archive (zip in a
//! tar.gz in a zip in a bzip2). p50 / p99 over many runs, one thread, and what that makes
//! per core.
//!
//! `cargo run --release -p bulwark-bench --bin av-scan -- [--runs N] [--clamd HOST:PORT]
//! [--json FILE]`; `scripts/bench-av.sh` starts clamd (offline, a small database) and
//! runs it.

use std::io::{Cursor, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bulwark_inspect::attach::Limits;
use bulwark_inspect::av::Antivirus;
use bulwark_inspect::malware;

/// A deterministic byte source (xorshift), so every run scans the same files.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    /// Text of words, which compresses like prose (about 3:1).
    fn text(&mut self, n: usize) -> Vec<u8> {
        const WORDS: [&str; 16] = [
            "invoice",
            "payment",
            "the",
            "of",
            "shipment",
            "report",
            "quarterly",
            "and",
            "customer",
            "account",
            "order",
            "total",
            "delivery",
            "number",
            "please",
            "find",
        ];
        let mut out = Vec::with_capacity(n + 16);
        while out.len() < n {
            out.extend_from_slice(WORDS[(self.next() % 16) as usize].as_bytes());
            out.push(if self.next().is_multiple_of(12) {
                b'\n'
            } else {
                b' '
            });
        }
        out.truncate(n);
        out
    }
}

fn zip_of(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, data) in files {
        w.start_file(name.as_str(), opts).expect("zip entry");
        w.write_all(data).expect("zip write");
    }
    w.finish().expect("zip").into_inner()
}

/// A PDF of about `n` octets: a page and a FlateDecode content stream.
fn pdf(rng: &mut Rng, n: usize) -> Vec<u8> {
    let mut out = b"%PDF-1.7\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n2 0 obj << /Type /Pages /Kids [3 0 R] /Count 1 >> endobj\n3 0 obj << /Type /Page /Parent 2 0 R /Contents 4 0 R >> endobj\n".to_vec();
    let body = rng.bytes(n.saturating_sub(400));
    out.extend_from_slice(
        format!(
            "4 0 obj << /Length {} /Filter /FlateDecode >>\nstream\n",
            body.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(&body);
    out.extend_from_slice(b"\nendstream\nendobj\ntrailer << /Root 1 0 R >>\n%%EOF\n");
    out
}

fn nested(rng: &mut Rng) -> Vec<u8> {
    let docs: Vec<(String, Vec<u8>)> = (0..4)
        .map(|i| (format!("docs/report{i}.txt"), rng.text(256 * 1024)))
        .collect();
    let inner = zip_of(&docs);
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(inner.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    tar.append_data(&mut h, "inner.zip", inner.as_slice())
        .expect("tar");
    let tar = tar.into_inner().expect("tar");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar).expect("gzip");
    let tgz = gz.finish().expect("gzip");
    let outer = zip_of(&[("bundle.tar.gz".to_string(), tgz)]);
    let mut bz = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
    bz.write_all(&outer).expect("bzip2");
    bz.finish().expect("bzip2")
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(data.len() * 4 / 3 + data.len() / 57 * 2 + 8);
    for (i, c) in data.chunks(3).enumerate() {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for k in 0..4 {
            s.push(if k <= c.len() {
                T[(n >> (18 - 6 * k) & 63) as usize] as char
            } else {
                '='
            });
        }
        if i % 19 == 18 {
            s.push_str("\r\n");
        }
    }
    s
}

fn message(name: &str, ctype: &str, data: &[u8]) -> Vec<u8> {
    format!(
        "From: a@sender.example\r\nTo: b@example.test\r\nSubject: {name}\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nPlease find {name} attached.\r\n--b\r\nContent-Type: {ctype}\r\nContent-Disposition: attachment; filename=\"{name}\"\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n--b--\r\n",
        base64(data)
    )
    .into_bytes()
}

/// One INSTREAM scan over a fresh connection (as clamav-milter does per message).
fn clamd_scan(addr: &str, msg: &[u8]) -> std::io::Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.write_all(b"zINSTREAM\0")?;
    for piece in msg.chunks(64 * 1024) {
        s.write_all(&(piece.len() as u32).to_be_bytes())?;
        s.write_all(piece)?;
    }
    s.write_all(&[0, 0, 0, 0])?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(String::from_utf8_lossy(&out)
        .trim_end_matches('\0')
        .to_string())
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |k: &str| {
        args.iter()
            .position(|a| a == k)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let runs: usize = arg("--runs").and_then(|r| r.parse().ok()).unwrap_or(50);
    let clamd = arg("--clamd");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let files: Vec<(String, String, Vec<u8>)> = vec![
        (
            "report.pdf".into(),
            "application/pdf".into(),
            pdf(&mut rng, 1 << 20),
        ),
        (
            "archive.zip".into(),
            "application/zip".into(),
            zip_of(
                &(0..300)
                    .map(|i| {
                        (
                            format!("files/f{i:03}.bin"),
                            rng.bytes(10 * 1024 * 1024 / 300),
                        )
                    })
                    .collect::<Vec<_>>(),
            ),
        ),
        (
            "bundle.zip.bz2".into(),
            "application/x-bzip2".into(),
            nested(&mut rng),
        ),
    ];
    let av = Antivirus::builtin()?;
    let scratch = av.scratch()?;
    let limits = Limits::default();
    let mut rows = Vec::new();
    println!(
        "| message | attachment | engine | p50 ms | p99 ms | messages/s per core | decompressed |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (name, ctype, data) in &files {
        let msg = message(name, ctype, data);
        let mut times = Vec::with_capacity(runs);
        let mut decompressed = 0;
        for _ in 0..runs {
            let t0 = Instant::now();
            let r = malware::scan(&msg, &av, scratch.as_ref(), &limits);
            times.push(t0.elapsed());
            assert!(
                r.viruses.is_empty() && r.violation.is_none(),
                "{name}: {r:?}"
            );
            decompressed = r.decompressed;
        }
        let (p50, p99) = (pct(&mut times, 0.5), pct(&mut times, 0.99));
        let row = |engine: &str, p50: Duration, p99: Duration, extra: String| {
            let line = format!(
                "| {} KiB | {name} ({} KiB) | {engine} | {:.2} | {:.2} | {:.1} | {extra} |",
                msg.len() / 1024,
                data.len() / 1024,
                p50.as_secs_f64() * 1e3,
                p99.as_secs_f64() * 1e3,
                1.0 / p50.as_secs_f64()
            );
            println!("{line}");
            serde_json::json!({"message": name, "bytes": msg.len(), "engine": engine,
                "p50_ms": p50.as_secs_f64() * 1e3, "p99_ms": p99.as_secs_f64() * 1e3,
                "per_core_per_s": 1.0 / p50.as_secs_f64()})
        };
        rows.push(row(
            "built-in",
            p50,
            p99,
            format!("{} KiB", decompressed / 1024),
        ));
        if let Some(addr) = &clamd {
            let mut times = Vec::with_capacity(runs);
            for _ in 0..runs {
                let t0 = Instant::now();
                let answer = clamd_scan(addr, &msg)?;
                times.push(t0.elapsed());
                anyhow::ensure!(answer.ends_with("OK"), "clamd on {name}: {answer}");
            }
            let (p50, p99) = (pct(&mut times, 0.5), pct(&mut times, 0.99));
            rows.push(row("clamd", p50, p99, String::new()));
        }
    }
    if let Some(path) = arg("--json") {
        std::fs::write(path, serde_json::to_vec_pretty(&rows)?)?;
    }
    Ok(())
}
