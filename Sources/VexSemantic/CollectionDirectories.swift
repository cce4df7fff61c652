import CLinux
import Glibc
import Synchronization

/// The descriptors of the collections' directories. A collection reaches every file relative to its
/// directory's descriptor (a rename of the directory, or of one above it, changes nothing), but
/// users make directories at will and most collections are idle: at most `bound` of these
/// descriptors stay open, the least recently used closed first, and a closed one is reopened from
/// the kernel's file handle (open_by_handle_at through the store's root, which needs the root
/// daemon's CAP_DAC_READ_SEARCH) when next used, never from a path rebuilt from names. A handle
/// names one directory for its life: one removed while closed reopens as ESTALE, and a new
/// directory that got its inode number has another generation, so it is never taken for the old
/// one (the inode number and device are checked too). Where handles are refused (a filesystem
/// without them, a daemon without the capability) a directory's descriptor is kept open for its
/// collection's life, as before, and counted as kept; the mount's collection bound then bounds them.
///
/// One lock, a leaf in the collections' lock order: nothing is taken under it and no syscall runs
/// under it. A reopen runs outside it, so a request waits on no other collection's reopen, and on
/// its own collection's for at most the one open it makes itself.
public final class CollectionDirectories: Sendable {
    /// Descriptors open at most, besides those in use right now (never closed under a user) and
    /// those kept because handles are refused.
    public let bound: Int
    /// A real descriptor of the store's root (open_by_handle_at refuses an O_PATH one); -1 when
    /// handles cannot be used here, and every directory is kept.
    private let mountFD: Int32
    private let table = Mutex<Table>(Table())

    /// The least recently used open directories, a list from `newest` to `oldest`.
    private struct Table {
        var newest: Slot?
        var oldest: Slot?
        var open = 0
        var kept = 0
        var reopened = 0
    }

    /// One collection's directory: its handle and, while open, its descriptor. Its fields other
    /// than the handle are guarded by the table's lock.
    public final class Slot: @unchecked Sendable {
        let owner: CollectionDirectories
        /// The directory's identity, checked on every reopen.
        let inode: UInt64
        let device: UInt64
        /// The kernel's handle of the directory; nil: it is kept open.
        let handle: [UInt8]?
        fileprivate var fd: Int32
        fileprivate var users = 0
        fileprivate var newer: Slot?
        fileprivate var older: Slot?
        fileprivate var listed = false
        /// Why it can no longer be reopened (ESTALE: the directory is gone); 0 while it can.
        fileprivate var lost: Int32 = 0

        fileprivate init(owner: CollectionDirectories, fd: Int32, inode: UInt64, device: UInt64, handle: [UInt8]?) {
            self.owner = owner
            self.fd = fd
            self.inode = inode
            self.device = device
            self.handle = handle
        }

        /// Runs `body` with the directory's descriptor, open until `body` returns; the errno of the
        /// reopen when it cannot be reached (ESTALE: the directory is gone, or another is in its place).
        public func use<R>(_ body: (Int32) -> R) -> Result<R, ReopenFailure> {
            switch owner.pin(self) {
            case .failure(let e): return .failure(e)
            case .success(let fd):
                defer { owner.unpin(self) }
                return .success(body(fd))
            }
        }

        /// Whether it was found gone at a reopen (then it never comes back).
        public var isGone: Bool { owner.table.withLock { _ in lost == ESTALE } }

        /// Whether the directory is removed: unlinked, seen through its descriptor, or gone at a
        /// reopen. A closed one is reopened for the look and closed again, leaving the set as it was.
        public var isUnlinked: Bool { owner.isUnlinked(self) }

        /// Closes the descriptor for good (its collection is dropped).
        public func release() { owner.release(self) }
    }

    public struct ReopenFailure: Error, Equatable {
        public let errno: Int32
        public var isGone: Bool { errno == ESTALE }
    }

