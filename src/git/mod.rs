//! The git layer: the only module that uses gix.
//!
//! It opens or creates a bare repository, fetches exactly one ref into it, resolves the new tip
//! and diffs two commits' trees. Every error it returns has a [`Reason`], whose class tells the
//! state machine whether a retry is worth it. Nothing here is async: the driver runs
//! these calls on threads of their own and ends them through [`Cancel`].

mod error;
mod filter;
mod indexer;
mod read;
mod receive;
mod repack;
mod stream;
mod transport;

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use gix::bstr::ByteSlice;
use gix::protocol::transport::Protocol;
use gix::remote::Direction;
use gix::remote::fetch::{Shallow, Tags};

pub(crate) use self::error::{FetchError, remote_host};
pub(crate) use self::filter::{Matcher, Patterns};
pub(crate) use self::read::{FileKind, FileSide, ReadFailure, TreeFile, names_git, representable};
pub(crate) use self::transport::Cancel;
use crate::event::Change;
use crate::reason::Reason;
/// A commit id: what the crate passes around inside. Hex text only at the edges: events, the
/// status and state files, and the public functions that take a commit as text (see
/// [`commit_id`]).
pub(crate) use gix::ObjectId;

/// Where the fetched tip was kept when every source had a clone of its own. A clone moved into
/// the shared place after an upgrade still has it; see [`Repo::adopt_legacy_tip`].
const LEGACY_TIP_REF: &str = "refs/gitfeed/tip";

/// Slots for pack indices in the object store. gix fixes the number when a repository is
/// opened; a kept handle fails once fetches have added more packs than that. Consolidation
/// keeps the pack count far lower, and [`Repo::needs_reopen`] is the backstop.
const PACK_SLOTS: usize = 32;

/// Packs are consolidated into one once a fetch leaves more than this many. gix has no gc, so
/// without it every fetch that brings objects adds a pack for good.
const MAX_PACKS: usize = 8;

/// One URL of a source (its own or a mirror's): what to fetch from it and how. Built once
/// per URL when the source starts being followed, and again only when its settings change:
/// no attempt builds or copies one. What belongs to one attempt travels beside it in a
/// [`Call`].
#[derive(Debug)]
pub(crate) struct Target {
    /// The remote URL as the user gave it.
    pub url: String,
    /// The ref to follow: a full ref, a commit id or a bare name (the branch of that name,
    /// else the tag); `None` for the remote's `HEAD`.
    pub reference: Option<String>,
    /// The local ref that holds this source's fetched tip. Sources sharing a clone each have
    /// their own, so no fetch moves another source's tip and every tip is a root that pack
    /// consolidation keeps.
    pub tip_ref: String,
    /// Shallow depth, if any.
    pub depth: Option<u32>,
    /// The ssh command (git's `core.sshCommand`), if any.
    pub ssh_command: Option<String>,
    /// The attempt's time limit.
    pub timeout: Duration,
    /// CA certificates to trust for HTTPS.
    pub ca_file: Option<PathBuf>,
    /// Skip HTTPS certificate checks (explicitly configured).
    pub insecure: bool,
    /// The ssh private key to use.
    pub ssh_key: Option<PathBuf>,
    /// The known_hosts file to check host keys against.
    pub known_hosts: Option<PathBuf>,
    /// The largest pack accepted, in bytes.
    pub max_pack_size: u64,
    /// Threads that index a received or consolidated pack; `0` uses one per core.
    pub index_threads: usize,
    /// Set once this URL's remote advertised more than [`MANY_REFS`] refs, and kept with the
    /// target across attempts and reopened clones: from then on git:// and HTTP remotes are
    /// asked for protocol v2, whose advertisement lists only the wanted ref. Until then they
    /// are asked for v1, which answers a no-change poll in one exchange (one HTTP request
    /// instead of two). A mirror's remote has its own.
    pub many_refs: AtomicBool,
}

/// What one call to the remote carries beside its [`Target`]: the state of the attempt
/// making it, which the target outlives.
#[derive(Debug)]
pub(crate) struct Call {
    /// True once the source has delivered a commit: a missing ref was then deleted on the
    /// remote rather than misconfigured.
    pub seen_before: bool,
    /// The `Authorization` header line for HTTPS remotes, read for this attempt.
    pub http_auth: Option<crate::auth::Secret>,
    /// Only ask the remote where the ref points: fail instead of receiving anything when it
    /// moved, and write nothing. See [`Repo::peek`].
    pub peek: bool,
    /// What the attempt has received of the pack so far, for its progress samples.
    pub progress: Arc<crate::progress::Counter>,
}

/// The followed ref on the remote after a fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tip {
    /// The ref's full name on the remote, like `refs/heads/main`.
    pub reference: String,
    /// The commit it points to (tags are peeled).
    pub commit: ObjectId,
}

/// An open bare repository in the cache: the handle the driver keeps between attempts.
pub(crate) struct Repo {
    repo: gix::ThreadSafeRepository,
    git_dir: PathBuf,
    packs_at_open: usize,
    /// The directory's device and inode at open: another source of a shared clone may delete
    /// a broken clone and clone afresh, and a handle on the old one must then be reopened.
    identity: Option<(u64, u64)>,
    /// The pack directory's modification time when this handle last knew every pack in it.
    /// Another source's fetch or consolidation changes it; gix's object store did not pick
    /// up such packs by itself (a kept handle failed to peel the other source's new tip), so
    /// the handle is then reopened.
    packs_stamp: Option<std::time::SystemTime>,
}

/// How many advertised refs make the one-exchange protocol v1 cost more than it saves.
const MANY_REFS: usize = 64;

impl std::fmt::Debug for Repo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repo")
            .field("git_dir", &self.git_dir)
            .finish()
    }
}

