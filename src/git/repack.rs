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

use std::{
    cell::RefCell,
    collections::BTreeMap,
    fmt, fs,
    io::{self, Read},
    path::{Path, PathBuf},
    rc::Rc,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, SystemTime},
};

use gix::ObjectId;
use gix_pack::data::output;

/// Name prefix of the directories new packs are written in, see [`Staging`].
const STAGING_PREFIX: &str = ".tmp-consolidate-";

/// Temporary files younger than this may belong to a writer that is still running.
const STALE_TEMPORARY_AGE: Duration = Duration::from_hours(1);

/// Pack sidecar files that belong to the pack and go away with it.
const DISPOSABLE_PACK_EXTENSIONS: &[&str] = &["idx", "pack", "rev", "bitmap", "mtimes"];

/// Pack sidecar files whose presence means the pack must not be deleted.
const PROTECTING_PACK_EXTENSIONS: &[&str] = &["keep", "promisor"];

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

/// Broad category of an [`Error`], to decide between retrying later and repairing the repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    /// The interrupt flag was seen before the new pack was in place; nothing on disk changed.
    Interrupted,
    /// The arguments were unusable, for instance no tips at all.
    InvalidInput,
    /// Objects reachable from the tips are missing or malformed; retrying will not help.
    Corrupt,
    /// Reading or writing files failed; retrying later may succeed.
    Io,
}

/// Why [`consolidate()`] failed. The repository stays readable whatever the kind.
#[derive(Debug)]
pub(crate) struct Error {
    /// The category, for callers that react differently to each.
    pub kind: ErrorKind,
    /// Lowercase description including the underlying cause.
    pub message: String,
}

impl Error {
    /// An error of `kind` described by `message`.
    fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
        }
    }

    /// The error reported when the interrupt flag stopped the run.
    fn interrupted() -> Self {
        Error::new(ErrorKind::Interrupted, "interrupted")
    }

    /// A file system failure on `path` while doing `what`.
    fn io(what: &str, path: &Path, err: &io::Error) -> Self {
        Error::new(ErrorKind::Io, format!("{what} {}: {err}", path.display()))
    }

    /// A failure reported by gix while doing `what`, categorised by the classification gix
    /// attaches. An interrupt always wins as the error is then merely a consequence of it.
    fn gix(
        what: &str,
        err: &(dyn std::error::Error + 'static),
        should_interrupt: &AtomicBool,
    ) -> Self {
        if should_interrupt.load(Ordering::Relaxed) {
            return Error::interrupted();
        }
        let class = gix::error::classify(err);
        let kind = match class.dominant_class() {
            Some(gix::error::Class::Cancelled) => ErrorKind::Interrupted,
            Some(gix::error::Class::Corruption | gix::error::Class::NotFound) => ErrorKind::Corrupt,
            _ => ErrorKind::Io,
        };
        Error::new(kind, format!("{what}: {}", chain(err)))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// `err` and its sources on one line, as gix nests the useful detail several levels deep.
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut last = out.clone();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        // Wrappers often repeat their inner message verbatim; once is enough.
        if text != last && !last.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        last = text;
        source = cause.source();
    }
    out
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
/// [`CHUNK_BYTES`] of copied entries besides the largest single entry.
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

    let roots = reachable_roots(&odb, tips, &shallow, object_hash, should_interrupt)?;
    if should_interrupt.load(Ordering::Relaxed) {
        return Err(Error::interrupted());
    }
    let staging = Staging::create(&pack_dir)?;
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
    if should_interrupt.load(Ordering::Relaxed) {
        return Err(Error::interrupted());
    }
    let new_pack = install(&written, &wanted, &pack_dir, object_hash)?;
    drop(staging);

    // Point of no return: the new pack is complete, so the interrupt flag is not consulted any
    // more and deletion failures no longer affect readability.
    let mut stats = Stats {
        objects_written: u32::try_from(wanted.len()).unwrap_or(u32::MAX),
        bytes_before: before.bytes,
        ..Stats::default()
    };
    let mut outcome = remove_previous(&before, &new_pack, &objects_dir, &mut stats);
    if !shallow.is_empty() {
        match prune_shallow(git_dir, &shallow_file, object_hash) {
            Ok(removed) => stats.shallow_entries_removed = removed,
            Err(err) => outcome = outcome.and(Err(err)),
        }
    }
    outcome?;
    stats.bytes_after = Inventory::scan(&objects_dir, object_hash)?.bytes;
    Ok(stats)
}

