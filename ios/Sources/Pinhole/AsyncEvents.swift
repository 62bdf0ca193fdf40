// AsyncSequence adapters over the UniFFI listeners: a netcheck's progress, a port mapper's
// events, a TURN allocation's events and data, a peer connection's events. Each sequence
// owns its object (a NetcheckTask, PortMapper, TurnAllocation or PeerConnection, also
// reachable through it): ending the iteration (cancelling the consuming Task, or leaving
// the `for await` loop) closes the object, and so does releasing the sequence without
// iterating it. The sequence ends after the object's last event.
//
// Ownership: the listener (held by Rust) holds the stream's continuation; the stream's
// onTermination holds the object only weakly, so that no reference cycle through Rust
// keeps an object alive that the app has let go of. The sequence and its iterator hold the
// object strongly.
import Foundation

// MARK: netcheck

/// An item of a netcheck's sequence: progress, then the report (the last item).
///
/// New cases may be added in any release: switch over it with a `default` branch.
public enum NetcheckUpdate: Sendable {
    /// Progress (zero or more times).
    case progress(NetcheckProgress)
    /// The report; the sequence ends after it.
    case report(NetcheckReport)
}

/// A running netcheck's progress and report (see `netcheckUpdates(config:)`); a failure
/// (`PinholeError`) is thrown by the iteration. Iterate it once.
public struct NetcheckUpdates: AsyncSequence, Sendable {
    public typealias Element = NetcheckUpdate

    /// The netcheck; closed when the iteration ends early.
    public let task: NetcheckTask
    private let stream: AsyncThrowingStream<NetcheckUpdate, Error>

    init(task: NetcheckTask, stream: AsyncThrowingStream<NetcheckUpdate, Error>) {
        self.task = task
        self.stream = stream
    }

    public struct AsyncIterator: AsyncIteratorProtocol {
        let task: NetcheckTask
        var base: AsyncThrowingStream<NetcheckUpdate, Error>.AsyncIterator

        public mutating func next() async throws -> NetcheckUpdate? {
            try await base.next()
        }
    }

    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(task: task, base: stream.makeAsyncIterator())
    }
}

private final class NetcheckStreamListener: NetcheckListener, @unchecked Sendable {
    let continuation: AsyncThrowingStream<NetcheckUpdate, Error>.Continuation
    init(_ c: AsyncThrowingStream<NetcheckUpdate, Error>.Continuation) { continuation = c }

    func onProgress(progress: NetcheckProgress) { continuation.yield(.progress(progress)) }

    func onReport(report: NetcheckReport) {
        continuation.yield(.report(report))
        continuation.finish()
    }

    func onError(error: PinholeError) { continuation.finish(throwing: error) }
}

/// Starts a netcheck whose progress and report arrive as an `AsyncSequence`: `for try
/// await update in try netcheckUpdates(config: c)`. Ending the iteration early (cancelling
/// the Task, leaving the loop) closes the netcheck; a failure, `PinholeError.Cancelled`
/// included, is thrown. Throws at once for an invalid config.
public func netcheckUpdates(config: NetcheckConfig) throws -> NetcheckUpdates {
    let (stream, continuation) = AsyncThrowingStream<NetcheckUpdate, Error>.makeStream()
    let task = try startNetcheck(config: config, listener: NetcheckStreamListener(continuation))
    continuation.onTermination = { [weak task] _ in task?.close() }
    return NetcheckUpdates(task: task, stream: stream)
}

// MARK: port mapping

/// A port mapper's events (see `mapPortEvents(config:)`). The sequence ends after
/// `Released` or `Unavailable`. Iterate it once.
public struct PortMappingEvents: AsyncSequence, Sendable {
    public typealias Element = PortMappingEvent

    /// The mapper (`current()`, `networkChanged(info:)`); closed when the iteration ends
    /// early.
    public let mapper: PortMapper
    private let stream: AsyncStream<PortMappingEvent>

    init(mapper: PortMapper, stream: AsyncStream<PortMappingEvent>) {
        self.mapper = mapper
        self.stream = stream
    }

    public struct AsyncIterator: AsyncIteratorProtocol {
        let mapper: PortMapper
        var base: AsyncStream<PortMappingEvent>.AsyncIterator

        public mutating func next() async -> PortMappingEvent? {
            await base.next()
        }
    }

    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(mapper: mapper, base: stream.makeAsyncIterator())
    }
}

