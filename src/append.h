/*
 * append.h
 *		The append path (append.c): what one event to record looks like, and
 *		the insertion that takes ids (shared with tagged events, dcb.c).
 */
#ifndef ES_APPEND_H
#define ES_APPEND_H

#include "access.h"

#include "utils/relcache.h"

typedef struct EsEventIn
{
	pg_uuid_t	originator_id;
	int64		version;
	Datum		topic;
	Datum		state;			/* as given */
	Datum		stored;			/* as stored (codec.c) */
	int16		form;
	int			index;			/* position in the call, 0-based */
	int			subscript;		/* the array subscript the caller wrote */
	uint8		hash[ES_HASH_LEN];	/* chained to the aggregate's previous event */
	Datum		tags;			/* text[] of a tagged event; 0 for aggregate events */
} EsEventIn;

/* Called with the ids while they are still covered by the writer's slot. */
typedef void (*EsAlsoInsert) (void *arg, const int64 *ids);

extern void EsInsertEvents(const EsRelations *rels, Relation events, int32 app_id,
						   EsEventIn *in, int n, int64 *ids, EsAlsoInsert also, void *arg);

#endif							/* ES_APPEND_H */
