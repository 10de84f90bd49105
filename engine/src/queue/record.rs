//! Spool records: the on-disk format of the append-only spool segments.
//!
//! ```text
//! header (20 octets): magic "BWR2" | kind u8 | 0 0 0 | payload length u64 LE | CRC-32 u32 LE
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
//! Strings are u16 length + UTF-8, cut on a character boundary at 65,535 octets. A torn
//! write (crash mid-append) leaves a record whose length runs past the end of the file or
//! whose CRC does not match; recovery sets such a stretch aside and goes on with the next
//! valid record.
//!
//! Records of the first format ("BWR1": a 16-octet header with a u32 payload length) are
//! still read, so a spool written by an older release is recovered.

pub const MAGIC: [u8; 4] = *b"BWR2";
/// The first format's magic, still read.
pub const MAGIC_V1: [u8; 4] = *b"BWR1";
pub const HEADER_LEN: usize = 20;
const HEADER_LEN_V1: usize = 16;
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

/// The longest prefix of `s` of at most `max` octets that ends on a character boundary.
pub fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let s = cut(s, u16::MAX as usize);
    out.extend_from_slice(&(s.len() as u16).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Begins a record; returns the offset of its header for [`seal`].
fn begin(out: &mut Vec<u8>, kind: u8) -> usize {
    let start = out.len();
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&[kind, 0, 0, 0]);
    out.extend_from_slice(&[0u8; 12]);
    start
}

fn seal(out: &mut [u8], start: usize) {
    let tail = crc32fast::Hasher::new();
    seal_with(&mut out[start..], 0, &tail);
}

/// Fills in the length and CRC of the record that starts `head`, whose payload is the
/// rest of `head` followed by `tail_len` octets whose CRC is `tail` (content streamed to
/// disk after the head; none for records built whole).
fn seal_with(head: &mut [u8], tail_len: u64, tail: &crc32fast::Hasher) {
    let payload_len = (head.len() - HEADER_LEN) as u64 + tail_len;
    let mut h = crc32fast::Hasher::new();
    h.update(&head[4..5]);
    h.update(&head[HEADER_LEN..]);
    h.combine(tail);
    head[8..16].copy_from_slice(&payload_len.to_le_bytes());
    head[16..20].copy_from_slice(&h.finalize().to_le_bytes());
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

/// The head of a `Message` record whose content is written after it in pieces (a
/// message streamed to disk as it arrives): header and envelope, up to and including
/// the content length. Its length and CRC are filled in by [`seal_message_head`] once
/// the content is complete; the head's size does not depend on them.
pub fn message_head(id: &str, arrival: u64, flags: u8, sender: &str, rcpts: &[String]) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        HEADER_LEN + 64 + sender.len() + rcpts.iter().map(|r| r.len() + 2).sum::<usize>(),
    );
    begin(&mut out, KIND_MESSAGE);
    put_str(&mut out, id);
    out.extend_from_slice(&arrival.to_le_bytes());
    out.push(flags);
    put_str(&mut out, sender);
    out.extend_from_slice(&(rcpts.len() as u32).to_le_bytes());
    for r in rcpts {
        put_str(&mut out, r);
    }
    out.extend_from_slice(&0u64.to_le_bytes());
    out
}

/// Completes a head from [`message_head`] for `content_len` octets of content whose
/// CRC-32 is `content`.
pub fn seal_message_head(head: &mut [u8], content_len: u64, content: &crc32fast::Hasher) {
    let at = head.len() - 8;
    head[at..].copy_from_slice(&content_len.to_le_bytes());
    seal_with(head, content_len, content);
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

/// A `Message` payload up to its content: id, arrival, flags, sender, recipients and the
/// content's length.
type Envelope<'a> = (&'a str, u64, u8, &'a str, Vec<&'a str>, u64);

fn envelope<'a>(c: &mut Cursor<'a>) -> Result<Envelope<'a>, ReadError> {
    let id = c.str()?;
    let arrival = c.u64()?;
    let flags = c.take(1)?[0];
    let sender = c.str()?;
    let n = c.u32()? as usize;
    // Each recipient takes at least its 2-octet length.
    if n > (c.b.len() - c.at) / 2 {
        return Err(ReadError::Corrupt);
    }
    let mut rcpts = Vec::with_capacity(n);
    for _ in 0..n {
        rcpts.push(c.str()?);
    }
    Ok((id, arrival, flags, sender, rcpts, c.u64()?))
}

