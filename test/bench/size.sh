#!/bin/bash
# Costs against the size of the log: the log grows to 10^5, 10^6, 10^7 events
# (SIZE_STEPS), and at each size the harness measures append throughput
# (8 clients, one 256-byte event per transaction), the latency of an
# es_select page of 100 at a random position, of es_events of a random
# aggregate of 100 events, and of es_max_notification_id, and the peak
# private memory (VmHWM less RssShmem) of a session running es_verify_log, of
# one running es_seal, and of the worker.
#
# The plain table beside the log is measured the same way: each es read and
# its plain counterpart run in one pgbench session that picks either at
# random per transaction (same machine load, same cache), their positions are
# drawn over the whole log and the whole table alike, the append runs
# alternate which goes first, and the blocks each read touches per call (and
# how many of them come from outside shared_buffers) are counted from
# pg_statio_user_tables: on a machine shared with other work the block counts
# are the stable figure, the timings are not.  A third pair reads pages within
# the first 10^5 events only (the same events at every size, warmed into
# shared_buffers first): what a read costs when the log is larger but the
# pages read are cached.  Before the reads of each round both tables and
# their indexes are read once through the kernel's page cache (pg_prewarm
# 'read'), so that neither starts colder there than the other.
#
#   make bench-size         # SIZE_SECONDS=5 SIZE_ROUNDS=3 by default
#
# Writes test/bench/results/size.md and size.dat (for test/bench/plot.sh).
source "$(dirname "$0")/../scripts/common.sh"

SECONDS_PER_RUN=${SIZE_SECONDS:-5}
ROUNDS=${SIZE_ROUNDS:-3}
STEPS=${SIZE_STEPS:-"100000 1000000 10000000"}
BENCH="$ROOT/test/bench"

bench_cluster <<CONF
shared_buffers = 512MB
max_wal_size = 8GB
eventsourcing.seal_interval = 0
CONF

STATE=$BENCH_STATE_256
psql -X -q -v ON_ERROR_STOP=1 -d postgres <<SQL
CREATE EXTENSION eventsourcing;
CREATE EXTENSION pg_prewarm;
SELECT es_create_application('size');
CREATE FUNCTION bench_state() RETURNS bytea LANGUAGE sql IMMUTABLE AS \$\$ SELECT convert_to('$STATE', 'UTF8') \$\$;
CREATE FUNCTION bench_uuid(k bigint) RETURNS uuid LANGUAGE sql IMMUTABLE
    AS \$\$ SELECT ('00000000-0000-4000-8000-' || lpad(k::text, 12, '0'))::uuid \$\$;
-- Grows the log to n events: batches of 1,000 (10 aggregates of 100 events),
-- one transaction each.
-- (The batches done are counted apart: the appends measured at each size add
-- events of their own, and every aggregate 0 .. n/100 - 1 must exist.)
CREATE TABLE bench_progress (kind text PRIMARY KEY, batches bigint NOT NULL);
INSERT INTO bench_progress VALUES ('es', 0), ('plain', 0);
CREATE PROCEDURE bench_grow(n bigint) LANGUAGE plpgsql AS \$\$
DECLARE have bigint := (SELECT batches FROM bench_progress WHERE kind = 'es');
BEGIN
    FOR b IN have .. n / 1000 - 1 LOOP
        PERFORM count(*) FROM es_append('size', ARRAY(
            SELECT ROW(bench_uuid(1000000000 + b * 10 + a), v, 'Bench.Event', bench_state())::es_event
            FROM generate_series(0, 9) a, generate_series(1, 100) v));
        UPDATE bench_progress SET batches = b + 1 WHERE kind = 'es';
        COMMIT;
    END LOOP;
