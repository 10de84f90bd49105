//! Drives one SMTP session: socket reads into the sans-IO [`Session`], its replies back
//! out, its events to the spool, TLS and the delivery queue. While the client is silent
//! the task is parked on the socket and costs memory only.
//!
//! A message's content is kept in memory up to [`STREAM_PIECE`] octets; past that it is
//! written to the spool piece by piece as it arrives ([`StreamedMessage`]), so a session
//! holds at most about one piece and one read buffer whatever the message size. The
//! `250` still comes only after the whole message is durable.

use bulwark_inspect::native::AuthResult;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use tracing::{debug, info, warn};

use bulwark_policy::{IpVerdict, Snapshot};

use crate::metrics::{Reject, ReputationReason as R};
use crate::net::stream::Stream;
use crate::policy::SnapshotPolicy;
use crate::queue::record::{FLAG_8BIT, FLAG_SMTPUTF8};
use crate::queue::spool::StreamedMessage;
use crate::queue::{SpoolError, unix_now};
use crate::reputation::guard::{Admission, BlockReason, Counted, Group, Guard, Limit};
use crate::runtime::Core;
use crate::smtp::{EnvelopePolicy, Event, RcptVerdict, Session, Transaction, Waiting};
use crate::util::rfc5322_date;

/// Read buffer while reading commands; enough for any command line.
const COMMAND_BUFFER: usize = 4096;
/// Read buffer while reading message content.
const DATA_BUFFER: usize = 64 * 1024;
/// Content a session keeps in memory; a message that grows past it is streamed to the
/// spool in pieces of about this size.
const STREAM_PIECE: usize = crate::memory::IN_MEMORY_CONTENT;

const NO_SPACE: &str = "452 4.3.1 Insufficient system storage";
const SPOOL_ERROR: &str = "451 4.3.0 Local error in processing; try again later";

/// The envelope policy of the snapshot in force, and the core's own conditions.
struct SessionPolicy<'a> {
    snapshot: SnapshotPolicy<'a>,
    core: &'a Core,
    /// The DNS lists' refusal of this client, if they refused it.
    reputation: Option<&'a str>,
    /// A throttle that refuses the next transaction (messages per session, recipients
    /// per hour), and whether it did.
    throttle: Option<Limit>,
    throttled: std::cell::Cell<bool>,
    /// The client's address, for tracking.
    ip: &'a str,
}

impl EnvelopePolicy for SessionPolicy<'_> {
    fn check_rcpt(&self, sender: &str, rcpt: &str) -> RcptVerdict {
        self.snapshot.check_rcpt(sender, rcpt)
    }

    fn filter_class(&self, rcpt: &str) -> u64 {
        // Without inspection every recipient's mail is treated alike.
        if self.core.inspector().is_none() {
            return 0;
        }
        crate::filtering::class_of(self.snapshot.0.policy(), rcpt)
    }

    fn refused(&self, helo: &str, sender: &str, rcpt: &str, reply: &str) {
        let tracker = self.core.deliverer.tracker();
        tracker.record(crate::tracking::Event {
            ev: if rcpt.is_empty() {
                "mail_refused"
            } else {
                "rcpt_refused"
            },
            ip: self.ip,
            helo,
            from: Some(sender),
            rcpt,
            reply,
            ..Default::default()
        });
    }

    fn check_mail(&self) -> Option<&str> {
        if let Some(r) = self.reputation {
            return Some(r);
        }
        if let Some(l) = self.throttle {
            self.throttled.set(true);
            return Some(l.reply());
        }
        if self.core.memory.is_spent() {
            self.core.shard().reject(Reject::MemoryBudget);
            return Some("452 4.3.1 Insufficient system resources, try again later");
        }
        None
    }
}

/// A message being streamed to the spool, with the queue id and arrival time it was
/// given when streaming began.
struct Streaming {
    id: String,
    arrival: u64,
    /// Inspection (of the first piece) refused the message: the reply for its end.
    refused: Option<String>,
    /// Inspection chose to quarantine it: copied to the store once complete.
    quarantine: Option<Box<crate::quarantine::Meta>>,
    /// What the first piece's inspection decided, and what the full scan at the end
    /// needs again.
    first_action: bulwark_inspect::inspector::Action,
    approved: bool,
    /// The policy the transaction started with (thresholds, actions, rules).
    snapshot: Rc<Snapshot>,
    helo: String,
    auth: Option<crate::auth::Outcome>,
    /// `None` once writing failed: the rest of the content is read and dropped, and the
    /// end of the message gets this reply.
    message: Option<StreamedMessage>,
    failure: &'static str,
    /// What inspection decided so far, for tracking.
    decided: Decided,
}

enum ReadOutcome {
    Data(usize),
    Eof,
    Timeout,
    Error(std::io::Error),
}

/// Counts the session while it lives.
struct Active<'a>(&'a Core);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.sessions.set(self.0.sessions.get() - 1);
        self.0.shard().sessions_active.add(-1);
    }
}

