//! The wire format, pinned: a few messages and the exact CBOR bytes they travel as. A change
//! to a message's fields, names or order fails here first; if it is meant, it breaks nodes and
//! clients of the previous release, so it must come with a new `WIRE_VERSION`.

use dispy_protocol::{
    Cancel, ClusterId, Hello, JobId, JobOutcome, JobResult, JobSpec, Output, Refusal, RefusalKind, Request, Response,
    Results, Role, Submit, WIRE_VERSION, decode, encode,
};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Encodes `msg`, checks the bytes against `pinned` and that they decode back to `msg`.
fn pin<T>(msg: &T, pinned: &str)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let bytes = encode(msg).expect("encodes");
    assert_eq!(hex(&bytes), pinned, "the wire bytes of {msg:?} changed");
    assert_eq!(&decode::<T>(&bytes).expect("decodes"), msg);
}

#[test]
fn the_wire_version_is_pinned_with_the_bytes() {
    assert_eq!(WIRE_VERSION, PINNED_VERSION, "a new wire version: update the pinned bytes below with it");
}

const PINNED_VERSION: u32 = 1;

#[test]
fn a_submit_travels_as_pinned() {
    let msg = Request::Submit(Submit {
        cluster: ClusterId(0x2a),
        jobs: vec![JobSpec {
            id: JobId(7),
            args: vec!["-n".into(), "5".into()],
            timeout_secs: Some(1.5),
            input: vec![1, 2],
            files: Vec::new(),
        }],
    });
    pin(&msg, SUBMIT);
}

#[test]
fn a_cancel_and_a_refusal_travel_as_pinned() {
    pin(&Request::Cancel(Cancel { cluster: ClusterId(1), jobs: vec![JobId(2), JobId(3)] }), CANCEL);
    pin(&Response::Refused(Refusal::new(RefusalKind::BadPath, "no")), REFUSED);
}

#[test]
fn results_travel_as_pinned() {
    let msg = Request::Results(Results {
        cluster: ClusterId(9),
        started: vec![JobId(4)],
        results: vec![JobResult {
            id: JobId(4),
            outcome: JobOutcome::Exited(0),
            stdout: Output { bytes: b"ok\n".to_vec(), truncated: 0 },
            stderr: Output::default(),
            start_us: 10,
            end_us: 20,
            value: Vec::new(),
            returned: Vec::new(),
            return_note: None,
        }],
        provisional: Vec::new(),
    });
    pin(&msg, RESULTS);
}

#[test]
fn a_hello_travels_as_pinned() {
    let msg = Response::Hello(Hello {
        wire_version: PINNED_VERSION,
        software: "0.1.0".into(),
        role: Role::Node,
        name: "n1".into(),
        os: "linux".into(),
        arch: "x86_64".into(),
        cpus: 2,
        free_cpus: 1,
        max_file_size: None,
        memory_bytes: Some(1024),
        zombie_secs: None,
        // Absent on the wire when None: a node's Hello to an older client is unchanged.
        load: None,
    });
    pin(&msg, HELLO);
}

const SUBMIT: &str = "a1665375626d6974a267636c7573746572182a646a6f627381a462696407646172677382622d6e61356c74696d656f75745f73656373fb3ff800000000000065696e707574420102";
const CANCEL: &str = "a16643616e63656ca267636c757374657201646a6f6273820203";
const REFUSED: &str = "a16752656675736564a2646b696e646742616450617468676d657373616765626e6f";
const RESULTS: &str = "a167526573756c7473a367636c7573746572096773746172746564810467726573756c747381a762696404676f7574636f6d65a16645786974656400667374646f7574a2656279746573436f6b0a697472756e63617465640066737464657272a265627974657340697472756e6361746564006873746172745f75730a66656e645f7573146576616c756540";
const HELLO: &str = "a16548656c6c6faa6c776972655f76657273696f6e0168736f66747761726565302e312e3064726f6c65644e6f6465646e616d65626e31626f73656c696e75786461726368667838365f363464637075730269667265655f63707573016d6d61785f66696c655f73697a65f66c6d656d6f72795f6279746573190400";
