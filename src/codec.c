/*
 * codec.c
 *		How a state is stored: as given, or behind a header, compressed
 *		(zlib) and/or encrypted (AES-256-GCM under the aggregate's data key).
 *
 * THE STORED FORM
 *
 * es_stored_events.stored_form says which: 0, the bytes as given (every
 * event of 0.1.0, and those of applications without compression and
 * encryption); 1, a header and then the payload:
 *
 *	byte 0		format version (1)
 *	byte 1		flags: 1 compressed (zlib), 2 encrypted (AES-256-GCM),
 *				4 compressed with the application's preset dictionary
 *	bytes 2-5	the length of the state as given (uint32, big-endian)
 *	bytes 6-9	the dictionary's id (flag 4 only)
 *	then 12		the nonce (encrypted only): 96 random bits per state
 *	then		the payload: the state, compressed if flag 1, and encrypted if
 *				flag 2, followed by the 16-byte GCM tag
 *
 * Compression comes first and is kept only when it makes the state smaller.
 * A preset dictionary (es_set_compression_dictionary: bytes typical of the
 * application's events, given by its admin) makes small events much smaller;
 * every dictionary an application had is kept, so older events still read.
 * A dictionary is stored in clear: it must not hold personal data, since
 * forgetting an aggregate cannot reach it.
 * The associated data of the encryption is the header and the state's
 * identity: the application's name, the aggregate, the version, and whether
 * it is an event or a snapshot.  So a ciphertext cannot be moved to another
 * event, and a changed byte of the header, nonce, ciphertext or tag fails to
 * authenticate: the read is refused with 22P03 naming the event, never
 * returned as garbage.  Hashes cover the stored bytes and the form
 * (integrity.c), so verification needs no key and survives forgetting.
 */
#include "postgres.h"

#include <zlib.h>

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/pg_type.h"
#include "utils/fmgroids.h"
#include "utils/hsearch.h"
#include "utils/rel.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "port/pg_bswap.h"
#include "utils/builtins.h"
#include "mb/pg_wchar.h"
#include "utils/inval.h"
#include "utils/memutils.h"

#include "access.h"
#include "codec.h"
#include "keys.h"

#define ES_CODEC_VERSION		1
#define ES_FLAG_COMPRESSED		1
#define ES_FLAG_ENCRYPTED		2
#define ES_FLAG_DICTIONARY		4
#define ES_HEADER_PLAIN_LEN		6
#define ES_DICT_ID_LEN			4
#define ES_NONCE_OFFSET(flags)	(ES_HEADER_PLAIN_LEN + (((flags) & ES_FLAG_DICTIONARY) ? ES_DICT_ID_LEN : 0))
#define ES_HEADER_LEN(flags)	(ES_NONCE_OFFSET(flags) + (((flags) & ES_FLAG_ENCRYPTED) ? ES_NONCE_LEN : 0))
#define ES_MAX_DICTIONARY		32768	/* zlib's window */
/* An input state is at most 1 GB; a larger claimed length is damage. */
#define ES_MAX_STATE_LEN		((uint32) MaxAllocSize - VARHDRSZ)

static char *
EsIdentityText(const EsStateIdentity *id)
{
	return psprintf("%s of version " INT64_FORMAT " of aggregate %s of application \"%s\"",
					id->snapshot ? "the snapshot" : "the state", id->version,
					EsUuidOut(id->originator_id), text_to_cstring(id->application));
}

/* The associated data: the header, then what the state belongs to. */
static uint8 *
EsAad(const EsStateIdentity *id, const uint8 *header, int hlen, int *len)
{
	int			alen = VARSIZE_ANY_EXHDR(id->application);
	uint8	   *aad = palloc(hlen + 12 + 4 + alen + UUID_LEN + 8);
	uint8	   *p = aad;
	uint32		be32 = pg_hton32((uint32) alen);
	uint64		be64 = pg_hton64((uint64) id->version);

	memcpy(p, header, hlen);
	p += hlen;
	memcpy(p, id->snapshot ? "es-snapshot1" : "es-event-st1", 12);
	p += 12;
	memcpy(p, &be32, 4);
	p += 4;
	memcpy(p, VARDATA_ANY(id->application), alen);
	p += alen;
	memcpy(p, id->originator_id->data, UUID_LEN);
	p += UUID_LEN;
	memcpy(p, &be64, 8);
	p += 8;
	*len = p - aad;
	return aad;
}

