//! Writing a received pack to disk and indexing it without holding its entries in memory.
//!
//! gix's pack writer keeps each entry's compressed bytes in a buffer as large as the entry
//! (to hash and checksum them afterwards), and keeps that buffer, grown to the largest entry,
//! until the index is written: with a large incompressible file, that is one copy of the file
//! while the index is built on top of another. Here the bytes are hashed, checksummed and
//! written to the pack file as they stream past, and only then does gix build the index from
//! the file (holding, per indexing thread, one whole object at a time: for a blob stored
//! whole, that blob).
//!
//! A thin pack (deltas against objects the server knows the client has, which are not in the
//! pack) cannot be indexed alone; [`write`] then leaves the complete pack file to the caller,
//! which completes it with gix's thin-pack support.

use std::fs::File;
use std::io::{self, BufRead, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use gix::error::ErrorExt;
use gix_pack::data::entry::Header;

/// Bytes inflated per step while an entry streams past.
const CHUNK: usize = 64 * 1024;

/// A pack written and indexed in `pack_dir`.
#[derive(Debug)]
pub(super) struct Written {
    /// The pack file, `pack-<hash>.pack`.
    pub data_path: PathBuf,
}

/// How [`write`] ended when it did not write an indexed pack.
#[derive(Debug)]
pub(super) enum Failure {
    /// The pack is thin: the complete pack data is in this temporary file, to be completed with
    /// the bases from the repository. The caller removes the file.
    Thin(PathBuf),
    /// The pack is malformed, or reading or writing failed.
    Other(gix::Error),
}

/// Streams the pack from `reader` into a temporary file in `pack_dir`, indexes it with
/// `threads` threads (`0`: one per core) and moves both into place as `pack-<hash>.{pack,idx}`.
/// An empty pack (no objects) writes nothing and returns `Ok(None)`.
pub(super) fn write(
    reader: &mut dyn BufRead,
    pack_dir: &Path,
    threads: usize,
    object_hash: gix::hash::Kind,
    should_interrupt: &AtomicBool,
) -> Result<Option<Written>, Failure> {
    let other = |err: io::Error| Failure::Other(err.raise());
    let temp = TempPath::new(pack_dir);
    let file = File::create(&temp.0).map_err(other)?;
    let mut entries = Entries::new(reader, file, object_hash, should_interrupt).map_err(other)?;
    let version = entries.version;
    let mut index_data = Vec::new();
    let result = gix_pack::index::write_data_iter_to_stream(
        gix_pack::index::Version::V2,
        || {
            let pack = gix_pack::data::File::at(&temp.0, object_hash)
                .map_err(|err| io::Error::other(err.to_string()))?;
            Ok((entry_slice, pack))
        },
        &mut entries,
        Some(threads),
        &mut gix::progress::Discard,
        &mut index_data,
        should_interrupt,
        object_hash,
        None,
        version,
    );
    let saw_ref_delta = entries.saw_ref_delta;
    drop(entries);
    let outcome = match result {
        Ok(outcome) => outcome,
        // Without a delta naming its base by id, the pack cannot be thin: the error is real.
        Err(err) if !saw_ref_delta => return Err(Failure::Other(err)),
        Err(_) => return Err(Failure::Thin(temp.keep())),
    };
    if outcome.num_objects == 0 {
        return Ok(None);
    }
    let name = format!("pack-{}", outcome.data_hash.to_hex());
    let data_path = pack_dir.join(format!("{name}.pack"));
    let index_path = pack_dir.join(format!("{name}.idx"));
    // Pack first, index last: a reader finds a pack through its index.
    if !data_path.is_file() {
        std::fs::rename(&temp.0, &data_path).map_err(other)?;
    }
    if !index_path.is_file() {
        let index_temp = TempPath::new(pack_dir);
        std::fs::write(&index_temp.0, &index_data).map_err(other)?;
        std::fs::rename(&index_temp.0, &index_path).map_err(other)?;
    }
    Ok(Some(Written { data_path }))
}

/// The bytes of the entry at `range` of the pack being indexed.
fn entry_slice(range: gix_pack::data::EntryRange, pack: &gix_pack::data::File) -> Option<&[u8]> {
    pack.entry_slice(range)
}

/// A temporary file in the pack directory, removed when dropped unless kept. Its name starts
/// with `tmp_`, which [`super::Repo::repair`] removes after a crash.
struct TempPath(PathBuf);

impl TempPath {
    fn new(pack_dir: &Path) -> Self {
        let unique = format!("tmp_gitfeed_{}_{}", std::process::id(), fastrand::u64(..));
        TempPath(pack_dir.join(unique))
    }

    fn keep(mut self) -> PathBuf {
        std::mem::take(&mut self.0)
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if !self.0.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// The pack's entries, read from the stream as it passes on its way to the pack file.
struct Entries<'a> {
    tee: Tee<'a>,
    version: gix_pack::data::Version,
    objects_left: u32,
    object_hash: gix::hash::Kind,
    inflate: gix::zlib::Decompress,
    buf: Vec<u8>,
    saw_ref_delta: bool,
    failed: bool,
    should_interrupt: &'a AtomicBool,
}

impl<'a> Entries<'a> {
    fn new(
        reader: &'a mut dyn BufRead,
        file: File,
        object_hash: gix::hash::Kind,
        should_interrupt: &'a AtomicBool,
    ) -> io::Result<Self> {
        let mut tee = Tee {
            inner: reader,
            out: BufWriter::with_capacity(CHUNK, file),
            pack_hash: Some(gix::hash::hasher(object_hash)),
            crc: None,
            offset: 0,
            write_error: None,
        };
        let mut header = [0u8; gix_pack::data::header::SIZE];
        tee.read_exact(&mut header)?;
        let (version, objects_left) = gix_pack::data::header::decode(&header)
            .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err.to_string()))?;
        Ok(Entries {
            tee,
            version,
            objects_left,
            object_hash,
            inflate: gix::zlib::Decompress::new(),
            buf: vec![0; CHUNK],
            saw_ref_delta: false,
            failed: false,
            should_interrupt,
        })
    }

    fn next_entry(&mut self) -> io::Result<gix_pack::data::input::Entry> {
        let pack_offset = self.tee.offset;
        self.tee.crc = Some(crc32fast::Hasher::new());
        let entry = gix_pack::data::Entry::from_read(
            &mut self.tee,
            pack_offset,
            self.object_hash.len_in_bytes(),
        )?;
        if matches!(entry.header, Header::RefDelta { .. }) {
            self.saw_ref_delta = true;
        }
        let header_size = self.tee.offset - pack_offset;
        let size = entry.decompressed_size;
        self.inflate.reset();
        let mut inflated = 0u64;
        let corrupt = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
        while inflated < size {
            if self
                .should_interrupt
                .load(std::sync::atomic::Ordering::Relaxed)
            {
                return Err(io::Error::other("interrupted while receiving the pack"));
            }
            let want = usize::try_from(size - inflated).map_or(CHUNK, |left| left.min(CHUNK));
            let n = gix::zlib::stream::inflate::read(
                &mut self.tee,
                &mut self.inflate,
                &mut self.buf[..want],
            )?;
            if n == 0 {
                return Err(corrupt(format!(
                    "pack entry at {pack_offset} ends after {inflated} of {size} bytes"
                )));
            }
            inflated += n as u64;
        }
        // Read to the end of the zlib stream (its checksum follows the last byte of data);
        // anything more than the header said is a corrupt entry.
        let mut extra = [0u8; 1];
        if gix::zlib::stream::inflate::read(&mut self.tee, &mut self.inflate, &mut extra)? != 0 {
            return Err(corrupt(format!(
                "pack entry at {pack_offset} holds more than the {size} bytes it declares"
            )));
        }
        let compressed_size = self.tee.offset - pack_offset - header_size;
        let crc32 = self.tee.crc.take().map(crc32fast::Hasher::finalize);
        self.objects_left -= 1;
        let trailer = if self.objects_left == 0 {
            Some(self.finish()?)
        } else {
            None
        };
        Ok(gix_pack::data::input::Entry {
            header: entry.header,
            header_size: u16::try_from(header_size)
                .map_err(|_| corrupt(format!("pack entry at {pack_offset}: header too long")))?,
            pack_offset,
            compressed: None,
            compressed_size,
            crc32,
            decompressed_size: size,
            trailer,
        })
    }

    /// Reads the pack's trailing checksum, checks it and flushes the pack file.
    fn finish(&mut self) -> io::Result<gix::ObjectId> {
        let actual = self
            .tee
            .pack_hash
            .take()
            .map(|hasher| hasher.try_finalize())
            .transpose()
            .map_err(|err| io::Error::other(err.to_string()))?;
        let mut trailer = gix::ObjectId::null(self.object_hash);
        self.tee.read_exact(trailer.as_mut_slice())?;
        if actual != Some(trailer) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the pack's checksum is {trailer}, its content hashes to {actual:?}"),
            ));
        }
        if let Some(err) = self.tee.write_error.take() {
            return Err(err);
        }
        self.tee.out.flush()?;
        Ok(trailer)
    }
}

