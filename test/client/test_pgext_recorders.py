#!/usr/bin/python3
"""The Python eventsourcing library's own recorder test cases
(eventsourcing.tests.persistence: AggregateRecorderTestCase,
ApplicationRecorderTestCase, ProcessRecorderTestCase, with their concurrency
tests, NonInterleavingNotificationIDsBaseCase and
InfrastructureFactoryTestCase) against eventsourcing_pgext, the persistence
module in clients/python, subclassed as the library subclasses them for its
own PostgreSQL module; then what the module adds or does differently:
installing the extension, races of conflicting writers and of a tailing
reader, tracking, snapshots at any version, errors, lost connections, the
pool and the settings.

    ES_TEST_DSN="host=/path/to/socket port=54325 user=postgres dbname=postgres" \\
        /usr/bin/python3 test/client/test_pgext_recorders.py -v

The module makes (and afterwards drops) its own database, es_pgext_recorders,
without the extension: the module's factory installs it.  Each test uses
applications of its own (fresh logs), as the library's tests drop their tables.
"""

import threading
import time
import unittest
import uuid
from typing import Dict, List

import pgext_support as S

DB = S.TestDatabase("es_pgext_recorders")

if S.LIBRARY_MISSING:
    class LibraryMissing(unittest.TestCase):
        @unittest.skip(S.LIBRARY_MISSING)
        def test_library_recorder_test_cases(self):
            pass

