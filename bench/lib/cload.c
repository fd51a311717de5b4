/*
 * cload -- the benchmarks' WebSocket load client and paced publisher, in C so that it is not the
 * bottleneck (the asyncio client in loadclient.py tops out at a few hundred thousand frames/s on
 * one core and adds tens of milliseconds of queueing at N=5k).
 *
 * Built by bench/lib/cload.py with the machine's gcc into a cache directory on first use; driven
 * by that module over stdin/stdout, one command per line in, one JSON object per line out.
 *
 * One thread, one epoll set, level-triggered, non-blocking sockets:
 *   - N WebSocket clients (RFC 6455): the HTTP Upgrade with a fixed Sec-WebSocket-Key (the RFC 6455
 *     section 1.3 example, so the expected Sec-WebSocket-Accept is a constant and no SHA-1 is
 *     needed here), then server frames parsed only far enough to count them: 2-byte header, 16/64
 *     bit extended lengths (section 5.2), frames split across reads buffered per connection, many
 *     frames per read walked in place. Pings get a masked pong, a close frame a masked close.
 *   - "socketio" protocol: Engine.IO 4 over WebSocket (python-socketio): "0{..}" -> we send "40",
 *     "40{..}" marks the client ready, "2" (ping) -> "3", data frames are '42[...]'.
 *   - a publisher: K keep-alive HTTP/1.1 connections, POSTs pipelined round-robin, either paced at
 *     R requests/s (a timerfd tick, catch-up: every tick sends what is due by then) or as fast as
 *     possible with W requests in flight. Each body carries "t": CLOCK_REALTIME nanoseconds since
 *     the epoch at the moment the request is written (Python's time.time_ns()), so any publisher on
 *     this machine can stamp messages too.
 *
 * A data frame counts when its payload contains the stamp key "t": -- the welcome frame and other
 * traffic do not. Each counted frame goes into three log-linear histograms of microseconds (exact
 * below 256 us, above that 128 sub-buckets per power of two: < 0.8 % error; exact max kept):
 *   lat           arrival - t, arrival = the kernel's receive timestamp of the read (SO_TIMESTAMPNS,
 *                 CLOCK_REALTIME): the server's latency, without the client's own queueing;
 *   lat_read      read time - t (CLOCK_REALTIME once per read() call): what an application would see;
 *   client_queue  read time - arrival: the client's own delay, reported to show it stays small.
 *
 * Commands (each may start with a numeric id, echoed as "id" in its reply):
 *   connect N BATCH TIMEOUT_S  open N more clients, at most BATCH handshakes in flight at a time;
 *                              replies when all are ready or failed, or at the timeout
 *   reset                      zero frame counters, histogram, CPU and byte counters
 *   publish RATE COUNT         COUNT POSTs, paced at RATE/s (0: as fast as the in-flight window
 *                              allows); replies when every response has arrived
 *   wait K TIMEOUT_S STALL_S   replies when every open client has counted K frames since reset,
 *                              at the timeout, or after STALL_S without a new frame
 *   stats                      counters, latency percentiles, CPU seconds since reset
 *   close                      close all client connections
 *   quit
 *
 * Usage: cload --port P [--host 127.0.0.1] [--path /ws] [--proto ws|socketio]
 *              [--pub-path /api/broadcast] [--pub-conns 1] [--pub-window 16] [--payload 100]
 *              [--pub-header "X-Api-Key: k"] [--src 127.0.0.2 (clients' source address; "" = kernel's choice)]
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define RBUF_SIZE (256 * 1024)
#define MAX_FRAME (16 * 1024 * 1024)
#define WS_KEY "dGhlIHNhbXBsZSBub25jZQ=="
#define WS_ACCEPT "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" /* RFC 6455 section 1.3 */
#define TAG_STDIN 0xFFFFFFFFu
#define TAG_TIMER 0xFFFFFFFEu
#define PUB_BIT 0x80000000u

enum { ST_CONNECTING, ST_HANDSHAKE, ST_UPGRADED, ST_SIO_OPEN, ST_READY, ST_CLOSED };
enum { PROTO_WS, PROTO_SIO };

typedef struct {
    int fd;
    uint8_t state;
    uint8_t done;      /* reached the wait target */
    uint64_t frames;   /* counted frames since reset */
    uint8_t *buf;      /* unparsed rest of the previous read */
    uint32_t blen, bcap;
} Conn;

typedef struct {
    int fd;
    int ready;
    uint8_t *out;      /* bytes not yet written */
    size_t olen, ocap;
    char carry[16];    /* tail of the previous read, to find a status line split across reads */
    uint64_t inflight; /* requests written, not yet answered */
    size_t clen;
} Pub;

/* ---- options and global state ---- */
static const char *opt_host = "127.0.0.1", *opt_path = "/ws", *opt_pub_path = "/api/broadcast";
static const char *opt_pub_header = NULL, *opt_src = "127.0.0.2";
static int opt_port = 0, opt_proto = PROTO_WS, opt_pub_conns = 1, opt_pub_window = 16, opt_payload = 100;

