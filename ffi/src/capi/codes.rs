//! Result codes, sizes and the integer enumerations of the C API. Enumerations are plain
//! `int` typedefs with `#define`d values, so that any value a C caller passes is defined
//! behaviour (an unknown one gives `PINHOLE_ERR_INVALID`).

use std::ffi::c_int;

/// Success.
pub const PINHOLE_OK: c_int = 0;
/// An argument is invalid: a NULL pointer, a malformed address or URI, a value out of
/// range, a missing required callback.
pub const PINHOLE_ERR_INVALID: c_int = -1;
/// The caller's buffer is too small (it then holds an empty string).
pub const PINHOLE_ERR_TOO_SMALL: c_int = -2;
/// No STUN server could be resolved or none was usable.
pub const PINHOLE_ERR_NO_SERVER: c_int = -3;
/// Unsupported, such as a `stuns:` (TLS) URI for a netcheck.
pub const PINHOLE_ERR_UNSUPPORTED: c_int = -4;
/// A socket or another operating-system operation failed.
pub const PINHOLE_ERR_IO: c_int = -5;
/// The operation was cancelled.
pub const PINHOLE_ERR_CANCELLED: c_int = -6;
/// What was asked for does not exist (yet), such as the address of a mapping not made.
pub const PINHOLE_ERR_NOT_AVAILABLE: c_int = -7;
/// An internal error (a bug; a caught panic).
pub const PINHOLE_ERR_INTERNAL: c_int = -8;
/// The server rejected the credentials (TURN 401 with credentials, 441).
pub const PINHOLE_ERR_AUTH: c_int = -9;
/// The server refused the request (TURN 403, 437, 440, 442, 443, 486, 508, ...).
pub const PINHOLE_ERR_REFUSED: c_int = -10;
/// The server did not answer in time.
pub const PINHOLE_ERR_TIMEOUT: c_int = -11;

/// The size of a buffer that holds any socket address as text with its NUL
/// (`[v6%scope]:port` is at most 64 characters).
pub const PINHOLE_ADDRESS_MAX: usize = 72;

/// The most bytes one `pinhole_turn_send` carries (what fits a UDP datagram to the
/// server with the TURN headers).
pub const PINHOLE_TURN_DATA_MAX: usize = 65_400;

/// The most bytes one `pinhole_peer_send` carries (what fits a UDP datagram, through a
/// relay too). Keep datagrams at 1 200 bytes or less to fit every path's MTU: a larger
/// one is sent with the don't-fragment bit and may be dropped.
pub const PINHOLE_PEER_DATA_MAX: usize = 65_400;

/// Log levels: `PINHOLE_LOG_*`.
pub type pinhole_log_level = c_int;
/// Very detailed tracing.
pub const PINHOLE_LOG_TRACE: pinhole_log_level = 0;
/// Debugging detail.
pub const PINHOLE_LOG_DEBUG: pinhole_log_level = 1;
/// Informational.
pub const PINHOLE_LOG_INFO: pinhole_log_level = 2;
/// Something unexpected that pinhole handled.
pub const PINHOLE_LOG_WARN: pinhole_log_level = 3;
/// An operation failed.
pub const PINHOLE_LOG_ERROR: pinhole_log_level = 4;
/// Nothing: logging off.
pub const PINHOLE_LOG_NONE: pinhole_log_level = 5;

/// A yes/no answer that may be unknown: `PINHOLE_UNKNOWN`, `PINHOLE_NO`, `PINHOLE_YES`.
pub type pinhole_tristate = c_int;
/// Not determined.
pub const PINHOLE_UNKNOWN: pinhole_tristate = -1;
/// No.
pub const PINHOLE_NO: pinhole_tristate = 0;
/// Yes.
pub const PINHOLE_YES: pinhole_tristate = 1;

/// A NAT behaviour in RFC 4787 terms: `PINHOLE_BEHAVIOUR_*`.
pub type pinhole_behaviour = c_int;
/// Not determined.
pub const PINHOLE_BEHAVIOUR_UNKNOWN: pinhole_behaviour = 0;
/// Endpoint-independent.
pub const PINHOLE_BEHAVIOUR_ENDPOINT_INDEPENDENT: pinhole_behaviour = 1;
/// Address-dependent.
pub const PINHOLE_BEHAVIOUR_ADDRESS_DEPENDENT: pinhole_behaviour = 2;
/// Address-and-port-dependent.
pub const PINHOLE_BEHAVIOUR_ADDRESS_AND_PORT_DEPENDENT: pinhole_behaviour = 3;

/// How a NAT allocates external ports: `PINHOLE_PORT_ALLOCATION_*`.
pub type pinhole_port_allocation = c_int;
/// Not tested.
pub const PINHOLE_PORT_ALLOCATION_NOT_TESTED: pinhole_port_allocation = 0;
/// Tested, but too few answers to tell.
pub const PINHOLE_PORT_ALLOCATION_UNKNOWN: pinhole_port_allocation = 1;
/// The local port is kept (also what no NAT looks like).
pub const PINHOLE_PORT_ALLOCATION_PRESERVING: pinhole_port_allocation = 2;
/// Each new mapping gets the previous one's port plus a step (`port_allocation_delta`).
pub const PINHOLE_PORT_ALLOCATION_SEQUENTIAL: pinhole_port_allocation = 3;
/// Unpredictable.
pub const PINHOLE_PORT_ALLOCATION_RANDOM: pinhole_port_allocation = 4;

