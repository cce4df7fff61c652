#ifndef VEXFS_CREDENTIALS_H
#define VEXFS_CREDENTIALS_H
#include <sys/types.h>
#include <stddef.h>
#include <stdint.h>

/// Makes the calling thread, and only it, check file access as `uid`/`gid` with `groups`: the
/// filesystem ids (setfsuid, setfsgid) and the supplementary groups, by raw system calls, since
/// glibc's setgroups changes every thread of the process. Moving the filesystem uid off 0 drops the
/// thread's CAP_DAC_OVERRIDE and kin, so the kernel decides as it would for that user (mode bits,
/// ACLs, search permission). 0 on success; -1 on failure, after which the caller restores.
int vx_thread_become(uid_t uid, gid_t gid, const gid_t *groups, size_t count);
/// Gives the calling thread back the daemon's identity: filesystem ids 0 and `groups`.
int vx_thread_restore(const gid_t *groups, size_t count);

/// Drops CAP_FSETID from the calling thread's effective set, keeping the rest, and saves the
/// thread's capability sets in `saved` (for vx_thread_restore_capabilities). Credentials the kernel
/// captures meanwhile (a FUSE backing file's) then write as someone who may not keep set-id bits.
int vx_thread_drop_fsetid(uint32_t saved[6]);
int vx_thread_restore_capabilities(const uint32_t saved[6]);
/// Sets the calling thread's filesystem gid alone (no capability moves with it) and returns the
/// one it had.
gid_t vx_thread_set_fsgid(gid_t gid);
/// Sets this thread's filesystem uid; returns the previous one ((uid_t)-1 only reads it).
uid_t vx_thread_set_fsuid(uid_t uid);

#endif
