import Glibc
import Synchronization
import Testing
import VexTestSupport
import VexKernels
@testable import VexSemantic
import VexStore

/// Big vector files read a slice at a time, and what a collection does with them.
@Suite struct VectorStreamTests {
    static let kernels = try! DistanceKernels.forProcess.get()

    /// A deterministic matrix of `rows` x `dim`.
    func matrix(_ rows: Int, _ dim: Int, seed: UInt64 = 5) -> [Float] {
        var state = seed
        return (0..<(rows * dim)).map { _ in
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return Float(state >> 40) / Float(1 << 24) * 2 - 1
        }
    }

    /// The bytes of a version-1 .npy of `values` (rows x dim) as float32 or float64, C or Fortran order.
    func npy(_ values: [Float], rows: Int, dim: Int, fortran: Bool, double: Bool = false) -> [UInt8] {
        var header = "{'descr': '<f\(double ? 8 : 4)', 'fortran_order': \(fortran ? "True" : "False"), 'shape': (\(rows), \(dim)), }"
        while (10 + header.utf8.count + 1) % 64 != 0 { header += " " }
        header += "\n"
        var bytes: [UInt8] = [0x93] + Array("NUMPY".utf8) + [1, 0]
        withUnsafeBytes(of: UInt16(header.utf8.count).littleEndian) { bytes += $0 }
        bytes += Array(header.utf8)
        for i in 0..<(rows * dim) {
            let v = fortran ? values[(i % rows) * dim + i / rows] : values[i]
            if double { withUnsafeBytes(of: Double(v).bitPattern.littleEndian) { bytes += $0 } } else { withUnsafeBytes(of: v.bitPattern.littleEndian) { bytes += $0 } }
        }
        return bytes
    }

    func fvecs(_ values: [Float], rows: Int, dim: Int) -> [UInt8] {
        var bytes: [UInt8] = []
        for r in 0..<rows {
            withUnsafeBytes(of: Int32(dim).littleEndian) { bytes += $0 }
            for j in 0..<dim { withUnsafeBytes(of: values[r * dim + j].bitPattern.littleEndian) { bytes += $0 } }
        }
        return bytes
    }

    func write(_ path: String, _ bytes: [UInt8]) {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        _ = Glibc.write(fd, bytes, bytes.count)
        close(fd)
    }

    /// Every layout, read in slices of a few rows, gives what the whole-file parser gives.
    @Test(arguments: ["c", "fortran", "f64", "fvecs"])
    func slicesAddUpToTheWholeFile(_ kind: String) throws {
        let dir = temporaryStore()
        defer { StatePaths.removeTree(dir) }
        let rows = 37, dim = 5
        let values = matrix(rows, dim)
        let (name, bytes): (String, [UInt8]) = switch kind {
        case "fvecs": ("a.fvecs", fvecs(values, rows: rows, dim: dim))
        default: ("a.npy", npy(values, rows: rows, dim: dim, fortran: kind == "fortran", double: kind == "f64"))
        }
        write(dir + "/" + name, bytes)
        let fd = open(dir, O_RDONLY | O_DIRECTORY)
        defer { close(fd) }
        let stream = try VectorStream(fd, FileName(name), VectorFormat(fileName: name)!, sliceBytes: 4 * dim * 8)
        #expect(stream.rows == rows && stream.dimension == dim && stream.sliceRows == 8)
        var all: [Float] = []
        var slice: [Float] = []
        var at = 0
        while at < rows {
            let range = at..<min(rows, at + stream.sliceRows)
            try stream.read(range, into: &slice)
            all += slice
            at = range.upperBound
        }
        let whole = bytes.withUnsafeBytes { VectorParser.parse($0, as: VectorFormat(fileName: name)!) }
        #expect(try whole.get().values == all)
        #expect(all == values)
    }

    @Test func damageIsAFormatErrorNamingTheRow() throws {
        let dir = temporaryStore()
        defer { StatePaths.removeTree(dir) }
        var values = matrix(20, 3)
        values[11 * 3 + 1] = .nan
        write(dir + "/nan.npy", npy(values, rows: 20, dim: 3, fortran: false))
        var bad = fvecs(matrix(20, 3), rows: 20, dim: 3)
        bad[16 * 16] = 4   // record 17 (16 bytes each) declares dimension 4
        write(dir + "/dims.fvecs", bad)
        write(dir + "/short.npy", Array(npy(matrix(20, 3), rows: 20, dim: 3, fortran: false).dropLast(5)))
        write(dir + "/cut.fvecs", Array(fvecs(matrix(20, 3), rows: 20, dim: 3).dropLast(2)))
        symlink(dir + "/nan.npy", dir + "/link.npy")
        let fd = open(dir, O_RDONLY | O_DIRECTORY)
        defer { close(fd) }
        var out: [Float] = []
        #expect(throws: FormatError("row 11, number 2 is not finite")) { try VectorStream(fd, "nan.npy", .numpy).read(0..<20, into: &out) }
        #expect(throws: FormatError("record 17 has dimension 4, the first 3")) { try VectorStream(fd, "dims.fvecs", .fvecs).read(0..<20, into: &out) }
        #expect(throws: FormatError("truncated: 235 bytes of data, the shape needs 240")) { try VectorStream(fd, "short.npy", .numpy) }
        #expect(throws: FormatError("record 20 is truncated")) { try VectorStream(fd, "cut.fvecs", .fvecs) }
        #expect(throws: FormatError("a symbolic link is never a vector")) { try VectorStream(fd, "link.npy", .numpy) }
    }

