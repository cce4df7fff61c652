import CFuse
import CMemory
import Prometheus
import Synchronization
import VexMemory
import VexSemantic

/// The mount's figures, all in one swift-prometheus registry that `.vexfs/stats` renders whole: the
/// vector layer's (through swift-metrics, with `factory`) and the FUSE layer's own, registered here.
///
/// The FUSE layer's figures are kept where they are cheapest to keep (relaxed counters in the buffer
/// pool, the stack monitor and `OperationMetrics`, counts in the store) and copied into the registry
/// when the stats are read: a gauge is set to the value now, a counter is advanced by what it grew
/// since the last reading. A series that exists only once something happened (an operation's first
/// request, the first run over the stack budget) is registered then, so the file lists it from then on.
/// Every FUSE operation, for per-handler figures. The order is the stats' order.
enum Operation: Int, CaseIterable {
    case lookup, forget, forgetMulti, getattr, setattr, readlink, mknod, mkdir, unlink, rmdir, symlink
    case rename, link, open, read, writeBuf, flush, release, fsync, opendir, readdir, readdirplus
    case releasedir, fsyncdir, statfs, setxattr, getxattr, listxattr, removexattr, access, create
    case fallocate, copyFileRange, lseek, ioctl, flock

    static let names = allCases.map { "\($0)" }
}

/// Requests and time spent per operation: two relaxed counters each, in raw memory (no locks, no
/// exclusivity checks on the request path).
final class OperationMetrics: @unchecked Sendable {
    private let counters: UnsafeMutablePointer<UInt64>
    init() {
        counters = .allocate(capacity: 2 * Operation.allCases.count)
        counters.initialize(repeating: 0, count: 2 * Operation.allCases.count)
    }
    deinit { counters.deallocate() }

    @inline(__always) func record(_ op: Operation, nanoseconds: UInt64) {
        vx_counter_add(counters + 2 * op.rawValue, 1)
        vx_counter_add(counters + 2 * op.rawValue + 1, nanoseconds)
    }

    func read(_ op: Operation) -> (count: UInt64, nanoseconds: UInt64) {
        (vx_counter_load(counters + 2 * op.rawValue), vx_counter_load(counters + 2 * op.rawValue + 1))
    }
}

final class MountMetrics: Sendable {
    let registry: PrometheusCollectorRegistry

    /// The vector layer's swift-metrics backend: this registry, with the query-latency and batch-size
    /// buckets chosen for them.
    var factory: PrometheusMetricsFactory {
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.durationHistogramBuckets[SemanticMetrics.queryLabel] =
            [50, 100, 250, 500, 1000, 2000, 5000, 10_000, 50_000].map { Duration.microseconds($0) }
        factory.valueHistogramBuckets[SemanticMetrics.batchLabel] = [1, 4, 16, 64, 256, 1024]
        return factory
    }

    /// What the FUSE layer knows when the stats are read.
    struct Reading {
        var pool: [BufferPool.TierStatistics]
        var poolFallthroughs: Int
        var stack: StackBudget.Report
        /// Requests and nanoseconds per operation, for those with at least one request.
        var operations: [(operation: Operation, count: UInt64, nanoseconds: UInt64)]
        var killprivV2: Bool
        var posixACL: Bool
        /// "on", or why passthrough is off.
        var passthroughReason: String
        var passthroughOn: Bool
        /// "io_uring", or "/dev/fuse: " and why.
        var transport: String
        var transportIsRing: Bool
        var backingFiles: Int
        var inodes: Int
        var descriptorsOpen: Int
        /// Users' flock(2) calls answered ENOLCK (too many waited already).
        var flockRefused: Int
    }

