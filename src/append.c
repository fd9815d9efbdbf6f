/*
 * append.c
 *		The append path: es_append in all its forms.
 *
 * One call records all its events or none:
 *	0. open the application through the entry skeleton (access.c): the
 *	   caller needs the append privilege (and track, to record a position);
 *	1. check every argument (nothing is written on a bad one);
 *	2. lock each aggregate of the call, in uuid order, with a transaction-level
 *	   advisory lock (only writers of the same aggregate wait for each other);
 *	3. check each aggregate's versions against its current version, read with
 *	   SnapshotSelf (so a writer that committed while we waited is seen),
 *	   store each state in the application's form (codec.c: compressed and/or
 *	   encrypted under the aggregate's data key, made under its lock), and
 *	   chain each event's hash, over the stored bytes, to its predecessor's
 *	   (integrity.c);
 *	4. record the tracking position, if given;
 *	5. take the ids and insert heap and index tuples (ordering.c explains why
 *	   this makes the notification log ordered and gap-free).
 * Steps 1-4 can refuse the append; none of them takes an id.
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "nodes/execnodes.h"
#include "storage/lmgr.h"
#include "storage/lock.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/typcache.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"

#include "access.h"
#include "append.h"
#include "codec.h"
#include "integrity.h"
#include "ordering.h"
#include "wakeup.h"

/* The name of one field of the input, for error messages. */
static char *
EsFieldName(const char *argname, bool is_array, int subscript, const char *field)
{
	if (argname == NULL)
		return pstrdup(field);
	if (is_array)
		return psprintf("%s[%d].%s", argname, subscript, field);
	return psprintf("%s.%s", argname, field);
}

/* Reads one es_event value into its four fields. */
static void
EsDeformEvent(HeapTupleHeader th, Datum *values, bool *nulls)
{
	TupleDesc	tupdesc;
	HeapTupleData tuple;

	tupdesc = lookup_rowtype_tupdesc(HeapTupleHeaderGetTypeId(th), HeapTupleHeaderGetTypMod(th));
	if (tupdesc->natts != 4)
		elog(ERROR, "eventsourcing: es_event has %d attributes, expected 4", tupdesc->natts);
	tuple.t_len = HeapTupleHeaderGetDatumLength(th);
	ItemPointerSetInvalid(&tuple.t_self);
	tuple.t_tableOid = InvalidOid;
	tuple.t_data = th;
	heap_deform_tuple(&tuple, tupdesc, values, nulls);
	ReleaseTupleDesc(tupdesc);
}

/* Checks the four fields of one event and keeps them in *ev. */
static void
EsCheckEvent(Datum *values, bool *nulls, const char *argname, bool is_array,
			 int index, int subscript, EsEventIn *ev)
{
	static const char *const fields[] = {"originator_id", "originator_version", "topic", "state"};
	Size		topic_len;

	for (int i = 0; i < 4; i++)
		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("%s must not be NULL", EsFieldName(argname, is_array, subscript, fields[i]))));

	memcpy(&ev->originator_id, DatumGetUUIDP(values[0]), sizeof(pg_uuid_t));
	ev->version = DatumGetInt64(values[1]);
	ev->topic = PointerGetDatum(PG_DETOAST_DATUM_PACKED(values[2]));
	ev->state = PointerGetDatum(PG_DETOAST_DATUM(values[3]));
	ev->index = index;
	ev->subscript = subscript;
	ev->tags = (Datum) 0;		/* an aggregate event */

	if (ev->version < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must not be negative", EsFieldName(argname, is_array, subscript, "originator_version")),
				 errdetail("The given version is " INT64_FORMAT ".", ev->version)));
	topic_len = VARSIZE_ANY_EXHDR(DatumGetPointer(ev->topic));
	if (topic_len == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must not be empty", EsFieldName(argname, is_array, subscript, "topic"))));
	if (topic_len > ES_MAX_TOPIC_BYTES)
		ereport(ERROR,
				(errcode(ERRCODE_STRING_DATA_RIGHT_TRUNCATION),
				 errmsg("%s is too long", EsFieldName(argname, is_array, subscript, "topic")),
				 errdetail("The topic has %zu bytes; the limit is %d.", topic_len, ES_MAX_TOPIC_BYTES)));
}

