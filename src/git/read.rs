//! Reading a commit's files straight from the object database, without a worktree.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;

use gix::bstr::ByteSlice;
use gix::objs::tree::EntryKind;

use super::filter::Matcher;
use super::stream::PackedBlobs;
use super::{FetchError, ObjectId, Repo, parse_id};
use crate::event::{Change, ChangeKind};
use crate::reason::Reason;

/// Trees nested deeper than this are refused: a hostile tree could otherwise make the listing
/// run for ever or exhaust memory.
const MAX_DEPTH: usize = 256;

/// One entry of a commit's tree, as listed by [`Repo::files`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TreeFile {
    /// Path components, raw bytes exactly as stored in the trees (a hostile tree may hold
    /// names with `/` or `..`; the snapshot writer checks them).
    pub components: Vec<Vec<u8>>,
    /// The components joined with `/`, lossily decoded; what filters and events see.
    pub path: String,
    /// What the entry is.
    pub kind: FileKind,
    /// Blob (or, for a gitlink, commit) id.
    pub id: String,
    /// Size in bytes (0 for gitlinks).
    pub size: u64,
}

/// The kinds of non-directory tree entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileKind {
    File { executable: bool },
    Symlink,
    Gitlink,
}

/// A path whose entry differs between two commits' trees, as [`Repo::file_changes`] finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileChange {
    /// Path components, raw bytes exactly as stored in the trees.
    pub components: Vec<Vec<u8>>,
    /// The components joined with `/`, lossily decoded; what filters and messages see.
    pub path: String,
    /// What the old commit holds there, if anything the filter accepts.
    pub old: Option<FileSide>,
    /// What the new commit holds there, if anything the filter accepts.
    pub new: Option<FileSide>,
    /// Whether this entry's name, or that of a directory on its path, is shared with another
    /// entry of the same directory, in either commit, once the caller's `key` is applied.
    pub crowded: bool,
}

/// One side of a [`FileChange`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileSide {
    /// What the entry is.
    pub kind: FileKind,
    /// Blob (or, for a gitlink, commit) id.
    pub id: String,
    /// Size in bytes (0 for gitlinks).
    pub size: u64,
}

/// Why reading failed.
#[derive(Debug, Clone)]
pub(crate) enum ReadFailure {
    /// The commit or path does not exist.
    NotFound(String),
    /// A limit was exceeded.
    TooLarge(String),
    /// The object database is broken.
    Corrupt(String),
    /// Writing the bytes out failed: what was being written, and the writer's error.
    Io(String, Arc<std::io::Error>),
}

impl Repo {
    /// Every file of `commit`'s tree that `matcher` accepts, sorted by path (see
    /// [`Repo::walk`]).
    pub fn files(&self, commit: ObjectId, matcher: &Matcher) -> Result<Vec<TreeFile>, ReadFailure> {
        self.walk(&commit.to_string(), matcher)?.collect()
    }

