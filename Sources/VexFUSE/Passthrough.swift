// FUSE passthrough: the kernel reads, writes, splices and maps an open file on the backing file
// itself, and the daemon sees only open, flush, release, fsync, getattr, setattr, fallocate and lseek.
// The daemon registers an open descriptor of the backing file with the kernel (a *backing id*) and
// names that id in its OPEN or CREATE answer; the kernel then opens its own backing file per open,
// with the caller's flags (O_DIRECT and O_APPEND included) and the credentials the daemon had when
// it registered the id. An id registered for an open by a user other than root lacks CAP_FSETID
// (dropped around the registration): the kernel's writes through it then clear set-id bits as the
// store's own filesystem does for a user who may not keep them, also through a descriptor opened
// before a chmod 4777. It has that user's group as its filesystem group, since whether a write keeps
// set-group-ID on a file without group execute depends on the writer being in the file's group (as
// on ext4). Root's opens keep CAP_FSETID, so root's writes keep set-id bits, as on ext4. One id
// serves every open of an inode: a user who opens a file root holds open shares root's id.
//
// The kernel's rules, which this file keeps: while any open of an inode passes through, every open
// of it must name the same backing id, and none may use the FUSE page cache (no KEEP_CACHE); while
// any open of it uses the page cache, none may pass through. Either mistake fails the caller's
// open(2) with EIO. So each inode the kernel has open is in one mode, counted here, and a new open
// joins the mode its inode is already in.
import CFuse
import CLinux
import Glibc
import Logging
import Synchronization
import VexStore

/// The inodes open through the mount, each in its I/O mode, with the backing id of those that pass
/// through. Every open of a regular file while the session negotiated passthrough is counted once,
/// at open or create, and uncounted once, at release (or when the answer to the open fails).
final class BackingFiles: Sendable {
    enum Mode: Equatable {
        /// Read and written by the kernel through `id`, by `opens` open handles.
        case passthrough(id: Int32, opens: Int)
        /// Read and written through the daemon (the registration failed, or passthrough was refused).
        case daemon(opens: Int)
    }

    /// Guards the modes and the registration calls, so two opens of one inode agree on its id.
    private let modesByInode = Mutex<[InodeKey: Mode]>([:])
    /// Backing ids registered right now (for stats).
    private let registered = Atomic<Int>(0)

    var registeredCount: Int { registered.load(ordering: .relaxed) }

    /// Whether the session agreed on passthrough with the kernel at INIT (fixed from then on; a
    /// later refusal turns new opens to the daemon, and they are still counted).
    static func negotiated(_ req: fuse_req_t?) -> Bool {
        let state = vexfs_req_passthrough(req)
        return state == Int32(VEXFS_PASSTHROUGH_ON.rawValue) || state == Int32(VEXFS_PASSTHROUGH_REFUSED.rawValue)
    }

    private static let logger = Logger(label: "vexfs")

    /// Says once, in the daemon's log, that passthrough is off and why (-o no_passthrough is no news).
    static func logOff(_ state: Int32, detail: String? = nil) {
        guard state != Int32(VEXFS_PASSTHROUGH_ON.rawValue), state != Int32(VEXFS_PASSTHROUGH_NOT_ASKED.rawValue) else { return }
        let reason = String(cString: vexfs_passthrough_reason(state)) + (detail.map { " (\($0))" } ?? "")
        logger.notice("FUSE passthrough is off: \(reason); reads and writes go through the daemon")
    }

    /// Counts an open of `file` and returns the backing id it must be answered with, or nil when it
    /// goes through the daemon.
    func attach(_ req: fuse_req_t?, _ file: OpenFile) -> Int32? {
        guard let inode = file.inode, inode.fileType == S_IFREG, BackingFiles.negotiated(req) else { return nil }
        return modesByInode.withLock { modes -> Int32? in
            switch modes[inode.key] {
            case .passthrough(let id, let opens):
                modes[inode.key] = .passthrough(id: id, opens: opens + 1)
                return id
            case .daemon(let opens):
                modes[inode.key] = .daemon(opens: opens + 1)
                return nil
            case nil:
                guard vexfs_req_passthrough(req) == Int32(VEXFS_PASSTHROUGH_ON.rawValue) else {
                    modes[inode.key] = .daemon(opens: 1)
                    return nil
                }
                let id = caller(req).uid == 0 ? vexfs_req_backing_open(req, file.fd)
                    : BackingFiles.withoutFSETID(group: caller(req).gid) { vexfs_req_backing_open(req, file.fd) }
                guard id > 0 else {
                    // Refused for want of privilege (a user namespace) or support: off for the rest
                    // of the mount. Anything else concerns this file alone.
                    if [EPERM, ENOTTY, EOPNOTSUPP, ENOSYS].contains(-id), vexfs_req_passthrough_refused(req) != 0 {
                        BackingFiles.logOff(Int32(VEXFS_PASSTHROUGH_REFUSED.rawValue), detail: String(cString: strerror(-id)))
                    }
                    modes[inode.key] = .daemon(opens: 1)
                    return nil
                }
                registered.add(1, ordering: .relaxed)
                modes[inode.key] = .passthrough(id: id, opens: 1)
                return id
            }
        }
    }

    /// Runs `body` with CAP_FSETID out of this thread's effective capabilities and `group` as its
    /// filesystem group (see the top).
    static func withoutFSETID<R>(group: gid_t, _ body: () -> R) -> R {
        var saved = [UInt32](repeating: 0, count: 6)
        guard saved.withUnsafeMutableBufferPointer({ vx_thread_drop_fsetid($0.baseAddress) }) == 0 else { return body() }
        let daemonGroup = vx_thread_set_fsgid(group)
        defer {
            _ = vx_thread_set_fsgid(daemonGroup)
            _ = saved.withUnsafeBufferPointer { vx_thread_restore_capabilities($0.baseAddress) }
        }
        return body()
    }

    /// Uncounts an open of `file`; the last one of a passing-through inode releases its backing id.
    /// The kernel holds its own reference to the backing file for opens still in flight.
    func detach(_ req: fuse_req_t?, _ file: OpenFile) {
        guard let inode = file.inode, inode.fileType == S_IFREG, BackingFiles.negotiated(req) else { return }
        modesByInode.withLock { modes in
            switch modes[inode.key] {
            case .passthrough(let id, let opens):
                if opens > 1 {
                    modes[inode.key] = .passthrough(id: id, opens: opens - 1)
                } else {
                    modes[inode.key] = nil
                    _ = vexfs_req_backing_close(req, id)
                    registered.subtract(1, ordering: .relaxed)
                }
            case .daemon(let opens):
                modes[inode.key] = opens > 1 ? .daemon(opens: opens - 1) : nil
            case nil:
                break
            }
        }
    }
}
