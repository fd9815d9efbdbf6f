#!/bin/bash
# The benchmark harness: es_append against a plain INSERT (bigserial id, the
# same indexes, no ordering guarantee) and against the table-lock approach of
# the eventsourcing library's PostgreSQL recorder (LOCK TABLE ... IN EXCLUSIVE
# MODE, then INSERT), side by side in one run on a throwaway cluster.
#
#   make bench                 # BENCH_SECONDS=10 BENCH_ROUNDS=2 by default
#   BENCH_ONLY=replay bash test/bench/run.sh   # only one section: append,
#                              # verify or replay (its table alone, not saved)
#
# Prints a markdown table of transactions/s (and events/s for batches) with
# the ratios, and saves it in test/bench/results/latest.md.
source "$(dirname "$0")/../scripts/common.sh"

SECONDS_PER_RUN=${BENCH_SECONDS:-10}
ROUNDS=${BENCH_ROUNDS:-2}
CLIENTS=${BENCH_CLIENTS:-"1 8 32"}
BATCH_CLIENTS=${BENCH_BATCH_CLIENTS:-8}
BENCH="$ROOT/test/bench"
ONLY=${BENCH_ONLY:-}
case "$ONLY" in ""|append|verify|replay) ;; *) echo "BENCH_ONLY: append, verify or replay" >&2; exit 2 ;; esac
section() { [ -z "$ONLY" ] || [ "$ONLY" = "$1" ]; }

bench_cluster <<CONF
max_connections = 120
shared_buffers = 256MB
CONF

psql -X -q -v ON_ERROR_STOP=1 -d postgres <<'SQL'
CREATE EXTENSION eventsourcing;
SELECT es_create_application('bench');
CREATE TABLE plain_events (
    application_id integer NOT NULL, notification_id bigserial NOT NULL,
    originator_id uuid NOT NULL, originator_version bigint NOT NULL,
    topic text COLLATE "C" NOT NULL, state bytea NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (application_id, notification_id),
    UNIQUE (application_id, originator_id, originator_version));
CREATE TABLE locked_events (LIKE plain_events INCLUDING ALL);
CREATE SEQUENCE locked_events_seq;
ALTER TABLE locked_events ALTER notification_id SET DEFAULT nextval('locked_events_seq');
SQL

cat >"$WORK/es.sql" <<'SQL'
SELECT es_append('bench', gen_random_uuid(), 1, 'Bench.Event', '\x7b22a22a7d');
SQL
cat >"$WORK/plain.sql" <<'SQL'
INSERT INTO plain_events (application_id, originator_id, originator_version, topic, state)
VALUES (1, gen_random_uuid(), 1, 'Bench.Event', '\x7b22a22a7d');
SQL
cat >"$WORK/lock.sql" <<'SQL'
BEGIN;
LOCK TABLE locked_events IN EXCLUSIVE MODE;
INSERT INTO locked_events (application_id, originator_id, originator_version, topic, state)
VALUES (1, gen_random_uuid(), 1, 'Bench.Event', '\x7b22a22a7d');
COMMIT;
SQL
cat >"$WORK/es_batch.sql" <<'SQL'
SELECT count(*) FROM es_append('bench', ARRAY(
    SELECT ROW(gen_random_uuid(), 1, 'Bench.Event', '\x7b22a22a7d'::bytea)::es_event
    FROM generate_series(1, 100)));
SQL
cat >"$WORK/plain_batch.sql" <<'SQL'
INSERT INTO plain_events (application_id, originator_id, originator_version, topic, state)
SELECT 1, gen_random_uuid(), 1, 'Bench.Event', '\x7b22a22a7d' FROM generate_series(1, 100);
SQL

reset_tables() {
    psql -X -q -v ON_ERROR_STOP=1 -d postgres -c "SET eventsourcing.allow_rewrite = on" -c "TRUNCATE plain_events, locked_events, es_stored_events" -c "CHECKPOINT" >/dev/null
}

# run SCRIPT CLIENTS -> "tps latency_ms"
run() {
    local script=$1 clients=$2 jobs out
    jobs=$(( clients < 2 ? 1 : 2 ))
    reset_tables
    out=$("$PG_BIN/pgbench" -n -M prepared -c "$clients" -j "$jobs" -T "$SECONDS_PER_RUN" \
          -f "$WORK/$script.sql" postgres 2>&1) || { echo "$out" >&2; exit 1; }
    local tps lat
    tps=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\) .*/\1/p' | tail -1)
    lat=$(echo "$out" | sed -n 's/^latency average = \([0-9.]*\) ms/\1/p')
    echo "$tps $lat"
}

declare -A TPS LAT
for ((r = 1; r <= ROUNDS; r++)); do
    section append || break
    for c in $CLIENTS; do
        for s in plain es lock; do
            read -r tps lat < <(run "$s" "$c")
            log "round $r, $c clients, $s: $tps tps, $lat ms"
            TPS[$s,$c]="${TPS[$s,$c]:-} $tps"; LAT[$s,$c]="${LAT[$s,$c]:-} $lat"
        done
    done
    for s in plain_batch es_batch; do
        read -r tps lat < <(run "$s" "$BATCH_CLIENTS")
        log "round $r, $BATCH_CLIENTS clients, $s: $tps tps"
        TPS[$s,$BATCH_CLIENTS]="${TPS[$s,$BATCH_CLIENTS]:-} $tps"
    done
