// The one verb for ending things in Swift: close().
//
// Every long-lived object of pinhole ends with `close()`:
//
//   NetcheckTask    cancels the netcheck (the listener gets PinholeError.Cancelled, unless
//                   the report came first)
//   PortMapper      deletes the mapping at the gateway and stops (in the background,
//                   bounded); the listener gets Released (or Unavailable)
//   TurnAllocation  deallocates on the server (in the background, bounded); the listener
//                   gets Deallocated (or Lost)
//   PeerConnection  closes the connection: its socket and port mapping are released (in
//                   the background, bounded); the listener gets Closed
//   StunServer      stops the server (only in a library built with the feature `server`)
//   PathMonitor     stops watching the network path; its states() streams end
//   AppLifecycle    stops following the app's lifecycle; its feeds end
//
// `close()` never blocks (call it from the main thread, or from inside a listener), and is
// idempotent. `await closeAndWait()` (PortMapper, TurnAllocation, PeerConnection) does the
// same and returns once the object has ended, its last event delivered; not from inside its
// own listener.
// `isClosed()` (`isFinished()` for a NetcheckTask) tells whether it has ended.
//
// Releasing the last reference to an object also ends it, as `close()` does; so does
// ending the iteration of the AsyncSequence that owns it (AsyncEvents.swift). Swift has no
// `use {}`: write `defer { mapper.close() }`.
import Foundation

/// An object of pinhole that ends with `close()` (see Closing.swift): `NetcheckTask`,
/// `PortMapper`, `TurnAllocation`, `PeerConnection`, `PathMonitor` (and `StunServer`, in a
/// library built with the feature `server`).
public protocol PinholeClosable: AnyObject {
    /// Ends the object without blocking; idempotent. Releasing the last reference does the
    /// same.
    func close()
}

extension NetcheckTask: PinholeClosable {}
extension PortMapper: PinholeClosable {}
extension TurnAllocation: PinholeClosable {}
extension PeerConnection: PinholeClosable {}
extension PathMonitor: PinholeClosable {}
extension AppLifecycle: PinholeClosable {}
