//! Threads with a single-threaded runtime of their own, for what must keep running
//! whatever the application does with its runtime (a cluster's peer and scheduler, the
//! embedded node), and whose tasks should never hop between threads.

use crate::error::{Error, Result};
use std::future::Future;
use tokio::sync::oneshot;

/// Runs `task(ready)` on a new thread named `name`, on a current-thread runtime of its own;
/// `task` reports its start-up on `ready`, which gets the error instead if the runtime
/// cannot be made. `what` names the owner in messages ("the cluster").
///
/// # Errors
/// [`Error::Start`] if the thread cannot be started.
pub(crate) fn spawn<T, F, Fut>(name: &str, what: &'static str, ready: oneshot::Sender<Result<T>>, task: F) -> Result<()>
where
    T: Send + 'static,
    F: FnOnce(oneshot::Sender<Result<T>>) -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => runtime.block_on(task(ready)),
            Err(e) => {
                let _ = ready.send(Err(Error::Start(format!("cannot start {what}'s runtime: {e}"))));
            }
        })
        .map(|_| ())
        .map_err(|e| Error::Start(format!("cannot start {what}'s thread: {e}")))
}
