import Foundation
import CLinux
import Glibc
import Testing
import VexIndex
import VexKernels
@testable import VexSemantic
import VexStore

@Suite struct QueryOptionsTests {
    typealias Lent = SemanticLayerTests.Lent
    static let kernels = SemanticLayerTests.kernels

    @Test func optionValuesAreCheckedWithAReason() throws {
        var o = QueryOptions()
        try o.set(.scope, Array("tree\n".utf8))
        try o.set(.radius, Array("0.25".utf8))
        try o.set(.ef, Array("300".utf8))
        try o.set(.filter, Array("name=*.vec\nuser.tag=red=blue\n\n".utf8))
        #expect(o.scope == .tree && o.radius == 0.25 && o.ef == 300)
        #expect(o.conditions == [.name(glob: Array("*.vec".utf8)), .attribute(name: "user.tag", value: Array("red=blue".utf8))])
        for (option, value) in [(QueryOptions.Option.scope, "all"), (.radius, "-1"), (.radius, "nan"), (.radius, "inf"), (.ef, "0"),
                                (.ef, "100001"), (.filter, "tag=red"), (.filter, "user.=x"), (.filter, "name="), (.filter, "user.vexfs.knn=1"),
                                (.filter, "size>3")] {
            #expect(throws: SemanticError.self) { try o.set(option, Array(value.utf8)) }
        }
        #expect(throws: SemanticError.self) { try o.set(.filter, [UInt8](repeating: 0x61, count: QueryOptions.maxFilterBytes + 1)) }
        #expect(throws: SemanticError.self) { try o.set(.scope, [0xFF, 0xFE]) }
        let many = (0...QueryOptions.maxConditions).map { "name=\($0)" }.joined(separator: "\n")
        #expect(throws: SemanticError.self) { try o.set(.filter, Array(many.utf8)) }
    }

