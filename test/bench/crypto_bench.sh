#!/bin/bash
# Compression and encryption, side by side in one run on a throwaway cluster:
# es_append at 1 and 32 clients and in batches of 100 (8 clients), for six
# applications that differ only in es_configure (neither, compression,
# compression with a preset dictionary, encryption, compression and
# encryption, all three); es_select of 1,000 events and es_state of a
# 10,000-event aggregate, plain and encrypted; the stored bytes per event.
# Events are small realistic JSON documents (about 250 bytes).
#
#   bash test/bench/crypto_bench.sh      # BENCH_SECONDS=5 BENCH_ROUNDS=2 by default
#
# Prints markdown tables and saves them in test/bench/results/crypto.md.
source "$(dirname "$0")/../scripts/common.sh"

SECONDS_PER_RUN=${BENCH_SECONDS:-5}
ROUNDS=${BENCH_ROUNDS:-2}
BENCH="$ROOT/test/bench"
CONFIGS="neither compression dictionary encryption both all"

bench_cluster <<CONF
max_connections = 120
shared_buffers = 256MB
CONF

# A realistic small event: an order line of a shop, about 250 bytes of JSON.
EVENT="convert_to(json_build_object('order_id', gen_random_uuid(), 'customer', 'customer-' || (random() * 100000)::int,
  'sku', 'SKU-' || (random() * 5000)::int, 'quantity', 1 + (random() * 5)::int, 'unit_price', round((random() * 100)::numeric, 2),
  'currency', 'EUR', 'shipping', json_build_object('method', 'standard', 'country', 'DE', 'postcode', lpad(((random() * 99999)::int)::text, 5, '0')),
  'placed_at', now())::text, 'UTF8')"

psql -X -q -v ON_ERROR_STOP=1 -d postgres <<SQL
CREATE EXTENSION eventsourcing;
SELECT es_create_application(c) FROM unnest(string_to_array('$CONFIGS', ' ')) c;
SELECT es_configure('compression', compression => true);
SELECT es_configure('encryption', encryption => true);
SELECT es_configure('both', compression => true, encryption => true);
SELECT es_configure('dictionary', compression => true);
SELECT es_configure('all', compression => true, encryption => true);
-- a dictionary an admin would write: the events' field names and common values
SELECT es_set_compression_dictionary(a, convert_to('{"order_id": "", "customer": "customer-", "sku": "SKU-", "quantity": , "unit_price": , "currency": "EUR", "shipping": {"method": "standard", "country": "DE", "postcode": ""}, "placed_at": "2026-11-25T', 'UTF8'))
FROM unnest(ARRAY['dictionary', 'all']) a;
SQL
for c in $CONFIGS; do
    echo "SELECT es_append('$c', gen_random_uuid(), 1, 'Shop.OrderLineAdded', $EVENT);" >"$WORK/one_$c.sql"
    echo "SELECT count(*) FROM es_append('$c', ARRAY(SELECT ROW(gen_random_uuid(), 1, 'Shop.OrderLineAdded', $EVENT)::es_event FROM generate_series(1, 100)));" >"$WORK/batch_$c.sql"
    # 100 events of 10 new aggregates: one data key per 10 events
    echo "SELECT count(*) FROM es_append('$c', ARRAY(SELECT ROW(a.id, v, 'Shop.OrderLineAdded', $EVENT)::es_event FROM (SELECT gen_random_uuid() AS id FROM generate_series(1, 10)) a, generate_series(1, 10) v ORDER BY a.id, v));" >"$WORK/batch10_$c.sql"
done

reset_tables() {
    psql -X -q -v ON_ERROR_STOP=1 -d postgres -c "SET eventsourcing.allow_rewrite = on" \
        -c "TRUNCATE es_stored_events; DELETE FROM es_keys; DELETE FROM es_snapshots" -c "CHECKPOINT" >/dev/null
}

run() {
    local script=$1 clients=$2 jobs out
    jobs=$(( clients < 2 ? 1 : 2 ))
    reset_tables
    out=$("$PG_BIN/pgbench" -n -M prepared -c "$clients" -j "$jobs" -T "$SECONDS_PER_RUN" \
          -f "$WORK/$script.sql" postgres 2>&1) || { echo "$out" >&2; exit 1; }
    echo "$out" | sed -n 's/^tps = \([0-9.]*\) .*/\1/p' | tail -1
}

declare -A TPS
for ((r = 1; r <= ROUNDS; r++)); do
    for kind in "one 1" "one 32" "batch 8" "batch10 8"; do
        read -r script clients <<<"$kind"
        for c in $CONFIGS; do
            tps=$(run "${script}_$c" "$clients")
            log "round $r, $script, $clients clients, $c: $tps tps"
            TPS[$script,$clients,$c]="${TPS[$script,$clients,$c]:-} $tps"
        done
    done
done

# Reads, and the stored size: 10,000 events of one aggregate and 1,000 of the log per application.
reset_tables
psql -X -q -v ON_ERROR_STOP=1 -d postgres <<SQL
SELECT count(*) FROM unnest(string_to_array('$CONFIGS', ' ')) c, generate_series(0, 9) b,
    LATERAL es_append(c, ARRAY(
        SELECT ROW('00000000-0000-4000-8000-00000000d001'::uuid, b * 1000 + i, 'Shop.OrderLineAdded', $EVENT)::es_event
        FROM generate_series(1, 1000) i));
