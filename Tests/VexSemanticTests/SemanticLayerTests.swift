import Glibc
import Testing
import VexIndex
import VexKernels
@testable import VexSemantic
import VexStore

/// O_PATH, which Swift's Glibc module does not export.
let oPath: Int32 = 0o10000000

func temporaryStore() -> String {
    var template = Array("/tmp/vexfs-semantic-XXXXXX".utf8CString)
    return template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
}

func put(_ path: String, _ text: String) {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    _ = text.withCString { write(fd, $0, strlen($0)) }
    close(fd)
}

func answer(_ bytes: [UInt8]) -> [String] {
    String(decoding: bytes, as: UTF8.self).split(separator: "\n").map { String($0.split(separator: "\t")[0]) }
}

@Suite struct SemanticLayerTests {
    static let kernels = try! DistanceKernels.forProcess.get()

    /// A directory of the store as the filesystem layer would lend it (an O_PATH descriptor).
    struct Lent {
        let ref: DirectoryRef
        init(_ store: String, _ rel: String) {
            let fd = open(store + "/" + rel, oPath | O_DIRECTORY)
            var st = stat()
            fstat(fd, &st)
            ref = DirectoryRef(key: UInt64(st.st_ino), path: FileName(rel), fd: fd)
        }
        func file(_ name: String) -> FileRef { FileRef(dir: ref, name: FileName(name), fd: open(pathOf(name), oPath | O_NOFOLLOW)) }
        func pathOf(_ name: String) -> String { "/proc/self/fd/\(ref.fd)/" + name }
        func inode(_ name: String) -> UInt64 {
            var st = stat()
            lstat(pathOf(name), &st)
            return UInt64(st.st_ino)
        }
    }

    func ask(_ layer: SemanticLayer, _ attribute: String, _ file: FileRef, as who: Caller = .root) throws(SemanticError) -> [String] {
        defer { close(file.fd) }
        return answer(try layer.fileAttribute(attribute, file: file, requester: who))
    }

    @Test func eventsQueriesAndAReopenThatFindsTheFilesChanged() throws {
        let store = temporaryStore()
        defer { StatePaths.removeTree(store) }
        mkdir(store + "/c", 0o755)
        let c = Lent(store, "c")
        let dir = c.ref
        let layer = SemanticLayer(storeRoot: store, kernels: Self.kernels)
        for i in 0..<5 {
            put(store + "/c/v\(i).vec", "\(i) 0")
            layer.written(dir, FileName("v\(i).vec"), inode: c.inode("v\(i).vec"))
        }
        put(store + "/c/q.query", "0.9 0")
        #expect(try ask(layer, "user.vexfs.knn.2", c.file("q.query")) == ["v1.vec", "v0.vec"])
        unlink(store + "/c/v1.vec")
        layer.removed(dir, "v1.vec")
        #expect(try ask(layer, "user.vexfs.knn.1", c.file("q.query")) == ["v0.vec"])
        #expect(try layer.directoryAttribute("user.vexfs.count", dir: dir) == Array("4".utf8))
        #expect(throws: SemanticError.invalid("K must be from 1 to 1000")) { try ask(layer, "user.vexfs.knn.0", c.file("q.query")) }
        #expect(throws: SemanticError.noData) { try ask(layer, "user.vexfs.other", c.file("v0.vec")) }
        // The file itself is left out of its own answer.
        #expect(try ask(layer, "user.vexfs.knn.1", c.file("v0.vec")) == ["v2.vec"])
        layer.close()

        // While "unmounted": one file changed, one added.
        put(store + "/c/v0.vec", "50 0")
        put(store + "/c/v7.vec", "0.8 0")
        let again = SemanticLayer(storeRoot: store, kernels: Self.kernels)
        let result = again.reconcile { _ in }
        #expect(result.collections == 1 && result.changed == 2)
        #expect(try ask(again, "user.vexfs.knn.2", c.file("q.query")) == ["v7.vec", "v2.vec"])
        #expect(try again.directoryAttribute("user.vexfs.count", dir: dir) == Array("5".utf8))
        again.close()
    }

