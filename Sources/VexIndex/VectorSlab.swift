import CCompress
import Glibc
import Synchronization

/// Where a graph keeps its float32 vectors.
public enum VectorStorage: Sendable, Equatable {
    /// In the process's memory (benchmarks, tests, indexes with no directory).
    case memory
    /// In a file of their own in `directory` (`vectors.ID`), mapped shared: the kernel pages them, so
    /// a big collection's vectors (read only to re-rank a search's last candidates, and to build)
    /// are in the page cache, not in the daemon's heap.
    case files(directory: String)
}

/// The float32 vectors of one graph, in chunks of `HNSWIndex.chunkNodes` rows that never move, each
/// row on its own cache lines. In a file, chunk c is bytes c·chunkBytes of it, and the first n rows
/// are exactly the graph's first n nodes: a snapshot records the file's name and node count, never
/// the vectors themselves, so each vector is written to disk once.
final class VectorSlab: @unchecked Sendable {
    let dimension: Int
    let stride: Int
    let chunkBytes: Int
    /// The file's name in its directory, and its path; nil in memory.
    let name: String?
    let path: String?
    private let fd: Int32
    private let bases: UnsafeMutablePointer<UnsafeMutableRawPointer?>
    /// Chunks made; only the graph's writer adds chunks.
    private let made = Atomic<Int>(0)
    /// Chunks written since they were last let go of (see `release`).
    private let dirty = Mutex<Range<Int>?>(nil)
    /// In a file: the CRC-32C of each chunk's rows written so far (each row's 4·dimension bytes, in
    /// node order), kept by the graph's writer as it writes them. A snapshot records them and a
    /// reopen checks the file against them: a vector file is derived data, and a damaged one would
    /// give wrong distances silently; found, the index is rebuilt from the store's files.
    private(set) var sums: [UInt32] = []

    private init(dimension: Int, file: (name: String, path: String, fd: Int32)?) {
        self.dimension = dimension
        stride = (4 * dimension + 63) / 64 * 64
        chunkBytes = HNSWIndex.chunkNodes * stride
        (name, path, fd) = file.map { ($0.name, $0.path, $0.fd) } ?? (nil, nil, -1)
        bases = .allocate(capacity: HNSWIndex.maxChunks)
        bases.initialize(repeating: nil, count: HNSWIndex.maxChunks)
    }

    /// An empty slab in memory.
    static func memory(dimension: Int) -> VectorSlab { VectorSlab(dimension: dimension, file: nil) }

