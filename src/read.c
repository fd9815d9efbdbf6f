/*
 * read.c
 *		The read path: the notification log (es_select), one aggregate's events
 *		(es_events), the log's head and tracking positions, the readable head
 *		(es_wait, announcements, seals) and the consumer-group filter.
 *
 * Every reader of the log walks the primary key (application_id,
 * notification_id) with the caller's snapshot through EsLogScan, which asks
 * ordering.c about every run of missing ids; it never returns an id above one
 * that could still become visible.
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/relscan.h"
#include "access/table.h"
#include "access/tableam.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "executor/tuptable.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/snapmgr.h"

#include "access.h"
#include "codec.h"
#include "common/hashfn.h"
#include "utils/memutils.h"
#include "read.h"

/* The topics filter: a sorted array of text, searched with bsearch. */
typedef struct EsTopicFilter
{
	int			n;
	text	  **topics;
} EsTopicFilter;

/* qsort/bsearch order of text pointers: bytes, as COLLATE "C" (also dcb.c's). */
int
EsCompareTextPtrs(const void *a, const void *b)
{
	text	   *ta = *(text *const *) a;
	text	   *tb = *(text *const *) b;
	int			la = VARSIZE_ANY_EXHDR(ta);
	int			lb = VARSIZE_ANY_EXHDR(tb);
	int			c = memcmp(VARDATA_ANY(ta), VARDATA_ANY(tb), Min(la, lb));

	if (c != 0)
		return c;
	return (la > lb) - (la < lb);
}

static void
EsParseTopics(FunctionCallInfo fcinfo, int argno, EsTopicFilter *filter)
{
	ArrayType  *arr;
	Datum	   *elems;
	bool	   *nulls;
	int			n;

	filter->n = -1;				/* no filter */
	if (PG_ARGISNULL(argno))
		return;
	arr = PG_GETARG_ARRAYTYPE_P(argno);
	if (ARR_NDIM(arr) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("topics must be a one-dimensional array")));
	deconstruct_array(arr, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &n);
	filter->topics = palloc(sizeof(text *) * Max(n, 1));
	for (int i = 0; i < n; i++)
	{
		CHECK_FOR_INTERRUPTS();
		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("topics[%d] must not be NULL", ARR_LBOUND(arr)[0] + i)));
		filter->topics[i] = DatumGetTextPP(elems[i]);
	}
	filter->n = n;
	qsort(filter->topics, n, sizeof(text *), EsCompareTextPtrs);
}

static bool
EsTopicMatches(const EsTopicFilter *filter, Datum topic)
{
	text	   *t;

	if (filter->n < 0)
		return true;
	t = DatumGetTextPP(topic);
	return bsearch(&t, filter->topics, filter->n, sizeof(text *), EsCompareTextPtrs) != NULL;
}

/*
 * The state of the event in `slot` as given to es_append (codec.c), or NULL
 * when its aggregate was forgotten.
 */
Datum
EsStateOf(const EsApp *app, TupleTableSlot *slot, bool *isnull)
{
	int16		form = DatumGetInt16(slot->tts_values[Anum_es_stored_form - 1]);
	EsStateIdentity id;
	bytea	   *state;

	*isnull = false;
	if (form == ES_FORM_RAW)
		return slot->tts_values[Anum_es_state - 1];
	id.rels = &app->rels;
	id.app_id = app->id;
	id.application = app->name;
	id.originator_id = DatumGetUUIDP(slot->tts_values[Anum_es_originator_id - 1]);
	id.version = DatumGetInt64(slot->tts_values[Anum_es_originator_version - 1]);
	id.snapshot = false;
	id.first = false;
	id.new_aggregate = false;
	state = EsDecodeState(&id, DatumGetByteaPP(slot->tts_values[Anum_es_state - 1]), form);
	*isnull = state == NULL;
	return PointerGetDatum(state);
}

static void
EsCheckStart(int64 start)
{
	if (start < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("start must be at least 1"),
				 errdetail("The given start is " INT64_FORMAT "; notification ids start at 1.", start)));
}

