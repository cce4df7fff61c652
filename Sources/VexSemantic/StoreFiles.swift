import CLinux
import Glibc

// How the vector layer reaches the store's files. A root daemon serving users who do not trust each
// other must never be steered by a name: every file is reached relative to a directory descriptor
// the layer holds (a collection's own) or through the file's own descriptor, never through a path
// rebuilt from remembered names; a final symlink is never followed (O_NOFOLLOW, AT_SYMLINK_NOFOLLOW);
// only regular files are read, checked with fstat on the descriptor that is read; and no more is
// read than that fstat says, within a limit given by the caller, so a file that grows or is
// truncated meanwhile cannot make the daemon allocate what it did not check.

/// Who made a request: answers name only files this caller could read (PRODUCT.md §1).
public struct Requester: Sendable {
    public let uid: uid_t
    public let gid: gid_t
    public let groups: [gid_t]

    public init(uid: uid_t, gid: gid_t, groups: [gid_t] = []) {
        self.uid = uid
        self.gid = gid
        self.groups = groups
    }

    public static let root = Requester(uid: 0, gid: 0)
    public var seesEverything: Bool { uid == 0 }

    /// Whether the mode bits let this caller read a file: the owner's bits for its owner, the
    /// group's for a member of its group, the others' for everyone else (as the kernel decides).
    public func mayRead(_ st: stat) -> Bool {
        if uid == 0 { return true }
        if st.st_uid == uid { return st.st_mode & S_IRUSR != 0 }
        if st.st_gid == gid || groups.contains(st.st_gid) { return st.st_mode & S_IRGRP != 0 }
        return st.st_mode & S_IROTH != 0
    }

    /// Whether the mode bits let this caller enter a directory (search permission).
    public func maySearch(_ st: stat) -> Bool {
        if uid == 0 { return true }
        if st.st_uid == uid { return st.st_mode & S_IXUSR != 0 }
        if st.st_gid == gid || groups.contains(st.st_gid) { return st.st_mode & S_IXGRP != 0 }
        return st.st_mode & S_IXOTH != 0
    }
}

/// The inode number of the file behind `fd`.
func inodeNumber(_ fd: Int32) -> UInt64? {
    var st = stat()
    return fstat(fd, &st) == 0 ? UInt64(st.st_ino) : nil
}

enum StoreFiles {
    /// What is at `name` in `dir`, not following a symlink.
    static func stat(_ dir: Int32, _ name: FileName) -> Glibc.stat? {
        var st = Glibc.stat()
        let rc = name.withCString { fstatat(dir, $0, &st, AT_SYMLINK_NOFOLLOW) }
        return rc == 0 ? st : nil
    }

    static func isRegular(_ st: Glibc.stat) -> Bool { st.st_mode & S_IFMT == S_IFREG }

    /// The contents of the regular file `name` in `dir`: at most `limit` bytes, and never more than
    /// the fstat of the opened descriptor says.
    static func read(_ dir: Int32, _ name: FileName, limit: Int) -> Result<[UInt8], FormatError> {
        guard let st = stat(dir, name) else { return .failure(FormatError("cannot be read: \(String(cString: strerror(errno)))")) }
        guard isRegular(st) else { return .failure(FormatError(notRegular(st))) }
        let fd = name.withCString { openat(dir, $0, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC) }
        guard fd >= 0 else { return .failure(FormatError(errno == ELOOP ? "a symbolic link is never a vector" : "cannot be read: \(String(cString: strerror(errno)))")) }
        defer { close(fd) }
        return read(open: fd, limit: limit)
    }

    /// The contents of the regular file behind the O_PATH descriptor `opath` (a query made through a
    /// descriptor is answered for the file that descriptor names, whatever its name is now).
    static func read(opath: Int32, limit: Int) -> Result<[UInt8], FormatError> {
        var st = Glibc.stat()
        guard fstat(opath, &st) == 0 else { return .failure(FormatError("cannot be read: \(String(cString: strerror(errno)))")) }
        guard isRegular(st) else { return .failure(FormatError(notRegular(st))) }
        let fd = vx_reopen(opath, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC)
        guard fd >= 0 else { return .failure(FormatError("cannot be read: \(String(cString: strerror(errno)))")) }
        defer { close(fd) }
        return read(open: fd, limit: limit)
    }

    private static func read(open fd: Int32, limit: Int) -> Result<[UInt8], FormatError> {
        var st = Glibc.stat()
        guard fstat(fd, &st) == 0 else { return .failure(FormatError("cannot be read: \(String(cString: strerror(errno)))")) }
        guard isRegular(st) else { return .failure(FormatError(notRegular(st))) }
        let size = Int(st.st_size)
        guard size <= limit else { return .failure(FormatError("absurd size: \(size) bytes (the limit is \(limit))")) }
        guard size > 0 else { return .failure(FormatError("empty file")) }
        var bytes = [UInt8](repeating: 0, count: size)
        var done = 0
        let failure: Int32? = bytes.withUnsafeMutableBytes { buf in
            while done < size {
                let n = pread(fd, buf.baseAddress! + done, size - done, off_t(done))
                if n < 0 { if errno == EINTR { continue }; return errno }
                if n == 0 { break }  // truncated meanwhile: what is there
                done += n
            }
            return nil
        }
        if let failure { return .failure(FormatError("cannot be read: \(String(cString: strerror(failure)))")) }
        bytes.removeLast(size - done)
        guard done > 0 else { return .failure(FormatError("empty file")) }
        return .success(bytes)
    }

