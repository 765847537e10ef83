//! The bbolt file format (etcd's backend database, bbolt v1.3), as far as backups need it:
//! a writer that bulk-loads a fresh database from buckets given in key order, and a
//! checked reader that walks a database's buckets.
//!
//! Layout: fixed-size pages (4096 bytes here). Pages 0 and 1 hold the two meta pages
//! (magic, version, page size, the root bucket's page, the freelist's page, the page count
//! and a transaction id, with an FNV-1a checksum); page 2 the freelist (empty: a fresh
//! file frees nothing). The root bucket is a B+tree whose leaf elements are the bucket
//! names, each valued with a bucket header (root page, sequence), or for a small bucket
//! stored inline, that header followed by the bucket's single leaf page. A page is a
//! 16-byte header (id u64, flags u16, count u16, overflow u32) and `count` 16-byte
//! elements; a leaf element is (flags u32, pos u32, ksize u32, vsize u32), a branch element
//! (pos u32, ksize u32, child page u64), `pos` counting from the element itself to its key
//! (the value follows the key). A page larger than the page size spans `overflow` more
//! pages. Everything is little-endian.
//!
//! The reader trusts nothing in the file: every page number, offset and length is checked
//! against the file before use, trees deeper than [`MAX_DEPTH`] are refused (so a cycle
//! cannot loop), and no allocation exceeds [`MAX_PAGE_SPAN`].

use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

pub const PAGE_SIZE: usize = 4096;
const MAGIC: u32 = 0xED0C_DAED;
const VERSION: u32 = 2;
const PAGE_HEADER: usize = 16;
const ELEMENT: usize = 16;
const FLAG_BRANCH: u16 = 0x01;
const FLAG_LEAF: u16 = 0x02;
const FLAG_META: u16 = 0x04;
const FLAG_FREELIST: u16 = 0x10;
/// A leaf element whose value is a (nested) bucket.
const BUCKET_LEAF: u32 = 0x01;
/// The size of a bucket header (root page, sequence).
const BUCKET_HEADER: usize = 16;
/// Deepest tree read (bbolt's trees are a few levels deep even for billions of keys).
const MAX_DEPTH: usize = 32;
/// Largest page (with its overflow pages) read into memory.
const MAX_PAGE_SPAN: u64 = 256 << 20;

#[derive(Debug, thiserror::Error)]
pub enum BoltError {
    #[error("{0}")]
    Io(#[from] io::Error),
    /// Neither meta page is usable (the first one's problem is kept).
    #[error("not a valid bbolt database: {0}")]
    Meta(MetaError),
    #[error("not a valid bbolt database: {0}")]
    Invalid(String),
    /// A [`BoltReader::walk`] callback asked to stop (it keeps its own reason).
    #[error("stopped reading the database")]
    Stopped,
}

/// Why a meta page is not usable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MetaError {
    #[error("file too short")]
    TooShort,
    #[error("no meta page")]
    NotMeta,
    #[error("bad magic")]
    Magic,
    #[error("unsupported version {0}")]
    Version(u32),
    #[error("meta checksum mismatch")]
    Checksum,
    #[error("page size {0}")]
    PageSize(u64),
    #[error("meta page at the wrong place")]
    Misplaced,
}

fn invalid<T>(what: impl Into<String>) -> Result<T, BoltError> {
    Err(BoltError::Invalid(what.into()))
}

fn fnv64a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

fn page_header(out: &mut Vec<u8>, id: u64, flags: u16, count: usize, overflow: u32) {
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&(count as u16).to_le_bytes());
    out.extend_from_slice(&overflow.to_le_bytes());
}

/// The body of a page with `items`: element headers then keys and values. `leaf_flags`
/// gives each leaf element's flags; for a branch page the values are child page ids.
fn page_body(out: &mut Vec<u8>, items: &[(Vec<u8>, Vec<u8>, u32)], branch: bool) {
    let base = out.len();
    let mut data = items.len() * ELEMENT;
    for (i, (k, v, flags)) in items.iter().enumerate() {
        let elem = i * ELEMENT;
        let pos = (data - elem) as u32;
        if branch {
            out.extend_from_slice(&pos.to_le_bytes());
            out.extend_from_slice(&(k.len() as u32).to_le_bytes());
            out.extend_from_slice(v);
            data += k.len();
        } else {
            out.extend_from_slice(&flags.to_le_bytes());
            out.extend_from_slice(&pos.to_le_bytes());
            out.extend_from_slice(&(k.len() as u32).to_le_bytes());
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
            data += k.len() + v.len();
        }
    }
    for (k, v, _) in items {
        out.extend_from_slice(k);
        if !branch {
            out.extend_from_slice(v);
        }
    }
    debug_assert_eq!(out.len() - base, data);
}

