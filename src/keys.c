/*
 * keys.c
 *		The master key and the aggregates' data keys.
 *
 * KEY HANDLING
 *
 * Every aggregate of an encrypting application has its own 256-bit data key,
 * made from pg_strong_random on its first encrypted event.  Data keys are
 * stored only wrapped: AES-256-GCM under the master key, with the
 * application id and the aggregate as associated data (a wrapped key cannot
 * be moved to another aggregate), in es_keys beside the id of the master key
 * that wrapped it (the first 8 bytes of a SHA-256 of the key: it tells a
 * wrong master key from a damaged row, and proves nothing about the key).
 *
 * The master key never travels in SQL, logs, dumps, WAL or the data
 * directory.  When the server starts, the postmaster runs the shell command
 * of eventsourcing.key_command (superusers only, restart to change); its
 * standard output is the key as 64 hexadecimal characters.  The key is kept
 * in shared memory, which every backend inherits, and no function returns
 * it.  eventsourcing.previous_key_command gives the key before a rotation:
 * data keys wrapped by it are still unwrapped, and es_rewrap_keys() wraps
 * them again under the current key (no event is rewritten).  Without a
 * master key, what needs one fails with 55000; everything else works.
 *
 * FORGETTING
 *
 * es_forget destroys an aggregate's wrapped data key (the row stays, with
 * forgotten_at set) and deletes its snapshots; the events stay, with their
 * ids, versions, topics, hashes and ciphertexts, so the log and every chain
 * still verify, but nothing can read their states any more.  An append to a
 * forgotten aggregate is refused.  Copies made before (backups, dumps,
 * replicas that have not replayed it yet) still hold the wrapped key: only
 * destroying the master key that wrapped it reaches those.
 *
 * Locks and caches: a data key is made under the aggregate's lock (the
 * append path holds it), so two writers never make two keys.  Each backend
 * caches unwrapped keys; forgetting and rewrapping a key send a relcache
 * invalidation of es_keys, which empties every backend's cache at commit.  Making a key sends none: it is not cached by its maker
 * until its transaction has committed, and "none" is cached only for the
 * forgotten-or-not probe of plain appends, which a new key does not change.
 * Forgetting takes the aggregate's lock too.
 */
#include "postgres.h"

#include <openssl/evp.h>
#include <stdio.h>
#include <sys/wait.h>

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/indexing.h"
#include "utils/timestamp.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "port/pg_bswap.h"
#include "storage/bufmgr.h"
#include "storage/shmem.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

#include "access.h"
#include "keys.h"

#define ES_KEY_ID_LEN	8
#define ES_KEY_CACHE_MAX 10000
#define ES_WRAPPED_LEN	(ES_NONCE_LEN + ES_KEY_LEN + ES_TAG_LEN)

typedef struct EsMasterKeys
{
	bool		loaded;
	uint8		key[ES_KEY_LEN];
	uint8		id[ES_KEY_ID_LEN];
	bool		previous_loaded;
	uint8		previous[ES_KEY_LEN];
	uint8		previous_id[ES_KEY_ID_LEN];
} EsMasterKeys;

char	   *es_key_command = NULL;
char	   *es_previous_key_command = NULL;

static EsMasterKeys *es_master = NULL;

/* ---------------------------------------------------------------------
 * AES-256-GCM
 * ---------------------------------------------------------------------
 */

/* The cipher, fetched once: OpenSSL 3 looks it up by name on every implicit use. */
static const EVP_CIPHER *
EsGcm(void)
{
	static const EVP_CIPHER *gcm = NULL;

	if (gcm == NULL)
	{
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
		gcm = EVP_CIPHER_fetch(NULL, "AES-256-GCM", NULL);
#else
		gcm = EVP_aes_256_gcm();
#endif
		if (gcm == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
					 errmsg("OpenSSL has no AES-256-GCM")));
	}
	return gcm;
}
/*
 * One cipher context per backend.  It keeps the key schedule of the last key
 * and direction, so that reading (or writing) many states of one aggregate
 * sets only a new nonce per state.
 */