END \$\$;
-- The baseline: a plain table with the same columns and indexes, grown in
-- step with the same events (no ordering, no chain, no lock).
$BENCH_PLAIN_TABLE
CREATE PROCEDURE bench_grow_plain(n bigint) LANGUAGE plpgsql AS \$\$
DECLARE have bigint := (SELECT batches FROM bench_progress WHERE kind = 'plain');
BEGIN
    FOR b IN have .. n / 1000 - 1 LOOP
        INSERT INTO plain_events (application_id, originator_id, originator_version, topic, state, event_hash)
            SELECT 1, bench_uuid(1000000000 + b * 10 + a), v, 'Bench.Event', bench_state(), sha256(int8send(b * 1000 + a * 100 + v))
            FROM generate_series(0, 9) a, generate_series(1, 100) v;
        UPDATE bench_progress SET batches = b + 1 WHERE kind = 'plain';
        COMMIT;
    END LOOP;
END \$\$;
SQL

cat >"$WORK/append.sql" <<'SQL'
SELECT es_append('size', gen_random_uuid(), 1, 'Bench.Event', bench_state());
SQL
cat >"$WORK/max_id.sql" <<'SQL'
SELECT es_max_notification_id('size');
SQL
cat >"$WORK/plain_append.sql" <<'SQL'
INSERT INTO plain_events (application_id, originator_id, originator_version, topic, state)
VALUES (1, gen_random_uuid(), 1, 'Bench.Event', bench_state());
SQL
cat >"$WORK/plain_max_id.sql" <<'SQL'
SELECT max(notification_id) FROM plain_events WHERE application_id = 1;
SQL

# The application's partition of es_stored_events (its own table since
# partitioning, #15): where its blocks are counted.
ES_LOG=$(psql -X -At -d postgres -c "SELECT 'es_stored_events_' || id FROM es_applications WHERE name = 'size'")
# statio -> "es_stored_events blocks reads plain_events blocks reads" (heap and
# index blocks touched so far, and of them read from outside shared_buffers).
statio() {
    psql -X -At -F' ' -d postgres -c "SELECT string_agg(concat_ws(' ',
            heap_blks_hit + heap_blks_read + coalesce(idx_blks_hit, 0) + coalesce(idx_blks_read, 0),
            heap_blks_read + coalesce(idx_blks_read, 0)), ' ' ORDER BY relname)
        FROM pg_statio_user_tables WHERE relname IN ('$ES_LOG', 'plain_events')"
}

# latency_pair A B -> "meanA p99A meanB p99B blocksA readsA blocksB readsB":
# one session running script A (an es read) and B (its plain counterpart),
# either picked at random per transaction, for twice the run's seconds; the
# blocks per call of A on es_stored_events and of B on plain_events.
latency_pair() {
    local a=$1 b=$2 out before after
    rm -f "$WORK"/log.*
    sleep 1; before=$(statio)
    out=$(cd "$WORK" && "$PG_BIN/pgbench" -n -M prepared -c 1 -T $(( 2 * SECONDS_PER_RUN )) -l --log-prefix="$WORK/log" \
          -f "$WORK/$a.sql" -f "$WORK/$b.sql" postgres 2>&1) || { echo "$out" >&2; exit 1; }
    sleep 1; after=$(statio)   # a backend reports its counts as it exits
    for k in 0 1; do
        awk -v k=$k '$4 == k {print $3}' "$WORK"/log.* | sort -n | awk '{a[NR] = $1; s += $1}
            END {printf "%.3f %.3f ", s / NR / 1000, a[int(NR * .99) + 1] / 1000}'
    done
    echo "$before $after" | awk -v na="$(awk '$4 == 0' "$WORK"/log.* | wc -l)" -v nb="$(awk '$4 == 1' "$WORK"/log.* | wc -l)" \
        '{printf "%.2f %.2f %.2f %.2f\n", ($5 - $1) / na, ($6 - $2) / na, ($7 - $3) / nb, ($8 - $4) / nb}'
}

