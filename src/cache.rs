//! The on-disk cache: one clone per repository, shared by every source that reads it, and one
//! small directory per source for its delivery state.
//!
//! ```text
//! <cache_dir>/clones/<clone key>/repo.git    the bare clone (see `Source::clone_key`)
//! <cache_dir>/clones/<clone key>/lock        held by the one attempt writing the clone
//! <cache_dir>/clones/<clone key>/users       held (shared) by every feed source, follower and
//!                                            reader that has the clone open; `gc` skips it then
//! <cache_dir>/clones/<clone key>/used        its modification time: when an attempt last used
//!                                            the clone (refreshed at most hourly)
//! <cache_dir>/clones/<clone key>/prune       there when a source of the clone was released:
//!                                            the next attempt holding the lock drops its tip
//!                                            ref and consolidates
//! <cache_dir>/clones/.removing-*             a clone or source directory being deleted
//! <cache_dir>/<source key>/state.json        {"delivered": "<commit>"}
//! <cache_dir>/<source key>/status.json       the source's last status
//! <cache_dir>/<source key>/source.json       {"name": …, "clone": <clone key>}: whose it is
//! <cache_dir>/<source key>/users             held (shared) by every feed source, follower and
//!                                            reader of exactly these settings
//! ```
//!
//! What the cache holds is what the current sources need. A source that stops being followed
//! (removed from a feed, or replaced by other settings of the same name) is *released*: its
//! directory is deleted unless someone else holds it, its clone is deleted when no other
//! source's directory records it and nobody holds it open, and otherwise its tip ref goes at
//! the clone's next consolidation. A source's directory without `source.json` was written by a
//! gitfeed from before releases: it is never released by name, and its acknowledged commit is
//! kept in every clone.
//!
//! Before clones were shared, each source's directory held its own `repo.git` and `lock`. The
//! delivery state is still where it was; the first attempt after an upgrade moves the old
//! clone into the shared place (or deletes it when the shared clone exists already).

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::git::ObjectId;

/// One source's directory in the cache: its delivery state and status.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    dir: PathBuf,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    delivered: Option<String>,
}

/// What `source.json` says of the source an entry belongs to: enough for another process to
/// tell which clone it reads and which entries an entry's later settings replace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    /// The source's name, its identity across settings.
    name: String,
    /// The key of the clone it reads, under `clones/`.
    clone: String,
}

impl Entry {
    pub fn new(cache_dir: &Path, key: &str) -> Self {
        Self {
            dir: cache_dir.join(key),
        }
    }

