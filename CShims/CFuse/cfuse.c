// Trampolines from libfuse's low-level ops to the Swift handler table, plus session plumbing.
// Nothing here knows what vexfs does with a request.
#define _GNU_SOURCE
#include "session.h"
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

// Under FUSE_POSIX_ACL the kernel sends the caller's umask with create, mkdir and mknod instead of
// applying it, because a default ACL on the parent replaces it. The store's filesystem makes that
// choice itself, from the creating thread's umask; so each worker thread gets its own umask
// (unshare(CLONE_FS), once per thread) and takes the caller's for the duration of the call.
static __thread int vx_thread_has_own_umask;

static int vx_own_umask(void) {
    if (!vx_thread_has_own_umask && unshare(CLONE_FS) == 0) vx_thread_has_own_umask = 1;
    return vx_thread_has_own_umask;
}

// libfuse passes our userdata to every request; the session pointer is reached through it.
static inline const struct vexfs_handlers *H(fuse_req_t req) {
    return &((struct vexfs_session *)fuse_req_userdata(req))->handlers;
}

// Whether this process may register backing files: the kernel asks for CAP_SYS_ADMIN.
static int vx_has_sys_admin(void) {
    struct __user_cap_header_struct header = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    struct __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3];
    if (syscall(SYS_capget, &header, data) != 0) return 0;
    return (data[CAP_SYS_ADMIN / 32].effective >> (CAP_SYS_ADMIN % 32)) & 1;
}

static const char *vx_passthrough_reasons[] = {
    [VEXFS_PASSTHROUGH_ON] = "on",
    [VEXFS_PASSTHROUGH_NOT_ASKED] = "turned off by -o no_passthrough",
    [VEXFS_PASSTHROUGH_NOT_OFFERED] = "the kernel does not offer it (older than 6.9, or built without FUSE passthrough)",
    [VEXFS_PASSTHROUGH_NO_PRIVILEGE] = "the daemon lacks CAP_SYS_ADMIN",
    [VEXFS_PASSTHROUGH_WRITEBACK] = "-o writeback was chosen, and the kernel cannot do both",
    [VEXFS_PASSTHROUGH_REFUSED] = "the kernel refused to register a backing file",
};

const char *vexfs_passthrough_reason(int state) {
    if (state < 0 || state > VEXFS_PASSTHROUGH_REFUSED) return "unknown";
    return vx_passthrough_reasons[state];
}

