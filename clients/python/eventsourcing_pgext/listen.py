"""Waiting for new notifications with LISTEN instead of polling.

The extension announces new ids on each application's channel
(es_channel(application), payload {"application": ..., "notification_id": N})
from its background worker, never from the writers' transactions.

- Listener: LISTENs on the channels of one or more applications on its own
  connection(s); wait(timeout) returns when something was announced.
- ListenRunner: a runner of the library's System whose followers are woken by
  the announcements of the applications they follow, whether those are
  written in this process or in any other, and by this process's own saves.
  Followers catch up from their recorded tracking position before they wait,
  and again after a lost connection, so nothing is missed and (the position
  being recorded with the follower's own events) nothing is processed twice.

Announcements are hints: a follower always reads from its own position.
"""

from __future__ import annotations

import json
import os
import select
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple, Type

import psycopg
from psycopg import pq, sql

from eventsourcing.application import Application, TApplication
from eventsourcing.persistence import PersistenceError
from eventsourcing.system import (
    EventProcessingError,
    Follower,
    Leader,
    RecordingEventReceiver,
    Runner,
    System,
)

from eventsourcing_pgext.recorders import PgextApplicationRecorder


class _Group:
    """One LISTEN connection for the applications of one database."""

    def __init__(self, datastore: Any, applications: List[str]):
        self.datastore = datastore
        self.applications = applications
        self.conn: Optional[psycopg.Connection[Any]] = None
        self.channels: Dict[str, str] = {}      # channel -> application


class Listener:
    """LISTENs on the announcement channels of the given (datastore,
    application name) pairs, one connection per database.

    wait(timeout) returns True as soon as an announcement arrived since the
    previous wait() returned (announcements that arrive while the caller
    reads and processes are kept for the next wait), or after a lost
    connection was re-established (announcements may have been lost with
    it: catch up); False when the timeout passed or interrupt() was called.
    `announced` maps each application to the highest id announced so far."""

    RECONNECT_WAIT = 0.5

    def __init__(self, sources: Sequence[Tuple[Any, str]]):
        groups: Dict[Any, _Group] = {}
        for datastore, application in sources:
            group = groups.get(datastore.key)
            if group is None:
                group = groups[datastore.key] = _Group(datastore, [])
            if application not in group.applications:
                group.applications.append(application)
        self._groups = list(groups.values())
        self.announced: Dict[str, int] = {}
        self._pending = False
        self._closed = False
        self._rfd, self._wfd = os.pipe()
        os.set_blocking(self._rfd, False)
        os.set_blocking(self._wfd, False)
        try:
            for group in self._groups:
                self._connect(group)
        except BaseException:
            self.close()
            raise

    # -- connections ------------------------------------------------------------

    def _connect(self, group: _Group) -> None:
        conn = group.datastore.connect()
        try:
            # psycopg hands notifications that arrive during a query only to
            # notify handlers; the others are read in _drain().
            conn.add_notify_handler(lambda n, g=group: self._on_notify(g, n.channel, n.payload))
            channel_sql = group.datastore.sql("SELECT {s}.es_channel(%s)")
            channels = {}
            for application in group.applications:
                channel = conn.execute(channel_sql, (application,)).fetchone()[0]
                channels[channel] = application
            group.channels = channels
            for channel in channels:
                conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        except psycopg.Error as e:
            conn.close()
            from eventsourcing_pgext.datastore import translate_error

            raise translate_error(e) from e
        group.conn = conn

    def _on_notify(self, group: _Group, channel: str, payload: str) -> None:
        application = group.channels.get(channel)
        if application is None:
            return
        self._pending = True
        try:
            notification_id = int(json.loads(payload)["notification_id"])
        except (ValueError, KeyError, TypeError):
            return
        if notification_id > self.announced.get(application, 0):
            self.announced[application] = notification_id

    def _drain(self, group: _Group) -> None:
        assert group.conn is not None
        pgconn = group.conn.pgconn
        pgconn.consume_input()          # raises on a lost connection
        while True:
            n = pgconn.notifies()
            if n is None:
                break
            self._on_notify(group, n.relname.decode(), n.extra.decode())
        if pgconn.status != pq.ConnStatus.OK:
            raise psycopg.OperationalError("connection lost while listening")

    def _reconnect(self, group: _Group, deadline: Optional[float]) -> bool:
        if group.conn is not None:
            try:
                group.conn.close()
            except Exception:  # pragma: no cover
                pass
            group.conn = None
        while not self._closed:
            try:
                self._connect(group)
                self._pending = True        # announcements may have been lost
                return True
            except PersistenceError:
                if deadline is not None and time.monotonic() >= deadline:
                    return False
                if self._sleep_or_interrupted(self.RECONNECT_WAIT):
                    return False
        return False

    def _sleep_or_interrupted(self, seconds: float) -> bool:
        ready, _, _ = select.select([self._rfd], [], [], seconds)
        if ready:
            self._clear_interrupts()
            return True
        return False

    def _clear_interrupts(self) -> None:
        try:
            while os.read(self._rfd, 512):
                pass
        except BlockingIOError:
            pass

    # -- waiting ----------------------------------------------------------------

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Waits at most `timeout` seconds (None: until something happens)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._closed:
            for group in self._groups:
                if group.conn is None and not self._reconnect(group, deadline):
                    return self._take_pending()
            if self._pending:
                self._pending = False
                return True
            sockets = {g.conn.pgconn.socket: g for g in self._groups if g.conn is not None}
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            ready, _, _ = select.select([self._rfd, *sockets], [], [], remaining)
            if not ready:
                return False
            if self._rfd in ready:
                self._clear_interrupts()
                return self._take_pending()
            for fd in ready:
                group = sockets[fd]
                try:
                    self._drain(group)
                except psycopg.Error:
                    self._reconnect(group, deadline)
        return False

    def _take_pending(self) -> bool:
        pending, self._pending = self._pending, False
        return pending

    def interrupt(self) -> None:
        """Makes a wait() in another thread return now (thread-safe)."""
        try:
            os.write(self._wfd, b"x")
        except (BlockingIOError, OSError):
            pass

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for group in self._groups:
            if group.conn is not None:
                group.conn.close()
                group.conn = None
        for fd in (self._rfd, self._wfd):
            try:
                os.close(fd)
            except OSError:  # pragma: no cover
                pass

    def __enter__(self) -> "Listener":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class FollowerThread(threading.Thread):
    """Runs one follower: catch up with every leader, wait for an
    announcement (or a prompt from this process, or `timeout`), repeat."""

    def __init__(self, follower: Follower, leaders: Dict[str, Application],
                 timeout: Optional[float], has_errored: threading.Event):
        super().__init__(daemon=True, name="follower " + follower.name)
        self.follower = follower
        self.leaders = leaders
        self.timeout = timeout
        self.has_errored = has_errored
        self.error: Optional[Exception] = None
        self.has_started = threading.Event()
        self.is_stopping = threading.Event()
        self._prompted = threading.Event()
        self.listener: Optional[Listener] = None

    def run(self) -> None:
        try:
            sources = [(app.recorder.datastore, app.recorder.application)
                       for app in self.leaders.values()
                       if isinstance(app.recorder, PgextApplicationRecorder)]
            # LISTEN before the first catch-up: nothing falls in between.
            self.listener = Listener(sources)
            self.has_started.set()
            timeout = self.timeout
            if len(sources) < len(self.leaders) and timeout is None:
                timeout = 1.0       # a leader that cannot announce: poll it
            while not self.is_stopping.is_set():
                self._prompted.clear()
                for leader_name in self.leaders:
                    self.follower.pull_and_process(leader_name)
                    if self.is_stopping.is_set():
                        return
                if not self._prompted.is_set():
                    self.listener.wait(timeout)
        except Exception as e:
            self.error = EventProcessingError(str(e))
            self.error.__cause__ = e
            self.has_errored.set()
        finally:
            self.has_started.set()
            if self.listener is not None:
                self.listener.close()

    def prompt(self) -> None:
        self._prompted.set()
        if self.listener is not None:
            self.listener.interrupt()

    def stop(self) -> None:
        self.is_stopping.set()
        self.prompt()


