import CLinux
import Glibc
import Testing

/// The query handlers raise their thread's priority while they answer and put it back after.
@Suite struct ThreadPriorityTests {
    @Test func raisingReturnsWhatToRestore() {
        let was = vx_raise_this_thread(10)
        let during = vx_raise_this_thread(0)  // raising by nothing reads the value
        #expect(vx_nice_this_thread(was) == 0)
        let after = vx_raise_this_thread(0)
        // Raising needs CAP_SYS_NICE: as root it takes effect, otherwise nothing changes.
        #expect(during == (geteuid() == 0 ? max(was - 10, -20) : was))
        #expect(after == was)
    }
}
