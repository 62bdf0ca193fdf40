//! The one contract of every sans-IO machine in pinhole, as a trait.
//!
//! Each machine (a STUN transaction set, the STUN and TURN servers, a TURN allocation, the
//! port mapper, the NAT prober, the ICE agent, the peer connection) has these five
//! methods as its own inherent methods too; the trait lets code be written once for any
//! of them: the driver's generic runner ([`crate::driver`]'s `run_machine`, which the STUN
//! and TURN servers, netcheck and the port mapper are configurations of) and test
//! harnesses that move datagrams between machines on a virtual clock.
//!
//! What a received datagram was is the machine's own answer ([`Machine::Verdict`]): some
//! only say whether they took it (`bool`), the TURN allocation and the peer connection say
//! where application data lies in it, as a range of the datagram (offsets, not borrows
//! that a driver would map back by pointer arithmetic) or a sub-slice.

use std::time::Instant;

use crate::{Received, Transmit};

/// A sans-IO protocol machine: bytes and time in, datagrams, deadlines and events out.
pub trait Machine {
    /// What it reports.
    type Event;
    /// What it says about a datagram offered to it.
    type Verdict<'a>;

    /// Offers a datagram that arrived at `now`.
    fn handle_input<'a>(&mut self, now: Instant, rx: Received<'a>) -> Self::Verdict<'a>;
    /// The deadline from [`Machine::poll_timeout`] passed (it may be called early).
    fn handle_timeout(&mut self, now: Instant);
    /// The next datagram to send.
    fn poll_transmit(&mut self) -> Option<Transmit>;
    /// When to call [`Machine::handle_timeout`] next (`None`: only on input).
    fn poll_timeout(&self) -> Option<Instant>;
    /// The next event.
    fn poll_event(&mut self) -> Option<Self::Event>;
}

/// No events: for machines that only answer (the STUN server).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoEvent {}

macro_rules! machine {
    ($ty:ty, $event:ty, $verdict:ty) => {
        impl Machine for $ty {
            type Event = $event;
            type Verdict<'a> = $verdict;
            fn handle_input<'a>(&mut self, now: Instant, rx: Received<'a>) -> Self::Verdict<'a> {
                <$ty>::handle_input(self, now, rx)
            }
            fn handle_timeout(&mut self, now: Instant) {
                <$ty>::handle_timeout(self, now)
            }
            fn poll_transmit(&mut self) -> Option<Transmit> {
                <$ty>::poll_transmit(self)
            }
            fn poll_timeout(&self) -> Option<Instant> {
                <$ty>::poll_timeout(self)
            }
            fn poll_event(&mut self) -> Option<Self::Event> {
                <$ty>::poll_event(self)
            }
        }
    };
}

machine!(crate::stun::StunClient, crate::stun::TransactionEvent, bool);
machine!(
    crate::netcheck::Prober,
    crate::netcheck::NetcheckEvent,
    bool
);
machine!(crate::portmap::Mapper, crate::portmap::MapperEvent, bool);
machine!(crate::ice::BirthdayProber, crate::ice::BirthdayEvent, bool);
machine!(
    crate::ice::IceAgent,
    crate::ice::IceEvent,
    crate::ice::IceInput
);
machine!(
    crate::peer::Peer,
    crate::peer::PeerEvent,
    crate::peer::PeerInput
);

impl Machine for crate::turn::Allocation {
    type Event = crate::turn::AllocationEvent;
    type Verdict<'a> = crate::turn::Input<'a>;
    fn handle_input<'a>(&mut self, now: Instant, rx: Received<'a>) -> Self::Verdict<'a> {
        crate::turn::Allocation::handle_input(self, now, rx)
    }
    fn handle_timeout(&mut self, now: Instant) {
        crate::turn::Allocation::handle_timeout(self, now);
    }
    fn poll_transmit(&mut self) -> Option<Transmit> {
        crate::turn::Allocation::poll_transmit(self)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        crate::turn::Allocation::poll_timeout(self)
    }
    fn poll_event(&mut self) -> Option<Self::Event> {
        crate::turn::Allocation::poll_event(self)
    }
}

/// The STUN server answers and reports nothing; its rate limiter needs no timer.
#[cfg(any(test, feature = "server"))]
impl Machine for crate::stun::StunServer {
    type Event = NoEvent;
    type Verdict<'a> = ();
    fn handle_input<'a>(&mut self, now: Instant, rx: Received<'a>) {
        crate::stun::StunServer::handle_input(self, now, rx);
    }
    fn handle_timeout(&mut self, _now: Instant) {}
    fn poll_transmit(&mut self) -> Option<Transmit> {
        crate::stun::StunServer::poll_transmit(self)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
    fn poll_event(&mut self) -> Option<NoEvent> {
        None
    }
}

/// The TURN server's events are the actions it asks of its driver (bind a relayed
/// socket for a new allocation).
#[cfg(any(test, feature = "server"))]
impl Machine for crate::turn::TurnServer {
    type Event = crate::turn::ServerAction;
    type Verdict<'a> = ();
    fn handle_input<'a>(&mut self, now: Instant, rx: Received<'a>) {
        crate::turn::TurnServer::handle_input(self, now, rx);
    }
    fn handle_timeout(&mut self, now: Instant) {
        crate::turn::TurnServer::handle_timeout(self, now);
    }
    fn poll_transmit(&mut self) -> Option<Transmit> {
        crate::turn::TurnServer::poll_transmit(self)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        crate::turn::TurnServer::poll_timeout(self)
    }
    fn poll_event(&mut self) -> Option<crate::turn::ServerAction> {
        crate::turn::TurnServer::poll_action(self)
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use super::*;
    use crate::stun::{ClientConfig, Request, ServerConfig, StunClient, StunServer};

    /// Moves one machine's datagrams to the other, written once for any two machines.
    fn deliver<A: Machine, B: Machine>(now: Instant, from: &mut A, to: &mut B) -> usize {
        let mut n = 0;
        while let Some(t) = from.poll_transmit() {
            let rx = Received {
                proto: t.proto,
                source: t.source,
                destination: t.destination,
                contents: &t.contents,
            };
            let _ = to.handle_input(now, rx);
            n += 1;
        }
        n
    }

    #[test]
    fn a_client_and_a_server_through_the_trait_alone() {
        let server_addr: SocketAddr = "192.0.2.1:3478".parse().unwrap();
        let client_addr: SocketAddr = "192.0.2.2:40000".parse().unwrap();
        let mut server = StunServer::new(ServerConfig {
            rate_limit: None,
            ..ServerConfig::new(server_addr)
        })
        .unwrap();
        let now = Instant::now();
        let mut client = StunClient::new(ClientConfig::default(), [1; 32]);
        client
            .start(now, Request::binding(client_addr, server_addr), |_| Ok(()))
            .unwrap();
        assert!(Machine::poll_timeout(&client).is_some());
        assert_eq!(Machine::poll_timeout(&server), None);
        assert_eq!(deliver(now, &mut client, &mut server), 1);
        let later = now + Duration::from_millis(10);
        assert_eq!(deliver(later, &mut server, &mut client), 1);
        match Machine::poll_event(&mut client) {
            Some(crate::stun::TransactionEvent::Response(r)) => assert_eq!(r.source, server_addr),
            other => panic!("{other:?}"),
        }
        assert_eq!(Machine::poll_timeout(&client), None);
    }
}