/*
 * A preset dictionary, cached per backend: committed dictionaries never
 * change, and a new extension has a new table (part of the key).  One this
 * transaction recorded is not cached: it may still roll back, and its id be
 * given to another dictionary.
 */
typedef struct EsDictKey
{
	Oid			relid;			/* es_dictionaries */
	int32		app_id;
	int32		dictionary_id;
} EsDictKey;

typedef struct EsDictEntry
{
	EsDictKey	key;
	int			len;
	uint8	   *bytes;			/* in CacheMemoryContext */
} EsDictEntry;

static EsDictEntry *
EsDictionary(const EsStateIdentity *id, int32 dictionary_id)
{
	static HTAB *dicts = NULL;
	EsDictKey	key;
	EsDictEntry *entry;
	bool		found;
	Relation	rel;
	ScanKeyData keys[2];
	SysScanDesc scan;
	HeapTuple	tuple;
	bytea	   *bytes = NULL;
	bool		own = false;

	if (dicts == NULL)
	{
		HASHCTL		info;

		info.keysize = sizeof(EsDictKey);
		info.entrysize = sizeof(EsDictEntry);
		info.hcxt = CacheMemoryContext;
		dicts = hash_create("eventsourcing dictionaries", 8, &info, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	memset(&key, 0, sizeof(key));
	key.relid = id->rels->dictionaries;
	key.app_id = id->app_id;
	key.dictionary_id = dictionary_id;
	entry = hash_search(dicts, &key, HASH_FIND, NULL);
	if (entry != NULL)
		return entry;

	rel = table_open(id->rels->dictionaries, AccessShareLock);
	ScanKeyInit(&keys[0], 1, BTEqualStrategyNumber, F_INT4EQ, Int32GetDatum(id->app_id));
	ScanKeyInit(&keys[1], 2, BTEqualStrategyNumber, F_INT4EQ, Int32GetDatum(dictionary_id));
	scan = systable_beginscan(rel, id->rels->dictionaries_pkey, true, NULL, 2, keys);
	tuple = systable_getnext(scan);
	if (HeapTupleIsValid(tuple))
	{
		bool		isnull;
		Datum		d = heap_getattr(tuple, 3, RelationGetDescr(rel), &isnull);

		if (!isnull)
			bytes = DatumGetByteaPCopy(d);
		own = TransactionIdIsCurrentTransactionId(HeapTupleHeaderGetXmin(tuple->t_data));
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	if (bytes == NULL || VARSIZE_ANY_EXHDR(bytes) > ES_MAX_DICTIONARY)
		return NULL;
	entry = own ? palloc(sizeof(EsDictEntry)) : hash_search(dicts, &key, HASH_ENTER, &found);
	entry->len = VARSIZE_ANY_EXHDR(bytes);
	entry->bytes = MemoryContextAlloc(own ? CurrentMemoryContext : CacheMemoryContext, Max(entry->len, 1));
	memcpy(entry->bytes, VARDATA_ANY(bytes), entry->len);
	return entry;
}

/*
 * zlib, with deflate streams kept per backend and reset for each state:
 * setting a stream up allocates about 256 kB, which would cost more than
 * compressing a small event.  Small states use fixed Huffman codes: about
 * 10% larger than with codes of their own, but decoding them builds no
 * tables, which halves the cost of reading a small event (measured on
 * ~250-byte JSON events).
 */
#define ES_FIXED_CODES_BELOW	1024

static uint8 *
EsCompress(const uint8 *plain, uint32 len, const EsDictEntry *dict, uint32 *outlen)
{
	static z_stream streams[2];
	static bool ready[2] = {false, false};
	int			which = len < ES_FIXED_CODES_BELOW ? 1 : 0;
	z_stream   *zs = &streams[which];
	uLong		bound;
	uint8	   *out;

	if (!ready[which])
	{
		memset(zs, 0, sizeof(*zs));
		/*
		 * For small states a small hash table (memLevel 2: 512 entries):
		 * deflateReset clears it for every state, and zlib's default 32k
		 * entries cost more to clear than a small event costs to compress.
		 */
		if (deflateInit2(zs, Z_DEFAULT_COMPRESSION, Z_DEFLATED, 15, which ? 2 : 8,
						 which ? Z_FIXED : Z_DEFAULT_STRATEGY) != Z_OK)
			ereport(ERROR,
					(errcode(ERRCODE_OUT_OF_MEMORY),
					 errmsg("zlib could not set up compression")));
		ready[which] = true;
	}
	else if (deflateReset(zs) != Z_OK)
		ereport(ERROR,
				(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
				 errmsg("zlib could not reset its compression stream")));
	if (dict != NULL && deflateSetDictionary(zs, dict->bytes, dict->len) != Z_OK)
		ereport(ERROR,
				(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
				 errmsg("zlib could not use the preset dictionary")));
	bound = deflateBound(zs, len);
	out = palloc(bound);
	zs->next_in = (Bytef *) plain;
	zs->avail_in = len;
	zs->next_out = out;
	zs->avail_out = bound;
	if (deflate(zs, Z_FINISH) != Z_STREAM_END)
		ereport(ERROR,
				(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
				 errmsg("zlib could not compress a state")));
	*outlen = (uint32) zs->total_out;
	return out;
}

/* The inflating side: one stream per backend too; false when it does not fit. */
static bool
EsDecompress(const uint8 *in, uint32 inlen, const EsDictEntry *dict, uint8 *out, uint32 outlen)
{
	static z_stream zs;
	static bool zs_ready = false;
	int			rc;

	if (!zs_ready)
	{
		memset(&zs, 0, sizeof(zs));
		if (inflateInit(&zs) != Z_OK)
			ereport(ERROR,
					(errcode(ERRCODE_OUT_OF_MEMORY),
					 errmsg("zlib could not set up decompression")));
		zs_ready = true;
	}
	else if (inflateReset(&zs) != Z_OK)
		ereport(ERROR,
				(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
				 errmsg("zlib could not reset its decompression stream")));
	zs.next_in = (Bytef *) in;
	zs.avail_in = inlen;
	zs.next_out = out;
	zs.avail_out = outlen;
	rc = inflate(&zs, Z_FINISH);
	if (rc == Z_NEED_DICT)
	{
		if (dict == NULL || inflateSetDictionary(&zs, dict->bytes, dict->len) != Z_OK)
			return false;
		rc = inflate(&zs, Z_FINISH);
	}
	return rc == Z_STREAM_END && zs.total_out == outlen && zs.avail_in == 0;
}

static void
EsRequireKey(EsKeyStatus status, const EsStateIdentity *id)
{
	if (status == ES_KEY_FORGOTTEN)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("aggregate %s of application \"%s\" was forgotten",
						EsUuidOut(id->originator_id), text_to_cstring(id->application)),
				 errdetail("Its data key was destroyed with es_forget; no new event can be recorded for it.")));
	if (status != ES_KEY_FOUND)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
				 errmsg("%s is encrypted, but the aggregate has no data key", EsIdentityText(id))));
}

