import CLinux
import Glibc
import Synchronization
import SystemPackage

/// Identity of a backing file: hard links to one file are one inode.
public struct InodeKey: Hashable, Sendable {
    public let device: UInt64
    public let number: UInt64
}

/// One backing file, as long as the kernel remembers it (its lookup count is above zero). It is
/// reached through an O_PATH descriptor, which stays valid across renames and after unlink. The
/// descriptor is a cache entry: the kernel may remember more files than a process may hold
/// descriptors, so an idle inode's descriptor can be closed and reopened later from the kernel's
/// file handle (see `Descriptors`). Use it only between `Descriptors.pin` and `unpin`.
public final class Inode: @unchecked Sendable {
    public let key: InodeKey
    public let fileType: mode_t
    /// Set on the store's root only.
    public let isStoreRoot: Bool
    /// The kernel's handle for reopening; nil when the file cannot be reopened that way (then its
    /// descriptor stays open for the inode's life).
    let handle: [UInt8]?
    /// Guarded by `InodeTable.tables`' lock.
    fileprivate var lookups: UInt64 = 0
    /// The kernel's name for this inode (its FUSE node id), and the generation that goes with it;
    /// set once, when the table takes the inode in, and stable for the file's life: for a file of
    /// the store's own filesystem whose file handle is 8 bytes (ext4, xfs, ...), the handle itself,
    /// so the same file has the same id across forgets and mounts and can be found from the id
    /// alone (`InodeTable.find(nodeID:)`); otherwise a number the table makes up. The root's is 1.
    public fileprivate(set) var nodeID: UInt64 = 1
    public fileprivate(set) var generation: UInt64 = 0
    let descriptor: Mutex<DescriptorState>
    /// The kernel asks for security.capability before every write under writeback caching; once the
    /// backing file is known to have none, the answer comes from here instead of a syscall.
    public let knownWithoutCapability = Atomic<Bool>(false)
    /// Known to have neither set-id bits nor a security.capability attribute, so an unprivileged
    /// write has nothing to drop (see `Store.dropPrivileges`).
    public let knownUnprivileged = Atomic<Bool>(false)
    /// Where the file was last seen: its directory and name (the last lookup, create or rename; for
    /// a file with several hard links, one of them), kept after an unlink or a rename over it: a
    /// query through a descriptor still needs the collection and the query file's name. For
    /// naming only: the file is reached by its descriptor, never by this name.
    public let location = Mutex<Location?>(nil)

    public struct Location: Sendable {
        public let parent: Inode
        /// The name's bytes, as the kernel gave them (not necessarily UTF-8).
        public let name: [UInt8]

        init(parent: Inode, name: UnsafePointer<CChar>) {
            self.parent = parent
            self.name = Array(UnsafeRawBufferPointer(start: name, count: strlen(name)))
        }
    }

    struct DescriptorState {
        var fd: Int32
        /// Operations (and open files) using `fd` right now; it is never closed while above zero.
        var pins = 0
        /// Used since the last sweep (a second chance before eviction).
        var referenced = true
    }

    init(fd: Int32, attributes st: stat, handle: [UInt8]?, isStoreRoot: Bool = false) {
        self.key = InodeKey(device: UInt64(st.st_dev), number: UInt64(st.st_ino))
        self.fileType = st.st_mode & S_IFMT
        self.isStoreRoot = isStoreRoot
        self.handle = handle
        self.descriptor = Mutex(DescriptorState(fd: fd))
    }

    public var isSymlink: Bool { fileType == S_IFLNK }
    public var isDirectory: Bool { fileType == S_IFDIR }

    deinit {
        let fd = descriptor.withLock { $0.fd }
        if fd >= 0 { close(fd) }
    }
}

