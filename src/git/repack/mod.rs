//! Pack consolidation ("repack") of the bare mirror repository.
//!
//! gix has no garbage collection: every fetch that brings objects leaves one more pack in
//! `objects/pack`, and a long-lived `gix::Repository` eventually runs out of index slots.
//! [`consolidate()`] copies everything reachable from the given tips into a single new pack and
//! then removes what was there before, which also drops objects that became unreachable,
//! for example after a force push.
//!
//! What happens to the files below `objects/`:
//! - `pack-*.{pack,idx,rev,bitmap,mtimes}` are deleted once the new pack is in place,
//!   unless a `pack-*.keep` or `pack-*.promisor` file protects them (see below).
//! - Loose objects (`objects/xx/yyyy…`) are deleted, as are fan-out directories left empty.
//! - `multi-pack-index*`, `info/commit-graph`, `info/commit-graphs/` and `info/packs` are deleted:
//!   they describe the previous pack set or previous commits and would be stale. They are
//!   optional caches that gix does not write.
//! - Temporary files (`.tmp*`, `tmp_*`) and staging directories of this module that have not been
//!   touched for an hour are deleted, as they are leftovers of writers that crashed; younger ones
//!   may belong to a running fetch.
//! - Everything else is left alone.
//!
//! Outside `objects/`, the `shallow` file loses the entries whose commits are gone, as git's
//! pruning does.
//!
//! `.keep` files are honoured the way git does: such a pack is never deleted. A fetch writes one
//! next to its pack before moving the pack into place and removes it once the refs point at the
//! new objects. gix leaves the `.keep` file in place when a fetch received a pack but updated no
//! ref; the caller should remove such files (the fetch outcome names them), or the pack stays
//! around until it does. `.promisor` packs belong to partial clones, whose missing objects this
//! module cannot fetch, so they are kept as well. Objects of protected packs are still copied
//! into the new pack when reachable, so that removing the protection later loses nothing.
//!
//! Concurrency: only files that existed when consolidation started are ever deleted, and the new
//! pack is complete, synced and renamed into place before the first deletion. Still, a fetch that
//! finishes while consolidation runs has moved a ref to objects the tips do not reach, and those
//! would be deleted; the caller must not let consolidation overlap fetches or other writes into
//! the same repository. Readers are unaffected.
//!
//! The tips must include every commit the caller still needs, not only the current tip: in a
//! shallow repository the commit a diff starts from is usually below the new tip's shallow
//! boundary and would be dropped otherwise.
//!
//! The phases of a run, each in a file of its own: [`inventory`] lists what the object
//! directory holds before anything is written (the packs to copy from and to delete later,
//! and stale leftovers of crashed writers), [`roots`] finds the commits and other objects to
//! keep, [`write`](mod@write) streams their entries into a new pack (with [`entries`]
//! deciding where each entry is copied from), [`install`](mod@install) checks that pack and
//! moves it into place, and [`cleanup`] deletes what the inventory listed and prunes the
//! `shallow` file.

mod cleanup;
mod entries;
mod error;
mod install;
mod inventory;
mod roots;
mod write;

use std::{
    fmt, fs, io,
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
};

use gix::ObjectId;

pub(crate) use self::error::{Error, ErrorKind};
use self::{
    cleanup::{prune_shallow, remove_previous},
    install::{Staging, install},
    inventory::{Inventory, pack_file_parts},
    roots::reachable_roots,
    write::write_pack,
};