impl Repo {
    /// Opens the bare repository at `git_dir`, creating it when the directory does not exist.
    ///
    /// A directory that exists but cannot be opened as a repository is a *corrupt* error: the
    /// caller deletes it and the next attempt starts afresh.
    pub fn open_or_init(git_dir: &Path, target: &Target) -> Result<Self, FetchError> {
        if !git_dir.exists() {
            if let Some(parent) = git_dir.parent() {
                std::fs::create_dir_all(parent).map_err(|err| {
                    FetchError::io(format_args!("cannot create {}", parent.display()), &err)
                })?;
            }
            // Build in a temporary directory and rename it into place, so that a crash never
            // leaves a half-initialized repository where a complete one is expected.
            let staging = git_dir.with_extension("init");
            let _ = std::fs::remove_dir_all(&staging);
            gix::init_bare(&staging).map_err(|err| {
                let context = format!("cannot create a repository at {}", staging.display());
                match err
                    .iter_errors()
                    .find_map(|cause| cause.downcast_ref::<std::io::Error>())
                {
                    Some(io) => FetchError::io(context, io),
                    None => FetchError::new(
                        Reason::LocalIo,
                        format!("{context}: {}", error::describe(&err)),
                    ),
                }
            })?;
            // What gix writes for a person's repository (sample hooks, a description, an
            // exclude file) takes a dozen files that nothing here reads: about 50 KiB of
            // blocks in every clone.
            for sample in ["hooks", "info"] {
                let _ = std::fs::remove_dir_all(staging.join(sample));
            }
            let _ = std::fs::remove_file(staging.join("description"));
            std::fs::rename(&staging, git_dir).map_err(|err| {
                FetchError::io(
                    format_args!("cannot move {} into place", staging.display()),
                    &err,
                )
            })?;
        }
        Self::open(git_dir, target)
    }

    /// Opens an existing clone, and never creates one: fails when there is none. Only reads,
    /// so it needs no lock.
    pub fn open(git_dir: &Path, target: &Target) -> Result<Self, FetchError> {
        let options = gix::open::Options::isolated()
            .object_store_slots(gix::odb::store::init::Slots::Given(PACK_SLOTS as u16))
            .config_overrides(config_overrides(target));
        let repo = gix::open_opts(git_dir, options).map_err(|err| {
            FetchError::new(
                Reason::CloneCorrupt,
                format!(
                    "the cached clone at {} is unusable: {}",
                    git_dir.display(),
                    error::describe(&err)
                ),
            )
        })?;
        Ok(Self {
            repo: repo.into_sync(),
            git_dir: git_dir.to_owned(),
            packs_at_open: pack_count(git_dir),
            identity: identity(git_dir),
            packs_stamp: packs_stamp(git_dir),
        })
    }

    /// Checks a freshly opened clone: the source's tip ref `tip_ref` (if any) resolves to a
    /// commit whose tree is readable, and so is `acknowledged` if its commit is here at all (a
    /// clone rebuilt after the remote rewrote history may lack it; the next update is then a
    /// full listing). Anything else is *corrupt*: the caller deletes the clone and clones
    /// afresh.
    pub fn validate(
        &self,
        tip_ref: &str,
        acknowledged: Option<ObjectId>,
    ) -> Result<(), FetchError> {
        let repo = self.repo.to_thread_local();
        let broken = |what: String| {
            FetchError::new(
                Reason::CloneCorrupt,
                format!(
                    "the cached clone at {} is damaged: {what}",
                    self.git_dir.display()
                ),
            )
        };
        match repo.try_find_reference(tip_ref) {
            Ok(None) => {}
            Ok(Some(mut reference)) => {
                let commit = reference.peel_to_commit().map_err(|err| {
                    broken(format!(
                        "{tip_ref} does not resolve: {}",
                        error::describe(&err)
                    ))
                })?;
                commit.tree().map_err(|err| {
                    broken(format!(
                        "the tree of {} is unreadable: {}",
                        commit.id,
                        error::describe(&err)
                    ))
                })?;
            }
            Err(err) => {
                return Err(broken(format!(
                    "{tip_ref} is unreadable: {}",
                    error::describe(&err)
                )));
            }
        }
        if let Some(id) = acknowledged
            && repo.has_object(id)
        {
            repo.find_commit(id)
                .and_then(|commit| commit.tree())
                .map_err(|err| {
                    broken(format!(
                        "acknowledged commit {id} is unreadable: {}",
                        error::describe(&err)
                    ))
                })?;
        }
        Ok(())
    }