    /// The entry whose directory is `dir`.
    pub fn at(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
        }
    }

    /// The entry's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The entry's key: its directory's name.
    fn key(&self) -> String {
        self.dir
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    fn record_path(&self) -> PathBuf {
        self.dir.join("source.json")
    }

    /// What `source.json` says, if it is there and readable.
    fn recorded(&self) -> Option<Record> {
        let text = fs::read(self.record_path()).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Records that the entry belongs to the source named `name`, which reads the clone
    /// `clone`, unless it says so already. Written atomically: a crash leaves the old record, or
    /// none, which counts as an entry of an earlier gitfeed (kept, never released by name).
    pub fn record(&self, name: &str, clone: &CloneDir) -> io::Result<()> {
        let record = Record {
            name: name.to_owned(),
            clone: clone.key(),
        };
        if self.recorded().as_ref() == Some(&record) {
            return Ok(());
        }
        fs::create_dir_all(&self.dir)?;
        let temporary = self.dir.join("source.json.tmp");
        let result = (|| {
            let mut file = fs::File::create(&temporary)?;
            file.write_all(&serde_json::to_vec(&record).map_err(io::Error::other)?)?;
            file.sync_all()?;
            fs::rename(&temporary, self.record_path())
        })();
        if result.is_err() {
            let _ = fs::remove_file(&temporary);
        }
        result
    }

    /// Registers one user of the entry for as long as the returned file is open: a release
    /// never deletes an entry while anyone holds this.
    pub fn hold(&self) -> io::Result<fs::File> {
        hold_shared(&self.dir)
    }

    /// The clone this entry's source reads, as its record says.
    fn recorded_clone(&self, cache_dir: &Path) -> Option<CloneDir> {
        self.recorded()
            .map(|record| CloneDir::new(cache_dir, &record.clone))
    }

    /// Deletes the entry (delivery state, status, record) unless someone holds it; true when it
    /// is gone. Renamed away first, as `gc` does with clones, so a crash midway leaves either
    /// the whole entry or trash under `clones/` that `gc` deletes.
    fn remove_if_unheld(&self, cache_dir: &Path) -> io::Result<bool> {
        if !self.dir.is_dir() {
            return Ok(true);
        }
        let Some(users) = try_exclusive(&self.dir.join("users"))? else {
            return Ok(false);
        };
        discard(
            cache_dir,
            &self.dir,
            &format!("source-{}", self.key()),
            users,
        )?;
        Ok(true)
    }

    /// Where the source's own clone lived before clones were shared.
    pub fn legacy_git_dir(&self) -> PathBuf {
        self.dir.join("repo.git")
    }

    fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    /// The commit last delivered to the consumer, if any. A missing or unreadable state file
    /// means nothing was delivered: the next update lists every file, which is always correct.
    pub fn delivered(&self) -> Option<ObjectId> {
        let text = fs::read_to_string(self.state_path()).ok()?;
        let state: State = serde_json::from_str(&text).ok()?;
        crate::git::commit_id(&state.delivered?)
    }

    /// Records `commit` as delivered, atomically: a crash leaves either the old or the new
    /// state, never a torn file. The file holds it as 40 lowercase hex digits.
    pub fn set_delivered(&self, commit: ObjectId) -> io::Result<()> {
        fs::create_dir_all(&self.dir)?;
        let state = State {
            delivered: Some(commit.to_string()),
        };
        // A consumer's thread and the feed's may both record at once: one at a time, or they
        // would write the same temporary file.
        static WRITING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _writing = WRITING
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let temporary = self.dir.join("state.json.tmp");
        let result = (|| {
            let mut file = fs::File::create(&temporary)?;
            file.write_all(&serde_json::to_vec(&state).map_err(io::Error::other)?)?;
            file.sync_all()?;
            fs::rename(&temporary, self.state_path())?;
            fs::File::open(&self.dir)?.sync_all()
        })();
        if result.is_err() {
            let _ = fs::remove_file(&temporary);
        }
        result
    }

    /// Moves the clone this source kept before clones were shared into `clone`, when `clone`
    /// has none yet, and deletes it otherwise; returns true when it was moved. Only call it
    /// holding `clone`'s lock. The delivery state stays where it is, so nothing acknowledged is
    /// delivered again. A crash midway leaves either the old clone, the moved one, or a
    /// `repo.git.removing` directory that the next call finishes deleting.
    pub fn migrate_legacy_clone(&self, clone: &CloneDir) -> io::Result<bool> {
        let legacy = self.legacy_git_dir();
        let removing = self.dir.join("repo.git.removing");
        let mut moved = false;
        if legacy.is_dir() {
            if clone.git_dir().exists() {
                fs::rename(&legacy, &removing)?;
            } else {
                fs::create_dir_all(clone.dir())?;
                fs::rename(&legacy, clone.git_dir())?;
                moved = true;
            }
            // The old per-source lock guarded only the old clone.
            let _ = fs::remove_file(self.dir.join("lock"));
        }
        match fs::remove_dir_all(&removing) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err),
            _ => {}
        }
        Ok(moved)
    }
}

/// One shared clone in the cache: `<cache_dir>/clones/<clone key>/`.
#[derive(Debug, Clone)]
pub(crate) struct CloneDir {
    dir: PathBuf,
}

