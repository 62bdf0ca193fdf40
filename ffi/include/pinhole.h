/*
 * pinhole: NAT traversal. The C API.
 *
 * Conventions (libjuice's): opaque handles made by *_start (pinhole_turn_allocate) from
 * a config struct that holds the callbacks and a user_ptr, freed by *_destroy; functions
 * return PINHOLE_OK (0), a non-negative length, or a negative PINHOLE_ERR_* code
 * (pinhole_strerror names it); a NULL where a pointer is required gives
 * PINHOLE_ERR_INVALID; every entry point catches Rust panics (PINHOLE_ERR_INTERNAL).
 * pinhole_last_error() says why the calling thread's last call failed (a thread-local
 * message, so that no existing signature changes and threads never see each other's).
 *
 * Strings: asked-for strings are written into caller buffers (PINHOLE_ADDRESS_MAX bytes
 * always hold an address); strings and structs handed to callbacks live until the
 * callback returns.
 *
 * Config structs: each *_start (pinhole_turn_allocate) takes a config struct that begins
 * with `size_t struct_size`. Initialise it with its init function, which zeroes it, sets
 * the defaults and struct_size, then set the fields you need:
 *     pinhole_turn_config cfg;
 *     pinhole_turn_config_init(&cfg, sizeof cfg);
 * A config is copied by *_start: it need not outlive the call.
 *
 * Versions and ABI: PINHOLE_VERSION_MAJOR/MINOR/PATCH and PINHOLE_VERSION_NUMBER
 * ((major << 16) | (minor << 8) | patch) are this header's version; pinhole_version_number()
 * is the library's at run time. The ABI version is the major version, or 0.minor before
 * 1.0; it is in the shared library's SONAME (libpinhole_ffi.so.0.1 for 0.1.x on Linux;
 * libpinhole_ffi.so on Android, whose packages carry no versioned names). A program checks
 * at start-up that pinhole_version_number() has the ABI version of the
 * PINHOLE_VERSION_NUMBER it was built with. Within one ABI version:
 *  - functions, result codes, enumeration values, event kinds and log levels are only
 *    added (handle an unknown code or value: it may appear); no signature changes;
 *  - a config struct only grows at its end, and says its size: fields are only appended
 *    (each struct's first version ends at user_ptr), a new field's zero means what the
 *    struct meant before it existed, and the library reads only the fields that lie
 *    within the caller's struct_size, giving the others their defaults. So a program built
 *    against an older header runs unchanged with a newer library, and one built against a
 *    newer header runs with an older library as long as it leaves the fields that library
 *    does not know at zero (else PINHOLE_ERR_UNSUPPORTED). A struct_size that cannot be
 *    the struct's (below its first version, above 4096, not a multiple of sizeof(size_t):
 *    typically a config not initialised) is PINHOLE_ERR_INVALID, with pinhole_last_error()
 *    saying so; nothing beyond struct_size is ever read;
 *  - a struct the library hands to a callback (report, event) may grow at its end: read
 *    its fields, never copy it by sizeof or allocate one.
 *
 * Threads: every function may be called from any thread. Each netcheck, port mapping,
 * TURN allocation and peer connection (pinhole_peer_create) runs on a thread of its own
 * (the handle's thread, kept until the handle is destroyed), and all its callbacks run
 * there, one at a time, in order, never on the thread that called *_start. The STUN server (pinhole_server_*) has a thread too, but no
 * callbacks. On a live handle, its functions may be called from several threads at once
 * and from its own callbacks, except that *_destroy or *_destroy_async is the last call on
 * it: no other call on the handle may run concurrently with it or follow it (its own
 * callbacks excepted, as said below). A callback may call any function here: on its own
 * handle, also *_destroy or *_destroy_async (the handle is not used after that); on
 * another handle too, but a blocking *_destroy of another handle blocks this handle's
 * thread meanwhile (prefer *_destroy_async there). Two ways to destroy a handle:
 *  - *_destroy blocks: from another thread it waits until a running callback returns and
 *    the handle's ending is over (deleting a mapping: up to about 3 s; deallocating a TURN
 *    allocation: up to about 4 s, when the gateway or server does not answer); after it
 *    returns no callback runs and everything is freed, so the callbacks' data may be freed
 *    at once. From the handle's own callback it returns at once (the ending finishes in
 *    the background; no further callback runs).
 *  - *_destroy_async(handle, cb, user_ptr) never blocks (for UI threads and event loops):
 *    it returns at once, also while a callback of the handle runs or the server does not
 *    answer. A callback already running (or just starting) when it is called may still
 *    run; then no callback of the handle runs, the ending finishes, the handle is freed
 *    and cb(user_ptr) runs exactly once, on the handle's thread, never inside the call:
 *    free the callbacks' data in cb, not before. It is a function of its own rather than a
 *    non-blocking *_destroy because *_destroy's promise (nothing runs after it returns)
 *    needs the wait that *_destroy_async avoids; instead, it says when with cb.
 * The log callback may run on any thread, several at once, and must not call back into
 * pinhole.
 *
 * Link: pkg-config --cflags --libs pinhole (libpinhole_ffi); for the static library,
 * libpinhole_ffi.a and pkg-config --static --libs-only-l's system libraries.
 *
 * The embedded STUN server (pinhole_server_*) is only in a library built with the crate
 * feature `server` (cargo build -p pinhole-ffi --features server); define
 * PINHOLE_FEATURE_SERVER before including this header to declare it.
 */

#ifndef PINHOLE_H
#define PINHOLE_H

/* Generated by cbindgen from ffi/src/capi: do not edit (bindings/generate.sh header). */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

// Success.
#define PINHOLE_OK 0

// An argument is invalid: a NULL pointer, a malformed address or URI, a value out of
// range, a missing required callback.
#define PINHOLE_ERR_INVALID -1

// The caller's buffer is too small (it then holds an empty string).
#define PINHOLE_ERR_TOO_SMALL -2

// No STUN server could be resolved or none was usable.
#define PINHOLE_ERR_NO_SERVER -3

// Unsupported, such as a `stuns:` (TLS) URI for a netcheck.
#define PINHOLE_ERR_UNSUPPORTED -4

// A socket or another operating-system operation failed.
#define PINHOLE_ERR_IO -5

// The operation was cancelled.
#define PINHOLE_ERR_CANCELLED -6

// What was asked for does not exist (yet), such as the address of a mapping not made.
#define PINHOLE_ERR_NOT_AVAILABLE -7

// An internal error (a bug; a caught panic).
#define PINHOLE_ERR_INTERNAL -8

// The server rejected the credentials (TURN 401 with credentials, 441).
#define PINHOLE_ERR_AUTH -9

// The server refused the request (TURN 403, 437, 440, 442, 443, 486, 508, ...).
#define PINHOLE_ERR_REFUSED -10

// The server did not answer in time.
#define PINHOLE_ERR_TIMEOUT -11

// The size of a buffer that holds any socket address as text with its NUL
// (`[v6%scope]:port` is at most 64 characters).
#define PINHOLE_ADDRESS_MAX 72

// The most bytes one `pinhole_turn_send` carries (what fits a UDP datagram to the
// server with the TURN headers).
#define PINHOLE_TURN_DATA_MAX 65400

// The most bytes one `pinhole_peer_send` carries (what fits a UDP datagram, through a
// relay too). Keep datagrams at 1 200 bytes or less to fit every path's MTU: a larger
// one is sent with the don't-fragment bit and may be dropped.
#define PINHOLE_PEER_DATA_MAX 65400

// The major version of the header (Cargo's version of pinhole-ffi).
#define PINHOLE_VERSION_MAJOR 0

// The minor version of the header.
#define PINHOLE_VERSION_MINOR 1

// The patch version of the header.
#define PINHOLE_VERSION_PATCH 0

// The header's version as one number, `(major << 16) | (minor << 8) | patch`
// (0x000100 for 0.1.0), for `#if PINHOLE_VERSION_NUMBER >= ...`; compare it with
// `pinhole_version_number()`, the library's at run time.
#define PINHOLE_VERSION_NUMBER (((PINHOLE_VERSION_MAJOR << 16) | (PINHOLE_VERSION_MINOR << 8)) | PINHOLE_VERSION_PATCH)

// A running netcheck (opaque).
//
// Threads: its callbacks (progress, then done) run on the netcheck's own thread, one at a
// time, in order. `pinhole_netcheck_cancel` may be called from any thread, several at
// once, and from the callbacks; `pinhole_netcheck_destroy` (blocking) or
// `pinhole_netcheck_destroy_async` is the last call, from any thread or from a callback.
typedef struct pinhole_netcheck pinhole_netcheck;

