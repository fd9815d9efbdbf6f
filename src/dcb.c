/*-------------------------------------------------------------------------
 *
 * dcb.c
 *		Dynamic Consistency Boundaries (dcb.events): tagged events, queries
 *		over types and tags, and appends conditional on a query.
 *
 * THE MODEL
 *
 * A tagged event has a type, data and a set of tags.  A query is a list of
 * items, each a set of types and a set of tags; an event matches an item if
 * its type is one of the item's types (any type when the item names none)
 * and it carries every tag of the item; it matches the query if it matches
 * any item.  The empty query matches every tagged event.  A writer reads the
 * events matching its query, decides, and appends with the condition "fail
 * if an event matching the query was recorded after the last position I
 * read".  Two writers whose decisions depend on each other's events are
 * therefore serialized; writers about unrelated things are not.
 *
 * STORAGE
 *
 * Tagged events go into es_stored_events beside aggregate events: one log,
 * one sequence of ids, every reader, follower, seal and announcement as
 * today.  Each is the only event (version 1) of an aggregate of its own, a
 * random UUID (event_id), so it is hashed, compressed and encrypted as any
 * first event (its chain starts at genesis; the tags are in the hash,
 * integrity.c; with encryption each has its own data key, so es_forget can
 * forget one event).  Its type is the topic and its tags, sorted and
 * without duplicates, are the tags column (NULL for aggregate events).
 * es_dcb_index holds one row per tag (kind 'g') and one for the type (kind
 * 'y') with the position, so a query is served by a B-tree range scan per
 * item, starting at the position: its cost depends on the matching events
 * after the position, not on the size of the log.
 *
 * THE CONDITION: LOCKS (who holds what, until the end of the transaction)
 *
 * Each tag, each type, and "any tagged event" has a lock: a transaction-level
 * advisory lock of class ES_DCB_LOCK_CLASS keyed by the application and a
 * hash of the key.  A writer holds RowExclusiveLock on the keys of the events
 * it appends (every tag, the type, and "any"): writers do not wait for
 * writers.  A conditional writer holds ShareLock on one key per item that
 * every event matching the item must carry: the item's first tag, or, for a
 * tag-less item, each of its types; "any" for the empty query.  ShareLock
 * and RowExclusiveLock conflict, so while a conditional writer checks and
 * until it commits, no event that could match its condition is being
 * written by anyone else, and it waits for those that were being written
 * when it came.  A key in both roles is taken in ShareRowExclusiveLock
 * (which conflicts with itself, so two writers that both check and write
 * the same key run one after the other instead of deadlocking on an
 * upgrade).  All keys of a call are sorted by their hash and taken in that
 * order, so two calls cannot deadlock with each other; a hash collision only
 * makes two keys share one lock.  (Two calls in one transaction take their
 * keys in two rounds, and may deadlock with another transaction: 40P01.)
 *
 * Then the check, with a new snapshot taken after the locks (so in every
 * isolation level it sees what committed while we waited): for each item,
 * the index rows of its key after the position, each event fetched and
 * matched in full.  A match raises 23505 and nothing is written.  Then the
 * events are stored and indexed, and the locks are held until commit.
 *
 * Why at most one of two conflicting appends succeeds: say A's new events
 * match B's condition.  Both lock a common key (B's item key is on A's
 * event) in conflicting modes, so one commits before the other checks.  If
 * A commits first, B's check (after its locks) sees A's events, which lie
 * after any position B could have read before A committed, and fails.  If B
 * commits first, A's events come after B's check and B's condition was
 * about the events before it: both succeed, as the specification wants.
 * The isolation specs (test/isolation/dcb_*.spec) and test/stress/dcb.sh
 * attack this.
 *
 * THE READ: NEVER A POSITION ABOVE ONE THAT COULD STILL BECOME VISIBLE
 *
 * es_dcb_read walks the index rows of each item's keys after the position,
 * merged in position order (one B-tree scan per key, no sort), and must
 * stop, as es_select does, before the first position that could still
 * become visible.  Only matching events matter, and ordering.c's two rules
 * apply to them.  (a) A writer holds its slot only while it inserts, so
 * instead of stopping below the ids still in a slot, the reader waits those
 * writers out (EsGapSettle, microseconds), after taking its snapshot and
 * before reading the index; ids handed out later are not visible in its
 * snapshot.  (b) The index rows are read with SnapshotAny, and a row whose
 * transaction is in progress for the reader's snapshot stops the walk; rows
 * of aborted transactions are skipped.  Writers insert the index rows while
 * their slot still covers the ids (EsInsertEvents' `also`), so ordering.c's
 * argument carries over: a matching position g below a returned h was handed
 * out before h committed, hence before the snapshot; after the wait its
 * index rows are in (b) or its writer failed.  So a read stops only at a
 * matching event that is really still open: an open event holds back the
 * readers of its own tags and types and no one else, and a writer always
 * reads its own committed events.  The empty query walks the log's primary
 * key with the same two rules and skips aggregate events.  On a standby (no
 * slots) rule (a) is the primary's watermark, as for es_select.
 *
 * es_dcb_head is the last position such a read would return: what a writer
 * passes as "after".
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/relscan.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_collation.h"
#include "catalog/pg_type.h"
#include "common/base64.h"
#include "common/hashfn.h"
#include "common/jsonapi.h"
#include "executor/executor.h"
#include "executor/tuptable.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "nodes/execnodes.h"
#include "storage/bufmgr.h"
#include "storage/lmgr.h"
#include "storage/lock.h"
#include "tcop/utility.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/snapmgr.h"
#include "utils/uuid.h"

#include "append.h"
#include "codec.h"
#include "dcb.h"
#include "integrity.h"
#include "read.h"

/* Distinguishes tag and type locks from aggregate and seal locks. */
#define ES_DCB_LOCK_CLASS	0x4555

/* The longest tag: its index row must fit a B-tree page with room to spare. */
#define ES_MAX_TAG_BYTES	1024

#define ES_DCB_TAG		'g'
#define ES_DCB_TYPE		'y'
#define ES_DCB_ANY		'a'		/* only a lock key, never an index row */

/* es_dcb_index's columns */
#define Anum_dcb_application_id		1
#define Anum_dcb_kind				2
#define Anum_dcb_value				3
#define Anum_dcb_notification_id	4
#define Natts_dcb_index				4

/* es_dcb_event's columns */
#define Natts_dcb_event				7

typedef struct EsDcbItem
{
	int			ntypes;
	text	  **types;			/* sorted, distinct */
	int			ntags;
	text	  **tags;			/* sorted, distinct */
} EsDcbItem;

typedef struct EsDcbQuery
{
	bool		all;			/* NULL or []: every tagged event */
	int			nitems;
	EsDcbItem  *items;
} EsDcbQuery;

/* One tagged event of es_dcb_append, as parsed. */
typedef struct EsDcbEventIn
{
	text	   *type;
	bytea	   *data;
	int			ntags;
	text	  **tags;
} EsDcbEventIn;

/* ------------------------------------------------------------------------
 * Input
 * ------------------------------------------------------------------------
 */

/* Sorts texts (byte order, as COLLATE "C") and drops duplicates; returns the count. */
static int
EsSortDistinct(text **v, int n)
{
	int			out = 0;

	if (n <= 1)
		return n;
	qsort(v, n, sizeof(text *), EsCompareTextPtrs);
	for (int i = 0; i < n; i++)
		if (out == 0 || EsCompareTextPtrs(&v[out - 1], &v[i]) != 0)
			v[out++] = v[i];
	return out;
}

