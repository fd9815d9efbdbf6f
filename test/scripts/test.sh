#!/bin/bash
# make test: installs what is missing, builds and installs the extension, then
# runs the whole suite on a throwaway cluster.  Exits non-zero on any failure.
# Ends with a line "N passed, N failed".
source "$(dirname "$0")/common.sh"

ensure_packages
build_and_install
cluster_start test fresh
cluster_env test
OUT="$(cluster_dir test)/out"
mkdir -p "$OUT"
trap 'cluster_stop test' EXIT

PASSED=0
FAILED=0
FAILURES=()

# Counts pg_regress-style result lines ("... ok", "... FAILED") of a log.
count_regress() {
    local logf=$1 what=$2 ok bad
    ok=$(grep -cE '\.\.\. ok|^ok [0-9]+' "$logf" || true)
    bad=$(grep -cE '\.\.\. FAILED|^not ok [0-9]+' "$logf" || true)
    PASSED=$((PASSED + ok)); FAILED=$((FAILED + bad))
    if [ "$bad" -gt 0 ]; then FAILURES+=("$what"); fi
}

# pg_regress --use-existing neither drops nor creates its database.
fresh_db() { "$PG_BIN/dropdb" --if-exists "$1" && "$PG_BIN/createdb" "$1"; }

# run_regress NAME PROGRAM INPUTDIR DB TESTS...: pg_regress or
# pg_isolation_regress against the test cluster, counted and diffs shown.
run_regress() {
    local name=$1 program=$2 inputdir=$3 db=$4 rc
    shift 4
    log "$name"
    fresh_db "$db"
    set +e
    "$program" --use-existing --bindir="$PG_BIN" --inputdir="$inputdir" \
        --outputdir="$OUT/$name" --dbname="$db" "$@" 2>&1 | tee "$OUT/$name.log"
    rc=${PIPESTATUS[0]}
    set -e
    count_regress "$OUT/$name.log" "$name"
    if [ "$rc" -ne 0 ]; then
        [ -f "$OUT/$name/regression.diffs" ] && head -200 "$OUT/$name/regression.diffs"
        grep -qE 'FAILED' "$OUT/$name.log" || { FAILED=$((FAILED + 1)); FAILURES+=("$name"); }
    fi
}

# sql/*.sql against expected/*.out; test/isolation/specs/*.spec
run_regress pg_regress "$PGXS_DIR/src/test/regress/pg_regress" "$ROOT" es_regress \
    $(cd "$ROOT/sql" && ls *.sql | grep -v -e '^eventsourcing--' -e '^eventsourcing_proxy--' | sed 's/\.sql$//' | sort)
run_regress isolation "$PGXS_DIR/src/test/isolation/pg_isolation_regress" "$ROOT/test/isolation" es_isolation \
    $(cd "$ROOT/test/isolation/specs" && ls *.spec | sed 's/\.spec$//' | sort)

# --- make installcheck: the PGXS wiring of the same suites ---------------------
# (its TAP part needs a user that may run initdb; the TAP tests run below)
log "make installcheck (REGRESS and ISOLATION through PGXS)"
set +e
make -C "$ROOT" -s PG_CONFIG="$PG_BIN/pg_config" installcheck TAP_TESTS= >"$OUT/installcheck.log" 2>&1
rc=$?
set -e
rm -rf "$ROOT/results" "$ROOT/output_iso" "$ROOT/regression.diffs" "$ROOT/regression.out"
suites=$(grep -cE 'All [0-9]+ tests passed' "$OUT/installcheck.log" || true)
if [ "$rc" -eq 0 ] && [ "$suites" -eq 2 ]; then
    echo "ok - make installcheck: pg_regress and isolation suites passed"; PASSED=$((PASSED + 1))
else
    cat "$OUT/installcheck.log"; echo "not ok - make installcheck"; FAILED=$((FAILED + 1)); FAILURES+=(installcheck)
fi

# --- README.md: every sql block runs as printed -------------------------------
log "README.md sql blocks"
set +e
bash "$ROOT/test/scripts/readme_test.sh" >"$OUT/readme.log" 2>&1
rc=$?
set -e
cat "$OUT/readme.log"
ok=$(grep -cE '^ok [0-9]+' "$OUT/readme.log" || true)
bad=$(grep -cE '^not ok [0-9]+' "$OUT/readme.log" || true)
if [ "$rc" -ne 0 ] && [ "$bad" -eq 0 ]; then bad=1; fi
PASSED=$((PASSED + ok)); FAILED=$((FAILED + bad))
[ "$bad" -eq 0 ] || FAILURES+=(readme)

# --- client tests: a real driver (Debian's python3-psycopg) ------------------
for t in "$ROOT"/test/client/test_*.py; do
    [ -e "$t" ] || continue
    name=$(basename "$t" .py)
    log "client test $name"
    set +e
    ES_TEST_DSN="host=$PGHOST port=$PGPORT user=$PGUSER dbname=postgres" \
        /usr/bin/python3 "$t" -v >"$OUT/$name.log" 2>&1
    rc=$?
    set -e
    cat "$OUT/$name.log"
    ok=$(grep -cE ' \.\.\. ok$' "$OUT/$name.log" || true)
    bad=$(grep -cE ' \.\.\. (FAIL|ERROR)$' "$OUT/$name.log" || true)
    if [ "$rc" -ne 0 ] && [ "$bad" -eq 0 ]; then bad=1; fi
    PASSED=$((PASSED + ok)); FAILED=$((FAILED + bad))
    [ "$bad" -eq 0 ] || FAILURES+=("$name")
