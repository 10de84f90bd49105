//! A message parsed once (mail-parser, borrowing the caller's buffer) into the views the
//! rules read: headers decoded and raw, rendered body text, raw body, URLs with their
//! visible text, and attachment metadata. Bulwark's own limits bound what is looked at:
//! the parser has none on part count, nesting or header size.

use std::borrow::Cow;

use mail_parser::{HeaderValue, Message, MessageParser, MimeHeaders, PartType};
use sha2::{Digest, Sha256};

use crate::html;

/// Bounds on the structure of a message. A message past one of them still gets views
/// (of what was within the bounds) and a [`LimitHit`] that policy turns into a verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// MIME parts, counted across nested messages.
    pub max_parts: usize,
    /// Multipart and message/rfc822 nesting.
    pub max_depth: usize,
    /// Octets of the top-level header section.
    pub max_header_bytes: usize,
    /// Octets of the message that are parsed and scanned; the rest is not read.
    pub max_scan_bytes: usize,
    /// URLs kept for the uri rules.
    pub max_urls: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_parts: 1000,
            max_depth: 30,
            max_header_bytes: 256 * 1024,
            max_scan_bytes: 10 * 1024 * 1024,
            max_urls: 2000,
        }
    }
}

/// Which structural limit a message passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitHit {
    Parts,
    Depth,
    HeaderBytes,
}

impl LimitHit {
    pub fn as_str(self) -> &'static str {
        match self {
            LimitHit::Parts => "mime_parts",
            LimitHit::Depth => "mime_depth",
            LimitHit::HeaderBytes => "header_bytes",
        }
    }
}

/// One header field of the top-level message or of a MIME part.
#[derive(Debug, Clone)]
pub struct HeaderView {
    /// The field name as written.
    pub name: String,
    /// The value as written, unfolded, without the trailing CRLF.
    pub raw: String,
    /// The value with encoded words decoded.
    pub decoded: String,
    /// For address fields: the addresses, and the display names.
    pub addrs: Vec<String>,
    pub names: Vec<String>,
}

/// A URL in the message, from text or HTML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub url: String,
    /// The link's visible text (HTML anchors only).
    pub text: Option<String>,
    /// The lower-cased host name (or address literal), if the URL has one.
    pub host: Option<String>,
}

/// A non-text part.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub name: Option<String>,
    pub declared_type: String,
    pub size: usize,
    pub sha256: [u8; 32],
}

/// Everything the rules look at.
#[derive(Debug, Default)]
pub struct Views<'a> {
    /// The message as received (up to the scan bound).
    pub full: &'a [u8],
    pub headers: Vec<HeaderView>,
    /// Headers of MIME parts (below the top level).
    pub mime_headers: Vec<HeaderView>,
    pub subject: String,
    /// Subject, then each text part, then each HTML part rendered; one line per
    /// paragraph, so `^` and `$` in body rules anchor to lines.
    pub body: String,
    /// Each text part decoded (transfer encoding and charset) but HTML not rendered.
    pub rawbody: String,
    pub urls: Vec<Url>,
    pub attachments: Vec<Attachment>,
    pub parts: usize,
    pub depth: usize,
    pub header_bytes: usize,
    /// The message was longer than the scan bound.
    pub truncated: bool,
    pub limit: Option<LimitHit>,
    /// Parts whose transfer encoding was broken.
    pub encoding_problems: usize,
    /// Octets of text parts (after decoding) and of HTML parts.
    pub text_bytes: usize,
    pub html_bytes: usize,
}

impl<'a> Views<'a> {
    /// The first header named `name` (ASCII case-insensitive).
    /// The rendered body without the Subject line that starts it.
    pub fn body_text(&self) -> &str {
        self.body
            .strip_prefix(self.subject.as_str())
            .and_then(|r| r.strip_prefix('\n'))
            .unwrap_or(&self.body)
    }

    pub fn header(&self, name: &str) -> Option<&HeaderView> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
    }
}

