import Glibc
import Testing
@testable import VexKeyword

func scratch(_ name: String) -> String {
    var template = Array("/tmp/vexkeyword-XXXXXX".utf8CString)
    let dir = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)) }
    return dir + "/" + name
}

@Suite struct KeywordIndexTests {
    func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }

    @Test func findsWordsRankedByBM25AndFollowsChanges() throws {
        let index = try KeywordIndex(path: scratch("keywords.sqlite"))
        try index.put(bytes("a.txt"), signature: [1], passages: ["open with O_NOFOLLOW to refuse a symlink", "nothing here"])
        try index.put(bytes("b.txt"), signature: [2], passages: ["O_NOFOLLOW O_NOFOLLOW symlink symlink"])
        try index.put(bytes("c.txt"), signature: [3], passages: ["an unrelated text about cats"])
        let hits = try index.search("O_NOFOLLOW", limit: 10)
        #expect(hits.map { String(decoding: $0.name, as: UTF8.self) } == ["b.txt", "a.txt"])
        #expect(hits[0].score < hits[1].score && hits[0].passages == 1 && hits[1].row == 0 && hits[1].passages == 2)
        // A phrase, NOT, a prefix.
        #expect(try index.search("\"refuse a symlink\"", limit: 10).map(\.name) == [bytes("a.txt")])
        #expect(try index.search("symlink NOT refuse", limit: 10).map(\.name) == [bytes("b.txt")])
        #expect(try index.search("unrel*", limit: 10).map(\.name) == [bytes("c.txt")])
        // Replaced, renamed, removed.
        try index.put(bytes("b.txt"), signature: [4], passages: ["now about dogs"])
        #expect(try index.search("O_NOFOLLOW", limit: 10).map(\.name) == [bytes("a.txt")])
        #expect(index.signature(of: bytes("b.txt")) == [4])
        try index.rename(bytes("a.txt"), to: bytes("d.txt"))
        #expect(try index.search("O_NOFOLLOW", limit: 10).map(\.name) == [bytes("d.txt")])
        try index.remove(bytes("d.txt"))
        #expect(try index.search("O_NOFOLLOW", limit: 10).isEmpty)
        #expect(index.count == 2)
        #expect(try index.files() == [bytes("b.txt"): [4], bytes("c.txt"): [3]])
    }

    @Test func severalIndexesRankAsOneHoldingEveryPassage() throws {
        let texts = [("a1", "zebra crossing at the corner of the street"), ("a2", "a zebra and another zebra"), ("a3", "street lights"),
                     ("b1", "zebra"), ("b2", "cats and dogs and cats"), ("b3", "the street of cats, a long street with many many houses"),
                     ("b4", "nothing to see here")]
        let a = try KeywordIndex(path: scratch("a.sqlite")), b = try KeywordIndex(path: scratch("b.sqlite"))
        let one = try KeywordIndex(path: scratch("one.sqlite"))
        for (name, text) in texts {
            try (name.hasPrefix("a") ? a : b).put(bytes(name), signature: [1], passages: [text])
            try one.put(bytes(name), signature: [1], passages: [text])
        }
        for expression in ["\"zebra\" OR \"street\"", "cats", "\"the street\" OR zeb* OR nothing", "zebra AND street", "unheard", "house NOT zebra"] {
            let sums = try a.statistics(expression) + b.statistics(expression)
            #expect(sums == (try one.statistics(expression)), "\(expression)")
            let ranking = KeywordIndex.Ranking(sums)
            let merged = try (a.search(expression, ranking: ranking, limit: nil) + b.search(expression, ranking: ranking, limit: nil))
                .sorted { $0.score < $1.score || ($0.score == $1.score && $0.name.lexicographicallyPrecedes($1.name)) }
            let whole = try one.search(expression, limit: nil)
            #expect(merged.map(\.name) == whole.map(\.name), "\(expression)")
            for (m, w) in zip(merged, whole) { #expect(abs(m.score - w.score) < 1e-9, "\(expression)") }
            // One table ranked by its own statistics scores as bm25() does.
            let own = try one.search(expression, ranking: KeywordIndex.Ranking(one.statistics(expression)), limit: nil)
            #expect(own.map(\.name) == whole.map(\.name) && zip(own, whole).allSatisfy { abs($0.score - $1.score) < 1e-9 })
        }
        // An empty index adds nothing; passages without a word add passages only.
        let empty = try KeywordIndex(path: scratch("empty.sqlite"))
        #expect(try empty.statistics("zebra") == KeywordIndex.Statistics())
        try empty.put(bytes("blank"), signature: [1], passages: [" ... ", "--"])
        #expect(try empty.statistics("zebra") == KeywordIndex.Statistics(passages: 2))
    }

    @Test func inspectionFindsWhatIsKeptAndEveryKindOfDamage() throws {
        let path = scratch("keywords.sqlite")
        let index = try KeywordIndex(path: path)
        try index.put(bytes("a.txt"), signature: [1], passages: ["one passage about zebras", "and another about lions"])
        try index.put(bytes("b.txt"), signature: [2], passages: ["cats"])
        #expect(try KeywordIndex.inspect(path: path) == [bytes("a.txt"): .init(signature: [1], passages: 2), bytes("b.txt"): .init(signature: [2], passages: 1)])
        #expect(throws: SQLiteError.self) { try KeywordIndex.inspect(path: scratch("absent.sqlite")) }
        // Each damage on a copy of the sound index.
        let damages = [
            "DELETE FROM passage WHERE name = CAST('a.txt' AS BLOB) AND row = 1",  // a file short of a passage
            "UPDATE passage SET row = 5 WHERE row = 1",  // passages numbered wrong
            "DELETE FROM body WHERE rowid = (SELECT max(id) FROM passage)",  // a passage without its text
            "INSERT INTO passage(name, row) VALUES (CAST('gone.txt' AS BLOB), 0)",  // a passage of no file
            "UPDATE body_data SET block = substr(block, 1, length(block) - 2) WHERE id > 10",  // FTS5's own data
        ]
        for damage in damages {
            let copy = scratch("keywords.sqlite")
            let bytes = try readAll(path)
            let fd = open(copy, O_CREAT | O_WRONLY, 0o600)
            _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            close(fd)
            try SQLiteConnection(copy).run(damage)
            #expect(throws: SQLiteError.self, "\(damage)") { try KeywordIndex.inspect(path: copy) }
        }
    }

    func readAll(_ path: String) throws -> [UInt8] {
        // The index's writes are in its log until a checkpoint: one now, so the file alone is whole.
        try SQLiteConnection(path).run("PRAGMA wal_checkpoint(TRUNCATE)")
        let fd = open(path, O_RDONLY)
        defer { close(fd) }
        var out: [UInt8] = [], buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = read(fd, &buffer, buffer.count)
            if n <= 0 { break }
            out += buffer[..<n]
        }
        return out
    }

    @Test func persistsAndSetsDamageAside() throws {
        let path = scratch("keywords.sqlite")
        do {
            let index = try KeywordIndex(path: path)
            try index.put(bytes("a.txt"), signature: [9], passages: ["kept across an open"])
        }
        let again = try KeywordIndex(path: path)
        #expect(again.setAside == nil)
        #expect(try again.search("kept", limit: 5).map(\.name) == [bytes("a.txt")])
        // Garbage where the index was: set aside, and an empty index in its place.
        let bad = scratch("keywords.sqlite")
        let fd = open(bad, O_CREAT | O_WRONLY, 0o600)
        _ = Array(repeating: UInt8(0x41), count: 8192).withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
        let fresh = try KeywordIndex(path: bad)
        #expect(fresh.setAside != nil)
        #expect(fresh.count == 0)
        #expect(access(bad + ".bad", F_OK) == 0)
        // SQLite, but tables of another shape: set aside too.
        let foreign = scratch("keywords.sqlite")
        try SQLiteConnection(foreign).run("CREATE TABLE file(x); CREATE TABLE passage(y)")
        let other = try KeywordIndex(path: foreign)
        #expect(other.setAside != nil)
        try other.put(bytes("a.txt"), signature: [1], passages: ["works again"])
        #expect(try other.search("works", limit: 1).count == 1)
        let cache = scratch("cache.sqlite")
        try SQLiteConnection(cache).run("CREATE TABLE vector(key)")
        #expect(try EmbeddingCache(path: cache, model: "m", chunk: 1).setAside != nil)
    }

    @Test func badExpressionsAreRefusedWithAReason() {
        #expect(KeywordIndex.problem(in: "cats AND dogs") == nil)
        #expect(KeywordIndex.problem(in: "\"a phrase\" OR pre*") == nil)
        #expect(KeywordIndex.problem(in: "AND AND") != nil)
        #expect(KeywordIndex.problem(in: "\"unterminated") != nil)
        #expect(KeywordIndex.problem(in: "(") != nil)
    }

    @Test func aQuestionBecomesAnyOfItsWords() {
        #expect(KeywordIndex.anyWord(of: "Why does O_NOFOLLOW fail?") == "\"Why\" OR \"does\" OR \"O\" OR \"NOFOLLOW\" OR \"fail\"")
        #expect(KeywordIndex.anyWord(of: " ?! ") == nil)
        // Every such expression is one FTS5 accepts, whatever the words.
        #expect(KeywordIndex.problem(in: KeywordIndex.anyWord(of: "AND OR NOT \" * ( near")!) == nil)
    }

    @Test func answersDoNotDependOnArrivalOrder() throws {
        let texts = (0..<20).map { ("f\($0).txt", "same words same words") }
        let one = try KeywordIndex(path: scratch("a.sqlite")), two = try KeywordIndex(path: scratch("b.sqlite"))
        for (n, t) in texts { try one.put(bytes(n), signature: [], passages: [t]) }
        for (n, t) in texts.reversed() { try two.put(bytes(n), signature: [], passages: [t]) }
        let all = try one.search("words", limit: nil)
        #expect(try all == two.search("words", limit: 20))
        // Pages put together are the whole answer.
        #expect(try one.search("words", offset: 0, limit: 7) + one.search("words", offset: 7, limit: 7) + one.search("words", offset: 14, limit: 7) == all)
    }
}

