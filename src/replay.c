/*
 * replay.c
 *		Replay in SQL: folding an aggregate's events into its state (jsonb).
 *
 * es_replay is an aggregate function over es_stored_event rows in version
 * order.  How an event changes the state is, in this order of precedence:
 *	1. a fold function named in the call: fold(state, topic, event) -> jsonb;
 *	2. the declarative fold defined for the event's topic (es_define_fold);
 *	3. the application's fold function (es_set_fold_function);
 *	4. the default: a shallow merge of the event's fields into the state.
 *
 * Declarative folds are lists of operations run here, in C, on a mutable
 * document: nodes that are either a PostgreSQL JsonbValue (scalars, and whole
 * subtrees still in binary jsonb form, expanded only when something inside
 * them changes) or an object or array of nodes.  The state is written back
 * with pushJsonbValue, so folding is linear in the number of events:
 * appending to a list does not copy it.
 *
 * What a replay costs is mostly parsing and memory, so it does as little of
 * either as it can.  A fold that reads fields of its events (no "from": "")
 * runs each event through PostgreSQL's JSON parser with semantic actions that
 * only note where the fields it reads lie, and makes JsonbValues of those
 * alone (the parser still checks all of the text); the default merge and fold
 * functions take the whole event, parsed by jsonb_in.  Nodes and the strings
 * kept in them are carved from an arena (es_state's blocks are reused from one
 * call to the next): a palloc per node, and page faults on fresh memory, were
 * most of the folding's time.  The last topic's fold is kept (events of one
 * topic come in runs), and of an es_stored_event row only the four attributes
 * folding reads are taken.
 *
 * es_state starts from the latest snapshot at or below the requested version
 * (made with the current fold definitions) and folds only the events after it.
 *
 * TRUST
 *
 * Fold functions are user code: they run with the rights of whoever calls
 * es_replay or es_state (unless they are SECURITY DEFINER), only after the
 * caller's EXECUTE privilege on them is checked, and never in the worker.
 * Snapshots are written only by these functions (ordinary roles hold no
 * privilege on es_snapshots), and each records the hash of the event it was
 * made at: es_state uses a snapshot only while that hash is still the
 * chain's hash at that version, so an edited log or a planted row is
 * ignored (with a NOTICE) and the state is folded from the start.
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "executor/tuptable.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/hsearch.h"
#include "utils/jsonb.h"
#include "utils/jsonfuncs.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/regproc.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/typcache.h"

#include "access.h"
#include "codec.h"
#include "mb/pg_wchar.h"
#include "utils/acl.h"

/* ---------------------------------------------------------------------
 * The mutable document
 * ---------------------------------------------------------------------
 */
typedef enum EsNodeKind
{
	ES_VALUE,					/* a JsonbValue: scalar or jbvBinary */
	ES_OBJECT,
	ES_ARRAY
} EsNodeKind;

/*
 * A container node is 64 bytes; a scalar that is an object's or array's item
 * is only its first 40 (ES_SCALAR_NODE_SIZE): replaying a long list makes a
 * node per element.  Only nodes that are `full` are ever turned into
 * containers in place (binary values when expanded, and the root).  Arrays
 * hold max(4, the power of two at or above n) items.
 */
typedef struct EsNode
{
	uint8		kind;			/* EsNodeKind */
	bool		full;			/* has the container fields below */
	int			n;				/* ES_OBJECT, ES_ARRAY: items used */
	JsonbValue	value;			/* ES_VALUE */
	char	  **keys;			/* ES_OBJECT */
	int		   *keylens;
	struct EsNode **items;
} EsNode;

#define ES_SCALAR_NODE_SIZE offsetof(EsNode, keys)

StaticAssertDecl(SIZEOF_VOID_P != 8 || sizeof(EsNode) == 64, "EsNode is 64 bytes");
StaticAssertDecl(ES_SCALAR_NODE_SIZE == MAXALIGN(ES_SCALAR_NODE_SIZE), "scalar nodes stay aligned");

/*
 * Nodes, keys and kept strings are carved from blocks (an arena): they are
 * never freed one by one, and a replay makes one or more per event, so a
 * palloc and a chunk header each were most of what folding cost.  What is
 * left is the memory itself: the pages a replay touches first are paid in
 * page faults, as much again as the folding.  So es_state's blocks are not
 * its call's: they come from a long-lived context, and when the call's
 * context goes (a reset callback, which also runs on errors) they go back to
 * a per-backend cache of at most ES_ARENA_CACHE_BYTES for the next call.  The
 * es_replay aggregate's blocks are its context's, freed with it: it runs
 * beside es_events' row store, which is reused from query to query only if
 * malloc has seen memory of that size freed before (keeping our blocks
 * instead measured slower).  Blocks double from 8 kB to 1 MB, so an aggregate
 * of a few events takes one small block (GROUP BY may replay many at once).
 */
#define ES_ARENA_MIN_BLOCK	(8 * 1024)
#define ES_ARENA_CLASSES	8	/* 8 kB << 0..7: up to 1 MB */
#define ES_ARENA_CACHE_BYTES (4 * 1024 * 1024)

typedef struct EsArenaBlock
{
	struct EsArenaBlock *next;
	int			cls;			/* its size is ES_ARENA_MIN_BLOCK << cls */
} EsArenaBlock;

typedef struct EsArena
{
	MemoryContext cxt;			/* the replay's: for values too large for a block */
	char	   *next;
	char	   *end;
	int			cls;			/* the class of the next block */
	bool		reuse;			/* blocks from (and back to) the cache */
	EsArenaBlock *blocks;		/* in use, when reused */
	MemoryContextCallback release;
} EsArena;

static MemoryContext es_arena_cxt = NULL;
static EsArenaBlock *es_arena_cache[ES_ARENA_CLASSES];
static Size es_arena_cached = 0;

/* The replay's context is going: its blocks go to the cache, or are freed. */
static void
EsArenaRelease(void *arg)
{
	EsArena    *a = (EsArena *) arg;
	EsArenaBlock *b = a->blocks;

	while (b != NULL)
	{
		EsArenaBlock *next = b->next;
		Size		size = (Size) ES_ARENA_MIN_BLOCK << b->cls;

		if (es_arena_cached + size <= ES_ARENA_CACHE_BYTES)
		{
			b->next = es_arena_cache[b->cls];
			es_arena_cache[b->cls] = b;
			es_arena_cached += size;
		}
		else
			pfree(b);
		b = next;
	}
	a->blocks = NULL;
	a->next = a->end = NULL;
}

static void
EsArenaInit(EsArena *a, MemoryContext cxt, bool reuse)
{
	a->cxt = cxt;
	a->next = a->end = NULL;
	a->cls = 0;
	a->reuse = reuse;
	a->blocks = NULL;
	if (reuse)
	{
		a->release.func = EsArenaRelease;
		a->release.arg = a;
		MemoryContextRegisterResetCallback(cxt, &a->release);
	}
}

/* size bytes; aligned (MAXALIGN) or not, for strings */
static void *
EsArenaAlloc(EsArena *a, Size size, bool aligned)
{
	char	   *p;

	if (aligned && a->next != NULL)
		a->next = (char *) MAXALIGN(a->next);
	if (a->next == NULL || (Size) (a->end - a->next) < size)
	{
		Size		bsize = (Size) ES_ARENA_MIN_BLOCK << a->cls;
		EsArenaBlock *b;

		/* Large values get their own chunk, so a block's tail is not wasted. */
		if (size > bsize / 4)
			return MemoryContextAlloc(a->cxt, size);
		if (!a->reuse)
		{
			a->next = MemoryContextAlloc(a->cxt, bsize);
			a->end = a->next + bsize;
			if (a->cls + 1 < ES_ARENA_CLASSES)
				a->cls++;
			p = a->next;
			a->next += size;
			return p;
		}
		if (es_arena_cache[a->cls] != NULL)
		{
			b = es_arena_cache[a->cls];
			es_arena_cache[a->cls] = b->next;
			es_arena_cached -= bsize;
		}
		else
		{
			if (es_arena_cxt == NULL)
				es_arena_cxt = AllocSetContextCreate(TopMemoryContext, "eventsourcing replay blocks",
													 ALLOCSET_DEFAULT_SIZES);
			b = MemoryContextAlloc(es_arena_cxt, bsize);
		}
		b->cls = a->cls;
		b->next = a->blocks;
		a->blocks = b;
		a->next = (char *) b + MAXALIGN(sizeof(EsArenaBlock));
		a->end = (char *) b + bsize;
		if (a->cls + 1 < ES_ARENA_CLASSES)
			a->cls++;
	}
	p = a->next;
	a->next += size;
	return p;
}

static char *
EsArenaStrdup(EsArena *a, const char *s, int len)
{
	char	   *p = EsArenaAlloc(a, len + 1, false);

	memcpy(p, s, len);
	p[len] = '\0';
	return p;
}

static EsNode *
EsNodeAlloc(EsArena *a, EsNodeKind kind, bool full)
{
	EsNode	   *n = EsArenaAlloc(a, full ? sizeof(EsNode) : ES_SCALAR_NODE_SIZE, true);

	memset(n, 0, full ? sizeof(EsNode) : ES_SCALAR_NODE_SIZE);
	n->kind = kind;
	n->full = full;
	return n;
}

/* A value as an item: binary objects and arrays may be expanded later. */
static EsNode *
EsNodeValue(EsArena *a, const JsonbValue *v)
{
	EsNode	   *n = EsNodeAlloc(a, ES_VALUE, v->type == jbvBinary);

	n->value = *v;
	return n;
}

/* A value as a document's root, which may become an object in place. */
static EsNode *
EsNodeRoot(EsArena *a, const JsonbValue *v)
{
	EsNode	   *n = EsNodeAlloc(a, ES_VALUE, true);

	n->value = *v;
	return n;
}