/// Writes a fresh bbolt database: buckets in ascending name order, each bucket's keys in
/// ascending order ([`BoltWriter::begin_bucket`], [`BoltWriter::put`]), then
/// [`BoltWriter::finish`]. Pages are written as they fill, so memory stays bounded by the
/// first keys of the leaf pages (one per page) whatever the database's size.
pub struct BoltWriter<W: Write + Seek> {
    out: W,
    next_page: u64,
    /// Finished buckets: name and bucket value (header, or header plus inline page).
    buckets: Vec<(Vec<u8>, Vec<u8>)>,
    current: Option<BucketBuild>,
}

struct BucketBuild {
    name: Vec<u8>,
    /// Elements of the leaf page being filled, and its size so far.
    items: Vec<(Vec<u8>, Vec<u8>, u32)>,
    bytes: usize,
    /// (first key, page id) of every leaf page written.
    pages: Vec<(Vec<u8>, u64)>,
    last_key: Option<Vec<u8>>,
}

impl<W: Write + Seek> BoltWriter<W> {
    pub fn new(mut out: W) -> io::Result<BoltWriter<W>> {
        // Meta pages and the freelist are written last, at the start.
        out.write_all(&[0u8; 3 * PAGE_SIZE])?;
        Ok(BoltWriter { out, next_page: 3, buckets: Vec::new(), current: None })
    }

    /// Writes one page (with overflow pages as needed) of `items`; returns its id.
    fn write_page(&mut self, items: &[(Vec<u8>, Vec<u8>, u32)], branch: bool) -> io::Result<u64> {
        let size = PAGE_HEADER
            + items
                .iter()
                .map(|(k, v, _)| ELEMENT + k.len() + if branch { 0 } else { v.len() })
                .sum::<usize>();
        let pages = size.div_ceil(PAGE_SIZE).max(1);
        let id = self.next_page;
        let mut buf = Vec::with_capacity(pages * PAGE_SIZE);
        let overflow = u32::try_from(pages - 1).map_err(|_| io::Error::other("page too large"))?;
        page_header(&mut buf, id, if branch { FLAG_BRANCH } else { FLAG_LEAF }, items.len(), overflow);
        page_body(&mut buf, items, branch);
        buf.resize(pages * PAGE_SIZE, 0);
        self.out.write_all(&buf)?;
        self.next_page += pages as u64;
        Ok(id)
    }

    /// Starts the next bucket; names must ascend.
    pub fn begin_bucket(&mut self, name: &[u8]) -> io::Result<()> {
        self.end_bucket()?;
        if self.buckets.last().is_some_and(|(n, _)| n.as_slice() >= name) {
            return Err(io::Error::other("bucket names must ascend"));
        }
        self.current = Some(BucketBuild {
            name: name.to_vec(),
            items: Vec::new(),
            bytes: PAGE_HEADER,
            pages: Vec::new(),
            last_key: None,
        });
        Ok(())
    }