/// What a netcheck progress event says: `PINHOLE_NETCHECK_EVENT_*`.
pub type pinhole_netcheck_event_kind = c_int;
/// A server answered (`server`, `mapped`, `rtt_us`).
pub const PINHOLE_NETCHECK_EVENT_SERVER_REPLIED: pinhole_netcheck_event_kind = 0;
/// A server did not answer (`server`).
pub const PINHOLE_NETCHECK_EVENT_SERVER_TIMED_OUT: pinhole_netcheck_event_kind = 1;
/// The mapping behaviour is known (`behaviour`).
pub const PINHOLE_NETCHECK_EVENT_MAPPING: pinhole_netcheck_event_kind = 2;
/// The filtering behaviour is known (`behaviour`).
pub const PINHOLE_NETCHECK_EVENT_FILTERING: pinhole_netcheck_event_kind = 3;
/// Hairpinning is known (`hairpins`).
pub const PINHOLE_NETCHECK_EVENT_HAIRPINNING: pinhole_netcheck_event_kind = 4;

/// A mapping's transport: `PINHOLE_PROTOCOL_*`.
pub type pinhole_protocol = c_int;
/// UDP (the default: 0).
pub const PINHOLE_PROTOCOL_UDP: pinhole_protocol = 0;
/// TCP.
pub const PINHOLE_PROTOCOL_TCP: pinhole_protocol = 1;

/// A port-mapping protocol: `PINHOLE_METHOD_*`.
pub type pinhole_method = c_int;
/// Any: PCP, then NAT-PMP, then UPnP (the default: 0; never reported).
pub const PINHOLE_METHOD_ANY: pinhole_method = 0;
/// PCP, RFC 6887.
pub const PINHOLE_METHOD_PCP: pinhole_method = 1;
/// NAT-PMP, RFC 6886.
pub const PINHOLE_METHOD_NATPMP: pinhole_method = 2;
/// UPnP IGD.
pub const PINHOLE_METHOD_UPNP: pinhole_method = 3;

/// What a port-mapping event says: `PINHOLE_PORTMAP_EVENT_*`.
pub type pinhole_portmap_event_kind = c_int;
/// A mapping exists (`mapping`).
pub const PINHOLE_PORTMAP_EVENT_MAPPED: pinhole_portmap_event_kind = 0;
/// Renewed with the same external address (`mapping`).
pub const PINHOLE_PORTMAP_EVENT_RENEWED: pinhole_portmap_event_kind = 1;
/// Renewed with another external address or port (`old_mapping`, `mapping`).
pub const PINHOLE_PORTMAP_EVENT_CHANGED: pinhole_portmap_event_kind = 2;
/// Lost (gateway restart, expiry, refusal, or with `verify_stun` traffic no longer
/// arrives through it); being re-created (`reason`).
pub const PINHOLE_PORTMAP_EVENT_LOST: pinhole_portmap_event_kind = 3;
/// No mapping can be made; the mapper stopped (`reason`). A last event.
pub const PINHOLE_PORTMAP_EVENT_UNAVAILABLE: pinhole_portmap_event_kind = 4;
/// Deleted after `pinhole_portmap_release`; the mapper stopped. A last event.
pub const PINHOLE_PORTMAP_EVENT_RELEASED: pinhole_portmap_event_kind = 5;
/// Traffic from the STUN reflector arrived through the mapping (`mapping`; only with
/// `verify_stun`).
pub const PINHOLE_PORTMAP_EVENT_VERIFIED: pinhole_portmap_event_kind = 6;
/// The gateway grants the mapping but traffic does not arrive through it, even after
/// deleting and adding it again (`mapping`; only with `verify_stun`). It is kept, and
/// verified again after the interval.
pub const PINHOLE_PORTMAP_EVENT_NOT_FORWARDING: pinhole_portmap_event_kind = 7;
/// The mapping could not be verified (`reason`; only with `verify_stun`): the reflector
/// did not answer, does not implement RFC 5780, or sees this host at another address.
/// With no answer it is tried again after the interval; otherwise verification stops.
pub const PINHOLE_PORTMAP_EVENT_UNVERIFIED: pinhole_portmap_event_kind = 8;

/// The relayed address family a TURN allocation asks for: `PINHOLE_TURN_FAMILY_*`.
pub type pinhole_turn_family = c_int;
/// IPv4 (the default: 0).
pub const PINHOLE_TURN_FAMILY_IPV4: pinhole_turn_family = 0;
/// IPv6 (RFC 8656 REQUESTED-ADDRESS-FAMILY).
pub const PINHOLE_TURN_FAMILY_IPV6: pinhole_turn_family = 1;
/// Both (ADDITIONAL-ADDRESS-FAMILY): two relayed addresses.
pub const PINHOLE_TURN_FAMILY_DUAL: pinhole_turn_family = 2;