/// Check the pack written into the staging directory, make it durable and move it into
/// `pack_dir`, data before index so that readers never see an index without its pack. Returns
/// its name (`pack-<hex>`).
fn install(
    written: &Path,
    wanted: &[ObjectId],
    pack_dir: &Path,
    object_hash: gix::hash::Kind,
) -> Result<String, Error> {
    let data_path = written;
    let index_path = written.with_extension("idx");
    let index_path = index_path.as_path();
    let Some(new_pack) = pack_name(data_path) else {
        return Err(Error::new(ErrorKind::Corrupt, "the new pack has no name"));
    };
    verify_contents(index_path, wanted, object_hash)?;
    // Synced before the renames, or a power loss could leave the renamed files without their
    // content while the old packs are gone already.
    for path in [data_path, index_path] {
        fs::File::open(path)
            .and_then(|file| file.sync_all())
            .map_err(|err| Error::io("could not sync", path, &err))?;
    }
    for (path, ext) in [(data_path, "pack"), (index_path, "idx")] {
        let target = pack_dir.join(format!("{new_pack}.{ext}"));
        // Same name means same content: an unchanged repository yields the pack it already has.
        if !target.exists() {
            fs::rename(path, &target).map_err(|err| Error::io("could not move", path, &err))?;
        }
    }
    // Renames are durable only once the directory is; not every platform can sync directories.
    #[cfg(unix)]
    fs::File::open(pack_dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|err| Error::io("could not sync", pack_dir, &err))?;
    Ok(new_pack)
}

/// A private directory inside `objects/pack` for writing the new pack, removed when dropped
/// together with whatever failed or interrupted writing left in it. The pack writer moves the
/// files it writes into their final place without syncing them first; writing here instead
/// leaves installing them to [`install()`], and nothing in `objects/pack` changes until then.
struct Staging(PathBuf);

