//! Where each entry of the new pack comes from: copied as it is from the oldest pack holding
//! it, with deltas relinked to their base's new position, or compressed afresh.

use std::{
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
};

use gix::ObjectId;
use gix_pack::data::output;

use super::{
    Error, ErrorKind,
    roots::find,
    write::{CHUNK_BYTES, ENTRIES_PER_CHUNK},
};

/// Git's default limit for delta chains. Chains grow when entries of a newer pack are linked to
/// bases in an older one; past this depth an object is stored whole, which bounds reading cost.
pub(super) const MAX_DELTA_DEPTH: u16 = 50;

/// An existing pack that entries are copied from.
struct SourcePack {
    /// The opened pack and index.
    bundle: gix_pack::Bundle,
    /// Every entry of the pack as offset and id, sorted by offset: entries end where the next
    /// begins, and offset deltas name their base by offset.
    by_offset: Vec<(u64, ObjectId)>,
}

impl SourcePack {
    /// The id of the entry starting at `offset`.
    fn id_at(&self, offset: u64) -> Option<ObjectId> {
        let pos = self
            .by_offset
            .binary_search_by_key(&offset, |(offset, _)| *offset)
            .ok()?;
        Some(self.by_offset[pos].1)
    }

    /// Where the entry starting at `offset` ends.
    fn entry_end(&self, offset: u64) -> u64 {
        let next = self
            .by_offset
            .partition_point(|(start, _)| *start <= offset);
        match self.by_offset.get(next) {
            Some((start, _)) => *start,
            None => self.bundle.pack.pack_end() as u64,
        }
    }
}

/// Produces the entries of the new pack in order, as chunks for the pack encoder.
///
/// gix can copy deltas only when their base comes from the same pack, but every fetch pack
/// carries whole copies of the bases its deltas need, which are duplicates of objects in older
/// packs. Copying those whole copies would make each consolidation store a complete version of
/// every object a fetch touched. Instead each object is taken from the oldest pack holding it and
/// packs are written oldest first; a delta is then copied unchanged and pointed at wherever its
/// base went in the new pack, which is always earlier. Whatever cannot be linked that way (loose
/// objects, bases that are unreachable or come later, chains too deep) is stored whole.
pub(super) struct EntrySource<'a> {
    /// For looking up whole objects.
    odb: &'a gix::odb::Handle,
    /// The packs entries are copied from, oldest first.
    packs: Vec<SourcePack>,
    /// Objects in output order, with the pack index and offset to copy them from if packed.
    order: Vec<(ObjectId, Option<(usize, u64)>)>,
    /// Position of the next object in `order`.
    next: usize,
    /// Position and delta chain depth of each object already handed out.
    written: gix::hashtable::HashMap<ObjectId, (usize, u16)>,
    /// Scratch space for whole objects.
    buf: Vec<u8>,
    /// The first error, kept as only an opaque error can travel through the pack encoder.
    pub(super) failure: Option<Error>,
    /// Checked once per chunk.
    should_interrupt: &'a AtomicBool,
}

impl<'a> EntrySource<'a> {
    /// Decide for each of the `wanted` objects where to copy it from, opening `source_packs`
    /// (index paths, oldest first).
    pub(super) fn new(
        odb: &'a gix::odb::Handle,
        wanted: &[ObjectId],
        source_packs: &[PathBuf],
        object_hash: gix::hash::Kind,
        should_interrupt: &'a AtomicBool,
    ) -> Self {
        let mut origin: gix::hashtable::HashMap<ObjectId, Option<(usize, u64)>> =
            wanted.iter().map(|id| (*id, None)).collect();
        let mut packs = Vec::with_capacity(source_packs.len());
        for index_path in source_packs {
            let Ok(bundle) = gix_pack::Bundle::at(index_path, object_hash) else {
                // Objects of a pack that cannot be opened are read through the object database,
                // which fails loudly if they are really needed and unavailable.
                continue;
            };
            let pack = packs.len();
            let mut by_offset = Vec::with_capacity(bundle.index.num_objects() as usize);
            for entry in bundle.index.iter() {
                if let Some(slot @ None) = origin.get_mut(&entry.oid) {
                    *slot = Some((pack, entry.pack_offset));
                }
                by_offset.push((entry.pack_offset, entry.oid));
            }
            by_offset.sort_unstable();
            packs.push(SourcePack { bundle, by_offset });
        }

        // Unpacked objects first, so that deltas naming them by id can be linked to them; then
        // each pack's objects in their original order, which keeps every base ahead of its deltas.
        let mut order: Vec<(ObjectId, Option<(usize, u64)>)> = wanted
            .iter()
            .filter(|id| matches!(origin.get(*id), Some(None)))
            .map(|id| (*id, None))
            .collect();
        let mut packed: Vec<(usize, u64, ObjectId)> = origin
            .iter()
            .filter_map(|(id, place)| place.map(|(pack, offset)| (pack, offset, *id)))
            .collect();
        packed.sort_unstable();
        order.extend(
            packed
                .into_iter()
                .map(|(pack, offset, id)| (id, Some((pack, offset)))),
        );

        EntrySource {
            odb,
            packs,
            written: gix::hashtable::HashMap::default(),
            order,
            next: 0,
            buf: Vec::new(),
            failure: None,
            should_interrupt,
        }
    }

