//! Keeping `.snapshots` to gitfeed's own entries, and removing anything there without following
//! a symlink out of it.
//!
//! Everything here works relative to an open directory: a name is looked at without following
//! it, a directory is entered only through a descriptor opened with `O_NOFOLLOW` on the
//! filesystem the removal started on, and its entries are removed through that descriptor.
//! Whatever is swapped in meanwhile, nothing outside the directory being removed is touched.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

use rustix::fs::{AtFlags, Dev, Dir, FileType, Mode, OFlags};
use rustix::io::Errno;

use super::{Identity, MANIFEST, Manifest, ORDER, SPARE, SnapshotDir, TMP_PREFIX, is_commit};

/// How many directories deep [`remove_at`] goes, with a descriptor open per level: deeper than
/// any snapshot (the git layer refuses trees nested more than 256 levels), and far below the
/// usual limit of 1024 open descriptors.
pub(super) const MAX_DEPTH: usize = 300;
/// How many bytes of a manifest hold its first line, at most (the magic word, an inode, a
/// creation time in nanoseconds, and what the entries were listed with).
const MAX_HEADER: u64 = 256;

impl SnapshotDir {
    /// Removes every entry of `.snapshots` that is not gitfeed's, whatever its type: what an
    /// interrupted write left (`.tmp-*`), a directory under a commit's name that its manifest
    /// does not name (unless `current` points at it, as at a snapshot written before
    /// manifests), and any other name or type than the `snapshot` module's docs list: `order`
    /// and manifests are regular files, snapshots and `.spare` real directories.
    ///
    /// Removing an entry is best effort: one that cannot be removed (on another filesystem,
    /// not ours to change) is logged and left, and a write that needs its name fails there.
    /// Fails only if `.snapshots` cannot be read, or is a symlink: sweeping through it would
    /// remove whatever it leads to.
    pub(super) fn sweep(&self) -> io::Result<()> {
        let snapshots = self.snapshots();
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let dir = match rustix::fs::open(&snapshots, flags, Mode::empty()) {
            Ok(dir) => dir,
            Err(Errno::NOENT) => return Ok(()),
            Err(_) if fs::symlink_metadata(&snapshots).is_ok_and(|m| m.is_symlink()) => {
                return Err(io::Error::other(format!(
                    "{} is a symlink, which gitfeed does not follow; replace it with a directory",
                    snapshots.display()
                )));
            }
            Err(err) => return Err(err.into()),
        };
        let mut names = Vec::new();
        for entry in Dir::read_from(&dir)? {
            let name = entry?.file_name().to_bytes().to_vec();
            if name != b"." && name != b".." {
                names.push(OsString::from_vec(name));
            }
        }

        let pointed = self.current();
        let mut removed = false;
        for name in names {
            let kind = match rustix::fs::statat(&dir, &name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(stat) => FileType::from_raw_mode(stat.st_mode),
                Err(Errno::NOENT) => continue,
                Err(err) => return Err(err.into()),
            };
            if self.owns(&name, kind, pointed.as_deref()) {
                continue;
            }
            let path = snapshots.join(&name);
            if name.as_bytes().starts_with(TMP_PREFIX.as_bytes()) {
                log::debug!("removing {}, left by an interrupted write", path.display());
            } else {
                log::warn!(
                    "{} was not written by gitfeed, or not finished; removing it",
                    path.display()
                );
            }
            match remove_at(dir.as_fd(), &name) {
                Ok(()) => removed = true,
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => log::warn!("could not remove {}: {err}", path.display()),
            }
        }
        if removed {
            rustix::fs::fsync(&dir)?;
        }
        Ok(())
    }

    /// Whether `name` in `.snapshots`, of type `kind`, is one gitfeed keeps. `pointed` is the
    /// commit `current` points at.
    fn owns(&self, name: &OsStr, kind: FileType, pointed: Option<&str>) -> bool {
        let Some(name) = name.to_str() else {
            return false;
        };
        match name {
            ORDER => kind == FileType::RegularFile,
            SPARE => kind == FileType::Directory,
            _ if name.strip_suffix(MANIFEST).is_some_and(is_commit) => {
                kind == FileType::RegularFile
            }
            _ if is_commit(name) => {
                kind == FileType::Directory && (pointed == Some(name) || self.finished(name))
            }
            _ => false,
        }
    }

    /// Whether the manifest of `.snapshots/<commit>` names the directory there now. Only its
    /// first line is read: which directory it names is all that is asked here, and the rest
    /// is checked where the files are used.
    fn finished(&self, commit: &str) -> bool {
        let snapshots = self.snapshots();
        let mut header = Vec::new();
        let read = open_own(&snapshots.join(format!("{commit}{MANIFEST}")))
            .and_then(|file| file.take(MAX_HEADER).read_to_end(&mut header));
        let Some((identity, ..)) = read.ok().and_then(|_| Manifest::header(&header)) else {
            return false;
        };
        fs::symlink_metadata(snapshots.join(commit))
            .is_ok_and(|metadata| metadata.is_dir() && Identity::of(&metadata) == identity)
    }
}

