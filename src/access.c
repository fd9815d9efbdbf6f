/*
 * access.c
 *		The entry skeleton, and per-application privileges.
 *
 * THE SKELETON
 *
 * Every SQL entry point that touches an application goes through EsOpenApp
 * (as amcheck's checks go through one function): it checks the application
 * argument, finds the extension's relations (and that the catalog is at this
 * library's version), looks the application up, and checks that the caller
 * holds the privilege the function needs, before the function reads or
 * writes anything.  Functions then lock what they touch themselves (the
 * append path its aggregates, es_seal its application's seals).
 *
 * THE PRIVILEGES
 *
 * Privileges are per application: read, append, track, verify, seal and
 * admin (which implies the others and lets its holder grant and revoke on
 * the application), plus the database-wide create (make applications).  They
 * are rows of es_grants (application_id 0: every application, present and
 * future; grantee 0: PUBLIC), granted with es_grant and revoked with
 * es_revoke.  The extension's owner, and so every superuser, holds all of
 * them; whoever creates an application is granted admin on it.  Role
 * membership counts as for table privileges (has_privs_of_role).
 *
 * Ordinary roles hold no privilege on the tables: only the functions get in.
 * A role with no privilege at all on an application is told it does not
 * exist, exactly as for an unknown name; one with some privilege but not the
 * needed one gets 42501.  es_create_application is the one place that tells
 * a taken name (42710), as any unique name must.
 *
 * THE CACHE
 *
 * A backend caches, per (role, application), the privileges it found.  Every
 * grant and revoke sends a relcache invalidation of es_grants at commit, and
 * a change of role membership or of a role (pg_auth_members, pg_authid)
 * arrives as a syscache invalidation: either empties the cache.
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"

#include "access.h"

static const struct
{
	const char *name;
	uint32		bit;
}			es_privilege_names[] =
{
	{"read", ES_PRIV_READ},
	{"append", ES_PRIV_APPEND},
	{"track", ES_PRIV_TRACK},
	{"verify", ES_PRIV_VERIFY},
	{"seal", ES_PRIV_SEAL},
	{"admin", ES_PRIV_ADMIN},
	{"create", ES_PRIV_CREATE},
};

static uint32
EsPrivilegeBit(const char *name)
{
	for (int i = 0; i < lengthof(es_privilege_names); i++)
		if (strcmp(es_privilege_names[i].name, name) == 0)
			return es_privilege_names[i].bit;
	return 0;
}

static const char *
EsPrivilegeName(uint32 bits)
{
	for (int i = 0; i < lengthof(es_privilege_names); i++)
		if (bits & es_privilege_names[i].bit)
			return es_privilege_names[i].name;
	return "?";
}

typedef struct EsPrivKey
{
	Oid			roleid;
	int32		app_id;
} EsPrivKey;

typedef struct EsPrivEntry
{
	EsPrivKey	key;
	uint32		privileges;
} EsPrivEntry;

static HTAB *priv_cache = NULL;
static Oid	priv_cache_grants = InvalidOid;
static bool priv_callbacks = false;

static void
EsPrivCacheReset(void)
{
	if (priv_cache != NULL)
	{
		hash_destroy(priv_cache);
		priv_cache = NULL;
	}
}

static void
EsPrivRelcacheCallback(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == priv_cache_grants)
		EsPrivCacheReset();
}

static void
EsPrivSyscacheCallback(Datum arg, int cacheid, uint32 hashvalue)
{
	EsPrivCacheReset();
}

/* The grants of one application id (0: those for every application). */
static uint32
EsScanGrants(const EsRelations *rels, Oid roleid, int32 app_id)
{
	Relation	rel = table_open(rels->grants, AccessShareLock);
	Snapshot	snapshot = RegisterSnapshot(GetLatestSnapshot());
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tuple;
	uint32		privileges = 0;

	ScanKeyInit(&key, 1, BTEqualStrategyNumber, F_INT4EQ, Int32GetDatum(app_id));
	scan = systable_beginscan(rel, rels->grants_pkey, true, snapshot, 1, &key);
	while (HeapTupleIsValid(tuple = systable_getnext(scan)))
	{
		bool		isnull;
		Oid			grantee = DatumGetObjectId(heap_getattr(tuple, 2, RelationGetDescr(rel), &isnull));
		Datum		priv = heap_getattr(tuple, 3, RelationGetDescr(rel), &isnull);

		CHECK_FOR_INTERRUPTS();
		if (isnull)
			continue;
		if (grantee == InvalidOid || has_privs_of_role(roleid, grantee))
			privileges |= EsPrivilegeBit(TextDatumGetCString(priv));
	}
	systable_endscan(scan);
	UnregisterSnapshot(snapshot);
	table_close(rel, AccessShareLock);
	return privileges;
}

