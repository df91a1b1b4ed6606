//! Writing a received pack to disk and indexing it without holding its objects in memory.
//!
//! gix's pack writer keeps each entry's compressed bytes in a buffer as large as the entry
//! (to hash and checksum them afterwards) and keeps that buffer, grown to the largest entry,
//! while it builds the index; building it, each thread inflates one whole object at a time to
//! hash it, from a mapping of the pack that then counts as resident memory. With large files
//! that is the size of the largest file several times over.
//!
//! Here each entry is checksummed, written to the pack file and inflated 64 KiB at a time as
//! it streams past; an object stored whole is hashed on the way, so its id is known once it has
//! passed. Only the objects that deltas need (the deltas and their bases: in practice the small,
//! similar files) then go to gix, which resolves them from the pack file; every other object is
//! never read again. The index is written here from both.
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

use crate::progress::Counter;

/// Bytes inflated per step while an entry streams past.
const CHUNK: usize = 64 * 1024;

/// A pack written and indexed in `pack_dir`.
#[derive(Debug)]
pub(super) struct Written {
    /// The pack file, `pack-<hash>.pack`.
    pub data_path: PathBuf,
    /// Whether this call put it there; false when the same pack was already in place (another
    /// source of a shared clone received it first), so it is not this call's to remove.
    pub created: bool,
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
/// An empty pack (no objects) writes nothing and returns `Ok(None)`. `progress` counts the
/// objects and bytes as they arrive.
///
/// Memory: besides 64 KiB buffers and about 100 bytes per object, only what resolving deltas
/// needs. An object stored whole that no delta builds on (a large file, typically) is hashed
/// as it streams past and never held; the others go to gix, which resolves the deltas from the
/// pack file holding one whole object per thread (plus, for a delta, its base).
pub(super) fn write(
    reader: &mut dyn BufRead,
    pack_dir: &Path,
    threads: usize,
    object_hash: gix::hash::Kind,
    should_interrupt: &AtomicBool,
    progress: &Counter,
) -> Result<Option<Written>, Failure> {
    let other = |err: io::Error| Failure::Other(err.raise());
    let temp = TempPath::new(pack_dir);
    let file = File::create(&temp.0).map_err(other)?;
    let mut entries =
        Entries::new(reader, file, object_hash, should_interrupt, progress).map_err(other)?;
    let version = entries.version;
    // The count comes from the remote: a lying header must not reserve memory up front.
    let mut records = Vec::with_capacity((entries.objects_left as usize).min(1 << 16));
    for record in &mut entries {
        records.push(record.map_err(Failure::Other)?);
    }
    let (Some(pack_hash), saw_ref_delta) = (entries.trailer, entries.saw_ref_delta) else {
        // No objects: nothing to keep.
        return Ok(None);
    };
    drop(entries);
    progress.resolving();

    // The bases deltas need must go through gix's delta resolution; every other object stored
    // whole already has its id.
    let mut ofs_bases = std::collections::HashSet::new();
    let mut ref_bases = std::collections::HashSet::new();
    for record in &records {
        match record.entry.header {
            Header::OfsDelta { base_distance } => {
                if let Some(base) =
                    Header::verified_base_pack_offset(record.entry.pack_offset, base_distance)
                {
                    ofs_bases.insert(base);
                }
            }
            Header::RefDelta { base_id } => {
                ref_bases.insert(base_id);
            }
            _ => {}
        }
    }
    let mut index: Vec<(gix::ObjectId, u32, u64)> = Vec::with_capacity(records.len());
    let mut to_resolve = Vec::new();
    for record in records {
        match record.id {
            Some(id)
                if !ofs_bases.contains(&record.entry.pack_offset) && !ref_bases.contains(&id) =>
            {
                index.push((
                    id,
                    record.entry.crc32.unwrap_or(0),
                    record.entry.pack_offset,
                ));
            }
            _ => to_resolve.push(record.entry),
        }
    }
    if !to_resolve.is_empty() {
        if let Some(last) = to_resolve.last_mut() {
            // gix takes the pack's checksum from the last entry it is given.
            last.trailer = Some(pack_hash);
        }
        let mut resolve = to_resolve.into_iter().map(Ok);
        let mut index_data = Vec::new();
        let result = gix_pack::index::write_data_iter_to_stream(
            gix_pack::index::Version::V2,
            || {
                let pack = gix_pack::data::File::at(&temp.0, object_hash)
                    .map_err(|err| io::Error::other(err.to_string()))?;
                Ok((entry_slice, pack))
            },
            &mut resolve,
            Some(threads),
            &mut gix::progress::Discard,
            &mut index_data,
            should_interrupt,
            object_hash,
            None,
            version,
        );
        match result {
            Ok(_) => {}
            // Without a delta naming its base by id, the pack cannot be thin: the error is real.
            Err(err) if !saw_ref_delta => return Err(Failure::Other(err)),
            Err(_) => return Err(Failure::Thin(temp.keep())),
        }
        let resolved = gix_pack::index::File::from_data(index_data, PathBuf::new(), object_hash)
            .map_err(Failure::Other)?;
        index.extend(
            resolved
                .iter()
                .map(|entry| (entry.oid, entry.crc32.unwrap_or(0), entry.pack_offset)),
        );
    }
    index.sort_unstable();
    let index_data = encode_index(&index, &pack_hash, object_hash).map_err(Failure::Other)?;

    let name = format!("pack-{}", pack_hash.to_hex());
    let data_path = pack_dir.join(format!("{name}.pack"));
    let index_path = pack_dir.join(format!("{name}.idx"));
    // Pack first, index last: a reader finds a pack through its index. Both are on disk before
    // their names are, as git does it, so a power loss cannot leave a ref pointing into a pack
    // with holes (and a later snapshot's sync does not pay for the pack's write-back).
    let created = !data_path.is_file();
    if created {
        File::open(&temp.0)
            .and_then(|file| file.sync_data())
            .and_then(|()| std::fs::rename(&temp.0, &data_path))
            .map_err(other)?;
    }
    if !index_path.is_file() {
        let index_temp = TempPath::new(pack_dir);
        let indexed = File::create(&index_temp.0)
            .and_then(|mut file| {
                file.write_all(&index_data)?;
                file.sync_data()
            })
            .and_then(|()| std::fs::rename(&index_temp.0, &index_path))
            .and_then(|()| File::open(pack_dir)?.sync_all());
        if let Err(err) = indexed {
            // A pack without its index is invisible to gix and to consolidation alike: it
            // would stay on disk for good.
            if created {
                let _ = std::fs::remove_file(&data_path);
            }
            return Err(other(err));
        }
    }
    Ok(Some(Written { data_path, created }))
}

/// A pack index, version 2, for `entries` (id, CRC32, offset), sorted by id.
fn encode_index(
    entries: &[(gix::ObjectId, u32, u64)],
    pack_hash: &gix::ObjectId,
    object_hash: gix::hash::Kind,
) -> gix::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(8 + 256 * 4 + entries.len() * 32 + 64);
    out.extend_from_slice(b"\xfftOc");
    out.extend_from_slice(&2u32.to_be_bytes());
    let mut fanout = [0u32; 256];
    for (id, _, _) in entries {
        fanout[usize::from(id.as_slice()[0])] += 1;
    }
    let mut total = 0u32;
    for count in fanout {
        total += count;
        out.extend_from_slice(&total.to_be_bytes());
    }
    for (id, _, _) in entries {
        out.extend_from_slice(id.as_slice());
    }
    for (_, crc, _) in entries {
        out.extend_from_slice(&crc.to_be_bytes());
    }
    // Offsets from 2 GiB on go to a table of 64-bit offsets, named by index with the top bit.
    let mut large = Vec::new();
    for (_, _, offset) in entries {
        match u32::try_from(*offset) {
            Ok(small) if small < 0x8000_0000 => out.extend_from_slice(&small.to_be_bytes()),
            _ => {
                let position = u32::try_from(large.len())
                    .ok()
                    .filter(|position| *position < 0x8000_0000)
                    .ok_or_else(|| {
                        io::Error::new(io::ErrorKind::InvalidData, "too many large offsets").raise()
                    })?;
                out.extend_from_slice(&(0x8000_0000 | position).to_be_bytes());
                large.push(*offset);
            }
        }
    }
    for offset in large {
        out.extend_from_slice(&offset.to_be_bytes());
    }
    out.extend_from_slice(pack_hash.as_slice());
    let mut hasher = gix::hash::hasher(object_hash);
    hasher.update(&out);
    let checksum = hasher.try_finalize()?;
    out.extend_from_slice(checksum.as_slice());
    Ok(out)
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
    objects: u32,
    object_hash: gix::hash::Kind,
    inflate: gix::zlib::Decompress,
    buf: Vec<u8>,
    saw_ref_delta: bool,
    failed: bool,
    should_interrupt: &'a AtomicBool,
    /// The pack's checksum, once its last entry was read.
    trailer: Option<gix::ObjectId>,
}

