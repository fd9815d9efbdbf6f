#!/bin/bash
# Partitioning within one server (issue #15): what one application costs
# against the size of another application's log in the same database, and
# how an application's own indexes deepen as its log grows.
#
# Application 'small' holds 10^5 events; application 'big' grows to 10^5,
# 10^6, 10^7 events (PART_STEPS), 256-byte events in aggregates of 100,
# loaded in batches of 1,000.  At each size, interleaved round by round:
# appends (one event a transaction, 8 clients) to small and to big; the
# latency of an es_select page of 100 at a random position of each (among
# its loaded events, its partition prewarmed: see page()), and the heap and
# index blocks a page read touches (pg_statio of the application's
# partition).  Then the depth (B-tree levels above the leaves) and size of
# big's primary key (pageinspect), from which the depth at 10^9 is worked out.
#
#   make bench-partitions   # PART_SECONDS=5 PART_ROUNDS=3 by default
#
# Writes test/bench/results/partitions.md and partitions.dat.
source "$(dirname "$0")/../scripts/common.sh"

SECONDS_PER_RUN=${PART_SECONDS:-5}
ROUNDS=${PART_ROUNDS:-3}
STEPS=${PART_STEPS:-"100000 1000000 10000000"}
export BENCH_CLUSTER=${BENCH_CLUSTER:-bench-part}

bench_cluster <<CONF
shared_buffers = 512MB
max_wal_size = 8GB
eventsourcing.seal_interval = 0
CONF

STATE=$BENCH_STATE_256
psql -X -q -v ON_ERROR_STOP=1 -d postgres <<SQL
CREATE EXTENSION eventsourcing;
CREATE EXTENSION pageinspect;
CREATE EXTENSION pg_prewarm;
SELECT es_create_application('small');
SELECT es_create_application('big');
CREATE FUNCTION bench_state() RETURNS bytea LANGUAGE sql IMMUTABLE AS \$\$ SELECT convert_to('$STATE', 'UTF8') \$\$;
CREATE FUNCTION bench_uuid(k bigint) RETURNS uuid LANGUAGE sql IMMUTABLE
    AS \$\$ SELECT ('00000000-0000-4000-8000-' || lpad(k::text, 12, '0'))::uuid \$\$;
CREATE TABLE bench_progress (app text PRIMARY KEY, batches bigint NOT NULL);
INSERT INTO bench_progress VALUES ('small', 0), ('big', 0);
-- Grows an application's log to n events: batches of 1,000 (10 aggregates
-- of 100 events), one transaction each.
CREATE PROCEDURE bench_grow(a text, n bigint) LANGUAGE plpgsql AS \$\$
DECLARE have bigint := (SELECT batches FROM bench_progress WHERE app = a);
BEGIN
    FOR b IN have .. n / 1000 - 1 LOOP
        PERFORM count(*) FROM es_append(a, ARRAY(
            SELECT ROW(bench_uuid(1000000000 + b * 10 + g), v, 'Bench.Event', bench_state())::es_event
            FROM generate_series(0, 9) g, generate_series(1, 100) v));
        UPDATE bench_progress SET batches = b + 1 WHERE app = a;
        COMMIT;
    END LOOP;
END \$\$;
CALL bench_grow('small', 100000);
SQL
part_of() { psql -X -At -d postgres -c "SELECT 'es_stored_events_' || id FROM es_applications WHERE name = '$1'"; }
SMALL=$(part_of small); BIG=$(part_of big)

for app in small big; do
    cat >"$WORK/append_$app.sql" <<SQL
SELECT es_append('$app', gen_random_uuid(), 1, 'Bench.Event', bench_state());
SQL
done

# blocks PARTITION -> heap and index blocks touched so far (hit or read)
blocks() {
    psql -X -At -d postgres -c "SELECT heap_blks_hit + heap_blks_read + coalesce(idx_blks_hit, 0) + coalesce(idx_blks_read, 0)
        FROM pg_statio_user_tables WHERE relname = '$1'"
}

# page APP PARTITION N -> "mean_ms p99_ms blocks_per_call": one session
# reading pages of 100 at random positions among the first N events of the
# application's log (those loaded in batches: the events the append runs
# add lie above, spread over the heap by 8 concurrent writers).  The
# partition and its primary key are read into shared_buffers first
# (pg_prewarm), so that what is measured is the read, not what the growth of
# the other application evicted.
page() {
    local app=$1 part=$2 n=$3 before after out
    psql -X -q -d postgres -c "SELECT pg_prewarm('$part'), pg_prewarm('${part}_pkey')" >/dev/null
    cat >"$WORK/page.sql" <<SQL
\\set p random(1, $n - 100)
SELECT count(*), sum(octet_length(state)) FROM es_select('$app', :p, 100);
SQL
    rm -f "$WORK"/log.*
    sleep 1; before=$(blocks "$part")
    out=$(cd "$WORK" && "$PG_BIN/pgbench" -n -M prepared -c 1 -T "$SECONDS_PER_RUN" -l --log-prefix="$WORK/log" \
          -f "$WORK/page.sql" postgres 2>&1) || { echo "$out" >&2; exit 1; }
    sleep 1; after=$(blocks "$part")   # a backend reports its counts as it exits
    cat "$WORK"/log.* | awk '{print $3}' | sort -n | awk -v d=$((after - before)) '{a[NR] = $1; s += $1} END {
        printf "%.3f %.3f %.2f\n", s / NR / 1000, a[int(NR * .99) + 1] / 1000, d / NR}'
}