static void
EsDcbNotNull(const JsonbValue *v, const char *path)
{
	if (v == NULL || v->type == jbvNull)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be null", path)));
}

/* A non-empty string of at most `limit` bytes. */
static text *
EsDcbString(const JsonbValue *v, const char *path, int limit)
{
	EsDcbNotNull(v, path);
	if (v->type != jbvString)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be a string", path)));
	if (v->val.string.len == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must not be empty", path)));
	if (v->val.string.len > limit)
		ereport(ERROR,
				(errcode(ERRCODE_STRING_DATA_RIGHT_TRUNCATION),
				 errmsg("%s is too long", path),
				 errdetail("It has %d bytes; the limit is %d.", v->val.string.len, limit)));
	return cstring_to_text_with_len(v->val.string.val, v->val.string.len);
}

static bool
EsDcbIsArray(const JsonbValue *v)
{
	return v->type == jbvBinary && JsonContainerIsArray(v->val.binary.data);
}

static bool
EsDcbIsObject(const JsonbValue *v)
{
	return v->type == jbvBinary && JsonContainerIsObject(v->val.binary.data);
}

/*
 * The elements of a JSON array container, in order (nested containers as
 * jbvBinary).
 */
static JsonbValue *
EsDcbElements(JsonbContainer *array, int *n)
{
	int			count = JsonContainerSize(array);
	JsonbValue *out = palloc(sizeof(JsonbValue) * Max(count, 1));
	JsonbIterator *it = JsonbIteratorInit(array);
	JsonbValue	v;
	JsonbIteratorToken tok;
	int			i = 0;

	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		CHECK_FOR_INTERRUPTS();
		if (tok == WJB_ELEM && i < count)
			out[i++] = v;
	}
	*n = i;
	return out;
}

/* Refuses keys of an object other than the allowed ones. */
static void
EsDcbOnlyKeys(JsonbContainer *obj, const char *path, const char *const *allowed,
			  const char *hint)
{
	JsonbIterator *it = JsonbIteratorInit(obj);
	JsonbValue	v;
	JsonbIteratorToken tok;

	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		bool		known = false;

		CHECK_FOR_INTERRUPTS();
		if (tok != WJB_KEY)
			continue;
		for (int i = 0; allowed[i] != NULL; i++)
			if (strlen(allowed[i]) == v.val.string.len &&
				memcmp(allowed[i], v.val.string.val, v.val.string.len) == 0)
				known = true;
		if (!known)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("%s has an unknown key \"%s\"", path,
							pnstrdup(v.val.string.val, v.val.string.len)),
					 errhint("%s", hint)));
	}
}

static JsonbValue *
EsDcbKey(JsonbContainer *obj, const char *key)
{
	return getKeyJsonValueFromContainer(obj, key, strlen(key), NULL);
}

/* An array of non-empty strings (absent: none), sorted and distinct. */
static text **
EsDcbStrings(const JsonbValue *v, const char *path, int limit, int *n)
{
	JsonbValue *elems;
	int			count;
	text	  **out;

	*n = 0;
	if (v == NULL)
		return NULL;
	EsDcbNotNull(v, path);
	if (!EsDcbIsArray(v))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be an array of strings", path)));
	elems = EsDcbElements(v->val.binary.data, &count);
	out = palloc(sizeof(text *) * Max(count, 1));
	for (int i = 0; i < count; i++)
		out[i] = EsDcbString(&elems[i], psprintf("%s[%d]", path, i), limit);
	*n = EsSortDistinct(out, count);
	return out;
}

static const char *const es_item_keys[] = {"types", "tags", NULL};

/* A query: NULL or [] for all tagged events, else [{"types": [...], "tags": [...]}, ...]. */
static void
EsDcbParseQuery(const JsonbValue *v, const char *path, EsDcbQuery *q)
{
	JsonbValue *elems;
	int			count;

	memset(q, 0, sizeof(*q));
	if (v == NULL || v->type == jbvNull)
	{
		q->all = true;
		return;
	}
	if (!EsDcbIsArray(v))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be a JSON array of query items", path),
				 errhint("[{\"types\": [\"...\"], \"tags\": [\"...\"]}, ...]; [] matches every tagged event.")));
	elems = EsDcbElements(v->val.binary.data, &count);
	if (count == 0)
	{
		q->all = true;
		return;
	}
	q->nitems = count;
	q->items = palloc0(sizeof(EsDcbItem) * count);
	for (int i = 0; i < count; i++)
	{
		char	   *ipath = psprintf("%s[%d]", path, i);
		EsDcbItem  *item = &q->items[i];
		JsonbContainer *obj;

		EsDcbNotNull(&elems[i], ipath);
		if (!EsDcbIsObject(&elems[i]))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("%s must be a JSON object", ipath),
					 errhint("{\"types\": [\"...\"], \"tags\": [\"...\"]}")));
		obj = elems[i].val.binary.data;
		EsDcbOnlyKeys(obj, ipath, es_item_keys, "A query item has \"types\" and \"tags\".");
		item->types = EsDcbStrings(EsDcbKey(obj, "types"), psprintf("%s.types", ipath),
								   ES_MAX_TOPIC_BYTES, &item->ntypes);
		item->tags = EsDcbStrings(EsDcbKey(obj, "tags"), psprintf("%s.tags", ipath),
								  ES_MAX_TAG_BYTES, &item->ntags);
		if (item->ntypes == 0 && item->ntags == 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("%s names no types and no tags", ipath),
					 errhint("An item matches by type and tags; the whole query [] matches every tagged event.")));
	}
}

/* A query argument: SQL NULL is the empty query. */
static void
EsDcbArgQuery(FunctionCallInfo fcinfo, int argno, EsDcbQuery *q)
{
	Jsonb	   *jb;
	JsonbValue	v;

	if (PG_ARGISNULL(argno))
	{
		EsDcbParseQuery(NULL, "query", q);
		return;
	}
	jb = PG_GETARG_JSONB_P(argno);
	if (JB_ROOT_IS_SCALAR(jb))
		(void) JsonbExtractScalar(&jb->root, &v);
	else
	{
		v.type = jbvBinary;
		v.val.binary.data = &jb->root;
		v.val.binary.len = VARSIZE(jb) - VARHDRSZ;
	}
	if (v.type == jbvNull)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("query must be a JSON array of query items"),
				 errhint("Pass SQL NULL or [] to match every tagged event.")));
	EsDcbParseQuery(&v, "query", q);
}

/* A whole number >= 0 that fits a bigint. */
static int64
EsDcbPosition(const JsonbValue *v, const char *path)
{
	char	   *digits;
	int64		result = 0;

	EsDcbNotNull(v, path);
	if (v->type != jbvNumeric)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be a number", path)));
	digits = numeric_normalize(v->val.numeric);
	for (char *p = digits; *p; p++)
	{
		if (*p < '0' || *p > '9')
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("%s must be a whole number, not negative", path),
					 errdetail("It is %s.", digits)));
		if (result > (PG_INT64_MAX - (*p - '0')) / 10)
			ereport(ERROR,
					(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
					 errmsg("%s is out of range for a position", path),
					 errdetail("It is %s.", digits)));
		result = result * 10 + (*p - '0');
	}
	return result;
}

