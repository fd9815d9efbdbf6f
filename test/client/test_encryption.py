#!/usr/bin/python3
"""The DogSchool of the Python eventsourcing library with its states encrypted
(and compressed) by the eventsourcing extension, driven through psycopg 3 by
an ordinary role.

Run against a cluster that has the extension installed and preloaded, and a
master key loaded (eventsourcing.key_command; test/scripts/cluster.sh sets one
for the project's private clusters):

    ES_TEST_DSN="host=/path/to/socket port=54325 user=postgres dbname=postgres" \\
        /usr/bin/python3 test/client/test_encryption.py -v

The module creates (and afterwards drops) its own database, es_encryption, and
two roles named with a random suffix: es_enc_owner_<hex> (LOGIN, no
superuser; given the database-wide create privilege, it creates each test's
application, so it is its admin, and configures it with
es_configure(app, compression => true, encryption => true)) and
es_enc_reader_<hex> (read only).  Application names carry a random suffix too,
so that a rerun never meets an earlier run's applications.

What it checks:

(a) the states read back through es_select, es_events and (folded) es_state
    are exactly what was sent: bytes with non-ASCII text, backslashes, quotes
    and newlines inside JSON strings;
(b) es_select_stored shows stored_form 1, the header (version 1, flag
    "encrypted", the plain length), a fresh nonce per state, and neither the
    plaintext nor a dog's name (nor a zlib stream of it);
(c) the Python library's own AESCipher (eventsourcing.cipher, constructed from
    an Environment as the library's infrastructure factory does, with a fresh
    AESCipher.create_key(32)) cannot decrypt the stored bytes, whichever way
    they are cut; it does round-trip its own ciphertexts, also through the
    encrypting application (client-side encryption on top stays possible);
(d) es_forget by the admin: the aggregate's events stay (ids, versions,
    hashes, ciphertexts) with state NULL, its chain verifies, its snapshots
    are gone, another dog is untouched, and a new event for it is refused with
    55000 and writes nothing;
(e) a reader with only 'read' reads the plaintext, and es_forget, es_configure,
    es_append and es_rewrap_keys refuse it with 42501;

and two ways a backend's cache of data keys could betray it: a client that
retries, in the same session, an append refused after it made a new dog's
data key must record a key that every session reads (as of this writing it
reuses the rolled-back key it cached: the events read back only in that
session, 22P03 elsewhere); an append that waited for a concurrent es_forget of
its aggregate must be refused with 55000.

The library's source is taken from an installed `eventsourcing` package if
there is one, else from ../shared/peers/eventsourcing beside the checkout (or
ES_PEERS_DIR); its cipher imports `Crypto`, which Debian's python3-pycryptodome
names `Cryptodome`: the test aliases the module names when `Crypto` is missing.
"""

import dataclasses
import importlib
import json
import os
import sys
import threading
import time
import unittest
import uuid
import zlib
from typing import Dict, List, Optional, Type

import psycopg
import psycopg.errors
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import namedtuple_row
from psycopg.types.composite import CompositeInfo, register_composite

TEST_DB = "es_encryption"
ROLE_PREFIX = "es_enc_"
RUN = uuid.uuid4().hex[:10]
OWNER = "%sowner_%s" % (ROLE_PREFIX, RUN)
READER = "%sreader_%s" % (ROLE_PREFIX, RUN)

HERE = os.path.dirname(os.path.abspath(__file__))
PEERS_DIR = os.environ.get("ES_PEERS_DIR") or os.path.normpath(
    os.path.join(HERE, "..", "..", "..", "shared", "peers", "eventsourcing"))

# The stored form (src/codec.c): version, flags, plain length, nonce, payload, tag.
FORM_VERSION = 1
FLAG_COMPRESSED, FLAG_ENCRYPTED = 1, 2
HEADER_PLAIN, NONCE_LEN, TAG_LEN = 6, 12, 16

# Names and tricks with what JSON escapes or keeps as UTF-8 bytes.
FIDO = "Fïdo \"Zanzibar\" O'Brien\\the first\nMüller ☃ 🐕"
MILLIE = "Millie Quokkafeld \\\\server\\share\tdéjà vu 犬"
TRICKS = ["roll over\\n (a backslash and an n)", "fetch\nball\r\n", "play dead 死んだふり",
          "sit \u2028 stay \u00a0 nbsp", "\\\\\\\"quoted\\\"", "€" * 3]
# Long and repetitive: compressed, then encrypted (flags 3).
LONG_TRICK = "sit, stay, good dog Ünïcode! " * 60


# ---------------------------------------------------------------------------
# Domain model: the DogSchool of test_dogschool.py (its approach, not its
# module: its mapper escapes non-ASCII, and this test wants UTF-8 bytes)
# ---------------------------------------------------------------------------

_TOPICS: Dict[str, Type["DomainEvent"]] = {}


