import Glibc
import VexStore

/// The vector file formats of PRODUCT.md §2, recognised by the name's extension.
public enum VectorFormat: String, CaseIterable, Sendable {
    case text = "vec", raw = "f32", numpy = "npy", fvecs = "fvecs"

    /// The format a file name declares; nil for ordinary files (and for `.query` files, which are
    /// read with `queryFormat`).
    public init?(fileName name: String) {
        guard let dot = name.lastIndex(of: "."), dot != name.startIndex else { return nil }
        self.init(rawValue: String(name[name.index(after: dot)...]))
    }

    init?(fileName name: FileName) { self.init(fileName: name.text) }

    /// A query file's contents may be in any format: sniffed from the bytes.
    static func sniff(_ bytes: UnsafeRawBufferPointer) -> VectorFormat {
        if bytes.count >= 6, bytes[0] == 0x93, bytes[1] == 0x4E, bytes[2] == 0x55, bytes[3] == 0x4D { return .numpy }
        // Text is what a person types: digits, signs, dots, brackets, commas, blanks.
        let textual = bytes.allSatisfy { b in (b >= 0x30 && b <= 0x39) || " \t\r\n,.+-[]eEinfaINFA".utf8.contains(b) }
        return textual ? .text : .raw
    }
}

/// One or more vectors of one dimension, row after row.
public struct ParsedVectors: Equatable, Sendable {
    public let dimension: Int
    public let values: [Float]
    public var rows: Int { values.count / dimension }

    public func row(_ i: Int) -> ArraySlice<Float> { values[(i * dimension)..<((i + 1) * dimension)] }
}

/// Why a file is not a vector: one line for `user.vexfs.status`.
public struct FormatError: Error, Equatable, CustomStringConvertible {
    public let description: String
    init(_ s: String) { description = s }

    /// Why the store's file was not read, in the words of a status line.
    init(_ refusal: ReadRefusal) {
        switch refusal {
        case .failed(let e): self.init("cannot be read: \(String(cString: strerror(e.rawValue)))")
        case .notRegular(let type): self.init(FormatError.notRegular(type))
        case .tooLarge(let size, let limit): self.init("absurd size: \(size) bytes (the limit is \(limit))")
        case .empty: self.init("empty file")
        }
    }

    /// The bytes `read` reads, or why not.
    static func reading(_ read: () throws(ReadRefusal) -> [UInt8]) -> Result<[UInt8], FormatError> {
        do { return .success(try read()) } catch { return .failure(FormatError(error)) }
    }

    /// Why a file of type `type` (its `S_IFMT` bits) is never read as vectors.
    static func notRegular(_ type: mode_t) -> String {
        switch type & S_IFMT {
        case S_IFLNK: "a symbolic link is never a vector"
        case S_IFDIR: "a directory is not a vector"
        default: "not a regular file"
        }
    }
}

public enum VectorParser {
    /// Largest dimension accepted (the int8 kernels are exact far beyond it).
    public static let maxDimension = 65_536
    /// Larger vector files are refused unread.
    public static let maxFileBytes = 1 << 30

    public static func parse(_ bytes: UnsafeRawBufferPointer, as format: VectorFormat) -> Result<ParsedVectors, FormatError> {
        Result { () throws(FormatError) -> ParsedVectors in
            guard bytes.count > 0 else { throw FormatError("empty file") }
            let parsed: ParsedVectors
            switch format {
            case .text: parsed = try text(bytes)
            case .raw: parsed = try raw(bytes)
            case .numpy: parsed = try numpy(bytes)
            case .fvecs: parsed = try fvecs(bytes)
            }
            guard parsed.dimension <= maxDimension else { throw FormatError("dimension \(parsed.dimension) exceeds \(maxDimension)") }
            if let bad = parsed.values.firstIndex(where: { !$0.isFinite }) {
                let row = bad / parsed.dimension, column = bad % parsed.dimension
                throw FormatError(parsed.rows > 1 ? "row \(row), number \(column + 1) is not finite" : "number \(column + 1) is not finite")
            }
            return parsed
        }
    }

