/*
 * worker.c
 *		The per-database background worker, and only that: watermarks,
 *		announcements, seals.
 *
 * The first es_append in a database since server start starts one dynamic
 * background worker for that database (wakeup.c).  Every
 * eventsourcing.worker_naptime it computes every application's watermark
 * (ordering.c) and, when one has moved, writes it to es_watermarks in a short
 * transaction of its own, with synchronous_commit off: the watermark is only
 * a hint for hot-standby readers, it never holds a writer back, and a lost
 * one is recomputed.  Every eventsourcing.notify_interval while appends
 * keep coming, or when a commit wakes it from sleep (wakeup.c), it announces
 * on each application's NOTIFY channel the highest id readers can now be
 * given.
 *
 * With eventsourcing.seal_interval set, it also seals every application of
 * the database that often (integrity.c), and once more before it exits when
 * idle.
 *
 * The worker exits after two idle seconds (so that DROP DATABASE, which waits
 * five seconds for other sessions to leave, is not refused), when the
 * extension is dropped (or is at another version than the library), or on
 * SIGTERM; in every case the next append in the database starts it again.
 * It forgets the counters of a dropped extension.
 *
 * TRUST
 *
 * The worker runs as the bootstrap superuser in a database whose owner may
 * be anybody.  It therefore runs no user code: search_path is pinned to
 * pg_catalog, pg_temp whatever ALTER DATABASE ... SET says, its few SQL
 * statements name every table with its schema and every operator as
 * OPERATOR(pg_catalog.op), sealing is done in C without SQL calls to our
 * functions, and it never calls fold functions.
 *
 * Being a hint, a watermark may lag; it is never ahead of the truth, because
 * it is computed from the slots before the transaction that writes it, and
 * that transaction's commit record follows in WAL every insert it covers.
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "port/atomics.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "tcop/tcopprot.h"
#include "commands/async.h"
#include "storage/condition_variable.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/hsearch.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "follow.h"
#include "integrity.h"
#include "read.h"
#include "utils/rel.h"
#include "wakeup.h"

/* Below DROP DATABASE's 5 s wait for other sessions to leave. */
#define ES_WORKER_IDLE_EXIT_MS 2000

/* How long the worker keeps polling after the last new id (wakeup.c). */
#define ES_WORKER_POLL_LINGER_MS 100

typedef struct EsAppWatermark
{
	int32		app_id;			/* key */
	Oid			events_relid;
	int64		published;		/* watermark written to es_watermarks */
	int64		announced;		/* highest id announced with NOTIFY */
	int64		persisted;		/* announced as last written to es_watermarks */
	char	   *name;			/* the application's name (TopMemoryContext), once read */
} EsAppWatermark;

int			es_worker_naptime = 20;
int			es_seal_interval = 0;
int			es_notify_interval = 5;

PGDLLEXPORT void es_worker_main(Datum main_arg);

/*
 * Announces, with NOTIFY in the worker's own transaction, the highest id of
 * the application that readers can now be given, if it has moved.  The
 * payload is JSON: {"application": name, "notification_id": id}.
 */
static bool
EsAnnounce(const EsRelations *rels, int32 app_id, EsAppWatermark *w)
{
	int64		head;
	StringInfoData payload;
	EsLog		log;

	/* An application whose log was detached (archived) has nothing to say. */
	if (!EsFindLog(rels, app_id, &log))
		return false;
	head = EsReadableHead(rels, app_id, w->announced);
	if (head <= w->announced)
		return false;
	/* Names never change: an application's id is never given to another. */
	if (w->name == NULL)
	{
		char	   *name = EsApplicationName(rels, app_id);

		if (name == NULL)
			return false;
		w->name = MemoryContextStrdup(TopMemoryContext, name);
	}
	initStringInfo(&payload);
	appendStringInfoString(&payload, "{\"application\": ");
	escape_json(&payload, w->name);
	appendStringInfo(&payload, ", \"notification_id\": " INT64_FORMAT "}", head);
	Async_Notify(EsChannel(cstring_to_text(w->name), app_id), payload.data);
	w->announced = head;
	return true;
}

/*
 * One round: publish every watermark of this database that has moved.
 * Returns false when the extension is no longer installed here.
 */
