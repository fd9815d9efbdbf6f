#!/bin/bash
# Dynamic Consistency Boundaries (issue 14): conditional appends against
# aggregate appends and against the table-lock approach of the eventsourcing
# library's PostgreSQL DCB recorder, side by side in one run on a throwaway
# cluster of its own ('bench-dcb', so it can run beside run.sh), interleaved
# in rounds, at 1, 8 and 32 clients; one event of ~256 bytes of JSON data
# with two tags per append:
#
#   es       es_append of a new aggregate (version 1, no read: the baseline
#            of run.sh and of the issue's goal; it is the strict one, since
#            an aggregate writer that is not creating would read first too);
#   dcb      es_dcb_append without a condition;
#   cond     the DCB writer's loop as a client runs it: read the head of its
#            query (es_dcb_head, autocommit), decide, then es_dcb_append with
#            the condition {"fail_if_events_match": [{"tags": [own tag]}],
#            "after": that head} (autocommit).  Two statements, not one
#            transaction: the condition, not a transaction, protects the
#            decision (that is what DCB is for), and the read takes no xid
#            and flushes no WAL.  Tags are the client's own: an entity tag
#            e:<client>:<1..1000> (the condition's item, so the check is a
#            real B-tree range scan after a position that was just read) and
#            c:<client>.  Never fails;
#   cond_own the writer that knows its position: the condition's item is
#            the client's own tag c:<client> (every event of the client
#            carries it) and "after" is the position its previous append
#            returned (kept in a session setting), so no read precedes the
#            append; one statement, like es.  Never fails;
#   cond_fn  the same read and append in one server call (bench_decide, a
#            PL/pgSQL function: the head, then the append in a block that
#            catches 23505, re-reads and retries), so that overlap below can
#            be compared with it: it pays one round trip less and one
#            subtransaction more than cond;
#   overlap  cond_fn with 10% of the appends on a shared tag: the event
#            carries "shared" instead of c:<client> and the condition's item
#            is {"tags": ["shared"]} after the head of "shared" (read from the
#            last head this session saw, as a client keeping its decision
#            model up to date does).  These appends serialize on the tag's
#            lock; one that finds a newer "shared" event (committed between
#            its read and its lock) gets 23505, re-reads and retries.  tps
#            counts successful calls; conflicts (each 23505 caught) are
#            counted in a sequence and reported beside it;
#   lock     the library's approach in SQL: a table (id bigserial, type,
#            data bytea, tags text[] with a GIN index, fastupdate off); read the head of the
#            tag (max(id) of the rows carrying it, autocommit), then BEGIN;
#            LOCK TABLE ... IN EXCLUSIVE MODE; SELECT whether a row carrying
#            the tag lies after the head; INSERT unless one does; COMMIT.
#            Disjoint tags as in cond.
#
# Then the condition check against the size of the log: one application
# loaded to 10^4, 10^6 (and with DCB_FLAT_SIZES more) tagged events (1,000 a
# call of es_dcb_append), entity tags k:<i/10> (10 events each) and category
# tags p:<i%1000> (N/1000 each); at each size, with synchronous_commit off
# so that the commit's flush does not hide it, the per-statement latency
# (pgbench -r) of an unconditional append, of a conditional append on an
# entity tag and on a category tag after the head just read, and of those
# head reads.
#
#   bash test/bench/dcb.sh     # BENCH_SECONDS=10 BENCH_ROUNDS=2 by default
#
# Environment: BENCH_SECONDS, BENCH_ROUNDS, BENCH_CLIENTS ("1 8 32"),
# DCB_SHARED_PERCENT (10), DCB_FLAT_SIZES ("10000 1000000"),
# DCB_FLAT_PROBES (1000 appends a probe), BENCH_CLUSTER (bench-dcb),
# BENCH_INSTALL=0 (use the installed extension: no build, no make install).
# Writes test/bench/results/dcb.md.
BENCH_CLUSTER=${BENCH_CLUSTER:-bench-dcb}
source "$(dirname "$0")/../scripts/common.sh"

SECONDS_PER_RUN=${BENCH_SECONDS:-10}
ROUNDS=${BENCH_ROUNDS:-2}
CLIENTS=${BENCH_CLIENTS:-"1 8 32"}
SHARED_PERCENT=${DCB_SHARED_PERCENT:-10}
FLAT_SIZES=${DCB_FLAT_SIZES:-"10000 1000000"}
FLAT_PROBES=${DCB_FLAT_PROBES:-1000}
VARIANTS="es dcb cond cond_own cond_fn overlap lock"

