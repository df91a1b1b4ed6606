//! The manifest kept beside each finished snapshot: which directory it describes, what its
//! entries were listed with, and what was written into it, with the evidence that lets a
//! later snapshot trust a file without reading it.

use std::cmp::Ordering;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::time::SystemTime;

use super::{FilePath, Left, MANIFEST_MAGIC, MODE_EXECUTABLE, MODE_FILE, Planned};

/// The longest blob id a manifest records, in bytes: a SHA-256 id in hex.
const MAX_ID: usize = 64;

/// What a snapshot's entries were listed with, kept in its manifest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Listing {
    /// The caller's fingerprint of what decides which entries a commit gives (see
    /// [`super::SnapshotDir::listed_with`]).
    pub(super) settings: u64,
    /// The sum of the entries' sizes.
    pub(super) bytes: u64,
}

/// Which directory a manifest describes: its inode, and its creation time where the
/// filesystem records one, so a later directory that happens to get the same inode does not
/// pass for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Identity {
    /// The inode number.
    pub(super) ino: u64,
    /// Nanoseconds since the epoch, or 0 where the filesystem keeps no creation time.
    pub(super) created: u128,
}

impl Identity {
    /// The identity of the directory `metadata` describes.
    pub(super) fn of(metadata: &fs::Metadata) -> Self {
        let created = metadata
            .created()
            .ok()
            .and_then(|time| time.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |since| since.as_nanos());
        Self {
            ino: metadata.ino(),
            created,
        }
    }
}

/// A blob id's text, as the git layer gives it (40 or 64 hex digits), held inline: a record
/// is copied without an allocation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) struct BlobId {
    /// How many bytes of `text` it has.
    len: u8,
    /// The text, then zeros.
    text: [u8; MAX_ID],
}

impl BlobId {
    /// The id `text`, if it is no longer than [`MAX_ID`] bytes.
    pub(super) fn new(text: &str) -> Option<Self> {
        let bytes = text.as_bytes();
        let mut inline = [0; MAX_ID];
        inline.get_mut(..bytes.len())?.copy_from_slice(bytes);
        Some(Self {
            len: bytes.len() as u8,
            text: inline,
        })
    }

    /// The id's text.
    pub(super) fn as_str(&self) -> &str {
        // Only ever made from a `str`, or from bytes checked to be UTF-8.
        std::str::from_utf8(&self.text[..usize::from(self.len)]).unwrap_or_default()
    }

    /// Whether `id` is this id.
    pub(super) fn is(&self, id: &str) -> bool {
        self.text[..usize::from(self.len)] == *id.as_bytes()
    }
}

impl fmt::Debug for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One regular file of a finished snapshot, as its manifest records it: what git's index
/// records of a file to tell, without reading it, that it did not change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Record {
    /// Whether git records it as executable.
    pub(super) executable: bool,
    /// Its blob id.
    pub(super) id: BlobId,
    /// Its inode number.
    pub(super) ino: u64,
    /// Its size in bytes.
    pub(super) size: u64,
    /// Its modification time, seconds and nanoseconds.
    pub(super) modified: (i64, i64),
    /// Its status change time, seconds and nanoseconds: unlike the modification time, nobody
    /// can set it back.
    pub(super) changed: (i64, i64),
}

impl Record {
    /// The record of a file with blob `id` that `stat` shows.
    pub(super) fn new(executable: bool, id: BlobId, stat: &Seen) -> Self {
        Self {
            executable,
            id,
            ino: stat.ino,
            size: stat.size,
            modified: stat.modified,
            changed: stat.changed,
        }
    }

    /// Whether `stat` is of this very file with the same contents: a regular file of the same
    /// inode, size, modification time and read-only mode. The status change time is not
    /// compared: see [`Manifest::trusts`].
    pub(super) fn matches(&self, stat: &Seen) -> bool {
        let mode = if self.executable {
            MODE_EXECUTABLE
        } else {
            MODE_FILE
        };
        stat.file
            && stat.ino == self.ino
            && stat.size == self.size
            && stat.modified == self.modified
            && stat.mode & 0o7777 == mode
    }
}

/// What an `lstat` of a file shows that a [`Record`] is compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Seen {
    /// Whether it is a regular file.
    file: bool,
    /// Its inode number.
    ino: u64,
    /// Its size in bytes.
    size: u64,
    /// Its modification time, seconds and nanoseconds.
    modified: (i64, i64),
    /// Its status change time, seconds and nanoseconds.
    changed: (i64, i64),
    /// Its mode, type bits included.
    mode: u32,
}