static int ep = -1, tfd = -1;
static struct sockaddr_in addr;
static Conn *conns;
static uint32_t nconns, capconns;
static Pub *pubs;
static uint8_t rbuf[RBUF_SIZE];
static char request[1024];
static size_t request_len;

/* counters (since reset, except connection state) */
static uint64_t n_ready, n_failed, n_closed_by_server, n_lost, n_frames, n_other, n_reads, n_bytes, n_pings;
static uint64_t t_first_ns, t_last_ns;
static char fail_reason[200];
static double cpu0;

/* latency histogram (microseconds) */
#define H_SUB 128
#define H_BUCKETS (256 + 56 * H_SUB)
typedef struct {
    uint64_t b[H_BUCKETS], count, max, min;
    double sum;
} Hist;
/* stamp -> arrival in the client's socket (kernel receive timestamp), stamp -> our read(), and the
 * difference: the client's own queueing, reported so that it can be seen not to matter */
static Hist h_lat, h_read, h_queue;
static uint64_t g_read_ns; /* CLOCK_REALTIME of the current read() */
static uint64_t n_no_ts;   /* reads without a kernel timestamp (then arrival = read time) */

/* pending connect */
static int c_active; static uint32_t c_target, c_started, c_batch, c_pending; static uint64_t c_t0, c_deadline; static long c_id;
/* pending publish */
static int p_active; static uint64_t p_count, p_sent, p_ok, p_err, p_t0, p_lag_max, p_rate; static long p_id;
static uint32_t p_rr;
/* pending wait */
static int w_active; static uint64_t w_target, w_deadline, w_stall, w_last_progress, w_done_ns, w_ndone; static long w_id;

static uint64_t now_ns(clockid_t clk) {
    struct timespec ts;
    clock_gettime(clk, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}
static uint64_t mono(void) { return now_ns(CLOCK_MONOTONIC); }
static uint64_t wall(void) { return now_ns(CLOCK_REALTIME); }

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

static void out(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
    fflush(stdout);
}

/* fail_reason goes into a JSON string: no quotes, backslashes or control characters. */
static void clean_reason(void) {
    for (char *q = fail_reason; *q; q++)
        if (*q == '"' || *q == '\\' || (unsigned char)*q < 0x20) *q = ' ';
}

static void fail_note(const char *what, int err) {
    if (!fail_reason[0]) snprintf(fail_reason, sizeof fail_reason, "%s: %s", what, strerror(err));
    clean_reason();
}

/* ---- histogram ---- */
static uint32_t h_index(uint64_t v) {
    if (v < 256) return (uint32_t)v;
    int msb = 63 - __builtin_clzll(v);
    int shift = msb - 7; /* v >> shift in [128, 255] */
    uint32_t i = 256 + (uint32_t)(shift - 1) * H_SUB + (uint32_t)((v >> shift) - 128);
    return i < H_BUCKETS ? i : H_BUCKETS - 1;
}
static uint64_t h_value(uint32_t i) { /* the upper bound of bucket i */
    if (i < 256) return i;
    uint32_t shift = (i - 256) / H_SUB + 1, top = (i - 256) % H_SUB + 128;
    return (((uint64_t)top + 1) << shift) - 1;
}
static void h_reset(Hist *h) {
    memset(h, 0, sizeof *h);
    h->min = UINT64_MAX;
}
static void h_record(Hist *h, uint64_t us) {
    h->b[h_index(us)]++;
    h->count++;
    h->sum += (double)us;
    if (us > h->max) h->max = us;
    if (us < h->min) h->min = us;
}
static uint64_t h_pct(const Hist *h, double q) {
    if (!h->count) return 0;
    uint64_t want = (uint64_t)(q * (double)h->count + 0.999999), seen = 0;
    if (want < 1) want = 1;
    for (uint32_t i = 0; i < H_BUCKETS; i++) {
        seen += h->b[i];
        if (seen >= want) { uint64_t v = h_value(i); return v < h->max ? v : h->max; }
    }
    return h->max;
}
static void h_json(char *buf, size_t cap, const Hist *h) {
    snprintf(buf, cap,
             "{\"count\":%llu,\"min_us\":%llu,\"mean_us\":%.1f,\"p50_us\":%llu,\"p90_us\":%llu,\"p99_us\":%llu,"
             "\"p999_us\":%llu,\"max_us\":%llu}",
             (unsigned long long)h->count, (unsigned long long)(h->count ? h->min : 0),
             h->count ? h->sum / (double)h->count : 0.0, (unsigned long long)h_pct(h, 0.5),
             (unsigned long long)h_pct(h, 0.9), (unsigned long long)h_pct(h, 0.99),
             (unsigned long long)h_pct(h, 0.999), (unsigned long long)h->max);
}

/* ---- epoll helpers ---- */
static void ep_set(int op, int fd, uint32_t events, uint32_t tag) {
    struct epoll_event ev = {.events = events, .data.u32 = tag};
    if (epoll_ctl(ep, op, fd, &ev) < 0 && op != EPOLL_CTL_DEL) { perror("epoll_ctl"); exit(3); }
}

/* Clients bind their own source port on a second loopback address (--src, default 127.0.0.2),
 * counting through 1024..65535. Left to the kernel, connect() looks for a free ephemeral port by
 * probing, and with ~19,000 ports of the range taken the probing made connects 10x slower: the
 * benchmark would measure the client's port search, not the server's accept. */
static struct sockaddr_in src_addr;
static int src_ok = 0;
static uint32_t src_next;

static void bind_source(int fd) {
    if (!src_ok) return;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one); /* ports of a previous run in TIME_WAIT */
    for (int tries = 0; tries < 64512; tries++) {
        src_addr.sin_port = htons((uint16_t)(1024 + src_next++ % 64512));
        if (bind(fd, (struct sockaddr *)&src_addr, sizeof src_addr) == 0) return;
        if (errno != EADDRINUSE) break;
    }
    src_ok = 0; /* no such address or no port: leave it to the kernel from now on */
    fail_note("bind source address (falling back to kernel ports)", errno);
}

