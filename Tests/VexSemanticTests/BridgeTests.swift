import Glibc
import MetricsTestKit
import Synchronization
import Testing
import VexTestSupport
@testable import VexSemantic
import VexStore

/// Records what the bridge applies; can hold the worker until released.
final class Recorder: @unchecked Sendable {
    let batches = Mutex<[[Bridge.Event]]>([])
    let gate = Mutex<Bool>(true)

    func apply(_ events: [Bridge.Event]) {
        while !gate.withLock({ $0 }) { usleep(1000) }
        batches.withLock { $0.append(events) }
    }
    var all: [Bridge.Event] { batches.withLock { $0.flatMap { $0 } } }
}

@Suite struct BridgeTests {
    @Test func aLaterEventForTheSameFileReplacesTheEarlier() throws {
        let r = Recorder()
        let metrics = TestMetrics()
        let bridge = Bridge(batchDelayMicroseconds: 50_000, counters: Bridge.Counters(factory: metrics)) { r.apply($0) }
        bridge.post(.refresh, collection: 1, name: "a")
        bridge.post(.remove, collection: 1, name: "a")
        bridge.post(.refresh, collection: 1, name: "a")
        bridge.settle(1)
        let events = r.all
        #expect(events.count == 1 && events[0].op == .refresh && events[0].key.name == "a")
        #expect(try metrics.expectCounter("vexfs_bridge_coalesced_total").totalValue == 2)
        #expect(try metrics.expectCounter("vexfs_bridge_events_total").totalValue == 3)
        bridge.stop()
    }

    @Test func removesGoBeforeRefreshesInABatch() {
        let r = Recorder()
        let bridge = Bridge(batchDelayMicroseconds: 50_000) { r.apply($0) }
        for i in 0..<10 { bridge.post(i % 2 == 0 ? .refresh : .remove, collection: 1, name: FileName("f\(i)")) }
        bridge.settleAll()
        let ops = r.all.map(\.op)
        #expect(ops.count == 10)
        #expect(ops == Array(repeating: .remove, count: 5) + Array(repeating: .refresh, count: 5))
    }

    @Test func filesAreAppliedInTheOrderTheyWereFirstPosted() {
        let r = Recorder()
        let bridge = Bridge(batchDelayMicroseconds: 50_000) { r.apply($0) }
        let names = (0..<200).map { FileName("f\(($0 * 7919) % 200)") }
        for name in names { bridge.post(.refresh, collection: 1, name: name) }
        bridge.post(.refresh, collection: 1, name: names[0])  // coalesced: keeps its first place
        bridge.settleAll()
        #expect(r.all.map(\.key.name) == names)
        bridge.stop()
    }

    @Test func settleWaitsForItsCollectionAndTakesItFirst() {
        let r = Recorder()
        let bridge = Bridge(batchSize: 4, batchDelayMicroseconds: 200_000) { r.apply($0) }
        // The worker is held inside its first batch (of collection 2) while the query arrives, so
        // the test does not depend on which thread runs first.
        r.gate.withLock { $0 = false }
        for i in 0..<8 { bridge.post(.refresh, collection: 2, name: FileName("other\(i)")) }
        bridge.post(.refresh, collection: 1, name: "mine")
        runOnThreads([{ bridge.settle(1) },  // a query on collection 1
                      { usleep(100_000); r.gate.withLock { $0 = true } }])
        let applied = r.all
        #expect(applied.contains { $0.key == Bridge.Key(collection: 1, name: "mine") })
        // The query's collection did not wait behind all of collection 2.
        let position = applied.firstIndex { $0.key.collection == 1 } ?? 99
        #expect(position < 8)
        bridge.settleAll()
        #expect(r.all.count == 9)
        bridge.stop()
    }

    @Test func settleWaitsForWhatCameBeforeItNotForAWriterThatNeverStops() {
        // A slow worker (2 ms a batch of 8) and a writer that posts faster than it applies: the queue
        // is never empty, yet a query's settle returns once what it asked for is in.
        let r = Recorder()
        let bridge = Bridge(batchSize: 8, batchDelayMicroseconds: 1000) { events in
            usleep(2000)
            r.apply(events)
        }
        let stop = Atomic<Bool>(false)
        let writer = Thread {
            var i = 0
            while !stop.load(ordering: .relaxed) {
                bridge.post(.refresh, collection: 1, name: FileName("w\(i)"))
                i += 1
                usleep(20)
            }
        }
        writer.start()
        usleep(50_000)
        bridge.post(.refresh, collection: 1, name: "mine")
        bridge.post(.refresh, collection: 2, name: "elsewhere")
        // Returning at all, while the writer still posts, is the proof that settle did not wait for
        // an empty queue (how much is still pending depends on how the machine schedules the writer).
        bridge.settle(1)
        let applied = r.all
        stop.store(true, ordering: .relaxed)
        writer.join()
        #expect(applied.contains { $0.key == Bridge.Key(collection: 1, name: "mine") })
        bridge.settleAll()
        #expect(r.all.contains { $0.key.collection == 2 })
        bridge.stop()
    }