impl Seen {
    /// What `metadata` shows.
    pub(super) fn of(metadata: &fs::Metadata) -> Self {
        Self {
            file: metadata.file_type().is_file(),
            ino: metadata.ino(),
            size: metadata.size(),
            modified: (metadata.mtime(), metadata.mtime_nsec()),
            changed: (metadata.ctime(), metadata.ctime_nsec()),
            mode: metadata.mode(),
        }
    }

    /// What `stat` shows.
    #[allow(clippy::unnecessary_cast)] // The fields' types differ between targets.
    pub(super) fn of_stat(stat: &rustix::fs::Stat) -> Self {
        Self {
            file: rustix::fs::FileType::from_raw_mode(stat.st_mode as _)
                == rustix::fs::FileType::RegularFile,
            ino: stat.st_ino as u64,
            size: stat.st_size as u64,
            modified: (stat.st_mtime as i64, stat.st_mtime_nsec as i64),
            changed: (stat.st_ctime as i64, stat.st_ctime_nsec as i64),
            mode: stat.st_mode as u32,
        }
    }
}

/// A symlink of a finished snapshot, as its manifest records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Link {
    /// Where its path is in the manifest.
    pub(super) path: Span,
    /// The blob holding its target.
    pub(super) id: BlobId,
    /// The blob's size.
    pub(super) size: u64,
}

/// Where some bytes are in a manifest: start and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Span(u32, u32);

/// What [`Manifest::write`] records besides the directory: the plan's entries as written.
#[derive(Debug)]
pub(super) struct Contents<'a, 'p> {
    /// The regular files, in order, and their records.
    pub(super) files: &'a [(FilePath<'a>, Record)],
    /// The symlinks, in the plan's order.
    pub(super) links: &'a [&'a Planned<'p>],
    /// What was left out, in the order of its rank.
    pub(super) skipped: &'a [Left],
}

/// The kinds of records in a manifest, by their first byte.
const RECORD_FILE: u8 = b'-';
/// An executable file's record.
const RECORD_EXECUTABLE: u8 = b'x';
/// A symlink's record.
const RECORD_LINK: u8 = b'l';
/// The record of an entry left out.
const RECORD_SKIPPED: u8 = b's';

/// What gitfeed wrote into one snapshot, kept beside it once the snapshot is complete.
///
/// The format is a first line `gitfeed-snapshot-manifest-2 <ino> <created> <settings> <bytes>`
/// (the directory, then the [`Listing`], settings in 16 hex digits), then one record per
/// entry in binary, numbers little-endian, a blob id as a byte count and the raw id, bytes
/// (a path, a reason) as a 4-byte count and the bytes:
///
/// - a regular file: `-` (or `x` when executable), inode, size, modification and status
///   change times (8-byte seconds and nanoseconds each), blob id, path;
/// - a symlink: `l`, size, blob id, path;
/// - an entry left out: `s`, a 4-byte count of components, each as bytes, then the reason.
///
/// A path's components are joined with `/` (a written path holds neither `/` within a
/// component nor a nul byte). Files come in the byte order of their components, which is the
/// order of their paths when `/` sorts before every other byte. Reading one is little more
/// than finding where each record is: an update reads the current snapshot's before it
/// starts.
#[derive(Debug)]
pub(super) struct Manifest {
    /// The directory it describes.
    pub(super) dir: Identity,
    /// What the entries were listed with.
    pub(super) listing: Listing,
    /// Its own modification time: when the records were last written down.
    pub(super) written: (i64, i64),
    /// The manifest itself, which the spans below point into.
    pub(super) bytes: Vec<u8>,
    /// The regular files: paths and records, in the order above.
    pub(super) files: Vec<(Span, Record)>,
    /// The symlinks.
    pub(super) links: Vec<Link>,
    /// What was left out: components and reasons, in the order of their rank.
    pub(super) skipped: Vec<(Vec<Vec<u8>>, String)>,
}