static EsNode *
EsNodeContainer(EsArena *a, EsNodeKind kind)
{
	return EsNodeAlloc(a, kind, true);
}

static void
EsNodeGrow(EsArena *a, EsNode *n)
{
	int			cap;

	Assert(n->full);
	if (n->items != NULL && (n->n < 4 || (n->n & (n->n - 1)) != 0))
		return;					/* room for one more */
	cap = n->items == NULL ? 4 : n->n * 2;
	n->items = n->items ? repalloc(n->items, sizeof(EsNode *) * cap)
		: MemoryContextAlloc(a->cxt, sizeof(EsNode *) * cap);
	if (n->kind == ES_OBJECT)
	{
		n->keys = n->keys ? repalloc(n->keys, sizeof(char *) * cap)
			: MemoryContextAlloc(a->cxt, sizeof(char *) * cap);
		n->keylens = n->keylens ? repalloc(n->keylens, sizeof(int) * cap)
			: MemoryContextAlloc(a->cxt, sizeof(int) * cap);
	}
}

static bool
EsNodeIsBinary(const EsNode *n, int jtype)
{
	return n->kind == ES_VALUE && n->value.type == jbvBinary &&
		(jtype == 0 ||
		 (jtype == jbvObject && JsonContainerIsObject(n->value.val.binary.data)) ||
		 (jtype == jbvArray && JsonContainerIsArray(n->value.val.binary.data) &&
		  !JsonContainerIsScalar(n->value.val.binary.data)));
}

/* Turns a binary object or array into nodes, one level deep. */
static void
EsNodeExpand(EsArena *a, EsNode *n)
{
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	char	   *key = NULL;
	int			keylen = 0;
	bool		is_object;

	if (!EsNodeIsBinary(n, jbvObject) && !EsNodeIsBinary(n, jbvArray))
		return;
	Assert(n->full);
	is_object = JsonContainerIsObject(n->value.val.binary.data);
	it = JsonbIteratorInit(n->value.val.binary.data);
	n->kind = is_object ? ES_OBJECT : ES_ARRAY;
	n->n = 0;
	n->items = NULL;
	n->keys = NULL;
	n->keylens = NULL;
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (tok == WJB_KEY)
		{
			key = v.val.string.val;
			keylen = v.val.string.len;
		}
		else if (tok == WJB_VALUE || tok == WJB_ELEM)
		{
			EsNodeGrow(a, n);
			if (is_object)
			{
				n->keys[n->n] = key;
				n->keylens[n->n] = keylen;
			}
			n->items[n->n++] = EsNodeValue(a, &v);
		}
	}
}

static int
EsObjectFind(const EsNode *obj, const char *key, int keylen)
{
	for (int i = 0; i < obj->n; i++)
		if (obj->keylens[i] == keylen && memcmp(obj->keys[i], key, keylen) == 0)
			return i;
	return -1;
}

static EsNode *
EsObjectGet(EsArena *a, EsNode *obj, const char *key, int keylen)
{
	int			i;

	EsNodeExpand(a, obj);
	if (obj->kind != ES_OBJECT)
		return NULL;
	i = EsObjectFind(obj, key, keylen);
	return i < 0 ? NULL : obj->items[i];
}

static void
EsObjectSet(EsArena *a, EsNode *obj, const char *key, int keylen, EsNode *value)
{
	int			i = EsObjectFind(obj, key, keylen);

	if (i >= 0)
	{
		obj->items[i] = value;
		return;
	}
	EsNodeGrow(a, obj);
	obj->keys[obj->n] = EsArenaStrdup(a, key, keylen);
	obj->keylens[obj->n] = keylen;
	obj->items[obj->n++] = value;
}

static void
EsObjectDelete(EsNode *obj, const char *key, int keylen)
{
	int			i = EsObjectFind(obj, key, keylen);

	if (i < 0)
		return;
	for (; i + 1 < obj->n; i++)
	{
		obj->keys[i] = obj->keys[i + 1];
		obj->keylens[i] = obj->keylens[i + 1];
		obj->items[i] = obj->items[i + 1];
	}
	obj->n--;
}

/* Pushes a node; returns the finished value when it closes the outermost one. */
static JsonbValue *
EsNodePush(JsonbParseState **ps, EsNode *n, JsonbIteratorToken tok)
{
	/* Documents nest as deep as fold paths make them. */
	check_stack_depth();
	CHECK_FOR_INTERRUPTS();
	if (n->kind == ES_VALUE)
		return pushJsonbValue(ps, tok, &n->value);
	(void) pushJsonbValue(ps, n->kind == ES_OBJECT ? WJB_BEGIN_OBJECT : WJB_BEGIN_ARRAY, NULL);
	for (int i = 0; i < n->n; i++)
	{
		if (n->kind == ES_OBJECT)
		{
			JsonbValue	k;

			k.type = jbvString;
			k.val.string.val = n->keys[i];
			k.val.string.len = n->keylens[i];
			(void) pushJsonbValue(ps, WJB_KEY, &k);
			(void) EsNodePush(ps, n->items[i], WJB_VALUE);
		}
		else
			(void) EsNodePush(ps, n->items[i], WJB_ELEM);
	}
	return pushJsonbValue(ps, n->kind == ES_OBJECT ? WJB_END_OBJECT : WJB_END_ARRAY, NULL);
}

/* Serializes the document (pushJsonbValue sorts and checks object keys). */
static Jsonb *
EsDocumentToJsonb(EsNode *root)
{
	JsonbParseState *ps = NULL;

	if (root->kind == ES_VALUE)
		return JsonbValueToJsonb(&root->value);
	return JsonbValueToJsonb(EsNodePush(&ps, root, WJB_VALUE));
}

/* A document for a jsonb value (kept binary until something changes). */
static EsNode *
EsDocumentFromJsonb(EsArena *a, Jsonb *jb)
{
	JsonbValue	v;

	if (JB_ROOT_IS_SCALAR(jb))
	{
		(void) JsonbExtractScalar(&jb->root, &v);
		return EsNodeRoot(a, &v);
	}
	v.type = jbvBinary;
	v.val.binary.data = &jb->root;
	v.val.binary.len = VARSIZE(jb) - VARHDRSZ;
	return EsNodeRoot(a, &v);
}

/* ---------------------------------------------------------------------
 * Declarative folds
 * ---------------------------------------------------------------------
 */
typedef enum EsFoldOpKind
{
	ES_OP_INIT,
	ES_OP_SET,
	ES_OP_APPEND,
	ES_OP_REMOVE,
	ES_OP_ADD,
	ES_OP_MERGE,
	ES_OP_DELETE
} EsFoldOpKind;

static const char *const es_op_names[] = {"init", "set", "append", "remove", "add", "merge", "delete"};

/* Deeper paths are refused: documents are written back recursively. */
#define ES_MAX_PATH_DEPTH 100

typedef struct EsPath
{
	int			n;
	char	  **keys;
	int		   *lens;
} EsPath;

typedef struct EsFoldOp
{
	EsFoldOpKind kind;
	EsPath		path;			/* in the state */
	bool		has_from;		/* "from": a path in the event ("" or [] = all of it) */
	EsPath		from;
	bool		has_value;		/* "value": a constant */
	JsonbValue	value;
} EsFoldOp;

typedef struct EsFold
{
	char		topic[ES_MAX_TOPIC_BYTES + 1];	/* hash key */
	int			nops;
	EsFoldOp   *ops;
	bool		whole_event;	/* some op takes all of the event */
	int			from_depth;		/* the deepest "from" path */
	struct EsSourceScan *scan;	/* made on first use */
} EsFold;

static void
EsBadFold(const char *topic, int index, const char *what)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("invalid fold for topic \"%s\": operation %d %s", topic, index + 1, what),
			 errhint("Operations look like {\"op\": \"set\", \"path\": \"name\", \"from\": \"name\"}; ops are init, set, append, remove, add, merge, delete.")));
}

/* A path: "a.b" or ["a", "b"]; "" or [] is the root. */
static bool
EsParsePath(JsonbValue *v, EsPath *path)
{
	path->n = 0;
	path->keys = NULL;
	path->lens = NULL;
	if (v->type == jbvString)
	{
		char	   *s = pnstrdup(v->val.string.val, v->val.string.len);
		char	   *p = s;
		int			cap = 4;

		if (*s == '\0')
			return true;
		path->keys = palloc(sizeof(char *) * cap);
		path->lens = palloc(sizeof(int) * cap);
		for (;;)
		{
			char	   *dot = strchr(p, '.');

			CHECK_FOR_INTERRUPTS();

			if (path->n == cap)
			{
				cap *= 2;
				path->keys = repalloc(path->keys, sizeof(char *) * cap);
				path->lens = repalloc(path->lens, sizeof(int) * cap);
			}
			path->keys[path->n] = p;
			path->lens[path->n] = dot ? (int) (dot - p) : (int) strlen(p);
			path->n++;
			if (!dot)
				break;
			*dot = '\0';
			p = dot + 1;
		}
		return true;
	}
	if (v->type == jbvBinary && JsonContainerIsArray(v->val.binary.data))
	{
		JsonbIterator *it = JsonbIteratorInit(v->val.binary.data);
		JsonbValue	e;
		JsonbIteratorToken tok;
		int			size = JsonContainerSize(v->val.binary.data);

		path->keys = palloc(sizeof(char *) * Max(size, 1));
		path->lens = palloc(sizeof(int) * Max(size, 1));
		while ((tok = JsonbIteratorNext(&it, &e, true)) != WJB_DONE)
		{
			CHECK_FOR_INTERRUPTS();
			if (tok != WJB_ELEM)
				continue;
			if (e.type != jbvString)
				return false;
			path->keys[path->n] = pnstrdup(e.val.string.val, e.val.string.len);
			path->lens[path->n] = e.val.string.len;
			path->n++;
		}
		return true;
	}
	return false;
}

