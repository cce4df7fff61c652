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

/// Damage of one bit at `offset` in the file at `path`, as a failing disk would leave it.
func flipBit(in path: String, at offset: off_t) {
    let fd = open(path, O_RDWR)
    var byte: UInt8 = 0
    #expect(pread(fd, &byte, 1, offset) == 1)
    byte ^= 0x10
    #expect(pwrite(fd, &byte, 1, offset) == 1)
    close(fd)
}

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
        let sections = try! (now as? HNSWIndex)?.sections() ?? (now as! FlatIndex).sections()
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
        try a.checkpoint()

        let b = try PersistentIndex.open(directory: dir, dimension: 12, metric: .cosine, kind: kind,
                                         parameters: HNSWParameters(m: 8, efConstruction: 32), kernels: Self.kernels)
        #expect(b.recovery.snapshotLoaded && b.recovery.problems.isEmpty)
        #expect(image(b) == before)
        #expect(try data.prefix(20).map { try b.search($0, k: 10) } == answers)
        #expect(b.count == 1200)
    }

    /// An exact index holding more than the 1 MiB `init` reserves (2,000 rows of 768 and 5,000 of 50)
    /// reopens whole: restoring once wrote every row into that first reservation.
    @Test(arguments: [(768, 2000), (50, 5000), (3, 90_000)])
    func aBigExactIndexReopens(_ shape: (Int, Int)) throws {
        let (d, n) = shape
        let dir = scratchDirectory()
        defer { removeTree(dir) }
        var g = SplitMix64(state: UInt64(d))
        let rows = (0..<n).map { _ in (0..<d).map { _ in Float(Int(g.next() % 2001) - 1000) / 1000 } }
        let a = try PersistentIndex.open(directory: dir, dimension: d, metric: .l2, kind: .flat, kernels: Self.kernels)
        for (i, v) in rows.enumerated() { try a.insert(label: UInt64(i), vector: v) }
        let answers = try rows.prefix(5).map { try a.search($0, k: 10) }
        try a.checkpoint()
        let b = try PersistentIndex.open(directory: dir, dimension: d, metric: .l2, kind: .flat, kernels: Self.kernels)
        #expect(b.recovery.snapshotLoaded && b.recovery.problems.isEmpty, "\(b.recovery)")
        #expect(b.count == n)
        #expect(try rows.prefix(5).map { try b.search($0, k: 10) } == answers)
        // It still grows past what it was restored with.
        try b.insert(label: UInt64(n), vector: rows[0])
        #expect(b.count == n + 1)
    }

    /// A snapshot naming one label twice is damaged, not restored into rows no remove can reach.
    @Test func anExactSnapshotWithALabelTwiceIsRefused() throws {
        var labels = ByteWriter(), vectors = ByteWriter()
        for label: UInt64 in [1, 2, 1] { labels.put(label); for _ in 0..<3 { vectors.put(Float(1)) } }
        #expect(throws: ByteReader.Short.self) {
            try FlatIndex.restore(["LABL": labels.bytes, "VECS": vectors.bytes], dimension: 3, metric: .l2, kernels: Self.kernels)
        }
    }

    /// Whatever a snapshot's bytes are, reading it is an answer or a reason, never a trap: cut at every
    /// length and with a byte flipped in every section, of an exact index, of a graph that holds its
    /// vectors, and of a graph with vectors waiting beside it.
    @Test(arguments: [IndexKind.flat, .hnsw])
    func damageAnywhereIsAReasonNeverACrash(_ kind: IndexKind) throws {
        let dir = scratchDirectory()
        defer { removeTree(dir) }
        let data = clusteredSet(count: 300, dimension: 5, clusters: 4, seed: 9)
        let a = try PersistentIndex.open(directory: dir, dimension: 5, metric: .l2, kind: kind,
                                         parameters: HNSWParameters(m: 4, efConstruction: 16), kernels: Self.kernels)
        let flat = data.flatMap { $0 }
        try flat.withUnsafeBufferPointer { try a.insert(batch: (0..<300).map { UInt64($0) }, vectors: $0, threads: 1) }
        if kind == .hnsw { for i in 300..<310 { try a.insert(label: UInt64(i), vector: data[i - 300]) } }
        try a.checkpoint(attachments: [("CAT", [1, 2, 3])])
        let file = try readFile(dir + "/snapshot")
        let intact = try parseSnapshot(file, path: "s")
        let (whole, waiting, _) = try PersistentIndex.restore(intact, path: "s", directory: dir, dimension: 5, metric: .l2, kernels: Self.kernels)
        #expect(whole.count + (waiting?.count ?? 0) == (kind == .hnsw ? 310 : 300))
        var reasons = Set<SnapshotRejection>()
        func attempt(_ bytes: [UInt8]) {
            do {
                let sections = try parseSnapshot(bytes, path: "s")
                _ = try PersistentIndex.restore(sections, path: "s", directory: dir, dimension: 5, metric: .l2, kernels: Self.kernels)
            } catch { reasons.insert(error.rejection) }
        }
        for n in Swift.stride(from: 0, to: file.count, by: max(1, file.count / 500)) { attempt(Array(file.prefix(n))) }
        for i in Swift.stride(from: 8, to: file.count, by: max(1, file.count / 500)) {
            var flipped = file
            flipped[i] ^= 0x10
            attempt(flipped)
        }
        #expect(reasons.isSuperset(of: [.short, .checksum]), "\(reasons)")
        // Sections whose own bytes are wrong, checksummed as if right: each is refused in turn.
        for (tag, bytes) in intact where !bytes.isEmpty {
            for change in [Array(bytes.dropLast()), bytes + [0], bytes.map { $0 ^ 0xFF }] {
                var sections = intact
                sections[tag] = change
                _ = try? PersistentIndex.restore(sections, path: "s", directory: dir, dimension: 5, metric: .l2, kernels: Self.kernels)
            }
        }
    }

    @Test func aNewerFormatATooLargeOneAndAnotherSettingAreSaidSo() throws {
        var w = ByteWriter()
        w.put(UInt32(0))
        let newer = Array("VEXSNAP2".utf8) + w.bytes
        #expect { try parseSnapshot(newer, path: "s") } throws: { ($0 as? PersistenceError)?.rejection == .version }
        #expect { try parseSnapshot(Array("GIF89a..".utf8), path: "s") } throws: { ($0 as? PersistenceError)?.rejection == .version }

        let dir = scratchDirectory()
        defer { removeTree(dir) }
        let a = try PersistentIndex.open(directory: dir, dimension: 4, metric: .l2, kind: .flat, kernels: Self.kernels)
        for i in 0..<2000 { try a.insert(label: UInt64(i), vector: [Float(i), 1, 2, 3]) }
        try a.checkpoint()
        #expect { try readSnapshot(path: dir + "/snapshot", memoryLimit: 16 << 10) } throws: { ($0 as? PersistenceError)?.rejection == .tooLarge }
        let file = try readFile(dir + "/snapshot")
        #expect { try parseSnapshot(file, path: "s", memoryLimit: file.count + 100) } throws: { ($0 as? PersistenceError)?.rejection == .tooLarge }

        let b = try PersistentIndex.open(directory: dir, dimension: 4, metric: .cosine, kind: .flat, kernels: Self.kernels)
        #expect(b.recovery.rejected == .settings && b.count == 0)
        #expect(access(dir + "/snapshot.bad", F_OK) == 0)
    }

    /// The breadth a graph was measured at comes back with it, so the next mount answers as this one
    /// did from its first query; a label caught between waiting and linked is served from the waiting copy.
    @Test func theMeasuredBreadthAndALabelBeingLinkedComeBack() throws {
        let dir = scratchDirectory()
        defer { removeTree(dir) }
        let data = clusteredSet(count: 2000, dimension: 8, clusters: 8, seed: 2)
        let a = try PersistentIndex.open(directory: dir, dimension: 8, metric: .l2, kind: .hnsw,
                                         parameters: HNSWParameters(m: 8, efConstruction: 32), kernels: Self.kernels)
        let flat = data.flatMap { $0 }
        try flat.withUnsafeBufferPointer { try a.insert(batch: (0..<2000).map { UInt64($0) }, vectors: $0, threads: 1) }
        let m = try #require(a.index.tune(target: 0.9))
        let answers = try data.prefix(10).map { try a.search($0, k: 10) }
        try a.checkpoint()
        let b = try PersistentIndex.open(directory: dir, dimension: 8, metric: .l2, kind: .hnsw,
                                         parameters: HNSWParameters(m: 8, efConstruction: 32), kernels: Self.kernels)
        #expect(b.index.measurement == m)
        #expect(try data.prefix(10).map { try b.search($0, k: 10) } == answers)

        var sections = try parseSnapshot(readFile(dir + "/snapshot"), path: "s")
        var labels = ByteWriter(), vectors = ByteWriter()
        labels.put(UInt64(5)); for x in [Float](repeating: 100, count: 8) { vectors.put(x) }
        (sections["FLAB"], sections["FVEC"]) = (labels.bytes, vectors.bytes)
        let (graph, waiting, _) = try PersistentIndex.restore(sections, path: "s", directory: dir, dimension: 8, metric: .l2, kernels: Self.kernels)
        #expect(graph.count == 1999 && waiting?.vector(of: 5) == [Float](repeating: 100, count: 8))
    }

    /// Found by Fuzz/Snapshot: a link at a level its target does not reach (or an entry above its
    /// node's level) was read as links the target does not have, a null pointer. Each is refused.
    @Test func linksAndEntryAboveTheirNodesLevelAreRefused() throws {
        let g = HNSWIndex(dimension: 4, metric: .l2, kernels: Self.kernels, parameters: HNSWParameters(m: 4, efConstruction: 16))
        for (i, v) in clusteredSet(count: 600, dimension: 4, clusters: 3, seed: 5).enumerated() { try g.insert(label: UInt64(i), vector: v) }
        let intact = Dictionary(uniqueKeysWithValues: try g.sections())
        _ = try HNSWIndex.restore(intact, dimension: 4, metric: .l2, kernels: Self.kernels, directory: nil)
        let low = try #require((0..<UInt32(600)).first { g.level($0) == 0 })
        var words = intact["UPPR"]!.withUnsafeBytes { Array($0.bindMemory(to: UInt32.self)) }
        #expect(words[0] > 0)
        words[1] = low
        var linked = intact
        linked["UPPR"] = words.withUnsafeBytes { Array($0) }
        #expect(throws: PersistenceError.self) { try HNSWIndex.restore(linked, dimension: 4, metric: .l2, kernels: Self.kernels, directory: nil) }

        var meta = intact["HNSW"]!
        let entryAt = 4 * 3 + 8 + 8  // m, ef_construction, ef_search, seed, count
        let entry = (UInt64(g.level(low) + 2) << 32) | UInt64(low)
        withUnsafeBytes(of: entry.littleEndian) { for (i, b) in $0.enumerated() { meta[entryAt + i] = b } }
        var entered = intact
        entered["HNSW"] = meta
        #expect(throws: PersistenceError.self) { try HNSWIndex.restore(entered, dimension: 4, metric: .l2, kernels: Self.kernels, directory: nil) }
    }

    @Test func changesSinceTheSnapshotAreCountedAndOldLogsGo() throws {
        let dir = scratchDirectory()
        defer { removeTree(dir) }
        let a = try PersistentIndex.open(directory: dir, dimension: 3, metric: .l2, kind: .flat, kernels: Self.kernels)
        try a.insert(label: 1, vector: [1, 0, 0])
        let rows: [Float] = [0, 1, 0, 0, 0, 1]
        try rows.withUnsafeBufferPointer { (p) throws(IndexError) in try a.insert(batch: [2, 3], vectors: p, threads: 1) }
        #expect(a.unsaved == 3)
        try a.checkpoint()
        #expect(a.unsaved == 0)
        a.remove(label: 1)
        #expect(a.unsaved == 1)
        // As after a crash: the snapshot only (the owner reads again what changed since); a log
        // an earlier version left is removed, not replayed.
        let fd = open(dir + "/wal.3", O_WRONLY | O_CREAT, 0o600)
        close(fd)
        let b = try PersistentIndex.open(directory: dir, dimension: 3, metric: .l2, kind: .flat, kernels: Self.kernels)
        #expect(b.recovery.snapshotLoaded && b.unsaved == 0)
        #expect(try b.search([0, 0, 0], k: 10).map(\.label).sorted() == [1, 2, 3])
        #expect(access(dir + "/wal.3", F_OK) != 0)
    }

    @Test func aDamagedOrForeignSnapshotIsSetAside() throws {
        let dir = scratchDirectory()
        defer { removeTree(dir) }
        let a = try PersistentIndex.open(directory: dir, dimension: 2, metric: .l2, kind: .flat, kernels: Self.kernels)
        for i in 0..<50 { try a.insert(label: UInt64(i), vector: [Float(i), 0]) }
        try a.checkpoint()
        // Another dimension: nothing of the old index is served.
        let other = try PersistentIndex.open(directory: dir, dimension: 3, metric: .l2, kind: .flat, kernels: Self.kernels)
        #expect(!other.recovery.snapshotLoaded && other.count == 0 && !other.recovery.problems.isEmpty)
        for i in 0..<50 { try other.insert(label: UInt64(i), vector: [Float(i), 2, 3]) }
        try other.checkpoint()
        // A flipped byte inside a section.
        var bytes = try readFile(dir + "/snapshot")
        bytes[bytes.count - 64] ^= 1   // inside the main vectors section (META and the end marker follow it)
        let fd = open(dir + "/snapshot", O_WRONLY | O_TRUNC)
        _ = write(fd, bytes, bytes.count)
        close(fd)
        let b = try PersistentIndex.open(directory: dir, dimension: 3, metric: .l2, kind: .flat, kernels: Self.kernels)
        #expect(!b.recovery.snapshotLoaded && b.count == 0)
        #expect(access(dir + "/snapshot.bad", F_OK) == 0)
        #expect(b.recovery.problems.contains { $0.contains("checksum") }, "\(b.recovery)")
    }

    /// A graph's vectors live in a file of the index directory that the snapshot names (never in
    /// the snapshot); a compaction's new file replaces the old one at the next snapshot, and a file
    /// shorter than the snapshot says sets the snapshot aside.
    @Test func aGraphKeepsItsVectorsInAFileTheSnapshotNames() throws {
        let dir = scratchDirectory()
        defer { removeTree(dir) }
        let data = clusteredSet(count: 3000, dimension: 12, clusters: 10, seed: 8)
        let parameters = HNSWParameters(m: 8, efConstruction: 32)
        let a = try PersistentIndex.open(directory: dir, dimension: 12, metric: .l2, kind: .hnsw, parameters: parameters, kernels: Self.kernels)
        let rows = data.flatMap { $0 }
        try rows.withUnsafeBufferPointer { (p) throws(IndexError) in try a.insert(batch: (0..<3000).map { UInt64($0) }, vectors: p, threads: 2) }
        let graph = try #require(a.index.active as? HNSWIndex)
        #expect(graph.vectors.isFile)
        try a.checkpoint()
        let first = try PersistentIndex.entries(in: dir, prefix: "vectors.")
        #expect(first == [graph.vectors.path!])
        let answers = try data.prefix(10).map { try a.search($0, k: 5) }
        // Deleting a third compacts the graph into a new one with a new file; the old one goes at
        // the next snapshot (a crash before it would still find it).
        for i in 0..<1000 { a.remove(label: UInt64(i * 3)) }
        let compacted = try #require(a.index.active as? HNSWIndex)
        #expect(compacted !== graph && compacted.vectors.path != graph.vectors.path)
        #expect(try PersistentIndex.entries(in: dir, prefix: "vectors.").count == 2)
        try a.checkpoint()
        #expect(try PersistentIndex.entries(in: dir, prefix: "vectors.") == [compacted.vectors.path!])

        let b = try PersistentIndex.open(directory: dir, dimension: 12, metric: .l2, kind: .hnsw, parameters: parameters, kernels: Self.kernels)
        #expect(b.recovery.snapshotLoaded && b.count == 2000)
        #expect(try data.prefix(10).map { try b.search($0, k: 5) } == (try data.prefix(10).map { try a.search($0, k: 5) }))
        #expect(answers.count == 10)
        truncate(compacted.vectors.path!, 4096)
        let c = try PersistentIndex.open(directory: dir, dimension: 12, metric: .l2, kind: .hnsw, parameters: parameters, kernels: Self.kernels)
        #expect(!c.recovery.snapshotLoaded && c.count == 0)
        #expect(c.recovery.problems.contains { $0.contains("shorter than the") }, "\(c.recovery)")
    }
}

