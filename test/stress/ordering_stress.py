#!/usr/bin/python3
"""Stress driver for the ordering properties of the notification log.

Writers (one thread and one connection each) append to one application in
transactions of every shape: one event or a batch, fresh aggregates and a
few shared "hot" aggregates (so there are version conflicts, 23505), about
10% rolled back after appending, about 10% held open 10-200 ms before
committing, some with a savepoint rolled back after an append, and (when the
server allows it) a few prepared transactions committed or rolled back later.
Every id es_append returns is recorded with the fate of its transaction:
acknowledged commit, abort, or (only when the server crashed during COMMIT)
in doubt.

Followers (one thread and one connection each, per isolation level) tail the
log one transaction per poll:  SELECT id FROM es_select(app, last + 1, 500).
They check on the fly that ids strictly increase; once the writers are done
they keep polling until they reach the highest committed id (or time out).

Then the checks, against the events table read on the primary:
  * every follower's sequence equals the sorted committed ids, exactly (each
    committed id seen once, in order; no aborted id ever returned);
  * every acknowledged id is committed, and every committed id belongs to a
    transaction that a writer committed (or whose COMMIT was in doubt);
  * no id is handed out twice (within one server lifetime);
  * the ids missing from 1..max are all ids of aborted transactions (refused
    appends take no id);
  * across crashes (--reconnect): every id handed out after a restart lies
    above every committed id of earlier lifetimes and above every position a
    follower had passed in them; ids missing for no known abort are at most
    as many as the ids of the es_append calls the crash interrupted.

Prints a summary, a line "SUMMARY <json>" and exits 0; prints every
violation ("VIOLATION: ...") and exits 1; exits 2 when the run itself could
not be carried out.  Usage: --help.  Needs Debian's python3-psycopg (run it
with /usr/bin/python3).
"""

import argparse
import json
import os
import random
import sys
import threading
import time
import traceback
import uuid

import psycopg
from psycopg import errors

LEVELS = {
    "rc": "READ COMMITTED",
    "rr": "REPEATABLE READ",
    "ser": "SERIALIZABLE",
}

BATCH_SQL = (
    "SELECT r.id FROM es_append(%s, (SELECT array_agg(ROW(o, v, t, s)::es_event ORDER BY n) "
    "FROM unnest(%s::uuid[], %s::bigint[], %s::text[], %s::bytea[]) WITH ORDINALITY AS u(o, v, t, s, n))) "
    "WITH ORDINALITY AS r(id, n) ORDER BY r.n"
)
FIELDS_SQL = "SELECT es_append(%s, %s::uuid, %s::bigint, %s::text, %s::bytea)"
ONE_SQL = "SELECT es_append(%s, ROW(%s::uuid, %s::bigint, %s::text, %s::bytea)::es_event)"
VERSION_SQL = "SELECT originator_version FROM es_events(%s, %s::uuid, NULL, NULL, true, 1)"
COMMITTED_SQL = (
    "SELECT e.notification_id FROM es_stored_events e "
    "JOIN es_applications a ON a.id = e.application_id WHERE a.name = %s ORDER BY 1"
)

# Errors that mean "the connection or the server went away".
CONNECTION_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError)


def log(msg):
    sys.stdout.write("%s %s\n" % (time.strftime("%H:%M:%S"), msg))
    sys.stdout.flush()


def ranges(ids, limit=20):
    """Compact text for a sorted list of ints: 3-7, 9, 12-13 ..."""
    out = []
    ids = sorted(ids)
    i = 0
    while i < len(ids) and len(out) < limit:
        j = i
        while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
            j += 1
        out.append(str(ids[i]) if i == j else "%d-%d" % (ids[i], ids[j]))
        i = j + 1
    if i < len(ids):
        out.append("... (%d ids in all)" % len(ids))
    return ", ".join(out)


