// VexStore owns the backing store: an ordinary directory (STORE) whose files are the truth. Every file
// seen through the mount is the file at the same relative path under STORE, byte for byte. An `Inode`
// is reached through an O_PATH descriptor of its backing file, found by (st_dev, st_ino) so hard
// links share one inode; every operation works with `*at()` calls relative to those descriptors and
// never rebuilds path strings, so renames made elsewhere cannot confuse it. The descriptors are a
// bounded cache (`Descriptors`): idle ones are reopened from the kernel's file handle when needed, so
// any number of remembered files fits in the process's descriptor limit. STORE/.vexfs/ holds vexfs's
// own state: lookups do not find it and listings flag it. Nothing in this module knows about FUSE:
// callers pass names as C strings and a `Caller` for ownership, and get back inodes, `stat`s and
// typed `Errno`s.
import CLinux
import Glibc
import SystemPackage

/// Who asked: new files belong to the caller, as on a local filesystem, even when the daemon is root;
/// answers name only files the caller could read (PRODUCT.md §1).
public struct Caller: Sendable {
    public var uid: uid_t
    public var gid: gid_t
    /// Supplementary groups, where a permission check needs them (empty where it does not).
    public var groups: [gid_t]
    /// Whether the asker has given up on this request (a signal interrupted the system call): long
    /// work for it stops at its next check. Valid only while the request is served.
    public var interrupted: (@Sendable () -> Bool)?

    public init(uid: uid_t, gid: gid_t, groups: [gid_t] = [], interrupted: (@Sendable () -> Bool)? = nil) {
        self.uid = uid
        self.gid = gid
        self.groups = groups
        self.interrupted = interrupted
    }

    public static let root = Caller(uid: 0, gid: 0)
    public var seesEverything: Bool { uid == 0 }

    /// Runs `body` with this thread's file access checked as this caller: the kernel's own rules
    /// (mode bits, ACLs, search permission on each directory walked), as `StoreFiles.mayAccess` and
    /// every `*at()` call in `body` meet them. Root's `body` runs as the daemon. `body` must not make
    /// the daemon's own files (the journal, snapshots): they would be refused, or be the caller's.
    /// When the thread cannot take the caller's identity, `failure` is thrown and `body` never runs.
    public func withAccess<R, E: Error>(orElse failure: @autoclosure () -> E, _ body: () throws(E) -> R) throws(E) -> R {
        guard uid != 0 else { return try body() }
        let became = groups.withUnsafeBufferPointer { vx_thread_become(uid, gid, $0.baseAddress, $0.count) } == 0
        defer {
            // Root may always take its ids back. Were it ever refused, the thread would go on with
            // less power than the daemon's, never more: its later requests fail, nobody gains.
            var tries = 0
            while Caller.daemonGroups.withUnsafeBufferPointer({ vx_thread_restore($0.baseAddress, $0.count) }) != 0 && tries < 3 { tries += 1 }
        }
        guard became else { throw failure() }
        return try body()
    }

    /// The daemon's supplementary groups at start, given back to a thread after `withAccess`.
    private static let daemonGroups: [gid_t] = {
        let n = getgroups(0, nil)
        guard n > 0 else { return [] }
        var list = [gid_t](repeating: 0, count: Int(n))
        let got = getgroups(n, &list)
        return Array(list.prefix(Int(max(got, 0))))
    }()
}

/// A looked-up name: the inode (its lookup count already raised by one) and its attributes.
public struct Entry {
    public let inode: Inode
    public let attributes: stat
}

public final class Store: Sendable {
    /// The one name at the top of STORE that belongs to vexfs and is hidden from the mount.
    public static let reservedName = ".vexfs"

    public let rootPath: String
    public let inodes: InodeTable
    /// Whether the daemon may give new files to their caller (it can when it is root).
    private let canChown: Bool

