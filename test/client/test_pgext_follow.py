#!/usr/bin/python3
"""Followers woken by LISTEN (the extension's announcements) instead of
polling, through eventsourcing_pgext: its Listener, and a process
application (the library's System, Counters following DogSchool) run by the
module's ListenRunner in a process of its own with no polling at all, fed by
writers in this process, killed with SIGKILL while it works and restarted:
every event is processed exactly once.

    ES_TEST_DSN="host=/path/to/socket port=54325 user=postgres dbname=postgres" \\
        /usr/bin/python3 test/client/test_pgext_follow.py -v

Makes (and drops) its own database, es_pgext_follow.  The follower process
is this file run with --follower (its settings in the environment).
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
import unittest

import pgext_support as S

DB = S.TestDatabase("es_pgext_follow")


def follower_main() -> None:
    """The follower process: Counters only, woken by LISTEN only (no timeout)."""
    from eventsourcing.system import System

    import pgext_dogschool as ds
    from eventsourcing_pgext import ListenRunner

    runner = ListenRunner(System(pipes=[[ds.DogSchool, ds.Counters]]), followers=["Counters"], timeout=None)
    runner.start()
    print("ready", flush=True)
    runner.watch_for_errors()        # blocks; raises if the follower fails
    while True:                      # pragma: no cover
        time.sleep(3600)


if S.LIBRARY_MISSING and "--follower" not in sys.argv:
    class LibraryMissing(unittest.TestCase):
        @unittest.skip(S.LIBRARY_MISSING)
        def test_follow(self):
            pass

elif "--follower" not in sys.argv:
    import pgext_dogschool as ds
    from eventsourcing_pgext import Factory, Listener
    from eventsourcing.utils import Environment

    def setUpModule():
        DB.create()

    def tearDownModule():
        DB.drop()

    def wait_until(condition, timeout, what):
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError("timed out after %.0f s waiting for %s" % (timeout, what))
            time.sleep(0.02)

    class ListenerTest(unittest.TestCase):

        def test_listener_wakes_on_announcements_and_survives_a_lost_connection(self):
            name = S.unique("listened")
            f = Factory(Environment(name, DB.env()))
            self.addCleanup(f.close)
            recorder = f.application_recorder()
            listener = recorder.listen()
            self.addCleanup(listener.close)
            self.assertFalse(listener.wait(0.2))            # nothing yet
            # an append from another session is announced by the server's worker
            started = time.monotonic()
            with DB.connect() as conn:
                conn.execute("SELECT es_append(%s, gen_random_uuid(), 1, 'T', '\\x7b7d')", (name,))
            self.assertTrue(listener.wait(10))
            self.assertLess(time.monotonic() - started, 2.0)
            self.assertEqual(listener.announced[name], 1)
            # announcements that come while the caller is busy are kept
            with DB.connect() as conn:
                conn.execute("SELECT es_append(%s, gen_random_uuid(), 1, 'T', '\\x7b7d')", (name,))
            wait_until(lambda: listener.announced.get(name) == 2 or listener.wait(0.05), 10, "announcement 2")
            self.assertFalse(listener.wait(0.2))
            # interrupt() from another thread ends a wait at once
            threading.Timer(0.2, listener.interrupt).start()
            started = time.monotonic()
            self.assertFalse(listener.wait(30))
            self.assertLess(time.monotonic() - started, 5)
            # the server ends the listening session: the next wait reconnects and
            # says "catch up" (announcements may have been lost meanwhile)
            with DB.connect() as conn:
                conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                             " WHERE datname = current_database() AND query LIKE 'LISTEN%%'")
                conn.execute("SELECT es_append(%s, gen_random_uuid(), 1, 'T', '\\x7b7d')", (name,))
            self.assertTrue(listener.wait(10))
            with DB.connect() as conn:
                conn.execute("SELECT es_append(%s, gen_random_uuid(), 1, 'T', '\\x7b7d')", (name,))
            wait_until(lambda: listener.wait(0.1) and listener.announced.get(name) == 4, 10, "announcement 4")

    class FollowerProcessTest(unittest.TestCase):

        def start_follower(self):
            env = dict(os.environ)
            env.update(DB.env())
            proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--follower"],
                                    env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            self.procs.append(proc)
            line = proc.stdout.readline()
            if line.strip() != "ready":
                proc.kill()
                raise AssertionError("follower did not start: %s %s" % (line, proc.stderr.read()))
            return proc

        def setUp(self):
            self.procs = []

        def tearDown(self):
            for p in self.procs:
                if p.poll() is None:
                    p.kill()
                p.wait()
                p.stdout.close()
                p.stderr.close()

        def position(self):
            with DB.connect() as conn:
                return conn.execute("SELECT coalesce(es_tracking_position('Counters', 'DogSchool'), 0)").fetchone()[0]

        def test_follower_woken_by_listen_killed_and_restarted(self):
            school = ds.DogSchool(env=DB.env())
            self.addCleanup(school.close)
            follower = self.start_follower()

            # 1. woken by LISTEN: the follower process has no timeout and nobody
            #    in it saves to DogSchool, so only an announcement can wake it
            dog = school.register_dog("Fido")
            started = time.monotonic()
            school.add_trick(dog, "roll over")
            head = school.recorder.max_notification_id()
            wait_until(lambda: self.position() == head, 10, "the follower to process the first trick")
            latency = time.monotonic() - started
            self.assertLess(latency, 3.0)

            # 2. writers keep writing while the follower is killed midway
            tricks = ["trick %d" % i for i in range(7)]
            writers, per_writer = 4, 60
            errors = []

            def write(k):
                try:
                    dog_id = school.register_dog("dog %d" % k)
                    for i in range(per_writer):
                        school.add_trick(dog_id, tricks[(i + k) % len(tricks)])
                except Exception as e:  # pragma: no cover
                    errors.append(e)

            threads = [threading.Thread(target=write, args=(k,)) for k in range(writers)]
            for t in threads:
                t.start()
            kills = 0
            behind = []         # how far the follower was behind when killed
            for fraction in (0.2, 0.45, 0.7):
                target = int(fraction * writers * per_writer)
                wait_until(lambda: self.position() >= target, 120, "progress before a kill")
                behind.append(school.recorder.max_notification_id() - self.position())
                follower.send_signal(signal.SIGKILL)
                follower.wait()
                kills += 1
                time.sleep(0.3)
                follower = self.start_follower()
            for t in threads:
                t.join(180)
            self.assertEqual(errors, [])
            self.assertEqual(kills, 3)
            self.assertGreater(max(behind), 0, "the follower was idle at every kill: no race")

            head = school.recorder.max_notification_id()
            wait_until(lambda: self.position() == head, 120, "the restarted follower to catch up")
            self.assertIsNone(follower.poll(), follower.stderr.read() if follower.poll() is not None else "")

            # 3. every TrickAdded counted exactly once, nothing else counted
            notifications = school.recorder.select_notifications(1, 100000)
            self.assertEqual(len(notifications), head)
            trick_ids = {}
            for n in notifications:
                if n.topic.endswith("Dog.TrickAdded"):
                    trick = json.loads(n.state)["trick"]
                    trick_ids.setdefault(trick, []).append(n.id)
            counters = ds.Counters(env=DB.env())
            self.addCleanup(counters.close)
            total = 0
            for trick, ids in trick_ids.items():
                self.assertEqual(counters.get_seen(trick), ids, trick)      # each once, in log order
                self.assertEqual(counters.get_count(trick), len(ids), trick)
                total += len(ids)
            self.assertEqual(total, 1 + writers * per_writer)
            self.assertEqual(counters.recorder.max_tracking_id("DogSchool"), head)

            # 4. after the restarts, still woken by LISTEN
            started = time.monotonic()
            school.add_trick(dog, "fetch ball")
            head = school.recorder.max_notification_id()
            wait_until(lambda: self.position() == head, 10, "the last trick")
            self.assertLess(time.monotonic() - started, 3.0)


if __name__ == "__main__":
    if "--follower" in sys.argv:
        follower_main()
    else:
        unittest.main(buffer=True)
