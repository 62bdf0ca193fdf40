//! The embedded STUN server, on a thread of its own.

use std::net::SocketAddr;
use std::sync::Arc;

use pinhole::driver::{self, ServeHandle};
use pinhole::stun::ServerConfig;

use crate::error::PinholeError;
use crate::task::{Rendezvous, Task};
use crate::types::parse_socket_addr;

/// Hands the server's start-up outcome to the waiting caller exactly once, also when the
/// server's future is dropped or unwinds before it could.
struct Reply(Option<Arc<Rendezvous<Started>>>);

/// A server's start-up outcome: its addresses, or why it could not start.
type Started = Result<Vec<SocketAddr>, PinholeError>;

impl Reply {
    fn put(&mut self, r: Started) {
        if let Some(slot) = self.0.take() {
            slot.put(r);
        }
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        self.put(Err(PinholeError::Internal(
            "the server thread ended".into(),
        )));
    }
}

/// A STUN server running on its own thread; dropping it stops the server.
pub(crate) struct Server {
    task: Task,
    addresses: Vec<SocketAddr>,
}

impl Server {
    /// Starts a server on `primary`, an RFC 5780 server when `alternate` is given (a
    /// different IP and port; ports must not be 0 then). Without `primary`, an RFC 5780
    /// server on 127.0.0.1 and 127.0.0.2 with free ports.
    pub(crate) fn start(
        primary: Option<&str>,
        alternate: Option<&str>,
    ) -> Result<Server, PinholeError> {
        let config = match (primary, alternate) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(PinholeError::invalid(
                    "an alternate needs a primary address",
                ));
            }
            (Some(p), None) => Some(ServerConfig::new(parse_socket_addr("primary", p)?)),
            (Some(p), Some(a)) => Some(ServerConfig::rfc5780(
                parse_socket_addr("primary", p)?,
                parse_socket_addr("alternate", a)?,
            )),
        };
        let started = Arc::new(Rendezvous::<Started>::default());
        let tx = Reply(Some(started.clone()));
        let task = Task::spawn("pinhole-server", move |mut stop| async move {
            let mut tx = tx;
            let started: Result<ServeHandle, _> = match config {
                Some(c) => driver::serve(c).await,
                None => driver::serve_loopback().await,
            };
            match started {
                Ok(handle) => {
                    tx.put(Ok(handle.local_addrs().to_vec()));
                    stop.wait().await;
                    drop(handle);
                }
                Err(e) => tx.put(Err(e.into())),
            }
        })?;
        let addresses = started.take()?;
        Ok(Server { task, addresses })
    }

    /// The addresses it listens on: the primary first (for RFC 5780 then the alternate IP
    /// with the primary port, the primary IP with the alternate port, and the alternate).
    pub(crate) fn addresses(&self) -> &[SocketAddr] {
        &self.addresses
    }

    /// Stops the server and waits for its thread.
    pub(crate) fn stop(self) {
        self.task.stop();
        self.task.join();
    }

    /// Stops the server without waiting for its thread (which ends within milliseconds).
    #[cfg_attr(not(feature = "server"), allow(dead_code))]
    pub(crate) fn detach(self) {
        self.task.detach();
    }
}
