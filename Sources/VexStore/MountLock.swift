import CLinux
import Glibc
import SystemPackage

/// One daemon per store: the daemon holds an exclusive flock on STORE/.vexfs/mount.lock for as long
/// as it runs (the descriptor survives the fork into the background). `vexfs unmount` waits on the
/// same lock, so it returns only when the daemon has finished its work and exited.
public enum MountLock {
    static func path(_ storePath: String) -> String { storePath + "/" + Store.reservedName + "/mount.lock" }

    public enum Failure: Error { case held, system(Errno) }

    /// Takes the lock, or fails with `.held` when another daemon serves the store. Keep the returned
    /// descriptor open for the life of the daemon.
    public static func acquire(storePath: String) throws(Failure) -> Int32 {
        let fd = open(path(storePath), O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw .system(Errno.current) }
        if vx_flock(fd, LOCK_EX | LOCK_NB) != 0 {
            let e = errno
            close(fd)
            throw e == EWOULDBLOCK ? .held : .system(Errno(rawValue: e))
        }
        return fd
    }

    /// Writes the serving daemon's pid into the lock file, for people and tests that need to find it.
    public static func record(pid: pid_t, in fd: Int32) {
        let text = "\(pid)\n"
        _ = ftruncate(fd, 0)
        _ = text.withCString { pwrite(fd, $0, strlen($0), 0) }
    }

    /// Waits until no daemon holds the lock; false on time-out.
    public static func waitForRelease(storePath: String, timeoutSeconds: Double) -> Bool {
        let fd = open(path(storePath), O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return true }  // never mounted
        defer { close(fd) }
        let steps = Int(timeoutSeconds * 100)
        for _ in 0..<max(steps, 1) {
            if vx_flock(fd, LOCK_SH | LOCK_NB) == 0 {
                vx_flock(fd, LOCK_UN)
                return true
            }
            usleep(10_000)
        }
        return false
    }
}
