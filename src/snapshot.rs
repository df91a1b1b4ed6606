//! Writing a commit's files into a directory an agent can load.
//!
//! ```text
//! DIR/current                              relative symlink -> .snapshots/<commit>
//! DIR/.snapshots/<commit>/                 one complete snapshot per commit
//! DIR/.snapshots/<commit>.manifest         what gitfeed wrote there, recorded once it was complete
//! DIR/.snapshots/order                     commits in the order they became current
//! DIR/.snapshots/.tmp-<commit>-<random>/   being written, never pointed to
//! DIR/.snapshots/.tmp-old-<commit>-<random>/  being removed
//! DIR/.snapshots/.spare/                   the last pruned snapshot, to be recycled
//! DIR/.tmp-current-<random>                the next `current`, about to be renamed over it
//! ```
//!
//! # Guarantees
//!
//! A snapshot is written into a temporary directory, made durable, and only then renamed to
//! `.snapshots/<commit>`, and its manifest put beside it. The manifest names the directory it
//! describes (inode and creation time), every regular file and symlink in it and every entry
//! left out, so a directory gitfeed did not finish writing itself, such as one someone else
//! created under the next commit's name, is never trusted: it is removed and the snapshot
//! written again. The snapshot itself holds
//! exactly the commit's files and nothing else. `current` is switched by renaming a new
//! symlink over it, which readers see either before or after, never in between. A crash at any
//! point leaves `current` pointing at the last complete snapshot; what the interrupted write
//! left behind starts with `.tmp-` and is removed by [`SnapshotDir::recover`], which every
//! write calls first.
//!
//! Old snapshots are removed by first removing their manifest and renaming them to a `.tmp-`
//! name, so a removal cut short never leaves a half-deleted tree under a commit's name that a
//! later write would reuse.
//!
//! `.snapshots` holds nothing but the entries above. [`SnapshotDir::recover`] also removes
//! every other entry, whatever its type (a file, a directory, even one that cannot be entered,
//! a symlink, a FIFO), and every entry of the wrong type under one of those names: a snapshot
//! without a manifest naming it, an `order` that is a directory. It never follows a symlink,
//! neither `.snapshots` itself (a write refuses one there) nor any in it, and never enters
//! another filesystem, so nothing outside `.snapshots` is removed. The manifests and `order`
//! are read only as regular files, never through a symlink, and up to a size.
//!
//! # What a snapshot costs
//!
//! A new snapshot shares every regular file that did not change (same path, blob and mode)
//! with the current snapshot through a hard link, and writes only the others. Files are
//! therefore read-only (0444, or 0555 when executable): a shared file edited through one
//! snapshot would change the others.
//!
//! A file is shared only on the evidence git's index uses to tell a file unchanged without
//! reading it: its `lstat` shows the inode, size, modification time and status change time the
//! manifest recorded when the file was written (and the read-only mode). Anything that differs
//! is written afresh from its blob, so a file edited in place is, even with its size and
//! modification time put back: nobody can set the status change time. As in git, a record is
//! not trusted when its file changed as late as the manifest was written ("racily clean"):
//! timestamps are as coarse as the filesystem's clock, and an edit in the same tick as the
//! record would not show. Writing a manifest therefore waits, if need be, for that clock to
//! pass the files just written (a few milliseconds at most). Linking and unlinking a file
//! changes its status change time too: a file shared through a new link is recorded as it is
//! after the link, and one whose other names gitfeed removes is written again the next time.
//!
//! A snapshot pruned beyond `keep` is not removed but renamed to `.spare`, without its
//! manifest, after removing the files no other snapshot shares; the next snapshot starts from
//! it instead of an empty directory. Every name in the spare is checked against the new tree:
//! a file is kept only where it is the very file the current snapshot holds for the same path,
//! blob and mode, on the evidence above, a directory only where the new tree has one, and
//! everything else is removed.
//!
//! [`SnapshotDir::update`] writes a snapshot from the changes since the current one: the git
//! layer compares the two commits' trees, reading only the trees that differ, and the entries
//! that did not change are taken from the current snapshot's manifest instead of the tree. It
//! applies when the current snapshot was listed with the same settings (for gitfeed, the filter
//! and the file size limit) and every change involves regular files whose names no other entry
//! of the same directory shares when case is ignored, in either commit; otherwise the whole
//! tree is written, as by
//! [`SnapshotDir::write`], to the same result. An update that changes a few files of a large
//! tree therefore costs the changes, one `lstat` per file of the spare (the evidence above:
//! nothing cheaper shows a file edited in place) and reading and writing the manifests, which
//! are binary and read in one pass: not a listing of the tree, a link and an unlink per file.
//!
//! Durability takes one `syncfs` of the snapshot's filesystem on Linux rather than one `fsync`
//! per file and directory (elsewhere every file and directory written is synced).
//!
//! # Reading a snapshot
//!
//! A consumer resolves `current` once, with `fs::canonicalize(DIR.join("current"))`, and reads
//! every file through the path it got. Opening `DIR/current/a` and then `DIR/current/b` can
//! read `a` from one commit and `b` from the next when a swap falls in between. The resolved
//! snapshot stays in place until `keep` newer commits have become current, so `keep >= 2` gives
//! a reader that is part-way through one full swap to finish; a reader that finds a file gone
//! resolves `current` again and starts over.
//!
//! A reader that keeps a snapshot's directory open (or works inside it) past that point may
//! find the directory reused for a later snapshot, as the spare described above: resolve
//! `current` again for every pass.
//!
//! One writer at a time per directory: [`SnapshotDir::recover`] removes whatever another
//! writer has in progress.
//!
//! # Hostile trees
//!
//! A tree comes from a remote that may be hostile, and nothing it contains may write outside
//! the snapshot or make a consumer that follows symlinks read outside it. Entries that could
//! are skipped and listed in the [`Report`], and the rest of the tree is written:
//!
//! - a path component that is empty, `.`, `..`, contains `/` or a nul byte, or is longer than
//!   a file name may be;
//! - a component some filesystem treats as `.git`: any case, with trailing dots or spaces
//!   (Windows drops them), with code points HFS+ ignores, or the short name `git~1`. A `.git`
//!   in the snapshot would let the tree configure git (hooks, `core.fsmonitor`) for an agent
//!   that runs git inside it;
//! - a path that equals, or lies inside, an earlier path when case is ignored: on a filesystem
//!   that ignores case they would be the same file, or a file would go through a symlink. The
//!   first in byte order of the components wins;
//! - a path that goes through a file or symlink written for an earlier entry;
//! - a submodule (gitlink): there is nothing to write for it;
//! - a symlink whose target is empty, absolute, contains a nul byte, or leaves the snapshot
//!   when resolved from the symlink's directory. `..` is allowed only while the path so far
//!   runs through real directories: after a symlink, `..` goes up from wherever that symlink
//!   leads, which a lexical check cannot follow.
//!
//! Writing itself never follows a symlink: files are created with `create_new`, which fails on
//! an existing name instead of following it, and each directory is created by this module or
//! checked to be a real directory. A filesystem that folds names in ways the checks above do
//! not model (Unicode normalisation on macOS) can still make two names one; that shows up as a
//! name that already exists and skips the entry, and once the tree is written every symlink is
//! resolved again through the real filesystem and removed if it leads outside.
//!
//! This module is for Unix: it sets permissions and writes non-UTF-8 names as raw bytes.

use std::cmp::Ordering;
use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::{CStr, OsStr};
use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::hash::{BuildHasher, Hasher};
use std::io::{self, BufWriter, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{self, AtomicU64};
use std::time::SystemTime;

use manifest::{
    BlobId, Contents, Identity, Listing, Manifest, Record, Seen, Span, outlast, path_order, split,
};
use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags};
use sweep::{read_own, read_own_file, remove_at, remove_path};
pub(crate) use update::{Base, Change};

mod manifest;
mod sweep;
mod update;

