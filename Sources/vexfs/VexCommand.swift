// The `vexfs` command: mount a store, unmount it. Checks what a user can get wrong (a missing store, a
// busy or missing mountpoint, no /dev/fuse) before libfuse is involved, and says so in one line.
import ArgumentParser
import CLinux
import Foundation
import Glibc
import Logging
import VexEmbed
import VexFUSE
import VexKernels
import VexOps
import VexSemantic
import VexStore

@main
struct VexCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vexfs",
        abstract: "A vector filesystem: mount a directory of files, keep vectors in it, ask for neighbours.",
        subcommands: [Mount.self, Unmount.self, Status.self, Wait.self, Search.self, Check.self, Bench.self]
    )

    /// Called as a mount helper (`mount -t fuse.vexfs`, `mount.vexfs`), the arguments become a
    /// `mount` command first (MountHelper.swift).
    static func main() {
        let names = Set(configuration.subcommands.map { $0._commandName } + ["help"])
        guard let arguments = MountHelper.arguments(program: CommandLine.arguments[0], Array(CommandLine.arguments.dropFirst()),
                                                    subcommands: names) else { return }
        main(arguments)
    }
}

/// A one-line error and a non-zero exit.
struct UserError: Error, CustomStringConvertible {
    let description: String
    init(_ message: String) { description = message }
}

