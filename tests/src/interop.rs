//! Other ICE implementations as peers of pinhole (issue 15): webrtc-rs's `webrtc-ice`
//! agent and str0m's standalone sans-IO agent (crate `is`), each behind a small wrapper
//! that speaks RFC 8839 description lines (`candidate:…`, credentials), so that the
//! loopback tests (`tests/interop_ice.rs`) and the lab peer (`bin wrtc-ice-peer`) drive
//! them the same way.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

/// webrtc-rs's agent ([`webrtc_ice::agent::Agent`]).
pub mod wrtc {
    use super::*;
    use webrtc_ice::agent::Agent;
    use webrtc_ice::agent::agent_config::{AgentConfig, IpFilterFn};
    use webrtc_ice::candidate::candidate_base::unmarshal_candidate;
    use webrtc_ice::candidate::{Candidate, CandidateType};
    use webrtc_ice::mdns::MulticastDnsMode;
    use webrtc_ice::network_type::NetworkType;
    use webrtc_ice::url::Url;
    pub use webrtc_util::Conn;

    /// How the agent is set up.
    #[derive(Debug, Clone, Default)]
    pub struct Options {
        /// ICE-lite (RFC 8445 §2.5): host candidates only, always controlled.
        pub lite: bool,
        /// Host candidates on the loopback interface only (the loopback tests), else on
        /// every interface but loopback (the lab).
        pub loopback_only: bool,
        /// A STUN server (`stun:` URL) for a server-reflexive candidate.
        pub stun: Option<SocketAddr>,
        /// A TURN/UDP server with its user and password, for a relayed candidate.
        pub turn: Option<(SocketAddr, String, String)>,
        /// Relayed candidates only.
        pub relay_only: bool,
        /// Host candidates on this address only.
        pub ip: Option<IpAddr>,
    }

    /// A webrtc-ice agent and the candidates it gathered.
    pub struct WrtcPeer {
        agent: Arc<Agent>,
        candidates: mpsc::UnboundedReceiver<Option<String>>,
        /// Our ufrag.
        pub ufrag: String,
        /// Our password.
        pub pwd: String,
    }

    fn addr_of(c: &Arc<dyn Candidate + Send + Sync>) -> String {
        format!("{}:{}", c.address(), c.port())
    }

    impl WrtcPeer {
        /// Creates the agent and starts gathering.
        pub async fn start(opts: &Options) -> Result<Self, String> {
            let mut urls = Vec::new();
            if let Some(s) = opts.stun {
                urls.push(Url::parse_url(&format!("stun:{s}")).map_err(|e| e.to_string())?);
            }
            if let Some((s, user, pass)) = &opts.turn {
                let mut u = Url::parse_url(&format!("turn:{s}?transport=udp"))
                    .map_err(|e| e.to_string())?;
                u.username = user.clone();
                u.password = pass.clone();
                urls.push(u);
            }
            let candidate_types = if opts.lite {
                vec![CandidateType::Host]
            } else if opts.relay_only {
                vec![CandidateType::Relay]
            } else {
                let mut t = vec![CandidateType::Host];
                if opts.stun.is_some() {
                    t.push(CandidateType::ServerReflexive);
                }
                if opts.turn.is_some() {
                    t.push(CandidateType::Relay);
                }
                t
            };
            let loopback = opts.loopback_only;
            let config = AgentConfig {
                urls,
                network_types: vec![NetworkType::Udp4],
                candidate_types,
                multicast_dns_mode: MulticastDnsMode::Disabled,
                include_loopback: loopback,
                interface_filter: Arc::new(Some(Box::new(move |name: &str| {
                    (name == "lo") == loopback
                }))),
                ip_filter: Arc::new(
                    opts.ip
                        .map(|only| Box::new(move |ip: IpAddr| ip == only) as IpFilterFn),
                ),
                lite: opts.lite,
                ..AgentConfig::default()
            };
            let agent = Arc::new(Agent::new(config).await.map_err(|e| e.to_string())?);
            let (tx, rx) = mpsc::unbounded_channel();
            agent.on_candidate(Box::new(
                move |c: Option<Arc<dyn Candidate + Send + Sync>>| {
                    let _ = tx.send(c.map(|c| format!("candidate:{}", c.marshal())));
                    Box::pin(async {})
                },
            ));
            agent.gather_candidates().map_err(|e| e.to_string())?;
            let (ufrag, pwd) = agent.get_local_user_credentials().await;
            Ok(Self {
                agent,
                candidates: rx,
                ufrag,
                pwd,
            })
        }

