// `vexfs search`: a similarity query from the command line, made through the mount exactly as a user
// would make it: the query vector goes into a query file of the collection (a `.query` file is never
// indexed and its name is unique to this process), and the answer is its `user.vexfs.knn.K`.
import ArgumentParser
import CLinux
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
        let lines = String(decoding: answer[0..<n], as: UTF8.self).split(separator: "\n")
        if json {
            let items = lines.compactMap { line -> String? in
                let parts = line.split(separator: "\t")
                guard parts.count == 2 else { return nil }
                return "{\"name\":\(jsonString(String(parts[0]))),\"distance\":\(parts[1])}"
            }
            print("[" + items.joined(separator: ",") + "]")
        } else {
            for line in lines { print(line) }
        }
    }
}