static EVP_CIPHER_CTX *es_cipher_ctx = NULL;
static uint8 es_ctx_key[ES_KEY_LEN];
static int	es_ctx_direction = 0;	/* 0 none, 1 encrypt, 2 decrypt */

static EVP_CIPHER_CTX *
EsCipherContext(const uint8 *key, int direction)
{
	if (es_cipher_ctx == NULL)
	{
		es_cipher_ctx = EVP_CIPHER_CTX_new();
		if (es_cipher_ctx == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_OUT_OF_MEMORY),
					 errmsg("out of memory for a cipher context")));
	}
	if (es_ctx_direction != direction || memcmp(es_ctx_key, key, ES_KEY_LEN) != 0)
	{
		es_ctx_direction = 0;
		if (EVP_CipherInit_ex(es_cipher_ctx, EsGcm(), NULL, NULL, NULL, direction == 1) != 1 ||
			EVP_CIPHER_CTX_ctrl(es_cipher_ctx, EVP_CTRL_GCM_SET_IVLEN, ES_NONCE_LEN, NULL) != 1 ||
			EVP_CipherInit_ex(es_cipher_ctx, NULL, NULL, key, NULL, direction == 1) != 1)
			ereport(ERROR,
					(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
					 errmsg("AES-256-GCM set-up failed in OpenSSL")));
		memcpy(es_ctx_key, key, ES_KEY_LEN);
		es_ctx_direction = direction;
	}
	return es_cipher_ctx;
}

/* Wipes the key the context holds (a key was forgotten or replaced). */
static void
EsCipherContextForget(void)
{
	if (es_cipher_ctx != NULL)
		EVP_CIPHER_CTX_reset(es_cipher_ctx);
	explicit_bzero(es_ctx_key, ES_KEY_LEN);
	es_ctx_direction = 0;
}

void
EsSeal(const uint8 *key, const uint8 *nonce, const uint8 *aad, int aadlen,
	   const uint8 *plain, int len, uint8 *out, uint8 *tag)
{
	EVP_CIPHER_CTX *ctx = EsCipherContext(key, 1);
	int			n;

	if (EVP_EncryptInit_ex(ctx, NULL, NULL, NULL, nonce) != 1 ||
		(aadlen > 0 && EVP_EncryptUpdate(ctx, NULL, &n, aad, aadlen) != 1) ||
		(len > 0 && EVP_EncryptUpdate(ctx, out, &n, plain, len) != 1) ||
		EVP_EncryptFinal_ex(ctx, out + len, &n) != 1 ||
		EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, ES_TAG_LEN, tag) != 1)
		ereport(ERROR,
				(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
				 errmsg("AES-256-GCM encryption failed in OpenSSL")));
}

bool
EsOpen(const uint8 *key, const uint8 *nonce, const uint8 *aad, int aadlen,
	   const uint8 *cipher, int len, const uint8 *tag, uint8 *out)
{
	EVP_CIPHER_CTX *ctx = EsCipherContext(key, 2);
	int			n;

	if (EVP_DecryptInit_ex(ctx, NULL, NULL, NULL, nonce) != 1 ||
		(aadlen > 0 && EVP_DecryptUpdate(ctx, NULL, &n, aad, aadlen) != 1) ||
		(len > 0 && EVP_DecryptUpdate(ctx, out, &n, cipher, len) != 1) ||
		EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, ES_TAG_LEN, (void *) tag) != 1)
		ereport(ERROR,
				(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
				 errmsg("AES-256-GCM decryption failed in OpenSSL")));
	return EVP_DecryptFinal_ex(ctx, out + len, &n) == 1;
}

/* ---------------------------------------------------------------------
 * The master key: loaded by the postmaster at start
 * ---------------------------------------------------------------------
 */