/// The symlink consumers resolve, relative to the root.
const CURRENT: &str = "current";
/// The directory holding the snapshots, relative to the root.
const SNAPSHOTS: &str = ".snapshots";
/// The file in [`SNAPSHOTS`] listing commits in the order they became current, oldest first.
const ORDER: &str = "order";
/// What every name left behind by an interrupted write starts with.
const TMP_PREFIX: &str = ".tmp-";
/// The directory in [`SNAPSHOTS`] holding the last pruned snapshot's shared files, recycled
/// into the next snapshot.
const SPARE: &str = ".spare";
/// The longest file name Unix filesystems accept.
const MAX_NAME: usize = 255;
/// The longest symlink target accepted; the kernel resolves nothing longer anyway.
const MAX_TARGET: usize = 4095;
/// How many symlinks resolving one target may go through; Linux gives up after as many.
const MAX_HOPS: usize = 40;
/// The suffix of a snapshot's manifest, after the commit.
const MANIFEST: &str = ".manifest";
/// The largest manifest read, in bytes: a million files with long paths. A larger one is not
/// trusted, and its snapshot is written again.
const MAX_MANIFEST: u64 = 256 << 20;
/// The largest order file read, in bytes: some 16,000 commits, more snapshots than anyone
/// keeps. A larger one is taken as no order at all.
const MAX_ORDER: u64 = 1 << 20;
/// The first word of every manifest, with its format's version.
const MANIFEST_MAGIC: &[u8] = b"gitfeed-snapshot-manifest-2";
/// Permissions of directories in a snapshot.
const MODE_DIR: u32 = 0o755;
/// Permissions of executable files: read-only, since they may be shared with other snapshots.
const MODE_EXECUTABLE: u32 = 0o555;
/// Permissions of other files in a snapshot.
const MODE_FILE: u32 = 0o444;
/// Permissions of the files gitfeed keeps beside the snapshots (order, manifests).
const MODE_OWN: u32 = 0o644;
/// Whether one `syncfs` makes a snapshot durable, instead of one `fsync` per file and directory.
const SYNCFS: bool = cfg!(target_os = "linux");

/// One entry of the tree to write, as the git layer delivers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    /// Path components from the repository root, raw bytes exactly as in the git tree (NOT
    /// joined: a hostile tree can contain a component with a `/` in it, which must be
    /// detected).
    pub components: Vec<Vec<u8>>,
    /// What the entry is.
    pub kind: EntryKind,
    /// Blob id (40 hex), passed back to the reader.
    pub id: String,
    /// Its size in bytes as the tree lists it. A snapshot records the sum over its entries,
    /// which [`Base::bytes_after`] carries on from.
    pub size: u64,
}

/// What a tree entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EntryKind {
    /// A regular file.
    File {
        /// Whether git records it as executable.
        executable: bool,
    },
    /// A symlink; its blob is the target.
    Symlink,
    /// A submodule commit, never written.
    Gitlink,
}

/// A directory holding a snapshot per commit and a `current` symlink to the latest.
#[derive(Debug, Clone)]
pub(crate) struct SnapshotDir {
    /// The directory consumers are given.
    root: PathBuf,
    /// How many snapshots to keep, the current one included; at least 1.
    keep: usize,
    /// The caller's fingerprint of the settings the entries are listed with.
    settings: u64,
}

/// What [`SnapshotDir::write`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Report {
    /// Files and symlinks in the snapshot (directories are not counted).
    pub written: usize,
    /// Of those, files shared with the snapshot before it instead of being written.
    pub shared: usize,
    /// Entries left out, in the byte order of their components.
    pub skipped: Vec<Skipped>,
}

/// An entry left out of a snapshot, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Skipped {
    /// The entry's path, lossily decoded, for messages only.
    pub path: String,
    /// Why it was left out.
    pub reason: String,
}

/// Why a snapshot could not be written. `current` is unchanged and nothing half-written is
/// left behind.
#[derive(Debug)]
pub(crate) struct SnapshotError {
    /// What failed.
    context: String,
    /// The failure underneath, if any; its message is part of this error's.
    cause: Option<io::Error>,
}

impl SnapshotError {
    /// An error caused by `cause`.
    fn io(context: impl Into<String>, cause: io::Error) -> Self {
        Self {
            context: context.into(),
            cause: Some(cause),
        }
    }
}

impl fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.cause {
            Some(cause) => write!(f, "{}: {cause}", self.context),
            None => f.write_str(&self.context),
        }
    }
}

impl std::error::Error for SnapshotError {}

/// The streaming blob reader [`SnapshotDir::write`] is given.
type ReadBlob<'r> = dyn FnMut(&str, &mut dyn Write) -> io::Result<()> + 'r;

impl SnapshotDir {
    /// A snapshot directory at `root` keeping the `keep` latest snapshots (at least 1). Nothing
    /// is touched until the first write.
    pub fn new(root: impl Into<PathBuf>, keep: usize) -> Self {
        Self {
            root: root.into(),
            keep: keep.max(1),
            settings: 0,
        }
    }

    /// The same directory, for entries listed with `settings`: a fingerprint of whatever
    /// decides which entries a commit gives and which it may not (a filter, a size limit).
    /// It is recorded with each snapshot written, and [`SnapshotDir::base`] offers only a
    /// snapshot recorded with the same.
    pub fn listed_with(mut self, settings: u64) -> Self {
        self.settings = settings;
        self
    }

    /// Writes `entries` for `commit` and makes it current. `read` streams the blob with the
    /// given id into the writer (so large blobs are never held in memory); for a symlink it
    /// writes the link target bytes.
    ///
    /// If gitfeed finished `.snapshots/<commit>` earlier (its manifest says so, see the module
    /// docs) it is made current again without reading any file; symlink targets are still read
    /// to check them, so the report lists what the checks skip (not what only writing would
    /// find, such as two names this filesystem takes for one). Anything else under that name
    /// is removed first. Files that the current snapshot holds unchanged are shared with it,
    /// not read. Removing snapshots beyond `keep` comes after the switch and is best effort:
    /// the new snapshot is current by then, so a failure there is not the write's, and
    /// whatever was left is removed by the next write.
    pub fn write(
        &self,
        commit: &str,
        entries: &[Entry],
        read: &mut dyn FnMut(&str, &mut dyn std::io::Write) -> std::io::Result<()>,
    ) -> Result<Report, SnapshotError> {
        check_commit(commit)?;
        self.prepare()?;
        let mut skipped = Vec::new();
        let plan = plan(entries, read, &mut skipped)?;
        let bytes = entries
            .iter()
            .fold(0u64, |sum, entry| sum.saturating_add(entry.size));
        let listed = Listed {
            plan: &plan,
            kept: &[],
        };
        self.finish(commit, listed, skipped, bytes, read, None)
    }

    /// Creates the snapshot directory if needed and removes what is not gitfeed's from it.
    fn prepare(&self) -> Result<(), SnapshotError> {
        let snapshots = self.snapshots();
        // Made durable when it was created: a write that finds it there has nothing to sync.
        if !is_real_dir(&snapshots) {
            let fresh = fs::symlink_metadata(&self.root).is_err();
            fs::create_dir_all(&snapshots)
                .and_then(|()| sync_dir(&self.root))
                .and_then(|()| match self.root.parent() {
                    // A new root is durable only once its parent is.
                    Some(parent) if fresh && !parent.as_os_str().is_empty() => sync_dir(parent),
                    _ => Ok(()),
                })
                .map_err(|err| SnapshotError::io("could not create the snapshot directory", err))?;
        }
        self.recover()
            .map_err(|err| SnapshotError::io("could not clean the snapshot directory", err))
    }

