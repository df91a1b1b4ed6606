//! While `watch` or `run` follows its sources: the signals it acts on and, for `run`, changes
//! to its config file. One task on the feed's own thread waits for both through
//! [`gitfeed::readable`], so they cost no thread: the signals arrive through signal-hook's
//! self-pipe, the file's changes through inotify.

use std::ffi::c_int;
use std::future::pending;
use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_channel::Sender;
use gitfeed::{Event, FeedHandle, Warning};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::backend::SignalDelivery;
use signal_hook::iterator::exfiltrator::SignalOnly;
use smol::future::or;

use crate::config;
use crate::systemd;

/// How long the file's directory must stay quiet before the file is read: one save by an
/// editor or a config manager is several changes (a temporary file, a rename, a symlink
/// swapped), and the file is read once they are done.
const SETTLE: Duration = Duration::from_millis(100);

/// The longest a stream of changes in the directory holds the reading back.
const SETTLE_AT_MOST: Duration = Duration::from_secs(1);

/// How often the file is looked at while its directories cannot be watched.
const LOOK_INTERVAL: Duration = Duration::from_secs(1);

/// What a running command follows: one source given on the command line, or a config file's.
pub(crate) enum Sources {
    One(String),
    File(Box<config::Applied>),
}

impl Sources {
    fn names(&self) -> Vec<String> {
        match self {
            Sources::One(name) => vec![name.clone()],
            Sources::File(applied) => applied.names().map(str::to_owned).collect(),
        }
    }

    /// Applies the config file again, if there is one and `always` or it changed on disk. An
    /// invalid file changes nothing; it is reported on stderr, and the `warning` event to
    /// print is returned.
    fn reload(&mut self, feed: &FeedHandle, always: bool) -> Option<Event> {
        let Sources::File(applied) = self else {
            return None;
        };
        if !always && !applied.changed() {
            return None;
        }
        match applied.reload(feed) {
            Ok(notes) => {
                for note in notes {
                    log::warn!("{}: {note}", applied.path().display());
                }
                None
            }
            Err(problem) => {
                let path = applied.path().display().to_string();
                eprintln!("gitfeed: {path}: {problem}; keeping the running configuration");
                let message = format!("{problem}; keeping the running configuration");
                Some(Event::Warning(Warning::new(path, None, message)))
            }
        }
    }
}

/// SIGHUP, SIGTERM and SIGINT, from the moment they are installed until this is dropped,
/// which restores the handlers that were there before.
pub(crate) struct Signals(SignalDelivery<UnixStream, SignalOnly>);

impl Signals {
    pub fn install() -> io::Result<Signals> {
        let (read, write) = UnixStream::pair()?;
        // The handler must never block on a full socket, nor the task on an empty one.
        read.set_nonblocking(true)?;
        write.set_nonblocking(true)?;
        let signals = [SIGHUP, SIGTERM, SIGINT];
        Ok(Signals(SignalDelivery::with_pipe(
            read, write, SignalOnly, signals,
        )?))
    }

    /// The signals that arrived since the last call, each once; waits for one if none has.
    async fn next(&mut self) -> io::Result<Vec<c_int>> {
        loop {
            // Taken before the wait: a signal that arrives after this leaves a byte in the
            // socket, which ends the wait.
            let arrived: Vec<c_int> = self.0.pending().collect();
            if !arrived.is_empty() {
                return Ok(arrived);
            }
            gitfeed::readable(self.0.get_read()).await?;
        }
    }
}

/// What woke the control task.
enum Woke {
    Signals(io::Result<Vec<c_int>>),
    FileChanged(io::Result<()>),
    Deadline,
}

