// FUSE over io_uring (kernel 6.14 and later, CONFIG_FUSE_IO_URING, fuse.enable_uring=Y): the kernel
// hands requests to per-CPU queues of buffers the daemon registered with IORING_OP_URING_CMD on
// /dev/fuse, and takes each answer back with the command that also asks for the next request
// (COMMIT_AND_FETCH). A request then costs one io_uring_enter instead of a read and a write, and is
// served on the CPU that made it.
//
// How it fits libfuse 3.14, which knows nothing of it:
// - INIT still comes through /dev/fuse. When the kernel offers FUSE_OVER_IO_URING and the mount asks
//   for it, vx_init chooses the ring (splice off: a reply must be bytes we can copy into the ring),
//   the back-port's INIT hook calls vx_uring_prepare with the agreed sizes before the reply leaves
//   (threads, rings and buffers exist before the kernel is told; on any failure it is not told), adds
//   the flag, and calls vx_uring_start once the reply is written. From the flag on, the kernel holds
//   every request until each CPU's queue has a registered buffer, or a registration fails (then it
//   goes back to /dev/fuse: nothing is lost either way).
// - Each ring thread owns one io_uring and one entry (a 288-byte header and a payload buffer) of the
//   queue of one CPU, and serves the requests that land there one at a time, like a worker of
//   libfuse's loop: it rebuilds the request as /dev/fuse would have delivered it (in-header, the
//   operation's header and the payload, contiguous: the payload buffer has head room for the two
//   headers, so the payload is never copied) and gives it to fuse_session_process_buf. libfuse's
//   reply reaches the custom I/O's writev (backport_7_40.c), which passes it to vx_uring_reply: a
//   reply to a ring request is copied into the entry and committed with the next wait, anything
//   else (notifications, replies to requests read from /dev/fuse) goes to the device.
// - FORGET and INTERRUPT keep coming through /dev/fuse (the kernel sends them there), so libfuse's
//   loop keeps running beside the rings; so do the passthrough ioctls, on the device descriptor.
// - Unmount: the kernel ends every registered command with ENOTCONN, and the threads return.
// - A stop signal: each ring polls the session's exit descriptor (session.h), so each thread ends
//   once its request is answered, as libfuse's workers do, while the mount is still there (requests
//   that reach the rings after that are failed by the kernel when the device closes at unmount).
//   vx_uring_stop (after the loop) makes it readable too, and joins the threads.
//
// Names from protocol 7.42 that the system's <linux/fuse.h> (7.38) lacks are spelled out below,
// checked against the kernel's uapi header.
#define _GNU_SOURCE
#include "session.h"
#include <errno.h>
#include <liburing.h>
#include <linux/fuse.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

// The commands, in the SQE's cmd_op, and the 80 bytes of command area of a 128-byte SQE.
#define VX_URING_CMD_REGISTER 1
#define VX_URING_CMD_COMMIT_AND_FETCH 2
struct vx_uring_cmd {
    uint64_t flags;
    uint64_t commit_id;  // the unique of the request answered
    uint16_t qid;
    uint8_t padding[6];
};
// The header buffer the kernel fills with each request and reads each answer from.
struct vx_uring_header {
    char in_out[128];  // fuse_in_header going to us, fuse_out_header coming back
    char op_in[128];   // the operation's own header (fuse_open_in, fuse_write_in, ...)
    struct {
        uint64_t flags;
        uint64_t commit_id;
        uint32_t payload_sz;  // bytes of payload, both ways
        uint32_t padding;
        uint64_t reserved;
    } ent;
};
_Static_assert(sizeof(struct vx_uring_header) == 288, "fuse_uring_req_header");
_Static_assert(sizeof(struct vx_uring_cmd) == 24, "fuse_uring_cmd_req");

// Room in front of the payload for the in-header and the operation's header, so that the request
// lies contiguous in memory as libfuse expects; a page keeps the payload page-aligned.
#define VX_HEADROOM 4096
#define VX_STOP_TAG 1  // user_data of the exit descriptor's poll; the entry's commands carry 0

