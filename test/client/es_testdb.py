"""A throwaway database with the extension installed, for the client tests.

ES_TEST_DSN names the server (a libpq connection string of a superuser,
e.g. 'host=/path/socket port=54325 user=postgres dbname=postgres');
test/scripts/test.sh sets it.
"""

import os
from typing import Tuple

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo


def create(name: str) -> Tuple[str, str]:
    """Drops and creates database `name` with the extension; returns
    (the server's admin DSN, the new database's DSN)."""
    admin_dsn = os.environ.get("ES_TEST_DSN")
    if not admin_dsn:
        raise RuntimeError("set ES_TEST_DSN to a libpq connection string, "
                           "e.g. 'host=/path/socket port=54325 user=postgres dbname=postgres'")
    params = conninfo_to_dict(admin_dsn)
    params["dbname"] = name
    dsn = make_conninfo(**params)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION eventsourcing")
    return admin_dsn, dsn


def drop(admin_dsn: str, name: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
