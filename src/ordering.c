/*-------------------------------------------------------------------------
 *
 * ordering.c
 *		The ordering protocol of the notification log.
 *
 * THE PROBLEM
 *
 * Every application has a notification log: all its events numbered 1, 2,
 * 3, ...  Followers read it by id and remember the last id they processed.
 * If id 11 becomes visible before id 10 commits, a follower that has moved
 * past 10 never sees it.  The usual cures serialize every writer through its
 * commit (a table lock, a counter row, an advisory lock held to commit), and
 * then group commit is lost: one fsync per transaction for the whole server.
 *
 * THE PROTOCOL
 *
 * Writers are never serialized with each other (except writers of the same
 * aggregate, who must be).  Instead, readers decide which ids are safe to
 * return.  Three pieces of shared memory make that possible:
 *
 *	1. One counter per application (EsCounter, in a shared hash table keyed by
 *	   database, events table and application).  An append of n events takes
 *	   ids [first, first + n) with one atomic fetch-and-add.  No lock is held.
 *
 *	2. One slot per backend (EsSlot).  Before taking ids a writer publishes
 *	   "allocating" in its slot; right after, the first id it got.  Once its
 *	   heap and index tuples are inserted it clears the slot.  So at any
 *	   moment, every id that has been handed out is either covered by a slot
 *	   or has its tuple in the index (or its writer failed before inserting
 *	   it, and then it never will).
 *
 *	3. Nothing else.  The tuple itself tells the rest: its xmin says whether
 *	   the writing transaction is still in progress for the reader.
 *
 * A reader (es_select) scans the visible ids from `start` with its own MVCC
 * snapshot.  When it finds id h while expecting g < h, the missing ids
 * [g, h) are decided together (EsGapPermanentUpTo):
 *
 *	a. If a slot of the same application says "allocating", nothing can be
 *	   decided: stop at g.  Otherwise an id at or above the lowest first id
 *	   held in a slot of the application may still be being inserted: only
 *	   the ids below it are decided now.
 *	b. Then one SnapshotAny range scan of the index over the ids left.  A
 *	   tuple whose xmin is in progress for the reader's snapshot
 *	   (XidInMVCCSnapshot: running when the snapshot was taken, even if it
 *	   has committed since) may become visible later: stop at it.  Tuples
 *	   whose transaction aborted, and ids with no tuple at all, are
 *	   permanent gaps: skip them.
 *
 * The cost is one pass over the slots and the tuples that really exist in
 * the gap, never one probe per missing id, so even a gap of 2^62 ids (an
 * administrator's forged row) is decided at once.
 *
 * The page ends at the first id that is not safe.  A page therefore never
 * contains an id above one that could still become visible, which is the
 * ordering guarantee.  It holds for every isolation level, because the test
 * is made against the reader's own snapshot.
 *
 * WHY THE CHECK IN (a) IS ENOUGH
 *
 * Suppose the reader saw h visible and g < h is missing.  The writer of h
 * took its id after the writer of g took g (one counter), and committed
 * before the reader's snapshot, which was taken before the slots are read.
 * So when the reader reads the slots, g has been handed out, and its writer
 * either still shows it in its slot (caught by a), or has cleared the slot
 * after inserting the tuple (caught by b; the index insert and the buffer
 * locks of the lookup order the two), or failed without inserting (a
 * permanent gap: its transaction, or subtransaction, is aborting).  Slots
 * are written with memory barriers: "allocating" is visible before the
 * fetch-and-add (a full barrier), and the clear after the inserts.
 *
 * WHAT IT COSTS
 *
 * Writers: one fetch-and-add and three stores to their own cache line.
 * Readers: nothing while there is no gap; at a gap, one pass over the slots
 * and one index range scan.  A writer transaction that stays open
 * after appending holds readers back from its own first id onward, and from
 * nothing before it.
 *
 * CONFLICTS COST NO ID
 *
 * es_append locks each aggregate it writes (a transaction-level advisory
 * lock, so only writers of the same aggregate wait for each other) and checks
 * versions before it takes ids.  A refused append has taken none.  Ids are
 * lost only by appends that took them and then aborted.
 *
 * AFTER A RESTART
 *
 * The counter is set, on its first use, to one above the highest id of any
 * tuple in the index (SnapshotAny: committed, aborted or prepared) and above
 * the published watermark.  Every id a reader on the primary may have
 * returned, or skipped, lies below a committed id; every id a standby reader
 * may have skipped lies at or below the watermark.  So no id is ever handed
 * out twice to anything a reader could see, even after aborted tuples at the
 * end of the log were vacuumed away.
 *
 * HOT STANDBY
 *
 * A standby has no slots: rule (a) cannot be checked there.  See the
 * watermark section of README.md; on a standby a gap is only resolved below
 * the watermark that the primary publishes through WAL.
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
#include "access/transam.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "executor/tuptable.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "storage/bufmgr.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "utils/fmgroids.h"
#include "utils/hsearch.h"
#include "utils/snapmgr.h"

#include "ordering.h"
#include "utils/guc.h"
#include "utils/syscache.h"


/* A slot's pending value: idle, taking ids, or the first id being inserted. */
#define ES_SLOT_IDLE		UINT64CONST(0)
#define ES_SLOT_ALLOCATING	PG_UINT64_MAX

