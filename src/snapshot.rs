//! Writing a commit's files into a directory an agent can load.
//!
//! ```text
//! DIR/current                              relative symlink -> .snapshots/<commit>
//! DIR/.snapshots/<commit>/                 one complete snapshot per commit
//! DIR/.snapshots/order                     commits in the order they became current
//! DIR/.snapshots/.tmp-<commit>-<random>/   being written, never pointed to
//! DIR/.tmp-current-<random>                the next `current`, about to be renamed over it
//! ```
//!
//! # Guarantees
//!
//! A snapshot is written into a temporary directory, every file and directory in it is synced,
//! and only then is it renamed to `.snapshots/<commit>`. A directory with that name therefore
//! only ever holds a complete tree, which is what "complete" means here: no marker file is
//! needed, so the snapshot holds exactly the commit's files and nothing else. `current` is
//! switched by renaming a new symlink over it, which readers see either before or after, never
//! in between. A crash at any point leaves `current` pointing at the last complete snapshot;
//! what the interrupted write left behind starts with `.tmp-` and is removed by
//! [`SnapshotDir::recover`], which every write calls first.
//!
//! Old snapshots are removed by first renaming them to a `.tmp-` name, so a removal cut short
//! never leaves a half-deleted tree under a commit's name that a later write would reuse.
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

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::OsStr;
use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::hash::{BuildHasher, Hasher};
use std::io::{self, BufWriter, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

/// The symlink consumers resolve, relative to the root.
const CURRENT: &str = "current";
/// The directory holding the snapshots, relative to the root.
const SNAPSHOTS: &str = ".snapshots";
/// The file in [`SNAPSHOTS`] listing commits in the order they became current, oldest first.
const ORDER: &str = "order";
/// What every name left behind by an interrupted write starts with.
const TMP_PREFIX: &str = ".tmp-";
/// The longest file name Unix filesystems accept.
const MAX_NAME: usize = 255;
/// The longest symlink target accepted; the kernel resolves nothing longer anyway.
const MAX_TARGET: usize = 4095;
/// How many symlinks resolving one target may go through; Linux gives up after as many.
const MAX_HOPS: usize = 40;
/// Permissions of executable files and of directories.
const MODE_EXECUTABLE: u32 = 0o755;
/// Permissions of other files.
const MODE_FILE: u32 = 0o644;

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
}

/// What [`SnapshotDir::write`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Report {
    /// Files and symlinks in the snapshot (directories are not counted).
    pub written: usize,
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
type Read<'r> = dyn FnMut(&str, &mut dyn Write) -> io::Result<()> + 'r;

impl SnapshotDir {
    /// A snapshot directory at `root` keeping the `keep` latest snapshots (at least 1). Nothing
    /// is touched until the first write.
    pub fn new(root: impl Into<PathBuf>, keep: usize) -> Self {
        Self {
            root: root.into(),
            keep: keep.max(1),
        }
    }

