import Glibc
import SystemPackage
import Synchronization

/// A file opened through the mount: a real descriptor of the backing file. Keeps its inode alive,
/// so a file unlinked while open stays readable and writable until the last close.
public final class OpenFile: Sendable {
    public let fd: Int32
    /// nil for contents that are not a file of the store (a virtual file).
    public let inode: Inode?
    /// Whether anything was written through this handle (the index cares on close).
    public let wasWritten = Atomic<Bool>(false)
    /// Opened for writing. Only such a handle can change the file without the daemon seeing each
    /// write: the kernel writes through it itself under FUSE passthrough, and a shared mapping of it
    /// writes pages straight to the file.
    public let writable: Bool
    /// What fstat said when the file was opened or last checked, for writable handles.
    private let lastSeen: Mutex<Version?>

    private let table: InodeTable?

    /// Size, modification and change time: every write moves at least one of them (ctime always,
    /// to the nanosecond on the filesystems a store lives on).
    struct Version: Equatable {
        let size: Int
        let mtime: timespec
        let ctime: timespec
        init(_ st: stat) { size = Int(st.st_size); mtime = st.st_mtim; ctime = st.st_ctim }
        static func == (a: Version, b: Version) -> Bool {
            a.size == b.size && a.mtime.tv_sec == b.mtime.tv_sec && a.mtime.tv_nsec == b.mtime.tv_nsec
                && a.ctime.tv_sec == b.ctime.tv_sec && a.ctime.tv_nsec == b.ctime.tv_nsec
        }
    }

    /// Takes over a pin of `inode`'s descriptor, released when the file is closed. `flags` are the
    /// open(2) flags the handle was opened with.
    init(fd: Int32, inode: Inode, table: InodeTable, flags: Int32) {
        self.fd = fd
        self.inode = inode
        self.table = table
        writable = flags & O_ACCMODE != O_RDONLY
        lastSeen = Mutex(writable ? OpenFile.version(of: fd) : nil)
    }

    /// Contents vexfs made itself (held in `fd`), not a file of the store.
    public init(contents fd: Int32) {
        self.fd = fd
        inode = nil
        table = nil
        writable = false
        lastSeen = Mutex(nil)
    }

    private static func version(of fd: Int32) -> Version? {
        var st = stat()
        return fstat(fd, &st) == 0 ? Version(st) : nil
    }

    /// Whether the file changed since it was opened or since the last call, by its size and times;
    /// always false for a handle opened read-only. For the writes the daemon does not see.
    public func changedSinceLastCheck() -> Bool {
        guard writable else { return false }
        let now = OpenFile.version(of: fd)
        return lastSeen.withLock { seen in
            defer { seen = now }
            return now != seen
        }
    }

    deinit {
        close(fd)
        if let inode { table?.unpin(inode) }
    }
}

/// An open directory: readdir's position is the backing directory's telldir cookie, so the kernel
/// can resume a listing at any offset it was given.
public final class DirectoryStream: @unchecked Sendable {
    // The kernel serialises readdir on one open directory, so this needs no lock.
    private let dir: OpaquePointer
    private let atStoreRoot: Bool
    private var position: Int = 0

    init(dir: OpaquePointer, atStoreRoot: Bool) {
        self.dir = dir
        self.atStoreRoot = atStoreRoot
    }

    deinit { closedir(dir) }

    /// The open directory's descriptor, for calls on the directory itself (ioctl).
    public var descriptor: Int32 { dirfd(dir) }

    public struct Item {
        /// Valid until the next call to `next()`.
        public let name: UnsafePointer<CChar>
        public let inodeNumber: UInt64
        public let type: UInt8
        /// Where the listing continues after this item.
        public let nextOffset: Int
        /// STORE/.vexfs: not a file of the store; the layer above shows its own directory here.
        public let isStateDirectory: Bool
    }

    /// Moves to `offset` (0, or an item's `nextOffset`), then returns items one by one; nil at the end.
    public func seek(_ offset: Int) {
        if offset != position {
            seekdir(dir, offset)
            position = offset
        }
    }

    public func next() throws(Errno) -> Item? {
        while true {
            errno = 0
            guard let ent = readdir(dir) else {
                if errno != 0 { throw Errno.current }
                return nil
            }
            let nextOffset = Int(ent.pointee.d_off)
            position = nextOffset
            let name = UnsafeRawPointer(ent).advanced(by: MemoryLayout<dirent>.offset(of: \dirent.d_name)!)
                .assumingMemoryBound(to: CChar.self)
            let isState = atStoreRoot && strcmp(name, Store.reservedName) == 0
            return Item(name: name, inodeNumber: UInt64(ent.pointee.d_ino), type: ent.pointee.d_type,
                        nextOffset: nextOffset, isStateDirectory: isState)
        }
    }

    /// Steps back so the last item is returned again (it did not fit in the reply).
    public func rewind(to offset: Int) {
        seekdir(dir, offset)
        position = offset
    }
}

