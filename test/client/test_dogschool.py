#!/usr/bin/python3
"""The DogSchool tutorial of the Python eventsourcing library, driven through
psycopg 3 against the eventsourcing extension, as the library's users would.

Run against a cluster that has the extension installed and preloaded:

    ES_TEST_DSN="host=/path/to/socket port=54325 user=postgres dbname=postgres" \\
        /usr/bin/python3 test/client/test_dogschool.py -v

The module creates (and afterwards drops) its own database, es_client.  Each
test uses its own application names, so notification ids start at 1 in each.

How Python passes events: the es_event composite type is registered with
psycopg (psycopg.types.composite.register_composite), after which a list of
es_event objects is sent as a typed es_event[] parameter.  An empty list has
no element type to infer, so the SQL casts it: %s::es_event[] (without the
cast PostgreSQL cannot choose between the es_append overloads).  For clients
that do not register the type, test_append_from_parallel_arrays shows the
alternative of building the array in SQL from parallel arrays.
"""

import dataclasses
import json
import os
import sys
import threading
import time
import unittest
import uuid
from typing import Dict, List, Optional, Type

import psycopg
import psycopg.errors
from psycopg.rows import namedtuple_row
from psycopg.types.composite import CompositeInfo, register_composite

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import es_testdb  # noqa: E402

TEST_DB = "es_client"


# ---------------------------------------------------------------------------
# Domain model: a small imitation of eventsourcing.domain.Aggregate
# ---------------------------------------------------------------------------

_TOPICS: Dict[str, Type["DomainEvent"]] = {}


@dataclasses.dataclass(frozen=True)
class DomainEvent:
    originator_id: uuid.UUID
    originator_version: int

    # Each concrete event class registers itself under "module:QualName".
    TOPIC_MODULE = "dogschool"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _TOPICS[cls.topic()] = cls

    @classmethod
    def topic(cls) -> str:
        return f"{cls.TOPIC_MODULE}:{cls.__qualname__}"

    def mutate(self, aggregate) -> None:
        raise NotImplementedError

    # The "mapper": state is the event's own attributes as JSON bytes.
    def state(self) -> bytes:
        attrs = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                 if f.name not in ("originator_id", "originator_version")}
        return json.dumps(attrs, sort_keys=True).encode("utf-8")

    @staticmethod
    def from_stored(originator_id, originator_version, topic, state) -> "DomainEvent":
        cls = _TOPICS[topic]
        return cls(originator_id=originator_id, originator_version=originator_version,
                   **json.loads(bytes(state).decode("utf-8")))


class Aggregate:
    def __init__(self, id: uuid.UUID):
        self.id = id
        self.version = 0
        self._pending: List[DomainEvent] = []

    def trigger_event(self, event_class, **kwargs) -> None:
        event = event_class(originator_id=self.id,
                            originator_version=self.version + 1, **kwargs)
        self.apply(event)
        self._pending.append(event)

    def apply(self, event: DomainEvent) -> None:
        event.mutate(self)
        self.version = event.originator_version

    def collect_events(self) -> List[DomainEvent]:
        events, self._pending = self._pending, []
        return events


class Dog(Aggregate):
    @dataclasses.dataclass(frozen=True)
    class Registered(DomainEvent):
        name: str

        def mutate(self, dog: "Dog") -> None:
            dog.name = self.name
            dog.tricks = []

    @dataclasses.dataclass(frozen=True)
    class TrickAdded(DomainEvent):
        trick: str

        def mutate(self, dog: "Dog") -> None:
            dog.tricks.append(self.trick)

    @classmethod
    def register(cls, name: str) -> "Dog":
        dog = cls(uuid.uuid4())
        dog.trigger_event(Dog.Registered, name=name)
        return dog

    def add_trick(self, trick: str) -> None:
        self.trigger_event(Dog.TrickAdded, trick=trick)


# ---------------------------------------------------------------------------
# Persistence: an application, its repository and its notification log
# ---------------------------------------------------------------------------

class AggregateNotFound(KeyError):
    pass


def connect(dsn: str) -> psycopg.Connection:
    """An autocommit connection (so `with conn.transaction()` is a real
    BEGIN/COMMIT) that knows how to send es_event values."""
    conn = psycopg.connect(dsn, autocommit=True)
    register_composite(CompositeInfo.fetch(conn, "es_event"), conn)
    return conn


