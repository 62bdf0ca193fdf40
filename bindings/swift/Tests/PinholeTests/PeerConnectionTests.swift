// PeerConnection in Swift (Linux, XCTest), through the package's AsyncSequence adapter
// (ios/Sources/Pinhole/AsyncEvents.swift): two connections of this process meet through a
// `pinhole signal` room (PINHOLE_TEST_SIGNAL), gather from `pinhole serve`
// (PINHOLE_TEST_STUN) and `pinhole serve --turn` (PINHOLE_TEST_TURN*, with
// --allow-loopback-peers), all on 127.0.0.1 and bound to it; they connect directly, or
// through the relay only, exchange data both ways, survive an ICE restart (new descriptions
// through the room, data again) and a network change, go through the keepalive policies
// (background, suspended, foreground: data in each, no restart on the resume), and close,
// which frees their sockets and relays.
import Foundation
import XCTest

#if canImport(Glibc)
    import Glibc
#endif

@testable import Pinhole

private let env = ProcessInfo.processInfo.environment
private let signalURL = env["PINHOLE_TEST_SIGNAL"] ?? ""
private let stunURI = env["PINHOLE_TEST_STUN"] ?? ""
private let turnURI = env["PINHOLE_TEST_TURN"] ?? ""
private let turnUser = env["PINHOLE_TEST_TURN_USER"] ?? ""
private let turnPassword = env["PINHOLE_TEST_TURN_PASSWORD"] ?? ""

struct SignalError: Error, CustomStringConvertible {
    let description: String
}

/// One HTTP/1.1 request to `pinhole signal` (`http://IP:PORT`) over a blocking TCP socket
/// bounded by `timeout` seconds: the status and the body.
func signalHTTP(_ base: String, _ method: String, _ path: String, body: String = "", timeout: Int = 10) throws
    -> (Int, String)
{
    let hostPort = base.replacingOccurrences(of: "http://", with: "")
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw SignalError(description: "socket: \(errno)") }
    defer { Glibc.close(fd) }
    var tv = timeval(tv_sec: timeout, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    var sa = sockaddrIn(hostPort)
    guard withSockaddr(&sa, { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }) == 0 else {
        throw SignalError(description: "connect \(hostPort): \(errno)")
    }
    let bodyBytes = Array(body.utf8)
    let request = Array(
        "\(method) \(path) HTTP/1.1\r\nhost: \(hostPort)\r\ncontent-length: \(bodyBytes.count)\r\nconnection: close\r\n\r\n"
            .utf8) + bodyBytes
    var sent = 0
    while sent < request.count {
        let n = request[sent...].withUnsafeBufferPointer { Glibc.send(fd, $0.baseAddress, $0.count, 0) }
        guard n > 0 else { throw SignalError(description: "send: \(errno)") }
        sent += n
    }
    var response: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 4096)
    while true {
        let n = recv(fd, &buf, buf.count, 0)
        if n == 0 { break }
        guard n > 0 else { throw SignalError(description: "recv: \(errno)") }
        response += buf[0..<n]
    }
    let text = String(decoding: response, as: UTF8.self)
    guard let split = text.range(of: "\r\n\r\n") else { throw SignalError(description: "no HTTP answer") }
    let statusLine = text[..<split.lowerBound].split(separator: "\r\n").first ?? ""
    let parts = statusLine.split(separator: " ")
    guard parts.count >= 2, let status = Int(parts[1]) else { throw SignalError(description: "status \(statusLine)") }
    return (status, String(text[split.upperBound...]))
}

/// A peer's place in a `pinhole signal` room.
final class SignalPeer: @unchecked Sendable {
    let base: String
    let room: String
    let side: String
    let token: String

