/*
 * The C API's test: every entry point, argument validation, callbacks on pinhole's own
 * threads, a real netcheck against `pinhole serve` on loopback (its URI is argv[1]) and
 * against pinhole's embedded server, cancellation, destruction from a callback, and a
 * port mapping pointed at a loopback address where no gateway listens, which must fail
 * cleanly (also when verified through `pinhole serve`), and TURN allocations on `pinhole serve --turn` (argv[3..6]: its URI, user,
 * password, REST secret) relaying to and from a UDP socket of the test's own on
 * 127.0.0.1. Then the ABI (config structs read by their struct_size: older, newer and
 * wrong sizes), the last error of failing starts, and each handle's life: calls from
 * several threads, destruction from its callbacks and from other threads, and
 * *_destroy_async returning at once while a callback blocks or the gateway (a NAT-PMP one
 * of the test's own on 127.0.0.77) or the TURN server (behind a proxy of the test's own
 * that drops everything) does not answer. Then peer connections (pinhole_peer_*): two in
 * this process connect on loopback, directly and through the TURN server (relay only),
 * carry data both ways, survive an ICE restart (the other side following by itself), switch
 * keepalive policies (a resume whose path is gone restarting by itself), are destroyed
 * from a callback and asynchronously, and refuse bad input with typed errors.
 * Run under valgrind by bindings/test.sh. Prints
 * "N passed, N failed".
 */
#define _POSIX_C_SOURCE 200809L
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stddef.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

/* The tests use the embedded STUN server (pinhole_server_*), which the library has when it
 * is built with the feature `server`, as bindings/test.sh builds it. */
#define PINHOLE_FEATURE_SERVER 1
#include "pinhole.h"

static int passed, failed;

#define CHECK(cond)                                                                     \
    do {                                                                                \
        if (cond) {                                                                     \
            passed++;                                                                   \
        } else {                                                                        \
            failed++;                                                                   \
            fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);             \
        }                                                                               \
    } while (0)

#define CHECK_RC(expr, want)                                                            \
    do {                                                                                \
        int rc_ = (expr);                                                               \
        if (rc_ == (want)) {                                                            \
            passed++;                                                                   \
        } else {                                                                        \
            failed++;                                                                   \
            fprintf(stderr, "FAIL %s:%d: %s = %d (%s), want %d\n", __FILE__, __LINE__,  \
                    #expr, rc_, pinhole_strerror(rc_), (want));                         \
        }                                                                               \
    } while (0)

/* ---- a one-shot latch the callbacks signal ---- */

typedef struct {
    pthread_mutex_t mutex;
    pthread_cond_t cond;
    int done;
} latch;

static void latch_init(latch *l) {
    pthread_mutex_init(&l->mutex, NULL);
    pthread_cond_init(&l->cond, NULL);
    l->done = 0;
}

static void latch_free(latch *l) {
    pthread_mutex_destroy(&l->mutex);
    pthread_cond_destroy(&l->cond);
}

static void latch_signal(latch *l) {
    pthread_mutex_lock(&l->mutex);
    l->done = 1;
    pthread_cond_broadcast(&l->cond);
    pthread_mutex_unlock(&l->mutex);
}

/* Waits up to `seconds`; returns whether the latch was signalled. */
static int latch_wait(latch *l, int seconds) {
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += seconds;
    pthread_mutex_lock(&l->mutex);
    while (!l->done) {
        if (pthread_cond_timedwait(&l->cond, &l->mutex, &deadline) != 0) {
            break;
        }
    }
    int done = l->done;
    pthread_mutex_unlock(&l->mutex);
    return done;
}

static int no_pinhole_threads(int seconds);

/* ---- logging ---- */

static atomic_int log_records;

static void on_log(pinhole_log_level level, const char *target, const char *message,
                   void *user_ptr) {
    (void)user_ptr;
    if (level >= PINHOLE_LOG_TRACE && level <= PINHOLE_LOG_ERROR && target && message) {
        atomic_fetch_add(&log_records, 1);
    }
}

/* ---- netcheck ---- */

typedef struct {
    latch latch;
    pthread_t main_thread;
    int on_main_thread;
    int progress_events;
    int replies;
    int result;
    int udp;
    pinhole_behaviour mapping, filtering;
    pinhole_tristate hairpinning;
    pinhole_port_allocation port_allocation;
    size_t servers, public_addresses;
    int server_answered;
    char mapped[PINHOLE_ADDRESS_MAX];
    int portmap_probed;
    pinhole_tristate pcp, natpmp;
    char gateway[PINHOLE_ADDRESS_MAX];
    int destroy_in_callback;
} netcheck_state;

static void on_progress(pinhole_netcheck *nc, const pinhole_netcheck_event *ev, void *user_ptr) {
    netcheck_state *s = user_ptr;
    (void)nc;
    if (pthread_equal(pthread_self(), s->main_thread)) {
        s->on_main_thread = 1;
    }
    s->progress_events++;
    if (ev->kind == PINHOLE_NETCHECK_EVENT_SERVER_REPLIED && ev->server != NULL &&
        strncmp(ev->server, "stun:", 5) == 0) {
        s->replies++;
    }
}

static void on_done(pinhole_netcheck *nc, int result, const pinhole_netcheck_report *r,
                    void *user_ptr) {
    netcheck_state *s = user_ptr;
    if (pthread_equal(pthread_self(), s->main_thread)) {
        s->on_main_thread = 1;
    }
    s->result = result;
    if (result == PINHOLE_OK && r != NULL) {
        s->udp = r->udp;
        s->mapping = r->mapping;
        s->filtering = r->filtering;
        s->hairpinning = r->hairpinning;
        s->port_allocation = r->port_allocation;
        s->servers = r->server_count;
        s->public_addresses = r->public_address_count;
        if (r->server_count > 0) {
            s->server_answered = r->servers[0].answered;
            snprintf(s->mapped, sizeof s->mapped, "%s", r->servers[0].mapped);
        }
        for (size_t i = 0; i < r->note_count; i++) {
            printf("  note: %s\n", r->notes[i]);
        }
        s->portmap_probed = r->portmap.probed;
        s->pcp = r->portmap.pcp;
        s->natpmp = r->portmap.natpmp;
        snprintf(s->gateway, sizeof s->gateway, "%s", r->portmap.gateway);
    }
    if (s->destroy_in_callback) {
        /* Allowed: the handle is freed at once, the thread ends after we return. */
        pinhole_netcheck_destroy(nc);
    }
    latch_signal(&s->latch);
}

static void netcheck_state_init(netcheck_state *s) {
    memset(s, 0, sizeof *s);
    latch_init(&s->latch);
    s->main_thread = pthread_self();
    s->result = 1; /* not called yet */
}

/* A netcheck against `uri`; with `gateway` also the gateway probe there. */
static void test_netcheck(const char *what, const char *uri, const char *gateway) {
    printf("netcheck against %s (%s)\n", what, uri);
    netcheck_state s;
    netcheck_state_init(&s);
    const char *servers[] = {uri};
    pinhole_netcheck_config cfg;
    CHECK_RC(pinhole_netcheck_config_init(&cfg, sizeof cfg), PINHOLE_OK);
    cfg.stun_servers = servers;
    cfg.stun_server_count = 1;
    cfg.timeout_ms = 8000;
    cfg.no_portmap = gateway == NULL;
    cfg.gateway = gateway;
    cfg.cb_progress = on_progress;
    cfg.cb_done = on_done;
    cfg.user_ptr = &s;
    pinhole_netcheck *nc = NULL;
    CHECK_RC(pinhole_netcheck_start(&cfg, &nc), PINHOLE_OK);
    CHECK(nc != NULL);
    CHECK(latch_wait(&s.latch, 60));
    pinhole_netcheck_destroy(nc);
    CHECK_RC(s.result, PINHOLE_OK);
    CHECK(!s.on_main_thread);
    CHECK(s.progress_events >= 3);
    CHECK(s.replies == 1);
    CHECK(s.udp);
    /* Loopback has no NAT: everything is endpoint-independent and hairpins. */
    CHECK(s.mapping == PINHOLE_BEHAVIOUR_ENDPOINT_INDEPENDENT);
    CHECK(s.filtering == PINHOLE_BEHAVIOUR_ENDPOINT_INDEPENDENT);
    CHECK(s.hairpinning == PINHOLE_YES);
    /* No NAT keeps every local port. */
    CHECK(s.port_allocation == PINHOLE_PORT_ALLOCATION_PRESERVING);
    CHECK(s.servers == 1);
    CHECK(s.public_addresses >= 1);
    CHECK(s.server_answered);
    CHECK(strncmp(s.mapped, "127.0.0.1:", 10) == 0);
    printf("  mapping %s, filtering %s, mapped %s\n",
           s.mapping == PINHOLE_BEHAVIOUR_ENDPOINT_INDEPENDENT ? "endpoint-independent" : "?",
           s.filtering == PINHOLE_BEHAVIOUR_ENDPOINT_INDEPENDENT ? "endpoint-independent" : "?",
           s.mapped);
    if (gateway != NULL) {
        /* Nothing listens there: the probe runs and finds nothing. */
        CHECK(s.portmap_probed);
        CHECK(strcmp(s.gateway, gateway) == 0);
        CHECK(s.pcp != PINHOLE_YES);
        CHECK(s.natpmp != PINHOLE_YES);
        printf("  gateway %s: pcp %d, natpmp %d\n", s.gateway, s.pcp, s.natpmp);
    } else {
        CHECK(!s.portmap_probed);
    }
    latch_free(&s.latch);
}

static void test_netcheck_cancel_and_destroy(const char *silent_uri) {
    printf("netcheck cancel, destroy from a callback, destroy while running\n");
    const char *servers[] = {silent_uri};
    pinhole_netcheck_config cfg;
    CHECK_RC(pinhole_netcheck_config_init(&cfg, sizeof cfg), PINHOLE_OK);
    cfg.stun_servers = servers;
    cfg.stun_server_count = 1;
    cfg.timeout_ms = 60000;
    cfg.no_portmap = true;
    cfg.cb_done = on_done;

    /* Cancel: the done callback reports PINHOLE_ERR_CANCELLED. */
    netcheck_state s;
    netcheck_state_init(&s);
    cfg.user_ptr = &s;
    pinhole_netcheck *nc = NULL;
    CHECK_RC(pinhole_netcheck_start(&cfg, &nc), PINHOLE_OK);
    CHECK_RC(pinhole_netcheck_cancel(nc), PINHOLE_OK);
    CHECK(latch_wait(&s.latch, 20));
    CHECK_RC(s.result, PINHOLE_ERR_CANCELLED);
    CHECK(!s.on_main_thread);
    pinhole_netcheck_destroy(nc);
    latch_free(&s.latch);

    /* Cancel, and destroy the handle from its own done callback. */
    netcheck_state_init(&s);
    s.destroy_in_callback = 1;
    cfg.user_ptr = &s;
    nc = NULL;
    CHECK_RC(pinhole_netcheck_start(&cfg, &nc), PINHOLE_OK);
    CHECK_RC(pinhole_netcheck_cancel(nc), PINHOLE_OK);
    CHECK(latch_wait(&s.latch, 20));
    CHECK_RC(s.result, PINHOLE_ERR_CANCELLED);
    /* The thread ends after the callback returns. */
    CHECK(no_pinhole_threads(20));
    latch_free(&s.latch);

    /* Destroy while running: no callback afterwards. */
    netcheck_state_init(&s);
    cfg.user_ptr = &s;
    nc = NULL;
    CHECK_RC(pinhole_netcheck_start(&cfg, &nc), PINHOLE_OK);
    pinhole_netcheck_destroy(nc);
    CHECK(s.result == 1);
    latch_free(&s.latch);
}

/* ---- port mapping ---- */

typedef struct {
    latch latch;
    pthread_t main_thread;
    int on_main_thread;
    int events;
    int last_kind;
    int verification_events; /* VERIFIED, NOT_FORWARDING, UNVERIFIED */
    int unknown_kinds;
    char reason[256];
} portmap_state;

static void on_portmap(pinhole_portmap *pm, const pinhole_portmap_event *ev, void *user_ptr) {
    portmap_state *s = user_ptr;
    (void)pm;
    if (pthread_equal(pthread_self(), s->main_thread)) {
        s->on_main_thread = 1;
    }
    s->events++;
    s->last_kind = ev->kind;
    if (ev->reason != NULL) {
        snprintf(s->reason, sizeof s->reason, "%s", ev->reason);
    }
    switch (ev->kind) {
    case PINHOLE_PORTMAP_EVENT_MAPPED:
    case PINHOLE_PORTMAP_EVENT_RENEWED:
    case PINHOLE_PORTMAP_EVENT_CHANGED:
    case PINHOLE_PORTMAP_EVENT_LOST:
    case PINHOLE_PORTMAP_EVENT_UNAVAILABLE:
    case PINHOLE_PORTMAP_EVENT_RELEASED:
        break;
    case PINHOLE_PORTMAP_EVENT_VERIFIED:
    case PINHOLE_PORTMAP_EVENT_NOT_FORWARDING:
    case PINHOLE_PORTMAP_EVENT_UNVERIFIED:
        s->verification_events++;
        break;
    default:
        s->unknown_kinds++; /* kinds may be added later: a program ignores them */
        break;
    }
    if (ev->kind == PINHOLE_PORTMAP_EVENT_UNAVAILABLE || ev->kind == PINHOLE_PORTMAP_EVENT_RELEASED) {
        latch_signal(&s->latch);
    }
}

static void test_portmap(void) {
    /* 127.0.0.9: loopback, where no gateway listens. Never the machine's real gateway. */
    printf("port mapping via 127.0.0.9 (no gateway there)\n");
    portmap_state s;
    memset(&s, 0, sizeof s);
    latch_init(&s.latch);
    s.main_thread = pthread_self();
    s.last_kind = -1;
    pinhole_portmap_config cfg;
    CHECK_RC(pinhole_portmap_config_init(&cfg, sizeof cfg), PINHOLE_OK);
    cfg.gateway = "127.0.0.9";
    cfg.local_ip = "127.0.0.1";
    cfg.protocol = PINHOLE_PROTOCOL_UDP;
    cfg.internal_port = 40000;
    cfg.lifetime_s = 60;
    cfg.cb_event = on_portmap;
    cfg.user_ptr = &s;
    pinhole_portmap *pm = NULL;
    CHECK_RC(pinhole_portmap_start(&cfg, &pm), PINHOLE_OK);
    char buf[PINHOLE_ADDRESS_MAX];
    CHECK_RC(pinhole_portmap_get_external(pm, buf, sizeof buf), PINHOLE_ERR_NOT_AVAILABLE);
    CHECK(latch_wait(&s.latch, 30));
    CHECK(s.last_kind == PINHOLE_PORTMAP_EVENT_UNAVAILABLE);
    CHECK(s.reason[0] != '\0');
    CHECK(!s.on_main_thread);
    printf("  unavailable: %s\n", s.reason);
    CHECK_RC(pinhole_portmap_get_external(pm, buf, sizeof buf), PINHOLE_ERR_NOT_AVAILABLE);
    CHECK_RC(pinhole_portmap_release(pm), PINHOLE_OK);
    pinhole_portmap_destroy(pm);
    latch_free(&s.latch);

    /* Released before any answer: the mapper stops and says so. */
    memset(&s, 0, sizeof s);
    latch_init(&s.latch);
    s.main_thread = pthread_self();
    s.last_kind = -1;
    cfg.method = PINHOLE_METHOD_PCP;
    pm = NULL;
    CHECK_RC(pinhole_portmap_start(&cfg, &pm), PINHOLE_OK);
    CHECK_RC(pinhole_portmap_release(pm), PINHOLE_OK);
    CHECK(latch_wait(&s.latch, 30));
    CHECK(s.last_kind == PINHOLE_PORTMAP_EVENT_RELEASED ||
          s.last_kind == PINHOLE_PORTMAP_EVENT_UNAVAILABLE);
    pinhole_portmap_destroy(pm);
    latch_free(&s.latch);

    /* Destroyed while running. */
    memset(&s, 0, sizeof s);
    latch_init(&s.latch);
    cfg.method = PINHOLE_METHOD_ANY;
    pm = NULL;
    CHECK_RC(pinhole_portmap_start(&cfg, &pm), PINHOLE_OK);
    pinhole_portmap_destroy(pm);
    latch_free(&s.latch);
}

/* A UDP port on 127.0.0.1 that was free a moment ago (bound to port 0, then closed). */
static int free_udp_port(void) {
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof sa;
    int port = -1;
    if (fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0 &&
        getsockname(fd, (struct sockaddr *)&sa, &len) == 0) {
        port = ntohs(sa.sin_port);
    }
    if (fd >= 0) {
        close(fd);
    }
    return port;
}

static void test_portmap_verify(const char *serve_uri) {
    /* No gateway at 127.0.0.9, so nothing is mapped and nothing can be verified: what can
     * be checked here is that a well-formed reflector is accepted, resolved and the mapped
     * port bound, and that the mapper still ends cleanly. */
    printf("port mapping via 127.0.0.9 verified through %s (no gateway there)\n", serve_uri);
    int kinds[] = {PINHOLE_PORTMAP_EVENT_MAPPED,      PINHOLE_PORTMAP_EVENT_RENEWED,
                   PINHOLE_PORTMAP_EVENT_CHANGED,     PINHOLE_PORTMAP_EVENT_LOST,
                   PINHOLE_PORTMAP_EVENT_UNAVAILABLE, PINHOLE_PORTMAP_EVENT_RELEASED,
                   PINHOLE_PORTMAP_EVENT_VERIFIED,    PINHOLE_PORTMAP_EVENT_NOT_FORWARDING,
                   PINHOLE_PORTMAP_EVENT_UNVERIFIED};
    int distinct = 1;
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
        for (size_t j = i + 1; j < sizeof kinds / sizeof kinds[0]; j++) {
            distinct &= kinds[i] != kinds[j];
        }
    }
    CHECK(distinct);

    portmap_state s;
    memset(&s, 0, sizeof s);
    latch_init(&s.latch);
    s.main_thread = pthread_self();
    s.last_kind = -1;
    pinhole_portmap_config cfg;
    CHECK_RC(pinhole_portmap_config_init(&cfg, sizeof cfg), PINHOLE_OK);
    cfg.gateway = "127.0.0.9";
    cfg.local_ip = "127.0.0.1";
    cfg.internal_port = (uint16_t)free_udp_port();
    cfg.lifetime_s = 60;
    cfg.verify_stun = serve_uri;
    cfg.verify_interval_s = 5;
    cfg.cb_event = on_portmap;
    cfg.user_ptr = &s;
    pinhole_portmap *pm = NULL;
    CHECK(cfg.internal_port > 0);
    CHECK_RC(pinhole_portmap_start(&cfg, &pm), PINHOLE_OK);
    CHECK(latch_wait(&s.latch, 30));
    CHECK(s.last_kind == PINHOLE_PORTMAP_EVENT_UNAVAILABLE);
    CHECK(s.reason[0] != '\0');
    CHECK(strstr(s.reason, "verify_stun") == NULL);
    CHECK(strstr(s.reason, "mapped port") == NULL);
    CHECK(s.verification_events == 0 && s.unknown_kinds == 0);
    CHECK(!s.on_main_thread);
    printf("  unavailable: %s\n", s.reason);
    pinhole_portmap_destroy(pm);
    latch_free(&s.latch);

    /* The mapped port is taken: the answers could not be heard, and the mapper says so. */
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof sa;
    CHECK(fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0 &&
          getsockname(fd, (struct sockaddr *)&sa, &len) == 0);
    memset(&s, 0, sizeof s);
    latch_init(&s.latch);
    s.main_thread = pthread_self();
    s.last_kind = -1;
    cfg.internal_port = ntohs(sa.sin_port);
    cfg.verify_interval_s = 0; /* the default */
    pm = NULL;
    CHECK_RC(pinhole_portmap_start(&cfg, &pm), PINHOLE_OK);
    CHECK(latch_wait(&s.latch, 30));
    CHECK(s.last_kind == PINHOLE_PORTMAP_EVENT_UNAVAILABLE);
    CHECK(strstr(s.reason, "mapped port") != NULL);
    printf("  port taken: %s\n", s.reason);
    pinhole_portmap_destroy(pm);
    latch_free(&s.latch);
    close(fd);
}

