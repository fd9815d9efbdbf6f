/*
 * integrity.h
 *		Hash chains, seals and the append-only guard (integrity.c).
 */
#ifndef ES_INTEGRITY_H
#define ES_INTEGRITY_H

#include "catalog.h"

extern const uint8 es_genesis_hash[ES_HASH_LEN];
extern bool es_allow_rewrite;

extern void EsHashEvent(const uint8 *prev, const text *application,
						const pg_uuid_t *originator_id, int64 version,
						const text *topic, const bytea *state, int16 form, Datum tags,
						uint8 *out);
extern bool EsSealApplication(const EsRelations *rels, int32 app_id, text *application,
							  Datum *seal_row);

#endif							/* ES_INTEGRITY_H */