impl Manifest {
    /// Writes the manifest of a snapshot directory `dir` holding `contents` to `out`.
    pub(super) fn write(
        dir: Identity,
        listing: Listing,
        contents: &Contents<'_, '_>,
        out: &mut impl Write,
    ) -> io::Result<()> {
        out.write_all(MANIFEST_MAGIC)?;
        writeln!(
            out,
            " {} {} {:016x} {}",
            dir.ino, dir.created, listing.settings, listing.bytes
        )?;
        let mut record = Vec::with_capacity(256);
        let bytes = |record: &mut Vec<u8>, bytes: &[u8]| {
            record.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            record.extend_from_slice(bytes);
        };
        let path = |record: &mut Vec<u8>, components: &[Vec<u8>]| {
            let length =
                components.iter().map(Vec::len).sum::<usize>() + components.len().saturating_sub(1);
            record.extend_from_slice(&(length as u32).to_le_bytes());
            for (depth, component) in components.iter().enumerate() {
                if depth > 0 {
                    record.push(b'/');
                }
                record.extend_from_slice(component);
            }
        };
        let id = |record: &mut Vec<u8>, id: &BlobId| {
            record.push(id.len);
            record.extend_from_slice(id.as_str().as_bytes());
        };
        for (at, file) in contents.files {
            record.clear();
            record.push(if file.executable {
                RECORD_EXECUTABLE
            } else {
                RECORD_FILE
            });
            record.extend_from_slice(&file.ino.to_le_bytes());
            record.extend_from_slice(&file.size.to_le_bytes());
            for time in [file.modified, file.changed] {
                record.extend_from_slice(&time.0.to_le_bytes());
                record.extend_from_slice(&time.1.to_le_bytes());
            }
            id(&mut record, &file.id);
            match at {
                FilePath::Components(components) => path(&mut record, components),
                FilePath::Joined(joined) => bytes(&mut record, joined),
            }
            out.write_all(&record)?;
        }
        for planned in contents.links {
            let blob = BlobId::new(&planned.entry.id)
                .ok_or_else(|| io::Error::other("a blob id longer than any git makes"))?;
            record.clear();
            record.push(RECORD_LINK);
            record.extend_from_slice(&planned.entry.size.to_le_bytes());
            id(&mut record, &blob);
            path(&mut record, &planned.entry.components);
            out.write_all(&record)?;
        }
        for left in contents.skipped {
            record.clear();
            record.push(RECORD_SKIPPED);
            record.extend_from_slice(&(left.components.len() as u32).to_le_bytes());
            for component in &left.components {
                bytes(&mut record, component);
            }
            bytes(&mut record, left.reason.as_bytes());
            out.write_all(&record)?;
        }
        Ok(())
    }

    /// The directory a manifest starting with `bytes` describes, what its entries were listed
    /// with, and where its first line ends; `None` if `bytes` do not start with a manifest's
    /// first line.
    pub(super) fn header(bytes: &[u8]) -> Option<(Identity, Listing, usize)> {
        let newline = bytes.iter().position(|&b| b == b'\n')?;
        let mut header = std::str::from_utf8(&bytes[..newline]).ok()?.split(' ');
        if header.next()?.as_bytes() != MANIFEST_MAGIC {
            return None;
        }
        let dir = Identity {
            ino: header.next()?.parse().ok()?,
            created: header.next()?.parse().ok()?,
        };
        let listing = Listing {
            settings: u64::from_str_radix(header.next()?, 16).ok()?,
            bytes: header.next()?.parse().ok()?,
        };
        header.next().is_none().then_some((dir, listing, newline))
    }

    /// The manifest in `bytes`, last modified at `written`, if it is one.
    pub(super) fn parse(bytes: Vec<u8>, written: (i64, i64)) -> Option<Self> {
        let (dir, listing, newline) = Self::header(&bytes)?;
        // Spans are 32-bit: a manifest is never as large (see `MAX_MANIFEST`).
        u32::try_from(bytes.len()).ok()?;
        let mut files = Vec::with_capacity(bytes.len() / 90);
        let mut links = Vec::new();
        let mut skipped = Vec::new();
        let mut reader = Reader {
            bytes: &bytes,
            at: newline + 1,
        };
        while let Some(kind) = reader.byte() {
            match kind {
                RECORD_FILE | RECORD_EXECUTABLE => {
                    let record = Record {
                        executable: kind == RECORD_EXECUTABLE,
                        ino: reader.number()?,
                        size: reader.number()?,
                        modified: (reader.signed()?, reader.signed()?),
                        changed: (reader.signed()?, reader.signed()?),
                        id: reader.id()?,
                    };
                    let path = reader.span()?;
                    // In order, each once: lookups search them by halves.
                    if let Some((last, _)) = files.last()
                        && path_order(reader.at(*last), reader.at(path)) != Ordering::Less
                    {
                        return None;
                    }
                    files.push((path, record));
                }
                RECORD_LINK => {
                    let size = reader.number()?;
                    let id = reader.id()?;
                    let path = reader.span()?;
                    links.push(Link { path, id, size });
                }
                RECORD_SKIPPED => {
                    let count = reader.number32()?;
                    let components = (0..count)
                        .map(|_| reader.span().map(|span| reader.at(span).to_vec()))
                        .collect::<Option<Vec<_>>>()?;
                    let reason = reader.span()?;
                    let reason = String::from_utf8(reader.at(reason).to_vec()).ok()?;
                    skipped.push((components, reason));
                }
                _ => return None,
            }
        }
        Some(Self {
            dir,
            listing,
            written,
            bytes,
            files,
            links,
            skipped,
        })
    }

