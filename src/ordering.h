/*
 * ordering.h
 *		The ordering protocol of the notification log (ordering.c).
 */
#ifndef ES_ORDERING_H
#define ES_ORDERING_H

#include "catalog.h"

#include "utils/relcache.h"

typedef struct EsCounter EsCounter;

extern int	es_max_applications;
extern int	es_max_applications_per_database;

extern Size EsOrderingShmemSize(void);
extern void EsOrderingShmemInit(void);
extern EsCounter *EsGetCounter(const EsRelations *rels, int32 app_id);
extern int64 EsBeginAllocation(EsCounter *counter, int count);
extern void EsEndAllocation(void);

/* Decides about missing ids for one log walk. */
typedef struct EsGapResolver
{
	const EsRelations *rels;
	Relation	events;
	Relation	pkey;
	int32		app_id;
	Snapshot	snapshot;		/* the reader's */
	struct IndexScanDescData *scan; /* SnapshotAny probe, made on first use */
	struct TupleTableSlot *slot;
	bool		counter_known;
	EsCounter  *counter;
	bool		watermark_known;
	int64		watermark;
} EsGapResolver;

extern void EsGapResolverInit(EsGapResolver *r, const EsRelations *rels,
							  Relation events, Relation pkey, int32 app_id,
							  Snapshot snapshot);
extern int64 EsGapPermanentUpTo(EsGapResolver *r, int64 from, int64 to);
extern int64 EsGapPendingLimit(EsGapResolver *r, int64 from, int64 to);
extern int64 EsGapSettle(EsGapResolver *r, int64 from);
extern bool EsXminMayStillCommit(TransactionId xmin, Snapshot snapshot);
extern void EsGapResolverEnd(EsGapResolver *r);
extern int64 EsReadAnnounced(const EsRelations *rels, int32 app_id);

/* For the worker. */
typedef struct EsCounterRef
{
	EsCounter  *counter;
	Oid			events_relid;
	int32		app_id;
} EsCounterRef;

extern int64 EsComputeWatermark(EsCounter *counter);
extern int	EsCountersOfDatabase(Oid dboid, EsCounterRef *refs, int max);
extern uint64 EsDatabaseIdsTaken(Oid dboid);
extern void EsForgetStaleCounters(Oid dboid, Oid keep_relid);
extern int64 EsCounterNext(EsCounter *counter);

#endif							/* ES_ORDERING_H */
