import VexEmbed
import Logging
import VexKeyword

// The mount's embedding cache (STORE/.vexfs/embeddings.sqlite) is what the embedder queue asks
// before it sends a passage: a rename, a copy into another collection, a settings change or a
// remount finds the passage's vector there and sends nothing. A question in words asked again (in
// any collection) finds its vector there too. Both are kept apart for each user (the owner of the
// file the words are in): a vector found comes back at once, so a shared cache would tell one user
// whether another's files hold a passage, or their query files a question, that they guessed.

extension EmbeddingCache: EmbeddingMemory {}

extension SemanticLayer {
    /// The cache for `embedder`'s document model and chunking; nil (and a log line) when it cannot
    /// be opened at all: the mount then sends every passage, as before there was a cache.
    static func embeddingCache(_ stateRoot: String, _ embedder: EmbedderConfiguration) -> EmbeddingCache? {
        do {
            let cache = try EmbeddingCache(path: stateRoot + "/embeddings.sqlite", model: embedder.documentModel, chunk: embedder.chunk,
                                           questionModel: embedder.queryModel)
            if let why = cache.setAside { Logger(label: "vexfs").warning("embeddings.sqlite set aside (\(why)); the cache starts empty") }
            return cache
        } catch {
            Logger(label: "vexfs").warning("the embedding cache cannot be opened: \(error); every passage is sent")
            return nil
        }
    }
}
