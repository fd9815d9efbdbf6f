/*
 * follow.h
 *		Following the log (follow.c): the NOTIFY channel of an application.
 */
#ifndef ES_FOLLOW_H
#define ES_FOLLOW_H

#include "eventsourcing.h"

extern char *EsChannel(text *application, int32 app_id);

#endif							/* ES_FOLLOW_H */