// A peer connection (opaque).
//
// Threads: its callbacks run on the connection's own thread, one at a time, in order.
// Every other function may be called from any thread, several at once, and from the
// callbacks (`pinhole_peer_restart`, `pinhole_peer_network_changed` and
// `pinhole_peer_get_keepalive_interval_ms` from a callback are applied at once);
// `pinhole_peer_destroy`
// or `pinhole_peer_destroy_async` is the last call, from any thread or from a callback.
typedef struct pinhole_peer pinhole_peer;

// A port mapping kept alive until released (opaque).
//
// Threads: its event callback runs on the mapper's own thread, one event at a time, in
// order. `pinhole_portmap_get_external` and `pinhole_portmap_release` may be called from
// any thread, several at once, and from the callback; `pinhole_portmap_destroy` (blocking
// up to about 3 s while a mapping is deleted) or `pinhole_portmap_destroy_async` is the
// last call, from any thread or from the callback.
typedef struct pinhole_portmap pinhole_portmap;

#if defined(PINHOLE_FEATURE_SERVER)
// A running STUN server (opaque).
//
// Threads: it serves on a thread of its own and has no callbacks.
// `pinhole_server_address_count` and `pinhole_server_get_address` may be called from any
// thread, several at once; `pinhole_server_destroy` (which waits a moment for the thread)
// or `pinhole_server_destroy_async` is the last call, from any thread.
typedef struct pinhole_server pinhole_server;
#endif

// A TURN allocation (opaque).
//
// Threads: its event and data callbacks run on the allocation's own thread, one at a time
// (never an event and data at once), in order. `pinhole_turn_get_relayed`, `_get_mapped`,
// `_create_permission`, `_bind_channel`, `_send` and `_deallocate` may be called from any
// thread, several at once, and from the callbacks; `pinhole_turn_destroy` (blocking up to
// about 4 s while the allocation is released) or `pinhole_turn_destroy_async` is the last
// call, from any thread or from a callback.
typedef struct pinhole_turn pinhole_turn;

// Log levels: `PINHOLE_LOG_*`.
typedef int pinhole_log_level;

// Receives log records: the level, the emitting module (`target`) and the message,
// both valid only during the call. Runs on any thread, possibly concurrently.
typedef void (*pinhole_log_cb)(pinhole_log_level level,
                               const char *target,
                               const char *message,
                               void *user_ptr);

// What a netcheck progress event says: `PINHOLE_NETCHECK_EVENT_*`.
typedef int pinhole_netcheck_event_kind;

// A NAT behaviour in RFC 4787 terms: `PINHOLE_BEHAVIOUR_*`.
typedef int pinhole_behaviour;

// A netcheck progress event; valid only during the callback.
typedef struct pinhole_netcheck_event {
  // What happened.
  pinhole_netcheck_event_kind kind;
  // The server (`stun:host:port`) for server events, else NULL.
  const char *server;
  // `SERVER_REPLIED`: the public address the server saw ("" if none).
  char mapped[PINHOLE_ADDRESS_MAX];
  // `SERVER_REPLIED`: the round-trip time, microseconds.
  uint32_t rtt_us;
  // `MAPPING` and `FILTERING`: the behaviour.
  pinhole_behaviour behaviour;
  // `HAIRPINNING`: whether the NAT hairpins.
  bool hairpins;
} pinhole_netcheck_event;

// Progress: called zero or more times before the done callback.
typedef void (*pinhole_netcheck_progress_cb)(struct pinhole_netcheck *netcheck,
                                             const struct pinhole_netcheck_event *event,
                                             void *user_ptr);

// A yes/no answer that may be unknown: `PINHOLE_UNKNOWN`, `PINHOLE_NO`, `PINHOLE_YES`.
typedef int pinhole_tristate;

// What one STUN server told us.
typedef struct pinhole_server_report {
  // The server as configured (`stun:host:port`).
  const char *label;
  // Its resolved address.
  char address[PINHOLE_ADDRESS_MAX];
  // Whether it answered.
  bool answered;
  // The round-trip time of the first Binding test, microseconds (0 if no answer).
  uint32_t rtt_us;
  // The public (mapped) address it saw ("" if none).
  char mapped[PINHOLE_ADDRESS_MAX];
  // Its OTHER-ADDRESS ("" unless it supports RFC 5780).
  char other_address[PINHOLE_ADDRESS_MAX];
} pinhole_server_report;

// The gateway probe of a netcheck: which port-mapping protocols the gateway speaks.
typedef struct pinhole_gateway_probe {
  // Whether the probe was asked for (false with `no_portmap`; then the rest is empty).
  bool probed;
  // The gateway probed ("" if it could not be determined).
  char gateway[PINHOLE_ADDRESS_MAX];
  // PCP (RFC 6887).
  pinhole_tristate pcp;
  // NAT-PMP (RFC 6886).
  pinhole_tristate natpmp;
  // UPnP IGD.
  pinhole_tristate upnp;
  // The external address NAT-PMP reported ("" if none).
  char natpmp_external[PINHOLE_ADDRESS_MAX];
  // The external address UPnP reported ("" if none).
  char upnp_external[PINHOLE_ADDRESS_MAX];
  // Why the gateway could not be probed; NULL if it was.
  const char *error;
} pinhole_gateway_probe;

// How a NAT allocates external ports: `PINHOLE_PORT_ALLOCATION_*`.
typedef int pinhole_port_allocation;

// A netcheck's outcome. Everything it points to lives until the callback returns: copy
// what you keep. Unknown is not false: undetermined answers are `PINHOLE_UNKNOWN` or
// `PINHOLE_BEHAVIOUR_UNKNOWN`.
typedef struct pinhole_netcheck_report {
  // Whether any server answered over UDP.
  bool udp;
  // Mapping behaviour (RFC 4787 §4.1).
  pinhole_behaviour mapping;
  // Filtering behaviour (RFC 4787 §5).
  pinhole_behaviour filtering;
  // Whether the NAT hairpins.
  pinhole_tristate hairpinning;
  // Whether a middlebox rewrites addresses inside STUN payloads.
  pinhole_tristate alg_rewrites;
  // Whether the binding lifetime was measured (`binding_lifetime` in the config).
  bool lifetime_measured;
  // The longest idle interval after which the binding still worked, ms; -1: none.
  int64_t lifetime_at_least_ms;
  // The shortest idle interval after which it was gone, ms; -1: it outlived them all.
  int64_t lifetime_less_than_ms;
  // The RFC 5780 server used for the behaviour tests; NULL if none.
  const char *rfc5780_server;
  // The distinct public addresses seen, in order of discovery.
  const char *const *public_addresses;
  // How many.
  size_t public_address_count;
  // Per-server results.
  const struct pinhole_server_report *servers;
  // How many.
  size_t server_count;
  // What could not be determined, and why.
  const char *const *notes;
  // How many.
  size_t note_count;
  // The gateway probe.
  struct pinhole_gateway_probe portmap;
  // How the NAT allocates external ports (appended: read it from a library that has it).
  pinhole_port_allocation port_allocation;
  // `PINHOLE_PORT_ALLOCATION_SEQUENTIAL`: the step between new mappings; else 0.
  int32_t port_allocation_delta;
} pinhole_netcheck_report;

// The outcome: called exactly once, last (unless the handle was destroyed first), with
// `PINHOLE_OK` and the report, or an error code (`PINHOLE_ERR_CANCELLED` after
// `pinhole_netcheck_cancel`) and NULL.
typedef void (*pinhole_netcheck_done_cb)(struct pinhole_netcheck *netcheck,
                                         int result,
                                         const struct pinhole_netcheck_report *report,
                                         void *user_ptr);

