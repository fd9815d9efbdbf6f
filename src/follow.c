/*
 * follow.c
 *		Following the log: the NOTIFY channel and waiting for new events.
 *
 * Writers never NOTIFY; they wake the worker at the end of their transaction
 * (wakeup.c), and the worker (worker.c) announces on each application's
 * channel the highest id readers can now be given.  Consumer groups are a
 * filter of the read path (read.c).
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

#include "access.h"
#include "follow.h"
#include "read.h"
#include "wakeup.h"

/* es_channel(application text) RETURNS text */
PG_FUNCTION_INFO_V1(es_channel);
Datum
es_channel(PG_FUNCTION_ARGS)
{
	EsApp		app;

	EsOpenApp(&app, fcinfo, 0, ES_PRIV_READ);
	PG_RETURN_TEXT_P(cstring_to_text(EsChannel(app.name, app.id)));
}

/* The NOTIFY channel of an application: "es:" and its name, or its id if long. */
char *
EsChannel(text *application, int32 app_id)
{
	Size		len = VARSIZE_ANY_EXHDR(application);

	if (len + 3 < NAMEDATALEN)
		return psprintf("es:%.*s", (int) len, VARDATA_ANY(application));
	return psprintf("es:#%d", app_id);
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
	int64		after;
	int32		timeout_ms;
	EsApp		app;
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

	EsOpenApp(&app, fcinfo, 0, ES_PRIV_READ);

	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), timeout_ms);
	cv = EsSharedMemoryReady() ? EsNewEventsCV() : NULL;
	if (cv)
		ConditionVariablePrepareToSleep(cv);
	for (;;)
	{
		long		remaining;

		head = EsFreshReadableHead(&app.rels, app.id, after);
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