    /// The files of `commit`'s tree that `matcher` accepts, one at a time, sorted by their
    /// path components compared as bytes (`a/x` before `a-b` and `a.txt`). Each step reads at most one
    /// directory's trees and one object header, so a large tree costs a little per file
    /// rather than all at once. An error ends the walk.
    pub fn walk<'a>(
        &self,
        commit: &str,
        matcher: &'a Matcher,
    ) -> Result<TreeWalk<'a>, ReadFailure> {
        let repo = self.repo.to_thread_local();
        let tree = commit_tree(&repo, commit)?;
        let root = directory(&repo, Vec::new(), &[tree])?;
        Ok(TreeWalk {
            repo,
            matcher,
            commit: commit.to_owned(),
            stack: vec![root],
        })
    }

    /// The files that differ between the trees of `old` and `new`, as [`Repo::walk`] lists
    /// them (with raw names, and only those `matcher` accepts), sorted by their components.
    /// Only the trees that differ are read, so the cost grows with the change, not the tree.
    ///
    /// Each change tells whether its name, or that of a directory on its path, maps under
    /// `key` to the same as another name of its directory in either commit (as every name
    /// listed twice does): a caller that treats names so compared as one cannot take such a
    /// change alone. A directory whose names repeat is compared as a whole, and may give a
    /// single crowded change that stands for all of it.
    pub fn file_changes(
        &self,
        old: ObjectId,
        new: ObjectId,
        matcher: &Matcher,
        key: &dyn Fn(&[u8]) -> Vec<u8>,
    ) -> Result<Vec<FileChange>, ReadFailure> {
        let repo = self.repo.to_thread_local();
        let commit = new.to_string();
        let trees = (
            commit_tree(&repo, &old.to_string())?,
            commit_tree(&repo, &commit)?,
        );
        let mut out = Vec::new();
        let mut stack = vec![(Some(trees.0), Some(trees.1), Vec::new(), false)];
        while let Some((old, new, prefix, crowded)) = stack.pop() {
            if prefix.len() > MAX_DEPTH {
                return Err(too_deep(&commit));
            }
            let listed = |tree: Option<gix::ObjectId>| match tree {
                Some(tree) => entries(&repo, tree, |_| true),
                None => Ok(Vec::new()),
            };
            let (before, after) = (listed(old)?, listed(new)?);
            let mut keys = std::collections::HashMap::new();
            for (side, entries) in [(0, &before), (1, &after)] {
                for entry in entries {
                    let count: &mut [usize; 2] = keys.entry(key(&entry.name)).or_default();
                    count[side] += 1;
                }
            }
            let mut names: BTreeMap<&[u8], [Vec<&Entry>; 2]> = BTreeMap::new();
            for (side, entries) in [(0, &before), (1, &after)] {
                for entry in entries {
                    names.entry(entry.name.as_slice()).or_default()[side].push(entry);
                }
            }
            for (name, [was, is]) in names {
                let same = |a: &Vec<&Entry>, b: &Vec<&Entry>| {
                    a.len() == b.len()
                        && a.iter()
                            .zip(b)
                            .all(|(a, b)| a.kind == b.kind && a.id == b.id)
                };
                if same(&was, &is) {
                    continue;
                }
                let mut components = prefix.clone();
                components.push(name.to_vec());
                let path = components
                    .iter()
                    .map(|c| c.to_str_lossy())
                    .collect::<Vec<_>>()
                    .join("/");
                let crowded = crowded || keys[&key(name)].iter().any(|&count| count > 1);
                if was.len() > 1 || is.len() > 1 {
                    out.push(FileChange {
                        components,
                        path,
                        old: None,
                        new: None,
                        crowded: true,
                    });
                    continue;
                }
                let (was, is) = (was.first().copied(), is.first().copied());
                let tree = |entry: Option<&Entry>| {
                    entry.and_then(|entry| (entry.kind == EntryKind::Tree).then_some(entry.id))
                };
                if tree(was).is_some() || tree(is).is_some() {
                    stack.push((tree(was), tree(is), components.clone(), crowded));
                }
                if !matcher.accepts(&path) {
                    continue;
                }
                let side = |entry: Option<&Entry>| -> Result<Option<FileSide>, ReadFailure> {
                    let Some(entry) = entry else {
                        return Ok(None);
                    };
                    let Some(kind) = file_kind(entry.kind) else {
                        return Ok(None);
                    };
                    let size = match kind {
                        FileKind::Gitlink => 0,
                        _ => repo
                            .find_header(entry.id)
                            .map_err(|err| {
                                ReadFailure::Corrupt(format!("blob {} at {path}: {err}", entry.id))
                            })?
                            .size(),
                    };
                    Ok(Some(FileSide {
                        kind,
                        id: entry.id.to_string(),
                        size,
                    }))
                };
                let (old, new) = (side(was)?, side(is)?);
                if old.is_some() || new.is_some() {
                    out.push(FileChange {
                        components,
                        path,
                        old,
                        new,
                        crowded,
                    });
                }
            }
        }
        out.sort_by(|a, b| a.components.cmp(&b.components));
        Ok(out)
    }

    /// The entry at `path` in `commit`, found by reading only the trees along the path: its
    /// kind and id. A path whose components cannot all be names of a path the consumer uses
    /// (see [`representable`]), or that `matcher` refuses, is not found, exactly as it is
    /// missing from [`Repo::walk`]. When the tree holds several entries the path could name
    /// (a hostile tree may repeat a name, or hold names that are not UTF-8 and decode to the
    /// same text), the one [`Repo::walk`] lists first is returned.
    pub fn lookup(
        &self,
        commit: &str,
        path: &str,
        matcher: &Matcher,
    ) -> Result<(FileKind, String), ReadFailure> {
        let repo = self.repo.to_thread_local();
        let tree = commit_tree(&repo, commit)?;
        let missing = || ReadFailure::NotFound(format!("no file `{path}` in {commit}"));
        let names: Vec<&str> = path.split('/').collect();
        if !names.iter().all(|name| representable(name.as_bytes())) || !matcher.accepts(path) {
            return Err(missing());
        }
        if names.len() > MAX_DEPTH + 1 {
            return Err(too_deep(commit));
        }
        // Depth-first over the candidates of each component, in the walk's order, so the
        // first file found is the one the walk lists first. A tree already searched at the
        // same depth found nothing and is not searched again, which bounds the search by the
        // trees in the repository however often a hostile tree repeats a name.
        let mut searched = std::collections::HashSet::new();
        let mut stack = vec![(tree, 0usize)];
        let mut directory = false;
        while let Some((tree, depth)) = stack.pop() {
            if !searched.insert((tree, depth)) {
                continue;
            }
            let last = depth + 1 == names.len();
            let mut candidates = entries(&repo, tree, |name| name.to_str_lossy() == names[depth])?;
            sort(&mut candidates);
            if last {
                if let Some((kind, id)) = candidates
                    .iter()
                    .find_map(|entry| file_kind(entry.kind).map(|kind| (kind, entry.id)))
                {
                    return Ok((kind, id.to_string()));
                }
                directory |= !candidates.is_empty();
                continue;
            }
            stack.extend(
                candidates
                    .iter()
                    .rev()
                    .filter(|entry| entry.kind == EntryKind::Tree)
                    .map(|entry| (entry.id, depth + 1)),
            );
        }
        if directory {
            return Err(ReadFailure::NotFound(format!(
                "`{path}` in {commit} is a directory, not a file"
            )));
        }
        Err(missing())
    }

    /// The size of blob `id` without reading it. An id that is not 40 hex digits, or names no
    /// object here, or an object other than a blob, is not found.
    pub fn blob_size(&self, id: &str) -> Result<u64, ReadFailure> {
        let repo = self.repo.to_thread_local();
        let oid = blob_id(id)?;
        let header = repo
            .find_header(oid)
            .map_err(|_| ReadFailure::NotFound(format!("blob {id} is not in the cache")))?;
        match header.kind() {
            gix::objs::Kind::Blob => Ok(header.size()),
            other => Err(ReadFailure::NotFound(format!(
                "{id} is a {other}, not a blob"
            ))),
        }
    }

    /// Writes blob `id` to `out` if it is at most `limit` bytes; returns its size. For many
    /// blobs, [`Repo::blobs`] opens the pack indices once.
    pub fn read_blob(&self, id: &str, limit: u64, out: &mut dyn Write) -> Result<u64, ReadFailure> {
        self.blobs().read(id, limit, out)
    }

    /// A reader for many blobs of this repository, streaming those that are stored whole in a
    /// pack (see [`BlobReader::read`]).
    pub fn blobs(&self) -> BlobReader<'_> {
        let repo = self.repo.to_thread_local();
        let packed = PackedBlobs::open(repo.objects.store_ref().path(), repo.object_hash());
        BlobReader { repo: self, packed }
    }
}