static EsEventIn *
EsParseEventArray(FunctionCallInfo fcinfo, int argno, int *nevents)
{
	ArrayType  *arr;
	Datum	   *elems;
	bool	   *elem_nulls;
	int			n;
	int16		typlen;
	bool		typbyval;
	char		typalign;
	EsEventIn  *events;

	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("events must not be NULL"),
				 errhint("Pass an empty array to record nothing.")));
	arr = PG_GETARG_ARRAYTYPE_P(argno);
	if (ARR_NDIM(arr) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("events must be a one-dimensional array")));
	if (ARR_NDIM(arr) == 1 && ARR_DIMS(arr)[0] > MaxAllocSize / sizeof(EsEventIn))
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("events has too many elements")));
	get_typlenbyvalalign(ARR_ELEMTYPE(arr), &typlen, &typbyval, &typalign);
	deconstruct_array(arr, ARR_ELEMTYPE(arr), typlen, typbyval, typalign,
					  &elems, &elem_nulls, &n);
	events = palloc0(sizeof(EsEventIn) * Max(n, 1));
	for (int i = 0; i < n; i++)
	{
		Datum		values[4];
		bool		nulls[4];
		int			subscript = ARR_LBOUND(arr)[0] + i;

		CHECK_FOR_INTERRUPTS();
		if (elem_nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("events[%d] must not be NULL", subscript)));
		EsDeformEvent(DatumGetHeapTupleHeader(elems[i]), values, nulls);
		EsCheckEvent(values, nulls, "events", true, i, subscript, &events[i]);
	}
	*nevents = n;
	return events;
}

static int
EsCompareByAggregate(const void *a, const void *b)
{
	const EsEventIn *ea = *(EsEventIn *const *) a;
	const EsEventIn *eb = *(EsEventIn *const *) b;
	int			c = memcmp(ea->originator_id.data, eb->originator_id.data, UUID_LEN);

	if (c != 0)
		return c;
	return (ea->index > eb->index) - (ea->index < eb->index);
}

/*
 * Reads aggregates' current versions: one index scan, rescanned per aggregate
 * (a batch of new aggregates costs one probe each, not one scan set-up each).
 */
typedef struct EsVersionProbe
{
	Relation	idx;
	IndexScanDesc scan;
	TupleTableSlot *slot;
	ScanKeyData keys[2];
} EsVersionProbe;

static void
EsVersionProbeBegin(EsVersionProbe *p, const EsLog *log, Relation events)
{
	p->idx = index_open(log->version_idx, AccessShareLock);
	p->slot = table_slot_create(events, NULL);

	/*
	 * The caller holds the aggregate's lock, so every other writer of it has
	 * ended: SnapshotSelf (committed, plus our own) sees the truth, even in a
	 * REPEATABLE READ transaction whose snapshot is older.
	 */
	p->scan = index_beginscan(events, p->idx, SnapshotSelf, 2, 0);
}

static void
EsVersionProbeEnd(EsVersionProbe *p)
{
	index_endscan(p->scan);
	ExecDropSingleTupleTableSlot(p->slot);
	index_close(p->idx, AccessShareLock);
}

/*
 * The aggregate's current version, or -1 if it has no events; and the hash of
 * its last event (the genesis value if none) in *head.
 */
static int64
EsCurrentVersion(EsVersionProbe *p, int32 app_id, const pg_uuid_t *originator_id, uint8 *head)
{
	int64		version = -1;

	ScanKeyInit(&p->keys[0], 1, BTEqualStrategyNumber, F_INT4EQ, Int32GetDatum(app_id));
	ScanKeyInit(&p->keys[1], 2, BTEqualStrategyNumber, F_UUID_EQ, UUIDPGetDatum(originator_id));
	index_rescan(p->scan, p->keys, 2, NULL, 0);
	if (index_getnext_slot(p->scan, BackwardScanDirection, p->slot))
	{
		bool		isnull;
		bytea	   *hash;

		version = DatumGetInt64(slot_getattr(p->slot, Anum_es_originator_version, &isnull));
		hash = DatumGetByteaPP(slot_getattr(p->slot, Anum_es_event_hash, &isnull));
		if (VARSIZE_ANY_EXHDR(hash) != ES_HASH_LEN)
			ereport(ERROR,
					(errcode(ERRCODE_DATA_CORRUPTED),
					 errmsg("the stored hash of version " INT64_FORMAT " of aggregate %s is damaged",
							version, EsUuidOut(originator_id)),
					 errhint("Run es_verify() on the aggregate.")));
		memcpy(head, VARDATA_ANY(hash), ES_HASH_LEN);
	}
	else
		memcpy(head, es_genesis_hash, ES_HASH_LEN);
	ExecClearTuple(p->slot);
	return version;
}

