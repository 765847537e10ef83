//! `SimFs`: an in-memory, deterministic file system that injects faults.
//!
//! For every file it keeps the bytes written so far *and* the bytes made
//! durable by the last `sync_data`, plus the list of writes since. For the
//! namespace it keeps the current directory entries and the entries made
//! durable by the last `sync_dir` of each directory. [`SimFs::crash`] then
//! rebuilds the state a machine would find after a power cut, according to
//! a [`CrashMode`].
//!
//! Every mutating call (write, set_len, sync_data, sync_dir, create, rename,
//! remove) is one numbered *operation*. A crash can be scheduled before any
//! operation ([`SimFs::crash_before_op`]): that operation and every later
//! call fail, as if the process died there; "crash after op `n`" is "crash
//! before op `n + 1`". Single faults can also be injected: fail the n-th
//! write or the n-th sync, flip a bit. A failed `sync_data` behaves like
//! Linux after a writeback error: the file's unsynced writes are dropped
//! (a retried or later sync does not make them durable, reads see the
//! durable bytes), which is why a store must treat it as fatal.
//! [`SimFs::corrupt_reads`] makes reads return a flipped bit now and then
//! (a disk or bus returning bad data, without the stored bytes changing).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use raftkv_rng::SplitMix64;

use crate::fs::{FileSystem, FsFile};

/// What survives a simulated power cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashMode {
    /// Only synced file data and synced directory entries survive.
    LoseUnsynced,
    /// Everything written survives (a process crash: the page cache is kept).
    KeepUnsynced,
    /// Synced data survives, plus a random prefix (chosen from `seed`) of the
    /// unsynced writes of each file, the last kept write possibly torn
    /// (only a prefix of its bytes reaches the disk). Directory entries as
    /// for `LoseUnsynced`.
    Torn {
        /// Seed of the deterministic choice.
        seed: u64,
    },
}

#[derive(Debug, Clone)]
enum Pending {
    Write { off: u64, bytes: Vec<u8> },
    SetLen(u64),
}

#[derive(Debug, Default, Clone)]
struct Inode {
    data: Vec<u8>,
    synced: Vec<u8>,
    pending: Vec<Pending>,
}

#[derive(Debug, Default)]
struct State {
    inodes: HashMap<u64, Inode>,
    next_ino: u64,
    names: BTreeMap<PathBuf, u64>,
    durable_names: BTreeMap<PathBuf, u64>,
    dirs: BTreeSet<PathBuf>,
    read_only_dirs: BTreeSet<PathBuf>,
    ops: u64,
    writes: u64,
    syncs: u64,
    crash_before_op: Option<u64>,
    fail_write: Option<u64>,
    fail_sync: Option<u64>,
    crashed: bool,
    /// Transient read corruption: `(generator, chance per read in ppm)`.
    corrupt_reads: Option<(SplitMix64, u64)>,
    reads_corrupted: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum OpKind {
    Write,
    Sync,
    Meta,
}

impl State {
    fn check_alive(&self) -> io::Result<()> {
        if self.crashed { Err(io::Error::other("simulated crash: file system is down")) } else { Ok(()) }
    }

    /// Count one mutating operation and apply scheduled faults.
    fn begin_op(&mut self, kind: OpKind) -> io::Result<()> {
        self.check_alive()?;
        self.ops += 1;
        if self.crash_before_op == Some(self.ops) {
            self.crashed = true;
            return Err(io::Error::other(format!("simulated crash before operation {}", self.ops)));
        }
        match kind {
            OpKind::Write => {
                self.writes += 1;
                if self.fail_write == Some(self.writes) {
                    return Err(io::Error::other(format!("injected failure of write {}", self.writes)));
                }
            }
            OpKind::Sync => {
                self.syncs += 1;
                if self.fail_sync == Some(self.syncs) {
                    return Err(io::Error::other(format!("injected failure of sync {}", self.syncs)));
                }
            }
            OpKind::Meta => {}
        }
        Ok(())
    }

    fn check_writable_dir(&self, path: &Path) -> io::Result<()> {
        let parent = path.parent().unwrap_or(Path::new(""));
        if !self.dirs.contains(parent) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("directory {} does not exist", parent.display()),
            ));
        }
        if self.read_only_dirs.contains(parent) {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("directory {} is read-only", parent.display()),
            ));
        }
        Ok(())
    }

    fn inode(&mut self, ino: u64) -> io::Result<&mut Inode> {
        self.inodes.get_mut(&ino).ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "stale file handle"))
    }
}

