"""Connections to a database that has the eventsourcing extension: a small
thread-safe pool of autocommit psycopg 3 connections, the mapping of psycopg's
errors onto the library's, and setting the extension and its applications up.

Every recorder call is one SQL statement on an autocommit connection: the
extension's functions are atomic by themselves, so there is no BEGIN/COMMIT
round trip and no table lock.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from contextlib import contextmanager
from typing import Any, Callable, Deque, Dict, Iterator, List, Optional, Sequence, Set, Tuple, TypeVar
from uuid import UUID

import psycopg
import psycopg.errors
from psycopg import sql

from eventsourcing.persistence import (
    DatabaseError,
    DataError,
    IntegrityError,
    InterfaceError,
    InternalError,
    NotSupportedError,
    OperationalError,
    PersistenceError,
    ProgrammingError,
)

T = TypeVar("T")

EXTENSION = "eventsourcing"


class PoolTimeoutError(OperationalError, TimeoutError):
    """No connection became free within the pool's timeout."""


def translate_error(e: psycopg.Error) -> PersistenceError:
    """The library's exception for a psycopg error, as its own PostgreSQL
    module maps them (DB-API classes by SQLSTATE class: 23 integrity, 22
    data, 42 programming, 08/53/55/57 operational, ...).  The SQLSTATE is
    kept as the attribute `sqlstate`; the psycopg error is the cause."""
    for psycopg_cls, library_cls in (
        (psycopg.InterfaceError, InterfaceError),
        (psycopg.OperationalError, OperationalError),
        (psycopg.DataError, DataError),
        (psycopg.IntegrityError, IntegrityError),
        (psycopg.InternalError, InternalError),
        (psycopg.ProgrammingError, ProgrammingError),
        (psycopg.NotSupportedError, NotSupportedError),
        (psycopg.DatabaseError, DatabaseError),
    ):
        if isinstance(e, psycopg_cls):
            break
    else:
        library_cls = PersistenceError
    err = library_cls(str(e))
    err.sqlstate = getattr(e, "sqlstate", None)  # type: ignore[attr-defined]
    err.__cause__ = e
    return err


class _PooledConnection:
    __slots__ = ("conn", "created", "prepared")

    def __init__(self, conn: psycopg.Connection[Any]):
        self.conn = conn
        self.created = time.monotonic()
        self.prepared: Set[bytes] = set()      # names of Statements prepared on it


# Type OIDs of the parameters and binary decoders of the result columns of
# Statements (the few types the recorders' hot paths send and receive).
UUID_OID, INT8_OID, INT4_OID, TEXT_OID, BYTEA_OID, BOOL_OID = 2950, 20, 23, 25, 17, 16


def _int(b: Optional[bytes]) -> Optional[int]:
    return None if b is None else int.from_bytes(b, "big", signed=True)


def _uuid(b: Optional[bytes]) -> Optional[UUID]:
    return None if b is None else UUID(bytes=b)


def _text(b: Optional[bytes]) -> Optional[str]:
    return None if b is None else b.decode("utf-8")


def _bytes(b: Optional[bytes]) -> Optional[bytes]:
    return b


DECODERS = {"int": _int, "uuid": _uuid, "text": _text, "bytes": _bytes}


class Statement:
    """A statement of the recorders' hot paths, run without psycopg's
    cursor machinery: prepared once per connection, then one blocking
    PQexecPrepared (the GIL is released for the whole round trip, once),
    parameters in text form (bytea in binary), results in binary form,
    decoded by `columns` ("int", "uuid", "text", "bytes").

    psycopg is pure Python where no C build of it is installed (Debian
    ships none), and its cursor costs about 0.3 ms of CPU per statement
    there; a thread also gives up and takes back the GIL at every libpq
    call it makes, which, with many threads, costs more than the call."""

    _names = itertools.count(1)

    def __init__(self, query: str, param_types: Sequence[int], columns: Sequence[str]):
        self.name = b"es_pgext_%d" % next(self._names)
        self.query = query.encode("utf-8")
        self.param_types = list(param_types)
        self.param_formats = [1 if t == BYTEA_OID else 0 for t in param_types]
        self.decoders = [DECODERS[c] for c in columns]


def param(value: Any) -> Optional[bytes]:
    """A parameter of a Statement in text form (bytes pass as they are:
    bytea parameters are sent in binary)."""
    if value is None:
        return None
    if isinstance(value, bytes):
        return value
    if isinstance(value, bool):
        return b"t" if value else b"f"
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    return str(value).encode("utf-8")


