/*
 * store.c: the store dispatch. imgw_store_open() picks a backend table by
 * cfg->backend; every request function validates its arguments here, the
 * same way for every backend, and then calls the table (store_impl.h).
 *
 * It also keeps store.h's promise that no callback runs before its
 * request function returns, for every backend at once: each request gets
 * a completion record whose trampoline is what the backend calls back. A
 * trampoline that runs while the request function is still on the stack
 * (memory and file always, redis when it refuses at once) copies what its
 * callback would get into the record and the record is queued on the
 * loop handle; one that runs later (a redis reply) calls the caller's
 * callback directly. Refusals here are queued the same way.
 *
 * Threads: open/close on the main thread; everything else on the calling
 * loop's thread. The queue belongs to one loop handle, so it needs no
 * lock.
 */
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "err.h"
#include "idsyntax.h"
#include "store_impl.h"

/* 1 when s is a NUL-terminated string of 1..max bytes. */
static int
valid_str(const char *s, size_t max)
{
    if (s == NULL)
        return 0;
    size_t n = strnlen(s, max + 1);
    return n >= 1 && n <= max;
}

/* Like valid_str, but NULL and "" are fine (optional fields). */
static int
valid_opt(const char *s, size_t max)
{
    return s == NULL || strnlen(s, max + 1) <= max;
}

/*
 * User, member and group ids become parts of keys (IM-SEQ-{u},
 * IM-DEDUP-{u}:{cmid}, ...), so they must obey the id syntax
 * (idsyntax.h): core checks it where ids enter, and this edge check makes
 * sure no backend ever composes a key from anything else, whoever calls.
 * device, platform and broker_id are only hash fields and values: a length
 * bound is enough for them.
 */
#define valid_id(s) imgw_id_valid(s)
#define valid_name(s) valid_str((s), IMGW__STORE_ID_MAX)

int
imgw_store_open(imgw_store_t **out, const imgw_store_cfg_t *cfg, char *err,
                size_t errlen)
{
    char dummy[8];
    if (err == NULL || errlen == 0) {
        err = dummy;
        errlen = sizeof(dummy);
    }
    err[0] = '\0';
    if (out == NULL || cfg == NULL) {
        snprintf(err, errlen, "store: no configuration");
        return IMGW_EINVAL;
    }
    *out = NULL;
    const char *name =
        cfg->backend && cfg->backend[0] ? cfg->backend : "memory";
    const imgw_store_backend_t *be = NULL;
    if (strcmp(name, "memory") == 0) {
        be = &imgw__store_memory;
    } else if (strcmp(name, "file") == 0) {
        be = &imgw__store_file;
    } else if (strcmp(name, "redis") == 0) {
        be = &imgw__store_redis;
    } else {
        snprintf(err, errlen, "store: unknown backend \"%.32s\"", name);
        return IMGW_ECONFIG;
    }
    imgw_store_t *s = imgw_try_calloc(1, sizeof(*s));
    if (s == NULL) {
        snprintf(err, errlen, "store: out of memory");
        return IMGW_ENOMEM;
    }
    s->be = be;
    int r = be->open(s, cfg, err, errlen);
    if (r != 0) {
        if (err[0] == '\0')
            snprintf(err, errlen, "store: cannot open %s backend: %s", name,
                     imgw_strerror(r));
        imgw_free(s);
        return r;
    }
    *out = s;
    return 0;
}

void
imgw_store_close(imgw_store_t *s)
{
    if (s == NULL)
        return;
    s->be->close(s);
    imgw_free(s);
}

/* ---- completions --------------------------------------------------------- */

/* Callbacks run per idle callback before the loop polls again: a chain of
 * requests each queued by the previous callback cannot starve the loop. */
#define CQ_RUN_MAX 4096

typedef enum {
    REC_APPEND,
    REC_SYNC,
    REC_SEQ,
    REC_DEDUPE,
    REC_DONE,
    REC_MSG,
    REC_MEMBERS,
    REC_ROUTES,
    REC_CONVS,
} rec_kind_t;

typedef struct rec_s rec_t;

struct imgw__store_cq_s {
    rec_t *head, *tail; /* completed, in completion order */
    uv_loop_t *loop;    /* NULL: run only by run_completions */
    uv_idle_t idle;     /* runs them when loop is set */
    int idle_on;
    int closing; /* imgw_store_loop_close() runs: refuse new requests */
};

/*
 * One request in flight. in_call is 1 while the request function runs:
 * a trampoline that sees it copies the result (the backend's pointers die
 * when it returns) and marks done; the request function then queues it.
 */
