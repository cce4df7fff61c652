// What several test targets need: reproducible random data and real threads with a chosen stack.
import Glibc

/// A small deterministic generator, so a failure names a reproducible case.
public struct SplitMix64: RandomNumberGenerator {
    public var state: UInt64
    public init(state: UInt64) { self.state = state }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Runs `bodies` on threads of their own, all at once (each with `stackSize` bytes of stack, or the
/// default), and waits for all of them.
public func runOnThreads(stackSize: Int? = nil, _ bodies: [@Sendable () -> Void]) {
    final class Box: @unchecked Sendable {
        let body: @Sendable () -> Void
        init(_ body: @escaping @Sendable () -> Void) { self.body = body }
    }
    var attr = pthread_attr_t()
    pthread_attr_init(&attr)
    defer { pthread_attr_destroy(&attr) }
    if let stackSize { pthread_attr_setstacksize(&attr, stackSize) }
    var threads: [pthread_t] = []
    for body in bodies {
        var t = pthread_t()
        let rc = pthread_create(&t, &attr, { arg in
            Unmanaged<Box>.fromOpaque(arg!).takeRetainedValue().body()
            return nil
        }, Unmanaged.passRetained(Box(body)).toOpaque())
        precondition(rc == 0, "pthread_create failed")
        threads.append(t)
    }
    for t in threads { pthread_join(t, nil) }
}
