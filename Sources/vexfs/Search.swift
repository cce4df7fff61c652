// `vexfs search`: a similarity query from the command line, made through the mount exactly as a user
// would make it: the query vectors go into a query file of the collection (a `.query` file is never
// indexed and its name is unique to this process), its options into the file's attributes, and the
// answer is its `user.vexfs.knn.K`, read by pages when it is longer than one attribute value.
import ArgumentParser
import CLinux
import Foundation
import Glibc
import VexSemantic
import VexStore

struct Search: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "The K nearest neighbours in COLLECTION (a directory of a vexfs mount).")

    @Argument(help: "A directory of a vexfs mount.") var collection: String
    // Unconditional: about half of all vectors begin with a minus sign, and `--vector -0.5,0.2` is a
    // vector, never an option.
    @Option(parsing: .unconditionalSingleValue,
            help: "A query vector: numbers separated by commas or blanks (repeat for several; one answer block each).")
    var vector: [String] = []
    @Option(help: "A file holding the query vectors, in any vector format (rows of a 2-D .npy, records of .fvecs).") var file: String?
    @Option(help: "A question in words (the mount's embedder turns it into a vector).") var text: String?
    @Option(name: .short, help: "How many neighbours (1 to 1000).") var k = 10
    @Flag(help: "Search the whole tree under COLLECTION (every collection with the same dimension and metric).") var tree = false
    @Option(help: "name=GLOB or user.KEY=VALUE: only files that pass (repeat: all must hold).") var filter: [String] = []
    @Option(help: "Only neighbours at most this distance away.") var radius: Float?
    @Option(help: "Search breadth for this query (approximate indexes).") var ef: Int?
    @Option(help: "An FTS5 expression (words, \"phrases\", AND/OR/NOT, prefix*): only text passages that match.") var match: String?
    @Option(help: "vector (by meaning), keyword (BM25) or hybrid (both lists fused, as --fusion says).") var mode: String?
    @Option(help: """
        How hybrid fuses its two lists: scores (the default: each list's scores scaled to 0..1 and averaged; better on \
        known-item search, see BENCHMARKS.md) or rrf, rrf:K (reciprocal rank fusion, 1/(K+rank) summed, K 60 unless given).
        """) var fusion: String?
    @Flag(help: "JSON: an array of {name, distance}; an array of those for several query vectors.") var json = false

    func validate() throws {
        guard [!vector.isEmpty, file != nil, text != nil].filter({ $0 }).count == 1 else {
            throw ValidationError("give one of --vector (one or more), --file and --text")
        }
        guard (1...1000).contains(k) else { throw ValidationError("-k must be from 1 to 1000") }
    }

    func run() throws {
        guard let resolved = realpath(collection, nil) else { throw UserError("collection \(collection) does not exist") }
        let dir = String(cString: resolved)
        free(resolved)
        var st = stat()
        guard stat(dir, &st) == 0, st.st_mode & S_IFMT == S_IFDIR else { throw UserError("\(dir) is not a directory") }
        guard let mount = MountTable.containing(dir), mount.type == "fuse.vexfs" else { throw UserError("\(dir) is not inside a vexfs mount") }
        _ = mount

        var query: [UInt8]
        var ext = ""
        if let text {
            query = Array(text.utf8)
        } else if vector.count == 1 {
            query = Array(vector[0].utf8)
        } else if !vector.isEmpty {
            // Several vectors travel as .fvecs records (a text file holds one vector).
            query = []
            for (i, v) in vector.enumerated() {
                let parsed = Array(v.utf8).withUnsafeBytes { VectorParser.parse($0, as: .text) }
                guard case .success(let row) = parsed else { throw UserError("--vector number \(i + 1) is not a vector") }
                withUnsafeBytes(of: Int32(row.dimension).littleEndian) { query += $0 }
                for x in row.values { withUnsafeBytes(of: x.bitPattern.littleEndian) { query += $0 } }
            }
            ext = ".fvecs"
        } else {
            guard let f = fopen(file!, "rb") else { throw UserError("\(file!): \(String(cString: strerror(errno)))") }
            defer { fclose(f) }
            query = []
            var chunk = [UInt8](repeating: 0, count: 65_536)
            while true {
                let n = fread(&chunk, 1, chunk.count, f)
                if n == 0 { break }
                query += chunk[0..<n]
            }
            // A known extension of --file travels in the name (q.fvecs.query), so binary formats are read as such.
            let known = ["vec", "f32", "npy", "fvecs"]
            ext = file.flatMap { f in f.split(separator: ".").last.map(String.init) }.flatMap { known.contains($0) ? "." + $0 : nil } ?? ""
        }
        let path = "\(dir)/.vexfs-search-\(getpid())-\(UInt32.random(in: 0...UInt32.max))\(ext).query"
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw UserError("cannot write a query file in \(dir): \(String(cString: strerror(errno)))") }
        defer { unlink(path) }
        let written = query.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
        guard written == query.count else { throw UserError("cannot write the query file") }

        var options: [(String, String)] = []
        if tree { options.append(("user.vexfs.scope", "tree")) }
        if !filter.isEmpty { options.append(("user.vexfs.filter", filter.joined(separator: "\n"))) }
        if let radius { options.append(("user.vexfs.radius", String(radius))) }
        if let ef { options.append(("user.vexfs.ef", String(ef))) }
        if let match { options.append(("user.vexfs.match", match)) }
        if let mode { options.append(("user.vexfs.mode", mode)) }
        if let fusion { options.append(("user.vexfs.fusion", fusion)) }
        for (name, value) in options where vx_lsetxattr(path, name, value, value.utf8.count, 0) != 0 {
            throw UserError("\(name): \(reason(path, errno))")
        }

        let answer = try read(path)
        // Each line is NAME<TAB>DISTANCE with the name escaped (FileName.escaped): split on the last
        // TAB, then give back the real name. An empty line ends one query vector's block.
        var blocks: [[Hit]] = [[]]
        for line in answer.split(separator: 0x0A, omittingEmptySubsequences: false).dropLast() {
            if line.isEmpty { blocks.append([]); continue }
            guard let tab = line.lastIndex(of: 0x09), let distance = Float(String(decoding: line[(tab + 1)...], as: UTF8.self)) else {
                throw UserError("the answer has a malformed line")
            }
            let field = String(decoding: line[..<tab], as: UTF8.self)
            guard let bytes = FileName.unescape(field) else { throw UserError("the answer has a malformed name") }
            blocks[blocks.count - 1].append(Hit(bytes: bytes, escaped: field, distance: distance))
        }
        if json {
            // Names that are not UTF-8 cannot be JSON strings: those keep their escaped form, and say so.
            let items = blocks.map { hits in
                hits.map { h in
                    let text = String(validating: h.bytes, as: UTF8.self)
                    // The row of a file of many: after the last `#` of the field (names escape theirs).
                    var file = text ?? h.escaped, row: Int? = nil
                    if let hash = h.escaped.lastIndex(of: "#"), let n = Int(h.escaped[h.escaped.index(after: hash)...]) {
                        let escapedFile = String(h.escaped[..<hash])
                        file = FileName.unescape(escapedFile).flatMap { String(validating: $0, as: UTF8.self) } ?? escapedFile
                        row = n
                    }
                    return JSONHit(name: text ?? h.escaped, file: file, row: row, distance: h.distance, escaped: text == nil ? true : nil)
                }
            }
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
            let data = items.count == 1 ? try encoder.encode(items[0]) : try encoder.encode(items)
            FileHandle.standardOutput.write(data)
            FileHandle.standardOutput.write(Data("\n".utf8))
        } else {
            // As the attribute gives it: one line per neighbour, whatever bytes the names hold.
            FileHandle.standardOutput.write(Data(answer))
        }
    }

    /// The whole answer: one attribute value when it fits, else page after page (E2BIG says it does
    /// not fit; each page is whole lines, the next starts at the line after).
    private func read(_ path: String) throws -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: 65_536)
        func ask(_ attribute: String) throws -> [UInt8]? {
            let n = buffer.withUnsafeMutableBytes { vx_lgetxattr(path, attribute, $0.baseAddress, $0.count) }
            if n >= 0 { return Array(buffer[0..<n]) }
            if errno == E2BIG { return nil }
            switch errno {
            case ENODATA: throw UserError(text != nil ? "words need an embedder: mount with -o embedder=URL" : "the query is not a vector (bad number, NaN, empty?)")
            case EHOSTDOWN: throw UserError(reason(path, EHOSTDOWN))
            case EINVAL: throw UserError("query refused: \(reason(path, EINVAL))")
            default: throw UserError("query failed: \(String(cString: strerror(errno)))")
            }
        }
        if let whole = try ask("user.vexfs.knn.\(k)") { return whole }
        var answer: [UInt8] = []
        var line = 0
        while true {
            guard let page = try ask("user.vexfs.knn.\(k).from.\(line)") else { throw UserError("a line of the answer is too long") }
            if page.isEmpty { return answer }
            answer += page
            line += page.reduce(0) { $0 + ($1 == 0x0A ? 1 : 0) }
        }
    }

    /// Why the query file's last option or query was refused, from its status.
    private func reason(_ path: String, _ code: Int32) -> String {
        var buffer = [UInt8](repeating: 0, count: 4096)
        let n = buffer.withUnsafeMutableBytes { vx_lgetxattr(path, "user.vexfs.status", $0.baseAddress, $0.count) }
        let status = n > 0 ? String(decoding: buffer[0..<n], as: UTF8.self) : ""
        if let range = status.range(of: "last refused: ") { return String(status[range.upperBound...]) }
        return String(cString: strerror(code))
    }
}

struct Hit {
    let bytes: [UInt8]
    let escaped: String
    let distance: Float
}

struct JSONHit: Encodable {
    /// As the answer names it: the file, and `#ROW` for a row of a file of many.
    let name: String
    /// The file alone, and the row in it (nil for a file of one vector).
    let file: String
    let row: Int?
    let distance: Float
    let escaped: Bool?
}
