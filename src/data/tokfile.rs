//! Token files (`train.bin`, `valid.bin`, `test.bin`).
//!
//! Layout, all integers little-endian:
//!
//! | offset | size | field                                   |
//! |-------:|-----:|-----------------------------------------|
//! | 0      | 8    | magic `b"DYNTOKS\0"`                    |
//! | 8      | 4    | format version (u32, currently 1)       |
//! | 12     | 4    | token width in bytes (u32, 2 or 4)      |
//! | 16     | 4    | vocabulary size (u32)                   |
//! | 20     | 4    | reserved, 0                             |
//! | 24     | 8    | token count `n` (u64)                   |
//! | 32     | n·w  | the tokens, each `w` bytes (u16 or u32) |
//!
//! The writer picks width 2 when every id fits in a u16 (vocab <= 65536).

use anyhow::{bail, Context, Result};
use memmap2::Mmap;
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

pub const MAGIC: &[u8; 8] = b"DYNTOKS\0";
pub const VERSION: u32 = 1;
pub const HEADER_BYTES: usize = 32;

const FIX: &str = "re-run `dyntie prepare` to rebuild it";

/// Write `tokens` to `path` atomically (temp file, fsync, rename).
pub fn write_tokens(path: &Path, tokens: &[u32], vocab_size: usize) -> Result<()> {
    let mut w = TokenWriter::create(path, vocab_size)?;
    w.push(tokens)?;
    w.finish().map(|_| ())
}

/// Streams tokens into `<path>.tmp`; [`TokenWriter::finish`] writes the
/// count into the header, fsyncs and renames the file into place, so a
/// reader never sees a half-written file. Dropped unfinished, it removes
/// the temp file.
pub struct TokenWriter {
    path: PathBuf,
    tmp: PathBuf,
    out: Option<BufWriter<File>>,
    width: usize,
    vocab_size: usize,
    count: u64,
}

impl TokenWriter {
    pub fn create(path: &Path, vocab_size: usize) -> Result<TokenWriter> {
        if vocab_size == 0 || vocab_size > u32::MAX as usize {
            bail!("{}: invalid vocabulary size {vocab_size}", path.display());
        }
        let width: u32 = if vocab_size <= 1 << 16 { 2 } else { 4 };
        let tmp = tmp_path(path);
        let file =
            File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        let mut w = TokenWriter {
            path: path.to_path_buf(),
            tmp,
            out: Some(BufWriter::with_capacity(1 << 20, file)),
            width: width as usize,
            vocab_size,
            count: 0,
        };
        let mut header = Vec::with_capacity(HEADER_BYTES);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&VERSION.to_le_bytes());
        header.extend_from_slice(&width.to_le_bytes());
        header.extend_from_slice(&(vocab_size as u32).to_le_bytes());
        header.extend_from_slice(&0u32.to_le_bytes());
        header.extend_from_slice(&0u64.to_le_bytes()); // count, set by finish
        w.write(&header)?;
        Ok(w)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let out = self.out.as_mut().expect("writer used after finish");
        out.write_all(bytes)
            .with_context(|| format!("cannot write {}", self.tmp.display()))
    }

    /// Append tokens; an id outside the vocabulary is an error.
    pub fn push(&mut self, tokens: &[u32]) -> Result<()> {
        if let Some(pos) = tokens.iter().position(|&t| t as usize >= self.vocab_size) {
            bail!(
                "{}: token {} at position {} is outside the vocabulary of {}",
                self.path.display(),
                tokens[pos],
                self.count + pos as u64,
                self.vocab_size
            );
        }
        let mut bytes = Vec::with_capacity(tokens.len() * self.width);
        for &t in tokens {
            if self.width == 2 {
                bytes.extend_from_slice(&(t as u16).to_le_bytes());
            } else {
                bytes.extend_from_slice(&t.to_le_bytes());
            }
        }
        self.write(&bytes)?;
        self.count += tokens.len() as u64;
        Ok(())
    }

    /// Complete the file and move it into place; returns the token count.
    pub fn finish(mut self) -> Result<u64> {
        let out = self.out.take().expect("writer used after finish");
        let tmp = self.tmp.clone();
        let done = || -> Result<()> {
            let mut file = out.into_inner().map_err(|e| e.into_error())?;
            file.seek(SeekFrom::Start(24))?;
            file.write_all(&self.count.to_le_bytes())?;
            file.sync_all()?;
            Ok(())
        };
        if let Err(e) = done() {
            let _ = std::fs::remove_file(&tmp);
            return Err(e.context(format!("cannot write {}", tmp.display())));
        }
        std::fs::rename(&tmp, &self.path).with_context(|| {
            format!("cannot rename {} to {}", tmp.display(), self.path.display())
        })?;
        Ok(self.count)
    }
}