    /// Writes `plan` for `commit` (unless gitfeed finished that snapshot already), makes it
    /// current and prunes. `base` is the manifest of the snapshot `current` points at, when
    /// the caller has it.
    fn finish(
        &self,
        commit: &str,
        listed: Listed<'_, '_>,
        mut skipped: Vec<Left>,
        bytes: u64,
        read: &mut ReadBlob<'_>,
        base: Option<Manifest>,
    ) -> Result<Report, SnapshotError> {
        let snapshots = self.snapshots();
        let pointed = self.current();
        // A snapshot `current` already points to stays usable even without a manifest (one
        // written before manifests existed): removing it would leave `current` dangling.
        // The files of the snapshots kept besides the spare (this one and the one before it,
        // which is what `keep_snapshots = 2` keeps), by inode: the spare keeps only those.
        let mut kept_inodes = Vec::new();
        let mut add_inodes = |manifest: &Manifest| {
            kept_inodes.extend(manifest.files.iter().map(|(_, record)| record.ino));
        };
        let (written, shared) =
            if self.manifest(commit).is_some() || pointed.as_deref() == Some(commit) {
                for commit in [Some(commit), pointed.as_deref()].into_iter().flatten() {
                    if let Some(manifest) = self.manifest(commit) {
                        add_inodes(&manifest);
                    }
                }
                (listed.plan.len() + listed.kept.len(), 0)
            } else {
                self.discard(commit)
                    .map_err(|err| SnapshotError::io("could not remove a stale snapshot", err))?;
                let previous = pointed.and_then(|pointed| {
                    let manifest = base.or_else(|| self.manifest(&pointed))?;
                    Some((snapshots.join(pointed), manifest))
                });
                let previous = previous
                    .as_ref()
                    .map(|(dir, manifest)| (dir.as_path(), manifest));
                if let Some((_, manifest)) = previous {
                    add_inodes(manifest);
                }
                let listing = Listing {
                    settings: self.settings,
                    bytes,
                };
                let built = build(
                    &snapshots,
                    commit,
                    listed,
                    read,
                    previous,
                    &mut skipped,
                    listing,
                )?;
                kept_inodes.extend(built.inodes);
                (built.written, built.shared)
            };
        crash_point()?;
        self.switch(commit)?;
        // Sorted, to be searched by halves.
        kept_inodes.sort_unstable();
        kept_inodes.dedup();
        if let Err(err) = self.prune(commit, &kept_inodes) {
            log::warn!(
                "could not remove old snapshots from {}: {err}",
                snapshots.display()
            );
        }

        skipped.sort_by(Left::order);
        Ok(Report {
            written,
            shared,
            skipped: skipped.into_iter().map(Left::into_skipped).collect(),
        })
    }

    /// The commit `current` points to, if any and if it is complete.
    pub fn current(&self) -> Option<String> {
        let target = fs::read_link(self.root.join(CURRENT)).ok()?;
        let mut parts = target.components();
        let (Some(Component::Normal(dir)), Some(Component::Normal(name)), None) =
            (parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        let commit = name.to_str()?;
        (dir == SNAPSHOTS && is_commit(commit) && is_real_dir(&self.snapshots().join(commit)))
            .then(|| commit.to_owned())
    }

    /// Removes leftovers of an interrupted write, and everything else in `.snapshots` that
    /// gitfeed did not write (see the module docs). An entry that cannot be removed is logged
    /// and left; fails if `.snapshots` is a symlink or cannot be listed.
    pub fn recover(&self) -> io::Result<()> {
        // In the root only the temporary symlinks are ours to remove.
        remove_temporary_links(&self.root)?;
        self.sweep()
    }

    /// Where the snapshots are.
    fn snapshots(&self) -> PathBuf {
        self.root.join(SNAPSHOTS)
    }

    /// Points `current` at the snapshot of `commit`, atomically.
    fn switch(&self, commit: &str) -> Result<(), SnapshotError> {
        let fail = |err| SnapshotError::io("could not switch current", err);
        let target = Path::new(SNAPSHOTS).join(commit);
        let (link, ()) = create_unique(&self.root, "current", |path| {
            std::os::unix::fs::symlink(&target, path)
        })
        .map_err(fail)?;
        crash_point()?;
        if let Err(err) = fs::rename(&link, self.root.join(CURRENT)) {
            let _ = fs::remove_file(&link);
            return Err(fail(err));
        }
        crash_point()?;
        sync_dir(&self.root).map_err(fail)
    }

    /// The manifest of `.snapshots/<commit>`, if gitfeed finished writing that directory: the
    /// manifest is readable and names the directory that is there now.
    fn manifest(&self, commit: &str) -> Option<Manifest> {
        let snapshots = self.snapshots();
        let path = snapshots.join(format!("{commit}{MANIFEST}"));
        let (text, metadata) = read_own_file(&path, MAX_MANIFEST).ok()?;
        let manifest = Manifest::parse(text, (metadata.mtime(), metadata.mtime_nsec()))?;
        let metadata = fs::symlink_metadata(snapshots.join(commit)).ok()?;
        (metadata.is_dir() && Identity::of(&metadata) == manifest.dir).then_some(manifest)
    }

    /// Removes whatever is at `.snapshots/<commit>` and its manifest, so a snapshot can be
    /// written there. Nothing gitfeed finished is ever removed here: only a directory without
    /// a manifest naming it (someone else's, or one a crash left between its rename and its
    /// manifest's), or anything that is not a directory.
    fn discard(&self, commit: &str) -> io::Result<()> {
        let snapshots = self.snapshots();
        let manifest = snapshots.join(format!("{commit}{MANIFEST}"));
        let target = snapshots.join(commit);
        let mut changed = remove_if_present(&manifest)?;
        if let Ok(metadata) = fs::symlink_metadata(&target) {
            log::warn!(
                "{} was not written by gitfeed, or not finished; writing it again",
                target.display()
            );
            if metadata.is_dir() {
                let label = format!("old-{commit}");
                let (away, ()) =
                    create_unique(&snapshots, &label, |path| fs::rename(&target, path))?;
                remove_path(&away)?;
            } else {
                fs::remove_file(&target)?;
            }
            changed = true;
        }
        if changed {
            sync_dir(&snapshots)
        } else {
            Ok(())
        }
    }

    /// Records `current` as the latest snapshot and removes the oldest beyond `keep`.
    ///
    /// The order is kept in a file rather than read from directory times: times are as coarse
    /// as the filesystem's clock, so quick swaps tie, and making an existing snapshot current
    /// again would mean touching it. Snapshots the file does not list (written, then a crash
    /// before the switch) count as the oldest.
    ///
    /// The newest snapshot removed becomes the spare instead, unless there is one already. Its
    /// files whose inode is not in `kept_inodes` (sorted) hold bytes no kept snapshot shares, and
    /// are removed from it.
    fn prune(&self, current: &str, kept_inodes: &[u64]) -> io::Result<()> {
        let snapshots = self.snapshots();
        let mut order = read_order(&snapshots);
        order.retain(|commit| commit != current);
        order.push(current.to_owned());

        let mut present = Vec::new();
        let mut manifests = Vec::new();
        for item in fs::read_dir(&snapshots)? {
            let item = item?;
            let Some(name) = item.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if is_commit(&name) && item.file_type()?.is_dir() {
                present.push(name);
            } else if let Some(commit) = name.strip_suffix(MANIFEST)
                && is_commit(commit)
            {
                manifests.push(commit.to_owned());
            }
        }
        present.sort();
        let mut ranked: Vec<String> = present
            .iter()
            .filter(|commit| !order.contains(commit))
            .cloned()
            .collect();
        ranked.extend(order.into_iter().filter(|commit| present.contains(commit)));
        let cut = ranked.len().saturating_sub(self.keep);
        let (old, kept) = ranked.split_at(cut);
        write_order(&snapshots, kept)?;

        // Whatever `current` really points to stays, even if the order file disagrees.
        let pointed = self.current();
        let removable = |commit: &&String| *commit != current && pointed.as_deref() != Some(commit);
        let spare = snapshots.join(SPARE);
        // The newest of those pruned is the closest to the next snapshot. Its manifest is read
        // before it goes, to know its files.
        let spared = match fs::symlink_metadata(&spare) {
            Ok(_) => None,
            Err(_) => old.iter().rev().find(removable),
        };
        let spared_files = spared.and_then(|commit| self.manifest(commit));
        // The spare alone goes before its manifest: `.spare` is never trusted, and a crash
        // right after the manifest's removal would leave a snapshot without one, which the
        // next write's sweep removes instead of keeping it as the spare.
        if let Some(commit) = spared {
            fs::rename(snapshots.join(commit), &spare)?;
            crash_point_io()?;
        }
        let mut doomed = Vec::new();
        // A manifest goes before its snapshot, so nothing half-removed is ever trusted; so do
        // those left without a snapshot.
        for commit in &manifests {
            let doomed = old.contains(commit) || !present.contains(commit);
            if doomed && commit != current && pointed.as_deref() != Some(commit) {
                remove_if_present(&snapshots.join(format!("{commit}{MANIFEST}")))?;
                crash_point_io()?;
            }
        }
        for commit in old.iter().filter(removable) {
            if spared == Some(commit) {
                continue;
            }
            let from = snapshots.join(commit);
            let label = format!("old-{commit}");
            let (to, ()) = create_unique(&snapshots, &label, |path| fs::rename(&from, path))?;
            crash_point_io()?;
            doomed.push(to);
        }
        if !doomed.is_empty() || spared.is_some() {
            sync_dir(&snapshots)?;
        }
        if spared.is_some() {
            trim_spare(&spare, spared_files.as_ref(), kept_inodes)?;
        }
        for path in doomed {
            remove_path(&path)?;
            crash_point_io()?;
        }
        Ok(())
    }
}

/// What a snapshot is written from.
#[derive(Debug, Clone, Copy)]
struct Listed<'p, 'k> {
    /// The entries, in the byte order of their components.
    plan: &'p [Planned<'p>],
    /// Regular files of the current snapshot that are kept as they are, by their position in
    /// its manifest, in order; none unless the manifest is given as the previous snapshot's.
    kept: &'k [usize],
}