class ConnectionPool:
    """At most `pool_size + max_overflow` connections; `pool_size` of them
    are kept open when returned, the others closed.  A caller waits at most
    `pool_timeout` seconds for one.  Connections older than `max_age`
    seconds are closed when returned; with `pre_ping` an idle connection is
    checked with an empty query before it is handed out."""

    def __init__(
        self,
        connect: Callable[[], psycopg.Connection[Any]],
        *,
        pool_size: int = 5,
        max_overflow: int = 10,
        pool_timeout: float = 30.0,
        max_age: Optional[float] = None,
        pre_ping: bool = False,
    ):
        self._connect = connect
        self.pool_size = max(0, pool_size)
        self.max_overflow = max(0, max_overflow)
        self.pool_timeout = pool_timeout
        self.max_age = max_age
        self.pre_ping = pre_ping
        self._idle: Deque[_PooledConnection] = deque()
        self._open = 0
        self._cond = threading.Condition()
        self._closed = False

    @property
    def max_size(self) -> int:
        return max(1, self.pool_size + self.max_overflow)

    def getconn(self) -> _PooledConnection:
        deadline = time.monotonic() + self.pool_timeout
        with self._cond:
            while True:
                if self._closed:
                    raise InterfaceError("connection pool is closed")
                if self._idle:
                    pc = self._idle.pop()       # the most recently used: warm caches
                    break
                if self._open < self.max_size:
                    self._open += 1
                    pc = None
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._cond.wait(remaining):
                    if not self._idle and self._open >= self.max_size:
                        raise PoolTimeoutError(
                            "no database connection became free within %.1f s "
                            "(POSTGRES_POOL_SIZE + POSTGRES_POOL_MAX_OVERFLOW = %d)"
                            % (self.pool_timeout, self.max_size))
        if pc is None:
            try:
                return _PooledConnection(self._connect())
            except BaseException:
                with self._cond:
                    self._open -= 1
                    self._cond.notify()
                raise
        if self.pre_ping:
            try:
                pc.conn.execute("SELECT 1")
            except psycopg.Error:
                self.discard(pc)
                return self.getconn()
        return pc

    def putconn(self, pc: _PooledConnection) -> None:
        conn = pc.conn
        reusable = (
            not conn.closed
            and not conn.broken
            and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            and (self.max_age is None or time.monotonic() - pc.created < self.max_age)
        )
        with self._cond:
            if reusable and not self._closed and len(self._idle) < self.pool_size:
                self._idle.append(pc)
                self._cond.notify()
                return
            self._open -= 1
            self._cond.notify()
        conn.close()

    def discard(self, pc: _PooledConnection) -> None:
        with self._cond:
            self._open -= 1
            self._cond.notify()
        try:
            pc.conn.close()
        except Exception:  # pragma: no cover
            pass

    def close(self) -> None:
        with self._cond:
            self._closed = True
            idle, self._idle = list(self._idle), deque()
            self._cond.notify_all()
        for pc in idle:
            pc.conn.close()


