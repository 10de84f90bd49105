//! Message content: the DATA scanner (end only at `<CRLF>.<CRLF>`, exact dot-unstuffing)
//! and the BDAT chunk checker. Both refuse bare CR and bare LF, so that no SMTP-smuggling
//! variant can be taken as end of data here or be passed on to the next hop.

use memchr::memchr2;

/// SMTP-smuggling end-of-data variants that must never end a message here. Each is a
/// test vector for the unit and integration tests; none contains `<CRLF>.<CRLF>`.
pub const SMUGGLING_VARIANTS: [&[u8]; 11] = [
    b"\n.\n",
    b"\r.\r",
    b"\r.\n",
    b"\n.\r",
    b"\n.\r\n",
    b"\r.\r\n",
    b"\r\n.\n",
    b"\r\n.\r",
    b"\r\n\x00.\r\n",
    b"\r\n.\r\r\n",
    b"\r\r\n.\r\r\n",
];

/// The longest text line RFC 5321 §4.5.3.1.6 allows, without its CRLF. Real mail breaks
/// it (Postfix, Exim and the large providers accept longer lines), so the scanners take
/// their own bound, which defaults to this.
pub const MAX_TEXT_LINE: usize = 998;

/// Why a message is refused once its end has been read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentError {
    /// A CR not followed by LF, or an LF not preceded by CR.
    BareCrLf,
    /// A line longer than the scanner's line bound.
    LineTooLong,
    /// More octets than the size limit.
    TooBig,
}

/// Outcome of scanning one piece of input during DATA.
#[derive(Debug, PartialEq, Eq)]
pub struct Scan {
    /// Input octets consumed; the rest must be presented again with more input.
    pub consumed: usize,
    /// `<CRLF>.<CRLF>` was found; the terminator is included in `consumed`.
    pub done: bool,
}

/// The first content error seen; later ones do not replace it.
#[derive(Debug, Default)]
struct FirstError(Option<ContentError>);

impl FirstError {
    fn fail(&mut self, e: ContentError) {
        if self.0.is_none() {
            self.0 = Some(e);
        }
    }
}

/// Incremental DATA reader: unstuffs into `body` and records the first content error.
/// Once an error is recorded the rest is still read (so the session stays in step with
/// the client) but no longer stored. The size limit counts every octet stored, so the
/// caller may drain `body` between calls (a large message streamed to disk).
#[derive(Debug)]
pub struct DataScanner {
    at_line_start: bool,
    line_len: usize,
    max_line: usize,
    limit: usize,
    stored: usize,
    error: FirstError,
}

impl DataScanner {
    pub fn new(limit: usize) -> Self {
        // The 354 reply is sent after the client's CRLF, so data begins at a line start.
        DataScanner {
            at_line_start: true,
            line_len: 0,
            max_line: MAX_TEXT_LINE,
            limit,
            stored: 0,
            error: FirstError::default(),
        }
    }

    /// Allows lines of up to `max_line` octets (without CRLF).
    pub fn max_line(mut self, max_line: usize) -> Self {
        self.max_line = max_line;
        self
    }

    /// Octets of content stored so far.
    pub fn stored(&self) -> usize {
        self.stored
    }

    pub fn error(&self) -> Option<ContentError> {
        self.error.0
    }

    fn fail(&mut self, e: ContentError) {
        self.error.fail(e);
    }

    fn store(&mut self, body: &mut Vec<u8>, bytes: &[u8]) {
        if self.error.0.is_some() || bytes.is_empty() {
            return;
        }
        if self.stored + bytes.len() > self.limit {
            self.fail(ContentError::TooBig);
            return;
        }
        self.stored += bytes.len();
        body.extend_from_slice(bytes);
    }