private final class MappingStreamListener: PortMappingListener, @unchecked Sendable {
    let continuation: AsyncStream<PortMappingEvent>.Continuation
    init(_ c: AsyncStream<PortMappingEvent>.Continuation) { continuation = c }

    func onEvent(event: PortMappingEvent) {
        continuation.yield(event)
        switch event {
        case .released, .unavailable: continuation.finish()
        default: break
        }
    }
}

/// Starts mapping a port; its events arrive as an `AsyncSequence`: `for await event in
/// try mapPortEvents(config: c)`. Ending the iteration early (cancelling the Task, leaving
/// the loop) closes the mapper, which deletes the mapping. Throws at once for an invalid
/// config.
public func mapPortEvents(config: PortMappingConfig) throws -> PortMappingEvents {
    let (stream, continuation) = AsyncStream<PortMappingEvent>.makeStream()
    let mapper = try mapPort(config: config, listener: MappingStreamListener(continuation))
    continuation.onTermination = { [weak mapper] _ in mapper?.close() }
    return PortMappingEvents(mapper: mapper, stream: stream)
}

extension PathMonitor {
    /// `mapPortEvents(config:)` toward the current state's gateway, fed network changes
    /// from then on (see `mapPort(config:listener:)`).
    public func mapPortEvents(config: PortMappingConfig) throws -> PortMappingEvents {
        let (stream, continuation) = AsyncStream<PortMappingEvent>.makeStream()
        let mapper = try mapPort(config: config, listener: MappingStreamListener(continuation))
        continuation.onTermination = { [weak mapper] _ in mapper?.close() }
        return PortMappingEvents(mapper: mapper, stream: stream)
    }
}

// MARK: TURN

/// An item of a TURN allocation's sequence: an event, or a datagram from a peer.
///
/// New cases may be added in any release: switch over it with a `default` branch.
public enum TurnUpdate: Sendable {
    /// An event; after `Lost` or `Deallocated` the sequence ends.
    case event(TurnEvent)
    /// A datagram from `peer` (`IP:port`) through the relay.
    case data(peer: String, data: Data)
}

/// A TURN allocation's events and peers' data (see `allocateTurnUpdates(config:)`). The
/// sequence ends after `Lost` or `Deallocated`. Iterate it once.
public struct TurnUpdates: AsyncSequence, Sendable {
    public typealias Element = TurnUpdate

    /// The allocation (`relayedAddress()`, `createPermission`, `send`...); closed when the
    /// iteration ends early.
    public let allocation: TurnAllocation
    private let stream: AsyncStream<TurnUpdate>

    init(allocation: TurnAllocation, stream: AsyncStream<TurnUpdate>) {
        self.allocation = allocation
        self.stream = stream
    }

    public struct AsyncIterator: AsyncIteratorProtocol {
        let allocation: TurnAllocation
        var base: AsyncStream<TurnUpdate>.AsyncIterator

        public mutating func next() async -> TurnUpdate? {
            await base.next()
        }
    }

    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(allocation: allocation, base: stream.makeAsyncIterator())
    }
}

private final class TurnStreamListener: TurnListener, @unchecked Sendable {
    let continuation: AsyncStream<TurnUpdate>.Continuation
    init(_ c: AsyncStream<TurnUpdate>.Continuation) { continuation = c }

    func onEvent(event: TurnEvent) {
        continuation.yield(.event(event))
        switch event {
        case .lost, .deallocated: continuation.finish()
        default: break
        }
    }

    func onData(peer: String, data: Data) { continuation.yield(.data(peer: peer, data: data)) }
}

/// Allocates a relayed address (as `allocateTurn`) whose events and peers' data arrive as
/// an `AsyncSequence` (from `Allocated` on). Ending the iteration early (cancelling the
/// Task, leaving the loop) closes the allocation, which deallocates it on the server.
/// `bufferingPolicy` bounds what is kept while the consumer is slow (default: everything;
/// `.bufferingNewest(n)` drops the oldest items, events included).
public func allocateTurnUpdates(
    config: TurnConfig,
    bufferingPolicy: AsyncStream<TurnUpdate>.Continuation.BufferingPolicy = .unbounded
) async throws -> TurnUpdates {
    let (stream, continuation) = AsyncStream<TurnUpdate>.makeStream(bufferingPolicy: bufferingPolicy)
    let allocation: TurnAllocation
    do {
        allocation = try await allocateTurn(config: config, listener: TurnStreamListener(continuation))
    } catch {
        continuation.finish()
        throw error
    }
    continuation.onTermination = { [weak allocation] _ in allocation?.close() }
    return TurnUpdates(allocation: allocation, stream: stream)
}

