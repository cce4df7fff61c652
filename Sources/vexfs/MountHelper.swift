// How mount(8) starts a filesystem it does not know: `mount -t fuse.vexfs STORE MNT -o OPTS` (and an
// fstab line of type fuse.vexfs) runs mount.fuse3, which runs `vexfs STORE MNT -o OPTS`; type vexfs
// runs the helper `mount.vexfs STORE MNT [-sfnv] [-o OPTS]` (our binary under that name, as rclone
// and JuiceFS do it). Both become `vexfs mount STORE MNT -o OPTS` here, before the parser sees them.
import Glibc

enum MountHelper {
    /// The arguments `vexfs` should parse: `arguments` (argv without argv[0]) as given, or rewritten
    /// to a `mount` command when called as a mount helper. Nil: a mount(8) "fake" run (-f), which
    /// must do nothing and succeed.
    static func arguments(program: String, _ arguments: [String], subcommands: Set<String>) -> [String]? {
        let name = program.split(separator: "/").last.map(String.init) ?? program
        if name == "mount.vexfs" || name == "mount.fuse.vexfs" { return helperArguments(arguments) }
        // mount.fuse3's convention: the first argument is the store, not a command.
        if let first = arguments.first, !first.hasPrefix("-"), !subcommands.contains(first), arguments.count >= 2, isDirectory(first) {
            return ["mount"] + arguments
        }
        return arguments
    }

    /// mount(8)'s helper interface: `SOURCE DIR [-s] [-f] [-n] [-v] [-o OPTS] [-t TYPE] [-N NS]`.
    /// -s (sloppy), -n (no mtab) and -v are nothing to us; -f (fake) means do nothing.
    private static func helperArguments(_ arguments: [String]) -> [String]? {
        var positional: [String] = [], options: [String] = [], i = 0
        while i < arguments.count {
            let a = arguments[i]
            switch a {
            case "-o": if i + 1 < arguments.count { options.append(arguments[i + 1]); i += 1 }
            case "-t", "-N": i += 1
            case "-f": return nil
            case _ where a.hasPrefix("-o") && a.count > 2: options.append(String(a.dropFirst(2)))
            case _ where a.hasPrefix("-") && a.count > 1: break  // -s, -n, -v, or several of them together
            default: positional.append(a)
            }
            i += 1
        }
        // mount -o remount,... reaches the helper too, for a mount that is there already: the
        // kernel changes it (ro, rw, and the other mount flags), no second daemon starts.
        if options.contains(where: { $0.split(separator: ",").contains("remount") }), let dir = positional.last {
            remount(dir, options: options.joined(separator: ","))
        }
        return ["mount"] + positional + options.flatMap { ["-o", $0] }
    }

    /// `mount -i -o OPTIONS DIR`: mount(8) itself, told not to call a helper again.
    private static func remount(_ dir: String, options: String) -> Never {
        let words: [String] = ["mount", "-i", "-o", options, dir]
        var argv: [UnsafeMutablePointer<CChar>?] = words.map { strdup($0) } + [nil]
        execv("/bin/mount", &argv)
        perror("vexfs: /bin/mount")
        exit(1)
    }

    private static func isDirectory(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && st.st_mode & S_IFMT == S_IFDIR
    }
}
