//! Removing what the new pack replaces, once it is in place: old packs and their sidecar
//! files, loose objects, stale caches and leftovers, and `shallow` entries whose commits are
//! gone.

use std::{fs, io, path::Path};

use gix::ObjectId;

use super::{
    Error, ErrorKind, Stats,
    inventory::{Inventory, PackFiles},
    open, stop_point,
};

/// Delete what `before` lists except the pack named `new_pack` and protected packs, counting
/// into `stats`. Carries on after a failure so that one stubborn file does not keep everything
/// else around, and reports the first failure.
pub(super) fn remove_previous(
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
    stop_point()?;
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
        stop_point()?;
    }
    for path in &before.loose_objects {
        note(remove_if_present(path).map_err(|err| Error::io("could not remove", path, &err)));
        stats.loose_objects_removed += 1;
        stop_point()?;
    }
    // Before the fan-out directories, as a writer that died may have left its temporary file in
    // one of them.
    for path in &before.stale_temporaries {
        note(remove_if_present(path).map_err(|err| Error::io("could not remove", path, &err)));
    }
    stop_point()?;
    for dir in &before.fan_out_dirs {
        // Fails harmlessly when a concurrent writer put a new object there meanwhile.
        let _ = fs::remove_dir(dir);
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
pub(super) fn prune_shallow(
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

/// Delete one pack, index first so that readers stop finding it before its data disappears.
fn remove_pack(pack: &PackFiles) -> Result<(), Error> {
    let mut files: Vec<_> = pack.files.iter().collect();
    files.sort_by_key(|(ext, _)| ext != "idx");
    for (_, path) in files {
        remove_if_present(path).map_err(|err| Error::io("could not remove", path, &err))?;
        stop_point()?;
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
