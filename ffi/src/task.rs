//! One operation, one thread: every netcheck, port mapping and server runs on its own
//! thread with its own single-threaded tokio runtime.
//!
//! This keeps the threading contract simple to state (a handle's callbacks run on that
//! handle's thread, one at a time, in order), needs no process-wide runtime that would
//! outlive the last handle, and lets a handle's destruction join its thread, so that no
//! callback runs after it and nothing is left allocated.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::thread::{JoinHandle, ThreadId};

use tokio::sync::watch;

use crate::error::PinholeError;

/// Resolves when the task is asked to stop.
pub(crate) struct StopSignal(watch::Receiver<bool>);

impl StopSignal {
    /// Waits until [`Task::stop`] is called or the [`Task`] is dropped.
    pub(crate) async fn wait(&mut self) {
        // An error means the sender is gone: the task was dropped, which also means stop.
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}

/// A thread running one future to completion.
pub(crate) struct Task {
    stop: watch::Sender<bool>,
    finished: watch::Receiver<bool>,
    thread: Option<JoinHandle<()>>,
    thread_id: ThreadId,
}

impl Task {
    /// Starts a thread named `name` that runs `make(stop)` on a fresh current-thread
    /// runtime. The runtime is built here, so that failing to build it is reported.
    pub(crate) fn spawn<F, Fut>(name: &str, make: F) -> Result<Task, PinholeError>
    where
        F: FnOnce(StopSignal) -> Fut + Send + 'static,
        Fut: Future<Output = ()>,
    {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()?;
        let (stop, stop_rx) = watch::channel(false);
        let (finished_tx, finished) = watch::channel(false);
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                // A panic (a bug, or a foreign callback that unwound) ends the operation
                // but must not take the thread down noisily: the handle stays valid.
                let _ = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    runtime.block_on(make(StopSignal(stop_rx)));
                }));
                drop(runtime);
                finished_tx.send_replace(true);
            })?;
        let thread_id = thread.thread().id();
        Ok(Task {
            stop,
            finished,
            thread: Some(thread),
            thread_id,
        })
    }

    /// Asks the operation to stop; returns at once.
    pub(crate) fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Whether the thread has finished its work.
    pub(crate) fn is_finished(&self) -> bool {
        *self.finished.borrow()
    }

    /// A receiver that turns true when the thread has finished.
    pub(crate) fn finished(&self) -> watch::Receiver<bool> {
        self.finished.clone()
    }

    /// Whether the caller runs on this task's own thread (inside one of its callbacks).
    pub(crate) fn is_current(&self) -> bool {
        std::thread::current().id() == self.thread_id
    }

    /// Waits for the thread to end, unless called from the thread itself (then it is
    /// detached: it ends by itself when the callback returns).
    pub(crate) fn join(mut self) {
        self.join_inner();
    }

    fn join_inner(&mut self) {
        if let Some(t) = self.thread.take() {
            if !self.is_current() {
                let _ = t.join();
            }
        }
    }

    /// Stops and detaches: the thread finishes on its own (used where blocking is not
    /// acceptable, such as a garbage collector's finalizer).
    pub(crate) fn detach(mut self) {
        self.stop();
        self.thread.take();
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        self.stop();
        self.join_inner();
    }
}