pub async fn run(core: Rc<Core>, tcp: TcpStream) {
    let peer = match tcp.peer_addr() {
        Ok(p) => p,
        Err(_) => return,
    };
    let _ = tcp.set_nodelay(true);
    let shard = core.shard();
    shard.connections.inc();
    core.sessions.set(core.sessions.get() + 1);
    shard.sessions_active.add(1);
    let _active = Active(&core);
    let mut stream = Stream::Plain(tcp);
    if core.sessions.get() > core.max_sessions {
        shard.reject(Reject::TooManyConnections);
        let reply = b"421 4.7.0 Too many connections, try again later\r\n";
        track_refused(&core, peer, "capacity", reply);
        let _ = stream.write_all(reply).await;
        let _ = stream.close().await;
        return;
    }
    let ip_listed = core.policy.current().policy().ips.verdict(peer.ip());
    if ip_listed.is_none() && core.pregreet.is_offender(peer.ip()) {
        shard.reputation(crate::metrics::ReputationReason::EarlyTalker);
        let reply = b"554 5.7.1 Connection refused: you talked before the greeting\r\n";
        track_refused(&core, peer, "early_talker", reply);
        let _ = stream.write_all(reply).await;
        let _ = stream.close().await;
        return;
    }
    if ip_listed == Some(IpVerdict::Allowed) {
        shard.reputation(crate::metrics::ReputationReason::ApprovedIp);
    }
    if ip_listed == Some(IpVerdict::Blocked) {
        shard.reject(Reject::IpBlocked);
        shard.reputation(crate::metrics::ReputationReason::BlockedIp);
        info!(%peer, "connection refused: address blocked by policy");
        let reply = b"554 5.7.1 Connection refused: your address is blocked by policy\r\n";
        track_refused(&core, peer, "blocked_ip", reply);
        let _ = stream.write_all(reply).await;
        let _ = stream.close().await;
        return;
    }
    let approved = ip_listed == Some(IpVerdict::Allowed);
    let client = core.guard.client(peer.ip());
    // Dynamic blocks (harvest, throttles); approved addresses override them.
    if !approved && let Some(b) = core.guard.blocked(client) {
        shard.reputation(R::DynamicBlock);
        let (stage, reply): (&str, &[u8]) = match b.reason {
            BlockReason::Harvest => {
                shard.reject(Reject::HarvestRefused);
                (
                    "harvest_block",
                    b"421 4.7.0 Too many unknown recipients from your address; try again later\r\n",
                )
            }
            BlockReason::Throttle(_) => (
                "throttle_block",
                b"421 4.7.0 Your address is blocked for a while: it kept exceeding its limits\r\n",
            ),
        };
        track_refused(&core, peer, stage, reply);
        let _ = stream.write_all(reply).await;
        let _ = stream.close().await;
        return;
    }
    // Throttles: neither approved addresses nor the gateway's own host.
    let mut throttled = !approved && !Guard::exempt(peer.ip());
    if throttled && let Some(l) = core.guard.throttled_at_connect(client) {
        shard.reputation(R::throttle(l));
        core.guard
            .count(client, Group::Unknown, Counted::Refused(l), 1);
        track_refused(&core, peer, "throttle", l.reply().as_bytes());
        let _ = stream.write_all(l.reply().as_bytes()).await;
        let _ = stream.write_all(b"\r\n").await;
        let _ = stream.close().await;
        return;
    }
    debug!(%peer, "connection");
    // The DNS lists are asked at once; their answer is awaited before the client's first
    // command is read (it overlaps the greeting's round trip) and refuses its MAIL.
    let lists = if ip_listed.is_none() {
        core.dns_lists()
    } else {
        None
    };
    let mut reputation_check = match (lists.clone(), ip_listed) {
        (Some(lists), None) => {
            let ip = peer.ip();
            let by = Instant::now() + lists.settings.timeout;
            Some(glommio::spawn_local(async move { lists.check(ip, by).await }).detach())
        }
        _ => None,
    };
    let mut reputation: Option<String> = None;
    // The connection is counted at once at the client's owner core, which answers whether
    // a limit of the unknown group refuses it (awaited with the first command when the
    // owner is another core); when the DNS lists make it suspect, its limits are asked
    // again.
    let mut group = Group::Unknown;
    let mut ticket = None;
    let mut admission: Option<Admission> = None;
    if throttled {
        let (t, a) = core.guard.open(client, group);
        ticket = Some(t);
        match a {
            Admission::Ready(Some(l)) => {
                shard.reputation(R::throttle(l));
                track_refused(&core, peer, "throttle", l.reply().as_bytes());
                let _ = stream.write_all(l.reply().as_bytes()).await;
                let _ = stream.write_all(b"\r\n").await;
                let _ = stream.close().await;
                return;
            }
            Admission::Ready(None) => {}
            pending => admission = Some(pending),
        }
    }
    // Pregreet: an unknown client waits for its greeting, and must not talk meanwhile.
    if ip_listed.is_none() && core.pregreet.must_wait(peer.ip()) {
        let mut probe = [0u8; 512];
        match read(&mut stream, &mut probe, core.pregreet.settings.wait).await {
            ReadOutcome::Timeout => {
                core.pregreet.passed(peer.ip());
                shard.reputation(R::PregreetPassed);
            }
            ReadOutcome::Data(_) => {
                core.pregreet.offended(peer.ip());
                shard.reputation(R::Pregreet);
                info!(%peer, "connection refused: the client talked before the greeting");
                let reply = b"554 5.5.1 Protocol error: you talked before the greeting\r\n";
                track_refused(&core, peer, "pregreet", reply);
                let _ = stream.write_all(reply).await;
                let _ = stream.close().await;
                return;
            }
            ReadOutcome::Eof | ReadOutcome::Error(_) => return,
        }
    }
    let mut seen = crate::smtp::server::SessionStats::default();
    let mut messages = 0u32;
    let mut group_limits = if throttled {
        core.guard.limits(group)
    } else {
        bulwark_policy::GroupLimits::default()
    };
    let mut session = Session::new(core.session_cfg.clone());
    let peer_ip = peer.ip().to_string();
    let deadline = Instant::now() + core.smtp.session_time;
    let mut buf = vec![0u8; COMMAND_BUFFER];
    let (mut start, mut end) = (0usize, 0usize);
    let mut snapshot = core.policy.current();
    let mut streaming: Option<Streaming> = None;
    // Sender authentication's envelope checks, started when MAIL FROM is accepted.
    let mut pending_auth: Option<crate::auth::Pending> = None;
    let memory = core.memory.charge();
    'session: loop {
        loop {
            // Each transaction decides with the policy in force when it starts.
            let mut throttle = None;
            if !session.in_transaction() {
                core.policy.refresh();
                snapshot = core.policy.current();
                let limits = &snapshot.policy().limits;
                session.set_limits(
                    limits.message_size.to_native(),
                    limits.recipients.to_native() as usize,
                );
                if throttled {
                    let per_session = group_limits.messages_per_session;
                    throttle = if per_session != 0 && messages >= per_session {
                        Some(Limit::Messages)
                    } else {
                        core.guard.throttled_at_mail(client)
                    };
                }
            }
            let policy = SessionPolicy {
                snapshot: SnapshotPolicy(&snapshot),
                core: &core,
                reputation: reputation.as_deref(),
                throttle,
                throttled: std::cell::Cell::new(false),
                ip: &peer_ip,
            };
            let progress = session.feed(&buf[start..end], &policy);
            if policy.throttled.get()
                && let Some(l) = throttle
            {
                shard.reputation(R::throttle(l));
                core.guard.count(client, group, Counted::Refused(l), 1);
            }
            start += progress.consumed;
            match progress.event {
                None => break,
                Some(Event::Message(tx)) => {
                    let t0 = Instant::now();
                    let pending = pending_auth.take();
                    let envelope = core
                        .deliverer
                        .tracker()
                        .enabled()
                        .then(|| (tx.mail_from.clone(), tx.rcpts.clone()));
                    let mut decided = Decided::default();
                    let result = match streaming.take() {
                        Some(st) => {
                            let held = (&memory, buf.capacity());
                            accept_streamed(&core, peer, st, tx, held, &mut decided).await
                        }
                        None => {
                            let tx_ctx = (&session, &stream, peer);
                            accept_message(&core, tx_ctx, tx, pending, &snapshot, &mut decided)
                                .await
                        }
                    };
                    if let Some((from, rcpts)) = &envelope {
                        let tls = stream.is_tls();
                        let who = (from.as_str(), rcpts.as_slice());
                        track_message(&core, peer, session.helo(), tls, who, &decided, &result);
                    }
                    match result {
                        Ok(id) => {
                            messages += 1;
                            session.spooled(&id)
                        }
                        Err(reply) => session.spool_failed(&reply),
                    }
                    shard.accept_latency.observe_duration(t0.elapsed());
                }
                Some(Event::StartTls) => {
                    if !flush(&mut stream, &mut session).await {
                        break 'session;
                    }
                    // Anything pipelined after STARTTLS was sent in the clear: drop it.
                    start = end;
                    let Some(acceptor) = core.tls.clone() else {
                        break 'session;
                    };
                    let Stream::Plain(tcp) = stream else {
                        break 'session;
                    };
                    let handshake = futures_lite::future::or(
                        async { Some(acceptor.accept(tcp).await) },
                        async {
                            glommio::timer::sleep(core.smtp.command_timeout).await;
                            None
                        },
                    )
                    .await;
                    match handshake {
                        Some(Ok(tls)) => {
                            shard.tls_handshakes_ok.inc();
                            stream = Stream::Server(Box::new(tls));
                            session.tls_started();
                        }
                        Some(Err(e)) => {
                            shard.tls_handshakes_failed.inc();
                            debug!(%peer, "TLS handshake failed: {e}");
                            return;
                        }
                        None => {
                            shard.tls_handshakes_failed.inc();
                            return;
                        }
                    }
                }
                Some(Event::Close) => {
                    let _ = flush(&mut stream, &mut session).await;
                    break 'session;
                }
            }
        }
        if let Some(auth) = &core.auth
            && session.in_transaction()
        {
            let tx = session.transaction();
            let started = pending_auth
                .as_ref()
                .is_some_and(|p| p.is_for(peer.ip(), session.helo(), &tx.mail_from));
            if !started {
                pending_auth = Some(auth.envelope(crate::auth::Identity {
                    ip: peer.ip(),
                    helo: session.helo().to_string(),
                    mail_from: tx.mail_from.clone(),
                }));
            }
        }
        // A large message goes to the spool while it arrives; a refused or abandoned one
        // is thrown away.
        if session.content_in_progress() {
            if session.transaction().body.len() >= STREAM_PIECE {
                stream_piece(
                    &core,
                    &mut session,
                    &stream,
                    peer,
                    &mut streaming,
                    &mut pending_auth,
                    &snapshot,
                )
                .await;
            }
        } else if let Some(st) = streaming.take()
            && let Some(m) = st.message
        {
            m.abort().await;
        }
        memory.set(session.body_capacity() + buf.capacity());
        // Report unknown and other recipients and protocol errors to the client's owner
        // (harvest protection, throttles), then obey a block or throttle it imposed.
        let now_stats = session.stats();
        if now_stats != seen && !approved {
            let failed = |s: &crate::smtp::server::SessionStats| {
                s.relay_denied + s.unknown_user + s.sender_blocked
            };
            let unknown = now_stats.unknown_user - seen.unknown_user;
            core.guard.count(client, group, Counted::Unknown, unknown);
            if throttled {
                let g = group;
                let c = client;
                core.guard.count(
                    c,
                    g,
                    Counted::Recipients,
                    now_stats.recipients - seen.recipients,
                );
                core.guard
                    .count(c, g, Counted::Failed, failed(&now_stats) - failed(&seen));
                core.guard
                    .count(c, g, Counted::Errors, now_stats.errors - seen.errors);
            }
            seen = now_stats;
            if let Some(b) = core.guard.blocked(client) {
                if b.reason == BlockReason::Harvest {
                    shard.reject(Reject::HarvestClosed);
                    session.harvest_blocked();
                    track_refused(&core, peer, "harvest_block", b"421 4.7.0 Too many unknown recipients from your address; closing connection");
                } else {
                    let reply = "421 4.7.0 Your address is blocked for a while: it kept exceeding its limits";
                    session.close_with(reply);
                    track_refused(&core, peer, "throttle_block", reply.as_bytes());
                }
            } else if throttled && let Some(l) = core.guard.throttled_at_connect(client) {
                shard.reputation(R::throttle(l));
                session.close_with(l.reply());
                track_refused(&core, peer, "throttle", l.reply().as_bytes());
            }
        }
        if !flush(&mut stream, &mut session).await || session.is_closed() {
            break;
        }
        // Keep the unconsumed tail at the front; size the buffer for the phase.
        if start == end {
            start = 0;
            end = 0;
        } else if start > 0 {
            buf.copy_within(start..end, 0);
            end -= start;
            start = 0;
        }
        let want = match session.waiting() {
            Waiting::Data => DATA_BUFFER,
            Waiting::Command => COMMAND_BUFFER,
        };
        if buf.len() != want && end <= want {
            buf.resize(want, 0);
            buf.shrink_to(want);
        }
        let now = Instant::now();
        if now >= deadline {
            session.session_expired();
            let _ = flush(&mut stream, &mut session).await;
            break;
        }
        let phase_timeout = match session.waiting() {
            Waiting::Command => core.smtp.command_timeout,
            Waiting::Data => core.smtp.data_timeout,
        };
        let timeout = phase_timeout.min(deadline - now);
        match read(&mut stream, &mut buf[end..], timeout).await {
            ReadOutcome::Data(n) => {
                end += n;
                if let Some(check) = reputation_check.take() {
                    let (refusal, tier) =
                        reputation_verdict(&core, lists.as_deref(), peer, check.await);
                    reputation = refusal;
                    match tier {
                        // An allow list vouched for it, or the lists refuse its mail:
                        // no throttles.
                        None if throttled => {
                            throttled = false;
                            admission = None;
                            ticket = None;
                        }
                        Some(Group::Suspect) if throttled => {
                            shard.reputation(R::Suspect);
                            group = Group::Suspect;
                            group_limits = core.guard.limits(group);
                            let first = admission.take();
                            let again = ticket.as_ref().map(|t| core.guard.recheck(t, group));
                            let mut refused = None;
                            for a in [first, again].into_iter().flatten() {
                                if refused.is_none() {
                                    refused = a.verdict().await;
                                }
                            }
                            admission = refused.map(|l| Admission::Ready(Some(l)));
                        }
                        _ => {}
                    }
                }
                if let Some(a) = admission.take()
                    && let Some(l) = a.verdict().await
                {
                    shard.reputation(R::throttle(l));
                    track_refused(&core, peer, "throttle", l.reply().as_bytes());
                    let _ = stream.write_all(l.reply().as_bytes()).await;
                    let _ = stream.write_all(b"\r\n").await;
                    break;
                }
            }
            ReadOutcome::Eof => break,
            ReadOutcome::Error(e) => {
                debug!(%peer, "read error: {e}");
                break;
            }
            ReadOutcome::Timeout => {
                if Instant::now() >= deadline {
                    session.session_expired();
                } else {
                    session.timed_out();
                }
                let _ = flush(&mut stream, &mut session).await;
                break;
            }
        }
    }
    drop(ticket);
    let stats = session.stats();
    for (n, r) in [
        (stats.relay_denied, Reject::RelayDenied),
        (stats.unknown_user, Reject::UnknownUser),
        (stats.sender_blocked, Reject::SenderBlocked),
        (stats.message_size, Reject::MessageSize),
        (stats.bare_line_end, Reject::BareLineEnd),
        (stats.line_too_long, Reject::LineTooLong),
        (stats.policy_split, Reject::PolicySplit),
    ] {
        shard.rejections[r as usize].add(n as u64);
    }
    shard.bytes_received.add(session.bytes_received());
    if let Some(st) = streaming.take()
        && let Some(m) = st.message
    {
        m.abort().await;
    }
    let _ = stream.close().await;
}