@Suite struct EmbeddingCacheTests {
    @Test func sha256MatchesTheStandardVectors() {
        func hex(_ b: [UInt8]) -> String { b.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined() }
        #expect(hex(SHA256.hash(Array("abc".utf8))) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(hex(SHA256.hash([UInt8]())) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        let long = Array("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8)
        #expect(hex(SHA256.hash(long)) == "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
    }

    @Test func keepsVectorsByTextModelAndChunking() throws {
        let path = scratch("cache.sqlite")
        let cache = try EmbeddingCache(path: path, model: "m", chunk: 100)
        #expect(cache.recall(["one", "two"], owner: 0) == [nil, nil])
        cache.keep(["one"], [[1, 2, 3]], owner: 0)
        #expect(cache.recall(["one", "two"], owner: 0) == [[1, 2, 3], nil])
        // Another model or another chunking: not the same vectors.
        #expect(try EmbeddingCache(path: path, model: "other", chunk: 100).recall(["one"], owner: 0) == [nil])
        #expect(try EmbeddingCache(path: path, model: "m", chunk: 50).recall(["one"], owner: 0) == [nil])
        // Kept across an open.
        #expect(try EmbeddingCache(path: path, model: "m", chunk: 100).recall(["one"], owner: 0) == [[1, 2, 3]])
    }

