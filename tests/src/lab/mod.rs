//! The NAT lab: real NATs in Linux network namespaces, with real servers.
//!
//! ```text
//!            internet namespace (bridge br0, forwarding, black-hole default route)
//!            203.0.113.1 + 198.51.100.1 (gateways)      servers on br0:
//!            ├── pinhole serve  203.0.113.10:3478 / 203.0.113.11:3479 (RFC 5780)
//!            ├── coturn         203.0.113.20:3478 / 203.0.113.21:3479 (RFC 5780, TURN)
//!            │
//!   wan 198.51.100.N ─────────────── wan 198.51.100.M
//!   router (nft NAT)                 carrier-grade NAT (nft NAT)
//!   lan 192.168.K.1 (bridge)         lan 100.64.K.1 (bridge)
//!     └── host 192.168.K.10            └── wan 100.64.K.10: home router
//!                                            lan 192.168.J.1 └── host 192.168.J.10
//! ```
//!
//! A [`Lab`] owns its namespaces and processes and tears everything down on drop, panics
//! included. Namespace names carry the owner's process id (see [`netns`]); stale ones are
//! swept when a lab starts. Nothing here touches the root namespace's networking: veth
//! pairs are created inside lab namespaces with their peer placed straight into another.
//! Only documentation ranges face the lab "internet", and its default route is a black hole
//! (a veth whose peer stays down), so nothing ever leaves it.

pub mod bins;
pub mod cmd;
mod error;
pub mod nat;
pub mod netns;
pub mod process;
pub mod stun;
pub mod support;
pub mod topologies;

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

pub(crate) use error::lab_err;
pub use error::{LabError, Result};
pub use nat::{Behaviour, NatConfig, PortAllocation};

use cmd::{Output, command, in_ns, output_within, run_in, run_in_with_input, run_with_input};
use netns::Netns;
use process::Process;
pub use process::Streaming;

/// The internet namespace's gateway address for servers (203.0.113.0/24).
pub const SERVER_GATEWAY: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
/// The internet namespace's gateway address for routers' WAN sides (198.51.100.0/24).
pub const WAN_GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// `pinhole serve`'s primary address.
pub const PINHOLE_PRIMARY: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 10), 3478);
/// `pinhole serve`'s alternate address (other IP, other port).
pub const PINHOLE_ALTERNATE: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 11), 3479);
/// coturn's primary address (its first `listening-ip`).
pub const COTURN_PRIMARY: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 20), 3478);
/// coturn's alternate address (second `listening-ip`, `alt-listening-port`).
pub const COTURN_ALTERNATE: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 21), 3479);
/// A spare internet address for test peers (bind to it inside the internet namespace).
pub const PEER_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 30);
/// coturn's long-term credential in the lab.
pub const COTURN_USER: (&str, &str) = ("pinhole", "pinhole-lab");
/// coturn's realm in the lab.
pub const COTURN_REALM: &str = "lab.pinhole.test";
/// coturn's TLS listener (`turns:`), when started with [`CoturnOptions::tls`].
pub const COTURN_TLS: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 20), 5349);
/// coturn's shared secret for TURN REST credentials, when started with
/// [`CoturnOptions::rest`].
pub const COTURN_SECRET: &str = "pinhole-lab-secret";
/// miniupnpd's HTTP (UPnP IGD) port.
pub const UPNP_HTTP_PORT: u16 = 5000;
/// The smallest PCP lifetime miniupnpd grants in the lab (its `min_lifetime`; its default
/// is 120 s), so that tests can watch renewals within seconds.
pub const MINIUPNPD_MIN_LIFETIME: u32 = 1;

/// An RFC 5780 STUN server in the lab: its primary address and its alternate one (other
/// IP, other port).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StunServer {
    /// The primary address.
    pub primary: SocketAddrV4,
    /// The alternate address.
    pub alternate: SocketAddrV4,
}

/// `pinhole serve` in the internet ([`Lab::start_pinhole_serve`]).
pub const PINHOLE_STUN: StunServer = StunServer {
    primary: PINHOLE_PRIMARY,
    alternate: PINHOLE_ALTERNATE,
};

/// The nftables table (inet family) of miniupnpd's rules on a router.
pub const MINIUPNPD_TABLE: &str = "miniupnpd";

fn miniupnpd_label(router: &str) -> String {
    format!("miniupnpd on {router}")
}

