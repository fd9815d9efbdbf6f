#!/usr/bin/python3
"""The course-subscription example of the DCB specification (dcb.events),
from Python through psycopg 3, on es_dcb_read and es_dcb_append.

Events (each a tagged event of one application):
  CourseDefined {courseId, capacity}                 tags course:<id>
  CourseCapacityChanged {courseId, newCapacity}      tags course:<id>
  StudentSubscribedToCourse {studentId, courseId}    tags student:<id>, course:<id>

Commands, each deciding on a decision model built from one read and
appending with the condition "fail if an event of that read's query came
after its last position" (23505 otherwise):
  define course       the course must not exist
  change capacity     the course must exist; the capacity must differ
  subscribe student   the course must exist; not fully booked (its
                      subscriptions < its capacity); the student not yet
                      subscribed to it; the student subscribed to fewer
                      than 5 courses

The module-level API (Projection, build_decision_model, Courses) is the
example; the tests drive it: the happy path, each rule, two students racing
for the last seat (one wins, the other gets 23505 and, deciding again, is
refused as fully booked), and two subscriptions about different students and
courses that do not wait for each other.

Run against a cluster with the extension installed (the module creates and
drops its database, ES_DCB_COURSE_DB, default es_dcb_course):

    ES_TEST_DSN="host=/path/socket port=54326 user=postgres dbname=postgres" \\
        /usr/bin/python3 test/client/test_dcb_course.py -v
"""

import json
import os
import sys
import threading
import unittest
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import psycopg
import psycopg.errors
from psycopg import sql

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import es_testdb  # noqa: E402

TEST_DB = os.environ.get("ES_DCB_COURSE_DB", "es_dcb_course")
MAX_COURSES_PER_STUDENT = 5


# ---------------------------------------------------------------------------
# The example: decision models and commands
# ---------------------------------------------------------------------------

class Rejected(Exception):
    """A command that its decision model refuses (a business rule)."""


@dataclass
class Event:
    position: int
    type: str
    data: Any
    tags: List[str]


@dataclass
class Projection:
    """A fold over the events of some types carrying all of some tags (the
    specification's createProjection): its query item is {types, tags}."""
    initial: Any
    handlers: Dict[str, Callable[[Any, Event], Any]]
    tags: List[str]

    def item(self) -> dict:
        return {"types": sorted(self.handlers), "tags": sorted(self.tags)}

    def matches(self, e: Event) -> bool:
        return e.type in self.handlers and set(self.tags) <= set(e.tags)


def course_exists(course_id: str) -> Projection:
    return Projection(False, {"CourseDefined": lambda s, e: True}, ["course:" + course_id])


def course_capacity(course_id: str) -> Projection:
    return Projection(0, {"CourseDefined": lambda s, e: e.data["capacity"],
                          "CourseCapacityChanged": lambda s, e: e.data["newCapacity"]},
                      ["course:" + course_id])


def number_of_course_subscriptions(course_id: str) -> Projection:
    return Projection(0, {"StudentSubscribedToCourse": lambda s, e: s + 1}, ["course:" + course_id])


def student_already_subscribed(student_id: str, course_id: str) -> Projection:
    return Projection(False, {"StudentSubscribedToCourse": lambda s, e: True},
                      ["student:" + student_id, "course:" + course_id])


def number_of_student_subscriptions(student_id: str) -> Projection:
    return Projection(0, {"StudentSubscribedToCourse": lambda s, e: s + 1}, ["student:" + student_id])


def build_decision_model(conn: psycopg.Connection, app: str,
                         projections: Dict[str, Projection]) -> Tuple[Dict[str, Any], dict]:
    """One es_dcb_read of the union of the projections' items; each event is
    folded into every projection it matches.  Returns the state and the
    append condition: the same query, after the last position read."""
    query = [p.item() for p in projections.values()]
    state = {name: p.initial for name, p in projections.items()}
    after = 0
    for position, type_, data, tags in conn.execute(
            "SELECT position, type, data, tags FROM es_dcb_read(%s, %s::jsonb)", (app, json.dumps(query))):
        e = Event(position, type_, data, tags)
        for name, p in projections.items():
            if p.matches(e):
                state[name] = p.handlers[e.type](state[name], e)
        after = position
    return state, {"fail_if_events_match": query, "after": after}