/// Numbers describing one [`consolidate()`] run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Stats {
    /// Objects in the new pack, which is everything the tips reach.
    pub objects_written: u32,
    /// Packs deleted, counting each `.pack`/`.idx` pair once.
    pub packs_removed: usize,
    /// Packs left in place because a `.keep` or `.promisor` file protects them.
    pub packs_kept: usize,
    /// Loose objects deleted.
    pub loose_objects_removed: usize,
    /// Entries removed from the `shallow` file because their commits are gone.
    pub shallow_entries_removed: usize,
    /// Bytes taken by packs (with their sidecar files) and loose objects before the run.
    pub bytes_before: u64,
    /// Bytes taken by packs (with their sidecar files) and loose objects after the run.
    pub bytes_after: u64,
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "wrote {} objects, removed {} packs and {} loose objects, kept {} protected packs, \
             dropped {} shallow entries, {} -> {} bytes",
            self.objects_written,
            self.packs_removed,
            self.loose_objects_removed,
            self.packs_kept,
            self.shallow_entries_removed,
            self.bytes_before,
            self.bytes_after
        )
    }
}

/// Number of packs in the repository at `git_dir`, counted by their `.idx` files as those are
/// what occupies index slots in an open gix repository. A missing pack directory counts as zero.
pub(crate) fn pack_count(git_dir: &Path) -> io::Result<usize> {
    let entries = match fs::read_dir(git_dir.join("objects").join("pack")) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(err) => return Err(err),
    };
    let mut count = 0;
    for entry in entries {
        let name = entry?.file_name();
        if pack_file_parts(&name.to_string_lossy()).is_some_and(|(_, ext)| ext == "idx") {
            count += 1;
        }
    }
    Ok(count)
}

/// Write every object reachable from `tips` into one new pack with its index, then delete every
/// other pack and loose object that existed when the call started, so that the object database
/// afterwards holds exactly what `tips` reach (plus packs protected by `.keep`/`.promisor`, see
/// the module documentation).
///
/// `tips` are usually commits; annotated tags, trees and blobs are accepted too. The history
/// walk stops at the commits listed in the `shallow` file, whose parents are absent by design.
///
/// Crash safety: the new pack and index are written in a private directory, checked to hold
/// every wanted object, synced and renamed into place before anything is deleted, and indices
/// are deleted before their pack data, so a crash at any point leaves a readable repository that
/// at worst holds some objects twice.
///
/// `should_interrupt` is honoured until the new pack is about to be moved into place; an
/// interrupted run leaves the repository as it was. After that the run completes.
///
/// Other gix `Repository` instances of this repository notice the new pack on their next object
/// lookup miss and free the slots of the deleted ones.
///
/// `threads` count objects and index the new pack (`0`: one per core). Memory: each indexing
/// thread holds one whole object at a time, and the pack stream holds at most about
/// [`write::CHUNK_BYTES`] of copied entries besides the largest single entry.
pub(crate) fn consolidate(
    git_dir: &Path,
    tips: &[ObjectId],
    threads: usize,
    should_interrupt: &AtomicBool,
) -> Result<Stats, Error> {
    if tips.is_empty() {
        // Keeping nothing would delete the whole object database, which is never what is meant.
        return Err(Error::new(ErrorKind::InvalidInput, "no tips to keep"));
    }
    let objects_dir = git_dir.join("objects");
    let pack_dir = objects_dir.join("pack");

    let repo = open(git_dir)?;
    let object_hash = repo.object_hash();
    let shallow_file = repo
        .shallow_file()
        .map_err(|err| Error::gix("could not locate the shallow file", &err, should_interrupt))?;
    let shallow = match repo.shallow_commits() {
        Ok(Some(commits)) => {
            let mut commits: Vec<ObjectId> = commits.iter().copied().collect();
            commits.sort();
            commits
        }
        Ok(None) => Vec::new(),
        Err(err) => {
            return Err(Error::gix(
                "could not read the shallow file",
                &err,
                should_interrupt,
            ));
        }
    };
    let mut odb = repo.objects.clone().into_inner();
    // gix's object counting records pack locations and insists on a handle that keeps every pack
    // it has seen mapped, even if the store refreshes meanwhile.
    odb.prevent_pack_unload();
    // Replacement objects would put foreign content under the original ids.
    odb.ignore_replacements = true;
    // Every object is read about once, so a cache would only cost memory.
    odb.unset_object_cache();

    // Taken before anything is written, so only files that existed up front are ever deleted.
    let before = Inventory::scan(&objects_dir, object_hash)?;
    stop_point()?;

    let roots = reachable_roots(&odb, tips, &shallow, object_hash, should_interrupt)?;
    stop_point()?;
    if should_interrupt.load(Ordering::Relaxed) {
        return Err(Error::interrupted());
    }
    let staging = Staging::create(&pack_dir)?;
    stop_point()?;
    let (written, wanted) = write_pack(
        &odb,
        roots,
        &before.source_packs(),
        &staging.0,
        object_hash,
        Some(threads),
        should_interrupt,
    )?;
    drop(odb);
    drop(repo);
    stop_point()?;
    if should_interrupt.load(Ordering::Relaxed) {
        return Err(Error::interrupted());
    }
    let new_pack = install(&written, &wanted, &pack_dir, object_hash)?;
    drop(staging);
    stop_point()?;

    // Point of no return: the new pack is complete, so the interrupt flag is not consulted any
    // more and deletion failures no longer affect readability.
    let mut stats = Stats {
        objects_written: u32::try_from(wanted.len()).unwrap_or(u32::MAX),
        bytes_before: before.bytes,
        ..Stats::default()
    };
    let mut outcome = remove_previous(&before, &new_pack, &objects_dir, &mut stats);
    stop_point()?;
    if !shallow.is_empty() {
        match prune_shallow(git_dir, &shallow_file, object_hash) {
            Ok(removed) => stats.shallow_entries_removed = removed,
            Err(err) => outcome = outcome.and(Err(err)),
        }
    }
    outcome?;
    stop_point()?;
    stats.bytes_after = Inventory::scan(&objects_dir, object_hash)?.bytes;
    Ok(stats)
}

