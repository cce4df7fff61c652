// A back-port of what FUSE protocol 7.40 (kernel 6.9) gives and libfuse 3.14 cannot negotiate:
//
// - FUSE passthrough: the flag in INIT (with the backing stack depth), the /dev/fuse ioctls that
//   register and release a backing file, and OPEN/CREATE replies that name a backing id;
// - FUSE_HANDLE_KILLPRIV_V2 (protocol 7.33): with it the kernel stops asking for
//   security.capability before every write(2), and vexfs drops privileges on write itself.
//
// libfuse 3.14 knows neither, so this file watches the device for the kernel's INIT request, patches
// libfuse's INIT reply on its way out, and makes the passthrough replies byte for byte. The protocol's
// names newer than the system's <linux/fuse.h> (7.38) are spelled out below, checked against the
// kernel's uapi header.
//
// libfuse 3.17.1 and later have all of it (fuse_passthrough_open/close, fuse_file_info.backing_id,
// FUSE_CAP_PASSTHROUGH, conn->max_backing_stack_depth, FUSE_CAP_HANDLE_KILLPRIV_V2). Once the system's
// libfuse is that new, delete this file and, in cfuse.c:
//   - in vx_init, ask for FUSE_CAP_HANDLE_KILLPRIV_V2 and FUSE_CAP_PASSTHROUGH in conn->want when
//     conn->capable offers them (set max_backing_stack_depth to 1), and record what was agreed in
//     `killpriv_v2` and `passthrough` instead of reading `kernel_offers_*`;
//   - drop vx_backport_watch_init from vexfs_session_mount (no custom I/O is needed);
//   - implement vexfs_req_backing_open/close with fuse_passthrough_open/close, and the two
//     vexfs_reply_*_backing with fi->backing_id set and fuse_reply_open/fuse_reply_create
//     (so they can keep their names, and the Swift side its calls);
//   - remove the back-port's fields from session.h and its group from cfuse.h.
#define _GNU_SOURCE
#include "session.h"
#include <errno.h>
#include <fcntl.h>
#include <linux/fuse.h>
#include <stddef.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/uio.h>
#include <unistd.h>

// INIT: FUSE_PASSTHROUGH is bit 37 of the flags, that is bit 5 of flags2; the reply also names the
// stack depth of the mount (fuse_init_out's u32 at byte 36, "unused[0]" in 7.38).
#define VX_FUSE_PASSTHROUGH_FLAGS2 (1u << 5)
// INIT: FUSE_OVER_IO_URING (protocol 7.42) is bit 41 of the flags, bit 9 of flags2 (uring.c).
#define VX_FUSE_OVER_IO_URING_FLAGS2 (1u << 9)
// OPEN/CREATE reply: fuse_open_out's last field (7.38's "padding") is the backing id.
#define VX_FOPEN_PASSTHROUGH (1u << 7)
#define VX_FOPEN_NOFLUSH (1u << 5)
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

// MARK: INIT

// killpriv: with writeback or write-through caching alike, the kernel asks the filesystem for
// "security.capability" before every write(2), to know whether the write must drop privileges.
// When the filesystem takes that duty itself (FUSE_HANDLE_KILLPRIV_V2), the kernel marks the
// superblock SB_NOSEC and stops asking: one round trip less per write. The bridge watches for the
// kernel's INIT request and adds to libfuse's INIT reply the flags the kernel offers and vexfs wants
// (this one, and passthrough when vx_init decided on it). The handlers then drop set-id bits and
// capabilities themselves (vexfs_req_killpriv_v2 tells them to).
size_t vx_request_in(struct vexfs_session *s, void *buf, size_t len, size_t capacity) {
    (void)capacity;
    vx_tmpfile_as_create(buf, len);
    len = vx_statx_as_getattr(buf, len);
    if (len >= sizeof(struct fuse_in_header) + sizeof(struct fuse_init_in)) {
        const struct fuse_in_header *in = buf;
        if (in->opcode == FUSE_INIT) {
            const struct fuse_init_in *init = (const void *)(in + 1);
            atomic_store(&s->kernel_offers_killpriv_v2, (init->flags & FUSE_HANDLE_KILLPRIV_V2) != 0);
            atomic_store(&s->kernel_offers_passthrough,
                         (init->flags & FUSE_INIT_EXT) && (init->flags2 & VX_FUSE_PASSTHROUGH_FLAGS2));
            atomic_store(&s->kernel_offers_uring,
                         (init->flags & FUSE_INIT_EXT) && (init->flags2 & VX_FUSE_OVER_IO_URING_FLAGS2));
            atomic_store(&s->init_unique, in->unique);
        }
    }
    return len;
}

