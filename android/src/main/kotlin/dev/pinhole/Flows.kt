// Kotlin Flow adapters over pinhole's UniFFI listeners, shipped in the AAR (and compiled and
// tested on a host JVM by bindings/test.sh). Every flow is cold: collecting starts the
// operation, and the end of the collection (completion, an exception, cancellation of the
// collector) closes the underlying object, which ends it without blocking (the netcheck is
// cancelled, the mapping deleted, the TURN allocation deallocated and the peer connection's
// socket and port mapping released in the background). The one hot exception is
// [PeerConnectionSession.events] (from [openPeerConnection]), which ends the same way.
//
// Events are buffered without bound (they are few; TURN and peer data is as fast as the
// peers send): the listener runs on pinhole's own thread and must never block it.
//
// Event evolution: the event types may gain variants in any release (not a breaking
// change). A `when` over them needs an `else` branch.
package dev.pinhole

import java.util.concurrent.atomic.AtomicBoolean
import kotlinx.coroutines.channels.Channel
import kotlinx.coroutines.channels.SendChannel
import kotlinx.coroutines.channels.awaitClose
import kotlinx.coroutines.flow.Flow
import kotlinx.coroutines.flow.buffer
import kotlinx.coroutines.flow.callbackFlow
import kotlinx.coroutines.flow.flow

/** What a netcheck flow emits: progress, then the report, last. */
sealed class NetcheckUpdate {
    /** Progress (zero or more, before the report). */
    data class Progress(val progress: NetcheckProgress) : NetcheckUpdate()

    /** The report; the flow completes after it. */
    data class Done(val report: NetcheckReport) : NetcheckUpdate()
}

/**
 * Runs a netcheck while collected: its progress, then its report (the flow then
 * completes). A failure ends the flow with its [PinholeException]. Cancelling the collector
 * cancels the netcheck (the [NetcheckTask] is closed). [onStart] receives the task (for
 * [NetcheckTask.isFinished]; it is closed by the flow, do not close it yourself).
 */
fun netcheckUpdates(config: NetcheckConfig, onStart: (NetcheckTask) -> Unit = {}): Flow<NetcheckUpdate> =
    callbackFlow {
        val task = startNetcheck(config, object : NetcheckListener {
            override fun onProgress(progress: NetcheckProgress) {
                trySend(NetcheckUpdate.Progress(progress))
            }

            override fun onReport(report: NetcheckReport) {
                trySend(NetcheckUpdate.Done(report))
                channel.close()
            }

            override fun onError(error: PinholeException) {
                channel.close(error)
            }
        })
        try {
            onStart(task)
        } catch (e: Throwable) {
            task.close()
            throw e
        }
        awaitClose { task.close() }
    }.buffer(Channel.UNLIMITED)

/** Whether a port-mapping event is the mapper's last. */
val PortMappingEvent.isLast: Boolean
    get() = this is PortMappingEvent.Released || this is PortMappingEvent.Unavailable

/**
 * Keeps a port mapping while collected: the mapper's events; the flow completes after the
 * last one (`Released` or `Unavailable`). Cancelling the collector closes the
 * [PortMapper], which deletes the mapping in the background (bounded). [onStart] receives
 * the mapper, for [PortMapper.current] and [PortMapper.networkChanged] (or
 * [NetworkMonitor.feed]); it is closed by the flow, do not close it yourself.
 */
fun portMappingEvents(config: PortMappingConfig, onStart: (PortMapper) -> Unit = {}): Flow<PortMappingEvent> =
    callbackFlow {
        val mapper = mapPort(config, object : PortMappingListener {
            override fun onEvent(event: PortMappingEvent) {
                trySend(event)
                if (event.isLast) channel.close()
            }
        })
        try {
            onStart(mapper)
        } catch (e: Throwable) {
            mapper.close()
            throw e
        }
        awaitClose { mapper.close() }
    }.buffer(Channel.UNLIMITED)

/** What a TURN flow emits: the allocation's events and its peers' data, in order. */
sealed class TurnUpdate {
    /** An event; after `Lost` or `Deallocated` the flow completes. */
    data class Event(val event: TurnEvent) : TurnUpdate()

    /** A datagram from [peer] (`IP:port`) through the relay. */
    class Data(val peer: String, val data: ByteArray) : TurnUpdate()
}

/** Whether a TURN event is the allocation's last. */
val TurnEvent.isLast: Boolean
    get() = this is TurnEvent.Lost || this is TurnEvent.Deallocated