/*
 * The privileges the current user holds on an application (app_id 0: the
 * database-wide ones, such as create).  Admin is expanded to all.
 */
uint32
EsPrivilegesOf(const EsRelations *rels, int32 app_id)
{
	Oid			roleid = GetUserId();
	EsPrivKey	key;
	EsPrivEntry *entry;
	bool		found;
	uint32		privileges;

	if (has_privs_of_role(roleid, rels->owner))
		return ES_PRIV_ALL;

	if (!priv_callbacks)
	{
		CacheRegisterRelcacheCallback(EsPrivRelcacheCallback, (Datum) 0);
		CacheRegisterSyscacheCallback(AUTHMEMROLEMEM, EsPrivSyscacheCallback, (Datum) 0);
		CacheRegisterSyscacheCallback(AUTHOID, EsPrivSyscacheCallback, (Datum) 0);
		priv_callbacks = true;
	}
	if (priv_cache_grants != rels->grants)
	{
		EsPrivCacheReset();
		priv_cache_grants = rels->grants;
	}
	if (priv_cache == NULL)
	{
		HASHCTL		info;

		info.keysize = sizeof(EsPrivKey);
		info.entrysize = sizeof(EsPrivEntry);
		info.hcxt = CacheMemoryContext;
		priv_cache = hash_create("eventsourcing privileges", 16, &info,
								 HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	memset(&key, 0, sizeof(key));
	key.roleid = roleid;
	key.app_id = app_id;
	entry = hash_search(priv_cache, &key, HASH_FIND, NULL);
	if (entry != NULL)
		return entry->privileges;

	privileges = EsScanGrants(rels, roleid, 0);
	if (app_id != 0)
	{
		privileges &= ~ES_PRIV_CREATE;
		privileges |= EsScanGrants(rels, roleid, app_id);
	}
	if (privileges & ES_PRIV_ADMIN)
		privileges |= ES_PRIV_ALL & ~ES_PRIV_CREATE;

	/* The scans may have run invalidation callbacks: look again. */
	if (priv_cache != NULL)
	{
		entry = hash_search(priv_cache, &key, HASH_ENTER, &found);
		entry->privileges = privileges;
	}
	return privileges;
}

static void
EsNoSuchApplication(const char *cname)
{
	ereport(ERROR,
			(errcode(ERRCODE_UNDEFINED_OBJECT),
			 errmsg("application \"%s\" does not exist", cname),
			 errhint("Create it with es_create_application(%s), or ask its administrator for a privilege on it.",
					 quote_literal_cstr(cname))));
}

/*
 * The skeleton: the application named by `name`, whose `required`
 * privileges the caller must hold (0: any privilege at all).
 */
void
EsOpenAppByName(EsApp *app, text *name, uint32 required)
{
	uint32		held;

	app->name = name;
	app->cname = text_to_cstring(name);
	EsLookupRelations(&app->rels);
	app->id = EsLookupApplicationId(&app->rels, name, &app->settings);
	held = app->id > 0 ? EsPrivilegesOf(&app->rels, app->id) : 0;
	if (held == 0)
		EsNoSuchApplication(app->cname);
	if ((held & required) != required)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for application \"%s\"", app->cname),
				 errdetail("The %s privilege on it is needed.", EsPrivilegeName(required & ~held)),
				 errhint("Its administrator can grant it with es_grant(%s, role, '%s').",
						 quote_literal_cstr(app->cname), EsPrivilegeName(required & ~held))));
	app->log = EsLogOf(&app->rels, app->id);
}

void
EsOpenApp(EsApp *app, FunctionCallInfo fcinfo, int argno, uint32 required)
{
	EsOpenAppByName(app, EsArgApplication(fcinfo, argno), required);
}

/*
 * es_create_application(name text) RETURNS void
 *
 * Needs the create privilege.  The creator is granted admin on the new
 * application.  Creating one that exists does nothing if the caller has a
 * privilege on it, and is refused (42710) otherwise.
 */