/// Acts on signals and on the config file's changes until the feed stops, when the caller
/// drops it; returns only when signals can no longer be waited for.
///
/// SIGHUP applies the config file again and polls every source at once; SIGTERM and SIGINT
/// shut the feed down, so the process ends cleanly (exit status 0) once the attempts in
/// flight are interrupted. A config file is applied again when it changes on disk. The
/// warnings about an invalid file go to `notes`, to be printed with the events. Nothing here
/// blocks the feed's thread: the feed's handle only queues its commands.
pub(crate) async fn run(
    feed: FeedHandle,
    mut sources: Sources,
    mut signals: Signals,
    notes: Sender<Event>,
) -> io::Error {
    let mut file = match &sources {
        Sources::One(_) => None,
        Sources::File(applied) => Some(FileWatch::start(applied.path())),
    };
    loop {
        let deadline = file.as_ref().and_then(FileWatch::deadline);
        let woke = {
            let signal = async { Woke::Signals(signals.next().await) };
            let change = async {
                match file.as_ref().and_then(|file| file.inotify.as_ref()) {
                    Some(inotify) => Woke::FileChanged(inotify.readable().await),
                    None => pending().await,
                }
            };
            let timer = async {
                match deadline {
                    Some(at) => {
                        gitfeed::sleep_until(at).await;
                        Woke::Deadline
                    }
                    None => pending().await,
                }
            };
            or(signal, or(change, timer)).await
        };
        let reload = |sources: &mut Sources, always| {
            if let Some(warning) = sources.reload(&feed, always) {
                // Unbounded: never waits for the printer, whatever stdout does.
                let _ = notes.try_send(warning);
            }
        };
        match woke {
            Woke::Signals(Err(err)) => return err,
            Woke::Signals(Ok(arrived)) => {
                for signal in arrived {
                    if signal == SIGHUP {
                        reload(&mut sources, true);
                        for name in sources.names() {
                            // Fails only once the feed has stopped, when there is nothing to
                            // poll.
                            let _ = feed.trigger(&name);
                        }
                    } else {
                        if let Some(notifier) = systemd::Notifier::from_env() {
                            notifier.send("STOPPING=1");
                        }
                        feed.shutdown();
                    }
                }
            }
            Woke::FileChanged(outcome) => {
                if let Some(file) = &mut file {
                    file.changed(outcome, Instant::now());
                }
            }
            Woke::Deadline => {
                if file.as_mut().is_some_and(|file| file.due(Instant::now())) {
                    reload(&mut sources, false);
                }
            }
        }
    }
}

/// How the config file's changes are noticed: inotify on the directories its path goes
/// through, or a look every second at the file while one of them cannot be watched.
struct FileWatch {
    path: PathBuf,
    inotify: Option<Inotify>,
    /// While the directories settle after a change: when the first and the last change came.
    settling: Option<(Instant, Instant)>,
    /// When to look at the file next, while it cannot be watched.
    next_look: Option<Instant>,
}

impl FileWatch {
    fn start(path: &Path) -> FileWatch {
        let inotify = Inotify::new()
            .inspect_err(|err| {
                log::warn!(
                    "cannot watch {} for changes ({err}); looking at it every second",
                    path.display()
                )
            })
            .ok();
        let mut file = FileWatch {
            path: path.to_owned(),
            inotify,
            settling: None,
            next_look: None,
        };
        file.rewatch(Instant::now());
        file
    }

