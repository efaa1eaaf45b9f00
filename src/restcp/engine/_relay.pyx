# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The native relay engine: accept, connect and relay of plain routes on one epoll loop.

How it works. One thread runs ``Engine.run``, which releases the GIL and loops on epoll_wait.
Python (the asyncio side, restcp/proxy/native.py) keeps a table per route: its listening fd,
the backends it may connect to now, its timeouts. Everything the loop touches is a C struct;
no Python object exists per connection. The loop and Python share the tables under one
mutex, which the loop holds while it handles a batch of events and Python holds while it
changes a table or drains the records; the loop never takes the GIL.

A connection:

    accept ─► CONNECTING (the route's balancer picks a backend of the table, ``choose``;
              │           non-blocking connect; on error or past connect_timeout a new pick
              │           without the backends tried, up to max_attempts; none: closed)
              ▼
            RELAY: each direction reads into a scratch buffer and writes to the other side
              │    at once; what the other side's kernel buffer does not take waits in a
              │    bounded buffer of its own, and that direction reads nothing more until it
              │    is written (flow control through the kernel's buffers, edge-triggered).
              │    A FIN read is forwarded as shutdown(SHUT_WR) once the buffer is empty; a
              │    reset on one side resets the other (SO_LINGER 0). On a splice route a
              │    direction moves its bytes through a kernel pipe of its own instead
              │    (splice(2) socket ─► pipe ─► socket; see "Splicing" below).
              ▼
            DONE: both fds closed, one record (bytes, duration, why it ended) for Python.

Splicing. A route's ``splice`` is 0 (copy), 1 (``true``: each direction splices from its
first read) or 2 (``"auto"``: each direction copies until a read fills CHUNK, as the asyncio
data plane's BULK/COPY_CHUNK). A splicing direction goes back to copying after SMALL_RUN
splices in a row that each brought less than SMALL (proxy/splice.py's rule, same numbers),
and splices again at its next read that fills CHUNK. Its pipe (pipe2, non-blocking) is made
at its first splice and closed with the connection. The pipe and the copy buffer are never
both holding bytes (a direction reads only when both are empty), so bytes leave in order;
a direction whose pipe holds bytes reads no more until they are written, as one whose
buffer does. No pipe to be had (out of descriptors), or a socket the kernel cannot splice
from: that read is copied.

Timeouts (connect, idle, half-close) are checked by a sweep over the connections, which
runs once the earliest deadline it worked out last time has passed (``due``; each new
deadline lowers it), and never sooner than SWEEP milliseconds after the last: connections
whose deadlines are far off (an idle timeout of an hour) wake the loop for nothing.
Records reach Python in batches: the loop writes to ``notify_fd`` (an eventfd the asyncio
loop watches) and Python drains every record at once.
"""

from libc.stdint cimport uint32_t, uint64_t, int64_t
from libc.stdlib cimport malloc, free, realloc
from libc.string cimport memcmp, memcpy, memset, strlen
from libc.stdio cimport snprintf
from libc.math cimport log, ceil, INFINITY
from libc.errno cimport (errno, EAGAIN, EINPROGRESS, EINTR, EINVAL, EMFILE, ENFILE, ENOBUFS,
                         ENOMEM, ENOSYS)

cdef extern from "<unistd.h>" nogil:
    int close(int fd)
    ssize_t read(int fd, void *buf, size_t n)
    ssize_t write(int fd, const void *buf, size_t n)

cdef extern from "<fcntl.h>" nogil:
    # splice(2) and pipe2(2) are GNU extensions: _relay.c is compiled with _GNU_SOURCE
    # (Python.h defines it).
    ssize_t splice(int fd_in, void *off_in, int fd_out, void *off_out, size_t n,
                   unsigned int flags)
    int pipe2(int fds[2], int flags)
    unsigned int SPLICE_F_MOVE, SPLICE_F_NONBLOCK
    int O_NONBLOCK, O_CLOEXEC

cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(int clk, timespec *ts)
    int CLOCK_MONOTONIC

cdef extern from "<sys/epoll.h>" nogil:
    ctypedef union epoll_data_t:
        uint64_t u64
    struct epoll_event:
        uint32_t events
        epoll_data_t data
    int epoll_create1(int flags)
    int epoll_ctl(int epfd, int op, int fd, epoll_event *event)
    int epoll_wait(int epfd, epoll_event *events, int maxevents, int timeout)
    int EPOLL_CLOEXEC, EPOLL_CTL_ADD, EPOLL_CTL_DEL
    uint32_t EPOLLIN, EPOLLOUT, EPOLLRDHUP, EPOLLERR, EPOLLHUP, EPOLLET

cdef extern from "<sys/eventfd.h>" nogil:
    int eventfd(unsigned int initval, int flags)
    int EFD_NONBLOCK, EFD_CLOEXEC

cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    struct sockaddr:
        unsigned short sa_family
    struct sockaddr_storage:
        unsigned short ss_family
    struct linger:
        int l_onoff
        int l_linger
    int socket(int domain, int type, int protocol)
    int connect(int fd, const sockaddr *addr, socklen_t len)
    int accept4(int fd, sockaddr *addr, socklen_t *len, int flags)
    ssize_t recv(int fd, void *buf, size_t n, int flags)
    ssize_t send(int fd, const void *buf, size_t n, int flags)
    int shutdown(int fd, int how)
    int setsockopt(int fd, int level, int name, const void *val, socklen_t len)
    int getsockopt(int fd, int level, int name, void *val, socklen_t *len)
    int getsockname(int fd, sockaddr *addr, socklen_t *len)
    int SOCK_STREAM, SOCK_NONBLOCK, SOCK_CLOEXEC, SOL_SOCKET, SO_ERROR, SO_LINGER
    int SHUT_WR, MSG_NOSIGNAL, AF_INET, AF_INET6

cdef extern from "<netinet/in.h>" nogil:
    int IPPROTO_TCP
    struct in_addr:
        pass
    struct in6_addr:
        pass
    struct sockaddr_in:
        in_addr sin_addr
    struct sockaddr_in6:
        in6_addr sin6_addr

cdef extern from "<arpa/inet.h>" nogil:
    const char *inet_ntop(int af, const void *src, char *dst, socklen_t size)

cdef extern from "<netinet/tcp.h>" nogil:
    int TCP_NODELAY

cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_mutex_t:
        pass
    int pthread_mutex_init(pthread_mutex_t *m, void *attr)
    int pthread_mutex_lock(pthread_mutex_t *m)
    int pthread_mutex_unlock(pthread_mutex_t *m)
    int pthread_mutex_destroy(pthread_mutex_t *m)

# The node's places under its caps, shared by the engine's thread and asyncio's (Python
# takes and gives them through ``take``/``give`` with the GIL, the loop without it):
# relaxed atomics, as nothing else is ordered by them.
cdef extern from *:
    """
    static inline int64_t restcp_add(int64_t *p, int64_t d) {
        return __atomic_add_fetch(p, d, __ATOMIC_RELAXED);
    }
    """
    int64_t restcp_add(int64_t *p, int64_t d) nogil

# What a direction reads at once, and the most it keeps waiting for the other side.
cdef enum:
    CHUNK = 65536
# Splicing (see the module's comment): a splice that brings less than SMALL is small, and
# SMALL_RUN small ones in a row make the direction copy again (proxy/splice.py's numbers).
cdef enum:
    SMALL = 16384
cdef enum:
    SMALL_RUN = 4
# What one splice into a direction's pipe asks for. The pipe keeps the kernel's default 16
# slots, but a slot takes a whole fragment of the socket's buffers, which may be more than
# a page: asking for 64 KiB left it part empty (docs/benchmarks.md, "The native engine
# splices"). The kernel moves what fits.
cdef enum:
    PIPE_ROOM = 1048576
cdef enum:
    MAX_EVENTS = 256
cdef enum:
    SWEEP = 50  # ms at least between two timeout sweeps (and between accept retries)

# epoll data: kind in the low 2 bits, then the index; the generation in the high 32 bits.
cdef enum:
    K_WAKE = 0
cdef enum:
    K_LISTEN = 1
cdef enum:
    K_CLIENT = 2
cdef enum:
    K_BACKEND = 3

cdef enum:
    S_FREE = 0
cdef enum:
    S_CONNECTING = 1
cdef enum:
    S_RELAY = 2

# Why a connection ended: the index into ENDS.
cdef enum:
    E_CLOSED = 0
cdef enum:
    E_CLIENT_RESET = 1
cdef enum:
    E_BACKEND_RESET = 2
cdef enum:
    E_CONNECT_FAILED = 3
cdef enum:
    E_NO_BACKEND = 4
cdef enum:
    E_IDLE = 5
cdef enum:
    E_HALF_CLOSE = 6
cdef enum:
    E_ABORTED = 7
cdef enum:
    E_ROUTE_LIMIT = 8
cdef enum:
    E_NODE_LIMIT = 9
cdef enum:
    E_CONNECT_ERROR = 10  # one connect attempt failed (the connection goes on: failover)
cdef enum:
    E_CONNECTED = 11  # the connection reached its backend (it goes on: relayed)
# 12 to 15: reset by Python (``abort``), for the reason ENDS names.
cdef enum:
    E_ACCEPT_PAUSED = 16  # a route's accept failed for want of descriptors (errno in bytes_up)
cdef enum:
    E_ACCEPT_RESUMED = 17  # ... and has accepted again
cdef enum:
    E_APP_LIMIT = 18  # refused: its app has --max-connections-per-app open
cdef enum:
    E_RESOLVE = 19  # a connect to a host-name backend waits for Python to resolve it
cdef enum:
    E_FOLDED = 20  # an E_CONNECTED record its connection's end record took in (never drained)

# The longest PROXY header the engine sends: v1's 107 bytes (the spec's bound), v2's 52.
cdef enum:
    HEADER_MAX = 128

ENDS = ("closed", "client_reset", "backend_reset", "connect_failed", "no_backend",
        "idle_timeout", "half_close_timeout", "aborted", "route_limit", "node_limit",
        "connect_error", "connected", "route_disabled", "backend_disabled", "drain_timeout",
        "shutdown", "accept_paused", "accept_resumed", "app_limit", "resolve", "folded")
# The balancers of core/balancer.py, each made here to pick as that one does.
BALANCES = {"random": 0, "round_robin": 1, "least_conn": 2, "two_choices": 3, "source_hash": 4}
cdef enum:
    B_RANDOM = 0
cdef enum:
    B_ROUND_ROBIN = 1
cdef enum:
    B_LEAST_CONN = 2
cdef enum:
    B_TWO_CHOICES = 3
cdef enum:
    B_SOURCE_HASH = 4

cdef struct Backend:
    sockaddr_storage addr
    socklen_t addr_len
    int family         # 0 (AF_UNSPEC): a host name, resolved by Python at each connect
    int proxy          # the PROXY header it is sent first: 0 none, 1 (text), 2 (binary)
    int64_t max_connections  # -1: no cap
    int64_t id
    int64_t weight
    uint64_t weight_to  # cumulative weight (random pick)
    int load           # its address's counts: an index into the route's loads
    char hash_prefix[24]  # b"<id>:", what source_hash hashes before the client's IP
    int hash_prefix_len

cdef struct Load:
    # The connections of one address of a backend (its id and sockaddr), as a Member counts
    # them (proxy/members.py): they outlive table updates, so a cap or least_conn is not
    # reset by an unrelated change, and a replaced address keeps its leftovers apart.
    int64_t id
    sockaddr_storage addr
    socklen_t addr_len
    int64_t active      # connected: least_conn and two_choices read it
    int64_t connecting  # connects in flight: they count against max_connections too
    int listed          # in the route's current table (0: only open connections hold it)
    # Passive health (core/health.py's connect_failed), counted here as Python counts it, so
    # that the failure reaching passive_fall takes the address out of the next pick at once
    # rather than when Python has read the records and sent a table without it.
    int64_t failures    # connect failures in a row (only while listed; a connect resets it)
    int64_t tail        # ... of them since Python last drained the records
    uint64_t tail_drain  # the drain ``tail`` counts from (Engine.drains then)
    int out             # failures reached passive_fall: no new pick until Python says again

cdef struct Route:
    int used           # the route is served (0: retired)
    int listen_fd      # -1: not accepting
    uint32_t gen
    Backend *backends
    int n_backends
    uint64_t total_weight
    Load *loads
    int n_loads
    int capped         # a backend of the table has max_connections
    int balance
    # The pickers' cursors (core/balancer.py's): kept across updates of the same balance.
    int64_t rr_round, rr_last
    uint64_t lc_turn
    double connect_timeout, idle_timeout, half_close_timeout
    int max_attempts
    int64_t max_connections  # -1: no cap
    int splice         # 0: copy; 1: splice from the first read; 2: from a read of CHUNK
    int retry          # accept failed for want of descriptors: try again at the next sweep
    int paused         # ... and Python was told (it is told of the next accept too)
    uint64_t accepted, active, bytes_up, bytes_down, connect_failures
    uint64_t active_max  # the most clients admitted and open at once
    int64_t *app_count   # its app's places under --max-connections-per-app (NULL: none)
    int passive_fall   # 0: passive health off (or the table is when_all_down's try_all)
    int try_all        # when_all_down "try_all": every row out is as if none were
    int excluding      # a row is out and the picks skip it (``passive_changed``)

cdef struct Direction:
    char *pending      # bytes read but not yet taken by the other side (NULL: none)
    int off, length
    int eof            # a FIN was read
    int shut           # ... and forwarded (shutdown SHUT_WR)
    int pipe_r, pipe_w  # its kernel pipe (-1: none yet)
    int in_pipe        # bytes in the pipe, not yet taken by the other side
    int splicing       # reads go into the pipe (0: copied through the scratch buffer)
    int smalls         # small splices in a row (SMALL_RUN of them: copy again)
    int unspliceable   # the kernel cannot splice from this source: copy always
    int hup            # an event of its source said FIN, HUP or error: read it to the end

cdef struct Conn:
    int state
    uint32_t gen
    int client, backend
    int route
    int tries
    int load           # the address connected (or being connected) to, or -1
    int64_t *tried     # ids whose connect failed, one per failed try (NULL before one)
    int proxy          # the PROXY header version of the backend being connected to
    int resolving      # waiting for Python's answer (``resolved``) to an E_RESOLVE record
    int64_t backend_id
    int placed         # holds a place under the node's caps (given back when it ends)
    int64_t *app_count # ... and under its app's, if not NULL
    double started, last, deadline, half_since
    uint64_t bytes_up, bytes_down
    sockaddr_storage peer
    socklen_t peer_len
    Direction up, down
    int splice         # the route's splice setting when it was accepted
    int spliced        # a direction of it went splicing at some point
    int connected_at   # its E_CONNECTED record's index + 1, while not drained (0: none)
    uint64_t connected_drain  # the drain that record waits for (Engine.drains then)
    int next_free

cdef struct Record:
    # An ended connection; or (end E_CONNECT_ERROR) one failed connect, errno in bytes_up
    # (0: timed out); or (E_CONNECTED) a connection that reached its backend. A connection
    # that ends before Python drained its E_CONNECTED record has that one dropped (E_FOLDED)
    # and its end record says ``connected``: one record rather than two for Python to read,
    # which is most of what a short connection costs it.
    int route
    int64_t backend_id
    uint64_t bytes_up, bytes_down
    double duration
    int end
    int spliced
    int connected      # an end record that also stands for its E_CONNECTED one (folded)
    sockaddr_storage peer
    socklen_t peer_len
    # The address it was connected to when that address is no longer its backend's (replaced
    # or deleted, ``Load.listed`` 0): Python counts the connection against the member it
    # keeps for that address, as asyncio does. Length 0 otherwise.
    sockaddr_storage backend_addr
    socklen_t backend_addr_len


cdef inline double now() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef inline uint64_t tag(int kind, int index, uint32_t gen) noexcept nogil:
    return (<uint64_t>gen << 32) | (<uint64_t>index << 2) | <uint64_t>kind


cdef inline void hard_close(int fd) noexcept nogil:
    """Close with SO_LINGER 0: the peer gets a RST, not a FIN."""
    cdef linger lg
    lg.l_onoff = 1
    lg.l_linger = 0
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg))
    close(fd)


cdef check_splice(int splice):
    if splice < 0 or splice > 2:
        raise ValueError(f"splice must be 0 (off), 1 (on) or 2 (auto), not {splice}")


cdef inline bint holding(Direction *d) noexcept nogil:
    """Bytes read by the direction wait for the other side: in its buffer or its pipe."""
    return d.pending != NULL or d.in_pipe > 0


cdef inline void close_pipe(Direction *d) noexcept nogil:
    if d.pipe_r >= 0:
        close(d.pipe_r)
        close(d.pipe_w)
        d.pipe_r = d.pipe_w = -1
    d.in_pipe = 0


# ---- PROXY protocol headers (restcp/core/proxy_protocol.py, byte for byte) -----------------

cdef int fold(sockaddr_storage *ss, unsigned char *ip, int *port) noexcept nogil:
    """The address of ``ss`` in ``ip`` (4 or 16 bytes), its port: 4 or 6, or 0 (not an IP).
    An IPv4-mapped IPv6 address is IPv4, as core/proxy_protocol.py folds it; a scope id is
    left out (the bytes alone)."""
    cdef unsigned char *p = <unsigned char *>ss
    cdef int i
    port[0] = (p[2] << 8) | p[3]
    if ss.ss_family == AF_INET:
        memcpy(ip, p + 4, 4)
        return 4
    if ss.ss_family == AF_INET6:
        for i in range(10):
            if p[8 + i]:
                memcpy(ip, p + 8, 16)
                return 6
        if p[18] == 0xFF and p[19] == 0xFF:
            memcpy(ip, p + 20, 4)
            return 4
        memcpy(ip, p + 8, 16)
        return 6
    return 0


cdef int put_uint(char *out, unsigned int value) noexcept nogil:
    cdef char digits[10]
    cdef int n = 0, i
    while True:
        digits[n] = <char>(48 + value % 10)
        n += 1
        value //= 10
        if value == 0:
            break
    for i in range(n):
        out[i] = digits[n - 1 - i]
    return n


cdef int put_text(char *out, const char *text) noexcept nogil:
    cdef int n = 0
    while text[n]:
        out[n] = text[n]
        n += 1
    return n


cdef int put_ip(char *out, int version, unsigned char *ip) noexcept nogil:
    """Python's str() of the address: dotted IPv4; IPv6 as ipaddress writes it (lower-case
    hex groups, the first longest run of two or more zero groups as "::"). Not inet_ntop,
    which writes ::a.b.c.d for some addresses Python writes in hex."""
    cdef int n = 0, i, run = 0, best = -1, best_len = 1, start = 0
    cdef unsigned int group
    cdef const char *hexdigits = b"0123456789abcdef"
    if version == 4:
        for i in range(4):
            if i:
                out[n] = 46  # "."
                n += 1
            n += put_uint(out + n, ip[i])
        return n
    for i in range(8):
        if ip[2 * i] == 0 and ip[2 * i + 1] == 0:
            if run == 0:
                start = i
            run += 1
            if run > best_len:
                best, best_len = start, run
        else:
            run = 0
    i = 0
    while i < 8:
        if i == best:
            out[n] = 58  # ":"
            out[n + 1] = 58
            n += 2
            i += best_len
            continue
        if i and i != best + best_len:
            out[n] = 58
            n += 1
        group = (ip[2 * i] << 8) | ip[2 * i + 1]
        if group >= 0x1000:
            out[n] = hexdigits[group >> 12]
            n += 1
        if group >= 0x100:
            out[n] = hexdigits[(group >> 8) & 15]
            n += 1
        if group >= 0x10:
            out[n] = hexdigits[(group >> 4) & 15]
            n += 1
        out[n] = hexdigits[group & 15]
        n += 1
        i += 1
    return n


cdef int build_header(int version, sockaddr_storage *src, sockaddr_storage *dst,
                      char *out) noexcept nogil:
    """The PROXY header of ``version`` (1: text, 2: binary) for a client at ``src`` that
    connected to ``dst``, in ``out`` (HEADER_MAX bytes): its length. Addresses of two
    families (or not IP) give v1's UNKNOWN line and v2's LOCAL header."""
    cdef unsigned char a[16]
    cdef unsigned char b[16]
    cdef int src_port = 0, dst_port = 0, n = 0, size
    cdef int fa = fold(src, a, &src_port)
    cdef int fb = fold(dst, b, &dst_port)
    cdef bint known = fa != 0 and fa == fb
    if version == 1:
        if not known:
            return put_text(out, b"PROXY UNKNOWN\r\n")
        n = put_text(out, b"PROXY TCP4 " if fa == 4 else b"PROXY TCP6 ")
        n += put_ip(out + n, fa, a)
        out[n] = 32
        n += 1
        n += put_ip(out + n, fa, b)
        out[n] = 32
        n += 1
        n += put_uint(out + n, src_port)
        out[n] = 32
        n += 1
        n += put_uint(out + n, dst_port)
        out[n] = 13
        out[n + 1] = 10
        return n + 2
    memcpy(out, b"\r\n\r\n\x00\r\nQUIT\n", 12)
    if not known:
        out[12] = <char>0x20  # version 2, LOCAL: no address block
        out[13] = 0
        out[14] = 0
        out[15] = 0
        return 16
    size = 4 if fa == 4 else 16
    out[12] = <char>0x21  # version 2, PROXY
    out[13] = <char>(0x11 if fa == 4 else 0x21)  # TCP over IPv4, over IPv6
    out[14] = 0
    out[15] = <char>(2 * size + 4)
    memcpy(out + 16, a, size)
    memcpy(out + 16 + size, b, size)
    n = 16 + 2 * size
    out[n] = <char>(src_port >> 8)
    out[n + 1] = <char>(src_port & 255)
    out[n + 2] = <char>(dst_port >> 8)
    out[n + 3] = <char>(dst_port & 255)
    return n + 4


def proxy_header(int version, bytes src, bytes dst) -> bytes:
    """The header the engine sends (for tests against core/proxy_protocol.py): ``src`` and
    ``dst`` are struct sockaddr bytes (b"": unknown)."""
    cdef sockaddr_storage a
    cdef sockaddr_storage b
    cdef char out[HEADER_MAX]
    if version not in (1, 2) or len(src) > sizeof(a) or len(dst) > sizeof(b):
        raise ValueError("a version 1 or 2, and struct sockaddr bytes")
    memset(&a, 0, sizeof(a))
    memset(&b, 0, sizeof(b))
    memcpy(&a, <char *>src, len(src))
    memcpy(&b, <char *>dst, len(dst))
    if len(src) < 2:
        a.ss_family = 0
    if len(dst) < 2:
        b.ss_family = 0
    return out[:build_header(version, &a, &b, out)]


# ---- Picking a backend: core/balancer.py's pickers, in C --------------------------------
#
# ``choose`` is the one pick, for the first connect and for each failover: the rows of the
# route's table not tried yet for this client, of weight > 0 and below their
# max_connections (open connections plus connects in flight), as RouteRuntime.pick passes
# them to its picker. Each balancer picks as its Python twin does: round_robin and
# least_conn with the same cursor, so the same sequence; source_hash with the same hash and
# score, so the same backend for a client (tests/unit/engine/ holds them to it); random and
# two_choices with the same weights, from a generator of their own.

cdef extern from *:
    """
    /* BLAKE2b (RFC 7693) with an 8-byte digest, no key: hashlib.blake2b(data,
       digest_size=8), whose digest read big-endian is source_hash's point. */
    static const uint64_t restcp_b2_iv[8] = {
        0x6a09e667f3bcc908ULL, 0xbb67ae8584caa73bULL, 0x3c6ef372fe94f82bULL,
        0xa54ff53a5f1d36f1ULL, 0x510e527fade682d1ULL, 0x9b05688c2b3e6c1fULL,
        0x1f83d9abfb41bd6bULL, 0x5be0cd19137e2179ULL};
    static const unsigned char restcp_b2_sigma[12][16] = {
        {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
        {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
        {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4},
        {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
        {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13},
        {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
        {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11},
        {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
        {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5},
        {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
        {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
        {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3}};

    #define RESTCP_ROTR64(x, n) (((x) >> (n)) | ((x) << (64 - (n))))
    #define RESTCP_B2_G(a, b, c, d, x, y) do { \\
        v[a] = v[a] + v[b] + (x); v[d] = RESTCP_ROTR64(v[d] ^ v[a], 32); \\
        v[c] = v[c] + v[d];       v[b] = RESTCP_ROTR64(v[b] ^ v[c], 24); \\
        v[a] = v[a] + v[b] + (y); v[d] = RESTCP_ROTR64(v[d] ^ v[a], 16); \\
        v[c] = v[c] + v[d];       v[b] = RESTCP_ROTR64(v[b] ^ v[c], 63); \\
    } while (0)

    static void restcp_b2_compress(uint64_t h[8], const unsigned char block[128],
                                   uint64_t t, int last) {
        uint64_t v[16], m[16];
        int i, j;
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        memcpy(m, block, 128);  /* the words are little-endian, as this machine's */
        (void)j;
    #else
        for (i = 0; i < 16; i++) {
            m[i] = 0;
            for (j = 7; j >= 0; j--)
                m[i] = (m[i] << 8) | block[i * 8 + j];
        }
    #endif
        for (i = 0; i < 8; i++) {
            v[i] = h[i];
            v[i + 8] = restcp_b2_iv[i];
        }
        v[12] ^= t;  /* messages here are far below 2**64 bytes: the high word stays 0 */
        if (last)
            v[14] = ~v[14];
        for (i = 0; i < 12; i++) {
            const unsigned char *s = restcp_b2_sigma[i];
            RESTCP_B2_G(0, 4, 8, 12, m[s[0]], m[s[1]]);
            RESTCP_B2_G(1, 5, 9, 13, m[s[2]], m[s[3]]);
            RESTCP_B2_G(2, 6, 10, 14, m[s[4]], m[s[5]]);
            RESTCP_B2_G(3, 7, 11, 15, m[s[6]], m[s[7]]);
            RESTCP_B2_G(0, 5, 10, 15, m[s[8]], m[s[9]]);
            RESTCP_B2_G(1, 6, 11, 12, m[s[10]], m[s[11]]);
            RESTCP_B2_G(2, 7, 8, 13, m[s[12]], m[s[13]]);
            RESTCP_B2_G(3, 4, 9, 14, m[s[14]], m[s[15]]);
        }
        for (i = 0; i < 8; i++)
            h[i] ^= v[i] ^ v[i + 8];
    }

    /* The digest of prefix + data, read as a big-endian integer. */
    static uint64_t restcp_blake2b_point(const unsigned char *prefix, size_t n_prefix,
                                         const unsigned char *data, size_t n_data) {
        uint64_t h[8], t = 0, out = 0;
        unsigned char block[128];
        size_t fill = 0, total = n_prefix + n_data, k;
        int i;
        for (i = 0; i < 8; i++)
            h[i] = restcp_b2_iv[i];
        h[0] ^= 0x01010000ULL ^ 8;  /* fanout 1, depth 1, no key, an 8-byte digest */
        if (total <= 128) {  /* every key of the engine (an IP's text): one block */
            memcpy(block, prefix, n_prefix);
            memcpy(block + n_prefix, data, n_data);
            fill = total;
        } else {
            for (k = 0; k < total; k++) {
                if (fill == 128) {  /* a full block with more to come: not the last */
                    t += 128;
                    restcp_b2_compress(h, block, t, 0);
                    fill = 0;
                }
                block[fill++] = k < n_prefix ? prefix[k] : data[k - n_prefix];
            }
        }
        t += fill;
        memset(block + fill, 0, 128 - fill);
        restcp_b2_compress(h, block, t, 1);
        for (i = 0; i < 8; i++)  /* the digest is h[0]'s bytes, little-endian first */
            out = (out << 8) | ((h[0] >> (8 * i)) & 0xff);
        return out;
    }
    """
    uint64_t restcp_blake2b_point(const unsigned char *prefix, size_t n_prefix,
                                  const unsigned char *data, size_t n_data) nogil


cdef inline uint64_t draw(uint64_t *rng) noexcept nogil:
    """xorshift64*: the random and two_choices draws."""
    cdef uint64_t x = rng[0]
    x ^= x >> 12
    x ^= x << 25
    x ^= x >> 27
    rng[0] = x
    return x * <uint64_t>0x2545F4914F6CDD1DULL


cdef inline bint eligible(Route *r, int i, const int64_t *tried, int n_tried) noexcept nogil:
    cdef Backend *b = &r.backends[i]
    cdef Load *load
    cdef int k
    if b.weight <= 0:
        return 0
    for k in range(n_tried):
        if tried[k] == b.id:
            return 0
    if b.max_connections >= 0 or r.excluding:
        load = &r.loads[b.load]
        if r.excluding and load.out:
            return 0
        if b.max_connections >= 0 and load.active + load.connecting >= b.max_connections:
            return 0
    return 1


cdef void passive_changed(Route *r) noexcept nogil:
    """Whether the picks skip the rows that are out: not when passive health is off, nor,
    ``try_all``, when every row is (Python's candidates are then none, and it tries all)."""
    cdef int i, outs = 0
    for i in range(r.n_backends):
        if r.loads[r.backends[i].load].out:
            outs += 1
    r.excluding = r.passive_fall > 0 and outs > 0 \
        and not (r.try_all and outs == r.n_backends)


cdef inline double load_of(Route *r, int i) noexcept nogil:
    """``active / weight`` as Python divides it (both exact as doubles, one rounding)."""
    return <double>r.loads[r.backends[i].load].active / <double>r.backends[i].weight


cdef inline void set_hash_prefix(Backend *b) noexcept nogil:
    b.hash_prefix_len = snprintf(b.hash_prefix, sizeof(b.hash_prefix), "%lld:",
                                 <long long>b.id)


cdef double hash_score(const char *key, int key_len, Backend *b) noexcept nogil:
    """SourceHashPicker's ``_score``: ``weight / -ln(u)``, u from BLAKE2b of b"<id>:<key>"."""
    cdef uint64_t point = restcp_blake2b_point(
        <const unsigned char *>b.hash_prefix, b.hash_prefix_len,
        <const unsigned char *>key, key_len
    )
    # 52 bits keep u strictly inside (0, 1), as in Python: (point >> 12) + 0.5 is exact.
    cdef double u = (<double>(point >> 12) + 0.5) / 4503599627370496.0
    return <double>b.weight / -log(u)


cdef int weighted(Route *r, const int64_t *tried, int n_tried, uint64_t w) noexcept nogil:
    """The eligible row that the point ``w`` (below their total weight) falls on."""
    cdef int i
    for i in range(r.n_backends):
        if eligible(r, i, tried, n_tried):
            if w < <uint64_t>r.backends[i].weight:
                return i
            w -= <uint64_t>r.backends[i].weight
    return -1


cdef int choose(Route *r, const int64_t *tried, int n_tried, const char *key, int key_len,
                uint64_t *rng) noexcept nogil:
    """The row of ``r``'s table a client goes to (see above), or -1: none is left."""
    cdef int i, a, b, best = -1, count = 0, k
    cdef uint64_t total = 0, w
    cdef int64_t top = 0
    cdef double low = 0, x, best_score = 0
    if r.n_backends == 0:
        return -1
    if r.balance == B_RANDOM and n_tried == 0 and not r.capped and not r.excluding:
        # Every row may take the client: a binary search of the cumulative weights.
        if r.total_weight == 0:
            return -1
        w = draw(rng) % r.total_weight
        a, b = 0, r.n_backends - 1
        while a < b:
            i = (a + b) // 2
            if r.backends[i].weight_to > w:
                b = i
            else:
                a = i + 1
        return a
    if r.balance == B_RANDOM or r.balance == B_TWO_CHOICES:
        for i in range(r.n_backends):
            if eligible(r, i, tried, n_tried):
                total += <uint64_t>r.backends[i].weight
                count += 1
                best = i
        if count <= 1:
            return best  # the only one, without a draw (as Python)
        a = weighted(r, tried, n_tried, draw(rng) % total)
        if r.balance == B_RANDOM:
            return a
        # Two weighted draws (the same one may come twice): the less loaded wins, a on a tie.
        b = weighted(r, tried, n_tried, draw(rng) % total)
        return a if load_of(r, a) <= load_of(r, b) else b
    if r.balance == B_ROUND_ROBIN:
        # Round r visits, in id order, every row whose weight is above r; the cursor is
        # (round, id last handed out), so a table change shifts nothing.
        for i in range(r.n_backends):
            if eligible(r, i, tried, n_tried) and r.backends[i].weight > top:
                top = r.backends[i].weight
        if top == 0:
            return -1
        if r.rr_round >= top:
            r.rr_round, r.rr_last = 0, 0
        while True:  # two passes at most: after a reset the heaviest row qualifies
            for i in range(r.n_backends):
                if eligible(r, i, tried, n_tried) and r.backends[i].id > r.rr_last \
                        and r.backends[i].weight > r.rr_round \
                        and (best < 0 or r.backends[i].id < r.backends[best].id):
                    best = i
            if best >= 0:
                r.rr_last = r.backends[best].id
                return best
            r.rr_round = (r.rr_round + 1) % top
            r.rr_last = 0
    if r.balance == B_LEAST_CONN:
        # The fewest open connections per unit of weight; ties in table order, taken in
        # turn (the turn advances on every pick, as Python's).
        for i in range(r.n_backends):
            if eligible(r, i, tried, n_tried):
                x = load_of(r, i)
                if best < 0 or x < low:
                    low, best = x, i
        if best < 0:
            return -1
        for i in range(r.n_backends):
            if eligible(r, i, tried, n_tried) and load_of(r, i) == low:
                count += 1
        r.lc_turn += 1
        k = <int>(r.lc_turn % <uint64_t>count)
        for i in range(r.n_backends):
            if eligible(r, i, tried, n_tried) and load_of(r, i) == low:
                if k == 0:
                    return i
                k -= 1
        return -1
    # source_hash: the top scorer (weighted rendezvous); a tie, never seen, to the lower id.
    for i in range(r.n_backends):
        if eligible(r, i, tried, n_tried):
            x = hash_score(key, key_len, &r.backends[i])
            if best < 0 or x > best_score \
                    or (x == best_score and r.backends[i].id < r.backends[best].id):
                best, best_score = i, x
    return best


cdef int peer_text(sockaddr_storage *peer, char *out) noexcept nogil:
    """The client's IP as Python writes it (``peername[0]``, inet_ntop's text, as uvloop
    writes it; Python's own loop adds an IPv6 link-local address's %scope): the key
    source_hash hashes. Its length (0: no address)."""
    cdef const void *raw
    if peer.ss_family == AF_INET:
        raw = &(<sockaddr_in *>peer).sin_addr
    elif peer.ss_family == AF_INET6:
        raw = &(<sockaddr_in6 *>peer).sin6_addr
    else:
        return 0
    if inet_ntop(peer.ss_family, raw, out, 64) == NULL:
        return 0
    return <int>strlen(out)


cdef class Picker:
    """The engine's pick alone (``choose``), over a table of (id, weight, active connections,
    connects in flight, max_connections or -1): for the tests that hold it to
    core/balancer.py's pickers, and to time a pick. Not used by the engine."""

    cdef Route route
    cdef uint64_t rng

    def __cinit__(self, str balance, uint64_t seed=0x9E3779B97F4A7C15):
        memset(&self.route, 0, sizeof(Route))
        self.route.balance = BALANCES[balance]
        self.rng = seed if seed else 1  # xorshift stays at 0 from 0

    def __dealloc__(self):
        free(self.route.backends)
        free(self.route.loads)

    def table(self, list rows) -> None:
        """A new table; the cursors go on, as the engine's do across updates."""
        cdef int n = len(rows), i
        cdef Backend *backends = <Backend *>malloc((n if n else 1) * sizeof(Backend))
        cdef Load *loads = <Load *>malloc((n if n else 1) * sizeof(Load))
        cdef uint64_t total = 0
        if backends == NULL or loads == NULL:
            free(backends)
            free(loads)
            raise MemoryError()
        memset(backends, 0, (n if n else 1) * sizeof(Backend))
        memset(loads, 0, (n if n else 1) * sizeof(Load))
        cdef int capped = 0
        try:
            for i in range(n):
                if len(rows[i]) != 5:
                    raise ValueError(f"bad row {rows[i]!r}: 5 fields, not {len(rows[i])}")
                backend_id, weight, active, connecting, max_connections = rows[i]
                if weight < 0:
                    raise ValueError(f"bad row {rows[i]!r}")
                backends[i].id = backend_id
                backends[i].weight = weight
                total += <uint64_t>weight
                backends[i].weight_to = total
                backends[i].max_connections = max_connections
                backends[i].load = i
                set_hash_prefix(&backends[i])
                loads[i].id = backend_id
                loads[i].active = active
                loads[i].connecting = connecting
                if max_connections >= 0:
                    capped = 1
        except BaseException:
            free(backends)
            free(loads)
            raise
        self.route.capped = capped
        free(self.route.backends)
        free(self.route.loads)
        self.route.backends = backends
        self.route.loads = loads
        self.route.n_backends = n
        self.route.n_loads = n
        self.route.total_weight = total

    def pick(self, tried: tuple = (), bytes key=b"") -> object:
        """The id picked, or None; ``tried``: the ids excluded, ``key``: the client's IP."""
        cdef int n = len(tried), i
        cdef int64_t *excluded = <int64_t *>malloc((n if n else 1) * sizeof(int64_t))
        if excluded == NULL:
            raise MemoryError()
        try:
            for i in range(n):
                excluded[i] = tried[i]
            i = choose(&self.route, excluded, n, key, len(key), &self.rng)
        finally:
            free(excluded)
        return None if i < 0 else self.route.backends[i].id

    def time(self, long n, bytes key=b"") -> float:
        """Seconds per pick, over ``n`` (> 0) first picks in a row."""
        cdef long k
        cdef const char *raw = key
        cdef int key_len = len(key)
        cdef double start = now()
        if n <= 0:
            raise ValueError("time() needs n > 0 picks")
        with nogil:
            for k in range(n):
                choose(&self.route, NULL, 0, raw, key_len, &self.rng)
        return (now() - start) / n


cdef class Engine:
    cdef int epfd, wake_fd, notify_fd_
    cdef pthread_mutex_t lock
    cdef Route *routes
    cdef int n_routes
    cdef Conn *conns
    cdef int n_conns, free_head, live
    cdef Record *records
    cdef int n_records, cap_records
    cdef uint64_t drains  # how many times the records were drained
    cdef char *scratch
    cdef int stopping
    cdef int retries  # routes whose accept waits for a retry
    # No timeout of an open connection is due before this (a lower bound: activity only
    # moves idle deadlines later); the sweep runs once it has passed, and sets it again.
    cdef double due
    cdef uint64_t n_sweeps  # how many sweeps ran (``sweeps``)
    # The node's caps (-1: none) and the places taken under them, by both data planes:
    # ``taken`` every connection's and held client's, ``apps[i]`` those of app i (each
    # malloc'd apart, so that a route's pointer to its own stays valid as apps come).
    cdef int64_t limit, app_limit
    cdef int64_t taken
    cdef int64_t **apps
    cdef int n_apps
    cdef dict app_ids
    cdef uint64_t rng

    def __cinit__(self):
        self.due = INFINITY
        self.epfd = epoll_create1(EPOLL_CLOEXEC)
        self.wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
        self.notify_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
        if self.epfd < 0 or self.wake_fd < 0 or self.notify_fd_ < 0:
            raise OSError(errno, "epoll or eventfd")
        pthread_mutex_init(&self.lock, NULL)
        self.routes = NULL
        self.n_routes = 0
        self.conns = NULL
        self.n_conns = 0
        self.free_head = -1
        self.live = 0
        self.records = NULL
        self.n_records = 0
        self.cap_records = 0
        self.stopping = 0
        self.retries = 0
        self.limit = -1
        self.app_limit = -1
        self.taken = 0
        self.apps = NULL
        self.n_apps = 0
        self.app_ids = {}
        self.rng = 0x9E3779B97F4A7C15
        self.scratch = <char *>malloc(CHUNK)
        cdef epoll_event ev
        ev.events = EPOLLIN
        ev.data.u64 = tag(K_WAKE, 0, 0)
        epoll_ctl(self.epfd, EPOLL_CTL_ADD, self.wake_fd, &ev)

    def __dealloc__(self):
        cdef int i
        for i in range(self.n_conns):
            if self.conns[i].state != S_FREE:
                self.finish(i, E_ABORTED)
        for i in range(self.n_routes):
            free(self.routes[i].backends)
            free(self.routes[i].loads)
        free(self.routes)
        free(self.conns)
        free(self.records)
        free(self.scratch)
        for i in range(self.n_apps):
            free(self.apps[i])
        free(self.apps)
        self._close_fds()
        pthread_mutex_destroy(&self.lock)

    def close(self) -> None:
        """Give back the epoll set and eventfds now (after ``run`` has returned), not when
        the object is collected: the places and counters stay readable."""
        self._close_fds()

    cdef void _close_fds(self) noexcept:
        if self.epfd >= 0:
            close(self.epfd)
            close(self.wake_fd)
            close(self.notify_fd_)
            self.epfd = self.wake_fd = self.notify_fd_ = -1

    @property
    def notify_fd(self) -> int:
        """Readable when records of ended connections wait for ``drain``."""
        return self.notify_fd_

    # ---- Python's side: the route tables --------------------------------------------------

    def add_route(self, int listen_fd, list backends, str balance, double connect_timeout,
                  double idle_timeout, double half_close_timeout, int max_attempts,
                  long max_connections, app=None, int splice=0, int passive_fall=0,
                  bint try_all=False) -> int:
        """Serve a route: accept on ``listen_fd`` (non-blocking, owned by the caller) and
        relay to ``backends`` ([BackendRow]: id, family, sockaddr bytes, weight,
        max_connections or -1, PROXY version; family 0: a host name, see ``resolved``); its
        clients count under ``app``'s cap (None: under none); ``splice`` 0: copy, 1: splice,
        2: splice bulk ("auto"); ``passive_fall`` connect failures in a row take an address
        out of the picks until ``passive_reset`` (0: never), unless ``try_all`` and every
        row is out. Its slot number."""
        check_splice(splice)
        cdef int64_t *app_count = NULL if app is None else self._app(app)
        cdef int slot, one = 1
        cdef Route *r
        cdef epoll_event ev
        pthread_mutex_lock(&self.lock)
        try:
            # A slot per route served, never reused: the records of a route's last
            # connections may still wait for Python when it is gone.
            self.routes = <Route *>realloc(self.routes, (self.n_routes + 1) * sizeof(Route))
            slot = self.n_routes
            self.n_routes += 1
            r = &self.routes[slot]
            memset(r, 0, sizeof(Route))
            r.used = 1
            r.listen_fd = -1
            r.app_count = app_count
            try:
                self._configure(r, backends, balance, connect_timeout, idle_timeout,
                                half_close_timeout, max_attempts, max_connections, splice,
                                passive_fall, try_all)
            except BaseException:
                r.used = 0  # its slot stays unused
                raise
            r.gen += 1
            r.listen_fd = listen_fd
            # Its clients inherit TCP_NODELAY (listener.bind sets it too, for the clients
            # that completed their handshake before this call).
            setsockopt(listen_fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one))
            ev.events = EPOLLIN | EPOLLET
            ev.data.u64 = tag(K_LISTEN, slot, r.gen)
            if epoll_ctl(self.epfd, EPOLL_CTL_ADD, listen_fd, &ev) < 0:
                r.used = 0
                r.listen_fd = -1
                raise OSError(errno, "epoll_ctl")
        finally:
            pthread_mutex_unlock(&self.lock)
        self._wake()  # connections may already wait in the accept queue
        return slot

    def update_route(self, int slot, list backends, str balance, double connect_timeout,
                     double idle_timeout, double half_close_timeout, int max_attempts,
                     long max_connections, int splice=0, int passive_fall=0,
                     bint try_all=False) -> None:
        """New backends or settings for a served route; open connections keep theirs."""
        check_splice(splice)
        pthread_mutex_lock(&self.lock)
        try:
            self._configure(&self.routes[slot], backends, balance, connect_timeout,
                            idle_timeout, half_close_timeout, max_attempts, max_connections,
                            splice, passive_fall, try_all)
            # Its timeouts may be shorter now: the next sweep works the deadlines out again.
            self.due = 0
        finally:
            pthread_mutex_unlock(&self.lock)
        self._wake()

    cdef _configure(self, Route *r, list backends, str balance, double connect_timeout,
                    double idle_timeout, double half_close_timeout, int max_attempts,
                    long max_connections, int splice, int passive_fall, bint try_all):
        """Read the table into ``r``; a bad table raises and changes nothing."""
        cdef int n = len(backends), i, j, kind
        cdef Backend *table
        cdef Load *loads
        cdef Load *load
        cdef uint64_t total = 0
        cdef int capped = 0
        cdef bytes packed
        # Checked before anything changes: a bad table leaves the route as it was.
        if balance not in BALANCES:
            raise ValueError(f"unknown balance {balance!r}")
        if passive_fall < 0:
            raise ValueError(f"bad passive_fall {passive_fall!r}")
        kind = BALANCES[balance]
        for row in backends:
            if not isinstance(row, tuple) or len(row) != 6 or not isinstance(row[2], bytes) \
                    or len(row[2]) > sizeof(sockaddr_storage) or row[3] < 0 \
                    or row[5] not in (0, 1, 2):
                raise ValueError(f"bad backend row {row!r}")
        table = <Backend *>malloc((n if n else 1) * sizeof(Backend))
        if table == NULL:
            raise MemoryError()
        try:
            for i in range(n):
                backend_id, family, packed, weight, backend_max, proxy = backends[i]
                memset(&table[i], 0, sizeof(Backend))
                memcpy(&table[i].addr, <char *>packed, len(packed))
                table[i].addr_len = len(packed)
                table[i].family = family
                table[i].proxy = proxy
                table[i].max_connections = backend_max
                table[i].id = backend_id
                table[i].weight = weight
                total += weight
                table[i].weight_to = total
                set_hash_prefix(&table[i])
                if backend_max >= 0:
                    capped = 1
        except BaseException:  # a field of the wrong type: nothing changed either
            free(table)
            raise
        # Room for a new record per row first: nothing below can fail.
        loads = <Load *>realloc(r.loads, (r.n_loads + n + 1) * sizeof(Load))
        if loads == NULL:
            free(table)
            raise MemoryError()
        r.loads = loads
        # Each row's address takes its counts from before (the same id and sockaddr); then
        # each new address a record of none: one whose address left the table and has
        # nothing open, or a new one. Records still counting open connections stay until
        # those end. Two passes, so that no new address takes a record a later row keeps.
        for j in range(r.n_loads):
            r.loads[j].listed = 0
        for i in range(n):
            table[i].load = -1
            # Most updates keep the rows where they were (a weight, a health change): the
            # old row at the same place first, so a large table is not searched per row.
            if i < r.n_backends and r.backends[i].id == table[i].id \
                    and r.backends[i].addr_len == table[i].addr_len \
                    and memcmp(&r.backends[i].addr, &table[i].addr, table[i].addr_len) == 0:
                table[i].load = r.backends[i].load
            for j in range(r.n_loads if table[i].load < 0 else 0):
                load = &r.loads[j]
                if load.id == table[i].id and load.addr_len == table[i].addr_len \
                        and memcmp(&load.addr, &table[i].addr, load.addr_len) == 0:
                    table[i].load = j
                    break
            if table[i].load >= 0:
                r.loads[table[i].load].listed = 1
        # An address out of the table counts no failure; back in, it starts over: Python's
        # member for it may be a new one (a backend given back an address it had), and
        # counting less than Python does is never wrong, only later (Python's own table
        # then takes it out).
        for j in range(r.n_loads):
            if not r.loads[j].listed:
                r.loads[j].failures, r.loads[j].tail, r.loads[j].out = 0, 0, 0
        j = 0
        for i in range(n):
            if table[i].load >= 0:
                continue
            while j < r.n_loads and (r.loads[j].listed or r.loads[j].active
                                     or r.loads[j].connecting):
                j += 1
            if j == r.n_loads:
                r.n_loads += 1  # room was made above
            table[i].load = j
            load = &r.loads[j]
            memset(load, 0, sizeof(Load))
            load.id = table[i].id
            memcpy(&load.addr, &table[i].addr, table[i].addr_len)
            load.addr_len = table[i].addr_len
            load.listed = 1
        free(r.backends)
        r.backends = table
        r.n_backends = n
        r.total_weight = total
        r.capped = capped
        if kind != r.balance:
            # A new balancer starts from its first pick, as RouteRuntime makes a new picker.
            r.rr_round, r.rr_last, r.lc_turn = 0, 0, 0
        r.balance = kind
        r.connect_timeout = connect_timeout
        r.idle_timeout = idle_timeout
        r.half_close_timeout = half_close_timeout
        r.max_attempts = max_attempts
        r.max_connections = max_connections
        r.splice = splice
        r.passive_fall = passive_fall
        r.try_all = try_all
        passive_changed(r)

    def passive_reset(self, int slot, long backend_id) -> None:
        """Python's count of the backend's connect failures in a row went back to 0 (a
        check passed, a cool-down ended): so does the engine's, but for the failures Python
        has not read yet, which it counts after this."""
        cdef Route *r
        cdef Load *load
        cdef int i
        pthread_mutex_lock(&self.lock)
        try:
            r = &self.routes[slot]
            for i in range(r.n_backends):
                if r.backends[i].id == backend_id:
                    load = &r.loads[r.backends[i].load]
                    load.failures = load.tail if load.tail_drain == self.drains else 0
                    load.out = r.passive_fall > 0 and load.failures >= r.passive_fall
                    passive_changed(r)
                    break  # ids are unique in a table
        finally:
            pthread_mutex_unlock(&self.lock)

    def set_limit(self, long limit, long app_limit=-1) -> None:
        """The caps on connections open at once: every route's, and each app's (-1: none).
        Both data planes count under them (``take``)."""
        pthread_mutex_lock(&self.lock)
        self.limit = limit
        self.app_limit = app_limit
        pthread_mutex_unlock(&self.lock)

    cdef int64_t *_app(self, str app):
        """The places counter of ``app`` (made at its first use, kept for the engine's life)."""
        cdef int index = self.app_ids.get(app, -1)
        cdef int64_t **grown
        if index < 0:
            grown = <int64_t **>realloc(self.apps, (self.n_apps + 1) * sizeof(int64_t *))
            if grown == NULL:
                raise MemoryError()
            self.apps = grown
            self.apps[self.n_apps] = <int64_t *>malloc(sizeof(int64_t))
            if self.apps[self.n_apps] == NULL:
                raise MemoryError()
            self.apps[self.n_apps][0] = 0
            index = self.n_apps
            self.n_apps += 1
            self.app_ids[app] = index
        return self.apps[index]

    def take(self, app) -> object:
        """A place under the node's caps for a client of the asyncio data plane (of ``app``;
        None: not known yet): None, or why it is refused ("node_limit", "app_limit")."""
        cdef int64_t *count = NULL if app is None else self._app(app)
        cdef int end = self.place(count)
        return None if end < 0 else ENDS[end]

    def give(self, app) -> None:
        """Give back a place ``take`` gave."""
        self.unplace(NULL if app is None else self._app(app))

    @property
    def places(self) -> int:
        """Places taken, by both data planes."""
        return restcp_add(&self.taken, 0)

    cdef int place(self, int64_t *app_count) noexcept nogil:
        """Take a place (the node's, and the app's if not NULL): -1, or the refusal's end.
        Each count is raised first and checked after, so two takers racing for the last
        place may both be refused, never both let in."""
        if restcp_add(&self.taken, 1) > self.limit >= 0:
            restcp_add(&self.taken, -1)
            return E_NODE_LIMIT
        if app_count != NULL and restcp_add(app_count, 1) > self.app_limit >= 0:
            restcp_add(app_count, -1)
            restcp_add(&self.taken, -1)
            return E_APP_LIMIT
        return -1

    cdef void unplace(self, int64_t *app_count) noexcept nogil:
        restcp_add(&self.taken, -1)
        if app_count != NULL:
            restcp_add(app_count, -1)

    def unlisten(self, int slot) -> None:
        """Accept no more on the route's socket (the caller closes it or hands it on); its
        open connections go on."""
        cdef Route *r
        pthread_mutex_lock(&self.lock)
        r = &self.routes[slot]
        if r.listen_fd >= 0:
            epoll_ctl(self.epfd, EPOLL_CTL_DEL, r.listen_fd, NULL)
            r.listen_fd = -1
            r.gen += 1
        pthread_mutex_unlock(&self.lock)

    def retire(self, int slot) -> None:
        """The route is gone (its open connections go on, and are still recorded)."""
        self.unlisten(slot)
        pthread_mutex_lock(&self.lock)
        self.routes[slot].used = 0
        pthread_mutex_unlock(&self.lock)

    def abort(self, int slot=-1, long backend_id=-1, str reason="aborted") -> None:
        """Reset now every open connection of route ``slot`` (-1: of every route), or of
        its backend ``backend_id`` only; ``reason``, one of ENDS, is their end."""
        cdef int i
        cdef int end = ENDS.index(reason)
        cdef Conn *c
        pthread_mutex_lock(&self.lock)
        for i in range(self.n_conns):
            c = &self.conns[i]
            if c.state != S_FREE and (slot < 0 or c.route == slot) \
                    and (backend_id < 0 or c.backend_id == backend_id):
                self.finish(i, end)
        pthread_mutex_unlock(&self.lock)
        self._notify()

    def bulk(self, int slot) -> int:
        """Every relaying connection of route ``slot`` that may splice splices both ways from
        their next reads, as after a read that fills CHUNK (the tests use it rather than
        depend on the sizes of the kernel's reads). How many connections."""
        cdef int i, count = 0
        cdef Conn *c
        pthread_mutex_lock(&self.lock)
        for i in range(self.n_conns):
            c = &self.conns[i]
            if c.state == S_RELAY and c.route == slot and c.splice:
                c.up.splicing = c.down.splicing = c.spliced = 1
                c.up.smalls = c.down.smalls = 0
                count += 1
        pthread_mutex_unlock(&self.lock)
        return count

    def counters(self, int slot) -> tuple:
        """(accepted, active, bytes_up, bytes_down, connect_failures) of route ``slot``."""
        cdef Route *r
        pthread_mutex_lock(&self.lock)
        r = &self.routes[slot]
        result = (r.accepted, r.active, r.bytes_up, r.bytes_down, r.connect_failures)
        pthread_mutex_unlock(&self.lock)
        return result

    def resolved(self, int index, uint64_t token, int family=0, bytes packed=b"",
                 bint again=False, int err=0) -> bool:
        """Python's answer to an E_RESOLVE record (its ``index`` and ``token``): connect to
        ``packed`` (a struct sockaddr of ``family``), or, family 0, the name did not resolve
        (with ``err``; Python logged it and counted it towards the backend's health, as the
        engine does): the next backend.
        ``again``: the backend left the table before its name was asked; the attempt is not
        counted, and the balancer picks again from the (new) table. False if the attempt is
        over (timed out, the client gone): nothing was done."""
        cdef Conn *c
        cdef sockaddr_storage addr
        cdef socklen_t addr_len = len(packed)
        if family != 0 and (addr_len < sizeof(sockaddr) or addr_len > sizeof(addr)):
            raise ValueError(f"bad sockaddr of {addr_len} bytes")
        if family != 0:
            memcpy(&addr, <char *>packed, addr_len)
        pthread_mutex_lock(&self.lock)
        try:
            if index < 0 or index >= self.n_conns:
                return False
            c = &self.conns[index]
            if c.state != S_CONNECTING or not c.resolving or c.gen != <uint32_t>(token >> 32) \
                    or c.tries != <int>(token & 0xFFFFFFFF):
                return False
            c.resolving = 0
            if family == 0:
                if again:
                    # Not an attempt: its backend left the table before the name was asked.
                    self.routes[c.route].loads[c.load].connecting -= 1
                    c.load = -1
                    c.tries -= 1
                else:
                    self.routes[c.route].connect_failures += 1
                    self.attempt_failed(c, err, True)
                self.connect_next(index)
            else:
                err = self.start_connect(index, <sockaddr *>&addr, addr_len)
                if err:
                    self.attempt_failed(c, err)
                    self.connect_next(index)
        finally:
            pthread_mutex_unlock(&self.lock)
        self._notify()  # what it recorded (a failed connect, a client let go)
        return True

    def loads(self, int slot) -> list:
        """[(backend id, sockaddr bytes, open connections, connects in flight)] of route
        ``slot``: each address of its table, then each other still counting connections."""
        cdef Route *r
        cdef Load *load
        cdef int j
        out = []
        pthread_mutex_lock(&self.lock)
        try:
            r = &self.routes[slot]
            for j in range(r.n_backends):
                load = &r.loads[r.backends[j].load]
                out.append((load.id, (<char *>&load.addr)[:load.addr_len], load.active,
                            load.connecting))
            for j in range(r.n_loads):
                load = &r.loads[j]
                if not load.listed and (load.active or load.connecting):
                    out.append((load.id, (<char *>&load.addr)[:load.addr_len], load.active,
                                load.connecting))
        finally:
            pthread_mutex_unlock(&self.lock)
        return out

    @property
    def active(self) -> int:
        """Open connections, every route's."""
        return self.live

    @property
    def sweeps(self) -> int:
        """How many timeout sweeps the loop has run."""
        return self.n_sweeps

    def drain_live(self) -> tuple:
        """``drain``'s records, and at the same instant what the records do not count yet:
        [(slot, backend id, bytes up, bytes down)] of every relayed connection still open,
        and [(slot, the most clients it had open at once)] of every slot served."""
        cdef int i
        cdef Conn *c
        pthread_mutex_lock(&self.lock)
        try:
            records = self._drain()
            live = []
            for i in range(self.n_conns):
                c = &self.conns[i]
                if c.state == S_RELAY:
                    live.append((c.route, c.backend_id, c.bytes_up, c.bytes_down))
            peaks = [(i, self.routes[i].active_max) for i in range(self.n_routes)]
        finally:
            pthread_mutex_unlock(&self.lock)
        return records, live, peaks

    def handoff(self, int slot) -> tuple:
        """Let go of route ``slot``'s open connections without closing them, for the asyncio
        data plane to adopt (the route moved there: ``unlisten`` or ``retire`` it first).
        ``drain``'s records, read under the same lock, so that each handed connection's
        "connected" record is read before it; then the relaying connections, [(client fd,
        backend fd, bytes held up, bytes held down, up (eof, shut), down (eof, shut),
        bytes_up, bytes_down, backend id, peer sockaddr bytes, age, idle for, half-closed
        for or -1, spliced)]; then the connections still connecting, [(client fd, peer
        sockaddr bytes, age)].

        A relaying connection leaves the engine as if it had never been accepted here: both
        fds out of the epoll set, what it held (its buffer, its pipe's bytes read out, the
        pipe closed) handed over, its address's and route's open counts lowered, and no
        record (it has not ended). Its place under the node's caps goes with it: the asyncio
        side gives it back when the connection ends (``give``). A connection still
        connecting has its attempt dropped (the backend socket closed: no byte went to it)
        and its place given back; the client is handed over as a new one, for the asyncio
        data plane to admit and connect itself. A relaying connection whose pipes' bytes
        find no memory to be read into stays on the engine."""
        cdef int i, k, n, got
        cdef Conn *c
        cdef Route *r
        cdef Direction *d
        cdef char *bufs[2]
        cdef double t
        pthread_mutex_lock(&self.lock)
        try:
            records = self._drain()
            relaying = []
            connecting = []
            r = &self.routes[slot]
            for i in range(self.n_conns):
                c = &self.conns[i]
                if c.state == S_FREE or c.route != slot:
                    continue
                bufs[0] = bufs[1] = NULL
                if c.state == S_RELAY and (c.up.in_pipe > 0 or c.down.in_pipe > 0):
                    # Room for its pipes' bytes first: without it, it stays on the engine.
                    bufs[0] = <char *>malloc(c.up.in_pipe + 1)
                    bufs[1] = <char *>malloc(c.down.in_pipe + 1)
                    if bufs[0] == NULL or bufs[1] == NULL:
                        free(bufs[0])
                        free(bufs[1])
                        continue
                epoll_ctl(self.epfd, EPOLL_CTL_DEL, c.client, NULL)
                if c.backend >= 0:
                    epoll_ctl(self.epfd, EPOLL_CTL_DEL, c.backend, NULL)
                t = now()
                if c.state == S_RELAY:
                    held = []
                    for k in range(2):
                        d = &c.up if k == 0 else &c.down
                        data = b""
                        if d.pending != NULL:
                            data = d.pending[d.off:d.length]
                        if d.in_pipe > 0:
                            # The pipe's bytes, read out. A direction reads (into its pipe)
                            # only when its buffer is empty: the buffer's bytes come first.
                            n = 0
                            while n < d.in_pipe:
                                got = <int>read(d.pipe_r, bufs[k] + n, d.in_pipe - n)
                                if got <= 0:
                                    break
                                n += got
                            data += bufs[k][:n]
                        held.append(data)
                    free(bufs[0])
                    free(bufs[1])
                    relaying.append((
                        c.client, c.backend, held[0], held[1],
                        (c.up.eof != 0, c.up.shut != 0), (c.down.eof != 0, c.down.shut != 0),
                        c.bytes_up, c.bytes_down, c.backend_id,
                        (<char *>&c.peer)[:c.peer_len],
                        t - c.started, t - c.last,
                        t - c.half_since if c.half_since else -1.0,
                        c.spliced != 0,
                        self.unlisted_addr(c),
                    ))
                    if not c.placed:
                        # Never so (a relaying client was placed at its accept); the asyncio
                        # side gives a place back when it ends, so it takes one here.
                        restcp_add(&self.taken, 1)
                        if r.app_count != NULL:
                            restcp_add(r.app_count, 1)
                    if c.load >= 0:
                        r.loads[c.load].active -= 1
                else:
                    connecting.append((c.client, (<char *>&c.peer)[:c.peer_len], t - c.started))
                    if c.backend >= 0:
                        close(c.backend)
                    if c.load >= 0:
                        r.loads[c.load].connecting -= 1
                    if c.placed:
                        self.unplace(c.app_count)
                self.release(i)
        finally:
            pthread_mutex_unlock(&self.lock)
        return records, relaying, connecting

    cdef object unlisted_addr(self, Conn *c):
        """The address ``c`` is connected to if its backend no longer has it, else None."""
        cdef sockaddr_storage addr
        cdef socklen_t addr_len
        if c.load < 0 or self.routes[c.route].loads[c.load].listed:
            return None
        self.unlisted(c, &addr, &addr_len)
        return (<char *>&addr)[:addr_len]

    cdef void release(self, int index) noexcept nogil:
        """Free connection ``index``'s slot without closing its sockets (``handoff``): its
        buffers and pipes go, and the route counts it open no more."""
        cdef Conn *c = &self.conns[index]
        free(c.up.pending)
        free(c.down.pending)
        close_pipe(&c.up)
        close_pipe(&c.down)
        free(c.tried)
        self.routes[c.route].active -= 1
        self.free_slot(index)

    cdef inline void free_slot(self, int index) noexcept nogil:
        """Connection ``index``'s slot back on the free list, once what it held is freed
        (``finish`` and ``release``): a later event of its old generation finds none."""
        cdef Conn *c = &self.conns[index]
        c.state = S_FREE
        c.gen += 1
        c.client = -1
        c.backend = -1
        c.up.pending = NULL
        c.down.pending = NULL
        c.tried = NULL
        c.resolving = 0
        c.load = -1
        c.next_free = self.free_head
        self.free_head = index
        self.live -= 1

    def drain(self) -> list:
        """The records of connections ended since the last drain: [(slot, backend_id or
        None, peer sockaddr bytes, bytes_up, bytes_down, duration, end, spliced,
        connected, replaced)]; ``connected``: the record also stands for the connection's
        "connected" one, which was not drained before it ended; ``replaced``: the sockaddr
        it was connected to, if its backend no longer has that address (else None)."""
        pthread_mutex_lock(&self.lock)
        try:
            return self._drain()
        finally:
            pthread_mutex_unlock(&self.lock)

    cdef list _drain(self):
        """The records (the lock held)."""
        cdef uint64_t value
        cdef int i
        cdef Record *rec
        read(self.notify_fd_, &value, 8)
        out = []
        for i in range(self.n_records):
            rec = &self.records[i]
            if rec.end == E_FOLDED:
                continue
            out.append((
                rec.route,
                None if rec.backend_id < 0 else rec.backend_id,
                (<char *>&rec.peer)[:rec.peer_len],
                rec.bytes_up,
                rec.bytes_down,
                rec.duration,
                ENDS[rec.end],
                rec.spliced != 0,
                rec.connected != 0,
                (<char *>&rec.backend_addr)[:rec.backend_addr_len]
                if rec.backend_addr_len else None,
            ))
        self.n_records = 0
        self.drains += 1
        return out

    def stop(self) -> None:
        """Make ``run`` return (the caller joins its thread, then calls ``abort``)."""
        self.stopping = 1
        self._wake()

    def _wake(self) -> None:
        cdef uint64_t one = 1
        write(self.wake_fd, &one, 8)

    cdef void _notify(self) noexcept nogil:
        cdef uint64_t one = 1
        write(self.notify_fd_, &one, 8)

    # ---- the loop --------------------------------------------------------------------------

    def run(self) -> None:
        """The loop: returns after ``stop``. Run it in a thread of its own."""
        with nogil:
            self.loop()

    cdef void loop(self) noexcept nogil:
        cdef epoll_event events[MAX_EVENTS]
        cdef int n, i, kind, index, ended
        cdef uint32_t gen
        cdef uint64_t data, drained
        cdef double last_sweep = now(), t
        cdef int wait = -1
        while not self.stopping:
            n = epoll_wait(self.epfd, events, MAX_EVENTS, wait)
            if n < 0 and errno != EINTR:
                break
            pthread_mutex_lock(&self.lock)
            ended = self.n_records
            for i in range(n if n > 0 else 0):
                data = events[i].data.u64
                kind = <int>(data & 3)
                index = <int>((data >> 2) & 0x3FFFFFFF)
                gen = <uint32_t>(data >> 32)
                if kind == K_WAKE:
                    read(self.wake_fd, &drained, 8)
                elif kind == K_LISTEN:
                    if index < self.n_routes and self.routes[index].gen == gen \
                            and self.routes[index].listen_fd >= 0:
                        self.accept_all(index)
                elif index < self.n_conns and self.conns[index].gen == gen \
                        and self.conns[index].state != S_FREE:
                    self.on_event(index, kind == K_CLIENT, events[i].events)
            t = now()
            if (self.retries or t >= self.due) and t - last_sweep >= SWEEP / 1000.0:
                last_sweep = t
                if t >= self.due:
                    self.sweep(t)
                if self.retries:
                    self.retry_accepts()
            if self.n_records != ended:
                self._notify()
            wait = self.next_wait(t, last_sweep)
            pthread_mutex_unlock(&self.lock)

    cdef int next_wait(self, double t, double last_sweep) noexcept nogil:
        """How long epoll_wait may wait (ms; -1: until an event): until the next sweep, which
        runs once a timeout may be due or an accept waits for its retry, and never sooner
        than SWEEP after the last one (``t``: the time the loop read last). Idle connections
        with far deadlines wake nothing."""
        cdef double at = last_sweep + SWEEP / 1000.0
        cdef double wait
        if not self.retries:
            if self.due == INFINITY:
                return -1
            if self.due > at:
                at = self.due
        wait = ceil((at - t) * 1000.0)
        return 0 if wait < 0 else <int>wait if wait < 3600000 else 3600000

    cdef inline void soon(self, double when) noexcept nogil:
        """A timeout may be due at ``when``: the sweep runs then if not before."""
        if when < self.due:
            self.due = when

    cdef void accept_all(self, int slot) noexcept nogil:
        cdef Route *r = &self.routes[slot]
        cdef sockaddr_storage peer
        cdef socklen_t peer_len
        cdef int fd, index, end
        cdef Conn *c
        cdef epoll_event ev
        while True:
            peer_len = sizeof(peer)
            fd = accept4(r.listen_fd, <sockaddr *>&peer, &peer_len, SOCK_NONBLOCK | SOCK_CLOEXEC)
            if fd < 0:
                if errno == EINTR:
                    continue
                if errno == EMFILE or errno == ENFILE or errno == ENOBUFS or errno == ENOMEM:
                    # Out of descriptors: the clients wait in the backlog, and no new edge
                    # may come; the sweep tries again (every SWEEP ms, as asyncio's 100).
                    if not r.retry:
                        r.retry = 1
                        self.retries += 1
                    if not r.paused:
                        r.paused = 1
                        self.route_record(slot, E_ACCEPT_PAUSED, errno)
                return  # EAGAIN: until the next edge
            if r.paused:
                r.paused = 0
                self.route_record(slot, E_ACCEPT_RESUMED, 0)
            index = self.new_conn()
            if index < 0:
                hard_close(fd)
                continue
            c = &self.conns[index]
            c.client = fd
            c.route = slot
            c.splice = r.splice
            memcpy(&c.peer, &peer, peer_len)
            c.peer_len = peer_len
            c.started = now()
            c.last = c.started
            r.accepted += 1
            r.active += 1
            # TCP_NODELAY comes from the listening socket (add_route): no call per client.
            ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET
            ev.data.u64 = tag(K_CLIENT, index, c.gen)
            epoll_ctl(self.epfd, EPOLL_CTL_ADD, fd, &ev)
            # The route's cap counts the other connections (this one is counted already);
            # the node's and the app's, places taken by either data plane.
            if r.max_connections >= 0 and <int64_t>r.active > r.max_connections:
                self.finish(index, E_ROUTE_LIMIT)
                continue
            end = self.place(r.app_count)
            if end >= 0:
                self.finish(index, end)
                continue
            c.placed = 1
            c.app_count = r.app_count
            if r.active > r.active_max:
                r.active_max = r.active
            self.connect_next(index)  # none to pick: closed, end=no_backend

    cdef int new_conn(self) noexcept nogil:
        cdef int index, size, i
        cdef Conn *grown
        if self.free_head < 0:
            size = self.n_conns * 2 if self.n_conns else 64
            grown = <Conn *>realloc(self.conns, size * sizeof(Conn))
            if grown == NULL:
                return -1
            self.conns = grown
            for i in range(self.n_conns, size):
                memset(&self.conns[i], 0, sizeof(Conn))
                self.conns[i].next_free = i + 1 if i + 1 < size else -1
            self.free_head = self.n_conns
            self.n_conns = size
        index = self.free_head
        self.free_head = self.conns[index].next_free
        cdef uint32_t gen = self.conns[index].gen + 1
        memset(&self.conns[index], 0, sizeof(Conn))
        self.conns[index].gen = gen
        self.conns[index].state = S_CONNECTING
        self.conns[index].backend = -1
        self.conns[index].backend_id = -1
        self.conns[index].up.pipe_r = self.conns[index].up.pipe_w = -1
        self.conns[index].down.pipe_r = self.conns[index].down.pipe_w = -1
        self.conns[index].load = -1
        self.live += 1
        return index

    cdef void connect_next(self, int index) noexcept nogil:
        """Connect to the backend the route's balancer picks, the ones tried for this client
        excluded (RouteRuntime.pick), up to max_attempts; none left: the client is closed."""
        cdef Conn *c = &self.conns[index]
        cdef Route *r = &self.routes[c.route]
        cdef Backend *b
        cdef Record *rec
        cdef int row, err, key_len = 0
        cdef char key[64]
        if r.balance == B_SOURCE_HASH:
            key_len = peer_text(&c.peer, key)
        while c.tries < r.max_attempts:
            row = choose(r, c.tried, c.tries, key, key_len, &self.rng)
            if row < 0:
                break
            b = &r.backends[row]
            c.tries += 1
            c.backend_id = b.id
            c.proxy = b.proxy
            c.load = b.load
            r.loads[c.load].connecting += 1
            # The deadline covers a host name's resolution too, as on asyncio.
            c.deadline = now() + r.connect_timeout
            self.soon(c.deadline)
            if b.family == 0:
                # A host name: resolved by Python at each connect (never cached, so that
                # the address policy judges what it points to now). The record asks; the
                # answer comes through ``resolved``, or the sweep times the attempt out.
                c.resolving = 1
                if self.record(c, E_RESOLVE, 0):
                    rec = &self.records[self.n_records - 1]
                    rec.bytes_up = <uint64_t>index
                    rec.bytes_down = (<uint64_t>c.gen << 32) | <uint64_t>c.tries
                return
            err = self.start_connect(index, <sockaddr *>&b.addr, b.addr_len)
            if err == 0:
                return
            self.attempt_failed(c, err)
        self.finish(index, E_NO_BACKEND)  # as the asyncio pipes: a graceful close

    cdef int start_connect(self, int index, sockaddr *addr, socklen_t addr_len) noexcept nogil:
        """A non-blocking connect of connection ``index`` to ``addr``: 0 once it is under
        way, else the errno it failed with at once (recorded: the caller tries the next
        backend)."""
        cdef Conn *c = &self.conns[index]
        cdef Route *r = &self.routes[c.route]
        cdef int fd, rc, err, one = 1
        cdef epoll_event ev
        fd = socket(addr.sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)
        if fd < 0:
            err = errno
            self.record(c, E_CONNECT_ERROR, err)
            r.connect_failures += 1
            return err
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one))
        rc = connect(fd, addr, addr_len)
        if rc < 0 and errno != EINPROGRESS:
            err = errno
            self.record(c, E_CONNECT_ERROR, err)
            close(fd)
            r.connect_failures += 1
            return err
        c.backend = fd
        ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET
        ev.data.u64 = tag(K_BACKEND, index, c.gen)
        epoll_ctl(self.epfd, EPOLL_CTL_ADD, fd, &ev)
        return 0

    cdef void attempt_failed(self, Conn *c, int err, bint told=False) noexcept nogil:
        """The connect to ``c.backend_id`` failed with ``err`` (0: timed out): its address
        counts it out and towards its passive health, and the next pick excludes it.
        ``told``: Python counted it already (a name it could not resolve), not at a drain."""
        cdef Route *r = &self.routes[c.route]
        cdef Load *load = &r.loads[c.load]
        cdef int64_t *tried = <int64_t *>realloc(c.tried, c.tries * sizeof(int64_t))
        load.connecting -= 1
        c.load = -1
        # As RouteRuntime.connect_failed: not an address the backend no longer has, nor this
        # node running short of descriptors or buffers (sockets.OUT_OF_RESOURCES).
        if load.listed and err != EMFILE and err != ENFILE and err != ENOBUFS \
                and err != ENOMEM:
            if load.tail_drain != self.drains:
                load.tail, load.tail_drain = 0, self.drains
            if not told:
                load.tail += 1
            load.failures += 1
            if r.passive_fall and load.failures >= r.passive_fall and not load.out:
                load.out = 1
                passive_changed(r)
        if tried == NULL:
            c.tries = r.max_attempts  # out of memory: no failover rather than a wrong one
            return
        c.tried = tried
        tried[c.tries - 1] = c.backend_id

    cdef void connect_failed(self, int index, int err) noexcept nogil:
        cdef Conn *c = &self.conns[index]
        self.record(c, E_CONNECT_ERROR, err)
        if c.backend >= 0:
            close(c.backend)  # closing drops it from the epoll set
        c.backend = -1
        c.resolving = 0  # a late answer finds the attempt over (``resolved``)
        self.routes[c.route].connect_failures += 1
        self.attempt_failed(c, err)
        self.connect_next(index)

    cdef void on_event(self, int index, bint client, uint32_t events) noexcept nogil:
        cdef Conn *c = &self.conns[index]
        cdef int err = 0
        cdef socklen_t err_len = sizeof(err)
        cdef int end
        cdef Load *load
        if events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR):
            # Its peer's FIN (or a reset) is in the socket: a short read no longer means
            # there is nothing more to read (``move``). Noted whatever the state, as an
            # edge is not repeated.
            if client:
                c.up.hup = 1
            else:
                c.down.hup = 1
        if c.state == S_CONNECTING:
            if client:
                return  # the client's bytes wait in its socket until the backend is up
            if events & (EPOLLERR | EPOLLHUP):
                getsockopt(c.backend, SOL_SOCKET, SO_ERROR, &err, &err_len)
                self.connect_failed(index, err)
                return
            if not events & EPOLLOUT:
                return
            # Writable without an error: connected (no SO_ERROR to read).
            c.state = S_RELAY
            c.last = now()
            if self.routes[c.route].idle_timeout > 0:
                self.soon(c.last + self.routes[c.route].idle_timeout)
            if c.splice == 1:
                # Spliced from its connect, as the asyncio pipes do a "splice": true route's.
                c.up.splicing = c.down.splicing = c.spliced = 1
            load = &self.routes[c.route].loads[c.load]
            load.connecting -= 1
            load.active += 1
            # RouteRuntime.connected: the run of failures of the backend's current address
            # ends (none counts while the address is out of the table; with no failure in
            # the run, none counts since the last drain either).
            if load.failures:
                load.failures, load.tail = 0, 0
            if self.record(c, E_CONNECTED, 0):
                c.connected_at = self.n_records
                c.connected_drain = self.drains
            if c.proxy:
                # Before any client byte: the header waits in the up direction's buffer, so
                # that a backend whose buffer takes part of it gets the rest first (flow
                # control as for relayed bytes, which it is not counted among).
                if self.queue_header(c) < 0:
                    self.finish(index, E_ABORTED)  # out of memory: no client byte goes bare
                    return
            # The client's bytes may have waited (their edge came while connecting); the
            # backend's banner, only if it came with this edge (a later one has its own).
            end = self.move(c, &c.up, c.client, c.backend, 1)
            if end < 0 and events & (EPOLLIN | EPOLLRDHUP):
                end = self.move(c, &c.down, c.backend, c.client, 0)
        else:
            # Any readiness is activity for the idle timeout: bytes to read, or a peer that
            # took some of what waited for it (a slow reader draining is not idle).
            c.last = now()
            end = -1
            if events & EPOLLERR and self.failed(c.client if client else c.backend):
                # A reset after that side's FIN: no read of it would see it any more.
                end = E_CLIENT_RESET if client else E_BACKEND_RESET
            elif client:
                # readable: the client's bytes go up; writable: the backend's bytes that
                # waited for room (without them nothing waits for the client's buffer)
                if events & (EPOLLIN | EPOLLRDHUP | EPOLLERR | EPOLLHUP):
                    end = self.move(c, &c.up, c.client, c.backend, 1)
                if end < 0 and holding(&c.down) \
                        and events & (EPOLLOUT | EPOLLERR | EPOLLHUP):
                    end = self.move(c, &c.down, c.backend, c.client, 0)
            else:
                if events & (EPOLLIN | EPOLLRDHUP | EPOLLERR | EPOLLHUP):
                    end = self.move(c, &c.down, c.backend, c.client, 0)
                if end < 0 and holding(&c.up) \
                        and events & (EPOLLOUT | EPOLLERR | EPOLLHUP):
                    end = self.move(c, &c.up, c.client, c.backend, 1)
        if end >= 0:
            self.finish(index, end)
        elif c.up.shut and c.down.shut:
            self.finish(index, E_CLOSED)
        elif (c.up.shut or c.down.shut) and c.half_since == 0:
            c.half_since = now()
            if self.routes[c.route].half_close_timeout > 0:
                self.soon(c.half_since + self.routes[c.route].half_close_timeout)

    cdef int queue_header(self, Conn *c) noexcept nogil:
        cdef sockaddr_storage local
        cdef socklen_t local_len = sizeof(local)
        cdef char header[HEADER_MAX]
        cdef int n
        if getsockname(c.client, <sockaddr *>&local, &local_len) < 0:
            local.ss_family = 0  # unknown: PROXY UNKNOWN, or a v2 LOCAL header
        n = build_header(c.proxy, &c.peer, &local, header)
        c.up.pending = <char *>malloc(n)
        if c.up.pending == NULL:
            return -1
        memcpy(c.up.pending, header, n)
        c.up.off = 0
        c.up.length = n
        return 0

    cdef bint failed(self, int fd) noexcept nogil:
        cdef int err = 0
        cdef socklen_t err_len = sizeof(err)
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &err_len)
        return err != 0

    cdef int move(self, Conn *c, Direction *d, int src, int dst, bint up) noexcept nogil:
        """Relay ``src`` to ``dst`` until one would block: -1, or why the connection ends
        (a reset: of the reading side, or of the writing one)."""
        cdef ssize_t n, m
        cdef int src_reset = E_CLIENT_RESET if up else E_BACKEND_RESET
        cdef int dst_reset = E_BACKEND_RESET if up else E_CLIENT_RESET
        cdef int fds[2]
        while True:
            # Out first: what waits makes room for what comes in.
            if d.pending != NULL:
                m = send(dst, d.pending + d.off, d.length - d.off, MSG_NOSIGNAL)
                if m < 0:
                    if errno == EAGAIN or errno == EINTR:
                        return -1
                    return dst_reset
                d.off += <int>m
                if d.off < d.length:
                    continue
                free(d.pending)
                d.pending = NULL
            if d.in_pipe:
                m = splice(d.pipe_r, NULL, dst, NULL, d.in_pipe,
                           SPLICE_F_MOVE | SPLICE_F_NONBLOCK)
                if m < 0:
                    if errno == EAGAIN or errno == EINTR:
                        return -1  # EPOLLOUT of dst brings it back here
                    return dst_reset
                d.in_pipe -= <int>m
                if d.in_pipe:
                    continue
            if d.eof:
                if not d.shut:
                    # The other way is done too: the connection ends (on_event), and its
                    # close() sends this FIN (what ``dst`` sent was read to its end, so the
                    # close is no reset). HAProxy saves the call the same way.
                    if not (c.up.shut if not up else c.down.shut):
                        shutdown(dst, SHUT_WR)
                    d.shut = 1
                return -1
            if d.splicing and not d.unspliceable:
                if d.pipe_r < 0:
                    if pipe2(fds, O_NONBLOCK | O_CLOEXEC) == 0:
                        d.pipe_r = fds[0]
                        d.pipe_w = fds[1]
                if d.pipe_r >= 0:
                    # Into an empty pipe (nothing is read while it holds bytes): EAGAIN
                    # means an empty socket.
                    n = splice(src, NULL, d.pipe_w, NULL, PIPE_ROOM,
                               SPLICE_F_MOVE | SPLICE_F_NONBLOCK)
                    if n < 0:
                        if errno == EAGAIN or errno == EINTR:
                            return -1
                        if errno != EINVAL and errno != ENOSYS:
                            return src_reset
                        # Not a socket the kernel splices from: copy from now on.
                        d.unspliceable = 1
                        close_pipe(d)
                    elif n == 0:
                        d.eof = 1
                        continue
                    else:
                        if up:
                            c.bytes_up += n
                        else:
                            c.bytes_down += n
                        d.in_pipe = <int>n
                        if n >= SMALL:
                            d.smalls = 0
                        else:
                            d.smalls += 1
                            if d.smalls >= SMALL_RUN:
                                # Chatty: a read and a write cost less than a splice in, a
                                # splice out and an EAGAIN. It splices again at bulk.
                                d.splicing = 0
                                d.smalls = 0
                        continue
                # No pipe to be had (out of descriptors), or no splicing from this socket:
                # this read is copied.
            n = recv(src, self.scratch, CHUNK, 0)
            if n < 0:
                if errno == EAGAIN or errno == EINTR:
                    return -1
                return src_reset
            if n == 0:
                d.eof = 1
                continue
            if up:
                c.bytes_up += n
            else:
                c.bytes_down += n
            if n == CHUNK and c.splice and not d.unspliceable:
                # Bulk (a read that fills the buffer): splice from the next read on.
                d.splicing = 1
                d.smalls = 0
                c.spliced = 1
            m = send(dst, self.scratch, n, MSG_NOSIGNAL)
            if m < 0:
                if errno != EAGAIN and errno != EINTR:
                    return dst_reset
                m = 0
            if m < n:
                d.pending = <char *>malloc(n - m)
                memcpy(d.pending, self.scratch + m, n - m)
                d.off = 0
                d.length = <int>(n - m)
            elif n < CHUNK and not d.hup:
                # A short read emptied the socket (a TCP read takes all that is queued, up
                # to its size), and no FIN waits behind it: the next bytes bring an edge of
                # their own. Reading again would only find EAGAIN: a call per burst saved,
                # as HAProxy does.
                return -1

    cdef bint record(self, Conn *c, int end, int err) noexcept nogil:
        cdef Record *rec
        cdef Record *grown
        if self.n_records == self.cap_records:
            grown = <Record *>realloc(
                self.records, (self.cap_records * 2 if self.cap_records else 256) * sizeof(Record)
            )
            if grown == NULL:
                return 0  # out of memory: this record is lost, not the connection
            self.records = grown
            self.cap_records = self.cap_records * 2 if self.cap_records else 256
        rec = &self.records[self.n_records]
        self.n_records += 1
        rec.route = c.route
        rec.backend_id = c.backend_id
        rec.bytes_up = c.bytes_up if end != E_CONNECT_ERROR else <uint64_t>err
        rec.bytes_down = c.bytes_down
        rec.duration = now() - c.started
        rec.end = end
        rec.spliced = c.spliced
        rec.connected = 0
        memcpy(&rec.peer, &c.peer, c.peer_len)
        rec.peer_len = c.peer_len
        rec.backend_addr_len = 0
        if c.load >= 0 and not self.routes[c.route].loads[c.load].listed:
            self.unlisted(c, &rec.backend_addr, &rec.backend_addr_len)
        return 1

    cdef inline void unlisted(self, Conn *c, sockaddr_storage *addr,
                              socklen_t *addr_len) noexcept nogil:
        """The address ``c`` is connected to, that its backend no longer has."""
        cdef Load *load = &self.routes[c.route].loads[c.load]
        memcpy(addr, &load.addr, load.addr_len)
        addr_len[0] = load.addr_len

    cdef void retry_accepts(self) noexcept nogil:
        cdef int i
        for i in range(self.n_routes):
            if self.routes[i].retry:
                self.routes[i].retry = 0
                self.retries -= 1
                if self.routes[i].listen_fd >= 0:
                    self.accept_all(i)

    cdef void route_record(self, int slot, int end, int err) noexcept nogil:
        """A record of the route itself (no connection): its accepts paused or resumed."""
        cdef Conn blank
        memset(&blank, 0, sizeof(Conn))
        blank.route = slot
        blank.backend_id = -1
        blank.load = -1
        blank.started = now()
        blank.bytes_up = <uint64_t>err
        self.record(&blank, end, err)

    cdef void sweep(self, double t) noexcept nogil:
        """End (or fail over) what is past its timeout, and work out when the next one is
        due: the earliest deadline of what is left open."""
        cdef int i
        cdef Conn *c
        cdef Route *r
        self.due = INFINITY
        self.n_sweeps += 1
        for i in range(self.n_conns):
            c = &self.conns[i]
            if c.state == S_FREE:
                continue
            r = &self.routes[c.route]
            if c.state == S_CONNECTING:
                if c.backend >= 0 or c.resolving:
                    if t >= c.deadline:
                        self.connect_failed(i, 0)  # a next attempt sets its own deadline
                    else:
                        self.soon(c.deadline)
                continue
            if c.half_since and r.half_close_timeout > 0:
                if t - c.half_since >= r.half_close_timeout:
                    self.finish(i, E_HALF_CLOSE)
                    continue
                self.soon(c.half_since + r.half_close_timeout)
            if r.idle_timeout > 0:  # 0: no idle timeout
                if t - c.last >= r.idle_timeout:
                    self.finish(i, E_IDLE)
                    continue
                self.soon(c.last + r.idle_timeout)

    cdef void finish(self, int index, int end) noexcept nogil:
        """Close both sides (reset them unless the connection ended cleanly), and record it."""
        cdef Conn *c = &self.conns[index]
        cdef Route *r = &self.routes[c.route]
        # A reset is passed on as one, and so is a failed connect (as the asyncio pipes do);
        # a timeout closes gracefully unless bytes are stuck for a peer that stopped reading.
        cdef int reset = not (
            end == E_CLOSED or end == E_NO_BACKEND
            or ((end == E_IDLE or end == E_HALF_CLOSE)
                and not holding(&c.up) and not holding(&c.down))
        )
        if c.client >= 0:
            if reset:
                hard_close(c.client)
            else:
                close(c.client)
        if c.backend >= 0:
            if reset:
                hard_close(c.backend)
            else:
                close(c.backend)
        free(c.up.pending)
        free(c.down.pending)
        if c.placed:
            self.unplace(c.app_count)
        close_pipe(&c.up)
        close_pipe(&c.down)
        free(c.tried)
        if c.load >= 0:
            if c.state == S_RELAY:
                r.loads[c.load].active -= 1
            else:
                r.loads[c.load].connecting -= 1
        r.active -= 1
        r.bytes_up += c.bytes_up
        r.bytes_down += c.bytes_down
        if c.state != S_RELAY:
            c.backend_id = -1
        if self.record(c, end, 0) and c.connected_at and c.connected_drain == self.drains:
            self.records[c.connected_at - 1].end = E_FOLDED
            self.records[self.n_records - 1].connected = 1
        self.free_slot(index)