/// An entry that passed the checks on its path, in the order it is written.
#[derive(Debug)]
struct Planned<'a> {
    /// Its position in byte order of components, to order the report.
    rank: usize,
    /// The entry.
    entry: &'a Entry,
    /// The target, for a symlink.
    target: Option<Vec<u8>>,
}

/// What an earlier entry claimed a (case-folded) path as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Claimed {
    /// A directory some file lies in.
    Dir,
    /// A file.
    File,
    /// A symlink.
    Symlink,
}

/// A claimed path and the entry that claimed it, for messages.
#[derive(Debug, Clone, Copy)]
struct Claim {
    /// What the path is.
    kind: Claimed,
    /// The claiming entry's index in the caller's slice.
    index: usize,
    /// How many of its components make up the path.
    depth: usize,
}

/// Decides which entries are written, reading symlink targets to check them. Everything left
/// out is pushed onto `skipped` with its rank.
fn plan<'a>(
    entries: &'a [Entry],
    read: &mut ReadBlob<'_>,
    skipped: &mut Vec<Left>,
) -> Result<Vec<Planned<'a>>, SnapshotError> {
    // Sorted so which of two colliding entries wins does not depend on delivery order.
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by(|&a, &b| entries[a].components.cmp(&entries[b].components));

    let mut taken = HashMap::new();
    let mut plan = Vec::new();
    for (rank, &index) in order.iter().enumerate() {
        let entry = &entries[index];
        match claim(entries, index, &mut taken) {
            Ok(()) => plan.push(Planned {
                rank,
                entry,
                target: None,
            }),
            Err(reason) => skipped.push(Left::new(rank, entry, reason)),
        }
    }

    // Targets are checked only once every symlink's path is known: whether `..` after a
    // component is safe depends on whether that component is a symlink, earlier or later.
    let links: HashSet<Vec<u8>> = plan
        .iter()
        .filter(|planned| planned.entry.kind == EntryKind::Symlink)
        .map(|planned| folded_path(&planned.entry.components))
        .collect();
    let mut checked = Vec::with_capacity(plan.len());
    for mut planned in plan {
        if planned.entry.kind == EntryKind::Symlink {
            let target = read_target(planned.entry, read)?;
            if let Err(reason) = check_target(&planned.entry.components, &target, &links) {
                skipped.push(Left::new(planned.rank, planned.entry, reason.into()));
                continue;
            }
            planned.target = Some(target.bytes);
        }
        checked.push(planned);
    }
    Ok(checked)
}

/// The target of the symlink `entry`, read through `read` and capped.
fn read_target(entry: &Entry, read: &mut ReadBlob<'_>) -> Result<Capped, SnapshotError> {
    let mut target = Capped::default();
    read(&entry.id, &mut target).map_err(|err| {
        let path = display(&entry.components);
        SnapshotError::io(format!("could not read symlink {path:?}"), err)
    })?;
    Ok(target)
}

/// Checks `entries[index]` against the rules and the paths claimed before it, and claims its
/// own path and parent directories if it may be written.
fn claim(
    entries: &[Entry],
    index: usize,
    taken: &mut HashMap<Vec<u8>, Claim>,
) -> Result<(), String> {
    let entry = &entries[index];
    let kind = match entry.kind {
        EntryKind::Gitlink => return Err("submodule (gitlink) not written".into()),
        EntryKind::File { .. } => Claimed::File,
        EntryKind::Symlink => Claimed::Symlink,
    };
    if entry.components.is_empty() {
        return Err("empty path".into());
    }
    if let Some(problem) = entry.components.iter().find_map(|c| component_problem(c)) {
        return Err(problem.into());
    }

    let described = |claim: &Claim| {
        format!(
            "{:?}",
            display(&entries[claim.index].components[..claim.depth])
        )
    };
    let mut key = Vec::new();
    let mut parents = Vec::new();
    for (depth, component) in entry.components.iter().enumerate() {
        if depth > 0 {
            match taken.get(&key) {
                Some(claim) if claim.kind == Claimed::File => {
                    return Err(format!("inside file {}", described(claim)));
                }
                Some(claim) if claim.kind == Claimed::Symlink => {
                    return Err(format!("inside symlink {}", described(claim)));
                }
                _ => {}
            }
            parents.push((key.clone(), depth));
            key.push(b'/');
        }
        key.extend(fold(component));
    }
    if let Some(claim) = taken.get(&key) {
        return Err(format!("collides with {}", described(claim)));
    }
    for (parent, depth) in parents {
        taken.entry(parent).or_insert(Claim {
            kind: Claimed::Dir,
            index,
            depth,
        });
    }
    let depth = entry.components.len();
    taken.insert(key, Claim { kind, index, depth });
    Ok(())
}

/// Why a path component may not be written, if it may not.
fn component_problem(component: &[u8]) -> Option<&'static str> {
    match component {
        b"" => Some("empty path component"),
        b"." | b".." => Some("path component is . or .."),
        _ if component.contains(&b'/') => Some("path component contains a slash"),
        _ if component.contains(&0) => Some("path component contains a nul byte"),
        _ if component.len() > MAX_NAME => Some("path component too long"),
        _ if crate::git::names_git(component) => Some("path component names .git"),
        _ => None,
    }
}

/// `component` as a filesystem that ignores case compares it: Unicode lowercase when it is
/// UTF-8, ASCII lowercase otherwise. Two names that fold alike are the same name to the
/// checks on a tree (see [`Change::crowded`]).
pub(crate) fn fold(component: &[u8]) -> Vec<u8> {
    match std::str::from_utf8(component) {
        Ok(text) => text.to_lowercase().into_bytes(),
        Err(_) => component.to_ascii_lowercase(),
    }
}

/// The case-folded components joined with `/`, the key paths are claimed under.
fn folded_path(components: &[Vec<u8>]) -> Vec<u8> {
    let mut key = Vec::new();
    for (depth, component) in components.iter().enumerate() {
        if depth > 0 {
            key.push(b'/');
        }
        key.extend(fold(component));
    }
    key
}

/// Why the symlink at `components` may not point at `target`, if it may not. `links` holds the
/// folded paths of every symlink in the snapshot.
fn check_target(
    components: &[Vec<u8>],
    target: &Capped,
    links: &HashSet<Vec<u8>>,
) -> Result<(), &'static str> {
    let bytes = &target.bytes;
    if target.overflow {
        return Err("symlink target too long");
    }
    if bytes.is_empty() {
        return Err("symlink target is empty");
    }
    if bytes.contains(&0) {
        return Err("symlink target contains a nul byte");
    }
    if bytes.starts_with(b"/") {
        return Err("symlink target is absolute");
    }
    /// Appends a folded component to `key`, remembering in `marks` where it starts so `..`
    /// can cut it off again.
    fn push(key: &mut Vec<u8>, marks: &mut Vec<usize>, component: &[u8]) {
        marks.push(key.len());
        if !key.is_empty() {
            key.push(b'/');
        }
        key.extend(fold(component));
    }
    // Resolved from the link's directory, which is a real one: its path was checked to run
    // through no file or symlink.
    let mut key = Vec::new();
    let mut marks = Vec::new();
    for parent in &components[..components.len() - 1] {
        push(&mut key, &mut marks, parent);
    }
    let mut through_link = false;
    for part in bytes.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                if through_link {
                    return Err("symlink target uses .. after another symlink");
                }
                let mark = marks.pop().ok_or("symlink target leaves the snapshot")?;
                key.truncate(mark);
            }
            name => {
                push(&mut key, &mut marks, name);
                // Past a symlink the path continues from wherever it leads; only going down
                // from there is known to stay inside.
                through_link |= links.contains(&key);
            }
        }
    }
    Ok(())
}

