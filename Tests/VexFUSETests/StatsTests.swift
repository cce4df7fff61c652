import Testing
@testable import VexFUSE
@testable import VexMemory

/// `.vexfs/stats` comes whole from the registry: each family once, counters following their sources.
@Suite struct StatsTests {
    func reading(operations: [(Operation, UInt64, UInt64)] = [], passthrough: String = "on") -> MountMetrics.Reading {
        var tier = BufferPool.TierStatistics()
        tier.hits = 7
        tier.buffers = 2
        return MountMetrics.Reading(
            pool: Array(repeating: tier, count: BufferPool.Tier.allCases.count), poolFallthroughs: 1,
            stack: StackBudget.Report(highWater: Operation.names.map { ($0, 100) }, excesses: 0, firstExcess: nil),
            operations: operations.map { (operation: $0.0, count: $0.1, nanoseconds: $0.2) },
            killprivV2: true, posixACL: false, passthroughReason: passthrough, passthroughOn: passthrough == "on",
            transport: "io_uring", transportIsRing: true, backingFiles: 0, inodes: 12, descriptorsOpen: 3, flockRefused: 2)
    }

    /// Sample lines by name and labels.
    func samples(_ text: String) -> [String: String] {
        var out: [String: String] = [:]
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            let parts = line.split(separator: " ")
            out[String(parts[0])] = String(parts[1])
        }
        return out
    }

    @Test func everyFamilyHasOneHelpAndOneType() {
        let metrics = MountMetrics(stackSize: 256 << 10, stackBudget: 64 << 10, handlerNames: Operation.names)
        let text = metrics.render(reading(operations: [(.create, 3, 5000)]))
        let types = text.split(separator: "\n").filter { $0.hasPrefix("# TYPE ") }.map { $0.split(separator: " ")[2] }
        let helps = text.split(separator: "\n").filter { $0.hasPrefix("# HELP ") }.map { $0.split(separator: " ")[2] }
        #expect(Set(types).count == types.count && Set(helps) == Set(types))
        for family in ["vexfs_buffer_pool_hits_total", "vexfs_buffer_pool_misses_total", "vexfs_buffer_pool_buffers",
                       "vexfs_buffer_pool_fallthroughs_total", "vexfs_stack_budget_bytes", "vexfs_stack_size_bytes",
                       "vexfs_stack_high_water_bytes", "vexfs_stack_budget_exceeded_total", "vexfs_fuse_killpriv_v2",
                       "vexfs_fuse_posix_acl", "vexfs_fuse_passthrough", "vexfs_fuse_transport", "vexfs_fuse_passthrough_backing_files",
                       "vexfs_fuse_requests_total", "vexfs_fuse_request_microseconds_total", "vexfs_inodes",
                       "vexfs_inode_descriptors_open", "vexfs_flock_refused_total"] {
            #expect(types.contains(Substring(family)), "\(family)")
        }
        let s = samples(text)
        #expect(s["vexfs_buffer_pool_hits_total{tier=\"4k\"}"] == "7")
        #expect(s["vexfs_stack_budget_bytes"].flatMap(Double.init) == 65536)
        #expect(s["vexfs_fuse_requests_total{op=\"create\"}"] == "3")
        #expect(s["vexfs_fuse_request_microseconds_total{op=\"create\"}"] == "5")
        #expect(s["vexfs_fuse_requests_total{op=\"lookup\"}"] == nil, "an operation never asked for is not listed")
        #expect(s["vexfs_fuse_passthrough{reason=\"on\"}"].flatMap(Double.init) == 1)
        #expect(s["vexfs_inodes"].flatMap(Double.init) == 12)
        #expect(s["vexfs_flock_refused_total"] == "2")
    }

    @Test func countersFollowTheirSourcesAcrossReadings() {
        let metrics = MountMetrics(stackSize: 256 << 10, stackBudget: 64 << 10, handlerNames: Operation.names)
        _ = metrics.render(reading(operations: [(.create, 3, 5000)]))
        let s = samples(metrics.render(reading(operations: [(.create, 5, 9999), (.lookup, 1, 10)])))
        #expect(s["vexfs_fuse_requests_total{op=\"create\"}"] == "5")
        #expect(s["vexfs_fuse_request_microseconds_total{op=\"create\"}"] == "9")
        #expect(s["vexfs_fuse_requests_total{op=\"lookup\"}"] == "1")
        #expect(s["vexfs_buffer_pool_hits_total{tier=\"1k\"}"] == "7", "not counted twice")
        #expect(s["vexfs_flock_refused_total"] == "2", "not counted twice")
    }

    @Test func aChangedPassthroughReasonReplacesItsSeries() {
        let metrics = MountMetrics(stackSize: 256 << 10, stackBudget: 64 << 10, handlerNames: Operation.names)
        _ = metrics.render(reading())
        let text = metrics.render(reading(passthrough: "refused"))
        let series = text.split(separator: "\n").filter { $0.hasPrefix("vexfs_fuse_passthrough{") }
        #expect(series == ["vexfs_fuse_passthrough{reason=\"refused\"} 0.0"])
    }
}
