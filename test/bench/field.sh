#!/bin/bash
# The field's workload shapes (after pyeventsourcing/event-store-benchmark),
# es_* side by side with a plain table in one run on a throwaway cluster:
#
#   A. one 256-byte event per transaction, a new aggregate each, at 1, 8, 32,
#      128 (and, with FIELD_CLIENTS, more) clients: es_append against a plain
#      INSERT into a table with the same columns and indexes (bigserial id);
#      transactions/s and latency p50/p99/p99.9 from pgbench's
#      per-transaction log;
#   B. batches of 100 such events against a multi-row INSERT;
#   C. Zipf-distributed hot aggregates (read the version, append the next,
#      retry on a conflict) against the same on the plain table;
#   D. a catch-up reader paging (100 and 1,000 rows a page, every row sent to
#      the client) while 32 writers append (half es_append, half INSERT, the
#      same for both): es_select against an indexed range SELECT of the same
#      columns;
#   E. a gap decision (es_select over a permanent gap) with 32 and with 500
#      connections open: the slot scan's cost against max_connections.
#
#   make bench-field        # FIELD_SECONDS=10 FIELD_ROUNDS=3 by default
#
# Writes test/bench/results/field.md, the data files for the plots, and the
# plots (test/bench/plot.sh).
source "$(dirname "$0")/../scripts/common.sh"

SECONDS_PER_RUN=${FIELD_SECONDS:-10}
ROUNDS=${FIELD_ROUNDS:-3}
CLIENTS=${FIELD_CLIENTS:-"1 8 32 128"}
BENCH="$ROOT/test/bench"

bench_cluster <<CONF
max_connections = 600
shared_buffers = 512MB
max_wal_size = 4GB
CONF

# A 256-byte JSON event state.
STATE=$BENCH_STATE_256
STATE_SQL="convert_to('$STATE', 'UTF8')"

psql -X -q -v ON_ERROR_STOP=1 -d postgres <<SQL
CREATE EXTENSION eventsourcing;
SELECT es_create_application('bench');
$BENCH_PLAIN_TABLE
CREATE FUNCTION bench_state() RETURNS bytea LANGUAGE sql IMMUTABLE AS \$\$ SELECT $STATE_SQL \$\$;
-- Zipf workload: read the aggregate's version, append the next, retry on a conflict.
CREATE FUNCTION bench_uuid(k int) RETURNS uuid LANGUAGE sql IMMUTABLE
    AS \$\$ SELECT ('00000000-0000-4000-8000-' || lpad(k::text, 12, '0'))::uuid \$\$;
CREATE TABLE bench_retries (kind text, n bigint);
CREATE FUNCTION bench_zipf_es(k int) RETURNS bigint LANGUAGE plpgsql AS \$\$
DECLARE id uuid := bench_uuid(k); v bigint; tries int := 0;
BEGIN
    LOOP
        SELECT originator_version INTO v FROM es_events('bench', id, descending => true, max_count => 1);
        BEGIN
            RETURN es_append('bench', id, coalesce(v, 0) + 1, 'Bench.Event', bench_state());
        EXCEPTION WHEN unique_violation THEN
            tries := tries + 1;
            IF tries = 1 THEN INSERT INTO bench_retries VALUES ('es', 1); END IF;
        END;
    END LOOP;
END \$\$;
CREATE FUNCTION bench_zipf_plain(k int) RETURNS bigint LANGUAGE plpgsql AS \$\$
DECLARE id uuid := bench_uuid(k); v bigint; r bigint; tries int := 0;
BEGIN
    LOOP
        SELECT originator_version INTO v FROM plain_events
            WHERE application_id = 1 AND originator_id = id ORDER BY originator_version DESC LIMIT 1;
        BEGIN
            INSERT INTO plain_events (application_id, originator_id, originator_version, topic, state)
                VALUES (1, id, coalesce(v, 0) + 1, 'Bench.Event', bench_state()) RETURNING notification_id INTO r;
            RETURN r;
        EXCEPTION WHEN unique_violation THEN
            tries := tries + 1;
            IF tries = 1 THEN INSERT INTO bench_retries VALUES ('plain', 1); END IF;
        END;
    END LOOP;
END \$\$;
SQL

