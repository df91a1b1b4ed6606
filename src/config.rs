//! `gitfeed run --config FILE`: a feed's settings and its sources in one JSON file, applied
//! again whenever the file changes or `SIGHUP` arrives.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use gitfeed::{FeedHandle, Source};
use serde::Deserialize;

/// The file's content: `{"cache_dir": …, "concurrent_fetches": …, "sources": [Source, …]}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where clones and delivery state live; `--cache-dir` or the default when absent.
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
    /// How many fetch attempts run at once.
    #[serde(default)]
    pub concurrent_fetches: Option<usize>,
    /// The sources, each in the JSON form of [`Source`].
    pub sources: Vec<Source>,
    /// The version of the file this was read from, taken before it was read: a change made
    /// while it was read is seen at the next look.
    #[serde(skip)]
    stamp: Option<Stamp>,
}

impl Config {
    /// Reads and checks the file: valid JSON of the right shape, every source valid, and no
    /// two sources of one name.
    pub fn load(path: &Path) -> Result<Config, String> {
        let stamp = stamp(path);
        let text = std::fs::read_to_string(path).map_err(|err| format!("cannot read it: {err}"))?;
        let mut config = Config::parse(&text)?;
        config.stamp = stamp;
        Ok(config)
    }

    fn parse(text: &str) -> Result<Config, String> {
        let config: Config = serde_json::from_str(text).map_err(|err| err.to_string())?;
        if config.concurrent_fetches == Some(0) {
            return Err("concurrent_fetches must be at least 1".into());
        }
        let mut names = HashSet::new();
        for source in &config.sources {
            source.validate().map_err(|err| err.to_string())?;
            if !names.insert(source.name.as_str()) {
                return Err(format!("two sources are named `{}`", source.name));
            }
        }
        Ok(config)
    }
}

/// What identifies one version of the file on disk: a change of any of these is a new version
/// (an edit in place changes the size or the modification time, an editor's or a config
/// manager's rename changes the inode).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: (u64, u64),
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let metadata = std::fs::metadata(path).ok()?;
    Some(Stamp {
        len: metadata.len(),
        modified: metadata.modified().ok(),
        inode: (metadata.dev(), metadata.ino()),
    })
}

/// The configuration a running feed was given, and the file it came from.
#[derive(Debug)]
pub struct Applied {
    path: PathBuf,
    cache_dir: Option<PathBuf>,
    concurrent_fetches: Option<usize>,
    sources: BTreeMap<String, Source>,
    /// The version of the file last read, valid or not: an invalid file is reported once, not
    /// at every look.
    seen: Option<Stamp>,
}

impl Applied {
    /// Adds every source of `config` to the feed behind `feed`.
    pub fn start(path: PathBuf, config: Config, feed: &FeedHandle) -> Result<Applied, String> {
        let mut applied = Applied {
            path,
            cache_dir: config.cache_dir.clone(),
            concurrent_fetches: config.concurrent_fetches,
            sources: BTreeMap::new(),
            seen: config.stamp.clone(),
        };
        applied.apply(config, feed)?;
        Ok(applied)
    }

    /// The file the configuration comes from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The names of the sources the feed follows now.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.sources.keys().map(String::as_str)
    }

    /// True when the file on disk is not the version last read.
    pub fn changed(&self) -> bool {
        stamp(&self.path) != self.seen
    }

    /// Reads the file again and applies what changed: sources added, removed or changed.
    /// Unchanged sources are not touched, so they keep their clone, schedule and state. On an
    /// invalid file nothing changes, and the error says why; the returned notes say what
    /// changed that only a restart applies.
    pub fn reload(&mut self, feed: &FeedHandle) -> Result<Vec<String>, String> {
        self.seen = stamp(&self.path);
        let config = Config::load(&self.path)?;
        let mut notes = Vec::new();
        if config.cache_dir != self.cache_dir {
            notes.push("cache_dir changed; it takes effect when gitfeed restarts".to_owned());
        }
        if config.concurrent_fetches != self.concurrent_fetches {
            notes.push(
                "concurrent_fetches changed; it takes effect when gitfeed restarts".to_owned(),
            );
        }
        self.apply(config, feed)?;
        Ok(notes)
    }

    fn apply(&mut self, config: Config, feed: &FeedHandle) -> Result<(), String> {
        let mut next = BTreeMap::new();
        for source in config.sources {
            next.insert(source.name.clone(), source);
        }
        for name in self.sources.keys() {
            if !next.contains_key(name) {
                log::info!("{name}: removed from the configuration");
                feed.remove(name).map_err(|err| err.to_string())?;
            }
        }
        for (name, source) in &next {
            match self.sources.get(name) {
                Some(running) if running == source => {}
                running => {
                    if running.is_some() {
                        log::info!("{name}: changed in the configuration");
                    }
                    feed.add(source.clone()).map_err(|err| err.to_string())?;
                }
            }
        }
        self.sources = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_checks_a_config() {
        let config = Config::parse(
            r#"{"cache_dir": "/c", "concurrent_fetches": 2, "sources": [
                {"name": "a", "url": "git://h/a.git", "exec": "true", "exec_timeout": "5s"},
                {"name": "b", "url": "/srv/b.git", "interval": "10s"}]}"#,
        )
        .expect("valid");
        assert_eq!(config.cache_dir, Some(PathBuf::from("/c")));
        assert_eq!(config.concurrent_fetches, Some(2));
        assert_eq!(config.sources.len(), 2);
        assert_eq!(config.sources[0].exec.as_deref(), Some("true"));
        for (text, problem) in [
            (r#"{"sources": [{"name": "a"}]}"#, "missing field `url`"),
            (r#"{"sources": [], "extra": 1}"#, "unknown field `extra`"),
            (
                r#"{"sources": [{"name": "a", "url": "ftp://h/a"}]}"#,
                "unsupported url scheme",
            ),
            (
                r#"{"sources": [{"name": "a", "url": "/a"}, {"name": "a", "url": "/b"}]}"#,
                "two sources are named `a`",
            ),
            (r#"{"concurrent_fetches": 0, "sources": []}"#, "at least 1"),
            ("{", "EOF"),
        ] {
            let err = Config::parse(text).expect_err(text);
            assert!(err.contains(problem), "{text}: {err}");
        }
    }

    /// The README's example is a valid file.
    #[test]
    fn the_readme_example_parses() {
        let readme = include_str!("../README.md");
        let section = readme
            .split("### Many repositories in one process")
            .nth(1)
            .expect("the section");
        let example = section
            .split("```json\n")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .expect("a JSON example");
        let config = Config::parse(example).expect("valid");
        assert_eq!(config.sources.len(), 2);
        assert_eq!(
            config.sources[0].exec.as_deref(),
            Some("systemctl reload opa")
        );
    }
}
