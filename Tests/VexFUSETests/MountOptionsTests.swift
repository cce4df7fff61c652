import Testing
@testable import VexFUSE

@Suite struct MountOptionsTests {
    @Test func defaultsSuitASingleWriterStore() {
        let o = MountOptions()
        #expect(!o.writeback && o.keepCache && o.splice && o.passthrough)
        #expect(o.attrTimeout >= 1 && o.entryTimeout >= 1 && o.negativeTimeout == 0)
    }

    @Test func parsesOursAndPassesTheRestToTheKernel() throws {
        var o = MountOptions()
        try o.apply("writeback,attr_timeout=2.5,entry_timeout=0,allow_other,no_keep_cache")
        try o.apply("ro")
        #expect(o.writeback && !o.keepCache)
        #expect(o.attrTimeout == 2.5 && o.entryTimeout == 0)
        #expect(o.kernelOptions == ["allow_other", "ro"])
    }

    @Test func passthroughCanBeTurnedOffAndOnAgain() throws {
        var o = MountOptions()
        try o.apply("no_passthrough")
        #expect(!o.passthrough && o.kernelOptions.isEmpty)
        try o.apply("passthrough")
        #expect(o.passthrough)
    }

    @Test func norecoveryIsTheDaemonsAndAsksForReadOnly() throws {
        var o = MountOptions()
        try o.apply("norecovery")
        #expect(o.norecovery && o.kernelOptions.isEmpty)
        #expect(o.conflict?.contains("norecovery needs ro") == true)
        try o.apply("ro")
        #expect(o.readOnly && o.conflict == nil)
        try o.apply("rw")
        #expect(!o.readOnly && o.conflict != nil, "the last of ro and rw counts, as in mount(8)")
        var shared = MountOptions()
        try shared.apply("ro,norecovery,shared=a")
        #expect(shared.conflict?.contains("-o shared") == true)
    }

    @Test(arguments: ["attr_timeout=-1", "entry_timeout=x", "timeout", "negative_timeout=inf", "=", "=x"])
    func rejectsBadValues(_ option: String) {
        var o = MountOptions()
        #expect(throws: MountOptions.ParseError.self) { try o.apply(option) }
    }
}
