#!/bin/bash
# Upgrade test: an installed 0.1.0 with data, upgraded with ALTER EXTENSION
# eventsourcing UPDATE, keeps its data and behaves like, and has the same
# catalog as, a fresh CREATE EXTENSION of the new version.
#
#   bash test/upgrade/upgrade_test.sh        (as root; make test runs it too)
#
# Never touches the system installation: it runs a private copy of PostgreSQL
# (bin, lib, share) in a temporary directory, whose $libdir and sharedir are
# found relative to its binaries, and installs both versions of the extension
# there only.  0.1.0 is built from git history (commit $ES_UPGRADE_OLD_REV,
# default 5d1186f); the new version from the working tree (the files git
# tracks or would track, copied to the temporary directory and built there).
#
# Prints one line per check, "ok N - ..." or "not ok N - ...", diagnostics
# prefixed with "# ", and exits non-zero if any check failed.
# Environment: ES_UPGRADE_PORT (54318), ES_UPGRADE_OLD_REV (5d1186f),
# ES_UPGRADE_NEW_SRC (the checkout), ES_UPGRADE_KEEP=1 keeps the temp dir.
source "$(dirname "$0")/../scripts/common.sh"
set +e              # every step is checked explicitly
set -uo pipefail
unset PGHOST PGPORT PGDATABASE PGOPTIONS PGSERVICE

HERE="$(cd "$(dirname "$0")" && pwd)"
OLD_REV=${ES_UPGRADE_OLD_REV:-5d1186f}
OLD_VERSION=0.1.0
NEW_SRC=${ES_UPGRADE_NEW_SRC:-$ROOT}
PORT=${ES_UPGRADE_PORT:-54318}
SYS_LIB=/usr/lib/postgresql/$PG_MAJOR
SYS_SHARE=/usr/share/postgresql/$PG_MAJOR

TMP=$(mktemp -d /tmp/es-upgrade.XXXXXX) || { echo "not ok 1 - mktemp"; exit 1; }
chmod 755 "$TMP"
cd "$TMP" || exit 1
CP_LIB=$TMP/usr/lib/postgresql/$PG_MAJOR        # the private copy
CP_BIN=$CP_LIB/bin
CP_SHARE=$TMP/usr/share/postgresql/$PG_MAJOR
CLUSTER=$TMP/cluster
DATA=$CLUSTER/data
SOCK=$CLUSTER/socket
SLOG=$CLUSTER/server.log
OUTD=$TMP/out
mkdir -p "$OUTD"

N=0
FAILS=0
ok()     { N=$((N + 1)); echo "ok $N - $1"; }
not_ok() { N=$((N + 1)); FAILS=$((FAILS + 1)); echo "not ok $N - $1"; }
diag()   { sed 's/^/# /'; }
# check DESCRIPTION COMMAND...: ok if the command succeeds
check()  { local d=$1; shift; if "$@"; then ok "$d"; else not_ok "$d"; fi; }
# bail DESCRIPTION [LOGFILE]: a step later steps depend on failed
bail() {
    not_ok "$1"
    [ -n "${2:-}" ] && [ -f "$2" ] && tail -40 "$2" | diag
    echo "# stopping here: the remaining steps depend on this one"
    exit 1
}
# same_output DESCRIPTION FILE1 FILE2: ok if identical, else the diff
same_output() {
    if diff -u "$2" "$3" >"$OUTD/diff.tmp" 2>&1; then ok "$1"
    else not_ok "$1"; echo "# diff -u $(basename "$2") $(basename "$3"):"; head -150 "$OUTD/diff.tmp" | diag; fi
}