/// Bounds the O_PATH descriptors held by inodes. Each operation pins the descriptors it uses; when
/// more than `budget` are open, a sweep closes those of idle inodes that were not used since the
/// previous sweep, and they are reopened from their file handles when next needed. Callers pin and
/// unpin through `InodeTable`, which can sweep.
public final class Descriptors: Sendable {
    /// A real descriptor of the store's root, which open_by_handle_at needs, and its mount's id.
    /// Replaced once, before requests are served, when the store is reached through a private
    /// mount (`Store.reachThroughPrivateMount`); atomics so the reopen path reads them lock-free.
    private let mountFD: Atomic<Int32>
    private let mountID: Atomic<Int32>
    public let budget: Int
    private let open = Atomic<Int>(0)

    init(rootPath: String, budget: Int) throws(Errno) {
        let fd = Glibc.open(rootPath, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw Errno.current }
        mountFD = Atomic(fd)
        mountID = Atomic(Descriptors.mountID(of: fd))
        self.budget = max(budget, 16)
        exportType.store(Descriptors.exportType(of: fd), ordering: .releasing)
    }

    deinit { close(mountFD.load(ordering: .relaxed)) }

    private static func mountID(of fd: Int32) -> Int32 {
        var id: Int32 = 0
        var blob = [UInt8](repeating: 0, count: Int(VX_HANDLE_MAX))
        return vx_handle_of(fd, &blob, &id) >= 0 ? id : -1
    }

    /// Reopens by handle through `root` (a real descriptor of the store's top, taken over) from now on.
    func remount(root: Int32) {
        let old = mountFD.exchange(root, ordering: .acquiringAndReleasing)
        mountID.store(Descriptors.mountID(of: root), ordering: .releasing)
        exportType.store(Descriptors.exportType(of: root), ordering: .releasing)
        close(old)
    }

    /// The type of the store's file handles when they are 8 bytes (the root's), which node ids then
    /// carry whole; nil when they are longer (see `Inode.nodeID`).
    var exportHandleType: Int32? {
        let t = exportType.load(ordering: .acquiring)
        return t == Int32.min ? nil : t
    }
    private let exportType = Atomic<Int32>(Int32.min)

    private static func exportType(of fd: Int32) -> Int32 {
        var id: Int32 = 0
        var blob = [UInt8](repeating: 0, count: Int(VX_HANDLE_MAX))
        guard vx_handle_of(fd, &blob, &id) == 16 else { return Int32.min }
        return blob.withUnsafeBytes { $0.load(fromByteOffset: 4, as: Int32.self) }
    }

    /// The id of the mount the store is reached through (as name_to_handle_at(2) reports it).
    public var storeMountID: Int32 { mountID.load(ordering: .acquiring) }

    /// Reopens a file from a handle blob of the store's mount, as an O_PATH descriptor.
    func open(handle: [UInt8]) -> Int32 {
        handle.withUnsafeBufferPointer { vx_open_handle(mountFD.load(ordering: .acquiring), $0.baseAddress, Int32($0.count)) }
    }

    public var openCount: Int { open.load(ordering: .relaxed) }

    /// The handle of the file behind `fd`, when it can be reopened from it.
    func handle(of fd: Int32) -> [UInt8]? {
        let mountID = storeMountID
        guard mountID >= 0 else { return nil }
        var blob = [UInt8](repeating: 0, count: Int(VX_HANDLE_MAX))
        var id: Int32 = 0
        let n = vx_handle_of(fd, &blob, &id)
        // Files on another filesystem mounted inside STORE would need that mount's descriptor.
        guard n > 0, id == mountID else { return nil }
        return Array(blob.prefix(Int(n)))
    }

    func opened() { open.add(1, ordering: .relaxed) }
    func closed() { open.subtract(1, ordering: .relaxed) }

