/*
 * eventsourcing.c
 *		Module load: each module's settings, and shared memory.
 *
 * The append path needs shared memory (the id counters and the in-flight
 * slots of ordering.c, the per-database wake-up state of wakeup.c), so the
 * library must be in shared_preload_libraries.  Without it, reads still work
 * and es_append says what to do.
 *
 * Shared memory and its locks (the "eventsourcing" LWLock tranche):
 *	lock 0	the counters hash table (ordering.c)
 *	lock 1	the databases hash table and each worker's latch (wakeup.c)
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/guc.h"

#include "eventsourcing.h"
#include "keys.h"
#include "ordering.h"
#include "wakeup.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;
static bool shmem_ready = false;

static void
EsShmemRequest(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(add_size(add_size(EsOrderingShmemSize(), EsWakeupShmemSize()),
									EsKeysShmemSize()));
	RequestNamedLWLockTranche("eventsourcing", 2);
}

static void
EsShmemStartup(void)
{
	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	EsOrderingShmemInit();
	EsWakeupShmemInit();
	EsKeysShmemInit();
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
	bool		preloading = process_shared_preload_libraries_in_progress;

	EsIntegrityInit();
	EsWorkerInit();
	/* A PGC_POSTMASTER setting can only be made while preloading. */
	EsOrderingInit(preloading);
	EsKeysInit(preloading);
	MarkGUCPrefixReserved("eventsourcing");
	if (!preloading)
		return;

	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = EsShmemRequest;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = EsShmemStartup;
}