def es_event_type(conn: psycopg.Connection):
    return conn.adapters.types["es_event"].python_type


class Repository:
    def __init__(self, app: "Application"):
        self.app = app

    def get(self, aggregate_id: uuid.UUID, version: Optional[int] = None):
        rows = self.app.conn.execute(
            "SELECT originator_id, originator_version, topic, state"
            "  FROM es_events(%s, %s, lte => %s::bigint)",
            (self.app.name, aggregate_id, version)).fetchall()
        if not rows:
            raise AggregateNotFound(aggregate_id)
        aggregate = None
        for row in rows:
            event = DomainEvent.from_stored(*row)
            if aggregate is None:
                aggregate = self.app.aggregate_class(event.originator_id)
            aggregate.apply(event)
        return aggregate


class NotificationLog:
    def __init__(self, app: "Application"):
        self.app = app

    def select(self, start: int, limit: int, stop: Optional[int] = None,
               topics: Optional[List[str]] = None):
        with self.app.conn.cursor(row_factory=namedtuple_row) as cur:
            return cur.execute(
                "SELECT * FROM es_select(%s, %s, %s, %s::bigint, %s::text[])",
                (self.app.name, start, limit, stop, topics)).fetchall()


class Application:
    aggregate_class: Type[Aggregate] = Aggregate

    def __init__(self, conn: psycopg.Connection, name: str):
        self.conn = conn
        self.name = name
        conn.execute("SELECT es_create_application(%s)", (name,))
        self.repository = Repository(self)
        self.notification_log = NotificationLog(self)

    def to_es_events(self, events: List[DomainEvent]):
        EsEvent = es_event_type(self.conn)
        return [EsEvent(e.originator_id, e.originator_version, e.topic(), e.state())
                for e in events]

    def save(self, *aggregates: Aggregate) -> List[int]:
        """Records the new events of the aggregates, all or none; returns
        their notification ids.  Raises psycopg.IntegrityError on a conflict."""
        events = [e for a in aggregates for e in a.collect_events()]
        with self.conn.transaction():
            rows = self.conn.execute(
                "SELECT * FROM es_append(%s, %s::es_event[])",
                (self.name, self.to_es_events(events))).fetchall()
        return [r[0] for r in rows]


class DogSchool(Application):
    aggregate_class = Dog

    def register_dog(self, name: str) -> uuid.UUID:
        dog = Dog.register(name)
        self.save(dog)
        return dog.id

    def add_trick(self, dog_id: uuid.UUID, trick: str) -> None:
        # Read and write in one transaction: the version check in es_append
        # is what protects against a concurrent writer.
        with self.conn.transaction():
            dog = self.repository.get(dog_id)
            dog.add_trick(trick)
            self.save(dog)

    def get_dog(self, dog_id: uuid.UUID) -> dict:
        dog = self.repository.get(dog_id)
        return {"name": dog.name, "tricks": tuple(dog.tricks)}


# A downstream "process application": counts tricks by name.

class TrickCounter(Aggregate):
    @dataclasses.dataclass(frozen=True)
    class Incremented(DomainEvent):
        TOPIC_MODULE = "counter"
        trick: str

        def mutate(self, counter: "TrickCounter") -> None:
            counter.trick = self.trick
            counter.count = getattr(counter, "count", 0) + 1

    NAMESPACE = uuid.UUID("6f1f6d3e-0000-4000-8000-00000000c0de")

    @classmethod
    def id_for(cls, trick: str) -> uuid.UUID:
        return uuid.uuid5(cls.NAMESPACE, trick)

    def increment(self, trick: str) -> None:
        self.trigger_event(TrickCounter.Incremented, trick=trick)