typedef struct EsCounterKey
{
	Oid			dboid;
	Oid			events_relid;	/* a new extension gets new counters */
	int32		app_id;
} EsCounterKey;

struct EsCounter
{
	EsCounterKey key;
	bool		initialized;	/* protected by the tranche's lock */
	pg_atomic_uint64 next;		/* the next id to hand out */
};

typedef struct EsSlot
{
	EsCounter  *volatile counter;	/* whose ids; set while idle */
	pg_atomic_uint64 pending;	/* ES_SLOT_* or the first id taken */
	char		pad[PG_CACHE_LINE_SIZE - sizeof(void *) - sizeof(pg_atomic_uint64)];
} EsSlot;

typedef struct EsOrderingShared
{
	LWLock	   *lock;			/* protects the counters hash table */
	int			nslots;
	EsSlot		slots[FLEXIBLE_ARRAY_MEMBER];
} EsOrderingShared;

int			es_max_applications = 1024;
int			es_max_applications_per_database = 256;

static EsOrderingShared *es_shared = NULL;

static int64 EsReadWatermark(const EsRelations *rels, int32 app_id);
static HTAB *es_counters = NULL;
static bool es_exit_callback_registered = false;

static int
EsSlotCount(void)
{
	return MaxBackends;
}

Size
EsOrderingShmemSize(void)
{
	Size		size;

	size = add_size(offsetof(EsOrderingShared, slots),
					mul_size(EsSlotCount(), sizeof(EsSlot)));
	size = add_size(size, hash_estimate_size(es_max_applications, sizeof(EsCounter)));
	return size;
}

void
EsOrderingShmemInit(void)
{
	bool		found;
	HASHCTL		info;
	int			nslots = EsSlotCount();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	es_shared = ShmemInitStruct("eventsourcing ordering",
								add_size(offsetof(EsOrderingShared, slots),
										 mul_size(nslots, sizeof(EsSlot))),
								&found);
	if (!found)
	{
		es_shared->lock = &(GetNamedLWLockTranche("eventsourcing"))->lock;
		es_shared->nslots = nslots;
		for (int i = 0; i < nslots; i++)
		{
			es_shared->slots[i].counter = NULL;
			pg_atomic_init_u64(&es_shared->slots[i].pending, ES_SLOT_IDLE);
		}
	}
	info.keysize = sizeof(EsCounterKey);
	info.entrysize = sizeof(EsCounter);
	es_counters = ShmemInitHash("eventsourcing counters",
								es_max_applications, es_max_applications,
								&info, HASH_ELEM | HASH_BLOBS);
	LWLockRelease(AddinShmemInitLock);
}

static EsSlot *
EsMySlot(void)
{
	int			n = MyProc->pgprocno;

	if (n < 0 || n >= es_shared->nslots)
		elog(ERROR, "eventsourcing: this process (pgprocno %d) cannot append", n);
	return &es_shared->slots[n];
}

