//! Timers and descriptor readiness, and a run loop that keeps an idle feed down to the one
//! thread it runs on.
//!
//! smol's timers and `Async` IO live in async-io's reactor, which starts a thread of its own on
//! first use and keeps it for the life of the process. A feed needs nothing from a reactor but
//! timers: on its own loop ([`block_on`]), its timers go into a queue that the loop checks
//! before it parks the thread until the earliest deadline or a wakeup. A task beside the feed
//! that waits for a descriptor ([`readable`]) is served by the same loop: while one waits, the
//! loop blocks in `poll(2)` instead of parking, over those descriptors and a socket that
//! wakeups ring. On any other executor (a caller's, through `Feed::run_async`),
//! [`sleep_until`] and [`readable`] fall back to smol's reactor.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::pin::{Pin, pin};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};

/// The timers and waiting descriptors of one [`block_on`] loop.
#[derive(Default)]
struct Queue {
    next_id: u64,
    timers: BTreeMap<(Instant, u64), Waker>,
    readers: BTreeMap<u64, Reader>,
}

/// A descriptor a task waits to become readable, and how the wait ended once it has.
struct Reader {
    /// A duplicate of the caller's descriptor: the queue outlives any borrow the caller could
    /// lend, and closing the duplicate leaves the caller's open.
    fd: OwnedFd,
    waker: Waker,
    outcome: Option<rustix::io::Result<()>>,
}

type Shared = Rc<RefCell<Queue>>;

thread_local! {
    /// The queue of the [`block_on`] running on this thread, if any.
    static CURRENT: RefCell<Option<Shared>> = const { RefCell::new(None) };
}

/// Wakes the thread in [`block_on`], parked or in `poll(2)`.
struct Unpark {
    thread: Thread,
    /// Set by a wakeup, cleared by the loop before it polls the future: a wakeup that comes
    /// after the poll has begun is never lost, and only the first of a burst rings the bell.
    woken: AtomicBool,
    /// The ringing end of the loop's bell, made when a descriptor is first waited on. The
    /// lock orders a wakeup against the bell's making (see [`wait`]); the loop holds the other
    /// end, and never this lock while it waits.
    ringer: Mutex<Option<UnixStream>>,
}

impl Unpark {
    fn ringer(&self) -> MutexGuard<'_, Option<UnixStream>> {
        self.ringer.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.woken.swap(true, Ordering::SeqCst) {
            // An earlier wakeup since the loop last looked has unparked it or rung already.
            return;
        }
        self.thread.unpark();
        if let Some(mut ringer) = self.ringer().as_ref() {
            // A full buffer is readable already: nothing more to do.
            let _ = ringer.write(&[1]);
        }
    }
}

/// Puts the previous loop's queue back when a (nested) [`block_on`] ends, even by a panic, and
/// closes the loop's bell: a waker kept after the loop must not keep its sockets open.
struct Restore {
    previous: Option<Shared>,
    unpark: Arc<Unpark>,
}

impl Drop for Restore {
    fn drop(&mut self) {
        let previous = self.previous.take();
        CURRENT.with(|current| *current.borrow_mut() = previous);
        self.unpark.ringer().take();
    }
}