        /// The gathered candidates (`candidate:…`), once gathering is over or `within`
        /// has passed.
        pub async fn gather(&mut self, within: Duration) -> Vec<String> {
            let until = tokio::time::Instant::now() + within;
            let mut out = Vec::new();
            while let Ok(Some(Some(c))) =
                tokio::time::timeout_at(until, self.candidates.recv()).await
            {
                out.push(c);
            }
            out
        }

        /// Adds a candidate of the peer's (`candidate:…` or `a=candidate:…`).
        pub fn add_remote(&self, line: &str) -> Result<(), String> {
            let line = line.trim();
            let line = line.strip_prefix("a=").unwrap_or(line);
            let value = line.strip_prefix("candidate:").unwrap_or(line);
            let c = unmarshal_candidate(value).map_err(|e| format!("{line:?}: {e}"))?;
            let c: Arc<dyn Candidate + Send + Sync> = Arc::new(c);
            self.agent
                .add_remote_candidate(&c)
                .map_err(|e| format!("{line:?}: {e}"))
        }

        /// Runs the checks as the controlling (`dial`) or controlled (`accept`) agent
        /// until a pair is selected, or `within` has passed.
        pub async fn connect(
            &self,
            controlling: bool,
            ufrag: String,
            pwd: String,
            within: Duration,
        ) -> Result<Arc<dyn Conn + Send + Sync>, String> {
            let (_cancel, cancel_rx) = mpsc::channel(1);
            let conn: Result<Arc<dyn Conn + Send + Sync>, String> =
                tokio::time::timeout(within, async {
                    if controlling {
                        self.agent
                            .dial(cancel_rx, ufrag, pwd)
                            .await
                            .map(|c| c as Arc<dyn Conn + Send + Sync>)
                    } else {
                        self.agent
                            .accept(cancel_rx, ufrag, pwd)
                            .await
                            .map(|c| c as Arc<dyn Conn + Send + Sync>)
                    }
                })
                .await
                .map_err(|_| format!("no pair within {within:?}"))?
                .map_err(|e| e.to_string());
            conn
        }

        /// The selected pair: (local type, local address, remote type, remote address).
        pub fn selected(&self) -> Option<(String, String, String, String)> {
            self.agent.get_selected_candidate_pair().map(|p| {
                (
                    p.local.candidate_type().to_string(),
                    addr_of(&p.local),
                    p.remote.candidate_type().to_string(),
                    addr_of(&p.remote),
                )
            })
        }

        /// Closes the agent.
        pub async fn close(&self) {
            let _ = self.agent.close().await;
        }
    }
}

/// str0m's standalone ICE agent ([`is::IceAgent`]) on a tokio UDP socket: the agent is
/// sans-IO, so this is the loop its documentation describes (poll_timeout,
/// handle_timeout, poll_transmit, handle_packet, poll_event), host candidates only (the
/// agent gathers nothing itself).
pub mod str0m_is {
    use super::*;
    use is::stun::{StunMessage, StunPacket};
    use is::{Candidate, IceAgent, IceAgentEvent, IceCreds, Protocol};
    use pinhole::stun::attributes::XorMappedAddress;

