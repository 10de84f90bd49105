//! Unit tests of the session state machine, driven as a network driver would drive it.

use super::*;

struct Managed;

impl EnvelopePolicy for Managed {
    fn check_rcpt(&self, sender: &str, rcpt: &str) -> RcptVerdict {
        let domain = rcpt.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
        if !domain.eq_ignore_ascii_case("example.test")
            && !domain.eq_ignore_ascii_case("mx.bulwark.test")
        {
            return RcptVerdict::RelayDenied;
        }
        if rcpt.starts_with("nobody@") {
            return RcptVerdict::UnknownUser;
        }
        match sender {
            "spammer@bad.test" => RcptVerdict::SenderBlocked,
            "friend@good.test" => RcptVerdict::Approved,
            _ => RcptVerdict::Accept,
        }
    }
}

fn config() -> SessionConfig {
    SessionConfig {
        hostname: "mx.bulwark.test".into(),
        max_message_size: 1000,
        max_recipients: 3,
        max_errors: 20,
        starttls: true,
        max_line_length: crate::smtp::data::MAX_TEXT_LINE,
    }
}

/// Drives a session like the network layer: input is fed, events are answered
/// (messages spooled as Q1, Q2, ...), unconsumed input is kept for the next feed.
struct Driver {
    s: Session,
    pending: Vec<u8>,
    out: String,
    messages: Vec<Transaction>,
    closed: bool,
    tls_started: usize,
    discarded: Vec<u8>,
}

impl Driver {
    fn new(cfg: SessionConfig) -> Self {
        let s = Session::new(cfg);
        let mut d = Driver {
            s,
            pending: Vec::new(),
            out: String::new(),
            messages: Vec::new(),
            closed: false,
            tls_started: 0,
            discarded: Vec::new(),
        };
        d.take_output();
        d
    }

    fn take_output(&mut self) -> String {
        let o = String::from_utf8(self.s.output().to_vec()).unwrap();
        self.s.clear_output();
        self.out.push_str(&o);
        o
    }

    /// Sends bytes and returns the replies they produced.
    fn send(&mut self, bytes: &[u8]) -> String {
        let before = self.out.len();
        self.pending.extend_from_slice(bytes);
        loop {
            let p = self.s.feed(&self.pending, &Managed);
            self.pending.drain(..p.consumed);
            match p.event {
                None => break,
                Some(Event::Message(tx)) => {
                    self.messages.push(tx);
                    let id = format!("Q{}", self.messages.len());
                    self.s.spooled(&id);
                }
                Some(Event::StartTls) => {
                    self.discarded = std::mem::take(&mut self.pending);
                    self.tls_started += 1;
                    self.s.tls_started();
                    break;
                }
                Some(Event::Close) => {
                    self.closed = true;
                    break;
                }
            }
        }
        self.take_output();
        self.out[before..].to_string()
    }

    fn codes(&mut self, bytes: &[u8]) -> Vec<String> {
        let r = self.send(bytes);
        r.split("\r\n")
            .filter(|l| l.len() >= 4 && &l[3..4] == " ")
            .map(|l| l[..9.min(l.len())].to_string())
            .collect()
    }
}

fn greeted() -> Driver {
    let mut d = Driver::new(config());
    d.send(b"EHLO client.test\r\n");
    d
}

#[test]
fn greeting_and_ehlo_capabilities() {
    let mut d = Driver::new(config());
    assert_eq!(d.out, "220 mx.bulwark.test ESMTP Bulwark\r\n");
    let r = d.send(b"EHLO client.test\r\n");
    assert!(r.starts_with("250-mx.bulwark.test Hello client.test\r\n"));
    for cap in [
        "PIPELINING",
        "SIZE 1000",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "STARTTLS",
    ] {
        assert!(
            r.contains(&format!("250-{cap}\r\n")),
            "missing {cap} in {r}"
        );
    }
    assert!(r.ends_with("250 CHUNKING\r\n"));
    assert_eq!(d.send(b"HELO client.test\r\n"), "250 mx.bulwark.test\r\n");
}

#[test]
fn starttls_not_offered_without_certificate() {
    let mut d = Driver::new(SessionConfig {
        starttls: false,
        ..config()
    });
    let r = d.send(b"EHLO c\r\n");
    assert!(!r.contains("STARTTLS"));
    assert_eq!(d.codes(b"STARTTLS\r\n"), ["502 5.5.1"]);
}