    /// When the task must wake for the file, if it must.
    fn deadline(&self) -> Option<Instant> {
        match (self.settled_at(), self.next_look) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// When the directories will have settled, while they settle.
    fn settled_at(&self) -> Option<Instant> {
        self.settling
            .map(|(first, last)| (last + SETTLE).min(first + SETTLE_AT_MOST))
    }

    /// The directories changed, or inotify failed: reads what inotify has to say, and starts
    /// or prolongs the settling.
    fn changed(&mut self, outcome: io::Result<()>, now: Instant) {
        let drained = outcome.and_then(|()| self.inotify.as_ref().map_or(Ok(()), Inotify::drain));
        if let Err(err) = drained {
            log::warn!(
                "cannot watch {} for changes any more ({err}); looking at it every second",
                self.path.display()
            );
            self.inotify = None;
            self.rewatch(now);
        }
        let first = self.settling.map_or(now, |(first, _)| first);
        self.settling = Some((first, now));
    }

    /// Whether the file is to be read now: its directories have settled, or it is time to
    /// look. Watches the directories the path goes through afresh, as a change may have
    /// swapped one (a symlink pointed elsewhere, a directory removed).
    fn due(&mut self, now: Instant) -> bool {
        let settled = self.settled_at().is_some_and(|at| now >= at);
        let look = self.next_look.is_some_and(|at| now >= at);
        if !settled && !look {
            return false;
        }
        if settled {
            self.settling = None;
        }
        self.rewatch(now);
        true
    }

    /// Watches the directories the path goes through now, and looks at the file every
    /// second while one of them cannot be watched.
    fn rewatch(&mut self, now: Instant) {
        let watched = match &mut self.inotify {
            Some(inotify) => inotify.watch(&directories(&self.path)),
            None => Err("no inotify".to_owned()),
        };
        self.next_look = match (watched, self.next_look) {
            (Ok(()), _) => None,
            (Err(_), Some(at)) if at > now => Some(at),
            (Err(problem), looking) => {
                // Said once when the watch is lost, not at every look.
                if looking.is_none() && self.inotify.is_some() {
                    log::warn!("{problem}; looking at {} every second", self.path.display());
                }
                Some(now + LOOK_INTERVAL)
            }
        };
    }
}

/// The directories whose entries make up `path`: its own, where an editor or a config manager
/// renames a new version into place, and, when the path goes through symlinks, that of the
/// file it resolves to, where an edit in place happens. (Kubernetes mounts a ConfigMap as
/// symlinks through a `..data` symlink, which it points at a new directory for each version:
/// a change in the path's own directory.)
fn directories(path: &Path) -> Vec<PathBuf> {
    let parent = |path: &Path| match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    let mut dirs = vec![parent(path)];
    if let Ok(target) = std::fs::canonicalize(path) {
        let dir = parent(&target);
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    dirs
}

/// An inotify instance watching directories for what changes a file in them: created,
/// written and closed, renamed in or out, removed, its mode or owner changed. A directory
/// removed or renamed away ends its watch.
#[cfg(any(target_os = "linux", target_os = "android"))]
struct Inotify {
    fd: std::os::fd::OwnedFd,
    /// The watch descriptors of the directories watched now.
    watches: Vec<i32>,
}

#[cfg(any(target_os = "linux", target_os = "android"))]
impl Inotify {
    fn new() -> io::Result<Inotify> {
        use rustix::fs::inotify::{CreateFlags, init};
        let fd = init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)?;
        Ok(Inotify {
            fd,
            watches: Vec::new(),
        })
    }

    /// Watches `dirs` and nothing else; says why when one of them cannot be watched.
    fn watch(&mut self, dirs: &[PathBuf]) -> Result<(), String> {
        use rustix::fs::inotify::{WatchFlags, add_watch, remove_watch};
        let changes = WatchFlags::CLOSE_WRITE
            | WatchFlags::MOVED_TO
            | WatchFlags::MOVED_FROM
            | WatchFlags::CREATE
            | WatchFlags::DELETE
            | WatchFlags::ATTRIB
            | WatchFlags::MOVE_SELF
            | WatchFlags::ONLYDIR;
        let mut watches = Vec::new();
        let mut outcome = Ok(());
        for dir in dirs {
            // A directory watched already keeps its watch descriptor, also under another
            // name.
            match add_watch(&self.fd, dir, changes) {
                Ok(wd) if !watches.contains(&wd) => watches.push(wd),
                Ok(_) => {}
                Err(err) => outcome = Err(format!("cannot watch {}: {err}", dir.display())),
            }
        }
        for wd in self.watches.iter().filter(|wd| !watches.contains(wd)) {
            // Fails for a watch the kernel ended already, with its directory.
            let _ = remove_watch(&self.fd, *wd);
        }
        self.watches = watches;
        outcome
    }

    /// Completes when something has happened in a watched directory.
    async fn readable(&self) -> io::Result<()> {
        gitfeed::readable(&self.fd).await
    }

    /// Reads every event there is, without looking at them: any change, a watch that ended
    /// or lost events all mean the same, that the file is to be looked at again.
    fn drain(&self) -> io::Result<()> {
        use rustix::io::Errno;
        let mut buf = [0; 4096];
        loop {
            match rustix::io::read(&self.fd, &mut buf) {
                Ok(0) | Err(Errno::WOULDBLOCK) => return Ok(()),
                Ok(_) | Err(Errno::INTR) => {}
                Err(err) => return Err(err.into()),
            }
        }
    }
}

/// Without inotify, the file is looked at every second.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
struct Inotify;

#[cfg(not(any(target_os = "linux", target_os = "android")))]
impl Inotify {
    fn new() -> io::Result<Inotify> {
        Err(io::ErrorKind::Unsupported.into())
    }