class Run:
    """What all threads share: options, the stop flags, violations, epochs."""

    def __init__(self, args):
        self.args = args
        self.lock = threading.Lock()
        self.violations = []
        self.errors = []
        self.writers_done = threading.Event()
        self.abort = threading.Event()     # a fatal error: everybody stops
        self.target = None                 # highest committed id, once known
        self.follower_deadline = None
        self.epochs = {}                   # server lifetime key -> first seen (monotonic)

    def violation(self, msg):
        with self.lock:
            self.violations.append(msg)
        log("VIOLATION: " + msg)

    def error(self, msg):
        with self.lock:
            self.errors.append(msg)
        log("ERROR: " + msg)
        self.abort.set()

    def epoch_seen(self, key):
        with self.lock:
            if key not in self.epochs:
                self.epochs[key] = time.monotonic()

    def epoch_order(self):
        """The lifetimes of the primary (the writers' server), oldest first."""
        with self.lock:
            return [k for k, _ in sorted(self.epochs.items(), key=lambda kv: kv[1])
                    if k.startswith("primary:")]

    def connect(self, dsn, name, deadline):
        """A connection (autocommit: transactions are explicit) and the key of
        the server lifetime it belongs to ("primary:..." for the writers'
        server).  With --reconnect, retries until the deadline; returns
        (None, None) if it passes."""
        role = "primary" if dsn in (self.args.writer_dsn, self.args.check_dsn) else "follower"
        opts = "-c statement_timeout=%d" % (self.args.statement_timeout * 1000)
        while True:
            try:
                conn = psycopg.connect(dsn, autocommit=True, application_name=name,
                                       options=opts, connect_timeout=5)
                # The postmaster's start time changes when it is restarted, the
                # checkpointer's pid when it is (crash restart): together they
                # name one lifetime of the server's shared memory.
                row = conn.execute(
                    "SELECT pg_postmaster_start_time()::text || '/' || coalesce(("
                    "SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'"
                    ")::text, '?')").fetchone()
                key = role + ":" + row[0]
                self.epoch_seen(key)
                return conn, key
            except CONNECTION_ERRORS as e:
                if not self.args.reconnect:
                    raise
                if time.monotonic() > deadline or self.abort.is_set():
                    log("%s: gave up connecting: %s" % (name, str(e).strip()))
                    return None, None
                time.sleep(0.2)


class Txn:
    """One writer transaction in flight."""

    def __init__(self):
        self.ids = []          # ids that commit with the transaction
        self.aborted = []      # ids of rolled-back savepoints
        self.handed = []       # every id es_append returned in it
        self.stage = "begin"   # begin, appending, open, commit, gone
        self.pending_n = 0     # events of an es_append call without reply
        self.hot_reads = {}    # hot aggregate -> version read


