// Tests of the hand-written Swift of the package (ios/Sources/Pinhole): the AsyncSequence
// adapters against loopback servers (the embedded STUN server, `pinhole serve --turn` from
// bindings/test.sh, and a fake NAT-PMP gateway of this file's own on 127.0.0.61/62), and
// PathMonitor's logic with a fake PathSource and fake interface addresses, moving a real
// port mapper and restarting real peer connections (bound to 127.0.0.1, no servers), and
// AppLifecycle's with a fake source (and UIKit's notifications, over a stand-in), setting
// the keepalive policy of real peer connections.
// Nothing leaves loopback.
import Foundation
import XCTest

#if canImport(Glibc)
    import Glibc
#endif
// On Linux: the stand-in of bindings/swift/Stubs/Network (see there).
#if canImport(Network)
    import Network
#endif
// On Linux: the stand-in of bindings/swift/Stubs/UIKit.
#if canImport(UIKit)
    import UIKit
#endif

@testable import Pinhole

private let turnURI = ProcessInfo.processInfo.environment["PINHOLE_TEST_TURN"] ?? ""
private let turnUser = ProcessInfo.processInfo.environment["PINHOLE_TEST_TURN_USER"] ?? ""
private let turnPassword = ProcessInfo.processInfo.environment["PINHOLE_TEST_TURN_PASSWORD"] ?? ""
private let silentURI = ProcessInfo.processInfo.environment["PINHOLE_TEST_SILENT"] ?? ""

/// Polls `condition` every 20 ms for up to `seconds`.
func eventually(_ seconds: Double = 10, _ condition: () -> Bool) -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if condition() { return true }
        Thread.sleep(forTimeInterval: 0.02)
    }
    return condition()
}

/// A NAT-PMP gateway (RFC 6886) on `ip`:5351 of loopback that grants every request: the
/// external address 203.0.113.7 (documentation range; only written into answers), the
/// suggested port (or the internal one). It records the mapping requests it got.
final class FakeNatPmpGateway: @unchecked Sendable {
    struct Request: Equatable {
        let internalPort: UInt16
        let lifetime: UInt32
    }

    let ip: String
    private let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
    private let cond = NSCondition()
    private var requests: [Request] = []
    private var running = true
    private let ended = DispatchSemaphore(value: 0)
    private let started = Date()

    init(ip: String) throws {
        self.ip = ip
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var sa = sockaddrIn("\(ip):5351")
        let size = socklen_t(MemoryLayout<sockaddr_in>.size)
        guard withSockaddr(&sa, { bind(fd, $0, size) }) == 0 else {
            Glibc.close(fd)
            throw PinholeError.Io(message: "binding \(ip):5351: errno \(errno)")
        }
        var tv = timeval(tv_sec: 0, tv_usec: 100_000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        Thread.detachNewThread { [self] in serve() }
    }

    private func serve() {
        var buf = [UInt8](repeating: 0, count: 1100)
        while true {
            cond.lock()
            let go = running
            cond.unlock()
            if !go { break }
            var from = sockaddr_in()
            var len = socklen_t(MemoryLayout<sockaddr_in>.size)
            let n = withSockaddr(&from) { recvfrom(fd, &buf, buf.count, 0, $0, &len) }
            guard n >= 2, buf[0] == 0 else { continue }  // NAT-PMP is version 0
            let epoch = UInt32(1000 + Date().timeIntervalSince(started))
            var out: [UInt8] = [0, buf[1] | 128, 0, 0] + be(epoch)
            switch buf[1] {
            case 0:
                out += [203, 0, 113, 7]
            case 1, 2:
                guard n >= 12 else { continue }
                let inPort = UInt16(buf[4]) << 8 | UInt16(buf[5])
                let suggested = UInt16(buf[6]) << 8 | UInt16(buf[7])
                let lifetime = UInt32(buf[8]) << 24 | UInt32(buf[9]) << 16 | UInt32(buf[10]) << 8 | UInt32(buf[11])
                cond.lock()
                requests.append(Request(internalPort: inPort, lifetime: lifetime))
                cond.broadcast()
                cond.unlock()
                let external = lifetime == 0 ? 0 : (suggested != 0 ? suggested : inPort)
                out += be16(inPort) + be16(external) + be(lifetime)
            default:
                continue
            }
            _ = withSockaddr(&from) { sendto(fd, out, out.count, 0, $0, len) }
        }
        ended.signal()
    }

    private func be(_ v: UInt32) -> [UInt8] { [UInt8(v >> 24), UInt8(v >> 16 & 0xFF), UInt8(v >> 8 & 0xFF), UInt8(v & 0xFF)] }
    private func be16(_ v: UInt16) -> [UInt8] { [UInt8(v >> 8), UInt8(v & 0xFF)] }

    /// Waits up to `seconds` for a request that matches.
    func waitFor(_ seconds: Double = 10, _ matches: (Request) -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        cond.lock()
        defer { cond.unlock() }
        while !requests.contains(where: matches) {
            if !cond.wait(until: deadline) { return requests.contains(where: matches) }
        }
        return true
    }

    func stop() {
        cond.lock()
        let was = running
        running = false
        cond.unlock()
        if was {
            _ = ended.wait(timeout: .now() + 5)
            Glibc.close(fd)
        }
    }

    deinit { stop() }
}

/// A PathSource driven by the test.
final class FakePathSource: PathSource, @unchecked Sendable {
    private let lock = NSLock()
    private var handler: (@Sendable (PathSnapshot) -> Void)?
    private(set) var startCount = 0
    private(set) var cancelCount = 0

