import CSQLite
import Glibc
import Synchronization

/// One collection's passages for keyword search: an FTS5 table (the `unicode61` tokenizer: words are
/// runs of letters and digits, compared without case or accents) ranked by SQLite's `bm25()`, beside
/// a table that names each passage's file and row, and one that keeps each file's signature (what
/// the owner last indexed it as), so a mount re-reads only the files that changed. A file's
/// passages are replaced in one transaction: after a crash it holds its old passages or its new
/// ones, never some of each.
///
/// Scores are `bm25()`'s: the BM25 score negated, so a lower score is a better match (the order a
/// distance is read in).
public final class KeywordIndex: @unchecked Sendable {
    /// The connection and its statements.
    private let connection: Mutex<Box>
    public let path: String
    /// Why the file there before was set aside at open (nil: it opened as it was).
    public let setAside: String?

    /// The statements, prepared at open: a file whose tables have another shape fails here.
    final class Box: @unchecked Sendable {
        let db: SQLiteConnection
        let signatureOf, putFile, dropFile, dropBodies, dropPassages, putPassage, putBody: Statement
        init(_ db: SQLiteConnection) throws(SQLiteError) {
            self.db = db
            try KeywordIndex.registerRanking(db)
            // The index's words (the statistics of a table no passage of which matches ask one).
            try db.run("CREATE VIRTUAL TABLE IF NOT EXISTS temp.body_terms USING fts5vocab(main, 'body', 'row')")
            signatureOf = try db.prepare("SELECT signature FROM file WHERE name = ?")
            putFile = try db.prepare("INSERT OR REPLACE INTO file(name, signature, passages) VALUES (?, ?, ?)")
            dropFile = try db.prepare("DELETE FROM file WHERE name = ?")
            dropBodies = try db.prepare("DELETE FROM body WHERE rowid IN (SELECT id FROM passage WHERE name = ?)")
            dropPassages = try db.prepare("DELETE FROM passage WHERE name = ?")
            putPassage = try db.prepare("INSERT INTO passage(name, row) VALUES (?, ?)")
            putBody = try db.prepare("INSERT INTO body(rowid, text) VALUES (?, ?)")
            // The search reads these columns: prepared once here to prove they are there.
            _ = try db.prepare("SELECT passage.name, passage.row, file.passages, bm25(body) FROM body JOIN passage ON passage.id = body.rowid "
                               + "JOIN file ON file.name = passage.name WHERE body MATCH 'x' LIMIT 0")
        }
    }

    static let schema = """
        CREATE TABLE IF NOT EXISTS file(name BLOB PRIMARY KEY, signature BLOB NOT NULL, passages INTEGER NOT NULL);
        CREATE TABLE IF NOT EXISTS passage(id INTEGER PRIMARY KEY, name BLOB NOT NULL, row INTEGER NOT NULL);
        CREATE INDEX IF NOT EXISTS passage_name ON passage(name);
        CREATE VIRTUAL TABLE IF NOT EXISTS body USING fts5(text, tokenize = 'unicode61');
        """

    /// Opens (or makes) the index at `path`; a file there that is not one (damaged, foreign) is set
    /// aside as `PATH.bad` and the index starts empty: its owner fills it again from the files.
    public init(path: String) throws(SQLiteError) {
        self.path = path
        let (box, aside) = try SQLiteConnection.openOrReplace(path, schema: KeywordIndex.schema) { (db) throws(SQLiteError) in try Box(db) }
        setAside = aside
        connection = Mutex(box)
    }

    /// One answer: the file, its passage `row` (of `passages`), and the BM25 score (lower is better).
    public struct Hit: Equatable, Sendable {
        public let name: [UInt8]
        public let row: Int
        public let passages: Int
        public let score: Double
    }

    /// The signature the file `name` was last indexed with, nil when it is not indexed.
    public func signature(of name: [UInt8]) -> [UInt8]? {
        connection.withLock { c in
            let s = c.signatureOf.bind([.blob(name)])
            defer { s.reset() }
            return (try? s.step()) == true ? s.blob(0) : nil
        }
    }

    /// Every indexed file with its signature (to repair the index against the files at mount).
    public func files() throws(SQLiteError) -> [[UInt8]: [UInt8]] {
        try connection.withLock { c throws(SQLiteError) in
            let s = try c.db.prepare("SELECT name, signature FROM file")
            var out: [[UInt8]: [UInt8]] = [:]
            while try s.step() { out[s.blob(0)] = s.blob(1) }
            return out
        }
    }

