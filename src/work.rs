//! The blocking part of an attempt, run on the attempt's own thread: open (or reuse) the
//! clone, fetch, diff against the commit the consumer last saw, attach contents, write the
//! snapshot, and keep the cache healthy.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::auth::Auth;
use crate::cache;
use crate::cache::Released;
use crate::event::{Change, ChangeKind, Encoding};
use crate::git::{
    Call, Cancel, FetchError, FileKind, FileSide, Matcher, ObjectId, Repo, Target, Tip,
};
use crate::machine::ErrorKind;
use crate::progress::Counter;
use crate::reason::Reason;
use crate::snapshot::{self, SnapshotDir};
use crate::source::{Source, TIP_REFS};
#[cfg(feature = "verify")]
use crate::verify::{AllowedSigners, Verdict};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

/// How one attempt ended.
pub(crate) struct Attempt {
    /// The repository handle to keep for the next attempt, if it is still good.
    pub handle: Option<Repo>,
    /// What the attempt found.
    pub result: Result<Fetched, FetchError>,
    /// Things left out that the consumer should hear about.
    pub warnings: Vec<String>,
}

/// What a successful attempt found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fetched {
    /// The commit the source now has: the remote's tip, or the commit it stays on (a mirror
    /// behind, a refused signature); `None` when it has none yet.
    pub tip: Option<ObjectId>,
    /// The URL that served it.
    pub served_by: String,
    /// The update, if the ref moved past what the consumer saw.
    pub synced: Option<Synced>,
}

/// A fetch that found the ref moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Synced {
    /// The URL that served the update.
    pub url: String,
    pub reference: String,
    pub new: ObjectId,
    pub old: Option<ObjectId>,
    pub forced: bool,
    pub changes: Vec<Change>,
}

impl Synced {
    /// True when there is nothing to report: the filter left no change, or the trees are the
    /// same (a commit and its revert). Such an update is never sent, a first one neither; the
    /// status still shows the commit reached.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }
}

/// The commits the consumer has seen: `sent` is the last one handed over (the next update
/// starts there), `acknowledged` the last one it confirmed (kept on disk for restarts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Seen {
    pub sent: Option<ObjectId>,
    pub acknowledged: Option<ObjectId>,
}

/// What the attempts of one source need from its settings: the git layer's [`Target`] for
/// each of its URLs and its compiled filter. Built once when the source starts being
/// followed, and again only when its settings change ([`Plan::rebuilt`]); attempts borrow it
/// (on their own thread, through an `Arc`), so none builds or copies a target or compiles the
/// filter's patterns.
#[derive(Debug)]
pub(crate) struct Plan {
    /// The settings it was built from.
    source: Source,
    /// One per URL, never empty: the source's own first, then its mirrors in order.
    targets: Vec<Target>,
    /// The compiled filter, or why it does not compile: validation refuses such a source
    /// before it is followed, and an attempt of one fails as misconfigured.
    matcher: Result<Matcher, String>,
    /// Set once an attempt released what earlier settings of the source left in the cache
    /// (see [`release_superseded`]): once per source followed, not per attempt.
    superseded_released: AtomicBool,
}

impl Plan {
    /// The plan of `source`.
    pub fn new(source: Source) -> Self {
        let targets = std::iter::once(&source.url)
            .chain(&source.mirrors)
            .map(|url| target(&source, url))
            .collect();
        let matcher = source.filter.matcher();
        Self {
            source,
            targets,
            matcher,
            superseded_released: AtomicBool::new(false),
        }
    }

    /// The plan of `source`, which holds new settings of this plan's source. What was learned
    /// about a remote (`Target::many_refs`) carries over to each URL still in it.
    pub fn rebuilt(&self, source: Source) -> Self {
        let plan = Self::new(source);
        for target in &plan.targets {
            let learned = self
                .targets
                .iter()
                .any(|old| old.url == target.url && old.many_refs.load(Ordering::Relaxed));
            if learned {
                target.many_refs.store(true, Ordering::Relaxed);
            }
        }
        // New settings of one cache entry (`Source::cache_key`) leave nothing to release.
        let released = self.superseded_released.load(Ordering::SeqCst);
        plan.superseded_released.store(released, Ordering::SeqCst);
        plan
    }

    /// The settings the plan was built from.
    pub fn source(&self) -> &Source {
        &self.source
    }

    /// The target of the source's own URL, which also opens the clone (how a clone is opened
    /// does not depend on the URL).
    pub fn target(&self) -> &Target {
        &self.targets[0]
    }

    /// The compiled filter.
    pub fn matcher(&self) -> Result<&Matcher, FetchError> {
        self.matcher
            .as_ref()
            .map_err(|problem| FetchError::new(Reason::Configuration, problem.clone()))
    }

    /// The compiled filter, for a caller that needs nothing else of the plan any more.
    pub fn into_matcher(self) -> Result<Matcher, String> {
        self.matcher
    }
}

/// What the git layer needs to know about `source` to fetch from `url`, one of its URLs.
fn target(source: &Source, url: &str) -> Target {
    Target {
        url: url.to_owned(),
        reference: source.wanted_ref(),
        tip_ref: source.tip_ref(),
        depth: source.depth,
        ssh_command: source.ssh_command.clone(),
        timeout: source.timeout,
        ca_file: source.ca_file.clone(),
        insecure: source.insecure_skip_tls_verify,
        ssh_key: source.ssh_key.clone(),
        known_hosts: source.known_hosts.clone(),
        max_pack_size: source.max_pack_size,
        index_threads: source.index_threads,
        many_refs: AtomicBool::new(false),
    }
}