static const char *const es_condition_keys[] = {"fail_if_events_match", "after", NULL};

/* condition: {"fail_if_events_match": [items], "after": position}; false if none. */
static bool
EsDcbArgCondition(FunctionCallInfo fcinfo, int argno, EsDcbQuery *q, int64 *after)
{
	Jsonb	   *jb;
	JsonbValue *match;
	JsonbValue *pos;

	*after = 0;
	if (PG_ARGISNULL(argno))
		return false;
	jb = PG_GETARG_JSONB_P(argno);
	if (JB_ROOT_IS_SCALAR(jb) || !JB_ROOT_IS_OBJECT(jb))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("condition must be a JSON object"),
				 errhint("{\"fail_if_events_match\": [{\"types\": [...], \"tags\": [...]}], \"after\": position}, or SQL NULL for none.")));
	EsDcbOnlyKeys(&jb->root, "condition", es_condition_keys,
				  "A condition has \"fail_if_events_match\" and \"after\".");
	match = EsDcbKey(&jb->root, "fail_if_events_match");
	if (match == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("condition.fail_if_events_match must be given"),
				 errhint("[] fails if any tagged event was recorded after the position.")));
	EsDcbNotNull(match, "condition.fail_if_events_match");
	EsDcbParseQuery(match, "condition.fail_if_events_match", q);
	pos = EsDcbKey(&jb->root, "after");
	if (pos != NULL)
		*after = EsDcbPosition(pos, "condition.after");
	return true;
}

static const char *const es_event_keys[] = {"type", "data", "data_base64", "tags", NULL};

static Datum EsDcbDataJsonb(bytea *bytes, bool *isnull);

/* The data of an event: JSON as its text, or bytes from base64. */
static bytea *
EsDcbData(JsonbContainer *obj, const char *path)
{
	JsonbValue *data = EsDcbKey(obj, "data");
	JsonbValue *b64 = EsDcbKey(obj, "data_base64");

	if ((data == NULL) == (b64 == NULL))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must have exactly one of \"data\" and \"data_base64\"", path)));
	if (data != NULL)
		return EsStateFromJsonb(JsonbValueToJsonb(data));
	else
	{
		char	   *bpath = psprintf("%s.data_base64", path);
		bytea	   *bytes;
		int			len;

		EsDcbNotNull(b64, bpath);
		if (b64->type != jbvString)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("%s must be a base64 string", bpath)));
		bytes = palloc(VARHDRSZ + pg_b64_dec_len(b64->val.string.len));
		len = pg_b64_decode(b64->val.string.val, b64->val.string.len,
							VARDATA(bytes), pg_b64_dec_len(b64->val.string.len));
		if (len < 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("%s is not valid base64", bpath)));
		SET_VARSIZE(bytes, VARHDRSZ + len);
		/* Bytes that are JSON text are read back as data: jsonb must hold them. */
		{
			bool		isnull;

			(void) EsDcbDataJsonb(bytes, &isnull);
		}
		return bytes;
	}
}

/* events: a non-empty array of {"type", "data" or "data_base64", "tags"}. */
static EsDcbEventIn *
EsDcbArgEvents(FunctionCallInfo fcinfo, int argno, int *n)
{
	Jsonb	   *jb;
	JsonbValue	root;
	JsonbValue *elems;
	EsDcbEventIn *out;
	int			count;

	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("events must not be NULL")));
	jb = PG_GETARG_JSONB_P(argno);
	if (JB_ROOT_IS_SCALAR(jb) || !JB_ROOT_IS_ARRAY(jb))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("events must be a JSON array of event objects"),
				 errhint("[{\"type\": \"...\", \"data\": {...}, \"tags\": [\"...\"]}, ...]")));
	root.type = jbvBinary;
	root.val.binary.data = &jb->root;
	root.val.binary.len = VARSIZE(jb) - VARHDRSZ;
	elems = EsDcbElements(root.val.binary.data, &count);
	if (count == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("events must not be empty")));
	out = palloc0(sizeof(EsDcbEventIn) * count);
	for (int i = 0; i < count; i++)
	{
		char	   *path = psprintf("events[%d]", i);
		JsonbContainer *obj;

		EsDcbNotNull(&elems[i], path);
		if (!EsDcbIsObject(&elems[i]))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("%s must be a JSON object", path)));
		obj = elems[i].val.binary.data;
		EsDcbOnlyKeys(obj, path, es_event_keys,
					  "A tagged event has \"type\", \"data\" (or \"data_base64\") and \"tags\".");
		out[i].type = EsDcbString(EsDcbKey(obj, "type"), psprintf("%s.type", path),
								  ES_MAX_TOPIC_BYTES);
		out[i].data = EsDcbData(obj, path);
		out[i].tags = EsDcbStrings(EsDcbKey(obj, "tags"), psprintf("%s.tags", path),
								   ES_MAX_TAG_BYTES, &out[i].ntags);
	}
	*n = count;
	return out;
}

static int64
EsDcbArgAfter(FunctionCallInfo fcinfo, int argno)
{
	int64		after;

	if (PG_ARGISNULL(argno))
		return 0;
	after = PG_GETARG_INT64(argno);
	if (after < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("after must not be negative"),
				 errdetail("The given position is " INT64_FORMAT "; 0 reads from the start.", after)));
	return after;
}

/* ------------------------------------------------------------------------
 * Matching
 * ------------------------------------------------------------------------
 */

/* Does the sorted set `have` contain every element of the sorted set `want`? */
static bool
EsSubset(text **want, int nwant, Datum *have, int nhave)
{
	int			j = 0;

	for (int i = 0; i < nwant; i++)
	{
		int			c = 1;

		while (j < nhave &&
			   (c = EsCompareTextPtrs(&want[i], (text **) &have[j])) > 0)
			j++;
		if (j == nhave || c != 0)
			return false;
		j++;
	}
	return true;
}

/* The first item of q that an event matches, or -1. */
static int
EsDcbMatch(const EsDcbQuery *q, text *type, Datum *tags, int ntags)
{
	if (q->all)
		return 0;
	for (int i = 0; i < q->nitems; i++)
	{
		const EsDcbItem *item = &q->items[i];

		CHECK_FOR_INTERRUPTS();
		if (item->ntypes > 0 &&
			bsearch(&type, item->types, item->ntypes, sizeof(text *), EsCompareTextPtrs) == NULL)
			continue;
		if (EsSubset(item->tags, item->ntags, tags, ntags))
			return i;
	}
	return -1;
}

/* The tags of a stored event, deconstructed (texts, sorted as stored). */
static void
EsDcbSlotTags(TupleTableSlot *slot, Datum **tags, int *ntags)
{
	bool	   *nulls;

	/* Elements of an array are never toasted (short headers: the *_PP macros). */
	deconstruct_array(DatumGetArrayTypeP(slot->tts_values[Anum_es_tags - 1]),
					  TEXTOID, -1, false, TYPALIGN_INT, tags, &nulls, ntags);
}

