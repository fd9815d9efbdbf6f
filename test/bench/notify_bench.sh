#!/bin/bash
# The push-and-follow benchmark: what announcing new events costs writers, and
# how soon a follower hears of a commit.  One run, on a throwaway cluster:
#
# 1. es_append throughput (pgbench -M prepared, one event per transaction, a
#    new aggregate each) with eventsourcing.notify off, on, and on with one
#    client LISTENing on the channel; interleaved, BENCH_ROUNDS rounds.
# 2. Latency from a writer's commit acknowledgement to a LISTENing follower's
#    receipt of the announcement covering its id, under a steady background
#    load (pgbench rate-limited, appending to another application).
#
#   bash test/bench/notify_bench.sh    # BENCH_SECONDS=10 BENCH_ROUNDS=2 by default
#
# Prints a markdown table and appends it to test/bench/results/notify.md.
source "$(dirname "$0")/../scripts/common.sh"

SECONDS_PER_RUN=${BENCH_SECONDS:-10}
ROUNDS=${BENCH_ROUNDS:-2}
CLIENTS=${BENCH_CLIENTS:-32}
LATENCY_SECONDS=${BENCH_LATENCY_SECONDS:-12}
LOAD_CLIENTS=${BENCH_LOAD_CLIENTS:-8}
LOAD_RATE=${BENCH_LOAD_RATE:-1000}        # background appends/s
MEASURED_RATE=${BENCH_MEASURED_RATE:-200}  # measured appends/s
BENCH="$ROOT/test/bench"
PY=/usr/bin/python3

NOTIFY_INTERVAL=${BENCH_NOTIFY_INTERVAL:-5ms}
bench_cluster <<CONF
max_connections = 120
shared_buffers = 256MB
eventsourcing.notify_interval = $NOTIFY_INTERVAL
CONF
trap 'cluster_stop bench; rm -rf "$WORK"' EXIT

psql -X -q -v ON_ERROR_STOP=1 -d postgres >/dev/null <<'SQL'
CREATE EXTENSION eventsourcing;
SELECT es_create_application('bench');
SELECT es_create_application('load');
SELECT es_create_application('measured');
SQL

cat >"$WORK/append.sql" <<'SQL'
SELECT es_append('bench', gen_random_uuid(), 1, 'Bench.Event', '\x7b7d');
SQL
cat >"$WORK/load.sql" <<'SQL'
SELECT es_append('load', gen_random_uuid(), 1, 'Bench.Event', '\x7b7d');
SQL

# notify on|off: sets eventsourcing.notify for new sessions and the worker.
notify() {
    psql -X -q -v ON_ERROR_STOP=1 -d postgres \
        -c "ALTER SYSTEM SET eventsourcing.notify = $1" -c "SELECT pg_reload_conf()" >/dev/null
    sleep 0.3   # the worker reloads at its next round
    [ "$(psql -X -A -t -d postgres -c 'SHOW eventsourcing.notify')" = "$1" ] \
        || { echo "eventsourcing.notify did not become $1" >&2; exit 1; }
}

reset_events() {
    psql -X -q -v ON_ERROR_STOP=1 -d postgres -c "SET eventsourcing.allow_rewrite = on" \
        -c "TRUNCATE es_stored_events" -c "CHECKPOINT" >/dev/null
}

# run MODE -> "tps announcements_received" (announcements: - without a listener)
run() {
    local mode=$1 out tps lpid="" heard="-"
    reset_events
    case $mode in off) notify off ;; *) notify on ;; esac
    if [ "$mode" = listen ]; then
        rm -f "$WORK/ready"
        "$PY" "$BENCH/notify_helper.py" listen bench $((SECONDS_PER_RUN + 2)) "$WORK/ready" >"$WORK/listen.out" &
        lpid=$!
        for _ in $(seq 100); do [ -e "$WORK/ready" ] && break; sleep 0.05; done
        [ -e "$WORK/ready" ] || { echo "the listener did not start" >&2; exit 1; }
    fi
    out=$("$PG_BIN/pgbench" -n -M prepared -c "$CLIENTS" -j 2 -T "$SECONDS_PER_RUN" \
          -f "$WORK/append.sql" postgres 2>&1) || { echo "$out" >&2; exit 1; }
    tps=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\) .*/\1/p' | tail -1)
    tps=$(printf '%.0f' "$tps")
    if [ -n "$lpid" ]; then
        wait "$lpid"
        heard=$(awk '{print $1}' "$WORK/listen.out")
    fi
    echo "$tps $heard"
}

