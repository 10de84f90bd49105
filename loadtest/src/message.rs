//! Realistic test messages: RFC 5322 headers with a unique Message-ID, a MIME body with
//! text and HTML alternatives and an optional base64 attachment, padded to the size
//! asked for. The body is built once; each message gets its own header. The header
//! `X-Load-Body: LENGTH CRC32` lets a sink check that the body arrived whole.

use std::fmt::Write as _;

/// A body shared by all messages of a run, and the header lines that describe it.
pub struct Template {
    body: Vec<u8>,
    content_type: String,
    crc: u32,
    from: String,
}

/// Roughly the size of the per-message header block.
const HEADER_ESTIMATE: usize = 420;

const WORDS: &[&str] = &[
    "gateway",
    "message",
    "delivery",
    "queue",
    "policy",
    "sender",
    "recipient",
    "domain",
    "relay",
    "archive",
    "report",
    "invoice",
    "meeting",
    "schedule",
    "quarterly",
    "budget",
    "review",
    "update",
    "customer",
    "account",
    "project",
    "deadline",
    "summary",
    "team",
    "the",
    "and",
    "for",
    "with",
    "from",
    "this",
    "that",
    "will",
    "your",
    "our",
    "about",
];

/// Deterministic pseudo-random numbers (xorshift64*), so runs are repeatable.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// A float in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Lines of prose, each at most 76 characters, totalling about `len` octets with CRLFs.
fn prose(rng: &mut Rng, len: usize, out: &mut String) {
    let start = out.len();
    let mut line = String::with_capacity(80);
    while out.len() - start + line.len() < len {
        let w = WORDS[(rng.next() % WORDS.len() as u64) as usize];
        if line.len() + w.len() + 1 > 76 {
            out.push_str(&line);
            out.push_str("\r\n");
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(w);
    }
    out.push_str(&line);
    out.push_str("\r\n");
}

fn base64_lines(data: &[u8], out: &mut String) {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut col = 0;
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            let c = if i > chunk.len() {
                b'='
            } else {
                T[(n >> (18 - 6 * i) & 63) as usize]
            };
            out.push(c as char);
        }
        col += 4;
        if col == 76 {
            out.push_str("\r\n");
            col = 0;
        }
    }
    if col > 0 {
        out.push_str("\r\n");
    }
}

/// What a message's attachment is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachmentKind {
    /// Random octets (`data.bin`): nothing to unpack.
    Bin,
    /// A zip of four deflated text files (`documents.zip`), the octets counted before
    /// compression: what antivirus has to unpack.
    Zip,
}

/// A zip of four text files holding `n` octets of prose in all, deflated.
fn documents_zip(rng: &mut Rng, n: usize) -> Vec<u8> {
    use std::io::Write;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for i in 0..4 {
        let mut text = String::with_capacity(n / 4 + 80);
        prose(rng, n / 4, &mut text);
        // Writing to memory cannot fail.
        let _ = w.start_file(format!("documents/report-{i}.txt"), opts);
        let _ = w.write_all(text.as_bytes());
    }
    w.finish().map(|c| c.into_inner()).unwrap_or_default()
}

impl Template {
    /// A body for messages of about `size` octets in all, with an attachment of
    /// `attachment.0` octets (before base64; for a zip, of text before compression) when
    /// non-zero.
    pub fn new(
        size: usize,
        attachment: (usize, AttachmentKind),
        from: &str,
        seed: u64,
    ) -> Template {
        // Measure what the structure costs with no text, then fill the rest with text.
        let bare = Self::build(seed, 0, attachment, from);
        let mut sample = Vec::new();
        bare.render(
            &mut sample,
            "user@example.test",
            "0123456789ab.0.0.1",
            "Mon, 23 Nov 2026 16:17:19 +0000",
        );
        let room = size.saturating_sub(sample.len());
        Self::build(seed, room, attachment, from)
    }

