#!/usr/bin/python3
"""Push and follow, through psycopg 3 as a real follower would: the worker's
NOTIFY announcements, es_wait, consumer groups, and tracking.

Run against a cluster that has the extension installed and preloaded:

    ES_TEST_DSN="host=/path/to/socket port=54325 user=postgres dbname=postgres" \\
        /usr/bin/python3 test/client/test_follow.py -v

The module creates (and afterwards drops) its own database, es_follow.  Each
test uses its own application names.

Waiting for notifications with psycopg 3.1: Connection.notifies() has no
timeout, so the Listener below select()s on the socket, then
pgconn.consume_input() and pgconn.notifies().  Notifications that arrive
while the connection runs a query are consumed by psycopg itself and handed
only to the connection's notify handlers, so the Listener registers one:
without it a follower would miss announcements that come in while it
processes a page.
"""

import json
import os
import sys
import random
import select
import threading
import time
import unittest
import uuid
from typing import Callable, Dict, List, Optional, Set, Tuple

import psycopg
import psycopg.errors
from psycopg import pq, sql
from psycopg.rows import namedtuple_row
from psycopg.types.composite import CompositeInfo, register_composite

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import es_testdb  # noqa: E402

TEST_DB = "es_follow"
# Downstream aggregates mirror upstream ones: uuid5(NS, upstream id).
NS = uuid.UUID("0b7f2a5e-0000-4000-8000-00000000f011")


def connect(dsn: str) -> psycopg.Connection:
    """An autocommit connection that knows how to send es_event values."""
    conn = psycopg.connect(dsn, autocommit=True)
    register_composite(CompositeInfo.fetch(conn, "es_event"), conn)
    return conn


def es_event_type(conn: psycopg.Connection):
    return conn.adapters.types["es_event"].python_type


class Listener:
    """LISTENs on a channel; wait() returns the payloads (parsed JSON) that
    arrived, waiting at most `timeout` seconds for the first one.  One
    Listener per connection: it drops other channels' notifications."""

    def __init__(self, conn: psycopg.Connection, channel: str):
        self.conn = conn
        self.channel = channel
        self.pending: List[dict] = []
        conn.add_notify_handler(self._handler)
        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))

    def _handler(self, n) -> None:
        if n.channel == self.channel:
            self.pending.append(json.loads(n.payload))

    def _drain(self) -> None:
        pgconn = self.conn.pgconn
        pgconn.consume_input()          # raises OperationalError on a lost connection
        while (n := pgconn.notifies()) is not None:
            if n.relname.decode() == self.channel:
                self.pending.append(json.loads(n.extra.decode()))
        if pgconn.status != pq.ConnStatus.OK:
            raise psycopg.OperationalError("connection lost while listening")

    def wait(self, timeout: float) -> List[dict]:
        deadline = time.monotonic() + timeout
        while not self.pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            ready, _, _ = select.select([self.conn.pgconn.socket], [], [], remaining)
            if ready:
                self._drain()
        out, self.pending = self.pending, []
        return out

    def collect(self, duration: float) -> List[dict]:
        """Everything that arrives within `duration` seconds."""
        deadline = time.monotonic() + duration
        out: List[dict] = []
        while (remaining := deadline - time.monotonic()) > 0:
            out.extend(self.wait(remaining))
        return out


def worker_running(conn: psycopg.Connection) -> bool:
    return conn.execute(
        "SELECT count(*) > 0 FROM pg_stat_activity"
        " WHERE backend_type = 'eventsourcing worker' AND datname = current_database()"
    ).fetchone()[0]


