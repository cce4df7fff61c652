// SQLite's C API (Debian's libsqlite3, built with FTS5) for VexKeyword: the keyword index and the
// embedding cache. Nothing of vexfs lives here.
#include <sqlite3.h>