/*
 * Steps 2 and 3 for the events of one call, sorted by aggregate and then by
 * position in the call.
 */
static void
EsCheckVersions(const EsApp *app, Relation events, EsEventIn **sorted, int n)
{
	const EsRelations *rels = &app->rels;
	text	   *application = app->name;
	const char *appname = app->cname;
	int32		app_id = app->id;
	int			start = 0;
	EsVersionProbe probe;

	/* Versions within the call first: no lock needed to refuse those. */
	for (int i = 1; i < n; i++)
	{
		EsEventIn  *prev = sorted[i - 1];
		EsEventIn  *cur = sorted[i];

		CHECK_FOR_INTERRUPTS();
		if (memcmp(prev->originator_id.data, cur->originator_id.data, UUID_LEN) != 0)
			continue;
		if (cur->version == prev->version)
			ereport(ERROR,
					(errcode(ERRCODE_UNIQUE_VIOLATION),
					 errmsg("version " INT64_FORMAT " of aggregate %s appears twice in the events for application \"%s\"",
							cur->version, EsUuidOut(&cur->originator_id), appname),
					 errdetail("events[%d] and events[%d] have the same originator_id and originator_version.",
							   prev->subscript, cur->subscript)));
		/* versions are >= 0, so cur->version - 1 cannot overflow */
		if (cur->version - 1 != prev->version)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("versions of aggregate %s in the events for application \"%s\" are not consecutive",
							EsUuidOut(&cur->originator_id), appname),
					 errdetail("events[%d] has version " INT64_FORMAT " after events[%d] with version " INT64_FORMAT ".",
							   cur->subscript, cur->version, prev->subscript, prev->version),
					 errhint("The events of one aggregate must be given in version order, each one above the last.")));
	}

	EsVersionProbeBegin(&probe, &app->log, events);
	while (start < n)
	{
		int			end = start + 1;
		EsEventIn  *first = sorted[start];
		int64		current;
		uint8		head[ES_HASH_LEN];

		CHECK_FOR_INTERRUPTS();
		while (end < n && memcmp(sorted[end]->originator_id.data, first->originator_id.data, UUID_LEN) == 0)
			end++;

		EsLockAggregate(app_id, &first->originator_id);
		current = EsCurrentVersion(&probe, app_id, &first->originator_id, head);
		if (current < 0)
		{
			if (first->version > 1)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("aggregate %s of application \"%s\" has no events, so its first version must be 0 or 1, not " INT64_FORMAT,
								EsUuidOut(&first->originator_id), appname, first->version)));
		}
		else if (first->version <= current)
			ereport(ERROR,
					(errcode(ERRCODE_UNIQUE_VIOLATION),
					 errmsg("version " INT64_FORMAT " of aggregate %s in application \"%s\" already exists",
							first->version, EsUuidOut(&first->originator_id), appname),
					 errdetail("The aggregate's current version is " INT64_FORMAT ".", current),
					 errhint("Another writer recorded it first: reload the aggregate and retry the command.")));
		else if (first->version - 1 > current)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("version " INT64_FORMAT " of aggregate %s in application \"%s\" skips ahead of its current version " INT64_FORMAT,
							first->version, EsUuidOut(&first->originator_id), appname, current),
					 errdetail("The next version must be " INT64_FORMAT ".", current + 1)));

		/* The stored form, then the hash chain over it. */
		for (int i = start; i < end; i++)
		{
			EsStateIdentity id = {rels, app_id, application, &sorted[i]->originator_id,
			sorted[i]->version, false, current < 0 && i == start, current < 0};

			sorted[i]->stored = PointerGetDatum(EsEncodeState(&id, DatumGetByteaPP(sorted[i]->state),
															  app->settings.compression,
															  app->settings.encryption,
															  app->settings.dictionary,
															  &sorted[i]->form));
			EsHashEvent(i == start ? head : sorted[i - 1]->hash, application,
						&sorted[i]->originator_id, sorted[i]->version,
						DatumGetTextPP(sorted[i]->topic), DatumGetByteaPP(sorted[i]->stored),
						sorted[i]->form, sorted[i]->tags, sorted[i]->hash);
		}
		start = end;
	}
	EsVersionProbeEnd(&probe);
}