struct Mount: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Mount STORE on MOUNTPOINT.")

    @Argument(help: "The backing directory; its files are the truth.") var store: String
    @Argument(help: "Where the filesystem appears.") var mountpoint: String
    @Flag(name: .short, help: "Stay in the foreground.") var foreground = false
    @Option(help: "Most FUSE worker threads (default: libfuse's).") var threads: Int?
    @Option(name: .short, help: """
        Mount options, comma-separated (README "Use" says what each does): passthrough, no_passthrough, \
        writeback, no_writeback, posix_acl, no_posix_acl, keep_cache, no_keep_cache, splice, no_splice, \
        clone_fd, no_clone_fd, killpriv, no_killpriv, io_uring, no_io_uring, attr_timeout=S, entry_timeout=S, negative_timeout=S, \
        timeout=S, descriptor_budget=N, stack_size=BYTES, stack_budget=BYTES, pool_buffers=S:M:L, \
        index=auto|auto:N|flat|hnsw, hnsw_m=N, ef_construction=N, ef_search=N, embedder=URL, \
        embed_model=NAME, embed_query_model=NAME, embed_chunk=N, embed_batch=N, keywords=on|off, max_user_queries=N, query_seconds=S, max_user_collections=N, open_collections=N, max_user_index_mb=N, max_user_state_mb=N, \
        log_level=LEVEL, norecovery (with ro: bring nothing up to date, write nothing); anything else \
        (allow_other, ro, ...) goes to the kernel mount.
        """)
    var options: [String] = []

    func run() throws {
        var mountOptions = MountOptions()
        mountOptions.foreground = foreground
        if let threads {
            guard threads > 0 && threads <= 1024 else { throw UserError("--threads must be between 1 and 1024") }
            mountOptions.threads = threads
        }
        do {
            for list in options { try mountOptions.apply(list) }
        } catch { throw UserError(error.description) }
        if let conflict = mountOptions.conflict { throw UserError(conflict) }
        let norecovery = mountOptions.norecovery

        // Detached, the daemon has no terminal: its log goes to syslog (journald), as sshfs's does.
        let level = Logger.Level(rawValue: mountOptions.logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            if foreground {
                var handler = StreamLogHandler.standardError(label: label)
                handler.logLevel = level
                return handler
            }
            return SyslogLogHandler(level: level)
        }
        let logger = Logger(label: "vexfs")

        let storePath = try directory(store, role: "store")
        let mountPath = try directory(mountpoint, role: "mountpoint")
        guard storePath != mountPath, !storePath.hasPrefix(mountPath + "/"), !mountPath.hasPrefix(storePath + "/") else {
            throw UserError("store and mountpoint must not contain each other")
        }
        if MountTable.entry(at: mountPath) != nil { throw UserError("mountpoint \(mountPath) is busy: something is mounted there") }
        guard access("/dev/fuse", R_OK | W_OK) == 0 else { throw UserError("/dev/fuse is missing or not usable: is the fuse module loaded?") }

        // The kernel has applied the caller's umask already; ours must not apply a second one.
        // The descriptor limit decides the default budget, so it is raised first.
        umask(0)
        raiseDescriptorLimit()
        let store: Store
        do {
            store = try Store(rootPath: storePath, descriptorBudget: mountOptions.descriptorBudget ?? Store.defaultDescriptorBudget,
                              makesState: !norecovery)
        } catch {
            throw UserError("cannot open store \(storePath): \(error)")
        }
        let lock: Int32
        let sharedID = mountOptions.semantic.sharedID
        // A second mount of a store this machine serves already: the kernel's mount of it appears at
        // the new mountpoint too, as a second mount of one ext4 device shares its superblock.
        if sharedID == nil, let served = servingMount(of: storePath) {
            // That daemon has brought the state up to date and writes it: not what norecovery asks.
            if norecovery { throw UserError("store \(storePath) is served already, on \(served): norecovery mounts only a store no vexfs serves") }
            let readOnly = mountOptions.kernelOptions.contains("ro")
            guard vx_bind_mount(served, mountPath, readOnly ? 1 : 0) == 0 else {
                throw UserError("cannot mount \(storePath) a second time on \(mountPath): \(String(cString: strerror(errno)))")
            }
            return
        }
        do {
            if let sharedID {
                lock = try acquireLock(storePath) { () throws(MountLock.Failure) in try MountLock.acquireShared(storePath: storePath, id: sharedID).mount }
            } else if norecovery {
                lock = try acquireLock(storePath) { () throws(MountLock.Failure) in try MountLock.acquireExisting(storePath: storePath) }
            } else {
                lock = try acquireLock(storePath) { () throws(MountLock.Failure) in try MountLock.acquire(storePath: storePath) }
            }
        } catch .held {
            if let sharedID {
                throw UserError("store \(storePath) is mounted by a vexfs without -o shared, or by one with the id \(sharedID) (give each machine its own: -o shared=ID)")
            }
            throw UserError("store \(storePath) is already mounted by another vexfs (mounts on several machines need -o shared)")
        } catch { throw UserError("cannot lock store \(storePath): \(error)") }
        // Under norecovery the vector layer reads the store and its state through a private noatime
        // copy of the store's mount (its descriptor, held for good, named through /proc): what it
        // reads moves no access time either. (The daemon's files go through a read-only one.)
        let semanticRoot: String
        if !norecovery {
            semanticRoot = storePath
        } else {
            let top = open(storePath, vx_O_PATH | O_DIRECTORY | O_CLOEXEC)
            let copy = top >= 0 ? vx_private_mount(top, vx_MOUNT_ATTR_NOATIME, 0, 0) : -1
            let why = errno
            if top >= 0 { close(top) }
            guard copy >= 0 else { throw UserError("cannot mount \(storePath): no private mount of it for norecovery: \(String(cString: strerror(why)))") }
            semanticRoot = "/proc/self/fd/\(copy)"
        }
        do {
            if norecovery { try StoreFormat.check(stateRoot: semanticRoot + "/.vexfs") } else { try StoreFormat.adopt(stateRoot: storePath + "/.vexfs") }
        } catch { throw UserError("cannot mount \(storePath): \(error)") }
        // A shared mount's private state is on a local disk (its lock, like the store's, is held
        // until the process ends).
        var stateDirectory: String?
        if let sharedID {
            do {
                stateDirectory = try SharedState.prepare(storeRoot: storePath, id: sharedID, given: mountOptions.semantic.stateDirectory).path
            } catch { throw UserError("cannot mount \(storePath): \(error)") }
        } else if mountOptions.semantic.stateDirectory != nil {
            throw UserError("-o state= is for a shared store (-o shared): a store of one mount keeps its state in STORE/.vexfs")
        }
        // The lock is never closed here: the kernel drops it when this process's files are closed
        // in exit, after its threads and memory are gone, so `vexfs unmount` (which waits on the
        // lock) returns only once the daemon has truly finished.

        // A store that keeps no POSIX ACLs (ceph-fuse without client_acl_type=posix_acl) answers the
        // kernel's ACL reads with EOPNOTSUPP, which the kernel would take as every permission check's
        // answer for anyone but a file's owner: the kernel is not asked to use ACLs then
        // (vexfs_fuse_posix_acl 0 in the stats).
        if mountOptions.posixACL, let root = try? StoreFiles.holdDirectory(AT_FDCWD, FileName(Array(storePath.utf8))) {
            defer { close(root) }
            do { _ = try StoreFiles.attribute(opath: root, "system.posix_acl_access") } catch {
                if error.rawValue == EOPNOTSUPP {
                    mountOptions.posixACL = false
                    logger.notice("\(storePath) keeps no POSIX ACLs: mounted without them")
                }
            }
        }
        let kernels: DistanceKernels
        do { kernels = try DistanceKernels.forProcess.get() } catch { throw UserError(error.description) }
        if let address = mountOptions.metrics { try MetricsEndpoint.check(address) }
        // Started by a service manager that waits for READY=1 (systemd's Type=notify).
        let notifier = ServiceNotifier.fromEnvironment()
        var serving = "serving \(storePath) on \(mountPath)"
        var server: MetricsServer?
        do {
            try Session.run(store: store, mountpoint: mountPath, options: mountOptions, detached: {
                // Under norecovery the lock file is read-only here (or absent): nothing is recorded.
                if !norecovery { MountLock.record(pid: getpid(), mountpoint: mountPath, in: lock) }
            }, prepare: { factory in
                // Made here, after the fork: the HTTP client's threads would not survive it.
                let embedder = mountOptions.semantic.embedderConfiguration(apiKey: ProcessInfo.processInfo.environment["VEXFS_EMBED_API_KEY"])
                let semantic = SemanticLayer(storeRoot: semanticRoot, kernels: kernels, indexKind: mountOptions.semantic.indexKind,
                                             parameters: mountOptions.semantic.hnsw, metrics: SemanticMetrics(factory: factory), embedder: embedder,
                                             maxQueriesPerUser: mountOptions.semantic.maxQueriesPerUser,
                                             querySeconds: mountOptions.semantic.querySeconds,
                                             collectionsPerUser: mountOptions.semantic.collectionsPerUser,
                                             indexMiBPerUser: mountOptions.semantic.indexMiBPerUser,
                                             stateMiBPerUser: mountOptions.semantic.stateMiBPerUser,
                                             sharedID: sharedID, stateDirectory: stateDirectory,
                                             flockAcrossMachines: mountOptions.forwardsFlock, keywords: mountOptions.semantic.keywords,
                                             openCollections: mountOptions.semantic.openCollections, norecovery: norecovery)
                // Progress goes to a service manager (STATUS=), to a person at the terminal of a
                // foreground mount (one line redrawn), else to the log.
                notifier?.status("reconciling \(storePath)")
                let progress = TerminalProgress()
                let drawn = foreground && progress.isTerminal
                let reconciled = semantic.reconcile { line in
                    if drawn { progress.show(line, force: true) } else { logger.info("\(line)") }
                    notifier?.status(line)
                }
                progress.finish()
                serving = "serving \(storePath) on \(mountPath): \(reconciled.collections) collections, \(reconciled.changed) files re-read at mount"
                logger.notice("\(serving), SIMD path \(kernels.path)\(kernels.usesVNNI ? " with VNNI" : "")")
                return semantic
            }, served: { stats in
                if let address = mountOptions.metrics {
                    do {
                        // Rendered in the daemon, never read through the mount: it must not call itself.
                        server = try MetricsServer(host: address.host, port: address.port, exposition: { stats() })
                        logger.notice("metrics at http://\(address)/metrics")
                    } catch { logger.error("\(error)") }
                }
                notifier?.ready(status: serving)
            }, stopping: {
                notifier?.stopping(status: "unmounted: persisting indexes")
                server?.shutdown()
            })
        } catch {
            throw UserError(error.description)
        }
    }

    /// The absolute, resolved path of an existing directory (fuse_daemonize changes to /).
    private func directory(_ path: String, role: String) throws -> String {
        var st = stat()
        guard stat(path, &st) == 0 else { throw UserError("\(role) \(path) does not exist") }
        guard st.st_mode & S_IFMT == S_IFDIR else { throw UserError("\(role) \(path) is not a directory") }
        guard let resolved = realpath(path, nil) else { throw UserError("cannot resolve \(role) \(path)") }
        defer { free(resolved) }
        return String(cString: resolved)
    }
}