/// How often an attempt refreshes a clone's `used` stamp at most: often enough for `gc`'s
/// ages (days), rarely enough not to write to flash on every poll.
const USED_STAMP_INTERVAL: Duration = Duration::from_secs(3600);

impl CloneDir {
    pub fn new(cache_dir: &Path, key: &str) -> Self {
        Self {
            dir: cache_dir.join(CLONES).join(key),
        }
    }

    /// The clone's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The clone's key: its directory's name.
    fn key(&self) -> String {
        self.dir
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// Where the bare clone lives.
    pub fn git_dir(&self) -> PathBuf {
        self.dir.join("repo.git")
    }

    /// Takes the clone's lock for as long as the returned file is open. Only one attempt
    /// writes a clone at a time, whichever source or process it belongs to: a second one gets
    /// `WouldBlock` instead of corrupting the first one's fetch (or having its leftovers
    /// "repaired" away mid-fetch).
    pub fn lock(&self) -> io::Result<fs::File> {
        let file = open_lock_file(&self.dir.join("lock"))?;
        match file.try_lock() {
            Ok(()) => Ok(file),
            Err(fs::TryLockError::WouldBlock) => Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("{} is in use by another process", self.dir.display()),
            )),
            Err(fs::TryLockError::Error(err)) => Err(err),
        }
    }

    /// Registers one user of the clone for as long as the returned file is open: [`gc`] never
    /// removes a clone while anyone holds this.
    pub fn hold(&self) -> io::Result<fs::File> {
        hold_shared(&self.dir)
    }

    /// True when a source of the clone was released and its tip ref and the objects only it
    /// needed have not been dropped yet.
    pub fn prune_wanted(&self) -> bool {
        self.dir.join(PRUNE).exists()
    }

    /// Asks the next attempt that holds the clone's lock to drop the tip refs of released
    /// sources and consolidate.
    pub fn want_prune(&self) -> io::Result<()> {
        if !self.dir.is_dir() {
            return Ok(());
        }
        fs::write(self.dir.join(PRUNE), b"")
    }

    /// Clears [`CloneDir::want_prune`]; only call it holding the lock, before looking for the
    /// refs to drop, so that a release after the look asks again.
    pub fn clear_prune(&self) {
        let _ = fs::remove_file(self.dir.join(PRUNE));
    }

    /// Deletes the clone when no source's entry in `cache_dir` records it and nobody holds it
    /// open or writes it; true when it is gone (or was never there).
    ///
    /// The locks are taken before the entries are read: a source that starts meanwhile has
    /// either recorded itself by then, or waits in [`CloneDir::hold`] until the clone is renamed
    /// away and then makes a new one.
    pub(crate) fn remove_if_unused(&self, cache_dir: &Path) -> io::Result<bool> {
        if !self.dir.is_dir() {
            return Ok(true);
        }
        let Some(users) = try_exclusive(&self.dir.join("users"))? else {
            return Ok(false);
        };
        let Some(lock) = try_exclusive(&self.dir.join("lock"))? else {
            return Ok(false);
        };
        if recorded_by_any(cache_dir, &self.key())? {
            return Ok(false);
        }
        discard(cache_dir, &self.dir, &self.key(), (users, lock))?;
        Ok(true)
    }

    /// True when an entry in `cache_dir` records this clone: a source still reads it.
    pub(crate) fn is_recorded(&self, cache_dir: &Path) -> bool {
        recorded_by_any(cache_dir, &self.key()).unwrap_or(true)
    }

    /// Records that an attempt used the clone now, unless it was recorded within the last
    /// hour. Failures only cost `gc` accuracy, so they are ignored.
    pub fn mark_used(&self) {
        let path = self.dir.join("used");
        let now = SystemTime::now();
        let fresh = fs::metadata(&path)
            .and_then(|metadata| metadata.modified())
            .is_ok_and(|modified| {
                now.duration_since(modified)
                    .is_ok_and(|age| age < USED_STAMP_INTERVAL)
            });
        if !fresh
            && let Ok(file) = fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
        {
            let _ = file.set_modified(now);
        }
    }

    /// Deletes the clone, so the next attempt clones afresh. Only call it holding the lock.
    pub fn delete_clone(&self) -> io::Result<()> {
        match fs::remove_dir_all(self.git_dir()) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
            _ => Ok(()),
        }
    }
}