/// How long a server may take to become ready.
pub const SERVER_READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Where a router's WAN side is plugged in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uplink<'a> {
    /// The internet bridge (WAN address in 198.51.100.0/24).
    Internet,
    /// The LAN of another router, by name (a NAT behind a NAT).
    Router(&'a str),
}

/// A NAT router in the lab.
#[derive(Debug, Clone)]
pub struct Router {
    /// Its name in the lab.
    pub name: String,
    /// Its namespace.
    pub ns: String,
    /// Its WAN address: the external address of its mappings.
    pub wan_ip: Ipv4Addr,
    /// Its LAN address (the hosts' gateway).
    pub lan_ip: Ipv4Addr,
    /// Its behaviour.
    pub config: NatConfig,
    /// Where it is plugged in (`None`: the internet).
    pub uplink: Option<String>,
    ports: u8,
}

/// A host behind a router.
#[derive(Debug, Clone)]
pub struct Host {
    /// Its name in the lab.
    pub name: String,
    /// Its namespace.
    pub ns: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// The router it sits behind.
    pub router: String,
}

/// What [`Lab::start_miniupnpd`] started.
#[derive(Debug, Clone)]
pub struct PortMapper {
    /// The router it runs on.
    pub router: String,
    /// The IGD root description URL (give it to `upnpc -u`).
    pub upnp_url: String,
    /// The NAT-PMP / PCP server address (the router's LAN address, port 5351).
    pub pmp_addr: SocketAddrV4,
}

/// What [`Lab::start_coturn_with`] turns on besides the defaults of [`Lab::start_coturn`].
#[derive(Debug, Clone, Default)]
pub struct CoturnOptions {
    /// A TLS listener on [`COTURN_TLS`] with a certificate for its IP, signed by a throw-away
    /// CA generated with openssl ([`Lab::coturn_ca`] is its PEM file).
    pub tls: bool,
    /// TURN REST credentials (`use-auth-secret`, `static-auth-secret=`[`COTURN_SECRET`]).
    /// coturn then accepts REST credentials only, not the long-term user [`COTURN_USER`].
    pub rest: bool,
    /// Further `turnserver.conf` lines.
    pub extra: Vec<String>,
}

/// A miniupnpd the lab has set up on a router (running or stopped).
#[derive(Debug, Clone)]
struct Miniupnpd {
    router: String,
    stun: StunServer,
    uuid: String,
    starts: u32,
    running: bool,
    /// Describe the device as IGD v1 (`force_igd_desc_v1`): WANIPConnection:1, without
    /// AddAnyPortMapping.
    igd_v1: bool,
}

/// A running lab. See the module docs.
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    dir: PathBuf,
    inet: String,
    procs: Vec<Process>,
    miniupnpd: Vec<Miniupnpd>,
    routers: Vec<Router>,
    hosts: Vec<Host>,
    namespaces: Vec<Netns>,
    next_wan: u8,
    next_lan: u8,
    /// The next side LAN of [`Lab::link_hosts`]: 10.77.K.0/24.
    next_side_lan: u8,
    next_cgnat: u8,
    keep: bool,
}

fn ip_batch(ns: &str, lines: &[String]) -> Result<()> {
    let mut script = lines.join("\n");
    script.push('\n');
    // One process for many commands.
    run_with_input(
        &mut command("ip", &["-n", ns, "-batch", "-"]),
        Some(&script),
    )
    .map(|_| ())
    .map_err(|e| lab_err!("{e}\nbatch was:\n{script}"))
}

fn sysctl(ns: &str, settings: &[&str]) -> Result<()> {
    let mut args = vec!["-qw"];
    args.extend_from_slice(settings);
    run_in(ns, "sysctl", &args).map(|_| ())
}

/// Sweeps stale lab namespaces once per process.
fn sweep_once() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        if let Ok(swept) = netns::sweep_stale() {
            if !swept.is_empty() {
                support::say(&format!(
                    "natlab: removed {} stale lab namespace(s): {}",
                    swept.len(),
                    swept.join(" ")
                ));
            }
        }
        // Their log directories too.
        if let Ok(rd) = std::fs::read_dir(logs_root()) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(pid) = netns::owner_pid(&name) {
                    if !Path::new(&format!("/proc/{pid}")).exists() {
                        let _ = std::fs::remove_dir_all(e.path());
                    }
                }
            }
        }
    });
}

/// The directory under which each lab keeps its configs and logs.
pub fn logs_root() -> PathBuf {
    std::env::temp_dir().join("pinhole-lab")
}

/// Forgets every mapping of the NAT router in namespace `ns`, with no packet through it
/// meanwhile ([`nat::freeze_commands`]); the router lets traffic through again even when
/// the flush fails.
pub fn flush_router(ns: &str) -> Result<()> {
    run_in_with_input(ns, "nft", &["-f", "-"], &nat::freeze_commands())?;
    // conntrack -F exits 0 and reports on stderr.
    let flushed = run_in(ns, "conntrack", &["-F"]);
    run_in_with_input(ns, "nft", &["-f", "-"], &nat::thaw_commands())?;
    flushed.map(drop)
}

impl Lab {
    /// A lab with a fresh unique prefix: the internet namespace and nothing else yet.
    pub fn new() -> Result<Self> {
        sweep_once();
        Self::with_prefix(&netns::unique_prefix())
    }

    /// The hand-built lab of `natlab up` (prefix `phm`); call [`keep`](Self::keep) to leave
    /// it running.
    pub fn manual() -> Result<Self> {
        Self::with_prefix(netns::MANUAL_PREFIX)
    }

    fn with_prefix(prefix: &str) -> Result<Self> {
        let dir = logs_root().join(prefix);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let mut lab = Lab {
            prefix: prefix.to_owned(),
            dir,
            inet: format!("{prefix}-inet"),
            procs: Vec::new(),
            miniupnpd: Vec::new(),
            routers: Vec::new(),
            hosts: Vec::new(),
            namespaces: Vec::new(),
            next_wan: 10,
            next_lan: 1,
            next_side_lan: 1,
            next_cgnat: 1,
            keep: false,
        };
        lab.build_internet()?;
        Ok(lab)
    }

    fn build_internet(&mut self) -> Result<()> {
        let ns = Netns::create(&self.inet)?;
        self.namespaces.push(ns);
        let inet = self.inet.clone();
        let mut lines = vec![
            "link add br0 type bridge".to_owned(),
            "link set br0 up".to_owned(),
            format!("addr add {SERVER_GATEWAY}/24 dev br0"),
            format!("addr add {WAN_GATEWAY}/24 dev br0"),
        ];
        for ip in [
            *PINHOLE_PRIMARY.ip(),
            *PINHOLE_ALTERNATE.ip(),
            *COTURN_PRIMARY.ip(),
            *COTURN_ALTERNATE.ip(),
            PEER_IP,
        ] {
            lines.push(format!("addr add {ip}/24 dev br0"));
        }
        // The black hole: a default route into a veth whose peer stays down. Sending to an
        // unknown address then succeeds and the packet vanishes, instead of ENETUNREACH
        // (which makes coturn close the TURN allocation that relayed it).
        lines.push("link add bh0 type veth peer name bh1".to_owned());
        lines.push("link set bh0 up".to_owned());
        lines.push("route add default dev bh0".to_owned());
        ip_batch(&inet, &lines)?;
        sysctl(
            &inet,
            &[
                "net.ipv4.ip_forward=1",
                "net.ipv4.conf.all.send_redirects=0",
                "net.ipv4.conf.default.send_redirects=0",
                "net.ipv4.conf.br0.send_redirects=0",
            ],
        )
    }