cat >"$WORK/es.sql" <<SQL
SELECT es_append('bench', gen_random_uuid(), 1, 'Bench.Event', $STATE_SQL);
SQL
cat >"$WORK/plain.sql" <<SQL
INSERT INTO plain_events (application_id, originator_id, originator_version, topic, state)
VALUES (1, gen_random_uuid(), 1, 'Bench.Event', $STATE_SQL);
SQL
cat >"$WORK/es_batch.sql" <<SQL
SELECT count(*) FROM es_append('bench', ARRAY(
    SELECT ROW(gen_random_uuid(), 1, 'Bench.Event', $STATE_SQL)::es_event
    FROM generate_series(1, 100)));
SQL
cat >"$WORK/plain_batch.sql" <<SQL
INSERT INTO plain_events (application_id, originator_id, originator_version, topic, state)
SELECT 1, gen_random_uuid(), 1, 'Bench.Event', $STATE_SQL FROM generate_series(1, 100);
SQL
cat >"$WORK/es_zipf.sql" <<'SQL'
\set k random_zipfian(1, 10000, 1.1)
SELECT bench_zipf_es(:k);
SQL
cat >"$WORK/plain_zipf.sql" <<'SQL'
\set k random_zipfian(1, 10000, 1.1)
SELECT bench_zipf_plain(:k);
SQL

reset_tables() {
    psql -X -q -v ON_ERROR_STOP=1 -d postgres -c "SET eventsourcing.allow_rewrite = on" \
        -c "TRUNCATE plain_events, es_stored_events, bench_retries" -c "CHECKPOINT" >/dev/null
}

# percentiles LOGFILES... -> "p50 p99 p99.9" in ms, from pgbench -l logs
percentiles() {
    cat "$@" | awk '{print $3}' | sort -n | awk '{a[NR] = $1}
        END {printf "%.2f %.2f %.2f", a[int(NR * .50) + 1] / 1000, a[int(NR * .99) + 1] / 1000, a[int(NR * .999) + 1] / 1000}'
}

# bench SCRIPT CLIENTS [extra pgbench args] -> "tps p50 p99 p99.9"
bench() {
    local script=$1 clients=$2 out jobs tps
    shift 2
    jobs=$(( clients < 2 ? 1 : 2 ))
    rm -f "$WORK"/log.*
    out=$(cd "$WORK" && "$PG_BIN/pgbench" -n -M prepared -c "$clients" -j "$jobs" -T "$SECONDS_PER_RUN" \
          -l --log-prefix="$WORK/log" "$@" -f "$WORK/$script.sql" postgres 2>&1) || { echo "$out" >&2; exit 1; }
    tps=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\) .*/\1/p' | tail -1)
    echo "$tps $(percentiles "$WORK"/log.*)"
}

median() { echo "$@" | tr ' ' '\n' | awk 'NF' | sort -g | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }

declare -A R
add() { R[$1]="${R[$1]:-} $2"; }

# --- A and B: appends, interleaved so that drift hits both alike
for ((r = 1; r <= ROUNDS; r++)); do
    for c in $CLIENTS; do
        for s in plain es; do
            reset_tables
            read -r tps p50 p99 p999 < <(bench "$s" "$c")
            log "round $r, $c clients, $s: $tps tps, p50 $p50 p99 $p99 p99.9 $p999 ms"
            add "$s,$c,tps" "$tps"; add "$s,$c,p50" "$p50"; add "$s,$c,p99" "$p99"; add "$s,$c,p999" "$p999"
        done
    done
    for s in plain_batch es_batch; do
        reset_tables
        read -r tps p50 p99 p999 < <(bench "$s" 8)
        log "round $r, 8 clients, $s: $tps tps, p99 $p99 ms"
        add "$s,tps" "$tps"; add "$s,p99" "$p99"
    done
done

# --- C: Zipf-distributed hot aggregates, 32 clients
for ((r = 1; r <= ROUNDS; r++)); do
    for s in plain_zipf es_zipf; do
        reset_tables
        read -r tps p50 p99 p999 < <(bench "$s" 32)
        retries=$(psql -X -At -d postgres -c "SELECT count(*) FROM bench_retries")
        log "round $r, 32 clients, $s: $tps tps, p99 $p99 ms, $retries transactions retried"
        add "$s,tps" "$tps"; add "$s,p99" "$p99"; add "$s,retries" "$retries"
    done