    func start(_ handler: @escaping @Sendable (PathSnapshot) -> Void) {
        lock.lock(); self.handler = handler; startCount += 1; lock.unlock()
    }

    func cancel() {
        lock.lock(); handler = nil; cancelCount += 1; lock.unlock()
    }

    /// Delivers a snapshot as the platform would (here: on the caller's thread).
    func emit(_ s: PathSnapshot) {
        lock.lock(); let h = handler; lock.unlock()
        h?(s)
    }
}

/// Interface addresses given by the test.
struct FakeInterfaces: InterfaceAddressProvider {
    var table: [String: [InterfaceAddress]]
    func addresses(ofInterface name: String) -> [InterfaceAddress] { table[name] ?? [] }
}

/// A NetworkChangeReceiver that records what it is told.
final class RecordingReceiver: NetworkChangeReceiver, @unchecked Sendable {
    private let lock = NSLock()
    private var got: [NetworkInfo] = []
    var infos: [NetworkInfo] { lock.lock(); defer { lock.unlock() }; return got }
    func networkChanged(info: NetworkInfo) throws { lock.lock(); got.append(info); lock.unlock() }
}

/// The descriptions a feed signalled.
final class Signalled: @unchecked Sendable {
    private let lock = NSLock()
    private var got: [String] = []
    var all: [String] { lock.lock(); defer { lock.unlock() }; return got }
    func add(_ d: String) { lock.lock(); got.append(d); lock.unlock() }
}

/// The `a=ice-ufrag` of a description.
func iceUfrag(_ description: String) -> String? {
    description.split(whereSeparator: \.isNewline)
        .first { $0.hasPrefix("a=ice-ufrag:") }
        .map { String($0.dropFirst("a=ice-ufrag:".count)) }
}

/// A listener that drops the events.
final class IgnoringPeerListener: PeerConnectionListener, @unchecked Sendable {
    func onEvent(event: PeerConnectionEvent) {}
}

/// A connection on 127.0.0.1 without servers or built-in monitor, for PathMonitor's feed.
let loopbackPeerConfig = PeerConnectionConfig(controlling: true, relayPolicy: .all, bind: "127.0.0.1:0",
                                              noNetworkMonitor: true)

private let wifi = PathSnapshot.Interface(name: "en0", type: .wifi)
private let cell = PathSnapshot.Interface(name: "pdp_ip0", type: .cellular)
private let vpn = PathSnapshot.Interface(name: "utun3", type: .other)
private let lo = PathSnapshot.Interface(name: "lo0", type: .loopback)
private let addresses = FakeInterfaces(table: [
    "en0": [InterfaceAddress(ip: "fe80::1c2b:3a4d:5e6f:7081", prefixLength: 64),
            InterfaceAddress(ip: "10.1.0.5", prefixLength: 16),
            InterfaceAddress(ip: "192.168.1.23", prefixLength: 24),
            InterfaceAddress(ip: "2001:db8:1::23", prefixLength: 64)],
    "pdp_ip0": [InterfaceAddress(ip: "169.254.7.7", prefixLength: 16),
                InterfaceAddress(ip: "2001:db8:2::5", prefixLength: 64)],
    "utun3": [InterfaceAddress(ip: "10.8.0.2", prefixLength: 24)],
    "lo0": [InterfaceAddress(ip: "127.0.0.1", prefixLength: 8)],
])

private func home(_ gateways: [PathSnapshot.Gateway] = [.init(ip: "192.168.1.1")],
                  expensive: Bool = false) -> PathSnapshot
{
    PathSnapshot(status: .satisfied, interfaces: [lo, wifi], gateways: gateways, isExpensive: expensive)
}

final class AdapterTests: XCTestCase {
    override class func setUp() {
        super.setUp()
        precondition(!turnURI.isEmpty && !silentURI.isEmpty, "PINHOLE_TEST_* must be set (bindings/test.sh)")
    }

    // MARK: AsyncSequence adapters

    func testNetcheckUpdatesArriveAndEnd() async throws {
        let server = try StunServer.loopback()
        defer { server.close() }
        let updates = try netcheckUpdates(config: NetcheckConfig(stunServers: [server.uri()], noPortmap: true))
        var progress = 0
        var report: NetcheckReport?
        for try await u in updates {
            XCTAssertNil(report, "nothing after the report")
            // The policy for pinhole's enums: new cases may come, so no exhaustive switch.
            if case .report(let r) = u { report = r } else { progress += 1 }
        }
        XCTAssertGreaterThan(progress, 0)
        let r = try XCTUnwrap(report)
        XCTAssertTrue(r.udp)
        XCTAssertTrue(eventually { updates.task.isFinished() })
    }

    func testNetcheckUpdatesThrowTheFailure() async throws {
        // A netcheck that fails: closing the task from outside makes it end with Cancelled.
        let updates = try netcheckUpdates(
            config: NetcheckConfig(stunServers: [silentURI], timeoutMs: 60000, noPortmap: true))
        updates.task.close()
        do {
            for try await _ in updates {}
            XCTFail("no error")
        } catch PinholeError.Cancelled {}
        XCTAssertThrowsError(try netcheckUpdates(config: NetcheckConfig(stunServers: ["http://example.org"])))
    }

    func testCancellingTheNetcheckConsumerClosesTheTask() async throws {
        // Nothing answers: the netcheck would run for its 60 s timeout.
        let updates = try netcheckUpdates(
            config: NetcheckConfig(stunServers: [silentURI], timeoutMs: 60000, noPortmap: true))
        let task = updates.task
        let consumer = Task { for try await _ in updates {} }
        try await Task.sleep(nanoseconds: 300_000_000)
        XCTAssertFalse(task.isFinished())
        let started = Date()
        consumer.cancel()
        _ = await consumer.result
        XCTAssertTrue(eventually(10) { task.isFinished() }, "the netcheck was closed")
        XCTAssertLessThan(Date().timeIntervalSince(started), 10)
    }

