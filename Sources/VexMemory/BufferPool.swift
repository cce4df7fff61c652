// VexMemory owns the memory behaviour of the request handlers: where their scratch buffers come from
// and how deep their stacks go. `BufferPool` hands out 64-byte-aligned buffers of 1, 4 and 16 KiB
// from slabs allocated up front (node-local through libnuma when the machine has several NUMA
// nodes), through a per-thread cache so the common acquire/release touches no lock and no shared
// cache line; larger requests fall through to the system allocator. `StackBudget` paints each worker
// thread's stack and, after every handler, finds how deep the paint was disturbed: the high-water
// mark per handler, and how often a handler went past the budget. Both report counters that the
// filesystem publishes in `.vexfs/stats`.
import CMemory
import Glibc
import Synchronization

public final class BufferPool: @unchecked Sendable {
    public enum Tier: Int, CaseIterable, Sendable, CustomStringConvertible {
        case small, medium, large
        public var size: Int { [1024, 4096, 16384][rawValue] }
        public var description: String { ["1k", "4k", "16k"][rawValue] }
        /// The smallest tier that holds `bytes`, or nil when it needs the system allocator.
        public static func fitting(_ bytes: Int) -> Tier? {
            bytes <= 1024 ? .small : bytes <= 4096 ? .medium : bytes <= 16384 ? .large : nil
        }
    }

    public struct Configuration: Sendable {
        /// Buffers allocated per tier when the pool is made (small, medium, large).
        public var preallocated = [256, 256, 64]
        /// Buffers a thread keeps per tier before it hands half back to the shared list.
        public var threadCacheCapacity = 64
        public init() {}
    }

    /// Memory from the pool (or, when `tier` is nil, from the system allocator).
    public struct Buffer: @unchecked Sendable {
        public let pointer: UnsafeMutableRawPointer
        public let capacity: Int
        public let tier: Tier?
        public var bytes: UnsafeMutableRawBufferPointer { UnsafeMutableRawBufferPointer(start: pointer, count: capacity) }
    }

    public struct TierStatistics: Sendable, Equatable {
        public var hits = 0, misses = 0, buffers = 0
    }

    public enum Misuse: Error, Equatable { case notFromPool, wrongTier(Tier), doubleRelease }

    public let configuration: Configuration
    public let nodeLocal: Bool
    private let shared: [SharedList]
    /// Every slab, per tier: (base, byte count). Guarded; read to validate a returned buffer. Slabs
    /// are never freed: a pool lives as long as its mount.
    /// (Addresses are kept as integers where they cross threads: raw pointers are not Sendable.)
    private let slabs = Mutex<[[(base: UInt, bytes: Int)]]>([[], [], []])
    /// Debug builds only: buffers handed out and not yet returned.
    private let outstanding = Mutex<Set<UInt>>([])
    private let caches = Mutex<[ThreadCache]>([])
    private let fallthroughs = Atomic<Int>(0)
    /// Set once in init; a `let`, as a stored `var` would cost an exclusivity check per access.
    private let key: pthread_key_t

    public init(_ configuration: Configuration = Configuration()) {
        self.configuration = configuration
        nodeLocal = vx_numa_nodes() > 1
        shared = Tier.allCases.map { _ in SharedList() }
        var key = pthread_key_t()
        pthread_key_create(&key) { cache in
            // The thread is ending: its buffers go back to the shared lists.
            Unmanaged<ThreadCache>.fromOpaque(cache!).takeRetainedValue().returnAll()
        }
        self.key = key
        for tier in Tier.allCases where configuration.preallocated[tier.rawValue] > 0 {
            giveShared(tier, grow(tier, count: configuration.preallocated[tier.rawValue])[...])
        }
    }

    /// A buffer of at least `bytes`, 64-byte aligned.
    @inline(__always)
    public func acquire(_ bytes: Int) -> Buffer {
        guard let tier = Tier.fitting(bytes) else {
            fallthroughs.add(1, ordering: .relaxed)
            var p: UnsafeMutableRawPointer?
            guard posix_memalign(&p, 64, bytes) == 0, let p else { fatalError("out of memory (\(bytes) bytes)") }
            return Buffer(pointer: p, capacity: bytes, tier: nil)
        }
        let pointer = withThreadCache { $0.take(tier) }
        #if DEBUG
        let address = UInt(bitPattern: pointer)
        outstanding.withLock { _ = $0.insert(address) }
        #endif
        return Buffer(pointer: pointer, capacity: tier.size, tier: tier)
    }