/// Removes `name` in `parent`, whatever it is: a directory with everything in it, even one
/// its owner may not enter or list (its owner is given full access to it first).
///
/// Never follows a symlink (a symlink is removed, not what it leads to) and never enters
/// another filesystem. A mount point inside, an entry that may not be removed, or directories
/// nested deeper than [`MAX_DEPTH`] are an error; what was removed before it stays removed.
pub(super) fn remove_at(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let stat = rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW)?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::Directory {
        return Ok(rustix::fs::unlinkat(parent, name, AtFlags::empty())?);
    }
    let device = rustix::fs::fstat(parent)?.st_dev;
    let name = CString::new(name.as_bytes())?;
    // Each level's open directory and its name in the level above; a directory is removed
    // from above once its listing is exhausted, so no path is ever looked up again.
    let mut stack = vec![(enter(parent, &name, device)?, name)];
    loop {
        let depth = stack.len();
        let Some((dir, _)) = stack.last_mut() else {
            return Ok(());
        };
        let Some(entry) = dir.read() else {
            let (_, name) = stack.pop().expect("the last level was just read");
            let above = match stack.last() {
                Some((dir, _)) => dir.fd()?,
                None => parent,
            };
            ignore_gone(rustix::fs::unlinkat(above, &name, AtFlags::REMOVEDIR))?;
            continue;
        };
        let entry = entry?;
        let child = entry.file_name();
        if child == c"." || child == c".." {
            continue;
        }
        let fd = dir.fd()?;
        // The type the listing gives, where the filesystem gives one, saves a `stat` per
        // entry; an entry swapped for another type since then only makes a step below fail.
        let kind = match entry.file_type() {
            FileType::Unknown => match rustix::fs::statat(fd, child, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(stat) => FileType::from_raw_mode(stat.st_mode),
                Err(Errno::NOENT) => continue,
                Err(err) => return Err(err.into()),
            },
            kind => kind,
        };
        if kind != FileType::Directory {
            ignore_gone(rustix::fs::unlinkat(fd, child, AtFlags::empty()))?;
            continue;
        }
        if depth >= MAX_DEPTH {
            return Err(io::Error::other(format!(
                "directories nested deeper than {MAX_DEPTH} levels"
            )));
        }
        let child = child.to_owned();
        let inner = enter(fd, &child, device)?;
        stack.push((inner, child));
    }
}

/// Opens the directory `name` in `parent` to list and remove its entries: never through a
/// symlink, never onto another filesystem than `device`. A directory its owner may not enter,
/// list or change is given full access for its owner first, when we may change its mode.
fn enter(parent: BorrowedFd<'_>, name: &CStr, device: Dev) -> io::Result<Dir> {
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let path = rustix::fs::openat(parent, name, flags, Mode::empty())?;
    let stat = rustix::fs::fstat(&path)?;
    if stat.st_dev != device {
        return Err(io::Error::other(
            "a mount point; gitfeed removes nothing on another filesystem",
        ));
    }
    let mode = stat.st_mode & 0o7777;
    if mode & 0o700 != 0o700 {
        // Linux has no chmod that refuses a symlink, and none through an `O_PATH`
        // descriptor; the descriptor's entry in /proc is the very directory opened above,
        // whatever its name leads to by now. Where that fails (no /proc, not our directory),
        // opening it below fails too if the mode was in the way.
        let proc = format!("/proc/self/fd/{}", path.as_raw_fd());
        let _ = rustix::fs::chmod(proc, Mode::from_raw_mode(mode | 0o700));
    }
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let dir = rustix::fs::openat(&path, c".", flags, Mode::empty())?;
    Ok(Dir::new(dir)?)
}

/// `result`, where an entry that is already gone counts as removed.
fn ignore_gone(result: rustix::io::Result<()>) -> io::Result<()> {
    match result {
        Err(Errno::NOENT) => Ok(()),
        other => Ok(other?),
    }
}

/// [`remove_at`] for a path: removes whatever is at `path` (never what a symlink there leads
/// to), through the directory it is in.
pub(super) fn remove_path(path: &Path) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no name to remove"))?;
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let parent = rustix::fs::open(parent, flags, Mode::empty())?;
    remove_at(parent.as_fd(), name)
}

/// Opens one of the files gitfeed keeps beside the snapshots (a manifest, `order`) to read
/// it: only a regular file, never through a symlink, and without waiting for a writer of a
/// FIFO put under its name.
pub(super) fn open_own(path: &Path) -> io::Result<File> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let file = File::from(rustix::fs::open(path, flags, Mode::empty())?);
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a regular file",
        ));
    }
    Ok(file)
}

/// The bytes of a file [`open_own`] opens; an error if it holds more than `limit`.
pub(super) fn read_own(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    read_own_file(path, limit).map(|(bytes, _)| bytes)
}

/// [`read_own`], and the file's metadata as it was opened.
pub(super) fn read_own_file(path: &Path, limit: u64) -> io::Result<(Vec<u8>, fs::Metadata)> {
    let file = open_own(path)?;
    let metadata = file.metadata()?;
    let mut bytes = Vec::with_capacity(metadata.len().min(limit) as usize);
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::FileTooLarge,
            format!("over {limit} bytes"),
        ));
    }
    Ok((bytes, metadata))
}