/// Writes the plan into a new temporary directory, makes it durable, renames it to
/// `snapshots/<commit>` and puts its manifest beside it, recording what is `skipped` and the
/// `listing`. Files `previous` (a finished snapshot and its manifest) holds unchanged are
/// linked from it instead of being read and written.
fn build(
    snapshots: &Path,
    commit: &str,
    listed: Listed<'_, '_>,
    read: &mut ReadBlob<'_>,
    previous: Option<(&Path, &Manifest)>,
    skipped: &mut Vec<Left>,
    listing: Listing,
) -> Result<Built, SnapshotError> {
    // Kept files are the previous snapshot's: without it the snapshot would lack them.
    if previous.is_none() && !listed.kept.is_empty() {
        return Err(SnapshotError {
            context: "the current snapshot changed while the next was being written".into(),
            cause: None,
        });
    }
    let fail = |err| SnapshotError::io("could not create a temporary directory", err);
    let spare = snapshots.join(SPARE);
    let recycled = match fs::symlink_metadata(&spare) {
        Ok(metadata) if metadata.is_dir() => create_unique(snapshots, commit, |path| {
            fs::rename(&spare, path).map(|()| true)
        })
        .map_err(fail)?,
        Ok(_) => {
            fs::remove_file(&spare).map_err(fail)?;
            create_unique(snapshots, commit, |path| make_dir(path).map(|()| false)).map_err(fail)?
        }
        Err(_) => {
            create_unique(snapshots, commit, |path| make_dir(path).map(|()| false)).map_err(fail)?
        }
    };
    let mut temporary = Temporary {
        path: recycled.0,
        armed: true,
    };
    let root = temporary.path.clone();
    crash_point()?;

    let mut dirs = Dirs::default();
    dirs.add(root.clone());
    let plan = listed.plan;
    // What the spare already holds of this snapshot, by position in the plan and in the kept
    // files.
    let (mut present, present_kept) = if recycled.1 {
        recycle(&root, listed, previous, &mut dirs)
            .map_err(|err| SnapshotError::io("could not recycle the spare snapshot", err))?
    } else {
        (vec![None; plan.len()], vec![false; listed.kept.len()])
    };
    crash_point()?;
    let mut links = Vec::new();
    let mut files = Vec::new();
    let mut shared = 0;
    for (index, planned) in plan.iter().enumerate() {
        if let Some(record) = present[index].take() {
            shared += 1;
            files.push((planned, record));
            continue;
        }
        match write_entry(&root, planned, read, previous, &mut dirs)? {
            Ok(Written::Symlink) => links.push(planned),
            Ok(Written::File {
                record,
                shared: was,
            }) => {
                shared += usize::from(was);
                files.push((planned, record));
            }
            Err(reason) => skipped.push(Left::new(planned.rank, planned.entry, reason.into())),
        }
        crash_point()?;
    }
    // The kept files the spare does not hold as they were are linked from the previous
    // snapshot or written afresh, as entries of their own.
    let mut kept_files = Vec::with_capacity(listed.kept.len());
    if let Some((_, manifest)) = previous {
        for (&index, &there) in listed.kept.iter().zip(&present_kept) {
            let (path, record) = manifest.files[index];
            if there {
                shared += 1;
                kept_files.push((manifest.at(path), record));
                continue;
            }
            let entry = Entry {
                components: split(manifest.at(path)),
                kind: EntryKind::File {
                    executable: record.executable,
                },
                id: record.id.as_str().to_owned(),
                size: record.size,
            };
            let planned = Planned {
                rank: usize::MAX,
                entry: &entry,
                target: None,
            };
            match write_entry(&root, &planned, read, previous, &mut dirs)? {
                Ok(Written::File {
                    record,
                    shared: was,
                }) => {
                    shared += usize::from(was);
                    kept_files.push((manifest.at(path), record));
                }
                Ok(Written::Symlink) => {}
                Err(reason) => skipped.push(Left::new(usize::MAX, &entry, reason.into())),
            }
            crash_point()?;
        }
    }

    // Every symlink again, through the real filesystem. Removing one can change where
    // another leads, so this repeats until nothing is removed.
    loop {
        let before = links.len();
        let mut kept = Vec::with_capacity(before);
        for planned in links {
            if escapes(&root, &planned.entry.components) {
                let path = join(&root, &planned.entry.components);
                fs::remove_file(&path).map_err(|err| {
                    SnapshotError::io("could not remove an escaping symlink", err)
                })?;
                let reason = "symlink target leaves the snapshot on this filesystem";
                skipped.push(Left::new(planned.rank, planned.entry, reason.into()));
            } else {
                kept.push(planned);
            }
        }
        links = kept;
        if links.len() == before {
            break;
        }
    }
    let files = merge_files(&files, &kept_files);
    let written = files.len() + links.len();

    let fail = |err| SnapshotError::io("could not sync the snapshot", err);
    let identity = fs::symlink_metadata(&root)
        .map(|metadata| Identity::of(&metadata))
        .map_err(fail)?;
    let (manifest_path, manifest_file) = create_unique(snapshots, "manifest", |path| {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(MODE_OWN)
            .open(path)
    })
    .map_err(fail)?;
    let mut manifest_temporary = Temporary {
        path: manifest_path,
        armed: true,
    };
    skipped.sort_by(Left::order);
    let contents = Contents {
        files: &files,
        links: &links,
        skipped,
    };
    let mut writer = BufWriter::with_capacity(1 << 16, manifest_file);
    Manifest::write(identity, listing, &contents, &mut writer).map_err(fail)?;
    let manifest_file = writer.into_inner().map_err(|err| fail(err.into_error()))?;
    // A record is trusted only if its file last changed before the manifest was written;
    // the manifest's time is moved past the files just written, unless the clock will not.
    let newest = files
        .iter()
        .map(|(_, record)| record.modified.max(record.changed))
        .max();
    if let Some(newest) = newest {
        outlast(&manifest_file, newest).map_err(fail)?;
    }
    crash_point()?;

    // A name is durable only once its directory is, and all of them must be before the rename
    // makes the snapshot visible under its final name.
    if SYNCFS {
        rustix::fs::syncfs(&manifest_file).map_err(|err| fail(err.into()))?;
    } else {
        manifest_file.sync_all().map_err(fail)?;
        for dir in &dirs.list {
            sync_dir(dir).map_err(fail)?;
        }
    }
    drop(manifest_file);
    crash_point()?;

    let target = snapshots.join(commit);
    fs::rename(&root, &target)
        .map_err(|err| SnapshotError::io("could not move the snapshot in place", err))?;
    temporary.armed = false;
    crash_point()?;
    fs::rename(
        &manifest_temporary.path,
        snapshots.join(format!("{commit}{MANIFEST}")),
    )
    .map_err(|err| SnapshotError::io("could not record the snapshot", err))?;
    manifest_temporary.armed = false;
    crash_point()?;
    sync_dir(snapshots).map_err(fail)?;
    Ok(Built {
        written,
        shared,
        inodes: files.iter().map(|(_, record)| record.ino).collect(),
    })
}