struct vx_ring_entry {
    struct vexfs_session *s;
    struct io_uring ring;
    int ring_ready;
    unsigned qid;
    pthread_t thread;
    struct vx_uring_header *header;
    char *buffer;  // VX_HEADROOM, then the payload
    size_t payload_size;
    struct iovec iov[2];
    // The request being served (its unique), 0 between requests; a reply with this unique is ours.
    _Atomic uint64_t unique;
    // A reply given on another thread than the entry's (libfuse allows it; vexfs does not do it
    // today): it is copied in there, and the entry's thread, waiting here, commits it.
    pthread_mutex_t handoff_lock;
    pthread_cond_t handoff;
    int committed;  // guarded by handoff_lock
};

struct vx_uring {
    unsigned queues, per_queue, count;
    size_t payload_size;
    struct vx_ring_entry *entries;
    // Threads report setup (ring and buffers) here, then wait for `go` before they register.
    pthread_mutex_t lock;
    pthread_cond_t changed;
    unsigned set_up, failed;
    int go;  // 1: register, -1: give up
    int failure;  // the first setup errno
};

static __thread struct vx_ring_entry *vx_serving;

static const char *vx_transport_reasons[] = {
    [VEXFS_TRANSPORT_URING] = "io_uring",
    [VEXFS_TRANSPORT_NOT_ASKED] = "/dev/fuse: turned off by -o no_io_uring",
    [VEXFS_TRANSPORT_NOT_OFFERED] = "/dev/fuse: the kernel does not offer io_uring (older than 6.14, built without "
                                    "CONFIG_FUSE_IO_URING, or /sys/module/fuse/parameters/enable_uring is N)",
    [VEXFS_TRANSPORT_SETUP_FAILED] = "/dev/fuse: the rings could not be set up",
    [VEXFS_TRANSPORT_REFUSED] = "/dev/fuse: the kernel refused to register the rings",
    [VEXFS_TRANSPORT_DATA_THROUGH_DAEMON] = "/dev/fuse: file data goes through the daemon (no passthrough), "
                                            "which splice reads faster; -o io_uring chooses the rings",
};

const char *vexfs_transport_reason(int state) {
    if (state < 0 || state > VEXFS_TRANSPORT_DATA_THROUGH_DAEMON) return "unknown";
    return vx_transport_reasons[state];
}

// MARK: the ring threads

static void vx_prep_cmd(struct vx_ring_entry *e, struct io_uring_sqe *sqe, unsigned op, uint64_t commit_id) {
    memset(sqe, 0, 128);
    sqe->opcode = IORING_OP_URING_CMD;
    sqe->fd = fuse_session_fd(e->s->se);
    sqe->cmd_op = op;
    sqe->addr = (uint64_t)(uintptr_t)e->iov;
    sqe->len = 2;
    sqe->user_data = 0;
    struct vx_uring_cmd *cmd = (struct vx_uring_cmd *)sqe->cmd;
    cmd->commit_id = commit_id;
    cmd->qid = (uint16_t)e->qid;
}

// Copies a reply into the entry; the caller commits it. Too long for the payload (cannot happen
// with the sizes agreed at INIT) turns into EIO rather than a cut answer.
static void vx_fill_reply(struct vx_ring_entry *e, const struct iovec *iov, int count) {
    struct fuse_out_header out;
    memcpy(&out, iov[0].iov_base, sizeof out);
    size_t total = 0;
    for (int i = 1; i < count; i++) total += iov[i].iov_len;
    if (total > e->payload_size) {
        out.error = -EIO;
        total = 0;
    } else {
        size_t at = 0;
        for (int i = 1; i < count; i++) {
            memcpy(e->buffer + VX_HEADROOM + at, iov[i].iov_base, iov[i].iov_len);
            at += iov[i].iov_len;
        }
    }
    out.len = (uint32_t)(sizeof out + total);
    memcpy(e->header->in_out, &out, sizeof out);
    e->header->ent.payload_sz = (uint32_t)total;
}

