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
 *	byte 1		flags: 1 compressed (zlib), 2 encrypted (AES-256-GCM)
 *	bytes 2-5	the length of the state as given (uint32, big-endian)
 *	bytes 6-17	the nonce (encrypted only): 96 random bits per state
 *	then		the payload: the state, compressed if flag 1, and encrypted if
 *				flag 2, followed by the 16-byte GCM tag
 *
 * Compression comes first and is kept only when it makes the state smaller.
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

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "port/pg_bswap.h"
#include "utils/builtins.h"
#include "utils/inval.h"
#include "utils/memutils.h"

#include "access.h"
#include "codec.h"
#include "keys.h"

#define ES_CODEC_VERSION		1
#define ES_FLAG_COMPRESSED		1
#define ES_FLAG_ENCRYPTED		2
#define ES_HEADER_PLAIN_LEN		6
#define ES_HEADER_LEN(flags)	(ES_HEADER_PLAIN_LEN + (((flags) & ES_FLAG_ENCRYPTED) ? ES_NONCE_LEN : 0))
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
 * zlib, with one deflate stream per backend, reset for each state: setting a
 * stream up allocates about 256 kB, which would cost more than compressing a
 * small event.
 */
/*
 * Small states use zlib's fixed Huffman codes: about 10% larger than with
 * codes of their own, but decoding them builds no tables, which halves the
 * cost of reading a small event (measured on ~250-byte JSON events).
 */
#define ES_FIXED_CODES_BELOW	1024

static uint8 *
EsCompress(const uint8 *plain, uint32 len, uint32 *outlen)
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
		if (deflateInit2(zs, Z_DEFAULT_COMPRESSION, Z_DEFLATED, 15, 8,
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
EsDecompress(const uint8 *in, uint32 inlen, uint8 *out, uint32 outlen)
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
EsEncodeState(const EsStateIdentity *id, bytea *plain, bool compress, bool encrypt, int16 *form)
{
	uint32		len = VARSIZE_ANY_EXHDR(plain);
	const uint8 *payload = (const uint8 *) VARDATA_ANY(plain);
	uint32		paylen = len;
	uint8		flags = 0;
	uint8		header[ES_HEADER_PLAIN_LEN + ES_NONCE_LEN];
	uint32		be = pg_hton32(len);
	int			hlen;
	bytea	   *out;
	uint8	   *o;

	if (compress && len > 0)
	{
		uint32		clen;
		uint8	   *c = EsCompress(payload, len, &clen);

		if (clen + ES_HEADER_PLAIN_LEN < len)
		{
			payload = c;
			paylen = clen;
			flags |= ES_FLAG_COMPRESSED;
		}
	}
	if (encrypt)
		flags |= ES_FLAG_ENCRYPTED;
	else if (!id->snapshot &&
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
		if (!pg_strong_random(header + ES_HEADER_PLAIN_LEN, ES_NONCE_LEN))
			ereport(ERROR,
					(errcode(ERRCODE_INTERNAL_ERROR),
					 errmsg("could not generate a random nonce")));
		aad = EsAad(id, header, hlen, &aadlen);
		memcpy(o, header, hlen);
		EsSeal(key, header + ES_HEADER_PLAIN_LEN, aad, aadlen, payload, paylen,
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
		(s[1] & ~(ES_FLAG_COMPRESSED | ES_FLAG_ENCRYPTED)) != 0)
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
		if (!EsOpen(key, s + ES_HEADER_PLAIN_LEN, aad, aadlen, payload, paylen,
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
		if (!EsDecompress(payload, paylen, (uint8 *) VARDATA(out), len))
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
