import Glibc
import Testing
import VexKernels
import VexTestSupport
@testable import VexIndex

/// A fresh directory under /tmp, removed by the caller.
func scratchDirectory() -> String {
    var template = Array("/tmp/vexfs-index-XXXXXX".utf8CString)
    return template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
}

func removeTree(_ path: String) { _ = system("rm -rf '\(path)'") }

func copyFile(_ from: String, _ to: String, length: Int? = nil) throws {
    var bytes = try readFile(from)
    if let length { bytes.removeLast(bytes.count - length) }
    let fd = open(to, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    #expect(fd >= 0)
    #expect(write(fd, bytes, bytes.count) == bytes.count)
    close(fd)
}

@Suite struct PersistenceTests {
    static let kernels = try! DistanceKernels.forProcess.get()

    /// The index's snapshot sections, for bit-exact comparison.
    func image(_ index: PersistentIndex) -> [String: [UInt8]] {
        let now = index.index.active
        let sections = (now as? HNSWIndex)?.sections() ?? (now as! FlatIndex).sections()
        return Dictionary(uniqueKeysWithValues: sections)
    }

    @Test(arguments: [IndexKind.flat, .hnsw])
    func roundTripIsBitExact(_ kind: IndexKind) throws {
        let dir = scratchDirectory()
        defer { removeTree(dir) }
        let data = clusteredSet(count: 1500, dimension: 12, clusters: 10, seed: 4)
        let a = try PersistentIndex.open(directory: dir, dimension: 12, metric: .cosine, kind: kind,
                                         parameters: HNSWParameters(m: 8, efConstruction: 32), kernels: Self.kernels)
        for (i, v) in data.enumerated() { try a.insert(label: UInt64(i) * 7, vector: v) }
        for i in stride(from: 0, to: 1500, by: 5) { a.remove(label: UInt64(i) * 7) }
        a.index.absorb()  // single inserts wait beside the graph; a snapshot links them first
        let before = image(a)
        let answers = try data.prefix(20).map { try a.search($0, k: 10) }
        a.close()

        let b = try PersistentIndex.open(directory: dir, dimension: 12, metric: .cosine, kind: kind,
                                         parameters: HNSWParameters(m: 8, efConstruction: 32), kernels: Self.kernels)
        #expect(b.recovery.snapshotLoaded && b.recovery.problems.isEmpty && b.recovery.logRecordsReplayed == 0)
        #expect(image(b) == before)
        #expect(try data.prefix(20).map { try b.search($0, k: 10) } == answers)
        #expect(b.count == 1200)
        b.close()
    }

    @Test func theLogReplaysOverTheSnapshot() throws {
        let dir = scratchDirectory()
        defer { removeTree(dir) }
        let a = try PersistentIndex.open(directory: dir, dimension: 3, metric: .l2, kind: .flat, kernels: Self.kernels)
        try a.insert(label: 1, vector: [1, 0, 0])
        try a.checkpoint()
        try a.insert(label: 2, vector: [0, 1, 0])
        a.remove(label: 1)
        try a.flush()
        // No close: as after a crash, only the snapshot and the log are on disk.
        let b = try PersistentIndex.open(directory: dir, dimension: 3, metric: .l2, kind: .flat, kernels: Self.kernels)
        #expect(b.recovery.snapshotLoaded && b.recovery.logRecordsReplayed == 2)
        #expect(try b.search([0, 0, 0], k: 10).map(\.label) == [2])
        b.close()
        a.close()
    }

    @Test func recoveryAfterTheLogIsCutAtEveryByteOfItsLastRecords() throws {
        let dir = scratchDirectory()
        defer { removeTree(dir) }
        let dim = 4
        let a = try PersistentIndex.open(directory: dir, dimension: dim, metric: .l2, kind: .flat, kernels: Self.kernels)
        var ends: [Int] = []   // byte offset where each record ends
        var offset = 8
        for i in 0..<6 {
            if i == 4 {
                a.remove(label: 1)
                offset += 8 + 9
            } else {
                try a.insert(label: UInt64(i), vector: [Float(i), 1, 2, 3])
                offset += 8 + 9 + 4 * dim
            }
            ends.append(offset)
        }
        try a.flush()
        let log = PersistentIndex.logPath(dir, 0)
        #expect(try readFile(log).count == offset)
        // What the index holds after the first r records.
        func expected(_ r: Int) -> Set<UInt64> {
            var live = Set<UInt64>()
            for i in 0..<r { if i == 4 { live.remove(1) } else { live.insert(UInt64(i)) } }
            return live
        }
        for cut in ends[2]...offset {
            let copy = scratchDirectory()
            defer { removeTree(copy) }
            try copyFile(log, PersistentIndex.logPath(copy, 0), length: cut)
            let b = try PersistentIndex.open(directory: copy, dimension: dim, metric: .l2, kind: .flat, kernels: Self.kernels)
            let whole = ends.filter { $0 <= cut }.count
            #expect(b.recovery.logRecordsReplayed == whole)
            let cutReported = b.recovery.problems.contains { $0.contains("cut at byte \(ends[whole - 1])") }
            #expect(cutReported == !ends.contains(cut), "cut at \(cut): \(b.recovery)")
            let labels = Set(try b.search([0, 0, 0, 0], k: 10).map(\.label))
            #expect(labels == expected(whole))
            b.close()
        }
        a.close()
    }

    @Test func aDamagedRecordCutsTheLogThere() throws {
        let dir = scratchDirectory()
        defer { removeTree(dir) }
        let a = try PersistentIndex.open(directory: dir, dimension: 2, metric: .l2, kind: .flat, kernels: Self.kernels)
        for i in 0..<5 { try a.insert(label: UInt64(i), vector: [Float(i), 0]) }
        try a.flush()
        let log = PersistentIndex.logPath(dir, 0)
        var bytes = try readFile(log)
        let recordSize = 8 + 9 + 8
        bytes[8 + 3 * recordSize + 12] ^= 0x40   // inside the fourth record's payload
        let fd = open(log, O_WRONLY | O_TRUNC)
        _ = write(fd, bytes, bytes.count)
        close(fd)
        let b = try PersistentIndex.open(directory: dir, dimension: 2, metric: .l2, kind: .flat, kernels: Self.kernels)
        #expect(b.recovery.logRecordsReplayed == 3)
        #expect(b.recovery.problems.first?.contains("checksum") == true)
        #expect(try readFile(log).count == 8 + 3 * recordSize)
        b.close()
        a.close()
    }

    @Test func aDamagedOrForeignSnapshotIsSetAside() throws {
        let dir = scratchDirectory()
        defer { removeTree(dir) }
        let a = try PersistentIndex.open(directory: dir, dimension: 2, metric: .l2, kind: .flat, kernels: Self.kernels)
        for i in 0..<50 { try a.insert(label: UInt64(i), vector: [Float(i), 0]) }
        a.close()
        // Another dimension: nothing of the old index is served.
        let other = try PersistentIndex.open(directory: dir, dimension: 3, metric: .l2, kind: .flat, kernels: Self.kernels)
        #expect(!other.recovery.snapshotLoaded && other.count == 0 && !other.recovery.problems.isEmpty)
        other.close()
        // A flipped byte inside a section.
        var bytes = try readFile(dir + "/snapshot")
        bytes[bytes.count / 2] ^= 1
        let fd = open(dir + "/snapshot", O_WRONLY | O_TRUNC)
        _ = write(fd, bytes, bytes.count)
        close(fd)
        let b = try PersistentIndex.open(directory: dir, dimension: 3, metric: .l2, kind: .flat, kernels: Self.kernels)
        #expect(!b.recovery.snapshotLoaded && b.count == 0)
        #expect(b.recovery.problems.contains { $0.contains("checksum") })
        b.close()
    }

    @Test func groupCommitBatchesManyRecordsPerSync() throws {
        let dir = scratchDirectory()
        defer { removeTree(dir) }
        let log = try WriteAheadLog(path: dir + "/wal.0", batchRecords: 64, batchDelayMilliseconds: 50)
        for i in 0..<1000 { log.append(.remove(label: UInt64(i))) }
        #expect(log.flush() == nil)
        let replay = try WriteAheadLog.replay(path: dir + "/wal.0", dimension: 1)
        #expect(replay.records.count == 1000 && replay.cutAt == nil)
        #expect(replay.records.last == .remove(label: 999))
        #expect(log.batches < 1000 / 8)
        log.close()
    }
}