#[test]
fn full_transaction_with_data() {
    let mut d = greeted();
    let codes = d.codes(b"MAIL FROM:<s@sender.test>\r\nRCPT TO:<u@example.test>\r\nDATA\r\n");
    assert_eq!(codes, ["250 2.1.0", "250 2.1.5", "354 End d"]);
    let r = d.send(b"Subject: hi\r\n\r\nbody\r\n.\r\n");
    assert_eq!(r, "250 2.0.0 Ok: queued as Q1\r\n");
    let m = &d.messages[0];
    assert_eq!(m.mail_from, "s@sender.test");
    assert_eq!(m.rcpts, ["u@example.test"]);
    assert_eq!(m.body, b"Subject: hi\r\n\r\nbody\r\n");
    assert_eq!(d.codes(b"QUIT\r\n"), ["221 2.0.0"]);
    assert!(d.closed);
}

#[test]
fn pipelined_transactions_in_one_packet() {
    let mut d = Driver::new(config());
    let input = b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<a@example.test>\r\nRCPT TO:<b@other.test>\r\nDATA\r\nx\r\n.\r\nMAIL FROM:<s@x.test> BODY=8BITMIME\r\nRCPT TO:<c@example.test>\r\nDATA\r\n\xc3\xa9\r\n.\r\nQUIT\r\n";
    let r = d.send(input);
    let codes: Vec<&str> = r
        .split("\r\n")
        .filter(|l| l.len() > 3 && &l[3..4] == " ")
        .map(|l| &l[..3])
        .collect();
    assert_eq!(
        codes,
        [
            "250", "250", "250", "550", "354", "250", "250", "250", "354", "250", "221"
        ]
    );
    assert_eq!(d.messages.len(), 2);
    assert_eq!(d.messages[0].mail_from, "");
    assert_eq!(d.messages[0].rcpts, ["a@example.test"]);
    assert!(d.messages[1].eight_bit);
    assert!(d.closed);
}

#[test]
fn input_split_at_every_octet() {
    let input = b"EHLO c\r\nMAIL FROM:<s@x.test>\r\nRCPT TO:<a@example.test>\r\nDATA\r\nline\r\n..dot\r\n.\r\nQUIT\r\n";
    let mut d = Driver::new(config());
    for b in input.iter() {
        d.send(std::slice::from_ref(b));
    }
    assert_eq!(d.messages.len(), 1);
    assert_eq!(d.messages[0].body, b"line\r\n.dot\r\n");
    assert!(d.closed);
}

#[test]
fn relay_is_denied() {
    let mut d = greeted();
    d.send(b"MAIL FROM:<s@x.test>\r\n");
    assert_eq!(
        d.codes(b"RCPT TO:<victim@elsewhere.test>\r\n"),
        ["550 5.7.1"]
    );
    assert_eq!(d.codes(b"DATA\r\n"), ["554 5.5.1"]);
}

#[test]
fn postmaster_is_qualified_with_the_hostname() {
    let mut d = greeted();
    d.send(b"MAIL FROM:<s@x.test>\r\n");
    assert_eq!(d.codes(b"RCPT TO:<Postmaster>\r\n"), ["250 2.1.5"]);
    d.send(b"DATA\r\nx\r\n.\r\n");
    assert_eq!(d.messages[0].rcpts, ["Postmaster@mx.bulwark.test"]);
}

#[test]
fn sequence_errors() {
    let mut d = Driver::new(config());
    assert_eq!(d.codes(b"MAIL FROM:<s@x.test>\r\n"), ["503 5.5.1"]);
    d.send(b"EHLO c\r\n");
    assert_eq!(d.codes(b"RCPT TO:<a@example.test>\r\n"), ["503 5.5.1"]);
    assert_eq!(d.codes(b"DATA\r\n"), ["503 5.5.1"]);
    d.send(b"MAIL FROM:<s@x.test>\r\n");
    assert_eq!(d.codes(b"MAIL FROM:<s@x.test>\r\n"), ["503 5.5.1"]);
}

#[test]
fn simple_commands() {
    let mut d = greeted();
    assert_eq!(d.codes(b"NOOP\r\n"), ["250 2.0.0"]);
    assert_eq!(d.codes(b"VRFY someone\r\n"), ["252 2.5.0"]);
    assert_eq!(d.codes(b"EXPN list\r\n"), ["502 5.5.1"]);
    assert_eq!(d.codes(b"HELP\r\n"), ["214 2.0.0"]);
    assert_eq!(d.codes(b"FROB\r\n"), ["500 5.5.2"]);
    assert_eq!(d.codes(b"EHLO\r\n"), ["501 5.5.4"]);
    assert_eq!(d.codes(b"MAIL FROM:<s@x.test> XYZ=1\r\n"), ["555 5.5.4"]);
    d.send(b"MAIL FROM:<s@x.test>\r\nRCPT TO:<a@example.test>\r\n");
    assert_eq!(d.codes(b"RSET\r\n"), ["250 2.0.0"]);
    assert_eq!(d.codes(b"DATA\r\n"), ["503 5.5.1"]);
}