/// Runs one attempt of `plan`'s source, counting what it receives in `progress`. `holding` is
/// set once the attempt holds the clone's lock: until then, what is being received into the
/// clone belongs to another source's attempt.
pub(crate) fn sync(
    handle: Option<Repo>,
    paths: &Paths,
    plan: &Plan,
    seen: &Seen,
    cancel: &Cancel,
    holding: &AtomicBool,
    progress: &Arc<Counter>,
) -> Attempt {
    let source = plan.source();
    let mut warnings = Vec::new();
    if !plan.superseded_released.swap(true, Ordering::SeqCst) {
        release_superseded(paths, plan, cancel);
    }
    // Every attempt counts as a use, also a poll that never takes the lock: `gc` must not take
    // a clone that is polled for unused.
    paths.clone.mark_used();
    // Uncontended, an attempt takes the clone at once. When another attempt holds it (a
    // source sharing the clone, or another process), a no-change poll need not wait: it writes
    // nothing, so it asks the remote without the lock, and only waits when the ref moved.
    let mut held = paths
        .turn
        .try_lock()
        .ok()
        .and_then(|turn| Some((turn, paths.clone.lock().ok()?)));
    // A clone with a released source to prune is pruned under the lock, by whichever attempt
    // comes next, whether or not anything moved.
    if held.is_none()
        && !paths.clone.prune_wanted()
        && let Some(tip) = unchanged(handle.as_ref(), paths, plan, seen, cancel, progress)
    {
        return Attempt {
            handle,
            result: Ok(Fetched {
                tip: Some(tip),
                served_by: source.url.clone(),
                synced: None,
            }),
            warnings,
        };
    }
    if held.is_none() {
        // Sources of this process that share the clone take turns without giving up; the
        // file lock keeps other processes out.
        let Some(turn) = take_turn(&paths.turn, cancel) else {
            return Attempt {
                handle,
                result: Err(FetchError::new(
                    Reason::Cancelled,
                    "cancelled while waiting for the clone",
                )),
                warnings,
            };
        };
        match lock_clone(&paths.clone, source.timeout.min(LOCK_PATIENCE), cancel) {
            Ok(lock) => held = Some((turn, lock)),
            Err(err) => {
                return Attempt {
                    handle,
                    result: Err(FetchError::io("cannot lock the clone", &err)),
                    warnings,
                };
            }
        }
    }
    let _held = held;
    holding.store(true, Ordering::SeqCst);
    let (handle, result) = sync_locked(handle, paths, plan, seen, cancel, progress, &mut warnings);
    match result {
        Err(err) if err.kind == ErrorKind::Corrupt => {
            // Deleted here, under the lock, rather than when the source tears down: the clone
            // may be shared, and another source's attempt may be writing it by then.
            drop(handle);
            match paths.clone.delete_clone() {
                Ok(()) => log::info!("{}: deleted the broken clone; cloning afresh", source.name),
                Err(delete) => {
                    log::warn!("{}: cannot delete the broken clone: {delete}", source.name);
                }
            }
            Attempt {
                handle: None,
                result: Err(err),
                warnings,
            }
        }
        Err(err) => Attempt {
            handle,
            result: Err(err),
            warnings,
        },
        Ok(fetched) => Attempt {
            handle: handle.and_then(|repo| maintain(repo, paths, plan, seen, fetched.tip, cancel)),
            result: Ok(fetched),
            warnings,
        },
    }
}

/// The tip, when the remote shows that nothing moved since the consumer got it: a no-change
/// poll writes nothing, so it runs without the clone's lock. Anything else (a pin, a source
/// that verifies signatures or writes snapshots and re-checks them every poll, no clone yet,
/// a moved ref, any error) is left to the locked attempt.
fn unchanged(
    handle: Option<&Repo>,
    paths: &Paths,
    plan: &Plan,
    seen: &Seen,
    cancel: &Cancel,
    progress: &Arc<Counter>,
) -> Option<ObjectId> {
    let source = plan.source();
    if source.pinned_commit().is_some() || source.verify.is_some() || source.checkout.is_some() {
        return None;
    }
    let opened;
    let repo = match handle.filter(|repo| !repo.needs_reopen()) {
        Some(repo) => repo,
        None => {
            // Opening an existing clone only reads it (a source without a kept handle: feeds
            // keep at most `MAX_KEPT_HANDLES`). The handle is not kept: it was not checked.
            // Never created here, without the lock: an attempt holding it may be replacing
            // the clone this very moment.
            opened = Repo::open(&paths.clone.git_dir(), plan.target()).ok()?;
            &opened
        }
    };
    let call = call(source, seen, progress).ok()?;
    let tip = repo.peek(plan.target(), call, cancel)?;
    (seen.sent == Some(tip.commit)).then_some(tip.commit)
}

/// Waits for this process's turn at the clone until the attempt is cancelled.
fn take_turn<'a>(
    turn: &'a std::sync::Mutex<()>,
    cancel: &Cancel,
) -> Option<std::sync::MutexGuard<'a, ()>> {
    loop {
        match turn.try_lock() {
            Ok(guard) => return Some(guard),
            // A poisoned turn guards nothing: the clone's state is on disk, under its lock.
            Err(std::sync::TryLockError::Poisoned(poisoned)) => return Some(poisoned.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) if !cancel.is_cancelled() => {
                // A worker thread of its own: waiting here blocks nothing else.
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(std::sync::TryLockError::WouldBlock) => return None,
        }
    }
}

