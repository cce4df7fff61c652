import Glibc
import Testing
import VexIndex
import VexKernels
@testable import VexSemantic

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

    @Test func eventsQueriesAndAReopenThatFindsTheFilesChanged() throws {
        let store = temporaryStore()
        defer { removeTree(store) }
        mkdir(store + "/c", 0o755)
        var st = stat()
        stat(store + "/c", &st)
        let dir = DirectoryRef(key: UInt64(st.st_ino), path: "c")
        let layer = SemanticLayer(storeRoot: store, kernels: Self.kernels)
        for i in 0..<5 {
            put(store + "/c/v\(i).vec", "\(i) 0")
            layer.written(dir, "v\(i).vec")
        }
        put(store + "/c/q.query", "0.9 0")
        #expect(answer(try layer.fileAttribute("user.vexfs.knn.2", dir: dir, name: "q.query", inode: 1)) == ["v1.vec", "v0.vec"])
        unlink(store + "/c/v1.vec")
        layer.removed(dir, "v1.vec")
        #expect(answer(try layer.fileAttribute("user.vexfs.knn.1", dir: dir, name: "q.query", inode: 1)) == ["v0.vec"])
        #expect(try layer.directoryAttribute("user.vexfs.count", dir: dir) == Array("4".utf8))
        #expect(throws: SemanticError.invalid("K must be from 1 to 1000")) {
            try layer.fileAttribute("user.vexfs.knn.0", dir: dir, name: "q.query", inode: 1)
        }
        #expect(throws: SemanticError.noData) { try layer.fileAttribute("user.vexfs.other", dir: dir, name: "v0.vec", inode: 2) }
        layer.close()

        // While "unmounted": one file changed, one added.
        put(store + "/c/v0.vec", "50 0")
        put(store + "/c/v7.vec", "0.8 0")
        let again = SemanticLayer(storeRoot: store, kernels: Self.kernels)
        let result = again.reconcile { _ in }
        #expect(result.collections == 1 && result.changed == 2)
        #expect(answer(try again.fileAttribute("user.vexfs.knn.2", dir: dir, name: "q.query", inode: 1)) == ["v7.vec", "v2.vec"])
        #expect(try again.directoryAttribute("user.vexfs.count", dir: dir) == Array("5".utf8))
        again.close()
    }

    @Test func listingHidesOurSettingsButNotTheVector() {
        #expect(SemanticLayer.hidesFromListing("user.vexfs.dim"))
        #expect(SemanticLayer.hidesFromListing("user.vexfs.knn.5"))
        #expect(!SemanticLayer.hidesFromListing("user.vexfs.vector"))
        #expect(!SemanticLayer.hidesFromListing("user.tag"))
        #expect(!SemanticLayer.owns("security.capability"))
    }
}