    func testPortMappingEventsAndCancellationDeletesTheMapping() async throws {
        let gw = try FakeNatPmpGateway(ip: "127.0.0.61")
        defer { gw.stop() }
        let events = try mapPortEvents(config: PortMappingConfig(
            internalPort: 40061, protocol: .udp, gateway: gw.ip, localIp: "127.0.0.1",
            lifetimeSecs: 60, method: .natPmp))
        let mapper = events.mapper
        let mapped = DispatchSemaphore(value: 0)
        let consumer = Task { () -> [PortMappingEvent] in
            var seen: [PortMappingEvent] = []
            for await e in events {
                seen.append(e)
                if case .mapped = e { mapped.signal() }
            }
            return seen
        }
        XCTAssertEqual(mapped.wait(timeout: .now() + 20), .success, "Mapped")
        XCTAssertEqual(mapper.current()?.external, "203.0.113.7:40061")
        XCTAssertFalse(mapper.isClosed())
        XCTAssertFalse(gw.waitFor(0.2) { $0.lifetime == 0 })

        consumer.cancel()
        let seen = await consumer.value
        guard case .mapped? = seen.first else { return XCTFail("\(seen)") }
        // The mapper was closed: it deleted the mapping at the gateway (lifetime 0).
        XCTAssertTrue(gw.waitFor(10) { $0 == .init(internalPort: 40061, lifetime: 0) }, "deleted at the gateway")
        XCTAssertTrue(eventually { mapper.isClosed() })
    }

    func testPortMappingEventsEndAfterTheLastEvent() async throws {
        let gw = try FakeNatPmpGateway(ip: "127.0.0.61")
        defer { gw.stop() }
        let events = try mapPortEvents(config: PortMappingConfig(
            internalPort: 40062, protocol: .udp, gateway: gw.ip, localIp: "127.0.0.1",
            lifetimeSecs: 60, method: .natPmp))
        var seen: [PortMappingEvent] = []
        for await e in events {
            seen.append(e)
            if case .mapped = e { events.mapper.close() }
        }
        // The loop ended by itself, after Released.
        guard case .released? = seen.last else { return XCTFail("\(seen)") }
        XCTAssertTrue(gw.waitFor(10) { $0 == .init(internalPort: 40062, lifetime: 0) })
    }

    func testReleasingAnUniteratedSequenceClosesTheMapper() async throws {
        let gw = try FakeNatPmpGateway(ip: "127.0.0.61")
        defer { gw.stop() }
        var events: PortMappingEvents? = try mapPortEvents(config: PortMappingConfig(
            internalPort: 40063, protocol: .udp, gateway: gw.ip, localIp: "127.0.0.1",
            lifetimeSecs: 60, method: .natPmp))
        XCTAssertTrue(gw.waitFor(10) { $0 == .init(internalPort: 40063, lifetime: 60) })
        XCTAssertTrue(eventually { events?.mapper.current() != nil })
        weak var mapper = events?.mapper
        events = nil
        XCTAssertNil(events)
        XCTAssertNil(mapper, "nothing on the Swift side keeps the mapper")
        XCTAssertTrue(gw.waitFor(10) { $0 == .init(internalPort: 40063, lifetime: 0) }, "deleted at the gateway")
    }

    func testTurnUpdatesAndCancellationDeallocates() async throws {
        let updates = try await allocateTurnUpdates(
            config: TurnConfig(uri: turnURI, username: turnUser, password: turnPassword))
        let alloc = updates.allocation
        let relayed = alloc.relayedAddress()
        let peer = PeerSocket()
        try await alloc.createPermission(peerIp: "127.0.0.1")
        let gotData = DispatchSemaphore(value: 0)
        let consumer = Task { () -> [TurnUpdate] in
            var seen: [TurnUpdate] = []
            for await u in updates {
                seen.append(u)
                if case .data = u { gotData.signal() }
            }
            return seen
        }
        peer.send("to the stream", to: relayed)
        XCTAssertEqual(gotData.wait(timeout: .now() + 10), .success)
        consumer.cancel()
        let seen = await consumer.value
        guard case .event(.allocated(let r, _, _))? = seen.first else { return XCTFail("\(seen)") }
        XCTAssertEqual(r, [relayed])
        XCTAssertTrue(seen.contains { if case .event(.permissionCreated) = $0 { return true }; return false })
        let data = seen.compactMap { u -> String? in
            if case .data(let p, let d) = u, p == peer.address { return String(decoding: d, as: UTF8.self) }
            return nil
        }
        XCTAssertEqual(data, ["to the stream"])
        // Cancelling the consumer closed the allocation: the server freed the relayed port.
        XCTAssertTrue(eventually { alloc.isClosed() })
        XCTAssertTrue(relayReleased(relayed))
    }

    func testReleasingAnUniteratedTurnSequenceDeallocates() async throws {
        var updates: TurnUpdates? = try await allocateTurnUpdates(
            config: TurnConfig(uri: turnURI, username: turnUser, password: turnPassword))
        let relayed = updates!.allocation.relayedAddress()
        XCTAssertTrue(relayed.hasPrefix("127.0.0.1:"), relayed)
        updates = nil
        XCTAssertNil(updates)
        XCTAssertTrue(relayReleased(relayed))
    }

