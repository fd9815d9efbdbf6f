# Shared by the project's scripts: paths, packages, build, private clusters.
# Sourced, not run.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PG_MAJOR=15
# ES_PG_BIN: the bin directory of another (relocated) copy of PostgreSQL;
# build_and_install then installs into that copy, and clusters run from it.
PG_BIN="${ES_PG_BIN:-/usr/lib/postgresql/$PG_MAJOR/bin}"
# The system's pg_config: builds need its server headers (a copy has none).
SYS_PG_CONFIG="/usr/lib/postgresql/$PG_MAJOR/bin/pg_config"
PGXS_DIR="/usr/lib/postgresql/$PG_MAJOR/lib/pgxs"
PG_USER=postgres
PACKAGES=(postgresql-$PG_MAJOR postgresql-server-dev-$PG_MAJOR postgresql-client-$PG_MAJOR
          build-essential zlib1g-dev libssl-dev libipc-run-perl python3-psycopg
          python3-pycryptodome libpostgresql-jdbc-java
          postgresql-$PG_MAJOR-plproxy)

log() { printf '==> %s\n' "$*" >&2; }

# Installs the Debian packages that are missing (needs root and apt).
ensure_packages() {
    local missing=()
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        if [ "$(id -u)" -ne 0 ]; then
            echo "missing packages: ${missing[*]} (run as root to install them)" >&2
            exit 1
        fi
        log "installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    # Debian's package creates a system cluster; ours never use it.
    id "$PG_USER" >/dev/null 2>&1 || { echo "user $PG_USER is missing" >&2; exit 1; }
}

build_and_install() {
    log "building and installing the extension"
    make -C "$ROOT" -s PG_CONFIG="$SYS_PG_CONFIG" all >/dev/null
    make -C "$ROOT" -s PG_CONFIG="$PG_BIN/pg_config" install >/dev/null
}

as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u "$PG_USER" -- "$@"; else "$@"; fi; }

# Where cluster NAME lives: under the checkout if the postgres user can reach
# it, else under /tmp (a checkout in /root, say).
cluster_dir() {
    local name=$1
    if as_pg test -x "$ROOT" 2>/dev/null && as_pg test -r "$ROOT/Makefile" 2>/dev/null; then
        echo "$ROOT/.cluster/$name"
    else
        echo "/tmp/eventsourcing-$(printf '%s' "$ROOT" | md5sum | cut -c1-8)/$name"
    fi
}

# ES_CLUSTER_PORT: another port for every cluster of this run (two checkouts
# running the suite at once).
cluster_port() {
    if [ -n "${ES_CLUSTER_PORT:-}" ]; then echo "$ES_CLUSTER_PORT"; return; fi
    case $1 in
        demo) echo 54329 ;;
        test) echo 54328 ;;
        bench) echo 54327 ;;
        pybench) echo 54330 ;;
        bench-dcb) echo 54323 ;;
        bench-part) echo 54322 ;;
        client) echo 54325 ;;
        iso) echo 54324 ;;
        bench-proxy) echo 54310 ;;
        bench-shard0) echo 54311 ;;
        bench-shard1) echo 54312 ;;
        bench-shard2) echo 54313 ;;
        *) echo 54326 ;;
    esac
}

# Exports what psql, pg_regress and friends need to reach cluster NAME.
cluster_env() {
    local dir; dir=$(cluster_dir "$1")
    export PGHOST="$dir/socket" PGPORT; PGPORT=$(cluster_port "$1")
    export PGUSER="$PG_USER"
    export PATH="$PG_BIN:$PATH"
}

cluster_running() {
    local dir; dir=$(cluster_dir "$1")
    [ -f "$dir/data/postmaster.pid" ] && as_pg "$PG_BIN/pg_ctl" -D "$dir/data" status >/dev/null 2>&1
}

cluster_stop() {
    local dir; dir=$(cluster_dir "$1")
    if cluster_running "$1"; then
        as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
    fi
}