/// Every inode the kernel remembers holds a descriptor, so the daemon's limit bounds how many files
/// can be in use at once: raise it as far as the system allows (root may raise the hard limit too).
func raiseDescriptorLimit() {
    let RLIMIT_NOFILE_VALUE = __rlimit_resource_t(RLIMIT_NOFILE.rawValue)
    var limit = rlimit()
    guard getrlimit(RLIMIT_NOFILE_VALUE, &limit) == 0 else { return }
    var ceiling = limit.rlim_max
    if let text = try? String(contentsOfProcFile: "/proc/sys/fs/nr_open"), let systemMax = rlim_t(text) {
        ceiling = max(ceiling, systemMax)
    }
    var wanted = rlimit(rlim_cur: ceiling, rlim_max: ceiling)
    if setrlimit(RLIMIT_NOFILE_VALUE, &wanted) != 0 {
        wanted = rlimit(rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max)
        _ = setrlimit(RLIMIT_NOFILE_VALUE, &wanted)
    }
}

extension String {
    /// A small text file from /proc, trimmed.
    init(contentsOfProcFile path: String) throws {
        guard let f = fopen(path, "r") else { throw UserError("cannot read \(path)") }
        defer { fclose(f) }
        var buffer = [CChar](repeating: 0, count: 256)
        guard fgets(&buffer, Int32(buffer.count), f) != nil else { throw UserError("cannot read \(path)") }
        let bytes = buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }
        self = String(decoding: bytes.filter { $0 > 0x20 }, as: UTF8.self)
    }
}

