// The session record shared by the two C files of the bridge: cfuse.c (libfuse plumbing) and
// backport_7_40.c (what libfuse 3.14 cannot negotiate). Private to CFuse: Swift sees only the
// opaque `vexfs_session` of cfuse.h.
#ifndef VEXFS_CFUSE_SESSION_H
#define VEXFS_CFUSE_SESSION_H

#include "cfuse.h"
#include <stdatomic.h>

struct vexfs_session {
    struct fuse_session *se;
    struct vexfs_handlers handlers;
    struct vexfs_session_config config;
    void *userdata;
    int mounted;
    int signals;
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
};

/// Back-port: routes the session's device traffic through the bridge, to see and patch INIT.
/// Called once, right after the mount; 0 on success.
int vx_backport_watch_init(struct vexfs_session *s);

/// O_TMPFILE (tmpfile.c): rewrites a FUSE_TMPFILE request in memory into a CREATE of "/", which the
/// create handler makes an unnamed file of; 1 when it did. Every transport calls it on each request.
int vx_tmpfile_as_create(void *request, size_t len);
/// The same for a request read from the device with splice into libfuse's pipe `fdout`.
ssize_t vx_tmpfile_splice_receive(int fdin, off_t *offin, int fdout, off_t *offout, size_t len, unsigned int flags);

#endif
