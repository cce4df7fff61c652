// The C side of the FUSE bridge. libfuse3's low-level callbacks live in cfuse.c; each one forwards its
// request, unchanged, to a Swift handler in `struct vexfs_handlers`. Swift fills that table and never
// sees libfuse's own ops table. The helpers below cover what Swift cannot express directly: macros
// (FUSE_BUFVEC_INIT, FUSE_ARGS_INIT, fuse_session_loop_mt) and the zero-copy data path. The last
// group is the back-port of FUSE passthrough that libfuse 3.14 lacks (backport_7_40.c).
#ifndef VEXFS_CFUSE_H
#define VEXFS_CFUSE_H

#define FUSE_USE_VERSION 312
#include <fuse3/fuse_lowlevel.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <stdint.h>

struct vexfs_handlers {
    void (*lookup)(fuse_req_t, fuse_ino_t parent, const char *name);
    void (*forget)(fuse_req_t, fuse_ino_t ino, uint64_t nlookup);
    void (*forget_multi)(fuse_req_t, size_t count, struct fuse_forget_data *forgets);
    void (*getattr)(fuse_req_t, fuse_ino_t ino, struct fuse_file_info *fi);
    void (*setattr)(fuse_req_t, fuse_ino_t ino, struct stat *attr, int to_set, struct fuse_file_info *fi);
    void (*readlink)(fuse_req_t, fuse_ino_t ino);
    void (*mknod)(fuse_req_t, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev);
    void (*mkdir)(fuse_req_t, fuse_ino_t parent, const char *name, mode_t mode);
    void (*unlink)(fuse_req_t, fuse_ino_t parent, const char *name);
    void (*rmdir)(fuse_req_t, fuse_ino_t parent, const char *name);
    void (*symlink)(fuse_req_t, const char *link, fuse_ino_t parent, const char *name);
    void (*rename)(fuse_req_t, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
                   const char *newname, unsigned int flags);
    void (*link)(fuse_req_t, fuse_ino_t ino, fuse_ino_t newparent, const char *newname);
    void (*open)(fuse_req_t, fuse_ino_t ino, struct fuse_file_info *fi);
    void (*read)(fuse_req_t, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi);
    void (*write_buf)(fuse_req_t, fuse_ino_t ino, struct fuse_bufvec *bufv, off_t off,
                      struct fuse_file_info *fi);
    void (*flush)(fuse_req_t, fuse_ino_t ino, struct fuse_file_info *fi);
    void (*release)(fuse_req_t, fuse_ino_t ino, struct fuse_file_info *fi);
    void (*fsync)(fuse_req_t, fuse_ino_t ino, int datasync, struct fuse_file_info *fi);
    void (*opendir)(fuse_req_t, fuse_ino_t ino, struct fuse_file_info *fi);
    void (*readdir)(fuse_req_t, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi);
    void (*readdirplus)(fuse_req_t, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi);
    void (*releasedir)(fuse_req_t, fuse_ino_t ino, struct fuse_file_info *fi);
    void (*fsyncdir)(fuse_req_t, fuse_ino_t ino, int datasync, struct fuse_file_info *fi);
    void (*statfs)(fuse_req_t, fuse_ino_t ino);
    void (*setxattr)(fuse_req_t, fuse_ino_t ino, const char *name, const char *value, size_t size,
                     int flags);
    void (*getxattr)(fuse_req_t, fuse_ino_t ino, const char *name, size_t size);
    void (*listxattr)(fuse_req_t, fuse_ino_t ino, size_t size);
    void (*removexattr)(fuse_req_t, fuse_ino_t ino, const char *name);
    void (*access)(fuse_req_t, fuse_ino_t ino, int mask);
    void (*create)(fuse_req_t, fuse_ino_t parent, const char *name, mode_t mode, struct fuse_file_info *fi);
    void (*fallocate)(fuse_req_t, fuse_ino_t ino, int mode, off_t offset, off_t length,
                      struct fuse_file_info *fi);
    void (*copy_file_range)(fuse_req_t, fuse_ino_t ino_in, off_t off_in, struct fuse_file_info *fi_in,
                            fuse_ino_t ino_out, off_t off_out, struct fuse_file_info *fi_out,
                            size_t len, int flags);
    void (*lseek)(fuse_req_t, fuse_ino_t ino, off_t off, int whence, struct fuse_file_info *fi);
    void (*ioctl)(fuse_req_t, fuse_ino_t ino, unsigned int cmd, void *arg, struct fuse_file_info *fi,
                  unsigned flags, const void *in_buf, size_t in_bufsz, size_t out_bufsz);
    /// Users' flock(2), when the session takes it over (`flock_locks`); op is LOCK_SH, LOCK_EX or
    /// LOCK_UN, with LOCK_NB when the caller would not wait.
    void (*flock)(fuse_req_t, fuse_ino_t ino, struct fuse_file_info *fi, int op);
    /// statx(2) asking for more than stat gives (a birth time): answered with vexfs_reply_statx.
    void (*statx)(fuse_req_t, fuse_ino_t ino, struct fuse_file_info *fi);
    /// Optional: called once, on the loop thread, after the kernel has stopped sending requests.
    void (*destroy)(void *userdata);
    /// Optional: called once at INIT with the passthrough state agreed (a vexfs_passthrough).
    void (*negotiated)(void *userdata, int passthrough);
};