/// Reads blobs of one [`Repo`]; see [`Repo::blobs`].
#[derive(Debug)]
pub(crate) struct BlobReader<'a> {
    repo: &'a Repo,
    packed: PackedBlobs,
}

impl BlobReader<'_> {
    /// Writes blob `id` to `out` if it is at most `limit` bytes; returns its size. Nothing is
    /// read when the blob is over the limit (its size comes from the object header).
    ///
    /// Memory: a blob stored whole in a pack (the usual case for a file added or rewritten
    /// whole) is inflated and written 64 KiB at a time. A loose blob, or one stored as a delta
    /// against another object, is decoded by gix into one buffer; a delta also needs its base
    /// in memory while it is applied, so such a read holds about twice the blob's size.
    pub fn read(&mut self, id: &str, limit: u64, out: &mut dyn Write) -> Result<u64, ReadFailure> {
        let size = self.repo.blob_size(id)?;
        if size > limit {
            return Err(ReadFailure::TooLarge(format!(
                "blob {id} is {size} bytes, over the limit of {limit}"
            )));
        }
        let oid = blob_id(id)?;
        if self.packed.stream(&oid, size, out)? {
            return Ok(size);
        }
        let repo = self.repo.repo.to_thread_local();
        let blob = repo
            .find_blob(oid)
            .map_err(|err| ReadFailure::Corrupt(format!("blob {id}: {err}")))?;
        out.write_all(&blob.data)
            .map_err(|err| ReadFailure::Io(format!("cannot write blob {id}"), Arc::new(err)))?;
        Ok(size)
    }
}