    /// Scans `input`, appending unstuffed content to `body`.
    pub fn scan(&mut self, input: &[u8], body: &mut Vec<u8>) -> Scan {
        let mut i = 0;
        let mut copy_from = 0;
        loop {
            if self.at_line_start {
                if i >= input.len() {
                    break;
                }
                if input[i] == b'.' {
                    // Need ".\r\n" or a decision that this is a stuffed dot.
                    if input.len() - i < 3 {
                        break;
                    }
                    if &input[i + 1..i + 3] == b"\r\n" {
                        let chunk = &input[copy_from..i];
                        self.store(body, chunk);
                        return Scan {
                            consumed: i + 3,
                            done: true,
                        };
                    }
                    // Dot-stuffed line: drop exactly one leading dot.
                    let chunk = &input[copy_from..i];
                    self.store(body, chunk);
                    i += 1;
                    copy_from = i;
                    self.line_len = 1;
                }
                self.at_line_start = false;
            }
            match memchr2(b'\r', b'\n', &input[i..]) {
                None => {
                    self.line_len += input.len() - i;
                    i = input.len();
                    break;
                }
                Some(off) => {
                    let p = i + off;
                    self.line_len += off;
                    if input[p] == b'\n' {
                        // Bare LF: never a line end, so never part of an end-of-data.
                        self.fail(ContentError::BareCrLf);
                        i = p + 1;
                        continue;
                    }
                    if p + 1 >= input.len() {
                        // A CR at the end of the input: decide when the next octet comes.
                        i = p;
                        break;
                    }
                    if input[p + 1] != b'\n' {
                        self.fail(ContentError::BareCrLf);
                        i = p + 1;
                        continue;
                    }
                    if self.line_len > self.max_line {
                        self.fail(ContentError::LineTooLong);
                    }
                    i = p + 2;
                    self.at_line_start = true;
                    self.line_len = 0;
                }
            }
        }
        if self.line_len > self.max_line {
            self.fail(ContentError::LineTooLong);
        }
        let chunk = &input[copy_from..i];
        self.store(body, chunk);
        Scan {
            consumed: i,
            done: false,
        }
    }
}

/// Checks BDAT chunks as they arrive: the concatenated content must use CRLF line ends
/// only and respect the line and size limits. Chunk boundaries may fall anywhere,
/// including between a CR and its LF.
#[derive(Debug)]
pub struct ChunkChecker {
    pending_cr: bool,
    line_len: usize,
    max_line: usize,
    limit: usize,
    stored: usize,
    error: FirstError,
}

impl ChunkChecker {
    pub fn new(limit: usize) -> Self {
        ChunkChecker {
            pending_cr: false,
            line_len: 0,
            max_line: MAX_TEXT_LINE,
            limit,
            stored: 0,
            error: FirstError::default(),
        }
    }

    /// Allows lines of up to `max_line` octets (without CRLF).
    pub fn max_line(mut self, max_line: usize) -> Self {
        self.max_line = max_line;
        self
    }

    /// Octets of content stored so far, over every chunk.
    pub fn stored(&self) -> usize {
        self.stored
    }

    pub fn error(&self) -> Option<ContentError> {
        self.error.0
    }

    fn fail(&mut self, e: ContentError) {
        self.error.fail(e);
    }

    /// Checks and stores a piece of chunk content.
    pub fn feed(&mut self, bytes: &[u8], body: &mut Vec<u8>) {
        let mut i = 0;
        if self.pending_cr && !bytes.is_empty() {
            self.pending_cr = false;
            if bytes[0] == b'\n' {
                i = 1;
                self.line_len = 0;
            } else {
                self.fail(ContentError::BareCrLf);
            }
        }
        while i < bytes.len() {
            match memchr2(b'\r', b'\n', &bytes[i..]) {
                None => {
                    self.line_len += bytes.len() - i;
                    break;
                }
                Some(off) => {
                    let p = i + off;
                    self.line_len += off;
                    if bytes[p] == b'\n' {
                        self.fail(ContentError::BareCrLf);
                        i = p + 1;
                        continue;
                    }
                    if p + 1 == bytes.len() {
                        self.pending_cr = true;
                        i = p + 1;
                        continue;
                    }
                    if bytes[p + 1] != b'\n' {
                        self.fail(ContentError::BareCrLf);
                        i = p + 1;
                        continue;
                    }
                    if self.line_len > self.max_line {
                        self.fail(ContentError::LineTooLong);
                    }
                    self.line_len = 0;
                    i = p + 2;
                }
            }
        }
        if self.line_len > self.max_line {
            self.fail(ContentError::LineTooLong);
        }
        if self.error.0.is_none() {
            if self.stored + bytes.len() > self.limit {
                self.fail(ContentError::TooBig);
            } else {
                self.stored += bytes.len();
                body.extend_from_slice(bytes);
            }
        }
    }