impl Drop for TokenWriter {
    fn drop(&mut self) {
        if self.out.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Write `bytes` to `path` atomically (used for `meta.json`).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    let write = || -> Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        Ok(())
    };
    write().with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// A validated, memory-mapped token file.
pub struct TokenFile {
    path: PathBuf,
    map: Mmap,
    width: usize,
    vocab_size: usize,
    len: usize,
}

impl std::fmt::Debug for TokenFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenFile({}, {} tokens)", self.path.display(), self.len)
    }
}

impl TokenFile {
    /// Open and validate the header, the size and every token id.
    pub fn open(path: &Path) -> Result<TokenFile> {
        let p = path.display();
        let file = File::open(path).with_context(|| format!("cannot open token file {p}"))?;
        // SAFETY: the file is opened read-only and prepared files are never
        // modified in place (the writer replaces them by rename).
        let map = unsafe { Mmap::map(&file) }.with_context(|| format!("cannot map {p}"))?;
        if map.len() < HEADER_BYTES {
            bail!(
                "{p}: {} bytes is too short for the {HEADER_BYTES}-byte header; {FIX}",
                map.len()
            );
        }
        if &map[0..8] != MAGIC {
            bail!("{p}: not a dyntie token file (bad magic bytes); {FIX}");
        }
        let u32_at = |o: usize| u32::from_le_bytes(map[o..o + 4].try_into().unwrap());
        let version = u32_at(8);
        if version != VERSION {
            bail!("{p}: token file format version {version}, this build reads version {VERSION}; {FIX}");
        }
        let width = u32_at(12) as usize;
        if width != 2 && width != 4 {
            bail!("{p}: token width {width} bytes (must be 2 or 4); {FIX}");
        }
        let vocab_size = u32_at(16) as usize;
        if vocab_size == 0 || (width == 2 && vocab_size > 1 << 16) {
            bail!("{p}: vocabulary size {vocab_size} does not fit width {width}; {FIX}");
        }
        let count = u64::from_le_bytes(map[24..32].try_into().unwrap());
        let body = (map.len() - HEADER_BYTES) as u64;
        if count.checked_mul(width as u64) != Some(body) {
            bail!(
                "{p}: header says {count} tokens of {width} bytes but the body has {body} bytes \
                 (truncated or corrupt); {FIX}"
            );
        }
        let tf = TokenFile {
            path: path.to_path_buf(),
            map,
            width,
            vocab_size,
            len: count as usize,
        };
        tf.check_ids()?;
        Ok(tf)
    }

    fn check_ids(&self) -> Result<()> {
        let body = &self.map[HEADER_BYTES..];
        let bad = if self.width == 2 {
            body.chunks_exact(2)
                .position(|c| u16::from_le_bytes([c[0], c[1]]) as usize >= self.vocab_size)
        } else {
            body.chunks_exact(4)
                .position(|c| u32::from_le_bytes(c.try_into().unwrap()) as usize >= self.vocab_size)
        };
        if let Some(pos) = bad {
            bail!(
                "{}: token id {} at position {pos} is >= the vocabulary size {}; {FIX}",
                self.path.display(),
                self.window(pos, 1)[0],
                self.vocab_size
            );
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn width(&self) -> usize {
        self.width
    }
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Copy tokens `start..start + out.len()` into `out`. Panics when the
    /// range is out of bounds (callers check against `len`).
    pub fn read_into(&self, start: usize, out: &mut [u32]) {
        assert!(start + out.len() <= self.len, "token range out of bounds");
        let from = HEADER_BYTES + start * self.width;
        let bytes = &self.map[from..from + out.len() * self.width];
        if self.width == 2 {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = u16::from_le_bytes([c[0], c[1]]) as u32;
            }
        } else {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
    }

    /// Tokens `start..start + len` as u32, whatever the width on disk.
    pub fn window(&self, start: usize, len: usize) -> Vec<u32> {
        let mut v = vec![0; len];
        self.read_into(start, &mut v);
        v
    }
}
