//! Shared by the test-driven examples (`fn_testbed`, `fn_extras`): a cluster configured
//! from the environment the end-to-end tests set, never from the LAN.

use dispy::{ClusterBuilder, Secret};
use std::time::Duration;

/// No mDNS and no local node; the secret from `DISPY_SECRET`, the nodes from `DISPY_PEERS`
/// (multiaddrs separated by spaces), reentrant when `DISPY_REENTRANT` is set.
pub(crate) fn configure<A, R>(mut b: ClusterBuilder<A, R>, discover_timeout: Duration) -> ClusterBuilder<A, R> {
    b = b.mdns(false).discover_timeout(discover_timeout).local(dispy::LocalMode::Never);
    if let Ok(s) = std::env::var("DISPY_SECRET") {
        b = b.secret(Secret::Passphrase(s));
    }
    for p in std::env::var("DISPY_PEERS").unwrap_or_default().split_whitespace() {
        b = b.peer(p.parse().expect("DISPY_PEERS holds multiaddrs"));
    }
    if std::env::var("DISPY_REENTRANT").is_ok() {
        b = b.reentrant(true);
    }
    b
}