    /// The inode's descriptor, reopened from its handle if it was evicted. Returns the descriptor
    /// and whether it had to be reopened. Valid until the matching `unpin`.
    func pin(_ inode: Inode) throws(Errno) -> (fd: Int32, reopened: Bool) {
        let result: Result<(Int32, Bool), Errno> = inode.descriptor.withLock { state in
            var reopened = false
            if state.fd < 0 {
                guard let handle = inode.handle else { return .failure(.badFileDescriptor) }
                let fd = open(handle: handle)
                guard fd >= 0 else { return .failure(Errno.current) }
                state.fd = fd
                opened()
                reopened = true
            }
            state.pins += 1
            state.referenced = true
            return .success((state.fd, reopened))
        }
        return try result.get()
    }

    func unpin(_ inode: Inode) {
        inode.descriptor.withLock { $0.pins -= 1 }
    }

    /// Closes idle descriptors until the count is well under budget. Cheap when under budget.
    func sweepIfOver(_ inodes: InodeTable) {
        guard openCount > budget else { return }
        let target = budget * 3 / 4
        inodes.forEach { inode in
            guard openCount > target, inode.handle != nil else { return }
            let victim: Int32 = inode.descriptor.withLock { state in
                guard state.fd >= 0, state.pins == 0 else { return -1 }
                if state.referenced {
                    state.referenced = false
                    return -1
                }
                defer { state.fd = -1 }
                return state.fd
            }
            if victim >= 0 {
                close(victim)
                closed()
            }
        }
    }
}

/// The inodes the kernel currently knows, with their lookup counts and node ids. The root is never forgotten.
public final class InodeTable: Sendable {
    public let root: Inode
    private struct Tables {
        var byKey: [InodeKey: Inode] = [:]
        var byNodeID: [UInt64: Inode] = [:]
        /// Where made-up node ids continue (see `Inode.nodeID`).
        var nextMadeUp: UInt64 = 1 << 63
    }
    private let tables = Mutex(Tables())
    public let descriptors: Descriptors

    init(root: Inode, descriptors: Descriptors) {
        self.root = root
        self.descriptors = descriptors
    }