fn apply_set_len(data: &mut Vec<u8>, len: u64) {
    data.resize(len as usize, 0);
}

fn apply_write(data: &mut Vec<u8>, off: u64, bytes: &[u8]) {
    let off = off as usize;
    let end = off + bytes.len();
    if data.len() < end {
        data.resize(end, 0);
    }
    data[off..end].copy_from_slice(bytes);
}

/// In-memory fault-injecting file system. Cloning gives another handle to
/// the same state.
#[derive(Debug, Clone, Default)]
pub struct SimFs {
    state: Arc<Mutex<State>>,
}

impl SimFs {
    /// An empty file system (only the root directory `/` exists).
    pub fn new() -> Self {
        let fs = SimFs::default();
        fs.state.lock().dirs.insert(PathBuf::from("/"));
        fs
    }

    /// Number of mutating operations so far.
    pub fn op_count(&self) -> u64 {
        self.state.lock().ops
    }
    /// Number of writes (write_all_at, set_len) so far.
    pub fn write_count(&self) -> u64 {
        self.state.lock().writes
    }
    /// Number of syncs (sync_data, sync_dir) so far.
    pub fn sync_count(&self) -> u64 {
        self.state.lock().syncs
    }
    /// Crash (all calls fail from then on) when operation number `n`
    /// (1-based, counted from now on the global counter) is attempted; it is
    /// not performed.
    pub fn crash_before_op(&self, n: u64) {
        self.state.lock().crash_before_op = Some(n);
    }
    /// Make write number `n` (1-based, global counter) fail once.
    pub fn fail_write(&self, n: u64) {
        self.state.lock().fail_write = Some(n);
    }
    /// Make sync number `n` (1-based, global counter) fail once.
    pub fn fail_sync(&self, n: u64) {
        self.state.lock().fail_sync = Some(n);
    }
    /// From now on, each `read_at` returning data flips one random bit of it
    /// with a chance of `ppm` per million (deterministic from `seed`). The
    /// stored bytes are unchanged: a second read may return the right data.
    /// `ppm == 0` turns it off.
    pub fn corrupt_reads(&self, seed: u64, ppm: u64) {
        self.state.lock().corrupt_reads = (ppm > 0).then_some((SplitMix64::new(seed ^ 0xBAD_0DD5), ppm));
    }
    /// Number of reads returned corrupted so far.
    pub fn reads_corrupted(&self) -> u64 {
        self.state.lock().reads_corrupted
    }
    /// True once a scheduled crash has happened.
    pub fn has_crashed(&self) -> bool {
        self.state.lock().crashed
    }
    /// Create a directory (and its parents) regardless of faults.
    pub fn create_dir_all_for_test(&self, dir: &Path) {
        let mut st = self.state.lock();
        let mut p = Some(dir);
        while let Some(d) = p {
            st.dirs.insert(d.to_path_buf());
            p = d.parent();
        }
    }

    /// Make `dir` refuse creating, renaming and removing entries.
    pub fn set_read_only(&self, dir: &Path, read_only: bool) {
        let mut st = self.state.lock();
        if read_only {
            st.read_only_dirs.insert(dir.to_path_buf());
        } else {
            st.read_only_dirs.remove(dir);
        }
    }