/* Matches in `cxt`, which it empties: long reads and checks use flat memory. */
static int
EsDcbSlotMatch(const EsDcbQuery *q, TupleTableSlot *slot, MemoryContext cxt)
{
	Datum	   *tags;
	int			ntags;
	int			item;
	text	   *type = DatumGetTextPP(slot->tts_values[Anum_es_topic - 1]);
	MemoryContext old;

	if (slot->tts_isnull[Anum_es_tags - 1])
		return -1;				/* an aggregate event */
	old = MemoryContextSwitchTo(cxt);
	EsDcbSlotTags(slot, &tags, &ntags);
	item = EsDcbMatch(q, type, tags, ntags);
	MemoryContextSwitchTo(old);
	MemoryContextReset(cxt);
	return item;
}

/* ------------------------------------------------------------------------
 * Index walks
 * ------------------------------------------------------------------------
 */

/*
 * One B-tree range scan in position order: of es_dcb_index (application,
 * kind, value, position > after), or of the log's primary key (application,
 * position > after) for the empty query.
 */
typedef struct EsDcbWalk
{
	IndexScanDesc scan;
	TupleTableSlot *slot;
	ScanKeyData keys[4];
	AttrNumber	position_attno;
	bool		done;
	int64		id;				/* the current row's position */
	bool		pending;		/* its transaction is in progress for the snapshot */
	int			proves;			/* an item that every row here matches (its only key), or -1 */
} EsDcbWalk;

static void
EsDcbWalkStart(EsDcbWalk *w, Relation heap, Relation idx, Snapshot snapshot, int nkeys)
{
	w->scan = index_beginscan(heap, idx, snapshot, nkeys, 0);
	index_rescan(w->scan, w->keys, nkeys, NULL, 0);
	w->slot = table_slot_create(heap, NULL);
}

/* The keys of es_dcb_index rows (application, kind, value) at positions `op` id. */
static void
EsDcbIndexKeys(ScanKey keys, int32 app_id, char kind, text *value,
			   StrategyNumber strategy, RegProcedure op, int64 id)
{
	ScanKeyInit(&keys[0], Anum_dcb_application_id, BTEqualStrategyNumber, F_INT4EQ,
				Int32GetDatum(app_id));
	ScanKeyInit(&keys[1], Anum_dcb_kind, BTEqualStrategyNumber, F_CHAREQ, CharGetDatum(kind));
	ScanKeyEntryInitialize(&keys[2], 0, Anum_dcb_value, BTEqualStrategyNumber, InvalidOid,
						   C_COLLATION_OID, F_TEXTEQ, PointerGetDatum(value));
	ScanKeyInit(&keys[3], Anum_dcb_notification_id, strategy, op, Int64GetDatum(id));
}

static void
EsDcbWalkBegin(EsDcbWalk *w, Relation index_rel, Relation idx, Snapshot snapshot,
			   int32 app_id, char kind, text *value, int64 after)
{
	memset(w, 0, sizeof(*w));
	EsDcbIndexKeys(w->keys, app_id, kind, value, BTGreaterStrategyNumber, F_INT8GT, after);
	w->position_attno = Anum_dcb_notification_id;
	EsDcbWalkStart(w, index_rel, idx, snapshot, 4);
}

static void
EsDcbWalkBeginLog(EsDcbWalk *w, Relation events, Relation pkey, Snapshot snapshot,
				  int32 app_id, int64 after)
{
	memset(w, 0, sizeof(*w));
	ScanKeyInit(&w->keys[0], 1, BTEqualStrategyNumber, F_INT4EQ, Int32GetDatum(app_id));
	ScanKeyInit(&w->keys[1], 2, BTGreaterStrategyNumber, F_INT8GT, Int64GetDatum(after));
	w->position_attno = Anum_es_notification_id;
	EsDcbWalkStart(w, events, pkey, snapshot, 2);
}

/*
 * The next row.  With an MVCC snapshot only visible rows come; with
 * SnapshotAny (the reader), rows of aborted transactions are skipped and a
 * row whose transaction is in progress for `snapshot` is marked pending.
 */
static bool
EsDcbWalkNext(EsDcbWalk *w, Snapshot snapshot)
{
	bool		isnull;

	while (!w->done)
	{
		CHECK_FOR_INTERRUPTS();
		if (!index_getnext_slot(w->scan, ForwardScanDirection, w->slot))
		{
			w->done = true;
			break;
		}
		w->id = DatumGetInt64(slot_getattr(w->slot, w->position_attno, &isnull));
		w->pending = false;
		if (snapshot != NULL)
		{
			BufferHeapTupleTableSlot *bslot = (BufferHeapTupleTableSlot *) w->slot;
			HeapTuple	tuple = bslot->base.tuple;
			bool		visible;
			TransactionId xmin;

			LockBuffer(bslot->buffer, BUFFER_LOCK_SHARE);
			visible = HeapTupleSatisfiesVisibility(tuple, snapshot, bslot->buffer);
			xmin = HeapTupleHeaderGetXmin(tuple->t_data);
			LockBuffer(bslot->buffer, BUFFER_LOCK_UNLOCK);
			if (!visible)
			{
				if (!EsXminMayStillCommit(xmin, snapshot))
					continue;	/* aborted: a permanent gap */
				w->pending = true;
			}
		}
		return true;
	}
	return false;
}

static void
EsDcbWalkEnd(EsDcbWalk *w)
{
	index_endscan(w->scan);
	ExecDropSingleTupleTableSlot(w->slot);
}

/* Relations and the event fetch shared by the condition check and the reads. */
typedef struct EsDcbScan
{
	const EsApp *app;
	Relation	index_rel;
	Relation	index_idx;
	Relation	events;
	Relation	events_pkey;
	Snapshot	snapshot;
	IndexScanDesc fetch;
	TupleTableSlot *event;
	MemoryContext matchcxt;		/* EsDcbSlotMatch's */
	int			nwalks;
	EsDcbWalk  *walks;
} EsDcbScan;

static void
EsDcbScanBegin(EsDcbScan *s, const EsApp *app, Snapshot snapshot)
{
	memset(s, 0, sizeof(*s));
	s->app = app;
	s->snapshot = snapshot;
	s->index_rel = table_open(app->rels.dcb_index, AccessShareLock);
	s->index_idx = index_open(app->rels.dcb_index_pkey, AccessShareLock);
	s->events = table_open(app->log.relid, AccessShareLock);
	s->events_pkey = index_open(app->log.pkey, AccessShareLock);
	s->fetch = index_beginscan(s->events, s->events_pkey, snapshot, 2, 0);
	s->event = table_slot_create(s->events, NULL);
	s->matchcxt = AllocSetContextCreate(CurrentMemoryContext, "es_dcb match", ALLOCSET_SMALL_SIZES);
}

