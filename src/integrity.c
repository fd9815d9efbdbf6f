/*
 * integrity.c
 *		Hash chains, heads, verification, seals and the append-only guard.
 *
 * WHAT IS HASHED
 *
 * Every event's hash is SHA-256 (OpenSSL) over, in order:
 *	"es-event-v1"							(domain tag, 11 bytes)
 *	the previous event's hash				(32 bytes; 32 zero bytes for the
 *											 aggregate's first event: genesis)
 *	length of the application name, name	(uint32 big-endian, bytes)
 *	originator_id							(16 bytes)
 *	originator_version						(int64 big-endian)
 *	length of the topic, topic				(uint32 big-endian, bytes)
 *	length of the state, state				(uint32 big-endian, the stored bytes)
 * Lengths make the encoding unambiguous; the state is hashed as stored, so a
 * compressed or encrypted state is covered as it is kept, and verifying
 * needs no key.  A state in a stored form other than 0 (codec.c) is hashed
 * with the tag "es-event-v2" and its form (one byte) after the tag, so that
 * changing the form is a changed event too; raw states keep "es-event-v1".
 * A tagged event (dcb.c: the only event of an aggregate of its own, so its
 * previous hash is genesis) is hashed with the tag "es-dcb-v1" and its form,
 * the same fields, then the number of its tags (int64 big-endian) and each
 * tag length-prefixed, in their stored (sorted) order.
 *
 * A seal is SHA-256 over "es-seal-v1", the previous seal's digest (zeros for
 * the first), the application name (length-prefixed), the last id of the
 * previous seal, then, for every event of the log after it in id order, its
 * id (int64 big-endian) and its hash, and last the seal's own last id.  Seals
 * chain like events, so deleting a whole aggregate, or the last events of
 * one, or inserting an event into a sealed range, changes a sealed digest.
 *
 * A hash chain without a key proves nothing against someone who can rewrite
 * the whole chain: keep heads (es_head) or seal digests (es_seal) outside the
 * database, and verify against them.
 */
#include "postgres.h"

#include <openssl/evp.h>

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "catalog/pg_type.h"
#include "catalog/namespace.h"
#include "catalog/pg_inherits.h"
#include "commands/event_trigger.h"
#include "commands/extension.h"
#include "commands/trigger.h"
#include "nodes/parsenodes.h"
#include "tcop/cmdtag.h"
#include "utils/acl.h"
#include "executor/spi.h"
#include "executor/tuptable.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "port/pg_bswap.h"
#include "storage/lmgr.h"
#include "storage/lock.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/snapmgr.h"

#include "access.h"
#include "common/int.h"
#include "dcb.h"
#include "integrity.h"
#include "read.h"
#include "utils/guc.h"

#define ES_SEAL_LOCK_CLASS 0x4554

const uint8 es_genesis_hash[ES_HASH_LEN] = {0};
bool		es_allow_rewrite = false;

static EVP_MD_CTX *es_md = NULL;
static const EVP_MD *es_sha256 = NULL;

static void
EsDigestBegin(void)
{
	if (es_md == NULL)
	{
		es_md = EVP_MD_CTX_new();
		if (es_md == NULL)
			elog(ERROR, "eventsourcing: out of memory for a digest context");
	}
	if (es_sha256 == NULL)
	{
		/* Fetched once: OpenSSL 3 looks EVP_sha256() up by name on every use. */
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
		es_sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
#else
		es_sha256 = EVP_sha256();
#endif
		if (es_sha256 == NULL)
			elog(ERROR, "eventsourcing: OpenSSL has no SHA-256");
	}
	if (EVP_DigestInit_ex(es_md, es_sha256, NULL) != 1)
		elog(ERROR, "eventsourcing: could not initialize SHA-256");
}

static void
EsDigest(const void *data, Size len)
{
	if (len > 0 && EVP_DigestUpdate(es_md, data, len) != 1)
		elog(ERROR, "eventsourcing: SHA-256 update failed");
}

static void
EsDigestInt64(int64 v)
{
	uint64		be = pg_hton64((uint64) v);

	EsDigest(&be, sizeof(be));
}

static void
EsDigestBytes(const char *data, Size len)
{
	uint32		be = pg_hton32((uint32) len);

	EsDigest(&be, sizeof(be));
	EsDigest(data, len);
}

static void
EsDigestEnd(uint8 *out)
{
	unsigned int len = 0;

	if (EVP_DigestFinal_ex(es_md, out, &len) != 1 || len != ES_HASH_LEN)
		elog(ERROR, "eventsourcing: SHA-256 final failed");
}

void
EsHashEvent(const uint8 *prev, const text *application,
			const pg_uuid_t *originator_id, int64 version,
			const text *topic, const bytea *state, int16 form, Datum tags,
			uint8 *out)
{
	EsDigestBegin();
	if (tags != (Datum) 0)
	{
		uint8		f = (uint8) form;

		EsDigest("es-dcb-v1", 9);
		EsDigest(&f, 1);
	}
	else if (form == 0)
		EsDigest("es-event-v1", 11);
	else
	{
		uint8		f = (uint8) form;

		EsDigest("es-event-v2", 11);
		EsDigest(&f, 1);
	}
	EsDigest(prev, ES_HASH_LEN);
	EsDigestBytes(VARDATA_ANY(application), VARSIZE_ANY_EXHDR(application));
	EsDigest(originator_id->data, UUID_LEN);
	EsDigestInt64(version);
	EsDigestBytes(VARDATA_ANY(topic), VARSIZE_ANY_EXHDR(topic));
	EsDigestBytes(VARDATA_ANY(state), VARSIZE_ANY_EXHDR(state));
	if (tags != (Datum) 0)
	{
		ArrayType  *arr = DatumGetArrayTypeP(tags);
		Datum	   *elems;
		bool	   *nulls;
		int			n;

		deconstruct_array(arr, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &n);
		EsDigestInt64(n);
		for (int i = 0; i < n; i++)
		{
			text	   *t = DatumGetTextPP(elems[i]);

			CHECK_FOR_INTERRUPTS();
			if (nulls[i])
				ereport(ERROR, (errcode(ERRCODE_DATA_CORRUPTED), errmsg("a tagged event has a NULL tag")));
			EsDigestBytes(VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t));
		}
	}
	EsDigestEnd(out);
}

