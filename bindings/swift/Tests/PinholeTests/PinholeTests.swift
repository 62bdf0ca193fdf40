// The Swift bindings' tests (Linux, XCTest), the same ground as the Kotlin test: every
// exported item, callbacks on pinhole's Rust threads, async calls and their cancellation,
// errors, a netcheck against `pinhole serve` on loopback (PINHOLE_TEST_STUN) and against
// the embedded server, port mapping at 127.0.0.9, where no gateway listens (also verified
// through `pinhole serve`), and TURN
// allocations on `pinhole serve --turn` (PINHOLE_TEST_TURN*) relaying to and from a UDP
// socket of the test's own on 127.0.0.1.
import Foundation
import XCTest

#if canImport(Glibc)
    import Glibc
#endif

@testable import Pinhole

/// `pinhole serve`'s URI and a loopback URI where nothing answers, from bindings/test.sh.
private let serveURI = ProcessInfo.processInfo.environment["PINHOLE_TEST_STUN"] ?? ""
private let silentURI = ProcessInfo.processInfo.environment["PINHOLE_TEST_SILENT"] ?? ""
/// `pinhole serve --turn`'s URI and credentials, from bindings/test.sh.
private let turnURI = ProcessInfo.processInfo.environment["PINHOLE_TEST_TURN"] ?? ""
private let turnUser = ProcessInfo.processInfo.environment["PINHOLE_TEST_TURN_USER"] ?? ""
private let turnPassword = ProcessInfo.processInfo.environment["PINHOLE_TEST_TURN_PASSWORD"] ?? ""
private let turnSecret = ProcessInfo.processInfo.environment["PINHOLE_TEST_TURN_SECRET"] ?? ""

final class CountingLogger: PinholeLogger, @unchecked Sendable {
    private let lock = NSLock()
    private var count = 0
    var records: Int { lock.lock(); defer { lock.unlock() }; return count }

    func log(level: LogLevel, target: String, message: String) {
        if !target.isEmpty && level != .off {
            lock.lock(); count += 1; lock.unlock()
        }
    }
}

final class Listener: NetcheckListener, @unchecked Sendable {
    let done = DispatchSemaphore(value: 0)
    private let lock = NSLock()
    private(set) var progress: [NetcheckProgress] = []
    private(set) var report: NetcheckReport?
    private(set) var error: PinholeError?
    private(set) var onMainThread = false
    private(set) var threads = Set<String>()

    private func seen() {
        if Thread.isMainThread { onMainThread = true }
        threads.insert("\(pthread_self())")
    }

    func onProgress(progress: NetcheckProgress) {
        lock.lock(); seen(); self.progress.append(progress); lock.unlock()
    }

    func onReport(report: NetcheckReport) {
        lock.lock(); seen(); self.report = report; lock.unlock()
        done.signal()
    }

    func onError(error: PinholeError) {
        lock.lock(); seen(); self.error = error; lock.unlock()
        done.signal()
    }
}

final class MappingListener: PortMappingListener, @unchecked Sendable {
    let stopped = DispatchSemaphore(value: 0)
    private let lock = NSLock()
    private(set) var events: [PortMappingEvent] = []
    private(set) var onMainThread = false

    func onEvent(event: PortMappingEvent) {
        lock.lock()
        if Thread.isMainThread { onMainThread = true }
        events.append(event)
        lock.unlock()
        switch event {
        case .unavailable, .released: stopped.signal()
        default: break
        }
    }
}

final class TurnEvents: TurnListener, @unchecked Sendable {
    private let cond = NSCondition()
    private var events: [TurnEvent] = []
    private var received: [(String, Data)] = []
    private(set) var onMainThread = false

    func onEvent(event: TurnEvent) {
        cond.lock()
        if Thread.isMainThread { onMainThread = true }
        events.append(event)
        cond.broadcast()
        cond.unlock()
    }