/* The walks that together find every event matching q (q is not "all"). */
static void
EsDcbScanWalks(EsDcbScan *s, const EsDcbQuery *q, int64 after, Snapshot walk_snapshot)
{
	int			cap = 0;
	int			n = 0;
	char	   *kinds;
	text	  **values;
	int		   *proves;

	for (int i = 0; i < q->nitems; i++)
		cap += q->items[i].ntags > 0 ? 1 : q->items[i].ntypes;
	kinds = palloc(cap);
	values = palloc(sizeof(text *) * cap);
	proves = palloc(sizeof(int) * cap);
	for (int i = 0; i < q->nitems; i++)
	{
		const EsDcbItem *item = &q->items[i];
		int			nkeys = item->ntags > 0 ? 1 : item->ntypes;

		/* A row of a tag-less item's type, or of a lone tag, matches the item. */
		bool		only_key = item->ntags == 0 || (item->ntags == 1 && item->ntypes == 0);

		for (int k = 0; k < nkeys; k++)
		{
			char		kind = item->ntags > 0 ? ES_DCB_TAG : ES_DCB_TYPE;
			text	   *value = item->ntags > 0 ? item->tags[0] : item->types[k];
			int			j;

			CHECK_FOR_INTERRUPTS();
			for (j = 0; j < n; j++)
				if (kinds[j] == kind && EsCompareTextPtrs(&values[j], &value) == 0)
					break;
			if (j == n)
			{
				kinds[n] = kind;
				values[n] = value;
				proves[n] = -1;
				n++;
			}
			if (only_key && proves[j] < 0)
				proves[j] = i;
		}
	}
	s->nwalks = n;
	s->walks = palloc(sizeof(EsDcbWalk) * Max(n, 1));
	for (int j = 0; j < n; j++)
	{
		EsDcbWalkBegin(&s->walks[j], s->index_rel, s->index_idx, walk_snapshot,
					   s->app->id, kinds[j], values[j], after);
		s->walks[j].proves = proves[j];
		(void) EsDcbWalkNext(&s->walks[j], walk_snapshot == SnapshotAny ? s->snapshot : NULL);
	}
}

/* The event at a position, visible in the scan's snapshot (NULL if not). */
static TupleTableSlot *
EsDcbFetch(EsDcbScan *s, int64 id)
{
	ScanKeyData keys[2];
	bool		found;

	ScanKeyInit(&keys[0], 1, BTEqualStrategyNumber, F_INT4EQ, Int32GetDatum(s->app->id));
	ScanKeyInit(&keys[1], 2, BTEqualStrategyNumber, F_INT8EQ, Int64GetDatum(id));
	index_rescan(s->fetch, keys, 2, NULL, 0);
	found = index_getnext_slot(s->fetch, ForwardScanDirection, s->event);
	if (!found)
		return NULL;
	slot_getallattrs(s->event);
	return s->event;
}

static void
EsDcbScanEnd(EsDcbScan *s)
{
	for (int j = 0; j < s->nwalks; j++)
		EsDcbWalkEnd(&s->walks[j]);
	index_endscan(s->fetch);
	ExecDropSingleTupleTableSlot(s->event);
	MemoryContextDelete(s->matchcxt);
	index_close(s->events_pkey, AccessShareLock);
	table_close(s->events, AccessShareLock);
	index_close(s->index_idx, AccessShareLock);
	table_close(s->index_rel, AccessShareLock);
}

/* ------------------------------------------------------------------------
 * The condition
 * ------------------------------------------------------------------------
 */

typedef struct EsDcbLock
{
	uint32		hash;
	bool		reads;			/* a condition's key */
	bool		writes;			/* a new event's key */
} EsDcbLock;

static int
EsCompareLocks(const void *a, const void *b)
{
	uint32		ha = ((const EsDcbLock *) a)->hash;
	uint32		hb = ((const EsDcbLock *) b)->hash;

	return (ha > hb) - (ha < hb);
}

static uint32
EsDcbKeyHash(char kind, const text *value)
{
	uint32		h = hash_bytes((const unsigned char *) &kind, 1);

	if (value != NULL)
		h = hash_combine(h, hash_bytes((const unsigned char *) VARDATA_ANY(value),
									   VARSIZE_ANY_EXHDR(value)));
	return h;
}

static void
EsDcbAddLock(EsDcbLock **locks, int *n, int *cap, char kind, const text *value, bool reads)
{
	if (*n == *cap)
	{
		*cap *= 2;
		*locks = repalloc(*locks, sizeof(EsDcbLock) * *cap);
	}
	(*locks)[*n].hash = EsDcbKeyHash(kind, value);
	(*locks)[*n].reads = reads;
	(*locks)[*n].writes = !reads;
	(*n)++;
}

/* The locks of one call, taken in hash order (see the essay). */
static void
EsDcbLockKeys(int32 app_id, const EsDcbEventIn *events, int nevents,
			  const EsDcbQuery *cond, bool has_cond)
{
	int			cap = 16;
	int			n = 0;
	int			out = 0;
	EsDcbLock  *locks = palloc(sizeof(EsDcbLock) * cap);

	for (int i = 0; i < nevents; i++)
	{
		CHECK_FOR_INTERRUPTS();
		for (int t = 0; t < events[i].ntags; t++)
			EsDcbAddLock(&locks, &n, &cap, ES_DCB_TAG, events[i].tags[t], false);
		EsDcbAddLock(&locks, &n, &cap, ES_DCB_TYPE, events[i].type, false);
	}
	EsDcbAddLock(&locks, &n, &cap, ES_DCB_ANY, NULL, false);
	if (has_cond && cond->all)
		EsDcbAddLock(&locks, &n, &cap, ES_DCB_ANY, NULL, true);
	else if (has_cond)
		for (int i = 0; i < cond->nitems; i++)
		{
			const EsDcbItem *item = &cond->items[i];

			CHECK_FOR_INTERRUPTS();
			if (item->ntags > 0)
				EsDcbAddLock(&locks, &n, &cap, ES_DCB_TAG, item->tags[0], true);
			else
				for (int t = 0; t < item->ntypes; t++)
					EsDcbAddLock(&locks, &n, &cap, ES_DCB_TYPE, item->types[t], true);
		}

	qsort(locks, n, sizeof(EsDcbLock), EsCompareLocks);
	for (int i = 0; i < n; i++)
	{
		if (out > 0 && locks[out - 1].hash == locks[i].hash)
		{
			locks[out - 1].reads |= locks[i].reads;
			locks[out - 1].writes |= locks[i].writes;
		}
		else
			locks[out++] = locks[i];
	}
	for (int i = 0; i < out; i++)
	{
		LOCKTAG		tag;
		LOCKMODE	mode = locks[i].reads
			? (locks[i].writes ? ShareRowExclusiveLock : ShareLock)
			: RowExclusiveLock;

		CHECK_FOR_INTERRUPTS();
		SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, (uint32) app_id, locks[i].hash, ES_DCB_LOCK_CLASS);
		(void) LockAcquire(&tag, mode, false, false);
	}
	pfree(locks);
}

/*
 * The check, under the locks, with the latest snapshot: 23505 if an event
 * after `after` matches the condition.
 */
