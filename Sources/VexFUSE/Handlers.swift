import CFuse
import CLinux
import Glibc
import Logging
import Synchronization
import SystemPackage
import VexSemantic
import VexStore

/// One function per FUSE operation: unpack the request, call the store (or, for a request the
/// vector layer hears of, a function of FileOperations.swift), answer exactly once.
/// A nonisolated namespace on purpose: these run on libfuse's worker threads.
enum Handlers {
    @inline(__always)
    static func fs(_ req: fuse_req_t?) -> Filesystem {
        Unmanaged<Filesystem>.fromOpaque(vexfs_req_context(req)!).takeUnretainedValue()
    }

    // MARK: names

    static func lookup(_ req: fuse_req_t?, _ parent: fuse_ino_t, _ name: UnsafePointer<CChar>?) {
        let fs = fs(req)
        if let id = virtualChild(parent, name!) {
            replyVirtual(req, fs, id)
            return
        }
        if parent == VirtualNode.directory {
            fuse_reply_err(req, ENOENT)
            return
        }
        do throws(Errno) {
            // "." and ".." come only from file handles being decoded (export support): "." on a
            // node id the kernel may have forgotten, ".." on a directory.
            if isDotOrDotDot(name!) {
                fs.reply(req, entry: name![1] == 0 ? try fs.store.find(nodeID: UInt64(parent)) : try fs.store.parent(of: try fs.inode(parent)))
                return
            }
            fs.reply(req, entry: try fs.store.lookup(try fs.inode(parent), name!))
        } catch .noSuchFileOrDirectory where fs.options.negativeTimeout > 0 {
            var ep = fuse_entry_param()  // node id 0: a cacheable "no such name"
            ep.entry_timeout = fs.options.negativeTimeout
            fuse_reply_entry(req, &ep)
        } catch {
            reply(req, error: error)
        }
    }

    static func forget(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ count: UInt64) {
        let fs = fs(req)
        if let inode = try? fs.inode(ino) { fs.store.forget(inode, count) }
        fuse_reply_none(req)
    }

    static func forgetMulti(_ req: fuse_req_t?, _ count: Int, _ forgets: UnsafeMutablePointer<fuse_forget_data>?) {
        let fs = fs(req)
        for f in UnsafeBufferPointer(start: forgets, count: count) {
            if let inode = try? fs.inode(fuse_ino_t(f.ino)) { fs.store.forget(inode, f.nlookup) }
        }
        fuse_reply_none(req)
    }

    static func mkdir(_ req: fuse_req_t?, _ parent: fuse_ino_t, _ name: UnsafePointer<CChar>?, _ mode: mode_t) {
        let fs = fs(req)
        do throws(Errno) {
            let entry = try withCallerUmask(req) { () throws(Errno) in try fs.store.mkdir(try fs.inode(parent), name!, mode: mode, caller: caller(req)) }
            fs.reply(req, entry: entry)
        } catch { reply(req, error: error) }
    }

    static func mknod(_ req: fuse_req_t?, _ parent: fuse_ino_t, _ name: UnsafePointer<CChar>?, _ mode: mode_t, _ rdev: dev_t) {
        let fs = fs(req)
        do throws(Errno) {
            let entry = try withCallerUmask(req) { () throws(Errno) in
                try fs.store.mknod(try fs.inode(parent), name!, mode: mode, device: rdev, caller: caller(req))
            }
            fs.reply(req, entry: entry)
        } catch { reply(req, error: error) }
    }

    /// Runs a create, mkdir or mknod with the caller's umask on this thread when the kernel left it
    /// to us (FUSE_POSIX_ACL): the store's filesystem applies it, or the parent's default ACL instead.
    @inline(__always)
    static func withCallerUmask<R>(_ req: fuse_req_t?, _ body: () throws(Errno) -> R) throws(Errno) -> R {
        guard vexfs_req_caller_umask_begin(req) != 0 else { return try body() }
        defer { vexfs_caller_umask_end() }
        return try body()
    }

    static func symlink(_ req: fuse_req_t?, _ target: UnsafePointer<CChar>?, _ parent: fuse_ino_t, _ name: UnsafePointer<CChar>?) {
        let fs = fs(req)
        do throws(Errno) {
            fs.reply(req, entry: try fs.store.symlink(target!, try fs.inode(parent), name!, caller: caller(req)))
        } catch { reply(req, error: error) }
    }

    static func link(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ newParent: fuse_ino_t, _ newName: UnsafePointer<CChar>?) {
        let fs = fs(req)
        do throws(Errno) {
            fs.reply(req, entry: try fs.link(try fs.inode(ino), in: try fs.inode(newParent), newName!))
        } catch { reply(req, error: error) }
    }

    static func unlink(_ req: fuse_req_t?, _ parent: fuse_ino_t, _ name: UnsafePointer<CChar>?) {
        let fs = fs(req)
        do throws(Errno) {
            try fs.unlink(try fs.inode(parent), name!)
            fuse_reply_err(req, 0)
        } catch { reply(req, error: error) }
    }

    static func rmdir(_ req: fuse_req_t?, _ parent: fuse_ino_t, _ name: UnsafePointer<CChar>?) {
        let fs = fs(req)
        do throws(Errno) {
            try fs.rmdir(try fs.inode(parent), name!)
            fuse_reply_err(req, 0)
        } catch { reply(req, error: error) }
    }

    static func rename(_ req: fuse_req_t?, _ parent: fuse_ino_t, _ name: UnsafePointer<CChar>?, _ newParent: fuse_ino_t,
                       _ newName: UnsafePointer<CChar>?, _ flags: UInt32) {
        let fs = fs(req)
        do throws(Errno) {
            try fs.rename(try fs.inode(parent), name!, to: try fs.inode(newParent), newName!, flags: flags, caller: caller(req))
            fuse_reply_err(req, 0)
        } catch { reply(req, error: error) }
    }

