import CLinux
import Glibc
import VexStore

/// A vector file too big to read whole (a `.npy` or `.fvecs` past `threshold` bytes), read a slice
/// of rows at a time with pread(2) into one reused buffer: memory stays bounded whatever the file's
/// size, and pread leaves the pages in the kernel's cache rather than in the daemon's resident set.
/// The file is opened once, by descriptor, with O_NOFOLLOW, and checked to be a regular file.
public final class VectorStream {
    /// Files at least this big are streamed by default (smaller ones are read whole: one read).
    public static let threshold = 64 << 20
    /// Rows a file may hold: what one collection's graph can address, with room to spare.
    static let maxRows = 1 << 27
    /// The bytes of float32 one slice holds at most.
    let sliceBytes: Int

    let rows: Int
    let dimension: Int
    private let fd: Int32
    private let layout: Layout
    private var raw: [UInt8] = []

    private enum Layout {
        case numpy(NumpyLayout)
        /// Records of an int32 dimension and that many float32.
        case fvecs
    }

    /// Whether a file of `format` and `size` bytes is read through a stream.
    static func streams(_ format: VectorFormat, size: Int, threshold: Int) -> Bool {
        (format == .numpy || format == .fvecs) && size >= threshold
    }

    /// Opens `name` in the directory `dir` and reads its layout.
    init(_ dir: Int32, _ name: FileName, _ format: VectorFormat, sliceBytes: Int = 32 << 20) throws(FormatError) {
        self.sliceBytes = sliceBytes
        let (fd, st): (Int32, stat)
        do { (fd, st) = try StoreFiles.openRegular(dir, name) } catch { throw FormatError(error) }
        let size = Int(st.st_size)
        do throws(FormatError) {
            switch format {
            case .numpy:
                // The header is at most 1 MiB (NumpyLayout refuses more).
                let head = try VectorStream.read(fd, at: 0, count: min(size, (1 << 20) + 16), exact: false)
                let parsed = head.withUnsafeBytes { b in Result { () throws(FormatError) in try NumpyLayout(header: b, maxValues: .max) } }
                let numpy = try parsed.get()
                let needed = numpy.rows.multipliedReportingOverflow(by: numpy.dimension * numpy.elementSize)
                guard !needed.overflow, size - numpy.dataStart >= needed.partialValue else {
                    throw FormatError("truncated: \(size - numpy.dataStart) bytes of data, the shape needs \(needed.overflow ? Int.max : needed.partialValue)")
                }
                (rows, dimension, layout) = (numpy.rows, numpy.dimension, .numpy(numpy))
            case .fvecs:
                let head = try VectorStream.read(fd, at: 0, count: 4, exact: true)
                let d = Int(Int32(littleEndian: head.withUnsafeBytes { $0.loadUnaligned(as: Int32.self) }))
                guard d > 0, d <= VectorParser.maxDimension else { throw FormatError("record 1 declares dimension \(d)") }
                let record = 4 + 4 * d
                guard size % record == 0 else { throw FormatError("record \(size / record + 1) is truncated") }
                (rows, dimension, layout) = (size / record, d, .fvecs)
            default:
                throw FormatError("\(format.rawValue) files are read whole")
            }
            guard rows <= VectorStream.maxRows else { throw FormatError("\(rows) vectors in one file; at most \(VectorStream.maxRows)") }
        } catch {
            close(fd)
            throw error
        }
        self.fd = fd
    }

    deinit { close(fd) }

    /// Rows per slice.
    var sliceRows: Int { max(1, sliceBytes / (4 * dimension)) }

    /// Rows `range` as float32, row after row, into `out`; every number must be finite.
    func read(_ range: Range<Int>, into out: inout [Float]) throws(FormatError) {
        let n = range.count, d = dimension
        if out.count != n * d { out = [Float](repeating: 0, count: n * d) }
        switch layout {
        case .fvecs:
            let record = 4 + 4 * d
            raw = try VectorStream.read(fd, at: range.lowerBound * record, count: n * record, exact: true, reusing: raw)
            let mismatch: (Int, Int)? = raw.withUnsafeBytes { b in
                out.withUnsafeMutableBufferPointer { o in
                    for r in 0..<n {
                        let declared = Int(Int32(littleEndian: b.loadUnaligned(fromByteOffset: r * record, as: Int32.self)))
                        guard declared == d else { return (r, declared) }
                        for j in 0..<d {
                            o[r * d + j] = Float(bitPattern: UInt32(littleEndian: b.loadUnaligned(fromByteOffset: r * record + 4 + 4 * j, as: UInt32.self)))
                        }
                    }
                    return nil
                }
            }
            if let (r, declared) = mismatch { throw FormatError("record \(range.lowerBound + r + 1) has dimension \(declared), the first \(d)") }
        case .numpy(let np):
            let size = np.elementSize
            if np.fortran {
                // Column j of these rows is one run of the file.
                for j in 0..<d {
                    raw = try VectorStream.read(fd, at: np.dataStart + (j * np.rows + range.lowerBound) * size, count: n * size, exact: true, reusing: raw)
                    raw.withUnsafeBytes { b in
                        out.withUnsafeMutableBufferPointer { o in for r in 0..<n { o[r * d + j] = np.element(b, r) } }
                    }
                }
            } else {
                raw = try VectorStream.read(fd, at: np.dataStart + range.lowerBound * d * size, count: n * d * size, exact: true, reusing: raw)
                raw.withUnsafeBytes { b in
                    out.withUnsafeMutableBufferPointer { o in for i in 0..<(n * d) { o[i] = np.element(b, i) } }
                }
            }
        }
        if let bad = out.firstIndex(where: { !$0.isFinite }) {
            throw FormatError("row \(range.lowerBound + bad / d), number \(bad % d + 1) is not finite")
        }
    }

    /// `count` bytes at `offset` (fewer at the end of the file unless `exact`), into `buffer`'s storage.
    private static func read(_ fd: Int32, at offset: Int, count: Int, exact: Bool, reusing buffer: [UInt8] = []) throws(FormatError) -> [UInt8] {
        var bytes = buffer
        if bytes.count != count { bytes = [UInt8](repeating: 0, count: count) }
        var done = 0
        let failure: Int32? = bytes.withUnsafeMutableBytes { b in
            while done < count {
                let got = pread(fd, b.baseAddress! + done, count - done, off_t(offset + done))
                if got < 0 {
                    if errno == EINTR { continue }
                    return errno
                }
                if got == 0 { break }
                done += got
            }
            return nil
        }
        if let failure { throw FormatError("cannot be read: \(String(cString: strerror(failure)))") }
        if done < count {
            guard !exact else { throw FormatError("the file shrank while it was read") }
            bytes.removeLast(count - done)
        }
        return bytes
    }
}