/// Moves the content received so far to the spool, starting the streamed message at
/// the first piece (its `Received:` header first). A spool failure is kept for the end
/// of the message; until then the content is read and dropped.
async fn stream_piece(
    core: &Rc<Core>,
    session: &mut Session,
    stream: &Stream,
    peer: SocketAddr,
    streaming: &mut Option<Streaming>,
    pending_auth: &mut Option<crate::auth::Pending>,
    snapshot: &Rc<Snapshot>,
) {
    let mut piece = session.take_body(Vec::with_capacity(STREAM_PIECE + DATA_BUFFER));
    if streaming.is_none() {
        let id = core.ids.next();
        let arrival = unix_now();
        let flags = flags_of(session.transaction());
        // Too large to hand over whole: the envelope's checks only (no DKIM/DMARC).
        let auth = authenticate(
            core,
            session,
            peer,
            session.transaction(),
            pending_auth.take(),
            None,
        )
        .await;
        let mut decided = Decided {
            qid: id.clone(),
            ..Default::default()
        };
        let inspected = inspect(
            core,
            session,
            peer,
            (&id, arrival),
            session.transaction(),
            &piece,
            auth.as_ref(),
            snapshot,
            None,
            &mut decided,
        );
        let (refused, stamp, quarantine, first_action) = match inspected {
            Inspected::Refuse(reply) => (
                Some(reply),
                Vec::new(),
                None,
                bulwark_inspect::inspector::Action::Reject,
            ),
            Inspected::Accept {
                stamp,
                drop,
                quarantine,
                action,
                ..
            } => {
                if !drop.is_empty() {
                    piece = without(&piece, &drop);
                }
                (None, stamp, quarantine, action)
            }
        };
        let tx = session.transaction();
        let mut st = Streaming {
            id,
            arrival,
            refused,
            quarantine,
            first_action,
            approved: tx.approved,
            snapshot: snapshot.clone(),
            helo: session.helo().to_string(),
            auth,
            message: None,
            failure: SPOOL_ERROR,
            decided,
        };
        match core
            .spool
            .stream_message(&st.id, arrival, flags, &tx.mail_from, &tx.rcpts)
            .await
        {
            Ok(mut m) => {
                let mut head = Vec::with_capacity(512 + stamp.len());
                received_header(&mut head, core, session, stream, peer, &st.id, tx, arrival);
                head.extend_from_slice(&stamp);
                match m.write(head).await {
                    Ok(()) => st.message = Some(m),
                    Err(e) => {
                        st.failure = spool_reply(&e);
                        m.abort().await;
                    }
                }
            }
            Err(e) => {
                warn!(%peer, "cannot start a streamed message: {e}");
                st.failure = spool_reply(&e);
            }
        }
        *streaming = Some(st);
    }
    let Some(st) = streaming.as_mut() else { return };
    let Some(m) = st.message.as_mut() else { return };
    if let Err(e) = m.write(piece).await {
        warn!(%peer, id = %st.id, "streaming a message to the spool failed: {e}");
        st.failure = spool_reply(&e);
        if let Some(m) = st.message.take() {
            m.abort().await;
        }
    }
}