/*
 * The stored form of a state; *form says which.  With neither compression
 * nor encryption (or compression that does not pay), the state as given.
 */
bytea *
EsEncodeState(const EsStateIdentity *id, bytea *plain, bool compress, bool encrypt,
			  int32 dictionary, int16 *form)
{
	uint32		len = VARSIZE_ANY_EXHDR(plain);
	const uint8 *payload = (const uint8 *) VARDATA_ANY(plain);
	uint32		paylen = len;
	uint8		flags = 0;
	uint8		header[ES_HEADER_PLAIN_LEN + ES_DICT_ID_LEN + ES_NONCE_LEN];
	uint32		be = pg_hton32(len);
	int			hlen;
	bytea	   *out;
	uint8	   *o;

	if (compress && len > 0)
	{
		uint32		clen;
		const EsDictEntry *dict = dictionary > 0 ? EsDictionary(id, dictionary) : NULL;
		uint8	   *c = EsCompress(payload, len, dict, &clen);

		if (clen + ES_HEADER_PLAIN_LEN + (dict ? ES_DICT_ID_LEN : 0) < len)
		{
			payload = c;
			paylen = clen;
			flags |= ES_FLAG_COMPRESSED;
			if (dict)
			{
				uint32		dbe = pg_hton32((uint32) dictionary);

				flags |= ES_FLAG_DICTIONARY;
				memcpy(header + ES_HEADER_PLAIN_LEN, &dbe, ES_DICT_ID_LEN);
			}
		}
	}
	if (encrypt)
		flags |= ES_FLAG_ENCRYPTED;
	else if (!id->snapshot && !id->new_aggregate &&
			 EsDataKey(id->rels, id->app_id, id->originator_id, ES_KEY_PROBE, NULL) == ES_KEY_FORGOTTEN)
		EsRequireKey(ES_KEY_FORGOTTEN, id);	/* refused, also in clear */
	if (flags == 0)
	{
		*form = ES_FORM_RAW;
		return plain;
	}

	header[0] = ES_CODEC_VERSION;
	header[1] = flags;
	memcpy(header + 2, &be, 4);
	hlen = ES_HEADER_LEN(flags);
	out = palloc(VARHDRSZ + hlen + paylen + ((flags & ES_FLAG_ENCRYPTED) ? ES_TAG_LEN : 0));
	SET_VARSIZE(out, VARHDRSZ + hlen + paylen + ((flags & ES_FLAG_ENCRYPTED) ? ES_TAG_LEN : 0));
	o = (uint8 *) VARDATA(out);
	if (flags & ES_FLAG_ENCRYPTED)
	{
		uint8		key[ES_KEY_LEN];
		uint8	   *aad;
		int			aadlen;

		EsRequireKey(EsDataKey(id->rels, id->app_id, id->originator_id,
							   id->first ? ES_KEY_CREATE_NEW : ES_KEY_CREATE, key), id);
		if (!pg_strong_random(header + ES_NONCE_OFFSET(flags), ES_NONCE_LEN))
			ereport(ERROR,
					(errcode(ERRCODE_INTERNAL_ERROR),
					 errmsg("could not generate a random nonce")));
		aad = EsAad(id, header, hlen, &aadlen);
		memcpy(o, header, hlen);
		EsSeal(key, header + ES_NONCE_OFFSET(flags), aad, aadlen, payload, paylen,
			   o + hlen, o + hlen + paylen);
		explicit_bzero(key, ES_KEY_LEN);
	}
	else
	{
		memcpy(o, header, hlen);
		memcpy(o + hlen, payload, paylen);
	}
	*form = ES_FORM_ENCODED;
	return out;
}

