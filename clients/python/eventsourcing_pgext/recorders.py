"""The library's recorders on the extension's SQL functions.

Library concept -> extension:

- an application's events (its application/process recorder, and the
  aggregate recorder of purpose "events") -> the extension application named
  as the library application (`env.name`, e.g. "DogSchool");
- an aggregate recorder of another purpose (the library asks for "snapshots")
  -> the extension application "<name>_<purpose>" (see SnapshotRecorder);
- StoredEvent (originator_id, originator_version, topic, state) -> es_event;
- Notification.id -> the extension's notification id;
- Tracking(application_name, notification_id) -> es_append's tracking form:
  upstream_application = the upstream library application's name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence
from uuid import UUID

import psycopg

from eventsourcing_pgext.datastore import BOOL_OID, BYTEA_OID, INT4_OID, INT8_OID, TEXT_OID, UUID_OID, param
from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    IntegrityError,
    Notification,
    ProcessRecorder,
    StoredEvent,
    Tracking,
)

MAX_INT4 = 2**31 - 1


@dataclass(frozen=True)
class Verification:
    """The result of es_verify: whether the aggregate's hash chain is intact,
    how many events were checked, and the first broken link if any."""

    ok: bool
    events: int
    originator_version: Optional[int]
    problem: Optional[str]
    detail: Optional[str]


@dataclass(frozen=True)
class LogProblem:
    """One problem es_verify_log found in an aggregate's chain or a seal."""

    kind: str
    originator_id: Optional[UUID]
    originator_version: Optional[int]
    notification_id: Optional[int]
    seal_id: Optional[int]
    problem: str
    detail: Optional[str]


@dataclass(frozen=True)
class Seal:
    """A seal of the log (es_seal): keep `digest` outside the database."""

    seal_id: int
    after_notification_id: int
    last_notification_id: int
    digest: bytes
    sealed_at: Any


class ExtensionRecorder:
    """What every recorder of one extension application shares: its name,
    the datastore, and the extension's own functions on that application."""

    def __init__(self, datastore: Any, application: str):
        self.datastore = datastore
        self.application = application

    def create_table(self) -> None:
        """Installs the extension if missing (and allowed) and creates the
        application if this role holds no privilege on it yet (the library's
        recorders create their tables; this is the same step)."""
        self.datastore.install_extension()
        self.datastore.create_application(self.application)

    # -- the extension's functions, reachable from Python ----------------------

    def verify(self, originator_id: UUID, expected_head: Optional[bytes] = None) -> Verification:
        """es_verify: recomputes the aggregate's hash chain in the server
        (needs the verify privilege)."""
        q = self.datastore.sql(
            "SELECT ok, events, originator_version, problem, detail FROM {s}.es_verify(%s, %s, %s)")
        row = self.datastore.run(lambda c: c.execute(q, (self.application, originator_id, expected_head)).fetchone())
        return Verification(*row)

    def verify_log(self) -> List[LogProblem]:
        """es_verify_log: every chain and seal of the application; [] when intact."""
        q = self.datastore.sql(
            "SELECT kind, originator_id, originator_version, notification_id, seal_id, problem, detail"
            " FROM {s}.es_verify_log(%s)")
        rows = self.datastore.run(lambda c: c.execute(q, (self.application,)).fetchall())
        return [LogProblem(*r) for r in rows]

    def head(self, originator_id: UUID) -> Optional[bytes]:
        """es_head: the hash of the aggregate's last event (keep it elsewhere)."""
        q = self.datastore.sql("SELECT {s}.es_head(%s, %s)")
        return self.datastore.run(lambda c: c.execute(q, (self.application, originator_id)).fetchone()[0])

    def seal(self) -> Seal:
        """es_seal: seals the log up to the highest readable id (needs seal)."""
        q = self.datastore.sql(
            "SELECT seal_id, after_notification_id, last_notification_id, digest, sealed_at"
            " FROM {s}.es_seal(%s)")
        return Seal(*self.datastore.run(lambda c: c.execute(q, (self.application,)).fetchone()))

    def state(self, originator_id: UUID, at_version: Optional[int] = None) -> Any:
        """es_state: the aggregate's state folded in the server (JSON states;
        see es_define_fold), as a Python object; None for no events."""
        q = self.datastore.sql("SELECT {s}.es_state(%s, %s, %s::int8)")
        return self.datastore.run(
            lambda c: c.execute(q, (self.application, originator_id, at_version)).fetchone()[0])

    def define_fold(self, topic: str, operations: Optional[List[Dict[str, Any]]]) -> None:
        """es_define_fold (admin): how es_state folds events of this topic."""
        from psycopg.types.json import Jsonb

        q = self.datastore.sql("SELECT {s}.es_define_fold(%s, %s, %s)")
        ops = None if operations is None else Jsonb(operations)
        self.datastore.run(lambda c: c.execute(q, (self.application, topic, ops)))

    def configure(self, *, compression: Optional[bool] = None, encryption: Optional[bool] = None) -> None:
        """es_configure (admin): compression and encryption of new states."""
        self.datastore.configure_application(self.application, compression, encryption)

    def channel(self) -> str:
        """es_channel: the NOTIFY channel on which new ids are announced."""
        q = self.datastore.sql("SELECT {s}.es_channel(%s)")
        return self.datastore.run(lambda c: c.execute(q, (self.application,)).fetchone()[0])