class Datastore:
    """Connection settings, a pool, and the schema of the extension's
    functions (every call is schema-qualified, as the extension's README
    advises for databases whose search_path is not trusted)."""

    RETRY_ATTEMPTS = 10
    RETRY_WAIT = 0.2

    def __init__(
        self,
        *,
        dbname: str,
        host: Optional[str] = None,
        port: Optional[str] = None,
        user: Optional[str] = None,
        password: Optional[str] = None,
        connect_timeout: int = 5,
        idle_in_transaction_session_timeout: int = 5,
        lock_timeout: int = 0,
        pool_size: int = 5,
        max_overflow: int = 10,
        pool_timeout: float = 30.0,
        conn_max_age: Optional[float] = None,
        pre_ping: bool = False,
        schema: str = "",
        application_name: str = "eventsourcing_pgext",
    ):
        self.conninfo: Dict[str, Any] = {"dbname": dbname}
        for key, value in (("host", host), ("port", port), ("user", user), ("password", password)):
            if value:
                self.conninfo[key] = value
        self.conninfo["connect_timeout"] = connect_timeout
        self.conninfo["client_encoding"] = "UTF8"      # Statements decode text as UTF-8
        self.conninfo["application_name"] = application_name
        self.idle_in_transaction_session_timeout = idle_in_transaction_session_timeout
        self.lock_timeout = lock_timeout
        self.schema = schema.strip()
        self.pool = ConnectionPool(
            self.connect,
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_timeout=pool_timeout,
            max_age=conn_max_age,
            pre_ping=pre_ping,
        )
        self._setup_lock = threading.Lock()
        self._extension_schema: Optional[str] = None
        self._sql_cache: Dict[str, str] = {}
        self._statements: Dict[str, Statement] = {}

    # -- connections --------------------------------------------------------

    def connect(self) -> psycopg.Connection[Any]:
        """A new autocommit connection (not from the pool: for LISTEN)."""
        try:
            conn = psycopg.connect(autocommit=True, **self.conninfo)
        except psycopg.Error as e:
            raise translate_error(e) from e
        settings = []
        if self.idle_in_transaction_session_timeout:
            settings.append("SET idle_in_transaction_session_timeout = '%ds'"
                            % int(self.idle_in_transaction_session_timeout))
        if self.lock_timeout:
            # The only locks an append waits for are its aggregates' (another
            # writer of the same aggregate is committing).
            settings.append("SET lock_timeout = '%ds'" % int(self.lock_timeout))
        for statement in settings:
            conn.execute(statement)
        return conn

    @property
    def key(self) -> Tuple[Any, ...]:
        """What identifies the database (and role) connected to."""
        return tuple(sorted((k, v) for k, v in self.conninfo.items() if k != "application_name"))

    def run(self, func: Callable[[psycopg.Connection[Any]], T], *, retry: bool = True) -> T:
        """Calls func with a pooled connection.  Errors become the library's;
        when the connection turns out to be broken (the server restarted, the
        backend was terminated, the network dropped), the call is retried on
        a new connection, as the library's recorders retry."""
        return self._run(lambda pc: func(pc.conn), retry=retry)

    def fetch(self, statement: Statement, params: Sequence[Optional[bytes]]) -> List[Tuple[Any, ...]]:
        """The rows of a Statement (see there), with run()'s errors and retries."""
        return self._run(lambda pc: self._execute(pc, statement, params))

    @staticmethod
    def _execute(pc: _PooledConnection, statement: Statement,
                 params: Sequence[Optional[bytes]]) -> List[Tuple[Any, ...]]:
        pgconn = pc.conn.pgconn
        if statement.name not in pc.prepared:
            Datastore._check(pgconn, pgconn.prepare(statement.name, statement.query, statement.param_types))
            pc.prepared.add(statement.name)
        res = pgconn.exec_prepared(statement.name, params, statement.param_formats, 1)
        if (res.status == psycopg.pq.ExecStatus.FATAL_ERROR
                and res.error_field(psycopg.pq.DiagnosticField.SQLSTATE) == b"26000"):
            # The session's prepared statements were dropped (DISCARD ALL or
            # DEALLOCATE ALL through datastore.connection()): learn which
            # the session has now, and prepare this one again.
            res.clear()
            names = pgconn.exec_params(
                b"SELECT name FROM pg_catalog.pg_prepared_statements WHERE name LIKE 'es\\_pgext\\_%'", None)
            Datastore._check(pgconn, names)
            pc.prepared = {names.get_value(r, 0) for r in range(names.ntuples)}
            names.clear()
            Datastore._check(pgconn, pgconn.prepare(statement.name, statement.query, statement.param_types))
            pc.prepared.add(statement.name)
            res = pgconn.exec_prepared(statement.name, params, statement.param_formats, 1)
        try:
            Datastore._check(pgconn, res)
            get = res.get_value
            decoders = list(enumerate(statement.decoders))
            return [tuple([d(get(r, c)) for c, d in decoders]) for r in range(res.ntuples)]
        finally:
            res.clear()

    @staticmethod
    def _check(pgconn: Any, res: Any) -> None:
        """Raises the psycopg error of a failed result (its class by SQLSTATE,
        as psycopg's own cursors raise them); OperationalError when the
        connection was lost."""
        if res.status in (psycopg.pq.ExecStatus.TUPLES_OK, psycopg.pq.ExecStatus.COMMAND_OK):
            return
        if pgconn.status == psycopg.pq.ConnStatus.BAD:
            res.clear()
            raise psycopg.OperationalError(
                "the connection was lost: %s" % pgconn.error_message.decode("utf-8", "replace").strip())
        try:
            raise psycopg.errors.error_from_result(res, encoding="utf-8")
        finally:
            res.clear()

    def _run(self, func: Callable[[_PooledConnection], T], *, retry: bool = True) -> T:
        attempts = 0
        while True:
            pc = self.pool.getconn()
            try:
                result = func(pc)
            except psycopg.Error as e:
                broken = pc.conn.broken or pc.conn.closed
                if broken:
                    self.pool.discard(pc)
                else:
                    self.pool.putconn(pc)
                attempts += 1
                if (retry and broken and attempts < self.RETRY_ATTEMPTS
                        and isinstance(e, (psycopg.OperationalError, psycopg.InterfaceError))):
                    if attempts > 1:
                        time.sleep(self.RETRY_WAIT)
                    continue
                raise translate_error(e) from e
            except BaseException:
                self.pool.discard(pc)
                raise
            else:
                self.pool.putconn(pc)
                return result

    def close(self) -> None:
        self.pool.close()

    # -- the extension --------------------------------------------------------

    @property
    def extension_schema(self) -> str:
        if self._extension_schema is None:
            self._extension_schema = self.run(self._find_extension_schema)
            if self._extension_schema is None:
                dbname = self.conninfo.get("dbname")
                raise ProgrammingError(
                    "the eventsourcing extension is not installed in database %r: "
                    "a superuser runs CREATE EXTENSION eventsourcing there (and "
                    "shared_preload_libraries = 'eventsourcing' in postgresql.conf), "
                    "or set CREATE_TABLE=y and connect as one once" % dbname)
        return self._extension_schema

    @staticmethod
    def _find_extension_schema(conn: psycopg.Connection[Any]) -> Optional[str]:
        row = conn.execute(
            "SELECT n.nspname FROM pg_catalog.pg_extension e"
            " JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace"
            " WHERE e.extname = %s", (EXTENSION,)).fetchone()
        return row[0] if row else None

    def sql(self, template: str) -> str:
        """The statement with {s} replaced by the extension's (quoted)
        schema, as a plain string: psycopg caches the parsing of a string
        query, where a sql.Composed would be rendered at every call."""
        query = self._sql_cache.get(template)
        if query is None:
            schema = '"%s"' % self.extension_schema.replace('"', '""')
            query = template.replace("{s}", schema)
            self._sql_cache[template] = query
        return query

    def statement(self, template: str, param_types: Sequence[int], columns: Sequence[str]) -> Statement:
        """The Statement of a template ({s}: the extension's schema; $1, $2:
        parameters), made once."""
        stmt = self._statements.get(template)
        if stmt is None:
            stmt = Statement(self.sql(template), param_types, columns)
            self._statements[template] = stmt
        return stmt

    def install_extension(self) -> None:
        """CREATE EXTENSION eventsourcing if it is missing and this role may;
        otherwise a ProgrammingError that says who must."""
        with self._setup_lock:
            if self._extension_schema is not None:
                return

            def install(conn: psycopg.Connection[Any]) -> Optional[str]:
                schema = self._find_extension_schema(conn)
                if schema is not None:
                    return schema
                statement = sql.SQL("CREATE EXTENSION IF NOT EXISTS eventsourcing")
                if self.schema:
                    statement += sql.SQL(" SCHEMA {}").format(sql.Identifier(self.schema))
                try:
                    conn.execute(statement)
                except psycopg.errors.InsufficientPrivilege as e:
                    raise ProgrammingError(
                        "the eventsourcing extension is not installed in database %r and "
                        "role %r may not install it: a superuser runs CREATE EXTENSION "
                        "eventsourcing there: %s"
                        % (self.conninfo.get("dbname"), conn.info.user, e)) from e
                except (psycopg.errors.UniqueViolation, psycopg.errors.DuplicateObject):
                    pass        # another process created it at the same moment
                return self._find_extension_schema(conn)

            self._extension_schema = self.run(install)

    def create_application(self, name: str) -> None:
        """es_create_application(name) unless this role already holds a
        privilege on it (creating needs the 'create' privilege)."""
        held = self.sql("SELECT {s}.es_has_privilege(%s, 'read') OR {s}.es_has_privilege(%s, 'append')")
        create = self.sql("SELECT {s}.es_create_application(%s)")

        def ensure(conn: psycopg.Connection[Any]) -> None:
            if conn.execute(held, (name, name)).fetchone()[0]:
                return
            try:
                conn.execute(create, (name,))
            except psycopg.errors.UniqueViolation:
                pass            # created by another process at the same moment
            except psycopg.errors.InsufficientPrivilege as e:
                raise ProgrammingError(
                    "application %r does not exist (or role %r holds no privilege on it) "
                    "and the role may not create applications: the extension's owner "
                    "grants it with es_grant(NULL, role, 'create'), or an administrator "
                    "creates the application and grants read, append and track on it: %s"
                    % (name, conn.info.user, e)) from e

        self.run(ensure)

    def configure_application(self, name: str, compression: Optional[bool],
                              encryption: Optional[bool]) -> None:
        """es_configure(name, compression, encryption) when they differ from
        the application's settings (changing them needs the admin privilege)."""
        if compression is None and encryption is None:
            return
        status = self.sql("SELECT compression, encryption FROM {s}.es_status WHERE application = %s")
        configure = self.sql("SELECT {s}.es_configure(%s, compression => %s, encryption => %s)")

        def ensure(conn: psycopg.Connection[Any]) -> None:
            row = conn.execute(status, (name,)).fetchone()
            if row is not None and (compression is None or row[0] == compression) \
                    and (encryption is None or row[1] == encryption):
                return
            conn.execute(configure, (name, compression, encryption))

        self.run(ensure)

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection for a caller's own SQL (errors untranslated)."""
        pc = self.pool.getconn()
        try:
            yield pc.conn
        except BaseException:
            if pc.conn.broken or pc.conn.closed:
                self.pool.discard(pc)
            else:
                if pc.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    pc.conn.rollback()
                self.pool.putconn(pc)
            raise
        else:
            if pc.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                pc.conn.rollback()
            self.pool.putconn(pc)