    /// The lab's prefix (every namespace name starts with it).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The internet namespace.
    pub fn internet(&self) -> &str {
        &self.inet
    }

    /// The directory with this lab's generated configs and server logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The routers, in creation order.
    pub fn routers(&self) -> &[Router] {
        &self.routers
    }

    /// The hosts, in creation order.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// A router by name.
    pub fn router(&self, name: &str) -> Result<&Router> {
        self.routers
            .iter()
            .find(|r| r.name == name)
            .ok_or_else(|| lab_err!("no router named {name}"))
    }

    /// A host by name.
    pub fn host(&self, name: &str) -> Result<&Host> {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .ok_or_else(|| lab_err!("no host named {name}"))
    }

    fn ns_name(&self, role: &str) -> String {
        format!("{}-{role}", self.prefix)
    }

    /// Plugs a new veth into the uplink bridge (`br0` in the internet, `lan` in a router)
    /// with its peer, named `peer_name`, created directly in `peer_ns`. Returns the uplink
    /// namespace.
    fn plug(&mut self, uplink: Uplink<'_>, peer_ns: &str, peer_name: &str) -> Result<String> {
        let (up_ns, bridge, port) = match uplink {
            Uplink::Internet => {
                let n = self.next_wan;
                (self.inet.clone(), "br0", format!("p{n}"))
            }
            Uplink::Router(name) => {
                let r = self
                    .routers
                    .iter_mut()
                    .find(|r| r.name == name)
                    .ok_or_else(|| lab_err!("no router named {name}"))?;
                r.ports += 1;
                (r.ns.clone(), "lan", format!("p{}", r.ports))
            }
        };
        ip_batch(
            &up_ns,
            &[
                format!("link add {port} type veth peer name {peer_name} netns {peer_ns}"),
                format!("link set {port} master {bridge}"),
                // A host hairpinning to itself sends and receives on the same bridge port.
                format!("link set {port} type bridge_slave hairpin on"),
                format!("link set {port} up"),
            ],
        )?;
        Ok(up_ns)
    }

    /// Adds a NAT router named `name` behind `uplink`, its LAN in 192.168.K.0/24.
    pub fn add_router(
        &mut self,
        name: &str,
        config: NatConfig,
        uplink: Uplink<'_>,
    ) -> Result<&Router> {
        if self.next_lan == u8::MAX {
            return Err(lab_err!("out of home LAN subnets"));
        }
        let lan = Ipv4Addr::new(192, 168, self.next_lan, 1);
        self.next_lan += 1;
        self.add_router_with_lan(name, config, uplink, lan)
    }

    /// Adds a carrier-grade NAT named `name` on the internet, its LAN (where home routers
    /// go, with [`Uplink::Router`]) in 100.64.K.0/24 (RFC 6598 shared address space).
    pub fn add_carrier_nat(&mut self, name: &str, config: NatConfig) -> Result<&Router> {
        if self.next_cgnat == u8::MAX {
            return Err(lab_err!("out of carrier LAN subnets"));
        }
        let lan = Ipv4Addr::new(100, 64, self.next_cgnat, 1);
        self.next_cgnat += 1;
        self.add_router_with_lan(name, config, Uplink::Internet, lan)
    }

    fn add_router_with_lan(
        &mut self,
        name: &str,
        config: NatConfig,
        uplink: Uplink<'_>,
        lan_ip: Ipv4Addr,
    ) -> Result<&Router> {
        if self.routers.iter().any(|r| r.name == name) || self.hosts.iter().any(|h| h.name == name)
        {
            return Err(lab_err!("the lab already has a node named {name}"));
        }
        let (wan_ip, gateway) = match uplink {
            Uplink::Internet => {
                if self.next_wan == u8::MAX {
                    return Err(lab_err!("out of WAN addresses"));
                }
                let ip = Ipv4Addr::new(198, 51, 100, self.next_wan);
                (ip, WAN_GATEWAY)
            }
            Uplink::Router(up) => {
                let r = self.router(up)?;
                let o = r.lan_ip.octets();
                (Ipv4Addr::new(o[0], o[1], o[2], 10 + r.ports), r.lan_ip)
            }
        };
        let ns_name = self.ns_name(name);
        self.namespaces.push(Netns::create(&ns_name)?);
        self.plug(uplink, &ns_name, "wan")?;
        if uplink == Uplink::Internet {
            self.next_wan += 1;
        }
        ip_batch(
            &ns_name,
            &[
                format!("addr add {wan_ip}/24 dev wan"),
                "link set wan up".to_owned(),
                format!("route add default via {gateway}"),
                "link add lan type bridge".to_owned(),
                format!("addr add {lan_ip}/24 dev lan"),
                "link set lan up".to_owned(),
            ],
        )?;
        sysctl(
            &ns_name,
            &[
                "net.ipv4.ip_forward=1",
                "net.ipv4.conf.all.send_redirects=0",
                "net.ipv4.conf.default.send_redirects=0",
            ],
        )?;
        let rules = nat::ruleset(
            &config,
            &nat::RouterIfaces {
                wan: "wan",
                lan: "lan",
                wan_ip,
            },
        );
        std::fs::write(self.dir.join(format!("{name}.nft")), &rules)?;
        run_in_with_input(&ns_name, "nft", &["-f", "-"], &rules)?;
        if !config.delay.is_zero() {
            self.start_delay(name, &ns_name, config.delay)?;
        }
        self.routers.push(Router {
            name: name.to_owned(),
            ns: ns_name,
            wan_ip,
            lan_ip,
            config,
            uplink: match uplink {
                Uplink::Internet => None,
                Uplink::Router(r) => Some(r.to_owned()),
            },
            ports: 0,
        });
        Ok(self.routers.last().expect("just pushed"))
    }

