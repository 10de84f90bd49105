//! The server side of an SMTP session as a sans-IO state machine.
//!
//! Bytes go in through [`Session::feed`]; replies accumulate in an output buffer the
//! driver writes out; decisions that need the outside world (spooling a message, a TLS
//! handshake, closing) come out as [`Event`]s. There are no sockets, clocks or threads
//! here. Command lines are parsed in place in the caller's buffer; the output buffer and
//! the per-session strings are reused, so a command line costs no allocation.

use std::fmt::Write as _;

use super::command::{self, Body, Command, MailParams, SyntaxError};
use super::data::{ChunkChecker, ContentError, DataScanner};

/// Longest command line, CRLF included (RFC 5321 §4.5.3.1.4).
pub const MAX_COMMAND_LINE: usize = 512;
/// MAIL and RCPT may be longer by what their ESMTP parameters add (RFC 1870 §3 and the
/// like); this is the bound for them.
pub const MAX_PARAM_LINE: usize = 1024;
/// The most a DATA transaction reserves for its body from `SIZE=` before content
/// arrives: what a session keeps in memory at most (a larger message is streamed), so a
/// false `SIZE=` costs no more than a true one, and a true one needs no regrowth.
const INITIAL_BODY_RESERVE: u64 = crate::memory::IN_MEMORY_CONTENT as u64;

/// What the session needs from policy while reading the envelope.
pub trait EnvelopePolicy {
    /// Decides one recipient (a full `local@domain`) for a sender (empty: null sender).
    fn check_rcpt(&self, sender: &str, rcpt: &str) -> RcptVerdict;

    /// Whether a new transaction may start now; `Some(reply)` refuses MAIL with that
    /// full reply line (e.g. `452 4.3.1 …` when the core's memory budget is spent, or
    /// `550 5.7.1 …` for a client on a DNS block list). A `421` reply also closes the
    /// session.
    fn check_mail(&self) -> Option<&str> {
        None
    }

    /// The filtering policy of mail to `rcpt`, as a number: recipients with different
    /// ones are not accepted in one transaction.
    fn filter_class(&self, _rcpt: &str) -> u64 {
        0
    }

    /// The session refused MAIL (`rcpt` empty) or RCPT with `reply` because of policy,
    /// limits or the server's condition (not a syntax or sequence error): for tracking.
    fn refused(&self, _helo: &str, _sender: &str, _rcpt: &str, _reply: &str) {}
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RcptVerdict {
    Accept,
    /// Accepted, and the sender is approved for this recipient: later checks are skipped.
    Approved,
    /// Not a managed domain: `550 5.7.1`.
    RelayDenied,
    /// The domain's directory has no such address: `550 5.1.1`.
    UnknownUser,
    /// The sender is blocked for this recipient: `550 5.7.1`.
    SenderBlocked,
}

/// Fixed settings of a session.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub hostname: String,
    pub max_message_size: u64,
    pub max_recipients: usize,
    /// Errors (4xx/5xx answers to the client's mistakes) before `421` and close.
    pub max_errors: u32,
    /// STARTTLS is offered (a certificate is configured).
    pub starttls: bool,
    /// Longest text line accepted in message content, without CRLF.
    pub max_line_length: usize,
}

/// A complete message, handed to the driver to be spooled.
#[derive(Debug, Default)]
pub struct Transaction {
    /// Reverse path; empty for the null sender.
    pub mail_from: String,
    pub rcpts: Vec<String>,
    pub body: Vec<u8>,
    pub eight_bit: bool,
    pub smtputf8: bool,
    /// Every accepted recipient has the sender on its approved list.
    pub approved: bool,
    /// The filtering policy every recipient shares ([`EnvelopePolicy::filter_class`]).
    pub filter_class: u64,
}

/// Something the driver must do before the session can go on.
#[derive(Debug)]
pub enum Event {
    /// Spool this message durably, then call [`Session::spooled`] or
    /// [`Session::spool_failed`]. No input is read meanwhile.
    Message(Transaction),
    /// The `220` for STARTTLS is in the output. Write it, throw away every input octet
    /// after the consumed ones, run the handshake, then call [`Session::tls_started`].
    StartTls,
    /// Write the output and close the connection.
    Close,
}

