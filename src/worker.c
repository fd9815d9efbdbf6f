/*
 * worker.c
 *		The per-database background worker: publishes watermarks.
 *
 * The first es_append in a database since server start starts one dynamic
 * background worker for that database.  Every eventsourcing.worker_naptime it
 * computes every application's watermark (ordering.c) and, when one has
 * moved, writes it to es_watermarks in a short transaction of its own, with
 * synchronous_commit off: the watermark is only a hint for hot-standby
 * readers, it never holds a writer back, and a lost one is recomputed.
 *
 * With eventsourcing.seal_interval set, it also seals every application of
 * the database that often (es_seal, integrity.c), and once more before it
 * exits when idle.
 *
 * The worker exits after two idle seconds (so that DROP DATABASE, which waits
 * five seconds for other sessions to leave, is not refused), when the
 * extension is dropped, or on SIGTERM; in every case the next append in the
 * database starts it again.  It forgets the counters of a dropped extension.
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
#include "utils/hsearch.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "eventsourcing.h"

#define ES_MAX_DATABASES 256
/* Below DROP DATABASE's 5 s wait for other sessions to leave. */
#define ES_WORKER_IDLE_EXIT_MS 2000

typedef struct EsDatabase
{
	Oid			dboid;			/* key */
	bool		worker_requested;	/* protected by es_worker_lock */
	Latch	   *latch;			/* the worker's, or NULL */
	pg_atomic_uint32 wakeup_pending;	/* a writer has set the latch */
	ConditionVariable new_events;	/* es_wait sleeps here */
} EsDatabase;

typedef struct EsAppWatermark
{
	int32		app_id;			/* key */
	Oid			events_relid;
	int64		published;		/* watermark written to es_watermarks */
	int64		announced;		/* highest id announced with NOTIFY */
	int64		persisted;		/* announced as last written to es_watermarks */
} EsAppWatermark;

static HTAB *es_databases = NULL;
static LWLock *es_worker_lock = NULL;
static EsDatabase *my_database = NULL;	/* cached per backend */
static void EsEnsureWorker(EsDatabase *db);
static bool appended_in_xact = false;
static bool xact_callback_registered = false;

int			es_worker_naptime = 20;
int			es_seal_interval = 0;
int			es_notify_interval = 5;
bool		es_notify = true;

PGDLLEXPORT void es_worker_main(Datum main_arg);

Size
EsWorkerShmemSize(void)
{
	return hash_estimate_size(ES_MAX_DATABASES, sizeof(EsDatabase));
}

void
EsWorkerShmemInit(void)
{
	HASHCTL		info;

	info.keysize = sizeof(Oid);
	info.entrysize = sizeof(EsDatabase);
	es_databases = ShmemInitHash("eventsourcing databases",
								 ES_MAX_DATABASES, ES_MAX_DATABASES,
								 &info, HASH_ELEM | HASH_BLOBS);
	es_worker_lock = &(GetNamedLWLockTranche("eventsourcing"))[1].lock;
}

static void
EsStartWorker(Oid dboid)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	/* Never restarted by the postmaster: EsWorkerExit lets the next append do it. */
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	strlcpy(worker.bgw_library_name, "eventsourcing", BGW_MAXLEN);
	strlcpy(worker.bgw_function_name, "es_worker_main", BGW_MAXLEN);
	snprintf(worker.bgw_name, BGW_MAXLEN, "eventsourcing worker for database %u", dboid);
	strlcpy(worker.bgw_type, "eventsourcing worker", BGW_MAXLEN);
	worker.bgw_main_arg = ObjectIdGetDatum(dboid);
	worker.bgw_notify_pid = 0;
	if (!RegisterDynamicBackgroundWorker(&worker, NULL))
	{
		LWLockAcquire(es_worker_lock, LW_EXCLUSIVE);
		my_database->worker_requested = false;
		LWLockRelease(es_worker_lock);
		ereport(WARNING,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("could not start the eventsourcing worker for this database"),
				 errdetail("Without it, readers on hot standbys cannot pass gaps in the notification log."),
				 errhint("Raise max_worker_processes.")));
	}
}

/* This database's entry in shared memory (NULL if there are too many). */
static EsDatabase *
EsMyDatabase(void)
{
	if (my_database == NULL && es_databases != NULL)
	{
		bool		found;

		LWLockAcquire(es_worker_lock, LW_EXCLUSIVE);
		my_database = hash_search(es_databases, &MyDatabaseId, HASH_ENTER_NULL, &found);
		if (my_database != NULL && !found)
		{
			my_database->worker_requested = false;
			my_database->latch = NULL;
			pg_atomic_init_u32(&my_database->wakeup_pending, 0);
			ConditionVariableInit(&my_database->new_events);
		}
		LWLockRelease(es_worker_lock);
	}
	return my_database;
}

/*
 * At the end of a transaction that appended (committed or aborted: an abort
 * can make later ids readable), wake es_wait sleepers and the worker, which
 * announces what has become readable.  After commit, so the events are
 * visible; never inside the transaction, so no writer waits for anyone.
 */