class Writer(threading.Thread):
    def __init__(self, run, index, hot):
        super().__init__(name="writer-%d" % index, daemon=True)
        self.run_ = run
        self.a = run.args
        self.index = index
        self.rng = random.Random(run.args.seed * 1000 + index)
        self.hot = hot
        self.hot_version = {h: 0 for h in hot}
        self.conn = None
        self.epoch = None
        # (tuple of ids, epoch) per fate
        self.acked = []
        self.aborted = []
        self.indoubt = []
        self.interrupted = []      # (number of events, epoch) of calls cut off by a crash
        self.handed = []           # (id, epoch) for every id es_append returned
        self.pending_gid = None    # (gid, ids, plan_commit, stage, epoch)
        self.stats = dict(txns=0, committed=0, rolled_back=0, conflicts=0, deadlocks=0,
                          held=0, savepoints=0, batches=0, prepared=0, reconnects=0,
                          events=0)
        self.gid_seq = 0

    # -- events ---------------------------------------------------------
    def make_events(self, cur, txn, allow_hot):
        """A list of (originator_id, version) for one es_append call."""
        r = self.rng
        events = []
        if allow_hot and r.random() < self.a.hot_fraction:
            h = r.choice(self.hot)
            if r.random() < 0.25:
                v = self.hot_version[h]      # as last read: maybe stale, a conflict
            else:
                row = cur.execute(VERSION_SQL, (self.a.app, h)).fetchone()
                v = row[0] if row else 0
            # Cached for later stale use only once committed (a read may
            # see this transaction's own appends).
            txn.hot_reads[h] = max(txn.hot_reads.get(h, 0), v)
            events.append((h, v + 1))
        if not events or r.random() < 0.4:
            shape = r.random()
            if shape < 0.5:
                events.append((uuid.uuid4(), 1))
            elif shape < 0.8:
                for _ in range(r.randint(2, 6)):
                    events.append((uuid.uuid4(), 1))
            else:
                agg = uuid.uuid4()
                for v in range(1, r.randint(2, 5) + 1):
                    events.append((agg, v))
        if len({e[0] for e in events}) == len(events):
            r.shuffle(events)      # distinct aggregates: any order
        return events

    def append(self, txn, allow_hot=True):
        cur = self.conn.cursor()
        events = self.make_events(cur, txn, allow_hot)
        topic = "Stress.W%d" % self.index
        txn.stage = "appending"
        txn.pending_n = len(events)
        if len(events) == 1 and self.rng.random() < 0.7:
            o, v = events[0]
            sql = FIELDS_SQL if self.rng.random() < 0.5 else ONE_SQL
            ids = [cur.execute(sql, (self.a.app, o, v, topic, os.urandom(8))).fetchone()[0]]
        else:
            self.stats["batches"] += 1
            ids = [row[0] for row in cur.execute(BATCH_SQL, (
                self.a.app, [e[0] for e in events], [e[1] for e in events],
                [topic] * len(events), [os.urandom(self.rng.randint(1, 64)) for _ in events]))]
        txn.pending_n = 0
        txn.stage = "open"
        if len(ids) != len(events):
            self.run_.violation("%s: es_append of %d events returned %d ids" % (self.name, len(events), len(ids)))
        for i in ids:
            self.handed.append((i, self.epoch))
        txn.handed += ids
        if ids and ids != list(range(ids[0], ids[0] + len(ids))):
            self.run_.violation("%s: the ids of one es_append call are not consecutive: %s" % (self.name, ids))
        self.stats["events"] += len(ids)
        return ids

    # -- one transaction --------------------------------------------------
    def transaction(self, txn):
        r = self.rng
        c = self.conn
        c.execute("BEGIN")
        txn.ids += self.append(txn)
        if r.random() < 0.25:
            txn.ids += self.append(txn)
        if r.random() < self.a.savepoint_fraction:
            self.stats["savepoints"] += 1
            c.execute("SAVEPOINT sp")
            sp_ids = self.append(txn, allow_hot=False)
            c.execute("ROLLBACK TO SAVEPOINT sp")
            txn.aborted += sp_ids
            txn.ids += self.append(txn, allow_hot=False)
        x = r.random()
        if x < self.a.rollback_fraction:
            if r.random() < 0.3 and self.a.hold_fraction > 0:
                time.sleep(r.uniform(0.01, 0.2))
            txn.stage = "rollback"
            c.execute("ROLLBACK")
            self.stats["rolled_back"] += 1
            self.aborted.append((tuple(txn.handed), self.epoch))
            return
        x -= self.a.rollback_fraction
        if x < self.a.prepared_fraction:
            self.prepared(txn)
            return
        x -= self.a.prepared_fraction
        if x < self.a.hold_fraction:
            self.stats["held"] += 1
            time.sleep(r.uniform(0.01, 0.2))
        txn.stage = "commit"
        c.execute("COMMIT")
        self.stats["committed"] += 1
        self.acked.append((tuple(txn.ids), self.epoch))
        self.aborted.append((tuple(txn.aborted), self.epoch))
        for h, v in txn.hot_reads.items():
            self.hot_version[h] = max(self.hot_version[h], v)

    def prepared(self, txn):
        r = self.rng
        self.gid_seq += 1
        gid = "es_stress_%s_w%d_%d" % (self.a.app, self.index, self.gid_seq)
        plan_commit = r.random() < 0.75
        self.aborted.append((tuple(txn.aborted), self.epoch))
        txn.aborted = []
        self.pending_gid = [gid, tuple(txn.ids), plan_commit, "prepare", self.epoch]
        txn.stage = "gone"         # from here on, pending_gid tells its fate
        self.conn.execute("PREPARE TRANSACTION '%s'" % gid)
        self.stats["prepared"] += 1
        self.pending_gid[3] = "prepared"
        time.sleep(r.uniform(0.01, 0.3))
        self.finish_prepared()

    def finish_prepared(self):
        gid, ids, plan_commit, stage, epoch = self.pending_gid
        self.pending_gid[3] = "finish"
        self.conn.execute("%s PREPARED '%s'" % ("COMMIT" if plan_commit else "ROLLBACK", gid))
        (self.acked if plan_commit else self.aborted).append((ids, epoch))
        self.stats["committed" if plan_commit else "rolled_back"] += 1
        self.pending_gid = None

    def resolve_prepared_after_reconnect(self):
        """The connection broke around a prepared transaction: find out what
        became of it (prepared state survives a crash) and finish it."""
        gid, ids, plan_commit, stage, epoch = self.pending_gid
        exists = self.conn.execute("SELECT count(*) FROM pg_prepared_xacts WHERE gid = %s",
                                   (gid,)).fetchone()[0] > 0
        if exists:
            self.finish_prepared()
        elif stage == "prepare":
            # PREPARE was not acknowledged and is not there: it never happened.
            self.aborted.append((ids, epoch))
            self.pending_gid = None
        elif stage == "finish":
            # It had been prepared and is gone: our COMMIT/ROLLBACK PREPARED did it.
            (self.acked if plan_commit else self.aborted).append((ids, epoch))
            self.pending_gid = None
        else:
            self.run_.violation("%s: prepared transaction %s vanished before it was finished" % (self.name, gid))
            self.aborted.append((ids, epoch))
            self.pending_gid = None

    def lost_connection(self, txn, e):
        """Record what the broken transaction's ids became."""
        if txn.stage == "commit":
            self.indoubt.append((tuple(txn.ids), self.epoch))
            self.aborted.append((tuple(i for i in txn.handed if i not in txn.ids), self.epoch))
        elif txn.stage != "gone":
            # COMMIT was not sent: nothing of it can have committed.
            self.aborted.append((tuple(txn.handed), self.epoch))
            if txn.pending_n:
                self.interrupted.append((txn.pending_n, self.epoch))
        try:
            self.conn.close()
        except Exception:
            pass
        self.conn = None

    def run(self):
        a = self.a
        end = self.run_.writers_end
        try:
            while not self.run_.abort.is_set():
                if self.conn is None:
                    # After the end, only to finish a prepared transaction.
                    deadline = end if self.pending_gid is None else end + a.catchup_timeout
                    self.conn, self.epoch = self.run_.connect(a.writer_dsn, "es_stress_writer_%d" % self.index, deadline)
                    if self.conn is None:
                        break
                    if self.pending_gid is not None:
                        try:
                            self.resolve_prepared_after_reconnect()
                        except CONNECTION_ERRORS:
                            self.conn = None
                            continue
                if self.pending_gid is not None:
                    continue
                if time.monotonic() >= end:
                    break
                txn = Txn()
                self.stats["txns"] += 1
                try:
                    self.transaction(txn)
                except (errors.UniqueViolation, errors.DeadlockDetected) as e:
                    # A refused append (version conflict, raised by es_append
                    # itself, with no constraint name) or two transactions
                    # locking the same hot aggregates in opposite orders.  A
                    # unique index violated means two writers got the same id
                    # or version: a bug, not a conflict.
                    if isinstance(e, errors.UniqueViolation) and e.diag.constraint_name:
                        self.run_.violation("%s: es_append violated constraint %s: %s"
                                            % (self.name, e.diag.constraint_name, str(e).strip()))
                    self.stats["conflicts" if isinstance(e, errors.UniqueViolation) else "deadlocks"] += 1
                    self.stats["rolled_back"] += 1
                    self.aborted.append((tuple(txn.handed), self.epoch))
                    txn.stage = "gone"
                    try:
                        self.conn.execute("ROLLBACK")
                    except CONNECTION_ERRORS as e2:
                        if not a.reconnect:
                            raise
                        self.stats["reconnects"] += 1
                        self.lost_connection(txn, e2)
                except CONNECTION_ERRORS as e:
                    if not a.reconnect:
                        raise
                    self.stats["reconnects"] += 1
                    log("%s: connection lost (%s) at stage %s; reconnecting"
                        % (self.name, str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__,
                           self.pending_gid[3] if self.pending_gid else txn.stage))
                    self.lost_connection(txn, e)
        except Exception as e:
            self.run_.error("%s: %s: %s\n%s" % (self.name, type(e).__name__, e, traceback.format_exc()))
        finally:
            if self.pending_gid is not None:
                self.run_.error("%s: prepared transaction %s left unresolved" % (self.name, self.pending_gid[0]))
            if self.conn is not None:
                try:
                    self.conn.close()
                except Exception:
                    pass


