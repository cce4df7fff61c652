#define _GNU_SOURCE
#include "clinux.h"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <syslog.h>
#include <unistd.h>

const int vx_O_PATH = O_PATH;
const int vx_AT_EMPTY_PATH = AT_EMPTY_PATH;
const int vx_O_DIRECT = O_DIRECT;
const unsigned vx_RENAME_NOREPLACE = RENAME_NOREPLACE;
const unsigned vx_RENAME_EXCHANGE = RENAME_EXCHANGE;
const long vx_UTIME_NOW = UTIME_NOW;
const long vx_UTIME_OMIT = UTIME_OMIT;

#define PROC_PATH(buf, fd) char buf[32]; snprintf(buf, sizeof buf, "/proc/self/fd/%d", fd)

int vx_renameat2(int olddirfd, const char *oldname, int newdirfd, const char *newname, unsigned flags) {
    return renameat2(olddirfd, oldname, newdirfd, newname, flags);
}

ssize_t vx_copy_file_range(int fd_in, int64_t *off_in, int fd_out, int64_t *off_out, size_t len, unsigned flags) {
    loff_t in = *off_in, out = *off_out;
    ssize_t n = copy_file_range(fd_in, &in, fd_out, &out, len, flags);
    *off_in = in; *off_out = out;
    return n;
}

int vx_flock(int fd, int operation) { return flock(fd, operation); }

int vx_fallocate(int fd, int mode, int64_t offset, int64_t len) { return fallocate(fd, mode, offset, len); }

int vx_reopen(int opath_fd, int flags) {
    PROC_PATH(p, opath_fd);
    return open(p, flags & ~O_NOFOLLOW);
}

int vx_chmod(int opath_fd, mode_t mode) {
    PROC_PATH(p, opath_fd);
    return chmod(p, mode);
}

int vx_utimens(int opath_fd, int is_symlink, int64_t asec, long ansec, int64_t msec, long mnsec) {
    struct timespec ts[2] = {{asec, ansec}, {msec, mnsec}};
    if (is_symlink) return utimensat(opath_fd, "", ts, AT_EMPTY_PATH);
    PROC_PATH(p, opath_fd);
    return utimensat(AT_FDCWD, p, ts, 0);
}

int vx_futimens(int fd, int64_t asec, long ansec, int64_t msec, long mnsec) {
    struct timespec ts[2] = {{asec, ansec}, {msec, mnsec}};
    return futimens(fd, ts);
}

int vx_link(int opath_fd, int newdirfd, const char *newname) {
    if (linkat(opath_fd, "", newdirfd, newname, AT_EMPTY_PATH) == 0) return 0;
    if (errno != EPERM && errno != ENOENT && errno != EINVAL) return -1;
    PROC_PATH(p, opath_fd);  // without CAP_DAC_READ_SEARCH, follow the magic link instead
    return linkat(AT_FDCWD, p, newdirfd, newname, AT_SYMLINK_FOLLOW);
}

ssize_t vx_getxattr(int opath_fd, const char *name, void *value, size_t size) {
    PROC_PATH(p, opath_fd);
    return getxattr(p, name, value, size);
}

int vx_setxattr(int opath_fd, const char *name, const void *value, size_t size, int flags) {
    PROC_PATH(p, opath_fd);
    return setxattr(p, name, value, size, flags);
}

ssize_t vx_listxattr(int opath_fd, char *list, size_t size) {
    PROC_PATH(p, opath_fd);
    return listxattr(p, list, size);
}

int vx_removexattr(int opath_fd, const char *name) {
    PROC_PATH(p, opath_fd);
    return removexattr(p, name);
}

int vx_handle_of(int fd, unsigned char *blob, int *mount_id) {
    struct { struct file_handle h; unsigned char bytes[VX_HANDLE_MAX]; } fh;
    fh.h.handle_bytes = VX_HANDLE_MAX;
    if (name_to_handle_at(fd, "", &fh.h, mount_id, AT_EMPTY_PATH) != 0) return -1;
    int length = (int)(sizeof(struct file_handle) + fh.h.handle_bytes);
    if (length > VX_HANDLE_MAX) { errno = EOVERFLOW; return -1; }
    memcpy(blob, &fh, (size_t)length);
    return length;
}

int vx_open_handle(int mount_fd, const unsigned char *blob, int length) {
    struct { struct file_handle h; unsigned char bytes[VX_HANDLE_MAX]; } fh;
    if (length < (int)sizeof(struct file_handle) || length > VX_HANDLE_MAX) { errno = EINVAL; return -1; }
    memcpy(&fh, blob, (size_t)length);
    return open_by_handle_at(mount_fd, &fh.h, O_PATH | O_CLOEXEC);
}

int vx_memfd_with(const char *name, const void *data, size_t length) {
    int fd = memfd_create(name, MFD_CLOEXEC);
    if (fd < 0) return -1;
    const char *p = data;
    size_t left = length;
    while (left > 0) {
        ssize_t n = write(fd, p, left);
        if (n < 0) { if (errno == EINTR) continue; close(fd); return -1; }
        p += n; left -= (size_t)n;
    }
    lseek(fd, 0, SEEK_SET);
    return fd;
}

int vx_fremovexattr(int fd, const char *name) { return fremovexattr(fd, name); }

ssize_t vx_lgetxattr(const char *path, const char *name, void *value, size_t size) {
    return lgetxattr(path, name, value, size);
}

int vx_lsetxattr(const char *path, const char *name, const void *value, size_t size, int flags) {
    return lsetxattr(path, name, value, size, flags);
}

void vx_syslog(int priority, const char *line) { syslog(priority, "%s", line); }

int vx_nice_this_thread(int niceness) {
    return setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), niceness);
}

int vx_raise_this_thread(int steps) {
    id_t tid = (id_t)syscall(SYS_gettid);
    errno = 0;
    int was = getpriority(PRIO_PROCESS, tid);
    if (errno != 0) return 0;
    int want = was - steps < -20 ? -20 : was - steps;
    (void)setpriority(PRIO_PROCESS, tid, want);
    return was;
}
