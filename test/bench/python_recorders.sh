#!/bin/bash
# The Python eventsourcing library on PostgreSQL: the tutorial's DogSchool
# commands at 1, 8 and 32 threads of one process, saved by the library's own
# PostgreSQL recorder (eventsourcing.postgres: LOCK TABLE ... IN EXCLUSIVE
# MODE, then INSERT) and by eventsourcing_pgext (es_append), side by side in
# one run on a throwaway cluster ('pybench', port 54330; BENCH_CLUSTER).  See
# python_recorders.py for what is measured.
#
#   bash test/bench/python_recorders.sh   # BENCH_SECONDS=10 BENCH_ROUNDS=3 by default
#
# Needs the library (installed, or its source in ../shared/peers/eventsourcing)
# and, for the library's recorder, python3-psycopg-pool (installed here if
# missing).  Prints a markdown table and saves it in
# test/bench/results/python_recorders.md.
source "$(dirname "$0")/../scripts/common.sh"

export BENCH_SECONDS=${BENCH_SECONDS:-10}
export BENCH_ROUNDS=${BENCH_ROUNDS:-3}
export BENCH_THREADS=${BENCH_THREADS:-"1 8 32"}
PY=/usr/bin/python3

PACKAGES+=(python3-psycopg-pool)
BENCH_CLUSTER=${BENCH_CLUSTER:-pybench}
bench_cluster <<CONF
max_connections = 120
shared_buffers = 256MB
CONF

TABLE=$(ES_TEST_DSN="host=$PGHOST port=$PGPORT user=$PGUSER dbname=postgres" \
    "$PY" "$ROOT/test/bench/python_recorders.py")
versions=$("$PY" - "$ROOT/test/client" <<'PY'
import sys
sys.path.insert(0, sys.argv[1])
import pgext_support  # finds the library
import eventsourcing, psycopg, psycopg_pool
lib = getattr(eventsourcing, "__version__", "?")
print("eventsourcing %s, psycopg %s (%s implementation), psycopg_pool %s, Python %s"
      % (lib, psycopg.__version__, psycopg.pq.__impl__, psycopg_pool.__version__, sys.version.split()[0]))
PY
)
{
    echo "Machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -sr), PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}'), synchronous_commit on, fsync on; $versions. One Python process, N threads, each repeating register_dog then two add_trick (a repository get and a save each); pool of N connections for each recorder; ${BENCH_SECONDS}s per run, median of $BENCH_ROUNDS rounds, the two recorders interleaved, all in one run ($(date -u +%Y-%m-%d))."
    echo
    echo "$TABLE"
} | tee "$RESULTS/python_recorders.md"
rm -rf "$WORK"