static int new_socket(int client) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (client) {
        setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one);
        bind_source(fd);
    }
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

/* ---- clients ---- */
static void conn_close(Conn *c, int lost) {
    if (c->state == ST_CLOSED) return;
    if (c->state < ST_READY && c_pending) c_pending--;
    if (c->done && w_ndone) w_ndone--;
    if (lost && c->state == ST_READY) n_lost++;
    if (c->state == ST_READY && n_ready) n_ready--;
    c->state = ST_CLOSED;
    ep_set(EPOLL_CTL_DEL, c->fd, 0, 0);
    close(c->fd);
    c->fd = -1;
    free(c->buf);
    c->buf = NULL;
    c->blen = c->bcap = 0;
}

static void conn_fail(Conn *c, const char *why, int err) {
    n_failed++;
    fail_note(why, err);
    conn_close(c, 0);
}

/* A masked client frame (mask key 0: legal, RFC 6455 section 5.3, and the payload is unchanged). */
static void send_client_frame(Conn *c, int opcode, const uint8_t *p, size_t n) {
    uint8_t f[6 + 125];
    if (n > 125) n = 125;
    f[0] = (uint8_t)(0x80 | opcode);
    f[1] = (uint8_t)(0x80 | n);
    memset(f + 2, 0, 4);
    if (n) memcpy(f + 6, p, n);
    if (write(c->fd, f, 6 + n) < 0) { /* a full send buffer on a control frame: ignore */ }
}

static void mark_ready(Conn *c) {
    if (c_pending) c_pending--;
    c->state = ST_READY;
    n_ready++;
}

static void count_frame(Conn *c, const uint8_t *p, size_t n, uint64_t rt) {
    const uint8_t *t = memmem(p, n, "\"t\":", 4);
    if (!t) { n_other++; return; }
    c->frames++;
    n_frames++;
    if (!t_first_ns) t_first_ns = rt;
    t_last_ns = rt;
    const uint8_t *q = t + 4, *e = p + n;
    while (q < e && *q == ' ') q++;
    uint64_t v = 0;
    int digits = 0;
    while (q < e && *q >= '0' && *q <= '9') { v = v * 10 + (uint64_t)(*q - '0'); q++; digits++; }
    if (digits >= 16) { /* a real ns timestamp */
        h_record(&h_lat, rt > v ? (rt - v) / 1000 : 0);
        h_record(&h_read, g_read_ns > v ? (g_read_ns - v) / 1000 : 0);
        h_record(&h_queue, (g_read_ns - rt) / 1000);
    }
    if (w_active && !c->done && c->frames >= w_target) { c->done = 1; w_ndone++; }
}

/* One complete frame. Returns 0 if the connection was closed. */
static int on_frame(Conn *c, int op, const uint8_t *p, size_t n, uint64_t rt) {
    switch (op) {
    case 0x1: case 0x2: case 0x0:
        if (c->state == ST_READY) { count_frame(c, p, n, rt); return 1; }
        if (opt_proto == PROTO_WS) { mark_ready(c); return 1; } /* the welcome frame */
        if (n >= 1 && p[0] == '0') { send_client_frame(c, 0x1, (const uint8_t *)"40", 2); c->state = ST_SIO_OPEN; }
        else if (n >= 2 && p[0] == '4' && p[1] == '0') mark_ready(c);
        else if (n >= 2 && p[0] == '4' && p[1] == '4') { conn_fail(c, "socket.io connect refused", 0); return 0; }
        return 1;
    case 0x9:
        n_pings++;
        send_client_frame(c, 0xA, p, n);
        return 1;
    case 0x8:
        n_closed_by_server++;
        send_client_frame(c, 0x8, p, n >= 2 ? 2 : 0);
        conn_close(c, 0);
        return 0;
    default:
        return 1;
    }
}

/* Engine.IO pings ride in text frames: "2" -> "3". */
static int sio_control(Conn *c, const uint8_t *p, size_t n) {
    if (opt_proto == PROTO_SIO && n == 1 && p[0] == '2') {
        n_pings++;
        send_client_frame(c, 0x1, (const uint8_t *)"3", 1);
        return 1;
    }
    return 0;
}