    /// Adds a key to the current bucket; keys must ascend.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> io::Result<()> {
        let Some(mut b) = self.current.take() else {
            return Err(io::Error::other("put outside a bucket"));
        };
        if key.is_empty() || b.last_key.as_deref().is_some_and(|last| last >= key) {
            return Err(io::Error::other("keys must be non-empty and ascend"));
        }
        if key.len() > u32::MAX as usize || value.len() > u32::MAX as usize {
            return Err(io::Error::other("key or value too large"));
        }
        let add = ELEMENT + key.len() + value.len();
        if !b.items.is_empty() && b.bytes + add > PAGE_SIZE {
            let first = b.items[0].0.clone();
            let id = self.write_page(&b.items, false)?;
            b.pages.push((first, id));
            b.items.clear();
            b.bytes = PAGE_HEADER;
        }
        b.items.push((key.to_vec(), value.to_vec(), 0));
        b.bytes += add;
        b.last_key = Some(key.to_vec());
        self.current = Some(b);
        Ok(())
    }

    /// Writes the branch levels above `pages`; returns the root page.
    fn write_tree(&mut self, mut pages: Vec<(Vec<u8>, u64)>) -> io::Result<u64> {
        while pages.len() > 1 {
            let mut parents = Vec::new();
            let mut items: Vec<(Vec<u8>, Vec<u8>, u32)> = Vec::new();
            let mut bytes = PAGE_HEADER;
            for (key, id) in pages {
                let add = ELEMENT + key.len();
                if !items.is_empty() && bytes + add > PAGE_SIZE {
                    let first = items[0].0.clone();
                    parents.push((first, self.write_page(&items, true)?));
                    items.clear();
                    bytes = PAGE_HEADER;
                }
                items.push((key, id.to_le_bytes().to_vec(), 0));
                bytes += add;
            }
            if !items.is_empty() {
                let first = items[0].0.clone();
                parents.push((first, self.write_page(&items, true)?));
            }
            pages = parents;
        }
        pages.first().map(|(_, id)| *id).ok_or_else(|| io::Error::other("empty tree"))
    }

    fn end_bucket(&mut self) -> io::Result<()> {
        let Some(mut b) = self.current.take() else { return Ok(()) };
        let mut value = Vec::new();
        if b.pages.is_empty() && b.bytes <= PAGE_SIZE / 4 {
            // Small: inline, a bucket header with root 0 and the leaf page after it.
            value.extend_from_slice(&[0u8; BUCKET_HEADER]);
            page_header(&mut value, 0, FLAG_LEAF, b.items.len(), 0);
            page_body(&mut value, &b.items, false);
        } else {
            if !b.items.is_empty() {
                let first = b.items[0].0.clone();
                let id = self.write_page(&b.items, false)?;
                b.pages.push((first, id));
            }
            let root = self.write_tree(b.pages)?;
            value.extend_from_slice(&root.to_le_bytes());
            value.extend_from_slice(&0u64.to_le_bytes());
        }
        self.buckets.push((b.name, value));
        Ok(())
    }

    /// Writes the root bucket, the freelist and the meta pages; returns the output and the
    /// database's size in bytes.
    pub fn finish(mut self) -> io::Result<(W, u64)> {
        self.end_bucket()?;
        let buckets = std::mem::take(&mut self.buckets);
        let items: Vec<(Vec<u8>, Vec<u8>, u32)> =
            buckets.into_iter().map(|(name, value)| (name, value, BUCKET_LEAF)).collect();
        let root = self.write_page(&items, false)?;
        let pages = self.next_page;
        let mut head = Vec::with_capacity(3 * PAGE_SIZE);
        for txid in 0..2u64 {
            let start = head.len();
            page_header(&mut head, txid, FLAG_META, 0, 0);
            let meta = head.len();
            head.extend_from_slice(&MAGIC.to_le_bytes());
            head.extend_from_slice(&VERSION.to_le_bytes());
            head.extend_from_slice(&(PAGE_SIZE as u32).to_le_bytes());
            head.extend_from_slice(&0u32.to_le_bytes());
            head.extend_from_slice(&root.to_le_bytes());
            head.extend_from_slice(&0u64.to_le_bytes());
            head.extend_from_slice(&2u64.to_le_bytes());
            head.extend_from_slice(&pages.to_le_bytes());
            head.extend_from_slice(&txid.to_le_bytes());
            let sum = fnv64a(&head[meta..]);
            head.extend_from_slice(&sum.to_le_bytes());
            head.resize(start + PAGE_SIZE, 0);
        }
        page_header(&mut head, 2, FLAG_FREELIST, 0, 0);
        head.resize(3 * PAGE_SIZE, 0);
        self.out.seek(SeekFrom::Start(0))?;
        self.out.write_all(&head)?;
        self.out.seek(SeekFrom::Start(pages * PAGE_SIZE as u64))?;
        self.out.flush()?;
        Ok((self.out, pages * PAGE_SIZE as u64))
    }
}

/// Called with each key, value and element flags of a bucket.
pub type ElementFn<'a> = dyn FnMut(&[u8], &[u8], u32) -> Result<(), BoltError> + 'a;

/// Where a bucket's tree is.
#[derive(Clone, Debug)]
pub enum BucketRoot {
    Page(u64),
    /// An inline bucket's single leaf page.
    Inline(Vec<u8>),
}