    /// Numbers separated by white space and/or commas, optionally inside [ ].
    static func text(_ bytes: UnsafeRawBufferPointer) throws(FormatError) -> ParsedVectors {
        var start = 0, end = bytes.count
        func blank(_ b: UInt8) -> Bool { b == 0x20 || b == 0x09 || b == 0x0A || b == 0x0D }
        while start < end && blank(bytes[start]) { start += 1 }
        while end > start && blank(bytes[end - 1]) { end -= 1 }
        if start < end && bytes[start] == UInt8(ascii: "[") {
            guard bytes[end - 1] == UInt8(ascii: "]") else { throw FormatError("'[' without a closing ']'") }
            start += 1
            end -= 1
        }
        var values: [Float] = []
        var token: [UInt8] = []
        var sawComma = false
        func finish() throws(FormatError) {
            if token.isEmpty { return }
            let s = String(decoding: token, as: UTF8.self)
            guard let v = Float(s) else { throw FormatError("'\(s.prefix(20))' (number \(values.count + 1)) is not a number") }
            values.append(v)
            token.removeAll(keepingCapacity: true)
        }
        for i in start..<end {
            let b = bytes[i]
            if blank(b) {
                try finish()
            } else if b == UInt8(ascii: ",") {
                if token.isEmpty && (values.isEmpty || sawComma) { throw FormatError("a comma without a number before it") }
                try finish()
                sawComma = true
                continue
            } else {
                token.append(b)
                if token.count > 64 { throw FormatError("number \(values.count + 1) is too long") }
            }
            if !token.isEmpty { sawComma = false }
        }
        try finish()
        guard !values.isEmpty else { throw FormatError("no numbers") }
        return ParsedVectors(dimension: values.count, values: values)
    }

    static func raw(_ bytes: UnsafeRawBufferPointer) throws(FormatError) -> ParsedVectors {
        guard bytes.count % 4 == 0 else { throw FormatError("size \(bytes.count) is not a whole number of float32 (4 bytes)") }
        var values = [Float](repeating: 0, count: bytes.count / 4)
        values.withUnsafeMutableBytes { $0.copyMemory(from: bytes) }
        return ParsedVectors(dimension: values.count, values: values)
    }

    /// TEXMEX: per record an int32 dimension, then that many float32.
    static func fvecs(_ bytes: UnsafeRawBufferPointer) throws(FormatError) -> ParsedVectors {
        var offset = 0
        var dimension = 0
        var values: [Float] = []
        while offset < bytes.count {
            guard bytes.count - offset >= 4 else { throw FormatError("record \(values.count / max(dimension, 1) + 1) is truncated") }
            let d = Int(Int32(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: Int32.self)))
            let record = values.count / max(dimension, 1) + 1
            guard d > 0, d <= maxDimension else { throw FormatError("record \(record) declares dimension \(d)") }
            if dimension == 0 { dimension = d }
            guard d == dimension else { throw FormatError("record \(record) has dimension \(d), the first \(dimension)") }
            guard bytes.count - offset - 4 >= 4 * d else { throw FormatError("record \(record) is truncated") }
            for i in 0..<d {
                values.append(Float(bitPattern: UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: offset + 4 + 4 * i, as: UInt32.self))))
            }
            offset += 4 + 4 * d
        }
        return ParsedVectors(dimension: dimension, values: values)
    }

    /// NumPy's .npy: float16, float32 or float64, either byte order, 1-D or 2-D, C or Fortran order.
    static func numpy(_ bytes: UnsafeRawBufferPointer) throws(FormatError) -> ParsedVectors {
        let layout = try NumpyLayout(header: bytes, maxValues: maxFileBytes)
        let count = layout.rows * layout.dimension
        guard bytes.count - layout.dataStart >= count * layout.elementSize else {
            throw FormatError("truncated: \(bytes.count - layout.dataStart) bytes of data, the shape needs \(count * layout.elementSize)")
        }
        var values = [Float](repeating: 0, count: count)
        let data = UnsafeRawBufferPointer(rebasing: bytes[layout.dataStart...])
        for i in 0..<count {
            let v = layout.element(data, i)
            // Fortran order stores columns one after another.
            if layout.fortran {
                values[(i % layout.rows) * layout.dimension + i / layout.rows] = v
            } else {
                values[i] = v
            }
        }
        return ParsedVectors(dimension: layout.dimension, values: values)
    }

    /// The text after `'key':` in a .npy header dict, up to the next top-level comma.
    static func field(_ header: String, _ key: String) -> String? {
        let pattern = Array("'\(key)':")
        let chars = Array(header)
        guard chars.count >= pattern.count,
              let at = (0...(chars.count - pattern.count)).first(where: { Array(chars[$0..<($0 + pattern.count)]) == pattern }) else { return nil }
        var depth = 0
        var out = ""
        for c in chars[(at + pattern.count)...] {
            if c == "(" { depth += 1 }
            if c == ")" { depth -= 1; if depth < 0 { break } }
            if (c == "," && depth == 0) || c == "}" { break }
            out.append(c)
        }
        return out.trimmingCharacters()
    }
}

/// Where a .npy keeps its numbers, from its header: the shape, the element type and order, and where
/// the data starts.
struct NumpyLayout {
    let rows: Int
    let dimension: Int
    /// 2, 4 or 8 bytes (float16, float32, float64).
    let elementSize: Int
    let bigEndian: Bool
    /// Columns stored one after another (only ever true for a 2-D array).
    let fortran: Bool
    let dataStart: Int