PG_FUNCTION_INFO_V1(es_create_application);
Datum
es_create_application(PG_FUNCTION_ARGS)
{
	EsRelations rels;
	text	   *name = EsArgApplication(fcinfo, 0);
	Size		len = VARSIZE_ANY_EXHDR(name);
	EsSpi		spi;
	StringInfoData sql;
	Oid			argtypes[2] = {TEXTOID, OIDOID};
	Datum		values[2];
	int32		app_id = 0;
	bool		isnull;
	bool		is_owner;

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
	if (!(EsPrivilegesOf(&rels, 0) & ES_PRIV_CREATE))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to create applications"),
				 errhint("The extension's owner can grant it with es_grant(NULL, role, 'create').")));
	PreventCommandIfReadOnly("es_create_application()");

	values[0] = PointerGetDatum(name);
	values[1] = ObjectIdGetDatum(GetUserId());
	is_owner = has_privs_of_role(GetUserId(), rels.owner);
	EsSpiBegin(&spi, &rels);
	initStringInfo(&sql);
	appendStringInfo(&sql,
					 "INSERT INTO %s (name) VALUES ($1) ON CONFLICT (name) DO NOTHING RETURNING id",
					 EsQualifiedName(&rels, "es_applications"));
	if (SPI_execute_with_args(sql.data, 1, argtypes, values, NULL, false, 0) != SPI_OK_INSERT_RETURNING)
		elog(ERROR, "eventsourcing: could not insert into es_applications");
	if (SPI_processed == 1)
	{
		Datum		pvalue;
		Oid			ptype = INT4OID;

		app_id = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
		/* Its log: a partition of es_stored_events (see the install script). */
		pvalue = Int32GetDatum(app_id);
		if (SPI_execute_with_args("SELECT eventsourcing_internal.es_add_log_partition($1)",
								  1, &ptype, &pvalue, NULL, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "eventsourcing: could not make the log of the new application");
		/* The owner holds every privilege anyway; others become its admin. */
		if (!is_owner)
		{
			Datum		gvalues[2];
			Oid			gtypes[2] = {INT4OID, OIDOID};

			gvalues[0] = Int32GetDatum(app_id);
			gvalues[1] = ObjectIdGetDatum(spi.save_userid);
			resetStringInfo(&sql);
			appendStringInfo(&sql,
							 "INSERT INTO %s (application_id, grantee, privilege, granted_by) "
							 "VALUES ($1, $2, 'admin', $2)",
							 EsQualifiedName(&rels, "es_grants"));
			if (SPI_execute_with_args(sql.data, 2, gtypes, gvalues, NULL, false, 0) != SPI_OK_INSERT)
				elog(ERROR, "eventsourcing: could not grant admin on the new application");
			CacheInvalidateRelcacheByRelid(rels.grants);
		}
	}
	EsSpiEnd(&spi);

	if (app_id == 0)
	{
		/* It exists: fine for those who may see it. */
		app_id = EsLookupApplicationId(&rels, name, NULL);
		if (app_id == 0 || EsPrivilegesOf(&rels, app_id) == 0)
			ereport(ERROR,
					(errcode(ERRCODE_DUPLICATE_OBJECT),
					 errmsg("application \"%s\" already exists", text_to_cstring(name)),
					 errdetail("You have no privilege on it."),
					 errhint("Choose another name, or ask its administrator for a privilege on it.")));
	}
	PG_RETURN_VOID();
}

/* The grantee argument: a role name, or PUBLIC (0). */
static Oid
EsArgGrantee(FunctionCallInfo fcinfo, int argno)
{
	char	   *name;

	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("role must not be NULL")));
	name = text_to_cstring(PG_GETARG_TEXT_PP(argno));
	if (pg_strcasecmp(name, "public") == 0)
		return InvalidOid;
	return get_role_oid(name, false);
}

static uint32
EsArgPrivilege(FunctionCallInfo fcinfo, int argno, bool database_wide)
{
	char	   *name;
	uint32		bit;

	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("privilege must not be NULL")));
	name = text_to_cstring(PG_GETARG_TEXT_PP(argno));
	bit = EsPrivilegeBit(name);
	if (bit == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown privilege \"%s\"", name),
				 errhint("Privileges are read, append, track, verify, seal, admin, and (with a NULL application) create.")));
	if (bit == ES_PRIV_CREATE && !database_wide)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("the create privilege is database-wide"),
				 errhint("Grant it with a NULL application: es_grant(NULL, role, 'create').")));
	return bit;
}

