//! What the object directory holds when a run starts: the packs to copy entries from and to
//! delete once the new pack is in place, loose objects, and stale leftovers of writers that
//! crashed (including runs of this module) that the run cleans up.

use std::{
    collections::BTreeMap,
    fs, io,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use super::{Error, install::STAGING_PREFIX};

/// Temporary files younger than this may belong to a writer that is still running.
const STALE_TEMPORARY_AGE: Duration = Duration::from_hours(1);

/// Pack sidecar files that belong to the pack and go away with it.
const DISPOSABLE_PACK_EXTENSIONS: &[&str] = &["idx", "pack", "rev", "bitmap", "mtimes"];

/// Pack sidecar files whose presence means the pack must not be deleted.
const PROTECTING_PACK_EXTENSIONS: &[&str] = &["keep", "promisor"];

/// The files of one pack.
#[derive(Debug, Default)]
pub(super) struct PackFiles {
    /// Every `pack-<hex>.<ext>` file by extension, protecting ones excluded.
    pub(super) files: Vec<(String, PathBuf)>,
    /// Whether a `.keep` or `.promisor` file forbids deleting the pack.
    pub(super) protected: bool,
    /// When the `.pack` file was last modified, to tell older packs from newer ones.
    modified: Option<SystemTime>,
}

/// What the object directory holds at one moment.
#[derive(Debug, Default)]
pub(super) struct Inventory {
    /// Packs by name (`pack-<hex>`).
    pub(super) packs: BTreeMap<String, PackFiles>,
    /// Paths of loose objects.
    pub(super) loose_objects: Vec<PathBuf>,
    /// Fan-out directories, which may be empty afterwards. Those that are empty already are
    /// included: a run that stopped after deleting their objects left them behind.
    pub(super) fan_out_dirs: Vec<PathBuf>,
    /// Temporary files old enough to be leftovers of crashed writers.
    pub(super) stale_temporaries: Vec<PathBuf>,
    /// Staging directories of runs that crashed.
    pub(super) stale_staging_dirs: Vec<PathBuf>,
    /// Total size of pack files and loose objects.
    pub(super) bytes: u64,
}

impl Inventory {
    /// List packs, loose objects and stale temporary files below `objects_dir`.
    pub(super) fn scan(objects_dir: &Path, object_hash: gix::hash::Kind) -> Result<Self, Error> {
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
                for (name, path, metadata) in list(&path)? {
                    if metadata.is_file()
                        && name.len() == loose_name_len
                        && name.bytes().all(|b| b.is_ascii_hexdigit())
                    {
                        inventory.bytes += metadata.len();
                        inventory.loose_objects.push(path);
                    } else {
                        inventory.note_if_stale_temporary(&name, path, &metadata, now);
                    }
                }
                inventory.fan_out_dirs.push(path);
            } else {
                inventory.note_if_stale_temporary(&name, path, &metadata, now);
            }
        }
        Ok(inventory)
    }

    /// Index paths of the packs that have both index and data, oldest first.
    pub(super) fn source_packs(&self) -> Vec<PathBuf> {
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

/// Split `pack-<hex>.<ext>` into its stem and extension; `None` for any other name.
pub(super) fn pack_file_parts(name: &str) -> Option<(&str, &str)> {
    let (stem, ext) = name.rsplit_once('.')?;
    let hex = stem.strip_prefix("pack-")?;
    (!hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some((stem, ext))
}