    /// The node id a file's handle gives it, when its handle is the store's kind of 8-byte handle.
    private func handleNodeID(_ handle: [UInt8]?) -> UInt64? {
        guard let handle, let type = descriptors.exportHandleType, handle.count == 16 else { return nil }
        let (bytes, kind) = handle.withUnsafeBytes { ($0.load(as: UInt32.self), $0.load(fromByteOffset: 4, as: Int32.self)) }
        guard bytes == 8, kind == type else { return nil }
        let id = handle.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 8, as: UInt64.self) }
        return id > Store.reservedNodeIDs ? id : nil
    }

    /// Takes a new inode in under the lock: one lookup, and its node id.
    private func insert(_ inode: Inode, _ table: inout Tables) {
        inode.lookups = 1
        table.byKey[inode.key] = inode
        if let id = handleNodeID(inode.handle), table.byNodeID[id] == nil {
            inode.nodeID = id
        } else {
            // Made up, never reused in this mount; the generation tells an old handle from a new
            // file that got the number of a file forgotten meanwhile.
            repeat { table.nextMadeUp &+= 1 } while table.byNodeID[table.nextMadeUp] != nil || table.nextMadeUp <= Store.reservedNodeIDs
            inode.nodeID = table.nextMadeUp
            inode.generation = table.nextMadeUp & 0xFFFF_FFFF
        }
        table.byNodeID[inode.nodeID] = inode
    }

    /// Returns the inode for (fd, attributes), raising its lookup count by one. When the file is
    /// already known, `fd` is closed and the known inode returned.
    func adopt(fd: Int32, attributes st: stat) -> Inode {
        let key = InodeKey(device: UInt64(st.st_dev), number: UInt64(st.st_ino))
        if key == root.key {
            close(fd)
            return root
        }
        if let known = tables.withLock({ table -> Inode? in
            guard let known = table.byKey[key] else { return nil }
            known.lookups += 1
            return known
        }) {
            close(fd)
            return known
        }
        // A new file: its handle is read outside the lock (a syscall). Another thread may adopt the
        // same file meanwhile; the first to insert wins and the other's descriptor is closed.
        let fresh = Inode(fd: fd, attributes: st, handle: descriptors.handle(of: fd))
        let (inode, surplus) = tables.withLock { table -> (Inode, Bool) in
            if let known = table.byKey[key] {
                known.lookups += 1
                return (known, true)
            }
            insert(fresh, &table)
            return (fresh, false)
        }
        if surplus {
            fresh.descriptor.withLock { $0.fd = -1 }
            close(fd)
        } else {
            descriptors.opened()
            descriptors.sweepIfOver(self)
        }
        return inode
    }

    /// Counts one more lookup of `inode` if the kernel still knows it; false if it was forgotten.
    func lookedUpAgain(_ inode: Inode) -> Bool {
        if inode === root { return true }
        return tables.withLock { table in
            guard table.byKey[inode.key] === inode else { return false }
            inode.lookups += 1
            return true
        }
    }

    /// The inode with node id `id`, known to the kernel now, without counting a lookup.
    @inline(__always)
    public func existing(nodeID id: UInt64) -> Inode? {
        tables.withLock { $0.byNodeID[id] }
    }

    /// An O_PATH descriptor of the file a node id names, found from the id alone (the kernel asks
    /// for it after it forgot the file, to answer a file handle): the id is the file's handle.
    /// nil when the id is not one a handle gave, or the file is gone.
    func reopen(nodeID id: UInt64) -> Int32? {
        guard id > Store.reservedNodeIDs, let type = descriptors.exportHandleType else { return nil }
        var blob = [UInt8](repeating: 0, count: 16)
        blob.withUnsafeMutableBytes { b in
            b.storeBytes(of: UInt32(8), as: UInt32.self)
            b.storeBytes(of: type, toByteOffset: 4, as: Int32.self)
            b.storeBytes(of: id, toByteOffset: 8, as: UInt64.self)
        }
        let fd = descriptors.open(handle: blob)
        return fd >= 0 ? fd : nil
    }

    /// Lowers the lookup count by `count`; at zero the inode is dropped and its descriptor closed.
    func forget(_ inode: Inode, _ count: UInt64) {
        if inode === root { return }
        let dropped: Inode? = tables.withLock { table in
            inode.lookups -= min(count, inode.lookups)
            guard inode.lookups == 0 else { return nil }
            if table.byNodeID[inode.nodeID] === inode { table.byNodeID[inode.nodeID] = nil }
            return table.byKey.removeValue(forKey: inode.key)
        }
        if let dropped, dropped.descriptor.withLock({ $0.fd >= 0 }) { descriptors.closed() }
        // `dropped` is released here, outside the lock, closing its descriptor.
    }

    /// The inode's descriptor, valid until the matching `unpin`. Reopening one may push the count
    /// over budget, so it may sweep.
    public func pin(_ inode: Inode) throws(Errno) -> Int32 {
        let (fd, reopened) = try descriptors.pin(inode)
        if reopened { descriptors.sweepIfOver(self) }
        return fd
    }

    public func unpin(_ inode: Inode) { descriptors.unpin(inode) }

    /// Runs `body` with the inode's descriptor pinned.
    @inline(__always)
    public func using<T>(_ inode: Inode, _ body: (Int32) throws(Errno) -> T) throws(Errno) -> T {
        let fd = try pin(inode)
        defer { unpin(inode) }
        return try body(fd)
    }

    /// The inode the kernel knows for `key`, without counting a lookup.
    public func existing(_ key: InodeKey) -> Inode? {
        if key == root.key { return root }
        return tables.withLock { $0.byKey[key] }
    }

    func forEach(_ body: (Inode) -> Void) {
        tables.withLock { table in table.byKey.values.forEach(body) }
    }

    /// How many inodes besides the root the kernel holds (for tests and stats).
    public var count: Int { tables.withLock { $0.byKey.count } }
}