struct rec_s {
    rec_t *next;
    struct imgw__store_cq_s *cq;
    rec_kind_t kind;
    int in_call, done, status;
    void *data;
    union {
        imgw_store_append_cb append;
        imgw_store_sync_cb sync;
        imgw_store_seq_cb seq;
        imgw_store_dedupe_cb dedupe;
        imgw_store_done_cb done;
        imgw_store_msg_cb msg;
        imgw_store_members_cb members;
        imgw_store_routes_cb routes;
        imgw_store_conv_list_cb convs;
    } cb;
    union {
        imgw_store_append_t *req; /* the caller's: holds the result */
        struct {
            imgw_store_entry_t *e; /* one allocation with the bytes */
            size_t n;
            int has_more;
            int64_t server_max_seq, oldest_seq;
            uint64_t epoch;
        } sync;
        struct {
            int64_t v;
            uint64_t epoch;
        } seq;
        struct {
            uint64_t message_id;
            int64_t seq;
        } dedupe;
        imgw_store_msg_t *msg; /* one allocation with its strings, or NULL */
        struct {
            const char **m; /* one allocation with the strings */
            size_t n;
        } members;
        struct {
            imgw_store_route_t *r; /* one allocation with the strings */
            size_t n;
        } routes;
        struct {
            imgw_store_conv_t *c; /* a copy (entries are flat) */
            size_t n;
            int has_more;
            uint64_t total_unread;
        } convs;
    } u;
};

/*
 * A record is a few dozen bytes of fixed size, needed to answer at all: a
 * process that cannot get one cannot answer anybody either, so this is
 * the one allocation of the store that aborts instead of failing (like
 * h2o's h2o_mem_alloc). Everything sized by a request fails softly.
 */
static rec_t *
rec_new(imgw_store_loop_t *sl, rec_kind_t kind, void *data)
{
    rec_t *q = imgw_xcalloc(1, sizeof(*q)); /* aborts, never injected */
    q->cq = sl->cq;
    q->kind = kind;
    q->in_call = 1;
    q->data = data;
    return q;
}

static void cq_idle_cb(uv_idle_t *h);

static void
cq_push(struct imgw__store_cq_s *cq, rec_t *q)
{
    q->next = NULL;
    if (cq->tail)
        cq->tail->next = q;
    else
        cq->head = q;
    cq->tail = q;
    if (cq->loop != NULL && !cq->idle_on) {
        uv_idle_start(&cq->idle, cq_idle_cb);
        cq->idle_on = 1;
    }
}

/* Runs the caller's callback of a completed record and frees it. */
static void
rec_run(rec_t *q)
{
    int st = q->status;
    switch (q->kind) {
    case REC_APPEND:
        q->cb.append(q->u.req, st, q->data);
        break;
    case REC_SYNC:
        q->cb.sync(st, q->u.sync.n ? q->u.sync.e : NULL, q->u.sync.n,
                   q->u.sync.has_more, q->u.sync.server_max_seq,
                   q->u.sync.oldest_seq, q->u.sync.epoch, q->data);
        imgw_free(q->u.sync.e);
        break;
    case REC_SEQ:
        q->cb.seq(st, q->u.seq.v, q->u.seq.epoch, q->data);
        break;
    case REC_DEDUPE:
        q->cb.dedupe(st, q->u.dedupe.message_id, q->u.dedupe.seq, q->data);
        break;
    case REC_DONE:
        if (q->cb.done)
            q->cb.done(st, q->data);
        break;
    case REC_MSG:
        q->cb.msg(st, st == 0 ? q->u.msg : NULL, q->data);
        imgw_free(q->u.msg);
        break;
    case REC_MEMBERS:
        q->cb.members(st, q->u.members.m, q->u.members.n, q->data);
        imgw_free(q->u.members.m);
        break;
    case REC_ROUTES:
        q->cb.routes(st, q->u.routes.n ? q->u.routes.r : NULL, q->u.routes.n,
                     q->data);
        imgw_free(q->u.routes.r);
        break;
    case REC_CONVS:
        q->cb.convs(st, q->u.convs.n ? q->u.convs.c : NULL, q->u.convs.n,
                    q->u.convs.has_more, q->u.convs.total_unread, q->data);
        imgw_free(q->u.convs.c);
        break;
    }
    imgw_free(q);
}

/* Runs up to max queued completions, including ones their callbacks
 * queue; returns how many ran. */
