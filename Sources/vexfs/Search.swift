// `vexfs search`: a similarity query from the command line, made through the mount exactly as a user
// would make it: the query vector goes into a query file of the collection (a `.query` file is never
// indexed and its name is unique to this process), and the answer is its `user.vexfs.knn.K`.
import ArgumentParser
import CLinux
import Foundation
import Glibc
import VexSemantic

struct Search: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "The K nearest neighbours in COLLECTION (a directory of a vexfs mount).")

    @Argument(help: "A directory of a vexfs mount.") var collection: String
    @Option(help: "The query vector: numbers separated by commas or blanks.") var vector: String?
    @Option(help: "A file holding the query vector, in any vector format.") var file: String?
    @Option(name: .short, help: "How many neighbours (1 to 1000).") var k = 10
    @Flag(help: "One JSON array of {name, distance}.") var json = false

    func validate() throws {
        guard (vector == nil) != (file == nil) else { throw ValidationError("give exactly one of --vector and --file") }
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
        if let vector {
            query = Array(vector.utf8)
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
        }
        // A known extension of --file travels in the name (q.fvecs.query), so binary formats are read as such.
        let known = ["vec", "f32", "npy", "fvecs"]
        let ext = file.flatMap { f in f.split(separator: ".").last.map(String.init) }.flatMap { known.contains($0) ? "." + $0 : nil } ?? ""
        let path = "\(dir)/.vexfs-search-\(getpid())-\(UInt32.random(in: 0...UInt32.max))\(ext).query"
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw UserError("cannot write a query file in \(dir): \(String(cString: strerror(errno)))") }
        defer { unlink(path) }
        let written = query.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
        guard written == query.count else { throw UserError("cannot write the query file") }

        var answer = [UInt8](repeating: 0, count: 1 << 20)
        let n = answer.withUnsafeMutableBytes { vx_lgetxattr(path, "user.vexfs.knn.\(k)", $0.baseAddress, $0.count) }
        guard n >= 0 else {
            switch errno {
            case ENODATA: throw UserError("the query is not a vector (bad number, NaN, empty?)")
            case EINVAL: throw UserError("the query does not fit the collection (wrong dimension?)")
            default: throw UserError("query failed: \(String(cString: strerror(errno)))")
            }
        }
        // Each line is NAME<TAB>DISTANCE with the name escaped (FileName.escaped): split on the last
        // TAB, then give back the real name.
        var hits: [Hit] = []
        for line in answer[0..<n].split(separator: 0x0A) {
            guard let tab = line.lastIndex(of: 0x09), let distance = Float(String(decoding: line[(tab + 1)...], as: UTF8.self)) else {
                throw UserError("the answer has a malformed line")
            }
            let field = String(decoding: line[..<tab], as: UTF8.self)
            guard let bytes = FileName.unescape(field) else { throw UserError("the answer has a malformed name") }
            hits.append(Hit(bytes: bytes, escaped: field, distance: distance))
        }
        if json {
            // Names that are not UTF-8 cannot be JSON strings: those keep their escaped form, and say so.
            let items = hits.map { h in
                let text = String(validating: h.bytes, as: UTF8.self)
                return JSONHit(name: text ?? h.escaped, distance: h.distance, escaped: text == nil ? true : nil)
            }
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
            let data = try encoder.encode(items)
            FileHandle.standardOutput.write(data)
            FileHandle.standardOutput.write(Data("\n".utf8))
        } else {
            // As the attribute gives it: one line per neighbour, whatever bytes the names hold.
            FileHandle.standardOutput.write(Data(answer[0..<n]))
        }
    }
}

struct Hit {
    let bytes: [UInt8]
    let escaped: String
    let distance: Float
}

struct JSONHit: Encodable {
    let name: String
    let distance: Float
    let escaped: Bool?
}