static bytea *
EsHashToBytea(const uint8 *hash)
{
	bytea	   *b = palloc(VARHDRSZ + ES_HASH_LEN);

	SET_VARSIZE(b, VARHDRSZ + ES_HASH_LEN);
	memcpy(VARDATA(b), hash, ES_HASH_LEN);
	return b;
}

/* The stored hash of a row, or zeros if it is not 32 bytes (then no match). */
static void
EsStoredHash(TupleTableSlot *slot, uint8 *out)
{
	bytea	   *b = DatumGetByteaPP(slot->tts_values[Anum_es_event_hash - 1]);

	if (VARSIZE_ANY_EXHDR(b) == ES_HASH_LEN)
		memcpy(out, VARDATA_ANY(b), ES_HASH_LEN);
	else
		memset(out, 0xff, ES_HASH_LEN);
}

/*
 * CHAIN VERIFICATION
 *
 * One aggregate's rows are read in version order; for each we keep its
 * version, notification id, stored hash and whether that hash matches its
 * content chained to the previous row's stored hash.  Then the first problem
 * is classified: a version missing, two versions out of the order in which
 * they were recorded (notification ids of one aggregate always grow with its
 * versions), content that does not match its hash, or a head kept outside
 * the database that is not in the chain.
 */
typedef struct EsChainRow
{
	int64		version;
	int64		id;
	uint8		stored[ES_HASH_LEN];
	bool		matches;
} EsChainRow;

typedef struct EsChain
{
	pg_uuid_t	originator_id;
	EsChainRow *rows;
	int			n;
	int			cap;
} EsChain;

typedef struct EsChainProblem
{
	bool		broken;
	int64		version;
	const char *problem;
	char	   *detail;
} EsChainProblem;

static void
EsChainAdd(EsChain *c, TupleTableSlot *slot, const text *application)
{
	EsChainRow *row;
	uint8		computed[ES_HASH_LEN];

	if (c->n == c->cap)
	{
		c->cap = Max(64, c->cap * 2);
		c->rows = c->rows ? repalloc_huge(c->rows, sizeof(EsChainRow) * c->cap)
			: palloc(sizeof(EsChainRow) * c->cap);
	}
	row = &c->rows[c->n];
	row->version = DatumGetInt64(slot->tts_values[Anum_es_originator_version - 1]);
	row->id = DatumGetInt64(slot->tts_values[Anum_es_notification_id - 1]);
	EsStoredHash(slot, row->stored);
	EsHashEvent(c->n == 0 ? es_genesis_hash : c->rows[c->n - 1].stored, application,
				&c->originator_id, row->version,
				DatumGetTextPP(slot->tts_values[Anum_es_topic - 1]),
				DatumGetByteaPP(slot->tts_values[Anum_es_state - 1]),
				DatumGetInt16(slot->tts_values[Anum_es_stored_form - 1]),
				slot->tts_isnull[Anum_es_tags - 1] ? (Datum) 0 : slot->tts_values[Anum_es_tags - 1],
				computed);
	row->matches = memcmp(computed, row->stored, ES_HASH_LEN) == 0;
	c->n++;
}

static EsChainProblem
EsChainCheck(const EsChain *c, bytea *expected_head)
{
	EsChainProblem p = {false, 0, NULL, NULL};

	for (int i = 0; i < c->n; i++)
	{
		const EsChainRow *r = &c->rows[i];

		if (i == 0 && r->version > 1)
		{
			p.broken = true;
			p.version = r->version - 1;
			p.problem = "missing version";
			p.detail = psprintf("The first recorded version is " INT64_FORMAT "; versions before it are missing.",
								r->version);
			return p;
		}
		CHECK_FOR_INTERRUPTS();
		if (i > 0 && (c->rows[i - 1].version == PG_INT64_MAX ||
					  r->version != c->rows[i - 1].version + 1))
		{
			p.broken = true;
			p.version = c->rows[i - 1].version == PG_INT64_MAX ? PG_INT64_MAX : c->rows[i - 1].version + 1;
			p.problem = "missing version";
			p.detail = psprintf("Version " INT64_FORMAT " is followed by version " INT64_FORMAT ".",
								c->rows[i - 1].version, r->version);
			return p;
		}
		/* A broken link just before an older event is a swap, not an edit. */
		if ((i > 0 && r->id < c->rows[i - 1].id) ||
			(!r->matches && i + 1 < c->n && c->rows[i + 1].id < r->id))
		{
			p.broken = true;
			p.version = r->version;
			p.problem = "reordered";
			p.detail = psprintf("Version " INT64_FORMAT " (notification " INT64_FORMAT ") is out of the order in which the versions were recorded.",
								r->version, r->id);
			return p;
		}
		if (!r->matches)
		{
			p.broken = true;
			p.version = r->version;
			p.problem = "changed content";
			p.detail = psprintf("The stored hash of version " INT64_FORMAT " (notification " INT64_FORMAT ") does not match its content chained to the previous version.",
								r->version, r->id);
			return p;
		}
	}
	if (expected_head != NULL)
	{
		bool		found = false;

		if (VARSIZE_ANY_EXHDR(expected_head) == ES_HASH_LEN)
			for (int i = c->n - 1; i >= 0 && !found; i--)
				found = memcmp(c->rows[i].stored, VARDATA_ANY(expected_head), ES_HASH_LEN) == 0;
		if (!found)
		{
			p.broken = true;
			p.version = c->n > 0 ? c->rows[c->n - 1].version : 0;
			p.problem = "head mismatch";
			p.detail = pstrdup("The head kept outside the database is not the hash of any recorded version: events were removed or rewritten at the end.");
		}
	}
	return p;
}

