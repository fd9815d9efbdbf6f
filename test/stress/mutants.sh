#!/bin/bash
# Checks that the TAP tests of test/t can fail: builds deliberately broken
# copies of the extension (each breaks one rule of the ordering protocol,
# src/ordering.c), installs each as extension "eventsourcing_mut", runs the
# test that should catch it with ES_EXTENSION=eventsourcing_mut, and reports
# every mutant as "caught" or "SURVIVED".  Not part of `make test` (about
# 20 s per mutant).  Run as root from anywhere:
#     bash test/stress/mutants.sh [MUTANT...]
# Exits non-zero if a mutant survived or could not be made (the source it
# patches has changed: update the patterns below).  Removes what it installed.
set -euo pipefail
source "$(dirname "$0")/../scripts/common.sh"

# mutant -> the test that must fail
declare -A TEST=(
    [ignore_gaps]=001_stress.pl          # es_select passes every missing id
    [no_snapshot]=001_stress.pl          # rule (b): a tuple in progress for the reader counts as aborted
    [no_slots]=001_stress.pl             # rule (a) dropped: writers still inserting are not seen
    [no_watermark]=002_standby.pl        # standby readers ignore the watermark
    [watermark_no_slots]=002_standby.pl  # the watermark ignores writers still inserting
    [restart_low]=003_crash.pl           # after a restart the counter starts 20 below the highest id
)
MUTANTS=("$@")
[ ${#MUTANTS[@]} -gt 0 ] || MUTANTS=(ignore_gaps no_snapshot no_slots no_watermark watermark_no_slots restart_low)

WORK=$(mktemp -d /tmp/es_mutants.XXXXXX)
chmod 755 "$WORK"
cleanup() {
    rm -f "$(as_pg "$PG_BIN/pg_config" --pkglibdir)/eventsourcing_mut.so"
    rm -rf "$(as_pg "$PG_BIN/pg_config" --pkglibdir)/bitcode/eventsourcing_mut"*
    rm -f "$(as_pg "$PG_BIN/pg_config" --sharedir)/extension/eventsourcing_mut"*
    rm -rf "$WORK"
}
trap cleanup EXIT
[ -n "${ES_MUTANTS_KEEP:-}" ] && trap - EXIT

mutate() {
    local m=$1 f=$2
    case $m in
        ignore_gaps)
            perl -0pi -e 's/(EsGapPermanentUpTo\(EsGapResolver \*r, int64 from, int64 to\)\n\{\n)/$1\treturn to;\n/' "$f" ;;
        no_snapshot)
            perl -0pi -e 's/\(TransactionIdIsCurrentTransactionId\(xmin\) \|\| XidInMVCCSnapshot\(xmin, snapshot\)\)/TransactionIdIsCurrentTransactionId(xmin)/' "$f" ;;
        no_slots)
            perl -0pi -e 's/\t\tif \(r->counter != NULL\)\n\t\t\{\n\t\t\tuint64\t\tlowest;/\t\tif (false)\n\t\t{\n\t\t\tuint64\t\tlowest;/' "$f" ;;
        no_watermark)
            perl -0pi -e 's/if \(r->watermark < limit\)\n/if (false)\n/' "$f" ;;
        watermark_no_slots)
            perl -0pi -e 's/Min\(Min\(next, lowest\), /Min(next, /' "$f" ;;
        restart_low)
            perl -0pi -e 's/pg_atomic_init_u64\(&counter->next, \(uint64\) highest \+ 1\)/pg_atomic_init_u64(&counter->next, (uint64) (highest > 20 ? highest - 19 : 1))/' "$f" ;;
        *) echo "unknown mutant $m" >&2; return 1 ;;
    esac
}

# A copy of the extension renamed eventsourcing_mut, with mutant $1.
build() {
    local m=$1 d=$WORK/tree
    rm -rf "$d"; mkdir -p "$d"
    cp -r "$ROOT/Makefile" "$ROOT/eventsourcing.control" "$ROOT/src" "$ROOT/sql" "$d/"
    rm -f "$d"/src/*.o "$d"/src/*.bc
    # The core only: not the proxy extension, which the mutants do not touch.
    sed -i 's/^EXTENSION *= eventsourcing$/EXTENSION  = eventsourcing_mut/; s/^MODULE_big *= eventsourcing$/MODULE_big = eventsourcing_mut/; s#sql/eventsourcing--#sql/eventsourcing_mut--#g; /^DATA/s#\\$##; /^ *sql\/eventsourcing_proxy/d' "$d/Makefile"
    sed 's#\$libdir/eventsourcing#$libdir/eventsourcing_mut#' "$d/eventsourcing.control" > "$d/eventsourcing_mut.control"
    for s in "$d"/sql/eventsourcing--*.sql; do cp "$s" "${s/eventsourcing--/eventsourcing_mut--}"; done
    sed -i 's/#define ES_EXTENSION_NAME\t\t\t"eventsourcing"/#define ES_EXTENSION_NAME\t\t\t"eventsourcing_mut"/' "$d/src/eventsourcing.h"
    sed -i 's/bgw_library_name, "eventsourcing"/bgw_library_name, "eventsourcing_mut"/' "$d"/src/*.c
    grep -q 'eventsourcing_mut' "$d/src/wakeup.c" || { echo "cannot rename the worker's library" >&2; return 1; }
    grep -q 'ES_EXTENSION_NAME.*eventsourcing_mut' "$d/src/eventsourcing.h" || { echo "cannot rename the extension" >&2; return 1; }
    cp "$d/src/ordering.c" "$WORK/ordering.orig"
    mutate "$m" "$d/src/ordering.c"
    if cmp -s "$d/src/ordering.c" "$WORK/ordering.orig"; then
        echo "mutant $m does not apply to src/ordering.c any more" >&2; return 1
    fi
    make -C "$d" -s PG_CONFIG="$SYS_PG_CONFIG" all >"$WORK/build.log" 2>&1 \
        && make -C "$d" -s PG_CONFIG="$PG_BIN/pg_config" install >>"$WORK/build.log" 2>&1 \
        || { cat "$WORK/build.log" >&2; return 1; }
}

bad=0
for m in "${MUTANTS[@]}"; do
    t=${TEST[$m]:-}
    [ -n "$t" ] || { echo "unknown mutant $m"; bad=1; continue; }
    if ! build "$m"; then echo "mutant $m: could not be made"; bad=1; continue; fi
    tap=$WORK/tap_$m; mkdir -p "$tap"; chown "$PG_USER" "$tap"
    set +e
    as_pg env -C "$tap" PATH="$PG_BIN:$PATH" PG_REGRESS="$PGXS_DIR/src/test/regress/pg_regress" \
        ES_ROOT="$ROOT" ES_EXTENSION=eventsourcing_mut \
        prove -v -I "$PGXS_DIR/src/test/perl" -I "$ROOT/test/t" "$ROOT/test/t/$t" >"$tap/prove.log" 2>&1
    rc=$?
    set -e
    # (the self-check of 001, a reader ignoring gaps, always prints violations)
    failed=$(grep '^not ok' "$tap/prove.log" | grep -v 'self-check' || true)
    if [ $rc -ne 0 ] && [ -n "$failed" ]; then
        echo "mutant $m: caught by $t:"
        echo "$failed" | sed 's/^/    /'
        # (001's self-check runs last: the first violation is the mutant's)
        grep -m1 '^# VIOLATION' "$tap/prove.log" | cut -c1-200 | sed 's/^/    /' || true
    else
        echo "mutant $m: SURVIVED $t (exit $rc)"
        bad=1
    fi
done
exit $bad
