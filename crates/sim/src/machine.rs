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

    fn restore(&mut self, r: &mut dyn Read, len: u64) -> Result<(), raftkv_node::StateMachineError> {
        if len > MAX_BODY_BYTES {
            return Err(format!("snapshot body of {len} bytes exceeds {MAX_BODY_BYTES}").into());
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

/// The state machine a run's members apply commands to: the registers alone, or the
/// server's own key-value state machine (`raftkv_kvsm::KvMachine`: the MVCC store the
/// server ships) with the registers kept beside it as the checkers' model of it.
pub struct SimMachine {
    /// The model: applied index, digest of the commands, last command per register.
    pub regs: Registers,
    /// The real store, when the run uses it: commands are `raftkv_api::Command` puts of
    /// register `key` (key `r<key>`) holding the command id, and reads go through it.
    pub kv: Option<raftkv_kvsm::KvMachine>,
}

/// The key-value store's key of register `key`.
fn kv_key(key: usize) -> bytes::Bytes {
    format!("r{key}").into_bytes().into()
}

impl SimMachine {
    pub fn new(kv: bool, filler: u32) -> SimMachine {
        SimMachine {
            regs: Registers { filler, ..Registers::default() },
            kv: kv.then(|| raftkv_kvsm::KvMachine::new(raftkv_kv::KvConfig::default())),
        }
    }

    /// A command's entry data: its id alone, or a key-value put of its register.
    pub fn command(kv: bool, attempt: u64) -> bytes::Bytes {
        if !kv {
            return bytes::Bytes::copy_from_slice(&attempt.to_le_bytes());
        }
        let put = raftkv_api::etcdserverpb::PutRequest {
            key: kv_key(key_of(attempt)),
            value: bytes::Bytes::copy_from_slice(&attempt.to_le_bytes()),
            ..Default::default()
        };
        raftkv_api::Command::put(attempt, put).encode_to_bytes()
    }

    /// The state digest the checkers compare across members at one applied index.
    pub fn digest(&self) -> u64 {
        match &self.kv {
            Some(kv) => chain(self.regs.digest, u64::from(kv.kv.digest())),
            None => self.regs.digest,
        }
    }

    /// Register `key` as a read returns it (0: never written): from the key-value store
    /// when the run has one. An error is the store refusing the read or holding a value no
    /// command could have written.
    pub fn read(&self, key: usize) -> Result<u64, String> {
        let Some(kv) = &self.kv else { return Ok(self.regs.values[key]) };
        let req = raftkv_api::etcdserverpb::RangeRequest { key: kv_key(key), ..Default::default() };
        let resp = kv.kv.range(&req).map_err(|e| format!("range of register {key}: {e}"))?;
        match resp.kvs.first() {
            None => Ok(0),
            Some(found) => command_of(&found.value)
                .ok_or_else(|| format!("register {key} holds {} bytes, not a command id", found.value.len())),
        }
    }
}

/// The command id of an entry's data, in either encoding (the checkers' view).
pub fn command_id(data: &[u8]) -> Option<u64> {
    command_of(data).or_else(|| raftkv_api::Command::decode_from(data).ok().map(|c| c.id))
}

impl StateMachine for SimMachine {
    /// The index the command was applied at.
    type Output = u64;
    type Pin = (Registers, Option<<raftkv_kvsm::KvMachine as StateMachine>::Pin>);

    fn apply(&mut self, index: u64, data: &[u8]) -> Option<(u64, u64)> {
        let Some(kv) = &mut self.kv else { return self.regs.apply(index, data) };
        self.regs.applied = index;
        let (attempt, out) = kv.apply(index, data)?;
        if let raftkv_kvsm::Output::Kv(Err(_)) = out {
            // Every replica fails it alike; the model keeps the command out of its state.
            return Some((attempt, index));
        }
        self.regs.digest = chain(self.regs.digest, attempt);
        self.regs.commands += 1;
        self.regs.values[key_of(attempt)] = attempt;
        Some((attempt, index))
    }

    fn pin(&mut self) -> Self::Pin {
        (self.regs.clone(), self.kv.as_mut().map(|kv| kv.pin()))
    }

    fn write_snapshot(pin: &Self::Pin, w: &mut dyn Write, visit: &mut Visit<'_, Self>) -> io::Result<()> {
        let regs = pin.0.encode();
        w.write_all(&(regs.len() as u32).to_be_bytes())?;
        w.write_all(&regs)?;
        match &pin.1 {
            Some(kv_pin) => raftkv_kvsm::KvMachine::write_snapshot(kv_pin, w, &mut |f| {
                visit(&mut |m: &SimMachine| {
                    if let Some(kv) = &m.kv {
                        f(kv)
                    }
                })
            }),
            None => Ok(()),
        }
    }

    fn unpin(&mut self, pin: Self::Pin) {
        if let (Some(kv), Some(kv_pin)) = (&mut self.kv, pin.1) {
            kv.unpin(kv_pin);
        }
    }

    fn restore(&mut self, r: &mut dyn Read, len: u64) -> Result<(), raftkv_node::StateMachineError> {
        let mut n = [0u8; 4];
        r.read_exact(&mut n).map_err(|e| format!("reading the snapshot: {e}"))?;
        let regs_len = u64::from(u32::from_be_bytes(n));
        if regs_len + 4 > len {
            return Err(format!("snapshot registers of {regs_len} bytes in a body of {len}").into());
        }
        let mut part = (&mut *r).take(regs_len);
        self.regs.restore(&mut part, regs_len)?;
        let rest = len - 4 - regs_len;
        match &mut self.kv {
            Some(kv) => kv.restore(r, rest),
            None if rest == 0 => Ok(()),
            None => Err(format!("{rest} bytes after the registers").into()),
        }
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
