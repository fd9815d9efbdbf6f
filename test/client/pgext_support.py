"""Shared by the tests of the Python persistence module (test_pgext_*.py):
finds the eventsourcing library and the module, makes a database of the
test's own on the cluster named by ES_TEST_DSN, and the POSTGRES_* settings
that point the library at it.

The library: an installed `eventsourcing` package if there is one, else the
copy in ../shared/peers/eventsourcing beside the checkout (or ES_PEERS_DIR),
else LIBRARY_MISSING says why and the tests are skipped.  Its cipher imports
`Crypto`, which Debian's python3-pycryptodome names `Cryptodome`: aliased.
"""

import importlib
import os
import sys
import uuid
from typing import Dict, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
CLIENT_DIR = os.path.join(ROOT, "clients", "python")
PEERS_DIR = os.environ.get("ES_PEERS_DIR") or os.path.normpath(
    os.path.join(ROOT, "..", "shared", "peers", "eventsourcing"))

HOW_TO_GET = ("install the Python eventsourcing library 9.3 (pip install 'eventsourcing>=9.2,<9.4'), "
              "or put its source tree in %s (or ES_PEERS_DIR)" % PEERS_DIR)


def _alias_cryptodome() -> None:
    try:
        importlib.import_module("Crypto.Cipher.AES")
        return
    except ImportError:
        pass
    try:
        for name in ("Cryptodome", "Cryptodome.Cipher", "Cryptodome.Cipher.AES",
                     "Cryptodome.Cipher._mode_gcm", "Cryptodome.Random"):
            importlib.import_module(name)
    except ImportError:
        return          # the library's cipher tests will say so
    for name, module in list(sys.modules.items()):
        if name == "Cryptodome" or name.startswith("Cryptodome."):
            sys.modules["Crypto" + name[len("Cryptodome"):]] = module


def _find_library() -> Optional[str]:
    """None when the library is importable, else why not."""
    _alias_cryptodome()
    try:
        importlib.import_module("eventsourcing.persistence")
        importlib.import_module("eventsourcing.tests.persistence")
        return None
    except ImportError:
        pass
    if not os.path.isdir(os.path.join(PEERS_DIR, "eventsourcing")):
        return "the eventsourcing library is not installed and not in %s: %s" % (PEERS_DIR, HOW_TO_GET)
    sys.path.insert(0, PEERS_DIR)
    for name in [n for n in sys.modules if n == "eventsourcing" or n.startswith("eventsourcing.")]:
        del sys.modules[name]
    try:
        importlib.import_module("eventsourcing.persistence")
        importlib.import_module("eventsourcing.tests.persistence")
    except ImportError as e:
        return "cannot import the eventsourcing library from %s (%s): %s" % (PEERS_DIR, e, HOW_TO_GET)
    return None


LIBRARY_MISSING = _find_library()
if CLIENT_DIR not in sys.path:
    sys.path.insert(0, CLIENT_DIR)

import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402
from psycopg.conninfo import conninfo_to_dict, make_conninfo  # noqa: E402


def admin_dsn() -> str:
    dsn = os.environ.get("ES_TEST_DSN")
    if not dsn:
        raise RuntimeError("set ES_TEST_DSN to a libpq connection string, e.g. "
                           "'host=/path/socket port=54325 user=postgres dbname=postgres'")
    return dsn


class TestDatabase:
    """A database of the test module's own, without the extension (the
    module's factory installs it, as it does for a user who may), dropped
    afterwards (which also gives back its id counters)."""

    def __init__(self, name: str):
        self.name = name
        params = conninfo_to_dict(admin_dsn())
        params["dbname"] = name
        self.dsn = make_conninfo(**params)
        self.params = params

    def create(self) -> None:
        with psycopg.connect(admin_dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.name)))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.name)))

    def drop(self) -> None:
        with psycopg.connect(admin_dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.name)))

    def env(self, **extra: str) -> Dict[str, str]:
        """The settings a library user would export."""
        p = self.params
        env = {
            "PERSISTENCE_MODULE": "eventsourcing_pgext",
            "POSTGRES_DBNAME": p["dbname"],
            "POSTGRES_HOST": p.get("host", ""),
            "POSTGRES_PORT": p.get("port", ""),
            "POSTGRES_USER": p.get("user", ""),
            "POSTGRES_PASSWORD": p.get("password", ""),
        }
        env.update(extra)
        return env

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(self.dsn, autocommit=True)


def unique(prefix: str) -> str:
    """An application name of this test's own (ids start at 1 in each)."""
    return "%s_%s" % (prefix, uuid.uuid4().hex[:8])
