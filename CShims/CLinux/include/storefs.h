#ifndef VEXFS_STOREFS_H
#define VEXFS_STOREFS_H
// What the store's own filesystem offers that the mount passes through: a private mount of the
// store with its own atime rule, and the inode flags of chattr(1).
#include <stdint.h>
#include <sys/types.h>

/// The atime rules of mount(8), as the MOUNT_ATTR_* values mount_setattr(2) takes.
extern const uint64_t vx_MOUNT_ATTR_RELATIME;
extern const uint64_t vx_MOUNT_ATTR_NOATIME;
extern const uint64_t vx_MOUNT_ATTR_STRICTATIME;
extern const uint64_t vx_MOUNT_ATTR_NODIRATIME;

/// A detached copy of the mount tree at `dirfd` (open_tree(2) with OPEN_TREE_CLONE, submounts
/// included) with the atime rule `atime` (one of the first three above, or UINT64_MAX to keep the
/// store's) plus `nodiratime`, and read-only with `readonly` (nothing written through it, atime
/// included). Returns an O_PATH descriptor of its top, or -1 with errno set. Needs CAP_SYS_ADMIN.
/// The copy lives while any descriptor opened through it does.
int vx_private_mount(int dirfd, uint64_t atime, int nodiratime, int readonly);
/// The atime rule and nodiratime of the mount `fd` lives on (from statfs(2)'s f_flags), as
/// MOUNT_ATTR_* bits; for tests.
uint64_t vx_mount_atime_of(int fd);

extern const unsigned long vx_FS_IOC_GETFLAGS;
extern const unsigned long vx_FS_IOC_SETFLAGS;
extern const unsigned long vx_FS_IOC_FSGETXATTR;
extern const unsigned long vx_FS_IOC_FSSETXATTR;
/// fstrim(8)'s ioctl (struct fstrim_range: start, len, minlen, three u64s) and the filesystem label's
/// (a buffer of FSLABEL_MAX bytes).
extern const unsigned long vx_FITRIM;
extern const unsigned long vx_FS_IOC_GETFSLABEL;
extern const unsigned long vx_FS_IOC_SETFSLABEL;
extern const int vx_FSLABEL_MAX;
/// ioctl(2) with a pointer argument.
int vx_ioctl_ptr(int fd, unsigned long cmd, void *arg);
/// statx(2) of the file at `fd` (AT_EMPTY_PATH; a symlink's own) for what stat(2) lacks: its birth
/// time, when the filesystem records one (`has_btime`), and its attribute flags (append, immutable,
/// nodump, ...) with the mask of those the filesystem supports. 0, or -1 with errno set.
int vx_statx_birth(int fd, int *has_btime, int64_t *btime_sec, uint32_t *btime_nsec, uint64_t *attributes,
                   uint64_t *attributes_mask);
/// Makes the mount at `source` appear at `target` too (a bind mount of its root, one superblock),
/// read-only there when `readonly`. 0, or -1 with errno set (nothing left mounted).
int vx_bind_mount(const char *source, const char *target, int readonly);
/// O_TMPFILE, which Swift's Glibc module does not name.
extern const int vx_O_TMPFILE;
extern const unsigned vx_RENAME_WHITEOUT;

#endif