static void
EsKeyId(const uint8 *key, uint8 *id)
{
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	uint8		digest[EVP_MAX_MD_SIZE];
	unsigned int len = 0;

	if (md == NULL ||
		EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1 ||
		EVP_DigestUpdate(md, "es-master-key-id", 16) != 1 ||
		EVP_DigestUpdate(md, key, ES_KEY_LEN) != 1 ||
		EVP_DigestFinal_ex(md, digest, &len) != 1)
		elog(FATAL, "eventsourcing: SHA-256 failed");
	EVP_MD_CTX_free(md);
	memcpy(id, digest, ES_KEY_ID_LEN);
}

static int
EsHexValue(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/*
 * Runs a key command and reads 64 hex characters (white space around them is
 * allowed).  Logs why not, never what it read.
 */
static bool
EsRunKeyCommand(const char *setting, const char *command, uint8 *key)
{
	FILE	   *f;
	char		buf[256];
	size_t		len;
	int			status;
	char	   *p;
	int			n = 0;
	bool		ok = true;

	if (command == NULL || command[0] == '\0')
		return false;
	fflush(NULL);
	f = popen(command, "r");
	if (f == NULL)
	{
		ereport(LOG,
				(errmsg("eventsourcing: could not run %s: %m", setting)));
		return false;
	}
	len = fread(buf, 1, sizeof(buf) - 1, f);
	while (fgetc(f) != EOF)		/* drain, so the command is not killed by SIGPIPE */
		ok = false;
	status = pclose(f);
	buf[len] = '\0';
	if (status != 0)
	{
		ereport(LOG,
				(errmsg("eventsourcing: %s failed (exit status %d); no master key", setting,
						WIFEXITED(status) ? WEXITSTATUS(status) : -1)));
		explicit_bzero(buf, sizeof(buf));
		return false;
	}
	for (p = buf; *p && ok; p++)
	{
		int			hi;
		int			lo;

		if (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')
			continue;
		hi = EsHexValue(p[0]);
		lo = p[1] ? EsHexValue(p[1]) : -1;
		if (hi < 0 || lo < 0 || n >= ES_KEY_LEN)
			ok = false;
		else
			key[n++] = (uint8) (hi * 16 + lo);
		p++;
	}
	explicit_bzero(buf, sizeof(buf));
	if (!ok || n != ES_KEY_LEN)
	{
		explicit_bzero(key, ES_KEY_LEN);
		ereport(LOG,
				(errmsg("eventsourcing: %s did not print a 256-bit key as 64 hexadecimal characters; no master key",
						setting)));
		return false;
	}
	return true;
}

Size
EsKeysShmemSize(void)
{
	return sizeof(EsMasterKeys);
}

/* In the postmaster (and again after a crash): runs the key commands. */
void
EsKeysShmemInit(void)
{
	bool		found;

	es_master = ShmemInitStruct("eventsourcing master keys", sizeof(EsMasterKeys), &found);
	if (found)
		return;
	memset(es_master, 0, sizeof(EsMasterKeys));
	if (EsRunKeyCommand("eventsourcing.key_command", es_key_command, es_master->key))
	{
		es_master->loaded = true;
		EsKeyId(es_master->key, es_master->id);
		ereport(LOG, (errmsg("eventsourcing: master key loaded")));
	}
	if (EsRunKeyCommand("eventsourcing.previous_key_command", es_previous_key_command,
						es_master->previous))
	{
		es_master->previous_loaded = true;
		EsKeyId(es_master->previous, es_master->previous_id);
		ereport(LOG, (errmsg("eventsourcing: previous master key loaded")));
	}
}

bool
EsMasterKeyLoaded(void)
{
	return es_master != NULL && es_master->loaded;
}

static void
EsRequireMasterKey(void)
{
	if (!EsMasterKeyLoaded())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the eventsourcing master key is not loaded"),
				 errdetail("Encrypted states cannot be written or read without it."),
				 errhint("Set eventsourcing.key_command to a command that prints the key and restart the server.")));
}

/* ---------------------------------------------------------------------
 * Data keys
 * ---------------------------------------------------------------------
 */