    static func readlink(_ req: fuse_req_t?, _ ino: fuse_ino_t) {
        let fs = fs(req)
        do throws(Errno) {
            let target = try fs.store.readlink(try fs.inode(ino))
            target.withUnsafeBufferPointer { _ = fuse_reply_readlink(req, $0.baseAddress) }
        } catch { reply(req, error: error) }
    }

    // MARK: attributes

    static func getattr(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ fi: UnsafeMutablePointer<fuse_file_info>?) {
        let fs = fs(req)
        if VirtualNode.contains(ino) {
            do throws(Errno) {
                fs.reply(req, attributes: VirtualNode.attributes(ino, root: try fs.store.attributes(fs.store.root)))
            } catch { reply(req, error: error) }
            return
        }
        do throws(Errno) {
            fs.reply(req, attributes: try fs.store.attributes(try fs.inode(ino)))
        } catch { reply(req, error: error) }
    }

    /// statx(2) for more than stat gives: GETATTR's attributes, with the backing inode's birth time
    /// and attribute flags. vexfs's own `.vexfs/` files have neither.
    static func statx(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ fi: UnsafeMutablePointer<fuse_file_info>?) {
        let fs = fs(req)
        do throws(Errno) {
            if VirtualNode.contains(ino) {
                var st = VirtualNode.attributes(ino, root: try fs.store.attributes(fs.store.root))
                vexfs_reply_statx(req, &st, nil, fs.options.attrTimeout)
                return
            }
            let inode = try fs.inode(ino)
            var st = try fs.store.attributes(inode)
            let more = try fs.store.birthAndFlags(inode)
            var extra = vexfs_statx_extra(has_btime: more.birth == nil ? 0 : 1, btime_sec: Int64(more.birth?.tv_sec ?? 0),
                                          btime_nsec: UInt32(more.birth?.tv_nsec ?? 0), attributes: more.attributes,
                                          attributes_mask: more.attributesMask)
            vexfs_reply_statx(req, &st, &extra, fs.options.attrTimeout)
        } catch { reply(req, error: error) }
    }

    static func setattr(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ attr: UnsafeMutablePointer<stat>?, _ toSet: Int32,
                        _ fi: UnsafeMutablePointer<fuse_file_info>?) {
        let fs = fs(req)
        let a = attr!.pointee
        var change = Store.AttributeChange()
        if toSet & FUSE_SET_ATTR_MODE != 0 { change.mode = a.st_mode }
        if toSet & FUSE_SET_ATTR_UID != 0 { change.uid = a.st_uid }
        if toSet & FUSE_SET_ATTR_GID != 0 { change.gid = a.st_gid }
        if toSet & FUSE_SET_ATTR_SIZE != 0 { change.size = a.st_size }
        if toSet & FUSE_SET_ATTR_ATIME_NOW != 0 { change.atime = .now }
        else if toSet & FUSE_SET_ATTR_ATIME != 0 { change.atime = .set(a.st_atim) }
        if toSet & FUSE_SET_ATTR_MTIME_NOW != 0 { change.mtime = .now }
        else if toSet & FUSE_SET_ATTR_MTIME != 0 { change.mtime = .set(a.st_mtim) }
        // chown(f, -1, -1) reaches us as a SETATTR asking for nothing; on a local filesystem it
        // still moves the change time.
        if toSet & ~FUSE_SET_ATTR_CTIME == 0 { change.changeTimeOnly = true }
        do throws(Errno) {
            let inode = try fs.inode(ino)
            // A handle comes with the request when the kernel had the file open (ftruncate, futimens);
            // on a directory it is a DirectoryStream, which the store does not need.
            let file = fi != nil && !inode.isDirectory ? Filesystem.handle(fi, as: OpenFile.self) : nil
            let dropPrivileges = change.size != nil && vexfs_req_killpriv_v2(req) != 0 && caller(req).uid != 0
            fs.reply(req, attributes: try fs.setAttributes(inode, change, file: file, dropPrivileges: dropPrivileges,
                                                           writerInGroup: { inGroup(req, $0) }))
        } catch { reply(req, error: error) }
    }

    static func statfs(_ req: fuse_req_t?, _ ino: fuse_ino_t) {
        let fs = fs(req)
        do throws(Errno) {
            var sv = try fs.store.statfs(VirtualNode.contains(ino) ? fs.store.root : fs.inode(ino))
            fuse_reply_statfs(req, &sv)
        } catch { reply(req, error: error) }
    }

    static func access(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ mask: Int32) {
        // The mount always uses default_permissions, so the kernel has checked already and sends
        // access only to ask whether the file is there.
        let fs = fs(req)
        do throws(Errno) {
            if !VirtualNode.contains(ino) { _ = try fs.store.attributes(try fs.inode(ino)) }
            fuse_reply_err(req, 0)
        } catch { reply(req, error: error) }
    }

    // MARK: files

