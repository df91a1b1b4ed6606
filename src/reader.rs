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
/// the feed runs.
///
/// ```no_run
/// let source = gitfeed::Source::new("policies", "https://example.org/p.git");
/// let reader = gitfeed::Reader::open("/var/cache/gitfeed", &source)?;
/// let commit = "0123456789abcdef0123456789abcdef01234567";
/// for file in reader.files(commit)? {
///     let bytes = reader.read(commit, &file.path)?;
///     println!("{} ({} bytes)", file.path, bytes.len());
/// }
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
    /// No clone, commit or file by that name (or the filter excludes the file).
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
    pub fn files(&self, commit: &str) -> Result<Vec<File>, ReadError> {
        Ok(self
            .listing(commit)?
            .into_iter()
            .filter_map(|file| {
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
            })
            .collect())
    }

    /// Every entry of `commit` the filter accepts and whose path can be used, submodules too.
    fn listing(&self, commit: &str) -> Result<Vec<TreeFile>, ReadError> {
        Ok(self
            .repo
            .files(commit, &self.matcher)?
            .into_iter()
            .filter(|file| file.components.iter().all(|name| representable(name)))
            .collect())
    }

    /// The bytes of the file at `path` in `commit`.
    pub fn read(&self, commit: &str, path: &str) -> Result<Vec<u8>, ReadError> {
        let mut bytes = Vec::new();
        self.read_to(commit, path, &mut bytes)?;
        Ok(bytes)
    }

    /// Writes the bytes of the file at `path` in `commit` to `out`; returns how many.
    pub fn read_to(&self, commit: &str, path: &str, out: &mut dyn Write) -> Result<u64, ReadError> {
        let file = self
            .listing(commit)?
            .into_iter()
            .find(|file| file.path == path)
            .ok_or_else(|| ReadError {
                kind: ReadErrorKind::NotFound,
                message: format!("no file `{path}` in {commit}"),
            })?;
        if file.kind == FileKind::Gitlink {
            return Err(ReadError {
                kind: ReadErrorKind::NotFound,
                message: format!(
                    "`{path}` in {commit} is a submodule; submodules are not followed"
                ),
            });
        }
        Ok(self.repo.read_blob(&file.id, self.max_file_size, out)?)
    }
}
