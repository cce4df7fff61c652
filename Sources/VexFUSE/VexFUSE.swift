// VexFUSE answers the kernel's FUSE requests for a vexfs mount.
//
// Requests. The kernel turns each system call on the mount into one or more *requests* (LOOKUP,
// GETATTR, OPEN, READ, SETXATTR, ...) and queues them on /dev/fuse. libfuse's low-level API reads
// them and calls a callback in the C bridge (CShims/CFuse), which forwards it unchanged to one
// function of `Handlers`. Every request is answered exactly once, with data or an errno, and the
// system call waits for that answer; FORGET alone gets none.
//
// Node ids and handles. The kernel names files by *node id*. It learns one from every LOOKUP, CREATE,
// MKDIR, MKNOD, SYMLINK, LINK and READDIRPLUS entry, counts how often it learnt it, and later FORGETs
// that many; only then is the id free. Our node id is the one the store's `Inode` carries: for a file
// whose kernel file handle is 8 bytes (ext4, xfs), that handle, so a file keeps its id across forgets
// and mounts (the root is always 1; the `.vexfs/` nodes are 2 to 4). File handles (open_by_handle_at,
// NFS) hold the node id: the kernel asks LOOKUP of "." on an id it has forgotten, and of ".." on a
// directory, and we find the file again from the id alone (export support). An open file or
// directory is a *handle*: the number we answer OPEN with comes back with every READ, WRITE, FLUSH
// and RELEASE on it; ours is the address of a retained `OpenFile` or `DirectoryStream`. FLUSH comes
// once per close(2) of a descriptor (so possibly many times), RELEASE once at the last close; the
// kernel ignores what RELEASE answers.
//
// What the kernel caches. Entries (name -> node id) for `entry_timeout` seconds and attributes for
// `attr_timeout`; a "no such name" for `negative_timeout` (0 here: files may appear in STORE);
// file content across opens with `keep_cache`; with the writeback cache (`-o writeback`) it also
// buffers writes and owns size and mtime while a file is open. vexfs is the only writer of its store
// (the mount lock), so it asks for long timeouts and keeps the page cache.
//
// Passthrough (Passthrough.swift, on by default). The kernel reads and writes open files on the store
// itself: no READ or WRITE reaches us, so FLUSH and RELEASE compare a file's size and times with what
// they were at OPEN to learn that it changed, for the index, and to tell the kernel when its cached
// attributes are stale (writes through a shared mapping).
//
// What runs in parallel. Requests run on the worker threads of libfuse's multi-threaded loop, or,
// over FUSE over io_uring (CShims/CFuse/uring.c), on the ring threads of each CPU's queue: any
// number at once, on the same file or not; READDIR on one handle is serialised by the kernel. Each
// handler runs under the stack-budget monitor and takes scratch memory (listings, stored attribute
// values) from the buffer pool (VexMemory).
//
// Where things are. `Handlers` is the plumbing: unpack a request, call, reply. The store (VexStore)
// does the filesystem work. Requests the vector layer hears of (names created, written, moved and
// removed; the `user.vexfs.*` attributes) go through FileOperations.swift, which holds VexSemantic's
// protocols (`FileEvents`, `ComputedAttributes`, `StateReports`), never its classes. `.vexfs/` with
// its `stats` and `journal` is made up here (StateDirectory.swift, Stats.swift). `Session` mounts,
// serves and unmounts.
import CFuse
import Glibc
import VexMemory
import VexSemantic
import VexStore

/// A TCP address to listen on: `PORT` or `:PORT` is 127.0.0.1, `HOST:PORT` takes an IPv4 literal or
/// `localhost`, `[IPV6]:PORT` an IPv6 one. No host is looked up: what is exposed is what was typed.
public struct ListenAddress: Sendable, Equatable, CustomStringConvertible {
    public let host: String
    public let port: Int

