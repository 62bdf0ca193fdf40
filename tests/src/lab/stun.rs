//! A minimal blocking STUN Binding client on std sockets: the lab's readiness probe and
//! its fixed-port mapping probe (`natlab stun-ping`, run inside a namespace).

use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pinhole::stun::attributes::{MappedAddress, XorMappedAddress};
use pinhole::stun::{Class, Message, MessageBuilder, MessageType, TransactionId};

use super::error::{Result, lab_err};

/// Retransmission interval of [`binding`].
pub const RETRANSMIT: Duration = Duration::from_millis(100);

fn transaction_id() -> TransactionId {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let mut id = [0u8; 12];
    id[..8].copy_from_slice(&(nanos as u64).to_le_bytes());
    id[8..].copy_from_slice(&std::process::id().to_le_bytes());
    TransactionId(id)
}

/// Sends a Binding request from `bind` to `server` every [`RETRANSMIT`] until a success
/// response arrives or `timeout` passes; returns the mapped address it reports.
pub fn binding(bind: SocketAddr, server: SocketAddr, timeout: Duration) -> Result<SocketAddr> {
    let sock = UdpSocket::bind(bind).map_err(|e| lab_err!("binding {bind}: {e}"))?;
    let tid = transaction_id();
    let mut buf = [0u8; 64];
    let req = MessageBuilder::new(&mut buf, MessageType::BINDING_REQUEST, tid)
        .map_err(|e| lab_err!("{e}"))?
        .finish()
        .to_vec();
    let deadline = Instant::now() + timeout;
    let mut rx = [0u8; 1500];
    while Instant::now() < deadline {
        // ICMP errors come back as send or receive errors: keep going until the deadline.
        let _ = sock.send_to(&req, server);
        let wait_until = (Instant::now() + RETRANSMIT).min(deadline);
        loop {
            let left = wait_until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            sock.set_read_timeout(Some(left))?;
            match sock.recv_from(&mut rx) {
                Ok((n, _)) => {
                    let Ok(msg) = Message::parse(&rx[..n]) else {
                        continue;
                    };
                    if msg.transaction_id() != tid || msg.class() != Class::Success {
                        continue;
                    }
                    if let Ok(Some(XorMappedAddress(a))) = msg.get::<XorMappedAddress>() {
                        return Ok(a);
                    }
                    if let Ok(Some(MappedAddress(a))) = msg.get::<MappedAddress>() {
                        return Ok(a);
                    }
                    return Err(lab_err!("{server} answered without a mapped address"));
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    break;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }
    Err(lab_err!("no STUN answer from {server} within {timeout:?}"))
}