/* Walk the complete frames in p[0..n); returns the bytes consumed (the rest is an incomplete frame),
 * or SIZE_MAX if the connection was closed. */
static size_t parse_frames(Conn *c, const uint8_t *p, size_t n, uint64_t rt) {
    size_t off = 0;
    while (n - off >= 2) {
        const uint8_t *f = p + off;
        uint64_t len = f[1] & 0x7f;
        size_t hl = 2;
        if (len == 126) {
            if (n - off < 4) break;
            len = ((uint64_t)f[2] << 8) | f[3];
            hl = 4;
        } else if (len == 127) {
            if (n - off < 10) break;
            len = 0;
            for (int i = 0; i < 8; i++) len = (len << 8) | f[2 + i];
            hl = 10;
        }
        if (f[1] & 0x80) hl += 4; /* servers must not mask (section 5.1); skip the key, do not unmask */
        if (len > MAX_FRAME) { conn_fail(c, "frame too large", 0); return SIZE_MAX; }
        if (n - off < hl + len) break;
        int op = f[0] & 0x0f;
        if (!(op == 1 && sio_control(c, f + hl, len)) && !on_frame(c, op, f + hl, len, rt)) return SIZE_MAX;
        off += hl + len;
    }
    return off;
}

static int ensure(Conn *c, size_t n) {
    if (n > c->bcap) {
        uint32_t cap = c->bcap ? c->bcap : 256;
        while (cap < n) cap *= 2;
        uint8_t *b = realloc(c->buf, cap);
        if (!b) { conn_fail(c, "out of memory", ENOMEM); return 0; }
        c->buf = b;
        c->bcap = cap;
    }
    return 1;
}

/* Keep the unparsed rest p[0..n) (which may already lie inside c->buf) for the next read. */
static int keep_rest(Conn *c, const uint8_t *p, size_t n) {
    if (p != c->buf && !ensure(c, n)) return 0;
    if (n) memmove(c->buf, p, n);
    c->blen = (uint32_t)n;
    return 1;
}

static void after_handshake(Conn *c, const uint8_t *p, size_t n, uint64_t rt) {
    const uint8_t *end = memmem(p, n, "\r\n\r\n", 4);
    if (!end) {
        if (n > 16384) conn_fail(c, "oversized handshake response", 0);
        else keep_rest(c, p, n);
        return;
    }
    size_t hlen = (size_t)(end - p) + 4;
    if (n < 12 || memcmp(p, "HTTP/1.1 101", 12) != 0) {
        if (!fail_reason[0]) {
            snprintf(fail_reason, sizeof fail_reason, "handshake: %.60s", (const char *)p);
            clean_reason();
        }
        n_failed++;
        conn_close(c, 0);
        return;
    }
    if (!memmem(p, hlen, WS_ACCEPT, sizeof WS_ACCEPT - 1)) { conn_fail(c, "bad Sec-WebSocket-Accept", 0); return; }
    c->state = ST_UPGRADED;
    size_t used = parse_frames(c, p + hlen, n - hlen, rt);
    if (used != SIZE_MAX) keep_rest(c, p + hlen + used, n - hlen - used);
}

static void start_clients(void);

/* One read with the kernel's receive timestamp (SO_TIMESTAMPNS, CLOCK_REALTIME: when the last
 * segment of this read reached the socket). Frames read together share it, so an earlier frame in
 * the same read is charged a little too much latency, never too little. */
static ssize_t read_stamped(int fd, uint64_t *arrival) {
    struct iovec iov = {.iov_base = rbuf, .iov_len = RBUF_SIZE};
    union { char buf[CMSG_SPACE(sizeof(struct timespec)) * 2]; struct cmsghdr align; } ctl;
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf, .msg_controllen = sizeof ctl.buf};
    ssize_t r = recvmsg(fd, &mh, 0);
    *arrival = 0;
    if (r > 0) {
        for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
            if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_TIMESTAMPNS) {
                struct timespec ts;
                memcpy(&ts, CMSG_DATA(cm), sizeof ts);
                *arrival = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
            }
        }
    }
    return r;
}

static void conn_readable(Conn *c) {
    uint64_t arrival;
    ssize_t r = read_stamped(c->fd, &arrival);
    if (r <= 0) {
        if (r < 0 && (errno == EAGAIN || errno == EINTR)) return;
        if (c->state < ST_READY) conn_fail(c, "closed during handshake", r < 0 ? errno : ECONNRESET);
        else conn_close(c, 1);
        return;
    }
    g_read_ns = wall();
    if (!arrival || arrival > g_read_ns) {
        if (!arrival) n_no_ts++;
        arrival = g_read_ns;
    }
    uint64_t rt = arrival;
    n_reads++;
    n_bytes += (uint64_t)r;
    const uint8_t *p = rbuf;
    size_t n = (size_t)r;
    if (c->blen) { /* a frame was split across reads: append to the unparsed rest */
        size_t old = c->blen;
        if (!ensure(c, old + n)) return;
        memcpy(c->buf + old, rbuf, n);
        p = c->buf;
        n += old;
        c->blen = 0;
    }
    if (c->state == ST_HANDSHAKE) { after_handshake(c, p, n, rt); return; }
    size_t used = parse_frames(c, p, n, rt);
    if (used == SIZE_MAX) return;
    keep_rest(c, p + used, n - used);
}