    static func open(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ fi: UnsafeMutablePointer<fuse_file_info>?) {
        let fs = fs(req)
        do throws(Errno) {
            if ino == VirtualNode.stats || ino == VirtualNode.journal {
                guard fi!.pointee.flags & O_ACCMODE == O_RDONLY, fi!.pointee.flags & O_TRUNC == 0 else { throw .permissionDenied }
                Filesystem.store(try fs.openVirtual(req, ino), in: fi)
                vexfs_fi_set_open_flags(fi, 1, 0, 1)  // made anew at each open: no page cache, no size
                if fuse_reply_open(req, fi) != 0 { Filesystem.releaseHandle(fi, as: OpenFile.self) }
                return
            }
            let file = try fs.store.open(try fs.inode(ino), flags: fs.backingOpenFlags(fi!.pointee.flags))
            if fi!.pointee.flags & O_TRUNC != 0 {
                if let error = dropPrivilegesIfOurs(req, file) { throw error }
                file.wasWritten.store(true, ordering: .relaxed)  // emptied: its close must reach the index
            }
            if let error = dropPrivilegesBeforePassthrough(req, file) { throw error }
            Filesystem.store(file, in: fi)
            // A flush has nothing to do for a handle that cannot write (no setlk here: the kernel
            // keeps POSIX locks itself): a reader's close(2) then costs no round trip. Every handle
            // that can write is still flushed, so its close reaches the index before close returns.
            let noflush: Int32 = fi!.pointee.flags & O_ACCMODE == O_RDONLY && fi!.pointee.flags & O_TRUNC == 0 ? 1 : 0
            if let id = fs.backing.attach(req, file) {
                if vexfs_reply_open_backing(req, fi!.pointee.fh, id, noflush) != 0 { closeUnanswered(req, fs, file, fi) }
                return
            }
            vexfs_fi_set_open_flags(fi, 0, fs.options.keepCache ? 1 : 0, noflush)
            if fuse_reply_open(req, fi) != 0 { closeUnanswered(req, fs, file, fi) }
        } catch { reply(req, error: error) }
    }

    static func create(_ req: fuse_req_t?, _ parent: fuse_ino_t, _ name: UnsafePointer<CChar>?, _ mode: mode_t,
                       _ fi: UnsafeMutablePointer<fuse_file_info>?) {
        let fs = fs(req)
        do throws(Errno) {
            let dir = try fs.inode(parent)
            // "/", a name no create carries: open(O_TMPFILE), rewritten into a create by the bridge.
            let unnamed = strcmp(name!, "/") == 0
            let (entry, file) = try withCallerUmask(req) { () throws(Errno) in
                let flags = fs.backingOpenFlags(fi!.pointee.flags)
                return unnamed ? try fs.store.createUnnamed(in: dir, mode: mode, flags: flags, caller: caller(req))
                    : try fs.store.create(dir, name!, mode: mode, flags: flags, caller: caller(req))
            }
            if !unnamed { fs.created(dir, name!, file) }
            Filesystem.store(file, in: fi)
            var ep = fs.entryParam(entry)
            let answered: Int32
            if let id = fs.backing.attach(req, file) {
                answered = vexfs_reply_create_backing(req, &ep, fi!.pointee.fh, id)
            } else {
                vexfs_fi_set_open_flags(fi, 0, fs.options.keepCache ? 1 : 0, 0)
                answered = fuse_reply_create(req, &ep, fi)
            }
            if answered != 0 {
                closeUnanswered(req, fs, file, fi)
                fs.store.forget(entry.inode, 1)
            }
        } catch { reply(req, error: error) }
    }

    static func read(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ size: Int, _ off: off_t, _ fi: UnsafeMutablePointer<fuse_file_info>?) {
        let file = Filesystem.handle(fi, as: OpenFile.self)
        vexfs_reply_read_fd(req, file.fd, size, off)
    }

    static func writeBuf(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ bufv: UnsafeMutablePointer<fuse_bufvec>?, _ off: off_t,
                         _ fi: UnsafeMutablePointer<fuse_file_info>?) {
        let file = Filesystem.handle(fi, as: OpenFile.self)
        if let error = dropPrivilegesIfOurs(req, file) {
            reply(req, error: error)
            return
        }
        let n = vexfs_write_bufvec_to_fd(bufv, file.fd, off)
        if n < 0 {
            fuse_reply_err(req, Int32(-n))
        } else {
            file.wasWritten.store(true, ordering: .relaxed)
            // A direct write bypasses the page cache, and the kernel drops the range from it only
            // around a synchronous one: pages a buffered reader cached while an asynchronous one
            // was on its way would keep the old bytes (xfstests generic/451). Dropped here, after
            // the store has the new bytes and before the writer hears it is done.
            if n > 0 && vexfs_fi_is_direct_write(fi) != 0 { _ = vexfs_req_invalidate_range(req, ino, off, off_t(n)) }
            fuse_reply_write(req, n)
        }
    }

    static func flush(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ fi: UnsafeMutablePointer<fuse_file_info>?) {
        // Closing a duplicate releases the caller's POSIX locks and reports delayed write errors,
        // as close(2) would on the backing file, while the handle stays open.
        // If no descriptor is left for the duplicate, the close itself must still succeed.
        let file = Filesystem.handle(fi, as: OpenFile.self)
        let dup = Glibc.dup(file.fd)
        noticeChanges(req, fs(req), ino, file)
        reply(req, status: dup < 0 ? 0 : close(dup))
    }

    static func release(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ fi: UnsafeMutablePointer<fuse_file_info>?) {
        // A shared mapping outlives close(2): its writes are seen here, at the last reference.
        let fs = fs(req), file = Filesystem.handle(fi, as: OpenFile.self)
        noticeChanges(req, fs, ino, file)
        // Its flock(2) goes now, not when the last reference to the backing file does.
        if fi?.pointee.flock_release == 1 { _ = vx_flock(file.fd, LOCK_UN) }
        fs.backing.detach(req, file)
        Filesystem.releaseHandle(fi, as: OpenFile.self)
        fuse_reply_err(req, 0)
    }

    /// Hands a changed file to the index (FileOperations.swift) and, for a change the kernel did not
    /// see the end of, tells it that its cached attributes are stale.
    private static func noticeChanges(_ req: fuse_req_t?, _ fs: Filesystem, _ ino: fuse_ino_t, _ file: OpenFile) {
        if fs.noticeChanges(file, passthrough: BackingFiles.negotiated(req)) { _ = vexfs_req_invalidate_attributes(req, ino) }
    }