/// Refusals in this session, by reason, for the metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SessionStats {
    pub relay_denied: u32,
    pub unknown_user: u32,
    pub sender_blocked: u32,
    pub message_size: u32,
    pub bare_line_end: u32,
    pub line_too_long: u32,
    /// Recipients deferred because their filtering policy differs from the first's.
    pub policy_split: u32,
    /// Recipients accepted.
    pub recipients: u32,
    /// Replies that counted against the error limit (syntax and sequence errors,
    /// refused commands).
    pub errors: u32,
}

/// What [`Session::feed`] did.
#[derive(Debug)]
pub struct Progress {
    pub consumed: usize,
    pub event: Option<Event>,
}

/// Which timeout applies while waiting for input (RFC 5321 §4.5.3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    Command,
    Data,
}

#[derive(Debug)]
enum State {
    /// Before EHLO/HELO.
    Fresh,
    /// Greeted, no transaction.
    Ready,
    /// MAIL accepted, collecting RCPTs.
    Envelope,
    /// Reading DATA content.
    Data(DataScanner),
    /// Reading a BDAT chunk of `remaining` octets; `refuse` is the answer when the chunk
    /// is read but not taken.
    Chunk {
        remaining: u64,
        last: bool,
        refuse: Option<&'static str>,
        in_envelope: bool,
    },
    /// Waiting for the driver's spool result.
    Spooling,
    /// Waiting for the driver's TLS handshake.
    Handshake,
    /// Skipping the rest of an over-long command line.
    Discard,
    Closed,
}

pub struct Session {
    cfg: SessionConfig,
    state: State,
    out: Vec<u8>,
    helo: String,
    esmtp: bool,
    tls: bool,
    errors: u32,
    tx: Transaction,
    /// BDAT checker for the transaction in progress, if BDAT was used.
    chunks: Option<ChunkChecker>,
    /// The transaction went bad mid-BDAT; chunks are read and refused until RSET/MAIL.
    bdat_failed: bool,
    /// Size announced with MAIL SIZE=, or 0.
    declared_size: u64,
    bytes_received: u64,
    stats: SessionStats,
}

impl Session {
    /// Starts a session; the `220` greeting is already in the output.
    pub fn new(cfg: SessionConfig) -> Self {
        let mut s = Session {
            cfg,
            state: State::Fresh,
            out: Vec::with_capacity(512),
            helo: String::new(),
            esmtp: false,
            tls: false,
            errors: 0,
            tx: Transaction::default(),
            chunks: None,
            bdat_failed: false,
            declared_size: 0,
            bytes_received: 0,
            stats: SessionStats::default(),
        };
        let _ = write!(
            Reply(&mut s.out),
            "220 {} ESMTP Bulwark\r\n",
            s.cfg.hostname
        );
        s
    }

    /// Replies waiting to be written.
    pub fn output(&self) -> &[u8] {
        &self.out
    }