/// Parses `raw` into views within `limits`. Never panics and never fails: a message
/// without a header section has empty header views and its bytes as the body.
pub fn parse<'a>(raw: &'a [u8], limits: &Limits) -> Views<'a> {
    let truncated = raw.len() > limits.max_scan_bytes;
    let raw = &raw[..raw.len().min(limits.max_scan_bytes)];
    let mut v = Views {
        full: raw,
        truncated,
        ..Views::default()
    };
    v.header_bytes = header_section_len(raw);
    if v.header_bytes > limits.max_header_bytes {
        v.limit = Some(LimitHit::HeaderBytes);
    }
    let Some(message) = MessageParser::default().parse(raw) else {
        let text = String::from_utf8_lossy(raw);
        v.rawbody = text.to_string();
        v.body = paragraphs(&text);
        collect_text_urls(&text, &mut v.urls, limits.max_urls);
        return v;
    };
    for h in message.root_part().headers.iter() {
        v.headers.push(header_view(raw, h));
    }
    v.subject = message.subject().unwrap_or_default().to_string();
    let mut body = String::with_capacity(raw.len().min(1 << 20));
    body.push_str(&v.subject);
    body.push('\n');
    let mut walk = Walk {
        views: &mut v,
        body: &mut body,
        limits,
    };
    walk.message(&message, raw, 0);
    v.body = body;
    v
}

struct Walk<'v, 'a, 'l> {
    views: &'v mut Views<'a>,
    body: &'v mut String,
    limits: &'l Limits,
}

impl Walk<'_, '_, '_> {
    /// Visits every part of `message` (depth-first from its root), recursing into
    /// nested messages, within the part and depth limits.
    fn message(&mut self, message: &Message<'_>, raw: &[u8], depth: usize) {
        // (part index, depth) pairs; an explicit stack, so hostile nesting cannot
        // exhaust the thread's stack.
        let mut stack: Vec<(u32, usize)> = vec![(0, depth)];
        while let Some((index, d)) = stack.pop() {
            let Some(part) = message.parts.get(index as usize) else {
                continue;
            };
            if self.views.parts >= self.limits.max_parts {
                self.views.limit.get_or_insert(LimitHit::Parts);
                return;
            }
            if d > self.limits.max_depth {
                self.views.limit.get_or_insert(LimitHit::Depth);
                continue;
            }
            self.views.parts += 1;
            self.views.depth = self.views.depth.max(d);
            if part.is_encoding_problem {
                self.views.encoding_problems += 1;
            }
            if index != 0 || depth != 0 {
                for h in &part.headers {
                    self.views.mime_headers.push(header_view(raw, h));
                }
            }
            match &part.body {
                PartType::Text(text) => {
                    self.views.text_bytes += text.len();
                    if part.is_attachment_like() {
                        self.attachment(part, text.as_bytes());
                    }
                    self.views.rawbody.push_str(text);
                    self.views.rawbody.push('\n');
                    self.body.push_str(&paragraphs(text));
                    self.body.push('\n');
                    collect_text_urls(text, &mut self.views.urls, self.limits.max_urls);
                }
                PartType::Html(text) => {
                    self.views.html_bytes += text.len();
                    self.views.rawbody.push_str(text);
                    self.views.rawbody.push('\n');
                    let room = self.limits.max_urls.saturating_sub(self.views.urls.len());
                    let rendered = html::render(text, room);
                    self.body.push_str(&paragraphs(&rendered.text));
                    self.body.push('\n');
                    for link in rendered.links {
                        push_url(&mut self.views.urls, link.href, Some(link.text));
                    }
                    collect_text_urls(&rendered.text, &mut self.views.urls, self.limits.max_urls);
                }
                PartType::Binary(bytes) | PartType::InlineBinary(bytes) => {
                    self.attachment(part, bytes);
                }
                PartType::Message(nested) => {
                    let nraw = nested.raw_message();
                    for h in nested.root_part().headers.iter() {
                        self.views.mime_headers.push(header_view(nraw, h));
                    }
                    if let Some(s) = nested.subject() {
                        self.body.push_str(s);
                        self.body.push('\n');
                    }
                    self.message(nested, nraw, d + 1);
                }
                PartType::Multipart(children) => {
                    for &c in children.iter().rev() {
                        stack.push((c, d + 1));
                    }
                }
            }
        }
    }

    fn attachment(&mut self, part: &mail_parser::MessagePart<'_>, bytes: &[u8]) {
        let declared_type = part
            .content_type()
            .map(|c| match c.subtype() {
                Some(s) => format!("{}/{}", c.ctype(), s),
                None => c.ctype().to_string(),
            })
            .unwrap_or_else(|| "application/octet-stream".to_string())
            .to_ascii_lowercase();
        self.views.attachments.push(Attachment {
            name: part.attachment_name().map(str::to_string),
            declared_type,
            size: bytes.len(),
            sha256: Sha256::digest(bytes).into(),
        });
    }
}