struct Unmount: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Unmount MOUNTPOINT, waiting until the daemon has finished its work.")

    @Argument var mountpoint: String
    @Option(help: "Seconds to wait for the daemon to finish.") var timeout: Double = 60

    func run() throws {
        guard let resolved = realpath(mountpoint, nil) else { throw UserError("mountpoint \(mountpoint) does not exist") }
        let path = String(cString: resolved)
        free(resolved)
        guard let entry = MountTable.entry(at: path), entry.type == "fuse.vexfs" else {
            throw UserError("\(path) is not a vexfs mount")
        }
        // A shared store's daemon holds its own lock (by mount id): found before it goes.
        let sharedLock = MountLock.sharedPath(storePath: entry.source, mountpoint: path)
        let status = runProcess("/bin/fusermount3", ["-u", path])
        guard status == 0 else { throw UserError("fusermount3 -u \(path) failed (is the filesystem busy?)") }
        // Mounted elsewhere too (a second mount of the store): the daemon serves on there.
        if MountTable.all().contains(where: { $0.device == entry.device && $0.type == entry.type }) { return }
        let released = if let sharedLock {
            MountLock.waitForRelease(lockPath: sharedLock, timeoutSeconds: timeout)
        } else {
            MountLock.waitForRelease(storePath: entry.source, timeoutSeconds: timeout)
        }
        guard released else {
            throw UserError("unmounted, but the daemon for \(entry.source) did not exit within \(timeout)s")
        }
    }
}

func runProcess(_ path: String, _ arguments: [String]) -> Int32 {
    var pid: pid_t = 0
    let argv = ([path] + arguments).map { strdup($0) } + [nil]
    defer { argv.forEach { free($0) } }
    guard posix_spawn(&pid, path, nil, nil, argv, environ) == 0 else { return -1 }
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    return (status & 0x7f) == 0 ? (status >> 8) & 0xff : -1
}

/// The mountpoint where the daemon holding the store's lock serves it in this mount namespace, if
/// that mount is not a shared one (`-o shared` mounts each serve on their own): its root must be the
/// store's root (inode number and birth time), so a stale record never names another filesystem.
func servingMount(of storePath: String) -> String? {
    guard let holder = MountLock.holder(storePath: storePath), kill(holder.pid, 0) == 0,
          MountLock.sharedPath(storePath: storePath, mountpoint: holder.mountpoint) == nil,
          let ours = rootIdentity(storePath) else { return nil }
    // Where the daemon mounted it, or (that one unmounted since) another mount of the store.
    let candidates = [holder.mountpoint] + MountTable.all().filter { $0.source == storePath }.map(\.mountpoint)
    return candidates.first { MountTable.entry(at: $0)?.type == "fuse.vexfs" && rootIdentity($0) == ours }
}

/// A directory's inode number and birth time (nanoseconds); nil when it has no birth time.
private func rootIdentity(_ path: String) -> [Int64]? {
    let fd = open(path, vx_O_PATH | O_DIRECTORY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var st = stat()
    var hasBirth: Int32 = 0
    var seconds: Int64 = 0
    var nanoseconds: UInt32 = 0
    var attributes: UInt64 = 0
    var mask: UInt64 = 0
    guard fstatat(fd, "", &st, vx_AT_EMPTY_PATH) == 0,
          vx_statx_birth(fd, &hasBirth, &seconds, &nanoseconds, &attributes, &mask) == 0, hasBirth != 0 else { return nil }
    return [Int64(st.st_ino), seconds, Int64(nanoseconds)]
}

/// The store's lock. A daemon whose mount is gone (just unmounted, still persisting its indexes)
/// is waited for, up to 30 s, with a message once the wait is long enough to notice (a mount right
/// after an unmount, as scripts do, says nothing); one still mounted somewhere is an error at once.
func acquireLock(_ storePath: String, _ take: () throws(MountLock.Failure) -> Int32) throws(MountLock.Failure) -> Int32 {
    var attempt = 0
    while true {
        do { return try take() } catch .held {
            let mounted = MountTable.all().contains { $0.type == "fuse.vexfs" && $0.source == storePath }
            if mounted || attempt == 300 { throw .held }
            if attempt == 20 {
                FileHandle.standardError.write(Data("vexfs: waiting (up to 30 s) for the previous daemon of \(storePath) to finish\n".utf8))
            }
            usleep(100_000)
            attempt += 1
        }
    }
}
