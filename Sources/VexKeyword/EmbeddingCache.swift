import CSQLite
import Glibc
import Synchronization

/// The vectors an embedder gave for passages, kept so the same text is never sent twice: a rename, a
/// copy into another collection, a metric change or a remount finds them here. Keyed by the SHA-256
/// of the model's name, the chunking settings, the user whose text it is and the passage's bytes
/// (a vector found in the cache comes back at once, so a cache shared by users would tell one of
/// them whether another's file holds a passage they guessed); each row also holds a check
/// (SHA-256 of key and vector, first 8 bytes) so a row damaged on disk is a miss, never a wrong
/// vector. Bounded by the bytes of its vectors: past `maxBytes` the least recently used go.
public final class EmbeddingCache: @unchecked Sendable {
    /// The connection, the use counter and the bytes held.
    private let state: Mutex<State>
    public let maxBytes: Int
    /// Why the file there before was set aside at open (nil: it opened as it was).
    public let setAside: String?
    /// What every passage's key starts with: the model and the chunking.
    private let prefix: [UInt8]
    /// What every question's key starts with: the query model (questions are not cut).
    private let questionPrefix: [UInt8]

    /// The statements, prepared at open: a file whose table has another shape fails here.
    final class State: @unchecked Sendable {
        let db: SQLiteConnection
        var clock = 0
        var bytes = 0
        let get, touch, put, drop, oldest: Statement
        init(_ db: SQLiteConnection) throws(SQLiteError) {
            self.db = db
            get = try db.prepare("SELECT data, check_ FROM vector WHERE key = ?")
            touch = try db.prepare("UPDATE vector SET used = ? WHERE key = ?")
            put = try db.prepare("INSERT OR REPLACE INTO vector(key, data, check_, used) VALUES (?, ?, ?, ?)")
            drop = try db.prepare("DELETE FROM vector WHERE key = ?")
            oldest = try db.prepare("SELECT key, length(data) FROM vector ORDER BY used LIMIT 256")
            let totals = try db.prepare("SELECT coalesce(max(used), 0), coalesce(sum(length(data)), 0) FROM vector")
            if try totals.step() {
                clock = totals.int(0)
                bytes = totals.int(1)
            }
        }
    }

    static let schema = """
        CREATE TABLE IF NOT EXISTS vector(key BLOB PRIMARY KEY, data BLOB NOT NULL, check_ BLOB NOT NULL, used INTEGER NOT NULL) WITHOUT ROWID;
        CREATE INDEX IF NOT EXISTS vector_used ON vector(used);
        """

    /// The default bound: 256 MiB of vectors (174,762 passages of 384 numbers).
    public static let defaultMaxBytes = 256 << 20

    /// Opens (or makes) the cache at `path` for vectors of `model` from passages cut at `chunk`
    /// characters, and of `questionModel` (default: `model`) from questions; a damaged or foreign
    /// file there is set aside as `PATH.bad`.
    public init(path: String, model: String, chunk: Int, questionModel: String? = nil, maxBytes: Int = EmbeddingCache.defaultMaxBytes) throws(SQLiteError) {
        self.maxBytes = maxBytes
        prefix = Array("model=\(model)\u{0}chunk=\(chunk)\u{0}".utf8)
        questionPrefix = Array("question-model=\(questionModel ?? model)\u{0}".utf8)
        let (s, aside) = try SQLiteConnection.openOrReplace(path, schema: EmbeddingCache.schema) { (db) throws(SQLiteError) in try State(db) }
        setAside = aside
        state = Mutex(s)
    }

    static func key(_ prefix: [UInt8], _ owner: UInt32, _ text: String) -> [UInt8] {
        var h = SHA256()
        h.update(prefix)
        h.update(Array("owner=\(owner)\u{0}".utf8))
        h.update(text.utf8)
        return h.finish()
    }

    static func check(_ key: [UInt8], _ data: [UInt8]) -> [UInt8] {
        var h = SHA256()
        h.update(key)
        h.update(data)
        return Array(h.finish().prefix(8))
    }

    /// The vector kept for each of `owner`'s passages, nil where none is (or its row fails its check).
    public func recall(_ texts: [String], owner: UInt32) -> [[Float]?] { recall(keys: texts.map { EmbeddingCache.key(prefix, owner, $0) }) }

    /// Keeps `vectors[i]` as the vector of `owner`'s passage `texts[i]`, then drops the least
    /// recently used past the bound.
    public func keep(_ texts: [String], _ vectors: [[Float]], owner: UInt32) {
        keep(keys: texts.map { EmbeddingCache.key(prefix, owner, $0) }, vectors)
    }