static void
EsDamaged(const EsStateIdentity *id, const char *what)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
			 errmsg("%s cannot be read: %s", EsIdentityText(id), what),
			 errhint("Run es_verify() on the aggregate: the stored state was changed.")));
}

/*
 * The state as given, from its stored form; NULL when the aggregate was
 * forgotten.  Refuses (22P03) a stored state that does not authenticate or
 * decode, and (55000) an encrypted one without the master key.
 */
bytea *
EsDecodeState(const EsStateIdentity *id, bytea *stored, int16 form)
{
	const uint8 *s = (const uint8 *) VARDATA_ANY(stored);
	uint32		slen = VARSIZE_ANY_EXHDR(stored);
	uint8		flags;
	uint32		len;
	int			hlen;
	const uint8 *payload;
	uint32		paylen;
	uint8	   *opened = NULL;
	bytea	   *out;

	if (form == ES_FORM_RAW)
		return stored;
	if (form != ES_FORM_ENCODED)
		EsDamaged(id, "unknown stored form");
	if (slen < ES_HEADER_PLAIN_LEN || s[0] != ES_CODEC_VERSION ||
		(s[1] & ~(ES_FLAG_COMPRESSED | ES_FLAG_ENCRYPTED | ES_FLAG_DICTIONARY)) != 0 ||
		((s[1] & ES_FLAG_DICTIONARY) && !(s[1] & ES_FLAG_COMPRESSED)))
		EsDamaged(id, "bad header");
	flags = s[1];
	memcpy(&len, s + 2, 4);
	len = pg_ntoh32(len);
	hlen = ES_HEADER_LEN(flags);
	if (len > ES_MAX_STATE_LEN ||
		slen < hlen + ((flags & ES_FLAG_ENCRYPTED) ? ES_TAG_LEN : 0))
		EsDamaged(id, "bad header");
	payload = s + hlen;
	paylen = slen - hlen;

	if (flags & ES_FLAG_ENCRYPTED)
	{
		uint8		key[ES_KEY_LEN];
		EsKeyStatus status;
		uint8	   *aad;
		int			aadlen;

		status = EsDataKey(id->rels, id->app_id, id->originator_id, ES_KEY_READ, key);
		if (status == ES_KEY_FORGOTTEN)
			return NULL;
		if (status != ES_KEY_FOUND)
			EsDamaged(id, "it is encrypted, but the aggregate has no data key");
		paylen -= ES_TAG_LEN;
		aad = EsAad(id, s, hlen, &aadlen);
		opened = palloc(Max(paylen, 1) + 32);
		if (!EsOpen(key, s + ES_NONCE_OFFSET(flags), aad, aadlen, payload, paylen,
					payload + paylen, opened))
		{
			explicit_bzero(key, ES_KEY_LEN);
			EsDamaged(id, "it does not authenticate (changed ciphertext, nonce, tag or header, or moved from another event)");
		}
		explicit_bzero(key, ES_KEY_LEN);
		payload = opened;
	}

	out = palloc(VARHDRSZ + len);
	SET_VARSIZE(out, VARHDRSZ + len);
	if (flags & ES_FLAG_COMPRESSED)
	{
		const EsDictEntry *dict = NULL;

		if (flags & ES_FLAG_DICTIONARY)
		{
			uint32		dbe;

			memcpy(&dbe, s + ES_HEADER_PLAIN_LEN, ES_DICT_ID_LEN);
			dict = EsDictionary(id, (int32) pg_ntoh32(dbe));
			if (dict == NULL)
				EsDamaged(id, "its compression dictionary is missing");
		}
		if (!EsDecompress(payload, paylen, dict, (uint8 *) VARDATA(out), len))
			EsDamaged(id, "it does not decompress");
	}
	else
	{
		if (paylen != len)
			EsDamaged(id, "its length does not match its header");
		memcpy(VARDATA(out), payload, len);
	}
	if (opened)
		pfree(opened);
	return out;
}