/// Reads the record at the start of `data`. Returns it and its total length.
pub fn decode(data: &[u8]) -> Result<(Record<'_>, usize), ReadError> {
    if data.len() < HEADER_LEN_V1 {
        return Err(ReadError::Truncated);
    }
    let (header_len, len, crc) = if data[0..4] == MAGIC {
        if data.len() < HEADER_LEN {
            return Err(ReadError::Truncated);
        }
        let mut len = [0u8; 8];
        len.copy_from_slice(&data[8..16]);
        let crc = u32::from_le_bytes([data[16], data[17], data[18], data[19]]);
        (HEADER_LEN, u64::from_le_bytes(len), crc)
    } else if data[0..4] == MAGIC_V1 {
        let len = u32::from_le_bytes([data[8], data[9], data[10], data[11]]);
        let crc = u32::from_le_bytes([data[12], data[13], data[14], data[15]]);
        (HEADER_LEN_V1, u64::from(len), crc)
    } else {
        return Err(ReadError::Corrupt);
    };
    if data[5..8] != [0, 0, 0] {
        return Err(ReadError::Corrupt);
    }
    let kind = data[4];
    let len = match usize::try_from(len) {
        Ok(l) if l <= MAX_PAYLOAD => l,
        _ => return Err(ReadError::Corrupt),
    };
    let Some(payload) = data.get(header_len..header_len + len) else {
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
            let (id, arrival, flags, sender, rcpts, clen) = envelope(&mut c)?;
            let clen = usize::try_from(clen).map_err(|_| ReadError::Corrupt)?;
            let content_offset = header_len + c.at;
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
    Ok((rec, header_len + len))
}

/// A `Message` record read without its content: what recovery needs of a large message,
/// whose content it checks in pieces instead of holding it.
#[derive(Debug)]
pub struct MessageHead {
    pub id: String,
    pub arrival: u64,
    pub flags: u8,
    pub sender: String,
    pub rcpts: Vec<String>,
    /// Offset of the content from the start of the record.
    pub content_offset: usize,
    pub content_len: u64,
    /// The CRC the header states, and the CRC of everything before the content: feed it
    /// the content and compare.
    pub crc: u32,
    pub crc_so_far: crc32fast::Hasher,
}

/// Reads the header and envelope of a `Message` record from `head`, the beginning of the
/// record (it must reach the content). The content itself is not looked at.
pub fn decode_message_head(head: &[u8]) -> Result<MessageHead, ReadError> {
    let total = stated_len(head).ok_or(ReadError::Truncated)?;
    let header_len = if head[0..4] == MAGIC {
        HEADER_LEN
    } else {
        HEADER_LEN_V1
    };
    if head[4] != KIND_MESSAGE || head[5..8] != [0, 0, 0] {
        return Err(ReadError::Corrupt);
    }
    let crc = if header_len == HEADER_LEN {
        u32::from_le_bytes([head[16], head[17], head[18], head[19]])
    } else {
        u32::from_le_bytes([head[12], head[13], head[14], head[15]])
    };
    let mut c = Cursor {
        b: &head[header_len..],
        at: 0,
    };
    let (id, arrival, flags, sender, rcpts, content_len) = envelope(&mut c)?;
    let content_offset = header_len + c.at;
    if (content_offset as u64).checked_add(content_len) != Some(total) {
        return Err(ReadError::Corrupt);
    }
    let mut crc_so_far = crc32fast::Hasher::new();
    crc_so_far.update(&head[4..5]);
    crc_so_far.update(&head[header_len..content_offset]);
    Ok(MessageHead {
        id: id.to_string(),
        arrival,
        flags,
        sender: sender.to_string(),
        rcpts: rcpts.iter().map(|r| r.to_string()).collect(),
        content_offset,
        content_len,
        crc,
        crc_so_far,
    })
}

/// The length of the record at the start of `data` as its header states it, when the
/// header is complete and plausible (for readers that see only a record's beginning).
pub fn stated_len(data: &[u8]) -> Option<u64> {
    if data.len() >= HEADER_LEN && data[0..4] == MAGIC {
        let mut len = [0u8; 8];
        len.copy_from_slice(&data[8..16]);
        return Some(HEADER_LEN as u64 + u64::from_le_bytes(len));
    }
    if data.len() >= HEADER_LEN_V1 && data[0..4] == MAGIC_V1 {
        let len = u32::from_le_bytes([data[8], data[9], data[10], data[11]]);
        return Some(HEADER_LEN_V1 as u64 + u64::from(len));
    }
    None
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
    fn a_streamed_head_seals_to_the_same_record_as_a_whole_one() {
        let rcpts = ["a@y.test".to_string()];
        let mut whole = Vec::new();
        encode_message(
            &mut whole,
            "ID9",
            5,
            0,
            "s@x.test",
            &rcpts,
            b"H: v\r\n",
            b"body\r\n",
        );
        let mut head = message_head("ID9", 5, 0, "s@x.test", &rcpts);
        let mut crc = crc32fast::Hasher::new();
        crc.update(b"H: v\r\n");
        crc.update(b"body\r\n");
        seal_message_head(&mut head, 12, &crc);
        let mut streamed = head;
        streamed.extend_from_slice(b"H: v\r\nbody\r\n");
        assert_eq!(streamed, whole);
        assert_eq!(stated_len(&streamed), Some(whole.len() as u64));
    }

    #[test]
    fn a_message_longer_than_four_gib_states_its_length() {
        // The length field is 64 bits wide: a record past u32::MAX octets is not cut.
        let mut head = message_head("BIG", 1, 0, "", &["a@y.test".to_string()]);
        let len = (u32::MAX as u64) + 10;
        seal_message_head(&mut head, len, &crc32fast::Hasher::new());
        assert_eq!(stated_len(&head), Some(head.len() as u64 + len));
        assert_eq!(decode(&head), Err(ReadError::Truncated));
    }

    #[test]
    fn a_message_head_is_read_without_its_content_and_its_crc_checks_out() {
        let mut data = Vec::new();
        encode_message(
            &mut data,
            "ID7",
            42,
            FLAG_8BIT,
            "s@x.test",
            &["a@y.test".into(), "b@y.test".into()],
            b"H: v\r\n",
            b"content\r\n",
        );
        let mut head = decode_message_head(&data[..data.len() - 4]).unwrap();
        assert_eq!(
            (head.id.as_str(), head.arrival, head.flags),
            ("ID7", 42, FLAG_8BIT)
        );
        assert_eq!(head.rcpts, ["a@y.test", "b@y.test"]);
        assert_eq!(&data[head.content_offset..], b"H: v\r\ncontent\r\n");
        assert_eq!(head.content_len, 15);
        head.crc_so_far.update(&data[head.content_offset..]);
        assert_eq!(head.crc_so_far.clone().finalize(), head.crc);
        // A flipped content octet shows in the CRC, not in the head.
        let mut bad = data.clone();
        let n = bad.len() - 3;
        bad[n] ^= 1;
        let mut h = decode_message_head(&bad).unwrap();
        h.crc_so_far.update(&bad[h.content_offset..]);
        assert_ne!(h.crc_so_far.finalize(), h.crc);
        // Not a message, or a head cut before its content starts.
        let mut done = Vec::new();
        encode_done(&mut done, "ID7");
        assert!(decode_message_head(&done).is_err());
        assert!(decode_message_head(&data[..30]).is_err());
    }

    #[test]
    fn records_of_the_first_format_are_still_read() {
        // A v1 Done record for "ID1": magic, kind 3, zeros, u32 length, CRC.
        let payload = [3u8, 0, b'I', b'D', b'1'];
        let mut h = crc32fast::Hasher::new();
        h.update(&[KIND_DONE]);
        h.update(&payload);
        let mut v1 = b"BWR1".to_vec();
        v1.extend_from_slice(&[KIND_DONE, 0, 0, 0]);
        v1.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        v1.extend_from_slice(&h.finalize().to_le_bytes());
        v1.extend_from_slice(&payload);
        assert_eq!(decode(&v1), Ok((Record::Done { id: "ID1" }, v1.len())));
    }

    #[test]
    fn long_strings_are_cut_on_a_character_boundary() {
        // 'é' is two octets: 65,535 would split the last one.
        let long = "é".repeat(40_000);
        let mut out = Vec::new();
        encode_state(
            &mut out,
            &StateRecord {
                id: "ID1",
                attempts: 1,
                flags: 0,
                next_attempt: 0,
                last_error: &long,
            },
        );
        let (Record::State(st), _) = decode(&out).unwrap() else {
            panic!()
        };
        assert_eq!(st.last_error.len(), 65_534);
        assert!(st.last_error.chars().all(|c| c == 'é'));
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
            let mut bad = data.clone();
            bad[i] ^= 0x01;
            assert!(decode(&bad).is_err(), "accepted a flip at {i}");
        }
    }
}