    @Test func aFullQueueMakesPostersWait() throws {
        let r = Recorder()
        r.gate.withLock { $0 = false }
        let metrics = TestMetrics()
        let bridge = Bridge(capacity: 4, batchSize: 2, batchDelayMicroseconds: 100, counters: Bridge.Counters(factory: metrics)) { r.apply($0) }
        let posted = Atomic<Int>(0)
        let t = Thread {
            for i in 0..<20 {
                bridge.post(.refresh, collection: 1, name: FileName("f\(i)"))
                posted.add(1, ordering: .relaxed)
            }
        }
        t.start()
        usleep(100_000)
        let whileBlocked = posted.load(ordering: .relaxed)
        #expect(whileBlocked <= 4 + 2)  // the queue plus one batch in the worker's hands
        #expect(bridge.depth <= 4)
        r.gate.withLock { $0 = true }
        t.join()
        bridge.settleAll()
        #expect(r.all.count == 20)
        #expect(try metrics.expectCounter("vexfs_bridge_full_waits_total").totalValue > 0)
        bridge.stop()
    }

    /// A long event goes to the builder with its collection: that collection's later events wait
    /// for it (in order), and every other collection goes on, its queries answered meanwhile.
    @Test func longWorkHoldsOnlyItsOwnCollection() {
        let r = Recorder()
        let open = Atomic<Bool>(false)
        let bridge = Bridge(batchDelayMicroseconds: 1000, isLong: { $0.key.name.text.hasPrefix("big") }) { events in
            if events.contains(where: { $0.key.name.text.hasPrefix("big") }) {
                while !open.load(ordering: .relaxed) { usleep(1000) }
            }
            r.apply(events)
        }
        bridge.post(.refresh, collection: 1, name: "big.npy")
        bridge.post(.refresh, collection: 2, name: "before")
        usleep(20_000)   // the worker has handed big.npy to the builder
        bridge.post(.refresh, collection: 1, name: "after-big")
        bridge.post(.refresh, collection: 2, name: "small")
        bridge.settle(2)   // returns while big.npy is still being built
        #expect(Set(r.all.map(\.key.name.text)) == ["before", "small"])
        usleep(20_000)
        #expect(!r.all.contains { $0.key.collection == 1 })
        open.store(true, ordering: .relaxed)
        bridge.settle(1)
        #expect(r.all.filter { $0.key.collection == 1 }.map(\.key.name.text) == ["big.npy", "after-big"])
        // Stopping with a long event in the builder's hands still applies everything.
        open.store(false, ordering: .relaxed)
        bridge.post(.refresh, collection: 3, name: "big2.npy")
        bridge.post(.refresh, collection: 3, name: "x")
        usleep(20_000)
        let t = Thread { usleep(50_000); open.store(true, ordering: .relaxed) }
        t.start()
        bridge.stop()
        t.join()
        #expect(r.all.filter { $0.key.collection == 3 }.map(\.key.name.text) == ["big2.npy", "x"])
    }

    @Test func theBuilderTakesTurnsByUser() {
        let r = Recorder()
        let open = Atomic<Bool>(false)
        // Collections 1-4 are one user's, 9 another's.
        let bridge = Bridge(batchDelayMicroseconds: 1000, isLong: { $0.key.name.text.hasPrefix("big") },
                            owner: { $0 == 9 ? 2000 : 1000 }) { events in
            while !open.load(ordering: .relaxed) { usleep(1000) }
            r.apply(events)
        }
        for c in UInt64(1)...4 { bridge.post(.refresh, collection: c, name: "big.npy") }
        usleep(30_000)   // the builder holds the first; three more of that user's wait
        bridge.post(.refresh, collection: 9, name: "big.npy")
        usleep(30_000)
        open.store(true, ordering: .relaxed)
        bridge.settleAll()
        let order = r.all.map(\.key.collection)
        #expect(order.count == 5)
        #expect(order.firstIndex(of: 9) == 1, "the other user's file waits for one file, not four: \(order)")
        bridge.stop()
    }

    @Test func stopAppliesWhatIsPending() {
        let r = Recorder()
        let bridge = Bridge(batchDelayMicroseconds: 1_000_000) { r.apply($0) }
        for i in 0..<100 { bridge.post(.refresh, collection: UInt64(i % 3), name: FileName("f\(i)")) }
        bridge.stop()
        #expect(r.all.count == 100)
    }
}

/// A joinable thread for tests.
final class Thread: @unchecked Sendable {
    let body: @Sendable () -> Void
    var id = pthread_t()
    init(_ body: @escaping @Sendable () -> Void) { self.body = body }
    func start() {
        pthread_create(&id, nil, { arg in
            Unmanaged<Thread>.fromOpaque(arg!).takeRetainedValue().body()
            return nil
        }, Unmanaged.passRetained(self).toOpaque())
    }
    func join() { pthread_join(id, nil) }
}
