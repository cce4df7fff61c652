// statx(2) on libfuse 3.14, which answers FUSE_STATX (protocol 7.39) with ENOSYS, after which the
// kernel stops asking for the mount (fs/fuse/dir.c, fuse_update_get_attr: no_statx) and statx shows
// no birth time.
//
// The kernel sends FUSE_STATX instead of GETATTR when statx asks for more than the basic fields (a
// birth time). Its argument, fuse_statx_in, begins as fuse_getattr_in does (flags, padding, file
// handle) and adds the statx flags and mask; so the request is rewritten, in place and on its way
// in, into a GETATTR that libfuse dispatches to the getattr trampoline, and a mark on the worker
// thread tells that trampoline it was a STATX (libfuse calls the operation on the thread that
// received the request, on every transport). The handler then answers with vexfs_reply_statx: the
// attributes GETATTR would give, with the birth time and attribute flags of the backing inode.
//
// libfuse 3.18 and later answer FUSE_STATX (fuse_lowlevel_ops.statx): once the system's libfuse is
// that new, delete this file and its calls, and register the statx handler as that operation.
#define _GNU_SOURCE
#include "session.h"
#include <linux/fuse.h>
#include <stddef.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

// The protocol's names newer than the system's <linux/fuse.h> (7.38), as the kernel's uapi header
// spells them.
#define VX_FUSE_STATX 52
struct vx_statx_in {
    uint32_t getattr_flags;
    uint32_t reserved;
    uint64_t fh;
    uint32_t sx_flags;
    uint32_t sx_mask;
};
struct vx_sx_time {
    int64_t tv_sec;
    uint32_t tv_nsec;
    int32_t reserved;
};
struct vx_statx {
    uint32_t mask;
    uint32_t blksize;
    uint64_t attributes;
    uint32_t nlink;
    uint32_t uid;
    uint32_t gid;
    uint16_t mode;
    uint16_t spare0;
    uint64_t ino;
    uint64_t size;
    uint64_t blocks;
    uint64_t attributes_mask;
    struct vx_sx_time atime, btime, ctime, mtime;
    uint32_t rdev_major, rdev_minor, dev_major, dev_minor;
    uint64_t spare2[14];
};
struct vx_statx_out {
    uint64_t attr_valid;
    uint32_t attr_valid_nsec;
    uint32_t flags;
    uint64_t spare[2];
    struct vx_statx stat;
};
_Static_assert(sizeof(struct vx_statx_in) == 24, "fuse_statx_in");
_Static_assert(sizeof(struct vx_statx) == 256, "fuse_statx");
_Static_assert(sizeof(struct vx_statx_out) == 288, "fuse_statx_out");
_Static_assert(offsetof(struct vx_statx_in, fh) == offsetof(struct fuse_getattr_in, fh), "fuse_statx_in starts as fuse_getattr_in");

// The statx mask of the fields a stat carries (STATX_BASIC_STATS), and the birth time's bit.
#define VX_STATX_BASIC_STATS 0x7ffu
#define VX_STATX_BTIME 0x800u

// The STATX request this thread is dispatching, between its rewrite and the getattr trampoline.
static __thread struct {
    int pending;
    uint64_t nodeid;
} vx_statx_mark;

size_t vx_statx_as_getattr(void *request, size_t len) {
    struct fuse_in_header *in = request;
    // A mark libfuse never consumed (a request it answered itself) must not outlive its request.
    vx_statx_mark.pending = 0;
    if (len != VX_STATX_REQUEST_SIZE || in->opcode != VX_FUSE_STATX || in->len != len) return len;
    in->opcode = FUSE_GETATTR;
    in->len = (uint32_t)(sizeof *in + sizeof(struct fuse_getattr_in));
    vx_statx_mark.pending = 1;
    vx_statx_mark.nodeid = in->nodeid;
    return in->len;
}

int vx_statx_take(fuse_ino_t ino) {
    int pending = vx_statx_mark.pending && vx_statx_mark.nodeid == ino;
    vx_statx_mark.pending = 0;
    return pending;
}

static uint64_t vx_timeout_sec(double t) { return t <= 0 ? 0 : t >= (double)UINT64_MAX ? UINT64_MAX : (uint64_t)t; }
static uint32_t vx_timeout_nsec(double t) {
    double f = t - (double)vx_timeout_sec(t);
    return f <= 0 ? 0 : f >= 0.999999999 ? 999999999 : (uint32_t)(f * 1.0e9);
}

int vexfs_reply_statx(fuse_req_t req, const struct stat *st, const struct vexfs_statx_extra *extra, double timeout) {
    struct vx_statx_out out;
    memset(&out, 0, sizeof out);
    out.attr_valid = vx_timeout_sec(timeout);
    out.attr_valid_nsec = vx_timeout_nsec(timeout);
    struct vx_statx *sx = &out.stat;
    sx->mask = VX_STATX_BASIC_STATS;
    sx->blksize = (uint32_t)st->st_blksize;
    sx->nlink = (uint32_t)st->st_nlink;
    sx->uid = st->st_uid;
    sx->gid = st->st_gid;
    sx->mode = (uint16_t)st->st_mode;
    sx->ino = st->st_ino;
    sx->size = (uint64_t)st->st_size;
    sx->blocks = (uint64_t)st->st_blocks;
    sx->atime = (struct vx_sx_time){.tv_sec = st->st_atim.tv_sec, .tv_nsec = (uint32_t)st->st_atim.tv_nsec};
    sx->mtime = (struct vx_sx_time){.tv_sec = st->st_mtim.tv_sec, .tv_nsec = (uint32_t)st->st_mtim.tv_nsec};
    sx->ctime = (struct vx_sx_time){.tv_sec = st->st_ctim.tv_sec, .tv_nsec = (uint32_t)st->st_ctim.tv_nsec};
    sx->rdev_major = major(st->st_rdev);
    sx->rdev_minor = minor(st->st_rdev);
    if (extra) {
        if (extra->has_btime) {
            sx->mask |= VX_STATX_BTIME;
            sx->btime = (struct vx_sx_time){.tv_sec = extra->btime_sec, .tv_nsec = extra->btime_nsec};
        }
        sx->attributes = extra->attributes;
        sx->attributes_mask = extra->attributes_mask;
    }
    return fuse_reply_buf(req, (const char *)&out, sizeof out);
}