    /// The FUSE layer's families: name and help, each registered under one type.
    private enum Family {
        /// A family named `name` exactly (no namespace or unit is added).
        static func family(_ name: String, _ help: String) -> MetricNameDescriptor {
            MetricNameDescriptor(metricName: name, unitName: "", helpText: help)
        }
        static var bufferPoolHitsTotal: MetricNameDescriptor { family("vexfs_buffer_pool_hits_total",
            "Scratch buffers served from the pool.") }
        static var bufferPoolMissesTotal: MetricNameDescriptor { family("vexfs_buffer_pool_misses_total",
            "Requests that found the tier empty and grew it.") }
        static var bufferPoolBuffers: MetricNameDescriptor { family("vexfs_buffer_pool_buffers",
            "Buffers the pool owns.") }
        static var bufferPoolFallthroughsTotal: MetricNameDescriptor { family("vexfs_buffer_pool_fallthroughs_total",
            "Requests larger than 16 KiB, served by the system allocator.") }
        static var stackBudgetBytes: MetricNameDescriptor { family("vexfs_stack_budget_bytes",
            "Stack a handler may use, from the top of its worker thread's stack.") }
        static var stackSizeBytes: MetricNameDescriptor { family("vexfs_stack_size_bytes",
            "Stack size of the FUSE worker threads.") }
        static var stackHighWaterBytes: MetricNameDescriptor { family("vexfs_stack_high_water_bytes",
            "Deepest stack use seen per handler.") }
        static var stackBudgetExceededTotal: MetricNameDescriptor { family("vexfs_stack_budget_exceeded_total",
            "Handler runs that used more stack than the budget.") }
        static var fuseKillprivV2: MetricNameDescriptor { family("vexfs_fuse_killpriv_v2",
            "1 when vexfs drops privileges on write itself, sparing the kernel's per-write security.capability probe.") }
        static var fusePosixAcl: MetricNameDescriptor { family("vexfs_fuse_posix_acl",
            "1 when the kernel caches and enforces POSIX ACLs (FUSE_POSIX_ACL).") }
        static var fusePassthroughBackingFiles: MetricNameDescriptor { family("vexfs_fuse_passthrough_backing_files",
            "Backing files registered with the kernel: one per file open in passthrough.") }
        static var inodes: MetricNameDescriptor { family("vexfs_inodes",
            "Files and directories the kernel currently remembers.") }
        static var inodeDescriptorsOpen: MetricNameDescriptor { family("vexfs_inode_descriptors_open",
            "O_PATH descriptors held for them (bounded by the budget).") }
        static var stackFirstExcessBytes: MetricNameDescriptor { family("vexfs_stack_first_excess_bytes",
            "The first handler run over the budget, and how deep it went.") }
        static var fusePassthrough: MetricNameDescriptor { family("vexfs_fuse_passthrough",
            "1 when the kernel reads and writes open files on the store itself (FUSE passthrough); 0 with the reason in the label.") }
        static var fuseTransport: MetricNameDescriptor { family("vexfs_fuse_transport",
            "How requests reach the daemon: 1 for io_uring queues; 0 for /dev/fuse, with the reason in the label.") }
        static var flockRefusedTotal: MetricNameDescriptor { family("vexfs_flock_refused_total",
            "Users' flock(2) calls on a shared store answered ENOLCK: half the workers already waited for locks.") }
        static var norecovery: MetricNameDescriptor { family("vexfs_norecovery",
            "1 when mounted ro,norecovery: nothing brought up to date, nothing written into the store or its state; collections answer from their snapshots as written.") }
        static var fuseRequestsTotal: MetricNameDescriptor { family("vexfs_fuse_requests_total",
            "FUSE requests answered, per operation.") }
        static var fuseRequestMicrosecondsTotal: MetricNameDescriptor { family("vexfs_fuse_request_microseconds_total",
            "Time spent in the handlers, per operation (divide by the requests for the mean latency).") }
    }

    // Registered at mount: their series are known from the start.
    private let poolHits: [Counter]
    private let poolMisses: [Counter]
    private let poolBuffers: [Gauge]
    private let poolFallthroughs: Counter
    private let stackHighWater: [Gauge]
    private let stackExcesses: Counter
    private let killprivV2: Gauge
    private let posixACL: Gauge
    private let backingFiles: Gauge
    private let inodes: Gauge
    private let descriptorsOpen: Gauge
    private let flockRefused: Counter

