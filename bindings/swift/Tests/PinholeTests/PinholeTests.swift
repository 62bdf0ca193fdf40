// The Swift bindings' tests (Linux, XCTest), the same ground as the Kotlin test: every
// exported item, callbacks on pinhole's Rust threads, async calls and their cancellation,
// errors, a netcheck against `pinhole serve` on loopback (PINHOLE_TEST_STUN) and against
// the embedded server, and port mapping at 127.0.0.9, where no gateway listens.
import Foundation
import XCTest

@testable import Pinhole

/// `pinhole serve`'s URI and a loopback URI where nothing answers, from bindings/test.sh.
private let serveURI = ProcessInfo.processInfo.environment["PINHOLE_TEST_STUN"] ?? ""
private let silentURI = ProcessInfo.processInfo.environment["PINHOLE_TEST_SILENT"] ?? ""

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

func checkLoopback(_ r: NetcheckReport, _ what: String) {
    XCTAssertTrue(r.udp, what)
    // Loopback has no NAT: everything is endpoint-independent and hairpins.
    XCTAssertEqual(r.mapping, .endpointIndependent, what)
    XCTAssertEqual(r.filtering, .endpointIndependent, what)
    XCTAssertEqual(r.hairpinning, true, what)
    XCTAssertEqual(r.algRewrites, false, what)
    XCTAssertNil(r.bindingLifetime, what)
    XCTAssertNotNil(r.rfc5780Server, what)
    XCTAssertTrue(r.publicAddresses.first?.hasPrefix("127.0.0.1:") ?? false, what)
    XCTAssertEqual(r.servers.count, 1, what)
    let s = r.servers[0]
    XCTAssertTrue(s.label.hasPrefix("stun:"), what)
    XCTAssertNotNil(s.rtt, what)
    XCTAssertNotNil(s.mapped, what)
    XCTAssertNotNil(s.otherAddress, what)
}

final class PinholeTests: XCTestCase {
    override class func setUp() {
        super.setUp()
        precondition(!serveURI.isEmpty && !silentURI.isEmpty,
                     "PINHOLE_TEST_STUN and PINHOLE_TEST_SILENT must be set (bindings/test.sh)")
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
        plain.stop()
        plain.stop()  // idempotent

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
            case .serverReplied(let label, let mapped, let rtt):
                XCTAssertTrue(label.hasPrefix("stun:")); XCTAssertNotNil(mapped); XCTAssertGreaterThanOrEqual(rtt, 0)
                kinds.insert("replied")
            case .serverTimedOut: kinds.insert("timedOut")
            case .mapping(let b): XCTAssertEqual(b, .endpointIndependent); kinds.insert("mapping")
            case .filtering(let b): XCTAssertEqual(b, .endpointIndependent); kinds.insert("filtering")
            case .hairpinning(let h): XCTAssertTrue(h); kinds.insert("hairpinning")
            }
        }
        XCTAssertEqual(kinds, ["replied", "mapping", "filtering", "hairpinning"])
        let report = try XCTUnwrap(listener.report)
        checkLoopback(report, "embedded server")
        XCTAssertNil(report.portmap)
        server.stop()
    }

    func testCancellation() async throws {
        let silent = NetcheckConfig(stunServers: [silentURI], timeoutMs: 60000, noPortmap: true)
        let listener = Listener()
        let task = try startNetcheck(config: silent, listener: listener)
        task.cancel()
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
        await mapper.release()
        XCTAssertTrue(mapper.isStopped())

        let l2 = MappingListener()
        let m2 = try mapPort(
            config: PortMappingConfig(internalPort: 40001, protocol: .tcp, gateway: "127.0.0.9", method: .pcp),
            listener: l2)
        m2.stop()
        await m2.release()
        XCTAssertTrue(m2.isStopped())
        switch l2.events.last {
        case .released?, .unavailable?: break
        default: XCTFail("\(l2.events)")
        }
    }

    func testRecordsAndEnums() {
        let m = PortMapping(method: .natPmp, protocol: .udp, internal: "10.0.0.2:40000",
                            external: "203.0.113.7:40000", lifetime: 7200, reachable: true)
        var moved = m
        moved.external = "203.0.113.7:40002"
        let changed = PortMappingEvent.changed(old: m, new: moved)
        guard case .changed(let old, let new) = changed else { return XCTFail() }
        XCTAssertNotEqual(old, new)
        XCTAssertEqual(PortMappingEvent.mapped(mapping: m), .mapped(mapping: m))
        XCTAssertEqual(BindingLifetime(atLeast: 10, lessThan: nil).lessThan, nil)
        XCTAssertEqual(GatewayProbe(gateway: nil, pcp: nil, natpmp: nil, upnp: nil, natpmpExternal: nil,
                                    upnpExternal: nil, error: "x").error, "x")
        let levels: [LogLevel] = [.trace, .debug, .info, .warn, .error, .off]
        XCTAssertEqual(Set(levels.map { "\($0)" }).count, 6)
        let behaviours: [NatBehaviour] = [.endpointIndependent, .addressDependent, .addressAndPortDependent, .unknown]
        XCTAssertEqual(Set(behaviours).count, 4)
        XCTAssertEqual(NetcheckConfig().timeoutMs, 10000)
    }
}
