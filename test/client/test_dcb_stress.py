#!/usr/bin/python3
"""Stress test of Dynamic Consistency Boundaries (es_dcb_append, es_dcb_read,
es_dcb_head; src/dcb.c), through psycopg 3 as real writers and followers.

Writers (one thread and connection each, 16 by default) run the DCB loop:
BEGIN (READ COMMITTED, REPEATABLE READ or SERIALIZABLE), read the events of
a query (1-2 items from a small pool over 6 tags and 3 types) with
es_dcb_read or es_dcb_head after the last position they had read for that
query, decide (sometimes not to append), append 1-3 events (type and tags
from the same small sets, mostly carrying the tags of one of their query's
items, so that their events match other writers' conditions) with the
condition {"fail_if_events_match": query, "after": the read's last
position} (sometimes no condition), then commit, or roll back (gaps), or
hold the transaction open a little before committing.  23505 is a
conflict; 40001 and 40P01 are counted.  Each event's data names its append
({"w": writer, "n": append, "i": index}).  Another thread appends aggregate
events (es_append, some rolled back) and seals the log now and then.

Followers tail the log meanwhile: es_dcb_read(app, query, after => last,
max_count) for the empty query, one tag, and two items; es_select(app,
last + 1, n).  Each records every position it receives.

Afterwards, against the log read from es_stored_events:
  (a) no conditional append that committed had its condition violated: no
      other event matching its query lies in (after, its last position];
      every 23505 named a committed event matching the query after `after`;
      and the run is not vacuous (plenty of conditional successes and of
      23505 conflicts);
  (r) every es_dcb_read of a writer returned exactly the committed matching
      events in (after, its last position], and every es_dcb_head a
      committed matching position (or `after`);
  (e) committed appends are in the log with the returned position as the
      position of their last event, rolled back or refused ones are not;
  (b) each follower received every committed event of its query exactly
      once, in increasing position order, none skipped;
  (c) es_verify_log reports no problem.
Why (after, last] and not only (after, first): a matching event that
committed before the append's check lies below the append's first position
(the check would have refused it), and one whose writer came after the
append's locks waited for its commit and took a higher position; so no
foreign matching event may lie between the append's own events either.

The checker of (a) and (r) is unit-tested on hand-made histories, broken
ones included (CheckerTest, no database needed), and the whole harness on a
mutant (test_mutant_unlocked_client_check_is_caught): writers that check
the condition themselves (es_dcb_head after `after`, then an unconditional
append, i.e. a check without the locks) must be caught violating it.

Environment: ES_TEST_DSN (a libpq string to a maintenance database; the
module creates and drops its own database ES_DCB_STRESS_DB, default
es_dcb_stress; ES_DCB_STRESS_KEEP=1 keeps it); ES_DCB_STRESS_SECONDS
(writing time, default 15), ES_DCB_STRESS_MUTANT_SECONDS (4),
ES_DCB_STRESS_WRITERS (16), ES_DCB_STRESS_SEED (random; printed in the
summary lines after the tests).  About 22 s in all by default.

    ES_TEST_DSN="host=/path/socket port=54326 user=postgres dbname=postgres" \\
        /usr/bin/python3 test/client/test_dcb_stress.py -v
"""

import bisect
import json
import os
import random
import re
import sys
import threading
import time
import unittest
import uuid
from typing import Dict, List, Optional, Sequence, Tuple

import psycopg
import psycopg.errors

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import es_testdb  # noqa: E402

TEST_DB = os.environ.get("ES_DCB_STRESS_DB", "es_dcb_stress")
SECONDS = float(os.environ.get("ES_DCB_STRESS_SECONDS", "15"))
WRITERS = int(os.environ.get("ES_DCB_STRESS_WRITERS", "16"))
SEED = int(os.environ.get("ES_DCB_STRESS_SEED") or random.randrange(1, 10 ** 9))
APP = "dcb_stress"
TAGS = ["t%d" % i for i in range(6)]
TYPES = ["A", "B", "C"]
LEVELS = [("READ COMMITTED", 0.6), ("REPEATABLE READ", 0.2), ("SERIALIZABLE", 0.2)]
# The run must show both outcomes, plenty of each, or it proves nothing.
MIN_CONDITIONAL_SUCCESSES = 100
MIN_CONFLICTS = 30
MUTANT_SECONDS = float(os.environ.get("ES_DCB_STRESS_MUTANT_SECONDS", "4"))

