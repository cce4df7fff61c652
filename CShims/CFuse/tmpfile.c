// O_TMPFILE on libfuse 3.14, which answers FUSE_TMPFILE (protocol 7.37) with ENOSYS, after which the
// kernel gives up on it for the mount (fs/fuse/dir.c, fuse_tmpfile: no_tmpfile, EOPNOTSUPP).
//
// The kernel builds a TMPFILE request exactly as a CREATE (fs/fuse/dir.c, fuse_create_open, called
// with the opcode): a fuse_create_in and the name of the dentry, which for an unnamed file is "/"
// (fs/namei.c, vfs_tmpfile: d_alloc of slash_name); and it takes the same answer, an entry and an
// open file. A CREATE never names "/" (no path component can hold a slash), so the request is
// rewritten, in place and on its way in, into a CREATE of "/", which libfuse dispatches to the
// create handler; that one makes an unnamed file in the store (Handlers.create).
//
// Every transport that reads requests into memory calls vx_tmpfile_as_create on each one. The
// device read with splice (vx_tmpfile_splice_receive) cannot see the request in libfuse's pipe, so it
// takes it through a pipe of its own first (and gives statx.c's rewrite the same chance).
//
// libfuse 3.17 and later answer FUSE_TMPFILE (fuse_lowlevel_ops.tmpfile): once the system's libfuse is
// that new, delete this file and its calls, and give Handlers' unnamed create its own operation.
#define _GNU_SOURCE
#include "session.h"
#include <errno.h>
#include <fcntl.h>
#include <linux/fuse.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

// A TMPFILE request without extensions (vexfs negotiates none: no security context, no supplementary
// group): the header, fuse_create_in, and "/" with its terminating zero.
#define VX_TMPFILE_REQUEST_SIZE (sizeof(struct fuse_in_header) + sizeof(struct fuse_create_in) + 2)

int vx_tmpfile_as_create(void *request, size_t len) {
    struct fuse_in_header *in = request;
    if (len < VX_TMPFILE_REQUEST_SIZE || in->opcode != FUSE_TMPFILE) return 0;
    const char *name = (const char *)(in + 1) + sizeof(struct fuse_create_in);
    if (memcmp(name, "/", 2) != 0) return 0;  // not the shape we know: libfuse answers ENOSYS
    in->opcode = FUSE_CREATE;
    return 1;
}

// MARK: the device read with splice

// Each worker thread's own pipe, as large as libfuse's (which the request must fit whole, or the
// kernel fails it); closed when the thread ends.
struct vx_request_pipe {
    int fd[2];
    size_t size;
};

static pthread_key_t vx_request_pipe_key;
static pthread_once_t vx_request_pipe_once = PTHREAD_ONCE_INIT;

static void vx_request_pipe_free(void *p) {
    struct vx_request_pipe *pipe = p;
    close(pipe->fd[0]);
    close(pipe->fd[1]);
    free(pipe);
}

static void vx_request_pipe_key_create(void) { pthread_key_create(&vx_request_pipe_key, vx_request_pipe_free); }

static struct vx_request_pipe *vx_request_pipe(size_t len) {
    pthread_once(&vx_request_pipe_once, vx_request_pipe_key_create);
    struct vx_request_pipe *p = pthread_getspecific(vx_request_pipe_key);
    if (p && p->size >= len) return p;
    if (!p) {
        p = malloc(sizeof *p);
        if (!p) return NULL;
        if (pipe2(p->fd, O_CLOEXEC) != 0) {
            free(p);
            return NULL;
        }
        // Reads from it never wait: it holds one request at most, and is empty between requests.
        fcntl(p->fd[0], F_SETFL, O_NONBLOCK);
        p->size = (size_t)fcntl(p->fd[0], F_GETPIPE_SZ);
        if (pthread_setspecific(vx_request_pipe_key, p) != 0) {
            vx_request_pipe_free(p);
            return NULL;
        }
    }
    if (p->size < len) {
        int size = fcntl(p->fd[0], F_SETPIPE_SZ, (int)len);
        if (size < 0) return NULL;
        p->size = (size_t)size;
    }
    return p->size >= len ? p : NULL;
}

ssize_t vx_tmpfile_splice_receive(int fdin, off_t *offin, int fdout, off_t *offout, size_t len, unsigned int flags) {
    struct vx_request_pipe *p = vx_request_pipe(len);
    // No pipe of our own: the request goes straight to libfuse's, and O_TMPFILE stays unanswered.
    if (!p) return splice(fdin, offin, fdout, offout, len, flags);
    ssize_t n = splice(fdin, offin, p->fd[1], NULL, len, flags);
    if (n <= 0) return n;
    if ((size_t)n == VX_TMPFILE_REQUEST_SIZE || (size_t)n == VX_STATX_REQUEST_SIZE) {
        // As long as a TMPFILE or a STATX request (other requests can be): read it, rewrite it if
        // it is one (statx.c's rewrite shortens it).
        char request[VX_TMPFILE_REQUEST_SIZE > VX_STATX_REQUEST_SIZE ? VX_TMPFILE_REQUEST_SIZE : VX_STATX_REQUEST_SIZE];
        if (read(p->fd[0], request, (size_t)n) != n) return -1;
        vx_tmpfile_as_create(request, (size_t)n);
        size_t len = vx_statx_as_getattr(request, (size_t)n);
        return write(fdout, request, len);
    }
    // Anything else moves on whole, its pages not copied (libfuse's pipe is empty and as large).
    size_t moved = 0;
    while (moved < (size_t)n) {
        ssize_t m = splice(p->fd[0], NULL, fdout, NULL, (size_t)n - moved, SPLICE_F_MOVE);
        if (m <= 0) {
            int e = m < 0 ? errno : EIO;
            // Never leave part of a request behind for the next one to be read with.
            char drain[4096];
            while (read(p->fd[0], drain, sizeof drain) > 0) {}
            errno = e;
            return -1;
        }
        moved += (size_t)m;
    }
    return n;
}
