// Trampolines from libfuse's low-level ops to the Swift handler table, plus session plumbing.
// Nothing here knows what vexfs does with a request.
#define _GNU_SOURCE
#include "cfuse.h"
#include <errno.h>
#include <fcntl.h>
#include <linux/fuse.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>
#include <linux/capability.h>
#include <sched.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

// FUSE passthrough (protocol 7.40, kernel 6.9) is newer than the system's <linux/fuse.h> (7.38) and
// than libfuse 3.14, so its few names are spelled out here, checked against the kernel's uapi header.
// INIT: FUSE_PASSTHROUGH is bit 37 of the flags, that is bit 5 of flags2; the reply also names the
// stack depth of the mount (fuse_init_out's u32 at byte 36, "unused[0]" in 7.38).
#define VX_FUSE_PASSTHROUGH_FLAGS2 (1u << 5)
// OPEN/CREATE reply: fuse_open_out's last field (7.38's "padding") is the backing id.
#define VX_FOPEN_PASSTHROUGH (1u << 7)
struct vx_open_out {
    uint64_t fh;
    uint32_t open_flags;
    int32_t backing_id;
};
// The /dev/fuse ioctls that register a backing file (CAP_SYS_ADMIN) and release it.
struct vx_backing_map {
    int32_t fd;
    uint32_t flags;
    uint64_t padding;
};
#define VX_FUSE_DEV_IOC_BACKING_OPEN _IOW(229, 1, struct vx_backing_map)
#define VX_FUSE_DEV_IOC_BACKING_CLOSE _IOW(229, 2, uint32_t)
_Static_assert(sizeof(struct vx_open_out) == sizeof(struct fuse_open_out), "fuse_open_out layout");
_Static_assert(offsetof(struct fuse_init_out, unused) == 36, "max_stack_depth sits at byte 36 of fuse_init_out");
_Static_assert(VX_FUSE_DEV_IOC_BACKING_OPEN == 0x4010e501, "FUSE_DEV_IOC_BACKING_OPEN");
_Static_assert(VX_FUSE_DEV_IOC_BACKING_CLOSE == 0x4004e502, "FUSE_DEV_IOC_BACKING_CLOSE");

struct vexfs_session {
    struct fuse_session *se;
    struct vexfs_handlers handlers;
    struct vexfs_session_config config;
    void *userdata;
    int mounted;
    int signals;
    // The INIT exchange, seen on the device (see "killpriv" below).
    _Atomic uint64_t init_unique;
    _Atomic int kernel_offers_killpriv_v2;
    _Atomic int killpriv_v2;
    _Atomic int kernel_offers_passthrough;
    // A vexfs_passthrough value: decided in init, applied to the INIT reply on the device.
    _Atomic int passthrough;
    // FUSE_POSIX_ACL was negotiated: the kernel caches and enforces ACLs, and leaves the umask to us.
    _Atomic int posix_acl;
};

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
    else if (!atomic_load(&s->kernel_offers_passthrough)) passthrough = VEXFS_PASSTHROUGH_NOT_OFFERED;
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
    // flock(2) stays with the kernel: when the filesystem takes it over, the kernel releases a lock
    // only in the asynchronous RELEASE after close(2), so a close-then-lock sequence could still
    // find it held. Kept in the kernel, locks behave as on a local filesystem for every user of the
    // mount (all access to the store goes through it).
    conn->want &= ~FUSE_CAP_FLOCK_LOCKS;
    if (conn->capable & FUSE_CAP_PARALLEL_DIROPS)
        conn->want |= FUSE_CAP_PARALLEL_DIROPS;
    if (conn->capable & FUSE_CAP_ASYNC_DIO)
        conn->want |= FUSE_CAP_ASYNC_DIO;
    if (s->config.splice) {
        conn->want |= conn->capable & (FUSE_CAP_SPLICE_READ | FUSE_CAP_SPLICE_WRITE | FUSE_CAP_SPLICE_MOVE);
    } else {
        conn->want &= ~(FUSE_CAP_SPLICE_READ | FUSE_CAP_SPLICE_WRITE | FUSE_CAP_SPLICE_MOVE);
    }
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
static void vx_getattr(fuse_req_t req, fuse_ino_t i, struct fuse_file_info *fi) { FWD(getattr, i, fi); }
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
};

