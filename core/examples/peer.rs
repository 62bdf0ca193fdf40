//! Two peer connections in one process, on loopback: the shape of every pinhole app.
//! Each side trickles its candidates to the other (here a function call; in an app, the
//! signalling channel: `a=candidate:` lines, `a=end-of-candidates`), then they exchange a
//! datagram. Run it with `cargo run -p pinhole --example peer`.
//!
//! With real peers, give `PeerConfig::stun_servers` and `turn_servers`, bind `[::]:0`
//! (one dual-stack socket), and carry `local_credentials()` and each
//! `PeerConnectionEvent::Candidate` to the other side as RFC 8839 lines
//! (`pinhole::ice::Candidate` prints and parses them).

use std::net::SocketAddr;
use std::time::Duration;

use pinhole::driver::peer::{PeerConnection, PeerConnectionEvent};
use pinhole::peer::PeerConfig;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let lo: SocketAddr = "127.0.0.1:0".parse()?;
    // One side controls (RFC 8445 §6.1.1: the offerer, say).
    let mut a = PeerConnection::start(PeerConfig::default(), lo, true).await?;
    let mut b = PeerConnection::start(PeerConfig::default(), lo, false).await?;
    a.set_remote_credentials(b.local_credentials().clone());
    b.set_remote_credentials(a.local_credentials().clone());

    // Events until both sides have a nominated pair (bounded).
    let mut connected = [false, false];
    tokio::time::timeout(Duration::from_secs(10), async {
        while connected != [true, true] {
            let (i, ev) = tokio::select! {
                ev = a.next_event() => (0, ev),
                ev = b.next_event() => (1, ev),
            };
            let other = if i == 0 { &b } else { &a };
            match ev {
                Some(PeerConnectionEvent::Candidate(c)) => {
                    println!("side {i} candidate: a={c}");
                    other.add_remote_candidate(c);
                }
                Some(PeerConnectionEvent::GatheringComplete) => other.end_of_remote_candidates(),
                Some(PeerConnectionEvent::SelectedPair {
                    local,
                    remote,
                    nominated: true,
                    rtt,
                }) => {
                    println!("side {i} selected {local} <-> {remote} (rtt {rtt:?})");
                    connected[i] = true;
                }
                Some(_) => {}
                None => return Err("a connection's task ended"),
            }
        }
        Ok(())
    })
    .await??;

    // Datagrams: no heap allocation per datagram on a direct pair.
    let mut buf = [0u8; 2048];
    a.send(b"hello from a").await;
    let (n, from) = tokio::time::timeout(Duration::from_secs(5), b.recv_from(&mut buf))
        .await?
        .ok_or("b's task ended")?;
    println!("b got {:?} from {from}", std::str::from_utf8(&buf[..n])?);
    Ok(())
}
