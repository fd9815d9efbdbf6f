/*
 * eventsourcing.c
 *		Module load: GUCs and shared memory.
 *
 * The append path needs shared memory (the id counters and the in-flight
 * slots of ordering.c), so the library must be in shared_preload_libraries.
 * Without it, reads still work and es_append says what to do.
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/guc.h"

#include "eventsourcing.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;
static bool shmem_ready = false;

int			es_max_applications = 1024;

static void
EsShmemRequest(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(add_size(EsOrderingShmemSize(), EsWorkerShmemSize()));
	RequestNamedLWLockTranche("eventsourcing", 2);
}

static void
EsShmemStartup(void)
{
	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	EsOrderingShmemInit();
	EsWorkerShmemInit();
	shmem_ready = true;
}

/* True when the library was preloaded and its shared memory exists. */
bool
EsSharedMemoryReady(void)
{
	return shmem_ready;
}

void
_PG_init(void)
{
	DefineCustomBoolVariable("eventsourcing.allow_rewrite",
							 "Lets UPDATE, DELETE and TRUNCATE change recorded events and seals (superusers only).",
							 "The administrative path around the append-only guard; es_verify_log reports what was changed.",
							 &es_allow_rewrite,
							 false,
							 PGC_SUSET, 0,
							 NULL, NULL, NULL);
	DefineCustomIntVariable("eventsourcing.worker_naptime",
							"How often, at most, the eventsourcing worker looks for new events when not woken.",
							NULL,
							&es_worker_naptime,
							20, 1, 60000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomIntVariable("eventsourcing.seal_interval",
							"How often the eventsourcing worker seals every application's log (0: never).",
							"Seals chain digests of the notification log; see es_seal.",
							&es_seal_interval,
							0, 0, 86400,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);
	DefineCustomBoolVariable("eventsourcing.notify",
							 "Announces new events on each application's NOTIFY channel (from the background worker).",
							 NULL,
							 &es_notify,
							 true,
							 PGC_SIGHUP, 0,
							 NULL, NULL, NULL);
	DefineCustomIntVariable("eventsourcing.notify_interval",
							"The shortest time between two rounds of the eventsourcing worker (announcements are coalesced).",
							NULL,
							&es_notify_interval,
							5, 0, 1000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);
	if (!process_shared_preload_libraries_in_progress)
	{
		/* A PGC_POSTMASTER setting cannot be made after startup. */
		MarkGUCPrefixReserved("eventsourcing");
		return;
	}
	DefineCustomIntVariable("eventsourcing.max_applications",
							"Maximum number of applications (per cluster) that can be appended to since server start.",
							"Each application that is appended to uses one id counter in shared memory.",
							&es_max_applications,
							1024, 16, 1000000,
							PGC_POSTMASTER, 0,
							NULL, NULL, NULL);
	MarkGUCPrefixReserved("eventsourcing");

	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = EsShmemRequest;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = EsShmemStartup;
}