# peak_rss SQL -> "kB seconds": the peak private memory of a fresh session
# running SQL: its peak resident size less the shared memory it has touched
# (shared buffers count in a backend's resident size, up to shared_buffers).
peak_rss() {
    local t0 t1 kb
    t0=$(date +%s.%N)
    kb=$(psql -X -q -At -v ON_ERROR_STOP=1 -d postgres <<SQL | tail -1
SELECT pg_backend_pid() AS pid \gset
\setenv ES_PID :pid
SELECT count(*) FROM ($1) q \g /dev/null
\! awk '/VmHWM/ {hwm = \$2} /RssShmem/ {shm = \$2} END {print hwm - shm}' /proc/\$ES_PID/status
SQL
)
    t1=$(date +%s.%N)
    echo "$kb $(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}')"
}

median() { echo "$@" | tr ' ' '\n' | awk 'NF' | sort -g | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

: >"$RESULTS/size.dat"
TABLE=""
for n in $STEPS; do
    log "growing the log to $n events"
    start=$(date +%s)
    psql -X -q -v ON_ERROR_STOP=1 -d postgres -c "CALL bench_grow($n)" -c "CALL bench_grow_plain($n)" \
        -c "VACUUM ANALYZE es_stored_events, plain_events" -c "CHECKPOINT"
    log "grown in $(( $(date +%s) - start )) s"
    have=$(psql -X -At -d postgres -c "SELECT es_max_notification_id('size')")
    aggs=$(( have / 100 ))
    cat >"$WORK/page.sql" <<SQL
\set p random(1, $have - 100)
SELECT count(*), sum(octet_length(state)) FROM es_select('size', :p, 100);
SQL
    cat >"$WORK/aggregate.sql" <<SQL
\set a random(0, $(( n / 100 - 1 )))
SELECT count(*), sum(octet_length(state)) FROM es_events('size', bench_uuid(1000000000 + :a));
SQL
    # Every read sums the states, so that the plain ones fetch their rows
    # (a count alone is an index-only scan on a vacuumed table).
    # Both over all they hold (the events appended by the runs so far too).
    read -r pfirst plast < <(psql -X -At -F' ' -d postgres -c "SELECT min(notification_id), max(notification_id) FROM plain_events")
    cat >"$WORK/plain_page.sql" <<SQL
\\set p random($pfirst, $plast - 100)
SELECT count(*), sum(octet_length(state)) FROM (SELECT notification_id, originator_id, originator_version, topic, state, recorded_at, event_hash
    FROM plain_events WHERE application_id = 1 AND notification_id >= :p ORDER BY notification_id LIMIT 100) e;
SQL
    cat >"$WORK/plain_aggregate.sql" <<SQL
\\set a random(0, $(( n / 100 - 1 )))
SELECT count(*), sum(octet_length(state)) FROM (SELECT notification_id, originator_version, topic, state, recorded_at, event_hash
    FROM plain_events WHERE application_id = 1 AND originator_id = bench_uuid(1000000000 + :a) ORDER BY originator_version) e;
SQL
    # The first 10^5 events of each, loaded alike: the same events at every size.
    cat >"$WORK/window_page.sql" <<SQL
\\set p random(1, 100000 - 100)
SELECT count(*), sum(octet_length(state)) FROM es_select('size', :p, 100);
SQL
    cat >"$WORK/plain_window_page.sql" <<SQL
\\set p random($pfirst, $pfirst + 100000 - 100)
SELECT count(*), sum(octet_length(state)) FROM (SELECT notification_id, originator_id, originator_version, topic, state, recorded_at, event_hash
    FROM plain_events WHERE application_id = 1 AND notification_id >= :p ORDER BY notification_id LIMIT 100) e;
SQL
    tps=(); page=(); pagep99=(); agg=(); aggp99=(); maxid=(); worker_kb=0
    ptps=(); ppage=(); ppagep99=(); pagg=(); paggp99=(); pmaxid=()
    pageblk=(); pagerd=(); ppageblk=(); ppagerd=(); aggblk=(); aggrd=(); paggblk=(); paggrd=()
    win=(); winp99=(); pwin=(); pwinp99=(); winrd=(); pwinrd=()
    for ((r = 1; r <= ROUNDS; r++)); do
        # Appends: es first in odd rounds, plain first in even ones.
        for kind in $( ((r % 2)) && echo "es plain" || echo "plain es"); do
            script=append; [ "$kind" = plain ] && script=plain_append
            out=$("$PG_BIN/pgbench" -n -M prepared -c 8 -j 2 -T "$SECONDS_PER_RUN" -f "$WORK/$script.sql" postgres 2>&1) || { echo "$out" >&2; exit 1; }
            t=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\) .*/\1/p' | tail -1)
            if [ "$kind" = es ]; then
                tps+=("$t")
                # The worker has just been busy (it leaves 2 s after the last append).
                for w in $(pgrep -f "eventsourcing worker" || true); do
                    kb=$(awk '/VmHWM/ {hwm = $2} /RssShmem/ {shm = $2} END {print hwm - shm}' "/proc/$w/status" 2>/dev/null || echo 0)
                    [ "$kb" -gt "$worker_kb" ] && worker_kb=$kb
                done
            else
                ptps+=("$t")
            fi
        done
        # Both tables and their indexes read through the kernel's page cache
        # first: which of them the kernel keeps otherwise depends on the order
        # they were written in and on whatever else runs on the machine.
        psql -X -q -d postgres -c "SELECT sum(pg_prewarm(c.oid, 'read')) FROM pg_class c
            WHERE c.relname IN ('$ES_LOG', 'plain_events') OR c.oid IN (SELECT indexrelid FROM pg_index
            WHERE indrelid IN ('$ES_LOG'::regclass, 'plain_events'::regclass))" >/dev/null
        read -r m p pm pp b rd pb prd < <(latency_pair page plain_page)
        page+=("$m"); pagep99+=("$p"); ppage+=("$pm"); ppagep99+=("$pp")
        pageblk+=("$b"); pagerd+=("$rd"); ppageblk+=("$pb"); ppagerd+=("$prd")
        read -r m p pm pp b rd pb prd < <(latency_pair aggregate plain_aggregate)
        agg+=("$m"); aggp99+=("$p"); pagg+=("$pm"); paggp99+=("$pp")
        aggblk+=("$b"); aggrd+=("$rd"); paggblk+=("$pb"); paggrd+=("$prd")
        read -r m p pm pp b rd pb prd < <(latency_pair max_id plain_max_id)
        maxid+=("$m"); pmaxid+=("$pm")
        # Warm the window into shared_buffers, then read it.
        psql -X -q -d postgres -c "SELECT count(*), sum(octet_length(state)) FROM es_select('size', 1, 100000)" \
            -c "SELECT count(*), sum(octet_length(state)) FROM plain_events WHERE application_id = 1 AND notification_id < $pfirst + 100000" >/dev/null
        read -r m p pm pp b rd pb prd < <(latency_pair window_page plain_window_page)
        win+=("$m"); winp99+=("$p"); pwin+=("$pm"); pwinp99+=("$pp"); winrd+=("$rd"); pwinrd+=("$prd")
    done
    read -r verify_kb verify_s < <(peak_rss "SELECT * FROM es_verify_log('size')")
    read -r seal_kb seal_s < <(peak_rss "SELECT es_seal('size')")
    row="$n $(median "${tps[@]}") $(median "${page[@]}") $(median "${pagep99[@]}") $(median "${agg[@]}") $(median "${aggp99[@]}") $(median "${maxid[@]}") $verify_kb $verify_s $seal_kb $seal_s $worker_kb"
    row="$row $(median "${ptps[@]}") $(median "${ppage[@]}") $(median "${ppagep99[@]}") $(median "${pagg[@]}") $(median "${paggp99[@]}") $(median "${pmaxid[@]}")"
    row="$row $(median "${pageblk[@]}") $(median "${pagerd[@]}") $(median "${ppageblk[@]}") $(median "${ppagerd[@]}")"
    row="$row $(median "${aggblk[@]}") $(median "${aggrd[@]}") $(median "${paggblk[@]}") $(median "${paggrd[@]}")"
    row="$row $(median "${win[@]}") $(median "${winp99[@]}") $(median "${pwin[@]}") $(median "${pwinp99[@]}") $(median "${winrd[@]}") $(median "${pwinrd[@]}")"
    log "$row"
    echo "$row" >>"$RESULTS/size.dat"