/// One entry as it streamed past.
struct Record {
    entry: gix_pack::data::input::Entry,
    /// The object's id, for an object stored whole (hashed as it was inflated).
    id: Option<gix::ObjectId>,
}

impl<'a> Entries<'a> {
    fn new(
        reader: &'a mut dyn BufRead,
        file: File,
        object_hash: gix::hash::Kind,
        should_interrupt: &'a AtomicBool,
        progress: &'a Counter,
    ) -> io::Result<Self> {
        let mut tee = Tee {
            progress,
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
        progress.start(u64::from(objects_left));
        Ok(Entries {
            tee,
            version,
            objects_left,
            objects: objects_left,
            object_hash,
            inflate: gix::zlib::Decompress::new(),
            buf: vec![0; CHUNK],
            saw_ref_delta: false,
            failed: false,
            should_interrupt,
            trailer: None,
        })
    }

    fn next_entry(&mut self) -> io::Result<Record> {
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
        let mut hasher = entry.header.as_kind().map(|kind| {
            let mut hasher = gix::hash::hasher(self.object_hash);
            hasher.update(&gix::objs::encode::loose_header(kind, size));
            hasher
        });
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
            if let Some(hasher) = hasher.as_mut() {
                hasher.update(&self.buf[..n]);
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
        self.tee
            .progress
            .objects(u64::from(self.objects - self.objects_left));
        if self.objects_left == 0 {
            self.trailer = Some(self.finish()?);
        }
        let id = hasher
            .map(gix::hash::Hasher::try_finalize)
            .transpose()
            .map_err(|err| io::Error::other(err.to_string()))?;
        let entry = gix_pack::data::input::Entry {
            header: entry.header,
            header_size: u16::try_from(header_size)
                .map_err(|_| corrupt(format!("pack entry at {pack_offset}: header too long")))?,
            pack_offset,
            compressed: None,
            compressed_size,
            crc32,
            decompressed_size: size,
            trailer: None,
        };
        Ok(Record { entry, id })
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
    type Item = gix::Result<Record>;

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
    /// Told the pack's size so far after every step.
    progress: &'a Counter,
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
        self.progress.bytes(self.offset);
        let consumed = bytes.len();
        self.inner.consume(consumed);
        result
    }
}

#[cfg(test)]
mod tests {
    use std::process::{Command, Stdio};
    use std::sync::atomic::AtomicBool;

    use crate::progress::Counter;

    fn git(dir: &std::path::Path, args: &[&str], input: Option<&[u8]>) -> Vec<u8> {
        let mut child = Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run git");
        if let Some(input) = input {
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(input)
                .expect("feed git");
        }
        drop(child.stdin.take());
        let out = child.wait_with_output().expect("wait for git");
        assert!(out.status.success(), "git {args:?}");
        out.stdout
    }

    /// The index written while the pack streams in is the one `git index-pack` writes, byte for
    /// byte, for a pack with deltas (similar versions of files), objects no delta needs, and a
    /// file larger than the read buffers.
    #[test]
    fn index_matches_git_index_pack() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let repo = dir.path().join("repo.git");
        std::fs::create_dir(&repo).expect("repository directory");
        git(&repo, &["init", "-q", "--bare"], None);
        let mut stream = Vec::new();
        let mut state = 1u64;
        let mut large = vec![0u8; 300_000];
        for byte in &mut large {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            *byte = (state >> 56) as u8;
        }
        for commit in 0..5 {
            stream.extend_from_slice(
                format!(
                    "commit refs/heads/main\ncommitter T <t@t> {} +0000\ndata 2\nc\n",
                    1_700_000_000 + commit
                )
                .as_bytes(),
            );
            for file in 0..20 {
                let text: String = (0..40)
                    .map(|line| {
                        format!(
                            "line {line} of file {file}, version {}\n",
                            commit * (file % 3)
                        )
                    })
                    .collect();
                stream.extend_from_slice(
                    format!("M 100644 inline f{file}.txt\ndata {}\n{text}\n", text.len())
                        .as_bytes(),
                );
            }
            large[commit as usize] ^= 1;
            stream.extend_from_slice(
                format!("M 100644 inline large.bin\ndata {}\n", large.len()).as_bytes(),
            );
            stream.extend_from_slice(&large);
            stream.extend_from_slice(b"\n\n");
        }
        git(&repo, &["fast-import", "--quiet"], Some(&stream));
        git(&repo, &["repack", "-adq"], None);
        let pack_dir = repo.join("objects/pack");
        let pack = std::fs::read_dir(&pack_dir)
            .expect("pack directory")
            .flatten()
            .map(|entry| entry.path())
            .find(|path| path.extension().is_some_and(|ext| ext == "pack"))
            .expect("a pack");
        let expected = std::fs::read(pack.with_extension("idx")).expect("git's index");

        let out = dir.path().join("out");
        std::fs::create_dir(&out).expect("output directory");
        let mut reader = std::io::BufReader::new(std::fs::File::open(&pack).expect("the pack"));
        let progress = Counter::default();
        let written = super::write(
            &mut reader,
            &out,
            2,
            gix::hash::Kind::Sha1,
            &AtomicBool::new(false),
            &progress,
        )
        .unwrap_or_else(|err| panic!("{err:?}"))
        .expect("a pack with objects");
        assert_eq!(
            written.data_path.file_name(),
            pack.file_name(),
            "named after the same checksum"
        );
        // Every object and every byte of the pack was counted.
        let size = std::fs::metadata(&pack).expect("the pack").len();
        let objects = u64::try_from(expected.len() - 8 - 256 * 4 - 40).expect("size") / 28;
        assert_eq!(
            progress.totals(),
            (objects, objects, size),
            "objects received, objects announced, bytes received"
        );
        let index = std::fs::read(written.data_path.with_extension("idx")).expect("our index");
        assert!(index == expected, "the index differs from git's");
        let leftovers: Vec<_> = std::fs::read_dir(&out)
            .expect("output directory")
            .flatten()
            .map(|entry| entry.file_name())
            .filter(|name| name.to_string_lossy().starts_with("tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    /// A thin pack (a delta against an object it does not hold) is left whole to the caller,
    /// which completes it from the repository.
    #[test]
    fn thin_pack_is_handed_back() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let repo = dir.path().join("repo.git");
        std::fs::create_dir(&repo).expect("repository directory");
        git(&repo, &["init", "-q", "--bare"], None);
        let text: String = (0..200).map(|line| format!("line {line}\n")).collect();
        let mut stream = Vec::new();
        for (commit, extra) in ["", "one more line\n"].iter().enumerate() {
            let content = format!("{text}{extra}");
            stream.extend_from_slice(
                format!(
                    "commit refs/heads/main\ncommitter T <t@t> {} +0000\ndata 2\nc\n\
                     M 100644 inline f.txt\ndata {}\n{content}\n\n",
                    1_700_000_000 + commit,
                    content.len()
                )
                .as_bytes(),
            );
        }
        git(&repo, &["fast-import", "--quiet"], Some(&stream));
        let pack = git(
            &repo,
            &["pack-objects", "--thin", "--stdout", "--revs", "-q"],
            Some(b"main\n^main~1\n"),
        );
        let out = dir.path().join("out");
        std::fs::create_dir(&out).expect("output directory");
        let result = super::write(
            &mut &pack[..],
            &out,
            1,
            gix::hash::Kind::Sha1,
            &AtomicBool::new(false),
            &Counter::default(),
        );
        match result {
            Err(super::Failure::Thin(path)) => {
                assert_eq!(
                    std::fs::read(&path).expect("the kept pack"),
                    pack,
                    "the whole pack is kept"
                );
            }
            other => panic!("expected a thin pack, got {other:?}"),
        }
    }
}
