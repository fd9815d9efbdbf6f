#!/bin/bash
# Applications sharded behind the proxy (issue 15): append throughput through
# the proxy database (eventsourcing_proxy, PL/Proxy) to 1, 2 and 3 shards
# against direct calls to the shards, side by side, interleaved in rounds, on
# throwaway clusters of their own: bench-shard0..2 (ports 54311-54313) and
# bench-proxy (54310), so it runs beside the other benchmarks.
#
#   direct1  pgbench -> shard 0, six applications there
#   proxy1   pgbench -> proxy -> shard 0 (the same six applications)
#   proxy2   pgbench -> proxy -> shards 0, 1 (three applications each)
#   proxy3   pgbench -> proxy -> shards 0, 1, 2 (two each)
#   direct3  three pgbench at once, each -> its shard (two applications each)
#
# One es_append of a new aggregate (version 1, the 256-byte JSON state of the
# other benchmarks) a transaction, to an application picked at random.  The
# CPU time every cluster's processes used during each run is read from
# /proc (the postmaster's own and its reaped children's, plus its live
# children's), so that the cost of a call on the proxy and on a shard can be
# told apart although all share this machine's cores; from those, the
# throughput to expect with one shard per machine.
#
#   bash test/bench/proxy.sh     # BENCH_SECONDS=10 BENCH_ROUNDS=2 by default
#
# Environment: BENCH_SECONDS, BENCH_ROUNDS, BENCH_CLIENTS ("1 32": direct1
# and proxy1 at every count, the rest at the largest), BENCH_INSTALL=0 (use
# the installed extensions as they are), ES_CLUSTER_PORT (the proxy's port;
# the shards take the next three).  Results: test/bench/results/proxy.md.
source "$(dirname "$0")/../scripts/common.sh"
# ES_CLUSTER_PORT (a second checkout on the machine): the proxy on it, the
# shards on the three ports above it.
if [ -n "${ES_CLUSTER_PORT:-}" ]; then
    PROXY_BASE_PORT=$ES_CLUSTER_PORT
    cluster_port() {
        case $1 in
            bench-proxy) echo "$PROXY_BASE_PORT" ;;
            bench-shard[0-2]) echo $((PROXY_BASE_PORT + 1 + ${1#bench-shard})) ;;
            *) echo "$PROXY_BASE_PORT" ;;
        esac
    }
fi

SECONDS_PER_RUN=${BENCH_SECONDS:-10}
ROUNDS=${BENCH_ROUNDS:-2}
CLIENTS=${BENCH_CLIENTS:-"1 32"}
MAXC=$(echo $CLIENTS | tr ' ' '\n' | sort -n | tail -1)
SHARDS=(bench-shard0 bench-shard1 bench-shard2)
PROXY=bench-proxy
RESULTS="$ROOT/test/bench/results"
TICK=$(getconf CLK_TCK)

ensure_packages
[ "${BENCH_INSTALL:-1}" = 0 ] || build_and_install
trap 'for c in $PROXY ${SHARDS[*]}; do cluster_stop $c; done' EXIT
for c in "${SHARDS[@]}" $PROXY; do
    cluster_start "$c" fresh
    as_pg tee -a "$(cluster_dir "$c")/data/postgresql.conf" >/dev/null <<CONF
max_connections = 150
shared_buffers = 128MB
CONF
    cluster_stop "$c"; cluster_start "$c"
done
WORK=$(mktemp -d); chmod 777 "$WORK"
mkdir -p "$RESULTS"

# on CLUSTER psql-args...: psql against a cluster
on() { local c=$1; shift; (cluster_env "$c"; "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 "$@"); }
connstr() { echo "host=$(cluster_dir "$1")/socket port=$(cluster_port "$1") dbname=bench"; }

for i in 0 1 2; do
    on "${SHARDS[$i]}" -d postgres -c "CREATE DATABASE bench"
    on "${SHARDS[$i]}" -d bench -c "CREATE EXTENSION eventsourcing" \
        -c "SELECT es_create_application('b' || i) FROM generate_series(1, 6) i" >/dev/null
done
# proxyN: the first N shards; application bI on shard I mod N.
for n in 1 2 3; do
    on $PROXY -d postgres -c "CREATE DATABASE proxy$n"
    arr=$(for ((i = 0; i < n; i++)); do printf "'%s'," "$(connstr "${SHARDS[$i]}")"; done)
    on $PROXY -d "proxy$n" -c "CREATE EXTENSION eventsourcing_proxy CASCADE" \
        -c "SELECT es_proxy_configure(ARRAY[${arr%,}])" \
        -c "UPDATE es_proxy_placements SET shard = substr(application, 2)::int % $n" >/dev/null 2>&1
    log "proxy$n: $(on $PROXY -d "proxy$n" -At -c "SELECT string_agg(application || '@' || shard, ' ' ORDER BY application) FROM es_proxy_placements")"
done

# The transaction: the whole set of applications, or those of one shard.
write_script() {   # FILE APPS...
    local f=$1; shift
    {
        echo "\\set a random(1, $#)"
        echo "SELECT es_append('b' || (('{$(echo "$@" | tr ' ' ',')}'::int[])[:a])::text, gen_random_uuid(), 1, 'Bench.Event', convert_to('$BENCH_STATE_256', 'UTF8'));"
    } >"$f"
}
write_script "$WORK/all.sql" 1 2 3 4 5 6
write_script "$WORK/shard0.sql" 3 6
write_script "$WORK/shard1.sql" 1 4
write_script "$WORK/shard2.sql" 2 5

reset_tables() {
    local c
    for c in "${SHARDS[@]}"; do
        on "$c" -d bench -c "SET eventsourcing.allow_rewrite = on" -c "TRUNCATE es_stored_events" -c "CHECKPOINT" >/dev/null
    done
}

# CPU ticks used by a cluster's processes so far (exited backends count in
# the postmaster's cutime/cstime once it has reaped them).
cpu_ticks() {
    local pm; pm=$(head -1 "$(cluster_dir "$1")/data/postmaster.pid")
    local total=0 line pid rest
    while read -r line; do
        pid=${line%% *}
        rest=${line##*) }
        set -- $rest
        if [ "$pid" = "$pm" ]; then
            total=$((total + ${12} + ${13} + ${14} + ${15}))
        elif [ "$2" = "$pm" ]; then
            total=$((total + ${12} + ${13}))
        fi
    done < <(cat /proc/[0-9]*/stat 2>/dev/null)
    echo "$total"
}
all_ticks() { local c; for c in "${SHARDS[@]}" $PROXY; do printf '%s ' "$(cpu_ticks "$c")"; done; }

# pgbench CLIENTS SCRIPT TARGET -> "tps latency_ms"
bench() {
    local clients=$1 script=$2 target=$3 out jobs
    jobs=$(( clients < 2 ? 1 : 2 ))
    out=$(cluster_env "${target%%/*}"; "$PG_BIN/pgbench" -n -M prepared -c "$clients" -j "$jobs" -T "$SECONDS_PER_RUN" \
          -f "$WORK/$script.sql" "${target##*/}" 2>&1) || { echo "$out" >&2; return 1; }
    echo "$(echo "$out" | sed -n 's/^tps = \([0-9.]*\) .*/\1/p' | tail -1) $(echo "$out" | sed -n 's/^latency average = \([0-9.]*\) ms/\1/p')"
}

declare -A TPS LAT CPU
# run NAME CLIENTS: one configuration; records tps, latency and the CPU ms per
# call of the proxy (index 3) and of the shards (0..2)
run() {
    local name=$1 c=$2 before after tps lat
    reset_tables
    before=($(all_ticks))
    case $name in
        direct1) read -r tps lat < <(bench "$c" all "${SHARDS[0]}/bench") ;;
        proxy*) read -r tps lat < <(bench "$c" all "$PROXY/$name") ;;
        direct3)
            local per=$((c / 3)) f
            for i in 0 1 2; do
                bench "$([ $i = 0 ] && echo $((c - 2 * per)) || echo $per)" "shard$i" "${SHARDS[$i]}/bench" >"$WORK/d3.$i" &
            done
            wait
            tps=$(cat "$WORK"/d3.[012] | awk '{s += $1} END {printf "%.3f", s}')
            lat=$(cat "$WORK"/d3.[012] | awk '{s += $2} END {printf "%.3f", s / NR}')
            ;;
    esac
    sleep 1
    after=($(all_ticks))
    local calls proxy_ms shard_ms
    calls=$(awk -v t="$tps" -v s="$SECONDS_PER_RUN" 'BEGIN {print t * s}')
    proxy_ms=$(awk -v a="${after[3]}" -v b="${before[3]}" -v n="$calls" -v k="$TICK" 'BEGIN {printf "%.3f", (a - b) * 1000 / k / n}')
    shard_ms=$(awk -v a="$((after[0] + after[1] + after[2]))" -v b="$((before[0] + before[1] + before[2]))" -v n="$calls" -v k="$TICK" \
               'BEGIN {printf "%.3f", (a - b) * 1000 / k / n}')
    log "$name, $c clients: $tps tps, $lat ms; CPU per call: proxy $proxy_ms ms, shards $shard_ms ms"
    TPS[$name,$c]="${TPS[$name,$c]:-} $tps"; LAT[$name,$c]="${LAT[$name,$c]:-} $lat"
    CPU[$name,$c,p]="${CPU[$name,$c,p]:-} $proxy_ms"; CPU[$name,$c,s]="${CPU[$name,$c,s]:-} $shard_ms"
}

for ((r = 1; r <= ROUNDS; r++)); do
    for c in $CLIENTS; do
        for name in direct1 proxy1; do run $name "$c"; done
        if [ "$c" = "$MAXC" ]; then
            for name in proxy2 proxy3 direct3; do run $name "$c"; done
        fi
    done
done

mean() { echo "$@" | tr ' ' '\n' | awk 'NF {s += $1; n++} END {printf "%.3f", s / n}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }

# Every call went where the placements say: the events per shard.
for i in 0 1 2; do
    log "${SHARDS[$i]}: $(on "${SHARDS[$i]}" -d bench -At -c "SELECT string_agg(application || ' ' || events, ', ' ORDER BY application) FROM es_status")"
done

{
    echo "# Appends through the proxy (issue 15): test/bench/proxy.sh"
    echo
    echo "Machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -sr), PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}'), PL/Proxy $(dpkg-query -W -f='${Version}' postgresql-$PG_MAJOR-plproxy 2>/dev/null); checkout at $(git -C "$ROOT" rev-parse --short HEAD); four clusters on this machine (three shards, one proxy), shared_buffers 128MB each, synchronous_commit on, fsync on; pgbench -M prepared on the same machine, ${SECONDS_PER_RUN}s per run, mean of $ROUNDS interleaved rounds, events tables emptied before each run ($(date -u +%Y-%m-%d)). One es_append of a new aggregate with a 256-byte JSON state a transaction, to one of six applications picked at random. CPU ms per call: the CPU time of each cluster's processes during the run divided by the calls (pgbench's own is in neither)."
    echo
    echo "| clients | configuration | tps | latency ms | vs direct to one shard | proxy CPU ms/call | shard CPU ms/call |"
    echo "| ---: | --- | ---: | ---: | ---: | ---: | ---: |"
    for c in $CLIENTS; do
        d=$(mean ${TPS[direct1,$c]})
        for name in direct1 proxy1 proxy2 proxy3 direct3; do
            [ -n "${TPS[$name,$c]:-}" ] || continue
            t=$(mean ${TPS[$name,$c]})
            case $name in
                direct1) label="direct, 1 shard" ;; direct3) label="direct, 3 shards (3 pgbench)" ;;
                proxy*) label="proxy -> ${name#proxy} shard(s)" ;;
            esac
            echo "| $c | $label | $t | $(mean ${LAT[$name,$c]}) | $(ratio "$t" "$d") | $(mean ${CPU[$name,$c,p]}) | $(mean ${CPU[$name,$c,s]}) |"
        done
    done
    echo
    d1=$(mean ${LAT[direct1,1]:-0}); p1=$(mean ${LAT[proxy1,1]:-0})
    dc=$(mean ${TPS[direct1,$MAXC]}); pc=$(mean ${TPS[proxy1,$MAXC]})
    pcpu=$(mean ${CPU[proxy1,$MAXC,p]}); scpu=$(mean ${CPU[direct1,$MAXC,s]}); scpu_p=$(mean ${CPU[proxy1,$MAXC,s]})
    echo "Derived: the proxy hop adds $(awk -v a="$p1" -v b="$d1" 'BEGIN {printf "%.3f", a - b}') ms to a call at 1 client ($d1 ms direct, $p1 ms through the proxy); at $MAXC clients on this shared machine the proxy to one shard gives $(ratio "$pc" "$dc")x the direct throughput. A call costs the proxy $pcpu ms of CPU and the shard $scpu ms directly ($scpu_p ms when called through the proxy, which sends every call as a query the shard parses and plans anew)."
    echo
    cap_d=$(awk -v n="$(nproc)" -v c="$scpu" 'BEGIN {printf "%.0f", n * 1000 / c}')
    cap_s=$(awk -v n="$(nproc)" -v c="$scpu_p" 'BEGIN {printf "%.0f", n * 1000 / c}')
    cap_p=$(awk -v n="$(nproc)" -v c="$pcpu" 'BEGIN {printf "%.0f", n * 1000 / c}')
    echo "Expected with one shard per machine (each of $(nproc) cores like this one), worked out from the CPU per call at $MAXC clients: a shard machine called directly saturates its cores at about $cap_d appends/s (measured here: $dc tps with pgbench on the same cores); called through the proxy it spends $scpu_p ms a call (PL/Proxy sends each call as a query that the shard parses and plans anew, where pgbench -M prepared does not), so about $cap_s appends/s; a proxy machine carries about $cap_p calls/s. N shards then give about N x $cap_s appends/s if the proxies keep up, $(awk -v s="$cap_s" -v p="$cap_p" 'BEGIN {printf "%.1f", p / s}') shard(s) per proxy machine: 1, 2, 3 shards about $cap_s, $((2 * cap_s)), $((3 * cap_s)) appends/s with $(awk -v s="$cap_s" -v p="$cap_p" 'BEGIN {for (n = 1; n <= 3; n++) printf "%s%d", (n > 1 ? ", " : ""), int((n * s + p - 1) / p)}') proxy machine(s) in front (several proxy databases with the same shard list and placements). Here all four clusters and pgbench share the same $(nproc) cores, so the proxy rows measure the hop's cost, not scaling."
} >"$RESULTS/proxy.md"
cat "$RESULTS/proxy.md"