    /// Removes what a process killed mid-write leaves in a clone: stale `*.lock` files (a
    /// leftover `packed-refs.lock` blocks every later fetch) and temporary pack files (a killed
    /// clone can leave a partial pack as large as the repository). Only call it while holding
    /// the clone's lock, with no handle open.
    pub fn repair(git_dir: &Path) {
        let mut removed = 0usize;
        let mut stack = vec![git_dir.to_owned()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                let name = entry.file_name();
                let name = name.to_string_lossy();
                let Ok(kind) = entry.file_type() else {
                    continue;
                };
                let in_pack_dir = dir.ends_with("objects/pack");
                if kind.is_dir() {
                    // A consolidation killed midway leaves its staging directory, which can
                    // hold a whole copy of the repository.
                    if in_pack_dir && name.starts_with(".tmp") {
                        if std::fs::remove_dir_all(&path).is_ok() {
                            removed += 1;
                            log::info!("removed stale {}", path.display());
                        }
                    } else if !(dir.ends_with("objects") && name.len() == 2) {
                        // Loose objects hold no locks; skipping them keeps this cheap.
                        stack.push(path);
                    }
                    continue;
                }
                // A `.keep` file is written by a fetch while its pack is moved into place and
                // removed once the ref points at it; one that survives a kill would shield its
                // pack from consolidation for ever. gitfeed never keeps packs on purpose.
                let stale = name.ends_with(".lock")
                    || (in_pack_dir
                        && (name.starts_with("tmp")
                            || name.starts_with(".tmp")
                            || name.ends_with(".keep")));
                if stale && std::fs::remove_file(&path).is_ok() {
                    removed += 1;
                    log::info!("removed stale {}", path.display());
                }
            }
        }
        if removed > 0 {
            log::warn!(
                "{}: removed {removed} leftovers of an interrupted write",
                git_dir.display()
            );
        }
    }

    /// True when enough packs were added since the handle was opened that it should be
    /// reopened before the next fetch (gix's pack slots are fixed at open).
    pub fn needs_reopen(&self) -> bool {
        pack_count(&self.git_dir) >= self.packs_at_open + PACK_SLOTS / 2
            || identity(&self.git_dir) != self.identity
            || packs_stamp(&self.git_dir) != self.packs_stamp
    }

    /// Records that every pack now in the clone is this handle's doing (call it at the end of
    /// an attempt, still holding the clone's lock), so that [`Repo::needs_reopen`] asks for a
    /// reopen only once someone else has written packs.
    pub fn settle(&mut self) {
        self.packs_stamp = packs_stamp(&self.git_dir);
    }

    /// True when the packs have piled up past [`MAX_PACKS`]: [`Repo::maintain`] then consolidates.
    pub fn wants_maintenance(&self) -> bool {
        pack_count(&self.git_dir) > MAX_PACKS
    }

    /// Consolidates the packs once there are more than [`MAX_PACKS`], or whatever their number
    /// when `prune` is set (refs were deleted, and the objects only they reached should go),
    /// keeping exactly the objects reachable from `keep` (the commits the consumers of every
    /// source sharing the clone last saw and acknowledged) and from every ref in the clone
    /// (each source's tip), and reopens the handle so it sees the new pack set. Never runs
    /// during a fetch: the caller holds the clone's lock. A failure leaves the packs as they
    /// were and is only logged.
    ///
    /// Returns the handle (reopened when it consolidated) and false when a consolidation that
    /// was due failed or was interrupted: a prune asked for is then still to do.
    pub fn maintain(
        self,
        target: &Target,
        keep: &[ObjectId],
        prune: bool,
        cancel: &Cancel,
    ) -> Result<(Self, bool), FetchError> {
        if !prune && pack_count(&self.git_dir) <= MAX_PACKS {
            return Ok((self, true));
        }
        let tips = self.roots(keep);
        if tips.is_empty() {
            // Nothing here is anyone's: consolidation refuses to delete every object, and the
            // clone goes once no source records it.
            return Ok((self, true));
        }
        let git_dir = self.git_dir.clone();
        // gix maps pack files; drop the handle before the files it maps are deleted.
        drop(self);
        let done = match repack::consolidate(&git_dir, &tips, target.index_threads, cancel.flag()) {
            Ok(stats) => {
                log::debug!("{}: consolidated packs: {stats}", git_dir.display());
                true
            }
            Err(err) if err.kind == repack::ErrorKind::Interrupted => {
                log::debug!("{}: pack consolidation interrupted", git_dir.display());
                false
            }
            Err(err) => {
                log::warn!("{}: pack consolidation failed: {err}", git_dir.display());
                false
            }
        };
        Ok((Repo::open_or_init(&git_dir, target)?, done))
    }

    /// The names of the refs whose names start with `prefix` (like `refs/gitfeed/sources/`).
    pub fn refs_under(&self, prefix: &str) -> Vec<String> {
        let repo = self.repo.to_thread_local();
        let Ok(platform) = repo.references() else {
            return Vec::new();
        };
        let Ok(refs) = platform.prefixed(prefix) else {
            return Vec::new();
        };
        refs.flatten()
            .map(|reference| reference.name().as_bstr().to_string())
            .collect()
    }

    /// Deletes the ref `name`, if it exists. Only call it holding the clone's lock.
    pub fn delete_ref(&self, name: &str) -> Result<(), FetchError> {
        let repo = self.repo.to_thread_local();
        let Ok(Some(reference)) = repo.try_find_reference(name) else {
            return Ok(());
        };
        reference.delete().map_err(|err| {
            FetchError::new(
                Reason::LocalIo,
                format!("cannot delete {name}: {}", error::describe(&err)),
            )
        })
    }

    /// The objects consolidation must keep: `keep` (those present) and every ref's target.
    fn roots(&self, keep: &[ObjectId]) -> Vec<ObjectId> {
        let repo = self.repo.to_thread_local();
        let mut roots: Vec<ObjectId> = keep
            .iter()
            .copied()
            // A commit the remote rewrote away before this clone was made is simply not here.
            .filter(|id| repo.has_object(id))
            .collect();
        if let Ok(platform) = repo.references()
            && let Ok(all) = platform.all()
        {
            roots.extend(
                all.flatten()
                    .filter_map(|reference| reference.target().try_id().map(ToOwned::to_owned))
                    // A ref to a lost object would fail the whole consolidation; the source it
                    // belongs to finds its clone broken at its next open.
                    .filter(|id| repo.has_object(id)),
            );
        }
        roots.sort_unstable();
        roots.dedup();
        roots
    }

    /// Points the target's tip ref at `commit`, which is already in the clone: a pinned commit
    /// that another source's fetch brought needs no fetch, only a ref of its own to stay
    /// reachable.
    pub fn pin(&self, target: &Target, id: ObjectId) -> Result<(), FetchError> {
        let repo = self.repo.to_thread_local();
        if tip_id(&repo, &target.tip_ref) == Some(id) {
            return Ok(());
        }
        set_ref(&repo, &target.tip_ref, id)
    }

    /// Renames the tip ref of a clone made before clones were shared to `tip_ref`, so that the
    /// source that owned it keeps negotiating from its old tip instead of fetching everything
    /// again. Does nothing when there is no such ref.
    pub fn adopt_legacy_tip(&self, tip_ref: &str) -> Result<(), FetchError> {
        let repo = self.repo.to_thread_local();
        let Some(id) = tip_id(&repo, LEGACY_TIP_REF) else {
            return Ok(());
        };
        if tip_id(&repo, tip_ref).is_none() {
            set_ref(&repo, tip_ref, id)?;
        }
        if let Ok(legacy) = repo.find_reference(LEGACY_TIP_REF) {
            legacy.delete().map_err(|err| {
                FetchError::new(
                    Reason::LocalIo,
                    format!("cannot delete {LEGACY_TIP_REF}: {}", error::describe(&err)),
                )
            })?;
        }
        Ok(())
    }

    /// Where the target's ref points when the remote's copy has not moved from this source's
    /// tip ref; `None` when it moved or anything went wrong (the caller then fetches as
    /// usual). Writes nothing, so it needs no lock on the clone: sources sharing a clone poll
    /// side by side, and only a fetch that brings something waits for the others. `call` is
    /// made a peek.
    pub fn peek(&self, target: &Target, call: Call, cancel: &Cancel) -> Option<Tip> {
        let call = Call { peek: true, ..call };
        self.fetch(target, &call, cancel).ok()
    }

    /// Fetches the target's ref into the cache and returns where it points now.
    ///
    /// Returns early with a transient error once `cancel` fires; the fetch's temporary files are
    /// removed by gix as the attempt unwinds.
    pub fn fetch(&self, target: &Target, call: &Call, cancel: &Cancel) -> Result<Tip, FetchError> {
        let repo = self.repo.to_thread_local();
        let url = absolute_local_path(&target.url);
        let specs = fetch_specs(target.reference.as_deref(), &target.tip_ref);
        let remote = repo
            .remote_at(url.as_str())
            .and_then(|remote| {
                remote.with_refspecs(specs.iter().map(String::as_str), Direction::Fetch)
            })
            .map_err(|err| {
                FetchError::new(
                    Reason::Configuration,
                    format!("invalid url: {}", error::describe(&err)),
                )
            })?
            .with_fetch_tags(Tags::None);
        let parsed = gix::url::parse(url.as_bytes().as_bstr()).map_err(|err| {
            FetchError::new(
                Reason::Configuration,
                format!("invalid url: {}", error::describe_std(&err)),
            )
        })?;
        let ours = tip_id(&repo, &target.tip_ref);
        // Protocol v1 answers a no-change poll in one exchange, but cannot fetch a commit no
        // ref points at (git's upload-pack refuses it: "not our ref"): a pinned commit, which is
        // fetched once and never polled, is asked for with v2 from the start. So is a shallow
        // source's first clone, which v1 could not fetch either and which has nothing to poll.
        let pinned = target.reference.as_deref().is_some_and(is_commit_id);
        let first_shallow = target.depth.is_some() && ours.is_none();
        let protocol = if target.many_refs.load(Ordering::Relaxed) || pinned || first_shallow {
            Protocol::V2
        } else {
            Protocol::V1
        };
        let reference = if let Some(reference) = unchanged_local_ref(&repo, &parsed, target) {
            reference
        } else {
            let connection = Connection {
                repo: &repo,
                remote: &remote,
                parsed: &parsed,
                url: &url,
                target,
                call,
                cancel,
                ours,
            };
            match connection.receive(protocol)? {
                receive::Outcome::Received(reference) => reference,
                // The ref moved, and what was asked (a shallow fetch) needs v2: the poll
                // stays one exchange, and only a fetch that brings objects pays for a
                // second connection.
                receive::Outcome::NeedsV2 => match connection.receive(Protocol::V2)? {
                    receive::Outcome::Received(reference) => reference,
                    // Fetched over an older protocol, the history would come whole.
                    receive::Outcome::NeedsV2 => {
                        return Err(FetchError::new(
                            Reason::UnsupportedRemote,
                            "the remote does not speak git protocol v2, which a shallow fetch \
                             needs; follow it without a depth",
                        ));
                    }
                },
            }
        };
        let commit = repo
            .find_reference(target.tip_ref.as_str())
            .map_err(|err| {
                FetchError::new(
                    Reason::CloneCorrupt,
                    format!("fetched ref is unreadable: {}", error::describe(&err)),
                )
            })?
            .peel_to_commit()
            .map_err(|err| {
                // Never keep a tip that is not a commit: the next attempt starts clean.
                if !call.peek
                    && let Ok(tip) = repo.find_reference(target.tip_ref.as_str())
                {
                    let _ = tip.delete();
                }
                FetchError::new(
                    Reason::UnsupportedRemote,
                    format!(
                        "`{reference}` on the remote does not point to a commit: {}",
                        error::describe(&err)
                    ),
                )
            })?
            .id;
        Ok(Tip { reference, commit })
    }

    /// The raw bytes of commit `id`, as stored (what `git cat-file commit` prints).
    #[cfg(feature = "verify")]
    pub fn raw_commit(&self, id: ObjectId) -> Result<Vec<u8>, FetchError> {
        let repo = self.repo.to_thread_local();
        repo.find_commit(id)
            .map(|commit| commit.data.clone())
            .map_err(|err| {
                FetchError::new(
                    Reason::CloneCorrupt,
                    format!("cannot read commit {id}: {}", error::describe(&err)),
                )
            })
    }

    /// The commits reachable from `new` but not from `old`, newest first, at most `limit`
    /// (history missing in a shallow clone ends the walk there).
    #[cfg(feature = "verify")]
    pub fn commits_since(
        &self,
        old: Option<ObjectId>,
        new: ObjectId,
        limit: usize,
    ) -> Result<Vec<ObjectId>, FetchError> {
        let repo = self.repo.to_thread_local();
        let walk = repo.rev_walk([new]).with_hidden(old).all().map_err(|err| {
            FetchError::new(
                Reason::CloneCorrupt,
                format!("cannot walk history: {}", error::describe(&err)),
            )
        })?;
        let mut out = Vec::new();
        for info in walk {
            let Ok(info) = info else {
                break;
            };
            out.push(info.id);
            if out.len() == limit {
                return Err(FetchError::new(
                    Reason::Verification,
                    format!(
                        "more than {limit} new commits to verify; deliver a nearer tip or verify only the tip"
                    ),
                ));
            }
        }
        Ok(out)
    }

    /// True when commit `ancestor` is reachable from commit `descendant` (or is it).
    pub fn is_ancestor(&self, ancestor: ObjectId, descendant: ObjectId) -> bool {
        let repo = self.repo.to_thread_local();
        ancestor == descendant
            || repo
                .merge_base(ancestor, descendant)
                .is_ok_and(|base| base.is_some_and(|base| base.detach() == ancestor))
    }

    /// True when this source's tip ref `tip_ref` points at commit `id` or a descendant of it.
    /// Another source of a shared clone may have brought `id` without this source having
    /// fetched it, so its mere presence says nothing.
    pub fn reaches(&self, tip_ref: &str, id: ObjectId) -> bool {
        let repo = self.repo.to_thread_local();
        let Some(tip) = repo
            .find_reference(tip_ref)
            .ok()
            .and_then(|mut reference| reference.peel_to_commit().ok())
        else {
            return false;
        };
        self.is_ancestor(id, tip.id)
    }

    /// True when the commit `id` and everything needed to diff against it are in the cache.
    pub fn has_commit(&self, id: ObjectId) -> bool {
        let repo = self.repo.to_thread_local();
        repo.find_commit(id)
            .ok()
            .is_some_and(|commit| commit.tree().is_ok())
    }

    /// The files `matcher` accepts that differ between the trees of `old` and `new` (every such
    /// file of `new` when `old` is `None`), sorted by path, and whether `old` is not an ancestor
    /// of `new`.
    pub fn changes(
        &self,
        old: Option<ObjectId>,
        new: ObjectId,
        matcher: &Matcher,
    ) -> Result<Changes, FetchError> {
        let repo = self.repo.to_thread_local();
        let unreadable = |what: &str, err: gix::Error| {
            FetchError::new(
                Reason::CloneCorrupt,
                format!("cannot read {what}: {}", error::describe(&err)),
            )
        };
        let new_tree = repo
            .find_commit(new)
            .and_then(|commit| commit.tree())
            .map_err(|err| unreadable(&format!("commit {new}"), err))?;
        let (old_tree, forced) = match old {
            None => (repo.empty_tree(), false),
            Some(old_id) => {
                let tree = repo
                    .find_commit(old_id)
                    .and_then(|commit| commit.tree())
                    .map_err(|err| unreadable(&format!("commit {old_id}"), err))?;
                let forced = old_id != new
                    && !repo
                        .merge_base(old_id, new)
                        .is_ok_and(|base| base.is_some_and(|base| base.detach() == old_id));
                (tree, forced)
            }
        };
        let old_tree = old.is_some().then_some(old_tree.id);
        let diff = read::diff_trees(&repo, old_tree, new_tree.id, matcher)?;
        let changes = diff.changes;
        Ok(Changes {
            changes,
            forced,
            skipped: diff.skipped,
            submodules: diff.submodules,
        })
    }
}

