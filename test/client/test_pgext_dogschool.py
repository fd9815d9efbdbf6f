#!/usr/bin/python3
"""The eventsourcing library's tutorial on eventsourcing_pgext: the
DogSchool's test() (a conflict refused, a historical version, the
notification log in pages) with PERSISTENCE_MODULE=eventsourcing_pgext and
nothing else changed; with the library's cipher and compressor, with the
extension's encryption and compression instead, with snapshots; the server's
view of the same events (es_state, es_verify); and a process application
following it in the library's System, run by the library's
SingleThreadedRunner and by the module's ListenRunner.

    ES_TEST_DSN="host=/path/to/socket port=54325 user=postgres dbname=postgres" \\
        /usr/bin/python3 test/client/test_pgext_dogschool.py -v

Makes (and drops) its own databases, es_pgext_dogschool and one per System.
"""

import os
import threading
import time
import unittest
import uuid

import pgext_support as S

DB = S.TestDatabase("es_pgext_dogschool")

if S.LIBRARY_MISSING:
    class LibraryMissing(unittest.TestCase):
        @unittest.skip(S.LIBRARY_MISSING)
        def test_tutorial(self):
            pass

else:
    from eventsourcing.system import SingleThreadedRunner, System

    import pgext_dogschool as ds
    from eventsourcing_pgext import ListenRunner, PgextApplicationRecorder, SnapshotRecorder

    HAVE_CIPHER = True
    try:
        from eventsourcing.cipher import AESCipher
    except ImportError:  # pragma: no cover
        HAVE_CIPHER = False

    def setUpModule():
        DB.create()

    def tearDownModule():
        DB.drop()

    TRICKS = ("roll over", "fetch ball", "play dead", "shake hands", "sit pretty", "come", "spin", "stay")

    class TutorialTest(unittest.TestCase):

        def app(self, cls=ds.DogSchool, **extra):
            """A DogSchool of a name of its own (the tutorial's test() expects an
            empty log), configured only through the environment."""
            named = type(S.unique("DogSchool"), (cls,), {})
            app = named(env=DB.env(**extra))
            self.addCleanup(app.close)
            return app

        def stored_states(self, application):
            """The state bytes as stored in the table (superuser)."""
            with DB.connect() as conn:
                return [bytes(r[0]) for r in conn.execute(
                    "SELECT e.state FROM es_stored_events e JOIN es_applications a ON a.id = e.application_id"
                    " WHERE a.name = %s ORDER BY e.notification_id", (application,))]

        def test_tutorial(self):
            app = self.app()
            self.assertIsInstance(app.recorder, PgextApplicationRecorder)
            ds.test(app, expect_visible_in_db=True)
            self.assertEqual([n.id for n in app.notification_log.select(start=1, limit=10)], list(range(1, 11)))
            self.assertEqual(app.recorder.max_notification_id(), 12)
            # what the library wrote is what the extension stored
            self.assertEqual(self.stored_states(app.name)[0], app.notification_log.select(1, 1)[0].state)

        @unittest.skipUnless(HAVE_CIPHER, "no pycryptodome for the library's AESCipher")
        def test_tutorial_with_the_librarys_cipher_and_compressor(self):
            app = self.app(CIPHER_TOPIC="eventsourcing.cipher:AESCipher",
                           CIPHER_KEY=AESCipher.create_key(num_bytes=32),
                           COMPRESSOR_TOPIC="eventsourcing.compressor:ZlibCompressor")
            ds.test(app, expect_visible_in_db=False)

        def test_tutorial_with_the_extensions_encryption_and_compression(self):
            """PGEXT_ENCRYPTION=y, PGEXT_COMPRESSION=y: the server encrypts and
            compresses each state (per aggregate keys); the application reads
            plaintext through the functions, the table holds none."""
            app = self.app(PGEXT_ENCRYPTION="y", PGEXT_COMPRESSION="y")
            self.assertIsNone(app.mapper.cipher)
            self.assertIsNone(app.mapper.compressor)
            ds.test(app, expect_visible_in_db=True)
            stored = self.stored_states(app.name)
            self.assertEqual(len(stored), 12)
            for state in stored:
                for trick in TRICKS:
                    self.assertNotIn(trick.encode(), state)
            with DB.connect() as conn:
                self.assertEqual(conn.execute("SELECT compression, encryption FROM es_status WHERE application = %s",
                                              (app.name,)).fetchone(), (True, True))
            # the server can still fold what it encrypted
            dog_id = app.notification_log.select(1, 1)[0].originator_id
            self.assertEqual(app.recorder.state(dog_id)["name"], "Fido")

        def test_tutorial_with_snapshots(self):
            """Snapshots every 2 events go to "<name>_snapshots", at the
            aggregate's versions 2 and 4; the historical version (3) and the
            current one come from a snapshot and the events after it."""

            class SnapshottingDogSchool(ds.DogSchool):
                snapshotting_intervals = {ds.Dog: 2}

            app = self.app(SnapshottingDogSchool)
            ds.test(app, expect_visible_in_db=True)
            self.assertIsInstance(app.snapshots.recorder, SnapshotRecorder)
            self.assertEqual(app.snapshots.recorder.application, app.name + "_snapshots")
            fido = app.notification_log.select(1, 1)[0].originator_id
            versions = [s.originator_version for s in app.snapshots.recorder.select_events(fido)]
            self.assertEqual(versions, [2, 4])
            self.assertEqual(app.repository.get(fido, version=3).tricks, ["roll over", "fetch ball"])
            self.assertEqual(app.get_dog(fido)["tricks"], ("roll over", "fetch ball", "play dead"))
            # and a snapshot taken by hand, at the same version, is a conflict
            from eventsourcing.persistence import IntegrityError
            with self.assertRaises(IntegrityError):
                app.take_snapshot(fido, version=4)

        def test_the_servers_view_of_the_same_events(self):
            """es_state folds the library's JSON events in the server (folds
            defined once per topic), at the current and a historical version;
            es_verify checks each dog's hash chain; es_verify_log the log."""
            app = self.app()
            ds.test(app, expect_visible_in_db=True)
            rec = app.recorder
            rec.define_fold(ds.Dog.Registered.__module__ + ":Dog.Registered",
                            [{"op": "set", "path": "name", "from": "name"},
                             {"op": "set", "path": "tricks", "value": []}])
            rec.define_fold(ds.Dog.TrickAdded.__module__ + ":Dog.TrickAdded",
                            [{"op": "append", "path": "tricks", "from": "trick"}])
            dogs = {n.originator_id for n in app.notification_log.select(1, 10) + app.notification_log.select(11, 10)}
            self.assertEqual(len(dogs), 3)
            for dog_id in dogs:
                details = app.get_dog(dog_id)
                self.assertEqual(rec.state(dog_id), {"name": details["name"], "tricks": list(details["tricks"])})
                v = rec.verify(dog_id, expected_head=rec.head(dog_id))
                self.assertTrue(v.ok, v)
                self.assertEqual(v.events, 1 + len(details["tricks"]))
            fido = app.notification_log.select(1, 1)[0].originator_id
            self.assertEqual(rec.state(fido, at_version=3), {"name": "Fido", "tricks": ["roll over", "fetch ball"]})
            self.assertEqual(rec.verify_log(), [])
            self.assertFalse(rec.verify(fido, expected_head=b"\x00" * 32).ok)

    class SystemTest(unittest.TestCase):
        """DogSchool -> Counters in the library's System, each test in a
        database of its own (the applications keep their class names)."""

        def setUp(self):
            self.db = S.TestDatabase(S.unique("es_pgext_system"))
            self.db.create()
            self.addCleanup(self.db.drop)

        def exercise(self, runner, wait_for):
            school = runner.get(ds.DogSchool)
            counters = runner.get(ds.Counters)
            dogs = [school.register_dog("dog %d" % i) for i in range(6)]
            expected = {}
            for i, dog_id in enumerate(dogs):
                for trick in TRICKS[: 1 + i % len(TRICKS)]:
                    school.add_trick(dog_id, trick)
                    expected[trick] = expected.get(trick, 0) + 1
            # a historical version and a conflict, in the leader
            old = school.repository.get(dogs[-1], version=2)
            old.add_trick("conflicting")
            from eventsourcing.persistence import IntegrityError
            with self.assertRaises(IntegrityError):
                school.save(old)
            head = school.recorder.max_notification_id()
            wait_for(lambda: counters.recorder.max_tracking_id("DogSchool") == head)
            for trick, n in expected.items():
                self.assertEqual(counters.get_count(trick), n, trick)
            seen = sorted(i for t in expected for i in counters.get_seen(t))
            trick_ids = [n.id for n in school.recorder.select_notifications(1, 1000)
                         if n.topic.endswith("Dog.TrickAdded")]
            self.assertEqual(seen, trick_ids)       # each once
            self.assertEqual(counters.get_count("conflicting"), 0)

        def test_single_threaded_runner(self):
            runner = SingleThreadedRunner(System(pipes=[[ds.DogSchool, ds.Counters]]), env=self.db.env())
            runner.start()
            self.addCleanup(runner.stop)
            self.assertIsInstance(runner.get(ds.Counters).recorder, PgextApplicationRecorder)
            self.exercise(runner, lambda done: self.assertTrue(done()))

        def test_listen_runner(self):
            """The module's runner: the follower in a thread of its own, woken by
            the leader's saves in this process and by LISTEN."""
            runner = ListenRunner(System(pipes=[[ds.DogSchool, ds.Counters]]), env=self.db.env(), timeout=None)
            runner.start()
            self.addCleanup(runner.stop)

            def wait_for(done):
                deadline = time.monotonic() + 30
                while not done():
                    runner.watch_for_errors(0)
                    self.assertLess(time.monotonic(), deadline, "the follower did not catch up")
                    time.sleep(0.05)

            self.exercise(runner, wait_for)


if __name__ == "__main__":
    unittest.main(buffer=True)
