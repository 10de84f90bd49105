//! The SMTP server state machine over arbitrary client input, fed in arbitrary pieces:
//! commands, pipelining, DATA with dot-stuffing, BDAT chunks, STARTTLS. Every event is
//! answered as the network driver would; content taken for streaming is dropped.
#![no_main]

use bulwark::smtp::{EnvelopePolicy, Event, RcptVerdict, Session, SessionConfig};
use libfuzzer_sys::fuzz_target;

struct Policy;

impl EnvelopePolicy for Policy {
    fn check_rcpt(&self, _sender: &str, rcpt: &str) -> RcptVerdict {
        match rcpt.len() % 5 {
            0 => RcptVerdict::RelayDenied,
            1 => RcptVerdict::UnknownUser,
            2 => RcptVerdict::Approved,
            _ => RcptVerdict::Accept,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // The first octet picks the piece size and whether large bodies are drained.
    let Some((&ctl, input)) = data.split_first() else {
        return;
    };
    let step = 1 + (ctl as usize & 0x3f);
    let drain = ctl & 0x40 != 0;
    let mut s = Session::new(SessionConfig {
        hostname: "mx.fuzz.test".into(),
        max_message_size: 4096,
        max_recipients: 4,
        max_errors: 50,
        starttls: ctl & 0x80 != 0,
        max_line_length: 200,
    });
    let mut buf: Vec<u8> = Vec::new();
    let mut spooled = 0u32;
    for piece in input.chunks(step) {
        buf.extend_from_slice(piece);
        loop {
            let p = s.feed(&buf, &Policy);
            assert!(p.consumed <= buf.len());
            buf.drain(..p.consumed);
            match p.event {
                None => break,
                Some(Event::Message(tx)) => {
                    assert!(!tx.rcpts.is_empty());
                    assert!(tx.body.len() <= 4096);
                    spooled += 1;
                    if spooled % 3 == 0 {
                        s.spool_failed("452 4.3.1 Insufficient system storage");
                    } else {
                        s.spooled("Q1");
                    }
                }
                Some(Event::StartTls) => {
                    buf.clear();
                    s.tls_started();
                }
                Some(Event::Close) => return,
            }
        }
        if drain && s.content_in_progress() {
            let _ = s.take_body(Vec::new());
        }
        s.clear_output();
        if s.is_closed() {
            return;
        }
    }
});
