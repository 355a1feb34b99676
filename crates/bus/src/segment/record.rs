//! On-disk record framing: one [`Message`] plus its sequence number and
//! publish time, checksummed with CRC32C.
//!
//! # Layout (all integers little-endian)
//!
//! ```text
//! header (12 bytes)
//!   marker    [u8; 4]  F5 5E 9A 1C   (0xF5 never occurs in UTF-8 text)
//!   body_len  u32      bytes of the body below
//!   crc       u32      CRC32C of body_len's 4 bytes followed by the body
//! body (body_len bytes)
//!   seq           u64
//!   published_at  u64  unix time in nanoseconds
//!   subject_len   u32, subject (UTF-8)
//!   header_count  u32, then per header: key_len u32, key, value_len u32, value (UTF-8)
//!   payload_len   u32, payload
//! ```
//!
//! # What it guarantees
//!
//! - [`decode`] accepts a frame only if the marker, the length bounds and the
//!   CRC all check out and the body parses exactly (no trailing bytes, valid
//!   UTF-8); anything else is a typed [`RecordError`], never a panic.
//! - No allocation is sized from an untrusted length: every length is checked
//!   against [`MAX_BODY_LEN`] and against the bytes actually present first.
//! - The CRC covers the length field, so a flipped length is caught as
//!   `BadCrc` (or `Truncated` / `BadLength`) rather than misframing silently.
//!
//! # What it does not guarantee
//!
//! - Authenticity: CRC32C detects accidental corruption, not tampering. A
//!   payload that itself contains a valid encoded record can be mistaken for
//!   one when recovery resynchronises after corruption right before it
//!   (recovery additionally requires increasing sequence numbers).

use crate::{Headers, Message};
use bytes::Bytes;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Marks the start of every record; the byte 0xF5 never occurs in UTF-8.
pub const RECORD_MAGIC: [u8; 4] = [0xF5, 0x5E, 0x9A, 0x1C];
/// Bytes before the body: marker, body length, CRC.
pub const RECORD_HEADER_LEN: usize = 12;
/// Smallest body: seq, time, and the subject / header-count / payload lengths.
pub const MIN_BODY_LEN: usize = 8 + 8 + 4 + 4 + 4;
/// Largest body this format reads or writes (64 MiB).
pub const MAX_BODY_LEN: usize = 64 << 20;
/// Longest subject (64 KiB).
pub const MAX_SUBJECT_LEN: usize = 64 << 10;
/// Most headers on one message.
pub const MAX_HEADERS: usize = 65_535;

/// Why bytes are not a valid record, or a message cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Fewer bytes than the header or the declared length need.
    #[error("truncated record: needs {needed} bytes, {available} available")]
    Truncated { needed: usize, available: usize },
    /// The first four bytes are not [`RECORD_MAGIC`].
    #[error("bad record marker {found:02x?}")]
    BadMagic { found: [u8; 4] },
    /// The declared body length is outside `MIN_BODY_LEN..=MAX_BODY_LEN`.
    #[error("record body length {len} outside {MIN_BODY_LEN}..={MAX_BODY_LEN}")]
    BadLength { len: usize },
    /// The checksum does not match the bytes.
    #[error("record checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BadCrc { stored: u32, computed: u32 },
    /// The checksum matches but the body does not parse (a bug or a foreign
    /// format, not bit rot).
    #[error("malformed record: {0}")]
    Malformed(&'static str),
    /// A message field exceeds what the format can hold (encoding side).
    #[error("{what} of {len} exceeds the limit of {max}")]
    TooLarge {
        what: &'static str,
        len: usize,
        max: usize,
    },
}

/// A record decoded in place: borrows from the frame it was decoded from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordRef<'a> {
    pub seq: u64,
    pub published_at: SystemTime,
    pub subject: &'a str,
    pub headers: Vec<(&'a str, &'a str)>,
    pub payload: &'a [u8],
}

impl RecordRef<'_> {
    /// Bytes this message counts against limits ([`Message::size`]).
    pub fn message_size(&self) -> u64 {
        let headers: usize = self.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
        (self.subject.len() + headers + self.payload.len()) as u64
    }
}

/// An owned record, as read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub published_at: SystemTime,
    pub subject: String,
    pub headers: Headers,
    pub payload: Bytes,
}