class Counter(Application):
    aggregate_class = TrickCounter

    def policy(self, notification) -> List[Aggregate]:
        """What to do about one upstream notification: the aggregates changed."""
        if notification.topic != Dog.TrickAdded.topic():
            return []
        event = DomainEvent.from_stored(notification.originator_id,
                                        notification.originator_version,
                                        notification.topic, notification.state)
        counter_id = TrickCounter.id_for(event.trick)
        try:
            counter = self.repository.get(counter_id)
        except AggregateNotFound:
            counter = TrickCounter(counter_id)
        counter.increment(event.trick)
        return [counter]

    def process(self, upstream: str, notification) -> List[int]:
        """Processes one notification: the new events and the tracking
        position are recorded atomically, or neither."""
        with self.conn.transaction():
            changed = self.policy(notification)
            events = [e for a in changed for e in a.collect_events()]
            rows = self.conn.execute(
                "SELECT * FROM es_append(%s, %s::es_event[], %s, %s)",
                (self.name, self.to_es_events(events), upstream,
                 notification.id)).fetchall()
        return [r[0] for r in rows]

    def position(self, upstream: str) -> Optional[int]:
        return self.conn.execute("SELECT es_tracking_position(%s, %s)",
                                 (self.name, upstream)).fetchone()[0]

    def pull_and_process(self, upstream_app: Application, batch: int = 3) -> int:
        """Follows the upstream log from the recorded position; returns how
        many notifications it processed."""
        done = 0
        while True:
            start = (self.position(upstream_app.name) or 0) + 1
            notifications = upstream_app.notification_log.select(start, batch)
            if not notifications:
                return done
            for n in notifications:
                self.process(upstream_app.name, n)
                done += 1

    def count(self, trick: str) -> int:
        try:
            return self.repository.get(TrickCounter.id_for(trick)).count
        except AggregateNotFound:
            return 0


def max_notification_id(conn, app_name: str) -> Optional[int]:
    return conn.execute("SELECT es_max_notification_id(%s)", (app_name,)).fetchone()[0]


# ---------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------