impl Staging {
    /// Create a fresh staging directory in `pack_dir`.
    fn create(pack_dir: &Path) -> Result<Self, Error> {
        fs::create_dir_all(pack_dir)
            .map_err(|err| Error::io("could not create", pack_dir, &err))?;
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.subsec_nanos());
        let path = pack_dir.join(format!("{STAGING_PREFIX}{}-{nanos}", std::process::id()));
        fs::create_dir(&path).map_err(|err| Error::io("could not create", &path, &err))?;
        Ok(Staging(path))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // Leftovers of a failed removal are cleaned up by a later run once they are stale.
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Delete what `before` lists except the pack named `new_pack` and protected packs, counting
/// into `stats`. Carries on after a failure so that one stubborn file does not keep everything
/// else around, and reports the first failure.
fn remove_previous(
    before: &Inventory,
    new_pack: &str,
    objects_dir: &Path,
    stats: &mut Stats,
) -> Result<(), Error> {
    let mut first_error = None;
    let mut note = |result: Result<(), Error>| {
        if let Err(err) = result {
            first_error.get_or_insert(err);
        }
    };
    note(remove_derived_files(objects_dir));
    for (name, pack) in &before.packs {
        if name == new_pack {
            continue;
        }
        if pack.protected {
            stats.packs_kept += 1;
            continue;
        }
        note(remove_pack(pack));
        stats.packs_removed += 1;
    }
    for path in &before.loose_objects {
        note(remove_if_present(path).map_err(|err| Error::io("could not remove", path, &err)));
        stats.loose_objects_removed += 1;
    }
    for dir in &before.fan_out_dirs {
        // Fails harmlessly when a concurrent writer put a new object there meanwhile.
        let _ = fs::remove_dir(dir);
    }
    for path in &before.stale_temporaries {
        note(remove_if_present(path).map_err(|err| Error::io("could not remove", path, &err)));
    }
    for dir in &before.stale_staging_dirs {
        // Removal is retried by the next run if it fails.
        let _ = fs::remove_dir_all(dir);
    }
    first_error.map_or(Ok(()), Err)
}

/// Remove entries of the `shallow` file whose commits no longer exist, as git does when pruning.
/// gix announces every entry to the remote on each fetch, so stale ones would claim history that
/// is gone, and with shallow fetches the file would otherwise grow by an entry per fetch.
/// Entries are removed only after the commits are, so every remaining commit keeps its boundary.
fn prune_shallow(
    git_dir: &Path,
    shallow_file: &Path,
    object_hash: gix::hash::Kind,
) -> Result<usize, Error> {
    let Ok(mut lock) = gix::lock::File::acquire_to_update_resource(
        shallow_file,
        gix::lock::acquire::Fail::Immediately,
        None,
        0,
    ) else {
        // A fetch holds the lock and rewrites the file itself; pruning can wait for the next run.
        return Ok(0);
    };
    // Read under the lock: a fetch may have added entries since the repository was opened.
    let content = match fs::read(shallow_file) {
        Ok(content) => content,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(err) => return Err(Error::io("could not read", shallow_file, &err)),
    };
    let mut entries = Vec::new();
    for line in content
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
    {
        let id = ObjectId::from_hex(line).map_err(|_| {
            Error::new(
                ErrorKind::Corrupt,
                format!("malformed line in {}", shallow_file.display()),
            )
        })?;
        if id.kind() != object_hash {
            return Err(Error::new(
                ErrorKind::Corrupt,
                format!("malformed line in {}", shallow_file.display()),
            ));
        }
        entries.push(id);
    }
    // A fresh store, as the one used for writing still knows the deleted packs.
    let repo = open(git_dir)?;
    let mut kept: Vec<ObjectId> = entries
        .iter()
        .copied()
        .filter(|id| repo.has_object(id))
        .collect();
    let removed = entries.len() - kept.len();
    if removed == 0 {
        return Ok(0);
    }
    if kept.is_empty() {
        // No boundary left means the history is complete; git has no empty shallow files either.
        remove_if_present(shallow_file)
            .map_err(|err| Error::io("could not remove", shallow_file, &err))?;
        return Ok(removed);
    }
    kept.sort();
    let mut text = Vec::with_capacity(kept.len() * (object_hash.len_in_hex() + 1));
    for id in &kept {
        text.extend_from_slice(id.to_hex().to_string().as_bytes());
        text.push(b'\n');
    }
    io::Write::write_all(&mut lock, &text)
        .map_err(|err| Error::io("could not write", shallow_file, &err))?;
    lock.commit()
        .map_err(|err| Error::io("could not replace", shallow_file, &err.error))?;
    Ok(removed)
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

/// The objects that counting has to expand: every commit reachable from `tips` without crossing
/// shallow boundaries, plus annotated tags and any non-commit tips. Parents are not expanded by
/// counting itself as that would require parents of shallow commits to exist.
fn reachable_roots(
    odb: &gix::odb::Handle,
    tips: &[ObjectId],
    shallow: &[ObjectId],
    object_hash: gix::hash::Kind,
    should_interrupt: &AtomicBool,
) -> Result<Vec<ObjectId>, Error> {
    use gix::objs::Kind;

    let mut buf = Vec::new();
    let mut seen = gix::hashtable::HashSet::default();
    let mut pending = Vec::new();
    let mut roots = Vec::new();
    for tip in tips {
        let mut id = *tip;
        loop {
            let data = find(odb, &id, &mut buf, should_interrupt)?;
            match data.kind {
                Kind::Tag => {
                    if seen.insert(id) {
                        roots.push(id);
                    }
                    id = gix::objs::TagRefIter::from_bytes(data.data, object_hash)
                        .target_id()
                        .map_err(|err| {
                            Error::gix(
                                &format!("could not decode tag {id}"),
                                &err,
                                should_interrupt,
                            )
                        })?;
                }
                Kind::Commit => {
                    if seen.insert(id) {
                        pending.push(id);
                    }
                    break;
                }
                Kind::Tree | Kind::Blob => {
                    if seen.insert(id) {
                        roots.push(id);
                    }
                    break;
                }
            }
        }
    }

    while let Some(id) = pending.pop() {
        if roots.len() % 1024 == 0 && should_interrupt.load(Ordering::Relaxed) {
            return Err(Error::interrupted());
        }
        let data = find(odb, &id, &mut buf, should_interrupt)?;
        if data.kind != Kind::Commit {
            return Err(Error::new(
                ErrorKind::Corrupt,
                format!("object {id} is a {} where a commit was expected", data.kind),
            ));
        }
        roots.push(id);
        if shallow.binary_search(&id).is_ok() {
            // Parents of shallow commits are absent by design; git stops here too.
            continue;
        }
        for token in gix::objs::CommitRefIter::from_bytes(data.data, object_hash) {
            match token {
                Ok(gix::objs::commit::ref_iter::Token::Tree { .. }) => {}
                Ok(gix::objs::commit::ref_iter::Token::Parent { id: parent }) => {
                    if seen.insert(parent) {
                        pending.push(parent);
                    }
                }
                Ok(_) => break,
                Err(err) => {
                    return Err(Error::gix(
                        &format!("could not decode commit {id}"),
                        &err,
                        should_interrupt,
                    ));
                }
            }
        }
    }
    Ok(roots)
}

/// Look up `id`, treating absence as corruption since every caller follows a reference to it.
fn find<'a>(
    odb: &gix::odb::Handle,
    id: &ObjectId,
    buf: &'a mut Vec<u8>,
    should_interrupt: &AtomicBool,
) -> Result<gix::objs::Data<'a>, Error> {
    match gix::objs::Find::try_find(odb, id, buf) {
        Ok(Some(data)) => Ok(data),
        Ok(None) => Err(Error::new(
            ErrorKind::Corrupt,
            format!("object {id} is missing"),
        )),
        Err(err) => Err(Error::gix(
            &format!("could not read object {id}"),
            &err,
            should_interrupt,
        )),
    }
}

