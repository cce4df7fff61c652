import CLinux
import Glibc
import Testing
import VexIndex
import VexStore
@testable import VexSemantic

@Suite struct SharedStoreTests {
    /// A line another mount logged names a collection and a file; anything else is skipped: the
    /// logs are on a filesystem other machines (and their root users) write.
    @Test func parsesWhatAMountLogsAndNothingElse() throws {
        let ok = try #require(SharedStore.parse(ArraySlice(Array("1099511627776\tr\tdata\\tx.npy\tdocs/2024".utf8))))
        #expect(ok.0 == 1_099_511_627_776 && ok.1 == .file && ok.2 == FileName(Array("data\tx.npy".utf8)) && ok.3 == FileName("docs/2024"))
        let settings = try #require(SharedStore.parse(ArraySlice(Array("7\ts\t\t.".utf8))))
        #expect(settings.1 == .settings && settings.2.isEmpty && settings.3 == FileName([]))
        let unplaced = try #require(SharedStore.parse(ArraySlice(Array("7\tr\ta\t".utf8))))
        #expect(unplaced.3 == nil)
        for bad in ["7\tr\t\t", "7\tr\ta/b\t", "7\tr\t..\t", "x\tr\ta\t", "7\tq\ta\t", "7\tr\ta", "-1\tr\ta\t",
                    "7\tr\tbad\\\t", "7\tr\t\\x00\t", "7\tr\ta\t../x", "7\tr\ta\tx//y", "7\tr\ta\t/x"] {
            #expect(SharedStore.parse(ArraySlice(Array(bad.utf8))) == nil, "\(bad)")
        }
    }

    /// What one mount notes, another reads back as it was, whatever bytes the name holds.
    @Test func aNotedChangeReadsBackAsItWas() throws {
        let store = temporaryStore()
        defer { StatePaths.removeTree(store) }
        mkdir(store + "/.vexfs", 0o700)
        let mine = try #require(SharedStore(storeRoot: store, id: "a", metrics: SharedMetrics()))
        let name = FileName([0x66, 0x0A, 0x09, 0xFF, 0x23, 0x5C])
        mine.note(.file, collection: 42, path: FileName("a/b"), name: name)
        mine.note(.settings, collection: 43, path: nil)
        let bytes = try #require(try? readFile(mine.changes + "/" + mine.logName, limit: 4096))
        let lines = bytes.split(separator: 0x0A)
        #expect(lines.count == 2)
        let first = try #require(SharedStore.parse(lines[0]))
        #expect(first.0 == 42 && first.1 == .file && first.2 == name && first.3 == FileName("a/b"))
        #expect(SharedStore.parse(lines[1])?.1 == .settings)
        // A second start of the same id begins a new log; the old one stays for the others to read.
        let again = try #require(SharedStore(storeRoot: store, id: "a", metrics: SharedMetrics()))
        #expect(Set((try? StatePaths.entries(again.changes))?.files ?? []) == [mine.logName, again.logName])
        #expect(again.offsets[mine.logName] == bytes.count, "what the earlier one logged is not applied again")
    }

    /// A running mount holds its log: anyone else's lock on it fails until the mount is gone.
    @Test func aLogIsHeldWhileItsMountRuns() throws {
        let store = temporaryStore()
        defer { StatePaths.removeTree(store) }
        mkdir(store + "/.vexfs", 0o700)
        var mine = try #require(SharedStore(storeRoot: store, id: "a", metrics: SharedMetrics()))
        let path = mine.changes + "/" + mine.logName
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        defer { close(fd) }
        #expect(vx_flock(fd, LOCK_EX | LOCK_NB) != 0)
        mine = try #require(SharedStore(storeRoot: store, id: "b", metrics: SharedMetrics()))
        #expect(vx_flock(fd, LOCK_EX | LOCK_NB) == 0, "the first mount is gone: its log is over")
    }

    /// How far a mount read the others' logs reads back as it was written; a torn last line is not
    /// counted as something to read.
    @Test func cursorsAndWholeLines() throws {
        let store = temporaryStore()
        defer { StatePaths.removeTree(store) }
        mkdir(store + "/.vexfs", 0o700)
        let mine = try #require(SharedStore(storeRoot: store, id: "a", metrics: SharedMetrics()))
        #expect(mine.cursor(of: mine.logName) == nil)
        mine.offsets = ["b.1.log": 120, "c.2.log": 0]
        mine.writeCursor()
        #expect(mine.cursor(of: mine.logName) == ["b.1.log": 120, "c.2.log": 0])
        #expect(SharedStore.cursorName(of: "b.17ff.log") == "b.17ff.read")
        let path = mine.changes + "/torn.log"
        for (text, whole) in [("", 0), ("1\tr\ta\t\n", 7), ("1\tr\ta\t\n2\tr\tb", 7), ("no end", 0)] {
            let fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
            defer { close(fd) }
            _ = Array(text.utf8).withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            #expect(SharedStore.wholeLines(fd, size: text.utf8.count) == whole, "\(text)")
        }
    }
}