done

# --- verification speed: es_verify over N events against reading the same rows
VERIFY_EVENTS=${BENCH_VERIFY_EVENTS:-100000}
section verify && psql -X -q -v ON_ERROR_STOP=1 -d postgres <<SQL
SELECT es_create_application('verify');
-- one aggregate of N events, and N events over 1000 aggregates
SELECT count(*) FROM generate_series(0, $VERIFY_EVENTS / 1000 - 1) b,
    LATERAL es_append('verify', ARRAY(
        SELECT ROW('00000000-0000-4000-8000-000000000001'::uuid, b * 1000 + i, 'Bench.Event',
                   convert_to('{"n":' || (b * 1000 + i) || ',"text":"some event state of a typical size"}', 'UTF8'))::es_event
        FROM generate_series(1, 1000) i));
SELECT es_create_application('verify_many');
SELECT count(*) FROM generate_series(0, $VERIFY_EVENTS / 1000 - 1) b,
    LATERAL es_append('verify_many', ARRAY(
        SELECT ROW(('00000000-0000-4000-8000-' || lpad(i::text, 12, '0'))::uuid, b + 1, 'Bench.Event',
                   convert_to('{"n":' || (b * 1000 + i) || ',"text":"some event state of a typical size"}', 'UTF8'))::es_event
        FROM generate_series(1, 1000) i));
SELECT es_seal('verify_many') IS NOT NULL;
VACUUM ANALYZE es_stored_events;
SQL
cat >"$WORK/read_one.sql" <<'SQL'
SELECT count(*), sum(octet_length(state)) FROM es_events('verify', '00000000-0000-4000-8000-000000000001');
SQL
cat >"$WORK/verify_one.sql" <<'SQL'
SELECT ok FROM es_verify('verify', '00000000-0000-4000-8000-000000000001');
SQL
cat >"$WORK/read_log.sql" <<'SQL'
SELECT count(*), sum(octet_length(state)) FROM es_select('verify_many', 1, 2000000000);
SQL
cat >"$WORK/verify_log.sql" <<'SQL'
SELECT count(*) FROM es_verify_log('verify_many');
SQL
declare -A VLAT
for ((r = 1; r <= ROUNDS; r++)); do
    section verify || break
    for s in read_one verify_one read_log verify_log; do
        out=$("$PG_BIN/pgbench" -n -c 1 -t 20 -f "$WORK/$s.sql" postgres 2>&1) || { echo "$out" >&2; exit 1; }
        lat=$(echo "$out" | sed -n 's/^latency average = \([0-9.]*\) ms/\1/p')
        log "round $r, $s over $VERIFY_EVENTS events: $lat ms"
        VLAT[$s]="${VLAT[$s]:-} $lat"
    done
done

# --- replay: one aggregate of N events, declarative folds vs PL/pgSQL vs reading
REPLAY_EVENTS=${BENCH_REPLAY_EVENTS:-10000}
section replay && psql -X -q -v ON_ERROR_STOP=1 -d postgres <<SQL
SELECT es_create_application('replay');
SELECT es_define_fold('replay', 'Dog.Registered', '[{"op": "set", "path": "name", "from": "name"}, {"op": "set", "path": "tricks", "value": []}]');
SELECT es_define_fold('replay', 'Dog.TrickAdded', '[{"op": "append", "path": "tricks", "from": "trick"}]');
CREATE FUNCTION bench_dog_fold(state jsonb, topic text, event jsonb) RETURNS jsonb LANGUAGE plpgsql AS \$\$
BEGIN
    IF topic = 'Dog.Registered' THEN
        RETURN jsonb_build_object('name', event->'name', 'tricks', '[]'::jsonb);
    ELSIF topic = 'Dog.TrickAdded' THEN
        RETURN jsonb_set(state, '{tricks}', (state->'tricks') || jsonb_build_array(event->'trick'));
    END IF;
    RETURN state;
