import CFuse
import CLinux
import CMemory
import Glibc
import VexMemory
import VexStore

/// The `.vexfs/` directory at the top of the mount is vexfs's own, made up on demand; it is not
/// STORE/.vexfs (which holds state and stays hidden). Its nodes have fixed ids that no `Inode`
/// address can take, and every request on them is answered here.
enum VirtualNode {
    static let directory: fuse_ino_t = 2
    static let stats: fuse_ino_t = 3
    static let journal: fuse_ino_t = 4
    static let directoryName = Store.reservedName
    static let statsName = "stats"
    static let journalName = "journal"

    @inline(__always)
    static func contains(_ id: fuse_ino_t) -> Bool { id >= directory && id <= journal }

    /// The files of `.vexfs/`, by name.
    static func file(named name: UnsafePointer<CChar>) -> fuse_ino_t? {
        if strcmp(name, statsName) == 0 { return stats }
        if strcmp(name, journalName) == 0 { return journal }
        return nil
    }

    /// Read-only, owned by whoever owns STORE: a directory of 0555, `stats` and `journal` 0444 (the
    /// journal shows each reader only the events on paths they may read). A file's
    /// size is 0: it is opened with direct I/O, so readers read until the end of what was made.
    static func attributes(_ id: fuse_ino_t, root: stat) -> stat {
        var st = stat()
        st.st_ino = ino_t(UInt64.max - id)
        st.st_uid = root.st_uid
        st.st_gid = root.st_gid
        st.st_atim = root.st_atim
        st.st_mtim = root.st_mtim
        st.st_ctim = root.st_ctim
        st.st_blksize = 4096
        if id == directory {
            st.st_mode = S_IFDIR | 0o555
            st.st_nlink = 2
        } else {
            st.st_mode = S_IFREG | 0o444
            st.st_nlink = 1
        }
        return st
    }
}

/// Every FUSE operation, for per-handler figures. The order is the stats' order.
enum Operation: Int, CaseIterable {
    case lookup, forget, forgetMulti, getattr, setattr, readlink, mknod, mkdir, unlink, rmdir, symlink
    case rename, link, open, read, writeBuf, flush, release, fsync, opendir, readdir, readdirplus
    case releasedir, fsyncdir, statfs, setxattr, getxattr, listxattr, removexattr, access, create
    case fallocate, copyFileRange, lseek

    static let names = allCases.map { "\($0)" }
}

/// Requests and time spent per operation: two relaxed counters each, in raw memory (no locks, no
/// exclusivity checks on the request path).
final class OperationMetrics: @unchecked Sendable {
    private let counters: UnsafeMutablePointer<UInt64>
    init() {
        counters = .allocate(capacity: 2 * Operation.allCases.count)
        counters.initialize(repeating: 0, count: 2 * Operation.allCases.count)
    }
    deinit { counters.deallocate() }

    @inline(__always) func record(_ op: Operation, nanoseconds: UInt64) {
        vx_counter_add(counters + 2 * op.rawValue, 1)
        vx_counter_add(counters + 2 * op.rawValue + 1, nanoseconds)
    }

    func read(_ op: Operation) -> (count: UInt64, nanoseconds: UInt64) {
        (vx_counter_load(counters + 2 * op.rawValue), vx_counter_load(counters + 2 * op.rawValue + 1))
    }
}

extension Filesystem {
    func renderOperations(_ family: (String, String, String, [(labels: String, value: Int)]) -> Void) {
        let used = Operation.allCases.map { ($0, operations.read($0)) }.filter { $0.1.count > 0 }
        family("vexfs_fuse_requests_total", "counter", "FUSE requests answered, per operation.",
               used.map { ("op=\"\($0.0)\"", Int($0.1.count)) })
        family("vexfs_fuse_request_microseconds_total", "counter", "Time spent in the handlers, per operation (divide by the requests for the mean latency).",
               used.map { ("op=\"\($0.0)\"", Int($0.1.nanoseconds / 1000)) })
    }