@Suite struct PreparedSnapshotTests {
    static let kernels = try! DistanceKernels.forProcess.get()

    func open(_ dir: String) throws -> PersistentIndex {
        try PersistentIndex.open(directory: dir, dimension: 3, metric: .l2, kind: .flat, kernels: Self.kernels)
    }

    /// A prepared snapshot is not the snapshot until it commits; a newer one prepared first commits
    /// the older, and committing the older afterwards changes nothing.
    @Test func aPreparedSnapshotLandsOnlyWhenCommittedAndInOrder() throws {
        let dir = scratchDirectory()
        defer { removeTree(dir) }
        let a = try open(dir)
        try a.insert(label: 1, vector: [1, 0, 0])
        try a.checkpoint()
        try a.insert(label: 2, vector: [0, 1, 0])
        let first = try a.prepareCheckpoint(attachments: [("CAT", [1])])
        #expect(try open(dir).count == 1)  // as after a crash now: the last committed one
        #expect(a.unsaved == 1)
        try a.insert(label: 3, vector: [0, 0, 1])
        let second = try a.prepareCheckpoint(attachments: [("CAT", [2])])
        let between = try open(dir)  // the first, committed by the second's preparing
        #expect(between.count == 2 && between.attachments["CAT"] == [1])
        try first.commit()
        #expect(try open(dir).count == 2)
        try second.commit()
        let last = try open(dir)
        #expect(last.count == 3 && last.attachments["CAT"] == [2])
        #expect(a.unsaved == 0)
        #expect(access(dir + "/snapshot.tmp", F_OK) != 0)
    }
}

