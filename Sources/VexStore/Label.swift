import CLinux
import Glibc
import SystemPackage

/// The mount's filesystem label (FS_IOC_GETFSLABEL and FS_IOC_SETFSLABEL), the mount's own and not
/// the store's filesystem's, which names a whole disk that other things share: STORE/.vexfs/label,
/// replaced whole (a crash leaves the old label or the new one), absent for the empty label. It is
/// the one piece of state the store's files cannot rebuild; losing it loses a name, nothing stored.
extension Store {
    /// The longest label: what the kernel's interface carries (FSLABEL_MAX bytes with their NUL).
    public static var labelCapacity: Int { Int(vx_FSLABEL_MAX) - 1 }

    public func label() throws(Errno) -> [UInt8] {
        try withStateDirectory { state throws(Errno) in
            let fd = openat(state, "label", O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)
            if fd < 0 {
                // No file, or a link where a file should be (O_NOFOLLOW): no label.
                if errno == ENOENT || errno == ELOOP { return [] }
                throw Errno.current
            }
            defer { close(fd) }
            var st = stat()
            try check(fstat(fd, &st))
            guard st.st_mode & S_IFMT == S_IFREG else { return [] }
            var bytes = [UInt8](repeating: 0, count: Store.labelCapacity)
            let n = read(fd, &bytes, bytes.count)
            guard n >= 0 else { throw Errno.current }
            // A file written by hand may hold anything: up to its first NUL, at most the capacity.
            return Array(bytes[..<n].prefix { $0 != 0 })
        }
    }

    /// Sets the label: at most `labelCapacity` bytes, no NUL among them (EINVAL otherwise, as the
    /// kernel's filesystems answer); empty clears it. Durable when it returns.
    public func setLabel(_ label: [UInt8]) throws(Errno) {
        guard label.count <= Store.labelCapacity, !label.contains(0) else { throw .invalidArgument }
        try withStateDirectory { state throws(Errno) in
            if label.isEmpty {
                if unlinkat(state, "label", 0) != 0 && errno != ENOENT { throw Errno.current }
            } else {
                // A name of this thread's own: two setters at once each rename a whole file.
                let temporary = "label.\(pthread_self())"
                let fd = openat(state, temporary, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0o600)
                guard fd >= 0 else { throw Errno.current }
                let written = label.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
                var failure: Errno?
                if written < 0 {
                    failure = .current
                } else if written != label.count {
                    failure = .noSpace
                } else if fsync(fd) != 0 {
                    failure = .current
                }
                close(fd)
                if let failure {
                    unlinkat(state, temporary, 0)
                    throw failure
                }
                guard renameat(state, temporary, state, "label") == 0 else {
                    let e = Errno.current
                    unlinkat(state, temporary, 0)
                    throw e
                }
            }
            try check(fsync(state))
        }
    }

    /// Runs `body` with STORE/.vexfs open (a directory, never a link followed).
    private func withStateDirectory<R>(_ body: (Int32) throws(Errno) -> R) throws(Errno) -> R {
        try inodes.using(root) { dir throws(Errno) in
            let state = openat(dir, Store.reservedName, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            guard state >= 0 else { throw Errno.current }
            defer { close(state) }
            return try body(state)
        }
    }
}
