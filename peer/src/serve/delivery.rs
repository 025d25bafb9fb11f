//! Getting results to the client: batches, one in flight at a time, with the starts that
//! ride along, retried while the client is away. A result that has waited or travelled
//! longer than a healthy delivery takes goes to disk until the client acknowledges it (a
//! healthy run writes nothing). Also what a recovering client asks for: results kept for it
//! ([`recover`]); `requests` checks who asks.

use super::kept::KeptResults;
use super::owner::Access;
use super::requests::{Answered, kept_for};
use super::{Completion, Ctx};
use crate::net::ReplyTo;
use dispy_protocol::{
    ClusterId, JobId, JobResult, MAX_RESULT_BATCH_BYTES, OwnerHash, Provisional, Request, Response, Results,
};
use libp2p::PeerId;
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// A result waiting this long for its client is written to disk.
const RESULT_SAVE_AFTER: Duration = Duration::from_millis(500);

/// How long a job start waits to ride along with a result before it is sent on its own.
const START_LINGER: Duration = Duration::from_millis(2);

/// Results being delivered to a client at once; more wait and are batched.
const RESULT_BATCHES_IN_FLIGHT: usize = 1;

/// A failed delivery is tried again after this: the client is away or busy, and the
/// disconnect (or its return) will be seen meanwhile.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// One lease's results and job starts on their way to its client.
#[derive(Default)]
pub(super) struct Outbox {
    results: VecDeque<JobResult>,
    /// Jobs started since the last message to the client.
    started: Vec<JobId>,
    /// Provisional values made since; they ride with starts.
    provisional: Vec<Provisional>,
    /// The start-only message in flight carries provisional values: results wait for it,
    /// so that a job's values reach the client before its result.
    provisional_in_flight: bool,
    /// Result messages in flight.
    sending: usize,
    /// Start-only messages in flight (at most one): they never hold results back.
    sending_starts: usize,
    /// When the oldest unsent start happened, and whether a timer will flush it.
    starts_since: Option<Instant>,
    starts_timer: bool,
    /// Result batches on their way to the client, by number, with when they left.
    delivering: HashMap<u64, (Instant, Vec<JobResult>)>,
    /// Numbers the batches in `delivering`.
    batch_seq: u64,
    /// Results in `results` or `delivering` that are also on disk.
    saved: HashSet<JobId>,
    /// Since when the oldest result not on disk has waited in `results`.
    unsaved_since: Option<Instant>,
}

/// A delivery has ended. `batch` empty: a message that carried only job starts.
pub(super) struct ResultsSent {
    pub(super) cluster: ClusterId,
    batch: Vec<JobResult>,
    started: Vec<JobId>,
    provisional: Vec<Provisional>,
    delivered: bool,
    /// The batch's number in the outbox's `delivering`.
    seq: u64,
}

impl Outbox {
    pub(super) fn job_started(&mut self, id: JobId) {
        self.started.push(id);
        self.starts_since.get_or_insert_with(Instant::now);
    }

    /// A running job's provisional value: it leaves with the next starts.
    pub(super) fn push_provisional(&mut self, p: Provisional) {
        self.provisional.push(p);
        self.starts_since.get_or_insert_with(Instant::now);
    }

    pub(super) fn push_result(&mut self, mut result: JobResult) {
        // A result must fit one message, alone if need be: one that did not was retried
        // for ever, holding back every later result of its cluster.
        result.fit(MAX_RESULT_BATCH_BYTES);
        self.results.push_back(result);
        self.unsaved_since.get_or_insert_with(Instant::now);
    }

    /// The jobs whose results wait here or are on their way: built once per request, so
    /// that asking about many ids costs time linear in both.
    pub(super) fn held(&self) -> HashSet<JobId> {
        self.results.iter().chain(self.delivering.values().flat_map(|(_, b)| b.iter())).map(|r| r.id).collect()
    }

    /// Bytes of the results held in memory (for the client's limit).
    pub(super) fn held_bytes(&self) -> u64 {
        let waiting: usize = self.results.iter().map(JobResult::payload_len).sum();
        let travelling: usize = self.delivering.values().flat_map(|(_, b)| b.iter()).map(JobResult::payload_len).sum();
        (waiting + travelling) as u64
    }

    /// The jobs whose results wait here or travel to the client.
    pub(super) fn ended(&self) -> HashSet<JobId> {
        let travelling = self.delivering.values().flat_map(|(_, b)| b.iter());
        self.results.iter().chain(travelling).map(|r| r.id).collect()
    }