/// What [`Repo::changes`] found.
#[derive(Debug)]
pub(crate) struct Changes {
    /// The changed files, sorted by path.
    pub changes: Vec<Change>,
    /// True when `old` is not an ancestor of `new`.
    pub forced: bool,
    /// Entries left out because their names cannot be a path (hostile trees).
    pub skipped: Vec<String>,
    /// Submodules that differ, left out of the changes: `` `path` (kind) ``.
    pub submodules: Vec<String>,
}

/// One fetch attempt's view of the remote: everything needed to connect over any transport
/// and receive, possibly twice (see [`receive::Outcome::NeedsV2`]).
struct Connection<'a, 'r> {
    repo: &'a gix::Repository,
    remote: &'a gix::Remote<'r>,
    parsed: &'a gix::Url,
    /// The URL with a relative local path made absolute.
    url: &'a str,
    target: &'a Target,
    call: &'a Call,
    cancel: &'a Cancel,
    /// Where the source's tip ref points now, if anywhere.
    ours: Option<gix::ObjectId>,
}

impl Connection<'_, '_> {
    /// Connects over the URL's transport and receives the wanted ref. `protocol` is what
    /// git:// and HTTP remotes are asked for; local and ssh remotes always speak v2.
    fn receive(&self, protocol: Protocol) -> Result<receive::Outcome, FetchError> {
        let Connection {
            repo,
            remote,
            parsed,
            url,
            target,
            call,
            cancel,
            ours,
        } = *self;
        let shallow = match target.depth.and_then(NonZeroU32::new) {
            Some(depth) => Shallow::DepthAtRemote(depth),
            None => Shallow::NoChange,
        };
        if let Some(connection) = transport::git_daemon_stream(
            &target.url,
            target.timeout,
            target.max_pack_size,
            protocol,
            cancel,
        )? {
            receive::receive(
                repo,
                remote.to_connection_with_transport(connection),
                None,
                target,
                call,
                shallow,
                cancel,
                ours,
            )
        } else if let Some((connection, helper)) = transport::spawn_helper(
            parsed,
            &ssh_invocation(target),
            target.max_pack_size,
            cancel,
        )? {
            let result = receive::receive(
                repo,
                remote.to_connection_with_transport(connection),
                None,
                target,
                call,
                shallow,
                cancel,
                ours,
            );
            // Forget the helper's group before it is reaped, so a late cancel cannot signal
            // a reused process id.
            cancel.forget_helper();
            let stderr = helper.finish();
            result.map_err(|err| {
                let err = error::with_helper_output(err, &stderr);
                if err.reason == Reason::HostKey {
                    let host = parsed.host().unwrap_or_default();
                    let port = parsed.port.unwrap_or(22);
                    FetchError::new(
                        Reason::HostKey,
                        format!(
                            "the host key of {host}:{port} is unknown or has changed; check known_hosts ({})",
                            err.detail_or_message()
                        ),
                    )
                } else {
                    err
                }
            })
        } else if matches!(
            parsed.scheme,
            gix::url::Scheme::Http | gix::url::Scheme::Https
        ) {
            let http = transport::BoundedHttp::new(target.max_pack_size, cancel);
            let words = http.words();
            let transport =
                gix::protocol::transport::client::blocking_io::http::Transport::new_http(
                    http,
                    parsed.clone(),
                    protocol,
                    false,
                );
            let connection = remote.to_connection_with_transport(transport);
            let options = http_options(repo, url, target, call);
            receive::receive(
                repo, connection, options, target, call, shallow, cancel, ours,
            )
            .map_err(|err| match words.error_line() {
                Some(line) => error::with_error_line(err, &line),
                None => err,
            })
        } else {
            let connection = remote
                .connect(Direction::Fetch)
                .map_err(|err| error::classify(&err, target, cancel))?;
            receive::receive(repo, connection, None, target, call, shallow, cancel, ours)
        }
    }
}

