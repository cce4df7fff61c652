import Glibc
import VexKeyword
import VexStore

/// How a query is to be answered, read from the query file's own attributes (PRODUCT.md §3): where
/// to look (`user.vexfs.scope`), which files may answer (`user.vexfs.filter`), how far
/// (`user.vexfs.radius`) and how hard to look (`user.vexfs.ef`); for text, which passages must hold
/// which words (`user.vexfs.match`) and how answers are ranked (`user.vexfs.mode`, and for hybrid
/// answers `user.vexfs.fusion`). The options are ordinary extended attributes of the backing file,
/// so they stay with the query file; they are checked when set (a bad value is EINVAL and never
/// stored) and again when read, since the store can be written around the mount.
public struct QueryOptions: Equatable, Sendable {
    public enum Scope: String, Sendable {
        case directory = "dir"
        /// The query's directory and every collection below it with the same dimension and metric.
        case tree
    }

    /// One line of `user.vexfs.filter`: a file answers only if every condition holds.
    public enum Condition: Equatable, Sendable {
        /// A shell glob on the file's base name (a leading dot must be matched by one).
        case name(glob: [UInt8])
        /// The file carries the extended attribute `name` with exactly `value`.
        case attribute(name: String, value: [UInt8])
    }

    /// How a question is answered.
    public enum Mode: String, Sendable {
        /// By meaning: the nearest vectors.
        case vector
        /// By words: BM25 over the keyword index (no embedder needed).
        case keyword
        /// Both lists, `hybridDepth` x K deep each, fused as `fusion` says.
        case hybrid
    }

    /// How `hybrid` fuses its two lists (`SemanticLayer.fused`).
    public enum Fusion: Equatable, Sendable {
        /// By score: each list's scores scaled to [0, 1] over that list and averaged (`scores`).
        case scores
        /// By rank: reciprocal rank fusion, 1 / (k + rank) summed over the lists (`rrf`, `rrf:K`).
        case ranks(k: Int)

        /// The value that means this fusion (`scores`, `rrf:60`).
        public var name: String {
            switch self {
            case .scores: "scores"
            case .ranks(let k): "rrf:\(k)"
            }
        }
    }

    public var scope = Scope.directory
    public var conditions: [Condition] = []
    public var radius: Float?
    public var ef: Int?
    /// An FTS5 expression every answered passage matches.
    public var match: String?
    public var mode = Mode.vector
    /// Scores by default: they beat rank fusion on the known-item benchmark (BENCHMARKS.md).
    public var fusion = Fusion.scores

    public init() {}

    public enum Option: String, CaseIterable, Sendable {
        case scope = "user.vexfs.scope"
        case filter = "user.vexfs.filter"
        case radius = "user.vexfs.radius"
        case ef = "user.vexfs.ef"
        case match = "user.vexfs.match"
        case mode = "user.vexfs.mode"
        case fusion = "user.vexfs.fusion"
    }

    /// Hybrid fusion (`mode=hybrid`, `SemanticLayer.fused`): each of the two lists is this many
    /// times K deep (at most `hybridMaxDepth`).
    public static let hybridDepth = 4
    public static let hybridMaxDepth = 1000
    /// Reciprocal rank fusion's k when `rrf` names none (the value of Cormack et al., and the usual
    /// default of search engines), and the k it may name.
    public static let rankConstant = 60
    public static let rankConstants = 1...10_000

    /// A filter holds at most this many bytes and conditions.
    public static let maxFilterBytes = 4096
    public static let maxConditions = 32
    /// The search breadth a query may ask for.
    public static let efRange = 1...10_000

    /// Checks the value of one option as given (any bytes) and records it: EINVAL with the reason
    /// when it is not a good value.
    public mutating func set(_ option: Option, _ value: [UInt8]) throws(SemanticError) {
        let limit = option == .filter || option == .match ? QueryOptions.maxFilterBytes : 64
        guard value.count <= limit else { throw .invalid("\(option.rawValue): the value is longer than \(limit) bytes") }
        if option == .filter {
            conditions = try QueryOptions.conditions(value)
            return
        }
        guard let decoded = String(validating: value, as: UTF8.self) else { throw .invalid("\(option.rawValue): the value is not text") }
        let text = decoded.trimmingCharacters().filter { $0 != "\n" }
        switch option {
        case .scope:
            guard let s = Scope(rawValue: text) else { throw .invalid("user.vexfs.scope must be dir or tree") }
            scope = s
        case .radius:
            guard let r = Float(text), r.isFinite, r >= 0 else { throw .invalid("user.vexfs.radius must be a distance: a number, 0 or more") }
            radius = r
        case .ef:
            guard let e = Int(text), QueryOptions.efRange.contains(e) else {
                throw .invalid("user.vexfs.ef must be a whole number from \(QueryOptions.efRange.lowerBound) to \(QueryOptions.efRange.upperBound)")
            }
            ef = e
        case .match:
            guard !text.isEmpty, !value.contains(0) else { throw .invalid("user.vexfs.match: an FTS5 expression (words, phrases, AND/OR/NOT, prefix*)") }
            if let problem = KeywordIndex.problem(in: decoded) { throw .invalid("user.vexfs.match: \(problem)") }
            match = decoded
        case .mode:
            guard let m = Mode(rawValue: text) else { throw .invalid("user.vexfs.mode must be vector, keyword or hybrid") }
            mode = m
        case .fusion:
            fusion = try QueryOptions.fusion(text)
        case .filter:
            break
        }
    }