    /// Simulate a power cut and reboot: rebuild the durable state according
    /// to `mode`, forget scheduled faults and revive the file system.
    /// Open handles from before the crash become stale.
    pub fn crash(&self, mode: CrashMode) {
        let mut st = self.state.lock();
        let mut rng = SplitMix64::new(match mode {
            CrashMode::Torn { seed } => seed ^ 0x5EED,
            _ => 0,
        });
        let names = match mode {
            CrashMode::KeepUnsynced => st.names.clone(),
            _ => st.durable_names.clone(),
        };
        let live: BTreeSet<u64> = names.values().copied().collect();
        let mut inodes = HashMap::new();
        let mut inos: Vec<u64> = live.into_iter().collect();
        inos.sort_unstable();
        for ino in inos {
            let Some(old) = st.inodes.get(&ino) else { continue };
            let data = match mode {
                CrashMode::LoseUnsynced => old.synced.clone(),
                CrashMode::KeepUnsynced => old.data.clone(),
                CrashMode::Torn { .. } => {
                    let mut d = old.synced.clone();
                    let n = old.pending.len() as u64;
                    let keep = if n == 0 { 0 } else { rng.next_u64() % (n + 1) };
                    for p in old.pending.iter().take(keep as usize) {
                        match p {
                            Pending::Write { off, bytes } => apply_write(&mut d, *off, bytes),
                            Pending::SetLen(l) => apply_set_len(&mut d, *l),
                        }
                    }
                    if let Some(Pending::Write { off, bytes }) = old.pending.get(keep as usize) {
                        let cut = (rng.next_u64() % (bytes.len() as u64 + 1)) as usize;
                        apply_write(&mut d, *off, &bytes[..cut]);
                    }
                    d
                }
            };
            inodes.insert(ino, Inode { synced: data.clone(), data, pending: Vec::new() });
        }
        st.inodes = inodes;
        st.names = names.clone();
        st.durable_names = names;
        st.crashed = false;
        st.crash_before_op = None;
        st.fail_write = None;
        st.fail_sync = None;
    }

    /// The current (written, not necessarily synced) contents of a file.
    pub fn file_bytes(&self, path: &Path) -> Option<Vec<u8>> {
        let st = self.state.lock();
        let ino = st.names.get(path)?;
        st.inodes.get(ino).map(|i| i.data.clone())
    }

    /// Replace a file's contents, both written and durable (for corrupting
    /// files in tests). Returns false if the file does not exist.
    pub fn set_file_bytes(&self, path: &Path, bytes: Vec<u8>) -> bool {
        let mut st = self.state.lock();
        let Some(&ino) = st.names.get(path) else {
            return false;
        };
        match st.inodes.get_mut(&ino) {
            Some(i) => {
                i.synced = bytes.clone();
                i.data = bytes;
                i.pending.clear();
                true
            }
            None => false,
        }
    }

    /// Flip bit `bit` (0..8) of byte `offset` of a file, in both the written
    /// and the durable contents. Returns false if out of range.
    pub fn flip_bit(&self, path: &Path, offset: u64, bit: u8) -> bool {
        let mut st = self.state.lock();
        let Some(&ino) = st.names.get(path) else {
            return false;
        };
        let Some(i) = st.inodes.get_mut(&ino) else {
            return false;
        };
        let off = offset as usize;
        if off >= i.data.len() {
            return false;
        }
        i.data[off] ^= 1 << (bit % 8);
        if off < i.synced.len() {
            i.synced[off] ^= 1 << (bit % 8);
        }
        true
    }

    /// Remove a file durably, behind the store's back (for tests).
    pub fn delete_file(&self, path: &Path) -> bool {
        let mut st = self.state.lock();
        let a = st.names.remove(path).is_some();
        st.durable_names.remove(path);
        a
    }

    /// All file paths currently present.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.state.lock().names.keys().cloned().collect()
    }
}

struct SimFile {
    state: Arc<Mutex<State>>,
    ino: u64,
}