// What a netcheck probes, and where its results go. Initialise it with
// `pinhole_netcheck_config_init(&config, sizeof config)`, then set what you need: only
// `cb_done` is required.
typedef struct pinhole_netcheck_config {
  // The size of this struct as the program was built (`sizeof`), set by
  // `pinhole_netcheck_config_init`: how the library tells which fields the program knows.
  size_t struct_size;
  // STUN servers as `stun:host[:port]` URIs (RFC 7064; at most 32, each at most 500
  // bytes). With `stun_server_count` 0: the public default servers.
  const char *const *stun_servers;
  // How many.
  size_t stun_server_count;
  // The overall budget, milliseconds; 0: the default (10 s); at most one hour.
  uint32_t timeout_ms;
  // Skip the hairpinning test.
  bool no_hairpin;
  // Also measure the binding lifetime (RFC 5780 §4.6); takes about three minutes.
  bool binding_lifetime;
  // Do not probe the gateway for PCP, NAT-PMP and UPnP.
  bool no_portmap;
  // Progress (optional).
  pinhole_netcheck_progress_cb cb_progress;
  // The outcome (required).
  pinhole_netcheck_done_cb cb_done;
  // Passed to the callbacks.
  void *user_ptr;
  // (The struct's first version ends above, at `user_ptr`; fields from here on are
  // appended ones, read only when `struct_size` covers them, else their default.)
  //
  // The gateway to probe (an IP address); NULL: the default route's gateway.
  const char *gateway;
} pinhole_netcheck_config;

// Called once a handle destroyed by `pinhole_*_destroy_async` is gone: its work has ended
// (a mapping deleted, an allocation released, or given up on), no callback of it runs any
// more, and it is freed. Runs on the handle's own thread, never inside the
// `*_destroy_async` call.
typedef void (*pinhole_destroyed_cb)(void *user_ptr);

// A TURN server for a peer connection (an element of `pinhole_peer_config.turn_servers`).
typedef struct pinhole_peer_turn_server {
  // `turn:host[:port][?transport=udp|tcp]` or `turns:host[:port]` (RFC 7065; at most
  // 500 bytes). `turns:` needs a library built with the `tls` feature, else
  // `PINHOLE_ERR_UNSUPPORTED`.
  const char *uri;
  // The user name of the long-term credentials (1 to 512 bytes).
  const char *username;
  // The password (never logged).
  const char *password;
} pinhole_peer_turn_server;

// Which paths a peer connection may use: `PINHOLE_RELAY_*`.
typedef int pinhole_relay_policy;

// A local candidate to signal to the peer (trickle, RFC 8838): the SDP line
// `a=candidate:...` (without line ending), valid only during the call.
typedef void (*pinhole_peer_candidate_cb)(struct pinhole_peer *peer,
                                          const char *candidate,
                                          void *user_ptr);

// No more local candidates: signal `a=end-of-candidates`.
typedef void (*pinhole_peer_gathering_done_cb)(struct pinhole_peer *peer, void *user_ptr);

// A peer connection's ICE state: `PINHOLE_ICE_STATE_*` (WebRTC's names).
typedef int pinhole_ice_state;

// The ICE state changed (`PINHOLE_ICE_STATE_*`).
typedef void (*pinhole_peer_state_cb)(struct pinhole_peer *peer,
                                      pinhole_ice_state state,
                                      void *user_ptr);

// The pair of candidates data goes on; valid only during a callback, or filled by
// `pinhole_peer_get_selected_pair`.
typedef struct pinhole_peer_pair {
  // Our candidate's address, `IP:port` (a relayed candidate's relayed address).
  char local[PINHOLE_ADDRESS_MAX];
  // The peer's candidate's address, `IP:port`.
  char remote[PINHOLE_ADDRESS_MAX];
  // Whether data goes through a TURN relay (either candidate is relayed).
  bool relayed;
  // The round-trip time the pair's check measured, milliseconds; -1 if unknown.
  int32_t rtt_ms;
} pinhole_peer_pair;

// Data now goes on this pair (the first working pair, the nominated one, a move).
typedef void (*pinhole_peer_selected_pair_cb)(struct pinhole_peer *peer,
                                              const struct pinhole_peer_pair *pair,
                                              void *user_ptr);

// A datagram from the peer: `len` bytes at `data`, valid only during the call.
typedef void (*pinhole_peer_recv_cb)(struct pinhole_peer *peer,
                                     const uint8_t *data,
                                     size_t len,
                                     void *user_ptr);

// The connection ended by itself (not called after `pinhole_peer_destroy` began): a
// `PINHOLE_ERR_*` code and why (valid only during the call). The handle must still be
// destroyed.
typedef void (*pinhole_peer_closed_cb)(struct pinhole_peer *peer,
                                       int result,
                                       const char *reason,
                                       void *user_ptr);

// This side restarted ICE by itself: signal `description` (this side's new local
// description, CRLF lines, valid only during the call) to the peer; its candidates follow
// through `cb_candidate`. Either the peer restarted (its description came with a new
// `a=ice-ufrag`) and this side followed, or the built-in network monitor saw the host's
// addresses change and restarted on the new network (see `no_network_monitor`), or a
// resume (`pinhole_peer_set_keepalive_policy` out of `PINHOLE_KEEPALIVE_SUSPENDED`, or
// back to `PINHOLE_KEEPALIVE_FOREGROUND`) found the path gone and restarted.
typedef void (*pinhole_peer_description_cb)(struct pinhole_peer *peer,
                                            const char *description,
                                            void *user_ptr);

// How hard a peer connection works to keep an idle path alive: `PINHOLE_KEEPALIVE_*`
// (`pinhole_peer_set_keepalive_policy`, `pinhole_peer_config.keepalive_policy`).
typedef int pinhole_keepalive_policy;

// How a peer connection starts. Initialise it with
// `pinhole_peer_config_init(&config, sizeof config)`, then set the servers, `controlling`
// and the callbacks (each optional).
typedef struct pinhole_peer_config {
  // The size of this struct as the program was built (`sizeof`), set by
  // `pinhole_peer_config_init`: how the library tells which fields the program knows.
  size_t struct_size;
  // STUN servers for server-reflexive candidates: `host:port` or `stun:host[:port]`
  // (at most 32 servers in all, each at most 500 bytes). None by default (no public
  // server is used unless given).
  const char *const *stun_servers;
  // How many.
  size_t stun_server_count;
  // TURN servers for relayed candidates.
  const struct pinhole_peer_turn_server *turn_servers;
  // How many.
  size_t turn_server_count;
  // This side's ICE role (RFC 8445 §6.1.1): exactly one of the two peers controls
  // (nominates); the offerer, by convention.
  bool controlling;
  // Ask the gateway for a port mapping of the socket (PCP, NAT-PMP, UPnP IGD) and offer
  // its external address as a candidate (off by default).
  bool port_mapping;
  // Run as an ICE-lite agent (RFC 8445 §2.5), for a host with a public address.
  bool lite;
  // `PINHOLE_RELAY_ALL` (0, the default), `PINHOLE_RELAY_ONLY` (needs a TURN server;
  // no host or server-reflexive candidate is offered) or `PINHOLE_RELAY_NONE`.
  pinhole_relay_policy relay_policy;
  // The local socket address `IP:port`; NULL: `0.0.0.0:0` (the local address toward
  // the first server, 127.0.0.1 without servers). `[::]:0`: one dual-stack socket with
  // a host candidate on every usable interface.
  const char *bind;
  // Local candidates, `a=candidate:...`.
  pinhole_peer_candidate_cb cb_candidate;
  // End of the local candidates.
  pinhole_peer_gathering_done_cb cb_gathering_done;
  // State changes.
  pinhole_peer_state_cb cb_state_changed;
  // The selected pair.
  pinhole_peer_selected_pair_cb cb_selected_pair;
  // Datagrams from the peer (without it, they are dropped).
  pinhole_peer_recv_cb cb_recv;
  // The connection ended by itself.
  pinhole_peer_closed_cb cb_closed;
  // This side restarted by itself (the peer restarted, or the network changed): its new
  // description to signal.
  pinhole_peer_description_cb cb_local_description;
  // Passed to the callbacks.
  void *user_ptr;
  // (The struct's first version ends above, at `user_ptr`; fields from here on are
  // appended ones, read only when `struct_size` covers them, else their default.)
  //
  // Turn off the built-in network monitor (Linux and Android: rtnetlink address and
  // route changes; off by default, i.e. the monitor runs), which otherwise restarts ICE
  // by itself when the addresses of a dual-stack socket (`bind` `[::]:0`) change and
  // calls `cb_local_description`. For programs that follow the network themselves and
  // call `pinhole_peer_network_changed`. Sockets on loopback, and other platforms, have
  // no built-in monitor.
  bool no_network_monitor;
  // The keepalive policy to start with, `PINHOLE_KEEPALIVE_*` (default
  // `PINHOLE_KEEPALIVE_FOREGROUND`, 0); change it with
  // `pinhole_peer_set_keepalive_policy`. Another value: `PINHOLE_ERR_INVALID`.
  pinhole_keepalive_policy keepalive_policy;
  // A fixed keepalive interval for `PINHOLE_KEEPALIVE_BACKGROUND`, milliseconds,
  // instead of the one that adapts to the path's NATs; 0 (the default): adaptive (25 s
  // at first, then up to 80 % of the longest silence the path's NAT bindings were seen
  // to survive, at most 240 s). Otherwise 1000 to 3600000 (an hour), else
  // `PINHOLE_ERR_INVALID`.
  uint32_t keepalive_interval_ms;
} pinhole_peer_config;

