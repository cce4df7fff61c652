import CCompress
import Glibc
import Synchronization
import VexIndex

/// The semantic event log: one JSON object a line (create, write-close, rename, unlink, setxattr,
/// index, query), kept in memory until a segment's worth has gathered, then written LZ4-compressed
/// to STORE/.vexfs/journal/NNNNNNNN.lz4. Bounded: the oldest segments are deleted past `maxSegments`.
/// It is a record of what happened, not state: nothing is rebuilt from it, and the lines still in
/// memory at a crash are the only thing a crash costs it.
///
///     segment = raw-size:u32 crc32c(packed):u32 packed-bytes
public final class Journal: Sendable {
    let directory: String
    let segmentBytes: Int
    let maxSegments: Int
    /// Guards the lines not yet in a segment and the segment numbers on disk.
    private let buffer: Mutex<State>
    struct State {
        var lines: [UInt8] = []
        var segments: [UInt64] = []
        var persistedBytes = 0
    }

    public init(directory: String, segmentBytes: Int = 256 << 10, maxSegments: Int = 32) {
        self.directory = directory
        self.segmentBytes = segmentBytes
        self.maxSegments = maxSegments
        mkdir(directory, 0o700)
        var state = State()
        for name in listFiles(directory) where name.hasSuffix(".lz4") {
            if let n = UInt64(name.dropLast(4)) { state.segments.append(n) }
        }
        state.segments.sort()
        for n in state.segments { state.persistedBytes += Int(statFile(Journal.path(directory, n))?.st_size ?? 0) }
        buffer = Mutex(state)
    }

    static func path(_ directory: String, _ n: UInt64) -> String {
        var digits = String(n)
        while digits.count < 8 { digits = "0" + digits }
        return "\(directory)/\(digits).lz4"
    }

    /// Appends one event. `path` is relative to the mount's root.
    public func record(_ event: String, path: String, detail: [String: String] = [:], to: String? = nil) {
        var t = timespec()
        clock_gettime(CLOCK_REALTIME, &t)
        var line = "{\"time\":\(t.tv_sec).\(String(format3: Int(t.tv_nsec) / 1_000_000)),\"event\":\"\(event)\",\"path\":\(jsonString(path))"
        if let to { line += ",\"to\":\(jsonString(to))" }
        for (k, v) in detail.sorted(by: { $0.key < $1.key }) { line += ",\(jsonString(k)):\(jsonString(v))" }
        line += "}\n"
        buffer.withLock { s in
            s.lines.append(contentsOf: line.utf8)
            if s.lines.count >= segmentBytes { persist(&s) }
        }
    }

    /// Writes what is in memory as a segment (at unmount).
    public func flush() { buffer.withLock { persist(&$0) } }

    /// Every line still kept, oldest first (what `.vexfs/journal` shows).
    public func contents() -> [UInt8] {
        buffer.withLock { s in
            var out: [UInt8] = []
            for n in s.segments {
                guard let file = try? readFile(Journal.path(directory, n)), file.count >= 8 else { continue }
                let raw = Int(file.withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) })
                let crc = file.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 4, as: UInt32.self) }
                guard raw <= 64 << 20, vx_crc32c(0, Array(file[8...]), file.count - 8) == crc else { continue }
                var text = [UInt8](repeating: 0, count: raw)
                let ok = file.withUnsafeBytes { f in
                    text.withUnsafeMutableBytes { vx_lz4_decompress(f.baseAddress! + 8, file.count - 8, $0.baseAddress, raw) == 0 }
                }
                if ok { out.append(contentsOf: text) }
            }
            out.append(contentsOf: s.lines)
            return out
        }
    }

    /// Bytes on disk plus in memory.
    public var size: Int { buffer.withLock { $0.persistedBytes + $0.lines.count } }

    private func persist(_ s: inout State) {
        guard !s.lines.isEmpty else { return }
        var packed = [UInt8](repeating: 0, count: 8 + vx_lz4_bound(s.lines.count))
        let n = s.lines.withUnsafeBytes { src in
            packed.withUnsafeMutableBytes { vx_lz4_compress(src.baseAddress, src.count, $0.baseAddress! + 8, $0.count - 8) }
        }
        guard n > 0 else { return }
        packed.removeLast(packed.count - 8 - n)
        let crc = vx_crc32c(0, Array(packed[8...]), n)
        packed.withUnsafeMutableBytes { p in
            p.storeBytes(of: UInt32(s.lines.count).littleEndian, as: UInt32.self)
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
        s.lines.removeAll(keepingCapacity: true)
        while s.segments.count > maxSegments {
            let old = Journal.path(directory, s.segments.removeFirst())
            s.persistedBytes -= Int(statFile(old)?.st_size ?? 0)
            unlink(old)
        }
    }
}

/// A JSON string literal.
public func jsonString(_ s: String) -> String {
    var out = "\""
    for u in s.unicodeScalars {
        switch u {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\t": out += "\\t"
        case "\r": out += "\\r"
        default:
            if u.value < 0x20 {
                let hex = String(u.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            } else {
                out.unicodeScalars.append(u)
            }
        }
    }
    return out + "\""
}

extension String {
    init(format3 n: Int) {
        var s = String(n)
        while s.count < 3 { s = "0" + s }
        self = s
    }
}
