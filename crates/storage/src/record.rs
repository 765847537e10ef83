//! On-disk framing of log records and segment headers.
//!
//! Segment file `<seq:020>.seg`:
//!
//! ```text
//! header (64 bytes, little endian):
//!   0  magic        8  b"RKVLOG\0\0"
//!   8  version      4  (LOG_FORMAT_VERSION; version 1 is still read)
//!   12 header_len   4  (64)
//!   16 cluster_id   8
//!   24 node_id      8
//!   32 seq          8  (sequence number, also in the file name)
//!   40 first_index  8  (index the next entry had when the segment was opened)
//!   48 reserved     12 (zero)
//!   60 crc32c       4  (over bytes 0..60)
//! records, back to back:
//!   0  len          4  (length of the body: 17 + data length)
//!   4  crc32c       4  (over the len field and the body)
//!   8  body: kind u8, index u64, term u64, data [len - 17]
//!   8+len  end      1  (RECORD_END; version 2 only)
//! ```
//!
//! The end byte is what tells a torn write from a damaged record. Segments are preallocated
//! with zeros and a write reaches the disk as a prefix, so a record cut by a crash ends in a
//! zero byte where its end byte belongs; a complete record damaged on the disk keeps a
//! non-zero end byte (one flipped bit cannot make `RECORD_END` zero). Without it (version 1)
//! a record whose data ends in zero bytes, a hard state record for one, reads the same
//! whether it was cut while being written or synced and damaged later.
#![allow(missing_docs)] // fields mirror the format table above

use bytes::Bytes;

/// Magic number at the start of every log segment.
pub const SEGMENT_MAGIC: [u8; 8] = *b"RKVLOG\0\0";
/// Magic number at the start of every snapshot file.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"RKVSNAP\0";
/// The log segment format version this build writes.
pub const LOG_FORMAT_VERSION: u32 = 2;
/// The first log segment format version: records without the end byte. Still read; a log
/// whose last segment has it continues in a new segment of the current version.
pub const LOG_FORMAT_VERSION_1: u32 = 1;
/// The snapshot file format version this build reads and writes.
pub const SNAPSHOT_FORMAT_VERSION: u32 = 1;
/// The last byte of every version 2 record. Never zero, and no single flipped bit makes it
/// zero.
pub const RECORD_END: u8 = 0xA5;
/// Size of the segment header.
pub const SEGMENT_HEADER_LEN: usize = 64;
/// Size of the record frame header (len + crc).
pub const FRAME_HEADER_LEN: usize = 8;
/// Size of the fixed part of a record body (kind + index + term).
pub const BODY_FIXED_LEN: usize = 17;
/// Largest `kind` value callers may use; larger values are reserved.
pub const MAX_USER_KIND: u8 = 0xEF;
/// Internal record kind: hard state (data = term, voted_for, commit).
pub(crate) const KIND_HARD_STATE: u8 = 0xFF;
/// Internal record kind: log reset after a snapshot (index = new last index).
pub(crate) const KIND_RESET: u8 = 0xFE;

/// Segment header fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub version: u32,
    pub cluster_id: u64,
    pub node_id: u64,
    pub seq: u64,
    pub first_index: u64,
}

/// Why a segment header could not be decoded.
#[derive(Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// Fewer than 64 bytes, or all zeros (a torn or never-written header).
    Incomplete,
    BadMagic,
    UnknownVersion(u32),
    BadCrc,
}

pub(crate) fn u32_at(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(a)
}

pub(crate) fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut h = [0u8; SEGMENT_HEADER_LEN];
        h[0..8].copy_from_slice(&SEGMENT_MAGIC);
        h[8..12].copy_from_slice(&self.version.to_le_bytes());
        h[12..16].copy_from_slice(&(SEGMENT_HEADER_LEN as u32).to_le_bytes());
        h[16..24].copy_from_slice(&self.cluster_id.to_le_bytes());
        h[24..32].copy_from_slice(&self.node_id.to_le_bytes());
        h[32..40].copy_from_slice(&self.seq.to_le_bytes());
        h[40..48].copy_from_slice(&self.first_index.to_le_bytes());
        let crc = crc32c::crc32c(&h[0..60]);
        h[60..64].copy_from_slice(&crc.to_le_bytes());
        h
    }

    pub fn decode(b: &[u8]) -> Result<SegmentHeader, HeaderError> {
        if b.len() < SEGMENT_HEADER_LEN || b[..SEGMENT_HEADER_LEN].iter().all(|&x| x == 0) {
            return Err(HeaderError::Incomplete);
        }
        if b[0..8] != SEGMENT_MAGIC {
            return Err(HeaderError::BadMagic);
        }
        let version = u32_at(b, 8);
        if version != LOG_FORMAT_VERSION && version != LOG_FORMAT_VERSION_1 {
            return Err(HeaderError::UnknownVersion(version));
        }
        if crc32c::crc32c(&b[0..60]) != u32_at(b, 60) || u32_at(b, 12) != SEGMENT_HEADER_LEN as u32 {
            return Err(HeaderError::BadCrc);
        }
        Ok(SegmentHeader {
            version,
            cluster_id: u64_at(b, 16),
            node_id: u64_at(b, 24),
            seq: u64_at(b, 32),
            first_index: u64_at(b, 40),
        })
    }
}

