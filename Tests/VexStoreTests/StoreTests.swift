import Glibc
import SystemPackage
import Testing
@testable import VexStore

/// A fresh store in a temporary directory, removed afterwards.
final class TemporaryStore {
    let path: String
    let store: Store

    init(descriptorBudget: Int = Store.defaultDescriptorBudget) throws {
        var template = Array("/tmp/vexfs-store-XXXXXX".utf8CString)
        let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        path = String(cString: made!)
        store = try Store(rootPath: path, descriptorBudget: descriptorBudget)
    }

    deinit { _ = system("rm -rf '\(path)'") }

    func write(_ name: String, _ text: String) {
        let fd = open(path + "/" + name, O_CREAT | O_WRONLY | O_TRUNC, 0o644)
        _ = text.withCString { Glibc.write(fd, $0, strlen($0)) }
        close(fd)
    }
}

@Suite struct StoreTests {
    /// Export support: on a store whose handles are 8 bytes (ext4 here), a file's node id is its
    /// handle, the same in another Store of the same directory, and finds the file once forgotten.
    @Test func nodeIDsFindFilesAgainAfterForgetAndInAnotherMount() throws {
        let t = try TemporaryStore()
        t.write("a", "x")
        let entry = try t.store.lookup(t.store.root, "a")
        let id = entry.inode.nodeID
        #expect(id > Store.reservedNodeIDs)
        #expect(t.store.inodes.existing(nodeID: id) === entry.inode)
        t.store.forget(entry.inode, 1)
        #expect(t.store.inodes.existing(nodeID: id) == nil)
        let again = try t.store.find(nodeID: id)
        #expect(again.attributes.st_ino == entry.attributes.st_ino && again.inode.nodeID == id)
        let other = try Store(rootPath: t.path)
        let seen = try other.lookup(other.root, "a")
        #expect(seen.inode.nodeID == id)
        other.forget(seen.inode, 1)
        #expect(try t.store.parent(of: t.store.root).inode === t.store.root)
        _ = unlink(t.path + "/a")
        t.store.forget(again.inode, 1)
        #expect(throws: Errno.staleNFSFileHandle) { try t.store.find(nodeID: id) }
    }

    @Test func lookupCountsAndForget() throws {
        let t = try TemporaryStore()
        t.write("a", "x")
        let first = try t.store.lookup(t.store.root, "a")
        let second = try t.store.lookup(t.store.root, "a")
        #expect(first.inode === second.inode)
        #expect(t.store.inodes.count == 1)
        t.store.forget(first.inode, 1)
        #expect(t.store.inodes.count == 1)
        t.store.forget(first.inode, 1)
        #expect(t.store.inodes.count == 0)
    }

    @Test func hardLinksShareOneInode() throws {
        let t = try TemporaryStore()
        t.write("a", "x")
        let a = try t.store.lookup(t.store.root, "a")
        let b = try t.store.link(a.inode, t.store.root, "b")
        #expect(a.inode === b.inode)
        #expect(b.attributes.st_nlink == 2)
        t.store.forget(a.inode, 2)
        #expect(t.store.inodes.count == 0)
    }

    @Test func inodeFollowsItsFileAcrossRenames() throws {
        let t = try TemporaryStore()
        let dir = try t.store.mkdir(t.store.root, "d", mode: 0o755, caller: Caller(uid: 0, gid: 0))
        t.write("d/f", "hello")
        let f = try t.store.lookup(dir.inode, "f")
        try t.store.rename(t.store.root, "d", t.store.root, "e", flags: 0)
        #expect(try t.store.attributes(f.inode).st_size == 5)
        #expect(throws: Errno.noSuchFileOrDirectory) { try t.store.lookup(t.store.root, "d") }
        let again = try t.store.lookup(t.store.root, "e")
        #expect(again.inode === dir.inode)
    }