/// What the session asks of the kernel at INIT. Filled by Swift from the mount options.
struct vexfs_session_config {
    int writeback;      // FUSE_CAP_WRITEBACK_CACHE
    int splice;         // splice read/write/move
    unsigned max_threads;
    int clone_fd;
    int killpriv_v2;    // take over dropping privileges on write, if the kernel offers (backport_7_40.c)
    int passthrough;    // let the kernel read and write open files itself, if it offers and we may
    int posix_acl;      // FUSE_POSIX_ACL: the kernel caches and enforces ACLs
    int io_uring;       // serve requests through io_uring queues, if the kernel offers (uring.c):
                        // 1 asked, 0 not, VEXFS_IO_URING_WITH_PASSTHROUGH where file data passes through
    int flock_locks;    // FUSE_CAP_FLOCK_LOCKS: users' flock(2) comes to the daemon (a shared store's)
};
/// The default of `io_uring`: only when the kernel reads and writes open files itself. A file's data
/// through the daemon is faster over /dev/fuse, where splice moves it (BENCHMARKS.md).
#define VEXFS_IO_URING_WITH_PASSTHROUGH 2

/// How requests reach the daemon: io_uring queues, or /dev/fuse and why.
enum vexfs_transport {
    VEXFS_TRANSPORT_URING = 0,
    VEXFS_TRANSPORT_NOT_ASKED,        // -o no_io_uring
    VEXFS_TRANSPORT_NOT_OFFERED,      // the kernel's INIT did not offer it
    VEXFS_TRANSPORT_SETUP_FAILED,     // rings, buffers or threads could not be made
    VEXFS_TRANSPORT_REFUSED,          // the kernel refused a registration
    VEXFS_TRANSPORT_DATA_THROUGH_DAEMON,  // the default, without passthrough
};
/// One line for the log and stats: "io_uring", or "/dev/fuse: " and why.
const char *vexfs_transport_reason(int state);

/// Whether the kernel reads and writes open files itself (FUSE passthrough), or why not.
enum vexfs_passthrough {
    VEXFS_PASSTHROUGH_ON = 0,
    VEXFS_PASSTHROUGH_NOT_ASKED,      // -o no_passthrough
    VEXFS_PASSTHROUGH_NOT_OFFERED,    // the kernel's INIT did not offer it
    VEXFS_PASSTHROUGH_NO_PRIVILEGE,   // no CAP_SYS_ADMIN
    VEXFS_PASSTHROUGH_WRITEBACK,      // -o writeback, which excludes it
    VEXFS_PASSTHROUGH_REFUSED,        // a backing file registration failed with EPERM or the like
};

/// A session owns the libfuse session, its handler table and its config.
typedef struct vexfs_session vexfs_session;

/// Creates a session from FUSE mount options (e.g. "-o", "fsname=...,allow_other"); NULL on bad options.
vexfs_session *vexfs_session_new(int argc, const char **argv, const struct vexfs_handlers *handlers,
                                 const struct vexfs_session_config *config, void *userdata);
