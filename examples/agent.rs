//! A small policy agent: follows a repository, keeps the files it cares about in memory,
//! applies each update, acknowledges it, and prints one line per update.
//!
//! By default it follows the repository it is run from, so committing in another terminal
//! shows the flow end to end. Arguments: an optional URL, then optional extensions to keep.
//!
//! Its cache is `$AGENT_CACHE_DIR`, or `gitfeed-agent` in the temporary directory.
//!
//! Run with: cargo run --example agent -- . rs md

use std::collections::BTreeMap;
use std::time::Duration;

use gitfeed::{ChangeKind, Event, Feed, Source};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args.next().unwrap_or_else(|| ".".to_owned());
    let extensions: Vec<String> = args.collect();

    let mut source = Source::new("agent", url);
    source.interval = Duration::from_secs(2);
    source.contents = Some(1 << 20);
    // The agent keeps its files in memory only: after a restart it needs all of them again,
    // not only what changed since the last update it acknowledged.
    source.list_on_start = true;
    source.filter.extensions = extensions;

    let cache = std::env::var_os("AGENT_CACHE_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("gitfeed-agent"));
    let feed = Feed::new(cache);
    let events = feed.events();
    let handle = feed.handle();
    feed.add(source)?;
    std::thread::spawn(move || feed.run());

    // The agent's view of the repository: path -> bytes.
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    while let Ok(event) = events.recv_blocking() {
        match event {
            Event::Update(update) => {
                if update.old.is_none() {
                    // A full listing: start from nothing.
                    files.clear();
                }
                let (mut added, mut modified, mut deleted, mut left_out) = (0, 0, 0, 0);
                for change in &update.changes {
                    match change.kind {
                        ChangeKind::Deleted => {
                            files.remove(&change.path);
                            deleted += 1;
                        }
                        kind => match change.bytes() {
                            Some(bytes) => {
                                files.insert(change.path.clone(), bytes);
                                if kind == ChangeKind::Added {
                                    added += 1;
                                } else {
                                    modified += 1;
                                }
                            }
                            None => left_out += 1,
                        },
                    }
                }
                // Applied: tell the feed, so a restart does not send this update again.
                handle.acknowledge(&update.source, &update.new)?;
                let bytes: usize = files.values().map(Vec::len).sum();
                println!(
                    "{} {}: +{added} ~{modified} -{deleted}{}{} -> {} files, {bytes} bytes held",
                    &update.new[..12],
                    update.reference,
                    if left_out > 0 {
                        format!(" ({left_out} too large)")
                    } else {
                        String::new()
                    },
                    if update.forced {
                        " (history rewritten)"
                    } else {
                        ""
                    },
                    files.len(),
                );
            }
            Event::State(state) => println!(
                "{} is {:?}{}",
                state.source,
                state.state,
                state.error.map(|e| format!(": {e}")).unwrap_or_default()
            ),
            _ => {}
        }
    }
    Ok(())
}
