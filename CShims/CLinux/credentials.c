#define _GNU_SOURCE
#include "credentials.h"
#include <sys/syscall.h>
#include <unistd.h>

int vx_thread_restore(const gid_t *groups, size_t count) {
    syscall(SYS_setfsuid, 0);
    syscall(SYS_setfsgid, 0);
    if (syscall(SYS_setgroups, count, groups) != 0) return -1;
    // setfsuid and setfsgid return the old id whatever happens: read them back to know.
    if ((uid_t)syscall(SYS_setfsuid, (uid_t)-1) != 0 || (gid_t)syscall(SYS_setfsgid, (gid_t)-1) != 0) return -1;
    return 0;
}

int vx_thread_become(uid_t uid, gid_t gid, const gid_t *groups, size_t count) {
    if (syscall(SYS_setgroups, count, groups) != 0) return -1;
    syscall(SYS_setfsgid, gid);
    syscall(SYS_setfsuid, uid);
    if ((uid_t)syscall(SYS_setfsuid, (uid_t)-1) != uid || (gid_t)syscall(SYS_setfsgid, (gid_t)-1) != gid) return -1;
    return 0;
}