    @Test func symlinksAreNeverReadAndQueriesFollowTheDescriptor() throws {
        let store = temporaryStore()
        defer { StatePaths.removeTree(store) }
        mkdir(store + "/c", 0o755)
        let secret = store + "/secret"
        put(secret, "7 7 7")
        chmod(secret, 0o600)
        let c = Lent(store, "c")
        let layer = SemanticLayer(storeRoot: store, kernels: Self.kernels)
        defer { layer.close() }
        put(store + "/c/a.vec", "1 0 0")
        layer.written(c.ref, "a.vec", inode: c.inode("a.vec"))
        symlink(secret, store + "/c/s.vec")
        layer.written(c.ref, "s.vec", inode: c.inode("s.vec"))
        #expect(try layer.directoryAttribute("user.vexfs.count", dir: c.ref) == Array("1".utf8))
        #expect(try layer.fileAttribute("user.vexfs.status", file: c.file("s.vec")) == Array("not indexed: a symbolic link is never a vector".utf8))
        // A held query file keeps its own contents when a symlink is moved over its name.
        put(store + "/c/q.query", "0 1 0")
        let held = c.file("q.query")
        symlink(secret, store + "/c/link")
        rename(store + "/c/link", store + "/c/q.query")
        let distances = String(decoding: try layer.fileAttribute("user.vexfs.knn.1", file: held), as: UTF8.self)
        #expect(distances.hasPrefix("a.vec\t1.414"))
    }

    @Test func namesAreBytesAndAnswersAreEscaped() throws {
        let store = temporaryStore()
        defer { StatePaths.removeTree(store) }
        mkdir(store + "/c", 0o755)
        let c = Lent(store, "c")
        let layer = SemanticLayer(storeRoot: store, kernels: Self.kernels)
        defer { layer.close() }
        let odd: [[UInt8]] = [Array("tab\there.vec".utf8), Array("new\nline.vec".utf8), Array("back\\slash.vec".utf8), [0x63, 0x61, 0x66, 0xE9] + Array(".vec".utf8)]
        let real = open(store + "/c", O_DIRECTORY)
        defer { close(real) }
        for (i, name) in odd.enumerated() {
            let fd = FileName(name).withCString { openat(real, $0, O_WRONLY | O_CREAT, 0o644) }
            _ = "\(i) 0".withCString { write(fd, $0, strlen($0)) }
            close(fd)
            var st = stat()
            _ = FileName(name).withCString { fstatat(real, $0, &st, 0) }
            layer.written(c.ref, FileName(name), inode: UInt64(st.st_ino))
        }
        put(store + "/c/q.query", "0 0")
        let lines = String(decoding: try layer.fileAttribute("user.vexfs.knn.4", file: c.file("q.query")), as: UTF8.self)
            .split(separator: "\n", omittingEmptySubsequences: false).dropLast()
        #expect(lines.count == 4)
        #expect(lines.allSatisfy { $0.split(separator: "\t", omittingEmptySubsequences: false).count == 2 })
        #expect(lines.map { String($0.split(separator: "\t")[0]) } == ["tab\\there.vec", "new\\nline.vec", "back\\\\slash.vec", "caf\\xe9.vec"])
        for (line, name) in zip(lines, odd) { #expect(FileName.unescape(line.split(separator: "\t")[0]) == name) }
        #expect(FileName("caf\u{e9}.vec").escaped == "caf\u{e9}.vec")
        // A name cannot pass for a row of another file: `#` is escaped.
        #expect(FileName("data.npy#0").escaped == "data.npy\\x230")
        #expect(FileName.unescape("data.npy\\x230") == Array("data.npy#0".utf8))
    }

    @Test func answersNameOnlyWhatTheAskerMayRead() throws {
        let store = temporaryStore()
        defer { StatePaths.removeTree(store) }
        chmod(store, 0o755)
        mkdir(store + "/c", 0o755)
        let c = Lent(store, "c")
        let layer = SemanticLayer(storeRoot: store, kernels: Self.kernels)
        defer { layer.close() }
        for i in 0..<20 {
            put(store + "/c/v\(i).vec", "\(i) 0")
            chown(store + "/c/v\(i).vec", i % 2 == 0 ? 1000 : 2000, 2000)
            chmod(store + "/c/v\(i).vec", 0o600)
            layer.written(c.ref, FileName("v\(i).vec"), inode: c.inode("v\(i).vec"))
        }
        put(store + "/c/q.query", "0 0")
        let mine = Caller(uid: 1000, gid: 1000)
        #expect(try ask(layer, "user.vexfs.knn.3", c.file("q.query"), as: mine) == ["v0.vec", "v2.vec", "v4.vec"])
        #expect(try ask(layer, "user.vexfs.knn.3", c.file("q.query")) == ["v0.vec", "v1.vec", "v2.vec"])
        chmod(store + "/c/v1.vec", 0o640)
        let member = Caller(uid: 1000, gid: 1000, groups: [2000])
        #expect(try ask(layer, "user.vexfs.knn.3", c.file("q.query"), as: member) == ["v0.vec", "v1.vec", "v2.vec"])
        // Directories decide too, when the query runs, whatever descriptor the asker holds: a
        // directory they may enter but not list names nothing (EACCES), nor one they cannot reach.
        chmod(store + "/c", 0o711)
        #expect(throws: SemanticError.self) { try ask(layer, "user.vexfs.knn.3", c.file("q.query"), as: mine) }
        chmod(store + "/c", 0o755)
        #expect(try ask(layer, "user.vexfs.knn.3", c.file("q.query"), as: mine) == ["v0.vec", "v2.vec", "v4.vec"])
        chmod(store, 0o700)
        #expect(throws: SemanticError.self) { try ask(layer, "user.vexfs.knn.3", c.file("q.query"), as: mine) }
        chmod(store, 0o755)
        // The thread is the daemon's again after each question.
        put(store + "/root-only", "x")
        chmod(store + "/root-only", 0o600)
        #expect(faccessat(AT_FDCWD, store + "/root-only", R_OK, AT_EACCESS) == 0)
    }

    @Test func aWriteThroughOneHardLinkRefreshesEveryName() throws {
        let store = temporaryStore()
        defer { StatePaths.removeTree(store) }
        mkdir(store + "/c", 0o755)
        mkdir(store + "/d", 0o755)
        let c = Lent(store, "c"), d = Lent(store, "d")
        let layer = SemanticLayer(storeRoot: store, kernels: Self.kernels)
        defer { layer.close() }
        put(store + "/c/a.vec", "1 0")
        put(store + "/c/z.vec", "0 1")
        put(store + "/d/z.vec", "0 1")
        for (lent, name) in [(c, "a.vec"), (c, "z.vec"), (d, "z.vec")] { layer.written(lent.ref, FileName(name), inode: lent.inode(name)) }
        link(store + "/c/a.vec", store + "/c/b.vec")
        layer.linked(c.ref, "b.vec")
        link(store + "/c/a.vec", store + "/d/b.vec")
        layer.linked(d.ref, "b.vec")
        #expect(try layer.directoryAttribute("user.vexfs.count", dir: c.ref) == Array("3".utf8))
        put(store + "/c/a.vec", "0 2")
        layer.written(c.ref, "a.vec", inode: c.inode("a.vec"))
        put(store + "/c/q.query", "0 1")
        put(store + "/d/q.query", "0 1")
        let here = String(decoding: try layer.fileAttribute("user.vexfs.knn.3", file: c.file("q.query")), as: UTF8.self)
        #expect(here.split(separator: "\n").map { $0.split(separator: "\t").map(String.init) }.map { $0[1] } == ["0.0", "1.0", "1.0"])
        #expect(try ask(layer, "user.vexfs.knn.2", d.file("q.query")) == ["z.vec", "b.vec"])
        let there = String(decoding: try layer.fileAttribute("user.vexfs.knn.2", file: d.file("q.query")), as: UTF8.self)
        #expect(there.hasSuffix("b.vec\t1.0\n"))
    }

    @Test func listingHidesOurSettingsButNotTheVector() {
        #expect(SemanticLayer.hidesFromListing("user.vexfs.dim"))
        #expect(SemanticLayer.hidesFromListing("user.vexfs.knn.5"))
        #expect(!SemanticLayer.hidesFromListing("user.vexfs.vector"))
        #expect(!SemanticLayer.hidesFromListing("user.tag"))
        #expect(!SemanticLayer.owns("security.capability"))
    }
}

@Suite struct RecallTargetTests {
    static let kernels = try! DistanceKernels.forProcess.get()

