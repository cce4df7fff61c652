import CCompress
import Glibc

/// Why a snapshot could not be used. The index is derived data, so the owner's answer to any of
/// these is to rebuild from the files, never to stop.
public enum PersistenceError: Error, Equatable, CustomStringConvertible {
    case io(path: String, errno: Int32)
    case corrupt(path: String, reason: String, kind: SnapshotRejection = .inconsistent)

    public var description: String {
        switch self {
        case .io(let path, let e): "\(path): \(String(cString: strerror(e)))"
        case .corrupt(let path, let reason, _): "\(path): \(reason)"
        }
    }

    /// What is wrong, without the path (for users of the mount, who need not learn the store's).
    public var reason: String {
        switch self {
        case .io(_, let e): String(cString: strerror(e))
        case .corrupt(_, let reason, _): reason
        }
    }

    /// The kind of damage, for counting.
    public var rejection: SnapshotRejection {
        switch self {
        case .io: .unreadable
        case .corrupt(_, _, let kind): kind
        }
    }
}

/// Why a snapshot (or the catalog stored in it) was set aside: the `reason` of
/// `vexfs_snapshot_rejected_total`. The collection is then rebuilt from its files.
public enum SnapshotRejection: String, Sendable, CaseIterable {
    /// It ends inside a section.
    case short
    /// A piece fails its checksum, or does not decompress to its size.
    case checksum
    /// Its sections, or its vector file, do not fit together.
    case inconsistent
    /// Reading it would take more memory than the machine should give one index.
    case tooLarge = "too_large"
    /// Written by a newer vexfs (or not a snapshot at all).
    case version
    /// For another dimension or metric than the collection has now.
    case settings
    /// The file could not be read (an I/O error, a permission).
    case unreadable
    /// The catalog of files stored with the index is damaged or disagrees with it.
    case catalog
}

/// Bytes appended to a growing buffer; the encoding of snapshots and journal segments (little-endian).
public struct ByteWriter {
    public var bytes: [UInt8] = []
    public init() {}
    public mutating func put<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    public mutating func put(_ v: Float) { put(v.bitPattern) }
    public mutating func put(_ raw: UnsafeRawBufferPointer) { bytes.append(contentsOf: raw) }
    /// A length-prefixed UTF-8 string.
    public mutating func put(_ s: String) {
        let utf8 = Array(s.utf8)
        put(UInt32(utf8.count))
        bytes.append(contentsOf: utf8)
    }
}

/// Reads what ByteWriter wrote; every read is bounds-checked, so damage is an error, not a crash.
public struct ByteReader {
    let bytes: [UInt8]
    var offset = 0
    public init(_ bytes: [UInt8]) { self.bytes = bytes }
    public var remaining: Int { bytes.count - offset }

    public mutating func getString() throws(ByteReader.Short) -> String {
        let n = Int(try get(UInt32.self))
        guard n <= remaining else { throw Short() }
        defer { offset += n }
        return String(decoding: bytes[offset..<(offset + n)], as: UTF8.self)
    }

    /// Length-prefixed bytes, as `getString` reads them but not decoded.
    public mutating func getBytes() throws(ByteReader.Short) -> [UInt8] {
        let n = Int(try get(UInt32.self))
        guard n <= remaining else { throw Short() }
        defer { offset += n }
        return Array(bytes[offset..<(offset + n)])
    }

    public mutating func get<T: FixedWidthInteger>(_: T.Type) throws(ByteReader.Short) -> T {
        guard remaining >= MemoryLayout<T>.size else { throw Short() }
        var v: T = 0
        withUnsafeMutableBytes(of: &v) { dst in bytes.withUnsafeBytes { dst.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[offset..<offset + MemoryLayout<T>.size])) } }
        offset += MemoryLayout<T>.size
        return T(littleEndian: v)
    }
    public mutating func getFloat() throws(ByteReader.Short) -> Float { Float(bitPattern: try get(UInt32.self)) }
    mutating func copy(_ count: Int, to dst: UnsafeMutableRawPointer) throws(ByteReader.Short) {
        guard count >= 0, remaining >= count else { throw Short() }
        bytes.withUnsafeBytes { dst.copyMemory(from: $0.baseAddress! + offset, byteCount: count) }
        offset += count
    }
    public struct Short: Error { public init() {} }
}

