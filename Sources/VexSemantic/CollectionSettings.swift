import CLinux
import Glibc
import VexStore
import Synchronization
import VexEmbed
import VexIndex
import VexKernels

// A collection's settings are attributes of its backing directory, so they belong to the files (the
// truth), not to the index: `Setting` is one of them checked, `CollectionSettings` all four as the
// collection uses them, and `change` applies one a user sets.

/// A collection setting with its value, checked: the one place a setting's bytes become a value,
/// whether a user sets it or it is read back from the directory.
public enum Setting: Equatable, Sendable {
    case dimension(Int)
    case metric(Metric)
    /// Which files are text to embed: globs on the base name (empty: none).
    case embed([String])
    /// The recall@10 the collection tunes its search breadth to.
    case recall(Double)

    /// The attribute of the directory that keeps each setting.
    enum Name: String, CaseIterable {
        case dimension = "user.vexfs.dim"
        case metric = "user.vexfs.metric"
        case embed = "user.vexfs.embed"
        case recall = "user.vexfs.recall"
    }

    var name: Name {
        switch self {
        case .dimension: .dimension
        case .metric: .metric
        case .embed: .embed
        case .recall: .recall
        }
    }

    public static let defaultRecall = 0.95

    /// Values are short; longer ones are refused.
    static let maxValueBytes = 64

    /// The setting `attribute` from its value as given (any bytes): EINVAL with the reason when it
    /// is not a setting or not a good value.
    public static func parse(_ attribute: String, _ value: [UInt8]) throws(SemanticError) -> Setting {
        guard let setting = Name(rawValue: attribute) else { throw .invalid("\(attribute) cannot be set") }
        guard value.count <= (setting == .embed ? 1024 : maxValueBytes) else { throw .invalid("\(attribute): the value is too long") }
        guard let decoded = String(validating: value, as: UTF8.self) else { throw .invalid("\(attribute): the value is not text") }
        let text = decoded.trimmingCharacters().filter { $0 != "\n" }
        switch setting {
        case .metric:
            guard let metric = Metric(rawValue: text) else { throw .invalid("metric must be l2, cosine or dot") }
            return .metric(metric)
        case .dimension:
            guard let d = Int(text), d > 0, d <= VectorParser.maxDimension else {
                throw .invalid("dim must be a whole number from 1 to \(VectorParser.maxDimension)")
            }
            return .dimension(d)
        case .embed:
            let globs = text.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
            guard globs.count <= 64, !globs.contains(where: { $0.contains("/") }) else { throw .invalid("embed is up to 64 globs on file names, separated by spaces") }
            return .embed(globs)
        case .recall:
            guard let r = Double(text), r.isFinite, r > 0, r <= 1 else { throw .invalid("recall must be a number above 0 and at most 1") }
            return .recall(r)
        }
    }

    /// The value as it is stored on the directory.
    public var text: String {
        switch self {
        case .dimension(let d): String(d)
        case .metric(let m): m.rawValue
        case .embed(let globs): globs.joined(separator: " ")
        case .recall(let r): String(r)
        }
    }

    /// The setting `name` kept on the directory `dir`; nil when it has none, or none that parses.
    static func read(_ name: Name, from dir: Int32) -> Setting? {
        (try? StoreFiles.attribute(opath: dir, name.rawValue, limit: maxValueBytes)).flatMap { try? parse(name.rawValue, $0) }
    }

    func write(to dir: Int32) {
        try? StoreFiles.setAttribute(opath: dir, name.rawValue, Array(text.utf8))
    }
}

/// A collection's four settings as it uses them; what the directory does not say is the default.
struct CollectionSettings: Equatable, Sendable {
    var dimension: Int?
    var metric: Metric = .l2
    /// Which files are text (nil: the mount's default globs).
    var embedGlobs: [String]?
    var recall = Setting.defaultRecall

    init() {}

    /// The settings kept on the directory `dir`.
    init(reading dir: Int32) {
        for name in Setting.Name.allCases {
            if let setting = Setting.read(name, from: dir) { apply(setting) }
        }
    }

    mutating func apply(_ setting: Setting) {
        switch setting {
        case .dimension(let d): dimension = d
        case .metric(let m): metric = m
        case .embed(let globs): embedGlobs = globs
        case .recall(let r): recall = r
        }
    }
}