    /// Opens STORE, an existing directory; creates STORE/.vexfs/. At most `descriptorBudget`
    /// descriptors are kept open for idle inodes (see `Descriptors`).
    /// `makesState`: makes STORE/.vexfs (root's alone) if it is not there; false for a mount that
    /// writes nothing into the store (`-o ro,norecovery`).
    public init(rootPath: String, descriptorBudget: Int = Store.defaultDescriptorBudget, makesState: Bool = true) throws(Errno) {
        self.rootPath = rootPath
        let fd = Glibc.open(rootPath, vx_O_PATH | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw Errno.current }
        var st = stat()
        guard fstatat(fd, "", &st, vx_AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) == 0 else {
            let e = Errno.current
            close(fd)
            throw e
        }
        do {
            inodes = InodeTable(root: Inode(fd: fd, attributes: st, handle: nil, isStoreRoot: true),
                                descriptors: try Descriptors(rootPath: rootPath, budget: descriptorBudget))
        } catch {
            close(fd)
            throw error
        }
        canChown = geteuid() == 0
        guard makesState else { return }
        // vexfs's state holds every user's vectors and paths: root's alone, whatever it was before.
        if mkdirat(fd, Store.reservedName, 0o700) != 0 && errno != EEXIST { throw Errno.current }
        if geteuid() == 0 {
            var st = stat()
            if fstatat(fd, Store.reservedName, &st, AT_SYMLINK_NOFOLLOW) == 0, st.st_mode & S_IFMT == S_IFDIR {
                _ = fchmodat(fd, Store.reservedName, 0o700, 0)
            }
        }
    }

    public var root: Inode { inodes.root }
    var descriptors: Descriptors { inodes.descriptors }