/// Completes a streamed message: the rest of the content, the commit, the queue. Once the
/// rest is written, the session's memory charge drops to `held.1` (its read buffer): it
/// holds no content while its whole scan waits for its turn and for memory.
async fn accept_streamed(
    core: &Rc<Core>,
    peer: SocketAddr,
    mut st: Streaming,
    tx: Transaction,
    held: (&crate::memory::Charge, usize),
    decided: &mut Decided,
) -> Result<String, String> {
    *decided = std::mem::take(&mut st.decided);
    if let Some(reply) = st.refused.take() {
        if let Some(m) = st.message.take() {
            m.abort().await;
        }
        return Err(reply);
    }
    let Some(mut m) = st.message.take() else {
        core.shard().reject(Reject::SpoolFailed);
        return Err(st.failure.to_string());
    };
    let flags = flags_of(&tx);
    let written = async {
        m.write(tx.body).await?;
        let size = m.written();
        m.commit().await.map(|loc| (loc, size))
    };
    let written = written.await;
    held.0.set(held.1);
    match written {
        Ok((mut location, mut size)) => {
            decided.size = size;
            let shard = core.shard();
            shard.messages_received.inc();
            shard.streamed.inc();
            if st.quarantine.is_none() {
                let envelope = (tx.mail_from.as_str(), tx.rcpts.as_slice(), flags);
                match full_scan(core, peer, &st, envelope, (location, size), decided).await {
                    FullScan::Same => {}
                    FullScan::Replace(content) => {
                        // Spooled again whole (our header fields are in it already),
                        // durable before the reply; the streamed copy is finished.
                        match core
                            .spool
                            .append_message(
                                &st.id,
                                st.arrival,
                                flags,
                                &tx.mail_from,
                                &tx.rcpts,
                                &[],
                                &content,
                            )
                            .await
                        {
                            Ok(replaced) => {
                                core.spool.mark_done(location, &st.id);
                                location = replaced;
                                size = content.len() as u64;
                                decided.size = size;
                                info!(id = %st.id, %peer, "attachments replaced by notices");
                            }
                            Err(e) => {
                                core.spool.mark_done(location, &st.id);
                                warn!(%peer, id = %st.id, "cannot spool the stripped message: {e}");
                                return Err(spool_reply(&e).to_string());
                            }
                        }
                    }
                    FullScan::Quarantine(meta) => st.quarantine = Some(meta),
                    FullScan::Refuse(reply) => {
                        // Durable already: finished in the spool, never delivered.
                        core.spool.mark_done(location, &st.id);
                        return Err(reply);
                    }
                    FullScan::TimedOut if core.inspect_timeout_tempfail => {
                        core.spool.mark_done(location, &st.id);
                        return Err(format!(
                            "451 4.7.0 Message could not be inspected in time, try again later; reference {}",
                            st.id
                        ));
                    }
                    FullScan::TimedOut => {}
                    FullScan::Unscanned(why) => {
                        core.spool.mark_done(location, &st.id);
                        warn!(id = %st.id, %peer, "message deferred: {why}");
                        return Err(format!(
                            "451 4.7.0 Message could not be scanned for viruses, try again later; reference {}",
                            st.id
                        ));
                    }
                }
            }
            if let Some(mut meta) = st.quarantine.take() {
                // In the spool already: copied to the quarantine, then finished there.
                meta.size = size;
                let stored = core
                    .quarantine
                    .store_from_spool(&mut meta, &core.spool, location)
                    .await;
                core.spool.mark_done(location, &st.id);
                return match stored {
                    Ok(()) => {
                        info!(id = %st.id, %peer, from = %tx.mail_from, rcpts = tx.rcpts.len(), size, "quarantined (streamed)");
                        Ok(st.id)
                    }
                    Err(e) => {
                        warn!(%peer, id = %st.id, "cannot quarantine: {e}");
                        Err(QUARANTINE_FAILED.to_string())
                    }
                };
            }
            info!(id = %st.id, %peer, from = %tx.mail_from, rcpts = tx.rcpts.len(), size, "accepted (streamed)");
            let msg = crate::deliver::Message::new(
                st.id.clone(),
                st.arrival,
                flags,
                tx.mail_from,
                tx.rcpts,
                location,
                None,
            );
            core.deliverer.enqueue(msg);
            Ok(st.id)
        }
        Err(e) => {
            core.shard().reject(Reject::SpoolFailed);
            warn!(%peer, id = %st.id, "message not accepted: {e}");
            Err(spool_reply(&e).to_string())
        }
    }
}

/// What became of a message, for its tracking event: its queue id and size, and what
/// inspection decided (left at "none" / "deliver" when inspection is off).
#[derive(Debug, Clone)]
struct Decided {
    qid: String,
    size: u64,
    verdict: &'static str,
    score: Option<f64>,
    rules: Vec<String>,
    action: &'static str,
    subject: String,
}

impl Default for Decided {
    fn default() -> Decided {
        Decided {
            qid: String::new(),
            size: 0,
            verdict: "none",
            score: None,
            rules: Vec::new(),
            action: "deliver",
            subject: String::new(),
        }
    }
}

impl Decided {
    fn inspected(&mut self, report: &bulwark_inspect::inspector::Report) {
        self.verdict = report.verdict.as_str();
        self.score = Some(report.score);
        self.rules = report.hits.iter().map(|h| h.name.clone()).collect();
        if let Some(r) = &report.policy_rule {
            self.rules.push(r.clone());
        }
        self.action = report.action.as_str();
        self.subject.clone_from(&report.subject);
    }
}

/// Records a message's tracking events: `accepted` (and `quarantined`), or `rejected`
/// with the reply it got.
#[allow(clippy::too_many_arguments)]
fn track_message(
    core: &Core,
    peer: SocketAddr,
    helo: &str,
    tls: bool,
    (from, rcpts): (&str, &[String]),
    decided: &Decided,
    result: &Result<String, String>,
) {
    let tracker = core.deliverer.tracker();
    if !tracker.enabled() {
        return;
    }
    let ip = peer.ip().to_string();
    let mut ev = crate::tracking::Event {
        qid: &decided.qid,
        ip: &ip,
        helo,
        tls: Some(tls),
        from: Some(from),
        rcpts,
        size: Some(decided.size),
        subject: &decided.subject,
        verdict: decided.verdict,
        score: decided.score,
        rules: &decided.rules,
        action: decided.action,
        ..Default::default()
    };
    match result {
        Ok(_) => {
            ev.ev = "accepted";
            tracker.record(ev);
            if decided.action == "quarantine" {
                tracker.record(crate::tracking::Event {
                    ev: "quarantined",
                    qid: &decided.qid,
                    rcpts,
                    verdict: decided.verdict,
                    ..Default::default()
                });
            }
        }
        Err(reply) => {
            ev.ev = "rejected";
            ev.reply = reply.trim_end();
            if reply.starts_with('4') {
                ev.action = "defer";
            } else if ev.action != "reject" {
                ev.action = "reject";
            }
            tracker.record(ev);
        }
    }
}

/// Records a connection refused before the session began (`stage`: the check).
fn track_refused(core: &Core, peer: SocketAddr, stage: &str, reply: &[u8]) {
    let tracker = core.deliverer.tracker();
    if !tracker.enabled() {
        return;
    }
    let ip = peer.ip().to_string();
    let reply = std::str::from_utf8(reply).unwrap_or_default().trim_end();
    tracker.record(crate::tracking::Event {
        ev: "refused",
        ip: &ip,
        stage,
        reply,
        ..Default::default()
    });
}

/// The reply when a message to quarantine cannot be written.
const QUARANTINE_FAILED: &str =
    "451 4.3.0 Message not accepted: local storage error, try again later";

fn spool_reply(e: &SpoolError) -> &'static str {
    if e.is_no_space() {
        NO_SPACE
    } else {
        SPOOL_ERROR
    }
}

fn flags_of(tx: &Transaction) -> u8 {
    (if tx.eight_bit { FLAG_8BIT } else { 0 }) | (if tx.smtputf8 { FLAG_SMTPUTF8 } else { 0 })
}

