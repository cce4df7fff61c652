import Testing
import VexIndex
@testable import VexSemantic
import VexStore

/// The catalog stored in every snapshot: read back as written, and damage of any kind refused with
/// its reason, never a trap or an allocation the bytes name.
@Suite struct CatalogTests {
    static let files: [FileName: FileRecord] = [
        "a.vec": FileRecord(inode: 11, size: 12, mtime: 1, ctime: 2, firstLabel: 1, rows: 1, status: "indexed: 1 vector"),
        "b.npy": FileRecord(inode: 12, size: 800, mtime: 3, ctime: 4, firstLabel: 2, rows: 50, status: "indexed: 50 vectors"),
        "t.txt": FileRecord(inode: 13, size: 90, mtime: 5, ctime: 6, firstLabel: 60, rows: 2, status: "indexed: 2 passages",
                            passages: [0..<40, 40..<90]),
        "bad.vec": FileRecord(inode: 14, size: 3, mtime: 7, ctime: 8, firstLabel: 0, rows: 0, status: "not indexed: empty"),
    ]

    @Test func readsBackWhatItWrote() throws {
        let bytes = Catalog.encode(Self.files, nextLabel: 62)
        let (files, next) = try Catalog.decode(bytes, rows: 53)
        #expect(files == Self.files && next == 62)
    }

    @Test func everyTruncationIsRefused() {
        let bytes = Catalog.encode(Self.files, nextLabel: 62)
        for n in 0..<bytes.count {
            #expect(throws: PersistenceError.self) { try Catalog.decode(Array(bytes.prefix(n)), rows: 53) }
        }
    }

    @Test func everyFlippedByteIsRefusedOrReadAsSomethingConsistent() {
        let bytes = Catalog.encode(Self.files, nextLabel: 62)
        for i in 0..<bytes.count {
            for bit in [0, 3, 7] {
                var damaged = bytes
                damaged[i] ^= 1 << bit
                // A flip in a size or status may still make a consistent catalog; the index check and
                // the files decide then. What must never happen is a trap.
                if let (files, next) = try? Catalog.decode(damaged, rows: 53) {
                    #expect(files.values.allSatisfy { $0.rows == 0 || $0.firstLabel + UInt64($0.rows) <= next })
                    #expect(files.values.reduce(0) { $0 + $1.rows } <= 53)
                }
            }
        }
    }

    @Test func labelsThatOverlapOrPassTheIndexAreRefused() {
        var overlapping = Self.files
        overlapping["c.vec"] = FileRecord(inode: 15, size: 12, mtime: 1, ctime: 2, firstLabel: 40, rows: 1, status: "")
        #expect(throws: PersistenceError.corrupt(path: "catalog", reason: "two files hold label 40", kind: .catalog)) {
            try Catalog.decode(Catalog.encode(overlapping, nextLabel: 62), rows: 100)
        }
        // More rows than the index holds.
        #expect(throws: PersistenceError.self) { try Catalog.decode(Catalog.encode(Self.files, nextLabel: 62), rows: 52) }
        // Labels at or past the next label to give.
        #expect(throws: PersistenceError.self) { try Catalog.decode(Catalog.encode(Self.files, nextLabel: 61), rows: 53) }
        // A huge row count, which once became a loop over every label it named.
        var huge = Self.files
        huge["b.npy"]!.rows = Int.max
        #expect(throws: PersistenceError.self) { try Catalog.decode(Catalog.encode(huge, nextLabel: .max), rows: 53) }
    }

    @Test(arguments: [[UInt8]("../x".utf8), [UInt8](".".utf8), [UInt8](), [UInt8]("a/b".utf8), [0x61, 0]])
    func namesThatAreNotOneEntryAreRefused(_ name: [UInt8]) {
        let bytes = Catalog.encode([FileName(name): Self.files["a.vec"]!], nextLabel: 2)
        #expect(throws: PersistenceError.self) { try Catalog.decode(bytes, rows: 1) }
    }

    @Test func aNewerFormatIsRefusedAsANewerVersion() {
        var bytes = Catalog.encode(Self.files, nextLabel: 62)
        bytes[0] = 3
        #expect { try Catalog.decode(bytes, rows: 53) } throws: { ($0 as? PersistenceError)?.rejection == .version }
    }
}