trait AttachmentLike {
    fn is_attachment_like(&self) -> bool;
}

impl AttachmentLike for mail_parser::MessagePart<'_> {
    /// A text part sent as a named attachment (a .txt or .csv file).
    fn is_attachment_like(&self) -> bool {
        self.content_disposition()
            .is_some_and(|d| d.ctype().eq_ignore_ascii_case("attachment"))
    }
}

/// Octets up to and including the empty line that ends the header section (or all).
fn header_section_len(raw: &[u8]) -> usize {
    if raw.starts_with(b"\r\n") {
        return 2;
    }
    match memchr::memmem::find(raw, b"\r\n\r\n") {
        Some(p) => p + 4,
        None => match memchr::memmem::find(raw, b"\n\n") {
            Some(p) => p + 2,
            None => raw.len(),
        },
    }
}

/// A header value read as unstructured text: unfolded, encoded words decoded.
fn unstructured(value: &[u8]) -> Option<String> {
    let mut v = value.to_vec();
    if !v.ends_with(b"\n") {
        v.push(b'\n');
    }
    match mail_parser::parsers::MessageStream::new(&v).parse_unstructured() {
        HeaderValue::Text(t) => Some(t.trim().to_string()),
        HeaderValue::Empty => Some(String::new()),
        _ => None,
    }
}

fn header_view(raw: &[u8], h: &mail_parser::Header<'_>) -> HeaderView {
    let start = (h.offset_start as usize).min(raw.len());
    let end = (h.offset_end as usize).clamp(start, raw.len());
    let lossy = String::from_utf8_lossy(&raw[start..end]);
    let raw_value = unfold(&lossy);
    let mut addrs = Vec::new();
    let mut names = Vec::new();
    // As SpamAssassin reads a header: the value as written, encoded words decoded (not
    // mail-parser's structured reading, which drops a Message-ID's angle brackets).
    let decoded = unstructured(&raw[start..end]).unwrap_or_else(|| raw_value.trim().to_string());
    if let HeaderValue::Address(a) = &h.value {
        for addr in a.iter() {
            if let Some(n) = addr.name() {
                names.push(n.to_string());
            }
            if let Some(ad) = addr.address() {
                addrs.push(ad.to_string());
            }
        }
    }
    HeaderView {
        name: h.name.as_str().to_string(),
        raw: raw_value.trim_start().to_string(),
        decoded,
        addrs,
        names,
    }
}

/// Removes header folding (CRLF before white space) and the final line end.
pub fn unfold(value: &str) -> Cow<'_, str> {
    let v = value.trim_end_matches(['\r', '\n']);
    if !v.contains('\n') {
        return Cow::Borrowed(v);
    }
    let mut out = String::with_capacity(v.len());
    for (i, line) in v.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if i > 0 && !line.starts_with([' ', '\t']) {
            out.push(' ');
        }
        out.push_str(line);
    }
    Cow::Owned(out)
}

/// Text with each paragraph on one line (lines of a paragraph joined by a space), the
/// way SpamAssassin presents body text to its rules.
fn paragraphs(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut blank = true;
    for line in text.lines() {
        let line = line.trim_end();
        if line.trim().is_empty() {
            if !blank {
                out.push('\n');
                blank = true;
            }
            continue;
        }
        if !blank {
            out.push(' ');
        }
        out.push_str(line);
        blank = false;
    }
    if !blank {
        out.push('\n');
    }
    out
}

