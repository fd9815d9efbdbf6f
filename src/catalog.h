/*
 * catalog.h
 *		The extension's tables, application look-up, argument checks, and SPI
 *		run as the extension's owner with a pinned search_path.
 */
#ifndef ES_CATALOG_H
#define ES_CATALOG_H

#include "eventsourcing.h"

#include "access/skey.h"
#include "fmgr.h"
#include "utils/snapshot.h"
#include "utils/uuid.h"

/* The OIDs of the extension's relations and its owner, cached per backend. */
typedef struct EsRelations
{
	Oid			namespace;		/* the extension's schema */
	Oid			owner;			/* the extension's owner: holds every privilege */
	Oid			applications;	/* es_applications */
	Oid			applications_name_idx;
	Oid			applications_pkey;
	Oid			events;			/* es_stored_events: partitioned, see EsLog */
	Oid			tracking;		/* es_tracking */
	Oid			watermarks;		/* es_watermarks */
	Oid			watermarks_pkey;
	Oid			grants;			/* es_grants */
	Oid			grants_pkey;	/* (application_id, grantee, privilege) */
	Oid			keys;			/* es_keys */
	Oid			keys_pkey;		/* (application_id, originator_id) */
	Oid			dictionaries;	/* es_dictionaries */
	Oid			dictionaries_pkey;	/* (application_id, dictionary_id) */
	Oid			dcb_index;		/* es_dcb_index */
	Oid			dcb_index_pkey; /* (application_id, kind, value, notification_id) */
} EsRelations;

/*
 * One application's log: its partition of es_stored_events (LIST by
 * application_id, made by es_create_application) and the partition's two
 * indexes.  Scans and inserts go to the partition directly (index scans and
 * table_tuple_insert need a leaf); SQL may use the parent.
 */
typedef struct EsLog
{
	Oid			relid;			/* es_stored_events_<application id> */
	Oid			pkey;			/* (application_id, notification_id) */
	Oid			version_idx;	/* (application_id, originator_id,
								 * originator_version) */
} EsLog;

/* An application's settings that the append and read paths need. */
typedef struct EsAppSettings
{
	bool		compression;
	bool		encryption;
	int32		dictionary;		/* the preset dictionary to compress with, or 0 */
} EsAppSettings;

extern void EsLookupRelations(EsRelations *rels);
extern bool EsLookupRelationsIfInstalled(EsRelations *rels);
extern char *EsQualifiedName(const EsRelations *rels, const char *relname);
extern int32 EsLookupApplicationId(const EsRelations *rels, text *name, EsAppSettings *settings);
extern void EsLockAggregate(int32 app_id, const pg_uuid_t *originator_id);
extern char *EsApplicationName(const EsRelations *rels, int32 app_id);
extern bool EsIsLogPartition(const EsRelations *rels, Oid relid, bool even_if_detaching);
extern bool es_keep_log_locks;
extern bool EsFindLog(const EsRelations *rels, int32 app_id, EsLog *found);
extern EsLog EsLogOf(const EsRelations *rels, int32 app_id);
extern bool EsLastEventAttr(const EsLog *log, Oid index, Snapshot snapshot,
							ScanKey keys, int nkeys, int attno, Datum *value);

/* Arguments: never NULL (the functions are not STRICT, to name the argument). */
extern text *EsArgApplication(FunctionCallInfo fcinfo, int argno);
extern pg_uuid_t *EsArgUuid(FunctionCallInfo fcinfo, int argno, const char *name);
extern int64 EsArgInt64(FunctionCallInfo fcinfo, int argno, const char *name);
extern int32 EsArgInt32(FunctionCallInfo fcinfo, int argno, const char *name);
extern char *EsUuidOut(const pg_uuid_t *uuid);

/*
 * SPI for the extension's own tables: runs as the extension's owner (ordinary
 * roles have no privilege on the tables) with search_path pinned to
 * pg_catalog, pg_temp.  Every statement also names its tables with their
 * schema and its operators as OPERATOR(pg_catalog.op).  An error unwinds the
 * user and the setting with the (sub)transaction.
 */
typedef struct EsSpi
{
	Oid			save_userid;
	int			save_sec_context;
	int			guc_level;
} EsSpi;

extern void EsSpiBegin(EsSpi *spi, const EsRelations *rels);
extern void EsSpiEnd(EsSpi *spi);

#endif							/* ES_CATALOG_H */