    /// Returns a buffer. Debug builds stop at a buffer returned twice, to the wrong tier, or not ours.
    @inline(__always)
    public func release(_ buffer: Buffer) {
        guard let tier = buffer.tier else {
            free(buffer.pointer)
            return
        }
        #if DEBUG
        if let misuse = check(buffer) { preconditionFailure("BufferPool.release: \(misuse)") }
        let address = UInt(bitPattern: buffer.pointer)
        outstanding.withLock { _ = $0.remove(address) }
        #endif
        withThreadCache { $0.put(buffer.pointer, tier) }
    }

    /// What would be wrong with returning `buffer` now (nil: nothing).
    public func check(_ buffer: Buffer) -> Misuse? {
        guard let tier = buffer.tier else { return nil }
        let p = UInt(bitPattern: buffer.pointer)
        let owner: Tier? = slabs.withLock { all in
            Tier.allCases.first { t in
                all[t.rawValue].contains { p >= $0.base && p < $0.base + UInt($0.bytes) && Int(p - $0.base) % t.size == 0 }
            }
        }
        guard let owner else { return .notFromPool }
        if owner != tier { return .wrongTier(owner) }
        #if DEBUG
        if !outstanding.withLock({ $0.contains(p) }) { return .doubleRelease }
        #endif
        return nil
    }

    /// Hits, misses and buffers per tier, summed over every thread; and the fall-throughs.
    public func statistics() -> (tiers: [TierStatistics], fallthroughs: Int) {
        var tiers = Array(repeating: TierStatistics(), count: Tier.allCases.count)
        caches.withLock { all in
            for c in all {
                for t in Tier.allCases {
                    tiers[t.rawValue].hits += c.hits[t.rawValue]
                    tiers[t.rawValue].misses += c.misses[t.rawValue]
                }
            }
        }
        slabs.withLock { all in
            for t in Tier.allCases { tiers[t.rawValue].buffers = all[t.rawValue].reduce(0) { $0 + $1.bytes / t.size } }
        }
        return (tiers, fallthroughs.load(ordering: .relaxed))
    }

    // MARK: internals

    /// Runs `body` on this thread's cache without retaining it: the thread-specific slot owns it.
    @inline(__always)
    private func withThreadCache<R>(_ body: (ThreadCache) -> R) -> R {
        let raw = pthread_getspecific(key) ?? makeThreadCache()
        return Unmanaged<ThreadCache>.fromOpaque(raw)._withUnsafeGuaranteedRef(body)
    }

    @inline(never)
    private func makeThreadCache() -> UnsafeMutableRawPointer {
        let cache = ThreadCache(pool: self)
        let raw = Unmanaged.passRetained(cache).toOpaque()
        pthread_setspecific(key, raw)
        caches.withLock { $0.append(cache) }
        return raw
    }

    /// New buffers for `tier`, carved from one new slab.
    fileprivate func grow(_ tier: Tier, count: Int) -> [UnsafeMutableRawPointer] {
        let bytes = tier.size * count
        guard let slab = vx_slab_alloc(bytes, nodeLocal ? 1 : 0) else { fatalError("out of memory (slab of \(bytes) bytes)") }
        let base = UInt(bitPattern: slab)
        slabs.withLock { $0[tier.rawValue].append((base, bytes)) }
        return (0..<count).map { slab + $0 * tier.size }
    }

    fileprivate func takeShared(_ tier: Tier, upTo n: Int) -> [UnsafeMutableRawPointer] {
        let taken: [UInt] = shared[tier.rawValue].free.withLock { list in
            let k = min(n, list.count)
            defer { list.removeLast(k) }
            return Array(list.suffix(k))
        }
        return taken.map { UnsafeMutableRawPointer(bitPattern: $0)! }
    }

    fileprivate func giveShared(_ tier: Tier, _ buffers: ArraySlice<UnsafeMutableRawPointer>) {
        let addresses = buffers.map { UInt(bitPattern: $0) }
        shared[tier.rawValue].free.withLock { $0.append(contentsOf: addresses) }
    }
}

