import CFuse
import CoreMetrics
import Glibc
import SystemPackage
import VexSemantic
import VexStore

/// One mount of a store: creates the libfuse session, mounts, detaches unless asked not to, serves
/// requests until unmount or a signal, and unmounts.
public enum Session {
    public enum Failure: Error, CustomStringConvertible {
        case badOptions(String)
        case mountFailed(String)
        case signalHandlers
        case accessTimes(String)
        public var description: String {
            switch self {
            case .accessTimes(let why): "cannot reach the store through a private mount (for the atime options or norecovery): \(why)"
            case .badOptions(let o): "libfuse rejected the mount options: \(o)"
            case .mountFailed(let m): "cannot mount on \(m)"
            case .signalHandlers: "cannot install signal handlers"
            }
        }
    }

    /// Serves `store` on `mountpoint` (both absolute) until unmounted. Without `foreground` the
    /// calling process detaches: the parent exits 0 once the mount is in place, and `detached` runs
    /// in the process that serves. `served` runs once the mount serves, with a function that renders
    /// `.vexfs/stats` without a request (never through the mount: the daemon must not call itself);
    /// `stopping` once the kernel has stopped sending requests, before the indexes are persisted.
    public static func run(store: Store, mountpoint: String, options: MountOptions,
                           detached: () -> Void = {}, prepare: (any MetricsFactory) -> (any SemanticService)? = { _ in nil },
                           served: (_ stats: @escaping @Sendable () -> String) -> Void = { _ in },
                           stopping: () -> Void = {}) throws(Failure) {
        do throws(Errno) {
            try store.reachThroughPrivateMount(atime: options.atime, nodiratime: options.nodiratime, readOnly: options.norecovery)
        } catch { throw .accessTimes(error.description) }
        let fs = Filesystem(store: store, options: options, mountpoint: mountpoint)
        let context = Unmanaged.passRetained(fs)
        defer { context.release() }

        let kernelOptions = ["fsname=\(escape(store.rootPath))", "subtype=vexfs", "default_permissions"]
            + options.kernelOptions
        let arguments: [String] = ["vexfs", "-o", kernelOptions.joined(separator: ",")]
        var argv: [UnsafePointer<CChar>?] = arguments.map { UnsafePointer(strdup($0)) }
        defer { argv.forEach { free(UnsafeMutablePointer(mutating: $0)) } }
        var config = vexfs_session_config(writeback: options.writeback ? 1 : 0, splice: options.splice ? 1 : 0,
                                          max_threads: UInt32(options.threads), clone_fd: options.cloneFD ? 1 : 0,
                                          killpriv_v2: options.killprivV2 ? 1 : 0, passthrough: options.passthrough ? 1 : 0,
                                          posix_acl: options.posixACL ? 1 : 0, io_uring: options.ioUring.map { $0 ? 1 : 0 } ?? VEXFS_IO_URING_WITH_PASSTHROUGH,
                                          flock_locks: options.forwardsFlock ? 1 : 0)
        var handlers = Handlers.table
        let session = vexfs_session_new(Int32(argv.count), &argv, &handlers, &config, context.toOpaque())
        guard let session else { throw .badOptions(kernelOptions.joined(separator: ",")) }
        defer { vexfs_session_destroy(session) }
        guard vexfs_session_set_signal_handlers(session) == 0 else { throw .signalHandlers }
        // libfuse sizes its worker threads' stacks from this variable when it starts them.
        setenv("FUSE_THREAD_STACK", String(options.stackSize), 1)
        guard vexfs_session_mount(session, mountpoint) == 0 else { throw .mountFailed(mountpoint) }
        // Detach unless in the foreground; nothing before this point may have started a thread. The
        // parent returns only when the child is ready to serve, after reconciliation, so a query
        // made right after `vexfs mount` returns sees every file.
        var ready: [Int32] = [-1, -1]
        if !options.foreground {
            guard pipe(&ready) == 0 else { throw .mountFailed(mountpoint) }
            let pid = fork()
            if pid < 0 { throw .mountFailed(mountpoint) }
            if pid > 0 {
                close(ready[1])
                var status: UInt8 = 1
                let n = read(ready[0], &status, 1)
                _exit(n == 1 && status == 0 ? 0 : 1)
            }
            close(ready[0])
            setsid()
        }
        detached()
        fs.semantic = prepare(fs.metrics.factory)
        if !options.foreground {
            var ok: UInt8 = 0
            _ = write(ready[1], &ok, 1)
            close(ready[1])
            _ = chdir("/")
            let null = open("/dev/null", O_RDWR)
            if null >= 0 {
                for fd in [Int32(0), 1, 2] { dup2(null, fd) }
                if null > 2 { close(null) }
            }
        }
        // The session outlives every call of the renderer: it is destroyed after `stopping`.
        nonisolated(unsafe) let live = session
        served { [fs] in fs.renderStats(live) }
        let watcher = StopWatcher(fd: vexfs_session_stop_fd(session)) { [fs] in fs.semantic?.beginStopping() }
        _ = vexfs_session_loop(session)
        vexfs_session_wake_stop_waiter(session)
        watcher.join()
        // Unmounted: finish the index work and persist it before the store is released.
        stopping()
        fs.semantic?.close()
    }

    /// A thread that waits for a stop signal (the session's stop descriptor) and tells the vector
    /// layer at once: the loop itself ends only after the requests in flight are answered.
    private final class StopWatcher: @unchecked Sendable {
        let fd: Int32
        let heard: @Sendable () -> Void
        private var thread: pthread_t?

        init(fd: Int32, heard: @escaping @Sendable () -> Void) {
            self.fd = fd
            self.heard = heard
            guard fd >= 0 else { return }
            var t = pthread_t()
            let box = Unmanaged.passRetained(self).toOpaque()
            if pthread_create(&t, nil, { arg in
                let watcher = Unmanaged<StopWatcher>.fromOpaque(arg!).takeRetainedValue()
                var count: UInt64 = 0
                while read(watcher.fd, &count, 8) < 0 && errno == EINTR {}
                watcher.heard()
                return nil
            }, box) == 0 {
                thread = t
            } else {
                Unmanaged<StopWatcher>.fromOpaque(box).release()
            }
        }

        /// Returns once the thread has ended (wake it first).
        func join() {
            if let thread { pthread_join(thread, nil) }
        }
    }

    /// fsname is part of a comma-separated option list.
    private static func escape(_ path: String) -> String {
        var out = ""
        for c in path {
            if c == "\\" || c == "," { out.append("\\") }
            out.append(c)
        }
        return out
    }
}