static int
cq_run(struct imgw__store_cq_s *cq, int max)
{
    int ran = 0;
    while (cq->head != NULL && ran < max) {
        rec_t *q = cq->head;
        cq->head = q->next;
        if (cq->head == NULL)
            cq->tail = NULL;
        rec_run(q);
        ran++;
    }
    if (cq->head == NULL && cq->idle_on) {
        uv_idle_stop(&cq->idle);
        cq->idle_on = 0;
    }
    return ran;
}

static void
cq_idle_cb(uv_idle_t *h)
{
    cq_run(h->data, CQ_RUN_MAX);
}

int
imgw_store_loop_run_completions(imgw_store_loop_t *sl)
{
    if (sl == NULL || sl->cq == NULL)
        return 0;
    return cq_run(sl->cq, INT32_MAX);
}

/*
 * The request function's tail: r is what the backend returned. A
 * completed record (the trampoline ran, or the backend refused) is queued;
 * one still in flight waits for its trampoline.
 */
static int
rec_call(rec_t *q, int r)
{
    q->in_call = 0;
    if (!q->done && r != 0) {
        q->status = r;
        q->done = 1;
    }
    if (q->done)
        cq_push(q->cq, q);
    return 0;
}

/* A refusal before the backend saw the request. */
static int
rec_refuse(rec_t *q, int status)
{
    q->status = status;
    q->done = 1;
    return rec_call(q, 0);
}

/* 1 when the request may go to the backend; else it was refused. */
static int
rec_open(rec_t *q)
{
    if (q->cq == NULL || !q->cq->closing)
        return 1;
    /* A callback run by imgw_store_loop_close() asked for more. */
    rec_refuse(q, IMGW_EBUSY);
    return 0;
}

/* A trampoline's first step: 1 when the caller's callback must wait. */
static int
rec_sync_now(rec_t *q, int status)
{
    if (!q->in_call)
        return 0;
    q->status = status;
    q->done = 1;
    return 1;
}

static void
append_tramp(imgw_store_append_t *req, int status, void *data)
{
    rec_t *q = data;
    if (rec_sync_now(q, status))
        return; /* the result is in *req, which the caller owns */
    q->cb.append(req, status, q->data);
    imgw_free(q);
}

static void
sync_tramp(int status, const imgw_store_entry_t *e, size_t n, int has_more,
           int64_t server_max_seq, int64_t oldest_seq, uint64_t epoch,
           void *data)
{
    rec_t *q = data;
    if (!rec_sync_now(q, status)) {
        q->cb.sync(status, e, n, has_more, server_max_seq, oldest_seq, epoch,
                   q->data);
        imgw_free(q);
        return;
    }
    q->u.sync.has_more = has_more;
    q->u.sync.server_max_seq = server_max_seq;
    q->u.sync.oldest_seq = oldest_seq;
    q->u.sync.epoch = epoch;
    if (status != 0 || n == 0)
        return;
    size_t bytes = n * sizeof(*e);
    for (size_t i = 0; i < n; i++)
        bytes += e[i].len;
    imgw_store_entry_t *c = imgw_try_malloc(bytes);
    if (c == NULL) {
        q->status = IMGW_ENOMEM;
        return;
    }
    uint8_t *p = (uint8_t *)(c + n);
    for (size_t i = 0; i < n; i++) {
        c[i] = e[i];
        if (e[i].len > 0)
            memcpy(p, e[i].blob, e[i].len);
        c[i].blob = p;
        p += e[i].len;
    }
    q->u.sync.e = c;
    q->u.sync.n = n;
}

static void
seq_tramp(int status, int64_t max_seq, uint64_t epoch, void *data)
{
    rec_t *q = data;
    if (rec_sync_now(q, status)) {
        q->u.seq.v = max_seq;
        q->u.seq.epoch = epoch;
        return;
    }
    q->cb.seq(status, max_seq, epoch, q->data);
    imgw_free(q);
}

static void
dedupe_tramp(int status, uint64_t message_id, int64_t seq, void *data)
{
    rec_t *q = data;
    if (rec_sync_now(q, status)) {
        q->u.dedupe.message_id = message_id;
        q->u.dedupe.seq = seq;
        return;
    }
    q->cb.dedupe(status, message_id, seq, q->data);
    imgw_free(q);
}

static void
done_tramp(int status, void *data)
{
    rec_t *q = data;
    if (rec_sync_now(q, status))
        return;
    q->cb.done(status, q->data);
    imgw_free(q);
}