static void
EsXactCallback(XactEvent event, void *arg)
{
	EsDatabase *db;

	if (!appended_in_xact)
		return;
	if (event != XACT_EVENT_COMMIT && event != XACT_EVENT_ABORT &&
		event != XACT_EVENT_PREPARE)
		return;
	appended_in_xact = false;
	db = my_database;
	if (db == NULL)
		return;
	ConditionVariableBroadcast(&db->new_events);
	/* The worker may have gone idle since we appended: start another. */
	pg_memory_barrier();
	if (!db->worker_requested)
	{
		EsEnsureWorker(db);
		return;
	}
	if (es_notify && pg_atomic_read_u32(&db->wakeup_pending) == 0 &&
		pg_atomic_exchange_u32(&db->wakeup_pending, 1) == 0)
	{
		Latch	   *latch = db->latch;

		if (latch != NULL)
			SetLatch(latch);
	}
}

/* A rolled-back savepoint that appended may make later ids readable. */
static void
EsSubXactCallback(SubXactEvent event, SubTransactionId mySubid,
				  SubTransactionId parentSubid, void *arg)
{
	if (event == SUBXACT_EVENT_ABORT_SUB && appended_in_xact && my_database != NULL)
		ConditionVariableBroadcast(&my_database->new_events);
}

/*
 * Called by writers after their tuples are in: makes sure this database's
 * worker runs, and arranges the wake-up at the end of the transaction.
 */
void
EsNoteAppend(void)
{
	EsDatabase *db = EsMyDatabase();

	if (db == NULL)
		return;					/* more databases than we track: no worker */
	if (!xact_callback_registered)
	{
		RegisterXactCallback(EsXactCallback, NULL);
		RegisterSubXactCallback(EsSubXactCallback, NULL);
		xact_callback_registered = true;
	}
	appended_in_xact = true;

	/* Pairs with the worker's barrier when it withdraws on idle exit. */
	pg_memory_barrier();
	EsEnsureWorker(db);
}

/* Starts the database's worker unless one is running or requested. */
static void
EsEnsureWorker(EsDatabase *db)
{
	if (!db->worker_requested)
	{
		bool		start = false;

		LWLockAcquire(es_worker_lock, LW_EXCLUSIVE);
		if (!db->worker_requested)
		{
			db->worker_requested = true;
			start = true;
		}
		LWLockRelease(es_worker_lock);
		if (start)
			EsStartWorker(MyDatabaseId);
	}
}

/* The NOTIFY channel of an application: "es:" and its name, or its id if long. */
char *
EsChannel(text *application, int32 app_id)
{
	Size		len = VARSIZE_ANY_EXHDR(application);

	if (len + 3 < NAMEDATALEN)
		return psprintf("es:%.*s", (int) len, VARDATA_ANY(application));
	return psprintf("es:#%d", app_id);
}

/*
 * The highest id a reader can be given now (with the active snapshot), from
 * `after` on; `after` itself when nothing new is readable.
 */
int64
EsReadableHead(const EsRelations *rels, int32 app_id, int64 after)
{
	EsLogScan	scan;
	int64		id;
	int64		head = after;

	EsLogScanBegin(&scan, rels, app_id, after + 1, PG_INT64_MAX, false);
	while (EsLogScanNext(&scan, &id) != NULL)
		head = id;
	EsLogScanEnd(&scan);
	return head;
}

/*
 * Announces, with NOTIFY in the worker's own transaction, the highest id of
 * the application that readers can now be given, if it has moved.  The
 * payload is JSON: {"application": name, "notification_id": id}.
 */
static bool
EsAnnounce(const EsRelations *rels, int32 app_id, EsAppWatermark *w)
{
	int64		head = EsReadableHead(rels, app_id, w->announced);
	char	   *name;
	StringInfoData payload;

	if (head <= w->announced)
		return false;
	name = EsApplicationName(rels, app_id);
	if (name == NULL)
		return false;
	initStringInfo(&payload);
	appendStringInfoString(&payload, "{\"application\": ");
	escape_json(&payload, name);
	appendStringInfo(&payload, ", \"notification_id\": " INT64_FORMAT "}", head);
	Async_Notify(EsChannel(cstring_to_text(name), app_id), payload.data);
	w->announced = head;
	return true;
}

/*
 * One round: publish every watermark of this database that has moved.
 * Returns false when the extension is no longer installed here.
 */
