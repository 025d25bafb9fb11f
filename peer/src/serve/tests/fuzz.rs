//! Fuzzing with `arbitrary`: the codec under every message, and the node's request handling
//! (a node driven by arbitrary requests from two peers, some aimed at a live cluster). A
//! case passes when nothing panics, the node's task lives on and no request is answered
//! twice; the node must still greet at the end.
//!
//! Cases: `DISPY_FUZZ_CASES` (default 300: a few seconds); seed: `DISPY_FUZZ_SEED` (default
//! random, printed, so that a failure can be replayed). The long run's figure is in
//! `docs/BENCHMARKS.md`.

use super::harness::{Harness, file};
use super::{PROG, refused};
use arbitrary::{Arbitrary, Unstructured};
use dispy_protocol::{ClusterId, Hello, Request, Response, decode, encode};
use libp2p::PeerId;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use std::time::Duration;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// The number of cases and a seeded generator, printed for a replay.
fn setup(test: &str) -> (u64, StdRng) {
    let cases = env_u64("DISPY_FUZZ_CASES").unwrap_or(300);
    let seed = env_u64("DISPY_FUZZ_SEED").unwrap_or_else(rand::random);
    eprintln!("{test}: {cases} cases, DISPY_FUZZ_SEED={seed}");
    (cases, StdRng::seed_from_u64(seed))
}

fn random_bytes(rng: &mut StdRng, max: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; rng.gen_range(0..max)];
    rng.fill_bytes(&mut bytes);
    bytes
}

/// Decoding any bytes is an error or a message, never a panic; a message encodes, decodes
/// to one that encodes the same (NaN time limits make `==` useless), and its bytes with a
/// few flipped decode without a panic.
fn check_codec<T>(rng: &mut StdRng, bytes: &[u8])
where
    T: for<'a> Arbitrary<'a> + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let _ = decode::<T>(bytes);
    let Ok(msg) = T::arbitrary(&mut Unstructured::new(bytes)) else { return };
    let encoded = encode(&msg).expect("a small message encodes");
    let decoded: T = decode(&encoded).unwrap_or_else(|e| panic!("{msg:?} does not decode: {e}"));
    assert_eq!(encode(&decoded).expect("encodes again"), encoded, "{msg:?} changed on its way");
    let mut flipped = encoded;
    for _ in 0..rng.gen_range(1..4) {
        let i = rng.gen_range(0..flipped.len());
        flipped[i] ^= 1 << rng.gen_range(0..8);
    }
    let _ = decode::<T>(&flipped);
}

#[test]
fn the_codec_survives_arbitrary_bytes_and_messages() {
    let (cases, mut rng) = setup("codec fuzz");
    for _ in 0..cases * 10 {
        let bytes = random_bytes(&mut rng, 4096);
        check_codec::<Request>(&mut rng, &bytes);
        check_codec::<Response>(&mut rng, &bytes);
    }
}

/// Points a request at one of the clusters the test knows (most requests would otherwise
/// name a cluster nobody reserved and be refused at the door).
fn aim(request: &mut Request, cluster: ClusterId) {
    match request {
        Request::Reserve(r) => r.cluster = cluster,
        Request::Chunk(c) => c.cluster = cluster,
        Request::Submit(s) => s.cluster = cluster,
        Request::Cancel(c) => c.cluster = cluster,
        Request::Release(r) => r.cluster = cluster,
        Request::Results(r) => r.cluster = cluster,
        Request::Recover(r) => r.cluster = cluster,
        Request::Forget(f) => f.cluster = cluster,
        Request::Declare(d) => d.cluster = cluster,
        Request::Fetch(f) => f.cluster = cluster,
        Request::Pull(p) => p.cluster = cluster,
        Request::Hello(_) => {}
    }
}

#[tokio::test(start_paused = true)]
async fn the_node_survives_arbitrary_requests() {
    let (cases, mut rng) = setup("node fuzz");
    let mut h = Harness::start(2, |_| {});
    let peers = [PeerId::random(), PeerId::random()];
    let mut live = ClusterId(1);
    let (mut sent, mut answers) = (std::collections::BTreeMap::new(), std::collections::BTreeMap::new());
    let mut results = 0;
    let mut renew = false;
    h.stage(peers[0], live.0, &[("prog", PROG)], None).await;
    for case in 0..cases {
        // A fresh cluster when the fuzz released the last one (and now and then anyway).
        if renew || case % 50 == 49 {
            // The old one goes first: a client holds only so many clusters.
            h.ask(peers[0], Request::Release(dispy_protocol::Release { cluster: live })).await;
            live = ClusterId(1000 + case);
            let r = super::harness::reserve(live.0, vec![file("prog", PROG)]);
            let answer = h.ask(peers[0], r).await;
            assert!(matches!(answer, Response::Reserved(_)) || refused(&answer).is_some(), "{answer:?}");
            renew = false;
        }
        let bytes = random_bytes(&mut rng, 2048);
        let Ok(mut request) = Request::arbitrary(&mut Unstructured::new(&bytes)) else { continue };
        // Mostly the live cluster's client speaking of it, with jobs it could have sent
        // (a time limit is refused otherwise); the rest as they came.
        let aimed = rng.gen_bool(0.75);
        let peer = if aimed && rng.gen_bool(0.9) { peers[0] } else { peers[rng.gen_range(0..2)] };
        if aimed {
            aim(&mut request, live);
            if let Request::Submit(s) = &mut request {
                for job in &mut s.jobs {
                    job.timeout_secs =
                        job.timeout_secs.filter(|_| rng.gen_bool(0.2)).or(Some(60.0)).filter(|_| rng.gen_bool(0.8));
                    job.id = dispy_protocol::JobId(job.id.0 % 64);
                }
            }
            if let Request::Cancel(c) = &mut request {
                c.jobs.iter_mut().for_each(|j| j.0 %= 64);
            }
            renew = matches!(request, Request::Release(_));
        } else if rng.gen_bool(0.3) {
            aim(&mut request, ClusterId(1));
        }
        let shown = format!("{request:?}");
        *sent.entry(shown.split('(').next().unwrap_or("?").to_string()).or_insert(0u64) += 1;
        h.send(peer, request);
        // The node handles it (answers, deliveries) on the paused clock.
        while tokio::time::timeout(Duration::from_millis(20), h.pump()).await.is_ok() {}
        while let Some(job) = h.maybe_started().await {
            job.finish(dispy_protocol::JobOutcome::Exited(0));
        }
        results += h.ack_all();
        for answer in h.drain_replies() {
            let kind = match &answer {
                Response::Refused(r) => format!("Refused({:?})", r.kind),
                other => format!("{other:?}").split('(').next().unwrap_or("?").to_string(),
            };
            *answers.entry(kind).or_insert(0u64) += 1;
        }
        assert!(!h.node.is_finished(), "case {case} took the node down: {}", &shown[..shown.len().min(2000)]);
    }
    eprintln!("node fuzz: sent {sent:?}; answers {answers:?}; results delivered {results}");
    let hello = h.ask(peers[1], Request::Hello(Hello::client("after".into()))).await;
    assert!(matches!(hello, Response::Hello(_)), "{hello:?}");
}