    /// `rows` x `dim` values around a few centres, as one `.fvecs` file.
    func writeFvecs(_ path: String, rows: Int, dim: Int) {
        var state: UInt64 = 77
        func unit() -> Float {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return Float(state >> 40) / Float(1 << 24)
        }
        let centres = (0..<12).map { _ in (0..<dim).map { _ in unit() * 2 - 1 } }
        var bytes: [UInt8] = []
        for _ in 0..<rows {
            let c = centres[Int(unit() * 12) % 12]
            withUnsafeBytes(of: Int32(dim).littleEndian) { bytes += $0 }
            for d in 0..<dim { withUnsafeBytes(of: (c[d] + unit() * 0.6 - 0.3).bitPattern.littleEndian) { bytes += $0 } }
        }
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
    }

    /// A metric change is built beside the index in use and swapped in: when the setxattr returns
    /// the answers rank by the new metric, one index (and one vector file) is left, and a new mount
    /// loads its snapshot without reading a file again.
    @Test func aMetricChangeIsBuiltBesideAndSwappedIn() throws {
        let store = temporaryStore()
        defer { StatePaths.removeTree(store) }
        mkdir(store + "/c", 0o755)
        let c = SemanticLayerTests.Lent(store, "c")
        let layer = SemanticLayer(storeRoot: store, kernels: Self.kernels, indexKind: .hnsw)
        writeFvecs(store + "/c/base.fvecs", rows: 2000, dim: 4)
        layer.written(c.ref, FileName("base.fvecs"), inode: c.inode("base.fvecs"))
        // Under l2 the long vector is far from the short query; under cosine it points the same way.
        put(store + "/c/long.vec", "300 300 300 300")
        layer.written(c.ref, FileName("long.vec"), inode: c.inode("long.vec"))
        put(store + "/c/q.query", "0.01 0.01 0.01 0.01")
        let first = try SemanticLayerTests().ask(layer, "user.vexfs.knn.1", c.file("q.query"))
        #expect(first != ["long.vec"])
        try layer.setDirectoryAttribute("user.vexfs.metric", dir: c.ref, value: Array("cosine".utf8))
        #expect(String(decoding: try layer.directoryAttribute("user.vexfs.metric", dir: c.ref), as: UTF8.self) == "cosine")
        #expect(String(decoding: try layer.directoryAttribute("user.vexfs.count", dir: c.ref), as: UTF8.self) == "2001")
        #expect(try SemanticLayerTests().ask(layer, "user.vexfs.knn.1", c.file("q.query")) == ["long.vec"])
        // The same setting again changes nothing.
        try layer.setDirectoryAttribute("user.vexfs.metric", dir: c.ref, value: Array("cosine".utf8))
        #expect(String(decoding: try layer.directoryAttribute("user.vexfs.count", dir: c.ref), as: UTF8.self) == "2001")
        let key = c.ref.key
        let indexDir = "\(layer.stateRoot)/index/\(key)"
        layer.close()
        var files: [String] = []
        if let d = opendir(indexDir) {
            while let e = readdir(d) {
                let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
                if name.hasPrefix("vectors.") { files.append(name) }
            }
            closedir(d)
        }
        #expect(files.count == 1, "\(files)")
        #expect(access(indexDir + "/snapshot.bad", F_OK) != 0)
        let again = SemanticLayer(storeRoot: store, kernels: Self.kernels, indexKind: .hnsw)
        _ = again.reconcile { _ in }
        let loaded = try #require(again.existing(key)?.state.withLock { $0.index?.recovery })
        #expect(loaded.snapshotLoaded && loaded.problems.isEmpty, "\(loaded)")
        #expect(try SemanticLayerTests().ask(again, "user.vexfs.knn.1", c.file("q.query")) == ["long.vec"])
        again.close()
    }