/// Runs `future` to completion on the calling thread, with no other thread involved: between
/// wakeups the thread parks until the earliest deadline of the feed timers it runs, or, while a
/// task waits in [`readable`], waits in `poll(2)` for that descriptor until the same deadline.
///
/// [`Feed::run`](crate::Feed::run) uses it. To run a feed next to tasks of your own on one
/// thread, drive the executor with it, and the feed needs no reactor thread either:
///
/// ```no_run
/// let feed = gitfeed::Feed::new("/var/cache/gitfeed");
/// let events = feed.events();
/// let _handle = feed.handle();
/// let executor = smol::LocalExecutor::new();
/// executor.spawn(feed.run_async()).detach();
/// // Until the feed shuts down and its channel closes.
/// gitfeed::block_on(executor.run(async move {
///     while let Ok(event) = events.recv().await {
///         println!("{event:?}");
///     }
/// }));
/// ```
///
/// Futures that need smol's reactor (its timers, `Async` IO) still work under it: the reactor
/// then starts its own thread, as it would anywhere.
pub fn block_on<T>(future: impl Future<Output = T>) -> T {
    let queue: Shared = Rc::default();
    let unpark = Arc::new(Unpark {
        thread: thread::current(),
        woken: AtomicBool::new(false),
        ringer: Mutex::new(None),
    });
    let previous = CURRENT.with(|current| current.borrow_mut().replace(Rc::clone(&queue)));
    let _restore = Restore {
        previous,
        unpark: Arc::clone(&unpark),
    };
    let waker = Waker::from(Arc::clone(&unpark));
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    // The end of the bell the loop waits on: a byte arrives with each wakeup.
    let mut bell = None;
    loop {
        // Cleared before the poll, so a wakeup during it is seen below. A swap rather than a
        // store: it reads the last wakeup's write, and so sees what that wakeup's sender
        // sent before it.
        unpark.woken.swap(false, Ordering::SeqCst);
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        let next = fire_due(&queue, Instant::now());
        if queue.borrow().readers.is_empty() {
            // A wakeup during the poll, or a timer woken here, has already unparked the
            // thread: parking then returns at once. This is all a feed alone ever does.
            match next {
                Some(next) => thread::park_timeout(next.saturating_duration_since(Instant::now())),
                None => thread::park(),
            }
        } else {
            if bell.is_none() {
                bell = make_bell(&unpark);
            }
            wait(&queue, &unpark, next, bell.as_ref());
        }
    }
}

/// Makes the loop's bell, so wakeups can end its `poll(2)`, and returns the end to wait on.
/// A socket pair rather than an eventfd, because every Unix has one.
fn make_bell(unpark: &Unpark) -> Option<UnixStream> {
    let pair = UnixStream::pair().and_then(|(bell, ringer)| {
        bell.set_nonblocking(true)?;
        ringer.set_nonblocking(true)?;
        Ok((bell, ringer))
    });
    match pair {
        Ok((bell, ringer)) => {
            *unpark.ringer() = Some(ringer);
            Some(bell)
        }
        Err(err) => {
            log::debug!("cannot make the run loop's wakeup socket, polling instead: {err}");
            None
        }
    }
}

/// How long the loop waits at most without a bell: a wakeup is then noticed this late.
const WITHOUT_A_BELL: Duration = Duration::from_millis(50);

/// Waits until a reader's descriptor is ready, a wakeup comes or `next` is reached, and wakes
/// the readers that are ready.
fn wait(queue: &Shared, unpark: &Unpark, next: Option<Instant>, bell: Option<&UnixStream>) {
    // The bell was installed under its lock before this load: a wakeup that this load misses
    // took the lock after, so it rings. The readers are polled even after a wakeup (with no
    // timeout), so a busy loop never starves them.
    let timeout = if unpark.woken.load(Ordering::SeqCst) {
        Some(Duration::ZERO)
    } else {
        let left = next.map(|at| at.saturating_duration_since(Instant::now()));
        match (left, bell) {
            (left, Some(_)) => left,
            (None, None) => Some(WITHOUT_A_BELL),
            (Some(left), None) => Some(left.min(WITHOUT_A_BELL)),
        }
    };
    // A timeout too long for a timespec is as good as none.
    let timeout = timeout.and_then(|left| Timespec::try_from(left).ok());
    let mut woken = Vec::new();
    {
        let mut queue = queue.borrow_mut();
        // Readers already woken stay out until their task takes the outcome: a ready
        // descriptor would otherwise end every wait at once until then.
        let waiting = |reader: &&mut Reader| reader.outcome.is_none();
        let ready = PollFlags::IN | PollFlags::HUP | PollFlags::ERR | PollFlags::NVAL;
        let mut fds: Vec<PollFd<'_>> = bell
            .into_iter()
            .map(|bell| PollFd::new(bell, PollFlags::IN))
            .chain(
                queue
                    .readers
                    .values()
                    .filter(|reader| reader.outcome.is_none())
                    .map(|reader| PollFd::new(&reader.fd, PollFlags::IN)),
            )
            .collect();
        let polled = rustix::event::poll(&mut fds, timeout.as_ref());
        let outcomes: Vec<Option<rustix::io::Result<()>>> = match polled {
            // A signal's handler ran; whatever it did is seen on the next round.
            Err(rustix::io::Errno::INTR) => Vec::new(),
            Err(err) => vec![Some(Err(err)); queue.readers.len()],
            Ok(_) => fds[usize::from(bell.is_some())..]
                .iter()
                .map(|fd| fd.revents().intersects(ready).then_some(Ok(())))
                .collect(),
        };
        drop(fds);
        let readers = queue.readers.values_mut().filter(waiting);
        for (reader, outcome) in readers.zip(outcomes) {
            if outcome.is_some() {
                reader.outcome = outcome;
                woken.push(reader.waker.clone());
            }
        }
    }
    if let Some(mut bell) = bell {
        let mut rung = [0; 64];
        while matches!(bell.read(&mut rung), Ok(n) if n > 0) {}
    }
    // Woken outside the borrows: a waker may do anything, including touch the queue or ring.
    for waker in woken {
        waker.wake();
    }
}