static JsonbValue *
EsGetKey(JsonbContainer *c, const char *key)
{
	return getKeyJsonValueFromContainer(c, key, strlen(key), NULL);
}

/* Compiles one topic's operations (a jsonb array), checking everything. */
static void
EsCompileFold(const char *topic, Jsonb *ops, EsFold *fold)
{
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	int			i = 0;

	if (!JB_ROOT_IS_ARRAY(ops) || JB_ROOT_IS_SCALAR(ops))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid fold for topic \"%s\": operations must be a JSON array", topic)));
	fold->nops = JB_ROOT_COUNT(ops);
	fold->ops = palloc0(sizeof(EsFoldOp) * Max(fold->nops, 1));
	fold->whole_event = false;
	fold->from_depth = 0;
	fold->scan = NULL;
	it = JsonbIteratorInit(&ops->root);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		EsFoldOp   *op;
		JsonbValue *name;
		JsonbValue *path;
		JsonbValue *from;
		JsonbValue *value;
		int			k;

		CHECK_FOR_INTERRUPTS();
		if (tok != WJB_ELEM)
			continue;
		op = &fold->ops[i];
		if (v.type != jbvBinary || !JsonContainerIsObject(v.val.binary.data))
			EsBadFold(topic, i, "is not an object");
		name = EsGetKey(v.val.binary.data, "op");
		if (name == NULL || name->type != jbvString)
			EsBadFold(topic, i, "has no \"op\"");
		for (k = 0; k < lengthof(es_op_names); k++)
			if (strlen(es_op_names[k]) == name->val.string.len &&
				memcmp(es_op_names[k], name->val.string.val, name->val.string.len) == 0)
				break;
		if (k == lengthof(es_op_names))
			EsBadFold(topic, i, psprintf("has an unknown op \"%.*s\"", name->val.string.len, name->val.string.val));
		op->kind = (EsFoldOpKind) k;

		path = EsGetKey(v.val.binary.data, "path");
		if (path != NULL && !EsParsePath(path, &op->path))
			EsBadFold(topic, i, "has a \"path\" that is neither a string nor an array of strings");
		if (op->path.n > ES_MAX_PATH_DEPTH)
			EsBadFold(topic, i, psprintf("has a \"path\" deeper than %d fields", ES_MAX_PATH_DEPTH));
		from = EsGetKey(v.val.binary.data, "from");
		if (from != NULL)
		{
			if (!EsParsePath(from, &op->from))
				EsBadFold(topic, i, "has a \"from\" that is neither a string nor an array of strings");
			if (op->from.n > ES_MAX_PATH_DEPTH)
				EsBadFold(topic, i, psprintf("has a \"from\" deeper than %d fields", ES_MAX_PATH_DEPTH));
			op->has_from = true;
		}
		value = EsGetKey(v.val.binary.data, "value");
		if (value != NULL)
		{
			op->value = *value;
			op->has_value = true;
		}
		if (op->has_from && op->has_value)
			EsBadFold(topic, i, "has both \"from\" and \"value\"");
		switch (op->kind)
		{
			case ES_OP_INIT:
				if (!op->has_value)
					EsBadFold(topic, i, "(init) needs a \"value\"");
				break;
			case ES_OP_DELETE:
				if (op->path.n == 0)
					EsBadFold(topic, i, "(delete) needs a non-empty \"path\"");
				break;
			case ES_OP_MERGE:
				if (!op->has_value && !op->has_from)
					op->has_from = true;	/* the whole event */
				break;
			default:
				if (op->path.n == 0)
					EsBadFold(topic, i, psprintf("(%s) needs a non-empty \"path\"", es_op_names[k]));
				if (!op->has_from && !op->has_value)
					EsBadFold(topic, i, psprintf("(%s) needs a \"from\" or a \"value\"", es_op_names[k]));
				break;
		}
		if (op->has_from && op->from.n == 0)
			fold->whole_event = true;
		if (op->has_from)
			fold->from_depth = Max(fold->from_depth, op->from.n);
		i++;
	}
	fold->nops = i;
}

/* The value an operation takes: a constant, or a path into the event. */
static bool
EsOpSource(const EsFoldOp *op, Jsonb *event, JsonbValue *out)
{
	JsonbContainer *c;

	if (op->has_value)
	{
		*out = op->value;
		return true;
	}
	if (op->from.n == 0)
	{
		if (JB_ROOT_IS_SCALAR(event))
			return JsonbExtractScalar(&event->root, out);
		out->type = jbvBinary;
		out->val.binary.data = &event->root;
		out->val.binary.len = VARSIZE(event) - VARHDRSZ;
		return true;
	}
	c = &event->root;
	for (int i = 0; i < op->from.n; i++)
	{
		JsonbValue *v;

		if (!JsonContainerIsObject(c))
			return false;
		v = getKeyJsonValueFromContainer(c, op->from.keys[i], op->from.lens[i], NULL);
		if (v == NULL)
			return false;
		if (i + 1 == op->from.n)
		{
			*out = *v;
			return true;
		}
		if (v->type != jbvBinary)
			return false;
		c = v->val.binary.data;
	}
	return false;
}

/*
 * Reading only what a fold needs.
 *
 * Most folds read a field or two of each event.  Building the whole event as
 * jsonb (jsonb_in) to read them was a third of es_state's time, so when no
 * operation takes the whole event, the event is run through PostgreSQL's JSON
 * parser with semantic actions that only note where each wanted value begins
 * and ends (as jsonfuncs.c does for json_extract_path); just those values are
 * then made into JsonbValues.  The parser still checks the whole text is JSON.
 * Later duplicates of a key win, as in jsonb: a key seen again clears what was
 * found under its earlier occurrence.
 */
typedef struct EsSourceScan
{
	JsonLexContext *lex;		/* one for all of a replay's events */
	const EsFold *fold;
	int			depth;			/* nesting level of the fields being read */
	char	  **keys;			/* keys[d]: the field being read at level d (1..from_depth); NULL in arrays */
	int		   *keylens;
	char	  **start;			/* per op: where its value begins, NULL if not found */
	char	  **end;
	JsonbValue *values;			/* per op: the value found */
	bool	   *found;
} EsSourceScan;

/* Whether the keys being read at levels 1..d are op's "from" path's first d keys. */
static bool
EsSourcePrefixMatches(const EsSourceScan *s, const EsFoldOp *op, int d)
{
	for (int l = 1; l <= d; l++)
		if (s->keys[l] == NULL || s->keylens[l] != op->from.lens[l - 1] ||
			memcmp(s->keys[l], op->from.keys[l - 1], s->keylens[l]) != 0)
			return false;
	return true;
}

static void
EsSourceObjectStart(void *state)
{
	((EsSourceScan *) state)->depth++;
}

static void
EsSourceArrayStart(void *state)
{
	EsSourceScan *s = (EsSourceScan *) state;

	s->depth++;
	if (s->depth <= s->fold->from_depth)
		s->keys[s->depth] = NULL;
}

static void
EsSourceEnd(void *state)
{
	((EsSourceScan *) state)->depth--;
}

static void
EsSourceFieldStart(void *state, char *fname, bool isnull)
{
	EsSourceScan *s = (EsSourceScan *) state;
	int			d = s->depth;

	if (d > s->fold->from_depth)
		return;
	s->keys[d] = fname;
	s->keylens[d] = strlen(fname);
	for (int i = 0; i < s->fold->nops; i++)
	{
		const EsFoldOp *op = &s->fold->ops[i];

		if (!op->has_from || op->from.n < d || !EsSourcePrefixMatches(s, op, d))
			continue;
		s->start[i] = op->from.n == d ? s->lex->token_start : NULL;
		s->end[i] = NULL;
	}
}

static void
EsSourceFieldEnd(void *state, char *fname, bool isnull)
{
	EsSourceScan *s = (EsSourceScan *) state;
	int			d = s->depth;

	if (d > s->fold->from_depth)
		return;
	for (int i = 0; i < s->fold->nops; i++)
		if (s->start[i] != NULL && s->end[i] == NULL && s->fold->ops[i].from.n == d)
			s->end[i] = s->lex->prev_token_terminator;
	s->keys[d] = NULL;
}

/*
 * The JSON text `json` (len bytes, a value the parser accepted) as a
 * JsonbValue allocated in the arena (strings) or its context.
 */
static void
EsSourceValue(char *json, int len, EsArena *a, JsonbValue *out)
{
	MemoryContext cxt = a->cxt;
	MemoryContext old = MemoryContextSwitchTo(cxt);

	/* A string without escapes is its bytes; one with escapes goes to jsonb_in. */
	if (json[0] == '"' && memchr(json, '\\', len) == NULL)
	{
		if (len - 2 > JENTRY_OFFLENMASK)
			ereport(ERROR,
					(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
					 errmsg("string too long to represent as jsonb string")));
		out->type = jbvString;
		out->val.string.len = len - 2;
		out->val.string.val = EsArenaStrdup(a, json + 1, len - 2);
		MemoryContextSwitchTo(old);
		return;
	}
	switch (json[0])
	{
		case '"':
		case '{':
		case '[':
			{
				Jsonb	   *jb;

				/* parsed in the caller's context; only the result is kept */
				MemoryContextSwitchTo(old);
				jb = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(pnstrdup(json, len))));
				MemoryContextSwitchTo(cxt);
				jb = DatumGetJsonbPCopy(JsonbPGetDatum(jb));

				if (JB_ROOT_IS_SCALAR(jb))
					(void) JsonbExtractScalar(&jb->root, out);
				else
				{
					out->type = jbvBinary;
					out->val.binary.data = &jb->root;
					out->val.binary.len = VARSIZE(jb) - VARHDRSZ;
				}
				break;
			}
		case 't':
		case 'f':
			out->type = jbvBool;
			out->val.boolean = json[0] == 't';
			break;
		case 'n':
			out->type = jbvNull;
			break;
		default:
			out->type = jbvNumeric;
			out->val.numeric = DatumGetNumeric(DirectFunctionCall3(numeric_in,
																   CStringGetDatum(pnstrdup(json, len)),
																   ObjectIdGetDatum(InvalidOid),
																   Int32GetDatum(-1)));
			break;
	}
	MemoryContextSwitchTo(old);
}

