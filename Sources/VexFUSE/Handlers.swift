import CFuse
import CLinux
import Glibc
import Synchronization
import SystemPackage
import VexSemantic
import VexStore

/// One function per FUSE operation: unpack the request, call the store, answer exactly once.
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
            let dir = try fs.inode(newParent)
            let entry = try fs.store.link(try fs.inode(ino), dir, newName!)
            // Every name of a vector file is a vector, posted before the answer like any change.
            if let semantic = fs.semantic { fs.withDirectory(dir) { semantic.linked($0, FileName(cString: newName!)) } }
            fs.reply(req, entry: entry)
        } catch { reply(req, error: error) }
    }

    static func unlink(_ req: fuse_req_t?, _ parent: fuse_ino_t, _ name: UnsafePointer<CChar>?) {
        let fs = fs(req)
        do throws(Errno) {
            let dir = try fs.inode(parent)
            try fs.store.unlink(dir, name!)
            // Every change is posted to the index before the answer: a query made after the system
            // call returns is then sure to wait for it.
            if let semantic = fs.semantic { fs.withDirectory(dir) { semantic.removed($0, FileName(cString: name!)) } }
            fuse_reply_err(req, 0)
        } catch { reply(req, error: error) }
    }

    static func rmdir(_ req: fuse_req_t?, _ parent: fuse_ino_t, _ name: UnsafePointer<CChar>?) {
        let fs = fs(req)
        do throws(Errno) {
            let dir = try fs.inode(parent)
            let removed = fs.semantic == nil ? nil : fs.store.child(dir, name!)
            try fs.store.rmdir(dir, name!)
            // Its index goes before the answer, so nothing of it outlives the rmdir(2).
            if let semantic = fs.semantic, let removed {
                semantic.directoryRemoved(key: removed.key.number, path: fs.shownPath(dir).child(FileName(cString: name!)))
            }
            fuse_reply_err(req, 0)
        } catch { reply(req, error: error) }
    }

    static func rename(_ req: fuse_req_t?, _ parent: fuse_ino_t, _ name: UnsafePointer<CChar>?, _ newParent: fuse_ino_t,
                       _ newName: UnsafePointer<CChar>?, _ flags: UInt32) {
        let fs = fs(req)
        do throws(Errno) {
            let from = try fs.inode(parent), to = try fs.inode(newParent)
            guard let semantic = fs.semantic, let moving = fs.store.child(from, name!) else {
                try fs.store.rename(from, name!, to, newName!, flags: flags)
                fuse_reply_err(req, 0)
                return
            }
            let oldName = FileName(cString: name!), newNameBytes = FileName(cString: newName!)
            let exchange = flags & vx_RENAME_EXCHANGE != 0
            // Collections hold their directories by descriptor; a moved directory changes only their
            // names for messages, taken before the move changes them.
            let moved = moving.isDirectory ? (fs.shownPath(from).child(oldName), fs.shownPath(to).child(newNameBytes)) : nil
            try fs.store.rename(from, name!, to, newName!, flags: flags)
            if let (old, new) = moved {
                semantic.directoryMoved(from: old, to: new, exchange: exchange)
            } else {
                fs.withDirectory(from) { fromRef in
                    fs.withDirectory(to) { toRef in semantic.renamed(from: fromRef, oldName, to: toRef, newNameBytes, exchange: exchange) }
                }
            }
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
        do throws(Errno) {
            let inode = try fs.inode(ino)
            // A handle comes with the request when the kernel had the file open (ftruncate, futimens);
            // on a directory it is a DirectoryStream, which the store does not need.
            let file = fi != nil && !inode.isDirectory ? Filesystem.handle(fi, as: OpenFile.self) : nil
            if change.size != nil && vexfs_req_killpriv_v2(req) != 0 && caller(req).uid != 0 {
                try fs.store.dropPrivileges(inode, openFile: file?.fd)
            }
            let attributes = try fs.store.setAttributes(inode, change, openFile: file)
            // Truncation changes what a vector file holds (to nothing: it leaves the index). Through
            // an open handle the change is indexed at its close, like a write.
            if change.size != nil, !inode.isDirectory, let semantic = fs.semantic {
                if let file { file.wasWritten.store(true, ordering: .relaxed) } else {
                    fs.withFile(inode) { semantic.written($0.dir, $0.name, inode: inode.key.number) }
                }
            }
            // Who may read a file decides whether answers name it: cached answers go with the old modes.
            if change.mode != nil || change.uid != nil || change.gid != nil, inode.fileType == S_IFREG, let semantic = fs.semantic {
                fs.withFile(inode) { semantic.attributeChanged($0) }
            }
            fs.reply(req, attributes: attributes)
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
                vexfs_fi_set_open_flags(fi, 1, 0)  // made anew at each open: no page cache, no size
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
            if let id = fs.backing.attach(req, file) {
                if vexfs_reply_open_backing(req, fi!.pointee.fh, id) != 0 { closeUnanswered(req, fs, file, fi) }
                return
            }
            vexfs_fi_set_open_flags(fi, 0, fs.options.keepCache ? 1 : 0)
            if fuse_reply_open(req, fi) != 0 { closeUnanswered(req, fs, file, fi) }
        } catch { reply(req, error: error) }
    }

    static func create(_ req: fuse_req_t?, _ parent: fuse_ino_t, _ name: UnsafePointer<CChar>?, _ mode: mode_t,
                       _ fi: UnsafeMutablePointer<fuse_file_info>?) {
        let fs = fs(req)
        do throws(Errno) {
            let dir = try fs.inode(parent)
            let (entry, file) = try withCallerUmask(req) { () throws(Errno) in
                try fs.store.create(dir, name!, mode: mode, flags: fs.backingOpenFlags(fi!.pointee.flags), caller: caller(req))
            }
            // Before the answer: the FLUSH of the caller's close(2) may run on another thread as soon
            // as the answer is out, and must find the new file marked (an empty new file is news too).
            if let semantic = fs.semantic {
                fs.withDirectory(dir) { semantic.created($0, FileName(cString: name!)) }
                file.wasWritten.store(true, ordering: .relaxed)
            }
            Filesystem.store(file, in: fi)
            var ep = fs.entryParam(entry)
            let answered: Int32
            if let id = fs.backing.attach(req, file) {
                answered = vexfs_reply_create_backing(req, &ep, fi!.pointee.fh, id)
            } else {
                vexfs_fi_set_open_flags(fi, 0, fs.options.keepCache ? 1 : 0)
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
        fs.backing.detach(req, file)
        Filesystem.releaseHandle(fi, as: OpenFile.self)
        fuse_reply_err(req, 0)
    }

    /// Hands a changed file to the index. The daemon knows of writes it made (`wasWritten`); the
    /// others (the kernel's, under passthrough, and a shared mapping's) show in the file's size and
    /// times. Of those the kernel saw the end of a write(2), not of a page written through a mapping,
    /// so it is told that its cached attributes are stale.
    private static func noticeChanges(_ req: fuse_req_t?, _ fs: Filesystem, _ ino: fuse_ino_t, _ file: OpenFile) {
        guard let inode = file.inode else { return }
        let written = file.wasWritten.exchange(false, ordering: .relaxed)
        let changed = file.changedSinceLastCheck()
        guard written || changed else { return }
        if changed && !written && BackingFiles.negotiated(req) { _ = vexfs_req_invalidate_attributes(req, ino) }
        // Posted before the answer: close(2) returns only after it, so a query that follows the
        // close finds the change queued (and settles it first).
        if let semantic = fs.semantic {
            fs.withFile(inode) { semantic.written($0.dir, $0.name, inode: inode.key.number) }
        }
    }

    /// An open or create whose answer did not reach the kernel (the caller was interrupted): the
    /// kernel will send no release, so the handle is closed here.
    private static func closeUnanswered(_ req: fuse_req_t?, _ fs: Filesystem, _ file: OpenFile, _ fi: UnsafeMutablePointer<fuse_file_info>?) {
        fs.backing.detach(req, file)
        Filesystem.releaseHandle(fi, as: OpenFile.self)
    }

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
            try fs(req).store.dropPrivileges(inode, openFile: file.fd)
            return nil
        } catch { return error }
    }

    /// Under FUSE_HANDLE_KILLPRIV_V2 the kernel no longer drops privileges when an unprivileged
    /// caller writes; vexfs does. (The kernel's test is CAP_FSETID; root's uid stands for it here.)
    @inline(__always)
    static func dropPrivilegesIfOurs(_ req: fuse_req_t?, _ file: OpenFile) -> Errno? {
        guard let inode = file.inode, !inode.knownUnprivileged.load(ordering: .relaxed),
              vexfs_req_killpriv_v2(req) != 0, caller(req).uid != 0 else { return nil }
        do throws(Errno) {
            try fs(req).store.dropPrivileges(inode, openFile: file.fd)
            return nil
        } catch { return error }
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

    static let securityCapability = "security.capability"

    static func getxattr(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ name: UnsafePointer<CChar>?, _ size: Int) {
        let fs = fs(req)
        guard let inode = try? fs.inode(ino) else {
            fuse_reply_err(req, ENODATA)
            return
        }
        if SemanticLayer.owns(name!) {
            // Someone waits on this answer, while the writers' requests, the bridge worker (nice -5)
            // and the linker keep both cores busy: preempted five times in its 0.1 ms of work, a
            // query in an idle collection took 2.5 ms at the p99 (BENCHMARKS.md). The thread keeps
            // the priority until its reply is sent, then drops it; a user other than root has at
            // most one such thread at a time.
            let asker = caller(req).uid
            let niceness = fs.raisedQueries.raise(for: asker, by: 10)
            defer { if let niceness { fs.raisedQueries.lower(for: asker, to: niceness) } }
            replyComputed(req, size) { () throws(SemanticError) -> [UInt8] in
                guard let semantic = fs.semantic else { throw .noData }
                let attribute = String(cString: name!)
                if inode.isDirectory {
                    guard let r = fs.withDirectory(inode, { dir in
                        Result { () throws(SemanticError) in try semantic.directoryAttribute(attribute, dir: dir) }
                    }) else { throw .noData }
                    return try r.get()
                }
                // Answered for the file the request names (its inode), read through its own descriptor.
                guard inode.fileType == S_IFREG else { throw .noData }
                let who = requester(req)
                guard let r = fs.withFile(inode, { file in
                    Result { () throws(SemanticError) in try semantic.fileAttribute(attribute, file: file, requester: who) }
                }) else { throw .noData }
                return try r.get()
            }
            return
        }
        let isCapability = strcmp(name!, securityCapability) == 0
        if isCapability && inode.knownWithoutCapability.load(ordering: .relaxed) {
            fuse_reply_err(req, ENODATA)
            return
        }
        do throws(Errno) {
            if size == 0 {
                fuse_reply_xattr(req, try fs.store.getxattr(inode, name!, into: nil))
            } else {
                let scratch = fs.pool.acquire(size)
                defer { fs.pool.release(scratch) }
                let n = try fs.store.getxattr(inode, name!, into: UnsafeMutableRawBufferPointer(start: scratch.pointer, count: size))
                fuse_reply_buf(req, scratch.pointer, n)
            }
        } catch {
            if isCapability && error == .noData { inode.knownWithoutCapability.store(true, ordering: .relaxed) }
            reply(req, error: error)
        }
    }

    /// Answers a computed attribute as getxattr(2) expects: its size for a size probe, ERANGE when
    /// the caller's buffer is too small.
    private static func replyComputed(_ req: fuse_req_t?, _ size: Int, _ compute: () throws(SemanticError) -> [UInt8]) {
        do throws(SemanticError) {
            let bytes = try compute()
            if size == 0 {
                fuse_reply_xattr(req, bytes.count)
            } else if bytes.count > size {
                fuse_reply_err(req, ERANGE)
            } else {
                bytes.withUnsafeBytes { _ = fuse_reply_buf(req, $0.baseAddress?.assumingMemoryBound(to: CChar.self), $0.count) }
            }
        } catch { fuse_reply_err(req, error.errno) }
    }

    static func setxattr(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ name: UnsafePointer<CChar>?, _ value: UnsafePointer<CChar>?,
                         _ size: Int, _ flags: Int32) {
        let fs = fs(req)
        do throws(Errno) {
            let inode = try fs.inode(ino)
            if SemanticLayer.owns(name!) {
                // Settings of a collection, options of a query file; the rest of ours is computed.
                guard let semantic = fs.semantic else { throw .invalidArgument }
                let bytes = Array(UnsafeRawBufferPointer(start: value, count: size))
                let attribute = String(cString: name!)
                let done = inode.isDirectory
                    ? fs.withDirectory(inode) { dir in
                        Result { () throws(SemanticError) in try semantic.setDirectoryAttribute(attribute, dir: dir, value: bytes) }
                    }
                    : inode.fileType == S_IFREG ? fs.withFile(inode) { file in
                        Result { () throws(SemanticError) in try semantic.setFileAttribute(attribute, file: file, value: bytes) }
                    } : nil
                guard let done else { throw .invalidArgument }
                if case .failure(let error) = done { throw Errno(rawValue: error.errno) }
                fuse_reply_err(req, 0)
                return
            }
            let isVector = strcmp(name!, SemanticLayer.vectorAttribute) == 0
            if isVector {
                // A vector that cannot be indexed is refused, so the attribute never holds one.
                guard !inode.isDirectory else { throw .invalidArgument }
                let parsed = VectorParser.parse(UnsafeRawBufferPointer(start: value, count: size), as: .text)
                guard case .success = parsed else { throw .invalidArgument }
            }
            if strcmp(name!, securityCapability) == 0 { inode.knownWithoutCapability.store(false, ordering: .relaxed) }
            try fs.store.setxattr(inode, name!, UnsafeRawBufferPointer(start: value, count: size), flags: flags)
            if let semantic = fs.semantic, inode.fileType == S_IFREG { fs.withFile(inode) { semantic.attributeChanged($0, name: name!) } }
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
            var kept = 0, at = 0
            while at < full {
                let length = strlen(names + at) + 1
                if !SemanticLayer.hidesFromListing(names + at) {
                    if kept != at { memmove(names + kept, names + at, length) }
                    kept += length
                }
                at += length
            }
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
            let inode = try fs.inode(ino)
            if SemanticLayer.owns(name!) {
                // Only a query file's options are stored, and so removable.
                guard !inode.isDirectory, inode.fileType == S_IFREG, let semantic = fs.semantic else { throw .noData }
                let attribute = String(cString: name!)
                let done = fs.withFile(inode) { file in
                    Result { () throws(SemanticError) in try semantic.removeFileAttribute(attribute, file: file) }
                }
                guard let done else { throw .noData }
                if case .failure(let error) = done { throw Errno(rawValue: error.errno) }
                fuse_reply_err(req, 0)
                return
            }
            try fs.store.removexattr(inode, name!)
            if let semantic = fs.semantic, inode.fileType == S_IFREG { fs.withFile(inode) { semantic.attributeChanged($0, name: name!) } }
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