    /// Three quarters of what the process may open, leaving the rest to open files and directories.
    public static var defaultDescriptorBudget: Int {
        var limit = rlimit()
        guard getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return 768 }
        return max(64, Int(min(limit.rlim_cur, 1 << 24)) * 3 / 4 - 256)
    }

    static func isReserved(_ parent: Inode, _ name: UnsafePointer<CChar>) -> Bool {
        parent.isStoreRoot && strcmp(name, reservedName) == 0
    }

    // MARK: names

    public func lookup(_ parent: Inode, _ name: UnsafePointer<CChar>) throws(Errno) -> Entry {
        if Store.isReserved(parent, name) { throw .noSuchFileOrDirectory }
        let fd = try inodes.using(parent) { dir throws(Errno) in
            let fd = openat(dir, name, vx_O_PATH | O_NOFOLLOW | O_CLOEXEC)
            guard fd >= 0 else { throw Errno.current }
            return fd
        }
        var st = stat()
        guard fstatat(fd, "", &st, vx_AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) == 0 else {
            let e = Errno.current
            close(fd)
            throw e
        }
        let inode = inodes.adopt(fd: fd, attributes: st)
        if inode !== root { inode.location.withLock { $0 = Inode.Location(parent: parent, name: name) } }
        return Entry(inode: inode, attributes: st)
    }

    /// The path of `inode` relative to the store's root (empty for the root), from the locations
    /// the inodes remember; nil when a link of the chain is unknown. For messages: never opened.
    public func relativePath(_ inode: Inode) -> [UInt8]? {
        var parts: [[UInt8]] = []
        var current = inodes.existing(inode.key) ?? inode
        while !current.isStoreRoot {
            guard let location = current.location.withLock({ $0 }), parts.count < 4096 else { return nil }
            parts.append(location.name)
            current = inodes.existing(location.parent.key) ?? location.parent
        }
        return Array(parts.reversed().joined(separator: [0x2F]))
    }

    /// Identity and type of what is at (parent, name), known to the kernel or not.
    public func child(_ parent: Inode, _ name: UnsafePointer<CChar>) -> (key: InodeKey, isDirectory: Bool)? {
        guard let st = entry(parent, name) else { return nil }
        return (InodeKey(device: UInt64(st.st_dev), number: UInt64(st.st_ino)), st.st_mode & S_IFMT == S_IFDIR)
    }

    /// The inode the kernel knows at (parent, name), if any.
    public func known(_ parent: Inode, _ name: UnsafePointer<CChar>) -> Inode? {
        guard let st = entry(parent, name) else { return nil }
        return inodes.existing(InodeKey(device: UInt64(st.st_dev), number: UInt64(st.st_ino)))
    }

    /// What is at (parent, name) itself (a link is not followed), or nil when nothing is there.
    private func entry(_ parent: Inode, _ name: UnsafePointer<CChar>) -> stat? {
        var st = stat()
        do {
            try inodes.using(parent) { dir throws(Errno) in try check(fstatat(dir, name, &st, AT_SYMLINK_NOFOLLOW)) }
        } catch {
            return nil
        }
        return st
    }

    /// The inode the kernel knows with inode number `number` on `parent`'s filesystem (as a
    /// directory entry names it), without a system call.
    public func known(in parent: Inode, number: UInt64) -> Inode? {
        inodes.existing(InodeKey(device: parent.key.device, number: number))
    }

    public func forget(_ inode: Inode, _ count: UInt64) { inodes.forget(inode, count) }

    public func attributes(_ inode: Inode) throws(Errno) -> stat {
        var st = stat()
        try inodes.using(inode) { fd throws(Errno) in try check(fstatat(fd, "", &st, vx_AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW)) }
        return st
    }

    /// What statx(2) tells of a file beyond `attributes`: its birth time, if the store's filesystem
    /// records one, and its attribute flags (STATX_ATTR_*) with the mask of those it supports.
    public struct BirthAndFlags {
        public var birth: timespec?
        public var attributes: UInt64
        public var attributesMask: UInt64
    }

    public func birthAndFlags(_ inode: Inode) throws(Errno) -> BirthAndFlags {
        var hasBirth: Int32 = 0
        var seconds: Int64 = 0
        var nanoseconds: UInt32 = 0
        var result = BirthAndFlags(birth: nil, attributes: 0, attributesMask: 0)
        try inodes.using(inode) { fd throws(Errno) in
            try check(vx_statx_birth(fd, &hasBirth, &seconds, &nanoseconds, &result.attributes, &result.attributesMask))
        }
        if hasBirth != 0 { result.birth = timespec(tv_sec: Int(seconds), tv_nsec: Int(nanoseconds)) }
        return result
    }

    public func mkdir(_ parent: Inode, _ name: UnsafePointer<CChar>, mode: mode_t, caller: Caller) throws(Errno) -> Entry {
        try refuseReserved(parent, name)
        try inodes.using(parent) { dir throws(Errno) in try check(mkdirat(dir, name, mode)) }
        giveToCaller(parent, name, caller)
        return try lookup(parent, name)
    }

    public func mknod(_ parent: Inode, _ name: UnsafePointer<CChar>, mode: mode_t, device: dev_t, caller: Caller) throws(Errno) -> Entry {
        try refuseReserved(parent, name)
        try inodes.using(parent) { dir throws(Errno) in try check(mknodat(dir, name, mode, device)) }
        giveToCaller(parent, name, caller)
        return try lookup(parent, name)
    }

    public func symlink(_ target: UnsafePointer<CChar>, _ parent: Inode, _ name: UnsafePointer<CChar>, caller: Caller) throws(Errno) -> Entry {
        try refuseReserved(parent, name)
        try inodes.using(parent) { dir throws(Errno) in try check(symlinkat(target, dir, name)) }
        giveToCaller(parent, name, caller)
        return try lookup(parent, name)
    }

    public func link(_ inode: Inode, _ newParent: Inode, _ newName: UnsafePointer<CChar>) throws(Errno) -> Entry {
        try refuseReserved(newParent, newName)
        try inodes.using(inode) { fd throws(Errno) in
            try inodes.using(newParent) { dir throws(Errno) in try check(vx_link(fd, dir, newName)) }
        }
        return try lookup(newParent, newName)
    }

    public func unlink(_ parent: Inode, _ name: UnsafePointer<CChar>) throws(Errno) {
        try refuseReserved(parent, name)
        try inodes.using(parent) { dir throws(Errno) in try check(unlinkat(dir, name, 0)) }
    }

    public func rmdir(_ parent: Inode, _ name: UnsafePointer<CChar>) throws(Errno) {
        try refuseReserved(parent, name)
        try inodes.using(parent) { dir throws(Errno) in try check(unlinkat(dir, name, AT_REMOVEDIR)) }
    }

    /// `flags` are renameat2's: RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_WHITEOUT (the whiteout left
    /// at the old name belongs to `caller`, as the store's filesystem would make it theirs).
    public func rename(_ parent: Inode, _ name: UnsafePointer<CChar>, _ newParent: Inode, _ newName: UnsafePointer<CChar>, flags: UInt32,
                       caller: Caller? = nil) throws(Errno) {
        try refuseReserved(parent, name)
        try refuseReserved(newParent, newName)
        guard flags & ~(vx_RENAME_NOREPLACE | vx_RENAME_EXCHANGE | vx_RENAME_WHITEOUT) == 0 else { throw .invalidArgument }
        try inodes.using(parent) { from throws(Errno) in
            try inodes.using(newParent) { to throws(Errno) in try check(vx_renameat2(from, name, to, newName, flags)) }
        }
        if flags & vx_RENAME_WHITEOUT != 0, let caller { giveToCaller(parent, name, caller) }
        // The moved files' locations follow them.
        known(newParent, newName)?.location.withLock { $0 = Inode.Location(parent: newParent, name: newName) }
        if flags & vx_RENAME_EXCHANGE != 0 {
            known(parent, name)?.location.withLock { $0 = Inode.Location(parent: parent, name: name) }
        }
    }

    public func readlink(_ inode: Inode) throws(Errno) -> [CChar] {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let n = try inodes.using(inode) { fd throws(Errno) in
            let n = readlinkat(fd, "", &buffer, buffer.count - 1)
            guard n >= 0 else { throw Errno.current }
            return n
        }
        buffer.removeSubrange(n...)
        buffer.append(0)
        return buffer
    }

    // MARK: attributes

    public struct AttributeChange {
        public var mode: mode_t?
        public var uid: uid_t?
        public var gid: gid_t?
        public var size: off_t?
        public var atime: TimeChange = .omit
        public var mtime: TimeChange = .omit
        /// Nothing else is asked, yet the change time moves, as chown(f, -1, -1) moves it.
        public var changeTimeOnly = false
        public init() {}
    }

    public enum TimeChange {
        case omit, now
        case set(timespec)
        var parts: (Int64, Int) {
            switch self {
            case .omit: (0, vx_UTIME_OMIT)
            case .now: (0, vx_UTIME_NOW)
            case .set(let ts): (Int64(ts.tv_sec), ts.tv_nsec)
            }
        }
    }

    /// Applies `change`, using the open file when the caller has one (ftruncate on a file that was
    /// unlinked while open must still work), and returns the new attributes.
    public func setAttributes(_ inode: Inode, _ change: AttributeChange, openFile: OpenFile?) throws(Errno) -> stat {
        try inodes.using(inode) { fd throws(Errno) in try setAttributes(inode, fd, change, openFile) }
        return try attributes(inode)
    }

    private func setAttributes(_ inode: Inode, _ path: Int32, _ change: AttributeChange, _ openFile: OpenFile?) throws(Errno) {
        if let mode = change.mode {
            if mode & (S_ISUID | S_ISGID) != 0 { inode.knownUnprivileged.store(false, ordering: .relaxed) }
            try check(vx_chmod(path, mode))
        }
        if change.changeTimeOnly && change.mode == nil && change.uid == nil && change.gid == nil && !inode.isSymlink {
            // chmod to the mode it has: chown(2) itself would drop set-id bits again (the kernel
            // also sends this request when a write drops security.capability, which keeps them).
            var st = stat()
            try check(fstatat(path, "", &st, vx_AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW))
            try check(vx_chmod(path, st.st_mode & 0o7777))
        }
        if change.uid != nil || change.gid != nil {
            let uid = change.uid ?? uid_t.max, gid = change.gid ?? gid_t.max
            try check(fchownat(path, "", uid, gid, vx_AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW))
        }
        if let size = change.size {
            if let openFile {
                try check(ftruncate(openFile.fd, size))
            } else {
                let fd = vx_reopen(path, O_WRONLY | O_CLOEXEC)
                guard fd >= 0 else { throw Errno.current }
                defer { close(fd) }
                try check(ftruncate(fd, size))
            }
        }
        switch (change.atime, change.mtime) {
        case (.omit, .omit): break
        default:
            let (asec, ansec) = change.atime.parts, (msec, mnsec) = change.mtime.parts
            if let openFile {
                try check(vx_futimens(openFile.fd, asec, ansec, msec, mnsec))
            } else {
                try check(vx_utimens(path, inode.isSymlink ? 1 : 0, asec, ansec, msec, mnsec))
            }
        }
    }

    /// What a local filesystem does when an unprivileged user writes to or truncates a file: drop
    /// set-user-id, set-group-id (where group execution is on, or the writer is not in the file's
    /// group, as `writerInGroup` tells) and security.capability. The kernel leaves this to vexfs when
    /// it negotiated FUSE_HANDLE_KILLPRIV_V2. `fd` is the open file's descriptor, or nil to reach
    /// the file through its inode.
    public func dropPrivileges(_ inode: Inode, openFile fd: Int32?, writerInGroup: (gid_t) -> Bool) throws(Errno) {
        var left: mode_t = 0
        if inode.knownUnprivileged.load(ordering: .relaxed) || inode.fileType != S_IFREG { return }
        try inodes.using(inode) { path throws(Errno) in
            var st = stat()
            try check(fd.map { fstat($0, &st) } ?? fstatat(path, "", &st, vx_AT_EMPTY_PATH))
            var kill: mode_t = st.st_mode & S_ISUID
            if st.st_mode & S_ISGID != 0 && (st.st_mode & S_IXGRP != 0 || !writerInGroup(st.st_gid)) { kill |= S_ISGID }
            left = st.st_mode & ~kill & (S_ISUID | S_ISGID)
            if kill != 0 {
                let mode = st.st_mode & 0o7777 & ~kill
                try check(fd.map { fchmod($0, mode) } ?? vx_chmod(path, mode))
            }
            // Only a capability that is there is removed: removexattr(2) is refused outright (EPERM)
            // on an append-only or immutable file, even with nothing to remove.
            let size = vx_getxattr(path, Store.capabilityName, nil, 0)
            if size >= 0 {
                let removed = fd.map { vx_fremovexattr($0, Store.capabilityName) } ?? vx_removexattr(path, Store.capabilityName)
                if removed != 0 && errno != ENODATA && errno != ENOTSUP { throw Errno.current }
            }
        }
        inode.knownWithoutCapability.store(true, ordering: .relaxed)
        // A set-group-ID a member's write kept must still be judged at the next writer's.
        if left == 0 { inode.knownUnprivileged.store(true, ordering: .relaxed) }
    }

    public static let capabilityName = "security.capability"

    public func statfs(_ inode: Inode) throws(Errno) -> statvfs {
        var sv = statvfs()
        try inodes.using(inode) { fd throws(Errno) in try check(fstatvfs(fd, &sv)) }
        return sv
    }

    // MARK: files

    /// Opens the file behind `inode`; `flags` are open(2)'s, already adjusted by the caller.
    public func open(_ inode: Inode, flags: Int32) throws(Errno) -> OpenFile {
        // The open file keeps its inode's descriptor pinned: a file unlinked while open cannot be
        // reopened from its handle.
        let path = try inodes.pin(inode)
        let fd = vx_reopen(path, (flags & ~O_CREAT) | O_CLOEXEC)
        guard fd >= 0 else {
            let e = Errno.current
            inodes.unpin(inode)
            throw e
        }
        return OpenFile(fd: fd, inode: inode, table: inodes, flags: flags)
    }

    /// Creates and opens `name`; the new file belongs to `caller`.
    public func create(_ parent: Inode, _ name: UnsafePointer<CChar>, mode: mode_t, flags: Int32, caller: Caller) throws(Errno) -> (Entry, OpenFile) {
        try refuseReserved(parent, name)
        // Exclusive first: a file we made ourselves is known to carry no capability and (without
        // set-id bits in `mode`) nothing a write must drop, which spares the kernel's per-file probe.
        var fresh = true
        let fd = try inodes.using(parent) { dir throws(Errno) in
            var fd = openat(dir, name, flags | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode)
            // The name was taken in between: open what is there, never through a symlink (a user's
            // link may point anywhere the root daemon can reach).
            if fd < 0 && errno == EEXIST && flags & O_EXCL == 0 {
                fresh = false
                fd = openat(dir, name, (flags & ~O_CREAT) | O_NOFOLLOW | O_CLOEXEC)
            }
            guard fd >= 0 else { throw Errno.current }
            return fd
        }
        // Only a file this request made is given away: chown of someone else's file is theirs to do.
        if canChown && fresh { giveToCaller(fd, parent, caller) }
        do throws(Errno) {
            let entry = try lookup(parent, name)
            if fresh {
                entry.inode.knownWithoutCapability.store(true, ordering: .relaxed)
                if mode & (S_ISUID | S_ISGID) == 0 { entry.inode.knownUnprivileged.store(true, ordering: .relaxed) }
            }
            _ = try inodes.pin(entry.inode)
            return (entry, OpenFile(fd: fd, inode: entry.inode, table: inodes, flags: flags))
        } catch {
            close(fd)
            throw error
        }
    }

    /// open(O_TMPFILE): a new file in `parent`'s filesystem with no name, open as `flags` (which
    /// write), belonging to `caller`. It is an inode like any other: linkat(2) of it (unless opened
    /// O_EXCL) gives it a name through `link`, and from then on it is found, reopened and indexed
    /// as any file; never linked, it is gone at its last close.
    public func createUnnamed(in parent: Inode, mode: mode_t, flags: Int32, caller: Caller) throws(Errno) -> (Entry, OpenFile) {
        let fd = try inodes.using(parent) { dir throws(Errno) in
            let fd = openat(dir, ".", (flags & ~(O_CREAT | O_TRUNC | O_DIRECTORY)) | vx_O_TMPFILE | O_CLOEXEC, mode)
            guard fd >= 0 else { throw Errno.current }
            return fd
        }
        if canChown { giveToCaller(fd, parent, caller) }
        var st = stat()
        let path = vx_reopen(fd, vx_O_PATH | O_CLOEXEC)
        guard path >= 0, fstat(path, &st) == 0 else {
            let e = Errno.current
            if path >= 0 { close(path) }
            close(fd)
            throw e
        }
        let inode = inodes.adopt(fd: path, attributes: st)
        inode.knownWithoutCapability.store(true, ordering: .relaxed)
        if mode & (S_ISUID | S_ISGID) == 0 { inode.knownUnprivileged.store(true, ordering: .relaxed) }
        do throws(Errno) {
            _ = try inodes.pin(inode)
        } catch {
            close(fd)
            forget(inode, 1)
            throw error
        }
        return (Entry(inode: inode, attributes: st), OpenFile(fd: fd, inode: inode, table: inodes, flags: flags))
    }

    public func openDirectory(_ inode: Inode) throws(Errno) -> DirectoryStream {
        let fd = try inodes.using(inode) { path throws(Errno) in
            let fd = openat(path, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            guard fd >= 0 else { throw Errno.current }
            return fd
        }
        guard let dir = fdopendir(fd) else {
            let e = Errno.current
            close(fd)
            throw e
        }
        return DirectoryStream(dir: dir, atStoreRoot: inode.isStoreRoot)
    }

    // MARK: extended attributes (on the backing file)

    public func getxattr(_ inode: Inode, _ name: UnsafePointer<CChar>, into buffer: UnsafeMutableRawBufferPointer?) throws(Errno) -> Int {
        try inodes.using(inode) { fd throws(Errno) in
            let n = vx_getxattr(fd, name, buffer?.baseAddress, buffer?.count ?? 0)
            guard n >= 0 else { throw Errno.current }
            return n
        }
    }

    public func setxattr(_ inode: Inode, _ name: UnsafePointer<CChar>, _ value: UnsafeRawBufferPointer, flags: Int32) throws(Errno) {
        if strcmp(name, Store.capabilityName) == 0 { inode.knownUnprivileged.store(false, ordering: .relaxed) }
        try inodes.using(inode) { fd throws(Errno) in try check(vx_setxattr(fd, name, value.baseAddress, value.count, flags)) }
    }

    /// What a local filesystem does when an access ACL is set by someone who is neither in the file's
    /// group nor privileged (root's uid stands for CAP_FSETID): set-group-ID goes, as chmod(2) would
    /// drop it. The daemon set the ACL as root, which keeps the bit.
    public func dropSetGroupIDAfterACL(_ inode: Inode, setBy caller: Caller) throws(Errno) {
        guard caller.uid != 0 else { return }
        try inodes.using(inode) { path throws(Errno) in
            var st = stat()
            try check(fstatat(path, "", &st, vx_AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW))
            guard st.st_mode & S_ISGID != 0, st.st_mode & S_IFMT != S_IFLNK, st.st_gid != caller.gid,
                  !caller.groups.contains(st.st_gid) else { return }
            try check(vx_chmod(path, st.st_mode & 0o7777 & ~S_ISGID))
        }
    }

    public static let accessACLName = "system.posix_acl_access"

    public func listxattr(_ inode: Inode, into buffer: UnsafeMutableRawBufferPointer?) throws(Errno) -> Int {
        try inodes.using(inode) { fd throws(Errno) in
            let n = vx_listxattr(fd, buffer?.baseAddress?.assumingMemoryBound(to: CChar.self), buffer?.count ?? 0)
            guard n >= 0 else { throw Errno.current }
            return n
        }
    }

    public func removexattr(_ inode: Inode, _ name: UnsafePointer<CChar>) throws(Errno) {
        try inodes.using(inode) { fd throws(Errno) in try check(vx_removexattr(fd, name)) }
    }

    // MARK: helpers

    private func refuseReserved(_ parent: Inode, _ name: UnsafePointer<CChar>) throws(Errno) {
        if Store.isReserved(parent, name) { throw .notPermitted }
    }

    /// A set-group-ID directory hands its group down (the kernel already did, as we create as root).
    private func inheritedGroup(_ parent: Inode, _ caller: Caller) -> gid_t {
        if let st = try? attributes(parent), st.st_mode & S_ISGID != 0 { return st.st_gid }
        return caller.gid
    }

    /// chown(2) drops set-user-id and set-group-id from a file that is not a directory, even for
    /// root; but whoever creates a file keeps the bits its mode asked for (the kernel has already
    /// taken away those the caller may not set). So they are put back after the file is given away.
    private func giveToCaller(_ parent: Inode, _ name: UnsafePointer<CChar>, _ caller: Caller) {
        guard canChown else { return }
        let gid = inheritedGroup(parent, caller)
        _ = try? inodes.using(parent) { dir throws(Errno) in
            // Through a descriptor of what is there now, never a name a user could swap for a link.
            let fd = openat(dir, name, vx_O_PATH | O_NOFOLLOW | O_CLOEXEC)
            guard fd >= 0 else { return }
            defer { close(fd) }
            var st = stat()
            guard fstatat(fd, "", &st, vx_AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) == 0 else { return }
            // Made by root for root (or already the caller's): a chown would change nothing.
            guard st.st_uid != caller.uid || st.st_gid != gid else { return }
            _ = fchownat(fd, "", caller.uid, gid, vx_AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW)
            if st.st_mode & (S_ISUID | S_ISGID) != 0 && st.st_mode & S_IFMT != S_IFDIR && st.st_mode & S_IFMT != S_IFLNK {
                _ = vx_chmod(fd, st.st_mode & 0o7777)
            }
        }
    }

    /// The same for a file just created and open as `fd`.
    private func giveToCaller(_ fd: Int32, _ parent: Inode, _ caller: Caller) {
        var st = stat()
        guard fstat(fd, &st) == 0 else { return }
        let gid = inheritedGroup(parent, caller)
        guard st.st_uid != caller.uid || st.st_gid != gid else { return }
        _ = fchown(fd, caller.uid, gid)
        if st.st_mode & (S_ISUID | S_ISGID) != 0 { _ = fchmod(fd, st.st_mode & 0o7777) }
    }
}

