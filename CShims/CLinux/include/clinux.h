// Linux-only system calls and constants that Swift's Glibc module does not expose (it is built without
// _GNU_SOURCE). Calls taking an `opath_fd` reach the file through /proc/self/fd, since an O_PATH
// descriptor cannot itself be read, written, chmod-ed or asked for xattrs.
#ifndef VEXFS_CLINUX_H
#define VEXFS_CLINUX_H
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

extern const int vx_O_PATH;
extern const int vx_AT_EMPTY_PATH;
extern const int vx_O_DIRECT;
extern const unsigned vx_RENAME_NOREPLACE;
extern const unsigned vx_RENAME_EXCHANGE;
extern const long vx_UTIME_NOW;
extern const long vx_UTIME_OMIT;

int vx_renameat2(int olddirfd, const char *oldname, int newdirfd, const char *newname, unsigned flags);
ssize_t vx_copy_file_range(int fd_in, int64_t *off_in, int fd_out, int64_t *off_out, size_t len, unsigned flags);
/// flock(2); Swift cannot call it by name, as `struct flock` shadows it.
int vx_flock(int fd, int operation);
int vx_fallocate(int fd, int mode, int64_t offset, int64_t len);
/// Sets the calling thread's own nice value (setpriority on its thread id: Linux keeps one per
/// thread). Raising priority (below 0) needs CAP_SYS_NICE; without it this fails and changes nothing.
int vx_nice_this_thread(int niceness);
/// Lowers the calling thread's nice value by `steps` (not below -20) and returns the value it had,
/// for vx_nice_this_thread to restore. Without CAP_SYS_NICE nothing changes.
int vx_raise_this_thread(int steps);

/// Opens the file behind an O_PATH descriptor with real access flags.
int vx_reopen(int opath_fd, int flags);
int vx_chmod(int opath_fd, mode_t mode);
/// Sets times; nsec may be vx_UTIME_NOW or vx_UTIME_OMIT. Works on symlinks too.
int vx_utimens(int opath_fd, int is_symlink, int64_t asec, long ansec, int64_t msec, long mnsec);
int vx_futimens(int fd, int64_t asec, long ansec, int64_t msec, long mnsec);
/// linkat of the object behind an O_PATH descriptor.
int vx_link(int opath_fd, int newdirfd, const char *newname);

ssize_t vx_getxattr(int opath_fd, const char *name, void *value, size_t size);
int vx_setxattr(int opath_fd, const char *name, const void *value, size_t size, int flags);
ssize_t vx_listxattr(int opath_fd, char *list, size_t size);
int vx_removexattr(int opath_fd, const char *name);

/// The kernel's handle for the file behind `fd` (an opaque blob of at most VX_HANDLE_MAX bytes), and
/// the id of the mount it lives on. Returns the blob's length, or -1.
enum { VX_HANDLE_MAX = 128 };
int vx_handle_of(int fd, unsigned char *blob, int *mount_id);
/// Reopens a file from its handle blob, as an O_PATH descriptor; mount_fd is a real descriptor of any
/// directory on the same mount. Needs CAP_DAC_READ_SEARCH.
int vx_open_handle(int mount_fd, const unsigned char *blob, int length);

/// removexattr on an open descriptor.
int vx_fremovexattr(int fd, const char *name);
/// xattrs by path, not following a final symlink.
ssize_t vx_lgetxattr(const char *path, const char *name, void *value, size_t size);
int vx_lsetxattr(const char *path, const char *name, const void *value, size_t size, int flags);

/// An anonymous in-memory file holding `length` bytes of `data`, positioned at 0; -1 on failure.
int vx_memfd_with(const char *name, const void *data, size_t length);

/// One line to syslog(3) (variadic, so out of Swift's reach), never read as a format.
void vx_syslog(int priority, const char *line);

#include "credentials.h"
#include "storefs.h"

#endif