static void
EsCheckMaxCount(int32 max_count)
{
	if (max_count <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_count must be positive"),
				 errdetail("The given max_count is %d.", max_count)));
}

/*
 * The log walk shared by es_select and the seals: the visible events of an
 * application from `start` up to `stop`, in id order, ending before the first
 * id that may still become visible (the ordering protocol, ordering.c).
 */
void
EsLogScanBegin(EsLogScan *s, const EsRelations *rels, const EsLog *log, int32 app_id,
			   int64 start, int64 stop, bool collect_gaps)
{
	memset(s, 0, sizeof(*s));
	s->rels = *rels;
	s->app_id = app_id;
	s->expected = start;
	s->collect_gaps = collect_gaps;
	s->log = *log;
	s->events = table_open(s->log.relid, AccessShareLock);
	s->pkey = index_open(s->log.pkey, AccessShareLock);
	s->snapshot = RegisterSnapshot(GetActiveSnapshot());
	EsGapResolverInit(&s->resolver, &s->rels, s->events, s->pkey, app_id, s->snapshot);
	ScanKeyInit(&s->keys[0], 1, BTEqualStrategyNumber, F_INT4EQ, Int32GetDatum(app_id));
	ScanKeyInit(&s->keys[1], 2, BTGreaterEqualStrategyNumber, F_INT8GE, Int64GetDatum(start));
	ScanKeyInit(&s->keys[2], 2, BTLessEqualStrategyNumber, F_INT8LE, Int64GetDatum(stop));
	s->scan = index_beginscan(s->events, s->pkey, s->snapshot, 3, 0);
	index_rescan(s->scan, s->keys, 3, NULL, 0);
	s->slot = table_slot_create(s->events, NULL);
}

static void
EsLogScanAddGap(EsLogScan *s, int64 from, int64 to)
{
	if (s->ngaps == s->gaps_cap)
	{
		s->gaps_cap = Max(16, s->gaps_cap * 2);
		s->gap_from = s->gap_from ? repalloc(s->gap_from, sizeof(int64) * s->gaps_cap)
			: palloc(sizeof(int64) * s->gaps_cap);
		s->gap_to = s->gap_to ? repalloc(s->gap_to, sizeof(int64) * s->gaps_cap)
			: palloc(sizeof(int64) * s->gaps_cap);
	}
	s->gap_from[s->ngaps] = from;
	s->gap_to[s->ngaps] = to;
	s->ngaps++;
}

/* The next event (all attributes deformed in the slot), or NULL at the end. */
TupleTableSlot *
EsLogScanNext(EsLogScan *s, int64 *id_out)
{
	bool		isnull;
	int64		id;
	int64		decided;

	CHECK_FOR_INTERRUPTS();
	if (s->blocked || !index_getnext_slot(s->scan, ForwardScanDirection, s->slot))
		return NULL;
	id = DatumGetInt64(slot_getattr(s->slot, Anum_es_notification_id, &isnull));

	/* The ordering protocol: never pass an id that may still appear. */
	decided = EsGapPermanentUpTo(&s->resolver, s->expected, id);
	if (s->collect_gaps && decided > s->expected)
		EsLogScanAddGap(s, s->expected, decided);
	if (decided < id)
	{
		s->expected = decided;
		s->blocked = true;
		return NULL;
	}
	/* The last bigint ends the log. */
	if (id == PG_INT64_MAX)
		s->blocked = true;
	else
		s->expected = id + 1;
	slot_getallattrs(s->slot);
	*id_out = id;
	return s->slot;
}

void
EsLogScanEnd(EsLogScan *s)
{
	EsGapResolverEnd(&s->resolver);
	index_endscan(s->scan);
	ExecDropSingleTupleTableSlot(s->slot);
	UnregisterSnapshot(s->snapshot);
	index_close(s->pkey, AccessShareLock);
	table_close(s->events, AccessShareLock);
}

/*
 * The highest id a reader can be given now (with the active snapshot), from
 * `after` on; `after` itself when nothing new is readable.
 */
