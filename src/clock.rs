//! Timers, and a run loop that keeps an idle feed down to the one thread it runs on.
//!
//! smol's timers live in async-io's reactor, which starts a thread of its own on first use and
//! keeps it for the life of the process. A feed needs nothing from a reactor but timers: on
//! its own loop ([`block_on`]), its timers go into a queue that the loop checks before it
//! parks the thread until the earliest deadline or a wakeup. On any other executor (a
//! caller's, through `Feed::run_async`), [`sleep_until`] falls back to smol's timer.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::{Pin, pin};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

/// The timers of one [`block_on`] loop, by deadline.
#[derive(Default)]
struct Queue {
    next_id: u64,
    timers: BTreeMap<(Instant, u64), Waker>,
}

type Shared = Rc<RefCell<Queue>>;

thread_local! {
    /// The queue of the [`block_on`] running on this thread, if any.
    static CURRENT: RefCell<Option<Shared>> = const { RefCell::new(None) };
}

/// Wakes the thread parked in [`block_on`].
struct Unpark(Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Puts the previous loop's queue back when a (nested) [`block_on`] ends, even by a panic.
struct Restore(Option<Shared>);

impl Drop for Restore {
    fn drop(&mut self) {
        let previous = self.0.take();
        CURRENT.with(|current| *current.borrow_mut() = previous);
    }
}

/// Runs `future` to completion on the calling thread, with no other thread involved: between
/// wakeups the thread parks until the earliest deadline of the feed timers it runs.
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
    let previous = CURRENT.with(|current| current.borrow_mut().replace(Rc::clone(&queue)));
    let _restore = Restore(previous);
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        // A wakeup during the poll, or a timer woken here, has already unparked the thread:
        // parking then returns at once.
        match fire_due(&queue, Instant::now()) {
            Some(next) => thread::park_timeout(next.saturating_duration_since(Instant::now())),
            None => thread::park(),
        }
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
