#!/bin/bash
# Runs pg_regress, the isolation specs and the Python client test against a
# server running under valgrind, and reports any valgrind error whose stack
# goes through the extension (PostgreSQL's own known false positives, such as
# uninitialised padding in WAL writes, are not counted).  Not part of make
# test: it takes a few minutes.   bash test/scripts/valgrind.sh
source "$(dirname "$0")/common.sh"

ensure_packages
command -v valgrind >/dev/null || { apt-get install -y -qq valgrind >/dev/null; }
build_and_install
D=$(mktemp -d /tmp/es-valgrind.XXXXXX)
chmod 755 "$D"; mkdir -p "$D/vg" "$D/sock"; chown -R "$PG_USER" "$D"
as_pg "$PG_BIN/initdb" -D "$D/data" -U "$PG_USER" --auth=trust >/dev/null
as_pg sh -c "umask 077; od -An -tx1 -N32 /dev/urandom | tr -d ' \\n' > '$D/master.key'"
as_pg tee -a "$D/data/postgresql.conf" >/dev/null <<CONF
shared_preload_libraries = 'eventsourcing'
eventsourcing.key_command = 'cat $D/master.key'
port = 54319
listen_addresses = ''
unix_socket_directories = '$D/sock'
max_prepared_transactions = 10
CONF
as_pg valgrind --quiet --trace-children=yes --error-limit=no --log-file="$D/vg/%p.log" \
    "$PG_BIN/postgres" -D "$D/data" >"$D/server.log" 2>&1 &
for _ in $(seq 1 180); do "$PG_BIN/pg_isready" -q -h "$D/sock" -p 54319 && break; sleep 1; done
export PGHOST="$D/sock" PGPORT=54319 PGUSER="$PG_USER"
trap 'as_pg "$PG_BIN/pg_ctl" -D "$D/data" -m fast stop >/dev/null 2>&1 || true' EXIT

"$PG_BIN/createdb" es_regress
"$PG_BIN/createdb" es_isolation
set +e
"$PGXS_DIR/src/test/regress/pg_regress" --use-existing --bindir="$PG_BIN" --inputdir="$ROOT" \
    --outputdir="$D/regress" --dbname=es_regress \
    $(cd "$ROOT/sql" && ls *.sql | grep -v -e '^eventsourcing--' -e '^eventsourcing_proxy--' | sed 's/\.sql$//')
"$PGXS_DIR/src/test/isolation/pg_isolation_regress" --use-existing --bindir="$PG_BIN" \
    --inputdir="$ROOT/test/isolation" --outputdir="$D/isolation" --dbname=es_isolation \
    $(cd "$ROOT/test/isolation/specs" && ls *.spec | sed 's/\.spec$//')
ES_TEST_DSN="host=$PGHOST port=$PGPORT user=$PGUSER dbname=postgres" /usr/bin/python3 "$ROOT/test/client/test_dogschool.py"
set -e

# an error is a block of lines in a log; count those that mention our code
ours=$(awk 'FNR == 1 {blk = ""} /^==[0-9]+== [A-Z]/ {if (blk ~ /eventsourcing\.so/) n++; blk = ""} {blk = blk "\n" $0} END {if (blk ~ /eventsourcing\.so/) n++; print n + 0}' "$D"/vg/*.log)
echo "valgrind errors through eventsourcing.so: $ours (logs in $D/vg)"
[ "$ours" -eq 0 ]