static void
EsDcbCheckCondition(const EsApp *app, const EsDcbQuery *cond, int64 after)
{
	Snapshot	snapshot = RegisterSnapshot(GetLatestSnapshot());
	EsDcbScan	s;
	int64		found = 0;
	int			item = -1;

	if (after == PG_INT64_MAX)
	{
		UnregisterSnapshot(snapshot);
		return;					/* nothing can come after the last bigint */
	}
	EsDcbScanBegin(&s, app, snapshot);
	if (cond->all)
	{
		IndexScanDesc scan = index_beginscan(s.events, s.events_pkey, snapshot, 2, 0);
		ScanKeyData keys[2];

		ScanKeyInit(&keys[0], 1, BTEqualStrategyNumber, F_INT4EQ, Int32GetDatum(app->id));
		ScanKeyInit(&keys[1], 2, BTGreaterStrategyNumber, F_INT8GT, Int64GetDatum(after));
		index_rescan(scan, keys, 2, NULL, 0);
		while (found == 0 && index_getnext_slot(scan, ForwardScanDirection, s.event))
		{
			bool		isnull;

			CHECK_FOR_INTERRUPTS();
			(void) slot_getattr(s.event, Anum_es_tags, &isnull);
			if (!isnull)
			{
				found = DatumGetInt64(slot_getattr(s.event, Anum_es_notification_id, &isnull));
				item = 0;
			}
		}
		index_endscan(scan);
	}
	else
	{
		EsDcbScanWalks(&s, cond, after, snapshot);
		for (int j = 0; j < s.nwalks && found == 0; j++)
		{
			EsDcbWalk  *w = &s.walks[j];

			for (; !w->done; (void) EsDcbWalkNext(w, NULL))
			{
				TupleTableSlot *ev;

				if (w->proves >= 0)
				{
					/* Visible, and a match by its key alone: no need to read the event. */
					found = w->id;
					item = w->proves;
					break;
				}
				ev = EsDcbFetch(&s, w->id);
				if (ev != NULL && (item = EsDcbSlotMatch(cond, ev, s.matchcxt)) >= 0)
				{
					found = w->id;
					break;
				}
			}
		}
	}
	EsDcbScanEnd(&s);
	UnregisterSnapshot(snapshot);
	if (found != 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNIQUE_VIOLATION),
				 errmsg("the append condition failed: an event at position " INT64_FORMAT " of application \"%s\" matches it",
						found, app->cname),
				 cond->all
				 ? errdetail("The condition matches every tagged event after position " INT64_FORMAT ".", after)
				 : errdetail("The event matches condition.fail_if_events_match[%d] and comes after position " INT64_FORMAT ".",
							 item, after),
				 errhint("Read the events of the query again (es_dcb_read), decide again, and retry with the new position.")));
}

/* ------------------------------------------------------------------------
 * The append
 * ------------------------------------------------------------------------
 */

/* What EsInsertEvents' `also` needs to write the index rows. */
typedef struct EsDcbIndexRows
{
	const EsApp *app;
	const EsDcbEventIn *events;
	int			n;
} EsDcbIndexRows;

static void
EsDcbInsertIndexRows(void *arg, const int64 *ids)
{
	EsDcbIndexRows *rows = (EsDcbIndexRows *) arg;
	Relation	rel = table_open(rows->app->rels.dcb_index, RowExclusiveLock);
	EState	   *estate = CreateExecutorState();
	ResultRelInfo *rri = makeNode(ResultRelInfo);
	TupleTableSlot *slot = MakeSingleTupleTableSlot(RelationGetDescr(rel), &TTSOpsVirtual);
	CommandId	cid = GetCurrentCommandId(true);

	InitResultRelInfo(rri, rel, 1, NULL, 0);
	ExecOpenIndices(rri, false);
	for (int i = 0; i < rows->n; i++)
	{
		const EsDcbEventIn *ev = &rows->events[i];

		for (int t = -1; t < ev->ntags; t++)
		{
			CHECK_FOR_INTERRUPTS();
			ExecClearTuple(slot);
			memset(slot->tts_isnull, 0, sizeof(bool) * Natts_dcb_index);
			slot->tts_values[Anum_dcb_application_id - 1] = Int32GetDatum(rows->app->id);
			slot->tts_values[Anum_dcb_kind - 1] = CharGetDatum(t < 0 ? ES_DCB_TYPE : ES_DCB_TAG);
			slot->tts_values[Anum_dcb_value - 1] = PointerGetDatum(t < 0 ? ev->type : ev->tags[t]);
			slot->tts_values[Anum_dcb_notification_id - 1] = Int64GetDatum(ids[i]);
			ExecStoreVirtualTuple(slot);
			table_tuple_insert(rel, slot, cid, 0, NULL);
			(void) ExecInsertIndexTuples(rri, slot, estate, false, false, NULL, NIL);
		}
	}
	ExecDropSingleTupleTableSlot(slot);
	ExecCloseIndices(rri);
	FreeExecutorState(estate);
	table_close(rel, NoLock);
}

/* A random (version 4) UUID: the tagged event's own aggregate. */
static void
EsDcbEventId(pg_uuid_t *id)
{
	if (!pg_strong_random(id->data, UUID_LEN))
		ereport(ERROR,
				(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
				 errmsg("could not generate a random event id")));
	id->data[6] = (id->data[6] & 0x0f) | 0x40;
	id->data[8] = (id->data[8] & 0x3f) | 0x80;
}

static Datum
EsDcbTagsArray(text **tags, int n)
{
	Datum	   *elems = palloc(sizeof(Datum) * Max(n, 1));

	for (int i = 0; i < n; i++)
		elems[i] = PointerGetDatum(tags[i]);
	return PointerGetDatum(construct_array(elems, n, TEXTOID, -1, false, TYPALIGN_INT));
}

/*
 * es_dcb_append(application text, events jsonb, condition jsonb DEFAULT NULL)
 *	RETURNS bigint
 */
PG_FUNCTION_INFO_V1(es_dcb_append);
Datum
es_dcb_append(PG_FUNCTION_ARGS)
{
	text	   *application = EsArgApplication(fcinfo, 0);
	int			n;
	EsDcbEventIn *events = EsDcbArgEvents(fcinfo, 1, &n);
	EsDcbQuery	cond;
	int64		after;
	bool		has_cond = EsDcbArgCondition(fcinfo, 2, &cond, &after);
	EsApp		app;
	EsEventIn  *in;
	int64	   *ids;
	Relation	rel;
	EsDcbIndexRows rows;

	EsOpenAppByName(&app, application, ES_PRIV_APPEND);
	PreventCommandIfReadOnly("es_dcb_append()");

	EsDcbLockKeys(app.id, events, n, &cond, has_cond);
	if (has_cond)
		EsDcbCheckCondition(&app, &cond, after);

	in = palloc0(sizeof(EsEventIn) * n);
	for (int i = 0; i < n; i++)
	{
		EsStateIdentity id = {&app.rels, app.id, app.name, &in[i].originator_id, 1, false, true, true};

		CHECK_FOR_INTERRUPTS();
		EsDcbEventId(&in[i].originator_id);
		in[i].version = 1;
		in[i].topic = PointerGetDatum(events[i].type);
		in[i].state = PointerGetDatum(events[i].data);
		in[i].tags = EsDcbTagsArray(events[i].tags, events[i].ntags);
		in[i].index = i;
		in[i].subscript = i;
		in[i].stored = PointerGetDatum(EsEncodeState(&id, events[i].data,
													 app.settings.compression,
													 app.settings.encryption,
													 app.settings.dictionary,
													 &in[i].form));
		EsHashEvent(es_genesis_hash, app.name, &in[i].originator_id, 1,
					events[i].type, DatumGetByteaPP(in[i].stored), in[i].form,
					in[i].tags, in[i].hash);
	}

	ids = palloc(sizeof(int64) * n);
	rows.app = &app;
	rows.events = events;
	rows.n = n;
	rel = table_open(app.log.relid, RowExclusiveLock);
	EsInsertEvents(&app.rels, rel, app.id, in, n, ids, EsDcbInsertIndexRows, &rows);
	table_close(rel, NoLock);
	PG_RETURN_INT64(ids[n - 1]);
}

/* ------------------------------------------------------------------------
 * The read
 * ------------------------------------------------------------------------
 */