    fn start_delay(&mut self, router: &str, ns: &str, delay: Duration) -> Result<()> {
        let bin = bins::nfq_delay()?;
        let log = self.dir.join(format!("{router}-nfq-delay.log"));
        let mut p = Process::spawn(
            &format!("nfq-delay on {router}"),
            ns,
            &bin,
            &["--queue", "0", "--delay-us", &delay.as_micros().to_string()],
            &log,
        )?;
        p.wait_ready(SERVER_READY_TIMEOUT, |p| p.log().contains("ready"))?;
        self.procs.push(p);
        // Both directions of forwarded traffic; without --queue-bypass a dead delay
        // process stops the router, which a test notices.
        run_in(
            ns,
            "iptables-nft",
            &[
                "-w",
                "5",
                "-t",
                "mangle",
                "-A",
                "FORWARD",
                "-j",
                "NFQUEUE",
                "--queue-num",
                "0",
            ],
        )?;
        Ok(())
    }

    /// Adds a host named `name` behind `router`.
    pub fn add_host(&mut self, name: &str, router: &str) -> Result<&Host> {
        if self.routers.iter().any(|r| r.name == name) || self.hosts.iter().any(|h| h.name == name)
        {
            return Err(lab_err!("the lab already has a node named {name}"));
        }
        let r = self.router(router)?;
        let gateway = r.lan_ip;
        let o = gateway.octets();
        let ip = Ipv4Addr::new(o[0], o[1], o[2], 10 + r.ports);
        let ns_name = self.ns_name(name);
        self.namespaces.push(Netns::create(&ns_name)?);
        self.plug(Uplink::Router(router), &ns_name, "eth0")?;
        ip_batch(
            &ns_name,
            &[
                format!("addr add {ip}/24 dev eth0"),
                "link set eth0 up".to_owned(),
                format!("route add default via {gateway}"),
            ],
        )?;
        self.hosts.push(Host {
            name: name.to_owned(),
            ns: ns_name,
            ip,
            router: router.to_owned(),
        });
        Ok(self.hosts.last().expect("just pushed"))
    }

    /// Adds a host named `name` on the lab internet itself (no NAT, no firewall): a WAN
    /// address 198.51.100.N of its own, as a server with a public address. Its `router`
    /// is `"internet"`.
    pub fn add_public_host(&mut self, name: &str) -> Result<&Host> {
        if self.routers.iter().any(|r| r.name == name) || self.hosts.iter().any(|h| h.name == name)
        {
            return Err(lab_err!("the lab already has a node named {name}"));
        }
        if self.next_wan == u8::MAX {
            return Err(lab_err!("out of WAN addresses"));
        }
        let ip = Ipv4Addr::new(198, 51, 100, self.next_wan);
        let ns_name = self.ns_name(name);
        self.namespaces.push(Netns::create(&ns_name)?);
        self.plug(Uplink::Internet, &ns_name, "eth0")?;
        self.next_wan += 1;
        ip_batch(
            &ns_name,
            &[
                format!("addr add {ip}/24 dev eth0"),
                "link set eth0 up".to_owned(),
                format!("route add default via {WAN_GATEWAY}"),
            ],
        )?;
        self.hosts.push(Host {
            name: name.to_owned(),
            ns: ns_name,
            ip,
            router: "internet".to_owned(),
        });
        Ok(self.hosts.last().expect("just pushed"))
    }

    /// Gives `host` a second uplink, interface `dev` on `router`'s LAN, left down and
    /// without an address: the other network a phone can move to (cellular beside
    /// Wi-Fi). Returns the address it takes there and its gateway; [`Lab::switch_uplink`]
    /// moves the host.
    pub fn add_spare_uplink(
        &mut self,
        host: &str,
        router: &str,
        dev: &str,
    ) -> Result<(Ipv4Addr, Ipv4Addr)> {
        let ns = self.host(host)?.ns.clone();
        let r = self.router(router)?;
        let gateway = r.lan_ip;
        let o = gateway.octets();
        let ip = Ipv4Addr::new(o[0], o[1], o[2], 10 + r.ports);
        self.plug(Uplink::Router(router), &ns, dev)?;
        Ok((ip, gateway))
    }

    /// Moves `host` from one uplink to another at once, as a phone leaving Wi-Fi for
    /// cellular does: `from`'s address and link go, then `to` comes up with its address
    /// and the default route. Each is `(interface, address, gateway)` (a /24).
    pub fn switch_uplink(
        &self,
        host: &str,
        from: (&str, Ipv4Addr),
        to: (&str, Ipv4Addr, Ipv4Addr),
    ) -> Result<()> {
        let ns = &self.host(host)?.ns;
        ip_batch(
            ns,
            &[
                format!("addr del {}/24 dev {}", from.1, from.0),
                format!("link set {} down", from.0),
                format!("addr add {}/24 dev {}", to.1, to.0),
                format!("link set {} up", to.0),
                format!("route replace default via {}", to.2),
            ],
        )
    }