class PgextAggregateRecorder(ExtensionRecorder, AggregateRecorder):
    """Aggregate events in an extension application: versions of an
    aggregate must follow each other from 0 or 1 (as the library's
    aggregates number them)."""

    def __init__(self, datastore: Any, application: str):
        super().__init__(datastore, application)
        self._append_one = None
        self._append_many = None

    def insert_events(self, stored_events: List[StoredEvent], **kwargs: Any) -> Optional[Sequence[int]]:
        self._append(stored_events, kwargs.get("tracking"))
        return None

    # One statement: es_append is atomic on an autocommit connection.
    def _append(self, stored_events: List[StoredEvent], tracking: Optional[Tracking]) -> List[int]:
        ds = self.datastore
        app = self.application
        if tracking is None and len(stored_events) == 1:
            e = stored_events[0]
            stmt = ds.statement("SELECT {s}.es_append($1, $2, $3, $4, $5)",
                                (TEXT_OID, UUID_OID, INT8_OID, TEXT_OID, BYTEA_OID), ("int",))
            rows = ds.fetch(stmt, (param(app), param(e.originator_id), param(e.originator_version),
                                   param(e.topic), param(e.state)))
            return [rows[0][0]]
        if tracking is None and not stored_events:
            return []
        events = (
            "ARRAY(SELECT ROW(u.o, u.v, u.t, u.s)::{s}.es_event"
            " FROM unnest(%s::uuid[], %s::int8[], %s::text[], %b::bytea[])"
            " WITH ORDINALITY AS u(o, v, t, s, n) ORDER BY u.n)")
        columns = (
            [e.originator_id for e in stored_events],
            [e.originator_version for e in stored_events],
            [e.topic for e in stored_events],
            [e.state for e in stored_events],
        )
        if tracking is None:
            q = ds.sql("SELECT {s}.es_append(%s, " + events + ")")
            params = (app, *columns)
        else:
            q = ds.sql("SELECT {s}.es_append(%s, " + events + ", %s, %s)")
            params = (app, *columns, tracking.application_name, tracking.notification_id)
        return ds.run(lambda c: [r[0] for r in c.execute(q, params).fetchall()])

    def select_events(
        self,
        originator_id: UUID,
        *,
        gt: Optional[int] = None,
        lte: Optional[int] = None,
        desc: bool = False,
        limit: Optional[int] = None,
    ) -> List[StoredEvent]:
        if limit is not None and limit <= 0:
            return []
        stmt = self.datastore.statement(
            "SELECT originator_version, topic, state FROM {s}.es_events($1, $2, $3, $4, $5, $6)",
            (TEXT_OID, UUID_OID, INT8_OID, INT8_OID, BOOL_OID, INT4_OID), ("int", "text", "bytes"))
        params = (self.application, originator_id, gt, lte, desc,
                  None if limit is None else min(limit, MAX_INT4))
        rows = self.datastore.fetch(stmt, [param(p) for p in params])
        return [StoredEvent(originator_id, v, t, s) for v, t, s in rows]