@inline(__always)
func check(_ result: Int32) throws(Errno) {
    if result != 0 { throw Errno.current }
}

extension Errno {
    static var current: Errno { Errno(rawValue: errno) }
}

extension Store {
    public func syncDirectory(_ inode: Inode, dataOnly: Bool) throws(Errno) {
        try inodes.using(inode) { path throws(Errno) in
            let fd = openat(path, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            guard fd >= 0 else { throw Errno.current }
            defer { close(fd) }
            try check(dataOnly ? fdatasync(fd) : fsync(fd))
        }
    }
}

/// How reads through the mount move access times: mount(8)'s atime options.
public enum AccessTimeRule: Sendable, Equatable {
    /// As the store's own mount does (no option given).
    case store
    case relatime, noatime, strictatime
}

extension Store {
    /// Reaches the store from now on through a private copy of its mount (submounts included) with
    /// `rule` for access times, and none for directories with `nodiratime`. Every descriptor the
    /// daemon opens then lives on that copy, and so do the backing files the kernel reads under
    /// passthrough: reads and execs through the mount move atime (in the store too) as the rule
    /// says, while the store's own mount keeps its rule for everyone else. Nothing to do for `.store`
    /// without `nodiratime`. `readOnly`: the copy is read-only, so the kernel refuses every write
    /// the daemon could make through it, access times included (`-o ro,norecovery`). Call it before
    /// any request is served: only the root may be known. Needs CAP_SYS_ADMIN (EPERM otherwise).
    public func reachThroughPrivateMount(atime rule: AccessTimeRule, nodiratime: Bool, readOnly: Bool = false) throws(Errno) {
        guard rule != .store || nodiratime || readOnly else { return }
        let attribute: UInt64 = switch rule {
        case .store: .max
        case .relatime: vx_MOUNT_ATTR_RELATIME
        case .noatime: vx_MOUNT_ATTR_NOATIME
        case .strictatime: vx_MOUNT_ATTR_STRICTATIME
        }
        let top = try inodes.using(root) { fd throws(Errno) in
            let top = vx_private_mount(fd, attribute, nodiratime ? 1 : 0, readOnly ? 1 : 0)
            guard top >= 0 else { throw Errno.current }
            return top
        }
        let real = openat(top, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard real >= 0 else {
            let e = Errno.current
            close(top)
            throw e
        }
        let old = root.descriptor.withLock { state in
            defer { state.fd = top }
            return state.fd
        }
        close(old)
        descriptors.remount(root: real)
    }
}

// MARK: export: finding files again by node id (file handles, NFS)

extension Store {
    /// Node ids below this are never a file's: 1 is the root, 2 to 4 are `.vexfs/`'s, the rest spare.
    public static let reservedNodeIDs: UInt64 = 15

