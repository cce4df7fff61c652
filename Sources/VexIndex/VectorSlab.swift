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
    /// A slab adopted from another directory's file (`adopting`): that file's descriptor, read for
    /// the chunks below `remoteEnd` from `copied` on; -1 otherwise. Once every chunk is copied it
    /// is made a second descriptor of this slab's own file (dup2), so a reader that chose it just
    /// before reads the same rows from here.
    private var remoteFD: Int32 = -1
    private var remoteEnd = 0
    /// Chunks below this are copied into this slab's file, checked, and mapped from it.
    private let copied = Atomic<Int>(0)
    /// The checksums the remote chunks are checked against (the writer may append to `sums`).
    private var remoteSums: [UInt32] = []
    /// Set once the remote descriptor was made one of this file's (by `copyRemaining`'s caller only).
    private var switched = false

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

    /// A slab whose first `nodes` rows are those of the file `name` in `source` (another mount's
    /// published snapshot, on the distributed filesystem), answering at once: the chunks wholly
    /// below `nodes` are mapped read-only from that file and read there, the last partial one (which
    /// the writer may still add rows to) is copied and checked now, and `copyRemaining` copies the
    /// rest into `directory`'s file of the same name, checking each chunk against `sums`, and maps
    /// it from there in place of the remote one. Nothing writes a row below `nodes` (new nodes get
    /// new rows), so the two mappings hold the same bytes, and a search reading a row while its
    /// chunk switches over reads the same vector from either. The owner publishes by renaming
    /// whole new files over the old names: the file opened here stays as it was.
    static func adopting(dimension: Int, source: String, name: String, into directory: String, nodes: Int,
                         sums: [UInt32]) throws(PersistenceError) -> VectorSlab {
        let remotePath = source + "/" + name, path = directory + "/" + name
        guard name.hasPrefix("vectors."), !name.contains("/") else { throw .corrupt(path: remotePath, reason: "not a vector file's name") }
        let remote = open(remotePath, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        guard remote >= 0 else { throw .io(path: remotePath, errno: errno) }
        // An earlier copy cut short by a crash: no snapshot names it any more.
        unlink(path)
        let fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else { let e = errno; close(remote); throw .io(path: path, errno: e) }
        let slab = VectorSlab(dimension: dimension, file: (name, path, fd))
        slab.remoteFD = remote
        let chunks = (nodes + HNSWIndex.chunkNodes - 1) / HNSWIndex.chunkNodes
        var st = stat()
        guard fstat(remote, &st) == 0, st.st_mode & S_IFMT == S_IFREG, Int(st.st_size) >= chunks * slab.chunkBytes else {
            throw .corrupt(path: remotePath, reason: "shorter than the \(nodes) vectors the snapshot names", kind: .short)
        }
        guard sums.count == chunks else { throw .corrupt(path: remotePath, reason: "the snapshot's checksums do not fit the vector file") }
        slab.sums = sums
        slab.remoteSums = sums
        slab.remoteEnd = nodes / HNSWIndex.chunkNodes
        for c in 0..<chunks {
            // This mount's blocks are reserved now, for the copy and for rows added later.
            let e = posix_fallocate(fd, off_t(c * slab.chunkBytes), off_t(slab.chunkBytes))
            if e != 0 { throw .io(path: path, errno: e) }
            let remoteChunk = c < slab.remoteEnd
            let p = mmap(nil, slab.chunkBytes, remoteChunk ? PROT_READ : PROT_READ | PROT_WRITE, remoteChunk ? MAP_PRIVATE : MAP_SHARED,
                         remoteChunk ? remote : fd, off_t(c * slab.chunkBytes))
            guard let p, p != MAP_FAILED else { throw .io(path: remoteChunk ? remotePath : path, errno: errno) }
            slab.bases[c] = p
            slab.made.store(c + 1, ordering: .releasing)
        }
        if slab.remoteEnd < chunks { try slab.copy(chunk: slab.remoteEnd, rows: nodes - slab.remoteEnd * HNSWIndex.chunkNodes, remap: false) }
        return slab
    }

    /// Whether chunks are still read from another mount's file (see `adopting`).
    var isAdopting: Bool { copied.load(ordering: .acquiring) < remoteEnd }

    /// Copies the chunks still read from the remote file into this slab's own, checking each against
    /// its checksum, and maps each from here as it is done; returns false when `giveUp` said so
    /// between chunks (the rest stays remote). A chunk that fails its checksum, or cannot be read,
    /// is an error: the caller's index answered from damaged vectors and must be rebuilt.
    func copyRemaining(giveUp: () -> Bool) throws(PersistenceError) -> Bool {
        while copied.load(ordering: .acquiring) < remoteEnd {
            if giveUp() { return false }
            try copy(chunk: copied.load(ordering: .acquiring), rows: HNSWIndex.chunkNodes, remap: true)
        }
        guard remoteFD >= 0, !switched else { return true }
        if fdatasync(fd) != 0 { throw .io(path: path!, errno: errno) }
        // A reader that chose the remote descriptor a moment ago now reads this file (the same rows),
        // and the remote file is let go of.
        if dup2(fd, remoteFD) < 0 { throw .io(path: path!, errno: errno) }
        switched = true
        return true
    }

    /// Copies chunk `c`'s first `rows` rows from the remote file into this one and checks them;
    /// with `remap` (a remote chunk), then maps the chunk from this file over the remote mapping
    /// (MAP_FIXED replaces it at the same address at once: a search never sees it unmapped) and
    /// counts it copied.
    private func copy(chunk c: Int, rows: Int, remap: Bool) throws(PersistenceError) {
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: chunkBytes, alignment: 64)
        defer { buffer.deallocate() }
        let first = c * HNSWIndex.chunkNodes, bytes = rows * stride, at = off_t(c * chunkBytes)
        guard VectorSlab.readAll(remoteFD, buffer, bytes, at) else { throw .io(path: path!, errno: errno == 0 ? EIO : errno) }
        var crc: UInt32 = 0
        for r in 0..<rows { crc = vx_crc32c(crc, buffer + r * stride, 4 * dimension) }
        guard crc == remoteSums[c] else {
            throw .corrupt(path: path!, reason: "vectors \(first) to \(first + rows - 1) of the adopted snapshot do not match their checksum", kind: .checksum)
        }
        var done = 0
        while done < bytes {
            let n = pwrite(fd, buffer + done, bytes - done, at + off_t(done))
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw .io(path: path!, errno: errno) }
            done += n
        }
        // The remote file's pages are not needed again here.
        posix_fadvise(remoteFD, at, off_t(bytes), POSIX_FADV_DONTNEED)
        guard remap else { return }
        let p = mmap(bases[c], chunkBytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, at)
        guard let p, p != MAP_FAILED, p == bases[c] else { throw .io(path: path!, errno: errno) }
        copied.store(c + 1, ordering: .releasing)
    }

    /// `count` bytes of `fd` at `offset` into `buffer`; false on an error or a short file.
    private static func readAll(_ fd: Int32, _ buffer: UnsafeMutableRawPointer, _ count: Int, _ offset: off_t) -> Bool {
        var done = 0
        while done < count {
            let n = pread(fd, buffer + done, count - done, offset + off_t(done))
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { if n == 0 { errno = EIO }; return false }
            done += n
        }
        return true
    }

    /// The descriptor that holds chunk `c`'s rows now: the remote file's until the chunk is copied.
    @inline(__always) private func descriptor(chunk c: Int) -> Int32 {
        c < remoteEnd && c >= copied.load(ordering: .acquiring) ? remoteFD : fd
    }

    deinit {
        for c in 0..<made.load(ordering: .acquiring) {
            if fd >= 0 { munmap(bases[c], chunkBytes) } else { free(bases[c]) }
        }
        bases.deallocate()
        if fd >= 0 { close(fd) }
        if remoteFD >= 0 { close(remoteFD) }
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
        pread(descriptor(chunk: Int(node) >> HNSWIndex.chunkShift), buffer, 4 * dimension, off_t(Int(node) * stride)) == 4 * dimension
    }

    /// Copies rows `first ..< first + count` (at `stride` bytes each) into `buffer`; false if the
    /// read failed.
    func readRows(_ first: Int, _ count: Int, into buffer: UnsafeMutableRawPointer) -> Bool {
        // A chunk at a time: an adopted slab's chunks may be in two files.
        var row = first
        while row < first + count {
            let c = row >> HNSWIndex.chunkShift, rows = min(first + count, (c + 1) * HNSWIndex.chunkNodes) - row
            guard VectorSlab.readAll(descriptor(chunk: c), buffer + (row - first) * stride, rows * stride, off_t(row * stride)) else { return false }
            row += rows
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
