//! Reading a commit's files from the cache, without a worktree.

use std::io::Write;
use std::path::Path;

use crate::cache;
use crate::error::Error;
use crate::git::{FileKind, Matcher, ReadFailure, Repo, TreeFile, representable};
use crate::reason::Reason;
use crate::source::Source;
use crate::work::Plan;

/// Reads the files of commits in a source's cache, straight from the object database,
/// honouring the source's [`Filter`](crate::Filter) and `max_file_size`.
///
/// Open it on the same cache directory as the feed; it only reads, so it can be used while
/// the feed runs. List a commit's files with [`Reader::files`] (or a file at a time with
/// [`Reader::walk`]), read a file by path with [`Reader::read`], which reads only the
/// directories along the path, and read what a [`Change`](crate::Change) or [`File`] names
/// by its blob id with [`Reader::read_blob`], which reads no tree at all.
///
/// ```no_run
/// let source = gitfeed::Source::new("policies", "https://example.org/p.git");
/// let reader = gitfeed::Reader::open("/var/cache/gitfeed", &source)?;
/// let commit = "0123456789abcdef0123456789abcdef01234567";
/// for file in reader.files(commit)? {
///     let bytes = reader.read_blob(&file.id)?;
///     println!("{} ({} bytes)", file.path, bytes.len());
/// }
/// let policy = reader.read(commit, "policies/authz.rego")?;
/// # Ok::<(), gitfeed::Error>(())
/// ```
#[derive(Debug)]
pub struct Reader {
    repo: Repo,
    matcher: Matcher,
    max_file_size: u64,
    /// Keeps [`gc`](crate::gc) from removing the clone while it is read, and a release from
    /// deleting the source's entry (and so its tip ref) meanwhile.
    _user: (Option<std::fs::File>, Option<std::fs::File>),
}

/// A file of a commit, as listed by [`Reader::files`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct File {
    /// The path from the repository root, `/`-separated.
    pub path: String,
    /// The blob id.
    pub id: String,
    /// Size in bytes.
    pub size: u64,
    /// What the entry is.
    pub kind: FileType,
}

/// The kinds of files a tree holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FileType {
    /// A regular file.
    Regular,
    /// A regular file with the executable bit.
    Executable,
    /// A symbolic link; its content is the target.
    Symlink,
}

impl From<ReadFailure> for Error {
    fn from(failure: ReadFailure) -> Self {
        let (reason, message) = match failure {
            ReadFailure::NotFound(message) => (Reason::NotFound, message),
            ReadFailure::TooLarge(message) => (Reason::SnapshotTooLarge, message),
            ReadFailure::Corrupt(message) => (Reason::CloneCorrupt, message),
            // The writer's error is the cause, as `source()` gives it.
            ReadFailure::Io(message, err) => {
                return Error::new(Reason::LocalIo, message).with_cause(err);
            }
        };
        Error::new(reason, message)
    }
}

impl Reader {
    /// Opens `source`'s clone in `cache_dir`; fails with `NotFound` when there is none yet.
    pub fn open(cache_dir: impl AsRef<Path>, source: &Source) -> Result<Self, Error> {
        let source = source.normalized();
        source.validate()?;
        let clone = cache::CloneDir::new(cache_dir.as_ref(), &source.clone_key());
        let entry = cache::Entry::new(cache_dir.as_ref(), &source.cache_key());
        let legacy = entry.legacy_git_dir();
        // Only an entry that is there: a reader never makes one.
        let reading = entry.dir().is_dir().then(|| entry.hold().ok()).flatten();
        // Until the source's first attempt after an upgrade moves it, its clone is where
        // gitfeed kept it before clones were shared.
        let (git_dir, user) = if !clone.git_dir().exists() && legacy.exists() {
            (legacy, None)
        } else {
            let user = clone
                .git_dir()
                .exists()
                .then(|| clone.hold().ok())
                .flatten();
            (clone.git_dir(), user)
        };
        if !git_dir.exists() {
            return Err(Error::new(
                Reason::NotFound,
                format!("source `{}` has no clone in the cache yet", source.name),
            ));
        }
        let max_file_size = source.max_file_size;
        let plan = Plan::new(source);
        let repo = Repo::open_or_init(&git_dir, plan.target())
            .map_err(|err| Error::new(Reason::CloneCorrupt, err.message))?;
        Ok(Self {
            repo,
            matcher: plan.into_matcher().map_err(Error::invalid)?,
            max_file_size,
            _user: (reading, user),
        })
    }

    /// The files of `commit` that the source's filter delivers, sorted by path. Entries whose
    /// names cannot be part of a path (`..`, `.git`, names with `/`: hostile trees) and
    /// submodules (whose content is another repository's) are left out, as they are from
    /// updates and snapshots.
    ///
    /// This reads every directory of the commit before it returns; [`Reader::walk`] lists
    /// the same files one at a time.
    pub fn files(&self, commit: &str) -> Result<Vec<File>, Error> {
        self.walk(commit)?.collect()
    }