    /// `scores`, `rrf` or `rrf:K`.
    static func fusion(_ text: String) throws(SemanticError) -> Fusion {
        if text == "scores" { return .scores }
        if text == "rrf" { return .ranks(k: rankConstant) }
        let digits = text.dropFirst(4)
        if text.hasPrefix("rrf:"), digits.allSatisfy({ ("0"..."9").contains($0) }), let k = Int(digits), rankConstants.contains(k) {
            return .ranks(k: k)
        }
        throw .invalid("user.vexfs.fusion must be scores, rrf or rrf:K (K a whole number from \(rankConstants.lowerBound) to \(rankConstants.upperBound))")
    }

    /// The lines of a filter: `name=GLOB` or `user.KEY=VALUE`, empty lines ignored.
    static func conditions(_ value: [UInt8]) throws(SemanticError) -> [Condition] {
        var out: [Condition] = []
        for line in value.split(separator: 0x0A, omittingEmptySubsequences: true) {
            guard !line.contains(0) else { throw .invalid("user.vexfs.filter: a condition holds a NUL byte") }
            guard let eq = line.firstIndex(of: 0x3D) else { throw .invalid("user.vexfs.filter: each line is name=GLOB or user.KEY=VALUE") }
            let key = Array(line[..<eq]), rest = Array(line[(eq + 1)...])
            if key == Array("name".utf8) {
                guard !rest.isEmpty else { throw .invalid("user.vexfs.filter: name= needs a glob") }
                out.append(.name(glob: rest))
            } else if key.starts(with: Array("user.".utf8)), key.count > 5, key.count <= 255,
                      let name = String(validating: key, as: UTF8.self) {
                guard !name.hasPrefix(SemanticLayer.ownPrefix) || name == SemanticLayer.vectorAttribute else {
                    throw .invalid("user.vexfs.filter: \(name) is computed by vexfs, not a tag")
                }
                out.append(.attribute(name: name, value: rest))
            } else {
                throw .invalid("user.vexfs.filter: a condition is name=GLOB or user.KEY=VALUE")
            }
            guard out.count <= QueryOptions.maxConditions else { throw .invalid("user.vexfs.filter: at most \(QueryOptions.maxConditions) conditions") }
        }
        return out
    }

    /// The options stored on the file behind `fd` (an O_PATH descriptor); a value that no longer
    /// checks (written around the mount) refuses the query with its reason.
    static func read(opath fd: Int32) throws(SemanticError) -> QueryOptions {
        var options = QueryOptions()
        for option in Option.allCases {
            guard let value = (try? StoreFiles.attribute(opath: fd, option.rawValue, limit: QueryOptions.maxFilterBytes + 1)) else { continue }
            try options.set(option, value)
        }
        return options
    }

    /// Whether the file `name` passes every condition; `attribute(NAME, LIMIT)` gives the file's
    /// attribute NAME if it holds at most LIMIT bytes (nil when it has none or a longer one).
    func admits(_ name: FileName, attribute: (String, Int) -> [UInt8]?) -> Bool {
        for condition in conditions {
            switch condition {
            case .name(let glob):
                let matched = name.withCString { n in
                    (glob + [0]).withUnsafeBufferPointer { g in
                        g.baseAddress!.withMemoryRebound(to: CChar.self, capacity: g.count) { fnmatch($0, n, FNM_PERIOD) == 0 }
                    }
                }
                if !matched { return false }
            case .attribute(let key, let value):
                guard attribute(key, value.count) == value else { return false }
            }
        }
        return true
    }

    /// Whether any condition reads an attribute (those cost a look at the file, or at the cache).
    var readsAttributes: Bool { conditions.contains { if case .attribute = $0 { true } else { false } } }
}
