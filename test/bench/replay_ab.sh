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
# keeps the cluster and its data from an earlier run.  Prints the median over
# BENCH_ROUNDS rounds of pgbench's mean latency over BENCH_CALLS calls in one
# connection (as run.sh measures), and its ratio to reading the same rows.
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
SELECT count(*) FROM (VALUES ('00000000-0000-4000-8000-00000000d001'::uuid), ('00000000-0000-4000-8000-00000000d002'::uuid)) d(id),
    LATERAL es_append('replay', ARRAY(
        SELECT ROW(d.id, v, CASE WHEN v = 1 THEN 'Dog.Registered' ELSE 'Dog.TrickAdded' END,
                   convert_to(CASE WHEN v = 1 THEN '{"name": "Fido"}' ELSE '{"trick": "trick number ' || v || '"}' END, 'UTF8'))::es_event
        FROM generate_series(1, $REPLAY_EVENTS - 100) v));
SELECT es_snapshot('replay', '00000000-0000-4000-8000-00000000d002');
SELECT count(*) FROM (VALUES ('00000000-0000-4000-8000-00000000d001'::uuid), ('00000000-0000-4000-8000-00000000d002'::uuid)) d(id),
    LATERAL es_append('replay', ARRAY(
        SELECT ROW(d.id, v, 'Dog.TrickAdded', convert_to('{"trick": "trick number ' || v || '"}', 'UTF8'))::es_event
        FROM generate_series($REPLAY_EVENTS - 99, $REPLAY_EVENTS) v));
VACUUM ANALYZE es_stored_events;
SQL
fi
cluster_env $NAME
echo "SELECT count(*), sum(octet_length(state)) FROM es_events('replay', '00000000-0000-4000-8000-00000000d001');" >"$WORK/replay_read.sql"
echo "SELECT es_replay('replay', e) IS NOT NULL FROM es_events('replay', '00000000-0000-4000-8000-00000000d001') e;" >"$WORK/replay_declarative.sql"
echo "SELECT es_replay('replay', originator_id, originator_version, topic, state) IS NOT NULL FROM es_events('replay', '00000000-0000-4000-8000-00000000d001');" >"$WORK/replay_columns.sql"
echo "SELECT es_state('replay', '00000000-0000-4000-8000-00000000d001') IS NOT NULL;" >"$WORK/state_full.sql"
echo "SELECT es_state('replay', '00000000-0000-4000-8000-00000000d002') IS NOT NULL;" >"$WORK/state_snapshot.sql"

declare -A LAT
for ((r = 1; r <= ROUNDS; r++)); do
    for b in $BUILDS; do
        use "$b"
        for s in $QUERIES; do
            out=$("$PG_BIN/pgbench" -n -c 1 -t "$CALLS" -f "$WORK/$s.sql" postgres 2>&1) || { echo "$out" >&2; exit 1; }
            lat=$(echo "$out" | sed -n 's/^latency average = \([0-9.]*\) ms/\1/p')
            log "round $r, $b, $s: $lat ms"
            LAT[$b,$s]="${LAT[$b,$s]:-} $lat"
        done
    done
done

median() { echo "$@" | tr ' ' '\n' | awk 'NF' | sort -g | awk '{v[NR] = $1} END {if (NR % 2) printf "%.3f", v[(NR + 1) / 2]; else printf "%.3f", (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
echo "Median of $ROUNDS interleaved rounds of $CALLS calls (pgbench, one connection), one aggregate of $REPLAY_EVENTS events, $(nproc) cores ($(date -u +%Y-%m-%d))."
echo
header="| query |"; rule="| --- |"
for b in $BUILDS; do header="$header $b ms | $b / read |"; rule="$rule ---: | ---: |"; done
for b in $BUILDS; do [ "$b" = base ] || { header="$header $b / base |"; rule="$rule ---: |"; }; done
echo "$header"; echo "$rule"
for s in $QUERIES; do
    line="| $s |"
    for b in $BUILDS; do
        l=$(median ${LAT[$b,$s]}); line="$line $l | $(ratio "$l" "$(median ${LAT[$b,replay_read]})") |"
    done
    for b in $BUILDS; do
        [ "$b" = base ] || line="$line $(ratio "$(median ${LAT[$b,$s]})" "$(median ${LAT[base,$s]})") |"
    done
    echo "$line"
done