/// Count everything reachable from `roots`, stream it as pack data into the streaming indexer
/// (which holds no object whole unless a delta needs it) and let that write the pack and its
/// index into `staging_dir`. Returns the pack's path along with the ids of all objects that
/// belong into the pack.
///
/// `source_packs` are the index files of existing packs, oldest first; entries are copied from
/// them as they are, see [`EntrySource`].
fn write_pack(
    odb: &gix::odb::Handle,
    roots: Vec<ObjectId>,
    source_packs: &[PathBuf],
    staging_dir: &Path,
    object_hash: gix::hash::Kind,
    thread_limit: Option<usize>,
    should_interrupt: &AtomicBool,
) -> Result<(PathBuf, Vec<ObjectId>), Error> {
    let (counts, _) = output::count::objects(
        odb.clone(),
        Box::new(roots.into_iter().map(Ok)),
        &gix::progress::Discard,
        should_interrupt,
        output::count::objects::Options {
            thread_limit,
            chunk_size: 50,
            // Each commit's full tree, skipping subtrees already seen; unlike the alternative,
            // which diffs against parent trees, this needs no parents and so works when shallow.
            input_object_expansion: output::count::objects::ObjectExpansion::TreeContents,
        },
    )
    .map_err(|err| Error::gix("could not count objects", &err, should_interrupt))?;
    if should_interrupt.load(Ordering::Relaxed) {
        return Err(Error::interrupted());
    }
    let num_entries = u32::try_from(counts.len())
        .map_err(|_| Error::new(ErrorKind::InvalidInput, "too many objects for one pack"))?;
    let wanted: Vec<ObjectId> = counts.into_iter().map(|count| count.id).collect();
    let source = EntrySource::new(odb, &wanted, source_packs, object_hash, should_interrupt);

    let sink = Rc::new(RefCell::new(Vec::new()));
    let stream = PackStream {
        encoder: output::bytes::FromEntriesIter::new(
            source,
            SharedSink(Rc::clone(&sink)),
            num_entries,
            gix_pack::data::Version::V2,
            object_hash,
        ),
        sink,
        consumed: 0,
        should_interrupt,
    };
    let mut reader = io::BufReader::with_capacity(64 * 1024, stream);
    let result = super::indexer::write(
        &mut reader,
        staging_dir,
        thread_limit.unwrap_or(0),
        object_hash,
        should_interrupt,
        // Consolidation is not a transfer: nobody samples this.
        &crate::progress::Counter::default(),
    );
    let generating_failure = || reader.into_inner().encoder.input.failure.take();
    match result {
        Ok(Some(written)) => Ok((written.data_path, wanted)),
        Ok(None) => Err(Error::new(
            ErrorKind::Corrupt,
            "the new pack has no objects",
        )),
        // The writer only sees a failed read; the generating side knows what actually went wrong.
        Err(super::indexer::Failure::Other(err)) => Err(match generating_failure() {
            Some(cause) => cause,
            None => Error::gix("could not write pack", &err, should_interrupt),
        }),
        // Deltas here name their bases by position in the same pack, never by id alone.
        Err(super::indexer::Failure::Thin(path)) => {
            let _ = fs::remove_file(path);
            Err(Error::new(
                ErrorKind::Corrupt,
                "the new pack refers to objects outside it",
            ))
        }
    }
}

/// Check that the new index lists exactly the `wanted` objects. Entries are copied and
/// linked up across packs here, so this guards against a mistake there costing objects when the
/// old packs are deleted. Indexing hashed every object, so listed ids match their content.
fn verify_contents(
    index_path: &Path,
    wanted: &[ObjectId],
    object_hash: gix::hash::Kind,
) -> Result<(), Error> {
    let index = gix_pack::index::File::at(index_path, object_hash).map_err(|err| {
        Error::gix(
            "could not open the new index",
            &err,
            &AtomicBool::new(false),
        )
    })?;
    if index.num_objects() as usize != wanted.len() {
        return Err(Error::new(
            ErrorKind::Corrupt,
            format!(
                "the new pack holds {} objects instead of {}",
                index.num_objects(),
                wanted.len()
            ),
        ));
    }
    match wanted.iter().find(|id| index.lookup(id).is_none()) {
        Some(id) => Err(Error::new(
            ErrorKind::Corrupt,
            format!("object {id} is missing from the new pack"),
        )),
        None => Ok(()),
    }
}

/// Git's default limit for delta chains. Chains grow when entries of a newer pack are linked to
/// bases in an older one; past this depth an object is stored whole, which bounds reading cost.
const MAX_DELTA_DEPTH: u16 = 50;