static void conn_writable(Conn *c) {
    int err = 0;
    socklen_t l = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
    if (err) { conn_fail(c, "connect", err); return; }
    if (write(c->fd, request, request_len) != (ssize_t)request_len) { conn_fail(c, "write handshake", errno); return; }
    c->state = ST_HANDSHAKE;
    ep_set(EPOLL_CTL_MOD, c->fd, EPOLLIN, (uint32_t)(c - conns));
}

static void start_clients(void) {
    while (c_active && c_started < c_target && c_pending < c_batch) {
        if (nconns == capconns) {
            capconns = capconns ? capconns * 2 : 1024;
            conns = realloc(conns, capconns * sizeof *conns);
            if (!conns) { perror("realloc"); exit(3); }
        }
        Conn *c = &conns[nconns];
        memset(c, 0, sizeof *c);
        c_started++;
        int fd = new_socket(1);
        if (fd < 0) {
            n_failed++;
            fail_note("connect", errno);
            c->fd = -1;
            c->state = ST_CLOSED;
            nconns++;
            continue;
        }
        c->fd = fd;
        c->state = ST_CONNECTING;
        ep_set(EPOLL_CTL_ADD, fd, EPOLLOUT, nconns);
        nconns++;
        c_pending++;
    }
}

/* ---- publisher ---- */
static void pub_flush(Pub *p) {
    while (p->olen) {
        ssize_t w = write(p->fd, p->out, p->olen);
        if (w < 0) {
            if (errno == EAGAIN) break;
            fail_note("publisher write", errno);
            p->olen = 0;
            return;
        }
        memmove(p->out, p->out + w, p->olen - (size_t)w);
        p->olen -= (size_t)w;
    }
    ep_set(EPOLL_CTL_MOD, p->fd, EPOLLIN | (p->olen ? EPOLLOUT : 0), PUB_BIT | (uint32_t)(p - pubs));
}

static void pub_connect(Pub *p, uint32_t i) {
    int fd = new_socket(0);
    if (fd < 0) { perror("publisher connect"); exit(3); }
    p->fd = fd;
    p->olen = p->clen = 0;
    p->inflight = 0;
    ep_set(EPOLL_CTL_ADD, fd, EPOLLIN, PUB_BIT | i);
}

static void pub_send_one(uint64_t due_mono) {
    /* The connection with the fewest requests in flight (round-robin among equals): pipelining is
     * avoided while a connection is free -- some servers (uWS) answer pipelined POSTs slowly, and
     * any server answers them in order, so one slow request would hold up the next. */
    uint32_t i = p_rr++ % (uint32_t)opt_pub_conns;
    for (uint32_t k = 1; k < (uint32_t)opt_pub_conns && pubs[i].inflight; k++) {
        uint32_t j = (i + k) % (uint32_t)opt_pub_conns;
        if (pubs[j].inflight < pubs[i].inflight) i = j;
    }
    Pub *p = &pubs[i];
    if (p->fd < 0) pub_connect(p, i); /* the server closed an idle keep-alive connection (Node: after 5 s) */
    char body[65536 + 128], head[512];
    uint64_t t = wall();
    int pad = opt_payload - 40;
    if (pad < 1) pad = 1;
    if (pad > 65536) pad = 65536;
    int bl = snprintf(body, 128, "{\"data\":{\"t\":%llu,\"p\":\"", (unsigned long long)t);
    memset(body + bl, 'x', (size_t)pad);
    bl += pad;
    bl += snprintf(body + bl, 16, "\"}}");
    int hl = snprintf(head, sizeof head,
                      "POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n%s%s"
                      "Content-Length: %d\r\n\r\n",
                      opt_pub_path, opt_host, opt_port, opt_pub_header ? opt_pub_header : "",
                      opt_pub_header ? "\r\n" : "", bl);
    size_t need = p->olen + (size_t)hl + (size_t)bl;
    if (need > p->ocap) {
        p->ocap = need * 2;
        p->out = realloc(p->out, p->ocap);
        if (!p->out) { perror("realloc"); exit(3); }
    }
    memcpy(p->out + p->olen, head, (size_t)hl);
    memcpy(p->out + p->olen + hl, body, (size_t)bl);
    p->olen = need;
    p->inflight++;
    p_sent++;
    if (due_mono) {
        uint64_t m = mono();
        if (m > due_mono && m - due_mono > p_lag_max) p_lag_max = m - due_mono;
    }
}

static void pub_pump(void) {
    if (!p_active) return;
    uint64_t inflight = p_sent - p_ok - p_err;
    if (p_rate == 0) {
        while (p_sent < p_count && inflight < (uint64_t)opt_pub_window) { pub_send_one(0); inflight++; }
    } else {
        uint64_t el = mono() - p_t0;
        uint64_t due = (uint64_t)((double)el * (double)p_rate / 1e9) + 1;
        if (due > p_count) due = p_count;
        while (p_sent < due) pub_send_one(p_t0 + (uint64_t)((double)p_sent * 1e9 / (double)p_rate));
    }
    for (int i = 0; i < opt_pub_conns; i++) if (pubs[i].olen && pubs[i].fd >= 0) pub_flush(&pubs[i]);
}