static void vx_init(void *data, struct fuse_conn_info *conn) {
    struct vexfs_session *s = data;
    if (s->config.writeback && (conn->capable & FUSE_CAP_WRITEBACK_CACHE))
        conn->want |= FUSE_CAP_WRITEBACK_CACHE;
    // Passthrough: the kernel reads and writes open files itself. Decided once, said once.
    int passthrough = VEXFS_PASSTHROUGH_ON;
    if (!s->config.passthrough) passthrough = VEXFS_PASSTHROUGH_NOT_ASKED;
    else if (!atomic_load(&s->kernel_offers_passthrough)) passthrough = VEXFS_PASSTHROUGH_NOT_OFFERED;  // seen by the back-port
    else if (conn->want & FUSE_CAP_WRITEBACK_CACHE) passthrough = VEXFS_PASSTHROUGH_WRITEBACK;
    else if (!vx_has_sys_admin()) passthrough = VEXFS_PASSTHROUGH_NO_PRIVILEGE;
    atomic_store(&s->passthrough, passthrough);
    // ACLs: cached and enforced by the kernel (with default_permissions), stored on the backing files.
    // With them the kernel sends modes unmasked (FUSE_DONT_MASK), for a default ACL to replace the
    // umask as on a local filesystem; the workers apply the caller's umask (see above).
    if (s->config.posix_acl && (conn->capable & FUSE_CAP_POSIX_ACL) && (conn->capable & FUSE_CAP_DONT_MASK) &&
        vx_own_umask()) {
        conn->want |= FUSE_CAP_POSIX_ACL | FUSE_CAP_DONT_MASK;
        atomic_store(&s->posix_acl, 1);
    }
    if (s->handlers.negotiated) s->handlers.negotiated(s->userdata, passthrough);
    if (conn->capable & FUSE_CAP_PARALLEL_DIROPS)
        conn->want |= FUSE_CAP_PARALLEL_DIROPS;
    if (conn->capable & FUSE_CAP_ASYNC_DIO)
        conn->want |= FUSE_CAP_ASYNC_DIO;
    // FUSE over io_uring where the kernel offers it (uring.c); the INIT reply asks for it.
    int transport = VEXFS_TRANSPORT_URING;
    if (!s->config.io_uring) transport = VEXFS_TRANSPORT_NOT_ASKED;
    else if (!atomic_load(&s->kernel_offers_uring)) transport = VEXFS_TRANSPORT_NOT_OFFERED;  // seen by the back-port
    else if (s->config.io_uring == VEXFS_IO_URING_WITH_PASSTHROUGH && passthrough != VEXFS_PASSTHROUGH_ON)
        transport = VEXFS_TRANSPORT_DATA_THROUGH_DAEMON;
    atomic_store(&s->transport, transport);
    // flock(2) stays with the kernel: when the filesystem takes it over, the kernel releases a lock
    // only in the asynchronous RELEASE after close(2), so a close-then-lock sequence could still
    // find it held. Kept in the kernel, locks behave as on a local filesystem for every user of the
    // mount (all access to the store goes through it). On a shared store other machines' users lock
    // the same files, so there it goes to the backing file, where the distributed filesystem
    // arbitrates (Handlers.flock waits out that RELEASE).
    if (s->config.flock_locks && transport != VEXFS_TRANSPORT_URING && (conn->capable & FUSE_CAP_FLOCK_LOCKS))
        conn->want |= FUSE_CAP_FLOCK_LOCKS;
    else
        conn->want &= ~FUSE_CAP_FLOCK_LOCKS;
    // Splice moves pages between a pipe and /dev/fuse; a ring's answer is bytes copied into its
    // buffer, so with a ring libfuse must make every answer in memory.
    if (s->config.splice && transport != VEXFS_TRANSPORT_URING) {
        conn->want |= conn->capable & (FUSE_CAP_SPLICE_READ | FUSE_CAP_SPLICE_WRITE | FUSE_CAP_SPLICE_MOVE);
    } else {
        conn->want &= ~(FUSE_CAP_SPLICE_READ | FUSE_CAP_SPLICE_WRITE | FUSE_CAP_SPLICE_MOVE);
    }
    // chattr(1) and lsattr(1) on directories too (Handlers.ioctl).
    if (conn->capable & FUSE_CAP_IOCTL_DIR)
        conn->want |= FUSE_CAP_IOCTL_DIR;
    // File handles that outlive the kernel's cache: it may ask LOOKUP of "." and ".." (Handlers).
    if (conn->capable & FUSE_CAP_EXPORT_SUPPORT)
        conn->want |= FUSE_CAP_EXPORT_SUPPORT;
    // Directory entries come with attributes when `ls -l` wants them, names only otherwise.
    if (conn->capable & FUSE_CAP_READDIRPLUS)
        conn->want |= FUSE_CAP_READDIRPLUS | FUSE_CAP_READDIRPLUS_AUTO;
}

static void vx_destroy(void *data) {
    struct vexfs_session *s = data;
    if (s->handlers.destroy) s->handlers.destroy(s->userdata);
}

#define FWD(op, ...) H(req)->op(req, __VA_ARGS__)