class FollowTest(unittest.TestCase):
    dsn: str
    admin_dsn: str

    @classmethod
    def setUpClass(cls):
        cls.admin_dsn, cls.dsn = es_testdb.create(TEST_DB)

    @classmethod
    def tearDownClass(cls):
        es_testdb.drop(cls.admin_dsn, TEST_DB)

    def setUp(self):
        self.conns: List[psycopg.Connection] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()       # tells a failed test's threads to stop

    def tearDown(self):
        self.stopping.set()
        for c in self.conns:
            c.close()

    def connect(self) -> psycopg.Connection:
        conn = connect(self.dsn)
        with self.lock:
            self.conns.append(conn)
        return conn

    def create(self, conn, *names: str) -> None:
        for name in names:
            conn.execute("SELECT es_create_application(%s)", (name,))

    def append_one(self, conn, app: str) -> int:
        return conn.execute("SELECT es_append(%s, gen_random_uuid(), 1, 'T.Created', '\\x7b7d')",
                            (app,)).fetchone()[0]

    def log_ids(self, conn, app: str) -> List[int]:
        return [r[0] for r in conn.execute("SELECT id FROM es_select(%s, 1, 1000000)", (app,))]

    def run_threads(self, threads: List[threading.Thread], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        stuck = [t.name for t in threads if t.is_alive()]
        self.assertEqual(stuck, [], "threads still running after %.0f s" % timeout)

    # a ---------------------------------------------------------------------

    def test_process_application_follows_announcements(self):
        """A process application driven by NOTIFY, with concurrent writers
        (some rolled back, some multi-event), killed midway: every committed
        event is processed exactly once, in id order, and no aborted one."""
        up, down = "follow_up", "follow_down"
        admin = self.connect()
        self.create(admin, up, down)
        channel = admin.execute("SELECT es_channel(%s)", (up,)).fetchone()[0]
        self.assertEqual(channel, "es:" + up)

        WRITERS, TXS, PAGE = 4, 80, 20
        committed: Dict[int, Tuple[uuid.UUID, int]] = {}
        aborted: Set[int] = set()
        writer_errors: List[str] = []

        def writer(k: int) -> None:
            try:
                conn = self.connect()
                EsEvent = es_event_type(conn)
                rnd = random.Random(1000 + k)
                versions: Dict[uuid.UUID, int] = {}     # committed aggregates of this writer
                for i in range(TXS):
                    if self.stopping.is_set():
                        return
                    pending: Dict[uuid.UUID, int] = {}
                    events = []
                    for _ in range(1 if rnd.random() < 0.55 else rnd.randint(2, 4)):
                        if versions and rnd.random() < 0.5:
                            agg = rnd.choice(list(versions))
                        else:
                            agg = uuid.uuid4()
                        v = pending.get(agg, versions.get(agg, 0)) + 1
                        pending[agg] = v
                        events.append(EsEvent(agg, v, "orders:Order.Changed",
                                              json.dumps({"writer": k, "tx": i}).encode()))
                    rollback = rnd.random() < 0.15
                    conn.execute("BEGIN")
                    ids = [r[0] for r in conn.execute("SELECT * FROM es_append(%s, %s::es_event[])",
                                                      (up, events))]
                    if rnd.random() < 0.2:
                        time.sleep(rnd.uniform(0.002, 0.015))   # an open writer holds readers back
                    if rollback:
                        conn.execute("ROLLBACK")
                        with self.lock:
                            aborted.update(ids)
                    else:
                        conn.execute("COMMIT")
                        versions.update(pending)
                        with self.lock:
                            for id_, e in zip(ids, events):
                                committed[id_] = (e.originator_id, e.originator_version)
                    time.sleep(rnd.uniform(0, 0.02))
            except Exception as e:      # reported by the main thread
                writer_errors.append("writer %d: %r" % (k, e))

        class Follower:
            """The process application: catch up on start, then read after
            each announcement; one es_append with tracking per page."""

            def __init__(fself):
                fself.pid: Optional[int] = None
                fself.pos = 0
                fself.processed: List[int] = []
                fself.sessions = 0
                fself.disconnects: List[str] = []
                fself.notifications: List[Tuple[int, dict]] = []   # (session, payload)
                fself.read_after_notification = [0, 0, 0, 0]       # events, per session
                fself.recorded_at_start: List[int] = []            # per session
                fself.errors: List[str] = []
                # The first kill lands inside a page's transaction.
                fself.stall_after: Optional[int] = 60
                fself.stalled = threading.Event()
                fself.stalled_from = 0
                fself.stalled_page: List[int] = []
                fself.listening = False
                fself.target: Optional[int] = None                 # set when writers are done
                fself.deadline = time.monotonic() + 30

            def run(fself) -> None:
                try:
                    while not fself.done():
                        if time.monotonic() > fself.deadline:
                            fself.errors.append("deadline passed at position %d" % fself.pos)
                            return
                        try:
                            fself.session()
                        except psycopg.OperationalError as e:
                            fself.disconnects.append(str(e).strip())
                except Exception as e:
                    fself.errors.append(repr(e))

            def done(fself) -> bool:
                return self.stopping.is_set() or (fself.target is not None and fself.pos >= fself.target)

            def session(fself) -> None:
                conn = connect(self.dsn)
                with self.lock:
                    self.conns.append(conn)
                fself.sessions += 1
                session = fself.sessions
                fself.pid = conn.info.backend_pid
                listener = Listener(conn, channel)
                recorded = conn.execute("SELECT es_tracking_position(%s, %s)",
                                        (down, up)).fetchone()[0] or 0
                fself.recorded_at_start.append(recorded)
                if recorded < fself.pos:
                    fself.errors.append("tracking position %d below processed %d" % (recorded, fself.pos))
                if recorded > fself.pos:
                    # The page whose commit we did not see acknowledged.
                    more = [json.loads(bytes(r[0]))["upstream_id"] for r in conn.execute(
                        "SELECT state FROM es_select(%s, 1, 1000000)", (down,))]
                    fself.processed.extend(i for i in more if i > fself.pos)
                    fself.pos = recorded
                fself.catch_up(conn)
                while not fself.done():
                    if time.monotonic() > fself.deadline:
                        return
                    fself.listening = True
                    payloads = listener.wait(0.2)
                    fself.listening = False
                    if not payloads:
                        continue        # only announcements make it read
                    for p in payloads:
                        fself.notifications.append((session, p))
                        if p.get("application") != up:
                            fself.errors.append("payload names another application: %r" % p)
                    highest = max(p["notification_id"] for p in payloads)
                    before = len(fself.processed)
                    fself.catch_up(conn)
                    fself.read_after_notification[min(session, 3)] += len(fself.processed) - before
                    if fself.pos < highest:
                        fself.errors.append("announced %d, but es_select stopped at %d"
                                            % (highest, fself.pos))

            def catch_up(fself, conn) -> None:
                EsEvent = es_event_type(conn)
                while True:
                    with conn.cursor(row_factory=namedtuple_row) as cur:
                        rows = cur.execute(
                            "SELECT id, originator_id, originator_version FROM es_select(%s, %s, %s)",
                            (up, fself.pos + 1, PAGE)).fetchall()
                    if not rows:
                        return
                    ids = [r.id for r in rows]
                    if ids != sorted(set(ids)) or ids[0] <= fself.pos:
                        fself.errors.append("page out of order after %d: %r" % (fself.pos, ids))
                    events = [EsEvent(uuid.uuid5(NS, str(r.originator_id)), r.originator_version,
                                      "follower:Copied", json.dumps({"upstream_id": r.id}).encode())
                              for r in rows]
                    with conn.transaction():
                        conn.execute("SELECT es_append(%s, %s::es_event[], %s, %s)",
                                     (down, events, up, ids[-1]))
                        if fself.stall_after is not None and len(fself.processed) >= fself.stall_after:
                            fself.stall_after = None
                            fself.stalled_from, fself.stalled_page = fself.pos, ids
                            fself.stalled.set()
                            conn.execute("SELECT pg_sleep(10)")     # until killed
                    fself.processed.extend(ids)
                    fself.pos = ids[-1]

        follower = Follower()
        ft = threading.Thread(target=follower.run, name="follower", daemon=True)
        ft.start()
        while follower.pid is None and ft.is_alive():
            time.sleep(0.005)
        writers = [threading.Thread(target=writer, args=(k,), name="writer%d" % k, daemon=True)
                   for k in range(WRITERS)]
        for w in writers:
            w.start()

        # Midway, kill the follower's connection: first inside a page's
        # transaction (after its es_append, before its commit), then, in the
        # next session, while it waits for announcements.
        killed: List[Tuple[int, int, int]] = []     # (pid, processed, writers running)

        def kill() -> None:
            pid = follower.pid
            self.assertTrue(admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0])
            killed.append((pid, len(follower.processed), sum(w.is_alive() for w in writers)))

        self.assertTrue(follower.stalled.wait(10), "the follower did not get to 60 events")
        kill()
        deadline = time.monotonic() + 10
        while not (follower.sessions == 2 and len(follower.processed) >= 250 and follower.listening):
            self.assertLess(time.monotonic(), deadline, "the follower did not get to 250 events")
            self.assertTrue(ft.is_alive(), follower.errors)
            time.sleep(0.001)
        kill()

        self.run_threads(writers, 30)
        self.assertEqual(writer_errors, [])
        follower.target = max(committed)
        self.run_threads([ft], 15)
        self.assertEqual(follower.errors, [])

        expected = sorted(committed)
        self.assertGreater(len(aborted), 0)
        self.assertGreater(sum(1 for i in range(1, len(expected)) if expected[i] - expected[i - 1] > 1), 0,
                           "no gaps from rolled-back writers")
        # The upstream log holds exactly the committed events.
        self.assertEqual(self.log_ids(admin, up), expected)
        # The follower processed each exactly once, in id order, no aborted one.
        self.assertEqual(follower.processed, expected)
        self.assertEqual(set(follower.processed) & aborted, set())
        # ... and so did its own recorded events and position.
        with admin.cursor(row_factory=namedtuple_row) as cur:
            rows = cur.execute("SELECT originator_id, originator_version, state"
                               "  FROM es_select(%s, 1, 1000000)", (down,)).fetchall()
        self.assertEqual([json.loads(bytes(r.state))["upstream_id"] for r in rows], expected)
        self.assertEqual([(r.originator_id, r.originator_version) for r in rows],
                         [(uuid.uuid5(NS, str(committed[i][0])), committed[i][1]) for i in expected])
        self.assertEqual(admin.execute("SELECT es_tracking_position(%s, %s)", (down, up)).fetchone()[0],
                         expected[-1])

        # It was killed twice while the writers were writing, reconnected,
        # caught up from its tracking position, and went on by announcements.
        self.assertEqual(len(follower.disconnects), 2, follower.disconnects)
        self.assertEqual(follower.sessions, 3)
        self.assertEqual(len({pid for (pid, _, _) in killed} | {follower.pid}), 3)
        self.assertTrue(all(running > 0 for (_, _, running) in killed), killed)
        self.assertLess(killed[1][1], len(expected) * 3 // 4, killed)
        # The page killed before its commit was not recorded, and processed again.
        self.assertEqual(follower.recorded_at_start[:2], [0, follower.stalled_from])
        self.assertLess(follower.stalled_from, follower.stalled_page[0])
        # What it had processed when killed the second time was recorded.
        self.assertGreaterEqual(follower.recorded_at_start[2], expected[killed[1][1] - 1])
        for s in (1, 2, 3):
            self.assertGreater(follower.read_after_notification[s], 0,
                               "in session %d no announcement made the follower read" % s)
        # Announcements are ascending within a session and name committed ids.
        for s in (1, 2, 3):
            ids = [p["notification_id"] for (sess, p) in follower.notifications if sess == s]
            self.assertEqual(ids, sorted(ids))
            self.assertEqual(set(ids) - set(committed), set())

    # b ---------------------------------------------------------------------

    def test_wait_returns_when_events_are_committed(self):
        app = "wait_commit"
        waiter, writer = self.connect(), self.connect()
        self.create(waiter, app)
        committed_at: List[float] = []

        def append_later():
            time.sleep(0.3)
            self.append_one(writer, app)
            committed_at.append(time.monotonic())

        t = threading.Thread(target=append_later)
        t0 = time.monotonic()
        t.start()
        head = waiter.execute("SELECT es_wait(%s, 0, 5000)", (app,)).fetchone()[0]
        returned = time.monotonic()
        self.run_threads([t], 5)
        self.assertEqual(head, 1)
        self.assertGreater(returned - t0, 0.25)
        self.assertLess(returned - t0, 1.0)
        self.assertLess(returned - committed_at[0], 0.25, "es_wait was not woken by the commit")

        # And again from the new position, with a multi-event append.
        def append_two():
            time.sleep(0.3)
            writer.execute("SELECT es_append(%s, ARRAY[ROW(gen_random_uuid(), 1, 'T', ''),"
                           " ROW(gen_random_uuid(), 1, 'T', '')]::es_event[])", (app,)).fetchall()

        t = threading.Thread(target=append_two)
        t.start()
        t0 = time.monotonic()
        head = waiter.execute("SELECT es_wait(%s, 1, 5000)", (app,)).fetchone()[0]
        self.run_threads([t], 5)
        self.assertEqual(head, 3)
        self.assertLess(time.monotonic() - t0, 1.0)

    def test_wait_times_out(self):
        app = "wait_timeout"
        conn = self.connect()
        self.create(conn, app)
        t0 = time.monotonic()
        self.assertIsNone(conn.execute("SELECT es_wait(%s, 0, 300)", (app,)).fetchone()[0])
        elapsed = time.monotonic() - t0
        self.assertGreaterEqual(elapsed, 0.29)
        self.assertLess(elapsed, 0.8)

        self.append_one(conn, app)
        t0 = time.monotonic()
        self.assertIsNone(conn.execute("SELECT es_wait(%s, 1, 700)", (app,)).fetchone()[0])
        elapsed = time.monotonic() - t0
        self.assertGreaterEqual(elapsed, 0.69)
        self.assertLess(elapsed, 1.2)

        # A timeout of 0 checks once.
        t0 = time.monotonic()
        self.assertIsNone(conn.execute("SELECT es_wait(%s, 1, 0)", (app,)).fetchone()[0])
        self.assertEqual(conn.execute("SELECT es_wait(%s, 0, 0)", (app,)).fetchone()[0], 1)
        self.assertLess(time.monotonic() - t0, 0.2)

    def test_wait_returns_at_once_when_readable(self):
        app = "wait_ready"
        conn = self.connect()
        self.create(conn, app)
        for _ in range(3):
            self.append_one(conn, app)
        t0 = time.monotonic()
        self.assertEqual(conn.execute("SELECT es_wait(%s, 0, 5000)", (app,)).fetchone()[0], 3)
        self.assertEqual(conn.execute("SELECT es_wait(%s, 2, 5000)", (app,)).fetchone()[0], 3)
        self.assertLess(time.monotonic() - t0, 0.2)

    def test_wait_woken_when_blocking_writer_ends(self):
        """The only thing holding readers back is another writer's open
        transaction: its rollback (then, a commit) wakes es_wait and makes
        the worker announce."""
        app = "wait_gap"
        admin, a, b, waiter, lconn = (self.connect() for _ in range(5))
        self.create(admin, app)
        self.append_one(admin, app)                              # id 1
        listener = Listener(lconn, admin.execute("SELECT es_channel(%s)", (app,)).fetchone()[0])
        listener.wait(0.3)

        for outcome in ("ROLLBACK", "COMMIT"):
            after = admin.execute("SELECT max(id) FROM es_select(%s, 1, 1000)", (app,)).fetchone()[0]
            listener.wait(0.1)
            a.execute("BEGIN")
            blocking = self.append_one(a, app)                   # after + 1, held open
            committed = self.append_one(b, app)                  # after + 2, committed
            self.assertEqual((blocking, committed), (after + 1, after + 2))
            self.assertEqual(self.log_ids(admin, app)[-1], after)

            result: List[Tuple[Optional[int], float]] = []

            def wait():
                head = waiter.execute("SELECT es_wait(%s, %s, 5000)", (app, after)).fetchone()[0]
                result.append((head, time.monotonic()))

            t = threading.Thread(target=wait)
            t.start()
            early = listener.collect(0.4)
            self.assertTrue(t.is_alive(), "es_wait returned while a writer held the log back")
            self.assertEqual([p for p in early if p["notification_id"] > after], [])
            ended = time.monotonic()
            a.execute(outcome)
            self.run_threads([t], 6)
            head, returned = result[0]
            self.assertEqual(head, committed)
            self.assertLess(returned - ended, 0.3, "es_wait not woken by the %s" % outcome)
            late = listener.wait(1.0)
            self.assertTrue(late and max(p["notification_id"] for p in late) == committed,
                            "no announcement after the %s: %r" % (outcome, late))
            self.assertLess(time.monotonic() - ended, 0.5)
            expected = [committed] if outcome == "ROLLBACK" else [blocking, committed]
            self.assertEqual(self.log_ids(admin, app)[-len(expected):], expected)
            if outcome == "ROLLBACK":
                self.assertNotIn(blocking, self.log_ids(admin, app))

    # c ---------------------------------------------------------------------

    def test_consumer_group(self):
        """Three members share a log of 60 aggregates appended concurrently:
        each event is processed once, by the member es_partition names, and
        each member sees an aggregate's events in version order."""
        up, down, SIZE = "group_up", "group_down", 3
        AGGREGATES, VERSIONS, WRITERS, PAGE = 60, 5, 4, 25
        admin = self.connect()
        self.create(admin, up, down)
        aggregates = [uuid.UUID(int=(0x5eed << 96) + i) for i in range(AGGREGATES)]
        partition = dict(admin.execute(
            "SELECT a, es_partition(a, %s) FROM unnest(%s::uuid[]) a", (SIZE, aggregates)).fetchall())
        self.assertEqual(set(partition.values()), set(range(SIZE)))

        committed: Dict[int, Tuple[uuid.UUID, int]] = {}
        errors: List[str] = []
        writers_done = threading.Event()

        def writer(k: int) -> None:
            try:
                conn = self.connect()
                EsEvent = es_event_type(conn)
                rnd = random.Random(2000 + k)
                mine = {a: 0 for a in aggregates[k::WRITERS]}
                while any(v < VERSIONS for v in mine.values()) and not self.stopping.is_set():
                    open_ = [a for a, v in mine.items() if v < VERSIONS]
                    chosen = rnd.sample(open_, min(len(open_), rnd.randint(1, 3)))
                    events = [EsEvent(a, mine[a] + 1, "group:Thing.Changed", b"{}") for a in chosen]
                    conn.execute("BEGIN")
                    ids = [r[0] for r in conn.execute("SELECT * FROM es_append(%s, %s::es_event[])",
                                                      (up, events))]
                    if rnd.random() < 0.1:
                        conn.execute("ROLLBACK")
                    else:
                        conn.execute("COMMIT")
                        for a in chosen:
                            mine[a] += 1
                        with self.lock:
                            for id_, e in zip(ids, events):
                                committed[id_] = (e.originator_id, e.originator_version)
                    time.sleep(rnd.uniform(0, 0.01))
            except Exception as e:
                errors.append("writer %d: %r" % (k, e))

        got: Dict[int, List[Tuple[int, uuid.UUID, int]]] = {m: [] for m in range(SIZE)}
        final: List[int] = []

        def member(m: int) -> None:
            """Tails its part with es_wait: `scanned` is how far the log has
            been read for this member (es_select up to es_wait's head)."""
            try:
                conn = self.connect()
                EsEvent = es_event_type(conn)
                upstream_name = "%s/%dof%d" % (up, m + 1, SIZE)
                scanned = 0
                deadline = time.monotonic() + 30
                while not (final and scanned >= final[0]) and not self.stopping.is_set():
                    if time.monotonic() > deadline:
                        errors.append("member %d: deadline at %d" % (m, scanned))
                        return
                    head = conn.execute("SELECT es_wait(%s, %s, 200)", (up, scanned)).fetchone()[0]
                    if head is None:
                        continue
                    with conn.cursor(row_factory=namedtuple_row) as cur:
                        rows = cur.execute(
                            "SELECT id, originator_id, originator_version FROM es_select(%s, %s, %s,"
                            " stop => %s, group_member => %s, group_size => %s)",
                            (up, scanned + 1, PAGE, head, m, SIZE)).fetchall()
                    if rows:
                        events = [EsEvent(uuid.uuid5(NS, str(r.originator_id)), r.originator_version,
                                          "group:Copied", json.dumps({"upstream_id": r.id}).encode())
                                  for r in rows]
                        with conn.transaction():
                            conn.execute("SELECT es_append(%s, %s::es_event[], %s, %s)",
                                         (down, events, upstream_name, rows[-1].id))
                        got[m].extend((r.id, r.originator_id, r.originator_version) for r in rows)
                    scanned = rows[-1].id if len(rows) == PAGE else head
            except Exception as e:
                errors.append("member %d: %r" % (m, e))

        members = [threading.Thread(target=member, args=(m,), name="member%d" % m, daemon=True)
                   for m in range(SIZE)]
        writers = [threading.Thread(target=writer, args=(k,), name="writer%d" % k, daemon=True)
                   for k in range(WRITERS)]
        for t in members + writers:
            t.start()
        self.run_threads(writers, 30)
        final.append(max(committed))
        self.run_threads(members, 20)
        self.assertEqual(errors, [])

        expected = sorted(committed)
        self.assertEqual(len(expected), AGGREGATES * VERSIONS)
        self.assertEqual(self.log_ids(admin, up), expected)
        # Together: each event exactly once.
        all_ids = sorted(i for m in got for (i, _, _) in got[m])
        self.assertEqual(all_ids, expected)
        for m in range(SIZE):
            ids = [i for (i, _, _) in got[m]]
            self.assertEqual(ids, sorted(ids), "member %d out of id order" % m)
            self.assertGreater(len(ids), 0)
            by_aggregate: Dict[uuid.UUID, List[int]] = {}
            for (i, a, v) in got[m]:
                # The aggregate goes to the member es_partition names ...
                self.assertEqual(partition[a], m)
                self.assertEqual(committed[i], (a, v))
                by_aggregate.setdefault(a, []).append(v)
            # ... with all its events, in version order.
            for a, vs in by_aggregate.items():
                self.assertEqual(vs, list(range(1, VERSIONS + 1)), "aggregate %s at member %d" % (a, m))
            self.assertEqual(set(by_aggregate), {a for a in aggregates if partition[a] == m})
            self.assertEqual(admin.execute("SELECT es_tracking_position(%s, %s)",
                                           (down, "%s/%dof%d" % (up, m + 1, SIZE))).fetchone()[0], ids[-1])
        # es_select without a group is the union of the groups' pages.
        self.assertEqual(len(self.log_ids(admin, down)), len(expected))

    # d ---------------------------------------------------------------------

    def test_notify_setting(self):
        """eventsourcing.notify = off (reloaded) silences the channel; es_wait
        still works; back on, what is new is announced."""
        app = "notify_off"
        admin, lconn = self.connect(), self.connect()
        self.create(admin, app)
        listener = Listener(lconn, "es:" + app)
        self.append_one(admin, app)
        self.assertEqual([p["notification_id"] for p in listener.wait(1.0)], [1])
        try:
            admin.execute("ALTER SYSTEM SET eventsourcing.notify = off")
            admin.execute("SELECT pg_reload_conf()")
            time.sleep(0.3)
            writer = self.connect()             # a session that has read the new setting
            self.assertEqual(writer.execute("SHOW eventsourcing.notify").fetchone()[0], "off")
            self.append_one(writer, app)
            self.assertEqual(listener.collect(0.6), [])
            self.assertEqual(admin.execute("SELECT es_wait(%s, 1, 1000)", (app,)).fetchone()[0], 2)
        finally:
            admin.execute("ALTER SYSTEM RESET eventsourcing.notify")
            admin.execute("SELECT pg_reload_conf()")
        time.sleep(0.3)
        writer = self.connect()
        self.append_one(writer, app)
        payloads = listener.collect(1.0)
        self.assertTrue(payloads and max(p["notification_id"] for p in payloads) == 3, payloads)

    def test_sleeping_worker_woken_by_commit(self):
        """After 100 ms without a new id the worker stops polling and sleeps
        until a commit wakes it: with worker_naptime at 60 s, an append to a
        sleeping worker is still announced at once (a lost wake-up would
        leave it unannounced for a minute)."""
        app = "wake_sleeper"
        admin, lconn = self.connect(), self.connect()
        self.create(admin, app)
        listener = Listener(lconn, "es:" + app)
        try:
            admin.execute("ALTER SYSTEM SET eventsourcing.worker_naptime = '60s'")
            admin.execute("SELECT pg_reload_conf()")
            time.sleep(0.3)
            for n in (1, 2, 3):
                self.append_one(admin, app)
                payloads = listener.wait(3.0)
                self.assertTrue(payloads, "append %d was not announced" % n)
                self.assertEqual(max(p["notification_id"] for p in payloads), n)
                time.sleep(0.5)             # the worker has gone to sleep
                self.assertTrue(worker_running(admin), "the sleeping worker exited")
        finally:
            admin.execute("ALTER SYSTEM RESET eventsourcing.worker_naptime")
            admin.execute("SELECT pg_reload_conf()")

    def test_channel_names(self):
        """Names that need quoting are announced as JSON strings on their own
        channel; names over 60 bytes use the application's id."""
        odd = 'we"ird\\app ü'
        long = "l" * 61
        admin = self.connect()
        self.create(admin, odd, long)
        channels = {name: admin.execute("SELECT es_channel(%s)", (name,)).fetchone()[0]
                    for name in (odd, long)}
        long_id = admin.execute("SELECT id FROM es_applications WHERE name = %s", (long,)).fetchone()[0]
        self.assertEqual(channels, {odd: "es:" + odd, long: "es:#%d" % long_id})
        listeners = {name: Listener(self.connect(), ch) for name, ch in channels.items()}
        self.append_one(admin, odd)
        self.append_one(admin, long)
        self.append_one(admin, long)
        for name, count in ((odd, 1), (long, 2)):
            payloads = listeners[name].collect(0.5)
            self.assertTrue(payloads, name)
            self.assertEqual({p["application"] for p in payloads}, {name})
            self.assertEqual(max(p["notification_id"] for p in payloads), count)

    # e: the worker comes and goes -----------------------------------------

    def hold_until_worker_exits(self, admin) -> None:
        """The append just made starts the worker (if it was not running);
        it exits after two idle seconds."""
        deadline = time.monotonic() + 2
        while not worker_running(admin):
            self.assertLess(time.monotonic(), deadline, "the worker did not start")
            time.sleep(0.01)
        deadline = time.monotonic() + 6
        while worker_running(admin):
            self.assertLess(time.monotonic(), deadline, "the worker did not exit when idle")
            time.sleep(0.05)

    def test_commit_after_worker_went_idle_is_announced(self):
        """A writer whose transaction stays open longer than the worker's idle
        time (2 s): its commit must still be announced."""
        app = "idle_commit"
        admin, a, lconn = self.connect(), self.connect(), self.connect()
        self.create(admin, app)
        listener = Listener(lconn, "es:" + app)
        a.execute("BEGIN")
        id1 = self.append_one(a, app)
        self.hold_until_worker_exits(admin)
        a.execute("COMMIT")
        # es_wait is woken by the commit itself.
        self.assertEqual(admin.execute("SELECT es_wait(%s, 0, 1000)", (app,)).fetchone()[0], id1)
        payloads = listener.wait(1.5)
        self.assertEqual([p["notification_id"] for p in payloads], [id1],
                         "the commit of id %d was not announced" % id1)

    def test_restarted_worker_announces_only_readable_ids(self):
        """A writer holds id 1 open while the worker exits idle; another
        writer's append (id 2) starts a new worker.  No announcement may
        claim id 2 while id 1 is open, and the commit of id 1 is announced."""
        app = "idle_restart"
        admin, a, lconn = self.connect(), self.connect(), self.connect()
        self.create(admin, app)
        listener = Listener(lconn, "es:" + app)
        a.execute("BEGIN")
        id1 = self.append_one(a, app)
        self.hold_until_worker_exits(admin)
        id2 = self.append_one(admin, app)
        self.assertEqual((id1, id2), (1, 2))
        early = listener.collect(0.5)
        readable = self.log_ids(admin, app)
        self.assertEqual(readable, [])
        self.assertEqual([p for p in early if p["notification_id"] not in readable], [],
                         "announced ids that es_select does not give while id %d is open" % id1)
        a.execute("COMMIT")
        late = listener.wait(1.5)
        self.assertEqual(self.log_ids(admin, app), [1, 2])
        self.assertTrue(late and max(p["notification_id"] for p in late) == id2,
                        "the commit of id %d was not announced: %r" % (id1, late))


if __name__ == "__main__":
    unittest.main()
