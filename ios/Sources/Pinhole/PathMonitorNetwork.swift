// The NWPathMonitor adapter of PathMonitor: Apple platforms only (Network.framework). It
// only converts an NWPath into a PathSnapshot; the logic it feeds is in PathMonitor.swift
// and tested on Linux. Linux has no Network module: the Linux test package
// (bindings/swift) compiles this file against a stand-in transcribed from Apple's
// documentation (bindings/swift/Stubs/Network), which checks it against that transcription
// only; Xcode compiles it against the real framework.
#if canImport(Network)
    import Foundation
    import Network

    /// Path snapshots from `NWPathMonitor`: status, available interfaces (preferred
    /// first), gateways, expensive and constrained.
    public final class NWPathSource: PathSource, @unchecked Sendable {
        private let monitor: NWPathMonitor
        private let queue: DispatchQueue

        /// Watches every interface, on `queue`.
        public init(queue: DispatchQueue = DispatchQueue(label: "dev.pinhole.path-monitor")) {
            monitor = NWPathMonitor()
            self.queue = queue
        }

        public func start(_ handler: @escaping @Sendable (PathSnapshot) -> Void) {
            monitor.pathUpdateHandler = { path in handler(PathSnapshot(path)) }
            monitor.start(queue: queue)
        }

        public func cancel() {
            monitor.cancel()
        }
    }

    extension PathMonitor {
        /// A monitor of `NWPathMonitor`'s paths (call `start()`).
        public convenience init(queue: DispatchQueue = DispatchQueue(label: "dev.pinhole.path-monitor")) {
            self.init(source: NWPathSource(queue: queue))
        }
    }

    extension PathSnapshot {
        /// The snapshot of an `NWPath`.
        public init(_ path: NWPath) {
            let status: Status
            switch path.status {
            case .satisfied: status = .satisfied
            case .requiresConnection: status = .requiresConnection
            case .unsatisfied: status = .unsatisfied
            @unknown default: status = .unsatisfied
            }
            let interfaces = path.availableInterfaces.map { i -> Interface in
                let type: InterfaceType
                switch i.type {
                case .wifi: type = .wifi
                case .cellular: type = .cellular
                case .wiredEthernet: type = .wiredEthernet
                case .loopback: type = .loopback
                case .other: type = .other
                @unknown default: type = .other
                }
                return Interface(name: i.name, type: type)
            }
            let gateways = path.gateways.compactMap { endpoint -> Gateway? in
                guard case .hostPort(let host, _) = endpoint else { return nil }
                switch host {
                case .ipv4(let a):
                    return IPAddress(bytes: [UInt8](a.rawValue)).map { Gateway(ip: $0.description, interface: a.interface?.name) }
                case .ipv6(let a):
                    return IPAddress(bytes: [UInt8](a.rawValue)).map { Gateway(ip: $0.description, interface: a.interface?.name) }
                case .name:
                    return nil
                @unknown default:
                    return nil
                }
            }
            self.init(status: status, interfaces: interfaces, gateways: gateways,
                      isExpensive: path.isExpensive, isConstrained: path.isConstrained)
        }
    }
#endif