static void
msg_tramp(int status, const imgw_store_msg_t *m, void *data)
{
    rec_t *q = data;
    if (!rec_sync_now(q, status)) {
        q->cb.msg(status, m, q->data);
        imgw_free(q);
        return;
    }
    if (status != 0 || m == NULL)
        return;
    size_t sl = strlen(m->sender) + 1, cl = strlen(m->conversation_id) + 1;
    imgw_store_msg_t *c = imgw_try_malloc(sizeof(*c) + sl + cl);
    if (c == NULL) {
        q->status = IMGW_ENOMEM;
        return;
    }
    *c = *m;
    char *p = (char *)(c + 1);
    c->sender = memcpy(p, m->sender, sl);
    c->conversation_id = memcpy(p + sl, m->conversation_id, cl);
    q->u.msg = c;
}

static void
members_tramp(int status, const char *const *members, size_t n, void *data)
{
    rec_t *q = data;
    if (!rec_sync_now(q, status)) {
        q->cb.members(status, members, n, q->data);
        imgw_free(q);
        return;
    }
    if (status != 0 || n == 0)
        return;
    size_t bytes = n * sizeof(char *);
    for (size_t i = 0; i < n; i++)
        bytes += strlen(members[i]) + 1;
    const char **c = imgw_try_malloc(bytes);
    if (c == NULL) {
        q->status = IMGW_ENOMEM;
        return;
    }
    char *p = (char *)(c + n);
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(members[i]) + 1;
        c[i] = memcpy(p, members[i], len);
        p += len;
    }
    q->u.members.m = c;
    q->u.members.n = n;
}

static void
routes_tramp(int status, const imgw_store_route_t *r, size_t n, void *data)
{
    rec_t *q = data;
    if (!rec_sync_now(q, status)) {
        q->cb.routes(status, r, n, q->data);
        imgw_free(q);
        return;
    }
    if (status != 0 || n == 0)
        return;
    size_t bytes = n * sizeof(*r);
    for (size_t i = 0; i < n; i++)
        bytes += strlen(r[i].platform) + strlen(r[i].broker_id) + 2;
    imgw_store_route_t *c = imgw_try_malloc(bytes);
    if (c == NULL) {
        q->status = IMGW_ENOMEM;
        return;
    }
    char *p = (char *)(c + n);
    for (size_t i = 0; i < n; i++) {
        size_t a = strlen(r[i].platform) + 1, b = strlen(r[i].broker_id) + 1;
        c[i].platform = memcpy(p, r[i].platform, a);
        c[i].broker_id = memcpy(p + a, r[i].broker_id, b);
        p += a + b;
    }
    q->u.routes.r = c;
    q->u.routes.n = n;
}

static void
convs_tramp(int status, const imgw_store_conv_t *c, size_t n, int has_more,
            uint64_t total_unread, void *data)
{
    rec_t *q = data;
    if (!rec_sync_now(q, status)) {
        q->cb.convs(status, c, n, has_more, total_unread, q->data);
        imgw_free(q);
        return;
    }
    q->u.convs.has_more = has_more;
    q->u.convs.total_unread = total_unread;
    if (status != 0 || n == 0)
        return;
    /* n <= IMGW_STORE_CONV_PAGE_MAX (the request's bound) */
    imgw_store_conv_t *cp = imgw_try_malloc(n * sizeof(*c));
    if (cp == NULL) {
        q->status = IMGW_ENOMEM;
        return;
    }
    memcpy(cp, c, n * sizeof(*c));
    q->u.convs.c = cp;
    q->u.convs.n = n;
}

/*
 * Requests whose callback may be NULL (imgw_store_done_cb): with no
 * callback there is nothing to queue and the backend gets NULL; with one,
 * *cbp and *datap are replaced by the trampoline and its record. Returns
 * the record (NULL: no callback).
 */
static rec_t *
done_begin(imgw_store_loop_t *sl, imgw_store_done_cb *cbp, void **datap)
{
    if (*cbp == NULL)
        return NULL;
    rec_t *q = rec_new(sl, REC_DONE, *datap);
    q->cb.done = *cbp;
    *cbp = done_tramp;
    *datap = q;
    return q;
}

/* Refuses a done request: its callback (if any) runs later. */
static int
done_refuse(rec_t *q, int status)
{
    return q ? rec_refuse(q, status) : 0;
}

/* 1 when it may go to the backend. */
static int
done_open(imgw_store_loop_t *sl, rec_t *q)
{
    if (q != NULL)
        return rec_open(q);
    return sl->cq == NULL || !sl->cq->closing;
}

static int
done_call(rec_t *q, int r)
{
    return q ? rec_call(q, r) : 0;
}

