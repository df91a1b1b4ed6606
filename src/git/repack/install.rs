//! Moving the new pack into place: written in a private staging directory, checked to hold
//! exactly the wanted objects, synced, then renamed into `objects/pack`.

use std::{
    fs,
    path::{Path, PathBuf},
    sync::atomic::AtomicBool,
    time::SystemTime,
};

use gix::ObjectId;

use super::{Error, ErrorKind, crashed, stop_point};

/// Name prefix of the directories new packs are written in, see [`Staging`].
pub(super) const STAGING_PREFIX: &str = ".tmp-consolidate-";

/// Check the pack written into the staging directory, make it durable and move it into
/// `pack_dir`, data before index so that readers never see an index without its pack. Returns
/// its name (`pack-<hex>`).
pub(super) fn install(
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
    stop_point()?;
    for (path, ext) in [(data_path, "pack"), (index_path, "idx")] {
        let target = pack_dir.join(format!("{new_pack}.{ext}"));
        // Same name means same content: an unchanged repository yields the pack it already has.
        if !target.exists() {
            fs::rename(path, &target).map_err(|err| Error::io("could not move", path, &err))?;
        }
        stop_point()?;
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
pub(super) struct Staging(pub(super) PathBuf);

impl Staging {
    /// Create a fresh staging directory in `pack_dir`.
    pub(super) fn create(pack_dir: &Path) -> Result<Self, Error> {
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
        if crashed() {
            return;
        }
        // Leftovers of a failed removal are cleaned up by a later run once they are stale.
        let _ = fs::remove_dir_all(&self.0);
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

/// The file name of a pack without extension, like `pack-1234…`.
fn pack_name(path: &Path) -> Option<String> {
    path.file_stem()
        .map(|stem| stem.to_string_lossy().into_owned())
}