class Follower(threading.Thread):
    def __init__(self, run, level, index):
        super().__init__(name="follower-%s-%d" % (level, index), daemon=True)
        self.run_ = run
        self.a = run.args
        self.level = level
        self.rng = random.Random(run.args.seed * 1000 + 500 + index)
        self.seen = []
        self.last = 0
        self.epoch_last = {}     # epoch -> highest id passed on a connection of it
        self.stats = dict(polls=0, empty=0, skipped_gaps=0, skipped_ids=0, held_back=0,
                          serialization_failures=0, reconnects=0, epochs=0)
        self.stalled = False
        self.bad = 0

    def poll(self, conn, epoch):
        a = self.a
        page = a.page if self.rng.random() >= a.small_page_fraction else self.rng.randint(1, 50)
        conn.execute("BEGIN ISOLATION LEVEL " + LEVELS[self.level])
        try:
            if a.naive_reader:
                # Self-check of the test: a reader that ignores gaps (a plain
                # scan of the table) must be caught skipping ids.
                rows = conn.execute(
                    "SELECT e.notification_id FROM es_stored_events e JOIN es_applications a "
                    "ON a.id = e.application_id WHERE a.name = %s AND e.notification_id > %s "
                    "ORDER BY 1 LIMIT %s", (a.app, self.last, page)).fetchall()
            else:
                rows = conn.execute("SELECT id FROM es_select(%s, %s, %s)",
                                    (a.app, self.last + 1, page)).fetchall()
            ids = [r[0] for r in rows]
            if len(ids) < page and self.level != "rc":
                # Same snapshot: is there a visible id beyond what we were given?
                m = conn.execute("SELECT es_max_notification_id(%s)", (a.app,)).fetchone()[0]
                if m is not None and m > (ids[-1] if ids else self.last):
                    self.stats["held_back"] += 1
            conn.execute("COMMIT")
        except BaseException:
            if not conn.broken:
                try:
                    conn.execute("ROLLBACK")
                except Exception:
                    pass
            raise
        self.stats["polls"] += 1
        if len(ids) > page:
            self.run_.violation("%s: asked for %d rows, got %d" % (self.name, page, len(ids)))
        if not ids:
            self.stats["empty"] += 1
        for i in ids:
            if i <= self.last:
                self.bad += 1
                if self.bad <= 5:
                    self.run_.violation("%s: id %d returned after id %d (start %d): ids must strictly increase"
                                        % (self.name, i, self.last, self.last + 1))
                continue
            if i > self.last + 1:
                self.stats["skipped_gaps"] += 1
                self.stats["skipped_ids"] += i - self.last - 1
            self.seen.append(i)
            self.last = i
        if self.last:
            self.epoch_last[epoch] = max(self.epoch_last.get(epoch, 0), self.last)
        return len(ids)

    def run(self):
        run = self.run_
        conn = None
        epoch = None
        try:
            while not run.abort.is_set():
                if run.writers_done.is_set() and run.target is not None and self.last >= run.target:
                    break
                deadline = run.follower_deadline
                if deadline is not None and time.monotonic() > deadline:
                    self.stalled = True
                    break
                if conn is None:
                    conn, epoch = run.connect(self.a.follower_dsn, "es_stress_" + self.name,
                                              deadline if deadline is not None else
                                              run.writers_end + self.a.catchup_timeout)
                    if conn is None:
                        self.stalled = True
                        break
                    self.stats["epochs"] += 1
                try:
                    n = self.poll(conn, epoch)
                except (errors.SerializationFailure, errors.DeadlockDetected):
                    # (on a standby, also queries cancelled by a conflict with recovery)
                    self.stats["serialization_failures"] += 1
                    continue
                except CONNECTION_ERRORS as e:
                    # On a standby a conflict with recovery may end the session.
                    if not (self.a.reconnect or self.a.standby):
                        raise
                    self.stats["reconnects"] += 1
                    log("%s: connection lost at id %d (%s); reconnecting"
                        % (self.name, self.last, str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__))
                    try:
                        conn.close()
                    except Exception:
                        pass
                    conn = None
                    continue
                if n == 0:
                    time.sleep(self.rng.uniform(0.002, 0.02))
        except Exception as e:
            run.error("%s: %s: %s\n%s" % (self.name, type(e).__name__, e, traceback.format_exc()))
        finally:
            if conn is not None:
                try:
                    conn.close()
                except Exception:
                    pass