#[cfg(test)]
thread_local! {
    /// Where the test running on this thread stops a run, see [`stop_point()`].
    static STOP: std::cell::RefCell<Option<(usize, tests::Stop)>> =
        const { std::cell::RefCell::new(None) };
    /// Whether this thread's run stopped as if the process had died.
    static CRASHED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A point between two steps of a run where tests stop it, either as if the process died
/// (nothing after it runs and nothing is cleaned up) or by raising the interrupt flag. A no-op
/// outside tests.
fn stop_point() -> Result<(), Error> {
    #[cfg(test)]
    {
        if CRASHED.get() {
            return Err(Error::new(ErrorKind::Io, "simulated crash"));
        }
        let stop = STOP.with_borrow_mut(|stop| match stop {
            Some((left, _)) if *left > 1 => {
                *left -= 1;
                None
            }
            Some(_) => stop.take().map(|(_, stop)| stop),
            None => None,
        });
        match stop {
            Some(tests::Stop::Crash) => {
                CRASHED.set(true);
                return Err(Error::new(ErrorKind::Io, "simulated crash"));
            }
            Some(tests::Stop::Interrupt(flag)) => flag.store(true, Ordering::Relaxed),
            None => {}
        }
    }
    Ok(())
}

/// Whether this thread's run stopped as if the process had died (never, outside tests).
fn crashed() -> bool {
    #[cfg(test)]
    return CRASHED.get();
    #[cfg(not(test))]
    false
}

/// Open the repository for reading objects only, independent of user and system configuration.
fn open(git_dir: &Path) -> Result<gix::Repository, Error> {
    let never = AtomicBool::new(false);
    // The default slot count depends on trust, and a repository not owned by the current user
    // gets a fixed 32 slots, too few for a repository that needs consolidating. Extra room also
    // covers packs that fetches add while this runs.
    let options = gix::open::Options::isolated().object_store_slots(
        gix::odb::store::init::Slots::AsNeededByDiskState {
            multiplier: 2.0,
            minimum: 64,
        },
    );
    gix::open_opts(git_dir, options)
        .map_err(|err| Error::gix("could not open repository", &err, &never))
}

#[cfg(test)]
mod tests;