static void pub_readable(Pub *p) {
    ssize_t r = read(p->fd, rbuf, RBUF_SIZE);
    if (r <= 0) {
        if (r < 0 && errno == EAGAIN) return;
        fail_note("publisher connection closed", r < 0 ? errno : ECONNRESET);
        ep_set(EPOLL_CTL_DEL, p->fd, 0, 0);
        close(p->fd);
        p->fd = -1;
        p->olen = 0;
        p_err += p->inflight; /* what was in flight on it is lost (idle closes have none) */
        p->inflight = 0;
        return;
    }
    /* Count status lines: "HTTP/1.1 2.." (bodies here never contain that text). */
    static uint8_t scan[RBUF_SIZE + 16];
    memcpy(scan, p->carry, p->clen);
    memcpy(scan + p->clen, rbuf, (size_t)r);
    size_t n = p->clen + (size_t)r;
    size_t pos = 0, keep_from;
    for (;;) {
        const uint8_t *h = memmem(scan + pos, n - pos, "HTTP/1.", 7);
        if (!h) { keep_from = n > 11 ? n - 11 : 0; if (keep_from < pos) keep_from = pos; break; }
        size_t hp = (size_t)(h - scan);
        if (hp + 12 > n) { keep_from = hp; break; } /* "HTTP/1.1 200" split across reads */
        if (h[9] == '2') p_ok++; else p_err++;
        if (p->inflight) p->inflight--;
        pos = hp + 12;
    }
    p->clen = n - keep_from;
    memcpy(p->carry, scan + keep_from, p->clen);
}

static void pub_open(void) {
    if (pubs) return;
    pubs = calloc((size_t)opt_pub_conns, sizeof *pubs);
    for (int i = 0; i < opt_pub_conns; i++) pub_connect(&pubs[i], (uint32_t)i);
}

/* ---- commands and replies ---- */
static void reply_connected(int timed_out) {
    uint32_t ready_here = 0, failed_here = 0;
    for (uint32_t i = nconns - c_started; i < nconns; i++) {
        if (conns[i].state == ST_READY) ready_here++;
        else if (conns[i].state == ST_CLOSED) failed_here++;
    }
    out("{\"id\":%ld,\"event\":\"connected\",\"started\":%u,\"ready\":%u,\"failed\":%u,\"timed_out\":%d,"
        "\"seconds\":%.6f,\"open\":%llu,\"fail_reason\":\"%s\"}",
        c_id, c_started, ready_here, failed_here, timed_out, (double)(mono() - c_t0) / 1e9,
        (unsigned long long)n_ready, fail_reason);
    c_active = 0;
}

static void check_connect(void) {
    if (!c_active) return;
    if (c_started >= c_target && c_pending == 0) reply_connected(0);
    else if (mono() > c_deadline) reply_connected(1);
    else start_clients();
}

static void check_publish(void) {
    if (!p_active) return;
    if (p_sent >= p_count && p_ok + p_err >= p_sent) {
        out("{\"id\":%ld,\"event\":\"published\",\"sent\":%llu,\"ok\":%llu,\"errors\":%llu,\"seconds\":%.6f,"
            "\"lag_max_us\":%llu}",
            p_id, (unsigned long long)p_sent, (unsigned long long)p_ok, (unsigned long long)p_err,
            (double)(mono() - p_t0) / 1e9, (unsigned long long)(p_lag_max / 1000));
        p_active = 0;
    }
}

static uint64_t open_clients(void) { return n_ready; }

static void check_wait(void) {
    if (!w_active) return;
    uint64_t m = mono();
    int done = w_ndone >= open_clients();
    if (done && !w_done_ns) w_done_ns = t_last_ns ? t_last_ns : wall();
    if (done || m > w_deadline || (w_stall && m - w_last_progress > w_stall)) {
        out("{\"id\":%ld,\"event\":\"wait\",\"done\":%d,\"clients_done\":%llu,\"open\":%llu,\"t_done_ns\":%llu,"
            "\"reason\":\"%s\"}",
            w_id, done, (unsigned long long)w_ndone, (unsigned long long)open_clients(),
            (unsigned long long)(done ? w_done_ns : 0), done ? "" : (m > w_deadline ? "timeout" : "stalled"));
        w_active = 0;
    }
}

