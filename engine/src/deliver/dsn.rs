//! Delivery status notifications (RFC 3464): the bounce sent to the envelope sender when
//! recipients fail for good or the queue lifetime runs out, and the "delivery delayed"
//! warning sent once while a message is still being retried.

use std::fmt::Write as _;

use crate::util::rfc5322_date;

/// One recipient the report is about.
#[derive(Debug, Clone)]
pub struct FailedRecipient {
    pub rcpt: String,
    /// Enhanced status code, e.g. `5.1.1`.
    pub status: String,
    /// The remote server's reply, or our own explanation.
    pub diagnostic: String,
    /// The server that gave the reply, if any.
    pub remote_mta: Option<String>,
}

pub struct Report<'a> {
    pub reporting_mta: &'a str,
    pub queue_id: &'a str,
    pub dsn_id: &'a str,
    pub original_sender: &'a str,
    pub arrival: u64,
    pub now: u64,
    pub failed: &'a [FailedRecipient],
    /// The original message (its header is returned).
    pub original: &'a [u8],
    /// `Some(retry until, unix seconds)`: a warning that delivery is delayed
    /// (`Action: delayed`), not a failure.
    pub delayed: Option<u64>,
}

/// The enhanced status code of a reply text (`550 5.1.1 ...` → `5.1.1`), or one derived
/// from the basic code.
pub fn status_of(code: u16, text: &str) -> String {
    let candidate = text.split_whitespace().find(|w| {
        let parts: Vec<&str> = w.split('.').collect();
        parts.len() == 3
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
    });
    match candidate {
        Some(c) if c.starts_with(&(code / 100).to_string()) => c.to_string(),
        _ => format!("{}.0.0", code / 100),
    }
}

/// Builds the complete DSN message (headers and body, CRLF line ends).
pub fn build(r: &Report<'_>) -> Vec<u8> {
    let boundary = format!("{}/{}", r.dsn_id, r.reporting_mta);
    let mut m = String::with_capacity(2048);
    let _ = write!(
        m,
        "From: Mail Delivery System <MAILER-DAEMON@{}>\r\n",
        r.reporting_mta
    );
    let _ = write!(m, "To: <{}>\r\n", r.original_sender);
    m.push_str(match r.delayed {
        None => "Subject: Undelivered Mail Returned to Sender\r\n",
        Some(_) => "Subject: Delayed Mail (still being retried)\r\n",
    });
    let _ = write!(m, "Date: {}\r\n", rfc5322_date(r.now));
    let _ = write!(m, "Message-ID: <{}@{}>\r\n", r.dsn_id, r.reporting_mta);
    m.push_str("Auto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n");
    let _ = write!(
        m,
        "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n\r\n"
    );
    m.push_str("This is a MIME-encapsulated message.\r\n\r\n");
    let _ = write!(
        m,
        "--{boundary}\r\nContent-Description: Notification\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
    );
    let _ = write!(
        m,
        "This is the mail system at host {}.\r\n\r\n",
        r.reporting_mta
    );
    match r.delayed {
        None => m.push_str("I'm sorry to have to inform you that your message could not\r\nbe delivered to one or more recipients. It's attached below.\r\n\r\n"),
        Some(until) => {
            m.push_str("####################################################################\r\n# THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #\r\n####################################################################\r\n\r\n");
            m.push_str("Your message could not be delivered yet to one or more recipients.\r\n");
            let _ = write!(
                m,
                "Delivery will be tried until {}.\r\n\r\n",
                rfc5322_date(until)
            );
        }
    }
    for f in r.failed {
        fold(
            &mut m,
            &format!("<{}>: {}", ascii(&f.rcpt), ascii(&f.diagnostic)),
            "    ",
        );
    }
    let _ = write!(
        m,
        "\r\n--{boundary}\r\nContent-Description: Delivery report\r\nContent-Type: message/delivery-status\r\n\r\n"
    );
    let _ = write!(m, "Reporting-MTA: dns; {}\r\n", r.reporting_mta);
    let _ = write!(m, "X-Bulwark-Queue-ID: {}\r\n", r.queue_id);
    let _ = write!(m, "Arrival-Date: {}\r\n", rfc5322_date(r.arrival));
    for f in r.failed {
        m.push_str("\r\n");
        fold(
            &mut m,
            &format!("Final-Recipient: rfc822; {}", ascii(&f.rcpt)),
            " ",
        );
        m.push_str(match r.delayed {
            None => "Action: failed\r\n",
            Some(_) => "Action: delayed\r\n",
        });
        let _ = write!(m, "Status: {}\r\n", f.status);
        if let Some(mta) = &f.remote_mta {
            fold(&mut m, &format!("Remote-MTA: dns; {}", ascii(mta)), " ");
        }
        fold(
            &mut m,
            &format!("Diagnostic-Code: smtp; {}", ascii(&f.diagnostic)),
            " ",
        );
        if let Some(until) = r.delayed {
            let _ = write!(m, "Will-Retry-Until: {}\r\n", rfc5322_date(until));
        }
    }
    let _ = write!(
        m,
        "\r\n--{boundary}\r\nContent-Description: Undelivered Message Headers\r\nContent-Type: text/rfc822-headers\r\n\r\n"
    );
    let mut out = m.into_bytes();
    fold_header_lines(&mut out, original_header(r.original));
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    let _ = write!(Tail(&mut out), "\r\n--{boundary}--\r\n");
    out
}