/* ---- loops --------------------------------------------------------------- */

int
imgw_store_loop_open(imgw_store_t *s, int loop_index, uv_loop_t *loop,
                     imgw_store_loop_t **out)
{
    if (s == NULL || out == NULL || loop_index < 0)
        return IMGW_EINVAL;
    *out = NULL;
    struct imgw__store_cq_s *cq = imgw_try_calloc(1, sizeof(*cq));
    if (cq == NULL)
        return IMGW_ENOMEM;
    int r = s->be->loop_open(s, loop_index, loop, out);
    if (r != 0) {
        imgw_free(cq);
        return r;
    }
    cq->loop = loop;
    if (loop != NULL) {
        uv_idle_init(loop, &cq->idle);
        cq->idle.data = cq;
    }
    (*out)->cq = cq;
    return 0;
}

static void
cq_closed(uv_handle_t *h)
{
    imgw_free(h->data);
}

/*
 * Runs what is queued (callbacks that ask for more get IMGW_EBUSY, also
 * queued and run here), closes the backend's handle (redis fails what is
 * in flight through the callbacks), runs what that queued, and frees the
 * queue: after the idle handle closed when there is a loop (it must run
 * once more, as for redis).
 */
void
imgw_store_loop_close(imgw_store_loop_t *sl)
{
    if (sl == NULL)
        return;
    struct imgw__store_cq_s *cq = sl->cq;
    if (cq != NULL) {
        cq->closing = 1;
        cq_run(cq, INT32_MAX);
    }
    sl->be->loop_close(sl); /* memory and file free sl here */
    if (cq == NULL)
        return;
    cq_run(cq, INT32_MAX);
    if (cq->loop != NULL)
        uv_close((uv_handle_t *)&cq->idle, cq_closed);
    else
        imgw_free(cq);
}

int
imgw_store_loop_ready(imgw_store_loop_t *sl)
{
    return sl != NULL && sl->be->loop_ready(sl);
}

int
imgw_store_ready(imgw_store_t *s, int n_loops)
{
    return s != NULL && (s->be->ready == NULL || s->be->ready(s, n_loops));
}

void
imgw_store_tick(imgw_store_t *s, int64_t now_ms)
{
    if (s != NULL && s->be->tick != NULL)
        s->be->tick(s, now_ms);
}

int
imgw_store_stats(imgw_store_t *s, imgw_store_stats_t *out)
{
    if (s == NULL || out == NULL)
        return IMGW_EINVAL;
    memset(out, 0, sizeof(*out));
    return s->be->stats ? s->be->stats(s, out) : IMGW_ENOTFOUND;
}

/* ---- append ---------------------------------------------------------- */

static int
append_check(const imgw_store_append_t *req)
{
    if (!valid_id(req->sender) || !imgw_cmid_valid_opt(req->client_msg_id) ||
        !valid_opt(req->conversation_id, IMGW__STORE_CONV_MAX) ||
        req->users == NULL || req->n_users == 0 || req->seqs == NULL ||
        (req->entry == NULL && req->entry_len != 0))
        return IMGW_EINVAL;
    if (req->n_users > IMGW_STORE_MAX_GROUP ||
        req->entry_len > IMGW__STORE_ENTRY_MAX)
        return IMGW_ETOOBIG;
    for (size_t i = 0; i < req->n_users; i++)
        if (!valid_id(req->users[i]))
            return IMGW_EINVAL;
    return 0;
}

int
imgw_store_append(imgw_store_loop_t *sl, imgw_store_append_t *req,
                  imgw_store_append_cb cb, void *data)
{
    if (sl == NULL || req == NULL || cb == NULL)
        return IMGW_EINVAL;
    /* Outputs start clean whatever the caller left in them. */
    req->duplicate = 0;
    req->dup_message_id = 0;
    req->dup_seq = 0;
    rec_t *q = rec_new(sl, REC_APPEND, data);
    q->cb.append = cb;
    q->u.req = req;
    int r = append_check(req);
    if (r != 0)
        return rec_refuse(q, r);
    if (!rec_open(q))
        return 0;
    return rec_call(q, sl->be->append(sl, req, append_tramp, q));
}

/* ---- timelines ------------------------------------------------------- */