VACUUM ANALYZE es_stored_events;
SQL
declare -A RLAT
for ((r = 1; r <= ROUNDS; r++)); do
    for c in $CONFIGS; do
        echo "SELECT count(*), sum(octet_length(state)) FROM es_select('$c', 1, 1000);" >"$WORK/select_$c.sql"
        echo "SELECT es_state('$c', '00000000-0000-4000-8000-00000000d001') IS NOT NULL;" >"$WORK/state_$c.sql"
        for s in select state; do
            out=$("$PG_BIN/pgbench" -n -c 1 -t 20 -f "$WORK/${s}_$c.sql" postgres 2>&1) || { echo "$out" >&2; exit 1; }
            lat=$(echo "$out" | sed -n 's/^latency average = \([0-9.]*\) ms/\1/p')
            log "round $r, $s, $c: $lat ms"
            RLAT[$s,$c]="${RLAT[$s,$c]:-} $lat"
        done
    done
done
declare -A SIZE PLAIN
for c in $CONFIGS; do
    SIZE[$c]=$(psql -X -At -d postgres -c "SELECT round(avg(octet_length(stored_state)), 1) FROM es_select_stored('$c', 1, 10000)")
    PLAIN[$c]=$(psql -X -At -d postgres -c "SELECT round(avg(octet_length(state)), 1) FROM es_select('$c', 1, 10000)")
done
# What a zlib preset dictionary (deflateSetDictionary) would give on the same
# events: a dictionary of 100 sample events, the next 1,000 compressed with it.
psql -X -At -d postgres -c "SELECT encode(state, 'hex') FROM es_select('neither', 1, 1100)" >"$WORK/samples.txt"
DICT=$(/usr/bin/python3 - "$WORK/samples.txt" <<'PY'
import base64, sys, zlib
states = [bytes.fromhex(l) for l in open(sys.argv[1]).read().split()]
zdict = b"".join(states[:100])[-32768:]
rest = states[100:]
plain = sum(len(s) for s in rest) / len(rest)
alone = sum(len(zlib.compress(s)) for s in rest) / len(rest)
def with_dict(s):
    c = zlib.compressobj(zdict=zdict)
    return len(c.compress(s) + c.flush())
dicted = sum(with_dict(s) for s in rest) / len(rest)
print(f"{plain:.1f} {alone:.1f} {dicted:.1f}")
PY
)

mean() { echo "$@" | tr ' ' '\n' | awk 'NF {s += $1; n++} END {printf "%.3f", s / n}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
{
    echo "Machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -sr), PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}'), synchronous_commit on, fsync on; pgbench -M prepared, ${SECONDS_PER_RUN}s per run, mean of $ROUNDS rounds, all in one run ($(date -u +%Y-%m-%d)). Events: JSON order lines of about ${PLAIN[neither]} bytes, a new aggregate each."
    echo
    echo "| es_append, tps | $(echo $CONFIGS | sed 's/ / | /g') | all / neither |"
    echo "| --- |$(for c in $CONFIGS; do printf ' ---: |'; done) ---: |"
    for kind in "one 1:1 client, one event (a new aggregate)" "one 32:32 clients, one event (a new aggregate)" "batch 8:8 clients, batches of 100 new aggregates (calls/s)" "batch10 8:8 clients, batches of 10 new aggregates x 10 events (calls/s)"; do
        IFS=: read -r key label <<<"$kind"
        read -r script clients <<<"$key"
        row="| $label |"
        for c in $CONFIGS; do row="$row $(mean ${TPS[$script,$clients,$c]}) |"; done
        echo "$row $(ratio "$(mean ${TPS[$script,$clients,all]})" "$(mean ${TPS[$script,$clients,neither]})") |"
    done
    echo
    echo "| reads, ms | $(echo $CONFIGS | sed 's/ / | /g') | all / neither |"
    echo "| --- |$(for c in $CONFIGS; do printf ' ---: |'; done) ---: |"
    for s in "select:es_select of 1,000 events" "state:es_state of a 10,000-event aggregate"; do
        IFS=: read -r key label <<<"$s"
        row="| $label |"
        for c in $CONFIGS; do row="$row $(mean ${RLAT[$key,$c]}) |"; done
        echo "$row $(ratio "$(mean ${RLAT[$key,all]})" "$(mean ${RLAT[$key,neither]})") |"
    done
    echo
    echo "| stored bytes per event | $(echo $CONFIGS | sed 's/ / | /g') |"
    echo "| --- |$(for c in $CONFIGS; do printf ' ---: |'; done)"
    row="| state as given: ${PLAIN[neither]} |"
    for c in $CONFIGS; do row="$row ${SIZE[$c]} |"; done
    echo "$row"
    echo
    read -r dp da dd <<<"$DICT"
    echo "zlib on these events: $dp bytes become $da alone, $dd with a preset dictionary of 100 sample events (deflateSetDictionary, measured with Python's zlib on the same states)."
} | tee "$RESULTS/crypto.md"
rm -rf "$WORK"
