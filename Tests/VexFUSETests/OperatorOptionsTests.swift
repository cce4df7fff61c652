import Testing
@testable import VexFUSE

/// The options mount(8), fstab and systemd pass, and where the metrics are served.
struct OperatorOptionsTests {
    @Test func dropsWhatMountAndSystemdAddForThemselves() throws {
        var o = MountOptions()
        try o.apply("defaults,auto,noauto,nofail,_netdev,user,nouser,users,x-systemd.automount,x-systemd.requires=/srv,x-gvfs-hide")
        #expect(o == MountOptions())
    }

    @Test func mountFlagsGoToTheKernel() throws {
        var o = MountOptions()
        try o.apply("rw,nodev,nosuid,noexec,dev,suid,exec")
        #expect(o.kernelOptions == ["rw", "nodev", "nosuid", "noexec", "dev", "suid", "exec"])
    }

    @Test func metricsListenOnLoopbackUnlessAHostIsGiven() throws {
        var o = MountOptions()
        try o.apply("metrics=9108")
        #expect(o.metrics == ListenAddress("127.0.0.1:9108"))
        #expect(o.metrics?.host == "127.0.0.1")
        try o.apply("metrics=:9109")
        #expect(o.metrics?.description == "127.0.0.1:9109")
        try o.apply("metrics=localhost:9110")
        #expect(o.metrics?.description == "127.0.0.1:9110")
        try o.apply("metrics=0.0.0.0:9111")
        #expect(o.metrics?.description == "0.0.0.0:9111")
        try o.apply("metrics=[::1]:9112")
        #expect(o.metrics?.host == "::1")
        #expect(o.metrics?.description == "[::1]:9112")
        #expect(o.kernelOptions.isEmpty)
    }

    @Test(arguments: ["metrics", "metrics=", "metrics=0", "metrics=65536", "metrics=host.example:80", "metrics=1.2.3:80",
                      "metrics=[::1:80", "metrics=127.0.0.1:", "metrics=127.0.0.1:x", "metrics=::1:80"])
    func refusesAddressesItCannotListenOn(_ option: String) {
        var o = MountOptions()
        #expect(throws: MountOptions.ParseError.self) { try o.apply(option) }
    }
}