    /// `.vexfs/stats`: Prometheus text exposition, made when the file is opened.
    func renderStats(_ req: fuse_req_t?) -> String {
        var out = ""
        func family(_ name: String, _ type: String, _ help: String, _ samples: [(labels: String, value: Int)]) {
            out += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
            for s in samples { out += "\(name)\(s.labels.isEmpty ? "" : "{\(s.labels)}") \(s.value)\n" }
        }
        let (tiers, fallthroughs) = pool.statistics()
        let tierLabel = { (t: BufferPool.Tier) in "tier=\"\(t)\"" }
        family("vexfs_buffer_pool_hits_total", "counter", "Scratch buffers served from the pool.",
               BufferPool.Tier.allCases.map { (tierLabel($0), tiers[$0.rawValue].hits) })
        family("vexfs_buffer_pool_misses_total", "counter", "Requests that found the tier empty and grew it.",
               BufferPool.Tier.allCases.map { (tierLabel($0), tiers[$0.rawValue].misses) })
        family("vexfs_buffer_pool_buffers", "gauge", "Buffers the pool owns.",
               BufferPool.Tier.allCases.map { (tierLabel($0), tiers[$0.rawValue].buffers) })
        family("vexfs_buffer_pool_fallthroughs_total", "counter", "Requests larger than 16 KiB, served by the system allocator.",
               [("", fallthroughs)])
        let report = stack.report()
        family("vexfs_stack_budget_bytes", "gauge", "Stack a handler may use, from the top of its worker thread's stack.",
               [("", stack.budget)])
        family("vexfs_stack_size_bytes", "gauge", "Stack size of the FUSE worker threads.", [("", options.stackSize)])
        family("vexfs_stack_high_water_bytes", "gauge", "Deepest stack use seen per handler.",
               report.highWater.map { ("handler=\"\($0.handler)\"", $0.bytes) })
        family("vexfs_stack_budget_exceeded_total", "counter", "Handler runs that used more stack than the budget.",
               [("", report.excesses)])
        if let first = report.firstExcess {
            family("vexfs_stack_first_excess_bytes", "gauge", "The first handler run over the budget, and how deep it went.",
                   [("handler=\"\(first.handler)\"", first.bytes)])
        }
        family("vexfs_fuse_killpriv_v2", "gauge", "1 when vexfs drops privileges on write itself, sparing the kernel's per-write security.capability probe.",
               [("", Int(vexfs_req_killpriv_v2(req)))])
        family("vexfs_fuse_posix_acl", "gauge", "1 when the kernel caches and enforces POSIX ACLs (FUSE_POSIX_ACL).",
               [("", Int(vexfs_req_posix_acl(req)))])
        let passthrough = vexfs_req_passthrough(req)
        family("vexfs_fuse_passthrough", "gauge", "1 when the kernel reads and writes open files on the store itself (FUSE passthrough); 0 with the reason in the label.",
               [("reason=\"\(String(cString: vexfs_passthrough_reason(passthrough)))\"", passthrough == Int32(VEXFS_PASSTHROUGH_ON.rawValue) ? 1 : 0)])
        family("vexfs_fuse_passthrough_backing_files", "gauge", "Backing files registered with the kernel: one per file open in passthrough.",
               [("", backing.registeredCount)])
        renderOperations(family)
        // The vector layer's figures go through swift-metrics into this mount's Prometheus registry.
        if let semantic {
            semantic.refreshGauges()
            out += registry.emitToString()
        }
        family("vexfs_inodes", "gauge", "Files and directories the kernel currently remembers.", [("", store.inodes.count)])
        family("vexfs_inode_descriptors_open", "gauge", "O_PATH descriptors held for them (bounded by the budget).",
               [("", store.inodes.descriptors.openCount)])
        return out
    }

    /// A `.vexfs/` file, made at open, as an open file of its own.
    func openVirtual(_ req: fuse_req_t?, _ id: fuse_ino_t) throws(Errno) -> OpenFile {
        var bytes: [UInt8] = []
        if id == VirtualNode.stats {
            bytes = Array(renderStats(req).utf8)
        } else if let semantic {
            // Everything for root and the store's owner; anyone else sees the events on paths they may read.
            let who = requester(req)
            let owner = try store.attributes(store.root).st_uid
            bytes = who.uid == owner ? semantic.journal.contents() : semantic.journal(visibleTo: who)
        }
        let fd = bytes.withUnsafeBytes { vx_memfd_with(id == VirtualNode.stats ? "vexfs-stats" : "vexfs-journal", $0.baseAddress, $0.count) }
        guard fd >= 0 else { throw Errno(rawValue: errno) }
        return OpenFile(contents: fd)
    }
}

import SystemPackage