typedef struct EsKeyCacheKey
{
	int32		app_id;
	pg_uuid_t	originator_id;
} EsKeyCacheKey;

typedef struct EsKeyCacheEntry
{
	EsKeyCacheKey key;
	EsKeyStatus status;
	uint8		data_key[ES_KEY_LEN];
} EsKeyCacheEntry;

static HTAB *key_cache = NULL;
static Oid	key_cache_relid = InvalidOid;
static bool key_callback = false;

static void
EsKeyCacheReset(void)
{
	HASH_SEQ_STATUS status;
	EsKeyCacheEntry *e;

	EsCipherContextForget();
	if (key_cache == NULL)
		return;
	hash_seq_init(&status, key_cache);
	while ((e = hash_seq_search(&status)) != NULL)
		explicit_bzero(e->data_key, ES_KEY_LEN);
	hash_destroy(key_cache);
	key_cache = NULL;
}

static void
EsKeyRelcacheCallback(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == key_cache_relid)
		EsKeyCacheReset();
}

static void
EsWrapAad(int32 app_id, const pg_uuid_t *originator_id, uint8 *aad)
{
	uint32		be = pg_hton32((uint32) app_id);

	memcpy(aad, "es-data-key", 11);
	memcpy(aad + 11, &be, 4);
	memcpy(aad + 15, originator_id->data, UUID_LEN);
}

#define ES_WRAP_AAD_LEN (11 + 4 + UUID_LEN)

static void
EsUnwrap(int32 app_id, const pg_uuid_t *originator_id, bytea *key_id, bytea *wrapped, uint8 *out)
{
	const uint8 *master = NULL;
	uint8		aad[ES_WRAP_AAD_LEN];
	const uint8 *w;

	EsRequireMasterKey();
	if (VARSIZE_ANY_EXHDR(key_id) == ES_KEY_ID_LEN)
	{
		if (memcmp(VARDATA_ANY(key_id), es_master->id, ES_KEY_ID_LEN) == 0)
			master = es_master->key;
		else if (es_master->previous_loaded &&
				 memcmp(VARDATA_ANY(key_id), es_master->previous_id, ES_KEY_ID_LEN) == 0)
			master = es_master->previous;
	}
	if (master == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the data key of aggregate %s was wrapped by another master key than the one loaded",
						EsUuidOut(originator_id)),
				 errhint("Load the master key it was made with (eventsourcing.key_command, or eventsourcing.previous_key_command while rotating).")));
	if (VARSIZE_ANY_EXHDR(wrapped) != ES_WRAPPED_LEN)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
				 errmsg("the wrapped data key of aggregate %s is damaged", EsUuidOut(originator_id))));
	w = (const uint8 *) VARDATA_ANY(wrapped);
	EsWrapAad(app_id, originator_id, aad);
	if (!EsOpen(master, w, aad, ES_WRAP_AAD_LEN, w + ES_NONCE_LEN, ES_KEY_LEN,
				w + ES_NONCE_LEN + ES_KEY_LEN, out))
	{
		explicit_bzero(out, ES_KEY_LEN);
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
				 errmsg("the wrapped data key of aggregate %s does not authenticate", EsUuidOut(originator_id)),
				 errdetail("It was changed, or belongs to another aggregate.")));
	}
}

static bytea *
EsWrap(int32 app_id, const pg_uuid_t *originator_id, const uint8 *data_key)
{
	bytea	   *wrapped = palloc(VARHDRSZ + ES_WRAPPED_LEN);
	uint8	   *w = (uint8 *) VARDATA(wrapped);
	uint8		aad[ES_WRAP_AAD_LEN];

	EsRequireMasterKey();
	SET_VARSIZE(wrapped, VARHDRSZ + ES_WRAPPED_LEN);
	if (!pg_strong_random(w, ES_NONCE_LEN))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not generate a random nonce")));
	EsWrapAad(app_id, originator_id, aad);
	EsSeal(es_master->key, w, aad, ES_WRAP_AAD_LEN, data_key, ES_KEY_LEN,
		   w + ES_NONCE_LEN, w + ES_NONCE_LEN + ES_KEY_LEN);
	return wrapped;
}

