import Testing
@testable import VexFUSE

@Suite struct SharedOptionsTests {
    /// `shared` names the mount among the store's mounts and shortens what the kernel keeps of files
    /// other machines change; timeouts and keep_cache given after it win.
    @Test func sharedShortensTheKernelsCachesUnlessToldOtherwise() throws {
        var o = MountOptions()
        try o.apply("shared=machine-a.1")
        #expect(o.semantic.sharedID == "machine-a.1")
        #expect(o.attrTimeout == MountOptions.sharedTimeout && o.entryTimeout == MountOptions.sharedTimeout && !o.keepCache)
        try o.apply("timeout=5,keep_cache")
        #expect(o.attrTimeout == 5 && o.keepCache)
        var p = MountOptions()
        try p.apply("attr_timeout=3,shared")
        #expect(p.attrTimeout == 3 && p.entryTimeout == MountOptions.sharedTimeout)
        #expect(p.semantic.sharedID?.isEmpty == false)
    }

    /// Users' flock(2) goes to the backing files on a shared store, served through /dev/fuse (a
    /// waiting lock holds its worker); an io_uring asked for, before or after, keeps it local.
    @Test func sharedTakesFlockToTheStoreUnlessIoUringIsAsked() throws {
        let plain = MountOptions()
        #expect(!plain.forwardsFlock && plain.ioUring == nil)
        var o = MountOptions()
        try o.apply("shared")
        #expect(o.forwardsFlock && o.ioUring == false)
        var after = MountOptions()
        try after.apply("shared,io_uring")
        #expect(after.ioUring == true && !after.forwardsFlock)
        var before = MountOptions()
        try before.apply("io_uring,shared")
        #expect(before.ioUring == true && !before.forwardsFlock)
    }

    @Test func stateIsAnAbsolutePath() throws {
        var o = MountOptions()
        try o.apply("shared=m,state=/var/lib/vexfs-here")
        #expect(o.semantic.stateDirectory == "/var/lib/vexfs-here")
        for bad in ["state=", "state=relative/dir", "state"] {
            var p = MountOptions()
            #expect(throws: MountOptions.ParseError.self) { try p.apply(bad) }
        }
    }

    @Test(arguments: ["shared=", "shared=a/b", "shared=..", "shared=a b", "shared=\(String(repeating: "x", count: 65))"])
    func rejectsBadIDs(_ option: String) {
        var o = MountOptions()
        #expect(throws: MountOptions.ParseError.self) { try o.apply(option) }
    }
}