impl FsFile for SimFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut st = self.state.lock();
        st.check_alive()?;
        let data = &st.inode(self.ino)?.data;
        let off = offset as usize;
        if off >= data.len() {
            return Ok(0);
        }
        let n = buf.len().min(data.len() - off);
        buf[..n].copy_from_slice(&data[off..off + n]);
        if let Some((rng, ppm)) = st.corrupt_reads.as_mut()
            && n > 0
            && rng.next_u64() % 1_000_000 < *ppm
        {
            let bit = rng.next_u64() % (n as u64 * 8);
            buf[(bit / 8) as usize] ^= 1 << (bit % 8);
            st.reads_corrupted += 1;
        }
        Ok(n)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut st = self.state.lock();
        st.begin_op(OpKind::Write)?;
        let ino = st.inode(self.ino)?;
        apply_write(&mut ino.data, offset, buf);
        ino.pending.push(Pending::Write { off: offset, bytes: buf.to_vec() });
        Ok(())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut st = self.state.lock();
        st.begin_op(OpKind::Write)?;
        let ino = st.inode(self.ino)?;
        apply_set_len(&mut ino.data, len);
        ino.pending.push(Pending::SetLen(len));
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        let mut st = self.state.lock();
        st.check_alive()?;
        Ok(st.inode(self.ino)?.data.len() as u64)
    }
    fn sync_data(&self) -> io::Result<()> {
        let mut st = self.state.lock();
        if let Err(e) = st.begin_op(OpKind::Sync) {
            if !st.crashed
                && let Ok(ino) = st.inode(self.ino)
            {
                // A writeback error: the kernel drops the dirty pages. Nothing
                // written since the last good sync will ever reach the disk.
                ino.data = ino.synced.clone();
                ino.pending.clear();
            }
            return Err(e);
        }
        let ino = st.inode(self.ino)?;
        // `synced` plus the pending writes is `data`: replaying them costs what they wrote,
        // where copying `data` would cost the whole file on every sync.
        for p in std::mem::take(&mut ino.pending) {
            match p {
                Pending::Write { off, bytes } => apply_write(&mut ino.synced, off, &bytes),
                Pending::SetLen(len) => apply_set_len(&mut ino.synced, len),
            }
        }
        debug_assert!(ino.synced == ino.data, "synced data and pending writes diverge from the file");
        Ok(())
    }
}

impl FileSystem for SimFs {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut st = self.state.lock();
        st.check_alive()?;
        let mut p = Some(path);
        while let Some(d) = p {
            if st.names.contains_key(d) {
                return Err(io::Error::new(
                    io::ErrorKind::NotADirectory,
                    format!("{} is a file", d.display()),
                ));
            }
            p = d.parent();
        }
        let mut p = Some(path);
        let mut to_add = Vec::new();
        while let Some(d) = p {
            if st.dirs.contains(d) {
                break;
            }
            to_add.push(d.to_path_buf());
            p = d.parent();
        }
        if let Some(top) = to_add.last() {
            let parent = top.parent().unwrap_or(Path::new("/"));
            if st.read_only_dirs.contains(parent) {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!("directory {} is read-only", parent.display()),
                ));
            }
        }
        st.dirs.extend(to_add);
        Ok(())
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let st = self.state.lock();
        st.check_alive()?;
        if !st.dirs.contains(path) {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("{} not found", path.display())));
        }
        let mut out: Vec<String> = st
            .names
            .keys()
            .filter(|p| p.parent() == Some(path))
            .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_owned))
            .collect();
        out.sort();
        Ok(out)
    }
    fn open(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        let st = self.state.lock();
        st.check_alive()?;
        let ino = *st.names.get(path).ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("{} not found", path.display()))
        })?;
        Ok(Box::new(SimFile { state: self.state.clone(), ino }))
    }
    fn create(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        let mut st = self.state.lock();
        st.begin_op(OpKind::Meta)?;
        st.check_writable_dir(path)?;
        if st.names.contains_key(path) || st.dirs.contains(path) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{} exists", path.display())));
        }
        st.next_ino += 1;
        let ino = st.next_ino;
        st.inodes.insert(ino, Inode::default());
        st.names.insert(path.to_path_buf(), ino);
        Ok(Box::new(SimFile { state: self.state.clone(), ino }))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = self.state.lock();
        st.begin_op(OpKind::Meta)?;
        st.check_writable_dir(from)?;
        st.check_writable_dir(to)?;
        let ino = st.names.remove(from).ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("{} not found", from.display()))
        })?;
        st.names.insert(to.to_path_buf(), ino);
        Ok(())
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut st = self.state.lock();
        st.begin_op(OpKind::Meta)?;
        st.check_writable_dir(path)?;
        st.names
            .remove(path)
            .map(|_| ())
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{} not found", path.display())))
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let mut st = self.state.lock();
        st.begin_op(OpKind::Sync)?;
        if !st.dirs.contains(path) {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("{} not found", path.display())));
        }
        let in_dir = |p: &PathBuf| p.parent() == Some(path);
        let current: Vec<(PathBuf, u64)> =
            st.names.iter().filter(|(p, _)| in_dir(p)).map(|(p, i)| (p.clone(), *i)).collect();
        st.durable_names.retain(|p, _| !in_dir(p));
        st.durable_names.extend(current);
        Ok(())
    }
}
