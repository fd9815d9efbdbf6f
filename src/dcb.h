/*
 * dcb.h
 *		Tagged events (dcb.c): what es_verify_log (integrity.c) asks of them.
 */
#ifndef ES_DCB_H
#define ES_DCB_H

#include "catalog.h"

/* One problem found: the position it concerns (0: none), what, and details. */
typedef void (*EsDcbProblemFn) (void *arg, int64 id, const char *problem, const char *detail);

/* es_verify_log's check of es_dcb_index: begin, each event of its walk, end. */
typedef struct EsDcbVerifier EsDcbVerifier;

extern EsDcbVerifier *EsDcbVerifyBegin(const EsRelations *rels, int32 app_id,
									   EsDcbProblemFn report, void *arg);
extern void EsDcbVerifyEvent(EsDcbVerifier *v, struct TupleTableSlot *ev);
extern void EsDcbVerifyEnd(EsDcbVerifier *v);

#endif							/* ES_DCB_H */