static int vx_queue_commit(struct vx_ring_entry *e, uint64_t unique) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(&e->ring);
    if (!sqe) return -EBUSY;  // one command in flight per ring: cannot happen
    vx_prep_cmd(e, sqe, VX_URING_CMD_COMMIT_AND_FETCH, unique);
    return 0;
}

// One request from the entry's buffers, handed to libfuse as /dev/fuse would have delivered it.
static void vx_serve(struct vx_ring_entry *e) {
    struct fuse_in_header in;
    memcpy(&in, e->header->in_out, sizeof in);
    uint32_t payload = e->header->ent.payload_sz;
    // The operation's header is what the length leaves after the in-header and the payload.
    size_t op = in.len >= sizeof in + payload ? in.len - sizeof in - payload : SIZE_MAX;
    if (op > sizeof e->header->op_in || payload > e->payload_size) {
        // Not a request the kernel makes: answered with EIO so that its caller does not hang.
        struct fuse_out_header out = {.len = sizeof out, .error = -EIO, .unique = in.unique};
        struct iovec iov = {.iov_base = &out, .iov_len = sizeof out};
        vx_fill_reply(e, &iov, 1);
        vx_queue_commit(e, in.unique);
        return;
    }
    char *start = e->buffer + VX_HEADROOM - op - sizeof in;
    memcpy(start, &in, sizeof in);
    memcpy(start + sizeof in, e->header->op_in, op);
    pthread_mutex_lock(&e->handoff_lock);
    e->committed = 0;
    pthread_mutex_unlock(&e->handoff_lock);
    atomic_store(&e->unique, in.unique);
    size_t len = vx_request_in(e->s, start, in.len, (size_t)(e->buffer + VX_HEADROOM + e->payload_size - start));
    struct fuse_buf buf = {.size = len, .mem = start};
    vx_serving = e;
    fuse_session_process_buf(e->s->se, &buf);
    vx_serving = NULL;
    // Answered on this thread: the commit is queued. Otherwise wait for the thread that answers.
    pthread_mutex_lock(&e->handoff_lock);
    while (!e->committed) pthread_cond_wait(&e->handoff, &e->handoff_lock);
    pthread_mutex_unlock(&e->handoff_lock);
}

static void vx_report(struct vx_uring *u, int error) {
    pthread_mutex_lock(&u->lock);
    if (error) {
        u->failed++;
        if (!u->failure) u->failure = error;
    } else {
        u->set_up++;
    }
    pthread_cond_broadcast(&u->changed);
    pthread_mutex_unlock(&u->lock);
}