# Creates (if needed, or always with "fresh") and starts cluster NAME.
cluster_start() {
    local name=$1 fresh=${2:-} dir port
    dir=$(cluster_dir "$name"); port=$(cluster_port "$name")
    cluster_stop "$name"
    if [ "$fresh" = fresh ] || [ ! -f "$dir/data/PG_VERSION" ]; then
        rm -rf "$dir"
        mkdir -p "$dir"
        chown "$PG_USER" "$dir" 2>/dev/null || true
        chmod 700 "$dir"
        # The parent must be reachable by the postgres user.
        chmod o+x "$(dirname "$dir")" 2>/dev/null || true
        as_pg mkdir -p "$dir/socket"
        as_pg "$PG_BIN/initdb" -D "$dir/data" -U "$PG_USER" --auth=trust -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 \
            || { cat "$dir/initdb.log" >&2; exit 1; }
        # The master key of encrypted applications: a file only the server reads,
        # printed by eventsourcing.key_command when the server starts.
        as_pg sh -c "umask 077; od -An -tx1 -N32 /dev/urandom | tr -d ' \\n' > '$dir/master.key'"
        as_pg tee -a "$dir/data/postgresql.conf" >/dev/null <<CONF
# eventsourcing private cluster ($name)
eventsourcing.key_command = 'cat $dir/master.key'
port = $port
listen_addresses = '$( [ "$name" = test ] && echo 127.0.0.1 )'
unix_socket_directories = '$dir/socket'
shared_preload_libraries = 'eventsourcing'
max_connections = 100
max_prepared_transactions = 10
logging_collector = off
CONF
    fi
    log "starting cluster '$name' in $dir (port $port)"
    as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start >/dev/null \
        || { tail -20 "$dir/server.log" >&2; exit 1; }
}

# For the benchmarks: builds and installs, starts the throwaway cluster
# 'bench' with the postgresql.conf lines read from stdin, stops it when the
# script exits; sets RESULTS and a scratch directory WORK.  BENCH_CLUSTER
# names another cluster (a benchmark that may run beside run.sh, which
# recreates 'bench', takes its own); BENCH_INSTALL=0 uses the installed
# extension as it is (no build, no make install).
bench_cluster() {
    local name=${BENCH_CLUSTER:-bench}
    ensure_packages
    [ "${BENCH_INSTALL:-1}" = 0 ] || build_and_install
    cluster_start "$name" fresh
    trap "cluster_stop '$name'" EXIT
    as_pg tee -a "$(cluster_dir "$name")/data/postgresql.conf" >/dev/null
    cluster_stop "$name"; cluster_start "$name"; cluster_env "$name"
    RESULTS="$ROOT/test/bench/results"
    mkdir -p "$RESULTS"
    WORK=$(mktemp -d); chmod 777 "$WORK"
}

# The replay workload's SQL (run.sh, replay_ab.sh): two identical dogs of N
# events in application 'replay'; the second gets a snapshot 100 events
# before its end.
bench_replay_dogs() {
    local n=$1
    cat <<SQL
SELECT count(*) FROM (VALUES ('00000000-0000-4000-8000-00000000d001'::uuid), ('00000000-0000-4000-8000-00000000d002'::uuid)) d(id),
    LATERAL es_append('replay', ARRAY(
        SELECT ROW(d.id, v, CASE WHEN v = 1 THEN 'Dog.Registered' ELSE 'Dog.TrickAdded' END,
                   convert_to(CASE WHEN v = 1 THEN '{"name": "Fido"}' ELSE '{"trick": "trick number ' || v || '"}' END, 'UTF8'))::es_event
        FROM generate_series(1, $n - 100) v));
SELECT es_snapshot('replay', '00000000-0000-4000-8000-00000000d002');
SELECT count(*) FROM (VALUES ('00000000-0000-4000-8000-00000000d001'::uuid), ('00000000-0000-4000-8000-00000000d002'::uuid)) d(id),
    LATERAL es_append('replay', ARRAY(
        SELECT ROW(d.id, v, 'Dog.TrickAdded', convert_to('{"trick": "trick number ' || v || '"}', 'UTF8'))::es_event
        FROM generate_series($n - 99, $n) v));
SQL
}

# The field's event: a 256-byte JSON state.
BENCH_STATE_256='{"name": "Fido", "trick": "roll over", "note": "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}'

# The baseline table of the benchmarks: es_stored_events' columns and
# indexes, a bigserial id, no ordering guarantee.
BENCH_PLAIN_TABLE='CREATE TABLE plain_events (
    application_id integer NOT NULL, notification_id bigserial NOT NULL,
    originator_id uuid NOT NULL, originator_version bigint NOT NULL,
    topic text COLLATE "C" NOT NULL, state bytea NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    event_hash bytea, stored_form smallint NOT NULL DEFAULT 0,
    PRIMARY KEY (application_id, notification_id),
    UNIQUE (application_id, originator_id, originator_version));'