done

# --- D: a catch-up reader while 32 writers append
reset_tables
log "loading 1,000,000 events for the readers"
psql -X -q -v ON_ERROR_STOP=1 -d postgres <<SQL
DO \$\$ BEGIN
    FOR b IN 1 .. 1000 LOOP
        PERFORM count(*) FROM es_append('bench', ARRAY(
            SELECT ROW(gen_random_uuid(), 1, 'Bench.Event', bench_state())::es_event FROM generate_series(1, 1000)));
        COMMIT;
    END LOOP;
END \$\$;
INSERT INTO plain_events (application_id, originator_id, originator_version, topic, state, event_hash)
    SELECT 1, gen_random_uuid(), 1, 'Bench.Event', $STATE_SQL, sha256(int8send(g)) FROM generate_series(1, 1000000) g;
VACUUM ANALYZE plain_events, es_stored_events;
SQL
ES_FIRST=$(psql -X -At -d postgres -c "SELECT min(notification_id) FROM es_stored_events")
PLAIN_FIRST=$(psql -X -At -d postgres -c "SELECT min(notification_id) FROM plain_events")
for page in 100 1000; do
    # Each transaction reads a page at a random position of the 1,000,000
    # events loaded, and the client receives every row.
    cat >"$WORK/es_read_$page.sql" <<SQL
\\set p random($ES_FIRST, $ES_FIRST + 1000000 - $page)
SELECT * FROM es_select('bench', :p, $page);
SQL
    cat >"$WORK/plain_read_$page.sql" <<SQL
\\set p random($PLAIN_FIRST, $PLAIN_FIRST + 1000000 - $page)
SELECT notification_id, originator_id, originator_version, topic, state, recorded_at, event_hash
    FROM plain_events WHERE application_id = 1 AND notification_id >= :p ORDER BY notification_id LIMIT $page;
SQL
done
for ((r = 1; r <= ROUNDS; r++)); do
    for page in 100 1000; do
        for s in plain es; do
            # The same load for both readers: 16 es_append and 16 INSERT writers.
            "$PG_BIN/pgbench" -n -M prepared -c 32 -j 1 -T $((SECONDS_PER_RUN + 2)) \
                -f "$WORK/es.sql" -f "$WORK/plain.sql" postgres >/dev/null 2>&1 &
            writers=$!
            sleep 1
            out=$("$PG_BIN/pgbench" -n -M prepared -c 1 -T "$SECONDS_PER_RUN" -f "$WORK/${s}_read_$page.sql" postgres 2>&1) \
                || { echo "$out" >&2; exit 1; }
            wait $writers
            tps=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\) .*/\1/p' | tail -1)
            rows=$(awk -v t="$tps" -v p="$page" 'BEGIN {printf "%.0f", t * p}')
            log "round $r, reader with 32 writers, pages of $page, $s: $rows rows/s"
            add "read,$s,$page" "$rows"
        done
    done
done

