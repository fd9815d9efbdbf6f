"""The infrastructure factory the library loads with
PERSISTENCE_MODULE=eventsourcing_pgext."""

from __future__ import annotations

import warnings
from typing import Optional

from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    InfrastructureFactory,
    ProcessRecorder,
)
from eventsourcing.utils import Environment, strtobool

from eventsourcing_pgext.datastore import Datastore
from eventsourcing_pgext.recorders import (
    PgextAggregateRecorder,
    PgextApplicationRecorder,
    PgextProcessRecorder,
    SnapshotRecorder,
)


class Factory(InfrastructureFactory):
    """Reads the same settings as the library's PostgreSQL module
    (eventsourcing.postgres): POSTGRES_DBNAME, POSTGRES_HOST, POSTGRES_PORT,
    POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_POOL_SIZE,
    POSTGRES_POOL_MAX_OVERFLOW, POSTGRES_POOL_TIMEOUT, POSTGRES_CONNECT_TIMEOUT,
    POSTGRES_CONN_MAX_AGE, POSTGRES_PRE_PING, POSTGRES_LOCK_TIMEOUT,
    POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT, POSTGRES_SCHEMA (the schema
    to install the extension in, if this factory installs it) and
    CREATE_TABLE; each may be prefixed with the application's name in upper
    case (DOGSCHOOL_POSTGRES_DBNAME), as the library's Environment does.

    Its own: PGEXT_COMPRESSION and PGEXT_ENCRYPTION (y/n) switch the
    extension's compression and encryption of the application's new states
    (unset: leave them as they are)."""

    POSTGRES_DBNAME = "POSTGRES_DBNAME"
    POSTGRES_HOST = "POSTGRES_HOST"
    POSTGRES_PORT = "POSTGRES_PORT"
    POSTGRES_USER = "POSTGRES_USER"
    POSTGRES_PASSWORD = "POSTGRES_PASSWORD"  # noqa: S105
    POSTGRES_CONNECT_TIMEOUT = "POSTGRES_CONNECT_TIMEOUT"
    POSTGRES_CONN_MAX_AGE = "POSTGRES_CONN_MAX_AGE"
    POSTGRES_PRE_PING = "POSTGRES_PRE_PING"
    POSTGRES_POOL_TIMEOUT = "POSTGRES_POOL_TIMEOUT"
    POSTGRES_LOCK_TIMEOUT = "POSTGRES_LOCK_TIMEOUT"
    POSTGRES_POOL_SIZE = "POSTGRES_POOL_SIZE"
    POSTGRES_POOL_MAX_OVERFLOW = "POSTGRES_POOL_MAX_OVERFLOW"
    POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT = "POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT"
    POSTGRES_SCHEMA = "POSTGRES_SCHEMA"
    CREATE_TABLE = "CREATE_TABLE"
    PGEXT_COMPRESSION = "PGEXT_COMPRESSION"
    PGEXT_ENCRYPTION = "PGEXT_ENCRYPTION"

    aggregate_recorder_class = PgextAggregateRecorder
    snapshot_recorder_class = SnapshotRecorder
    application_recorder_class = PgextApplicationRecorder
    process_recorder_class = PgextProcessRecorder

    def __init__(self, env: Environment):
        super().__init__(env)
        dbname = self.env.get(self.POSTGRES_DBNAME)
        if not dbname:
            msg = ("Postgres database name not found in environment "
                   f"with key '{self.POSTGRES_DBNAME}'")
            raise OSError(msg)
        self.datastore = Datastore(
            dbname=dbname,
            host=self.env.get(self.POSTGRES_HOST) or None,
            port=self.env.get(self.POSTGRES_PORT) or None,
            user=self.env.get(self.POSTGRES_USER) or None,
            password=self.env.get(self.POSTGRES_PASSWORD) or None,
            connect_timeout=self._number(self.POSTGRES_CONNECT_TIMEOUT, int, 5),
            idle_in_transaction_session_timeout=self._number(
                self.POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT, int, 5),
            lock_timeout=self._number(self.POSTGRES_LOCK_TIMEOUT, int, 0),
            pool_size=self._number(self.POSTGRES_POOL_SIZE, int, 5),
            max_overflow=self._number(self.POSTGRES_POOL_MAX_OVERFLOW, int, 10),
            pool_timeout=self._number(self.POSTGRES_POOL_TIMEOUT, float, 30.0),
            conn_max_age=self._number(self.POSTGRES_CONN_MAX_AGE, float, None) or None,
            pre_ping=strtobool(self.env.get(self.POSTGRES_PRE_PING) or "no"),
            schema=self.env.get(self.POSTGRES_SCHEMA) or "",
            application_name=("eventsourcing_pgext " + self.env.name)[:63],
        )
        self.compression = self._flag(self.PGEXT_COMPRESSION)
        self.encryption = self._flag(self.PGEXT_ENCRYPTION)

    def _number(self, key: str, kind: type, default: Optional[float]):
        value = self.env.get(key)
        if not value:
            return default
        try:
            return kind(value)
        except ValueError:
            msg = (f"Postgres environment value for key '{key}' is invalid. If set, "
                   f"{'an integer' if kind is int else 'a float'} or empty string is expected: '{value}'")
            raise OSError(msg) from None

    def _flag(self, key: str) -> Optional[bool]:
        value = self.env.get(key)
        if not value:
            return None
        try:
            return strtobool(value)
        except ValueError:
            raise OSError(f"Environment value for key '{key}' is invalid: '{value}' (y/n)") from None

    # -- names ------------------------------------------------------------------

    def application_name(self, purpose: str = "events") -> str:
        """The extension application of this library application's events
        (its name, e.g. "DogSchool"), or of another purpose ("DogSchool_snapshots")."""
        name = self.env.name or "stored"
        return name if purpose == "events" else f"{name}_{purpose}"

    def env_create_table(self) -> bool:
        return strtobool(self.env.get(self.CREATE_TABLE) or "yes")

    def _setup(self, recorder):
        if self.env_create_table():
            recorder.create_table()
            if self.compression is not None or self.encryption is not None:
                recorder.configure(compression=self.compression, encryption=self.encryption)
        if (self.encryption and (self.env.get(self.CIPHER_TOPIC) or self.env.get("CIPHER_KEY"))) or (
                self.compression and self.env.get(self.COMPRESSOR_TOPIC)):
            warnings.warn(
                "both the library's cipher/compressor and the extension's encryption/compression "
                "are on for application %r: states are processed twice, and the server cannot "
                "read them (es_state, folds); choose one" % recorder.application, stacklevel=3)
        return recorder

    # -- the library's interface -------------------------------------------------

    def aggregate_recorder(self, purpose: str = "events") -> AggregateRecorder:
        if purpose == "events":
            cls = self.aggregate_recorder_class
        else:
            cls = self.snapshot_recorder_class
        return self._setup(cls(self.datastore, self.application_name(purpose)))

    def application_recorder(self) -> ApplicationRecorder:
        return self._setup(self.application_recorder_class(self.datastore, self.application_name()))

    def process_recorder(self) -> ProcessRecorder:
        return self._setup(self.process_recorder_class(self.datastore, self.application_name()))

    def close(self) -> None:
        if hasattr(self, "datastore"):
            self.datastore.close()

    def __del__(self) -> None:
        self.close()
