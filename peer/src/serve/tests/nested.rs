//! Nested file names (a directory sent as a tree): which a node takes, which it refuses.

use super::harness::{Harness, file, reserve};
use dispy_protocol::{RefusalKind, Request, Response};
use libp2p::PeerId;

async fn answer_to(names: &[&str]) -> Response {
    let mut h = Harness::start(1, |_| {});
    let files = names.iter().enumerate().map(|(i, n)| file(n, format!("file {i}").as_bytes())).collect();
    let mut r = reserve(1, files);
    if let Request::Reserve(r) = &mut r {
        r.program = names[0].into();
    }
    h.ask(PeerId::random(), r).await
}

#[tokio::test(start_paused = true)]
async fn nested_names_are_taken() {
    let answer = answer_to(&["prog", "data/a.txt", "data/sub/b.bin", "data/sub/deeper/c"]).await;
    assert!(matches!(answer, Response::Reserved(_)), "{answer:?}");
}

#[tokio::test(start_paused = true)]
async fn names_that_escape_or_clash_are_refused() {
    for bad in ["a/../../x", "data/../../x", "/etc/passwd", "data//a", "data/./a", "data/", "data/.."] {
        let answer = answer_to(&["prog", bad]).await;
        let Response::Refused(r) = &answer else { panic!("{bad} taken: {answer:?}") };
        assert_eq!(r.kind, RefusalKind::BadPath, "{bad}: {r:?}");
        assert!(r.message.contains(bad), "{bad}: {}", r.message);
    }
    let clash = answer_to(&["prog", "data", "data/a"]).await;
    assert!(matches!(&clash, Response::Refused(r) if r.kind == RefusalKind::BadPath), "{clash:?}");
}
