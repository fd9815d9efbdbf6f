/*
 * catalog.c
 *		The extension's tables, application look-up, argument checks, and SPI
 *		as the extension's owner.
 *
 * The tables live in the extension's schema.  Their OIDs, the extension's
 * owner and the ids of applications are cached per backend; a relcache
 * invalidation of any of our tables (DROP EXTENSION drops them, ALTER
 * EXTENSION UPDATE alters them) or a full reset empties the caches.
 * Applications are never renamed or deleted through the API, and an id is
 * cached only once its row is committed.
 *
 * Ordinary roles hold no privilege on the tables: the functions are the only
 * way in.  Heap and index access bypasses table privileges; the few SQL
 * statements run through EsSpiBegin, as the owner, with a pinned search_path
 * and qualified names and operators, so nothing a caller or a database owner
 * puts on a search_path is ever called.  Who may do what is decided by
 * access.c before any of this runs.
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/indexing.h"
#include "catalog/index.h"
#include "catalog/namespace.h"
#include "catalog/partition.h"
#include "catalog/pg_inherits.h"
#include "catalog/pg_collation.h"
#include "catalog/pg_extension.h"
#include "common/hashfn.h"
#include "storage/lmgr.h"
#include "storage/lock.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "executor/tuptable.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

#include "catalog.h"

static Oid
EsRelid(Oid nsp, const char *relname)
{
	Oid			relid = get_relname_relid(relname, nsp);

	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("relation \"%s\" is missing from the eventsourcing extension's schema", relname),
				 errhint("Reinstall the extension, or run ALTER EXTENSION eventsourcing UPDATE.")));
	return relid;
}

typedef struct EsExtensionRow
{
	bool		found;
	Oid			namespace;
	Oid			owner;
	char	   *version;
} EsExtensionRow;

/* The extension's schema, owner and version (PostgreSQL 15 exports none). */
static EsExtensionRow
EsReadExtension(void)
{
	Relation	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tuple;
	EsExtensionRow row = {false, InvalidOid, InvalidOid, NULL};

	ScanKeyInit(&key, Anum_pg_extension_extname, BTEqualStrategyNumber, F_NAMEEQ,
				CStringGetDatum(ES_EXTENSION_NAME));
	scan = systable_beginscan(rel, ExtensionNameIndexId, true, NULL, 1, &key);
	tuple = systable_getnext(scan);
	if (HeapTupleIsValid(tuple))
	{
		Form_pg_extension ext = (Form_pg_extension) GETSTRUCT(tuple);
		bool		isnull;
		Datum		v = heap_getattr(tuple, Anum_pg_extension_extversion,
									 RelationGetDescr(rel), &isnull);

		row.found = true;
		row.namespace = ext->extnamespace;
		row.owner = ext->extowner;
		row.version = isnull ? pstrdup("?") : TextDatumGetCString(v);
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return row;
}

typedef struct EsAppCacheEntry
{
	char		name[ES_MAX_APPLICATION_BYTES + 1];	/* key, NUL-padded */
	int32		app_id;
	EsAppSettings settings;
} EsAppCacheEntry;

typedef struct EsLogCacheEntry
{
	int32		app_id;			/* key */
	EsLog		log;
} EsLogCacheEntry;

/* Column numbers of es_applications. */
#define Anum_es_app_id				1
#define Anum_es_app_name			2
#define Anum_es_app_compression		7
#define Anum_es_app_encryption		8
#define Anum_es_app_dictionary		9

static bool rels_valid = false;
static EsRelations rels_cache;
static HTAB *app_cache = NULL;
static HTAB *log_cache = NULL;	/* application id -> EsLog */
static bool callback_registered = false;

static void
EsInvalidateCaches(Datum arg, Oid relid)
{
	/*
	 * The logs first, valid or not: attaching, detaching or dropping a
	 * partition invalidates es_stored_events; replacing a partition's index
	 * invalidates the partition.
	 */
	if (log_cache != NULL)
	{
		bool		stale = relid == InvalidOid || relid == rels_cache.events;
		HASH_SEQ_STATUS seq;
		EsLogCacheEntry *entry;

		if (!stale)
		{
			hash_seq_init(&seq, log_cache);
			while ((entry = hash_seq_search(&seq)) != NULL)
			{
				if (entry->log.relid == relid)
				{
					hash_seq_term(&seq);
					stale = true;
					break;
				}
			}
		}
		if (stale)
		{
			hash_destroy(log_cache);
			log_cache = NULL;
		}
	}
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

/*
 * Fills *rels.  With missing_ok, returns false when the extension is not
 * installed here or is at another version than this library (the worker
 * then does nothing); otherwise those are errors.
 */
static bool
EsLookupRelationsExtended(EsRelations *rels, bool missing_ok)
{
	EsExtensionRow ext;

	if (rels_valid)
	{
		*rels = rels_cache;
		return true;
	}
	if (!callback_registered)
	{
		CacheRegisterRelcacheCallback(EsInvalidateCaches, (Datum) 0);
		callback_registered = true;
	}
	ext = EsReadExtension();
	if (!ext.found)
	{
		if (missing_ok)
			return false;
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("extension \"eventsourcing\" is not installed in this database"),
				 errhint("Run CREATE EXTENSION eventsourcing.")));
	}
	if (strcmp(ext.version, ES_VERSION) != 0)
	{
		if (missing_ok)
			return false;
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("extension \"eventsourcing\" is installed at version %s, but its library is version %s",
						ext.version, ES_VERSION),
				 errhint("Run ALTER EXTENSION eventsourcing UPDATE.")));
	}
	rels->namespace = ext.namespace;
	rels->owner = ext.owner;
	rels->applications = EsRelid(rels->namespace, "es_applications");
	rels->applications_name_idx = EsRelid(rels->namespace, "es_applications_name_key");
	rels->applications_pkey = EsRelid(rels->namespace, "es_applications_pkey");
	rels->events = EsRelid(rels->namespace, "es_stored_events");
	rels->tracking = EsRelid(rels->namespace, "es_tracking");
	rels->watermarks = EsRelid(rels->namespace, "es_watermarks");
	rels->watermarks_pkey = EsRelid(rels->namespace, "es_watermarks_pkey");
	rels->grants = EsRelid(rels->namespace, "es_grants");
	rels->grants_pkey = EsRelid(rels->namespace, "es_grants_pkey");
	rels->keys = EsRelid(rels->namespace, "es_keys");
	rels->keys_pkey = EsRelid(rels->namespace, "es_keys_pkey");
	rels->dictionaries = EsRelid(rels->namespace, "es_dictionaries");
	rels->dictionaries_pkey = EsRelid(rels->namespace, "es_dictionaries_pkey");
	rels->dcb_index = EsRelid(rels->namespace, "es_dcb_index");
	rels->dcb_index_pkey = EsRelid(rels->namespace, "es_dcb_index_pkey");
	rels_cache = *rels;
	rels_valid = true;
	return true;
}

