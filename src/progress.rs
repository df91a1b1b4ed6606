//! Progress of a pack being received: counted by the fetch thread, sampled and published by the
//! source's task.
//!
//! The fetch thread only stores a few numbers into atomics as the pack streams past
//! ([`Counter`]); it never waits for anyone. The task that runs the attempt reads them about
//! once a second ([`Reporter`]) and hands a [`Progress`] sample to whoever asked for them
//! ([`Outlet`]), dropping the oldest sample when the reader falls behind.

use std::cell::Cell;
use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_channel::{Receiver, Sender, WeakReceiver};
use serde::{Deserialize, Serialize};

use crate::clock;

/// How a fetch attempt is getting on with the pack it receives: one sample of
/// [`Feed::progress`](crate::Feed::progress) or [`Follower::progress`](crate::Follower::progress).
///
/// Samples are sent only for an attempt that receives a pack and is still at it a second after
/// it started, at most one a second while the pack arrives and its deltas are resolved, then
/// one last sample in the phase [`ProgressPhase::Finished`] when the transfer has ended (that
/// one may follow the one before sooner). A poll that finds nothing new sends none.
///
/// Its `Display` is a line for people:
/// `policies: receiving objects 12,345/45,000, 61.2 MiB`.
///
/// ```
/// let line = r#"{"source":"p","phase":"receiving","objects":12345,"total_objects":45000,"bytes":64172851,"elapsed_ms":3000}"#;
/// let progress: gitfeed::Progress = serde_json::from_str(line).unwrap();
/// assert_eq!(progress.to_string(), "p: receiving objects 12,345/45,000, 61.2 MiB");
/// assert_eq!(serde_json::to_string(&progress).unwrap(), line);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Progress {
    /// The source's name.
    pub source: String,
    /// What the attempt is doing.
    pub phase: ProgressPhase,
    /// Objects of the pack received so far.
    pub objects: u64,
    /// Objects in the pack, as its header announces.
    pub total_objects: u64,
    /// Bytes of the pack received so far.
    pub bytes: u64,
    /// Milliseconds since the attempt started (including connecting and negotiating).
    pub elapsed_ms: u64,
}

/// The phase of a [`Progress`] sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum ProgressPhase {
    /// The pack is arriving; `objects` and `bytes` grow.
    Receiving,
    /// The whole pack is here; its deltas are being resolved and it is being indexed.
    Resolving,
    /// The transfer has ended: the attempt's last sample. `objects` equals `total_objects`
    /// when the whole pack arrived; fewer when the attempt failed or was stopped first.
    Finished,
}

impl fmt::Display for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (objects, total, bytes) = (
            Thousands(self.objects),
            Thousands(self.total_objects),
            Bytes(self.bytes),
        );
        let name = &self.source;
        match self.phase {
            ProgressPhase::Receiving => {
                write!(f, "{name}: receiving objects {objects}/{total}, {bytes}")
            }
            ProgressPhase::Resolving => {
                write!(f, "{name}: resolving deltas of {total} objects, {bytes}")
            }
            ProgressPhase::Finished => {
                let elapsed = Duration::from_millis(self.elapsed_ms);
                let took = crate::clock::spoken(elapsed);
                if self.objects < self.total_objects {
                    write!(
                        f,
                        "{name}: stopped after {objects}/{total} objects, {bytes} in {took}"
                    )
                } else {
                    let rate = (self.bytes as f64 / elapsed.as_secs_f64().max(0.001)) as u64;
                    write!(
                        f,
                        "{name}: received {total} objects, {bytes} in {took} ({}/s)",
                        Bytes(rate)
                    )
                }
            }
        }
    }
}

/// A count with thousands separated by commas: `12,345`.
struct Thousands(u64);

impl fmt::Display for Thousands {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits = self.0.to_string();
        let mut text = String::with_capacity(digits.len() + digits.len() / 3);
        for (i, digit) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                text.push(',');
            }
            text.push(digit);
        }
        f.write_str(&text)
    }
}