/* Step 4: the upstream position, above the one recorded, or a 23505. */
static void
EsRecordTracking(const EsRelations *rels, int32 app_id, const char *appname,
				 text *upstream, int64 position)
{
	StringInfoData sql;
	Oid			argtypes[3] = {INT4OID, TEXTOID, INT8OID};
	Datum		values[3];
	int			rc;
	EsSpi		spi;

	values[0] = Int32GetDatum(app_id);
	values[1] = PointerGetDatum(upstream);
	values[2] = Int64GetDatum(position);

	initStringInfo(&sql);
	appendStringInfo(&sql,
					 "INSERT INTO %s AS t (application_id, upstream_application, notification_id) "
					 "VALUES ($1, $2, $3) ON CONFLICT (application_id, upstream_application) "
					 "DO UPDATE SET notification_id = excluded.notification_id "
					 "WHERE t.notification_id OPERATOR(pg_catalog.<) excluded.notification_id",
					 EsQualifiedName(rels, "es_tracking"));
	EsSpiBegin(&spi, rels);
	rc = SPI_execute_with_args(sql.data, 3, argtypes, values, NULL, false, 0);
	if (rc != SPI_OK_INSERT)
		elog(ERROR, "eventsourcing: could not record the tracking position (SPI code %d)", rc);
	if (SPI_processed == 0)
	{
		char	   *upname = text_to_cstring(upstream);

		ereport(ERROR,
				(errcode(ERRCODE_UNIQUE_VIOLATION),
				 errmsg("application \"%s\" has already recorded upstream notification " INT64_FORMAT " of \"%s\"",
						appname, position, upname),
				 errdetail("A new tracking position must be above the one recorded."),
				 errhint("Another follower processed it first, or it is being processed twice.")));
	}
	EsSpiEnd(&spi);
}

/*
 * Step 5 (and the insertion of tagged events, dcb.c, whose index rows
 * `also` inserts before the slot is cleared: ordering.c's rule (b) reads them).
 */