/// Finds `http://`, `https://`, `ftp://` and `www.` URLs in plain text.
fn collect_text_urls(text: &str, urls: &mut Vec<Url>, max: usize) {
    let b = text.as_bytes();
    let finder = memchr::memmem::Finder::new(b"://");
    let mut from = 0;
    let mut seen_www = 0;
    while urls.len() < max {
        let scheme_at = finder.find(&b[from..]).map(|p| from + p);
        // `www.` URLs without a scheme, before the next scheme URL.
        let limit = scheme_at.unwrap_or(b.len());
        while seen_www < limit && urls.len() < max {
            match memchr::memmem::find(&b[seen_www..limit], b"www.") {
                Some(p) => {
                    let s = seen_www + p;
                    let boundary = s == 0 || !is_url_char(b[s - 1]);
                    let e = url_end(b, s);
                    if boundary && e > s + 4 {
                        push_url(urls, format!("http://{}", &text[s..e]), None);
                    }
                    seen_www = e.max(s + 4);
                }
                None => seen_www = limit,
            }
        }
        let Some(p) = scheme_at else { break };
        let mut s = p;
        while s > 0 && b[s - 1].is_ascii_alphabetic() && p - s < 8 {
            s -= 1;
        }
        let scheme = &text[s..p];
        let e = url_end(b, p + 3);
        if matches!(
            scheme.to_ascii_lowercase().as_str(),
            "http" | "https" | "ftp"
        ) && e > p + 3
        {
            push_url(urls, text[s..e].to_string(), None);
        }
        from = e.max(p + 3);
        seen_www = seen_www.max(from);
    }
}

fn is_url_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"-._~:/?#[]@!$&'()*+,;=%".contains(&c) || c >= 0x80
}

fn url_end(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && is_url_char(b[i]) && b[i] != b'>' && b[i] != b'"' {
        i += 1;
    }
    // Punctuation that ends a sentence is not part of the URL.
    while i > 0 && b".,;:!?)'".contains(&b[i - 1]) {
        i -= 1;
    }
    i
}

fn push_url(urls: &mut Vec<Url>, url: String, text: Option<String>) {
    let url = url.trim().to_string();
    if url.is_empty() {
        return;
    }
    if text.is_none() && urls.iter().any(|u| u.url == url) {
        return;
    }
    let host = host_of(&url);
    urls.push(Url { url, text, host });
}