/*
 * Parses the event text (len bytes, checked to be text) for the values the
 * fold's operations take: scan->found[i] and scan->values[i] (allocated in
 * the arena, whose context the scan itself lives in too) for op i.  Reports
 * JSON errors as jsonb_in does.
 */
static EsSourceScan *
EsScanSources(EsFold *fold, char *json, int len, EsArena *a)
{
	MemoryContext cxt = a->cxt;
	EsSourceScan *s = fold->scan;
	JsonSemAction sem;
	int			nops = Max(fold->nops, 1);

	if (s == NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(cxt);

		s = fold->scan = palloc0(sizeof(EsSourceScan));
		s->fold = fold;
		s->lex = makeJsonLexContextCstringLen(json, len, GetDatabaseEncoding(), true);
		s->keys = palloc0(sizeof(char *) * (fold->from_depth + 1));
		s->keylens = palloc0(sizeof(int) * (fold->from_depth + 1));
		s->start = palloc(sizeof(char *) * nops);
		s->end = palloc(sizeof(char *) * nops);
		s->values = palloc(sizeof(JsonbValue) * nops);
		s->found = palloc(sizeof(bool) * nops);
		MemoryContextSwitchTo(old);
	}
	else
	{
		/* What makeJsonLexContextCstringLen sets, without a new context per event. */
		s->lex->input = s->lex->token_terminator = s->lex->line_start = json;
		s->lex->input_length = len;
		s->lex->line_number = 1;
		s->lex->lex_level = 0;
	}
	s->depth = 0;
	memset(s->start, 0, sizeof(char *) * nops);
	memset(s->end, 0, sizeof(char *) * nops);
	memset(&sem, 0, sizeof(sem));
	sem.semstate = s;
	sem.object_start = EsSourceObjectStart;
	sem.object_end = EsSourceEnd;
	sem.array_start = EsSourceArrayStart;
	sem.array_end = EsSourceEnd;
	sem.object_field_start = EsSourceFieldStart;
	sem.object_field_end = EsSourceFieldEnd;
	pg_parse_json_or_ereport(s->lex, &sem);
	for (int i = 0; i < fold->nops; i++)
	{
		s->found[i] = s->start[i] != NULL && s->end[i] != NULL;
		if (s->found[i])
			EsSourceValue(s->start[i], (int) (s->end[i] - s->start[i]), a, &s->values[i]);
	}
	return s;
}

/* The object that holds the last key of `path`, made if missing. */
static EsNode *
EsParentOf(EsArena *a, EsNode *root, const EsPath *path)
{
	EsNode	   *n = root;

	Assert(root->full);
	EsNodeExpand(a, n);
	if (n->kind != ES_OBJECT)
	{
		/* The state is not an object: start one. */
		n->kind = ES_OBJECT;
		n->n = 0;
		n->items = NULL;
		n->keys = NULL;
		n->keylens = NULL;
	}
	for (int i = 0; i + 1 < path->n; i++)
	{
		EsNode	   *child = EsObjectGet(a, n, path->keys[i], path->lens[i]);

		if (child == NULL)
		{
			child = EsNodeContainer(a, ES_OBJECT);
			EsObjectSet(a, n, path->keys[i], path->lens[i], child);
		}
		EsNodeExpand(a, child);
		if (child->kind != ES_OBJECT)
		{
			child = EsNodeContainer(a, ES_OBJECT);
			EsObjectSet(a, n, path->keys[i], path->lens[i], child);
		}
		n = child;
	}
	return n;
}

static bool
EsScalarEquals(const JsonbValue *a, const JsonbValue *b)
{
	if (a->type != b->type)
		return false;
	switch (a->type)
	{
		case jbvNull:
			return true;
		case jbvBool:
			return a->val.boolean == b->val.boolean;
		case jbvString:
			return a->val.string.len == b->val.string.len &&
				memcmp(a->val.string.val, b->val.string.val, a->val.string.len) == 0;
		case jbvNumeric:
			return DatumGetBool(DirectFunctionCall2(numeric_eq,
													NumericGetDatum(a->val.numeric),
													NumericGetDatum(b->val.numeric)));
		default:
			return false;
	}
}

/* Applies one operation; errors name the operation (the caller adds the event). */
static EsNode *
EsApplyOp(EsArena *a, EsNode *root, const EsFoldOp *op, const JsonbValue *source, int index)
{
	JsonbValue	src;
	EsNode	   *parent;
	const char *key;
	int			keylen;
	EsNode	   *target;

	if (op->kind == ES_OP_DELETE)
	{
		parent = EsParentOf(a, root, &op->path);
		EsObjectDelete(parent, op->path.keys[op->path.n - 1], op->path.lens[op->path.n - 1]);
		return root;
	}
	if (source == NULL)
		return root;			/* a missing source field: nothing to do */
	src = *source;
	if (op->kind == ES_OP_INIT)
		return EsNodeRoot(a, &src);

	if (op->kind == ES_OP_MERGE)
	{
		EsNode	   *from;

		if (op->path.n == 0)
			target = root;
		else
		{
			parent = EsParentOf(a, root, &op->path);
			key = op->path.keys[op->path.n - 1];
			keylen = op->path.lens[op->path.n - 1];
			target = EsObjectGet(a, parent, key, keylen);
			if (target == NULL)
			{
				target = EsNodeContainer(a, ES_OBJECT);
				EsObjectSet(a, parent, key, keylen, target);
			}
		}
		EsNodeExpand(a, target);
		if (target->kind != ES_OBJECT)
		{
			if (target == root)
				(void) EsParentOf(a, root, &op->path);	/* makes root an object */
			else
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("fold operation %d (merge): the state's field is not an object", index + 1)));
		}
		from = EsNodeValue(a, &src);
		EsNodeExpand(a, from);
		if (from->kind != ES_OBJECT)
			return root;		/* merging a non-object: nothing to do */
		for (int i = 0; i < from->n; i++)
			EsObjectSet(a, target, from->keys[i], from->keylens[i], from->items[i]);
		return root;
	}

	parent = EsParentOf(a, root, &op->path);
	key = op->path.keys[op->path.n - 1];
	keylen = op->path.lens[op->path.n - 1];
	target = EsObjectGet(a, parent, key, keylen);

	switch (op->kind)
	{
		case ES_OP_SET:
			EsObjectSet(a, parent, key, keylen, EsNodeValue(a, &src));
			break;
		case ES_OP_APPEND:
			if (target != NULL)
				EsNodeExpand(a, target);
			if (target == NULL || target->kind != ES_ARRAY)
			{
				target = EsNodeContainer(a, ES_ARRAY);
				EsObjectSet(a, parent, key, keylen, target);
			}
			EsNodeGrow(a, target);
			target->items[target->n++] = EsNodeValue(a, &src);
			break;
		case ES_OP_REMOVE:
			if (target == NULL)
				break;
			EsNodeExpand(a, target);
			if (target->kind == ES_ARRAY)
			{
				int			kept = 0;

				for (int i = 0; i < target->n; i++)
				{
					EsNode	   *e = target->items[i];

					if (!(e->kind == ES_VALUE && EsScalarEquals(&e->value, &src)))
						target->items[kept++] = e;
				}
				target->n = kept;
			}
			break;
		case ES_OP_ADD:
			{
				JsonbValue	sum;
				Numeric		current;

				if (src.type != jbvNumeric)
					ereport(ERROR,
							(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
							 errmsg("fold operation %d (add): the amount is not a number", index + 1)));
				if (target == NULL || (target->kind == ES_VALUE && target->value.type == jbvNull))
					current = DatumGetNumeric(DirectFunctionCall1(int4_numeric, Int32GetDatum(0)));
				else if (target->kind == ES_VALUE && target->value.type == jbvNumeric)
					current = target->value.val.numeric;
				else
					ereport(ERROR,
							(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
							 errmsg("fold operation %d (add): the state's \"%.*s\" is not a number",
									index + 1, keylen, key)));
				sum.type = jbvNumeric;
				sum.val.numeric = DatumGetNumeric(DirectFunctionCall2(numeric_add,
																	  NumericGetDatum(current),
																	  NumericGetDatum(src.val.numeric)));
				EsObjectSet(a, parent, key, keylen, EsNodeValue(a, &sum));
				break;
			}
		default:
			elog(ERROR, "eventsourcing: unexpected fold operation %d", (int) op->kind);
	}
	return root;
}

/* ---------------------------------------------------------------------
 * The replay state
 * ---------------------------------------------------------------------
 */
typedef struct EsReplay
{
	MemoryContext cxt;			/* lives as long as the aggregate (or call) */
	int32		app_id;
	char	   *appname;
	HTAB	   *folds;			/* topic -> EsFold, or NULL entry nops = -1 */
	Oid			app_fold_fn;	/* the application's fold function */
	FmgrInfo	app_fold;
	Oid			call_fold_fn;	/* the fold function named in the call */
	FmgrInfo	call_fold;
	EsArena		arena;			/* the document's nodes and strings, in cxt */
	/* the last event's topic and its fold: events of a topic come in runs */
	bool		topic_known;
	int			topic_len;
	EsFold	   *topic_fold;
	char		topic[ES_MAX_TOPIC_BYTES + 1];
	EsNode	   *root;
	bool		started;
	pg_uuid_t	originator_id;
	int64		version;
	Oid			event_type;		/* es_stored_event, and its descriptor */
	TupleDesc	event_desc;
} EsReplay;

