// The UIKit adapter of AppLifecycle: iOS (and tvOS, Mac Catalyst) only. It only turns
// UIApplication's notifications into moves; the logic it feeds is in AppLifecycle.swift and
// tested on Linux. Linux has no UIKit module: the Linux test package (bindings/swift)
// compiles this file against a stand-in transcribed from Apple's documentation
// (bindings/swift/Stubs/UIKit), which checks it against that transcription only; Xcode
// compiles it against the real framework. (macOS has no UIKit: there, feed AppLifecycle a
// source of your own, e.g. from NSWorkspace's willSleep and didWake notifications.)
#if canImport(UIKit) && !os(watchOS)
    import Foundation
    import UIKit

    /// The app's moves from UIKit: `UIApplication.willEnterForegroundNotification` (to the
    /// foreground) and `UIApplication.didEnterBackgroundNotification` (to the background).
    /// Its `isForeground` reads `UIApplication.shared.applicationState` on the main thread.
    @available(iOSApplicationExtension, unavailable)
    @available(tvOSApplicationExtension, unavailable)
    @available(macCatalystApplicationExtension, unavailable)
    public final class UIApplicationLifecycleSource: AppLifecycleSource, @unchecked Sendable {
        private let center: NotificationCenter
        private let lock = NSLock()
        private var observers: [NSObjectProtocol] = []

        /// Observes `center` (the default one: where UIKit posts).
        public init(center: NotificationCenter = .default) {
            self.center = center
        }

        /// Whether the app is not in the background (`.active` or `.inactive`: launching in
        /// front, or showing a system alert over it).
        public var isForeground: Bool {
            let read = { @MainActor () -> Bool in UIApplication.shared.applicationState != .background }
            if Thread.isMainThread {
                return MainActor.assumeIsolated(read)
            }
            return DispatchQueue.main.sync { MainActor.assumeIsolated(read) }
        }

        public func start(_ handler: @escaping @Sendable (Bool) -> Void) {
            let toForeground = center.addObserver(
                forName: UIApplication.willEnterForegroundNotification, object: nil, queue: nil
            ) { _ in handler(true) }
            let toBackground = center.addObserver(
                forName: UIApplication.didEnterBackgroundNotification, object: nil, queue: nil
            ) { _ in handler(false) }
            lock.lock()
            observers += [toForeground, toBackground]
            lock.unlock()
        }

        public func cancel() {
            lock.lock()
            let all = observers
            observers.removeAll()
            lock.unlock()
            for o in all { center.removeObserver(o) }
        }
    }

    @available(iOSApplicationExtension, unavailable)
    @available(tvOSApplicationExtension, unavailable)
    @available(macCatalystApplicationExtension, unavailable)
    extension AppLifecycle {
        /// The app's lifecycle from UIKit's notifications (create it on the main thread,
        /// e.g. in `application(_:didFinishLaunchingWithOptions:)`).
        public convenience init(center: NotificationCenter = .default) {
            self.init(source: UIApplicationLifecycleSource(center: center))
        }
    }
#endif