    /// Through the layer: a streamed file answers as the same file read whole, and one that is bad
    /// part of the way through leaves no vector behind.
    @Test func aStreamedFileIsIndexedLikeOneReadWhole() throws {
        let store = temporaryStore()
        defer { StatePaths.removeTree(store) }
        for d in ["whole", "streamed"] { mkdir(store + "/" + d, 0o755) }
        let rows = 3000, dim = 8
        let values = matrix(rows, dim, seed: 9)
        let file = npy(values, rows: rows, dim: dim, fortran: true)
        write(store + "/whole/base.npy", file)
        write(store + "/streamed/base.npy", file)
        var query = ""
        for j in 0..<dim { query += "\(values[17 * dim + j] + 0.01) " }
        put(store + "/whole/q.query", query)
        put(store + "/streamed/q.query", query)
        // Exact indexes on both sides, so the answers must be equal.
        let layer = SemanticLayer(storeRoot: store, kernels: Self.kernels, indexKind: .flat, streamThreshold: 50_000)
        defer { layer.close() }
        let whole = SemanticLayerTests.Lent(store, "whole"), streamed = SemanticLayerTests.Lent(store, "streamed")
        layer.written(whole.ref, "base.npy", inode: whole.inode("base.npy"))
        layer.written(streamed.ref, "base.npy", inode: streamed.inode("base.npy"))
        func knn(_ l: SemanticLayerTests.Lent) throws -> [UInt8] {
            let f = l.file("q.query")
            defer { close(f.fd) }
            return try layer.fileAttribute("user.vexfs.knn.10", file: f)
        }
        let expected = try knn(whole)
        #expect(!expected.isEmpty)
        #expect(try knn(streamed) == expected)
        #expect(try layer.directoryAttribute("user.vexfs.count", dir: streamed.ref) == Array("3000".utf8))

        var broken = values
        broken[2500 * dim] = .infinity
        write(store + "/streamed/base.npy", npy(broken, rows: rows, dim: dim, fortran: false))
        layer.written(streamed.ref, "base.npy", inode: streamed.inode("base.npy"))
        #expect(try layer.directoryAttribute("user.vexfs.count", dir: streamed.ref) == Array("0".utf8))
        let f = streamed.file("base.npy")
        defer { close(f.fd) }
        #expect(String(decoding: try layer.fileAttribute("user.vexfs.status", file: f), as: UTF8.self) == "not indexed: row 2500, number 1 is not finite")
    }

    /// The builder reads a streamed file without holding the collection's lock: meanwhile the
    /// file's status says it is being read, and the collection answers.
    @Test func aStreamedFileIsReadWithoutTheCollectionsLock() throws {
        let store = temporaryStore()
        defer { StatePaths.removeTree(store) }
        mkdir(store + "/c", 0o755)
        let rows = 8_000, dim = 16
        let values = matrix(rows, dim, seed: 10)
        write(store + "/c/base.npy", npy(values, rows: rows, dim: dim, fortran: false))
        let layer = SemanticLayer(storeRoot: store, kernels: Self.kernels, indexKind: .hnsw, streamThreshold: 50_000)
        defer { layer.close() }
        let c = SemanticLayerTests.Lent(store, "c")
        layer.written(c.ref, "base.npy", inode: c.inode("base.npy"))
        let collection = try #require(layer.existing(c.ref.key))
        let seen = Atomic<Bool>(false), finished = Atomic<Bool>(false)
        runOnThreads([{
            layer.bridge.settleAll()
            finished.store(true, ordering: .releasing)
        }, {
            while !finished.load(ordering: .acquiring) {
                if let status = collection.state.withLockIfAvailable({ $0.files["base.npy"]?.status }),
                   status == "not indexed yet: reading \(rows) vectors" {
                    seen.store(true, ordering: .relaxed)
                }
            }
        }])
        let readWithoutTheLock = seen.load(ordering: .relaxed)
        #expect(readWithoutTheLock)
        #expect(try layer.directoryAttribute("user.vexfs.count", dir: c.ref) == Array("\(rows)".utf8))
        let f = c.file("base.npy")
        defer { close(f.fd) }
        #expect(String(decoding: try layer.fileAttribute("user.vexfs.status", file: f), as: UTF8.self) == "indexed: \(rows) vectors")
    }

    /// At mount a file big enough to stream is handed to the bridge rather than read before the
    /// mount serves; a query on its collection still sees all of it, and a file changed while
    /// unmounted is read again the same way.
    @Test func aBigFileFoundAtMountIsStreamedByTheBridge() throws {
        let store = temporaryStore()
        defer { StatePaths.removeTree(store) }
        mkdir(store + "/c", 0o755)
        let dim = 8
        write(store + "/c/base.npy", npy(matrix(3000, dim, seed: 11), rows: 3000, dim: dim, fortran: false))
        put(store + "/c/one.vec", "1 2 3 4 5 6 7 8")
        for (round, rows) in [3000, 4000].enumerated() {
            if round == 1 { write(store + "/c/base.npy", npy(matrix(rows, dim, seed: 12), rows: rows, dim: dim, fortran: true)) }
            let layer = SemanticLayer(storeRoot: store, kernels: Self.kernels, indexKind: .flat, streamThreshold: 50_000)
            let found = layer.reconcile { _ in }
            #expect(found.collections == 1 && found.changed >= 1)
            let c = SemanticLayerTests.Lent(store, "c")
            #expect(try layer.directoryAttribute("user.vexfs.count", dir: c.ref) == Array("\(rows + 1)".utf8))
            let f = c.file("base.npy")
            #expect(String(decoding: try layer.fileAttribute("user.vexfs.status", file: f), as: UTF8.self) == "indexed: \(rows) vectors")
            close(f.fd)
            layer.close()
        }
    }
}
