import CFuse
import CLinux
import Glibc
import SystemPackage
import VexSemantic
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

extension Filesystem {
    /// A `.vexfs/` file, made at open, as an open file of its own.
    func openVirtual(_ req: fuse_req_t?, _ id: fuse_ino_t) throws(Errno) -> OpenFile {
        if id == VirtualNode.journal, let semantic {
            // Everything for root and the store's owner; anyone else sees the events on paths they
            // may read. Opens by one reader share one view (see `journalFile`).
            let who = requester(req)
            let owner = try store.attributes(store.root).st_uid
            do { return OpenFile(contents: try semantic.journalFile(visibleTo: who.uid == owner ? .root : who)) } catch {
                throw Errno(rawValue: error.errno)
            }
        }
        let bytes: [UInt8] = id == VirtualNode.stats ? Array(renderStats(req).utf8) : []
        let fd = bytes.withUnsafeBytes { vx_memfd_with(id == VirtualNode.stats ? "vexfs-stats" : "vexfs-journal", $0.baseAddress, $0.count) }
        guard fd >= 0 else { throw Errno(rawValue: errno) }
        return OpenFile(contents: fd)
    }
}