static bool
EsPublishWatermarks(HTAB *published, bool *worked, bool *pending, bool tick)
{
	EsCounterRef *refs = palloc(sizeof(EsCounterRef) * es_max_applications);
	int64	   *marks = palloc(sizeof(int64) * es_max_applications);
	int			n = EsCountersOfDatabase(MyDatabaseId, refs, es_max_applications);
	bool		any = false;
	bool		installed;
	EsRelations rels;

	bool		*may_announce = palloc0(sizeof(bool) * Max(n, 1));

	*worked = false;
	*pending = false;
	for (int i = 0; i < n; i++)
	{
		EsAppWatermark *w = hash_search(published, &refs[i].app_id, HASH_FIND, NULL);
		bool		same = (w != NULL && w->events_relid == refs[i].events_relid);

		/* Watermarks are written on ticks only; announcements at once. */
		marks[i] = tick ? EsComputeWatermark(refs[i].counter) : -1;
		if (marks[i] > 0 && (!same || w->published < marks[i] || w->persisted < w->announced))
			any = true;
		else
			marks[i] = -1;
		/* Ids were handed out beyond the last announcement: maybe readable. */
		if (es_notify && EsCounterNext(refs[i].counter) - 1 > (same ? w->announced : 0))
			may_announce[i] = any = true;
	}
	if (!any)
	{
		pfree(refs);
		pfree(marks);
		pfree(may_announce);
		return true;
	}

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, "publishing watermarks");
	installed = EsLookupRelationsIfInstalled(&rels);
	/* Counters of a dropped extension would otherwise look busy forever. */
	EsForgetStaleCounters(MyDatabaseId, installed ? rels.events : InvalidOid);
	if (installed)
	{
		EsSpi		spi;
		bool		spi_open = false;

		for (int i = 0; i < n; i++)
		{
			Oid			argtypes[3] = {INT4OID, INT8OID, INT8OID};
			Datum		values[3];
			StringInfoData sql;
			EsAppWatermark *w;
			bool		found;

			if (refs[i].events_relid != rels.events)
				continue;
			w = hash_search(published, &refs[i].app_id, HASH_ENTER, &found);
			if (!found || w->events_relid != refs[i].events_relid)
			{
				/*
				 * Resume announcing after the last id an earlier worker
				 * announced: it was readable then, so it is now.
				 */
				w->events_relid = refs[i].events_relid;
				w->published = 0;
				w->announced = EsReadAnnounced(&rels, refs[i].app_id);
				w->persisted = w->announced;
				if (found && w->name != NULL)
					pfree(w->name);
				w->name = NULL;
			}
			if (may_announce[i] && EsAnnounce(&rels, refs[i].app_id, w))
				*worked = true;
			/* Ids handed out but not yet readable: their commit may come. */
			if (es_notify && EsCounterNext(refs[i].counter) - 1 > w->announced)
				*pending = true;
			if (marks[i] < 0)
				continue;
			if (!spi_open)
			{
				EsSpiBegin(&spi, &rels);
				spi_open = true;
			}
			values[0] = Int32GetDatum(refs[i].app_id);
			values[1] = Int64GetDatum(marks[i]);
			initStringInfo(&sql);
			values[2] = Int64GetDatum(w->announced);
			appendStringInfo(&sql,
							 "INSERT INTO %s AS w VALUES ($1, $2, $3) ON CONFLICT (application_id) "
							 "DO UPDATE SET notification_id = greatest(w.notification_id, excluded.notification_id), "
							 "announced_id = greatest(w.announced_id, excluded.announced_id) "
							 "WHERE w.notification_id OPERATOR(pg_catalog.<) excluded.notification_id "
							 "OR w.announced_id OPERATOR(pg_catalog.<) excluded.announced_id",
							 EsQualifiedName(&rels, "es_watermarks"));
			if (SPI_execute_with_args(sql.data, 3, argtypes, values, NULL, false, 0) != SPI_OK_INSERT)
				elog(ERROR, "eventsourcing: could not publish a watermark");
			w->published = marks[i];
			w->persisted = w->announced;
			*worked = true;
		}
		if (spi_open)
			EsSpiEnd(&spi);
	}
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_activity(STATE_IDLE, NULL);
	pfree(refs);
	pfree(marks);
	pfree(may_announce);
	return installed;
}

/*
 * Seals every application of this database, when eventsourcing.seal_interval
 * is set: in C, each in its own subtransaction-free pass, as the worker's
 * superuser (no user code runs).
 */
static void
EsSealAll(void)
{
	EsRelations rels;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, "sealing");
	if (EsLookupRelationsIfInstalled(&rels))
	{
		Relation	rel = table_open(rels.applications, AccessShareLock);
		SysScanDesc scan = systable_beginscan(rel, rels.applications_pkey, true, NULL, 0, NULL);
		HeapTuple	tuple;
		int32	   *ids = NULL;
		text	  **names = NULL;
		int			n = 0;
		int			cap = 0;

		while (HeapTupleIsValid(tuple = systable_getnext(scan)))
		{
			bool		isnull1;
			bool		isnull2;
			Datum		id = heap_getattr(tuple, 1, RelationGetDescr(rel), &isnull1);
			Datum		name = heap_getattr(tuple, 2, RelationGetDescr(rel), &isnull2);

			CHECK_FOR_INTERRUPTS();
			if (isnull1 || isnull2)
				continue;
			if (n == cap)
			{
				cap = Max(16, cap * 2);
				ids = ids ? repalloc(ids, sizeof(int32) * cap) : palloc(sizeof(int32) * cap);
				names = names ? repalloc(names, sizeof(text *) * cap) : palloc(sizeof(text *) * cap);
			}
			ids[n] = DatumGetInt32(id);
			names[n] = DatumGetTextPCopy(name);
			n++;
		}
		systable_endscan(scan);
		table_close(rel, AccessShareLock);
		for (int i = 0; i < n; i++)
		{
			Datum		seal;
			EsLog		log;

			CHECK_FOR_INTERRUPTS();
			if (EsFindLog(&rels, ids[i], &log))	/* not while archived */
				(void) EsSealApplication(&rels, ids[i], names[i], &seal);
		}
	}
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_activity(STATE_IDLE, NULL);
}