/// Entries per chunk handed to the pack encoder, at most.
const ENTRIES_PER_CHUNK: usize = 256;

/// A chunk ends once its entries' compressed data passes this many bytes. The chunk is held in
/// memory twice (as entries, then encoded), so 256 large files in one chunk would cost twice
/// their size; this keeps a chunk of large entries to one entry.
const CHUNK_BYTES: usize = 1 << 20;

/// An existing pack that entries are copied from.
struct SourcePack {
    /// The opened pack and index.
    bundle: gix_pack::Bundle,
    /// Every entry of the pack as offset and id, sorted by offset: entries end where the next
    /// begins, and offset deltas name their base by offset.
    by_offset: Vec<(u64, ObjectId)>,
}

impl SourcePack {
    /// The id of the entry starting at `offset`.
    fn id_at(&self, offset: u64) -> Option<ObjectId> {
        let pos = self
            .by_offset
            .binary_search_by_key(&offset, |(offset, _)| *offset)
            .ok()?;
        Some(self.by_offset[pos].1)
    }

    /// Where the entry starting at `offset` ends.
    fn entry_end(&self, offset: u64) -> u64 {
        let next = self
            .by_offset
            .partition_point(|(start, _)| *start <= offset);
        match self.by_offset.get(next) {
            Some((start, _)) => *start,
            None => self.bundle.pack.pack_end() as u64,
        }
    }
}

/// Produces the entries of the new pack in order, as chunks for the pack encoder.
///
/// gix can copy deltas only when their base comes from the same pack, but every fetch pack
/// carries whole copies of the bases its deltas need, which are duplicates of objects in older
/// packs. Copying those whole copies would make each consolidation store a complete version of
/// every object a fetch touched. Instead each object is taken from the oldest pack holding it and
/// packs are written oldest first; a delta is then copied unchanged and pointed at wherever its
/// base went in the new pack, which is always earlier. Whatever cannot be linked that way (loose
/// objects, bases that are unreachable or come later, chains too deep) is stored whole.
struct EntrySource<'a> {
    /// For looking up whole objects.
    odb: &'a gix::odb::Handle,
    /// The packs entries are copied from, oldest first.
    packs: Vec<SourcePack>,
    /// Objects in output order, with the pack index and offset to copy them from if packed.
    order: Vec<(ObjectId, Option<(usize, u64)>)>,
    /// Position of the next object in `order`.
    next: usize,
    /// Position and delta chain depth of each object already handed out.
    written: gix::hashtable::HashMap<ObjectId, (usize, u16)>,
    /// Scratch space for whole objects.
    buf: Vec<u8>,
    /// The first error, kept as only an opaque error can travel through the pack encoder.
    failure: Option<Error>,
    /// Checked once per chunk.
    should_interrupt: &'a AtomicBool,
}

impl<'a> EntrySource<'a> {
    /// Decide for each of the `wanted` objects where to copy it from, opening `source_packs`
    /// (index paths, oldest first).
    fn new(
        odb: &'a gix::odb::Handle,
        wanted: &[ObjectId],
        source_packs: &[PathBuf],
        object_hash: gix::hash::Kind,
        should_interrupt: &'a AtomicBool,
    ) -> Self {
        let mut origin: gix::hashtable::HashMap<ObjectId, Option<(usize, u64)>> =
            wanted.iter().map(|id| (*id, None)).collect();
        let mut packs = Vec::with_capacity(source_packs.len());
        for index_path in source_packs {
            let Ok(bundle) = gix_pack::Bundle::at(index_path, object_hash) else {
                // Objects of a pack that cannot be opened are read through the object database,
                // which fails loudly if they are really needed and unavailable.
                continue;
            };
            let pack = packs.len();
            let mut by_offset = Vec::with_capacity(bundle.index.num_objects() as usize);
            for entry in bundle.index.iter() {
                if let Some(slot @ None) = origin.get_mut(&entry.oid) {
                    *slot = Some((pack, entry.pack_offset));
                }
                by_offset.push((entry.pack_offset, entry.oid));
            }
            by_offset.sort_unstable();
            packs.push(SourcePack { bundle, by_offset });
        }

        // Unpacked objects first, so that deltas naming them by id can be linked to them; then
        // each pack's objects in their original order, which keeps every base ahead of its deltas.
        let mut order: Vec<(ObjectId, Option<(usize, u64)>)> = wanted
            .iter()
            .filter(|id| matches!(origin.get(*id), Some(None)))
            .map(|id| (*id, None))
            .collect();
        let mut packed: Vec<(usize, u64, ObjectId)> = origin
            .iter()
            .filter_map(|(id, place)| place.map(|(pack, offset)| (pack, offset, *id)))
            .collect();
        packed.sort_unstable();
        order.extend(
            packed
                .into_iter()
                .map(|(pack, offset, id)| (id, Some((pack, offset)))),
        );

        EntrySource {
            odb,
            packs,
            written: gix::hashtable::HashMap::default(),
            order,
            next: 0,
            buf: Vec::new(),
            failure: None,
            should_interrupt,
        }
    }