# Printed after the tests (a line written while one runs would split
# unittest's "name ... ok" line, which make test counts).
REPORT: List[str] = []

CONFLICT_RE = re.compile(r"an event at position (\d+) ")


# ---------------------------------------------------------------------------
# The model: matching, and the checker of histories (no database)
# ---------------------------------------------------------------------------

def item_matches(item: dict, type_: str, tags) -> bool:
    """The specification's rule: the type is one of the item's types (any
    when it names none) and the event carries all of the item's tags."""
    types = item.get("types") or []
    if types and type_ not in types:
        return False
    return set(item.get("tags") or []) <= set(tags)


def query_matches(query: Optional[list], type_: str, tags) -> bool:
    """Items are ORed; NULL or [] matches every tagged event."""
    if not query:
        return True
    return any(item_matches(it, type_, tags) for it in query)


def query_key(query: Optional[list]) -> str:
    return json.dumps(query or [], sort_keys=True)


class History:
    """The committed tagged events, in position order: (position, type,
    tags, owner) with owner the append that wrote it (any hashable)."""

    def __init__(self, events: Sequence[Tuple[int, str, Sequence[str], object]]):
        self.events = sorted(events, key=lambda e: e[0])
        self.by_pos = {e[0]: e for e in self.events}
        self._matching: Dict[str, List[int]] = {}

    def matching(self, query: Optional[list]) -> List[int]:
        """The positions of the events matching query, ascending (cached)."""
        k = query_key(query)
        if k not in self._matching:
            self._matching[k] = [p for p, t, tags, _ in self.events if query_matches(query, t, tags)]
        return self._matching[k]

    def matching_between(self, query, lo: int, hi: int) -> List[int]:
        """Matching positions in (lo, hi]."""
        ps = self.matching(query)
        return ps[bisect.bisect_right(ps, lo):bisect.bisect_right(ps, hi)]


def condition_violations(history: History, appends: Sequence[dict]) -> List[str]:
    """appends: the committed conditional appends, each {"owner", "query",
    "after", "last"} (last: the position es_dcb_append returned).  Replays
    the log: an append's condition held at its commit iff no event of
    another append matching its query lies after `after` and before its own
    first event.  The lock design promises more: a matching event that
    committed before the append's check lies below its first position (the
    check would have seen it), and one whose writer waited for the append's
    locks took a position above its last one, so none lies between its own
    events either.  Both are flagged, told apart."""
    out = []
    for a in appends:
        own = [p for p, _, _, o in history.events if o == a["owner"]] \
            if a.get("positions") is None else a["positions"]
        if not own:
            out.append("append %r committed but none of its events is in the log" % (a["owner"],))
            continue
        first = min(own)
        for p in history.matching_between(a["query"], a["after"], a["last"]):
            owner = history.by_pos[p][3]
            if owner == a["owner"]:
                continue
            where = "before its first event %d" % first if p < first else \
                "between its own events %d..%d" % (first, a["last"])
            out.append("append %r (condition %s after %d, last position %d) committed although "
                       "event %d of %r matches its condition and lies %s"
                       % (a["owner"], query_key(a["query"]), a["after"], a["last"], p, owner, where))
    return out


def conflict_violations(history: History, conflicts: Sequence[dict]) -> List[str]:
    """conflicts: refused appends {"owner", "query", "after", "named"} (named:
    the position in the 23505 message): it must be a committed event that
    matches the query and lies after `after`."""
    out = []
    for c in conflicts:
        e = history.by_pos.get(c["named"])
        if e is None:
            out.append("append %r was refused for position %d, which is no committed tagged event"
                       % (c["owner"], c["named"]))
        elif c["named"] <= c["after"] or not query_matches(c["query"], e[1], e[2]):
            out.append("append %r (condition %s after %d) was refused for event %d (%s %s), "
                       "which does not match it" % (c["owner"], query_key(c["query"]), c["after"],
                                                   c["named"], e[1], sorted(e[2])))
    return out