/// For a remote on this machine (a path or `file://`), the name of the wanted ref when it
/// still points where the clone's copy does, read from the remote's ref store without running
/// `git-upload-pack`: a no-change poll of a local remote then costs a few file reads. `None`
/// whenever that cannot be told for sure (a pinned commit, a remote that does not open, a
/// ref that moved or is missing); the caller then fetches as usual and reports any error.
fn unchanged_local_ref(repo: &gix::Repository, url: &gix::Url, target: &Target) -> Option<String> {
    if url.scheme != gix::url::Scheme::File {
        return None;
    }
    let wanted = target.reference.as_deref().unwrap_or("HEAD");
    if is_commit_id(wanted) {
        return None;
    }
    let ours = tip_id(repo, &target.tip_ref)?;
    let path = gix::path::from_bstr(url.path.as_bstr()).ok()?;
    let remote = gix::open_opts(path, gix::open::Options::isolated()).ok()?;
    // A bare name is the branch of that name, else the tag, as a fetch resolves it.
    let candidates = if is_bare_name(wanted) {
        vec![
            format!("refs/heads/{wanted}"),
            format!("refs/tags/{wanted}"),
        ]
    } else {
        vec![wanted.to_owned()]
    };
    let mut found = None;
    for candidate in candidates {
        // An unreadable ref says nothing about the next candidate: leave it to the fetch.
        if let Some(reference) = remote.try_find_reference(candidate.as_str()).ok()? {
            found = Some((candidate, reference));
            break;
        }
    }
    let (wanted, mut reference) = found?;
    let wanted = wanted.as_str();
    // HEAD is reported by the branch it names, as a fetch would.
    let name = match reference.target().try_name() {
        Some(name) => name.as_bstr().to_str().ok()?.to_owned(),
        None => reference.name().as_bstr().to_str().ok()?.to_owned(),
    };
    if name != wanted && !(wanted == "HEAD" && name.starts_with("refs/")) {
        return None;
    }
    let theirs = reference.follow_to_object().ok()?.detach();
    (theirs == ours).then_some(name)
}