    fn build(
        seed: u64,
        text: usize,
        (attachment, kind): (usize, AttachmentKind),
        from: &str,
    ) -> Template {
        let mut rng = Rng::new(seed);
        let boundary = format!("=_bulwark_load_{:016x}", rng.next());
        let mut b = String::with_capacity(text + attachment * 2 + 1024);
        b.push_str("This is a multi-part message in MIME format.\r\n\r\n");
        let alt = format!("{boundary}_alt");
        let mixed = attachment > 0;
        if mixed {
            let _ = write!(
                b,
                "--{boundary}\r\nContent-Type: multipart/alternative; boundary=\"{alt}\"\r\n\r\n"
            );
        }
        let inner = if mixed { &alt } else { &boundary };
        let _ = write!(
            b,
            "--{inner}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 7bit\r\n\r\n"
        );
        prose(&mut rng, text * 2 / 5, &mut b);
        let _ = write!(
            b,
            "\r\n--{inner}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: 7bit\r\n\r\n"
        );
        b.push_str("<html><body>\r\n<p>\r\n");
        prose(&mut rng, text * 3 / 5, &mut b);
        b.push_str("</p>\r\n</body></html>\r\n");
        let _ = write!(b, "\r\n--{inner}--\r\n");
        if mixed {
            let (data, name, ctype) = match kind {
                AttachmentKind::Bin => (
                    (0..attachment).map(|_| rng.next() as u8).collect(),
                    "data.bin",
                    "application/octet-stream",
                ),
                AttachmentKind::Zip => (
                    documents_zip(&mut rng, attachment),
                    "documents.zip",
                    "application/zip",
                ),
            };
            let _ = write!(
                b,
                "\r\n--{boundary}\r\nContent-Type: {ctype}; name=\"{name}\"\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"{name}\"\r\n\r\n"
            );
            base64_lines(&data, &mut b);
            let _ = write!(b, "\r\n--{boundary}--\r\n");
        }
        let content_type = if mixed {
            format!("multipart/mixed; boundary=\"{boundary}\"")
        } else {
            format!("multipart/alternative; boundary=\"{boundary}\"")
        };
        let body = b.into_bytes();
        let crc = crc32fast::hash(&body);
        Template {
            body,
            content_type,
            crc,
            from: from.to_string(),
        }
    }

    /// Writes one complete message (header and body) into `out`.
    pub fn render(&self, out: &mut Vec<u8>, to: &str, id: &str, date: &str) {
        out.clear();
        let mut h = String::with_capacity(HEADER_ESTIMATE + 64);
        let _ = write!(
            h,
            "From: Load Generator <{}>\r\nTo: <{to}>\r\nSubject: bulwark-load {id}\r\nDate: {date}\r\nMessage-ID: <{id}@bulwark-load>\r\nMIME-Version: 1.0\r\nContent-Type: {}\r\nX-Load-Body: {} {:08x}\r\n\r\n",
            self.from,
            self.content_type,
            self.body.len(),
            self.crc
        );
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(&self.body);
    }
}

/// Checks a received message against its `X-Load-Body` header. `None` when the message
/// carries no such header (not ours), else whether the body is whole.
pub fn verify(message: &[u8]) -> Option<bool> {
    let split = memchr::memmem::find(message, b"\r\n\r\n")?;
    let head = &message[..split + 2];
    let body = &message[split + 4..];
    let at = memchr::memmem::find(head, b"\r\nX-Load-Body: ")?;
    let rest = &head[at + 15..];
    let end = memchr::memchr(b'\r', rest)?;
    let text = std::str::from_utf8(&rest[..end]).ok()?;
    let (len, crc) = text.split_once(' ')?;
    let (len, crc) = (
        len.parse::<usize>().ok()?,
        u32::from_str_radix(crc, 16).ok()?,
    );
    Some(body.len() == len && crc32fast::hash(body) == crc)
}