    @Test func reservedNameIsHiddenAndProtected() throws {
        let t = try TemporaryStore()
        #expect(throws: Errno.noSuchFileOrDirectory) { try t.store.lookup(t.store.root, ".vexfs") }
        #expect(throws: Errno.notPermitted) {
            try t.store.mkdir(t.store.root, ".vexfs", mode: 0o755, caller: Caller(uid: 0, gid: 0))
        }
        t.write("x", "")
        #expect(throws: Errno.notPermitted) { try t.store.rename(t.store.root, "x", t.store.root, ".vexfs", flags: 0) }
        let stream = try t.store.openDirectory(t.store.root)
        var names: [String] = []
        var flagged: [String] = []
        while let item = try stream.next() {
            (item.isStateDirectory ? { flagged.append(String(cString: item.name)) } : { names.append(String(cString: item.name)) })()
        }
        #expect(names.sorted() == [".", "..", "x"])
        #expect(flagged == [".vexfs"])
    }

    @Test func directoryStreamResumesAtAnyOffset() throws {
        let t = try TemporaryStore()
        for i in 0..<50 { t.write("f\(i)", "") }
        let stream = try t.store.openDirectory(t.store.root)
        var all: [(String, Int)] = []
        while let item = try stream.next() { all.append((String(cString: item.name), item.nextOffset)) }
        #expect(all.count == 53)  // 50 files, ".", ".." and the flagged state directory
        // Resume after the 20th item, as the kernel does with a saved offset.
        stream.seek(all[19].1)
        let resumed = try stream.next()
        #expect(resumed.map { String(cString: $0.name) } == all[20].0)
        stream.rewind(to: 0)
        #expect(try stream.next().map { String(cString: $0.name) } == all[0].0)
    }

    @Test func renameRejectsUnknownFlags() throws {
        let t = try TemporaryStore()
        t.write("a", "")
        #expect(throws: Errno.invalidArgument) { try t.store.rename(t.store.root, "a", t.store.root, "b", flags: 1 << 7) }
    }

    @Test func setAttributesTruncatesAndSetsTimes() throws {
        let t = try TemporaryStore()
        t.write("a", "0123456789")
        let a = try t.store.lookup(t.store.root, "a")
        var change = Store.AttributeChange()
        change.size = 3
        change.mtime = .set(timespec(tv_sec: 1_000_000, tv_nsec: 7))
        change.mode = 0o600
        let st = try t.store.setAttributes(a.inode, change, openFile: nil)
        #expect(st.st_size == 3)
        #expect(st.st_mtim.tv_sec == 1_000_000 && st.st_mtim.tv_nsec == 7)
        #expect(st.st_mode & 0o7777 == 0o600)
    }

    @Test func idleDescriptorsAreEvictedAndReopened() throws {
        let t = try TemporaryStore(descriptorBudget: 16)
        var entries: [Entry] = []
        for i in 0..<200 {
            t.write("f\(i)", "\(i)")
            entries.append(try t.store.lookup(t.store.root, "f\(i)"))
        }
        #expect(t.store.descriptors.openCount <= 16)
        // Every inode still answers, through a descriptor reopened from its handle.
        for (i, e) in entries.enumerated() {
            #expect(try t.store.attributes(e.inode).st_size == off_t(String(i).utf8.count))
        }
        // A pinned (open) file is never evicted, even after it is unlinked.
        let file = try t.store.open(entries[0].inode, flags: O_RDWR)
        try t.store.unlink(t.store.root, "f0")
        for e in entries.dropFirst() { _ = try t.store.attributes(e.inode) }
        #expect(try t.store.attributes(entries[0].inode).st_nlink == 0)
        _ = file
    }

    @Test func mountLockAdmitsOneDaemon() throws {
        let t = try TemporaryStore()
        let fd = try MountLock.acquire(storePath: t.path)
        #expect(throws: MountLock.Failure.self) { try MountLock.acquire(storePath: t.path) }
        #expect(!MountLock.waitForRelease(storePath: t.path, timeoutSeconds: 0.05))
        close(fd)
        #expect(MountLock.waitForRelease(storePath: t.path, timeoutSeconds: 1))
    }

    @Test func mountLockNamesItsHolderOnlyWhileHeld() throws {
        let t = try TemporaryStore()
        #expect(MountLock.holder(storePath: t.path) == nil)
        let fd = try MountLock.acquire(storePath: t.path)
        MountLock.record(pid: 4321, mountpoint: "/mnt/a b", in: fd)
        let holder = try #require(MountLock.holder(storePath: t.path))
        #expect(holder.pid == 4321 && holder.mountpoint == "/mnt/a b")
        close(fd)
        #expect(MountLock.holder(storePath: t.path) == nil, "a record left by a daemon that is gone names nobody")
    }

    @Test func birthTimeAndFlagsAreTheStoreFilesOwn() throws {
        let t = try TemporaryStore()
        let dir = try t.store.mkdir(t.store.root, "d", mode: 0o755, caller: Caller(uid: 0, gid: 0))
        let more = try t.store.birthAndFlags(dir.inode)
        let st = try t.store.attributes(dir.inode)
        if let birth = more.birth {
            // Born no later than its last change.
            #expect((birth.tv_sec, birth.tv_nsec) <= (st.st_ctim.tv_sec, st.st_ctim.tv_nsec))
        }
        #expect(more.attributes & ~more.attributesMask == 0, "only flags the filesystem supports")
    }
}