    /// The agent, its socket, and what it has received.
    pub struct IsPeer {
        agent: IceAgent,
        socket: tokio::net::UdpSocket,
        local: SocketAddr,
        /// Where data goes: the last `NominatedSend`.
        pub nominated: Option<SocketAddr>,
        /// When the agent first reported a nominated pair.
        pub connected_at: Option<Instant>,
        data: VecDeque<Vec<u8>>,
        /// The agent refused a STUN message or an event said so: for the report.
        pub notes: Vec<String>,
    }

    impl IsPeer {
        /// Binds `bind` (a concrete address: the host candidate) and makes the agent.
        pub async fn bind(bind: SocketAddr, lite: bool) -> Result<Self, String> {
            let socket = tokio::net::UdpSocket::bind(bind)
                .await
                .map_err(|e| format!("binding {bind}: {e}"))?;
            let local = socket.local_addr().map_err(|e| e.to_string())?;
            let mut agent = IceAgent::new(IceCreds::new());
            agent.set_ice_lite(lite);
            let host = Candidate::host(local, "udp").map_err(|e| e.to_string())?;
            agent.add_local_candidate(host);
            Ok(Self {
                agent,
                socket,
                local,
                nominated: None,
                connected_at: None,
                data: VecDeque::new(),
                notes: Vec::new(),
            })
        }

        /// The socket's address (the host candidate).
        pub fn local_addr(&self) -> SocketAddr {
            self.local
        }