    /// The driver wrote the output.
    pub fn clear_output(&mut self) {
        self.out.clear();
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// The client's EHLO/HELO name, empty before it greeted.
    pub fn helo(&self) -> &str {
        &self.helo
    }

    pub fn is_esmtp(&self) -> bool {
        self.esmtp
    }

    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Octets of message content received in this session.
    pub fn bytes_received(&self) -> u64 {
        self.bytes_received
    }

    /// Takes new limits (from a newer policy); call only between transactions.
    pub fn set_limits(&mut self, max_message_size: u64, max_recipients: usize) {
        self.cfg.max_message_size = max_message_size;
        self.cfg.max_recipients = max_recipients;
    }

    /// A transaction is under way (MAIL accepted, not yet finished or reset).
    pub fn in_transaction(&self) -> bool {
        matches!(
            self.state,
            State::Envelope | State::Data(_) | State::Chunk { .. } | State::Spooling
        )
    }

    pub fn stats(&self) -> SessionStats {
        self.stats
    }

    /// The transaction under way: envelope, and the content received and not yet taken.
    /// The size the client declared with `SIZE=` for the transaction (0: none).
    pub fn declared_size(&self) -> u64 {
        self.declared_size
    }

    pub fn transaction(&self) -> &Transaction {
        &self.tx
    }

    /// Takes the content received so far and not yet taken, leaving `replacement` (an
    /// empty buffer) in its place: a driver streams a large message to disk this way
    /// while it arrives. The size limit still counts what was taken.
    pub fn take_body(&mut self, replacement: Vec<u8>) -> Vec<u8> {
        std::mem::replace(&mut self.tx.body, replacement)
    }

    /// Octets of memory held for the transaction's content.
    pub fn body_capacity(&self) -> usize {
        self.tx.body.capacity()
    }

    /// Content of the current transaction is being received and may still be
    /// accepted: DATA is being read, or BDAT chunks are under way without a failure. When
    /// this turns false without an [`Event::Message`], the content was refused or the
    /// transaction reset, and whatever a driver streamed of it must be thrown away.
    pub fn content_in_progress(&self) -> bool {
        match &self.state {
            State::Data(scanner) => scanner.error().is_none(),
            State::Chunk { refuse, .. } => {
                refuse.is_none()
                    && self.chunks.is_some()
                    && !self.bdat_failed
                    && self.chunks.as_ref().and_then(ChunkChecker::error).is_none()
            }
            State::Envelope => self.chunks.is_some() && !self.bdat_failed,
            _ => false,
        }
    }

    pub fn waiting(&self) -> Waiting {
        match self.state {
            State::Data(_) | State::Chunk { .. } => Waiting::Data,
            _ => Waiting::Command,
        }
    }

    fn reply(&mut self, text: &str) {
        self.out.extend_from_slice(text.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    /// A reply that counts against the error limit. Returns true when the limit closed
    /// the session.
    fn error_reply(&mut self, text: &str) -> bool {
        self.reply(text);
        self.errors += 1;
        self.stats.errors += 1;
        if self.errors >= self.cfg.max_errors {
            self.reply("421 4.7.0 Too many errors, closing connection");
            self.state = State::Closed;
            return true;
        }
        false
    }

    fn reset_transaction(&mut self) {
        self.tx.mail_from.clear();
        self.tx.rcpts.clear();
        self.tx.body.clear();
        self.tx.eight_bit = false;
        self.tx.smtputf8 = false;
        self.tx.approved = false;
        self.tx.filter_class = 0;
        self.chunks = None;
        self.bdat_failed = false;
        self.declared_size = 0;
    }

    /// Reads as much of `input` as the current state allows.
    pub fn feed(&mut self, input: &[u8], policy: &impl EnvelopePolicy) -> Progress {
        let mut consumed = 0;
        loop {
            let rest = &input[consumed..];
            match &mut self.state {
                State::Closed | State::Spooling | State::Handshake => {
                    return Progress {
                        consumed,
                        event: None,
                    };
                }
                State::Data(scanner) => {
                    let r = scanner.scan(rest, &mut self.tx.body);
                    consumed += r.consumed;
                    self.bytes_received += r.consumed as u64;
                    if !r.done {
                        return Progress {
                            consumed,
                            event: None,
                        };
                    }
                    let error = scanner.error();
                    if let Some(e) = self.finish_content(error) {
                        return Progress {
                            consumed,
                            event: Some(e),
                        };
                    }
                }
                State::Chunk {
                    remaining,
                    last,
                    refuse,
                    in_envelope,
                } => {
                    let n = (*remaining).min(rest.len() as u64) as usize;
                    let (last, refuse, in_envelope) = (*last, *refuse, *in_envelope);
                    let accept = refuse.is_none();
                    *remaining -= n as u64;
                    let done = *remaining == 0;
                    if accept && let Some(checker) = self.chunks.as_mut() {
                        checker.feed(&rest[..n], &mut self.tx.body);
                    }
                    consumed += n;
                    self.bytes_received += n as u64;
                    if !done {
                        return Progress {
                            consumed,
                            event: None,
                        };
                    }
                    if let Some(e) = self.finish_chunk(last, refuse, in_envelope) {
                        return Progress {
                            consumed,
                            event: Some(e),
                        };
                    }
                }
                State::Discard => match find_crlf(rest) {
                    // Keep a final CR: its LF may come with the next read.
                    None if rest.last() == Some(&b'\r') => {
                        return Progress {
                            consumed: input.len() - 1,
                            event: None,
                        };
                    }
                    None => {
                        return Progress {
                            consumed: input.len(),
                            event: None,
                        };
                    }
                    Some(i) => {
                        consumed += i + 1;
                        self.state = if self.helo.is_empty() {
                            State::Fresh
                        } else {
                            State::Ready
                        };
                        self.reset_transaction();
                        self.stats.line_too_long += 1;
                        if self.error_reply("500 5.5.2 Line too long") {
                            return Progress {
                                consumed,
                                event: Some(Event::Close),
                            };
                        }
                    }
                },
                State::Fresh | State::Ready | State::Envelope => {
                    let Some(lf) = find_crlf(rest) else {
                        if rest.len() > MAX_PARAM_LINE {
                            self.state = State::Discard;
                            continue;
                        }
                        return Progress {
                            consumed,
                            event: None,
                        };
                    };
                    let line = &rest[..lf + 1];
                    consumed += lf + 1;
                    if let Some(e) = self.command_line(line, policy) {
                        return Progress {
                            consumed,
                            event: Some(e),
                        };
                    }
                }
            }
        }
    }

    /// Handles one complete line ending in LF.
    fn command_line(&mut self, line: &[u8], policy: &impl EnvelopePolicy) -> Option<Event> {
        let text = &line[..line.len() - 2];
        if memchr::memchr2(b'\r', b'\n', text).is_some() {
            self.stats.bare_line_end += 1;
            return self.fail("500 5.5.2 Bare CR or LF in command line refused");
        }
        let is_bdat = text.len() >= 4 && text[..4].eq_ignore_ascii_case(b"BDAT");
        let cmd = match command::parse(text) {
            Ok(c) => c,
            Err(e) => {
                let msg = match e {
                    SyntaxError::Unknown => "500 5.5.2 Command not recognized",
                    SyntaxError::Encoding => "500 5.5.2 Command is not valid UTF-8",
                    SyntaxError::Parameter => "555 5.5.4 Unsupported parameter",
                    SyntaxError::NeedsUtf8 => "553 5.6.7 Non-ASCII address requires SMTPUTF8",
                    SyntaxError::Arguments(why) => why,
                };
                let code = match e {
                    SyntaxError::Arguments(_) => "501 5.5.4 ",
                    _ => "",
                };
                // A BDAT we cannot parse leaves us unable to find where its chunk ends:
                // closing is the only way not to read chunk content as commands.
                if is_bdat {
                    self.out.extend_from_slice(code.as_bytes());
                    self.reply(msg);
                    self.state = State::Closed;
                    return Some(Event::Close);
                }
                self.out.extend_from_slice(code.as_bytes());
                self.errors += 1;
                self.stats.errors += 1;
                self.reply(msg);
                if self.errors >= self.cfg.max_errors {
                    self.reply("421 4.7.0 Too many errors, closing connection");
                    self.state = State::Closed;
                    return Some(Event::Close);
                }
                return None;
            }
        };
        let limit = match cmd {
            Command::Mail { .. } | Command::Rcpt { .. } => MAX_PARAM_LINE,
            _ => MAX_COMMAND_LINE,
        };
        if line.len() > limit {
            self.stats.line_too_long += 1;
            return self.fail("500 5.5.2 Line too long");
        }
        self.command(cmd, policy)
    }

    /// An error reply; closes when the error limit is reached.
    fn fail(&mut self, text: &str) -> Option<Event> {
        if self.error_reply(text) {
            Some(Event::Close)
        } else {
            None
        }
    }

    fn command(&mut self, cmd: Command<'_>, policy: &impl EnvelopePolicy) -> Option<Event> {
        match cmd {
            Command::Ehlo(name) => {
                self.greet(name, true);
                None
            }
            Command::Helo(name) => {
                self.greet(name, false);
                None
            }
            Command::Mail { path, params } => self.mail(path, params, policy),
            Command::Rcpt { path } => self.rcpt(path, policy),
            Command::Data => self.data(),
            Command::Bdat { size, last } => self.bdat(size, last),
            Command::Rset => {
                self.reset_transaction();
                if !matches!(self.state, State::Fresh) {
                    self.state = State::Ready;
                }
                self.reply("250 2.0.0 OK");
                None
            }
            Command::Noop => {
                self.reply("250 2.0.0 OK");
                None
            }
            Command::Quit => {
                self.reply("221 2.0.0 Bye");
                self.state = State::Closed;
                Some(Event::Close)
            }
            Command::Vrfy => {
                self.reply(
                    "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery",
                );
                None
            }
            Command::Expn => self.fail("502 5.5.1 EXPN not available"),
            Command::Help => {
                self.reply("214-2.0.0 Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS");
                self.reply("214 2.0.0 See RFC 5321");
                None
            }
            Command::StartTls => {
                if !self.cfg.starttls {
                    return self.fail("502 5.5.1 STARTTLS not available");
                }
                if self.tls {
                    return self.fail("503 5.5.1 TLS already active");
                }
                self.reply("220 2.0.0 Ready to start TLS");
                self.reset_transaction();
                self.state = State::Handshake;
                Some(Event::StartTls)
            }
        }
    }

    fn greet(&mut self, name: &str, esmtp: bool) {
        self.reset_transaction();
        self.helo.clear();
        self.helo.push_str(name);
        self.esmtp = esmtp;
        self.state = State::Ready;
        let mut r = Reply(&mut self.out);
        if !esmtp {
            let _ = write!(r, "250 {}\r\n", self.cfg.hostname);
            return;
        }
        let _ = write!(r, "250-{} Hello {}\r\n", self.cfg.hostname, name);
        let _ = write!(
            r,
            "250-PIPELINING\r\n250-SIZE {}\r\n",
            self.cfg.max_message_size
        );
        r.0.extend_from_slice(b"250-8BITMIME\r\n250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n");
        if self.cfg.starttls && !self.tls {
            r.0.extend_from_slice(b"250-STARTTLS\r\n");
        }
        r.0.extend_from_slice(b"250 CHUNKING\r\n");
    }

    fn mail(
        &mut self,
        path: &str,
        params: MailParams,
        policy: &impl EnvelopePolicy,
    ) -> Option<Event> {
        match self.state {
            State::Fresh => return self.fail("503 5.5.1 Send EHLO or HELO first"),
            State::Envelope => return self.fail("503 5.5.1 Nested MAIL command"),
            _ => {}
        }
        if let Some(refusal) = policy.check_mail() {
            // The server's condition, not the client's mistake: no error count.
            policy.refused(&self.helo, path, "", refusal);
            self.reply(refusal);
            if refusal.starts_with("421") {
                self.state = State::Closed;
                return Some(Event::Close);
            }
            return None;
        }
        if let Some(size) = params.size
            && size > self.cfg.max_message_size
        {
            self.stats.message_size += 1;
            let reply = "552 5.3.4 Message size exceeds fixed maximum message size";
            policy.refused(&self.helo, path, "", reply);
            return self.fail(reply);
        }
        self.reset_transaction();
        self.tx.mail_from.push_str(path);
        self.tx.eight_bit = params.body == Body::EightBitMime;
        self.tx.smtputf8 = params.smtputf8;
        self.declared_size = params.size.unwrap_or(0);
        self.state = State::Envelope;
        self.reply("250 2.1.0 Sender OK");
        None
    }

    fn rcpt(&mut self, path: &str, policy: &impl EnvelopePolicy) -> Option<Event> {
        if !matches!(self.state, State::Envelope) {
            return self.fail("503 5.5.1 Need MAIL before RCPT");
        }
        if self.chunks.is_some() {
            return self.fail("503 5.5.1 RCPT not allowed after BDAT");
        }
        if !path.is_ascii() && !self.tx.smtputf8 {
            return self.fail("553 5.6.7 Non-ASCII address requires SMTPUTF8");
        }
        if self.tx.rcpts.len() >= self.cfg.max_recipients {
            // Not a client error in the sense of the error limit (RFC 5321 §4.5.3.1.10).
            self.reply("452 4.5.3 Too many recipients");
            return None;
        }
        let mut addr = String::with_capacity(path.len() + self.cfg.hostname.len() + 1);
        addr.push_str(path);
        if path.eq_ignore_ascii_case("postmaster") {
            addr.push('@');
            addr.push_str(&self.cfg.hostname);
        }
        let verdict = policy.check_rcpt(&self.tx.mail_from, &addr);
        match verdict {
            RcptVerdict::Accept | RcptVerdict::Approved => {
                let class = policy.filter_class(&addr);
                if self.tx.rcpts.is_empty() {
                    self.tx.filter_class = class;
                } else if class != self.tx.filter_class {
                    // One filtering decision per message: the client sends this one in
                    // another transaction (not a client error).
                    self.stats.policy_split += 1;
                    self.reply(
                        "452 4.5.3 Recipient has another filtering policy; send it in a separate transaction",
                    );
                    return None;
                }
                let approved = verdict == RcptVerdict::Approved;
                self.tx.approved = if self.tx.rcpts.is_empty() {
                    approved
                } else {
                    self.tx.approved && approved
                };
                if !self.tx.rcpts.iter().any(|r| r.eq_ignore_ascii_case(&addr)) {
                    self.tx.rcpts.push(addr);
                }
                self.stats.recipients += 1;
                self.reply("250 2.1.5 Recipient OK");
                None
            }
            RcptVerdict::RelayDenied => {
                self.stats.relay_denied += 1;
                let reply = "550 5.7.1 Relaying denied: recipient domain is not served here";
                policy.refused(&self.helo, &self.tx.mail_from, &addr, reply);
                self.fail(reply)
            }
            RcptVerdict::UnknownUser => {
                self.stats.unknown_user += 1;
                let reply = "550 5.1.1 Recipient address rejected: user unknown";
                policy.refused(&self.helo, &self.tx.mail_from, &addr, reply);
                self.fail(reply)
            }
            RcptVerdict::SenderBlocked => {
                self.stats.sender_blocked += 1;
                let reply = "550 5.7.1 Sender address rejected: blocked by policy";
                policy.refused(&self.helo, &self.tx.mail_from, &addr, reply);
                self.fail(reply)
            }
        }
    }

    fn data(&mut self) -> Option<Event> {
        if self.chunks.is_some() {
            return self.fail("503 5.5.1 DATA not allowed after BDAT");
        }
        match self.state {
            State::Envelope if !self.tx.rcpts.is_empty() => {}
            State::Envelope => return self.fail("554 5.5.1 No valid recipients"),
            _ => return self.fail("503 5.5.1 Need MAIL and RCPT before DATA"),
        }
        self.reply("354 End data with <CR><LF>.<CR><LF>");
        let limit = self.cfg.max_message_size as usize;
        // SIZE= is a claim: reserve by it only up to what a session may hold in memory;
        // a larger message grows the buffer as it really arrives and is streamed.
        self.tx.body.reserve(
            self.declared_size
                .min(self.cfg.max_message_size)
                .min(INITIAL_BODY_RESERVE) as usize,
        );
        self.state = State::Data(DataScanner::new(limit).max_line(self.cfg.max_line_length));
        None
    }

    fn bdat(&mut self, size: u64, last: bool) -> Option<Event> {
        // The chunk is always read, whatever the answer, so the session stays in step.
        let refuse = match self.state {
            State::Envelope if self.bdat_failed => Some("503 5.5.1 Transaction failed, send RSET"),
            State::Envelope if self.tx.rcpts.is_empty() => Some("554 5.5.1 No valid recipients"),
            State::Envelope => None,
            _ => Some("503 5.5.1 Need MAIL and RCPT before BDAT"),
        };
        if refuse.is_none() && self.chunks.is_none() {
            self.chunks = Some(
                ChunkChecker::new(self.cfg.max_message_size as usize)
                    .max_line(self.cfg.max_line_length),
            );
        }
        let in_envelope = matches!(self.state, State::Envelope);
        self.state = State::Chunk {
            remaining: size,
            last,
            refuse,
            in_envelope,
        };
        None
    }

    fn finish_chunk(
        &mut self,
        last: bool,
        refuse: Option<&'static str>,
        in_envelope: bool,
    ) -> Option<Event> {
        if let Some(reason) = refuse {
            self.state = match (in_envelope, self.helo.is_empty()) {
                (true, _) => State::Envelope,
                (false, true) => State::Fresh,
                (false, false) => State::Ready,
            };
            return self.fail(reason);
        }
        let error = self.chunks.as_ref().and_then(ChunkChecker::error);
        if !last {
            self.state = State::Envelope;
            if let Some(e) = error {
                self.bdat_failed = true;
                self.tx.body.clear();
                self.stats.count(e);
                return self.fail(content_reply(e));
            }
            let stored = self.chunks.as_ref().map_or(0, ChunkChecker::stored);
            let mut r = Reply(&mut self.out);
            let _ = write!(r, "250 2.0.0 {stored} octets received\r\n");
            return None;
        }
        if let Some(c) = self.chunks.as_mut() {
            c.finish();
        }
        let error = self.chunks.as_ref().and_then(ChunkChecker::error);
        self.finish_content(error)
    }

    /// End of content (DATA's terminator or BDAT LAST).
    fn finish_content(&mut self, error: Option<ContentError>) -> Option<Event> {
        if let Some(e) = error {
            self.stats.count(e);
            self.reset_transaction();
            self.state = State::Ready;
            return self.fail(content_reply(e));
        }
        self.state = State::Spooling;
        let tx = std::mem::take(&mut self.tx);
        self.chunks = None;
        Some(Event::Message(tx))
    }

    /// The message is durable; `queue_id` goes in the reply.
    pub fn spooled(&mut self, queue_id: &str) {
        let _ = write!(
            Reply(&mut self.out),
            "250 2.0.0 Ok: queued as {queue_id}\r\n"
        );
        self.reset_transaction();
        self.state = State::Ready;
    }

    /// Spooling failed; `reply` is the full reply line (e.g. `452 4.3.1 ...`).
    pub fn spool_failed(&mut self, reply: &str) {
        self.reply(reply);
        self.reset_transaction();
        self.state = State::Ready;
    }

    /// The TLS handshake succeeded: everything is forgotten, the client must greet again.
    pub fn tls_started(&mut self) {
        self.tls = true;
        self.helo.clear();
        self.esmtp = false;
        self.reset_transaction();
        self.state = State::Fresh;
    }

    /// The client was silent for too long.
    pub fn timed_out(&mut self) {
        self.reply("421 4.4.2 Timeout waiting for client input, closing connection");
        self.state = State::Closed;
    }

    /// The session reached its maximum length.
    pub fn session_expired(&mut self) {
        self.reply("421 4.4.2 Session time limit exceeded, closing connection");
        self.state = State::Closed;
    }

    /// The client's address was blocked for trying too many unknown recipients.
    pub fn harvest_blocked(&mut self) {
        self.reply("421 4.7.0 Too many unknown recipients from your address; closing connection");
        self.state = State::Closed;
    }

    /// Refuses the client with `reply` (a `421`) and closes the session.
    pub fn close_with(&mut self, reply: &str) {
        self.reply(reply);
        self.state = State::Closed;
    }

    /// The server is going away.
    pub fn shutting_down(&mut self) {
        self.reply("421 4.3.2 Service shutting down, closing connection");
        self.state = State::Closed;
    }
}

/// Offset of the LF of the first CRLF in `buf`. A bare LF does not end a command line:
/// it stays inside the line, which is then refused as a whole.
fn find_crlf(buf: &[u8]) -> Option<usize> {
    memchr::memchr_iter(b'\n', buf).find(|&i| i > 0 && buf[i - 1] == b'\r')
}

impl SessionStats {
    fn count(&mut self, e: ContentError) {
        match e {
            ContentError::BareCrLf => self.bare_line_end += 1,
            ContentError::LineTooLong => self.line_too_long += 1,
            ContentError::TooBig => self.message_size += 1,
        }
    }
}

fn content_reply(e: ContentError) -> &'static str {
    match e {
        ContentError::BareCrLf => "550 5.6.0 Message contains a bare CR or LF; refused",
        ContentError::LineTooLong => "550 5.6.0 Message has a line longer than allowed; refused",
        ContentError::TooBig => "552 5.3.4 Message size exceeds fixed maximum message size",
    }
}

/// `fmt::Write` into a byte buffer, so replies are formatted without a `String`.
struct Reply<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Reply<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