    /// The entry for `id` and its delta chain depth, copied from `place` if possible.
    fn entry(
        &mut self,
        id: ObjectId,
        place: Option<(usize, u64)>,
    ) -> Result<(output::Entry, u16), Error> {
        if let Some((pack, offset)) = place
            && let Some(copied) = self.copy(id, pack, offset)?
        {
            return Ok(copied);
        }
        let data = find(self.odb, &id, &mut self.buf, self.should_interrupt)?;
        let entry = output::Entry::from_data(
            &output::Count::from_data(id, None),
            &data,
            gix::zlib::Compression::DEFAULT,
        )
        .map_err(|err| {
            Error::gix(
                &format!("could not compress object {id}"),
                &err,
                self.should_interrupt,
            )
        })?;
        Ok((entry, 0))
    }

    /// The entry at `offset` of pack `pack` as it is, or `None` if it is a delta whose base is
    /// not available in the new pack yet.
    fn copy(
        &self,
        id: ObjectId,
        pack: usize,
        offset: u64,
    ) -> Result<Option<(output::Entry, u16)>, Error> {
        use gix_pack::data::entry::Header;

        let source = &self.packs[pack];
        let corrupt = || {
            Error::new(
                ErrorKind::Corrupt,
                format!(
                    "malformed entry for {id} in {}",
                    source.bundle.pack.path().display()
                ),
            )
        };
        let entry = source.bundle.pack.entry(offset).map_err(|_| corrupt())?;
        let (kind, depth) = match entry.header {
            Header::Commit => (output::entry::Kind::Base(gix::objs::Kind::Commit), 0),
            Header::Tree => (output::entry::Kind::Base(gix::objs::Kind::Tree), 0),
            Header::Blob => (output::entry::Kind::Base(gix::objs::Kind::Blob), 0),
            Header::Tag => (output::entry::Kind::Base(gix::objs::Kind::Tag), 0),
            Header::OfsDelta { base_distance } => {
                let base = Header::verified_base_pack_offset(offset, base_distance)
                    .and_then(|base_offset| source.id_at(base_offset))
                    .ok_or_else(corrupt)?;
                match self.link(&base) {
                    Some(linked) => linked,
                    None => return Ok(None),
                }
            }
            Header::RefDelta { base_id } => match self.link(&base_id) {
                Some(linked) => linked,
                None => return Ok(None),
            },
        };
        let data = source
            .bundle
            .pack
            .entry_slice(entry.data_offset..source.entry_end(offset))
            .ok_or_else(corrupt)?;
        let decompressed_size = usize::try_from(entry.decompressed_size).map_err(|_| corrupt())?;
        Ok(Some((
            output::Entry {
                id,
                kind,
                decompressed_size,
                compressed_data: data.to_vec(),
            },
            depth,
        )))
    }

    /// How a delta against `base` is written: relative to the base's position in the new pack,
    /// if the base is there already and the chain does not get too long.
    fn link(&self, base: &ObjectId) -> Option<(output::entry::Kind, u16)> {
        let (position, depth) = *self.written.get(base)?;
        (depth < MAX_DELTA_DEPTH).then_some((
            output::entry::Kind::DeltaRef {
                object_index: position,
            },
            depth + 1,
        ))
    }
}

impl Iterator for EntrySource<'_> {
    type Item = gix::Result<Vec<output::Entry>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next == self.order.len() || self.failure.is_some() {
            return None;
        }
        if self.should_interrupt.load(Ordering::Relaxed) {
            self.failure = Some(Error::interrupted());
            return Some(Err(gix::error::Message::new("interrupted").into()));
        }
        let end = (self.next + ENTRIES_PER_CHUNK).min(self.order.len());
        let mut chunk = Vec::with_capacity(end - self.next);
        let mut bytes = 0;
        while self.next < end && bytes < CHUNK_BYTES {
            let (id, place) = self.order[self.next];
            match self.entry(id, place) {
                Ok((entry, depth)) => {
                    self.written.insert(id, (self.next, depth));
                    bytes += entry.compressed_data.len();
                    chunk.push(entry);
                }
                Err(err) => {
                    let message = err.message.clone();
                    self.failure = Some(err);
                    return Some(Err(gix::error::Message::new(message).into()));
                }
            }
            self.next += 1;
        }
        Some(Ok(chunk))
    }
}