/// Where one source's attempt reads and writes.
#[derive(Debug, Clone)]
pub(crate) struct Paths {
    /// The source's own directory: its delivery state.
    pub entry: cache::Entry,
    /// The clone it shares with the other sources of its repository.
    pub clone: cache::CloneDir,
    /// The cache directory, for the acknowledged commits of every source.
    pub cache_dir: std::path::PathBuf,
    /// This process's turn at the clone (see `driver::Shared::clone_turns`).
    pub turn: std::sync::Arc<std::sync::Mutex<()>>,
}

impl Paths {
    pub fn new(cache_dir: &std::path::Path, source: &Source) -> Self {
        Self {
            entry: cache::Entry::new(cache_dir, &source.cache_key()),
            clone: cache::CloneDir::new(cache_dir, &source.clone_key()),
            cache_dir: cache_dir.to_owned(),
            turn: Default::default(),
        }
    }
}

/// The attempt with the clone's lock held: open (or reuse) the clone, fetch and diff.
fn sync_locked(
    handle: Option<Repo>,
    paths: &Paths,
    plan: &Plan,
    seen: &Seen,
    cancel: &Cancel,
    progress: &Arc<Counter>,
    warnings: &mut Vec<String>,
) -> (Option<Repo>, Result<Fetched, FetchError>) {
    let repo = match handle {
        Some(repo) if !repo.needs_reopen() => repo,
        stale => {
            drop(stale);
            match open_clone(paths, plan.target(), seen) {
                Ok(repo) => repo,
                Err(err) => return (None, Err(err)),
            }
        }
    };
    let result = fetch_and_diff(&repo, plan, seen, cancel, progress, warnings);
    let mut repo = repo;
    repo.settle();
    (Some(repo), result)
}

/// Opens the clone afresh: moves a clone of the old per-source layout into place, removes what
/// an interrupted write left, and checks what this source relies on.
fn open_clone(paths: &Paths, target: &Target, seen: &Seen) -> Result<Repo, FetchError> {
    let migrated = paths
        .entry
        .migrate_legacy_clone(&paths.clone)
        .map_err(|err| FetchError::io("cannot move the clone into its shared place", &err))?;
    if migrated {
        log::info!(
            "moved the clone in {} to {}",
            paths.entry.dir().display(),
            paths.clone.dir().display()
        );
    }
    let git_dir = &paths.clone.git_dir();
    Repo::repair(git_dir);
    let repo = Repo::open_or_init(git_dir, target)?;
    if migrated {
        repo.adopt_legacy_tip(&target.tip_ref)?;
    }
    repo.validate(&target.tip_ref, seen.acknowledged)?;
    Ok(repo)
}

/// Consolidates the clone's packs when they have piled up or a released source is to be
/// pruned, keeping what every source of the clone still needs; returns the handle to keep, if
/// any.
fn maintain(
    repo: Repo,
    paths: &Paths,
    plan: &Plan,
    seen: &Seen,
    tip: Option<ObjectId>,
    cancel: &Cancel,
) -> Option<Repo> {
    // An update this source sent but the consumer did not acknowledge yet is its tip.
    let keep: Vec<ObjectId> = [tip, seen.sent, seen.acknowledged]
        .into_iter()
        .flatten()
        .collect();
    match prune(
        repo,
        &paths.cache_dir,
        &paths.clone,
        &keep,
        plan.target(),
        cancel,
    ) {
        Ok(repo) => Some(repo),
        // The update is good; the next attempt reopens the clone.
        Err(err) => {
            log::warn!(
                "{}: cannot reopen the clone after consolidation: {}",
                plan.source().name,
                err.message
            );
            None
        }
    }
}

/// With the clone's lock held: when a release asked for it ([`cache::CloneDir::want_prune`]),
/// deletes the tip refs whose source's entry is gone and consolidates, which drops the objects
/// only those refs and those sources' acknowledged commits reached; otherwise consolidates
/// only when the packs have piled up. Other sources' tips are refs in the clone; their
/// acknowledged commits are read from their entries; `keep` adds what the caller's source
/// needs beyond its ref.
fn prune(
    repo: Repo,
    cache_dir: &std::path::Path,
    clone: &cache::CloneDir,
    keep: &[ObjectId],
    target: &Target,
    cancel: &Cancel,
) -> Result<Repo, FetchError> {
    let wanted = clone.prune_wanted();
    if !wanted && !repo.wants_maintenance() {
        return Ok(repo);
    }
    if wanted {
        // Cleared before looking: a release after the look asks again.
        clone.clear_prune();
        for name in repo.refs_under(TIP_REFS) {
            let key = &name[TIP_REFS.len()..];
            // Every running source holds its entry from before its first fetch, so a ref
            // without one is a released source's.
            if cache::Entry::new(cache_dir, key).dir().is_dir() {
                continue;
            }
            match repo.delete_ref(&name) {
                Ok(()) => log::debug!("{}: dropped {name}", clone.dir().display()),
                Err(err) => log::warn!("{}: {}", clone.dir().display(), err.message),
            }
        }
    }
    let keep: Vec<ObjectId> = keep
        .iter()
        .copied()
        .chain(cache::acknowledged_commits(cache_dir, clone))
        .collect();
    let (repo, done) = repo.maintain(target, &keep, wanted, cancel)?;
    if wanted
        && !done
        && let Err(err) = clone.want_prune()
    {
        log::warn!("{}: cannot mark for pruning: {err}", clone.dir().display());
    }
    Ok(repo)
}

/// Releases what the source of `paths` held in the cache once it is no longer followed (see
/// [`cache::release`]). A clone that stays for other sources is pruned at once when nobody is
/// writing it, so that a clone whose other sources never fetch again (pinned ones) does not
/// keep the released tip until they do; otherwise the attempt that holds it, or the next,
/// prunes it.
pub(crate) fn release(paths: &Paths, plan: &Plan, cancel: &Cancel) {
    // A source of this process that shares the clone and has its turn is writing it, or is
    // about to: that attempt prunes it.
    let turn = paths.turn.try_lock().ok();
    let leave = turn.is_none().then_some(&paths.clone);
    release_entry(
        &paths.cache_dir,
        &paths.entry,
        plan,
        cancel,
        leave,
        RELEASE_PATIENCE,
    );
}

