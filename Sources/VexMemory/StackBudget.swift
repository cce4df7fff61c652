import CMemory
import Logging
import Glibc
import Synchronization

/// Measures how much stack each handler uses on the threads that run it. A thread's free stack is
/// painted with a pattern the first time it runs a handler; after each handler the monitor scans
/// down from where the handler started for the deepest word that lost its paint (stopping at 1 KiB
/// of intact paint, so an untouched gap larger than that inside one frame would hide deeper use),
/// records the depth from the top of the thread's stack, and repaints what the handler used.
/// Costs a scan and a repaint of the bytes the handler used: a few hundred nanoseconds.
public final class StackBudget: @unchecked Sendable {
    /// Bytes of stack a handler may use, counted from the top of its thread's stack.
    public let budget: Int
    private let logger = Logger(label: "vexfs")
    public let handlerNames: [String]
    private let highWater: Mutex<[Int]>
    private let excesses = Atomic<Int>(0)
    private let firstExcess = Mutex<(handler: String, bytes: Int)?>(nil)
    /// Set once in init; a `let`, as a stored `var` would cost an exclusivity check per access.
    private let key: pthread_key_t
    /// Stay clear of the monitor's own frame and of the red zone below it.
    private static let margin: UInt = 512
    private static let intactRun = 1024

    public init(budget: Int, handlerNames: [String]) {
        self.budget = budget
        self.handlerNames = handlerNames
        highWater = Mutex(Array(repeating: 0, count: handlerNames.count))
        var key = pthread_key_t()
        pthread_key_create(&key) { state in
            Unmanaged<ThreadStack>.fromOpaque(state!).release()
        }
        self.key = key
    }

    /// Runs handler number `handler`'s `body` and records its stack depth.
    @inline(__always)
    public func measure<R>(_ handler: Int, _ body: () -> R) -> R {
        let stack = threadStack()
        let from = vx_stack_here() - StackBudget.margin
        let result = body()
        if let stack, from > stack.floor {
            let deepest = vx_stack_deepest(stack.floor, from, StackBudget.intactRun)
            if deepest < from {
                vx_stack_paint(deepest, from)
                record(handler, Int(stack.top - deepest), stack)
            }
        }
        return result
    }

    public struct Report: Sendable {
        public let highWater: [(handler: String, bytes: Int)]
        public let excesses: Int
        public let firstExcess: (handler: String, bytes: Int)?
    }

    public func report() -> Report {
        let marks = highWater.withLock { $0 }
        return Report(highWater: zip(handlerNames, marks).map { ($0, $1) },
                      excesses: excesses.load(ordering: .relaxed),
                      firstExcess: firstExcess.withLock { $0 })
    }

    // MARK: internals

    private func record(_ handler: Int, _ depth: Int, _ stack: ThreadStack) {
        if depth > budget {
            excesses.add(1, ordering: .relaxed)
            let first = firstExcess.withLock { first -> Bool in
                guard first == nil else { return false }
                first = (handlerNames[handler], depth)
                return true
            }
            if first {
                let line = "handler \(handlerNames[handler]) used \(depth) bytes of stack, over the budget of \(budget)"
                logger.warning("\(line)")
            }
        }
        // Only a new per-thread maximum reaches the shared table.
        if depth > stack.published[handler] {
            stack.published[handler] = depth
            highWater.withLock { $0[handler] = max($0[handler], depth) }
        }
    }

    /// This thread's stack, painted on first use; nil where its bounds cannot be read.
    @inline(__always)
    private func threadStack() -> ThreadStack? {
        if let raw = pthread_getspecific(key) { return Unmanaged<ThreadStack>.fromOpaque(raw).takeUnretainedValue() }
        var low: UInt = 0, high: UInt = 0
        guard vx_stack_bounds(&low, &high) == 0 else { return nil }
        // A page above the bottom stays unpainted: the guard area may sit there.
        let stack = ThreadStack(floor: low + 4096, top: high, handlers: handlerNames.count)
        vx_stack_paint(stack.floor, vx_stack_here() - StackBudget.margin)
        pthread_setspecific(key, Unmanaged.passRetained(stack).toOpaque())
        return stack
    }
}

/// One thread's stack bounds and the marks it has already published.
final class ThreadStack: @unchecked Sendable {
    let floor: UInt
    let top: UInt
    var published: [Int]  // touched only when a handler went deeper than the thread's last mark

    init(floor: UInt, top: UInt, handlers: Int) {
        self.floor = floor
        self.top = top
        published = Array(repeating: 0, count: handlers)
    }
}
