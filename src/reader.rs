//! Reading a commit's files from the cache, without a worktree.

use std::fmt;
use std::io::Write;
use std::path::Path;

use crate::cache;
use crate::git::{FileKind, Matcher, ReadFailure, Repo, TreeFile, representable};
use crate::source::Source;

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
/// # Ok::<(), gitfeed::ReadError>(())
/// ```
#[derive(Debug)]
pub struct Reader {
    repo: Repo,
    matcher: Matcher,
    max_file_size: u64,
    /// Keeps [`gc`](crate::gc) from removing the clone while it is read.
    _user: Option<std::fs::File>,
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

/// Why a read failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadError {
    kind: ReadErrorKind,
    message: String,
}

/// The kinds of [`ReadError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReadErrorKind {
    /// No clone, commit, file or blob by that name: the filter excludes the file, the path
    /// names a directory or a submodule, or the id is not 40 hex digits or names another
    /// kind of object.
    NotFound,
    /// The file is larger than the source's `max_file_size`.
    TooLarge,
    /// The cache is damaged.
    Corrupt,
    /// Writing the bytes out failed.
    Io,
}

impl ReadError {
    /// What kind of failure this is.
    pub fn kind(&self) -> ReadErrorKind {
        self.kind
    }
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ReadError {}

impl From<ReadFailure> for ReadError {
    fn from(failure: ReadFailure) -> Self {
        let (kind, message) = match failure {
            ReadFailure::NotFound(message) => (ReadErrorKind::NotFound, message),
            ReadFailure::TooLarge(message) => (ReadErrorKind::TooLarge, message),
            ReadFailure::Corrupt(message) => (ReadErrorKind::Corrupt, message),
            ReadFailure::Io(message) => (ReadErrorKind::Io, message),
        };
        Self { kind, message }
    }
}

impl Reader {
    /// Opens `source`'s clone in `cache_dir`; fails with `NotFound` when there is none yet.
    pub fn open(cache_dir: impl AsRef<Path>, source: &Source) -> Result<Self, ReadError> {
        let source = &source.normalized();
        let invalid = |message: String| ReadError {
            kind: ReadErrorKind::NotFound,
            message,
        };
        source.validate().map_err(|err| invalid(err.to_string()))?;
        let clone = cache::CloneDir::new(cache_dir.as_ref(), &source.clone_key());
        let legacy = cache::Entry::new(cache_dir.as_ref(), &source.cache_key()).legacy_git_dir();
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
            return Err(invalid(format!(
                "source `{}` has no clone in the cache yet",
                source.name
            )));
        }
        let repo = Repo::open_or_init(&git_dir, &crate::work::target(source)).map_err(|err| {
            ReadError {
                kind: ReadErrorKind::Corrupt,
                message: err.message,
            }
        })?;
        Ok(Self {
            repo,
            matcher: source.filter.matcher().map_err(invalid)?,
            max_file_size: source.max_file_size,
            _user: user,
        })
    }

    /// The files of `commit` that the source's filter delivers, sorted by path. Entries whose
    /// names cannot be part of a path (`..`, `.git`, names with `/`: hostile trees) and
    /// submodules (whose content is another repository's) are left out, as they are from
    /// updates and snapshots.
    ///
    /// This reads every directory of the commit before it returns; [`Reader::walk`] lists
    /// the same files one at a time.
    pub fn files(&self, commit: &str) -> Result<Vec<File>, ReadError> {
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
    /// # async fn load(reader: &gitfeed::Reader, commit: &str) -> Result<(), gitfeed::ReadError> {
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
    ) -> Result<impl Iterator<Item = Result<File, ReadError>> + use<'a>, ReadError> {
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
    /// names, a directory and a submodule are all [`ReadErrorKind::NotFound`]; a file over
    /// `max_file_size` is [`ReadErrorKind::TooLarge`].
    pub fn read(&self, commit: &str, path: &str) -> Result<Vec<u8>, ReadError> {
        let mut bytes = Vec::new();
        self.read_to(commit, path, &mut bytes)?;
        Ok(bytes)
    }

    /// Writes the bytes of the file at `path` in `commit` to `out`; returns how many. See
    /// [`Reader::read`].
    pub fn read_to(&self, commit: &str, path: &str, out: &mut dyn Write) -> Result<u64, ReadError> {
        let (kind, id) = self.repo.lookup(commit, path, &self.matcher)?;
        if kind == FileKind::Gitlink {
            return Err(ReadError {
                kind: ReadErrorKind::NotFound,
                message: format!(
                    "`{path}` in {commit} is a submodule; submodules are not followed"
                ),
            });
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
    /// [`ReadErrorKind::NotFound`].
    ///
    /// ```no_run
    /// # fn apply(reader: &gitfeed::Reader, update: &gitfeed::Update) -> Result<(), gitfeed::ReadError> {
    /// for change in &update.changes {
    ///     if let Some(id) = &change.id {
    ///         let bytes = reader.read_blob(id)?;
    ///         println!("{} ({} bytes)", change.path, bytes.len());
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn read_blob(&self, id: &str) -> Result<Vec<u8>, ReadError> {
        let mut bytes = Vec::new();
        self.read_blob_to(id, &mut bytes)?;
        Ok(bytes)
    }

    /// Writes the bytes of blob `id` to `out`; returns how many. See [`Reader::read_blob`].
    pub fn read_blob_to(&self, id: &str, out: &mut dyn Write) -> Result<u64, ReadError> {
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