    /// Links hosts `a` and `b` directly, a second interface on each (`side0`): a side LAN
    /// 10.77.K.0/24 of their own (.1 is `a`, .2 is `b`) with no route beyond it, as two
    /// laptops on the same Wi-Fi besides their own uplinks. Returns (a's, b's) address.
    pub fn link_hosts(&mut self, a: &str, b: &str) -> Result<(Ipv4Addr, Ipv4Addr)> {
        let (na, nb) = (self.host(a)?.ns.clone(), self.host(b)?.ns.clone());
        let k = self.next_side_lan;
        self.next_side_lan = self
            .next_side_lan
            .checked_add(1)
            .ok_or_else(|| lab_err!("out of side LAN subnets"))?;
        let (ia, ib) = (Ipv4Addr::new(10, 77, k, 1), Ipv4Addr::new(10, 77, k, 2));
        ip_batch(
            &na,
            &[
                format!("link add side0 type veth peer name side0 netns {nb}"),
                format!("addr add {ia}/24 dev side0"),
                "link set side0 up".to_owned(),
            ],
        )?;
        ip_batch(
            &nb,
            &[
                format!("addr add {ib}/24 dev side0"),
                "link set side0 up".to_owned(),
            ],
        )?;
        Ok((ia, ib))
    }

    /// Runs `program args…` inside namespace `ns`, killed after `timeout`. Any exit status
    /// is returned; only failing to start or timing out is an error.
    pub fn exec<S: AsRef<std::ffi::OsStr>>(
        &self,
        ns: &str,
        program: &str,
        args: &[S],
        timeout: Duration,
    ) -> Result<Output> {
        output_within(&mut in_ns(ns, program, args), timeout)
    }