static int vx_setup_entry(struct vx_ring_entry *e, int exit_fd) {
    struct io_uring_params params = {.flags = IORING_SETUP_SQE128 | IORING_SETUP_SINGLE_ISSUER |
                                              IORING_SETUP_DEFER_TASKRUN};
    int r = io_uring_queue_init_params(4, &e->ring, &params);
    if (r < 0) return -r;
    e->ring_ready = 1;
    e->header = aligned_alloc(64, sizeof *e->header);
    e->buffer = mmap(NULL, VX_HEADROOM + e->payload_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (e->buffer == MAP_FAILED) e->buffer = NULL;
    if (!e->header || !e->buffer) return ENOMEM;
    memset(e->header, 0, sizeof *e->header);
    e->iov[0] = (struct iovec){.iov_base = e->header, .iov_len = sizeof *e->header};
    e->iov[1] = (struct iovec){.iov_base = e->buffer + VX_HEADROOM, .iov_len = e->payload_size};
    // The end of the session: a poll on its exit descriptor, armed for the thread's life.
    struct io_uring_sqe *sqe = io_uring_get_sqe(&e->ring);
    if (!sqe) return ENOMEM;
    io_uring_prep_poll_add(sqe, exit_fd, POLLIN);
    sqe->user_data = VX_STOP_TAG;
    return 0;
}

static void *vx_ring_thread(void *arg) {
    struct vx_ring_entry *e = arg;
    struct vx_uring *u = e->s->uring;
    // On the CPU whose queue this is (best effort: a CPU may be offline, or outside our cpuset).
    cpu_set_t cpus;
    CPU_ZERO(&cpus);
    CPU_SET(e->qid, &cpus);
    (void)sched_setaffinity(0, sizeof cpus, &cpus);
    vx_report(u, vx_setup_entry(e, e->s->exit_fd));
    pthread_mutex_lock(&u->lock);
    while (!u->go) pthread_cond_wait(&u->changed, &u->lock);
    int go = u->go;
    pthread_mutex_unlock(&u->lock);
    if (go < 0) return NULL;

    struct io_uring_sqe *sqe = io_uring_get_sqe(&e->ring);
    if (!sqe) return NULL;
    vx_prep_cmd(e, sqe, VX_URING_CMD_REGISTER, 0);
    for (;;) {
        struct io_uring_cqe *cqe;
        int r = io_uring_submit_and_wait(&e->ring, 1);
        if (r == -EINTR) continue;
        if (r < 0) break;
        if (io_uring_peek_cqe(&e->ring, &cqe) != 0) continue;
        uint64_t tag = cqe->user_data;
        int res = cqe->res;
        io_uring_cqe_seen(&e->ring, cqe);
        if (tag == VX_STOP_TAG) break;
        if (res == -EINTR || res == -EAGAIN) {
            // Not taken: ask again (the entry is still ours).
            sqe = io_uring_get_sqe(&e->ring);
            if (!sqe) break;
            vx_prep_cmd(e, sqe, VX_URING_CMD_REGISTER, 0);
            continue;
        }
        if (res < 0) {
            // ENOTCONN: unmounted or aborted. Anything else on the first registration: the kernel
            // went back to /dev/fuse (it says so once in its log), and so does the stats line.
            if (res != -ENOTCONN) {
                int expected = VEXFS_TRANSPORT_URING;
                atomic_compare_exchange_strong(&e->s->transport, &expected, VEXFS_TRANSPORT_REFUSED);
            }
            break;
        }
        vx_serve(e);
    }
    return NULL;
}

// MARK: the interface to the custom I/O

int vx_uring_reply(struct vexfs_session *s, const struct iovec *iov, int count) {
    struct vx_uring *u = s->uring;
    if (!u || count < 1 || iov[0].iov_len < sizeof(struct fuse_out_header)) return 0;
    uint64_t unique = ((const struct fuse_out_header *)iov[0].iov_base)->unique;
    if (unique == 0) return 0;  // a notification: the device's
    struct vx_ring_entry *e = vx_serving;
    if (e && atomic_load(&e->unique) == unique) {
        atomic_store(&e->unique, 0);
        vx_fill_reply(e, iov, count);
        vx_queue_commit(e, unique);
        e->committed = 1;  // the entry's own thread: no one waits on the lock
        return 1;
    }
    for (unsigned i = 0; i < u->count; i++) {
        e = &u->entries[i];
        uint64_t expected = unique;
        if (!atomic_compare_exchange_strong(&e->unique, &expected, 0)) continue;
        pthread_mutex_lock(&e->handoff_lock);
        vx_fill_reply(e, iov, count);
        vx_queue_commit(e, unique);
        e->committed = 1;
        pthread_cond_signal(&e->handoff);
        pthread_mutex_unlock(&e->handoff_lock);
        return 1;
    }
    return 0;
}

static unsigned vx_possible_cpus(void) {
    // The kernel makes one queue per possible CPU and serves none until all have an entry.
    long n = sysconf(_SC_NPROCESSORS_CONF);
    FILE *f = fopen("/sys/devices/system/cpu/possible", "re");
    if (f) {
        unsigned lo, hi;
        char line[64];
        if (fgets(line, sizeof line, f)) {
            // "0-N", or "0"; a list with holes keeps the sysconf figure unless it says more.
            char *last = strrchr(line, ',');
            const char *range = last ? last + 1 : line;
            if (sscanf(range, "%u-%u", &lo, &hi) == 2 && (long)hi + 1 > n) n = (long)hi + 1;
            else if (sscanf(range, "%u", &lo) == 1 && (long)lo + 1 > n) n = (long)lo + 1;
        }
        fclose(f);
    }
    return n > 0 ? (unsigned)n : 1;
}

static void vx_uring_free(struct vx_uring *u) {
    for (unsigned i = 0; i < u->count; i++) {
        struct vx_ring_entry *e = &u->entries[i];
        if (e->ring_ready) io_uring_queue_exit(&e->ring);
        free(e->header);
        if (e->buffer) munmap(e->buffer, VX_HEADROOM + e->payload_size);
        pthread_mutex_destroy(&e->handoff_lock);
        pthread_cond_destroy(&e->handoff);
    }
    free(u->entries);
    free(u);
}

static void vx_release_threads(struct vx_uring *u, int go) {
    pthread_mutex_lock(&u->lock);
    u->go = go;
    pthread_cond_broadcast(&u->changed);
    pthread_mutex_unlock(&u->lock);
}

int vx_uring_prepare(struct vexfs_session *s, size_t payload_size) {
    struct vx_uring *u = calloc(1, sizeof *u);
    if (!u) return ENOMEM;
    u->queues = vx_possible_cpus();
    unsigned threads = s->config.max_threads ? s->config.max_threads : 10;  // libfuse's default
    u->per_queue = threads / u->queues ? threads / u->queues : 1;
    u->payload_size = payload_size;
    pthread_mutex_init(&u->lock, NULL);
    pthread_cond_init(&u->changed, NULL);
    u->entries = calloc((size_t)u->queues * u->per_queue, sizeof *u->entries);
    if (!u->entries) {
        vx_uring_free(u);
        return ENOMEM;
    }
    s->uring = u;
    // The threads take libfuse's worker stack size (FUSE_THREAD_STACK) and block every signal, as
    // libfuse's workers do: signals are the main thread's.
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    const char *stack = getenv("FUSE_THREAD_STACK");
    if (stack) pthread_attr_setstacksize(&attr, (size_t)strtoul(stack, NULL, 10));
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int error = 0;
    for (unsigned q = 0; q < u->queues && !error; q++) {
        for (unsigned k = 0; k < u->per_queue && !error; k++) {
            struct vx_ring_entry *e = &u->entries[u->count];
            e->s = s;
            e->qid = q;
            e->payload_size = payload_size;
            pthread_mutex_init(&e->handoff_lock, NULL);
            pthread_cond_init(&e->handoff, NULL);
            error = pthread_create(&e->thread, &attr, vx_ring_thread, e);
            if (!error) u->count++;
        }
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);
    pthread_mutex_lock(&u->lock);
    while (u->set_up + u->failed < u->count) pthread_cond_wait(&u->changed, &u->lock);
    if (!error && u->failed) error = u->failure;
    pthread_mutex_unlock(&u->lock);
    if (error) {
        vx_release_threads(u, -1);
        for (unsigned i = 0; i < u->count; i++) pthread_join(u->entries[i].thread, NULL);
        s->uring = NULL;
        vx_uring_free(u);
        return error;
    }
    return 0;
}

void vx_uring_start(struct vexfs_session *s, int init_sent) {
    struct vx_uring *u = s->uring;
    if (!u) return;
    vx_release_threads(u, init_sent ? 1 : -1);
    if (!init_sent) {
        for (unsigned i = 0; i < u->count; i++) pthread_join(u->entries[i].thread, NULL);
        s->uring = NULL;
        vx_uring_free(u);
    }
}

void vx_uring_stop(struct vexfs_session *s) {
    struct vx_uring *u = s->uring;
    if (!u) return;
    uint64_t one = 1;
    if (write(s->exit_fd, &one, sizeof one) != sizeof one) { /* readable already: enough */ }
    for (unsigned i = 0; i < u->count; i++) pthread_join(u->entries[i].thread, NULL);
    s->uring = NULL;
    vx_uring_free(u);
}