void
EsInsertEvents(const EsRelations *rels, Relation events, int32 app_id,
			   EsEventIn *in, int n, int64 *ids, EsAlsoInsert also, void *arg)
{
	EState	   *estate = CreateExecutorState();
	ResultRelInfo *rri = makeNode(ResultRelInfo);
	TupleTableSlot *slot;
	CommandId	cid = GetCurrentCommandId(true);
	TimestampTz now = GetCurrentTransactionStartTimestamp();
	EsCounter  *counter = EsGetCounter(rels, app_id);
	int64		first;

	bytea	  **hashes = palloc(sizeof(bytea *) * n);

	for (int i = 0; i < n; i++)
	{
		hashes[i] = palloc(VARHDRSZ + ES_HASH_LEN);
		SET_VARSIZE(hashes[i], VARHDRSZ + ES_HASH_LEN);
		memcpy(VARDATA(hashes[i]), in[i].hash, ES_HASH_LEN);
	}
	InitResultRelInfo(rri, events, 1, NULL, 0);
	ExecOpenIndices(rri, false);
	slot = MakeSingleTupleTableSlot(RelationGetDescr(events), &TTSOpsVirtual);

	first = EsBeginAllocation(counter, n);
	PG_TRY();
	{
		for (int i = 0; i < n; i++)
		{
			CHECK_FOR_INTERRUPTS();
			ExecClearTuple(slot);
			/* (any column a future version adds is NULL until it sets it) */
			memset(slot->tts_isnull, true, sizeof(bool) * slot->tts_tupleDescriptor->natts);
			memset(slot->tts_isnull, false, sizeof(bool) * Natts_es_stored_events);
			ids[i] = first + i;
			slot->tts_values[Anum_es_application_id - 1] = Int32GetDatum(app_id);
			slot->tts_values[Anum_es_notification_id - 1] = Int64GetDatum(ids[i]);
			slot->tts_values[Anum_es_originator_id - 1] = UUIDPGetDatum(&in[i].originator_id);
			slot->tts_values[Anum_es_originator_version - 1] = Int64GetDatum(in[i].version);
			slot->tts_values[Anum_es_topic - 1] = in[i].topic;
			slot->tts_values[Anum_es_state - 1] = in[i].stored;
			slot->tts_values[Anum_es_stored_form - 1] = Int16GetDatum(in[i].form);
			slot->tts_values[Anum_es_recorded_at - 1] = TimestampTzGetDatum(now);
			slot->tts_values[Anum_es_event_hash - 1] = PointerGetDatum(hashes[i]);
			slot->tts_values[Anum_es_tags - 1] = in[i].tags;
			slot->tts_isnull[Anum_es_tags - 1] = in[i].tags == (Datum) 0;
			ExecStoreVirtualTuple(slot);
			table_tuple_insert(events, slot, cid, 0, NULL);
			(void) ExecInsertIndexTuples(rri, slot, estate, false, false, NULL, NIL);
		}
		if (also != NULL)
			also(arg, ids);
	}
	PG_FINALLY();
	{
		EsEndAllocation();
	}
	PG_END_TRY();
	EsNoteAppend();

	ExecDropSingleTupleTableSlot(slot);
	ExecCloseIndices(rri);
	FreeExecutorState(estate);
	/* Later commands of this transaction (and its next append) see them. */
	CommandCounterIncrement();
}

/* The whole append; returns the ids in input order. */
static int64 *
EsAppend(text *application, EsEventIn *in, int n, text *upstream, int64 upstream_position)
{
	EsApp		app;
	Relation	events;
	int64	   *ids = palloc(sizeof(int64) * Max(n, 1));
	uint32		required = 0;

	if (n > 0 || upstream == NULL)
		required |= ES_PRIV_APPEND;
	if (upstream != NULL)
		required |= ES_PRIV_TRACK;
	EsOpenAppByName(&app, application, required);

	/* Do not start writing in a read-only transaction or on a standby. */
	PreventCommandIfReadOnly("es_append()");

	events = table_open(app.log.relid, RowExclusiveLock);
	if (n > 0)
	{
		EsEventIn **sorted = palloc(sizeof(EsEventIn *) * n);

		for (int i = 0; i < n; i++)
			sorted[i] = &in[i];
		qsort(sorted, n, sizeof(EsEventIn *), EsCompareByAggregate);
		EsCheckVersions(&app, events, sorted, n);
	}
	if (upstream != NULL)
		EsRecordTracking(&app.rels, app.id, app.cname, upstream, upstream_position);
	if (n > 0)
		EsInsertEvents(&app.rels, events, app.id, in, n, ids, NULL, NULL);
	table_close(events, NoLock);
	return ids;
}

static Datum
EsReturnIds(FunctionCallInfo fcinfo, int64 *ids, int n)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;

	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);
	for (int i = 0; i < n; i++)
	{
		Datum		value = Int64GetDatum(ids[i]);
		bool		isnull = false;

		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, &value, &isnull);
	}
	return (Datum) 0;
}

static text *
EsArgUpstream(FunctionCallInfo fcinfo, int argno, int64 *position)
{
	text	   *upstream;
	Size		len;

	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("upstream_application must not be NULL")));
	if (PG_ARGISNULL(argno + 1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("upstream_notification_id must not be NULL")));
	upstream = PG_GETARG_TEXT_PP(argno);
	len = VARSIZE_ANY_EXHDR(upstream);
	if (len == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("upstream_application must not be empty")));
	if (len > ES_MAX_APPLICATION_BYTES)
		ereport(ERROR,
				(errcode(ERRCODE_STRING_DATA_RIGHT_TRUNCATION),
				 errmsg("upstream_application is too long"),
				 errdetail("The name has %zu bytes; the limit is %d.", len, ES_MAX_APPLICATION_BYTES)));
	*position = PG_GETARG_INT64(argno + 1);
	if (*position < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("upstream_notification_id must be positive"),
				 errdetail("The given position is " INT64_FORMAT ".", *position)));
	return upstream;
}