static void vx_lookup(fuse_req_t req, fuse_ino_t p, const char *n) { FWD(lookup, p, n); }
static void vx_forget(fuse_req_t req, fuse_ino_t i, uint64_t n) { FWD(forget, i, n); }
static void vx_forget_multi(fuse_req_t req, size_t c, struct fuse_forget_data *f) { FWD(forget_multi, c, f); }
static void vx_getattr(fuse_req_t req, fuse_ino_t i, struct fuse_file_info *fi) {
    if (vx_statx_take(i)) FWD(statx, i, fi);  // a STATX rewritten on its way in (statx.c)
    else FWD(getattr, i, fi);
}
static void vx_setattr(fuse_req_t req, fuse_ino_t i, struct stat *a, int s, struct fuse_file_info *fi) {
    FWD(setattr, i, a, s, fi);
}
static void vx_readlink(fuse_req_t req, fuse_ino_t i) { H(req)->readlink(req, i); }
static void vx_mknod(fuse_req_t req, fuse_ino_t p, const char *n, mode_t m, dev_t r) { FWD(mknod, p, n, m, r); }
static void vx_mkdir(fuse_req_t req, fuse_ino_t p, const char *n, mode_t m) { FWD(mkdir, p, n, m); }
static void vx_unlink(fuse_req_t req, fuse_ino_t p, const char *n) { FWD(unlink, p, n); }
static void vx_rmdir(fuse_req_t req, fuse_ino_t p, const char *n) { FWD(rmdir, p, n); }
static void vx_symlink(fuse_req_t req, const char *l, fuse_ino_t p, const char *n) { FWD(symlink, l, p, n); }
static void vx_rename(fuse_req_t req, fuse_ino_t p, const char *n, fuse_ino_t np, const char *nn,
                      unsigned int f) {
    FWD(rename, p, n, np, nn, f);
}
static void vx_link(fuse_req_t req, fuse_ino_t i, fuse_ino_t np, const char *nn) { FWD(link, i, np, nn); }
static void vx_open(fuse_req_t req, fuse_ino_t i, struct fuse_file_info *fi) { FWD(open, i, fi); }
static void vx_read(fuse_req_t req, fuse_ino_t i, size_t s, off_t o, struct fuse_file_info *fi) {
    FWD(read, i, s, o, fi);
}
static void vx_write_buf(fuse_req_t req, fuse_ino_t i, struct fuse_bufvec *b, off_t o, struct fuse_file_info *fi) {
    FWD(write_buf, i, b, o, fi);
}
static void vx_flush(fuse_req_t req, fuse_ino_t i, struct fuse_file_info *fi) { FWD(flush, i, fi); }
static void vx_release(fuse_req_t req, fuse_ino_t i, struct fuse_file_info *fi) { FWD(release, i, fi); }
static void vx_flock_op(fuse_req_t req, fuse_ino_t i, struct fuse_file_info *fi, int op) { FWD(flock, i, fi, op); }
static void vx_fsync(fuse_req_t req, fuse_ino_t i, int d, struct fuse_file_info *fi) { FWD(fsync, i, d, fi); }
static void vx_opendir(fuse_req_t req, fuse_ino_t i, struct fuse_file_info *fi) { FWD(opendir, i, fi); }
static void vx_readdir(fuse_req_t req, fuse_ino_t i, size_t s, off_t o, struct fuse_file_info *fi) {
    FWD(readdir, i, s, o, fi);
}
static void vx_readdirplus(fuse_req_t req, fuse_ino_t i, size_t s, off_t o, struct fuse_file_info *fi) {
    FWD(readdirplus, i, s, o, fi);
}
static void vx_releasedir(fuse_req_t req, fuse_ino_t i, struct fuse_file_info *fi) { FWD(releasedir, i, fi); }
static void vx_fsyncdir(fuse_req_t req, fuse_ino_t i, int d, struct fuse_file_info *fi) { FWD(fsyncdir, i, d, fi); }
static void vx_statfs(fuse_req_t req, fuse_ino_t i) { H(req)->statfs(req, i); }
static void vx_setxattr(fuse_req_t req, fuse_ino_t i, const char *n, const char *v, size_t s, int f) {
    FWD(setxattr, i, n, v, s, f);
}
static void vx_getxattr(fuse_req_t req, fuse_ino_t i, const char *n, size_t s) { FWD(getxattr, i, n, s); }
static void vx_listxattr(fuse_req_t req, fuse_ino_t i, size_t s) { FWD(listxattr, i, s); }
static void vx_removexattr(fuse_req_t req, fuse_ino_t i, const char *n) { FWD(removexattr, i, n); }
static void vx_access(fuse_req_t req, fuse_ino_t i, int m) { FWD(access, i, m); }
static void vx_create(fuse_req_t req, fuse_ino_t p, const char *n, mode_t m, struct fuse_file_info *fi) {
    FWD(create, p, n, m, fi);
}
static void vx_fallocate(fuse_req_t req, fuse_ino_t i, int m, off_t o, off_t l, struct fuse_file_info *fi) {
    FWD(fallocate, i, m, o, l, fi);
}
static void vx_copy_file_range(fuse_req_t req, fuse_ino_t ii, off_t oi, struct fuse_file_info *fii,
                               fuse_ino_t io, off_t oo, struct fuse_file_info *fio, size_t len, int flags) {
    FWD(copy_file_range, ii, oi, fii, io, oo, fio, len, flags);
}
static void vx_lseek(fuse_req_t req, fuse_ino_t i, off_t o, int w, struct fuse_file_info *fi) { FWD(lseek, i, o, w, fi); }
static void vx_ioctl(fuse_req_t req, fuse_ino_t i, unsigned int cmd, void *arg, struct fuse_file_info *fi, unsigned flags,
                     const void *in, size_t in_size, size_t out_size) {
    FWD(ioctl, i, cmd, arg, fi, flags, in, in_size, out_size);
}