class DogSchoolTest(unittest.TestCase):
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

    def tearDown(self):
        for c in self.conns:
            c.close()

    def connect(self) -> psycopg.Connection:
        conn = connect(self.dsn)
        self.conns.append(conn)
        return conn

    def assertSqlstate(self, cm, sqlstate: str):
        self.assertEqual(cm.exception.sqlstate, sqlstate, str(cm.exception))

    # replay ----------------------------------------------------------------

    def test_state_in_sql_matches_python(self):
        """es_state (declarative folds, in the database) computes the same Dog
        as this module's own Python code, at every version."""
        conn = self.connect()
        conn.execute("SELECT es_create_application('replayschool')")
        app = DogSchool(conn, "replayschool")
        conn.execute(
            "SELECT es_define_fold('replayschool', %s, %s::jsonb)",
            (Dog.Registered.topic(),
             '[{"op": "set", "path": "name", "from": "name"},'
             ' {"op": "set", "path": "tricks", "value": []}]'))
        conn.execute(
            "SELECT es_define_fold('replayschool', %s, %s::jsonb)",
            (Dog.TrickAdded.topic(), '[{"op": "append", "path": "tricks", "from": "trick"}]'))
        dog_id = app.register_dog("Fido")
        for trick in ("roll over", "fetch ball", "play dead"):
            app.add_trick(dog_id, trick)
        for version in (1, 2, 3, 4, None):
            dog = app.repository.get(dog_id, version=version)
            if version is None:
                state = conn.execute("SELECT es_state('replayschool', %s)", (dog_id,)).fetchone()[0]
            else:
                state = conn.execute("SELECT es_state('replayschool', %s, %s)", (dog_id, version)).fetchone()[0]
            self.assertEqual(state, {"name": dog.name, "tricks": list(dog.tricks)}, f"version {version}")
        # the aggregate function over es_events gives the same, at version 3
        state = conn.execute(
            "SELECT es_replay('replayschool', e) FROM es_events('replayschool', %s, lte => 3) e",
            (dog_id,)).fetchone()[0]
        self.assertEqual(state["tricks"], ["roll over", "fetch ball"])
        self.assertEqual(tuple(state["tricks"]), tuple(app.repository.get(dog_id, version=3).tricks))

    # 1 ---------------------------------------------------------------------

    def test_tutorial(self):
        """The seed tutorial's test() function, step by step."""
        conn = self.connect()
        app = DogSchool(conn, "dogschool")

        # Check app has zero event notifications.
        self.assertEqual(len(app.notification_log.select(start=1, limit=10)), 0)
        self.assertIsNone(max_notification_id(conn, app.name))

        # Create a new aggregate.
        dog_id = app.register_dog("Fido")

        # Execute application commands.
        app.add_trick(dog_id, "roll over")
        app.add_trick(dog_id, "fetch ball")

        # Check recorded state of the aggregate.
        dog_details = app.get_dog(dog_id)
        self.assertEqual(dog_details["name"], "Fido")
        self.assertEqual(dog_details["tricks"], ("roll over", "fetch ball"))

        # Execute another command.
        app.add_trick(dog_id, "play dead")

        # Check recorded state of the aggregate.
        dog_details = app.get_dog(dog_id)
        self.assertEqual(dog_details["name"], "Fido")
        self.assertEqual(dog_details["tricks"], ("roll over", "fetch ball", "play dead"))

        # Stored state is not compressed or encrypted: visible in the database.
        tricks = [b"roll over", b"fetch ball", b"play dead"]
        notifications = app.notification_log.select(start=1, limit=10)
        visible = sum(1 for n in notifications for t in tricks if t in n.state)
        self.assertEqual(visible, len(tricks))

        # First "page" of event notifications.
        notifications = app.notification_log.select(start=1, limit=2)
        self.assertEqual([n.id for n in notifications], [1, 2])

        self.assertIn("Dog.Registered", notifications[0].topic)
        self.assertEqual(notifications[0].topic, "dogschool:Dog.Registered")
        self.assertIn(b"Fido", notifications[0].state)
        self.assertIsInstance(notifications[0].state, bytes)
        self.assertEqual(dog_id, notifications[0].originator_id)
        self.assertEqual(notifications[0].originator_version, 1)
        self.assertIsNotNone(notifications[0].recorded_at.tzinfo)

        self.assertIn("Dog.TrickAdded", notifications[1].topic)
        self.assertEqual(notifications[1].topic, "dogschool:Dog.TrickAdded")
        self.assertIn(b"roll over", notifications[1].state)
        self.assertEqual(dog_id, notifications[1].originator_id)
        self.assertEqual(notifications[1].originator_version, 2)

        # Next "page" of event notifications.
        notifications = app.notification_log.select(start=notifications[-1].id + 1, limit=2)
        self.assertEqual([n.id for n in notifications], [3, 4])

        self.assertIn("Dog.TrickAdded", notifications[0].topic)
        self.assertIn(b"fetch ball", notifications[0].state)
        self.assertEqual(dog_id, notifications[0].originator_id)

        self.assertIn("Dog.TrickAdded", notifications[1].topic)
        self.assertIn(b"play dead", notifications[1].state)
        self.assertEqual(dog_id, notifications[1].originator_id)

        # Past the end: an empty page.
        self.assertEqual(app.notification_log.select(start=5, limit=2), [])
        self.assertEqual(max_notification_id(conn, app.name), 4)

        # Get historical state (at version 3, before 'play dead' happened).
        old = app.repository.get(dog_id, version=3)
        self.assertEqual(old.version, 3)
        self.assertEqual(len(old.tricks), 2)
        self.assertEqual(old.tricks[-1], "fetch ball")
        # And the current version.
        self.assertEqual(app.repository.get(dog_id).version, 4)

        # Check app has four event notifications.
        notifications = app.notification_log.select(start=1, limit=10)
        self.assertEqual(len(notifications), 4)

        # Optimistic concurrency control (no branches): saving the stale
        # copy would record a second version 4.
        old.add_trick("future")
        with self.assertRaises(psycopg.IntegrityError) as cm:
            app.save(old)
        self.assertIsInstance(cm.exception, psycopg.errors.UniqueViolation)
        self.assertSqlstate(cm, "23505")

        # Check app still has only four event notifications.
        notifications = app.notification_log.select(start=1, limit=10)
        self.assertEqual(len(notifications), 4)
        self.assertEqual(app.get_dog(dog_id)["tricks"], ("roll over", "fetch ball", "play dead"))

        # Create eight more aggregate events.
        millie = app.register_dog("Millie")
        app.add_trick(millie, "shake hands")
        app.add_trick(millie, "fetch ball")
        app.add_trick(millie, "sit pretty")

        scrappy = app.register_dog("Scrappy")
        app.add_trick(scrappy, "come")
        app.add_trick(scrappy, "spin")
        app.add_trick(scrappy, "stay")

        # Get the new event notifications from the reader.
        last_id = notifications[-1].id
        notifications = app.notification_log.select(start=last_id + 1, limit=10)
        self.assertEqual(len(notifications), 8)
        ids = [n.id for n in notifications]
        self.assertEqual(ids, sorted(ids))
        self.assertGreater(ids[0], last_id)
        self.assertEqual([n.originator_id for n in notifications], [millie] * 4 + [scrappy] * 4)
        self.assertEqual(app.get_dog(millie)["tricks"], ("shake hands", "fetch ball", "sit pretty"))
        self.assertEqual(app.get_dog(scrappy)["tricks"], ("come", "spin", "stay"))

        # The topics filter of es_select: only Millie's and Scrappy's registrations.
        regs = app.notification_log.select(start=last_id + 1, limit=10,
                                           topics=["dogschool:Dog.Registered"])
        self.assertEqual([n.originator_id for n in regs], [millie, scrappy])

        # Several aggregates saved atomically in one call: ids in input order.
        rex, bella = Dog.register("Rex"), Dog.register("Bella")
        bella.add_trick("sit")
        new_ids = app.save(rex, bella)
        self.assertEqual(len(new_ids), 3)
        self.assertEqual(new_ids, sorted(new_ids))
        page = app.notification_log.select(start=new_ids[0], limit=10)
        self.assertEqual([(n.id, n.originator_id, n.originator_version) for n in page],
                         list(zip(new_ids, [rex.id, bella.id, bella.id], [1, 1, 2])))

        # All or nothing: a new dog together with a stale event of Fido.
        stale = app.repository.get(dog_id, version=2)
        stale.add_trick("branch")
        before = max_notification_id(conn, app.name)
        with self.assertRaises(psycopg.errors.UniqueViolation):
            app.save(Dog.register("Ghost"), stale)
        self.assertEqual(max_notification_id(conn, app.name), before)

        # An unknown aggregate.
        with self.assertRaises(AggregateNotFound):
            app.repository.get(uuid.uuid4())

    # 2 ---------------------------------------------------------------------

    def test_concurrent_conflict_two_connections(self):
        """Two clients load the same dog, both add a trick: the second to
        save gets IntegrityError, and reloading and retrying succeeds."""
        conn1, conn2 = self.connect(), self.connect()
        app1 = DogSchool(conn1, "dogschool_concurrent")
        app2 = DogSchool(conn2, "dogschool_concurrent")
        dog_id = app1.register_dog("Fido")
        app1.add_trick(dog_id, "roll over")

        dog1 = app1.repository.get(dog_id)
        dog2 = app2.repository.get(dog_id)
        self.assertEqual(dog1.version, 2)
        self.assertEqual(dog2.version, 2)
        dog1.add_trick("fetch ball")
        dog2.add_trick("play dead")

        app1.save(dog1)
        with self.assertRaises(psycopg.IntegrityError) as cm:
            app2.save(dog2)
        self.assertSqlstate(cm, "23505")
        self.assertEqual(conn2.info.transaction_status, psycopg.pq.TransactionStatus.IDLE)

        # Reload and retry.
        app2.add_trick(dog_id, "play dead")
        self.assertEqual(app1.get_dog(dog_id)["tricks"], ("roll over", "fetch ball", "play dead"))
        self.assertEqual(app1.repository.get(dog_id).version, 4)
        self.assertEqual(
            [(n.originator_version, json.loads(n.state).get("trick"))
             for n in app2.notification_log.select(1, 10)],
            [(1, None), (2, "roll over"), (3, "fetch ball"), (4, "play dead")])

    def test_concurrent_conflict_overlapping_transactions(self):
        """Both transactions open at once: the second writer waits for the
        first; when the first commits it gets IntegrityError (not a silent
        success, not a deadlock), and when the first rolls back it succeeds."""
        conn1, conn2, watcher = self.connect(), self.connect(), self.connect()
        conn2.execute("SET statement_timeout = '30s'")
        app1 = DogSchool(conn1, "dogschool_overlap")
        app2 = DogSchool(conn2, "dogschool_overlap")
        dog_id = app1.register_dog("Fido")

        def wait_until_blocked(pid):
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                row = watcher.execute(
                    "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
                    (pid,)).fetchone()
                if row and row[0] == "Lock":
                    return
                time.sleep(0.02)
            self.fail("the second writer did not wait for the first")

        def second_writer(dog, outcome):
            try:
                outcome["ids"] = app2.save(dog)
            except Exception as e:  # reported to the main thread
                outcome["error"] = e

        for first_commits in (True, False):
            with self.subTest(first_commits=first_commits):
                version = app1.repository.get(dog_id).version
                outcome: dict = {}
                with conn1.transaction():
                    dog1 = app1.repository.get(dog_id)
                    dog2 = app2.repository.get(dog_id)
                    self.assertEqual((dog1.version, dog2.version), (version, version))
                    dog1.add_trick(f"first {version}")
                    dog2.add_trick(f"second {version}")
                    app1.save(dog1)  # not committed yet

                    t = threading.Thread(target=second_writer, args=(dog2, outcome))
                    t.start()
                    wait_until_blocked(conn2.info.backend_pid)
                    if not first_commits:
                        raise psycopg.Rollback()
                t.join(30)
                self.assertFalse(t.is_alive())

                tricks = app1.get_dog(dog_id)["tricks"]
                if first_commits:
                    self.assertIsInstance(outcome.get("error"), psycopg.errors.UniqueViolation,
                                          outcome)
                    self.assertEqual(tricks[-1], f"first {version}")
                    self.assertEqual(app1.repository.get(dog_id).version, version + 1)
                    # Reload and retry.
                    app2.add_trick(dog_id, f"second {version}")
                    self.assertEqual(app1.get_dog(dog_id)["tricks"][-2:],
                                     (f"first {version}", f"second {version}"))
                else:
                    self.assertNotIn("error", outcome)
                    self.assertEqual(len(outcome["ids"]), 1)
                    self.assertEqual(tricks[-1], f"second {version}")
                    self.assertNotIn(f"first {version}", tricks)
                    self.assertEqual(app1.repository.get(dog_id).version, version + 1)

        # The log holds exactly the committed events, in version order.
        log = app1.notification_log.select(1, 100)
        self.assertEqual([n.originator_version for n in log], [1, 2, 3, 4])
        self.assertEqual([n.id for n in log], sorted(n.id for n in log))
        self.assertEqual(app1.get_dog(dog_id)["tricks"], ("first 1", "second 1", "second 3"))

    def test_followers_never_skip_an_uncommitted_event(self):
        """A follower reading the log while a writer's transaction is open
        stops before the writer's event: it does not see the later events
        committed by others until the writer commits (so it cannot advance
        its position past the event and miss it); a rolled-back event leaves
        a gap that readers then pass."""
        conn1, conn2, reader_conn = self.connect(), self.connect(), self.connect()
        app1 = DogSchool(conn1, "dogschool_gaps")
        app2 = DogSchool(conn2, "dogschool_gaps")
        reader = DogSchool(reader_conn, "dogschool_gaps")
        app1.register_dog("Fido")

        for commit in (True, False):
            with self.subTest(commit=commit):
                before = [n.id for n in reader.notification_log.select(1, 100)]
                with conn1.transaction():
                    slow = app1.register_dog(f"Slow {commit}")
                    quick = app2.register_dog(f"Quick {commit}")  # commits
                    self.assertEqual([n.id for n in reader.notification_log.select(1, 100)],
                                     before)
                    if not commit:
                        raise psycopg.Rollback()
                log = reader.notification_log.select(before[-1] + 1, 100)
                expected = [slow, quick] if commit else [quick]
                self.assertEqual([n.originator_id for n in log], expected)
                self.assertEqual(max_notification_id(reader_conn, reader.name), log[-1].id)

    # 3 ---------------------------------------------------------------------

    def test_process_application_tracking(self):
        """A downstream application follows the DogSchool log, recording its
        tracking position atomically with the events it emits."""
        up_conn, down_conn = self.connect(), self.connect()
        school = DogSchool(up_conn, "dogschool_upstream")
        counter = Counter(down_conn, "counter")

        self.assertIsNone(counter.position(school.name))
        fido = school.register_dog("Fido")
        school.add_trick(fido, "roll over")
        school.add_trick(fido, "fetch ball")
        millie = school.register_dog("Millie")
        school.add_trick(millie, "fetch ball")

        # Process the first notification (a registration): nothing to emit,
        # only the position is recorded.
        first = school.notification_log.select(1, 1)[0]
        self.assertEqual(first.topic, "dogschool:Dog.Registered")
        self.assertEqual(counter.process(school.name, first), [])
        self.assertEqual(counter.position(school.name), 1)
        self.assertIsNone(max_notification_id(down_conn, counter.name))

        # Follow the rest of the log.
        self.assertEqual(counter.pull_and_process(school), 4)
        self.assertEqual(counter.position(school.name), 5)
        self.assertEqual(counter.count("roll over"), 1)
        self.assertEqual(counter.count("fetch ball"), 2)
        self.assertEqual(max_notification_id(down_conn, counter.name), 3)
        emitted = counter.notification_log.select(1, 10)
        self.assertEqual([n.topic for n in emitted], ["counter:TrickCounter.Incremented"] * 3)
        self.assertEqual([n.originator_version for n in emitted], [1, 1, 2])

        # Nothing new upstream: nothing to do.
        self.assertEqual(counter.pull_and_process(school), 0)

        # Re-processing a notification already processed (say by a second
        # follower, or after a crash between processing and acknowledging)
        # is refused and records nothing: with events to emit ...
        trick_note = school.notification_log.select(5, 1)[0]
        self.assertEqual(trick_note.topic, "dogschool:Dog.TrickAdded")
        with self.assertRaises(psycopg.IntegrityError) as cm:
            counter.process(school.name, trick_note)
        self.assertSqlstate(cm, "23505")
        # ... and with none.
        with self.assertRaises(psycopg.IntegrityError) as cm:
            counter.process(school.name, first)
        self.assertSqlstate(cm, "23505")
        self.assertEqual(counter.position(school.name), 5)
        self.assertEqual(max_notification_id(down_conn, counter.name), 3)
        self.assertEqual(counter.count("fetch ball"), 2)

        # A second follower (another connection, same application) resumes
        # from the recorded position and processes only what is new.
        other = Counter(self.connect(), "counter")
        school.add_trick(fido, "fetch ball")
        school.add_trick(millie, "play dead")
        self.assertEqual(other.pull_and_process(school), 2)
        self.assertEqual(counter.position(school.name), 7)
        self.assertEqual(counter.count("fetch ball"), 3)
        self.assertEqual(counter.count("play dead"), 1)
        self.assertEqual(max_notification_id(down_conn, counter.name), 5)

        # Skipping ahead is allowed (positions only need to increase), and
        # the tracking of one upstream does not affect another.
        self.assertEqual(counter.conn.execute(
            "SELECT * FROM es_append(%s, ARRAY[]::es_event[], %s, %s)",
            ("counter", "elsewhere", 100)).fetchall(), [])
        self.assertEqual(counter.position("elsewhere"), 100)
        self.assertEqual(counter.position(school.name), 7)

        # A failed event append records no tracking position either.
        stale = TrickCounter(TrickCounter.id_for("roll over"))
        stale.increment("roll over")  # version 1 exists already
        with self.assertRaises(psycopg.errors.UniqueViolation):
            with down_conn.transaction():
                down_conn.execute("SELECT * FROM es_append(%s, %s::es_event[], %s, %s)",
                                  ("counter", counter.to_es_events(stale.collect_events()),
                                   school.name, 8))
        self.assertEqual(counter.position(school.name), 7)

    # 4 ---------------------------------------------------------------------

    def test_error_paths(self):
        conn = self.connect()
        app = DogSchool(conn, "dogschool_errors")
        dog_id = app.register_dog("Fido")
        EsEvent = es_event_type(conn)

        # Unknown application: 42704, for readers and writers alike.
        for query, params in [
            ("SELECT * FROM es_select(%s, 1, 10)", ("no_such_app",)),
            ("SELECT * FROM es_events(%s, %s)", ("no_such_app", dog_id)),
            ("SELECT es_max_notification_id(%s)", ("no_such_app",)),
            ("SELECT es_tracking_position(%s, 'x')", ("no_such_app",)),
            ("SELECT * FROM es_append(%s, %s::es_event[])",
             ("no_such_app", [EsEvent(uuid.uuid4(), 1, "dogschool:Dog.Registered", b"{}")])),
        ]:
            with self.subTest(query=query):
                with self.assertRaises(psycopg.errors.UndefinedObject) as cm:
                    conn.execute(query, params).fetchall()
                self.assertSqlstate(cm, "42704")
                self.assertIn("no_such_app", cm.exception.diag.message_primary)

        # max_count 0: 22023.
        with self.assertRaises(psycopg.errors.InvalidParameterValue) as cm:
            app.notification_log.select(start=1, limit=0)
        self.assertSqlstate(cm, "22023")
        with self.assertRaises(psycopg.errors.InvalidParameterValue) as cm:
            conn.execute("SELECT * FROM es_events(%s, %s, max_count => 0)",
                         (app.name, dog_id)).fetchall()
        self.assertSqlstate(cm, "22023")

        # A NULL events array (Python None): 22004.
        with self.assertRaises(psycopg.errors.NullValueNotAllowed) as cm:
            conn.execute("SELECT * FROM es_append(%s, %s::es_event[])", (app.name, None)).fetchall()
        self.assertSqlstate(cm, "22004")
        with self.assertRaises(psycopg.errors.NullValueNotAllowed) as cm:
            conn.execute("SELECT * FROM es_append(%s, %s::es_event[], %s, %s)",
                         (app.name, None, "up", 1)).fetchall()
        self.assertSqlstate(cm, "22004")

        # An empty Python list needs the cast: it has no element type, and
        # es_append is overloaded.
        with self.assertRaises(psycopg.errors.AmbiguousFunction):
            conn.execute("SELECT * FROM es_append(%s, %s)", (app.name, [])).fetchall()
        self.assertEqual(conn.execute("SELECT * FROM es_append(%s, %s::es_event[])",
                                      (app.name, [])).fetchall(), [])

        # None of that recorded anything; the connection is still usable.
        self.assertEqual(max_notification_id(conn, app.name), 1)
        self.assertEqual(app.get_dog(dog_id), {"name": "Fido", "tricks": ()})

    # Alternative ways to append ------------------------------------------

    def test_append_from_parallel_arrays(self):
        """Without register_composite: build es_event[] in SQL from parallel
        arrays of plain Python values; and the single-event forms."""
        conn = psycopg.connect(self.dsn, autocommit=True)
        self.conns.append(conn)
        name = "dogschool_arrays"
        conn.execute("SELECT es_create_application(%s)", (name,))
        query = ("SELECT * FROM es_append(%s, ARRAY("
                 "  SELECT ROW(o, v, t, s)::es_event"
                 "    FROM unnest(%s::uuid[], %s::bigint[], %s::text[], %s::bytea[])"
                 "         WITH ORDINALITY AS x(o, v, t, s, ord)"
                 "   ORDER BY ord))")
        a, b = uuid.uuid4(), uuid.uuid4()
        events = [(b, 1, "dogschool:Dog.Registered", b'{"name": "B"}'),
                  (a, 1, "dogschool:Dog.Registered", b'{"name": "A"}'),
                  (a, 2, "dogschool:Dog.TrickAdded", b'{"trick": "sit"}')]
        cols = [list(c) for c in zip(*events)]
        ids = [r[0] for r in conn.execute(query, (name, *cols)).fetchall()]
        self.assertEqual(ids, [1, 2, 3])
        log = conn.execute("SELECT id, originator_id, originator_version, topic, state"
                           "  FROM es_select(%s, 1, 10)", (name,)).fetchall()
        self.assertEqual(log, [(i, *e) for i, e in zip(ids, events)])

        # Zero events: an empty array, not NULL.
        self.assertEqual(conn.execute(query, (name, [], [], [], [])).fetchall(), [])

        # One event, field by field, and as one es_event.
        self.assertEqual(conn.execute(
            "SELECT es_append(%s, %s, %s, %s, %s)",
            (name, a, 3, "dogschool:Dog.TrickAdded", b'{"trick": "stay"}')).fetchone()[0], 4)
        self.assertEqual(conn.execute(
            "SELECT es_append(%s, ROW(%s, %s, %s, %s)::es_event)",
            (name, a, 4, "dogschool:Dog.TrickAdded", b'{"trick": "beg"}')).fetchone()[0], 5)
        with self.assertRaises(psycopg.errors.UniqueViolation):
            conn.execute("SELECT es_append(%s, %s, %s, %s, %s)",
                         (name, a, 4, "dogschool:Dog.TrickAdded", b"{}"))

        # The registered DogSchool reads what was written this way.
        app = DogSchool(self.connect(), name)
        self.assertEqual(app.get_dog(a), {"name": "A", "tricks": ("sit", "stay", "beg")})
        self.assertEqual(app.get_dog(b), {"name": "B", "tricks": ()})


if __name__ == "__main__":
    unittest.main()
