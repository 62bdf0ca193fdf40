//! `tracing` forwarded to one foreign log sink: the C API's log callback or a UniFFI
//! [`PinholeLogger`](crate::api::PinholeLogger). Setting one replaces the other.
//!
//! A minimal [`Subscriber`] is the default dispatcher of every thread pinhole starts (each
//! operation's thread, where all of pinhole's work and logging happens); nothing is
//! installed process-wide, so a Rust host's own subscriber is left alone. It formats each
//! event as `message key=value …`; spans are not tracked. Events come from several
//! threads, possibly at once.

use std::cell::Cell;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Dispatch, Event, Level, Metadata, Subscriber};

/// A log record's severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, uniffi::Enum)]
pub enum LogLevel {
    /// Very detailed tracing.
    Trace,
    /// Debugging detail.
    Debug,
    /// Informational.
    Info,
    /// Something unexpected that pinhole handled.
    Warn,
    /// An operation failed.
    Error,
    /// Nothing (as a threshold: logging off).
    Off,
}

impl LogLevel {
    fn filter(self) -> LevelFilter {
        match self {
            LogLevel::Trace => LevelFilter::TRACE,
            LogLevel::Debug => LevelFilter::DEBUG,
            LogLevel::Info => LevelFilter::INFO,
            LogLevel::Warn => LevelFilter::WARN,
            LogLevel::Error => LevelFilter::ERROR,
            LogLevel::Off => LevelFilter::OFF,
        }
    }

    fn of(level: &Level) -> Self {
        match *level {
            Level::TRACE => LogLevel::Trace,
            Level::DEBUG => LogLevel::Debug,
            Level::INFO => LogLevel::Info,
            Level::WARN => LogLevel::Warn,
            _ => LogLevel::Error,
        }
    }

    /// The most verbose level as a number (for the threshold atomic): Trace 0 … Off 5.
    fn index(self) -> usize {
        self as usize
    }
}

/// Where log records go.
pub(crate) trait Sink: Send + Sync {
    /// One record. Called from any thread.
    fn log(&self, level: LogLevel, target: &str, message: &str);
}

static SINK: RwLock<Option<Arc<dyn Sink>>> = RwLock::new(None);
/// The threshold as [`LogLevel::index`]; `Off` until a sink is set.
static THRESHOLD: AtomicUsize = AtomicUsize::new(5);

thread_local! {
    /// Set while a sink runs: a sink that logs through pinhole again is not re-entered.
    static IN_SINK: Cell<bool> = const { Cell::new(false) };
}

/// Sets (or with `None` removes) the sink and the most verbose level it receives.
pub(crate) fn set_sink(sink: Option<Arc<dyn Sink>>, level: LogLevel) {
    let level = if sink.is_some() { level } else { LogLevel::Off };
    match SINK.write() {
        Ok(mut s) => *s = sink,
        Err(poisoned) => *poisoned.into_inner() = sink,
    }
    THRESHOLD.store(level.index(), Ordering::Release);
    tracing::callsite::rebuild_interest_cache();
}

/// The forwarding dispatcher. pinhole's own threads make it their default (see
/// [`crate::task`]), so nothing global is installed and a host's own subscriber is left
/// alone.
pub(crate) fn dispatch() -> Dispatch {
    static DISPATCH: OnceLock<Dispatch> = OnceLock::new();
    DISPATCH.get_or_init(|| Dispatch::new(Forwarder)).clone()
}

fn threshold() -> LogLevel {
    match THRESHOLD.load(Ordering::Acquire) {
        0 => LogLevel::Trace,
        1 => LogLevel::Debug,
        2 => LogLevel::Info,
        3 => LogLevel::Warn,
        4 => LogLevel::Error,
        _ => LogLevel::Off,
    }
}

struct Forwarder;

/// Clears [`IN_SINK`] when dropped, also when a sink unwinds.
struct ResetInSink;

impl Drop for ResetInSink {
    fn drop(&mut self) {
        IN_SINK.with(|f| f.set(false));
    }
}

struct Fields {
    message: String,
    rest: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.rest, " {}={value}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.rest, " {}={value:?}", field.name());
        }
    }
}

impl Subscriber for Forwarder {
    fn register_callsite(&self, _: &'static Metadata<'static>) -> Interest {
        // The threshold changes at run time: ask `enabled` every time.
        Interest::sometimes()
    }

    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.is_event() && LogLevel::of(metadata.level()) >= threshold()
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(threshold().filter())
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        if IN_SINK.with(Cell::get) {
            return;
        }
        let sink = match SINK.read() {
            Ok(s) => s.clone(),
            Err(_) => return,
        };
        let Some(sink) = sink else { return };
        let mut fields = Fields {
            message: String::new(),
            rest: String::new(),
        };
        event.record(&mut fields);
        fields.message.push_str(&fields.rest);
        let meta = event.metadata();
        IN_SINK.with(|f| f.set(true));
        let _reset = ResetInSink;
        sink.log(LogLevel::of(meta.level()), meta.target(), &fields.message);
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}
