// PathMonitor: the network path as the system reports it (on Apple platforms NWPathMonitor,
// through NWPathSource in PathMonitorNetwork.swift), reduced to what pinhole needs: whether
// there is a usable path, its preferred interface, and which gateway and local address the
// port mapper should use; fed to port mappers as network changes
// (PortMapper.networkChanged), and to peer connections (PeerConnection.networkChanged,
// whose new description the app signals). Everything here is portable Swift and is tested on Linux
// with a fake PathSource; only the small NWPathMonitor adapter needs Apple's SDK.
import Foundation

#if canImport(Darwin)
    import Darwin
#elseif canImport(Glibc)
    import Glibc
#endif

/// One observation of the network path, as the platform reports it: on Apple platforms an
/// `NWPath` from `NWPathMonitor`, converted by `NWPathSource`. A plain value, so that
/// `PathMonitor`'s logic does not depend on Network.framework.
public struct PathSnapshot: Equatable, Sendable {
    /// Whether the path can be used (`NWPath.Status`).
    public enum Status: Equatable, Sendable {
        /// The path is usable.
        case satisfied
        /// No usable path.
        case unsatisfied
        /// Not usable yet: a connection must be made first (VPN on demand, for example).
        case requiresConnection
    }

    /// The kind of an interface (`NWInterface.InterfaceType`).
    public enum InterfaceType: Equatable, Sendable {
        /// Wi-Fi.
        case wifi
        /// Cellular data.
        case cellular
        /// Wired Ethernet.
        case wiredEthernet
        /// Loopback.
        case loopback
        /// Anything else; VPN tunnels (utun, ipsec) are of this type.
        case other
    }

    /// A network interface of the path.
    public struct Interface: Equatable, Sendable {
        /// The BSD name (`en0`, `pdp_ip0`, `utun3`).
        public var name: String
        /// Its kind.
        public var type: InterfaceType

        /// An interface.
        public init(name: String, type: InterfaceType) {
            self.name = name
            self.type = type
        }
    }

    /// A gateway of the path (`NWPath.gateways`).
    public struct Gateway: Equatable, Sendable {
        /// The IP address, without a zone (`192.168.1.1`, `fe80::1`).
        public var ip: String
        /// The interface it is on, when the system says (IPv6 link-local gateways).
        public var interface: String?

        /// A gateway.
        public init(ip: String, interface: String? = nil) {
            self.ip = ip
            self.interface = interface
        }
    }

    /// The path's status.
    public var status: Status
    /// The path's interfaces, the preferred first (`NWPath.availableInterfaces`).
    public var interfaces: [Interface]
    /// The gateways configured on those interfaces.
    public var gateways: [Gateway]
    /// Whether the path is expensive (cellular, a personal hotspot).
    public var isExpensive: Bool
    /// Whether the path is constrained (Low Data Mode).
    public var isConstrained: Bool

    /// A snapshot.
    public init(status: Status, interfaces: [Interface] = [], gateways: [Gateway] = [],
                isExpensive: Bool = false, isConstrained: Bool = false)
    {
        self.status = status
        self.interfaces = interfaces
        self.gateways = gateways
        self.isExpensive = isExpensive
        self.isConstrained = isConstrained
    }
}

/// Where `PathMonitor` gets path snapshots from: `NWPathSource` (NWPathMonitor) on Apple
/// platforms; a fake in tests.
public protocol PathSource: AnyObject {
    /// Starts delivering snapshots to `handler`, the current path first, then every update;
    /// one call at a time, on any thread. Called once.
    func start(_ handler: @escaping @Sendable (PathSnapshot) -> Void)
    /// Stops delivering snapshots. Called once; nothing is delivered after it returns or
    /// soon after.
    func cancel()
}

/// An address of an interface.
public struct InterfaceAddress: Equatable, Sendable {
    /// The IP address, without a zone.
    public var ip: String
    /// The length of its network prefix (24 for 255.255.255.0).
    public var prefixLength: Int

    /// An address.
    public init(ip: String, prefixLength: Int) {
        self.ip = ip
        self.prefixLength = prefixLength
    }
}

/// The addresses of the host's interfaces (NWPath does not carry them): `SystemInterfaces`
/// (getifaddrs); a fake in tests.
public protocol InterfaceAddressProvider: Sendable {
    /// The addresses of the interface named `name`, IPv4 and IPv6.
    func addresses(ofInterface name: String) -> [InterfaceAddress]
}