/* Reads one aggregate's rows (all attributes) into a chain. */
static void
EsReadChain(const EsRelations *rels, int32 app_id, const text *application,
			pg_uuid_t *originator_id, EsChain *chain)
{
	EsLog		log = EsLogOf(rels, app_id);
	Relation	events = table_open(log.relid, AccessShareLock);
	Relation	idx = index_open(log.version_idx, AccessShareLock);
	Snapshot	snapshot = RegisterSnapshot(GetActiveSnapshot());
	IndexScanDesc scan;
	ScanKeyData keys[2];
	TupleTableSlot *slot = table_slot_create(events, NULL);

	memset(chain, 0, sizeof(*chain));
	chain->originator_id = *originator_id;
	ScanKeyInit(&keys[0], 1, BTEqualStrategyNumber, F_INT4EQ, Int32GetDatum(app_id));
	ScanKeyInit(&keys[1], 2, BTEqualStrategyNumber, F_UUID_EQ, UUIDPGetDatum(originator_id));
	scan = index_beginscan(events, idx, snapshot, 2, 0);
	index_rescan(scan, keys, 2, NULL, 0);
	while (index_getnext_slot(scan, ForwardScanDirection, slot))
	{
		CHECK_FOR_INTERRUPTS();
		slot_getallattrs(slot);
		EsChainAdd(chain, slot, application);
		ExecClearTuple(slot);
	}
	index_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
	UnregisterSnapshot(snapshot);
	index_close(idx, AccessShareLock);
	table_close(events, AccessShareLock);
}

/* es_head(application text, originator_id uuid) RETURNS bytea */
PG_FUNCTION_INFO_V1(es_head);
Datum
es_head(PG_FUNCTION_ARGS)
{
	pg_uuid_t  *originator_id = EsArgUuid(fcinfo, 1, "originator_id");
	EsApp		app;
	ScanKeyData keys[2];
	Datum		head;

	EsOpenApp(&app, fcinfo, 0, ES_PRIV_READ);
	ScanKeyInit(&keys[0], 1, BTEqualStrategyNumber, F_INT4EQ, Int32GetDatum(app.id));
	ScanKeyInit(&keys[1], 2, BTEqualStrategyNumber, F_UUID_EQ, UUIDPGetDatum(originator_id));
	if (!EsLastEventAttr(&app.log, app.log.version_idx, GetActiveSnapshot(), keys, 2,
						 Anum_es_event_hash, &head))
		PG_RETURN_NULL();
	PG_RETURN_DATUM(head);
}

/*
 * es_verify(application text, originator_id uuid, expected_head bytea)
 *	RETURNS es_verification
 */
PG_FUNCTION_INFO_V1(es_verify);
Datum
es_verify(PG_FUNCTION_ARGS)
{
	pg_uuid_t  *originator_id = EsArgUuid(fcinfo, 1, "originator_id");
	bytea	   *expected_head = PG_ARGISNULL(2) ? NULL : PG_GETARG_BYTEA_PP(2);
	EsApp		app;
	EsChain		chain;
	EsChainProblem p;
	TupleDesc	tupdesc;
	Datum		values[5];
	bool		nulls[5] = {false, false, false, false, false};

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "eventsourcing: es_verify must return a composite type");
	tupdesc = BlessTupleDesc(tupdesc);

	EsOpenApp(&app, fcinfo, 0, ES_PRIV_VERIFY);
	EsReadChain(&app.rels, app.id, app.name, originator_id, &chain);
	p = EsChainCheck(&chain, expected_head);

	values[0] = BoolGetDatum(!p.broken);
	values[1] = Int64GetDatum(chain.n);
	if (p.broken)
	{
		values[2] = Int64GetDatum(p.version);
		values[3] = CStringGetTextDatum(p.problem);
		values[4] = CStringGetTextDatum(p.detail);
	}
	else
	{
		nulls[2] = nulls[3] = nulls[4] = true;
	}
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

/*
 * SEALS
 */

static void
EsLockSeals(int32 app_id)
{
	LOCKTAG		tag;

	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, (uint32) app_id, 0, ES_SEAL_LOCK_CLASS);
	(void) LockAcquire(&tag, ExclusiveLock, false, false);
}

/*
 * The digest of the log in (after, last]: a header, each event's id and hash
 * in id order, and the last id (known only once the events are read).
 */
static void
EsSealDigestBegin(const uint8 *previous, const text *application, int64 after)
{
	EsDigestBegin();
	EsDigest("es-seal-v1", 10);
	EsDigest(previous, ES_HASH_LEN);
	EsDigestBytes(VARDATA_ANY(application), VARSIZE_ANY_EXHDR(application));
	EsDigestInt64(after);
}

static void
EsSealDigestEnd(int64 last, uint8 *out)
{
	EsDigestInt64(last);
	EsDigestEnd(out);
}

static void
EsSealDigestAdd(int64 id, TupleTableSlot *slot)
{
	uint8		stored[ES_HASH_LEN];

	EsStoredHash(slot, stored);
	EsDigestInt64(id);
	EsDigest(stored, ES_HASH_LEN);
}

/* The last seal of an application: its last id and digest; false if none. */
static bool
EsLastSeal(const EsRelations *rels, int32 app_id, int64 *seal_id, int64 *last, uint8 *digest)
{
	StringInfoData sql;
	Oid			argtypes[1] = {INT4OID};
	Datum		values[1];
	bool		found = false;

	values[0] = Int32GetDatum(app_id);
	initStringInfo(&sql);
	appendStringInfo(&sql,
					 "SELECT seal_id, last_notification_id, digest FROM %s "
					 "WHERE application_id OPERATOR(pg_catalog.=) $1 ORDER BY seal_id DESC LIMIT 1",
					 EsQualifiedName(rels, "es_seals"));
	if (SPI_execute_with_args(sql.data, 1, argtypes, values, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "eventsourcing: could not read es_seals");
	if (SPI_processed == 1)
	{
		bool		isnull;
		bytea	   *d;

		*seal_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
		*last = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
		d = DatumGetByteaPP(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull));
		memset(digest, 0, ES_HASH_LEN);
		if (VARSIZE_ANY_EXHDR(d) == ES_HASH_LEN)
			memcpy(digest, VARDATA_ANY(d), ES_HASH_LEN);
		found = true;
	}
	return found;
}

/*
 * Seals the log of an application from its last seal up to the highest id
 * readers can be given now (never past an id that may still appear).  Sets
 * *seal_row to the new seal, or the last one if there is nothing new, and
 * returns false when there is none at all.  Used by es_seal and the worker;
 * calls no user code.  Gaps are kept as ranges (int8multirange).
 */