    /// LOOKUP of "." on node id `id`: the kernel decodes a file handle of a file it no longer has
    /// in its cache (after dropped caches, or in a later mount). Counts a lookup. ESTALE when the
    /// id names no file any more.
    public func find(nodeID id: UInt64) throws(Errno) -> Entry {
        if id == 1 { return Entry(inode: root, attributes: try attributes(root)) }
        if let known = inodes.existing(nodeID: id), inodes.lookedUpAgain(known) {
            do throws(Errno) {
                return Entry(inode: known, attributes: try attributes(known))
            } catch {
                forget(known, 1)
                throw error
            }
        }
        guard let fd = inodes.reopen(nodeID: id) else { throw .staleNFSFileHandle }
        let entry = try adopt(fd)
        // The handle could open a file the table knows under another id (made up, when its own was
        // taken): that id is what the kernel must use, so this one is stale.
        // A file unlinked since is stale too, though a descriptor held somewhere keeps it alive.
        guard entry.inode.nodeID == id, !isStateDirectory(entry.inode), entry.attributes.st_nlink > 0 else {
            forget(entry.inode, 1)
            throw .staleNFSFileHandle
        }
        return entry
    }

    /// LOOKUP of ".." on directory `inode`: its parent (the root is its own). Counts a lookup.
    public func parent(of inode: Inode) throws(Errno) -> Entry {
        guard inode.isDirectory else { throw .notDirectory }
        if inode.isStoreRoot { return try find(nodeID: 1) }
        let fd = try inodes.using(inode) { dir throws(Errno) in
            let fd = openat(dir, "..", vx_O_PATH | O_DIRECTORY | O_CLOEXEC)
            guard fd >= 0 else { throw Errno.current }
            return fd
        }
        return try adopt(fd)
    }

    /// An inode for the O_PATH descriptor `fd` (taken over), with its attributes; one lookup counted.
    private func adopt(_ fd: Int32) throws(Errno) -> Entry {
        var st = stat()
        guard fstatat(fd, "", &st, vx_AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) == 0 else {
            let e = Errno.current
            close(fd)
            throw e
        }
        return Entry(inode: inodes.adopt(fd: fd, attributes: st), attributes: st)
    }

    /// STORE/.vexfs, which the mount never shows.
    private func isStateDirectory(_ inode: Inode) -> Bool {
        guard inode.isDirectory, !inode.isStoreRoot else { return false }
        return child(root, Store.reservedName)?.key == inode.key
    }
}