/// A bbolt database opened for reading, checked as it is read.
pub struct BoltReader {
    file: File,
    /// Bytes of the database (a trailing checksum after them is not part of it).
    len: u64,
    page_size: u64,
    /// Pages in use (the meta's high-water mark).
    pages: u64,
    root: u64,
}

impl BoltReader {
    /// Opens the first `len` bytes of `path` as a database, using the valid meta page with
    /// the higher transaction id.
    pub fn open(path: &Path, len: u64) -> Result<BoltReader, BoltError> {
        let file = File::open(path)?;
        let mut best: Option<(u64, u64, u64, u64)> = None; // txid, page size, pages, root
        let mut first_error = None;
        // Meta 0 is at 0; meta 1 at the page size meta 0 names (or at common page sizes
        // if meta 0 is damaged).
        let mut offsets = vec![0u64];
        for size in [4096u64, 8192, 16384, 65536] {
            offsets.push(size);
        }
        for off in offsets {
            if off + (PAGE_HEADER + 64) as u64 > len {
                continue;
            }
            let mut buf = [0u8; PAGE_HEADER + 64];
            file.read_exact_at(&mut buf, off)?;
            let m = &buf[PAGE_HEADER..];
            let check = || -> Result<(u64, u64, u64, u64), MetaError> {
                if u16_at(&buf, 8) & FLAG_META == 0 {
                    return Err(MetaError::NotMeta);
                }
                if u32_at(m, 0) != MAGIC {
                    return Err(MetaError::Magic);
                }
                if u32_at(m, 4) != VERSION {
                    return Err(MetaError::Version(u32_at(m, 4)));
                }
                if u64_at(m, 56) != fnv64a(&m[..56]) {
                    return Err(MetaError::Checksum);
                }
                let page_size = u64::from(u32_at(m, 8));
                if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
                    return Err(MetaError::PageSize(page_size));
                }
                let expected_at = if u64_at(&buf, 0) == 0 { 0 } else { page_size };
                if off != expected_at {
                    return Err(MetaError::Misplaced);
                }
                Ok((u64_at(m, 48), page_size, u64_at(m, 40), u64_at(m, 16)))
            };
            match check() {
                Ok(meta) => {
                    if best.is_none_or(|b| meta.0 > b.0) {
                        best = Some(meta);
                    }
                }
                Err(e) => first_error = first_error.or(Some(e)),
            }
        }
        let Some((_, page_size, pages, root)) = best else {
            return Err(BoltError::Meta(first_error.unwrap_or(MetaError::TooShort)));
        };
        if pages.checked_mul(page_size).is_none_or(|end| end > len) {
            return invalid(format!("{pages} pages of {page_size} bytes do not fit in {len} bytes"));
        }
        let r = BoltReader { file, len, page_size, pages, root };
        if root < 2 || root >= pages {
            return invalid(format!("root bucket page {root} out of range"));
        }
        Ok(r)
    }

    /// The database's size in bytes as its meta page counts it.
    pub fn size(&self) -> u64 {
        self.pages * self.page_size
    }

    /// Reads page `id` with its overflow pages.
    fn page(&self, id: u64) -> Result<Vec<u8>, BoltError> {
        if id < 2 || id >= self.pages {
            return invalid(format!("page {id} out of range (0..{})", self.pages));
        }
        let mut head = [0u8; PAGE_HEADER];
        self.file.read_exact_at(&mut head, id * self.page_size)?;
        if u64_at(&head, 0) != id {
            return invalid(format!("page {id} says it is page {}", u64_at(&head, 0)));
        }
        let span = (u64::from(u32_at(&head, 12)) + 1) * self.page_size;
        if span > MAX_PAGE_SPAN || id * self.page_size + span > self.len.min(self.pages * self.page_size) {
            return invalid(format!("page {id} overflows the file"));
        }
        let mut buf = vec![0u8; span as usize];
        self.file.read_exact_at(&mut buf, id * self.page_size)?;
        Ok(buf)
    }

    /// The top-level buckets, by name, in order.
    pub fn buckets(&self) -> Result<Vec<(Vec<u8>, BucketRoot)>, BoltError> {
        let mut out = Vec::new();
        self.walk(&BucketRoot::Page(self.root), &mut |k, v, flags| {
            if flags & BUCKET_LEAF == 0 {
                return invalid(format!("top-level key {:?} is not a bucket", String::from_utf8_lossy(k)));
            }
            out.push((k.to_vec(), bucket_root(v)?));
            Ok(())
        })?;
        Ok(out)
    }

    /// Calls `f` with every key and value of a bucket, in key order (nested buckets are
    /// passed with flag [`BUCKET_LEAF`] set).
    pub fn walk(&self, root: &BucketRoot, f: &mut ElementFn<'_>) -> Result<(), BoltError> {
        match root {
            BucketRoot::Page(id) => self.walk_page(*id, 0, f),
            BucketRoot::Inline(page) => {
                if u16_at(page, 8) & FLAG_LEAF == 0 {
                    return invalid("an inline bucket's page is not a leaf");
                }
                leaf_elements(page, f)
            }
        }
    }

    fn walk_page(&self, id: u64, depth: usize, f: &mut ElementFn<'_>) -> Result<(), BoltError> {
        if depth > MAX_DEPTH {
            return invalid(format!("tree deeper than {MAX_DEPTH} levels at page {id}"));
        }
        let page = self.page(id)?;
        let flags = u16_at(&page, 8);
        if flags & FLAG_LEAF != 0 {
            return leaf_elements(&page, f);
        }
        if flags & FLAG_BRANCH == 0 {
            return invalid(format!("page {id} is neither a branch nor a leaf (flags {flags:#x})"));
        }
        let count = usize::from(u16_at(&page, 10));
        if PAGE_HEADER + count * ELEMENT > page.len() {
            return invalid(format!("page {id} claims {count} elements"));
        }
        for i in 0..count {
            let child = u64_at(&page, PAGE_HEADER + i * ELEMENT + 8);
            self.walk_page(child, depth + 1, f)?;
        }
        Ok(())
    }
}

