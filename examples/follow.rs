//! Follows one remote and prints a line per event until interrupted.
//!
//! Run with: cargo run --example follow -- <URL> [BRANCH]

use std::time::Duration;

use gitfeed::{Event, Feed, Source};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args.next().unwrap_or_else(|| ".".to_owned());
    let cache = std::env::temp_dir().join("gitfeed-example");

    let feed = Feed::new(&cache);
    let events = feed.events();
    let mut source = Source::new("example", url);
    source.reference = args.next();
    source.interval = Duration::from_secs(2);
    feed.add(source)?;

    std::thread::spawn(move || feed.run());
    while let Ok(event) = events.recv_blocking() {
        match event {
            Event::Update(update) => println!(
                "{} {} -> {}: {} changed file(s){}",
                update.reference,
                update.old.as_deref().map_or("(first)", |old| &old[..12]),
                &update.new[..12],
                update.changes.len(),
                if update.forced { " (forced)" } else { "" }
            ),
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
