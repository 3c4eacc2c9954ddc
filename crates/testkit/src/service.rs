//! A library service (`sitemon_checker::run`, `sitemon_sync::run`) running in the test's own
//! process, with its own stop signal.
//!
//! ```no_run
//! # async fn example(config: ()) {
//! # async fn run(_config: (), _shutdown: tokio_util::sync::CancellationToken) -> Result<(), std::io::Error> { Ok(()) }
//! use sitemon_testkit::service::Running;
//!
//! let checker = Running::spawn("the checker", |shutdown| run(config, shutdown));
//! // ... the test ...
//! checker.stop().await; // panics unless it stops cleanly within STOP_PATIENCE
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The most [`Running::stop`] waits for a service to return after its stop signal: a bound
/// against hanging, not a speed requirement.
pub const STOP_PATIENCE: Duration = Duration::from_secs(60);

/// A service's `run(config, shutdown)` spawned on the test's runtime.
///
/// Dropped without [`Running::stop`] (a test that failed half-way), it is told to stop, so
/// that it does not go on beside the next test.
pub struct Running<E> {
    /// What the panics call it: "the checker", "the sync".
    name: &'static str,
    /// The stop signal the service was given.
    shutdown: CancellationToken,
    /// Its task; taken by [`Running::stop_within`].
    handle: Option<JoinHandle<Result<(), E>>>,
}

impl<E> Running<E>
where
    E: fmt::Display + Send + 'static,
{
    /// Spawns `run` with a fresh stop signal.
    pub fn spawn<F, Fut>(name: &'static str, run: F) -> Self
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
    {
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(run(shutdown.clone()));
        Self {
            name,
            shutdown,
            handle: Some(handle),
        }
    }

    /// The stop signal the service was given.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Stops the service and waits, at most [`STOP_PATIENCE`], for it to return `Ok`.
    ///
    /// # Panics
    /// When it does not return in time, panicked, or returned an error.
    pub async fn stop(self) {
        self.stop_within(STOP_PATIENCE).await;
    }

    /// [`Running::stop`] with another bound.
    ///
    /// # Panics
    /// When it does not return within `within`, panicked, or returned an error.
    pub async fn stop_within(mut self, within: Duration) {
        self.shutdown.cancel();
        let name = self.name;
        let handle = self.handle.take().expect("a running service has a task");
        match tokio::time::timeout(within, handle).await {
            Err(_) => panic!("{name} did not stop within {within:?} of its stop signal"),
            Ok(Err(join)) => panic!("{name} panicked: {join}"),
            Ok(Ok(Err(error))) => panic!("{name} stopped with an error: {error}"),
            Ok(Ok(Ok(()))) => {}
        }
    }
}

impl<E> Drop for Running<E> {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl<E> fmt::Debug for Running<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Running")
            .field("name", &self.name)
            .field("stopping", &self.shutdown.is_cancelled())
            .field(
                "finished",
                &self.handle.as_ref().is_none_or(JoinHandle::is_finished),
            )
            .finish()
    }
}
