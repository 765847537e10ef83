//! The small file-system abstraction every byte of storage goes through.
//!
//! [`RealFs`] maps it onto `std::fs`; [`crate::SimFs`] is an in-memory,
//! deterministic implementation that can inject crashes and faults.

use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// An open file. All offsets are absolute; there is no cursor.
#[allow(clippy::len_without_is_empty)]
pub trait FsFile: Send + Sync {
    /// Read up to `buf.len()` bytes at `offset`; returns 0 at end of file.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Write all of `buf` at `offset` (extending the file if needed).
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Truncate or extend the file.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Current length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Make the file's data (and the size, if it changed) durable
    /// (`fdatasync`).
    fn sync_data(&self) -> io::Result<()>;
    /// Advise that the cached pages of `[offset, offset + len)` (to the end of the file
    /// when `len` is 0) will not be read again soon. Only a hint: the contents are
    /// unchanged; clean pages leave the page cache, dirty ones start their write-back.
    fn drop_cache(&self, offset: u64, len: u64) {
        let _ = (offset, len);
    }
}

/// File-system operations used by the storage crate.
///
/// Directory entries (create, rename, remove) are durable only after
/// [`FileSystem::sync_dir`] on the parent directory; file contents only
/// after [`FsFile::sync_data`].
pub trait FileSystem: Send + Sync + Debug {
    /// `mkdir -p`.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Names (not paths) of the regular files in `path`, sorted.
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>>;
    /// Open an existing file for reading and writing.
    fn open(&self, path: &Path) -> io::Result<Box<dyn FsFile>>;
    /// Create a new file; fails if it exists.
    fn create(&self, path: &Path) -> io::Result<Box<dyn FsFile>>;
    /// Atomically rename `from` to `to`, replacing `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Remove a file.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Make the directory's entries durable (`fsync` on the directory).
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
}

/// Read a whole file into memory.
pub fn read_all(file: &dyn FsFile) -> io::Result<Vec<u8>> {
    let len = file.len()?;
    let len = usize::try_from(len).map_err(|_| io::Error::other("file too large"))?;
    let mut buf = vec![0u8; len];
    read_exact_at(file, &mut buf, 0)?;
    Ok(buf)
}

/// Fill `buf` from `offset`, failing with `UnexpectedEof` if the file is
/// shorter.
pub fn read_exact_at(file: &dyn FsFile, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        let n = file.read_at(buf, offset)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file shorter than expected"));
        }
        buf = &mut buf[n..];
        offset += n as u64;
    }
    Ok(())
}

/// The real file system (`std::fs`).
#[derive(Debug, Default, Clone, Copy)]
pub struct RealFs;

struct RealFile(File);

impl FsFile for RealFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        loop {
            match self.0.read_at(buf, offset) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        }
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn drop_cache(&self, offset: u64, len: u64) {
        drop_cache(&self.0, offset, len);
    }
}

/// `posix_fadvise(POSIX_FADV_DONTNEED)` on `[offset, offset + len)` (to the end of the file
/// when `len` is 0): clean cached pages of the range leave the page cache, write-back of
/// dirty ones starts. A hint, so errors are ignored.
///
/// Files the members write and then rarely read (the log after its fsync, snapshots, the
/// history cache) are dropped from the page cache this way. It bounds the page cache they
/// fill, and keeps the kernel reusing the same freed pages: on a virtual machine, a page the
/// guest has never touched costs a fault in the host on first write, which made copying
/// into new page-cache pages the largest single cost of a put (see docs/BENCHMARKS.md).
pub fn drop_cache(file: &File, offset: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        let _ =
            rustix::fs::fadvise(file, offset, std::num::NonZeroU64::new(len), rustix::fs::Advice::DontNeed);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}

impl FileSystem for RealFs {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(path)? {
            let entry = entry?;
            if entry.file_type()?.is_file()
                && let Some(name) = entry.file_name().to_str()
            {
                names.push(name.to_owned());
            }
        }
        names.sort();
        Ok(names)
    }
    fn open(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        let f = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(Box::new(RealFile(f)))
    }
    fn create(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        let f = OpenOptions::new().read(true).write(true).create_new(true).open(path)?;
        Ok(Box::new(RealFile(f)))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }
}