impl Iterator for Entries<'_> {
    type Item = gix::Result<gix_pack::data::input::Entry>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.objects_left == 0 {
            return None;
        }
        let entry = self.next_entry();
        self.failed = entry.is_err();
        Some(entry.map_err(ErrorExt::raise))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.objects_left as usize;
        (left, Some(left))
    }
}

/// Passes the stream through to the pack file, hashing (and for the current entry,
/// checksumming) every byte that is consumed.
struct Tee<'a> {
    inner: &'a mut dyn BufRead,
    out: BufWriter<File>,
    /// Over everything before the trailer; taken when the trailer is read.
    pack_hash: Option<gix::hash::Hasher>,
    crc: Option<crc32fast::Hasher>,
    offset: u64,
    /// The first failed write to the pack file, reported when the pack is complete.
    write_error: Option<io::Error>,
}

impl Read for Tee<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume_checked(n)?;
        Ok(n)
    }
}

impl BufRead for Tee<'_> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, amt: usize) {
        // `consume` cannot fail: a write error is kept and reported once the pack is read.
        if let Err(err) = self.consume_checked(amt) {
            self.write_error.get_or_insert(err);
        }
    }
}

impl Tee<'_> {
    fn consume_checked(&mut self, amt: usize) -> io::Result<()> {
        if amt == 0 {
            return Ok(());
        }
        let buf = self.inner.fill_buf()?;
        let bytes = &buf[..amt.min(buf.len())];
        let result = self.out.write_all(bytes);
        if let Some(hash) = self.pack_hash.as_mut() {
            hash.update(bytes);
        }
        if let Some(crc) = self.crc.as_mut() {
            crc.update(bytes);
        }
        self.offset += bytes.len() as u64;
        let consumed = bytes.len();
        self.inner.consume(consumed);
        result
    }
}
