//! The on-disk cache: one directory per source holding its bare clone and the last delivered
//! commit.
//!
//! ```text
//! <cache_dir>/<key>/repo.git     the bare clone
//! <cache_dir>/<key>/state.json   {"delivered": "<commit>"}
//! ```

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One source's directory in the cache.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    dir: PathBuf,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    delivered: Option<String>,
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

    /// Where the bare clone lives.
    pub fn git_dir(&self) -> PathBuf {
        self.dir.join("repo.git")
    }

    fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    /// The commit last delivered to the consumer, if any. A missing or unreadable state file
    /// means nothing was delivered: the next update lists every file, which is always correct.
    pub fn delivered(&self) -> Option<String> {
        let text = fs::read_to_string(self.state_path()).ok()?;
        let state: State = serde_json::from_str(&text).ok()?;
        state.delivered.filter(|id| is_commit_id(id))
    }

    /// Records `commit` as delivered, atomically: a crash leaves either the old or the new
    /// state, never a torn file.
    pub fn set_delivered(&self, commit: &str) -> io::Result<()> {
        if !is_commit_id(commit) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("`{commit}` is not a commit id"),
            ));
        }
        fs::create_dir_all(&self.dir)?;
        let state = State {
            delivered: Some(commit.to_owned()),
        };
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

    /// Takes the entry's lock for as long as the returned file is open. Only one process
    /// writes a cache entry at a time: a second one gets `WouldBlock` instead of corrupting
    /// the first one's clone (or having its leftovers "repaired" away mid-fetch).
    pub fn lock(&self) -> io::Result<fs::File> {
        fs::create_dir_all(&self.dir)?;
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join("lock"))?;
        match file.try_lock() {
            Ok(()) => Ok(file),
            Err(fs::TryLockError::WouldBlock) => Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("{} is in use by another process", self.dir.display()),
            )),
            Err(fs::TryLockError::Error(err)) => Err(err),
        }
    }

    /// Deletes the clone (not the delivery state), so the next attempt clones afresh.
    pub fn delete_clone(&self) -> io::Result<()> {
        match fs::remove_dir_all(self.git_dir()) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
            _ => Ok(()),
        }
    }
}

/// 40 hex digits: the only thing that may be written as a delivered commit.
pub(crate) fn is_commit_id(id: &str) -> bool {
    id.len() == 40 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivered_round_trip() {
        let dir = std::env::temp_dir().join(format!("gitfeed-cache-{}", std::process::id()));
        let entry = Entry::new(&dir, "k");
        assert_eq!(entry.delivered(), None);
        let id = "0123456789abcdef0123456789abcdef01234567";
        entry.set_delivered(id).unwrap();
        assert_eq!(entry.delivered().as_deref(), Some(id));
        assert!(entry.set_delivered("../../etc/passwd").is_err());
        assert_eq!(entry.delivered().as_deref(), Some(id));
        fs::write(entry.state_path(), "{garbage").unwrap();
        assert_eq!(entry.delivered(), None);
        let held = entry.lock().unwrap();
        assert_eq!(entry.lock().unwrap_err().kind(), io::ErrorKind::WouldBlock);
        drop(held);
        entry.lock().unwrap();
        entry.delete_clone().unwrap();
        fs::remove_dir_all(dir).unwrap();
    }
}
