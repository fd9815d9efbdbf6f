#!/bin/bash
# Plots the harness's data files (results/field_clients.dat, results/size.dat)
# as PNGs next to them, with gnuplot (Debian's gnuplot-nox, installed here if
# missing).
source "$(dirname "$0")/../scripts/common.sh"
RESULTS="$ROOT/test/bench/results"

if ! command -v gnuplot >/dev/null; then
    [ "$(id -u)" -eq 0 ] || { echo "gnuplot is missing (apt-get install gnuplot-nox)" >&2; exit 1; }
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gnuplot-nox >/dev/null
fi
machine="$(nproc) cores, PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}'), synchronous_commit on, $(date -u +%Y-%m-%d)"
machine=${machine//_/\\\\_}   # gnuplot's enhanced text: a literal underscore

if [ -s "$RESULTS/field_clients.dat" ]; then
    gnuplot <<GP
set terminal pngcairo size 900,420 font ",10"
set output "$RESULTS/field_clients.png"
set multiplot layout 1,2 title "One 256-byte event per transaction ($machine)"
set logscale x 2
set xlabel "clients"
set key top left
set grid
set ylabel "transactions/s"
set yrange [0:*]
plot "$RESULTS/field_clients.dat" using 1:2 with linespoints title "plain INSERT", \
     "" using 1:3 with linespoints title "es\\\\_append"
set ylabel "p99 latency (ms)"
set logscale y
set yrange [*:*]
plot "$RESULTS/field_clients.dat" using 1:4 with linespoints title "plain INSERT", \
     "" using 1:5 with linespoints title "es\\\\_append"
unset multiplot
GP
fi

if [ -s "$RESULTS/size.dat" ]; then
    gnuplot <<GP
set terminal pngcairo size 900,420 font ",10"
set output "$RESULTS/size.png"
set multiplot layout 1,2 title "Costs against the size of the log ($machine)"
set logscale x 10
set xlabel "events in the log"
set format x "10^{%L}"
set grid
set key bottom left
set ylabel "append transactions/s (8 clients)"
set yrange [0:*]
plot "$RESULTS/size.dat" using 1:2 with linespoints title "es\\\\_append", \
     "" using 1:13 with linespoints title "plain INSERT"
set ylabel "latency (ms)"
set logscale y
set yrange [*:*]
set key bottom right
plot "$RESULTS/size.dat" using 1:3 with linespoints title "es\\\\_select page of 100 (mean)", \
     "" using 1:4 with linespoints title "es\\\\_select page of 100 (p99)", \
     "" using 1:5 with linespoints title "es\\\\_events of 100 (mean)", \
     "" using 1:7 with linespoints title "es\\\\_max\\\\_notification\\\\_id (mean)", \
     "" using 1:14 with linespoints dashtype 2 title "plain range SELECT of 100 (mean)", \
     "" using 1:16 with linespoints dashtype 2 title "plain rows of one aggregate (mean)", \
     "" using 1:27 with linespoints dashtype 3 title "es\\\\_select page of 100, cached (mean)", \
     "" using 1:29 with linespoints dashtype 3 title "plain range SELECT of 100, cached (mean)"
unset multiplot
GP
fi
