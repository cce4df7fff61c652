import CLinux
import Glibc
import SystemPackage

// How the layers above FUSE (the vector layer, `vexfs check`) reach the store's files, outside of
// the inode table. A root daemon serving users who do not trust each other must never be steered
// by a name: every file is reached relative to a directory descriptor the caller holds (a
// collection's own) or through the file's own descriptor, never through a path rebuilt from
// remembered names; a final symlink is never followed (O_NOFOLLOW, AT_SYMLINK_NOFOLLOW); only
// regular files are read, checked with fstat on the descriptor that is read; and no more is read
// than that fstat says, within a limit given by the caller, so a file that grows or is truncated
// meanwhile cannot make the daemon allocate what it did not check. Failures are `Errno`s, and a
// read says why it read nothing (`ReadRefusal`).

/// Why `StoreFiles.read` read nothing.
public enum ReadRefusal: Error, Equatable {
    /// A call failed with this errno.
    case failed(Errno)
    /// Not a regular file: its type bits (`S_IFLNK`, `S_IFDIR`, ...).
    case notRegular(mode_t)
    /// Larger than the caller's limit.
    case tooLarge(size: Int, limit: Int)
    case empty
}

public enum StoreFiles {
    /// What is at `name` in `dir`, not following a symlink.
    public static func stat(_ dir: Int32, _ name: FileName) throws(Errno) -> Glibc.stat {
        var st = Glibc.stat()
        guard name.withCString({ fstatat(dir, $0, &st, AT_SYMLINK_NOFOLLOW) }) == 0 else { throw Errno.current }
        return st
    }

    /// The inode number of the file behind `fd`.
    public static func inodeNumber(_ fd: Int32) throws(Errno) -> UInt64 {
        var st = Glibc.stat()
        guard fstat(fd, &st) == 0 else { throw Errno.current }
        return UInt64(st.st_ino)
    }

    public static func isRegular(_ st: Glibc.stat) -> Bool { st.st_mode & S_IFMT == S_IFREG }

    /// Whether this thread may access `name` in `dir` for `mode` (`R_OK`, `X_OK`, ...), by the
    /// kernel's rules for its filesystem ids (see `Caller.withAccess`); a final symlink is not followed.
    public static func mayAccess(_ dir: Int32, _ name: FileName, _ mode: Int32) -> Bool {
        name.withCString { faccessat(dir, $0, mode, AT_EACCESS | AT_SYMLINK_NOFOLLOW) } == 0
    }

    /// The directory at `path` below `root`, walked a component at a time with this thread's
    /// identity (each step needs search permission on the directory it leaves), never through a
    /// symlink; `path` empty is `root` itself. The caller closes the descriptor (O_PATH).
    public static func walk(from root: Int32, _ path: FileName) throws(Errno) -> Int32 {
        var fd = dup(root)
        guard fd >= 0 else { throw Errno.current }
        for part in path.bytes.split(separator: 0x2F) {
            let next = FileName(Array(part)).withCString { openat(fd, $0, vx_O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC) }
            let e = Errno.current
            close(fd)
            guard next >= 0 else { throw e }
            fd = next
        }
        return fd
    }

    /// The contents of the regular file `name` in `dir`: at most `limit` bytes, and never more than
    /// the fstat of the opened descriptor says.
    public static func read(_ dir: Int32, _ name: FileName, limit: Int) throws(ReadRefusal) -> [UInt8] {
        let st: Glibc.stat
        do { st = try stat(dir, name) } catch { throw .failed(error) }
        guard isRegular(st) else { throw .notRegular(st.st_mode & S_IFMT) }
        let fd = try openRegular(dir, name).fd
        defer { close(fd) }
        return try read(open: fd, limit: limit)
    }

    /// The regular file `name` in `dir` opened for reading (never through a final symlink, never
    /// blocking on a FIFO), and what fstat says of the opened file. The caller closes it.
    public static func openRegular(_ dir: Int32, _ name: FileName) throws(ReadRefusal) -> (fd: Int32, stat: Glibc.stat) {
        let fd = name.withCString { openat(dir, $0, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC) }
        guard fd >= 0 else { throw errno == ELOOP ? .notRegular(S_IFLNK) : .failed(Errno.current) }
        var st = Glibc.stat()
        guard fstat(fd, &st) == 0 else {
            let e = Errno.current
            close(fd)
            throw .failed(e)
        }
        guard isRegular(st) else {
            close(fd)
            throw .notRegular(st.st_mode & S_IFMT)
        }
        return (fd, st)
    }

    /// The contents of the regular file behind the O_PATH descriptor `opath` (a query made through a
    /// descriptor is answered for the file that descriptor names, whatever its name is now).
    public static func read(opath: Int32, limit: Int) throws(ReadRefusal) -> [UInt8] {
        var st = Glibc.stat()
        guard fstat(opath, &st) == 0 else { throw .failed(Errno.current) }
        guard isRegular(st) else { throw .notRegular(st.st_mode & S_IFMT) }
        let fd = vx_reopen(opath, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC)
        guard fd >= 0 else { throw .failed(Errno.current) }
        defer { close(fd) }
        return try read(open: fd, limit: limit)
    }

    private static func read(open fd: Int32, limit: Int) throws(ReadRefusal) -> [UInt8] {
        var st = Glibc.stat()
        guard fstat(fd, &st) == 0 else { throw .failed(Errno.current) }
        guard isRegular(st) else { throw .notRegular(st.st_mode & S_IFMT) }
        let size = Int(st.st_size)
        guard size <= limit else { throw .tooLarge(size: size, limit: limit) }
        guard size > 0 else { throw .empty }
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
        if let failure { throw .failed(Errno(rawValue: failure)) }
        bytes.removeLast(size - done)
        guard done > 0 else { throw .empty }
        return bytes
    }