/* Checks that a fold function is (jsonb, text, jsonb) -> jsonb. */
static void
EsCheckFoldFunction(Oid fn)
{
	HeapTuple	tup = SearchSysCache1(PROCOID, ObjectIdGetDatum(fn));
	Form_pg_proc proc;
	bool		ok;

	if (!HeapTupleIsValid(tup))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("fold function with OID %u does not exist", fn)));
	proc = (Form_pg_proc) GETSTRUCT(tup);
	ok = proc->pronargs == 3 && proc->prorettype == JSONBOID &&
		proc->proargtypes.values[0] == JSONBOID &&
		proc->proargtypes.values[1] == TEXTOID &&
		proc->proargtypes.values[2] == JSONBOID && !proc->proretset;
	ReleaseSysCache(tup);
	if (!ok)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("%s is not a fold function", format_procedure(fn)),
				 errdetail("A fold function takes (state jsonb, topic text, event jsonb) and returns jsonb.")));
}

/* The caller may run the fold function only with EXECUTE on it. */
static void
EsCheckFoldExecute(Oid fn)
{
	AclResult	aclresult = pg_proc_aclcheck(fn, GetUserId(), ACL_EXECUTE);

	if (aclresult != ACLCHECK_OK)
		aclcheck_error(aclresult, OBJECT_FUNCTION, get_func_name(fn));
}

/* Loads the application's folds: its declarative folds and fold function. */
static void
EsLoadFolds(EsReplay *r, const EsRelations *rels)
{
	StringInfoData sql;
	Oid			argtypes[1] = {INT4OID};
	Datum		values[1];
	HASHCTL		info;
	MemoryContext old;
	bool		isnull;
	EsSpi		spi;

	info.keysize = ES_MAX_TOPIC_BYTES + 1;
	info.entrysize = sizeof(EsFold);
	info.hcxt = r->cxt;
	r->folds = hash_create("eventsourcing folds", 16, &info, HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
	values[0] = Int32GetDatum(r->app_id);

	EsSpiBegin(&spi, rels);
	initStringInfo(&sql);
	appendStringInfo(&sql, "SELECT fold_function FROM %s WHERE id OPERATOR(pg_catalog.=) $1",
					 EsQualifiedName(rels, "es_applications"));
	if (SPI_execute_with_args(sql.data, 1, argtypes, values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "eventsourcing: could not read es_applications");
	r->app_fold_fn = InvalidOid;
	if (SPI_processed == 1)
	{
		Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

		if (!isnull)
			r->app_fold_fn = DatumGetObjectId(d);
	}
	resetStringInfo(&sql);
	appendStringInfo(&sql, "SELECT topic, operations FROM %s WHERE application_id OPERATOR(pg_catalog.=) $1",
					 EsQualifiedName(rels, "es_folds"));
	if (SPI_execute_with_args(sql.data, 1, argtypes, values, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "eventsourcing: could not read es_folds");
	old = MemoryContextSwitchTo(r->cxt);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		char	   *topic = TextDatumGetCString(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
		Jsonb	   *ops = DatumGetJsonbPCopy(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2, &isnull));
		EsFold	   *fold;

		if (strlen(topic) > ES_MAX_TOPIC_BYTES)
			continue;
		fold = hash_search(r->folds, topic, HASH_ENTER, NULL);
		EsCompileFold(topic, ops, fold);
	}
	MemoryContextSwitchTo(old);
	EsSpiEnd(&spi);

	if (OidIsValid(r->app_fold_fn))
	{
		EsCheckFoldFunction(r->app_fold_fn);
		EsCheckFoldExecute(r->app_fold_fn);
		fmgr_info_cxt(r->app_fold_fn, &r->app_fold, r->cxt);
	}
}

static EsReplay *
EsReplayBegin(MemoryContext cxt, bool reuse_blocks, const EsRelations *rels, int32 app_id,
			  const char *appname, Oid call_fold_fn)
{
	MemoryContext old = MemoryContextSwitchTo(cxt);
	EsReplay   *r = palloc0(sizeof(EsReplay));

	r->cxt = cxt;
	r->app_id = app_id;
	r->appname = pstrdup(appname);
	EsArenaInit(&r->arena, cxt, reuse_blocks);
	r->root = EsNodeContainer(&r->arena, ES_OBJECT);
	MemoryContextSwitchTo(old);
	EsLoadFolds(r, rels);
	if (OidIsValid(call_fold_fn))
	{
		EsCheckFoldFunction(call_fold_fn);
		EsCheckFoldExecute(call_fold_fn);
		r->call_fold_fn = call_fold_fn;
		fmgr_info_cxt(call_fold_fn, &r->call_fold, cxt);
	}
	return r;
}

typedef struct EsReplayErrorContext
{
	EsReplay   *r;
	const char *topic;
	int64		version;
} EsReplayErrorContext;

static void
EsReplayErrorCallback(void *arg)
{
	EsReplayErrorContext *c = (EsReplayErrorContext *) arg;
	char	   *id = DatumGetCString(DirectFunctionCall1(uuid_out, UUIDPGetDatum(&c->r->originator_id)));

	errcontext("replaying version " INT64_FORMAT " (topic \"%s\") of aggregate %s of application \"%s\"",
			   c->version, c->topic, id, c->r->appname);
}

/*
 * Parses an event's state bytes as JSON, naming the event when they are not:
 * all of it as jsonb, or (given a fold that reads fields only) just the values
 * the fold's operations take, into fold->scan (allocated in r->cxt).
 */
static Jsonb *
EsParseState(EsReplay *r, bytea *state, const char *topic, int64 version,
			 EsFold *fold)
{
	char	   *text;
	Jsonb	   *result = NULL;
	MemoryContext cxt = CurrentMemoryContext;

	/* Text in the database's encoding, without NUL bytes, or it never reaches jsonb. */
	if (!EsStateIsText(state))
		ereport(ERROR,
				(errcode(ERRCODE_CHARACTER_NOT_IN_REPERTOIRE),
				 errmsg("the state of version " INT64_FORMAT " (topic \"%s\") of aggregate %s of application \"%s\" is not valid %s text",
						version, topic, EsUuidOut(&r->originator_id), r->appname,
						GetDatabaseEncodingName()),
				 errhint("Replay reads states as JSON text; bytes that are not text cannot be folded.")));
	PG_TRY();
	{
		if (fold != NULL)
			(void) EsScanSources(fold, VARDATA_ANY(state), VARSIZE_ANY_EXHDR(state), &r->arena);
		else
		{
			text = pnstrdup(VARDATA_ANY(state), VARSIZE_ANY_EXHDR(state));
			result = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(text)));
		}
	}
	PG_CATCH();
	{
		ErrorData  *edata;
		char	   *id;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		id = DatumGetCString(DirectFunctionCall1(uuid_out, UUIDPGetDatum(&r->originator_id)));
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
				 errmsg("the state of version " INT64_FORMAT " (topic \"%s\") of aggregate %s of application \"%s\" is not valid JSON",
						version, topic, id, r->appname),
				 errdetail("%s", edata->message)));
	}
	PG_END_TRY();
	return result;
}