/// The Message-ID value (without brackets) of a message, if it has one.
pub fn message_id(message: &[u8]) -> Option<&str> {
    let split = memchr::memmem::find(message, b"\r\n\r\n").unwrap_or(message.len());
    let head = &message[..split];
    let at = memchr::memmem::find(head, b"Message-ID: <")?;
    let rest = &head[at + 13..];
    let end = memchr::memchr(b'>', rest)?;
    std::str::from_utf8(&rest[..end]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_close_to_what_was_asked() {
        for size in [1024usize, 4096, 65536] {
            let t = Template::new(size, (0, AttachmentKind::Bin), "a@b.test", 1);
            let mut m = Vec::new();
            t.render(
                &mut m,
                "u@example.test",
                "run.0.1",
                "Mon, 23 Nov 2026 16:17:19 +0000",
            );
            let ratio = m.len() as f64 / size as f64;
            assert!((0.95..1.05).contains(&ratio), "{size}: got {}", m.len());
            assert!(m.split(|&b| b == b'\n').all(|l| l.len() <= 1000));
            assert_eq!(verify(&m), Some(true));
            assert_eq!(message_id(&m), Some("run.0.1@bulwark-load"));
        }
    }

    #[test]
    fn attachment_is_base64_and_counted() {
        let t = Template::new(8192, (3000, AttachmentKind::Bin), "a@b.test", 2);
        let mut m = Vec::new();
        t.render(&mut m, "u@example.test", "x", "d");
        let text = String::from_utf8(m.clone()).unwrap();
        assert!(text.contains("multipart/mixed"));
        assert!(text.contains("Content-Transfer-Encoding: base64"));
        assert!(m.len() > 8192 - 600);
        assert_eq!(verify(&m), Some(true));
    }

    #[test]
    fn a_zip_attachment_holds_four_text_files_of_the_size_asked() {
        use std::io::Read;
        let data = documents_zip(&mut Rng::new(7), 40_000);
        let mut z = zip::ZipArchive::new(std::io::Cursor::new(&data)).unwrap();
        assert_eq!(z.len(), 4);
        let mut total = 0;
        for i in 0..4 {
            let mut text = String::new();
            z.by_index(i).unwrap().read_to_string(&mut text).unwrap();
            total += text.len();
        }
        assert!((39_000..=41_000).contains(&total), "{total}");
        assert!(data.len() < total / 2, "deflated: {}", data.len());
        let t = Template::new(60_000, (40_000, AttachmentKind::Zip), "a@b.test", 2);
        let mut m = Vec::new();
        t.render(&mut m, "u@example.test", "x", "d");
        let text = String::from_utf8(m.clone()).unwrap();
        assert!(text.contains("filename=\"documents.zip\""));
        assert_eq!(verify(&m), Some(true));
    }

    #[test]
    fn damage_is_detected() {
        let t = Template::new(2048, (0, AttachmentKind::Bin), "a@b.test", 3);
        let mut m = Vec::new();
        t.render(&mut m, "u@example.test", "x", "d");
        let mut cut = m.clone();
        cut.truncate(m.len() - 10);
        assert_eq!(verify(&cut), Some(false));
        let mut flipped = m.clone();
        let n = flipped.len() - 20;
        flipped[n] ^= 1;
        assert_eq!(verify(&flipped), Some(false));
        // A Received: header added in front does not matter.
        let mut relayed = b"Received: from x\r\n\tby y; date\r\n".to_vec();
        relayed.extend_from_slice(&m);
        assert_eq!(verify(&relayed), Some(true));
        assert_eq!(verify(b"Subject: other\r\n\r\nbody"), None);
    }

    #[test]
    fn base64_matches_the_standard() {
        let mut s = String::new();
        base64_lines(b"Man", &mut s);
        assert_eq!(s, "TWFu\r\n");
        s.clear();
        base64_lines(b"Ma", &mut s);
        assert_eq!(s, "TWE=\r\n");
        s.clear();
        base64_lines(b"M", &mut s);
        assert_eq!(s, "TQ==\r\n");
    }
}
