import CLinux
import Glibc
import Testing
@testable import VexFUSE

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

    @Test func aUserOtherThanRootHasOneRaisedQueryAtATime() {
        let raised = RaisedQueries()
        let first = raised.raise(for: 1000, by: 10)
        #expect(first != nil)
        #expect(raised.raise(for: 1000, by: 10) == nil)  // a second thread of the same user is not raised
        let other = raised.raise(for: 1001, by: 0)
        #expect(other != nil)
        let root = raised.raise(for: 0, by: 0), rootAgain = raised.raise(for: 0, by: 0)
        #expect(root != nil && rootAgain != nil)
        raised.lower(for: 1000, to: first!)
        let again = raised.raise(for: 1000, by: 0)
        #expect(again == first)  // lowered back to what it was, and free to be raised again
        raised.lower(for: 1000, to: first!)
        raised.lower(for: 1001, to: other!)
    }
}
