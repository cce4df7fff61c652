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

#include <linux/capability.h>

int vx_thread_drop_fsetid(uint32_t saved[6]) {
    struct __user_cap_header_struct header = { _LINUX_CAPABILITY_VERSION_3, 0 };
    struct __user_cap_data_struct data[2];
    if (syscall(SYS_capget, &header, data) != 0) return -1;
    for (int i = 0; i < 2; i++) {
        saved[3 * i] = data[i].effective;
        saved[3 * i + 1] = data[i].permitted;
        saved[3 * i + 2] = data[i].inheritable;
    }
    data[CAP_TO_INDEX(CAP_FSETID)].effective &= ~CAP_TO_MASK(CAP_FSETID);
    return (int)syscall(SYS_capset, &header, data);
}

int vx_thread_restore_capabilities(const uint32_t saved[6]) {
    struct __user_cap_header_struct header = { _LINUX_CAPABILITY_VERSION_3, 0 };
    struct __user_cap_data_struct data[2];
    for (int i = 0; i < 2; i++) {
        data[i].effective = saved[3 * i];
        data[i].permitted = saved[3 * i + 1];
        data[i].inheritable = saved[3 * i + 2];
    }
    return (int)syscall(SYS_capset, &header, data);
}

gid_t vx_thread_set_fsgid(gid_t gid) { return (gid_t)syscall(SYS_setfsgid, gid); }
uid_t vx_thread_set_fsuid(uid_t uid) { return (uid_t)syscall(SYS_setfsuid, uid); }