#[test]
fn size_limit_from_parameter_and_content() {
    let mut d = greeted();
    assert_eq!(
        d.codes(b"MAIL FROM:<s@x.test> SIZE=1001\r\n"),
        ["552 5.3.4"]
    );
    d.send(b"MAIL FROM:<s@x.test> SIZE=1000\r\nRCPT TO:<a@example.test>\r\nDATA\r\n");
    let mut big = Vec::new();
    for _ in 0..30 {
        big.extend_from_slice(b"0123456789012345678901234567890123456789\r\n");
    }
    big.extend_from_slice(b".\r\n");
    assert_eq!(d.codes(&big), ["552 5.3.4"]);
    assert!(d.messages.is_empty());
    // The session is still in step and usable.
    assert_eq!(d.codes(b"MAIL FROM:<s@x.test>\r\n"), ["250 2.1.0"]);
}

#[test]
fn recipient_limit() {
    let mut d = greeted();
    d.send(b"MAIL FROM:<s@x.test>\r\n");
    let codes = d.codes(b"RCPT TO:<a@example.test>\r\nRCPT TO:<b@example.test>\r\nRCPT TO:<c@example.test>\r\nRCPT TO:<d@example.test>\r\n");
    assert_eq!(codes, ["250 2.1.5", "250 2.1.5", "250 2.1.5", "452 4.5.3"]);
    d.send(b"DATA\r\nx\r\n.\r\n");
    assert_eq!(d.messages[0].rcpts.len(), 3);
}

#[test]
fn duplicate_recipients_are_kept_once() {
    let mut d = greeted();
    d.send(b"MAIL FROM:<s@x.test>\r\nRCPT TO:<a@example.test>\r\nRCPT TO:<A@Example.Test>\r\nDATA\r\nx\r\n.\r\n");
    assert_eq!(d.messages[0].rcpts, ["a@example.test"]);
}

#[test]
fn command_line_limits_and_bare_line_ends() {
    let mut d = greeted();
    let mut long = b"NOOP ".to_vec();
    long.extend(std::iter::repeat_n(b'x', 600));
    long.extend_from_slice(b"\r\n");
    assert_eq!(d.codes(&long), ["500 5.5.2"]);
    // Longer than any buffer bound: discarded up to its end, then answered once.
    let mut huge = b"NOOP ".to_vec();
    huge.extend(std::iter::repeat_n(b'x', 5000));
    huge.extend_from_slice(b"\r\nNOOP\r\n");
    assert_eq!(d.codes(&huge), ["500 5.5.2", "250 2.0.0"]);
    assert_eq!(d.codes(b"NOOP\nNOOP\r\n"), ["500 5.5.2"]);
    assert_eq!(d.codes(b"NO\rOP\r\n"), ["500 5.5.2"]);
}

#[test]
fn smuggled_command_via_bare_lf_is_refused() {
    // A bare LF must not split one line into two commands.
    let mut d = greeted();
    d.send(b"MAIL FROM:<s@x.test>\r\n");
    let codes = d.codes(b"RCPT TO:<a@example.test>\nRCPT TO:<b@example.test>\r\n");
    assert_eq!(codes, ["500 5.5.2"]);
}

#[test]
fn error_limit_closes_the_session() {
    let mut d = Driver::new(SessionConfig {
        max_errors: 5,
        ..config()
    });
    d.send(b"EHLO c\r\n");
    let codes = d.codes(b"A\r\nB\r\nC\r\nD\r\nE\r\nNOOP\r\n");
    assert_eq!(
        codes,
        [
            "500 5.5.2",
            "500 5.5.2",
            "500 5.5.2",
            "500 5.5.2",
            "500 5.5.2",
            "421 4.7.0"
        ]
    );
    assert!(d.closed);
}