int
imgw_store_sync(imgw_store_loop_t *sl, const char *user, int64_t min_seq,
                int64_t max_seq, int limit, imgw_store_sync_cb cb, void *data)
{
    if (sl == NULL || cb == NULL)
        return IMGW_EINVAL;
    rec_t *q = rec_new(sl, REC_SYNC, data);
    q->cb.sync = cb;
    if (!valid_id(user) || min_seq < 0 || max_seq < 0)
        return rec_refuse(q, IMGW_EINVAL);
    if (limit <= 0)
        limit = IMGW__STORE_SYNC_DEFAULT;
    if (limit > IMGW_STORE_SYNC_MAX)
        limit = IMGW_STORE_SYNC_MAX;
    if (!rec_open(q))
        return 0;
    return rec_call(
        q, sl->be->sync(sl, user, min_seq, max_seq, limit, sync_tramp, q));
}

int
imgw_store_max_seq(imgw_store_loop_t *sl, const char *user,
                   imgw_store_seq_cb cb, void *data)
{
    if (sl == NULL || cb == NULL)
        return IMGW_EINVAL;
    rec_t *q = rec_new(sl, REC_SEQ, data);
    q->cb.seq = cb;
    if (!valid_id(user))
        return rec_refuse(q, IMGW_EINVAL);
    if (!rec_open(q))
        return 0;
    return rec_call(q, sl->be->max_seq(sl, user, seq_tramp, q));
}

int
imgw_store_set_delivered(imgw_store_loop_t *sl, const char *user,
                         const char *device, int64_t seq, imgw_store_done_cb cb,
                         void *data)
{
    if (sl == NULL)
        return IMGW_EINVAL;
    rec_t *q = done_begin(sl, &cb, &data);
    if (!valid_id(user) || !valid_name(device) || seq < 0)
        return done_refuse(q, IMGW_EINVAL);
    if (!done_open(sl, q))
        return 0;
    return done_call(q, sl->be->set_delivered(sl, user, device, seq, cb, data));
}

int
imgw_store_set_read(imgw_store_loop_t *sl, const char *user,
                    const char *conversation_id, const char *message_id,
                    imgw_store_done_cb cb, void *data)
{
    if (sl == NULL)
        return IMGW_EINVAL;
    rec_t *q = done_begin(sl, &cb, &data);
    if (!valid_id(user) || !valid_str(conversation_id, IMGW__STORE_CONV_MAX) ||
        message_id == NULL || message_id[0] == '\0' ||
        !imgw_cmid_valid_opt(message_id))
        return done_refuse(q, IMGW_EINVAL);
    if (!done_open(sl, q))
        return 0;
    return done_call(
        q, sl->be->set_read(sl, user, conversation_id, message_id, cb, data));
}

/* ---- conversations --------------------------------------------------- */

int
imgw__store_conv_kind(const char *conv, size_t n_users)
{
    if (conv == NULL)
        return 0;
    if (strncmp(conv, "g_", 2) == 0 && imgw_id_valid(conv + 2))
        return IMGW_STORE_CONV_GROUP;
    if (strncmp(conv, "s_", 2) == 0 && n_users <= 2)
        return IMGW_STORE_CONV_SINGLE;
    return 0;
}

const char *
imgw__store_conv_peer(int kind, const char *conv, const char *const *users,
                      size_t n, size_t i)
{
    if (kind == IMGW_STORE_CONV_GROUP)
        return conv + 2;
    if (n < 2)
        return users[0];
    return i == 0 ? users[1] : users[0];
}

size_t
imgw__store_cut_utf8(const char *s, size_t max)
{
    size_t n = strnlen(s, max + 1);
    if (n <= max)
        return n;
    n = max;
    /* Back off continuation bytes so the cut ends before a sequence
     * start. */
    while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
        n--;
    return n;
}

static int
valid_conv_key(int kind, const char *peer)
{
    return (kind == IMGW_STORE_CONV_SINGLE || kind == IMGW_STORE_CONV_GROUP) &&
           valid_id(peer);
}

int
imgw_store_conv_list(imgw_store_loop_t *sl, const char *user,
                     int64_t before_seq, int limit, imgw_store_conv_list_cb cb,
                     void *data)
{
    if (sl == NULL || cb == NULL)
        return IMGW_EINVAL;
    rec_t *q = rec_new(sl, REC_CONVS, data);
    q->cb.convs = cb;
    if (!valid_id(user) || before_seq < 0)
        return rec_refuse(q, IMGW_EINVAL);
    if (limit <= 0)
        limit = IMGW__STORE_CONV_PAGE_DEFAULT;
    if (limit > IMGW_STORE_CONV_PAGE_MAX)
        limit = IMGW_STORE_CONV_PAGE_MAX;
    if (sl->be->conv_list == NULL)
        return rec_refuse(q, IMGW_ENOTFOUND);
    if (!rec_open(q))
        return 0;
    return rec_call(
        q, sl->be->conv_list(sl, user, before_seq, limit, convs_tramp, q));
}