class Courses:
    """The commands of the example, on one connection.  `between`, if
    given, runs after the decision and before the append (tests use it to
    line up concurrent commands)."""

    def __init__(self, conn: psycopg.Connection, app: str):
        self.conn = conn
        self.app = app

    def _append(self, events: List[dict], condition: dict) -> int:
        return self.conn.execute("SELECT es_dcb_append(%s, %s::jsonb, %s::jsonb)",
                                 (self.app, json.dumps(events), json.dumps(condition))).fetchone()[0]

    def define_course(self, course_id: str, capacity: int, between: Optional[Callable] = None) -> int:
        state, cond = build_decision_model(self.conn, self.app, {"exists": course_exists(course_id)})
        if state["exists"]:
            raise Rejected('Course with id "%s" already exists' % course_id)
        if between:
            between()
        return self._append([{"type": "CourseDefined", "data": {"courseId": course_id, "capacity": capacity},
                              "tags": ["course:" + course_id]}], cond)

    def change_capacity(self, course_id: str, new_capacity: int, between: Optional[Callable] = None) -> int:
        state, cond = build_decision_model(self.conn, self.app, {
            "exists": course_exists(course_id), "capacity": course_capacity(course_id)})
        if not state["exists"]:
            raise Rejected('Course "%s" does not exist' % course_id)
        if state["capacity"] == new_capacity:
            raise Rejected("New capacity %d is the same as the current capacity" % new_capacity)
        if between:
            between()
        return self._append([{"type": "CourseCapacityChanged",
                              "data": {"courseId": course_id, "newCapacity": new_capacity},
                              "tags": ["course:" + course_id]}], cond)

    def subscribe(self, student_id: str, course_id: str, between: Optional[Callable] = None) -> int:
        state, cond = build_decision_model(self.conn, self.app, {
            "courseExists": course_exists(course_id),
            "courseCapacity": course_capacity(course_id),
            "numberOfCourseSubscriptions": number_of_course_subscriptions(course_id),
            "studentAlreadySubscribed": student_already_subscribed(student_id, course_id),
            "numberOfStudentSubscriptions": number_of_student_subscriptions(student_id)})
        if not state["courseExists"]:
            raise Rejected('Course "%s" does not exist' % course_id)
        if state["numberOfCourseSubscriptions"] >= state["courseCapacity"]:
            raise Rejected('Course "%s" is already fully booked' % course_id)
        if state["studentAlreadySubscribed"]:
            raise Rejected("Student already subscribed to this course")
        if state["numberOfStudentSubscriptions"] >= MAX_COURSES_PER_STUDENT:
            raise Rejected("Student already subscribed to %d courses" % MAX_COURSES_PER_STUDENT)
        if between:
            between()
        return self._append([{"type": "StudentSubscribedToCourse",
                              "data": {"studentId": student_id, "courseId": course_id},
                              "tags": ["student:" + student_id, "course:" + course_id]}], cond)


def with_retries(command: Callable[[], int], attempts: int = 5) -> int:
    """Runs a command again (a new decision) when its condition failed."""
    for i in range(attempts):
        try:
            return command()
        except psycopg.errors.UniqueViolation:
            if i == attempts - 1:
                raise
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------

class CourseTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.admin_dsn, cls.dsn = es_testdb.create(TEST_DB)

    @classmethod
    def tearDownClass(cls):
        es_testdb.drop(cls.admin_dsn, TEST_DB)

    def setUp(self):
        self.conns: List[psycopg.Connection] = []
        self.app = "courses_" + self._testMethodName.replace("test_", "")
        self.admin = self.connect()
        self.admin.execute("SELECT es_create_application(%s)", (self.app,))

    def tearDown(self):
        for c in self.conns:
            c.close()

    def connect(self, **settings: str) -> psycopg.Connection:
        conn = psycopg.connect(self.dsn, autocommit=True)
        self.conns.append(conn)
        conn.execute("SET statement_timeout = '20s'")
        for k, v in settings.items():
            conn.execute(sql.SQL("SET {} = {}").format(sql.Identifier(k), sql.Literal(v)))
        return conn

    def courses(self, **settings: str) -> Courses:
        return Courses(self.connect(**settings), self.app)

    def events(self, query: Optional[list] = None) -> List[Tuple[int, str, Any, List[str]]]:
        return [tuple(r) for r in self.admin.execute(
            "SELECT position, type, data, tags FROM es_dcb_read(%s, %s::jsonb)",
            (self.app, json.dumps(query) if query is not None else None))]

    def assertRejected(self, message: str, command: Callable[[], int]) -> None:
        before = self.events()
        with self.assertRaises(Rejected) as cm:
            command()
        self.assertEqual(str(cm.exception), message)
        self.assertEqual(self.events(), before, "a refused command appended")

    # -- the happy path and the rules ----------------------------------------

    def test_happy_path(self):
        c = self.courses()
        p1 = c.define_course("c1", 2)
        p2 = c.define_course("c2", 10)
        p3 = c.change_capacity("c1", 3)
        p4 = c.subscribe("s1", "c1")
        p5 = c.subscribe("s2", "c1")
        p6 = c.subscribe("s1", "c2")
        self.assertEqual([p1, p2, p3, p4, p5, p6], sorted({p1, p2, p3, p4, p5, p6}))
        self.assertEqual(self.events(), [
            (p1, "CourseDefined", {"courseId": "c1", "capacity": 2}, ["course:c1"]),
            (p2, "CourseDefined", {"courseId": "c2", "capacity": 10}, ["course:c2"]),
            (p3, "CourseCapacityChanged", {"courseId": "c1", "newCapacity": 3}, ["course:c1"]),
            (p4, "StudentSubscribedToCourse", {"studentId": "s1", "courseId": "c1"}, ["course:c1", "student:s1"]),
            (p5, "StudentSubscribedToCourse", {"studentId": "s2", "courseId": "c1"}, ["course:c1", "student:s2"]),
            (p6, "StudentSubscribedToCourse", {"studentId": "s1", "courseId": "c2"}, ["course:c2", "student:s1"]),
        ])
        # the decision models see it all
        state, cond = build_decision_model(self.admin, self.app, {
            "capacity": course_capacity("c1"), "subs": number_of_course_subscriptions("c1"),
            "s1": number_of_student_subscriptions("s1")})
        self.assertEqual(state, {"capacity": 3, "subs": 2, "s1": 2})
        self.assertEqual(cond["after"], p6)
        self.assertEqual(self.admin.execute("SELECT es_dcb_head(%s, %s::jsonb)",
                                            (self.app, json.dumps(cond["fail_if_events_match"]))).fetchone()[0], p6)
        self.assertEqual([r[0] for r in self.events([{"tags": ["course:c1"]}])], [p1, p3, p4, p5])
        self.assertEqual([r[0] for r in self.events([{"tags": ["student:s1"]}])], [p4, p6])
        self.assertEqual(self.admin.execute("SELECT count(*) FROM es_verify_log(%s)", (self.app,)).fetchone()[0], 0)

    def test_define_course_twice(self):
        c = self.courses()
        c.define_course("c1", 10)
        self.assertRejected('Course with id "c1" already exists', lambda: c.define_course("c1", 20))
        c.define_course("c2", 10)           # another course is fine

    def test_change_capacity_rules(self):
        c = self.courses()
        self.assertRejected('Course "c1" does not exist', lambda: c.change_capacity("c1", 5))
        c.define_course("c1", 5)
        self.assertRejected("New capacity 5 is the same as the current capacity", lambda: c.change_capacity("c1", 5))
        c.change_capacity("c1", 6)
        self.assertRejected("New capacity 6 is the same as the current capacity", lambda: c.change_capacity("c1", 6))
        c.change_capacity("c1", 5)

    def test_subscribe_rules(self):
        c = self.courses()
        self.assertRejected('Course "c1" does not exist', lambda: c.subscribe("s1", "c1"))
        c.define_course("c1", 2)
        c.subscribe("s1", "c1")
        self.assertRejected("Student already subscribed to this course", lambda: c.subscribe("s1", "c1"))
        c.subscribe("s2", "c1")
        self.assertRejected('Course "c1" is already fully booked', lambda: c.subscribe("s3", "c1"))
        # the capacity decides: raised, there is room again; lowered, none
        c.change_capacity("c1", 3)
        c.subscribe("s3", "c1")
        c.change_capacity("c1", 1)
        self.assertRejected('Course "c1" is already fully booked', lambda: c.subscribe("s4", "c1"))

    def test_student_at_most_five_courses(self):
        c = self.courses()
        for i in range(MAX_COURSES_PER_STUDENT + 1):
            c.define_course("k%d" % i, 10)
        for i in range(MAX_COURSES_PER_STUDENT):
            c.subscribe("s1", "k%d" % i)
        self.assertRejected("Student already subscribed to 5 courses",
                            lambda: c.subscribe("s1", "k%d" % MAX_COURSES_PER_STUDENT))
        c.subscribe("s2", "k%d" % MAX_COURSES_PER_STUDENT)    # another student may

    def test_stale_decision_fails(self):
        """A decision made before another command's event: the append's
        condition fails (23505), and deciding again gives the rule."""
        a, b = self.courses(), self.courses()
        a.define_course("c1", 1)

        def meanwhile():
            b.subscribe("s2", "c1")

        with self.assertRaises(psycopg.errors.UniqueViolation):
            a.subscribe("s1", "c1", between=meanwhile)
        self.assertRejected('Course "c1" is already fully booked', lambda: with_retries(lambda: a.subscribe("s1", "c1")))
        # an event outside the query does not make it stale
        a.define_course("c2", 1)
        a.subscribe("s1", "c2", between=lambda: b.define_course("c3", 1))

    # -- concurrency ------------------------------------------------------------

    def race_for_last_seat(self, level: Optional[str], round_: int) -> None:
        setup = self.courses()
        course = "c_%s_%d" % ((level or "autocommit").replace(" ", "_").lower(), round_)
        setup.define_course(course, 2)
        first = course + "_s0"
        setup.subscribe(first, course)            # one seat left
        barrier = threading.Barrier(2, timeout=20)
        results: Dict[str, Any] = {}

        def student(name: str) -> None:
            c = self.courses()
            try:
                if level:
                    c.conn.execute("BEGIN ISOLATION LEVEL " + level)
                try:
                    results[name] = c.subscribe(name, course, between=barrier.wait)
                    if level:
                        c.conn.execute("COMMIT")
                except psycopg.Error:
                    if level:
                        c.conn.execute("ROLLBACK")
                    raise
            except Exception as e:
                results[name] = e

        threads = [threading.Thread(target=student, args=(course + n,)) for n in ("_s1", "_s2")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        self.assertFalse(any(t.is_alive() for t in threads), "a student hangs")
        won = [n for n, r in results.items() if isinstance(r, int)]
        lost = [n for n, r in results.items() if isinstance(r, psycopg.errors.UniqueViolation)]
        self.assertEqual((len(won), len(lost)), (1, 1), results)
        self.assertEqual(results[lost[0]].sqlstate, "23505")
        # the loser decides again: the rule refuses
        self.assertRejected('Course "%s" is already fully booked' % course,
                            lambda: with_retries(lambda: self.courses().subscribe(lost[0], course)))
        subs = [r[2]["studentId"] for r in self.events([{"types": ["StudentSubscribedToCourse"],
                                                         "tags": ["course:" + course]}])]
        self.assertEqual(subs, [first, won[0]])

    def test_race_for_last_seat(self):
        for level in (None, "READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"):
            with self.subTest(level=level or "autocommit"):
                for round_ in range(3):
                    self.race_for_last_seat(level, round_)

    def test_disjoint_subscriptions_do_not_wait(self):
        """Student s1 to c1 holds its transaction open after appending; s2 to
        c2 completes meanwhile (a lock wait would hit lock_timeout).  The
        control: s3 to c1 overlaps (c1's subscriptions) and does wait."""
        setup = self.courses()
        for course in ("c1", "c2"):
            setup.define_course(course, 10)
        holder = self.courses()
        holder.conn.execute("BEGIN")
        p1 = holder.subscribe("s1", "c1")

        # the holder keeps its locks until it commits, below: any wait for
        # them would end in lock_timeout (55P03), not in a subscription
        other = self.courses(lock_timeout="1s", statement_timeout="5s")
        p2 = other.subscribe("s2", "c2")
        self.assertGreater(p2, p1)
        # the same for a new course and a capacity change elsewhere
        other.define_course("c3", 1)
        other.change_capacity("c2", 11)

        overlapping = self.courses(lock_timeout="300ms", statement_timeout="5s")
        with self.assertRaises(psycopg.errors.LockNotAvailable):
            overlapping.subscribe("s3", "c1")
        holder.conn.execute("COMMIT")
        overlapping.subscribe("s3", "c1")
        subs = [r[2]["studentId"] for r in self.events([{"tags": ["course:c1"], "types": ["StudentSubscribedToCourse"]}])]
        self.assertEqual(subs, ["s1", "s3"])

    def test_many_students_one_course(self):
        """Eight students race (with retries) for three seats: exactly three
        are subscribed, the others refused as fully booked."""
        self.courses().define_course("popular", 3)
        barrier = threading.Barrier(8, timeout=20)
        results: Dict[str, Any] = {}

        def student(name: str) -> None:
            c = self.courses()
            try:
                first = [True]

                def between():
                    if first[0]:
                        first[0] = False
                        barrier.wait()
                results[name] = with_retries(lambda: c.subscribe(name, "popular", between=between), attempts=20)
            except Exception as e:
                results[name] = e

        threads = [threading.Thread(target=student, args=("s%d" % i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        won = sorted(n for n, r in results.items() if isinstance(r, int))
        refused = [n for n, r in results.items() if isinstance(r, Rejected)]
        self.assertEqual((len(won), len(refused)), (3, 5), results)
        subs = sorted(r[2]["studentId"] for r in self.events([{"types": ["StudentSubscribedToCourse"]}]))
        self.assertEqual(subs, won)


if __name__ == "__main__":
    unittest.main()
