//! A message's content as delivery sends it: a small message kept in memory from its
//! arrival, or a spool location read back in pieces, so that a large message never has
//! to be in memory whole. [`Framer`] turns content into DATA framing as it goes.

use std::rc::Rc;

use crate::memory::Charge;
use crate::queue::{Location, Spool};

/// Octets read from the spool at a time when sending a large message.
pub const PIECE: u64 = 256 * 1024;
/// The most of a message read to find its header (for a DSN, or the SMTPUTF8 check).
pub const HEADER_MAX: usize = 256 * 1024;

/// Content held in memory, in the pieces it arrived in (the `Received:` header and the
/// client's content), charged against the core's memory budget while it lives.
pub struct Cached {
    parts: [Vec<u8>; 2],
    _charge: Option<Charge>,
}

impl Cached {
    pub fn new(header: Vec<u8>, body: Vec<u8>, charge: Option<Charge>) -> Rc<Cached> {
        Rc::new(Cached {
            parts: [header, body],
            _charge: charge,
        })
    }

    pub fn len(&self) -> u64 {
        self.parts.iter().map(|p| p.len() as u64).sum()
    }

    /// The content given as the body, back (a load generator reuses its buffer).
    pub fn into_body(self) -> Vec<u8> {
        let [_, body] = self.parts;
        body
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn parts(&self) -> impl Iterator<Item = &[u8]> {
        self.parts.iter().map(Vec::as_slice)
    }

    /// The first `n` octets (or all), joined.
    pub fn prefix(&self, n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n.min(self.len() as usize));
        for p in self.parts() {
            let take = (n - out.len()).min(p.len());
            out.extend_from_slice(&p[..take]);
            if out.len() == n {
                break;
            }
        }
        out
    }
}

/// Where a delivery takes the content from.
#[derive(Clone)]
pub enum Content {
    Memory(Rc<Cached>),
    Spool { spool: Spool, location: Location },
}

