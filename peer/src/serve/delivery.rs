//! Getting results to the client: batches, one in flight at a time, with the starts that
//! ride along. A result that has waited or travelled longer than a healthy delivery takes
//! goes to disk until the client acknowledges it (a healthy run writes nothing).

use super::*;

/// A result waiting this long for its client is written to disk.
const RESULT_SAVE_AFTER: Duration = Duration::from_millis(500);

/// How long a job start waits to ride along with a result before it is sent on its own.
const START_LINGER: Duration = Duration::from_millis(2);

/// Results being delivered to a client at once; more wait and are batched.
const RESULT_BATCHES_IN_FLIGHT: usize = 1;

impl Server {
    /// Sends waiting results to the client, a batch at a time.
    pub(super) fn flush(&mut self, id: ClusterId) {
        let Some(c) = self.clusters.get_mut(&id) else { return };
        while !c.released {
            let with_results = !c.results.is_empty() && c.sending < RESULT_BATCHES_IN_FLIGHT;
            // A start travels with the job's result when the job is quick; only a job still
            // running after START_LINGER gets a message of its own.
            let waited = c.starts_since.map(|t| t.elapsed());
            let mut starts_only = !with_results && !c.started.is_empty() && c.sending_starts == 0;
            if starts_only && waited.is_some_and(|w| w < START_LINGER) {
                starts_only = false;
                if !c.starts_timer {
                    c.starts_timer = true;
                    let tx = self.internal_tx.clone();
                    let left = START_LINGER - waited.unwrap_or_default();
                    tokio::spawn(async move {
                        tokio::time::sleep(left).await;
                        let _ = tx.send(Internal::Flush { cluster: id });
                    });
                }
            }
            if !with_results && !starts_only {
                break;
            }
            let mut batch = Vec::new();
            let mut bytes = 0;
            while let Some(r) = c.results.front().filter(|_| with_results) {
                if !batch.is_empty() && bytes + r.payload_len() > MAX_RESULT_BATCH_BYTES {
                    break;
                }
                bytes += r.payload_len();
                batch.extend(c.results.pop_front());
            }
            if with_results {
                c.sending += 1;
            } else {
                c.sending_starts += 1;
            }
            let started = std::mem::take(&mut c.started);
            c.starts_since = None;
            let net = self.net.clone();
            let tx = self.internal_tx.clone();
            let client = c.client;
            self.batch_seq += 1;
            let seq = self.batch_seq;
            if !batch.is_empty() {
                c.delivering.insert(seq, (std::time::Instant::now(), batch.clone()));
            }
            tokio::spawn(async move {
                let request =
                    Request::Results(Results { cluster: id, started: started.clone(), results: batch.clone() });
                let delivered = match net.request(client, request).await {
                    Ok(Response::Ok) => true,
                    Ok(other) => {
                        warn!(cluster = %id, answer = ?other, "client did not acknowledge results");
                        false
                    }
                    Err(e) => {
                        debug!(cluster = %id, cause = %e, "result delivery failed; will retry");
                        false
                    }
                };
                let _ = tx.send(Internal::ResultsSent { cluster: id, batch, started, delivered, seq });
            });
        }
    }

    /// Writes to disk the results that have waited for their client longer than a healthy
    /// delivery takes, so that a crash of this node does not lose them.
    pub(super) fn save_waiting_results(&mut self) {
        for (id, c) in &mut self.clusters {
            // Released: its client took what it wanted; a batch still travelling is moot.
            if c.released {
                continue;
            }
            let waiting = c.unsaved_since.is_some_and(|t| t.elapsed() >= RESULT_SAVE_AFTER);
            let slow = c.delivering.values().any(|(t, _)| t.elapsed() >= RESULT_SAVE_AFTER);
            if !waiting && !slow {
                continue;
            }
            c.unsaved_since = None;
            let unsaved: Vec<JobResult> = c
                .results
                .iter()
                .chain(c.delivering.values().flat_map(|(_, b)| b.iter()))
                .filter(|r| !c.saved.contains(&r.id))
                .cloned()
                .collect();
            if unsaved.is_empty() {
                continue;
            }
            c.saved.extend(unsaved.iter().map(|r| r.id));
            let (kept, id) = (self.kept.clone(), *id);
            tokio::task::spawn_blocking(move || {
                if let Err(e) = kept.save(id, &unsaved) {
                    warn!(cluster = %id, cause = %e, "cannot keep waiting results on disk");
                }
            });
        }
    }
}