append_tps() {
    local out
    out=$("$PG_BIN/pgbench" -n -M prepared -c 8 -j 2 -T "$SECONDS_PER_RUN" -f "$WORK/append_$1.sql" postgres 2>&1) || { echo "$out" >&2; exit 1; }
    echo "$out" | sed -n 's/^tps = \([0-9.]*\) .*/\1/p' | tail -1
}

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

: >"$RESULTS/partitions.dat"
for n in $STEPS; do
    log "growing big to $n events"
    psql -X -q -v ON_ERROR_STOP=1 -d postgres -c "CALL bench_grow('big', $n)" -c "VACUUM ANALYZE"
    st=(); bt=(); sp=(); sp99=(); sb=(); bp=(); bp99=(); bb=()
    for ((r = 1; r <= ROUNDS; r++)); do
        for app in $( ((r % 2)) && echo "small big" || echo "big small"); do
            if [ "$app" = small ]; then
                st+=("$(append_tps small)")
                read -r m p b < <(page small "$SMALL" 100000); sp+=("$m"); sp99+=("$p"); sb+=("$b")
            else
                bt+=("$(append_tps big)")
                read -r m p b < <(page big "$BIG" "$n"); bp+=("$m"); bp99+=("$p"); bb+=("$b")
            fi
        done
    done
    read -r level pages < <(psql -X -At -F' ' -d postgres -c \
        "SELECT level, pg_relation_size('${BIG}_pkey') / 8192 FROM bt_metap('${BIG}_pkey')")
    read -r slevel < <(psql -X -At -d postgres -c "SELECT level FROM bt_metap('${SMALL}_pkey')")
    total=$(psql -X -At -d postgres -c "SELECT count(*) FROM es_stored_events")
    row="$n $total $(median "${st[@]}") $(median "${sp[@]}") $(median "${sp99[@]}") $(median "${sb[@]}") $(median "${bt[@]}") $(median "${bp[@]}") $(median "${bp99[@]}") $(median "${bb[@]}") $level $pages $slevel"
    log "$row"
    echo "$row" >>"$RESULTS/partitions.dat"
done

{
    echo "Machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -sr), PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}'); synchronous_commit on, fsync on, shared_buffers 512MB; 256-byte events in aggregates of 100; pgbench -M prepared, ${SECONDS_PER_RUN}s per run, median of $ROUNDS interleaved rounds ($(date -u +%Y-%m-%d))."
    echo
    echo "Application small (10^5 events, its own partition) beside application big, whose log grows:"
    echo
    echo "| events of big | events in the database | small: append tps (8 clients) | small: es_select page of 100, mean / p99 ms | small: blocks a page | big: append tps | big: page mean / p99 ms | big: blocks a page | big's primary key: levels above the leaves, pages | small's: levels |"
    echo "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    awk '{printf "| %d | %d | %.0f | %.3f / %.3f | %.1f | %.0f | %.3f / %.3f | %.1f | %d, %d | %d |\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13}' "$RESULTS/partitions.dat"
    echo
    awk 'NR == 1 {f = $1; t = $3; p = $4; b = $6; bt = $7; bp = $8; bb = $10}
        END {printf "At %d events of big against %d: small append %.2fx, small page %.2fx (blocks %.2fx); big append %.2fx, big page %.2fx (blocks %.2fx).\n",
                    $1, f, $3 / t, $4 / p, $6 / b, $7 / bt, $8 / bp, $10 / bb}' "$RESULTS/partitions.dat"
    # The primary key of 10^9 events: leaves grow with the events, each
    # level above divides by the fan-out measured at the largest size.
    # (an internal page holds about as many keys as a leaf: the same key)
    awk 'END {n = $1; pages = $12; lv = $11;
              perleaf = n / pages; fan = perleaf;
              leaves = 1e9 / perleaf; l = 0; x = leaves; while (x > 1) {x /= fan; l++}
              printf "Extrapolated to 10^9 events in one application: about %.0f leaf pages (%.0f entries a page as measured at %d), %d levels above the leaves (measured at %d: %d), so %d more index page(s) a descent than at %d; the pages above the leaves are about %.0f MB, small enough to stay in shared_buffers.\n",
                     leaves, perleaf, n, l, n, lv, l - lv, n, leaves / fan * 8192 / 1048576}' "$RESULTS/partitions.dat"
} | tee "$RESULTS/partitions.md"
