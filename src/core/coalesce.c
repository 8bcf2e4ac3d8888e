/*
 * coalesce.c: read receipt and typing pushes, at most one per (user,
 * conversation) per interval.
 *
 * Why: in a group a receipt or typing status fans out to every online
 * member, so a reader acknowledging message after message (or a client
 * resending "typing" on each key press) multiplies into member x request
 * pushes; readers that cannot keep up were closed as slow consumers. The
 * rule (docs/protocol.md): the first request for a (user, conversation)
 * is pushed at once and opens a window of limits.receipt_interval_ms
 * (typing: typing_interval_ms). Requests inside the window replace the
 * window's held push (receipts only when they move the read position
 * forward: the position is the highest message id), and when the window
 * ends the held push, if any, goes out and opens the next window. So a
 * burst gives the leading push, at most one per interval, and a last one
 * with the latest position or status: nothing is lost at the end.
 *
 * State: per loop thread (a user's requests on connections of different
 * loops are coalesced per loop; the per-user budget in the user map bounds
 * the sum). A chained hash table keyed by "user\0conv" plus, per kind, a
 * FIFO in window-end order (every window of a kind has the same length,
 * so appending keeps it sorted) and one uv timer armed for the earliest
 * end. An entry whose window ends with nothing held is freed. At most
 * CO_MAX_ENTRIES per loop; past that a request is pushed at once.
 *
 * Time: uv_now() of the loop (monotonic), not the wall clock, so a clock
 * step cannot stretch a window.
 *
 * Thread: the loop that owns the table; imgw_coalesce_thread_free at loop
 * stop.
 */
#include "coalesce.h"

#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "list.h"
#include "session.h"

#define CO_MAX_ENTRIES 65536 /* per loop */
#define CO_MIN_BUCKETS 256
#define CO_MAX_IDS 100 /* ReadReceiptPush.message_ids max_count */

/* The push sent when the window ends. */
typedef struct co_held_s {
    imgw_conn_ref_t exclude; /* the latest request's connection */
    int64_t read_time;       /* receipts */
    int64_t read_seq;        /* receipts: the reader's timeline seq, or 0 */
    int32_t status;          /* typing */
    uint32_t n;              /* receipts: ids */
    uint64_t ids[];
} co_held_t;

typedef struct co_entry_s {
    struct co_entry_s *hnext;       /* bucket chain */
    imgw_list_t link;               /* in co->fifo[kind] */
    uint64_t hash;
    uint64_t end_ms; /* uv_now() when the window ends */
    uint64_t pos;    /* receipts: highest id pushed or held this window */
    int64_t rseq;    /* receipts: highest read_seq pushed or held (the
                        reader's own devices clear badges from it) */
    co_held_t *held; /* NULL = nothing to push at end_ms */
    uint8_t kind;
    size_t ulen; /* strlen(user); the conversation follows its NUL */
    char key[];
} co_entry_t;

typedef struct co_state_s {
    imgw_core_loop_t *cl;
    imgw_coalesce_flush_fn flush; /* the last offer's (one caller: msg.c) */
    uv_timer_t timer;
    uint64_t due_ms; /* the timer's due time; 0 = not armed */
    co_entry_t **buckets;
    size_t nbuckets; /* power of two */
    size_t n;
    imgw_list_t fifo[2]; /* per kind, oldest window end first */
} co_state_t;

static _Thread_local co_state_t *co;

static uint64_t
co_hash(const char *user, size_t ulen, const char *conv, size_t clen)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < ulen; i++)
        h = (h ^ (unsigned char)user[i]) * 0x100000001b3ULL;
    h = (h ^ 0xffu) * 0x100000001b3ULL; /* "ab"+"c" != "a"+"bc" */
    for (size_t i = 0; i < clen; i++)
        h = (h ^ (unsigned char)conv[i]) * 0x100000001b3ULL;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    return h;
}

static uint64_t
co_now(void)
{
    return uv_now(imgw_loop_uv(co->cl->loop));
}

static uint64_t
co_interval(int kind)
{
    const imgw_config_t *cfg = co->cl->node->cfg;
    return (uint64_t)(kind == IMGW_COALESCE_TYPING ? cfg->typing_interval_ms
                                                   : cfg->receipt_interval_ms);
}

/* ---- the FIFOs and the timer -------------------------------------------- */

static void
fifo_push(co_entry_t *e)
{
    imgw_list_insert_tail(&co->fifo[e->kind], &e->link);
}

static void
fifo_unlink(co_entry_t *e)
{
    imgw_list_remove(&e->link);
}

/* The oldest entry of kind k, or NULL. */
static co_entry_t *
fifo_head(int k)
{
    imgw_list_t *l = imgw_list_first(&co->fifo[k]);
    return l ? IMGW_LIST_ENTRY(l, co_entry_t, link) : NULL;
}

static void co_timer_cb(uv_timer_t *t);

