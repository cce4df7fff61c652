import CFuse
import CLinux
import Glibc
import Synchronization
import SystemPackage
import VexMemory
import VexSemantic
import VexStore

/// SystemPackage has an `Inode` too; ours is the store's.
typealias Inode = VexStore.Inode

/// The state every handler reaches through the request: the store and the mount's options.
final class Filesystem: Sendable {
    let store: Store
    let options: MountOptions
    /// Where the kernel mounted it (absolute; "" when served without a mount, in tests).
    let mountpoint: String
    /// Scratch memory for the handlers (directory listings, stored attribute values and lists).
    let pool: BufferPool
    let stack: StackBudget
    let operations = OperationMetrics()
    /// Which open inodes the kernel reads and writes itself, and through which backing ids.
    let backing = BackingFiles()
    /// Query threads running above their nice value, per asking user other than root.
    let raisedQueries = RaisedQueries()
    /// Users' flock(2) calls waiting for a lock on a shared store (Handlers.flock), each holding a
    /// worker; at most half of libfuse's workers (10 unless -o threads= says) may.
    let flockWaiters = Atomic<Int>(0)
    var flockWaitLimit: Int { max(1, (options.threads > 0 ? options.threads : 10) / 2) }
    /// Those answered ENOLCK because that many already waited, and when one was last logged
    /// (monotonic seconds): at most one log line a minute says how many since.
    let flockRefusals = FlockRefusals()
    /// Every figure `.vexfs/stats` shows: the FUSE layer's and, through swift-metrics, the vector layer's.
    let metrics: MountMetrics
    /// The vector layer. Set once, before the request loop starts its threads, and only read after;
    /// nil only when a mount is served without one.
    nonisolated(unsafe) var semantic: (any SemanticService)?

    init(store: Store, options: MountOptions, mountpoint: String = "") {
        self.store = store
        self.options = options
        self.mountpoint = mountpoint
        var poolConfiguration = BufferPool.Configuration()
        poolConfiguration.preallocated = options.poolBuffers
        pool = BufferPool(poolConfiguration)
        stack = StackBudget(budget: options.stackBudget, handlerNames: Operation.names)
        metrics = MountMetrics(stackSize: options.stackSize, stackBudget: stack.budget, handlerNames: Operation.names,
                               norecovery: options.norecovery)
    }

    // MARK: the vector layer's names for things

    /// Runs `body` with directory `inode` as the vector layer sees it: its descriptor pinned for the
    /// call, and its path (for messages only). nil when the descriptor cannot be had.
    func withDirectory<R>(_ inode: Inode, _ body: (DirectoryRef) -> R) -> R? {
        let path = shownPath(inode)
        return try? store.inodes.using(inode) { fd throws(Errno) in body(DirectoryRef(key: inode.key.number, path: path, fd: fd)) }
    }

    /// The path of `inode` from the store's root, for messages and the journal ("?" when a link of
    /// the chain is unknown).
    func shownPath(_ inode: Inode) -> FileName { FileName(store.relativePath(inode) ?? Array("?".utf8)) }

    /// Runs `body` with the file `inode` where it was last seen (its directory and name), both
    /// descriptors pinned; nil when it has no known name (unlinked, or never looked up).
    func withFile<R>(_ inode: Inode, _ body: (FileRef) -> R) -> R? {
        guard let location = inode.location.withLock({ $0 }) else { return nil }
        let name = FileName(location.name)
        return withDirectory(location.parent) { dir in
            try? store.inodes.using(inode) { fd throws(Errno) in body(FileRef(dir: dir, name: name, fd: fd)) }
        } ?? nil
    }

    // MARK: node ids and handles

    /// The inode behind a node id. The `.vexfs/` nodes have none: requests that reach this for them
    /// (a write, a rename, a new name in `.vexfs/`) are refused.
    @inline(__always)
    func inode(_ id: fuse_ino_t) throws(Errno) -> Inode {
        if id == fuse_ino_t(FUSE_ROOT_ID) { return store.root }
        if VirtualNode.contains(id) { throw .notPermitted }
        guard let inode = store.inodes.existing(nodeID: UInt64(id)) else { throw .staleNFSFileHandle }
        return inode
    }

    @inline(__always)
    func nodeID(_ inode: Inode) -> fuse_ino_t {
        if inode === store.root { return fuse_ino_t(FUSE_ROOT_ID) }
        return fuse_ino_t(inode.nodeID)
    }

    static func handle<T: AnyObject>(_ fi: UnsafeMutablePointer<fuse_file_info>?, as: T.Type) -> T {
        Unmanaged<T>.fromOpaque(UnsafeRawPointer(bitPattern: UInt(fi!.pointee.fh))!).takeUnretainedValue()
    }

    static func store<T: AnyObject>(_ object: T, in fi: UnsafeMutablePointer<fuse_file_info>?) {
        fi!.pointee.fh = UInt64(UInt(bitPattern: Unmanaged.passRetained(object).toOpaque()))
    }

