//! One operation, one thread: every netcheck, port mapping and server runs on its own
//! thread with its own single-threaded tokio runtime.
//!
//! This keeps the threading contract simple to state (a handle's callbacks run on that
//! handle's thread, one at a time, in order), needs no process-wide runtime that would
//! outlive the last handle, and lets a handle's destruction join its thread, so that no
//! callback runs after it and nothing is left allocated.

use std::cell::Cell;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use tokio::sync::watch;

use crate::error::PinholeError;

thread_local! {
    /// The id of the task whose thread this is (0: not a task's thread).
    static TASK_ID: Cell<u64> = const { Cell::new(0) };
}

/// A value handed from one thread to a waiting one (a mutex and a condition variable:
/// unlike a channel, waiting needs no handle of the waiting thread).
pub(crate) struct Rendezvous<T> {
    slot: Mutex<Option<T>>,
    ready: Condvar,
}

impl<T> Default for Rendezvous<T> {
    fn default() -> Self {
        Rendezvous {
            slot: Mutex::new(None),
            ready: Condvar::new(),
        }
    }
}

impl<T> Rendezvous<T> {
    /// Hands over the value.
    pub(crate) fn put(&self, value: T) {
        let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
        *slot = Some(value);
        self.ready.notify_all();
    }

    /// Waits for the value.
    pub(crate) fn take(&self) -> T {
        let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(v) = slot.take() {
                return v;
            }
            slot = self.ready.wait(slot).unwrap_or_else(|p| p.into_inner());
        }
    }
}

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
    id: u64,
}

impl Task {
    /// Starts a thread named `name` that runs `make(stop)` on a fresh current-thread
    /// runtime, and waits until the runtime is built, so that failing to build it is
    /// reported here.
    ///
    /// The caller's thread only spawns and waits on a condition variable: nothing here
    /// makes the standard library allocate a handle for the caller's thread, which a
    /// C program's main thread would never free.
    pub(crate) fn spawn<F, Fut>(name: &str, make: F) -> Result<Task, PinholeError>
    where
        F: FnOnce(StopSignal) -> Fut + Send + 'static,
        Fut: Future<Output = ()>,
    {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let (stop, stop_rx) = watch::channel(false);
        let (finished_tx, finished) = watch::channel(false);
        let built = Arc::new(Rendezvous::default());
        let built2 = built.clone();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                TASK_ID.with(|t| t.set(id));
                let _log = tracing::dispatcher::set_default(&crate::log::dispatch());
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .enable_time()
                    .build()
                {
                    Ok(rt) => {
                        built2.put(Ok(()));
                        rt
                    }
                    Err(e) => {
                        built2.put(Err(PinholeError::from(e)));
                        return;
                    }
                };
                drop(built2);
                // A panic (a bug, or a foreign callback that unwound) ends the operation
                // but must not take the thread down noisily: the handle stays valid.
                let _ = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    runtime.block_on(make(StopSignal(stop_rx)));
                }));
                drop(runtime);
                finished_tx.send_replace(true);
            })?;
        built.take()?;
        Ok(Task {
            stop,
            finished,
            thread: Some(thread),
            id,
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
        TASK_ID.with(Cell::get) == self.id
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
