/*
 * eventsourcing.h
 *		What every part of the extension shares: limits, the layout of the
 *		events table, and the module initializers called from _PG_init.
 *
 * Where things live (each module has its own header):
 *	eventsourcing.c	module load: calls each module's Init, shared memory
 *	catalog.c		the extension's tables, look-ups, SPI as the owner
 *	access.c		the entry skeleton and per-application privileges
 *	ordering.c		the ordering protocol: id allocation and gap resolution
 *	append.c		the append path (es_append)
 *	read.c			the read path (es_select, es_events, readable head)
 *	integrity.c		hash chains, verification, seals, append-only guard
 *	follow.c		channels, es_wait, consumer groups
 *	wakeup.c		writers' end-of-transaction wake-up, the shared
 *					per-database state, es_wait's condition variable
 *	worker.c		the per-database background worker, and only that
 *	replay.c		es_replay, the fold language, es_state, snapshots
 *	codec.c			the stored form of states: zlib, AES-256-GCM, es_configure
 *	keys.c			the master key and the aggregates' data keys, es_forget
 *	dcb.c			tagged events and conditional appends (es_dcb_*)
 *
 * The include graph: catalog.h includes eventsourcing.h; access.h,
 * integrity.h and ordering.h include catalog.h; read.h includes ordering.h;
 * wakeup.h and follow.h include only eventsourcing.h; codec.h and keys.h
 * include catalog.h; append.h includes access.h; dcb.h includes catalog.h.
 * No cycles.
 */
#ifndef EVENTSOURCING_H
#define EVENTSOURCING_H

#include "postgres.h"

/* The extension's name, and the release this library implements: the catalog must be at it. */
#define ES_EXTENSION_NAME			"eventsourcing"
#define ES_VERSION					"0.2.0"

/* Limits on user input, enforced with clear errors. */
#define ES_MAX_TOPIC_BYTES			1024
#define ES_MAX_APPLICATION_BYTES	255

/* Column numbers of es_stored_events (1-based, as in the table). */
#define Anum_es_application_id		1
#define Anum_es_notification_id		2
#define Anum_es_originator_id		3
#define Anum_es_originator_version	4
#define Anum_es_topic				5
#define Anum_es_state				6
#define Anum_es_recorded_at			7
#define Anum_es_event_hash			8
#define Anum_es_stored_form			9
#define Anum_es_tags				10	/* NULL but for tagged (DCB) events */
#define Natts_es_stored_events		10

/* SHA-256 */
#define ES_HASH_LEN					32

/* Module initializers (settings), called from _PG_init. */
extern void EsOrderingInit(bool preloading);
extern void EsIntegrityInit(void);
extern void EsWorkerInit(void);
extern void EsKeysInit(bool preloading);

/* eventsourcing.c */
extern bool EsSharedMemoryReady(void);

#endif							/* EVENTSOURCING_H */
