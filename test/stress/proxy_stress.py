#!/usr/bin/python3
"""Stress driver for applications sharded behind the eventsourcing proxy.

Writers (one thread and one connection to the proxy each) append to
applications picked at random: one event or a batch (es_append, every form,
and es_append_json), fresh aggregates and a few hot ones per application (so
there are version conflicts, 23505, raised on the shard and passed through).
Each call is its own transaction on the shard (PL/Proxy runs remote calls in
autocommit), so there are no rollbacks: an id the proxy returned is
committed.  A call that fails for any other reason (its shard down or killed
during the call) may or may not have committed: its events are counted as in
doubt for that application.

Followers (per application, one thread and one connection to the proxy
each) tail its log with es_select(app, last + 1, page) and check on the fly
that ids strictly increase; calls that fail (shard down) are retried.  Once
the writers are done, they read on to the highest committed id.

Then, per application, against the events table read on its shard:
  * every follower's sequence equals the committed ids, exactly;
  * every id the proxy returned is committed, and was returned once;
  * committed ids that no call returned are at most the events of the calls
    in doubt for that application;
  * calls failed for other reasons than 23505 only for applications of the
    shards named in --down-shards (a killed shard must not hurt the others).

Prints "SUMMARY <json>" and exits 0; prints every "VIOLATION: ..." and exits
1; exits 2 when the run could not be carried out.
"""

import argparse
import json
import random
import sys
import threading
import time
import traceback
import uuid

import psycopg
from psycopg import errors


def log(msg):
    sys.stdout.write("%s %s\n" % (time.strftime("%H:%M:%S"), msg))
    sys.stdout.flush()


class Run:
    def __init__(self, a):
        self.a = a
        self.lock = threading.Lock()
        self.violations = []
        self.fatal = []
        self.writers_done = threading.Event()
        self.targets = None          # app -> highest committed id, once known
        self.end = time.monotonic() + a.duration

    def violation(self, msg):
        with self.lock:
            self.violations.append(msg)
        log("VIOLATION: " + msg)

    def connect(self, name):
        return psycopg.connect(self.a.proxy_dsn, autocommit=True, application_name=name,
                               connect_timeout=10)


class Writer(threading.Thread):
    def __init__(self, run, index):
        super().__init__(name="writer-%d" % index, daemon=True)
        self.run_ = run
        self.a = run.a
        self.rng = random.Random(index * 7919 + (self.a.seed or 0))
        self.acked = {app: [] for app in self.a.apps}
        self.indoubt = {app: 0 for app in self.a.apps}
        self.failures = {app: 0 for app in self.a.apps}
        self.messages = {}
        self.calls = 0
        self.conflicts = 0
        self.hot = {app: [(uuid.UUID(int=(hash((app, i)) & ((1 << 120) - 1)) | (4 << 76)), 0)
                          for i in range(3)] for app in self.a.apps}

    def call(self, conn, app):
        r = self.rng
        topic = "Proxy.W" + self.name
        if r.random() < 0.15:
            # a hot aggregate: read its version (maybe stale), append the next
            i = r.randrange(3)
            agg, _ = self.hot[app][i]
            row = conn.execute("SELECT originator_version FROM es_events(%s, %s, descending => true, max_count => 1)",
                               (app, agg)).fetchone()
            v = row[0] if row else 0
            if r.random() < 0.3:
                v = max(0, v - 1)
            return [conn.execute("SELECT es_append(%s, %s, %s, %s, %s)",
                                 (app, agg, v + 1, topic, b"{}")).fetchone()[0]], 1
        shape = r.random()
        if shape < 0.3:
            return [conn.execute("SELECT es_append_json(%s, %s, 1, %s, %s::jsonb)",
                                 (app, uuid.uuid4(), topic, '{"n": 1}')).fetchone()[0]], 1
        if shape < 0.5:
            return [conn.execute("SELECT es_append(%s, ROW(%s, 1, %s, %s)::es_event)",
                                 (app, uuid.uuid4(), topic, b"x")).fetchone()[0]], 1
        if shape < 0.8:
            n = r.randint(2, 5)
            ids = [row[0] for row in conn.execute(
                "SELECT r FROM es_append(%s, (SELECT array_agg(ROW(gen_random_uuid(), 1, %s, '\\x00'::bytea)::es_event) "
                "FROM generate_series(1, %s))) WITH ORDINALITY AS t(r, n) ORDER BY n", (app, topic, n))]
            return ids, n
        agg = uuid.uuid4()
        n = r.randint(2, 4)
        events = json.dumps([{"originator_id": str(agg), "originator_version": v, "topic": topic, "state": {"v": v}}
                             for v in range(1, n + 1)])
        ids = [row[0] for row in conn.execute(
            "SELECT r FROM es_append_json(%s, %s::jsonb) WITH ORDINALITY AS t(r, n) ORDER BY n", (app, events))]
        return ids, n

    def run(self):
        conn = None
        try:
            while time.monotonic() < self.run_.end:
                if conn is None or conn.broken:
                    conn = self.run_.connect("proxy_stress_" + self.name)
                app = self.rng.choice(self.a.apps)
                self.calls += 1
                n = 0
                try:
                    ids, n = self.call(conn, app)
                except errors.UniqueViolation:
                    self.conflicts += 1
                    continue
                except psycopg.Error as e:
                    # The shard is down, or went down during the call: the
                    # events may have been committed.
                    self.failures[app] += 1
                    self.indoubt[app] += n or 5
                    msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
                    key = "%s: %s" % (app, msg[:140])
                    self.messages[key] = self.messages.get(key, 0) + 1
                    time.sleep(0.05)
                    continue
                if len(ids) != n:
                    self.run_.violation("%s: an append of %d events to %s returned %d ids" % (self.name, n, app, len(ids)))
                if ids != list(range(ids[0], ids[0] + len(ids))):
                    self.run_.violation("%s: the ids of one call are not consecutive: %s" % (self.name, ids))
                self.acked[app] += ids
        except Exception as e:
            self.run_.fatal.append("%s: %s\n%s" % (self.name, e, traceback.format_exc()))
        finally:
            if conn is not None:
                conn.close()