server_running() { [ -f "$DATA/postmaster.pid" ] && as_pg "$CP_BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; }
server_start() { as_pg "$CP_BIN/pg_ctl" -D "$DATA" -l "$SLOG" -w -t 60 start >/dev/null 2>&1; }
server_stop() { as_pg "$CP_BIN/pg_ctl" -D "$DATA" -m fast -w -t 60 stop >/dev/null 2>&1; }
postmaster_pid() { head -1 "$DATA/postmaster.pid" 2>/dev/null; }
# psql DB [ARGS...]: the copy's psql on the private cluster, stopping at errors
psql_db() { local db=$1; shift; as_pg "$CP_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$SOCK" -p "$PORT" -d "$db" "$@"; }
# run_sql DB FILE OUT [ARGS...]: runs a file of test/upgrade (read by this
# shell: the postgres user need not reach the checkout), output to OUT
run_sql() { local db=$1 file=$2 out=$3; shift 3; psql_db "$db" "$@" -f - <"$file" >"$out" 2>"$out.err"; }
# run_sql_check DESCRIPTION DB FILE OUT [ARGS...]
run_sql_check() {
    local d=$1; shift
    if run_sql "$@"; then ok "$d"; else not_ok "$d"; diag <"$3.err"; fi
}

cleanup() {
    local rc=$?
    if server_running; then
        server_stop || as_pg "$CP_BIN/pg_ctl" -D "$DATA" -m immediate -w stop >/dev/null 2>&1
    fi
    if [ "$rc" -ne 0 ] && [ -f "$SLOG" ]; then
        echo "# last lines of the server log:"; tail -30 "$SLOG" | diag
    fi
    if [ "${ES_UPGRADE_KEEP:-}" = 1 ]; then
        echo "# kept $TMP"
    else
        cd / && case $TMP in /tmp/es-upgrade.*) rm -rf "$TMP" ;; esac
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Where the library of a running backend comes from: "inode path" lines.
loaded_library() {
    psql_db "$1" -At -c "SELECT line FROM regexp_split_to_table(pg_read_file('/proc/' || pg_backend_pid() || '/maps'), E'\n') line WHERE line LIKE '%eventsourcing%'" \
        | awk '{print $5, $6}' | sort -u
}
# check_loaded DESCRIPTION: the backend maps the copy's eventsourcing.so (that
# very file: same inode) and nothing else called eventsourcing
check_loaded() {
    local maps want
    maps=$(loaded_library postgres)
    want="$(stat -c %i "$CP_LIB/lib/eventsourcing.so") $CP_LIB/lib/eventsourcing.so"
    if [ "$maps" = "$want" ]; then ok "$1"
    else not_ok "$1"; { echo "expected: $want"; echo "mapped:"; echo "${maps:-(nothing)}"; } | diag; fi
}

echo "# upgrade test: $OLD_VERSION (git $OLD_REV) -> the working tree ($NEW_SRC), private copy in $TMP"

# --- 1. a private, relocatable copy of the PostgreSQL installation ----------
mkdir -p "$TMP/usr/lib/postgresql" "$TMP/usr/share/postgresql"
cp -a "$SYS_LIB" "$TMP/usr/lib/postgresql/" && cp -a "$SYS_SHARE" "$TMP/usr/share/postgresql/" \
    || bail "copy $SYS_LIB and $SYS_SHARE"
# Symbolic links that point into the system installation are made to point
# into the copy (Debian's only one, bin/postmaster -> postgres, is relative).
while IFS= read -r -d '' link; do
    target=$(readlink "$link")
    case $target in
        "$SYS_LIB"/* | "$SYS_SHARE"/*) ln -sfn "$TMP$target" "$link"; echo "# relinked $link -> $TMP$target" ;;
    esac
done < <(find "$TMP/usr" -type l -print0)
escaping=$(find "$TMP/usr" -type l -exec readlink -f {} \; | grep -E "^($SYS_LIB|$SYS_SHARE)(/|$)")
check "no symbolic link of the copy resolves into the system installation" test -z "$escaping"
# Whatever eventsourcing the system has installed is not part of the copy.
removed=$(cd "$TMP" && ls -d usr/lib/postgresql/$PG_MAJOR/lib/eventsourcing.so \
    usr/lib/postgresql/$PG_MAJOR/lib/bitcode/eventsourcing usr/lib/postgresql/$PG_MAJOR/lib/bitcode/eventsourcing.index.bc \
    usr/share/postgresql/$PG_MAJOR/extension/eventsourcing.control usr/share/postgresql/$PG_MAJOR/extension/eventsourcing--*.sql 2>/dev/null)
[ -n "$removed" ] && { echo "# removed from the copy (the system's installed eventsourcing):"; echo "$removed" | diag; }
(cd "$TMP" && rm -rf $removed)
cfg=$("$CP_BIN/pg_config" --bindir --pkglibdir --sharedir 2>&1)
want=$(printf '%s\n%s\n%s' "$CP_BIN" "$CP_LIB/lib" "$CP_SHARE")
if [ "$cfg" = "$want" ]; then ok "the copy's pg_config places bindir, \$libdir and sharedir in the copy"
else not_ok "the copy's pg_config places bindir, \$libdir and sharedir in the copy"; echo "$cfg" | diag; exit 1; fi

# --- 2. 0.1.0 from git history, installed into the copy ---------------------
mkdir -p "$TMP/old"
if ! git -C "$ROOT" archive "$OLD_REV" 2>"$OUTD/git.err" | tar -x -C "$TMP/old" 2>>"$OUTD/git.err"; then
    bail "git archive $OLD_REV (needs the repository's history)" "$OUTD/git.err"
fi
make -C "$TMP/old" -s -j2 PG_CONFIG="$SYS_PG_CONFIG" all >"$OUTD/build-old.log" 2>&1 \
    || bail "build $OLD_VERSION (git $OLD_REV)" "$OUTD/build-old.log"
make -C "$TMP/old" -s PG_CONFIG="$CP_BIN/pg_config" install >>"$OUTD/build-old.log" 2>&1 \
    || bail "install $OLD_VERSION into the copy" "$OUTD/build-old.log"
if cmp -s "$TMP/old/eventsourcing.so" "$CP_LIB/lib/eventsourcing.so" \
   && [ -f "$CP_SHARE/extension/eventsourcing--$OLD_VERSION.sql" ] \
   && grep -q "^default_version = '$OLD_VERSION'" "$CP_SHARE/extension/eventsourcing.control"; then
    ok "$OLD_VERSION built from git $OLD_REV and installed into the copy only"
else
    bail "$OLD_VERSION built from git $OLD_REV and installed into the copy only"
fi

# --- 3. a cluster run by the copy; 0.1.0 with data --------------------------
mkdir -p "$CLUSTER" && chown "$PG_USER" "$CLUSTER" && chmod 700 "$CLUSTER"
as_pg mkdir -p "$SOCK"
as_pg "$CP_BIN/initdb" -D "$DATA" -U "$PG_USER" --auth=trust -E UTF8 --locale=C.UTF-8 >"$OUTD/initdb.log" 2>&1 \
    || bail "initdb with the copy" "$OUTD/initdb.log"
as_pg tee -a "$DATA/postgresql.conf" >/dev/null <<CONF
# eventsourcing upgrade test
port = $PORT
listen_addresses = ''
unix_socket_directories = '$SOCK'
shared_preload_libraries = 'eventsourcing'
max_prepared_transactions = 10
logging_collector = off
CONF
server_start || bail "start the cluster with the copy's binaries (port $PORT)" "$SLOG"
ok "cluster initialized and started with the copy's binaries (port $PORT, socket in $SOCK)"
srv=$(psql_db postgres -At -c "SELECT setting FROM pg_config WHERE name IN ('BINDIR', 'PKGLIBDIR', 'SHAREDIR') ORDER BY name")
check "the server finds its binaries, \$libdir and sharedir in the copy" test "$srv" = "$want"
check_loaded "the server loaded the copy's $OLD_VERSION eventsourcing.so (not the system's)"

psql_db postgres -c "CREATE DATABASE upgraded" >/dev/null 2>"$OUTD/create.err" \
    && psql_db upgraded -c "CREATE EXTENSION eventsourcing VERSION '$OLD_VERSION'" >/dev/null 2>>"$OUTD/create.err" \
    || bail "CREATE EXTENSION eventsourcing VERSION '$OLD_VERSION' in database upgraded" "$OUTD/create.err"
v=$(psql_db upgraded -At -c "SELECT extversion FROM pg_extension WHERE extname = 'eventsourcing'")
check "CREATE EXTENSION eventsourcing VERSION '$OLD_VERSION' (installed: $v)" test "$v" = "$OLD_VERSION"
run_sql upgraded "$HERE/data.sql" "$OUTD/data.upgraded" \
    || bail "data recorded with the $OLD_VERSION API (test/upgrade/data.sql)" "$OUTD/data.upgraded.err"
ok "data recorded with the $OLD_VERSION API: 2 applications, 5 aggregates, every es_append form, 2 gaps, folds, snapshots, seals"
run_sql upgraded "$HERE/state.sql" "$OUTD/state.before" -v times=on \
    || bail "saved what $OLD_VERSION returns (test/upgrade/state.sql)" "$OUTD/state.before.err"
ok "saved what $OLD_VERSION returns: log, heads, events, states, seals, tracking positions ($(wc -l <"$OUTD/state.before") lines)"
server_stop || bail "stop the cluster" "$SLOG"

# --- 4. the new version from the working tree, installed over the old one ---
mkdir -p "$TMP/new"
if git -C "$NEW_SRC" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    # tracked and untracked-but-not-ignored files (not .git, .cluster, builds)
    git -C "$NEW_SRC" ls-files -z --cached --others --exclude-standard \
        | while IFS= read -r -d '' f; do [ -e "$NEW_SRC/$f" ] && printf '%s\0' "$f"; done \
        | tar -C "$NEW_SRC" --null -T - -cf - | tar -C "$TMP/new" -xf -
else
    tar -C "$NEW_SRC" --exclude=./.git --exclude=./.cluster --exclude='*.o' --exclude='*.so' \
        --exclude='*.bc' -cf - . | tar -C "$TMP/new" -xf -
fi
[ -f "$TMP/new/Makefile" ] && [ -f "$TMP/new/eventsourcing.control" ] || bail "copy the working tree $NEW_SRC"
NEW_VERSION=$(sed -n "s/^[[:space:]]*default_version[[:space:]]*=[[:space:]]*'\([^']*\)'.*/\1/p" "$TMP/new/eventsourcing.control")
echo "# new default_version: ${NEW_VERSION:-(none)}; scripts: $(cd "$TMP/new/sql" && ls eventsourcing--*.sql | tr '\n' ' ')"
check "the working tree's default_version ($NEW_VERSION) is not $OLD_VERSION" test -n "$NEW_VERSION" -a "$NEW_VERSION" != "$OLD_VERSION"
check "the working tree has the upgrade script sql/eventsourcing--$OLD_VERSION--$NEW_VERSION.sql" \
    test -f "$TMP/new/sql/eventsourcing--$OLD_VERSION--$NEW_VERSION.sql"
make -C "$TMP/new" -s -j2 PG_CONFIG="$SYS_PG_CONFIG" all >"$OUTD/build-new.log" 2>&1 \
    || bail "build the working tree (a copy in $TMP/new)" "$OUTD/build-new.log"
make -C "$TMP/new" -s PG_CONFIG="$CP_BIN/pg_config" install >>"$OUTD/build-new.log" 2>&1 \
    || bail "install the working tree's build into the copy" "$OUTD/build-new.log"
missing=""
for f in "$TMP/new/eventsourcing.control" "$TMP/new"/sql/eventsourcing--*.sql; do
    cmp -s "$f" "$CP_SHARE/extension/$(basename "$f")" || missing="$missing $(basename "$f")"
done
if [ -z "$missing" ]; then ok "make install installs the control file and every sql/eventsourcing--*.sql"
else
    not_ok "make install installs the control file and every sql/eventsourcing--*.sql (Makefile DATA)"
    echo "# not installed by make install:$missing (copied by hand to go on)"
    cp "$TMP/new/eventsourcing.control" "$TMP/new"/sql/eventsourcing--*.sql "$CP_SHARE/extension/"
fi
check "the new eventsourcing.so replaced $OLD_VERSION's in the copy" cmp -s "$TMP/new/eventsourcing.so" "$CP_LIB/lib/eventsourcing.so"

# --- 5. restart on the new binaries, ALTER EXTENSION ... UPDATE -------------
server_start || bail "start the cluster on the new binaries" "$SLOG"
PM_PID=$(postmaster_pid)
ok "cluster restarted on the new binaries"
check_loaded "the server loaded the new eventsourcing.so from the copy"
path=$(psql_db upgraded -At -c "SELECT path FROM pg_extension_update_paths('eventsourcing') WHERE source = '$OLD_VERSION' AND target = '$NEW_VERSION'")
check "an update path $OLD_VERSION -> $NEW_VERSION exists (${path:-none})" test -n "$path"

# One API call before the UPDATE: either it works or it refuses with 55000
# (the new library asking for ALTER EXTENSION ... UPDATE), never anything
# else; then, in the same session, the UPDATE and a call that must work.
as_pg "$CP_BIN/psql" -X -q -h "$SOCK" -p "$PORT" -d upgraded -At >"$OUTD/update.out" 2>"$OUTD/update.err" <<SQL
\set VERBOSITY verbose
SELECT count(*) FROM es_select('shop', 1, 100000);
\echo PRE :SQLSTATE
ALTER EXTENSION eventsourcing UPDATE;
\echo UPDATE :SQLSTATE
SELECT es_max_notification_id('shop');
\echo POST :SQLSTATE
SQL
pre=$(sed -n 's/^PRE //p' "$OUTD/update.out")
upd=$(sed -n 's/^UPDATE //p' "$OUTD/update.out")
post=$(sed -n 's/^POST //p' "$OUTD/update.out")
echo "# before the UPDATE, es_select: SQLSTATE ${pre:-(none: the session was lost)}"
[ "$pre" = 00000 ] || grep -E 'ERROR|HINT|DETAIL' "$OUTD/update.err" | head -4 | diag
case $pre in
    00000 | 55000) ok "an API call between the restart and the UPDATE succeeds or refuses with 55000 ($pre)" ;;
    *) not_ok "an API call between the restart and the UPDATE succeeds or refuses with 55000 (got ${pre:-no answer})"; diag <"$OUTD/update.err" ;;