// A mapping's transport: `PINHOLE_PROTOCOL_*`.
typedef int pinhole_protocol;

// A port-mapping protocol: `PINHOLE_METHOD_*`.
typedef int pinhole_method;

// What a port-mapping event says: `PINHOLE_PORTMAP_EVENT_*`.
typedef int pinhole_portmap_event_kind;

// A mapping that exists on the gateway.
typedef struct pinhole_mapping {
  // The protocol that made it (never `PINHOLE_METHOD_ANY`).
  pinhole_method method;
  // UDP or TCP.
  pinhole_protocol protocol;
  // The internal address and port.
  char internal[PINHOLE_ADDRESS_MAX];
  // The external address and port.
  char external[PINHOLE_ADDRESS_MAX];
  // The lifetime granted, seconds.
  uint32_t lifetime_s;
  // False when the external address is private or shared (CGNAT): another NAT lies
  // beyond the gateway and the mapping is not reachable from the internet.
  bool reachable;
} pinhole_mapping;

// A port-mapping event; valid only during the callback.
typedef struct pinhole_portmap_event {
  // What happened.
  pinhole_portmap_event_kind kind;
  // `MAPPED`, `RENEWED`, `CHANGED`, `VERIFIED`, `NOT_FORWARDING`: the mapping (for
  // `CHANGED` the new one).
  struct pinhole_mapping mapping;
  // `CHANGED`: the mapping before.
  struct pinhole_mapping old_mapping;
  // `LOST`, `UNAVAILABLE`, `UNVERIFIED`: why; else NULL.
  const char *reason;
} pinhole_portmap_event;

// Receives a port mapping's events, on the mapper's own thread. The last is
// `PINHOLE_PORTMAP_EVENT_RELEASED` or `PINHOLE_PORTMAP_EVENT_UNAVAILABLE`. Kinds may be
// added in later versions: ignore the ones you do not know.
typedef void (*pinhole_portmap_cb)(struct pinhole_portmap *portmap,
                                   const struct pinhole_portmap_event *event,
                                   void *user_ptr);

// What to map. Initialise it with `pinhole_portmap_config_init(&config, sizeof config)`,
// then set at least `internal_port` and `cb_event`.
typedef struct pinhole_portmap_config {
  // The size of this struct as the program was built (`sizeof`), set by
  // `pinhole_portmap_config_init`: how the library tells which fields the program knows.
  size_t struct_size;
  // The gateway (an IP address); NULL: the default route's gateway. With an explicit
  // gateway UPnP searches by unicast to it only, never by multicast.
  const char *gateway;
  // This host's address toward the gateway; NULL: what the kernel would use. Needs an
  // explicit gateway.
  const char *local_ip;
  // UDP (0, the default) or TCP.
  pinhole_protocol protocol;
  // The internal port to map (the application's socket; pinhole does not bind it,
  // except with `verify_stun`).
  uint16_t internal_port;
  // The external port wanted; 0: any.
  uint16_t suggested_external_port;
  // The lifetime to ask for, seconds; 0: the default (7200).
  uint32_t lifetime_s;
  // `PINHOLE_METHOD_ANY` (0, the default) or the only protocol to use.
  pinhole_method method;
  // The events (required).
  pinhole_portmap_cb cb_event;
  // Passed to the callback.
  void *user_ptr;
  // (The struct's first version ends above, at `user_ptr`; fields from here on are
  // appended ones, read only when `struct_size` covers them, else their default.)
  //
  // Verify that traffic really arrives through the mapping with this STUN server, a
  // `stun:host[:port]` URI (RFC 7064, at most 500 bytes) of a server that implements
  // RFC 5780 (`pinhole serve`, coturn with `rfc5780`): after every new mapping, after
  // renewals and every `verify_interval_s`. The outcome arrives as
  // `PINHOLE_PORTMAP_EVENT_VERIFIED`, `_NOT_FORWARDING` or `_UNVERIFIED`; a mapping that
  // does not forward is deleted and added again first (`_LOST`). UDP only
  // (`PINHOLE_ERR_INVALID` for TCP; `PINHOLE_ERR_UNSUPPORTED` for `stuns:`). pinhole
  // then binds the internal port itself (on the local address toward the gateway) to
  // hear the answers, so it must be free: this checks a gateway, it cannot verify a port
  // another socket holds. The host is resolved when the mapper starts (within 10 s); if
  // that fails, or the port is taken, the mapper stops with `_UNAVAILABLE` and a reason.
  // NULL (the default): no verification.
  const char *verify_stun;
  // Seconds between verifications; 0: the default (300); at most 86400.
  uint32_t verify_interval_s;
} pinhole_portmap_config;

// What a TURN event says: `PINHOLE_TURN_EVENT_*`.
typedef int pinhole_turn_event_kind;

// A TURN event; valid only during the callback. Fields not used by its kind are empty
// ("", 0, NULL).
typedef struct pinhole_turn_event {
  // What happened.
  pinhole_turn_event_kind kind;
  // `ALLOCATED`: the relayed address (`IP:port`).
  char relayed[PINHOLE_ADDRESS_MAX];
  // `ALLOCATED` with `PINHOLE_TURN_FAMILY_DUAL`: the second relayed address.
  char relayed_other[PINHOLE_ADDRESS_MAX];
  // `ALLOCATED`: this host's address as the server saw it ("" if not reported).
  char mapped[PINHOLE_ADDRESS_MAX];
  // `ALLOCATED`, `REFRESHED`: the lifetime granted, seconds.
  uint32_t lifetime_s;
  // `PERMISSION`, `PERMISSION_FAILED`: the peer's IP; `CHANNEL`, `CHANNEL_FAILED`,
  // `SEND_FAILED`: the peer's `IP:port`.
  char peer[PINHOLE_ADDRESS_MAX];
  // `CHANNEL`: the channel number (0x4000–0x4FFF).
  uint16_t channel;
  // The failures (`*_FAILED`, `LOST`): a `PINHOLE_ERR_*` code; else `PINHOLE_OK`.
  int result;
  // The failures: why, in words; else NULL.
  const char *reason;
} pinhole_turn_event;

// Receives a TURN allocation's events, on the allocation's own thread. The last is
// `PINHOLE_TURN_EVENT_LOST` or `PINHOLE_TURN_EVENT_DEALLOCATED`.
typedef void (*pinhole_turn_event_cb)(struct pinhole_turn *turn,
                                      const struct pinhole_turn_event *event,
                                      void *user_ptr);

// Receives a datagram from `peer` (`IP:port`) through the relay, on the allocation's own
// thread; `peer` and `data` (`len` bytes) are valid only during the call.
typedef void (*pinhole_turn_data_cb)(struct pinhole_turn *turn,
                                     const char *peer,
                                     const uint8_t *data,
                                     size_t len,
                                     void *user_ptr);

// The relayed address family a TURN allocation asks for: `PINHOLE_TURN_FAMILY_*`.
typedef int pinhole_turn_family;

// A TURN server and what to ask of it. Initialise it with
// `pinhole_turn_config_init(&config, sizeof config)`, then set `uri`, `username`, exactly
// one of `password` and `secret`, and `cb_event`.
typedef struct pinhole_turn_config {
  // The size of this struct as the program was built (`sizeof`), set by
  // `pinhole_turn_config_init`: how the library tells which fields the program knows.
  size_t struct_size;
  // `turn:host[:port][?transport=udp|tcp]` or `turns:host[:port]` (RFC 7065; at most
  // 500 bytes). `turns:` needs a library built with the `tls` feature, else
  // `PINHOLE_ERR_UNSUPPORTED`.
  const char *uri;
  // The user name (1 to 512 bytes); with `secret`, the user part of the REST user name
  // `expiry:username`.
  const char *username;
  // The password of long-term credentials.
  const char *password;
  // The shared secret of TURN REST credentials (coturn's `static-auth-secret`).
  const char *secret;
  // How long REST credentials stay valid, seconds; 0: the default (one day).
  uint32_t rest_ttl_s;
  // The allocation lifetime to ask for, seconds; 0: the default (600). It is refreshed
  // before it ends.
  uint32_t lifetime_s;
  // The events (required).
  pinhole_turn_event_cb cb_event;
  // Peers' data (optional: without it, data is dropped).
  pinhole_turn_data_cb cb_data;
  // Passed to the callbacks.
  void *user_ptr;
  // (The struct's first version ends above, at `user_ptr`; fields from here on are
  // appended ones, read only when `struct_size` covers them, else their default.)
  //
  // `PINHOLE_TURN_FAMILY_IPV4` (0, the default), `_IPV6` or `_DUAL`.
  pinhole_turn_family family;
  // PEM certificates to trust for `turns:` instead of the system roots; NULL: the
  // system roots. A server certificate that is one of them byte for byte is accepted
  // (pinned: a self-signed one, too); others must chain to one of them.
  const char *ca_pem;
} pinhole_turn_config;

