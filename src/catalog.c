/*
 * catalog.c
 *		The extension's tables, application look-up, and argument checks.
 *
 * The tables live in the extension's schema.  Their OIDs, and the ids of
 * applications, are cached per backend; a relcache invalidation of any of
 * our tables (DROP EXTENSION drops them) or a full reset empties the caches.
 * Applications are never renamed or deleted through the extension's API, and
 * an id is cached only once the row is committed.  Reads and writes go straight to the heap and indexes, which
 * bypasses the executor's permission checks, so every SQL entry point checks
 * the caller's privilege on es_stored_events itself: table privileges are the
 * extension's privilege model.
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/relscan.h"
#include "access/tableam.h"
#include "executor/tuptable.h"
#include "utils/datum.h"
#include "access/xact.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/namespace.h"
#include "catalog/indexing.h"
#include "catalog/pg_collation.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_namespace.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/memutils.h"
#include "utils/lsyscache.h"
#include "utils/snapmgr.h"

#include "eventsourcing.h"

static Oid
EsRelid(Oid nsp, const char *relname)
{
	Oid			relid = get_relname_relid(relname, nsp);

	if (!OidIsValid(relid))
		elog(ERROR, "eventsourcing: relation \"%s\" is missing from the extension's schema",
			 relname);
	return relid;
}

/* The schema of an extension (PostgreSQL 15 does not export this). */
static Oid
EsExtensionSchema(Oid ext)
{
	Relation	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tuple;
	Oid			nsp = InvalidOid;

	ScanKeyInit(&key, Anum_pg_extension_oid, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(ext));
	scan = systable_beginscan(rel, ExtensionOidIndexId, true, NULL, 1, &key);
	tuple = systable_getnext(scan);
	if (HeapTupleIsValid(tuple))
		nsp = ((Form_pg_extension) GETSTRUCT(tuple))->extnamespace;
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return nsp;
}

/* For the worker: false when the extension is not installed here. */
bool
EsLookupRelationsIfInstalled(EsRelations *rels)
{
	if (!OidIsValid(get_extension_oid("eventsourcing", true)))
		return false;
	EsLookupRelations(rels);
	return true;
}

typedef struct EsAppCacheEntry
{
	char		name[ES_MAX_APPLICATION_BYTES + 1];	/* key, NUL-padded */
	int32		app_id;
} EsAppCacheEntry;

static bool rels_valid = false;
static EsRelations rels_cache;
static HTAB *app_cache = NULL;
static bool callback_registered = false;

static void
EsInvalidateCaches(Datum arg, Oid relid)
{
	if (!rels_valid)
		return;
	if (relid == InvalidOid || relid == rels_cache.events ||
		relid == rels_cache.applications || relid == rels_cache.tracking ||
		relid == rels_cache.watermarks)
	{
		rels_valid = false;
		if (app_cache != NULL)
		{
			hash_destroy(app_cache);
			app_cache = NULL;
		}
	}
}

void
EsLookupRelations(EsRelations *rels)
{
	Oid			ext;

	if (rels_valid)
	{
		*rels = rels_cache;
		return;
	}
	if (!callback_registered)
	{
		CacheRegisterRelcacheCallback(EsInvalidateCaches, (Datum) 0);
		callback_registered = true;
	}
	ext = get_extension_oid("eventsourcing", true);

	if (!OidIsValid(ext))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("extension \"eventsourcing\" is not installed in this database"),
				 errhint("Run CREATE EXTENSION eventsourcing.")));
	rels->namespace = EsExtensionSchema(ext);
	rels->applications = EsRelid(rels->namespace, "es_applications");
	rels->applications_name_idx = EsRelid(rels->namespace, "es_applications_name_key");
	rels->applications_pkey = EsRelid(rels->namespace, "es_applications_pkey");
	rels->events = EsRelid(rels->namespace, "es_stored_events");
	rels->events_pkey = EsRelid(rels->namespace, "es_stored_events_pkey");
	rels->events_version_idx = EsRelid(rels->namespace, "es_stored_events_version_key");
	rels->tracking = EsRelid(rels->namespace, "es_tracking");
	rels->watermarks = EsRelid(rels->namespace, "es_watermarks");
	rels->watermarks_pkey = EsRelid(rels->namespace, "es_watermarks_pkey");
	rels_cache = *rels;
	rels_valid = true;
}