/// The directory under the cache directory that holds the shared clones.
const CLONES: &str = "clones";

/// The file in a clone's directory that asks for its released sources to be pruned.
const PRUNE: &str = "prune";

/// A shared lock on `dir/users`, taken again when the directory was renamed away meanwhile.
fn hold_shared(dir: &Path) -> io::Result<fs::File> {
    let path = dir.join("users");
    loop {
        let file = open_lock_file(&path)?;
        file.lock_shared()?;
        // A release or `gc` renames the directory away before deleting it: a lock taken on a
        // file that is no longer at `path` protects nothing, so take it again on the new one.
        if same_file(&file, &path) {
            return Ok(file);
        }
    }
}

/// Renames `dir` away to `clones/.removing-<name>` while `locks` are held, then deletes it;
/// returns the bytes it took.
fn discard<T>(cache_dir: &Path, dir: &Path, name: &str, locks: T) -> io::Result<u64> {
    let clones = cache_dir.join(CLONES);
    fs::create_dir_all(&clones)?;
    let trash = clones.join(format!("{TRASH_PREFIX}{name}"));
    // A deletion a crash interrupted may still be there under the same name.
    remove_tree(&trash)?;
    fs::rename(dir, &trash)?;
    // Once renamed away nothing can open the directory by its name: whoever waits for the
    // locks may go on (and finds none), instead of waiting for the deletion.
    drop(locks);
    let bytes = tree_size(&trash);
    remove_tree(&trash)?;
    Ok(bytes)
}

/// True when an entry in `cache_dir` records the clone `clone_key`.
fn recorded_by_any(cache_dir: &Path, clone_key: &str) -> io::Result<bool> {
    Ok(entries_of(cache_dir)?.iter().any(|item| {
        item.file_name() != CLONES
            && Entry::at(&item.path())
                .recorded()
                .is_some_and(|record| record.clone == clone_key)
    }))
}

/// What a running source holds in the cache: its entry and its clone, so that neither a
/// release nor `gc` deletes them while it runs.
#[derive(Debug)]
pub(crate) struct Claim {
    _entry: fs::File,
    _clone: fs::File,
}

/// Holds `entry` and `clone` for the source named `name`, and records in the entry that it is
/// that source's and reads that clone. The entry is held before it is recorded, and recorded
/// before the clone is held: see [`CloneDir::remove_if_unused`].
pub(crate) fn claim(entry: &Entry, clone: &CloneDir, name: &str) -> io::Result<Claim> {
    let held = entry.hold()?;
    entry.record(name, clone)?;
    Ok(Claim {
        _entry: held,
        _clone: clone.hold()?,
    })
}

/// What [`release`] did.
#[derive(Debug)]
pub(crate) enum Released {
    /// Someone else holds the entry: nothing was released.
    Held,
    /// The entry is gone, and the clone with it.
    Removed,
    /// The entry is gone; its clone stays for other sources, marked to be pruned.
    Shared(CloneDir),
    /// The entry is gone; it recorded no clone.
    NoClone,
}

/// Releases `entry`: deletes it unless someone holds it, then deletes its clone when no other
/// entry records it and nobody has it open, and otherwise marks the clone so that the next
/// attempt holding its lock drops the entry's tip ref and the objects only it needed.
pub(crate) fn release(cache_dir: &Path, entry: &Entry) -> io::Result<Released> {
    let clone = entry.recorded_clone(cache_dir);
    if !entry.remove_if_unheld(cache_dir)? {
        return Ok(Released::Held);
    }
    let Some(clone) = clone else {
        return Ok(Released::NoClone);
    };
    if clone.remove_if_unused(cache_dir)? {
        return Ok(Released::Removed);
    }
    // After the entry is gone, so that a prune that looked before asks again.
    clone.want_prune()?;
    Ok(Released::Shared(clone))
}

