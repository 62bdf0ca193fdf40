// AppLifecycle: the app's lifecycle as the system reports it (on iOS, UIApplication's
// didEnterBackground and willEnterForeground notifications, through
// UIApplicationLifecycleSource in AppLifecycleUIKit.swift), mapped to the keepalive policy
// of the peer connections fed to it: `.foreground` in front of the user, `.background`
// otherwise. Portable Swift, tested on Linux with a fake AppLifecycleSource; only the small
// UIKit adapter needs Apple's SDK.
//
// Why it exists: a peer connection's keepalives cost battery (each one wakes the radio). In
// the foreground they run as RFC 7675 says (every 4 to 6 s); in the background they only
// keep the path's NAT bindings alive, one per interval adapted to the NATs.
//
// Suspension: iOS suspends a backgrounded app without telling it. An app that knows it is
// about to be suspended (its background task ends: `endBackgroundTask`, or its expiration
// handler runs) calls `suspendConnections()` (or sets `.suspended` on a connection itself)
// just before: then nothing is sent while suspended and no consent deadline runs. Back in
// the foreground the connection probes its path and, if it is gone (the NAT forgot it, the
// peer left), restarts ICE by itself and reports `networkChanged` with the description to
// signal. Without it, a suspended app's connection simply sends nothing (it does not run),
// and on its return finds the path as `.background` left it.
import Foundation

/// The platform side of `AppLifecycle`: on iOS `UIApplicationLifecycleSource`.
public protocol AppLifecycleSource: AnyObject {
    /// Whether the app is in the foreground now; asked once, before `start`.
    var isForeground: Bool { get }
    /// Starts delivering the app's moves to `handler`: true when it comes to the foreground,
    /// false when it has gone to the background; one call at a time. Called once.
    func start(_ handler: @escaping @Sendable (Bool) -> Void)
    /// Stops delivering. Called once.
    func cancel()
}

/// Follows the app's lifecycle and keeps the keepalive policy of the peer connections fed
/// to it (`feed(_:)`) the app's: `.foreground` while it is in front of the user,
/// `.background` once it has left, and `.suspended` after `suspendConnections()` until it
/// moves again. Create one per app (`AppLifecycle()` on iOS, on the main thread) and feed
/// it each connection. `PeerConnection.setKeepalivePolicy` returns at once; it is called on
/// the thread that delivers the moves (the main thread, for UIKit's notifications).
public final class AppLifecycle: @unchecked Sendable {
    private final class Fed {
        weak var connection: PeerConnection?
        var ended = false
        init(_ c: PeerConnection) { connection = c }
    }

    private let source: AppLifecycleSource
    private let lock = NSLock()
    /// Held while a policy is being told, so that the connections hear the moves in order.
    private let telling = NSLock()
    private var current: KeepalivePolicy
    private var fed: [Fed] = []
    private var closed = false

    /// Follows `source` from now on; its `isForeground` gives the policy to start with.
    public init(source: AppLifecycleSource) {
        self.source = source
        current = source.isForeground ? .foreground : .background
        source.start { [weak self] foreground in self?.receive(foreground ? .foreground : .background) }
    }

    deinit { close() }

    /// The policy the app's state maps to now.
    public var policy: KeepalivePolicy {
        lock.lock()
        defer { lock.unlock() }
        return current
    }

    /// Keeps `connection`'s keepalive policy the app's: set at once to `policy`, then at each
    /// move. The connection is held weakly; its feed ends when it has closed
    /// (`setKeepalivePolicy` throws `NotAvailable`), or with `close()`.
    public func feed(_ connection: PeerConnection) {
        telling.lock()
        defer { telling.unlock() }
        lock.lock()
        guard !closed else { lock.unlock(); return }
        let f = Fed(connection)
        fed.append(f)
        let p = current
        lock.unlock()
        tell(p, [(f, connection)])
    }

    /// The app is about to be suspended (its background task is ending): every connection
    /// fed goes `.suspended` (no keepalives, no consent deadline) until the app moves again.
    /// iOS gives no notification at the moment it suspends an app: call this just before
    /// ending your background task (or in its expiration handler).
    public func suspendConnections() {
        receive(.suspended)
    }

    /// A move of the app (one at a time).
    func receive(_ p: KeepalivePolicy) {
        telling.lock()
        defer { telling.unlock() }
        lock.lock()
        guard !closed, p != current else { lock.unlock(); return }
        current = p
        fed.removeAll { $0.connection == nil || $0.ended }
        let targets = fed.compactMap { f in f.connection.map { (f, $0) } }
        lock.unlock()
        tell(p, targets)
    }

    private func tell(_ p: KeepalivePolicy, _ targets: [(Fed, PeerConnection)]) {
        for (f, c) in targets {
            do {
                try c.setKeepalivePolicy(policy: p)
            } catch PinholeError.NotAvailable {
                // Closed: its feed ends.
                lock.lock()
                f.ended = true
                lock.unlock()
            } catch {
                // Nothing else is thrown; the next move tries again.
            }
        }
    }

    /// Stops following the app; the feeds end (the connections keep their last policy).
    /// Idempotent; releasing the last reference does the same.
    public func close() {
        lock.lock()
        let wasOpen = !closed
        closed = true
        fed.removeAll()
        lock.unlock()
        if wasOpen { source.cancel() }
    }

    /// The connections fed now (for tests).
    var fedCount: Int {
        lock.lock()
        defer { lock.unlock() }
        return fed.filter { $0.connection != nil && !$0.ended }.count
    }
}