/**
 * Holds a TURN allocation while collected: allocates (a failure ends the flow with its
 * [PinholeException]), then emits its events (from `Allocated` on) and its peers' data; the
 * flow completes after `Lost` or `Deallocated`. Cancelling the collector closes the
 * [TurnAllocation], which deallocates in the background (bounded). [onAllocated] receives
 * the allocation, to create permissions, bind channels and send; it is closed by the flow,
 * do not close it yourself.
 */
fun turnUpdates(config: TurnConfig, onAllocated: (TurnAllocation) -> Unit = {}): Flow<TurnUpdate> =
    callbackFlow {
        val allocation = allocateTurn(config, object : TurnListener {
            override fun onEvent(event: TurnEvent) {
                trySend(TurnUpdate.Event(event))
                if (event.isLast) channel.close()
            }

            override fun onData(peer: String, data: ByteArray) {
                trySend(TurnUpdate.Data(peer, data))
            }
        })
        try {
            onAllocated(allocation)
        } catch (e: Throwable) {
            allocation.close()
            throw e
        }
        awaitClose { allocation.close() }
    }.buffer(Channel.UNLIMITED)

/** Whether a peer connection event is the connection's last: `Closed`. */
val PeerConnectionEvent.isLast: Boolean
    get() = this is PeerConnectionEvent.Closed

/** Hands the connection's events to a channel (closed after `Closed`), never blocking. */
private class ChannelPeerListener(private val channel: SendChannel<PeerConnectionEvent>) : PeerConnectionListener {
    override fun onEvent(event: PeerConnectionEvent) {
        channel.trySend(event)
        if (event.isLast) channel.close()
    }
}

/**
 * Runs a peer connection while collected: creates it (a failure ends the flow with its
 * [PinholeException]), hands it to [onStart] (to send its [PeerConnection.localDescription]
 * to the peer, and later to set the peer's description and candidates, send and restart),
 * then emits its events: `LocalCandidate`s to trickle, `GatheringComplete`,
 * `StateChanged`, `SelectedPair`, `Data` from the peer...; the flow completes after
 * `Closed`. Cancelling the collector closes the connection (its socket and port mapping
 * are released in the background). The flow owns the connection: do not close it
 * yourself, and do not use it after the flow has ended.
 */
fun peerConnectionEvents(
    config: PeerConnectionConfig,
    onStart: suspend (PeerConnection) -> Unit = {},
): Flow<PeerConnectionEvent> =
    callbackFlow {
        val connection = newPeerConnection(config, ChannelPeerListener(channel))
        try {
            onStart(connection)
        } catch (e: Throwable) {
            connection.close()
            throw e
        }
        awaitClose { connection.close() }
    }.buffer(Channel.UNLIMITED)

/**
 * A peer connection and its events (see [openPeerConnection]), for code that wants the
 * connection at hand before collecting. [events] can be collected once; it completes after
 * `Closed`. Ending the collection (cancellation, completion, an exception) closes the
 * connection, and so does [close]. Dropping the session without collecting or closing it
 * leaves the connection to the garbage collector's cleaner, which closes it too, later:
 * close it.
 */
class PeerConnectionSession internal constructor(
    /** The connection: descriptions, candidates, `send`, `restart`, `selectedPair`. */
    val connection: PeerConnection,
    private val channel: Channel<PeerConnectionEvent>,
) : AutoCloseable {
    private val collected = AtomicBoolean(false)

    /** The connection's events, in order; collect once. */
    val events: Flow<PeerConnectionEvent> = flow {
        check(collected.compareAndSet(false, true)) { "a PeerConnectionSession's events are collected once" }
        try {
            for (event in channel) emit(event)
        } finally {
            close()
        }
    }

    /** Closes the connection (without blocking; idempotent): everything is released. */
    override fun close() {
        channel.close()
        connection.close()
    }
}

/**
 * Creates a peer connection whose events arrive through [PeerConnectionSession.events]
 * (buffered without bound until collected). Throws the [PinholeException] of an invalid
 * config or a connection that cannot start.
 */
suspend fun openPeerConnection(config: PeerConnectionConfig): PeerConnectionSession {
    val channel = Channel<PeerConnectionEvent>(Channel.UNLIMITED)
    val connection = try {
        newPeerConnection(config, ChannelPeerListener(channel))
    } catch (e: Throwable) {
        channel.close()
        throw e
    }
    return PeerConnectionSession(connection, channel)
}

/** The connection's constructor (UniFFI's async constructor). */
private suspend fun newPeerConnection(config: PeerConnectionConfig, listener: PeerConnectionListener): PeerConnection =
    PeerConnection.create(config, listener)
