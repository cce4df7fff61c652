// VexKeyword keeps what vexfs knows of text in SQLite files under STORE/.vexfs/, and knows no
// filesystem beyond the path it is given: `KeywordIndex` is one collection's passages in an FTS5
// table ranked by BM25, keyed by the names the vector index answers with (`FILE`, or `FILE#N` for a
// text of several passages); `EmbeddingCache` keeps the vectors an embedder gave, keyed by the
// SHA-256 of the passage's bytes with the model's name and the chunking settings, least recently used
// out past a bound. Both are derived data: a file that will not open as SQLite is set aside and
// started again empty, and SQLite's journal makes every change whole or absent after a crash.
import CSQLite
import Glibc

/// Why a SQLite call failed: its message, for a status line or a log.
public struct SQLiteError: Error, CustomStringConvertible, Equatable {
    public let code: Int32
    public let message: String
    public var description: String { message }
}

/// One connection, used by one thread at a time (the owners hold a lock around it).
final class SQLiteConnection {
    let db: OpaquePointer

    /// Opens (creating) the database at `path` and has `ready` prepare what its owner uses; one that
    /// is not SQLite, is damaged, or holds tables of another shape (`ready` fails) is moved to
    /// `PATH.bad` and a new one made in its place.
    static func openOrReplace<T>(_ path: String, schema: String, ready: (SQLiteConnection) throws(SQLiteError) -> T)
        throws(SQLiteError) -> (T, setAside: String?) {
        func open() throws(SQLiteError) -> T {
            let c = try SQLiteConnection(path)
            try c.run("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;")
            try c.check()
            try c.run(schema)
            return try ready(c)
        }
        do throws(SQLiteError) {
            return (try open(), nil)
        } catch {
            rename(path, path + ".bad")
            unlink(path + "-wal")
            unlink(path + "-shm")
            return (try open(), error.message)
        }
    }

    /// `existing`: the file must be there already (nothing is made).
    init(_ path: String, existing: Bool = false) throws(SQLiteError) {
        var handle: OpaquePointer?
        let rc = sqlite3_open_v2(path, &handle, SQLITE_OPEN_READWRITE | (existing ? 0 : SQLITE_OPEN_CREATE) | SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_NOFOLLOW, nil)
        guard rc == SQLITE_OK, let handle else {
            let message = handle.map { String(cString: sqlite3_errmsg($0)) } ?? "cannot open \(path)"
            if let handle { sqlite3_close_v2(handle) }
            throw SQLiteError(code: rc, message: message)
        }
        db = handle
        sqlite3_busy_timeout(db, 5000)
    }

    deinit { sqlite3_close_v2(db) }

    var lastError: SQLiteError { SQLiteError(code: sqlite3_errcode(db), message: String(cString: sqlite3_errmsg(db))) }

    /// Runs statements that take no parameters and return nothing wanted.
    func run(_ sql: String) throws(SQLiteError) {
        guard sqlite3_exec(db, sql, nil, nil, nil) == SQLITE_OK else { throw lastError }
    }

    /// A quick look at the file's structure: a damaged page is an error.
    func check() throws(SQLiteError) {
        let s = try prepare("PRAGMA quick_check")
        guard try s.step(), s.text(0) == "ok" else { throw SQLiteError(code: SQLITE_CORRUPT, message: "damaged: \(s.text(0))") }
    }

    func prepare(_ sql: String) throws(SQLiteError) -> Statement {
        var s: OpaquePointer?
        guard sqlite3_prepare_v2(db, sql, -1, &s, nil) == SQLITE_OK, let s else { throw lastError }
        return Statement(s, self)
    }

    /// Runs `body` in one transaction: all of it lands, or none.
    func transaction<T>(_ body: () throws(SQLiteError) -> T) throws(SQLiteError) -> T {
        try run("BEGIN IMMEDIATE")
        do {
            let out = try body()
            try run("COMMIT")
            return out
        } catch {
            try? run("ROLLBACK")
            throw error
        }
    }

    var changes: Int { Int(sqlite3_changes(db)) }
}

/// A prepared statement: bind, step, read columns; finalized when dropped.
final class Statement {
    let s: OpaquePointer
    let connection: SQLiteConnection
    init(_ s: OpaquePointer, _ connection: SQLiteConnection) { self.s = s; self.connection = connection }
    deinit { sqlite3_finalize(s) }

    static let transient = unsafeBitCast(-1, to: sqlite3_destructor_type.self)

    @discardableResult
    func bind(_ values: [Value]) -> Statement {
        sqlite3_reset(s)
        sqlite3_clear_bindings(s)
        for (i, v) in values.enumerated() {
            let at = Int32(i + 1)
            switch v {
            case .int(let n): sqlite3_bind_int64(s, at, Int64(n))
            case .text(let t): sqlite3_bind_text(s, at, t, -1, Statement.transient)
            case .blob(let b): b.withUnsafeBytes { _ = sqlite3_bind_blob(s, at, $0.baseAddress ?? UnsafeRawPointer(bitPattern: 1), Int32($0.count), Statement.transient) }
            }
        }
        return self
    }

    enum Value {
        case int(Int)
        case text(String)
        case blob([UInt8])
    }

    /// True while a row is there to read.
    func step() throws(SQLiteError) -> Bool {
        switch sqlite3_step(s) {
        case SQLITE_ROW: return true
        case SQLITE_DONE: return false
        default:
            let e = connection.lastError
            sqlite3_reset(s)
            throw e
        }
    }

    func run(_ values: [Value] = []) throws(SQLiteError) {
        bind(values)
        while try step() {}
    }

    /// Ends a read before its last row, so the connection holds no read transaction open.
    func reset() { sqlite3_reset(s) }

    func int(_ column: Int32) -> Int { Int(sqlite3_column_int64(s, column)) }
    func double(_ column: Int32) -> Double { sqlite3_column_double(s, column) }
    func text(_ column: Int32) -> String { sqlite3_column_text(s, column).map { String(cString: $0) } ?? "" }
    func blob(_ column: Int32) -> [UInt8] {
        let n = Int(sqlite3_column_bytes(s, column))
        guard n > 0, let p = sqlite3_column_blob(s, column) else { return [] }
        return Array(UnsafeRawBufferPointer(start: p, count: n))
    }
}