/// The files of a commit, one at a time; see [`Repo::walk`].
pub(crate) struct TreeWalk<'a> {
    repo: gix::Repository,
    matcher: &'a Matcher,
    commit: String,
    /// The directories being listed, outermost first.
    stack: Vec<Directory>,
}

impl std::fmt::Debug for TreeWalk<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TreeWalk")
            .field("commit", &self.commit)
            .field("depth", &self.stack.len())
            .finish()
    }
}

/// One directory of a [`TreeWalk`]: the entries not listed yet, in the walk's order.
struct Directory {
    prefix: Vec<Vec<u8>>,
    entries: std::vec::IntoIter<Entry>,
}

/// A tree entry, owned.
struct Entry {
    name: Vec<u8>,
    kind: EntryKind,
    id: gix::ObjectId,
}

impl Iterator for TreeWalk<'_> {
    type Item = Result<TreeFile, ReadFailure>;

    fn next(&mut self) -> Option<Self::Item> {
        let item = self.step();
        if let Some(Err(_)) = item {
            self.stack.clear();
        }
        item
    }
}

impl TreeWalk<'_> {
    fn step(&mut self) -> Option<Result<TreeFile, ReadFailure>> {
        loop {
            let current = self.stack.last_mut()?;
            let Some(entry) = current.entries.next() else {
                self.stack.pop();
                continue;
            };
            let mut components = current.prefix.clone();
            components.push(entry.name);
            let Some(kind) = file_kind(entry.kind) else {
                // A hostile tree may hold several subtrees of one name; their files are
                // listed together, as one directory. They are next to each other (see
                // [`sort`]).
                let mut trees = vec![entry.id];
                while let Some(next) = current.entries.as_slice().first()
                    && next.kind == EntryKind::Tree
                    && next.name == components[components.len() - 1]
                {
                    trees.push(next.id);
                    current.entries.next();
                }
                if components.len() > MAX_DEPTH {
                    return Some(Err(too_deep(&self.commit)));
                }
                match directory(&self.repo, components, &trees) {
                    Ok(inner) => self.stack.push(inner),
                    Err(failure) => return Some(Err(failure)),
                }
                continue;
            };
            let path = components
                .iter()
                .map(|c| c.to_str_lossy())
                .collect::<Vec<_>>()
                .join("/");
            if !self.matcher.accepts(&path) {
                continue;
            }
            let size = match kind {
                FileKind::Gitlink => 0,
                _ => match self.repo.find_header(entry.id) {
                    Ok(header) => header.size(),
                    Err(err) => {
                        return Some(Err(ReadFailure::Corrupt(format!(
                            "blob {} at {path}: {err}",
                            entry.id
                        ))));
                    }
                },
            };
            return Some(Ok(TreeFile {
                components,
                path,
                kind,
                id: entry.id.to_string(),
                size,
            }));
        }
    }
}

/// The tree of `commit`.
fn commit_tree(repo: &gix::Repository, commit: &str) -> Result<gix::ObjectId, ReadFailure> {
    let id = parse_id(commit).map_err(|err| ReadFailure::NotFound(err.message))?;
    Ok(repo
        .find_commit(id)
        .map_err(|_| ReadFailure::NotFound(format!("commit {commit} is not in the cache")))?
        .tree_id()
        .map_err(|err| ReadFailure::Corrupt(format!("commit {commit}: {err}")))?
        .detach())
}

/// The directory at `prefix` made of `trees` (one, unless a hostile tree repeats a name).
fn directory(
    repo: &gix::Repository,
    prefix: Vec<Vec<u8>>,
    trees: &[gix::ObjectId],
) -> Result<Directory, ReadFailure> {
    let mut all = Vec::new();
    for tree in trees {
        all.extend(entries(repo, *tree, |_| true)?);
    }
    sort(&mut all);
    Ok(Directory {
        prefix,
        entries: all.into_iter(),
    })
}

/// The entries of tree `id` whose names `keep` accepts, in the order stored.
fn entries(
    repo: &gix::Repository,
    id: gix::ObjectId,
    keep: impl Fn(&[u8]) -> bool,
) -> Result<Vec<Entry>, ReadFailure> {
    let tree = repo
        .find_tree(id)
        .map_err(|err| ReadFailure::Corrupt(format!("tree {id}: {err}")))?;
    let decoded = tree
        .decode()
        .map_err(|err| ReadFailure::Corrupt(format!("tree {id}: {err}")))?;
    Ok(decoded
        .entries
        .iter()
        .filter(|entry| keep(entry.filename))
        .map(|entry| Entry {
            name: entry.filename.to_vec(),
            kind: entry.mode.kind(),
            id: entry.oid.to_owned(),
        })
        .collect())
}