    /// The extended attribute `attribute` of the regular file `name` in `dir`; ENODATA for anything
    /// but a regular file or a directory, ERANGE when the value is longer than `limit`.
    public static func attribute(_ dir: Int32, _ name: FileName, _ attribute: String, limit: Int = 1 << 16) throws(Errno) -> [UInt8] {
        let fd = name.withCString { openat(dir, $0, vx_O_PATH | O_NOFOLLOW | O_CLOEXEC) }
        guard fd >= 0 else { throw Errno.current }
        defer { close(fd) }
        return try self.attribute(opath: fd, attribute, limit: limit)
    }

    public static func attribute(opath fd: Int32, _ attribute: String, limit: Int = 1 << 16) throws(Errno) -> [UInt8] {
        var st = Glibc.stat()
        guard fstat(fd, &st) == 0 else { throw Errno.current }
        guard isRegular(st) || st.st_mode & S_IFMT == S_IFDIR else { throw .noData }
        let size = vx_getxattr(fd, attribute, nil, 0)
        guard size >= 0 else { throw Errno.current }
        guard size <= limit else { throw .outOfRange }
        var bytes = [UInt8](repeating: 0, count: size)
        let n = bytes.withUnsafeMutableBytes { vx_getxattr(fd, attribute, $0.baseAddress, size) }
        guard n >= 0 else { throw Errno.current }
        bytes.removeLast(size - n)
        return bytes
    }

    public static func setAttribute(opath fd: Int32, _ attribute: String, _ value: [UInt8]) throws(Errno) {
        guard value.withUnsafeBytes({ vx_setxattr(fd, attribute, $0.baseAddress, $0.count, 0) }) == 0 else { throw Errno.current }
    }

    public static func removeAttribute(opath fd: Int32, _ attribute: String) throws(Errno) {
        guard vx_removexattr(fd, attribute) == 0 else { throw Errno.current }
    }

    /// A descriptor of the directory `name` in `dir` to hold (O_PATH; `name` "." for `dir` itself).
    public static func holdDirectory(_ dir: Int32, _ name: FileName) throws(Errno) -> Int32 {
        let fd = name.withCString { openat(dir, $0, vx_O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC) }
        guard fd >= 0 else { throw Errno.current }
        return fd
    }

    /// The regular files and the sub-directories of the directory behind `dir` (a symlink is neither).
    public static func entries(_ dir: Int32) throws(Errno) -> (files: [FileName], directories: [FileName]) {
        let fd = openat(dir, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw Errno.current }
        guard let d = fdopendir(fd) else {
            let e = Errno.current
            close(fd)
            throw e
        }
        defer { closedir(d) }
        var files: [FileName] = [], directories: [FileName] = []
        while let e = readdir(d) {
            // The name is read in place: a dirent is only as long as its name, shorter than the struct.
            let name = FileName(cString: UnsafeRawPointer(e).advanced(by: MemoryLayout<dirent>.offset(of: \dirent.d_name)!)
                .assumingMemoryBound(to: CChar.self))
            if name.bytes == [0x2E] || name.bytes == [0x2E, 0x2E] { continue }
            var type = e.pointee.d_type
            if type == UInt8(DT_UNKNOWN), let st = try? stat(dir, name) {
                type = st.st_mode & S_IFMT == S_IFDIR ? UInt8(DT_DIR) : st.st_mode & S_IFMT == S_IFREG ? UInt8(DT_REG) : type
            }
            if type == UInt8(DT_REG) { files.append(name) } else if type == UInt8(DT_DIR) { directories.append(name) }
        }
        return (files, directories)
    }
}

/// STORE/.vexfs, root's alone, is the one place read by path: it holds no user's names, and nothing
/// in it is a link to follow.
public enum StatePaths {
    public static func stat(_ path: String) throws(Errno) -> Glibc.stat {
        var st = Glibc.stat()
        guard lstat(path, &st) == 0 else { throw Errno.current }
        return st
    }

    /// The regular files and the sub-directories of the state directory `dir`, by name.
    public static func entries(_ dir: String) throws(Errno) -> (files: [String], directories: [String]) {
        let fd = open(dir, vx_O_PATH | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw Errno.current }
        defer { close(fd) }
        let (files, directories) = try StoreFiles.entries(fd)
        return (files.map(\.text), directories.map(\.text))
    }

    /// The disk `path` and everything under it take (allocated blocks, so sparse files count what
    /// they hold); what cannot be read counts nothing.
    public static func diskUsage(_ path: String) -> Int64 {
        guard let st = try? stat(path) else { return 0 }
        var total = Int64(st.st_blocks) * 512
        if st.st_mode & S_IFMT == S_IFDIR, let (files, directories) = try? entries(path) {
            for name in files + directories { total += diskUsage(path + "/" + name) }
        }
        return total
    }

    /// Deletes `path` and everything under it (an index directory: plain files, no links to follow).
    public static func removeTree(_ path: String) {
        guard let st = try? stat(path) else { return }
        if st.st_mode & S_IFMT == S_IFDIR {
            let (files, directories) = (try? entries(path)) ?? ([], [])
            for name in files { unlink(path + "/" + name) }
            for name in directories { removeTree(path + "/" + name) }
            rmdir(path)
        } else {
            unlink(path)
        }
    }
}
