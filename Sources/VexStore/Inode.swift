import CLinux
import Glibc
import Synchronization

/// Identity of a backing file: hard links to one file are one inode.
public struct InodeKey: Hashable, Sendable {
    public let device: UInt64
    public let number: UInt64
}

/// One backing file, reached through an O_PATH descriptor that stays valid across renames and
/// after unlink. Lives as long as the kernel remembers it (its lookup count is above zero).
public final class Inode: @unchecked Sendable {
    public let fd: Int32
    public let key: InodeKey
    public let fileType: mode_t
    /// Set on the store's root only.
    public let isStoreRoot: Bool
    /// Guarded by `InodeTable.inodesByKey`'s lock.
    fileprivate var lookups: UInt64 = 0
    /// The kernel asks for security.capability before every write under writeback caching; once the
    /// backing file is known to have none, the answer comes from here instead of a syscall.
    public let knownWithoutCapability = Atomic<Bool>(false)

    init(fd: Int32, attributes st: stat, isStoreRoot: Bool = false) {
        self.fd = fd
        self.key = InodeKey(device: UInt64(st.st_dev), number: UInt64(st.st_ino))
        self.fileType = st.st_mode & S_IFMT
        self.isStoreRoot = isStoreRoot
    }

    public var isSymlink: Bool { fileType == S_IFLNK }
    public var isDirectory: Bool { fileType == S_IFDIR }

    deinit { close(fd) }
}

/// The inodes the kernel currently knows, with their lookup counts. The root is never forgotten.
public final class InodeTable: Sendable {
    public let root: Inode
    private let inodesByKey = Mutex<[InodeKey: Inode]>([:])

    init(root: Inode) { self.root = root }

    /// Returns the inode for (fd, attributes), raising its lookup count by one. When the file is
    /// already known, `fd` is closed and the known inode returned.
    func adopt(fd: Int32, attributes st: stat) -> Inode {
        let key = InodeKey(device: UInt64(st.st_dev), number: UInt64(st.st_ino))
        if key == root.key {
            close(fd)
            return root
        }
        let (inode, surplus) = inodesByKey.withLock { table -> (Inode, Bool) in
            if let known = table[key] {
                known.lookups += 1
                return (known, true)
            }
            let fresh = Inode(fd: fd, attributes: st, isStoreRoot: false)
            fresh.lookups = 1
            table[key] = fresh
            return (fresh, false)
        }
        if surplus { close(fd) }
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
        _ = dropped  // released (and closed) outside the lock
    }

    /// How many inodes besides the root the kernel holds (for tests and stats).
    public var count: Int { inodesByKey.withLock { $0.count } }
}