    @Test func theRecallTargetIsValidatedStoredAndMeasured() throws {
        let store = temporaryStore()
        defer { StatePaths.removeTree(store) }
        mkdir(store + "/c", 0o755)
        let c = SemanticLayerTests.Lent(store, "c")
        let layer = SemanticLayer(storeRoot: store, kernels: Self.kernels, indexKind: .hnsw)
        #expect(String(decoding: try layer.directoryAttribute("user.vexfs.recall", dir: c.ref), as: UTF8.self) == "0.95")
        for bad in ["0", "1.5", "-0.2", "x", "nan", "inf", "", "0.9 0.8"] {
            #expect(throws: SemanticError.self) { try layer.setDirectoryAttribute("user.vexfs.recall", dir: c.ref, value: Array(bad.utf8)) }
        }
        writeFvecs(store + "/c/base.fvecs", rows: 3000, dim: 16)
        layer.written(c.ref, FileName("base.fvecs"), inode: c.inode("base.fvecs"))
        try layer.setDirectoryAttribute("user.vexfs.recall", dir: c.ref, value: Array("0.99\n".utf8))
        layer.bridge.settleAll()
        layer.tuner.settle()
        #expect(String(decoding: try layer.directoryAttribute("user.vexfs.recall", dir: c.ref), as: UTF8.self) == "0.99")
        let summary = String(decoding: try layer.directoryAttribute("user.vexfs.index", dir: c.ref), as: UTF8.self)
        #expect(summary.contains("in use: ef "), "\(summary)")
        #expect(summary.contains("target 0.99"), "\(summary)")
        let m = try #require(layer.existing(c.ref.key)?.state.withLock { $0.index?.measurement })
        #expect(m.vectors == 3000 && (m.recall >= 0.99 || m.ef == 1000))
        layer.close()
        // The target is the directory's: a new mount reads it back.
        let again = SemanticLayer(storeRoot: store, kernels: Self.kernels, indexKind: .hnsw)
        _ = again.reconcile { _ in }
        #expect(String(decoding: try again.directoryAttribute("user.vexfs.recall", dir: c.ref), as: UTF8.self) == "0.99")
        again.close()
    }
}