static bytea *
EsCurrentKeyId(void)
{
	bytea	   *id = palloc(VARHDRSZ + ES_KEY_ID_LEN);

	SET_VARSIZE(id, VARHDRSZ + ES_KEY_ID_LEN);
	memcpy(VARDATA(id), es_master->id, ES_KEY_ID_LEN);
	return id;
}

/*
 * Reads the es_keys row of an aggregate (latest snapshot), and unwraps the
 * key into *out if `out` is given; *own says the row was made by this
 * transaction, which may still roll back.
 */
static EsKeyStatus
EsReadKeyRow(const EsRelations *rels, int32 app_id, const pg_uuid_t *originator_id, uint8 *out,
			 bool *own)
{
	Relation	rel = table_open(rels->keys, AccessShareLock);
	Snapshot	snapshot = RegisterSnapshot(GetLatestSnapshot());
	ScanKeyData keys[2];
	SysScanDesc scan;
	HeapTuple	tuple;
	EsKeyStatus status = ES_KEY_NONE;

	ScanKeyInit(&keys[0], 1, BTEqualStrategyNumber, F_INT4EQ, Int32GetDatum(app_id));
	ScanKeyInit(&keys[1], 2, BTEqualStrategyNumber, F_UUID_EQ, UUIDPGetDatum(originator_id));
	scan = systable_beginscan(rel, rels->keys_pkey, true, snapshot, 2, keys);
	tuple = systable_getnext(scan);
	*own = false;
	if (HeapTupleIsValid(tuple))
	{
		bool		id_null;
		bool		wrapped_null;
		Datum		id = heap_getattr(tuple, 3, RelationGetDescr(rel), &id_null);
		Datum		wrapped = heap_getattr(tuple, 4, RelationGetDescr(rel), &wrapped_null);

		*own = TransactionIdIsCurrentTransactionId(HeapTupleHeaderGetXmin(tuple->t_data));

		if (id_null || wrapped_null)
			status = ES_KEY_FORGOTTEN;
		else
		{
			if (out != NULL)
				EsUnwrap(app_id, originator_id, DatumGetByteaPP(id), DatumGetByteaPP(wrapped), out);
			status = ES_KEY_FOUND;
		}
	}
	systable_endscan(scan);
	UnregisterSnapshot(snapshot);
	table_close(rel, AccessShareLock);
	return status;
}

/* True while es_keys has no page at all (the size is cached by the storage manager). */
static bool
EsKeysTableEmpty(const EsRelations *rels)
{
	Relation	rel = table_open(rels->keys, AccessShareLock);
	bool		empty = RelationGetNumberOfBlocks(rel) == 0;

	table_close(rel, AccessShareLock);
	return empty;
}

/*
 * Makes the aggregate's data key (the caller holds the aggregate's lock) and
 * records it wrapped.  Straight into the heap and its index, as events are:
 * a new aggregate per event is the common case.
 */
static void
EsMakeDataKey(const EsRelations *rels, int32 app_id, const pg_uuid_t *originator_id, uint8 *out)
{
	Relation	rel;
	Datum		values[6];
	bool		nulls[6] = {false, false, false, false, false, true};
	HeapTuple	tuple;

	EsRequireMasterKey();
	if (!pg_strong_random(out, ES_KEY_LEN))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not generate a random data key")));
	values[0] = Int32GetDatum(app_id);
	values[1] = UUIDPGetDatum(originator_id);
	values[2] = PointerGetDatum(EsCurrentKeyId());
	values[3] = PointerGetDatum(EsWrap(app_id, originator_id, out));
	values[4] = TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());
	values[5] = (Datum) 0;
	rel = table_open(rels->keys, RowExclusiveLock);
	tuple = heap_form_tuple(RelationGetDescr(rel), values, nulls);
	CatalogTupleInsert(rel, tuple);
	heap_freetuple(tuple);
	table_close(rel, NoLock);
	CommandCounterIncrement();

	/*
	 * No invalidation: the new key is not cached here (this transaction may
	 * roll back), and a backend that cached "no key" does so only for probes,
	 * for which "none" and "found" mean the same (not forgotten).
	 */
}