@Suite struct VectorFileChecksumTests {
    static let kernels = try! DistanceKernels.forProcess.get()

    func build(_ dir: String, rows: Int = 5000) throws -> (PersistentIndex, HNSWIndex, [[Float]]) {
        let data = clusteredSet(count: rows, dimension: 6, clusters: 10, seed: 71)
        let a = try PersistentIndex.open(directory: dir, dimension: 6, metric: .l2, kind: .hnsw,
                                         parameters: HNSWParameters(m: 6, efConstruction: 24), kernels: Self.kernels)
        try data.flatMap { $0 }.withUnsafeBufferPointer { (p) throws(IndexError) in
            try a.insert(batch: (0..<rows).map { UInt64($0) }, vectors: p, threads: 2)
        }
        try a.checkpoint()
        return (a, try #require(a.index.active as? HNSWIndex), data)
    }

    func reopen(_ dir: String) throws -> PersistentIndex {
        try PersistentIndex.open(directory: dir, dimension: 6, metric: .l2, kind: .hnsw,
                                 parameters: HNSWParameters(m: 6, efConstruction: 24), kernels: Self.kernels)
    }

    /// A bit flipped in a vector row (in either chunk) sets the snapshot aside: the index is then
    /// rebuilt from the files, never searched with a wrong vector.
    @Test(arguments: [17, 4100])
    func aDamagedVectorFileIsFound(_ row: Int) throws {
        let dir = scratchDirectory()
        defer { removeTree(dir) }
        let (_, graph, _) = try build(dir)
        flipBit(in: graph.vectors.path!, at: off_t(row * graph.vectors.stride + 5))
        let b = try reopen(dir)
        #expect(!b.recovery.snapshotLoaded && b.count == 0)
        #expect(b.recovery.problems.contains { $0.contains("do not match their checksum") }, "\(b.recovery)")
    }

    /// Rows added after a reopen extend the checksums: the next snapshot checks out too.
    @Test func checksumsCarryOnAcrossAReopen() throws {
        let dir = scratchDirectory()
        defer { removeTree(dir) }
        let (_, _, data) = try build(dir)
        let b = try reopen(dir)
        #expect(b.recovery.snapshotLoaded)
        for i in 0..<200 { try b.insert(label: UInt64(9000 + i), vector: data[i]) }
        b.index.absorb()
        try b.checkpoint()
        let c = try reopen(dir)
        #expect(c.recovery.snapshotLoaded && c.recovery.problems.isEmpty && c.count == 5200, "\(c.recovery)")
    }

    /// A snapshot from before checksums (its vector section names the file only) loads, and the
    /// sums are made from the file then.
    @Test func aSnapshotWithoutChecksumsLoadsAndGetsThem() throws {
        let dir = scratchDirectory()
        defer { removeTree(dir) }
        let (a, graph, _) = try build(dir)
        var sections = try readSnapshot(path: dir + "/snapshot")
        var name = ByteWriter()
        name.put(graph.vectors.name!)
        sections["VECF"] = name.bytes
        let w = try SnapshotWriter(path: dir + "/snapshot")
        var sink = w
        for (tag, bytes) in sections.sorted(by: { $0.key < $1.key }) { try sink.section(tag, bytes) }
        try w.finish()
        try w.commit()
        _ = a
        let b = try reopen(dir)
        #expect(b.recovery.snapshotLoaded && b.count == 5000, "\(b.recovery)")
        try b.checkpoint()
        let c = try reopen(dir)
        #expect(c.recovery.snapshotLoaded && c.recovery.problems.isEmpty, "\(c.recovery)")
    }
}

/// A snapshot adopted from another directory (a shared store's publication): answered from at once,
/// its vectors read there until copied and checked (`PersistentIndex.open(adoptingFrom:)`).
@Suite struct AdoptedSnapshotTests {
    static let kernels = try! DistanceKernels.forProcess.get()
    let checksums = VectorFileChecksumTests()