async fn read(stream: &mut Stream, buf: &mut [u8], timeout: Duration) -> ReadOutcome {
    futures_lite::future::or(
        async {
            match stream.read(buf).await {
                Ok(0) => ReadOutcome::Eof,
                Ok(n) => ReadOutcome::Data(n),
                Err(e) => ReadOutcome::Error(e),
            }
        },
        async {
            glommio::timer::sleep(timeout).await;
            ReadOutcome::Timeout
        },
    )
    .await
}

/// Counts and logs what the DNS lists said: the reply refusing the client's mail, if
/// they refuse it, and the sender group whose throttles apply (none when they refused
/// it or an allow list vouched for it).
fn reputation_verdict(
    core: &Core,
    lists: Option<&crate::reputation::dnsbl::Lists>,
    peer: SocketAddr,
    outcome: Option<crate::reputation::dnsbl::Outcome>,
) -> (Option<String>, Option<Group>) {
    use crate::reputation::dnsbl::{Verdict, ZoneResult};
    let Some(lists) = lists else {
        return (None, Some(Group::Unknown));
    };
    let shard = core.shard();
    let Some(outcome) = outcome else {
        shard.reputation(R::DnsblFailed);
        return (None, Some(Group::Unknown));
    };
    for (i, r) in outcome.results.iter().enumerate() {
        let result = match r {
            ZoneResult::Listed => 0,
            ZoneResult::NotListed => 1,
            ZoneResult::Refused => 2,
            ZoneResult::Failed => 3,
        };
        if let Some(c) = lists
            .slots
            .get(i)
            .copied()
            .flatten()
            .and_then(|slot| shard.dnsbl_results.get(slot))
        {
            c[result].inc();
        }
    }
    match outcome.verdict(&lists.settings, peer.ip()) {
        Verdict::Refuse(reply) => {
            shard.reputation(R::Dnsbl);
            info!(%peer, score = outcome.score, zones = ?outcome.listed, "client refused: DNS block list");
            (Some(reply), None)
        }
        Verdict::Defer(reply) => {
            shard.reputation(R::DnsblDynamic);
            info!(%peer, score = outcome.score, zones = ?outcome.listed, "client deferred: dynamic DNS list");
            (Some(reply), None)
        }
        Verdict::Allow => {
            shard.reputation(R::Dnswl);
            (None, None)
        }
        Verdict::Pass => {
            shard.reputation(R::Pass);
            let group = if outcome.score > 0 {
                Group::Suspect
            } else {
                Group::Unknown
            };
            (None, Some(group))
        }
    }
}

/// Writes pending replies. False when the connection is gone.
async fn flush(stream: &mut Stream, session: &mut Session) -> bool {
    if session.output().is_empty() {
        return true;
    }
    let ok = stream.write_all(session.output()).await.is_ok() && stream.flush().await.is_ok();
    session.clear_output();
    ok
}

/// Spools a complete message and queues it for delivery. The `Err` is the reply.
async fn accept_message(
    core: &Rc<Core>,
    (session, stream, peer): (&Session, &Stream, SocketAddr),
    mut tx: Transaction,
    pending_auth: Option<crate::auth::Pending>,
    snapshot: &Snapshot,
    decided: &mut Decided,
) -> Result<String, String> {
    let id = core.ids.next();
    decided.qid.clone_from(&id);
    decided.size = tx.body.len() as u64;
    let now = unix_now();
    let mut header = Vec::with_capacity(1024);
    received_header(&mut header, core, session, stream, peer, &id, &tx, now);
    let auth = authenticate(core, session, peer, &tx, pending_auth, Some(&tx.body)).await;
    let tempfail = crate::filtering::clamd_tempfail(
        core.antivirus.tempfail,
        snapshot.policy(),
        tx.rcpts.first().map_or("", String::as_str),
    );
    let (scanned, body) =
        crate::antivirus::scan_message(core, std::mem::take(&mut tx.body), tempfail).await;
    tx.body = body;
    let malware = match scanned {
        Ok(m) => m,
        Err(why) => {
            warn!(%id, %peer, "message deferred: {why}");
            return Err(format!(
                "451 4.7.0 Message could not be scanned for viruses, try again later; reference {id}"
            ));
        }
    };
    let inspected = inspect(
        core,
        session,
        peer,
        (&id, now),
        &tx,
        &tx.body,
        auth.as_ref(),
        snapshot,
        Some(&malware),
        decided,
    );
    let quarantine = match inspected {
        Inspected::Refuse(reply) => return Err(reply),
        Inspected::Accept {
            stamp,
            replace,
            drop,
            quarantine,
            ..
        } => {
            header.extend_from_slice(&stamp);
            if let Some(r) = replace {
                tx.body = r;
            }
            if !drop.is_empty() {
                tx.body = without(&tx.body, &drop);
            }
            quarantine
        }
    };
    decided.size = (header.len() + tx.body.len()) as u64;
    if let Some(mut meta) = quarantine {
        meta.size = (header.len() + tx.body.len()) as u64;
        return match core.quarantine.store(&mut meta, &[&header, &tx.body]).await {
            Ok(()) => {
                core.shard().messages_received.inc();
                info!(%id, %peer, from = %tx.mail_from, rcpts = tx.rcpts.len(), size = meta.size, "quarantined");
                Ok(id)
            }
            Err(e) => {
                core.shard().reject(Reject::SpoolFailed);
                warn!(%peer, %id, "cannot quarantine: {e}");
                Err(QUARANTINE_FAILED.to_string())
            }
        };
    }
    let flags = flags_of(&tx);
    match core
        .spool
        .append_message(&id, now, flags, &tx.mail_from, &tx.rcpts, &header, &tx.body)
        .await
    {
        Ok(location) => {
            let size = header.len() + tx.body.len();
            core.shard().messages_received.inc();
            info!(%id, %peer, from = %tx.mail_from, rcpts = tx.rcpts.len(), size, "accepted");
            // The first attempt usually follows at once: keep the content for it when
            // the core can afford it, else delivery reads it back from the spool.
            let cached = core.deliverer.cache_content(header, tx.body);
            let msg = crate::deliver::Message::new(
                id.clone(),
                now,
                flags,
                tx.mail_from,
                tx.rcpts,
                location,
                cached,
            );
            core.deliverer.enqueue(msg);
            Ok(id)
        }
        Err(e) => {
            core.shard().reject(Reject::SpoolFailed);
            warn!(%peer, "message not accepted: {e}");
            Err(spool_reply(&e).to_string())
        }
    }
}

/// What inspection decided: refuse with a reply, or accept with header fields to stamp
/// and ranges of the content (inbound copies of those fields) to drop.
enum Inspected {
    Refuse(String),
    Accept {
        stamp: Vec<u8>,
        /// The content to deliver instead (attachments replaced by notices).
        replace: Option<Vec<u8>>,
        drop: Vec<std::ops::Range<usize>>,
        /// Kept in the quarantine store instead of queued.
        quarantine: Option<Box<crate::quarantine::Meta>>,
        action: bulwark_inspect::inspector::Action,
    },
}

/// Sender authentication for a message (`content`, when it is here whole), within the
/// deadline; counted in the metrics. `None` when it is off or did not finish in time.
async fn authenticate(
    core: &Core,
    session: &Session,
    peer: SocketAddr,
    tx: &Transaction,
    pending: Option<crate::auth::Pending>,
    content: Option<&[u8]>,
) -> Option<crate::auth::Outcome> {
    let auth = core.auth.as_ref()?;
    let who = crate::auth::Identity {
        ip: peer.ip(),
        helo: session.helo().to_string(),
        mail_from: tx.mail_from.clone(),
    };
    let out = auth
        .message(who, pending, content.map(<[u8]>::to_vec))
        .await;
    let shard = core.shard();
    match &out {
        Some(o) => {
            let a = &o.summary;
            let dkim = if !a.dkim_valid.is_empty() {
                AuthResult::Pass
            } else if a.dkim_signed {
                AuthResult::Fail
            } else {
                AuthResult::None
            };
            for (i, r) in [a.spf, dkim, a.dmarc, a.arc, a.iprev]
                .into_iter()
                .enumerate()
            {
                shard.auth_results[i][r as usize].inc();
            }
        }
        None => {
            shard.auth_timeouts.inc();
            warn!(%peer, "sender authentication did not finish in time");
        }
    }
    out
}

