/*
 * eventsourcing.h
 *		Declarations shared by the parts of the eventsourcing extension.
 *
 * Where things live:
 *	eventsourcing.c	module load, GUCs, shared-memory set-up
 *	catalog.c		the extension's tables, application look-up, input checks
 *	ordering.c		the ordering protocol: id allocation and gap resolution
 *	append.c		the append path (es_append)
 *	read.c			the read path (es_select, es_events, ...)
 */
#ifndef EVENTSOURCING_H
#define EVENTSOURCING_H

#include "postgres.h"

#include "access/skey.h"
#include "storage/condition_variable.h"
#include "utils/acl.h"
#include "utils/rel.h"
#include "utils/snapshot.h"
#include "utils/uuid.h"

/* Limits on user input, enforced with clear errors. */
#define ES_MAX_TOPIC_BYTES			1024
#define ES_MAX_APPLICATION_BYTES	255

/* Column numbers of es_stored_events (1-based, as in the table). */
#define Anum_es_application_id		1
#define Anum_es_notification_id		2
#define Anum_es_originator_id		3
#define Anum_es_originator_version	4
#define Anum_es_topic				5
#define Anum_es_state				6
#define Anum_es_recorded_at			7
#define Anum_es_event_hash			8
#define Natts_es_stored_events		8

/* SHA-256 */
#define ES_HASH_LEN					32

/* The OIDs of the extension's relations, looked up per call. */
typedef struct EsRelations
{
	Oid			namespace;		/* the extension's schema */
	Oid			applications;	/* es_applications */
	Oid			applications_name_idx;
	Oid			applications_pkey;
	Oid			events;			/* es_stored_events */
	Oid			events_pkey;	/* (application_id, notification_id) */
	Oid			events_version_idx; /* (application_id, originator_id,
									 * originator_version) */
	Oid			tracking;		/* es_tracking */
	Oid			watermarks;		/* es_watermarks */
	Oid			watermarks_pkey;
} EsRelations;

/* catalog.c */
extern void EsLookupRelations(EsRelations *rels);
extern int32 EsLookupApplication(const EsRelations *rels, text *name);
extern char *EsQualifiedName(const EsRelations *rels, const char *relname);
extern void EsCheckTablePrivilege(Oid relid, AclMode mode);
extern text *EsArgApplication(FunctionCallInfo fcinfo, int argno);
extern pg_uuid_t *EsArgUuid(FunctionCallInfo fcinfo, int argno, const char *name);
extern char *EsApplicationName(const EsRelations *rels, int32 app_id);
extern bool EsLastEventAttr(const EsRelations *rels, Oid index, Snapshot snapshot,
							ScanKey keys, int nkeys, int attno, Datum *value);

/* eventsourcing.c */
extern bool EsSharedMemoryReady(void);

/* ordering.c */
typedef struct EsCounter EsCounter;

extern Size EsOrderingShmemSize(void);
extern void EsOrderingShmemInit(void);
extern EsCounter *EsGetCounter(const EsRelations *rels, int32 app_id);
extern int64 EsBeginAllocation(EsCounter *counter, int count);
extern void EsEndAllocation(void);

/* Decides about missing ids for one es_select call. */
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
extern bool EsGapIsPermanent(EsGapResolver *r, int64 id);
extern void EsGapResolverEnd(EsGapResolver *r);
extern int64 EsReadWatermark(const EsRelations *rels, int32 app_id);
extern int64 EsReadAnnounced(const EsRelations *rels, int32 app_id);

typedef struct EsCounterRef
{
	EsCounter  *counter;
	Oid			events_relid;
	int32		app_id;
} EsCounterRef;

extern int64 EsComputeWatermark(EsCounter *counter);
extern int	EsCountersOfDatabase(Oid dboid, EsCounterRef *refs, int max);
extern void EsForgetStaleCounters(Oid dboid, Oid keep_relid);
extern int64 EsCounterNext(EsCounter *counter);

/* read.c: the log walk */
typedef struct EsLogScan
{
	EsRelations rels;
	int32		app_id;
	Relation	events;
	Relation	pkey;
	Snapshot	snapshot;
	ScanKeyData keys[3];
	struct IndexScanDescData *scan;
	struct TupleTableSlot *slot;
	EsGapResolver resolver;
	int64		expected;		/* the next id if there is no gap */
	bool		blocked;		/* stopped before an id that may appear */
	bool		collect_gaps;
	int64	   *gaps;			/* permanent gaps passed */
	int			ngaps;
	int			gaps_cap;
} EsLogScan;

extern void EsLogScanBegin(EsLogScan *s, const EsRelations *rels, int32 app_id,
						   int64 start, int64 stop, bool collect_gaps);
extern struct TupleTableSlot *EsLogScanNext(EsLogScan *s, int64 *id);
extern void EsLogScanEnd(EsLogScan *s);

/* integrity.c */
extern void EsHashEvent(const uint8 *prev, const text *application,
						const pg_uuid_t *originator_id, int64 version,
						const text *topic, const bytea *state, uint8 *out);
extern const uint8 es_genesis_hash[ES_HASH_LEN];
extern bool es_allow_rewrite;

/* follow.c */
extern int32 EsPartition(const pg_uuid_t *originator_id, int32 group_size);
extern void EsCheckGroup(bool has_member, int32 member, bool has_size, int32 size);

/* worker.c */
extern int	es_max_applications;
extern int	es_worker_naptime;
extern int	es_seal_interval;
extern int	es_notify_interval;
extern bool es_notify;
extern char *EsChannel(text *application, int32 app_id);
extern int64 EsReadableHead(const EsRelations *rels, int32 app_id, int64 after);
extern ConditionVariable *EsNewEventsCV(void);
extern Size EsWorkerShmemSize(void);
extern void EsWorkerShmemInit(void);
extern void EsNoteAppend(void);
extern bool EsLookupRelationsIfInstalled(EsRelations *rels);

#endif							/* EVENTSOURCING_H */