/// Append one framed record to `buf`, in the current format ([`LOG_FORMAT_VERSION`]).
pub fn encode_record(buf: &mut Vec<u8>, kind: u8, index: u64, term: u64, data: &[u8]) {
    let body_len = (BODY_FIXED_LEN + data.len()) as u32;
    let start = buf.len();
    buf.extend_from_slice(&body_len.to_le_bytes());
    buf.extend_from_slice(&[0u8; 4]);
    buf.push(kind);
    buf.extend_from_slice(&index.to_le_bytes());
    buf.extend_from_slice(&term.to_le_bytes());
    buf.extend_from_slice(data);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&buf[start..start + 4]), &buf[start + 8..]);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    buf.push(RECORD_END);
}

/// Bytes a record frame adds around its body in segments of `version`.
fn frame_overhead(version: u32) -> usize {
    if version == LOG_FORMAT_VERSION_1 { FRAME_HEADER_LEN } else { FRAME_HEADER_LEN + 1 }
}

/// One decoded record; `data` is a zero-copy slice of the segment buffer.
#[derive(Debug, Clone)]
pub struct RawRecord {
    pub kind: u8,
    pub index: u64,
    pub term: u64,
    pub data: Bytes,
}

/// Result of decoding at one offset.
#[derive(Debug)]
pub enum Decoded {
    /// A valid record; the next one starts at `next`.
    Record { rec: RawRecord, next: usize },
    /// Exactly at the end of the buffer.
    End,
    /// The frame header or the body runs past the end of the buffer.
    Incomplete,
    /// The length field is zero (an unwritten, zero-filled region).
    ZeroLen,
    /// The length field is impossible (too small or above the maximum).
    BadLen(u32),
    /// A complete record whose checksum (or, in version 2, end byte) does not match; it would
    /// end at `end`.
    BadCrc { end: usize },
}

/// Decode the record starting at `off` in `buf`, a segment of format `version`.
pub fn decode_record(buf: &Bytes, off: usize, max_body: u32, version: u32) -> Decoded {
    let rest = buf.len().saturating_sub(off);
    if rest == 0 {
        return Decoded::End;
    }
    if rest < FRAME_HEADER_LEN {
        return Decoded::Incomplete;
    }
    let len = u32_at(buf, off);
    if len == 0 {
        return Decoded::ZeroLen;
    }
    if (len as usize) < BODY_FIXED_LEN || len > max_body {
        return Decoded::BadLen(len);
    }
    let body_end = off + FRAME_HEADER_LEN + len as usize;
    let end = off + frame_overhead(version) + len as usize;
    if end > buf.len() {
        return Decoded::Incomplete;
    }
    if !crc_matches(buf, off, len, body_end) || (end > body_end && buf[body_end] != RECORD_END) {
        return Decoded::BadCrc { end };
    }
    let b = off + FRAME_HEADER_LEN;
    Decoded::Record {
        rec: RawRecord {
            kind: buf[b],
            index: u64_at(buf, b + 1),
            term: u64_at(buf, b + 9),
            data: buf.slice(b + BODY_FIXED_LEN..body_end),
        },
        next: end,
    }
}

/// Whether the checksum stored at `off` matches a record of body length `len` ending at
/// `body_end` (the stored length field is not consulted: see [`intact_record_at`]).
fn crc_matches(buf: &[u8], off: usize, len: u32, body_end: usize) -> bool {
    let crc = crc32c::crc32c_append(crc32c::crc32c(&len.to_le_bytes()), &buf[off + 8..body_end]);
    crc == u32_at(buf, off + 4)
}

/// Whether a complete, intact version 2 record starts at `off` and ends at or before `limit`
/// when its length field is ignored: a record whose length field alone was damaged. Such a
/// record was written whole, so it is damage, not a torn write, even though the damaged
/// length makes it look cut off.
pub fn intact_record_at(buf: &[u8], off: usize, limit: usize) -> bool {
    let first_end = off + FRAME_HEADER_LEN + BODY_FIXED_LEN + 1;
    if off + FRAME_HEADER_LEN > buf.len() {
        return false;
    }
    (first_end..=limit.min(buf.len())).any(|end| {
        let body_end = end - 1;
        buf[body_end] == RECORD_END
            && crc_matches(buf, off, (body_end - off - FRAME_HEADER_LEN) as u32, body_end)
    })
}

/// Size of a record's frame on disk (current format).
pub fn framed_len(data_len: usize) -> usize {
    FRAME_HEADER_LEN + BODY_FIXED_LEN + data_len + 1
}
