import Glibc

/// A file name, or a path relative to the store, as the kernel gave it: bytes, not necessarily
/// UTF-8. Inside vexfs a name is never decoded, so `caf\xe9.vec` is a vector like any other; it
/// becomes text only where it leaves, in answers and the journal, through `escaped`.
public struct FileName: Hashable, Comparable, Sendable, CustomStringConvertible, ExpressibleByStringLiteral {
    public let bytes: [UInt8]

    public init(_ bytes: [UInt8]) { self.bytes = bytes }
    public init(_ text: String) { bytes = Array(text.utf8) }
    public init(stringLiteral text: String) { self.init(text) }
    public init(cString: UnsafePointer<CChar>) {
        bytes = Array(UnsafeRawBufferPointer(start: cString, count: strlen(cString)))
    }

    public var isEmpty: Bool { bytes.isEmpty }

    /// Whether it can name an entry of a directory: one component, not `.` or `..`.
    public var isComponent: Bool {
        !bytes.isEmpty && bytes.count <= 255 && !bytes.contains(0x2F) && !bytes.contains(0) && bytes != [0x2E] && bytes != [0x2E, 0x2E]
    }

    /// The name read as UTF-8, invalid bytes replaced: only for looking at its extension.
    public var text: String { String(decoding: bytes, as: UTF8.self) }

    public func hasSuffix(_ suffix: String) -> Bool {
        let s = Array(suffix.utf8)
        return bytes.count >= s.count && Array(bytes.suffix(s.count)) == s
    }

    public func dropLast(_ n: Int) -> FileName { FileName(Array(bytes.dropLast(n))) }

    /// `self/name` (`name` alone when self is the empty path of the store's root).
    public func child(_ name: FileName) -> FileName { isEmpty ? name : FileName(bytes + [0x2F] + name.bytes) }

    /// Whether `self` is `ancestor` or lies under it; the rest of the path (with its slash) if so.
    public func relative(to ancestor: FileName) -> [UInt8]? {
        if self == ancestor { return [] }
        guard bytes.count > ancestor.bytes.count, bytes.starts(with: ancestor.bytes), bytes[ancestor.bytes.count] == 0x2F else { return nil }
        return Array(bytes[ancestor.bytes.count...])
    }

    public func withCString<R>(_ body: (UnsafePointer<CChar>) throws -> R) rethrows -> R {
        try (bytes + [0]).withUnsafeBufferPointer { try $0.withMemoryRebound(to: CChar.self) { try body($0.baseAddress!) } }
    }

    public static func < (a: FileName, b: FileName) -> Bool { a.bytes.lexicographicallyPrecedes(b.bytes) }

    public var description: String { escaped }

    /// The name as one field of a `NAME<TAB>DISTANCE` line: backslash, TAB and newline as `\\`, `\t`
    /// and `\n`; `#` (which separates a row from its file, `data.npy#3`), other control bytes and
    /// every byte that is not part of valid UTF-8 as `\xHH`. Valid UTF-8 beyond ASCII stays as it is.
    /// `unescape` reverses it exactly.
    public var escaped: String {
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count)
        var i = 0
        func hex(_ b: UInt8) {
            let digits = Array("0123456789abcdef".utf8)
            out += [0x5C, 0x78, digits[Int(b >> 4)], digits[Int(b & 15)]]
        }
        while i < bytes.count {
            let b = bytes[i]
            switch b {
            case 0x5C: out += [0x5C, 0x5C]; i += 1
            case 0x09: out += [0x5C, 0x74]; i += 1
            case 0x0A: out += [0x5C, 0x6E]; i += 1
            case 0..<0x20, 0x7F, 0x23: hex(b); i += 1
            case 0..<0x80: out.append(b); i += 1
            default:
                let n = FileName.utf8Sequence(bytes, at: i)
                if n == 0 { hex(b); i += 1 } else { out += bytes[i..<(i + n)]; i += n }
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// The length of the valid UTF-8 sequence starting at `i` (a non-ASCII lead byte), or 0.
    static func utf8Sequence(_ b: [UInt8], at i: Int) -> Int {
        let lead = b[i]
        let n: Int, low: UInt8, high: UInt8
        switch lead {
        case 0xC2...0xDF: n = 2; low = 0x80; high = 0xBF
        case 0xE0: n = 3; low = 0xA0; high = 0xBF
        case 0xE1...0xEC, 0xEE...0xEF: n = 3; low = 0x80; high = 0xBF
        case 0xED: n = 3; low = 0x80; high = 0x9F
        case 0xF0: n = 4; low = 0x90; high = 0xBF
        case 0xF1...0xF3: n = 4; low = 0x80; high = 0xBF
        case 0xF4: n = 4; low = 0x80; high = 0x8F
        default: return 0
        }
        guard i + n <= b.count, (low...high).contains(b[i + 1]) else { return 0 }
        for j in (i + 2)..<(i + n) where !(0x80...0xBF).contains(b[j]) { return 0 }
        return n
    }

    /// The bytes an `escaped` field stands for; nil when it is not one (a stray backslash).
    public static func unescape<S: StringProtocol>(_ field: S) -> [UInt8]? {
        let s = Array(field.utf8)
        var out: [UInt8] = []
        var i = 0
        func nibble(_ c: UInt8) -> UInt8? {
            switch c {
            case 0x30...0x39: c - 0x30
            case 0x61...0x66: c - 0x61 + 10
            case 0x41...0x46: c - 0x41 + 10
            default: nil
            }
        }
        while i < s.count {
            guard s[i] == 0x5C else { out.append(s[i]); i += 1; continue }
            guard i + 1 < s.count else { return nil }
            switch s[i + 1] {
            case 0x5C: out.append(0x5C); i += 2
            case 0x74: out.append(0x09); i += 2
            case 0x6E: out.append(0x0A); i += 2
            case 0x78:
                guard i + 3 < s.count, let h = nibble(s[i + 2]), let l = nibble(s[i + 3]) else { return nil }
                out.append(h << 4 | l); i += 4
            default: return nil
            }
        }
        return out
    }
}