    /// An empty slab in a new file of `directory`.
    static func newFile(dimension: Int, in directory: String) throws(PersistenceError) -> VectorSlab {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        var attempt = 0
        while true {
            let id = UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec) &+ UInt64(attempt)
            let name = "vectors.\(id)", path = directory + "/" + name
            let fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0o600)
            if fd >= 0 { return VectorSlab(dimension: dimension, file: (name, path, fd)) }
            if errno != EEXIST || attempt > 1000 { throw .io(path: path, errno: errno) }
            attempt += 1
        }
    }

    /// The slab in the file `name` of `directory`, holding `nodes` rows (a snapshot's).
    ///
    /// With `sums` (a snapshot's), the first `nodes` rows are read and checked against them.
    static func existing(dimension: Int, directory: String, name: String, nodes: Int, sums: [UInt32]?) throws(PersistenceError) -> VectorSlab {
        let path = directory + "/" + name
        guard name.hasPrefix("vectors."), !name.contains("/") else { throw .corrupt(path: path, reason: "not a vector file's name") }
        let fd = open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW)
        guard fd >= 0 else { throw .io(path: path, errno: errno) }
        let slab = VectorSlab(dimension: dimension, file: (name, path, fd))
        var st = stat()
        let chunks = (nodes + HNSWIndex.chunkNodes - 1) / HNSWIndex.chunkNodes
        guard fstat(fd, &st) == 0, Int(st.st_size) >= chunks * slab.chunkBytes else {
            throw .corrupt(path: path, reason: "shorter than the \(nodes) vectors the snapshot names", kind: .short)
        }
        for c in 0..<chunks { try slab.makeChunk(c) }
        // Read once: checked against the snapshot's sums, or (a snapshot from before them) summed.
        guard sums == nil || sums!.count == chunks else { throw .corrupt(path: path, reason: "the snapshot's checksums do not fit the vector file") }
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: slab.chunkBytes, alignment: 64)
        defer { buffer.deallocate() }
        for c in 0..<chunks {
            let rows = min(HNSWIndex.chunkNodes, nodes - c * HNSWIndex.chunkNodes)
            guard slab.readRows(c * HNSWIndex.chunkNodes, rows, into: buffer) else { throw .io(path: path, errno: errno) }
            var crc: UInt32 = 0
            for r in 0..<rows { crc = vx_crc32c(crc, buffer + r * slab.stride, 4 * dimension) }
            if let sums, crc != sums[c] {
                throw .corrupt(path: path, reason: "vectors \(c * HNSWIndex.chunkNodes) to \(c * HNSWIndex.chunkNodes + rows - 1) do not match their checksum", kind: .checksum)
            }
            slab.sums[c] = crc
        }
        // What the check read need not stay in the page cache.
        posix_fadvise(fd, 0, off_t(chunks * slab.chunkBytes), POSIX_FADV_DONTNEED)
        return slab
    }

    deinit {
        for c in 0..<made.load(ordering: .acquiring) {
            if fd >= 0 { munmap(bases[c], chunkBytes) } else { free(bases[c]) }
        }
        bases.deallocate()
        if fd >= 0 { close(fd) }
    }

    var isFile: Bool { fd >= 0 }

    /// Up to this size a vector file is read through its map (what is touched stays resident: at
    /// most this much); past it, rows are read with pread, which leaves nothing resident but costs
    /// a system call per row.
    static let mappedReadBytes = 256 << 20

    /// Whether searches read rows through the map (memory, or a small file).
    var mappedReads: Bool { fd < 0 || chunks * chunkBytes <= VectorSlab.mappedReadBytes }
    var chunks: Int { made.load(ordering: .acquiring) }

    /// Row `node`; its chunk exists.
    @inline(__always) func row(_ node: UInt32) -> UnsafeMutablePointer<Float> {
        (bases[Int(node >> UInt32(HNSWIndex.chunkShift))].unsafelyUnwrapped + Int(node & UInt32(HNSWIndex.chunkNodes - 1)) * stride)
            .assumingMemoryBound(to: Float.self)
    }

    /// Copies row `node` of the file into `buffer` (a read, not a touch of the map); false if the
    /// read failed (the caller then reads the map).
    func read(_ node: UInt32, into buffer: UnsafeMutablePointer<Float>) -> Bool {
        pread(fd, buffer, 4 * dimension, off_t(Int(node) * stride)) == 4 * dimension
    }

    /// Copies rows `first ..< first + count` (at `stride` bytes each) into `buffer`; false if the
    /// read failed.
    func readRows(_ first: Int, _ count: Int, into buffer: UnsafeMutableRawPointer) -> Bool {
        var done = 0
        let total = count * stride
        while done < total {
            let n = pread(fd, buffer + done, total - done, off_t(first * stride + done))
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return false }
            done += n
        }
        return true
    }

    /// Makes chunk `c` (the next one). In a file: grows the file and maps the new stretch.
    func makeChunk(_ c: Int) throws(PersistenceError) {
        precondition(c == made.load(ordering: .relaxed))
        if fd < 0 {
            let memory = UnsafeMutableRawPointer(aligned_alloc(64, chunkBytes))!
            memset(memory, 0, chunkBytes)
            bases[c] = memory
        } else {
            // Blocks reserved now, not on first write: a full disk is this error, never a SIGBUS
            // when a mapped page is written.
            let e = posix_fallocate(fd, off_t(c * chunkBytes), off_t(chunkBytes))
            if e != 0 { throw .io(path: path!, errno: e) }
            let p = mmap(nil, chunkBytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, off_t(c * chunkBytes))
            guard let p, p != MAP_FAILED else { throw .io(path: path!, errno: errno) }
            bases[c] = p
        }
        if fd >= 0 && sums.count == c { sums.append(0) }
        made.store(c + 1, ordering: .releasing)
        // Past the size where searches read through the map: let go of what they touched.
        if fd >= 0 && c * chunkBytes <= VectorSlab.mappedReadBytes && (c + 1) * chunkBytes > VectorSlab.mappedReadBytes { releaseAll() }
    }

    /// Adds row `node`, just written, to its chunk's checksum (rows are written in node order).
    @inline(__always) func summed(_ node: UInt32) {
        guard fd >= 0 else { return }
        let c = Int(node >> UInt32(HNSWIndex.chunkShift))
        sums[c] = vx_crc32c(sums[c], row(node), 4 * dimension)
    }

    /// Notes that rows of chunks `range` were written.
    func wrote(chunks range: Range<Int>) {
        guard fd >= 0 else { return }
        dirty.withLock { d in d = d.map { min($0.lowerBound, range.lowerBound)..<max($0.upperBound, range.upperBound) } ?? range }
    }

    /// Lets go of the pages written since the last call: they stay in the file and the page cache
    /// (written back by the kernel), out of this process's resident set. Searches fault back in only
    /// the rows they re-rank.
    func release() {
        guard fd >= 0, let range = dirty.withLock({ d in defer { d = nil }; return d }) else { return }
        for c in range { madvise(bases[c], chunkBytes, MADV_DONTNEED) }
    }

    /// Lets go of every page of the file from the resident set (after a scan of every vector).
    func releaseAll() {
        guard fd >= 0 else { return }
        dirty.withLock { $0 = nil }
        for c in 0..<chunks { madvise(bases[c], chunkBytes, MADV_DONTNEED) }
    }

    /// Makes every row written so far durable (before a snapshot names them).
    func sync() throws(PersistenceError) {
        guard fd >= 0 else { return }
        if fdatasync(fd) != 0 { throw .io(path: path!, errno: errno) }
    }
}
