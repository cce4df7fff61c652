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

    /// The same for a mount that writes nothing into the store (`-o ro,norecovery`): the lock file
    /// is taken if it is there, never made or written (flock needs no write access). -1 when there
    /// is none: the store has never been mounted, so no daemon's state can change under this one.
    public static func acquireExisting(storePath: String) throws(Failure) -> Int32 {
        let fd = open(path(storePath), O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        guard fd >= 0 else {
            if errno == ENOENT { return -1 }
            throw .system(Errno.current)
        }
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

    /// The daemon serving the store, as it recorded itself (its pid and mountpoint), while it holds
    /// the lock; nil when none does.
    public static func holder(storePath: String) -> (pid: pid_t, mountpoint: String)? {
        let fd = open(path(storePath), O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        if vx_flock(fd, LOCK_SH | LOCK_NB) == 0 {  // nobody holds it
            vx_flock(fd, LOCK_UN)
            return nil
        }
        var buffer = [UInt8](repeating: 0, count: 4200)
        let n = pread(fd, &buffer, buffer.count, 0)
        guard n > 0 else { return nil }
        let lines = String(decoding: buffer[..<n], as: UTF8.self).split(separator: "\n")
        guard lines.count == 2, let pid = pid_t(lines[0]) else { return nil }
        return (pid, String(lines[1]))
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

/// On a shared store (`-o shared`) the one-daemon rule is per mount id: each daemon holds an exclusive
/// flock on STORE/.vexfs/mounts/ID/mount.lock (the distributed filesystem makes it exclusive across
/// machines, so two machines cannot use one id) and a shared one on STORE/.vexfs/mount.lock, which
/// keeps a mount of the store that is not shared (exclusive there) away, and is kept away by one.
extension MountLock {
    static func path(_ storePath: String, id: String) -> String {
        storePath + "/" + Store.reservedName + "/mounts/" + id + "/mount.lock"
    }

    /// Both locks: the store's (shared) and the id's (exclusive). Keep both descriptors open.
    public static func acquireShared(storePath: String, id: String) throws(Failure) -> (store: Int32, mount: Int32) {
        let state = storePath + "/" + Store.reservedName
        for dir in [state + "/mounts", state + "/mounts/" + id] where mkdir(dir, 0o700) != 0 && errno != EEXIST {
            throw .system(Errno.current)
        }
        let store = open(path(storePath), O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard store >= 0 else { throw .system(Errno.current) }
        if vx_flock(store, LOCK_SH | LOCK_NB) != 0 {
            let e = errno
            close(store)
            throw e == EWOULDBLOCK ? .held : .system(Errno(rawValue: e))
        }
        let mount = open(path(storePath, id: id), O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard mount >= 0 else { close(store); throw .system(Errno.current) }
        if vx_flock(mount, LOCK_EX | LOCK_NB) != 0 {
            let e = errno
            close(mount)
            close(store)
            throw e == EWOULDBLOCK ? .held : .system(Errno(rawValue: e))
        }
        return (store, mount)
    }

    /// Writes the daemon's pid and mountpoint into its id's lock file: `vexfs unmount MOUNTPOINT`
    /// finds the lock to wait on by them.
    public static func record(pid: pid_t, mountpoint: String, in fd: Int32) {
        let text = "\(pid)\n\(mountpoint)\n"
        _ = ftruncate(fd, 0)
        _ = text.withCString { pwrite(fd, $0, strlen($0), 0) }
    }

    /// The lock file of the shared mount of `storePath` whose daemon runs here and serves `mountpoint`.
    public static func sharedPath(storePath: String, mountpoint: String) -> String? {
        let mounts = storePath + "/" + Store.reservedName + "/mounts"
        guard let ids = try? StatePaths.entries(mounts).directories else { return nil }
        for id in ids {
            let p = path(storePath, id: id)
            guard let f = fopen(p, "r") else { continue }
            defer { fclose(f) }
            var buffer = [CChar](repeating: 0, count: 4200)
            let n = fread(&buffer, 1, buffer.count - 1, f)
            let lines = String(decoding: buffer[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self).split(separator: "\n")
            guard lines.count == 2, lines[1] == mountpoint, let pid = pid_t(lines[0]), kill(pid, 0) == 0 else { continue }
            return p
        }
        return nil
    }

    /// Waits until no daemon holds the lock file at `path`; false on time-out.
    public static func waitForRelease(lockPath: String, timeoutSeconds: Double) -> Bool {
        let fd = open(lockPath, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return true }
        defer { close(fd) }
        for _ in 0..<max(Int(timeoutSeconds * 100), 1) {
            if vx_flock(fd, LOCK_SH | LOCK_NB) == 0 {
                vx_flock(fd, LOCK_UN)
                return true
            }
            usleep(10_000)
        }
        return false
    }
}