esac
sleep 0.2
if server_running && [ "$(postmaster_pid)" = "$PM_PID" ] && psql_db postgres -At -c "SELECT 1" >/dev/null 2>&1 \
   && ! grep -qE 'terminated by signal|was terminated by exception|PANIC|TRAP:' "$SLOG"; then
    ok "the server is still up, no backend crashed"
else
    not_ok "the server is still up, no backend crashed"; grep -E 'terminated|PANIC|TRAP|FATAL' "$SLOG" | tail -10 | diag
fi
if [ "$upd" != 00000 ]; then
    echo "# UPDATE in that session: ${upd:-not run}; running it in a new session"
    psql_db upgraded -c "ALTER EXTENSION eventsourcing UPDATE" >/dev/null 2>>"$OUTD/update.err"
    upd=$?
    [ "$upd" = 0 ] && upd=00000
fi
if [ "$upd" = 00000 ]; then ok "ALTER EXTENSION eventsourcing UPDATE"
else not_ok "ALTER EXTENSION eventsourcing UPDATE"; diag <"$OUTD/update.err"; fi
v=$(psql_db upgraded -At -c "SELECT extversion FROM pg_extension WHERE extname = 'eventsourcing'")
check "extversion is now the control file's default_version ($v = $NEW_VERSION)" test "$v" = "$NEW_VERSION"
check "the API works in the session that ran the UPDATE (SQLSTATE ${post:-none})" test "$post" = 00000