/// Where a regular file of a snapshot being written lies.
#[derive(Debug, Clone, Copy)]
enum FilePath<'a> {
    /// An entry's components.
    Components(&'a [Vec<u8>]),
    /// A path of the previous snapshot's manifest, components joined with `/`.
    Joined(&'a [u8]),
}

/// The files of the plan, `files`, and the kept ones, `kept`, both in order, as one list in
/// order. The plan's are few when files are kept: each is put in its place by halves.
fn merge_files<'a>(
    files: &[(&'a Planned<'_>, Record)],
    kept: &[(&'a [u8], Record)],
) -> Vec<(FilePath<'a>, Record)> {
    let mut merged = Vec::with_capacity(files.len() + kept.len());
    let mut rest = kept;
    for (planned, record) in files {
        let components = planned.entry.components.as_slice();
        let before = rest
            .partition_point(|(path, _)| components_order(components, path) == Ordering::Greater);
        merged.extend(
            rest[..before]
                .iter()
                .map(|(path, record)| (FilePath::Joined(path), *record)),
        );
        rest = &rest[before..];
        merged.push((FilePath::Components(components), *record));
    }
    merged.extend(
        rest.iter()
            .map(|(path, record)| (FilePath::Joined(path), *record)),
    );
    merged
}

/// Orders `components` against a path, components joined with `/`, as components are
/// ordered.
fn components_order(components: &[Vec<u8>], path: &[u8]) -> Ordering {
    components
        .iter()
        .map(Vec::as_slice)
        .cmp(path.split(|&b| b == b'/'))
}

/// What [`build`] wrote.
#[derive(Debug)]
struct Built {
    /// How many entries are in the snapshot.
    written: usize,
    /// How many of them were shared with the snapshot before it.
    shared: usize,
    /// The inodes of its regular files.
    inodes: Vec<u64>,
}

/// Turns the spare snapshot renamed to `root` into a start of the snapshot `listed`
/// describes: keeps each directory it needs (records it in `dirs`, with the snapshot's mode),
/// each regular file that is the current snapshot's own file for the same path, blob and mode
/// and each kept file, unchanged ([`Manifest::trusts`]); removes everything else. Never follows
/// a symlink. Returns the records of the plan's files it kept, by their position in the plan,
/// and which of the kept files it holds.
///
/// The plan, the kept files and the manifest are all in the byte order of components, where
/// what lies below a directory follows its path: each directory's names are sorted and merged
/// with what of each lies below it, so nothing is looked up by name, and the only call per file
/// is one `lstat`, relative to its open directory.
fn recycle(
    root: &Path,
    listed: Listed<'_, '_>,
    previous: Option<(&Path, &Manifest)>,
    dirs: &mut Dirs,
) -> io::Result<(Vec<Option<Record>>, Vec<bool>)> {
    let plan = listed.plan;
    let mut present = vec![None; plan.len()];
    let mut present_kept = vec![false; listed.kept.len()];
    let files = previous.map_or(&[][..], |(_, manifest)| &manifest.files[..]);
    let at = |index: usize| at_span(previous, files[index].0);
    let kept_at = |index: usize| at(listed.kept[index]);
    let mut pending = vec![Walk {
        dir: root.to_path_buf(),
        prefix: Vec::new(),
        depth: 0,
        plan: 0..plan.len(),
        recorded: 0..files.len(),
        kept: 0..listed.kept.len(),
    }];
    // The path in the snapshot of the name being looked at.
    let mut path = Vec::new();
    while let Some(walk) = pending.pop() {
        let Walk {
            dir, prefix, depth, ..
        } = &walk;
        // The spare becomes the snapshot's own, with the mode every snapshot's directories
        // have: one changed meanwhile, even to a mode nobody may enter, does not stop it.
        if fs::symlink_metadata(dir)?.mode() & 0o7777 != MODE_DIR {
            fs::set_permissions(dir, Permissions::from_mode(MODE_DIR))?;
        }
        // Entered without following a symlink; each name in it is looked at through the open
        // directory, so one `lstat` per file costs no walk from the root.
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::open(dir, flags, Mode::empty())?;
        dirs.add(dir.clone());
        // The names, each ended by its nul byte, one after another; then where each starts
        // and ends, sorted by name.
        let mut names = Vec::new();
        let mut items = Vec::new();
        for item in Dir::read_from(&fd)? {
            let item = item?;
            let name = item.file_name();
            if name != c"." && name != c".." {
                let start = names.len();
                names.extend_from_slice(name.to_bytes_with_nul());
                items.push((start, names.len(), item.file_type()));
            }
        }
        items.sort_unstable_by(|a, b| names[a.0..a.1].cmp(&names[b.0..b.1]));
        // The first of each below this directory not before the name being looked at.
        let (mut next, mut cursor, mut kept) =
            (walk.plan.start, walk.recorded.start, walk.kept.start);
        let mut inner = Vec::new();
        for (start, end, kind) in items {
            let name = CStr::from_bytes_with_nul(&names[start..end]).map_err(io::Error::other)?;
            let bytes = name.to_bytes();
            path.clear();
            path.extend_from_slice(prefix);
            if !prefix.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(bytes);
            // The plan's entries named `name`, or below it.
            while next < walk.plan.end && plan[next].entry.components[*depth].as_slice() < bytes {
                next += 1;
            }
            let first = next;
            while next < walk.plan.end && plan[next].entry.components[*depth].as_slice() == bytes {
                next += 1;
            }
            let wanted = first..next;
            // The kept files at `path` or below it, which follow each other.
            while kept < walk.kept.end && path_order(kept_at(kept), &path) == Ordering::Less {
                kept += 1;
            }
            let first = kept;
            while kept < walk.kept.end && below_or_at(kept_at(kept), &path) {
                kept += 1;
            }
            let wanted_kept = first..kept;
            let kind = match kind {
                FileType::Unknown => {
                    let stat = rustix::fs::statat(&fd, name, AtFlags::SYMLINK_NOFOLLOW)?;
                    FileType::from_raw_mode(stat.st_mode)
                }
                kind => kind,
            };
            if kind == FileType::Directory {
                let deeper = plan[wanted.clone()]
                    .iter()
                    .any(|planned| planned.entry.components.len() > depth + 1)
                    || wanted_kept
                        .clone()
                        .any(|index| kept_at(index).len() > path.len());
                if deeper {
                    // The manifest's files below it follow each other, right after its path.
                    let recorded = &files[walk.recorded.clone()];
                    let from = walk.recorded.start
                        + recorded.partition_point(|(held, _)| {
                            path_order(at_span(previous, *held), &path) != Ordering::Greater
                        });
                    let to = from
                        + files[from..walk.recorded.end].partition_point(|(held, _)| {
                            below_or_at(at_span(previous, *held), &path)
                        });
                    inner.push(Walk {
                        dir: dir.join(OsStr::from_bytes(bytes)),
                        prefix: path.clone(),
                        depth: depth + 1,
                        plan: wanted,
                        recorded: from..to,
                        kept: wanted_kept,
                    });
                } else {
                    remove_at(fd.as_fd(), OsStr::from_bytes(bytes))?;
                }
                continue;
            }
            let lstat = || {
                rustix::fs::statat(&fd, name, AtFlags::SYMLINK_NOFOLLOW)
                    .map(|stat| Seen::of_stat(&stat))
            };
            let regular = kind == FileType::RegularFile;
            // A kept file: the previous snapshot's own, to be kept on its record's evidence.
            if regular
                && let Some((_, manifest)) = previous
                && let Some(index) = wanted_kept.clone().next()
                && kept_at(index) == path.as_slice()
            {
                let record = &files[listed.kept[index]].1;
                if lstat().is_ok_and(|stat| manifest.trusts(record, &stat)) {
                    present_kept[index] = true;
                    continue;
                }
            }
            while cursor < walk.recorded.end && path_order(at(cursor), &path) == Ordering::Less {
                cursor += 1;
            }
            // One of the plan's files, if the manifest records the same file there: the plan
            // holds one entry at a path at most.
            let kept_file = match previous {
                Some((_, manifest))
                    if regular
                        && wanted.len() == 1
                        && plan[wanted.start].entry.components.len() == depth + 1
                        && cursor < walk.recorded.end
                        && at(cursor) == path.as_slice() =>
                {
                    let planned = &plan[wanted.start];
                    let record = &files[cursor].1;
                    let same = planned.entry.kind
                        == (EntryKind::File {
                            executable: record.executable,
                        })
                        && record.id.is(&planned.entry.id)
                        && lstat().is_ok_and(|stat| manifest.trusts(record, &stat));
                    same.then_some((wanted.start, *record))
                }
                _ => None,
            };
            match kept_file {
                Some((index, record)) => present[index] = Some(record),
                None => rustix::fs::unlinkat(&fd, name, AtFlags::empty())?,
            }
        }
        pending.extend(inner.into_iter().rev());
    }
    Ok((present, present_kept))
}

/// A directory of the spare still to walk, with the ranges of what lies below it.
#[derive(Debug)]
struct Walk {
    /// Where it is.
    dir: PathBuf,
    /// Its path in the snapshot, components joined with `/`.
    prefix: Vec<u8>,
    /// How many components its path has.
    depth: usize,
    /// The plan's entries below it.
    plan: std::ops::Range<usize>,
    /// The manifest's files below it.
    recorded: std::ops::Range<usize>,
    /// The kept files below it, by their position in the kept list.
    kept: std::ops::Range<usize>,
}

/// Whether `held` is `path` or lies below it (both components joined with `/`).
fn below_or_at(held: &[u8], path: &[u8]) -> bool {
    held.starts_with(path) && matches!(held.get(path.len()), None | Some(b'/'))
}

/// The bytes at `span` of the manifest of `previous`; none without one.
fn at_span<'m>(previous: Option<(&Path, &'m Manifest)>, span: Span) -> &'m [u8] {
    previous.map_or(&[], |(_, manifest)| manifest.at(span))
}