    static func releaseHandle<T: AnyObject>(_ fi: UnsafeMutablePointer<fuse_file_info>?, as: T.Type) {
        Unmanaged<T>.fromOpaque(UnsafeRawPointer(bitPattern: UInt(fi!.pointee.fh))!).release()
    }

    // MARK: replies

    func entryParam(_ entry: Entry) -> fuse_entry_param {
        var ep = fuse_entry_param()
        ep.ino = nodeID(entry.inode)
        ep.generation = entry.inode === store.root ? 0 : entry.inode.generation
        ep.attr = entry.attributes
        ep.attr_timeout = options.attrTimeout
        ep.entry_timeout = options.entryTimeout
        return ep
    }

    /// An entry for a `.vexfs/` node (the kernel's lookups of them need no forgetting).
    func virtualEntryParam(_ id: fuse_ino_t) -> fuse_entry_param {
        var ep = fuse_entry_param()
        ep.ino = id
        if let root = try? store.attributes(store.root) { ep.attr = VirtualNode.attributes(id, root: root) }
        ep.attr_timeout = options.attrTimeout
        ep.entry_timeout = options.entryTimeout
        return ep
    }

    /// Replies with a new entry; if the kernel no longer wants it, the lookup it carried is undone.
    func reply(_ req: fuse_req_t?, entry: Entry) {
        var ep = entryParam(entry)
        if fuse_reply_entry(req, &ep) != 0 { store.forget(entry.inode, 1) }
    }

    func reply(_ req: fuse_req_t?, attributes: stat) {
        var st = attributes
        fuse_reply_attr(req, &st, options.attrTimeout)
    }

    /// Adjusts open flags for the writeback cache: the kernel may read to fill pages of a file opened
    /// write-only, and it handles O_APPEND itself. The daemon's descriptor is never O_DIRECT: the
    /// request buffers it writes from are not aligned as direct I/O wants (EINVAL), and the kernel
    /// has already bypassed its own cache for a direct caller. (Under passthrough the kernel opens
    /// its own backing file per open, with the caller's O_DIRECT.)
    func backingOpenFlags(_ flags: Int32) -> Int32 {
        var f = flags & ~vx_O_DIRECT
        if options.writeback {
            if f & O_ACCMODE == O_WRONLY { f = (f & ~O_ACCMODE) | O_RDWR }
            f &= ~O_APPEND
        }
        return f
    }
}

@inline(__always)
func reply(_ req: fuse_req_t?, error: Errno) {
    fuse_reply_err(req, error.rawValue)
}

@inline(__always)
func reply(_ req: fuse_req_t?, status: Int32) {
    fuse_reply_err(req, status == 0 ? 0 : errno)
}

/// Who asks, with their supplementary groups (read from /proc by libfuse: only for the requests
/// whose answers depend on what the caller may read).
func requester(_ req: fuse_req_t?) -> Caller {
    let ctx = fuse_req_ctx(req)!.pointee
    // The kernel sends FUSE_INTERRUPT when the caller gets a signal; libfuse marks the request.
    let address = UInt(bitPattern: req)
    let interrupted: @Sendable () -> Bool = { fuse_req_interrupted(fuse_req_t(bitPattern: address)) != 0 }
    guard ctx.uid != 0 else { return Caller(uid: 0, gid: 0, interrupted: interrupted) }
    var groups = [gid_t](repeating: 0, count: 64)
    var n = Int(fuse_req_getgroups(req, Int32(groups.count), &groups))
    if n > groups.count {
        groups = [gid_t](repeating: 0, count: n)
        n = Int(fuse_req_getgroups(req, Int32(groups.count), &groups))
    }
    return Caller(uid: ctx.uid, gid: ctx.gid, groups: Array(groups.prefix(max(n, 0))), interrupted: interrupted)
}

@inline(__always)
func caller(_ req: fuse_req_t?) -> Caller {
    let ctx = fuse_req_ctx(req)!.pointee
    return Caller(uid: ctx.uid, gid: ctx.gid)
}

/// Who may have a FUSE thread raised while it answers a query. Root's questions always are (root
/// could renice the daemon itself); any other user's one at a time, so no user puts more than one
/// of root's threads ahead of everyone else's processes.
final class RaisedQueries: Sendable {
    /// Users other than root with a raised thread.
    private let raisedUsers = Mutex<Set<uid_t>>([])

    /// Raises the calling thread by `steps` unless `uid` already has a raised thread; returns the
    /// nice value to give back to `lower`, or nil when nothing was raised.
    func raise(for uid: uid_t, by steps: Int32) -> Int32? {
        if uid != 0 {
            guard raisedUsers.withLock({ $0.insert(uid).inserted }) else { return nil }
        }
        return vx_raise_this_thread(steps)
    }

    func lower(for uid: uid_t, to niceness: Int32) {
        _ = vx_nice_this_thread(niceness)
        if uid != 0 { raisedUsers.withLock { _ = $0.remove(uid) } }
    }
}