/// The host's interface addresses, read with `getifaddrs(3)` (Darwin and Linux).
public struct SystemInterfaces: InterfaceAddressProvider {
    /// The system's interfaces.
    public init() {}

    public func addresses(ofInterface name: String) -> [InterfaceAddress] {
        var first: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&first) == 0 else { return [] }
        defer { freeifaddrs(first) }
        var out: [InterfaceAddress] = []
        var next = first
        while let ifa = next {
            next = ifa.pointee.ifa_next
            guard let cname = ifa.pointee.ifa_name, String(cString: cname) == name,
                  let addr = ifa.pointee.ifa_addr
            else { continue }
            guard let ip = IPAddress(sockaddr: addr) else { continue }
            let prefix = ifa.pointee.ifa_netmask.flatMap { IPAddress(sockaddr: $0) }
                .map { $0.bytes.reduce(0) { $0 + $1.nonzeroBitCount } } ?? ip.bytes.count * 8
            out.append(InterfaceAddress(ip: ip.description, prefixLength: prefix))
        }
        return out
    }
}

/// The network as pinhole needs it, derived from a `PathSnapshot` (see `PathMonitor`).
public struct NetworkState: Equatable, Sendable {
    /// Whether there is a usable path.
    public var isSatisfied: Bool
    /// The preferred interface (not loopback); nil without a usable path.
    public var interface: PathSnapshot.Interface?
    /// The gateway to map ports on (an IP address); nil when port mapping should not be
    /// tried: no usable path, a VPN or other tunnel preferred, no gateway, or no local
    /// address of the gateway's family. `noGatewayReason` says which.
    public var gateway: String?
    /// This host's address toward `gateway` (same family, in its subnet when one is).
    public var localIp: String?
    /// Why there is no gateway; nil when there is one.
    public var noGatewayReason: String?
    /// Whether the path is expensive (cellular, a personal hotspot).
    public var isExpensive: Bool
    /// Whether the path is constrained (Low Data Mode).
    public var isConstrained: Bool

    /// What a port mapper is told (`PortMapper.networkChanged`): the gateway and local
    /// address, or neither (then the mapper says `Lost` and waits for the next change on
    /// iOS and Android, where it cannot read the routing table).
    public var networkInfo: NetworkInfo {
        NetworkInfo(gateway: gateway, localIp: gateway == nil ? nil : localIp)
    }

    /// `config` with this state's gateway and local address (to start a mapper that
    /// `PathMonitor.feed` then keeps up to date).
    public func applied(to config: PortMappingConfig) -> PortMappingConfig {
        var c = config
        c.gateway = networkInfo.gateway
        c.localIp = networkInfo.localIp
        return c
    }

    /// What a peer connection cares about: whether there is a path, its preferred
    /// interface, the gateway and this host's address toward it. Not whether the path is
    /// expensive or constrained.
    var connectionKey: ConnectionKey {
        ConnectionKey(isSatisfied: isSatisfied, interface: interface, gateway: gateway, localIp: localIp)
    }
}

/// The part of a `NetworkState` whose change restarts a peer connection.
struct ConnectionKey: Equatable {
    var isSatisfied: Bool
    var interface: PathSnapshot.Interface?
    var gateway: String?
    var localIp: String?
}

/// The decision of `PathMonitor`: snapshot in, `NetworkState` out, unchanged states
/// dropped. Pure; `PathMonitor` runs it under its lock.
struct PathLogic {
    private(set) var last: NetworkState?

    /// The new state, or nil when it equals the last one (NWPathMonitor reports paths
    /// that differ in nothing pinhole uses, and the same path more than once).
    mutating func update(_ snapshot: PathSnapshot, addresses: InterfaceAddressProvider) -> NetworkState? {
        let state = PathLogic.decide(snapshot, addresses: addresses)
        if state == last { return nil }
        last = state
        return state
    }