/// Puts a directory's entries in the walk's order: by name, bytewise, so that listing each
/// subtree where its name falls sorts every path by its components. A file comes before a
/// subtree of the same name, whose paths are longer; otherwise entries of one name keep the
/// order they are stored in.
fn sort(entries: &mut [Entry]) {
    entries.sort_by(|a, b| {
        a.name
            .cmp(&b.name)
            .then_with(|| (a.kind == EntryKind::Tree).cmp(&(b.kind == EntryKind::Tree)))
    });
}

/// What a non-directory entry is; `None` for a subtree.
fn file_kind(kind: EntryKind) -> Option<FileKind> {
    match kind {
        EntryKind::Tree => None,
        EntryKind::Blob => Some(FileKind::File { executable: false }),
        EntryKind::BlobExecutable => Some(FileKind::File { executable: true }),
        EntryKind::Link => Some(FileKind::Symlink),
        EntryKind::Commit => Some(FileKind::Gitlink),
    }
}

fn too_deep(commit: &str) -> ReadFailure {
    ReadFailure::TooLarge(format!(
        "commit {commit} nests trees deeper than {MAX_DEPTH} levels"
    ))
}

/// `id` as a blob id: 40 hex digits.
fn blob_id(id: &str) -> Result<gix::ObjectId, ReadFailure> {
    parse_id(id)
        .map_err(|_| ReadFailure::NotFound(format!("`{id}` is not a blob id (40 hex digits)")))
}

impl std::fmt::Display for ReadFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadFailure::NotFound(message)
            | ReadFailure::TooLarge(message)
            | ReadFailure::Corrupt(message) => f.write_str(message),
            ReadFailure::Io(message, err) => write!(f, "{message}: {err}"),
        }
    }
}

impl From<ReadFailure> for FetchError {
    fn from(failure: ReadFailure) -> Self {
        match failure {
            ReadFailure::NotFound(message) | ReadFailure::Corrupt(message) => {
                FetchError::new(Reason::CloneCorrupt, message)
            }
            ReadFailure::TooLarge(message) => FetchError::new(Reason::SnapshotTooLarge, message),
            ReadFailure::Io(..) => FetchError::new(Reason::LocalIo, failure.to_string()),
        }
    }
}

/// True when a tree entry's name can stand as one component of a path the consumer uses:
/// not empty, not `.` or `..`, no `/` or NUL, and not a name any filesystem takes for `.git`
/// ([`names_git`]).
pub(crate) fn representable(name: &[u8]) -> bool {
    !(name.is_empty()
        || name == b"."
        || name == b".."
        || name.contains(&b'/')
        || name.contains(&0)
        || names_git(name))
}

/// Whether some filesystem would take `component` for `.git`: any case, with the code points
/// HFS+ ignores, with the trailing dots and spaces NTFS drops, or NTFS's short name `git~1`.
/// gix's check, which is git's `core.protectHFS` and `core.protectNTFS`; changes, reads and
/// snapshots all use it.
pub(crate) fn names_git(component: &[u8]) -> bool {
    use gix::bstr::ByteSlice;
    use gix::validate::path::component::{Error, Options};
    let options = Options {
        // Windows device names and characters are not `.git`: they are not this check's.
        protect_windows: false,
        protect_hfs: true,
        protect_ntfs: true,
    };
    matches!(
        gix::validate::path::component(component.as_bstr(), None, options),
        Err(Error::DotGitDir)
    )
}

/// What [`diff_trees`] found.
pub(crate) struct TreeDiff {
    pub changes: Vec<Change>,
    pub skipped: Vec<String>,
    /// Submodules (gitlinks) the filter accepts that differ between the trees, as
    /// `` `path` (kind) ``: they are never changes, since their content is not in this
    /// repository.
    pub submodules: Vec<String>,
}

type Listing = BTreeMap<Vec<u8>, (EntryKind, gix::ObjectId)>;