static bool
EsPublishWatermarks(HTAB *published, bool *worked, bool tick)
{
	EsCounterRef *refs = palloc(sizeof(EsCounterRef) * es_max_applications);
	int64	   *marks = palloc(sizeof(int64) * es_max_applications);
	int			n = EsCountersOfDatabase(MyDatabaseId, refs, es_max_applications);
	bool		any = false;
	bool		installed;
	EsRelations rels;

	bool		*may_announce = palloc0(sizeof(bool) * Max(n, 1));

	*worked = false;
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
		SPI_connect();
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
			}
			if (may_announce[i] && EsAnnounce(&rels, refs[i].app_id, w))
				*worked = true;
			if (marks[i] < 0)
				continue;
			values[0] = Int32GetDatum(refs[i].app_id);
			values[1] = Int64GetDatum(marks[i]);
			initStringInfo(&sql);
			values[2] = Int64GetDatum(w->announced);
			appendStringInfo(&sql,
							 "INSERT INTO %s AS w VALUES ($1, $2, $3) ON CONFLICT (application_id) "
							 "DO UPDATE SET notification_id = greatest(w.notification_id, excluded.notification_id), "
							 "announced_id = greatest(w.announced_id, excluded.announced_id) "
							 "WHERE w.notification_id < excluded.notification_id OR w.announced_id < excluded.announced_id",
							 EsQualifiedName(&rels, "es_watermarks"));
			if (SPI_execute_with_args(sql.data, 3, argtypes, values, NULL, false, 0) != SPI_OK_INSERT)
				elog(ERROR, "eventsourcing: could not publish a watermark");
			w->published = marks[i];
			w->persisted = w->announced;
			*worked = true;
		}
		SPI_finish();
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
 * Seals every application of this database (es_seal), when
 * eventsourcing.seal_interval is set.  Runs as the worker's superuser.
 */
static void
EsSealAll(void)
{
	EsRelations rels;
	StringInfoData sql;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, "sealing");
	if (EsLookupRelationsIfInstalled(&rels))
	{
		initStringInfo(&sql);
		appendStringInfo(&sql, "SELECT %s(name) FROM %s ORDER BY id",
						 quote_qualified_identifier(get_namespace_name(rels.namespace), "es_seal"),
						 EsQualifiedName(&rels, "es_applications"));
		SPI_connect();
		if (SPI_execute(sql.data, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "eventsourcing: could not seal");
		SPI_finish();
	}
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_activity(STATE_IDLE, NULL);
}

/* However the worker ends, the next append in this database starts another. */
static void
EsWorkerExit(int code, Datum arg)
{
	if (my_database == NULL)
		return;
	LWLockAcquire(es_worker_lock, LW_EXCLUSIVE);
	my_database->latch = NULL;
	my_database->worker_requested = false;
	LWLockRelease(es_worker_lock);
}

void
es_worker_main(Datum main_arg)
{
	Oid			dboid = DatumGetObjectId(main_arg);
	HASHCTL		info;
	HTAB	   *published;
	bool		found;
	TimestampTz idle_since = GetCurrentTimestamp();
	TimestampTz last_seal = GetCurrentTimestamp();
	TimestampTz last_round = 0;
	TimestampTz last_tick = 0;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);

	/* A hint: never make anyone wait for its flush. */
	SetConfigOption("synchronous_commit", "off", PGC_SUSET, PGC_S_OVERRIDE);

	LWLockAcquire(es_worker_lock, LW_EXCLUSIVE);
	my_database = hash_search(es_databases, &dboid, HASH_ENTER_NULL, &found);
	if (my_database != NULL)
	{
		if (!found)
			pg_atomic_init_u32(&my_database->wakeup_pending, 0);
		my_database->worker_requested = true;
		my_database->latch = MyLatch;
	}
	LWLockRelease(es_worker_lock);

	info.keysize = sizeof(int32);
	info.entrysize = sizeof(EsAppWatermark);
	published = hash_create("eventsourcing published watermarks", 64, &info,
							HASH_ELEM | HASH_BLOBS);

	before_shmem_exit(EsWorkerExit, (Datum) 0);

	for (;;)
	{
		bool		worked;
		bool		tick;
		long		since;

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 es_worker_naptime, PG_WAIT_EXTENSION);

		/*
		 * At most one round per eventsourcing.notify_interval: under load,
		 * one announcement covers many commits, and the worker's own
		 * transactions stay a small cost next to the writers'.
		 */
		since = TimestampDifferenceMilliseconds(last_round, GetCurrentTimestamp());
		if (since < es_notify_interval)
			(void) WaitLatch(NULL, WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 es_notify_interval - since, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		if (my_database != NULL)
			pg_atomic_write_u32(&my_database->wakeup_pending, 0);
		last_round = GetCurrentTimestamp();
		tick = TimestampDifferenceExceeds(last_tick, last_round, es_worker_naptime);
		if (tick)
			last_tick = last_round;
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		if (!EsPublishWatermarks(published, &worked, tick))
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
			EsWorkerExit(0, (Datum) 0);
			pg_memory_barrier();
			(void) EsPublishWatermarks(published, &worked, true);
			if (es_seal_interval > 0)
				EsSealAll();	/* leave nothing unsealed while idle */
			break;
		}
	}
	proc_exit(0);
}

/* The condition variable es_wait sleeps on for this database, or NULL. */
ConditionVariable *
EsNewEventsCV(void)
{
	EsDatabase *db = EsMyDatabase();

	return db ? &db->new_events : NULL;
}