    /// The results waiting here (for a recovering client).
    pub(super) fn waiting(&self) -> Vec<JobResult> {
        self.results.iter().cloned().collect()
    }

    /// Drops the results a recovering client has.
    pub(super) fn forget(&mut self, jobs: &HashSet<JobId>) {
        self.results.retain(|x| !jobs.contains(&x.id));
    }

    /// Drops what waits (a released lease's client took what it wanted).
    pub(super) fn clear(&mut self) {
        self.results.clear();
    }

    /// Nothing is on its way to the client.
    pub(super) fn is_idle(&self) -> bool {
        self.sending == 0 && self.sending_starts == 0
    }

    /// Every result was delivered.
    pub(super) fn is_empty(&self) -> bool {
        self.results.is_empty() && self.sending == 0
    }

    /// Takes the results waiting and those still on their way (for a client gone for good).
    pub(super) fn take_undelivered(&mut self) -> Vec<JobResult> {
        let mut results: Vec<JobResult> = self.results.drain(..).collect();
        results.extend(self.delivering.drain().flat_map(|(_, (_, b))| b));
        results
    }

    /// A start timer went off.
    pub(super) fn starts_due(&mut self) {
        self.starts_timer = false;
    }

    /// Sends waiting results to `client`, a batch at a time.
    pub(super) fn flush(&mut self, id: ClusterId, client: PeerId, ctx: &Ctx) {
        loop {
            let with_results = !self.results.is_empty()
                && self.sending < RESULT_BATCHES_IN_FLIGHT
                && !(self.sending_starts > 0 && self.provisional_in_flight);
            // A start travels with the job's result when the job is quick; only a job still
            // running after START_LINGER gets a message of its own.
            let waited = self.starts_since.map(|t| t.elapsed());
            let news = !self.started.is_empty() || !self.provisional.is_empty();
            let mut starts_only = !with_results && news && self.sending_starts == 0;
            if starts_only && waited.is_some_and(|w| w < START_LINGER) {
                starts_only = false;
                if !self.starts_timer {
                    self.starts_timer = true;
                    ctx.report_after(START_LINGER - waited.unwrap_or_default(), Completion::FlushDue { cluster: id });
                }
            }
            if !with_results && !starts_only {
                break;
            }
            let mut batch = Vec::new();
            let mut bytes = 0;
            while let Some(r) = self.results.front().filter(|_| with_results) {
                if !batch.is_empty() && bytes + r.payload_len() > MAX_RESULT_BATCH_BYTES {
                    break;
                }
                bytes += r.payload_len();
                batch.extend(self.results.pop_front());
            }
            if with_results {
                self.sending += 1;
            } else {
                self.sending_starts += 1;
                self.provisional_in_flight = !self.provisional.is_empty();
            }
            let started = std::mem::take(&mut self.started);
            let provisional = self.take_provisional();
            self.starts_since = None;
            self.batch_seq += 1;
            let seq = self.batch_seq;
            if !batch.is_empty() {
                self.delivering.insert(seq, (Instant::now(), batch.clone()));
            }
            let (net, done) = (ctx.net.clone(), ctx.done.clone());
            tokio::spawn(async move {
                let request = Request::Results(Results {
                    cluster: id,
                    started: started.clone(),
                    results: batch.clone(),
                    provisional: provisional.clone(),
                });
                let delivered = match net.request(client, request).await {
                    Ok(Response::Ok) => true,
                    Ok(other) => {
                        warn!(cluster = %id.tag(), answer = ?other, "client did not acknowledge results");
                        false
                    }
                    Err(e) => {
                        debug!(cluster = %id, cause = %e, "result delivery failed; will retry");
                        false
                    }
                };
                let _ = done.send(Completion::ResultsSent(ResultsSent {
                    cluster: id,
                    batch,
                    started,
                    provisional,
                    delivered,
                    seq,
                }));
            });
        }
    }

    /// The provisional values for one message, oldest first: a result batch's worth of
    /// bytes at most (beside the results, still within a message's size limit).
    fn take_provisional(&mut self) -> Vec<Provisional> {
        let mut bytes = 0;
        let count = self
            .provisional
            .iter()
            .take_while(|p| {
                bytes += p.value.len();
                bytes <= MAX_RESULT_BATCH_BYTES
            })
            .count()
            .max(1)
            .min(self.provisional.len());
        self.provisional.drain(..count).collect()
    }