@dataclasses.dataclass(frozen=True)
class DomainEvent:
    originator_id: uuid.UUID
    originator_version: int

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _TOPICS[cls.topic()] = cls

    @classmethod
    def topic(cls) -> str:
        return "dogschool:" + cls.__qualname__

    def mutate(self, aggregate) -> None:
        raise NotImplementedError

    def state(self) -> bytes:
        """The mapper: the event's attributes as JSON, UTF-8 (not ASCII-escaped)."""
        attrs = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                 if f.name not in ("originator_id", "originator_version")}
        return json.dumps(attrs, sort_keys=True, ensure_ascii=False).encode("utf-8")

    @staticmethod
    def from_stored(originator_id, originator_version, topic, state) -> "DomainEvent":
        return _TOPICS[topic](originator_id=originator_id, originator_version=originator_version,
                              **json.loads(bytes(state).decode("utf-8")))


class Aggregate:
    def __init__(self, id: uuid.UUID):
        self.id = id
        self.version = 0
        self._pending: List[DomainEvent] = []

    def trigger_event(self, event_class, **kwargs) -> None:
        event = event_class(originator_id=self.id, originator_version=self.version + 1, **kwargs)
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


FOLDS = {
    Dog.Registered.topic(): [{"op": "set", "path": "name", "from": "name"},
                             {"op": "set", "path": "tricks", "value": []}],
    Dog.TrickAdded.topic(): [{"op": "append", "path": "tricks", "from": "trick"}],
}


def connect(dsn: str, role: Optional[str] = None) -> psycopg.Connection:
    """An autocommit connection that can send es_event values; as `role`
    (logged in as it, or a superuser session that becomes it where the
    server does not let the role log in without a password)."""
    if role is not None:
        params = conninfo_to_dict(dsn)
        params["user"] = role
        params.pop("password", None)
        try:
            conn = psycopg.connect(make_conninfo(**params), autocommit=True)
        except psycopg.OperationalError:
            conn = psycopg.connect(dsn, autocommit=True)
            conn.execute(sql.SQL("SET SESSION AUTHORIZATION {}").format(sql.Identifier(role)))
        user, is_super = conn.execute(
            "SELECT current_user, current_setting('is_superuser')").fetchone()
        if (user, is_super) != (role, "off"):
            conn.close()
            raise RuntimeError("expected to be the ordinary role %s, am %s (superuser %s)"
                               % (role, user, is_super))
    else:
        conn = psycopg.connect(dsn, autocommit=True)
    register_composite(CompositeInfo.fetch(conn, "es_event"), conn)
    return conn


class DogSchool:
    """The application: created (and so administered) by the connection's
    role, configured to compress and encrypt, with folds for es_state."""

    def __init__(self, conn: psycopg.Connection, name: str, encrypt: bool = True):
        self.conn = conn
        self.name = name
        conn.execute("SELECT es_create_application(%s)", (name,))
        if encrypt:
            conn.execute("SELECT es_configure(%s, compression => true, encryption => true)",
                         (name,))
        for topic, ops in FOLDS.items():
            conn.execute("SELECT es_define_fold(%s, %s, %s::jsonb)", (name, topic, json.dumps(ops)))
        self.sent: Dict[tuple, bytes] = {}     # (dog id, version) -> the state bytes sent

    def save(self, *aggregates: Aggregate) -> List[int]:
        events = [e for a in aggregates for e in a.collect_events()]
        EsEvent = self.conn.adapters.types["es_event"].python_type
        rows = [EsEvent(e.originator_id, e.originator_version, e.topic(), e.state())
                for e in events]
        with self.conn.transaction():
            ids = [r[0] for r in self.conn.execute(
                "SELECT * FROM es_append(%s, %s::es_event[])", (self.name, rows)).fetchall()]
        for e in events:
            self.sent[(e.originator_id, e.originator_version)] = e.state()
        return ids

    def get(self, dog_id: uuid.UUID) -> Dog:
        rows = self.conn.execute(
            "SELECT originator_id, originator_version, topic, state FROM es_events(%s, %s)",
            (self.name, dog_id)).fetchall()
        if not rows:
            raise KeyError(dog_id)
        dog = Dog(dog_id)
        for row in rows:
            dog.apply(DomainEvent.from_stored(*row))
        return dog

    def register_dog(self, name: str) -> uuid.UUID:
        dog = Dog.register(name)
        self.save(dog)
        return dog.id

    def add_trick(self, dog_id: uuid.UUID, trick: str) -> None:
        with self.conn.transaction():
            dog = self.get(dog_id)
            dog.add_trick(trick)
            self.save(dog)

    def select(self, start: int = 1, limit: int = 1000):
        with self.conn.cursor(row_factory=namedtuple_row) as cur:
            return cur.execute("SELECT * FROM es_select(%s, %s, %s)",
                               (self.name, start, limit)).fetchall()

    def select_stored(self, start: int = 1, limit: int = 1000):
        with self.conn.cursor(row_factory=namedtuple_row) as cur:
            return cur.execute("SELECT * FROM es_select_stored(%s, %s, %s)",
                               (self.name, start, limit)).fetchall()

    def state(self, dog_id: uuid.UUID):
        return self.conn.execute("SELECT es_state(%s, %s)", (self.name, dog_id)).fetchone()[0]

    def max_id(self) -> Optional[int]:
        return self.conn.execute("SELECT es_max_notification_id(%s)", (self.name,)).fetchone()[0]