    init(_ base: String, room: String) throws {
        let (status, body) = try signalHTTP(base, "POST", "/v1/rooms/\(room)/join")
        guard status == 200,
            let json = try JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any],
            let side = json["peer"] as? String, let token = json["token"] as? String
        else { throw SignalError(description: "join \(room): \(status) \(body)") }
        self.base = base
        self.room = room
        self.side = side
        self.token = token
    }

    func post(_ message: String) throws {
        let (status, body) = try signalHTTP(base, "POST", "/v1/rooms/\(room)/\(side)?token=\(token)", body: message)
        guard status == 204 else { throw SignalError(description: "post: \(status) \(body)") }
    }

    /// The messages from `after` on (waiting up to `wait` seconds for one), and the next
    /// `after`.
    func fetch(after: Int, wait: Int) throws -> (Int, [String]) {
        let (status, body) = try signalHTTP(
            base, "GET", "/v1/rooms/\(room)/\(side)?token=\(token)&after=\(after)&wait=\(wait)", timeout: wait + 10)
        guard status == 200,
            let json = try JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any],
            let next = json["next"] as? Int, let messages = json["messages"] as? [String]
        else { throw SignalError(description: "fetch: \(status) \(body)") }
        return (next, messages)
    }
}

/// The kind of a candidate line (`… typ host`).
func candidateKind(_ candidate: String) -> String? {
    let words = candidate.split(separator: " ")
    guard let i = words.firstIndex(of: "typ"), i + 1 < words.count else { return nil }
    return String(words[i + 1])
}

/// The `IP:port` of a candidate line (`… IP PORT typ KIND`).
func candidateAddress(_ candidate: String) -> String? {
    let words = candidate.split(separator: " ")
    guard let i = words.firstIndex(of: "typ"), i >= 2 else { return nil }
    return "\(words[i - 2]):\(words[i - 1])"
}

/// Whether a UDP port of 127.0.0.1 can be bound (nothing holds it).
func udpPortFree(_ address: String) -> Bool {
    let s = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
    defer { Glibc.close(s) }
    var sa = sockaddrIn(address)
    return withSockaddr(&sa) { bind(s, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } == 0
}

/// Polls `condition` every 20 ms for up to `seconds`, suspending.
func until(_ seconds: Double = 10, _ condition: () -> Bool) async -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if condition() { return true }
        try? await Task.sleep(nanoseconds: 20_000_000)
    }
    return condition()
}

/// One side of a pair: its connection and events, its room. Signalling messages: `D:` a
/// description (the first, or a restart's: the receiver restarts too and reports
/// `remoteRestarted`, whose description goes back as `D:`), `C:` a candidate, `E:` end of
/// candidates; posted one at a time, in order.
final class PeerSide: @unchecked Sendable {
    let name: String
    let events: PeerConnectionEvents
    let room: SignalPeer
    var pc: PeerConnection { events.connection }
    private let lock = NSLock()
    private var seen: [PeerConnectionEvent] = []
    private var received: [Data] = []
    private(set) var errors: [String] = []
    private var stopped = false
    private var ended = false
    private let outbox: DispatchQueue
    /// Held while a restart's description is being queued, and while an event's message is:
    /// a restart's candidates go out after its description.
    private let order = NSLock()
    private var consumer: Task<Void, Never>?
    private var poller: Thread?
    private let pollerDone = DispatchSemaphore(value: 0)

    init(_ name: String, events: PeerConnectionEvents, room: SignalPeer) {
        self.name = name
        self.events = events
        self.room = room
        outbox = DispatchQueue(label: "outbox \(name)")
    }

    func locked<T>(_ body: () -> T) -> T {
        lock.lock()
        defer { lock.unlock() }
        return body()
    }

    var seenEvents: [PeerConnectionEvent] { locked { seen } }
    var pairs: [(local: String, remote: String, relayed: Bool)] {
        locked {
            seen.compactMap {
                if case .selectedPair(let l, let r, let relayed, _) = $0 { return (l, r, relayed) }
                return nil
            }
        }
    }
    var closedEvent: PeerConnectionEvent? {
        locked {
            seen.last.flatMap { e -> PeerConnectionEvent? in
                if case .closed = e { return e }
                return nil
            }
        }
    }

    func received(_ data: Data) -> Bool { locked { received.contains(data) } }

    func send(_ message: String) {
        outbox.async { [self] in
            do { try room.post(message) } catch { locked { errors.append("\(error)") } }
        }
    }

    /// Sends the description, then consumes the events and polls the room.
    func start() {
        send("D:\(pc.localDescription())")
        let events = self.events
        consumer = Task { [self] in
            for await e in events {
                ordered { handle(event: e) }
            }
            locked { ended = true }
        }
        let thread = Thread { [self] in
            var after = 0
            while !locked({ stopped }) {
                do {
                    let (next, messages) = try room.fetch(after: after, wait: 1)
                    after = next
                    for m in messages { handle(m) }
                } catch {
                    locked { errors.append("\(error)") }
                    Thread.sleep(forTimeInterval: 0.1)
                }
            }
            pollerDone.signal()
        }
        poller = thread
        thread.start()
    }