/* Arms the timer for the earliest window end (or stops it). */
static void
co_arm(void)
{
    uint64_t due = 0;
    for (int k = 0; k < 2; k++) {
        const co_entry_t *h = fifo_head(k);
        if (h && (due == 0 || h->end_ms < due))
            due = h->end_ms;
    }
    if (due == co->due_ms)
        return;
    co->due_ms = due;
    if (due == 0) {
        uv_timer_stop(&co->timer);
        return;
    }
    uint64_t now = co_now();
    uv_timer_start(&co->timer, co_timer_cb, due > now ? due - now : 0, 0);
}

/* ---- the table ---------------------------------------------------------- */

static co_entry_t **
co_find(uint64_t h, int kind, const char *user, size_t ulen, const char *conv,
        size_t clen)
{
    co_entry_t **pp = &co->buckets[h & (co->nbuckets - 1)];
    for (; *pp; pp = &(*pp)->hnext) {
        co_entry_t *e = *pp;
        if (e->hash == h && e->kind == kind && e->ulen == ulen &&
            memcmp(e->key, user, ulen) == 0 &&
            strcmp(e->key + ulen + 1, conv) == 0)
            return pp;
    }
    (void)clen;
    return pp;
}

static void
co_grow(void)
{
    size_t nb = co->nbuckets * 2;
    co_entry_t **b = imgw_try_calloc(nb, sizeof(*b));
    if (b == NULL)
        return; /* longer chains, still correct */
    for (size_t i = 0; i < co->nbuckets; i++) {
        co_entry_t *e = co->buckets[i];
        while (e) {
            co_entry_t *next = e->hnext;
            e->hnext = b[e->hash & (nb - 1)];
            b[e->hash & (nb - 1)] = e;
            e = next;
        }
    }
    imgw_free(co->buckets);
    co->buckets = b;
    co->nbuckets = nb;
}

static void
co_remove(co_entry_t *e)
{
    co_entry_t **pp = &co->buckets[e->hash & (co->nbuckets - 1)];
    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    fifo_unlink(e);
    imgw_free(e->held);
    imgw_free(e);
    co->n--;
}

static int
co_state(imgw_core_loop_t *cl)
{
    if (co != NULL)
        return 0;
    co_state_t *s = imgw_try_calloc(1, sizeof(*s));
    co_entry_t **b = imgw_try_calloc(CO_MIN_BUCKETS, sizeof(*b));
    if (s == NULL || b == NULL) {
        imgw_free(s);
        imgw_free(b);
        return -1;
    }
    s->cl = cl;
    s->buckets = b;
    s->nbuckets = CO_MIN_BUCKETS;
    imgw_list_init(&s->fifo[0]);
    imgw_list_init(&s->fifo[1]);
    uv_timer_init(imgw_loop_uv(cl->loop), &s->timer);
    co = s;
    return 0;
}

/* ---- held pushes -------------------------------------------------------- */

/* The highest id of a receipt (its read position); 0 when none parses
 * (msg.c only offers receipts whose ids all parse). */
static uint64_t
receipt_pos(const im_ReadReceiptPush *p)
{
    uint64_t pos = 0, id;
    for (pb_size_t i = 0; i < p->message_ids_count; i++)
        if (imgw_id_parse(p->message_ids[i], strlen(p->message_ids[i]), &id) ==
                0 &&
            id > pos)
            pos = id;
    return pos;
}

static co_held_t *
held_new(int kind, const imgw_push_body_t *body, imgw_conn_ref_t from)
{
    size_t n = 0;
    if (kind == IMGW_COALESCE_RECEIPT)
        n = body->read.message_ids_count;
    if (n > CO_MAX_IDS)
        n = CO_MAX_IDS;
    co_held_t *h = imgw_try_malloc(sizeof(*h) + n * sizeof(uint64_t));
    if (h == NULL)
        return NULL;
    h->exclude = from;
    h->read_time = 0;
    h->read_seq = 0;
    h->status = 0;
    h->n = 0;
    if (kind == IMGW_COALESCE_TYPING) {
        h->status = body->typing.status;
        return h;
    }
    h->read_time = body->read.read_time;
    h->read_seq = body->read.read_seq;
    for (size_t i = 0; i < n; i++) {
        const char *s = body->read.message_ids[i];
        if (imgw_id_parse(s, strlen(s), &h->ids[h->n]) == 0)
            h->n++;
    }
    return h;
}