/// Inspects `content` (the message as received, or the first piece of a streamed one)
/// on this core, synchronously: scanning is bounded by `[inspection] max_scan_size`.
#[allow(clippy::too_many_arguments)]
fn inspect(
    core: &Core,
    session: &Session,
    peer: SocketAddr,
    (id, arrival): (&str, u64),
    tx: &Transaction,
    content: &[u8],
    auth: Option<&crate::auth::Outcome>,
    snapshot: &Snapshot,
    malware: Option<&crate::antivirus::Scan>,
    decided: &mut Decided,
) -> Inspected {
    use bulwark_inspect::inspector::{self, Action, Envelope, Verdict};
    let hostname = core.session_cfg.hostname.as_str();
    let auth_header = auth.map(|a| a.header.as_str()).unwrap_or_default();
    let unscanned = || Inspected::Accept {
        stamp: auth_header.as_bytes().to_vec(),
        replace: None,
        drop: if auth.is_some() {
            inspector::field_ranges(content, false, hostname)
        } else {
            Vec::new()
        },
        quarantine: None,
        action: Action::Deliver,
    };
    let Some(ci) = core.inspector() else {
        return unscanned();
    };
    let Ok(mut scanner) = ci.scanner.try_borrow_mut() else {
        // Never happens (inspection does not yield); accept untagged rather than fail.
        return unscanned();
    };
    let ins = &ci.inspector;
    // Every recipient shares the first one's filtering policy (see `filtering`).
    let rcpt = tx.rcpts.first().map_or("", String::as_str);
    let verdicts = crate::filtering::verdicts_for(&ins.settings.verdicts, snapshot.policy(), rcpt);
    let env = Envelope {
        client_ip: peer.ip(),
        helo: session.helo(),
        mail_from: &tx.mail_from,
        hostname: &core.session_cfg.hostname,
        queue_id: id,
        arrival,
        auth: auth.map(|a| &a.summary),
        approved: tx.approved,
        verdicts: verdicts.as_ref(),
    };
    let mut report = ins.inspect(&mut scanner, content, &env);
    drop(scanner);
    if let Some(m) = malware {
        ins.apply_malware(
            &mut report,
            m.builtin.as_ref(),
            m.external.as_ref(),
            verdicts.as_ref(),
        );
    } else if session.content_in_progress() && scans_for_viruses(core) {
        // A streamed message: its headers are written now, and it is delivered only
        // once the whole scan at its end found nothing (or it is deferred).
        report.malware.scanned = true;
    }
    // Of a streamed message only the first piece is here: its size is at least that, or
    // what SIZE= declared, and not known to be below anything unless SIZE= says so (the
    // whole scan judges it again by its true size).
    let here = content.len() as u64;
    let size = if session.content_in_progress() {
        let declared = session.declared_size();
        (
            here.max(declared),
            if declared >= here { declared } else { u64::MAX },
        )
    } else {
        (here, here)
    };
    let rule_parts = apply_policy_rules(
        core,
        snapshot,
        (&tx.mail_from, rcpt),
        content,
        size,
        &mut report,
    );
    let shard = core.shard();
    shard.scan_parse.observe_duration(report.parse_time);
    shard.scan_rules.observe_duration(report.rules_time);
    let v = match report.verdict {
        Verdict::Clean => 0,
        Verdict::Spam => 1,
        Verdict::Phishing => 2,
        Verdict::Malformed(_) => 3,
        Verdict::AuthFail => 4,
        Verdict::Virus => 5,
        Verdict::Limit(_) => 6,
    };
    shard.verdicts[v][report.action as usize].inc();
    for h in &report.hits {
        if let Some(c) = ci.hits.counts.get(h.index) {
            c.inc();
        }
    }
    let rules: Vec<&str> = report.hits.iter().map(|h| h.name.as_str()).collect();
    info!(
        %id,
        %peer,
        verdict = report.verdict.as_str(),
        action = report.action.as_str(),
        score = format_args!("{:.2}", report.score),
        rules = %rules.join(","),
        policy_rule = report.policy_rule.as_deref().unwrap_or(""),
        virus = report.malware.virus.as_ref().map_or("", |v| v.0.as_str()),
        virus_in = report.malware.virus.as_ref().map_or("", |v| v.1.as_str()),
        attachment_limit = report.malware.limit.as_deref().unwrap_or(""),
        auth = %auth.map_or_else(String::new, |a| format!(
            "spf={} dkim={} dmarc={}",
            a.summary.spf.as_str(),
            if a.summary.dkim_valid.is_empty() { if a.summary.dkim_signed { "fail" } else { "none" } } else { "pass" },
            a.summary.dmarc.as_str()
        )),
        "inspected"
    );
    // Strip: the offending attachments replaced by notices, or, when they cannot be
    // told apart from the message (its only part, or a virus only clamd saw), held.
    let replace = if report.action == Action::Strip {
        let by_rule = !rule_parts.is_empty();
        let stripped = malware.and_then(|m| m.builtin.as_ref()).and_then(|b| {
            let parts = parts_to_strip(b, rule_parts);
            if parts.is_empty() {
                return None;
            }
            bulwark_inspect::malware::strip(content, b, &parts, &strip_reason(&report, by_rule))
        });
        let nothing_found = !by_rule && !report.classes.virus && !report.classes.limit;
        if stripped.is_none() && !nothing_found {
            report.action = Action::Quarantine;
        }
        stripped
    } else {
        None
    };
    let content = replace.as_deref().unwrap_or(content);
    decided.inspected(&report);
    match report.action {
        Action::Reject => Inspected::Refuse(refusal(&report, id, auth)),
        Action::Tag | Action::Deliver | Action::Strip | Action::Quarantine => {
            let mut stamp = Vec::with_capacity(512 + auth_header.len());
            stamp.extend_from_slice(auth_header.as_bytes());
            ins.stamp(&report, &mut stamp);
            let tag = &verdicts
                .as_ref()
                .unwrap_or(&ins.settings.verdicts)
                .subject_tag;
            let retag = report.action == Action::Tag && !tag.is_empty();
            let drop = inspector::field_ranges(content, retag, hostname);
            if retag {
                stamp.extend_from_slice(b"Subject: ");
                stamp.extend_from_slice(tag.as_bytes());
                stamp.extend_from_slice(inspector::raw_subject(content).unwrap_or_default());
                stamp.extend_from_slice(b"\r\n");
            }
            let quarantine = (report.action == Action::Quarantine).then(|| {
                Box::new(crate::quarantine::Meta {
                    id: id.to_string(),
                    arrival,
                    sender: tx.mail_from.clone(),
                    recipients: tx.rcpts.clone(),
                    client_ip: peer.ip().to_string(),
                    helo: session.helo().to_string(),
                    verdict: report.verdict.as_str().to_string(),
                    score: report.score,
                    rules: report.hits.iter().map(|h| h.name.clone()).collect(),
                    subject: report.subject.clone(),
                    size: 0,
                    flags: flags_of(tx),
                    expires: 0,
                })
            });
            Inspected::Accept {
                stamp,
                replace,
                drop,
                quarantine,
                action: report.action,
            }
        }
    }
}

/// Lets the first policy rule that holds set the message's action (counted, and named in
/// the report for the log and the stamped headers). Gives the parts holding the
/// attachments the rule matched (what `strip` removes).
fn apply_policy_rules(
    core: &Core,
    snapshot: &Snapshot,
    (sender, rcpt): (&str, &str),
    content: &[u8],
    size: (u64, u64),
    report: &mut bulwark_inspect::inspector::Report,
) -> Vec<usize> {
    let policy = snapshot.policy();
    if policy.rules.is_empty() {
        return Vec::new();
    }
    match crate::filtering::first_rule(policy, sender, rcpt, content, size, report) {
        Some(m) => {
            report.action = m.action;
            report.policy_rule = Some(policy.rules[m.index].name.as_str().to_string());
            core.policy_rule_hit(snapshot, m.index);
            m.parts
        }
        None => Vec::new(),
    }
}