struct Tail<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Tail<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// The header section of a message: up to, not including, the first empty line.
fn original_header(msg: &[u8]) -> &[u8] {
    match memchr::memmem::find(msg, b"\r\n\r\n") {
        Some(i) => &msg[..i + 2],
        None => msg,
    }
}

/// The longest line a DSN writes (RFC 5322 §2.1.1 recommends 78; 998 is the limit).
const FOLD_AT: usize = 78;
const MAX_LINE: usize = 998;

/// Writes `line` (printable ASCII, no CRLF) folded at spaces to lines of about
/// [`FOLD_AT`] octets, each continuation starting with `indent`; a word longer than
/// [`MAX_LINE`] is cut there. Ends with CRLF.
fn fold(out: &mut String, line: &str, indent: &str) {
    let mut len = 0;
    for (i, word) in line.split(' ').enumerate() {
        if i > 0 {
            if len + 1 + word.len() > FOLD_AT && len > indent.len() {
                out.push_str("\r\n");
                out.push_str(indent);
                len = indent.len();
            } else {
                out.push(' ');
                len += 1;
            }
        }
        let mut rest = word;
        while len + rest.len() > MAX_LINE {
            let take = MAX_LINE - len;
            out.push_str(&rest[..take]);
            out.push_str("\r\n");
            out.push_str(indent);
            len = indent.len();
            rest = &rest[take..];
        }
        out.push_str(rest);
        len += rest.len();
    }
    out.push_str("\r\n");
}