class PgextApplicationRecorder(PgextAggregateRecorder, ApplicationRecorder):
    """Also the application's notification log: the extension's ids,
    gap-free and ordered without serializing writers."""

    def insert_events(self, stored_events: List[StoredEvent], **kwargs: Any) -> Optional[Sequence[int]]:
        return self._append(stored_events, kwargs.get("tracking"))

    def select_notifications(
        self,
        start: int,
        limit: int,
        stop: Optional[int] = None,
        topics: Sequence[str] = (),
    ) -> List[Notification]:
        if limit <= 0 or (stop is not None and stop < max(start, 1)):
            return []
        if topics:
            q = self.datastore.sql(
                "SELECT id, originator_id, originator_version, topic, state FROM"
                " {s}.es_select(%s, %s, %s, %s::int8, %s::text[])")
            params = (self.application, max(start, 1), min(limit, MAX_INT4), stop, list(topics))
            rows = self.datastore.run(lambda c: c.execute(q, params).fetchall())
        else:
            stmt = self.datastore.statement(
                "SELECT id, originator_id, originator_version, topic, state FROM"
                " {s}.es_select($1, $2, $3, $4)",
                (TEXT_OID, INT8_OID, INT4_OID, INT8_OID), ("int", "uuid", "int", "text", "bytes"))
            rows = self.datastore.fetch(stmt, [param(p) for p in (
                self.application, max(start, 1), min(limit, MAX_INT4), stop)])
        return [
            Notification(id=i, originator_id=o, originator_version=v, topic=t, state=s)
            for i, o, v, t, s in rows
        ]

    def max_notification_id(self) -> int:
        stmt = self.datastore.statement("SELECT {s}.es_max_notification_id($1)", (TEXT_OID,), ("int",))
        return self.datastore.fetch(stmt, (param(self.application),))[0][0] or 0

    def wait(self, after: int, timeout: float = 10.0) -> Optional[int]:
        """es_wait: blocks until ids above `after` can be read and returns
        the highest, or None after `timeout` seconds (no LISTEN needed:
        behind a transaction-pooling proxy, say).  Holds a pooled
        connection while it waits."""
        q = self.datastore.sql("SELECT {s}.es_wait(%s, %s, %s)")
        ms = max(0, min(int(timeout * 1000), MAX_INT4))
        return self.datastore.run(lambda c: c.execute(q, (self.application, after, ms)).fetchone()[0])

    def listen(self) -> Any:
        """A Listener on this application's announcements (see listen.py)."""
        from eventsourcing_pgext.listen import Listener

        return Listener([(self.datastore, self.application)])


class PgextProcessRecorder(PgextApplicationRecorder, ProcessRecorder):
    """Tracking through es_append's tracking form: the new events and the
    upstream position commit together, or neither.  The extension keeps one
    position per upstream application, the highest; a position not above it
    is refused (IntegrityError), as a duplicate is by the library."""

    def max_tracking_id(self, application_name: str) -> int:
        stmt = self.datastore.statement("SELECT {s}.es_tracking_position($1, $2)", (TEXT_OID, TEXT_OID), ("int",))
        return self.datastore.fetch(stmt, (param(self.application), param(application_name)))[0][0] or 0

    def has_tracking_id(self, application_name: str, notification_id: int) -> bool:
        # Positions are recorded in increasing order only, so every
        # notification up to the recorded one has been dealt with.
        return notification_id <= self.max_tracking_id(application_name)