bool
EsSealApplication(const EsRelations *rels, int32 app_id, text *application, Datum *seal_row)
{
	int64		seal_id = 0;
	int64		after = 0;
	uint8		previous[ES_HASH_LEN];
	uint8		digest[ES_HASH_LEN];
	EsLogScan	scan;
	TupleTableSlot *slot;
	int64		id;
	int64		last = 0;
	int64		count = 0;
	StringInfoData sql;
	bool		isnull;
	EsSpi		spi;

	EsLockSeals(app_id);
	EsSpiBegin(&spi, rels);
	memset(previous, 0, ES_HASH_LEN);
	(void) EsLastSeal(rels, app_id, &seal_id, &after, previous);

	/* One pass over what readers can be given now, from the last seal on. */
	if (after < PG_INT64_MAX)
	{
		EsLog		log = EsLogOf(rels, app_id);

		EsSealDigestBegin(previous, application, after);
		EsLogScanBegin(&scan, rels, &log, app_id, after + 1, PG_INT64_MAX, true);
		while ((slot = EsLogScanNext(&scan, &id)) != NULL)
		{
			EsSealDigestAdd(id, slot);
			count++;
			last = id;
		}
		EsLogScanEnd(&scan);
		EsSealDigestEnd(last, digest);
	}

	if (count > 0)
	{
		Oid			argtypes[9] = {INT4OID, INT8OID, INT8OID, INT8OID, INT8OID,
		INT8ARRAYOID, INT8ARRAYOID, BYTEAOID, BYTEAOID};
		Datum		values[9];
		Datum	   *from = palloc(sizeof(Datum) * Max(scan.ngaps, 1));
		Datum	   *to = palloc(sizeof(Datum) * Max(scan.ngaps, 1));
		int			ngaps = 0;

		if (seal_id == PG_INT64_MAX)
			ereport(ERROR,
					(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
					 errmsg("application \"%s\" has as many seals as a bigint can count",
							text_to_cstring(application))));
		/* gaps passed before the scan stopped may lie above the last event */
		for (int i = 0; i < scan.ngaps && scan.gap_from[i] < last; i++)
		{
			from[ngaps] = Int64GetDatum(scan.gap_from[i]);
			to[ngaps] = Int64GetDatum(Min(scan.gap_to[i], last));
			ngaps++;
		}
		values[0] = Int32GetDatum(app_id);
		values[1] = Int64GetDatum(seal_id + 1);
		values[2] = Int64GetDatum(after);
		values[3] = Int64GetDatum(last);
		values[4] = Int64GetDatum(count);
		values[5] = PointerGetDatum(construct_array(from, ngaps, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
		values[6] = PointerGetDatum(construct_array(to, ngaps, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
		values[7] = PointerGetDatum(EsHashToBytea(previous));
		values[8] = PointerGetDatum(EsHashToBytea(digest));
		initStringInfo(&sql);
		appendStringInfo(&sql,
						 "INSERT INTO %s (application_id, seal_id, after_notification_id, last_notification_id, "
						 "event_count, gaps, previous_digest, digest, sealed_at) "
						 "SELECT $1, $2, $3, $4, $5, "
						 "COALESCE((SELECT pg_catalog.range_agg(pg_catalog.int8range(f, t)) "
						 "FROM ROWS FROM (pg_catalog.unnest($6), pg_catalog.unnest($7)) AS g(f, t)), '{}'::pg_catalog.int8multirange), "
						 "$8, $9, pg_catalog.now()",
						 EsQualifiedName(rels, "es_seals"));
		if (SPI_execute_with_args(sql.data, 9, argtypes, values, NULL, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "eventsourcing: could not insert the seal");
		seal_id++;
	}
	else if (seal_id == 0)
	{
		EsSpiEnd(&spi);
		return false;
	}

	/* The seal's row. */
	{
		Oid			argtypes[2] = {INT4OID, INT8OID};
		Datum		values[2];

		values[0] = Int32GetDatum(app_id);
		values[1] = Int64GetDatum(seal_id);
		initStringInfo(&sql);
		appendStringInfo(&sql, "SELECT s FROM %s s WHERE application_id OPERATOR(pg_catalog.=) $1 "
						 "AND seal_id OPERATOR(pg_catalog.=) $2",
						 EsQualifiedName(rels, "es_seals"));
		if (SPI_execute_with_args(sql.data, 2, argtypes, values, NULL, false, 1) != SPI_OK_SELECT ||
			SPI_processed != 1)
			elog(ERROR, "eventsourcing: could not read the seal back");
		*seal_row = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
		*seal_row = SPI_datumTransfer(*seal_row, false, -1);
	}
	EsSpiEnd(&spi);
	return true;
}

/*
 * es_seal(application text) RETURNS es_seals
 *
 * Needs the seal privilege.  Returns the new seal, or the last one if there
 * is nothing new (NULL if there is none).
 */
PG_FUNCTION_INFO_V1(es_seal);
Datum
es_seal(PG_FUNCTION_ARGS)
{
	EsApp		app;
	Datum		result;

	EsOpenApp(&app, fcinfo, 0, ES_PRIV_SEAL);
	PreventCommandIfReadOnly("es_seal()");
	if (!EsSealApplication(&app.rels, app.id, app.name, &result))
		PG_RETURN_NULL();
	PG_RETURN_DATUM(result);
}

/*
 * es_verify_log(application text) RETURNS SETOF es_log_problem
 *
 * Every aggregate's chain (its first broken link), then every seal: its link
 * to the previous seal, and its digest recomputed from the events now in its
 * range; a missing or an unexpected id is named; then the index of tagged
 * events against them (dcb.c).  No rows: intact.
 */
static void
EsEmitProblem(ReturnSetInfo *rsinfo, const char *kind, pg_uuid_t *originator_id,
			  bool has_version, int64 version, bool has_id, int64 id,
			  bool has_seal, int64 seal, const char *problem, const char *detail)
{
	Datum		values[7];
	bool		nulls[7] = {false, false, false, false, false, false, false};

	values[0] = CStringGetTextDatum(kind);
	if (originator_id)
		values[1] = UUIDPGetDatum(originator_id);
	else
		nulls[1] = true;
	values[2] = Int64GetDatum(version);
	nulls[2] = !has_version;
	values[3] = Int64GetDatum(id);
	nulls[3] = !has_id;
	values[4] = Int64GetDatum(seal);
	nulls[4] = !has_seal;
	values[5] = CStringGetTextDatum(problem);
	values[6] = CStringGetTextDatum(detail);
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
}

static void
EsVerifyAllChains(ReturnSetInfo *rsinfo, const EsRelations *rels, int32 app_id, text *application,
				  EsDcbVerifier *dcb)
{
	EsLog		log = EsLogOf(rels, app_id);
	Relation	events = table_open(log.relid, AccessShareLock);
	Relation	idx = index_open(log.version_idx, AccessShareLock);
	Snapshot	snapshot = RegisterSnapshot(GetActiveSnapshot());
	IndexScanDesc scan;
	ScanKeyData key;
	TupleTableSlot *slot = table_slot_create(events, NULL);
	EsChain		chain;
	bool		have = false;

	memset(&chain, 0, sizeof(chain));
	ScanKeyInit(&key, 1, BTEqualStrategyNumber, F_INT4EQ, Int32GetDatum(app_id));
	scan = index_beginscan(events, idx, snapshot, 1, 0);
	index_rescan(scan, &key, 1, NULL, 0);
	for (;;)
	{
		bool		more = index_getnext_slot(scan, ForwardScanDirection, slot);
		pg_uuid_t  *oid = NULL;

		if (more)
		{
			slot_getallattrs(slot);
			oid = DatumGetUUIDP(slot->tts_values[Anum_es_originator_id - 1]);
		}
		if (have && (!more || memcmp(oid->data, chain.originator_id.data, UUID_LEN) != 0))
		{
			EsChainProblem p = EsChainCheck(&chain, NULL);

			if (p.broken)
				EsEmitProblem(rsinfo, "aggregate", &chain.originator_id, true, p.version,
							  false, 0, false, 0, p.problem, p.detail);
			chain.n = 0;
			have = false;
		}
		if (!more)
			break;
		CHECK_FOR_INTERRUPTS();
		if (!have)
		{
			chain.originator_id = *oid;
			have = true;
		}
		EsChainAdd(&chain, slot, application);
		EsDcbVerifyEvent(dcb, slot);
	}
	index_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
	UnregisterSnapshot(snapshot);
	index_close(idx, AccessShareLock);
	table_close(events, AccessShareLock);
}

/* Reads an int8[] column of an SPI row into a palloc'd array. */
static int64 *
EsSpiInt64Array(HeapTuple t, TupleDesc d, int col, int *n)
{
	bool		isnull;
	Datum		v = SPI_getbinval(t, d, col, &isnull);
	Datum	   *elems;
	int64	   *out;

	*n = 0;
	if (isnull)
		return palloc(sizeof(int64));
	deconstruct_array(DatumGetArrayTypeP(v), INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE,
					  &elems, NULL, n);
	out = palloc(sizeof(int64) * Max(*n, 1));
	for (int i = 0; i < *n; i++)
		out[i] = DatumGetInt64(elems[i]);
	return out;
}

/*
 * The ids [from, to) were skipped by the walk of a sealed range: those not
 * in the seal's gaps (sorted ranges [gfrom, gto)) are missing events, one
 * problem per run of missing ids.
 */
static bool
EsCheckSkipped(ReturnSetInfo *rsinfo, int64 seal_id, int64 from, int64 to,
			   const int64 *gfrom, const int64 *gto, int ngaps, int *gi)
{
	bool		ok = true;
	int64		m = from;

	while (m < to)
	{
		int64		run_end;

		CHECK_FOR_INTERRUPTS();
		while (*gi < ngaps && gto[*gi] <= m)
			(*gi)++;
		if (*gi < ngaps && gfrom[*gi] <= m)
		{
			m = Min(gto[*gi], to);	/* a gap when sealed: fine */
			continue;
		}
		run_end = (*gi < ngaps) ? Min(gfrom[*gi], to) : to;
		ok = false;
		if (run_end - 1 == m)
			EsEmitProblem(rsinfo, "seal", NULL, false, 0, true, m, true, seal_id,
						  "missing event",
						  psprintf("Notification " INT64_FORMAT " was sealed in seal " INT64_FORMAT " and is gone.",
								   m, seal_id));
		else
			EsEmitProblem(rsinfo, "seal", NULL, false, 0, true, m, true, seal_id,
						  "missing event",
						  psprintf("Notifications " INT64_FORMAT " to " INT64_FORMAT " were sealed in seal " INT64_FORMAT " and are gone.",
								   m, run_end - 1, seal_id));
		m = run_end;
	}
	return ok;
}

static void
EsVerifySeals(ReturnSetInfo *rsinfo, const EsRelations *rels, int32 app_id, text *application)
{
	StringInfoData sql;
	Oid			argtypes[1] = {INT4OID};
	Datum		values[1];
	uint8		previous[ES_HASH_LEN];
	int64		prev_last = 0;
	int64		expected_seal = 1;
	EsLog		log = EsLogOf(rels, app_id);
	Relation	events = table_open(log.relid, AccessShareLock);
	Relation	pkey = index_open(log.pkey, AccessShareLock);
	Snapshot	snapshot = RegisterSnapshot(GetActiveSnapshot());
	TupleTableSlot *slot = table_slot_create(events, NULL);
	SPITupleTable *seals;
	uint64		nseals;

	memset(previous, 0, ES_HASH_LEN);
	values[0] = Int32GetDatum(app_id);
	initStringInfo(&sql);
	appendStringInfo(&sql,
					 "SELECT seal_id, after_notification_id, last_notification_id, event_count, "
					 "ARRAY(SELECT pg_catalog.lower(r) FROM pg_catalog.unnest(gaps) r), "
					 "ARRAY(SELECT pg_catalog.upper(r) FROM pg_catalog.unnest(gaps) r), "
					 "previous_digest, digest FROM %s WHERE application_id OPERATOR(pg_catalog.=) $1 "
					 "ORDER BY seal_id",
					 EsQualifiedName(rels, "es_seals"));
	if (SPI_execute_with_args(sql.data, 1, argtypes, values, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "eventsourcing: could not read es_seals");
	seals = SPI_tuptable;
	nseals = SPI_processed;

	for (uint64 i = 0; i < nseals; i++)
	{
		HeapTuple	t = seals->vals[i];
		TupleDesc	d = seals->tupdesc;
		bool		isnull;
		int64		seal_id = DatumGetInt64(SPI_getbinval(t, d, 1, &isnull));
		int64		after = DatumGetInt64(SPI_getbinval(t, d, 2, &isnull));
		int64		last = DatumGetInt64(SPI_getbinval(t, d, 3, &isnull));
		int64		count = DatumGetInt64(SPI_getbinval(t, d, 4, &isnull));
		int			ngaps;
		int			nto;
		int64	   *gfrom = EsSpiInt64Array(t, d, 5, &ngaps);
		int64	   *gto = EsSpiInt64Array(t, d, 6, &nto);
		bytea	   *prevd = DatumGetByteaPP(SPI_getbinval(t, d, 7, &isnull));
		bytea	   *digest = DatumGetByteaPP(SPI_getbinval(t, d, 8, &isnull));
		uint8		computed[ES_HASH_LEN];
		IndexScanDesc scan;
		ScanKeyData keys[3];
		int64		next_expected;
		int64		present = 0;
		bool		ids_ok = true;
		int			gi = 0;

		CHECK_FOR_INTERRUPTS();
		ngaps = Min(ngaps, nto);
		/* A forged seal may claim any range: keep the arithmetic in bounds. */
		after = Max(after, 0);
		last = Min(Max(last, after), PG_INT64_MAX - 1);
		next_expected = after + 1;
		if (seal_id != expected_seal || after != prev_last ||
			VARSIZE_ANY_EXHDR(prevd) != ES_HASH_LEN ||
			memcmp(VARDATA_ANY(prevd), previous, ES_HASH_LEN) != 0)
			EsEmitProblem(rsinfo, "seal", NULL, false, 0, true, after + 1, true, seal_id,
						  "seal chain broken",
						  psprintf("Seal " INT64_FORMAT " does not follow seal " INT64_FORMAT ": a seal was removed, reordered or rewritten.",
								   seal_id, expected_seal - 1));

		EsSealDigestBegin(VARSIZE_ANY_EXHDR(prevd) == ES_HASH_LEN ? (uint8 *) VARDATA_ANY(prevd) : previous,
						  application, after);
		ScanKeyInit(&keys[0], 1, BTEqualStrategyNumber, F_INT4EQ, Int32GetDatum(app_id));
		ScanKeyInit(&keys[1], 2, BTGreaterStrategyNumber, F_INT8GT, Int64GetDatum(after));
		ScanKeyInit(&keys[2], 2, BTLessEqualStrategyNumber, F_INT8LE, Int64GetDatum(last));
		scan = index_beginscan(events, pkey, snapshot, 3, 0);
		index_rescan(scan, keys, 3, NULL, 0);
		for (;;)
		{
			bool		more = index_getnext_slot(scan, ForwardScanDirection, slot);
			int64		id = more ? DatumGetInt64(slot_getattr(slot, Anum_es_notification_id, &isnull)) : last + 1;

			CHECK_FOR_INTERRUPTS();
			/* Ids skipped before this one must have been gaps when sealed. */
			if (!EsCheckSkipped(rsinfo, seal_id, next_expected, id, gfrom, gto, ngaps, &gi))
				ids_ok = false;
			if (!more)
				break;
			while (gi < ngaps && gto[gi] <= id)
				gi++;
			if (gi < ngaps && gfrom[gi] <= id)
			{
				ids_ok = false;
				EsEmitProblem(rsinfo, "seal", NULL, false, 0, true, id, true, seal_id,
							  "unexpected event",
							  psprintf("Notification " INT64_FORMAT " was not in the log when seal " INT64_FORMAT " was made: it was inserted later.",
									   id, seal_id));
			}
			slot_getallattrs(slot);
			EsSealDigestAdd(id, slot);
			present++;
			next_expected = id + 1;
		}
		index_endscan(scan);
		EsSealDigestEnd(last, computed);

		if (ids_ok && (present != count || VARSIZE_ANY_EXHDR(digest) != ES_HASH_LEN ||
					   memcmp(computed, VARDATA_ANY(digest), ES_HASH_LEN) != 0))
			EsEmitProblem(rsinfo, "seal", NULL, false, 0, true, after + 1, true, seal_id,
						  "seal mismatch",
						  psprintf("The events in notifications " INT64_FORMAT " to " INT64_FORMAT " no longer match seal " INT64_FORMAT ": an event was changed.",
								   after + 1, last, seal_id));

		if (VARSIZE_ANY_EXHDR(digest) == ES_HASH_LEN)
			memcpy(previous, VARDATA_ANY(digest), ES_HASH_LEN);
		prev_last = last;
		expected_seal = seal_id == PG_INT64_MAX ? seal_id : seal_id + 1;
	}
	ExecDropSingleTupleTableSlot(slot);
	UnregisterSnapshot(snapshot);
	index_close(pkey, AccessShareLock);
	table_close(events, AccessShareLock);
}

static void
EsEmitIndexProblem(void *arg, int64 id, const char *problem, const char *detail)
{
	EsEmitProblem((ReturnSetInfo *) arg, "tagged event", NULL, false, 0, id != 0, id,
				  false, 0, problem, detail);
}

PG_FUNCTION_INFO_V1(es_verify_log);
Datum
es_verify_log(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	EsApp		app;
	EsSpi		spi;
	EsDcbVerifier *dcb;

	EsOpenApp(&app, fcinfo, 0, ES_PRIV_VERIFY);
	InitMaterializedSRF(fcinfo, 0);

	dcb = EsDcbVerifyBegin(&app.rels, app.id, EsEmitIndexProblem, rsinfo);
	EsVerifyAllChains(rsinfo, &app.rels, app.id, app.name, dcb);
	EsSpiBegin(&spi, &app.rels);
	EsVerifySeals(rsinfo, &app.rels, app.id, app.name);
	EsSpiEnd(&spi);
	EsDcbVerifyEnd(dcb);
	return (Datum) 0;
}

/*
 * The append-only guard: a trigger on es_stored_events and es_seals, BEFORE
 * UPDATE OR DELETE (each row) and BEFORE TRUNCATE.  Only a superuser who sets
 * eventsourcing.allow_rewrite passes it.
 */
PG_FUNCTION_INFO_V1(es_append_only_guard);
Datum
es_append_only_guard(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	const char *what;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("es_append_only_guard can only be called as a trigger")));
	if (es_allow_rewrite)
		return TRIGGER_FIRED_FOR_ROW(trigdata->tg_event) ? PointerGetDatum(
			TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event) ? trigdata->tg_newtuple : trigdata->tg_trigtuple) : (Datum) 0;

	if (TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event))
		what = "UPDATE";
	else if (TRIGGER_FIRED_BY_DELETE(trigdata->tg_event))
		what = "DELETE";
	else
		what = "TRUNCATE";
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("%s on %s is not allowed: recorded events are append-only",
					what, RelationGetRelationName(trigdata->tg_relation)),
			 errhint("Append new events with es_append. A superuser can SET eventsourcing.allow_rewrite = on to repair data; es_verify_log will report what changed.")));
	return (Datum) 0;
}