/* ---- arguments ---- */

static void ignore_done(pinhole_netcheck *nc, int result, const pinhole_netcheck_report *r,
                        void *user_ptr) {
    (void)nc, (void)result, (void)r, (void)user_ptr;
}

static void ignore_portmap(pinhole_portmap *pm, const pinhole_portmap_event *ev, void *user_ptr) {
    (void)pm, (void)ev, (void)user_ptr;
}

static void test_arguments(void) {
    printf("argument validation\n");
    pinhole_netcheck *nc = NULL;
    pinhole_netcheck_config cfg;
    CHECK_RC(pinhole_netcheck_config_init(&cfg, sizeof cfg), PINHOLE_OK);
    CHECK_RC(pinhole_netcheck_start(NULL, &nc), PINHOLE_ERR_INVALID);
    CHECK_RC(pinhole_netcheck_start(&cfg, NULL), PINHOLE_ERR_INVALID);
    CHECK_RC(pinhole_netcheck_start(&cfg, &nc), PINHOLE_ERR_INVALID); /* no cb_done */
    cfg.cb_done = ignore_done;
    cfg.stun_server_count = 1; /* stun_servers NULL */
    CHECK_RC(pinhole_netcheck_start(&cfg, &nc), PINHOLE_ERR_INVALID);
    const char *bad[] = {"http://example.org"};
    cfg.stun_servers = bad;
    CHECK_RC(pinhole_netcheck_start(&cfg, &nc), PINHOLE_ERR_INVALID);
    const char *tls[] = {"stuns:127.0.0.1:5349"};
    cfg.stun_servers = tls;
    CHECK_RC(pinhole_netcheck_start(&cfg, &nc), PINHOLE_ERR_UNSUPPORTED);
    const char *null_server[] = {NULL};
    cfg.stun_servers = null_server;
    CHECK_RC(pinhole_netcheck_start(&cfg, &nc), PINHOLE_ERR_INVALID);
    const char *ok[] = {"stun:127.0.0.1:3478"};
    cfg.stun_servers = ok;
    cfg.gateway = "not-an-ip";
    CHECK_RC(pinhole_netcheck_start(&cfg, &nc), PINHOLE_ERR_INVALID);
    cfg.gateway = NULL;
    cfg.timeout_ms = 4000000;
    CHECK_RC(pinhole_netcheck_start(&cfg, &nc), PINHOLE_ERR_INVALID);
    CHECK(nc == NULL);
    CHECK_RC(pinhole_netcheck_cancel(NULL), PINHOLE_ERR_INVALID);
    pinhole_netcheck_destroy(NULL);

    pinhole_portmap *pm = NULL;
    pinhole_portmap_config pcfg;
    CHECK_RC(pinhole_portmap_config_init(&pcfg, sizeof pcfg), PINHOLE_OK);
    CHECK_RC(pinhole_portmap_start(NULL, &pm), PINHOLE_ERR_INVALID);
    CHECK_RC(pinhole_portmap_start(&pcfg, NULL), PINHOLE_ERR_INVALID);
    CHECK_RC(pinhole_portmap_start(&pcfg, &pm), PINHOLE_ERR_INVALID); /* no cb_event */
    pcfg.cb_event = ignore_portmap;
    pcfg.gateway = "127.0.0.9";
    CHECK_RC(pinhole_portmap_start(&pcfg, &pm), PINHOLE_ERR_INVALID); /* port 0 */
    pcfg.internal_port = 40000;
    pcfg.protocol = 7;
    CHECK_RC(pinhole_portmap_start(&pcfg, &pm), PINHOLE_ERR_INVALID);
    pcfg.protocol = PINHOLE_PROTOCOL_TCP;
    pcfg.method = 9;
    CHECK_RC(pinhole_portmap_start(&pcfg, &pm), PINHOLE_ERR_INVALID);
    pcfg.method = PINHOLE_METHOD_UPNP;
    pcfg.gateway = NULL;
    pcfg.local_ip = "127.0.0.1"; /* local_ip needs a gateway */
    CHECK_RC(pinhole_portmap_start(&pcfg, &pm), PINHOLE_ERR_INVALID);
    pcfg.gateway = "::zz";
    CHECK_RC(pinhole_portmap_start(&pcfg, &pm), PINHOLE_ERR_INVALID);
    /* The verification reflector: checked at start. */
    pcfg.gateway = "127.0.0.9";
    pcfg.method = PINHOLE_METHOD_ANY;
    pcfg.protocol = PINHOLE_PROTOCOL_UDP;
    const char *bad_verify[] = {"http://127.0.0.1:3478", "stun:", "stun:127.0.0.1:99999",
                                "127.0.0.1:3478", ""};
    for (size_t i = 0; i < sizeof bad_verify / sizeof bad_verify[0]; i++) {
        pcfg.verify_stun = bad_verify[i];
        CHECK_RC(pinhole_portmap_start(&pcfg, &pm), PINHOLE_ERR_INVALID);
    }
    pcfg.verify_stun = "stuns:127.0.0.1:5349";
    CHECK_RC(pinhole_portmap_start(&pcfg, &pm), PINHOLE_ERR_UNSUPPORTED);
    pcfg.verify_stun = "stun:127.0.0.1:3478";
    pcfg.protocol = PINHOLE_PROTOCOL_TCP; /* only UDP mappings can be verified */
    CHECK_RC(pinhole_portmap_start(&pcfg, &pm), PINHOLE_ERR_INVALID);
    pcfg.protocol = PINHOLE_PROTOCOL_UDP;
    pcfg.verify_interval_s = 86401;
    CHECK_RC(pinhole_portmap_start(&pcfg, &pm), PINHOLE_ERR_INVALID);
    CHECK(pm == NULL);
    char buf[PINHOLE_ADDRESS_MAX];
    CHECK_RC(pinhole_portmap_get_external(NULL, buf, sizeof buf), PINHOLE_ERR_INVALID);
    CHECK_RC(pinhole_portmap_release(NULL), PINHOLE_ERR_INVALID);
    pinhole_portmap_destroy(NULL);

    pinhole_server *srv = NULL;
    CHECK_RC(pinhole_server_start("127.0.0.1:0", NULL, NULL), PINHOLE_ERR_INVALID);
    CHECK_RC(pinhole_server_start("localhost", NULL, &srv), PINHOLE_ERR_INVALID);
    CHECK_RC(pinhole_server_start(NULL, "127.0.0.2:3478", &srv), PINHOLE_ERR_INVALID);
    CHECK(srv == NULL);
    CHECK(pinhole_server_address_count(NULL) == 0);
    CHECK_RC(pinhole_server_get_address(NULL, 0, buf, sizeof buf), PINHOLE_ERR_INVALID);
    pinhole_server_destroy(NULL);

    CHECK_RC(pinhole_set_log_handler(on_log, 42, NULL), PINHOLE_ERR_INVALID);
}

static void test_misc(void) {
    printf("version %s\n", pinhole_version());
    CHECK(strlen(pinhole_version()) >= 5);
    CHECK(strcmp(pinhole_strerror(PINHOLE_OK), "success") == 0);
    int codes[] = {PINHOLE_ERR_INVALID, PINHOLE_ERR_TOO_SMALL, PINHOLE_ERR_NO_SERVER,
                   PINHOLE_ERR_UNSUPPORTED, PINHOLE_ERR_IO, PINHOLE_ERR_CANCELLED,
                   PINHOLE_ERR_NOT_AVAILABLE, PINHOLE_ERR_INTERNAL, PINHOLE_ERR_AUTH,
                   PINHOLE_ERR_REFUSED, PINHOLE_ERR_TIMEOUT};
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
        CHECK(codes[i] < 0);
        CHECK(strcmp(pinhole_strerror(codes[i]), "unknown error") != 0);
    }
    CHECK(strcmp(pinhole_strerror(-1000), "unknown error") == 0);
}

/* The header's version macros, checked at compile time and against the library. */
_Static_assert(PINHOLE_VERSION_NUMBER == ((PINHOLE_VERSION_MAJOR << 16) |
                                          (PINHOLE_VERSION_MINOR << 8) | PINHOLE_VERSION_PATCH),
               "PINHOLE_VERSION_NUMBER is (major << 16) | (minor << 8) | patch");
#if !defined(PINHOLE_VERSION_NUMBER) || PINHOLE_VERSION_NUMBER < 0x000100
#error "PINHOLE_VERSION_NUMBER is not usable in #if"
#endif

static void ignore_turn(pinhole_turn *turn, const pinhole_turn_event *ev, void *user_ptr);

static void *last_error_on_another_thread(void *arg) {
    int *ok = arg;
    /* The main thread's failure does not show here. */
    ok[0] = strcmp(pinhole_last_error(), "") == 0;
    pinhole_server *srv = NULL;
    ok[1] = pinhole_server_start("localhost", NULL, &srv) == PINHOLE_ERR_INVALID &&
            strstr(pinhole_last_error(), "invalid argument") != NULL && srv == NULL;
    return NULL;
}

static void test_version_and_last_error(void) {
    printf("version number %06x, last error\n", (unsigned)pinhole_version_number());
    CHECK(pinhole_version_number() == PINHOLE_VERSION_NUMBER);
    char v[32];
    snprintf(v, sizeof v, "%d.%d.%d", PINHOLE_VERSION_MAJOR, PINHOLE_VERSION_MINOR,
             PINHOLE_VERSION_PATCH);
    CHECK(strcmp(pinhole_version(), v) == 0);

    /* Nothing failed on this thread yet. */
    CHECK(strcmp(pinhole_last_error(), "") == 0);

    /* Every *_start that fails says why. */
    pinhole_netcheck *nc = NULL;
    pinhole_netcheck_config cfg;
    CHECK_RC(pinhole_netcheck_config_init(&cfg, sizeof cfg), PINHOLE_OK);
    cfg.cb_done = ignore_done;
    const char *bad[] = {"http://example.org"};
    cfg.stun_servers = bad;
    cfg.stun_server_count = 1;
    CHECK_RC(pinhole_netcheck_start(&cfg, &nc), PINHOLE_ERR_INVALID);
    printf("  netcheck: %s\n", pinhole_last_error());
    CHECK(strncmp(pinhole_last_error(), "invalid argument: ", 18) == 0);
    const char *tls[] = {"stuns:127.0.0.1:5349"};
    cfg.stun_servers = tls;
    CHECK_RC(pinhole_netcheck_start(&cfg, &nc), PINHOLE_ERR_UNSUPPORTED);
    printf("  netcheck: %s\n", pinhole_last_error());
    CHECK(strncmp(pinhole_last_error(), "unsupported: ", 13) == 0);
    CHECK(nc == NULL);

    pinhole_portmap *pm = NULL;
    pinhole_portmap_config pcfg;
    CHECK_RC(pinhole_portmap_config_init(&pcfg, sizeof pcfg), PINHOLE_OK);
    CHECK_RC(pinhole_portmap_start(&pcfg, &pm), PINHOLE_ERR_INVALID);
    printf("  portmap: %s\n", pinhole_last_error());
    CHECK(strstr(pinhole_last_error(), "cb_event") != NULL);
    CHECK(pm == NULL);

    pinhole_turn *turn = NULL;
    pinhole_turn_config tcfg;
    CHECK_RC(pinhole_turn_config_init(&tcfg, sizeof tcfg), PINHOLE_OK);
    tcfg.cb_event = ignore_turn;
    tcfg.uri = "turn:127.0.0.1:3478";
    tcfg.username = "user";
    tcfg.password = "pw";
    tcfg.secret = "s";
    CHECK_RC(pinhole_turn_allocate(&tcfg, &turn), PINHOLE_ERR_INVALID);
    printf("  turn: %s\n", pinhole_last_error());
    CHECK(strncmp(pinhole_last_error(), "invalid argument: ", 18) == 0);
    CHECK(turn == NULL);

    pinhole_server *srv = NULL;
    CHECK_RC(pinhole_server_start("localhost", NULL, &srv), PINHOLE_ERR_INVALID);
    printf("  server: %s\n", pinhole_last_error());
    CHECK(strncmp(pinhole_last_error(), "invalid argument: ", 18) == 0);
    CHECK(srv == NULL);

    /* A buffer too small is a failure too, with the code's description. */
    CHECK_RC(pinhole_server_start("127.0.0.1:0", NULL, &srv), PINHOLE_OK);
    CHECK(strcmp(pinhole_last_error(), "") == 0); /* a success clears it */
    char tiny[4];
    CHECK_RC(pinhole_server_get_address(srv, 0, tiny, sizeof tiny), PINHOLE_ERR_TOO_SMALL);
    CHECK(strcmp(pinhole_last_error(), "buffer too small") == 0);

    /* Per thread: another thread starts clean and its failure stays there. */
    CHECK_RC(pinhole_server_start("localhost", NULL, NULL), PINHOLE_ERR_INVALID);
    char mine[256];
    snprintf(mine, sizeof mine, "%s", pinhole_last_error());
    int ok[2] = {0};
    pthread_t t;
    CHECK(pthread_create(&t, NULL, last_error_on_another_thread, ok) == 0);
    pthread_join(t, NULL);
    CHECK(ok[0] == 1);
    CHECK(ok[1] == 1);
    CHECK(strcmp(pinhole_last_error(), mine) == 0);
    pinhole_server_destroy(srv);
}