static void
EsClearSlotAtExit(int code, Datum arg)
{
	if (es_shared != NULL && MyProc != NULL)
	{
		EsSlot	   *slot = EsMySlot();

		pg_write_barrier();
		pg_atomic_write_u64(&slot->pending, ES_SLOT_IDLE);
	}
}

static void
EsMakeKey(EsCounterKey *key, const EsRelations *rels, int32 app_id)
{
	memset(key, 0, sizeof(*key));
	key->dboid = MyDatabaseId;
	key->events_relid = rels->events;
	key->app_id = app_id;
}

/* The highest id of any tuple of the application, committed or not; 0 if none. */
static int64
EsHighestIdEver(const EsRelations *rels, int32 app_id)
{
	ScanKeyData key;
	Datum		id;
	EsLog		log = EsLogOf(rels, app_id);

	ScanKeyInit(&key, 1, BTEqualStrategyNumber, F_INT4EQ, Int32GetDatum(app_id));
	if (!EsLastEventAttr(&log, log.pkey, SnapshotAny, &key, 1,
						 Anum_es_notification_id, &id))
		return 0;
	return DatumGetInt64(id);
}

static EsCounter *
EsFindCounter(const EsCounterKey *key)
{
	EsCounter  *counter;

	LWLockAcquire(es_shared->lock, LW_SHARED);
	counter = hash_search(es_counters, key, HASH_FIND, NULL);
	if (counter != NULL && !counter->initialized)
		counter = NULL;
	LWLockRelease(es_shared->lock);
	return counter;
}

/* How many counters a database holds (caller holds the lock). */
static int
EsCountersInDatabase(Oid dboid)
{
	HASH_SEQ_STATUS status;
	EsCounter  *counter;
	int			n = 0;

	hash_seq_init(&status, es_counters);
	while ((counter = hash_seq_search(&status)) != NULL)
		if (counter->key.dboid == dboid)
			n++;
	return n;
}

/*
 * Forgets the counters of databases that no longer exist (nobody can be
 * appending with them), to make room.  Returns true if it freed any.
 */
static bool
EsForgetDroppedDatabases(void)
{
	HASH_SEQ_STATUS status;
	EsCounter  *counter;
	Oid		   *dbs = palloc(sizeof(Oid) * es_max_applications);
	int			ndbs = 0;
	bool		freed = false;

	LWLockAcquire(es_shared->lock, LW_SHARED);
	hash_seq_init(&status, es_counters);
	while ((counter = hash_seq_search(&status)) != NULL)
	{
		bool		seen = false;

		for (int i = 0; i < ndbs && !seen; i++)
			seen = dbs[i] == counter->key.dboid;
		if (!seen && ndbs < es_max_applications)
			dbs[ndbs++] = counter->key.dboid;
	}
	LWLockRelease(es_shared->lock);

	/* Catalog look-ups outside the LWLock. */
	for (int i = 0; i < ndbs; i++)
	{
		if (dbs[i] == MyDatabaseId ||
			SearchSysCacheExists1(DATABASEOID, ObjectIdGetDatum(dbs[i])))
			continue;
		EsForgetStaleCounters(dbs[i], InvalidOid);
		freed = true;
	}
	pfree(dbs);
	return freed;
}

/*
 * The id counter of an application, set up on first use since server start.
 * Errors out (with a hint) when the library was not preloaded, and when the
 * server's or this database's share of counters is used up.
 */
EsCounter *
EsGetCounter(const EsRelations *rels, int32 app_id)
{
	EsCounterKey key;
	EsCounter  *counter;
	int64		highest;
	bool		found;
	bool		retried = false;

	if (!EsSharedMemoryReady())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("es_append requires eventsourcing to be loaded via shared_preload_libraries"),
				 errdetail("The notification log's id counters and ordering slots live in shared memory."),
				 errhint("Add eventsourcing to shared_preload_libraries in postgresql.conf and restart the server.")));

	if (!es_exit_callback_registered)
	{
		before_shmem_exit(EsClearSlotAtExit, (Datum) 0);
		es_exit_callback_registered = true;
	}

	EsMakeKey(&key, rels, app_id);
	counter = EsFindCounter(&key);
	if (counter != NULL)
		return counter;

	/*
	 * Read the highest id before taking the lock (index scans must not run
	 * under an LWLock).  Nobody can take ids of this application until the
	 * counter is initialized, so the value cannot be stale; if another backend
	 * initializes first, its value wins and ours is dropped.
	 */
	highest = EsHighestIdEver(rels, app_id);

	/*
	 * Never hand out an id at or below a published watermark: standby readers
	 * have already decided about those (the tuples of aborted ids may have
	 * been vacuumed away since, and would otherwise be reused).
	 */
	highest = Max(highest, EsReadWatermark(rels, app_id));

