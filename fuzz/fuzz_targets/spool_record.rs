//! The spool record reader over arbitrary bytes (what recovery reads back from disk):
//! never a panic, lengths within the input, and a decoded record encodes back to the
//! same octets.
#![no_main]

use bulwark::queue::record::{self, Record};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut at = 0;
    while at < data.len() {
        match record::decode(&data[at..]) {
            Ok((rec, n)) => {
                assert!(n > 0 && n <= data.len() - at);
                let mut again = Vec::new();
                match &rec {
                    Record::Message(m) => {
                        let rcpts: Vec<String> = m.rcpts.iter().map(|r| r.to_string()).collect();
                        record::encode_message(
                            &mut again, m.id, m.arrival, m.flags, m.sender, &rcpts, b"", m.content,
                        );
                    }
                    Record::Delivered { id, rcpts } => {
                        record::encode_delivered(&mut again, id, rcpts)
                    }
                    Record::Done { id } => record::encode_done(&mut again, id),
                    Record::State(st) => record::encode_state(&mut again, st),
                }
                // Records of the current format come back byte for byte.
                if data[at..].starts_with(&record::MAGIC) {
                    assert_eq!(&again[..], &data[at..at + n]);
                }
                at += n;
            }
            Err(_) => at += 1,
        }
    }
});