/*
 * The drop guard: an event trigger on ddl_command_start that keeps recorded
 * events from going by DDL (the append-only triggers cover DML):
 *
 *	- DROP EXTENSION eventsourcing, DROP SCHEMA of its schema and DROP OWNED
 *	  BY its owner, while recorded events exist;
 *	- DROP TABLE of an application's partition of es_stored_events, and
 *	  DETACH PARTITION (also FINALIZE) of one, while it holds events (the
 *	  partitions are not members of the extension, so PostgreSQL alone would
 *	  let them go);
 *	- any ALTER TABLE of es_stored_events but ATTACH and DETACH, and any
 *	  ALTER TABLE, RENAME or SET SCHEMA of a partition but settings and
 *	  additions (EsHarmlessAlteration): the C code relies on their columns
 *	  and keys, and a partition moved to another schema or owner would go
 *	  with a DROP SCHEMA or DROP OWNED (and pg_restore --clean begins with
 *	  ALTER TABLE ... DROP CONSTRAINT).
 *
 * A table attached to es_stored_events loses every privilege but its
 * owner's first (a restore into a database with default privileges would
 * otherwise hand the log to their grantees).
 *
 * Counting events takes AccessExclusiveLock on the partitions first (what
 * the DROP or DETACH would take next anyway), so appends in flight finish
 * before, and counts with a new snapshot, so that neither an append that
 * commits meanwhile nor an old REPEATABLE READ snapshot hides events.
 *
 * The way out is the administrative path, eventsourcing.allow_rewrite
 * (superusers only); the extension's own scripts pass.
 */