int
imgw_store_conv_read(imgw_store_loop_t *sl, const char *user, int kind,
                     const char *peer, int64_t read_seq, imgw_store_done_cb cb,
                     void *data)
{
    if (sl == NULL)
        return IMGW_EINVAL;
    rec_t *q = done_begin(sl, &cb, &data);
    if (!valid_id(user) || !valid_conv_key(kind, peer) || read_seq < 0)
        return done_refuse(q, IMGW_EINVAL);
    if (sl->be->conv_read == NULL)
        return done_refuse(q, IMGW_ENOTFOUND);
    if (!done_open(sl, q))
        return 0;
    return done_call(
        q, sl->be->conv_read(sl, user, kind, peer, read_seq, cb, data));
}

int
imgw_store_conv_delete(imgw_store_loop_t *sl, const char *user, int kind,
                       const char *peer, imgw_store_done_cb cb, void *data)
{
    if (sl == NULL)
        return IMGW_EINVAL;
    rec_t *q = done_begin(sl, &cb, &data);
    if (!valid_id(user) || !valid_conv_key(kind, peer))
        return done_refuse(q, IMGW_EINVAL);
    if (sl->be->conv_delete == NULL)
        return done_refuse(q, IMGW_ENOTFOUND);
    if (!done_open(sl, q))
        return 0;
    return done_call(q, sl->be->conv_delete(sl, user, kind, peer, cb, data));
}

/* ---- messages -------------------------------------------------------- */

int
imgw_store_dedupe_get(imgw_store_loop_t *sl, const char *sender,
                      const char *client_msg_id, imgw_store_dedupe_cb cb,
                      void *data)
{
    if (sl == NULL || cb == NULL)
        return IMGW_EINVAL;
    rec_t *q = rec_new(sl, REC_DEDUPE, data);
    q->cb.dedupe = cb;
    if (!valid_id(sender) || client_msg_id == NULL ||
        client_msg_id[0] == '\0' || !imgw_cmid_valid_opt(client_msg_id))
        return rec_refuse(q, IMGW_EINVAL);
    if (sl->be->dedupe_get == NULL)
        return rec_refuse(q, IMGW_ENOTFOUND);
    if (!rec_open(q))
        return 0;
    return rec_call(
        q, sl->be->dedupe_get(sl, sender, client_msg_id, dedupe_tramp, q));
}

int
imgw_store_msg_get(imgw_store_loop_t *sl, uint64_t message_id,
                   imgw_store_msg_cb cb, void *data)
{
    if (sl == NULL || cb == NULL)
        return IMGW_EINVAL;
    rec_t *q = rec_new(sl, REC_MSG, data);
    q->cb.msg = cb;
    if (!rec_open(q))
        return 0;
    return rec_call(q, sl->be->msg_get(sl, message_id, msg_tramp, q));
}

int
imgw_store_revoke(imgw_store_loop_t *sl, uint64_t message_id,
                  imgw_store_done_cb cb, void *data)
{
    if (sl == NULL)
        return IMGW_EINVAL;
    rec_t *q = done_begin(sl, &cb, &data);
    if (!done_open(sl, q))
        return 0;
    return done_call(q, sl->be->revoke(sl, message_id, cb, data));
}

/* ---- groups ---------------------------------------------------------- */

int
imgw_store_group_set(imgw_store_loop_t *sl, const char *gid,
                     const char *const *members, size_t n,
                     imgw_store_done_cb cb, void *data)
{
    if (sl == NULL)
        return IMGW_EINVAL;
    rec_t *q = done_begin(sl, &cb, &data);
    if (!valid_id(gid) || (n > 0 && members == NULL))
        return done_refuse(q, IMGW_EINVAL);
    if (n > IMGW_STORE_MAX_GROUP)
        return done_refuse(q, IMGW_ETOOBIG);
    for (size_t i = 0; i < n; i++)
        if (!valid_id(members[i]))
            return done_refuse(q, IMGW_EINVAL);
    if (!done_open(sl, q))
        return 0;
    return done_call(q, sl->be->group_set(sl, gid, members, n, cb, data));
}

int
imgw_store_group_get(imgw_store_loop_t *sl, const char *gid,
                     imgw_store_members_cb cb, void *data)
{
    if (sl == NULL || cb == NULL)
        return IMGW_EINVAL;
    rec_t *q = rec_new(sl, REC_MEMBERS, data);
    q->cb.members = cb;
    if (!valid_id(gid))
        return rec_refuse(q, IMGW_EINVAL);
    if (!rec_open(q))
        return 0;
    return rec_call(q, sl->be->group_get(sl, gid, members_tramp, q));
}

