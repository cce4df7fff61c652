import Glibc
import VexEmbed
import VexIndex

/// The `-o` options that belong to the vector layer: which index collections use and its knobs, and
/// the embedding endpoint. The mount carries them without knowing what they mean, and hands them to
/// `SemanticLayer` as they are.
public struct SemanticOptions: Sendable, Equatable {
    /// `index=auto|auto:N|flat|hnsw`.
    public var indexKind: IndexKind = .automatic(threshold: IndexKind.defaultThreshold)
    /// `hnsw_m=N`, `ef_construction=N`, `ef_search=N`.
    public var hnsw = HNSWParameters()
    /// An OpenAI-compatible embeddings endpoint (`embedder=URL`), the models sent for documents and
    /// queries (`embed_model=`, `embed_query_model=`), and the longest passage in characters (`embed_chunk=`).
    public var embedder: String?
    public var embedModel = ""
    public var embedQueryModel: String?
    public var embedChunk = 2000
    /// `embed_batch=N`: texts one request carries at most (a slow endpoint answers fewer in time).
    public var embedBatch = 64
    /// `keywords=on|off`: whether text collections keep a keyword index beside their vectors.
    public var keywords = true
    /// `max_user_queries=N`: questions one user other than root may have running at once.
    public var maxQueriesPerUser = SemanticOptions.defaultMaxQueriesPerUser
    public static let defaultMaxQueriesPerUser = 2
    /// `query_seconds=S`: how long one question of a user other than root may run.
    public var querySeconds = SemanticOptions.defaultQuerySeconds
    public static let defaultQuerySeconds = 10.0
    /// `max_user_collections=N`: collections whose directories one user other than root may own.
    public var collectionsPerUser = SemanticOptions.defaultCollectionsPerUser
    public static let defaultCollectionsPerUser = 1000
    /// `open_collections=N`: collections' directory descriptors kept open at most, the least
    /// recently used closed first (see `CollectionDirectories`; nil: a sixteenth of the descriptor
    /// limit as the mount raised it, at most 4,096).
    public var openCollections: Int?
    /// `max_user_index_mb=N`: index memory the collections of one user other than root may hold
    /// (nil: half of the mount's, which is half of the machine's memory).
    public var indexMiBPerUser: Int?
    /// `max_user_state_mb=N`: disk under STORE/.vexfs the indexes of one user other than root may
    /// take (nil: a quarter of the filesystem that holds it).
    public var stateMiBPerUser: Int?

    /// `shared[=ID]`: the store is shared with vexfs mounts on other machines (a distributed
    /// filesystem's clients); ID names this mount among them (default: the host's name), and at
    /// most one daemon per store runs with it.
    public var sharedID: String?
    /// `state=DIR` (with `shared`): where this mount keeps its private state (indexes, journal), an
    /// absolute path on a local disk; default `SharedState.defaultRoot`/STORE-ID/ID.
    public var stateDirectory: String?

    public init() {}

    /// The host's name, as a mount id: letters, digits, `.`, `_` and `-`.
    public static var hostID: String {
        var buffer = [CChar](repeating: 0, count: 256)
        gethostname(&buffer, 255)
        let name = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return isMountID(name) ? name : "host"
    }

    static func isMountID(_ s: String) -> Bool {
        !s.isEmpty && s.utf8.count <= 64 && s != "." && s != ".." && s.utf8.allSatisfy {
            (0x30...0x39).contains($0) || (0x41...0x5A).contains($0) || (0x61...0x7A).contains($0) || $0 == 0x2E || $0 == 0x5F || $0 == 0x2D
        }
    }

    public struct BadValue: Error {}

    /// Takes the option `key[=value]` if it is one of the vector layer's: true when taken, false
    /// when it is not one of them; a bad value is an error.
    public mutating func apply(_ key: String, _ value: String?) throws(BadValue) -> Bool {
        switch key {
        case "embedder":
            guard let value, value.hasPrefix("http://") || value.hasPrefix("https://"), value.count <= 2048 else { throw BadValue() }
            embedder = value
        case "embed_model", "embed_query_model":
            guard let value, !value.isEmpty, value.count <= 256 else { throw BadValue() }
            if key == "embed_model" { embedModel = value } else { embedQueryModel = value }
        case "embed_chunk":
            guard let value, let n = Int(value), n >= 16, n <= 1_000_000 else { throw BadValue() }
            embedChunk = n
        case "embed_batch":
            guard let value, let n = Int(value), (1...2048).contains(n) else { throw BadValue() }
            embedBatch = n
        case "keywords":
            guard let value, value == "on" || value == "off" else { throw BadValue() }
            keywords = value == "on"
        case "max_user_queries":
            guard let value, let n = Int(value), (1...1000).contains(n) else { throw BadValue() }
            maxQueriesPerUser = n
        case "max_user_collections":
            guard let value, let n = Int(value), (1...10_000).contains(n) else { throw BadValue() }
            collectionsPerUser = n
        case "open_collections":
            guard let value, let n = Int(value), (1...1_000_000).contains(n) else { throw BadValue() }
            openCollections = n
        case "max_user_index_mb", "max_user_state_mb":
            guard let value, let n = Int(value), (1...(1 << 30)).contains(n) else { throw BadValue() }
            if key == "max_user_index_mb" { indexMiBPerUser = n } else { stateMiBPerUser = n }
        case "query_seconds":
            guard let value, let s = Double(value), s.isFinite, s >= 0.1, s <= 86_400 else { throw BadValue() }
            querySeconds = s
        case "shared":
            if let value {
                guard SemanticOptions.isMountID(value) else { throw BadValue() }
                sharedID = value
            } else {
                sharedID = SemanticOptions.hostID
            }
        case "state":
            guard let value, value.hasPrefix("/"), value.utf8.count <= 1024, !value.utf8.contains(0) else { throw BadValue() }
            stateDirectory = value
        case "index":
            guard let value, let kind = IndexKind(value) else { throw BadValue() }
            indexKind = kind
        case "hnsw_m", "ef_construction", "ef_search":
            guard let value, let n = Int(value), n >= 2, n <= 4096 else { throw BadValue() }
            if key == "hnsw_m" { hnsw.m = min(n, 128) } else if key == "ef_construction" { hnsw.efConstruction = n } else { hnsw.efSearch = n }
        default:
            return false
        }
        return true
    }

    /// The embedder to reach, if one was named (`apiKey` from the environment, never the command line).
    public func embedderConfiguration(apiKey: String?) -> EmbedderConfiguration? {
        embedder.map { url in
            var c = EmbedderConfiguration(url: url, documentModel: embedModel, queryModel: embedQueryModel, apiKey: apiKey)
            c.chunk = embedChunk
            c.batchTexts = embedBatch
            return c
        }
    }
}
