#!/bin/bash
# Runs every ```sql block of README.md, in order, in one psql session on a
# fresh database of the running test cluster (PGHOST/PGPORT/PGUSER set by the
# caller), as a newcomer would paste them.  A block right after a line
# "<!-- not run -->" is skipped.  Prints "ok N - ..." / "not ok N - ..." per
# block; exits non-zero on a failure.
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
dropdb --if-exists es_readme >/dev/null 2>&1
psql -X -q -d postgres -c "DROP ROLE IF EXISTS orders_service, orders_projection, auditor" >/dev/null 2>&1
createdb es_readme || exit 1
awk -v dir="$WORK" '
    /^<!-- not run -->/ { skip = 1; next }
    /^```sql/ { n++; inblock = 1; file = sprintf("%s/block%03d_%d.sql", dir, n, NR + 1); if (skip) file = file ".skipped"; skip = 0; next }
    /^```/ { inblock = 0; next }
    inblock { print > file }
    !inblock && NF { skip = skip && /^<!--/ }
' "$ROOT/README.md"
{
    echo "CREATE EXTENSION eventsourcing;"
    for f in "$WORK"/block*.sql "$WORK"/block*.sql.skipped; do
        [ -e "$f" ] || continue
        case $f in *.skipped) continue ;; esac
        echo "\\echo @@BLOCK $(basename "$f" .sql)"
        # the first block creates the extension itself
        grep -v '^CREATE EXTENSION eventsourcing;' "$f"
    done
    echo "\\echo @@END"
} >"$WORK/all.sql"
psql -X -v ON_ERROR_STOP=1 -d es_readme -f "$WORK/all.sql" >"$WORK/out.txt" 2>&1
rc=$?
n=0; bad=0
reached=$(grep '^@@' "$WORK/out.txt" | sed 's/^@@BLOCK //')
for f in "$WORK"/block*.sql; do
    b=$(basename "$f" .sql); n=$((n + 1)); line=${b##*_}
    last=$(echo "$reached" | grep -v '@@END' | tail -1)
    if echo "$reached" | grep -q '@@END' || { echo "$reached" | grep -qx "$b" && [ "$b" != "$last" ]; }; then
        echo "ok $n - README.md sql block at line $line runs as printed"
    else
        echo "not ok $n - README.md sql block at line $line"; bad=1
    fi
done
for f in "$WORK"/block*.sql.skipped; do [ -e "$f" ] && echo "# skipped (fragment): $(basename "$f")"; done
if [ $rc -ne 0 ]; then echo "# psql stopped:"; tail -15 "$WORK/out.txt" | sed 's/^/# /'; bad=1; fi
dropdb --if-exists es_readme >/dev/null 2>&1
psql -X -q -d postgres -c "DROP ROLE IF EXISTS orders_service, orders_projection, auditor" >/dev/null 2>&1
exit $bad
