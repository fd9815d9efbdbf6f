#!/usr/bin/python3
"""The same DogSchool commands through the Python eventsourcing library, at
1, 8 and 32 threads of one process, saved by the library's own PostgreSQL
recorder (eventsourcing.postgres: LOCK TABLE ... IN EXCLUSIVE MODE, then
INSERT) and by eventsourcing_pgext (es_append), side by side in one run.

Each thread repeats: register a dog (one save), add two tricks (each a
repository get and a save).  Saves/s counts the saves of all threads.  Each
run uses a new application (a new table, or a new extension application),
runs interleave (library, module, module, library, ...) and each figure is
the median of the rounds.

Each thread's register_dog is also timed (one save, no read): its mean in
ms is the last column.

Run by python_recorders.sh, which sets ES_TEST_DSN; prints markdown.
    BENCH_SECONDS=10 BENCH_ROUNDS=3 BENCH_THREADS="1 8 32"
    BENCH_POOL (default: the number of threads) POSTGRES_POOL_SIZE of both
"""

import os
import statistics
import sys
import threading
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "client"))
import pgext_support as S  # noqa: E402

if S.LIBRARY_MISSING:
    sys.exit("eventsourcing library: %s" % S.LIBRARY_MISSING)
try:
    import psycopg_pool  # noqa: F401
except ImportError:
    sys.exit("the library's PostgreSQL module needs psycopg_pool (Debian: python3-psycopg-pool)")

import pgext_dogschool as ds  # noqa: E402
import eventsourcing.postgres as library_postgres  # noqa: E402


class _Pool31(psycopg_pool.ConnectionPool):
    """The library 9.3 passes check= (psycopg_pool 3.2); Debian 12 has 3.1,
    which has no connection check: dropped when None (POSTGRES_PRE_PING off)."""

    def __init__(self, *args, check=None, **kwargs):
        if check is not None:
            raise RuntimeError("POSTGRES_PRE_PING needs psycopg_pool >= 3.2")
        super().__init__(*args, **kwargs)


if "check" not in psycopg_pool.ConnectionPool.__init__.__code__.co_varnames:
    library_postgres.ConnectionPool = _Pool31

SECONDS = float(os.environ.get("BENCH_SECONDS", "10"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
THREADS = [int(t) for t in os.environ.get("BENCH_THREADS", "1 8 32").split()]
DBNAME = os.environ.get("BENCH_DBNAME", "es_bench_python")

RECORDERS = {
    "library": "eventsourcing.postgres",
    "pgext": "eventsourcing_pgext",
}


def run(db, module: str, threads: int) -> dict:
    """Saves/s, and mean latency of a save, for `threads` threads over SECONDS."""
    name = "Bench%s" % uuid.uuid4().hex[:10]
    app_cls = type(name, (ds.DogSchool,), {})
    env = db.env(PERSISTENCE_MODULE=module, POSTGRES_POOL_SIZE=os.environ.get("BENCH_POOL", str(threads)),
                 POSTGRES_POOL_MAX_OVERFLOW="0", POSTGRES_POOL_TIMEOUT="60")
    app = app_cls(env=env)
    saves = [0] * threads
    save_time = [0.0] * threads
    errors = []
    start = threading.Barrier(threads + 1)
    stop = threading.Event()

    def work(k):
        try:
            start.wait()
            n, spent = 0, 0.0
            while not stop.is_set():
                t0 = time.perf_counter()
                dog_id = app.register_dog("dog")
                t1 = time.perf_counter()
                app.add_trick(dog_id, "roll over")
                app.add_trick(dog_id, "fetch ball")
                n += 3
                spent += t1 - t0
            saves[k] = n
            save_time[k] = spent
        except Exception as e:  # pragma: no cover
            errors.append(e)

    workers = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    # warm-up: pools filled, statements prepared
    start.wait()
    began = time.perf_counter()
    time.sleep(SECONDS)
    stop.set()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - began
    app.close()
    if errors:
        raise errors[0]
    total = sum(saves)
    registers = total / 3
    return {"saves_per_s": total / elapsed,
            "register_ms": 1000 * sum(save_time) / registers if registers else float("nan")}


def main() -> None:
    db = S.TestDatabase(DBNAME)
    db.create()
    try:
        # the extension, once (the module's factory would also do it)
        with db.connect() as conn:
            conn.execute("CREATE EXTENSION eventsourcing")
        results = {(m, t): [] for m in RECORDERS for t in THREADS}
        for r in range(ROUNDS):
            for threads in THREADS:
                order = list(RECORDERS) if (r + threads) % 2 == 0 else list(reversed(RECORDERS))
                for m in order:
                    res = run(db, RECORDERS[m], threads)
                    results[(m, threads)].append(res)
                    print("round %d, %2d threads, %-7s: %7.0f saves/s, register %.2f ms"
                          % (r + 1, threads, m, res["saves_per_s"], res["register_ms"]),
                          file=sys.stderr, flush=True)
    finally:
        db.drop()

    def med(m, t, key):
        return statistics.median(x[key] for x in results[(m, t)])

    print("| threads | library's recorder saves/s | eventsourcing_pgext saves/s | ratio of the medians"
          " | ratio in each round | per round (library / pgext) | register_dog ms (library / pgext) |")
    print("| ---: | ---: | ---: | ---: | --- | --- | ---: |")
    for t in THREADS:
        lib, ext = med("library", t, "saves_per_s"), med("pgext", t, "saves_per_s")
        pairs = list(zip(results[("library", t)], results[("pgext", t)]))
        rounds = ", ".join("%.0f / %.0f" % (a["saves_per_s"], b["saves_per_s"]) for a, b in pairs)
        ratios = ", ".join("%.2f" % (b["saves_per_s"] / a["saves_per_s"]) for a, b in pairs)
        print("| %d | %.0f | %.0f | %.2f | %s | %s | %.2f / %.2f |"
              % (t, lib, ext, ext / lib, ratios, rounds,
                 med("library", t, "register_ms"), med("pgext", t, "register_ms")))


if __name__ == "__main__":
    main()