bench_cluster <<CONF
max_connections = 120
shared_buffers = 512MB
max_wal_size = 8GB
checkpoint_timeout = 30min
CONF

STATE=$BENCH_STATE_256

psql -X -q -v ON_ERROR_STOP=1 -d postgres <<SQL
CREATE EXTENSION eventsourcing;
SELECT es_create_application('bench');
CREATE FUNCTION bench_state() RETURNS bytea LANGUAGE sql STABLE
    AS \$\$ SELECT convert_to('$STATE', 'UTF8') \$\$;
CREATE FUNCTION bench_data() RETURNS jsonb LANGUAGE sql STABLE
    AS \$\$ SELECT '$STATE'::jsonb \$\$;
-- The tags of client c's append on entity k: its entity tag, and its own
-- tag or the shared one.
CREATE FUNCTION bench_entity(c int, k int) RETURNS text LANGUAGE sql STABLE
    AS \$\$ SELECT 'e:' || c || ':' || k \$\$;
CREATE FUNCTION bench_events(c int, k int, shared bool) RETURNS jsonb LANGUAGE sql STABLE AS \$\$
    SELECT jsonb_build_array(jsonb_build_object('type', 'Bench.Event', 'data', bench_data(),
        'tags', jsonb_build_array(bench_entity(c, k), CASE WHEN shared THEN 'shared' ELSE 'c:' || c END)))
\$\$;
CREATE FUNCTION bench_query(tag text) RETURNS jsonb LANGUAGE sql STABLE
    AS \$\$ SELECT jsonb_build_array(jsonb_build_object('tags', jsonb_build_array(tag))) \$\$;
CREATE FUNCTION bench_condition(tag text, after bigint) RETURNS jsonb LANGUAGE sql STABLE
    AS \$\$ SELECT jsonb_build_object('fail_if_events_match', bench_query(tag), 'after', after) \$\$;
CREATE SEQUENCE bench_conflicts;
CREATE SEQUENCE bench_shared;
-- Read the head of the query, append on that condition; on 23505 read again
-- and retry.  The shared tag's head is read from the last one this session
-- saw (a client keeping its decision model up to date), an entity's whole.
CREATE FUNCTION bench_decide(c int, k int, shared bool) RETURNS bigint LANGUAGE plpgsql AS \$\$
DECLARE
    tag text := CASE WHEN shared THEN 'shared' ELSE bench_entity(c, k) END;
    query jsonb := bench_query(tag);
    events jsonb := bench_events(c, k, shared);
    after bigint;
BEGIN
    IF shared THEN PERFORM nextval('bench_shared'); END IF;
    LOOP
        after := es_dcb_head('bench', query,
            CASE WHEN shared THEN nullif(current_setting('bench.shared_head', true), '')::bigint END);
        IF shared THEN PERFORM set_config('bench.shared_head', after::text, false); END IF;
        BEGIN
            RETURN es_dcb_append('bench', events, jsonb_build_object('fail_if_events_match', query, 'after', after));
        EXCEPTION WHEN unique_violation THEN
            PERFORM nextval('bench_conflicts');
        END;
    END LOOP;