/// One thread's buffers: a fixed stack of addresses per tier. Only its thread touches the stacks,
/// so no lock and no reference counting on the fast path. The counters have a single writer
/// (plain load and store) and are read by `statistics()`.
final class ThreadCache: @unchecked Sendable {
    private let pool: BufferPool
    private let capacity: Int
    /// Three stacks of `capacity` slots each, tier after tier; `counts[t]` are in use. Raw memory,
    /// not stored `var`s: a class's stored properties pay a run-time exclusivity check per access.
    private let slots: UnsafeMutablePointer<UnsafeMutableRawPointer?>
    private let counts: UnsafeMutablePointer<Int>
    let hits = TierCounters()
    let misses = TierCounters()

    init(pool: BufferPool) {
        self.pool = pool
        capacity = max(2, pool.configuration.threadCacheCapacity)
        slots = .allocate(capacity: 3 * capacity)
        slots.initialize(repeating: nil, count: 3 * capacity)
        counts = .allocate(capacity: 3)
        counts.initialize(repeating: 0, count: 3)
    }

    deinit {
        slots.deallocate()
        counts.deallocate()
    }

    @inline(__always) private func count(_ t: Int) -> Int { counts[t] }
    @inline(__always) private func setCount(_ t: Int, _ n: Int) { counts[t] = n }

    @inline(__always)
    func take(_ tier: BufferPool.Tier) -> UnsafeMutableRawPointer {
        let t = tier.rawValue
        let n = count(t)
        if n > 0 {
            setCount(t, n - 1)
            hits.bump(t)
            return slots[t * capacity + n - 1].unsafelyUnwrapped
        }
        return refill(tier)
    }

    /// The cache is empty: take half a cache from the shared list; only when that is empty too is it
    /// a miss (a new slab).
    @inline(never)
    private func refill(_ tier: BufferPool.Tier) -> UnsafeMutableRawPointer {
        let t = tier.rawValue
        var fresh = pool.takeShared(tier, upTo: capacity / 2)
        if fresh.isEmpty {
            misses.bump(t)
            fresh = pool.grow(tier, count: capacity / 2)
        } else {
            hits.bump(t)
        }
        let p = fresh.removeLast()
        for (k, q) in fresh.enumerated() { slots[t * capacity + k] = q }
        setCount(t, fresh.count)
        return p
    }

    @inline(__always)
    func put(_ p: UnsafeMutableRawPointer, _ tier: BufferPool.Tier) {
        let t = tier.rawValue
        let n = count(t)
        if n == capacity { spill(tier) }
        let m = count(t)
        slots[t * capacity + m] = p
        setCount(t, m + 1)
    }

    /// The cache is full: hand the top half back to the shared list.
    @inline(never)
    private func spill(_ tier: BufferPool.Tier) {
        let t = tier.rawValue
        let keep = capacity / 2
        let base = slots + t * capacity
        pool.giveShared(tier, (keep..<capacity).map { base[$0].unsafelyUnwrapped }[...])
        setCount(t, keep)
    }

    func returnAll() {
        for tier in BufferPool.Tier.allCases {
            let t = tier.rawValue
            let base = slots + t * capacity
            pool.giveShared(tier, (0..<count(t)).map { base[$0].unsafelyUnwrapped }[...])
            setCount(t, 0)
        }
    }
}

/// One counter per tier, written by one thread (plain load and store, no read-modify-write),
/// read by any.
final class TierCounters: Sendable {
    private let small = Atomic<Int>(0), medium = Atomic<Int>(0), large = Atomic<Int>(0)

    @inline(__always)
    func bump(_ tier: Int) {
        switch tier {
        case 0: small.store(small.load(ordering: .relaxed) &+ 1, ordering: .relaxed)
        case 1: medium.store(medium.load(ordering: .relaxed) &+ 1, ordering: .relaxed)
        default: large.store(large.load(ordering: .relaxed) &+ 1, ordering: .relaxed)
        }
    }

    subscript(tier: Int) -> Int {
        switch tier {
        case 0: small.load(ordering: .relaxed)
        case 1: medium.load(ordering: .relaxed)
        default: large.load(ordering: .relaxed)
        }
    }
}

/// A tier's shared free list, behind its own lock.
final class SharedList: Sendable {
    let free = Mutex<[UInt]>([])
}