    /// Starts `program args…` inside `ns` as a [`Streaming`] process owned by the caller:
    /// its standard output is read line by line as it comes, its standard error goes to
    /// a log in [`dir`](Self::dir). It is killed when dropped (drop it before the lab).
    pub fn spawn_streaming<S: AsRef<std::ffi::OsStr>>(
        &self,
        label: &str,
        ns: &str,
        program: &Path,
        args: &[S],
    ) -> Result<Streaming> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name: String = label
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let log = self.dir.join(format!("{name}-{n}.stderr.log"));
        Streaming::spawn(label, ns, program, args, &log)
    }

    /// Sends a STUN Binding request from inside `ns` (from `bind`, `0.0.0.0:0` for any) to
    /// `server` through the `natlab stun-ping` helper; returns the mapped address.
    pub fn stun_ping(
        &self,
        ns: &str,
        bind: SocketAddr,
        server: SocketAddr,
        timeout: Duration,
    ) -> Result<SocketAddr> {
        let natlab = bins::natlab()?;
        let out = self.exec(
            ns,
            &natlab.to_string_lossy(),
            &[
                "stun-ping".to_owned(),
                "--bind".to_owned(),
                bind.to_string(),
                "--timeout-ms".to_owned(),
                timeout.as_millis().to_string(),
                server.to_string(),
            ],
            timeout + Duration::from_secs(5),
        )?;
        if !out.success() {
            return Err(lab_err!(
                "stun-ping {server} from {ns}: {}",
                out.stderr.trim()
            ));
        }
        out.stdout
            .trim()
            .parse()
            .map_err(|e| lab_err!("stun-ping printed {:?}: {e}", out.stdout))
    }

    /// Runs the `natlab` helper (`stun-ping`, `udp-send`, `udp-recv`, …) inside `ns` and
    /// requires success; returns its standard output.
    pub fn natlab(&self, ns: &str, args: &[&str], timeout: Duration) -> Result<String> {
        let natlab = bins::natlab()?;
        let out = self.exec(ns, &natlab.to_string_lossy(), args, timeout)?;
        if out.success() {
            Ok(out.stdout)
        } else {
            Err(lab_err!(
                "natlab {} in {ns}: {}",
                args.join(" "),
                out.stderr.trim()
            ))
        }
    }

    /// Forgets every mapping of `router` — conntrack's and the NAT's own maps — as a
    /// router reboot or a mapping timeout would.
    pub fn flush_mappings(&self, router: &str) -> Result<()> {
        flush_router(&self.router(router)?.ns)
    }

    /// Waits until every address in `addrs` answers STUN from inside `from_ns`.
    fn wait_stun(p: &mut Process, lab: &Lab, from_ns: &str, addrs: &[SocketAddrV4]) -> Result<()> {
        p.wait_ready(SERVER_READY_TIMEOUT, |_| {
            addrs.iter().all(|a| {
                lab.stun_ping(
                    from_ns,
                    "0.0.0.0:0".parse().expect("literal"),
                    SocketAddr::V4(*a),
                    Duration::from_millis(250),
                )
                .is_ok()
            })
        })
    }

    fn spawn_pinhole_serve(
        &mut self,
        label: &str,
        ns: &str,
        stun: StunServer,
        log_name: &str,
    ) -> Result<()> {
        let bin = bins::pinhole()?;
        let log = self.dir.join(log_name);
        let mut p = Process::spawn(
            label,
            ns,
            &bin,
            &[
                "serve".to_owned(),
                "--primary".to_owned(),
                stun.primary.to_string(),
                "--alternate".to_owned(),
                stun.alternate.to_string(),
            ],
            &log,
        )?;
        Self::wait_stun(&mut p, self, ns, &[stun.primary, stun.alternate])?;
        self.procs.push(p);
        Ok(())
    }

    /// Starts `pinhole serve` on [`PINHOLE_PRIMARY`] and [`PINHOLE_ALTERNATE`] in the
    /// internet, and waits until both IPs answer STUN.
    pub fn start_pinhole_serve(&mut self) -> Result<()> {
        let inet = self.inet.clone();
        self.spawn_pinhole_serve("pinhole serve", &inet, PINHOLE_STUN, "pinhole-serve.log")
    }

    /// Starts `pinhole serve` inside a carrier's network: on the carrier NAT `carrier`'s
    /// LAN address (port 3478) and a second LAN address, `.2` (port 3479), which this
    /// adds. A home router behind the carrier that asks it (miniupnpd's STUN check, see
    /// [`start_miniupnpd_with_stun`](Self::start_miniupnpd_with_stun)) learns its
    /// carrier-side address, as if no NAT were in between. Waits until both answer.
    pub fn start_carrier_stun(&mut self, carrier: &str) -> Result<StunServer> {
        let r = self.router(carrier)?.clone();
        let o = r.lan_ip.octets();
        let alternate_ip = Ipv4Addr::new(o[0], o[1], o[2], 2);
        ip_batch(&r.ns, &[format!("addr add {alternate_ip}/24 dev lan")])?;
        let stun = StunServer {
            primary: SocketAddrV4::new(r.lan_ip, PINHOLE_PRIMARY.port()),
            alternate: SocketAddrV4::new(alternate_ip, PINHOLE_ALTERNATE.port()),
        };
        self.spawn_pinhole_serve(
            &format!("pinhole serve in {carrier}"),
            &r.ns,
            stun,
            &format!("{carrier}-pinhole-serve.log"),
        )?;
        Ok(stun)
    }

    /// Starts coturn (`turnserver`) in the internet on [`COTURN_PRIMARY`] and
    /// [`COTURN_ALTERNATE`] (two listening IPs and an alternate port: RFC 5780), with a
    /// long-term credential [`COTURN_USER`] for TURN, and waits until both IPs answer STUN.
    pub fn start_coturn(&mut self) -> Result<()> {
        self.start_coturn_with(&CoturnOptions::default())
    }

    /// The throw-away CA that signed coturn's certificate (see [`CoturnOptions::tls`]).
    pub fn coturn_ca(&self) -> PathBuf {
        self.dir.join("coturn-ca.pem")
    }

    /// Generates a CA and a server certificate for coturn's IP with openssl.
    fn coturn_certificate(&self) -> Result<(PathBuf, PathBuf)> {
        let d = &self.dir;
        let openssl = |args: &[&str]| -> Result<()> {
            let mut c = command("openssl", args);
            c.current_dir(d);
            let out = output_within(&mut c, cmd::SETUP_TIMEOUT)?;
            if out.success() {
                Ok(())
            } else {
                Err(lab_err!(
                    "openssl {}: {}",
                    args.join(" "),
                    out.stderr.trim()
                ))
            }
        };
        let ip = COTURN_TLS.ip();
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=pinhole lab CA",
            "-keyout",
            "coturn-ca-key.pem",
            "-out",
            "coturn-ca.pem",
        ])?;
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            &format!("/CN={ip}"),
            "-keyout",
            "coturn-key.pem",
            "-out",
            "coturn.csr",
        ])?;
        std::fs::write(
            d.join("coturn-ext.cnf"),
            format!("subjectAltName=IP:{ip}\nbasicConstraints=CA:FALSE\n"),
        )?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            "coturn.csr",
            "-CA",
            "coturn-ca.pem",
            "-CAkey",
            "coturn-ca-key.pem",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "coturn-ext.cnf",
            "-out",
            "coturn-cert.pem",
        ])?;
        Ok((d.join("coturn-cert.pem"), d.join("coturn-key.pem")))
    }

    /// Like [`start_coturn`](Self::start_coturn), with TLS and REST credentials on
    /// request.
    pub fn start_coturn_with(&mut self, opts: &CoturnOptions) -> Result<()> {
        let conf = self.dir.join("turnserver.conf");
        let log = self.dir.join("turnserver.log");
        let d = self.dir.display();
        let (user, pass) = COTURN_USER;
        let text = format!(
            "# generated by the pinhole NAT lab\n\
             listening-ip={p}\n\
             listening-ip={a}\n\
             listening-port={pp}\n\
             alt-listening-port={ap}\n\
             relay-ip={p}\n\
             min-port=49152\n\
             max-port=65535\n\
             realm={COTURN_REALM}\n\
             lt-cred-mech\n\
             user={user}:{pass}\n\
             fingerprint\n\
             no-dtls\n\
             no-cli\n\
             verbose\n\
             simple-log\n\
             log-file={d}/turnserver-file.log\n\
             pidfile={d}/turnserver.pid\n\
             userdb={d}/turnserver.db\n",
            p = COTURN_PRIMARY.ip(),
            a = COTURN_ALTERNATE.ip(),
            pp = COTURN_PRIMARY.port(),
            ap = COTURN_ALTERNATE.port(),
        );
        let mut text = text;
        if opts.tls {
            let (cert, key) = self.coturn_certificate()?;
            let _ = write!(
                text,
                "tls-listening-port={}\ncert={}\npkey={}\n",
                COTURN_TLS.port(),
                cert.display(),
                key.display()
            );
        } else {
            text.push_str("no-tls\n");
        }
        if opts.rest {
            let _ = write!(
                text,
                "use-auth-secret\nstatic-auth-secret={COTURN_SECRET}\n"
            );
        }
        for line in &opts.extra {
            text.push_str(line);
            text.push('\n');
        }
        std::fs::write(&conf, text)?;
        let mut p = Process::spawn(
            "coturn",
            &self.inet,
            Path::new("turnserver"),
            &["-c".to_owned(), conf.to_string_lossy().into_owned()],
            &log,
        )?;
        let inet = self.inet.clone();
        Self::wait_stun(&mut p, self, &inet, &[COTURN_PRIMARY, COTURN_ALTERNATE])?;
        self.procs.push(p);
        Ok(())
    }

    /// Restarts coturn (started before with [`start_coturn`](Self::start_coturn) or
    /// [`start_coturn_with`](Self::start_coturn_with)) with the same configuration: a
    /// server that forgot every allocation, at the same addresses. Returns once it
    /// answers STUN again.
    pub fn restart_coturn(&mut self) -> Result<()> {
        let i = self
            .procs
            .iter()
            .position(|p| p.label() == "coturn")
            .ok_or_else(|| lab_err!("coturn is not running"))?;
        let mut old = self.procs.remove(i);
        old.stop();
        let conf = self.dir.join("turnserver.conf");
        let log = self.dir.join("turnserver-restarted.log");
        let mut p = Process::spawn(
            "coturn",
            &self.inet,
            Path::new("turnserver"),
            &["-c".to_owned(), conf.to_string_lossy().into_owned()],
            &log,
        )?;
        let inet = self.inet.clone();
        Self::wait_stun(&mut p, self, &inet, &[COTURN_PRIMARY, COTURN_ALTERNATE])?;
        self.procs.push(p);
        Ok(())
    }

    /// Starts miniupnpd (nftables backend) on `router` with UPnP IGD, NAT-PMP and PCP. Its
    /// table and chains are created here (Debian's `nft_init.sh` is broken). Because the
    /// router's WAN address is reserved (documentation range), miniupnpd only forwards
    /// after its STUN check against `pinhole serve` passes: start that first. The router
    /// accepts the STUN answers from the server's addresses for it.
    ///
    /// The PCP and NAT-PMP epoch counts from miniupnpd's own start (`system_uptime=no`),
    /// so that [`restart_miniupnpd`](Self::restart_miniupnpd) shows in it, and PCP grants
    /// lifetimes down to [`MINIUPNPD_MIN_LIFETIME`].
    pub fn start_miniupnpd(&mut self, router: &str) -> Result<PortMapper> {
        self.start_miniupnpd_with_stun(router, PINHOLE_STUN)
    }

    /// [`start_miniupnpd`](Self::start_miniupnpd) with miniupnpd's STUN check against
    /// `stun`, which must be running and reachable from the router's WAN side. Its
    /// external address is the one that server reports.
    pub fn start_miniupnpd_with_stun(
        &mut self,
        router: &str,
        stun: StunServer,
    ) -> Result<PortMapper> {
        self.setup_miniupnpd(router, stun, false)
    }

    /// [`start_miniupnpd`](Self::start_miniupnpd) with miniupnpd describing itself as an
    /// IGD v1 device (WANIPConnection:1, which has no AddAnyPortMapping), as many routers
    /// in the field still do.
    pub fn start_miniupnpd_igd_v1(&mut self, router: &str) -> Result<PortMapper> {
        self.setup_miniupnpd(router, PINHOLE_STUN, true)
    }

    fn setup_miniupnpd(
        &mut self,
        router: &str,
        stun: StunServer,
        igd_v1: bool,
    ) -> Result<PortMapper> {
        if self.miniupnpd.iter().any(|m| m.router == router) {
            return Err(lab_err!(
                "miniupnpd was already set up on {router}: use restart_miniupnpd"
            ));
        }
        let r = self.router(router)?.clone();
        let table = MINIUPNPD_TABLE;
        let rules = format!(
            "table inet {table} {{\n\
             \x20 chain forward {{ type filter hook forward priority filter - 5; policy accept; jump fwd_upnp; }}\n\
             \x20 chain fwd_upnp {{ }}\n\
             \x20 chain prerouting {{ type nat hook prerouting priority dstnat - 5; policy accept; jump pre_upnp; }}\n\
             \x20 chain pre_upnp {{ }}\n\
             \x20 chain postrouting {{ type nat hook postrouting priority srcnat - 5; policy accept; jump post_upnp; }}\n\
             \x20 chain post_upnp {{ }}\n\
             }}\n\
             insert rule ip {lab} filtin iifname \"wan\" ip saddr {{ {a}, {b} }} udp sport {{ {pa}, {pb} }} accept\n",
            lab = nat::TABLE,
            a = stun.primary.ip(),
            b = stun.alternate.ip(),
            pa = stun.primary.port(),
            pb = stun.alternate.port(),
        );
        run_in_with_input(&r.ns, "nft", &["-f", "-"], &rules)?;
        // The same device across restarts.
        let uuid = format!("7c9e6679-7425-40de-944b-e07fc1f9{:04x}", self.procs.len());
        self.miniupnpd.push(Miniupnpd {
            router: router.to_owned(),
            stun,
            uuid,
            starts: 0,
            running: false,
            igd_v1,
        });
        self.spawn_miniupnpd(router)
    }

    fn spawn_miniupnpd(&mut self, router: &str) -> Result<PortMapper> {
        let r = self.router(router)?.clone();
        let idx = self
            .miniupnpd
            .iter()
            .position(|m| m.router == router)
            .ok_or_else(|| lab_err!("miniupnpd is not set up on {router}"))?;
        let m = self.miniupnpd[idx].clone();
        let table = MINIUPNPD_TABLE;
        let d = self.dir.display();
        let conf = self.dir.join(format!("{router}-miniupnpd.conf"));
        std::fs::write(
            &conf,
            format!(
                "# generated by the pinhole NAT lab\n\
                 ext_ifname=wan\n\
                 listening_ip=lan\n\
                 http_port={UPNP_HTTP_PORT}\n\
                 enable_upnp=yes\n\
                 enable_natpmp=yes\n\
                 ext_perform_stun=yes\n\
                 ext_stun_host={sh}\n\
                 ext_stun_port={sp}\n\
                 upnp_table_name={table}\n\
                 upnp_nat_table_name={table}\n\
                 upnp_forward_chain=fwd_upnp\n\
                 upnp_nat_chain=pre_upnp\n\
                 upnp_nat_postrouting_chain=post_upnp\n\
                 secure_mode=yes\n\
                 system_uptime=no\n\
                 min_lifetime={MINIUPNPD_MIN_LIFETIME}\n\
                 max_lifetime=86400\n\
                 lease_file={d}/{router}-upnp.leases\n\
                 uuid={uuid}\n\
                 force_igd_desc_v1={v1}\n\
                 allow 1024-65535 0.0.0.0/0 1024-65535\n\
                 deny 0-65535 0.0.0.0/0 0-65535\n",
                sh = m.stun.primary.ip(),
                sp = m.stun.primary.port(),
                uuid = m.uuid,
                v1 = if m.igd_v1 { "yes" } else { "no" },
            ),
        )?;
        let log = self.dir.join(if m.starts == 0 {
            format!("{router}-miniupnpd.log")
        } else {
            format!("{router}-miniupnpd-{}.log", m.starts + 1)
        });
        // With `-d` miniupnpd logs every line to stderr (the log file) and to syslog; with
        // no syslog daemon (no /dev/log) glibc writes it to /dev/console instead, which
        // spams the machine's console and costs about a millisecond and a half per line,
        // making every request slow. `ip netns exec` runs in a mount namespace of its own
        // (a slave of the root one, so nothing propagates back): bind /dev/null over
        // /dev/console there, then exec miniupnpd (its pid stays the one spawned).
        let mut p = Process::spawn(
            &miniupnpd_label(router),
            &r.ns,
            Path::new("sh"),
            &[
                "-c".to_owned(),
                "mount --bind /dev/null /dev/console && exec \"$0\" \"$@\"".to_owned(),
                cmd::tool("miniupnpd").to_string_lossy().into_owned(),
                "-d".to_owned(),
                "-f".to_owned(),
                conf.to_string_lossy().into_owned(),
                "-P".to_owned(),
                format!("{d}/{router}-miniupnpd.pid"),
            ],
            &log,
        )?;
        p.wait_ready(SERVER_READY_TIMEOUT, |p| {
            let l = p.log();
            l.contains("Port forwarding is now enabled")
                && l.contains("HTTP listening on port")
                && l.contains("Listening for NAT-PMP/PCP traffic")
        })?;
        self.procs.push(p);
        let m = &mut self.miniupnpd[idx];
        m.starts += 1;
        m.running = true;
        Ok(PortMapper {
            router: router.to_owned(),
            upnp_url: format!("http://{}:{UPNP_HTTP_PORT}/rootDesc.xml", r.lan_ip),
            pmp_addr: SocketAddrV4::new(r.lan_ip, 5351),
        })
    }

    /// Stops miniupnpd on `router` and wipes what a router reboot wipes: its rules (which
    /// miniupnpd leaves in place when it exits), its lease file (from which it would
    /// restore them), conntrack and the NAT's learned mappings. Its port mappings are
    /// gone; start it again with [`restart_miniupnpd`](Self::restart_miniupnpd).
    pub fn stop_miniupnpd(&mut self, router: &str) -> Result<()> {
        let r = self.router(router)?.clone();
        let m = self
            .miniupnpd
            .iter_mut()
            .find(|m| m.router == router && m.running)
            .ok_or_else(|| lab_err!("miniupnpd is not running on {router}"))?;
        m.running = false;
        let label = miniupnpd_label(router);
        if let Some(i) = self.procs.iter().position(|p| p.label() == label) {
            self.procs.remove(i).stop();
        }
        let table = MINIUPNPD_TABLE;
        run_in_with_input(
            &r.ns,
            "nft",
            &["-f", "-"],
            &format!(
                "flush chain inet {table} fwd_upnp\n\
                 flush chain inet {table} pre_upnp\n\
                 flush chain inet {table} post_upnp\n"
            ),
        )?;
        let leases = self.dir.join(format!("{router}-upnp.leases"));
        if leases.exists() {
            std::fs::remove_file(&leases)?;
        }
        self.flush_mappings(router)
    }

    /// Restarts miniupnpd on `router` as a router reboot would
    /// ([`stop_miniupnpd`](Self::stop_miniupnpd), then start it again with the same
    /// configuration); its epoch starts again from 0.
    pub fn restart_miniupnpd(&mut self, router: &str) -> Result<PortMapper> {
        if self
            .miniupnpd
            .iter()
            .any(|m| m.router == router && m.running)
        {
            self.stop_miniupnpd(router)?;
        }
        self.spawn_miniupnpd(router)
    }

    /// The logs of every process started so far, for failure messages.
    pub fn server_logs(&self) -> String {
        let mut s = String::new();
        for p in &self.procs {
            let _ = writeln!(
                s,
                "--- {} ({}) ---\n{}",
                p.label(),
                p.log_path().display(),
                p.log()
            );
        }
        s
    }

    /// A description of the lab: namespaces and addresses.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "internet  ns {}  gateways {SERVER_GATEWAY} {WAN_GATEWAY}",
            self.inet
        );
        for p in &self.procs {
            let _ = writeln!(
                s,
                "  server  {}  (log {})",
                p.label(),
                p.log_path().display()
            );
        }
        for r in &self.routers {
            let _ = writeln!(
                s,
                "router    {:<22} ns {:<28} wan {:<15} lan {:<15} behind {:<10} {}",
                r.name,
                r.ns,
                r.wan_ip,
                r.lan_ip,
                r.uplink.as_deref().unwrap_or("internet"),
                r.config.describe()
            );
        }
        for h in &self.hosts {
            let _ = writeln!(
                s,
                "host      {:<22} ns {:<28} ip  {:<15} behind {}",
                h.name, h.ns, h.ip, h.router
            );
        }
        s
    }

    /// Leaves the whole lab running after this value is gone (for `natlab up`).
    pub fn keep(mut self) {
        self.keep = true;
        for ns in &mut self.namespaces {
            ns.keep();
        }
        for p in std::mem::take(&mut self.procs) {
            p.detach();
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        for p in &mut self.procs {
            p.stop();
        }
        self.procs.clear();
        // Hosts first, then routers (innermost first), the internet last.
        while let Some(ns) = self.namespaces.pop() {
            drop(ns);
        }
        if std::thread::panicking() || std::env::var_os("PINHOLE_LAB_KEEP_LOGS").is_some() {
            support::say(&format!(
                "natlab: logs and configs kept in {}",
                self.dir.display()
            ));
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