    func testTurnUpdatesFailure() async {
        do {
            _ = try await allocateTurnUpdates(
                config: TurnConfig(uri: turnURI, username: turnUser, password: "wrong"))
            XCTFail("no error")
        } catch PinholeError.Authentication {
        } catch {
            XCTFail("\(error)")
        }
    }

    // MARK: close()

    /// close() on every long-lived object: at once (it never blocks), idempotent, and the
    /// object ends; releasing the last reference ends one too.
    func testCloseIsTheOneVerb() async throws {
        let gw = try FakeNatPmpGateway(ip: "127.0.0.61")
        defer { gw.stop() }
        let netcheck = try startNetcheck(
            config: NetcheckConfig(stunServers: [silentURI], timeoutMs: 60000, noPortmap: true),
            listener: Listener())
        let mapper = try mapPort(
            config: PortMappingConfig(internalPort: 40065, protocol: .udp, gateway: gw.ip,
                                      localIp: "127.0.0.1", lifetimeSecs: 60, method: .natPmp),
            listener: MappingListener())
        XCTAssertTrue(eventually { mapper.current() != nil })
        let alloc = try await allocateTurn(
            config: TurnConfig(uri: turnURI, username: turnUser, password: turnPassword), listener: TurnEvents())
        let relayed = alloc.relayedAddress()
        let server = try StunServer.loopback()
        let monitor = PathMonitor(source: FakePathSource(), addresses: addresses)
        monitor.start()
        let objects: [PinholeClosable] = [netcheck, mapper, alloc, server, monitor]
        let started = Date()
        for o in objects { o.close(); o.close() }
        XCTAssertLessThan(Date().timeIntervalSince(started), 0.5, "close() does not block")
        XCTAssertTrue(eventually { netcheck.isFinished() })
        XCTAssertTrue(eventually { mapper.isClosed() })
        XCTAssertTrue(gw.waitFor(10) { $0 == .init(internalPort: 40065, lifetime: 0) })
        XCTAssertTrue(eventually { alloc.isClosed() })
        XCTAssertTrue(relayReleased(relayed))
        XCTAssertTrue(server.isClosed())

        // Releasing the last reference: a netcheck is cancelled...
        let listener = Listener()
        var running: NetcheckTask? = try startNetcheck(
            config: NetcheckConfig(stunServers: [silentURI], timeoutMs: 60000, noPortmap: true),
            listener: listener)
        XCTAssertFalse(running!.isFinished())
        running = nil
        XCTAssertNil(running)
        XCTAssertEqual(listener.done.wait(timeout: .now() + 10), .success)
        guard case .Cancelled? = listener.error else { return XCTFail("\(String(describing: listener.error))") }
        // ...and a server's port is free again.
        var other: StunServer? = try StunServer(primary: "127.0.0.1:0", alternate: nil)
        let address = other!.addresses()[0]
        other = nil
        XCTAssertNil(other)
        XCTAssertTrue(eventually(5) {
            let s = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
            defer { Glibc.close(s) }
            var sa = sockaddrIn(address)
            return withSockaddr(&sa) { bind(s, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } == 0
        }, "the server's port was freed")
    }

    // MARK: PathMonitor logic

    func testPathLogicChoosesTheGatewayAndLocalAddress() {
        func decide(_ s: PathSnapshot) -> NetworkState { PathLogic.decide(s, addresses: addresses) }

        // Wi-Fi with IPv4: the gateway, and the local address in its subnet (not the
        // first IPv4 address of the interface, 10.1.0.5/16).
        let s = decide(home())
        XCTAssertTrue(s.isSatisfied)
        XCTAssertEqual(s.interface, wifi, "loopback skipped")
        XCTAssertEqual(s.gateway, "192.168.1.1")
        XCTAssertEqual(s.localIp, "192.168.1.23")
        XCTAssertNil(s.noGatewayReason)
        XCTAssertEqual(s.networkInfo, NetworkInfo(gateway: "192.168.1.1", localIp: "192.168.1.23"))

        // IPv4 before IPv6, whatever the order of the gateways.
        let both = decide(home([.init(ip: "2001:db8:1::1"), .init(ip: "fe80::1", interface: "en0"),
                                .init(ip: "192.168.1.1")]))
        XCTAssertEqual(both.gateway, "192.168.1.1")

        // IPv6 only: a routable gateway with a routable local address of its prefix...
        let v6 = decide(home([.init(ip: "fe80::1", interface: "en0"), .init(ip: "2001:db8:1::1")]))
        XCTAssertEqual(v6.gateway, "2001:db8:1::1")
        XCTAssertEqual(v6.localIp, "2001:db8:1::23")
        // ...but no link-local one (it needs a zone the mapper cannot be given).
        let ll = decide(home([.init(ip: "fe80::1%en0", interface: "en0")]))
        XCTAssertNil(ll.gateway)
        XCTAssertNil(ll.localIp)
        XCTAssertTrue(ll.noGatewayReason?.contains("link-local") ?? false, "\(String(describing: ll.noGatewayReason))")
        XCTAssertEqual(ll.networkInfo, NetworkInfo(gateway: nil, localIp: nil))

        // A gateway outside every local subnet: the interface's first usable address.
        XCTAssertEqual(decide(home([.init(ip: "172.16.0.1")])).localIp, "10.1.0.5")
        // But a gateway in a local subnet wins over one listed before it (NWPath lists
        // the gateways of every available interface, often without their interface).
        let listed = decide(home([.init(ip: "172.16.0.1"), .init(ip: "192.168.1.1")]))
        XCTAssertEqual(listed.gateway, "192.168.1.1")
        XCTAssertEqual(listed.localIp, "192.168.1.23")

        // Unsatisfied, or waiting for a connection: no gateway.
        for status in [PathSnapshot.Status.unsatisfied, .requiresConnection] {
            let down = decide(PathSnapshot(status: status, interfaces: [wifi], gateways: [.init(ip: "192.168.1.1")]))
            XCTAssertFalse(down.isSatisfied)
            XCTAssertNil(down.gateway)
            XCTAssertNil(down.interface)
            XCTAssertNotNil(down.noGatewayReason)
        }

        // A VPN preferred: no port mapping, even with Wi-Fi's gateway in the list.
        let tunnel = decide(PathSnapshot(status: .satisfied, interfaces: [vpn, wifi],
                                         gateways: [.init(ip: "10.8.0.1"), .init(ip: "192.168.1.1")]))
        XCTAssertEqual(tunnel.interface, vpn)
        XCTAssertNil(tunnel.gateway)
        XCTAssertTrue(tunnel.noGatewayReason?.contains("VPN") ?? false)

        // Cellular: its gateway is used only with a usable local address (not link-local
        // 169.254/16); the IPv6 one here is link-local too.
        let cellular = decide(PathSnapshot(status: .satisfied, interfaces: [cell],
                                           gateways: [.init(ip: "169.254.0.1"), .init(ip: "fe80::2", interface: "pdp_ip0")],
                                           isExpensive: true))
        XCTAssertEqual(cellular.interface, cell)
        XCTAssertNil(cellular.gateway)
        XCTAssertTrue(cellular.isExpensive)

        // Gateways of another interface are not this one's.
        XCTAssertNil(decide(home([.init(ip: "2001:db8:2::1", interface: "pdp_ip0")])).gateway)
        // No interface but loopback, no gateway at all.
        XCTAssertNil(decide(PathSnapshot(status: .satisfied, interfaces: [lo])).interface)
        XCTAssertEqual(decide(home([])).noGatewayReason, "no gateway on en0")
        // An unparsable gateway is ignored.
        XCTAssertNil(decide(home([.init(ip: "router.local")])).gateway)
    }

    func testPathMonitorDedupsAndFeedsMappersOnlyTheirChanges() async throws {
        let source = FakePathSource()
        let monitor = PathMonitor(source: source, addresses: addresses)
        XCTAssertNil(monitor.state)
        monitor.start()
        monitor.start()  // idempotent
        XCTAssertEqual(source.startCount, 1)

        var iterator = monitor.states().makeAsyncIterator()
        let receiver = RecordingReceiver()
        // Fed before the first path: told when it arrives.
        monitor.feed(receiver, configuredWith: PortMappingConfig(internalPort: 1, protocol: .udp))

        source.emit(home())
        let first = await iterator.next()
        XCTAssertEqual(first?.gateway, "192.168.1.1")
        XCTAssertEqual(monitor.state, first)
        XCTAssertEqual(receiver.infos, [NetworkInfo(gateway: "192.168.1.1", localIp: "192.168.1.23")])

        // The same path again: nothing. Expensive now: a new state, but the mapper's
        // gateway is the same, so it is not told.
        source.emit(home())
        source.emit(home(expensive: true))
        let second = await iterator.next()
        XCTAssertEqual(second?.isExpensive, true)
        XCTAssertEqual(receiver.infos.count, 1)

        // Another receiver, started with the current gateway: not told; one started with
        // another: told at once.
        let current = RecordingReceiver()
        monitor.feed(current, configuredWith: second!.applied(to: PortMappingConfig(internalPort: 2, protocol: .udp)))
        XCTAssertEqual(current.infos, [])
        let stale = RecordingReceiver()
        monitor.feed(stale, configuredWith: PortMappingConfig(internalPort: 3, protocol: .udp, gateway: "10.0.0.1"))
        XCTAssertEqual(stale.infos, [second!.networkInfo])

        // The path goes down, then comes back on a VPN: both told "no gateway" once.
        source.emit(PathSnapshot(status: .unsatisfied))
        let down = await iterator.next()
        XCTAssertEqual(down?.isSatisfied, false)
        source.emit(PathSnapshot(status: .satisfied, interfaces: [vpn, wifi], gateways: [.init(ip: "192.168.1.1")]))
        let tunnel = await iterator.next()
        XCTAssertEqual(tunnel?.interface, vpn)
        XCTAssertEqual(receiver.infos.count, 2)
        XCTAssertEqual(receiver.infos.last, NetworkInfo(gateway: nil, localIp: nil))
        XCTAssertEqual(current.infos, [NetworkInfo(gateway: nil, localIp: nil)])

        // Receivers are held weakly.
        weak var gone: RecordingReceiver?
        do {
            let r = RecordingReceiver()
            gone = r
            monitor.feed(r, configuredWith: PortMappingConfig(internalPort: 4, protocol: .udp))
        }
        XCTAssertNil(gone)

        // close(): the source is cancelled, the streams end, later paths are ignored.
        monitor.close()
        monitor.close()
        XCTAssertEqual(source.cancelCount, 1)
        let end = await iterator.next()
        XCTAssertNil(end)
        source.emit(home())
        XCTAssertEqual(receiver.infos.count, 2)
        var later = monitor.states().makeAsyncIterator()
        let afterClose = await later.next()
        XCTAssertNil(afterClose)
    }

    /// feed(_:signal:) restarts a real PeerConnection on each new network and signals its
    /// new description; not for the current state, a cost change or an unusable path; the
    /// connection's close ends its feed.
    func testPathMonitorRestartsAPeerConnectionOnANewNetwork() async throws {
        let source = FakePathSource()
        let monitor = PathMonitor(source: source, addresses: addresses)
        defer { monitor.close() }
        monitor.start()
        source.emit(home())
        let connection = try await PeerConnection.create(config: loopbackPeerConfig, listener: IgnoringPeerListener())
        defer { connection.close() }
        let initial = try XCTUnwrap(iceUfrag(connection.localDescription()))
        let signalled = Signalled()
        // Made on the current network: fed from now on, not restarted for it.
        monitor.feed(connection) { signalled.add($0) }
        XCTAssertEqual(monitor.fedPeerCount, 1)
        XCTAssertEqual(signalled.all, [])

        // The same path, then an expensive one: nothing a connection cares about.
        source.emit(home())
        source.emit(home(expensive: true))
        XCTAssertEqual(signalled.all, [])
        XCTAssertEqual(iceUfrag(connection.localDescription()), initial)

        // Another interface: networkChanged ran (new credentials), its description
        // signalled (the fake source delivers on this thread: done when emit returns).
        source.emit(PathSnapshot(status: .satisfied, interfaces: [cell], gateways: [.init(ip: "2001:db8:2::1")]))
        XCTAssertEqual(signalled.all.count, 1)
        let moved = try XCTUnwrap(signalled.all.first.flatMap(iceUfrag))
        XCTAssertNotEqual(moved, initial)
        XCTAssertEqual(iceUfrag(connection.localDescription()), moved)
        XCTAssertTrue(signalled.all[0].contains("a=ice-pwd:"), signalled.all[0])

        // No path: nothing to restart on. Back (the same network): restarted.
        source.emit(PathSnapshot(status: .unsatisfied))
        XCTAssertEqual(signalled.all.count, 1)
        source.emit(PathSnapshot(status: .satisfied, interfaces: [cell], gateways: [.init(ip: "2001:db8:2::1")]))
        XCTAssertEqual(signalled.all.count, 2)
        let back = try XCTUnwrap(signalled.all.last.flatMap(iceUfrag))
        XCTAssertNotEqual(back, moved)

        // Another gateway on the same interface: restarted.
        source.emit(home())
        source.emit(home([.init(ip: "192.168.1.254")]))
        XCTAssertEqual(signalled.all.count, 4)
        XCTAssertEqual(Set(signalled.all.compactMap(iceUfrag)).count, 4, "\(signalled.all)")

        // Closed (and ended): networkChanged says NotAvailable, the feed ends; nothing
        // signalled.
        await connection.closeAndWait()
        source.emit(PathSnapshot(status: .satisfied, interfaces: [cell], gateways: [.init(ip: "2001:db8:2::1")]))
        XCTAssertEqual(signalled.all.count, 4)
        XCTAssertEqual(monitor.fedPeerCount, 0)
    }

    /// The convenience: a connection started by the monitor (fed before the first path:
    /// that path does not restart it), held weakly.
    func testPathMonitorPeerConnectionEventsAreFed() async throws {
        let source = FakePathSource()
        let monitor = PathMonitor(source: source, addresses: addresses)
        defer { monitor.close() }
        monitor.start()
        let signalled = Signalled()
        var config = loopbackPeerConfig
        config.noNetworkMonitor = false  // set by the monitor
        var events: PeerConnectionEvents? = try await monitor.peerConnectionEvents(config: config) {
            signalled.add($0)
        }
        XCTAssertEqual(monitor.fedPeerCount, 1)
        source.emit(home())
        XCTAssertEqual(signalled.all, [], "the first path is the one the connection was made on")
        source.emit(PathSnapshot(status: .satisfied, interfaces: [cell], gateways: [.init(ip: "2001:db8:2::1")]))
        XCTAssertEqual(signalled.all.count, 1)
        XCTAssertEqual(signalled.all.first.flatMap(iceUfrag), events.flatMap { iceUfrag($0.connection.localDescription()) })

        // Released (never iterated): the connection goes, and with it its feed.
        weak var gone = events?.connection
        events = nil
        XCTAssertNil(gone)
        XCTAssertEqual(monitor.fedPeerCount, 0)
        source.emit(home())
        XCTAssertEqual(signalled.all.count, 1)
    }

    func testReleasingThePathMonitorCancelsTheSource() {
        let source = FakePathSource()
        var monitor: PathMonitor? = PathMonitor(source: source, addresses: addresses)
        monitor!.start()
        monitor = nil
        XCTAssertNil(monitor)
        XCTAssertEqual(source.cancelCount, 1)
    }

    func testSystemInterfacesReadsLoopback() {
        let lo = SystemInterfaces().addresses(ofInterface: "lo")
        XCTAssertTrue(lo.contains(InterfaceAddress(ip: "127.0.0.1", prefixLength: 8)), "\(lo)")
        XCTAssertEqual(SystemInterfaces().addresses(ofInterface: "no-such-interface"), [])
        XCTAssertEqual(IPAddress("fe80::1%en0")?.description, "fe80::1")
        XCTAssertEqual(IPAddress(bytes: [192, 168, 1, 1])?.description, "192.168.1.1")
        XCTAssertTrue(IPAddress("192.168.1.1")!.inSubnet(of: IPAddress("192.168.1.200")!, prefixLength: 24))
        XCTAssertFalse(IPAddress("192.168.1.1")!.inSubnet(of: IPAddress("192.168.2.1")!, prefixLength: 24))
        XCTAssertTrue(IPAddress("10.1.2.3")!.inSubnet(of: IPAddress("10.1.200.1")!, prefixLength: 17) == false)
        XCTAssertTrue(IPAddress("2001:db8:1::1")!.inSubnet(of: IPAddress("2001:db8:1::23")!, prefixLength: 64))
    }

    #if canImport(Network)
        /// NWPathSource's conversion of an NWPath (here: of the stand-in's, see
        /// bindings/swift/Stubs/Network) and PathMonitor() on NWPathMonitor.
        func testNWPathSourceConvertsPaths() async throws {
            let en0 = NWInterface(stubName: "en0", type: .wifi)
            let utun = NWInterface(stubName: "utun2", type: .other)
            let v4 = try XCTUnwrap(IPv4Address(Data([192, 168, 1, 1])))
            let v6 = try XCTUnwrap(IPv6Address(Data([0xFE, 0x80] + [UInt8](repeating: 0, count: 13) + [1]), en0))
            let port = try XCTUnwrap(NWEndpoint.Port(rawValue: 0))
            let path = NWPath(stubStatus: .satisfied, interfaces: [utun, en0],
                              gateways: [.hostPort(host: .ipv4(v4), port: port),
                                         .hostPort(host: .ipv6(v6), port: port),
                                         .hostPort(host: .name("router.local", nil), port: port),
                                         .unix(path: "/x")],
                              isExpensive: true, isConstrained: true)
            XCTAssertEqual(PathSnapshot(path), PathSnapshot(
                status: .satisfied,
                interfaces: [.init(name: "utun2", type: .other), .init(name: "en0", type: .wifi)],
                gateways: [.init(ip: "192.168.1.1"), .init(ip: "fe80::1", interface: "en0")],
                isExpensive: true, isConstrained: true))
            for (status, want) in [(NWPath.Status.unsatisfied, PathSnapshot.Status.unsatisfied),
                                   (.requiresConnection, .requiresConnection)] {
                XCTAssertEqual(PathSnapshot(NWPath(stubStatus: status, interfaces: [], gateways: [])).status, want)
            }

            // PathMonitor() watches NWPathMonitor; close() cancels it.
            NWPathMonitor.stubPath = NWPath(stubStatus: .satisfied,
                                            interfaces: [NWInterface(stubName: "lo", type: .wiredEthernet)],
                                            gateways: [.hostPort(host: .ipv4(v4), port: port)])
            let cancelled = NWPathMonitor.stubCancelled
            let monitor = PathMonitor(queue: DispatchQueue(label: "test"))
            monitor.start()
            var states = monitor.states().makeAsyncIterator()
            let first = await states.next()
            XCTAssertEqual(first?.gateway, "192.168.1.1")
            XCTAssertEqual(first?.interface?.name, "lo")
            // Read with getifaddrs: lo's address (none in the gateway's subnet: the first).
            XCTAssertEqual(first?.localIp, "127.0.0.1")
            monitor.close()
            XCTAssertEqual(NWPathMonitor.stubCancelled, cancelled + 1)
        }
    #endif

    /// The whole chain on loopback: a PathMonitor's path names a gateway, the mapper it
    /// starts maps there; the path moves to another gateway, and the mapper deletes the
    /// mapping at the first and maps at the second.
    func testPathMonitorMovesARealMapperToTheNewGateway() async throws {
        let a = try FakeNatPmpGateway(ip: "127.0.0.61")
        let b = try FakeNatPmpGateway(ip: "127.0.0.62")
        defer { a.stop(); b.stop() }
        let loopback = FakeInterfaces(table: ["lo": [InterfaceAddress(ip: "127.0.0.1", prefixLength: 8)]])
        let source = FakePathSource()
        let monitor = PathMonitor(source: source, addresses: loopback)
        monitor.start()
        // Presented as wired Ethernet: the logic skips loopback interfaces.
        let lo = PathSnapshot.Interface(name: "lo", type: .wiredEthernet)
        source.emit(PathSnapshot(status: .satisfied, interfaces: [lo], gateways: [.init(ip: a.ip)]))
        XCTAssertEqual(monitor.state?.gateway, a.ip)

        let events = try monitor.mapPortEvents(config: PortMappingConfig(
            internalPort: 40064, protocol: .udp, lifetimeSecs: 60, method: .natPmp))
        var iterator = events.makeAsyncIterator()
        guard case .mapped? = await iterator.next() else { return XCTFail("no Mapped") }
        XCTAssertTrue(a.waitFor(5) { $0 == .init(internalPort: 40064, lifetime: 60) })

        source.emit(PathSnapshot(status: .satisfied, interfaces: [lo], gateways: [.init(ip: b.ip)]))
        guard case .lost(let reason)? = await iterator.next() else { return XCTFail("no Lost") }
        XCTAssertTrue(reason.contains(b.ip), reason)
        guard case .mapped? = await iterator.next() else { return XCTFail("no Mapped at the new gateway") }
        XCTAssertTrue(a.waitFor(5) { $0 == .init(internalPort: 40064, lifetime: 0) }, "deleted at the old gateway")
        XCTAssertTrue(b.waitFor(5) { $0 == .init(internalPort: 40064, lifetime: 60) }, "mapped at the new one")

        events.mapper.close()
        while let e = await iterator.next() {
            if case .released = e { break }
        }
        XCTAssertTrue(b.waitFor(5) { $0 == .init(internalPort: 40064, lifetime: 0) })
        monitor.close()
    }
}

/// A lifecycle source driven by the test: `move(true)` to the foreground, `move(false)` to
/// the background.
final class FakeAppSource: AppLifecycleSource, @unchecked Sendable {
    let isForeground: Bool
    private let lock = NSLock()
    private var handler: (@Sendable (Bool) -> Void)?
    private(set) var cancels = 0