    func adopt(_ dir: String, from source: String) throws -> PersistentIndex {
        try PersistentIndex.open(directory: dir, dimension: 6, metric: .l2, kind: .hnsw,
                                 parameters: HNSWParameters(m: 6, efConstruction: 24), kernels: Self.kernels, adoptingFrom: source)
    }

    /// 10,000 rows: two chunks read in place, the last (partial) one copied at open. The answers are
    /// the owner's before and after the copy, rows added meanwhile stay, and once the copy is done
    /// a snapshot is due, written here, and opens here alone.
    @Test func anAdoptedSnapshotAnswersAtOnceAndLandsHereAfterItsCopy() throws {
        let source = scratchDirectory(), dir = scratchDirectory()
        defer { removeTree(source); removeTree(dir) }
        let (a, _, data) = try checksums.build(source, rows: 10_000)
        let answers = try data.prefix(30).map { try a.search($0, k: 10) }
        let b = try adopt(dir, from: source)
        #expect(b.recovery.snapshotLoaded && b.recovery.adopted && b.isAdopting, "\(b.recovery)")
        #expect(try data.prefix(30).map { try b.search($0, k: 10) } == answers)
        let sample = Array(stride(from: 0, to: 10_000, by: 97))
        #expect(sample.allSatisfy { b.vector(of: UInt64($0)) == data[$0] })
        #expect(throws: PersistenceError.self) { try b.checkpoint() }
        for i in 0..<100 { try b.insert(label: UInt64(20_000 + i), vector: data[i]) }
        #expect(try b.finishAdopting(giveUp: { false }))
        #expect(!b.isAdopting && b.unsaved >= b.count)
        #expect(sample.allSatisfy { b.vector(of: UInt64($0)) == data[$0] })
        b.index.absorb()
        try b.checkpoint()
        removeTree(source)
        let c = try checksums.reopen(dir)
        #expect(c.recovery.snapshotLoaded && c.recovery.problems.isEmpty && c.count == 10_100, "\(c.recovery)")
        #expect(sample.allSatisfy { c.vector(of: UInt64($0)) == data[$0] })
        #expect((0..<100).allSatisfy { c.vector(of: UInt64(20_000 + $0)) == data[$0] })
    }