vexfs_session *vexfs_session_new(int argc, const char **argv, const struct vexfs_handlers *handlers,
                                 const struct vexfs_session_config *config, void *userdata) {
    struct vexfs_session *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->handlers = *handlers;
    s->config = *config;
    s->userdata = userdata;
    // libfuse keeps pointers into args only during fuse_session_new; a copy of argv suffices.
    char **copy = calloc((size_t)argc + 1, sizeof(char *));
    if (!copy) { free(s); return NULL; }
    for (int i = 0; i < argc; i++) copy[i] = (char *)argv[i];
    struct fuse_args args = FUSE_ARGS_INIT(argc, copy);
    s->se = fuse_session_new(&args, &vx_ops, sizeof vx_ops, s);
    fuse_opt_free_args(&args);
    free(copy);
    if (!s->se) { free(s); return NULL; }
    return s;
}

// killpriv: with writeback or write-through caching alike, the kernel asks the filesystem for
// "security.capability" before every write(2), to know whether the write must drop privileges.
// When the filesystem takes that duty itself (FUSE_HANDLE_KILLPRIV_V2), the kernel marks the
// superblock SB_NOSEC and stops asking: one round trip less per write. libfuse 3.14 cannot
// negotiate that flag, so the bridge does it on the device: it watches for the kernel's INIT
// request and, if the kernel offers the flag, adds it to libfuse's INIT reply. The handlers then
// drop set-id bits and capabilities themselves (vexfs_session_killpriv_v2 tells them to).
static ssize_t vx_dev_read(int fd, void *buf, size_t len, void *userdata) {
    struct vexfs_session *s = userdata;
    ssize_t n = read(fd, buf, len);
    if (n >= (ssize_t)(sizeof(struct fuse_in_header) + sizeof(struct fuse_init_in))) {
        const struct fuse_in_header *in = buf;
        if (in->opcode == FUSE_INIT) {
            const struct fuse_init_in *init = (const void *)(in + 1);
            atomic_store(&s->kernel_offers_killpriv_v2, (init->flags & FUSE_HANDLE_KILLPRIV_V2) != 0);
            atomic_store(&s->kernel_offers_passthrough,
                         (init->flags & FUSE_INIT_EXT) && (init->flags2 & VX_FUSE_PASSTHROUGH_FLAGS2));
            atomic_store(&s->init_unique, in->unique);
        }
    }
    return n;
}

static ssize_t vx_dev_writev(int fd, struct iovec *iov, int count, void *userdata) {
    struct vexfs_session *s = userdata;
    uint64_t init_unique = atomic_load(&s->init_unique);
    if (init_unique != 0 && count >= 2 && iov[0].iov_len >= sizeof(struct fuse_out_header)) {
        const struct fuse_out_header *out = iov[0].iov_base;
        if (out->unique == init_unique && out->error == 0 && iov[1].iov_len >= offsetof(struct fuse_init_out, max_background)) {
            atomic_store(&s->init_unique, 0);
            int killpriv = s->config.killpriv_v2 && atomic_load(&s->kernel_offers_killpriv_v2);
            // The reply must be long enough to carry flags2 and the stack depth (libfuse sends it whole).
            int passthrough = atomic_load(&s->passthrough) == VEXFS_PASSTHROUGH_ON &&
                              iov[1].iov_len >= offsetof(struct fuse_init_out, unused) + sizeof(uint32_t);
            if (!passthrough && atomic_load(&s->passthrough) == VEXFS_PASSTHROUGH_ON)
                atomic_store(&s->passthrough, VEXFS_PASSTHROUGH_NOT_OFFERED);
            if (killpriv || passthrough) {
                struct fuse_init_out patched;
                size_t len = iov[1].iov_len < sizeof patched ? iov[1].iov_len : sizeof patched;
                memcpy(&patched, iov[1].iov_base, len);
                if (killpriv) patched.flags |= FUSE_HANDLE_KILLPRIV_V2;
                if (passthrough) {
                    patched.flags |= FUSE_INIT_EXT;
                    patched.flags2 |= VX_FUSE_PASSTHROUGH_FLAGS2;
                    // max_stack_depth 1: backing files on an ordinary (unstacked) filesystem, and the
                    // mount itself may still lie under an overlayfs.
                    patched.unused[0] = 1;
                }
                struct iovec copy[count];
                memcpy(copy, iov, sizeof(struct iovec) * (size_t)count);
                copy[1].iov_base = &patched;
                ssize_t n = writev(fd, copy, count);
                if (n >= 0 && killpriv) atomic_store(&s->killpriv_v2, 1);
                if (n < 0 && passthrough) atomic_store(&s->passthrough, VEXFS_PASSTHROUGH_NOT_OFFERED);
                return n;
            }
        }
    }
    return writev(fd, iov, count);
}

