// A stand-in for Apple's UIKit, for the Linux test package only (never shipped): the few
// declarations of UIApplication that the package's UIApplicationLifecycleSource
// (ios/Sources/Pinhole/AppLifecycleUIKit.swift) uses, with the names and types of Apple's
// documentation (UIApplication is main-actor isolated; its notification names are not), so
// that the adapter type-checks and runs here. It proves consistency with this
// transcription, not with the real SDK: only Xcode compiles against that. `stubState` does
// not exist in UIKit; only the tests use it.
import Foundation

@MainActor
open class UIApplication {
    /// The app's state (`UIApplication.State`).
    public enum State: Int, Sendable {
        case active, inactive, background
    }

    public static let shared = UIApplication()

    /// Stub only: what `applicationState` says.
    public var stubState: State = .active

    public var applicationState: State { stubState }

    nonisolated public static let didEnterBackgroundNotification =
        Notification.Name("UIApplicationDidEnterBackgroundNotification")
    nonisolated public static let willEnterForegroundNotification =
        Notification.Name("UIApplicationWillEnterForegroundNotification")
}