retry:
	LWLockAcquire(es_shared->lock, LW_EXCLUSIVE);
	counter = hash_search(es_counters, &key, HASH_FIND, NULL);
	found = counter != NULL;
	if (!found)
	{
		/* One database cannot take every counter of the server. */
		if (EsCountersInDatabase(MyDatabaseId) >= es_max_applications_per_database)
		{
			LWLockRelease(es_shared->lock);
			ereport(ERROR,
					(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
					 errmsg("too many applications of this database have been appended to since the server started"),
					 errdetail("This database holds %d of the server's id counters.",
							   es_max_applications_per_database),
					 errhint("A superuser can raise eventsourcing.max_applications_per_database (currently %d) for this database, with ALTER DATABASE ... SET.",
							 es_max_applications_per_database)));
		}
		/* The shared hash table could grow past its size: the setting is the limit. */
		if (hash_get_num_entries(es_counters) < es_max_applications)
			counter = hash_search(es_counters, &key, HASH_ENTER_NULL, &found);
	}
	if (counter == NULL)
	{
		LWLockRelease(es_shared->lock);
		if (!retried && EsForgetDroppedDatabases())
		{
			retried = true;
			goto retry;
		}
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("too many applications have been appended to since the server started"),
				 errhint("Raise eventsourcing.max_applications (currently %d) and restart the server.",
						 es_max_applications)));
	}
	if (!found || !counter->initialized)
	{
		pg_atomic_init_u64(&counter->next, (uint64) highest + 1);
		counter->initialized = true;
	}
	LWLockRelease(es_shared->lock);
	return counter;
}

/*
 * Take `count` consecutive ids.  The caller must insert their tuples and then
 * call EsEndAllocation, also on error.  Refuses ids that would not fit in a
 * bigint: the counter is a uint64 and keeps room far above them.
 */
int64
EsBeginAllocation(EsCounter *counter, int count)
{
	EsSlot	   *slot = EsMySlot();
	uint64		first;

	Assert(pg_atomic_read_u64(&slot->pending) == ES_SLOT_IDLE);
	Assert(count > 0);
	slot->counter = counter;
	pg_write_barrier();
	pg_atomic_write_u64(&slot->pending, ES_SLOT_ALLOCATING);
	/* fetch-and-add is a full barrier: "allocating" is seen before the id */
	first = pg_atomic_fetch_add_u64(&counter->next, (uint64) count);
	if (first > (uint64) PG_INT64_MAX - (uint64) (count - 1))
	{
		/* Never written: the ids are gaps, as after an abort. */
		pg_atomic_write_u64(&slot->pending, ES_SLOT_IDLE);
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("the notification log of this application is full"),
				 errdetail("Its next id would be above %lld.", (long long) PG_INT64_MAX)));
	}
	pg_atomic_write_u64(&slot->pending, first);
	return (int64) first;
}

/* The tuples of the ids taken are in the index (or never will be). */
void
EsEndAllocation(void)
{
	EsSlot	   *slot = EsMySlot();

	pg_write_barrier();
	pg_atomic_write_u64(&slot->pending, ES_SLOT_IDLE);
}

/*
 * The lowest first id that writers of this counter are still inserting
 * (PG_UINT64_MAX if none); false if one of them is between "allocating" and
 * knowing its id, which could be any.
 */