    func onData(peer: String, data: Data) {
        cond.lock()
        if Thread.isMainThread { onMainThread = true }
        received.append((peer, data))
        cond.broadcast()
        cond.unlock()
    }

    /// The first event that matches, waiting up to 10 s for it.
    func first(_ matches: (TurnEvent) -> Bool) -> TurnEvent? {
        let deadline = Date().addingTimeInterval(10)
        cond.lock()
        defer { cond.unlock() }
        while true {
            if let e = events.first(where: matches) { return e }
            if !cond.wait(until: deadline) { return events.first(where: matches) }
        }
    }

    /// The `n`th datagram from a peer (1-based), waiting up to 10 s for it.
    func datagram(_ n: Int) -> (String, Data)? {
        let deadline = Date().addingTimeInterval(10)
        cond.lock()
        defer { cond.unlock() }
        while received.count < n {
            if !cond.wait(until: deadline) { break }
        }
        return received.count >= n ? received[n - 1] : nil
    }
}

/// An IPv4 `IP:port` as a sockaddr_in.
func sockaddrIn(_ text: String) -> sockaddr_in {
    var sa = sockaddr_in()
    sa.sin_family = sa_family_t(AF_INET)
    let parts = text.split(separator: ":")
    sa.sin_addr.s_addr = inet_addr(String(parts[0]))
    sa.sin_port = UInt16(parts[1])!.bigEndian
    return sa
}

func withSockaddr<T>(_ sa: inout sockaddr_in, _ body: (UnsafeMutablePointer<sockaddr>) -> T) -> T {
    withUnsafeMutablePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1, body) }
}

/// A UDP socket on 127.0.0.1 with a 5 s receive timeout: the peer beyond the relay.
final class PeerSocket {
    let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
    private(set) var address = ""