    /// An open or create whose answer did not reach the kernel (the caller was interrupted): the
    /// kernel will send no release, so the handle is closed here.
    private static func closeUnanswered(_ req: fuse_req_t?, _ fs: Filesystem, _ file: OpenFile, _ fi: UnsafeMutablePointer<fuse_file_info>?) {
        fs.backing.detach(req, file)
        Filesystem.releaseHandle(fi, as: OpenFile.self)
    }

    /// Users' flock(2) on a shared store: taken on this open's own backing file (its own open file
    /// description, as the caller's), where the distributed filesystem makes it exclusive across
    /// machines. A worker never sleeps in flock(2): it polls, answers EINTR once the caller is
    /// interrupted, and only `flockWaitLimit` callers wait at once (one more is answered ENOLCK), so
    /// waiting locks never hold every worker. A lock given up by close(2) goes only at the RELEASE the
    /// kernel sends after it, which a worker may take up second: a caller that would not wait is
    /// answered EWOULDBLOCK only after `flockReleaseGrace` seconds of trying.
    static func flock(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ fi: UnsafeMutablePointer<fuse_file_info>?, _ op: Int32) {
        let fs = fs(req), file = Filesystem.handle(fi, as: OpenFile.self)
        let waits = op & LOCK_NB == 0, kind = op & ~LOCK_NB
        if kind == LOCK_UN { reply(req, status: vx_flock(file.fd, LOCK_UN)); return }
        if vx_flock(file.fd, kind | LOCK_NB) == 0 { fuse_reply_err(req, 0); return }
        guard errno == EWOULDBLOCK else { reply(req, status: -1); return }
        guard fs.flockWaiters.add(1, ordering: .relaxed).newValue <= fs.flockWaitLimit else {
            fs.flockWaiters.subtract(1, ordering: .relaxed)
            fs.flockRefusals.refused(limit: fs.flockWaitLimit)
            fuse_reply_err(req, ENOLCK)
            return
        }
        defer { fs.flockWaiters.subtract(1, ordering: .relaxed) }
        var began = timespec(), now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &began)
        var pause: useconds_t = 1000
        while true {
            usleep(pause)
            pause = min(pause * 2, 50_000)
            if vx_flock(file.fd, kind | LOCK_NB) == 0 { fuse_reply_err(req, 0); return }
            guard errno == EWOULDBLOCK else { reply(req, status: -1); return }
            if fuse_req_interrupted(req) != 0 { fuse_reply_err(req, EINTR); return }
            clock_gettime(CLOCK_MONOTONIC, &now)
            let waited = Double(now.tv_sec - began.tv_sec) + Double(now.tv_nsec - began.tv_nsec) / 1e9
            if !waits && waited >= flockReleaseGrace { fuse_reply_err(req, EWOULDBLOCK); return }
        }
    }

    /// How long a flock(2) that would not wait keeps trying (see `flock`).
    static let flockReleaseGrace = 0.1

    static func fsync(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ datasync: Int32, _ fi: UnsafeMutablePointer<fuse_file_info>?) {
        let file = Filesystem.handle(fi, as: OpenFile.self)
        reply(req, status: datasync != 0 ? fdatasync(file.fd) : Glibc.fsync(file.fd))
    }

    static func fallocate(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ mode: Int32, _ off: off_t, _ len: off_t,
                          _ fi: UnsafeMutablePointer<fuse_file_info>?) {
        let file = Filesystem.handle(fi, as: OpenFile.self)
        if let error = dropPrivilegesIfOurs(req, file) {
            reply(req, error: error)
            return
        }
        let status = vx_fallocate(file.fd, mode, Int64(off), Int64(len))
        if status == 0 { file.wasWritten.store(true, ordering: .relaxed) }
        // Set-id bits the daemon dropped are news to the kernel, which refreshes only size and
        // times after a fallocate (generic/683-685).
        if status == 0 && vexfs_req_killpriv_v2(req) != 0 && caller(req).uid != 0 { _ = vexfs_req_invalidate_attributes(req, ino) }
        reply(req, status: status)
    }

    static func copyFileRange(_ req: fuse_req_t?, _ inoIn: fuse_ino_t, _ offIn: off_t, _ fiIn: UnsafeMutablePointer<fuse_file_info>?,
                              _ inoOut: fuse_ino_t, _ offOut: off_t, _ fiOut: UnsafeMutablePointer<fuse_file_info>?,
                              _ len: Int, _ flags: Int32) {
        let source = Filesystem.handle(fiIn, as: OpenFile.self), target = Filesystem.handle(fiOut, as: OpenFile.self)
        if let error = dropPrivilegesIfOurs(req, target) {
            reply(req, error: error)
            return
        }
        var from = Int64(offIn), to = Int64(offOut)
        let n = vx_copy_file_range(source.fd, &from, target.fd, &to, len, UInt32(flags))
        if n < 0 {
            fuse_reply_err(req, errno)
        } else {
            target.wasWritten.store(true, ordering: .relaxed)
            fuse_reply_write(req, n)
        }
    }

    static func lseek(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ off: off_t, _ whence: Int32, _ fi: UnsafeMutablePointer<fuse_file_info>?) {
        let file = Filesystem.handle(fi, as: OpenFile.self)
        let pos = Glibc.lseek(file.fd, off, whence)
        if pos < 0 { fuse_reply_err(req, errno) } else { fuse_reply_lseek(req, pos) }
    }

    /// Under passthrough the kernel writes with the daemon's credentials, which keep set-id bits and
    /// capabilities where an unprivileged writer's would drop them, and vexfs sees no write to drop
    /// them at. So they go when an unprivileged caller opens the file for writing.
    @inline(__always)
    static func dropPrivilegesBeforePassthrough(_ req: fuse_req_t?, _ file: OpenFile) -> Errno? {
        guard file.writable, let inode = file.inode, !inode.knownUnprivileged.load(ordering: .relaxed),
              caller(req).uid != 0, BackingFiles.negotiated(req) else { return nil }
        do throws(Errno) {
            try fs(req).store.dropPrivileges(inode, openFile: file.fd, writerInGroup: { inGroup(req, $0) })
            return nil
        } catch { return error }
    }

    /// Whether the caller of `req` is in group `gid` (its supplementary groups read only when needed).
    static func inGroup(_ req: fuse_req_t?, _ gid: gid_t) -> Bool {
        fuse_req_ctx(req)!.pointee.gid == gid || requester(req).groups.contains(gid)
    }

    /// Under FUSE_HANDLE_KILLPRIV_V2 the kernel no longer drops privileges when an unprivileged
    /// caller writes; vexfs does. (The kernel's test is CAP_FSETID; root's uid stands for it here.)
    @inline(__always)
    static func dropPrivilegesIfOurs(_ req: fuse_req_t?, _ file: OpenFile) -> Errno? {
        guard let inode = file.inode, !inode.knownUnprivileged.load(ordering: .relaxed),
              vexfs_req_killpriv_v2(req) != 0, caller(req).uid != 0 else { return nil }
        do throws(Errno) {
            try fs(req).store.dropPrivileges(inode, openFile: file.fd, writerInGroup: { inGroup(req, $0) })
            return nil
        } catch { return error }
    }

    /// The inode flags of chattr(1) and lsattr(1) (FS_IOC_GETFLAGS/SETFLAGS) and the extended ones
    /// of xfs_io (FS_IOC_FSGETXATTR/FSSETXATTR), on the backing file: the kernel has checked who may
    /// set them. It sends them on a handle it opened for the purpose (a file's or a directory's).
    /// FITRIM and the filesystem label act on the whole filesystem (WholeFilesystemIoctls.swift).
    /// Any other command is not ours to pass on (ENOTTY).
    static func ioctl(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ cmd: UInt32, _ fi: UnsafeMutablePointer<fuse_file_info>?,
                      _ flags: UInt32, _ input: UnsafeRawPointer?, _ inputSize: Int, _ outputSize: Int) {
        let fs = fs(req)
        guard flags & UInt32(FUSE_IOCTL_COMPAT) == 0, !VirtualNode.contains(ino), let inode = try? fs.inode(ino), fi != nil else {
            fuse_reply_err(req, ENOTTY)
            return
        }
        let fd = inode.isDirectory ? Filesystem.handle(fi, as: DirectoryStream.self).descriptor : Filesystem.handle(fi, as: OpenFile.self).fd
        let size: Int
        let isSet: Bool
        switch UInt(cmd) {
        case vx_FITRIM: return trim(req, fd, input, inputSize, outputSize)
        case vx_FS_IOC_GETFSLABEL: return getLabel(req, outputSize)
        case vx_FS_IOC_SETFSLABEL: return setLabel(req, input, inputSize)
        case vx_FS_IOC_GETFLAGS: (size, isSet) = (4, false)
        case vx_FS_IOC_SETFLAGS: (size, isSet) = (4, true)
        case vx_FS_IOC_FSGETXATTR: (size, isSet) = (28, false)  // struct fsxattr
        case vx_FS_IOC_FSSETXATTR: (size, isSet) = (28, true)
        default:
            fuse_reply_err(req, ENOTTY)
            return
        }
        // The kernel sizes the buffers from the command (8 bytes for the flags' `long`) or, for
        // its own fileattr calls, exactly; the value is at their start either way.
        var value = [UInt8](repeating: 0, count: 32)
        if isSet {
            guard let input, inputSize >= size else {
                fuse_reply_err(req, EINVAL)
                return
            }
            value.withUnsafeMutableBytes { $0.baseAddress!.copyMemory(from: input, byteCount: size) }
        }
        let status = value.withUnsafeMutableBytes { vx_ioctl_ptr(fd, UInt(cmd), $0.baseAddress) }
        if status < 0 {
            fuse_reply_err(req, errno)
        } else if isSet {
            if inode.fileType == S_IFREG {
                inode.knownUnprivileged.store(false, ordering: .relaxed)
            }
            // The flags moved the file's ctime, which the kernel has cached (generic/277).
            _ = vexfs_req_invalidate_attributes(req, ino)
            fuse_reply_ioctl(req, 0, nil, 0)
        } else {
            value.withUnsafeBytes { _ = fuse_reply_ioctl(req, 0, $0.baseAddress, min(outputSize, size)) }
        }
    }

    // MARK: directories

    static func opendir(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ fi: UnsafeMutablePointer<fuse_file_info>?) {
        let fs = fs(req)
        if ino == VirtualNode.directory {  // listed from nothing: no handle
            fi!.pointee.fh = 0
            fuse_reply_open(req, fi)
            return
        }
        do throws(Errno) {
            Filesystem.store(try fs.store.openDirectory(try fs.inode(ino)), in: fi)
            // The kernel keeps the listing and lists again from it until the directory changes: its
            // own changes bump the directory's version, and a change made in the store directly
            // (vexfs holds it alone, but an administrator may) shows with a new mtime once the
            // directory's attributes expire, as for entries. A second `du -s` or `ls` of a tree
            // then costs no READDIR at all.
            if fs.options.keepCache { vexfs_fi_set_cache_dir(fi) }
            if fuse_reply_open(req, fi) != 0 { Filesystem.releaseHandle(fi, as: DirectoryStream.self) }
        } catch { reply(req, error: error) }
    }

    static func readdir(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ size: Int, _ off: off_t,
                        _ fi: UnsafeMutablePointer<fuse_file_info>?, plus: Bool) {
        let fs = fs(req)
        let scratch = fs.pool.acquire(size)
        defer { fs.pool.release(scratch) }
        let buffer = scratch.pointer.assumingMemoryBound(to: CChar.self)
        if ino == VirtualNode.directory {
            fuse_reply_buf(req, buffer, listVirtualDirectory(req, fs, buffer, size, Int(off), plus: plus))
            return
        }
        let dir = Filesystem.handle(fi, as: DirectoryStream.self)
        guard let parent = try? fs.inode(ino) else {
            fuse_reply_err(req, EPERM)
            return
        }
        var used = 0
        var resumeAt = Int(off)
        dir.seek(resumeAt)
        do throws(Errno) {
            while let item = try dir.next() {
                // Reachable by name, never listed (ZFS's snapdir=hidden): find, du and rsync -a of the
                // mount do not walk the stats and the journal.
                if item.isStateDirectory {
                    resumeAt = item.nextOffset
                    continue
                }
                let room = size - used
                var added: Int
                if plus {
                    var ep = fuse_entry_param()
                    var looked: Inode?
                    if isDotOrDotDot(item.name) || fs.store.known(in: parent, number: item.inodeNumber) != nil {
                        // An entry without a node id is listed but not looked up. For a file the
                        // kernel holds already that spares a lookup here and keeps what the kernel
                        // has cached: a refresh would also drop its cached ACLs, which `ls -l`
                        // would then ask for again, file by file. Its attributes still expire.
                        ep.attr.st_ino = ino_t(item.inodeNumber)
                        ep.attr.st_mode = mode_t(item.type) << 12
                    } else {
                        let entry = try fs.store.lookup(parent, item.name)
                        ep = fs.entryParam(entry)
                        looked = entry.inode
                    }
                    added = fuse_add_direntry_plus(req, buffer + used, room, item.name, &ep, off_t(item.nextOffset))
                    if added > room, let looked { fs.store.forget(looked, 1) }
                } else {
                    var st = stat()
                    st.st_ino = ino_t(item.inodeNumber)
                    st.st_mode = mode_t(item.type) << 12
                    added = fuse_add_direntry(req, buffer + used, room, item.name, &st, off_t(item.nextOffset))
                }
                if added > room {
                    dir.rewind(to: resumeAt)
                    break
                }
                used += added
                resumeAt = item.nextOffset
            }
            fuse_reply_buf(req, buffer, used)
        } catch {
            // Entries already packed (and looked up) must reach the kernel; the error shows next time.
            if used > 0 { fuse_reply_buf(req, buffer, used) } else { reply(req, error: error) }
        }
    }

    static func releasedir(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ fi: UnsafeMutablePointer<fuse_file_info>?) {
        if ino != VirtualNode.directory { Filesystem.releaseHandle(fi, as: DirectoryStream.self) }
        fuse_reply_err(req, 0)
    }

    static func fsyncdir(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ datasync: Int32, _ fi: UnsafeMutablePointer<fuse_file_info>?) {
        let fs = fs(req)
        do throws(Errno) {
            try fs.store.syncDirectory(try fs.inode(ino), dataOnly: datasync != 0)
            fuse_reply_err(req, 0)
        } catch { reply(req, error: error) }
    }

    // MARK: extended attributes

    static func getxattr(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ name: UnsafePointer<CChar>?, _ size: Int) {
        let fs = fs(req)
        guard let inode = try? fs.inode(ino) else {
            fuse_reply_err(req, ENODATA)
            return
        }
        let computed = SemanticAttributeNames.isComputed(name!)
        var raised: (asker: uid_t, niceness: Int32)?
        if computed {
            // Someone waits on this answer, while the writers' requests, the bridge worker (nice -5)
            // and the linker keep both cores busy: preempted five times in its 0.1 ms of work, a
            // query in an idle collection took 2.5 ms at the p99 (BENCHMARKS.md). The thread keeps
            // the priority until its reply is sent, then drops it; a user other than root has at
            // most one such thread at a time.
            let asker = caller(req).uid
            raised = fs.raisedQueries.raise(for: asker, by: 10).map { (asker, $0) }
        }
        defer { if let raised { fs.raisedQueries.lower(for: raised.asker, to: raised.niceness) } }
        // A stored value is read into scratch memory; a computed one comes as an array.
        let scratch = size > 0 && !computed ? fs.pool.acquire(size) : nil
        defer { if let scratch { fs.pool.release(scratch) } }
        do throws(Errno) {
            let buffer = scratch.map { UnsafeMutableRawBufferPointer(start: $0.pointer, count: size) }
            switch try fs.attribute(inode, name!, size: size, into: buffer, requester: { requester(req) }) {
            case .size(let n): fuse_reply_xattr(req, n)
            case .computed(let bytes):
                bytes.withUnsafeBytes { _ = fuse_reply_buf(req, $0.baseAddress?.assumingMemoryBound(to: CChar.self), $0.count) }
            case .stored(let n): fuse_reply_buf(req, scratch?.pointer, n)
            }
        } catch { reply(req, error: error) }
    }

    static func setxattr(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ name: UnsafePointer<CChar>?, _ value: UnsafePointer<CChar>?,
                         _ size: Int, _ flags: Int32) {
        let fs = fs(req)
        do throws(Errno) {
            try fs.setAttribute(try fs.inode(ino), name!, UnsafeRawBufferPointer(start: value, count: size), flags: flags,
                                posixACL: vexfs_req_posix_acl(req) != 0, requester: { requester(req) })
            fuse_reply_err(req, 0)
        } catch { reply(req, error: error) }
    }

    static func listxattr(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ size: Int) {
        let fs = fs(req)
        if VirtualNode.contains(ino) {  // no attributes at all
            if size == 0 { fuse_reply_xattr(req, 0) } else { fuse_reply_buf(req, nil, 0) }
            return
        }
        do throws(Errno) {
            let inode = try fs.inode(ino)
            // The whole list, with the settings vexfs keeps on directories left out: listed, they
            // would be copied by cp -a and rsync -X as if they were the user's.
            var full = 0
            var scratch = fs.pool.acquire(1)
            defer { fs.pool.release(scratch) }
            while true {
                full = try fs.store.listxattr(inode, into: nil)
                if full == 0 { break }
                if full > scratch.capacity {
                    fs.pool.release(scratch)
                    scratch = fs.pool.acquire(full)
                }
                do throws(Errno) {
                    full = try fs.store.listxattr(inode, into: UnsafeMutableRawBufferPointer(start: scratch.pointer, count: full))
                    break
                } catch .outOfRange { continue }  // grew in between
            }
            let names = scratch.pointer.assumingMemoryBound(to: CChar.self)
            let kept = listedAttributes(names, length: full)
            if size == 0 {
                fuse_reply_xattr(req, kept)
            } else if kept > size {
                fuse_reply_err(req, ERANGE)
            } else {
                fuse_reply_buf(req, names, kept)
            }
        } catch { reply(req, error: error) }
    }

    static func removexattr(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ name: UnsafePointer<CChar>?) {
        let fs = fs(req)
        do throws(Errno) {
            try fs.removeAttribute(try fs.inode(ino), name!)
            fuse_reply_err(req, 0)
        } catch { reply(req, error: error) }
    }

    // MARK: the table

    /// Every handler runs under the stack-budget monitor.
    @inline(__always)
    static func monitored(_ req: fuse_req_t?, _ op: Operation, _ body: () -> Void) {
        let fs = fs(req)
        var t0 = timespec(), t1 = timespec()
        clock_gettime(CLOCK_MONOTONIC, &t0)
        fs.stack.measure(op.rawValue, body)
        clock_gettime(CLOCK_MONOTONIC, &t1)
        fs.operations.record(op, nanoseconds: UInt64(max(0, (t1.tv_sec - t0.tv_sec) * 1_000_000_000 + (t1.tv_nsec - t0.tv_nsec))))
    }

    static var table: vexfs_handlers {
        var h = vexfs_handlers()
        h.lookup = { a0, a1, a2 in Handlers.monitored(a0, .lookup) { Handlers.lookup(a0, a1, a2) } }
        h.forget = { a0, a1, a2 in Handlers.monitored(a0, .forget) { Handlers.forget(a0, a1, a2) } }
        h.forget_multi = { a0, a1, a2 in Handlers.monitored(a0, .forgetMulti) { Handlers.forgetMulti(a0, a1, a2) } }
        h.getattr = { a0, a1, a2 in Handlers.monitored(a0, .getattr) { Handlers.getattr(a0, a1, a2) } }
        h.statx = { a0, a1, a2 in Handlers.monitored(a0, .getattr) { Handlers.statx(a0, a1, a2) } }
        h.setattr = { a0, a1, a2, a3, a4 in Handlers.monitored(a0, .setattr) { Handlers.setattr(a0, a1, a2, a3, a4) } }
        h.readlink = { a0, a1 in Handlers.monitored(a0, .readlink) { Handlers.readlink(a0, a1) } }
        h.mknod = { a0, a1, a2, a3, a4 in Handlers.monitored(a0, .mknod) { Handlers.mknod(a0, a1, a2, a3, a4) } }
        h.mkdir = { a0, a1, a2, a3 in Handlers.monitored(a0, .mkdir) { Handlers.mkdir(a0, a1, a2, a3) } }
        h.unlink = { a0, a1, a2 in Handlers.monitored(a0, .unlink) { Handlers.unlink(a0, a1, a2) } }
        h.rmdir = { a0, a1, a2 in Handlers.monitored(a0, .rmdir) { Handlers.rmdir(a0, a1, a2) } }
        h.symlink = { a0, a1, a2, a3 in Handlers.monitored(a0, .symlink) { Handlers.symlink(a0, a1, a2, a3) } }
        h.rename = { a0, a1, a2, a3, a4, a5 in Handlers.monitored(a0, .rename) { Handlers.rename(a0, a1, a2, a3, a4, a5) } }
        h.link = { a0, a1, a2, a3 in Handlers.monitored(a0, .link) { Handlers.link(a0, a1, a2, a3) } }
        h.open = { a0, a1, a2 in Handlers.monitored(a0, .open) { Handlers.open(a0, a1, a2) } }
        h.read = { a0, a1, a2, a3, a4 in Handlers.monitored(a0, .read) { Handlers.read(a0, a1, a2, a3, a4) } }
        h.write_buf = { a0, a1, a2, a3, a4 in Handlers.monitored(a0, .writeBuf) { Handlers.writeBuf(a0, a1, a2, a3, a4) } }
        h.flush = { a0, a1, a2 in Handlers.monitored(a0, .flush) { Handlers.flush(a0, a1, a2) } }
        h.release = { a0, a1, a2 in Handlers.monitored(a0, .release) { Handlers.release(a0, a1, a2) } }
        h.fsync = { a0, a1, a2, a3 in Handlers.monitored(a0, .fsync) { Handlers.fsync(a0, a1, a2, a3) } }
        h.opendir = { a0, a1, a2 in Handlers.monitored(a0, .opendir) { Handlers.opendir(a0, a1, a2) } }
        h.readdir = { a0, a1, a2, a3, a4 in Handlers.monitored(a0, .readdir) { Handlers.readdir(a0, a1, a2, a3, a4, plus: false) } }
        h.readdirplus = { a0, a1, a2, a3, a4 in Handlers.monitored(a0, .readdirplus) { Handlers.readdir(a0, a1, a2, a3, a4, plus: true) } }
        h.releasedir = { a0, a1, a2 in Handlers.monitored(a0, .releasedir) { Handlers.releasedir(a0, a1, a2) } }
        h.fsyncdir = { a0, a1, a2, a3 in Handlers.monitored(a0, .fsyncdir) { Handlers.fsyncdir(a0, a1, a2, a3) } }
        h.statfs = { a0, a1 in Handlers.monitored(a0, .statfs) { Handlers.statfs(a0, a1) } }
        h.setxattr = { a0, a1, a2, a3, a4, a5 in Handlers.monitored(a0, .setxattr) { Handlers.setxattr(a0, a1, a2, a3, a4, a5) } }
        h.getxattr = { a0, a1, a2, a3 in Handlers.monitored(a0, .getxattr) { Handlers.getxattr(a0, a1, a2, a3) } }
        h.listxattr = { a0, a1, a2 in Handlers.monitored(a0, .listxattr) { Handlers.listxattr(a0, a1, a2) } }
        h.removexattr = { a0, a1, a2 in Handlers.monitored(a0, .removexattr) { Handlers.removexattr(a0, a1, a2) } }
        h.access = { a0, a1, a2 in Handlers.monitored(a0, .access) { Handlers.access(a0, a1, a2) } }
        h.create = { a0, a1, a2, a3, a4 in Handlers.monitored(a0, .create) { Handlers.create(a0, a1, a2, a3, a4) } }
        h.fallocate = { a0, a1, a2, a3, a4, a5 in Handlers.monitored(a0, .fallocate) { Handlers.fallocate(a0, a1, a2, a3, a4, a5) } }
        h.copy_file_range = { a0, a1, a2, a3, a4, a5, a6, a7, a8 in Handlers.monitored(a0, .copyFileRange) { Handlers.copyFileRange(a0, a1, a2, a3, a4, a5, a6, a7, a8) } }
        h.lseek = { a0, a1, a2, a3, a4 in Handlers.monitored(a0, .lseek) { Handlers.lseek(a0, a1, a2, a3, a4) } }
        h.ioctl = { a0, a1, a2, _, a4, a5, a6, a7, a8 in
            Handlers.monitored(a0, .ioctl) { Handlers.ioctl(a0, a1, a2, a4, a5, a6, a7, a8) }
        }
        h.flock = { a0, a1, a2, a3 in Handlers.monitored(a0, .flock) { Handlers.flock(a0, a1, a2, a3) } }
        h.negotiated = { _, passthrough in BackingFiles.logOff(passthrough) }
        return h
    }
}