END \$\$;
-- The eventsourcing library's approach: one table, tags in an array with a
-- GIN index (fastupdate off: no pending list for every read to scan), the
-- whole table locked for each conditional append.
CREATE TABLE lock_events (
    id bigserial PRIMARY KEY, type text NOT NULL, data bytea NOT NULL,
    tags text[] NOT NULL, recorded_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX lock_events_tags ON lock_events USING gin (tags) WITH (fastupdate = off);
SQL

cat >"$WORK/es.sql" <<'SQL'
SELECT es_append('bench', gen_random_uuid(), 1, 'Bench.Event', bench_state());
SQL
cat >"$WORK/dcb.sql" <<'SQL'
\set k random(1, 1000)
SELECT es_dcb_append('bench', bench_events(:client_id, :k, false));
SQL
cat >"$WORK/cond.sql" <<'SQL'
\set k random(1, 1000)
SELECT es_dcb_head('bench', bench_query(bench_entity(:client_id, :k))) AS after \gset
SELECT es_dcb_append('bench', bench_events(:client_id, :k, false), bench_condition(bench_entity(:client_id, :k), :after));
SQL
cat >"$WORK/cond_own.sql" <<'SQL'
\set k random(1, 1000)
SELECT set_config('bench.own', es_dcb_append('bench', bench_events(:client_id, :k, false),
    bench_condition('c:' || :client_id, coalesce(nullif(current_setting('bench.own', true), ''), '0')::bigint))::text, false);
SQL
cat >"$WORK/cond_fn.sql" <<'SQL'
\set k random(1, 1000)
SELECT bench_decide(:client_id, :k, false);
SQL
cat >"$WORK/overlap.sql" <<SQL
\set k random(1, 1000)
\set r random(1, 100)
SELECT bench_decide(:client_id, :k, :r <= $SHARED_PERCENT);
SQL
cat >"$WORK/lock.sql" <<'SQL'
\set k random(1, 1000)
SELECT coalesce(max(id), 0) AS after FROM (SELECT id FROM lock_events WHERE tags @> ARRAY[bench_entity(:client_id, :k)] OFFSET 0) read \gset
BEGIN;
LOCK TABLE lock_events IN EXCLUSIVE MODE;
SELECT EXISTS (SELECT FROM lock_events WHERE tags @> ARRAY[bench_entity(:client_id, :k)] AND id > :after) AS conflict \gset
\if :conflict
ROLLBACK;
\else
INSERT INTO lock_events (type, data, tags) VALUES ('Bench.Event', bench_state(), ARRAY[bench_entity(:client_id, :k), 'c:' || :client_id]);
COMMIT;
\endif
SQL

reset_tables() {
    psql -X -q -v ON_ERROR_STOP=1 -d postgres -c "SET eventsourcing.allow_rewrite = on" \
        -c "TRUNCATE lock_events, es_stored_events, es_dcb_index" -c "VACUUM ANALYZE" -c "CHECKPOINT" >/dev/null
}

counter() { psql -X -qAt -d postgres -c "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM $1"; }

# run SCRIPT CLIENTS -> "tps latency_ms conflicts shared"
run() {
    local script=$1 clients=$2 jobs out c0 s0
    jobs=$(( clients < 2 ? 1 : 2 ))
    reset_tables
    c0=$(counter bench_conflicts); s0=$(counter bench_shared)
    out=$("$PG_BIN/pgbench" -n -M prepared -c "$clients" -j "$jobs" -T "$SECONDS_PER_RUN" \
          -f "$WORK/$script.sql" postgres 2>&1) || { echo "$out" >&2; exit 1; }
    if echo "$out" | grep -q "aborted"; then echo "$out" >&2; exit 1; fi
    local tps lat
    tps=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\) .*/\1/p' | tail -1)
    lat=$(echo "$out" | sed -n 's/^latency average = \([0-9.]*\) ms/\1/p')
    echo "$tps $lat $(( $(counter bench_conflicts) - c0 )) $(( $(counter bench_shared) - s0 ))"
}

declare -A TPS LAT CONFLICTS SHARED
for ((r = 1; r <= ROUNDS; r++)); do
    for c in $CLIENTS; do
        for s in $VARIANTS; do
            read -r tps lat conf shr < <(run "$s" "$c")
            log "round $r, $c clients, $s: $tps tps, $lat ms$( [ "$s" = overlap ] && echo ", $shr shared, $conf conflicts")"
            TPS[$s,$c]="${TPS[$s,$c]:-} $tps"; LAT[$s,$c]="${LAT[$s,$c]:-} $lat"
            CONFLICTS[$s,$c]=$(( ${CONFLICTS[$s,$c]:-0} + conf )); SHARED[$s,$c]=$(( ${SHARED[$s,$c]:-0} + shr ))
        done
    done
done

# --- the condition check against the size of the log
reset_tables
psql -X -q -v ON_ERROR_STOP=1 -d postgres <<'SQL'
SELECT es_create_application('flat');
CREATE SEQUENCE flat_batch MINVALUE 0 START 0;
SQL
cat >"$WORK/flat_load.sql" <<'SQL'
SELECT nextval('flat_batch') AS b \gset
SELECT es_dcb_append('flat', (SELECT jsonb_agg(jsonb_build_object('type', 'Flat.Event', 'data', bench_data(),
    'tags', jsonb_build_array('k:' || (i / 10), 'p:' || (i % 1000)))) FROM generate_series(:b * 1000, :b * 1000 + 999) i));
