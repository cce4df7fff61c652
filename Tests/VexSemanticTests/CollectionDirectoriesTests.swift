import Glibc
import Synchronization
import Testing
@testable import VexSemantic
import VexStore
import VexTestSupport

/// The bounded set of collections' directory descriptors: at most the bound open, the least
/// recently used closed first, a closed one found again by its handle after a rename, a removed or
/// replaced one never taken for another, one in use never closed under its user.
/// Serialized: two tests count this process's descriptors.
@Suite(.serialized) struct CollectionDirectoriesTests {
    /// A store with `n` directories d0, d1, ...; its root (O_PATH) and the path.
    static func store(_ n: Int) -> (root: Int32, path: String) {
        let path = temporaryStore()
        for i in 0..<n { mkdir("\(path)/d\(i)", 0o755) }
        return (open(path, oPath | O_DIRECTORY | O_CLOEXEC), path)
    }

    static func hold(_ path: String) -> Int32 { open(path, oPath | O_DIRECTORY | O_CLOEXEC) }

    static func inode(_ path: String) -> UInt64 {
        var st = stat()
        return lstat(path, &st) == 0 ? UInt64(st.st_ino) : 0
    }

    static func inode(of fd: Int32) -> UInt64 {
        var st = stat()
        return fstat(fd, &st) == 0 ? UInt64(st.st_ino) : 0
    }

    /// Descriptors this process has open now.
    static var openDescriptors: Int {
        guard let dir = opendir("/proc/self/fd") else { return -1 }
        defer { closedir(dir) }
        var n = -1  // the listing's own
        while let e = readdir(dir) { if e.pointee.d_name.0 != 0x2E { n += 1 } }
        return n
    }

    @Test func atMostTheBoundStayOpenAndEachIsFoundAgain() throws {
        let (root, path) = Self.store(12)
        defer { close(root) }
        let dirs = CollectionDirectories(root: root, bound: 3)
        try #require(dirs.reopensByHandle, "this test needs file handles (root on a filesystem that has them)")
        let before = Self.openDescriptors
        let slots = (0..<12).map { dirs.adopt(Self.hold("\(path)/d\($0)")) }
        #expect(dirs.counts.open == 3 && dirs.counts.kept == 0)
        #expect(Self.openDescriptors - before == 3)
        for _ in 0..<2 {
            for (i, slot) in slots.enumerated() {
                let seen = slot.use { Self.inode(of: $0) }
                #expect(seen == .success(Self.inode("\(path)/d\(i)")))
                #expect(dirs.counts.open <= 3)
            }
        }
        #expect(dirs.counts.reopened >= 9)
        #expect(Self.openDescriptors - before == 3)
        for slot in slots { slot.release() }
        #expect(dirs.counts.open == 0 && Self.openDescriptors == before)
    }

    @Test func theLeastRecentlyUsedIsClosedFirst() throws {
        let (root, path) = Self.store(3)
        defer { close(root) }
        let dirs = CollectionDirectories(root: root, bound: 2)
        try #require(dirs.reopensByHandle)
        let a = dirs.adopt(Self.hold("\(path)/d0")), b = dirs.adopt(Self.hold("\(path)/d1"))
        _ = a.use { _ in () }
        let c = dirs.adopt(Self.hold("\(path)/d2"))
        // b was used least lately: a and c are open, b is reopened.
        _ = a.use { _ in () }
        _ = c.use { _ in () }
        #expect(dirs.counts.reopened == 0)
        _ = b.use { _ in () }
        #expect(dirs.counts.reopened == 1 && dirs.counts.open == 2)
        for s in [a, b, c] { s.release() }
    }

    @Test func aDirectoryRenamedWhileClosedIsFoundUnderItsNewName() throws {
        let (root, path) = Self.store(2)
        defer { close(root) }
        let dirs = CollectionDirectories(root: root, bound: 1)
        try #require(dirs.reopensByHandle)
        let a = dirs.adopt(Self.hold("\(path)/d0"))
        let b = dirs.adopt(Self.hold("\(path)/d1"))
        mkdir("\(path)/elsewhere", 0o755)
        #expect(rename("\(path)/d0", "\(path)/elsewhere/moved") == 0)
        put("\(path)/elsewhere/moved/x.vec", "1 2")
        let found = a.use { fd in faccessat(fd, "x.vec", F_OK, 0) == 0 }
        #expect(found == .success(true))
        #expect(!a.isGone && !a.isUnlinked)
        for s in [a, b] { s.release() }
    }

    @Test func aDirectoryRemovedOrReplacedWhileClosedIsGoneNeverAnother() throws {
        let (root, path) = Self.store(2)
        defer { close(root) }
        let dirs = CollectionDirectories(root: root, bound: 1)
        try #require(dirs.reopensByHandle)
        let a = dirs.adopt(Self.hold("\(path)/d0"))
        let b = dirs.adopt(Self.hold("\(path)/d1"))
        let old = Self.inode("\(path)/d0")
        #expect(rmdir("\(path)/d0") == 0)
        // A new directory, often with the old inode number (ext4 reuses it at once): its handle's
        // generation differs, so it is not the collection's directory.
        var reused = false
        for i in 0..<64 where !reused {
            mkdir("\(path)/n\(i)", 0o755)
            reused = Self.inode("\(path)/n\(i)") == old
        }
        #expect(a.isUnlinked)
        switch a.use({ Self.inode(of: $0) }) {
        case .success(let seen): Issue.record("reopened a removed directory (inode \(seen), number reused: \(reused))")
        case .failure(let f): #expect(f.isGone)
        }
        #expect(a.isGone)
        #expect(dirs.counts.open == 1)
        for s in [a, b] { s.release() }
    }