/// Wakes every timer due at `now` and returns the earliest deadline still ahead.
fn fire_due(queue: &Shared, now: Instant) -> Option<Instant> {
    let (due, next) = {
        let mut queue = queue.borrow_mut();
        let later = queue.timers.split_off(&(now, u64::MAX));
        let due = std::mem::replace(&mut queue.timers, later);
        (due, queue.timers.keys().next().map(|(at, _)| *at))
    };
    // Woken outside the borrow: a waker may do anything, including touch the queue.
    for waker in due.into_values() {
        waker.wake();
    }
    next
}

/// Completes at `at`: on a [`block_on`] loop through its queue, with no reactor thread;
/// elsewhere through smol's timer. For tasks of your own that share the feed's thread.
///
/// ```
/// let at = std::time::Instant::now() + std::time::Duration::from_millis(10);
/// gitfeed::block_on(gitfeed::sleep_until(at));
/// assert!(std::time::Instant::now() >= at);
/// ```
pub async fn sleep_until(at: Instant) {
    match CURRENT.with(|current| current.borrow().clone()) {
        Some(queue) => {
            Sleep {
                at,
                queue,
                key: None,
            }
            .await
        }
        None => {
            smol::Timer::at(at).await;
        }
    }
}

/// A timer in a [`block_on`] loop's queue; leaves the queue when dropped.
struct Sleep {
    at: Instant,
    queue: Shared,
    key: Option<(Instant, u64)>,
}

impl Future for Sleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if Instant::now() >= this.at {
            return Poll::Ready(());
        }
        let mut queue = this.queue.borrow_mut();
        let key = *this.key.get_or_insert_with(|| {
            queue.next_id += 1;
            (this.at, queue.next_id)
        });
        queue.timers.insert(key, cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            self.queue.borrow_mut().timers.remove(&key);
        }
    }
}

/// Completes once `fd` is readable: it has data, its peer hung up, or it has an error to
/// report. On a [`block_on`] loop the loop itself waits for it, with no reactor thread;
/// elsewhere smol's reactor does. For tasks of your own that share the feed's thread, such as
/// one reading a signal pipe or an inotify descriptor.
///
/// The wait holds a duplicate of `fd` (one more descriptor, closed when the wait ends or is
/// dropped), and leaves `fd`'s flags alone: read it without blocking afterwards, as a wakeup
/// can be spurious. Fails when the descriptor cannot be duplicated or waited on.
///
/// ```
/// use std::io::Write;
///
/// let (reader, mut writer) = std::os::unix::net::UnixStream::pair()?;
/// writer.write_all(b"x")?;
/// gitfeed::block_on(gitfeed::readable(&reader))?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub async fn readable(fd: impl AsFd) -> io::Result<()> {
    let fd = fd.as_fd().try_clone_to_owned()?;
    match CURRENT.with(|current| current.borrow().clone()) {
        Some(queue) => {
            Readable {
                queue,
                fd: Some(fd),
                id: None,
            }
            .await
        }
        // Without setting O_NONBLOCK: that flag belongs to the caller's open file.
        None => smol::Async::new_nonblocking(fd)?.readable().await,
    }
}