/// A size in binary units with one decimal: `512 B`, `61.2 MiB`.
struct Bytes(u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
        if self.0 < 1024 {
            return write!(f, "{} B", self.0);
        }
        let mut value = self.0 as f64 / 1024.0;
        let mut unit = 0;
        // Rounded the way it is printed, so 1023.96 KiB reads `1.0 MiB`, not `1024.0 KiB`.
        while value >= 1023.95 && unit + 1 < UNITS.len() {
            value /= 1024.0;
            unit += 1;
        }
        write!(f, "{value:.1} {}", UNITS[unit])
    }
}

/// How often samples are sent at most.
const INTERVAL: Duration = Duration::from_secs(1);

/// How often the counter is looked at once the attempt has run for a second.
const CHECK: Duration = Duration::from_millis(200);

/// Samples an [`Outlet`] keeps for a reader that falls behind; older ones are dropped.
const CAPACITY: usize = 64;

const IDLE: u8 = 0;
const RECEIVING: u8 = 1;
const RESOLVING: u8 = 2;
const DONE: u8 = 3;

/// What the fetch thread has received of the current pack. Every update is one relaxed store:
/// counting costs the fetch nothing measurable, and a sample may mix values a few bytes apart.
#[derive(Debug, Default)]
pub(crate) struct Counter {
    phase: AtomicU8,
    objects: AtomicU64,
    total: AtomicU64,
    bytes: AtomicU64,
}

impl Counter {
    /// A pack announcing `total` objects starts to arrive.
    pub fn start(&self, total: u64) {
        self.objects.store(0, Ordering::Relaxed);
        self.total.store(total, Ordering::Relaxed);
        self.phase.store(RECEIVING, Ordering::Relaxed);
    }

    /// `bytes` of the pack are here.
    pub fn bytes(&self, bytes: u64) {
        self.bytes.store(bytes, Ordering::Relaxed);
    }

    /// `objects` of the pack are here.
    pub fn objects(&self, objects: u64) {
        self.objects.store(objects, Ordering::Relaxed);
    }

    /// The whole pack is here; its deltas are being resolved.
    pub fn resolving(&self) {
        self.phase.store(RESOLVING, Ordering::Relaxed);
    }

    /// The pack has been written, or receiving it failed.
    pub fn done(&self) {
        if self.phase.load(Ordering::Relaxed) != IDLE {
            self.phase.store(DONE, Ordering::Relaxed);
        }
    }

    /// Objects received, objects announced, bytes received.
    #[cfg(test)]
    pub fn totals(&self) -> (u64, u64, u64) {
        (
            self.objects.load(Ordering::Relaxed),
            self.total.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }

    /// The sample of this moment; `None` until a pack started to arrive.
    fn sample(&self, source: &str, elapsed: Duration) -> Option<Progress> {
        let phase = match self.phase.load(Ordering::Relaxed) {
            RECEIVING => ProgressPhase::Receiving,
            RESOLVING => ProgressPhase::Resolving,
            DONE => ProgressPhase::Finished,
            _ => return None,
        };
        Some(Progress {
            source: source.to_owned(),
            phase,
            objects: self.objects.load(Ordering::Relaxed),
            total_objects: self.total.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            elapsed_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
        })
    }
}

/// Where a feed or a follower sends progress samples: nowhere until someone asks for them,
/// and nowhere again once every receiver handed out is gone.
#[derive(Default)]
pub(crate) struct Outlet(Mutex<Option<(Sender<Progress>, WeakReceiver<Progress>)>>);

impl fmt::Debug for Outlet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outlet")
            .field("open", &self.sender().is_some())
            .finish()
    }
}

impl Outlet {
    /// A receiver of the samples: a share of the channel's, like the clones of one receiver.
    pub fn receiver(&self) -> Receiver<Progress> {
        let mut channel = self.0.lock().unwrap_or_else(|err| err.into_inner());
        if let Some(receiver) = channel.as_ref().and_then(|(_, weak)| weak.upgrade()) {
            return receiver;
        }
        let (sender, receiver) = async_channel::bounded(CAPACITY);
        *channel = Some((sender, receiver.downgrade()));
        receiver
    }

