#!/usr/bin/python3
"""A bounded fuzz test: every SQL function of the eventsourcing extension,
called by an ordinary role with hostile arguments.

Run against a cluster that has the extension installed and preloaded:

    ES_TEST_DSN="host=/path/to/socket port=54325 user=postgres dbname=postgres" \\
        /usr/bin/python3 test/client/test_fuzz.py -v

The module creates (and afterwards drops) its own database, es_fuzz, and two
roles, es_fuzz_role (LOGIN, never a superuser: admin on fuzz_a and fuzz_b,
read on fuzz_ro, nothing on fuzz_hidden, and the database-wide create) and
es_fuzz_other (a grantee).  The fuzzer draws ES_FUZZ_CALLS calls (default
2200, about six seconds) from a random.Random seeded with ES_FUZZ_SEED (default:
fixed, printed at the start), so a failure reproduces with the same seed.
Each call runs as es_fuzz_role in its own transaction (autocommit; never a
rollback of a successful append), a few in read-only, REPEATABLE READ or
SERIALIZABLE transactions.  The functions called: every es_append form,
es_select and es_events with every optional argument (positional and named),
es_max_notification_id, es_tracking_position, es_head, es_verify, es_seal,
es_verify_log, es_channel, es_wait (small timeouts, and some that only
statement_timeout ends), es_partition, the three es_replay forms (plain,
ORDER BY, FILTER, as window functions, GROUP BY; rows from es_events or made
up), es_define_fold, es_set_fold_function, es_set_snapshot_every, es_state,
es_snapshot, es_create_application, es_grant, es_revoke, es_has_privilege,
es_configure (every NULL/true/false combination, positional and named, and
unknown applications: the fuzzer switches compression and encryption on and
off in the applications it administers, so appends, reads, snapshots, folds
and forgetting run on encrypted and compressed states), es_forget (random,
real, encrypted and already forgotten aggregates), es_select_stored (the
hostile start and max_count of es_select), es_rewrap_keys() (only as the role,
never as a superuser), the trigger function es_append_only_guard() called
directly, and the Dynamic Consistency Boundary functions: es_dcb_append (events
and conditions as jsonb with wrong types at every path, unknown keys, empty and
over-long types and tags, duplicated tags, unicode and escapes, deep and huge
data, data_base64 valid and not, decoding to bytes, to JSON text and to
numbers jsonb cannot hold; conditions with "after" from real reads, in the
same statement from es_dcb_head, 0, huge, negative, fractional, not a number;
queries of up to 250 items), es_dcb_read (hostile query, after and max_count)
and es_dcb_head, on the applications above (tagged events beside aggregate
events: es_append, es_state, es_forget, ... meet their aggregates too).

What must hold, whatever the arguments:

1. the server never crashes: the role's backend and a superuser connection
   opened before the run (a sentinel: a crashed backend makes the postmaster
   end every connection; pg_postmaster_start_time() does not change on such
   a crash-restart, so it alone would miss one) keep their pids to the end,
   pg_postmaster_start_time() is unchanged and a fresh connection runs SELECT 1;
2. no error has SQLSTATE class XX (internal) or 58 (system), or any class but
   the expected ones (EXPECTED_CLASSES); the call and message are printed;
3. a call that fails writes nothing: the state of every application (through
   es_max_notification_id, count(*) FROM es_select(app, 1, 1000000), and the
   tables: events, tracking positions, applications, folds, grants, seals,
   snapshots, data keys, es_dcb_index) is the same before and after it; a successful call in a
   read-only transaction writes nothing either; a successful call that is not
   an append adds no event and moves no tracking position;
4. a refused call uses up no notification id: the ids of each successful
   append are exactly the next ones (highest id handed out + 1, ...), and at
   the end one more append to every application gets highest + 1; a
   successful es_dcb_append takes as many ids as it has events, exactly the
   next ones, and returns the last;
5. the role never runs a function it has no EXECUTE privilege on (the fold
   function es_fuzz_fold_secret announces itself with a NOTICE), and fold
   functions run as the role (es_fuzz_fold says as whom);
6. the stored form follows the application's settings: after a successful
   append, its events read back (es_select, as the superuser) exactly as sent,
   and es_select_stored shows form 1 with the encrypted flag when the
   application encrypts, no encrypted flag when it does not, form 0 when it
   neither compresses nor encrypts; es_configure sets what it was given and
   keeps what was NULL; es_select_stored returns es_select's rows (ids,
   aggregates, versions, topics, hashes), the state as stored; the tagged
   events of a successful es_dcb_append read back (es_dcb_read, as the
   superuser) at their positions with their types, their tags sorted and
   distinct, the data as sent (jsonb's text of "data", the bytes of
   "data_base64", as data when they are JSON text), one es_dcb_index row per
   tag and one for the type, and stored as the application's settings say;
7. forgetting: a successful es_forget (a write: it destroys the data key and
   deletes snapshots, but appends nothing) leaves the aggregate's encrypted
   events with state NULL and the others readable, no snapshot, a destroyed
   key, and a chain that verifies; an append to a forgotten aggregate never
   succeeds, and one that is otherwise valid fails with 55000 (and, like
   every refused call, writes nothing and uses up no id);
   es_rewrap_keys() as the role always fails with 42501;
8. tagged events follow a model (every tagged event the superuser and the
   role appended, with its position, type and tags): es_dcb_read returns
   exactly the model's matching events after `after` (at most max_count), in
   any transaction mode; es_dcb_head the last of them (or `after`, or 0); an
   es_dcb_append whose condition the model says matches an event after
   "after" never succeeds, and one without a condition or whose condition
   matches nothing never fails with 23505; calls whose arguments src/dcb.c
   must refuse (as the fuzzer reads them) never succeed.

ES_FUZZ_NO_DEEP_PATHS=1 leaves out fold paths of 120000 segments (which crash
the server as of this writing: folding any operation on such a path builds a
document that EsNodePush serializes recursively, without check_stack_depth),
to explore past that bug; the default keeps them.  After a refused append, the
next call is sometimes its retry without what could not succeed, in the same
session, as clients do; ES_FUZZ_NO_RETRY=1 leaves those out (as of this
writing a retry can record events encrypted under the data key that the
refused append made and rolled back, cached by its backend: unreadable by any
other session, 22P03, and the superuser's state query after it stops the run).
ES_FUZZ_VERBOSE=1 prints every call with its outcome, and an example message
for each SQLSTATE.
The summary (calls, successes, errors by SQLSTATE) is printed after unittest's
result line, which test/scripts/test.sh counts.
"""

import base64
import collections
import json
import os
import random
import sys
import time
import unittest
import uuid
from typing import Any, Dict, List, Optional

import psycopg
import psycopg.errors
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.types.string import TextLoader

TEST_DB = "es_fuzz"
ROLE = "es_fuzz_role"
OTHER = "es_fuzz_other"
APP_A, APP_B, APP_RO, APP_HIDDEN = "fuzz_a", "fuzz_b", "fuzz_ro", "fuzz_hidden"
CORE_APPS = [APP_A, APP_B, APP_RO, APP_HIDDEN]

DEFAULT_SEED = 20240601
DEFAULT_CALLS = 2200
# A backstop only: the run stops early (and says so) past this many seconds.
MAX_SECONDS = float(os.environ.get("ES_FUZZ_MAX_SECONDS", "60"))
NO_DEEP_PATHS = os.environ.get("ES_FUZZ_NO_DEEP_PATHS", "") not in ("", "0")
NO_RETRY = os.environ.get("ES_FUZZ_NO_RETRY", "") not in ("", "0")
VERBOSE = os.environ.get("ES_FUZZ_VERBOSE", "") not in ("", "0")   # print every call

# Error classes a hostile call may end with.  Anything else fails the test;
# XX (internal error) and 58 (system error) above all.
# An otherwise valid append to a forgotten aggregate: 55000, or refused
# before it gets that far (the role revoked its own admin, read only,
# serialization, a timeout).
FORGOTTEN_OK = {"55000", "42501", "25006", "40001", "40P01", "57014"}
EXPECTED_CLASSES = {"22", "23", "25", "2B", "3D", "40", "42", "53", "54", "55", "57",
                    "0A", "39"}
FATAL_CLASSES = {"XX", "58"}

# ---------------------------------------------------------------------------
# Hostile values
# ---------------------------------------------------------------------------

BIGINTS = [None, 0, -1, 1, 2, 3, 2**31, 2**31 - 1, 2**62, 2**63 - 1, -2**63, -2**31]
INTS = [None, 0, -1, 1, 2, 3, 7, 2**31 - 1, -2**31, 2**31, -2**31 - 1, 1000000]

TEXTS = ["", " ", "x" * 300, "\u00e9" * 150, "y" * 2000, "it's", 'quo"te', "back\\slash",
         "new\nline", "tab\there", "PUBLIC", "public", "\u00fcn\u00efc\u00f6d\u00e9 \u2713",
         "\u5e94\u7528\u7a0b\u5e8f", "\U0001f984\U0001f984", "e\u0301", "\u2028sep",
         "a" * 255, "b" * 256, "\u00e9" * 128, "\u00fc" * 127 + "a", "%s", "$1",
         "'; DROP TABLE es_stored_events; --", "es:fuzz_a", "FUZZ_A", "fuzz_a ", " fuzz_a",
         "no_such_app", "-", "#1", "null", "NULL", "fuzz_new_0", "fuzz_new_1", "fuzz_new_2"]

TOPICS_GOOD = ["T1", "T2", "Fold", "Secret", "Deep", "Counter"]
TOPICS_HOSTILE = [None, "", " ", "x" * 1024, "x" * 1025, "\u00e9" * 512, "\u00e9" * 513,
                  "y" * 2000, "\U0001f984", "it's", "new\nline", "back\\slash", "PUBLIC"]

PRIVILEGES = ["read", "append", "track", "verify", "seal", "admin", "create", None, "",
              "READ", "bogus", "x" * 300, "admin ", "all", "PUBLIC"]
ROLES = ["PUBLIC", "public", "Public", ROLE, OTHER, "no_such_role_zz", "", None, "postgres",
         "pg_read_all_data", "x" * 300, '"es_fuzz_role"', "es_fuzz_role ", "ES_FUZZ_ROLE",
         "o'brien", "back\\slash", "pg_signal_backend"]

# Fold functions (created in setUpClass) and other regproc inputs.
FOLDS_GOOD = ["es_fuzz_fold", "public.es_fuzz_fold"]
FOLDS_HOSTILE = ["es_fuzz_fold_secret", "es_fuzz_fold_raise", "es_fuzz_fold_null",
                 "es_fuzz_fold_scalar", "es_fuzz_fold_deep", "es_fuzz_fold_recurse",
                 "es_fuzz_fold_wrong", "es_fuzz_fold_setof", "jsonb_concat", "now",
                 "no_such_function_zz", "0", "12345678", "-", None, "es_append_only_guard",
                 "es_partition", "pg_catalog.jsonb_concat", "4294967295", "es_append"]

NESTED100_ARR = "[" * 100 + "]" * 100
NESTED100_OBJ = '{"a":' * 100 + "1" + "}" * 100
DEEP10000_ARR = "[" * 10000 + "]" * 10000
DEEP10000_OBJ = '{"a":' * 10000 + "1" + "}" * 10000
DEEP50000_ARR = "[" * 50000 + "]" * 50000          # 100 KB: beyond the JSON parser's depth
BIG100K = json.dumps({"blob": "x" * 100000, "name": "big"})

STATES_HOSTILE = [None, b"", b"\xff\xfe", b"a\x00b", b'{"a":"\x00"}', b'{"a":"\\u0000"}',
                  b"{}", b"[]", b"5", b'"s"', b"null", b"true", b'{"a":1,"a":2}',
                  b"\xef\xbb\xbf{}", b'{"a":', b'{"a":"\xff"}', NESTED100_ARR.encode(),
                  NESTED100_OBJ.encode(), DEEP10000_ARR.encode(), DEEP10000_OBJ.encode(),
                  DEEP50000_ARR.encode(), BIG100K.encode(), b'{"n":1e400}', b'{"n":-0}',
                  b'  {"x":1}  ', b'{"a":{"b":{"c":[1,{"d":2}]}}}', b'{"amount":"ten"}',
                  b'{"items":5,"a":[1]}', b'{"trick":{"x":[1]}}', b"\x00" * 64]

HEADS = [None, b"", b"\x00" * 32, b"\xff" * 32, b"\x00" * 31, b"\x00" * 33, b"x" * 100000]


class Raw:
    """JSON text to splice in as it is (nesting deeper than Python's json allows).
    For the DCB calls: ok, whether jsonb and src/dcb.c accept it where it
    stands (None: not known here); num, its value as condition.after."""

    def __init__(self, text: str, ok: Optional[bool] = None, num: Optional[int] = None):
        self.text = text
        self.ok = ok
        self.num = num