    /// Questions run with the asker's filesystem ids, which take from the thread the capability
    /// open_by_handle_at needs: a closed directory is reopened all the same, and the asker's ids
    /// are theirs again afterwards.
    @Test func aClosedDirectoryIsReopenedUnderAnAskersIdentity() throws {
        let (root, path) = Self.store(2)
        defer { close(root) }
        let dirs = CollectionDirectories(root: root, bound: 1)
        try #require(dirs.reopensByHandle)
        let a = dirs.adopt(Self.hold("\(path)/d0"))
        let b = dirs.adopt(Self.hold("\(path)/d1"))
        let asker = Caller(uid: 65534, gid: 65534)
        let seen = try asker.withAccess(orElse: CollectionDirectories.ReopenFailure(errno: EPERM)) { () throws(CollectionDirectories.ReopenFailure) in
            let inode = try a.use { Self.inode(of: $0) }.get()
            // Still the asker: the root-only store directory's mode does not let them create here.
            let created = mkdir("\(path)/d0/not-theirs", 0o755) == 0
            return (inode, created)
        }
        #expect(seen.0 == Self.inode("\(path)/d0") && !seen.1)
        #expect(dirs.counts.reopened == 1)
        for s in [a, b] { s.release() }
    }

    @Test func aDescriptorInUseIsNeverClosedUnderItsUser() throws {
        let (root, path) = Self.store(4)
        defer { close(root) }
        let dirs = CollectionDirectories(root: root, bound: 1)
        try #require(dirs.reopensByHandle)
        let a = dirs.adopt(Self.hold("\(path)/d0"))
        let expected = Self.inode("\(path)/d0")
        var others: [CollectionDirectories.Slot] = []
        let during = a.use { fd -> (UInt64, Int) in
            for i in 1..<4 { others.append(dirs.adopt(Self.hold("\(path)/d\(i)"))) }
            return (Self.inode(of: fd), dirs.counts.open)
        }
        // In use, a stayed open beside the newest; once let go of, the bound holds again.
        #expect((try? during.get()).map { $0.0 == expected && $0.1 == 2 } == true)
        #expect(dirs.counts.open == 1)
        for s in [a] + others { s.release() }
    }

    @Test func whereHandlesAreRefusedEveryDirectoryIsKeptAndCounted() throws {
        let (root, path) = Self.store(5)
        defer { close(root) }
        let dirs = CollectionDirectories(root: root, bound: 2, byHandle: false)
        #expect(!dirs.reopensByHandle)
        let slots = (0..<5).map { dirs.adopt(Self.hold("\(path)/d\($0)")) }
        #expect(dirs.counts.kept == 5 && dirs.counts.open == 0)
        for (i, slot) in slots.enumerated() { #expect(slot.use { Self.inode(of: $0) } == .success(Self.inode("\(path)/d\(i)"))) }
        #expect(dirs.counts.reopened == 0)
        slots[0].release()
        #expect(dirs.counts.kept == 4)
        for s in slots.dropFirst() { s.release() }
    }

    @Test func manyThreadsOverFewDescriptorsEachSeeTheirOwnDirectory() throws {
        let (root, path) = Self.store(40)
        defer { close(root) }
        let dirs = CollectionDirectories(root: root, bound: 4)
        try #require(dirs.reopensByHandle)
        let slots = (0..<40).map { dirs.adopt(Self.hold("\(path)/d\($0)")) }
        let inodes = (0..<40).map { Self.inode("\(path)/d\($0)") }
        let wrong = Atomic<Int>(0), most = Atomic<Int>(0)
        let before = Self.openDescriptors - dirs.counts.open
        runOnThreads((0..<8).map { t in
            { @Sendable in
                var seed = UInt64(t + 1)
                for _ in 0..<2000 {
                    seed = seed &* 6364136223846793005 &+ 1442695040888963407
                    let i = Int(seed >> 33) % 40
                    let seen = slots[i].use { Self.inode(of: $0) }
                    if seen != .success(inodes[i]) { wrong.add(1, ordering: .relaxed) }
                    let open = dirs.counts.open
                    if open > most.load(ordering: .relaxed) { most.store(open, ordering: .relaxed) }
                }
            }
        })
        #expect(wrong.load(ordering: .relaxed) == 0)
        // Past the bound only by directories in use at that instant: one per thread at most.
        #expect(most.load(ordering: .relaxed) <= 4 + 8)
        #expect(dirs.counts.open <= 4)
        #expect(Self.openDescriptors - before <= 4)
        for s in slots { s.release() }
    }
}
