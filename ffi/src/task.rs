//! One operation, one thread: every netcheck, port mapping and server runs on its own
//! thread with its own single-threaded tokio runtime.
//!
//! This keeps the threading contract simple to state (a handle's callbacks run on that
//! handle's thread, one at a time, in order), needs no process-wide runtime that would
//! outlive the last handle, and lets a handle's destruction join its thread, so that no
//! callback runs after it and nothing is left allocated.
//!
//! A task started with [`Task::spawn_parked`] (the C API's handles) does not end its
//! thread when its work is done: the thread waits for the owner's [`End`], so that a
//! non-blocking destruction ([`Task::end_detached`]) always has a thread of the handle's
//! own on which to free it and report the end, and never runs that on the caller's.

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

    /// Waits for the value at most `timeout` (a condition variable only, like
    /// [`Rendezvous::take`]: the caller's thread gets no standard-library handle).
    pub(crate) fn take_timeout(&self, timeout: std::time::Duration) -> Option<T> {
        let deadline = std::time::Instant::now() + timeout;
        let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(v) = slot.take() {
                return Some(v);
            }
            let left = deadline.checked_duration_since(std::time::Instant::now())?;
            slot = self
                .ready
                .wait_timeout(slot, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
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

/// What runs on a task's thread once its work is done (after its runtime is dropped).
pub(crate) type Hook = Box<dyn FnOnce() + Send>;

/// How a parked task's thread ends: the owner joins it, or it ends on its own after
/// running the hook.
pub(crate) enum End {
    /// The owner waits for the thread (or is the thread itself).
    Join,
    /// Nobody waits: the thread runs the hook, if any, and ends.
    Detach(Option<Hook>),
}

/// A thread running one future to completion.
pub(crate) struct Task {
    stop: watch::Sender<bool>,
    finished: watch::Receiver<bool>,
    thread: Option<JoinHandle<()>>,
    id: u64,
    /// Parked tasks: where the owner hands over the [`End`]; `None` once handed over (and
    /// for tasks that are not parked).
    end: Option<Arc<Rendezvous<End>>>,
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
        Self::start(name, false, make)
    }

    /// Like [`Task::spawn`], but when the work is done the thread waits for the owner's
    /// [`End`] ([`Task::join`], [`Task::detach`], [`Task::end_detached`] or dropping the
    /// task) instead of ending: a hook handed over by [`Task::end_detached`] then always
    /// runs on this thread.
    pub(crate) fn spawn_parked<F, Fut>(name: &str, make: F) -> Result<Task, PinholeError>
    where
        F: FnOnce(StopSignal) -> Fut + Send + 'static,
        Fut: Future<Output = ()>,
    {
        Self::start(name, true, make)
    }

    fn start<F, Fut>(name: &str, parked: bool, make: F) -> Result<Task, PinholeError>
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
        let end = parked.then(|| Arc::new(Rendezvous::<End>::default()));
        let end2 = end.clone();
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
                if let Some(end) = end2 {
                    if let End::Detach(Some(hook)) = end.take() {
                        let _ = std::panic::catch_unwind(AssertUnwindSafe(hook));
                    }
                }
            })?;
        built.take()?;
        Ok(Task {
            stop,
            finished,
            thread: Some(thread),
            id,
            end,
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

    /// Hands a parked thread its end (once; nothing for a task that is not parked).
    fn hand_over(&mut self, end: End) {
        if let Some(slot) = self.end.take() {
            slot.put(end);
        }
    }

    fn join_inner(&mut self) {
        self.hand_over(End::Join);
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
        self.hand_over(End::Detach(None));
        self.thread.take();
    }

    /// Stops and detaches a parked task without waiting for anything: once the work is
    /// done (a running callback returned, the operation's own ending finished) and the
    /// runtime is dropped, `hook` runs on the task's thread, exactly once, and the thread
    /// ends. Gives both back for a task that is not parked (it could not promise that).
    pub(crate) fn end_detached(mut self, hook: Hook) -> Result<(), (Task, Hook)> {
        if self.end.is_none() {
            return Err((self, hook));
        }
        self.stop();
        self.hand_over(End::Detach(Some(hook)));
        self.thread.take();
        Ok(())
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        self.stop();
        self.join_inner();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use super::*;

    /// A parked task's thread outlives its work until its end is handed over; the hook of
    /// `end_detached` runs once, on that thread, after the work (including what the work
    /// does when asked to stop) and never on the caller's.
    #[test]
    fn a_parked_task_runs_the_hook_once_on_its_own_thread_after_its_work() {
        let gate = Arc::new(Rendezvous::<()>::default());
        let gate2 = gate.clone();
        let task = Task::spawn_parked("test-parked", move |mut stop| async move {
            stop.wait().await;
            // The operation's own ending, still blocked when end_detached returns.
            gate2.take();
        })
        .unwrap();
        let runs = Arc::new(AtomicUsize::new(0));
        let on = Arc::new(Mutex::new(None));
        let done = Arc::new(Rendezvous::<()>::default());
        let (runs2, on2, done2) = (runs.clone(), on.clone(), done.clone());
        let caller = std::thread::current().id();
        let finished = task.finished();
        let hook: Hook = Box::new(move || {
            runs2.fetch_add(1, Ordering::SeqCst);
            *on2.lock().unwrap() = Some(std::thread::current().id());
            done2.put(());
        });
        assert!(task.end_detached(hook).is_ok());
        // Returned while the work is still blocked: the hook has not run.
        assert_eq!(runs.load(Ordering::SeqCst), 0);
        assert!(!*finished.borrow());
        gate.put(());
        done.take();
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_ne!(on.lock().unwrap().unwrap(), caller);
    }

    /// Joining or dropping a parked task whose work is done wakes its waiting thread.
    #[test]
    fn a_parked_task_whose_work_is_done_is_joined_and_dropped() {
        let task = Task::spawn_parked("test-parked", |_| async {}).unwrap();
        let mut finished = task.finished();
        for _ in 0..200 {
            if *finished.borrow_and_update() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(task.is_finished());
        task.join();
        drop(Task::spawn_parked("test-parked", |_| async {}).unwrap());
        Task::spawn_parked("test-parked", |_| async {})
            .unwrap()
            .detach();
        // Not parked: no hook can be promised.
        let plain = Task::spawn("test-plain", |_| async {}).unwrap();
        assert!(plain.end_detached(Box::new(|| {})).is_err());
    }
}