    private func ordered(_ body: () -> Void) {
        order.lock()
        defer { order.unlock() }
        body()
    }

    private func handle(event e: PeerConnectionEvent) {
        locked { seen.append(e) }
        switch e {
        case .localCandidate(let c): send("C:\(c)")
        case .gatheringComplete: send("E:")
        case .remoteRestarted(let d): send("D:\(d)")
        case .networkChanged(let d): send("D:\(d)")
        case .data(let d): locked { received.append(d) }
        default: break
        }
    }

    private func handle(_ m: String) {
        let body = String(m.dropFirst(2))
        do {
            switch m.prefix(2) {
            case "D:": try pc.setRemoteDescription(description: body)
            case "C:": try pc.addRemoteCandidate(candidate: body)
            case "E:": pc.endOfRemoteCandidates()
            default: locked { errors.append("unknown message \(m)") }
            }
        } catch {
            locked { errors.append("\(m.prefix(40)): \(error)") }
        }
    }

    /// This side restarts: its new description goes out before its candidates.
    func restart() throws -> String {
        order.lock()
        defer { order.unlock() }
        let d = try pc.restart()
        send("D:\(d)")
        return d
    }

    /// The network changed (the app's own monitor): like `restart()`, the new description
    /// goes out before its candidates.
    func networkChanged() throws -> String {
        order.lock()
        defer { order.unlock() }
        let d = try pc.networkChanged()
        send("D:\(d)")
        return d
    }

    /// The last selected pair among the events from the index `from` gives on (waiting up to
    /// `seconds` for one).
    func pair(_ seconds: Double = 20, from: () -> Int?) async -> (local: String, remote: String, relayed: Bool)? {
        var found: (local: String, remote: String, relayed: Bool)?
        _ = await until(seconds) {
            guard let i = from() else { return false }
            for e in seenEvents.dropFirst(i) {
                if case .selectedPair(let l, let r, let relayed, _) = e { found = (l, r, relayed) }
            }
            return found != nil
        }
        return found
    }

    /// The first selected pair after the first `count` (up to `seconds`).
    func pair(after count: Int, _ seconds: Double = 20) async -> (local: String, remote: String, relayed: Bool)? {
        guard await until(seconds, { pairs.count > count }) else { return nil }
        return pairs.last
    }

    /// Stops polling (bounded) and the consumer; the connection is left to the caller.
    func stop() async {
        locked { stopped = true }
        if poller != nil { _ = pollerDone.wait(timeout: .now() + 15) }
        consumer?.cancel()
        _ = await consumer?.value
        outbox.sync {}
    }

    /// Whether the consumer has ended (the sequence finished), within `seconds`.
    func consumerEnded(_ seconds: Double) async -> Bool {
        await until(seconds) { locked { ended } }
    }
}

/// Sends `data` from `from` every 100 ms until `to` has received it (10 s at most).
func carries(_ from: PeerSide, _ to: PeerSide, _ data: Data) async -> Bool {
    for _ in 0..<100 {
        try? from.pc.send(data: data)
        try? await Task.sleep(nanoseconds: 100_000_000)
        if to.received(data) { return true }
    }
    return false
}

func peerConfig(controlling: Bool, policy: RelayPolicy, stun: [String] = [stunURI], bind: String? = "127.0.0.1:0")
    -> PeerConnectionConfig
{
    PeerConnectionConfig(
        stunServers: stun,
        turnServers: [PeerTurnServer(uri: turnURI, username: turnUser, password: turnPassword)],
        controlling: controlling, portMapping: false, relayPolicy: policy, bind: bind, lite: false,
        // This app follows the network itself (networkChanged()); on loopback there is no
        // built-in monitor either way.
        noNetworkMonitor: controlling)
}

/// Consumes a stream in a task of its own: the last event, and whether it ended.
final class Drain: @unchecked Sendable {
    private let lock = NSLock()
    private var _events: [PeerConnectionEvent] = []
    private var _ended = false
    private(set) var task: Task<Void, Never>!