    /// A delivery has ended. Returns whether to go on at once (flush, maybe drop the lease);
    /// a failed one puts its results back and is retried after [`RETRY_AFTER`].
    pub(super) fn sent(&mut self, sent: ResultsSent, released: bool, ctx: &Ctx) -> bool {
        let ResultsSent { cluster, batch, started, provisional, delivered, seq } = sent;
        self.delivering.remove(&seq);
        // Acknowledged: what was kept on disk for it goes. Not once the lease is released:
        // its release left the files those results list in the store, and the TTL's sweep
        // deletes them with the results (forgetting them now would leave the files behind).
        if delivered && !released {
            let on_disk: Vec<JobId> = batch.iter().map(|r| r.id).filter(|id| self.saved.remove(id)).collect();
            if !on_disk.is_empty() {
                let kept = ctx.kept.clone();
                tokio::task::spawn_blocking(move || kept.forget(cluster, &on_disk));
            }
        }
        // Saturating: a message of a lease that was released and reserved again under the
        // same id may end here, against the new lease's counts.
        if batch.is_empty() {
            self.sending_starts = self.sending_starts.saturating_sub(1);
            self.provisional_in_flight = false;
        } else {
            self.sending = self.sending.saturating_sub(1);
        }
        if delivered || released {
            return true;
        }
        for r in batch.into_iter().rev() {
            self.results.push_front(r);
        }
        self.started.splice(0..0, started);
        self.provisional.splice(0..0, provisional);
        ctx.report_after(RETRY_AFTER, Completion::FlushDue { cluster });
        false
    }

    /// Writes to disk the results that have waited for their client longer than a healthy
    /// delivery takes, so that a crash of this node does not lose them.
    pub(super) fn save_waiting(&mut self, id: ClusterId, owner: Option<OwnerHash>, kept: &KeptResults) {
        let waiting = self.unsaved_since.is_some_and(|t| t.elapsed() >= RESULT_SAVE_AFTER);
        let slow = self.delivering.values().any(|(t, _)| t.elapsed() >= RESULT_SAVE_AFTER);
        if !waiting && !slow {
            return;
        }
        self.unsaved_since = None;
        let unsaved: Vec<JobResult> = self
            .results
            .iter()
            .chain(self.delivering.values().flat_map(|(_, b)| b.iter()))
            .filter(|r| !self.saved.contains(&r.id))
            .cloned()
            .collect();
        if unsaved.is_empty() {
            return;
        }
        self.saved.extend(unsaved.iter().map(|r| r.id));
        let kept = kept.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = kept.save(id, owner, &unsaved) {
                warn!(cluster = %id.tag(), cause = %e, "cannot keep waiting results on disk");
            }
        });
    }
}

/// The results held for a cluster whose client crashed, for an asker with `access` to
/// them: `held` in memory (the client is away but within its zombie interval) and those on
/// disk (after it), bounded like a result batch (at least one). Read from disk, one file at
/// a time, on the blocking pool; the answer goes back through the node's task.
pub(super) fn recover(
    peer: PeerId,
    cluster: ClusterId,
    access: Access,
    held: Vec<JobResult>,
    ctx: &Ctx,
    channel: ReplyTo,
) {
    let (kept, done) = (ctx.kept.clone(), ctx.done.clone());
    tokio::task::spawn_blocking(move || {
        let response = match kept_for(cluster, access, &kept) {
            Err(why) => Response::Refused(why),
            Ok(use_kept) => {
                let mut results = Vec::new();
                let mut bytes = 0;
                for r in held {
                    bytes += r.payload_len();
                    if !results.is_empty() && bytes > MAX_RESULT_BATCH_BYTES {
                        break;
                    }
                    results.push(r);
                }
                if use_kept && bytes < MAX_RESULT_BATCH_BYTES {
                    // Results saved while their client was slow are in memory too.
                    let skip: HashSet<JobId> = results.iter().map(|r| r.id).collect();
                    let room = MAX_RESULT_BATCH_BYTES - bytes;
                    let from_disk = kept.load(cluster, &skip, room);
                    // `load` returns one result even past the room: only an empty answer
                    // may take it, so that every answer stays within a batch's size.
                    if results.is_empty() || from_disk.iter().map(JobResult::payload_len).sum::<usize>() <= room {
                        results.extend(from_disk);
                    }
                }
                info!(cluster = %cluster.tag(), %peer, results = results.len(), "results recovered");
                Response::Recovered(Results { cluster, started: Vec::new(), results, provisional: Vec::new() })
            }
        };
        let answered = Answered { peer, channel, response, recovered: Some(cluster) };
        let _ = done.send(Completion::Answered(answered));
    });
}