/// Each smuggling variant embedded in a whole session: one message at most is accepted,
/// and the smuggled MAIL/RCPT/DATA inside it is never run as commands.
#[test]
fn smuggling_variants_in_a_session() {
    for v in crate::smtp::data::SMUGGLING_VARIANTS {
        let mut d = greeted();
        let mut input = b"MAIL FROM:<a@x.test>\r\nRCPT TO:<u@example.test>\r\nDATA\r\nSubject: outer\r\n\r\nouter".to_vec();
        input.extend_from_slice(v);
        input.extend_from_slice(b"MAIL FROM:<spoof@x.test>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nsmuggled\r\n.\r\n");
        d.send(&input);
        assert!(d.messages.len() <= 1, "variant {v:?}");
        for m in &d.messages {
            assert!(
                !m.rcpts.iter().any(|r| r.starts_with("victim")),
                "variant {v:?} smuggled a recipient"
            );
            assert_eq!(m.rcpts, ["u@example.test"]);
        }
        if v != b"\r\n\x00.\r\n" {
            assert!(
                d.messages.is_empty(),
                "variant {v:?} accepted a message with bare CR/LF"
            );
            assert!(d.out.contains("550 5.6.0"), "variant {v:?}");
        }
        // In step afterwards: the next command is a command.
        assert_eq!(d.codes(b"NOOP\r\n"), ["250 2.0.0"], "variant {v:?}");
    }
}

#[test]
fn starttls_discards_pipelined_plaintext_and_resets() {
    let mut d = greeted();
    d.send(b"MAIL FROM:<s@x.test>\r\n");
    let r = d.send(b"STARTTLS\r\nMAIL FROM:<injected@x.test>\r\nRCPT TO:<a@example.test>\r\n");
    assert_eq!(r, "220 2.0.0 Ready to start TLS\r\n");
    assert_eq!(
        d.discarded,
        b"MAIL FROM:<injected@x.test>\r\nRCPT TO:<a@example.test>\r\n"
    );
    assert_eq!(d.tls_started, 1);
    assert!(d.s.is_tls());
    // Reset: must greet again, and no STARTTLS is offered twice.
    assert_eq!(d.codes(b"MAIL FROM:<s@x.test>\r\n"), ["503 5.5.1"]);
    let r = d.send(b"EHLO c\r\n");
    assert!(!r.contains("STARTTLS"));
    assert_eq!(d.codes(b"STARTTLS\r\n"), ["503 5.5.1"]);
    assert_eq!(d.codes(b"STARTTLS now\r\n"), ["501 5.5.4"]);
}

#[test]
fn bdat_single_and_multiple_chunks() {
    let mut d = greeted();
    d.send(b"MAIL FROM:<s@x.test>\r\nRCPT TO:<a@example.test>\r\n");
    assert_eq!(
        d.codes(b"BDAT 6\r\nab\r\ncdBDAT 4 LAST\r\nef\r\n"),
        ["250 2.0.0", "250 2.0.0"]
    );
    assert_eq!(d.messages[0].body, b"ab\r\ncdef\r\n");
    assert!(d.out.contains("250 2.0.0 6 octets received\r\n"));
    // Pipelined with the envelope, chunk content that looks like commands stays content.
    let codes = d.codes(b"MAIL FROM:<s@x.test>\r\nRCPT TO:<a@example.test>\r\nBDAT 15 LAST\r\nQUIT\r\n.\r\nQUIT\r\n");
    assert_eq!(codes, ["250 2.1.0", "250 2.1.5", "250 2.0.0"]);
    assert_eq!(d.messages[1].body, b"QUIT\r\n.\r\nQUIT\r\n");
    assert!(!d.closed);
    assert_eq!(d.codes(b"BDAT 0 LAST\r\n"), ["503 5.5.1"]);
}

#[test]
fn bdat_chunk_is_read_even_when_refused() {
    let mut d = greeted();
    assert_eq!(
        d.codes(b"BDAT 6\r\nQUIT\r\nNOOP\r\n"),
        ["503 5.5.1", "250 2.0.0"]
    );
    assert!(!d.closed);
    d.send(b"MAIL FROM:<s@x.test>\r\nRCPT TO:<a@example.test>\r\n");
    assert_eq!(d.codes(b"DATA\r\nx\r\n.\r\n"), ["354 End d", "250 2.0.0"]);
    d.send(b"MAIL FROM:<s@x.test>\r\nRCPT TO:<a@example.test>\r\nBDAT 3\r\nab\n");
    assert!(
        d.out
            .ends_with("550 5.6.0 Message contains a bare CR or LF; refused\r\n")
    );
    assert_eq!(d.codes(b"BDAT 3 LAST\r\nxyz"), ["503 5.5.1"]);
    assert_eq!(d.codes(b"RSET\r\n"), ["250 2.0.0"]);
}

#[test]
fn bdat_and_data_do_not_mix() {
    let mut d = greeted();
    d.send(b"MAIL FROM:<s@x.test>\r\nRCPT TO:<a@example.test>\r\nBDAT 3\r\nabc");
    assert_eq!(d.codes(b"DATA\r\n"), ["503 5.5.1"]);
}