/* The embedded server: addresses into caller buffers, then a netcheck against it. */
static void test_server(void) {
    printf("embedded servers\n");
    pinhole_server *plain = NULL;
    CHECK_RC(pinhole_server_start("127.0.0.1:0", NULL, &plain), PINHOLE_OK);
    CHECK(pinhole_server_address_count(plain) == 1);
    char buf[PINHOLE_ADDRESS_MAX];
    int n = pinhole_server_get_address(plain, 0, buf, sizeof buf);
    CHECK(n > 10 && (size_t)n == strlen(buf));
    CHECK(strncmp(buf, "127.0.0.1:", 10) == 0 && strcmp(buf, "127.0.0.1:0") != 0);
    char tiny[4];
    CHECK_RC(pinhole_server_get_address(plain, 0, tiny, sizeof tiny), PINHOLE_ERR_TOO_SMALL);
    CHECK(tiny[0] == '\0');
    CHECK_RC(pinhole_server_get_address(plain, 1, buf, sizeof buf), PINHOLE_ERR_INVALID);
    CHECK_RC(pinhole_server_get_address(plain, 0, NULL, 10), PINHOLE_ERR_INVALID);
    pinhole_server_destroy(plain);

    pinhole_server *rfc5780 = NULL;
    CHECK_RC(pinhole_server_start(NULL, NULL, &rfc5780), PINHOLE_OK);
    CHECK(pinhole_server_address_count(rfc5780) == 4);
    CHECK(pinhole_server_get_address(rfc5780, 0, buf, sizeof buf) > 0);
    char uri[PINHOLE_ADDRESS_MAX + 8];
    snprintf(uri, sizeof uri, "stun:%s", buf);
    test_netcheck("the embedded RFC 5780 server", uri, NULL);
    pinhole_server_destroy(rfc5780);
}

/* ---- TURN ---- */

static const char *turn_uri, *turn_user, *turn_password, *turn_secret;

#define TURN_KINDS 9

typedef struct {
    pthread_mutex_t mutex;
    pthread_cond_t cond;
    pthread_t main_thread;
    int on_main_thread;
    int kinds[TURN_KINDS]; /* events seen, by kind */
    int total;
    int last_kind;
    int result; /* of the last failure */
    char reason[256];
    char relayed[PINHOLE_ADDRESS_MAX], mapped[PINHOLE_ADDRESS_MAX], peer[PINHOLE_ADDRESS_MAX];
    uint32_t lifetime_s;
    uint16_t channel;
    int data_count;
    char data[256];
    size_t data_len;
    char data_peer[PINHOLE_ADDRESS_MAX];
    int destroy_on_allocated;
} turn_state;

static void turn_state_init(turn_state *s) {
    memset(s, 0, sizeof *s);
    pthread_mutex_init(&s->mutex, NULL);
    pthread_cond_init(&s->cond, NULL);
    s->main_thread = pthread_self();
    s->last_kind = -1;
}

static void turn_state_free(turn_state *s) {
    pthread_mutex_destroy(&s->mutex);
    pthread_cond_destroy(&s->cond);
}

static void on_turn_event(pinhole_turn *turn, const pinhole_turn_event *ev, void *user_ptr) {
    turn_state *s = user_ptr;
    pthread_mutex_lock(&s->mutex);
    if (pthread_equal(pthread_self(), s->main_thread)) {
        s->on_main_thread = 1;
    }
    if (ev->kind >= 0 && ev->kind < TURN_KINDS) {
        s->kinds[ev->kind]++;
    }
    s->total++;
    s->last_kind = ev->kind;
    switch (ev->kind) {
    case PINHOLE_TURN_EVENT_ALLOCATED:
        snprintf(s->relayed, sizeof s->relayed, "%s", ev->relayed);
        snprintf(s->mapped, sizeof s->mapped, "%s", ev->mapped);
        s->lifetime_s = ev->lifetime_s;
        break;
    case PINHOLE_TURN_EVENT_PERMISSION:
        snprintf(s->peer, sizeof s->peer, "%s", ev->peer);
        break;
    case PINHOLE_TURN_EVENT_CHANNEL:
        snprintf(s->peer, sizeof s->peer, "%s", ev->peer);
        s->channel = ev->channel;
        break;
    default:
        break;
    }
    if (ev->reason != NULL) {
        s->result = ev->result;
        snprintf(s->reason, sizeof s->reason, "%s", ev->reason);
    }
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->mutex);
    if (s->destroy_on_allocated && ev->kind == PINHOLE_TURN_EVENT_ALLOCATED) {
        /* Allowed: freed at once; the deallocation finishes in the background. */
        pinhole_turn_destroy(turn);
    }
}

static void on_turn_data(pinhole_turn *turn, const char *peer, const uint8_t *data, size_t len,
                         void *user_ptr) {
    turn_state *s = user_ptr;
    (void)turn;
    pthread_mutex_lock(&s->mutex);
    s->data_count++;
    s->data_len = len < sizeof s->data ? len : sizeof s->data;
    memcpy(s->data, data, s->data_len);
    snprintf(s->data_peer, sizeof s->data_peer, "%s", peer);
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->mutex);
}

/* Waits up to `seconds` until `*counter` >= `want`; returns whether it got there. */
static int turn_wait(turn_state *s, const int *counter, int want, int seconds) {
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += seconds;
    pthread_mutex_lock(&s->mutex);
    while (*counter < want) {
        if (pthread_cond_timedwait(&s->cond, &s->mutex, &deadline) != 0) {
            break;
        }
    }
    int ok = *counter >= want;
    pthread_mutex_unlock(&s->mutex);
    return ok;
}

static void turn_config(pinhole_turn_config *cfg, turn_state *s) {
    CHECK_RC(pinhole_turn_config_init(cfg, sizeof *cfg), PINHOLE_OK);
    cfg->uri = turn_uri;
    cfg->username = turn_user;
    cfg->password = turn_password;
    cfg->lifetime_s = 300;
    cfg->cb_event = on_turn_event;
    cfg->cb_data = on_turn_data;
    cfg->user_ptr = s;
}

