#define _GNU_SOURCE
#include "storefs.h"
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <unistd.h>

// <sys/mount.h> and <linux/mount.h> conflict on some systems; the values are the kernel's ABI.
#define VX_OPEN_TREE_CLONE 1
#define VX_AT_RECURSIVE 0x8000
#define VX_ATTR_ATIME_MASK 0x70ull
#define VX_MOUNT_ATTR_RDONLY 0x1ull
struct vx_mount_attr {
    uint64_t attr_set;
    uint64_t attr_clr;
    uint64_t propagation;
    uint64_t userns_fd;
};

const uint64_t vx_MOUNT_ATTR_RELATIME = 0x00;
const uint64_t vx_MOUNT_ATTR_NOATIME = 0x10;
const uint64_t vx_MOUNT_ATTR_STRICTATIME = 0x20;
const uint64_t vx_MOUNT_ATTR_NODIRATIME = 0x80;

int vx_private_mount(int dirfd, uint64_t atime, int nodiratime, int readonly) {
    int fd = (int)syscall(SYS_open_tree, dirfd, "", VX_OPEN_TREE_CLONE | O_CLOEXEC | AT_EMPTY_PATH | VX_AT_RECURSIVE);
    if (fd < 0) return -1;
    struct vx_mount_attr attr = {0};
    if (atime != UINT64_MAX) {
        attr.attr_set |= atime;
        attr.attr_clr |= VX_ATTR_ATIME_MASK;
    }
    if (nodiratime) attr.attr_set |= vx_MOUNT_ATTR_NODIRATIME;
    if (readonly) attr.attr_set |= VX_MOUNT_ATTR_RDONLY;
    if ((attr.attr_set || attr.attr_clr) &&
        syscall(SYS_mount_setattr, fd, "", AT_EMPTY_PATH | VX_AT_RECURSIVE, &attr, sizeof attr) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

uint64_t vx_mount_atime_of(int fd) {
    struct statvfs sv;
    if (fstatvfs(fd, &sv) != 0) return UINT64_MAX;
    uint64_t a = vx_MOUNT_ATTR_RELATIME;
    if (sv.f_flag & ST_NOATIME) a = vx_MOUNT_ATTR_NOATIME;
    else if (!(sv.f_flag & ST_RELATIME)) a = vx_MOUNT_ATTR_STRICTATIME;
    if (sv.f_flag & ST_NODIRATIME) a |= vx_MOUNT_ATTR_NODIRATIME;
    return a;
}

const unsigned long vx_FS_IOC_GETFLAGS = FS_IOC_GETFLAGS;
const unsigned long vx_FS_IOC_SETFLAGS = FS_IOC_SETFLAGS;
const unsigned long vx_FS_IOC_FSGETXATTR = FS_IOC_FSGETXATTR;
const unsigned long vx_FS_IOC_FSSETXATTR = FS_IOC_FSSETXATTR;
const unsigned long vx_FITRIM = FITRIM;
const unsigned long vx_FS_IOC_GETFSLABEL = FS_IOC_GETFSLABEL;
const unsigned long vx_FS_IOC_SETFSLABEL = FS_IOC_SETFSLABEL;
const int vx_FSLABEL_MAX = FSLABEL_MAX;

int vx_ioctl_ptr(int fd, unsigned long cmd, void *arg) { return ioctl(fd, cmd, arg); }

const int vx_O_TMPFILE = O_TMPFILE;
const unsigned vx_RENAME_WHITEOUT = RENAME_WHITEOUT;

int vx_statx_birth(int fd, int *has_btime, int64_t *btime_sec, uint32_t *btime_nsec, uint64_t *attributes,
                   uint64_t *attributes_mask) {
    struct statx sx;
    if (statx(fd, "", AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW, STATX_BTIME, &sx) != 0) return -1;
    *has_btime = (sx.stx_mask & STATX_BTIME) != 0;
    *btime_sec = sx.stx_btime.tv_sec;
    *btime_nsec = sx.stx_btime.tv_nsec;
    *attributes = sx.stx_attributes;
    *attributes_mask = sx.stx_attributes_mask;
    return 0;
}

int vx_bind_mount(const char *source, const char *target, int readonly) {
    if (mount(source, target, NULL, MS_BIND, NULL) != 0) return -1;
    if (readonly && mount(NULL, target, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY, NULL) != 0) {
        int e = errno;
        umount2(target, MNT_DETACH);
        errno = e;
        return -1;
    }
    return 0;
}