static const struct fuse_lowlevel_ops vx_ops = {
    .init = vx_init,
    .destroy = vx_destroy,
    .lookup = vx_lookup,
    .forget = vx_forget,
    .forget_multi = vx_forget_multi,
    .getattr = vx_getattr,
    .setattr = vx_setattr,
    .readlink = vx_readlink,
    .mknod = vx_mknod,
    .mkdir = vx_mkdir,
    .unlink = vx_unlink,
    .rmdir = vx_rmdir,
    .symlink = vx_symlink,
    .rename = vx_rename,
    .link = vx_link,
    .open = vx_open,
    .read = vx_read,
    .write_buf = vx_write_buf,
    .flush = vx_flush,
    .release = vx_release,
    .fsync = vx_fsync,
    .opendir = vx_opendir,
    .readdir = vx_readdir,
    .readdirplus = vx_readdirplus,
    .releasedir = vx_releasedir,
    .fsyncdir = vx_fsyncdir,
    .statfs = vx_statfs,
    .setxattr = vx_setxattr,
    .getxattr = vx_getxattr,
    .listxattr = vx_listxattr,
    .removexattr = vx_removexattr,
    .access = vx_access,
    .create = vx_create,
    .fallocate = vx_fallocate,
    .copy_file_range = vx_copy_file_range,
    .lseek = vx_lseek,
    .ioctl = vx_ioctl,
    .flock = vx_flock_op,
};

vexfs_session *vexfs_session_new(int argc, const char **argv, const struct vexfs_handlers *handlers,
                                 const struct vexfs_session_config *config, void *userdata) {
    struct vexfs_session *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->stop_fd = -1;
    s->exit_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (s->exit_fd < 0) { free(s); return NULL; }
    s->handlers = *handlers;
    s->config = *config;
    s->userdata = userdata;
    atomic_store(&s->transport, VEXFS_TRANSPORT_NOT_OFFERED);  // until INIT says
    // libfuse keeps pointers into args only during fuse_session_new; a copy of argv suffices.
    char **copy = calloc((size_t)argc + 1, sizeof(char *));
    if (!copy) { close(s->exit_fd); free(s); return NULL; }
    for (int i = 0; i < argc; i++) copy[i] = (char *)argv[i];
    struct fuse_args args = FUSE_ARGS_INIT(argc, copy);
    s->se = fuse_session_new(&args, &vx_ops, sizeof vx_ops, s);
    fuse_opt_free_args(&args);
    free(copy);
    if (!s->se) { close(s->exit_fd); free(s); return NULL; }
    return s;
}

int vexfs_session_mount(vexfs_session *s, const char *mountpoint) {
    if (fuse_session_mount(s->se, mountpoint) != 0) return -1;
    s->mounted = 1;
    // The device is open now; the back-port routes its traffic through the bridge to see INIT.
    if (vx_backport_watch_init(s) != 0) return -1;
    return 0;
}

