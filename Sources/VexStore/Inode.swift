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
    /// Guarded by `InodeTable.inodesByKey`'s lock.
    fileprivate var lookups: UInt64 = 0
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
    private let mountFD: Int32
    private let mountID: Int32
    public let budget: Int
    private let open = Atomic<Int>(0)

    init(rootPath: String, budget: Int) throws(Errno) {
        mountFD = Glibc.open(rootPath, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard mountFD >= 0 else { throw Errno.current }
        var id: Int32 = 0
        var blob = [UInt8](repeating: 0, count: Int(VX_HANDLE_MAX))
        mountID = vx_handle_of(mountFD, &blob, &id) >= 0 ? id : -1
        self.budget = max(budget, 16)
    }

    deinit { close(mountFD) }

    public var openCount: Int { open.load(ordering: .relaxed) }

    /// The handle of the file behind `fd`, when it can be reopened from it.
    func handle(of fd: Int32) -> [UInt8]? {
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
                let fd = handle.withUnsafeBufferPointer { vx_open_handle(mountFD, $0.baseAddress, Int32($0.count)) }
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

/// The inodes the kernel currently knows, with their lookup counts. The root is never forgotten.
public final class InodeTable: Sendable {
    public let root: Inode
    private let inodesByKey = Mutex<[InodeKey: Inode]>([:])
    public let descriptors: Descriptors

    init(root: Inode, descriptors: Descriptors) {
        self.root = root
        self.descriptors = descriptors
    }

    /// Returns the inode for (fd, attributes), raising its lookup count by one. When the file is
    /// already known, `fd` is closed and the known inode returned.
    func adopt(fd: Int32, attributes st: stat) -> Inode {
        let key = InodeKey(device: UInt64(st.st_dev), number: UInt64(st.st_ino))
        if key == root.key {
            close(fd)
            return root
        }
        if let known = inodesByKey.withLock({ table -> Inode? in
            guard let known = table[key] else { return nil }
            known.lookups += 1
            return known
        }) {
            close(fd)
            return known
        }
        // A new file: its handle is read outside the lock (a syscall). Another thread may adopt the
        // same file meanwhile; the first to insert wins and the other's descriptor is closed.
        let fresh = Inode(fd: fd, attributes: st, handle: descriptors.handle(of: fd))
        let (inode, surplus) = inodesByKey.withLock { table -> (Inode, Bool) in
            if let known = table[key] {
                known.lookups += 1
                return (known, true)
            }
            fresh.lookups = 1
            table[key] = fresh
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

    /// Lowers the lookup count by `count`; at zero the inode is dropped and its descriptor closed.
    func forget(_ inode: Inode, _ count: UInt64) {
        if inode === root { return }
        let dropped: Inode? = inodesByKey.withLock { table in
            inode.lookups -= min(count, inode.lookups)
            guard inode.lookups == 0 else { return nil }
            return table.removeValue(forKey: inode.key)
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
        return inodesByKey.withLock { $0[key] }
    }

    func forEach(_ body: (Inode) -> Void) {
        inodesByKey.withLock { table in table.values.forEach(body) }
    }

    /// How many inodes besides the root the kernel holds (for tests and stats).
    public var count: Int { inodesByKey.withLock { $0.count } }
}