# --- E: a gap decision with 32 and with 500 connections open
psql -X -q -v ON_ERROR_STOP=1 -d postgres <<SQL
SELECT es_create_application('gaps');
SELECT es_append('gaps', gen_random_uuid(), 1, 'Bench.Event', $STATE_SQL) FROM generate_series(1, 100);
BEGIN; SELECT es_append('gaps', gen_random_uuid(), 1, 'Bench.Event', $STATE_SQL); ROLLBACK;
SELECT es_append('gaps', gen_random_uuid(), 1, 'Bench.Event', $STATE_SQL) FROM generate_series(1, 100);
SQL
echo "SELECT count(*) FROM es_select('gaps', 1, 1000);" >"$WORK/gap.sql"
# Connections that are open and use no CPU: each runs one long pg_sleep.
echo "SELECT pg_sleep($((SECONDS_PER_RUN + 10)))" >"$WORK/idle.sql"
for ((r = 1; r <= ROUNDS; r++)); do
    for conns in 32 500; do
        "$PG_BIN/pgbench" -n -c $((conns - 1)) -j 2 -t 1 -f "$WORK/idle.sql" postgres >/dev/null 2>&1 &
        idle=$!
        until [ "$(psql -X -At -d postgres -c "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'")" -ge "$conns" ]; do sleep 0.5; done
        out=$("$PG_BIN/pgbench" -n -M prepared -c 1 -T "$SECONDS_PER_RUN" -f "$WORK/gap.sql" postgres 2>&1) || { echo "$out" >&2; exit 1; }
        psql -X -q -d postgres -c "SELECT count(pg_cancel_backend(pid)) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%' AND pid <> pg_backend_pid()" >/dev/null
        wait $idle 2>/dev/null || true
        lat=$(echo "$out" | sed -n 's/^latency average = \([0-9.]*\) ms/\1/p')
        log "round $r, es_select over a gap with $conns connections: $lat ms"
        add "gap,$conns" "$lat"
    done
done

# --- the report
{
    echo "Machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -sr), PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}'); synchronous_commit on, fsync on, shared_buffers 512MB, max_connections 600; pgbench -M prepared, ${SECONDS_PER_RUN}s per run, median of $ROUNDS interleaved rounds, tables emptied before each run, all in one run ($(date -u +%Y-%m-%d))."
    echo
    echo "One 256-byte event per transaction, a new aggregate each:"
    echo
    echo "| clients | plain INSERT tps | es_append tps | ratio | plain p50 / p99 / p99.9 ms | es_append p50 / p99 / p99.9 ms |"
    echo "| ---: | ---: | ---: | ---: | ---: | ---: |"
    : >"$RESULTS/field_clients.dat"
    for c in $CLIENTS; do
        p=$(median ${R[plain,$c,tps]}); e=$(median ${R[es,$c,tps]})
        pp="$(median ${R[plain,$c,p50]}) / $(median ${R[plain,$c,p99]}) / $(median ${R[plain,$c,p999]})"
        ep="$(median ${R[es,$c,p50]}) / $(median ${R[es,$c,p99]}) / $(median ${R[es,$c,p999]})"
        printf '| %s | %.0f | %.0f | %s | %s | %s |\n' "$c" "$p" "$e" "$(ratio "$e" "$p")" "$pp" "$ep"
        echo "$c $p $e $(median ${R[plain,$c,p99]}) $(median ${R[es,$c,p99]})" >>"$RESULTS/field_clients.dat"
    done
    echo
    p=$(median ${R[plain_batch,tps]}); e=$(median ${R[es_batch,tps]})
    printf 'Batches of 100 events, 8 clients: multi-row INSERT %.0f events/s, es_append %.0f events/s: **%sx**; p99 %s ms against %s ms.\n' \
        "$(awk -v t="$p" 'BEGIN {print t * 100}')" "$(awk -v t="$e" 'BEGIN {print t * 100}')" "$(ratio "$e" "$p")" \
        "$(median ${R[es_batch,p99]})" "$(median ${R[plain_batch,p99]})"
    echo
    p=$(median ${R[plain_zipf,tps]}); e=$(median ${R[es_zipf,tps]})
    printf 'Zipf-distributed aggregates (10,000, s = 1.1), 32 clients, read the version then append the next, retry on a conflict: plain %.0f tps, es_append %.0f tps: **%sx**; p99 %s ms against %s ms; transactions retried: %s (es) and %s (plain).\n' \
        "$p" "$e" "$(ratio "$e" "$p")" "$(median ${R[es_zipf,p99]})" "$(median ${R[plain_zipf,p99]})" \
        "$(median ${R[es_zipf,retries]})" "$(median ${R[plain_zipf,retries]})"
    echo
    echo "A catch-up reader while 32 writers append (1,000,000 events in the log):"
    echo
    echo "| page | indexed range SELECT rows/s | es_select rows/s | ratio |"
    echo "| ---: | ---: | ---: | ---: |"
    for page in 100 1000; do
        p=$(median ${R[read,plain,$page]}); e=$(median ${R[read,es,$page]})
        printf '| %s | %.0f | %.0f | %s |\n' "$page" "$p" "$e" "$(ratio "$e" "$p")"
    done
    echo
    a=$(median ${R[gap,32]}); b=$(median ${R[gap,500]})
    printf 'es_select of 201 events over a permanent gap: %s ms with 32 connections open, %s ms with 500 (%sx).\n' "$a" "$b" "$(ratio "$b" "$a")"
} | tee "$RESULTS/field.md"
bash "$BENCH/plot.sh" || log "no plots (gnuplot missing?)"