# --- 6. the data, the behaviour, the catalog ---------------------------------
run_sql_check "state.sql after the upgrade runs" upgraded "$HERE/state.sql" "$OUTD/state.after" -v times=on
same_output "after the upgrade the API returns exactly what $OLD_VERSION returned (ids, versions, hashes, heads, states, seals, positions, timestamps)" \
    "$OUTD/state.before" "$OUTD/state.after"

# a fresh install of the new version, the same data recorded through the same calls
psql_db postgres -c "CREATE DATABASE fresh" >/dev/null 2>"$OUTD/fresh.err" \
    && psql_db fresh -c "CREATE EXTENSION eventsourcing" >/dev/null 2>>"$OUTD/fresh.err" \
    || bail "CREATE EXTENSION eventsourcing (default version) in database fresh" "$OUTD/fresh.err"
v=$(psql_db fresh -At -c "SELECT extversion FROM pg_extension WHERE extname = 'eventsourcing'")
check "fresh CREATE EXTENSION installs the default version ($v)" test "$v" = "$NEW_VERSION"
run_sql_check "data.sql runs on the fresh install" fresh "$HERE/data.sql" "$OUTD/data.fresh"
same_output "the $OLD_VERSION API calls of data.sql return the same on a fresh $NEW_VERSION as on $OLD_VERSION" \
    "$OUTD/data.upgraded" "$OUTD/data.fresh"
