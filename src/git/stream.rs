//! Streaming blobs out of pack files, so that a large file never sits whole in memory.
//!
//! gix decodes an object into one buffer as large as the object. For a blob stored whole in a
//! pack (not as a delta), that is not needed: its bytes are one zlib stream at a known offset,
//! which is inflated here a few kilobytes at a time straight into the writer, and hashed on the
//! way so that a damaged pack is reported rather than written out. The pack is read through the
//! file, not mapped, so the pages read count as page cache the kernel can drop, not as this
//! process's resident memory.
//!
//! Everything else (a loose object, a blob stored as a delta against another object) is left to
//! the caller, which falls back to gix: such a read holds the blob, and for a delta its base,
//! in memory at once.

use std::fs::File;
use std::io::{BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::read::ReadFailure;

/// Bytes inflated per step, and the size of the read buffer over the pack file.
const CHUNK: usize = 64 * 1024;

/// The pack indices of one repository, opened once for many reads.
pub(crate) struct PackedBlobs {
    packs: Vec<Pack>,
    object_hash: gix::hash::Kind,
    inflate: gix::zlib::Decompress,
    buf: Vec<u8>,
}

struct Pack {
    index: gix_pack::index::File,
    path: PathBuf,
    /// Opened on first use.
    file: Option<File>,
}

impl std::fmt::Debug for PackedBlobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedBlobs")
            .field("packs", &self.packs.len())
            .finish()
    }
}

impl PackedBlobs {
    /// Opens the index of every pack under `objects_dir/pack`. An index that cannot be opened
    /// is left out: its objects are then read through gix, which reports a real problem.
    pub fn open(objects_dir: &Path, object_hash: gix::hash::Kind) -> Self {
        let mut packs = Vec::new();
        if let Ok(entries) = std::fs::read_dir(objects_dir.join("pack")) {
            for entry in entries.flatten() {
                let path = entry.path();
                if path.extension().is_none_or(|ext| ext != "idx") {
                    continue;
                }
                let pack = path.with_extension("pack");
                if let Ok(index) = gix_pack::index::File::at(&path, object_hash) {
                    packs.push(Pack {
                        index,
                        path: pack,
                        file: None,
                    });
                }
            }
        }
        PackedBlobs {
            packs,
            object_hash,
            inflate: gix::zlib::Decompress::new(),
            buf: Vec::new(),
        }
    }

    /// Writes blob `id` of `size` bytes to `out` when it is stored whole in one of the packs,
    /// reading and inflating it a chunk at a time; returns `Ok(false)`, having written nothing,
    /// when it is not (loose, a delta, or in no pack known here).
    pub fn stream(
        &mut self,
        id: &gix::oid,
        size: u64,
        out: &mut dyn Write,
    ) -> Result<bool, ReadFailure> {
        let Some((pack, position)) = self
            .packs
            .iter_mut()
            .find_map(|pack| pack.index.lookup(id).map(|position| (pack, position)))
        else {
            return Ok(false);
        };
        let offset = pack.index.pack_offset_at_index(position);
        let corrupt = |what: &str| {
            ReadFailure::Corrupt(format!("blob {id} in {}: {what}", pack.path.display()))
        };
        if pack.file.is_none() {
            pack.file = Some(File::open(&pack.path).map_err(|err| corrupt(&err.to_string()))?);
        }
        let Some(file) = pack.file.as_mut() else {
            return Ok(false);
        };
        file.seek(SeekFrom::Start(offset))
            .map_err(|err| corrupt(&err.to_string()))?;
        // Deflate adds a few bytes per 16 KiB at worst: a small blob needs a small read.
        let capacity = usize::try_from(size + size / 1024 + 64).map_or(CHUNK, |n| n.min(CHUNK));
        let mut reader = BufReader::with_capacity(capacity, &*file);
        let entry =
            gix_pack::data::Entry::from_read(&mut reader, offset, self.object_hash.len_in_bytes())
                .map_err(|err| corrupt(&format!("unreadable entry header: {err}")))?;
        if entry.header != gix_pack::data::entry::Header::Blob {
            return Ok(false);
        }
        if entry.decompressed_size != size {
            return Err(corrupt(&format!(
                "the pack holds {} bytes, the object database said {size}",
                entry.decompressed_size
            )));
        }
        self.inflate.reset();
        self.buf.resize(CHUNK, 0);
        let mut hasher = gix::hash::hasher(self.object_hash);
        hasher.update(&gix::objs::encode::loose_header(
            gix::objs::Kind::Blob,
            size,
        ));
        let mut written = 0u64;
        while written < size {
            // Never ask for more than the blob holds: the stream's end is not read past.
            let want = usize::try_from(size - written).map_or(CHUNK, |left| left.min(CHUNK));
            let n = gix::zlib::stream::inflate::read(
                &mut reader,
                &mut self.inflate,
                &mut self.buf[..want],
            )
            .map_err(|err| corrupt(&format!("cannot inflate: {err}")))?;
            if n == 0 {
                return Err(corrupt(&format!(
                    "the data ends after {written} of {size} bytes"
                )));
            }
            hasher.update(&self.buf[..n]);
            out.write_all(&self.buf[..n]).map_err(|err| {
                ReadFailure::Io(format!("cannot write blob {id}"), std::sync::Arc::new(err))
            })?;
            written += n as u64;
        }
        let actual = hasher
            .try_finalize()
            .map_err(|err| corrupt(&format!("cannot hash: {err}")))?;
        if actual != id {
            return Err(corrupt(&format!("its content hashes to {actual}")));
        }
        Ok(true)
    }
}