    fn watch(&mut self, _: &[PathBuf]) -> Result<(), String> {
        Err("no inotify here".to_owned())
    }

    async fn readable(&self) -> io::Result<()> {
        pending().await
    }

    fn drain(&self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A watch with no inotify, as when it cannot be made.
    fn unwatched(now: Instant) -> FileWatch {
        let mut file = FileWatch {
            path: PathBuf::from("/nonexistent/gitfeed.json"),
            inotify: None,
            settling: None,
            next_look: None,
        };
        file.rewatch(now);
        file
    }

    #[test]
    fn a_change_is_read_once_the_directory_is_quiet() {
        let start = Instant::now();
        let ms = |n| start + Duration::from_millis(n);
        let mut file = unwatched(start);
        file.next_look = None;
        file.changed(Ok(()), ms(0));
        file.changed(Ok(()), ms(50));
        assert_eq!(file.deadline(), Some(ms(150)));
        assert!(!file.due(ms(149)));
        assert!(file.due(ms(150)));
        assert!(file.settling.is_none());
        assert!(!file.due(ms(151)), "read once");
    }

    #[test]
    fn a_stream_of_changes_holds_the_reading_back_a_second_at_most() {
        let start = Instant::now();
        let ms = |n| start + Duration::from_millis(n);
        let mut file = unwatched(start);
        file.next_look = None;
        for at in (0..=1_000).step_by(50) {
            file.changed(Ok(()), ms(at));
            file.next_look = None;
        }
        assert_eq!(file.deadline(), Some(ms(1_000)));
        assert!(file.due(ms(1_000)));
    }

    #[test]
    fn without_a_watch_the_file_is_looked_at_every_second() {
        let start = Instant::now();
        let mut file = unwatched(start);
        assert_eq!(file.deadline(), Some(start + LOOK_INTERVAL));
        assert!(!file.due(start + LOOK_INTERVAL - Duration::from_millis(1)));
        assert!(file.due(start + LOOK_INTERVAL));
        assert_eq!(file.deadline(), Some(start + 2 * LOOK_INTERVAL));
        // A failed wait for inotify falls back the same way.
        let mut file = unwatched(start);
        file.next_look = None;
        file.changed(Err(io::ErrorKind::Other.into()), start);
        assert_eq!(file.next_look, Some(start + LOOK_INTERVAL));
    }

    /// A directory that cannot be watched yet is looked at every second, and watched once it
    /// can be.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn a_directory_is_watched_once_it_exists() {
        let dir = tempfile::tempdir().expect("a directory");
        let sub = dir.path().join("later");
        let start = Instant::now();
        let mut file = FileWatch::start(&sub.join("c.json"));
        assert!(file.inotify.is_some());
        let look = file.next_look.expect("looking, for now");
        std::fs::create_dir(&sub).expect("the directory");
        assert!(file.due(look.max(start)));
        assert_eq!(file.next_look, None, "watched now");
        assert_eq!(file.deadline(), None);
    }

    #[test]
    fn the_directories_of_the_path_and_of_what_it_resolves_to() {
        let dir = tempfile::tempdir().expect("a directory");
        let real = dir.path().join("real");
        std::fs::create_dir(&real).expect("real");
        std::fs::write(real.join("c.json"), "{}").expect("the file");
        let link = dir.path().join("c.json");
        std::os::unix::fs::symlink("real/c.json", &link).expect("symlink");
        let canonical = std::fs::canonicalize(&real).expect("canonical");
        assert_eq!(
            directories(&link),
            [dir.path().to_owned(), canonical.clone()]
        );
        assert_eq!(directories(&canonical.join("c.json")), [canonical]);
        assert_eq!(directories(Path::new("c.json")), [PathBuf::from(".")]);
    }
}