// Very detailed tracing.
#define PINHOLE_LOG_TRACE 0

// Debugging detail.
#define PINHOLE_LOG_DEBUG 1

// Informational.
#define PINHOLE_LOG_INFO 2

// Something unexpected that pinhole handled.
#define PINHOLE_LOG_WARN 3

// An operation failed.
#define PINHOLE_LOG_ERROR 4

// Nothing: logging off.
#define PINHOLE_LOG_NONE 5

// Not determined.
#define PINHOLE_UNKNOWN -1

// No.
#define PINHOLE_NO 0

// Yes.
#define PINHOLE_YES 1

// Not determined.
#define PINHOLE_BEHAVIOUR_UNKNOWN 0

// Endpoint-independent.
#define PINHOLE_BEHAVIOUR_ENDPOINT_INDEPENDENT 1

// Address-dependent.
#define PINHOLE_BEHAVIOUR_ADDRESS_DEPENDENT 2

// Address-and-port-dependent.
#define PINHOLE_BEHAVIOUR_ADDRESS_AND_PORT_DEPENDENT 3

// Not tested.
#define PINHOLE_PORT_ALLOCATION_NOT_TESTED 0

// Tested, but too few answers to tell.
#define PINHOLE_PORT_ALLOCATION_UNKNOWN 1

// The local port is kept (also what no NAT looks like).
#define PINHOLE_PORT_ALLOCATION_PRESERVING 2

// Each new mapping gets the previous one's port plus a step (`port_allocation_delta`).
#define PINHOLE_PORT_ALLOCATION_SEQUENTIAL 3

// Unpredictable.
#define PINHOLE_PORT_ALLOCATION_RANDOM 4

// A server answered (`server`, `mapped`, `rtt_us`).
#define PINHOLE_NETCHECK_EVENT_SERVER_REPLIED 0

// A server did not answer (`server`).
#define PINHOLE_NETCHECK_EVENT_SERVER_TIMED_OUT 1

// The mapping behaviour is known (`behaviour`).
#define PINHOLE_NETCHECK_EVENT_MAPPING 2

// The filtering behaviour is known (`behaviour`).
#define PINHOLE_NETCHECK_EVENT_FILTERING 3

// Hairpinning is known (`hairpins`).
#define PINHOLE_NETCHECK_EVENT_HAIRPINNING 4

// UDP (the default: 0).
#define PINHOLE_PROTOCOL_UDP 0

// TCP.
#define PINHOLE_PROTOCOL_TCP 1

// Any: PCP, then NAT-PMP, then UPnP (the default: 0; never reported).
#define PINHOLE_METHOD_ANY 0

// PCP, RFC 6887.
#define PINHOLE_METHOD_PCP 1

// NAT-PMP, RFC 6886.
#define PINHOLE_METHOD_NATPMP 2

// UPnP IGD.
#define PINHOLE_METHOD_UPNP 3

// A mapping exists (`mapping`).
#define PINHOLE_PORTMAP_EVENT_MAPPED 0

// Renewed with the same external address (`mapping`).
#define PINHOLE_PORTMAP_EVENT_RENEWED 1

// Renewed with another external address or port (`old_mapping`, `mapping`).
#define PINHOLE_PORTMAP_EVENT_CHANGED 2

// Lost (gateway restart, expiry, refusal, or with `verify_stun` traffic no longer
// arrives through it); being re-created (`reason`).
#define PINHOLE_PORTMAP_EVENT_LOST 3

// No mapping can be made; the mapper stopped (`reason`). A last event.
#define PINHOLE_PORTMAP_EVENT_UNAVAILABLE 4

// Deleted after `pinhole_portmap_release`; the mapper stopped. A last event.
#define PINHOLE_PORTMAP_EVENT_RELEASED 5

// Traffic from the STUN reflector arrived through the mapping (`mapping`; only with
// `verify_stun`).
#define PINHOLE_PORTMAP_EVENT_VERIFIED 6

// The gateway grants the mapping but traffic does not arrive through it, even after
// deleting and adding it again (`mapping`; only with `verify_stun`). It is kept, and
// verified again after the interval.
#define PINHOLE_PORTMAP_EVENT_NOT_FORWARDING 7

// The mapping could not be verified (`reason`; only with `verify_stun`): the reflector
// did not answer, does not implement RFC 5780, or sees this host at another address.
// With no answer it is tried again after the interval; otherwise verification stops.
#define PINHOLE_PORTMAP_EVENT_UNVERIFIED 8

// IPv4 (the default: 0).
#define PINHOLE_TURN_FAMILY_IPV4 0

// IPv6 (RFC 8656 REQUESTED-ADDRESS-FAMILY).
#define PINHOLE_TURN_FAMILY_IPV6 1

// Both (ADDITIONAL-ADDRESS-FAMILY): two relayed addresses.
#define PINHOLE_TURN_FAMILY_DUAL 2

// The allocation exists (`relayed`, `relayed_other`, `mapped`, `lifetime_s`).
#define PINHOLE_TURN_EVENT_ALLOCATED 0

// Refreshed (`lifetime_s`).
#define PINHOLE_TURN_EVENT_REFRESHED 1

// A permission for a peer IP is installed or refreshed (`peer`: the IP).
#define PINHOLE_TURN_EVENT_PERMISSION 2

// A permission could not be installed (`peer`: the IP, `result`, `reason`).
#define PINHOLE_TURN_EVENT_PERMISSION_FAILED 3

// A channel is bound or refreshed (`peer`, `channel`).
#define PINHOLE_TURN_EVENT_CHANNEL 4

// A channel could not be bound (`peer`, `result`, `reason`).
#define PINHOLE_TURN_EVENT_CHANNEL_FAILED 5

// Data for a peer could not be sent (`peer`, `result`, `reason`), such as
// `PINHOLE_ERR_NOT_AVAILABLE` without a permission for it.
#define PINHOLE_TURN_EVENT_SEND_FAILED 6

// The allocation failed or is gone (`result`, `reason`): `PINHOLE_ERR_AUTH` for wrong
// credentials, `PINHOLE_ERR_REFUSED`, `PINHOLE_ERR_TIMEOUT`, `PINHOLE_ERR_IO` for a
// broken connection. A last event.
#define PINHOLE_TURN_EVENT_LOST 7

// Deallocated after `pinhole_turn_deallocate`. A last event.
#define PINHOLE_TURN_EVENT_DEALLOCATED 8

// Waiting for the peer's description or candidates.
#define PINHOLE_ICE_STATE_NEW 0

// Checking pairs; none works yet.
#define PINHOLE_ICE_STATE_CHECKING 1

// A pair works: data flows.
#define PINHOLE_ICE_STATE_CONNECTED 2

// The controlling side nominated the pair: ICE has settled. Data flows.
#define PINHOLE_ICE_STATE_COMPLETED 3

// Every pair failed after the peer's end of candidates: restart or give up.
#define PINHOLE_ICE_STATE_FAILED 4

// Consent was lost on every working pair (RFC 7675); checks go on while candidates
// remain. A restart may bring the path back.
#define PINHOLE_ICE_STATE_DISCONNECTED 5

// The connection is closed.
#define PINHOLE_ICE_STATE_CLOSED 6

// Direct paths and, where they fail, the relays (the default).
#define PINHOLE_RELAY_ALL 0

// Only through a TURN relay (no host or server-reflexive candidate is offered).
#define PINHOLE_RELAY_ONLY 1

// Never through a relay.
#define PINHOLE_RELAY_NONE 2

// The app is in front of its user (the default: 0): consent checks every 4 to 6 s on the
// path (RFC 7675: a dead path is noticed within 30 s), TURN allocations checked every 5 s.
#define PINHOLE_KEEPALIVE_FOREGROUND 0