/*
 * The data key of an aggregate in *key: found, made (ES_KEY_CREATE, under
 * the aggregate's lock), none, or forgotten.  "None" is cached only for
 * probes: a key made since is read again by the others.
 */
EsKeyStatus
EsDataKey(const EsRelations *rels, int32 app_id, const pg_uuid_t *originator_id,
		  EsKeyMode mode, uint8 *key)
{
	EsKeyCacheKey ck;
	EsKeyCacheEntry *entry;
	EsKeyStatus status;
	bool		found;
	bool		own = false;

	if (!key_callback)
	{
		CacheRegisterRelcacheCallback(EsKeyRelcacheCallback, (Datum) 0);
		key_callback = true;
	}
	if (key_cache_relid != rels->keys)
	{
		EsKeyCacheReset();
		key_cache_relid = rels->keys;
	}
	if (key_cache == NULL)
	{
		HASHCTL		info;

		info.keysize = sizeof(EsKeyCacheKey);
		info.entrysize = sizeof(EsKeyCacheEntry);
		info.hcxt = CacheMemoryContext;
		key_cache = hash_create("eventsourcing data keys", 64, &info,
								HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	memset(&ck, 0, sizeof(ck));
	ck.app_id = app_id;
	ck.originator_id = *originator_id;
	entry = hash_search(key_cache, &ck, HASH_FIND, NULL);
	if (entry != NULL && (entry->status != ES_KEY_NONE || mode == ES_KEY_PROBE))
	{
		if (key)
			memcpy(key, entry->data_key, ES_KEY_LEN);
		return entry->status;
	}

	/*
	 * An aggregate new in this call has no key row yet: keys are recorded
	 * only with the first encrypted event, in its transaction.  A probe needs
	 * no master key: the row alone says whether it is forgotten.
	 */
	if (mode == ES_KEY_CREATE_NEW)
	{
		EsMakeDataKey(rels, app_id, originator_id, key);
		return ES_KEY_FOUND;
	}
	if (mode == ES_KEY_PROBE && EsKeysTableEmpty(rels))
		return ES_KEY_NONE;		/* no aggregate of this database has ever had a key */
	status = EsReadKeyRow(rels, app_id, originator_id, key, &own);
	/* A key this transaction made is known only once it commits. */
	if (own)
		return status;
	if (status == ES_KEY_NONE && mode == ES_KEY_CREATE)
	{
		EsMakeDataKey(rels, app_id, originator_id, key);
		return ES_KEY_FOUND;	/* not cached: this transaction may roll back */
	}
	if (status == ES_KEY_FOUND && key == NULL)
		return status;			/* a probe without the key in hand: nothing to cache */
	/* Bounded: a writer of millions of aggregates starts over now and then. */
	if (key_cache != NULL && hash_get_num_entries(key_cache) >= ES_KEY_CACHE_MAX)
		EsKeyCacheReset();
	if (key_cache != NULL)
	{
		entry = hash_search(key_cache, &ck, HASH_ENTER, &found);
		entry->status = status;
		if (status == ES_KEY_FOUND)
			memcpy(entry->data_key, key, ES_KEY_LEN);
		else
			memset(entry->data_key, 0, ES_KEY_LEN);
	}
	return status;
}

/*
 * es_forget(application text, originator_id uuid) RETURNS void
 *
 * Destroys the aggregate's data key and deletes its snapshots.  Needs admin.
 */
PG_FUNCTION_INFO_V1(es_forget);
Datum
es_forget(PG_FUNCTION_ARGS)
{
	pg_uuid_t  *originator_id = EsArgUuid(fcinfo, 1, "originator_id");
	EsApp		app;
	EsSpi		spi;
	StringInfoData sql;
	Oid			argtypes[2] = {INT4OID, UUIDOID};
	Datum		values[2];
	uint64		destroyed;

	EsOpenApp(&app, fcinfo, 0, ES_PRIV_ADMIN);
	PreventCommandIfReadOnly("es_forget()");
	EsLockAggregate(app.id, originator_id);
	values[0] = Int32GetDatum(app.id);
	values[1] = UUIDPGetDatum(originator_id);
	EsSpiBegin(&spi, &app.rels);
	initStringInfo(&sql);
	appendStringInfo(&sql,
					 "UPDATE %s SET master_key_id = NULL, wrapped_key = NULL, forgotten_at = pg_catalog.now() "
					 "WHERE application_id OPERATOR(pg_catalog.=) $1 AND originator_id OPERATOR(pg_catalog.=) $2",
					 EsQualifiedName(&app.rels, "es_keys"));
	if (SPI_execute_with_args(sql.data, 2, argtypes, values, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "eventsourcing: could not forget the data key");
	destroyed = SPI_processed;
	if (destroyed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("aggregate %s of application \"%s\" has no data key to destroy",
						EsUuidOut(originator_id), app.cname),
				 errdetail("Its events are not encrypted: forgetting needs encryption (es_configure) from its first event on.")));
	resetStringInfo(&sql);
	appendStringInfo(&sql,
					 "DELETE FROM %s WHERE application_id OPERATOR(pg_catalog.=) $1 "
					 "AND originator_id OPERATOR(pg_catalog.=) $2",
					 EsQualifiedName(&app.rels, "es_snapshots"));
	if (SPI_execute_with_args(sql.data, 2, argtypes, values, NULL, false, 0) != SPI_OK_DELETE)
		elog(ERROR, "eventsourcing: could not delete the snapshots");
	resetStringInfo(&sql);
	/* Events stored in clear (form 0, or form 1 without the encrypted flag) stay readable. */
	appendStringInfo(&sql,
					 "SELECT pg_catalog.count(*) FROM %s WHERE application_id OPERATOR(pg_catalog.=) $1 "
					 "AND originator_id OPERATOR(pg_catalog.=) $2 AND (stored_form OPERATOR(pg_catalog.=) 0 "
					 "OR (pg_catalog.get_byte(state, 1) OPERATOR(pg_catalog.&) 2) OPERATOR(pg_catalog.=) 0)",
					 EsQualifiedName(&app.rels, "es_stored_events"));
	if (SPI_execute_with_args(sql.data, 2, argtypes, values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "eventsourcing: could not count the aggregate's events");
	{
		bool		isnull;
		int64		in_clear = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));

		if (in_clear > 0)
			ereport(WARNING,
					(errmsg(INT64_FORMAT " events of aggregate %s of application \"%s\" are not encrypted and were not forgotten",
							in_clear, EsUuidOut(originator_id), app.cname),
					 errdetail("They were recorded before the application encrypted; only its encrypted states and its snapshots are gone.")));
	}
	EsSpiEnd(&spi);
	CacheInvalidateRelcacheByRelid(app.rels.keys);
	PG_RETURN_VOID();
}

/*
 * es_rewrap_keys() RETURNS bigint
 *
 * Wraps again, under the current master key, every data key of this
 * database wrapped by the previous one; returns how many.  The extension's
 * owner only.
 */
PG_FUNCTION_INFO_V1(es_rewrap_keys);
Datum
es_rewrap_keys(PG_FUNCTION_ARGS)
{
	EsRelations rels;
	EsSpi		spi;
	StringInfoData sql;
	Oid			argtypes[1] = {BYTEAOID};
	Datum		values[1];
	SPITupleTable *rows;
	uint64		n;
	bytea	   *previous_id;

	EsLookupRelations(&rels);
	if (!has_privs_of_role(GetUserId(), rels.owner))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to rewrap data keys"),
				 errhint("Only the extension's owner can.")));
	PreventCommandIfReadOnly("es_rewrap_keys()");
	EsRequireMasterKey();
	if (!es_master->previous_loaded)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("no previous master key is loaded"),
				 errhint("Set eventsourcing.previous_key_command to the old key's command and restart the server.")));
	previous_id = palloc(VARHDRSZ + ES_KEY_ID_LEN);
	SET_VARSIZE(previous_id, VARHDRSZ + ES_KEY_ID_LEN);
	memcpy(VARDATA(previous_id), es_master->previous_id, ES_KEY_ID_LEN);
	values[0] = PointerGetDatum(previous_id);

	EsSpiBegin(&spi, &rels);
	initStringInfo(&sql);
	appendStringInfo(&sql,
					 "SELECT application_id, originator_id, master_key_id, wrapped_key FROM %s "
					 "WHERE master_key_id OPERATOR(pg_catalog.=) $1 FOR UPDATE",
					 EsQualifiedName(&rels, "es_keys"));
	if (SPI_execute_with_args(sql.data, 1, argtypes, values, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "eventsourcing: could not read es_keys");
	rows = SPI_tuptable;
	n = SPI_processed;
	resetStringInfo(&sql);
	appendStringInfo(&sql,
					 "UPDATE %s SET master_key_id = $3, wrapped_key = $4 "
					 "WHERE application_id OPERATOR(pg_catalog.=) $1 AND originator_id OPERATOR(pg_catalog.=) $2",
					 EsQualifiedName(&rels, "es_keys"));
	for (uint64 i = 0; i < n; i++)
	{
		bool		isnull;
		int32		app_id = DatumGetInt32(SPI_getbinval(rows->vals[i], rows->tupdesc, 1, &isnull));
		pg_uuid_t  *oid = DatumGetUUIDP(SPI_getbinval(rows->vals[i], rows->tupdesc, 2, &isnull));
		bytea	   *key_id = DatumGetByteaPP(SPI_getbinval(rows->vals[i], rows->tupdesc, 3, &isnull));
		bytea	   *wrapped = DatumGetByteaPP(SPI_getbinval(rows->vals[i], rows->tupdesc, 4, &isnull));
		uint8		data_key[ES_KEY_LEN];
		Oid			utypes[4] = {INT4OID, UUIDOID, BYTEAOID, BYTEAOID};
		Datum		uvalues[4];

		CHECK_FOR_INTERRUPTS();
		EsUnwrap(app_id, oid, key_id, wrapped, data_key);
		uvalues[0] = Int32GetDatum(app_id);
		uvalues[1] = UUIDPGetDatum(oid);
		uvalues[2] = PointerGetDatum(EsCurrentKeyId());
		uvalues[3] = PointerGetDatum(EsWrap(app_id, oid, data_key));
		explicit_bzero(data_key, ES_KEY_LEN);
		if (SPI_execute_with_args(sql.data, 4, utypes, uvalues, NULL, false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "eventsourcing: could not rewrap a data key");
	}
	EsSpiEnd(&spi);
	CacheInvalidateRelcacheByRelid(rels.keys);
	PG_RETURN_INT64((int64) n);
}

/* Settings of the key module (the commands run at server start). */
void
EsKeysInit(bool preloading)
{
	if (!preloading)
		return;
	DefineCustomStringVariable("eventsourcing.key_command",
							   "Shell command whose output is the master key (64 hexadecimal characters), run at server start.",
							   "Its output is kept in shared memory only; see es_rewrap_keys for rotation.",
							   &es_key_command,
							   "",
							   PGC_POSTMASTER, GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);
	DefineCustomStringVariable("eventsourcing.previous_key_command",
							   "Shell command whose output is the previous master key, while rotating.",
							   "Data keys wrapped by it are still read; es_rewrap_keys wraps them under the current key.",
							   &es_previous_key_command,
							   "",
							   PGC_POSTMASTER, GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);
}