    @Test func matchIsAnFTS5ExpressionAndModeOneOfThree() throws {
        var o = QueryOptions()
        #expect(o.mode == .vector && o.match == nil)
        try o.set(.match, Array("\"log rotation\" OR logrot*".utf8))
        try o.set(.mode, Array("hybrid\n".utf8))
        #expect(o.match == "\"log rotation\" OR logrot*" && o.mode == .hybrid)
        try o.set(.mode, Array("keyword".utf8))
        #expect(o.mode == .keyword)
        for (option, value) in [(QueryOptions.Option.match, "AND"), (.match, "\"open"), (.match, "  "), (.match, "a\u{0}b"), (.mode, "bm25"),
                                (.mode, "")] {
            #expect(throws: SemanticError.self) { try o.set(option, Array(value.utf8)) }
        }
        // The reason names the option and what FTS5 found.
        do { try o.set(.match, Array("NOT NOT".utf8)); Issue.record("accepted") } catch { #expect(error.description.contains("user.vexfs.match: fts5")) }
        #expect(throws: SemanticError.self) { try o.set(.match, [UInt8](repeating: 0x61, count: QueryOptions.maxFilterBytes + 1)) }
    }

    @Test func hybridFusesScaledScoresWithTiesByName() {
        let fused = SemanticLayer.fused([("a", 0.1), ("b", 0.2), ("c", 0.3)], [("c", -5), ("d", -4), ("a", -3)])
        // Scaled: a 1, b 0.5, c 0 by meaning; c 1, d 0.5, a 0 by words. a and c tie at 0.5 (by name),
        // b and d at 0.25.
        #expect(fused.map(\.0) == ["a", "c", "b", "d"])
        #expect(fused.map(\.1) == [-0.5, -0.5, -0.25, -0.25])
        // By how much, not only in what order: the words' far best beats meaning's narrow best.
        let far = SemanticLayer.fused([("a", 0.10), ("b", 0.11), ("c", 0.5)], [("b", -20), ("c", -2), ("a", -1)])
        #expect(far.map(\.0) == ["b", "a", "c"])
        // A list of one (or of equal scores) gives each of its names the whole of its half.
        let one = SemanticLayer.fused([("a", 0.3)], [])
        #expect(one.map(\.0) == ["a"] && one.map(\.1) == [-0.5])
        #expect(SemanticLayer.fused([("a", 0.3), ("b", 0.3)], [("b", -1)]).map(\.0) == ["b", "a"])
    }

    @Test func fusionIsScoresOrRankFusionWithItsK() throws {
        var o = QueryOptions()
        #expect(o.fusion == .scores)
        try o.set(.fusion, Array("rrf\n".utf8))
        #expect(o.fusion == .ranks(k: QueryOptions.rankConstant) && o.fusion.name == "rrf:60")
        try o.set(.fusion, Array("rrf:1".utf8))
        #expect(o.fusion == .ranks(k: 1))
        try o.set(.fusion, Array("rrf:10000".utf8))
        #expect(o.fusion == .ranks(k: 10_000))
        try o.set(.fusion, Array("scores".utf8))
        #expect(o.fusion == .scores && o.fusion.name == "scores")
        for bad in ["", "rrf:", "rrf:0", "rrf:10001", "rrf:-5", "rrf:+5", "rrf:6 0", "rrf:1e3", "rrf:٦٠", "RRF", "rank", "scores:2", "rrf:99999999999999999999"] {
            do { try o.set(.fusion, Array(bad.utf8)); Issue.record("accepted \(bad)") } catch { #expect(error.description.contains("user.vexfs.fusion")) }
        }
        #expect(o.fusion == .scores)
    }

    @Test func rankFusionSumsReciprocalRanksWithTiesByName() {
        // By meaning a, b, c; by words c, d, a. With k = 60: a 1/61 + 1/63, c 1/63 + 1/61 (a tie, by
        // name), b 1/62, d 1/62 (a tie).
        let fused = SemanticLayer.fused([("a", 0.1), ("b", 0.2), ("c", 0.3)], [("c", -5), ("d", -4), ("a", -3)], by: .ranks(k: 60))
        #expect(fused.map(\.0) == ["a", "c", "b", "d"])
        #expect(fused.map(\.1) == [-Float(1.0 / 61 + 1.0 / 63), -Float(1.0 / 61 + 1.0 / 63), -Float(1.0 / 62), -Float(1.0 / 62)])
        // Only places count: the words' far best ties meaning's narrow best (by name), where by
        // scores it wins.
        let far = ([("a", Float(0.10)), ("b", 0.11), ("c", 0.5)], [("b", Float(-20)), ("a", -2), ("c", -1)])
        #expect(SemanticLayer.fused(far.0, far.1, by: .ranks(k: 60)).map(\.0) == ["a", "b", "c"])
        #expect(SemanticLayer.fused(far.0, far.1, by: .scores).map(\.0) == ["b", "a", "c"])
        // k weighs the first places: with k = 1 each list's first beats a name fourth in both; with
        // k = 60 being in both counts for more.
        let lists = ([("x", Float(0.1)), ("p", 0.2), ("q", 0.3), ("z", 0.4)], [("w", Float(-9)), ("r", -8), ("s", -7), ("z", -6)])
        #expect(SemanticLayer.fused(lists.0, lists.1, by: .ranks(k: 1)).map(\.0) == ["w", "x", "z", "p", "r", "q", "s"])
        #expect(SemanticLayer.fused(lists.0, lists.1, by: .ranks(k: 60)).map(\.0) == ["z", "w", "x", "p", "r", "q", "s"])
        // Equal scores rank by name, whatever order the list came in: the same answer either way.
        let one = SemanticLayer.fused([("m", 0.2), ("k", 0.2), ("z", 0.1)], [("k", -1), ("m", -1)], by: .ranks(k: 60))
        let other = SemanticLayer.fused([("z", 0.1), ("k", 0.2), ("m", 0.2)], [("m", -1), ("k", -1)], by: .ranks(k: 60))
        #expect(one.map(\.0) == other.map(\.0) && one.map(\.1) == other.map(\.1))
        #expect(one.map(\.0) == ["k", "m", "z"])
        // A name twice in a list counts once, at its best place; empty lists fuse to nothing.
        #expect(SemanticLayer.fused([("a", 0.1), ("a", 0.2)], [], by: .ranks(k: 60)).map(\.1) == [-Float(1.0 / 61)])
        #expect(SemanticLayer.fused([], [], by: .ranks(k: 60)).isEmpty)
    }

    @Test func knnNamesKAndPages() throws {
        #expect(try SemanticLayer.knnRequest("") == (10, nil))
        #expect(try SemanticLayer.knnRequest(".7") == (7, nil))
        #expect(try SemanticLayer.knnRequest(".1000.from.35") == (1000, 35))
        #expect(try SemanticLayer.knnRequest(".from.0") == (10, 0))
        for bad in [".0", ".1001", ".5.from", ".5.from.-1", ".5.to.3", ".x"] {
            #expect(throws: SemanticError.self) { try SemanticLayer.knnRequest(Substring(bad)) }
        }
        #expect(throws: SemanticError.noData) { try SemanticLayer.knnRequest("x") }
    }

    @Test func pagesAreWholeLinesThatAddUpToTheAnswer() throws {
        var answer: [UInt8] = []
        for i in 0..<1000 { answer += Array("\(String(repeating: "n", count: 250 + i % 700))\(i)\t0.\(i)\n".utf8) }
        #expect(throws: SemanticError.tooBig) { try SemanticLayer.page(answer, from: nil) }
        var joined: [UInt8] = [], line = 0, pages = 0
        while true {
            let page = try SemanticLayer.page(answer, from: line)
            if page.isEmpty { break }
            #expect(page.count <= SemanticLayer.maxAnswerBytes && page.last == 0x0A)
            joined += page
            line += page.filter { $0 == 0x0A }.count
            pages += 1
        }
        #expect(joined == answer && pages > 5)
        #expect(try SemanticLayer.page(Array("a\t1\n".utf8), from: nil) == Array("a\t1\n".utf8))
    }

    /// The exact answer: every file's vector against the query, with `admit` deciding who may answer.
    func bruteForce(_ vectors: [String: [Float]], _ q: [Float], k: Int, admit: (String) -> Bool = { _ in true }) -> [String] {
        var scored: [(name: String, d: Float)] = []
        for (name, v) in vectors where admit(name) {
            var d: Float = 0
            for i in 0..<v.count { d += (v[i] - q[i]) * (v[i] - q[i]) }
            scored.append((name, d))
        }
        scored.sort { $0.d < $1.d || ($0.d == $1.d && $0.name < $1.name) }
        return scored.prefix(k).map(\.name)
    }

    @Test func filtersAnswerKOfWhatPassesOnTheGraphAndBySubset() throws {
        let store = temporaryStore()
        defer { StatePaths.removeTree(store) }
        mkdir(store + "/c", 0o755)
        let c = Lent(store, "c")
        // Scans only below 100 vectors: the half walks the graph, the hundredth is scanned.
        let layer = SemanticLayer(storeRoot: store, kernels: Self.kernels, indexKind: .hnsw, exactScanRows: 100)
        var rng = SystemRandomNumberGenerator()
        var vectors: [String: [Float]] = [:]
        for i in 0..<3000 {
            let v = (0..<8).map { _ in Float.random(in: -1...1, using: &rng) }
            let name = "\(i % 2 == 0 ? "even" : "odd")\(i).vec"
            vectors[name] = v
            put(store + "/c/" + name, v.map { "\($0)" }.joined(separator: " "))
            if i % 100 == 0 { _ = vx_lsetxattr(store + "/c/" + name, "user.tag", "rare", 4, 0) }
            layer.written(c.ref, FileName(name), inode: c.inode(name))
        }
        let q = (0..<8).map { _ in Float.random(in: -1...1, using: &rng) }
        put(store + "/c/q.query", q.map { "\($0)" }.joined(separator: " "))
        // A half (the graph walk) and a hundredth (the subset scan), each against brute force.
        try layer.setFileAttribute("user.vexfs.filter", file: c.file("q.query"), value: Array("name=even*\n".utf8))
        try layer.setFileAttribute("user.vexfs.ef", file: c.file("q.query"), value: Array("400".utf8))
        let half = try SemanticLayerTests().ask(layer, "user.vexfs.knn.10", c.file("q.query"))
        let exactHalf = bruteForce(vectors, q, k: 10) { $0.hasPrefix("even") }
        #expect(Set(half).intersection(exactHalf).count >= 9)
        #expect(half.allSatisfy { $0.hasPrefix("even") })
        try layer.setFileAttribute("user.vexfs.filter", file: c.file("q.query"), value: Array("user.tag=rare".utf8))
        let rare = try SemanticLayerTests().ask(layer, "user.vexfs.knn.10", c.file("q.query"))
        let names = Set(vectors.keys.filter { Int($0.drop { !$0.isNumber }.dropLast(4))! % 100 == 0 })
        #expect(rare == bruteForce(vectors, q, k: 10) { names.contains($0) })
        // Both at once: all must hold.
        try layer.setFileAttribute("user.vexfs.filter", file: c.file("q.query"), value: Array("user.tag=rare\nname=odd*".utf8))
        #expect(try SemanticLayerTests().ask(layer, "user.vexfs.knn.10", c.file("q.query")).isEmpty)
        // A bad value is refused, never stored, and the status says why.
        #expect(throws: SemanticError.self) { try layer.setFileAttribute("user.vexfs.radius", file: c.file("q.query"), value: Array("far".utf8)) }
        let status = String(decoding: try layer.fileAttribute("user.vexfs.status", file: c.file("q.query")), as: UTF8.self)
        #expect(status.contains("user.vexfs.radius"))
        #expect(throws: SemanticError.noData) { try layer.fileAttribute("user.vexfs.radius", file: c.file("q.query")) }
        // Options belong to query files.
        #expect(throws: SemanticError.self) { try layer.setFileAttribute("user.vexfs.scope", file: c.file("even0.vec"), value: Array("tree".utf8)) }
        layer.close()
    }

    @Test func treeScopeRadiusAndRows() throws {
        let store = temporaryStore()
        defer { StatePaths.removeTree(store) }
        chmod(store, 0o755)
        for d in ["p", "p/2024", "p/2024/summer", "p/other", "p/secret"] { mkdir(store + "/" + d, 0o755) }
        chmod(store + "/p/secret", 0o700)
        let layer = SemanticLayer(storeRoot: store, kernels: Self.kernels)
        let files = [("p", "top.vec", "0 0"), ("p/2024", "a.vec", "1 0"), ("p/2024/summer", "img3.vec", "0.5 0"),
                     ("p/other", "three.vec", "1 1 1"), ("p/secret", "s.vec", "0.1 0")]
        for (d, name, v) in files {
            put(store + "/\(d)/\(name)", v)
            let lent = Lent(store, d)
            layer.written(lent.ref, FileName(name), inode: lent.inode(name))
        }
        let p = Lent(store, "p")
        put(store + "/p/q.query", "0 0")
        #expect(try SemanticLayerTests().ask(layer, "user.vexfs.knn.10", p.file("q.query")) == ["top.vec"])
        try layer.setFileAttribute("user.vexfs.scope", file: p.file("q.query"), value: Array("tree".utf8))
        #expect(try SemanticLayerTests().ask(layer, "user.vexfs.knn.10", p.file("q.query"))
                == ["top.vec", "secret/s.vec", "2024/summer/img3.vec", "2024/a.vec"])
        // Another user does not see into a directory they may not enter.
        let mallory = Caller(uid: 4242, gid: 4242)
        #expect(try SemanticLayerTests().ask(layer, "user.vexfs.knn.10", p.file("q.query"), as: mallory)
                == ["top.vec", "2024/summer/img3.vec", "2024/a.vec"])
        try layer.setFileAttribute("user.vexfs.radius", file: p.file("q.query"), value: Array("0.5".utf8))
        #expect(try SemanticLayerTests().ask(layer, "user.vexfs.knn.10", p.file("q.query")) == ["top.vec", "secret/s.vec", "2024/summer/img3.vec"])
        // Two rows: two blocks, one empty line between.
        var fvecs: [UInt8] = []
        for row: [Float] in [[0, 0], [1, 0]] {
            withUnsafeBytes(of: Int32(2)) { fvecs += $0 }
            for x in row { withUnsafeBytes(of: x) { fvecs += $0 } }
        }
        let fd = open(store + "/p/rows.fvecs.query", O_WRONLY | O_CREAT, 0o644)
        _ = fvecs.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
        try layer.setFileAttribute("user.vexfs.scope", file: p.file("rows.fvecs.query"), value: Array("tree".utf8))
        let text = String(decoding: try layer.fileAttribute("user.vexfs.knn.2", file: p.file("rows.fvecs.query")), as: UTF8.self)
        var blocks: [[String]] = [[]]
        for line in text.split(separator: "\n", omittingEmptySubsequences: false).dropLast() {
            if line.isEmpty { blocks.append([]) } else { blocks[blocks.count - 1].append(String(line.split(separator: "\t")[0])) }
        }
        #expect(blocks == [["top.vec", "secret/s.vec"], ["2024/a.vec", "2024/summer/img3.vec"]])
        layer.close()
    }
}