    /// Makes `name` hold `passages` (in order), indexed as of `signature`, in one transaction.
    public func put(_ name: [UInt8], signature: [UInt8], passages: [String]) throws(SQLiteError) {
        try connection.withLock { c throws(SQLiteError) in
            try c.db.transaction { () throws(SQLiteError) in
                try KeywordIndex.drop(name, c)
                try c.putFile.run([.blob(name), .blob(signature), .int(passages.count)])
                for (row, text) in passages.enumerated() {
                    try c.putPassage.run([.blob(name), .int(row)])
                    let id = Int(sqlite3_last_insert_rowid(c.db.db))
                    try c.putBody.run([.int(id), .text(text)])
                }
            }
        }
    }

    /// Forgets `name` and its passages.
    public func remove(_ name: [UInt8]) throws(SQLiteError) {
        try connection.withLock { c throws(SQLiteError) in
            try c.db.transaction { () throws(SQLiteError) in try KeywordIndex.drop(name, c) }
        }
    }

    /// Moves the passages of `from` to the name `to` (whose own passages go).
    public func rename(_ from: [UInt8], to: [UInt8]) throws(SQLiteError) {
        try connection.withLock { c throws(SQLiteError) in
            try c.db.transaction { () throws(SQLiteError) in
                try KeywordIndex.drop(to, c)
                try c.db.prepare("UPDATE file SET name = ? WHERE name = ?").run([.blob(to), .blob(from)])
                try c.db.prepare("UPDATE passage SET name = ? WHERE name = ?").run([.blob(to), .blob(from)])
            }
        }
    }

    private static func drop(_ name: [UInt8], _ c: Box) throws(SQLiteError) {
        try c.dropBodies.run([.blob(name)])
        try c.dropPassages.run([.blob(name)])
        try c.dropFile.run([.blob(name)])
    }

    /// The passages that match the FTS5 expression `match`, best first (ties by name, then row, so
    /// an answer never depends on the order files came in), from the `offset`-th on, at most `limit`
    /// (nil: all). A caller that needs K answers its asker may read asks a page at a time, so it
    /// reads no further than that, and holds no lock of this index while it judges a page. Scored by
    /// `ranking` when given (several collections ranked as one, KeywordRanking.swift), else by this
    /// table's own `bm25()`.
    public func search(_ match: String, ranking: Ranking? = nil, offset: Int = 0, limit: Int?) throws(SQLiteError) -> [Hit] {
        try connection.withLock { c throws(SQLiteError) in
            let s = try c.db.prepare("""
                SELECT passage.name, passage.row, file.passages, \(ranking == nil ? "bm25(body)" : "vexfs_bm25(body, ?)") AS score
                FROM body JOIN passage ON passage.id = body.rowid JOIN file ON file.name = passage.name
                WHERE body MATCH ? ORDER BY score, passage.name, passage.row LIMIT ? OFFSET ?
                """)
            let rank: [Statement.Value] = ranking.map { [.blob($0.blob)] } ?? []
            s.bind(rank + [.text(match), .int(limit ?? -1), .int(offset)])
            var out: [Hit] = []
            while try s.step() { out.append(Hit(name: s.blob(0), row: s.int(1), passages: s.int(2), score: s.double(3))) }
            return out
        }
    }

    /// This table's statistics for the expression `match` (what `Ranking` sums over collections).
    public func statistics(_ match: String) throws(SQLiteError) -> Statistics {
        try connection.withLock { c throws(SQLiteError) in
            // Asked of a passage that matches. When none does (`a AND b` where only `a` is here), the
            // expression is asked OR one word the table holds (its first): FTS5 numbers phrases as
            // they are written, so that word is the last phrase, and not counted.
            var asks: [(String, [Statement.Value])] = [("SELECT vexfs_statistics(body, 0) FROM body WHERE body MATCH ? LIMIT 1", [.text(match)])]
            let first = try c.db.prepare("SELECT term FROM temp.body_terms LIMIT 1")
            if try first.step() {
                let word = "\"" + String(first.text(0).flatMap { $0 == "\"" ? ["\"", "\""] : [$0] }) + "\""
                asks.append(("SELECT vexfs_statistics(body, 1) FROM body WHERE body MATCH ? LIMIT 1", [.text("(" + match + ") OR " + word)]))
            }
            first.reset()
            // Passages without a word: their number and length (0), no phrase counted.
            asks.append(("SELECT vexfs_statistics(body, 0) FROM body LIMIT 1", []))
            for (sql, values) in asks {
                let s = try c.db.prepare(sql)
                s.bind(values)
                guard try s.step() else { continue }
                let v = s.blob(0).withUnsafeBytes { raw in
                    (0..<(raw.count / 8)).map { Int64(littleEndian: raw.loadUnaligned(fromByteOffset: 8 * $0, as: Int64.self)) }
                }
                guard v.count >= 2 else { throw SQLiteError(code: SQLITE_ERROR, message: "vexfs_statistics gave \(v.count) numbers") }
                return Statistics(passages: v[0], words: v[1], holding: Array(v.dropFirst(2)))
            }
            return Statistics()
        }
    }

