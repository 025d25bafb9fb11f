//! End-to-end tests: real `dispy-peer` processes over real libp2p connections on
//! 127.0.0.1, and LAN tests in network namespaces the tests create.

// Tests may unwrap: a panic is how they fail.
#![allow(clippy::unwrap_used)]

mod util;

mod args_file;
mod cli;
mod cluster;
mod comforts;
mod fanout;
mod faults;
mod flood;
mod fn_extras;
mod functions;
mod gate;
mod host;
mod jobfiles;
mod lan;
mod lan_scale;
mod local;
mod malformed;
mod metrics;
mod nat;
mod node_limits;
mod partition;
mod progress;
mod psk;
mod recover_files;
mod setup;
mod status;
mod web;
