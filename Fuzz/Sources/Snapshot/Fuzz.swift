import CCompress
import FuzzDriver
import Glibc
import VexIndex
import VexKernels
import VexSemantic

/// Any bytes as a collection's snapshot file, read as `vexfs check` and a mount read it (sections,
/// index, graph vector file, catalog against the index): a collection or an error, never a crash.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    guard let saved = try? SavedCollection.read(snapshot: bytes, path: "snapshot", indexDirectory: indexDirectory,
                                                kernels: kernels, memoryLimit: 256 << 20) else { return 0 }
    precondition(saved.vectorCount >= 0 && saved.fileCount >= 0 && saved.vectorCount == saved.index.count + (saved.waiting?.count ?? 0))
    precondition((1...65_536).contains(saved.dimension) && saved.index.dimension == saved.dimension)
    return 0
}

let kernels = try! DistanceKernels.forProcess.get()

/// Where graph snapshots find the vector files they name (`VECF`): a directory of this process,
/// /tmp/vexfs-fuzz-snapshot.PID, holding copies of the seeds' vector files (corpus/SnapshotFiles, or
/// $VEXFS_FUZZ_FILES), so the committed files are never written through a graph's map. Removed at
/// exit; those of processes that crashed (every crash, -fork child and minimising run) at the next
/// start.
let indexDirectory: String = {
    let seeds = getenv("VEXFS_FUZZ_FILES").map { String(cString: $0) }
        ?? String(#filePath.dropLast("Sources/Snapshot/Fuzz.swift".count)) + "corpus/SnapshotFiles"
    let prefix = "vexfs-fuzz-snapshot."
    if let tmp = opendir("/tmp") {
        while let entry = readdir(tmp) {
            let name = entryName(entry)
            guard name.hasPrefix(prefix), let pid = Int32(name.dropFirst(prefix.count)), kill(pid, 0) != 0, errno == ESRCH else { continue }
            removeDirectory("/tmp/" + name)
        }
        closedir(tmp)
    }
    let directory = "/tmp/\(prefix)\(getpid())"
    removeDirectory(directory)
    guard mkdir(directory, 0o700) == 0 else { fatalError("mkdir \(directory): \(String(cString: strerror(errno)))") }
    var copied = 0
    if let dir = opendir(seeds) {
        while let entry = readdir(dir) {
            let name = entryName(entry)
            guard name.hasPrefix("vectors.") else { continue }
            copy(seeds + "/" + name, to: directory + "/" + name)
            copied += 1
        }
        closedir(dir)
    }
    let note = "Snapshot: \(copied) vector files from \(seeds) in \(directory)\n"
    _ = note.withCString { write(2, $0, strlen($0)) }
    atexit { removeDirectory(indexDirectory) }
    return directory
}()

/// The name of a directory entry, read where it lies: a record is only as long as its name, so
/// copying the whole `d_name` array out of the last record of a buffer reads past its end.
private func entryName(_ entry: UnsafeMutablePointer<dirent>) -> String {
    String(cString: UnsafeRawPointer(entry).advanced(by: MemoryLayout<dirent>.offset(of: \dirent.d_name)!).assumingMemoryBound(to: CChar.self))
}

/// Removes `path` and the files in it (it holds no directories).
private func removeDirectory(_ path: String) {
    if let dir = opendir(path) {
        while let entry = readdir(dir) {
            let name = entryName(entry)
            if name != "." && name != ".." { unlink(path + "/" + name) }
        }
        closedir(dir)
    }
    rmdir(path)
}

private func copy(_ from: String, to: String) {
    let input = open(from, O_RDONLY | O_CLOEXEC), output = open(to, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
    defer { close(input); close(output) }
    precondition(input >= 0 && output >= 0, "cannot copy \(from) to \(to)")
    var buffer = [UInt8](repeating: 0, count: 1 << 16)
    while true {
        let n = buffer.withUnsafeMutableBytes { read(input, $0.baseAddress, $0.count) }
        precondition(n >= 0, "cannot read \(from)")
        if n == 0 { break }
        precondition(buffer.withUnsafeBytes { write(output, $0.baseAddress, n) } == n, "cannot write \(to)")
    }
}

/// Mutations that get past the checksums: every piece of a snapshot is LZ4-compressed and CRC-32C
/// checked, so a flipped byte almost never reaches the index or the catalog. Two times in three, one
/// section's decompressed bytes are mutated and the snapshot written again (compressed, summed) as a
/// mount would write it; otherwise, or when the input is no snapshot, libFuzzer's own byte mutation.
@_cdecl("LLVMFuzzerCustomMutator")
public func mutate(_ data: UnsafeMutablePointer<UInt8>, _ size: Int, _ maxSize: Int, _ seed: UInt32) -> Int {
    var random = seed
    func next(_ n: Int) -> Int {
        random = random &* 1_103_515_245 &+ 12_345
        return Int(random >> 8) % n
    }
    guard next(3) != 0,
          var sections = try? parseSnapshot(Array(UnsafeBufferPointer(start: data, count: size)), path: "seed", memoryLimit: 16 << 20),
          !sections.isEmpty else { return LLVMFuzzerMutate(data, size, maxSize) }
    let tags = sections.keys.sorted()
    let tag = tags[next(tags.count)]
    var bytes = sections[tag]!
    let room = bytes.count + 64
    bytes.append(contentsOf: repeatElement(0, count: 64))
    let length = bytes.withUnsafeMutableBufferPointer { LLVMFuzzerMutate($0.baseAddress!, room - 64, room) }
    sections[tag] = Array(bytes[0..<length])
    let file = encode(sections, order: tags)
    guard file.count <= maxSize else { return LLVMFuzzerMutate(data, size, maxSize) }
    file.withUnsafeBufferPointer { data.update(from: $0.baseAddress!, count: file.count) }
    return file.count
}

/// A snapshot file of `sections`, as SnapshotWriter lays it out (pieces of at most 4 MiB).
func encode(_ sections: [String: [UInt8]], order: [String]) -> [UInt8] {
    var out = Array("VEXSNAP1".utf8)
    func put(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) } }
    for tag in order {
        let raw = sections[tag]!
        var code: UInt32 = 0
        for (i, b) in tag.utf8.prefix(4).enumerated() { code |= UInt32(b) << (8 * UInt32(i)) }
        let pieceSize = 4 << 20
        let pieces = (raw.count + pieceSize - 1) / pieceSize
        put(code)
        put(UInt32(pieces))
        for p in 0..<pieces {
            let start = p * pieceSize, n = min(pieceSize, raw.count - start)
            var packed = [UInt8](repeating: 0, count: vx_lz4_bound(n))
            let size = raw.withUnsafeBytes { r in packed.withUnsafeMutableBytes { vx_lz4_compress(r.baseAddress! + start, n, $0.baseAddress, $0.count) } }
            packed.removeLast(packed.count - size)
            put(UInt32(n))
            put(UInt32(size))
            put(packed.withUnsafeBytes { vx_crc32c(0, $0.baseAddress, size) })
            out.append(contentsOf: packed)
        }
    }
    put(0)
    return out
}

@_silgen_name("LLVMFuzzerMutate")
func LLVMFuzzerMutate(_ data: UnsafeMutablePointer<UInt8>, _ size: Int, _ maxSize: Int) -> Int

@_cdecl("Snapshot_main")
public func start(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    _ = indexDirectory
    return runFuzzer(argc, argv, fuzz)
}
