import NIOCore
import NIOHTTP1
import NIOPosix

/// A small HTTP/1.1 server for a Prometheus server to scrape: `GET /metrics` answers with the text
/// `exposition` returns (Prometheus text format 0.0.4), read on a thread of its own since it may
/// block (the mount's stats come through the mount); `/` says where the metrics are; anything else
/// is 404, and a method other than GET or HEAD 405. One event-loop thread, one blocking thread.
public final class MetricsServer: Sendable {
    private let group: MultiThreadedEventLoopGroup
    private let pool: NIOThreadPool
    private let channel: any Channel
    /// Where it listens, as bound (the port the system chose for port 0).
    public let boundAddress: String

    public enum Failure: Error, CustomStringConvertible {
        case cannotListen(String, String)
        public var description: String {
            switch self { case .cannotListen(let where_, let why): "metrics: cannot listen on \(where_): \(why)" }
        }
    }

    /// Listens on `host:port`. `exposition` is nil when there is nothing to serve (503).
    public init(host: String, port: Int, exposition: @escaping @Sendable () -> String?) throws(Failure) {
        group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        pool = NIOThreadPool(numberOfThreads: 1)
        pool.start()
        let pool = self.pool
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 64)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.so_keepalive), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                    try channel.pipeline.syncOperations.addHandler(MetricsHandler(pool: pool, exposition: exposition))
                }
            }
        do {
            channel = try bootstrap.bind(host: host, port: port).wait()
        } catch {
            try? self.pool.syncShutdownGracefully()
            try? group.syncShutdownGracefully()
            throw .cannotListen("\(host):\(port)", "\(error)")
        }
        boundAddress = channel.localAddress.map { "\($0.ipAddress ?? host):\($0.port ?? port)" } ?? "\(host):\(port)"
    }

    /// Stops listening and lets its threads end, without waiting for them: a scrape in flight may be
    /// blocked on a mount that no longer answers, until the process exits.
    public func shutdown() {
        channel.close(promise: nil)
        pool.shutdownGracefully { _ in }
        group.shutdownGracefully { _ in }
    }
}

/// One connection's requests, answered in order (HTTP/1.1 keep-alive, no pipelining of answers).
private final class MetricsHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let pool: NIOThreadPool
    private let exposition: @Sendable () -> String?
    private var request: HTTPRequestHead?

    init(pool: NIOThreadPool, exposition: @escaping @Sendable () -> String?) {
        self.pool = pool
        self.exposition = exposition
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head): request = head
        case .body: break
        case .end:
            guard let head = request else { return }
            request = nil
            answer(head, context: context)
        }
    }

    private func answer(_ head: HTTPRequestHead, context: ChannelHandlerContext) {
        guard head.method == .GET || head.method == .HEAD else {
            return respond(head, .methodNotAllowed, "only GET\n", context: context, extra: [("Allow", "GET, HEAD")])
        }
        let path = head.uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? ""
        switch path {
        case "/metrics":
            let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            let exposition = self.exposition
            pool.runIfActive(eventLoop: context.eventLoop) { exposition() }.whenComplete { result in
                let (handler, context) = bound.value
                switch result {
                case .success(let text?):
                    handler.respond(head, .ok, text, context: context,
                                    contentType: "text/plain; version=0.0.4; charset=utf-8")
                case .success(nil), .failure:
                    handler.respond(head, .serviceUnavailable, "the mount's statistics cannot be read now\n", context: context)
                }
            }
        case "/":
            respond(head, .ok, "vexfs: the metrics are at /metrics\n", context: context)
        default:
            respond(head, .notFound, "not found: the metrics are at /metrics\n", context: context)
        }
    }

    private func respond(_ head: HTTPRequestHead, _ status: HTTPResponseStatus, _ body: String, context: ChannelHandlerContext,
                         contentType: String = "text/plain; charset=utf-8", extra: [(String, String)] = []) {
        var buffer = context.channel.allocator.buffer(capacity: body.utf8.count)
        buffer.writeString(body)
        var headers = HTTPHeaders([("Content-Type", contentType), ("Content-Length", String(buffer.readableBytes))] + extra)
        let keepAlive = head.isKeepAlive
        headers.add(name: "Connection", value: keepAlive ? "keep-alive" : "close")
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: status, headers: headers))), promise: nil)
        if head.method != .HEAD { context.write(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil) }
        let done = context.writeAndFlush(wrapOutboundOut(.end(nil)))
        if !keepAlive {
            let channel = context.channel
            done.whenComplete { _ in channel.close(promise: nil) }
        }
    }
}