    /// Where this attempt's samples go, if anyone reads them.
    pub fn sender(&self) -> Option<Sender<Progress>> {
        let channel = self.0.lock().unwrap_or_else(|err| err.into_inner());
        channel
            .as_ref()
            .map(|(sender, _)| sender)
            .filter(|sender| !sender.is_closed())
            .cloned()
    }

    /// Ends the samples: every receiver sees the channel close once it has read what is left.
    pub fn close(&self) {
        if let Some((sender, _)) = self.0.lock().unwrap_or_else(|err| err.into_inner()).take() {
            sender.close();
        }
    }
}

/// Publishes one attempt's samples: [`Reporter::run`] while the attempt runs,
/// [`Reporter::finish`] once it has ended.
pub(crate) struct Reporter<'a> {
    sink: Sender<Progress>,
    source: &'a str,
    counter: &'a Counter,
    started: Instant,
    /// The phase of the last sample sent and when it was taken, if any was.
    last: Cell<Option<(ProgressPhase, Instant)>>,
}

impl<'a> Reporter<'a> {
    pub fn new(
        sink: Sender<Progress>,
        source: &'a str,
        counter: &'a Counter,
        started: Instant,
    ) -> Self {
        Self {
            sink,
            source,
            counter,
            started,
            last: Cell::new(None),
        }
    }

    /// Sends a sample about once a second while a pack arrives, and the `finished` one soon
    /// after it is in; never returns. Nothing is sent in the attempt's first second, and
    /// samples of a pack arriving are a second apart at least, however late the timer fires.
    pub async fn run<T>(&self) -> T {
        let mut next = self.started + INTERVAL;
        loop {
            clock::sleep_until(next).await;
            let now = Instant::now();
            self.publish(now);
            next = now + CHECK;
        }
    }

    /// Sends the sample of `now`, if it is time to tell anything: a pack arriving or being
    /// resolved, a second after the sample before; or that it is in, when earlier samples
    /// told it was coming. Returns whether it sent one.
    fn publish(&self, now: Instant) -> bool {
        let Some(sample) = self
            .counter
            .sample(self.source, now.saturating_duration_since(self.started))
        else {
            return false;
        };
        let due = match (sample.phase, self.last.get()) {
            // Finished before anyone was told it started, or already told.
            (ProgressPhase::Finished, None | Some((ProgressPhase::Finished, _))) => false,
            (ProgressPhase::Finished, Some(_)) | (_, None) => true,
            (_, Some((_, at))) => now >= at + INTERVAL,
        };
        if due {
            self.send(sample, now);
        }
        due
    }

