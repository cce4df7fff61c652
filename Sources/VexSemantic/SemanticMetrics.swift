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
    let vectors: Meter
    let depth: Meter
    let journalBytes: Meter
    let embed: EmbedMetrics
    /// Snapshots set aside at open, by why (every reason is shown, at zero until it happens).
    private let rejections: [SnapshotRejection: Counter]

    public init(factory: any MetricsFactory = NOOPMetricsHandler.instance) {
        embed = EmbedMetrics(factory: factory)
        queries = CoreMetrics.Timer(label: SemanticMetrics.queryLabel, dimensions: [], factory: factory)
        cached = Counter(label: "vexfs_query_cached_total", dimensions: [], factory: factory)
        bridge = Bridge.Counters(factory: factory)
        collections = Meter(label: "vexfs_collections", dimensions: [], factory: factory)
        vectors = Meter(label: "vexfs_index_vectors", dimensions: [], factory: factory)
        depth = Meter(label: "vexfs_bridge_queue_depth", dimensions: [], factory: factory)
        journalBytes = Meter(label: "vexfs_journal_bytes", dimensions: [], factory: factory)
        rejections = Dictionary(uniqueKeysWithValues: SnapshotRejection.allCases.map {
            ($0, Counter(label: "vexfs_snapshot_rejected_total", dimensions: [("reason", $0.rawValue)], factory: factory))
        })
    }

    func rejected(_ reason: SnapshotRejection) { rejections[reason]?.increment() }
}