/// Where an index writes its snapshot sections: the snapshot file, or memory (tests compare images).
protocol SectionSink {
    /// One section made of `parts` laid end to end.
    mutating func section(_ tag: String, _ parts: [UnsafeRawBufferPointer]) throws(PersistenceError)
    /// A vector file the sections name: durable before the snapshot is.
    mutating func names(_ slab: VectorSlab) throws(PersistenceError)
}

extension SectionSink {
    mutating func section(_ tag: String, _ data: [UInt8]) throws(PersistenceError) {
        let result = data.withUnsafeBytes { raw in Result { () throws(PersistenceError) in try section(tag, [raw]) } }
        try result.get()
    }
}

/// Sections kept in memory, by tag.
struct SectionCollector: SectionSink {
    var sections: [(String, [UInt8])] = []
    mutating func section(_ tag: String, _ parts: [UnsafeRawBufferPointer]) throws(PersistenceError) {
        var whole: [UInt8] = []
        for p in parts { whole.append(contentsOf: p) }
        sections.append((tag, whole))
    }
    mutating func names(_ slab: VectorSlab) throws(PersistenceError) { try slab.sync() }
}

/// A snapshot: a header, then named sections, each cut into pieces of at most 4 MiB that are
/// LZ4-compressed and checksummed (CRC-32C) on their own. Written piece by piece to `NAME.tmp` (so a
/// section is never copied whole: a graph's blocks are written straight from its chunks), fsynced,
/// renamed over NAME and the directory fsynced, so a crash leaves either the old snapshot or the new
/// one whole.
///
///     file    = "VEXSNAP1" section* end
///     section = tag:u32 pieces:u32 piece*          end = tag 0
///     piece   = raw:u32 packed:u32 crc32c(packed):u32 packed-bytes
final class SnapshotWriter: SectionSink {
    static let magic: [UInt8] = Array("VEXSNAP1".utf8)
    static let pieceSize = 4 << 20
    let path: String
    private var tmp: String { path + ".tmp" }
    private var fd: Int32
    private var staging = [UInt8](repeating: 0, count: SnapshotWriter.pieceSize)
    private var packed = [UInt8](repeating: 0, count: Int(vx_lz4_bound(SnapshotWriter.pieceSize)))
    /// Vector files the snapshot names, synced at commit.
    private(set) var named: [VectorSlab] = []

    init(path: String) throws(PersistenceError) {
        self.path = path
        fd = open(path + ".tmp", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw .io(path: path + ".tmp", errno: errno) }
        try put(SnapshotWriter.magic)
    }

    /// An unfinished snapshot is removed, never renamed into place.
    deinit {
        if fd >= 0 {
            close(fd)
            unlink(tmp)
        }
    }

    private func put(_ bytes: UnsafeRawBufferPointer) throws(PersistenceError) {
        var done = 0
        while done < bytes.count {
            let n = write(fd, bytes.baseAddress! + done, bytes.count - done)
            if n < 0 {
                if errno == EINTR { continue }
                throw .io(path: tmp, errno: errno)
            }
            done += n
        }
    }

    private func put(_ bytes: [UInt8]) throws(PersistenceError) {
        let result = bytes.withUnsafeBytes { raw in Result { () throws(PersistenceError) in try put(raw) } }
        try result.get()
    }

