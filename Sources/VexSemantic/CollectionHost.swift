import Glibc
import VexStore
import VexEmbed
import VexIndex
import VexKernels

/// What a collection needs from the layer that holds it, and nothing more: a collection never sees
/// the other collections, the FUSE side or the query engine. `SemanticLayer` is the one host; a
/// collection calls these under its own lock, so each is quick and takes only leaf locks (see
/// the lock order on `Collection`).
protocol CollectionHost: AnyObject, Sendable {
    /// Where indexed files, recall measurements and removals are recorded for readers of the journal.
    var journal: Journal { get }
    var metrics: SemanticMetrics { get }
    /// Logs problems (and keeps the last ones for tests and stats).
    func log(problems: [String])
    /// Says how a long mount-time reconciliation is going (rate-limited by the host).
    func progressed(_ what: @autoclosure () -> String)

    /// The hard-link table: `name` in `collection` is now the file `new` (nil: no longer), was `old`.
    func noteLink(collection: UInt64, name: FileName, from old: UInt64?, to new: UInt64?)
    /// The names the file `inode` is indexed under in `collection`.
    func names(of inode: UInt64, in collection: UInt64) -> [FileName]

    /// Vectors one file of dimension `dimension` may bring into a collection of `owner`, after
    /// every collection's, the asking one included, less the `replacing` vectors the file had (the
    /// mount's memory budget, and the owner's share of it and of the state directory's disk).
    func room(forDimension dimension: Int, replacing: Int, owner: uid_t) -> IndexRoom

    /// The bridge that applies file events and runs long work (streams, rebuilds, snapshots).
    var bridge: Bridge { get }
    /// True once the mount is stopping: a long read gives up between slices (the file leaves the
    /// catalog and is read again at the next mount), so unmount and SIGTERM never wait for it.
    var isStopping: Bool { get }
    /// Asks the tuner to measure this collection's recall and set its breadth, off every lock.
    func measureRecallSoon(_ collection: Collection)
    /// Asks the linker to link the vectors waiting beside this collection's graph.
    func linkSoon(_ collection: Collection)

    /// Asks the sender thread to send this collection's embedding requests.
    func sendSoon(_ collection: Collection)
    /// The queue that turns text into vectors (nil: no embedder configured).
    var embedQueue: EmbedQueue<Bridge.Key>? { get }
    /// A new number for an embedding request: a late answer to an older request is dropped.
    func nextEmbedToken() -> UInt64

    /// On a shared store: the directory of the snapshot another mount published for the collection
    /// `key`, when it is newer than the one in `directory` (nil otherwise, or on a store not shared).
    func publishedSnapshot(_ key: UInt64, newerThan directory: String) -> String?
    /// Counts a published snapshot opened.
    func adoptedPublished()
    /// Asks the copier to copy and check an adopted snapshot's vectors (`Collection.finishAdopting`).
    func finishAdoptingSoon(_ collection: Collection)
}

/// How many vectors a file may still bring, and which bound says so (for its status).
struct IndexRoom {
    var rows: Int
    var limit: String
}

/// How the mount configures every collection's index: fixed for the mount's life, shared by value.
struct CollectionConfiguration: @unchecked Sendable {
    /// STORE/.vexfs: each collection's index lives in `index/INODE` below it.
    let stateRoot: String
    let kernels: DistanceKernels
    let indexKind: IndexKind
    let parameters: HNSWParameters
    /// A collection's index is snapshotted once the changes since the last snapshot are as many as
    /// it holds, and at least this many (see `Collection.considerCheckpoint`).
    let snapshotMinimum = 4096
    /// A filtered query on a graph scans the vectors that pass instead, when a sample says they are
    /// at most this many (or a twentieth of the collection).
    let exactScanRows: Int
    /// `.npy` and `.fvecs` files at least this big are read a slice at a time (`VectorStream`).
    let streamThreshold: Int
    /// Vector files at least this big are indexed by the bridge's builder, not its worker.
    let longFileBytes = 1 << 20
    /// Characters a passage holds at most.
    let embedChunk: Int
    /// Whether text collections keep a keyword index (`-o keywords=off`: not).
    var keywords = true
    /// `-o ro,norecovery`: every collection is opened from its snapshot as it was written and
    /// brought up to date with nothing (no file read again, nothing linked, measured or embedded),
    /// and nothing is written under the state root. See `SemanticLayer.norecovery`.
    var norecovery = false

    /// Vectors that may wait beside a graph (every query scans them) before the linker links them in
    /// while writes go on: 4 MiB of them (a scan well under a millisecond), at least 2,048. Below
    /// it they are linked in when the bridge is idle.
    func freshBound(dimension: Int) -> Int { max(2048, (4 << 20) / (4 * dimension)) }

    /// The format of `name` (`st`) when it is a vector file big enough to be read through a stream.
    func streamedFormat(_ name: FileName, _ st: stat) -> VectorFormat? {
        guard StoreFiles.isRegular(st), let format = name.vectorFormat,
              VectorStream.streams(format, size: Int(st.st_size), threshold: streamThreshold) else { return nil }
        return format
    }
}