static ssize_t vx_dev_splice_receive(int fdin, off_t *offin, int fdout, off_t *offout, size_t len,
                                     unsigned int flags, void *userdata) {
    (void)userdata;
    return splice(fdin, offin, fdout, offout, len, flags);
}

static ssize_t vx_dev_splice_send(int fdin, off_t *offin, int fdout, off_t *offout, size_t len,
                                  unsigned int flags, void *userdata) {
    (void)userdata;
    return splice(fdin, offin, fdout, offout, len, flags);
}

static const struct fuse_custom_io vx_dev_io = {
    .writev = vx_dev_writev,
    .read = vx_dev_read,
    .splice_receive = vx_dev_splice_receive,
    .splice_send = vx_dev_splice_send,
};

int vexfs_session_mount(vexfs_session *s, const char *mountpoint) {
    if (fuse_session_mount(s->se, mountpoint) != 0) return -1;
    s->mounted = 1;
    // The device is open now; route its traffic through the bridge to see INIT.
    if (fuse_session_custom_io(s->se, &vx_dev_io, fuse_session_fd(s->se)) != 0) return -1;
    return 0;
}

int vexfs_session_killpriv_v2(const vexfs_session *s) { return atomic_load(&((struct vexfs_session *)s)->killpriv_v2); }

