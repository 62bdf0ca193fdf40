//! Shared by the integration tests: a UDP echo peer ([`echo`]), and for those that count
//! heap allocations, a global allocator that
//! wraps the system one and counts the allocations (and reallocations) of the threads that
//! ask to be counted, and the bytes they hold. Each test crate installs it with
//! `#[global_allocator] static GLOBAL: common::Counting = common::Counting;`.
//!
//! Implementing `GlobalAlloc` is unsafe by definition: the library forbids unsafe code, but
//! a test is a crate of its own, and this code only forwards each call unchanged to
//! `System`, under the same contract the caller upheld.
#![allow(unsafe_code, dead_code)]

pub(crate) mod echo;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The counting allocator.
pub(crate) struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Whether this thread's allocations count. Per-thread, so that the test harness's
    /// other threads (output capture, other tests, servers and peers) cannot pollute a
    /// measurement.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    /// Bytes this thread allocated minus bytes it freed while counting.
    static LIVE_BYTES: Cell<isize> = const { Cell::new(0) };
}

fn counting() -> bool {
    // `try_with`: the thread-local may be gone while a thread shuts down.
    COUNTING.try_with(Cell::get).unwrap_or(false)
}

fn note_allocation(bytes: usize) {
    if counting() {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        let _ = LIVE_BYTES.try_with(|b| b.set(b.get() + bytes as isize));
    }
}

fn note_free(bytes: usize) {
    if counting() {
        let _ = LIVE_BYTES.try_with(|b| b.set(b.get() - bytes as isize));
    }
}

// SAFETY: every method forwards to `System` with the arguments it was given; counting
// touches neither the memory nor the layout.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation(layout.size());
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_allocation(layout.size());
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_free(layout.size());
        note_allocation(new_size);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note_free(layout.size());
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Starts counting this thread's allocations; returns the count so far.
pub(crate) fn start_counting() -> usize {
    COUNTING.with(|c| c.set(true));
    ALLOCATIONS.load(Ordering::Relaxed)
}

/// Stops counting this thread's allocations; returns the count so far.
pub(crate) fn stop_counting() -> usize {
    COUNTING.with(|c| c.set(false));
    ALLOCATIONS.load(Ordering::Relaxed)
}

/// Bytes this thread allocated minus bytes it freed while counting, so far (a free of
/// memory allocated before counting began makes it smaller; memory freed by another
/// thread is not seen).
pub(crate) fn live_bytes() -> isize {
    LIVE_BYTES.with(Cell::get)
}

/// Heap allocations made by this thread while `f` runs.
pub(crate) fn allocations_during<R>(f: impl FnOnce() -> R) -> (usize, R) {
    let before = start_counting();
    let r = f();
    (stop_counting() - before, r)
}