/// A descriptor in a [`block_on`] loop's queue; leaves the queue when dropped.
struct Readable {
    queue: Shared,
    /// The descriptor until it is handed to the queue, at the first poll.
    fd: Option<OwnedFd>,
    id: Option<u64>,
}

impl Future for Readable {
    type Output = io::Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let mut queue = this.queue.borrow_mut();
        let Some(id) = this.id else {
            let Some(fd) = this.fd.take() else {
                return Poll::Ready(Ok(()));
            };
            queue.next_id += 1;
            let id = queue.next_id;
            let reader = Reader {
                fd,
                waker: cx.waker().clone(),
                outcome: None,
            };
            queue.readers.insert(id, reader);
            this.id = Some(id);
            return Poll::Pending;
        };
        let Some(reader) = queue.readers.get_mut(&id) else {
            return Poll::Ready(Ok(()));
        };
        match reader.outcome {
            Some(outcome) => {
                queue.readers.remove(&id);
                this.id = None;
                Poll::Ready(outcome.map_err(io::Error::from))
            }
            None => {
                reader.waker.clone_from(cx.waker());
                Poll::Pending
            }
        }
    }
}

impl Drop for Readable {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.queue.borrow_mut().readers.remove(&id);
        }
    }
}

/// A duration as a person writes it: `850ms`, `1.6s`, `8s`, `10m`, `2h`.
pub(crate) fn spoken(duration: Duration) -> String {
    let ms = duration.as_millis();
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..10_000 => {
            let text = format!("{:.1}", duration.as_secs_f64());
            format!("{}s", text.strip_suffix(".0").unwrap_or(&text))
        }
        10_000..120_000 => format!("{}s", (ms + 500) / 1_000),
        120_000..7_200_000 => format!("{}m", (ms + 30_000) / 60_000),
        _ => format!("{}h", (ms + 1_800_000) / 3_600_000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timers_fire_in_order_without_a_reactor_thread() {
        let start = Instant::now();
        let order = RefCell::new(Vec::new());
        block_on(async {
            let late = async {
                sleep_until(start + Duration::from_millis(30)).await;
                order.borrow_mut().push(30);
            };
            let early = async {
                sleep_until(start + Duration::from_millis(10)).await;
                order.borrow_mut().push(10);
            };
            smol::future::zip(late, early).await;
        });
        assert_eq!(order.into_inner(), vec![10, 30]);
        assert!(start.elapsed() >= Duration::from_millis(30));
    }

    #[test]
    fn a_dropped_timer_leaves_the_queue() {
        block_on(async {
            let queue = CURRENT
                .with(|current| current.borrow().clone())
                .expect("in a loop");
            let far = sleep_until(Instant::now() + Duration::from_secs(3600));
            let near = sleep_until(Instant::now() + Duration::from_millis(1));
            // The near timer wins; the far one is dropped with the race.
            smol::future::or(far, near).await;
            assert!(queue.borrow().timers.is_empty());
        });
    }

    #[test]
    fn a_wakeup_from_another_thread_ends_the_park() {
        let (tx, rx) = async_channel::bounded(1);
        let sender = thread::spawn(move || {
            thread::sleep(Duration::from_millis(20));
            tx.send_blocking(7).expect("receiver alive");
        });
        // Without the wakeup the loop would sleep until the guard's deadline and fail.
        let guard = async {
            sleep_until(Instant::now() + Duration::from_secs(10)).await;
            Err(async_channel::RecvError)
        };
        assert_eq!(block_on(smol::future::or(rx.recv(), guard)), Ok(7));
        sender.join().expect("sender");
    }

    /// A reader parked in the loop's queue, and a peer that writes to it later.
    fn pair() -> (UnixStream, UnixStream) {
        UnixStream::pair().expect("a socket pair")
    }

    /// A guard that fails the test when the loop sleeps until a far deadline instead of
    /// noticing what it waits for.
    async fn too_late<T>() -> io::Result<T> {
        sleep_until(Instant::now() + Duration::from_secs(10)).await;
        Err(io::Error::other("the loop slept through it"))
    }

    #[test]
    fn a_descriptor_written_from_another_thread_ends_the_wait() {
        let (reader, mut writer) = pair();
        let sender = thread::spawn(move || {
            thread::sleep(Duration::from_millis(20));
            writer.write_all(b"x").expect("write");
            writer
        });
        let started = Instant::now();
        block_on(smol::future::or(readable(&reader), too_late())).expect("readable");
        assert!(started.elapsed() < Duration::from_secs(5));
        let mut byte = [0];
        (&reader).read_exact(&mut byte).expect("the byte");
        assert_eq!(byte, *b"x");
        drop(sender.join().expect("sender"));
    }

    #[test]
    fn a_peer_that_hangs_up_ends_the_wait() {
        let (reader, writer) = pair();
        let closer = thread::spawn(move || {
            thread::sleep(Duration::from_millis(20));
            drop(writer);
        });
        block_on(smol::future::or(readable(&reader), too_late())).expect("readable");
        closer.join().expect("closer");
    }

    #[test]
    fn timers_fire_while_a_descriptor_is_waited_on() {
        let (reader, _writer) = pair();
        let start = Instant::now();
        let at = start + Duration::from_millis(30);
        let timer = async {
            sleep_until(at).await;
            Ok(())
        };
        // The descriptor never becomes readable: the timer ends the race, on time.
        block_on(smol::future::or(readable(&reader), timer)).expect("the timer");
        assert!(Instant::now() >= at);
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    /// The lost wakeup this guards against: a message sent from another thread while the loop
    /// waits in poll(2) must end that wait, not the next deadline.
    #[test]
    fn a_wakeup_from_another_thread_ends_the_wait_for_a_descriptor() {
        let (reader, _writer) = pair();
        let (tx, rx) = async_channel::bounded(1);
        let sender = thread::spawn(move || {
            for value in 0..20 {
                thread::sleep(Duration::from_millis(5));
                tx.send_blocking(value).expect("receiver alive");
            }
        });
        let started = Instant::now();
        block_on(async {
            let waiting = async {
                readable(&reader).await.expect("waited");
                panic!("the descriptor is never written");
            };
            let received = async {
                for expected in 0..20 {
                    assert_eq!(rx.recv().await, Ok(expected));
                }
            };
            smol::future::or(
                received,
                smol::future::or(waiting, async {
                    too_late::<()>().await.expect("in time");
                }),
            )
            .await;
        });
        assert!(started.elapsed() < Duration::from_secs(5));
        sender.join().expect("sender");
    }

    #[test]
    fn a_dropped_wait_leaves_the_queue() {
        let (reader, _writer) = pair();
        block_on(async {
            let queue = CURRENT
                .with(|current| current.borrow().clone())
                .expect("in a loop");
            let wait = readable(&reader);
            let near = async {
                sleep_until(Instant::now() + Duration::from_millis(1)).await;
                Ok(())
            };
            smol::future::or(wait, near).await.expect("the timer");
            assert!(queue.borrow().readers.is_empty());
        });
        // The caller's descriptor is still open.
        let mut writer = _writer;
        writer.write_all(b"y").expect("write");
        let mut byte = [0];
        (&reader).read_exact(&mut byte).expect("read");
        assert_eq!(byte, *b"y");
    }

    #[test]
    fn off_the_loop_the_reactor_waits_and_leaves_the_flags_alone() {
        let (reader, mut writer) = pair();
        writer.write_all(b"z").expect("write");
        smol::block_on(readable(&reader)).expect("readable");
        let flags = rustix::fs::fcntl_getfl(&reader).expect("flags");
        assert!(!flags.contains(rustix::fs::OFlags::NONBLOCK));
    }

    #[test]
    fn durations_read_as_people_write_them() {
        for (ms, text) in [
            (850, "850ms"),
            (1_600, "1.6s"),
            (8_000, "8s"),
            (2_020, "2s"),
            (30_400, "30s"),
            (600_000, "10m"),
            (7_200_000, "2h"),
        ] {
            assert_eq!(spoken(Duration::from_millis(ms)), text);
        }
    }
}
