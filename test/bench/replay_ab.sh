#!/bin/bash
# Two builds of the extension's library on run.sh's replay workload,
# interleaved in one run (the machine's other load falls on both alike): this
# checkout, built, against the library file BENCH_BASE_SO (say, a build of
# main).  One cluster, run from ES_PG_BIN's relocated copy of PostgreSQL: the
# copy's eventsourcing.so is swapped and the cluster restarted before each
# build's turn, so both read the very same data files.  (Two clusters with the
# same library differed by more than the builds: how much of its memory a
# backend gets back from malloc without page faults depends on the cluster's
# history.)
#
#   ES_PG_BIN=/tmp/pg-copy/usr/lib/postgresql/15/bin ES_CLUSTER_PORT=54340 \
#   BENCH_BASE_SO=/tmp/base/eventsourcing.so bash test/bench/replay_ab.sh
#
# BENCH_ALT_SO names a third library ("alt") to run alongside; BENCH_REUSE=1
# keeps the cluster and its data from an earlier run.  Each query runs
# BENCH_CALLS times in a new connection (as run.sh's pgbench does); printed
# are the medians over BENCH_ROUNDS rounds of the mean time a call took, of
# the CPU time its backend used (user + system, from /proc: far steadier than
# the elapsed time on a loaded machine) and of its minor page faults (which
# on this kind of virtual machine cost as much as the work), each with its
# ratio to reading the same rows.
source "$(dirname "$0")/../scripts/common.sh"

[ -n "${BENCH_BASE_SO:-}" ] && [ -n "${ES_PG_BIN:-}" ] || { echo "set ES_PG_BIN and BENCH_BASE_SO" >&2; exit 2; }
ROUNDS=${BENCH_ROUNDS:-7}
CALLS=${BENCH_CALLS:-20}
REPLAY_EVENTS=${BENCH_REPLAY_EVENTS:-10000}
BUILDS="base new${BENCH_ALT_SO:+ alt}"
QUERIES="replay_read replay_declarative replay_columns state_full state_snapshot"
NAME=ab

ensure_packages
build_and_install
LIBDIR=$("$PG_BIN/pg_config" --pkglibdir)
WORK=$(mktemp -d); chmod 777 "$WORK"
cp "$LIBDIR/eventsourcing.so" "$WORK/new.so"
cp "$BENCH_BASE_SO" "$WORK/base.so"
[ -z "${BENCH_ALT_SO:-}" ] || cp "$BENCH_ALT_SO" "$WORK/alt.so"
# leaves this checkout's build installed
trap 'cluster_stop $NAME; cp "$WORK/new.so" "$LIBDIR/eventsourcing.so.tmp" && mv "$LIBDIR/eventsourcing.so.tmp" "$LIBDIR/eventsourcing.so"; rm -rf "$WORK"' EXIT
use() {
    cluster_stop $NAME
    cp "$WORK/$1.so" "$LIBDIR/eventsourcing.so.tmp" && mv "$LIBDIR/eventsourcing.so.tmp" "$LIBDIR/eventsourcing.so"
    cluster_start $NAME >/dev/null 2>&1
}

if [ "${BENCH_REUSE:-0}" != 1 ] || [ ! -f "$(cluster_dir $NAME)/data/PG_VERSION" ]; then
    cluster_start $NAME fresh
    as_pg tee -a "$(cluster_dir $NAME)/data/postgresql.conf" >/dev/null <<CONF
listen_addresses = ''
shared_buffers = 256MB
CONF
    cluster_stop $NAME; cluster_start $NAME; cluster_env $NAME
    psql -X -q -v ON_ERROR_STOP=1 -d postgres <<SQL
