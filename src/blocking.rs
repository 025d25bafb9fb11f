//! Blocking wrappers, for programs that are not async: [`BlockingCluster`] owns a small
//! tokio runtime that carries its calls to the cluster (whose peer and scheduler run on a
//! thread of their own, as for every cluster), and [`crate::Job::result`] waits for a job.
//!
//! ```no_run
//! fn square(x: u64) -> u64 { x * x }
//!
//! fn main() -> dispy::Result<()> {
//!     dispy::worker!(square);
//!     let mut cluster = dispy::Cluster::function(square).start_blocking()?;
//!     let jobs: Vec<_> = (0..10).map(|i| cluster.submit(i)).collect::<Result<_, _>>()?;
//!     for job in &jobs {
//!         println!("{:?}", job.result());
//!     }
//!     println!("{}", cluster.close()?);
//!     Ok(())
//! }
//! ```

use crate::builder::ClusterBuilder;
use crate::cluster::Cluster;
use crate::error::{Error, Result};
use crate::job::Job;
use crate::report::{NodeInfo, Stats};

/// A [`Cluster`] driven from synchronous code. Must not be used from inside an async task.
pub struct BlockingCluster<A, R> {
    runtime: tokio::runtime::Runtime,
    inner: Cluster<A, R>,
}

impl<A, R> std::fmt::Debug for BlockingCluster<A, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockingCluster").field("inner", &self.inner).finish_non_exhaustive()
    }
}

impl<A, R> ClusterBuilder<A, R> {
    /// [`ClusterBuilder::start`] for synchronous programs.
    ///
    /// # Errors
    /// As [`ClusterBuilder::start`], and [`Error::Start`] if no runtime can be made.
    pub fn start_blocking(self) -> Result<BlockingCluster<A, R>> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Start(format!("cannot start a runtime: {e}")))?;
        let inner = runtime.block_on(self.start())?;
        Ok(BlockingCluster { runtime, inner })
    }
}

impl<A, R> BlockingCluster<A, R> {
    /// [`Cluster::submit`].
    ///
    /// # Errors
    /// As [`Cluster::submit`].
    pub fn submit(&mut self, arg: A) -> Result<Job<R>> {
        self.runtime.block_on(self.inner.submit(arg))
    }

    /// [`Cluster::cancel`].
    ///
    /// # Errors
    /// As [`Cluster::cancel`].
    pub fn cancel(&self, job: &Job<R>) -> Result<()> {
        self.runtime.block_on(self.inner.cancel(job))
    }

    /// [`Cluster::wait`].
    ///
    /// # Errors
    /// As [`Cluster::wait`].
    pub fn wait(&self) -> Result<()> {
        self.runtime.block_on(self.inner.wait())
    }

    /// [`Cluster::nodes`].
    ///
    /// # Errors
    /// As [`Cluster::nodes`].
    pub fn nodes(&self) -> Result<Vec<NodeInfo>> {
        self.runtime.block_on(self.inner.nodes())
    }

    /// [`Cluster::stats`].
    ///
    /// # Errors
    /// As [`Cluster::stats`].
    pub fn stats(&self) -> Result<Stats> {
        self.runtime.block_on(self.inner.stats())
    }

    /// [`Cluster::close`].
    ///
    /// # Errors
    /// As [`Cluster::close`].
    pub fn close(self) -> Result<Stats> {
        let BlockingCluster { runtime, inner } = self;
        runtime.block_on(inner.close())
    }
}
