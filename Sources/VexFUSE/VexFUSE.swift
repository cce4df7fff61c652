// VexFUSE answers the kernel's FUSE requests for a vexfs mount.
//
// How FUSE works, in the words this module uses. The kernel turns every system call on the mount into
// a *request* and sends it to this process through /dev/fuse; libfuse's low-level API hands each
// request to a callback in the C bridge (CShims/CFuse), which forwards it unchanged to a handler in
// `Handlers`. Every request is answered exactly once, with data or an errno (`forget` alone gets no
// answer). Files are named by *node ids*: the kernel learns one from every lookup, create, mkdir,
// link, symlink, mknod and readdirplus entry, counts how many times it learnt it, and later *forgets*
// that many; only then may the id be reused. Our node id is the address of the `Inode` object (the
// root is always id 1), so no table is consulted on the hot path. Open files and directories are
// *handles*: the kernel stores the number we give at open (`fi->fh`) and passes it back on read,
// write, flush and release; ours is the address of a retained `OpenFile` or `DirectoryStream`.
//
// What the kernel caches, and for how long: entries (name -> node id) for `entry_timeout` seconds,
// attributes for `attr_timeout`, file content across opens when `keep_cache` is set, and with the
// writeback cache (`-o writeback`) it also buffers writes and owns size and mtime while a file is open.
// vexfs is a single-writer local store, so it asks for long timeouts and keeps the page cache.
// Under FUSE passthrough (on by default, Passthrough.swift) the kernel reads and writes open files on
// the store itself: no READ or WRITE reaches us, so flush and release compare the file's size and times
// with what they were at open to learn that it changed (for the index, and to tell the kernel its
// cached attributes are stale after writes through a shared mapping).
// Requests run in parallel on the worker threads of libfuse's multi-threaded loop; readdir on one
// handle is serialised by the kernel. Each handler runs under the stack-budget monitor and takes its
// scratch memory (listings, xattr answers) from the buffer pool (VexMemory). The `.vexfs/` directory
// at the top of the mount and its `stats` file are made up here, with the fixed node ids 2 and 3
// (StateDirectory.swift). Filesystem logic is in VexStore; this module only translates.
import CFuse
import Glibc
import VexMemory
import VexSemantic

/// What a mount asks of the kernel, parsed once from `-o` and the command line.
public struct MountOptions: Sendable, Equatable {
    public var foreground = false
    /// Upper bound on libfuse worker threads; 0 keeps libfuse's default.
    public var threads = 0
    /// Off by default: libfuse 3.14 cannot negotiate HANDLE_KILLPRIV_V2, so under writeback the kernel
    /// sends a security.capability probe before every write(2), and sequential writes measured about
    /// half as fast as write-through (BENCHMARKS.md).
    public var writeback = false
    /// FUSE passthrough: the kernel reads and writes open files on the store itself, where it
    /// offers to and the daemon may (CAP_SYS_ADMIN). Cannot be negotiated with `writeback`, which
    /// wins when chosen.
    public var passthrough = true
    /// FUSE_POSIX_ACL: the kernel caches ACLs (sparing `ls -l` a round trip per file for
    /// system.posix_acl_access) and enforces them; ACLs live on the backing files.
    public var posixACL = true
    public var keepCache = true
    public var splice = true
    public var cloneFD = true
    /// Take over dropping privileges on write (FUSE_HANDLE_KILLPRIV_V2), sparing the kernel's
    /// security.capability probe before every write.
    public var killprivV2 = true
    public var attrTimeout = 60.0
    public var entryTimeout = 60.0
    /// How long a "no such name" answer is cached; 0 because files may appear in STORE meanwhile.
    public var negativeTimeout = 0.0
    /// Most descriptors kept open for idle inodes; nil: three quarters of the process's limit.
    public var descriptorBudget: Int?
    /// Stack size of the worker threads, and how much of it a handler may use before it counts as
    /// an excess in `.vexfs/stats`.
    public var stackSize = 256 * 1024
    public var stackBudget = 64 * 1024
    /// Buffers preallocated in the 1, 4 and 16 KiB tiers of the scratch pool.
    public var poolBuffers = BufferPool.Configuration().preallocated
    /// The vector layer's options (index, embedder), passed on to it unread.
    public var semantic = SemanticOptions()
    /// Options passed on to the kernel mount (allow_other, ro, ...).
    public var kernelOptions: [String] = []
    /// How much the daemon logs (`log_level=`): trace, debug, info (default), notice, warning, error, critical.
    public var logLevel = "info"

    public init() {}

    public enum ParseError: Error, CustomStringConvertible {
        case badValue(String)
        public var description: String {
            switch self { case .badValue(let o): "bad mount option value: \(o)" }
        }
    }

    /// Reads a comma-separated `-o` list. Names vexfs does not own go to the kernel mount.
    public mutating func apply(_ list: String) throws(ParseError) {
        for option in list.split(separator: ",").map(String.init) where !option.isEmpty {
            // "=" alone, or "=x", has an empty key: split must keep it (found by Fuzz/Options).
            let parts = option.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
            let key = parts[0], value = parts.count > 1 ? parts[1] : nil
            guard !key.isEmpty else { throw .badValue(option) }
            func seconds() throws(ParseError) -> Double {
                guard let value, let s = Double(value), s >= 0, s.isFinite else { throw .badValue(option) }
                return s
            }
            switch key {
            case "log_level":
                guard let value, ["trace", "debug", "info", "notice", "warning", "error", "critical"].contains(value) else {
                    throw .badValue(option)
                }
                logLevel = value
            case "writeback": writeback = true
            case "no_writeback": writeback = false
            case "passthrough": passthrough = true
            case "no_passthrough": passthrough = false
            case "posix_acl": posixACL = true
            case "no_posix_acl": posixACL = false
            case "keep_cache": keepCache = true
            case "no_keep_cache": keepCache = false
            case "splice": splice = true
            case "no_splice": splice = false
            case "killpriv": killprivV2 = true
            case "no_killpriv": killprivV2 = false
            case "clone_fd": cloneFD = true
            case "no_clone_fd": cloneFD = false
            case "attr_timeout": attrTimeout = try seconds()
            case "entry_timeout": entryTimeout = try seconds()
            case "negative_timeout": negativeTimeout = try seconds()
            case "timeout": attrTimeout = try seconds(); entryTimeout = attrTimeout
            case "stack_size":
                guard let value, let n = Int(value), n >= 64 * 1024, n <= 64 << 20 else { throw .badValue(option) }
                stackSize = n
            case "stack_budget":
                guard let value, let n = Int(value), n >= 4096 else { throw .badValue(option) }
                stackBudget = n
            case "pool_buffers":
                let counts = (value ?? "").split(separator: ":").compactMap { Int($0) }
                guard counts.count == 3, counts.allSatisfy({ $0 >= 0 && $0 <= 1 << 20 }) else { throw .badValue(option) }
                poolBuffers = counts
            case "descriptor_budget":
                guard let value, let n = Int(value), n >= 16 else { throw .badValue(option) }
                descriptorBudget = n
            default:
                let taken: Bool
                do { taken = try semantic.apply(key, value) } catch { throw .badValue(option) }
                if !taken { kernelOptions.append(option) }
            }
        }
    }
}