/*
 * es_configure(application text, compression boolean, encryption boolean)
 *	RETURNS void
 *
 * Sets how the application's new events are stored (NULL leaves a setting as
 * it is); recorded events keep their form.  Needs admin; encryption needs the
 * master key.
 */
PG_FUNCTION_INFO_V1(es_configure);
Datum
es_configure(PG_FUNCTION_ARGS)
{
	EsApp		app;
	EsSpi		spi;
	StringInfoData sql;
	Oid			argtypes[3] = {INT4OID, BOOLOID, BOOLOID};
	Datum		values[3];
	char		nulls[3] = {' ', ' ', ' '};

	EsOpenApp(&app, fcinfo, 0, ES_PRIV_ADMIN);
	PreventCommandIfReadOnly("es_configure()");
	if (!PG_ARGISNULL(2) && PG_GETARG_BOOL(2) && !EsMasterKeyLoaded())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the eventsourcing master key is not loaded"),
				 errdetail("Encryption needs it to wrap the aggregates' data keys."),
				 errhint("Set eventsourcing.key_command to a command that prints the key and restart the server.")));
	values[0] = Int32GetDatum(app.id);
	for (int i = 1; i < 3; i++)
	{
		values[i] = PG_ARGISNULL(i) ? (Datum) 0 : PG_GETARG_DATUM(i);
		nulls[i] = PG_ARGISNULL(i) ? 'n' : ' ';
	}
	EsSpiBegin(&spi, &app.rels);
	initStringInfo(&sql);
	appendStringInfo(&sql,
					 "UPDATE %s SET compression = COALESCE($2, compression), encryption = COALESCE($3, encryption) "
					 "WHERE id OPERATOR(pg_catalog.=) $1",
					 EsQualifiedName(&app.rels, "es_applications"));
	if (SPI_execute_with_args(sql.data, 3, argtypes, values, nulls, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "eventsourcing: could not update es_applications");
	EsSpiEnd(&spi);
	/* Every backend's application cache (and its settings) forgets, at commit. */
	CacheInvalidateRelcacheByRelid(app.rels.applications);
	PG_RETURN_VOID();
}