/// The entries in `cache_dir` that earlier settings of the source named `name`, whose entry is
/// `key`, left: recorded as that name's, under another key. Entry keys start with the name
/// made readable and end in a hash (`Source::cache_key`), so only the directories that look
/// like one of the name's are read.
pub(crate) fn superseded(cache_dir: &Path, key: &str, name: &str) -> Vec<Entry> {
    let Some((stem, _)) = key.rsplit_once('-') else {
        return Vec::new();
    };
    let Ok(listing) = entries_of(cache_dir) else {
        return Vec::new();
    };
    listing
        .into_iter()
        .filter(|item| {
            let file_name = item.file_name();
            let file_name = file_name.to_string_lossy();
            file_name != key
                && file_name
                    .strip_prefix(stem)
                    .and_then(|rest| rest.strip_prefix('-'))
                    .is_some_and(|hash| hash.len() == 16)
        })
        .map(|item| Entry::at(&item.path()))
        .filter(|entry| entry.recorded().is_some_and(|record| record.name == name))
        .collect()
}

/// Opens the lock file at `path`, creating it (and its directory) only when it is missing:
/// taking a lock then writes nothing to the disk, poll after poll.
fn open_lock_file(path: &Path) -> io::Result<fs::File> {
    // Writable, since NFS emulates `flock` with byte-range locks, which need it.
    match fs::OpenOptions::new().write(true).open(path) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                fs::create_dir_all(dir)?;
            }
            fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(path)
        }
        opened => opened,
    }
}

/// True when `file` is the file at `path` now.
fn same_file(file: &fs::File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), fs::metadata(path)) {
        (Ok(open), Ok(there)) => open.dev() == there.dev() && open.ino() == there.ino(),
        _ => false,
    }
}

/// What [`gc`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct GcReport {
    /// The clones removed.
    pub removed: Vec<PathBuf>,
    /// Clones unused for long enough but left alone because a feed, follower, reader or
    /// fetch has them open.
    pub in_use: Vec<PathBuf>,
    /// Bytes the removed clones took.
    pub bytes_freed: u64,
}

/// Removes every clone in `cache_dir` that no attempt has used for `unused_for`, and that no
/// running feed source, [`Follower`](crate::Follower), [`Reader`](crate::Reader) or fetch has
/// open (those are skipped and listed in [`GcReport::in_use`]). Delivery state is never
/// removed: a source whose clone was removed clones again on its next attempt and carries on
/// from the commit it acknowledged (its next update lists every file when that commit is no
/// longer on the remote). Clones left by gitfeed versions before clones were shared, inside a
/// source's own directory, are removed by the same rule.
///
/// A clone is renamed away before it is deleted, so a crash midway never leaves a partial clone
/// where a source would use it; the next `gc` finishes the deletion.
///
/// ```no_run
/// let report = gitfeed::gc("/var/cache/gitfeed", std::time::Duration::from_secs(7 * 86400))?;
/// println!("freed {} bytes", report.bytes_freed);
/// # Ok::<(), gitfeed::Error>(())
/// ```
pub fn gc(cache_dir: impl AsRef<Path>, unused_for: Duration) -> Result<GcReport, Error> {
    let cache_dir = cache_dir.as_ref();
    collect(cache_dir, unused_for).map_err(|err| {
        Error::io(
            format!("cannot collect unused clones in {}", cache_dir.display()),
            err,
        )
    })
}