/* es_append(application text, events es_event[]) RETURNS SETOF bigint */
PG_FUNCTION_INFO_V1(es_append);
Datum
es_append(PG_FUNCTION_ARGS)
{
	text	   *application = EsArgApplication(fcinfo, 0);
	int			n;
	EsEventIn  *in = EsParseEventArray(fcinfo, 1, &n);
	int64	   *ids = EsAppend(application, in, n, NULL, 0);

	return EsReturnIds(fcinfo, ids, n);
}

/*
 * es_append(application text, events es_event[], upstream_application text,
 *			 upstream_notification_id bigint) RETURNS SETOF bigint
 */
PG_FUNCTION_INFO_V1(es_append_tracked);
Datum
es_append_tracked(PG_FUNCTION_ARGS)
{
	text	   *application = EsArgApplication(fcinfo, 0);
	int			n;
	EsEventIn  *in = EsParseEventArray(fcinfo, 1, &n);
	int64		position;
	text	   *upstream = EsArgUpstream(fcinfo, 2, &position);
	int64	   *ids = EsAppend(application, in, n, upstream, position);

	return EsReturnIds(fcinfo, ids, n);
}

/* es_append(application text, event es_event) RETURNS bigint */
PG_FUNCTION_INFO_V1(es_append_one);
Datum
es_append_one(PG_FUNCTION_ARGS)
{
	text	   *application = EsArgApplication(fcinfo, 0);
	EsEventIn	ev;

	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("event must not be NULL")));
	{
		Datum		values[4];
		bool		nulls[4];

		EsDeformEvent(PG_GETARG_HEAPTUPLEHEADER(1), values, nulls);
		EsCheckEvent(values, nulls, "event", false, 0, 0, &ev);
	}
	PG_RETURN_INT64(EsAppend(application, &ev, 1, NULL, 0)[0]);
}

/* One event given field by field (argument 1 on); the state as bytea or jsonb. */
static Datum
EsAppendFields(FunctionCallInfo fcinfo, bool json)
{
	text	   *application = EsArgApplication(fcinfo, 0);
	Datum		values[4];
	bool		nulls[4];
	EsEventIn	ev;

	for (int i = 0; i < 4; i++)
	{
		nulls[i] = PG_ARGISNULL(i + 1);
		values[i] = nulls[i] ? (Datum) 0 : PG_GETARG_DATUM(i + 1);
	}
	if (json && !nulls[3])
		values[3] = PointerGetDatum(EsStateFromJsonb(PG_GETARG_JSONB_P(4)));
	EsCheckEvent(values, nulls, NULL, false, 0, 0, &ev);
	PG_RETURN_INT64(EsAppend(application, &ev, 1, NULL, 0)[0]);
}

/*
 * es_append(application text, originator_id uuid, originator_version bigint,
 *			 topic text, state bytea) RETURNS bigint
 */
PG_FUNCTION_INFO_V1(es_append_fields);
Datum
es_append_fields(PG_FUNCTION_ARGS)
{
	return EsAppendFields(fcinfo, false);
}

/* ---------------------------------------------------------------------
 * JSON forms: states given as jsonb are stored as their text (UTF-8).
 * ---------------------------------------------------------------------
 */

/*
 * es_append_json(application text, originator_id uuid, originator_version
 *				  bigint, topic text, state jsonb) RETURNS bigint
 */
PG_FUNCTION_INFO_V1(es_append_json);
Datum
es_append_json(PG_FUNCTION_ARGS)
{
	return EsAppendFields(fcinfo, true);
}

/* One field of a JSON event object, or an error naming it. */
static JsonbValue *
EsJsonField(JsonbContainer *obj, const char *field, int index, enum jbvType type,
			const char *what)
{
	JsonbValue *v = getKeyJsonValueFromContainer(obj, field, strlen(field), NULL);

	if (v == NULL || v->type == jbvNull)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("events[%d].%s must not be NULL", index, field)));
	if (type != jbvNull && v->type != type)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("events[%d].%s must be %s", index, field, what)));
	return v;
}

