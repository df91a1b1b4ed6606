//! Writing the new pack: count the wanted objects, encode their entries as a pack stream and
//! let the streaming indexer write pack and index into the staging directory.

use std::{
    cell::RefCell,
    fs,
    io::{self, Read},
    path::{Path, PathBuf},
    rc::Rc,
    sync::atomic::{AtomicBool, Ordering},
};

use gix::ObjectId;
use gix_pack::data::output;

use super::{Error, ErrorKind, entries::EntrySource, stop_point};
use crate::git::indexer;

/// Entries per chunk handed to the pack encoder, at most.
pub(super) const ENTRIES_PER_CHUNK: usize = 256;

/// A chunk ends once its entries' compressed data passes this many bytes. The chunk is held in
/// memory twice (as entries, then encoded), so 256 large files in one chunk would cost twice
/// their size; this keeps a chunk of large entries to one entry.
pub(super) const CHUNK_BYTES: usize = 1 << 20;

/// Count everything reachable from `roots`, stream it as pack data into the streaming indexer
/// (which holds no object whole unless a delta needs it) and let that write the pack and its
/// index into `staging_dir`. Returns the pack's path along with the ids of all objects that
/// belong into the pack.
///
/// `source_packs` are the index files of existing packs, oldest first; entries are copied from
/// them as they are, see [`EntrySource`].
pub(super) fn write_pack(
    odb: &gix::odb::Handle,
    roots: Vec<ObjectId>,
    source_packs: &[PathBuf],
    staging_dir: &Path,
    object_hash: gix::hash::Kind,
    thread_limit: Option<usize>,
    should_interrupt: &AtomicBool,
) -> Result<(PathBuf, Vec<ObjectId>), Error> {
    let (counts, _) = output::count::objects(
        odb.clone(),
        Box::new(roots.into_iter().map(Ok)),
        &gix::progress::Discard,
        should_interrupt,
        output::count::objects::Options {
            thread_limit,
            chunk_size: 50,
            // Each commit's full tree, skipping subtrees already seen; unlike the alternative,
            // which diffs against parent trees, this needs no parents and so works when shallow.
            input_object_expansion: output::count::objects::ObjectExpansion::TreeContents,
        },
    )
    .map_err(|err| Error::gix("could not count objects", &err, should_interrupt))?;
    stop_point()?;
    if should_interrupt.load(Ordering::Relaxed) {
        return Err(Error::interrupted());
    }
    let num_entries = u32::try_from(counts.len())
        .map_err(|_| Error::new(ErrorKind::InvalidInput, "too many objects for one pack"))?;
    let wanted: Vec<ObjectId> = counts.into_iter().map(|count| count.id).collect();
    let source = EntrySource::new(odb, &wanted, source_packs, object_hash, should_interrupt);

    let sink = Rc::new(RefCell::new(Vec::new()));
    let stream = PackStream {
        encoder: output::bytes::FromEntriesIter::new(
            source,
            SharedSink(Rc::clone(&sink)),
            num_entries,
            gix_pack::data::Version::V2,
            object_hash,
        ),
        sink,
        consumed: 0,
        should_interrupt,
    };
    let mut reader = io::BufReader::with_capacity(64 * 1024, stream);
    let result = indexer::write(
        &mut reader,
        staging_dir,
        thread_limit.unwrap_or(0),
        object_hash,
        should_interrupt,
        // Consolidation is not a transfer: nobody samples this.
        &crate::progress::Counter::default(),
    );
    let generating_failure = || reader.into_inner().encoder.input.failure.take();
    match result {
        Ok(Some(written)) => Ok((written.data_path, wanted)),
        Ok(None) => Err(Error::new(
            ErrorKind::Corrupt,
            "the new pack has no objects",
        )),
        // The writer only sees a failed read; the generating side knows what actually went wrong.
        Err(indexer::Failure::Other(err)) => Err(match generating_failure() {
            Some(cause) => cause,
            None => Error::gix("could not write pack", &err, should_interrupt),
        }),
        // Deltas here name their bases by position in the same pack, never by id alone.
        Err(indexer::Failure::Thin(path)) => {
            let _ = fs::remove_file(path);
            Err(Error::new(
                ErrorKind::Corrupt,
                "the new pack refers to objects outside it",
            ))
        }
    }
}

/// The write side of the buffer between the pack encoder and [`PackStream`].
struct SharedSink(Rc<RefCell<Vec<u8>>>);

impl io::Write for SharedSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.borrow_mut().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Presents the pack encoder as a reader, producing one chunk of entries whenever the previous
/// one is used up. The pack writer wants to read a pack stream; going through a temporary file
/// instead would write the whole pack twice.
struct PackStream<'a, I> {
    /// Encodes entry chunks into pack bytes appended to `sink`.
    encoder: output::bytes::FromEntriesIter<I, SharedSink>,
    /// Bytes produced by `encoder`, of which the first `consumed` have been read already.
    sink: Rc<RefCell<Vec<u8>>>,
    /// How much of `sink` was handed out.
    consumed: usize,
    /// Checked before producing each chunk.
    should_interrupt: &'a AtomicBool,
}

impl<I> Read for PackStream<'_, I>
where
    I: Iterator<Item = gix::Result<Vec<output::Entry>>>,
{
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            {
                let sink = self.sink.borrow();
                let available = &sink[self.consumed..];
                if !available.is_empty() {
                    let n = available.len().min(out.len());
                    out[..n].copy_from_slice(&available[..n]);
                    self.consumed += n;
                    return Ok(n);
                }
            }
            {
                let mut sink = self.sink.borrow_mut();
                sink.clear();
                // A chunk with one large entry grew the buffer to that entry's size; do not
                // keep that for the rest of the run.
                if sink.capacity() > 4 * CHUNK_BYTES {
                    sink.shrink_to(CHUNK_BYTES);
                }
            }
            self.consumed = 0;
            if self.should_interrupt.load(Ordering::Relaxed) {
                // Not `ErrorKind::Interrupted`: readers retry on that one.
                return Err(io::Error::other("interrupted"));
            }
            match self.encoder.next() {
                None => return Ok(0),
                Some(Ok(_)) => {}
                Some(Err(err)) => return Err(io::Error::other(err.to_string())),
            }
        }
    }
}