    /// The vector kept for `owner`'s question in words (as the query model embeds it), nil when none is.
    public func recall(question: String, owner: UInt32) -> [Float]? {
        recall(keys: [EmbeddingCache.key(questionPrefix, owner, question)])[0]
    }

    /// Keeps the query model's `vector` for `owner`'s question `question`, under the same bound as passages.
    public func keep(question: String, _ vector: [Float], owner: UInt32) {
        keep(keys: [EmbeddingCache.key(questionPrefix, owner, question)], [vector])
    }

    private func recall(keys: [[UInt8]]) -> [[Float]?] {
        state.withLock { s in
            var out: [[Float]?] = []
            var used: [[UInt8]] = []
            for k in keys {
                let q = s.get.bind([.blob(k)])
                guard (try? q.step()) == true else { out.append(nil); continue }
                let data = q.blob(0), check = q.blob(1)
                q.reset()
                guard !data.isEmpty, data.count % 4 == 0, EmbeddingCache.check(k, data) == check else {
                    try? s.drop.run([.blob(k)])
                    out.append(nil)
                    continue
                }
                out.append(data.withUnsafeBytes { raw in (0..<(data.count / 4)).map { Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * 4, as: UInt32.self))) } })
                used.append(k)
            }
            if !used.isEmpty {
                _ = try? s.db.transaction { () throws(SQLiteError) in
                    for k in used {
                        s.clock += 1
                        try s.touch.run([.int(s.clock), .blob(k)])
                    }
                }
            }
            return out
        }
    }

    private func keep(keys: [[UInt8]], _ vectors: [[Float]]) {
        let rows = zip(keys, vectors).map { key, v -> ([UInt8], [UInt8]) in
            var data = [UInt8]()
            data.reserveCapacity(v.count * 4)
            for x in v { withUnsafeBytes(of: x.bitPattern.littleEndian) { data.append(contentsOf: $0) } }
            return (key, data)
        }
        state.withLock { s in
            _ = try? s.db.transaction { () throws(SQLiteError) in
                for (k, data) in rows where !data.isEmpty {
                    s.clock += 1
                    let old = s.get.bind([.blob(k)])
                    if try old.step() { s.bytes -= old.blob(0).count }
                    old.reset()
                    try s.put.run([.blob(k), .blob(data), .blob(EmbeddingCache.check(k, data)), .int(s.clock)])
                    s.bytes += data.count
                }
                while s.bytes > maxBytes {
                    var victims: [([UInt8], Int)] = []
                    s.oldest.bind([])
                    while try s.oldest.step() { victims.append((s.oldest.blob(0), s.oldest.int(1))) }
                    if victims.isEmpty { s.bytes = 0; break }
                    for (k, n) in victims where s.bytes > maxBytes {
                        try s.drop.run([.blob(k)])
                        s.bytes -= n
                    }
                }
            }
        }
    }

    /// What `vexfs check` finds in the cache at `path` (nothing is made or set aside): the rows, those
    /// whose check fails (each is a miss, never a wrong vector), and the bytes of the vectors. With
    /// `dropDamaged` those rows are deleted. Throws when the file is not a cache or is damaged
    /// (a mount sets it aside and starts again).
    public static func inspect(path: String, dropDamaged: Bool = false) throws(SQLiteError) -> (rows: Int, damaged: Int, bytes: Int) {
        let c = try SQLiteConnection(path, existing: true)
        try c.check()
        let rows = try c.prepare("SELECT key, data, check_ FROM vector")
        var count = 0, bytes = 0
        var damaged: [[UInt8]] = []
        while try rows.step() {
            let key = rows.blob(0), data = rows.blob(1)
            count += 1
            bytes += data.count
            if key.count != 32 || data.isEmpty || data.count % 4 != 0 || check(key, data) != rows.blob(2) { damaged.append(key) }
        }
        if dropDamaged && !damaged.isEmpty {
            let drop = try c.prepare("DELETE FROM vector WHERE key = ?")
            try c.transaction { () throws(SQLiteError) in for k in damaged { try drop.run([.blob(k)]) } }
        }
        return (count, damaged.count, bytes)
    }

    /// Passages kept, and the bytes of their vectors.
    public var usage: (passages: Int, bytes: Int) {
        state.withLock { s in
            guard let q = try? s.db.prepare("SELECT count(*) FROM vector"), (try? q.step()) == true else { return (0, s.bytes) }
            return (q.int(0), s.bytes)
        }
    }
}