int vexfs_req_killpriv_v2(fuse_req_t req) {
    return atomic_load(&((struct vexfs_session *)fuse_req_userdata(req))->killpriv_v2);
}

int vexfs_session_killpriv_v2(vexfs_session *s) { return atomic_load(&s->killpriv_v2); }
int vexfs_session_posix_acl(vexfs_session *s) { return atomic_load(&s->posix_acl); }
int vexfs_session_passthrough(vexfs_session *s) { return atomic_load(&s->passthrough); }
int vexfs_session_transport(vexfs_session *s) { return atomic_load(&s->transport); }
int vexfs_req_transport(fuse_req_t req) {
    return atomic_load(&((struct vexfs_session *)fuse_req_userdata(req))->transport);
}

int vexfs_req_posix_acl(fuse_req_t req) {
    return atomic_load(&((struct vexfs_session *)fuse_req_userdata(req))->posix_acl);
}

int vexfs_req_caller_umask_begin(fuse_req_t req) {
    if (!vexfs_req_posix_acl(req) || !vx_own_umask()) return 0;
    umask(fuse_req_ctx(req)->umask);
    return 1;
}

void vexfs_caller_umask_end(void) { umask(0); }

int vexfs_req_passthrough(fuse_req_t req) {
    return atomic_load(&((struct vexfs_session *)fuse_req_userdata(req))->passthrough);
}

int vexfs_req_passthrough_refused(fuse_req_t req) {
    struct vexfs_session *s = fuse_req_userdata(req);
    int expected = VEXFS_PASSTHROUGH_ON;
    return atomic_compare_exchange_strong(&s->passthrough, &expected, VEXFS_PASSTHROUGH_REFUSED);
}

int vexfs_req_invalidate_attributes(fuse_req_t req, fuse_ino_t ino) {
    // A negative offset invalidates the attributes alone, not the (unused) page cache.
    return fuse_lowlevel_notify_inval_inode(((struct vexfs_session *)fuse_req_userdata(req))->se, ino, -1, 0);
}

int vexfs_fi_is_direct_write(const struct fuse_file_info *fi) {
    return (fi->flags & O_DIRECT) && !fi->writepage;
}

int vexfs_req_invalidate_range(fuse_req_t req, fuse_ino_t ino, off_t off, off_t len) {
    return fuse_lowlevel_notify_inval_inode(((struct vexfs_session *)fuse_req_userdata(req))->se, ino, off, len);
}

// A stop signal first wakes whoever waits on the session's stop descriptor, then runs libfuse's own
// handler, which marks the session ended, and makes the session's exit descriptor readable. The
// loop returns only once every request in flight is answered, and a request may be waiting for long
// index work that must hear of the stop to give up. libfuse's handler alone does not end the loop:
// its thread sleeps until a worker leaves, and a worker leaves only after a request, or when the
// signal happens to interrupt that thread's sleep. Over io_uring no request may come through the
// device again, and the signal may be taken by any thread that does not block it; so the workers
// and the ring threads wait on the exit descriptor too (vx_wait_for_request, uring.c). A signal
// handler finds nothing but globals: these are all it needs.
static const int vx_stop_signals[] = {SIGHUP, SIGINT, SIGTERM};
static struct sigaction vx_libfuse_actions[3];
static int vx_stop_signal_fd = -1;
static int vx_exit_signal_fd = -1;

static void vx_on_stop_signal(int sig) {
    int saved = errno;
    uint64_t one = 1;
    if (vx_stop_signal_fd >= 0) (void)!write(vx_stop_signal_fd, &one, sizeof one);
    for (int i = 0; i < 3; i++) {
        void (*libfuse)(int) = vx_libfuse_actions[i].sa_handler;
        if (vx_stop_signals[i] == sig && libfuse != SIG_DFL && libfuse != SIG_IGN) libfuse(sig);
    }
    if (vx_exit_signal_fd >= 0) (void)!write(vx_exit_signal_fd, &one, sizeof one);
    errno = saved;
}