/// The files `matcher` accepts that differ between two trees (every file of `new` when `old`
/// is `None`), sorted by path. Subtrees with the same id on both sides are not read.
///
/// gix's own tree diff mislabels every path after an entry whose name contains `/` (a hostile
/// tree can hold one), so the comparison is done here, a directory at a time, by name.
pub(crate) fn diff_trees(
    repo: &gix::Repository,
    old: Option<gix::ObjectId>,
    new: gix::ObjectId,
    matcher: &Matcher,
) -> Result<TreeDiff, FetchError> {
    let mut out = TreeDiff {
        changes: Vec::new(),
        skipped: Vec::new(),
        submodules: Vec::new(),
    };
    let mut stack: Vec<(Option<gix::ObjectId>, Option<gix::ObjectId>, String, usize)> =
        vec![(old, Some(new), String::new(), 0)];
    while let Some((old, new, prefix, depth)) = stack.pop() {
        if depth > MAX_DEPTH {
            return Err(FetchError::new(
                Reason::UnsupportedRemote,
                format!("trees nest deeper than {MAX_DEPTH} levels under `{prefix}`"),
            ));
        }
        let old_entries = listing(repo, old, &prefix, &mut out.skipped)?;
        let new_entries = listing(repo, new, &prefix, &mut out.skipped)?;
        let names: std::collections::BTreeSet<&Vec<u8>> =
            old_entries.keys().chain(new_entries.keys()).collect();
        for name in names {
            let path = format!("{prefix}{}", name.to_str_lossy());
            let before = old_entries.get(name).copied();
            let after = new_entries.get(name).copied();
            if before == after {
                continue;
            }
            let tree = |entry: Option<(EntryKind, gix::ObjectId)>| {
                entry.and_then(|(kind, id)| (kind == EntryKind::Tree).then_some(id))
            };
            let file = |entry: Option<(EntryKind, gix::ObjectId)>| {
                entry.and_then(|(kind, id)| {
                    (kind != EntryKind::Tree && kind != EntryKind::Commit).then_some(id)
                })
            };
            let gitlink = |entry: Option<(EntryKind, gix::ObjectId)>| {
                entry.and_then(|(kind, id)| (kind == EntryKind::Commit).then_some(id))
            };
            let (old_tree, new_tree) = (tree(before), tree(after));
            if old_tree.is_some() || new_tree.is_some() {
                stack.push((old_tree, new_tree, format!("{path}/"), depth + 1));
            }
            let submodule = match (gitlink(before), gitlink(after)) {
                (None, None) => None,
                (Some(_), None) => Some("deleted"),
                (None, Some(_)) => Some("added"),
                (Some(old), Some(new)) => (old != new).then_some("modified"),
            };
            if let Some(kind) = submodule
                && matcher.accepts(&path)
            {
                out.submodules.push(format!("`{path}` ({kind})"));
            }
            let kind = match (file(before), file(after)) {
                (None, None) => continue,
                (Some(_), None) => ChangeKind::Deleted,
                (None, Some(_)) => ChangeKind::Added,
                (Some(_), Some(_)) => ChangeKind::Modified,
            };
            if matcher.accepts(&path) {
                out.changes.push(Change {
                    path,
                    kind,
                    id: file(after).map(|id| id.to_string()),
                    content: None,
                    encoding: None,
                    omitted: None,
                });
            }
        }
    }
    out.changes.sort_by(|a, b| a.path.cmp(&b.path));
    out.submodules.sort();
    Ok(out)
}

/// The entries of tree `id` (none for `None`) by name, leaving out names that cannot be a path.
fn listing(
    repo: &gix::Repository,
    id: Option<gix::ObjectId>,
    prefix: &str,
    skipped: &mut Vec<String>,
) -> Result<Listing, FetchError> {
    let mut entries = Listing::new();
    let Some(id) = id else {
        return Ok(entries);
    };
    let tree = repo.find_tree(id).map_err(|err| {
        FetchError::new(
            Reason::CloneCorrupt,
            format!("cannot read tree {id}: {err}"),
        )
    })?;
    let decoded = tree.decode().map_err(|err| {
        FetchError::new(
            Reason::CloneCorrupt,
            format!("cannot read tree {id}: {err}"),
        )
    })?;
    for entry in &decoded.entries {
        let name = entry.filename.to_vec();
        if !representable(&name) {
            skipped.push(format!(
                "`{prefix}{}` (not a usable file name)",
                entry.filename.to_str_lossy()
            ));
            continue;
        }
        if entries
            .insert(name, (entry.mode.kind(), entry.oid.to_owned()))
            .is_some()
        {
            skipped.push(format!(
                "`{prefix}{}` (listed twice)",
                entry.filename.to_str_lossy()
            ));
        }
    }
    Ok(entries)
}
