/*
 * follow.c
 *		Following the log: the NOTIFY channel, waiting for new events, and
 *		consumer groups.
 *
 * Writers never NOTIFY (PostgreSQL's NOTIFY takes a cluster-wide lock held
 * through commit).  At the end of a transaction that appended, the writer
 * broadcasts a condition variable (es_wait sleepers wake) and sets the
 * worker's latch; the worker (worker.c) announces on each application's
 * channel the highest id readers can now be given.
 */
#include "postgres.h"

#include "common/hashfn.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/condition_variable.h"
#include "storage/latch.h"
#include "utils/builtins.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

#include "eventsourcing.h"

/* es_channel(application text) RETURNS text */
PG_FUNCTION_INFO_V1(es_channel);
Datum
es_channel(PG_FUNCTION_ARGS)
{
	text	   *application = EsArgApplication(fcinfo, 0);
	EsRelations rels;
	int32		app_id;

	EsLookupRelations(&rels);
	app_id = EsLookupApplication(&rels, application);
	PG_RETURN_TEXT_P(cstring_to_text(EsChannel(application, app_id)));
}

/* The readable head after `after`, with a fresh snapshot. */
static int64
EsFreshReadableHead(const EsRelations *rels, int32 app_id, int64 after)
{
	int64		head;

	PushActiveSnapshot(GetLatestSnapshot());
	head = EsReadableHead(rels, app_id, after);
	PopActiveSnapshot();
	return head;
}

/*
 * es_wait(application text, after bigint, timeout_ms int) RETURNS bigint
 *
 * Blocks until the log has an id above `after` that readers can be given, and
 * returns the highest such id; NULL when the timeout passes first.  Reads with
 * a fresh snapshot each time, so call it outside a REPEATABLE READ
 * transaction (whose es_select would not see what it reports).
 */
PG_FUNCTION_INFO_V1(es_wait);
Datum
es_wait(PG_FUNCTION_ARGS)
{
	text	   *application = EsArgApplication(fcinfo, 0);
	int64		after;
	int32		timeout_ms;
	EsRelations rels;
	int32		app_id;
	ConditionVariable *cv;
	TimestampTz deadline;
	int64		head;

	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("after must not be NULL")));
	if (PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("timeout_ms must not be NULL")));
	after = PG_GETARG_INT64(1);
	timeout_ms = PG_GETARG_INT32(2);
	if (after < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("after must not be negative"),
				 errdetail("The given after is " INT64_FORMAT ".", after)));
	if (timeout_ms < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("timeout_ms must not be negative"),
				 errdetail("The given timeout_ms is %d.", timeout_ms)));

	EsLookupRelations(&rels);
	app_id = EsLookupApplication(&rels, application);
	EsCheckTablePrivilege(rels.events, ACL_SELECT);

	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), timeout_ms);
	cv = EsSharedMemoryReady() ? EsNewEventsCV() : NULL;
	if (cv)
		ConditionVariablePrepareToSleep(cv);
	for (;;)
	{
		long		remaining;

		head = EsFreshReadableHead(&rels, app_id, after);
		if (head > after)
			break;
		remaining = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), deadline);
		if (remaining <= 0)
			break;
		/* Wake-ups come from writers' commits; re-check now and then anyway. */
		remaining = Min(remaining, 1000);
		if (cv)
			(void) ConditionVariableTimedSleep(cv, remaining, PG_WAIT_EXTENSION);
		else
		{
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 Min(remaining, 100), PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
		}
		CHECK_FOR_INTERRUPTS();
	}
	if (cv)
		ConditionVariableCancelSleep();
	if (head <= after)
		PG_RETURN_NULL();
	PG_RETURN_INT64(head);
}

/* The consumer-group partition of an aggregate: stable across servers. */
int32
EsPartition(const pg_uuid_t *originator_id, int32 group_size)
{
	return (int32) (hash_bytes(originator_id->data, UUID_LEN) % (uint32) group_size);
}

void
EsCheckGroup(bool has_member, int32 member, bool has_size, int32 size)
{
	if (has_member != has_size)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("group_member and group_size must be given together")));
	if (!has_size)
		return;
	if (size < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("group_size must be positive"),
				 errdetail("The given group_size is %d.", size)));
	if (member < 0 || member >= size)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("group_member must be between 0 and group_size - 1"),
				 errdetail("The given group_member is %d and group_size is %d.", member, size)));
}

/* es_partition(originator_id uuid, group_size int) RETURNS int */
PG_FUNCTION_INFO_V1(es_partition);
Datum
es_partition(PG_FUNCTION_ARGS)
{
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("originator_id must not be NULL")));
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("group_size must not be NULL")));
	EsCheckGroup(true, 0, true, PG_GETARG_INT32(1));
	PG_RETURN_INT32(EsPartition(PG_GETARG_UUID_P(0), PG_GETARG_INT32(1)));
}