    @Test func questionsAreKeptApartFromPassagesByQueryModel() throws {
        let path = scratch("cache.sqlite")
        let cache = try EmbeddingCache(path: path, model: "m", chunk: 100, questionModel: "q")
        cache.keep(["how to rotate logs"], [[1, 2]], owner: 0)
        // The same words as a question are not the passage's vector (another model embeds them).
        #expect(cache.recall(question: "how to rotate logs", owner: 0) == nil)
        cache.keep(question: "how to rotate logs", [3, 4], owner: 0)
        #expect(cache.recall(question: "how to rotate logs", owner: 0) == [3, 4])
        #expect(cache.recall(["how to rotate logs"], owner: 0) == [[1, 2]])
        // Kept across an open, for the same query model only (the chunking does not matter to questions).
        #expect(try EmbeddingCache(path: path, model: "m", chunk: 50, questionModel: "q").recall(question: "how to rotate logs", owner: 0) == [3, 4])
        #expect(try EmbeddingCache(path: path, model: "m", chunk: 100, questionModel: "other").recall(question: "how to rotate logs", owner: 0) == nil)
        #expect(cache.usage.passages == 2)
    }

    @Test func oneUsersVectorsNeverAnswerForAnothers() throws {
        let cache = try EmbeddingCache(path: scratch("cache.sqlite"), model: "m", chunk: 100)
        cache.keep(["the secret plan"], [[1, 2]], owner: 1000)
        cache.keep(question: "where is the plan", [3, 4], owner: 1000)
        #expect(cache.recall(["the secret plan"], owner: 1001) == [nil])
        #expect(cache.recall(question: "where is the plan", owner: 1001) == nil)
        #expect(cache.recall(["the secret plan"], owner: 0) == [nil])
        #expect(cache.recall(["the secret plan"], owner: 1000) == [[1, 2]])
        #expect(cache.recall(question: "where is the plan", owner: 1000) == [3, 4])
    }

