// swift-tools-version:6.0
// The Swift bindings as a SwiftPM package, for Linux. bindings/test.sh fills in, in a copy
// under bindings/build/swift, the generated sources (Sources/Pinhole/Pinhole.swift,
// Sources/PinholeFFI/PinholeFFI.h) and the package's hand-written Swift, which lives in
// ios/Sources/Pinhole (the AsyncSequence adapters, PathMonitor, AppLifecycle, close()), and runs
// `swift test` there; nothing generated is committed.
import PackageDescription

let package = Package(
    name: "Pinhole",
    products: [
        .library(name: "Pinhole", targets: ["Pinhole"])
    ],
    targets: [
        // The C side of the UniFFI scaffolding; its module map links libpinhole_ffi.
        .systemLibrary(name: "PinholeFFI", path: "Sources/PinholeFFI"),
        // A stand-in for Apple's Network framework (Linux only, never shipped): with it,
        // the package's NWPathMonitor adapter (under `#if canImport(Network)`) compiles and
        // runs here against a transcription of Apple's documented API.
        .target(name: "Network", path: "Stubs/Network", swiftSettings: [.swiftLanguageMode(.v5)]),
        // The same for UIKit's UIApplication: the package's lifecycle adapter (under
        // `#if canImport(UIKit)`) compiles and runs here against a transcription.
        .target(name: "UIKit", path: "Stubs/UIKit", swiftSettings: [.swiftLanguageMode(.v5)]),
        // Swift 6.0.3 crashes compiling UniFFI's async foreign-trait helper in Swift 6 mode.
        .target(
            name: "Pinhole", dependencies: ["PinholeFFI", "Network", "UIKit"], path: "Sources/Pinhole",
            swiftSettings: [.swiftLanguageMode(.v5)]),
        .testTarget(
            name: "PinholeTests", dependencies: ["Pinhole", "Network", "UIKit"], path: "Tests/PinholeTests",
            swiftSettings: [.swiftLanguageMode(.v5)]),
    ]
)