/* Folds one event into the state. */
static void
EsReplayEvent(EsReplay *r, const pg_uuid_t *originator_id, int64 version,
			  text *topic, bytea *state)
{
	const char *tdata = VARDATA_ANY(topic);
	int			tlen = VARSIZE_ANY_EXHDR(topic);
	char	   *topic_str;
	EsReplayErrorContext ectx;
	ErrorContextCallback callback;
	Jsonb	   *event;
	EsFold	   *fold = NULL;
	MemoryContext old;

	if (r->started)
	{
		if (memcmp(originator_id->data, r->originator_id.data, UUID_LEN) != 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("es_replay was given events of more than one aggregate"),
					 errhint("Replay one aggregate at a time, or GROUP BY originator_id.")));
		if (version <= r->version)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("es_replay was given version " INT64_FORMAT " after version " INT64_FORMAT,
							version, r->version),
					 errhint("Replay events in version order: es_events returns them so, or use es_replay(... ORDER BY originator_version).")));
	}
	r->started = true;
	r->originator_id = *originator_id;
	r->version = version;

	if (tlen <= ES_MAX_TOPIC_BYTES)
	{
		if (!r->topic_known || r->topic_len != tlen || memcmp(r->topic, tdata, tlen) != 0)
		{
			memcpy(r->topic, tdata, tlen);
			r->topic[tlen] = '\0';
			r->topic_len = tlen;
			r->topic_fold = NULL;
			if (!OidIsValid(r->call_fold_fn) && strlen(r->topic) == tlen)
				r->topic_fold = hash_search(r->folds, r->topic, HASH_FIND, NULL);
			r->topic_known = true;
		}
		topic_str = r->topic;
		fold = r->topic_fold;
	}
	else
		topic_str = text_to_cstring(topic);

	ectx.r = r;
	ectx.topic = topic_str;
	ectx.version = version;
	callback.callback = EsReplayErrorCallback;
	callback.arg = &ectx;
	callback.previous = error_context_stack;

	if (fold != NULL && !fold->whole_event)
	{
		/* Only the fields the operations read are parsed. */
		EsSourceScan *scan;

		(void) EsParseState(r, state, topic_str, version, fold);
		scan = fold->scan;
		error_context_stack = &callback;
		old = MemoryContextSwitchTo(r->cxt);
		for (int i = 0; i < fold->nops; i++)
		{
			const EsFoldOp *op = &fold->ops[i];

			CHECK_FOR_INTERRUPTS();
			r->root = EsApplyOp(&r->arena, r->root, op,
								op->has_value ? &op->value : (scan->found[i] ? &scan->values[i] : NULL), i);
		}
		MemoryContextSwitchTo(old);
		error_context_stack = callback.previous;
		return;
	}

	event = EsParseState(r, state, topic_str, version, NULL);
	error_context_stack = &callback;

	old = MemoryContextSwitchTo(r->cxt);
	if (OidIsValid(r->call_fold_fn) || (fold == NULL && OidIsValid(r->app_fold_fn)))
	{
		FmgrInfo   *fn = OidIsValid(r->call_fold_fn) ? &r->call_fold : &r->app_fold;
		Jsonb	   *current = EsDocumentToJsonb(r->root);
		Datum		result;
		LOCAL_FCINFO(fold_fcinfo, 3);

		InitFunctionCallInfoData(*fold_fcinfo, fn, 3, InvalidOid, NULL, NULL);
		fold_fcinfo->args[0].value = JsonbPGetDatum(current);
		fold_fcinfo->args[0].isnull = false;
		fold_fcinfo->args[1].value = PointerGetDatum(topic);
		fold_fcinfo->args[1].isnull = false;
		fold_fcinfo->args[2].value = JsonbPGetDatum(event);
		fold_fcinfo->args[2].isnull = false;
		result = FunctionCallInvoke(fold_fcinfo);
		if (fold_fcinfo->isnull)
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("the fold function %s returned NULL", format_procedure(fn->fn_oid)),
					 errhint("A fold function returns the new state; return the state unchanged to ignore an event.")));
		r->root = EsDocumentFromJsonb(&r->arena, DatumGetJsonbPCopy(result));
	}
	else
	{
		/* A fold that takes the whole event, or the default: a shallow merge of its fields. */
		static const EsFoldOp merge_all = {ES_OP_MERGE, {0, NULL, NULL}, true, {0, NULL, NULL}, false};
		Jsonb	   *ev = DatumGetJsonbPCopy(JsonbPGetDatum(event));
		const EsFoldOp *ops = fold != NULL ? fold->ops : &merge_all;
		int			nops = fold != NULL ? fold->nops : 1;

		for (int i = 0; i < nops; i++)
		{
			JsonbValue	src;

			CHECK_FOR_INTERRUPTS();
			r->root = EsApplyOp(&r->arena, r->root, &ops[i], EsOpSource(&ops[i], ev, &src) ? &src : NULL, i);
		}
	}
	MemoryContextSwitchTo(old);
	error_context_stack = callback.previous;
}

/* ---------------------------------------------------------------------
 * es_replay: the aggregate function
 * ---------------------------------------------------------------------
 */
/* The replay state of an aggregate call, made on its first event. */
static EsReplay *
EsReplayStart(FunctionCallInfo fcinfo, Oid call_fold_fn)
{
	MemoryContext aggcxt;
	EsApp		app;

	if (!AggCheckCallContext(fcinfo, &aggcxt))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("es_replay transition functions must be called by the es_replay aggregate")));
	EsOpenApp(&app, fcinfo, 1, ES_PRIV_READ);
	return EsReplayBegin(aggcxt, false, &app.rels, app.id, app.cname, call_fold_fn);
}

static EsReplay *
EsReplayStep(FunctionCallInfo fcinfo, Oid call_fold_fn)
{
	EsReplay   *r = PG_ARGISNULL(0) ? NULL : (EsReplay *) PG_GETARG_POINTER(0);
	HeapTupleHeader ev;
	TupleDesc	tupdesc;
	HeapTupleData tuple;
	Datum		values[4];
	bool		nulls[4];

	if (PG_ARGISNULL(2))
		return r;				/* no event (e.g. an outer join): nothing to fold */
	if (r == NULL)
		r = EsReplayStart(fcinfo, call_fold_fn);

	ev = PG_GETARG_HEAPTUPLEHEADER(2);
	if (r->event_desc == NULL || r->event_type != HeapTupleHeaderGetTypeId(ev))
	{
		MemoryContext old = MemoryContextSwitchTo(r->cxt);

		r->event_type = HeapTupleHeaderGetTypeId(ev);
		r->event_desc = lookup_rowtype_tupdesc_copy(r->event_type, HeapTupleHeaderGetTypMod(ev));
		MemoryContextSwitchTo(old);
	}
	tupdesc = r->event_desc;
	if (tupdesc->natts < 4 || tupdesc->natts > 6)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("es_replay needs es_stored_event rows")));
	tuple.t_len = HeapTupleHeaderGetDatumLength(ev);
	ItemPointerSetInvalid(&tuple.t_self);
	tuple.t_tableOid = InvalidOid;
	tuple.t_data = ev;
	/* Only the four attributes folding reads (the descriptor is kept across calls). */
	for (int i = 0; i < 4; i++)
		values[i] = heap_getattr(&tuple, i + 1, tupdesc, &nulls[i]);
	/* A forgotten aggregate's events have no state: nothing to fold. */
	if (nulls[3] && !nulls[0] && !nulls[1] && !nulls[2])
		return r;
	for (int i = 0; i < 4; i++)
		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("event.%s must not be NULL",
							i == 0 ? "originator_id" : i == 1 ? "originator_version" : i == 2 ? "topic" : "state")));
	EsReplayEvent(r, DatumGetUUIDP(values[0]), DatumGetInt64(values[1]),
				  DatumGetTextPP(values[2]), DatumGetByteaPP(values[3]));
	return r;
}

/* es_replay_step(internal, application text, event es_stored_event) */
PG_FUNCTION_INFO_V1(es_replay_step);
Datum
es_replay_step(PG_FUNCTION_ARGS)
{
	PG_RETURN_POINTER(EsReplayStep(fcinfo, InvalidOid));
}

/* es_replay_fold_step(internal, application text, event es_stored_event, fold regprocedure) */
PG_FUNCTION_INFO_V1(es_replay_fold_step);
Datum
es_replay_fold_step(PG_FUNCTION_ARGS)
{
	if (PG_ARGISNULL(3))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("fold must not be NULL")));
	PG_RETURN_POINTER(EsReplayStep(fcinfo, PG_GETARG_OID(3)));
}

/*
 * es_replay_fields_step(internal, application text, originator_id uuid,
 *		originator_version bigint, topic text, state bytea): the same fold, for
 * callers that pass the columns (no whole-row value to build per event).
 */
PG_FUNCTION_INFO_V1(es_replay_fields_step);
Datum
es_replay_fields_step(PG_FUNCTION_ARGS)
{
	static const char *const names[] = {"originator_id", "originator_version", "topic", "state"};
	EsReplay   *r = PG_ARGISNULL(0) ? NULL : (EsReplay *) PG_GETARG_POINTER(0);

	/* A forgotten aggregate's events have no state: nothing to fold. */
	if (PG_ARGISNULL(5) && !PG_ARGISNULL(2) && !PG_ARGISNULL(3) && !PG_ARGISNULL(4))
		PG_RETURN_POINTER(r);
	for (int i = 0; i < 4; i++)
		if (PG_ARGISNULL(i + 2))
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("%s must not be NULL", names[i])));
	if (r == NULL)
		r = EsReplayStart(fcinfo, InvalidOid);
	EsReplayEvent(r, PG_GETARG_UUID_P(2), PG_GETARG_INT64(3),
				  PG_GETARG_TEXT_PP(4), PG_GETARG_BYTEA_PP(5));
	PG_RETURN_POINTER(r);
}

/* es_replay_final(internal) RETURNS jsonb: NULL when there were no events. */
PG_FUNCTION_INFO_V1(es_replay_final);
Datum
es_replay_final(PG_FUNCTION_ARGS)
{
	EsReplay   *r = PG_ARGISNULL(0) ? NULL : (EsReplay *) PG_GETARG_POINTER(0);

	if (r == NULL || !r->started)
		PG_RETURN_NULL();
	PG_RETURN_JSONB_P(EsDocumentToJsonb(r->root));
}

/* ---------------------------------------------------------------------
 * Fold definitions
 * ---------------------------------------------------------------------
 */