/*
 * The events of a JSON array: [{"originator_id": "<uuid>", "originator_version":
 * n, "topic": "...", "state": <any JSON>}, ...].  Subscripts count from 0, as
 * in JSON.
 */
static EsEventIn *
EsParseJsonEvents(FunctionCallInfo fcinfo, int argno, int *nevents)
{
	Jsonb	   *events;
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	EsEventIn  *in;
	int			n;
	int			i = 0;

	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("events must not be NULL"),
				 errhint("Pass an empty JSON array to record nothing.")));
	events = PG_GETARG_JSONB_P(argno);
	if (!JB_ROOT_IS_ARRAY(events) || JB_ROOT_IS_SCALAR(events))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("events must be a JSON array of event objects"),
				 errhint("[{\"originator_id\": \"<uuid>\", \"originator_version\": 1, \"topic\": \"...\", \"state\": {...}}]")));
	n = JB_ROOT_COUNT(events);
	in = palloc0(sizeof(EsEventIn) * Max(n, 1));
	it = JsonbIteratorInit(&events->root);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		Datum		values[4];
		bool		nulls[4] = {false, false, false, false};
		JsonbValue *f;
		JsonbValue	statev;
		Numeric		version;
		char	   *idtext;

		if (tok != WJB_ELEM)
			continue;
		CHECK_FOR_INTERRUPTS();
		if (v.type == jbvNull)
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("events[%d] must not be NULL", i)));
		if (v.type != jbvBinary || !JsonContainerIsObject(v.val.binary.data))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("events[%d] must be a JSON object", i)));
		f = EsJsonField(v.val.binary.data, "originator_id", i, jbvString, "a uuid string");
		idtext = pnstrdup(f->val.string.val, f->val.string.len);
		values[0] = DirectFunctionCall1(uuid_in, CStringGetDatum(idtext));
		f = EsJsonField(v.val.binary.data, "originator_version", i, jbvNumeric, "a number");
		version = f->val.numeric;
		values[1] = DirectFunctionCall1(numeric_int8, NumericGetDatum(version));
		if (DatumGetInt64(DirectFunctionCall1(numeric_int8, NumericGetDatum(version))) < 0 ||
			!DatumGetBool(DirectFunctionCall2(numeric_eq, NumericGetDatum(version),
											  DirectFunctionCall1(int8_numeric, values[1]))))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("events[%d].originator_version must be a whole number, not negative", i)));
		f = EsJsonField(v.val.binary.data, "topic", i, jbvString, "a string");
		values[2] = PointerGetDatum(cstring_to_text_with_len(f->val.string.val, f->val.string.len));
		f = EsJsonField(v.val.binary.data, "state", i, jbvNull, NULL);
		statev = *f;
		values[3] = PointerGetDatum(EsStateFromJsonb(JsonbValueToJsonb(&statev)));
		EsCheckEvent(values, nulls, "events", true, i, i, &in[i]);
		i++;
	}
	*nevents = i;
	return in;
}

/* es_append_json(application text, events jsonb) RETURNS SETOF bigint */
PG_FUNCTION_INFO_V1(es_append_json_events);
Datum
es_append_json_events(PG_FUNCTION_ARGS)
{
	text	   *application = EsArgApplication(fcinfo, 0);
	int			n;
	EsEventIn  *in = EsParseJsonEvents(fcinfo, 1, &n);

	return EsReturnIds(fcinfo, EsAppend(application, in, n, NULL, 0), n);
}

/*
 * es_append_json(application text, events jsonb, upstream_application text,
 *				  upstream_notification_id bigint) RETURNS SETOF bigint
 */
PG_FUNCTION_INFO_V1(es_append_json_tracked);
Datum
es_append_json_tracked(PG_FUNCTION_ARGS)
{
	text	   *application = EsArgApplication(fcinfo, 0);
	int			n;
	EsEventIn  *in = EsParseJsonEvents(fcinfo, 1, &n);
	int64		position;
	text	   *upstream = EsArgUpstream(fcinfo, 2, &position);

	return EsReturnIds(fcinfo, EsAppend(application, in, n, upstream, position), n);
}