def dump_json(v) -> str:
    if isinstance(v, Raw):
        return v.text
    if isinstance(v, B64):
        return json.dumps(v.text)
    if isinstance(v, dict):
        return "{" + ",".join(json.dumps(str(k)) + ":" + dump_json(x) for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(dump_json(x) for x in v) + "]"
    return json.dumps(v)


DEEP_PATH = Raw(json.dumps("a." * 120000 + "a"))   # 120000 segments
PATHS_GOOD = ["name", "n", "items", "total", "a.b", "tricks", ["a", "b"], "counter.value"]
PATHS_HOSTILE = [[], "", ".", "a..b", ".a", "a.", ["a", 5], ["a", None], 5, None, True,
                 {"a": 1}, "\u00fc.\u00df", "x" * 2000, ["k"] * 200, "k." * 500 + "k",
                 Raw(NESTED100_ARR), ["", ""]]
FROMS_GOOD = ["name", "trick", "amount", "changes", "", [], "a.b", "n", "items"]
JSON_VALUES = [1, -1, 0, 1.5, 1e300, "str", "", [], {}, None, True, [1, 2], {"a": 1},
               {"k": [1, {"x": 2}]}, Raw(NESTED100_ARR), Raw(NESTED100_OBJ),
               Raw(DEEP10000_ARR), Raw("123456789012345678901234567890e-300"), "x" * 3000]
OPS = ["init", "set", "append", "remove", "add", "merge", "delete"]
OPS_HOSTILE = ["bogus", "", "SET", "set ", 5, None, [], {}, "init\u0000"[:4] + "x"]
OPERATIONS_NON_ARRAY = ["{}", "5", '"s"', "null", "true", "[]", "[null]", "[[]]", "[5]",
                        '[{"op": "set"}]', NESTED100_ARR, NESTED100_OBJ, DEEP10000_ARR,
                        '[{"op":"init","value":' + DEEP10000_OBJ + "}]"]

# --- Dynamic Consistency Boundaries (es_dcb_append, es_dcb_read, es_dcb_head) ---
# The fuzzer builds their jsonb arguments as Python values; dcb_events(),
# dcb_query() and dcb_condition() then say, as src/dcb.c parses them, whether
# a call can succeed (False: must fail; None: not known here), and the model
# (Fuzzer.dcb: every tagged event of every application, appended by the
# superuser before the run or by a successful es_dcb_append) says which events
# a query matches: what a read returns and whether a condition fails (23505).

SQLNULL = Raw("NULL")            # an argument given as SQL NULL (or left to its default)


class B64:
    """A data_base64 value: its text, the bytes it decodes to, whether an
    append with it can succeed (None: not known here), whether the bytes are
    JSON text that es_dcb_read returns as data (None: not known here)."""

    def __init__(self, text: str, raw: Optional[bytes], ok: Optional[bool],
                 is_json: Optional[bool] = None):
        self.text, self.raw, self.ok, self.is_json = text, raw, ok, is_json


def b64(raw: bytes, ok: Optional[bool] = True, is_json: Optional[bool] = None) -> B64:
    return B64(base64.b64encode(raw).decode(), raw, ok, is_json)


DCB_TAGS = ["a", "b", "c", "d", "course:c1", "course:c2", "student:s1", "student:s2"]
DCB_TAGS_ODD = ["\u00fc", "\U0001f984", "x y", "A", "a ", " a", "e\u0301", "\u00e9", "it's",
                'quo"te', "back\\slash", "new\nline", "\u2028", "x" * 1024, "\u00e9" * 512,
                "\U0001f984" * 256, "%s", "{a,b}", "NULL", "null", "\\u0000", ",", "\t"]
DCB_TAGS_BAD = ["", "x" * 1025, "\u00e9" * 513, "\U0001f984" * 257, "y" * 5000, 5, None, True,
                [], {}, ["a"], 1.5]
DCB_TYPES = ["CourseDefined", "StudentSubscribed", "CapacityChanged", "T1"]
DCB_TYPES_ODD = ["\u00fcber", "\U0001f984", "x" * 1024, "\u00e9" * 512, "e\u0301", "\u00e9",
                 "a b", "Fold", "it's", "new\nline", "NULL"]
DCB_TYPES_BAD = ["", "x" * 1025, "\u00e9" * 513, 5, None, True, [], {}, ["T1"]]
DCB_DATA = [1, -1, 0, 1.5, 1e300, -0.0, 2**70, "str", "", [], {}, None, True, False, [1, 2],
            {"a": 1}, {"k": [1, {"x": 2}]}, "x" * 3000, {"blob": "y" * 100000},
            {"a": {"b": {"c": [1, {"d": None}]}}}, "\u00e9\U0001f984\u2028", "tab\tnew\nline",
            Raw(NESTED100_ARR, ok=True), Raw(NESTED100_OBJ, ok=True),
            Raw(DEEP10000_ARR, ok=True), Raw("123456789012345678901234567890e-300", ok=True),
            Raw('"\\ud83e\\udd84 \\u00e9 \\/ \\b\\f\\n\\r\\t \\"q\\" \\\\"', ok=True),
            Raw('{"a":1,"a":2}', ok=True), Raw("1e400", ok=True)]
# jsonb refuses these at input (the argument, before the call), or may
DCB_DATA_BAD = [Raw('"\\u0000"', ok=False), Raw('{"a":"\\u0000"}', ok=False),
                Raw('"\\ud800"', ok=False), Raw("1e1000000", ok=False), Raw(DEEP50000_ARR, ok=None)]
DCB_B64 = [b64(b"\x00\xff\x10", True, False), b64(b'{"x": 1}', True, True),
           b64(b"null", True, True), b64(b"5", True, True), b64(b'"s"', True, True),
           b64(b"", None, False), b64(b"\x00", True, False), b64(b"\xff\xfe", True, False),
           b64(b"a\x00b", True, False), b64(bytes(range(256)), True, False),
           b64(b"1e400", True, True), b64(b"-0", True, True),
           b64(b'"\\u0000"', None, None), b64(b'{"a":"\\u0000"}', None, None),
           b64(b'"\\ud800"', None, None), b64(b"[" * 50000 + b"]" * 50000, None, None),
           b64(b"[" * 1000 + b"]" * 1000, True, True), b64(b"\xef\xbb\xbf{}", True, None),
           b64(b'  {"x":1}  ', True, True), b64(b'{"a":1,"a":2}', True, True),
           b64(b'{"a":', True, False), b64("\u00e9\U0001f984".encode(), True, False),
           b64(b"\xc3\x28", True, False), b64(b"x" * 100000, True, False),
           b64(b'"' + b"y" * 100000 + b'"', True, True), B64("QQ==", b"A", True, False),
           B64("QUJD\n", b"ABC", None), B64(" QUJD", b"ABC", None)]
DCB_B64_BAD = [
    # JSON text that jsonb cannot hold: refused (22003), never stored
    b64(b"1e1000000", False), b64(b"[1, 1e1000000]", False), b64(b'{"a": -1e999999}', False),
    # not base64, or maybe not
    B64("!!!!", None, False), B64("a\u00e9bc", None, False), B64("QUJ", None, None),
    B64("Q===", None, None), B64("QQ=", None, None), B64("====", None, None),
    B64("QUJD" * 10 + "!", None, False)]
DCB_MANY = 250      # items of the largest queries (each its own tag: a lock each)


class DcbBad(Exception):
    """The call cannot succeed."""


class DcbUnknown(Exception):
    """Whether the call can succeed is not known here."""


def dcb_string(x, limit=1024) -> str:
    if isinstance(x, Raw):
        raise DcbBad() if x.ok is False else DcbUnknown()
    if not isinstance(x, str) or x == "" or len(x.encode()) > limit:
        raise DcbBad()
    return x


def dcb_strings(x) -> frozenset:
    if not isinstance(x, list):
        raise DcbBad()
    return frozenset(dcb_string(e) for e in x)


def dcb_query_model(q):
    """A query as src/dcb.c reads it: None (every tagged event) or a list of
    (types, tags) items; DcbBad or DcbUnknown."""
    if q is SQLNULL:
        return None
    if isinstance(q, Raw):
        raise DcbBad() if q.ok is False else DcbUnknown()
    if not isinstance(q, list):
        raise DcbBad()
    if not q:
        return None
    items = []
    for it in q:
        if not isinstance(it, dict) or set(it) - {"types", "tags"}:
            raise DcbBad()
        types = dcb_strings(it["types"]) if "types" in it else frozenset()
        tags = dcb_strings(it["tags"]) if "tags" in it else frozenset()
        if not types and not tags:
            raise DcbBad()
        items.append((types, tags))
    return items


def dcb_after_model(a) -> int:
    """condition.after: a whole number >= 0 that fits a bigint."""
    if isinstance(a, Raw):
        if a.num is not None:
            return a.num
        raise DcbBad() if a.ok is False else DcbUnknown()
    if isinstance(a, bool) or not isinstance(a, (int, float)):
        raise DcbBad()
    if isinstance(a, float):
        if a == 0:
            raise DcbUnknown()          # -0.0
        if not a.is_integer():
            raise DcbBad()
        a = int(a)
    if a < 0 or a >= 2**63:
        raise DcbBad()
    return a


def json_constant(name):
    raise ValueError("not JSON: %s" % name)


def dcb_matches(items, typ: str, tags: frozenset) -> bool:
    if items is None:
        return True
    return any((not ts or typ in ts) and tg <= tags for ts, tg in items)


def dcb_sorted(tags) -> List[str]:
    """Tags as stored: sorted byte-wise (COLLATE "C"), without duplicates."""
    return sorted(set(tags), key=lambda s: s.encode())


def jsonb_arg(v) -> "Arg":
    """A jsonb argument: SQLNULL, or a value as dump_json writes it."""
    if v is SQLNULL:
        return Arg("NULL::jsonb", [], "NULL::jsonb")
    text = dump_json(v)
    desc = "'%s'::jsonb" % text.replace("'", "''") if len(text) <= 600 else short(text) + "::jsonb"
    return Arg("%s::jsonb", [text], desc, v)


def short(v: Any) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, (bytes, bytearray, memoryview)):
        b = bytes(v)
        return repr(b) if len(b) <= 48 else "<%d bytes %r...>" % (len(b), b[:16])
    if isinstance(v, str):
        return repr(v) if len(v) <= 48 else "<%d chars %r...>" % (len(v), v[:16])
    s = repr(v)
    return s if len(s) <= 80 else s[:60] + "...>"


class Arg:
    """A piece of SQL with its %s parameters, a readable form, and the value."""

    def __init__(self, text: str, params=(), desc: Optional[str] = None, value: Any = None):
        self.sql = text
        self.params = list(params)
        self.desc = text if desc is None else desc
        self.value = value


def lit(v: Any, cast: str) -> Arg:
    return Arg("%s::" + cast, [v], "%s::%s" % (short(v), cast), v)


def expr(template: str, *args: Arg) -> Arg:
    """template has one {} per Arg, in order (and no % of its own)."""
    return Arg(template.format(*[a.sql for a in args]),
               [p for a in args for p in a.params],
               template.format(*[a.desc for a in args]))


class Call:
    def __init__(self, kind: str, arg: Arg, app: Any = None, srf: bool = False, **meta):
        self.kind = kind
        self.sql = arg.sql
        self.params = arg.params
        self.desc = arg.desc
        self.app = app          # the application the call is about (its first argument)
        self.srf = srf
        self.meta = meta


# ---------------------------------------------------------------------------
# The fuzzer: builds calls, steered so that some succeed
# ---------------------------------------------------------------------------