/*
 * The application of a grant or revoke: NULL is every application (and the
 * database-wide create), which only the extension's owner may hand out; a
 * name needs admin on it.  Returns the application id (0 for NULL).
 */
static int32
EsGrantTarget(FunctionCallInfo fcinfo, EsRelations *rels)
{
	EsApp		app;

	if (PG_ARGISNULL(0))
	{
		EsLookupRelations(rels);
		if (!has_privs_of_role(GetUserId(), rels->owner))
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("permission denied to grant or revoke privileges on every application"),
					 errhint("Only the extension's owner can; name an application you administer instead.")));
		return 0;
	}
	EsOpenApp(&app, fcinfo, 0, ES_PRIV_ADMIN);
	*rels = app.rels;
	return app.id;
}

static void
EsChangeGrant(FunctionCallInfo fcinfo, bool grant)
{
	EsRelations rels;
	int32		app_id = EsGrantTarget(fcinfo, &rels);
	Oid			grantee = EsArgGrantee(fcinfo, 1);
	uint32		bit = EsArgPrivilege(fcinfo, 2, app_id == 0);
	EsSpi		spi;
	StringInfoData sql;
	Oid			argtypes[4] = {INT4OID, OIDOID, TEXTOID, OIDOID};
	Datum		values[4];

	PreventCommandIfReadOnly(grant ? "es_grant()" : "es_revoke()");
	values[0] = Int32GetDatum(app_id);
	values[1] = ObjectIdGetDatum(grantee);
	values[2] = CStringGetTextDatum(EsPrivilegeName(bit));
	values[3] = ObjectIdGetDatum(GetUserId());
	EsSpiBegin(&spi, &rels);
	initStringInfo(&sql);
	if (grant)
		appendStringInfo(&sql,
						 "INSERT INTO %s (application_id, grantee, privilege, granted_by) "
						 "VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
						 EsQualifiedName(&rels, "es_grants"));
	else
		appendStringInfo(&sql,
						 "DELETE FROM %s WHERE application_id OPERATOR(pg_catalog.=) $1 "
						 "AND grantee OPERATOR(pg_catalog.=) $2 AND privilege OPERATOR(pg_catalog.=) $3",
						 EsQualifiedName(&rels, "es_grants"));
	if (SPI_execute_with_args(sql.data, grant ? 4 : 3, argtypes, values, NULL, false, 0) !=
		(grant ? SPI_OK_INSERT : SPI_OK_DELETE))
		elog(ERROR, "eventsourcing: could not change es_grants");
	EsSpiEnd(&spi);
	/* Every backend's privilege cache forgets, at commit. */
	CacheInvalidateRelcacheByRelid(rels.grants);
}

/* es_grant(application text, role text, privilege text) RETURNS void */
PG_FUNCTION_INFO_V1(es_grant);
Datum
es_grant(PG_FUNCTION_ARGS)
{
	EsChangeGrant(fcinfo, true);
	PG_RETURN_VOID();
}

/* es_revoke(application text, role text, privilege text) RETURNS void */
PG_FUNCTION_INFO_V1(es_revoke);
Datum
es_revoke(PG_FUNCTION_ARGS)
{
	EsChangeGrant(fcinfo, false);
	PG_RETURN_VOID();
}

/*
 * es_has_privilege(application text, privilege text) RETURNS boolean
 *
 * Whether the current user holds the privilege (NULL: any privilege) on the
 * application (NULL: database-wide).  False for an unknown application.
 */
PG_FUNCTION_INFO_V1(es_has_privilege);
Datum
es_has_privilege(PG_FUNCTION_ARGS)
{
	EsRelations rels;
	int32		app_id = 0;
	uint32		held;
	uint32		bit = 0;

	EsLookupRelations(&rels);
	if (!PG_ARGISNULL(1))
		bit = EsArgPrivilege(fcinfo, 1, PG_ARGISNULL(0));
	if (!PG_ARGISNULL(0))
	{
		app_id = EsLookupApplicationId(&rels, PG_GETARG_TEXT_PP(0), NULL);
		if (app_id == 0)
			PG_RETURN_BOOL(false);
	}
	held = EsPrivilegesOf(&rels, app_id);
	PG_RETURN_BOOL(bit == 0 ? held != 0 : (held & bit) != 0);
}