/// Mounts; 0 on success, -1 on failure (libfuse has printed why).
int vexfs_session_mount(vexfs_session *s, const char *mountpoint);
/// Installs SIGINT/SIGTERM/SIGHUP handlers that end the loop; 0 on success.
int vexfs_session_set_signal_handlers(vexfs_session *s);
/// An eventfd that becomes readable when a stop signal arrives (before the loop has answered the
/// requests in flight), or when vexfs_session_wake_stop_waiter is called.
int vexfs_session_stop_fd(vexfs_session *s);
void vexfs_session_wake_stop_waiter(vexfs_session *s);
/// Whether the kernel agreed that vexfs drops set-id bits and capabilities on write and truncate
/// (FUSE_HANDLE_KILLPRIV_V2, negotiated by the back-port below).
int vexfs_req_killpriv_v2(fuse_req_t req);
/// Whether FUSE_POSIX_ACL was negotiated (the kernel caches ACLs and enforces them).
int vexfs_req_posix_acl(fuse_req_t req);
/// Under FUSE_POSIX_ACL, gives the calling worker thread the caller's umask for a create, mkdir or
/// mknod (the store's filesystem applies it unless the parent has a default ACL); returns 1 when it
/// did, and then vexfs_caller_umask_end must follow the call.
int vexfs_req_caller_umask_begin(fuse_req_t req);
/// Back to the daemon's umask, 0, on this thread.
void vexfs_caller_umask_end(void);
/// The passthrough state (a vexfs_passthrough), from inside a request; fixed from INIT on, except
/// that it turns to REFUSED if the kernel refuses registrations.
int vexfs_req_passthrough(fuse_req_t req);
/// One line for the log and stats: "on", or why passthrough is off.
const char *vexfs_passthrough_reason(int state);
/// Records that the kernel refused to register a backing file: passthrough turns off for opens to
/// come. Returns 1 for the call that turned it off (the one to say so), 0 after.
int vexfs_req_passthrough_refused(fuse_req_t req);
/// Tells the kernel that its cached attributes of `ino` are stale (a write it did not see the end of,
/// such as through a shared mapping).
int vexfs_req_invalidate_attributes(fuse_req_t req, fuse_ino_t ino);
/// Whether a WRITE came from a descriptor opened with O_DIRECT (not from the page cache's writeback).
int vexfs_fi_is_direct_write(const struct fuse_file_info *fi);
/// Tells the kernel that its cached pages of `ino` from `off` for `len` bytes, and its attributes,
/// are stale. The kernel waits for pages being read meanwhile, so none survives with older bytes.
int vexfs_req_invalidate_range(fuse_req_t req, fuse_ino_t ino, off_t off, off_t len);
/// Runs the multi-threaded loop until unmount or a signal; returns libfuse's result.
int vexfs_session_loop(vexfs_session *s);
/// Unmounts (if still mounted), removes signal handlers and frees the session.
void vexfs_session_destroy(vexfs_session *s);

/// What INIT settled, read outside a request (the same as the vexfs_req_ forms).
int vexfs_session_killpriv_v2(vexfs_session *s);
int vexfs_session_posix_acl(vexfs_session *s);
int vexfs_session_passthrough(vexfs_session *s);
int vexfs_session_transport(vexfs_session *s);
int vexfs_req_transport(fuse_req_t req);

/// What a statx reply carries beyond a stat: the backing inode's birth time and its attribute flags
/// (statx(2)'s stx_btime, stx_attributes and stx_attributes_mask).
struct vexfs_statx_extra {
    int has_btime;
    int64_t btime_sec;
    uint32_t btime_nsec;
    uint64_t attributes;
    uint64_t attributes_mask;
};
/// Answers a statx request (statx.c): the attributes `st` (what GETATTR would answer) for `timeout`
/// seconds, with `extra` when there is a backing inode (NULL for vexfs's own virtual files).
int vexfs_reply_statx(fuse_req_t req, const struct stat *st, const struct vexfs_statx_extra *extra, double timeout);

/// The userdata given to vexfs_session_new, from inside a request.
void *vexfs_req_context(fuse_req_t req);

/// Answers a read straight from `fd` (splice where the kernel allows it): no copy through user space.
int vexfs_reply_read_fd(fuse_req_t req, int fd, size_t size, off_t off);
/// Copies a write request's buffer (possibly a pipe, when spliced) into `fd` at `off`; returns bytes or -errno.
ssize_t vexfs_write_bufvec_to_fd(struct fuse_bufvec *in, int fd, off_t off);

/// fuse_file_info bit-fields, set from Swift.
void vexfs_fi_set_open_flags(struct fuse_file_info *fi, int direct_io, int keep_cache, int noflush);
/// An opened directory whose entries the kernel may cache and keep across opens (FOPEN_CACHE_DIR,
/// FOPEN_KEEP_CACHE).
void vexfs_fi_set_cache_dir(struct fuse_file_info *fi);

// MARK: back-port of protocol 7.40 (backport_7_40.c)
// FUSE passthrough and FUSE_HANDLE_KILLPRIV_V2, which libfuse 3.14 cannot negotiate: the INIT reply
// is patched on the device, and these calls do what libfuse 3.17's fuse_passthrough_open/close and
// fuse_file_info.backing_id do. With libfuse 3.17.1 or later, see that file's first comment to
// delete it; these declarations keep their names and take libfuse's calls.

/// Registers the open file `fd` as a backing file with the kernel: a backing id (> 0), or -errno.
int vexfs_req_backing_open(fuse_req_t req, int fd);
/// Releases a backing id; 0 or -errno.
int vexfs_req_backing_close(fuse_req_t req, int backing_id);
/// Answers OPEN with handle `fh`, read and written by the kernel through `backing_id`; with
/// `noflush`, close(2) sends no FLUSH (FOPEN_NOFLUSH).
int vexfs_reply_open_backing(fuse_req_t req, uint64_t fh, int backing_id, int noflush);
/// Answers CREATE with the new entry and handle `fh`, read and written through `backing_id`.
int vexfs_reply_create_backing(fuse_req_t req, const struct fuse_entry_param *e, uint64_t fh, int backing_id);

#endif
