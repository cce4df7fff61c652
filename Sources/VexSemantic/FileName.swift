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

    /// A query file (`NAME.query`): asked, never indexed.
    var isQuery: Bool { hasSuffix(".query") }
    /// The vector format the name says (`a.npy`); nil for other names, query files included.
    var vectorFormat: VectorFormat? { isQuery ? nil : VectorFormat(fileName: self) }
    /// The format a query file's name says (`q.npy.query`); nil for a bare `q.query`, whose bytes decide.
    var queryFormat: VectorFormat? { isQuery ? VectorFormat(fileName: dropLast(6)) : nil }

    /// Whether it can name an entry of a directory: one component, not `.` or `..`.
    var isComponent: Bool {
        !bytes.isEmpty && bytes.count <= 255 && !bytes.contains(0x2F) && !bytes.contains(0) && bytes != [0x2E] && bytes != [0x2E, 0x2E]
    }

    /// The name read as UTF-8, invalid bytes replaced: only for looking at its extension.
    var text: String { String(decoding: bytes, as: UTF8.self) }

    public func hasSuffix(_ suffix: String) -> Bool {
        let s = Array(suffix.utf8)
        return bytes.count >= s.count && Array(bytes.suffix(s.count)) == s
    }

    public func dropLast(_ n: Int) -> FileName { FileName(Array(bytes.dropLast(n))) }

    /// `self/name` (`name` alone when self is the empty path of the store's root).
    public func child(_ name: FileName) -> FileName { isEmpty ? name : FileName(bytes + [0x2F] + name.bytes) }

    /// Whether `self` is `ancestor` or lies under it; the rest of the path (with its slash) if so.
    func relative(to ancestor: FileName) -> [UInt8]? {
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
    /// and `\n`; other control bytes and every byte that is not part of valid UTF-8 as `\xHH`.
    /// Valid UTF-8 beyond ASCII stays as it is. `unescape` reverses it exactly.
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
            case 0..<0x20, 0x7F: hex(b); i += 1
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

/// What the vector layer makes of a name in a collection's directory: the one classification,
/// used by events, reconciliation, re-reading and status alike.
enum FileKind: Equatable {
    /// `NAME.npy`, `NAME.fvecs`, `NAME.vec`...: its content is vectors in that format.
    case vector(VectorFormat)
    /// `NAME.query` (`NAME.npy.query` says its format; a bare one is known by its bytes): asked,
    /// never indexed.
    case query(VectorFormat?)
    /// Text to embed: an embedder is configured and the name matches the collection's globs.
    case text
    /// Any other name whose file carries `user.vexfs.vector`.
    case attributeCarrier
    case other

    /// The kind the name alone says (a vector or a query file); nil when the directory's rules and
    /// the file decide.
    init?(name: FileName) {
        if name.isQuery { self = .query(name.queryFormat) } else if let format = name.vectorFormat { self = .vector(format) } else { return nil }
    }

    /// Whether a file of this kind holds vectors the collection indexes.
    var isIndexed: Bool {
        switch self {
        case .vector, .text, .attributeCarrier: true
        case .query, .other: false
        }
    }
}

/// The rules one directory classifies its names by.
struct NameRules {
    /// `user.vexfs.embed`'s globs on the base name; nil: the mount's default ones.
    var textGlobs: [String]?
    /// Whether the mount has an embedder: without one, nothing is text.
    var embedding: Bool

    static let defaultTextGlobs = ["*.txt", "*.md"]

    /// The kind of `name`; `carriesVector` (which may read an attribute) is asked only of a name
    /// that is nothing else.
    func kind(of name: FileName, carriesVector: () -> Bool = { false }) -> FileKind {
        if let kind = FileKind(name: name) { return kind }
        return isText(name) ? .text : carriesVector() ? .attributeCarrier : .other
    }

    /// Whether `name`, neither a vector nor a query file, is text to embed.
    func isText(_ name: FileName) -> Bool {
        embedding && name.withCString { n in (textGlobs ?? NameRules.defaultTextGlobs).contains { fnmatch($0, n, FNM_PERIOD) == 0 } }
    }
}