fn bucket_root(v: &[u8]) -> Result<BucketRoot, BoltError> {
    if v.len() < BUCKET_HEADER {
        return invalid("bucket header too short");
    }
    let root = u64_at(v, 0);
    if root != 0 {
        return Ok(BucketRoot::Page(root));
    }
    if v.len() < BUCKET_HEADER + PAGE_HEADER {
        return invalid("inline bucket too short");
    }
    Ok(BucketRoot::Inline(v[BUCKET_HEADER..].to_vec()))
}

fn leaf_elements(page: &[u8], f: &mut ElementFn<'_>) -> Result<(), BoltError> {
    let count = usize::from(u16_at(page, 10));
    if PAGE_HEADER + count * ELEMENT > page.len() {
        return invalid(format!("a leaf page claims {count} elements"));
    }
    let mut prev: Option<&[u8]> = None;
    for i in 0..count {
        let e = PAGE_HEADER + i * ELEMENT;
        let (flags, pos, ksize, vsize) = (
            u32_at(page, e),
            u32_at(page, e + 4) as usize,
            u32_at(page, e + 8) as usize,
            u32_at(page, e + 12) as usize,
        );
        let start = e + pos;
        let Some(end) = start.checked_add(ksize).and_then(|k| k.checked_add(vsize)) else {
            return invalid("element length overflows");
        };
        if end > page.len() {
            return invalid("an element lies outside its page");
        }
        let key = &page[start..start + ksize];
        if prev.is_some_and(|p| p >= key) {
            return invalid("keys out of order in a leaf page");
        }
        prev = Some(key);
        f(key, &page[start + ksize..end], flags)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    type Kvs = Vec<(Vec<u8>, Vec<u8>)>;

    fn build(buckets: &[(&str, Kvs)]) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().expect("test setup");
        let mut w = BoltWriter::new(io::BufWriter::new(file.reopen().expect("test setup"))).expect("new");
        for (name, kvs) in buckets {
            w.begin_bucket(name.as_bytes()).expect("bucket");
            for (k, v) in kvs {
                w.put(k, v).expect("put");
            }
        }
        w.finish().expect("finish");
        file
    }

    fn read_all(path: &Path) -> Vec<(Vec<u8>, Kvs)> {
        let len = std::fs::metadata(path).expect("test setup").len();
        let r = BoltReader::open(path, len).expect("open");
        let mut out = Vec::new();
        for (name, root) in r.buckets().expect("buckets") {
            let mut kvs = Vec::new();
            r.walk(&root, &mut |k, v, _| {
                kvs.push((k.to_vec(), v.to_vec()));
                Ok(())
            })
            .expect("walk");
            out.push((name, kvs));
        }
        out
    }

    /// Small, empty, multi-level and oversized-value buckets read back exactly.
    #[test]
    fn written_buckets_read_back() {
        let many: Vec<(Vec<u8>, Vec<u8>)> =
            (0..20_000u32).map(|i| (i.to_be_bytes().to_vec(), format!("value {i}").into_bytes())).collect();
        let big = vec![(b"big".to_vec(), vec![7u8; 3 * PAGE_SIZE + 5]), (b"small".to_vec(), b"x".to_vec())];
        let buckets = vec![
            ("a-empty", Vec::new()),
            ("b-small", vec![(b"k".to_vec(), b"v".to_vec())]),
            ("c-big", big),
            ("d-many", many),
        ];
        let file = build(&buckets);
        let back = read_all(file.path());
        assert_eq!(back.len(), 4);
        for ((name, kvs), (bname, bkvs)) in buckets.iter().zip(&back) {
            assert_eq!(name.as_bytes(), bname.as_slice());
            assert!(kvs == bkvs, "bucket {name} differs");
        }
    }

    /// Damaged files are refused with an error, never a panic.
    #[test]
    fn damage_is_an_error() {
        let many: Vec<(Vec<u8>, Vec<u8>)> =
            (0..2000u32).map(|i| (i.to_be_bytes().to_vec(), vec![1u8; 40])).collect();
        let file = build(&[("k", many)]);
        let good = std::fs::read(file.path()).expect("test setup");
        let mut rng = 0x1234_5678_u64;
        for round in 0..300 {
            let mut bad = good.clone();
            for _ in 0..1 + round % 8 {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let at = (rng % bad.len() as u64) as usize;
                bad[at] ^= (rng >> 32) as u8 | 1;
            }
            let f = tempfile::NamedTempFile::new().expect("test setup");
            std::fs::write(f.path(), &bad).expect("test setup");
            if let Ok(r) = BoltReader::open(f.path(), bad.len() as u64)
                && let Ok(buckets) = r.buckets()
            {
                for (_, root) in buckets {
                    let _ = r.walk(&root, &mut |_, _, _| Ok(()));
                }
            }
        }
        let f = tempfile::NamedTempFile::new().expect("test setup");
        std::fs::write(f.path(), &good[..PAGE_SIZE]).expect("test setup");
        assert!(BoltReader::open(f.path(), PAGE_SIZE as u64).is_err());
    }

    /// A file whose meta pages are unusable says what is wrong with the first one.
    #[test]
    fn unusable_meta_pages_are_explained() {
        let file = build(&[("k", vec![(b"a".to_vec(), b"1".to_vec())])]);
        let good = std::fs::read(file.path()).expect("test setup");
        let open = |bytes: &[u8]| {
            let f = tempfile::NamedTempFile::new().expect("test setup");
            std::fs::write(f.path(), bytes).expect("test setup");
            BoltReader::open(f.path(), bytes.len() as u64).err()
        };
        let meta_error = |bytes: &[u8]| match open(bytes) {
            Some(BoltError::Meta(m)) => m,
            other => panic!("expected a meta page error, got {other:?}"),
        };
        assert_eq!(meta_error(&good[..40]), MetaError::TooShort);
        assert_eq!(meta_error(&vec![0u8; 2 * PAGE_SIZE]), MetaError::NotMeta);
        // Both meta pages: magic, then version, then checksum.
        let mut bad = good.clone();
        for meta in [0, PAGE_SIZE] {
            bad[meta + PAGE_HEADER] ^= 1;
        }
        assert_eq!(meta_error(&bad), MetaError::Magic);
        let e = open(&bad).expect("error");
        assert_eq!(e.to_string(), "not a valid bbolt database: bad magic");
        let mut bad = good.clone();
        for meta in [0, PAGE_SIZE] {
            bad[meta + PAGE_HEADER + 4] = 9;
        }
        assert_eq!(meta_error(&bad), MetaError::Version(9));
        let mut bad = good.clone();
        for meta in [0, PAGE_SIZE] {
            bad[meta + PAGE_HEADER + 20] ^= 1;
        }
        assert_eq!(meta_error(&bad), MetaError::Checksum);
        assert!(open(&good).is_none());
    }
}