    init(_ stream: AsyncStream<PeerConnectionEvent>) {
        task = Task { [self] in
            for await e in stream { set(e, ended: false) }
            set(nil, ended: true)
        }
    }

    private func set(_ e: PeerConnectionEvent?, ended: Bool) {
        lock.lock()
        defer { lock.unlock() }
        if let e { _events.append(e) }
        _ended = ended
    }

    var events: [PeerConnectionEvent] { lock.lock(); defer { lock.unlock() }; return _events }
    var last: PeerConnectionEvent? { events.last }
    var firstCandidate: String? {
        events.lazy.compactMap { e -> String? in
            if case .localCandidate(let c) = e { return c }
            return nil
        }.first
    }
    var ended: Bool { lock.lock(); defer { lock.unlock() }; return _ended }
}

final class PeerConnectionTests: XCTestCase {
    override class func setUp() {
        super.setUp()
        precondition(!signalURL.isEmpty && !stunURI.isEmpty && !turnURI.isEmpty,
                     "PINHOLE_TEST_SIGNAL, PINHOLE_TEST_STUN and PINHOLE_TEST_TURN* must be set (bindings/test.sh)")
    }

    /// Two connections through a room, with policies `policyA` and `policyB`; `relayed`: the
    /// path expected. (Both relay-only cannot meet on one `pinhole serve --turn`: it refuses
    /// to relay to its own relayed addresses, a loop. So the relayed pair is a relay-only
    /// side and a direct one, whose pair goes through the relay as seen from both sides.)
    func pair(_ name: String, _ policyA: RelayPolicy, _ policyB: RelayPolicy, relayed: Bool) async throws {
        let room = "swift-\(name)-\(UInt64(Date().timeIntervalSince1970 * 1000))"
        let a = PeerSide(
            "\(name) a", events: try await peerConnectionEvents(config: peerConfig(controlling: true, policy: policyA)),
            room: try SignalPeer(signalURL, room: room))
        let b = PeerSide(
            "\(name) b", events: try await peerConnectionEvents(config: peerConfig(controlling: false, policy: policyB)),
            room: try SignalPeer(signalURL, room: room))
        XCTAssertEqual([a.room.side, b.room.side], ["a", "b"])
        a.start()
        b.start()
        var stopped = false
        func stopBoth() async {
            if stopped { return }
            stopped = true
            await a.stop()
            await b.stop()
        }

        // Connected, on the expected path.
        let pa = await a.pair(after: 0)
        let pb = await b.pair(after: 0)
        guard let pa, let pb else {
            await stopBoth()
            a.pc.close()
            b.pc.close()
            return XCTFail("\(name): no pair: \(a.seenEvents) / \(b.seenEvents); \(a.errors) \(b.errors)")
        }
        print("\(name): a: \(pa.local) <-> \(pa.remote); b: \(pb.local) <-> \(pb.remote)")
        XCTAssertEqual([pa.relayed, pb.relayed], [relayed, relayed], name)
        XCTAssertEqual(pa.local, pb.remote, "\(name): the same pair from both sides")
        XCTAssertEqual(pb.local, pa.remote, "\(name): the same pair from both sides")
        XCTAssertTrue([pa.local, pa.remote, pb.local, pb.remote].allSatisfy { $0.hasPrefix("127.0.0.1:") }, name)
        // The path's local address is a candidate of its kind: a relayed address through
        // the relay, the socket's own otherwise.
        let pathKinds = a.seenEvents.compactMap { e -> String? in
            if case .localCandidate(let c) = e, candidateAddress(c) == pa.local { return candidateKind(c) }
            return nil
        }
        XCTAssertTrue(!pathKinds.isEmpty && pathKinds.allSatisfy { $0 == (relayed ? "relay" : "host") },
                      "\(name): a's path starts at \(pathKinds)")
        XCTAssertEqual(a.pc.selectedPair()?.relayed, relayed)
        XCTAssertTrue(a.seenEvents.contains { if case .gatheringComplete = $0 { return true }; return false })
        let connected = await until {
            b.seenEvents.contains {
                if case .stateChanged(let s) = $0 { return s == .connected || s == .completed }
                return false
            }
        }
        XCTAssertTrue(connected, "\(name): b: stateChanged(connected)")
        for (side, policy) in [(a, policyA), (b, policyB)] {
            let kinds = Set(side.seenEvents.compactMap { e -> String? in
                if case .localCandidate(let c) = e { return candidateKind(c) }
                return nil
            })
            let allowed: Set<String>
            switch policy {
            case .relayOnly: allowed = ["relay"]
            case .noRelay: allowed = ["host", "srflx"]
            default: allowed = ["host", "srflx", "relay"]
            }
            XCTAssertTrue(!kinds.isEmpty && kinds.isSubset(of: allowed), "\(side.name): \(policy): \(kinds)")
        }

        // Data both ways.
        let ab = await carries(a, b, Data("\(name): a to b".utf8))
        let ba = await carries(b, a, Data("\(name): b to a".utf8))
        let big = await carries(a, b, Data((0..<1200).map { UInt8(truncatingIfNeeded: $0) }))
        XCTAssertTrue(ab && ba && big, "\(name): data a->b \(ab), b->a \(ba), 1200 bytes \(big)")

        // A restart: new descriptions both ways, new pairs, data again.
        // The pairs counted are those selected after a's restart and after b's
        // remoteRestarted (the events before them settled first).
        try await Task.sleep(nanoseconds: 300_000_000)
        let mark = a.seenEvents.count
        let old = a.pc.localDescription()
        let fresh = try a.restart()
        XCTAssertNotEqual(fresh, old)
        XCTAssertTrue(fresh.contains("a=ice-ufrag:"), fresh)
        let ra = await a.pair { mark }
        let rb = await b.pair { b.seenEvents.firstIndex { if case .remoteRestarted = $0 { return true }; return false } }
        XCTAssertNotNil(ra, "\(name): a pair after the restart")
        XCTAssertNotNil(rb, "\(name): b pair after the restart")
        XCTAssertEqual(ra?.relayed, relayed)
        XCTAssertEqual(rb?.relayed, relayed)
        let ab2 = await carries(a, b, Data("\(name): a to b after the restart".utf8))
        let ba2 = await carries(b, a, Data("\(name): b to a after the restart".utf8))
        XCTAssertTrue(ab2 && ba2, "\(name): after the restart: a->b \(ab2), b->a \(ba2)")
        XCTAssertEqual(a.errors + b.errors, [], "\(name): signalling errors")
        let restarts = [a, b].map { side in
            side.seenEvents.filter { if case .remoteRestarted = $0 { return true }; return false }.count
        }
        XCTAssertEqual(restarts, [0, 1], "\(name): b restarted once, because a did; a not again")

        // The network changed (the app's own monitor): a's new description goes out, b
        // restarts as for a restart, new pairs (relays allocated again), data again. On
        // loopback the built-in monitor does not run: no networkChanged event.
        try await Task.sleep(nanoseconds: 300_000_000)
        let markNet = a.seenEvents.count
        let beforeNet = a.pc.localDescription()
        let changed = try a.networkChanged()
        XCTAssertNotEqual(changed, beforeNet)
        XCTAssertTrue(changed.contains("a=ice-ufrag:") && !changed.contains("a=candidate:"), changed)
        let na = await a.pair { markNet }
        let nb = await b.pair {
            let restarted = b.seenEvents.enumerated().filter {
                if case .remoteRestarted = $0.element { return true }
                return false
            }
            return restarted.count > 1 ? restarted[1].offset : nil
        }
        XCTAssertNotNil(na, "\(name): a pair after the network change")
        XCTAssertNotNil(nb, "\(name): b pair after the network change")
        XCTAssertEqual(na?.relayed, relayed)
        XCTAssertEqual(nb?.relayed, relayed)
        let ab3 = await carries(a, b, Data("\(name): a to b after the network change".utf8))
        let ba3 = await carries(b, a, Data("\(name): b to a after the network change".utf8))
        XCTAssertTrue(ab3 && ba3, "\(name): after the network change: a->b \(ab3), b->a \(ba3)")
        XCTAssertEqual(a.errors + b.errors, [], "\(name): signalling errors")
        let followed = [a, b].map { side in
            side.seenEvents.filter { if case .remoteRestarted = $0 { return true }; return false }.count
        }
        XCTAssertEqual(followed, [0, 2], "\(name): b followed the network change; a did not restart again")
        let monitorEvents = (a.seenEvents + b.seenEvents).filter {
            if case .networkChanged = $0 { return true }
            return false
        }
        XCTAssertEqual(monitorEvents.count, 0, "\(name): no built-in monitor on loopback")

        // Keepalive policies, as an app's lifecycle sets them: both sides to the background,
        // then suspended, then back to the foreground; each read back at once, data both ways
        // in each. The resume probes the path, which answers: past the 4 s the probe has, no
        // restart (no networkChanged, no remoteRestarted) and the same pair.
        for side in [a, b] {
            XCTAssertEqual(side.pc.keepalivePolicy(), .foreground, "\(side.name): the default")
            XCTAssertEqual(try side.pc.keepaliveIntervalMs(), 25_000, "\(side.name): the adaptive start")
        }
        for policy in [KeepalivePolicy.background, .suspended, .foreground] {
            for side in [a, b] {
                try side.pc.setKeepalivePolicy(policy: policy)
                XCTAssertEqual(side.pc.keepalivePolicy(), policy, "\(side.name)")
            }
            let abk = await carries(a, b, Data("\(name): a to b, \(policy)".utf8))
            let bak = await carries(b, a, Data("\(name): b to a, \(policy)".utf8))
            XCTAssertTrue(abk && bak, "\(name): \(policy): a->b \(abk), b->a \(bak)")
        }
        let keptPairs = [a.pairs.count, b.pairs.count]
        try await Task.sleep(nanoseconds: 5_000_000_000)
        let restartsAfterResume = [a, b].map { side in
            side.seenEvents.filter {
                switch $0 {
                case .remoteRestarted, .networkChanged: return true
                default: return false
                }
            }.count
        }
        XCTAssertEqual(restartsAfterResume, [0, 2], "\(name): the resumed path answered: no restart")
        XCTAssertEqual([a.pairs.count, b.pairs.count], keptPairs, "\(name): the same pair after the resume")
        let abr = await carries(a, b, Data("\(name): a to b after the resume".utf8))
        let bar = await carries(b, a, Data("\(name): b to a after the resume".utf8))
        XCTAssertTrue(abr && bar, "\(name): after the resume: a->b \(abr), b->a \(bar)")

        // Closing: a waits for its end (closed, then the sequence ends); b just closes, and
        // its sequence ends too. Their sockets, or relays, are released.
        let locals = [na?.local ?? ra?.local ?? pa.local, nb?.local ?? rb?.local ?? pb.local]
        await a.pc.closeAndWait()
        XCTAssertTrue(a.pc.isClosed())
        let aEnded = await a.consumerEnded(10)
        XCTAssertTrue(aEnded, "\(name): a's sequence ended after closed")
        if case .closed(let error)? = a.closedEvent {
            XCTAssertNil(error, "\(name): closed without an error")
        } else {
            XCTFail("\(name): a's last event: \(String(describing: a.seenEvents.last))")
        }
        b.pc.close()
        b.pc.close()
        let bEnded = await b.consumerEnded(10)
        XCTAssertTrue(bEnded, "\(name): b's sequence ended after close()")
        XCTAssertTrue(b.pc.isClosed())
        await stopBoth()
        XCTAssertEqual(locals.count, 2)
        for (l, policy) in zip(locals, [policyA, policyB]) {
            if policy == .relayOnly {
                XCTAssertTrue(relayReleased(l), "\(name): the server freed the relayed \(l)")
            } else {
                let free = await until(5) { udpPortFree(l) }
                XCTAssertTrue(free, "\(name): the socket \(l) was freed")
            }
        }
    }