    func section(_ tag: String, _ parts: [UnsafeRawBufferPointer]) throws(PersistenceError) {
        let total = parts.reduce(0) { $0 + $1.count }
        let pieces = (total + SnapshotWriter.pieceSize - 1) / SnapshotWriter.pieceSize
        var w = ByteWriter()
        w.put(fourCC(tag))
        w.put(UInt32(pieces))
        try put(w.bytes)
        var part = 0, offset = 0
        for _ in 0..<pieces {
            // Gather the next piece from the parts into the staging buffer.
            var filled = 0
            staging.withUnsafeMutableBytes { stage in
                while filled < SnapshotWriter.pieceSize && part < parts.count {
                    let n = min(SnapshotWriter.pieceSize - filled, parts[part].count - offset)
                    if n > 0 { stage.baseAddress!.advanced(by: filled).copyMemory(from: parts[part].baseAddress! + offset, byteCount: n) }
                    filled += n
                    offset += n
                    if offset == parts[part].count { part += 1; offset = 0 }
                }
            }
            let size = staging.withUnsafeBytes { stage in
                packed.withUnsafeMutableBytes { vx_lz4_compress(stage.baseAddress, filled, $0.baseAddress, $0.count) }
            }
            guard size > 0 else { throw .corrupt(path: tmp, reason: "LZ4 refused a piece") }
            var h = ByteWriter()
            h.put(UInt32(filled)); h.put(UInt32(size)); h.put(packed.withUnsafeBytes { vx_crc32c(0, $0.baseAddress, Int(size)) })
            try put(h.bytes)
            let result = packed.withUnsafeBytes { raw in Result { () throws(PersistenceError) in try put(UnsafeRawBufferPointer(rebasing: raw[0..<Int(size)])) } }
            try result.get()
        }
    }

    func names(_ slab: VectorSlab) { named.append(slab) }

    /// Ends the file; it is complete but not yet durable or in place.
    func finish() throws(PersistenceError) {
        try put([0, 0, 0, 0])
    }

    /// Makes the vector files it names and the file durable, and puts it in place (after `finish`).
    func commit() throws(PersistenceError) {
        for slab in named { try slab.sync() }
        let synced = fsync(fd) == 0 ? nil : errno
        close(fd)
        fd = -1
        if let synced { unlink(tmp); throw .io(path: tmp, errno: synced) }
        guard rename(tmp, path) == 0 else { let e = errno; unlink(tmp); throw .io(path: path, errno: e) }
        try syncDirectory(of: path)
    }
}

/// The most memory one snapshot may take to read (its file and its sections decompressed): half the
/// machine's. A snapshot past it is set aside and its collection rebuilt, never read into a crash.
public let snapshotMemoryLimit: Int = {
    let pages = sysconf(Int32(_SC_PHYS_PAGES)), size = sysconf(Int32(_SC_PAGESIZE))
    guard pages > 0, size > 0 else { return 1 << 30 }
    let (bytes, overflow) = pages.multipliedReportingOverflow(by: size)
    return overflow ? Int.max / 2 : bytes / 2
}()

/// Reads a snapshot whole and checks every piece; sections come back decompressed, by tag.
func readSnapshot(path: String, memoryLimit: Int = snapshotMemoryLimit) throws(PersistenceError) -> [String: [UInt8]] {
    let file = try readFile(path, limit: memoryLimit)
    return try parseSnapshot(file, path: path, memoryLimit: memoryLimit)
}

