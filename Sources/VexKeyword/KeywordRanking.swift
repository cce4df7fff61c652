import CSQLite
import Glibc

/// BM25 over several keyword indexes as if they were one. SQLite's `bm25()` weighs a word by how
/// rare it is in its own table and a passage's length against its own table's average, so scores of
/// two collections do not compare: a word rare in one and common in the other scores differently
/// for the same passage. A question over several collections first sums each one's `Statistics`
/// for its expression (passages, words, passages holding each phrase), then ranks every collection
/// with the `Ranking` made of the sums: the scores are those one table holding every passage would
/// give, computed as `bm25()` computes them (k1 1.2, b 0.75, a phrase's IDF at least 1e-6).
///
/// Two FTS5 auxiliary functions, registered on each connection: `vexfs_statistics(body)` gives a
/// table's statistics for the expression it is asked under, `vexfs_bm25(body, RANKING)` a passage's
/// score under the given ranking.
extension KeywordIndex {
    /// What BM25 needs of one table for one expression.
    public struct Statistics: Equatable, Sendable {
        /// Passages, and the words in all of them.
        public var passages: Int64 = 0
        public var words: Int64 = 0
        /// For each phrase of the expression (in its order), how many passages hold it.
        public var holding: [Int64] = []

        public init(passages: Int64 = 0, words: Int64 = 0, holding: [Int64] = []) {
            self.passages = passages
            self.words = words
            self.holding = holding
        }

        /// The statistics of the tables `a` and `b` together.
        public static func + (a: Statistics, b: Statistics) -> Statistics {
            var holding = a.holding.count >= b.holding.count ? a.holding : b.holding
            for (i, n) in (a.holding.count >= b.holding.count ? b.holding : a.holding).enumerated() { holding[i] += n }
            return Statistics(passages: a.passages + b.passages, words: a.words + b.words, holding: holding)
        }
    }

    /// The average passage's length and each phrase's IDF, as the blob `vexfs_bm25` reads.
    public struct Ranking: Equatable, Sendable {
        public let averageLength: Double
        public let idf: [Double]

        public init(_ s: Statistics) {
            averageLength = s.passages > 0 ? Double(s.words) / Double(s.passages) : 1
            let n = Double(s.passages)
            idf = s.holding.map { h in
                let v = log((n - Double(h) + 0.5) / (Double(h) + 0.5))
                return v > 0 ? v : 1e-6
            }
        }

        var blob: [UInt8] {
            var out: [UInt8] = []
            for v in [averageLength] + idf { withUnsafeBytes(of: v.bitPattern.littleEndian) { out += $0 } }
            return out
        }
    }

    static let bm25K1 = 1.2, bm25B = 0.75

    /// Registers `vexfs_statistics` and `vexfs_bm25` on the connection `c`.
    static func registerRanking(_ c: SQLiteConnection) throws(SQLiteError) {
        let db = c.db
        // SQLite hands the FTS5 API out through a pointer bound under this (static) type name.
        let tag: StaticString = "fts5_api_ptr"
        var statement: OpaquePointer?
        guard sqlite3_prepare_v2(db, "SELECT fts5(?1)", -1, &statement, nil) == SQLITE_OK else { throw c.lastError }
        defer { sqlite3_finalize(statement) }
        var api: UnsafeMutablePointer<fts5_api>?
        let rc = withUnsafeMutablePointer(to: &api) { p in
            tag.utf8Start.withMemoryRebound(to: CChar.self, capacity: tag.utf8CodeUnitCount + 1) { name in
                sqlite3_bind_pointer(statement, 1, p, name, nil)
                return sqlite3_step(statement)
            }
        }
        guard rc == SQLITE_ROW, let api, api.pointee.iVersion >= 2, let create = api.pointee.xCreateFunction else {
            throw SQLiteError(code: rc, message: "this SQLite's FTS5 offers no API for ranking functions")
        }
        guard create(api, "vexfs_statistics", nil, statisticsFunction, nil) == SQLITE_OK,
              create(api, "vexfs_bm25", nil, bm25Function, nil) == SQLITE_OK else { throw c.lastError }
    }

    /// `vexfs_statistics(body, SKIP)`: the table's Statistics for the expression of its query but its
    /// last SKIP phrases, as little-endian 64-bit integers (passages, words, then each phrase's passages).
    private static let statisticsFunction: fts5_extension_function = { api, fts, context, count, values in
        guard let api = api?.pointee, let fts else { return }
        let skip = count == 1 ? (values?[0]).map { sqlite3_value_int($0) } ?? 0 : 0
        var numbers: [Int64] = [0, 0]
        var rc = api.xRowCount(fts, &numbers[0])
        if rc == SQLITE_OK { rc = api.xColumnTotalSize(fts, -1, &numbers[1]) }
        for phrase in 0..<max(0, api.xPhraseCount(fts) - skip) where rc == SQLITE_OK {
            var holding: Int64 = 0
            rc = withUnsafeMutablePointer(to: &holding) { p in
                api.xQueryPhrase(fts, phrase, p) { _, _, user in
                    user?.assumingMemoryBound(to: Int64.self).pointee += 1
                    return SQLITE_OK
                }
            }
            numbers.append(holding)
        }
        guard rc == SQLITE_OK else { return sqlite3_result_error_code(context, rc) }
        var out: [UInt8] = []
        for v in numbers { withUnsafeBytes(of: v.littleEndian) { out += $0 } }
        out.withUnsafeBytes { sqlite3_result_blob(context, $0.baseAddress, Int32($0.count), Statement.transient) }
    }

    /// `vexfs_bm25(body, RANKING)`: the passage's BM25 score (negated, as `bm25()`'s) under RANKING,
    /// a `Ranking.blob` with one IDF per phrase of the query's expression.
    private static let bm25Function: fts5_extension_function = { api, fts, context, count, values in
        guard let api = api?.pointee, let fts, count == 1, let value = values?[0] else {
            return sqlite3_result_error(context, "vexfs_bm25 takes a ranking", -1)
        }
        let phrases = Int(api.xPhraseCount(fts))
        let bytes = Int(sqlite3_value_bytes(value))
        guard bytes == 8 * (phrases + 1), let raw = sqlite3_value_blob(value) else {
            return sqlite3_result_error(context, "vexfs_bm25: the ranking is not for this expression", -1)
        }
        let numbers = (0...phrases).map { Double(bitPattern: UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: 8 * $0, as: UInt64.self))) }
        var frequency = [Double](repeating: 0, count: phrases)
        var instances: Int32 = 0
        var rc = api.xInstCount(fts, &instances)
        for i in 0..<instances where rc == SQLITE_OK {
            var phrase: Int32 = 0, column: Int32 = 0, offset: Int32 = 0
            rc = api.xInst(fts, i, &phrase, &column, &offset)
            if rc == SQLITE_OK, Int(phrase) < phrases { frequency[Int(phrase)] += 1 }
        }
        var length: Int32 = 0
        if rc == SQLITE_OK { rc = api.xColumnSize(fts, -1, &length) }
        guard rc == SQLITE_OK else { return sqlite3_result_error_code(context, rc) }
        let norm = bm25K1 * (1 - bm25B + bm25B * Double(length) / numbers[0])
        var score = 0.0
        for p in 0..<phrases { score += numbers[p + 1] * (frequency[p] * (bm25K1 + 1)) / (frequency[p] + norm) }
        sqlite3_result_double(context, -score)
    }
}