static ssize_t vx_dev_read(int fd, void *buf, size_t len, void *userdata) {
    if (!vx_wait_for_request(userdata, fd)) return -1;
    ssize_t n = read(fd, buf, len);
    if (n > 0) n = (ssize_t)vx_request_in(userdata, buf, (size_t)n, len);
    return n;
}

// The ring's buffers must hold the largest request the kernel may send: its rule, from what the
// INIT reply agrees (max_pages counts only with FUSE_MAX_PAGES; the kernel's default is 32).
static size_t vx_ring_payload_size(const struct fuse_init_out *out) {
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t pages = (out->flags & FUSE_MAX_PAGES) && out->max_pages ? out->max_pages : 32;
    size_t size = pages * page;
    if (size < out->max_write) size = out->max_write;
    return size < 8192 ? 8192 : size;  // FUSE_MIN_READ_BUFFER
}

static ssize_t vx_dev_writev(int fd, struct iovec *iov, int count, void *userdata) {
    struct vexfs_session *s = userdata;
    if (vx_uring_reply(s, iov, count)) {
        ssize_t total = 0;
        for (int i = 0; i < count; i++) total += (ssize_t)iov[i].iov_len;
        return total;
    }
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
            // io_uring: the rings exist before the kernel hears of them (uring.c).
            int uring = atomic_load(&s->transport) == VEXFS_TRANSPORT_URING;
            if (uring && (iov[1].iov_len < offsetof(struct fuse_init_out, unused) ||
                          vx_uring_prepare(s, vx_ring_payload_size(iov[1].iov_base)) != 0)) {
                atomic_store(&s->transport, VEXFS_TRANSPORT_SETUP_FAILED);
                uring = 0;
            }
            if (killpriv || passthrough || uring) {
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
                if (uring) {
                    patched.flags |= FUSE_INIT_EXT;
                    patched.flags2 |= VX_FUSE_OVER_IO_URING_FLAGS2;
                }
                struct iovec copy[count];
                memcpy(copy, iov, sizeof(struct iovec) * (size_t)count);
                copy[1].iov_base = &patched;
                ssize_t n = writev(fd, copy, count);
                if (n >= 0 && killpriv) atomic_store(&s->killpriv_v2, 1);
                if (n < 0 && passthrough) atomic_store(&s->passthrough, VEXFS_PASSTHROUGH_NOT_OFFERED);
                if (uring) vx_uring_start(s, n >= 0);
                if (n < 0 && uring) atomic_store(&s->transport, VEXFS_TRANSPORT_SETUP_FAILED);
                return n;
            }
        }
    }
    return writev(fd, iov, count);
}

static ssize_t vx_dev_splice_receive(int fdin, off_t *offin, int fdout, off_t *offout, size_t len,
                                     unsigned int flags, void *userdata) {
    if (!vx_wait_for_request(userdata, fdin)) return -1;
    return vx_tmpfile_splice_receive(fdin, offin, fdout, offout, len, flags);
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

int vx_backport_watch_init(struct vexfs_session *s) {
    return fuse_session_custom_io(s->se, &vx_dev_io, fuse_session_fd(s->se));
}

// MARK: backing files

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

// MARK: replies naming a backing id

// libfuse 3.14 zero-fills backing_id and knows no FOPEN_PASSTHROUGH, so these replies are made here:
// the same bytes fuse_reply_open and fuse_reply_create send, with the two fields set.
int vexfs_reply_open_backing(fuse_req_t req, uint64_t fh, int backing_id, int noflush) {
    struct vx_open_out out = {.fh = fh, .open_flags = VX_FOPEN_PASSTHROUGH | (noflush ? VX_FOPEN_NOFLUSH : 0),
                              .backing_id = backing_id};
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