    /// `root`: a descriptor of the store's root, of any kind (a real one is opened from it here).
    /// `byHandle` false keeps every directory open, as where handles are refused.
    public init(root: Int32, bound: Int, byHandle: Bool = true) {
        self.bound = max(1, bound)
        mountFD = byHandle ? CollectionDirectories.handleRoot(root) : -1
    }

    deinit { if mountFD >= 0 { close(mountFD) } }

    /// A real descriptor of `root` if a handle of it can be taken and opened again here; else -1.
    private static func handleRoot(_ root: Int32) -> Int32 {
        let fd = openat(root, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { return -1 }
        var blob = [UInt8](repeating: 0, count: Int(VX_HANDLE_MAX))
        var mountID: Int32 = 0
        let n = vx_handle_of(fd, &blob, &mountID)
        let again = n > 0 ? vx_open_handle(fd, blob, n) : -1
        guard again >= 0 else {
            close(fd)
            return -1
        }
        close(again)
        return fd
    }

    /// Whether closed directories are reopened by handle here (else each is kept open).
    public var reopensByHandle: Bool { mountFD >= 0 }

    /// The default bound: a sixteenth of what the process may open, at most 4,096 (the store's idle
    /// inodes take three quarters, open files most of the rest).
    public static var defaultBound: Int {
        var limit = rlimit()
        guard getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return 64 }
        return max(16, min(4096, Int(min(limit.rlim_cur, 1 << 24)) / 16))
    }

    /// Takes over `fd`, a descriptor of a directory of the store's filesystem, for a new collection.
    public func adopt(_ fd: Int32) -> Slot {
        var st = stat()
        fstat(fd, &st)
        var handle: [UInt8]?
        if mountFD >= 0 {
            var blob = [UInt8](repeating: 0, count: Int(VX_HANDLE_MAX))
            var mountID: Int32 = 0
            let n = vx_handle_of(fd, &blob, &mountID)
            if n > 0 { handle = Array(blob.prefix(Int(n))) }
        }
        let slot = Slot(owner: self, fd: fd, inode: UInt64(st.st_ino), device: UInt64(st.st_dev), handle: handle)
        let victims = table.withLock { t -> [Int32] in
            guard handle != nil else {
                t.kept += 1
                return []
            }
            pushNewest(slot, &t)
            t.open += 1
            return evict(&t)
        }
        for v in victims { close(v) }
        return slot
    }

    /// Open directories (in the bounded set), kept ones, and reopens so far.
    public var counts: (open: Int, kept: Int, reopened: Int) { table.withLock { ($0.open, $0.kept, $0.reopened) } }

    private func pin(_ slot: Slot) -> Result<Int32, ReopenFailure> {
        let found = table.withLock { t -> Result<Int32, ReopenFailure>? in
            if slot.fd >= 0 {
                slot.users += 1
                if slot.listed { moveToNewest(slot, &t) }
                return .success(slot.fd)
            }
            if slot.lost != 0 || slot.handle == nil { return .failure(ReopenFailure(errno: slot.lost != 0 ? slot.lost : EBADF)) }
            return nil
        }
        if let found { return found }
        let fd = reopen(slot)
        guard fd >= 0 else {
            let e = -fd
            // Gone is for good; anything else (no descriptor free now) is tried again next time.
            if e == ESTALE { table.withLock { _ in slot.lost = e } }
            return .failure(ReopenFailure(errno: e))
        }
        // Another user may have reopened it meanwhile: theirs is kept, this one closed.
        let (use, surplus, victims) = table.withLock { t -> (Int32, Int32, [Int32]) in
            slot.users += 1
            if slot.fd >= 0 {
                if slot.listed { moveToNewest(slot, &t) }
                return (slot.fd, fd, [])
            }
            slot.fd = fd
            pushNewest(slot, &t)
            t.open += 1
            t.reopened += 1
            return (fd, -1, evict(&t))
        }
        if surplus >= 0 { close(surplus) }
        for v in victims { close(v) }
        return .success(use)
    }