    func testPeerConnectionsConnectDirectly() async throws {
        try await pair("direct", .all, .all, relayed: false)
    }

    func testPeerConnectionsConnectThroughTheRelay() async throws {
        try await pair("relayed", .relayOnly, .noRelay, relayed: true)
    }

    /// Errors; cancelling the consuming task closes the connection (its socket is freed); so
    /// does releasing a sequence never iterated; close() is PinholeClosable's.
    func testPeerConnectionEventsOwnTheConnection() async throws {
        do {
            _ = try await peerConnectionEvents(config: peerConfig(controlling: true, policy: .all, stun: ["http://127.0.0.1:3478"]))
            XCTFail("a bad STUN URI: no error")
        } catch PinholeError.InvalidArgument {
        } catch {
            XCTFail("a bad STUN URI: \(error)")
        }
        do {
            _ = try await peerConnectionEvents(config: peerConfig(controlling: true, policy: .all, bind: "nope"))
            XCTFail("a bad bind address: no error")
        } catch PinholeError.InvalidArgument {
        } catch {
            XCTFail("a bad bind address: \(error)")
        }

        // Cancelling the consumer (after the first candidate) closes the connection.
        let events = try await peerConnectionEvents(config: peerConfig(controlling: true, policy: .noRelay))
        let pc = events.connection
        XCTAssertNil(pc.selectedPair())
        XCTAssertFalse(pc.isClosed())
        XCTAssertTrue(pc.localDescription().contains("a=ice-pwd:"))
        XCTAssertThrowsError(try pc.send(data: Data([1])), "send before a pair is selected")
        XCTAssertThrowsError(try pc.setRemoteDescription(description: "not a description"))
        XCTAssertThrowsError(try pc.addRemoteCandidate(candidate: "candidate:nope"))
        let defaults = PeerConnectionConfig(controlling: true, relayPolicy: .all)
        XCTAssertNil(defaults.keepalivePolicy, "the foreground by default")
        XCTAssertEqual(defaults.keepaliveIntervalMs, 0, "adaptive by default")
        var tooShort = peerConfig(controlling: true, policy: .noRelay)
        tooShort.keepaliveIntervalMs = 999
        do {
            _ = try await PeerConnection.create(config: tooShort, listener: IgnoringPeerListener())
            XCTFail("a keepalive interval under a second: no error")
        } catch PinholeError.InvalidArgument {
        } catch {
            XCTFail("a keepalive interval under a second: \(error)")
        }
        var fixed = peerConfig(controlling: true, policy: .noRelay)
        fixed.keepalivePolicy = .background
        fixed.keepaliveIntervalMs = 15_000
        let background = try await PeerConnection.create(config: fixed, listener: IgnoringPeerListener())
        XCTAssertEqual(background.keepalivePolicy(), .background, "the config's policy")
        XCTAssertEqual(try background.keepaliveIntervalMs(), 15_000, "the config's fixed interval")
        await background.closeAndWait()
        XCTAssertThrowsError(try background.setKeepalivePolicy(policy: .foreground), "closed: NotAvailable")
        let drained = Drain(events.stream)
        let gathered = await until { drained.firstCandidate != nil }
        XCTAssertTrue(gathered, "a first candidate: \(drained.events)")
        let first = drained.firstCandidate
        XCTAssertEqual(first.flatMap(candidateKind), "host", "\(drained.events)")
        let address = first.flatMap(candidateAddress) ?? ""
        XCTAssertFalse(pc.isClosed())
        drained.task.cancel()
        let closed = await until { pc.isClosed() }
        XCTAssertTrue(closed, "cancelling the consumer closed the connection")
        let freed = await until(5) { udpPortFree(address) }
        XCTAssertTrue(freed, "its socket \(address) was freed")

        // Releasing a sequence never iterated closes its connection.
        var unused: PeerConnectionEvents? = try await peerConnectionEvents(
            config: peerConfig(controlling: false, policy: .noRelay))
        weak var released = unused?.connection
        let stream = unused!.stream
        unused = nil
        XCTAssertNil(unused)
        XCTAssertNil(released, "nothing on the Swift side keeps the connection")
        let orphan = Drain(stream)
        let streamEnded = await until { orphan.ended }
        XCTAssertTrue(streamEnded, "the stream of a released connection ends: \(orphan.events)")
        orphan.task.cancel()

        // close() as PinholeClosable: at once, idempotent.
        let other = try await peerConnectionEvents(config: peerConfig(controlling: false, policy: .noRelay))
        let closable: PinholeClosable = other.connection
        let started = Date()
        closable.close()
        closable.close()
        XCTAssertLessThan(Date().timeIntervalSince(started), 0.5, "close() does not block")
        let rest = Drain(other.stream)
        let otherEnded = await until { rest.ended }
        XCTAssertTrue(otherEnded, "close() ends the sequence")
        rest.task.cancel()
        if case .closed? = rest.last {
        } else {
            XCTFail("the last event after close(): \(String(describing: rest.last))")
        }
        XCTAssertTrue(other.connection.isClosed())
    }
}