void
EsLookupRelations(EsRelations *rels)
{
	(void) EsLookupRelationsExtended(rels, false);
}

/* For the worker: false when the extension is not installed here (at our version). */
bool
EsLookupRelationsIfInstalled(EsRelations *rels)
{
	return EsLookupRelationsExtended(rels, true);
}

char *
EsQualifiedName(const EsRelations *rels, const char *relname)
{
	return quote_qualified_identifier(get_namespace_name(rels->namespace), relname);
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

int64
EsArgInt64(FunctionCallInfo fcinfo, int argno, const char *name)
{
	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be NULL", name)));
	return PG_GETARG_INT64(argno);
}

int32
EsArgInt32(FunctionCallInfo fcinfo, int argno, const char *name)
{
	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be NULL", name)));
	return PG_GETARG_INT32(argno);
}

char *
EsUuidOut(const pg_uuid_t *uuid)
{
	return DatumGetCString(DirectFunctionCall1(uuid_out, UUIDPGetDatum(uuid)));
}

/*
 * The id of an application, or 0 when there is none of that name; and its
 * settings, when asked.  es_configure invalidates the cache.
 *
 * Uses the latest snapshot so that an application created by a transaction
 * that committed after ours started (or earlier in ours) is found.
 */
int32
EsLookupApplicationId(const EsRelations *rels, text *name, EsAppSettings *settings)
{
	Relation	rel;
	SysScanDesc scan;
	ScanKeyData key;
	HeapTuple	tuple;
	int32		app_id = 0;
	bool		cacheable = true;
	Snapshot	snapshot;
	Size		len = VARSIZE_ANY_EXHDR(name);
	char		keybuf[ES_MAX_APPLICATION_BYTES + 1];
	EsAppCacheEntry *entry;
	EsAppSettings found_settings = {false, false, 0};

	if (len == 0 || len > ES_MAX_APPLICATION_BYTES)
		return 0;
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
	{
		if (settings)
			*settings = entry->settings;
		return entry->app_id;
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
		Datum		d = heap_getattr(tuple, Anum_es_app_id, RelationGetDescr(rel), &isnull);

		if (!isnull)
			app_id = DatumGetInt32(d);
		d = heap_getattr(tuple, Anum_es_app_compression, RelationGetDescr(rel), &isnull);
		found_settings.compression = !isnull && DatumGetBool(d);
		d = heap_getattr(tuple, Anum_es_app_encryption, RelationGetDescr(rel), &isnull);
		found_settings.encryption = !isnull && DatumGetBool(d);
		d = heap_getattr(tuple, Anum_es_app_dictionary, RelationGetDescr(rel), &isnull);
		found_settings.dictionary = isnull ? 0 : DatumGetInt32(d);
		/* Our own uncommitted row may still roll back: do not cache it. */
		if (TransactionIdIsCurrentTransactionId(HeapTupleHeaderGetXmin(tuple->t_data)))
			cacheable = false;
	}
	systable_endscan(scan);
	UnregisterSnapshot(snapshot);
	table_close(rel, AccessShareLock);

	if (app_id > 0 && cacheable && app_cache != NULL)
	{
		entry = hash_search(app_cache, keybuf, HASH_ENTER, NULL);
		entry->app_id = app_id;
		entry->settings = found_settings;
	}
	if (settings)
		*settings = found_settings;
	return app_id;
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

/* relid is a partition of es_stored_events (being detached, or not). */
bool
EsIsLogPartition(const EsRelations *rels, Oid relid, bool even_if_detaching)
{
	return OidIsValid(relid) && get_rel_relispartition(relid) &&
		get_partition_parent(relid, true) == rels->events &&
		(even_if_detaching || !PartitionHasPendingDetach(relid));
}

/* The index `name` of the extension's schema, if it is an index of relid. */
static Oid
EsIndexOf(const EsRelations *rels, const char *name, Oid relid)
{
	Oid			index = get_relname_relid(name, rels->namespace);

	return OidIsValid(index) && IndexGetRelation(index, true) == relid ? index : InvalidOid;
}

/* Looks application app_id's log up in the catalogs (no lock, no cache). */
static bool
EsLookUpLog(const EsRelations *rels, int32 app_id, EsLog *log)
{
	char		name[NAMEDATALEN];

	snprintf(name, sizeof(name), "es_stored_events_%d", app_id);
	log->relid = get_relname_relid(name, rels->namespace);
	if (!EsIsLogPartition(rels, log->relid, false))
		return false;
	snprintf(name, sizeof(name), "es_stored_events_%d_pkey", app_id);
	log->pkey = EsIndexOf(rels, name, log->relid);
	snprintf(name, sizeof(name), "es_stored_events_%d_version_key", app_id);
	log->version_idx = EsIndexOf(rels, name, log->relid);
	return OidIsValid(log->pkey) && OidIsValid(log->version_idx);
}

static bool
EsCachedLog(int32 app_id, EsLog *log)
{
	EsLogCacheEntry *entry;

	if (log_cache == NULL)
		return false;
	entry = hash_search(log_cache, &app_id, HASH_FIND, NULL);
	if (entry == NULL)
		return false;
	*log = entry->log;
	return true;
}

/*
 * The partition of es_stored_events that holds application app_id's events,
 * locked (AccessShareLock, to the end of the transaction); false when there
 * is none (detached, being detached, dropped, or without its keys).
 *
 * Found by its name (es_add_log_partition names it) and checked to be a
 * partition of es_stored_events whose two keys are its own indexes, so a
 * table or index of that name made elsewhere is never read.  The lock is
 * what makes the answer last: DROP TABLE and DETACH PARTITION take
 * AccessExclusiveLock on the partition, so they wait for every call that
 * found it, and a call that waited for them finds, once it holds the lock
 * (which reads the invalidation queue), that the cached answer is gone and
 * looks again.  (The worker lets go of the lock at once, es_keep_log_locks:
 * holding it while it writes watermarks would deadlock with DROP EXTENSION;
 * it only reads, and a partition dropped under it ends its round with an
 * error, after which it starts again.)  Cached per backend until the relcache entry of
 * es_stored_events (attaching, detaching or dropping a partition) or of the
 * partition (its indexes replaced) is invalidated.
 *
 * The C paths scan and insert into the partition itself, never through the
 * parent: index scans and table_tuple_insert need a leaf, and skipping
 * partition routing keeps the append path as short as before.  Attribute
 * numbers are the parent's (es_add_log_partition makes partitions LIKE the
 * parent, and es_drop_guard refuses ALTER TABLE of the parent).
 */
bool		es_keep_log_locks = true;

bool
EsFindLog(const EsRelations *rels, int32 app_id, EsLog *found)
{
	for (int tries = 0; tries < 3; tries++)
	{
		EsLog		log;
		EsLog		again;
		EsLogCacheEntry *entry;

		if (!EsCachedLog(app_id, &log) && !EsLookUpLog(rels, app_id, &log))
			return false;
		LockRelationOid(log.relid, AccessShareLock);
		if (EsCachedLog(app_id, &again) && again.relid == log.relid)
		{
			*found = again;
			if (!es_keep_log_locks)
				UnlockRelationOid(log.relid, AccessShareLock);
			return true;
		}
		/* Not cached, or dropped from the cache while we waited: check it. */
		if (EsLookUpLog(rels, app_id, &again) && again.relid == log.relid)
		{
			if (log_cache == NULL)
			{
				HASHCTL		info;

				info.keysize = sizeof(int32);
				info.entrysize = sizeof(EsLogCacheEntry);
				info.hcxt = CacheMemoryContext;
				log_cache = hash_create("eventsourcing logs", 16, &info,
										HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
			}
			entry = hash_search(log_cache, &app_id, HASH_ENTER, NULL);
			entry->log = again;
			*found = again;
			if (!es_keep_log_locks)
				UnlockRelationOid(log.relid, AccessShareLock);
			return true;
		}
		UnlockRelationOid(log.relid, AccessShareLock);
	}
	return false;
}

/* EsFindLog, for an application that must have its log. */
EsLog
EsLogOf(const EsRelations *rels, int32 app_id)
{
	EsLog		log;

	if (!EsFindLog(rels, app_id, &log))
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("the log of application %d is missing: \"es_stored_events_%d\" is not a partition of es_stored_events with its keys",
						app_id, app_id),
				 errhint("Restore the table from a dump, or ATTACH it back to es_stored_events (with its indexes es_stored_events_%d_pkey and es_stored_events_%d_version_key).",
						 app_id, app_id)));
	return log;
}

/*
 * One attribute of the last row of an application's log, in `index` order,
 * whose leading index columns equal `keys` (the application, and maybe the
 * aggregate), as seen by `snapshot`.  False when there is no such row.
 */
bool
EsLastEventAttr(const EsLog *log, Oid index, Snapshot snapshot,
				ScanKey keys, int nkeys, int attno, Datum *value)
{
	Relation	events = table_open(log->relid, AccessShareLock);
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

/* Distinguishes our aggregate locks from user advisory locks (which use 1, 2). */
#define ES_AGGREGATE_LOCK_CLASS 0x4553

/*
 * The lock of one aggregate: held by its writers (append.c) and by
 * es_forget (keys.c) until the end of the transaction.
 */
void
EsLockAggregate(int32 app_id, const pg_uuid_t *originator_id)
{
	LOCKTAG		tag;

	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, (uint32) app_id,
						 hash_bytes(originator_id->data, UUID_LEN),
						 ES_AGGREGATE_LOCK_CLASS);
	(void) LockAcquire(&tag, ExclusiveLock, false, false);

	/*
	 * What committed while we waited (an es_forget, a new data key) must be
	 * seen now: advisory locks, unlike relation locks, do not read the
	 * invalidation queue.
	 */
	AcceptInvalidationMessages();
}

/* search_path = pg_catalog, pg_temp until the current GUC nest level ends. */
static void
EsPinSearchPath(void)
{
	(void) set_config_option("search_path", "pg_catalog, pg_temp",
							 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
}

void
EsSpiBegin(EsSpi *spi, const EsRelations *rels)
{
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "eventsourcing: SPI_connect failed");
	GetUserIdAndSecContext(&spi->save_userid, &spi->save_sec_context);
	SetUserIdAndSecContext(rels->owner,
						   spi->save_sec_context | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
	spi->guc_level = NewGUCNestLevel();
	EsPinSearchPath();
}

void
EsSpiEnd(EsSpi *spi)
{
	AtEOXact_GUC(true, spi->guc_level);
	SetUserIdAndSecContext(spi->save_userid, spi->save_sec_context);
	SPI_finish();
}