/// Where the clone's copy of the tracked ref points, unpeeled (a tag object for an annotated
/// tag), as the remote advertises it.
fn tip_id(repo: &gix::Repository, tip_ref: &str) -> Option<gix::ObjectId> {
    Some(
        repo.find_reference(tip_ref)
            .ok()?
            .target()
            .try_id()?
            .to_owned(),
    )
}

/// Points the local ref `name` at `id`, whatever it pointed to before.
fn set_ref(repo: &gix::Repository, name: &str, id: gix::ObjectId) -> Result<(), FetchError> {
    repo.reference(
        name,
        id,
        gix::refs::transaction::PreviousValue::Any,
        "gitfeed: pin",
    )
    .map(|_| ())
    .map_err(|err| {
        FetchError::new(
            Reason::LocalIo,
            format!("cannot write {name}: {}", error::describe(&err)),
        )
    })
}

/// The modification time of the clone's pack directory, if it exists.
fn packs_stamp(git_dir: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(git_dir.join("objects/pack"))
        .and_then(|metadata| metadata.modified())
        .ok()
}

/// The device and inode of `path`, if it exists.
fn identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .ok()
        .map(|metadata| (metadata.dev(), metadata.ino()))
}

/// A ref the remote does not have. Never seen before, it is a configuration mistake and
/// permanent; seen before, it was deleted on the remote and may come back, so it is retried.
fn missing_ref(wanted: &str, seen_before: bool) -> FetchError {
    let short = wanted.strip_prefix("refs/heads/").unwrap_or(wanted);
    let what = if wanted.starts_with("refs/heads/") || is_bare_name(wanted) {
        "branch"
    } else {
        "ref"
    };
    if seen_before {
        FetchError::new(
            Reason::RefDeleted,
            format!("{what} `{short}` was deleted on the remote; retrying until it returns"),
        )
    } else {
        FetchError::new(
            Reason::RefNotFound,
            format!("{what} `{short}` not found on remote; check --branch"),
        )
    }
}

/// A name that is neither a full ref (`refs/…`), `HEAD` nor a commit id: `main`, `v1`. The
/// remote resolves it as `git clone --branch` does, to the branch of that name, else the tag.
pub(crate) fn is_bare_name(name: &str) -> bool {
    !(name.starts_with("refs/") || name == "HEAD" || is_commit_id(name))
}

/// The refspecs that fetch `wanted` (`None`: the remote's `HEAD`) into `tip_ref`. A bare name
/// asks for both the branch and the tag of that name, without a destination each (two
/// sources may not share one); [`receive`] keeps the branch when both exist.
fn fetch_specs(wanted: Option<&str>, tip_ref: &str) -> Vec<String> {
    match wanted {
        Some(name) if is_bare_name(name) => {
            vec![format!("+refs/heads/{name}"), format!("+refs/tags/{name}")]
        }
        wanted => vec![format!("+{}:{tip_ref}", wanted.unwrap_or("HEAD"))],
    }
}