class Fuzzer:
    def __init__(self, rng: random.Random):
        self.rng = rng
        self.versions: Dict[tuple, int] = {}     # (app, uuid) -> latest version appended
        self.positions: Dict[tuple, int] = {}    # (app, upstream) -> tracked position
        self.highest: Dict[str, int] = {}        # app -> highest id handed out
        self.created: set = set()
        self.config: Dict[str, tuple] = {}       # app -> (compression, encryption)
        self.keyed: set = set()                  # (app, uuid) with an encrypted event
        self.forgotten: set = set()              # (app, uuid) forgotten with es_forget
        self.dcb: Dict[Any, List[tuple]] = {}    # app -> its tagged events (position, type, tags)
        self.aggs = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(8)]
        self.kinds = [
            ("append_array", 10), ("append_tracked", 5), ("append_one", 4), ("append_fields", 6),
            ("select", 5), ("events", 4), ("max_notification_id", 1), ("tracking_position", 2),
            ("head", 1), ("verify", 2), ("seal", 2), ("verify_log", 2), ("channel", 1),
            ("wait", 2), ("partition", 1), ("replay", 8), ("define_fold", 5),
            ("set_fold_function", 3), ("set_snapshot_every", 2), ("state", 6), ("snapshot", 3),
            ("create_application", 2), ("grant", 2), ("revoke", 2), ("has_privilege", 1),
            ("direct", 1), ("wait_cancelled", 0.2),
            ("configure", 3), ("forget", 3), ("rewrap_keys", 1), ("select_stored", 4),
            ("dcb_append", 7), ("dcb_read", 4), ("dcb_head", 2),
        ]
        if not NO_RETRY:
            self.kinds.append(("append_retry", 0))   # drawn by next_call, after a refusal
        self.last_refused = None                 # (app, events) of the append just refused
        self.kind_names = [k for k, _ in self.kinds]
        self.kind_weights = [w for _, w in self.kinds]

    # --- values -----------------------------------------------------------

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def app_value(self, good: bool = False):
        rng = self.rng
        if good:
            return rng.choice([APP_A, APP_A, APP_B])
        r = rng.random()
        if r < 0.35:
            return APP_A
        if r < 0.55:
            return APP_B
        if r < 0.63:
            return APP_RO
        if r < 0.70:
            return APP_HIDDEN
        if r < 0.74:
            return None
        if r < 0.80 and self.created:
            return rng.choice(sorted(self.created))
        return rng.choice(TEXTS)

    def app(self, good: bool = False) -> Arg:
        return lit(self.app_value(good), "text")

    def uuid_value(self, app=None):
        rng = self.rng
        r = rng.random()
        known = sorted(u for (a, u) in self.versions if a == app)
        if r < 0.5 and known:
            return rng.choice(known)
        if r < 0.75:
            return rng.choice(self.aggs)
        if r < 0.83:
            return rng.choice(["00000000-0000-0000-0000-000000000000",
                               "ffffffff-ffff-ffff-ffff-ffffffffffff"])
        if r < 0.90:
            return None
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))

    def uuid(self, app=None) -> Arg:
        return lit(self.uuid_value(app), "uuid")

    def bigint(self, good=None) -> Arg:
        if good is not None and self.chance(0.5):
            return lit(good, "bigint")
        return lit(self.rng.choice(BIGINTS), "bigint")

    def int(self, good=None) -> Arg:
        if good is not None and self.chance(0.5):
            return lit(good, "integer")
        return lit(self.rng.choice(INTS), "integer")

    def topic_value(self):
        if self.chance(0.75):
            return self.rng.choice(TOPICS_GOOD)
        return self.rng.choice(TOPICS_HOSTILE)

    def state_value(self):
        rng = self.rng
        if rng.random() < 0.3:
            return rng.choice(STATES_HOSTILE)
        doc = {}
        for key, pool in (("name", ["Fido", "", "\u00fc", 5]),
                          ("n", [1, -1, 0, 2**70, 1.5, "str", None, 1e300]),
                          ("items", [[1], [], "x", {"k": 1}]),
                          ("trick", ["roll", "sit", 5, None, [], {}]),
                          ("amount", [1, 2.5, -3, 10**30, "x", None]),
                          ("a", [{"b": 1}, {"b": "x"}, [], 5]),
                          ("changes", [{"k": 1}, [], 5, None, {"name": "Rex"}])):
            if rng.random() < 0.5:
                doc[key] = rng.choice(pool)
        return json.dumps(doc).encode()

    def version_for(self, app, u):
        rng = self.rng
        cur = self.versions.get((app, u), 0)
        r = rng.random()
        if r < 0.6:
            return cur + 1 if cur or rng.random() < 0.8 else 0
        if r < 0.7:
            return cur
        if r < 0.8:
            return cur + 2
        return rng.choice(BIGINTS)

    def events(self, app, n: int):
        """n (uuid, version, topic, state) tuples, mostly consecutive per aggregate."""
        out = []
        pending: Dict[Any, int] = {}
        u = self.uuid_value(app)
        for _ in range(n):
            if out and self.chance(0.35):
                u = self.uuid_value(app)
            if u in pending and self.chance(0.85):
                v = pending[u] + 1
            else:
                v = self.version_for(app, u)
            if isinstance(v, int):
                pending[u] = v
            out.append((u, v, self.topic_value(), self.state_value()))
        return out

    @staticmethod
    def event_row(ev) -> Arg:
        if ev is None:
            return Arg("NULL::es_event", [], "NULL::es_event")
        u, v, t, s = ev
        return expr("ROW({}, {}, {}, {})::es_event",
                    lit(u, "uuid"), lit(v, "bigint"), lit(t, "text"), lit(s, "bytea"))

    def event_array(self, app):
        """An es_event[] argument, and the events it holds when it can succeed."""
        rng = self.rng
        r = rng.random()
        if r < 0.05:
            return lit(None, "es_event[]"), None
        if r < 0.10:
            return Arg("%s::es_event[]", ["{}"], "'{}'::es_event[]"), []
        if r < 0.12:
            return Arg("ARRAY[]::es_event[]", [], "ARRAY[]::es_event[]"), []
        n = rng.choice([1, 1, 2, 2, 3, 4, 5]) if rng.random() < 0.97 else 50
        evs = self.events(app, n)
        rows: List[Any] = list(evs)
        if self.chance(0.08):
            rows.insert(rng.randrange(len(rows) + 1), None)
        all_null = self.chance(0.04)
        if all_null:
            rows[rng.randrange(len(rows))] = (None, None, None, None)
        elems = [self.event_row(e) for e in rows]
        plain = Arg("ARRAY[" + ",".join(e.sql for e in elems) + "]::es_event[]",
                    [p for e in elems for p in e.params],
                    "ARRAY[" + ",".join(e.desc for e in elems) + "]::es_event[]")
        r = rng.random()
        if r < 0.12:
            # other lower bounds: '[lb:ub]=' prefixed to the array's text form
            lb = rng.choice([0, -5, 2, 2**31 - len(rows), -2**31])
            ub = lb + len(rows) - 1 if self.chance(0.9) else lb + len(rows)
            prefix = "[%d:%d]=" % (lb, ub)
            arr = expr("({} || ({})::text)::es_event[]", lit(prefix, "text"), plain)
            return arr, (evs if None not in rows and not all_null and ub == lb + len(rows) - 1
                         else None)
        if r < 0.18:
            # two-dimensional
            two = Arg("ARRAY[" + ",".join(["ARRAY[" + ",".join(e.sql for e in elems) + "]"] * 2)
                      + "]::es_event[]",
                      [p for e in elems for p in e.params] * 2,
                      "ARRAY[ARRAY[...],ARRAY[...]] of " + plain.desc)
            return two, None
        return plain, (evs if None not in rows and not all_null else None)

    def topics_arg(self) -> Arg:
        rng = self.rng
        r = rng.random()
        if r < 0.35:
            return lit(None, "text[]")
        if r < 0.45:
            return lit([], "text[]")
        if r < 0.50:
            return lit([None], "text[]")
        if r < 0.60:
            return lit([["T1", "T2"], ["Fold", "x"]], "text[]")
        if r < 0.70:
            return lit(rng.choice(["[0:1]={T1,T2}", "[-5:-5]={Fold}", "[2:3]={T1,NULL}"]), "text[]")
        k = rng.randint(1, 4)
        return lit([self.topic_value() for _ in range(k)], "text[]")

    def fold_value(self):
        return self.rng.choice(FOLDS_GOOD) if self.chance(0.4) else self.rng.choice(FOLDS_HOSTILE)

    def fold(self) -> Arg:
        return lit(self.fold_value(), "regproc")

    def path(self, good: bool):
        rng = self.rng
        if good or rng.random() < 0.5:
            return rng.choice(PATHS_GOOD)
        return rng.choice(PATHS_HOSTILE)

    def operations(self) -> Optional[str]:
        rng = self.rng
        r = rng.random()
        if r < 0.08:
            return None
        if r < 0.16:
            return rng.choice(OPERATIONS_NON_ARRAY)
        if r < 0.21 and not NO_DEEP_PATHS:
            # one valid operation on a path of 120000 segments
            op = rng.choice(["set", "append", "add", "merge", "delete"])
            return dump_json([{"op": op, "path": DEEP_PATH, "value": 1}] if op != "delete"
                             else [{"op": op, "path": DEEP_PATH}])
        ops = []
        for _ in range(rng.choice([1, 1, 2, 2, 3, 4])):
            op: Dict[str, Any] = {}
            good = rng.random() < 0.7
            if good:
                op["op"] = rng.choice(OPS)
                if op["op"] == "init":
                    op["value"] = rng.choice([{}, {"items": [], "total": 0}, [], 5])
                elif op["op"] == "delete":
                    op["path"] = self.path(True)
                elif op["op"] == "merge":
                    if self.chance(0.5):
                        op["path"] = self.path(True)
                    if self.chance(0.6):
                        op["from"] = rng.choice(FROMS_GOOD)
                else:
                    op["path"] = self.path(True)
                    if self.chance(0.75):
                        op["from"] = rng.choice(FROMS_GOOD)
                    else:
                        op["value"] = rng.choice(JSON_VALUES)
            else:
                if self.chance(0.95):
                    op["op"] = rng.choice(OPS + OPS_HOSTILE)
                if self.chance(0.7):
                    op["path"] = self.path(False)
                if self.chance(0.5):
                    op["from"] = self.path(False)
                if self.chance(0.4):
                    op["value"] = rng.choice(JSON_VALUES)
                if self.chance(0.05):
                    op["extra"] = 1
            ops.append(op)
        return dump_json(ops)

    # --- calls --------------------------------------------------------------

    def render(self, fname: str, required, optional=(), srf=False,
               mandatory_optional=False, used: Optional[List[str]] = None) -> Arg:
        """fname(...) with the required arguments and some of the optional
        ones (all with mandatory_optional), in positional or named notation;
        the names of the arguments given are added to used."""
        rng = self.rng
        style = rng.random()
        if style < 0.5 or not optional and style < 0.9:
            k = len(optional) if mandatory_optional else rng.randint(0, len(optional))
            use = list(required) + list(optional[:k])
            args = [a for _, a in use]
            template = ", ".join("{}" for _ in args)
        else:
            use = list(required) + [o for o in optional
                                    if mandatory_optional or rng.random() < 0.5]
            if style > 0.8:
                rng.shuffle(use)
                template = ", ".join("%s => {}" % name for name, _ in use)
            else:
                named = use[len(required):]
                rng.shuffle(named)
                use = list(required) + named
                template = ", ".join(["{}"] * len(required) +
                                     ["%s => {}" % name for name, _ in named])
            args = [a for _, a in use]
        if used is not None:
            used.extend(name for name, _ in use)
        head = "SELECT * FROM " if srf else "SELECT "
        return expr(head + fname + "(" + template + ")", *args)

    def next_call(self) -> Call:
        kind = self.rng.choices(self.kind_names, self.kind_weights)[0]
        if self.last_refused is not None and not NO_RETRY and self.chance(0.35):
            kind = "append_retry"
        call = getattr(self, "c_" + kind)()
        call.fkind = kind
        self.last_refused = None
        if call.meta.get("append") and call.meta.get("events"):
            self.mark_forgotten_targets(call, kind if kind != "append_retry" else "append_array")
        return call

    def mark_forgotten_targets(self, call: Call, kind: str):
        """meta forgotten: the events for forgotten aggregates (the append
        must not succeed); meta clean: a single event that nothing else
        would refuse (the next version, a good topic, a state, not tracked,
        an application the role administers), so it must fail with 55000."""
        evs = call.meta["events"]
        hits = [(u, v) for (u, v, _t, _s) in evs if (call.app, u) in self.forgotten]
        if not hits:
            return
        call.meta["forgotten"] = hits
        if (kind in ("append_one", "append_fields") or
                kind == "append_array" and call.meta["plain_array"]) and len(evs) == 1:
            u, v, t, s = evs[0]
            call.meta["clean"] = (v == self.versions.get((call.app, u), 0) + 1
                                  and t in TOPICS_GOOD and s is not None
                                  and (call.app in (APP_A, APP_B) or call.app in self.created))

    # --- stored form, forgetting, rotation ----------------------------------

    def admin_app_value(self):
        """An application the role administers, often; else any."""
        if self.created and self.chance(0.2):
            return self.rng.choice(sorted(self.created))
        return self.app_value(self.chance(0.6))

    def c_configure(self) -> Call:
        """es_configure with NULL/true/false for each setting, given
        positionally, by name, or left to their defaults (NULL)."""
        rng = self.rng
        app = self.admin_app_value()
        # biased to true: the applications get compression and encryption
        comp = rng.choice([None, True, True, False])
        enc = rng.choice([None, True, True, False])
        style = rng.random()
        app_arg = lit(app, "text")
        if style < 0.4:
            a = expr("SELECT es_configure({}, {}, {})", app_arg, lit(comp, "boolean"),
                     lit(enc, "boolean"))
        elif style < 0.5:
            enc = None
            a = expr("SELECT es_configure({}, {})", app_arg, lit(comp, "boolean"))
        elif style < 0.57:
            comp = enc = None
            a = expr("SELECT es_configure({})", app_arg)
        else:
            named = [("compression", comp), ("encryption", enc)]
            named = [(n, v) for n, v in named if v is not None or self.chance(0.5)]
            rng.shuffle(named)
            given = dict(named)
            comp, enc = given.get("compression"), given.get("encryption")
            parts = [("application", app_arg)] + [(n, lit(v, "boolean")) for n, v in named]
            if self.chance(0.5):
                rng.shuffle(parts)
                template = ", ".join("%s => {}" % n for n, _ in parts)
            else:
                template = ", ".join(["{}"] + ["%s => {}" % n for n, _ in parts[1:]])
            a = expr("SELECT es_configure(" + template + ")", *[x for _, x in parts])
        return Call("es_configure", a, app, compression=comp, encryption=enc)

    def c_forget(self) -> Call:
        rng = self.rng
        app = self.admin_app_value()
        keyed = sorted(u for (a, u) in self.keyed if a == app and (a, u) not in self.forgotten)
        forgotten = sorted(u for (a, u) in self.forgotten if a == app)
        r = rng.random()
        if r < 0.3 and keyed:
            u = rng.choice(keyed)
        elif r < 0.45 and forgotten:
            u = rng.choice(forgotten)           # again: nothing more to do
        else:
            u = self.uuid_value(app)            # known (maybe in clear), random, NULL, zero
        a = self.render("es_forget", [("application", lit(app, "text")),
                                      ("originator_id", lit(u, "uuid"))])
        return Call("es_forget", a, app, target=u)

    def c_rewrap_keys(self) -> Call:
        text = self.rng.choice(["SELECT es_rewrap_keys()", "SELECT * FROM es_rewrap_keys()",
                                "SELECT es_rewrap_keys() FROM generate_series(1, 2)"])
        return Call("es_rewrap_keys", Arg(text), None, rewrap=True)

    def c_select_stored(self) -> Call:
        rng = self.rng
        app = self.app_value()
        h = self.highest.get(app, 0)
        start = self.bigint(rng.choice([1, max(1, h - 2), h, h + 1]))
        max_count = self.int(rng.choice([1, 10, 1000]))
        a = self.render("es_select_stored", [("application", lit(app, "text")),
                                             ("start", start), ("max_count", max_count)],
                        srf=True)
        return Call("es_select_stored", a, app, srf=True, start=start.value,
                    max_count=max_count.value)

    def c_append_array(self) -> Call:
        app = self.app_value(self.chance(0.6))
        arr, evs = self.event_array(app)
        a = self.render("es_append", [("application", lit(app, "text")), ("events", arr)], srf=True)
        return Call("es_append(app, events[])", a, app, srf=True, append=True, events=evs,
                    plain_array=arr.desc.startswith("ARRAY["))

    def c_append_retry(self) -> Call:
        """A client retrying the append just refused without what was wrong
        with it (whatever could not succeed: hostile topics, NULLs): at once,
        in the same session (ES_FUZZ_NO_RETRY=1 leaves these out)."""
        if self.last_refused is None:
            return self.c_append_array()
        app, evs = self.last_refused
        self.last_refused = None
        evs = [(u, v, t, s) for (u, v, t, s) in evs
               if u is not None and isinstance(v, int) and t in TOPICS_GOOD and s is not None]
        if not evs:
            return self.c_append_array()
        elems = [self.event_row(e) for e in evs]
        arr = Arg("ARRAY[" + ",".join(e.sql for e in elems) + "]::es_event[]",
                  [p for e in elems for p in e.params],
                  "ARRAY[" + ",".join(e.desc for e in elems) + "]::es_event[]")
        a = self.render("es_append", [("application", lit(app, "text")), ("events", arr)], srf=True)
        return Call("es_append(app, events[]) (retry)", a, app, srf=True, append=True,
                    events=evs, plain_array=True)

    def c_append_tracked(self) -> Call:
        rng = self.rng
        app = self.app_value(self.chance(0.6))
        arr, evs = self.event_array(app)
        upstream = rng.choice(CORE_APPS + ["upstream", "", None] + TEXTS[:6])
        good = self.positions.get((app, upstream), 0) + 1
        r = rng.random()
        nid = good if r < 0.55 else good - 1 if r < 0.65 else rng.choice(BIGINTS)
        a = self.render("es_append", [("application", lit(app, "text")), ("events", arr),
                                      ("upstream_application", lit(upstream, "text")),
                                      ("upstream_notification_id", lit(nid, "bigint"))], srf=True)
        return Call("es_append(app, events[], upstream, id)", a, app, srf=True, append=True,
                    events=evs, tracked=(upstream, nid))

    def c_append_one(self) -> Call:
        app = self.app_value(self.chance(0.6))
        if self.chance(0.06):
            ev, evs = None, None
        else:
            ev = self.events(app, 1)[0]
            evs = [ev]
            if self.chance(0.05):
                ev, evs = (None, None, None, None), None
        a = self.render("es_append", [("application", lit(app, "text")),
                                      ("event", self.event_row(ev))])
        return Call("es_append(app, event)", a, app, append=True, events=evs)

    def c_append_fields(self) -> Call:
        app = self.app_value(self.chance(0.6))
        ev = self.events(app, 1)[0]
        a = self.render("es_append", [("application", lit(app, "text")),
                                      ("originator_id", lit(ev[0], "uuid")),
                                      ("originator_version", lit(ev[1], "bigint")),
                                      ("topic", lit(ev[2], "text")),
                                      ("state", lit(ev[3], "bytea"))])
        return Call("es_append(app, id, version, topic, state)", a, app, append=True,
                    events=[ev])

    def c_select(self) -> Call:
        rng = self.rng
        app = self.app_value()
        h = self.highest.get(app, 0)
        size = rng.randint(1, 4)
        a = self.render("es_select",
                        [("application", lit(app, "text")),
                         ("start", self.bigint(rng.choice([1, max(1, h - 2), h, h + 1]))),
                         ("max_count", self.int(rng.choice([1, 10, 1000])))],
                        [("stop", self.bigint(rng.choice([None, h, h - 1]))),
                         ("topics", self.topics_arg()),
                         ("group_member", self.int(rng.randrange(size))),
                         ("group_size", self.int(size))], srf=True)
        return Call("es_select", a, app, srf=True)

    def c_events(self) -> Call:
        rng = self.rng
        app = self.app_value()
        a = self.render("es_events", [("application", lit(app, "text")),
                                      ("originator_id", self.uuid(app))],
                        [("gt", self.bigint(rng.choice([None, 0, 1]))),
                         ("lte", self.bigint(rng.choice([None, 1, 2]))),
                         ("descending", lit(rng.choice([None, True, False]), "boolean")),
                         ("max_count", self.int(rng.choice([None, 1, 5])))], srf=True)
        return Call("es_events", a, app, srf=True)

    def c_max_notification_id(self) -> Call:
        app = self.app_value()
        return Call("es_max_notification_id",
                    self.render("es_max_notification_id", [("application", lit(app, "text"))]),
                    app)

    def c_tracking_position(self) -> Call:
        app = self.app_value()
        upstream = self.rng.choice(CORE_APPS + ["upstream", "", None] + TEXTS)
        return Call("es_tracking_position",
                    self.render("es_tracking_position", [("application", lit(app, "text")),
                                                         ("upstream_application",
                                                          lit(upstream, "text"))]), app)

    def c_head(self) -> Call:
        app = self.app_value()
        return Call("es_head", self.render("es_head", [("application", lit(app, "text")),
                                                       ("originator_id", self.uuid(app))]), app)

    def c_verify(self) -> Call:
        app = self.app_value()
        u = self.uuid(app)
        if self.chance(0.3):
            head = expr("(SELECT es_head({}, {}))", lit(app, "text"), lit(u.value, "uuid"))
        else:
            head = lit(self.rng.choice(HEADS), "bytea")
        a = self.render("es_verify", [("application", lit(app, "text")), ("originator_id", u)],
                        [("expected_head", head)])
        return Call("es_verify", a, app)

    def c_seal(self) -> Call:
        app = self.app_value()
        return Call("es_seal", self.render("es_seal", [("application", lit(app, "text"))],
                                           srf=True), app, srf=True)

    def c_verify_log(self) -> Call:
        app = self.app_value()
        return Call("es_verify_log", self.render("es_verify_log",
                                                 [("application", lit(app, "text"))], srf=True),
                    app, srf=True)

    def c_channel(self) -> Call:
        app = self.app_value()
        return Call("es_channel", self.render("es_channel", [("application", lit(app, "text"))]),
                    app)

    def c_wait(self) -> Call:
        """Small timeouts; a long one (or the default, 10 s) only where it
        cannot block: an after below every id of an application with events."""
        rng = self.rng
        if self.chance(0.12):
            app = rng.choice([APP_A, APP_B, APP_RO, APP_HIDDEN, None, ""])
            after = lit(rng.choice([None, -1, -2**63, 0]), "bigint")
            opt = [("timeout_ms", lit(rng.choice([2**31 - 1, 10000]), "integer"))] \
                if self.chance(0.6) else []
        else:
            app = self.app_value()
            h = self.highest.get(app, 0)
            after = lit(rng.choice([None, -1, -2**63, 0, 1, h - 1, h, h + 1, 2**63 - 1, 2**62]),
                        "bigint")
            opt = [("timeout_ms", lit(rng.choice([0, 1, 5, 20, -1, -2**31, None]), "integer"))]
        # the timeout given (positionally or by name) unless the default cannot block
        a = self.render("es_wait", [("application", lit(app, "text")), ("after", after)],
                        opt, mandatory_optional=bool(opt))
        return Call("es_wait", a, app)

    def c_wait_cancelled(self) -> Call:
        """A wait that only statement_timeout (50 ms) ends."""
        app = self.rng.choice([APP_A, APP_B, APP_RO])
        a = expr("SELECT es_wait({}, {}, {})", lit(app, "text"), lit(2**62, "bigint"),
                 lit(self.rng.choice([2**31 - 1, 60000]), "integer"))
        return Call("es_wait (cancelled)", a, app, statement_timeout=50)

    def c_partition(self) -> Call:
        a = self.render("es_partition", [("originator_id", self.uuid()),
                                         ("group_size", self.int(self.rng.randint(1, 5)))])
        return Call("es_partition", a, None)

    def replay_source(self, app):
        """A FROM item v with one column e of type es_stored_event."""
        rng = self.rng
        r = rng.random()
        if r < 0.5:
            src_app = lit(app if self.chance(0.8) else self.app_value(), "text")
            u = self.uuid(app)
            if self.chance(0.3):
                return expr("(SELECT s AS e FROM es_events({}, {}, lte => {}) s) v",
                            src_app, u, self.bigint(2))
            return expr("(SELECT s AS e FROM es_events({}, {}) s) v", src_app, u)
        if r < 0.88:
            n = rng.choice([1, 2, 3, 4])
            u = self.uuid_value(app)
            rows = []
            v = rng.choice([0, 1, 2])
            for _ in range(n):
                if self.chance(0.1):
                    u = self.uuid_value(app)
                v = (v + 1 if v is not None else 1) if self.chance(0.85) else rng.choice(BIGINTS)
                if self.chance(0.05):
                    rows.append(Arg("(NULL::es_stored_event)"))
                    continue
                rows.append(expr("(ROW({}, {}, {}, {}, {}, {})::es_stored_event)",
                                 lit(u, "uuid"), lit(v, "bigint"), lit(self.topic_value(), "text"),
                                 lit(self.state_value(), "bytea"),
                                 lit(rng.choice([None, "2000-01-01 00:00:00+00"]), "timestamptz"),
                                 lit(rng.choice([None, b"\x00" * 32]), "bytea")))
            values = Arg(", ".join(a.sql for a in rows), [p for a in rows for p in a.params],
                         ", ".join(a.desc for a in rows))
            return expr("(SELECT x.e FROM (VALUES {}) x(e)) v", values)
        if r < 0.94:
            return Arg("(SELECT NULL::es_stored_event AS e WHERE false) v")
        return Arg("(SELECT NULL::es_stored_event AS e) v")

    def c_replay(self) -> Call:
        rng = self.rng
        app = self.app_value(self.chance(0.5))
        src = self.replay_source(app)
        if self.chance(0.1):
            app_arg = expr("CASE WHEN (v.e).originator_version > 1 THEN {} ELSE {} END",
                           self.app(), lit(app, "text"))
        else:
            app_arg = lit(app, "text")
        form = rng.choice(["event", "fold", "fields"])
        if form == "event":
            inner = expr("es_replay({}, v.e", app_arg)
        elif form == "fold":
            if self.chance(0.15):
                fold = expr("CASE WHEN (v.e).originator_version > 1 THEN {} ELSE {} END",
                            self.fold(), self.fold())
            else:
                fold = self.fold()
            inner = expr("es_replay({}, v.e, {}", app_arg, fold)
        else:
            inner = expr("es_replay({}, (v.e).originator_id, (v.e).originator_version, "
                         "(v.e).topic, (v.e).state", app_arg)
        mode = rng.choice(["plain", "plain", "order", "filter", "window", "window_all", "group"])
        if mode == "order":
            agg = expr("{} ORDER BY (v.e).originator_version " +
                       rng.choice(["DESC", "ASC NULLS FIRST"]) + ")", inner)
        elif mode == "filter":
            agg = expr("{}) FILTER (WHERE (v.e).originator_version > 1)", inner)
        elif mode == "window":
            agg = expr("{}) OVER (ORDER BY (v.e).originator_version)", inner)
        elif mode == "window_all":
            agg = expr("{}) OVER ()", inner)
        else:
            agg = expr("{})", inner)
        tail = " GROUP BY (v.e).originator_id" if mode == "group" else ""
        return Call("es_replay(%s)" % form, expr("SELECT {} FROM {}" + tail, agg, src), app)

    def c_define_fold(self) -> Call:
        app = self.app_value(self.chance(0.6))
        topic = self.topic_value()
        ops = self.operations()
        a = self.render("es_define_fold", [("application", lit(app, "text")),
                                           ("topic", lit(topic, "text")),
                                           ("operations", lit(ops, "jsonb"))])
        return Call("es_define_fold", a, app, topic=topic)

    def c_set_fold_function(self) -> Call:
        app = self.app_value(self.chance(0.6))
        a = self.render("es_set_fold_function", [("application", lit(app, "text")),
                                                 ("fold", self.fold())])
        return Call("es_set_fold_function", a, app)

    def c_set_snapshot_every(self) -> Call:
        app = self.app_value(self.chance(0.6))
        a = self.render("es_set_snapshot_every", [("application", lit(app, "text")),
                                                  ("events", self.int(self.rng.choice([1, 2, 3])))])
        return Call("es_set_snapshot_every", a, app)

    def c_state(self) -> Call:
        app = self.app_value(self.chance(0.5))
        u = self.uuid(app)
        cur = self.versions.get((app, u.value), 1)
        a = self.render("es_state", [("application", lit(app, "text")), ("originator_id", u)],
                        [("at_version", self.bigint(self.rng.choice([None, cur, cur - 1, 0])))])
        return Call("es_state", a, app)

    def c_snapshot(self) -> Call:
        app = self.app_value(self.chance(0.5))
        a = self.render("es_snapshot", [("application", lit(app, "text")),
                                        ("originator_id", self.uuid(app))])
        return Call("es_snapshot", a, app)

    def c_create_application(self) -> Call:
        rng = self.rng
        r = rng.random()
        if r < 0.5:
            name = rng.choice(CORE_APPS)
        elif r < 0.6 and self.created:
            name = rng.choice(sorted(self.created))
        elif r < 0.65:
            name = None
        else:
            name = rng.choice(TEXTS)
        a = self.render("es_create_application", [("name", lit(name, "text"))])
        return Call("es_create_application", a, name, create=name)

    def c_grant(self, fn="es_grant") -> Call:
        rng = self.rng
        app = None if self.chance(0.1) else self.app_value()
        a = self.render(fn, [("application", lit(app, "text")),
                             ("role", lit(rng.choice(ROLES), "text")),
                             ("privilege", lit(rng.choice(PRIVILEGES), "text"))])
        return Call(fn, a, app)

    def c_revoke(self) -> Call:
        return self.c_grant("es_revoke")

    def c_has_privilege(self) -> Call:
        app = None if self.chance(0.15) else self.app_value()
        a = self.render("es_has_privilege", [("application", lit(app, "text")),
                                             ("privilege",
                                              lit(self.rng.choice(PRIVILEGES), "text"))])
        return Call("es_has_privilege", a, app)

    # --- Dynamic Consistency Boundaries ---------------------------------------

    def dcb_tag(self, bad: float = 0.0):
        rng = self.rng
        if rng.random() < bad:
            return rng.choice(DCB_TAGS_BAD)
        return rng.choice(DCB_TAGS) if rng.random() < 0.8 else rng.choice(DCB_TAGS_ODD)

    def dcb_type(self, bad: float = 0.0):
        rng = self.rng
        if rng.random() < bad:
            return rng.choice(DCB_TYPES_BAD)
        return rng.choice(DCB_TYPES) if rng.random() < 0.8 else rng.choice(DCB_TYPES_ODD)

    def dcb_event(self, hostile: bool):
        rng = self.rng
        ev: Dict[str, Any] = {"type": self.dcb_type()}
        if self.chance(0.65):
            if self.chance(0.5):
                ev["data"] = rng.choice(DCB_DATA)
            else:
                sv = self.state_value()
                try:
                    # numbers as written (1e400 is no float); NaN and Infinity are no JSON
                    ev["data"] = json.loads(sv, parse_float=lambda x: Raw(x, ok=True),
                                            parse_constant=json_constant)
                    if "\x00" in dump_json(ev["data"]) or "\\u0000" in dump_json(ev["data"]):
                        raise ValueError("jsonb refuses \\u0000")
                except (ValueError, RecursionError, TypeError):          # TypeError: None
                    ev["data"] = {"n": rng.randrange(100), "s": "\u00e9"}
        else:
            ev["data_base64"] = rng.choice(DCB_B64) if self.chance(0.6) else \
                b64(self.state_value() or b"", None, None)
        if self.chance(0.85):
            tags = [self.dcb_tag() for _ in range(rng.choice([0, 1, 1, 2, 2, 3]))]
            if tags and self.chance(0.1):
                tags += tags * rng.choice([1, 20])                  # duplicates
            if self.chance(0.02):
                tags += ["many:%d" % i for i in range(40)]
            ev["tags"] = tags
        if not hostile:
            return ev
        r = rng.random()
        if r < 0.08:
            return rng.choice([5, None, [], "s", True, [ev], Raw(NESTED100_ARR, ok=False)])
        if r < 0.16:
            del ev["type"]
        elif r < 0.28:
            ev["type"] = self.dcb_type(bad=1)
        elif r < 0.36:
            ev["data"] = ev["data_base64"] = rng.choice(DCB_B64)
        elif r < 0.42:
            ev.pop("data", None)
            ev.pop("data_base64", None)
        elif r < 0.47:
            ev.pop("data_base64", None)
            ev["data"] = rng.choice(DCB_DATA_BAD)
        elif r < 0.52:
            ev.pop("data", None)
            ev["data_base64"] = rng.choice([5, None, [], {}, True, 1.5, B64("\u00fc", None, False)]
                                           + DCB_B64_BAD * 2)
        elif r < 0.62:
            ev["tags"] = rng.choice(["a", None, 5, {}, {"a": "b"}, True])
        elif r < 0.80:
            tags = list(ev.get("tags") or ["a"])
            tags.insert(rng.randrange(len(tags) + 1), self.dcb_tag(bad=1))
            ev["tags"] = tags
        else:
            ev[rng.choice(["extra", "Type", "", "tags ", "data_base64 ", "DATA", "position",
                           "\u00fc", "x" * 300])] = rng.choice([1, None, "a", []])
        return ev

    def dcb_events(self):
        """The events argument, and (events as (type, tags, payload), whether
        the call can succeed: True, False or None for not known)."""
        rng = self.rng
        if self.chance(0.05):
            v = rng.choice([SQLNULL, Raw("null", ok=False), {}, 5, "s", [], [[]], [None], [5],
                            {"type": "T1", "data": 1}, Raw(DEEP10000_ARR, ok=False),
                            Raw(NESTED100_OBJ, ok=False), Raw('"\\u0000"', ok=False)])
        else:
            r = rng.random()
            n = rng.choice([1, 1, 1, 2, 2, 3, 5]) if r < 0.965 else 50 if r < 0.995 else 200
            hostile = self.chance(0.3)
            v = [self.dcb_event(hostile and (i == 0 or self.chance(0.3))) for i in range(n)]
            if self.chance(0.02):      # jsonb keeps the last of duplicated keys
                v = Raw('[{"type": "T1", "data": 1, "type": "T2", "tags": ["a"], "tags": []}]',
                        ok=True)
                return jsonb_arg(v), [("T2", frozenset(), ("data", "1"))], True
        return jsonb_arg(v), *self.dcb_events_model(v)

    @staticmethod
    def dcb_events_model(v):
        if v is SQLNULL or isinstance(v, Raw) or not isinstance(v, list) or not v:
            return None, False
        out, ok = [], True
        try:
            for e in v:
                if not isinstance(e, dict) or set(e) - {"type", "data", "data_base64", "tags"}:
                    raise DcbBad()
                if "type" not in e or ("data" in e) == ("data_base64" in e):
                    raise DcbBad()
                t = dcb_string(e["type"])
                tags = dcb_strings(e["tags"]) if "tags" in e else frozenset()
                if "data" in e:
                    d = e["data"]
                    if isinstance(d, Raw) and d.ok is not True:
                        if d.ok is False:
                            raise DcbBad()
                        ok = None
                    payload = ("data", dump_json(d))
                else:
                    b = e["data_base64"]
                    if not isinstance(b, B64) or b.ok is False:
                        raise DcbBad()
                    if b.ok is None:
                        ok = None
                    payload = ("b64", b)
                out.append((t, tags, payload))
        except DcbBad:
            return None, False
        except DcbUnknown:
            return None, None
        return out, ok

    def dcb_item(self, app, hostile: bool):
        rng = self.rng
        if hostile:
            return rng.choice([
                5, None, "s", [], [{"tags": ["a"]}], True, {}, {"types": [], "tags": []},
                {"tags": []}, {"types": []}, {"tags": ["a"], "extra": 1}, {"Tags": ["a"]},
                {"tags": ["a"], "": 1}, {"types": "T1"}, {"types": None}, {"tags": None},
                {"types": 5}, {"tags": {"a": 1}}, {"tags": ["a", None]},
                {"tags": [self.dcb_tag(bad=1)]}, {"types": [self.dcb_type(bad=1)]},
                {"types": ["T1"], "tags": ["a", self.dcb_tag(bad=1)]}])
        known = self.dcb.get(app)
        item: Dict[str, Any] = {}
        if known and self.chance(0.55):
            _p, t, tags = rng.choice(known[-30:] if self.chance(0.7) else known)
            if tags and self.chance(0.7):
                item["tags"] = rng.sample(sorted(tags), rng.randint(1, min(3, len(tags))))
                if self.chance(0.3):
                    item["types"] = [t] + ([self.dcb_type()] if self.chance(0.3) else [])
            else:
                item["types"] = [t]
        else:
            if self.chance(0.6):
                item["tags"] = [self.dcb_tag() for _ in range(rng.choice([1, 1, 2, 3]))]
            if "tags" not in item or self.chance(0.4):
                item["types"] = [self.dcb_type() for _ in range(rng.choice([1, 1, 2]))]
        if self.chance(0.08):
            item["tags"] = (item.get("tags") or ["a"]) * rng.choice([2, 50])   # duplicated
        if self.chance(0.05):
            item.setdefault("types", [])                  # empty beside the tags
            item.setdefault("tags", [])
            if not item["types"] and not item["tags"]:
                item["tags"] = ["a"]
        return item

    def dcb_query(self, app, sql_null: bool):
        """A query value (SQLNULL only where SQL NULL is allowed)."""
        rng = self.rng
        r = rng.random()
        if sql_null and r < 0.15:
            return SQLNULL
        if r < 0.25:
            return []
        if r < 0.31:
            return rng.choice([None, {}, 5, "s", {"tags": ["a"]}, [[]], [None],
                               Raw(NESTED100_ARR, ok=False), Raw(DEEP10000_ARR, ok=False),
                               Raw(DEEP10000_OBJ, ok=False)])
        if r < 0.34:
            # many items: each its own tag (a lock each in a condition), some known
            items = [{"tags": ["many:%d" % i]} for i in range(DCB_MANY)]
            items += [self.dcb_item(app, False) for _ in range(3)]
            rng.shuffle(items)
            return items
        n = rng.choice([1, 1, 1, 2, 2, 3])
        hostile = self.chance(0.12)
        return [self.dcb_item(app, hostile and (i == 0 or self.chance(0.3))) for i in range(n)]

    def dcb_head_of(self, app, items, after: int = 0) -> int:
        """What es_dcb_head returns (the model)."""
        last = after
        for p, t, tags in self.dcb.get(app, []):
            if p > after and dcb_matches(items, t, tags):
                last = p
        return last

    def dcb_positions(self, app, items, after: int, max_count=None) -> List[int]:
        out = [p for p, t, tags in self.dcb.get(app, []) if p > after and dcb_matches(items, t, tags)]
        return out if max_count is None else out[:max_count]

    def dcb_after_json(self, app, items):
        """condition.after: mostly positions that reads give, else hostile."""
        rng = self.rng
        known = self.dcb.get(app, [])
        r = rng.random()
        if r < 0.35:
            return self.dcb_head_of(app, items) if items != "bad" else 0
        if r < 0.6 and known:
            p = rng.choice(known)[0]
            return p - rng.choice([0, 1])
        if r < 0.67:
            return 0
        if r < 0.75:
            return self.highest.get(app, 0)
        return rng.choice([-1, 1.5, 1.0, 100.0, 2**63 - 1, 2**63, 2**64, -2**63, "5", None,
                           True, [], {}, 1e300, -0.0, 0.5, Raw("1e1", num=10),
                           Raw("10.000", num=10), Raw("0.0", num=0), Raw("-0", ok=None),
                           Raw("1e-5", ok=False), Raw("12345678901234567890123", ok=False),
                           Raw("9223372036854775807", num=2**63 - 1),
                           Raw("9223372036854775808", ok=False), Raw("1e1000000", ok=False),
                           Raw("-1e-1000", ok=None)])

    def dcb_condition(self, app):
        """The condition argument, and (model items, after) when it is valid,
        the string "none" without a condition, DcbBad/DcbUnknown instances."""
        rng = self.rng
        r = rng.random()
        if r < 0.3:
            return jsonb_arg(SQLNULL), "none"
        if r < 0.36:
            c = rng.choice([Raw("null", ok=False), [], 5, "s", {}, {"after": 0},
                            {"fail_if_events_match": None},
                            {"fail_if_events_match": [], "after": 0, "extra": 1},
                            {"fail_if_events_match": {"tags": ["a"]}},
                            {"fail_if_events_match": "[]"}, {"FAIL_IF_EVENTS_MATCH": []},
                            [{"fail_if_events_match": []}]])
            return jsonb_arg(c), DcbBad()
        q = self.dcb_query(app, sql_null=False)
        try:
            items = dcb_query_model(q)
        except (DcbBad, DcbUnknown) as e:
            items, err = "bad", e
        else:
            err = None
        if r < 0.48:
            # after from a real read, in the same statement
            head_app = app if self.chance(0.9) else self.app_value()
            qa = jsonb_arg(q)
            arg = expr("jsonb_build_object('fail_if_events_match', {}, 'after', es_dcb_head({}, {}))",
                       qa, lit(head_app, "text"), qa)
            if err is not None:
                return arg, err
            return arg, (items, self.dcb_head_of(head_app, items))
        c: Dict[str, Any] = {"fail_if_events_match": q}
        if self.chance(0.93):
            c["after"] = self.dcb_after_json(app, items)
        if self.chance(0.02):
            c[rng.choice(["extra", "After", ""])] = 1
            err = DcbBad()
        if err is None:
            try:
                after = dcb_after_model(c["after"]) if "after" in c else 0
            except (DcbBad, DcbUnknown) as e:
                err = e
        if err is not None:
            return jsonb_arg(c), err
        return jsonb_arg(c), (items, after)

    def c_dcb_append(self) -> Call:
        app = self.app_value(self.chance(0.6))
        events_arg, evs, ok = self.dcb_events()
        cond_arg, cond = self.dcb_condition(app)
        used: List[str] = []
        a = self.render("es_dcb_append", [("application", lit(app, "text")), ("events", events_arg)],
                        [("condition", cond_arg)], used=used)
        if "condition" not in used:
            cond = "none"
        if isinstance(cond, DcbBad):
            ok = False
        elif isinstance(cond, DcbUnknown) and ok:
            ok = None
        # whether the condition fails: None when not known
        if ok is False:
            predict = None
        elif cond == "none":
            predict = False
        elif isinstance(cond, tuple):
            items, after = cond
            predict = bool(self.dcb_positions(app, items, after, 1))
        else:
            predict = None
        return Call("es_dcb_append", a, app, append=True,
                    dcb=dict(events=evs, ok=ok, predict=predict, cond=cond,
                             n=len(evs) if evs is not None else None))

    def dcb_read_args(self, app):
        rng = self.rng
        known = self.dcb.get(app, [])
        q = self.dcb_query(app, sql_null=True)
        r = rng.random()
        if r < 0.3:
            after = None
        elif r < 0.55 and known:
            after = rng.choice(known)[0] - rng.choice([0, 1])
        elif r < 0.65:
            after = 0
        elif r < 0.72:
            after = self.highest.get(app, 0)
        else:
            after = rng.choice(BIGINTS)
        return q, after

    def c_dcb_read(self) -> Call:
        rng = self.rng
        app = self.app_value()
        q, after = self.dcb_read_args(app)
        max_count = rng.choice([None, None, 1, 2, 5, 1000]) if self.chance(0.7) else \
            rng.choice(INTS)
        used: List[str] = []
        a = self.render("es_dcb_read", [("application", lit(app, "text"))],
                        [("query", jsonb_arg(q)), ("after", lit(after, "bigint")),
                         ("max_count", lit(max_count, "integer"))], srf=True, used=used)
        return Call("es_dcb_read", a, app, srf=True,
                    dcb_read=self.dcb_read_model(app, q if "query" in used else SQLNULL,
                                                 after if "after" in used else None,
                                                 max_count if "max_count" in used else None,
                                                 True))

    def c_dcb_head(self) -> Call:
        app = self.app_value()
        q, after = self.dcb_read_args(app)
        used: List[str] = []
        a = self.render("es_dcb_head", [("application", lit(app, "text"))],
                        [("query", jsonb_arg(q)), ("after", lit(after, "bigint"))], used=used)
        return Call("es_dcb_head", a, app,
                    dcb_read=self.dcb_read_model(app, q if "query" in used else SQLNULL,
                                                 after if "after" in used else None, None, False))

    def dcb_read_model(self, app, q, after, max_count, rows: bool):
        """What a read must return if it succeeds: ("rows", [(position, type,
        tags)]) or ("head", position); ("bad",) if it cannot succeed; None if
        not known here."""
        try:
            items = dcb_query_model(q)
        except DcbBad:
            return ("bad",)
        except DcbUnknown:
            return None
        if after is not None and after < 0 or max_count is not None and (
                max_count <= 0 or max_count > 2**31 - 1):
            return ("bad",)
        after = after or 0
        if not rows:
            return ("head", self.dcb_head_of(app, items, after))
        want = set(self.dcb_positions(app, items, after, max_count))
        return ("rows", [(p, t, dcb_sorted(tags)) for p, t, tags in self.dcb.get(app, [])
                         if p in want])

    def c_direct(self) -> Call:
        """The trigger function, called as a plain function."""
        return Call("es_append_only_guard", Arg("SELECT eventsourcing_internal.es_append_only_guard()"), None)