static void cmd_stats(long id) {
    uint64_t mn = UINT64_MAX, mx = 0;
    for (uint32_t i = 0; i < nconns; i++) {
        if (conns[i].state != ST_READY) continue;
        if (conns[i].frames < mn) mn = conns[i].frames;
        if (conns[i].frames > mx) mx = conns[i].frames;
    }
    if (mn == UINT64_MAX) mn = 0;
    char lat[400], rd[400], q[400];
    h_json(lat, sizeof lat, &h_lat);
    h_json(rd, sizeof rd, &h_read);
    h_json(q, sizeof q, &h_queue);
    out("{\"id\":%ld,\"event\":\"stats\",\"clients\":%u,\"open\":%llu,\"failed\":%llu,\"closed_by_server\":%llu,"
        "\"lost\":%llu,\"frames\":%llu,\"other_frames\":%llu,\"min_frames\":%llu,\"max_frames\":%llu,\"reads\":%llu,"
        "\"reads_without_timestamp\":%llu,\"bytes\":%llu,\"pings\":%llu,\"t_first_ns\":%llu,\"t_last_ns\":%llu,"
        "\"cpu_s\":%.4f,\"lat\":%s,\"lat_read\":%s,\"client_queue\":%s,"
        "\"pub\":{\"sent\":%llu,\"ok\":%llu,\"errors\":%llu,\"lag_max_us\":%llu},\"fail_reason\":\"%s\"}",
        id, nconns, (unsigned long long)n_ready, (unsigned long long)n_failed, (unsigned long long)n_closed_by_server,
        (unsigned long long)n_lost, (unsigned long long)n_frames, (unsigned long long)n_other,
        (unsigned long long)mn, (unsigned long long)mx, (unsigned long long)n_reads, (unsigned long long)n_no_ts,
        (unsigned long long)n_bytes, (unsigned long long)n_pings, (unsigned long long)t_first_ns,
        (unsigned long long)t_last_ns, cpu_seconds() - cpu0, lat, rd, q,
        (unsigned long long)p_sent, (unsigned long long)p_ok, (unsigned long long)p_err,
        (unsigned long long)(p_lag_max / 1000), fail_reason);
}

static void cmd_reset(long id) {
    for (uint32_t i = 0; i < nconns; i++) { conns[i].frames = 0; conns[i].done = 0; }
    n_frames = n_other = n_reads = n_bytes = n_pings = n_closed_by_server = n_lost = 0;
    t_first_ns = t_last_ns = 0;
    h_reset(&h_lat);
    h_reset(&h_read);
    h_reset(&h_queue);
    n_no_ts = 0;
    p_sent = p_ok = p_err = p_lag_max = 0;
    fail_reason[0] = 0;
    cpu0 = cpu_seconds();
    out("{\"id\":%ld,\"event\":\"reset\"}", id);
}

static void set_timer(uint64_t interval_ns) {
    struct itimerspec its = {0};
    if (interval_ns) {
        its.it_interval.tv_sec = (time_t)(interval_ns / 1000000000ull);
        its.it_interval.tv_nsec = (long)(interval_ns % 1000000000ull);
        its.it_value = its.it_interval;
    }
    timerfd_settime(tfd, 0, &its, NULL);
}

static int command(char *line) {
    long id = 0;
    char *s = line;
    if (*s >= '0' && *s <= '9') id = strtol(s, &s, 10);
    while (*s == ' ') s++;
    char verb[32] = {0};
    double a = 0, b = 0, c = 0;
    int k = sscanf(s, "%31s %lf %lf %lf", verb, &a, &b, &c);
    if (k < 1) return 1;
    if (!strcmp(verb, "connect")) {
        c_active = 1; c_id = id; c_target = (uint32_t)a; c_batch = k >= 3 && b >= 1 ? (uint32_t)b : 100;
        c_started = 0; c_pending = 0; c_t0 = mono();
        c_deadline = c_t0 + (uint64_t)((k >= 4 ? c : 60.0) * 1e9);
        fail_reason[0] = 0;
        start_clients();
        check_connect();
    } else if (!strcmp(verb, "reset")) {
        cmd_reset(id);
    } else if (!strcmp(verb, "publish")) {
        pub_open();
        p_active = 1; p_id = id; p_rate = (uint64_t)a; p_count = (uint64_t)b;
        p_sent = p_ok = p_err = p_lag_max = 0;
        p_t0 = mono();
        if (p_rate) {
            uint64_t iv = (uint64_t)(1e9 / (double)p_rate);
            set_timer(iv < 50000 ? 50000 : iv);
        }
        pub_pump();
        check_publish();
    } else if (!strcmp(verb, "wait")) {
        w_active = 1; w_id = id; w_target = (uint64_t)a; w_done_ns = 0;
        w_deadline = mono() + (uint64_t)((k >= 3 ? b : 60.0) * 1e9);
        w_stall = (uint64_t)((k >= 4 ? c : 0.0) * 1e9);
        w_last_progress = mono();
        w_ndone = 0;
        for (uint32_t i = 0; i < nconns; i++) {
            conns[i].done = conns[i].state == ST_READY && conns[i].frames >= w_target;
            w_ndone += conns[i].done;
        }
        check_wait();
    } else if (!strcmp(verb, "stats")) {
        cmd_stats(id);
    } else if (!strcmp(verb, "close")) {
        for (uint32_t i = 0; i < nconns; i++) conn_close(&conns[i], 0);
        nconns = 0;
        n_ready = 0;
        out("{\"id\":%ld,\"event\":\"closed\"}", id);
    } else if (!strcmp(verb, "quit")) {
        return 0;
    } else {
        out("{\"id\":%ld,\"event\":\"error\",\"error\":\"unknown command\"}", id);
    }
    return 1;
}