    /// Reads the header at the start of `bytes`; a shape of more than `maxValues` numbers is refused.
    init(header bytes: UnsafeRawBufferPointer, maxValues: Int) throws(FormatError) {
        guard bytes.count >= 10, Array(bytes[0..<6]) == [0x93] + Array("NUMPY".utf8) else { throw FormatError("not a NumPy .npy file") }
        let major = bytes[6]
        let headerLength: Int, headerStart: Int
        switch major {
        case 1:
            headerLength = Int(UInt16(littleEndian: bytes.loadUnaligned(fromByteOffset: 8, as: UInt16.self)))
            headerStart = 10
        case 2, 3:
            guard bytes.count >= 12 else { throw FormatError("the .npy header is truncated") }
            headerLength = Int(UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: 8, as: UInt32.self)))
            headerStart = 12
        default:
            throw FormatError(".npy version \(major) is not supported")
        }
        guard headerLength <= bytes.count - headerStart, headerLength < 1 << 20 else { throw FormatError("the .npy header is truncated") }
        let header = String(decoding: bytes[headerStart..<(headerStart + headerLength)], as: UTF8.self)
        guard let descr = VectorParser.field(header, "descr"), let order = VectorParser.field(header, "fortran_order"),
              let shapeText = VectorParser.field(header, "shape") else {
            throw FormatError("the .npy header lacks descr, fortran_order or shape")
        }
        let kind = descr.trimmingQuotes()
        guard kind.count == 3, "<>|=".contains(kind.first!), kind.dropFirst().first == "f", let size = Int(String(kind.last!)), [2, 4, 8].contains(size) else {
            throw FormatError("dtype \(kind) is not float16, float32 or float64")
        }
        let shape = shapeText.filter { "0123456789,".contains($0) }.split(separator: ",").compactMap { Int($0) }
        guard shape.count == 1 || shape.count == 2 else { throw FormatError("shape (\(shape.map(String.init).joined(separator: ", "))) is not 1-D or 2-D") }
        rows = shape.count == 2 ? shape[0] : 1
        dimension = shape.count == 2 ? shape[1] : shape[0]
        guard rows > 0, dimension > 0 else { throw FormatError("the array is empty") }
        guard dimension <= VectorParser.maxDimension else { throw FormatError("dimension \(dimension) exceeds \(VectorParser.maxDimension)") }
        let count = rows.multipliedReportingOverflow(by: dimension)
        guard !count.overflow, count.partialValue <= maxValues else { throw FormatError("shape too large") }
        elementSize = size
        bigEndian = kind.first == ">"
        fortran = order.hasPrefix("True") && shape.count == 2
        dataStart = headerStart + headerLength
    }

    /// Element `i` of `data` (which starts at the first element), as float32.
    @inline(__always) func element(_ data: UnsafeRawBufferPointer, _ i: Int) -> Float {
        let at = i * elementSize
        switch elementSize {
        case 2:
            let bits = data.loadUnaligned(fromByteOffset: at, as: UInt16.self)
            return Float(Float16(bitPattern: bigEndian ? UInt16(bigEndian: bits) : UInt16(littleEndian: bits)))
        case 4:
            let bits = data.loadUnaligned(fromByteOffset: at, as: UInt32.self)
            return Float(bitPattern: bigEndian ? UInt32(bigEndian: bits) : UInt32(littleEndian: bits))
        default:
            let bits = data.loadUnaligned(fromByteOffset: at, as: UInt64.self)
            return Float(Double(bitPattern: bigEndian ? UInt64(bigEndian: bits) : UInt64(littleEndian: bits)))
        }
    }
}

extension String {
    func trimmingCharacters() -> String {
        var s = Substring(self)
        while let f = s.first, f == " " { s = s.dropFirst() }
        while let l = s.last, l == " " { s = s.dropLast() }
        return String(s)
    }

    func trimmingQuotes() -> String { filter { $0 != "'" && $0 != "\"" } }
}

extension VectorParser {
    /// What a file holds as vectors: the content of a vector or query file (`q.npy.query` says its
    /// format; a bare `q.query` is recognised from its bytes), else its `user.vexfs.vector`; nil when
    /// it has neither. `read` reads the file's bytes within a limit; `attribute` its vector attribute.
    static func vectors(name: FileName, read: (Int) -> Result<[UInt8], FormatError>, attribute: () -> [UInt8]?) -> Result<ParsedVectors, FormatError>? {
        let isQuery = name.isQuery
        let format = isQuery ? name.queryFormat : name.vectorFormat
        if format != nil || isQuery {
            switch read(isQuery ? SemanticLayer.maxQueryBytes : maxFileBytes) {
            case .failure(let e): return .failure(e)
            case .success(let bytes): return bytes.withUnsafeBytes { parse($0, as: format ?? VectorFormat.sniff($0)) }
            }
        }
        guard let text = attribute() else { return nil }
        return text.withUnsafeBytes { parse($0, as: .text) }
    }
}