    init(timeoutMicros: Int = 5_000_000) {
        var sa = sockaddrIn("127.0.0.1:0")
        let size = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withSockaddr(&sa) { bind(fd, $0, size) }
        var len = size
        _ = withSockaddr(&sa) { getsockname(fd, $0, &len) }
        address = "127.0.0.1:\(UInt16(bigEndian: sa.sin_port))"
        var tv = timeval(tv_sec: timeoutMicros / 1_000_000, tv_usec: timeoutMicros % 1_000_000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit { Glibc.close(fd) }

    func send(_ text: String, to: String) {
        var sa = sockaddrIn(to)
        let bytes = Array(text.utf8)
        _ = withSockaddr(&sa) { sendto(fd, bytes, bytes.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }

    /// One datagram and its sender, or nil after the timeout.
    func receive() -> (String, String)? {
        var buf = [UInt8](repeating: 0, count: 2048)
        var sa = sockaddr_in()
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let n = withSockaddr(&sa) { recvfrom(fd, &buf, buf.count, 0, $0, &len) }
        guard n >= 0 else { return nil }
        let ip = String(cString: inet_ntoa(sa.sin_addr))
        return (String(decoding: buf[0..<n], as: UTF8.self), "\(ip):\(UInt16(bigEndian: sa.sin_port))")
    }
}

/// Whether the server closed the relayed port: ICMP port unreachable reaches a connected
/// socket as ECONNREFUSED.
func relayReleased(_ relayed: String) -> Bool {
    let s = PeerSocket(timeoutMicros: 200_000)
    var sa = sockaddrIn(relayed)
    _ = withSockaddr(&sa) { connect(s.fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    var buf = [UInt8](repeating: 0, count: 16)
    for _ in 0..<25 {
        if Glibc.send(s.fd, [1], 1, 0) < 0 && errno == ECONNREFUSED { return true }
        if recv(s.fd, &buf, buf.count, 0) < 0 && errno == ECONNREFUSED { return true }
    }
    return false
}

func checkLoopback(_ r: NetcheckReport, _ what: String) {
    XCTAssertTrue(r.udp, what)
    // Loopback has no NAT: everything is endpoint-independent and hairpins.
    XCTAssertEqual(r.mapping, .endpointIndependent, what)
    XCTAssertEqual(r.filtering, .endpointIndependent, what)
    XCTAssertEqual(r.hairpinning, true, what)
    XCTAssertEqual(r.algRewrites, false, what)
    XCTAssertEqual(r.portAllocation?.kind, .preserving, what)
    XCTAssertNil(r.bindingLifetime, what)
    XCTAssertNotNil(r.rfc5780Server, what)
    XCTAssertTrue(r.publicAddresses.first?.hasPrefix("127.0.0.1:") ?? false, what)
    XCTAssertEqual(r.servers.count, 1, what)
    let s = r.servers[0]
    XCTAssertTrue(s.label.hasPrefix("stun:"), what)
    XCTAssertNotNil(s.rttUs, what)
    XCTAssertNotNil(s.mapped, what)
    XCTAssertNotNil(s.otherAddress, what)
}

final class PinholeTests: XCTestCase {
    override class func setUp() {
        super.setUp()
        precondition(!serveURI.isEmpty && !silentURI.isEmpty && !turnURI.isEmpty,
                     "PINHOLE_TEST_STUN, PINHOLE_TEST_SILENT and PINHOLE_TEST_TURN* must be set (bindings/test.sh)")
    }

    func testVersion() {
        XCTAssertNotNil(version().range(of: #"^\d+\.\d+\.\d+"#, options: .regularExpression))
    }

    func testErrors() async {
        do {
            _ = try await netcheck(config: NetcheckConfig(stunServers: ["http://example.org"]))
            XCTFail("no error")
        } catch PinholeError.InvalidArgument(let message) {
            XCTAssertTrue(message.contains("example.org"), message)
        } catch {
            XCTFail("\(error)")
        }
        do {
            _ = try await netcheck(config: NetcheckConfig(stunServers: ["stuns:127.0.0.1:5349"]))
            XCTFail("no error")
        } catch PinholeError.Unsupported {
        } catch {
            XCTFail("\(error)")
        }
        XCTAssertThrowsError(
            try startNetcheck(config: NetcheckConfig(stunServers: [serveURI], gateway: "nope"),
                              listener: Listener()))
        XCTAssertThrowsError(try StunServer(primary: "localhost", alternate: nil)) { e in
            guard case PinholeError.InvalidArgument = e else { return XCTFail("\(e)") }
        }
        XCTAssertThrowsError(
            try mapPort(config: PortMappingConfig(internalPort: 0, protocol: .udp, gateway: "127.0.0.9"),
                        listener: MappingListener()))
    }

    func testNetcheckAgainstPinholeServe() async throws {
        let logger = CountingLogger()
        setLogger(logger: logger, level: .debug)
        defer { setLogger(logger: nil, level: .off) }
        let r = try await netcheck(config: NetcheckConfig(
            stunServers: [serveURI], timeoutMs: 8000, gateway: "127.0.0.9"))
        checkLoopback(r, "pinhole serve")
        let probe = try XCTUnwrap(r.portmap)
        XCTAssertEqual(probe.gateway, "127.0.0.9")
        // Nothing listens at 127.0.0.9: the probe runs and finds nothing.
        XCTAssertNotEqual(probe.pcp, true)
        XCTAssertNotEqual(probe.natpmp, true)
        XCTAssertNotEqual(probe.upnp, true)
        XCTAssertGreaterThan(logger.records, 0)
    }

    func testEmbeddedServersAndListener() throws {
        let plain = try StunServer(primary: "127.0.0.1:0", alternate: nil)
        XCTAssertEqual(plain.addresses().count, 1)
        XCTAssertTrue(plain.uri().hasPrefix("stun:127.0.0.1:"))
        plain.close()
        plain.close()  // idempotent
        XCTAssertTrue(plain.isClosed())

        let server = try StunServer.loopback()
        XCTAssertEqual(server.addresses().count, 4)
        let listener = Listener()
        let task = try startNetcheck(
            config: NetcheckConfig(stunServers: [server.uri()], noPortmap: true), listener: listener)
        XCTAssertEqual(listener.done.wait(timeout: .now() + 60), .success)
        Thread.sleep(forTimeInterval: 0.1)
        XCTAssertTrue(task.isFinished())
        XCTAssertNil(listener.error)
        XCTAssertFalse(listener.onMainThread)
        XCTAssertEqual(listener.threads.count, 1, "all callbacks on the netcheck's one thread")
        var kinds = Set<String>()
        for p in listener.progress {
            switch p {
            case .serverReplied(let label, let mapped, let rttUs):
                XCTAssertTrue(label.hasPrefix("stun:")); XCTAssertNotNil(mapped); XCTAssertGreaterThanOrEqual(rttUs, 0)
                kinds.insert("replied")
            case .serverTimedOut: kinds.insert("timedOut")
            case .mapping(let b): XCTAssertEqual(b, .endpointIndependent); kinds.insert("mapping")
            case .filtering(let b): XCTAssertEqual(b, .endpointIndependent); kinds.insert("filtering")
            case .hairpinning(let h): XCTAssertTrue(h); kinds.insert("hairpinning")
            @unknown default: XCTFail("a progress kind this test does not know: \(p)")
            }
        }
        XCTAssertEqual(kinds, ["replied", "mapping", "filtering", "hairpinning"])
        let report = try XCTUnwrap(listener.report)
        checkLoopback(report, "embedded server")
        XCTAssertNil(report.portmap)
        server.close()
    }

    func testCancellation() async throws {
        let silent = NetcheckConfig(stunServers: [silentURI], timeoutMs: 60000, noPortmap: true)
        let listener = Listener()
        let task = try startNetcheck(config: silent, listener: listener)
        task.close()
        XCTAssertEqual(listener.done.wait(timeout: .now() + 20), .success)
        guard case .Cancelled? = listener.error else { return XCTFail("\(String(describing: listener.error))") }

        // Cancelling the Swift task cancels the async call promptly.
        let started = Date()
        let call = Task { try await netcheck(config: silent) }
        try await Task.sleep(nanoseconds: 300_000_000)
        call.cancel()
        _ = await call.result
        XCTAssertLessThan(Date().timeIntervalSince(started), 10)

        // Dropping a running task's handle cancels it.
        _ = try startNetcheck(config: silent, listener: Listener())
    }

    func testPortMappingWithoutGateway() async throws {
        let listener = MappingListener()
        let mapper = try mapPort(
            config: PortMappingConfig(internalPort: 40000, protocol: .udp, gateway: "127.0.0.9",
                                      localIp: "127.0.0.1", lifetimeSecs: 60),
            listener: listener)
        XCTAssertNil(mapper.current())
        XCTAssertEqual(listener.stopped.wait(timeout: .now() + 30), .success)
        guard case .unavailable(let reason)? = listener.events.last else {
            return XCTFail("\(listener.events)")
        }
        XCTAssertFalse(reason.isEmpty)
        XCTAssertFalse(listener.onMainThread)
        await mapper.closeAndWait()
        XCTAssertTrue(mapper.isClosed())

        let l2 = MappingListener()
        let m2 = try mapPort(
            config: PortMappingConfig(internalPort: 40001, protocol: .tcp, gateway: "127.0.0.9", method: .pcp),
            listener: l2)
        await m2.closeAndWait()
        XCTAssertTrue(m2.isClosed())
        switch l2.events.last {
        case .released?, .unavailable?: break
        default: XCTFail("\(l2.events)")
        }
    }

    func testPortMappingVerification() async throws {
        func start(_ config: PortMappingConfig) throws -> PortMapper {
            try mapPort(config: config, listener: MappingListener())
        }
        // The reflector is checked when the mapper starts.
        for bad in ["http://127.0.0.1:3478", "stun:", "stun:127.0.0.1:99999", "127.0.0.1:3478"] {
            XCTAssertThrowsError(
                try start(PortMappingConfig(internalPort: 40000, protocol: .udp, gateway: "127.0.0.9",
                                            verifyStun: bad))
            ) { e in
                guard case PinholeError.InvalidArgument = e else { return XCTFail("\(bad): \(e)") }
            }
        }
        XCTAssertThrowsError(
            try start(PortMappingConfig(internalPort: 40000, protocol: .udp, gateway: "127.0.0.9",
                                        verifyStun: "stuns:127.0.0.1:5349"))
        ) { e in
            guard case PinholeError.Unsupported = e else { return XCTFail("\(e)") }
        }
        XCTAssertThrowsError(
            try start(PortMappingConfig(internalPort: 40000, protocol: .tcp, gateway: "127.0.0.9",
                                        verifyStun: serveURI))
        ) { e in
            guard case PinholeError.InvalidArgument = e else { return XCTFail("\(e)") }
        }
        XCTAssertThrowsError(
            try start(PortMappingConfig(internalPort: 40000, protocol: .udp, gateway: "127.0.0.9",
                                        verifyStun: serveURI, verifyIntervalSecs: 86401))
        ) { e in
            guard case PinholeError.InvalidArgument = e else { return XCTFail("\(e)") }
        }
        let defaults = PortMappingConfig(internalPort: 1, protocol: .udp)
        XCTAssertNil(defaults.verifyStun)
        XCTAssertEqual(defaults.verifyIntervalSecs, 300)

        // No gateway at 127.0.0.9, so nothing is mapped and nothing can be verified: a
        // well-formed reflector is accepted, resolved, the mapped port bound, and the
        // mapper still ends cleanly.
        let port = UInt16(PeerSocket().address.split(separator: ":")[1])!  // closed again at once
        let listener = MappingListener()
        let mapper = try mapPort(
            config: PortMappingConfig(internalPort: port, protocol: .udp, gateway: "127.0.0.9",
                                      localIp: "127.0.0.1", lifetimeSecs: 60, verifyStun: serveURI,
                                      verifyIntervalSecs: 5),
            listener: listener)
        XCTAssertEqual(listener.stopped.wait(timeout: .now() + 30), .success)
        guard case .unavailable(let reason)? = listener.events.last else {
            return XCTFail("\(listener.events)")
        }
        XCTAssertFalse(reason.isEmpty)
        XCTAssertFalse(reason.contains("verify_stun"), reason)
        XCTAssertFalse(reason.contains("mapped port"), reason)
        await mapper.closeAndWait()
        XCTAssertTrue(mapper.isClosed())

        // The mapped port is taken: the answers could not be heard, and the mapper says so.
        let taken = PeerSocket()
        let l2 = MappingListener()
        let m2 = try mapPort(
            config: PortMappingConfig(internalPort: UInt16(taken.address.split(separator: ":")[1])!,
                                      protocol: .udp, gateway: "127.0.0.9", localIp: "127.0.0.1",
                                      verifyStun: serveURI),
            listener: l2)
        XCTAssertEqual(l2.stopped.wait(timeout: .now() + 30), .success)
        guard case .unavailable(let why)? = l2.events.last else { return XCTFail("\(l2.events)") }
        XCTAssertTrue(why.contains("mapped port"), why)
        await m2.closeAndWait()
        withExtendedLifetime(taken) {}
    }

    func testTurnRelay() async throws {
        let l = TurnEvents()
        let alloc = try await allocateTurn(
            config: TurnConfig(uri: turnURI, username: turnUser, password: turnPassword, lifetimeSecs: 300),
            listener: l)
        let relayed = alloc.relayedAddress()
        XCTAssertTrue(relayed.hasPrefix("127.0.0.1:"), relayed)
        XCTAssertEqual(alloc.relayedAddresses(), [relayed])
        XCTAssertTrue(alloc.mappedAddress()?.hasPrefix("127.0.0.1:") ?? false)
        guard case .allocated(let r, _, let lifetime)? = l.first({ if case .allocated = $0 { return true }; return false })
        else { return XCTFail("no Allocated event") }
        XCTAssertEqual(r, [relayed])
        // Asked 300 s; the server grants at least its default 600 s (RFC 8656 §7.2).
        XCTAssertEqual(lifetime, 600)
        XCTAssertFalse(alloc.isClosed())

        let peer = PeerSocket()
        // Without a permission, sending fails (as an event).
        try alloc.send(peer: "127.0.0.2:9", data: Data([1]))
        XCTAssertNotNil(l.first { if case .sendFailed(let p, _) = $0 { return p == "127.0.0.2:9" }; return false })

        // A permission: data both ways as Send and Data indications.
        try await alloc.createPermission(peerIp: "127.0.0.1")
        XCTAssertNotNil(l.first { $0 == .permissionCreated(peerIp: "127.0.0.1") })
        peer.send("hello through the relay", to: relayed)
        let d1 = l.datagram(1)
        XCTAssertEqual(d1?.0, peer.address)
        XCTAssertEqual(d1.map { String(decoding: $0.1, as: UTF8.self) }, "hello through the relay")
        try alloc.send(peer: peer.address, data: Data("reply by Send indication".utf8))
        let got1 = peer.receive()
        XCTAssertEqual(got1?.0, "reply by Send indication")
        XCTAssertEqual(got1?.1, relayed)

        // A channel: the same as ChannelData.
        let channel = try await alloc.bindChannel(peer: peer.address)
        XCTAssertTrue((0x4000...0x4FFF).contains(channel), "\(channel)")
        XCTAssertNotNil(l.first { $0 == .channelBound(peer: peer.address, channel: channel) })
        try alloc.send(peer: peer.address, data: Data("over the channel".utf8))
        let got2 = peer.receive()
        XCTAssertEqual(got2?.0, "over the channel")
        XCTAssertEqual(got2?.1, relayed)
        peer.send("back over the channel", to: relayed)
        let d2 = l.datagram(2)
        XCTAssertEqual(d2?.0, peer.address)
        XCTAssertEqual(d2.map { String(decoding: $0.1, as: UTF8.self) }, "back over the channel")

        XCTAssertThrowsError(try alloc.send(peer: "nope", data: Data([1]))) { e in
            guard case PinholeError.InvalidArgument = e else { return XCTFail("\(e)") }
        }
        XCTAssertThrowsError(try alloc.send(peer: peer.address, data: Data(count: 70_000)))
        do {
            try await alloc.createPermission(peerIp: "127.0.0.1:80")
            XCTFail("no error")
        } catch PinholeError.InvalidArgument {}

        // Release: Deallocated, then nothing is available and the server freed the port.
        await alloc.closeAndWait()
        XCTAssertTrue(alloc.isClosed())
        XCTAssertNotNil(l.first { $0 == .deallocated })
        XCTAssertThrowsError(try alloc.send(peer: peer.address, data: Data([1]))) { e in
            guard case PinholeError.NotAvailable = e else { return XCTFail("\(e)") }
        }
        XCTAssertTrue(relayReleased(relayed))
        XCTAssertFalse(l.onMainThread)
    }

    func testTurnCredentials() async throws {
        do {
            _ = try await allocateTurn(
                config: TurnConfig(uri: turnURI, username: turnUser, password: "wrong"), listener: TurnEvents())
            XCTFail("no error")
        } catch PinholeError.Authentication(let message) {
            XCTAssertFalse(message.isEmpty)
        }
        do {
            _ = try await allocateTurn(
                config: TurnConfig(uri: turnURI, username: turnUser, secret: "wrong"), listener: TurnEvents())
            XCTFail("no error")
        } catch PinholeError.Authentication {}

        // REST credentials; dropping the allocation deallocates it.
        var rest: TurnAllocation? = try await allocateTurn(
            config: TurnConfig(uri: turnURI, username: turnUser, secret: turnSecret, restTtlSecs: 600),
            listener: TurnEvents())
        let relayed = rest!.relayedAddress()
        XCTAssertTrue(relayed.hasPrefix("127.0.0.1:"), relayed)
        rest = nil
        XCTAssertNil(rest)
        XCTAssertTrue(relayReleased(relayed))

        for (config, what) in [
            (TurnConfig(uri: turnURI, username: turnUser), "no credentials"),
            (TurnConfig(uri: turnURI, username: turnUser, password: "p", secret: "s"), "both"),
            (TurnConfig(uri: "stun:127.0.0.1", username: turnUser, password: "p"), "bad URI"),
        ] {
            do {
                _ = try await allocateTurn(config: config, listener: TurnEvents())
                XCTFail("\(what): no error")
            } catch PinholeError.InvalidArgument {}
        }
        do {
            _ = try await allocateTurn(
                config: TurnConfig(uri: "turns:127.0.0.1", username: turnUser, password: "p"), listener: TurnEvents())
            XCTFail("turns: without TLS: no error")
        } catch PinholeError.Unsupported {}
    }

    func testRecordsAndEnums() {
        let m = PortMapping(method: .natPmp, protocol: .udp, internal: "10.0.0.2:40000",
                            external: "203.0.113.7:40000", lifetimeSecs: 7200, reachable: true)
        var moved = m
        moved.external = "203.0.113.7:40002"
        let changed = PortMappingEvent.changed(old: m, new: moved)
        guard case .changed(let old, let new) = changed else { return XCTFail() }
        XCTAssertNotEqual(old, new)
        XCTAssertEqual(PortMappingEvent.mapped(mapping: m), .mapped(mapping: m))
        // Every event, handled as apps must handle pinhole's enums (new cases may come in
        // any release, README): with a `default` branch.
        let all: [PortMappingEvent] = [
            .mapped(mapping: m), .renewed(mapping: m), changed, .lost(reason: "x"),
            .unavailable(reason: "x"), .released, .verified(mapping: m), .notForwarding(mapping: m),
            .unverified(reason: "no answer"),
        ]
        let names = all.map { e -> String in
            switch e {
            case .mapped: return "mapped"
            case .renewed: return "renewed"
            case .changed: return "changed"
            case .lost: return "lost"
            case .unavailable: return "unavailable"
            case .released: return "released"
            case .verified(let mapping): return "verified:\(mapping.external)"
            case .notForwarding(let mapping): return "not-forwarding:\(mapping.external)"
            case .unverified(let reason): return "unverified:\(reason)"
            @unknown default: return "a newer event"
            }
        }
        XCTAssertEqual(Set(names).count, 9)
        XCTAssertTrue(names.contains("unverified:no answer"))
        XCTAssertEqual(BindingLifetime(atLeastMs: 10_000, lessThanMs: nil).lessThanMs, nil)
        XCTAssertEqual(GatewayProbe(gateway: nil, pcp: nil, natpmp: nil, upnp: nil, natpmpExternal: nil,
                                    upnpExternal: nil, error: "x").error, "x")
        let levels: [LogLevel] = [.trace, .debug, .info, .warn, .error, .off]
        XCTAssertEqual(Set(levels.map { "\($0)" }).count, 6)
        let behaviours: [NatBehaviour] = [.endpointIndependent, .addressDependent, .addressAndPortDependent, .unknown]
        XCTAssertEqual(Set(behaviours).count, 4)
        XCTAssertEqual(NetcheckConfig().timeoutMs, 10000)
    }
}