    static func decide(_ s: PathSnapshot, addresses: InterfaceAddressProvider) -> NetworkState {
        var state = NetworkState(isSatisfied: s.status == .satisfied, interface: nil, gateway: nil,
                                 localIp: nil, noGatewayReason: nil,
                                 isExpensive: s.isExpensive, isConstrained: s.isConstrained)
        guard s.status == .satisfied else {
            state.noGatewayReason = "no usable network path (\(s.status))"
            return state
        }
        guard let primary = s.interfaces.first(where: { $0.type != .loopback }) else {
            state.noGatewayReason = "no network interface"
            return state
        }
        state.interface = primary
        if primary.type == .other {
            // Traffic leaves through the tunnel: a mapping on the gateway of the network
            // underneath would open a port that no packet of the app's uses.
            state.noGatewayReason = "the preferred interface \(primary.name) is a VPN or other tunnel"
            return state
        }
        let gateways = s.gateways.compactMap { g -> (PathSnapshot.Gateway, IPAddress)? in
            guard g.interface == nil || g.interface == primary.name,
                  let ip = IPAddress(g.ip) else { return nil }
            return (g, ip)
        }
        guard !gateways.isEmpty else {
            state.noGatewayReason = "no gateway on \(primary.name)"
            return state
        }
        let local = addresses.addresses(ofInterface: primary.name).compactMap { a in
            IPAddress(a.ip).map { ($0, a.prefixLength) }
        }
        // IPv4 first: NAT-PMP (RFC 6886) and UPnP IGD speak only IPv4, and NAT is an IPv4
        // matter. An IPv6 gateway (PCP, RFC 6887, opens firewall pinholes) only when the
        // network has no IPv4 gateway, and only a routable one: link-local gateways (the
        // usual kind) need a zone, which an IP address given to the mapper cannot carry.
        // Within a family, a gateway in the subnet of one of the interface's addresses comes
        // first (NWPath lists the gateways of every available interface, often without
        // saying which); else the first gateway (a point-to-point link, such as cellular,
        // has its gateway outside its own /32), with the interface's first usable address.
        for v4 in [true, false] {
            let usable = gateways.map { $0.1 }.filter { $0.isIPv4 == v4 && (v4 || !$0.isLinkLocal) }
            let candidates = local.filter { $0.0.isIPv4 == v4 && !$0.0.isLinkLocal }
            for gw in usable {
                if let (ip, _) = candidates.first(where: { gw.inSubnet(of: $0.0, prefixLength: $0.1) }) {
                    state.gateway = gw.description
                    state.localIp = ip.description
                    return state
                }
            }
            if let gw = usable.first, let (ip, _) = candidates.first {
                state.gateway = gw.description
                state.localIp = ip.description
                return state
            }
        }
        let kinds = Set(gateways.map { $0.1.isIPv4 ? "IPv4" : "IPv6" }).sorted().joined(separator: "/")
        state.noGatewayReason = gateways.allSatisfy({ !$0.1.isIPv4 && $0.1.isLinkLocal })
            ? "only link-local IPv6 gateways on \(primary.name)"
            : "no usable local address for the \(kinds) gateway on \(primary.name)"
        return state
    }
}

/// Receives network changes: `PortMapper` (its `networkChanged(info:)`); a fake in tests.
public protocol NetworkChangeReceiver: AnyObject {
    /// The network changed: map again toward `info`.
    func networkChanged(info: NetworkInfo) throws
}

extension PortMapper: NetworkChangeReceiver {}

/// Watches the network path and keeps port mappers on the right gateway.
///
/// On Apple platforms `PathMonitor()` watches `NWPathMonitor` (status, interfaces,
/// gateways); `PathMonitor(source:)` takes any `PathSource`. Each path update becomes a
/// `NetworkState` (whether the path is usable, its preferred interface, the gateway and
/// local address for port mapping: IPv4 first, none through a VPN); updates that change
/// nothing pinhole uses are dropped. Port mappers given to `feed(_:configuredWith:)` (or
/// started with `mapPort(config:listener:)`) are told when their gateway or local address
/// changes, through `PortMapper.networkChanged`: they delete the mapping at the old
/// gateway and map again at the new one. Peer connections given to `feed(_:signal:)` (or
/// started with `peerConnectionEvents(config:signal:)`) restart on each new network, and
/// the new local description goes to `signal`, for the peer.
///
/// `close()` stops watching (as does releasing the last reference). Thread-safe.
public final class PathMonitor: @unchecked Sendable {
    private final class Fed {
        weak var receiver: NetworkChangeReceiver?
        var sent: NetworkInfo
        init(_ r: NetworkChangeReceiver, _ sent: NetworkInfo) { receiver = r; self.sent = sent }
    }

    private final class FedPeer {
        weak var connection: PeerConnection?
        let signal: @Sendable (String) -> Void
        /// The network the connection is on; nil until the first state.
        var key: ConnectionKey?
        var ended = false
        init(_ c: PeerConnection, _ signal: @escaping @Sendable (String) -> Void, _ key: ConnectionKey?) {
            connection = c
            self.signal = signal
            self.key = key
        }
    }