static bool
EsLowestPending(EsCounter *counter, uint64 *lowest)
{
	*lowest = PG_UINT64_MAX;
	for (int i = 0; i < es_shared->nslots; i++)
	{
		EsSlot	   *slot = &es_shared->slots[i];
		uint64		pending = pg_atomic_read_u64(&slot->pending);

		if (pending == ES_SLOT_IDLE)
			continue;
		pg_read_barrier();
		if (slot->counter != counter)
			continue;
		if (pending == ES_SLOT_ALLOCATING)
			return false;
		*lowest = Min(*lowest, pending);
	}
	return true;
}

void
EsGapResolverInit(EsGapResolver *r, const EsRelations *rels, Relation events,
				  Relation pkey, int32 app_id, Snapshot snapshot)
{
	memset(r, 0, sizeof(*r));
	r->rels = rels;
	r->events = events;
	r->pkey = pkey;
	r->app_id = app_id;
	r->snapshot = snapshot;
}

void
EsGapResolverEnd(EsGapResolver *r)
{
	if (r->scan)
		index_endscan(r->scan);
	if (r->slot)
		ExecDropSingleTupleTableSlot(r->slot);
	r->scan = NULL;
	r->slot = NULL;
}

/*
 * Rule (b) for one tuple that the reader's snapshot does not see: may it
 * become visible later?  Yes if its inserting transaction is still in
 * progress for that snapshot (or is the reader's own); no if it is frozen or
 * ended before the snapshot (then it aborted: a permanent gap).  Also the
 * test of dcb.c's reads.
 */
bool
EsXminMayStillCommit(TransactionId xmin, Snapshot snapshot)
{
	return TransactionIdIsNormal(xmin) &&
		(TransactionIdIsCurrentTransactionId(xmin) || XidInMVCCSnapshot(xmin, snapshot));
}

/*
 * Rule (a) alone: the ids from `from` on below the returned limit (at most
 * `to`) are no longer being inserted by anyone; those at or above it may be.
 * Tagged-event readers (dcb.c) apply rule (b) to their own index.
 */
int64
EsGapPendingLimit(EsGapResolver *r, int64 from, int64 to)
{
	int64		limit = to;

	if (from >= to)
		return to;
	if (RecoveryInProgress())
	{
		/* No slots on a standby: only ids at or below the watermark are decidable. */
		if (!r->watermark_known)
		{
			r->watermark = EsReadWatermark(r->rels, r->app_id);
			r->watermark_known = true;
		}
		if (r->watermark < limit)
			limit = Max(r->watermark + 1, from);
	}
	else if (EsSharedMemoryReady())
	{
		if (!r->counter_known)
		{
			EsCounterKey key;

			EsMakeKey(&key, r->rels, r->app_id);
			r->counter = EsFindCounter(&key);
			r->counter_known = true;
		}
		/* No counter: nobody has taken ids of this application since start. */
		if (r->counter != NULL)
		{
			uint64		lowest;

			/* Rule (a): a writer may still be inserting ids from its first on. */
			if (!EsLowestPending(r->counter, &lowest))
				return from;
			if (lowest < (uint64) limit)
				limit = Max((int64) lowest, from);
		}
	}
	return limit;
}

/*
 * For readers that find ids through another index (dcb.c), instead of
 * stopping at rule (a): waits until every id handed out so far has its
 * tuples inserted or never will (a writer holds its slot only while it
 * inserts), and returns the limit below which that holds.  On a primary that
 * is PG_INT64_MAX: an id handed out later was handed out after the caller's
 * snapshot (taken before this call), so it is not visible in it, and every
 * visible id lies below.  On a standby, rule (a)'s watermark limit, at once
 * (only replay moves it).  Call after taking the snapshot and before reading
 * the other index, so that rule (b) there sees what the slots covered.
 */
int64
EsGapSettle(EsGapResolver *r, int64 from)
{
	int64		next;
	long		delay_us = 10;

	if (RecoveryInProgress() || !EsSharedMemoryReady())
		return EsGapPendingLimit(r, from, PG_INT64_MAX);
	if (!r->counter_known)
	{
		EsCounterKey key;

		EsMakeKey(&key, r->rels, r->app_id);
		r->counter = EsFindCounter(&key);
		r->counter_known = true;
	}
	if (r->counter == NULL)
		return PG_INT64_MAX;	/* no id handed out since the server started */
	next = EsCounterNext(r->counter);
	while (EsGapPendingLimit(r, from, next) < next)
	{
		CHECK_FOR_INTERRUPTS();
		pg_usleep(delay_us);
		delay_us = Min(delay_us * 2, 1000);
	}
	return PG_INT64_MAX;
}