END \$\$;
-- two identical dogs; the second gets a snapshot 100 events before its end
$(bench_replay_dogs "$REPLAY_EVENTS")
VACUUM ANALYZE es_stored_events;
SQL
echo "SELECT count(*), sum(octet_length(state)) FROM es_events('replay', '00000000-0000-4000-8000-00000000d001');" >"$WORK/replay_read.sql"
echo "SELECT es_replay('replay', e) IS NOT NULL FROM es_events('replay', '00000000-0000-4000-8000-00000000d001') e;" >"$WORK/replay_declarative.sql"
echo "SELECT es_replay('replay', originator_id, originator_version, topic, state) IS NOT NULL FROM es_events('replay', '00000000-0000-4000-8000-00000000d001');" >"$WORK/replay_columns.sql"
echo "SELECT es_replay('replay', e, 'bench_dog_fold') IS NOT NULL FROM es_events('replay', '00000000-0000-4000-8000-00000000d001') e;" >"$WORK/replay_plpgsql.sql"
echo "SELECT es_state('replay', '00000000-0000-4000-8000-00000000d001') IS NOT NULL;" >"$WORK/state_full.sql"
echo "SELECT es_state('replay', '00000000-0000-4000-8000-00000000d002') IS NOT NULL;" >"$WORK/state_snapshot.sql"
declare -A RLAT
for ((r = 1; r <= ROUNDS; r++)); do
    section replay || break
    for s in replay_read replay_declarative replay_columns replay_plpgsql state_full state_snapshot; do
        out=$("$PG_BIN/pgbench" -n -c 1 -t "$([ "$s" = replay_plpgsql ] && echo 1 || echo 20)" -f "$WORK/$s.sql" postgres 2>&1) || { echo "$out" >&2; exit 1; }
        lat=$(echo "$out" | sed -n 's/^latency average = \([0-9.]*\) ms/\1/p')
        log "round $r, $s over $REPLAY_EVENTS events: $lat ms"
        RLAT[$s]="${RLAT[$s]:-} $lat"
    done
done

mean() { echo "$@" | tr ' ' '\n' | awk 'NF {s += $1; n++} END {printf "%.3f", s / n}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }

# (a single section is shown, not saved in latest.md)
if [ -n "$ONLY" ]; then SAVE=/dev/null; else SAVE="$RESULTS/latest.md"; fi
{
    echo "Machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -sr), PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}'), synchronous_commit on, fsync on; pgbench -M prepared, ${SECONDS_PER_RUN}s per run, mean of $ROUNDS rounds (verification and replay: 20 calls a round, the PL/pgSQL fold 1), all in one run ($(date -u +%Y-%m-%d))."
    if section append; then
    echo
    echo "| clients | plain INSERT tps | es_append tps | LOCK TABLE + INSERT tps | es_append / plain | LOCK TABLE / plain | es_append latency / plain |"
    echo "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    for c in $CLIENTS; do
        p=$(mean ${TPS[plain,$c]}); e=$(mean ${TPS[es,$c]}); l=$(mean ${TPS[lock,$c]})
        pl=$(mean ${LAT[plain,$c]}); el=$(mean ${LAT[es,$c]})
        echo "| $c | $p | $e | $l | $(ratio "$e" "$p") | $(ratio "$l" "$p") | $(ratio "$el" "$pl") |"
    done
    echo
    p=$(mean ${TPS[plain_batch,$BATCH_CLIENTS]}); e=$(mean ${TPS[es_batch,$BATCH_CLIENTS]})
    pe=$(awk -v t="$p" 'BEGIN {printf "%.0f", t * 100}'); ee=$(awk -v t="$e" 'BEGIN {printf "%.0f", t * 100}')
    echo "| batches of 100 events, $BATCH_CLIENTS clients | multi-row INSERT events/s | es_append events/s | es_append / INSERT |"
    echo "| --- | ---: | ---: | ---: |"
    echo "| | $pe | $ee | $(ratio "$e" "$p") |"
    fi
    if section verify; then
    echo
    echo "| $VERIFY_EVENTS events | read the rows, events/s | verify, events/s | verify / read |"
    echo "| --- | ---: | ---: | ---: |"
    for pair in "one aggregate:es_events:read_one:es_verify:verify_one" "1000 aggregates and a seal:es_select:read_log:es_verify_log:verify_log"; do
        IFS=: read -r label rname rkey vname vkey <<<"$pair"
        rl=$(mean ${VLAT[$rkey]}); vl=$(mean ${VLAT[$vkey]})
        echo "| $label: $rname vs $vname | $(awk -v n="$VERIFY_EVENTS" -v l="$rl" 'BEGIN {printf "%.0f", n / l * 1000}') | $(awk -v n="$VERIFY_EVENTS" -v l="$vl" 'BEGIN {printf "%.0f", n / l * 1000}') | $(ratio "$rl" "$vl") |"
    done
    fi
    if section replay; then
    echo
    echo "| replay of one aggregate of $REPLAY_EVENTS events | ms | events/s | vs reading the rows |"
    echo "| --- | ---: | ---: | ---: |"
    rd=$(mean ${RLAT[replay_read]})
    for pair in "reading the rows (es_events):replay_read" "es_replay(app, row), declarative folds (C):replay_declarative" "es_replay(app, columns), declarative folds (C):replay_columns" "es_replay, the same fold in PL/pgSQL:replay_plpgsql" "es_state, no snapshot:state_full" "es_state, snapshot 100 events before the end:state_snapshot"; do
        IFS=: read -r label key <<<"$pair"
        l=$(mean ${RLAT[$key]})
        echo "| $label | $l | $(awk -v n="$REPLAY_EVENTS" -v l="$l" 'BEGIN {printf "%.0f", n / l * 1000}') | $(ratio "$l" "$rd")x the time |"
    done
    echo
    echo "Declarative folds vs PL/pgSQL: $(ratio "$(mean ${RLAT[replay_plpgsql]})" "$(mean ${RLAT[replay_declarative]})")x faster."
    fi
} | tee "$SAVE"
rm -rf "$WORK"
