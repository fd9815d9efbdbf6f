"""eventsourcing_pgext: the Python eventsourcing library's persistence module
on the eventsourcing PostgreSQL extension.

    PERSISTENCE_MODULE=eventsourcing_pgext

with the same POSTGRES_* settings as the library's own PostgreSQL module.
See README.md beside this package.
"""

from eventsourcing_pgext.datastore import ConnectionPool, Datastore, PoolTimeoutError, translate_error
from eventsourcing_pgext.factory import Factory
from eventsourcing_pgext.listen import FollowerThread, Listener, ListenRunner
from eventsourcing_pgext.recorders import (
    ExtensionRecorder,
    LogProblem,
    PgextAggregateRecorder,
    PgextApplicationRecorder,
    PgextProcessRecorder,
    Seal,
    SnapshotRecorder,
    Verification,
)

__version__ = "0.1.0"

__all__ = [
    "ConnectionPool",
    "Datastore",
    "ExtensionRecorder",
    "Factory",
    "FollowerThread",
    "ListenRunner",
    "Listener",
    "LogProblem",
    "PgextAggregateRecorder",
    "PgextApplicationRecorder",
    "PgextProcessRecorder",
    "PoolTimeoutError",
    "Seal",
    "SnapshotRecorder",
    "Verification",
    "translate_error",
]