def committed_ids(run):
    a = run.args
    conn, _ = run.connect(a.check_dsn, "es_stress_check", time.monotonic() + a.catchup_timeout)
    if conn is None:
        raise RuntimeError("cannot connect to the primary to read the committed ids")
    with conn:
        ids = [r[0] for r in conn.execute(COMMITTED_SQL, (a.app,))]
        prepared = conn.execute("SELECT gid FROM pg_prepared_xacts WHERE gid LIKE %s",
                                ("es_stress_%s_%%" % a.app,)).fetchall()
        watermark = conn.execute(
            "SELECT w.notification_id FROM es_watermarks w JOIN es_applications a "
            "ON a.id = w.application_id WHERE a.name = %s", (a.app,)).fetchone()
    return ids, [p[0] for p in prepared], (watermark[0] if watermark else None)


def diagnose_stall(run, f, committed):
    """Why a follower did not reach the end: what follows its position."""
    a = run.args
    nxt = [i for i in committed if i > f.last][:5]
    msg = "%s stopped at id %d (saw %d ids); the next committed ids are %s" % (f.name, f.last, len(f.seen), nxt)
    try:
        with psycopg.connect(a.follower_dsn, autocommit=True, connect_timeout=5) as c:
            rec = c.execute("SELECT pg_is_in_recovery()").fetchone()[0]
            wm = c.execute("SELECT w.notification_id FROM es_watermarks w JOIN es_applications a "
                           "ON a.id = w.application_id WHERE a.name = %s", (a.app,)).fetchone()
            page = [r[0] for r in c.execute("SELECT id FROM es_select(%s, %s, 5)", (a.app, f.last + 1))]
            msg += "; on the follower's server (recovery=%s) the watermark is %s and es_select from %d now gives %s" % (
                rec, wm[0] if wm else None, f.last + 1, page)
        with psycopg.connect(a.check_dsn, autocommit=True, connect_timeout=5) as c:
            open_x = c.execute("SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%%' "
                               "AND application_name LIKE 'es_stress_writer%%'").fetchone()[0]
            prep = c.execute("SELECT count(*) FROM pg_prepared_xacts").fetchone()[0]
            msg += "; on the primary: %d writer transactions open, %d prepared" % (open_x, prep)
    except Exception as e:
        msg += "; (diagnosis failed: %s)" % e
    return msg


