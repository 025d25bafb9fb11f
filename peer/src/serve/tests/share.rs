//! A cluster's files passed between its nodes: pulled from other nodes at the client's
//! word (checked against the file's hash, liars named), and served to nodes that present
//! the cluster's share token, to no one else.

use super::harness::{Harness, file, job, reserve};
use super::{PROG, refused};
use dispy_protocol::{
    CHUNK_SIZE, Chunk, ClusterId, Fetch, FileEntry, JobOutcome, Pull, PullState, Pulled, RefusalKind, Request,
    Response, ShareToken, Source, Submit,
};
use libp2p::PeerId;

const SHARE: ShareToken = ShareToken([9; 32]);

/// A dataset of a few chunks, its last one short.
fn dataset() -> Vec<u8> {
    (0..(3 * CHUNK_SIZE + 1000)).map(|i| (i % 251) as u8).collect()
}

fn shared_reserve(cluster: u64, files: Vec<FileEntry>, share: Option<ShareToken>) -> Request {
    let mut r = reserve(cluster, files);
    if let Request::Reserve(r) = &mut r {
        r.share = share;
    }
    r
}

fn source(peer: PeerId) -> Source {
    Source {
        peer: peer.to_bytes(),
        addrs: vec!["/ip4/10.0.0.9/tcp/9700".parse::<libp2p::Multiaddr>().unwrap().to_vec()],
    }
}

fn pull(hash: dispy_protocol::FileHash, from: &[PeerId]) -> Request {
    Request::Pull(Pull { cluster: ClusterId(1), hash, from: from.iter().copied().map(source).collect() })
}

/// Sends the program, so that only the dataset is missing.
async fn send_prog(h: &mut Harness, client: PeerId) {
    let chunk = Chunk { cluster: ClusterId(1), hash: file("prog", PROG).hash, offset: 0, data: PROG.to_vec() };
    assert!(matches!(h.ask(client, Request::Chunk(chunk)).await, Response::ChunkStored(s) if s.complete));
}

/// A node with cluster 1 reserved (share token [`SHARE`]) for the program and a dataset,
/// neither sent yet.
async fn with_dataset() -> (Harness, PeerId, Vec<u8>, FileEntry) {
    let mut h = Harness::start(1, |_| {});
    let client = PeerId::random();
    let data = dataset();
    let entry = file("data.bin", &data);
    let files = vec![file("prog", PROG), entry.clone()];
    let Response::Reserved(r) = h.ask(client, shared_reserve(1, files, Some(SHARE))).await else { panic!() };
    assert_eq!(r.missing.len(), 2);
    (h, client, data, entry)
}

#[tokio::test(start_paused = true)]
async fn a_file_pulled_from_an_honest_node_is_stored_and_a_liar_is_named() {
    let (mut h, client, data, entry) = with_dataset().await;
    send_prog(&mut h, client).await;

    // The first source sends bytes of the right length that are not the file; the second
    // is unreachable; the third is honest.
    let (liar, gone, honest) = (PeerId::random(), PeerId::random(), PeerId::random());
    let mut wrong = data.clone();
    wrong[CHUNK_SIZE + 7] ^= 1;
    h.sources.insert(liar, wrong);
    h.sources.insert(honest, data.clone());
    let answer = h.ask(client, pull(entry.hash, &[liar, gone, honest])).await;
    let Response::Pulled(Pulled { state: PullState::Done, received, liars, .. }) = answer else { panic!("{answer:?}") };
    assert_eq!(received, data.len() as u64);
    assert_eq!(liars, vec![liar.to_bytes()], "the liar is named, the unreachable node is not");
    // Every fetch carried the cluster's token, and each source was asked from the start.
    assert!(h.fetched.iter().all(|(_, f)| f.share == Some(SHARE) && f.cluster == ClusterId(1)));
    let first_of = |p: PeerId| h.fetched.iter().filter(|(q, _)| *q == p).map(|(_, f)| f.offset).min();
    assert_eq!((first_of(liar), first_of(honest)), (Some(0), Some(0)));

    // The node runs jobs with it, and serves it to other nodes of the cluster now.
    let submit = Request::Submit(Submit { cluster: ClusterId(1), jobs: vec![job(1)] });
    assert!(matches!(h.ask(client, submit).await, Response::Accepted(_)));
    h.started().await.finish(JobOutcome::Exited(0));
    assert_eq!(h.results(1).await[0].outcome, JobOutcome::Exited(0));
    let other_node = PeerId::random();
    let fetch = |offset, share| Request::Fetch(Fetch { cluster: ClusterId(1), hash: entry.hash, offset, share });
    let Response::Data(d) = h.ask(other_node, fetch(3 * CHUNK_SIZE as u64, Some(SHARE))).await else { panic!() };
    assert_eq!(d.data, &data[3 * CHUNK_SIZE..]);
    // Asked again: done at once, no fetch.
    let before = h.fetched.len();
    let again = h.ask(client, pull(entry.hash, &[honest])).await;
    assert!(matches!(again, Response::Pulled(Pulled { state: PullState::Done, .. })), "{again:?}");
    assert_eq!(h.fetched.len(), before);
}