    /// Writes `entries` for `commit` and makes it current. `read` streams the blob with the
    /// given id into the writer (so large blobs are never held in memory); for a symlink it
    /// writes the link target bytes.
    ///
    /// If `.snapshots/<commit>` already exists it is complete (see the module docs) and is made
    /// current again without reading any file. Removing snapshots beyond `keep` comes after
    /// the switch and is best effort: the new snapshot is current by then, so a failure there
    /// is not the write's, and whatever was left is removed by the next write.
    pub fn write(
        &self,
        commit: &str,
        entries: &[Entry],
        read: &mut Read<'_>,
    ) -> Result<Report, SnapshotError> {
        // The commit becomes a path, so anything but a plain object id is refused.
        if !is_commit(commit) {
            return Err(SnapshotError {
                context: "invalid commit id".into(),
                cause: None,
            });
        }
        let snapshots = self.snapshots();
        fs::create_dir_all(&snapshots)
            .and_then(|()| sync_dir(&self.root))
            .map_err(|err| SnapshotError::io("could not create the snapshot directory", err))?;
        self.recover()
            .map_err(|err| SnapshotError::io("could not remove leftovers", err))?;

        let mut skipped = Vec::new();
        let plan = plan(entries, read, &mut skipped)?;
        let target = snapshots.join(commit);
        let written = if is_real_dir(&target) {
            plan.len()
        } else {
            // Not a directory, so not a snapshot; nothing else is ever put here.
            let _ = fs::remove_file(&target);
            build(&snapshots, commit, &plan, read, &mut skipped)?
        };
        self.switch(commit)
            .map_err(|err| SnapshotError::io("could not switch current", err))?;
        let _ = self.prune(commit);

        skipped.sort_by_key(|(rank, _)| *rank);
        Ok(Report {
            written,
            skipped: skipped.into_iter().map(|(_, skip)| skip).collect(),
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

    /// Removes leftovers of an interrupted write.
    pub fn recover(&self) -> io::Result<()> {
        // In the root only the temporary symlinks are ours to remove.
        remove_leftovers(&self.root, true)?;
        remove_leftovers(&self.snapshots(), false)
    }

    /// Where the snapshots are.
    fn snapshots(&self) -> PathBuf {
        self.root.join(SNAPSHOTS)
    }

    /// Points `current` at the snapshot of `commit`, atomically.
    fn switch(&self, commit: &str) -> io::Result<()> {
        let target = Path::new(SNAPSHOTS).join(commit);
        let link = create_unique(&self.root, "current", |path| {
            std::os::unix::fs::symlink(&target, path)
        })?;
        if let Err(err) = fs::rename(&link, self.root.join(CURRENT)) {
            let _ = fs::remove_file(&link);
            return Err(err);
        }
        sync_dir(&self.root)
    }

    /// Records `current` as the latest snapshot and removes the oldest beyond `keep`.
    ///
    /// The order is kept in a file rather than read from directory times: times are as coarse
    /// as the filesystem's clock, so quick swaps tie, and making an existing snapshot current
    /// again would mean touching it. Snapshots the file does not list (written, then a crash
    /// before the switch) count as the oldest.
    fn prune(&self, current: &str) -> io::Result<()> {
        let snapshots = self.snapshots();
        let mut order = read_order(&snapshots);
        order.retain(|commit| commit != current);
        order.push(current.to_owned());

        let mut present = Vec::new();
        for item in fs::read_dir(&snapshots)? {
            let item = item?;
            if let Some(name) = item.file_name().to_str()
                && is_commit(name)
                && item.file_type()?.is_dir()
            {
                present.push(name.to_owned());
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
        let mut doomed = Vec::new();
        for commit in old {
            if commit != current && pointed.as_deref() != Some(commit) {
                let from = snapshots.join(commit);
                let to = create_unique(&snapshots, commit, |path| fs::rename(&from, path))?;
                doomed.push(to);
            }
        }
        if !doomed.is_empty() {
            sync_dir(&snapshots)?;
        }
        for path in doomed {
            fs::remove_dir_all(path)?;
        }
        Ok(())
    }
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
    read: &mut Read<'_>,
    skipped: &mut Vec<(usize, Skipped)>,
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
            Err(reason) => skipped.push((rank, skip(entry, reason))),
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
            let mut target = Capped::default();
            read(&planned.entry.id, &mut target).map_err(|err| {
                let path = display(&planned.entry.components);
                SnapshotError::io(format!("could not read symlink {path:?}"), err)
            })?;
            if let Err(reason) = check_target(&planned.entry.components, &target, &links) {
                skipped.push((planned.rank, skip(planned.entry, reason.into())));
                continue;
            }
            planned.target = Some(target.bytes);
        }
        checked.push(planned);
    }
    Ok(checked)
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

    let described = |claim: &Claim| format!("{:?}", display(&entries[claim.index].components[..claim.depth]));
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
        _ if names_git(component) => Some("path component names .git"),
        _ => None,
    }
}

/// Whether some filesystem would take `component` for `.git`.
fn names_git(component: &[u8]) -> bool {
    let visible: Vec<u8> = match std::str::from_utf8(component) {
        Ok(text) => text
            .chars()
            .filter(|&c| !hfs_ignored(c))
            .collect::<String>()
            .into_bytes(),
        Err(_) => component.to_vec(),
    };
    let end = visible
        .iter()
        .rposition(|&b| b != b'.' && b != b' ')
        .map_or(0, |last| last + 1);
    let name = &visible[..end];
    name.eq_ignore_ascii_case(b".git") || name.eq_ignore_ascii_case(b"git~1")
}

/// Whether HFS+ drops `c` when comparing names (joiners, direction marks, the BOM).
fn hfs_ignored(c: char) -> bool {
    matches!(
        c,
        '\u{200c}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{206a}'..='\u{206f}' | '\u{feff}'
    )
}

/// `component` as a filesystem that ignores case compares it: Unicode lowercase when it is
/// UTF-8, ASCII lowercase otherwise.
fn fold(component: &[u8]) -> Vec<u8> {
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
    // Resolved from the link's directory. `marks` remembers where each component starts in
    // `key`, so `..` can cut it off again.
    let mut key = Vec::new();
    let mut marks = Vec::new();
    let mut push = |key: &mut Vec<u8>, marks: &mut Vec<usize>, component: &[u8]| {
        marks.push(key.len());
        if !key.is_empty() {
            key.push(b'/');
        }
        key.extend(fold(component));
    };
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

/// Writes the plan into a new temporary directory, syncs it and renames it to
/// `snapshots/<commit>`. Returns how many entries were written.
fn build(
    snapshots: &Path,
    commit: &str,
    plan: &[Planned<'_>],
    read: &mut Read<'_>,
    skipped: &mut Vec<(usize, Skipped)>,
) -> Result<usize, SnapshotError> {
    let path = create_unique(snapshots, commit, |path| make_dir(path))
        .map_err(|err| SnapshotError::io("could not create a temporary directory", err))?;
    let mut temporary = Temporary { path, armed: true };
    let root = temporary.path.clone();

    let mut dirs = vec![root.clone()];
    let mut links = Vec::new();
    let mut written = 0;
    for planned in plan {
        match write_entry(&root, planned, read, &mut dirs)? {
            Ok(()) if planned.target.is_some() => links.push(planned),
            Ok(()) => written += 1,
            Err(reason) => skipped.push((planned.rank, skip(planned.entry, reason.into()))),
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
                skipped.push((planned.rank, skip(planned.entry, reason.into())));
            } else {
                kept.push(planned);
            }
        }
        links = kept;
        if links.len() == before {
            break;
        }
    }
    written += links.len();

    // Deepest first, so each directory is synced after the entries in it.
    for dir in dirs.iter().rev() {
        sync_dir(dir).map_err(|err| SnapshotError::io("could not sync the snapshot", err))?;
    }
    let target = snapshots.join(commit);
    if let Err(err) = fs::rename(&root, &target) {
        // Another writer got there first; its snapshot is as good as this one.
        if !is_real_dir(&target) {
            return Err(SnapshotError::io("could not move the snapshot in place", err));
        }
    } else {
        temporary.armed = false;
    }
    sync_dir(snapshots).map_err(|err| SnapshotError::io("could not sync the snapshot", err))?;
    Ok(written)
}

/// Writes one entry below `root`, creating its parent directories (recorded in `dirs`).
/// The inner error is a reason to skip the entry; the outer one fails the snapshot.
fn write_entry(
    root: &Path,
    planned: &Planned<'_>,
    read: &mut Read<'_>,
    dirs: &mut Vec<PathBuf>,
) -> Result<Result<(), &'static str>, SnapshotError> {
    let components = &planned.entry.components;
    let fail = |what: &str, err| {
        let path = display(components);
        SnapshotError::io(format!("could not {what} {path:?}"), err)
    };
    let Some((name, parents)) = components.split_last() else {
        return Ok(Err("empty path"));
    };
    let mut path = root.to_path_buf();
    for (depth, parent) in parents.iter().enumerate() {
        path.push(OsStr::from_bytes(parent));
        // Earlier entries created most parents; `dirs` is in creation order, so this looks
        // at the few most recent ones first.
        if dirs.iter().rev().any(|dir| *dir == path) {
            continue;
        }
        match make_dir(&path) {
            Ok(()) => dirs.push(path.clone()),
            // Only another spelling of an earlier name can be here, on a filesystem that
            // folds names; it must be a real directory to go on.
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
                if !is_real_dir(&path) {
                    return Ok(Err("collides with another entry on this filesystem"));
                }
                dirs.push(path.clone());
            }
            Err(err) => {
                return match name_problem(&err) {
                    Some(reason) => Ok(Err(reason)),
                    None => Err(fail("create a directory for", err)),
                };
            }
        }
        debug_assert!(depth < parents.len());
    }
    path.push(OsStr::from_bytes(name));

    let result = match (&planned.entry.kind, &planned.target) {
        (EntryKind::Symlink, Some(target)) => {
            std::os::unix::fs::symlink(OsStr::from_bytes(target), &path)
        }
        (EntryKind::File { executable }, _) => {
            let mode = if *executable {
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
                    return write_file(file, mode, &planned.entry.id, read)
                        .map(Ok)
                        .map_err(|err| fail("write", err));
                }
                Err(err) => Err(err),
            }
        }
        _ => return Ok(Err("nothing to write")),
    };
    match result {
        Ok(()) => Ok(Ok(())),
        Err(err) => match name_problem(&err) {
            Some(reason) => Ok(Err(reason)),
            None => Err(fail("create", err)),
        },
    }
}