def check(run, writers, followers, committed, prepared_left, watermark):
    a = run.args
    V = run.violation
    committed_set = set(committed)
    if len(committed_set) != len(committed):
        V("the events table holds duplicate notification ids")
    order = run.epoch_order()
    rank = {k: i for i, k in enumerate(order)}
    multi = len(order) > 1

    acked, aborted, indoubt = {}, {}, {}   # id -> list of epochs
    for w in writers:
        for dst, src in ((acked, w.acked), (aborted, w.aborted), (indoubt, w.indoubt)):
            for ids, ep in src:
                for i in ids:
                    dst.setdefault(i, []).append(ep)
    interrupted = sum(n for w in writers for n, _ in w.interrupted)

    if prepared_left:
        V("prepared transactions of this run are left behind: %s" % prepared_left)

    # Each id handed out once per server lifetime (once at all, without crashes).
    handed = {}
    for w in writers:
        for i, ep in w.handed:
            handed.setdefault(i, []).append(ep)
    dups = sorted(i for i, eps in handed.items() if len(set(eps)) != len(eps) or (not multi and len(eps) > 1))
    if dups:
        V("ids handed out twice by es_append: %s" % ranges(dups))
    twice = sorted(i for i, eps in acked.items() if len(eps) > 1)
    if twice:
        V("ids acknowledged as committed by two transactions: %s" % ranges(twice))

    # Acknowledged commits are durable and visible.
    lost = sorted(i for i in acked if i not in committed_set)
    if lost:
        V("%d acknowledged ids are not in the events table: %s" % (len(lost), ranges(lost)))
    # Nothing is committed that no writer committed.
    unexplained = sorted(i for i in committed if i not in acked and i not in indoubt)
    if unexplained:
        what = sorted(i for i in unexplained if i in aborted)
        V("%d committed ids belong to no committed transaction: %s (of which rolled back: %s)"
          % (len(unexplained), ranges(unexplained), ranges(what) or "none"))
    if not multi:
        both = sorted(i for i in aborted if i in committed_set)
        if both:
            V("ids of rolled-back transactions are in the events table: %s" % ranges(both))

    # Gap-freeness: what is missing from 1..max was lost by an abort.
    top = committed[-1] if committed else 0
    missing = sorted(set(range(1, top + 1)) - committed_set)
    unknown = [i for i in missing if i not in aborted and i not in indoubt]
    if not multi and unknown:
        V("%d ids below the highest committed id are missing though no transaction holding them "
          "aborted (did a refused append take ids?): %s" % (len(unknown), ranges(unknown)))
    if multi and len(unknown) > interrupted:
        V("%d ids are missing for no known abort, more than the %d events of es_append calls cut off "
          "by the crash: %s" % (len(unknown), interrupted, ranges(unknown)))

    # Across restarts: no id at or below anything committed or passed before.
    if multi:
        committed_epoch = {}
        for src in (acked, indoubt):
            for i, eps in src.items():
                if i in committed_set:
                    for ep in eps:
                        committed_epoch.setdefault(i, ep)
        for k in range(1, len(order)):
            earlier = set(order[:k])
            floor_c = max([i for i, ep in committed_epoch.items() if ep in earlier] or [0])
            # (only followers of the primary: a standby has lifetimes of its own)
            floor_f = max([p for f in followers for ep, p in f.epoch_last.items() if ep in earlier] or [0])
            floor = max(floor_c, floor_f)
            later = sorted(i for w in writers for i, ep in w.handed if rank[ep] >= k and i <= floor)
            if later:
                V("after restart %d, es_append handed out ids at or below %d (highest committed before: %d, "
                  "highest passed by a follower before: %d): %s" % (k, floor, floor_c, floor_f, ranges(later)))

    # Followers: exactly the committed ids, in order.
    for f in followers:
        if f.seen == committed:
            continue
        seen_set = set(f.seen)
        missed = sorted(committed_set - seen_set)
        extra = sorted(seen_set - committed_set)
        msg = "%s (%s): its sequence of %d ids differs from the %d committed ids" % (
            f.name, LEVELS[f.level], len(f.seen), len(committed))
        if missed:
            msg += "; never returned %d committed ids: %s" % (len(missed), ranges(missed))
        if extra:
            ab = [i for i in extra if i in aborted]
            msg += "; returned %d ids that are not committed: %s (of rolled-back transactions: %s)" % (
                len(extra), ranges(extra), ranges(ab) or "none")
        if f.stalled:
            msg += "; " + diagnose_stall(run, f, committed)
        V(msg)

    # The watermark is never ahead of what was handed out.
    if watermark is not None:
        top_handed = max(handed) if handed else 0
        if not multi and watermark > top_handed:
            V("the watermark %d is above the highest id ever handed out (%d)" % (watermark, top_handed))

    reused = sum(1 for eps in handed.values() if len(eps) > 1)
    indoubt_committed = sum(1 for i in indoubt if i in committed_set)
    return dict(committed=len(committed), max_id=top, missing=len(missing), reused_ids=reused,
                indoubt_committed=indoubt_committed,
                aborted_ids=len(aborted), indoubt_ids=len(indoubt), unknown_missing=len(unknown),
                interrupted_events=interrupted, acked_ids=len(acked), watermark=watermark)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--writer-dsn", required=True, help="libpq conninfo of the primary (writers)")
    p.add_argument("--follower-dsn", help="conninfo for the followers (default: the writers'); may be a hot standby")
    p.add_argument("--check-dsn", help="conninfo of the primary for the final checks (default: the writers')")
    p.add_argument("--app", required=True, help="application name (a fresh one: its log must be empty)")
    p.add_argument("--writers", type=int, default=16)
    p.add_argument("--duration", type=float, default=10.0, help="seconds of writing (1-60)")
    p.add_argument("--followers-per-level", type=int, default=2)
    p.add_argument("--levels", default="rc,rr,ser",
                   help="comma-separated isolation levels of the followers: rc, rr, ser")
    p.add_argument("--standby", action="store_true",
                   help="followers are on a hot standby: SERIALIZABLE is not allowed there, so "
                        "its followers run REPEATABLE READ instead")
    p.add_argument("--reconnect", action="store_true",
                   help="the server will crash: reconnect and continue, check across restarts")
    p.add_argument("--catchup-timeout", type=float, default=60.0,
                   help="seconds for followers to reach the last committed id after the writers stop")
    p.add_argument("--hot-aggregates", type=int, default=3)
    p.add_argument("--hot-fraction", type=float, default=0.3)
    p.add_argument("--rollback-fraction", type=float, default=0.10)
    p.add_argument("--hold-fraction", type=float, default=0.10,
                   help="transactions held open 10-200 ms before COMMIT (0: none, and no rollback waits either)")
    p.add_argument("--savepoint-fraction", type=float, default=0.15)
    p.add_argument("--prepared-fraction", type=float, default=0.03,
                   help="(used only if max_prepared_transactions > 0)")
    p.add_argument("--page", type=int, default=500)
    p.add_argument("--small-page-fraction", type=float, default=0.2)
    p.add_argument("--statement-timeout", type=int, default=60, help="seconds")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--naive-reader", action="store_true",
                   help="self-check: followers read the table directly, ignoring gaps; the run must fail")
    p.add_argument("--started-file", help="created once the writers have committed something")
    args = p.parse_args()
    args.follower_dsn = args.follower_dsn or args.writer_dsn
    args.check_dsn = args.check_dsn or args.writer_dsn
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1 << 30)
    if not (1 <= args.duration <= 60):
        p.error("--duration must be between 1 and 60 seconds")
    if args.writers < 1 or args.followers_per_level < 1:
        p.error("need writers and followers")
    levels = [l.strip() for l in args.levels.split(",") if l.strip()]
    for l in levels:
        if l not in LEVELS:
            p.error("unknown level %r" % l)

    run = Run(args)
    log("seed %d, app %s, %d writers for %.1f s, followers %s x %d%s%s" % (
        args.seed, args.app, args.writers, args.duration, levels, args.followers_per_level,
        " (on a standby)" if args.standby else "", ", reconnecting across crashes" if args.reconnect else ""))

    # Set up: the application, an empty log, what the server allows.
    try:
        with psycopg.connect(args.check_dsn, autocommit=True) as c:
            c.execute("SELECT es_create_application(%s)", (args.app,))
            n = c.execute("SELECT count(*) FROM es_stored_events e JOIN es_applications a "
                          "ON a.id = e.application_id WHERE a.name = %s", (args.app,)).fetchone()[0]
            if n:
                print("application %s already has %d events: use a fresh one" % (args.app, n))
                return 2
            if int(c.execute("SHOW max_prepared_transactions").fetchone()[0]) == 0:
                args.prepared_fraction = 0.0
        with psycopg.connect(args.follower_dsn, autocommit=True) as c:
            in_recovery = c.execute("SELECT pg_is_in_recovery()").fetchone()[0]
    except psycopg.Error as e:
        print("setup failed: %s" % e)
        return 2
    if in_recovery and not args.standby:
        log("the followers' server is in recovery: running as --standby")
        args.standby = True
    if args.standby and "ser" in levels:
        log("NOTE: SERIALIZABLE is not allowed on a hot standby: its followers run REPEATABLE READ")
        levels = ["rr" if l == "ser" else l for l in levels]
    if args.prepared_fraction == 0:
        log("NOTE: max_prepared_transactions is 0: no prepared transactions")

    hot = [uuid.UUID(int=(0xE5 << 120) | i) for i in range(1, args.hot_aggregates + 1)] or []
    run.writers_end = time.monotonic() + args.duration
    followers = [Follower(run, l, i * 10 + j) for i, l in enumerate(levels) for j in range(args.followers_per_level)]
    for j, f in enumerate(followers):
        f.name = "follower-%s-%d" % (f.level, j)
    writers = [Writer(run, i, hot) for i in range(args.writers)]
    for t in followers + writers:
        t.start()

    if args.started_file:
        while time.monotonic() < run.writers_end and not run.abort.is_set():
            if any(w.acked for w in writers):
                break
            time.sleep(0.05)
        with open(args.started_file, "w") as fh:
            fh.write("started\n")

    for w in writers:
        w.join()
    log("writers done")
    committed = prepared_left = watermark = None
    if not run.abort.is_set():
        try:
            committed, prepared_left, watermark = committed_ids(run)
        except Exception as e:
            run.error("reading the committed ids: %s" % e)
    run.target = committed[-1] if committed else 0
    run.follower_deadline = time.monotonic() + args.catchup_timeout
    run.writers_done.set()
    for f in followers:
        f.join()
    log("followers done")

    wstats = {}
    for w in writers:
        for k, v in w.stats.items():
            wstats[k] = wstats.get(k, 0) + v
    fstats = {f.name: dict(f.stats, seen=len(f.seen), last=f.last, stalled=f.stalled) for f in followers}

    if run.errors:
        for e in run.errors:
            print("ERROR: " + e.splitlines()[0])
        print("the run could not be carried out (seed %d)" % args.seed)
        return 2

    result = check(run, writers, followers, committed, prepared_left, watermark)
    summary = dict(app=args.app, seed=args.seed, standby=args.standby, epochs=len(run.epoch_order()),
                   writers=wstats, followers=fstats, result=result,
                   followers_across_all_epochs=sum(1 for f in followers
                                                   if set(run.epoch_order()) <= set(f.epoch_last)),
                   violations=len(run.violations))
    log("writers: %s" % ", ".join("%s=%d" % kv for kv in sorted(wstats.items())))
    for name, s in fstats.items():
        log("%s: %s" % (name, ", ".join("%s=%s" % kv for kv in sorted(s.items()))))
    log("result: %s; lifetimes of the primary seen: %d" % (
        ", ".join("%s=%s" % kv for kv in sorted(result.items())), len(run.epoch_order())))
    print("SUMMARY " + json.dumps(summary, sort_keys=True))
    sys.stdout.flush()
    if run.violations:
        print("FAILED: %d violations (seed %d):" % (len(run.violations), args.seed))
        for v in run.violations:
            print("VIOLATION: " + v)
        return 1
    print("OK: every follower saw exactly the %d committed ids in order; no unexplained gap" % len(committed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