declare -A TPS HEARD
for ((r = 1; r <= ROUNDS; r++)); do
    # ABC, then CBA: a drift over the run does not favour one mode.
    if ((r % 2)); then modes="off on listen"; else modes="listen on off"; fi
    for m in $modes; do
        res=$(run "$m")
        read -r tps heard <<<"$res"
        log "round $r, $CLIENTS clients, notify $m: $tps tps${heard:+, $heard announcements heard}"
        TPS[$m]="${TPS[$m]:-} $tps"; HEARD[$m]="${HEARD[$m]:-} $heard"
    done
done

# --- latency: commit acknowledgement to receipt of the announcement -----------
notify on
reset_events
log "latency: $MEASURED_RATE appends/s measured, background $LOAD_RATE appends/s from $LOAD_CLIENTS clients, ${LATENCY_SECONDS}s"
"$PG_BIN/pgbench" -n -M prepared -c "$LOAD_CLIENTS" -j 2 -R "$LOAD_RATE" -T $((LATENCY_SECONDS + 2)) \
    -f "$WORK/load.sql" postgres >"$WORK/load.out" 2>&1 &
load_pid=$!
sleep 1
res=$("$PY" "$BENCH/notify_helper.py" latency measured "$LATENCY_SECONDS" "$MEASURED_RATE" 1)
read -r lat_n lat_heard lat_uncovered lat_p50 lat_p99 lat_max lat_min send_p50 send_p99 <<<"$res"
wait "$load_pid" || { cat "$WORK/load.out" >&2; exit 1; }
load_tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$WORK/load.out" | tail -1)
load_tps=$(printf '%.0f' "$load_tps")
log "latency: $lat_n ids, $lat_heard announcements, median $lat_p50 ms, p99 $lat_p99 ms, max $lat_max ms, min $lat_min ms; from send: median $send_p50 ms, p99 $send_p99 ms (background $load_tps tps)"

mean() { echo "$@" | tr ' ' '\n' | awk 'NF && $1 != "-" {s += $1; n++} END {if (n) printf "%.0f", s / n; else printf "-"}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", a / b}'; }

off=$(mean ${TPS[off]}); on=$(mean ${TPS[on]}); lis=$(mean ${TPS[listen]})
r_on=$(ratio "$on" "$off"); r_lis=$(ratio "$lis" "$off")
verdict() { awk -v r="$1" 'BEGIN {print (r >= 0.9 ? "meets" : "BELOW")}'; }
{
    echo
    echo "### Push and follow ($(date -u +%Y-%m-%d))"
    echo
    echo "Machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -sr), PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}'), synchronous_commit on, fsync on, eventsourcing.worker_naptime $(psql -X -A -t -d postgres -c 'SHOW eventsourcing.worker_naptime'), notify_interval $(psql -X -A -t -d postgres -c 'SHOW eventsourcing.notify_interval'); pgbench -M prepared, $CLIENTS clients, -j 2, ${SECONDS_PER_RUN}s per run, one event per transaction (a new aggregate each), $ROUNDS rounds interleaved, all in one run."
    echo
    echo "| eventsourcing.notify | es_append tps, per round | mean tps | / off | target >= 0.9 |"
    echo "| --- | ---: | ---: | ---: | --- |"
    echo "| off | $(echo ${TPS[off]} | sed 's/ /, /g') | $off | 1.000 | |"
    echo "| on | $(echo ${TPS[on]} | sed 's/ /, /g') | $on | $r_on | $(verdict "$r_on") |"
    echo "| on, one client LISTENing (announcements heard: $(echo ${HEARD[listen]} | sed 's/ /, /g')) | $(echo ${TPS[listen]} | sed 's/ /, /g') | $lis | $r_lis | $(verdict "$r_lis") |"
    echo
    echo "Latency: one writer appends $MEASURED_RATE events/s (one per transaction) to the measured application while $LOAD_CLIENTS pgbench clients append $load_tps events/s (-R $LOAD_RATE) to another; a follower in its own process LISTENs. Per id: from the writer's commit acknowledgement (and, for comparison, from sending es_append) to the receipt of the first announcement covering it; ${LATENCY_SECONDS}s, the first second left out. The minimum can be below 0: the worker may announce before the writer has read its acknowledgement."
    echo
    echo "| ids measured | announcements | not announced | median ms | p99 ms | max ms | min ms | from send: median ms | from send: p99 ms |"
    echo "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    echo "| $lat_n | $lat_heard | $lat_uncovered | $lat_p50 | $lat_p99 | $lat_max | $lat_min | $send_p50 | $send_p99 |"
} | tee -a "$RESULTS/notify.md"