/// The parts `strip` removes: those a policy rule matched, else those with a virus or
/// past a limit.
fn parts_to_strip(
    builtin: &bulwark_inspect::malware::Report,
    rule_parts: Vec<usize>,
) -> Vec<usize> {
    if rule_parts.is_empty() {
        bulwark_inspect::malware::offending_parts(builtin)
    } else {
        rule_parts
    }
}

/// A stored message whose `X-Bulwark-Virus: clean` (stamped when it began to stream)
/// now says what the whole scan found.
fn restamp_virus(content: Vec<u8>, report: &bulwark_inspect::inspector::Report) -> Vec<u8> {
    let Some(line) = bulwark_inspect::inspector::virus_header(&report.malware) else {
        return content;
    };
    let head_end = memchr::memmem::find(&content, b"\r\n\r\n").unwrap_or(0);
    let old = b"X-Bulwark-Virus: clean\r\n";
    match memchr::memmem::find(&content[..head_end], old) {
        Some(at) => {
            let mut out = Vec::with_capacity(content.len() + line.len());
            out.extend_from_slice(&content[..at]);
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(&content[at + old.len()..]);
            out
        }
        None => content,
    }
}

/// Why attachments were replaced, for the notice part.
fn strip_reason(report: &bulwark_inspect::inspector::Report, by_rule: bool) -> String {
    match (&report.malware.virus, &report.malware.limit) {
        _ if by_rule => "the policy of this domain removes it".to_string(),
        (Some(v), _) => format!("the virus {} was found in it", reply_safe(&v.0)),
        (None, Some(l)) => format!("it exceeds a limit ({l})"),
        (None, None) => "the policy of this domain removes it".to_string(),
    }
}

/// Whether messages are scanned for viruses (the built-in engine or clamd).
fn scans_for_viruses(core: &Core) -> bool {
    core.clamd.is_some()
        || core
            .inspector()
            .is_some_and(|c| c.inspector.settings.antivirus.is_some())
}

