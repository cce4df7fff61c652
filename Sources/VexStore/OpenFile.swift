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

    private let table: InodeTable?

    /// Takes over a pin of `inode`'s descriptor, released when the file is closed.
    init(fd: Int32, inode: Inode, table: InodeTable) {
        self.fd = fd
        self.inode = inode
        self.table = table
    }

    /// Contents vexfs made itself (held in `fd`), not a file of the store.
    public init(contents fd: Int32) {
        self.fd = fd
        inode = nil
        table = nil
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

