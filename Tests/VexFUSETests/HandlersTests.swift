import CLinux
import Glibc
import Synchronization
import SystemPackage
import Testing
import VexSemantic
import VexStore
@testable import VexFUSE

typealias Inode = VexStore.Inode

/// A vector layer that records what it is told and asked, and answers what the test sets.
final class FakeSemantic: SemanticService, @unchecked Sendable {
    enum Call: Equatable {
        case created(String)
        case written(String, inode: UInt64)
        case linked(String)
        case removed(String)
        case renamed(from: String, to: String, exchange: Bool)
        case directoryMoved(from: String, to: String, exchange: Bool)
        case directoryRemoved(String)
        case attributeChanged(String, name: String?)
        case fileAttribute(String, file: String)
        case directoryAttribute(String, dir: String)
        case setDirectoryAttribute(String, dir: String, value: String)
        case setFileAttribute(String, file: String, value: String)
        case removeFileAttribute(String, file: String)
    }

    private let log = Mutex<[Call]>([])
    /// What the attribute calls answer (or throw).
    let answer = Mutex<Result<[UInt8], SemanticError>>(.success(Array("answer".utf8)))

    var calls: [Call] { log.withLock { $0 } }
    func clear() { log.withLock { $0 = [] } }
    private func note(_ call: Call) { log.withLock { $0.append(call) } }
    private func answered() throws(SemanticError) -> [UInt8] { try answer.withLock { $0 }.get() }

    func created(_ dir: DirectoryRef, _ name: FileName) { note(.created("\(dir.child(name))")) }
    func written(_ dir: DirectoryRef, _ name: FileName, inode: UInt64) { note(.written("\(dir.child(name))", inode: inode)) }
    func linked(_ dir: DirectoryRef, _ name: FileName) { note(.linked("\(dir.child(name))")) }
    func removed(_ dir: DirectoryRef, _ name: FileName) { note(.removed("\(dir.child(name))")) }
    func renamed(from: DirectoryRef, _ fromName: FileName, to: DirectoryRef, _ toName: FileName, exchange: Bool) {
        note(.renamed(from: "\(from.child(fromName))", to: "\(to.child(toName))", exchange: exchange))
    }
    func directoryMoved(from old: FileName, to new: FileName, exchange: Bool) {
        note(.directoryMoved(from: "\(old)", to: "\(new)", exchange: exchange))
    }
    func directoryRemoved(key: UInt64, path: FileName) { note(.directoryRemoved("\(path)")) }
    func attributeChanged(_ file: FileRef, name: UnsafePointer<CChar>?) {
        note(.attributeChanged("\(file.dir.child(file.name))", name: name.map { String(cString: $0) }))
    }
    func fileAttribute(_ attribute: String, file: FileRef, requester: Caller) throws(SemanticError) -> [UInt8] {
        note(.fileAttribute(attribute, file: "\(file.dir.child(file.name))"))
        return try answered()
    }
    func directoryAttribute(_ attribute: String, dir: DirectoryRef, requester: Caller) throws(SemanticError) -> [UInt8] {
        note(.directoryAttribute(attribute, dir: "\(dir.path)"))
        return try answered()
    }
    func setDirectoryAttribute(_ attribute: String, dir: DirectoryRef, value: [UInt8], requester: Caller) throws(SemanticError) {
        note(.setDirectoryAttribute(attribute, dir: "\(dir.path)", value: String(decoding: value, as: UTF8.self)))
        _ = try answered()
    }
    func setFileAttribute(_ attribute: String, file: FileRef, value: [UInt8]) throws(SemanticError) {
        note(.setFileAttribute(attribute, file: "\(file.dir.child(file.name))", value: String(decoding: value, as: UTF8.self)))
        _ = try answered()
    }
    func removeFileAttribute(_ attribute: String, file: FileRef) throws(SemanticError) {
        note(.removeFileAttribute(attribute, file: "\(file.dir.child(file.name))"))
        _ = try answered()
    }
    func journal(visibleTo requester: Caller) -> [UInt8] { [] }
    func refreshGauges() {}
    func beginStopping() {}
    func close() {}
}

