#!/usr/bin/python3
"""Helpers of test/bench/notify_bench.sh (psycopg 3, Debian's python3-psycopg).
Connects with the libpq environment (PGHOST, PGPORT, PGUSER) to dbname
postgres.

  notify_helper.py listen APP SECONDS READY_FILE
      LISTENs on APP's channel for SECONDS, draining announcements as they
      come; touches READY_FILE once listening.  Prints
      "<announcements> <highest notification_id>".

  notify_helper.py latency APP SECONDS RATE WARMUP
      One writer appends RATE events/s (one per transaction, autocommit) to
      APP and notes when each commit is acknowledged; one listener notes when
      each announcement arrives.  The latency of an id is the time from its
      commit acknowledgement to the arrival of the first announcement whose
      notification_id covers it (it can be slightly negative: the worker may
      announce before the writer has read its acknowledgement).  Ids of the
      first WARMUP seconds are left out.  Prints
      "<events> <announcements> <uncovered> <median ms> <p99 ms> <max ms>".
"""

import json
import multiprocessing
import select
import sys
import time

import psycopg
from psycopg import sql

DSN = "dbname=postgres"


def channel_of(conn, app: str) -> str:
    return conn.execute("SELECT es_channel(%s)", (app,)).fetchone()[0]


def listen(conn, app: str):
    ch = channel_of(conn, app)
    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(ch)))
    return ch


def drain(conn, until: float, on_payload) -> None:
    """Receives announcements until the monotonic time `until`."""
    pgconn = conn.pgconn
    while (remaining := until - time.monotonic()) > 0:
        ready, _, _ = select.select([pgconn.socket], [], [], remaining)
        if not ready:
            continue
        pgconn.consume_input()
        now = time.monotonic()
        while (n := pgconn.notifies()) is not None:
            on_payload(now, json.loads(n.extra.decode()))


def cmd_listen(app: str, seconds: float, ready_file: str) -> None:
    conn = psycopg.connect(DSN, autocommit=True)
    listen(conn, app)
    open(ready_file, "w").close()
    count = [0, 0]

    def on_payload(_now, p):
        count[0] += 1
        count[1] = max(count[1], p["notification_id"])

    drain(conn, time.monotonic() + seconds, on_payload)
    print(count[0], count[1])


def percentile(sorted_values, q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = (len(sorted_values) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def _listener_process(app: str, until: float, ready, conn_out) -> None:
    """The follower, in a process of its own (no GIL shared with the
    writer); time.monotonic() is the same clock in both processes."""
    conn = psycopg.connect(DSN, autocommit=True)
    listen(conn, app)
    ready.set()
    got = []
    drain(conn, until, lambda now, p: got.append((now, p["notification_id"])))
    conn_out.send(got)
    conn_out.close()


def cmd_latency(app: str, seconds: float, rate: float, warmup: float) -> None:
    ctx = multiprocessing.get_context("fork")      # before any connection of ours
    ready = ctx.Event()
    receiver, sender = ctx.Pipe(duplex=False)
    end = time.monotonic() + 1.0 + seconds         # at most 1 s to get the listener going
    listener = ctx.Process(target=_listener_process, args=(app, end + 1.0, ready, sender))
    listener.start()
    if not ready.wait(5):
        raise SystemExit("the listener did not start")
    conn = psycopg.connect(DSN, autocommit=True)
    acks = []           # (id, sent at, acknowledged at)
    start = time.monotonic()
    interval = 1.0 / rate
    due = start
    while due < end:
        sent = time.monotonic()
        id_ = conn.execute("SELECT es_append(%s, gen_random_uuid(), 1, 'Bench.Measured', '\\x7b7d')",
                           (app,)).fetchone()[0]
        acks.append((id_, sent, time.monotonic()))
        due += interval
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    announcements = receiver.recv()                # (received at, notification_id)
    listener.join()

    from_ack, from_send = [], []
    uncovered = 0
    j = 0
    for id_, sent, acked in sorted(acks):           # ids ascending, announcements ascending
        while j < len(announcements) and announcements[j][1] < id_:
            j += 1
        if sent - start < warmup:
            continue
        if j == len(announcements):
            uncovered += 1
            continue
        from_ack.append((announcements[j][0] - acked) * 1000.0)
        from_send.append((announcements[j][0] - sent) * 1000.0)
    from_ack.sort()
    from_send.sort()
    fmt = lambda v: "%.2f" % v
    print(len(from_ack), len(announcements), uncovered,
          fmt(percentile(from_ack, 0.5)), fmt(percentile(from_ack, 0.99)),
          fmt(from_ack[-1] if from_ack else float("nan")), fmt(from_ack[0] if from_ack else float("nan")),
          fmt(percentile(from_send, 0.5)), fmt(percentile(from_send, 0.99)))


def main() -> None:
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "listen":
        cmd_listen(args[0], float(args[1]), args[2])
    elif cmd == "latency":
        cmd_latency(args[0], float(args[1]), float(args[2]), float(args[3]))
    else:
        raise SystemExit("usage: notify_helper.py listen|latency ...")


if __name__ == "__main__":
    main()