def read_violations(history: History, reads: Sequence[dict]) -> List[str]:
    """reads: {"who", "query", "after", "positions"} for es_dcb_read (the
    positions returned, all of them) or {"who", "query", "after", "head"}
    for es_dcb_head.  A read returns exactly the committed matching events in
    (after, its last position]: one that committed later below that position
    means the read went past a position that could still become visible."""
    out = []
    for r in reads:
        if "positions" in r:
            got = r["positions"]
            last = got[-1] if got else r["after"]
            want = history.matching_between(r["query"], r["after"], last)
            if got != want:
                out.append("%s: es_dcb_read(%s, after %d) returned %s, the log has %s in (%d, %d]"
                           % (r["who"], query_key(r["query"]), r["after"], got[:20], want[:20],
                              r["after"], last))
        else:
            h = r["head"]
            e = history.by_pos.get(h)
            if h != r["after"] and (e is None or h < r["after"] or not query_matches(r["query"], e[1], e[2])):
                out.append("%s: es_dcb_head(%s, after %d) = %d, not a committed matching position"
                           % (r["who"], query_key(r["query"]), r["after"], h))
    return out


class CheckerTest(unittest.TestCase):
    """The checker flags broken histories (it is what makes the stress test
    worth anything)."""

    T1 = [{"tags": ["x"]}]

    def history(self):
        # positions 1..6; owners are append names
        return History([
            (1, "A", ["x"], "a1"),
            (2, "B", ["y"], "a2"),
            (3, "A", ["x", "y"], "a3"),
            (4, "C", [], "a4"),
            (5, "A", ["y"], "a5"),
            (6, "B", ["x"], "a5"),
        ])

    def test_matching(self):
        h = self.history()
        self.assertEqual(h.matching(self.T1), [1, 3, 6])
        self.assertEqual(h.matching([{"tags": ["x", "y"]}]), [3])
        self.assertEqual(h.matching([{"types": ["A"]}]), [1, 3, 5])
        self.assertEqual(h.matching([{"types": ["A"], "tags": ["y"]}, {"types": ["C"]}]), [3, 4, 5])
        self.assertEqual(h.matching([{"types": ["B", "C"], "tags": ["x"]}]), [6])
        self.assertEqual(h.matching(None), [1, 2, 3, 4, 5, 6])
        self.assertEqual(h.matching([]), [1, 2, 3, 4, 5, 6])
        self.assertEqual(h.matching_between(self.T1, 1, 6), [3, 6])

    def test_valid_history_passes(self):
        h = self.history()
        appends = [
            {"owner": "a3", "query": self.T1, "after": 1, "last": 3},      # nothing matching in (1, 3)
            {"owner": "a5", "query": self.T1, "after": 3, "last": 6},      # 4, 5 do not match
            {"owner": "a4", "query": [{"tags": ["x", "y"]}], "after": 3, "last": 4},
            {"owner": "a2", "query": [{"types": ["C"]}], "after": 0, "last": 2},
        ]
        self.assertEqual(condition_violations(h, appends), [])

    def test_violation_before_first_event(self):
        h = self.history()
        bad = {"owner": "a5", "query": self.T1, "after": 1, "last": 6}   # 3 matches, in (1, 5)
        v = condition_violations(h, [bad])
        self.assertEqual(len(v), 1, v)
        self.assertIn("event 3", v[0])
        self.assertIn("before its first event 5", v[0])
        # a type-only item, and a second item that matches
        v = condition_violations(h, [{"owner": "a5", "query": [{"types": ["C"]}], "after": 0, "last": 6}])
        self.assertEqual(len(v), 1, v)
        v = condition_violations(h, [{"owner": "a4", "query": [{"tags": ["z"]}, {"tags": ["y"], "types": ["B"]}],
                                      "after": 0, "last": 4}])
        self.assertEqual(len(v), 1, v)
        self.assertIn("event 2", v[0])

    def test_violation_between_own_events(self):
        h = History([(1, "A", ["x"], "p"), (2, "A", ["x"], "q"), (3, "A", ["x"], "p")])
        v = condition_violations(h, [{"owner": "p", "query": self.T1, "after": 0, "last": 3}])
        self.assertEqual(len(v), 1, v)
        self.assertIn("between its own events", v[0])

    def test_own_and_earlier_events_do_not_count(self):
        h = History([(1, "A", ["x"], "q"), (2, "A", ["x"], "p"), (3, "A", ["x"], "p"), (4, "A", ["x"], "r")])
        self.assertEqual(condition_violations(h, [{"owner": "p", "query": self.T1, "after": 1, "last": 3}]), [])

    def test_missing_append(self):
        v = condition_violations(self.history(), [{"owner": "zz", "query": self.T1, "after": 0, "last": 9}])
        self.assertEqual(len(v), 1, v)

    def test_conflicts(self):
        h = self.history()
        ok = {"owner": "c", "query": self.T1, "after": 2, "named": 3}
        self.assertEqual(conflict_violations(h, [ok]), [])
        for bad in ({"owner": "c", "query": self.T1, "after": 3, "named": 3},     # not after
                    {"owner": "c", "query": self.T1, "after": 0, "named": 2},     # no match
                    {"owner": "c", "query": self.T1, "after": 0, "named": 7}):    # not committed
            self.assertEqual(len(conflict_violations(h, [bad])), 1, bad)

    def test_reads(self):
        h = self.history()
        good = [{"who": "w", "query": self.T1, "after": 0, "positions": [1, 3]},
                {"who": "w", "query": self.T1, "after": 3, "positions": []},
                {"who": "w", "query": self.T1, "after": 1, "head": 3},
                {"who": "w", "query": self.T1, "after": 6, "head": 6}]
        self.assertEqual(read_violations(h, good), [])
        bad = [{"who": "w", "query": self.T1, "after": 0, "positions": [3]},      # skipped 1
               {"who": "w", "query": self.T1, "after": 0, "positions": [1, 2, 3]},  # 2 does not match
               {"who": "w", "query": self.T1, "after": 0, "positions": [3, 1]},   # order
               {"who": "w", "query": self.T1, "after": 0, "positions": [1, 7]},   # not committed
               {"who": "w", "query": self.T1, "after": 0, "head": 2},
               {"who": "w", "query": self.T1, "after": 0, "head": 8}]
        self.assertEqual(len(read_violations(h, bad)), len(bad))