/// How long the release of a removed source retries a lock it finds taken. Besides a real
/// user (another process following the source), a lock is held for a moment by any child
/// process forked meanwhile by another thread, until it runs its program (the descriptor is
/// closed on exec): git and ssh helpers of other attempts, `exec` commands. Given up on at
/// once, such a release would leave an entry or a clone for ever.
const RELEASE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);

/// The same for the earlier settings a source's first attempt releases: short, since that
/// attempt waits for it, and another process may really be running those settings.
const SUPERSEDED_PATIENCE: std::time::Duration = std::time::Duration::from_millis(100);

/// Releases the entries that earlier settings of this source (another pin, depth or URL under
/// the same name) left in the cache, unless someone still holds them: a `--once` run that was
/// pinned elsewhere leaves no clone of its earlier pins behind. This source's own clone, when
/// one of them shared it, is pruned by the attempt about to run.
fn release_superseded(paths: &Paths, plan: &Plan, cancel: &Cancel) {
    let source = plan.source();
    for entry in cache::superseded(&paths.cache_dir, &source.cache_key(), &source.name) {
        if cancel.is_cancelled() {
            return;
        }
        release_entry(
            &paths.cache_dir,
            &entry,
            plan,
            cancel,
            Some(&paths.clone),
            SUPERSEDED_PATIENCE,
        );
    }
}