/// The host of a URL, lower-cased, without user info or port; `None` for URLs that have
/// none (`mailto:`, relative links).
pub fn host_of(url: &str) -> Option<String> {
    let rest = match url.find("://") {
        Some(p) => &url[p + 3..],
        None if url.len() > 4 && url.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("www.")) => {
            url
        }
        None => return None,
    };
    let authority = rest.split(['/', '?', '#', '\\']).next().unwrap_or("");
    let host = authority.rsplit('@').next().unwrap_or("");
    let host = if host.starts_with('[') {
        host.split(']').next().map(|h| &h[1..]).unwrap_or("")
    } else {
        host.split(':').next().unwrap_or("")
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    (!host.is_empty()).then_some(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_of_text_with_multibyte_letters_does_not_panic() {
        // Found in real spam: a Korean link text, 4 octets into a 3-octet letter.
        assert_eq!(host_of("쇼핑호스트란?"), None);
        assert_eq!(host_of("wwwé.example"), None);
        assert_eq!(
            host_of("WWW.Example.com/x").as_deref(),
            Some("www.example.com")
        );
    }

    const MIXED: &[u8] = b"From: \"Big Bank\" <alerts@bank.example>\r\n\
To: you@example.com\r\n\
Subject: =?UTF-8?B?WW91ciBhY2NvdW50?= is locked\r\n\
X-Folded: one\r\n\ttwo\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"b1\"\r\n\
\r\n\
--b1\r\n\
Content-Type: multipart/alternative; boundary=\"b2\"\r\n\
\r\n\
--b2\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Content-Transfer-Encoding: quoted-printable\r\n\
\r\n\
Visit https://login.bank.example/reset now.=0D=0ASee www.other.example too.\r\n\
--b2\r\n\
Content-Type: text/html\r\n\
\r\n\
<p>Click <a href=\"http://evil.example/x\">https://login.bank.example</a></p>\r\n\
--b2--\r\n\
--b1\r\n\
Content-Type: application/pdf; name=\"invoice.pdf\"\r\n\
Content-Disposition: attachment; filename=\"invoice.pdf\"\r\n\
Content-Transfer-Encoding: base64\r\n\
\r\n\
JVBERi0xLjQK\r\n\
--b1--\r\n";

    #[test]
    fn views_of_a_mixed_message() {
        let v = parse(MIXED, &Limits::default());
        assert_eq!(v.subject, "Your account is locked");
        let from = v.header("from").expect("from");
        assert_eq!(from.addrs, vec!["alerts@bank.example"]);
        assert_eq!(from.names, vec!["Big Bank"]);
        assert_eq!(v.header("X-Folded").expect("folded").raw, "one\ttwo");
        assert!(v.body.starts_with("Your account is locked\n"), "{}", v.body);
        assert!(
            v.body.contains("Click https://login.bank.example"),
            "{}",
            v.body
        );
        assert!(v.rawbody.contains("<a href="), "{}", v.rawbody);
        let urls: Vec<_> = v.urls.iter().map(|u| u.url.as_str()).collect();
        assert!(
            urls.contains(&"https://login.bank.example/reset"),
            "{urls:?}"
        );
        assert!(urls.contains(&"http://www.other.example"), "{urls:?}");
        let anchor = v
            .urls
            .iter()
            .find(|u| u.url == "http://evil.example/x")
            .expect("anchor");
        assert_eq!(anchor.text.as_deref(), Some("https://login.bank.example"));
        assert_eq!(anchor.host.as_deref(), Some("evil.example"));
        assert_eq!(v.attachments.len(), 1);
        assert_eq!(v.attachments[0].name.as_deref(), Some("invoice.pdf"));
        assert_eq!(v.attachments[0].declared_type, "application/pdf");
        assert_eq!(v.attachments[0].size, 9);
        assert!(
            v.mime_headers
                .iter()
                .any(|h| h.name == "Content-Disposition")
        );
        assert_eq!(v.limit, None);
    }

    #[test]
    fn part_and_header_limits_are_reported() {
        let mut m = b"Subject: many\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\n".to_vec();
        for _ in 0..50 {
            m.extend_from_slice(b"--x\r\nContent-Type: text/plain\r\n\r\nhi\r\n");
        }
        m.extend_from_slice(b"--x--\r\n");
        let limits = Limits {
            max_parts: 10,
            ..Limits::default()
        };
        let v = parse(&m, &limits);
        assert_eq!(v.limit, Some(LimitHit::Parts));
        assert_eq!(v.parts, 10);

        let mut big = b"X-Long: ".to_vec();
        big.resize(300 * 1024, b'a');
        big.extend_from_slice(b"\r\n\r\nbody\r\n");
        let v = parse(&big, &Limits::default());
        assert_eq!(v.limit, Some(LimitHit::HeaderBytes));
    }

    #[test]
    fn deep_nesting_is_bounded() {
        let depth = 200;
        let mut m = Vec::new();
        m.extend_from_slice(b"Subject: deep\r\n");
        for i in 0..depth {
            m.extend_from_slice(
                format!("Content-Type: multipart/mixed; boundary=b{i}\r\n\r\n--b{i}\r\n")
                    .as_bytes(),
            );
        }
        m.extend_from_slice(b"Content-Type: text/plain\r\n\r\ninner\r\n");
        for i in (0..depth).rev() {
            m.extend_from_slice(format!("--b{i}--\r\n").as_bytes());
        }
        let v = parse(&m, &Limits::default());
        assert_eq!(v.limit, Some(LimitHit::Depth));
    }

    #[test]
    fn text_without_headers_is_still_body() {
        let v = parse(
            b"\r\njust text, see http://a.example/b.",
            &Limits::default(),
        );
        assert!(v.body.contains("just text"));
        assert_eq!(v.urls[0].url, "http://a.example/b");
    }

    #[test]
    fn hosts_of_urls() {
        assert_eq!(
            host_of("http://User@Host.Example:8080/x").as_deref(),
            Some("host.example")
        );
        assert_eq!(
            host_of("https://[2001:db8::1]/").as_deref(),
            Some("2001:db8::1")
        );
        assert_eq!(host_of("mailto:a@b"), None);
        assert_eq!(host_of("www.x.example/y").as_deref(), Some("www.x.example"));
    }
}
