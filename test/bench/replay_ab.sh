#!/bin/bash
# Two builds of the extension on run.sh's replay workload, interleaved in one
# run (the machine's other load falls on both alike): this checkout, built and
# installed into ES_PG_BIN's copy of PostgreSQL, against whatever build is
# installed in BENCH_BASE_BIN (another relocated copy).  Two clusters, one per
# copy, on Unix sockets only, so both may use ES_CLUSTER_PORT.
#
#   ES_PG_BIN=/tmp/pg-new/usr/lib/postgresql/15/bin ES_CLUSTER_PORT=54340 \
#   BENCH_BASE_BIN=/tmp/pg-base/usr/lib/postgresql/15/bin bash test/bench/replay_ab.sh
#
# Prints the median latency of each query per build over BENCH_ROUNDS rounds
# (BENCH_CALLS calls a round; each query runs on both builds back to back) and
# its ratio to reading the same rows on that build.  BENCH_REUSE=1 keeps the
# clusters and their data between runs (only the new build is reinstalled and
# its cluster restarted); BENCH_KEEP=1 leaves them running (for perf).
source "$(dirname "$0")/../scripts/common.sh"

[ -n "${BENCH_BASE_BIN:-}" ] && [ -n "${ES_PG_BIN:-}" ] || { echo "set ES_PG_BIN and BENCH_BASE_BIN" >&2; exit 2; }
ROUNDS=${BENCH_ROUNDS:-7}
CALLS=${BENCH_CALLS:-10}
REPLAY_EVENTS=${BENCH_REPLAY_EVENTS:-10000}
NEW_BIN=$ES_PG_BIN
BUILDS="base new"
QUERIES="replay_read replay_declarative replay_columns state_full state_snapshot"

ensure_packages
build_and_install
bin_of() { if [ "$1" = base ]; then echo "$BENCH_BASE_BIN"; else echo "$NEW_BIN"; fi; }
# common.sh's cluster functions run PG_BIN's copy
on() { PG_BIN=$(bin_of "$1"); cluster_env "ab-$1"; }
cleanup() { for b in $BUILDS; do PG_BIN=$(bin_of "$b"); cluster_stop "ab-$b" || true; done; }
[ "${BENCH_KEEP:-0}" = 1 ] || trap cleanup EXIT

WORK=$(mktemp -d); chmod 777 "$WORK"
for b in $BUILDS; do
    PG_BIN=$(bin_of "$b")
    if [ "${BENCH_REUSE:-0}" = 1 ] && [ -f "$(cluster_dir "ab-$b")/data/PG_VERSION" ]; then
        cluster_start "ab-$b"
        continue
    fi
    cluster_start "ab-$b" fresh
    as_pg tee -a "$(cluster_dir "ab-$b")/data/postgresql.conf" >/dev/null <<CONF
listen_addresses = ''
shared_buffers = 256MB
CONF
    cluster_stop "ab-$b"; cluster_start "ab-$b"
    on "$b"
    "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -d postgres <<SQL
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
done
echo "SELECT count(*), sum(octet_length(state)) FROM es_events('replay', '00000000-0000-4000-8000-00000000d001');" >"$WORK/replay_read.sql"
echo "SELECT es_replay('replay', e) IS NOT NULL FROM es_events('replay', '00000000-0000-4000-8000-00000000d001') e;" >"$WORK/replay_declarative.sql"
echo "SELECT es_replay('replay', originator_id, originator_version, topic, state) IS NOT NULL FROM es_events('replay', '00000000-0000-4000-8000-00000000d001');" >"$WORK/replay_columns.sql"
echo "SELECT es_state('replay', '00000000-0000-4000-8000-00000000d001') IS NOT NULL;" >"$WORK/state_full.sql"
echo "SELECT es_state('replay', '00000000-0000-4000-8000-00000000d002') IS NOT NULL;" >"$WORK/state_snapshot.sql"

declare -A LAT
for ((r = 1; r <= ROUNDS; r++)); do
    for s in $QUERIES; do
        for b in $BUILDS; do
            on "$b"
            out=$("$PG_BIN/pgbench" -n -c 1 -t "$CALLS" -f "$WORK/$s.sql" postgres 2>&1) || { echo "$out" >&2; exit 1; }
            lat=$(echo "$out" | sed -n 's/^latency average = \([0-9.]*\) ms/\1/p')
            log "round $r, $b, $s: $lat ms"
            LAT[$b,$s]="${LAT[$b,$s]:-} $lat"
        done
    done
done

median() { echo "$@" | tr ' ' '\n' | awk 'NF' | sort -g | awk '{v[NR] = $1} END {if (NR % 2) printf "%.3f", v[(NR + 1) / 2]; else printf "%.3f", (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
echo "Median of $ROUNDS interleaved rounds of $CALLS calls, one aggregate of $REPLAY_EVENTS events, $(nproc) cores ($(date -u +%Y-%m-%d))."
echo
echo "| query | base ms | base / read | new ms | new / read | new / base |"
echo "| --- | ---: | ---: | ---: | ---: | ---: |"
for s in $QUERIES; do
    bl=$(median ${LAT[base,$s]}); nl=$(median ${LAT[new,$s]})
    br=$(median ${LAT[base,replay_read]}); nr=$(median ${LAT[new,replay_read]})
    echo "| $s | $bl | $(ratio "$bl" "$br") | $nl | $(ratio "$nl" "$nr") | $(ratio "$nl" "$bl") |"
done
rm -rf "$WORK"