impl Record {
    /// Decodes one whole frame, sharing `frame`'s buffer for the payload.
    pub fn from_frame(frame: &Bytes) -> Result<Record, RecordError> {
        let (r, used) = decode(frame)?;
        if used != frame.len() {
            return Err(RecordError::Malformed("bytes after the record"));
        }
        Ok(Record {
            seq: r.seq,
            published_at: r.published_at,
            subject: r.subject.to_owned(),
            headers: r
                .headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            payload: if r.payload.is_empty() {
                Bytes::new()
            } else {
                frame.slice_ref(r.payload)
            },
        })
    }

    /// The stored message (without seq and time).
    pub fn into_message(self) -> Message {
        Message {
            subject: self.subject,
            headers: self.headers,
            payload: self.payload,
        }
    }

    /// The record as a delivery with the given `delivery_count`.
    pub fn into_received(self, delivery_count: u32) -> crate::Received {
        crate::Received {
            seq: self.seq,
            subject: self.subject,
            headers: self.headers,
            payload: self.payload,
            published_at: self.published_at,
            delivery_count,
        }
    }

    /// Bytes this message counts against limits ([`Message::size`]).
    pub fn message_size(&self) -> u64 {
        let headers: usize = self.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
        (self.subject.len() + headers + self.payload.len()) as u64
    }
}

/// Bytes `message` takes on disk (header included), or why it cannot be
/// stored. Checks every limit [`encode`] checks.
pub fn encoded_len(message: &Message) -> Result<usize, RecordError> {
    check_len("subject", message.subject.len(), MAX_SUBJECT_LEN)?;
    check_len("header count", message.headers.len(), MAX_HEADERS)?;
    let mut body = MIN_BODY_LEN + message.subject.len() + message.payload.len();
    for (k, v) in &message.headers {
        body = body.saturating_add(8 + k.len() + v.len());
    }
    check_len("record body", body, MAX_BODY_LEN)?;
    Ok(RECORD_HEADER_LEN + body)
}

fn check_len(what: &'static str, len: usize, max: usize) -> Result<(), RecordError> {
    if len > max {
        return Err(RecordError::TooLarge { what, len, max });
    }
    Ok(())
}

/// Unix nanoseconds of `t`, clamped to `0..=u64::MAX`.
pub fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn from_unix_nanos(nanos: u64) -> SystemTime {
    UNIX_EPOCH
        .checked_add(Duration::from_nanos(nanos))
        .unwrap_or(UNIX_EPOCH)
}

/// Appends the frame of `message` with `seq` and `published_at` to `out` and
/// returns its length. On error nothing is appended.
pub fn encode(
    seq: u64,
    published_at: SystemTime,
    message: &Message,
    out: &mut Vec<u8>,
) -> Result<usize, RecordError> {
    let len = encoded_len(message)?;
    let start = out.len();
    out.reserve(len);
    let body_len = (len - RECORD_HEADER_LEN) as u32;
    out.extend_from_slice(&RECORD_MAGIC);
    out.extend_from_slice(&body_len.to_le_bytes());
    out.extend_from_slice(&[0; 4]); // CRC, filled below
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&unix_nanos(published_at).to_le_bytes());
    put_bytes(out, message.subject.as_bytes());
    out.extend_from_slice(&(message.headers.len() as u32).to_le_bytes());
    for (k, v) in &message.headers {
        put_bytes(out, k.as_bytes());
        put_bytes(out, v.as_bytes());
    }
    put_bytes(out, &message.payload);
    debug_assert_eq!(out.len() - start, len);
    let crc = crc32c::crc32c_append(
        crc32c::crc32c(&body_len.to_le_bytes()),
        &out[start + RECORD_HEADER_LEN..],
    );
    out[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
    Ok(len)
}