int
imgw_store_group_del(imgw_store_loop_t *sl, const char *gid,
                     imgw_store_done_cb cb, void *data)
{
    if (sl == NULL)
        return IMGW_EINVAL;
    rec_t *q = done_begin(sl, &cb, &data);
    if (!valid_id(gid))
        return done_refuse(q, IMGW_EINVAL);
    if (!done_open(sl, q))
        return 0;
    return done_call(q, sl->be->group_del(sl, gid, cb, data));
}

/* ---- routes ---------------------------------------------------------- */

int
imgw_store_route_set(imgw_store_loop_t *sl, const char *user,
                     const char *platform, const char *broker_id, int ttl,
                     imgw_store_done_cb cb, void *data)
{
    if (sl == NULL)
        return IMGW_EINVAL;
    rec_t *q = done_begin(sl, &cb, &data);
    if (!valid_id(user) || !valid_name(platform) || !valid_name(broker_id) ||
        ttl <= 0)
        return done_refuse(q, IMGW_EINVAL);
    if (!done_open(sl, q))
        return 0;
    return done_call(
        q, sl->be->route_set(sl, user, platform, broker_id, ttl, cb, data));
}

int
imgw_store_route_del(imgw_store_loop_t *sl, const char *user,
                     const char *platform, const char *broker_id,
                     imgw_store_done_cb cb, void *data)
{
    if (sl == NULL)
        return IMGW_EINVAL;
    rec_t *q = done_begin(sl, &cb, &data);
    if (!valid_id(user) || !valid_name(platform) || !valid_name(broker_id))
        return done_refuse(q, IMGW_EINVAL);
    if (!done_open(sl, q))
        return 0;
    return done_call(
        q, sl->be->route_del(sl, user, platform, broker_id, cb, data));
}

int
imgw_store_route_refresh(imgw_store_loop_t *sl, const char *user, int ttl,
                         imgw_store_done_cb cb, void *data)
{
    if (sl == NULL)
        return IMGW_EINVAL;
    rec_t *q = done_begin(sl, &cb, &data);
    if (!valid_id(user) || ttl <= 0)
        return done_refuse(q, IMGW_EINVAL);
    if (!done_open(sl, q))
        return 0;
    return done_call(q, sl->be->route_refresh(sl, user, ttl, cb, data));
}

int
imgw_store_route_get(imgw_store_loop_t *sl, const char *user,
                     imgw_store_routes_cb cb, void *data)
{
    if (sl == NULL || cb == NULL)
        return IMGW_EINVAL;
    rec_t *q = rec_new(sl, REC_ROUTES, data);
    q->cb.routes = cb;
    if (!valid_id(user))
        return rec_refuse(q, IMGW_EINVAL);
    if (!rec_open(q))
        return 0;
    return rec_call(q, sl->be->route_get(sl, user, routes_tramp, q));
}

/* ---- presence watchers ------------------------------------------------ */

int
imgw_store_watch_set(imgw_store_loop_t *sl, const char *user,
                     const char *broker_id, int ttl, imgw_store_done_cb cb,
                     void *data)
{
    if (sl == NULL)
        return IMGW_EINVAL;
    rec_t *q = done_begin(sl, &cb, &data);
    if (!valid_id(user) || !valid_name(broker_id) || ttl <= 0)
        return done_refuse(q, IMGW_EINVAL);
    if (sl->be->watch_set == NULL) /* one node: nothing to record */
        return done_refuse(q, 0);
    if (!done_open(sl, q))
        return 0;
    return done_call(
        q, sl->be->watch_set(sl, user, broker_id, ttl, cb, data));
}

int
imgw_store_watch_get(imgw_store_loop_t *sl, const char *user,
                     imgw_store_routes_cb cb, void *data)
{
    if (sl == NULL || cb == NULL)
        return IMGW_EINVAL;
    rec_t *q = rec_new(sl, REC_ROUTES, data);
    q->cb.routes = cb;
    if (!valid_id(user))
        return rec_refuse(q, IMGW_EINVAL);
    if (sl->be->watch_get == NULL) /* one node: no other watcher */
        return rec_refuse(q, 0);
    if (!rec_open(q))
        return 0;
    return rec_call(q, sl->be->watch_get(sl, user, routes_tramp, q));
}