/// [`gc`], failing with the first error of the filesystem.
fn collect(cache_dir: &Path, unused_for: Duration) -> io::Result<GcReport> {
    let mut report = GcReport::default();
    let now = SystemTime::now();
    let unused = |stamps: &[PathBuf]| {
        let newest = stamps
            .iter()
            .filter_map(|path| fs::symlink_metadata(path).and_then(|m| m.modified()).ok())
            .max();
        newest.is_none_or(|newest| {
            now.duration_since(newest)
                .is_ok_and(|age| age >= unused_for)
        })
    };
    let clones = cache_dir.join(CLONES);
    for item in entries_of(&clones)? {
        let name = item.file_name();
        let dir = item.path();
        if name.to_string_lossy().starts_with(TRASH_PREFIX) {
            // A deletion a crash interrupted.
            remove_tree(&dir)?;
            continue;
        }
        if !item.file_type().is_ok_and(|kind| kind.is_dir()) {
            continue;
        }
        if !unused(&[dir.join("used"), dir.clone()]) {
            continue;
        }
        // Both locks: no source has the clone open, and no attempt is writing it.
        let Some(users) = try_exclusive(&dir.join("users"))? else {
            report.in_use.push(dir);
            continue;
        };
        let Some(lock) = try_exclusive(&dir.join("lock"))? else {
            report.in_use.push(dir);
            continue;
        };
        report.bytes_freed += discard(cache_dir, &dir, &name.to_string_lossy(), (users, lock))?;
        report.removed.push(dir);
    }
    for item in entries_of(cache_dir)? {
        let entry = Entry::at(&item.path());
        let legacy = entry.legacy_git_dir();
        if item.file_name() == CLONES || !legacy.is_dir() {
            continue;
        }
        let stamps = [
            entry.dir.join("status.json"),
            entry.state_path(),
            legacy.clone(),
        ];
        if !unused(&stamps) {
            continue;
        }
        let Some(_lock) = try_exclusive(&entry.dir.join("lock"))? else {
            report.in_use.push(legacy);
            continue;
        };
        let bytes = tree_size(&legacy);
        let removing = entry.dir.join("repo.git.removing");
        match fs::rename(&legacy, &removing) {
            // Moved into the shared place meanwhile.
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            other => other?,
        }
        remove_tree(&removing)?;
        report.bytes_freed += bytes;
        report.removed.push(legacy);
    }
    Ok(report)
}

/// Name prefix of a clone being deleted by [`gc`].
const TRASH_PREFIX: &str = ".removing-";

/// The lock file at `path` locked exclusively, or `None` when someone holds it.
fn try_exclusive(path: &Path) -> io::Result<Option<fs::File>> {
    let file = open_lock_file(path)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(fs::TryLockError::WouldBlock) => Ok(None),
        Err(fs::TryLockError::Error(err)) => Err(err),
    }
}

/// The entries of directory `dir`; none when it does not exist.
fn entries_of(dir: &Path) -> io::Result<Vec<fs::DirEntry>> {
    match fs::read_dir(dir) {
        Ok(listing) => Ok(listing.flatten().collect()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(err) => Err(err),
    }
}

fn remove_tree(path: &Path) -> io::Result<()> {
    match fs::remove_dir_all(path) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
        _ => Ok(()),
    }
}

/// Bytes taken by the files under `path` (0 for what cannot be read).
fn tree_size(path: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![path.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(listing) = fs::read_dir(&dir) else {
            continue;
        };
        for item in listing.flatten() {
            match item.file_type() {
                Ok(kind) if kind.is_dir() => stack.push(item.path()),
                Ok(_) => total += item.metadata().map_or(0, |m| m.len()),
                Err(_) => {}
            }
        }
    }
    total
}