/// Removes from the spare the files that hold bytes of their own, which the spare may not keep
/// on disk: by its manifest, each file whose inode no kept snapshot has (`kept_inodes`,
/// sorted); with no manifest, each file no other name links to. Symlinks and anything else are
/// left to [`recycle`].
fn trim_spare(spare: &Path, manifest: Option<&Manifest>, kept_inodes: &[u64]) -> io::Result<()> {
    if let Some(manifest) = manifest {
        for (path, record) in &manifest.files {
            if kept_inodes.binary_search(&record.ino).is_ok() {
                continue;
            }
            let path = manifest.at(*path);
            // Only paths gitfeed could have written, which never leave the spare.
            let plain = path
                .split(|&b| b == b'/')
                .all(|component| component_problem(component).is_none());
            if plain {
                remove_if_present(&spare.join(OsStr::from_bytes(path)))?;
            }
        }
        return Ok(());
    }
    let mut pending = vec![spare.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for item in fs::read_dir(&dir)? {
            let item = item?;
            let kind = item.file_type()?;
            if kind.is_dir() {
                pending.push(item.path());
            } else if kind.is_file() && item.metadata()?.nlink() < 2 {
                fs::remove_file(item.path())?;
            }
        }
    }
    Ok(())
}

/// The directories of a snapshot being written.
#[derive(Debug, Default)]
struct Dirs {
    /// In the order they were created, to sync them.
    list: Vec<PathBuf>,
    /// The same, to look them up.
    known: HashSet<PathBuf>,
}

impl Dirs {
    /// Records a directory that is known to be real.
    fn add(&mut self, path: PathBuf) {
        if self.known.insert(path.clone()) {
            self.list.push(path);
        }
    }
}

/// What [`write_entry`] put in the snapshot.
#[derive(Debug)]
enum Written {
    /// A regular file, as the manifest records it.
    File {
        /// What the manifest says of it.
        record: Record,
        /// Whether it is a link to the previous snapshot's file.
        shared: bool,
    },
    /// A symlink.
    Symlink,
}

/// Writes one entry below `root`, creating its parent directories (recorded in `dirs`), or
/// links it from `previous` when that holds the same file unchanged.
/// The inner error is a reason to skip the entry; the outer one fails the snapshot.
fn write_entry(
    root: &Path,
    planned: &Planned<'_>,
    read: &mut ReadBlob<'_>,
    previous: Option<(&Path, &Manifest)>,
    dirs: &mut Dirs,
) -> Result<Result<Written, &'static str>, SnapshotError> {
    let components = &planned.entry.components;
    let fail = |what: &str, err| {
        let path = display(components);
        SnapshotError::io(format!("could not {what} {path:?}"), err)
    };
    let Some((name, parents)) = components.split_last() else {
        return Ok(Err("empty path"));
    };
    let mut path = root.to_path_buf();
    for parent in parents {
        path.push(OsStr::from_bytes(parent));
        if dirs.known.contains(&path) {
            continue;
        }
        match make_dir(&path) {
            Ok(()) => dirs.add(path.clone()),
            // Only another spelling of an earlier name can be here, on a filesystem that
            // folds names; it must be a real directory to go on.
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
                if !is_real_dir(&path) {
                    return Ok(Err("collides with another entry on this filesystem"));
                }
                dirs.add(path.clone());
            }
            Err(err) => {
                return match name_problem(&err) {
                    Some(reason) => Ok(Err(reason)),
                    None => Err(fail("create a directory for", err)),
                };
            }
        }
    }
    path.push(OsStr::from_bytes(name));

    let result = match (&planned.entry.kind, &planned.target) {
        (EntryKind::Symlink, Some(target)) => {
            std::os::unix::fs::symlink(OsStr::from_bytes(target), &path).map(|()| Written::Symlink)
        }
        (&EntryKind::File { executable }, _) => {
            let id = &planned.entry.id;
            if let Some((dir, manifest)) = previous
                && let Some(record) = manifest.file(&components.join(&b'/'))
                && record.executable == executable
                && record.id.is(id)
            {
                match share(&join(dir, components), &path, manifest, record) {
                    Ok(Some(record)) => {
                        return Ok(Ok(Written::File {
                            record,
                            shared: true,
                        }));
                    }
                    // Changed, gone, or too many links: written afresh below.
                    Ok(None) => {}
                    Err(err) => {
                        return match name_problem(&err) {
                            Some(reason) => Ok(Err(reason)),
                            None => Err(fail("link", err)),
                        };
                    }
                }
            }
            let mode = if executable {
                MODE_EXECUTABLE
            } else {
                MODE_FILE
            };
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&path)
            {
                Ok(file) => {
                    let blob = BlobId::new(id).ok_or_else(|| {
                        fail(
                            "record",
                            io::Error::other("a blob id longer than any git makes"),
                        )
                    })?;
                    return write_file(file, mode, id, read)
                        .map(|metadata| {
                            Ok(Written::File {
                                record: Record::new(executable, blob, &Seen::of(&metadata)),
                                shared: false,
                            })
                        })
                        .map_err(|err| fail("write", err));
                }
                Err(err) => Err(err),
            }
        }
        _ => return Ok(Err("nothing to write")),
    };
    match result {
        Ok(written) => Ok(Ok(written)),
        Err(err) => match name_problem(&err) {
            Some(reason) => Ok(Err(reason)),
            None => Err(fail("create", err)),
        },
    }
}

/// Links `from` (in the previous snapshot) to `to`, and keeps the link only if it is the file
/// `record` of `manifest` describes, unchanged; returns the link's record then (a link
/// changes the file's status change time). `Ok(None)`: nothing is at `to`, write it afresh.
/// An error about `to` itself (its name) is returned.
///
/// `from` must pass [`Manifest::trusts`] before it is linked, and the new link is checked
/// again: a path through a directory someone swapped for a symlink could lead anywhere, but
/// the inode it reached is what is checked.
fn share(
    from: &Path,
    to: &Path,
    manifest: &Manifest,
    record: &Record,
) -> io::Result<Option<Record>> {
    if !fs::symlink_metadata(from)
        .is_ok_and(|metadata| manifest.trusts(record, &Seen::of(&metadata)))
    {
        return Ok(None);
    }
    match fs::hard_link(from, to) {
        Ok(()) => {}
        Err(err) if name_problem(&err).is_some() => return Err(err),
        Err(_) => return Ok(None),
    }
    let linked = fs::symlink_metadata(to)
        .ok()
        .map(|metadata| Seen::of(&metadata))
        .filter(|stat| record.matches(stat))
        .map(|stat| Record::new(record.executable, record.id, &stat));
    if linked.is_none() {
        fs::remove_file(to)?;
    }
    Ok(linked)
}

/// Streams a blob into a new file and sets its mode regardless of the umask; syncs it unless
/// the whole snapshot is synced at once. Returns the file's metadata once written.
fn write_file(
    file: File,
    mode: u32,
    id: &str,
    read: &mut ReadBlob<'_>,
) -> io::Result<fs::Metadata> {
    file.set_permissions(Permissions::from_mode(mode))?;
    let mut writer = BufWriter::new(file);
    read(id, &mut writer)?;
    let file = writer
        .into_inner()
        .map_err(io::IntoInnerError::into_error)?;
    if !SYNCFS {
        file.sync_all()?;
    }
    file.metadata()
}

/// The reason to skip an entry whose name the filesystem refused, if the error is about the
/// name rather than the disk.
fn name_problem(err: &io::Error) -> Option<&'static str> {
    match err.kind() {
        io::ErrorKind::AlreadyExists => Some("collides with another entry on this filesystem"),
        io::ErrorKind::InvalidFilename => Some("name too long for this filesystem"),
        _ => None,
    }
}

