/*
 * access.h
 *		The one way into an application: look it up, check the caller's
 *		privilege on it (access.c).
 */
#ifndef ES_ACCESS_H
#define ES_ACCESS_H

#include "catalog.h"

/* Privileges on an application (bits); admin implies all the others. */
#define ES_PRIV_READ		(1 << 0)
#define ES_PRIV_APPEND		(1 << 1)
#define ES_PRIV_TRACK		(1 << 2)
#define ES_PRIV_VERIFY		(1 << 3)
#define ES_PRIV_SEAL		(1 << 4)
#define ES_PRIV_ADMIN		(1 << 5)
#define ES_PRIV_CREATE		(1 << 6)	/* database-wide: create applications */
#define ES_PRIV_ALL			0x7f

/* An application opened by an entry point, with the caller's privilege checked. */
typedef struct EsApp
{
	EsRelations rels;
	int32		id;
	EsLog		log;			/* its partition of es_stored_events */
	text	   *name;
	char	   *cname;
	EsAppSettings settings;
} EsApp;

extern void EsOpenApp(EsApp *app, FunctionCallInfo fcinfo, int argno, uint32 required);
extern void EsOpenAppByName(EsApp *app, text *name, uint32 required);
extern uint32 EsPrivilegesOf(const EsRelations *rels, int32 app_id);

#endif							/* ES_ACCESS_H */