    /// What the counters showed at the last reading, and the series registered since the mount.
    /// Held while a reading is copied in and rendered, so two readers never count a growth twice.
    private struct Copied {
        var counted: [String: UInt64] = [:]
        var requests: [Operation: Counter] = [:]
        var requestMicroseconds: [Operation: Counter] = [:]
        var firstExcess: Gauge?
        var passthrough: (reason: String, gauge: Gauge)?
        var transport: (reason: String, gauge: Gauge)?
    }
    private let copied = Mutex(Copied())

    init(stackSize: Int, stackBudget: Int, handlerNames: [String], norecovery: Bool = false) {
        let registry = PrometheusCollectorRegistry()
        self.registry = registry
        let tiers = BufferPool.Tier.allCases
        poolHits = tiers.map {
            registry.makeCounter(descriptor: Family.bufferPoolHitsTotal, labels: [("tier", "\($0)")])
        }
        poolMisses = tiers.map {
            registry.makeCounter(descriptor: Family.bufferPoolMissesTotal, labels: [("tier", "\($0)")])
        }
        poolBuffers = tiers.map {
            registry.makeGauge(descriptor: Family.bufferPoolBuffers, labels: [("tier", "\($0)")])
        }
        poolFallthroughs = registry.makeCounter(descriptor: Family.bufferPoolFallthroughsTotal)
        registry.makeGauge(descriptor: Family.stackBudgetBytes)
            .set(to: Double(stackBudget))
        registry.makeGauge(descriptor: Family.stackSizeBytes).set(to: Double(stackSize))
        registry.makeGauge(descriptor: Family.norecovery).set(to: norecovery ? 1 : 0)
        stackHighWater = handlerNames.map {
            registry.makeGauge(descriptor: Family.stackHighWaterBytes, labels: [("handler", $0)])
        }
        stackExcesses = registry.makeCounter(descriptor: Family.stackBudgetExceededTotal)
        killprivV2 = registry.makeGauge(descriptor: Family.fuseKillprivV2)
        posixACL = registry.makeGauge(descriptor: Family.fusePosixAcl)
        backingFiles = registry.makeGauge(descriptor: Family.fusePassthroughBackingFiles)
        inodes = registry.makeGauge(descriptor: Family.inodes)
        descriptorsOpen = registry.makeGauge(descriptor: Family.inodeDescriptorsOpen)
        flockRefused = registry.makeCounter(descriptor: Family.flockRefusedTotal)
    }