static int stdin_readable(void) {
    static char lbuf[4096];
    static size_t llen;
    ssize_t r = read(0, lbuf + llen, sizeof lbuf - 1 - llen);
    if (r <= 0) return 0; /* parent gone */
    llen += (size_t)r;
    char *nl;
    while ((nl = memchr(lbuf, '\n', llen))) {
        *nl = 0;
        int go = command(lbuf);
        size_t used = (size_t)(nl - lbuf) + 1;
        memmove(lbuf, nl + 1, llen - used);
        llen -= used;
        if (!go) return 0;
    }
    if (llen == sizeof lbuf - 1) llen = 0;
    return 1;
}

static void usage(void) {
    fprintf(stderr, "usage: cload --port P [--host H] [--path /ws] [--proto ws|socketio] [--pub-path P]"
                    " [--pub-conns K] [--pub-window W] [--payload BYTES] [--pub-header 'Name: value']\n");
    exit(2);
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) usage();
        if (!strcmp(o, "--host")) opt_host = v;
        else if (!strcmp(o, "--port")) opt_port = atoi(v);
        else if (!strcmp(o, "--path")) opt_path = v;
        else if (!strcmp(o, "--proto")) opt_proto = !strcmp(v, "socketio") ? PROTO_SIO : PROTO_WS;
        else if (!strcmp(o, "--pub-path")) opt_pub_path = v;
        else if (!strcmp(o, "--pub-conns")) opt_pub_conns = atoi(v) > 0 ? atoi(v) : 1;
        else if (!strcmp(o, "--pub-window")) opt_pub_window = atoi(v) > 0 ? atoi(v) : 1;
        else if (!strcmp(o, "--payload")) opt_payload = atoi(v);
        else if (!strcmp(o, "--pub-header")) opt_pub_header = v;
        else if (!strcmp(o, "--src")) opt_src = v;
        else usage();
        i++;
    }
    if (!opt_port) usage();
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) { rl.rlim_cur = rl.rlim_max; setrlimit(RLIMIT_NOFILE, &rl); }
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)opt_port);
    if (inet_pton(AF_INET, opt_host, &addr.sin_addr) != 1) usage();
    src_addr.sin_family = AF_INET;
    src_ok = *opt_src && inet_pton(AF_INET, opt_src, &src_addr.sin_addr) == 1;
    src_next = (uint32_t)getpid() * 7919u;
    request_len = (size_t)snprintf(request, sizeof request,
                                   "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                                   "Sec-WebSocket-Key: " WS_KEY "\r\nSec-WebSocket-Version: 13\r\n"
                                   "Origin: http://%s:%d\r\n\r\n",
                                   opt_path, opt_host, opt_port, opt_host, opt_port);
    ep = epoll_create1(EPOLL_CLOEXEC);
    tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
    ep_set(EPOLL_CTL_ADD, 0, EPOLLIN, TAG_STDIN);
    ep_set(EPOLL_CTL_ADD, tfd, EPOLLIN, TAG_TIMER);
    h_reset(&h_lat);
    h_reset(&h_read);
    h_reset(&h_queue);
    cpu0 = cpu_seconds();
    out("{\"event\":\"hello\",\"pid\":%d}", (int)getpid());

    struct epoll_event evs[1024];
    for (;;) {
        int timeout = (c_active || w_active || p_active) ? 10 : 1000;
        int n = epoll_wait(ep, evs, 1024, timeout);
        if (n < 0 && errno != EINTR) { perror("epoll_wait"); return 3; }
        int progress = 0;
        for (int i = 0; i < n; i++) {
            uint32_t tag = evs[i].data.u32, e = evs[i].events;
            if (tag == TAG_STDIN) { if (!stdin_readable()) return 0; continue; }
            if (tag == TAG_TIMER) {
                uint64_t ticks;
                if (read(tfd, &ticks, sizeof ticks) < 0) { /* spurious */ }
                if (p_active) pub_pump(); else set_timer(0);
                continue;
            }
            if (tag & PUB_BIT) {
                Pub *p = &pubs[tag & ~PUB_BIT];
                if (p->fd < 0) continue;
                if (e & EPOLLOUT) pub_flush(p);
                if (e & (EPOLLIN | EPOLLHUP | EPOLLERR)) { pub_readable(p); if (p_rate == 0) pub_pump(); }
                continue;
            }
            if (tag >= nconns) continue;
            Conn *c = &conns[tag];
            if (c->state == ST_CLOSED) continue;
            uint64_t before = n_frames;
            if (c->state == ST_CONNECTING) {
                if (e & (EPOLLOUT | EPOLLERR | EPOLLHUP)) conn_writable(c);
            } else if (e & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                conn_readable(c);
            }
            if (n_frames != before) progress = 1;
        }
        if (progress) w_last_progress = mono();
        check_connect();
        check_publish();
        check_wait();
    }
}