#[test]
fn bad_bdat_size_closes_rather_than_desynchronise() {
    let mut d = greeted();
    assert_eq!(d.codes(b"BDAT lots\r\n"), ["501 5.5.4"]);
    assert!(d.closed);
}

#[test]
fn utf8_addresses_need_smtputf8() {
    let mut d = greeted();
    assert_eq!(
        d.codes("MAIL FROM:<jö@x.test>\r\n".as_bytes()),
        ["553 5.6.7"]
    );
    d.send(b"MAIL FROM:<s@x.test>\r\n");
    assert_eq!(
        d.codes("RCPT TO:<jö@example.test>\r\n".as_bytes()),
        ["553 5.6.7"]
    );
    d.send(b"RSET\r\n");
    assert_eq!(
        d.codes("MAIL FROM:<jö@x.test> SMTPUTF8\r\nRCPT TO:<jö@example.test>\r\n".as_bytes()),
        ["250 2.1.0", "250 2.1.5"]
    );
}

#[test]
fn timeouts_and_shutdown_close_with_421() {
    let mut d = greeted();
    d.s.timed_out();
    assert_eq!(
        d.take_output(),
        "421 4.4.2 Timeout waiting for client input, closing connection\r\n"
    );
    assert!(d.s.is_closed());
    let mut d = greeted();
    d.s.session_expired();
    assert!(d.take_output().starts_with("421 4.4.2"));
    let mut d = greeted();
    d.s.shutting_down();
    assert!(d.take_output().starts_with("421 4.3.2"));
}

#[test]
fn waiting_reports_data_phase() {
    let mut d = greeted();
    assert_eq!(d.s.waiting(), Waiting::Command);
    d.send(b"MAIL FROM:<s@x.test>\r\nRCPT TO:<a@example.test>\r\nDATA\r\npartial");
    assert_eq!(d.s.waiting(), Waiting::Data);
}

#[test]
fn spool_failure_is_answered_and_session_continues() {
    let mut s = Session::new(config());
    s.clear_output();
    let p = s.feed(
        b"EHLO c\r\nMAIL FROM:<s@x.test>\r\nRCPT TO:<a@example.test>\r\nDATA\r\nx\r\n.\r\n",
        &Managed,
    );
    assert!(matches!(p.event, Some(Event::Message(_))));
    s.spool_failed("452 4.3.1 Insufficient system storage");
    assert!(
        String::from_utf8_lossy(s.output()).ends_with("452 4.3.1 Insufficient system storage\r\n")
    );
    s.clear_output();
    let p = s.feed(b"NOOP\r\n", &Managed);
    assert!(p.event.is_none());
    assert_eq!(s.output(), b"250 2.0.0 OK\r\n");
}

#[test]
fn directory_and_sender_verdicts() {
    let mut d = greeted();
    d.send(b"MAIL FROM:<s@x.test>\r\n");
    assert_eq!(d.codes(b"RCPT TO:<nobody@example.test>\r\n"), ["550 5.1.1"]);
    assert_eq!(
        d.codes(b"RCPT TO:<a@example.test>\r\nDATA\r\nx\r\n.\r\n"),
        ["250 2.1.5", "354 End d", "250 2.0.0"]
    );
    assert!(!d.messages[0].approved);
    assert_eq!(
        d.codes(b"MAIL FROM:<spammer@bad.test>\r\nRCPT TO:<a@example.test>\r\n"),
        ["250 2.1.0", "550 5.7.1"]
    );
    d.send(
        b"RSET\r\nMAIL FROM:<friend@good.test>\r\nRCPT TO:<a@example.test>\r\nDATA\r\nx\r\n.\r\n",
    );
    assert!(d.messages[1].approved);
    let st = d.s.stats();
    assert_eq!((st.unknown_user, st.sender_blocked), (1, 1));
}

#[test]
fn limits_change_between_transactions() {
    let mut d = greeted();
    d.s.set_limits(5000, 1);
    let r = d.send(b"EHLO c\r\n");
    assert!(r.contains("250-SIZE 5000\r\n"), "{r}");
    assert_eq!(
        d.codes(b"MAIL FROM:<s@x.test> SIZE=4000\r\n"),
        ["250 2.1.0"]
    );
    assert_eq!(
        d.codes(b"RCPT TO:<a@example.test>\r\nRCPT TO:<b@example.test>\r\n"),
        ["250 2.1.5", "452 4.5.3"]
    );
}
