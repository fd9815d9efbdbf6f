/*
 * keys.h
 *		The master key and the aggregates' data keys (keys.c).
 */
#ifndef ES_KEYS_H
#define ES_KEYS_H

#include "catalog.h"

#define ES_KEY_LEN		32		/* AES-256 */
#define ES_NONCE_LEN	12		/* GCM's 96-bit nonce */
#define ES_TAG_LEN		16

extern char *es_key_command;
extern char *es_previous_key_command;

extern Size EsKeysShmemSize(void);
extern void EsKeysShmemInit(void);
extern bool EsMasterKeyLoaded(void);

typedef enum EsKeyStatus
{
	ES_KEY_FOUND,
	ES_KEY_NONE,				/* the aggregate has no data key */
	ES_KEY_FORGOTTEN			/* es_forget destroyed it */
} EsKeyStatus;

/* What the caller wants of a data key. */
typedef enum EsKeyMode
{
	ES_KEY_READ,				/* the key, to decrypt */
	ES_KEY_CREATE,				/* the key, made if missing (under the aggregate's lock) */
	ES_KEY_CREATE_NEW,			/* the key of an aggregate without events: made */
	ES_KEY_PROBE				/* only whether the aggregate was forgotten */
} EsKeyMode;

extern EsKeyStatus EsDataKey(const EsRelations *rels, int32 app_id,
							 const pg_uuid_t *originator_id, EsKeyMode mode,
							 uint8 *key);

/* AES-256-GCM with OpenSSL's EVP interface; false when the tag does not match. */
extern void EsSeal(const uint8 *key, const uint8 *nonce, const uint8 *aad, int aadlen,
				   const uint8 *plain, int len, uint8 *out, uint8 *tag);
extern bool EsOpen(const uint8 *key, const uint8 *nonce, const uint8 *aad, int aadlen,
				   const uint8 *cipher, int len, const uint8 *tag, uint8 *out);

#endif							/* ES_KEYS_H */