run_sql_check "state.sql (no timestamps) runs on the upgraded database" upgraded "$HERE/state.sql" "$OUTD/state.upgraded" -v times=off
run_sql_check "state.sql (no timestamps) runs on the fresh database" fresh "$HERE/state.sql" "$OUTD/state.fresh" -v times=off
same_output "the upgraded and the fresh database read the same (timestamps aside)" "$OUTD/state.upgraded" "$OUTD/state.fresh"

# every function after the upgrade (test/upgrade/after.sql)
run_sql_check "after.sql runs on the upgraded database" upgraded "$HERE/after.sql" "$OUTD/after.upgraded"
while IFS='|' read -r _ desc result; do
    case $result in t | true) ok "after the upgrade: $desc" ;; *) not_ok "after the upgrade: $desc ($result)" ;; esac
done < <(grep '^CHECK|' "$OUTD/after.upgraded")
check "after.sql made all its checks ($(grep -c '^CHECK|' "$OUTD/after.upgraded") of $(grep -c "^SELECT 'CHECK|" "$HERE/after.sql"))" \
    test "$(grep -c '^CHECK|' "$OUTD/after.upgraded")" -eq "$(grep -c "^SELECT 'CHECK|" "$HERE/after.sql")"
run_sql_check "after.sql runs on the fresh database" fresh "$HERE/after.sql" "$OUTD/after.fresh"
same_output "after.sql gives the same output on the upgraded and the fresh database" "$OUTD/after.upgraded" "$OUTD/after.fresh"
run_sql upgraded "$HERE/state.sql" "$OUTD/state2.upgraded" -v times=off
run_sql fresh "$HERE/state.sql" "$OUTD/state2.fresh" -v times=off
same_output "after the new appends, the upgraded and the fresh database read the same" "$OUTD/state2.upgraded" "$OUTD/state2.fresh"

# the catalog
run_sql_check "catalog.sql runs on the upgraded database" upgraded "$HERE/catalog.sql" "$OUTD/catalog.upgraded"
run_sql_check "catalog.sql runs on the fresh database" fresh "$HERE/catalog.sql" "$OUTD/catalog.fresh"
echo "# catalog: $(wc -l <"$OUTD/catalog.fresh") lines for $(grep -c ' | member | ' "$OUTD/catalog.fresh") objects of the fresh extension"
same_output "the upgraded extension's catalog equals a fresh CREATE EXTENSION's (test/upgrade/catalog.sql)" \
    "$OUTD/catalog.upgraded" "$OUTD/catalog.fresh"

# --- 7. the server ------------------------------------------------------------
if grep -qE 'terminated by signal|was terminated by exception|PANIC|TRAP:' "$SLOG"; then
    not_ok "no backend crashed during the test"; grep -E 'terminated|PANIC|TRAP' "$SLOG" | diag
else
    ok "no backend crashed during the test"
fi
check "the cluster stops cleanly" server_stop

echo "# $N checks, $FAILS failed"
[ "$FAILS" -eq 0 ]
