import CoreMetrics
import VexEmbed
import VexIndex

/// The vector layer's figures, made through swift-metrics with whatever factory the owner gives
/// (the mount's is a Prometheus registry that `.vexfs/stats` emits; tests use the no-op one).
/// Gauges are set when the stats are read, never on the request path.
public final class SemanticMetrics: Sendable {
    public static let queryLabel = "vexfs_query_seconds"
    public static let batchLabel = "vexfs_bridge_batch_size"
    let queries: CoreMetrics.Timer
    let cached: Counter
    let bridge: Bridge.Counters
    let collections: Meter
    /// Collections' directory descriptors: open now (in the bounded set), its bound, those kept
    /// open for good because handles are refused, and reopens so far.
    let collectionDirectoriesOpen: Meter
    let collectionDirectoriesBound: Meter
    let collectionDirectoriesKept: Meter
    let collectionDirectoriesReopened: Meter
    let vectors: Meter
    let depth: Meter
    let journalBytes: Meter
    /// What STORE/.vexfs takes on disk (indexes, snapshots, journal).
    let stateBytes: Meter
    /// Across graph collections: the lowest recall@10 the tuner measured (0 before any), the
    /// lowest target set, and the widest search breadth in use. No collection is named: anyone
    /// may read the stats.
    let recallMeasured: Meter
    let recallTarget: Meter
    let efInUse: Meter
    let embed: EmbedMetrics
    let shared: SharedMetrics
    /// Snapshots set aside at open, by why (every reason is shown, at zero until it happens).
    private let rejections: [SnapshotRejection: Counter]

    public init(factory: any MetricsFactory = NOOPMetricsHandler.instance) {
        embed = EmbedMetrics(factory: factory)
        shared = SharedMetrics(factory: factory)
        queries = CoreMetrics.Timer(label: SemanticMetrics.queryLabel, dimensions: [], factory: factory)
        cached = Counter(label: "vexfs_query_cached_total", dimensions: [], factory: factory)
        bridge = Bridge.Counters(factory: factory)
        collections = Meter(label: "vexfs_collections", dimensions: [], factory: factory)
        collectionDirectoriesOpen = Meter(label: "vexfs_collection_dirs_open", dimensions: [], factory: factory)
        collectionDirectoriesBound = Meter(label: "vexfs_collection_dirs_bound", dimensions: [], factory: factory)
        collectionDirectoriesKept = Meter(label: "vexfs_collection_dirs_kept", dimensions: [], factory: factory)
        collectionDirectoriesReopened = Meter(label: "vexfs_collection_dirs_reopened", dimensions: [], factory: factory)
        vectors = Meter(label: "vexfs_index_vectors", dimensions: [], factory: factory)
        depth = Meter(label: "vexfs_bridge_queue_depth", dimensions: [], factory: factory)
        journalBytes = Meter(label: "vexfs_journal_bytes", dimensions: [], factory: factory)
        stateBytes = Meter(label: "vexfs_state_bytes", dimensions: [], factory: factory)
        recallMeasured = Meter(label: "vexfs_index_recall_measured", dimensions: [], factory: factory)
        recallTarget = Meter(label: "vexfs_index_recall_target", dimensions: [], factory: factory)
        efInUse = Meter(label: "vexfs_index_ef_in_use", dimensions: [], factory: factory)
        rejections = Dictionary(uniqueKeysWithValues: SnapshotRejection.allCases.map {
            ($0, Counter(label: "vexfs_snapshot_rejected_total", dimensions: [("reason", $0.rawValue)], factory: factory))
        })
    }

    func rejected(_ reason: SnapshotRejection) { rejections[reason]?.increment() }
}
