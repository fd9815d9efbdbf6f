/*
 * codec.h
 *		How a state is stored: as given, or compressed and/or encrypted
 *		behind a small header (codec.c).
 */
#ifndef ES_CODEC_H
#define ES_CODEC_H

#include "catalog.h"
#include "utils/jsonb.h"

/* es_stored_events.stored_form */
#define ES_FORM_RAW			0	/* the bytes as given (every 0.1.0 event) */
#define ES_FORM_ENCODED		1	/* header, then compressed and/or encrypted bytes */

/* What a state belongs to: binds a ciphertext to its event (or snapshot). */
typedef struct EsStateIdentity
{
	const EsRelations *rels;
	int32		app_id;
	const text *application;
	const pg_uuid_t *originator_id;
	int64		version;
	bool		snapshot;		/* a snapshot's state, not an event's */
	bool		first;			/* the aggregate's first event (it has no key yet) */
	bool		new_aggregate;	/* it had no events before this call (so no key, never forgotten) */
} EsStateIdentity;

extern bytea *EsEncodeState(const EsStateIdentity *id, bytea *plain, bool compress,
							bool encrypt, int32 dictionary, int16 *form);
extern bytea *EsDecodeState(const EsStateIdentity *id, bytea *stored, int16 form);

/* JSON states: a jsonb's text as state bytes; whether bytes are text at all. */
extern bytea *EsStateFromJsonb(Jsonb *json);
extern bool EsStateIsText(bytea *state);

#endif							/* ES_CODEC_H */
