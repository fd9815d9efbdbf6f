/*
 * read.h
 *		The read path (read.c): the log walk that every reader of the
 *		notification log uses, the readable head, consumer groups.
 */
#ifndef ES_READ_H
#define ES_READ_H

#include "ordering.h"

/* A walk over the visible events of one application in id order. */
typedef struct EsLogScan
{
	EsRelations rels;
	EsLog		log;			/* the application's partition */
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
	int64	   *gap_from;		/* permanent gaps passed: [from, to) */
	int64	   *gap_to;
	int			ngaps;
	int			gaps_cap;
} EsLogScan;

extern void EsLogScanBegin(EsLogScan *s, const EsRelations *rels, const EsLog *log, int32 app_id,
						   int64 start, int64 stop, bool collect_gaps);
extern struct TupleTableSlot *EsLogScanNext(EsLogScan *s, int64 *id);
extern void EsLogScanEnd(EsLogScan *s);

extern int	EsCompareTextPtrs(const void *a, const void *b);
extern int64 EsReadableHead(const EsRelations *rels, int32 app_id, int64 after);

/* The state of the event in slot, as given (NULL if its aggregate was forgotten). */
struct EsApp;
extern Datum EsStateOf(const struct EsApp *app, struct TupleTableSlot *slot, bool *isnull);

#endif							/* ES_READ_H */
