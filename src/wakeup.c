/*
 * wakeup.c
 *		Writers' end-of-transaction wake-up, the per-database state shared
 *		with the worker, and the condition variable es_wait sleeps on.
 *
 * Writers never NOTIFY (PostgreSQL's NOTIFY takes a cluster-wide lock held
 * through commit).  At the end of a transaction that appended, committed or
 * aborted (an abort can make later ids readable), the writer broadcasts the
 * database's condition variable (es_wait sleepers wake); the worker announces
 * what has become readable.  The first append in a database, and the first
 * after the worker went idle, starts the worker.
 *
 * WHO WAKES THE WORKER
 *
 * Setting another process's latch is a signal, and a signal sent from the
 * commit path costs the writer more than the rest of its append (measured:
 * 13% of single-client throughput with synchronous_commit on, at one signal
 * per 15 commits).  So while appends keep coming, the worker polls: it looks
 * at the counters every eventsourcing.notify_interval and nobody signals it.
 * Only when it has seen no new id for a while does it go to sleep, and then
 * it says so in worker_sleeping; the first commit that finds the flag set
 * clears it and sets the latch.  No wake-up is lost: the worker sets the
 * flag, then reads the counters (EsWorkerMaySleep); a writer takes its ids
 * (an atomic fetch-and-add), then reads the flag at commit.  With full
 * barriers on both sides, either the worker sees the new ids and stays
 * awake, or the writer sees the flag and wakes it.
 *
 * Locks: es_worker_lock (an LWLock of the "eventsourcing" tranche) protects
 * the hash table of databases and each entry's worker_requested and latch;
 * worker_sleeping is an atomic; the condition variable has its own spinlock.
 */
#include "postgres.h"

#include "access/xact.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "postmaster/bgworker.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/hsearch.h"

#include "ordering.h"
#include "wakeup.h"

#define ES_MAX_DATABASES 256

typedef struct EsDatabase
{
	Oid			dboid;			/* key */
	bool		worker_requested;	/* protected by es_worker_lock */
	Latch	   *latch;			/* the worker's, or NULL */
	pg_atomic_uint32 worker_sleeping;	/* the next commit sets the latch */
	ConditionVariable new_events;	/* es_wait sleeps here */
} EsDatabase;

bool		es_notify = true;

static HTAB *es_databases = NULL;
static LWLock *es_worker_lock = NULL;
static EsDatabase *my_database = NULL;	/* cached per backend */
static bool appended_in_xact = false;
static bool xact_callback_registered = false;

Size
EsWakeupShmemSize(void)
{
	return hash_estimate_size(ES_MAX_DATABASES, sizeof(EsDatabase));
}

void
EsWakeupShmemInit(void)
{
	HASHCTL		info;

	info.keysize = sizeof(Oid);
	info.entrysize = sizeof(EsDatabase);
	es_databases = ShmemInitHash("eventsourcing databases",
								 ES_MAX_DATABASES, ES_MAX_DATABASES,
								 &info, HASH_ELEM | HASH_BLOBS);
	es_worker_lock = &(GetNamedLWLockTranche("eventsourcing"))[1].lock;
}

/* The entry of a database (made if missing; NULL if there are too many). */
static EsDatabase *
EsDatabaseEntry(Oid dboid)
{
	EsDatabase *db;
	bool		found;

	LWLockAcquire(es_worker_lock, LW_EXCLUSIVE);
	db = hash_search(es_databases, &dboid, HASH_ENTER_NULL, &found);
	if (db != NULL && !found)
	{
		db->worker_requested = false;
		db->latch = NULL;
		pg_atomic_init_u32(&db->worker_sleeping, 0);
		ConditionVariableInit(&db->new_events);
	}
	LWLockRelease(es_worker_lock);
	return db;
}

static EsDatabase *
EsMyDatabase(void)
{
	if (my_database == NULL && es_databases != NULL)
		my_database = EsDatabaseEntry(MyDatabaseId);
	return my_database;
}