char *
EsQualifiedName(const EsRelations *rels, const char *relname)
{
	return quote_qualified_identifier(get_namespace_name(rels->namespace), relname);
}

void
EsCheckTablePrivilege(Oid relid, AclMode mode)
{
	AclResult	result = pg_class_aclcheck(relid, GetUserId(), mode);

	if (result != ACLCHECK_OK)
		aclcheck_error(result, OBJECT_TABLE, get_rel_name(relid));
}

/* The application argument: never NULL (callers are not STRICT). */
text *
EsArgApplication(FunctionCallInfo fcinfo, int argno)
{
	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("application must not be NULL")));
	return PG_GETARG_TEXT_PP(argno);
}

/* A uuid argument, never NULL. */
pg_uuid_t *
EsArgUuid(FunctionCallInfo fcinfo, int argno, const char *name)
{
	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be NULL", name)));
	return PG_GETARG_UUID_P(argno);
}

/*
 * The id of an application, or an error naming es_create_application.
 *
 * Uses the latest snapshot so that an application created by a transaction
 * that committed after ours started (or earlier in ours) is found.
 */
int32
EsLookupApplication(const EsRelations *rels, text *name)
{
	Relation	rel;
	SysScanDesc scan;
	ScanKeyData key;
	HeapTuple	tuple;
	int32		app_id = 0;
	bool		found = false;
	bool		cacheable = false;
	Snapshot	snapshot;
	Size		len = VARSIZE_ANY_EXHDR(name);
	char		keybuf[ES_MAX_APPLICATION_BYTES + 1];

	if (len <= ES_MAX_APPLICATION_BYTES)
	{
		EsAppCacheEntry *entry;

		memset(keybuf, 0, sizeof(keybuf));
		memcpy(keybuf, VARDATA_ANY(name), len);
		if (app_cache == NULL)
		{
			HASHCTL		info;

			info.keysize = sizeof(keybuf);
			info.entrysize = sizeof(EsAppCacheEntry);
			info.hcxt = CacheMemoryContext;
			app_cache = hash_create("eventsourcing applications", 16, &info,
									HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
		}
		entry = hash_search(app_cache, keybuf, HASH_FIND, NULL);
		if (entry != NULL)
			return entry->app_id;
		cacheable = true;
	}

	rel = table_open(rels->applications, AccessShareLock);
	ScanKeyInit(&key, 2, BTEqualStrategyNumber, F_TEXTEQ, PointerGetDatum(name));
	key.sk_collation = C_COLLATION_OID;
	snapshot = RegisterSnapshot(GetLatestSnapshot());
	scan = systable_beginscan(rel, rels->applications_name_idx, true, snapshot, 1, &key);
	tuple = systable_getnext(scan);
	if (HeapTupleIsValid(tuple))
	{
		bool		isnull;

		app_id = DatumGetInt32(heap_getattr(tuple, 1, RelationGetDescr(rel), &isnull));
		found = !isnull;
		/* Our own uncommitted row may still roll back: do not cache it. */
		if (TransactionIdIsCurrentTransactionId(HeapTupleHeaderGetXmin(tuple->t_data)))
			cacheable = false;
	}
	systable_endscan(scan);
	UnregisterSnapshot(snapshot);
	table_close(rel, AccessShareLock);

	if (found && cacheable && app_cache != NULL)
	{
		EsAppCacheEntry *entry = hash_search(app_cache, keybuf, HASH_ENTER, NULL);

		entry->app_id = app_id;
	}
	if (!found)
	{
		char	   *cname = text_to_cstring(name);

		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("application \"%s\" does not exist", cname),
				 errhint("Create it with es_create_application(%s).",
						 quote_literal_cstr(cname))));
	}
	return app_id;
}