/// Every commit acknowledged by a source in `cache_dir` that reads the clone `clone`: whichever
/// source shares a clone, its acknowledged commit must survive another source's pack
/// consolidation, or its next update could not be diffed against it. Entries that record no
/// clone (written before entries did) count for every clone. A released source's entry is
/// gone, so what only it acknowledged is not kept.
pub(crate) fn acknowledged_commits(cache_dir: &Path, clone: &CloneDir) -> Vec<ObjectId> {
    let clone = clone.key();
    let Ok(listing) = fs::read_dir(cache_dir) else {
        return Vec::new();
    };
    listing
        .flatten()
        .map(|item| Entry::at(&item.path()))
        .filter(|entry| entry.recorded().is_none_or(|record| record.clone == clone))
        .filter_map(|entry| entry.delivered())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivered_round_trip() {
        let dir = std::env::temp_dir().join(format!("gitfeed-cache-{}", std::process::id()));
        let entry = Entry::new(&dir, "k");
        assert_eq!(entry.delivered(), None);
        let id = crate::git::commit_id("0123456789ABCDEF0123456789abcdef01234567").unwrap();
        entry.set_delivered(id).unwrap();
        assert_eq!(entry.delivered(), Some(id));
        assert_eq!(
            fs::read_to_string(entry.state_path()).unwrap(),
            r#"{"delivered":"0123456789abcdef0123456789abcdef01234567"}"#,
            "lowercase on disk"
        );
        assert_eq!(
            acknowledged_commits(&dir, &CloneDir::new(&dir, "c")),
            vec![id],
            "an entry that records no clone counts for every clone"
        );
        // Whatever else the file holds is not a commit: nothing was delivered.
        for text in [
            "{garbage",
            r#"{"delivered":"../../etc/passwd"}"#,
            r#"{"delivered":"0123456789abcdef0123456789abcdef0123456"}"#,
        ] {
            fs::write(entry.state_path(), text).unwrap();
            assert_eq!(entry.delivered(), None, "{text}");
        }
        let clone = CloneDir::new(&dir, "c");
        let held = clone.lock().unwrap();
        assert_eq!(clone.lock().unwrap_err().kind(), io::ErrorKind::WouldBlock);
        drop(held);
        clone.lock().unwrap();
        clone.delete_clone().unwrap();
        fs::remove_dir_all(dir).unwrap();
    }

    /// A clone with a repository in it, as an attempt leaves it.
    fn cloned(cache_dir: &Path, key: &str) -> CloneDir {
        let clone = CloneDir::new(cache_dir, key);
        fs::create_dir_all(clone.git_dir()).unwrap();
        fs::write(clone.git_dir().join("HEAD"), "ref: refs/heads/main\n").unwrap();
        clone
    }

    fn commit(n: u8) -> ObjectId {
        crate::git::commit_id(&format!("{n:040x}")).unwrap()
    }

    #[test]
    fn a_release_takes_the_clone_only_when_no_other_entry_records_it_and_nobody_holds_it() {
        let dir = std::env::temp_dir().join(format!("gitfeed-release-{}", std::process::id()));
        let own = cloned(&dir, "own");
        let shared = cloned(&dir, "shared");
        let a = Entry::new(&dir, "a-0000000000000001");
        let b = Entry::new(&dir, "b-0000000000000002");
        let c = Entry::new(&dir, "c-0000000000000003");
        a.record("a", &own).unwrap();
        for (entry, name, n) in [(&b, "b", 2), (&c, "c", 3)] {
            entry.record(name, &shared).unwrap();
            entry.set_delivered(commit(n)).unwrap();
        }
        assert!(acknowledged_commits(&dir, &own).is_empty());

        // Held elsewhere (another process's follower of the same settings): nothing goes.
        let held = a.hold().unwrap();
        assert!(matches!(release(&dir, &a).unwrap(), Released::Held));
        assert!(a.dir().is_dir() && own.git_dir().is_dir());
        drop(held);
        assert!(matches!(release(&dir, &a).unwrap(), Released::Removed));
        assert!(!a.dir().exists() && !own.dir().exists());

        // c records the clone too: it stays, to be pruned, keeping only what c acknowledged.
        assert!(matches!(release(&dir, &b).unwrap(), Released::Shared(_)));
        assert!(!b.dir().exists());
        assert!(shared.git_dir().is_dir() && shared.prune_wanted());
        assert_eq!(acknowledged_commits(&dir, &shared), vec![commit(3)]);
        shared.clear_prune();

        // No entry records it any more, but a reader or follower has it open, or an attempt
        // writes it.
        let user = shared.hold().unwrap();
        assert!(matches!(release(&dir, &c).unwrap(), Released::Shared(_)));
        assert!(shared.git_dir().is_dir() && shared.prune_wanted());
        drop(user);
        let writing = shared.lock().unwrap();
        assert!(!shared.remove_if_unused(&dir).unwrap());
        drop(writing);
        assert!(shared.remove_if_unused(&dir).unwrap());
        assert!(!shared.dir().exists());

        // Nothing is left behind, not even the trash.
        assert_eq!(entries_of(&dir.join(CLONES)).unwrap().len(), 0);
        assert_eq!(entries_of(&dir).unwrap().len(), 1, "only `clones`");
        // A source that holds an entry again after its release gets a fresh one.
        let again = a.hold().unwrap();
        assert!(same_file(&again, &a.dir().join("users")));
        drop(again);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn superseded_entries_are_the_same_name_under_another_key() {
        let dir = std::env::temp_dir().join(format!("gitfeed-superseded-{}", std::process::id()));
        let clone = CloneDir::new(&dir, "c");
        let key = "p-000000000000000a";
        let record = |key: &str, name: &str| {
            let entry = Entry::new(&dir, key);
            entry.record(name, &clone).unwrap();
            entry
        };
        record(key, "p");
        let earlier = record("p-000000000000000b", "p");
        // Another name made readable the same way, and names that only start alike.
        record("p-000000000000000c", "p!");
        record("pq-000000000000000d", "pq");
        record("p-x-000000000000000e", "p-x");
        // An entry of an earlier gitfeed records nothing: it is never released by name.
        Entry::new(&dir, "p-000000000000000f")
            .set_delivered(commit(1))
            .unwrap();
        let found: Vec<PathBuf> = superseded(&dir, key, "p")
            .iter()
            .map(|entry| entry.dir().to_owned())
            .collect();
        assert_eq!(found, vec![earlier.dir().to_owned()]);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn gc_skips_clones_in_use_and_recent_ones() {
        let dir = std::env::temp_dir().join(format!("gitfeed-gc-{}", std::process::id()));
        let used = CloneDir::new(&dir, "used");
        let idle = CloneDir::new(&dir, "idle");
        for clone in [&used, &idle] {
            fs::create_dir_all(clone.git_dir()).unwrap();
            fs::write(clone.git_dir().join("HEAD"), "ref: refs/heads/main\n").unwrap();
        }
        let user = used.hold().unwrap();
        let entry = Entry::new(&dir, "source");
        entry
            .set_delivered(
                crate::git::commit_id("0123456789abcdef0123456789abcdef01234567").unwrap(),
            )
            .unwrap();
        // Used just now: nothing is old enough.
        let report = gc(&dir, Duration::from_secs(3600)).unwrap();
        assert!(report.removed.is_empty(), "{report:?}");
        let report = gc(&dir, Duration::ZERO).unwrap();
        assert_eq!(report.removed, vec![idle.dir().to_owned()]);
        assert_eq!(report.in_use, vec![used.dir().to_owned()]);
        assert!(report.bytes_freed > 0);
        assert!(!idle.dir().exists());
        assert!(used.git_dir().exists());
        assert!(
            entry.delivered().is_some(),
            "delivery state is never removed"
        );
        drop(user);
        let report = gc(&dir, Duration::ZERO).unwrap();
        assert_eq!(report.removed, vec![used.dir().to_owned()]);
        // A clone that a user opened while gc deleted it is opened afresh.
        let again = used.hold().unwrap();
        assert!(same_file(&again, &used.dir().join("users")));
        fs::remove_dir_all(dir).unwrap();
    }
}