/// Lengths are checked by `encoded_len` before anything is written.
fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Length of the whole frame announced by a record header (`header` must hold
/// at least [`RECORD_HEADER_LEN`] bytes). Checks the marker and the length
/// bounds, not the CRC.
pub fn frame_len(header: &[u8]) -> Result<usize, RecordError> {
    let Some(h) = header.get(..RECORD_HEADER_LEN) else {
        return Err(RecordError::Truncated {
            needed: RECORD_HEADER_LEN,
            available: header.len(),
        });
    };
    let magic = [h[0], h[1], h[2], h[3]];
    if magic != RECORD_MAGIC {
        return Err(RecordError::BadMagic { found: magic });
    }
    let body_len = u32::from_le_bytes([h[4], h[5], h[6], h[7]]) as usize;
    if !(MIN_BODY_LEN..=MAX_BODY_LEN).contains(&body_len) {
        return Err(RecordError::BadLength { len: body_len });
    }
    Ok(RECORD_HEADER_LEN + body_len)
}

/// Decodes the record at the start of `buf`; returns it and the frame length
/// (bytes after the frame are ignored).
pub fn decode(buf: &[u8]) -> Result<(RecordRef<'_>, usize), RecordError> {
    let len = frame_len(buf)?;
    let Some(frame) = buf.get(..len) else {
        return Err(RecordError::Truncated {
            needed: len,
            available: buf.len(),
        });
    };
    let stored = u32::from_le_bytes([frame[8], frame[9], frame[10], frame[11]]);
    let computed = crc32c::crc32c_append(crc32c::crc32c(&frame[4..8]), &frame[RECORD_HEADER_LEN..]);
    if stored != computed {
        return Err(RecordError::BadCrc { stored, computed });
    }
    let mut r = Reader(&frame[RECORD_HEADER_LEN..]);
    let seq = r.u64()?;
    let published_at = from_unix_nanos(r.u64()?);
    let subject = r.str()?;
    let count = r.u32()? as usize;
    // Each header takes at least 8 bytes: bounds the allocation below.
    if count > MAX_HEADERS || count > r.0.len() / 8 {
        return Err(RecordError::Malformed("header count exceeds the record"));
    }
    let mut headers = Vec::with_capacity(count);
    for _ in 0..count {
        let k = r.str()?;
        let v = r.str()?;
        headers.push((k, v));
    }
    let payload = r.bytes()?;
    if !r.0.is_empty() {
        return Err(RecordError::Malformed("bytes after the payload"));
    }
    Ok((
        RecordRef {
            seq,
            published_at,
            subject,
            headers,
            payload,
        },
        len,
    ))
}

/// A bounds-checked cursor over a body.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        if n > self.0.len() {
            return Err(RecordError::Malformed("field length exceeds the record"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, RecordError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, RecordError> {
        let b = self.take(8)?;
        let mut a = [0; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn bytes(&mut self) -> Result<&'a [u8], RecordError> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    fn str(&mut self) -> Result<&'a str, RecordError> {
        std::str::from_utf8(self.bytes()?).map_err(|_| RecordError::Malformed("invalid UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn msg() -> Message {
        Message {
            subject: "webhook.orders".into(),
            headers: vec![("ce-id".into(), "42".into()), ("x".into(), String::new())],
            payload: Bytes::from_static(b"{\"n\":1}"),
        }
    }

    fn at(nanos: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(nanos)
    }

    fn frame(seq: u64) -> Vec<u8> {
        let mut out = Vec::new();
        encode(seq, at(1_700_000_000_123_456_789), &msg(), &mut out).unwrap();
        out
    }

    #[test]
    fn roundtrip() {
        let mut out = vec![7u8]; // encoding appends
        let len = encode(9, at(1_700_000_000_123_456_789), &msg(), &mut out).unwrap();
        assert_eq!(len, out.len() - 1);
        assert_eq!(len, encoded_len(&msg()).unwrap());
        let (r, used) = decode(&out[1..]).unwrap();
        assert_eq!(used, len);
        assert_eq!(r.seq, 9);
        assert_eq!(r.published_at, at(1_700_000_000_123_456_789));
        assert_eq!(r.subject, "webhook.orders");
        assert_eq!(r.headers, vec![("ce-id", "42"), ("x", "")]);
        assert_eq!(r.payload, b"{\"n\":1}");
        assert_eq!(r.message_size(), msg().size() as u64);
        let owned = Record::from_frame(&Bytes::copy_from_slice(&out[1..])).unwrap();
        assert_eq!(owned.message_size(), msg().size() as u64);
        assert_eq!(owned.into_message(), msg());
    }

    #[test]
    fn two_frames_back_to_back() {
        let mut buf = frame(1);
        buf.extend(frame(2));
        let (a, n) = decode(&buf).unwrap();
        let (b, _) = decode(&buf[n..]).unwrap();
        assert_eq!((a.seq, b.seq), (1, 2));
    }

    #[test]
    fn typed_errors() {
        let f = frame(1);
        assert_eq!(
            decode(&f[..5]),
            Err(RecordError::Truncated {
                needed: 12,
                available: 5
            })
        );
        assert_eq!(
            decode(&f[..f.len() - 1]),
            Err(RecordError::Truncated {
                needed: f.len(),
                available: f.len() - 1
            })
        );
        assert_eq!(
            decode(&[0u8; 64]),
            Err(RecordError::BadMagic { found: [0; 4] })
        );
        let mut bad = f.clone();
        bad[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            decode(&bad),
            Err(RecordError::BadLength {
                len: u32::MAX as usize
            })
        );
        let mut bad = f.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(matches!(decode(&bad), Err(RecordError::BadCrc { .. })));
        // A length flipped to another plausible value is caught by the CRC.
        let mut bad = f.clone();
        bad[4] -= 1;
        assert!(matches!(decode(&bad), Err(RecordError::BadCrc { .. })));
    }

    /// A frame with a correct CRC over a body that does not parse.
    fn forged(body: &[u8]) -> Vec<u8> {
        let len = (body.len() as u32).to_le_bytes();
        let crc = crc32c::crc32c_append(crc32c::crc32c(&len), body);
        let mut f = RECORD_MAGIC.to_vec();
        f.extend_from_slice(&len);
        f.extend_from_slice(&crc.to_le_bytes());
        f.extend_from_slice(body);
        f
    }

    #[test]
    fn malformed_bodies_with_valid_crc() {
        let mut body = vec![0u8; 16];
        body.extend_from_slice(&u32::MAX.to_le_bytes()); // subject length
        body.extend_from_slice(&[0; 8]);
        assert_eq!(
            decode(&forged(&body)),
            Err(RecordError::Malformed("field length exceeds the record"))
        );
        let mut body = vec![0u8; 16];
        body.extend_from_slice(&0u32.to_le_bytes());
        body.extend_from_slice(&1_000_000u32.to_le_bytes()); // header count
        body.extend_from_slice(&[0; 4]);
        assert_eq!(
            decode(&forged(&body)),
            Err(RecordError::Malformed("header count exceeds the record"))
        );
        let mut body = vec![0u8; 16];
        body.extend_from_slice(&1u32.to_le_bytes());
        body.push(0xFF); // not UTF-8
        body.extend_from_slice(&[0; 8]);
        assert_eq!(
            decode(&forged(&body)),
            Err(RecordError::Malformed("invalid UTF-8"))
        );
        let mut body = vec![0u8; MIN_BODY_LEN];
        body.push(1);
        assert_eq!(
            decode(&forged(&body)),
            Err(RecordError::Malformed("bytes after the payload"))
        );
    }

    #[test]
    fn encode_limits() {
        let mut m = msg();
        m.subject = "s".repeat(MAX_SUBJECT_LEN + 1);
        let mut out = Vec::new();
        assert_eq!(
            encode(1, SystemTime::now(), &m, &mut out),
            Err(RecordError::TooLarge {
                what: "subject",
                len: MAX_SUBJECT_LEN + 1,
                max: MAX_SUBJECT_LEN
            })
        );
        assert!(out.is_empty());
        let m = Message {
            subject: "s".into(),
            headers: Vec::new(),
            payload: Bytes::from(vec![0; MAX_BODY_LEN]),
        };
        assert!(matches!(
            encoded_len(&m),
            Err(RecordError::TooLarge {
                what: "record body",
                ..
            })
        ));
    }

    #[test]
    fn times_before_the_epoch_clamp() {
        let mut out = Vec::new();
        encode(1, UNIX_EPOCH - Duration::from_secs(5), &msg(), &mut out).unwrap();
        assert_eq!(decode(&out).unwrap().0.published_at, UNIX_EPOCH);
    }

    fn arb_message() -> impl Strategy<Value = Message> {
        (
            ".{0,40}",
            proptest::collection::vec((".{0,12}", ".{0,30}"), 0..6),
            proptest::collection::vec(any::<u8>(), 0..600),
        )
            .prop_map(|(subject, headers, payload)| Message {
                subject,
                headers,
                payload: Bytes::from(payload),
            })
    }

    proptest! {
        #[test]
        fn random_records_roundtrip(seq in any::<u64>(), nanos in any::<u64>(), m in arb_message()) {
            let mut out = Vec::new();
            let len = encode(seq, at(nanos), &m, &mut out).unwrap();
            let rec = Record::from_frame(&Bytes::from(out)).unwrap();
            prop_assert_eq!(len, encoded_len(&m).unwrap());
            prop_assert_eq!(rec.seq, seq);
            prop_assert_eq!(rec.published_at, at(nanos));
            prop_assert_eq!(rec.into_message(), m);
        }

        #[test]
        fn random_bytes_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&buf);
            let mut framed = RECORD_MAGIC.to_vec();
            framed.extend_from_slice(&buf);
            let _ = decode(&framed);
        }

        #[test]
        fn flipped_bit_is_detected(m in arb_message(), pos in any::<prop::sample::Index>(), bit in 0u8..8) {
            let mut out = Vec::new();
            encode(1, at(5), &m, &mut out).unwrap();
            let i = pos.index(out.len());
            out[i] ^= 1 << bit;
            prop_assert!(decode(&out).is_err());
        }
    }
}