done

{
    echo "Machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -sr), PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}'); synchronous_commit on, fsync on, shared_buffers 512MB; 256-byte events in aggregates of 100; pgbench -M prepared, ${SECONDS_PER_RUN}s per run, median of $ROUNDS rounds ($(date -u +%Y-%m-%d))."
    echo
    echo "Reads: one client; each es read and its plain counterpart in one pgbench session, picked at random per call. Blocks: heap and index blocks of es_stored_events (plain_events) touched per call, and in parentheses those read from outside shared_buffers (pg_statio_user_tables). Cached page: a page of 100 within the first 10^5 events, warmed into shared_buffers first."
    echo
    echo "| events in the log | append tps (8 clients) | es_select page of 100, mean / p99 ms | its blocks (outside) | es_events of 100, mean / p99 ms | its blocks (outside) | es_max_notification_id ms | cached page, mean / p99 ms | es_verify_log peak private memory MB (s) | es_seal peak private memory MB (s) | worker peak private memory MB |"
    echo "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    awk '{printf "| %d | %.0f | %.3f / %.3f | %.2f (%.2f) | %.3f / %.3f | %.2f (%.2f) | %.3f | %.3f / %.3f | %.1f (%s) | %.1f (%s) | %s |\n", $1, $2, $3, $4, $19, $20, $5, $6, $23, $24, $7, $27, $28, $8 / 1024, $9, $10 / 1024, $11, sprintf("%.1f", $12 / 1024)}' "$RESULTS/size.dat"
    echo
    echo "The same on the plain table, grown in step (a plain INSERT; a range SELECT of 100 rows; the rows of one aggregate; max(notification_id)):"
    echo
    echo "| events in the table | INSERT tps (8 clients) | page of 100, mean / p99 ms | its blocks (outside) | one aggregate's 100 rows, mean / p99 ms | its blocks (outside) | max id ms | cached page, mean / p99 ms |"
    echo "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    awk '{printf "| %d | %.0f | %.3f / %.3f | %.2f (%.2f) | %.3f / %.3f | %.2f (%.2f) | %.3f | %.3f / %.3f |\n", $1, $13, $14, $15, $21, $22, $16, $17, $25, $26, $18, $29, $30}' "$RESULTS/size.dat"
    echo
    awk 'NR == 1 {first = $1; t = $2; p = $3; a = $5; m = $7; pt = $13; pp = $14; pa = $16; pm = $18; w = $27; pw = $29}
        END {printf "At %d events against %d: append throughput %.2fx (plain INSERT %.2fx), page latency %.2fx (plain %.2fx), one aggregate %.2fx (plain %.2fx), max id %.2fx (plain %.2fx), cached page %.2fx (plain %.2fx). es_select against the plain SELECT at each size: page %s; cached page %s.\n",
                    $1, first, $2 / t, $13 / pt, $3 / p, $14 / pp, $5 / a, $16 / pa, $7 / m, $18 / pm, $27 / w, $29 / pw, ratios, wratios}
        {ratios = ratios (NR > 1 ? ", " : "") sprintf("%.2fx", $3 / $14); wratios = wratios (NR > 1 ? ", " : "") sprintf("%.2fx", $27 / $29)}' "$RESULTS/size.dat"
} | tee "$RESULTS/size.md"
bash "$BENCH/plot.sh" || log "no plots (gnuplot missing?)"
