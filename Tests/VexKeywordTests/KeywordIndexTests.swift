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
        #expect(cache.recall(["one", "two"]) == [nil, nil])
        cache.keep(["one"], [[1, 2, 3]])
        #expect(cache.recall(["one", "two"]) == [[1, 2, 3], nil])
        // Another model or another chunking: not the same vectors.
        #expect(try EmbeddingCache(path: path, model: "other", chunk: 100).recall(["one"]) == [nil])
        #expect(try EmbeddingCache(path: path, model: "m", chunk: 50).recall(["one"]) == [nil])
        // Kept across an open.
        #expect(try EmbeddingCache(path: path, model: "m", chunk: 100).recall(["one"]) == [[1, 2, 3]])
    }

    @Test func questionsAreKeptApartFromPassagesByQueryModel() throws {
        let path = scratch("cache.sqlite")
        let cache = try EmbeddingCache(path: path, model: "m", chunk: 100, questionModel: "q")
        cache.keep(["how to rotate logs"], [[1, 2]])
        // The same words as a question are not the passage's vector (another model embeds them).
        #expect(cache.recall(question: "how to rotate logs") == nil)
        cache.keep(question: "how to rotate logs", [3, 4])
        #expect(cache.recall(question: "how to rotate logs") == [3, 4])
        #expect(cache.recall(["how to rotate logs"]) == [[1, 2]])
        // Kept across an open, for the same query model only (the chunking does not matter to questions).
        #expect(try EmbeddingCache(path: path, model: "m", chunk: 50, questionModel: "q").recall(question: "how to rotate logs") == [3, 4])
        #expect(try EmbeddingCache(path: path, model: "m", chunk: 100, questionModel: "other").recall(question: "how to rotate logs") == nil)
        #expect(cache.usage.passages == 2)
    }

    @Test func theLeastRecentlyUsedGoPastTheBound() throws {
        // Room for three vectors of four numbers.
        let cache = try EmbeddingCache(path: scratch("cache.sqlite"), model: "m", chunk: 1, maxBytes: 48)
        cache.keep(["a", "b", "c"], [[1, 1, 1, 1], [2, 2, 2, 2], [3, 3, 3, 3]])
        _ = cache.recall(["a"])
        cache.keep(["d"], [[4, 4, 4, 4]])
        #expect(cache.recall(["a", "b", "c", "d"]) == [[1, 1, 1, 1], nil, [3, 3, 3, 3], [4, 4, 4, 4]])
        #expect(cache.usage.passages == 3 && cache.usage.bytes == 48)
    }

    @Test func aDamagedRowIsAMissNeverAWrongVector() throws {
        let path = scratch("cache.sqlite")
        let cache = try EmbeddingCache(path: path, model: "m", chunk: 1)
        cache.keep(["x"], [[1, 2]])
        // Flip the stored vector behind the cache's back.
        let other = try SQLiteConnection(path)
        try other.run("UPDATE vector SET data = zeroblob(8)")
        #expect(cache.recall(["x"]) == [nil])
    }
}