/* Partition of es_stored_events, being detached or not. */
static Oid
EsPartitionNamed(RangeVar *rv, const EsRelations *rels)
{
	Oid			relid = RangeVarGetRelid(rv, NoLock, true);

	return EsIsLogPartition(rels, relid, true) ? relid : InvalidOid;
}

static void
EsRefuseAlteration(const char *what, const char *relname)
{
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("%s of %s is not allowed: the eventsourcing extension relies on its columns, keys and triggers",
					what, relname),
			 errhint("Settings of a partition may change, and keys and indexes may be added. A superuser can SET eventsourcing.allow_rewrite = on to repair; es_verify_log reports what changed.")));
}

/*
 * Whether an ALTER TABLE subcommand of a partition leaves what we rely on:
 * settings, and additions (pg_restore adds the keys after ATTACH, and gives
 * the table to its owner), but no removal or change of a column, key,
 * trigger or owner.
 */
static bool
EsHarmlessAlteration(const AlterTableCmd *cmd, const EsRelations *rels)
{
	switch (cmd->subtype)
	{
		case AT_ChangeOwner:
			return get_rolespec_oid(cmd->newowner, true) == rels->owner;
		case AT_AddConstraint:
		case AT_AddIndex:
		case AT_AddIndexConstraint:
		case AT_EnableTrig:
		case AT_SetRelOptions:
		case AT_ResetRelOptions:
		case AT_ReplaceRelOptions:
		case AT_SetStatistics:
		case AT_SetStorage:
		case AT_SetCompression:
		case AT_ClusterOn:
		case AT_DropCluster:
			return true;
		default:
			return false;
	}
}