/* What a read does with each matching event: emit it, or note its position. */
typedef struct EsDcbSink
{
	ReturnSetInfo *rsinfo;		/* NULL: es_dcb_head */
	MemoryContext rowcxt;
	int64		last;
	int64		count;
	int64		max_count;
} EsDcbSink;

/* data: the bytes as jsonb when they are JSON text, else NULL. */
static Datum
EsDcbDataJsonb(bytea *bytes, bool *isnull)
{
	char	   *text;
	JsonLexContext *lex;

	*isnull = true;
	if (!EsStateIsText(bytes))
		return (Datum) 0;
	text = pnstrdup(VARDATA_ANY(bytes), VARSIZE_ANY_EXHDR(bytes));
	lex = makeJsonLexContextCstringLen(text, VARSIZE_ANY_EXHDR(bytes), GetDatabaseEncoding(), true);
	if (pg_parse_json(lex, &nullSemAction) != JSON_SUCCESS)
		return (Datum) 0;
	*isnull = false;
	return DirectFunctionCall1(jsonb_in, CStringGetDatum(text));
}

/* Returns false when the sink is full. */
static bool
EsDcbEmit(EsDcbSink *sink, const EsApp *app, TupleTableSlot *ev, int64 id)
{
	Datum		values[Natts_dcb_event];
	bool		nulls[Natts_dcb_event] = {0};
	MemoryContext old;

	sink->last = id;
	sink->count++;
	if (sink->rsinfo == NULL)
		return true;
	old = MemoryContextSwitchTo(sink->rowcxt);
	values[0] = Int64GetDatum(id);
	values[1] = ev->tts_values[Anum_es_topic - 1];
	values[4] = EsStateOf(app, ev, &nulls[4]);
	if (nulls[4])
		nulls[2] = true;		/* forgotten */
	else
		values[2] = EsDcbDataJsonb(DatumGetByteaPP(values[4]), &nulls[2]);
	values[3] = ev->tts_values[Anum_es_tags - 1];
	values[5] = ev->tts_values[Anum_es_recorded_at - 1];
	values[6] = ev->tts_values[Anum_es_originator_id - 1];
	tuplestore_putvalues(sink->rsinfo->setResult, sink->rsinfo->setDesc, values, nulls);
	MemoryContextSwitchTo(old);
	MemoryContextReset(sink->rowcxt);
	return sink->count < sink->max_count;
}

/* The empty query: the log's own primary key, tagged events only. */
static void
EsDcbWalkLog(EsDcbScan *s, int64 after, int64 limit, EsDcbSink *sink)
{
	EsDcbWalk	w;

	EsDcbWalkBeginLog(&w, s->events, s->events_pkey, SnapshotAny, s->app->id, after);
	while (EsDcbWalkNext(&w, s->snapshot) && !w.pending && w.id < limit)
	{
		slot_getallattrs(w.slot);
		if (!w.slot->tts_isnull[Anum_es_tags - 1] && !EsDcbEmit(sink, s->app, w.slot, w.id))
			break;
	}
	EsDcbWalkEnd(&w);
}

/* A query's walks of es_dcb_index, merged in position order. */
static void
EsDcbWalkQuery(EsDcbScan *s, const EsDcbQuery *q, int64 after, int64 limit, EsDcbSink *sink)
{
	const EsApp *app = s->app;
	Snapshot	snapshot = s->snapshot;

	EsDcbScanWalks(s, q, after, SnapshotAny);
	for (;;)
	{
		int64		id = PG_INT64_MAX;
		bool		pending = false;
		bool		proven = false;
		bool		any = false;
		TupleTableSlot *ev;

		for (int j = 0; j < s->nwalks; j++)
			if (!s->walks[j].done && (!any || s->walks[j].id < id))
			{
				id = s->walks[j].id;
				any = true;
			}
		if (!any || id >= limit)
			break;
		for (int j = 0; j < s->nwalks; j++)
			if (!s->walks[j].done && s->walks[j].id == id)
			{
				pending |= s->walks[j].pending;
				proven |= s->walks[j].proves >= 0;
				(void) EsDcbWalkNext(&s->walks[j], snapshot);
			}
		if (pending)
			break;
		if (proven && sink->rsinfo == NULL)
		{
			/* es_dcb_head needs only the position. */
			(void) EsDcbEmit(sink, app, NULL, id);
			continue;
		}
		ev = EsDcbFetch(s, id);
		if (ev == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_DATA_CORRUPTED),
					 errmsg("es_dcb_index names position " INT64_FORMAT " of application \"%s\", which has no event",
							id, app->cname)));
		if ((proven || EsDcbSlotMatch(q, ev, s->matchcxt) >= 0) && !EsDcbEmit(sink, app, ev, id))
			break;
	}
}

/*
 * The read: the matching tagged events after `after`, stopping before the
 * first that could still become visible (the essay's two rules).
 */
static void
EsDcbReadLog(const EsApp *app, const EsDcbQuery *q, int64 after, EsDcbSink *sink)
{
	Snapshot	snapshot;
	EsDcbScan	s;
	EsGapResolver resolver;
	int64		limit;

	if (after == PG_INT64_MAX)
		return;					/* nothing can come after the last bigint */
	snapshot = RegisterSnapshot(GetActiveSnapshot());
	EsDcbScanBegin(&s, app, snapshot);
	/* Rule (a): wait out the writers still inserting ids handed out before now. */
	EsGapResolverInit(&resolver, &app->rels, s.events, s.events_pkey, app->id, snapshot);
	limit = EsGapSettle(&resolver, after + 1);
	EsGapResolverEnd(&resolver);
	/* Rule (b), on each walk's rows. */
	if (q->all)
		EsDcbWalkLog(&s, after, limit, sink);
	else
		EsDcbWalkQuery(&s, q, after, limit, sink);
	EsDcbScanEnd(&s);
	UnregisterSnapshot(snapshot);
}

static void
EsDcbRead(FunctionCallInfo fcinfo, EsDcbSink *sink, int64 *after_out)
{
	text	   *application = EsArgApplication(fcinfo, 0);
	EsDcbQuery	q;
	int64		after;
	EsApp		app;

	EsDcbArgQuery(fcinfo, 1, &q);
	after = EsDcbArgAfter(fcinfo, 2);
	*after_out = after;
	EsOpenAppByName(&app, application, ES_PRIV_READ);
	sink->last = after;
	EsDcbReadLog(&app, &q, after, sink);
}

/*
 * es_dcb_read(application text, query jsonb, after bigint, max_count int)
 *	RETURNS SETOF es_dcb_event
 */
PG_FUNCTION_INFO_V1(es_dcb_read);
Datum
es_dcb_read(PG_FUNCTION_ARGS)
{
	EsDcbSink	sink = {0};
	int64		after;

	sink.max_count = PG_INT64_MAX;
	if (!PG_ARGISNULL(3))
	{
		int32		max_count = PG_GETARG_INT32(3);

		if (max_count <= 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("max_count must be positive"),
					 errdetail("The given max_count is %d; NULL reads every matching event.", max_count)));
		sink.max_count = max_count;
	}
	InitMaterializedSRF(fcinfo, 0);
	sink.rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	sink.rowcxt = AllocSetContextCreate(CurrentMemoryContext, "es_dcb_read row",
										ALLOCSET_DEFAULT_SIZES);
	EsDcbRead(fcinfo, &sink, &after);
	MemoryContextDelete(sink.rowcxt);
	return (Datum) 0;
}