/* A UDP socket on 127.0.0.1 with a receive timeout: the peer on the far side of the relay. */
static int peer_socket(char *addr, size_t size) {
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(fd, (struct sockaddr *)&sa, sizeof sa);
    socklen_t len = sizeof sa;
    getsockname(fd, (struct sockaddr *)&sa, &len);
    snprintf(addr, size, "127.0.0.1:%u", (unsigned)ntohs(sa.sin_port));
    struct timeval tv = {5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return fd;
}

static struct sockaddr_in parse_addr(const char *text) {
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    char ip[PINHOLE_ADDRESS_MAX];
    snprintf(ip, sizeof ip, "%s", text);
    char *colon = strrchr(ip, ':');
    if (colon != NULL) {
        *colon = '\0';
        sa.sin_port = htons((uint16_t)atoi(colon + 1));
    }
    inet_pton(AF_INET, ip, &sa.sin_addr);
    return sa;
}

static void peer_send(int fd, const char *to, const char *text) {
    struct sockaddr_in sa = parse_addr(to);
    sendto(fd, text, strlen(text), 0, (struct sockaddr *)&sa, sizeof sa);
}

/* Receives one datagram (bounded by the socket's timeout); returns its length or -1. */
static ssize_t peer_recv(int fd, char *buf, size_t size, char *from, size_t from_size) {
    struct sockaddr_in sa;
    socklen_t len = sizeof sa;
    ssize_t n = recvfrom(fd, buf, size - 1, 0, (struct sockaddr *)&sa, &len);
    if (n >= 0) {
        buf[n] = '\0';
        char ip[INET_ADDRSTRLEN];
        inet_ntop(AF_INET, &sa.sin_addr, ip, sizeof ip);
        snprintf(from, from_size, "%s:%u", ip, (unsigned)ntohs(sa.sin_port));
    }
    return n;
}

/* Whether the server has closed the relayed port: a datagram to it draws ICMP port
 * unreachable, which a connected socket reports as ECONNREFUSED. Tries for up to ~5 s. */
static int relay_released(const char *relayed) {
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in sa = parse_addr(relayed);
    connect(fd, (struct sockaddr *)&sa, sizeof sa);
    struct timeval tv = {0, 200 * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    int released = 0;
    for (int i = 0; i < 25 && !released; i++) {
        char buf[16];
        if (send(fd, "x", 1, 0) < 0 && errno == ECONNREFUSED) {
            released = 1;
        } else if (recv(fd, buf, sizeof buf, 0) < 0 && errno == ECONNREFUSED) {
            released = 1;
        }
    }
    close(fd);
    return released;
}

static void test_turn_relay(void) {
    printf("TURN allocation on %s: permission, channel, data both ways, deallocation\n", turn_uri);
    turn_state s;
    turn_state_init(&s);
    pinhole_turn_config cfg;
    turn_config(&cfg, &s);
    pinhole_turn *turn = NULL;
    CHECK_RC(pinhole_turn_allocate(&cfg, &turn), PINHOLE_OK);
    CHECK(turn != NULL);
    CHECK(turn_wait(&s, &s.kinds[PINHOLE_TURN_EVENT_ALLOCATED], 1, 20));
    CHECK(s.kinds[PINHOLE_TURN_EVENT_LOST] == 0);
    CHECK(strncmp(s.relayed, "127.0.0.1:", 10) == 0);
    CHECK(strncmp(s.mapped, "127.0.0.1:", 10) == 0);
    /* Asked 300 s; pinhole's server, as coturn, grants at least its default 600 s
     * (RFC 8656 section 7.2). */
    CHECK(s.lifetime_s == 600);
    CHECK(!s.on_main_thread);
    char buf[PINHOLE_ADDRESS_MAX];
    int n = pinhole_turn_get_relayed(turn, buf, sizeof buf);
    CHECK(n > 10 && strcmp(buf, s.relayed) == 0);
    CHECK(pinhole_turn_get_mapped(turn, buf, sizeof buf) > 10 && strcmp(buf, s.mapped) == 0);
    char tiny[4];
    CHECK_RC(pinhole_turn_get_relayed(turn, tiny, sizeof tiny), PINHOLE_ERR_TOO_SMALL);
    printf("  relayed %s, mapped %s, lifetime %u s\n", s.relayed, s.mapped, s.lifetime_s);

    char peer_addr[PINHOLE_ADDRESS_MAX], from[PINHOLE_ADDRESS_MAX], got[256];
    int peer = peer_socket(peer_addr, sizeof peer_addr);

    /* Without a permission, data to a peer fails and data from it is dropped. */
    CHECK_RC(pinhole_turn_send(turn, "127.0.0.2:9", (const uint8_t *)"x", 1), PINHOLE_OK);
    CHECK(turn_wait(&s, &s.kinds[PINHOLE_TURN_EVENT_SEND_FAILED], 1, 10));
    CHECK_RC(s.result, PINHOLE_ERR_NOT_AVAILABLE);

    /* A permission: peer -> relay -> client, client -> relay -> peer (Send indications). */
    CHECK_RC(pinhole_turn_create_permission(turn, "127.0.0.1"), PINHOLE_OK);
    CHECK(turn_wait(&s, &s.kinds[PINHOLE_TURN_EVENT_PERMISSION], 1, 10));
    CHECK(strcmp(s.peer, "127.0.0.1") == 0);
    peer_send(peer, s.relayed, "hello through the relay");
    CHECK(turn_wait(&s, &s.data_count, 1, 10));
    pthread_mutex_lock(&s.mutex);
    CHECK(s.data_len == strlen("hello through the relay") &&
          memcmp(s.data, "hello through the relay", s.data_len) == 0);
    CHECK(strcmp(s.data_peer, peer_addr) == 0);
    pthread_mutex_unlock(&s.mutex);
    const char *reply = "reply by Send indication";
    CHECK_RC(pinhole_turn_send(turn, peer_addr, (const uint8_t *)reply, strlen(reply)), PINHOLE_OK);
    CHECK(peer_recv(peer, got, sizeof got, from, sizeof from) == (ssize_t)strlen(reply));
    CHECK(strcmp(got, reply) == 0);
    CHECK(strcmp(from, s.relayed) == 0);

    /* A channel: the same both ways as ChannelData. */
    CHECK_RC(pinhole_turn_bind_channel(turn, peer_addr), PINHOLE_OK);
    CHECK(turn_wait(&s, &s.kinds[PINHOLE_TURN_EVENT_CHANNEL], 1, 10));
    CHECK(s.channel >= 0x4000 && s.channel <= 0x4FFF);
    CHECK(strcmp(s.peer, peer_addr) == 0);
    const char *over = "over channel 0x4000";
    CHECK_RC(pinhole_turn_send(turn, peer_addr, (const uint8_t *)over, strlen(over)), PINHOLE_OK);
    CHECK(peer_recv(peer, got, sizeof got, from, sizeof from) == (ssize_t)strlen(over));
    CHECK(strcmp(got, over) == 0 && strcmp(from, s.relayed) == 0);
    peer_send(peer, s.relayed, "back over the channel");
    CHECK(turn_wait(&s, &s.data_count, 2, 10));
    pthread_mutex_lock(&s.mutex);
    CHECK(s.data_len == strlen("back over the channel") &&
          memcmp(s.data, "back over the channel", s.data_len) == 0);
    pthread_mutex_unlock(&s.mutex);
    printf("  channel %#06x to %s: data both ways\n", s.channel, peer_addr);
    CHECK_RC(pinhole_turn_send(turn, peer_addr, NULL, 0), PINHOLE_OK); /* empty is fine */

    /* Arguments. */
    CHECK_RC(pinhole_turn_send(turn, "nope", (const uint8_t *)"x", 1), PINHOLE_ERR_INVALID);
    CHECK_RC(pinhole_turn_send(turn, NULL, (const uint8_t *)"x", 1), PINHOLE_ERR_INVALID);
    CHECK_RC(pinhole_turn_send(turn, peer_addr, NULL, 1), PINHOLE_ERR_INVALID);
    CHECK_RC(pinhole_turn_send(turn, peer_addr, (const uint8_t *)"x", PINHOLE_TURN_DATA_MAX + 1),
             PINHOLE_ERR_INVALID);
    CHECK_RC(pinhole_turn_create_permission(turn, "127.0.0.1:80"), PINHOLE_ERR_INVALID);
    CHECK_RC(pinhole_turn_create_permission(turn, NULL), PINHOLE_ERR_INVALID);
    CHECK_RC(pinhole_turn_bind_channel(turn, "127.0.0.1"), PINHOLE_ERR_INVALID);

    /* Deallocation: the event, then nothing is available and the server freed the port. */
    CHECK_RC(pinhole_turn_deallocate(turn), PINHOLE_OK);
    CHECK(turn_wait(&s, &s.kinds[PINHOLE_TURN_EVENT_DEALLOCATED], 1, 10));
    CHECK(s.last_kind == PINHOLE_TURN_EVENT_DEALLOCATED);
    CHECK_RC(pinhole_turn_get_relayed(turn, buf, sizeof buf), PINHOLE_ERR_NOT_AVAILABLE);
    CHECK_RC(pinhole_turn_send(turn, peer_addr, (const uint8_t *)"x", 1), PINHOLE_ERR_NOT_AVAILABLE);
    CHECK_RC(pinhole_turn_create_permission(turn, "127.0.0.1"), PINHOLE_ERR_NOT_AVAILABLE);
    CHECK(relay_released(s.relayed));
    CHECK(!s.on_main_thread);
    pinhole_turn_destroy(turn);
    close(peer);
    turn_state_free(&s);
}

static void test_turn_credentials_and_destroy(void) {
    printf("TURN: wrong password, REST credentials, destroy while allocated and from a callback\n");
    turn_state s;
    turn_state_init(&s);
    pinhole_turn_config cfg;
    turn_config(&cfg, &s);
    cfg.password = "not the password";
    pinhole_turn *turn = NULL;
    CHECK_RC(pinhole_turn_allocate(&cfg, &turn), PINHOLE_OK);
    CHECK(turn_wait(&s, &s.kinds[PINHOLE_TURN_EVENT_LOST], 1, 20));
    CHECK_RC(s.result, PINHOLE_ERR_AUTH);
    CHECK(s.kinds[PINHOLE_TURN_EVENT_ALLOCATED] == 0);
    printf("  wrong password: %s (%s)\n", pinhole_strerror(s.result), s.reason);
    char buf[PINHOLE_ADDRESS_MAX];
    CHECK_RC(pinhole_turn_get_relayed(turn, buf, sizeof buf), PINHOLE_ERR_NOT_AVAILABLE);
    CHECK_RC(pinhole_turn_create_permission(turn, "127.0.0.1"), PINHOLE_ERR_NOT_AVAILABLE);
    pinhole_turn_destroy(turn);
    turn_state_free(&s);

    /* REST credentials derived from the shared secret; destroyed while allocated. */
    turn_state_init(&s);
    turn_config(&cfg, &s);
    cfg.password = NULL;
    cfg.secret = turn_secret;
    cfg.rest_ttl_s = 600;
    turn = NULL;
    CHECK_RC(pinhole_turn_allocate(&cfg, &turn), PINHOLE_OK);
    CHECK(turn_wait(&s, &s.kinds[PINHOLE_TURN_EVENT_ALLOCATED], 1, 20));
    CHECK(strncmp(s.relayed, "127.0.0.1:", 10) == 0);
    printf("  REST credentials: relayed %s\n", s.relayed);
    pinhole_turn_destroy(turn);
    pthread_mutex_lock(&s.mutex);
    int seen = s.total;
    pthread_mutex_unlock(&s.mutex);
    CHECK(relay_released(s.relayed));
    CHECK(s.total == seen); /* no callback after destroy: not even DEALLOCATED */
    CHECK(s.kinds[PINHOLE_TURN_EVENT_DEALLOCATED] == 0);
    turn_state_free(&s);

    /* A wrong REST secret is wrong credentials too. */
    turn_state_init(&s);
    turn_config(&cfg, &s);
    cfg.password = NULL;
    cfg.secret = "not the secret";
    turn = NULL;
    CHECK_RC(pinhole_turn_allocate(&cfg, &turn), PINHOLE_OK);
    CHECK(turn_wait(&s, &s.kinds[PINHOLE_TURN_EVENT_LOST], 1, 20));
    CHECK_RC(s.result, PINHOLE_ERR_AUTH);
    pinhole_turn_destroy(turn);
    turn_state_free(&s);

    /* Destroyed from its own ALLOCATED callback: deallocates in the background. */
    turn_state_init(&s);
    s.destroy_on_allocated = 1;
    turn_config(&cfg, &s);
    turn = NULL;
    CHECK_RC(pinhole_turn_allocate(&cfg, &turn), PINHOLE_OK);
    CHECK(turn_wait(&s, &s.kinds[PINHOLE_TURN_EVENT_ALLOCATED], 1, 20));
    CHECK(relay_released(s.relayed));
    /* The thread ends once the server has answered; no callback came meanwhile. */
    CHECK(no_pinhole_threads(20));
    CHECK(s.total == 1);
    turn_state_free(&s);

    /* Destroyed while allocating. */
    turn_state_init(&s);
    turn_config(&cfg, &s);
    turn = NULL;
    CHECK_RC(pinhole_turn_allocate(&cfg, &turn), PINHOLE_OK);
    pinhole_turn_destroy(turn);
    CHECK(s.total == 0 || s.last_kind == PINHOLE_TURN_EVENT_ALLOCATED);
    turn_state_free(&s);
}

static void ignore_turn(pinhole_turn *turn, const pinhole_turn_event *ev, void *user_ptr) {
    (void)turn, (void)ev, (void)user_ptr;
}

static void test_turn_arguments(void) {
    printf("TURN argument validation\n");
    pinhole_turn *turn = NULL;
    pinhole_turn_config cfg;
    CHECK_RC(pinhole_turn_config_init(&cfg, sizeof cfg), PINHOLE_OK);
    CHECK_RC(pinhole_turn_allocate(NULL, &turn), PINHOLE_ERR_INVALID);
    CHECK_RC(pinhole_turn_allocate(&cfg, NULL), PINHOLE_ERR_INVALID);
    CHECK_RC(pinhole_turn_allocate(&cfg, &turn), PINHOLE_ERR_INVALID); /* no cb_event */
    cfg.cb_event = ignore_turn;
    CHECK_RC(pinhole_turn_allocate(&cfg, &turn), PINHOLE_ERR_INVALID); /* no uri */
    cfg.uri = "turn:127.0.0.1:3478";
    CHECK_RC(pinhole_turn_allocate(&cfg, &turn), PINHOLE_ERR_INVALID); /* no username */
    cfg.username = "";
    cfg.password = "pw";
    CHECK_RC(pinhole_turn_allocate(&cfg, &turn), PINHOLE_ERR_INVALID); /* empty username */
    cfg.username = "user";
    cfg.password = NULL;
    CHECK_RC(pinhole_turn_allocate(&cfg, &turn), PINHOLE_ERR_INVALID); /* no credentials */
    cfg.password = "pw";
    cfg.secret = "s";
    CHECK_RC(pinhole_turn_allocate(&cfg, &turn), PINHOLE_ERR_INVALID); /* both */
    cfg.secret = NULL;
    cfg.family = 7;
    CHECK_RC(pinhole_turn_allocate(&cfg, &turn), PINHOLE_ERR_INVALID);
    cfg.family = PINHOLE_TURN_FAMILY_IPV4;
    cfg.uri = "stun:127.0.0.1";
    CHECK_RC(pinhole_turn_allocate(&cfg, &turn), PINHOLE_ERR_INVALID);
    cfg.uri = "turn:127.0.0.1?transport=sctp";
    CHECK_RC(pinhole_turn_allocate(&cfg, &turn), PINHOLE_ERR_INVALID);
    cfg.uri = "turns:127.0.0.1:5349";
    CHECK_RC(pinhole_turn_allocate(&cfg, &turn), PINHOLE_ERR_UNSUPPORTED); /* no tls feature */
    CHECK(turn == NULL);
    char buf[PINHOLE_ADDRESS_MAX];
    CHECK_RC(pinhole_turn_get_relayed(NULL, buf, sizeof buf), PINHOLE_ERR_INVALID);
    CHECK_RC(pinhole_turn_get_mapped(NULL, buf, sizeof buf), PINHOLE_ERR_INVALID);
    CHECK_RC(pinhole_turn_create_permission(NULL, "127.0.0.1"), PINHOLE_ERR_INVALID);
    CHECK_RC(pinhole_turn_bind_channel(NULL, "127.0.0.1:9"), PINHOLE_ERR_INVALID);
    CHECK_RC(pinhole_turn_send(NULL, "127.0.0.1:9", (const uint8_t *)"x", 1), PINHOLE_ERR_INVALID);
    CHECK_RC(pinhole_turn_deallocate(NULL), PINHOLE_ERR_INVALID);
    pinhole_turn_destroy(NULL);
}

/* ==== ABI: config structs read by their struct_size ==== */

/* A config of an older program: the struct through user_ptr (its first version), in a
 * buffer whose bytes after it are garbage that the library must not read. */
#define FIRST_VERSION(type) (offsetof(type, user_ptr) + sizeof(void *))
#define GARBAGE 0xAB

typedef struct {
    pinhole_portmap_config cfg;
    uint64_t newer[2]; /* fields of a newer header, unknown to this library */
} newer_portmap_config;

static void test_config_sizes(const char *silent_uri) {
    printf("config structs: struct_size, init, older and newer sizes, wrong sizes\n");
    pinhole_netcheck_config nc;
    pinhole_portmap_config pm;
    pinhole_turn_config tc;
    memset(&nc, GARBAGE, sizeof nc);
    memset(&pm, GARBAGE, sizeof pm);
    memset(&tc, GARBAGE, sizeof tc);
    CHECK_RC(pinhole_netcheck_config_init(&nc, sizeof nc), PINHOLE_OK);
    CHECK_RC(pinhole_portmap_config_init(&pm, sizeof pm), PINHOLE_OK);
    CHECK_RC(pinhole_turn_config_init(&tc, sizeof tc), PINHOLE_OK);
    CHECK(nc.struct_size == sizeof nc && pm.struct_size == sizeof pm &&
          tc.struct_size == sizeof tc);
    /* The defaults, spelled out; everything else zero. */
    CHECK(nc.timeout_ms == 10000 && nc.stun_server_count == 0 && nc.cb_done == NULL &&
          nc.gateway == NULL && !nc.no_portmap);
    CHECK(pm.lifetime_s == 7200 && pm.verify_interval_s == 300 && pm.verify_stun == NULL &&
          pm.protocol == PINHOLE_PROTOCOL_UDP && pm.method == PINHOLE_METHOD_ANY);
    CHECK(tc.lifetime_s == 600 && tc.rest_ttl_s == 86400 && tc.family == PINHOLE_TURN_FAMILY_IPV4 &&
          tc.ca_pem == NULL && tc.uri == NULL);

    /* Sizes that cannot be the struct's: an error that says why, nothing written. */
    size_t bad_sizes[] = {0, 4, FIRST_VERSION(pinhole_portmap_config) - sizeof(size_t),
                          sizeof pm + 1, 1u << 20};
    for (size_t i = 0; i < sizeof bad_sizes / sizeof bad_sizes[0]; i++) {
        memset(&pm, GARBAGE, sizeof pm);
        CHECK_RC(pinhole_portmap_config_init(&pm, bad_sizes[i]), PINHOLE_ERR_INVALID);
        CHECK(strstr(pinhole_last_error(), "struct_size") != NULL);
        CHECK(((unsigned char *)&pm)[0] == GARBAGE);
    }
    CHECK_RC(pinhole_turn_config_init(NULL, sizeof tc), PINHOLE_ERR_INVALID);

    /* A config not initialised (zeroed only, or garbage): refused, never read. */
    pinhole_portmap *handle = NULL;
    memset(&pm, 0, sizeof pm);
    pm.gateway = "127.0.0.9";
    pm.internal_port = 40000;
    pm.cb_event = ignore_portmap;
    CHECK_RC(pinhole_portmap_start(&pm, &handle), PINHOLE_ERR_INVALID);
    printf("  zeroed: %s\n", pinhole_last_error());
    CHECK(strstr(pinhole_last_error(), "pinhole_portmap_config_init") != NULL);
    memset(&tc, GARBAGE, sizeof tc);
    pinhole_turn *turn = NULL;
    CHECK_RC(pinhole_turn_allocate(&tc, &turn), PINHOLE_ERR_INVALID);
    CHECK(strstr(pinhole_last_error(), "struct_size") != NULL);
    memset(&nc, 0, sizeof nc);
    nc.struct_size = sizeof nc - 4; /* not a multiple of sizeof(size_t) */
    nc.cb_done = ignore_done;
    pinhole_netcheck *check = NULL;
    CHECK_RC(pinhole_netcheck_start(&nc, &check), PINHOLE_ERR_INVALID);
    CHECK(handle == NULL && turn == NULL && check == NULL);

    /* An older program's netcheck config: `gateway` (after user_ptr) is garbage beyond its
     * struct_size; read, it would be a wild pointer. */
    static unsigned char older[sizeof(pinhole_netcheck_config) + 64];
    memset(older, GARBAGE, sizeof older);
    pinhole_netcheck_config *onc = (pinhole_netcheck_config *)(void *)older;
    CHECK_RC(pinhole_netcheck_config_init(onc, FIRST_VERSION(pinhole_netcheck_config)),
             PINHOLE_OK);
    CHECK(older[FIRST_VERSION(pinhole_netcheck_config)] == GARBAGE); /* not written */
    const char *servers[] = {silent_uri};
    onc->stun_servers = servers;
    onc->stun_server_count = 1;
    onc->no_portmap = true;
    onc->cb_done = ignore_done;
    CHECK_RC(pinhole_netcheck_start(onc, &check), PINHOLE_OK);
    pinhole_netcheck_destroy(check);

    /* An older program's port-mapping config: verify_stun and verify_interval_s are
     * garbage beyond it (0xABAB... would be refused as an interval, or crash as a string). */
    static unsigned char older_pm[sizeof(pinhole_portmap_config) + 64];
    memset(older_pm, GARBAGE, sizeof older_pm);
    pinhole_portmap_config *opm = (pinhole_portmap_config *)(void *)older_pm;
    CHECK_RC(pinhole_portmap_config_init(opm, FIRST_VERSION(pinhole_portmap_config)), PINHOLE_OK);
    opm->gateway = "127.0.0.9";
    opm->local_ip = "127.0.0.1";
    opm->internal_port = 40000;
    opm->method = PINHOLE_METHOD_PCP;
    opm->cb_event = ignore_portmap;
    CHECK_RC(pinhole_portmap_start(opm, &handle), PINHOLE_OK);
    pinhole_portmap_destroy(handle);

    /* A newer program's config: accepted while the fields unknown here are zero, refused
     * (with why) once it sets one. */
    newer_portmap_config newer;
    memset(&newer, GARBAGE, sizeof newer);
    CHECK_RC(pinhole_portmap_config_init(&newer.cfg, sizeof newer), PINHOLE_OK);
    CHECK(newer.cfg.struct_size == sizeof newer && newer.newer[0] == 0 && newer.newer[1] == 0);
    newer.cfg.gateway = "127.0.0.9";
    newer.cfg.local_ip = "127.0.0.1";
    newer.cfg.internal_port = 40000;
    newer.cfg.method = PINHOLE_METHOD_PCP;
    newer.cfg.cb_event = ignore_portmap;
    handle = NULL;
    CHECK_RC(pinhole_portmap_start(&newer.cfg, &handle), PINHOLE_OK);
    pinhole_portmap_destroy(handle);
    newer.newer[1] = 7;
    handle = NULL;
    CHECK_RC(pinhole_portmap_start(&newer.cfg, &handle), PINHOLE_ERR_UNSUPPORTED);
    printf("  newer: %s\n", pinhole_last_error());
    CHECK(strstr(pinhole_last_error(), "does not know") != NULL);
    CHECK(handle == NULL);
}

/* ==== last error: every failing start says why ==== */

/* The last error names the code's kind and then the detail: "<strerror>...: <detail>". */
static int says_why(int code) {
    const char *e = pinhole_last_error();
    const char *colon = strstr(e, ": ");
    char kind[32];
    snprintf(kind, sizeof kind, "%s", pinhole_strerror(code));
    kind[8] = '\0'; /* "invalid " / "unsuppor" / "refused " ...: the message's start */
    return colon != NULL && colon[2] != '\0' && strncmp(e, kind, strlen(kind)) == 0;
}

static void test_start_errors(void) {
    printf("every failing start sets the last error\n");
    pinhole_netcheck *nc = NULL;
    pinhole_portmap *pm = NULL;
    pinhole_turn *turn = NULL;
    pinhole_netcheck_config ncfg;
    pinhole_portmap_config pcfg;
    pinhole_turn_config tcfg;

    CHECK_RC(pinhole_netcheck_start(NULL, &nc), PINHOLE_ERR_INVALID);
    CHECK(says_why(PINHOLE_ERR_INVALID));
    CHECK_RC(pinhole_netcheck_config_init(&ncfg, sizeof ncfg), PINHOLE_OK);
    CHECK_RC(pinhole_netcheck_start(&ncfg, NULL), PINHOLE_ERR_INVALID);
    CHECK(says_why(PINHOLE_ERR_INVALID) && strstr(pinhole_last_error(), "out") != NULL);
    CHECK_RC(pinhole_netcheck_start(&ncfg, &nc), PINHOLE_ERR_INVALID);
    CHECK(says_why(PINHOLE_ERR_INVALID) && strstr(pinhole_last_error(), "cb_done") != NULL);
    ncfg.cb_done = ignore_done;
    const char *tls[] = {"stuns:127.0.0.1:5349"};
    ncfg.stun_servers = tls;
    ncfg.stun_server_count = 1;
    CHECK_RC(pinhole_netcheck_start(&ncfg, &nc), PINHOLE_ERR_UNSUPPORTED);
    CHECK(says_why(PINHOLE_ERR_UNSUPPORTED) && strstr(pinhole_last_error(), "stuns:") != NULL);
    const char *ok[] = {"stun:127.0.0.1:3478"};
    ncfg.stun_servers = ok;
    ncfg.timeout_ms = 4000000;
    CHECK_RC(pinhole_netcheck_start(&ncfg, &nc), PINHOLE_ERR_INVALID);
    CHECK(says_why(PINHOLE_ERR_INVALID) && strstr(pinhole_last_error(), "timeout_ms") != NULL);
    ncfg.timeout_ms = 0;
    ncfg.stun_server_count = 40;
    CHECK_RC(pinhole_netcheck_start(&ncfg, &nc), PINHOLE_ERR_INVALID);
    CHECK(says_why(PINHOLE_ERR_INVALID));

    CHECK_RC(pinhole_portmap_config_init(&pcfg, sizeof pcfg), PINHOLE_OK);
    pcfg.cb_event = ignore_portmap;
    pcfg.gateway = "127.0.0.9";
    CHECK_RC(pinhole_portmap_start(&pcfg, &pm), PINHOLE_ERR_INVALID);
    CHECK(says_why(PINHOLE_ERR_INVALID) && strstr(pinhole_last_error(), "internal_port") != NULL);
    pcfg.internal_port = 40000;
    pcfg.method = 9;
    CHECK_RC(pinhole_portmap_start(&pcfg, &pm), PINHOLE_ERR_INVALID);
    CHECK(says_why(PINHOLE_ERR_INVALID) && strstr(pinhole_last_error(), "method") != NULL);
    pcfg.method = PINHOLE_METHOD_ANY;
    pcfg.gateway = "gateway.example";
    CHECK_RC(pinhole_portmap_start(&pcfg, &pm), PINHOLE_ERR_INVALID);
    CHECK(says_why(PINHOLE_ERR_INVALID) && strstr(pinhole_last_error(), "gateway") != NULL);
    pcfg.gateway = "127.0.0.9";
    pcfg.verify_stun = "stuns:127.0.0.1:5349";
    CHECK_RC(pinhole_portmap_start(&pcfg, &pm), PINHOLE_ERR_UNSUPPORTED);
    CHECK(says_why(PINHOLE_ERR_UNSUPPORTED) && strstr(pinhole_last_error(), "verify_stun") != NULL);

    CHECK_RC(pinhole_turn_config_init(&tcfg, sizeof tcfg), PINHOLE_OK);
    tcfg.cb_event = ignore_turn;
    CHECK_RC(pinhole_turn_allocate(&tcfg, &turn), PINHOLE_ERR_INVALID);
    CHECK(says_why(PINHOLE_ERR_INVALID) && strstr(pinhole_last_error(), "uri") != NULL);
    tcfg.uri = "turn:127.0.0.1:3478";
    tcfg.username = "user";
    CHECK_RC(pinhole_turn_allocate(&tcfg, &turn), PINHOLE_ERR_INVALID);
    CHECK(says_why(PINHOLE_ERR_INVALID));
    printf("  turn without credentials: %s\n", pinhole_last_error());
    tcfg.password = "pw";
    tcfg.family = 7;
    CHECK_RC(pinhole_turn_allocate(&tcfg, &turn), PINHOLE_ERR_INVALID);
    CHECK(says_why(PINHOLE_ERR_INVALID) && strstr(pinhole_last_error(), "family") != NULL);
    tcfg.family = PINHOLE_TURN_FAMILY_IPV4;
    tcfg.uri = "turns:127.0.0.1:5349";
    CHECK_RC(pinhole_turn_allocate(&tcfg, &turn), PINHOLE_ERR_UNSUPPORTED);
    CHECK(says_why(PINHOLE_ERR_UNSUPPORTED));
    printf("  turns: without tls: %s\n", pinhole_last_error());

    pinhole_server *srv = NULL, *other = NULL;
    CHECK_RC(pinhole_server_start("127.0.0.1:0", NULL, &srv), PINHOLE_OK);
    char addr[PINHOLE_ADDRESS_MAX];
    CHECK(pinhole_server_get_address(srv, 0, addr, sizeof addr) > 0);
    /* The port is taken: an I/O error that says so. */
    CHECK_RC(pinhole_server_start(addr, NULL, &other), PINHOLE_ERR_IO);
    printf("  server on a taken port: %s\n", pinhole_last_error());
    CHECK(strncmp(pinhole_last_error(), "I/O error: ", 11) == 0 && strlen(pinhole_last_error()) > 11);
    CHECK(other == NULL && nc == NULL && pm == NULL && turn == NULL);
    pinhole_server_destroy(srv);
}

/* ==== threads: destroying each handle from its callbacks and from other threads ==== */

/* Waits (bounded) until no thread of pinhole's is left in the process: the threads of
 * handles that ended in the background finish a moment after their last callback. */
static int no_pinhole_threads(int seconds) {
    for (int i = 0; i < seconds * 20; i++) {
        int found = 0;
        DIR *dir = opendir("/proc/self/task");
        if (dir == NULL) {
            return 0;
        }
        struct dirent *e;
        while ((e = readdir(dir)) != NULL) {
            if (e->d_name[0] == '.') {
                continue;
            }
            char path[300], name[32] = "";
            snprintf(path, sizeof path, "/proc/self/task/%s/comm", e->d_name);
            FILE *f = fopen(path, "r");
            if (f == NULL) {
                continue; /* ended meanwhile */
            }
            if (fgets(name, sizeof name, f) != NULL &&
                (strncmp(name, "pinhole-", 8) == 0 || strncmp(name, "tokio-", 6) == 0)) {
                found = 1;
            }
            fclose(f);
        }
        closedir(dir);
        if (!found) {
            return 1;
        }
        struct timespec pause = {0, 50 * 1000 * 1000};
        nanosleep(&pause, NULL);
    }
    return 0;
}

/* The completion of a *_destroy_async. */
typedef struct {
    latch latch;
    atomic_int count;
    pthread_t caller;
    atomic_int on_caller;
} destroyed_state;

static void destroyed_init(destroyed_state *d) {
    latch_init(&d->latch);
    atomic_store(&d->count, 0);
    atomic_store(&d->on_caller, 0);
    d->caller = pthread_self();
}

static void on_destroyed(void *user_ptr) {
    destroyed_state *d = user_ptr;
    if (pthread_equal(pthread_self(), d->caller)) {
        atomic_store(&d->on_caller, 1);
    }
    atomic_fetch_add(&d->count, 1);
    latch_signal(&d->latch);
}

/* Waits for the completion, then a little more: it came exactly once, not on the caller. */
static void check_destroyed_once(destroyed_state *d) {
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    CHECK(latch_wait(&d->latch, 20));
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("  completion %ld ms after the call returned\n",
           (long)((t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000));
    struct timespec pause = {0, 100 * 1000 * 1000};
    nanosleep(&pause, NULL);
    CHECK(atomic_load(&d->count) == 1);
    CHECK(atomic_load(&d->on_caller) == 0);
    latch_free(&d->latch);
}

/* A thread that destroys a handle. */
typedef struct {
    void (*destroy)(void *);
    void *handle;
} destroyer;

static void *destroy_on_thread(void *arg) {
    destroyer *d = arg;
    d->destroy(d->handle);
    return NULL;
}

static void destroy_from_another_thread(void (*destroy)(void *), void *handle) {
    destroyer d = {destroy, handle};
    pthread_t t;
    CHECK(pthread_create(&t, NULL, destroy_on_thread, &d) == 0);
    pthread_join(t, NULL);
}

static void netcheck_destroy_v(void *h) { pinhole_netcheck_destroy(h); }
static void portmap_destroy_v(void *h) { pinhole_portmap_destroy(h); }
static void turn_destroy_v(void *h) { pinhole_turn_destroy(h); }
static void server_destroy_v(void *h) { pinhole_server_destroy(h); }
static void peer_destroy_v(void *h) { pinhole_peer_destroy(h); }

/* ---- netcheck ---- */

typedef struct {
    latch entered, gate;
    int block;              /* the done callback waits at the gate */
    int destroy_in_progress; /* the progress callback destroys the handle */
    int async_in_done;      /* the done callback destroys it without waiting */
    atomic_int progress, done;
    destroyed_state *d;
    int async_rc, count_in_callback;
} nc_life;

static void life_progress(pinhole_netcheck *nc, const pinhole_netcheck_event *ev, void *user_ptr) {
    nc_life *l = user_ptr;
    (void)ev;
    atomic_fetch_add(&l->progress, 1);
    if (l->destroy_in_progress && atomic_load(&l->progress) == 1) {
        pinhole_netcheck_destroy(nc);
        latch_signal(&l->entered);
    }
}

static void life_done(pinhole_netcheck *nc, int result, const pinhole_netcheck_report *r,
                      void *user_ptr) {
    nc_life *l = user_ptr;
    (void)result, (void)r;
    atomic_fetch_add(&l->done, 1);
    if (l->async_in_done) {
        l->async_rc = pinhole_netcheck_destroy_async(nc, on_destroyed, l->d);
        l->count_in_callback = atomic_load(&l->d->count);
    }
    latch_signal(&l->entered);
    if (l->block) {
        latch_wait(&l->gate, 30);
    }
}

static void nc_life_init(nc_life *l, pinhole_netcheck_config *cfg, const char **servers) {
    memset(l, 0, sizeof *l);
    latch_init(&l->entered);
    latch_init(&l->gate);
    CHECK_RC(pinhole_netcheck_config_init(cfg, sizeof *cfg), PINHOLE_OK);
    cfg->stun_servers = servers;
    cfg->stun_server_count = 1;
    cfg->no_portmap = true;
    cfg->timeout_ms = 60000;
    cfg->cb_progress = life_progress;
    cfg->cb_done = life_done;
    cfg->user_ptr = l;
}

static void nc_life_free(nc_life *l) {
    latch_free(&l->entered);
    latch_free(&l->gate);
}

static void test_netcheck_lifecycle(const char *serve_uri, const char *silent_uri) {
    printf("netcheck: destroy from another thread, from progress; destroy_async\n");
    pinhole_netcheck_config cfg;
    const char *silent[] = {silent_uri}, *serve[] = {serve_uri};
    nc_life l;
    pinhole_netcheck *nc = NULL;

    /* Destroyed from another thread while it runs: no callback afterwards. */
    nc_life_init(&l, &cfg, silent);
    CHECK_RC(pinhole_netcheck_start(&cfg, &nc), PINHOLE_OK);
    destroy_from_another_thread(netcheck_destroy_v, nc);
    CHECK(atomic_load(&l.done) == 0);
    nc_life_free(&l);

    /* Destroyed from its first progress callback: no done callback. */
    nc_life_init(&l, &cfg, serve);
    l.destroy_in_progress = 1;
    nc = NULL;
    CHECK_RC(pinhole_netcheck_start(&cfg, &nc), PINHOLE_OK);
    CHECK(latch_wait(&l.entered, 20));
    CHECK(no_pinhole_threads(20));
    CHECK(atomic_load(&l.progress) == 1 && atomic_load(&l.done) == 0);
    nc_life_free(&l);

    /* destroy_async while its done callback is blocked: returns at once (a blocking
     * destroy would wait for the callback, which waits for us); the completion follows
     * only after the callback returns. */
    destroyed_state d;
    destroyed_init(&d);
    nc_life_init(&l, &cfg, silent);
    l.block = 1;
    nc = NULL;
    CHECK_RC(pinhole_netcheck_start(&cfg, &nc), PINHOLE_OK);
    CHECK_RC(pinhole_netcheck_cancel(nc), PINHOLE_OK);
    CHECK(latch_wait(&l.entered, 20));
    CHECK_RC(pinhole_netcheck_destroy_async(nc, on_destroyed, &d), PINHOLE_OK);
    CHECK(atomic_load(&d.count) == 0); /* the netcheck's thread is still in our callback */
    latch_signal(&l.gate);
    check_destroyed_once(&d);
    CHECK(atomic_load(&l.done) == 1);
    nc_life_free(&l);

    /* destroy_async from its own done callback: returns there, completes afterwards. */
    destroyed_init(&d);
    nc_life_init(&l, &cfg, silent);
    l.async_in_done = 1;
    l.d = &d;
    nc = NULL;
    CHECK_RC(pinhole_netcheck_start(&cfg, &nc), PINHOLE_OK);
    CHECK_RC(pinhole_netcheck_cancel(nc), PINHOLE_OK);
    CHECK(latch_wait(&l.entered, 20));
    CHECK_RC(l.async_rc, PINHOLE_OK);
    CHECK(l.count_in_callback == 0);
    check_destroyed_once(&d);
    nc_life_free(&l);

    /* Without a completion callback, and NULL. */
    nc_life_init(&l, &cfg, silent);
    nc = NULL;
    CHECK_RC(pinhole_netcheck_start(&cfg, &nc), PINHOLE_OK);
    CHECK_RC(pinhole_netcheck_destroy_async(nc, NULL, NULL), PINHOLE_OK);
    CHECK(no_pinhole_threads(20));
    CHECK(atomic_load(&l.done) == 0);
    nc_life_free(&l);
    CHECK_RC(pinhole_netcheck_destroy_async(NULL, on_destroyed, &d), PINHOLE_ERR_INVALID);
    CHECK(strstr(pinhole_last_error(), "NULL") != NULL);
}

/* ---- port mapping, with a NAT-PMP gateway of the test's own on loopback ---- */

#define FAKE_GATEWAY "127.0.0.77"

/* A NAT-PMP gateway (RFC 6886) on FAKE_GATEWAY:5351 that maps whatever is asked, or with
 * `silent` answers nothing; it counts the deletions (lifetime 0) it hears. */
typedef struct {
    int fd;
    atomic_int stop, silent, requests, deletes;
    pthread_t thread;
} fake_gateway;

static void *fake_gateway_run(void *arg) {
    fake_gateway *g = arg;
    uint32_t epoch = 1000;
    while (!atomic_load(&g->stop)) {
        unsigned char req[64], resp[16];
        struct sockaddr_in from;
        socklen_t len = sizeof from;
        ssize_t n = recvfrom(g->fd, req, sizeof req, 0, (struct sockaddr *)&from, &len);
        if (n < 2 || req[0] != 0) {
            continue; /* the receive timeout, or not NAT-PMP */
        }
        atomic_fetch_add(&g->requests, 1);
        uint32_t lifetime = 0;
        if ((req[1] == 1 || req[1] == 2) && n >= 12) {
            lifetime = (uint32_t)req[8] << 24 | (uint32_t)req[9] << 16 | (uint32_t)req[10] << 8 | req[11];
            if (lifetime == 0) {
                atomic_fetch_add(&g->deletes, 1);
            }
        }
        if (atomic_load(&g->silent)) {
            continue;
        }
        epoch++;
        memset(resp, 0, sizeof resp);
        resp[1] = (unsigned char)(128 + req[1]);
        resp[4] = (unsigned char)(epoch >> 24), resp[5] = (unsigned char)(epoch >> 16);
        resp[6] = (unsigned char)(epoch >> 8), resp[7] = (unsigned char)epoch;
        size_t size;
        if (req[1] == 0) {
            unsigned char ip[4] = {203, 0, 113, 5};
            memcpy(resp + 8, ip, 4);
            size = 12;
        } else if ((req[1] == 1 || req[1] == 2) && n >= 12) {
            memcpy(resp + 8, req + 4, 2);  /* internal port */
            memcpy(resp + 10, req + 4, 2); /* external port: the same */
            memcpy(resp + 12, req + 8, 4); /* the lifetime asked */
            size = 16;
        } else {
            continue;
        }
        sendto(g->fd, resp, size, 0, (struct sockaddr *)&from, len);
    }
    return NULL;
}

static int fake_gateway_start(fake_gateway *g) {
    memset(g, 0, sizeof *g);
    g->fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons(5351);
    inet_pton(AF_INET, FAKE_GATEWAY, &sa.sin_addr);
    struct timeval tv = {0, 100 * 1000};
    setsockopt(g->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (g->fd < 0 || bind(g->fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        fprintf(stderr, "fake gateway: cannot bind %s:5351: %s\n", FAKE_GATEWAY, strerror(errno));
        if (g->fd >= 0) {
            close(g->fd);
        }
        return 0;
    }
    return pthread_create(&g->thread, NULL, fake_gateway_run, g) == 0;
}

static void fake_gateway_stop(fake_gateway *g) {
    atomic_store(&g->stop, 1);
    pthread_join(g->thread, NULL);
    close(g->fd);
}

/* Waits (bounded) until `*counter` >= want. */
static int wait_count(atomic_int *counter, int want, int seconds) {
    for (int i = 0; i < seconds * 20 && atomic_load(counter) < want; i++) {
        struct timespec pause = {0, 50 * 1000 * 1000};
        nanosleep(&pause, NULL);
    }
    return atomic_load(counter) >= want;
}

typedef struct {
    latch mapped;
    atomic_int events, mapped_events;
    int destroy_on_mapped;
    char external[PINHOLE_ADDRESS_MAX];
} pm_life;

static void life_portmap(pinhole_portmap *pm, const pinhole_portmap_event *ev, void *user_ptr) {
    pm_life *l = user_ptr;
    atomic_fetch_add(&l->events, 1);
    if (ev->kind == PINHOLE_PORTMAP_EVENT_MAPPED) {
        snprintf(l->external, sizeof l->external, "%s", ev->mapping.external);
        atomic_fetch_add(&l->mapped_events, 1);
        if (l->destroy_on_mapped) {
            pinhole_portmap_destroy(pm); /* returns at once; the deletion goes on */
        }
        latch_signal(&l->mapped);
    }
}

static void pm_life_config(pinhole_portmap_config *cfg, pm_life *l) {
    memset(l, 0, sizeof *l);
    latch_init(&l->mapped);
    CHECK_RC(pinhole_portmap_config_init(cfg, sizeof *cfg), PINHOLE_OK);
    cfg->gateway = FAKE_GATEWAY;
    cfg->local_ip = "127.0.0.1";
    cfg->method = PINHOLE_METHOD_NATPMP;
    cfg->internal_port = (uint16_t)free_udp_port();
    cfg->lifetime_s = 600;
    cfg->cb_event = life_portmap;
    cfg->user_ptr = l;
}

static void test_portmap_lifecycle(void) {
    printf("port mapping on a NAT-PMP gateway at %s: destroy from its callback, from another "
           "thread, destroy_async while the gateway is silent\n", FAKE_GATEWAY);
    fake_gateway g;
    if (!fake_gateway_start(&g)) {
        CHECK(!"the fake gateway could not start");
        return;
    }
    pinhole_portmap_config cfg;
    pm_life l;
    pinhole_portmap *pm = NULL;

    /* Destroyed from its MAPPED callback: the deletion goes on in the background. */
    pm_life_config(&cfg, &l);
    l.destroy_on_mapped = 1;
    CHECK_RC(pinhole_portmap_start(&cfg, &pm), PINHOLE_OK);
    CHECK(latch_wait(&l.mapped, 20));
    printf("  mapped: %s\n", l.external);
    CHECK(wait_count(&g.deletes, 1, 10));
    CHECK(no_pinhole_threads(20));
    CHECK(atomic_load(&l.events) == 1); /* no RELEASED after destroy */
    latch_free(&l.mapped);

    /* Destroyed from another thread while mapped: blocks until the deletion is done. */
    pm_life_config(&cfg, &l);
    pm = NULL;
    CHECK_RC(pinhole_portmap_start(&cfg, &pm), PINHOLE_OK);
    CHECK(latch_wait(&l.mapped, 20));
    char buf[PINHOLE_ADDRESS_MAX];
    CHECK(pinhole_portmap_get_external(pm, buf, sizeof buf) > 0 && strcmp(buf, l.external) == 0);
    destroy_from_another_thread(portmap_destroy_v, pm);
    CHECK(atomic_load(&g.deletes) == 2); /* confirmed before destroy returned */
    latch_free(&l.mapped);

    /* destroy_async while the gateway does not answer: returns at once although the
     * deletion waits for an answer (about 3 s); the completion comes once after that. */
    destroyed_state d;
    destroyed_init(&d);
    pm_life_config(&cfg, &l);
    pm = NULL;
    CHECK_RC(pinhole_portmap_start(&cfg, &pm), PINHOLE_OK);
    CHECK(latch_wait(&l.mapped, 20));
    atomic_store(&g.silent, 1);
    int seen = atomic_load(&l.events);
    CHECK_RC(pinhole_portmap_destroy_async(pm, on_destroyed, &d), PINHOLE_OK);
    CHECK(atomic_load(&d.count) == 0);
    CHECK(wait_count(&g.deletes, 3, 10)); /* the deletion was asked for, unanswered */
    check_destroyed_once(&d);
    CHECK(atomic_load(&l.events) == seen); /* no event after destroy_async */
    latch_free(&l.mapped);
    atomic_store(&g.silent, 0);

    /* Destroyed from another thread before any answer, and destroy_async of NULL. */
    pm_life_config(&cfg, &l);
    pm = NULL;
    CHECK_RC(pinhole_portmap_start(&cfg, &pm), PINHOLE_OK);
    destroy_from_another_thread(portmap_destroy_v, pm);
    latch_free(&l.mapped);
    CHECK_RC(pinhole_portmap_destroy_async(NULL, NULL, NULL), PINHOLE_ERR_INVALID);
    fake_gateway_stop(&g);
}

/* ---- TURN, through a UDP proxy of the test's own that can go silent ---- */

/* Forwards datagrams between one client and the TURN server; with `paused` it drops them
 * all, so that the server seems not to answer. */
typedef struct {
    int client_fd, server_fd;
    char uri[64];
    atomic_int stop, paused;
    struct sockaddr_in client;
    int have_client;
    pthread_t thread;
} turn_proxy;

static void *turn_proxy_run(void *arg) {
    turn_proxy *p = arg;
    while (!atomic_load(&p->stop)) {
        fd_set fds;
        FD_ZERO(&fds);
        FD_SET(p->client_fd, &fds);
        FD_SET(p->server_fd, &fds);
        struct timeval tv = {0, 100 * 1000};
        int maxfd = p->client_fd > p->server_fd ? p->client_fd : p->server_fd;
        if (select(maxfd + 1, &fds, NULL, NULL, &tv) <= 0) {
            continue;
        }
        unsigned char buf[65536];
        if (FD_ISSET(p->client_fd, &fds)) {
            socklen_t len = sizeof p->client;
            ssize_t n = recvfrom(p->client_fd, buf, sizeof buf, 0, (struct sockaddr *)&p->client, &len);
            p->have_client = 1;
            if (n > 0 && !atomic_load(&p->paused)) {
                send(p->server_fd, buf, (size_t)n, 0);
            }
        }
        if (FD_ISSET(p->server_fd, &fds)) {
            ssize_t n = recv(p->server_fd, buf, sizeof buf, 0);
            if (n > 0 && p->have_client && !atomic_load(&p->paused)) {
                sendto(p->client_fd, buf, (size_t)n, 0, (struct sockaddr *)&p->client, sizeof p->client);
            }
        }
    }
    return NULL;
}

static int turn_proxy_start(turn_proxy *p, const char *server_uri) {
    memset(p, 0, sizeof *p);
    const char *hostport = strchr(server_uri, ':');
    if (hostport == NULL) {
        return 0;
    }
    struct sockaddr_in server = parse_addr(hostport + 1), sa;
    p->client_fd = socket(AF_INET, SOCK_DGRAM, 0);
    p->server_fd = socket(AF_INET, SOCK_DGRAM, 0);
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof sa;
    if (bind(p->client_fd, (struct sockaddr *)&sa, sizeof sa) != 0 ||
        getsockname(p->client_fd, (struct sockaddr *)&sa, &len) != 0 ||
        connect(p->server_fd, (struct sockaddr *)&server, sizeof server) != 0) {
        return 0;
    }
    snprintf(p->uri, sizeof p->uri, "turn:127.0.0.1:%u", (unsigned)ntohs(sa.sin_port));
    return pthread_create(&p->thread, NULL, turn_proxy_run, p) == 0;
}

static void turn_proxy_stop(turn_proxy *p) {
    atomic_store(&p->stop, 1);
    pthread_join(p->thread, NULL);
    close(p->client_fd);
    close(p->server_fd);
}

typedef struct {
    pinhole_turn *turn;
    const char *peer;
    int failures;
} turn_caller;

/* Calls into one allocation, as other threads do at the same time. */
static void *turn_calls(void *arg) {
    turn_caller *c = arg;
    char buf[PINHOLE_ADDRESS_MAX];
    for (int i = 0; i < 50; i++) {
        if (pinhole_turn_get_relayed(c->turn, buf, sizeof buf) <= 0 ||
            pinhole_turn_get_mapped(c->turn, buf, sizeof buf) <= 0 ||
            pinhole_turn_create_permission(c->turn, "127.0.0.1") != PINHOLE_OK ||
            pinhole_turn_send(c->turn, c->peer, (const uint8_t *)"concurrent", 10) != PINHOLE_OK) {
            c->failures++;
        }
    }
    return NULL;
}

static void test_turn_lifecycle(void) {
    printf("TURN: an older config, calls from several threads, destroy from another thread, "
           "destroy_async while the server is silent\n");
    turn_state s;
    turn_state_init(&s);

    /* An older program's config: family and ca_pem (after user_ptr) are garbage beyond its
     * struct_size (family 0xABABABAB would be refused): IPv4 and the system roots. */
    static unsigned char older[sizeof(pinhole_turn_config) + 64];
    memset(older, GARBAGE, sizeof older);
    pinhole_turn_config *cfg = (pinhole_turn_config *)(void *)older;
    CHECK_RC(pinhole_turn_config_init(cfg, FIRST_VERSION(pinhole_turn_config)), PINHOLE_OK);
    cfg->uri = turn_uri;
    cfg->username = turn_user;
    cfg->password = turn_password;
    cfg->cb_event = on_turn_event;
    cfg->cb_data = on_turn_data;
    cfg->user_ptr = &s;
    pinhole_turn *turn = NULL;
    CHECK_RC(pinhole_turn_allocate(cfg, &turn), PINHOLE_OK);
    CHECK(turn_wait(&s, &s.kinds[PINHOLE_TURN_EVENT_ALLOCATED], 1, 20));
    CHECK(strncmp(s.relayed, "127.0.0.1:", 10) == 0); /* IPv4, the default */
    CHECK(s.lifetime_s == 600);

    /* Four threads call into it at once. */
    char peer_addr[PINHOLE_ADDRESS_MAX];
    int peer = peer_socket(peer_addr, sizeof peer_addr);
    turn_caller callers[4];
    pthread_t threads[4];
    for (int i = 0; i < 4; i++) {
        callers[i] = (turn_caller){turn, peer_addr, 0};
        CHECK(pthread_create(&threads[i], NULL, turn_calls, &callers[i]) == 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(threads[i], NULL);
        CHECK(callers[i].failures == 0);
    }
    /* The server drops data to a peer until its permission is installed, and the threads'
     * sends may all have gone before that (a fast machine, a loaded one): once it is, one
     * more datagram, which the peer must get from the relayed address. */
    CHECK(turn_wait(&s, &s.kinds[PINHOLE_TURN_EVENT_PERMISSION], 1, 10));
    CHECK_RC(pinhole_turn_send(turn, peer_addr, (const uint8_t *)"concurrent", 10), PINHOLE_OK);
    char got[64], from[PINHOLE_ADDRESS_MAX];
    CHECK(peer_recv(peer, got, sizeof got, from, sizeof from) == 10 && strcmp(from, s.relayed) == 0);
    close(peer);

    /* Destroyed from another thread while allocated: the deallocation is done when it
     * returns, and no callback comes after. */
    destroy_from_another_thread(turn_destroy_v, turn);
    pthread_mutex_lock(&s.mutex);
    int seen = s.total;
    pthread_mutex_unlock(&s.mutex);
    CHECK(relay_released(s.relayed));
    pthread_mutex_lock(&s.mutex);
    CHECK(s.total == seen);
    pthread_mutex_unlock(&s.mutex);
    turn_state_free(&s);

    /* destroy_async while the server does not answer (the proxy drops everything): it
     * returns at once, although the deallocation waits for an answer (about 4 s). */
    turn_proxy proxy;
    if (!turn_proxy_start(&proxy, turn_uri)) {
        CHECK(!"the TURN proxy could not start");
        return;
    }
    turn_state_init(&s);
    pinhole_turn_config pcfg;
    turn_config(&pcfg, &s);
    pcfg.uri = proxy.uri;
    turn = NULL;
    CHECK_RC(pinhole_turn_allocate(&pcfg, &turn), PINHOLE_OK);
    CHECK(turn_wait(&s, &s.kinds[PINHOLE_TURN_EVENT_ALLOCATED], 1, 20));
    printf("  through %s: relayed %s\n", proxy.uri, s.relayed);
    atomic_store(&proxy.paused, 1);
    destroyed_state d;
    destroyed_init(&d);
    pthread_mutex_lock(&s.mutex);
    seen = s.total;
    pthread_mutex_unlock(&s.mutex);
    CHECK_RC(pinhole_turn_destroy_async(turn, on_destroyed, &d), PINHOLE_OK);
    CHECK(atomic_load(&d.count) == 0);
    check_destroyed_once(&d);
    pthread_mutex_lock(&s.mutex);
    CHECK(s.total == seen); /* no callback after destroy_async, not even DEALLOCATED */
    pthread_mutex_unlock(&s.mutex);
    turn_proxy_stop(&proxy);
    turn_state_free(&s);
    CHECK_RC(pinhole_turn_destroy_async(NULL, NULL, NULL), PINHOLE_ERR_INVALID);
}

/* ---- the STUN server ---- */

typedef struct {
    pinhole_server *server;
    int failures;
} server_caller;

static void *server_calls(void *arg) {
    server_caller *c = arg;
    char buf[PINHOLE_ADDRESS_MAX];
    for (int i = 0; i < 100; i++) {
        if (pinhole_server_address_count(c->server) != 4 ||
            pinhole_server_get_address(c->server, (size_t)i % 4, buf, sizeof buf) <= 0) {
            c->failures++;
        }
    }
    return NULL;
}

static void test_server_lifecycle(void) {
    printf("STUN server: calls from several threads, destroy from another thread, destroy_async\n");
    pinhole_server *srv = NULL;
    CHECK_RC(pinhole_server_start(NULL, NULL, &srv), PINHOLE_OK);
    server_caller callers[4];
    pthread_t threads[4];
    for (int i = 0; i < 4; i++) {
        callers[i] = (server_caller){srv, 0};
        CHECK(pthread_create(&threads[i], NULL, server_calls, &callers[i]) == 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(threads[i], NULL);
        CHECK(callers[i].failures == 0);
    }
    destroy_from_another_thread(server_destroy_v, srv);

    destroyed_state d;
    destroyed_init(&d);
    srv = NULL;
    CHECK_RC(pinhole_server_start("127.0.0.1:0", NULL, &srv), PINHOLE_OK);
    CHECK_RC(pinhole_server_destroy_async(srv, on_destroyed, &d), PINHOLE_OK);
    check_destroyed_once(&d);
    CHECK_RC(pinhole_server_destroy_async(NULL, NULL, NULL), PINHOLE_ERR_INVALID);
}

/* ---- peer connections ---- */

/* One side of a pair of peer connections in this process. Its callbacks play the
 * signalling channel: they hand what they get straight to the other side (under the other
 * side's lock, which its destruction takes first). */
typedef struct peer_side {
    pthread_mutex_t lock;
    pinhole_peer *peer; /* NULL once destroyed (or being destroyed) */
    struct peer_side *other;
    atomic_int candidates, gathered, pairs, relayed, recvs, restarts, closed, connected;
    atomic_int call_errors; /* calls made from callbacks that failed */
    atomic_int destroy_on_recv, destroyed_in_callback;
    /* On the next datagram, the receive callback sets the keepalive policy to
     * PINHOLE_KEEPALIVE_SUSPENDED and reads it and the interval back on its own peer:
     * keepalive_rc counts the calls that succeeded (3), keepalive_read what they read
     * right (2). */
    atomic_int keepalive_on_recv, keepalive_rc, keepalive_read;
    atomic_int last_state;
    char last_data[64];
} peer_side;

static void peer_side_init(peer_side *s, peer_side *other) {
    memset(s, 0, sizeof *s);
    pthread_mutex_init(&s->lock, NULL);
    s->other = other;
    atomic_store(&s->last_state, -1);
}

/* Runs `call` on the other side's peer, if it is still there. */
#define ON_OTHER(s, call)                                                               \
    do {                                                                                \
        peer_side *o_ = (s)->other;                                                     \
        pthread_mutex_lock(&o_->lock);                                                  \
        if (o_->peer != NULL && (call) != PINHOLE_OK) {                                 \
            atomic_fetch_add(&(s)->call_errors, 1);                                     \
        }                                                                               \
        pthread_mutex_unlock(&o_->lock);                                                \
    } while (0)

static void on_peer_candidate(pinhole_peer *peer, const char *candidate, void *user_ptr) {
    (void)peer;
    peer_side *s = user_ptr;
    if (strncmp(candidate, "a=candidate:", 12) != 0) {
        atomic_fetch_add(&s->call_errors, 1);
    }
    atomic_fetch_add(&s->candidates, 1);
    ON_OTHER(s, pinhole_peer_add_remote_candidate(o_->peer, candidate));
}

static void on_peer_gathered(pinhole_peer *peer, void *user_ptr) {
    (void)peer;
    peer_side *s = user_ptr;
    atomic_fetch_add(&s->gathered, 1);
    ON_OTHER(s, pinhole_peer_set_remote_gathering_done(o_->peer));
}

static void on_peer_state(pinhole_peer *peer, pinhole_ice_state state, void *user_ptr) {
    (void)peer;
    peer_side *s = user_ptr;
    atomic_store(&s->last_state, state);
    if (state == PINHOLE_ICE_STATE_CONNECTED) {
        atomic_fetch_add(&s->connected, 1);
    }
}

static void on_peer_pair(pinhole_peer *peer, const pinhole_peer_pair *pair, void *user_ptr) {
    (void)peer;
    peer_side *s = user_ptr;
    if (pair->relayed) {
        atomic_fetch_add(&s->relayed, 1);
    }
    if (strlen(pair->local) == 0 || strlen(pair->remote) == 0) {
        atomic_fetch_add(&s->call_errors, 1);
    }
    atomic_fetch_add(&s->pairs, 1);
}

static void on_peer_recv(pinhole_peer *peer, const uint8_t *data, size_t len, void *user_ptr) {
    peer_side *s = user_ptr;
    pthread_mutex_lock(&s->lock);
    size_t n = len < sizeof s->last_data - 1 ? len : sizeof s->last_data - 1;
    memcpy(s->last_data, data, n);
    s->last_data[n] = 0;
    pthread_mutex_unlock(&s->lock);
    atomic_fetch_add(&s->recvs, 1);
    if (atomic_load(&s->keepalive_on_recv) && atomic_exchange(&s->keepalive_on_recv, 0)) {
        pinhole_keepalive_policy policy = -1;
        uint32_t ms = 0;
        atomic_fetch_add(&s->keepalive_rc,
                         pinhole_peer_set_keepalive_policy(peer, PINHOLE_KEEPALIVE_SUSPENDED) == PINHOLE_OK);
        atomic_fetch_add(&s->keepalive_rc, pinhole_peer_get_keepalive_policy(peer, &policy) == PINHOLE_OK);
        /* From the callback: read at once (from another thread it would wait for this one). */
        atomic_fetch_add(&s->keepalive_rc, pinhole_peer_get_keepalive_interval_ms(peer, &ms) == PINHOLE_OK);
        atomic_fetch_add(&s->keepalive_read, policy == PINHOLE_KEEPALIVE_SUSPENDED);
        atomic_fetch_add(&s->keepalive_read, ms == 25000);
    }
    if (atomic_load(&s->destroy_on_recv) && atomic_exchange(&s->destroy_on_recv, 0)) {
        /* Destroyed from its own callback: returns at once, no callback after. */
        pthread_mutex_lock(&s->lock);
        s->peer = NULL;
        pthread_mutex_unlock(&s->lock);
        pinhole_peer_destroy(peer);
        atomic_store(&s->destroyed_in_callback, 1);
    }
}

static void on_peer_description(pinhole_peer *peer, const char *description, void *user_ptr) {
    (void)peer;
    peer_side *s = user_ptr;
    atomic_fetch_add(&s->restarts, 1);
    ON_OTHER(s, pinhole_peer_set_remote_description(o_->peer, description));
}

static void on_peer_closed(pinhole_peer *peer, int result, const char *reason, void *user_ptr) {
    (void)peer;
    (void)result;
    (void)reason;
    peer_side *s = user_ptr;
    atomic_fetch_add(&s->closed, 1);
}

static void peer_config(pinhole_peer_config *cfg, peer_side *s, int controlling) {
    CHECK_RC(pinhole_peer_config_init(cfg, sizeof *cfg), PINHOLE_OK);
    cfg->controlling = controlling;
    cfg->bind = "127.0.0.1:0";
    cfg->cb_candidate = on_peer_candidate;
    cfg->cb_gathering_done = on_peer_gathered;
    cfg->cb_state_changed = on_peer_state;
    cfg->cb_selected_pair = on_peer_pair;
    cfg->cb_recv = on_peer_recv;
    cfg->cb_closed = on_peer_closed;
    cfg->cb_local_description = on_peer_description;
    cfg->user_ptr = s;
}

/* Creates a side's peer and publishes it to the other side's callbacks. */
static int peer_create(peer_side *s, const pinhole_peer_config *cfg) {
    pinhole_peer *p = NULL;
    int rc = pinhole_peer_create(cfg, &p);
    CHECK_RC(rc, PINHOLE_OK);
    pthread_mutex_lock(&s->lock);
    s->peer = p;
    pthread_mutex_unlock(&s->lock);
    return rc == PINHOLE_OK;
}

/* The ufrag of a description (into `out`). */
static void ufrag_of(const char *description, char *out, size_t size) {
    const char *u = strstr(description, "a=ice-ufrag:");
    out[0] = 0;
    if (u != NULL) {
        u += 12;
        size_t n = strcspn(u, "\r\n");
        if (n >= size) {
            n = size - 1;
        }
        memcpy(out, u, n);
        out[n] = 0;
    }
}

/* Sends `text` from `from` until the other side has it (bounded); whether it arrived. */
static int peer_deliver(peer_side *from, const char *text) {
    peer_side *to = from->other;
    for (int i = 0; i < 100; i++) {
        int rc = pinhole_peer_send(from->peer, (const uint8_t *)text, strlen(text));
        if (rc != PINHOLE_OK && rc != PINHOLE_ERR_NOT_AVAILABLE) {
            return 0;
        }
        struct timespec pause = {0, 100 * 1000 * 1000};
        nanosleep(&pause, NULL);
        pthread_mutex_lock(&to->lock);
        int got = strcmp(to->last_data, text) == 0;
        pthread_mutex_unlock(&to->lock);
        if (got) {
            return 1;
        }
    }
    return 0;
}

/* Exchanges the two descriptions and waits for a pair on both sides. */
static int peer_connect(peer_side *a, peer_side *b) {
    char da[4096], db[4096];
    int na = pinhole_peer_get_local_description(a->peer, da, sizeof da);
    int nb = pinhole_peer_get_local_description(b->peer, db, sizeof db);
    CHECK(na > 0 && (size_t)na == strlen(da));
    CHECK(nb > 0 && strncmp(db, "a=ice-ufrag:", 12) == 0);
    CHECK(strstr(da, "a=ice-pwd:") != NULL && strstr(da, "a=ice-options:trickle renomination\r\n") != NULL);
    CHECK_RC(pinhole_peer_set_remote_description(b->peer, da), PINHOLE_OK);
    CHECK_RC(pinhole_peer_set_remote_description(a->peer, db), PINHOLE_OK);
    return wait_count(&a->pairs, 1, 20) && wait_count(&b->pairs, 1, 20);
}

static void test_peer_direct_restart_and_destroy(void) {
    printf("peer connections: direct, restart, destroy from a callback\n");
    peer_side a, b;
    peer_side_init(&a, &b);
    peer_side_init(&b, &a);
    pinhole_peer_config ca, cb;
    peer_config(&ca, &a, 1);
    peer_config(&cb, &b, 0);
    if (!peer_create(&a, &ca) || !peer_create(&b, &cb)) {
        return;
    }
    CHECK(peer_connect(&a, &b));
    CHECK(wait_count(&a.connected, 1, 20) && wait_count(&b.connected, 1, 20));
    pinhole_peer_pair pair;
    CHECK_RC(pinhole_peer_get_selected_pair(a.peer, &pair), PINHOLE_OK);
    CHECK(strncmp(pair.local, "127.0.0.1:", 10) == 0 && strncmp(pair.remote, "127.0.0.1:", 10) == 0);
    CHECK(!pair.relayed && atomic_load(&a.relayed) == 0);
    CHECK(peer_deliver(&a, "hello from a"));
    CHECK(peer_deliver(&b, "hello from b"));
    CHECK(atomic_load(&a.candidates) > 0 && wait_count(&a.gathered, 1, 20));

    /* a restarts; b follows when it sees the new ufrag and hands a its new description
     * (cb_local_description). Data flows again on the new pairs. */
    char before_a[300], before_b[300], after[300], desc[4096], tmp[4096];
    pinhole_peer_get_local_description(a.peer, tmp, sizeof tmp);
    ufrag_of(tmp, before_a, sizeof before_a);
    pinhole_peer_get_local_description(b.peer, tmp, sizeof tmp);
    ufrag_of(tmp, before_b, sizeof before_b);
    int pa = atomic_load(&a.pairs), pb = atomic_load(&b.pairs);
    int n = pinhole_peer_restart(a.peer, desc, sizeof desc);
    CHECK(n > 0);
    ufrag_of(desc, after, sizeof after);
    CHECK(strlen(after) >= 4 && strcmp(after, before_a) != 0);
    CHECK_RC(pinhole_peer_set_remote_description(b.peer, desc), PINHOLE_OK);
    CHECK(wait_count(&b.restarts, 1, 20));
    CHECK(wait_count(&a.pairs, pa + 1, 20) && wait_count(&b.pairs, pb + 1, 20));
    pinhole_peer_get_local_description(b.peer, tmp, sizeof tmp);
    ufrag_of(tmp, after, sizeof after);
    CHECK(strcmp(after, before_b) != 0);
    CHECK(peer_deliver(&a, "after restart a"));
    CHECK(peer_deliver(&b, "after restart b"));
    /* A buffer too small for the description: the restart happened all the same. */
    CHECK_RC(pinhole_peer_restart(a.peer, desc, 8), PINHOLE_ERR_TOO_SMALL);
    CHECK(desc[0] == 0);
    CHECK_RC(pinhole_peer_get_local_description(a.peer, desc, 8), PINHOLE_ERR_TOO_SMALL);

    /* b's next datagram makes a destroy itself from its receive callback. */
    atomic_store(&a.destroy_on_recv, 1);
    for (int i = 0; i < 100 && !atomic_load(&a.destroyed_in_callback); i++) {
        pthread_mutex_lock(&b.lock);
        pinhole_peer_send(b.peer, (const uint8_t *)"bye", 3);
        pthread_mutex_unlock(&b.lock);
        struct timespec pause = {0, 50 * 1000 * 1000};
        nanosleep(&pause, NULL);
    }
    CHECK(atomic_load(&a.destroyed_in_callback) == 1);
    int recvs = atomic_load(&a.recvs);
    struct timespec pause = {0, 300 * 1000 * 1000};
    nanosleep(&pause, NULL);
    CHECK(atomic_load(&a.recvs) == recvs); /* no callback after the destruction */
    CHECK(atomic_load(&a.closed) == 0);   /* nor cb_closed */
    CHECK(atomic_load(&a.call_errors) == 0 && atomic_load(&b.call_errors) == 0);
    /* b from this thread (blocking). */
    pthread_mutex_lock(&b.lock);
    pinhole_peer *pbh = b.peer;
    b.peer = NULL;
    pthread_mutex_unlock(&b.lock);
    pinhole_peer_destroy(pbh);
    pthread_mutex_destroy(&a.lock);
    pthread_mutex_destroy(&b.lock);
}

/* The host's network changed: pinhole_peer_network_changed on `a` gives its new
 * description (credentials first, candidates after); `b` follows as for a restart
 * (cb_local_description), a new pair is selected on both sides and data flows again. */
static void peer_network_change(peer_side *a, peer_side *b, const char *what) {
    char before_a[300], before_b[300], after[300], desc[4096], tmp[4096];
    pinhole_peer_get_local_description(a->peer, tmp, sizeof tmp);
    ufrag_of(tmp, before_a, sizeof before_a);
    pinhole_peer_get_local_description(b->peer, tmp, sizeof tmp);
    ufrag_of(tmp, before_b, sizeof before_b);
    int pa = atomic_load(&a->pairs), pb = atomic_load(&b->pairs);
    int ra = atomic_load(&a->restarts), rb = atomic_load(&b->restarts);
    int n = pinhole_peer_network_changed(a->peer, desc, sizeof desc);
    CHECK(n > 0 && (size_t)n == strlen(desc));
    ufrag_of(desc, after, sizeof after);
    CHECK(strlen(after) >= 4 && strcmp(after, before_a) != 0);
    CHECK(strstr(desc, "a=candidate:") == NULL && strstr(desc, "a=end-of-candidates") == NULL);
    pinhole_peer_get_local_description(a->peer, tmp, sizeof tmp);
    ufrag_of(tmp, before_a, sizeof before_a);
    CHECK(strcmp(after, before_a) == 0); /* the description has the new credentials */
    CHECK_RC(pinhole_peer_set_remote_description(b->peer, desc), PINHOLE_OK);
    CHECK(wait_count(&b->restarts, rb + 1, 20));
    CHECK(wait_count(&a->pairs, pa + 1, 20) && wait_count(&b->pairs, pb + 1, 20));
    pinhole_peer_get_local_description(b->peer, tmp, sizeof tmp);
    ufrag_of(tmp, after, sizeof after);
    CHECK(strcmp(after, before_b) != 0);
    CHECK(atomic_load(&a->restarts) == ra); /* a does not restart again on b's answer */
    char msg[64];
    snprintf(msg, sizeof msg, "%s: a after the change", what);
    CHECK(peer_deliver(a, msg));
    snprintf(msg, sizeof msg, "%s: b after the change", what);
    CHECK(peer_deliver(b, msg));
}

static void test_peer_network_changed(void) {
    printf("peer connections: network changed (dual-stack socket, own monitor)\n");
    peer_side a, b;
    peer_side_init(&a, &b);
    peer_side_init(&b, &a);
    pinhole_peer_config ca, cb;
    peer_config(&ca, &a, 1);
    peer_config(&cb, &b, 0);
    ca.bind = "[::]:0";
    ca.no_network_monitor = true;
    if (!peer_create(&a, &ca) || !peer_create(&b, &cb)) {
        return;
    }
    CHECK(peer_connect(&a, &b));
    CHECK(peer_deliver(&a, "before the change a"));
    CHECK(peer_deliver(&b, "before the change b"));
    CHECK(wait_count(&a.gathered, 1, 20));
    peer_network_change(&a, &b, "direct");
    /* The new session's candidates come, then its end of candidates. */
    CHECK(wait_count(&a.gathered, 2, 20));
    char desc[4096];
    CHECK(pinhole_peer_get_local_description(a.peer, desc, sizeof desc) > 0);
    CHECK(strstr(desc, "a=candidate:") != NULL && strstr(desc, "a=end-of-candidates") != NULL);
    /* A buffer too small: the change was applied all the same. */
    CHECK_RC(pinhole_peer_network_changed(a.peer, desc, 8), PINHOLE_ERR_TOO_SMALL);
    CHECK(desc[0] == 0);
    CHECK(atomic_load(&a.call_errors) == 0 && atomic_load(&b.call_errors) == 0);
    pthread_mutex_lock(&a.lock);
    pinhole_peer *pah = a.peer;
    a.peer = NULL;
    pthread_mutex_unlock(&a.lock);
    pinhole_peer_destroy(pah);
    pthread_mutex_lock(&b.lock);
    pinhole_peer *pbh = b.peer;
    b.peer = NULL;
    pthread_mutex_unlock(&b.lock);
    pinhole_peer_destroy(pbh);
    pthread_mutex_destroy(&a.lock);
    pthread_mutex_destroy(&b.lock);
}

/* Sets `policy` on a side's peer and reads it back. */
static void peer_keepalive(peer_side *s, pinhole_keepalive_policy policy) {
    pinhole_keepalive_policy got = -1;
    CHECK_RC(pinhole_peer_set_keepalive_policy(s->peer, policy), PINHOLE_OK);
    CHECK_RC(pinhole_peer_get_keepalive_policy(s->peer, &got), PINHOLE_OK);
    CHECK(got == policy);
}

/* Takes a side's peer from its callbacks' reach and destroys it (blocking). */
static void peer_side_destroy(peer_side *s) {
    pthread_mutex_lock(&s->lock);
    pinhole_peer *p = s->peer;
    s->peer = NULL;
    pthread_mutex_unlock(&s->lock);
    pinhole_peer_destroy(p);
}

/* Keepalive policies on a connected pair: the config's initial policy and fixed interval
 * read back; both sides go to the background, then suspended, then back to the
 * foreground, each read back at once, data flowing both ways in each; the resume finds
 * the path alive (no restart, the same pair, after the 4 s its probe has); values that are
 * no PINHOLE_KEEPALIVE_* refused. Then a receive callback sets the policy on its own peer
 * and reads it back, and destroys it: the destroy-from-callback contract holds. */
static void test_peer_keepalive(void) {
    printf("peer connections: keepalive policies\n");
    peer_side a, b;
    peer_side_init(&a, &b);
    peer_side_init(&b, &a);
    pinhole_peer_config ca, cb;
    peer_config(&ca, &a, 1);
    peer_config(&cb, &b, 0);
    cb.keepalive_policy = PINHOLE_KEEPALIVE_BACKGROUND;
    cb.keepalive_interval_ms = 12000;
    if (!peer_create(&a, &ca) || !peer_create(&b, &cb)) {
        return;
    }
    pinhole_keepalive_policy policy = -1;
    uint32_t ms = 0;
    CHECK_RC(pinhole_peer_get_keepalive_policy(a.peer, &policy), PINHOLE_OK);
    CHECK(policy == PINHOLE_KEEPALIVE_FOREGROUND);
    CHECK_RC(pinhole_peer_get_keepalive_policy(b.peer, &policy), PINHOLE_OK);
    CHECK(policy == PINHOLE_KEEPALIVE_BACKGROUND);
    CHECK_RC(pinhole_peer_get_keepalive_interval_ms(a.peer, &ms), PINHOLE_OK);
    CHECK(ms == 25000); /* the adaptive interval's start */
    CHECK_RC(pinhole_peer_get_keepalive_interval_ms(b.peer, &ms), PINHOLE_OK);
    CHECK(ms == 12000);
    CHECK(peer_connect(&a, &b));
    CHECK(peer_deliver(&a, "keepalive: foreground a"));
    CHECK(peer_deliver(&b, "keepalive: background b"));

    const pinhole_keepalive_policy cycle[] = {PINHOLE_KEEPALIVE_BACKGROUND, PINHOLE_KEEPALIVE_SUSPENDED,
                                              PINHOLE_KEEPALIVE_FOREGROUND};
    for (size_t i = 0; i < sizeof cycle / sizeof cycle[0]; i++) {
        peer_keepalive(&a, cycle[i]);
        peer_keepalive(&b, cycle[i]);
        char msg[64];
        snprintf(msg, sizeof msg, "keepalive %d: a", cycle[i]);
        CHECK(peer_deliver(&a, msg));
        snprintf(msg, sizeof msg, "keepalive %d: b", cycle[i]);
        CHECK(peer_deliver(&b, msg));
    }
    /* Past the resume's probe (4 s): no restart, the same pair. */
    int pa = atomic_load(&a.pairs), pb = atomic_load(&b.pairs);
    struct timespec probe = {5, 0};
    nanosleep(&probe, NULL);
    CHECK(atomic_load(&a.restarts) == 0 && atomic_load(&b.restarts) == 0);
    CHECK(atomic_load(&a.pairs) == pa && atomic_load(&b.pairs) == pb);
    CHECK(peer_deliver(&a, "keepalive: resumed a"));
    CHECK(peer_deliver(&b, "keepalive: resumed b"));

    /* Bad values: refused, nothing changed. */
    CHECK_RC(pinhole_peer_set_keepalive_policy(a.peer, 3), PINHOLE_ERR_INVALID);
    CHECK(strstr(pinhole_last_error(), "PINHOLE_KEEPALIVE_") != NULL);
    CHECK_RC(pinhole_peer_set_keepalive_policy(a.peer, -1), PINHOLE_ERR_INVALID);
    CHECK_RC(pinhole_peer_get_keepalive_policy(a.peer, &policy), PINHOLE_OK);
    CHECK(policy == PINHOLE_KEEPALIVE_FOREGROUND);
    CHECK_RC(pinhole_peer_get_keepalive_policy(a.peer, NULL), PINHOLE_ERR_INVALID);
    CHECK_RC(pinhole_peer_get_keepalive_interval_ms(a.peer, NULL), PINHOLE_ERR_INVALID);

    /* From a's receive callback: the policy set and read back, then a destroyed there. */
    atomic_store(&a.keepalive_on_recv, 1);
    atomic_store(&a.destroy_on_recv, 1);
    for (int i = 0; i < 100 && !atomic_load(&a.destroyed_in_callback); i++) {
        pthread_mutex_lock(&b.lock);
        pinhole_peer_send(b.peer, (const uint8_t *)"bye", 3);
        pthread_mutex_unlock(&b.lock);
        struct timespec pause = {0, 50 * 1000 * 1000};
        nanosleep(&pause, NULL);
    }
    CHECK(atomic_load(&a.destroyed_in_callback) == 1);
    CHECK(atomic_load(&a.keepalive_rc) == 3 && atomic_load(&a.keepalive_read) == 2);
    int recvs = atomic_load(&a.recvs);
    struct timespec pause = {0, 300 * 1000 * 1000};
    nanosleep(&pause, NULL);
    CHECK(atomic_load(&a.recvs) == recvs); /* no callback after the destruction */
    CHECK(atomic_load(&a.closed) == 0);
    CHECK(atomic_load(&a.call_errors) == 0 && atomic_load(&b.call_errors) == 0);
    peer_side_destroy(&b);
    pthread_mutex_destroy(&a.lock);
    pthread_mutex_destroy(&b.lock);
}

/* A resume whose path is gone: a is suspended and its peer goes away meanwhile; back in
 * the foreground, a's probe goes unanswered and, about 4 s later, ICE restarts by itself:
 * cb_local_description brings a new description (new credentials) to signal. */
static void test_peer_keepalive_resume_gone(void) {
    printf("peer connections: a resume whose path is gone restarts\n");
    peer_side a, b;
    peer_side_init(&a, &b);
    peer_side_init(&b, &a);
    pinhole_peer_config ca, cb;
    peer_config(&ca, &a, 1);
    peer_config(&cb, &b, 0);
    if (!peer_create(&a, &ca) || !peer_create(&b, &cb)) {
        return;
    }
    CHECK(peer_connect(&a, &b));
    CHECK(peer_deliver(&a, "before the suspension a"));
    CHECK(peer_deliver(&b, "before the suspension b"));
    char before[300], after[300], desc[4096];
    CHECK(pinhole_peer_get_local_description(a.peer, desc, sizeof desc) > 0);
    ufrag_of(desc, before, sizeof before);
    peer_keepalive(&a, PINHOLE_KEEPALIVE_SUSPENDED);
    peer_side_destroy(&b);
    /* Suspended: no probe, no deadline, no restart. */
    struct timespec quiet = {2, 0};
    nanosleep(&quiet, NULL);
    CHECK(atomic_load(&a.restarts) == 0);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    peer_keepalive(&a, PINHOLE_KEEPALIVE_FOREGROUND);
    CHECK(wait_count(&a.restarts, 1, 20));
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double took = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    CHECK(took >= 3.0); /* the probe had its 4 s */
    CHECK(pinhole_peer_get_local_description(a.peer, desc, sizeof desc) > 0);
    ufrag_of(desc, after, sizeof after);
    CHECK(strlen(after) >= 4 && strcmp(after, before) != 0);
    CHECK(atomic_load(&a.call_errors) == 0);
    peer_side_destroy(&a);
    pthread_mutex_destroy(&a.lock);
    pthread_mutex_destroy(&b.lock);
}

static void test_peer_relay(void) {
    printf("peer connections: through pinhole serve --turn (relay only)\n");
    peer_side a, b;
    peer_side_init(&a, &b);
    peer_side_init(&b, &a);
    pinhole_peer_config ca, cb;
    peer_config(&ca, &a, 1);
    peer_config(&cb, &b, 0);
    pinhole_peer_turn_server turn = {turn_uri, turn_user, turn_password};
    ca.turn_servers = &turn;
    ca.turn_server_count = 1;
    ca.relay_policy = PINHOLE_RELAY_ONLY;
    /* The peer is direct: a TURN server does not relay to its own relayed addresses. */
    cb.relay_policy = PINHOLE_RELAY_NONE;
    if (!peer_create(&a, &ca) || !peer_create(&b, &cb)) {
        return;
    }
    CHECK(peer_connect(&a, &b));
    pinhole_peer_pair pair;
    CHECK_RC(pinhole_peer_get_selected_pair(a.peer, &pair), PINHOLE_OK);
    CHECK(pair.relayed);
    CHECK_RC(pinhole_peer_get_selected_pair(b.peer, &pair), PINHOLE_OK);
    CHECK(pair.relayed);
    CHECK(peer_deliver(&a, "relayed from a"));
    CHECK(peer_deliver(&b, "relayed from b"));
    char desc[4096];
    CHECK(pinhole_peer_get_local_description(a.peer, desc, sizeof desc) > 0);
    CHECK(strstr(desc, "typ relay") != NULL && strstr(desc, "typ host") == NULL);
    /* A network change: the relay allocated again, data through it again. */
    peer_network_change(&a, &b, "relayed");
    CHECK_RC(pinhole_peer_get_selected_pair(a.peer, &pair), PINHOLE_OK);
    CHECK(pair.relayed);
    CHECK(atomic_load(&a.call_errors) == 0 && atomic_load(&b.call_errors) == 0);
    /* Both destroyed without blocking; each completion comes once, on its own thread. */
    destroyed_state da, db;
    destroyed_init(&da);
    destroyed_init(&db);
    pthread_mutex_lock(&a.lock);
    pinhole_peer *pah = a.peer;
    a.peer = NULL;
    pthread_mutex_unlock(&a.lock);
    pthread_mutex_lock(&b.lock);
    pinhole_peer *pbh = b.peer;
    b.peer = NULL;
    pthread_mutex_unlock(&b.lock);
    CHECK_RC(pinhole_peer_destroy_async(pah, on_destroyed, &da), PINHOLE_OK);
    CHECK_RC(pinhole_peer_destroy_async(pbh, on_destroyed, &db), PINHOLE_OK);
    check_destroyed_once(&da);
    check_destroyed_once(&db);
    pthread_mutex_destroy(&a.lock);
    pthread_mutex_destroy(&b.lock);
}

static void test_peer_arguments(void) {
    printf("peer connections: bad input\n");
    char buf[4096];
    pinhole_peer_pair pair;
    pinhole_peer *p = NULL;
    /* NULL handles and arguments. */
    CHECK_RC(pinhole_peer_create(NULL, &p), PINHOLE_ERR_INVALID);
    CHECK(p == NULL);
    CHECK_RC(pinhole_peer_get_local_description(NULL, buf, sizeof buf), PINHOLE_ERR_INVALID);
    CHECK_RC(pinhole_peer_set_remote_description(NULL, "a=ice-ufrag:abcd"), PINHOLE_ERR_INVALID);
    CHECK_RC(pinhole_peer_add_remote_candidate(NULL, "candidate:x"), PINHOLE_ERR_INVALID);
    CHECK_RC(pinhole_peer_set_remote_gathering_done(NULL), PINHOLE_ERR_INVALID);
    CHECK_RC(pinhole_peer_send(NULL, (const uint8_t *)"x", 1), PINHOLE_ERR_INVALID);
    CHECK_RC(pinhole_peer_get_selected_pair(NULL, &pair), PINHOLE_ERR_INVALID);
    CHECK_RC(pinhole_peer_restart(NULL, buf, sizeof buf), PINHOLE_ERR_INVALID);
    CHECK_RC(pinhole_peer_network_changed(NULL, buf, sizeof buf), PINHOLE_ERR_INVALID);
    CHECK_RC(pinhole_peer_set_keepalive_policy(NULL, PINHOLE_KEEPALIVE_BACKGROUND), PINHOLE_ERR_INVALID);
    pinhole_keepalive_policy kp;
    uint32_t kms;
    CHECK_RC(pinhole_peer_get_keepalive_policy(NULL, &kp), PINHOLE_ERR_INVALID);
    CHECK_RC(pinhole_peer_get_keepalive_interval_ms(NULL, &kms), PINHOLE_ERR_INVALID);
    CHECK_RC(pinhole_peer_destroy_async(NULL, NULL, NULL), PINHOLE_ERR_INVALID);
    pinhole_peer_destroy(NULL);
    CHECK_RC(pinhole_peer_config_init(NULL, 64), PINHOLE_ERR_INVALID);

    /* Bad configs: each a typed error, and no handle. */
    pinhole_peer_config cfg;
    peer_side s, nobody; /* nobody: no peer to hand the candidates to */
    peer_side_init(&s, &nobody);
    peer_side_init(&nobody, &s);
    peer_config(&cfg, &s, 1);
    CHECK_RC(pinhole_peer_create(&cfg, NULL), PINHOLE_ERR_INVALID);
    cfg.relay_policy = 7;
    CHECK_RC(pinhole_peer_create(&cfg, &p), PINHOLE_ERR_INVALID);
    cfg.relay_policy = PINHOLE_RELAY_ONLY; /* without a TURN server */
    CHECK_RC(pinhole_peer_create(&cfg, &p), PINHOLE_ERR_INVALID);
    cfg.relay_policy = PINHOLE_RELAY_ALL;
    cfg.keepalive_policy = 3;
    CHECK_RC(pinhole_peer_create(&cfg, &p), PINHOLE_ERR_INVALID);
    CHECK(strstr(pinhole_last_error(), "keepalive_policy") != NULL);
    cfg.keepalive_policy = PINHOLE_KEEPALIVE_FOREGROUND;
    cfg.keepalive_interval_ms = 999; /* under a second: no keepalive */
    CHECK_RC(pinhole_peer_create(&cfg, &p), PINHOLE_ERR_INVALID);
    CHECK(strstr(pinhole_last_error(), "keepalive_interval_ms") != NULL);
    cfg.keepalive_interval_ms = 0;
    cfg.bind = "not an address";
    CHECK_RC(pinhole_peer_create(&cfg, &p), PINHOLE_ERR_INVALID);
    CHECK(strstr(pinhole_last_error(), "bind") != NULL);
    cfg.bind = "127.0.0.1:0";
    const char *bad_stun[] = {"stun:"};
    cfg.stun_servers = bad_stun;
    cfg.stun_server_count = 1;
    CHECK_RC(pinhole_peer_create(&cfg, &p), PINHOLE_ERR_INVALID);
    cfg.stun_servers = NULL;
    CHECK_RC(pinhole_peer_create(&cfg, &p), PINHOLE_ERR_INVALID);
    cfg.stun_server_count = 0;
    pinhole_peer_turn_server bad_turn = {"turn:127.0.0.1:3478", NULL, "p"};
    cfg.turn_servers = &bad_turn;
    cfg.turn_server_count = 1;
    CHECK_RC(pinhole_peer_create(&cfg, &p), PINHOLE_ERR_INVALID);
    cfg.turn_server_count = 0;
    pinhole_peer_config wrong = cfg;
    wrong.struct_size = 3;
    CHECK_RC(pinhole_peer_create(&wrong, &p), PINHOLE_ERR_INVALID);
    CHECK(p == NULL);

    /* A live handle: garbage in is refused, nothing is available before a pair. */
    if (!peer_create(&s, &cfg)) {
        return;
    }
    p = s.peer;
    CHECK_RC(pinhole_peer_set_remote_description(p, NULL), PINHOLE_ERR_INVALID);
    CHECK_RC(pinhole_peer_set_remote_description(p, "garbage"), PINHOLE_ERR_INVALID);
    CHECK(strstr(pinhole_last_error(), "ice-ufrag") != NULL);
    CHECK_RC(pinhole_peer_set_remote_description(p, "a=ice-ufrag:x\r\na=ice-pwd:y\r\n"),
             PINHOLE_ERR_INVALID);
    CHECK_RC(pinhole_peer_set_remote_description(p, "a=ice-ufrag:\xff\xfe"), PINHOLE_ERR_INVALID);
    CHECK_RC(pinhole_peer_add_remote_candidate(p, NULL), PINHOLE_ERR_INVALID);
    CHECK_RC(pinhole_peer_add_remote_candidate(p, "candidate:1 1 udp x y z"), PINHOLE_ERR_INVALID);
    CHECK_RC(pinhole_peer_add_remote_candidate(p, "a=ice-ufrag:abcd"), PINHOLE_ERR_INVALID);
    CHECK_RC(pinhole_peer_send(p, NULL, 5), PINHOLE_ERR_INVALID);
    CHECK_RC(pinhole_peer_send(p, (const uint8_t *)"x", PINHOLE_PEER_DATA_MAX + 1),
             PINHOLE_ERR_INVALID);
    CHECK_RC(pinhole_peer_send(p, (const uint8_t *)"early", 5), PINHOLE_ERR_NOT_AVAILABLE);
    CHECK_RC(pinhole_peer_get_selected_pair(p, &pair), PINHOLE_ERR_NOT_AVAILABLE);
    CHECK_RC(pinhole_peer_get_selected_pair(p, NULL), PINHOLE_ERR_INVALID);
    CHECK_RC(pinhole_peer_get_local_description(p, NULL, 10), PINHOLE_ERR_INVALID);
    CHECK_RC(pinhole_peer_restart(p, NULL, 10), PINHOLE_ERR_INVALID);
    CHECK_RC(pinhole_peer_network_changed(p, NULL, 10), PINHOLE_ERR_INVALID);
    /* Good input is taken. */
    CHECK_RC(pinhole_peer_set_remote_description(
                 p, "a=ice-ufrag:abcd\r\na=ice-pwd:0123456789012345678901\r\n"
                    "a=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host\r\n"),
             PINHOLE_OK);
    CHECK_RC(pinhole_peer_add_remote_candidate(p, "candidate:2 1 udp 2130706430 127.0.0.1 10 typ host"),
             PINHOLE_OK);
    CHECK_RC(pinhole_peer_set_remote_gathering_done(p), PINHOLE_OK);
    destroy_from_another_thread(peer_destroy_v, p);
    pthread_mutex_destroy(&s.lock);
    pthread_mutex_destroy(&nobody.lock);
}

int main(int argc, char **argv) {
    if (argc != 7) {
        fprintf(stderr,
                "usage: %s stun:IP:PORT(pinhole serve) stun:IP:PORT(silent) "
                "turn:IP:PORT(pinhole serve --turn) USER PASSWORD SECRET\n",
                argv[0]);
        return 2;
    }
    turn_uri = argv[3];
    turn_user = argv[4];
    turn_password = argv[5];
    turn_secret = argv[6];
    CHECK_RC(pinhole_set_log_handler(on_log, PINHOLE_LOG_DEBUG, NULL), PINHOLE_OK);
    test_version_and_last_error();
    test_misc();
    test_arguments();
    test_netcheck("pinhole serve", argv[1], "127.0.0.9");
    test_server();
    test_netcheck_cancel_and_destroy(argv[2]);
    test_portmap();
    test_portmap_verify(argv[1]);
    test_turn_arguments();
    test_turn_relay();
    test_turn_credentials_and_destroy();
    test_config_sizes(argv[2]);
    test_start_errors();
    test_netcheck_lifecycle(argv[1], argv[2]);
    test_portmap_lifecycle();
    test_turn_lifecycle();
    test_server_lifecycle();
    test_peer_arguments();
    test_peer_direct_restart_and_destroy();
    test_peer_network_changed();
    test_peer_keepalive();
    test_peer_keepalive_resume_gone();
    test_peer_relay();
    /* Every handle's thread has ended (those ended in the background too) before the
     * leak check. */
    CHECK(no_pinhole_threads(20));
    CHECK(atomic_load(&log_records) > 0);
    printf("log records received: %d\n", atomic_load(&log_records));
    CHECK_RC(pinhole_set_log_handler(NULL, PINHOLE_LOG_NONE, NULL), PINHOLE_OK);
    printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