int vexfs_req_killpriv_v2(fuse_req_t req) {
    return atomic_load(&((struct vexfs_session *)fuse_req_userdata(req))->killpriv_v2);
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

int vexfs_req_backing_open(fuse_req_t req, int fd) {
    struct vx_backing_map map = {.fd = fd};
    int id = ioctl(fuse_session_fd(((struct vexfs_session *)fuse_req_userdata(req))->se), VX_FUSE_DEV_IOC_BACKING_OPEN, &map);
    if (id > 0) return id;
    return id == 0 ? -EIO : -errno;  // ids start at 1
}

int vexfs_req_backing_close(fuse_req_t req, int backing_id) {
    uint32_t id = (uint32_t)backing_id;
    int r = ioctl(fuse_session_fd(((struct vexfs_session *)fuse_req_userdata(req))->se), VX_FUSE_DEV_IOC_BACKING_CLOSE, &id);
    return r < 0 ? -errno : 0;
}

// libfuse 3.14 zero-fills backing_id and knows no FOPEN_PASSTHROUGH, so these replies are made here:
// the same bytes fuse_reply_open and fuse_reply_create send, with the two fields set.
int vexfs_reply_open_backing(fuse_req_t req, uint64_t fh, int backing_id) {
    struct vx_open_out out = {.fh = fh, .open_flags = VX_FOPEN_PASSTHROUGH, .backing_id = backing_id};
    return fuse_reply_buf(req, (const char *)&out, sizeof out);
}

static uint64_t vx_timeout_sec(double t) { return t <= 0 ? 0 : t >= (double)UINT64_MAX ? UINT64_MAX : (uint64_t)t; }
static uint32_t vx_timeout_nsec(double t) {
    double f = t - (double)vx_timeout_sec(t);
    return f <= 0 ? 0 : f >= 0.999999999 ? 999999999 : (uint32_t)(f * 1.0e9);
}

int vexfs_reply_create_backing(fuse_req_t req, const struct fuse_entry_param *e, uint64_t fh, int backing_id) {
    // Protocol 7.9 and later (every kernel passthrough exists on): the full fuse_entry_out.
    struct {
        struct fuse_entry_out entry;
        struct vx_open_out open;
    } __attribute__((packed)) out;
    _Static_assert(sizeof out == sizeof(struct fuse_entry_out) + sizeof(struct fuse_open_out), "create reply");
    memset(&out, 0, sizeof out);
    out.entry.nodeid = e->ino;
    out.entry.generation = e->generation;
    out.entry.entry_valid = vx_timeout_sec(e->entry_timeout);
    out.entry.entry_valid_nsec = vx_timeout_nsec(e->entry_timeout);
    out.entry.attr_valid = vx_timeout_sec(e->attr_timeout);
    out.entry.attr_valid_nsec = vx_timeout_nsec(e->attr_timeout);
    const struct stat *st = &e->attr;
    struct fuse_attr *a = &out.entry.attr;
    a->ino = st->st_ino;
    a->mode = st->st_mode;
    a->nlink = (uint32_t)st->st_nlink;
    a->uid = st->st_uid;
    a->gid = st->st_gid;
    a->rdev = (uint32_t)st->st_rdev;
    a->size = (uint64_t)st->st_size;
    a->blksize = (uint32_t)st->st_blksize;
    a->blocks = (uint64_t)st->st_blocks;
    a->atime = (uint64_t)st->st_atim.tv_sec;
    a->mtime = (uint64_t)st->st_mtim.tv_sec;
    a->ctime = (uint64_t)st->st_ctim.tv_sec;
    a->atimensec = (uint32_t)st->st_atim.tv_nsec;
    a->mtimensec = (uint32_t)st->st_mtim.tv_nsec;
    a->ctimensec = (uint32_t)st->st_ctim.tv_nsec;
    out.open = (struct vx_open_out){.fh = fh, .open_flags = VX_FOPEN_PASSTHROUGH, .backing_id = backing_id};
    return fuse_reply_buf(req, (const char *)&out, sizeof out);
}

int vexfs_req_invalidate_attributes(fuse_req_t req, fuse_ino_t ino) {
    // A negative offset invalidates the attributes alone, not the (unused) page cache.
    return fuse_lowlevel_notify_inval_inode(((struct vexfs_session *)fuse_req_userdata(req))->se, ino, -1, 0);
}

int vexfs_session_set_signal_handlers(vexfs_session *s) {
    if (fuse_set_signal_handlers(s->se) != 0) return -1;
    s->signals = 1;
    return 0;
}

int vexfs_session_loop(vexfs_session *s) {
    struct fuse_loop_config *cfg = fuse_loop_cfg_create();
    if (!cfg) return -ENOMEM;
    fuse_loop_cfg_set_clone_fd(cfg, (unsigned)s->config.clone_fd);
    if (s->config.max_threads > 0) fuse_loop_cfg_set_max_threads(cfg, s->config.max_threads);
    int ret = fuse_session_loop_mt(s->se, cfg);
    fuse_loop_cfg_destroy(cfg);
    return ret;
}

void vexfs_session_exit(vexfs_session *s) { fuse_session_exit(s->se); }

void vexfs_session_destroy(vexfs_session *s) {
    if (!s) return;
    if (s->signals) fuse_remove_signal_handlers(s->se);
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

size_t vexfs_bufvec_size(const struct fuse_bufvec *bufv) { return fuse_buf_size(bufv); }

void vexfs_fi_set_open_flags(struct fuse_file_info *fi, int direct_io, int keep_cache) {
    fi->direct_io = direct_io ? 1 : 0;
    fi->keep_cache = keep_cache ? 1 : 0;
}

void vexfs_fi_set_cache_readdir(struct fuse_file_info *fi, int cache_readdir) {
    fi->cache_readdir = cache_readdir ? 1 : 0;
}