# ---------------------------------------------------------------------------
# The stress run
# ---------------------------------------------------------------------------

def random_item(rnd: random.Random) -> dict:
    r = rnd.random()
    if r < 0.5:
        return {"tags": [rnd.choice(TAGS)]}
    if r < 0.65:
        return {"tags": sorted(rnd.sample(TAGS, 2))}
    if r < 0.8:
        return {"types": [rnd.choice(TYPES)], "tags": [rnd.choice(TAGS)]}
    if r < 0.9:
        return {"types": [rnd.choice(TYPES)]}                 # tag-less: the type's lock
    return {"types": sorted(rnd.sample(TYPES, 2))}


def query_pool(rnd: random.Random, n: int = 14) -> List[list]:
    pool: Dict[str, list] = {}
    while len(pool) < n:
        q = [random_item(rnd) for _ in range(1 if rnd.random() < 0.6 else 2)]
        pool[query_key(q)] = q
    return list(pool.values())


def new_events(rnd: random.Random, query: list, w: int, n: int) -> List[dict]:
    events = []
    for i in range(1 if rnd.random() < 0.7 else rnd.randint(2, 3)):
        r = rnd.random()
        if r < 0.7:
            # an event of the writer's own query (it matches others' conditions)
            item = rnd.choice(query)
            type_ = rnd.choice(item.get("types") or TYPES)
            tags = set(item.get("tags") or [])
            if rnd.random() < 0.5:
                tags.add(rnd.choice(TAGS))
        else:
            type_ = rnd.choice(TYPES)
            tags = set(rnd.sample(TAGS, rnd.randint(0, 3)))
        events.append({"type": type_, "data": {"w": w, "n": n, "i": i}, "tags": sorted(tags)})
    return events