// The app is in the background: the fewest packets that keep the path's NAT bindings
// alive, one check per keepalive interval (shared with the peer), an interval that adapts
// to the NATs (or `keepalive_interval_ms`). A dead path takes two intervals to notice.
#define PINHOLE_KEEPALIVE_BACKGROUND 1

// The app is about to be suspended: no keepalives and no consent deadline. On the way
// back the path is probed at once; if it does not answer within 4 s, ICE restarts and
// `cb_local_description` brings the new description to signal.
#define PINHOLE_KEEPALIVE_SUSPENDED 2

#ifdef __cplusplus
extern "C" {
#endif // __cplusplus

// The library version, `major.minor.patch`, a static string.
const char *pinhole_version(void);

// A static description of a result code.
const char *pinhole_strerror(int code);

// Sends log records of `level` and above to `cb` (NULL: logging off). Process-wide;
// replaces any previous handler, including a UniFFI logger.
int pinhole_set_log_handler(pinhole_log_cb cb, pinhole_log_level level, void *user_ptr);

// Starts a netcheck. On success `*out` is the handle (free it with
// `pinhole_netcheck_destroy`) and the callbacks follow on the netcheck's own thread.
// The config is copied: it need not outlive the call.
//
// # Safety
// `config` and `out` are NULL or valid; the config's strings are NULL or
// NUL-terminated, and `stun_servers` holds `stun_server_count` of them.
int pinhole_netcheck_start(const struct pinhole_netcheck_config *config,
                           struct pinhole_netcheck **out);

// Cancels a netcheck: the done callback follows with `PINHOLE_ERR_CANCELLED`, unless the
// outcome was already delivered. Returns at once.
//
// # Safety
// `netcheck` is NULL or a live handle.
int pinhole_netcheck_cancel(struct pinhole_netcheck *netcheck);

// Stops the netcheck if it runs and frees the handle. From another thread, it waits
// until a running callback returns (a netcheck has nothing to tell a server: it stops at
// once otherwise), and no callback runs after it returns; from the netcheck's own
// callback, it returns at once and no further callback runs. NULL is ignored.
//
// # Safety
// `netcheck` is NULL or a live handle, not used afterwards.
void pinhole_netcheck_destroy(struct pinhole_netcheck *netcheck);

// Stops the netcheck and frees the handle without waiting: returns at once, also from
// the netcheck's own callback. A callback already running (or just starting) when it is
// called may still run; then no callback of the netcheck runs (not even the done
// callback), the handle is freed, and `cb` (optional) is called once on the netcheck's
// thread, never from within this call. Data the callbacks use must stay valid until `cb`.
// `PINHOLE_ERR_INVALID` for NULL.
//
// # Safety
// `netcheck` is NULL or a live handle, not used afterwards.
int pinhole_netcheck_destroy_async(struct pinhole_netcheck *netcheck,
                                   pinhole_destroyed_cb cb,
                                   void *user_ptr);

// Initialises a config: zeroes its `size` bytes, sets the defaults (`timeout_ms` 10000;
// everything else zero, NULL or false) and `struct_size` = `size`. Call it as
// `pinhole_netcheck_config_init(&config, sizeof config)`; `PINHOLE_ERR_INVALID` (nothing
// written) for NULL or a size that cannot be a `pinhole_netcheck_config`.
//
// # Safety
// `config` is NULL or has `size` writable bytes.
int pinhole_netcheck_config_init(struct pinhole_netcheck_config *config, size_t size);

// Creates a peer connection: binds its socket (resolving the servers' names first) and
// starts gathering, returning once the socket is bound; `*out` is then the handle (free
// it with `pinhole_peer_destroy`), `pinhole_peer_get_local_description` has the local
// credentials, and the callbacks follow on the connection's own thread (candidates,
// states, ...). Errors: `PINHOLE_ERR_INVALID` (the config), `PINHOLE_ERR_UNSUPPORTED`
// (`turns:` without TLS support), `PINHOLE_ERR_NO_SERVER` (relay only and no TURN server
// resolved), `PINHOLE_ERR_IO` (the socket). The config is copied; passwords are never
// logged.
//
// # Safety
// `config` and `out` are NULL or valid; the config's strings are NULL or NUL-terminated
// and its arrays hold their counts.
int pinhole_peer_create(const struct pinhole_peer_config *config, struct pinhole_peer **out);

// Writes the local description into `buf` of `size` bytes: `a=ice-ufrag`, `a=ice-pwd`,
// `a=ice-options:trickle renomination`, `a=ice-pacing` (and `a=ice-lite`), the candidates gathered so
// far and, once gathering is over, `a=end-of-candidates`; CRLF-terminated SDP lines.
// Returns its length, or `PINHOLE_ERR_TOO_SMALL` (4096 bytes hold the credentials and
// about 30 candidates).
//
// # Safety
// `peer` is NULL or a live handle; `buf` is NULL or has `size` writable bytes.
int pinhole_peer_get_local_description(const struct pinhole_peer *peer,
                                       char *buf,
                                       size_t size);

// Gives the peer's description: SDP lines (`a=ice-ufrag`, `a=ice-pwd`, `a=candidate`,
// `a=end-of-candidates`, ...) or a whole SDP; other lines and unusable candidates are
// ignored. May be given again with more candidates. A new `a=ice-ufrag` means the peer
// restarted: this side restarts too and calls `cb_local_description`. Returns once
// checked (applied in order on the connection's thread). `PINHOLE_ERR_INVALID` (NULL,
// not UTF-8, no or malformed `a=ice-ufrag`/`a=ice-pwd`, over 64 KiB),
// `PINHOLE_ERR_NOT_AVAILABLE` (the connection ended).
//
// # Safety
// `peer` is NULL or a live handle; `description` is NULL or NUL-terminated.
int pinhole_peer_set_remote_description(struct pinhole_peer *peer, const char *description);

// Adds a candidate the peer trickled: `a=candidate:...` or `candidate:...`.
// `PINHOLE_ERR_INVALID` (NULL, malformed), `PINHOLE_ERR_NOT_AVAILABLE` (ended).
//
// # Safety
// `peer` is NULL or a live handle; `candidate` is NULL or NUL-terminated.
int pinhole_peer_add_remote_candidate(struct pinhole_peer *peer, const char *candidate);

// The peer's `a=end-of-candidates`: once every pair has failed, the state is
// `PINHOLE_ICE_STATE_FAILED` (without it, ICE waits for more candidates).
// `PINHOLE_ERR_NOT_AVAILABLE` (ended).
//
// # Safety
// `peer` is NULL or a live handle.
int pinhole_peer_set_remote_gathering_done(struct pinhole_peer *peer);

// Sends `len` bytes (at most `PINHOLE_PEER_DATA_MAX`; keep to 1 200 to fit every path)
// to the peer on the selected pair; the data is copied and the call returns at once (UDP
// may still lose it). `PINHOLE_ERR_INVALID` (NULL, too long), `PINHOLE_ERR_NOT_AVAILABLE`
// (no pair selected yet, before the first `cb_selected_pair`; 1024 datagrams already
// waiting for the connection's thread; ended).
//
// # Safety
// `peer` is NULL or a live handle; `data` is NULL (then `len` is 0) or has `len`
// readable bytes.
int pinhole_peer_send(struct pinhole_peer *peer, const uint8_t *data, size_t len);

// Fills `*pair` with the pair data goes on. `PINHOLE_ERR_NOT_AVAILABLE` when none was
// selected yet.
//
// # Safety
// `peer` is NULL or a live handle; `pair` is NULL or writable.
int pinhole_peer_get_selected_pair(const struct pinhole_peer *peer, struct pinhole_peer_pair *pair);

// An ICE restart (RFC 8445 §9), for a changed network or a lost path: writes the new
// local description (credentials; the candidates follow through `cb_candidate`) into
// `buf` of `size` bytes, to signal to the peer, and returns its length
// (`PINHOLE_ERR_TOO_SMALL`: the restart happened, the description is in
// `pinhole_peer_get_local_description`). The current path carries data until a new pair
// is selected. From a callback it is applied at once; from another thread it waits for
// the connection's thread (`PINHOLE_ERR_TIMEOUT` after 10 s, when a callback blocks it).
//
// # Safety
// `peer` is NULL or a live handle; `buf` is NULL or has `size` writable bytes.
int pinhole_peer_restart(struct pinhole_peer *peer, char *buf, size_t size);

// The host's network changed (Wi-Fi to cellular, a new address, a VPN), for programs that
// follow the network themselves (with `no_network_monitor` where the built-in monitor
// runs): a dual-stack socket's (`[::]:0`) addresses are found again and ICE restarts on
// them (RFC 8445 §9), even when they look the same (candidates gathered again, relays
// allocated again). Like `pinhole_peer_restart`, writes the new local description
// (credentials; the candidates follow through `cb_candidate`) into `buf` of `size` bytes,
// to signal to the peer, and returns its length (`PINHOLE_ERR_TOO_SMALL`: the restart
// happened, the description is in `pinhole_peer_get_local_description`); the peer
// restarts too and answers with its new description. The current path carries data
// until a new pair is selected. From a callback it is applied at once; from another
// thread it waits for the connection's thread (`PINHOLE_ERR_TIMEOUT` after 10 s, when a
// callback blocks it). `PINHOLE_ERR_INVALID` (NULL), `PINHOLE_ERR_NOT_AVAILABLE`
// (ended), `PINHOLE_ERR_IO` (no route for either address family).
//
// # Safety
// `peer` is NULL or a live handle; `buf` is NULL or has `size` writable bytes.
int pinhole_peer_network_changed(struct pinhole_peer *peer, char *buf, size_t size);

// Sets the keepalive policy (`PINHOLE_KEEPALIVE_*`) as the program moves between
// foreground, background and suspended (an app's lifecycle, a laptop going to sleep):
// consent checks every 4 to 6 s in the foreground; in the background one check per
// keepalive interval (see `pinhole_peer_get_keepalive_interval_ms`), shared with the
// peer; none while suspended. Set `PINHOLE_KEEPALIVE_SUSPENDED` before a known suspension
// (the system gives no callback at the moment it suspends). Leaving it (or the background
// for the foreground) probes the path at once; if it does not answer within 4 s, ICE
// restarts and `cb_local_description` brings the new description to signal. Returns at
// once, from any thread or a callback; applied on the connection's thread in order with
// the other calls. `PINHOLE_ERR_INVALID` (NULL, not a `PINHOLE_KEEPALIVE_*` value),
// `PINHOLE_ERR_NOT_AVAILABLE` (ended).
//
// # Safety
// `peer` is NULL or a live handle.
int pinhole_peer_set_keepalive_policy(struct pinhole_peer *peer, pinhole_keepalive_policy policy);

// Writes the keepalive policy last set (the config's until then) into `*policy`.
// `PINHOLE_ERR_INVALID` (NULL).
//
// # Safety
// `peer` is NULL or a live handle; `policy` is NULL or writable.
int pinhole_peer_get_keepalive_policy(const struct pinhole_peer *peer,
                                      pinhole_keepalive_policy *policy);

// Writes the background keepalive interval as it stands, milliseconds, into `*ms`: the
// config's fixed `keepalive_interval_ms`, or the adaptive one (25 s at first; it grows
// while the path's NAT bindings survive the silences between keepalives, and drops below
// a silence one did not survive). From a callback it is read at once; from another thread
// it waits for the connection's thread (`PINHOLE_ERR_TIMEOUT` after 10 s, when a callback
// blocks it). `PINHOLE_ERR_INVALID` (NULL), `PINHOLE_ERR_NOT_AVAILABLE` (ended).
//
// # Safety
// `peer` is NULL or a live handle; `ms` is NULL or writable.
int pinhole_peer_get_keepalive_interval_ms(const struct pinhole_peer *peer, uint32_t *ms);

// Closes the connection (deleting a port mapping of its socket, if it made one) and
// frees the handle, blocking: from another thread it waits until a running callback
// returns and the connection has closed (at most a few seconds, when a gateway does not
// answer; from a UI thread use `pinhole_peer_destroy_async`). No callback runs once it
// has begun. Called from the handle's own callback, it returns at once and the closing
// finishes in the background. NULL is ignored.
//
// # Safety
// `peer` is NULL or a live handle, not used afterwards.
void pinhole_peer_destroy(struct pinhole_peer *peer);

// Closes the connection and frees the handle without waiting: returns at once, also from
// the connection's own callback. A callback already running (or just starting) when it
// is called may still run; then no callback runs; once closed, the handle is freed and
// `cb` (optional) is called once on the connection's thread, never from within this
// call. Data the callbacks use must stay valid until `cb`. `PINHOLE_ERR_INVALID` for
// NULL.
//
// # Safety
// `peer` is NULL or a live handle, not used afterwards.
int pinhole_peer_destroy_async(struct pinhole_peer *peer, pinhole_destroyed_cb cb, void *user_ptr);

// Initialises a config: zeroes its `size` bytes (every default: no servers, controlled,
// no port mapping, `PINHOLE_RELAY_ALL`, bound to `0.0.0.0:0`, no callbacks, the built-in
// network monitor on, `PINHOLE_KEEPALIVE_FOREGROUND` with the adaptive interval) and sets
// `struct_size` = `size`. Call it as `pinhole_peer_config_init(&config, sizeof config)`;
// `PINHOLE_ERR_INVALID` (nothing written) for NULL or a size that cannot be a
// `pinhole_peer_config`.
//
// # Safety
// `config` is NULL or has `size` writable bytes.
int pinhole_peer_config_init(struct pinhole_peer_config *config, size_t size);

// Starts mapping a port; events follow on the mapper's own thread. The mapping is
// renewed and re-created until `pinhole_portmap_release` or `pinhole_portmap_destroy`.
// The config is copied.
//
// # Safety
// `config` and `out` are NULL or valid; the config's strings are NULL or NUL-terminated.
int pinhole_portmap_start(const struct pinhole_portmap_config *config,
                          struct pinhole_portmap **out);

// Writes the current mapping's external address (`IP:port`) into `buf` of `size` bytes
// (`PINHOLE_ADDRESS_MAX` always suffices). Returns its length, or
// `PINHOLE_ERR_NOT_AVAILABLE` when no mapping exists now.
//
// # Safety
// `portmap` is NULL or a live handle; `buf` is NULL or has `size` writable bytes.
int pinhole_portmap_get_external(const struct pinhole_portmap *portmap, char *buf, size_t size);

// Deletes the mapping and stops the mapper, returning at once: the
// `PINHOLE_PORTMAP_EVENT_RELEASED` event follows (or `UNAVAILABLE` when no mapping
// existed), within a few seconds.
//
// # Safety
// `portmap` is NULL or a live handle.
int pinhole_portmap_release(struct pinhole_portmap *portmap);

// Releases the mapping if it exists, stops and frees the handle, blocking: from another
// thread it waits until a running callback returns and the deletion is confirmed or given
// up on (at most about 3 s when the gateway does not answer; from a UI thread use
// `pinhole_portmap_destroy_async`). No event is delivered once it has begun. Called from
// the handle's own callback, it returns at once and the release finishes in the
// background. NULL is ignored.
//
// # Safety
// `portmap` is NULL or a live handle, not used afterwards.
void pinhole_portmap_destroy(struct pinhole_portmap *portmap);

// Releases the mapping if it exists, stops the mapper and frees the handle without
// waiting: returns at once, also from the mapper's own callback and while the gateway
// does not answer. An event already being delivered (or just starting) when it is called
// may still run; then no event is delivered (not even `RELEASED`); once the deletion is
// confirmed or given up on (about 3 s), the handle is freed and `cb` (optional) is called
// once on the mapper's thread, never from within this call. Data the callback uses must
// stay valid until `cb`. `PINHOLE_ERR_INVALID` for NULL.
//
// # Safety
// `portmap` is NULL or a live handle, not used afterwards.
int pinhole_portmap_destroy_async(struct pinhole_portmap *portmap,
                                  pinhole_destroyed_cb cb,
                                  void *user_ptr);

// Initialises a config: zeroes its `size` bytes, sets the defaults (`lifetime_s` 7200,
// `verify_interval_s` 300; everything else zero, NULL or UDP) and `struct_size` = `size`.
// Call it as `pinhole_portmap_config_init(&config, sizeof config)`;
// `PINHOLE_ERR_INVALID` (nothing written) for NULL or a size that cannot be a
// `pinhole_portmap_config`.
//
// # Safety
// `config` is NULL or has `size` writable bytes.
int pinhole_portmap_config_init(struct pinhole_portmap_config *config, size_t size);

#if defined(PINHOLE_FEATURE_SERVER)
// Starts a STUN server (RFC 8489 Binding) on `primary` (`IP:port`); with `alternate`
// (another IP and port, no port 0) an RFC 5780 server on the four combinations. With
// `primary` NULL: an RFC 5780 server on 127.0.0.1 and 127.0.0.2 with free ports. It
// serves on its own thread until `pinhole_server_destroy`.
//
// # Safety
// `primary` and `alternate` are NULL or NUL-terminated; `out` is NULL or writable.
int pinhole_server_start(const char *primary, const char *alternate, struct pinhole_server **out);
#endif

#if defined(PINHOLE_FEATURE_SERVER)
// How many addresses the server listens on (1, or 4 for RFC 5780); 0 for NULL.
//
// # Safety
// `server` is NULL or a live handle.
size_t pinhole_server_address_count(const struct pinhole_server *server);
#endif

#if defined(PINHOLE_FEATURE_SERVER)
// Writes the `index`th address (`IP:port`; 0 is the primary) into `buf` of `size`
// bytes (`PINHOLE_ADDRESS_MAX` always suffices). Returns its length;
// `PINHOLE_ERR_INVALID` when `index` is out of range.
//
// # Safety
// `server` is NULL or a live handle; `buf` is NULL or has `size` writable bytes.
int pinhole_server_get_address(const struct pinhole_server *server,
                               size_t index,
                               char *buf,
                               size_t size);
#endif

#if defined(PINHOLE_FEATURE_SERVER)
// Stops the server, waits for its thread (a moment: it has no callbacks and nothing to
// tell a peer) and frees the handle. NULL is ignored.
//
// # Safety
// `server` is NULL or a live handle, not used afterwards.
void pinhole_server_destroy(struct pinhole_server *server);
#endif

#if defined(PINHOLE_FEATURE_SERVER)
// Stops the server and frees the handle without waiting: returns at once; a thread of
// its own stops it, frees the handle, then calls `cb` (optional) once, never from within
// this call. `PINHOLE_ERR_INVALID` for NULL; `PINHOLE_ERR_IO` when no thread could be
// started (the handle is then untouched and still live).
//
// # Safety
// `server` is NULL or a live handle, not used afterwards (unless `PINHOLE_ERR_IO`).
int pinhole_server_destroy_async(struct pinhole_server *server,
                                 pinhole_destroyed_cb cb,
                                 void *user_ptr);
#endif

// Allocates a relayed address on a TURN server. On success `*out` is the handle (free it
// with `pinhole_turn_destroy`) and the events follow on the allocation's own thread:
// `PINHOLE_TURN_EVENT_ALLOCATED`, or `PINHOLE_TURN_EVENT_LOST` with the reason
// (`PINHOLE_ERR_AUTH` for wrong credentials). The allocation is refreshed until
// `pinhole_turn_deallocate` or `pinhole_turn_destroy`. The config is copied; the
// password and secret are never logged.
//
// # Safety
// `config` and `out` are NULL or valid; the config's strings are NULL or NUL-terminated.
int pinhole_turn_allocate(const struct pinhole_turn_config *config, struct pinhole_turn **out);

// Writes the relayed address (`IP:port`; the first with `PINHOLE_TURN_FAMILY_DUAL`) into
// `buf` of `size` bytes (`PINHOLE_ADDRESS_MAX` always suffices). Returns its length, or
// `PINHOLE_ERR_NOT_AVAILABLE` before `ALLOCATED` and after the allocation ended.
//
// # Safety
// `turn` is NULL or a live handle; `buf` is NULL or has `size` writable bytes.
int pinhole_turn_get_relayed(const struct pinhole_turn *turn, char *buf, size_t size);

// Writes this host's address as the TURN server saw it (`IP:port`) into `buf` of `size`
// bytes. Returns its length, or `PINHOLE_ERR_NOT_AVAILABLE` when there is none now.
//
// # Safety
// `turn` is NULL or a live handle; `buf` is NULL or has `size` writable bytes.
int pinhole_turn_get_mapped(const struct pinhole_turn *turn, char *buf, size_t size);

// Installs a permission for a peer's IP address (refreshed until the end), so that its
// datagrams reach this host, returning at once: `PINHOLE_TURN_EVENT_PERMISSION` or
// `_PERMISSION_FAILED` follows. `PINHOLE_ERR_NOT_AVAILABLE` before `ALLOCATED` and after
// the allocation ended.
//
// # Safety
// `turn` is NULL or a live handle; `peer_ip` is NULL or NUL-terminated.
int pinhole_turn_create_permission(struct pinhole_turn *turn, const char *peer_ip);

// Binds a channel to a peer (`IP:port`), which also permits its IP; data to and from it
// then travels with 4 bytes of overhead instead of 36. Returns at once:
// `PINHOLE_TURN_EVENT_CHANNEL` or `_CHANNEL_FAILED` follows. `PINHOLE_ERR_NOT_AVAILABLE`
// before `ALLOCATED` and after the allocation ended.
//
// # Safety
// `turn` is NULL or a live handle; `peer` is NULL or NUL-terminated.
int pinhole_turn_bind_channel(struct pinhole_turn *turn, const char *peer);

// Sends `len` bytes (at most `PINHOLE_TURN_DATA_MAX`) to a peer (`IP:port`) through the
// relay; the data is copied and the call returns at once. It needs a permission for the
// peer's IP; a failure arrives as `PINHOLE_TURN_EVENT_SEND_FAILED`.
// `PINHOLE_ERR_NOT_AVAILABLE` before `ALLOCATED` and after the allocation ended.
//
// # Safety
// `turn` is NULL or a live handle; `peer` is NULL or NUL-terminated; `data` is NULL (then
// `len` is 0) or has `len` readable bytes.
int pinhole_turn_send(struct pinhole_turn *turn, const char *peer, const uint8_t *data, size_t len);

// Deallocates, returning at once: `PINHOLE_TURN_EVENT_DEALLOCATED` follows (within a few
// seconds, also when the server does not answer), then the allocation has ended.
//
// # Safety
// `turn` is NULL or a live handle.
int pinhole_turn_deallocate(struct pinhole_turn *turn);

// Deallocates if the allocation exists, stops and frees the handle, blocking: from
// another thread it waits until a running callback returns and the server has confirmed
// the deallocation or it was given up on (at most about 4 s when the server does not
// answer; from a UI thread use `pinhole_turn_destroy_async`). No callback runs once it
// has begun. Called from the handle's own callback, it returns at once and the
// deallocation finishes in the background. NULL is ignored.
//
// # Safety
// `turn` is NULL or a live handle, not used afterwards.
void pinhole_turn_destroy(struct pinhole_turn *turn);

// Deallocates if the allocation exists, stops and frees the handle without waiting:
// returns at once, also from the allocation's own callback and while the server does not
// answer. A callback already running (or just starting) when it is called may still run;
// then no callback runs (not even `DEALLOCATED`); once the server has confirmed the
// deallocation or it was given up on (about 4 s), the handle is freed and `cb` (optional)
// is called once on the allocation's thread, never from within this call. Data the
// callbacks use must stay valid until `cb`. `PINHOLE_ERR_INVALID` for NULL.
//
// # Safety
// `turn` is NULL or a live handle, not used afterwards.
int pinhole_turn_destroy_async(struct pinhole_turn *turn, pinhole_destroyed_cb cb, void *user_ptr);

// Initialises a config: zeroes its `size` bytes, sets the defaults (`rest_ttl_s` 86400,
// `lifetime_s` 600; everything else zero, NULL or `PINHOLE_TURN_FAMILY_IPV4`) and
// `struct_size` = `size`. Call it as `pinhole_turn_config_init(&config, sizeof config)`;
// `PINHOLE_ERR_INVALID` (nothing written) for NULL or a size that cannot be a
// `pinhole_turn_config`.
//
// # Safety
// `config` is NULL or has `size` writable bytes.
int pinhole_turn_config_init(struct pinhole_turn_config *config, size_t size);

// The library's version number at run time, in `PINHOLE_VERSION_NUMBER`'s format.
// A program built against one header and run with another library checks that the
// ABI matches: the same major version (before 1.0, the same major and minor).
uint32_t pinhole_version_number(void);

// Why the last call of this thread into pinhole that returned a negative `PINHOLE_ERR_*`
// code failed, in English (for logs and people, not for matching: the codes are the
// API), e.g. `invalid argument: stun_servers[0]: not a STUN URI`. An empty string when
// that call succeeded or no call was made on this thread. Per thread: a failure on one
// thread never shows on another. The string stays valid until the calling thread's next
// call into pinhole (this function excepted); never free it.
const char *pinhole_last_error(void);

#ifdef __cplusplus
}  // extern "C"
#endif  // __cplusplus

#endif  /* PINHOLE_H */
