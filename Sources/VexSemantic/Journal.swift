import CCompress
import Glibc
import VexStore
import Synchronization
import VexIndex

/// The semantic event log (create, write-close, rename, unlink, setxattr, index, query), kept as
/// `JournalEvent` values in memory until a segment's worth has gathered, then written LZ4-compressed
/// to STORE/.vexfs/journal/NNNNNNNN.lz4. Bounded: the oldest segments are deleted past `maxSegments`.
/// It is a record of what happened, not state: nothing is rebuilt from it, and the events still in
/// memory at a crash are the only thing a crash costs it. Events become JSON lines only when read.
///
///     segment = raw-size:u32 crc32c(packed):u32 packed-bytes
///     raw     = "VXJ\0" version:u8 (event)*      (or, written before version 1, JSON lines)
public final class Journal: Sendable {
    let directory: String
    let segmentBytes: Int
    let maxSegments: Int
    /// false under `-o ro,norecovery`: the segments kept are shown, nothing is recorded or written.
    let records: Bool
    /// Events recorded since the mount: a view made at one count is the journal until the next.
    let recorded = Atomic<UInt64>(0)
    /// Guards the events not yet in a segment and the segment numbers on disk.
    private let buffer: Mutex<State>
    struct State {
        var events = ByteWriter()
        var segments: [UInt64] = []
        var persistedBytes = 0
        /// Bytes of this segment's events recorded for each asker other than root.
        var shares: [uid_t: Int] = [:]
        /// Events left out of this segment because their asker had their share.
        var unrecorded = 0
    }

    /// The part of a segment one asker other than root may fill: questions cost their asker
    /// nothing, and a flood of them must not push everyone's history out of the last segments.
    var askerShare: Int { segmentBytes / 8 }

    static let magic: [UInt8] = Array("VXJ\0".utf8) + [1]

    public init(directory: String, segmentBytes: Int = 256 << 10, maxSegments: Int = 32, records: Bool = true) {
        self.directory = directory
        self.segmentBytes = segmentBytes
        self.maxSegments = maxSegments
        self.records = records
        if records { mkdir(directory, 0o700) }
        var state = State()
        for name in ((try? StatePaths.entries(directory))?.files ?? []) where name.hasSuffix(".lz4") {
            if let n = UInt64(name.dropLast(4)) { state.segments.append(n) }
        }
        state.segments.sort()
        for n in state.segments { state.persistedBytes += Int((try? StatePaths.stat(Journal.path(directory, n)))?.st_size ?? 0) }
        buffer = Mutex(state)
    }

    static func path(_ directory: String, _ n: UInt64) -> String {
        var digits = String(n)
        while digits.count < 8 { digits = "0" + digits }
        return "\(directory)/\(digits).lz4"
    }

    /// Appends one event; one made by `asker` (other than root) only while they have not had their
    /// share of the segment (past it, it is counted, and the count recorded when the segment ends).
    public func record(_ event: JournalEvent, by asker: uid_t? = nil) {
        guard records else { return }
        recorded.add(1, ordering: .relaxed)
        buffer.withLock { s in
            let before = s.events.bytes.count
            event.encode(into: &s.events)
            if let asker, asker != 0 {
                let added = s.events.bytes.count - before
                guard s.shares[asker, default: 0] + added <= askerShare else {
                    s.events.bytes.removeLast(added)
                    s.unrecorded += 1
                    return
                }
                s.shares[asker, default: 0] += added
            }
            if s.events.bytes.count >= segmentBytes { persist(&s) }
        }
    }

    /// Appends one event now; `path` and `to` are relative to the store's root.
    public func record(_ kind: JournalEvent.Kind, _ path: FileName, to: FileName? = nil, detail: [String: String] = [:], by asker: uid_t? = nil) {
        record(JournalEvent(kind, path: path, to: to, detail: detail), by: asker)
    }