# ---------------------------------------------------------------------------
# The test
# ---------------------------------------------------------------------------

STATE_SQL = """
SELECT
  (SELECT coalesce(json_agg(json_build_array(a.name, a.id,
        es_max_notification_id(a.name),
        (SELECT count(*) FROM es_select(a.name, 1, 1000000)),
        (SELECT count(*) FROM es_stored_events s WHERE s.application_id = a.id),
        (SELECT max(s.notification_id) FROM es_stored_events s WHERE s.application_id = a.id))
        ORDER BY a.id), '[]')::text
     FROM es_applications a),
  (SELECT coalesce(json_agg(json_build_array(t.application_id, t.upstream_application,
        t.notification_id) ORDER BY t.application_id, t.upstream_application), '[]')::text
     FROM es_tracking t),
  -- a row written (inserted, updated, deleted) changes its table's row versions
  (SELECT md5(coalesce(string_agg(ctid::text || xmin::text, '|' ORDER BY ctid), ''))
     FROM es_applications),
  (SELECT md5(coalesce(string_agg(ctid::text || xmin::text, '|' ORDER BY ctid), '')) FROM es_folds),
  (SELECT md5(coalesce(string_agg(ctid::text || xmin::text, '|' ORDER BY ctid), '')) FROM es_grants),
  (SELECT md5(coalesce(string_agg(ctid::text || xmin::text, '|' ORDER BY ctid), '')) FROM es_seals),
  (SELECT md5(coalesce(string_agg(ctid::text || xmin::text, '|' ORDER BY ctid), ''))
     FROM es_snapshots),
  (SELECT md5(coalesce(string_agg(ctid::text || xmin::text, '|' ORDER BY ctid), '')) FROM es_keys),
  (SELECT md5(coalesce(string_agg(ctid::text || xmin::text, '|' ORDER BY ctid), ''))
     FROM es_dcb_index)
"""