/// What a TURN event says: `PINHOLE_TURN_EVENT_*`.
pub type pinhole_turn_event_kind = c_int;
/// The allocation exists (`relayed`, `relayed_other`, `mapped`, `lifetime_s`).
pub const PINHOLE_TURN_EVENT_ALLOCATED: pinhole_turn_event_kind = 0;
/// Refreshed (`lifetime_s`).
pub const PINHOLE_TURN_EVENT_REFRESHED: pinhole_turn_event_kind = 1;
/// A permission for a peer IP is installed or refreshed (`peer`: the IP).
pub const PINHOLE_TURN_EVENT_PERMISSION: pinhole_turn_event_kind = 2;
/// A permission could not be installed (`peer`: the IP, `result`, `reason`).
pub const PINHOLE_TURN_EVENT_PERMISSION_FAILED: pinhole_turn_event_kind = 3;
/// A channel is bound or refreshed (`peer`, `channel`).
pub const PINHOLE_TURN_EVENT_CHANNEL: pinhole_turn_event_kind = 4;
/// A channel could not be bound (`peer`, `result`, `reason`).
pub const PINHOLE_TURN_EVENT_CHANNEL_FAILED: pinhole_turn_event_kind = 5;
/// Data for a peer could not be sent (`peer`, `result`, `reason`), such as
/// `PINHOLE_ERR_NOT_AVAILABLE` without a permission for it.
pub const PINHOLE_TURN_EVENT_SEND_FAILED: pinhole_turn_event_kind = 6;
/// The allocation failed or is gone (`result`, `reason`): `PINHOLE_ERR_AUTH` for wrong
/// credentials, `PINHOLE_ERR_REFUSED`, `PINHOLE_ERR_TIMEOUT`, `PINHOLE_ERR_IO` for a
/// broken connection. A last event.
pub const PINHOLE_TURN_EVENT_LOST: pinhole_turn_event_kind = 7;
/// Deallocated after `pinhole_turn_deallocate`. A last event.
pub const PINHOLE_TURN_EVENT_DEALLOCATED: pinhole_turn_event_kind = 8;

/// A peer connection's ICE state: `PINHOLE_ICE_STATE_*` (WebRTC's names).
pub type pinhole_ice_state = c_int;
/// Waiting for the peer's description or candidates.
pub const PINHOLE_ICE_STATE_NEW: pinhole_ice_state = 0;
/// Checking pairs; none works yet.
pub const PINHOLE_ICE_STATE_CHECKING: pinhole_ice_state = 1;
/// A pair works: data flows.
pub const PINHOLE_ICE_STATE_CONNECTED: pinhole_ice_state = 2;
/// The controlling side nominated the pair: ICE has settled. Data flows.
pub const PINHOLE_ICE_STATE_COMPLETED: pinhole_ice_state = 3;
/// Every pair failed after the peer's end of candidates: restart or give up.
pub const PINHOLE_ICE_STATE_FAILED: pinhole_ice_state = 4;
/// Consent was lost on every working pair (RFC 7675); checks go on while candidates
/// remain. A restart may bring the path back.
pub const PINHOLE_ICE_STATE_DISCONNECTED: pinhole_ice_state = 5;
/// The connection is closed.
pub const PINHOLE_ICE_STATE_CLOSED: pinhole_ice_state = 6;

/// Which paths a peer connection may use: `PINHOLE_RELAY_*`.
pub type pinhole_relay_policy = c_int;
/// Direct paths and, where they fail, the relays (the default).
pub const PINHOLE_RELAY_ALL: pinhole_relay_policy = 0;
/// Only through a TURN relay (no host or server-reflexive candidate is offered).
pub const PINHOLE_RELAY_ONLY: pinhole_relay_policy = 1;
/// Never through a relay.
pub const PINHOLE_RELAY_NONE: pinhole_relay_policy = 2;

/// How hard a peer connection works to keep an idle path alive: `PINHOLE_KEEPALIVE_*`
/// (`pinhole_peer_set_keepalive_policy`, `pinhole_peer_config.keepalive_policy`).
pub type pinhole_keepalive_policy = c_int;
/// The app is in front of its user (the default: 0): consent checks every 4 to 6 s on the
/// path (RFC 7675: a dead path is noticed within 30 s), TURN allocations checked every 5 s.
pub const PINHOLE_KEEPALIVE_FOREGROUND: pinhole_keepalive_policy = 0;
/// The app is in the background: the fewest packets that keep the path's NAT bindings
/// alive, one check per keepalive interval (shared with the peer), an interval that adapts
/// to the NATs (or `keepalive_interval_ms`). A dead path takes two intervals to notice.
pub const PINHOLE_KEEPALIVE_BACKGROUND: pinhole_keepalive_policy = 1;
/// The app is about to be suspended: no keepalives and no consent deadline. On the way
/// back the path is probed at once; if it does not answer within 4 s, ICE restarts and
/// `cb_local_description` brings the new description to signal.
pub const PINHOLE_KEEPALIVE_SUSPENDED: pinhole_keepalive_policy = 2;