/// The sections of a snapshot's bytes, each piece checked. Every size in it is checked against the
/// bytes that are there and against `memoryLimit` before anything is allocated for it.
public func parseSnapshot(_ file: [UInt8], path: String, memoryLimit: Int = snapshotMemoryLimit) throws(PersistenceError) -> [String: [UInt8]] {
    let magic = SnapshotWriter.magic
    guard file.count >= magic.count, Array(file[0..<magic.count]) == magic else {
        if file.count >= magic.count, Array(file[0..<(magic.count - 1)]) == Array(magic.dropLast()) {
            let version = String(decoding: [file[magic.count - 1]], as: UTF8.self)
            throw .corrupt(path: path, reason: "written by a newer vexfs (snapshot format \(version.debugDescription)); this one reads format 1", kind: .version)
        }
        throw .corrupt(path: path, reason: "not a vexfs snapshot", kind: .version)
    }
    var r = ByteReader(file)
    r.offset = magic.count
    var sections: [String: [UInt8]] = [:]
    var total = file.count
    do {
        while true {
            let tag = try r.get(UInt32.self)
            if tag == 0 { break }
            let pieces = Int(try r.get(UInt32.self))
            // Each piece takes 12 bytes of header at least: a count the file cannot hold is damage.
            guard pieces <= r.remaining / 12 else { throw ByteReader.Short() }
            var data: [UInt8] = []
            for _ in 0..<pieces {
                let raw = Int(try r.get(UInt32.self)), size = Int(try r.get(UInt32.self)), crc = try r.get(UInt32.self)
                guard size <= r.remaining else { throw ByteReader.Short() }
                guard raw <= SnapshotWriter.pieceSize else {
                    throw PersistenceError.corrupt(path: path, reason: "section \(fourCCName(tag)) has a piece of \(raw) bytes", kind: .inconsistent)
                }
                total += raw
                guard total <= memoryLimit else {
                    throw PersistenceError.corrupt(path: path, reason: "its sections take more than \(memoryLimit >> 20) MiB to read", kind: .tooLarge)
                }
                let start = r.offset
                let ok = file.withUnsafeBytes { all -> Bool in
                    guard vx_crc32c(0, all.baseAddress! + start, size) == crc else { return false }
                    let at = data.count
                    data.append(contentsOf: repeatElement(0, count: raw))
                    return data.withUnsafeMutableBytes { vx_lz4_decompress(all.baseAddress! + start, size, $0.baseAddress! + at, raw) == 0 }
                }
                guard ok else { throw PersistenceError.corrupt(path: path, reason: "section \(fourCCName(tag)) fails its checksum", kind: .checksum) }
                r.offset += size
            }
            guard sections[fourCCName(tag)] == nil else {
                throw PersistenceError.corrupt(path: path, reason: "section \(fourCCName(tag)) appears twice", kind: .inconsistent)
            }
            sections[fourCCName(tag)] = data
        }
    } catch let e as PersistenceError {
        throw e
    } catch {
        throw .corrupt(path: path, reason: "ends inside a section", kind: .short)
    }
    guard r.remaining == 0 else { throw .corrupt(path: path, reason: "\(r.remaining) bytes follow its end", kind: .inconsistent) }
    return sections
}

func fourCC(_ s: String) -> UInt32 {
    var v: UInt32 = 0
    for (i, b) in s.utf8.prefix(4).enumerated() { v |= UInt32(b) << (8 * UInt32(i)) }
    return v
}

func fourCCName(_ v: UInt32) -> String {
    String(decoding: (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) }.filter { $0 != 0 }, as: UTF8.self)
}

/// The whole of the file at `path`, as it is now; a file past `limit` bytes is refused unread.
public func readFile(_ path: String, limit: Int = Int.max) throws(PersistenceError) -> [UInt8] {
    let fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
    guard fd >= 0 else { throw .io(path: path, errno: errno) }
    defer { close(fd) }
    var st = stat()
    guard fstat(fd, &st) == 0 else { throw .io(path: path, errno: errno) }
    guard st.st_mode & S_IFMT == S_IFREG else { throw .corrupt(path: path, reason: "not a regular file", kind: .inconsistent) }
    guard st.st_size <= limit else { throw .corrupt(path: path, reason: "\(st.st_size >> 20) MiB is more than \(limit >> 20) MiB to read", kind: .tooLarge) }
    var bytes = [UInt8](repeating: 0, count: Int(st.st_size))
    var done = 0
    let failure: Int32? = bytes.withUnsafeMutableBytes { buf in
        while done < buf.count {
            let n = read(fd, buf.baseAddress! + done, buf.count - done)
            if n < 0 { if errno == EINTR { continue }; return errno }
            if n == 0 { break }
            done += n
        }
        return nil
    }
    if let failure { throw .io(path: path, errno: failure) }
    bytes.removeLast(bytes.count - done)
    return bytes
}

/// fsync of the directory holding `path`, so a rename or a new file survives a crash.
func syncDirectory(of path: String) throws(PersistenceError) {
    let dir = path.lastIndex(of: "/").map { String(path[..<$0]) } ?? "."
    let fd = open(dir.isEmpty ? "/" : dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    guard fd >= 0 else { throw .io(path: dir, errno: errno) }
    defer { close(fd) }
    guard fsync(fd) == 0 else { throw .io(path: dir, errno: errno) }
}