impl Content {
    pub fn len(&self) -> u64 {
        match self {
            Content::Memory(c) => c.len(),
            Content::Spool { location, .. } => location.len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The first `n` octets (or all), for the header a DSN returns.
    pub async fn prefix(&self, n: usize) -> std::io::Result<Vec<u8>> {
        match self {
            Content::Memory(c) => Ok(c.prefix(n)),
            Content::Spool { spool, location } => spool.read_range(*location, 0, n as u64).await,
        }
    }
}

/// DATA framing of content that arrives in pieces: a dot doubled at every line start,
/// lines longer than the wrap limit broken (a header line folded with a leading space so
/// it stays the same field, a body line broken with CRLF), CRLF before the final `.` if
/// the content does not end with one. The content is CRLF-clean (the server refused
/// bare CR and LF), so every CR is followed by LF.
pub struct Framer {
    at_line_start: bool,
    /// Octets on the current line so far, CR and LF not counted.
    line_len: usize,
    wrap: Option<usize>,
    in_header: bool,
    /// Some content was framed.
    any: bool,
}

impl Framer {
    /// `wrap`: the longest line to send (octets without CRLF); `None` sends lines as
    /// they are.
    pub fn new(wrap: Option<usize>) -> Self {
        Framer {
            at_line_start: true,
            line_len: 0,
            wrap,
            in_header: true,
            any: false,
        }
    }

    /// Frames `input` onto `out`.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) {
        if input.is_empty() {
            return;
        }
        self.any = true;
        match self.wrap {
            None => self.push_unwrapped(input, out),
            Some(w) => self.push_wrapped(input, out, w),
        }
    }

    fn push_unwrapped(&mut self, input: &[u8], out: &mut Vec<u8>) {
        out.reserve(input.len() + input.len() / 256 + 2);
        if self.at_line_start && input[0] == b'.' {
            out.push(b'.');
        }
        let mut from = 0;
        for i in memchr::memmem::find_iter(input, b"\n.") {
            out.extend_from_slice(&input[from..i + 1]);
            out.push(b'.');
            from = i + 1;
        }
        out.extend_from_slice(&input[from..]);
        self.at_line_start = input.last() == Some(&b'\n');
    }

    fn push_wrapped(&mut self, input: &[u8], out: &mut Vec<u8>, wrap: usize) {
        out.reserve(input.len() + input.len() / 256 + 8);
        let mut i = 0;
        while i < input.len() {
            if self.at_line_start {
                if self.in_header && input[i] == b'\r' {
                    // An empty line: the header ends here.
                    self.in_header = false;
                }
                if input[i] == b'.' {
                    out.push(b'.');
                }
                self.at_line_start = false;
                self.line_len = 0;
            }
            let (seg_end, ends_line) = match memchr::memchr(b'\n', &input[i..]) {
                Some(p) => (i + p + 1, true),
                None => (input.len(), false),
            };
            let seg = &input[i..seg_end];
            // The line's own octets end where its CR (and LF) begin.
            let mut content_end = seg.len();
            while content_end > 0 && matches!(seg[content_end - 1], b'\r' | b'\n') {
                content_end -= 1;
            }
            let mut j = 0;
            while j < content_end {
                if self.line_len >= wrap {
                    if self.in_header {
                        out.extend_from_slice(b"\r\n ");
                        self.line_len = 1;
                    } else {
                        out.extend_from_slice(b"\r\n");
                        self.line_len = 0;
                        if seg[j] == b'.' {
                            out.push(b'.');
                        }
                    }
                }
                let take = (wrap - self.line_len).min(content_end - j);
                out.extend_from_slice(&seg[j..j + take]);
                self.line_len += take;
                j += take;
            }
            out.extend_from_slice(&seg[content_end..]);
            if ends_line {
                self.at_line_start = true;
            }
            i = seg_end;
        }
    }

    /// Ends the content: CRLF if the last line was not ended, then the final `.`.
    pub fn finish(self, out: &mut Vec<u8>) {
        if self.any && !self.at_line_start {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::data::DataScanner;

    /// Frames `content` in pieces of `step` octets and reads it back through the server's
    /// DATA reader.
    fn round_trip(content: &[u8], step: usize, wrap: Option<usize>) -> (Vec<u8>, Vec<u8>) {
        let mut framed = Vec::new();
        let mut f = Framer::new(wrap);
        for piece in content.chunks(step.max(1)) {
            f.push(piece, &mut framed);
        }
        f.finish(&mut framed);
        let mut s = DataScanner::new(1 << 20).max_line(1 << 20);
        let mut body = Vec::new();
        let r = s.scan(&framed, &mut body);
        assert!(r.done, "{content:?} step {step}");
        assert_eq!(r.consumed, framed.len(), "{content:?} step {step}");
        assert_eq!(s.error(), None);
        (framed, body)
    }

    #[test]
    fn stuffing_round_trips_through_the_server_reader_in_any_pieces() {
        let cases: &[&[u8]] = &[
            b"",
            b"a\r\n",
            b".\r\n",
            b"..\r\n",
            b"x\r\n.\r\n.x\r\n",
            b"no final crlf",
            b".start\r\n\r\n..\r\n",
        ];
        for c in cases {
            for step in 1..=c.len().max(1) {
                let (_, body) = round_trip(c, step, None);
                let mut expect = c.to_vec();
                if !expect.is_empty() && !expect.ends_with(b"\r\n") {
                    expect.extend_from_slice(b"\r\n");
                }
                assert_eq!(body, expect, "{c:?} step {step}");
            }
        }
    }

    #[test]
    fn long_lines_are_wrapped_and_headers_stay_folded() {
        let mut content = b"Subject: ".to_vec();
        content.extend(std::iter::repeat_n(b'h', 2500));
        content.extend_from_slice(b"\r\n\r\n");
        content.extend(std::iter::repeat_n(b'b', 1500));
        content.extend_from_slice(b".dot after the break\r\nshort\r\n");
        for step in [1, 7, 998, 4096] {
            let (framed, body) = round_trip(&content, step, Some(998));
            let lines: Vec<&[u8]> = framed.split(|&b| b == b'\n').collect();
            assert!(
                lines.iter().all(|l| l.len() <= 998 + 2),
                "a framed line is longer than 998 octets (step {step})"
            );
            let text = String::from_utf8(body).unwrap();
            // The header's continuation lines start with a space: still one field.
            let header = text.split("\r\n\r\n").next().unwrap();
            assert!(header.lines().skip(1).all(|l| l.starts_with(' ')));
            assert_eq!(header.replace("\r\n ", "").len(), 9 + 2500);
            // The body keeps its octets, only broken, and the dot at a break survives.
            let body_part = text.split("\r\n\r\n").nth(1).unwrap();
            assert_eq!(
                body_part.replace("\r\n", ""),
                format!("{}.dot after the breakshort", "b".repeat(1500))
            );
        }
    }

    #[test]
    fn lines_within_the_limit_are_untouched() {
        let content = b"A: b\r\n\r\nline\r\n.x\r\n";
        let (_, body) = round_trip(content, 3, Some(998));
        assert_eq!(body, content);
    }
}