/* Any change to an application's folds makes its snapshots stale. */
static void
EsBumpFoldGeneration(const EsRelations *rels, int32 app_id)
{
	StringInfoData sql;
	Oid			argtypes[1] = {INT4OID};
	Datum		values[1];

	values[0] = Int32GetDatum(app_id);
	initStringInfo(&sql);
	appendStringInfo(&sql, "UPDATE %s SET fold_generation = fold_generation OPERATOR(pg_catalog.+) 1 "
					 "WHERE id OPERATOR(pg_catalog.=) $1",
					 EsQualifiedName(rels, "es_applications"));
	if (SPI_execute_with_args(sql.data, 1, argtypes, values, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "eventsourcing: could not update es_applications");
}

/* es_define_fold(application text, topic text, operations jsonb) RETURNS void */
PG_FUNCTION_INFO_V1(es_define_fold);
Datum
es_define_fold(PG_FUNCTION_ARGS)
{
	EsApp		app;
	char	   *topic;
	StringInfoData sql;
	Oid			argtypes[3] = {INT4OID, TEXTOID, JSONBOID};
	Datum		values[3];
	EsSpi		spi;

	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("topic must not be NULL")));
	topic = text_to_cstring(PG_GETARG_TEXT_PP(1));
	if (strlen(topic) == 0 || strlen(topic) > ES_MAX_TOPIC_BYTES)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("topic must be 1 to %d bytes", ES_MAX_TOPIC_BYTES)));
	EsOpenApp(&app, fcinfo, 0, ES_PRIV_ADMIN);
	PreventCommandIfReadOnly("es_define_fold()");
	values[0] = Int32GetDatum(app.id);
	values[1] = PG_GETARG_DATUM(1);

	if (!PG_ARGISNULL(2))
	{
		EsFold		fold;

		EsCompileFold(topic, PG_GETARG_JSONB_P(2), &fold);	/* checks it */
		values[2] = PG_GETARG_DATUM(2);
	}
	EsSpiBegin(&spi, &app.rels);
	initStringInfo(&sql);
	if (PG_ARGISNULL(2))
	{
		appendStringInfo(&sql, "DELETE FROM %s WHERE application_id OPERATOR(pg_catalog.=) $1 "
						 "AND topic OPERATOR(pg_catalog.=) $2",
						 EsQualifiedName(&app.rels, "es_folds"));
		if (SPI_execute_with_args(sql.data, 2, argtypes, values, NULL, false, 0) != SPI_OK_DELETE)
			elog(ERROR, "eventsourcing: could not delete the fold");
	}
	else
	{
		appendStringInfo(&sql,
						 "INSERT INTO %s (application_id, topic, operations) VALUES ($1, $2, $3) "
						 "ON CONFLICT (application_id, topic) DO UPDATE SET operations = excluded.operations",
						 EsQualifiedName(&app.rels, "es_folds"));
		if (SPI_execute_with_args(sql.data, 3, argtypes, values, NULL, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "eventsourcing: could not record the fold");
	}
	EsBumpFoldGeneration(&app.rels, app.id);
	EsSpiEnd(&spi);
	PG_RETURN_VOID();
}

/*
 * Sets one setting column of an application (NULL when the argument is NULL);
 * a fold setting also makes the application's snapshots stale.  Needs admin.
 */
static void
EsSetApplicationSetting(FunctionCallInfo fcinfo, const char *column, Oid type, bool is_fold)
{
	EsApp		app;
	StringInfoData sql;
	Oid			argtypes[2] = {INT4OID, type};
	Datum		values[2];
	char		nulls[2] = {' ', ' '};
	EsSpi		spi;

	EsOpenApp(&app, fcinfo, 0, ES_PRIV_ADMIN);
	PreventCommandIfReadOnly("changing an application's settings");
	values[0] = Int32GetDatum(app.id);
	values[1] = PG_ARGISNULL(1) ? (Datum) 0 : PG_GETARG_DATUM(1);
	if (PG_ARGISNULL(1))
		nulls[1] = 'n';
	EsSpiBegin(&spi, &app.rels);
	initStringInfo(&sql);
	appendStringInfo(&sql, "UPDATE %s SET %s = $2 WHERE id OPERATOR(pg_catalog.=) $1",
					 EsQualifiedName(&app.rels, "es_applications"), column);
	if (SPI_execute_with_args(sql.data, 2, argtypes, values, nulls, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "eventsourcing: could not update es_applications");
	if (is_fold)
		EsBumpFoldGeneration(&app.rels, app.id);
	EsSpiEnd(&spi);
}

/*
 * es_set_fold_function(application text, fold regproc) RETURNS void
 *
 * The setter needs EXECUTE on the function too; every caller of es_replay and
 * es_state is checked again, and runs it with its own rights.
 */
PG_FUNCTION_INFO_V1(es_set_fold_function);
Datum
es_set_fold_function(PG_FUNCTION_ARGS)
{
	if (!PG_ARGISNULL(1))
	{
		EsCheckFoldFunction(PG_GETARG_OID(1));
		EsCheckFoldExecute(PG_GETARG_OID(1));
	}
	EsSetApplicationSetting(fcinfo, "fold_function", REGPROCEDUREOID, true);
	PG_RETURN_VOID();
}

/* es_set_snapshot_every(application text, events int) RETURNS void */
PG_FUNCTION_INFO_V1(es_set_snapshot_every);
Datum
es_set_snapshot_every(PG_FUNCTION_ARGS)
{
	if (!PG_ARGISNULL(1) && PG_GETARG_INT32(1) < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("events must be positive, or NULL to stop taking snapshots automatically"),
				 errdetail("The given events is %d.", PG_GETARG_INT32(1))));
	EsSetApplicationSetting(fcinfo, "snapshot_every", INT4OID, false);
	PG_RETURN_VOID();
}

/* ---------------------------------------------------------------------
 * es_state and snapshots
 * ---------------------------------------------------------------------
 */

typedef struct EsStateResult
{
	Jsonb	   *state;			/* NULL: no events */
	int64		version;		/* the last version folded */
	bytea	   *hash;			/* the event hash at that version */
	int64		folded;			/* events folded after the snapshot */
	bool		from_snapshot;
} EsStateResult;

/* The stored hash of one version of an aggregate (active snapshot), or NULL. */
static bytea *
EsEventHashAt(const EsRelations *rels, int32 app_id, pg_uuid_t *originator_id, int64 version)
{
	ScanKeyData keys[3];
	Datum		hash;
	EsLog		log = EsLogOf(rels, app_id);

	ScanKeyInit(&keys[0], 1, BTEqualStrategyNumber, F_INT4EQ, Int32GetDatum(app_id));
	ScanKeyInit(&keys[1], 2, BTEqualStrategyNumber, F_UUID_EQ, UUIDPGetDatum(originator_id));
	ScanKeyInit(&keys[2], 3, BTEqualStrategyNumber, F_INT8EQ, Int64GetDatum(version));
	if (!EsLastEventAttr(&log, log.version_idx, GetActiveSnapshot(), keys, 3,
						 Anum_es_event_hash, &hash))
		return NULL;
	return DatumGetByteaPP(hash);
}

static bool
EsHashesEqual(bytea *a, bytea *b)
{
	return a != NULL && b != NULL &&
		VARSIZE_ANY_EXHDR(a) == VARSIZE_ANY_EXHDR(b) &&
		memcmp(VARDATA_ANY(a), VARDATA_ANY(b), VARSIZE_ANY_EXHDR(a)) == 0;
}

/*
 * The state of an aggregate at `at_version` (all if < 0): from the latest
 * snapshot of the current fold generation at or below it whose event hash is
 * the chain's, plus the events after it.
 */