        /// Asks the STUN server `server` for the socket's mapped address (RFC 8489 §6: a
        /// Binding request, sent again every 250 ms) and adds it as a server-reflexive
        /// candidate: the agent gathers nothing itself. Call before [`IsPeer::drive`].
        pub async fn gather_srflx(
            &mut self,
            server: SocketAddr,
            within: Duration,
        ) -> Result<SocketAddr, String> {
            use std::hash::{BuildHasher as _, Hasher as _};
            // A transaction id unlikely to repeat (it needs no secrecy here).
            let mut tid = [0u8; 12];
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos()),
            );
            tid[..8].copy_from_slice(&h.finish().to_be_bytes());
            tid[8..].copy_from_slice(&std::process::id().to_be_bytes());
            // Binding request, no attributes, the magic cookie (RFC 8489 §5).
            let mut req = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
            req.extend_from_slice(&tid);
            let until = tokio::time::Instant::now() + within;
            let mut buf = vec![0u8; 2048];
            while tokio::time::Instant::now() < until {
                self.socket
                    .send_to(&req, server)
                    .await
                    .map_err(|e| format!("to {server}: {e}"))?;
                let wait = (tokio::time::Instant::now() + Duration::from_millis(250)).min(until);
                while let Ok(Ok((n, from))) =
                    tokio::time::timeout_at(wait, self.socket.recv_from(&mut buf)).await
                {
                    let d = &buf[..n];
                    if from != server || n < 20 || d[8..20] != tid {
                        continue;
                    }
                    // pinhole's parser: `is` parses ICE checks, not a server's answer.
                    let mapped = pinhole::stun::Message::parse(d)
                        .ok()
                        .and_then(|m| m.get::<XorMappedAddress>().ok().flatten())
                        .map(|a| a.0)
                        .ok_or(format!("{server} answered without XOR-MAPPED-ADDRESS"))?;
                    let c = Candidate::server_reflexive(mapped, self.local, "udp")
                        .map_err(|e| e.to_string())?;
                    self.agent.add_local_candidate(c);
                    return Ok(mapped);
                }
            }
            Err(format!("no answer from {server} within {within:?}"))
        }

        /// The nominated pair: (local type, local address, remote type, remote address).
        /// The local end is the socket's (host) address; the remote's type is that of the
        /// peer's candidate with its address, else peer-reflexive.
        pub fn pair(&self) -> Option<(String, String, String, String)> {
            let to = self.nominated?;
            let kind = self
                .agent
                .remote_candidates()
                .find(|c| c.addr() == to)
                .map_or("prflx".to_owned(), |c| c.kind().to_string());
            Some((
                "host".to_owned(),
                self.local.to_string(),
                kind,
                to.to_string(),
            ))
        }

        /// Our (ufrag, password).
        pub fn credentials(&self) -> (String, String) {
            let c = self.agent.local_credentials();
            (c.ufrag.clone(), c.pass.clone())
        }

        /// Our candidates, `candidate:…`.
        pub fn candidate_lines(&self) -> Vec<String> {
            self.agent
                .local_candidates()
                .map(|c| c.to_sdp_string())
                .collect()
        }

        /// Sets the role.
        pub fn set_controlling(&mut self, controlling: bool) {
            self.agent.set_controlling(controlling);
        }

        /// The peer's credentials.
        pub fn set_remote_credentials(&mut self, ufrag: &str, pwd: &str) {
            self.agent.set_remote_credentials(IceCreds {
                ufrag: ufrag.to_owned(),
                pass: pwd.to_owned(),
            });
        }

        /// Adds a candidate of the peer's (`candidate:…` or `a=candidate:…`).
        pub fn add_remote(&mut self, line: &str) -> Result<(), String> {
            let line = line.trim();
            let line = line.strip_prefix("a=").unwrap_or(line);
            let c = Candidate::from_sdp_string(line).map_err(|e| format!("{line:?}: {e}"))?;
            self.agent.add_remote_candidate(c);
            Ok(())
        }

        /// Whether the agent reports a connected state.
        pub fn connected(&self) -> bool {
            self.agent.state().is_connected()
        }

        /// The next datagram of data received, if any.
        pub fn take_data(&mut self) -> Option<Vec<u8>> {
            self.data.pop_front()
        }

        /// Sends data on the nominated pair (nothing before one).
        pub async fn send(&self, data: &[u8]) -> bool {
            match self.nominated {
                Some(to) => self.socket.send_to(data, to).await.is_ok(),
                None => false,
            }
        }

        /// Runs the agent until `deadline`, or until `stop` says so (asked after every
        /// step).
        pub async fn drive(&mut self, deadline: Instant, mut stop: impl FnMut(&mut Self) -> bool) {
            let mut buf = vec![0u8; 2048];
            loop {
                let now = Instant::now();
                self.agent.handle_timeout(now);
                while let Some(t) = self.agent.poll_transmit() {
                    let _ = self.socket.send_to(&t.contents, t.destination).await;
                }
                while let Some(ev) = self.agent.poll_event() {
                    if let IceAgentEvent::NominatedSend { destination, .. } = ev {
                        self.nominated = Some(destination);
                        self.connected_at.get_or_insert_with(Instant::now);
                    }
                }
                if stop(self) || now >= deadline {
                    return;
                }
                let wake = self
                    .agent
                    .poll_timeout()
                    .unwrap_or(deadline)
                    .min(deadline)
                    .min(now + Duration::from_millis(50))
                    .max(now);
                tokio::select! {
                    r = self.socket.recv_from(&mut buf) => {
                        let Ok((n, from)) = r else { continue };
                        let d = &buf[..n];
                        // RFC 7983: STUN starts with 0 to 3.
                        if d.first().is_some_and(|b| *b < 4) {
                            match StunMessage::parse(d) {
                                Ok(message) => {
                                    let packet = StunPacket {
                                        proto: Protocol::Udp,
                                        source: from,
                                        destination: self.local,
                                        message,
                                    };
                                    if !self.agent.handle_packet(Instant::now(), packet) {
                                        self.notes.push(format!("STUN from {from} not accepted"));
                                    }
                                }
                                Err(e) => self.notes.push(format!("STUN from {from}: {e}")),
                            }
                        } else {
                            self.data.push_back(d.to_vec());
                        }
                    }
                    () = tokio::time::sleep_until(wake.into()) => {}
                }
            }
        }
    }
}