    init(foreground: Bool) { isForeground = foreground }

    func start(_ handler: @escaping @Sendable (Bool) -> Void) {
        lock.lock()
        self.handler = handler
        lock.unlock()
    }

    func cancel() {
        lock.lock()
        handler = nil
        cancels += 1
        lock.unlock()
    }

    var started: Bool { lock.lock(); defer { lock.unlock() }; return handler != nil }

    func move(_ foreground: Bool) {
        lock.lock()
        let h = handler
        lock.unlock()
        h?(foreground)
    }
}

final class AppLifecycleTests: XCTestCase {
    /// The mapping: the source's initial state, then each move; `suspendConnections()` until
    /// the next move. Feeding real PeerConnections (127.0.0.1, no servers): the app's policy
    /// at once and at each move; a closed connection's feed ends; close() ends them all and
    /// cancels the source.
    func testAppLifecycleFeedsThePolicyToConnections() async throws {
        let inFront = AppLifecycle(source: FakeAppSource(foreground: true))
        XCTAssertEqual(inFront.policy, .foreground)
        inFront.close()
        let source = FakeAppSource(foreground: false)
        let life = AppLifecycle(source: source)
        XCTAssertTrue(source.started)
        XCTAssertEqual(life.policy, .background, "not in front when it began")

        let one = try await PeerConnection.create(config: loopbackPeerConfig, listener: IgnoringPeerListener())
        var config = loopbackPeerConfig
        config.keepalivePolicy = .suspended
        let two = try await PeerConnection.create(config: config, listener: IgnoringPeerListener())
        XCTAssertEqual(two.keepalivePolicy(), .suspended, "the config's policy")
        XCTAssertEqual(one.keepalivePolicy(), .foreground, "the default")
        life.feed(one)
        life.feed(two)
        XCTAssertEqual([one.keepalivePolicy(), two.keepalivePolicy()], [.background, .background], "set at once")
        XCTAssertEqual(life.fedCount, 2)

        source.move(true)
        XCTAssertEqual(life.policy, .foreground)
        XCTAssertEqual([one.keepalivePolicy(), two.keepalivePolicy()], [.foreground, .foreground])
        source.move(true)  // a repeat changes nothing
        source.move(false)
        XCTAssertEqual([one.keepalivePolicy(), two.keepalivePolicy()], [.background, .background])
        life.suspendConnections()
        XCTAssertEqual(life.policy, .suspended)
        XCTAssertEqual([one.keepalivePolicy(), two.keepalivePolicy()], [.suspended, .suspended])
        source.move(true)
        XCTAssertEqual([one.keepalivePolicy(), two.keepalivePolicy()], [.foreground, .foreground], "resumed")

        // A closed connection: its feed ends at the next move.
        two.close()
        XCTAssertTrue(eventually(10) { two.isClosed() })
        source.move(false)
        XCTAssertEqual(one.keepalivePolicy(), .background)
        XCTAssertEqual(life.fedCount, 1, "the closed connection's feed ended")

        // A released connection: held weakly.
        var three: PeerConnection? = try await PeerConnection.create(
            config: loopbackPeerConfig, listener: IgnoringPeerListener())
        life.feed(three!)
        XCTAssertEqual(three?.keepalivePolicy(), .background)
        XCTAssertEqual(life.fedCount, 2)
        three = nil
        XCTAssertEqual(life.fedCount, 1, "a released connection is not kept")

        life.close()
        XCTAssertEqual(source.cancels, 1)
        XCTAssertFalse(source.started)
        life.close()  // idempotent
        XCTAssertEqual(source.cancels, 1)
        life.feed(one)
        life.suspendConnections()
        XCTAssertEqual(one.keepalivePolicy(), .background, "a closed adapter feeds nothing")
        let closable: PinholeClosable = life
        closable.close()
        await one.closeAndWait()
    }

