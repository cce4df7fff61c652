import CFuse
import CLinux
import Glibc
import Synchronization
import SystemPackage
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
        do throws(Errno) {
            fs.reply(req, entry: try fs.store.lookup(fs.inode(parent), name!))
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
        fs.store.forget(fs.inode(ino), count)
        fuse_reply_none(req)
    }

    static func forgetMulti(_ req: fuse_req_t?, _ count: Int, _ forgets: UnsafeMutablePointer<fuse_forget_data>?) {
        let fs = fs(req)
        for f in UnsafeBufferPointer(start: forgets, count: count) {
            fs.store.forget(fs.inode(fuse_ino_t(f.ino)), f.nlookup)
        }
        fuse_reply_none(req)
    }

    static func mkdir(_ req: fuse_req_t?, _ parent: fuse_ino_t, _ name: UnsafePointer<CChar>?, _ mode: mode_t) {
        let fs = fs(req)
        do throws(Errno) {
            fs.reply(req, entry: try fs.store.mkdir(fs.inode(parent), name!, mode: mode, caller: caller(req)))
        } catch { reply(req, error: error) }
    }

    static func mknod(_ req: fuse_req_t?, _ parent: fuse_ino_t, _ name: UnsafePointer<CChar>?, _ mode: mode_t, _ rdev: dev_t) {
        let fs = fs(req)
        do throws(Errno) {
            fs.reply(req, entry: try fs.store.mknod(fs.inode(parent), name!, mode: mode, device: rdev, caller: caller(req)))
        } catch { reply(req, error: error) }
    }

    static func symlink(_ req: fuse_req_t?, _ target: UnsafePointer<CChar>?, _ parent: fuse_ino_t, _ name: UnsafePointer<CChar>?) {
        let fs = fs(req)
        do throws(Errno) {
            fs.reply(req, entry: try fs.store.symlink(target!, fs.inode(parent), name!, caller: caller(req)))
        } catch { reply(req, error: error) }
    }

    static func link(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ newParent: fuse_ino_t, _ newName: UnsafePointer<CChar>?) {
        let fs = fs(req)
        do throws(Errno) {
            fs.reply(req, entry: try fs.store.link(fs.inode(ino), fs.inode(newParent), newName!))
        } catch { reply(req, error: error) }
    }

    static func unlink(_ req: fuse_req_t?, _ parent: fuse_ino_t, _ name: UnsafePointer<CChar>?) {
        let fs = fs(req)
        do throws(Errno) {
            try fs.store.unlink(fs.inode(parent), name!)
            fuse_reply_err(req, 0)
        } catch { reply(req, error: error) }
    }

    static func rmdir(_ req: fuse_req_t?, _ parent: fuse_ino_t, _ name: UnsafePointer<CChar>?) {
        let fs = fs(req)
        do throws(Errno) {
            try fs.store.rmdir(fs.inode(parent), name!)
            fuse_reply_err(req, 0)
        } catch { reply(req, error: error) }
    }

    static func rename(_ req: fuse_req_t?, _ parent: fuse_ino_t, _ name: UnsafePointer<CChar>?, _ newParent: fuse_ino_t,
                       _ newName: UnsafePointer<CChar>?, _ flags: UInt32) {
        let fs = fs(req)
        do throws(Errno) {
            try fs.store.rename(fs.inode(parent), name!, fs.inode(newParent), newName!, flags: flags)
            fuse_reply_err(req, 0)
        } catch { reply(req, error: error) }
    }

    static func readlink(_ req: fuse_req_t?, _ ino: fuse_ino_t) {
        let fs = fs(req)
        do throws(Errno) {
            let target = try fs.store.readlink(fs.inode(ino))
            target.withUnsafeBufferPointer { _ = fuse_reply_readlink(req, $0.baseAddress) }
        } catch { reply(req, error: error) }
    }

    // MARK: attributes

    static func getattr(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ fi: UnsafeMutablePointer<fuse_file_info>?) {
        let fs = fs(req)
        do throws(Errno) {
            fs.reply(req, attributes: try fs.store.attributes(fs.inode(ino)))
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
        let inode = fs.inode(ino)
        // A handle comes with the request when the kernel had the file open (ftruncate, futimens);
        // on a directory it is a DirectoryStream, which the store does not need.
        let file = fi != nil && !inode.isDirectory ? Filesystem.handle(fi, as: OpenFile.self) : nil
        do throws(Errno) {
            fs.reply(req, attributes: try fs.store.setAttributes(inode, change, openFile: file))
        } catch { reply(req, error: error) }
    }

    static func statfs(_ req: fuse_req_t?, _ ino: fuse_ino_t) {
        let fs = fs(req)
        do throws(Errno) {
            var sv = try fs.store.statfs(fs.inode(ino))
            fuse_reply_statfs(req, &sv)
        } catch { reply(req, error: error) }
    }

    static func access(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ mask: Int32) {
        // The mount always uses default_permissions, so the kernel has checked already and sends
        // access only to ask whether the file is there.
        let fs = fs(req)
        do throws(Errno) {
            _ = try fs.store.attributes(fs.inode(ino))
            fuse_reply_err(req, 0)
        } catch { reply(req, error: error) }
    }

    // MARK: files

    static func open(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ fi: UnsafeMutablePointer<fuse_file_info>?) {
        let fs = fs(req)
        do throws(Errno) {
            let file = try fs.store.open(fs.inode(ino), flags: fs.backingOpenFlags(fi!.pointee.flags))
            Filesystem.store(file, in: fi)
            vexfs_fi_set_open_flags(fi, 0, fs.options.keepCache ? 1 : 0)
            if fuse_reply_open(req, fi) != 0 { Filesystem.releaseHandle(fi, as: OpenFile.self) }
        } catch { reply(req, error: error) }
    }

    static func create(_ req: fuse_req_t?, _ parent: fuse_ino_t, _ name: UnsafePointer<CChar>?, _ mode: mode_t,
                       _ fi: UnsafeMutablePointer<fuse_file_info>?) {
        let fs = fs(req)
        do throws(Errno) {
            let (entry, file) = try fs.store.create(fs.inode(parent), name!, mode: mode,
                                                    flags: fs.backingOpenFlags(fi!.pointee.flags), caller: caller(req))
            Filesystem.store(file, in: fi)
            vexfs_fi_set_open_flags(fi, 0, fs.options.keepCache ? 1 : 0)
            var ep = fs.entryParam(entry)
            if fuse_reply_create(req, &ep, fi) != 0 {
                Filesystem.releaseHandle(fi, as: OpenFile.self)
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
        reply(req, status: dup < 0 ? 0 : close(dup))
    }

    static func release(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ fi: UnsafeMutablePointer<fuse_file_info>?) {
        if vexfs_fi_flock_release(fi) != 0 {
            _ = vx_flock(Filesystem.handle(fi, as: OpenFile.self).fd, LOCK_UN)
        }
        Filesystem.releaseHandle(fi, as: OpenFile.self)
        fuse_reply_err(req, 0)
    }

    static func fsync(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ datasync: Int32, _ fi: UnsafeMutablePointer<fuse_file_info>?) {
        let file = Filesystem.handle(fi, as: OpenFile.self)
        reply(req, status: datasync != 0 ? fdatasync(file.fd) : Glibc.fsync(file.fd))
    }

    static func flock(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ fi: UnsafeMutablePointer<fuse_file_info>?, _ op: Int32) {
        let file = Filesystem.handle(fi, as: OpenFile.self)
        reply(req, status: vx_flock(file.fd, op))
    }

    static func fallocate(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ mode: Int32, _ off: off_t, _ len: off_t,
                          _ fi: UnsafeMutablePointer<fuse_file_info>?) {
        let file = Filesystem.handle(fi, as: OpenFile.self)
        let status = vx_fallocate(file.fd, mode, Int64(off), Int64(len))
        if status == 0 { file.wasWritten.store(true, ordering: .relaxed) }
        reply(req, status: status)
    }

    static func copyFileRange(_ req: fuse_req_t?, _ inoIn: fuse_ino_t, _ offIn: off_t, _ fiIn: UnsafeMutablePointer<fuse_file_info>?,
                              _ inoOut: fuse_ino_t, _ offOut: off_t, _ fiOut: UnsafeMutablePointer<fuse_file_info>?,
                              _ len: Int, _ flags: Int32) {
        let source = Filesystem.handle(fiIn, as: OpenFile.self), target = Filesystem.handle(fiOut, as: OpenFile.self)
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

    // MARK: directories

    static func opendir(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ fi: UnsafeMutablePointer<fuse_file_info>?) {
        let fs = fs(req)
        do throws(Errno) {
            Filesystem.store(try fs.store.openDirectory(fs.inode(ino)), in: fi)
            if fuse_reply_open(req, fi) != 0 { Filesystem.releaseHandle(fi, as: DirectoryStream.self) }
        } catch { reply(req, error: error) }
    }

    static func readdir(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ size: Int, _ off: off_t,
                        _ fi: UnsafeMutablePointer<fuse_file_info>?, plus: Bool) {
        let fs = fs(req)
        let dir = Filesystem.handle(fi, as: DirectoryStream.self)
        let parent = fs.inode(ino)
        let buffer = UnsafeMutablePointer<CChar>.allocate(capacity: size)
        defer { buffer.deallocate() }
        var used = 0
        var resumeAt = Int(off)
        dir.seek(resumeAt)
        do throws(Errno) {
            while let item = try dir.next() {
                let room = size - used
                var added: Int
                if plus {
                    var ep = fuse_entry_param()
                    var looked: Inode?
                    if isDotOrDotDot(item.name) {
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
        Filesystem.releaseHandle(fi, as: DirectoryStream.self)
        fuse_reply_err(req, 0)
    }

    static func fsyncdir(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ datasync: Int32, _ fi: UnsafeMutablePointer<fuse_file_info>?) {
        let fs = fs(req)
        do throws(Errno) {
            try fs.store.syncDirectory(fs.inode(ino), dataOnly: datasync != 0)
            fuse_reply_err(req, 0)
        } catch { reply(req, error: error) }
    }

    // MARK: extended attributes

    static let securityCapability = "security.capability"

    static func getxattr(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ name: UnsafePointer<CChar>?, _ size: Int) {
        let fs = fs(req)
        let inode = fs.inode(ino)
        let isCapability = strcmp(name!, securityCapability) == 0
        if isCapability && inode.knownWithoutCapability.load(ordering: .relaxed) {
            fuse_reply_err(req, ENODATA)
            return
        }
        do throws(Errno) {
            if size == 0 {
                fuse_reply_xattr(req, try fs.store.getxattr(inode, name!, into: nil))
            } else {
                let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 64)
                defer { buffer.deallocate() }
                let n = try fs.store.getxattr(inode, name!, into: buffer)
                fuse_reply_buf(req, buffer.baseAddress, n)
            }
        } catch {
            if isCapability && error == .noData { inode.knownWithoutCapability.store(true, ordering: .relaxed) }
            reply(req, error: error)
        }
    }

    static func setxattr(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ name: UnsafePointer<CChar>?, _ value: UnsafePointer<CChar>?,
                         _ size: Int, _ flags: Int32) {
        let fs = fs(req)
        let inode = fs.inode(ino)
        if strcmp(name!, securityCapability) == 0 { inode.knownWithoutCapability.store(false, ordering: .relaxed) }
        do throws(Errno) {
            try fs.store.setxattr(inode, name!, UnsafeRawBufferPointer(start: value, count: size), flags: flags)
            fuse_reply_err(req, 0)
        } catch { reply(req, error: error) }
    }

    static func listxattr(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ size: Int) {
        let fs = fs(req)
        do throws(Errno) {
            if size == 0 {
                fuse_reply_xattr(req, try fs.store.listxattr(fs.inode(ino), into: nil))
            } else {
                let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 64)
                defer { buffer.deallocate() }
                let n = try fs.store.listxattr(fs.inode(ino), into: buffer)
                fuse_reply_buf(req, buffer.baseAddress, n)
            }
        } catch { reply(req, error: error) }
    }

    static func removexattr(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ name: UnsafePointer<CChar>?) {
        let fs = fs(req)
        do throws(Errno) {
            try fs.store.removexattr(fs.inode(ino), name!)
            fuse_reply_err(req, 0)
        } catch { reply(req, error: error) }
    }

    // MARK: the table

    static var table: vexfs_handlers {
        var h = vexfs_handlers()
        h.lookup = { Handlers.lookup($0, $1, $2) }
        h.forget = { Handlers.forget($0, $1, $2) }
        h.forget_multi = { Handlers.forgetMulti($0, $1, $2) }
        h.getattr = { Handlers.getattr($0, $1, $2) }
        h.setattr = { Handlers.setattr($0, $1, $2, $3, $4) }
        h.readlink = { Handlers.readlink($0, $1) }
        h.mknod = { Handlers.mknod($0, $1, $2, $3, $4) }
        h.mkdir = { Handlers.mkdir($0, $1, $2, $3) }
        h.unlink = { Handlers.unlink($0, $1, $2) }
        h.rmdir = { Handlers.rmdir($0, $1, $2) }
        h.symlink = { Handlers.symlink($0, $1, $2, $3) }
        h.rename = { Handlers.rename($0, $1, $2, $3, $4, $5) }
        h.link = { Handlers.link($0, $1, $2, $3) }
        h.open = { Handlers.open($0, $1, $2) }
        h.read = { Handlers.read($0, $1, $2, $3, $4) }
        h.write_buf = { Handlers.writeBuf($0, $1, $2, $3, $4) }
        h.flush = { Handlers.flush($0, $1, $2) }
        h.release = { Handlers.release($0, $1, $2) }
        h.fsync = { Handlers.fsync($0, $1, $2, $3) }
        h.opendir = { Handlers.opendir($0, $1, $2) }
        h.readdir = { Handlers.readdir($0, $1, $2, $3, $4, plus: false) }
        h.readdirplus = { Handlers.readdir($0, $1, $2, $3, $4, plus: true) }
        h.releasedir = { Handlers.releasedir($0, $1, $2) }
        h.fsyncdir = { Handlers.fsyncdir($0, $1, $2, $3) }
        h.statfs = { Handlers.statfs($0, $1) }
        h.setxattr = { Handlers.setxattr($0, $1, $2, $3, $4, $5) }
        h.getxattr = { Handlers.getxattr($0, $1, $2, $3) }
        h.listxattr = { Handlers.listxattr($0, $1, $2) }
        h.removexattr = { Handlers.removexattr($0, $1, $2) }
        h.access = { Handlers.access($0, $1, $2) }
        h.create = { Handlers.create($0, $1, $2, $3, $4) }
        h.flock = { Handlers.flock($0, $1, $2, $3) }
        h.fallocate = { Handlers.fallocate($0, $1, $2, $3, $4, $5) }
        h.copy_file_range = { Handlers.copyFileRange($0, $1, $2, $3, $4, $5, $6, $7, $8) }
        h.lseek = { Handlers.lseek($0, $1, $2, $3, $4) }
        h.destroy = { Session.finish($0) }
        return h
    }
}

@inline(__always)
private func isDotOrDotDot(_ name: UnsafePointer<CChar>) -> Bool {
    name[0] == 0x2E && (name[1] == 0 || (name[1] == 0x2E && name[2] == 0))
}