def pick_level(rnd: random.Random) -> str:
    r = rnd.random()
    for level, p in LEVELS:
        if r < p:
            return level
        r -= p
    return LEVELS[0][0]


class Writer:
    def __init__(self, w: int, dsn: str, app: str, pool: List[list], deadline: float, mutant: bool = False):
        self.w = w
        self.app = app
        self.mutant = mutant
        self.dsn = dsn
        self.pool = pool
        self.deadline = deadline
        self.rnd = random.Random(SEED * 1000 + w)
        self.appends: List[dict] = []        # every es_dcb_append call and its fate
        self.reads: List[dict] = []
        self.stats: Dict[str, int] = {}
        self.errors: List[str] = []

    def count(self, what: str) -> None:
        self.stats[what] = self.stats.get(what, 0) + 1

    def run(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                conn.execute("SET statement_timeout = '60s'")
                self.loop(conn)
        except Exception as e:
            self.errors.append("writer %d: %r" % (self.w, e))

    def loop(self, conn: psycopg.Connection) -> None:
        rnd = self.rnd
        known: Dict[str, int] = {}           # per query: the last position read
        n = 0
        while time.monotonic() < self.deadline:
            n += 1
            query = rnd.choice(self.pool)
            qj = json.dumps(query)
            k = query_key(query)
            level = pick_level(rnd)
            conn.execute("BEGIN ISOLATION LEVEL " + level)
            rec = None
            try:
                start = known.get(k, 0)
                if rnd.random() < 0.75:
                    rows = conn.execute("SELECT position, type, tags FROM es_dcb_read(%s, %s::jsonb, %s)",
                                        (self.app, qj, start)).fetchall()
                    ps = [r[0] for r in rows]
                    self.reads.append({"who": "writer %d (%s)" % (self.w, level), "query": query,
                                       "after": start, "positions": ps})
                    after = ps[-1] if ps else start
                else:
                    after = conn.execute("SELECT es_dcb_head(%s, %s::jsonb, %s)", (self.app, qj, start)).fetchone()[0]
                    self.reads.append({"who": "writer %d (%s)" % (self.w, level), "query": query,
                                       "after": start, "head": after})
                known[k] = after
                if rnd.random() < 0.05:                  # decided: nothing to do
                    conn.execute("COMMIT")
                    self.count("no decision")
                    continue
                if rnd.random() < 0.3:
                    time.sleep(rnd.uniform(0, 0.004))    # others may append meanwhile
                events = new_events(rnd, query, self.w, n)
                conditional = rnd.random() < 0.85
                rec = {"owner": (self.w, n), "query": query if conditional else None,
                       "after": after if conditional else None, "nevents": len(events),
                       "level": level, "fate": "pending"}
                self.appends.append(rec)
                cond = json.dumps({"fail_if_events_match": query, "after": after}) if conditional else None
                if conditional and self.mutant:
                    # the mutant: the condition checked by the client, without
                    # the locks (as a store without them would)
                    h = conn.execute("SELECT es_dcb_head(%s, %s::jsonb, %s)", (self.app, qj, after)).fetchone()[0]
                    if h != after:
                        conn.execute("ROLLBACK")
                        rec["fate"] = "conflict"
                        rec["named"] = h
                        continue
                    cond = None
                rec["last"] = conn.execute("SELECT es_dcb_append(%s, %s::jsonb, %s::jsonb)",
                                           (self.app, json.dumps(events), cond)).fetchone()[0]
                rec["fate"] = "appended"
                r = rnd.random()
                if r < 0.1:
                    conn.execute("ROLLBACK")
                    rec["fate"] = "rolled back"
                    continue
                if r < 0.15:
                    time.sleep(rnd.uniform(0.002, 0.02))     # an open writer holds readers back
                conn.execute("COMMIT")
                rec["fate"] = "committed"
            except psycopg.errors.UniqueViolation as e:
                conn.execute("ROLLBACK")
                m = CONFLICT_RE.search(e.diag.message_primary or "")
                if rec is None or m is None:
                    raise
                rec["fate"] = "conflict"
                rec["named"] = int(m.group(1))
            except psycopg.errors.SerializationFailure:
                conn.execute("ROLLBACK")
                self.count("40001 " + ({"pending": "appending", "appended": "committing"}[rec["fate"]]
                                       if rec else "reading"))
                if rec is not None:
                    rec["fate"] = "serialization failure"
            except psycopg.errors.DeadlockDetected:
                conn.execute("ROLLBACK")
                self.count("40P01")
                if rec is not None:
                    rec["fate"] = "deadlock"


def aggregate_writer(dsn: str, app: str, stop: threading.Event, out: dict) -> None:
    """Aggregate events between the tagged ones (es_select followers see
    them, es_dcb_read must not), some rolled back; a seal now and then."""
    rnd = random.Random(SEED)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            last_seal = time.monotonic()
            while not stop.is_set():
                conn.execute("BEGIN")
                conn.execute("SELECT es_append(%s, %s::uuid, 1, 'Agg.Created', '\\x7b7d')", (app, uuid.uuid4()))
                conn.execute("ROLLBACK" if rnd.random() < 0.2 else "COMMIT")
                out["appends"] = out.get("appends", 0) + 1
                if time.monotonic() - last_seal > 2:
                    conn.execute("SELECT es_seal(%s)", (app,))
                    out["seals"] = out.get("seals", 0) + 1
                    last_seal = time.monotonic()
                time.sleep(rnd.uniform(0.005, 0.03))
    except Exception as e:
        out["error"] = repr(e)


class Follower:
    """Tails the log: es_dcb_read(after => last) for a query, or es_select."""

    def __init__(self, name: str, dsn: str, app: str, query: Optional[list], use_select: bool = False):
        self.name = name
        self.app = app
        self.dsn = dsn
        self.query = query
        self.use_select = use_select
        self.received: List[int] = []
        self.errors: List[str] = []
        self.target: Optional[int] = None     # set once the writers are done
        self.polls = 0

    def run(self) -> None:
        rnd = random.Random(SEED + hash(self.name) % 1000)
        last = 0
        deadline = None
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                while True:
                    page = rnd.choice([1, 7, 50, 500])
                    if self.use_select:
                        rows = conn.execute("SELECT id FROM es_select(%s, %s, %s)", (self.app, last + 1, page)).fetchall()
                    else:
                        rows = conn.execute("SELECT position FROM es_dcb_read(%s, %s::jsonb, %s, %s)",
                                            (self.app, json.dumps(self.query) if self.query is not None else None,
                                             last, page)).fetchall()
                    self.polls += 1
                    for (p,) in rows:
                        if p <= last:
                            self.errors.append("%s: position %d after %d" % (self.name, p, last))
                        self.received.append(p)
                        last = max(last, p)
                    if self.target is not None:
                        if last >= self.target:
                            return
                        deadline = deadline or time.monotonic() + 30
                        if time.monotonic() > deadline:
                            self.errors.append("%s: stuck at %d, the log goes to %d" % (self.name, last, self.target))
                            return
                    if not rows:
                        time.sleep(0.002)
        except Exception as e:
            self.errors.append("%s: %r" % (self.name, e))


def run_stress(dsn: str, app: str, seconds: float, writers_n: int, mutant: bool = False) -> dict:
    """Creates app, runs writers (and, unless mutant, followers and the
    aggregate writer) for `seconds`, then checks.  Returns {"violations":
    {category: [text]}, "summary": {...}, "errors": [...]}."""
    t0 = time.monotonic()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT es_create_application(%s)", (app,))
    rnd = random.Random(SEED)
    pool = query_pool(rnd)
    writers = [Writer(w, dsn, app, pool, time.monotonic() + seconds, mutant) for w in range(writers_n)]
    followers = [] if mutant else [
        Follower("dcb_read(all)", dsn, app, None),
        Follower("dcb_read(%s)" % TAGS[0], dsn, app, [{"tags": [TAGS[0]]}]),
        Follower("dcb_read(two items)", dsn, app, [{"types": [TYPES[0]]}, {"tags": sorted(TAGS[1:3])}]),
        Follower("es_select", dsn, app, None, use_select=True),
    ]
    stop_agg = threading.Event()
    agg: dict = {}
    wthreads = [threading.Thread(target=w.run, name="writer%d" % w.w) for w in writers]
    fthreads = [threading.Thread(target=f.run, name=f.name) for f in followers]
    athreads = [] if mutant else [threading.Thread(target=aggregate_writer, args=(dsn, app, stop_agg, agg))]
    for t in fthreads + wthreads + athreads:
        t.start()
    for t in wthreads:
        t.join(seconds + 120)
    stop_agg.set()
    for t in athreads:
        t.join(30)
    stuck = [t.name for t in wthreads + athreads if t.is_alive()]
    write_time = time.monotonic() - t0

    with psycopg.connect(dsn, autocommit=True) as conn:
        log = conn.execute(
            "SELECT e.notification_id, e.topic, e.tags FROM es_stored_events e "
            "JOIN es_applications a ON a.id = e.application_id WHERE a.name = %s ORDER BY 1",
            (app,)).fetchall()
        full = conn.execute("SELECT position, type, tags, data FROM es_dcb_read(%s)", (app,)).fetchall()
        problems = conn.execute("SELECT kind, notification_id, problem, detail FROM es_verify_log(%s)",
                                (app,)).fetchall()
    all_ids = [r[0] for r in log]
    tagged = [r for r in log if r[2] is not None]
    for f in followers:
        if f.use_select:
            f.target = all_ids[-1] if all_ids else 0
        else:
            m = [r[0] for r in tagged if query_matches(f.query, r[1], r[2])]
            f.target = m[-1] if m else 0
    for t in fthreads:
        t.join(60)
    stuck += [t.name for t in fthreads if t.is_alive()]

    errors = ["still running: %s" % stuck] if stuck else []
    errors += [e for w in writers for e in w.errors] + [e for f in followers for e in f.errors]
    if "error" in agg:
        errors.append("aggregate writer: " + agg["error"])

    appends = [a for w in writers for a in w.appends]
    reads = [r for w in writers for r in w.reads]
    fates: Dict[str, int] = {}
    for a in appends:
        key = ("conditional " if a["query"] is not None else "unconditional ") + a["fate"]
        fates[key] = fates.get(key, 0) + 1
    stats: Dict[str, int] = {}
    for w in writers:
        for k, v in w.stats.items():
            stats[k] = stats.get(k, 0) + v
    summary = {"app": app, "seed": SEED, "writers": writers_n, "seconds": seconds,
               "write_time": round(write_time, 1), "log": len(all_ids), "tagged": len(tagged),
               "reads": len(reads), "aggregate_appends": agg.get("appends", 0), "seals": agg.get("seals", 0),
               "fates": fates, "other": stats, "follower_polls": {f.name: f.polls for f in followers}}

    v: Dict[str, List[str]] = {k: [] for k in ("log", "fate", "condition", "conflict", "read", "follower", "verify")}
    # the full read is the tagged part of the table, and names its appends
    if [r[0] for r in full] != [r[0] for r in tagged]:
        v["log"].append("es_dcb_read(app) returns %d positions, es_stored_events has %d tagged events"
                        % (len(full), len(tagged)))
    owner_of: Dict[int, tuple] = {}
    by_owner: Dict[tuple, List[Tuple[int, int]]] = {}
    for p, type_, tags, data in full:
        o = (data["w"], data["n"])
        owner_of[p] = o
        by_owner.setdefault(o, []).append((data["i"], p))
    history = History([(r[0], r[1], r[2], owner_of.get(r[0])) for r in tagged])

    # (e) the fate of every append is what the log shows
    committed = {a["owner"]: a for a in appends if a["fate"] == "committed"}
    for a in appends:
        got = sorted(by_owner.get(a["owner"], []))
        if a["fate"] == "committed":
            if [i for i, _ in got] != list(range(a["nevents"])):
                v["fate"].append("committed append %r has events %s in the log" % (a["owner"], got))
            elif [p for _, p in got] != sorted(p for _, p in got) or got[-1][1] != a["last"]:
                v["fate"].append("append %r returned %d, its events are at %s" % (a["owner"], a["last"], got))
            a["positions"] = [p for _, p in got]
        elif got:
            v["fate"].append("append %r (%s) has events in the log: %s" % (a["owner"], a["fate"], got))
    for o in by_owner:
        if o not in committed:
            v["fate"].append("events of %r in the log, but no writer committed it" % (o,))

    # (a) conditions, conflicts; (r) reads
    conditional_ok = [a for a in committed.values() if a["query"] is not None and "positions" in a]
    conflicts = [a for a in appends if a["fate"] == "conflict"]
    v["condition"] = condition_violations(history, conditional_ok)
    v["conflict"] = conflict_violations(history, conflicts)
    v["read"] = read_violations(history, reads)

    # (b) followers: exactly the committed events of their query, in order
    for f in followers:
        want = all_ids if f.use_select else history.matching(f.query)
        if f.received != want:
            missing = sorted(set(want) - set(f.received))
            extra = sorted(set(f.received) - set(want))
            dup = len(f.received) - len(set(f.received))
            v["follower"].append("%s received %d positions, the log has %d: missing %s, not committed %s, "
                                 "%d duplicates" % (f.name, len(f.received), len(want), missing[:20], extra[:20], dup))

    # (c) integrity
    v["verify"] = ["es_verify_log: %r" % (p,) for p in problems]

    summary.update({"conditional_successes": len(conditional_ok), "conflicts": len(conflicts),
                    "rolled_back": sum(1 for a in appends if a["fate"] == "rolled back"),
                    "aggregate_events": len(all_ids) - len(tagged),
                    "violations": {k: len(x) for k, x in v.items() if x},
                    "time": round(time.monotonic() - t0, 1)})
    REPORT.append("DCB stress: %s" % json.dumps(summary, sort_keys=True))
    return {"violations": v, "summary": summary, "errors": errors}


class DcbStressTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.admin_dsn, cls.dsn = es_testdb.create(TEST_DB)

    @classmethod
    def tearDownClass(cls):
        for line in REPORT:
            sys.stderr.write(line + "\n")
        if os.environ.get("ES_DCB_STRESS_KEEP"):
            return
        es_testdb.drop(cls.admin_dsn, TEST_DB)

    def test_concurrent_read_decide_append(self):
        """The stress run: no violation of any kind, and not vacuous."""
        r = run_stress(self.dsn, APP, SECONDS, WRITERS)
        self.assertEqual(r["errors"], [])
        found = [x for xs in r["violations"].values() for x in xs]
        REPORT.extend("VIOLATION: %s" % x for x in found[:50])
        self.assertEqual(len(found), 0, "%d violations (seed %d), the first: %s" % (len(found), SEED, found[:5]))
        s = r["summary"]
        self.assertGreaterEqual(s["conditional_successes"], MIN_CONDITIONAL_SUCCESSES, s)
        self.assertGreaterEqual(s["conflicts"], MIN_CONFLICTS, s)
        self.assertGreater(s["rolled_back"], 0, s)
        self.assertGreater(s["aggregate_events"], 0, s)
        self.assertGreater(s["seals"], 0, s)

    def test_mutant_unlocked_client_check_is_caught(self):
        """The same run with the condition checked by the client instead
        (es_dcb_head after `after`, then an unconditional append: no locks,
        as a store without them): the checker finds appends whose condition
        was violated.  Proves the harness can see the race it guards."""
        found = 0
        for attempt in range(3):
            r = run_stress(self.dsn, "%s_mutant%d" % (APP, attempt), MUTANT_SECONDS, WRITERS, mutant=True)
            self.assertEqual(r["errors"], [])
            found = len(r["violations"]["condition"])
            others = {k: x for k, x in r["violations"].items() if k != "condition" and x}
            self.assertEqual(others, {})
            if found:
                REPORT.append("mutant caught: %s" % r["violations"]["condition"][0])
                break
        self.assertGreater(found, 0, "the unlocked check never let a conflicting append through")


if __name__ == "__main__":
    unittest.main()