/// The `.vexfs/` node named `name` under `parent`, if there is one.
private func virtualChild(_ parent: fuse_ino_t, _ name: UnsafePointer<CChar>) -> fuse_ino_t? {
    if parent == fuse_ino_t(FUSE_ROOT_ID) && strcmp(name, VirtualNode.directoryName) == 0 { return VirtualNode.directory }
    if parent == VirtualNode.directory { return VirtualNode.file(named: name) }
    return nil
}

private func replyVirtual(_ req: fuse_req_t?, _ fs: Filesystem, _ id: fuse_ino_t) {
    var ep = fs.virtualEntryParam(id)
    fuse_reply_entry(req, &ep)
}

/// `.vexfs/` holds ".", "..", "stats" and "journal"; offsets are the entries' positions.
private func listVirtualDirectory(_ req: fuse_req_t?, _ fs: Filesystem, _ buffer: UnsafeMutablePointer<CChar>,
                                  _ size: Int, _ offset: Int, plus: Bool) -> Int {
    let entries: [(String, fuse_ino_t)] = [(".", VirtualNode.directory), ("..", fuse_ino_t(FUSE_ROOT_ID)),
                                           (VirtualNode.statsName, VirtualNode.stats), (VirtualNode.journalName, VirtualNode.journal)]
    var used = 0
    for (index, (name, id)) in entries.enumerated().dropFirst(offset) {
        var ep = fuse_entry_param()
        if id == VirtualNode.stats || id == VirtualNode.journal { ep = fs.virtualEntryParam(id) } else {
            ep.attr.st_ino = ino_t(UInt64.max - id)
            ep.attr.st_mode = S_IFDIR
        }
        let added = name.withCString { cname in
            plus ? fuse_add_direntry_plus(req, buffer + used, size - used, cname, &ep, off_t(index + 1))
                 : fuse_add_direntry(req, buffer + used, size - used, cname, &ep.attr, off_t(index + 1))
        }
        if added > size - used { break }
        used += added
    }
    return used
}

@inline(__always)
private func isDotOrDotDot(_ name: UnsafePointer<CChar>) -> Bool {
    name[0] == 0x2E && (name[1] == 0 || (name[1] == 0x2E && name[2] == 0))
}

/// Users' flock(2) calls answered ENOLCK (Handlers.flock): counted for the stats, and logged at most
/// once a minute, with how many since the last line, so a crowd of waiters cannot flood the log.
final class FlockRefusals: Sendable {
    private static let logger = Logger(label: "vexfs")
    private static let logEvery = 60
    let count = Atomic<Int>(0)
    /// Monotonic seconds of the last line, and the count it reported.
    private let logged = Mutex<(at: Int, count: Int)>((Int.min / 2, 0))

    func refused(limit: Int) {
        let total = count.add(1, ordering: .relaxed).newValue
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        let since: Int? = logged.withLock { last in
            guard now.tv_sec - last.at >= Self.logEvery else { return nil }
            defer { last = (now.tv_sec, total) }
            return total - last.count
        }
        guard let since else { return }
        Self.logger.warning("flock: \(since) lock request(s) answered ENOLCK since the last such line: \(limit) already waited, half the workers (--threads raises it)")
    }
}