int64
EsReadableHead(const EsRelations *rels, int32 app_id, int64 after)
{
	EsLogScan	scan;
	EsLog		log;
	int64		id;
	int64		head = after;

	if (after == PG_INT64_MAX)
		return after;			/* nothing can come after the last bigint */
	log = EsLogOf(rels, app_id);
	EsLogScanBegin(&scan, rels, &log, app_id, after + 1, PG_INT64_MAX, false);
	while (EsLogScanNext(&scan, &id) != NULL)
		head = id;
	EsLogScanEnd(&scan);
	return head;
}

/* The consumer-group partition of an aggregate: stable across servers. */
static int32
EsPartition(const pg_uuid_t *originator_id, int32 group_size)
{
	return (int32) (hash_bytes(originator_id->data, UUID_LEN) % (uint32) group_size);
}

static void
EsCheckGroup(bool has_member, int32 member, bool has_size, int32 size)
{
	if (has_member != has_size)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("group_member and group_size must be given together")));
	if (!has_size)
		return;
	if (size < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("group_size must be positive"),
				 errdetail("The given group_size is %d.", size)));
	if (member < 0 || member >= size)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("group_member must be between 0 and group_size - 1"),
				 errdetail("The given group_member is %d and group_size is %d.", member, size)));
}

/* es_partition(originator_id uuid, group_size int) RETURNS int */
PG_FUNCTION_INFO_V1(es_partition);
Datum
es_partition(PG_FUNCTION_ARGS)
{
	pg_uuid_t  *originator_id = EsArgUuid(fcinfo, 0, "originator_id");
	int32		group_size = EsArgInt32(fcinfo, 1, "group_size");

	EsCheckGroup(true, 0, true, group_size);
	PG_RETURN_INT32(EsPartition(originator_id, group_size));
}

/*
 * es_select(application text, start bigint, max_count int, stop bigint,
 *			 topics text[], group_member int, group_size int)
 *	RETURNS SETOF es_notification
 */
PG_FUNCTION_INFO_V1(es_select);
Datum
es_select(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	text	   *application = EsArgApplication(fcinfo, 0);
	int64		start = EsArgInt64(fcinfo, 1, "start");
	int32		max_count;
	bool		has_stop = !PG_ARGISNULL(3);
	int64		stop = has_stop ? PG_GETARG_INT64(3) : PG_INT64_MAX;
	EsTopicFilter filter;
	EsApp		app;
	EsLogScan	scan;
	TupleTableSlot *slot;
	int64		id;
	int			count = 0;
	bool		has_group;
	int32		group_member = 0;
	int32		group_size = 1;
	MemoryContext rowcxt;

	if (PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("max_count must not be NULL")));
	max_count = PG_GETARG_INT32(2);
	EsCheckMaxCount(max_count);
	EsCheckStart(start);
	EsParseTopics(fcinfo, 4, &filter);
	has_group = !PG_ARGISNULL(6);
	if (!PG_ARGISNULL(5))
		group_member = PG_GETARG_INT32(5);
	if (has_group)
		group_size = PG_GETARG_INT32(6);
	EsCheckGroup(!PG_ARGISNULL(5), group_member, has_group, group_size);

	EsOpenAppByName(&app, application, ES_PRIV_READ);

	InitMaterializedSRF(fcinfo, 0);
	if (stop < start)
		return (Datum) 0;

	rowcxt = AllocSetContextCreate(CurrentMemoryContext, "es_select row", ALLOCSET_DEFAULT_SIZES);
	EsLogScanBegin(&scan, &app.rels, &app.log, app.id, start, stop, false);
	while (count < max_count && (slot = EsLogScanNext(&scan, &id)) != NULL)
	{
		Datum		values[7];
		bool		nulls[7] = {false, false, false, false, false, false, false};
		MemoryContext old;

		if (!EsTopicMatches(&filter, slot->tts_values[Anum_es_topic - 1]))
			continue;
		if (has_group &&
			EsPartition(DatumGetUUIDP(slot->tts_values[Anum_es_originator_id - 1]), group_size) != group_member)
			continue;
		old = MemoryContextSwitchTo(rowcxt);
		values[0] = Int64GetDatum(id);
		values[1] = slot->tts_values[Anum_es_originator_id - 1];
		values[2] = slot->tts_values[Anum_es_originator_version - 1];
		values[3] = slot->tts_values[Anum_es_topic - 1];
		values[4] = EsStateOf(&app, slot, &nulls[4]);
		values[5] = slot->tts_values[Anum_es_recorded_at - 1];
		values[6] = slot->tts_values[Anum_es_event_hash - 1];
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
		MemoryContextSwitchTo(old);
		MemoryContextReset(rowcxt);
		count++;
	}
	EsLogScanEnd(&scan);
	MemoryContextDelete(rowcxt);
	return (Datum) 0;
}

