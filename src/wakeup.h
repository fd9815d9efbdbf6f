/*
 * wakeup.h
 *		The shared per-database state between writers, es_wait sleepers and
 *		the database's worker (wakeup.c).
 */
#ifndef ES_WAKEUP_H
#define ES_WAKEUP_H

#include "eventsourcing.h"

#include "storage/condition_variable.h"
#include "storage/latch.h"

extern bool es_notify;

extern Size EsWakeupShmemSize(void);
extern void EsWakeupShmemInit(void);

/* Writers: after their tuples are in. */
extern void EsNoteAppend(void);

/* es_wait: the condition variable writers broadcast at commit, or NULL. */
extern ConditionVariable *EsNewEventsCV(void);

/* The worker: registers its latch, goes to sleep and wakes, withdraws. */
extern bool EsWorkerAttach(Oid dboid, Latch *latch);
extern bool EsWorkerMaySleep(uint64 seen);
extern void EsWorkerAwake(void);
extern void EsWorkerDetach(void);

#endif							/* ES_WAKEUP_H */