    /// After the attempt: the last sample, unless none was sent or the last one sent said so.
    pub fn finish(&self) {
        if matches!(self.last.get(), None | Some((ProgressPhase::Finished, _))) {
            return;
        }
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.started);
        if let Some(mut sample) = self.counter.sample(self.source, elapsed) {
            sample.phase = ProgressPhase::Finished;
            self.send(sample, now);
        }
    }

    fn send(&self, sample: Progress, now: Instant) {
        self.last.set(Some((sample.phase, now)));
        // A reader that falls behind loses the oldest samples, never the newest; a closed
        // channel means nobody reads any more.
        let _ = self.sink.force_send(sample);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(phase: ProgressPhase, objects: u64, total: u64, bytes: u64, ms: u64) -> String {
        Progress {
            source: "policies".into(),
            phase,
            objects,
            total_objects: total,
            bytes,
            elapsed_ms: ms,
        }
        .to_string()
    }

    #[test]
    fn lines_for_people() {
        use ProgressPhase::*;
        assert_eq!(
            sample(Receiving, 12_345, 45_000, 64_172_851, 3_000),
            "policies: receiving objects 12,345/45,000, 61.2 MiB"
        );
        assert_eq!(
            sample(Receiving, 0, 7, 12, 1_000),
            "policies: receiving objects 0/7, 12 B"
        );
        assert_eq!(
            sample(Resolving, 1_000_000, 1_000_000, 5 << 30, 9_000),
            "policies: resolving deltas of 1,000,000 objects, 5.0 GiB"
        );
        assert_eq!(
            sample(Finished, 45_000, 45_000, 241 << 20, 25_300),
            "policies: received 45,000 objects, 241.0 MiB in 25s (9.5 MiB/s)"
        );
        assert_eq!(
            sample(Finished, 100, 45_000, 1536, 4_200),
            "policies: stopped after 100/45,000 objects, 1.5 KiB in 4.2s"
        );
    }

    #[test]
    fn numbers() {
        let thousands = |n| Thousands(n).to_string();
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(123_456_789), "123,456,789");
        let bytes = |n| Bytes(n).to_string();
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1024), "1.0 KiB");
        assert_eq!(bytes((1 << 20) - 1), "1.0 MiB");
        assert_eq!(bytes(3 << 40), "3.0 TiB");
        assert_eq!(bytes(u64::MAX), "16777216.0 TiB");
    }

    /// Nothing is told about an attempt that has not started receiving a pack, nor about one
    /// whose pack was already in before the first sample; a transfer told about is always
    /// ended with a `finished` sample, once.
    #[test]
    fn tells_only_transfers_it_saw() {
        let counter = Counter::default();
        let outlet = Outlet::default();
        assert!(outlet.sender().is_none(), "nobody asked");
        let receiver = outlet.receiver();
        let started = Instant::now();
        let reporter = Reporter::new(outlet.sender().expect("asked"), "p", &counter, started);
        let at = |ms| started + Duration::from_millis(ms);
        assert!(!reporter.publish(at(1_000)), "no pack yet");
        reporter.finish();
        assert!(receiver.try_recv().is_err());

        counter.start(10);
        counter.bytes(12);
        counter.done();
        assert!(!reporter.publish(at(1_200)), "done before the first sample");
        reporter.finish();
        assert!(receiver.try_recv().is_err());

        counter.start(10);
        counter.objects(4);
        counter.bytes(4_000);
        assert!(reporter.publish(at(1_400)));
        let first = receiver.try_recv().expect("a sample");
        assert_eq!(
            (
                first.phase,
                first.objects,
                first.total_objects,
                first.bytes,
                first.elapsed_ms
            ),
            (ProgressPhase::Receiving, 4, 10, 4_000, 1_400)
        );
        assert!(!reporter.publish(at(2_399)), "a second apart");
        assert!(reporter.publish(at(2_400)));
        assert_eq!(receiver.try_recv().expect("a sample").elapsed_ms, 2_400);
        counter.resolving();
        assert!(!reporter.publish(at(3_000)), "a second apart");
        counter.objects(10);
        counter.done();
        assert!(reporter.publish(at(3_000)), "told at once");
        assert_eq!(
            receiver.try_recv().expect("the last sample").phase,
            ProgressPhase::Finished
        );
        assert!(!reporter.publish(at(3_400)), "already told");
        reporter.finish();
        assert!(receiver.try_recv().is_err(), "told once");
    }

    /// Once every receiver is gone, the outlet has nowhere to send; asking again opens a new
    /// channel. A reader that falls behind keeps the newest samples.
    #[test]
    fn outlet_follows_its_receivers() {
        let outlet = Outlet::default();
        let receiver = outlet.receiver();
        let again = outlet.receiver();
        let sender = outlet.sender().expect("a reader");
        for n in 0..CAPACITY as u64 + 5 {
            let _ = sender.force_send(Progress {
                source: "p".into(),
                phase: ProgressPhase::Receiving,
                objects: n,
                total_objects: 100,
                bytes: n,
                elapsed_ms: n,
            });
        }
        assert_eq!(receiver.try_recv().expect("a sample").objects, 5);
        drop((receiver, again));
        assert!(outlet.sender().is_none());
        let fresh = outlet.receiver();
        assert!(outlet.sender().is_some());
        outlet.close();
        assert!(fresh.is_closed());
        assert!(outlet.sender().is_none());
    }
}
