//! The simulated members' replicated state machine, run by `raftkv-node`'s `Applier`: a
//! digest over the applied commands, in order, and a few registers (keys), each holding the
//! last command written to it. Its snapshots are real snapshot files (written with
//! `raftkv_node::write_snapshot`, streamed to peers, restored by the `Applier`), padded with
//! filler standing in for a real state's bulk.

use std::io::{self, Read, Write};

use raftkv_node::{StateMachine, Visit};

use crate::rng::{chain, mix64};

/// Registers in the state machine; each command writes one (see [`key_of`]).
pub const KEYS: usize = 3;

/// The register a command writes.
pub fn key_of(attempt: u64) -> usize {
    (mix64(attempt) % KEYS as u64) as usize
}

/// Largest snapshot body a member restores (bounded memory for untrusted input).
pub const MAX_BODY_BYTES: u64 = 1 << 20;

const MAGIC: u32 = 0x524B_5353; // "RKSS"

/// The state: what the checkers compare across members.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Registers {
    /// The last index applied (set by the simulator for every entry, commands or not).
    pub applied: u64,
    pub digest: u64,
    pub commands: u64,
    pub values: [u64; KEYS],
    /// Filler bytes a snapshot carries (a run's constant, not part of the state).
    pub filler: u32,
}

/// The command id a normal entry's data carries (the simulator's clients write 8-byte ids).
pub fn command_of(data: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = data.try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}

fn filler_byte(index: u64, i: u64) -> u8 {
    (mix64(index ^ (i / 8)) >> ((i % 8) * 8)) as u8
}

impl Registers {
    /// The snapshot body.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(64 + self.filler as usize);
        b.extend_from_slice(&MAGIC.to_be_bytes());
        for v in [self.applied, self.digest, self.commands].into_iter().chain(self.values) {
            b.extend_from_slice(&v.to_be_bytes());
        }
        b.extend_from_slice(&self.filler.to_be_bytes());
        b.extend((0..u64::from(self.filler)).map(|i| filler_byte(self.applied, i)));
        b
    }

    /// Decodes an untrusted body; every length is checked against the bytes present.
    pub fn decode(data: &[u8]) -> Result<Registers, String> {
        let mut r = Reader { data, pos: 0 };
        if r.u32()? != MAGIC {
            return Err("bad magic".into());
        }
        let (applied, digest, commands) = (r.u64()?, r.u64()?, r.u64()?);
        let mut values = [0; KEYS];
        for v in &mut values {
            *v = r.u64()?;
        }
        let filler = r.u32()?;
        let rest = &data[r.pos..];
        if rest.len() as u64 != u64::from(filler) {
            return Err(format!("filler of {filler} bytes, {} present", rest.len()));
        }
        if rest.iter().enumerate().any(|(i, b)| *b != filler_byte(applied, i as u64)) {
            return Err("filler content differs".into());
        }
        Ok(Registers { applied, digest, commands, values, filler })
    }
}

impl StateMachine for Registers {
    /// The index the command was applied at.
    type Output = u64;
    type Pin = Registers;

    fn apply(&mut self, index: u64, data: &[u8]) -> Option<(u64, u64)> {
        self.applied = index;
        let attempt = command_of(data)?;
        self.digest = chain(self.digest, attempt);
        self.commands += 1;
        self.values[key_of(attempt)] = attempt;
        Some((attempt, index))
    }

    fn pin(&mut self) -> Registers {
        self.clone()
    }

    fn write_snapshot(pin: &Registers, w: &mut dyn Write, _visit: &mut Visit<'_, Self>) -> io::Result<()> {
        w.write_all(&pin.encode())
    }

    fn restore(&mut self, r: &mut dyn Read, len: u64) -> Result<(), String> {
        if len > MAX_BODY_BYTES {
            return Err(format!("snapshot body of {len} bytes exceeds {MAX_BODY_BYTES}"));
        }
        let mut data = Vec::with_capacity(len as usize);
        r.take(len).read_to_end(&mut data).map_err(|e| format!("reading the snapshot: {e}"))?;
        *self = Registers::decode(&data)?;
        Ok(())
    }
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let end = self.pos.checked_add(N).filter(|e| *e <= self.data.len()).ok_or("body truncated")?;
        let mut w = [0u8; N];
        w.copy_from_slice(&self.data[self.pos..end]);
        self.pos = end;
        Ok(w)
    }
    fn u32(&mut self) -> Result<u32, String> {
        self.take::<4>().map(u32::from_be_bytes)
    }
    fn u64(&mut self) -> Result<u64, String> {
        self.take::<8>().map(u64::from_be_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regs() -> Registers {
        Registers { applied: 42, digest: 7, commands: 30, values: [7, 0, 9], filler: 300 }
    }

    #[test]
    fn body_round_trips() {
        let r = regs();
        assert_eq!(Registers::decode(&r.encode()), Ok(r));
    }

    #[test]
    fn truncated_or_flipped_body_is_rejected() {
        let bytes = regs().encode();
        for cut in [0, 3, 20, bytes.len() - 1] {
            assert!(Registers::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(Registers::decode(&flipped).is_err());
    }

    #[test]
    fn restore_refuses_an_oversized_body() {
        let mut r = Registers::default();
        let mut empty: &[u8] = &[];
        assert!(r.restore(&mut empty, MAX_BODY_BYTES + 1).is_err());
    }
}