/// Releases `entry`, and prunes the clone it leaves to others when its lock is free, unless it
/// is `leave`, which an attempt of this process prunes.
fn release_entry(
    cache_dir: &std::path::Path,
    entry: &cache::Entry,
    plan: &Plan,
    cancel: &Cancel,
    leave: Option<&cache::CloneDir>,
    patience: std::time::Duration,
) {
    let name = &plan.source().name;
    let dir = entry.dir().display();
    let deadline = std::time::Instant::now() + patience;
    let waited = || {
        let more = std::time::Instant::now() < deadline && !cancel.is_cancelled();
        if more {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        more
    };
    let released = loop {
        match cache::release(cache_dir, entry) {
            Ok(Released::Held) if waited() => continue,
            released => break released,
        }
    };
    let clone = match released {
        Err(err) => {
            log::warn!("{name}: cannot release {dir}: {err}");
            return;
        }
        Ok(Released::Held) => {
            log::debug!("{name}: {dir} is still in use elsewhere; kept");
            return;
        }
        Ok(Released::NoClone) => {
            log::info!("{name}: released {dir}");
            return;
        }
        Ok(Released::Removed) => {
            log::info!("{name}: released {dir} and the clone no other source reads");
            return;
        }
        Ok(Released::Shared(clone)) => clone,
    };
    // Read by no source any more, the clone was only held for a moment: it goes after all.
    while !clone.is_recorded(cache_dir) && waited() {
        if clone.remove_if_unused(cache_dir).unwrap_or(false) {
            log::info!("{name}: released {dir} and the clone no other source reads");
            return;
        }
    }
    log::info!(
        "{name}: released {dir}; its clone {} stays for other sources",
        clone.dir().display()
    );
    if leave.is_some_and(|leave| leave.dir() == clone.dir()) {
        return;
    }
    // Busy: the attempt holding the lock prunes it, or the next one.
    let Ok(_lock) = clone.lock() else {
        return;
    };
    if !clone.git_dir().is_dir() {
        // Nothing was cloned: no ref to drop.
        clone.clear_prune();
        return;
    }
    let result = Repo::open(&clone.git_dir(), plan.target())
        .and_then(|repo| prune(repo, cache_dir, &clone, &[], plan.target(), cancel));
    if let Err(err) = result {
        log::warn!(
            "{name}: cannot prune {}: {}",
            clone.dir().display(),
            err.message
        );
    }
}

/// How long an attempt waits for its clone's lock at most.
const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

/// Takes the clone's lock, waiting up to `patience`: a lock is held briefly by anything that
/// forks between opening the file and running a program (the descriptor is closed on exec),
/// and for a whole attempt by another source's attempt or another gitfeed process.
fn lock_clone(
    clone: &cache::CloneDir,
    patience: std::time::Duration,
    cancel: &Cancel,
) -> std::io::Result<std::fs::File> {
    let deadline = std::time::Instant::now() + patience;
    loop {
        match clone.lock() {
            Err(err)
                if err.kind() == std::io::ErrorKind::WouldBlock
                    && std::time::Instant::now() < deadline
                    && !cancel.is_cancelled() =>
            {
                // A worker thread of its own: waiting here blocks nothing else.
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// Returns the tip and, when it moved past what the consumer saw, the update.
fn fetch_and_diff(
    repo: &Repo,
    plan: &Plan,
    seen: &Seen,
    cancel: &Cancel,
    progress: &Arc<Counter>,
    warnings: &mut Vec<String>,
) -> Result<Fetched, FetchError> {
    let source = plan.source();
    let matcher = plan.matcher()?;
    let (tip, served_by) = fetch_any(repo, plan, seen, cancel, progress)?;
    let sent = seen.sent;
    let stay = |served_by| Fetched {
        tip: sent,
        served_by,
        synced: None,
    };
    if let Some(sent) = sent
        && served_by != source.url
        && sent != tip.commit
        && repo.is_ancestor(tip.commit, sent)
    {
        // A mirror behind what the consumer already has: nothing new, and never backwards.
        log::warn!(
            "{}: mirror {} is behind; keeping {sent}",
            source.name,
            crate::git::redact_url(&served_by)
        );
        return Ok(stay(served_by));
    }
    if let Some(verify) = &source.verify
        && let Some(refusal) = refuse_unsigned(repo, verify, sent, tip.commit)?
    {
        // The source stays on its last good commit.
        warnings.push(refusal);
        return Ok(stay(served_by));
    }
    // The snapshot comes first: once the consumer hears of a commit, `current` shows it. It
    // is gone through again when the commit is sent again (after a restart, say), so the
    // warnings about what it left out go with every sending.
    if let Some(dir) = &source.checkout {
        let sending = sent != Some(tip.commit);
        write_snapshot(repo, source, matcher, dir, tip.commit, sending, warnings)?;
    }
    if sent == Some(tip.commit) {
        return Ok(Fetched {
            tip: Some(tip.commit),
            served_by,
            synced: None,
        });
    }
    // Without the old commit's objects (a reclone after the remote rewrote history) there is
    // nothing to diff against: deliver the full listing, as on a first update.
    let old = sent.filter(|&old| repo.has_commit(old));
    let found = repo.changes(old, tip.commit, matcher)?;
    if !found.skipped.is_empty() {
        warnings.push(format!(
            "{} left out of the changes: {}",
            tip.commit,
            found.skipped.join(", ")
        ));
    }
    if !found.submodules.is_empty() {
        // One warning per update, naming every submodule that moved: its content is another
        // repository's, so it is in neither the changes, the contents nor the snapshot.
        warnings.push(format!(
            "{} left out {} (submodules are not followed): {}",
            tip.commit,
            count(found.submodules.len(), "submodule", "submodules"),
            found.submodules.join(", ")
        ));
    }
    let (mut changes, forced) = (found.changes, found.forced);
    if let Some(limit) = source.contents {
        attach_contents(repo, &mut changes, limit.min(source.max_file_size));
    }
    let synced = Synced {
        url: served_by.clone(),
        reference: tip.reference,
        new: tip.commit,
        old,
        forced,
        changes,
    };
    Ok(Fetched {
        tip: Some(tip.commit),
        served_by,
        synced: Some(synced),
    })
}

/// Fetches from the source's URL, then, after a transient failure, from each mirror in turn,
/// all within the one attempt. Returns the tip and the URL that served it.
fn fetch_any(
    repo: &Repo,
    plan: &Plan,
    seen: &Seen,
    cancel: &Cancel,
    progress: &Arc<Counter>,
) -> Result<(Tip, String), FetchError> {
    let source = plan.source();
    if let Some(pin) = source.pinned_commit().and_then(crate::git::commit_id)
        && repo.has_commit(pin)
    {
        // A pinned commit never changes: once it is here (perhaps fetched by another source
        // of the clone), there is nothing to fetch; its own ref keeps it here.
        repo.pin(plan.target(), pin)?;
        let tip = Tip {
            reference: pin.to_string(),
            commit: pin,
        };
        return Ok((tip, source.url.clone()));
    }
    let call = call(source, seen, progress)?;
    let mut index = 0;
    loop {
        let target = &plan.targets[index];
        let url = &target.url;
        let fetched = repo.fetch(target, &call, cancel).map_err(|mut err| {
            // The failure is told with the URL it happened on.
            if index > 0 {
                err.url = Some(url.clone());
            }
            err
        });
        match fetched {
            // A refused secret read from a file may be rotated: keep trying. This is the one
            // failure whose class the source decides rather than the reason.
            Err(mut err)
                if err.reason == Reason::AuthenticationRefused
                    && source.auth.as_ref().is_some_and(Auth::rotates) =>
            {
                err.kind = ErrorKind::Transient;
                return Err(err);
            }
            Ok(tip) => return Ok((tip, url.clone())),
            Err(err)
                if err.kind == ErrorKind::Transient
                    && index + 1 < plan.targets.len()
                    && !cancel.is_cancelled() =>
            {
                log::warn!(
                    "{}: {} failed ({}); trying the next mirror",
                    source.name,
                    crate::git::redact_url(url),
                    err.message
                );
                index += 1;
            }
            Err(err) => return Err(err),
        }
    }
}

/// What this attempt's calls to the remote carry beside the target: whether the consumer has
/// seen a commit, the credentials read now, and where to count what arrives.
fn call(source: &Source, seen: &Seen, progress: &Arc<Counter>) -> Result<Call, FetchError> {
    Ok(Call {
        seen_before: seen.sent.is_some(),
        http_auth: http_auth(source)?,
        peek: false,
        progress: Arc::clone(progress),
    })
}

/// The `Authorization` header for this attempt, read now: a rotated token file takes effect
/// at the next attempt.
fn http_auth(source: &Source) -> Result<Option<crate::auth::Secret>, FetchError> {
    let Some(auth) = &source.auth else {
        return Ok(None);
    };
    auth.header().map(Some).map_err(|problem| {
        let mut err = FetchError::new(Reason::Credentials, format!("credentials: {problem}"));
        // A file may be written again (rotated): as for a refused secret, keep trying.
        if auth.rotates() {
            err.kind = ErrorKind::Transient;
        }
        err
    })
}

/// The most new commits checked when every commit is verified.
#[cfg(feature = "verify")]
const MAX_COMMITS_TO_VERIFY: usize = 10_000;

/// Checks the signature of the tip (or every new commit); returns why delivery is refused.
#[cfg(feature = "verify")]
fn refuse_unsigned(
    repo: &Repo,
    verify: &crate::source::Verify,
    sent: Option<ObjectId>,
    tip: ObjectId,
) -> Result<Option<String>, FetchError> {
    // Read on every attempt, so an edited file takes effect without a restart.
    let signers = AllowedSigners::load(&verify.allowed_signers)
        .map_err(|problem| FetchError::new(Reason::Verification, problem))?;
    let commits = if verify.all_commits && sent.is_some() {
        repo.commits_since(sent, tip, MAX_COMMITS_TO_VERIFY)?
    } else {
        vec![tip]
    };
    let now = crate::status::now_ms() / 1000;
    for id in commits {
        match crate::verify::verify_commit(&repo.raw_commit(id)?, &signers, now) {
            Verdict::Trusted { principal, .. } => log::debug!("{id} is signed by {principal}"),
            Verdict::Untrusted(reason) => {
                return Ok(Some(format!("commit {id} was not delivered: {reason}")));
            }
        }
    }
    Ok(None)
}

/// Without the `verify` feature no signature can be checked, so nothing is delivered.
/// [`Source::validate`] refuses such a source first; this holds if it was ever bypassed.
#[cfg(not(feature = "verify"))]
fn refuse_unsigned(
    _repo: &Repo,
    _verify: &crate::source::Verify,
    _sent: Option<ObjectId>,
    _tip: ObjectId,
) -> Result<Option<String>, FetchError> {
    Err(FetchError::new(
        Reason::Verification,
        crate::source::VERIFY_MISSING,
    ))
}

/// Attaches each added or modified file's content, or why it was left out.
fn attach_contents(repo: &Repo, changes: &mut [Change], limit: u64) {
    let mut blobs = repo.blobs();
    for change in changes.iter_mut().filter(|c| c.kind != ChangeKind::Deleted) {
        let Some(id) = change.id.as_deref() else {
            continue;
        };
        let mut bytes = Vec::new();
        match blobs.read(id, limit, &mut bytes) {
            Ok(_) => {
                let (content, encoding) = match String::from_utf8(bytes) {
                    Ok(text) => (text, Encoding::Utf8),
                    Err(err) => (BASE64.encode(err.as_bytes()), Encoding::Base64),
                };
                change.content = Some(content);
                change.encoding = Some(encoding);
            }
            Err(failure) => change.omitted = Some(failure.to_string()),
        }
    }
}

/// Writes the filtered tree of `commit` into the checkout directory and makes it current,
/// unless it already is: from the changes since the snapshot `current` holds where they
/// suffice, else from the whole tree.
fn write_snapshot(
    repo: &Repo,
    source: &Source,
    matcher: &Matcher,
    dir: &std::path::Path,
    id: ObjectId,
    sending: bool,
    warnings: &mut Vec<String>,
) -> Result<(), FetchError> {
    let snapshots = SnapshotDir::new(dir, source.keep_snapshots).listed_with(listing(source));
    // Snapshot directories are named by the commit's hex id.
    let commit = id.to_string();
    if !sending && snapshots.current().as_deref() == Some(commit.as_str()) {
        return Ok(());
    }
    let limit = source.max_file_size;
    // Streams each file into the snapshot: a large file is never held whole in memory.
    let mut blobs = repo.blobs();
    let mut read = |id: &str, out: &mut dyn std::io::Write| {
        blobs
            .read(id, limit, out)
            .map(|_| ())
            .map_err(|failure| std::io::Error::other(failure.to_string()))
    };
    let failed = |err| {
        FetchError::new(
            Reason::LocalIo,
            format!("cannot write the snapshot of {commit}: {err}"),
        )
    };
    let updated = match update_plan(repo, source, matcher, &snapshots, id)? {
        Some((base, changes)) => {
            let from = base.commit.clone();
            let report = snapshots
                .update(&commit, base, &changes, &mut read)
                .map_err(failed)?;
            if report.is_some() {
                log::debug!(
                    "{}: snapshot of {commit} written from {} changes since {from}",
                    source.name,
                    changes.len()
                );
            }
            report
        }
        None => None,
    };
    let report = match updated {
        Some(report) => report,
        None => {
            let entries = snapshot_entries(repo, source, matcher, id)?;
            let report = snapshots
                .write(&commit, &entries, &mut read)
                .map_err(failed)?;
            log::debug!(
                "{}: snapshot of {commit} written from its whole tree",
                source.name
            );
            report
        }
    };
    if !report.skipped.is_empty() {
        let listed: Vec<String> = report
            .skipped
            .iter()
            .map(|skipped| format!("`{}` ({})", skipped.path, skipped.reason))
            .collect();
        warnings.push(format!(
            "the snapshot of {commit} left out {} entries: {}",
            listed.len(),
            listed.join(", ")
        ));
    }
    Ok(())
}

/// The snapshot `current` holds and what changed since, if the snapshot of `id` can be written
/// from them (see [`SnapshotDir::update`]): `current` was written with the same filter and
/// file size limit, its commit is in the clone, and no change has a crowded name. The size
/// limits are checked on the way, as [`snapshot_entries`] checks them.
fn update_plan(
    repo: &Repo,
    source: &Source,
    matcher: &Matcher,
    snapshots: &SnapshotDir,
    id: ObjectId,
) -> Result<Option<(snapshot::Base, Vec<snapshot::Change>)>, FetchError> {
    let Some(base) = snapshots.base() else {
        return Ok(None);
    };
    let Some(old) = crate::git::commit_id(&base.commit).filter(|&old| repo.has_commit(old)) else {
        return Ok(None);
    };
    let found = repo.file_changes(old, id, matcher, &snapshot::fold)?;
    if found.iter().any(|change| change.crowded) {
        return Ok(None);
    }
    let mut changes = Vec::with_capacity(found.len());
    let mut large = None;
    for change in found {
        // Submodules are never written; the update's warning names them.
        let side = |side: Option<FileSide>| side.filter(|side| side.kind != FileKind::Gitlink);
        let (old, new) = (side(change.old), side(change.new));
        if let Some(new) = &new
            && new.size > source.max_file_size
        {
            large.get_or_insert((change.path.clone(), new.size));
        }
        if old.is_none() && new.is_none() {
            continue;
        }
        changes.push(snapshot::Change {
            components: change.components,
            old: old.map(|old| (entry_kind(old.kind), old.size)),
            new: new.map(|new| (entry_kind(new.kind), new.id, new.size)),
            crowded: change.crowded,
        });
    }
    // The same checks in the same order as the whole tree's: the files that did not change
    // were within the file limit already, which was the same.
    check_total(source, id, base.bytes_after(&changes))?;
    if let Some((path, size)) = large {
        return Err(too_large_file(source, id, &path, size));
    }
    Ok(Some((base, changes)))
}

/// Every entry of the snapshot of `id`, checked against the size limits.
fn snapshot_entries(
    repo: &Repo,
    source: &Source,
    matcher: &Matcher,
    id: ObjectId,
) -> Result<Vec<snapshot::Entry>, FetchError> {
    let files = repo.files(id, matcher)?;
    check_total(source, id, files.iter().map(|file| file.size).sum())?;
    let mut entries = Vec::with_capacity(files.len());
    // Submodules are never written; the update's warning names them.
    for file in files
        .into_iter()
        .filter(|file| file.kind != FileKind::Gitlink)
    {
        if file.size > source.max_file_size {
            return Err(too_large_file(source, id, &file.path, file.size));
        }
        entries.push(snapshot::Entry {
            components: file.components,
            kind: entry_kind(file.kind),
            id: file.id,
            size: file.size,
        });
    }
    Ok(entries)
}

/// Fails when a snapshot of `id` holding `total` bytes is over `max_snapshot_size`.
fn check_total(source: &Source, id: ObjectId, total: u64) -> Result<(), FetchError> {
    if total > source.max_snapshot_size {
        return Err(FetchError::new(
            Reason::SnapshotTooLarge,
            format!(
                "the snapshot of {id} holds {total} bytes, over max_snapshot_size ({})",
                source.max_snapshot_size
            ),
        ));
    }
    Ok(())
}

/// The failure for a file of `id` at `path` of `size` bytes, over `max_file_size`.
fn too_large_file(source: &Source, id: ObjectId, path: &str, size: u64) -> FetchError {
    FetchError::new(
        Reason::SnapshotTooLarge,
        format!(
            "`{path}` in {id} is {size} bytes, over max_file_size ({})",
            source.max_file_size
        ),
    )
}

/// The snapshot's kind for a kind of tree entry.
fn entry_kind(kind: FileKind) -> snapshot::EntryKind {
    match kind {
        FileKind::File { executable } => snapshot::EntryKind::File { executable },
        FileKind::Symlink => snapshot::EntryKind::Symlink,
        FileKind::Gitlink => snapshot::EntryKind::Gitlink,
    }
}

/// A fingerprint of what decides which entries a snapshot of `source` holds, and which fail
/// it: the filter and the file size limit. A snapshot written with other settings is never
/// updated from changes alone. FNV-1a over each setting's length and bytes, so that it stays
/// the same from one run to the next.
fn listing(source: &Source) -> u64 {
    let filter = &source.filter;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut add = |bytes: &[u8]| {
        for &byte in (bytes.len() as u64).to_le_bytes().iter().chain(bytes) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for list in [
        &filter.directories,
        &filter.include,
        &filter.exclude,
        &filter.extensions,
    ] {
        add(&list.len().to_le_bytes());
        for item in list {
            add(item.as_bytes());
        }
    }
    add(&source.max_file_size.to_le_bytes());
    hash
}

/// `n` and the noun for it: "1 submodule", "2 submodules".
fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> Source {
        let mut source = Source::new("p", "https://example.org/p.git");
        source.mirrors = vec![
            "https://mirror-a.example.org/p.git".into(),
            "https://mirror-b.example.org/p.git".into(),
        ];
        source
    }

    fn urls(plan: &Plan) -> Vec<&str> {
        plan.targets
            .iter()
            .map(|target| target.url.as_str())
            .collect()
    }

    #[test]
    fn a_plan_has_a_target_per_url_the_source_first() {
        let plan = Plan::new(source());
        assert_eq!(
            urls(&plan),
            [
                "https://example.org/p.git",
                "https://mirror-a.example.org/p.git",
                "https://mirror-b.example.org/p.git",
            ]
        );
        assert_eq!(plan.target().url, "https://example.org/p.git");
        for target in &plan.targets {
            assert_eq!(target.tip_ref, plan.source().tip_ref());
            assert_eq!(target.timeout, plan.source().timeout);
        }
        assert!(plan.matcher().is_ok());
    }

    #[test]
    fn what_is_learned_of_a_remote_stays_with_its_url() {
        let plan = Plan::new(source());
        plan.targets[1].many_refs.store(true, Ordering::Relaxed);
        let learned = |plan: &Plan| -> Vec<bool> {
            plan.targets
                .iter()
                .map(|target| target.many_refs.load(Ordering::Relaxed))
                .collect()
        };
        // Each URL's remote has its own.
        assert_eq!(learned(&plan), [false, true, false]);
        let mut changed = source();
        changed.timeout = std::time::Duration::from_secs(7);
        changed.mirrors.reverse();
        changed
            .mirrors
            .push("https://mirror-c.example.org/p.git".into());
        let rebuilt = plan.rebuilt(changed.clone());
        assert_eq!(rebuilt.source(), &changed);
        assert_eq!(rebuilt.target().timeout, changed.timeout);
        assert_eq!(
            urls(&rebuilt),
            [
                "https://example.org/p.git",
                "https://mirror-b.example.org/p.git",
                "https://mirror-a.example.org/p.git",
                "https://mirror-c.example.org/p.git",
            ]
        );
        assert_eq!(learned(&rebuilt), [false, false, true, false]);
    }

    #[test]
    fn a_filter_that_does_not_compile_fails_each_attempt_as_misconfigured() {
        let mut source = source();
        source.filter.include = vec![String::new()];
        let plan = Plan::new(source);
        let err = plan.matcher().expect_err("an invalid pattern");
        assert_eq!(err.reason, Reason::Configuration);
        assert!(plan.into_matcher().is_err());
    }

    /// Runs git in `dir` with no user or system configuration; its output.
    fn git(dir: &std::path::Path, args: &[&str]) -> String {
        let out = std::process::Command::new("git")
            .current_dir(dir)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .args(["-c", "user.name=t", "-c", "user.email=t@t"])
            .args(args)
            .output()
            .expect("git starts");
        assert!(out.status.success(), "git {args:?}: {out:?}");
        String::from_utf8(out.stdout)
            .expect("utf-8")
            .trim()
            .to_owned()
    }

    /// Commits the work tree at `dir`; the commit's id.
    fn commit(dir: &std::path::Path) -> ObjectId {
        git(dir, &["add", "-A"]);
        git(dir, &["commit", "-q", "--allow-empty", "-m", "c"]);
        crate::git::commit_id(&git(dir, &["rev-parse", "HEAD"])).expect("a commit id")
    }

    /// The changes a snapshot is written from name every file that differs, with its sides,
    /// and tell which have a name on their path that folds like another of its directory in
    /// either commit.
    #[test]
    fn snapshot_changes_tell_names_that_fold_alike() {
        let dir = tempfile::tempdir().expect("temp dir");
        let work = dir.path();
        git(work, &["init", "-q"]);
        let write = |path: &str, text: &str| {
            let path = work.join(path);
            std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
            std::fs::write(path, text).expect("write");
        };
        write("policies/a.rego", "a1");
        write("policies/b.rego", "b1");
        write("docs/x.md", "x1");
        write("deep/er/same.txt", "s");
        let old = commit(work);
        write("policies/a.rego", "a2 longer");
        write("Policies/z.rego", "z");
        std::fs::remove_file(work.join("docs/x.md")).expect("remove");
        write("README", "r");
        let new = commit(work);

        let repo = Repo::open(&work.join(".git"), &target(&source(), "file:///x")).unwrap();
        let matcher = Matcher::default();
        let found = repo
            .file_changes(old, new, &matcher, &snapshot::fold)
            .unwrap();
        let shown: Vec<(String, Option<u64>, Option<u64>, bool)> = found
            .iter()
            .map(|change| {
                let size = |side: &Option<FileSide>| side.as_ref().map(|side| side.size);
                (
                    change.path.clone(),
                    size(&change.old),
                    size(&change.new),
                    change.crowded,
                )
            })
            .collect();
        let expected = [
            ("Policies/z.rego", None, Some(1), true),
            ("README", None, Some(1), false),
            ("docs/x.md", Some(2), None, false),
            ("policies/a.rego", Some(2), Some(9), true),
        ];
        let expected: Vec<_> = expected
            .iter()
            .map(|&(path, old, new, crowded)| (path.to_owned(), old, new, crowded))
            .collect();
        assert_eq!(shown, expected);
        assert_eq!(found[1].components, [b"README".to_vec()]);
        let blob = git(work, &["rev-parse", "HEAD:README"]);
        assert_eq!(
            found[1].new.as_ref().map(|side| side.id.as_str()),
            Some(&*blob)
        );

        // Without the change under `Policies`, nothing is crowded; the filter applies.
        std::fs::remove_dir_all(work.join("Policies")).expect("remove");
        let newer = commit(work);
        let found = repo
            .file_changes(old, newer, &matcher, &snapshot::fold)
            .unwrap();
        assert!(found.iter().all(|change| !change.crowded), "{found:?}");
        let rego = crate::source::Filter {
            extensions: vec!["rego".into()],
            ..crate::source::Filter::default()
        }
        .matcher()
        .unwrap();
        let found = repo
            .file_changes(old, newer, &rego, &snapshot::fold)
            .unwrap();
        let paths: Vec<&str> = found.iter().map(|change| change.path.as_str()).collect();
        assert_eq!(paths, ["policies/a.rego"]);
    }

    /// What a snapshot is listed with changes with the filter and the file size limit, and
    /// only with them.
    #[test]
    fn the_listing_settings_follow_the_filter_and_the_file_limit() {
        let base = source();
        let mut timeout = base.clone();
        timeout.timeout = std::time::Duration::from_secs(1);
        assert_eq!(listing(&base), listing(&timeout));
        let mut exclude = base.clone();
        exclude.filter.exclude = vec!["vendor/".into()];
        let mut split = base.clone();
        split.filter.exclude = vec!["vendor".into(), "/".into()];
        let mut include = base.clone();
        include.filter.include = vec!["vendor/".into()];
        let mut limit = base.clone();
        limit.max_file_size += 1;
        let all = [&base, &exclude, &split, &include, &limit].map(listing);
        let distinct: std::collections::HashSet<u64> = all.iter().copied().collect();
        assert_eq!(distinct.len(), all.len(), "{all:?}");
    }
}