/// Whether the symlink at `components` below `root`, resolved through the real filesystem,
/// leads outside `root`. Components that do not exist are taken as directories, since
/// whatever is created there later must not be able to make the link escape.
fn escapes(root: &Path, components: &[Vec<u8>]) -> bool {
    let Some((name, parents)) = components.split_last() else {
        return true;
    };
    let mut stack: Vec<Vec<u8>> = parents.to_vec();
    let mut pending: VecDeque<Vec<u8>> = VecDeque::from([name.clone()]);
    let mut hops = 0;
    while let Some(part) = pending.pop_front() {
        match part.as_slice() {
            b"" | b"." => {}
            b".." => {
                if stack.pop().is_none() {
                    return true;
                }
            }
            _ => {
                stack.push(part);
                let path = join(root, &stack);
                let is_link = fs::symlink_metadata(&path)
                    .is_ok_and(|metadata| metadata.file_type().is_symlink());
                if !is_link {
                    continue;
                }
                hops += 1;
                let Ok(target) = fs::read_link(&path) else {
                    return true;
                };
                let target = target.as_os_str().as_bytes();
                if hops > MAX_HOPS || target.starts_with(b"/") {
                    return true;
                }
                stack.pop();
                for part in target.split(|&b| b == b'/').rev() {
                    pending.push_front(part.to_vec());
                }
            }
        }
    }
    false
}

/// A snapshot being written, removed with everything in it unless it was moved in place.
#[derive(Debug)]
struct Temporary {
    /// Where it is.
    path: PathBuf,
    /// Whether dropping it removes it.
    armed: bool,
}

impl Drop for Temporary {
    fn drop(&mut self) {
        // A crash leaves everything where it is; see `crash_point`.
        if self.armed && !crashed() {
            let _ = remove_path(&self.path);
        }
    }
}

/// Removes the file at `path` if there is one; whether there was.
fn remove_if_present(path: &Path) -> io::Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(err) => Err(err),
    }
}

#[cfg(test)]
thread_local! {
    /// The crash point at which the test running on this thread makes a write stop, counting
    /// down; 0 when none is armed.
    static CRASH_IN: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    /// Whether this thread's write stopped at a crash point.
    static CRASHED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A point between two steps of a write where tests make it stop as if the process died:
/// nothing after it runs and nothing is cleaned up. A no-op outside tests.
fn crash_point() -> Result<(), SnapshotError> {
    crash_point_io().map_err(|err| SnapshotError::io("crashed", err))
}

/// [`crash_point`] for the steps that return `io::Error`.
fn crash_point_io() -> io::Result<()> {
    #[cfg(test)]
    {
        let left = CRASH_IN.get();
        if CRASHED.get() || left == 1 {
            CRASHED.set(true);
            CRASH_IN.set(0);
            return Err(io::Error::other("simulated crash"));
        }
        CRASH_IN.set(left.saturating_sub(1));
    }
    Ok(())
}

/// Whether this thread's write stopped at a crash point (never, outside tests).
fn crashed() -> bool {
    #[cfg(test)]
    return CRASHED.get();
    #[cfg(not(test))]
    false
}

/// Collects a symlink target, keeping no more than the longest accepted and noting whether
/// more came, so a hostile blob cannot fill memory.
#[derive(Debug, Default)]
struct Capped {
    /// The target so far.
    bytes: Vec<u8>,
    /// Whether more than [`MAX_TARGET`] bytes came.
    overflow: bool,
}

impl Write for Capped {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = MAX_TARGET.saturating_sub(self.bytes.len());
        self.overflow |= buf.len() > room;
        self.bytes.extend_from_slice(&buf[..buf.len().min(room)]);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Whether `commit` is a full object id: 40 (SHA-1) or 64 (SHA-256) lowercase hex digits.
fn is_commit(commit: &str) -> bool {
    matches!(commit.len(), 40 | 64)
        && commit
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Whether `path` is a directory itself, not a symlink to one.
fn is_real_dir(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|metadata| metadata.is_dir())
}

/// Creates a directory with the permissions snapshots have, whatever the umask.
fn make_dir(path: &Path) -> io::Result<()> {
    DirBuilder::new().mode(MODE_DIR).create(path)?;
    fs::set_permissions(path, Permissions::from_mode(MODE_DIR))
}

/// Makes a directory's entries durable.
fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

/// Runs `create` on fresh `.tmp-<label>-<random>` paths in `dir` until one is free, and
/// returns that path with what `create` returned.
fn create_unique<T>(
    dir: &Path,
    label: &str,
    mut create: impl FnMut(&Path) -> io::Result<T>,
) -> io::Result<(PathBuf, T)> {
    for _ in 0..16 {
        let path = dir.join(format!("{TMP_PREFIX}{label}-{}", random_suffix()));
        match create(&path) {
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
            result => return result.map(|value| (path, value)),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "no free temporary name",
    ))
}

/// 16 hex digits no other name in use is likely to have, from std's randomly seeded hasher,
/// the process id, the time and a counter.
fn random_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, atomic::Ordering::Relaxed));
    hasher.write_u32(std::process::id());
    if let Ok(elapsed) = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH) {
        hasher.write_u128(elapsed.as_nanos());
    }
    format!("{:016x}", hasher.finish())
}

/// Removes the `.tmp-` symlinks of `dir`, the next `current`s an interrupted write left.
fn remove_temporary_links(dir: &Path) -> io::Result<()> {
    let items = match fs::read_dir(dir) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        items => items?,
    };
    let mut removed = false;
    for item in items {
        let item = item?;
        if !item
            .file_name()
            .as_bytes()
            .starts_with(TMP_PREFIX.as_bytes())
        {
            continue;
        }
        if !item.file_type()?.is_symlink() {
            continue;
        }
        match fs::remove_file(item.path()) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err),
            _ => removed = true,
        }
    }
    if removed { sync_dir(dir) } else { Ok(()) }
}

/// The commits listed in the order file, oldest first; none if it is missing, unreadable or
/// not a regular file.
fn read_order(snapshots: &Path) -> Vec<String> {
    read_own(&snapshots.join(ORDER), MAX_ORDER)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .map(|text| {
            text.lines()
                .filter(|line| is_commit(line))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Replaces the order file atomically.
fn write_order(snapshots: &Path, commits: &[String]) -> io::Result<()> {
    let mut text = String::new();
    for commit in commits {
        text.push_str(commit);
        text.push('\n');
    }
    let (temporary, mut file) = create_unique(snapshots, ORDER, |path| {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(MODE_OWN)
            .open(path)
    })?;
    let result = file
        .write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .and_then(|()| fs::rename(&temporary, snapshots.join(ORDER)));
    if result.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    result.and_then(|()| sync_dir(snapshots))
}

/// `root` with raw `components` appended.
fn join(root: &Path, components: &[Vec<u8>]) -> PathBuf {
    let mut path = root.to_path_buf();
    for component in components {
        path.push(OsStr::from_bytes(component));
    }
    path
}

/// Components joined with `/` and lossily decoded, for messages.
fn display(components: &[Vec<u8>]) -> String {
    components
        .iter()
        .map(|component| String::from_utf8_lossy(component))
        .collect::<Vec<_>>()
        .join("/")
}

/// An entry left out of the snapshot being written.
#[derive(Debug, Clone)]
struct Left {
    /// Its position in the byte order of components, to order the report.
    rank: usize,
    /// Its path components.
    components: Vec<Vec<u8>>,
    /// Why it was left out.
    reason: String,
}

impl Left {
    /// `entry`, ranked `rank`, left out for `reason`.
    fn new(rank: usize, entry: &Entry, reason: String) -> Self {
        Self {
            rank,
            components: entry.components.clone(),
            reason,
        }
    }

    /// The report's order: by components, then rank (which keeps the order of equal paths).
    fn order(a: &Left, b: &Left) -> Ordering {
        a.components.cmp(&b.components).then(a.rank.cmp(&b.rank))
    }

    /// What the report says of it.
    fn into_skipped(self) -> Skipped {
        Skipped {
            path: display(&self.components),
            reason: self.reason,
        }
    }
}

/// Refuses a `commit` that is not a plain object id: it becomes a path.
fn check_commit(commit: &str) -> Result<(), SnapshotError> {
    if is_commit(commit) {
        Ok(())
    } else {
        Err(SnapshotError {
            context: "invalid commit id".into(),
            cause: None,
        })
    }
}

#[cfg(test)]
mod tests;