    /// Called after the LAST chunk: a trailing lone CR is bare.
    pub fn finish(&mut self) {
        if self.pending_cr {
            self.fail(ContentError::BareCrLf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` octets, re-presenting unconsumed input as a real
    /// session does. Returns (octets consumed in total, done, body, error).
    fn run(input: &[u8], step: usize) -> (usize, bool, Vec<u8>, Option<ContentError>) {
        let mut s = DataScanner::new(1 << 20);
        let mut body = Vec::new();
        let mut buf: Vec<u8> = Vec::new();
        let mut fed = 0;
        let mut total = 0;
        while fed < input.len() {
            let end = (fed + step).min(input.len());
            buf.extend_from_slice(&input[fed..end]);
            fed = end;
            let r = s.scan(&buf, &mut body);
            total += r.consumed;
            buf.drain(..r.consumed);
            if r.done {
                return (total, true, body, s.error());
            }
        }
        (total, false, body, s.error())
    }

    #[test]
    fn plain_message_and_exact_unstuffing() {
        let input = b"Subject: x\r\n\r\n..leading dot\r\n.\r\n";
        for step in 1..input.len() + 1 {
            let (n, done, body, err) = run(input, step);
            assert!(done, "step {step}");
            assert_eq!(n, input.len());
            assert_eq!(body, b"Subject: x\r\n\r\n.leading dot\r\n");
            assert_eq!(err, None);
        }
    }

    #[test]
    fn single_dot_inside_line_is_kept() {
        let (_, done, body, _) = run(b"a.b\r\n. x\r\n.\r\n", 4);
        assert!(done);
        assert_eq!(body, b"a.b\r\n x\r\n");
    }

    #[test]
    fn empty_message() {
        let (n, done, body, err) = run(b".\r\n", 1);
        assert!(done && n == 3 && body.is_empty() && err.is_none());
    }

    #[test]
    fn trailing_input_after_end_is_not_consumed() {
        let mut s = DataScanner::new(100);
        let mut body = Vec::new();
        let r = s.scan(b"x\r\n.\r\nQUIT\r\n", &mut body);
        assert_eq!(
            r,
            Scan {
                consumed: 6,
                done: true
            }
        );
    }

    /// Every smuggling variant from the issue: none of them ends the data, and each
    /// poisons the message, which then ends only at the real terminator.
    #[test]
    fn smuggling_variants_never_end_data() {
        for v in SMUGGLING_VARIANTS {
            let mut input = b"Subject: smuggle\r\n\r\nhello".to_vec();
            input.extend_from_slice(v);
            input.extend_from_slice(b"MAIL FROM:<evil@x.test>\r\nRCPT TO:<v@y.test>\r\nDATA\r\n");
            let real_end = input.len() + 9;
            input.extend_from_slice(b"tail\r\n.\r\n");
            for step in [1, 2, 3, 7, input.len()] {
                let (n, done, _, err) = run(&input, step);
                assert!(done, "variant {v:?} step {step}");
                assert_eq!(n, real_end, "variant {v:?} ended early at {n}");
                if v != b"\r\n\x00.\r\n" {
                    assert_eq!(err, Some(ContentError::BareCrLf), "variant {v:?}");
                }
            }
        }
    }

    #[test]
    fn nul_dot_line_is_content() {
        let (_, done, body, err) = run(b"a\r\n\x00.\r\n.\r\n", 1);
        assert!(done);
        assert_eq!(body, b"a\r\n\x00.\r\n");
        assert_eq!(err, None);
    }

    #[test]
    fn long_lines_are_refused() {
        let mut input = vec![b'a'; MAX_TEXT_LINE];
        input.extend_from_slice(b"\r\n.\r\n");
        assert_eq!(run(&input, 100).3, None);
        let mut input = vec![b'a'; MAX_TEXT_LINE + 1];
        input.extend_from_slice(b"\r\n.\r\n");
        let (_, done, _, err) = run(&input, 100);
        assert!(done);
        assert_eq!(err, Some(ContentError::LineTooLong));
    }

    #[test]
    fn a_longer_line_bound_accepts_long_lines_and_still_refuses_past_it() {
        let mut input = vec![b'a'; 5000];
        input.extend_from_slice(b"\r\n.\r\n");
        let mut s = DataScanner::new(1 << 20).max_line(8192);
        let mut body = Vec::new();
        let r = s.scan(&input, &mut body);
        assert!(r.done);
        assert_eq!(s.error(), None);
        let mut s = DataScanner::new(1 << 20).max_line(4096);
        assert!(s.scan(&input, &mut Vec::new()).done);
        assert_eq!(s.error(), Some(ContentError::LineTooLong));
        let mut c = ChunkChecker::new(1 << 20).max_line(8192);
        c.feed(&input[..5002], &mut Vec::new());
        assert_eq!(c.error(), None);
    }

    #[test]
    fn size_limit_counts_content_already_drained_from_the_body() {
        // A streamed message: the caller empties `body` between reads; the limit must
        // still see every octet.
        let mut s = DataScanner::new(10);
        let mut body = Vec::new();
        assert!(!s.scan(b"012345\r\n", &mut body).done);
        assert_eq!(s.stored(), 8);
        body.clear();
        assert!(s.scan(b"6789\r\n.\r\n", &mut body).done);
        assert_eq!(s.error(), Some(ContentError::TooBig));
        let mut c = ChunkChecker::new(4);
        let mut body = Vec::new();
        c.feed(b"abc", &mut body);
        body.clear();
        c.feed(b"de", &mut body);
        assert_eq!(c.error(), Some(ContentError::TooBig));
    }

    #[test]
    fn size_limit_stops_storing_but_reads_to_the_end() {
        let mut s = DataScanner::new(10);
        let mut body = Vec::new();
        let r = s.scan(b"0123456789abcdef\r\nmore\r\n.\r\n", &mut body);
        assert!(r.done);
        assert_eq!(s.error(), Some(ContentError::TooBig));
        assert!(body.len() <= 10);
    }

    #[test]
    fn chunks_split_crlf_across_boundaries() {
        let mut c = ChunkChecker::new(100);
        let mut body = Vec::new();
        c.feed(b"line one\r", &mut body);
        c.feed(b"\nline two\r\n", &mut body);
        c.finish();
        assert_eq!(c.error(), None);
        assert_eq!(body, b"line one\r\nline two\r\n");
    }

    #[test]
    fn chunks_refuse_bare_line_ends() {
        for bad in [&b"a\nb\r\n"[..], b"a\rb\r\n", b"a\r"] {
            let mut c = ChunkChecker::new(100);
            let mut body = Vec::new();
            c.feed(bad, &mut body);
            c.finish();
            assert_eq!(c.error(), Some(ContentError::BareCrLf), "{bad:?}");
        }
        let mut c = ChunkChecker::new(100);
        let mut body = Vec::new();
        c.feed(b"a\r", &mut body);
        c.feed(b"b\r\n", &mut body);
        assert_eq!(c.error(), Some(ContentError::BareCrLf));
    }

    #[test]
    fn chunks_enforce_size() {
        let mut c = ChunkChecker::new(4);
        let mut body = Vec::new();
        c.feed(b"abc", &mut body);
        c.feed(b"de", &mut body);
        assert_eq!(c.error(), Some(ContentError::TooBig));
    }
}