int vexfs_session_set_signal_handlers(vexfs_session *s) {
    if (fuse_set_signal_handlers(s->se) != 0) return -1;
    s->signals = 1;
    s->stop_fd = eventfd(0, EFD_CLOEXEC);
    if (s->stop_fd < 0) return -1;
    vx_stop_signal_fd = s->stop_fd;
    vx_exit_signal_fd = s->exit_fd;
    struct sigaction ours = {.sa_handler = vx_on_stop_signal};
    sigemptyset(&ours.sa_mask);
    for (int i = 0; i < 3; i++)
        if (sigaction(vx_stop_signals[i], &ours, &vx_libfuse_actions[i]) != 0) return -1;
    return 0;
}

int vexfs_session_stop_fd(vexfs_session *s) { return s->stop_fd; }

int vx_wait_for_request(struct vexfs_session *s, int fd) {
    struct pollfd wait[2] = {{.fd = fd, .events = POLLIN}, {.fd = s->exit_fd, .events = POLLIN}};
    if (poll(wait, 2, -1) < 0) {
        // Interrupted: libfuse's worker looks at the session again and comes back. Any other failure
        // leaves it to the read, which blocks as it did before there was an exit descriptor.
        return errno == EINTR ? 0 : 1;
    }
    if (!(wait[1].revents & POLLIN)) return 1;
    errno = ENODEV;
    return 0;
}

void vexfs_session_wake_stop_waiter(vexfs_session *s) {
    uint64_t one = 1;
    if (s->stop_fd >= 0) (void)!write(s->stop_fd, &one, sizeof one);
}

int vexfs_session_loop(vexfs_session *s) {
    struct fuse_loop_config *cfg = fuse_loop_cfg_create();
    if (!cfg) return -ENOMEM;
    fuse_loop_cfg_set_clone_fd(cfg, (unsigned)s->config.clone_fd);
    if (s->config.max_threads > 0) fuse_loop_cfg_set_max_threads(cfg, s->config.max_threads);
    int ret = fuse_session_loop_mt(s->se, cfg);
    fuse_loop_cfg_destroy(cfg);
    // The device is done; so are the rings (at unmount the kernel has ended their commands already).
    vx_uring_stop(s);
    return ret;
}

void vexfs_session_destroy(vexfs_session *s) {
    if (!s) return;
    vx_uring_stop(s);
    if (s->signals) {
        for (int i = 0; i < 3; i++) sigaction(vx_stop_signals[i], &vx_libfuse_actions[i], NULL);
        vx_stop_signal_fd = -1;
        vx_exit_signal_fd = -1;
        fuse_remove_signal_handlers(s->se);
    }
    if (s->stop_fd >= 0) close(s->stop_fd);
    close(s->exit_fd);
    if (s->mounted) fuse_session_unmount(s->se);
    fuse_session_destroy(s->se);
    free(s);
}

void *vexfs_req_context(fuse_req_t req) {
    return ((struct vexfs_session *)fuse_req_userdata(req))->userdata;
}

int vexfs_reply_read_fd(fuse_req_t req, int fd, size_t size, off_t off) {
    struct fuse_bufvec buf = FUSE_BUFVEC_INIT(size);
    buf.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
    buf.buf[0].fd = fd;
    buf.buf[0].pos = off;
    return fuse_reply_data(req, &buf, FUSE_BUF_SPLICE_MOVE);
}

ssize_t vexfs_write_bufvec_to_fd(struct fuse_bufvec *in, int fd, off_t off) {
    struct fuse_bufvec out = FUSE_BUFVEC_INIT(fuse_buf_size(in));
    out.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
    out.buf[0].fd = fd;
    out.buf[0].pos = off;
    return fuse_buf_copy(&out, in, 0);
}

void vexfs_fi_set_cache_dir(struct fuse_file_info *fi) {
    fi->cache_readdir = 1;
    fi->keep_cache = 1;
}

void vexfs_fi_set_open_flags(struct fuse_file_info *fi, int direct_io, int keep_cache, int noflush) {
    fi->direct_io = direct_io ? 1 : 0;
    fi->keep_cache = keep_cache ? 1 : 0;
    fi->noflush = noflush ? 1 : 0;
}