/*
 * es_set_compression_dictionary(application text, dictionary bytea)
 *	RETURNS integer
 *
 * Makes `dictionary` (at most 32 kB: bytes typical of the application's
 * events, such as their field names and common values) the preset
 * dictionary of its new compressed events, and returns its id; NULL stops
 * using one.  Earlier dictionaries are kept for the events compressed with
 * them.  Needs admin.  Stored in clear: never put personal data in it.
 */
PG_FUNCTION_INFO_V1(es_set_compression_dictionary);
Datum
es_set_compression_dictionary(PG_FUNCTION_ARGS)
{
	EsApp		app;
	EsSpi		spi;
	StringInfoData sql;
	Oid			argtypes[2] = {INT4OID, BYTEAOID};
	Datum		values[2];
	int32		dictionary_id = 0;
	bool		isnull;

	if (!PG_ARGISNULL(1))
	{
		Size		len = VARSIZE_ANY_EXHDR(PG_GETARG_BYTEA_PP(1));

		if (len == 0 || len > ES_MAX_DICTIONARY)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("dictionary must be 1 to %d bytes", ES_MAX_DICTIONARY),
					 errdetail("The given dictionary has %zu bytes.", len)));
	}
	EsOpenApp(&app, fcinfo, 0, ES_PRIV_ADMIN);
	PreventCommandIfReadOnly("es_set_compression_dictionary()");
	values[0] = Int32GetDatum(app.id);
	EsSpiBegin(&spi, &app.rels);
	initStringInfo(&sql);
	if (!PG_ARGISNULL(1))
	{
		values[1] = PG_GETARG_DATUM(1);
		appendStringInfo(&sql,
						 "INSERT INTO %s (application_id, dictionary_id, dictionary) "
						 "SELECT $1, COALESCE(pg_catalog.max(dictionary_id), 0) OPERATOR(pg_catalog.+) 1, $2 FROM %s "
						 "WHERE application_id OPERATOR(pg_catalog.=) $1 RETURNING dictionary_id",
						 EsQualifiedName(&app.rels, "es_dictionaries"),
						 EsQualifiedName(&app.rels, "es_dictionaries"));
		if (SPI_execute_with_args(sql.data, 2, argtypes, values, NULL, false, 0) != SPI_OK_INSERT_RETURNING ||
			SPI_processed != 1)
			elog(ERROR, "eventsourcing: could not record the dictionary");
		dictionary_id = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
		resetStringInfo(&sql);
	}
	values[1] = Int32GetDatum(dictionary_id);
	argtypes[1] = INT4OID;
	appendStringInfo(&sql,
					 "UPDATE %s SET compression_dictionary = CASE WHEN $2 OPERATOR(pg_catalog.=) 0 THEN NULL ELSE $2 END "
					 "WHERE id OPERATOR(pg_catalog.=) $1",
					 EsQualifiedName(&app.rels, "es_applications"));
	if (SPI_execute_with_args(sql.data, 2, argtypes, values, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "eventsourcing: could not update es_applications");
	EsSpiEnd(&spi);
	CacheInvalidateRelcacheByRelid(app.rels.applications);
	if (dictionary_id == 0)
		PG_RETURN_NULL();
	PG_RETURN_INT32(dictionary_id);
}

/* The state bytes of a JSON state: its text (UTF-8), as jsonb writes it. */
bytea *
EsStateFromJsonb(Jsonb *json)
{
	return (bytea *) cstring_to_text(JsonbToCString(NULL, &json->root, VARSIZE(json)));
}

/* Whether state bytes are text in the database's encoding (no NUL bytes). */
bool
EsStateIsText(bytea *state)
{
	return pg_verify_mbstr(GetDatabaseEncoding(), VARDATA_ANY(state), VARSIZE_ANY_EXHDR(state), true);
}