/// The write side of the buffer between the pack encoder and [`PackStream`].
struct SharedSink(Rc<RefCell<Vec<u8>>>);

impl io::Write for SharedSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.borrow_mut().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Presents the pack encoder as a reader, producing one chunk of entries whenever the previous
/// one is used up. The pack writer wants to read a pack stream; going through a temporary file
/// instead would write the whole pack twice.
struct PackStream<'a, I> {
    /// Encodes entry chunks into pack bytes appended to `sink`.
    encoder: output::bytes::FromEntriesIter<I, SharedSink>,
    /// Bytes produced by `encoder`, of which the first `consumed` have been read already.
    sink: Rc<RefCell<Vec<u8>>>,
    /// How much of `sink` was handed out.
    consumed: usize,
    /// Checked before producing each chunk.
    should_interrupt: &'a AtomicBool,
}

impl<I> Read for PackStream<'_, I>
where
    I: Iterator<Item = gix::Result<Vec<output::Entry>>>,
{
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            {
                let sink = self.sink.borrow();
                let available = &sink[self.consumed..];
                if !available.is_empty() {
                    let n = available.len().min(out.len());
                    out[..n].copy_from_slice(&available[..n]);
                    self.consumed += n;
                    return Ok(n);
                }
            }
            {
                let mut sink = self.sink.borrow_mut();
                sink.clear();
                // A chunk with one large entry grew the buffer to that entry's size; do not
                // keep that for the rest of the run.
                if sink.capacity() > 4 * CHUNK_BYTES {
                    sink.shrink_to(CHUNK_BYTES);
                }
            }
            self.consumed = 0;
            if self.should_interrupt.load(Ordering::Relaxed) {
                // Not `ErrorKind::Interrupted`: readers retry on that one.
                return Err(io::Error::other("interrupted"));
            }
            match self.encoder.next() {
                None => return Ok(0),
                Some(Ok(_)) => {}
                Some(Err(err)) => return Err(io::Error::other(err.to_string())),
            }
        }
    }
}

/// The file name of a pack without extension, like `pack-1234…`.
fn pack_name(path: &Path) -> Option<String> {
    path.file_stem()
        .map(|stem| stem.to_string_lossy().into_owned())
}