/*
 * The missing ids [from, to) of the reader's snapshot: returns the first of
 * them that may still become visible (the reader must stop before it), or
 * `to` when all are permanent gaps.
 */
int64
EsGapPermanentUpTo(EsGapResolver *r, int64 from, int64 to)
{
	ScanKeyData keys[3];
	int64		limit;

	if (from >= to)
		return to;
	limit = EsGapPendingLimit(r, from, to);
	if (limit <= from)
		return from;

	/* Rule (b): what do the tuples in [from, limit) say? */
	if (r->scan == NULL)
	{
		r->scan = index_beginscan(r->events, r->pkey, SnapshotAny, 3, 0);
		r->slot = table_slot_create(r->events, NULL);
	}
	ScanKeyInit(&keys[0], 1, BTEqualStrategyNumber, F_INT4EQ, Int32GetDatum(r->app_id));
	ScanKeyInit(&keys[1], 2, BTGreaterEqualStrategyNumber, F_INT8GE, Int64GetDatum(from));
	ScanKeyInit(&keys[2], 2, BTLessStrategyNumber, F_INT8LT, Int64GetDatum(limit));
	index_rescan(r->scan, keys, 3, NULL, 0);
	while (index_getnext_slot(r->scan, ForwardScanDirection, r->slot))
	{
		BufferHeapTupleTableSlot *bslot = (BufferHeapTupleTableSlot *) r->slot;
		TransactionId xmin;
		bool		isnull;
		int64		id;

		CHECK_FOR_INTERRUPTS();
		LockBuffer(bslot->buffer, BUFFER_LOCK_SHARE);
		xmin = HeapTupleHeaderGetXmin(bslot->base.tuple->t_data);
		LockBuffer(bslot->buffer, BUFFER_LOCK_UNLOCK);

		if (EsXminMayStillCommit(xmin, r->snapshot))
		{
			id = DatumGetInt64(slot_getattr(r->slot, Anum_es_notification_id, &isnull));
			return id;
		}
		/* Ended before the snapshot and still invisible: aborted (or deleted). */
	}
	return limit;
}

/*
 * The watermark the primary published for an application: every id at or
 * below it had its tuple inserted before the watermark was written (or never
 * will).  Read with the latest snapshot; 0 when none was published.
 */
static int64
EsReadWatermarkColumn(const EsRelations *rels, int32 app_id, int attno)
{
	Relation	rel = table_open(rels->watermarks, AccessShareLock);
	Snapshot	snapshot = RegisterSnapshot(GetLatestSnapshot());
	SysScanDesc scan;
	ScanKeyData key;
	HeapTuple	tuple;
	int64		watermark = 0;

	ScanKeyInit(&key, 1, BTEqualStrategyNumber, F_INT4EQ, Int32GetDatum(app_id));
	scan = systable_beginscan(rel, rels->watermarks_pkey, true, snapshot, 1, &key);
	tuple = systable_getnext(scan);
	if (HeapTupleIsValid(tuple))
	{
		bool		isnull;
		Datum		d = heap_getattr(tuple, attno, RelationGetDescr(rel), &isnull);

		if (!isnull)
			watermark = DatumGetInt64(d);
	}
	systable_endscan(scan);
	UnregisterSnapshot(snapshot);
	table_close(rel, AccessShareLock);
	return watermark;
}

/*
 * THE WATERMARK (for hot standbys)
 *
 * The highest id W of a counter such that every id <= W has had its tuple
 * inserted, or never will: one below the first id still covered by a slot,
 * or one below the next id to hand out.  The counter's next id is read before
 * the slots, so every id below it has been handed out and its writer shows it
 * in its slot until its tuple is in.  A slot caught "allocating" may hold any
 * id: then there is no answer this time (returns -1).
 */