/// A filesystem over a store in a temporary directory, with the fake as its vector layer.
final class Mounted {
    let path: String
    let fs: Filesystem
    let semantic = FakeSemantic()

    init() throws {
        var template = Array("/tmp/vexfs-handlers-XXXXXX".utf8CString)
        let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        path = String(cString: made!)
        fs = Filesystem(store: try Store(rootPath: path), options: MountOptions())
        fs.semantic = semantic
    }

    deinit { _ = system("rm -rf '\(path)'") }

    var root: Inode { fs.store.root }

    /// Writes `name` in STORE directly, and looks it up as the kernel would.
    @discardableResult
    func file(_ name: String, _ text: String = "", in dir: Inode? = nil) throws -> Inode {
        let parent = dir ?? root
        let fd = try fs.store.inodes.using(parent) { dfd throws(Errno) in openat(dfd, name, O_CREAT | O_WRONLY | O_TRUNC, 0o644) }
        _ = text.withCString { Glibc.write(fd, $0, strlen($0)) }
        close(fd)
        return try fs.store.lookup(parent, name).inode
    }

    @discardableResult
    func directory(_ name: String) throws -> Inode {
        try fs.store.mkdir(root, name, mode: 0o755, caller: .root).inode
    }

    /// getxattr(2) with a buffer of `size` bytes, as the handler makes it: the answer, and the bytes
    /// read into the buffer for a stored value.
    func getxattr(_ inode: Inode, _ name: String, size: Int) -> Result<(AttributeAnswer, [UInt8]), Errno> {
        var buffer = [UInt8](repeating: 0, count: size)
        let answer = buffer.withUnsafeMutableBytes { bytes in
            Result { () throws(Errno) in try fs.attribute(inode, name, size: size, into: size > 0 ? bytes : nil, requester: { .root }) }
        }
        return answer.map { answer in
            if case .stored(let n) = answer { return (answer, Array(buffer.prefix(n))) }
            return (answer, [])
        }
    }

    func setxattr(_ inode: Inode, _ name: String, _ value: String) throws(Errno) {
        let done = Array(value.utf8).withUnsafeBytes { bytes in
            Result { () throws(Errno) in try fs.setAttribute(inode, name, bytes, flags: 0) }
        }
        try done.get()
    }
}

/// The errno `body` throws; nil when it succeeds.
func refusal(_ body: () throws(Errno) -> Void) -> Errno? {
    do { try body(); return nil } catch { return error }
}

@Suite struct HandlersTests {
    // MARK: events

    @Test func createTellsTheVectorLayerAndMarksTheFileWritten() throws {
        let m = try Mounted()
        let (_, file) = try m.fs.store.create(m.root, "a.vec", mode: 0o644, flags: O_RDWR, caller: .root)
        m.fs.created(m.root, "a.vec", file)
        #expect(m.semantic.calls == [.created("a.vec")])
        let wasWrittenNow = file.wasWritten.load(ordering: .relaxed)
        #expect(wasWrittenNow, "the close that follows must reach the index")
    }

    @Test func aWrittenFileIsPostedOnceAtItsClose() throws {
        let m = try Mounted()
        let (entry, file) = try m.fs.store.create(m.root, "a.vec", mode: 0o644, flags: O_RDWR, caller: .root)
        m.fs.created(m.root, "a.vec", file)
        m.semantic.clear()
        _ = "1 2".withCString { pwrite(file.fd, $0, 3, 0) }
        // flush, then release: the second finds nothing new.
        #expect(!m.fs.noticeChanges(file, passthrough: true), "the daemon's own write: the kernel saw it")
        #expect(!m.fs.noticeChanges(file, passthrough: true))
        #expect(m.semantic.calls == [.written("a.vec", inode: entry.inode.key.number)])
    }

    @Test func aChangeTheDaemonDidNotMakeIsFoundAndTheKernelToldUnderPassthrough() throws {
        let m = try Mounted()
        let inode = try m.file("a.vec", "1 2")
        let file = try m.fs.store.open(inode, flags: O_WRONLY)
        // Written beside the daemon, as the kernel does through a writable handle under passthrough.
        let fd = open(m.path + "/a.vec", O_WRONLY | O_APPEND)
        _ = " 3".withCString { write(fd, $0, 2) }
        close(fd)
        #expect(m.fs.noticeChanges(file, passthrough: true), "its cached attributes are stale")
        #expect(m.semantic.calls == [.written("a.vec", inode: inode.key.number)])
        #expect(!m.fs.noticeChanges(file, passthrough: true), "noticed once")
    }