/// Split `pack-<hex>.<ext>` into its stem and extension; `None` for any other name.
fn pack_file_parts(name: &str) -> Option<(&str, &str)> {
    let (stem, ext) = name.rsplit_once('.')?;
    let hex = stem.strip_prefix("pack-")?;
    (!hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some((stem, ext))
}

/// Delete one pack, index first so that readers stop finding it before its data disappears.
fn remove_pack(pack: &PackFiles) -> Result<(), Error> {
    let mut files: Vec<_> = pack.files.iter().collect();
    files.sort_by_key(|(ext, _)| ext != "idx");
    for (_, path) in files {
        remove_if_present(path).map_err(|err| Error::io("could not remove", path, &err))?;
    }
    Ok(())
}

/// Delete caches describing the previous pack set or commits that may be gone now. Stale, they
/// could make readers look for deleted packs or make `git fsck` complain.
fn remove_derived_files(objects_dir: &Path) -> Result<(), Error> {
    let pack_dir = objects_dir.join("pack");
    let info_dir = objects_dir.join("info");
    let mut files = vec![info_dir.join("commit-graph"), info_dir.join("packs")];
    let mut dirs = vec![info_dir.join("commit-graphs")];
    match fs::read_dir(&pack_dir) {
        Ok(entries) => {
            for entry in entries.flatten() {
                if entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with("multi-pack-index")
                {
                    let path = entry.path();
                    if path.is_dir() {
                        dirs.push(path);
                    } else {
                        files.push(path);
                    }
                }
            }
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(Error::io("could not list", &pack_dir, &err)),
    }
    // The multi-pack index goes before any pack it lists.
    files.sort_by_key(|path| !path.ends_with("multi-pack-index"));
    for path in &files {
        remove_if_present(path).map_err(|err| Error::io("could not remove", path, &err))?;
    }
    for dir in &dirs {
        match fs::remove_dir_all(dir) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(Error::io("could not remove", dir, &err)),
        }
    }
    Ok(())
}

/// Remove `path`, treating an already missing file as success.
fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// The files of one pack.
#[derive(Debug, Default)]
struct PackFiles {
    /// Every `pack-<hex>.<ext>` file by extension, protecting ones excluded.
    files: Vec<(String, PathBuf)>,
    /// Whether a `.keep` or `.promisor` file forbids deleting the pack.
    protected: bool,
    /// When the `.pack` file was last modified, to tell older packs from newer ones.
    modified: Option<SystemTime>,
}

/// What the object directory holds at one moment.
#[derive(Debug, Default)]
struct Inventory {
    /// Packs by name (`pack-<hex>`).
    packs: BTreeMap<String, PackFiles>,
    /// Paths of loose objects.
    loose_objects: Vec<PathBuf>,
    /// Fan-out directories that held loose objects and may be empty afterwards.
    fan_out_dirs: Vec<PathBuf>,
    /// Temporary files old enough to be leftovers of crashed writers.
    stale_temporaries: Vec<PathBuf>,
    /// Staging directories of runs that crashed.
    stale_staging_dirs: Vec<PathBuf>,
    /// Total size of pack files and loose objects.
    bytes: u64,
}

impl Inventory {
    /// List packs, loose objects and stale temporary files below `objects_dir`.
    fn scan(objects_dir: &Path, object_hash: gix::hash::Kind) -> Result<Self, Error> {
        let mut inventory = Inventory::default();
        let now = SystemTime::now();
        let pack_dir = objects_dir.join("pack");
        for (name, path, metadata) in list(&pack_dir)? {
            match pack_file_parts(&name) {
                Some((stem, ext)) => {
                    let pack = inventory.packs.entry(stem.to_owned()).or_default();
                    if PROTECTING_PACK_EXTENSIONS.contains(&ext) {
                        pack.protected = true;
                    } else if DISPOSABLE_PACK_EXTENSIONS.contains(&ext) {
                        inventory.bytes += metadata.len();
                        if ext == "pack" {
                            pack.modified = metadata.modified().ok();
                        }
                        pack.files.push((ext.to_owned(), path));
                    }
                }
                None => inventory.note_if_stale_temporary(&name, path, &metadata, now),
            }
        }
        // Sidecar files alone, like a `.keep` whose pack was never moved into place, are no pack.
        inventory.packs.retain(|_, pack| !pack.files.is_empty());

        let loose_name_len = object_hash.len_in_hex() - 2;
        for (name, path, metadata) in list(objects_dir)? {
            if metadata.is_dir() && name.len() == 2 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
                let mut holds_objects = false;
                for (name, path, metadata) in list(&path)? {
                    if metadata.is_file()
                        && name.len() == loose_name_len
                        && name.bytes().all(|b| b.is_ascii_hexdigit())
                    {
                        inventory.bytes += metadata.len();
                        inventory.loose_objects.push(path);
                        holds_objects = true;
                    } else {
                        inventory.note_if_stale_temporary(&name, path, &metadata, now);
                    }
                }
                if holds_objects {
                    inventory.fan_out_dirs.push(path);
                }
            } else {
                inventory.note_if_stale_temporary(&name, path, &metadata, now);
            }
        }
        Ok(inventory)
    }

    /// Index paths of the packs that have both index and data, oldest first.
    fn source_packs(&self) -> Vec<PathBuf> {
        let mut packs: Vec<(Option<SystemTime>, &str, &Path)> = self
            .packs
            .iter()
            .filter(|(_, pack)| pack.files.iter().any(|(ext, _)| ext == "pack"))
            .filter_map(|(name, pack)| {
                let index = pack.files.iter().find(|(ext, _)| ext == "idx")?;
                Some((pack.modified, name.as_str(), index.1.as_path()))
            })
            .collect();
        packs.sort();
        packs
            .into_iter()
            .map(|(_, _, index)| index.to_owned())
            .collect()
    }

    /// Remember `path` for deletion if it is a temporary file nobody wrote to for a while.
    fn note_if_stale_temporary(
        &mut self,
        name: &str,
        path: PathBuf,
        metadata: &fs::Metadata,
        now: SystemTime,
    ) {
        let temporary = name.starts_with(".tmp") || name.starts_with("tmp_");
        let stale = metadata
            .modified()
            .ok()
            .and_then(|modified| now.duration_since(modified).ok())
            .is_some_and(|age| age >= STALE_TEMPORARY_AGE);
        if stale && metadata.is_file() && temporary {
            self.stale_temporaries.push(path);
        } else if stale && metadata.is_dir() && name.starts_with(STAGING_PREFIX) {
            self.stale_staging_dirs.push(path);
        }
    }
}

/// Entries of `dir` as name, path and metadata (not following symlinks); a missing directory is empty.
fn list(dir: &Path) -> Result<Vec<(String, PathBuf, fs::Metadata)>, Error> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(Error::io("could not list", dir, &err)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|err| Error::io("could not list", dir, &err))?;
        let path = entry.path();
        let metadata = match entry.metadata() {
            Ok(metadata) => metadata,
            // Deleted between listing and looking at it, by a concurrent writer's cleanup.
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(err) => return Err(Error::io("could not inspect", &path, &err)),
        };
        out.push((
            entry.file_name().to_string_lossy().into_owned(),
            path,
            metadata,
        ));
    }
    Ok(out)
}