class SnapshotRecorder(PgextAggregateRecorder):
    """An aggregate recorder whose versions need not follow each other: the
    library takes snapshots at any version (5, then 12, ...), while an
    extension application numbers an aggregate's events 1, 2, 3.

    So the extension application "<name>_snapshots" holds, for each
    aggregate, its snapshots in the order taken, numbered 1, 2, 3 by the
    extension, and each one's library version is kept in its topic:
    "<topic>@<version>".  Versions must increase: a snapshot at or below
    the aggregate's latest is refused with IntegrityError (the library
    refuses one at the same version; an older one would be useless, since
    the repository always asks for the latest at or below a version).
    Concurrent snapshots of one aggregate are serialized by the extension's
    version check and retried here."""

    SEPARATOR = "@"
    PAGE = 16
    RETRIES = 20

    @classmethod
    def encode_topic(cls, topic: str, version: int) -> str:
        return "%s%s%d" % (topic, cls.SEPARATOR, version)

    @classmethod
    def decode_topic(cls, stored_topic: str) -> tuple:
        topic, _, version = stored_topic.rpartition(cls.SEPARATOR)
        return topic, int(version)

    def _latest(self, originator_id: UUID) -> tuple:
        """(extension version, library version) of the latest snapshot, or (0, None)."""
        q = self.datastore.sql(
            "SELECT originator_version, topic FROM {s}.es_events(%s, %s, descending => true, max_count => 1)")
        row = self.datastore.run(lambda c: c.execute(q, (self.application, originator_id)).fetchone())
        if row is None:
            return 0, None
        return row[0], self.decode_topic(row[1])[1]

    def insert_events(self, stored_events: List[StoredEvent], **kwargs: Any) -> Optional[Sequence[int]]:
        if not stored_events:
            return None
        by_aggregate: Dict[UUID, List[StoredEvent]] = {}
        for e in stored_events:
            by_aggregate.setdefault(e.originator_id, []).append(e)
        for originator_id, events in by_aggregate.items():
            versions = [e.originator_version for e in events]
            if any(b <= a for a, b in zip(versions, versions[1:])):
                raise IntegrityError(
                    "versions of aggregate %s must increase within one call: %s" % (originator_id, versions))
        for attempt in range(self.RETRIES):
            rows: List[StoredEvent] = []
            for originator_id, events in by_aggregate.items():
                seq, latest = self._latest(originator_id)
                if latest is not None and events[0].originator_version <= latest:
                    raise IntegrityError(
                        "aggregate %s in application %r has a snapshot at version %d already; "
                        "a new one must be above it, not at %d"
                        % (originator_id, self.application, latest, events[0].originator_version))
                for i, e in enumerate(events):
                    rows.append(StoredEvent(originator_id, seq + 1 + i,
                                            self.encode_topic(e.topic, e.originator_version), e.state))
            try:
                self._append(rows, None)
                return None
            except IntegrityError:
                if attempt == self.RETRIES - 1:
                    raise
                # another writer took the next number: read again, retry
        return None

    def select_events(
        self,
        originator_id: UUID,
        *,
        gt: Optional[int] = None,
        lte: Optional[int] = None,
        desc: bool = False,
        limit: Optional[int] = None,
    ) -> List[StoredEvent]:
        if limit is not None and limit <= 0:
            return []
        # Library versions increase with the extension's, so a descending
        # read stops at the first page that goes below `gt`.
        q = self.datastore.sql(
            "SELECT originator_version, topic, state FROM"
            " {s}.es_events(%s, %s, lte => %s::int8, descending => true, max_count => %s)")
        out: List[StoredEvent] = []
        below: Optional[int] = None        # extension version to read below
        done = False
        while not done:
            page = self.PAGE if desc and limit is not None else 1000
            params = (self.application, originator_id,
                      None if below is None else below - 1, page)
            rows = self.datastore.run(lambda c: c.execute(q, params).fetchall())
            for seq, stored_topic, state in rows:
                topic, version = self.decode_topic(stored_topic)
                if gt is not None and version <= gt:
                    done = True
                    break
                if lte is None or version <= lte:
                    out.append(StoredEvent(originator_id, version, topic, state))
                    if desc and limit is not None and len(out) >= limit:
                        done = True
                        break
            if len(rows) < page or not rows:
                done = True
            else:
                below = rows[-1][0]
        if not desc:
            out.reverse()
            if limit is not None:
                out = out[:limit]
        return out