    private let source: PathSource
    private let addresses: InterfaceAddressProvider
    private let lock = NSLock()
    private var logic = PathLogic()
    private var fed: [Fed] = []
    private var peers: [FedPeer] = []
    private var observers: [UUID: AsyncStream<NetworkState>.Continuation] = [:]
    private var started = false
    private var closed = false

    /// A monitor of `source`'s paths, with interface addresses from `addresses`. Call
    /// `start()`.
    public init(source: PathSource, addresses: InterfaceAddressProvider = SystemInterfaces()) {
        self.source = source
        self.addresses = addresses
    }

    deinit { close() }

    /// Starts watching (idempotent; nothing after `close()`).
    public func start() {
        lock.lock()
        let go = !started && !closed
        started = true
        lock.unlock()
        guard go else { return }
        source.start { [weak self] snapshot in self?.receive(snapshot) }
    }

    /// Stops watching and ends the `states()` streams. Idempotent; releasing the last
    /// reference does the same.
    public func close() {
        lock.lock()
        let wasStarted = started && !closed
        closed = true
        let ending = Array(observers.values)
        observers.removeAll()
        fed.removeAll()
        peers.removeAll()
        lock.unlock()
        if wasStarted { source.cancel() }
        for c in ending { c.finish() }
    }

    /// The current state; nil before the first path update.
    public var state: NetworkState? {
        lock.lock()
        defer { lock.unlock() }
        return logic.last
    }

    /// The states from now on, the current one first (when there is one). The stream ends
    /// with `close()`; ending its iteration unsubscribes it.
    public func states() -> AsyncStream<NetworkState> {
        let id = UUID()
        return AsyncStream { continuation in
            lock.lock()
            if closed {
                lock.unlock()
                continuation.finish()
                return
            }
            observers[id] = continuation
            if let s = logic.last { continuation.yield(s) }
            lock.unlock()
            continuation.onTermination = { [weak self] _ in
                guard let self else { return }
                self.lock.lock()
                self.observers[id] = nil
                self.lock.unlock()
            }
        }
    }

    /// Keeps `receiver` (a `PortMapper`) told of network changes from now on, while it
    /// lives (held weakly). `config` is what it was started with: if the current state's
    /// gateway or local address differs, it is told at once.
    public func feed(_ receiver: NetworkChangeReceiver, configuredWith config: PortMappingConfig) {
        feed(receiver, current: NetworkInfo(gateway: config.gateway, localIp: config.localIp))
    }

    /// Starts a port mapper toward the current state's gateway (`mapPort` with
    /// `state.applied(to: config)`) and feeds it network changes from then on.
    public func mapPort(config: PortMappingConfig, listener: PortMappingListener) throws -> PortMapper {
        let applied = state?.applied(to: config) ?? config
        let mapper = try Pinhole.mapPort(config: applied, listener: listener)
        feed(mapper, configuredWith: applied)
        return mapper
    }

    /// Restarts `connection` on each new network (`PeerConnection.networkChanged()`) and
    /// hands the new local description to `signal`, to send to the peer (as for
    /// `restart()`: the candidates follow as `localCandidate` events; the peer restarts too,
    /// and its new description comes back as its `remoteRestarted`). The changes that
    /// count: another preferred interface, gateway or local address, and the path coming
    /// back after none; not the current state (the network the connection was made on, or
    /// the first path when fed before there is one), not `isExpensive` or `isConstrained`,
    /// and nothing while the path is unusable (nothing to restart on, nor a way to signal).
    ///
    /// Create the connection with `noNetworkMonitor` set where pinhole has a built-in
    /// monitor (Linux and Android), so that a change does not restart it twice; on Apple
    /// platforms there is none. The connection is held weakly, and its feed ends when it
    /// has closed (`networkChanged()` throws `NotAvailable`). Another failure (`Io`: no
    /// route yet; `TimedOut`) skips that change: the connection stays on its path, the
    /// next change tries again. `networkChanged()` and `signal` run on the thread that
    /// delivers paths (`PathMonitor(queue:)`'s queue), one change at a time.
    public func feed(_ connection: PeerConnection, signal: @escaping @Sendable (String) -> Void) {
        lock.lock()
        if !closed {
            peers.append(FedPeer(connection, signal, logic.last?.connectionKey))
        }
        lock.unlock()
    }

    private func feed(_ receiver: NetworkChangeReceiver, current: NetworkInfo) {
        lock.lock()
        guard !closed else { lock.unlock(); return }
        let f = Fed(receiver, current)
        fed.append(f)
        let now = logic.last?.networkInfo
        var send: NetworkInfo?
        if let now, now != f.sent {
            f.sent = now
            send = now
        }
        lock.unlock()
        if let send { try? receiver.networkChanged(info: send) }
    }