SETUP_SQL = """
-- says who runs it: always the caller, never the extension's owner
CREATE FUNCTION es_fuzz_fold(s jsonb, t text, e jsonb) RETURNS jsonb LANGUAGE plpgsql AS
$$ BEGIN
     RAISE NOTICE 'es_fuzz_fold runs as %', current_user;
     RETURN CASE WHEN jsonb_typeof(s) = 'object' THEN s ELSE '{}' END
            || jsonb_build_object('last', t)
            || CASE WHEN jsonb_typeof(e) = 'object' THEN e ELSE '{}' END;
   END $$;
CREATE FUNCTION es_fuzz_fold_secret(s jsonb, t text, e jsonb) RETURNS jsonb LANGUAGE plpgsql AS
$$ BEGIN RAISE NOTICE 'es_fuzz_secret_ran as %', current_user; RETURN s; END $$;
REVOKE EXECUTE ON FUNCTION es_fuzz_fold_secret(jsonb, text, jsonb) FROM PUBLIC;
CREATE FUNCTION es_fuzz_fold_raise(s jsonb, t text, e jsonb) RETURNS jsonb LANGUAGE plpgsql AS
$$ BEGIN RAISE EXCEPTION 'es_fuzz_fold_raise refuses %', t USING ERRCODE = '22000'; END $$;
CREATE FUNCTION es_fuzz_fold_null(s jsonb, t text, e jsonb) RETURNS jsonb LANGUAGE sql AS
$$ SELECT NULL::jsonb $$;
CREATE FUNCTION es_fuzz_fold_scalar(s jsonb, t text, e jsonb) RETURNS jsonb LANGUAGE sql AS
$$ SELECT CASE length(t) % 3 WHEN 0 THEN '5'::jsonb WHEN 1 THEN '"str"' ELSE '[1, [2]]' END $$;
CREATE FUNCTION es_fuzz_fold_deep(s jsonb, t text, e jsonb) RETURNS jsonb LANGUAGE sql AS
$$ SELECT (repeat('{"a":', 5000) || '1' || repeat('}', 5000))::jsonb $$;
-- re-enters es_state (a few times per transaction: unbounded, it would only
-- spend seconds reaching max_stack_depth)
CREATE FUNCTION es_fuzz_fold_recurse(s jsonb, t text, e jsonb) RETURNS jsonb LANGUAGE plpgsql AS
$$ DECLARE d int := coalesce(nullif(current_setting('es_fuzz.depth', true), ''), '0')::int;
   BEGIN
     IF d >= 4 THEN RETURN s; END IF;
     PERFORM set_config('es_fuzz.depth', (d + 1)::text, true);
     RETURN jsonb_build_object('inner',
              (SELECT es_state('fuzz_a', originator_id) FROM es_select('fuzz_a', 1, 1)),
              'max', es_max_notification_id('fuzz_b'), 'depth', d);
   END $$;
CREATE FUNCTION es_fuzz_fold_wrong(s jsonb, t text) RETURNS jsonb LANGUAGE sql AS
$$ SELECT s $$;
CREATE FUNCTION es_fuzz_fold_setof(s jsonb, t text, e jsonb) RETURNS SETOF jsonb LANGUAGE sql AS
$$ SELECT s $$;
"""