/// Copies a header section, folding any line longer than [`MAX_LINE`] (the engine
/// accepts longer lines than RFC 5322 allows) with CRLF and a space.
fn fold_header_lines(out: &mut Vec<u8>, header: &[u8]) {
    for line in header.split_inclusive(|&b| b == b'\n') {
        let body = line.strip_suffix(b"\r\n").unwrap_or(line);
        let mut rest = body;
        let mut first = true;
        while rest.len() > MAX_LINE - 1 || (first && rest.len() > MAX_LINE) {
            let take = if first { MAX_LINE } else { MAX_LINE - 1 };
            out.extend_from_slice(&rest[..take]);
            out.extend_from_slice(b"\r\n ");
            rest = &rest[take..];
            first = false;
        }
        out.extend_from_slice(rest);
        if body.len() != line.len() {
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// Keeps report fields printable ASCII on one line.
fn ascii(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_from_replies() {
        assert_eq!(status_of(550, "550 5.1.1 <u@x>: unknown user"), "5.1.1");
        assert_eq!(status_of(550, "550 no such user"), "5.0.0");
        assert_eq!(status_of(451, "451 4.3.0 try later"), "4.3.0");
        assert_eq!(status_of(550, "550 4.3.0 inconsistent"), "5.0.0");
    }

    #[test]
    fn report_structure() {
        let failed = vec![FailedRecipient {
            rcpt: "u@example.test".into(),
            status: "5.1.1".into(),
            diagnostic: "550 5.1.1 unknown user".into(),
            remote_mta: Some("127.0.0.1".into()),
        }];
        let original =
            b"Received: x\r\nSubject: hello\r\nMessage-ID: <m1@x>\r\n\r\nsecret body\r\n";
        let dsn = build(&Report {
            reporting_mta: "mx.bulwark.test",
            queue_id: "Q1",
            dsn_id: "Q2",
            original_sender: "s@sender.test",
            arrival: 1_700_000_000,
            now: 1_700_000_100,
            failed: &failed,
            original,
            delayed: None,
        });
        let text = String::from_utf8(dsn).unwrap();
        assert!(text.contains("Content-Type: multipart/report; report-type=delivery-status;"));
        assert!(text.contains(
            "Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.bulwark.test\r\n"
        ));
        assert!(text.contains("Final-Recipient: rfc822; u@example.test\r\nAction: failed\r\nStatus: 5.1.1\r\nRemote-MTA: dns; 127.0.0.1\r\nDiagnostic-Code: smtp; 550 5.1.1 unknown user\r\n"));
        assert!(text.contains("Content-Type: text/rfc822-headers\r\n\r\nReceived: x\r\nSubject: hello\r\nMessage-ID: <m1@x>\r\n"));
        assert!(!text.contains("secret body"));
        assert!(text.contains("To: <s@sender.test>\r\n"));
        assert!(text.ends_with("--Q2/mx.bulwark.test--\r\n"));
        assert!(text.split("\r\n").all(|l| l.len() <= 998));
        assert!(!text.replace("\r\n", "").contains('\n'));
    }

    #[test]
    fn long_replies_and_header_lines_are_folded_under_998_octets() {
        let long_reply = format!("550 5.7.1 {}", "policy-violation ".repeat(300));
        let unbroken = format!("550 5.7.1 {}", "x".repeat(3000));
        let failed = vec![
            FailedRecipient {
                rcpt: "u@example.test".into(),
                status: "5.7.1".into(),
                diagnostic: long_reply.clone(),
                remote_mta: Some("mx.example.test".into()),
            },
            FailedRecipient {
                rcpt: "v@example.test".into(),
                status: "5.7.1".into(),
                diagnostic: unbroken,
                remote_mta: None,
            },
        ];
        let original = format!(
            "Subject: {}\r\nX-Long: {}\r\n\r\nbody\r\n",
            "s".repeat(2500),
            "y".repeat(999)
        );
        let dsn = build(&Report {
            reporting_mta: "mx.bulwark.test",
            queue_id: "Q1",
            dsn_id: "Q2",
            original_sender: "s@sender.test",
            arrival: 1_700_000_000,
            now: 1_700_000_100,
            failed: &failed,
            original: original.as_bytes(),
            delayed: None,
        });
        let text = String::from_utf8(dsn).unwrap();
        let longest = text.split("\r\n").map(str::len).max().unwrap();
        assert!(longest <= 998, "a DSN line of {longest} octets");
        // Folding only inserts line breaks: unfolded, every field is whole.
        let unfolded = text.replace("\r\n ", " ").replace("\r\n\t", " ");
        assert!(unfolded.contains(&format!("Diagnostic-Code: smtp; {}", long_reply.trim_end())));
        assert!(
            text.replace("\r\n ", "")
                .contains(&format!("Subject: {}", "s".repeat(2500)))
        );
        assert!(text.contains("Diagnostic-Code: smtp; 550 5.7.1\r\n xxx"));
    }

    #[test]
    fn delay_warning_structure() {
        let waiting = vec![FailedRecipient {
            rcpt: "u@example.test".into(),
            status: "4.4.1".into(),
            diagnostic: "451 4.4.1 connection refused".into(),
            remote_mta: None,
        }];
        let dsn = build(&Report {
            reporting_mta: "mx.bulwark.test",
            queue_id: "Q1",
            dsn_id: "Q3",
            original_sender: "s@sender.test",
            arrival: 1_700_000_000,
            now: 1_700_014_400,
            failed: &waiting,
            original: b"Subject: hello\r\n\r\nbody\r\n",
            delayed: Some(1_700_864_000),
        });
        let text = String::from_utf8(dsn).unwrap();
        assert!(text.contains("Subject: Delayed Mail (still being retried)\r\n"));
        assert!(text.contains("THIS IS A WARNING ONLY"));
        assert!(text.contains(
            "Final-Recipient: rfc822; u@example.test\r\nAction: delayed\r\nStatus: 4.4.1\r\nDiagnostic-Code: smtp; 451 4.4.1 connection refused\r\nWill-Retry-Until: "
        ));
        assert!(!text.contains("Action: failed"));
    }
}