    #if canImport(UIKit)
        /// UIApplicationLifecycleSource (here over the UIKit stand-in of
        /// bindings/swift/Stubs/UIKit): UIApplication's state at the start, then its
        /// notifications, posted on a center of the test's own, as moves; none after cancel.
        func testUIApplicationNotificationsAreMoves() {
            XCTAssertTrue(Thread.isMainThread, "XCTest runs a synchronous test on the main thread")
            MainActor.assumeIsolated { UIApplication.shared.stubState = .background }
            let center = NotificationCenter()
            let life = AppLifecycle(center: center)
            XCTAssertEqual(life.policy, .background, "applicationState .background")
            center.post(name: UIApplication.willEnterForegroundNotification, object: nil)
            XCTAssertEqual(life.policy, .foreground)
            center.post(name: UIApplication.didEnterBackgroundNotification, object: nil)
            XCTAssertEqual(life.policy, .background)
            life.suspendConnections()
            center.post(name: UIApplication.willEnterForegroundNotification, object: nil)
            XCTAssertEqual(life.policy, .foreground)
            life.close()
            center.post(name: UIApplication.didEnterBackgroundNotification, object: nil)
            XCTAssertEqual(life.policy, .foreground, "nothing after close()")
            MainActor.assumeIsolated { UIApplication.shared.stubState = .inactive }
            let launching = AppLifecycle(source: UIApplicationLifecycleSource(center: center))
            XCTAssertEqual(launching.policy, .foreground, "applicationState .inactive: in front")
            launching.close()
            MainActor.assumeIsolated { UIApplication.shared.stubState = .active }
        }
    #endif
}

/// The embedded server (only in a library built with the feature `server`, as the tests'
/// is) ends with close() too.
extension StunServer: PinholeClosable {}