/*
 * es_create_application(name text) RETURNS void
 *
 * Creating an application that exists is harmless.  Runs with the caller's
 * privileges (INSERT on es_applications).
 */
PG_FUNCTION_INFO_V1(es_create_application);
Datum
es_create_application(PG_FUNCTION_ARGS)
{
	EsRelations rels;
	text	   *name = EsArgApplication(fcinfo, 0);
	Size		len = VARSIZE_ANY_EXHDR(name);
	StringInfoData sql;
	Oid			argtypes[1] = {TEXTOID};
	Datum		values[1];

	if (len == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("application must not be empty")));
	if (len > ES_MAX_APPLICATION_BYTES)
		ereport(ERROR,
				(errcode(ERRCODE_STRING_DATA_RIGHT_TRUNCATION),
				 errmsg("application name is too long"),
				 errdetail("The name has %zu bytes; the limit is %d.",
						   len, ES_MAX_APPLICATION_BYTES)));

	EsLookupRelations(&rels);
	initStringInfo(&sql);
	appendStringInfo(&sql,
					 "INSERT INTO %s (name) VALUES ($1) ON CONFLICT (name) DO NOTHING",
					 EsQualifiedName(&rels, "es_applications"));
	values[0] = PointerGetDatum(name);

	SPI_connect();
	if (SPI_execute_with_args(sql.data, 1, argtypes, values, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "eventsourcing: could not insert into es_applications");
	SPI_finish();
	PG_RETURN_VOID();
}

/* The name of an application by id, or NULL (latest snapshot). */
char *
EsApplicationName(const EsRelations *rels, int32 app_id)
{
	Relation	rel = table_open(rels->applications, AccessShareLock);
	Snapshot	snapshot = RegisterSnapshot(GetLatestSnapshot());
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tuple;
	char	   *name = NULL;

	ScanKeyInit(&key, 1, BTEqualStrategyNumber, F_INT4EQ, Int32GetDatum(app_id));
	scan = systable_beginscan(rel, rels->applications_pkey, true, snapshot, 1, &key);
	tuple = systable_getnext(scan);
	if (HeapTupleIsValid(tuple))
	{
		bool		isnull;
		Datum		d = heap_getattr(tuple, 2, RelationGetDescr(rel), &isnull);

		if (!isnull)
			name = TextDatumGetCString(d);
	}
	systable_endscan(scan);
	UnregisterSnapshot(snapshot);
	table_close(rel, AccessShareLock);
	return name;
}

/*
 * One attribute of the last row of es_stored_events, in `index` order, whose
 * leading index columns equal `keys` (the application, and maybe the
 * aggregate), as seen by `snapshot`.  False when there is no such row.
 */
bool
EsLastEventAttr(const EsRelations *rels, Oid index, Snapshot snapshot,
				ScanKey keys, int nkeys, int attno, Datum *value)
{
	Relation	events = table_open(rels->events, AccessShareLock);
	Relation	idx = index_open(index, AccessShareLock);
	TupleTableSlot *slot = table_slot_create(events, NULL);
	IndexScanDesc scan = index_beginscan(events, idx, snapshot, nkeys, 0);
	bool		found = false;

	index_rescan(scan, keys, nkeys, NULL, 0);
	if (index_getnext_slot(scan, BackwardScanDirection, slot))
	{
		bool		isnull;
		Form_pg_attribute att = TupleDescAttr(RelationGetDescr(events), attno - 1);

		*value = datumCopy(slot_getattr(slot, attno, &isnull), att->attbyval, att->attlen);
		found = !isnull;
	}
	index_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
	index_close(idx, AccessShareLock);
	table_close(events, AccessShareLock);
	return found;
}