    @Test func untouchedFilesAreNotNews() throws {
        let m = try Mounted()
        let reader = try m.fs.store.open(try m.file("a.vec", "1 2"), flags: O_RDONLY)
        let writer = try m.fs.store.open(try m.file("b.vec", "1 2"), flags: O_RDWR)
        #expect(!m.fs.noticeChanges(reader, passthrough: true))
        #expect(!m.fs.noticeChanges(writer, passthrough: true))
        #expect(m.semantic.calls.isEmpty)
    }

    @Test func renamesOfFilesAndDirectories() throws {
        let m = try Mounted()
        try m.file("a.vec", "1 2")
        try m.file("b.vec", "3 4")
        try m.directory("d")
        try m.fs.rename(m.root, "a.vec", to: m.root, "c.vec", flags: 0)
        try m.fs.rename(m.root, "b.vec", to: m.root, "c.vec", flags: vx_RENAME_EXCHANGE)
        try m.fs.rename(m.root, "d", to: m.root, "e", flags: 0)
        #expect(m.semantic.calls == [.renamed(from: "a.vec", to: "c.vec", exchange: false),
                                     .renamed(from: "b.vec", to: "c.vec", exchange: true),
                                     .directoryMoved(from: "d", to: "e", exchange: false)])
    }

    @Test func aFailedRenameTellsNothing() throws {
        let m = try Mounted()
        try m.file("a.vec")
        #expect(refusal { () throws(Errno) in try m.fs.rename(m.root, "gone.vec", to: m.root, "b.vec", flags: 0) } == .noSuchFileOrDirectory)
        #expect(m.semantic.calls.isEmpty)
    }

    @Test func unlinkRmdirAndLink() throws {
        let m = try Mounted()
        let a = try m.file("a.vec", "1 2")
        try m.directory("d")
        _ = try m.fs.link(a, in: m.root, "b.vec")
        try m.fs.unlink(m.root, "a.vec")
        try m.fs.rmdir(m.root, "d")
        #expect(m.semantic.calls == [.linked("b.vec"), .removed("a.vec"), .directoryRemoved("d")])
        #expect(refusal { () throws(Errno) in try m.fs.unlink(m.root, "a.vec") } == .noSuchFileOrDirectory)
        #expect(m.semantic.calls.count == 3, "nothing for a refused unlink")
    }

    @Test func truncateAndChmodWithoutAHandle() throws {
        let m = try Mounted()
        let a = try m.file("a.vec", "1 2")
        var change = Store.AttributeChange()
        change.size = 0
        let st = try m.fs.setAttributes(a, change, file: nil, dropPrivileges: false)
        #expect(st.st_size == 0)
        change = Store.AttributeChange()
        change.mode = 0o600
        _ = try m.fs.setAttributes(a, change, file: nil, dropPrivileges: false)
        change = Store.AttributeChange()
        change.mtime = .now
        _ = try m.fs.setAttributes(a, change, file: nil, dropPrivileges: false)
        #expect(m.semantic.calls == [.written("a.vec", inode: a.key.number), .attributeChanged("a.vec", name: nil)])
    }

    @Test func truncateThroughAHandleWaitsForTheClose() throws {
        let m = try Mounted()
        let a = try m.file("a.vec", "1 2")
        let file = try m.fs.store.open(a, flags: O_RDWR)
        var change = Store.AttributeChange()
        change.size = 0
        _ = try m.fs.setAttributes(a, change, file: file, dropPrivileges: false)
        #expect(m.semantic.calls.isEmpty)
        let wasWrittenNow = file.wasWritten.load(ordering: .relaxed)
        #expect(wasWrittenNow)
    }

    @Test func withoutAVectorLayerTheStoreStillChanges() throws {
        let m = try Mounted()
        m.fs.semantic = nil
        try m.file("a.vec", "1 2")
        try m.directory("d")
        try m.fs.rename(m.root, "a.vec", to: m.root, "b.vec", flags: 0)
        try m.fs.unlink(m.root, "b.vec")
        try m.fs.rmdir(m.root, "d")
        #expect(access(m.path + "/b.vec", F_OK) != 0 && access(m.path + "/d", F_OK) != 0)
        #expect(m.semantic.calls.isEmpty)
    }

    // MARK: getxattr

    @Test func oursGoToTheVectorLayerTheRestToTheStore() throws {
        let m = try Mounted()
        let a = try m.file("a.vec", "1 2")
        let d = try m.directory("d")
        try m.setxattr(a, "user.note", "hello")
        m.semantic.clear()

        let computed = try m.getxattr(a, "user.vexfs.status", size: 100).get()
        #expect(computed.0 == .computed(Array("answer".utf8)))
        let ofDirectory = try m.getxattr(d, "user.vexfs.count", size: 100).get()
        #expect(ofDirectory.0 == .computed(Array("answer".utf8)))
        #expect(m.semantic.calls == [.fileAttribute("user.vexfs.status", file: "a.vec"), .directoryAttribute("user.vexfs.count", dir: "d")])

        m.semantic.clear()
        let stored = try m.getxattr(a, "user.note", size: 100).get()
        #expect(stored.0 == .stored(5) && stored.1 == Array("hello".utf8))
        #expect(try m.getxattr(a, "user.note", size: 0).get().0 == .size(5))
        #expect(m.semantic.calls.isEmpty, "a name not ours never reaches the vector layer")
    }

    @Test func theStoredVectorIsTheStoresToo() throws {
        let m = try Mounted()
        let a = try m.file("a")
        try m.setxattr(a, "user.vexfs.vector", "1 2 3")
        #expect(m.semantic.calls == [.attributeChanged("a", name: "user.vexfs.vector")])
        m.semantic.clear()
        let stored = try m.getxattr(a, "user.vexfs.vector", size: 64).get()
        #expect(stored.1 == Array("1 2 3".utf8))
        #expect(m.semantic.calls.isEmpty)
    }

    @Test func sizeProbeAndERANGE() throws {
        let m = try Mounted()
        let a = try m.file("a.vec")
        #expect(try m.getxattr(a, "user.vexfs.status", size: 0).get().0 == .size(6), "the size probe: the length alone")
        #expect(try m.getxattr(a, "user.vexfs.status", size: 6).get().0 == .computed(Array("answer".utf8)), "an exact fit")
        #expect(throws: Errno.outOfRange) { try m.getxattr(a, "user.vexfs.status", size: 5).get() }
        try m.setxattr(a, "user.note", "hello")
        #expect(throws: Errno.outOfRange) { try m.getxattr(a, "user.note", size: 2).get() }
        #expect(try AttributeAnswer.fitting([], size: 0) == .size(0))
    }

    @Test(arguments: [(SemanticError.noData, Errno.noData), (.invalid("bad"), .invalidArgument), (.tooBig, .argListTooLong),
                      (.range, .outOfRange), (.busy("busy"), .directoryNotEmpty), (.embedder("down"), .hostIsDown)])
    func refusalsAnswerTheirErrno(_ error: SemanticError, _ expected: Errno) throws {
        let m = try Mounted()
        let a = try m.file("a.vec")
        let d = try m.directory("d")
        m.semantic.answer.withLock { $0 = .failure(error) }
        #expect(throws: expected) { try m.getxattr(a, "user.vexfs.knn", size: 100).get() }
        #expect(throws: expected) { try m.getxattr(d, "user.vexfs.dim", size: 0).get() }
        #expect(refusal { () throws(Errno) in try m.setxattr(d, "user.vexfs.dim", "3") } == expected)
        #expect(refusal { () throws(Errno) in try m.setxattr(a, "user.vexfs.k", "3") } == expected)
        #expect(refusal { () throws(Errno) in try m.fs.removeAttribute(a, "user.vexfs.k") } == expected)
    }

    @Test func oursOnOtherNodesOrWithoutAVectorLayer() throws {
        let m = try Mounted()
        let a = try m.file("a.vec")
        _ = try m.fs.store.symlink("a.vec", m.root, "link", caller: .root)
        let link = try m.fs.store.lookup(m.root, "link").inode
        #expect(throws: Errno.noData) { try m.getxattr(link, "user.vexfs.status", size: 100).get() }
        #expect(refusal { () throws(Errno) in try m.setxattr(link, "user.vexfs.k", "1") } == .invalidArgument)
        #expect(m.semantic.calls.isEmpty)
        m.fs.semantic = nil
        #expect(throws: Errno.noData) { try m.getxattr(a, "user.vexfs.status", size: 100).get() }
        #expect(refusal { () throws(Errno) in try m.setxattr(a, "user.vexfs.k", "1") } == .invalidArgument)
        #expect(refusal { () throws(Errno) in try m.fs.removeAttribute(a, "user.vexfs.k") } == .noData)
    }

    // MARK: setxattr and removexattr

    @Test func settingsAndQueryOptionsGoToTheVectorLayer() throws {
        let m = try Mounted()
        let q = try m.file("q.query", "1 2")
        let d = try m.directory("d")
        try m.setxattr(d, "user.vexfs.dim", "2")
        try m.setxattr(q, "user.vexfs.k", "5")
        try m.fs.removeAttribute(q, "user.vexfs.k")
        #expect(m.semantic.calls == [.setDirectoryAttribute("user.vexfs.dim", dir: "d", value: "2"),
                                     .setFileAttribute("user.vexfs.k", file: "q.query", value: "5"),
                                     .removeFileAttribute("user.vexfs.k", file: "q.query")])
        #expect(refusal { () throws(Errno) in try m.fs.removeAttribute(d, "user.vexfs.dim") } == .noData, "computed: nothing to remove")
        #expect(m.semantic.calls.count == 3)
    }

    @Test func aVectorAttributeMustBeAVector() throws {
        let m = try Mounted()
        let a = try m.file("a")
        let d = try m.directory("d")
        #expect(refusal { () throws(Errno) in try m.setxattr(a, "user.vexfs.vector", "one two") } == .invalidArgument)
        #expect(refusal { () throws(Errno) in try m.setxattr(d, "user.vexfs.vector", "1 2") } == .invalidArgument)
        #expect(throws: Errno.noData) { try m.getxattr(a, "user.vexfs.vector", size: 0).get() }
        #expect(m.semantic.calls.isEmpty, "refused before the store or the vector layer hear of it")
    }

    @Test func storedAttributesOfRegularFilesAreNews() throws {
        let m = try Mounted()
        let a = try m.file("a.vec")
        let d = try m.directory("d")
        try m.setxattr(a, "user.tag", "x")
        try m.fs.removeAttribute(a, "user.tag")
        try m.setxattr(d, "user.tag", "x")
        #expect(m.semantic.calls == [.attributeChanged("a.vec", name: "user.tag"), .attributeChanged("a.vec", name: "user.tag")])
        #expect(refusal { () throws(Errno) in try m.fs.removeAttribute(a, "user.tag") } == .noData)
    }

    @Test func theCapabilityProbeIsAnsweredFromMemoryOnceKnownAbsent() throws {
        let m = try Mounted()
        let a = try m.file("a")
        #expect(throws: Errno.noData) { try m.getxattr(a, "security.capability", size: 0).get() }
        let knownWithoutCapabilityNow = a.knownWithoutCapability.load(ordering: .relaxed)
        #expect(knownWithoutCapabilityNow)
    }

    // MARK: listxattr

    @Test func listingsLeaveOutOurSettings() {
        var list = Array("user.vexfs.dim\0user.note\0user.vexfs.vector\0user.vexfs.metric\0".utf8CString.dropLast())
        let kept = list.withUnsafeMutableBufferPointer { listedAttributes($0.baseAddress!, length: $0.count) }
        let names = list.prefix(kept).split(separator: 0).map { String(decoding: $0.map { UInt8(bitPattern: $0) }, as: UTF8.self) }
        #expect(names == ["user.note", "user.vexfs.vector"])
    }
}
