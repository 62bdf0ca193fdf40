// swift-tools-version:6.0
// The Swift bindings as a SwiftPM package. bindings/test.sh fills in the generated sources
// (Sources/Pinhole/Pinhole.swift, Sources/PinholeFFI/PinholeFFI.h) in a copy under
// bindings/build/swift and runs `swift test` there; nothing generated is committed.
import PackageDescription

let package = Package(
    name: "Pinhole",
    products: [
        .library(name: "Pinhole", targets: ["Pinhole"])
    ],
    targets: [
        // The C side of the UniFFI scaffolding; its module map links libpinhole_ffi.
        .systemLibrary(name: "PinholeFFI", path: "Sources/PinholeFFI"),
        // Swift 6.0.3 crashes compiling UniFFI's async foreign-trait helper in Swift 6 mode.
        .target(
            name: "Pinhole", dependencies: ["PinholeFFI"], path: "Sources/Pinhole",
            swiftSettings: [.swiftLanguageMode(.v5)]),
        .testTarget(
            name: "PinholeTests", dependencies: ["Pinhole"], path: "Tests/PinholeTests",
            swiftSettings: [.swiftLanguageMode(.v5)]),
    ]
)