    /// One snapshot from the source (one at a time).
    func receive(_ snapshot: PathSnapshot) {
        lock.lock()
        guard !closed, let state = logic.update(snapshot, addresses: addresses) else {
            lock.unlock()
            return
        }
        fed.removeAll { $0.receiver == nil }
        let info = state.networkInfo
        var tell: [NetworkChangeReceiver] = []
        for f in fed where f.sent != info {
            f.sent = info
            if let r = f.receiver { tell.append(r) }
        }
        peers.removeAll { $0.connection == nil || $0.ended }
        let key = state.connectionKey
        var restart: [(FedPeer, PeerConnection)] = []
        for p in peers {
            let was = p.key
            p.key = key
            guard was != nil, was != key, key.isSatisfied, let c = p.connection else { continue }
            restart.append((p, c))
        }
        let watching = Array(observers.values)
        lock.unlock()
        // A mapper that has stopped says NotAvailable: nothing to do about it.
        for r in tell { try? r.networkChanged(info: info) }
        for (p, c) in restart {
            do {
                let description = try c.networkChanged()
                p.signal(description)
            } catch PinholeError.NotAvailable {
                // Closed: its feed ends.
                lock.lock()
                p.ended = true
                lock.unlock()
            } catch {
                // Skipped: the next change tries again.
            }
        }
        for c in watching { c.yield(state) }
    }

    /// The peer connections fed now (for tests).
    var fedPeerCount: Int {
        lock.lock()
        defer { lock.unlock() }
        return peers.filter { $0.connection != nil && !$0.ended }.count
    }
}

/// An IPv4 or IPv6 address as bytes (parsing, formatting, subnets).
struct IPAddress: Equatable, CustomStringConvertible {
    let bytes: [UInt8]

    var isIPv4: Bool { bytes.count == 4 }

    /// 169.254.0.0/16 or fe80::/10.
    var isLinkLocal: Bool {
        isIPv4 ? bytes[0] == 169 && bytes[1] == 254 : bytes[0] == 0xFE && bytes[1] & 0xC0 == 0x80
    }

    /// Text (a zone after `%` is ignored).
    init?(_ text: String) {
        let plain = String(text.split(separator: "%", maxSplits: 1).first ?? "")
        var v4 = in_addr()
        var v6 = in6_addr()
        if inet_pton(AF_INET, plain, &v4) == 1 {
            bytes = withUnsafeBytes(of: &v4) { Array($0) }
        } else if inet_pton(AF_INET6, plain, &v6) == 1 {
            bytes = withUnsafeBytes(of: &v6) { Array($0) }
        } else {
            return nil
        }
    }

    /// The address of a `sockaddr` (AF_INET or AF_INET6).
    init?(sockaddr sa: UnsafePointer<sockaddr>) {
        switch Int32(sa.pointee.sa_family) {
        case AF_INET:
            bytes = sa.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { p in
                withUnsafeBytes(of: p.pointee.sin_addr) { Array($0) }
            }
        case AF_INET6:
            bytes = sa.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { p in
                withUnsafeBytes(of: p.pointee.sin6_addr) { Array($0) }
            }
        default:
            return nil
        }
    }

    /// Raw bytes (4 or 16; `IPv4Address.rawValue`, `IPv6Address.rawValue`).
    init?(bytes: [UInt8]) {
        guard bytes.count == 4 || bytes.count == 16 else { return nil }
        self.bytes = bytes
    }

    var description: String {
        var buf = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        let family = isIPv4 ? AF_INET : AF_INET6
        let ok = bytes.withUnsafeBytes { raw in
            inet_ntop(family, raw.baseAddress, &buf, socklen_t(buf.count)) != nil
        }
        return ok ? String(cString: buf) : ""
    }

    /// Whether this address is in `other`'s network of `prefixLength` bits.
    func inSubnet(of other: IPAddress, prefixLength: Int) -> Bool {
        guard bytes.count == other.bytes.count, prefixLength > 0 else { return false }
        var bits = min(prefixLength, bytes.count * 8)
        for i in 0..<bytes.count where bits > 0 {
            let mask: UInt8 = bits >= 8 ? 0xFF : ~(0xFF >> UInt8(bits))
            if bytes[i] & mask != other.bytes[i] & mask { return false }
            bits -= 8
        }
        return true
    }
}