static void
EsWorkerExit(int code, Datum arg)
{
	EsWorkerDetach();
}

void
es_worker_main(Datum main_arg)
{
	Oid			dboid = DatumGetObjectId(main_arg);
	HASHCTL		info;
	HTAB	   *published;
	TimestampTz idle_since = GetCurrentTimestamp();
	TimestampTz last_seal = GetCurrentTimestamp();
	TimestampTz last_tick = 0;
	TimestampTz last_activity = GetCurrentTimestamp();
	uint64		seen_taken = 0;
	bool		pending = false;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);
	es_keep_log_locks = false;	/* see EsFindLog */

	/* A hint: never make anyone wait for its flush. */
	SetConfigOption("synchronous_commit", "off", PGC_SUSET, PGC_S_OVERRIDE);
	/* Whatever the database's settings say: no user code on our path. */
	SetConfigOption("search_path", "pg_catalog, pg_temp", PGC_SUSET, PGC_S_OVERRIDE);

	(void) EsWorkerAttach(dboid, MyLatch);

	info.keysize = sizeof(int32);
	info.entrysize = sizeof(EsAppWatermark);
	published = hash_create("eventsourcing published watermarks", 64, &info,
							HASH_ELEM | HASH_BLOBS);

	before_shmem_exit(EsWorkerExit, (Datum) 0);

	for (;;)
	{
		bool		worked;
		bool		tick;
		long		timeout = es_notify_interval;
		TimestampTz now;
		uint64		taken;

		/*
		 * Poll while ids keep being taken (writers then never signal us, see
		 * wakeup.c) or some taken id is not announced yet; after
		 * ES_WORKER_POLL_LINGER_MS without either, sleep until a commit
		 * wakes us.  With notify_interval 0, every commit wakes us at once.
		 */
		if (!es_notify || es_notify_interval == 0 ||
			(!pending &&
			 TimestampDifferenceExceeds(last_activity, GetCurrentTimestamp(), ES_WORKER_POLL_LINGER_MS)))
			timeout = EsWorkerMaySleep(seen_taken) ? es_worker_naptime : 0;
		if (timeout > 0)
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 timeout, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		EsWorkerAwake();
		now = GetCurrentTimestamp();
		taken = EsDatabaseIdsTaken(MyDatabaseId);
		if (taken != seen_taken)
		{
			seen_taken = taken;
			last_activity = now;
		}
		tick = TimestampDifferenceExceeds(last_tick, now, es_worker_naptime);
		if (tick)
			last_tick = now;
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		if (!EsPublishWatermarks(published, &worked, &pending, tick))
			break;				/* extension dropped */
		if (es_seal_interval > 0 &&
			TimestampDifferenceExceeds(last_seal, GetCurrentTimestamp(), es_seal_interval * 1000))
		{
			EsSealAll();
			last_seal = GetCurrentTimestamp();
		}

		/*
		 * Exit when idle, so that the worker does not keep DROP DATABASE
		 * waiting; the next append starts it again.
		 */
		if (worked)
			idle_since = GetCurrentTimestamp();
		else if (TimestampDifferenceExceeds(idle_since, GetCurrentTimestamp(), ES_WORKER_IDLE_EXIT_MS))
		{
			/*
			 * Withdraw first, then publish once more: a writer that still saw
			 * us (see EsNoteAppend) has its ids counted by this last round,
			 * and one that did not starts a new worker.
			 */
			EsWorkerDetach();
			pg_memory_barrier();
			(void) EsPublishWatermarks(published, &worked, &pending, true);
			if (es_seal_interval > 0)
				EsSealAll();	/* leave nothing unsealed while idle */
			break;
		}
	}
	proc_exit(0);
}

/* Settings of the worker. */
void
EsWorkerInit(void)
{
	DefineCustomIntVariable("eventsourcing.worker_naptime",
							"How often the eventsourcing worker publishes watermarks, and looks for new events while asleep.",
							NULL,
							&es_worker_naptime,
							20, 1, 60000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomIntVariable("eventsourcing.seal_interval",
							"How often the eventsourcing worker seals every application's log (0: never).",
							"Seals chain digests of the notification log; see es_seal.",
							&es_seal_interval,
							0, 0, 86400,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);
	DefineCustomBoolVariable("eventsourcing.notify",
							 "Announces new events on each application's NOTIFY channel (from the background worker).",
							 NULL,
							 &es_notify,
							 true,
							 PGC_SIGHUP, 0,
							 NULL, NULL, NULL);
	DefineCustomIntVariable("eventsourcing.notify_interval",
							"How often the eventsourcing worker looks for new events to announce while appends keep coming.",
							"Announcements are coalesced; after 100 ms without a new id the worker sleeps until a commit wakes it. 0: every commit wakes it.",
							&es_notify_interval,
							5, 0, 1000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);
}