# ---------------------------------------------------------------------------
# The Python library's cipher
# ---------------------------------------------------------------------------

def import_library_cipher():
    """(AESCipher, Environment, resolve_topic) of the eventsourcing library, or
    a reason why not.  Prefers an installed library, else the peers' copy."""
    def alias_cryptodome():
        try:
            importlib.import_module("Crypto.Cipher.AES")
            return
        except ImportError:
            pass
        for name in ("Cryptodome", "Cryptodome.Cipher", "Cryptodome.Cipher.AES",
                     "Cryptodome.Cipher._mode_gcm"):
            importlib.import_module(name)
        for name, module in list(sys.modules.items()):
            if name == "Cryptodome" or name.startswith("Cryptodome."):
                sys.modules["Crypto" + name[len("Cryptodome"):]] = module

    try:
        alias_cryptodome()
    except ImportError as e:
        return None, "no pycryptodome (python3-pycryptodome): %s" % e
    try:
        cipher_module = importlib.import_module("eventsourcing.cipher")
    except ImportError:
        if not os.path.isdir(os.path.join(PEERS_DIR, "eventsourcing")):
            return None, "the eventsourcing library is neither installed nor in %s" % PEERS_DIR
        sys.path.insert(0, PEERS_DIR)
        for name in [n for n in sys.modules if n == "eventsourcing" or n.startswith("eventsourcing.")]:
            del sys.modules[name]
        try:
            cipher_module = importlib.import_module("eventsourcing.cipher")
        except ImportError as e:
            return None, "cannot import eventsourcing.cipher from %s: %s" % (PEERS_DIR, e)
    utils = importlib.import_module("eventsourcing.utils")
    return (cipher_module.AESCipher, utils.Environment, utils.resolve_topic), None


# ---------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------

