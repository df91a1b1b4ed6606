//! Progress on stderr while a pack arrives: one line rewritten in place when stderr is a
//! terminal, an info log line per sample otherwise. Events on stdout are never touched.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::thread::JoinHandle;

use async_channel::Receiver;
use gitfeed::{Progress, ProgressPhase};

/// Whether a progress line stands on the terminal now. Whoever writes to the terminal (a log
/// line, an event) takes it and clears the line first, so nothing is written after it.
static SHOWN: Mutex<bool> = Mutex::new(false);

/// Goes back to the start of the line and erases it.
const ERASE: &str = "\r\x1b[K";

/// Shows the samples of a follower on a thread of its own until their channel closes, for
/// `watch --once`, whose own thread is busy with the attempt. A feed's samples are shown by
/// the thread that prints its events instead (see [`show`]).
pub(crate) struct ProgressLine {
    receiver: Receiver<Progress>,
    thread: Option<JoinHandle<()>>,
}

impl ProgressLine {
    /// Whether anyone would see progress: stderr is a terminal, or info lines are logged.
    pub fn wanted() -> bool {
        std::io::stderr().is_terminal() || log::log_enabled!(log::Level::Info)
    }

    /// Shows what `receiver` brings on a thread of its own.
    pub fn start(receiver: Receiver<Progress>) -> ProgressLine {
        let terminal = std::io::stderr().is_terminal();
        let samples = receiver.clone();
        let show = move || {
            while let Ok(sample) = samples.recv_blocking() {
                show(terminal, &sample);
            }
            clear();
        };
        let thread = std::thread::Builder::new()
            .name("gitfeed-progress".into())
            .spawn(show)
            .inspect_err(|err| log::debug!("cannot start the progress thread: {err}"))
            .ok();
        ProgressLine { receiver, thread }
    }

    /// Shows what is left, clears the line and ends the thread.
    pub fn stop(mut self) {
        self.receiver.close();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Shows one sample: on the line rewritten in place when `terminal` (stderr is one), as an
/// info log line otherwise.
pub(crate) fn show(terminal: bool, sample: &Progress) {
    if terminal {
        let mut shown = SHOWN.lock().unwrap_or_else(|err| err.into_inner());
        *shown = draw(&mut std::io::stderr().lock(), *shown, sample).unwrap_or(false);
    } else {
        log::info!("{sample}");
    }
}

/// Erases the progress line, if one stands on the terminal.
pub(crate) fn clear() {
    let mut shown = SHOWN.lock().unwrap_or_else(|err| err.into_inner());
    if *shown {
        let _ = std::io::stderr().lock().write_all(ERASE.as_bytes());
        *shown = false;
    }
}

/// Writes what the terminal shows for `sample`, `shown` telling whether a line stands there
/// now; returns whether one stands there after. A finished transfer leaves no line behind.
fn draw(out: &mut dyn Write, shown: bool, sample: &Progress) -> std::io::Result<bool> {
    if sample.phase == ProgressPhase::Finished {
        if shown {
            out.write_all(ERASE.as_bytes())?;
            out.flush()?;
        }
        return Ok(false);
    }
    write!(out, "{ERASE}{sample}")?;
    out.flush()?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(phase: &str, objects: u64) -> Progress {
        serde_json::from_str(&format!(
            r#"{{"source":"policies","phase":"{phase}","objects":{objects},"total_objects":45000,"bytes":64172851,"elapsed_ms":3000}}"#
        ))
        .expect("a sample")
    }

    /// Each sample rewrites the one line; the finished transfer erases it.
    #[test]
    fn one_line_rewritten_in_place() {
        let mut out = Vec::new();
        let shown = draw(&mut out, false, &sample("receiving", 12_345)).expect("drawn");
        let shown = draw(&mut out, shown, &sample("resolving", 45_000)).expect("drawn");
        let shown = draw(&mut out, shown, &sample("finished", 45_000)).expect("drawn");
        assert!(!shown);
        assert_eq!(
            String::from_utf8(out).expect("text"),
            "\r\x1b[Kpolicies: receiving objects 12,345/45,000, 61.2 MiB\
             \r\x1b[Kpolicies: resolving deltas of 45,000 objects, 61.2 MiB\
             \r\x1b[K"
        );
        let mut out = Vec::new();
        assert!(!draw(&mut out, false, &sample("finished", 45_000)).expect("drawn"));
        assert!(out.is_empty(), "nothing to erase");
    }
}