/* Strips an attached table of every privilege but its owner's. */
static void
EsLockDown(const EsRelations *rels, Oid relid)
{
	EsSpi		spi;
	Oid			argtype = REGCLASSOID;
	Datum		arg = ObjectIdGetDatum(relid);

	EsSpiBegin(&spi, rels);
	if (SPI_execute_with_args("SELECT eventsourcing_internal.es_lock_down($1)",
							  1, &argtype, &arg, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "eventsourcing: could not revoke the privileges on an attached partition");
	EsSpiEnd(&spi);
}

/* Refuses alterations of the parent and of its partitions (see above). */
static void
EsGuardAlterations(Node *parsetree, const EsRelations *rels)
{
	if (IsA(parsetree, AlterTableStmt))
	{
		AlterTableStmt *stmt = (AlterTableStmt *) parsetree;
		Oid			relid;
		ListCell   *lc;

		if (stmt->objtype != OBJECT_TABLE)
			return;
		relid = RangeVarGetRelid(stmt->relation, NoLock, true);
		if (relid == rels->events)
		{
			foreach(lc, stmt->cmds)
			{
				AlterTableCmd *cmd = lfirst(lc);

				if (cmd->subtype == AT_AttachPartition)
				{
					Oid			attached = RangeVarGetRelid(((PartitionCmd *) cmd->def)->name, NoLock, true);

					if (OidIsValid(attached))
						EsLockDown(rels, attached);
				}
				else if (cmd->subtype != AT_DetachPartition &&
						 cmd->subtype != AT_DetachPartitionFinalize)
					EsRefuseAlteration("ALTER TABLE", "es_stored_events");
			}
		}
		else if (OidIsValid(relid) && OidIsValid(EsPartitionNamed(stmt->relation, rels)))
		{
			foreach(lc, stmt->cmds)
			{
				if (!EsHarmlessAlteration(lfirst(lc), rels))
					EsRefuseAlteration("ALTER TABLE", get_rel_name(relid));
			}
		}
	}
	else if (IsA(parsetree, RenameStmt))
	{
		RenameStmt *stmt = (RenameStmt *) parsetree;

		if (stmt->relation != NULL &&
			(stmt->renameType == OBJECT_TABLE || stmt->renameType == OBJECT_COLUMN ||
			 stmt->renameType == OBJECT_TABCONSTRAINT || stmt->renameType == OBJECT_TRIGGER))
		{
			Oid			relid = RangeVarGetRelid(stmt->relation, NoLock, true);

			if (OidIsValid(relid) &&
				(relid == rels->events || OidIsValid(EsPartitionNamed(stmt->relation, rels))))
				EsRefuseAlteration("RENAME", get_rel_name(relid));
		}
	}
	else if (IsA(parsetree, AlterObjectSchemaStmt))
	{
		AlterObjectSchemaStmt *stmt = (AlterObjectSchemaStmt *) parsetree;

		if (stmt->objectType == OBJECT_TABLE && stmt->relation != NULL &&
			OidIsValid(EsPartitionNamed(stmt->relation, rels)))
			EsRefuseAlteration("SET SCHEMA", stmt->relation->relname);
	}
}

/*
 * True when the command would drop our events: all of them (*partition left
 * invalid) or those of the partition *partition.
 */
static bool
EsDropTargetsUs(Node *parsetree, const EsRelations *rels, Oid *partition)
{
	*partition = InvalidOid;
	if (IsA(parsetree, AlterTableStmt))
	{
		AlterTableStmt *stmt = (AlterTableStmt *) parsetree;
		ListCell   *lc;

		if (stmt->objtype != OBJECT_TABLE ||
			RangeVarGetRelid(stmt->relation, NoLock, true) != rels->events)
			return false;
		foreach(lc, stmt->cmds)
		{
			AlterTableCmd *cmd = lfirst(lc);

			if ((cmd->subtype == AT_DetachPartition || cmd->subtype == AT_DetachPartitionFinalize) &&
				OidIsValid(*partition = EsPartitionNamed(((PartitionCmd *) cmd->def)->name, rels)))
				return true;
		}
		return false;
	}
	if (IsA(parsetree, DropStmt))
	{
		DropStmt   *stmt = (DropStmt *) parsetree;
		ListCell   *lc;

		if (stmt->removeType == OBJECT_TABLE)
		{
			foreach(lc, stmt->objects)
			{
				if (OidIsValid(*partition = EsPartitionNamed(makeRangeVarFromNameList(lfirst(lc)), rels)))
					return true;
			}
			return false;
		}
		if (stmt->removeType != OBJECT_EXTENSION && stmt->removeType != OBJECT_SCHEMA)
			return false;
		foreach(lc, stmt->objects)
		{
			Node	   *obj = lfirst(lc);
			const char *name = IsA(obj, String) ? strVal(obj) : NULL;

			if (name == NULL)
				continue;
			if (stmt->removeType == OBJECT_EXTENSION && strcmp(name, ES_EXTENSION_NAME) == 0)
				return true;
			if (stmt->removeType == OBJECT_SCHEMA &&
				get_namespace_oid(name, true) == rels->namespace)
				return true;
		}
		return false;
	}
	if (IsA(parsetree, DropOwnedStmt))
	{
		ListCell   *lc;

		foreach(lc, ((DropOwnedStmt *) parsetree)->roles)
		{
			RoleSpec   *role = lfirst(lc);

			if (role->roletype == ROLESPEC_CSTRING &&
				get_role_oid(role->rolename, true) == rels->owner)
				return true;
		}
	}
	return false;
}

PG_FUNCTION_INFO_V1(es_drop_guard);
Datum
es_drop_guard(PG_FUNCTION_ARGS)
{
	EventTriggerData *trigdata;
	EsRelations rels;
	EsSpi		spi;
	StringInfoData sql;
	int64		events = 0;
	bool		isnull;
	Oid			partition;
	bool		detach;

	if (!CALLED_AS_EVENT_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("es_drop_guard can only be called as an event trigger")));
	trigdata = (EventTriggerData *) fcinfo->context;
	/* An extension's own scripts (our upgrade renames and replaces tables) pass. */
	if (es_allow_rewrite || creating_extension || !EsLookupRelationsIfInstalled(&rels))
		PG_RETURN_VOID();
	EsGuardAlterations(trigdata->parsetree, &rels);
	if (!EsDropTargetsUs(trigdata->parsetree, &rels, &partition))
		PG_RETURN_VOID();
	detach = IsA(trigdata->parsetree, AlterTableStmt);

	/* Appends in flight end first; then a new snapshot sees what they wrote. */
	if (OidIsValid(partition))
		LockRelationOid(partition, AccessExclusiveLock);
	else
		(void) find_inheritance_children(rels.events, AccessExclusiveLock);
	EsSpiBegin(&spi, &rels);
	initStringInfo(&sql);
	appendStringInfo(&sql, "SELECT pg_catalog.count(*) FROM %s",
					 OidIsValid(partition) ?
					 quote_qualified_identifier(get_namespace_name(get_rel_namespace(partition)),
												get_rel_name(partition)) :
					 EsQualifiedName(&rels, "es_stored_events"));
	PushActiveSnapshot(GetLatestSnapshot());
	if (SPI_execute(sql.data, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "eventsourcing: could not count the recorded events");
	PopActiveSnapshot();
	events = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	EsSpiEnd(&spi);
	if (events > 0)
		ereport(ERROR,
				(errcode(ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST),
				 errmsg("%s would %s the " INT64_FORMAT " recorded events of %s \"%s\"%s",
						GetCommandTagName(trigdata->tag), detach ? "take" : "delete", events,
						OidIsValid(partition) ? "partition" : "extension",
						OidIsValid(partition) ? get_rel_name(partition) : ES_EXTENSION_NAME,
						detach ? " out of the log" : ""),
				 OidIsValid(partition) ?
				 errdetail("Recorded events are append-only: the partition holds one application's log, which its seals and chains still cover.") :
				 errdetail("Recorded events are append-only: dropping the extension drops them, with their seals, keys and tracking positions."),
				 errhint("Dump them first (pg_dump keeps them); then a superuser can SET eventsourcing.allow_rewrite = on and drop it.")));
	PG_RETURN_VOID();
}

/* Settings of the integrity module. */
void
EsIntegrityInit(void)
{
	DefineCustomBoolVariable("eventsourcing.allow_rewrite",
							 "Lets UPDATE, DELETE and TRUNCATE change recorded events and seals (superusers only).",
							 "The administrative path around the append-only guard; es_verify_log reports what was changed.",
							 &es_allow_rewrite,
							 false,
							 PGC_SUSET, 0,
							 NULL, NULL, NULL);
}
