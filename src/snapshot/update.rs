//! Writing a snapshot from what changed since the current one, without the whole tree.
//!
//! An update's changes name every path whose entry differs between the current snapshot's
//! commit and the next one. Whether an entry is written depends on the others only through
//! names (see the hostile-tree rules in the `snapshot` module docs), so a change whose names
//! are not shared with another entry's, and that involves regular files alone, can be applied
//! to what the current snapshot's manifest records without listing the tree again.

use std::collections::{HashMap, HashSet};

use super::manifest::{Manifest, split};
use super::{
    Entry, EntryKind, Left, Listed, Planned, Report, SnapshotDir, SnapshotError, check_commit,
    check_target, claim, component_problem, folded_path, read_target,
};

/// A path whose entry differs between the commit of a [`Base`] and the next one, as the git
/// layer finds it when it compares their trees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Change {
    /// Path components, raw, as in [`Entry::components`].
    pub components: Vec<Vec<u8>>,
    /// What the base's commit holds there, with its size; `None` when nothing (or a submodule,
    /// which is never written).
    pub old: Option<(EntryKind, u64)>,
    /// What the next commit holds there: kind, blob id and size; `None` when nothing (or a
    /// submodule).
    pub new: Option<(EntryKind, String, u64)>,
    /// Whether the entry, or a directory on its path, has the same name as another entry of
    /// its directory when case is ignored ([`super::fold`]), in either commit. Which of such
    /// names is written depends on the others, so the whole tree must be planned again.
    pub crowded: bool,
}

/// What [`SnapshotDir::update`] starts from: the snapshot `current` points at, finished by
/// gitfeed, written from entries listed with the same settings.
#[derive(Debug)]
pub(crate) struct Base {
    /// Its commit.
    pub commit: String,
    /// What its manifest records.
    manifest: Manifest,
}

impl Base {
    /// The sum of the entry sizes of the snapshot that `changes` make of this one: what a
    /// limit on a snapshot's size is checked against.
    pub fn bytes_after(&self, changes: &[Change]) -> u64 {
        let (mut added, mut removed) = (0u64, 0u64);
        for change in changes {
            added = added.saturating_add(change.new.as_ref().map_or(0, |new| new.2));
            removed = removed.saturating_add(change.old.map_or(0, |old| old.1));
        }
        self.manifest
            .listing
            .bytes
            .saturating_add(added)
            .saturating_sub(removed)
    }
}

impl SnapshotDir {
    /// The snapshot `current` points at, for [`SnapshotDir::update`]: if gitfeed finished it
    /// and recorded it as listed with the settings given to [`SnapshotDir::listed_with`].
    pub fn base(&self) -> Option<Base> {
        let commit = self.current()?;
        let manifest = self.manifest(&commit)?;
        (manifest.listing.settings == self.settings).then_some(Base { commit, manifest })
    }

    /// Writes the snapshot of `commit` from the snapshot `base` and the `changes` between their
    /// commits alone, without the whole tree, and makes it current: as [`SnapshotDir::write`]
    /// would with every entry of `commit`, at a cost that grows with the changes, not with the
    /// tree (but for one `lstat` per file the base shares, see the module docs).
    ///
    /// `changes` must hold every path that differs, each once. `Ok(None)`, with nothing
    /// written, when the changes alone cannot tell what the snapshot holds: `current` has
    /// moved from `base`, `commit` has a snapshot already, or a change involves a symlink, a
    /// crowded name ([`Change::crowded`]) or an entry the base left out. Write the whole tree
    /// with [`SnapshotDir::write`] then.
    pub fn update(
        &self,
        commit: &str,
        base: Base,
        changes: &[Change],
        read: &mut dyn FnMut(&str, &mut dyn std::io::Write) -> std::io::Result<()>,
    ) -> Result<Option<Report>, SnapshotError> {
        check_commit(commit)?;
        if base.commit == commit
            || self.current().as_deref() != Some(base.commit.as_str())
            || self.manifest(commit).is_some()
        {
            return Ok(None);
        }
        let Some(Derived {
            entries,
            kept,
            skipped,
        }) = derive(&base.manifest, changes)
        else {
            return Ok(None);
        };
        self.prepare()?;
        let (mut plan, skipped) = rank(&entries, skipped);
        // The symlinks are the base's, with the same targets: their checks come out as they
        // did, and are made again so that nothing here depends on it.
        let links: HashSet<Vec<u8>> = plan
            .iter()
            .filter(|planned| planned.entry.kind == EntryKind::Symlink)
            .map(|planned| folded_path(&planned.entry.components))
            .collect();
        let mut left = skipped;
        let mut checked = Vec::with_capacity(plan.len());
        for mut planned in plan.drain(..) {
            if planned.entry.kind == EntryKind::Symlink {
                let target = read_target(planned.entry, read)?;
                if let Err(reason) = check_target(&planned.entry.components, &target, &links) {
                    left.push(Left::new(planned.rank, planned.entry, reason.into()));
                    continue;
                }
                planned.target = Some(target.bytes);
            }
            checked.push(planned);
        }
        let bytes = base.bytes_after(changes);
        let listed = Listed {
            plan: &checked,
            kept: &kept,
        };
        self.finish(commit, listed, left, bytes, read, Some(base.manifest))
            .map(Some)
    }
}