/// Streams a blob into a new file, sets its mode regardless of the umask, and syncs it.
fn write_file(file: File, mode: u32, id: &str, read: &mut Read<'_>) -> io::Result<()> {
    file.set_permissions(Permissions::from_mode(mode))?;
    let mut writer = BufWriter::new(file);
    read(id, &mut writer)?;
    let file = writer.into_inner().map_err(io::IntoInnerError::into_error)?;
    file.sync_all()
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
        if self.armed {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Collects a symlink target, keeping no more than one byte beyond the longest accepted, so a
/// hostile blob cannot fill memory.
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
    DirBuilder::new().mode(MODE_EXECUTABLE).create(path)?;
    fs::set_permissions(path, Permissions::from_mode(MODE_EXECUTABLE))
}

/// Makes a directory's entries durable.
fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

/// Runs `create` on a fresh `.tmp-<label>-<random>` path in `dir` until one is free, and
/// returns that path.
fn create_unique(
    dir: &Path,
    label: &str,
    mut create: impl FnMut(&Path) -> io::Result<()>,
) -> io::Result<PathBuf> {
    for _ in 0..16 {
        let path = dir.join(format!("{TMP_PREFIX}{label}-{}", random_suffix()));
        match create(&path) {
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
            result => return result.map(|()| path),
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
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u32(std::process::id());
    if let Ok(elapsed) = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH) {
        hasher.write_u128(elapsed.as_nanos());
    }
    format!("{:016x}", hasher.finish())
}

/// Removes the `.tmp-` entries of `dir`: only symlinks if `links_only`, everything otherwise.
fn remove_leftovers(dir: &Path, links_only: bool) -> io::Result<()> {
    let items = match fs::read_dir(dir) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        items => items?,
    };
    let mut removed = false;
    for item in items {
        let item = item?;
        if !item.file_name().as_bytes().starts_with(TMP_PREFIX.as_bytes()) {
            continue;
        }
        let kind = item.file_type()?;
        let result = if kind.is_symlink() {
            fs::remove_file(item.path())
        } else if links_only {
            continue;
        } else if kind.is_dir() {
            fs::remove_dir_all(item.path())
        } else {
            fs::remove_file(item.path())
        };
        match result {
            Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err),
            _ => removed = true,
        }
    }
    if removed { sync_dir(dir) } else { Ok(()) }
}

/// The commits listed in the order file, oldest first; none if it is missing or unreadable.
fn read_order(snapshots: &Path) -> Vec<String> {
    fs::read_to_string(snapshots.join(ORDER))
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
    let temporary = create_unique(snapshots, ORDER, |path| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(MODE_FILE)
            .open(path)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()
    });
    let temporary = match temporary {
        Ok(path) => path,
        Err(err) => return Err(err),
    };
    if let Err(err) = fs::rename(&temporary, snapshots.join(ORDER)) {
        let _ = fs::remove_file(&temporary);
        return Err(err);
    }
    sync_dir(snapshots)
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

/// A [`Skipped`] for `entry`.
fn skip(entry: &Entry, reason: String) -> Skipped {
    Skipped {
        path: display(&entry.components),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
}