    /// A row damaged in a chunk read in place is found by the copy's check (after answers may have
    /// been given): an error, never a snapshot written. One damaged in the last, partial chunk, or
    /// a damaged snapshot file, is found at open: the adopted snapshot is not used.
    @Test(arguments: [17, 9_000])
    func damageInTheAdoptedFilesIsFound(_ row: Int) throws {
        let source = scratchDirectory(), dir = scratchDirectory()
        defer { removeTree(source); removeTree(dir) }
        let (_, graph, _) = try checksums.build(source, rows: 10_000)
        flipBit(in: graph.vectors.path!, at: off_t(row * graph.vectors.stride + 5))
        let b = try adopt(dir, from: source)
        if row < 8192 {
            #expect(b.recovery.adopted && b.isAdopting)
            #expect(throws: PersistenceError.self) { _ = try b.finishAdopting(giveUp: { false }) }
            #expect(b.isAdopting)
            #expect(throws: PersistenceError.self) { try b.checkpoint() }
        } else {
            #expect(!b.recovery.adopted && !b.recovery.snapshotLoaded && b.count == 0)
            #expect(b.recovery.notAdopted?.rejection == .checksum, "\(b.recovery)")
        }
    }

    /// Stopped between chunks, the rest stays read in place and nothing is written here.
    @Test func aCopyGivenUpLeavesNoSnapshot() throws {
        let source = scratchDirectory(), dir = scratchDirectory()
        defer { removeTree(source); removeTree(dir) }
        _ = try checksums.build(source, rows: 10_000)
        let b = try adopt(dir, from: source)
        #expect(try !b.finishAdopting(giveUp: { true }))
        #expect(b.isAdopting && access(dir + "/snapshot", F_OK) != 0)
    }
}