    static func notRegular(_ st: Glibc.stat) -> String {
        switch st.st_mode & S_IFMT {
        case S_IFLNK: "a symbolic link is never a vector"
        case S_IFDIR: "a directory is not a vector"
        default: "not a regular file"
        }
    }

    /// The extended attribute `attribute` of the regular file `name` in `dir` (nil for anything else).
    static func attribute(_ dir: Int32, _ name: FileName, _ attribute: String, limit: Int = 1 << 16) -> [UInt8]? {
        let fd = name.withCString { openat(dir, $0, vx_O_PATH | O_NOFOLLOW | O_CLOEXEC) }
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        return self.attribute(opath: fd, attribute, limit: limit)
    }

    static func attribute(opath fd: Int32, _ attribute: String, limit: Int = 1 << 16) -> [UInt8]? {
        var st = Glibc.stat()
        guard fstat(fd, &st) == 0, isRegular(st) || st.st_mode & S_IFMT == S_IFDIR else { return nil }
        let size = vx_getxattr(fd, attribute, nil, 0)
        guard size >= 0, size <= limit else { return nil }
        var bytes = [UInt8](repeating: 0, count: size)
        let n = bytes.withUnsafeMutableBytes { vx_getxattr(fd, attribute, $0.baseAddress, size) }
        guard n >= 0 else { return nil }
        bytes.removeLast(size - n)
        return bytes
    }

    static func setAttribute(opath fd: Int32, _ attribute: String, _ value: String) {
        _ = value.withCString { vx_setxattr(fd, attribute, $0, strlen($0), 0) }
    }

    static func setAttribute(opath fd: Int32, _ attribute: String, bytes: [UInt8]) -> Bool {
        bytes.withUnsafeBytes { vx_setxattr(fd, attribute, $0.baseAddress, $0.count, 0) } == 0
    }

    static func removeAttribute(opath fd: Int32, _ attribute: String) -> Bool {
        vx_removexattr(fd, attribute) == 0
    }

    /// A descriptor of the directory `name` in `dir` to hold (O_PATH; `name` "." for `dir` itself).
    static func holdDirectory(_ dir: Int32, _ name: FileName) -> Int32? {
        let fd = name.withCString { openat(dir, $0, vx_O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC) }
        return fd >= 0 ? fd : nil
    }

    /// The regular files and the sub-directories of the directory behind `dir` (a symlink is neither).
    static func entries(_ dir: Int32) -> (files: [FileName], directories: [FileName]) {
        let fd = openat(dir, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { return ([], []) }
        guard let d = fdopendir(fd) else { close(fd); return ([], []) }
        defer { closedir(d) }
        var files: [FileName] = [], directories: [FileName] = []
        while let e = readdir(d) {
            // The name is read in place: a dirent is only as long as its name, shorter than the struct.
            let name = FileName(cString: UnsafeRawPointer(e).advanced(by: MemoryLayout<dirent>.offset(of: \dirent.d_name)!)
                .assumingMemoryBound(to: CChar.self))
            if name.bytes == [0x2E] || name.bytes == [0x2E, 0x2E] { continue }
            var type = e.pointee.d_type
            if type == UInt8(DT_UNKNOWN), let st = stat(dir, name) {
                type = st.st_mode & S_IFMT == S_IFDIR ? UInt8(DT_DIR) : st.st_mode & S_IFMT == S_IFREG ? UInt8(DT_REG) : type
            }
            if type == UInt8(DT_REG) { files.append(name) } else if type == UInt8(DT_DIR) { directories.append(name) }
        }
        return (files, directories)
    }
}

// MARK: the state directory and other helpers

func statFile(_ path: String) -> stat? {
    var st = stat()
    return lstat(path, &st) == 0 ? st : nil
}

func hasVectorAttribute(_ dir: Int32, _ name: FileName) -> Bool {
    StoreFiles.attribute(dir, name, SemanticLayer.vectorAttribute) != nil
}

// The state directory (STORE/.vexfs, root's alone) is the only place read by path.

/// The regular files and the sub-directories of the state directory `dir`, by name.
func entries(_ dir: String) -> (files: [String], directories: [String]) {
    let fd = open(dir, vx_O_PATH | O_DIRECTORY | O_CLOEXEC)
    guard fd >= 0 else { return ([], []) }
    defer { close(fd) }
    let (files, directories) = StoreFiles.entries(fd)
    return (files.map(\.text), directories.map(\.text))
}

func listFiles(_ dir: String) -> [String] { entries(dir).files }
func listDirectories(_ dir: String) -> [String] { entries(dir).directories }

/// Deletes `path` and everything under it (an index directory: plain files, no links to follow).
func removeTree(_ path: String) {
    guard let st = statFile(path) else { return }
    if st.st_mode & S_IFMT == S_IFDIR {
        for name in listFiles(path) { unlink(path + "/" + name) }
        for name in listDirectories(path) { removeTree(path + "/" + name) }
        rmdir(path)
    } else {
        unlink(path)
    }
}