class FuzzTest(unittest.TestCase):
    admin_dsn: str
    dsn: str

    @classmethod
    def setUpClass(cls):
        admin_dsn = os.environ.get("ES_TEST_DSN")
        if not admin_dsn:
            raise RuntimeError("set ES_TEST_DSN to a libpq connection string, "
                               "e.g. 'host=/path/socket port=54325 user=postgres dbname=postgres'")
        cls.admin_dsn = admin_dsn
        cls.lines = []
        cls.seed = int(os.environ.get("ES_FUZZ_SEED", DEFAULT_SEED))
        cls.n_calls = int(os.environ.get("ES_FUZZ_CALLS", DEFAULT_CALLS))
        print("fuzz seed %d (ES_FUZZ_SEED), %d calls (ES_FUZZ_CALLS)%s"
              % (cls.seed, cls.n_calls, ", no deep paths" if NO_DEEP_PATHS else ""),
              file=sys.stderr, flush=True)
        params = conninfo_to_dict(admin_dsn)
        params["dbname"] = TEST_DB
        cls.dsn = make_conninfo(**params)
        params["user"] = ROLE
        params.pop("password", None)
        cls.role_dsn = make_conninfo(**params)
        cls.drop_everything()
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEST_DB)))
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE "
                                 "NOREPLICATION NOBYPASSRLS").format(sql.Identifier(ROLE)))
            conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(OTHER)))
        with psycopg.connect(cls.dsn, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION eventsourcing")
            conn.execute(SETUP_SQL)

    @classmethod
    def drop_everything(cls):
        with psycopg.connect(cls.admin_dsn, autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                  [TEST_DB]).fetchone()
        if exists:
            roles = [r for r in (ROLE, OTHER) if cls.role_exists(r)]
            if roles:
                with psycopg.connect(cls.dsn, autocommit=True) as conn:
                    conn.execute(sql.SQL("DROP OWNED BY {}").format(
                        sql.SQL(", ").join(sql.Identifier(r) for r in roles)))
            # DROP DATABASE may have to wait for the extension's background worker
            deadline = time.monotonic() + 30
            while True:
                try:
                    with psycopg.connect(cls.admin_dsn, autocommit=True) as conn:
                        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                            sql.Identifier(TEST_DB)))
                    break
                except psycopg.errors.ObjectInUse:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
        with psycopg.connect(cls.admin_dsn, autocommit=True) as conn:
            for r in (ROLE, OTHER):
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(r)))

    @classmethod
    def role_exists(cls, name):
        with psycopg.connect(cls.admin_dsn, autocommit=True) as conn:
            return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [name]).fetchone()

    @classmethod
    def tearDownClass(cls):
        if not VERBOSE:
            for line in cls.lines:
                print(line, file=sys.stderr)
        sys.stderr.flush()
        wait_for_server(cls.admin_dsn)
        cls.drop_everything()

    # --- helpers ------------------------------------------------------------

    def snapshot(self):
        apps_json, tracking_json, *digests = self.su.execute(STATE_SQL).fetchone()
        apps = {row[0]: tuple(row[1:]) for row in json.loads(apps_json)}
        tracking = {(t[0], t[1]): t[2] for t in json.loads(tracking_json)}
        for name, (_, max_fn, n_fn, n_tab, max_tab) in apps.items():
            if (max_fn, n_fn) != (max_tab, n_tab):
                self.fail_soft("application %r: es_max_notification_id %s and es_select's %s rows, "
                               "but the table has %s rows up to id %s"
                               % (name, max_fn, n_fn, n_tab, max_tab))
        return {"apps": apps, "tracking": tracking, "digests": tuple(digests)}

    def fail_soft(self, message: str):
        self.report("FAIL: " + message)
        self.failures.append(message)

    @classmethod
    def report(cls, line: str):
        """Kept for tearDownClass, so that nothing comes between unittest's
        "test ... " and its "ok" (test.sh counts those lines); printed at
        once with ES_FUZZ_VERBOSE."""
        cls.lines.append(line)
        if VERBOSE:
            print(line, file=sys.stderr, flush=True)

    def superuser_append(self, app: str, n: int, topic_cycle=("T1", "T2", "Fold", "Secret")):
        ids = []
        for i in range(n):
            u = self.fz.rng.choice(self.fz.aggs[:6])
            v = self.fz.versions.get((app, u), 0) + 1
            t = topic_cycle[i % len(topic_cycle)]
            state = json.dumps({"name": "seed", "trick": "sit", "amount": i, "n": i}).encode()
            (nid,) = self.su.execute("SELECT es_append(%s::text, %s::uuid, %s::bigint, %s::text, "
                                     "%s::bytea)", [app, u, v, t, state]).fetchone()
            self.fz.versions[(app, u)] = v
            ids.append(nid)
        self.fz.highest[app] = max([self.fz.highest.get(app, 0)] + ids)

    def restore_grants(self):
        self.su.execute("SELECT es_grant(%s, %s, 'admin'), es_grant(%s, %s, 'admin'), "
                        "es_grant(%s, %s, 'read'), es_grant(NULL, %s, 'create')",
                        [APP_A, ROLE, APP_B, ROLE, APP_RO, ROLE, ROLE])

    def connect_role(self) -> psycopg.Connection:
        try:
            conn = psycopg.connect(self.role_dsn, autocommit=True)
            how = "logged in as %s" % ROLE
        except psycopg.OperationalError:
            # no trust/password for the role here: a superuser session that
            # becomes the role (which nothing the fuzzer sends can undo)
            conn = psycopg.connect(self.dsn, autocommit=True)
            conn.execute(sql.SQL("SET SESSION AUTHORIZATION {}").format(sql.Identifier(ROLE)))
            how = "SET SESSION AUTHORIZATION %s" % ROLE
        user, is_super = conn.execute(
            "SELECT current_user, current_setting('is_superuser')").fetchone()
        self.assertEqual((user, is_super), (ROLE, "off"), "the fuzzing role must not be a superuser")
        conn.execute("SET statement_timeout = '3s'")
        # results stay text: json nested 10000 deep is beyond Python's json
        for t in ("json", "jsonb"):
            conn.adapters.register_loader(t, TextLoader)
        self.report("role connection: %s" % how)
        return conn

    # --- the test -------------------------------------------------------------

    def test_no_crash_no_internal_error_nothing_written(self):
        seed, n_calls = self.seed, self.n_calls
        rng = random.Random(seed)
        self.fz = fz = Fuzzer(rng)
        self.failures: List[str] = []

        with psycopg.connect(self.admin_dsn, autocommit=True) as c:
            started = c.execute("SELECT pg_postmaster_start_time()").fetchone()[0]

        # superuser: the applications, grants and some events
        self.su = psycopg.connect(self.dsn, autocommit=True)
        self.addCleanup(self.su.close)
        su_pid = self.su.execute("SELECT pg_backend_pid()").fetchone()[0]
        for app in CORE_APPS:
            self.su.execute("SELECT es_create_application(%s)", [app])
        self.restore_grants()
        self.su.execute("SELECT es_grant(%s, %s, 'read')", [APP_B, OTHER])
        self.su.execute("SELECT es_set_fold_function(%s, 'es_fuzz_fold_secret')", [APP_RO])
        self.su.execute("SELECT es_define_fold(%s, 'Fold', %s::jsonb)",
                        [APP_A, '[{"op": "set", "path": "name", "from": "name"}, '
                                '{"op": "append", "path": "items", "from": "trick"}, '
                                '{"op": "add", "path": "total", "from": "amount"}]'])
        self.dcb_stats = collections.Counter()
        for app in CORE_APPS:
            self.superuser_append(app, 8)
            self.superuser_dcb_append(app, 4)

        role = self.connect_role()
        self.addCleanup(role.close)
        notices: List[str] = []
        role.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        role_pid = role.execute("SELECT pg_backend_pid()").fetchone()[0]

        counts = collections.Counter()
        kinds = collections.Counter()
        bad_errors = collections.Counter()
        slowest: List[tuple] = []
        examples: Dict[Any, str] = {}
        fold_runs = 0
        call_time = check_time = 0.0
        history: collections.deque = collections.deque(maxlen=12)
        settings: Dict[tuple, str] = {}
        oks = collections.Counter()
        sqlstates = collections.Counter()
        refused_since: Dict[Any, List[str]] = collections.defaultdict(list)
        forgotten_refusals = collections.Counter()
        gap_ok: set = set()
        read_only = False
        isolation = "read committed"
        crashed = None
        before = self.snapshot()
        t0 = time.monotonic()
        done = 0

        for i in range(n_calls):
            if time.monotonic() - t0 > MAX_SECONDS:
                self.report("stopping after %d calls: over ES_FUZZ_MAX_SECONDS=%s"
                            % (i, MAX_SECONDS))
                break
            if i and i % 200 == 0:
                self.restore_grants()      # the role may have revoked its own admin
                before = self.snapshot()
            want_ro = rng.random() < 0.05
            if want_ro != read_only:
                role.execute("SET default_transaction_read_only = %s" % ("on" if want_ro else "off"))
                read_only = want_ro
            r = rng.random()
            want_iso = "serializable" if r < 0.05 else "repeatable read" if r < 0.1 else \
                "read committed"
            if want_iso != isolation:
                role.execute("SET default_transaction_isolation = '%s'" % want_iso)
                isolation = want_iso
            call = fz.next_call()
            counts[call.kind] += 1
            kinds[call.fkind] += 1
            done += 1
            label = "call #%d (seed %d)%s%s: %s" % (i, seed, " [read only]" if read_only else "",
                                                   "" if isolation == "read committed"
                                                   else " [%s]" % isolation,
                                                 call.desc)
            notices.clear()
            if "statement_timeout" in call.meta:
                role.execute("SET statement_timeout = %d" % call.meta["statement_timeout"])
            t_call = time.monotonic()
            try:
                rows = role.execute(call.sql, call.params).fetchall()
                error = None
            except psycopg.Error as e:
                rows = None
                error = e
            t_call = time.monotonic() - t_call
            if "statement_timeout" in call.meta and not role.broken:
                role.execute("SET statement_timeout = '3s'")
            if VERBOSE:
                print("#%d %.3fs %s -> %s" % (i, t_call, call.desc[:400],
                                              error.sqlstate if error else "ok"),
                      file=sys.stderr, flush=True)
            slowest.append((t_call, "#%d %s -> %s" % (i, call.desc[:200],
                                                      error.sqlstate if error else "ok")))
            slowest.sort(key=lambda x: -x[0])
            del slowest[3:]
            for n in notices:
                if "es_fuzz_secret_ran" in n:
                    self.fail_soft("%s\n  ran es_fuzz_fold_secret without EXECUTE: %s" % (label, n))
                if n.startswith("es_fuzz_fold runs as "):
                    fold_runs += 1
                if n.startswith("es_fuzz_fold runs as ") and n != "es_fuzz_fold runs as " + ROLE:
                    self.fail_soft("%s\n  a fold function ran as another role: %s" % (label, n))

            history.append("#%d %s -> %s" % (i, call.desc[:300],
                                             error.sqlstate if error else "ok"))
            if error is not None:
                state = error.sqlstate
                if role.broken or role.closed:
                    sqlstates["connection lost"] += 1
                    crashed = ("%s\n  the connection was lost: %s\n  the calls before it:\n    %s"
                               "\n  the fold settings made so far (the latest per topic):\n    %s"
                               % (label, str(error).strip().splitlines()[0],
                                  "\n    ".join(list(history)[:-1]),
                                  "\n    ".join(v for _, v in sorted(settings.items(), key=str))
                                  or "(none)"))
                    self.fail_soft(crashed)
                    break
                sqlstates[state or "client"] += 1
                msg = (error.diag.message_primary or str(error)).splitlines()[0][:300]
                examples.setdefault(state, "%s: %s" % (call.kind, msg[:120]))
                bad = None
                if state is None:
                    bad = "client-side error (fuzzer bug?): %r" % error
                elif state[:2] in FATAL_CLASSES:
                    bad = "SQLSTATE %s: %s" % (state, msg)
                elif state[:2] not in EXPECTED_CLASSES:
                    bad = "unexpected SQLSTATE %s: %s" % (state, msg)
                if bad is not None:
                    # each kind of bad error once (with how often it came)
                    key = (call.kind, state, msg)
                    bad_errors[key] += 1
                    if bad_errors[key] == 1:
                        self.fail_soft("%s\n  %s" % (label, bad))
                if call.meta.get("rewrap") and state != "42501":
                    self.fail_soft("%s\n  es_rewrap_keys() as %s: %s, expected 42501"
                                   % (label, ROLE, state))
                if call.meta.get("clean") and state not in FORGOTTEN_OK:
                    self.fail_soft("%s\n  an append to forgotten aggregate(s) %s failed with "
                                   "%s (%s), expected 55000"
                                   % (label, call.meta["forgotten"], state, msg))
                if call.meta.get("forgotten"):
                    forgotten_refusals[state] += 1
                dcb = call.meta.get("dcb")
                if call.kind.startswith("es_dcb_"):
                    self.dcb_stats["%s refused %s" % (call.kind, state)] += 1
                if dcb is not None and state == "23505":
                    if dcb["predict"] is False:
                        self.fail_soft("%s\n  23505 (%s), though %s" % (
                            label, msg, "it has no condition" if dcb["cond"] == "none" else
                            "no event after %d matches its condition" % dcb["cond"][1]
                            if isinstance(dcb["cond"], tuple) else "its condition is invalid"))
                    self.dcb_stats["conditions failed (23505)"] += 1
                    self.dcb_stats["23505 predicted"] += dcb["predict"] is True
                elif dcb is not None and dcb["predict"]:
                    self.dcb_stats["matching conditions refused before the check"] += 1
                if call.meta.get("append") and call.meta.get("events") and call.app in (
                        {APP_A, APP_B} | fz.created):
                    fz.last_refused = (call.app, call.meta["events"])
                if state in ("57014", "40P01", "40001") and call.meta.get("append"):
                    gap_ok.add(call.app)     # an append that was interrupted may have used an id
                if role.execute("SELECT pg_backend_pid()").fetchone()[0] != role_pid:
                    self.fail_soft("%s\n  the role's backend pid changed" % label)
                refused_since[call.app].append("#%d %s -> %s" % (i, call.desc[:300], state))
                del refused_since[call.app][:-20]
            else:
                oks[call.kind] += 1
                if call.meta.get("dcb_read") is not None or call.kind in ("es_dcb_read",
                                                                           "es_dcb_head"):
                    self.check_dcb_read(call, rows, label)
                if call.kind in ("es_define_fold", "es_set_fold_function", "es_set_snapshot_every"):
                    settings[(call.kind, call.app, call.meta.get("topic"))] = \
                        "#%d %s" % (i, call.desc[:300])

            t_check = time.monotonic()
            try:
                after = self.snapshot()
            except psycopg.Error as e:
                crashed = ("%s\n  the superuser's state query failed after it: %s %s\n"
                           "  the calls before it:\n    %s"
                           % (label, e.sqlstate, str(e).strip(), "\n    ".join(list(history)[:-1])))
                self.fail_soft(crashed)
                break

            if error is not None or read_only:
                if after != before:
                    self.fail_soft("%s\n  %s, yet it changed the state:\n%s"
                                   % (label, "failed with %s" % error.sqlstate if error
                                      else "succeeded in a read-only transaction",
                                      describe_diff(before, after)))
            else:
                self.check_success(call, rows, before, after, label, refused_since, gap_ok)
            if error is None and call.meta.get("rewrap"):
                self.fail_soft("%s\n  es_rewrap_keys() succeeded for %s" % (label, ROLE))
            if error is None and call.meta.get("forgotten"):
                self.fail_soft("%s\n  an append to forgotten aggregate(s) %s succeeded"
                               % (label, call.meta["forgotten"]))
            before = after
            check_time += time.monotonic() - t_check
            call_time += t_call

        elapsed = time.monotonic() - t0
        if crashed is None:
            if role.execute("SELECT pg_backend_pid()").fetchone()[0] != role_pid:
                self.fail_soft("the role's backend changed during the run")
            if self.su.execute("SELECT pg_backend_pid()").fetchone()[0] != su_pid:
                self.fail_soft("the superuser's backend changed during the run")

        # Every application: one more append gets exactly the next id.
        if crashed is None:
            self.final_appends(gap_ok, refused_since)

        wait_for_server(self.admin_dsn)
        with psycopg.connect(self.admin_dsn, autocommit=True) as c:
            self.assertEqual(c.execute("SELECT 1").fetchone()[0], 1)
            now_started = c.execute("SELECT pg_postmaster_start_time()").fetchone()[0]
        if now_started != started:
            self.fail_soft("the postmaster restarted: %s, then %s" % (started, now_started))

        self.report("fuzzed %d calls in %.1f s (%.1f s in the calls, %.1f s checking): "
              "%d succeeded, %d failed" % (done, elapsed, call_time, check_time,
                                           sum(oks.values()), sum(sqlstates.values())))
        self.report("errors by SQLSTATE: " + ", ".join("%s %d" % kv for kv in sorted(sqlstates.items())))
        self.report("calls/successes by function: " + ", ".join(
            "%s %d/%d" % (k, counts[k], oks[k]) for k in sorted(counts)))
        if VERBOSE:
            for state in sorted(examples, key=str):
                self.report("  %s e.g. %s" % (state, examples[state]))
        self.report("es_fuzz_fold ran %d times, always as %s" % (fold_runs, ROLE))
        self.report_dcb()
        self.report_encryption(forgotten_refusals, n_calls == done and crashed is None)
        self.report("slowest calls: " + "; ".join("%.2f s %s" % x for x in slowest))
        for (kind, state, msg), n in sorted(bad_errors.items(), key=str):
            self.report("bad error %dx: %s: %s %s" % (n, kind, state, msg))
        never = [k for k in fz.kind_names if kinds[k] == 0]
        if never and crashed is None and done == n_calls:
            self.fail_soft("never called: %s" % ", ".join(never))
        if self.failures:
            self.fail("%d problem(s), seed %d:\n%s" % (len(self.failures), seed,
                                                      "\n".join(self.failures[:30])))

    def check_success(self, call: Call, rows, before, after, label, refused_since, gap_ok):
        fz = self.fz
        app = call.app
        b_apps, a_apps = before["apps"], after["apps"]
        expected_tracking = dict(before["tracking"])
        dcb = call.meta.get("dcb")
        if dcb is not None:
            ids = self.dcb_success(call, rows, label)
        if call.meta.get("append"):
            if dcb is None:
                ids = [r[0] for r in rows]
            evs = call.meta.get("events")
            if evs is not None and len(ids) != len(evs):
                self.fail_soft("%s\n  %d events recorded, %d ids returned" % (label, len(evs), len(ids)))
            if ids:
                h = fz.highest.get(app, 0)
                if sorted(ids) != list(range(h + 1, h + 1 + len(ids))) and app not in gap_ok:
                    self.fail_soft("%s\n  returned ids %s, expected %d..%d: an id was used up "
                                   "(or handed out twice); refused calls on %r since the last "
                                   "append:\n    %s"
                                   % (label, ids, h + 1, h + len(ids), app,
                                      "\n    ".join(refused_since.get(app, [])) or "(none)"))
                fz.highest[app] = max(h, max(ids))
            refused_since.pop(app, None)
            for (u, v, _t, _s) in (evs or []):
                if isinstance(v, int) and u is not None:
                    fz.versions[(app, u)] = max(fz.versions.get((app, u), -1), v)
            if call.meta.get("tracked"):
                upstream, nid = call.meta["tracked"]
                fz.positions[(app, upstream)] = nid
                if app in a_apps:
                    expected_tracking[(a_apps[app][0], upstream)] = nid
        else:
            ids = []
        if call.meta.get("create") is not None and call.meta["create"] not in CORE_APPS:
            fz.created.add(call.meta["create"])
        try:
            if call.meta.get("append") and ids and call.meta.get("events") is not None:
                self.check_stored(app, ids, call.meta["events"], label)
            elif dcb is not None and ids and len(ids) == dcb["n"]:
                self.check_dcb_stored(app, ids, dcb["events"], label)
            elif call.kind == "es_configure":
                self.check_configure(call, label)
            elif call.kind == "es_forget":
                self.check_forget(call, label)
            elif call.kind == "es_select_stored":
                self.check_select_stored(call, rows, label)
        except psycopg.Error as e:
            self.fail_soft("%s\n  the superuser's check after it failed: %s %s"
                           % (label, e.sqlstate, str(e).strip().splitlines()[0]))
        # events: only the target of an append gains exactly its ids
        for name, b in b_apps.items():
            a = a_apps.get(name)
            if a is None:
                self.fail_soft("%s\n  application %r disappeared" % (label, name))
                continue
            if name == app and ids:
                want = (b[0], max(ids), b[2] + len(ids), b[3] + len(ids), max(ids))
            else:
                want = b
            if a != want:
                self.fail_soft("%s\n  application %r: (id, max id, es_select rows, rows, "
                               "max row id) was %s, is %s, expected %s" % (label, name, b, a, want))
        for name, a in a_apps.items():
            if name not in b_apps and a[1:] != (None, 0, 0, None):
                self.fail_soft("%s\n  new application %r already has events: %s" % (label, name, a))
        if after["tracking"] != expected_tracking:
            self.fail_soft("%s\n  tracking positions were %s, are %s, expected %s"
                           % (label, before["tracking"], after["tracking"], expected_tracking))

    # --- stored form and forgetting -------------------------------------------

    def check_stored(self, app, ids, evs, label):
        """The events of a successful append: read back as sent, stored in the
        form the application's settings ask for."""
        fz = self.fz
        compression, encryption = fz.config.get(app, (False, False))
        lo, hi = min(ids), max(ids)
        rows = self.su.execute(
            "SELECT s.id, s.stored_form, s.stored_state, e.state "
            "  FROM es_select_stored(%s, %s, %s) s JOIN es_select(%s, %s, %s) e USING (id)",
            [app, lo, hi - lo + 1, app, lo, hi - lo + 1]).fetchall()
        got = {r[0]: r[1:] for r in rows}
        for nid, (u, v, _t, sent) in zip(ids, evs):
            if nid not in got:
                self.fail_soft("%s\n  event %d is missing from es_select_stored/es_select"
                               % (label, nid))
                continue
            form, stored, state = got[nid]
            if encryption:
                fz.keyed.add((app, u))
            if state != sent:
                self.fail_soft("%s\n  event %d (%s v%s) reads back as %s, was sent as %s"
                               % (label, nid, u, v, short(state), short(sent)))
            flags = stored[1] if form == 1 and len(stored) > 1 else 0
            if form == 1 and (len(stored) < 6 or stored[0] != 1
                              or int.from_bytes(stored[2:6], "big") != len(sent)):
                problem = "a bad header: %s" % short(stored[:24])
            elif encryption and not flags & 2:
                problem = "not encrypted (form %d, flags %d)" % (form, flags)
            elif not encryption and flags & 2:
                problem = "encrypted, though the application does not encrypt"
            elif not encryption and not compression and form != 0:
                problem = "form %d, though the application neither compresses nor encrypts" % form
            elif encryption and len(sent) >= 8 and sent in stored:
                problem = "the plaintext is in the stored state"
            else:
                continue
            self.fail_soft("%s\n  event %d of %r (compression %s, encryption %s): %s"
                           % (label, nid, app, compression, encryption, problem))

    def check_configure(self, call, label):
        fz = self.fz
        app = call.app
        old = fz.config.get(app, (False, False))
        want = tuple(o if n is None else n for o, n in
                     zip(old, (call.meta["compression"], call.meta["encryption"])))
        row = self.su.execute("SELECT compression, encryption FROM es_applications "
                              "WHERE name = %s", [app]).fetchone()
        if row is None:
            self.fail_soft("%s\n  es_configure succeeded on %r, which does not exist"
                           % (label, app))
            return
        if tuple(row) != want:
            self.fail_soft("%s\n  %r was (compression, encryption) %s, is %s, expected %s"
                           % (label, app, old, tuple(row), want))
        fz.config[app] = tuple(row)

    def check_forget(self, call, label):
        """After a successful es_forget (a write without an append): the key is
        destroyed, the snapshots gone, the chain intact, and only the
        encrypted states read as NULL."""
        fz = self.fz
        app, u = call.app, call.meta["target"]
        fz.forgotten.add((app, u))
        destroyed, snapshots, ok = self.su.execute(
            "SELECT (SELECT bool_and(k.wrapped_key IS NULL AND k.master_key_id IS NULL "
            "                        AND k.forgotten_at IS NOT NULL) "
            "          FROM es_keys k WHERE k.application_id = a.id AND k.originator_id = %s), "
            "       (SELECT count(*) FROM es_snapshots n "
            "         WHERE n.application_id = a.id AND n.originator_id = %s), "
            "       (SELECT v.ok FROM es_verify(a.name, %s) v) "
            "  FROM es_applications a WHERE a.name = %s", [u, u, u, app]).fetchone()
        if not destroyed or snapshots or not ok:
            self.fail_soft("%s\n  after es_forget: key destroyed %s, %d snapshots left, "
                           "es_verify ok %s" % (label, destroyed, snapshots, ok))
        wrong = self.su.execute(
            "SELECT s.id, s.stored_form, e.state IS NULL"
            "  FROM es_select_stored(%s, 1, 1000000) s JOIN es_select(%s, 1, 1000000) e USING (id)"
            " WHERE s.originator_id = %s"
            "   AND (e.state IS NULL) <> (s.stored_form = 1 AND get_byte(s.stored_state, 1) & 2 = 2)",
            [app, app, u]).fetchall()
        if wrong:
            self.fail_soft("%s\n  after es_forget, (id, form, state is NULL) of events that "
                           "should read NULL exactly when encrypted: %s" % (label, wrong[:5]))

    def check_select_stored(self, call, rows, label):
        """es_select_stored's rows are es_select's, the state as stored."""
        start, max_count = call.meta["start"], call.meta["max_count"]
        plain = self.su.execute("SELECT id, originator_id, originator_version, topic, "
                                "event_hash, state FROM es_select(%s, %s, %s)",
                                [call.app, start, max_count]).fetchall()
        if [r[:4] + (r[6],) for r in rows] != [p[:5] for p in plain]:
            self.fail_soft("%s\n  es_select_stored gave (id, aggregate, version, topic, hash) "
                           "%s, es_select %s" % (label, [short(r[:4]) for r in rows[:3]],
                                                 [short(p[:4]) for p in plain[:3]]))
            return
        for r, p in zip(rows, plain):
            form, stored, state = r[4], r[5], p[5]
            if form == 0 and stored != state:
                problem = "form 0, yet not the state es_select gives"
            elif form == 1 and state is not None and (
                    len(stored) < 6 or int.from_bytes(stored[2:6], "big") != len(state)):
                problem = "form 1 with a header that does not match the state"
            elif form == 1 and state is not None and stored[1] & 2 and \
                    len(state) >= 8 and state in stored:
                problem = "encrypted, yet the plaintext is in it"
            elif form not in (0, 1):
                problem = "unknown form %s" % form
            else:
                continue
            self.fail_soft("%s\n  id %s: %s (stored %s, state %s)"
                           % (label, r[0], problem, short(stored), short(state)))

    # --- Dynamic Consistency Boundaries -----------------------------------------

    def dcb_success(self, call, rows, label) -> List[int]:
        """A successful es_dcb_append: it could succeed, its ids (as many as its
        events, the last returned), and the model gains its events."""
        fz, dcb, app = self.fz, call.meta["dcb"], call.app
        self.dcb_stats["appends"] += 1
        if dcb["ok"] is False:
            self.fail_soft("%s\n  es_dcb_append succeeded, though its arguments are invalid" % label)
        if dcb["predict"]:
            items, after = dcb["cond"]
            self.fail_soft("%s\n  es_dcb_append succeeded, though events after %d match its "
                           "condition: positions %s" % (label, after,
                                                        fz.dcb_positions(app, items, after)[:10]))
        last = rows[0][0] if rows and len(rows) == 1 and len(rows[0]) == 1 else None
        n = dcb["n"]
        if not isinstance(last, int) or n is None:
            self.fail_soft("%s\n  es_dcb_append returned %s for %s events" % (label, rows, n))
            return []
        self.dcb_stats["events"] += n
        if dcb["cond"] != "none":
            self.dcb_stats["conditions passed"] += 1
        ids = list(range(last - n + 1, last + 1))
        fz.dcb.setdefault(app, []).extend((p, t, tags) for p, (t, tags, _) in zip(ids, dcb["events"]))
        return ids

    def check_dcb_stored(self, app, ids, evs, label):
        """The tagged events of a successful append, read back as the superuser:
        at their positions, with their types and tags (sorted, distinct), the
        data as sent (JSON as jsonb writes it, base64 as the bytes), indexed by
        each tag and the type; stored as the application's settings say."""
        fz = self.fz
        lo, hi = ids[0], ids[-1]
        kinds = [p[0] for _t, _g, p in evs]
        payloads = [p[1] if p[0] == "data" else None for _t, _g, p in evs]
        raws = [p[1].raw if p[0] == "b64" else None for _t, _g, p in evs]
        rows = self.su.execute(
            "SELECT r.position, r.type, r.tags, r.event_id, r.data_bytes, r.data IS NULL, "
            "       CASE WHEN s.kind = 'data' "
            "            THEN r.data IS NOT DISTINCT FROM s.payload::jsonb "
            "                 AND r.data_bytes IS NOT DISTINCT FROM "
            "                     convert_to(s.payload::jsonb::text, 'UTF8') "
            "            ELSE (s.raw IS NULL OR r.data_bytes IS NOT DISTINCT FROM s.raw) "
            "                 AND CASE WHEN r.data IS NULL THEN true "
            "                          ELSE r.data = convert_from(r.data_bytes, 'UTF8')::jsonb END "
            "       END "
            "  FROM es_dcb_read(%s, NULL, %s, %s) r "
            "  LEFT JOIN unnest(%s::text[], %s::text[], %s::bytea[]) "
            "       WITH ORDINALITY s(kind, payload, raw, i) ON s.i = r.position - %s + 1 "
            " ORDER BY r.position",
            [app, lo - 1, len(ids), kinds, payloads, raws, lo]).fetchall()
        if [r[0] for r in rows] != ids:
            self.fail_soft("%s\n  es_dcb_read (as the superuser) after position %d gives positions "
                           "%s, expected %s" % (label, lo - 1, [r[0] for r in rows][:10], ids[:10]))
            return
        stored = []
        for r, (t, tags, (kind, p)) in zip(rows, evs):
            pos, typ, got_tags, event_id, data_bytes, data_null, same = r
            problem = None
            if typ != t:
                problem = "type %s, sent %s" % (short(typ), short(t))
            elif list(got_tags) != dcb_sorted(tags):
                problem = "tags %s, sent %s" % (short(got_tags), short(sorted(tags)))
            elif not same:
                problem = "data %s not as sent (%s %s)" % (
                    short(data_bytes), kind, short(p if kind == "data" else p.raw))
            elif kind == "data" and data_null:
                problem = "data NULL, sent as JSON"
            elif kind == "b64" and p.is_json is not None and data_null == p.is_json:
                problem = "data %s, though the bytes %s JSON text" % (
                    "NULL" if data_null else "not NULL", "are" if p.is_json else "are no")
            if problem:
                self.fail_soft("%s\n  tagged event at position %d: %s" % (label, pos, problem))
            stored.append((str(event_id), 1, typ, bytes(data_bytes)))
        index = self.su.execute(
            "SELECT x.notification_id, x.kind::text, x.value FROM es_dcb_index x "
            "  JOIN es_applications a ON a.id = x.application_id "
            " WHERE a.name = %s AND x.notification_id BETWEEN %s AND %s", [app, lo, hi]).fetchall()
        want = {(p, "y", t) for p, (t, _g, _d) in zip(ids, evs)} | \
            {(p, "g", g) for p, (_t, tags, _d) in zip(ids, evs) for g in tags}
        if set(index) != want or len(index) != len(want):
            self.fail_soft("%s\n  es_dcb_index rows at positions %d..%d: %d, expected %d; "
                           "missing %s, extra %s" % (label, lo, hi, len(index), len(want),
                                                     short(sorted(want - set(index))),
                                                     short(sorted(set(index) - want))))
        self.check_stored(app, ids, stored, label)
        # es_append, es_state, es_forget, ... meet tagged events' own aggregates
        if fz.chance(0.3):
            fz.versions[(app, fz.rng.choice(stored)[0])] = 1

    def check_dcb_read(self, call, rows, label):
        """A successful es_dcb_read or es_dcb_head returns what the model says."""
        want = call.meta["dcb_read"]
        self.dcb_stats[call.kind] += 1
        if want is None:
            return
        if want[0] == "bad":
            self.fail_soft("%s\n  %s succeeded, though its arguments are invalid" % (label, call.kind))
        elif want[0] == "head":
            got = rows[0][0] if rows and len(rows) == 1 else rows
            if got != want[1]:
                self.fail_soft("%s\n  es_dcb_head gave %s, expected %s" % (label, got, want[1]))
            self.dcb_stats["heads checked"] += 1
        else:
            got = [(r[0], r[1], list(r[3]) if r[3] is not None else None) for r in rows]
            self.dcb_stats["reads checked"] += 1
            self.dcb_stats["rows read"] += len(got)
            if got != want[1]:
                diff = [(g, w) for g, w in zip(got, want[1]) if g != w][:3]
                self.fail_soft("%s\n  es_dcb_read gave %d rows (positions %s), expected %d (%s); "
                               "first differences (got, expected): %s"
                               % (label, len(got), short([g[0] for g in got]), len(want[1]),
                                  short([w[0] for w in want[1]]), short(diff)))

    def report_dcb(self):
        n = self.su.execute("SELECT count(*) FILTER (WHERE tags IS NOT NULL), "
                            "       count(*) FILTER (WHERE tags IS NOT NULL AND stored_form = 1 "
                            "                          AND get_byte(state, 1) & 2 = 2) "
                            "  FROM es_stored_events").fetchone()
        self.report("DCB: " + ", ".join("%s %d" % kv for kv in sorted(self.dcb_stats.items())) +
                    "; %d tagged events stored (%d encrypted), the model has %d"
                    % (n[0], n[1], sum(len(v) for v in self.fz.dcb.values())))

    def superuser_dcb_append(self, app: str, calls: int):
        fz = self.fz
        for i in range(calls):
            evs = [{"type": fz.rng.choice(DCB_TYPES),
                    "data": {"seed": i, "k": j},
                    "tags": fz.rng.sample(DCB_TAGS, fz.rng.randint(0, 3))}
                   for j in range(fz.rng.randint(1, 3))]
            (last,) = self.su.execute("SELECT es_dcb_append(%s, %s::jsonb)",
                                      [app, dump_json(evs)]).fetchone()
            h = fz.highest.get(app, 0)
            self.assertEqual(last, h + len(evs))
            fz.dcb.setdefault(app, []).extend(
                (last - len(evs) + 1 + j, e["type"], frozenset(e["tags"])) for j, e in enumerate(evs))
            fz.highest[app] = last

    def report_encryption(self, forgotten_refusals, complete):
        row = self.su.execute(
            "SELECT count(*) FILTER (WHERE stored_form = 1 AND get_byte(state, 1) & 2 = 2), "
            "       count(*) FILTER (WHERE stored_form = 1 AND get_byte(state, 1) & 1 = 1), "
            "       count(*), "
            "       (SELECT count(*) FROM es_keys WHERE wrapped_key IS NOT NULL), "
            "       (SELECT count(*) FROM es_keys WHERE wrapped_key IS NULL), "
            "       (SELECT count(*) FROM es_snapshots WHERE stored_state IS NOT NULL), "
            "       (SELECT string_agg(name || '=' || compression::int || encryption::int, ' '"
            "                          ORDER BY id) FROM es_applications"
            "         WHERE compression OR encryption) "
            "  FROM es_stored_events").fetchone()
        encrypted, compressed, total, keys, forgotten, enc_snapshots, configured = row
        self.report("stored: %d of %d events encrypted, %d compressed; %d data keys, %d "
                    "forgotten, %d encrypted snapshots; applications (compression, encryption) "
                    "%s" % (encrypted, total, compressed, keys, forgotten, enc_snapshots,
                            configured or "none"))
        self.report("appends refused for forgotten aggregates: " + (", ".join(
            "%s %d" % kv for kv in sorted(forgotten_refusals.items())) or "none"))
        if complete and (encrypted == 0 or forgotten == 0):
            self.fail_soft("encryption was not exercised: %d encrypted events, %d forgotten "
                           "aggregates" % (encrypted, forgotten))

    def final_appends(self, gap_ok, refused_since):
        fz = self.fz
        names = [r[0] for r in self.su.execute("SELECT name FROM es_applications ORDER BY id")]
        checked = 0
        for name in names:
            u = str(uuid.UUID(int=fz.rng.getrandbits(128), version=4))
            try:
                (nid,) = self.su.execute("SELECT es_append(%s::text, %s::uuid, 1, 'final', "
                                         "'{}'::bytea)", [name, u]).fetchone()
            except psycopg.errors.ConfigurationLimitExceeded:
                continue
            h = fz.highest.get(name, 0)
            checked += 1
            if (nid != h + 1) if name not in gap_ok else (nid <= h):
                self.fail_soft("final append to %r got id %d, expected %d: an id was used up; "
                               "refused calls on it since its last append:\n    %s"
                               % (name, nid, h + 1,
                                  "\n    ".join(refused_since.get(name, [])) or "(none)"))
            fz.highest[name] = nid
        self.report("final appends: %d applications, each got the next id%s"
              % (checked, " (gaps allowed after interruptions: %s)" % sorted(gap_ok) if gap_ok else ""))


def describe_diff(before, after) -> str:
    out = []
    for name in sorted(set(before["apps"]) | set(after["apps"])):
        b, a = before["apps"].get(name), after["apps"].get(name)
        if a != b:
            out.append("    application %r: %s -> %s" % (name, b, a))
    if before["tracking"] != after["tracking"]:
        out.append("    tracking: %s -> %s" % (before["tracking"], after["tracking"]))
    tables = ["es_applications", "es_folds", "es_grants", "es_seals", "es_snapshots", "es_keys",
              "es_dcb_index"]
    for t, b, a in zip(tables, before["digests"], after["digests"]):
        if a != b:
            out.append("    %s changed" % t)
    return "\n".join(out)


def wait_for_server(dsn: str, seconds: float = 60):
    deadline = time.monotonic() + seconds
    while True:
        try:
            with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as c:
                c.execute("SELECT 1")
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


if __name__ == "__main__":
    unittest.main()
