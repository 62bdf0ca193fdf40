use std::net::SocketAddr;

/// The transport a datagram or segment travels on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// UDP datagrams.
    Udp,
    /// A TCP stream (messages framed on it).
    Tcp,
}

/// A datagram a machine wants sent.
///
/// `source` names the local socket to send from: NAT traversal depends on it, because each
/// local socket has its own mapping on the NAT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// The transport to use.
    pub proto: Protocol,
    /// The local address to send from.
    pub source: SocketAddr,
    /// The remote address to send to.
    pub destination: SocketAddr,
    /// The bytes to send.
    pub contents: Vec<u8>,
}

/// A datagram handed to a machine.
#[derive(Debug, Clone, Copy)]
pub struct Received<'a> {
    /// The transport it arrived on.
    pub proto: Protocol,
    /// The remote address it came from.
    pub source: SocketAddr,
    /// The local address it arrived at.
    pub destination: SocketAddr,
    /// Its bytes.
    pub contents: &'a [u8],
}