@Suite struct JournalViewTests {
    @Test func eventsAreRenderedAsOneJSONLineEachAndKeptAsValues() throws {
        let event = JournalEvent(.rename, path: FileName(Array("a\tb\"c".utf8) + [1, 0xFF] + Array(".vec".utf8)), to: "d/e.vec",
                                 detail: ["z": "last", "a": "fir\nst"], at: timespec(tv_sec: 1_733_500_000, tv_nsec: 7_000_000))
        #expect(event.line == "{\"time\":1733500000.007,\"event\":\"rename\",\"path\":\"a\\\\tb\\\"c\\\\x01\\\\xff.vec\",\"to\":\"d/e.vec\",\"a\":\"fir\\nst\",\"z\":\"last\"}\n")
        var w = ByteWriter()
        event.encode(into: &w)
        var r = ByteReader(w.bytes)
        #expect(try JournalEvent.decode(from: &r) == event)
        // A segment written as JSON lines before events were values reads back as the same events.
        #expect(Journal.decode(Array(event.line.utf8) + Array(event.line.utf8)) == [event, event])
        #expect(Journal.decode(Journal.magic + w.bytes + [1, 2, 3]) == [event])
    }

    @Test func aUserSeesEventsOnlyOnPathsTheyMayRead() throws {
        let store = temporaryStore()
        defer { StatePaths.removeTree(store) }
        chmod(store, 0o755)
        mkdir(store + "/open", 0o755)
        mkdir(store + "/closed", 0o700)
        put(store + "/open/a.vec", "1 2")
        put(store + "/closed/b.vec", "1 2")
        put(store + "/mine.vec", "1 2")
        chmod(store + "/mine.vec", 0o600)
        chown(store + "/mine.vec", 4242, 4242)
        let layer = SemanticLayer(storeRoot: store, kernels: SemanticLayerTests.kernels)
        for path in ["open/a.vec", "closed/b.vec", "mine.vec", "open/gone.vec", "closed/gone.vec"] { layer.journal.record(.create, FileName(path)) }
        layer.journal.record(.rename, "open/a.vec", to: "closed/b.vec")
        func paths(_ who: Caller) throws -> [String] {
            try String(decoding: layer.journal(visibleTo: who), as: UTF8.self).split(separator: "\n").map {
                try #require(JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any])["path"] as! String
            }
        }
        #expect(try paths(Caller(uid: 4242, gid: 4242)) == ["open/a.vec", "mine.vec", "open/gone.vec"])
        #expect(try paths(Caller(uid: 4343, gid: 4343)) == ["open/a.vec", "open/gone.vec"])
        #expect(try paths(.root).count == 6)
        layer.close()
    }
}