/// The entries, and those left out, of the snapshot that `changes` make of the snapshot
/// `base` describes.
#[derive(Debug)]
struct Derived {
    /// The entries to write besides `kept`: the base's symlinks and the new files; in no
    /// particular order.
    entries: Vec<Entry>,
    /// The base's files that did not change, by their position in its manifest, in order.
    /// They are not made entries: an update of a large tree would spend more on that than on
    /// anything else but the `lstat` of each.
    kept: Vec<usize>,
    /// What is left out, with the reasons: the base's, and new entries the checks on a single
    /// path refuse.
    skipped: Vec<(Vec<Vec<u8>>, String)>,
}

/// What the snapshot that `changes` make of `base` holds, or `None` when that cannot be told
/// from the changes alone.
///
/// Whether an entry is written depends on the others only through names: one that is the same
/// name as another's when case is ignored, or runs through another's file or symlink, and
/// symlink targets that run through other symlinks. A change without a crowded name
/// ([`Change::crowded`]) shares no name with any other entry, so it decides nothing about the
/// others, nor they about it, as long as it is a regular file on both sides: a symlink changes
/// what other symlinks' targets run through. A change whose path the base holds other than as
/// a file it wrote (left out, or a symlink) is not followed either, nor one that disagrees
/// with the base (a file it does not hold, an added path it holds).
fn derive(base: &Manifest, changes: &[Change]) -> Option<Derived> {
    let mut removed = HashSet::new();
    let mut added = Vec::new();
    let mut skipped = base.skipped.clone();
    for change in changes {
        if change.crowded {
            return None;
        }
        let plain = !change.components.is_empty()
            && change
                .components
                .iter()
                .all(|component| component_problem(component).is_none());
        let path = change.components.join(&b'/');
        match change.old {
            None | Some((EntryKind::Gitlink, _)) => {
                let held = plain && (base.file(&path).is_some() || base.link(&path).is_some());
                if held || base.left_out(&change.components) {
                    return None;
                }
            }
            Some((EntryKind::File { .. }, _)) => {
                if !plain || base.file(&path).is_none() {
                    return None;
                }
                removed.insert(path);
            }
            Some((EntryKind::Symlink, _)) => return None,
        }
        match &change.new {
            None | Some((EntryKind::Gitlink, ..)) => {}
            Some((kind @ EntryKind::File { .. }, id, size)) => {
                let entry = Entry {
                    components: change.components.clone(),
                    kind: *kind,
                    id: id.clone(),
                    size: *size,
                };
                // Alone, the entry meets only the checks on its own path.
                match claim(std::slice::from_ref(&entry), 0, &mut HashMap::new()) {
                    Ok(()) => added.push(entry),
                    Err(reason) => skipped.push((entry.components, reason)),
                }
            }
            Some((EntryKind::Symlink, ..)) => return None,
        }
    }
    let kept = (0..base.files.len())
        .filter(|&index| !removed.contains(base.at(base.files[index].0)))
        .collect();
    let mut entries = Vec::with_capacity(base.links.len() + added.len());
    for link in &base.links {
        entries.push(Entry {
            components: split(base.at(link.path)),
            kind: EntryKind::Symlink,
            id: link.id.as_str().to_owned(),
            size: link.size,
        });
    }
    entries.extend(added);
    Some(Derived {
        entries,
        kept,
        skipped,
    })
}

/// `entries` to write in the byte order of their components, and what is left out in the
/// order it was (what the report sorts by components keeps that order among equal paths).
fn rank(entries: &[Entry], skipped: Vec<(Vec<Vec<u8>>, String)>) -> (Vec<Planned<'_>>, Vec<Left>) {
    let mut order: Vec<&Entry> = entries.iter().collect();
    order.sort_by(|a, b| a.components.cmp(&b.components));
    let plan: Vec<Planned<'_>> = order
        .into_iter()
        .enumerate()
        .map(|(rank, entry)| Planned {
            rank,
            entry,
            target: None,
        })
        .collect();
    let left = skipped
        .into_iter()
        .enumerate()
        .map(|(index, (components, reason))| Left {
            rank: plan.len() + index,
            components,
            reason,
        })
        .collect();
    (plan, left)
}