/*
 * es_events(application text, originator_id uuid, gt bigint, lte bigint,
 *			 descending boolean, max_count int) RETURNS SETOF es_stored_event
 */
PG_FUNCTION_INFO_V1(es_events);
Datum
es_events(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	text	   *application = EsArgApplication(fcinfo, 0);
	bool		has_gt = !PG_ARGISNULL(2);
	bool		has_lte = !PG_ARGISNULL(3);
	bool		descending = PG_ARGISNULL(4) ? false : PG_GETARG_BOOL(4);
	int32		max_count = PG_ARGISNULL(5) ? PG_INT32_MAX : PG_GETARG_INT32(5);
	pg_uuid_t  *originator_id;
	EsApp		app;
	Relation	events;
	Relation	idx;
	IndexScanDesc scan;
	ScanKeyData keys[4];
	int			nkeys = 2;
	TupleTableSlot *slot;
	Snapshot	snapshot;
	int			count = 0;

	originator_id = EsArgUuid(fcinfo, 1, "originator_id");
	if (!PG_ARGISNULL(5))
		EsCheckMaxCount(max_count);

	EsOpenAppByName(&app, application, ES_PRIV_READ);
	InitMaterializedSRF(fcinfo, 0);

	events = table_open(app.log.relid, AccessShareLock);
	idx = index_open(app.log.version_idx, AccessShareLock);
	snapshot = RegisterSnapshot(GetActiveSnapshot());
	ScanKeyInit(&keys[0], 1, BTEqualStrategyNumber, F_INT4EQ, Int32GetDatum(app.id));
	ScanKeyInit(&keys[1], 2, BTEqualStrategyNumber, F_UUID_EQ, UUIDPGetDatum(originator_id));
	if (has_gt)
		ScanKeyInit(&keys[nkeys++], 3, BTGreaterStrategyNumber, F_INT8GT, PG_GETARG_DATUM(2));
	if (has_lte)
		ScanKeyInit(&keys[nkeys++], 3, BTLessEqualStrategyNumber, F_INT8LE, PG_GETARG_DATUM(3));
	scan = index_beginscan(events, idx, snapshot, nkeys, 0);
	index_rescan(scan, keys, nkeys, NULL, 0);
	slot = table_slot_create(events, NULL);

	while (count < max_count &&
		   index_getnext_slot(scan, descending ? BackwardScanDirection : ForwardScanDirection, slot))
	{
		Datum		values[6];
		bool		nulls[6] = {false, false, false, false, false, false};

		CHECK_FOR_INTERRUPTS();
		slot_getallattrs(slot);
		values[0] = slot->tts_values[Anum_es_originator_id - 1];
		values[1] = slot->tts_values[Anum_es_originator_version - 1];
		values[2] = slot->tts_values[Anum_es_topic - 1];
		values[3] = EsStateOf(&app, slot, &nulls[3]);
		values[4] = slot->tts_values[Anum_es_recorded_at - 1];
		values[5] = slot->tts_values[Anum_es_event_hash - 1];
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
		count++;
	}

	index_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
	UnregisterSnapshot(snapshot);
	index_close(idx, AccessShareLock);
	table_close(events, AccessShareLock);
	return (Datum) 0;
}