class Follower(threading.Thread):
    def __init__(self, run, app, index):
        super().__init__(name="follower-%s-%d" % (app, index), daemon=True)
        self.run_ = run
        self.a = run.a
        self.app = app
        self.rng = random.Random(index * 104729 + hash(app))
        self.seen = []
        self.last = 0
        self.errors = 0
        self.polls = 0
        self.stalled = False

    def run(self):
        run = self.run_
        conn = None
        deadline = None
        try:
            while True:
                if run.writers_done.is_set():
                    if deadline is None:
                        deadline = time.monotonic() + self.a.catchup_timeout
                    if run.targets is not None and self.last >= run.targets.get(self.app, 0):
                        break
                    if time.monotonic() > deadline:
                        self.stalled = True
                        break
                try:
                    if conn is None or conn.broken:
                        conn = run.connect("proxy_stress_" + self.name)
                    page = self.rng.choice((1, 7, 100, 500))
                    ids = [r[0] for r in conn.execute("SELECT id FROM es_select(%s, %s, %s)",
                                                      (self.app, self.last + 1, page))]
                except psycopg.Error:
                    self.errors += 1
                    time.sleep(0.1)
                    continue
                self.polls += 1
                for i in ids:
                    if i <= self.last:
                        run.violation("%s: id %d after id %d: ids must strictly increase" % (self.name, i, self.last))
                        continue
                    self.seen.append(i)
                    self.last = i
                if not ids:
                    time.sleep(self.rng.uniform(0.005, 0.03))
        except Exception as e:
            run.fatal.append("%s: %s\n%s" % (self.name, e, traceback.format_exc()))
        finally:
            if conn is not None:
                conn.close()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--proxy-dsn", required=True)
    p.add_argument("--shard-dsn", action="append", required=True,
                   help="conninfo of shard N (in shard order), for the final checks")
    p.add_argument("--apps", required=True, help="comma-separated applications (fresh, created through the proxy)")
    p.add_argument("--writers", type=int, default=8)
    p.add_argument("--followers-per-app", type=int, default=1)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--catchup-timeout", type=float, default=60.0)
    p.add_argument("--down-shards", default="", help="comma-separated shards that may go down during the run")
    p.add_argument("--started-file")
    p.add_argument("--seed", type=int, default=None)
    a = p.parse_args()
    a.apps = a.apps.split(",")
    a.seed = a.seed if a.seed is not None else random.randrange(1 << 30)
    down = {int(s) for s in a.down_shards.split(",") if s != ""}
    log("seed %d, applications %s" % (a.seed, a.apps))

    run = Run(a)
    with psycopg.connect(a.proxy_dsn, autocommit=True) as c:
        shard_of = {app: c.execute("SELECT shard FROM es_proxy_shard_of(%s)", (app,)).fetchone()[0] for app in a.apps}
    log("shards: %s" % shard_of)

    writers = [Writer(run, i) for i in range(a.writers)]
    followers = [Follower(run, app, i) for app in a.apps for i in range(a.followers_per_app)]
    for t in writers + followers:
        t.start()
    if a.started_file:
        while time.monotonic() < run.end and not any(any(w.acked[x] for x in a.apps) for w in writers):
            time.sleep(0.05)
        open(a.started_file, "w").close()
    for w in writers:
        w.join()
    log("writers done")

    committed = {}
    for app in a.apps:
        dsn = a.shard_dsn[shard_of[app]]
        for attempt in range(100):
            try:
                with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as c:
                    committed[app] = [r[0] for r in c.execute(
                        "SELECT e.notification_id FROM es_stored_events e JOIN es_applications x "
                        "ON x.id = e.application_id WHERE x.name = %s ORDER BY 1", (app,))]
                break
            except psycopg.OperationalError:
                time.sleep(0.2)
        else:
            print("cannot read the committed ids of %s on shard %d" % (app, shard_of[app]))
            sys.exit(2)
    run.targets = {app: (ids[-1] if ids else 0) for app, ids in committed.items()}
    run.writers_done.set()
    for f in followers:
        f.join()
    if run.fatal:
        for f in run.fatal:
            log("FATAL: " + f)
        sys.exit(2)

    summary = {"seed": a.seed, "apps": {}, "writers": {
        "calls": sum(w.calls for w in writers), "conflicts": sum(w.conflicts for w in writers)}}
    for app in a.apps:
        ids = committed[app]
        cset = set(ids)
        acked = [i for w in writers for i in w.acked[app]]
        indoubt = sum(w.indoubt[app] for w in writers)
        failures = sum(w.failures[app] for w in writers)
        if len(set(acked)) != len(acked):
            run.violation("%s: ids returned twice by the proxy" % app)
        lost = sorted(set(acked) - cset)
        if lost:
            run.violation("%s: %d returned ids are not in the events table: %s" % (app, len(lost), lost[:20]))
        extra = len(cset - set(acked))
        if extra > indoubt:
            run.violation("%s: %d committed ids were returned by no call, more than the %d events of the calls in doubt"
                          % (app, extra, indoubt))
        if failures and shard_of[app] not in down:
            run.violation("%s (shard %d, not one that went down): %d calls failed" % (app, shard_of[app], failures))
        for f in followers:
            if f.app != app:
                continue
            if f.seen != ids:
                missed = sorted(cset - set(f.seen))
                run.violation("%s: saw %d ids, %d are committed; never returned: %s; returned but not committed: %s%s"
                              % (f.name, len(f.seen), len(ids), missed[:20], sorted(set(f.seen) - cset)[:20],
                                 " (stalled at %d)" % f.last if f.stalled else ""))
        summary["apps"][app] = {
            "shard": shard_of[app], "committed": len(ids), "max_id": ids[-1] if ids else 0,
            "acked": len(acked), "failed_calls": failures, "indoubt_events": indoubt,
            "committed_unacknowledged": extra,
            "follower_errors": sum(f.errors for f in followers if f.app == app)}
    messages = {}
    for w in writers:
        for k, v in w.messages.items():
            messages[k] = messages.get(k, 0) + v
    for k, v in sorted(messages.items()):
        log("failed %d times: %s" % (v, k))
    summary["messages"] = sorted(messages)
    print("SUMMARY " + json.dumps(summary))
    sys.exit(1 if run.violations else 0)


if __name__ == "__main__":
    main()