int64
EsComputeWatermark(EsCounter *counter)
{
	uint64		next = pg_atomic_read_u64(&counter->next);
	uint64		lowest;

	pg_memory_barrier();
	if (!EsLowestPending(counter, &lowest))
		return -1;
	/* A full log's counter is past the last bigint: clamp, never wrap. */
	return (int64) (Min(Min(next, lowest), (uint64) PG_INT64_MAX + 1) - 1);
}

/* The initialized counters of a database, for the worker. */
int
EsCountersOfDatabase(Oid dboid, EsCounterRef *refs, int max)
{
	HASH_SEQ_STATUS status;
	EsCounter  *counter;
	int			n = 0;

	LWLockAcquire(es_shared->lock, LW_SHARED);
	hash_seq_init(&status, es_counters);
	while ((counter = hash_seq_search(&status)) != NULL)
	{
		if (counter->key.dboid != dboid || !counter->initialized)
			continue;
		if (n >= max)
		{
			hash_seq_term(&status);
			break;
		}
		refs[n].counter = counter;
		refs[n].events_relid = counter->key.events_relid;
		refs[n].app_id = counter->key.app_id;
		n++;
	}
	LWLockRelease(es_shared->lock);
	return n;
}

/*
 * The sum of the next ids of a database's counters: it moves whenever a
 * writer takes ids (the worker's sign of activity, see wakeup.c).
 */
uint64
EsDatabaseIdsTaken(Oid dboid)
{
	HASH_SEQ_STATUS status;
	EsCounter  *counter;
	uint64		sum = 0;

	LWLockAcquire(es_shared->lock, LW_SHARED);
	hash_seq_init(&status, es_counters);
	while ((counter = hash_seq_search(&status)) != NULL)
		if (counter->key.dboid == dboid && counter->initialized)
			sum += pg_atomic_read_u64(&counter->next);
	LWLockRelease(es_shared->lock);
	return sum;
}

/*
 * Forgets the counters of a database that belong to another events table
 * than `keep_relid` (a dropped extension), or all of them when keep_relid is
 * InvalidOid.  Safe: the old table is gone, so nobody can be appending with
 * those counters, and idle slots that still point at a freed entry are never
 * looked at (a slot's counter is read only while its pending value is set).
 */
void
EsForgetStaleCounters(Oid dboid, Oid keep_relid)
{
	HASH_SEQ_STATUS status;
	EsCounter  *counter;

	LWLockAcquire(es_shared->lock, LW_EXCLUSIVE);
	hash_seq_init(&status, es_counters);
	while ((counter = hash_seq_search(&status)) != NULL)
	{
		if (counter->key.dboid == dboid && counter->key.events_relid != keep_relid)
			(void) hash_search(es_counters, &counter->key, HASH_REMOVE, NULL);
	}
	LWLockRelease(es_shared->lock);
}

/* The next id the counter will hand out (clamped to the last bigint). */
int64
EsCounterNext(EsCounter *counter)
{
	return (int64) Min(pg_atomic_read_u64(&counter->next), (uint64) PG_INT64_MAX);
}

static int64
EsReadWatermark(const EsRelations *rels, int32 app_id)
{
	return EsReadWatermarkColumn(rels, app_id, 2);
}

/* The last id the worker announced (it was readable then); 0 if none. */
int64
EsReadAnnounced(const EsRelations *rels, int32 app_id)
{
	return EsReadWatermarkColumn(rels, app_id, 3);
}

/* Settings of the ordering protocol. */
void
EsOrderingInit(bool preloading)
{
	DefineCustomIntVariable("eventsourcing.max_applications_per_database",
							"Maximum number of applications of one database that can be appended to since server start.",
							"Each uses one of the server's eventsourcing.max_applications id counters; a superuser sets it per database with ALTER DATABASE ... SET.",
							&es_max_applications_per_database,
							256, 1, 1000000,
							PGC_SUSET, 0,
							NULL, NULL, NULL);
	if (!preloading)
		return;
	DefineCustomIntVariable("eventsourcing.max_applications",
							"Maximum number of applications (per cluster) that can be appended to since server start.",
							"Each application that is appended to uses one id counter in shared memory.",
							&es_max_applications,
							1024, 16, 1000000,
							PGC_POSTMASTER, 0,
							NULL, NULL, NULL);
}