    /// The files [`Reader::files`] lists, in the same order, one at a time: each step reads
    /// at most one directory and one object header. After an error the walk ends.
    ///
    /// No call of a `Reader` starts a thread or waits for one, so a task on an async
    /// executor can list and read a commit of any size itself, and let other tasks run
    /// between steps:
    ///
    /// ```no_run
    /// # async fn load(reader: &gitfeed::Reader, commit: &str) -> Result<(), gitfeed::Error> {
    /// for (n, file) in reader.walk(commit)?.enumerate() {
    ///     let file = file?;
    ///     let bytes = reader.read_blob(&file.id)?;
    ///     println!("{} ({} bytes)", file.path, bytes.len());
    ///     if n % 64 == 63 {
    ///         smol::future::yield_now().await;
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// A step costs a few microseconds, far less than reading the file it lists, so the
    /// task decides how long it holds the executor. Running the whole read on a thread pool
    /// instead (`smol::unblock`) would leave the pool's threads behind once the work is done,
    /// which a long-running agent on a small device does not want.
    pub fn walk<'a>(
        &'a self,
        commit: &str,
    ) -> Result<impl Iterator<Item = Result<File, Error>> + use<'a>, Error> {
        Ok(self
            .repo
            .walk(commit, &self.matcher)?
            .filter_map(|file| match file {
                Ok(file) => public(file).map(Ok),
                Err(failure) => Some(Err(failure.into())),
            }))
    }

    /// The bytes of the file at `path` in `commit`.
    ///
    /// Only the directories along `path` are read, never the rest of the commit's tree. A
    /// path the source's filter excludes, one [`Reader::files`] would leave out for its
    /// names, a directory and a submodule are all [`Reason::NotFound`]; a file over
    /// `max_file_size` is [`Reason::SnapshotTooLarge`].
    pub fn read(&self, commit: &str, path: &str) -> Result<Vec<u8>, Error> {
        let mut bytes = Vec::new();
        self.read_to(commit, path, &mut bytes)?;
        Ok(bytes)
    }

    /// Writes the bytes of the file at `path` in `commit` to `out`; returns how many. See
    /// [`Reader::read`].
    pub fn read_to(&self, commit: &str, path: &str, out: &mut dyn Write) -> Result<u64, Error> {
        let (kind, id) = self.repo.lookup(commit, path, &self.matcher)?;
        if kind == FileKind::Gitlink {
            return Err(Error::new(
                Reason::NotFound,
                format!("`{path}` in {commit} is a submodule; submodules are not followed"),
            ));
        }
        Ok(self.repo.read_blob(&id, self.max_file_size, out)?)
    }

    /// The bytes of blob `id`: the `id` of a [`Change`](crate::Change) or a [`File`].
    ///
    /// No tree is read, so this is the cheapest way to read what an update names. A blob id
    /// names content, not a path, so the source's filter does not apply: any blob in the
    /// source's clone can be read this way, including those of other sources of the same
    /// repository. `max_file_size` does apply. An id that is not 40 hex digits, that names
    /// no object in the clone, or that names a tree or commit is
    /// [`Reason::NotFound`].
    ///
    /// ```no_run
    /// # fn apply(reader: &gitfeed::Reader, update: &gitfeed::Update) -> Result<(), gitfeed::Error> {
    /// for change in &update.changes {
    ///     if let Some(id) = &change.id {
    ///         let bytes = reader.read_blob(id)?;
    ///         println!("{} ({} bytes)", change.path, bytes.len());
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn read_blob(&self, id: &str) -> Result<Vec<u8>, Error> {
        let mut bytes = Vec::new();
        self.read_blob_to(id, &mut bytes)?;
        Ok(bytes)
    }

    /// Writes the bytes of blob `id` to `out`; returns how many. See [`Reader::read_blob`].
    pub fn read_blob_to(&self, id: &str, out: &mut dyn Write) -> Result<u64, Error> {
        Ok(self.repo.read_blob(id, self.max_file_size, out)?)
    }
}

/// `file` as a [`File`], unless the consumer never sees it: a submodule, or an entry whose
/// names cannot all be part of a path.
fn public(file: TreeFile) -> Option<File> {
    if !file.components.iter().all(|name| representable(name)) {
        return None;
    }
    let kind = match file.kind {
        FileKind::File { executable: false } => FileType::Regular,
        FileKind::File { executable: true } => FileType::Executable,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Gitlink => return None,
    };
    Some(File {
        path: file.path,
        id: file.id,
        size: file.size,
        kind,
    })
}
