// The session record shared by the C files of the bridge: cfuse.c (libfuse plumbing),
// backport_7_40.c (what libfuse 3.14 cannot negotiate) and uring.c (FUSE over io_uring). Private to
// CFuse: Swift sees only the opaque `vexfs_session` of cfuse.h.
#ifndef VEXFS_CFUSE_SESSION_H
#define VEXFS_CFUSE_SESSION_H

#include "cfuse.h"
#include <stdatomic.h>
#include <linux/fuse.h>
#include <sys/uio.h>

struct vx_uring;

struct vexfs_session {
    struct fuse_session *se;
    struct vexfs_handlers handlers;
    struct vexfs_session_config config;
    void *userdata;
    int mounted;
    int signals;
    // Readable (an eventfd) once a stop signal came: see vexfs_session_stop_fd.
    int stop_fd;
    // Readable for good (an eventfd never read) once the session ends: written by a stop signal, and
    // by vx_uring_stop for rings outliving a loop an unmount ended. Every wait for a request
    // (libfuse's workers on the device, the ring threads) also waits on it, so each ends after the
    // request it serves, whichever thread took the signal.
    int exit_fd;
    // A vexfs_passthrough value: decided in init, applied to the INIT reply by the back-port, and
    // turned to REFUSED if the kernel refuses a registration.
    _Atomic int passthrough;
    // FUSE_POSIX_ACL was negotiated: the kernel caches and enforces ACLs, and leaves the umask to us.
    _Atomic int posix_acl;
    // FUSE_HANDLE_KILLPRIV_V2 was agreed: vexfs drops set-id bits and capabilities on write itself.
    _Atomic int killpriv_v2;

    // Back-port of protocol 7.40 (backport_7_40.c): the INIT exchange, seen on the device.
    _Atomic uint64_t init_unique;
    _Atomic int kernel_offers_killpriv_v2;
    _Atomic int kernel_offers_passthrough;
    _Atomic int kernel_offers_uring;

    // A vexfs_transport value: decided in init, turned to SETUP_FAILED or REFUSED if the rings
    // cannot serve. `uring` is the rings while they exist (uring.c).
    _Atomic int transport;
    struct vx_uring *uring;
};

/// Every request, from /dev/fuse or a ring, before libfuse sees it (`buf` holds `len` bytes, from
/// the fuse_in_header on, and has room for `capacity`): the one place that watches or rewrites raw
/// requests. Returns the request's length after it (`len` when it is left as it came).
size_t vx_request_in(struct vexfs_session *s, void *buf, size_t len, size_t capacity);

/// FUSE over io_uring (uring.c). At INIT, before the reply: start the ring threads with payload
/// buffers of `payload_size` bytes; 0, or an errno and nothing started.
int vx_uring_prepare(struct vexfs_session *s, size_t payload_size);
/// After the INIT reply: `init_sent` 1 lets the threads register with the kernel, 0 ends them.
void vx_uring_start(struct vexfs_session *s, int init_sent);
/// A reply on its way out: 1 if it answers a ring request (then it is committed there), 0 if it
/// belongs to the device.
int vx_uring_reply(struct vexfs_session *s, const struct iovec *iov, int count);
/// Ends the ring threads (after the loop) and frees the rings.
void vx_uring_stop(struct vexfs_session *s);

/// Waits until the device `fd` has a request (1) or the session ends (0, errno ENODEV: what libfuse
/// takes for an unmount, so its worker leaves its loop and wakes the loop's thread); 0 with EINTR
/// when a signal interrupted the wait.
int vx_wait_for_request(struct vexfs_session *s, int fd);

/// Back-port: routes the session's device traffic through the bridge, to see and patch INIT.
/// Called once, right after the mount; 0 on success.
int vx_backport_watch_init(struct vexfs_session *s);

/// O_TMPFILE (tmpfile.c): rewrites a FUSE_TMPFILE request in memory into a CREATE of "/", which the
/// create handler makes an unnamed file of; 1 when it did. Every transport calls it on each request.
int vx_tmpfile_as_create(void *request, size_t len);
/// The same for a request read from the device with splice into libfuse's pipe `fdout`.
ssize_t vx_tmpfile_splice_receive(int fdin, off_t *offin, int fdout, off_t *offout, size_t len, unsigned int flags);

/// statx(2) (statx.c): a FUSE_STATX request has this length (no extensions).
#define VX_STATX_REQUEST_SIZE (sizeof(struct fuse_in_header) + 24)
/// Rewrites a FUSE_STATX request in memory into a GETATTR and marks the calling thread; returns
/// the request's new length (`len` when it is not a STATX). Every transport calls it on each request.
size_t vx_statx_as_getattr(void *request, size_t len);
/// In the getattr trampoline: 1 when the request for `ino` came as a STATX (the mark is cleared).
int vx_statx_take(fuse_ino_t ino);

#endif