static EsStateResult
EsComputeState(const EsApp *app, pg_uuid_t *originator_id, int64 at_version,
			   int64 *generation, int32 *snapshot_every)
{
	const EsRelations *rels = &app->rels;
	EsStateResult res = {NULL, -1, NULL, 0, false};
	MemoryContext cxt = AllocSetContextCreate(CurrentMemoryContext, "es_state", ALLOCSET_DEFAULT_SIZES);
	MemoryContext tmpcxt = AllocSetContextCreate(CurrentMemoryContext, "es_state event", ALLOCSET_DEFAULT_SIZES);
	EsReplay   *r = EsReplayBegin(cxt, true, rels, app->id, app->cname, InvalidOid);
	StringInfoData sql;
	Oid			argtypes[4] = {INT4OID, UUIDOID, INT8OID, INT8OID};
	Datum		values[4];
	bool		isnull;
	int64		after = 0;
	bool		have_after = false;
	int64		snap_version = 0;
	Jsonb	   *snap_state = NULL;
	bytea	   *snap_hash = NULL;
	bytea	   *snap_stored = NULL;
	Relation	events;
	Relation	idx;
	Snapshot	snapshot;
	IndexScanDesc scan;
	ScanKeyData keys[4];
	int			nkeys = 2;
	TupleTableSlot *slot;
	bytea	   *hash_buf = NULL;
	Size		hash_cap = 0;
	EsSpi		spi;

	/* the application's settings, then the snapshot to start from */
	EsSpiBegin(&spi, rels);
	values[0] = Int32GetDatum(app->id);
	initStringInfo(&sql);
	appendStringInfo(&sql, "SELECT fold_generation, snapshot_every FROM %s WHERE id OPERATOR(pg_catalog.=) $1",
					 EsQualifiedName(rels, "es_applications"));
	if (SPI_execute_with_args(sql.data, 1, argtypes, values, NULL, true, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "eventsourcing: could not read es_applications");
	*generation = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	*snapshot_every = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	if (isnull)
		*snapshot_every = 0;

	values[1] = UUIDPGetDatum(originator_id);
	values[2] = Int64GetDatum(*generation);
	values[3] = Int64GetDatum(at_version < 0 ? PG_INT64_MAX : at_version);
	resetStringInfo(&sql);
	appendStringInfo(&sql,
					 "SELECT originator_version, state, event_hash, stored_state FROM %s "
					 "WHERE application_id OPERATOR(pg_catalog.=) $1 AND originator_id OPERATOR(pg_catalog.=) $2 "
					 "AND fold_generation OPERATOR(pg_catalog.=) $3 AND originator_version OPERATOR(pg_catalog.<=) $4 "
					 "ORDER BY originator_version DESC LIMIT 1",
					 EsQualifiedName(rels, "es_snapshots"));
	if (SPI_execute_with_args(sql.data, 4, argtypes, values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "eventsourcing: could not read es_snapshots");
	if (SPI_processed == 1)
	{
		MemoryContext old = MemoryContextSwitchTo(cxt);
		Datum		h;

		Datum		st;

		snap_version = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
		st = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull);
		snap_state = isnull ? NULL : DatumGetJsonbPCopy(st);
		h = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull);
		snap_hash = isnull ? NULL : DatumGetByteaPCopy(h);
		st = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 4, &isnull);
		snap_stored = isnull ? NULL : DatumGetByteaPCopy(st);
		MemoryContextSwitchTo(old);
	}
	EsSpiEnd(&spi);

	/* An encrypted snapshot: under the aggregate's key, like its events. */
	if (snap_state == NULL && snap_stored != NULL)
	{
		EsStateIdentity sid = {rels, app->id, app->name, originator_id, snap_version, true, false, false};
		bytea	   *plain = EsDecodeState(&sid, snap_stored, ES_FORM_ENCODED);

		if (plain != NULL)
		{
			MemoryContext old = MemoryContextSwitchTo(cxt);

			snap_state = DatumGetJsonbP(DirectFunctionCall1(jsonb_in,
															CStringGetDatum(text_to_cstring((text *) plain))));
			MemoryContextSwitchTo(old);
		}
	}

	/* A snapshot counts only while it was made at the chain's event. */
	if (snap_state != NULL)
	{
		bytea	   *chain = EsEventHashAt(rels, app->id, originator_id, snap_version);

		if (EsHashesEqual(chain, snap_hash))
		{
			r->root = EsDocumentFromJsonb(&r->arena, snap_state);
			r->started = true;
			r->originator_id = *originator_id;
			r->version = snap_version;
			after = snap_version;
			have_after = true;
			res.from_snapshot = true;
			res.hash = chain;
		}
		else
			ereport(NOTICE,
					(errmsg("ignoring the snapshot of aggregate %s at version " INT64_FORMAT ": it does not match the recorded events",
							EsUuidOut(originator_id), snap_version),
					 errdetail("The snapshot's event hash is not the hash of that version in the log; the state is folded from the first event.")));
	}

	/* then the events after it */
	events = table_open(app->log.relid, AccessShareLock);
	idx = index_open(app->log.version_idx, AccessShareLock);
	snapshot = RegisterSnapshot(GetActiveSnapshot());
	ScanKeyInit(&keys[0], 1, BTEqualStrategyNumber, F_INT4EQ, Int32GetDatum(app->id));
	ScanKeyInit(&keys[1], 2, BTEqualStrategyNumber, F_UUID_EQ, UUIDPGetDatum(originator_id));
	if (have_after)
		ScanKeyInit(&keys[nkeys++], 3, BTGreaterStrategyNumber, F_INT8GT, Int64GetDatum(after));
	if (at_version >= 0)
		ScanKeyInit(&keys[nkeys++], 3, BTLessEqualStrategyNumber, F_INT8LE, Int64GetDatum(at_version));
	scan = index_beginscan(events, idx, snapshot, nkeys, 0);
	index_rescan(scan, keys, nkeys, NULL, 0);
	slot = table_slot_create(events, NULL);
	while (index_getnext_slot(scan, ForwardScanDirection, slot))
	{
		/* Parsing garbage goes to a per-event context; the state lives in cxt. */
		MemoryContext old;

		CHECK_FOR_INTERRUPTS();
		old = MemoryContextSwitchTo(tmpcxt);
		slot_getallattrs(slot);
		{
			int64		version = DatumGetInt64(slot->tts_values[Anum_es_originator_version - 1]);
			EsStateIdentity eid = {rels, app->id, app->name, originator_id, version, false, false, false};
			bytea	   *state = EsDecodeState(&eid, DatumGetByteaPP(slot->tts_values[Anum_es_state - 1]),
											  DatumGetInt16(slot->tts_values[Anum_es_stored_form - 1]));

			/* A forgotten aggregate's events are skipped. */
			if (state != NULL)
				EsReplayEvent(r, originator_id, version,
							  DatumGetTextPP(slot->tts_values[Anum_es_topic - 1]), state);
		}
		{
			/* The last event's hash, in one buffer rather than a copy per event. */
			bytea	   *h = DatumGetByteaPP(slot->tts_values[Anum_es_event_hash - 1]);
			Size		hlen = VARSIZE_ANY_EXHDR(h);

			if (hash_buf == NULL || hlen > hash_cap)
			{
				hash_buf = MemoryContextAlloc(cxt, VARHDRSZ + hlen);
				hash_cap = hlen;
			}
			SET_VARSIZE(hash_buf, VARHDRSZ + hlen);
			memcpy(VARDATA(hash_buf), VARDATA_ANY(h), hlen);
			res.hash = hash_buf;
		}
		MemoryContextSwitchTo(old);
		MemoryContextReset(tmpcxt);
		res.folded++;
	}
	MemoryContextDelete(tmpcxt);
	index_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
	UnregisterSnapshot(snapshot);
	index_close(idx, AccessShareLock);
	table_close(events, AccessShareLock);

	if (r->started)
	{
		res.state = EsDocumentToJsonb(r->root);
		res.version = r->version;
	}
	return res;
}

/*
 * Stores a snapshot: as jsonb, or, for an encrypting application, encrypted
 * under the aggregate's data key (so es_forget reaches it).
 */
static void
EsStoreSnapshot(const EsApp *app, pg_uuid_t *originator_id,
				const EsStateResult *res, int64 generation)
{
	const EsRelations *rels = &app->rels;
	StringInfoData sql;
	Oid			argtypes[7] = {INT4OID, UUIDOID, INT8OID, JSONBOID, INT8OID, BYTEAOID, BYTEAOID};
	Datum		values[7];
	char		nulls[7] = {' ', ' ', ' ', ' ', ' ', ' ', 'n'};
	EsSpi		spi;

	values[0] = Int32GetDatum(app->id);
	values[1] = UUIDPGetDatum(originator_id);
	values[2] = Int64GetDatum(res->version);
	values[3] = JsonbPGetDatum(res->state);
	values[4] = Int64GetDatum(generation);
	values[5] = PointerGetDatum(res->hash);
	values[6] = (Datum) 0;
	if (app->settings.encryption)
	{
		EsStateIdentity sid = {rels, app->id, app->name, originator_id, res->version, true, false, false};
		int16		form;

		values[6] = PointerGetDatum(EsEncodeState(&sid, EsStateFromJsonb(res->state),
												  app->settings.compression, true,
												  app->settings.dictionary, &form));
		nulls[3] = 'n';
		nulls[6] = ' ';
	}
	EsSpiBegin(&spi, rels);
	initStringInfo(&sql);
	appendStringInfo(&sql,
					 "INSERT INTO %s (application_id, originator_id, originator_version, state, fold_generation, created_at, event_hash, stored_state) "
					 "VALUES ($1, $2, $3, $4, $5, pg_catalog.now(), $6, $7) ON CONFLICT (application_id, originator_id, originator_version) "
					 "DO UPDATE SET state = excluded.state, fold_generation = excluded.fold_generation, "
					 "created_at = excluded.created_at, event_hash = excluded.event_hash, stored_state = excluded.stored_state",
					 EsQualifiedName(rels, "es_snapshots"));
	if (SPI_execute_with_args(sql.data, 7, argtypes, values, nulls, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "eventsourcing: could not store the snapshot");
	EsSpiEnd(&spi);
}

/*
 * es_state(application text, originator_id uuid, at_version bigint) RETURNS jsonb
 *
 * Needs read; stores an automatic snapshot only for callers who may append.
 */
PG_FUNCTION_INFO_V1(es_state);
Datum
es_state(PG_FUNCTION_ARGS)
{
	pg_uuid_t  *originator_id;
	int64		at_version = PG_ARGISNULL(2) ? -1 : PG_GETARG_INT64(2);
	EsApp		app;
	int64		generation;
	int32		every;
	EsStateResult res;

	originator_id = EsArgUuid(fcinfo, 1, "originator_id");
	if (!PG_ARGISNULL(2) && at_version < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("at_version must not be negative"),
				 errdetail("The given at_version is " INT64_FORMAT ".", at_version)));
	EsOpenApp(&app, fcinfo, 0, ES_PRIV_READ);

	res = EsComputeState(&app, originator_id, at_version, &generation, &every);
	if (res.state == NULL)
		PG_RETURN_NULL();

	/* Automatic snapshots: when enough events were folded, where we may write. */
	if (every > 0 && res.folded >= every && at_version < 0 && res.hash != NULL &&
		!RecoveryInProgress() && !XactReadOnly &&
		(EsPrivilegesOf(&app.rels, app.id) & ES_PRIV_APPEND))
		EsStoreSnapshot(&app, originator_id, &res, generation);
	PG_RETURN_JSONB_P(res.state);
}

/* es_snapshot(application text, originator_id uuid) RETURNS bigint: needs append. */
PG_FUNCTION_INFO_V1(es_snapshot);
Datum
es_snapshot(PG_FUNCTION_ARGS)
{
	pg_uuid_t  *originator_id;
	EsApp		app;
	int64		generation;
	int32		every;
	EsStateResult res;

	originator_id = EsArgUuid(fcinfo, 1, "originator_id");
	EsOpenApp(&app, fcinfo, 0, ES_PRIV_APPEND);
	PreventCommandIfReadOnly("es_snapshot()");

	res = EsComputeState(&app, originator_id, -1, &generation, &every);
	if (res.state == NULL || res.hash == NULL)
		PG_RETURN_NULL();
	EsStoreSnapshot(&app, originator_id, &res, generation);
	PG_RETURN_INT64(res.version);
}

/*
 * es_jsonb(state bytea) RETURNS jsonb: a state's bytes as jsonb (NULL stays
 * NULL, as for a forgotten event); 22021 for bytes that are not text in the
 * database's encoding, 22P02 for text that is not JSON.
 */
PG_FUNCTION_INFO_V1(es_jsonb);
Datum
es_jsonb(PG_FUNCTION_ARGS)
{
	bytea	   *state = PG_GETARG_BYTEA_PP(0);

	if (!EsStateIsText(state))
		ereport(ERROR,
				(errcode(ERRCODE_CHARACTER_NOT_IN_REPERTOIRE),
				 errmsg("state is not valid %s text", GetDatabaseEncodingName())));
	return DirectFunctionCall1(jsonb_in,
							   CStringGetDatum(pnstrdup(VARDATA_ANY(state), VARSIZE_ANY_EXHDR(state))));
}