    /// Writes what is in memory as a segment (at unmount).
    public func flush() { if records { buffer.withLock { persist(&$0) } } }

    /// Every event still kept, oldest first.
    public func events() -> [JournalEvent] {
        buffer.withLock { s in
            var out: [JournalEvent] = []
            for n in s.segments {
                guard let file = try? readFile(Journal.path(directory, n)), file.count >= 8 else { continue }
                let raw = Int(file.withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) })
                let crc = file.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 4, as: UInt32.self) }
                guard raw <= 64 << 20, vx_crc32c(0, Array(file[8...]), file.count - 8) == crc else { continue }
                var bytes = [UInt8](repeating: 0, count: raw)
                let ok = file.withUnsafeBytes { f in
                    bytes.withUnsafeMutableBytes { vx_lz4_decompress(f.baseAddress! + 8, file.count - 8, $0.baseAddress, raw) == 0 }
                }
                if ok { out += Journal.decode(bytes) }
            }
            out += Journal.decode(Journal.magic + s.events.bytes)
            return out
        }
    }

    /// The events of one segment's raw bytes (those that decode: a damaged tail is dropped).
    static func decode(_ bytes: [UInt8]) -> [JournalEvent] {
        var out: [JournalEvent] = []
        guard bytes.starts(with: magic) else {
            // Written as JSON lines by a vexfs before events were values.
            var start = bytes.startIndex
            while start < bytes.endIndex {
                let end = bytes[start...].firstIndex(of: 0x0A) ?? bytes.endIndex
                if let e = JournalEvent.legacy(bytes[start..<end]) { out.append(e) }
                start = end + 1
            }
            return out
        }
        var r = ByteReader(Array(bytes.dropFirst(magic.count)))
        while r.remaining > 0 {
            do {
                // An event of a kind this vexfs does not know is passed over.
                if let e = try JournalEvent.decode(from: &r) { out.append(e) }
            } catch { break }
        }
        return out
    }

    /// Every event still kept, as JSON lines (what root reads in `.vexfs/journal`).
    public func contents() -> [UInt8] { JournalEvent.lines(events()) }

    /// Bytes on disk plus in memory.
    public var size: Int { buffer.withLock { $0.persistedBytes + $0.events.bytes.count } }

    private func persist(_ s: inout State) {
        if s.unrecorded > 0 {
            JournalEvent(.query, path: ".", detail: ["unrecorded": String(s.unrecorded)]).encode(into: &s.events)
        }
        s.unrecorded = 0
        s.shares = [:]
        guard !s.events.bytes.isEmpty else { return }
        let raw = Journal.magic + s.events.bytes
        var packed = [UInt8](repeating: 0, count: 8 + vx_lz4_bound(raw.count))
        let n = raw.withUnsafeBytes { src in
            packed.withUnsafeMutableBytes { vx_lz4_compress(src.baseAddress, src.count, $0.baseAddress! + 8, $0.count - 8) }
        }
        guard n > 0 else { return }
        packed.removeLast(packed.count - 8 - n)
        let crc = vx_crc32c(0, Array(packed[8...]), n)
        packed.withUnsafeMutableBytes { p in
            p.storeBytes(of: UInt32(raw.count).littleEndian, as: UInt32.self)
            p.storeBytes(of: crc.littleEndian, toByteOffset: 4, as: UInt32.self)
        }
        let number = (s.segments.last ?? 0) + 1
        let path = Journal.path(directory, number)
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { return }
        let written = write(fd, packed, packed.count)
        close(fd)
        guard written == packed.count else { unlink(path); return }
        s.segments.append(number)
        s.persistedBytes += packed.count
        s.events.bytes.removeAll(keepingCapacity: true)
        while s.segments.count > maxSegments {
            let old = Journal.path(directory, s.segments.removeFirst())
            s.persistedBytes -= Int((try? StatePaths.stat(old))?.st_size ?? 0)
            unlink(old)
        }
    }
}