    /// What a file is kept as: the signature it was indexed with and its passages.
    public struct Kept: Equatable, Sendable {
        public let signature: [UInt8]
        public let passages: Int
    }

    /// Reads the index at `path` for `vexfs check`, as it is (nothing is made or set aside): every
    /// file it keeps. Throws when it is damaged: SQLite's page check, FTS5's own check of its
    /// word lists against the text, a file whose passages are not those it says, a passage
    /// without its text or text without its passage.
    public static func inspect(path: String) throws(SQLiteError) -> [[UInt8]: Kept] {
        let c = try SQLiteConnection(path, existing: true)
        try c.check()
        // Reads only, though SQLite asks for it as a write.
        try c.run("INSERT INTO body(body) VALUES ('integrity-check')")
        var out: [[UInt8]: Kept] = [:]
        let files = try c.prepare("""
            SELECT file.name, file.signature, file.passages, count(passage.id), count(DISTINCT passage.row), coalesce(min(passage.row), 0),
                   coalesce(max(passage.row), -1)
            FROM file LEFT JOIN passage ON passage.name = file.name GROUP BY file.name
            """)
        while try files.step() {
            let name = files.blob(0), passages = files.int(2)
            guard files.int(3) == passages, files.int(4) == passages, files.int(5) == 0, files.int(6) == passages - 1 else {
                throw SQLiteError(code: SQLITE_CORRUPT, message: "\(String(decoding: name, as: UTF8.self)) says \(passages) passages and holds \(files.int(3))")
            }
            out[name] = Kept(signature: files.blob(1), passages: passages)
        }
        let orphans = try c.prepare("""
            SELECT (SELECT count(*) FROM passage WHERE name NOT IN (SELECT name FROM file)),
                   (SELECT count(*) FROM passage WHERE id NOT IN (SELECT rowid FROM body)),
                   (SELECT count(*) FROM body WHERE rowid NOT IN (SELECT id FROM passage))
            """)
        guard try orphans.step(), orphans.int(0) == 0, orphans.int(1) == 0, orphans.int(2) == 0 else {
            throw SQLiteError(code: SQLITE_CORRUPT, message: "passages without their file or text, or text without its passage")
        }
        return out
    }

    /// How many passages the index holds.
    public var count: Int {
        connection.withLock { c in
            guard let s = try? c.db.prepare("SELECT count(*) FROM passage"), (try? s.step()) == true else { return 0 }
            return s.int(0)
        }
    }

    /// Why `match` is not an FTS5 expression (nil when it is one): asked of an empty table in memory,
    /// so a bad expression is refused when it is set, before any collection is searched.
    public static func problem(in match: String) -> String? {
        do throws(SQLiteError) {
            let c = try SQLiteConnection(":memory:")
            try c.run("CREATE VIRTUAL TABLE probe USING fts5(text, tokenize = 'unicode61')")
            let s = try c.prepare("SELECT rowid FROM probe WHERE probe MATCH ?")
            s.bind([.text(match)])
            _ = try s.step()
            return nil
        } catch {
            return error.message
        }
    }

    /// The FTS5 expression that asks for any of the words of `question` (each a quoted phrase, so
    /// no word is read as an operator): how a question in words is searched by keyword.
    public static func anyWord(of question: String) -> String? {
        var words: [String] = []
        var current = ""
        for scalar in question.unicodeScalars {
            if scalar.properties.isAlphabetic || scalar.properties.numericType != nil || scalar.properties.generalCategory == .nonspacingMark {
                current.unicodeScalars.append(scalar)
            } else if !current.isEmpty {
                words.append(current)
                current = ""
            }
        }
        if !current.isEmpty { words.append(current) }
        guard !words.isEmpty else { return nil }
        return words.map { "\"\($0)\"" }.joined(separator: " OR ")
    }
}