extension Collection {
    // MARK: settings

    /// Changes the metric (re-indexing every file) or the dimension (only while nothing is indexed).
    func change(_ setting: Setting) throws(SemanticError) {
        defer { sendSoon() }
        // A change that re-reads every file is made beside the index in use (`rebuildBeside`),
        // even when it looks like no change: one asked before may not have landed yet.
        let rebuilding: (@Sendable (inout State) -> Void)? = try state.withLock { (s) throws(SemanticError) in
            // Kept on the directory: a setting that cannot be written there is not taken.
            func write() throws(SemanticError) {
                guard withDirectory({ setting.write(to: $0) }) != nil else { throw .overloaded("the collection's directory cannot be reopened now") }
            }
            switch setting {
            case .metric, .embed:
                try write()
                return { $0.settings.apply(setting) }
            case .recall(let r):
                try write()
                s.settings.recall = r
                s.index?.recallTarget = r
                s.measuredAt = 0
                considerMeasuring(&s)
                return nil
            case .dimension(let d):
                guard d != s.settings.dimension else { return nil }
                guard s.files.values.allSatisfy({ $0.rows == 0 }) else { throw .busy("the collection holds vectors of dimension \(s.settings.dimension ?? 0)") }
                try write()
                s.settings.dimension = d
                rebuild(&s)
                return nil
            }
        }
        if let rebuilding { rebuildBeside(rebuilding) }
    }

    /// Re-indexes every file under changed settings into a new index built beside the one in use,
    /// and swaps it in; returns once swapped. It runs on the bridge's builder with this collection
    /// held, so its file changes wait (in order) and every other collection goes on; queries here
    /// answer from the old index, with the old settings, until the swap, taking the lock only for
    /// their lookups as always. The new index shares the index directory: its first snapshot
    /// replaces the old one (a crash before that finds a snapshot for other settings, set aside at
    /// the next mount, and reads the files again).
    func rebuildBeside(_ adjust: @escaping @Sendable (inout State) -> Void) {
        host.bridge.holdAndWait(key) { [self] in
            let old = state.withLock { $0 }
            var t = old
            adjust(&t)
            guard t.settings.metric != old.settings.metric || t.settings.embedGlobs != old.settings.embedGlobs else { return }
            t.index = nil
            var problems = openIndex(&t, beside: true)
            let names = indexedNames(t)
            t.files = [:]
            t.owner = [:]
            t.embedding = [:]
            t.outbox = []
            for name in names { refresh(name, &t) }
            let prepared = prepareCheckpoint(&t)
            state.withLock { s in
                // What changed here meanwhile that the rebuild did not make: the directory's name,
                // the recall target.
                t.path = s.path
                t.settings.recall = s.settings.recall
                t.index?.recallTarget = s.settings.recall
                for (name, r) in s.files where t.files[name]?.inode != r.inode {
                    host.noteLink(collection: key, name: name, from: r.inode, to: t.files[name]?.inode)
                }
                s = t
                published(s)
                s.measuredAt = 0
                considerMeasuring(&s)
            }
            do { try prepared?.commit() } catch { problems.append("\(shown(t)): snapshot failed: \(error)") }
            host.log(problems: problems)
        }
    }

    /// Every file a re-index reads: those in the catalog, and the text files of the directory.
    func indexedNames(_ s: borrowing State) -> Set<FileName> {
        let listed: (files: [FileName], directories: [FileName])? = withDirectory({ try? StoreFiles.entries($0) }) ?? nil
        return Set(s.files.keys).union((listed?.files ?? []).filter { isText($0, s) })
    }

    /// Throws the index away and reads every file again (a new dimension, while nothing is indexed;
    /// damaged vectors of an adopted snapshot, then without `adopting` another mount's again).
    func rebuild(_ s: inout State, adopting: Bool = true) {
        s.index = nil
        s.keywords = nil
        StatePaths.removeTree(indexDirectory)
        host.log(problems: openIndex(&s, adopting: adopting))
        let names = indexedNames(s)
        dropLinks(s)
        s.files = [:]
        s.owner = [:]
        for name in names { refresh(name, &s) }
        checkpoint(&s)
        published(s)
        s.measuredAt = 0
        considerMeasuring(&s)
    }
}