class ListenRunner(Runner, RecordingEventReceiver):
    """Runs a System: every follower (or those named in `followers`) in a
    thread of its own, woken by LISTEN on its leaders' channels and by the
    saves of leaders in this process.  `timeout` (seconds, None: never) is a
    safety net: a follower also catches up that often without an
    announcement (with eventsourcing.notify = off on the server, say).

    Processes that share the work run the same System with different
    `followers`; leaders may be written to by any process."""

    def __init__(self, system: System, env: Optional[Any] = None, *,
                 followers: Optional[Sequence[str]] = None, timeout: Optional[float] = 10.0):
        super().__init__(system=system, env=env)
        names = list(system.followers if followers is None else followers)
        unknown = [n for n in names if n not in system.followers]
        if unknown:
            raise ValueError("not followers in this system: %s" % ", ".join(unknown))
        self.running_followers = names
        self.timeout = timeout
        self.apps: Dict[str, Application] = {}
        self.threads: Dict[str, FollowerThread] = {}
        self.has_errored = threading.Event()
        for name in system.followers:
            self.apps[name] = system.follower_cls(name)(env=self.env)
        for name in system.leaders_only:
            self.apps[name] = system.leader_cls(name)(env=self.env)
        for name in system.singles:
            self.apps[name] = system.get_app_cls(name)(env=self.env)

    def start(self) -> None:
        super().start()
        for leader_name, follower_name in self.system.edges:
            leader = self.apps[leader_name]
            follower = self.apps[follower_name]
            assert isinstance(leader, Leader) and isinstance(follower, Follower)
            follower.follow(leader_name, leader.notification_log)
        for name in self.system.leaders:
            leader = self.apps[name]
            assert isinstance(leader, Leader)
            leader.lead(self)
        for name in self.running_followers:
            follower = self.apps[name]
            assert isinstance(follower, Follower)
            leaders = {n: self.apps[n] for n in self.system.follows[name]}
            thread = FollowerThread(follower, leaders, self.timeout, self.has_errored)
            self.threads[name] = thread
            thread.start()
        for thread in self.threads.values():
            thread.has_started.wait()
        if self.has_errored.is_set():
            self.reraise_thread_errors()

    def receive_recording_event(self, recording_event: Any) -> None:
        for follower_name in self.system.leads.get(recording_event.application_name, []):
            thread = self.threads.get(follower_name)
            if thread is not None:
                thread.prompt()

    def watch_for_errors(self, timeout: Optional[float] = None) -> bool:
        """Raises a follower's error as soon as one fails (within `timeout`)."""
        if self.has_errored.wait(timeout=timeout):
            self.reraise_thread_errors()
        return False

    def reraise_thread_errors(self) -> None:
        for thread in self.threads.values():
            if thread.error is not None:
                raise thread.error

    def stop(self) -> None:
        for thread in self.threads.values():
            thread.stop()
        for thread in self.threads.values():
            thread.join(timeout=30)
        for app in self.apps.values():
            app.close()
        self.apps.clear()

    def get(self, cls: Type[TApplication]) -> TApplication:
        app = self.apps[cls.name]
        assert isinstance(app, cls)
        return app