done

# --- client test: node-postgres (from the npm registry) ------------------------
if [ -f "$ROOT/test/client/node/json_test.mjs" ]; then
    log "client test node-postgres"
    if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
    fi
    set +e
    (cd "$ROOT/test/client/node" && npm install --no-audit --no-fund --no-package-lock --silent) >"$OUT/node.log" 2>&1 &&
        ES_TEST_DSN="postgresql:///postgres?host=$PGHOST&port=$PGPORT&user=$PGUSER" \
        node --test --test-reporter=tap "$ROOT/test/client/node/json_test.mjs" >>"$OUT/node.log" 2>&1
    rc=$?
    set -e
    cat "$OUT/node.log"
    ok=$(grep -cE '^ok [0-9]+' "$OUT/node.log" || true)
    bad=$(grep -cE '^not ok [0-9]+' "$OUT/node.log" || true)
    if [ "$rc" -ne 0 ] && [ "$bad" -eq 0 ]; then bad=1; fi
    PASSED=$((PASSED + ok)); FAILED=$((FAILED + bad))
    [ "$bad" -eq 0 ] || FAILURES+=(node)
fi

# --- client test: pgjdbc (Debian's libpostgresql-jdbc-java), over TCP on 127.0.0.1 ---
if [ -f "$ROOT/test/client/jdbc/JsonTest.java" ]; then
    log "client test JDBC"
    command -v javac >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends default-jdk-headless >/dev/null
    mkdir -p "$OUT/jdbc"
    set +e
    javac -d "$OUT/jdbc" "$ROOT/test/client/jdbc/JsonTest.java" >"$OUT/jdbc.log" 2>&1 &&
        ES_TEST_JDBC_URL="jdbc:postgresql://127.0.0.1:$PGPORT/postgres?user=$PGUSER" \
        java -cp "$OUT/jdbc:/usr/share/java/postgresql.jar" JsonTest >>"$OUT/jdbc.log" 2>&1
    rc=$?
    set -e
    cat "$OUT/jdbc.log"
    ok=$(grep -cE '^ok [0-9]+' "$OUT/jdbc.log" || true)
    bad=$(grep -cE '^not ok [0-9]+' "$OUT/jdbc.log" || true)
    if [ "$rc" -ne 0 ] && [ "$bad" -eq 0 ]; then bad=1; fi
    PASSED=$((PASSED + ok)); FAILED=$((FAILED + bad))
    [ "$bad" -eq 0 ] || FAILURES+=(jdbc)
fi

# --- upgrade test ---
# 0.1.0 (from git history) with data, ALTER EXTENSION UPDATE, compared with a
# fresh install; its own private copy of PostgreSQL and cluster (port 54318).
if [ -f "$ROOT/test/upgrade/upgrade_test.sh" ]; then
    log "upgrade test"
    set +e
    bash "$ROOT/test/upgrade/upgrade_test.sh" >"$OUT/upgrade.log" 2>&1
    rc=$?
    set -e
    cat "$OUT/upgrade.log"
    ok=$(grep -cE '^ok [0-9]+' "$OUT/upgrade.log" || true)
    bad=$(grep -cE '^not ok [0-9]+' "$OUT/upgrade.log" || true)
    if [ "$rc" -ne 0 ] && [ "$bad" -eq 0 ]; then bad=1; fi
    PASSED=$((PASSED + ok)); FAILED=$((FAILED + bad))
    [ "$bad" -eq 0 ] || FAILURES+=(upgrade)
fi
# --- end of upgrade test ---

# --- TAP tests: their own clusters (stress, standby, crash) -------------------
if ls "$ROOT"/test/t/*.pl >/dev/null 2>&1; then
    log "TAP tests"
    cluster_stop test
    TAPDIR="$OUT/tap"
    rm -rf "$TAPDIR"; mkdir -p "$TAPDIR"; chown "$PG_USER" "$TAPDIR"
    set +e
    as_pg env -C "$TAPDIR" PATH="$PG_BIN:$PATH" PG_REGRESS="$PGXS_DIR/src/test/regress/pg_regress" \
        ES_ROOT="$ROOT" \
        prove -v -I "$PGXS_DIR/src/test/perl" -I "$ROOT/test/t" "$ROOT"/test/t/*.pl 2>&1 | tee "$OUT/tap.log"
    rc=${PIPESTATUS[0]}
    set -e
    ok=$(grep -cE '^ok [0-9]+' "$OUT/tap.log" || true)
    bad=$(grep -cE '^not ok [0-9]+' "$OUT/tap.log" || true)
    if [ "$rc" -ne 0 ] && [ "$bad" -eq 0 ]; then bad=1; fi
    PASSED=$((PASSED + ok)); FAILED=$((FAILED + bad))
    [ "$bad" -eq 0 ] || FAILURES+=(tap)
fi

echo
[ ${#FAILURES[@]} -eq 0 ] || echo "failed: ${FAILURES[*]}"
echo "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