static void
EsStartWorker(EsDatabase *db)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	/* Never restarted by the postmaster: EsWorkerDetach lets the next append do it. */
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	strlcpy(worker.bgw_library_name, "eventsourcing", BGW_MAXLEN);
	strlcpy(worker.bgw_function_name, "es_worker_main", BGW_MAXLEN);
	snprintf(worker.bgw_name, BGW_MAXLEN, "eventsourcing worker for database %u", db->dboid);
	strlcpy(worker.bgw_type, "eventsourcing worker", BGW_MAXLEN);
	worker.bgw_main_arg = ObjectIdGetDatum(db->dboid);
	worker.bgw_notify_pid = 0;
	if (!RegisterDynamicBackgroundWorker(&worker, NULL))
	{
		LWLockAcquire(es_worker_lock, LW_EXCLUSIVE);
		db->worker_requested = false;
		LWLockRelease(es_worker_lock);
		ereport(WARNING,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("could not start the eventsourcing worker for this database"),
				 errdetail("Without it, readers on hot standbys cannot pass gaps in the notification log."),
				 errhint("Raise max_worker_processes.")));
	}
}

/* Starts the database's worker unless one is running or requested. */
static void
EsEnsureWorker(EsDatabase *db)
{
	bool		start = false;

	if (db->worker_requested)
		return;
	LWLockAcquire(es_worker_lock, LW_EXCLUSIVE);
	if (!db->worker_requested)
	{
		db->worker_requested = true;
		start = true;
	}
	LWLockRelease(es_worker_lock);
	if (start)
		EsStartWorker(db);
}

/*
 * At the end of a transaction that appended, wake es_wait sleepers and the
 * worker.  After commit, so the events are visible; never inside the
 * transaction, so no writer waits for anyone.
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
	/* A polling worker needs nobody; a sleeping one, the first commit. */
	if (es_notify && pg_atomic_read_u32(&db->worker_sleeping) != 0 &&
		pg_atomic_exchange_u32(&db->worker_sleeping, 0) != 0)
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

/* The condition variable es_wait sleeps on for this database, or NULL. */
ConditionVariable *
EsNewEventsCV(void)
{
	EsDatabase *db = EsMyDatabase();

	return db ? &db->new_events : NULL;
}

/* The worker of `dboid` starts: writers now set `latch`. */
bool
EsWorkerAttach(Oid dboid, Latch *latch)
{
	EsDatabase *db = EsDatabaseEntry(dboid);

	if (db == NULL)
		return false;
	LWLockAcquire(es_worker_lock, LW_EXCLUSIVE);
	db->worker_requested = true;
	db->latch = latch;
	LWLockRelease(es_worker_lock);
	my_database = db;
	return true;
}

/*
 * The worker would sleep until a commit wakes it.  It raises the flag, then
 * reads the sum of its database's counters: if that moved since `seen` (ids
 * taken by a writer that may have read the flag before it was raised), it
 * withdraws the flag and must not sleep.
 */
bool
EsWorkerMaySleep(uint64 seen)
{
	if (my_database == NULL)
		return true;
	pg_atomic_exchange_u32(&my_database->worker_sleeping, 1);	/* full barrier */
	if (EsDatabaseIdsTaken(MyDatabaseId) == seen)
		return true;
	pg_atomic_write_u32(&my_database->worker_sleeping, 0);
	return false;
}

/* The worker is awake: commits need not wake it. */
void
EsWorkerAwake(void)
{
	if (my_database != NULL)
		pg_atomic_write_u32(&my_database->worker_sleeping, 0);
}

/* However the worker ends, the next append in its database starts another. */
void
EsWorkerDetach(void)
{
	if (my_database == NULL)
		return;
	LWLockAcquire(es_worker_lock, LW_EXCLUSIVE);
	my_database->latch = NULL;
	my_database->worker_requested = false;
	LWLockRelease(es_worker_lock);
}