    /// Copies `reading` into the registry and renders all of it: Prometheus text exposition, each
    /// family once with its HELP and TYPE.
    func render(_ reading: Reading) -> String {
        copied.withLock { copied in
            func advance(_ counter: Counter, _ key: String, to value: UInt64) {
                let last = copied.counted[key] ?? 0
                if value > last {
                    counter.increment(by: Int64(value - last))
                    copied.counted[key] = value
                }
            }
            for tier in BufferPool.Tier.allCases {
                let t = reading.pool[tier.rawValue]
                advance(poolHits[tier.rawValue], "hits.\(tier)", to: UInt64(t.hits))
                advance(poolMisses[tier.rawValue], "misses.\(tier)", to: UInt64(t.misses))
                poolBuffers[tier.rawValue].set(to: Double(t.buffers))
            }
            advance(poolFallthroughs, "fallthroughs", to: UInt64(reading.poolFallthroughs))
            for (gauge, mark) in zip(stackHighWater, reading.stack.highWater) { gauge.set(to: Double(mark.bytes)) }
            advance(stackExcesses, "excesses", to: UInt64(reading.stack.excesses))
            if let first = reading.stack.firstExcess, copied.firstExcess == nil {
                let gauge = registry.makeGauge(descriptor: Family.stackFirstExcessBytes, labels: [("handler", first.handler)])
                gauge.set(to: Double(first.bytes))
                copied.firstExcess = gauge
            }
            killprivV2.set(to: reading.killprivV2 ? 1 : 0)
            posixACL.set(to: reading.posixACL ? 1 : 0)
            // One series, labelled with the reason now: a reason that changed (passthrough refused
            // after INIT) replaces the old series.
            if copied.passthrough?.reason != reading.passthroughReason {
                if let old = copied.passthrough { registry.unregisterGauge(old.gauge) }
                let gauge = registry.makeGauge(descriptor: Family.fusePassthrough, labels: [("reason", reading.passthroughReason)])
                copied.passthrough = (reading.passthroughReason, gauge)
            }
            copied.passthrough!.gauge.set(to: reading.passthroughOn ? 1 : 0)
            if copied.transport?.reason != reading.transport {
                if let old = copied.transport { registry.unregisterGauge(old.gauge) }
                let gauge = registry.makeGauge(descriptor: Family.fuseTransport, labels: [("reason", reading.transport)])
                copied.transport = (reading.transport, gauge)
            }
            copied.transport!.gauge.set(to: reading.transportIsRing ? 1 : 0)
            backingFiles.set(to: Double(reading.backingFiles))
            for (op, count, nanoseconds) in reading.operations {
                let requests = copied.requests[op] ?? registry.makeCounter(descriptor: Family.fuseRequestsTotal, labels: [("op", "\(op)")])
                let time = copied.requestMicroseconds[op] ?? registry.makeCounter(descriptor: Family.fuseRequestMicrosecondsTotal, labels: [("op", "\(op)")])
                copied.requests[op] = requests
                copied.requestMicroseconds[op] = time
                advance(requests, "requests.\(op)", to: count)
                advance(time, "microseconds.\(op)", to: nanoseconds / 1000)
            }
            inodes.set(to: Double(reading.inodes))
            descriptorsOpen.set(to: Double(reading.descriptorsOpen))
            advance(flockRefused, "flockRefused", to: UInt64(reading.flockRefused))
            return registry.emitToString()
        }
    }
}

extension Filesystem {
    /// `.vexfs/stats`: Prometheus text exposition, made when the file is opened.
    func renderStats(_ req: fuse_req_t?) -> String {
        renderStats(killprivV2: vexfs_req_killpriv_v2(req) != 0, posixACL: vexfs_req_posix_acl(req) != 0,
                    passthrough: vexfs_req_passthrough(req), transport: vexfs_req_transport(req))
    }

    /// The same, outside a request (the metrics endpoint), from what the session settled at INIT.
    func renderStats(_ session: OpaquePointer) -> String {
        renderStats(killprivV2: vexfs_session_killpriv_v2(session) != 0, posixACL: vexfs_session_posix_acl(session) != 0,
                    passthrough: vexfs_session_passthrough(session), transport: vexfs_session_transport(session))
    }

    private func renderStats(killprivV2: Bool, posixACL: Bool, passthrough: Int32, transport: Int32) -> String {
        let (tiers, fallthroughs) = pool.statistics()
        let reading = MountMetrics.Reading(
            pool: tiers, poolFallthroughs: fallthroughs, stack: stack.report(),
            operations: Operation.allCases.map { op in
                let (count, nanoseconds) = operations.read(op)
                return (op, count, nanoseconds)
            }.filter { $0.count > 0 },
            killprivV2: killprivV2, posixACL: posixACL,
            passthroughReason: String(cString: vexfs_passthrough_reason(passthrough)),
            passthroughOn: passthrough == Int32(VEXFS_PASSTHROUGH_ON.rawValue),
            transport: String(cString: vexfs_transport_reason(transport)),
            transportIsRing: transport == Int32(VEXFS_TRANSPORT_URING.rawValue),
            backingFiles: backing.registeredCount,
            inodes: store.inodes.count, descriptorsOpen: store.inodes.descriptors.openCount,
            flockRefused: flockRefusals.count.load(ordering: .relaxed))
        // The vector layer's gauges are set from its state now, never on the request path.
        semantic?.refreshGauges()
        return metrics.render(reading)
    }
}
