//! Spool records: the on-disk format of the append-only spool segments.
//!
//! ```text
//! header (16 octets): magic "BWR1" | kind u8 | 0 0 0 | payload length u32 LE | CRC-32 u32 LE
//! payload:            kind-specific, below; the CRC covers the kind octet and the payload
//! ```
//! * `Message`: id, arrival (unix seconds u64), flags u8, sender, recipient count u32 and
//!   recipients, then the content (u64 length + octets), the `Received:` header included.
//! * `Delivered`: id, count u32, recipient indices u32 each: these are finished.
//! * `Done`: id: the message is finished (delivered, bounced, expired or deleted); its
//!   content is no longer needed.
//! * `State`: id, attempts u32, state flags u8 (held, delay warning sent), next attempt
//!   (unix seconds u64), last error: the queue's view of the message; the latest wins.
//!
//! Strings are u16 length + UTF-8. A torn write (crash mid-append) leaves a record whose
//! length runs past the end of the file or whose CRC does not match; readers stop there.

pub const MAGIC: [u8; 4] = *b"BWR1";
pub const HEADER_LEN: usize = 16;
/// The largest payload a reader will believe (a message at the size limit plus envelope).
pub const MAX_PAYLOAD: usize = 1 << 33;

const KIND_MESSAGE: u8 = 1;
const KIND_DELIVERED: u8 = 2;
const KIND_DONE: u8 = 3;
const KIND_STATE: u8 = 4;

/// `State` flag: an operator put the message on hold.
pub const STATE_HELD: u8 = 1;
/// `State` flag: the "delivery delayed" notice went out.
pub const STATE_WARNED: u8 = 2;

pub const FLAG_8BIT: u8 = 1;
pub const FLAG_SMTPUTF8: u8 = 2;

/// A record as read back.
#[derive(Debug, PartialEq, Eq)]
pub enum Record<'a> {
    Message(MessageRecord<'a>),
    Delivered { id: &'a str, rcpts: Vec<u32> },
    Done { id: &'a str },
    State(StateRecord<'a>),
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub struct StateRecord<'a> {
    pub id: &'a str,
    pub attempts: u32,
    pub flags: u8,
    pub next_attempt: u64,
    pub last_error: &'a str,
}

#[derive(Debug, PartialEq, Eq)]
pub struct MessageRecord<'a> {
    pub id: &'a str,
    pub arrival: u64,
    pub flags: u8,
    pub sender: &'a str,
    pub rcpts: Vec<&'a str>,
    /// Offset of the content within the record's payload.
    pub content_offset: usize,
    pub content: &'a [u8],
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let len = s.len().min(u16::MAX as usize);
    out.extend_from_slice(&(len as u16).to_le_bytes());
    out.extend_from_slice(&s.as_bytes()[..len]);
}

/// Begins a record; returns the offset of its header for [`seal`].
fn begin(out: &mut Vec<u8>, kind: u8) -> usize {
    let start = out.len();
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&[kind, 0, 0, 0]);
    out.extend_from_slice(&[0u8; 8]);
    start
}

fn seal(out: &mut [u8], start: usize) {
    let payload_len = (out.len() - start - HEADER_LEN) as u32;
    let mut h = crc32fast::Hasher::new();
    h.update(&out[start + 4..start + 5]);
    h.update(&out[start + HEADER_LEN..]);
    out[start + 8..start + 12].copy_from_slice(&payload_len.to_le_bytes());
    out[start + 12..start + 16].copy_from_slice(&h.finalize().to_le_bytes());
}

/// Appends a `Message` record. Returns the offset of the content from the start of
/// the record, so the content can be read back without the envelope.
#[allow(clippy::too_many_arguments)]
pub fn encode_message(
    out: &mut Vec<u8>,
    id: &str,
    arrival: u64,
    flags: u8,
    sender: &str,
    rcpts: &[String],
    header: &[u8],
    body: &[u8],
) -> usize {
    let start = begin(out, KIND_MESSAGE);
    put_str(out, id);
    out.extend_from_slice(&arrival.to_le_bytes());
    out.push(flags);
    put_str(out, sender);
    out.extend_from_slice(&(rcpts.len() as u32).to_le_bytes());
    for r in rcpts {
        put_str(out, r);
    }
    out.extend_from_slice(&((header.len() + body.len()) as u64).to_le_bytes());
    let content_at = out.len() - start;
    out.extend_from_slice(header);
    out.extend_from_slice(body);
    seal(out, start);
    content_at
}

pub fn encode_delivered(out: &mut Vec<u8>, id: &str, rcpts: &[u32]) {
    let start = begin(out, KIND_DELIVERED);
    put_str(out, id);
    out.extend_from_slice(&(rcpts.len() as u32).to_le_bytes());
    for r in rcpts {
        out.extend_from_slice(&r.to_le_bytes());
    }
    seal(out, start);
}

pub fn encode_done(out: &mut Vec<u8>, id: &str) {
    let start = begin(out, KIND_DONE);
    put_str(out, id);
    seal(out, start);
}

pub fn encode_state(out: &mut Vec<u8>, st: &StateRecord<'_>) {
    let start = begin(out, KIND_STATE);
    put_str(out, st.id);
    out.extend_from_slice(&st.attempts.to_le_bytes());
    out.push(st.flags);
    out.extend_from_slice(&st.next_attempt.to_le_bytes());
    put_str(out, st.last_error);
    seal(out, start);
}

/// Why reading stopped.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum ReadError {
    /// The data ends inside a record (a torn append).
    Truncated,
    /// Bad magic, CRC or structure.
    Corrupt,
}

struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ReadError> {
        let end = self.at.checked_add(n).ok_or(ReadError::Corrupt)?;
        let s = self.b.get(self.at..end).ok_or(ReadError::Corrupt)?;
        self.at = end;
        Ok(s)
    }
    fn u16(&mut self) -> Result<u16, ReadError> {
        let s = self.take(2)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }
    fn u32(&mut self) -> Result<u32, ReadError> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&mut self) -> Result<u64, ReadError> {
        let s = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(u64::from_le_bytes(a))
    }
    fn str(&mut self) -> Result<&'a str, ReadError> {
        let n = self.u16()? as usize;
        std::str::from_utf8(self.take(n)?).map_err(|_| ReadError::Corrupt)
    }
}

/// Reads the record at the start of `data`. Returns it and its total length.
pub fn decode(data: &[u8]) -> Result<(Record<'_>, usize), ReadError> {
    if data.len() < HEADER_LEN {
        return Err(ReadError::Truncated);
    }
    if data[0..4] != MAGIC {
        return Err(ReadError::Corrupt);
    }
    let kind = data[4];
    let len = u32::from_le_bytes([data[8], data[9], data[10], data[11]]) as usize;
    let crc = u32::from_le_bytes([data[12], data[13], data[14], data[15]]);
    if len > MAX_PAYLOAD {
        return Err(ReadError::Corrupt);
    }
    let Some(payload) = data.get(HEADER_LEN..HEADER_LEN + len) else {
        return Err(ReadError::Truncated);
    };
    let mut h = crc32fast::Hasher::new();
    h.update(&data[4..5]);
    h.update(payload);
    if h.finalize() != crc {
        return Err(ReadError::Corrupt);
    }
    let mut c = Cursor { b: payload, at: 0 };
    let rec = match kind {
        KIND_MESSAGE => {
            let id = c.str()?;
            let arrival = c.u64()?;
            let flags = c.take(1)?[0];
            let sender = c.str()?;
            let n = c.u32()? as usize;
            if n > payload.len() / 2 {
                return Err(ReadError::Corrupt);
            }
            let mut rcpts = Vec::with_capacity(n);
            for _ in 0..n {
                rcpts.push(c.str()?);
            }
            let clen = usize::try_from(c.u64()?).map_err(|_| ReadError::Corrupt)?;
            let content_offset = HEADER_LEN + c.at;
            let content = c.take(clen)?;
            Record::Message(MessageRecord {
                id,
                arrival,
                flags,
                sender,
                rcpts,
                content_offset,
                content,
            })
        }
        KIND_DELIVERED => {
            let id = c.str()?;
            let n = c.u32()? as usize;
            if n > payload.len() / 4 {
                return Err(ReadError::Corrupt);
            }
            let mut rcpts = Vec::with_capacity(n);
            for _ in 0..n {
                rcpts.push(c.u32()?);
            }
            Record::Delivered { id, rcpts }
        }
        KIND_DONE => Record::Done { id: c.str()? },
        KIND_STATE => Record::State(StateRecord {
            id: c.str()?,
            attempts: c.u32()?,
            flags: c.take(1)?[0],
            next_attempt: c.u64()?,
            last_error: c.str()?,
        }),
        _ => return Err(ReadError::Corrupt),
    };
    if c.at != payload.len() {
        return Err(ReadError::Corrupt);
    }
    Ok((rec, HEADER_LEN + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut out = Vec::new();
        let at = encode_message(
            &mut out,
            "ID1",
            1700000000,
            FLAG_8BIT,
            "s@x.test",
            &["a@y.test".into(), "b@y.test".into()],
            b"Received: x\r\n",
            b"body\r\n",
        );
        assert_eq!(&out[at..at + 13], b"Received: x\r\n");
        encode_delivered(&mut out, "ID1", &[1]);
        encode_state(
            &mut out,
            &StateRecord {
                id: "ID1",
                attempts: 3,
                flags: STATE_HELD,
                next_attempt: 1700000300,
                last_error: "451 4.4.1 no route",
            },
        );
        encode_done(&mut out, "ID1");
        out
    }

    #[test]
    fn round_trip() {
        let data = sample();
        let (r, n1) = decode(&data).unwrap();
        let Record::Message(m) = r else { panic!() };
        assert_eq!(m.id, "ID1");
        assert_eq!(m.arrival, 1700000000);
        assert_eq!(m.flags, FLAG_8BIT);
        assert_eq!(m.sender, "s@x.test");
        assert_eq!(m.rcpts, ["a@y.test", "b@y.test"]);
        assert_eq!(m.content, b"Received: x\r\nbody\r\n");
        assert_eq!(
            &data[m.content_offset..m.content_offset + m.content.len()],
            m.content
        );
        let (r, n2) = decode(&data[n1..]).unwrap();
        assert_eq!(
            r,
            Record::Delivered {
                id: "ID1",
                rcpts: vec![1]
            }
        );
        let (r, n3) = decode(&data[n1 + n2..]).unwrap();
        assert_eq!(
            r,
            Record::State(StateRecord {
                id: "ID1",
                attempts: 3,
                flags: STATE_HELD,
                next_attempt: 1700000300,
                last_error: "451 4.4.1 no route",
            })
        );
        let (r, n4) = decode(&data[n1 + n2 + n3..]).unwrap();
        assert_eq!(r, Record::Done { id: "ID1" });
        assert_eq!(n1 + n2 + n3 + n4, data.len());
    }

    #[test]
    fn every_truncation_is_detected() {
        let mut data = Vec::new();
        encode_message(
            &mut data,
            "ID1",
            1,
            0,
            "",
            &["a@y.test".into()],
            b"",
            b"hello\r\n",
        );
        for len in 0..data.len() {
            assert!(
                decode(&data[..len]).is_err(),
                "accepted a record cut at {len}"
            );
        }
    }

    #[test]
    fn every_bit_flip_is_detected() {
        let mut data = Vec::new();
        encode_message(
            &mut data,
            "ID1",
            1,
            0,
            "s@x.test",
            &["a@y.test".into()],
            b"H: v\r\n",
            b"hello\r\n",
        );
        for i in 0..data.len() {
            if (5..8).contains(&i) {
                continue; // reserved octets
            }
            let mut bad = data.clone();
            bad[i] ^= 0x01;
            assert!(decode(&bad).is_err(), "accepted a flip at {i}");
        }
    }
}