/// A name from a message (a virus name, a file name) as it may appear in a reply:
/// printable ASCII, at most 100 characters.
fn reply_safe(s: &str) -> String {
    s.chars()
        .take(100)
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// The reply refusing a message inspection decided to reject.
fn refusal(
    report: &bulwark_inspect::inspector::Report,
    id: &str,
    auth: Option<&crate::auth::Outcome>,
) -> String {
    use bulwark_inspect::inspector::Verdict;
    if report.policy_rule.is_some() {
        return format!("550 5.7.1 Message refused by policy; reference {id}");
    }
    match report.verdict {
        Verdict::Malformed(limit) => format!(
            "550 5.7.1 Message refused: its structure exceeds a limit ({}); reference {id}",
            limit.as_str()
        ),
        Verdict::Phishing => format!("550 5.7.1 Message refused as phishing; reference {id}"),
        Verdict::Virus => format!(
            "550 5.7.1 Message refused: virus found ({}); reference {id}",
            report
                .malware
                .virus
                .as_ref()
                .map_or_else(String::new, |v| reply_safe(&v.0))
        ),
        Verdict::Limit(label) => format!(
            "550 5.7.1 Message refused by policy: attachment limit {label} exceeded ({}); reference {id}",
            report.malware.limit.as_deref().unwrap_or("")
        ),
        Verdict::AuthFail => format!(
            "550 5.7.1 Message refused: it fails the DMARC policy of {}; reference {id}",
            auth.map_or("its domain", |a| a.summary.dmarc_domain.as_str())
        ),
        _ => format!(
            "550 5.7.1 Message refused as spam (score {:.1}); reference {id}",
            report.score
        ),
    }
}

/// Memory a whole scan holds per octet of content: the content, its decoded parts, the
/// rendered and raw text views, the scanner's subject buffer.
const SCAN_MEMORY_FACTOR: usize = 4;

/// Memory a whole scan of `want` octets is charged: the content, what the rules make of
/// their share of it (as above), and, when viruses are scanned for, its decoded parts
/// (base64 decodes to three quarters of its size). What archives decompress is bounded
/// by `[attachments]` instead.
fn scan_charge(want: u64, max_scan: u64, antivirus: bool) -> usize {
    let want = want as usize;
    let views = want
        .min(max_scan as usize)
        .saturating_mul(SCAN_MEMORY_FACTOR - 1);
    let decoded = if antivirus { want / 4 * 3 } else { 0 };
    want.saturating_add(views).saturating_add(decoded)
}

/// A charge of `n` octets against `budget`: at once, or, with a deadline, as soon as the
/// budget has room before it (never when `n` is more than the whole budget).
async fn charge_within(
    budget: &Rc<crate::memory::Budget>,
    n: usize,
    until: Option<Instant>,
) -> Option<crate::memory::Charge> {
    loop {
        if let Some(c) = budget.try_charge(n) {
            return Some(c);
        }
        let until = until?;
        if n > budget.limit() || Instant::now() >= until {
            return None;
        }
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
}

/// What the full scan of a streamed message found.
enum FullScan {
    /// Nothing stronger than the first piece showed (or it was not run).
    Same,
    Refuse(String),
    Quarantine(Box<crate::quarantine::Meta>),
    /// It did not finish within `[inspection] timeout`.
    TimedOut,
    /// Deliver this content instead (the stored message with attachments replaced).
    Replace(Vec<u8>),
    /// Viruses are scanned for and the message could not be (no memory, no time, clamd
    /// did not answer): deferred, since its headers were written before it was scanned.
    Unscanned(String),
}

/// Inspects a streamed message whole (up to `[inspection] max_scan_size`, read back from
/// the spool) on the executor's blocking thread, so the core's sessions go on while it
/// runs, within `[inspection] timeout`. Only a decision stronger than the first piece's
/// counts: its headers were stamped when streaming began.
async fn full_scan(
    core: &Rc<Core>,
    peer: SocketAddr,
    st: &Streaming,
    (mail_from, rcpts, flags): (&str, &[String], u8),
    (location, size): (crate::queue::Location, u64),
    decided: &mut Decided,
) -> FullScan {
    use bulwark_inspect::inspector::{Action, Envelope};
    let shard = core.shard();
    let Some(ci) = core.inspector() else {
        return FullScan::Same;
    };
    let ins = ci.inspector.clone();
    let antivirus = scans_for_viruses(core);
    // Rules read the first `max_scan_size` octets; virus scanning needs the whole message.
    let want = if antivirus {
        size.min(core.antivirus.max_scan)
    } else {
        size.min(ins.settings.limits.max_scan_bytes as u64)
    };
    let timeout = if antivirus {
        core.inspect_timeout.max(core.antivirus.timeout)
    } else {
        core.inspect_timeout
    };
    // One whole scan at a time per core: the others wait here, holding nothing. The wait
    // counts against the deadline of a scan for rules only; a virus scan, which the
    // message cannot go without, may wait `[antivirus] queue_timeout` for its turn and
    // its memory (a burst of large messages takes turns rather than being deferred; the
    // client waits up to 10 minutes for the reply, RFC 5321 4.5.3.2.6).
    let queued = Instant::now();
    let wait = if antivirus {
        core.antivirus.queue_timeout
    } else {
        timeout
    };
    let gate = futures_lite::future::or(
        async { core.full_scans.acquire_permit(1).await.ok() },
        async {
            glommio::timer::sleep(wait).await;
            None
        },
    )
    .await;
    let Some(_permit) = gate else {
        shard.full_scans[2].inc();
        warn!(id = %st.id, ?wait, "full scan did not start in time");
        if antivirus {
            return FullScan::Unscanned("the scan did not start in time".into());
        }
        return FullScan::TimedOut;
    };
    // Held in memory while it is scanned (the content, and what parsing makes of it, about
    // three times as much again): charged to the core's budget, or not scanned. A virus
    // scan waits for room within the same wait.
    let charge = scan_charge(want, ins.settings.limits.max_scan_bytes as u64, antivirus);
    let until = antivirus.then(|| queued + wait);
    let Some(_charge) = charge_within(&core.memory, charge, until).await else {
        shard.full_scans[3].inc();
        if antivirus {
            warn!(id = %st.id, "memory budget spent: cannot scan the message for viruses");
            return FullScan::Unscanned("no memory to scan it".into());
        }
        info!(id = %st.id, "memory budget spent: inspected on its first piece only");
        return FullScan::Same;
    };
    // The scan's own deadline runs from here for a virus scan, from the arrival for rules.
    let started = if antivirus { Instant::now() } else { queued };
    let content = match core.spool.read_range(location, 0, want).await {
        Ok(c) => c,
        Err(e) => {
            shard.full_scans[3].inc();
            warn!(id = %st.id, "cannot read the message back for a full scan: {e}");
            if antivirus {
                return FullScan::Unscanned("it could not be read back".into());
            }
            return FullScan::Same;
        }
    };
    let pool = ci.pool.clone();
    let (helo, sender) = (st.helo.clone(), mail_from.to_string());
    let hostname = core.session_cfg.hostname.clone();
    let (id, arrival) = (st.id.clone(), st.arrival);
    let summary = st.auth.as_ref().map(|a| a.summary.clone());
    let approved = st.approved;
    let rcpt = rcpts.first().map_or("", String::as_str);
    let verdicts =
        crate::filtering::verdicts_for(&ins.settings.verdicts, st.snapshot.policy(), rcpt);
    let (ins_job, verdicts_job) = (ins.clone(), verdicts.clone());
    let job = glommio::executor().spawn_blocking(move || {
        let (ins, verdicts) = (ins_job, verdicts_job);
        let mut scanner = pool
            .lock()
            .ok()
            .and_then(|mut p| p.pop())
            .or_else(|| ins.scanner().ok())?;
        let env = Envelope {
            client_ip: peer.ip(),
            helo: &helo,
            mail_from: &sender,
            hostname: &hostname,
            queue_id: &id,
            arrival,
            auth: summary.as_ref(),
            approved,
            verdicts: verdicts.as_ref(),
        };
        let report = ins.inspect(&mut scanner, &content, &env);
        if let Ok(mut p) = pool.lock() {
            p.push(scanner);
        }
        Some((report, content))
    });
    let left = timeout.saturating_sub(started.elapsed());
    let report = futures_lite::future::or(async { Some(job.await) }, async {
        glommio::timer::sleep(left).await;
        None
    })
    .await;
    let Some(report) = report else {
        shard.full_scans[2].inc();
        warn!(id = %st.id, ?timeout, "full scan did not finish in time");
        if antivirus {
            return FullScan::Unscanned("the scan did not finish in time".into());
        }
        return FullScan::TimedOut;
    };
    let Some((mut report, content)) = report else {
        return FullScan::Same;
    };
    let mut builtin = None;
    let content = if antivirus {
        // Always deferred when clamd cannot answer: the headers stamped when it began to
        // stream cannot say "unchecked".
        let (scanned, content) = crate::antivirus::scan_message(core, content, true).await;
        match scanned {
            Ok(m) => {
                ins.apply_malware(
                    &mut report,
                    m.builtin.as_ref(),
                    m.external.as_ref(),
                    verdicts.as_ref(),
                );
                builtin = m.builtin;
            }
            Err(why) => return FullScan::Unscanned(why),
        }
        content
    } else {
        content
    };
    let rule_parts = apply_policy_rules(
        core,
        &st.snapshot,
        (mail_from, rcpt),
        &content,
        (size, size),
        &mut report,
    );
    // Strip: the stored message (our header fields first) with its offending
    // attachments replaced, spooled again in its place; held when they cannot be.
    let mut stripped = None;
    if report.action == Action::Strip
        && let Some(b) = &builtin
    {
        let by_rule = !rule_parts.is_empty();
        let parts = parts_to_strip(b, rule_parts);
        if !parts.is_empty() {
            let why = strip_reason(&report, by_rule);
            stripped = bulwark_inspect::malware::strip(&content, b, &parts, &why)
                .map(|c| restamp_virus(c, &report));
            if stripped.is_none() {
                report.action = Action::Quarantine;
            }
        }
    } else if report.action == Action::Strip && (report.classes.virus || report.classes.limit) {
        report.action = Action::Quarantine;
    }
    drop(content);
    let rules: Vec<&str> = report.hits.iter().map(|h| h.name.as_str()).collect();
    info!(
        id = %st.id,
        verdict = report.verdict.as_str(),
        action = report.action.as_str(),
        score = format_args!("{:.2}", report.score),
        rules = %rules.join(","),
        policy_rule = report.policy_rule.as_deref().unwrap_or(""),
        virus = report.malware.virus.as_ref().map_or("", |v| v.0.as_str()),
        virus_in = report.malware.virus.as_ref().map_or("", |v| v.1.as_str()),
        attachment_limit = report.malware.limit.as_deref().unwrap_or(""),
        octets = want,
        "inspected whole"
    );
    if report.action <= st.first_action || report.action == Action::Tag {
        shard.full_scans[0].inc();
        return FullScan::Same;
    }
    shard.full_scans[1].inc();
    decided.inspected(&report);
    for h in &report.hits {
        if let Some(c) = ci.hits.counts.get(h.index) {
            c.inc();
        }
    }
    match report.action {
        Action::Reject => FullScan::Refuse(refusal(&report, &st.id, st.auth.as_ref())),
        Action::Strip => match stripped {
            Some(c) => FullScan::Replace(c),
            None => FullScan::Same,
        },
        _ => FullScan::Quarantine(Box::new(crate::quarantine::Meta {
            id: st.id.clone(),
            arrival: st.arrival,
            sender: mail_from.to_string(),
            recipients: rcpts.to_vec(),
            client_ip: peer.ip().to_string(),
            helo: st.helo.clone(),
            verdict: report.verdict.as_str().to_string(),
            score: report.score,
            rules: report.hits.iter().map(|h| h.name.clone()).collect(),
            subject: report.subject.clone(),
            size,
            flags,
            expires: 0,
        })),
    }
}

/// `content` without the byte ranges `drop` (sorted, disjoint).
fn without(content: &[u8], drop: &[std::ops::Range<usize>]) -> Vec<u8> {
    let removed: usize = drop.iter().map(|r| r.len()).sum();
    let mut out = Vec::with_capacity(content.len() - removed.min(content.len()));
    let mut at = 0;
    for r in drop {
        out.extend_from_slice(&content[at..r.start.min(content.len())]);
        at = r.end.min(content.len());
    }
    out.extend_from_slice(&content[at..]);
    out
}

/// `Received:` (RFC 5321 §4.4) with the queue id, folded on several lines.
#[allow(clippy::too_many_arguments)]
fn received_header(
    out: &mut Vec<u8>,
    core: &Core,
    session: &Session,
    stream: &Stream,
    peer: SocketAddr,
    id: &str,
    tx: &Transaction,
    now: u64,
) {
    use std::fmt::Write as _;
    let mut h = String::with_capacity(256);
    let ip = match peer.ip() {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => format!("IPv6:{v6}"),
    };
    let helo = if session.helo().is_empty() {
        "unknown"
    } else {
        session.helo()
    };
    let mut proto = String::from(if session.is_esmtp() { "ESMTP" } else { "SMTP" });
    if tx.smtputf8 {
        proto = String::from("UTF8SMTP");
    }
    if stream.is_tls() {
        proto.push('S');
    }
    let _ = write!(
        h,
        "Received: from {helo} ([{ip}])\r\n\tby {} (Bulwark)",
        core.session_cfg.hostname
    );
    if let Some(t) = stream.tls_description() {
        let _ = write!(h, "\r\n\t({t})");
    }
    let _ = write!(h, " with {proto} id {id}");
    if tx.rcpts.len() == 1 {
        let _ = write!(h, "\r\n\tfor <{}>", tx.rcpts[0]);
    }
    let _ = write!(h, "; {}\r\n", rfc5322_date(now));
    out.extend_from_slice(h.as_bytes());
}
