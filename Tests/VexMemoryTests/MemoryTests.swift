import Glibc
import Synchronization
import Testing
import VexTestSupport
@testable import VexMemory

@Suite struct BufferPoolTests {
    @Test func tiersHandOutAlignedBuffersOfTheRightSize() {
        let pool = BufferPool()
        for (request, size) in [(1, 1024), (1024, 1024), (1025, 4096), (4096, 4096), (4097, 16384), (16384, 16384)] {
            let b = pool.acquire(request)
            #expect(b.capacity == size)
            #expect(Int(bitPattern: b.pointer) % 64 == 0)
            memset(b.pointer, 0xab, b.capacity)  // the whole capacity is ours
            pool.release(b)
        }
        let big = pool.acquire(100_000)
        #expect(big.tier == nil && big.capacity == 100_000 && Int(bitPattern: big.pointer) % 64 == 0)
        pool.release(big)
        #expect(pool.statistics().fallthroughs == 1)
    }

    @Test func countsHitsAndMisses() {
        var config = BufferPool.Configuration()
        config.preallocated = [4, 0, 0]
        config.threadCacheCapacity = 4
        let pool = BufferPool(config)
        var held: [BufferPool.Buffer] = []
        for _ in 0..<10 { held.append(pool.acquire(4096)) }
        let stats = pool.statistics().tiers[BufferPool.Tier.medium.rawValue]
        #expect(stats.hits + stats.misses == 10)
        #expect(stats.misses >= 1)  // nothing was preallocated in this tier
        held.forEach(pool.release)
        let again = pool.acquire(4096)
        #expect(pool.statistics().tiers[1].hits == stats.hits + 1)
        pool.release(again)
    }

    @Test func misuseIsDetected() {
        let pool = BufferPool()
        let b = pool.acquire(1000)
        #expect(pool.check(b) == nil)
        let wrongTier = BufferPool.Buffer(pointer: b.pointer, capacity: 4096, tier: .medium)
        #expect(pool.check(wrongTier) == .wrongTier(.small))
        var outside = 0
        let foreign = BufferPool.Buffer(pointer: &outside, capacity: 1024, tier: .small)
        #expect(pool.check(foreign) == .notFromPool)
        pool.release(b)
        #if DEBUG
        #expect(pool.check(b) == .doubleRelease)
        #endif
    }

    @Test func concurrentUseNeverHandsOneBufferOutTwice() {
        let pool = BufferPool()
        let owners = Mutex<[UnsafeMutableRawPointer: Int]>([:])
        let clashes = Atomic<Int>(0)
        let threads = 4
        runOnThreads((0..<threads).map { id in { @Sendable in
            for round in 0..<20_000 {
                let size = [100, 2000, 9000][(round + id) % 3]
                let b = pool.acquire(size)
                let clash = owners.withLock { table -> Bool in
                    if table[b.pointer] != nil { return true }
                    table[b.pointer] = id
                    return false
                }
                if clash { clashes.add(1, ordering: .relaxed) }
                b.pointer.storeBytes(of: UInt64(id), as: UInt64.self)
                if b.pointer.load(as: UInt64.self) != UInt64(id) { clashes.add(1, ordering: .relaxed) }
                owners.withLock { _ = $0.removeValue(forKey: b.pointer) }
                pool.release(b)
            }
        } })
        #expect(clashes.load(ordering: .relaxed) == 0)
    }
}

/// Uses at least `frames` x 4 KiB of stack (four 1 KiB stack allocations a frame: Swift moves
/// larger temporary allocations to the heap).
@inline(never)
func deep(_ frames: Int) -> Int {
    withUnsafeTemporaryAllocation(byteCount: 1024, alignment: 16) { a in
        withUnsafeTemporaryAllocation(byteCount: 1024, alignment: 16) { b in
            withUnsafeTemporaryAllocation(byteCount: 1024, alignment: 16) { c in
                withUnsafeTemporaryAllocation(byteCount: 1024, alignment: 16) { d in
                    for buffer in [a, b, c, d] { memset(buffer.baseAddress!, Int32(frames & 0x7f), 1024) }
                    let below = frames == 0 ? 0 : deep(frames - 1)
                    return below &+ Int(a[10]) &+ Int(b[20]) &+ Int(c[30]) &+ Int(d[1000])
                }
            }
        }
    }
}

@Suite struct StackBudgetTests {
    @Test func deepHandlerRaisesTheMarkAndCountsAsExcess() {
        let monitor = StackBudget(budget: 64 * 1024, handlerNames: ["shallow", "deep"])
        runOnThreads(stackSize: 512 * 1024, [{
            for _ in 0..<3 { _ = monitor.measure(0) { deep(1) } }
            _ = monitor.measure(1) { deep(40) }  // ~160 KiB
            _ = monitor.measure(0) { deep(1) }
        }])
        let r = monitor.report()
        let shallow = r.highWater[0].bytes, deepMark = r.highWater[1].bytes
        #expect(shallow > 4096 && shallow < 64 * 1024, "shallow used \(shallow)")
        #expect(deepMark >= 40 * 4096 && deepMark < 400 * 1024, "deep used \(deepMark)")
        #expect(r.excesses == 1)
        #expect(r.firstExcess?.handler == "deep")
    }

    @Test func markIsPerHandlerAndRepaintedBetweenCalls() {
        let monitor = StackBudget(budget: 1 << 20, handlerNames: ["a", "b"])
        runOnThreads(stackSize: 512 * 1024, [{
            _ = monitor.measure(0) { deep(20) }
            _ = monitor.measure(1) { deep(2) }  // runs after a deeper handler on the same thread
        }])
        let r = monitor.report()
        #expect(r.highWater[0].bytes > r.highWater[1].bytes + 10 * 4096)
        #expect(r.excesses == 0)
    }
}