    /// The entry for `id` and its delta chain depth, copied from `place` if possible.
    fn entry(
        &mut self,
        id: ObjectId,
        place: Option<(usize, u64)>,
    ) -> Result<(output::Entry, u16), Error> {
        if let Some((pack, offset)) = place
            && let Some(copied) = self.copy(id, pack, offset)?
        {
            return Ok(copied);
        }
        let data = find(self.odb, &id, &mut self.buf, self.should_interrupt)?;
        let entry = output::Entry::from_data(
            &output::Count::from_data(id, None),
            &data,
            gix::zlib::Compression::DEFAULT,
        )
        .map_err(|err| {
            Error::gix(
                &format!("could not compress object {id}"),
                &err,
                self.should_interrupt,
            )
        })?;
        Ok((entry, 0))
    }

    /// The entry at `offset` of pack `pack` as it is, or `None` if it is a delta whose base is
    /// not available in the new pack yet.
    fn copy(
        &self,
        id: ObjectId,
        pack: usize,
        offset: u64,
    ) -> Result<Option<(output::Entry, u16)>, Error> {
        use gix_pack::data::entry::Header;

        let source = &self.packs[pack];
        let corrupt = || {
            Error::new(
                ErrorKind::Corrupt,
                format!(
                    "malformed entry for {id} in {}",
                    source.bundle.pack.path().display()
                ),
            )
        };
        let entry = source.bundle.pack.entry(offset).map_err(|_| corrupt())?;
        let (kind, depth) = match entry.header {
            Header::Commit => (output::entry::Kind::Base(gix::objs::Kind::Commit), 0),
            Header::Tree => (output::entry::Kind::Base(gix::objs::Kind::Tree), 0),
            Header::Blob => (output::entry::Kind::Base(gix::objs::Kind::Blob), 0),
            Header::Tag => (output::entry::Kind::Base(gix::objs::Kind::Tag), 0),
            Header::OfsDelta { base_distance } => {
                let base = Header::verified_base_pack_offset(offset, base_distance)
                    .and_then(|base_offset| source.id_at(base_offset))
                    .ok_or_else(corrupt)?;
                match self.link(&base) {
                    Some(linked) => linked,
                    None => return Ok(None),
                }
            }
            Header::RefDelta { base_id } => match self.link(&base_id) {
                Some(linked) => linked,
                None => return Ok(None),
            },
        };
        let data = source
            .bundle
            .pack
            .entry_slice(entry.data_offset..source.entry_end(offset))
            .ok_or_else(corrupt)?;
        let decompressed_size = usize::try_from(entry.decompressed_size).map_err(|_| corrupt())?;
        Ok(Some((
            output::Entry {
                id,
                kind,
                decompressed_size,
                compressed_data: data.to_vec(),
            },
            depth,
        )))
    }

    /// How a delta against `base` is written: relative to the base's position in the new pack,
    /// if the base is there already and the chain does not get too long.
    fn link(&self, base: &ObjectId) -> Option<(output::entry::Kind, u16)> {
        let (position, depth) = *self.written.get(base)?;
        (depth < MAX_DELTA_DEPTH).then_some((
            output::entry::Kind::DeltaRef {
                object_index: position,
            },
            depth + 1,
        ))
    }
}

impl Iterator for EntrySource<'_> {
    type Item = gix::Result<Vec<output::Entry>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next == self.order.len() || self.failure.is_some() {
            return None;
        }
        if self.should_interrupt.load(Ordering::Relaxed) {
            self.failure = Some(Error::interrupted());
            return Some(Err(gix::error::Message::new("interrupted").into()));
        }
        let end = (self.next + ENTRIES_PER_CHUNK).min(self.order.len());
        let mut chunk = Vec::with_capacity(end - self.next);
        let mut bytes = 0;
        while self.next < end && bytes < CHUNK_BYTES {
            let (id, place) = self.order[self.next];
            match self.entry(id, place) {
                Ok((entry, depth)) => {
                    self.written.insert(id, (self.next, depth));
                    bytes += entry.compressed_data.len();
                    chunk.push(entry);
                }
                Err(err) => {
                    let message = err.message.clone();
                    self.failure = Some(err);
                    return Some(Err(gix::error::Message::new(message).into()));
                }
            }
            self.next += 1;
        }
        Some(Ok(chunk))
    }
}