#[tokio::test(start_paused = true)]
async fn when_no_source_gives_the_file_the_client_hears_why_and_may_send_it() {
    let (mut h, client, data, entry) = with_dataset().await;
    let (short, gone) = (PeerId::random(), PeerId::random());
    h.sources.insert(short, data[..CHUNK_SIZE + 5].to_vec());
    let answer = h.ask(client, pull(entry.hash, &[short, gone])).await;
    let Response::Pulled(Pulled { state: PullState::Failed(why), liars, .. }) = answer else { panic!("{answer:?}") };
    assert!(why.contains(&short.to_string()) && why.contains(&gone.to_string()), "{why}");
    assert_eq!(liars, vec![short.to_bytes()], "a short chunk is a lie");
    // The client sends it instead: the partial copies are gone, the upload starts afresh.
    for (i, part) in data.chunks(CHUNK_SIZE).enumerate() {
        let chunk =
            Chunk { cluster: ClusterId(1), hash: entry.hash, offset: (i * CHUNK_SIZE) as u64, data: part.to_vec() };
        assert!(matches!(h.ask(client, Request::Chunk(chunk)).await, Response::ChunkStored(_)));
    }
    let partial = std::fs::read_dir(h.dest.path().join("store/.partial")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(partial, 0, "no partial copy is left");
}

#[tokio::test(start_paused = true)]
async fn a_nodes_files_go_only_to_nodes_of_the_cluster_and_only_its_files() {
    let mut h = Harness::start(1, |_| {});
    let client = PeerId::random();
    let (secret, shared) = (file("secret.txt", b"not yours"), file("prog", PROG));
    let Response::Reserved(_) = h.ask(client, shared_reserve(1, vec![shared.clone()], Some(SHARE))).await else {
        panic!()
    };
    send_prog(&mut h, client).await;
    // Another client's cluster, holding a file of its own.
    let other = PeerId::random();
    let mut r = shared_reserve(2, vec![shared.clone(), secret.clone()], Some(ShareToken([1; 32])));
    if let Request::Reserve(r) = &mut r {
        r.program = "prog".into();
    }
    let Response::Reserved(_) = h.ask(other, r).await else { panic!() };
    let chunk = Chunk { cluster: ClusterId(2), hash: secret.hash, offset: 0, data: b"not yours".to_vec() };
    assert!(matches!(h.ask(other, Request::Chunk(chunk)).await, Response::ChunkStored(_)));

    let stranger = PeerId::random();
    let fetch = |cluster, hash, share| Request::Fetch(Fetch { cluster: ClusterId(cluster), hash, offset: 0, share });
    // The right token for cluster 1 gets its file.
    assert!(matches!(h.ask(stranger, fetch(1, shared.hash, Some(SHARE))).await, Response::Data(_)));
    // A wrong token, or cluster 1's token for cluster 2, gets nothing.
    let wrong = h.ask(stranger, fetch(1, shared.hash, Some(ShareToken([8; 32])))).await;
    assert_eq!(refused(&wrong), Some(RefusalKind::NotOwner));
    let crossed = h.ask(stranger, fetch(2, secret.hash, Some(SHARE))).await;
    assert_eq!(refused(&crossed), Some(RefusalKind::NotOwner));
    // Cluster 1's token does not open another cluster's file through cluster 1.
    let browse = h.ask(stranger, fetch(1, secret.hash, Some(SHARE))).await;
    assert_eq!(refused(&browse), Some(RefusalKind::BadFile));
    // A cluster reserved without a token is shared with nobody, and pulls nothing.
    let Response::Reserved(_) = h.ask(client, shared_reserve(3, vec![shared.clone()], None)).await else { panic!() };
    let none = h.ask(stranger, fetch(3, shared.hash, Some(ShareToken([0; 32])))).await;
    assert_eq!(refused(&none), Some(RefusalKind::NotOwner));
    let mut p = pull(shared.hash, &[stranger]);
    if let Request::Pull(p) = &mut p {
        p.cluster = ClusterId(3);
    }
    assert_eq!(refused(&h.ask(client, p).await), Some(RefusalKind::BadRequest));
    // Nor does a peer pull into a cluster it does not hold.
    assert_eq!(refused(&h.ask(stranger, pull(shared.hash, &[client])).await), Some(RefusalKind::UnknownCluster));
    assert!(h.fetched.is_empty(), "no fetch was made");
}

#[tokio::test(start_paused = true)]
async fn a_copy_still_arriving_is_served_as_far_as_it_is_written() {
    let (mut h, client, data, entry) = with_dataset().await;
    let chunk = |i: usize| {
        let part = data.chunks(CHUNK_SIZE).nth(i).unwrap().to_vec();
        Request::Chunk(Chunk { cluster: ClusterId(1), hash: entry.hash, offset: (i * CHUNK_SIZE) as u64, data: part })
    };
    let node = PeerId::random();
    let fetch = |i: usize| {
        Request::Fetch(Fetch {
            cluster: ClusterId(1),
            hash: entry.hash,
            offset: (i * CHUNK_SIZE) as u64,
            share: Some(SHARE),
        })
    };
    // Not begun: a puller named this node because the file is coming; it asks again.
    assert_eq!(refused(&h.ask(node, fetch(0)).await), Some(RefusalKind::NotYet));
    for i in 0..2 {
        assert!(matches!(h.ask(client, chunk(i)).await, Response::ChunkStored(s) if !s.complete));
    }
    let Response::Data(d) = h.ask(node, fetch(1)).await else { panic!("written bytes are served") };
    assert_eq!(d.data, &data[CHUNK_SIZE..2 * CHUNK_SIZE]);
    let later = h.ask(node, fetch(2)).await;
    assert_eq!(refused(&later), Some(RefusalKind::NotYet), "{later:?}");
    let past = Request::Fetch(Fetch {
        cluster: ClusterId(1),
        hash: entry.hash,
        offset: data.len() as u64 + 1,
        share: Some(SHARE),
    });
    assert_eq!(refused(&h.ask(node, past).await), Some(RefusalKind::BadFile));
    for i in 2..4 {
        assert!(matches!(h.ask(client, chunk(i)).await, Response::ChunkStored(_)));
    }
    let Response::Data(d) = h.ask(node, fetch(3)).await else { panic!("the stored file is served") };
    assert_eq!(d.data, &data[3 * CHUNK_SIZE..]);
}