/* es_max_notification_id(application text) RETURNS bigint */
PG_FUNCTION_INFO_V1(es_max_notification_id);
Datum
es_max_notification_id(PG_FUNCTION_ARGS)
{
	EsApp		app;
	ScanKeyData key;
	Datum		id;

	EsOpenApp(&app, fcinfo, 0, ES_PRIV_READ);
	ScanKeyInit(&key, 1, BTEqualStrategyNumber, F_INT4EQ, Int32GetDatum(app.id));
	if (!EsLastEventAttr(&app.log, app.log.pkey, GetActiveSnapshot(), &key, 1,
						 Anum_es_notification_id, &id))
		PG_RETURN_NULL();
	PG_RETURN_DATUM(id);
}

/* es_tracking_position(application text, upstream_application text) RETURNS bigint */
PG_FUNCTION_INFO_V1(es_tracking_position);
Datum
es_tracking_position(PG_FUNCTION_ARGS)
{
	EsApp		app;
	EsSpi		spi;
	StringInfoData sql;
	Oid			argtypes[2] = {INT4OID, TEXTOID};
	Datum		values[2];
	bool		isnull = true;
	Datum		result = (Datum) 0;

	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("upstream_application must not be NULL")));
	EsOpenApp(&app, fcinfo, 0, ES_PRIV_READ);
	values[0] = Int32GetDatum(app.id);
	values[1] = PG_GETARG_DATUM(1);

	initStringInfo(&sql);
	appendStringInfo(&sql,
					 "SELECT notification_id FROM %s WHERE application_id OPERATOR(pg_catalog.=) $1 "
					 "AND upstream_application OPERATOR(pg_catalog.=) $2",
					 EsQualifiedName(&app.rels, "es_tracking"));
	EsSpiBegin(&spi, &app.rels);
	if (SPI_execute_with_args(sql.data, 2, argtypes, values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "eventsourcing: could not read es_tracking");
	if (SPI_processed == 1)
		result = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	EsSpiEnd(&spi);
	if (isnull)
		PG_RETURN_NULL();
	PG_RETURN_INT64(DatumGetInt64(result));
}

/*
 * es_select_stored(application text, start bigint, max_count int)
 *	RETURNS TABLE (id, originator_id, originator_version, topic, stored_form,
 *				   stored_state, event_hash)
 *
 * The log as stored: states in their stored form (for backups to other
 * systems, or clients that decrypt themselves).  Needs read; the same
 * ordering guarantee as es_select.
 */
PG_FUNCTION_INFO_V1(es_select_stored);
Datum
es_select_stored(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	int64		start = EsArgInt64(fcinfo, 1, "start");
	int32		max_count = EsArgInt32(fcinfo, 2, "max_count");
	EsApp		app;
	EsLogScan	scan;
	TupleTableSlot *slot;
	int64		id;
	int			count = 0;

	EsCheckMaxCount(max_count);
	EsCheckStart(start);
	EsOpenApp(&app, fcinfo, 0, ES_PRIV_READ);
	InitMaterializedSRF(fcinfo, 0);
	EsLogScanBegin(&scan, &app.rels, &app.log, app.id, start, PG_INT64_MAX, false);
	while (count < max_count && (slot = EsLogScanNext(&scan, &id)) != NULL)
	{
		Datum		values[7];
		bool		nulls[7] = {false, false, false, false, false, false, false};

		values[0] = Int64GetDatum(id);
		values[1] = slot->tts_values[Anum_es_originator_id - 1];
		values[2] = slot->tts_values[Anum_es_originator_version - 1];
		values[3] = slot->tts_values[Anum_es_topic - 1];
		values[4] = slot->tts_values[Anum_es_stored_form - 1];
		values[5] = slot->tts_values[Anum_es_state - 1];
		values[6] = slot->tts_values[Anum_es_event_hash - 1];
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
		count++;
	}
	EsLogScanEnd(&scan);
	return (Datum) 0;
}
