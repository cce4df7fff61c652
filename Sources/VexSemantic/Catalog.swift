import Glibc
import VexStore
import VexIndex

// The catalog: what a collection knows of each of its files (the signature it was read with, the
// labels of its vectors, the status users read), saved in the index's snapshot as its `CAT` section
// so that a mount reads again exactly the files that changed since.

/// What the collection knows of one file: the signature it was read with (so an unchanged file is
/// not read again), the labels of its vectors, and the one-line status users read.
extension FileRecord {
    /// A file as `st` shows it, holding nothing yet.
    init(_ st: stat) {
        self.init(inode: UInt64(st.st_ino), size: Int64(st.st_size), mtime: nanoseconds(st.st_mtim), ctime: nanoseconds(st.st_ctim),
                  firstLabel: 0, rows: 0, status: "")
    }
}

struct FileRecord: Equatable, Sendable {
    var inode: UInt64
    var size: Int64
    var mtime: Int64
    var ctime: Int64
    var firstLabel: UInt64
    var rows: Int
    var status: String
    /// A text file's passages, as byte ranges (start, end) of the file; empty for vector files.
    var passages: [Range<Int>] = []

    /// The status as the journal keeps it: whole when indexed, else without the reason (a reason
    /// may quote the file's bytes, and the journal outlives the file and its permissions).
    var journalStatus: String {
        guard !status.hasPrefix("indexed"), let colon = status.firstIndex(of: ":") else { return status }
        return String(status[..<colon])
    }

    func sameSignature(_ st: stat) -> Bool {
        inode == UInt64(st.st_ino) && size == Int64(st.st_size) && mtime == nanoseconds(st.st_mtim) && ctime == nanoseconds(st.st_ctim)
    }
}

func nanoseconds(_ t: timespec) -> Int64 { Int64(t.tv_sec) * 1_000_000_000 + Int64(t.tv_nsec) }

/// The catalog's bytes in a snapshot (format 2: version 1 had no passages).
enum Catalog {

    static func encode(_ files: [FileName: FileRecord], nextLabel: UInt64) -> [UInt8] {
        var w = ByteWriter()
        w.put(UInt32(2)); w.put(nextLabel); w.put(UInt64(files.count))
        for (name, r) in files.sorted(by: { $0.key < $1.key }) {
            w.put(UInt32(name.bytes.count)); w.bytes.append(contentsOf: name.bytes); w.put(r.inode); w.put(r.size); w.put(r.mtime); w.put(r.ctime)
            w.put(r.firstLabel); w.put(UInt64(r.rows)); w.put(r.status)
            w.put(UInt32(r.passages.count))
            for p in r.passages { w.put(UInt64(p.lowerBound)); w.put(UInt64(p.upperBound)) }
        }
        return w.bytes
    }

    /// The catalog `encode` wrote, checked as a whole: names one component each, label ranges that
    /// overlap nothing and lie below the next label, no more rows than the index holds (`rows`), and
    /// passages in order. A catalog that fails any of it is damage (`.catalog`), or from a newer
    /// vexfs (`.version`): the collection is then rebuilt from its files.
    public static func decode(_ bytes: [UInt8], rows limit: Int) throws(PersistenceError) -> ([FileName: FileRecord], UInt64) {
        func damaged(_ why: String) -> PersistenceError { .corrupt(path: "catalog", reason: why, kind: .catalog) }
        var r = ByteReader(bytes)
        do {
            let version = try r.get(UInt32.self)
            guard version == 1 || version == 2 else {
                throw PersistenceError.corrupt(path: "catalog", reason: "format \(version) is newer than this vexfs reads (2)", kind: .version)
            }
            let next = try r.get(UInt64.self), count = try r.get(UInt64.self)
            // Each entry takes at least 56 bytes: a count the bytes cannot hold is damage.
            guard count <= UInt64(r.remaining / 56) else { throw damaged("it names \(count) files in \(bytes.count) bytes") }
            var files: [FileName: FileRecord] = [:]
            var ranges: [(UInt64, UInt64)] = []
            var total = 0
            for _ in 0..<count {
                let name = FileName(try r.getBytes())
                guard name.isComponent else { throw damaged("an entry is not a file name") }
                let inode = try r.get(UInt64.self), size = try r.get(Int64.self), mtime = try r.get(Int64.self), ctime = try r.get(Int64.self)
                let first = try r.get(UInt64.self), rows = try r.get(UInt64.self)
                let status = try r.getString()
                guard rows == 0 || (rows <= UInt64(limit - total) && first >= 1 && first <= next && rows <= next - first) else {
                    throw damaged("\(name.escaped): \(rows) rows from label \(first) do not fit an index of \(limit) below label \(next)")
                }
                total += Int(rows)
                if rows > 0 { ranges.append((first, first + rows)) }
                var record = FileRecord(inode: inode, size: size, mtime: mtime, ctime: ctime, firstLabel: first, rows: Int(rows), status: status)
                if version == 2 {
                    let n = try r.get(UInt32.self)
                    guard Int(n) <= r.remaining / 16 else { throw damaged("\(name.escaped): \(n) passages in \(r.remaining) bytes") }
                    var last = 0
                    for _ in 0..<n {
                        let start = try r.get(UInt64.self), end = try r.get(UInt64.self)
                        guard start >= UInt64(last), start <= end, end <= UInt64(Int64.max) else { throw damaged("\(name.escaped): passages out of order") }
                        record.passages.append(Int(start)..<Int(end))
                        last = Int(end)
                    }
                }
                guard files.updateValue(record, forKey: name) == nil else { throw damaged("\(name.escaped) is named twice") }
            }
            guard r.remaining == 0 else { throw damaged("\(r.remaining) bytes follow its last entry") }
            ranges.sort { $0.0 < $1.0 }
            for (a, b) in zip(ranges, ranges.dropFirst()) where a.1 > b.0 { throw damaged("two files hold label \(b.0)") }
            return (files, next)
        } catch let e as PersistenceError {
            throw e
        } catch {
            throw damaged("it ends inside an entry")
        }
    }
}