    @Test func theLeastRecentlyUsedGoPastTheBound() throws {
        // Room for three vectors of four numbers.
        let cache = try EmbeddingCache(path: scratch("cache.sqlite"), model: "m", chunk: 1, maxBytes: 48)
        cache.keep(["a", "b", "c"], [[1, 1, 1, 1], [2, 2, 2, 2], [3, 3, 3, 3]], owner: 0)
        _ = cache.recall(["a"], owner: 0)
        cache.keep(["d"], [[4, 4, 4, 4]], owner: 0)
        #expect(cache.recall(["a", "b", "c", "d"], owner: 0) == [[1, 1, 1, 1], nil, [3, 3, 3, 3], [4, 4, 4, 4]])
        #expect(cache.usage.passages == 3 && cache.usage.bytes == 48)
    }

    @Test func aDamagedRowIsAMissNeverAWrongVector() throws {
        let path = scratch("cache.sqlite")
        let cache = try EmbeddingCache(path: path, model: "m", chunk: 1)
        cache.keep(["x"], [[1, 2]], owner: 0)
        // Flip the stored vector behind the cache's back.
        let other = try SQLiteConnection(path)
        try other.run("UPDATE vector SET data = zeroblob(8)")
        #expect(cache.recall(["x"], owner: 0) == [nil])
    }

    @Test func inspectionCountsDamagedRowsAndDropsThemWhenAsked() throws {
        let path = scratch("cache.sqlite")
        let cache = try EmbeddingCache(path: path, model: "m", chunk: 1)
        cache.keep(["a", "b", "c"], [[1, 2], [3, 4], [5, 6, 7]], owner: 0)
        #expect(try EmbeddingCache.inspect(path: path) == (3, 0, 28))
        let other = try SQLiteConnection(path)
        try other.run("UPDATE vector SET data = zeroblob(8) WHERE length(data) = 12")
        #expect(try EmbeddingCache.inspect(path: path) == (3, 1, 24))
        #expect(try EmbeddingCache.inspect(path: path, dropDamaged: true) == (3, 1, 24))
        #expect(try EmbeddingCache.inspect(path: path) == (2, 0, 16))
        #expect(cache.recall(["a", "b", "c"], owner: 0) == [[1, 2], [3, 4], nil])
        // Not a cache at all: the reason.
        let junk = scratch("junk.sqlite")
        let fd = open(junk, O_CREAT | O_WRONLY, 0o600)
        _ = write(fd, Array(repeating: UInt8(7), count: 4096), 4096)
        close(fd)
        #expect(throws: SQLiteError.self) { try EmbeddingCache.inspect(path: junk) }
        #expect(throws: SQLiteError.self) { try EmbeddingCache.inspect(path: scratch("absent.sqlite")) }
    }
}
