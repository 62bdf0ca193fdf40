// Kotlin Flow adapters over pinhole's UniFFI listeners, shipped in the AAR (and compiled and
// tested on a host JVM by bindings/test.sh). Every flow is cold: collecting starts the
// operation, and the end of the collection (completion, an exception, cancellation of the
// collector) closes the underlying object, which ends it without blocking (the netcheck is
// cancelled, the mapping deleted and the TURN allocation deallocated in the background).
//
// Events are buffered without bound (they are few; TURN data is as fast as the peers send):
// the listener runs on pinhole's own thread and must never block it.
//
// Event evolution: the event types may gain variants in any release (not a breaking
// change). A `when` over them needs an `else` branch.
package dev.pinhole

import kotlinx.coroutines.channels.Channel
import kotlinx.coroutines.channels.awaitClose
import kotlinx.coroutines.flow.Flow
import kotlinx.coroutines.flow.buffer
import kotlinx.coroutines.flow.callbackFlow

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
