//! The operations both foreign APIs offer, in plain Rust over the FFI types: argument
//! validation (synchronous, so that a start function can refuse at once), and the async
//! bodies that run on a [`Task`](crate::task::Task)'s thread.
//!
//! - [`netcheck`]: [`NetcheckPlan`], a netcheck with the gateway probe beside it;
//! - [`portmap`]: [`MappingPlan`], a port mapping (and its verification reflector);
//! - `server`: `Server`, the embedded STUN server (feature `server`; also in the unit
//!   tests, as a reflector);
//! - [`peer`]: [`PeerPlan`], a peer connection, and [`PeerControl`], its handles' side;
//! - [`turn`]: [`TurnPlan`], a TURN allocation and the commands it takes.

mod netcheck;
mod peer;
mod portmap;
#[cfg(any(test, feature = "server"))]
mod server;
mod turn;

pub(crate) use netcheck::NetcheckPlan;
pub(crate) use peer::{PeerControl, PeerPlan};
pub(crate) use portmap::{MappingPlan, NetworkTarget};
#[cfg(any(test, feature = "server"))]
pub(crate) use server::Server;
pub(crate) use turn::{TurnCommand, TurnPlan, TurnStatus, turn_send_args};

use pinhole::stun::StunUri;

use crate::error::PinholeError;

/// The longest STUN URI accepted, bytes (the C API's label buffers hold it).
pub(crate) const MAX_URI_LEN: usize = 500;
/// The most STUN servers one netcheck accepts.
pub(crate) const MAX_SERVERS: usize = 32;
/// The longest interval between verifications of a mapping accepted, seconds (one day).
pub(crate) const MAX_VERIFY_INTERVAL_SECS: u32 = 86_400;

/// Checks a `stun:` URI given for `what`: length, syntax, no `stuns:`.
fn check_stun_uri(what: &str, uri: &str) -> Result<(), PinholeError> {
    if uri.len() > MAX_URI_LEN {
        return Err(PinholeError::invalid(format!(
            "{what}: a STUN URI is longer than {MAX_URI_LEN} bytes"
        )));
    }
    let parsed: StunUri = uri
        .parse()
        .map_err(|e| PinholeError::invalid(format!("{what}: {uri}: {e}")))?;
    if parsed.secure {
        return Err(PinholeError::Unsupported(format!(
            "{what}: {uri}: stuns: (TLS) is not supported here"
        )));
    }
    Ok(())
}