    public init?(_ text: String) {
        var host = "127.0.0.1", portText = Substring(text)
        if let colon = text.lastIndex(of: ":") {
            portText = text[text.index(after: colon)...]
            var named = text[..<colon]
            if named.hasPrefix("["), named.hasSuffix("]") {
                named = named.dropFirst().dropLast()
                var v6 = in6_addr()
                guard inet_pton(AF_INET6, String(named), &v6) == 1 else { return nil }
            } else if !named.isEmpty && named != "localhost" {
                var v4 = in_addr()
                guard inet_pton(AF_INET, String(named), &v4) == 1 else { return nil }
            }
            if !named.isEmpty { host = named == "localhost" ? "127.0.0.1" : String(named) }
        }
        guard portText.allSatisfy(\.isASCII), let port = Int(portText), (1...65535).contains(port) else { return nil }
        self.host = host
        self.port = port
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}

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
    /// FUSE over io_uring: requests come through per-CPU io_uring queues instead of read(2) and
    /// write(2) on /dev/fuse, where the kernel offers it (6.14 and later, fuse.enable_uring=Y).
    /// nil (the default): only with passthrough, as file data through the daemon is read faster
    /// over /dev/fuse with splice.
    public var ioUring: Bool? = nil
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
    /// How reads move access times (`noatime`, `relatime`, `strictatime`; with the kernel's
    /// precedence: strictatime over noatime over relatime), and `nodiratime`. Applied to a private
    /// mount of the store the daemon works through (`Store.reachThroughPrivateMount`), since the
    /// kernel leaves a FUSE file's atime to the filesystem underneath.
    public var atime = AccessTimeRule.store
    public var nodiratime = false
    /// `norecovery` (with `ro` only): the mount brings nothing up to date and writes nothing into the
    /// store or its state, as ext4's `ro,norecovery` replays no journal. Collections answer from
    /// their snapshots as they were written (files changed since are not read again), the daemon
    /// reaches the store through a read-only private mount of it, and fstrim is refused (EROFS).
    public var norecovery = false
    /// How much the daemon logs (`log_level=`): trace, debug, info (default), notice, warning, error, critical.
    public var logLevel = "info"
    /// Users' flock(2) taken on the backing files (`shared`: other machines lock them too), not
    /// kept in this kernel.
    public var flockLocks = false
    /// Whether users' flock(2) is taken on the backing files: asked, and not over io_uring.
    public var forwardsFlock: Bool { flockLocks && ioUring == false }
    /// `shared` lowered the timeouts and turned the page cache off once already.
    var sharedDefaultsSet = false
    /// The attribute and entry timeouts on a shared store (`shared`).
    public static let sharedTimeout = 1.0
    /// Where to serve `/metrics` over HTTP (`metrics=[HOST:]PORT`; loopback unless a host is given).
    public var metrics: ListenAddress?

    public init() {}

    /// Whether the kernel mount is read-only (`ro`; the last of `ro` and `rw` wins, as in mount(8)).
    public var readOnly: Bool { kernelOptions.last { $0 == "ro" || $0 == "rw" } == "ro" }

    /// Why these options cannot go together, which no option alone says; nil when they can.
    /// `norecovery` asks for `ro`, as ext4's does: a mount that may write brings its state up to
    /// date first. Nor on a shared store, whose mounts hear of each other's changes through it.
    public var conflict: String? {
        if norecovery && !readOnly {
            return "norecovery needs ro (-o ro,norecovery): a mount that may write brings the store's state up to date first"
        }
        if norecovery && semantic.sharedID != nil { return "norecovery is for a store of one mount, not with -o shared" }
        return nil
    }

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
            case "io_uring": ioUring = true
            case "no_io_uring": ioUring = false
            case "clone_fd": cloneFD = true
            case "no_clone_fd": cloneFD = false
            // Atime: the kernel mount hears of noatime too (mount(8) shows it); libfuse 3.14 knows
            // no other atime option.
            case "noatime":
                if atime != .strictatime { atime = .noatime }
                kernelOptions.append(option)
            case "relatime": if atime == .store { atime = .relatime }
            // Every read moves atime: each open drops the page cache, so the reads of each open
            // reach the store (the kernel keeps no atime of a FUSE file and serves cached pages
            // without a word to the daemon). Passthrough reads reach it anyway.
            case "strictatime": atime = .strictatime; keepCache = false
            case "nodiratime": nodiratime = true
            // The daemon's own: libfuse and the kernel's FUSE mount know no such option.
            case "norecovery": norecovery = true
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
            case "metrics":
                guard let value, let address = ListenAddress(value) else { throw .badValue(option) }
                metrics = address
            // What mount(8), fstab and systemd add for themselves, as mount.fuse3 drops them: they say
            // when and how to mount, not what the filesystem should do. (rw, nodev, nosuid, noexec, ...
            // are mount flags: they go on to the kernel.)
            case "defaults", "auto", "noauto", "nofail", "_netdev", "user", "nouser", "users": break
            case _ where key.hasPrefix("x-"): break
            case "descriptor_budget":
                guard let value, let n = Int(value), n >= 16 else { throw .badValue(option) }
                descriptorBudget = n
            default:
                let taken: Bool
                do { taken = try semantic.apply(key, value) } catch { throw .badValue(option) }
                if !taken { kernelOptions.append(option) }
                // Other machines change the store under this mount: the kernel may keep what it
                // learnt of a file for a second, not a minute, and no page cache across opens
                // (timeouts given before stay; a later keep_cache or timeout wins).
                if key == "shared" && !sharedDefaultsSet {
                    sharedDefaultsSet = true
                    // Users' flock(2) goes to the backing files, and a lock waited for holds the
                    // worker that waits: over io_uring that is a CPU's only ring thread, so the
                    // shared default is /dev/fuse (whose loop starts more workers); a chosen
                    // io_uring keeps flock(2) in this kernel.
                    flockLocks = true
                    if ioUring == nil { ioUring = false }
                    if attrTimeout == 60 { attrTimeout = MountOptions.sharedTimeout }
                    if entryTimeout == 60 { entryTimeout = MountOptions.sharedTimeout }
                    keepCache = false
                }
            }
        }
    }
}