/// 40 hex digits: a commit id rather than a ref name.
pub(crate) fn is_commit_id(text: &str) -> bool {
    text.len() == 40 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The commit id `text` names, when it is one by [`is_commit_id`] (in either case); the one
/// place where a commit given as text becomes an [`ObjectId`].
pub(crate) fn commit_id(text: &str) -> Option<ObjectId> {
    is_commit_id(text)
        .then(|| ObjectId::from_hex(text.as_bytes()).ok())
        .flatten()
}

fn parse_id(id: &str) -> Result<gix::ObjectId, FetchError> {
    gix::ObjectId::from_hex(id.as_bytes())
        .map_err(|_| FetchError::new(Reason::CloneCorrupt, format!("`{id}` is not a commit id")))
}

/// Per-source configuration of the repository handle: no prompts (a daemon has no terminal),
/// and transport limits derived from the attempt's timeout so that no blocking call outlives it.
fn config_overrides(target: &Target) -> Vec<String> {
    // Rounded down: curl counts the window in whole seconds and checks it about twice a
    // second, so rounding up could let an attempt overrun its deadline by more than a second.
    let whole_seconds = target.timeout.as_secs().max(1);
    // curl's transfer cannot be interrupted from outside, so its stall window also bounds how
    // long a shutdown waits for an HTTP attempt: keep it short even when the timeout is long.
    let stall_seconds = whole_seconds.min(HTTP_STALL_SECONDS);
    let mut overrides = vec![
        "gitoxide.credentials.terminalPrompt=false".to_owned(),
        "credential.interactive=never".to_owned(),
        // curl aborts when the transfer stays below this rate for the whole window; a server
        // that trickles bytes can otherwise hold an HTTP attempt for ever.
        format!("http.lowSpeedLimit={}", LOW_SPEED_BYTES_PER_SECOND),
        format!("http.lowSpeedTime={stall_seconds}"),
        format!(
            "gitoxide.http.connectTimeout={}",
            target.timeout.as_millis().max(1)
        ),
        "protocol.version=2".to_owned(),
        // Each indexing thread decompresses one whole object of the received pack at a time:
        // with large files, memory grows with the thread count (see `Source::index_threads`).
        format!("pack.threads={}", target.index_threads),
    ];
    overrides.push(format!("core.sshCommand={}", ssh_invocation(target)));
    overrides
}

/// gix's HTTP options for `url`, with this attempt's credentials and the target's TLS settings
/// added in memory only: nothing of it is written to the repository's configuration.
fn http_options(
    repo: &gix::Repository,
    url: &str,
    target: &Target,
    call: &Call,
) -> Option<Box<dyn std::any::Any>> {
    use gix::protocol::transport::client::blocking_io::http::Options;
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return None;
    }
    let base = repo.transport_options(url, None).ok().flatten()?;
    let mut options = base.downcast::<Options>().ok()?;
    if let Some(header) = &call.http_auth {
        options.extra_headers.push(header.0.clone());
    }
    if let Some(ca) = &target.ca_file {
        options.ssl_ca_info = Some(ca.clone());
    } else if let Some(bundle) = system_ca_bundle() {
        options.ssl_ca_info = Some(bundle);
    }
    if target.insecure {
        log::warn!(
            "{}: TLS certificate checking is OFF (insecure_skip_tls_verify)",
            redact_url(url)
        );
        options.ssl_verify = false;
    }
    Some(options)
}