/* es_dcb_head(application text, query jsonb, after bigint) RETURNS bigint */
PG_FUNCTION_INFO_V1(es_dcb_head);
Datum
es_dcb_head(PG_FUNCTION_ARGS)
{
	EsDcbSink	sink = {0};
	int64		after;

	sink.max_count = PG_INT64_MAX;
	EsDcbRead(fcinfo, &sink, &after);
	PG_RETURN_INT64(sink.last);
}

/* ------------------------------------------------------------------------
 * Verification (es_verify_log): the index against the events
 * ------------------------------------------------------------------------
 */

/* Is there a visible es_dcb_index row (kind, value, id) of the application? */
static bool
EsDcbIndexHas(Relation rel, Relation idx, Snapshot snapshot, TupleTableSlot *slot,
			  int32 app_id, char kind, text *value, int64 id)
{
	ScanKeyData keys[4];
	IndexScanDesc scan;
	bool		found;

	EsDcbIndexKeys(keys, app_id, kind, value, BTEqualStrategyNumber, F_INT8EQ, id);
	scan = index_beginscan(rel, idx, snapshot, 4, 0);
	index_rescan(scan, keys, 4, NULL, 0);
	found = index_getnext_slot(scan, ForwardScanDirection, slot);
	index_endscan(scan);
	return found;
}

/*
 * Conditions and reads trust es_dcb_index, so es_verify_log checks it: every
 * tagged event has its rows (one per tag, one for its type: a few index
 * probes per tagged event, made during es_verify_log's own walk of the
 * events), and the index holds no other row (counted at the end; the rows
 * are looked at one by one only when the count is off).
 */
struct EsDcbVerifier
{
	const EsRelations *rels;
	int32		app_id;
	EsDcbProblemFn report;
	void	   *arg;
	Relation	rel;
	Relation	idx;
	Snapshot	snapshot;
	TupleTableSlot *row;
	MemoryContext cxt;
	int64		needed;
};

EsDcbVerifier *
EsDcbVerifyBegin(const EsRelations *rels, int32 app_id, EsDcbProblemFn report, void *arg)
{
	EsDcbVerifier *v = palloc0(sizeof(EsDcbVerifier));

	v->rels = rels;
	v->app_id = app_id;
	v->report = report;
	v->arg = arg;
	v->rel = table_open(rels->dcb_index, AccessShareLock);
	v->idx = index_open(rels->dcb_index_pkey, AccessShareLock);
	v->snapshot = RegisterSnapshot(GetActiveSnapshot());
	v->row = table_slot_create(v->rel, NULL);
	v->cxt = AllocSetContextCreate(CurrentMemoryContext, "es_dcb verify", ALLOCSET_SMALL_SIZES);
	return v;
}

/* One event of the log (all attributes in the slot); aggregate events pass. */
void
EsDcbVerifyEvent(EsDcbVerifier *v, TupleTableSlot *ev)
{
	int64		id;
	text	   *type;
	Datum	   *tags;
	int			ntags;
	MemoryContext old;

	if (ev->tts_isnull[Anum_es_tags - 1])
		return;
	old = MemoryContextSwitchTo(v->cxt);
	id = DatumGetInt64(ev->tts_values[Anum_es_notification_id - 1]);
	type = DatumGetTextPP(ev->tts_values[Anum_es_topic - 1]);
	EsDcbSlotTags(ev, &tags, &ntags);
	v->needed += ntags + 1;
	if (!EsDcbIndexHas(v->rel, v->idx, v->snapshot, v->row, v->app_id, ES_DCB_TYPE, type, id))
		v->report(v->arg, id, "missing index row",
				  psprintf("es_dcb_index has no row for the type \"%s\" of the tagged event at position " INT64_FORMAT ": queries by that type would miss it.",
						   text_to_cstring(type), id));
	for (int t = 0; t < ntags; t++)
	{
		CHECK_FOR_INTERRUPTS();
		if (!EsDcbIndexHas(v->rel, v->idx, v->snapshot, v->row, v->app_id, ES_DCB_TAG, DatumGetTextPP(tags[t]), id))
			v->report(v->arg, id, "missing index row",
					  psprintf("es_dcb_index has no row for the tag \"%s\" of the tagged event at position " INT64_FORMAT ": conditions and queries on that tag would miss it.",
							   TextDatumGetCString(tags[t]), id));
	}
	MemoryContextSwitchTo(old);
	MemoryContextReset(v->cxt);
}

void
EsDcbVerifyEnd(EsDcbVerifier *v)
{
	ScanKeyData key;
	IndexScanDesc scan;
	int64		held = 0;

	ScanKeyInit(&key, Anum_dcb_application_id, BTEqualStrategyNumber, F_INT4EQ, Int32GetDatum(v->app_id));
	scan = index_beginscan(v->rel, v->idx, v->snapshot, 1, 0);
	index_rescan(scan, &key, 1, NULL, 0);
	while (index_getnext_slot(scan, ForwardScanDirection, v->row))
	{
		CHECK_FOR_INTERRUPTS();
		held++;
	}
	index_endscan(scan);
	if (held != v->needed)
	{
		EsDcbScan	s;
		EsApp		app;

		memset(&app, 0, sizeof(app));
		app.rels = *v->rels;
		app.id = v->app_id;
		app.log = EsLogOf(v->rels, v->app_id);
		EsDcbScanBegin(&s, &app, v->snapshot);
		scan = index_beginscan(v->rel, v->idx, v->snapshot, 1, 0);
		index_rescan(scan, &key, 1, NULL, 0);
		while (index_getnext_slot(scan, ForwardScanDirection, v->row))
		{
			bool		isnull;
			int64		id = DatumGetInt64(slot_getattr(v->row, Anum_dcb_notification_id, &isnull));
			char		kind = DatumGetChar(slot_getattr(v->row, Anum_dcb_kind, &isnull));
			text	   *value = DatumGetTextPP(slot_getattr(v->row, Anum_dcb_value, &isnull));
			TupleTableSlot *e = EsDcbFetch(&s, id);
			bool		ok = false;

			CHECK_FOR_INTERRUPTS();
			if (e != NULL)
			{
				/* The row's claim as a one-key query: does the event match it? */
				EsDcbItem	item = {0};
				EsDcbQuery	claim = {false, 1, &item};

				if (kind == ES_DCB_TYPE)
				{
					item.ntypes = 1;
					item.types = &value;
				}
				else
				{
					item.ntags = 1;
					item.tags = &value;
				}
				ok = EsDcbSlotMatch(&claim, e, v->cxt) >= 0;
			}
			if (!ok)
				v->report(v->arg, id, "unexpected index row",
						  psprintf("es_dcb_index has a row (%s \"%s\") for position " INT64_FORMAT ", which holds no tagged event with it: it was added by hand.",
								   kind == ES_DCB_TYPE ? "type" : "tag", text_to_cstring(value), id));
		}
		index_endscan(scan);
		EsDcbScanEnd(&s);
	}
	MemoryContextDelete(v->cxt);
	ExecDropSingleTupleTableSlot(v->row);
	UnregisterSnapshot(v->snapshot);
	index_close(v->idx, AccessShareLock);
	table_close(v->rel, AccessShareLock);
	pfree(v);
}