else:
    import psycopg
    from eventsourcing.persistence import (
        DataError,
        InfrastructureFactory,
        IntegrityError,
        OperationalError,
        ProgrammingError,
        StoredEvent,
        Tracking,
    )
    # (the module, not its classes: unittest would collect the abstract ones)
    from eventsourcing.tests import persistence as library_tests
    from eventsourcing.utils import Environment

    import eventsourcing_pgext
    from eventsourcing_pgext import (
        Factory,
        PgextAggregateRecorder,
        PgextApplicationRecorder,
        PgextProcessRecorder,
        SnapshotRecorder,
    )

    def setUpModule():
        DB.create()

    def tearDownModule():
        DB.drop()

    class PgextCase(unittest.TestCase):
        """Factories made by a test are closed after it."""

        def setUp(self):
            super().setUp()
            self.factories: List[Factory] = []

        def tearDown(self):
            for f in self.factories:
                f.close()
            super().tearDown()

        def factory(self, name: str = "", **extra: str) -> Factory:
            env = Environment(name or S.unique(type(self).__name__.lower()), DB.env(**extra))
            f = InfrastructureFactory.construct(env)
            self.assertIsInstance(f, Factory)
            self.factories.append(f)
            return f

    # -- the library's test cases --------------------------------------------

    class TestAggregateRecorder(PgextCase, library_tests.AggregateRecorderTestCase):
        def create_recorder(self):
            return self.factory().aggregate_recorder()

    class TestSnapshotRecorder(PgextCase, library_tests.AggregateRecorderTestCase):
        """The same contract for the recorder of the library's snapshots."""

        def create_recorder(self):
            recorder = self.factory().aggregate_recorder(purpose="snapshots")
            self.assertIsInstance(recorder, SnapshotRecorder)
            return recorder

    class TestApplicationRecorder(PgextCase, library_tests.ApplicationRecorderTestCase):
        def create_recorder(self):
            return self.factory().application_recorder()

    class TestProcessRecorder(PgextCase, library_tests.ProcessRecorderTestCase):
        def create_recorder(self):
            return self.factory().process_recorder()

    class TestNonInterleavingNotificationIDs(PgextCase, library_tests.NonInterleavingNotificationIDsBaseCase):
        def create_recorder(self):
            return self.factory().application_recorder()

    class TestInfrastructureFactory(library_tests.InfrastructureFactoryTestCase):
        def setUp(self):
            self.env = Environment(S.unique("factorytest"), DB.env())
            super().setUp()

        def tearDown(self):
            self.factory.close()
            super().tearDown()

        def expected_factory_class(self):
            return Factory

        def expected_aggregate_recorder_class(self):
            return PgextAggregateRecorder

        def expected_application_recorder_class(self):
            return PgextApplicationRecorder

        def expected_process_recorder_class(self):
            return PgextProcessRecorder

    # -- what the module adds -------------------------------------------------

    def event(originator_id=None, version=1, topic="topic", state=b"{}"):
        return StoredEvent(originator_id or uuid.uuid4(), version, topic, state)

    class TestModule(PgextCase):

        def test_factory_installs_extension_and_names_applications(self):
            """A database without the extension gets it from the first factory
            (as a superuser); the library application "DogSchool" is the
            extension application "DogSchool", its snapshots "DogSchool_snapshots"."""
            db = S.TestDatabase("es_pgext_install")
            db.create()
            try:
                env = Environment("DogSchool", db.env())
                f = Factory(env)
                try:
                    f.application_recorder()
                    f.aggregate_recorder("snapshots")
                    with db.connect() as conn:
                        self.assertEqual(conn.execute(
                            "SELECT count(*) FROM pg_extension WHERE extname = 'eventsourcing'").fetchone()[0], 1)
                        names = [r[0] for r in conn.execute("SELECT application FROM es_status ORDER BY 1")]
                    self.assertEqual(names, ["DogSchool", "DogSchool_snapshots"])
                finally:
                    f.close()
            finally:
                db.drop()

        def test_conflicting_writers_race(self):
            """Writers of the same version, released together: exactly one wins,
            every other gets the library's IntegrityError, and no id is used up."""
            recorder = self.factory(POSTGRES_POOL_SIZE="12").application_recorder()
            for round_ in range(5):
                agg = uuid.uuid4()
                recorder.insert_events([event(agg, 1)])
                barrier = threading.Barrier(10)
                results: List[object] = []
                lock = threading.Lock()

                def write(k):
                    e = event(agg, 2, state=b'{"writer": %d}' % k)
                    barrier.wait()
                    try:
                        ids = recorder.insert_events([e])
                        r = ("ok", ids)
                    except Exception as exc:
                        r = ("err", exc)
                    with lock:
                        results.append(r)

                threads = [threading.Thread(target=write, args=(k,)) for k in range(10)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(30)
                wins = [r for r in results if r[0] == "ok"]
                errors = [r[1] for r in results if r[0] == "err"]
                self.assertEqual(len(wins), 1, results)
                self.assertEqual(len(errors), 9)
                for exc in errors:
                    self.assertIsInstance(exc, IntegrityError)
                self.assertEqual([e.originator_version for e in recorder.select_events(agg)], [1, 2])
            # 5 rounds of 2 events: ids 1..10, none used by a refused write
            self.assertEqual(recorder.max_notification_id(), 10)
            self.assertEqual([n.id for n in recorder.select_notifications(1, 100)], list(range(1, 11)))

        def test_tailing_reader_misses_nothing_under_concurrent_writers(self):
            """A reader that follows the log page by page from its last id while
            8 writers append (one to several events per call, many aggregates)
            sees every event exactly once and in id order: the ids a reader is
            given never have a not-yet-visible id below them."""
            recorder = self.factory(POSTGRES_POOL_SIZE="12").application_recorder()
            writers, calls = 8, 60
            stop = threading.Event()
            seen: List[int] = []
            errors: List[BaseException] = []

            def write(k):
                try:
                    for i in range(calls):
                        agg = uuid.uuid4()
                        n = 1 + (i + k) % 4
                        recorder.insert_events([event(agg, v) for v in range(1, n + 1)])
                except BaseException as e:  # pragma: no cover
                    errors.append(e)

            def read():
                position = 0
                try:
                    while True:
                        done = stop.is_set()
                        page = recorder.select_notifications(position + 1, 7)
                        for n in page:
                            seen.append(n.id)
                            position = n.id
                        if done and not page:
                            return
                except BaseException as e:  # pragma: no cover
                    errors.append(e)

            reader = threading.Thread(target=read)
            reader.start()
            threads = [threading.Thread(target=write, args=(k,)) for k in range(writers)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            stop.set()
            reader.join(60)
            self.assertEqual(errors, [])
            total = sum(1 + (i + k) % 4 for k in range(writers) for i in range(calls))
            self.assertEqual(recorder.max_notification_id(), total)
            self.assertEqual(seen, list(range(1, total + 1)))

        def test_insert_returns_ids_in_input_order_for_several_aggregates(self):
            recorder = self.factory().application_recorder()
            a, b = uuid.uuid4(), uuid.uuid4()
            ids = recorder.insert_events([event(b, 1), event(a, 1), event(b, 2), event(a, 2)])
            self.assertEqual(ids, [1, 2, 3, 4])
            got = [(n.originator_id, n.originator_version) for n in recorder.select_notifications(1, 10)]
            self.assertEqual(got, [(b, 1), (a, 1), (b, 2), (a, 2)])
            self.assertEqual(recorder.select_notifications(2, 10, stop=3, topics=["topic"])[-1].id, 3)
            self.assertEqual(recorder.select_notifications(0, 1)[0].id, 1)   # start 0 reads from 1
            self.assertEqual(recorder.select_notifications(3, 10, stop=2), [])

        def test_tracking_is_atomic_with_the_events(self):
            """A refused save records neither its events nor its position; a
            position not above the recorded one is refused (IntegrityError);
            has_tracking_id answers for every id up to the position."""
            recorder = self.factory().process_recorder()
            agg = uuid.uuid4()
            recorder.insert_events([event(agg, 1)], tracking=Tracking("up", 5))
            with self.assertRaises(IntegrityError):         # version conflict
                recorder.insert_events([event(agg, 1), event(uuid.uuid4(), 1)], tracking=Tracking("up", 6))
            self.assertEqual(recorder.max_tracking_id("up"), 5)
            self.assertEqual(recorder.max_notification_id(), 1)
            with self.assertRaises(IntegrityError):         # position not above
                recorder.insert_events([event(uuid.uuid4(), 1)], tracking=Tracking("up", 5))
            with self.assertRaises(IntegrityError):
                recorder.insert_events([], tracking=Tracking("up", 4))
            self.assertEqual(recorder.max_notification_id(), 1)
            self.assertTrue(recorder.has_tracking_id("up", 3))
            self.assertFalse(recorder.has_tracking_id("up", 6))
            self.assertEqual(recorder.max_tracking_id("other"), 0)
            recorder.insert_events([event(agg, 2)], tracking=Tracking("up", 9))
            self.assertEqual((recorder.max_tracking_id("up"), recorder.max_notification_id()), (9, 2))

        def test_snapshots_at_any_version(self):
            """The library snapshots at versions 5, 12, 40 ...: each read asks
            for the latest at or below a version.  Older or equal snapshots are
            refused as conflicts."""
            recorder = self.factory().aggregate_recorder("snapshots")
            agg = uuid.uuid4()
            for v in (5, 12, 40):
                recorder.insert_events([event(agg, v, "Snapshot", b'{"v": %d}' % v)])
            latest = recorder.select_events(agg, desc=True, limit=1)
            self.assertEqual([(e.originator_version, e.topic, e.state) for e in latest],
                             [(40, "Snapshot", b'{"v": 40}')])
            self.assertEqual([e.originator_version for e in recorder.select_events(agg, lte=39, desc=True, limit=1)], [12])
            self.assertEqual([e.originator_version for e in recorder.select_events(agg, lte=4, desc=True, limit=1)], [])
            self.assertEqual([e.originator_version for e in recorder.select_events(agg)], [5, 12, 40])
            self.assertEqual([e.originator_version for e in recorder.select_events(agg, gt=5, lte=40)], [12, 40])
            self.assertEqual([e.originator_version for e in recorder.select_events(agg, limit=2)], [5, 12])
            for v in (40, 7):
                with self.assertRaises(IntegrityError):
                    recorder.insert_events([event(agg, v)])
            # many snapshots: the descending read pages
            agg2 = uuid.uuid4()
            for v in range(1, 101):
                recorder.insert_events([event(agg2, v * 3)])
            self.assertEqual(recorder.select_events(agg2, lte=10, desc=True, limit=1)[0].originator_version, 9)
            self.assertEqual(len(recorder.select_events(agg2)), 100)
            # the extension's own chain over them verifies
            self.assertTrue(recorder.verify(agg2).ok)

        def test_concurrent_snapshots_of_one_aggregate(self):
            """Snapshots of one aggregate taken at once at different versions:
            each is recorded or refused with IntegrityError (only when a later
            one got there first); the recorded versions increase."""
            recorder = self.factory(POSTGRES_POOL_SIZE="10").aggregate_recorder("snapshots")
            agg = uuid.uuid4()
            barrier = threading.Barrier(8)
            outcome: Dict[int, str] = {}

            def snap(v):
                barrier.wait()
                try:
                    recorder.insert_events([event(agg, v)])
                    outcome[v] = "ok"
                except IntegrityError:
                    outcome[v] = "refused"
                except Exception as e:  # pragma: no cover
                    outcome[v] = repr(e)

            threads = [threading.Thread(target=snap, args=(v,)) for v in range(10, 90, 10)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            self.assertEqual(set(outcome.values()) - {"ok", "refused"}, set())
            stored = [e.originator_version for e in recorder.select_events(agg)]
            self.assertEqual(stored, sorted(v for v, o in outcome.items() if o == "ok"))
            self.assertIn(80, stored)       # the highest can never be refused
            for v, o in outcome.items():
                if o == "refused":
                    self.assertTrue(any(s > v for s in stored))

        def test_errors_are_the_librarys(self):
            f = self.factory()
            recorder = f.application_recorder()
            agg = uuid.uuid4()
            recorder.insert_events([event(agg, 1)])
            with self.assertRaises(DataError) as cm:        # 22023: skips ahead
                recorder.insert_events([event(agg, 3)])
            self.assertEqual(cm.exception.sqlstate, "22023")
            with self.assertRaises(IntegrityError) as cm:
                recorder.insert_events([event(agg, 1)])
            self.assertEqual(cm.exception.sqlstate, "23505")
            self.assertIsInstance(cm.exception.__cause__, psycopg.errors.UniqueViolation)
            # an application that does not exist, not created (CREATE_TABLE=n)
            missing = self.factory(CREATE_TABLE="n").application_recorder()
            with self.assertRaises(ProgrammingError) as cm:
                missing.select_notifications(1, 10)
            self.assertEqual(cm.exception.sqlstate, "42704")
            with self.assertRaises(ProgrammingError):
                missing.insert_events([event()])
            # cancelled (statement_timeout): OperationalError, connection reusable
            with recorder.datastore.connection() as conn:
                conn.execute("SET statement_timeout = '100ms'")
                with self.assertRaises(psycopg.errors.QueryCanceled):
                    conn.execute("SELECT pg_sleep(5)")
                conn.execute("RESET statement_timeout")
            self.assertIsNone(recorder.wait(after=1, timeout=0.1))
            self.assertEqual(recorder.wait(after=0, timeout=1), 1)

        def test_retries_after_the_server_closed_its_connections(self):
            """Connections in the pool whose backends were terminated (a
            restart, a failover, an idle timeout) are replaced: reads and
            writes go on, as with the library's recorders."""
            recorder = self.factory(POSTGRES_POOL_SIZE="1").process_recorder()
            recorder.insert_events([event()], tracking=Tracking("up", 1))

            def terminate():
                with DB.connect() as conn:
                    n = conn.execute(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                        " AND backend_type = 'client backend'").fetchone()[0]
                self.assertGreaterEqual(n, 1)
                time.sleep(0.2)

            terminate()
            self.assertEqual(len(recorder.select_notifications(1, 10)), 1)
            terminate()
            self.assertEqual(recorder.max_tracking_id("up"), 1)
            terminate()
            self.assertEqual(len(recorder.insert_events([event()], tracking=Tracking("up", 2))), 1)
            self.assertEqual(recorder.max_notification_id(), 2)

        def test_prepared_statements_survive_deallocate_and_values_round_trip(self):
            """The hot paths (one-event saves, an aggregate's events, the
            log, positions) are prepared once per pooled connection and run
            with binary results: values come back as given (non-ASCII text,
            bytes with NULs, large versions and ids), and a session whose
            prepared statements were dropped (DEALLOCATE ALL, DISCARD ALL
            through datastore.connection()) prepares them again."""
            recorder = self.factory(POSTGRES_POOL_SIZE="1", POSTGRES_POOL_MAX_OVERFLOW="0").process_recorder()
            agg = uuid.uuid4()
            topic = "pgext_dogschool:Dog.TrickAdded·é✓"
            state = b'\x00\x01{"name": "F\xc3\xaddo"}\xff\x00'
            recorder.insert_events([event(agg, 1, topic, state)])
            with recorder.datastore.connection() as conn:
                self.assertEqual(conn.execute(
                    "SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'es_pgext_%'").fetchone()[0], 1)
                conn.execute("DEALLOCATE ALL")
            recorder.insert_events([event(agg, 2, topic, b"")])
            self.assertEqual(recorder.select_events(agg), [
                StoredEvent(agg, 1, topic, state), StoredEvent(agg, 2, topic, b"")])
            self.assertEqual(recorder.select_events(agg, gt=1), [StoredEvent(agg, 2, topic, b"")])
            self.assertEqual(recorder.select_events(agg, desc=True, limit=1), [StoredEvent(agg, 2, topic, b"")])
            self.assertEqual(recorder.select_events(agg, lte=1), [StoredEvent(agg, 1, topic, state)])
            with recorder.datastore.connection() as conn:
                conn.execute("DISCARD ALL")
            notifications = recorder.select_notifications(1, 10)
            self.assertEqual([(n.id, n.originator_id, n.originator_version, n.topic, n.state) for n in notifications],
                             [(1, agg, 1, topic, state), (2, agg, 2, topic, b"")])
            self.assertEqual(recorder.max_notification_id(), 2)
            self.assertEqual(recorder.max_tracking_id("nobody"), 0)
            # versions beyond 32 bits, and a tracking position beyond them
            big = uuid.uuid4()
            recorder.insert_events([event(big, 1)])
            self.assertEqual(recorder.select_events(big, gt=2**40), [])
            recorder.insert_events([event(big, 2)], tracking=Tracking("up", 2**40))
            self.assertEqual(recorder.max_tracking_id("up"), 2**40)
            self.assertTrue(recorder.has_tracking_id("up", 2**40 - 1))
            self.assertFalse(recorder.has_tracking_id("up", 2**40 + 1))

        def test_pool_size_and_timeout(self):
            """POSTGRES_POOL_SIZE + POSTGRES_POOL_MAX_OVERFLOW connections at
            most; a caller waits POSTGRES_POOL_TIMEOUT for one, then gets an
            OperationalError."""
            recorder = self.factory(POSTGRES_POOL_SIZE="1", POSTGRES_POOL_MAX_OVERFLOW="1",
                                    POSTGRES_POOL_TIMEOUT="0.5").application_recorder()
            holding = [threading.Thread(target=recorder.wait, args=(0, 3)) for _ in range(2)]
            for t in holding:
                t.start()
            time.sleep(0.5)
            started = time.monotonic()
            with self.assertRaises(OperationalError):
                recorder.max_notification_id()
            self.assertLess(time.monotonic() - started, 2.0)
            for t in holding:
                t.join()
            self.assertEqual(recorder.max_notification_id(), 0)   # free again

        def test_settings_from_the_environment(self):
            """The library's variable names, with the application's prefix
            first; invalid numbers are OSError, as in the library."""
            name = S.unique("prefixed")
            env = DB.env()
            env["%s_POSTGRES_DBNAME" % name.upper()] = env.pop("POSTGRES_DBNAME")
            f = Factory(Environment(name, env))
            self.factories.append(f)
            f.application_recorder().insert_events([event()])
            self.assertEqual(f.datastore.conninfo["dbname"], DB.name)
            with self.assertRaises(OSError):
                self.factory(POSTGRES_POOL_SIZE="abc")
            env = DB.env()
            del env["POSTGRES_DBNAME"]
            with self.assertRaises(OSError):
                Factory(Environment("x", env))

        def test_role_without_create_privilege(self):
            """A role that may not create applications gets a ProgrammingError
            that says what to ask for; once an administrator created the
            application and granted read, append and track, it works."""
            role = S.unique("es_pgext_role")
            name = S.unique("granted")
            with DB.connect() as conn:
                conn.execute('CREATE ROLE "%s" LOGIN' % role)
            try:
                self.factory(name)          # installs the extension if needed
                with self.assertRaises(ProgrammingError) as cm:
                    self.factory(name + "x", POSTGRES_USER=role).process_recorder()
                self.assertIn("es_grant", str(cm.exception))
                with DB.connect() as conn:
                    conn.execute("SELECT es_create_application(%s)", (name,))
                    for p in ("read", "append", "track"):
                        conn.execute("SELECT es_grant(%s, %s, %s)", (name, role, p))
                recorder = self.factory(name, POSTGRES_USER=role).process_recorder()
                recorder.insert_events([event()], tracking=Tracking("up", 1))
                self.assertEqual(recorder.max_tracking_id("up"), 1)
                with self.assertRaises(ProgrammingError) as cm:       # no verify privilege
                    recorder.verify(uuid.uuid4())
                self.assertEqual(cm.exception.sqlstate, "42501")
            finally:
                for f in self.factories:
                    f.close()
                self.factories = []
                with DB.connect() as conn:
                    conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,))
                    if conn.execute("SELECT count(*) FROM es_status WHERE application = %s", (name,)).fetchone()[0]:
                        for p in ("read", "append", "track"):
                            conn.execute("SELECT es_revoke(%s, %s, %s)", (name, role, p))
                    conn.execute('DROP ROLE IF EXISTS "%s"' % role)

        def test_module_exports_one_factory(self):
            """PERSISTENCE_MODULE=eventsourcing_pgext: the library looks for
            exactly one InfrastructureFactory in the module."""
            from eventsourcing.persistence import InfrastructureFactory as IF
            found = [v for v in vars(eventsourcing_pgext).values()
                     if isinstance(v, type) and issubclass(v, IF) and v is not IF]
            self.assertEqual(found, [Factory])


if __name__ == "__main__":
    unittest.main(buffer=True)   # the library's tests print figures: keep "... ok" lines whole