/// Where Linux distributions keep their bundle of trusted CA certificates, most common first.
#[cfg(feature = "https-rustls")]
const SYSTEM_CA_BUNDLES: [&str; 4] = [
    // Debian, Ubuntu, Alpine, Arch, Buildroot, Yocto.
    "/etc/ssl/certs/ca-certificates.crt",
    // Fedora, RHEL.
    "/etc/pki/tls/certs/ca-bundle.crt",
    // openSUSE.
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// The system's CA bundle for HTTPS when the user named none. The libcurl compiled into the
/// binary (`https-rustls`) has no trust store of its own and refuses every server without
/// one; a system libcurl knows its system's bundle, so it is left to choose.
fn system_ca_bundle() -> Option<PathBuf> {
    #[cfg(feature = "https-rustls")]
    return SYSTEM_CA_BUNDLES
        .iter()
        .map(PathBuf::from)
        .find(|path| path.is_file());
    #[cfg(not(feature = "https-rustls"))]
    None
}

/// The ssh command line for `target`: the user's command (or `ssh`) with no prompts and
/// deadlines derived from the attempt's timeout. Later `-o` values lose to earlier ones in
/// ssh, so the user's own options win.
fn ssh_invocation(target: &Target) -> String {
    let whole_seconds = target.timeout.as_secs().max(1);
    let ssh = target.ssh_command.as_deref().unwrap_or("ssh");
    let mut command = format!(
        "{ssh} -o BatchMode=yes -o StrictHostKeyChecking=yes -o ConnectTimeout={whole_seconds} \
         -o ServerAliveInterval={} -o ServerAliveCountMax=2",
        whole_seconds.div_ceil(2).max(1)
    );
    if let Some(key) = &target.ssh_key {
        let key = transport::shell_quote(&key.to_string_lossy());
        command.push_str(&format!(" -i {key} -o IdentitiesOnly=yes"));
    }
    if let Some(known_hosts) = &target.known_hosts {
        let known_hosts = transport::shell_quote(&known_hosts.to_string_lossy());
        command.push_str(&format!(
            " -o UserKnownHostsFile={known_hosts} -o GlobalKnownHostsFile=/dev/null"
        ));
    }
    command
}

/// The slowest transfer rate an HTTP attempt tolerates over [`HTTP_STALL_SECONDS`].
const LOW_SPEED_BYTES_PER_SECOND: u32 = 1024;

/// The longest an HTTP transfer may stay below [`LOW_SPEED_BYTES_PER_SECOND`] (or the attempt
/// timeout, when that is shorter).
const HTTP_STALL_SECONDS: u64 = 5;

/// The number of packs in a repository's object store (0 when unreadable).
pub(crate) fn pack_count(git_dir: &Path) -> usize {
    repack::pack_count(git_dir).unwrap_or(0)
}

/// A relative local path made absolute against the current directory. git (and gix) would
/// resolve it against the cache's repository instead, which is never what the user meant.
fn absolute_local_path(url: &str) -> String {
    let is_local_path = !url.contains("://")
        && gix::url::parse(url.as_bytes().as_bstr())
            .is_ok_and(|parsed| parsed.scheme == gix::url::Scheme::File);
    let path = Path::new(url);
    if is_local_path
        && path.is_relative()
        && let Ok(cwd) = std::env::current_dir()
    {
        return cwd.join(path).to_string_lossy().into_owned();
    }
    url.to_owned()
}

/// Checks that `url` is a remote gitfeed can fetch from, without touching the network.
pub(crate) fn check_url(url: &str) -> Result<(), String> {
    if url.trim().is_empty() {
        return Err("url is empty".into());
    }
    if let Some((scheme, _)) = url.split_once("://") {
        if !matches!(scheme, "file" | "git" | "http" | "https" | "ssh") {
            return Err(unsupported(scheme));
        }
    } else if let Some((scheme, _)) = url.split_once("::") {
        // git's remote-helper syntax (`ext::`, `fd::`) would run arbitrary programs.
        return Err(unsupported(scheme));
    }
    let parsed = gix::url::parse(url.as_bytes().as_bstr())
        .map_err(|err| format!("malformed url `{url}`: {}", error::describe_std(&err)))?;
    use gix::url::Scheme;
    match parsed.scheme {
        Scheme::File | Scheme::Git | Scheme::Http | Scheme::Https | Scheme::Ssh => {}
        other => return Err(unsupported(other.as_str())),
    }
    if parsed.scheme != Scheme::File && parsed.host().is_none_or(str::is_empty) {
        return Err(format!("malformed url `{url}`: no host"));
    }
    // With `https-system-curl`, libcurl is whatever the system has, and a build that found none
    // compiled one without TLS: better said now than as a failure on every attempt.
    if parsed.scheme == Scheme::Https && !curl::Version::get().feature_ssl() {
        return Err(
            "https:// needs TLS, and the libcurl this build uses has none; build with the \
             `https-rustls` feature or against a system libcurl with TLS"
                .into(),
        );
    }
    // ssh and git-upload-pack read an argument that starts with `-` as an option.
    if parsed.scheme != Scheme::File
        && (parsed.host_argument_safe().is_none()
            || (parsed.user().is_some() && parsed.user_argument_safe().is_none()))
    {
        return Err(format!(
            "malformed url `{url}`: a host or user may not start with `-`"
        ));
    }
    if parsed.path.is_empty() || parsed.path == "/" {
        return Err(format!("malformed url `{url}`: no repository path"));
    }
    Ok(())
}

fn unsupported(scheme: &str) -> String {
    format!("unsupported url scheme `{scheme}`; use a path, file://, git://, http(s):// or ssh://")
}

/// Checks a branch or full ref name.
pub(crate) fn check_ref(name: &str) -> Result<(), String> {
    if is_commit_id(name) {
        return Ok(());
    }
    let full = full_ref_name(name);
    gix::validate::reference::name(full.as_bytes().as_bstr())
        .map(|_| ())
        .map_err(|err| format!("invalid ref name `{name}`: {err}"))
}

/// `main` → `refs/heads/main`; full names are kept as they are.
pub(crate) fn full_ref_name(name: &str) -> String {
    if name.starts_with("refs/") || is_commit_id(name) {
        name.to_owned()
    } else {
        format!("refs/heads/{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_ids_from_text() {
        let lower = "0123456789abcdef0123456789abcdef01234567";
        let id = commit_id(lower).expect("a commit id");
        assert_eq!(id.to_string(), lower);
        assert_eq!(commit_id(&lower.to_uppercase()), Some(id), "either case");
        for not in [
            "",
            "not-a-commit",
            &lower[1..],
            &format!("{lower}0"),
            "0123456789abcdef0123456789abcdef0123456g",
            &"0".repeat(64),
        ] {
            assert_eq!(commit_id(not), None, "{not}");
        }
    }

    #[test]
    fn urls() {
        for good in [
            "/srv/p.git",
            "./p",
            "file:///srv/p.git",
            "git://127.0.0.1:9418/p.git",
            "http://127.0.0.1:8080/p.git",
            "https://example.org/p.git",
            "ssh://git@example.org:2222/p.git",
            "git@example.org:org/p.git",
        ] {
            check_url(good).unwrap_or_else(|err| panic!("{good}: {err}"));
        }
        for bad in [
            "",
            "ftp://x/p",
            "ext::sh -c touch% /tmp/x",
            "http://",
            "https:///p",
            "git://host",
        ] {
            assert!(check_url(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn https_needs_a_libcurl_with_tls() {
        let tls = curl::Version::get().feature_ssl();
        // The libcurl compiled in with `https-rustls` always has TLS; a build against a system
        // libcurl has what that library has, or none when none was found.
        assert!(tls || !cfg!(feature = "https-rustls"));
        let result = check_url("https://example.org/p.git");
        if tls {
            assert_eq!(result, Ok(()));
        } else {
            let message = result.unwrap_err();
            assert!(message.starts_with("https:// needs TLS"), "{message}");
        }
        // Plain http and the other transports do not depend on it.
        check_url("http://example.org/p.git").unwrap();
        check_url("git://example.org/p.git").unwrap();
    }

    #[test]
    fn ref_names() {
        assert_eq!(full_ref_name("main"), "refs/heads/main");
        assert_eq!(full_ref_name("refs/tags/v1"), "refs/tags/v1");
        check_ref("feature/x").unwrap();
        for bad in ["a..b", "a b", "-x/", "x.lock", ""] {
            assert!(check_ref(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}

/// `url` without a password in its userinfo (`https://user:secret@host/p` → `https://user@host/p`).
pub(crate) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            format!("{scheme}://{user}@{host}{path}")
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod redact_tests {
    #[test]
    fn passwords_are_removed() {
        assert_eq!(
            super::redact_url("https://u:s3cret@h/p.git"),
            "https://u@h/p.git"
        );
        assert_eq!(super::redact_url("https://h/p.git"), "https://h/p.git");
        assert_eq!(super::redact_url("git@h:p.git"), "git@h:p.git");
        assert_eq!(super::redact_url("https://u:a@b@h/p"), "https://u@h/p");
    }
}