// MARK: peer connection

/// A peer connection's events (see `peerConnectionEvents(config:)`): `localCandidate`s to
/// trickle to the peer, `gatheringComplete`, `stateChanged`, `selectedPair`, `data` from the
/// peer...; the sequence ends after `closed`. Iterate it once.
public struct PeerConnectionEvents: AsyncSequence, Sendable {
    public typealias Element = PeerConnectionEvent

    /// The connection (`localDescription()`, `setRemoteDescription`, `addRemoteCandidate`,
    /// `send`, `restart()`...); closed when the iteration ends early.
    public let connection: PeerConnection
    /// The events as the underlying `AsyncStream` (iterate this sequence or the stream,
    /// once; iterating the sequence also keeps the connection alive).
    public let stream: AsyncStream<PeerConnectionEvent>

    init(connection: PeerConnection, stream: AsyncStream<PeerConnectionEvent>) {
        self.connection = connection
        self.stream = stream
    }

    public struct AsyncIterator: AsyncIteratorProtocol {
        let connection: PeerConnection
        var base: AsyncStream<PeerConnectionEvent>.AsyncIterator

        public mutating func next() async -> PeerConnectionEvent? {
            await base.next()
        }
    }

    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(connection: connection, base: stream.makeAsyncIterator())
    }
}

private final class PeerStreamListener: PeerConnectionListener, @unchecked Sendable {
    let continuation: AsyncStream<PeerConnectionEvent>.Continuation
    init(_ c: AsyncStream<PeerConnectionEvent>.Continuation) { continuation = c }

    func onEvent(event: PeerConnectionEvent) {
        continuation.yield(event)
        if case .closed = event { continuation.finish() }
    }
}

/// Creates a peer connection (as `PeerConnection.create(config:listener:)`) whose events
/// arrive as an `AsyncSequence` over an `AsyncStream`: send
/// `events.connection.localDescription()` to the peer, then `for await event in events`.
/// Ending the iteration early (cancelling the Task; leaving the loop once the sequence is
/// released) closes the connection, which releases its socket and port mapping; so does
/// releasing a sequence never iterated. Throws (`PinholeError`) for an
/// invalid config or a connection that cannot start. `bufferingPolicy` bounds what is kept
/// while the consumer is slow (default: everything; `.bufferingNewest(n)` drops the oldest
/// items, events included).
public func peerConnectionEvents(
    config: PeerConnectionConfig,
    bufferingPolicy: AsyncStream<PeerConnectionEvent>.Continuation.BufferingPolicy = .unbounded
) async throws -> PeerConnectionEvents {
    let (stream, continuation) = AsyncStream<PeerConnectionEvent>.makeStream(bufferingPolicy: bufferingPolicy)
    let connection: PeerConnection
    do {
        connection = try await makePeerConnection(config: config, listener: PeerStreamListener(continuation))
    } catch {
        continuation.finish()
        throw error
    }
    continuation.onTermination = { [weak connection] _ in connection?.close() }
    return PeerConnectionEvents(connection: connection, stream: stream)
}

extension PathMonitor {
    /// `peerConnectionEvents(config:bufferingPolicy:)` with `noNetworkMonitor` set, fed
    /// network changes from then on (see `feed(_:signal:)`): on each new network the
    /// connection restarts and `signal` gets the new local description, for the peer.
    public func peerConnectionEvents(
        config: PeerConnectionConfig,
        bufferingPolicy: AsyncStream<PeerConnectionEvent>.Continuation.BufferingPolicy = .unbounded,
        signal: @escaping @Sendable (String) -> Void
    ) async throws -> PeerConnectionEvents {
        var c = config
        c.noNetworkMonitor = true
        let events = try await Pinhole.peerConnectionEvents(config: c, bufferingPolicy: bufferingPolicy)
        feed(events.connection, signal: signal)
        return events
    }
}

/// The connection's constructor (UniFFI's async constructor).
private func makePeerConnection(config: PeerConnectionConfig, listener: PeerConnectionListener) async throws
    -> PeerConnection
{
    try await PeerConnection.create(config: config, listener: listener)
}