class EncryptionTest(unittest.TestCase):
    admin_dsn: str
    dsn: str

    @classmethod
    def setUpClass(cls):
        admin_dsn = os.environ.get("ES_TEST_DSN")
        if not admin_dsn:
            raise RuntimeError("set ES_TEST_DSN to a libpq connection string, "
                               "e.g. 'host=/path/socket port=54325 user=postgres dbname=postgres'")
        cls.admin_dsn = admin_dsn
        params = conninfo_to_dict(admin_dsn)
        params["dbname"] = TEST_DB
        cls.dsn = make_conninfo(**params)
        cls.apps: List[str] = []
        cls.su = None
        cls.drop_database()
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEST_DB)))
            for role in (OWNER, READER):
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE "
                                     "NOREPLICATION NOBYPASSRLS").format(sql.Identifier(role)))
        with psycopg.connect(cls.dsn, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION eventsourcing")
        cls.su = connect(cls.dsn)
        # The ordinary role may create applications (and administers those it creates).
        cls.su.execute("SELECT es_grant(NULL, %s, 'create')", (OWNER,))

    @classmethod
    def tearDownClass(cls):
        try:
            if cls.su is not None:
                cls.revoke_everything()
                cls.su.close()
        finally:
            for role in (OWNER, READER):
                cls.drop_role(role)
            cls.drop_database()

    @classmethod
    def revoke_everything(cls):
        """es_revoke, as the superuser, every grant to or by the test's roles."""
        rows = cls.su.execute(
            "SELECT a.name, CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE g.grantee::text END, "
            "       g.privilege "
            "  FROM es_grants g LEFT JOIN es_applications a ON a.id = g.application_id "
            " WHERE g.grantee::oid IN (SELECT oid FROM pg_roles WHERE rolname IN (%s, %s)) "
            "    OR g.granted_by::oid IN (SELECT oid FROM pg_roles WHERE rolname IN (%s, %s))",
            (OWNER, READER, OWNER, READER)).fetchall()
        for app, grantee, privilege in rows:
            cls.su.execute("SELECT es_revoke(%s, %s, %s)", (app, grantee, privilege))
        left = cls.su.execute("SELECT count(*) FROM es_privileges WHERE grantee IN (%s, %s) "
                              "OR granted_by IN (%s, %s)", (OWNER, READER, OWNER, READER)).fetchone()[0]
        if left:
            raise AssertionError("%d grants of the test's roles left after es_revoke" % left)

    @classmethod
    def drop_role(cls, role):
        with psycopg.connect(cls.admin_dsn, autocommit=True) as conn:
            if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
                return
            has_db = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                  (TEST_DB,)).fetchone()
        if has_db:
            with psycopg.connect(cls.dsn, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        with psycopg.connect(cls.admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))

    @classmethod
    def drop_database(cls):
        # DROP DATABASE may have to wait for the extension's background worker.
        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(cls.admin_dsn, autocommit=True) as conn:
                    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        sql.Identifier(TEST_DB)))
                return
            except psycopg.errors.ObjectInUse:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def setUp(self):
        self.conns: List[psycopg.Connection] = []

    def tearDown(self):
        for c in self.conns:
            c.close()

    def connect(self, role: str) -> psycopg.Connection:
        conn = connect(self.dsn, role)
        self.conns.append(conn)
        return conn

    def assertSqlstate(self, cm, sqlstate: str):
        self.assertEqual(cm.exception.sqlstate, sqlstate, str(cm.exception))

    def school(self, label: str) -> DogSchool:
        """A new application of the owner role, compressing and encrypting,
        with two dogs and their tricks."""
        name = "dogschool_%s_%s_%s" % (label, RUN, uuid.uuid4().hex[:6])
        self.apps.append(name)
        app = DogSchool(self.connect(OWNER), name)
        self.assertEqual(app.conn.execute(
            "SELECT es_has_privilege(%s, 'admin')", (name,)).fetchone()[0], True)
        self.fido = app.register_dog(FIDO)
        self.millie = app.register_dog(MILLIE)
        for i, trick in enumerate(TRICKS):
            app.add_trick(self.fido if i % 2 == 0 else self.millie, trick)
        app.add_trick(self.fido, LONG_TRICK)
        app.add_trick(self.millie, "fetch\nball\r\n")      # the same plaintext as Fido's
        return app

    def expected_state(self, app: DogSchool, dog_id: uuid.UUID) -> dict:
        events = [DomainEvent.from_stored(d, v, self.topic_of(app, d, v), s)
                  for (d, v), s in sorted(app.sent.items(), key=lambda kv: kv[0][1])
                  if d == dog_id]
        dog = Dog(dog_id)
        for e in events:
            dog.apply(e)
        return {"name": dog.name, "tricks": dog.tricks}

    @staticmethod
    def topic_of(app, dog_id, version) -> str:
        return Dog.Registered.topic() if version == 1 else Dog.TrickAdded.topic()

    def check_header(self, row, plain: bytes) -> int:
        """Checks the header of a stored state; returns its flags."""
        s = bytes(row.stored_state)
        self.assertEqual(row.stored_form, 1, row)
        self.assertGreaterEqual(len(s), HEADER_PLAIN + NONCE_LEN + TAG_LEN)
        self.assertEqual(s[0], FORM_VERSION)
        flags = s[1]
        self.assertEqual(flags & ~(FLAG_COMPRESSED | FLAG_ENCRYPTED), 0)
        self.assertTrue(flags & FLAG_ENCRYPTED, "not encrypted: %r" % s[:32])
        self.assertEqual(int.from_bytes(s[2:6], "big"), len(plain))
        payload = len(s) - HEADER_PLAIN - NONCE_LEN - TAG_LEN
        if flags & FLAG_COMPRESSED:
            self.assertLess(payload, len(plain))
        else:
            self.assertEqual(payload, len(plain))
        return flags

    # (a) -------------------------------------------------------------------

    def test_a_plaintext_read_back(self):
        """es_select, es_events and es_state give back exactly what was sent."""
        app = self.school("plain")
        log = app.select()
        self.assertEqual(len(log), len(app.sent))
        self.assertEqual([n.id for n in log], list(range(1, len(log) + 1)))
        for n in log:
            sent = app.sent[(n.originator_id, n.originator_version)]
            self.assertIsInstance(n.state, bytes)
            self.assertEqual(n.state, sent, n)
            self.assertEqual(n.topic, self.topic_of(app, n.originator_id, n.originator_version))
        # the JSON strings hold raw UTF-8, backslashes and newline escapes
        registered = app.sent[(self.fido, 1)]
        self.assertIn(FIDO.encode("utf-8")[:4], registered)
        self.assertIn("☃".encode("utf-8"), registered)
        self.assertIn(b"\\\\the first\\n", registered)
        self.assertEqual(json.loads(registered.decode("utf-8")), {"name": FIDO})
        for dog_id, name in ((self.fido, FIDO), (self.millie, MILLIE)):
            rows = app.conn.execute("SELECT originator_version, topic, state FROM es_events(%s, %s)",
                                    (app.name, dog_id)).fetchall()
            self.assertEqual([(v, s) for v, _t, s in rows],
                             sorted((v, s) for (d, v), s in app.sent.items() if d == dog_id))
            # descending, and a historical version
            rows = app.conn.execute("SELECT originator_version, state FROM es_events(%s, %s, "
                                    "lte => 2, descending => true)", (app.name, dog_id)).fetchall()
            self.assertEqual(rows, [(2, app.sent[(dog_id, 2)]), (1, app.sent[(dog_id, 1)])])
            dog = app.get(dog_id)
            self.assertEqual(dog.name, name)
            want = self.expected_state(app, dog_id)
            self.assertEqual(dog.tricks, want["tricks"])
            self.assertEqual(app.state(dog_id), want)
            # at a version, and again from an (encrypted) snapshot
            self.assertEqual(app.conn.execute("SELECT es_state(%s, %s, 1)",
                                              (app.name, dog_id)).fetchone()[0],
                             {"name": name, "tricks": []})
            self.assertEqual(app.conn.execute("SELECT es_snapshot(%s, %s)",
                                              (app.name, dog_id)).fetchone()[0], dog.version)
            self.assertEqual(app.state(dog_id), want)
        self.assertIn(LONG_TRICK, app.state(self.fido)["tricks"])
        # an empty state and arbitrary bytes are bytes too
        odd = uuid.uuid4()
        EsEvent = app.conn.adapters.types["es_event"].python_type
        blobs = [b"", b"\x00\xff\\n\n\x80 not JSON \xe2\x98", bytes(range(256)) * 4]
        app.conn.execute("SELECT * FROM es_append(%s, %s::es_event[])",
                         (app.name, [EsEvent(odd, i + 1, "odd", b) for i, b in enumerate(blobs)]))
        got = app.conn.execute("SELECT state FROM es_events(%s, %s)", (app.name, odd)).fetchall()
        self.assertEqual([r[0] for r in got], blobs)
        stored = [r for r in app.select_stored() if r.originator_id == odd]
        self.assertEqual([r.stored_form for r in stored], [1, 1, 1])
        self.assertEqual(bytes(stored[0].stored_state)[1] & FLAG_ENCRYPTED, FLAG_ENCRYPTED)

    def test_a_retry_after_a_refused_append(self):
        """A client retries a refused append (the batch made a new dog's data
        key, then a conflict undid it) without the conflicting event: every
        connection reads the retried events, and the log, back."""
        app = self.school("retry")
        # es_append takes the aggregates in uuid order: the new dog's events
        # (and its new data key) first, then the conflict.
        last = uuid.UUID("ffffffff-ffff-4fff-bfff-ffffffffffff")
        first = Dog(last)
        first.trigger_event(Dog.Registered, name="Last")
        app.save(first)
        rex = Dog(uuid.UUID(int=uuid.uuid4().int >> 1))
        rex.trigger_event(Dog.Registered, name="Rex Zanzibar")
        rex.add_trick("sit")
        events = rex.collect_events()
        stale = Dog(last)
        stale.trigger_event(Dog.Registered, name="Last again")   # version 1 exists
        EsEvent = app.conn.adapters.types["es_event"].python_type
        rows = [EsEvent(e.originator_id, e.originator_version, e.topic(), e.state())
                for e in events + stale.collect_events()]
        max_before = app.max_id()
        with self.assertRaises(psycopg.errors.UniqueViolation):
            app.conn.execute("SELECT * FROM es_append(%s, %s::es_event[])",
                             (app.name, rows)).fetchall()
        self.assertEqual(app.max_id(), max_before)
        ids = [r[0] for r in app.conn.execute("SELECT * FROM es_append(%s, %s::es_event[])",
                                              (app.name, rows[:2])).fetchall()]
        self.assertEqual(ids, [max_before + 1, max_before + 2])
        sent = [e.state() for e in events]
        for who, conn in (("the writer", app.conn), ("another connection", self.connect(OWNER)),
                          ("the superuser", self.su)):
            with self.subTest(reader=who):
                got = conn.execute("SELECT state FROM es_events(%s, %s)",
                                   (app.name, rex.id)).fetchall()
                self.assertEqual([r[0] for r in got], sent)
                self.assertEqual(len(conn.execute("SELECT * FROM es_select(%s, 1, 1000)",
                                                  (app.name,)).fetchall()), max_before + 2)

    # (b) -------------------------------------------------------------------

    def test_b_stored_form_is_encrypted(self):
        """es_select_stored: form 1, encrypted, nothing readable in it."""
        app = self.school("stored")
        stored = app.select_stored()
        log = app.select()
        self.assertEqual([(r.id, r.originator_id, r.originator_version, r.topic, r.event_hash)
                          for r in stored],
                         [(n.id, n.originator_id, n.originator_version, n.topic, n.event_hash)
                          for n in log])
        nonces = set()
        flags_seen = set()
        secrets = [FIDO.encode("utf-8"), MILLIE.encode("utf-8"), b"Zanzibar", b"Quokkafeld",
                   "Müller".encode("utf-8"), "犬".encode("utf-8"), b"roll over", b"good dog",
                   b'"name"', b'"trick"']
        for r in stored:
            plain = app.sent[(r.originator_id, r.originator_version)]
            s = bytes(r.stored_state)
            flags_seen.add(self.check_header(r, plain))
            nonces.add(s[HEADER_PLAIN:HEADER_PLAIN + NONCE_LEN])
            self.assertNotIn(plain, s)
            self.assertNotEqual(s, plain)
            for secret in secrets:
                self.assertNotIn(secret, s, "%r readable in the stored state of %s"
                                 % (secret, r.id))
            body = s[HEADER_PLAIN + NONCE_LEN:-TAG_LEN]
            self.assertNotIn(zlib.compress(plain)[2:12], s)
            with self.assertRaises(zlib.error):
                zlib.decompress(body)
        self.assertEqual(len(nonces), len(stored), "a nonce was used twice")
        self.assertEqual(flags_seen, {FLAG_ENCRYPTED, FLAG_ENCRYPTED | FLAG_COMPRESSED})
        # The same plaintext twice (one trick of two dogs): two ciphertexts.
        same = [bytes(r.stored_state) for r in stored
                if app.sent[(r.originator_id, r.originator_version)] == Dog.TrickAdded(
                    uuid.UUID(int=0), 0, "fetch\nball\r\n").state()]
        self.assertEqual(len(same), 2)
        self.assertNotEqual(same[0][HEADER_PLAIN:], same[1][HEADER_PLAIN:])
        # The superuser's view of the table agrees: nothing in clear there either.
        rows = self.su.execute(
            "SELECT e.stored_form, e.state FROM es_stored_events e JOIN es_applications a "
            "ON a.id = e.application_id WHERE a.name = %s ORDER BY e.notification_id",
            (app.name,)).fetchall()
        self.assertEqual(rows, [(r.stored_form, bytes(r.stored_state)) for r in stored])
        self.assertEqual(self.su.execute(
            "SELECT compression, encryption FROM es_applications WHERE name = %s",
            (app.name,)).fetchone(), (True, True))
        # and the snapshots: stored_state only, encrypted
        app.conn.execute("SELECT es_snapshot(%s, %s)", (app.name, self.fido))
        snaps = self.su.execute(
            "SELECT s.state, s.stored_state FROM es_snapshots s JOIN es_applications a "
            "ON a.id = s.application_id WHERE a.name = %s", (app.name,)).fetchall()
        self.assertEqual(len(snaps), 1)
        self.assertIsNone(snaps[0][0])
        for secret in secrets[:6]:
            self.assertNotIn(secret, bytes(snaps[0][1]))

    # (c) -------------------------------------------------------------------

    def test_c_library_cipher_cannot_open_stored_states(self):
        """The Python library's AESCipher, with a key of its own, opens its own
        ciphertexts and none of what the database stored."""
        lib, why = import_library_cipher()
        if lib is None:
            self.skipTest(why)
        AESCipher, Environment, resolve_topic = lib
        # As the library's InfrastructureFactory.cipher() does it.
        env = Environment("DogSchool", {"CIPHER_TOPIC": "eventsourcing.cipher:AESCipher",
                                        "DOGSCHOOL_CIPHER_KEY": AESCipher.create_key(32)})
        cipher = resolve_topic(env.get("CIPHER_TOPIC"))(env)
        self.assertIsInstance(cipher, AESCipher)
        self.assertEqual(len(cipher.key), 32)

        app = self.school("cipher")
        stored = app.select_stored()
        self.assertEqual(len(stored), len(app.sent))
        for r in stored:
            plain = app.sent[(r.originator_id, r.originator_version)]
            s = bytes(r.stored_state)
            # the contrast: the cipher works on the same plaintext
            mine = cipher.encrypt(plain)
            self.assertNotEqual(mine, s)
            self.assertEqual(cipher.decrypt(mine), plain)
            # the stored bytes as they are (the library's nonce | tag | data)
            with self.assertRaises(ValueError, msg="id %s" % r.id):
                cipher.decrypt(s)
            # and cut where the database put nonce, data and tag
            nonce = s[HEADER_PLAIN:HEADER_PLAIN + NONCE_LEN]
            with self.assertRaises(ValueError, msg="id %s" % r.id):
                cipher.decrypt(nonce + s[-TAG_LEN:] + s[HEADER_PLAIN + NONCE_LEN:-TAG_LEN])
            with self.assertRaises(ValueError, msg="id %s" % r.id):
                cipher.decrypt(s[HEADER_PLAIN:])

        # Client-side encryption on top: the database returns the library's
        # ciphertext unchanged, and the library opens it.
        dog = Dog.register(FIDO)
        (event,) = dog.collect_events()
        EsEvent = app.conn.adapters.types["es_event"].python_type
        sealed = cipher.encrypt(event.state())
        (nid,) = app.conn.execute("SELECT es_append(%s, %s::es_event)",
                                  (app.name, EsEvent(dog.id, 1, event.topic(), sealed))).fetchone()
        (back,) = app.conn.execute("SELECT state FROM es_select(%s, %s, 1)",
                                   (app.name, nid)).fetchone()
        self.assertEqual(back, sealed)
        self.assertEqual(cipher.decrypt(back), event.state())
        (double,) = app.conn.execute("SELECT stored_state FROM es_select_stored(%s, %s, 1)",
                                     (app.name, nid)).fetchone()
        self.assertNotIn(sealed, bytes(double))
        with self.assertRaises(ValueError):
            cipher.decrypt(bytes(double))

    # (d) -------------------------------------------------------------------

    def test_d_forget(self):
        """es_forget: the events stay, unreadable; the chain verifies; other
        dogs are untouched; the forgotten dog takes no new event."""
        app = self.school("forget")
        fido, millie = self.fido, self.millie
        for dog_id in (fido, millie):
            app.conn.execute("SELECT es_snapshot(%s, %s)", (app.name, dog_id))
        snapshots_sql = ("SELECT s.originator_id, count(*) FROM es_snapshots s "
                         "JOIN es_applications a ON a.id = s.application_id WHERE a.name = %s "
                         "GROUP BY 1")
        self.assertEqual(dict(self.su.execute(snapshots_sql, (app.name,)).fetchall()),
                         {fido: 1, millie: 1})
        millie_state = app.state(millie)
        head = app.conn.execute("SELECT es_head(%s, %s)", (app.name, fido)).fetchone()[0]
        stored_before = app.select_stored()
        log_before = app.select()
        max_before = app.max_id()

        app.conn.execute("SELECT es_forget(%s, %s)", (app.name, fido))

        log = app.select()
        self.assertEqual([(n.id, n.originator_id, n.originator_version, n.topic, n.event_hash)
                          for n in log],
                         [(n.id, n.originator_id, n.originator_version, n.topic, n.event_hash)
                          for n in log_before])
        for n, b in zip(log, log_before):
            if n.originator_id == fido:
                self.assertIsNone(n.state, n)
            else:
                self.assertEqual(n.state, b.state)
                self.assertEqual(n.state, app.sent[(n.originator_id, n.originator_version)])
        events = app.conn.execute("SELECT originator_version, state FROM es_events(%s, %s)",
                                  (app.name, fido)).fetchall()
        self.assertEqual([v for v, _ in events], list(range(1, len(events) + 1)))
        self.assertEqual([s for _, s in events], [None] * len(events))
        # the stored form is unchanged: the ciphertexts stay, only the key went
        self.assertEqual(app.select_stored(), stored_before)
        verification = app.conn.execute("SELECT ok, events, problem FROM es_verify(%s, %s, %s)",
                                        (app.name, fido, head)).fetchone()
        self.assertEqual(verification, (True, len(events), None))
        self.assertEqual(app.conn.execute("SELECT ok FROM es_verify(%s, %s)",
                                          (app.name, fido)).fetchone()[0], True)
        self.assertEqual(app.conn.execute("SELECT count(*) FROM es_verify_log(%s)",
                                          (app.name,)).fetchone()[0], 0)
        # snapshots: the forgotten dog's deleted, the other's kept
        self.assertEqual(dict(self.su.execute(snapshots_sql, (app.name,)).fetchall()),
                         {millie: 1})
        forgotten_state = app.state(fido)
        self.assertTrue(forgotten_state is None or "Zanzibar" not in json.dumps(forgotten_state),
                        forgotten_state)
        self.assertEqual(app.state(millie), millie_state)
        self.assertEqual(app.get(millie).tricks, millie_state["tricks"])
        self.assertEqual(self.su.execute(
            "SELECT k.wrapped_key IS NULL AND k.master_key_id IS NULL AND k.forgotten_at IS NOT NULL "
            "FROM es_keys k JOIN es_applications a ON a.id = k.application_id "
            "WHERE a.name = %s AND k.originator_id = %s", (app.name, fido)).fetchone(), (True,))

        # No new event for the forgotten dog: 55000, nothing written, no id used up.
        EsEvent = app.conn.adapters.types["es_event"].python_type
        version = len(events) + 1
        attempts = [
            ("SELECT es_append(%s, %s, %s, %s, %s)",
             (app.name, fido, version, Dog.TrickAdded.topic(), b'{"trick": "again"}')),
            ("SELECT * FROM es_append(%s, %s::es_event[])",
             (app.name, [EsEvent(millie, app.get(millie).version + 1, Dog.TrickAdded.topic(),
                                 b'{"trick": "fine"}'),
                         EsEvent(fido, version, Dog.TrickAdded.topic(), b'{"trick": "again"}')])),
        ]
        for encryption in (True, False):
            app.conn.execute("SELECT es_configure(%s, encryption => %s)", (app.name, encryption))
            for query, params in attempts:
                with self.subTest(encryption=encryption, query=query):
                    with self.assertRaises(psycopg.errors.ObjectNotInPrerequisiteState) as cm:
                        app.conn.execute(query, params).fetchall()
                    self.assertSqlstate(cm, "55000")
                    self.assertEqual(app.max_id(), max_before)
                    self.assertEqual(len(app.select()), len(log_before))
        app.conn.execute("SELECT es_configure(%s, encryption => true)", (app.name,))
        # Forgetting again does nothing more; the other dog still takes events,
        # and gets the next id.
        app.conn.execute("SELECT es_forget(%s, %s)", (app.name, fido))
        self.assertEqual(app.select_stored(), stored_before)
        app.add_trick(millie, "after the forgetting ✓")
        self.assertEqual(app.max_id(), max_before + 1)
        self.assertEqual(app.state(millie)["tricks"][-1], "after the forgetting ✓")
        # An aggregate that has no data key cannot be forgotten.
        with self.assertRaises(psycopg.errors.ObjectNotInPrerequisiteState) as cm:
            app.conn.execute("SELECT es_forget(%s, %s)", (app.name, uuid.uuid4()))
        self.assertSqlstate(cm, "55000")

    def test_d_forget_while_an_append_waits(self):
        """An append of the aggregate that waits for a concurrent es_forget
        (the aggregate's lock) is refused once the forgetting commits, also by
        a backend that had the data key cached from reading the aggregate,
        with the application encrypting or not."""
        app = self.school("race")
        admin = self.connect(OWNER)
        writer = app.conn
        writer.execute("SET statement_timeout = '30s'")

        def wait_until_blocked(pid):
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                row = self.su.execute("SELECT wait_event_type FROM pg_stat_activity "
                                      "WHERE pid = %s", (pid,)).fetchone()
                if row and row[0] == "Lock":
                    return
                time.sleep(0.01)
            self.fail("the append did not wait for the forgetting")

        for encryption, dog_id in ((True, self.fido), (False, self.millie)):
            with self.subTest(encryption=encryption):
                app.conn.execute("SELECT es_configure(%s, encryption => %s)",
                                 (app.name, encryption))
                # the writer reads the dog: its backend has the data key at hand
                dog = app.get(dog_id)
                self.assertEqual(len(app.select()), app.max_id())
                max_before, version = app.max_id(), dog.version
                outcome: dict = {}

                def append():
                    try:
                        outcome["id"] = writer.execute(
                            "SELECT es_append(%s, %s, %s, %s, %s)",
                            (app.name, dog_id, version + 1, Dog.TrickAdded.topic(),
                             b'{"trick": "too late"}')).fetchone()[0]
                    except psycopg.Error as e:
                        outcome["error"] = e

                with admin.transaction():
                    admin.execute("SELECT es_forget(%s, %s)", (app.name, dog_id))
                    t = threading.Thread(target=append)
                    t.start()
                    wait_until_blocked(writer.info.backend_pid)
                t.join(30)
                self.assertFalse(t.is_alive())
                self.assertNotIn("id", outcome,
                                 "an append waiting for es_forget recorded event %s (version %d) "
                                 "of the forgotten aggregate" % (outcome.get("id"), version + 1))
                self.assertIsInstance(outcome.get("error"),
                                      psycopg.errors.ObjectNotInPrerequisiteState, outcome)
                self.assertEqual(app.max_id(), max_before)
                self.assertEqual([s for _, s in app.conn.execute(
                    "SELECT originator_version, state FROM es_events(%s, %s)",
                    (app.name, dog_id)).fetchall()], [None] * version)

    # (e) -------------------------------------------------------------------

    def test_e_reader_reads_but_cannot_forget_or_configure(self):
        app = self.school("reader")
        app.conn.execute("SELECT es_grant(%s, %s, 'read')", (app.name, READER))
        reader = DogSchool.__new__(DogSchool)
        reader.conn, reader.name, reader.sent = self.connect(READER), app.name, app.sent
        self.assertEqual(reader.conn.execute("SELECT es_has_privilege(%s, 'admin')",
                                             (app.name,)).fetchone()[0], False)
        self.assertEqual([n.state for n in reader.select()], [n.state for n in app.select()])
        for n in reader.select():
            self.assertEqual(n.state, app.sent[(n.originator_id, n.originator_version)])
        self.assertEqual(reader.get(self.fido).name, FIDO)
        self.assertEqual(reader.get(self.millie).tricks, app.get(self.millie).tricks)
        self.assertEqual(reader.state(self.fido), self.expected_state(app, self.fido))
        self.assertEqual(reader.select_stored(), app.select_stored())
        stored_before, max_before = app.select_stored(), app.max_id()

        EsEvent = reader.conn.adapters.types["es_event"].python_type
        refused = [
            ("SELECT es_forget(%s, %s)", (app.name, self.fido)),
            ("SELECT es_forget(%s, %s)", (app.name, uuid.uuid4())),
            ("SELECT es_configure(%s, compression => false, encryption => false)", (app.name,)),
            ("SELECT es_configure(%s, encryption => false)", (app.name,)),
            ("SELECT es_configure(%s, compression => true, encryption => true)", (app.name,)),
            ("SELECT es_configure(%s)", (app.name,)),
            ("SELECT es_append(%s, %s::es_event)",
             (app.name, EsEvent(self.fido, 99, Dog.TrickAdded.topic(), b"{}"))),
            ("SELECT es_rewrap_keys()", None),
        ]
        for query, params in refused:
            with self.subTest(query=query):
                with self.assertRaises(psycopg.errors.InsufficientPrivilege) as cm:
                    reader.conn.execute(query, params).fetchall()
                self.assertSqlstate(cm, "42501")
        # Nothing changed: the dogs are readable, the application still encrypts.
        self.assertEqual(app.select_stored(), stored_before)
        self.assertEqual(app.max_id(), max_before)
        self.assertEqual(self.su.execute(
            "SELECT compression, encryption FROM es_applications WHERE name = %s",
            (app.name,)).fetchone(), (True, True))
        self.assertEqual(reader.get(self.fido).name, FIDO)
        app.add_trick(self.fido, "still encrypted")
        (last,) = [r for r in app.select_stored() if r.id == max_before + 1]
        self.check_header(last, app.sent[(self.fido, last.originator_version)])
        self.assertEqual(reader.get(self.fido).tricks[-1], "still encrypted")
        # The owner, not the reader, may forget: as admin.
        app.conn.execute("SELECT es_forget(%s, %s)", (app.name, self.fido))
        self.assertEqual({n.state for n in reader.select() if n.originator_id == self.fido}, {None})
        # And neither role may rewrap the database's keys.
        with self.assertRaises(psycopg.errors.InsufficientPrivilege):
            app.conn.execute("SELECT es_rewrap_keys()")


if __name__ == "__main__":
    unittest.main()