SQL
# Probes on entity k (10 events in the log) and category p (N/1000 events):
# append unconditionally, or read the head and append on the condition.
probe_script() {
    local n=$1
    cat >"$WORK/flat_plain.sql" <<SQL
\set k random(0, $n / 10 - 1)
SELECT es_dcb_append('flat', jsonb_build_array(jsonb_build_object('type', 'Flat.Event', 'data', bench_data(), 'tags', jsonb_build_array('k:' || :k, 'p:' || (:k * 10 % 1000)))));
SQL
    cat >"$WORK/flat_entity.sql" <<SQL
\set k random(0, $n / 10 - 1)
SELECT es_dcb_head('flat', bench_query('k:' || :k)) AS after \gset
SELECT es_dcb_append('flat', jsonb_build_array(jsonb_build_object('type', 'Flat.Event', 'data', bench_data(), 'tags', jsonb_build_array('k:' || :k, 'p:' || (:k * 10 % 1000)))), bench_condition('k:' || :k, :after));
SQL
    cat >"$WORK/flat_category.sql" <<SQL
\set k random(0, $n / 10 - 1)
SELECT es_dcb_head('flat', bench_query('p:' || (:k * 10 % 1000))) AS after \gset
SELECT es_dcb_append('flat', jsonb_build_array(jsonb_build_object('type', 'Flat.Event', 'data', bench_data(), 'tags', jsonb_build_array('k:' || :k, 'p:' || (:k * 10 % 1000)))), bench_condition('p:' || (:k * 10 % 1000), :after));
SQL
}
# statement_latency OUTPUT PATTERN -> ms of the first statement matching
statement_latency() { echo "$1" | awk -v p="$2" '$0 ~ p && $1 ~ /^[0-9.]+$/ {print $1; exit}'; }

declare -A FLAT LOADTIME
loaded=0
for n in $FLAT_SIZES; do
    batches=$(( (n - loaded) / 1000 ))
    if [ "$batches" -gt 0 ]; then
        t0=$(date +%s.%N)
        # Two loaders (two cores), synchronous_commit off: every call commits.
        PGOPTIONS='-c synchronous_commit=off' "$PG_BIN/pgbench" -n -c 2 -j 2 -t $(( (batches + 1) / 2 )) \
            -f "$WORK/flat_load.sql" postgres >/dev/null 2>&1 || { echo "loading failed" >&2; exit 1; }
        LOADTIME[$n]=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.0f", b - a}')
    fi
    psql -X -q -d postgres -c "VACUUM ANALYZE es_stored_events" -c "VACUUM ANALYZE es_dcb_index" -c "CHECKPOINT" >/dev/null
    loaded=$(psql -X -qAt -d postgres -c "SELECT count(*) FROM es_stored_events e JOIN es_applications a ON a.id = e.application_id WHERE a.name = 'flat'")
    log "flat: $loaded events in the log (${LOADTIME[$n]:-0} s to load)"
    probe_script "$n"
    for ((r = 1; r <= ROUNDS; r++)); do
        for s in flat_plain flat_entity flat_category; do
            out=$(PGOPTIONS='-c synchronous_commit=off' "$PG_BIN/pgbench" -n -M prepared -r -c 1 -t "$FLAT_PROBES" \
                  -f "$WORK/$s.sql" postgres 2>&1) || { echo "$out" >&2; exit 1; }
            app=$(statement_latency "$out" "es_dcb_append"); head=$(statement_latency "$out" "es_dcb_head")
            log "round $r, $n events, $s: append $app ms${head:+, head $head ms}"
            FLAT[$s,$n,append]="${FLAT[$s,$n,append]:-} $app"; FLAT[$s,$n,head]="${FLAT[$s,$n,head]:-} ${head:-}"
        done
    done
    FLAT[$n,size]=$(psql -X -qAt -d postgres -c "SELECT pg_size_pretty(pg_total_relation_size('es_stored_events') + pg_total_relation_size('es_dcb_index'))")
    FLAT[$n,count]=$loaded
done