static void
held_flush(co_entry_t *e)
{
    co_held_t *h = e->held;
    const char *user = e->key, *conv = e->key + e->ulen + 1;
    imgw_push_body_t body;
    e->held = NULL;
    if (e->kind == IMGW_COALESCE_TYPING) {
        im_TypingStatusPush *p = &body.typing;
        *p = (im_TypingStatusPush)im_TypingStatusPush_init_zero;
        snprintf(p->conversation_id, sizeof(p->conversation_id), "%s", conv);
        snprintf(p->user_id, sizeof(p->user_id), "%s", user);
        p->status = h->status;
    } else {
        im_ReadReceiptPush *p = &body.read;
        *p = (im_ReadReceiptPush)im_ReadReceiptPush_init_zero;
        p->message_ids_count = (pb_size_t)h->n;
        for (uint32_t i = 0; i < h->n; i++)
            imgw_id_format(h->ids[i], p->message_ids[i]);
        snprintf(p->conversation_id, sizeof(p->conversation_id), "%s", conv);
        snprintf(p->user_id, sizeof(p->user_id), "%s", user);
        p->read_time = h->read_time;
        p->read_seq = h->read_seq;
    }
    imgw_conn_ref_t ex = h->exclude;
    imgw_free(h);
    co->flush(co->cl, e->kind, user, conv, &body, ex);
}

static void
co_timer_cb(uv_timer_t *t)
{
    (void)t;
    co->due_ms = 0;
    uint64_t now = co_now();
    for (int k = 0; k < 2; k++) {
        /* Entries renewed below go to the tail with a later end: the loop
         * meets each entry at most once. */
        co_entry_t *e;
        while ((e = fifo_head(k)) != NULL && e->end_ms <= now) {
            if (e->held == NULL) {
                co_remove(e);
                continue;
            }
            fifo_unlink(e);
            e->end_ms = now + co_interval(k);
            fifo_push(e);
            held_flush(e);
        }
    }
    co_arm();
}

/* ---- interface ---------------------------------------------------------- */

int
imgw_coalesce_offer(imgw_core_loop_t *cl, int kind, const char *user,
                    const char *conv, const imgw_push_body_t *body,
                    imgw_conn_ref_t from, imgw_coalesce_flush_fn flush)
{
    if (co_state(cl) != 0)
        return IMGW_COALESCE_NOW;
    co->flush = flush;
    size_t ulen = strlen(user), clen = strlen(conv);
    uint64_t h = co_hash(user, ulen, conv, clen);
    uint64_t pos = kind == IMGW_COALESCE_RECEIPT ? receipt_pos(&body->read) : 0;
    int64_t rseq = kind == IMGW_COALESCE_RECEIPT ? body->read.read_seq : 0;
    co_entry_t **pp = co_find(h, kind, user, ulen, conv, clen);
    co_entry_t *e = *pp;
    if (e == NULL) {
        if (co->n >= CO_MAX_ENTRIES)
            return IMGW_COALESCE_NOW;
        e = imgw_try_malloc(sizeof(*e) + ulen + 1 + clen + 1);
        if (e == NULL)
            return IMGW_COALESCE_NOW;
        e->hnext = NULL;
        e->hash = h;
        e->kind = (uint8_t)kind;
        e->ulen = ulen;
        memcpy(e->key, user, ulen + 1);
        memcpy(e->key + ulen + 1, conv, clen + 1);
        e->end_ms = co_now() + co_interval(kind);
        e->pos = pos;
        e->rseq = rseq;
        e->held = NULL;
        *pp = e;
        co->n++;
        fifo_push(e);
        if (co->n > co->nbuckets)
            co_grow();
        co_arm();
        return IMGW_COALESCE_NOW;
    }
    /* Inside the window (or at its end with the timer about to run: the
     * timer pushes the latest then, in order). */
    if (kind == IMGW_COALESCE_RECEIPT && pos <= e->pos && rseq <= e->rseq)
        return IMGW_COALESCE_COVERED;
    if (kind == IMGW_COALESCE_RECEIPT && pos <= e->pos && e->held != NULL) {
        /* Only the read_seq moved: the held push (higher ids) carries it. */
        e->held->read_seq = rseq;
        e->rseq = rseq;
        return IMGW_COALESCE_HELD;
    }
    co_held_t *nh = held_new(kind, body, from);
    if (nh == NULL) {
        /* Without room to hold it, push it (bounded by the user budget). */
        return IMGW_COALESCE_NOW;
    }
    if (kind == IMGW_COALESCE_RECEIPT && nh->read_seq < e->rseq)
        nh->read_seq = e->rseq; /* positions only move forward */
    imgw_free(e->held);
    e->held = nh;
    if (pos > e->pos)
        e->pos = pos;
    if (rseq > e->rseq)
        e->rseq = rseq;
    return IMGW_COALESCE_HELD;
}

size_t
imgw_coalesce_entries(void)
{
    return co ? co->n : 0;
}

static void
co_close_cb(uv_handle_t *h)
{
    co_state_t *s = h->data;
    imgw_free(s->buckets);
    imgw_free(s);
}

void
imgw_coalesce_thread_free(void)
{
    if (co == NULL)
        return;
    for (int k = 0; k < 2; k++)
        while (fifo_head(k))
            co_remove(fifo_head(k));
    co_state_t *s = co;
    co = NULL;
    uv_timer_stop(&s->timer);
    s->timer.data = s;
    uv_close((uv_handle_t *)&s->timer, co_close_cb);
}