    /// The bytes at `span`.
    pub(super) fn at(&self, span: Span) -> &[u8] {
        &self.bytes[span.0 as usize..][..span.1 as usize]
    }

    /// The record of the regular file at `path` (components joined with `/`).
    pub(super) fn file(&self, path: &[u8]) -> Option<&Record> {
        let index = self
            .files
            .binary_search_by(|(held, _)| path_order(self.at(*held), path))
            .ok()?;
        Some(&self.files[index].1)
    }

    /// The symlink at `path` (components joined with `/`).
    pub(super) fn link(&self, path: &[u8]) -> Option<&Link> {
        self.links.iter().find(|link| self.at(link.path) == path)
    }

    /// Whether an entry with `components` was left out.
    pub(super) fn left_out(&self, components: &[Vec<u8>]) -> bool {
        self.skipped.iter().any(|(left, _)| left == components)
    }

    /// Whether `stat` shows the file `record` describes as it was written, by the evidence
    /// git's index uses: the same inode, size, modification time and status change time (and
    /// the read-only mode). A record is not trusted when its file changed as late as the
    /// manifest was written ("racily clean" in git's words): timestamps are as coarse as the
    /// filesystem's clock, and an edit in the same tick as the record leaves them as they were.
    pub(super) fn trusts(&self, record: &Record, stat: &Seen) -> bool {
        record.modified.max(record.changed) < self.written
            && record.matches(stat)
            && stat.changed == record.changed
    }
}

/// Reads the records of a manifest.
#[derive(Debug)]
struct Reader<'a> {
    /// The whole manifest.
    bytes: &'a [u8],
    /// Where the next field starts.
    at: usize,
}

impl Reader<'_> {
    /// The next `count` bytes.
    fn take(&mut self, count: usize) -> Option<&[u8]> {
        let taken = self.bytes.get(self.at..)?.get(..count)?;
        self.at += count;
        Some(taken)
    }

    /// The next byte.
    fn byte(&mut self) -> Option<u8> {
        self.take(1).map(|taken| taken[0])
    }

    /// The next 8-byte number.
    fn number(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    /// The next 8-byte number that may be negative (a time before 1970).
    fn signed(&mut self) -> Option<i64> {
        Some(i64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    /// The next 4-byte number.
    fn number32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    /// The next blob id.
    fn id(&mut self) -> Option<BlobId> {
        let count = self.byte()?;
        BlobId::new(std::str::from_utf8(self.take(usize::from(count))?).ok()?)
    }

    /// Where the next bytes are, after their count.
    fn span(&mut self) -> Option<Span> {
        let count = self.number32()?;
        let start = u32::try_from(self.at).ok()?;
        self.take(count as usize)?;
        Some(Span(start, count))
    }

    /// The bytes at `span`.
    fn at(&self, span: Span) -> &[u8] {
        &self.bytes[span.0 as usize..][..span.1 as usize]
    }
}

/// Orders two paths, components joined with `/`, as their components are ordered: `/` sorts
/// before every other byte.
pub(super) fn path_order(a: &[u8], b: &[u8]) -> Ordering {
    let key = |byte: u8| if byte == b'/' { 0 } else { u16::from(byte) + 1 };
    match a.iter().zip(b).position(|(x, y)| x != y) {
        Some(at) => key(a[at]).cmp(&key(b[at])),
        None => a.len().cmp(&b.len()),
    }
}

/// The components of a path joined with `/`.
pub(super) fn split(path: &[u8]) -> Vec<Vec<u8>> {
    path.split(|&b| b == b'/').map(<[u8]>::to_vec).collect()
}

/// Moves the modification time of the manifest `file` past `newest`, the latest time a file
/// it records changed, so that none of its records is taken for racily clean
/// ([`Manifest::trusts`]). Where the filesystem's clock is coarse this waits for its next
/// tick, a few milliseconds at most; a clock that does not get there within 50 leaves the
/// newest records untrusted, and their files are written again by the next snapshot.
pub(super) fn outlast(file: &File, newest: (i64, i64)) -> io::Result<()> {
    let now = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_NOW,
        },
    };
    for _ in 0..250 {
        let metadata = file.metadata()?;
        if (metadata.mtime(), metadata.mtime_nsec()) > newest {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
        rustix::fs::futimens(file, &now)?;
    }
    Ok(())
}