mean() { echo "$@" | tr ' ' '\n' | awk 'NF {s += $1; n++} END {if (n) printf "%.3f", s / n; else printf "-"}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }

{
    echo "# DCB appends (issue 14): test/bench/dcb.sh"
    echo
    echo "Machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -sr), PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}'), eventsourcing $( [ "${BENCH_INSTALL:-1}" = 0 ] && echo "as installed (not rebuilt; checkout at $(git -C "$ROOT" rev-parse --short HEAD))" || git -C "$ROOT" rev-parse --short HEAD); shared_buffers 512MB, synchronous_commit on, fsync on; pgbench -M prepared, ${SECONDS_PER_RUN}s per run, mean of $ROUNDS interleaved rounds, tables emptied before each run, all in one run ($(date -u +%Y-%m-%d)). One event a call, ~256 bytes of JSON data, two tags; disjoint tags are per client (entity e:<client>:<1..1000> and c:<client>); overlap puts ${SHARED_PERCENT}% of the appends on one shared tag. The machine is shared with other work: compare within a row."
    echo
    echo "| clients | es_append tps | dcb unconditional | dcb conditional (read + append) | conditional, own last position (no read) |  conditional, one call (PL/pgSQL) | ${SHARED_PERCENT}% overlapping, one call | LOCK TABLE (library) | conditional / es_append | own position / es_append | conditional / LOCK TABLE | overlap: shared appends, conflicts (23505, retried) |"
    echo "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    for c in $CLIENTS; do
        e=$(mean ${TPS[es,$c]}); d=$(mean ${TPS[dcb,$c]}); k=$(mean ${TPS[cond,$c]}); f=$(mean ${TPS[cond_fn,$c]}); w=$(mean ${TPS[cond_own,$c]})
        o=$(mean ${TPS[overlap,$c]}); l=$(mean ${TPS[lock,$c]})
        echo "| $c | $e | $d | $k | $w | $f | $o | $l | $(ratio "$k" "$e") | $(ratio "$w" "$e") | $(ratio "$k" "$l") | ${SHARED[overlap,$c]} shared, ${CONFLICTS[overlap,$c]} conflicts |"
    done
    echo
    echo "Mean latency (ms):"
    echo
    echo "| clients | $(echo $VARIANTS | sed 's/ / | /g') |"
    echo "| ---: |$(for s in $VARIANTS; do printf ' ---: |'; done)"
    for c in $CLIENTS; do
        printf '| %s |' "$c"; for s in $VARIANTS; do printf ' %s |' "$(mean ${LAT[$s,$c]})"; done; echo
    done
    echo
    echo "Goals (issue 14), from the mean tps above: conditional (read + append) / es_append >= 0.8 at every client count: $(for c in $CLIENTS; do printf '%s clients %s; ' "$c" "$(ratio "$(mean ${TPS[cond,$c]})" "$(mean ${TPS[es,$c]})")"; done)conditional / LOCK TABLE >= 3 at 32 clients: $( [ -n "${TPS[cond,32]:-}" ] && ratio "$(mean ${TPS[cond,32]})" "$(mean ${TPS[lock,32]})" || echo "not measured")."
    echo
    echo "The condition check against the size of the log: per-statement latency (pgbench -r, ms), 1 client, synchronous_commit off, $FLAT_PROBES calls a probe, mean of $ROUNDS rounds. Entity tags carry 10 events each, category tags N/1000; the condition's after is the head just read, so the check finds nothing and costs its index descents."
    echo
    echo "| events in the log | tables + indexes | unconditional append | conditional append, entity tag | its head read | conditional append, category tag | its head read | entity conditional - unconditional |"
    echo "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    for n in $FLAT_SIZES; do
        p=$(mean ${FLAT[flat_plain,$n,append]}); en=$(mean ${FLAT[flat_entity,$n,append]}); ca=$(mean ${FLAT[flat_category,$n,append]})
        echo "| ${FLAT[$n,count]} | ${FLAT[$n,size]} | $p | $en | $(mean ${FLAT[flat_entity,$n,head]}) | $ca | $(mean ${FLAT[flat_category,$n,head]}) | $(awk -v a="$en" -v b="$p" 'BEGIN {printf "%.3f", a - b}') |"
    done
    echo
    echo "Loading (es_dcb_append of 1,000 events a call, 2 clients, synchronous_commit off): $(for n in $FLAT_SIZES; do [ -n "${LOADTIME[$n]:-}" ] && printf '%s s up to %s; ' "${LOADTIME[$n]}" "$n"; done)"
} | tee "$RESULTS/dcb.md"
rm -rf "$WORK"