    /// The directory of `slot` from its handle: a descriptor, or minus the errno. A descriptor
    /// that is not the same directory (another inode or device: a handle of a filesystem that
    /// reuses numbers without generations) counts as gone.
    private func reopen(_ slot: Slot) -> Int32 {
        guard let handle = slot.handle else { return -EBADF }
        // A question runs with its asker's filesystem ids (`Caller.withAccess`), which take from the
        // thread the capability open_by_handle_at needs: the daemon's are taken back for this one
        // call. The descriptor is O_PATH and grants nothing: what the asker may do through it is
        // still checked with their ids.
        let asker = vx_thread_set_fsuid(0)
        let fd = vx_open_handle(mountFD, handle, Int32(handle.count))
        let failure = errno
        if asker != 0 { _ = vx_thread_set_fsuid(asker) }
        guard fd >= 0 else { return -failure }
        var st = stat()
        guard fstat(fd, &st) == 0, st.st_mode & S_IFMT == S_IFDIR, UInt64(st.st_ino) == slot.inode, UInt64(st.st_dev) == slot.device,
              st.st_nlink > 0 else {
            close(fd)
            return -ESTALE
        }
        return fd
    }

    private func isUnlinked(_ slot: Slot) -> Bool {
        let open = table.withLock { _ -> Int32? in
            guard slot.fd >= 0 else { return nil }
            slot.users += 1
            return slot.fd
        }
        if let open {
            defer { unpin(slot) }
            var st = stat()
            return fstat(open, &st) == 0 && st.st_nlink == 0
        }
        if table.withLock({ _ in slot.lost == ESTALE }) { return true }
        let fd = reopen(slot)
        if fd >= 0 {
            close(fd)
            return false
        }
        guard fd == -ESTALE else { return false }
        table.withLock { _ in slot.lost = ESTALE }
        return true
    }

    private func unpin(_ slot: Slot) {
        let victims = table.withLock { t -> [Int32] in
            slot.users -= 1
            return t.open > bound ? evict(&t) : []
        }
        for v in victims { close(v) }
    }

    private func release(_ slot: Slot) {
        let fd = table.withLock { t -> Int32 in
            if slot.listed {
                unlink(slot, &t)
                t.open -= 1
            } else if slot.handle == nil && slot.fd >= 0 {
                t.kept -= 1
            }
            defer { slot.fd = -1 }
            return slot.fd
        }
        if fd >= 0 { close(fd) }
    }

    // MARK: the list, under the lock

    /// Takes the least recently used directories no one is using out of the list until at most
    /// `bound` are open; their descriptors, for the caller to close after the lock. The newest, just
    /// used, stays even when all the others are in use: the set then exceeds the bound by those.
    private func evict(_ t: inout Table) -> [Int32] {
        var victims: [Int32] = []
        var at = t.oldest
        while t.open > bound, let slot = at, slot !== t.newest {
            at = slot.newer
            guard slot.users == 0 else { continue }
            unlink(slot, &t)
            victims.append(slot.fd)
            slot.fd = -1
            t.open -= 1
        }
        return victims
    }

    private func pushNewest(_ slot: Slot, _ t: inout Table) {
        slot.older = t.newest
        slot.newer = nil
        t.newest?.newer = slot
        t.newest = slot
        if t.oldest == nil { t.oldest = slot }
        slot.listed = true
    }

    private func unlink(_ slot: Slot, _ t: inout Table) {
        if let newer = slot.newer { newer.older = slot.older } else { t.newest = slot.older }
        if let older = slot.older { older.newer = slot.newer } else { t.oldest = slot.newer }
        slot.newer = nil
        slot.older = nil
        slot.listed = false
    }

    private func moveToNewest(_ slot: Slot, _ t: inout Table) {
        guard t.newest !== slot else { return }
        unlink(slot, &t)
        pushNewest(slot, &t)
    }
}
