import Glibc
import VexStore

extension FileName {
    /// A query file (`NAME.query`): asked, never indexed.
    var isQuery: Bool { hasSuffix(".query") }
    /// The vector format the name says (`a.npy`); nil for other names, query files included.
    var vectorFormat: VectorFormat? { isQuery ? nil : VectorFormat(fileName: self) }
    /// The format a query file's name says (`q.npy.query`); nil for a bare `q.query`, whose bytes decide.
    var queryFormat: VectorFormat? { isQuery ? VectorFormat(fileName: dropLast(6)) : nil }
}

/// What the vector layer makes of a name in a collection's directory: the one classification,
/// used by events, reconciliation, re-reading and status alike.
enum FileKind: Equatable {
    /// `NAME.npy`, `NAME.fvecs`, `NAME.vec`...: its content is vectors in that format.
    case vector(VectorFormat)
    /// `NAME.query` (`NAME.npy.query` says its format; a bare one is known by its bytes): asked,
    /// never indexed.
    case query(VectorFormat?)
    /// Text to embed: an embedder is configured and the name matches the collection's globs.
    case text
    /// Any other name whose file carries `user.vexfs.vector`.
    case attributeCarrier
    case other

    /// The kind the name alone says (a vector or a query file); nil when the directory's rules and
    /// the file decide.
    init?(name: FileName) {
        if name.isQuery { self = .query(name.queryFormat) } else if let format = name.vectorFormat { self = .vector(format) } else { return nil }
    }

    /// Whether a file of this kind holds vectors the collection indexes.
    var isIndexed: Bool {
        switch self {
        case .vector, .text, .attributeCarrier: true
        case .query, .other: false
        }
    }
}

/// The rules one directory classifies its names by.
struct NameRules {
    /// `user.vexfs.embed`'s globs on the base name; nil: the mount's default ones.
    var textGlobs: [String]?
    /// Whether the mount has an embedder: without one, nothing is text.
    var embedding: Bool

    static let defaultTextGlobs = ["*.txt", "*.md"]

    /// The kind of `name`; `carriesVector` (which may read an attribute) is asked only of a name
    /// that is nothing else.
    func kind(of name: FileName, carriesVector: () -> Bool = { false }) -> FileKind {
        if let kind = FileKind(name: name) { return kind }
        return isText(name) ? .text : carriesVector() ? .attributeCarrier : .other
    }

    /// Whether `name`, neither a vector nor a query file, is text to embed.
    func isText(_ name: FileName) -> Bool {
        embedding && name.withCString { n in (textGlobs ?? NameRules.defaultTextGlobs).contains { fnmatch($0, n, FNM_PERIOD) == 0 } }
    }
}

/// Whether the file `name` in `dir` carries a vector in its `user.vexfs.vector` attribute.
func hasVectorAttribute(_ dir: Int32, _ name: FileName) -> Bool {
    (try? StoreFiles.attribute(dir, name, SemanticLayer.vectorAttribute)) != nil
}
