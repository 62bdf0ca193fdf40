// A stand-in for Apple's Network framework, for the Linux test package only (never shipped):
// the few declarations of NWPathMonitor, NWPath, NWInterface, NWEndpoint, IPv4Address and
// IPv6Address that the package's NWPathSource (ios/Sources/Pinhole/PathMonitorNetwork.swift)
// uses, with the names and types of Apple's documentation, so that NWPathSource type-checks
// and its conversion runs here. It proves consistency with this transcription, not with the
// real SDK: only Xcode compiles against that. The `stub` initialisers and `stubPath` do not
// exist in Apple's framework; only the tests use them.
import Dispatch
import Foundation

public struct NWInterface: Hashable, Sendable {
    public enum InterfaceType: Hashable, Sendable {
        case other, wifi, cellular, wiredEthernet, loopback
    }

    public let type: InterfaceType
    public let name: String
    public let index: Int

    /// Stub only.
    public init(stubName name: String, type: InterfaceType, index: Int = 1) {
        self.name = name
        self.type = type
        self.index = index
    }
}

public struct IPv4Address: Hashable, Sendable {
    public var rawValue: Data
    public var interface: NWInterface?

    public init?(_ rawValue: Data, _ interface: NWInterface? = nil) {
        guard rawValue.count == 4 else { return nil }
        self.rawValue = rawValue
        self.interface = interface
    }
}

public struct IPv6Address: Hashable, Sendable {
    public var rawValue: Data
    public var interface: NWInterface?

    public init?(_ rawValue: Data, _ interface: NWInterface? = nil) {
        guard rawValue.count == 16 else { return nil }
        self.rawValue = rawValue
        self.interface = interface
    }
}

public enum NWEndpoint: Hashable, Sendable {
    public enum Host: Hashable, Sendable {
        case name(String, NWInterface?)
        case ipv4(IPv4Address)
        case ipv6(IPv6Address)
    }

    public struct Port: Hashable, Sendable {
        public var rawValue: UInt16
        public init?(rawValue: UInt16) { self.rawValue = rawValue }
    }

    case hostPort(host: NWEndpoint.Host, port: NWEndpoint.Port)
    case service(name: String, type: String, domain: String, interface: NWInterface?)
    case unix(path: String)
    case url(URL)
}

public struct NWPath: Equatable, Sendable {
    public enum Status: Equatable, Sendable {
        case satisfied, unsatisfied, requiresConnection
    }

    public let status: NWPath.Status
    public let availableInterfaces: [NWInterface]
    public let gateways: [NWEndpoint]
    public let isExpensive: Bool
    public let isConstrained: Bool

    /// Stub only.
    public init(stubStatus status: Status, interfaces: [NWInterface], gateways: [NWEndpoint],
                isExpensive: Bool = false, isConstrained: Bool = false)
    {
        self.status = status
        availableInterfaces = interfaces
        self.gateways = gateways
        self.isExpensive = isExpensive
        self.isConstrained = isConstrained
    }
}

public final class NWPathMonitor: @unchecked Sendable {
    /// Stub only: the path every monitor reports when started.
    nonisolated(unsafe) public static var stubPath = NWPath(stubStatus: .unsatisfied, interfaces: [], gateways: [])
    /// Stub only: how many monitors were cancelled.
    nonisolated(unsafe) public static var stubCancelled = 0

    public var pathUpdateHandler: (@Sendable (_ newPath: NWPath) -> Void)?
    public private(set) var currentPath = NWPathMonitor.stubPath

    public init() {}

    public func start(queue: DispatchQueue) {
        let path = NWPathMonitor.stubPath
        currentPath = path
        let handler = pathUpdateHandler
        queue.async { handler?(path) }
    }

    public func cancel() {
        NWPathMonitor.stubCancelled += 1
    }
}
