//! The SMTP client that relays to the next hop: EHLO, opportunistic STARTTLS, pipelined
//! envelopes, dot-stuffed content, per-recipient replies, connection reuse.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use rustls::ClientConfig;
use tracing::debug;

use super::content::{Content, Framer, HEADER_MAX, PIECE};
use crate::net::stream::Stream;
use crate::net::tls::server_name;

/// A reply from the remote server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// All lines, joined with a space, code included on the first (`550 5.1.1 unknown`).
    pub text: String,
}

impl Reply {
    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }
    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }
    /// A reply of our own making, for failures that produced none.
    pub fn local(code: u16, text: &str) -> Reply {
        Reply {
            code,
            text: format!("{code} {text}"),
        }
    }
}

/// Why a connection could not be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnError {
    /// No connection: refused, unreachable.
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("{0}")]
    Io(String),
    /// The STARTTLS handshake failed (including certificate verification).
    #[error("TLS handshake failed: {0}")]
    Tls(String),
    #[error("timed out {0}")]
    Timeout(&'static str),
    #[error("{}", .0.text)]
    Refused(Reply),
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl ConnError {
    /// The reply to report for recipients this failure affects.
    pub fn as_reply(&self) -> Reply {
        match self {
            ConnError::Refused(r) => r.clone(),
            // RFC 3463: 4.4.1 no answer from host; 4.4.2 bad connection.
            ConnError::Connect(_) | ConnError::Timeout("connecting") => {
                Reply::local(451, &format!("4.4.1 {self}"))
            }
            other => Reply::local(451, &format!("4.4.2 {other}")),
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Caps {
    pub pipelining: bool,
    pub starttls: bool,
    pub size: Option<u64>,
    pub eight_bit: bool,
    pub smtputf8: bool,
}

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub command: Duration,
    pub data: Duration,
}

/// The replies of one transaction.
#[derive(Debug)]
pub struct TxReplies {
    pub mail: Reply,
    /// One per recipient, in order; absent when MAIL was refused.
    pub rcpts: Vec<Reply>,
    /// The final reply to the content, when any recipient was accepted.
    pub data: Option<Reply>,
    /// When the last octet of content (the final `.`) was handed to the socket.
    pub content_sent: Option<std::time::Instant>,
}

pub struct Connection {
    stream: Stream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    pub caps: Caps,
    /// `host[ip]` of the peer, for reports.
    pub remote: String,
    timeouts: Timeouts,
    /// Lines longer than this are wrapped on the way out; `None`: sent as they are.
    wrap: Option<usize>,
}

const MAX_REPLY_LINE: usize = 4096;
const MAX_REPLY_LINES: usize = 200;

async fn deadline<T>(
    d: Duration,
    what: &'static str,
    f: impl Future<Output = Result<T, ConnError>>,
) -> Result<T, ConnError> {
    futures_lite::future::or(f, async {
        glommio::timer::sleep(d).await;
        Err(ConnError::Timeout(what))
    })
    .await
}

fn io_err(e: io::Error) -> ConnError {
    ConnError::Io(e.to_string())
}

impl Connection {
    /// Connects to `addr`, reads the greeting and says EHLO; upgrades with STARTTLS when
    /// the server offers it and `tls` is given.
    pub async fn open(
        host: &str,
        addr: SocketAddr,
        helo: &str,
        tls: Option<&Arc<ClientConfig>>,
        timeouts: Timeouts,
    ) -> Result<Connection, ConnError> {
        let tcp = deadline(timeouts.connect, "connecting", async {
            TcpStream::connect(addr)
                .await
                .map_err(|e| ConnError::Connect(e.to_string()))
        })
        .await?;
        Self::over(tcp, host, addr, helo, tls, timeouts).await
    }

    /// As [`Connection::open`], over a TCP connection made by the caller (from a source
    /// address of its choice, say).
    pub async fn over(
        tcp: TcpStream,
        host: &str,
        addr: SocketAddr,
        helo: &str,
        tls: Option<&Arc<ClientConfig>>,
        timeouts: Timeouts,
    ) -> Result<Connection, ConnError> {
        let _ = tcp.set_nodelay(true);
        let mut c = Connection {
            stream: Stream::Plain(tcp),
            buf: vec![0u8; 8192],
            start: 0,
            end: 0,
            caps: Caps::default(),
            remote: format!("{host}[{}]", addr.ip()),
            timeouts,
            wrap: Some(crate::smtp::data::MAX_TEXT_LINE),
        };
        let greeting = c.read_reply(timeouts.command).await?;
        if greeting.code != 220 {
            return Err(ConnError::Refused(greeting));
        }
        c.ehlo(helo).await?;
        if c.caps.starttls
            && let Some(cfg) = tls
        {
            c.write(b"STARTTLS\r\n").await?;
            let r = c.read_reply(timeouts.command).await?;
            if r.code == 220 {
                if c.start != c.end {
                    return Err(ConnError::Protocol(
                        "server sent data after its STARTTLS reply".into(),
                    ));
                }
                let Stream::Plain(tcp) = c.stream else {
                    return Err(ConnError::Protocol("STARTTLS on a TLS connection".into()));
                };
                let name = server_name(host).or_else(|| server_name(&addr.ip().to_string()));
                let Some(name) = name else {
                    return Err(ConnError::Protocol(format!(
                        "{host} is not usable as a TLS server name"
                    )));
                };
                let connector = futures_rustls::TlsConnector::from(cfg.clone());
                let tls_stream = deadline(timeouts.command, "in the TLS handshake", async {
                    connector
                        .connect(name, tcp)
                        .await
                        .map_err(|e| ConnError::Tls(e.to_string()))
                })
                .await?;
                c.stream = Stream::Client(Box::new(tls_stream));
                c.caps = Caps::default();
                c.ehlo(helo).await?;
            }
        }
        debug!(remote = %c.remote, tls = c.stream.is_tls(), "connected for delivery");
        Ok(c)
    }

    pub fn is_tls(&self) -> bool {
        self.stream.is_tls()
    }

    /// Wraps content lines longer than `limit` octets (`None`: never).
    pub fn set_line_limit(&mut self, limit: Option<usize>) {
        self.wrap = limit;
    }

    async fn ehlo(&mut self, helo: &str) -> Result<(), ConnError> {
        self.write(format!("EHLO {helo}\r\n").as_bytes()).await?;
        let mut lines = Vec::new();
        let r = self
            .read_reply_lines(self.timeouts.command, Some(&mut lines))
            .await?;
        if r.code == 250 {
            self.caps = parse_caps(&lines);
            return Ok(());
        }
        if r.code >= 500 {
            self.write(format!("HELO {helo}\r\n").as_bytes()).await?;
            let r = self.read_reply(self.timeouts.command).await?;
            if r.code == 250 {
                self.caps = Caps::default();
                return Ok(());
            }
            return Err(ConnError::Refused(r));
        }
        Err(ConnError::Refused(r))
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), ConnError> {
        let timeout = self.timeouts.command;
        let stream = &mut self.stream;
        deadline(timeout, "writing", async {
            stream.write_all(bytes).await.map_err(io_err)?;
            stream.flush().await.map_err(io_err)
        })
        .await
    }

    /// Reads one (possibly multi-line) reply.
    async fn read_reply(&mut self, timeout: Duration) -> Result<Reply, ConnError> {
        self.read_reply_lines(timeout, None).await
    }

    /// Reads one reply; with `lines`, also each line's text after the code, one by one
    /// (EHLO keywords are only ever at the start of a line after the first).
    async fn read_reply_lines(
        &mut self,
        timeout: Duration,
        mut lines: Option<&mut Vec<String>>,
    ) -> Result<Reply, ConnError> {
        let mut text = String::new();
        let mut code = 0u16;
        for n in 0.. {
            if n >= MAX_REPLY_LINES {
                return Err(ConnError::Protocol("reply has too many lines".into()));
            }
            let line = self.read_line(timeout).await?;
            let more = reply_line(n, &line, &mut code, &mut text)?;
            if let Some(lines) = lines.as_deref_mut() {
                lines.push(line.get(4..).unwrap_or("").to_string());
            }
            if !more {
                break;
            }
        }
        Ok(Reply {
            code,
            text: text.trim_end().to_string(),
        })
    }

    async fn read_line(&mut self, timeout: Duration) -> Result<String, ConnError> {
        loop {
            if let Some(i) = memchr::memchr(b'\n', &self.buf[self.start..self.end]) {
                let line = &self.buf[self.start..self.start + i];
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                let s = String::from_utf8_lossy(line).into_owned();
                self.start += i + 1;
                return Ok(s);
            }
            if self.end - self.start > MAX_REPLY_LINE {
                return Err(ConnError::Protocol("reply line too long".into()));
            }
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            let (stream, buf, end) = (&mut self.stream, &mut self.buf, self.end);
            let n = deadline(timeout, "waiting for a reply", async {
                stream.read(&mut buf[end..]).await.map_err(io_err)
            })
            .await?;
            if n == 0 {
                return Err(ConnError::Io("connection closed by the server".into()));
            }
            self.end += n;
        }
    }

    /// Runs one mail transaction. Connection-level failures come back as `Err`; the
    /// connection must then be dropped.
    pub async fn send(
        &mut self,
        from: &str,
        rcpts: &[&str],
        content: &Content,
        eight_bit: bool,
        smtputf8: bool,
    ) -> Result<TxReplies, ConnError> {
        if let Some(max) = self.caps.size
            && max > 0
            && content.len() > max
        {
            let r = Reply::local(
                552,
                &format!(
                    "5.3.4 message of {} octets exceeds the remote limit of {max}",
                    content.len()
                ),
            );
            return Ok(TxReplies {
                mail: r,
                rcpts: Vec::new(),
                data: None,
                content_sent: None,
            });
        }
        if let Some(refusal) = self
            .unsendable(from, rcpts, content, eight_bit, smtputf8)
            .await?
        {
            return Ok(TxReplies {
                mail: refusal,
                rcpts: Vec::new(),
                data: None,
                content_sent: None,
            });
        }
        let mut mail = format!("MAIL FROM:<{from}>");
        if self.caps.size.is_some() {
            mail.push_str(&format!(" SIZE={}", content.len()));
        }
        if eight_bit && self.caps.eight_bit {
            mail.push_str(" BODY=8BITMIME");
        }
        if smtputf8 && self.caps.smtputf8 {
            mail.push_str(" SMTPUTF8");
        }
        mail.push_str("\r\n");
        let cmd = self.timeouts.command;
        let mut replies = TxReplies {
            mail: Reply::local(0, ""),
            rcpts: Vec::with_capacity(rcpts.len()),
            data: None,
            content_sent: None,
        };
        let data_reply;
        if self.caps.pipelining {
            let mut batch = mail.into_bytes();
            for r in rcpts {
                batch.extend_from_slice(format!("RCPT TO:<{r}>\r\n").as_bytes());
            }
            batch.extend_from_slice(b"DATA\r\n");
            self.write(&batch).await?;
            replies.mail = self.read_reply(cmd).await?;
            for _ in rcpts {
                replies.rcpts.push(self.read_reply(cmd).await?);
            }
            data_reply = self.read_reply(cmd).await?;
            if !replies.mail.is_positive() {
                replies.rcpts.clear();
            }
        } else {
            self.write(mail.as_bytes()).await?;
            replies.mail = self.read_reply(cmd).await?;
            if !replies.mail.is_positive() {
                self.reset().await?;
                return Ok(replies);
            }
            for r in rcpts {
                self.write(format!("RCPT TO:<{r}>\r\n").as_bytes()).await?;
                replies.rcpts.push(self.read_reply(cmd).await?);
            }
            if !replies.rcpts.iter().any(Reply::is_positive) {
                self.reset().await?;
                return Ok(replies);
            }
            self.write(b"DATA\r\n").await?;
            data_reply = self.read_reply(cmd).await?;
        }
        let accepted = replies.mail.is_positive() && replies.rcpts.iter().any(Reply::is_positive);
        if data_reply.code != 354 {
            if accepted {
                replies.data = Some(data_reply);
            }
            self.reset().await?;
            return Ok(replies);
        }
        if !accepted {
            // RFC 2920 §3.1: a 354 after no accepted recipient: end the empty message.
            self.write(b".\r\n").await?;
            let _ = self.read_reply(cmd).await?;
            self.reset().await?;
            return Ok(replies);
        }
        let timeout = self.timeouts.data;
        let wrap = self.wrap;
        let stream = &mut self.stream;
        deadline(timeout, "sending content", async {
            send_content(stream, content, wrap).await?;
            stream.flush().await.map_err(io_err)
        })
        .await?;
        replies.content_sent = Some(std::time::Instant::now());
        replies.data = Some(self.read_reply(self.timeouts.data).await?);
        Ok(replies)
    }

    /// Why this message cannot go to this server as it is, if it cannot: 8-bit content
    /// to a server without 8BITMIME (RFC 6152 §3: bounce with 5.6.3), or a message that
    /// needs SMTPUTF8 to a server without it (RFC 6531 §3.2: 5.6.7). A message that was
    /// only declared so, but whose octets (and, for SMTPUTF8, whose envelope and header)
    /// are ASCII, goes without the parameter: that loses nothing.
    async fn unsendable(
        &self,
        from: &str,
        rcpts: &[&str],
        content: &Content,
        eight_bit: bool,
        smtputf8: bool,
    ) -> Result<Option<Reply>, ConnError> {
        if smtputf8 && !self.caps.smtputf8 {
            let envelope_ascii = from.is_ascii() && rcpts.iter().all(|r| r.is_ascii());
            let header = content
                .prefix(HEADER_MAX)
                .await
                .map_err(|e| ConnError::Io(format!("spool read failed: {e}")))?;
            let end = memchr::memmem::find(&header, b"\r\n\r\n").unwrap_or(header.len());
            if !envelope_ascii || !header[..end].is_ascii() {
                return Ok(Some(Reply::local(
                    553,
                    "5.6.7 the message needs SMTPUTF8 and the next hop does not support it",
                )));
            }
        }
        if (eight_bit || smtputf8) && !self.caps.eight_bit && !seven_bit(content).await? {
            return Ok(Some(Reply::local(
                554,
                "5.6.3 the message has 8-bit content and the next hop does not support 8BITMIME",
            )));
        }
        Ok(None)
    }

    async fn reset(&mut self) -> Result<(), ConnError> {
        self.write(b"RSET\r\n").await?;
        let r = self.read_reply(self.timeouts.command).await?;
        if r.code != 250 {
            return Err(ConnError::Refused(r));
        }
        Ok(())
    }

    /// Says goodbye; errors do not matter any more.
    pub async fn quit(mut self) {
        if self.write(b"QUIT\r\n").await.is_ok() {
            let _ = self.read_reply(Duration::from_secs(5)).await;
        }
        let _ = self.stream.close().await;
    }
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(80) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// The extensions of an EHLO reply, from its lines after the code: the first line is the
/// server's name and greeting, every later line one keyword and its parameters (RFC 5321
/// §4.1.1.1). A keyword in the greeting text is not an extension.
pub fn parse_caps(lines: &[String]) -> Caps {
    let mut caps = Caps::default();
    for line in lines.iter().skip(1) {
        let mut tokens = line.split_ascii_whitespace();
        let Some(keyword) = tokens.next() else {
            continue;
        };
        match keyword.to_ascii_uppercase().as_str() {
            "PIPELINING" => caps.pipelining = true,
            "STARTTLS" => caps.starttls = true,
            "8BITMIME" => caps.eight_bit = true,
            "SMTPUTF8" => caps.smtputf8 = true,
            "SIZE" => {
                caps.size = Some(
                    tokens
                        .next()
                        .and_then(|n| n.parse::<u64>().ok())
                        .unwrap_or(0),
                );
            }
            _ => {}
        }
    }
    caps
}

/// Takes line `n` (from 0) of a reply, without its CRLF, into the reply's `code` and
/// `text` (lines joined with a space). True when more lines follow (`NNN-`).
pub fn reply_line(
    n: usize,
    line: &str,
    code: &mut u16,
    text: &mut String,
) -> Result<bool, ConnError> {
    let digits = line.as_bytes().get(..3);
    let Some(digits) = digits.filter(|d| d.iter().all(u8::is_ascii_digit)) else {
        return Err(ConnError::Protocol(format!(
            "malformed reply line {:?}",
            truncate(line)
        )));
    };
    let this_code = digits
        .iter()
        .fold(0u16, |c, d| c * 10 + u16::from(d - b'0'));
    if n == 0 {
        *code = this_code;
        text.push_str(line);
    } else {
        if this_code != *code {
            return Err(ConnError::Protocol(
                "reply lines disagree on the code".into(),
            ));
        }
        text.push(' ');
        text.push_str(line.get(4..).unwrap_or(""));
    }
    match line.as_bytes().get(3) {
        None | Some(b' ') => Ok(false),
        Some(b'-') => Ok(true),
        Some(_) => Err(ConnError::Protocol(format!(
            "malformed reply line {:?}",
            truncate(line)
        ))),
    }
}

/// A spooled message's content, [`PIECE`] octets at a time.
struct Pieces<'a> {
    spool: &'a crate::queue::Spool,
    location: crate::queue::Location,
    at: u64,
}

impl<'a> Pieces<'a> {
    fn new(spool: &'a crate::queue::Spool, location: crate::queue::Location) -> Self {
        Pieces {
            spool,
            location,
            at: 0,
        }
    }

    async fn next(&mut self) -> Result<Option<Vec<u8>>, ConnError> {
        if self.at >= self.location.len {
            return Ok(None);
        }
        let piece = self
            .spool
            .read_range(self.location, self.at, PIECE)
            .await
            .map_err(|e| ConnError::Io(format!("spool read failed: {e}")))?;
        self.at += piece.len() as u64;
        Ok(Some(piece))
    }
}

/// Whether every octet of the content is 7-bit.
async fn seven_bit(content: &Content) -> Result<bool, ConnError> {
    match content {
        Content::Memory(c) => Ok(c.parts().all(<[u8]>::is_ascii)),
        Content::Spool { spool, location } => {
            let mut pieces = Pieces::new(spool, *location);
            while let Some(piece) = pieces.next().await? {
                if !piece.is_ascii() {
                    return Ok(false);
                }
            }
            Ok(true)
        }
    }
}

/// Writes content framed for DATA. A message in memory goes out in one write; one in
/// the spool is read, framed and written a piece at a time, so it is never in memory
/// whole.
async fn send_content(
    stream: &mut Stream,
    content: &Content,
    wrap: Option<usize>,
) -> Result<(), ConnError> {
    let mut framer = Framer::new(wrap);
    let mut out = Vec::new();
    match content {
        Content::Memory(c) => {
            for part in c.parts() {
                framer.push(part, &mut out);
            }
        }
        Content::Spool { spool, location } => {
            let mut pieces = Pieces::new(spool, *location);
            while let Some(piece) = pieces.next().await? {
                framer.push(&piece, &mut out);
                drop(piece);
                stream.write_all(&out).await.map_err(io_err)?;
                out.clear();
            }
        }
    }
    framer.finish(&mut out);
    stream.write_all(&out).await.map_err(io_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn capabilities() {
        let c = parse_caps(&lines(&[
            "mx.test Hello x",
            "PIPELINING",
            "SIZE 1000",
            "8BITMIME",
            "STARTTLS",
            "ENHANCEDSTATUSCODES",
        ]));
        assert!(c.pipelining && c.eight_bit && c.starttls && !c.smtputf8);
        assert_eq!(c.size, Some(1000));
        assert_eq!(parse_caps(&lines(&["mx.test", "SIZE"])).size, Some(0));
    }

    #[test]
    fn keywords_in_the_greeting_are_not_extensions() {
        let c = parse_caps(&lines(&[
            "mx.test says hello; no PIPELINING STARTTLS 8BITMIME SMTPUTF8 SIZE 10 here",
            "HELP",
        ]));
        assert!(!c.pipelining && !c.starttls && !c.eight_bit && !c.smtputf8);
        assert_eq!(c.size, None);
        // A keyword's parameters are not keywords either.
        let c = parse_caps(&lines(&["mx.test", "AUTH PIPELINING STARTTLS"]));
        assert!(!c.pipelining && !c.starttls);
    }
}