CREATE EXTENSION eventsourcing;
SELECT es_create_application('replay');
SELECT es_define_fold('replay', 'Dog.Registered', '[{"op": "set", "path": "name", "from": "name"}, {"op": "set", "path": "tricks", "value": []}]');
SELECT es_define_fold('replay', 'Dog.TrickAdded', '[{"op": "append", "path": "tricks", "from": "trick"}]');
$(bench_replay_dogs "$REPLAY_EVENTS")
VACUUM ANALYZE es_stored_events;
SQL
fi
cluster_env $NAME
echo "SELECT count(*), sum(octet_length(state)) FROM es_events('replay', '00000000-0000-4000-8000-00000000d001');" >"$WORK/replay_read.sql"
echo "SELECT es_replay('replay', e) IS NOT NULL FROM es_events('replay', '00000000-0000-4000-8000-00000000d001') e;" >"$WORK/replay_declarative.sql"
echo "SELECT es_replay('replay', originator_id, originator_version, topic, state) IS NOT NULL FROM es_events('replay', '00000000-0000-4000-8000-00000000d001');" >"$WORK/replay_columns.sql"
echo "SELECT es_state('replay', '00000000-0000-4000-8000-00000000d001') IS NOT NULL;" >"$WORK/state_full.sql"
echo "SELECT es_state('replay', '00000000-0000-4000-8000-00000000d002') IS NOT NULL;" >"$WORK/state_snapshot.sql"

# one connection, CALLS calls: "elapsed_ms cpu_ms faults" per call
measure() {
    /usr/bin/python3 - "$PGHOST" "$PGPORT" "$CALLS" "$WORK/$1.sql" <<'PY'
import os, sys, time, psycopg
host, port, calls, path = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
query = open(path).read()
tick = os.sysconf('SC_CLK_TCK')
def usage(pid):
    f = open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()
    return (int(f[11]) + int(f[12])) * 1000 / tick, int(f[7])
with psycopg.connect(host=host, port=port, user='postgres', dbname='postgres', autocommit=True) as c:
    pid = c.execute('SELECT pg_backend_pid()').fetchone()[0]
    c0, f0 = usage(pid); t0 = time.perf_counter()
    for _ in range(calls):
        c.execute(query).fetchall()
    t1 = time.perf_counter(); c1, f1 = usage(pid)
print(f"{(t1 - t0) * 1000 / calls:.3f} {(c1 - c0) / calls:.3f} {(f1 - f0) / calls:.1f}")
PY
}

declare -A LAT CPU FLT
for ((r = 1; r <= ROUNDS; r++)); do
    for b in $BUILDS; do
        use "$b"
        for s in $QUERIES; do
            read -r lat cpu flt < <(measure "$s")
            log "round $r, $b, $s: $lat ms, $cpu ms CPU, $flt page faults a call"
            LAT[$b,$s]="${LAT[$b,$s]:-} $lat"; CPU[$b,$s]="${CPU[$b,$s]:-} $cpu"; FLT[$b,$s]="${FLT[$b,$s]:-} $flt"
        done
    done
done

median() { echo "$@" | tr ' ' '\n' | awk 'NF' | sort -g | awk '{v[NR] = $1} END {if (NR % 2) printf "%.3f", v[(NR + 1) / 2]; else printf "%.3f", (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b == 0) print "-"; else printf "%.2f", a / b}'; }
echo "Medians of $ROUNDS interleaved rounds of $CALLS calls in one connection, one aggregate of $REPLAY_EVENTS events, $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) ($(date -u +%Y-%m-%d))."
for what in LAT:"elapsed ms a call" CPU:"backend CPU ms a call" FLT:"page faults a call"; do
    var=${what%%:*}; declare -n M=$var
    echo
    header="| $var: ${what#*:} |"; rule="| --- |"
    for b in $BUILDS; do header="$header $b | $b / read |"; rule="$rule ---: | ---: |"; done
    for b in $BUILDS; do [ "$b" = base ] || { header="$header $b / base |"; rule="$rule ---: |"; }; done
    echo "$header"; echo "$rule"
    for s in $QUERIES; do
        line="| $s |"
        for b in $BUILDS; do
            l=$(median ${M[$b,$s]}); line="$line $l | $(ratio "$l" "$(median ${M[$b,replay_read]})") |"
        done
        for b in $BUILDS; do
            [ "$b" = base ] || line="$line $(ratio "$(median ${M[$b,$s]})" "$(median ${M[base,$s]})") |"
        done
        echo "$line"
    done
    unset -n M
done
