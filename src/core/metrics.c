/*
 * metrics.c: renders /metrics (see metrics.h) from one table, `metrics`
 * below: a row per sample (name, type, help, labels, where its value is).
 *
 * Called on whichever loop serves the scrape. It reads the other loops'
 * counters without locks: each is a relaxed atomic that only its own loop
 * writes (base/stat.h), so a scrape sees values a moment old at most and
 * never races a writer. Error-code labels come from the proto's names
 * (imgw_codec_err_name); nothing here lists them.
 */
#include <dirent.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "alloc.h"
#include "buf.h"
#include "metrics.h"
#include "mq.h"
#include "hooks.h"
#include "nacos.h"

static void
head(imgw_buf_t *b, const char *name, const char *type, const char *help)
{
    imgw_buf_fmt(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static long
rss_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long pages = 0, rss = 0;
    if (f == NULL)
        return 0;
    if (fscanf(f, "%ld %ld", &pages, &rss) != 2)
        rss = 0;
    fclose(f);
    return rss * sysconf(_SC_PAGESIZE);
}

static long
open_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    long n = 0;
    if (d == NULL)
        return 0;
    while (readdir(d) != NULL)
        n++;
    closedir(d);
    return n > 2 ? n - 3 : 0; /* ".", ".." and the DIR's own fd */
}

/* ---- the scrape: one snapshot, then the table ------------------------ */

/* Node-wide values, read once per scrape (each source's own way: relaxed
 * atomics, or the store's and broker's stats calls). */
typedef struct node_vals_s {
    uint64_t users_online, draining, store_up;
    uint64_t presence_watched, presence_subs;
    uint64_t store_users, store_users_max, store_users_refused;
    uint64_t mq_up, mq_rejected, mq_consumed, mq_published;
    uint64_t mq_publish_dropped, mq_reconnects, remote_dropped;
    uint64_t nacos_registered, nacos_requests, nacos_beats_ok;
    uint64_t nacos_failures;
    uint64_t rss, fds;
} node_vals_t;

typedef struct scrape_s {
    imgw_node_t *node;
    int n;                  /* loops */
    imgw_loop_stats_t *net; /* per loop, imgw_loop_stats() */
    node_vals_t v;
    int have_store; /* the store reports user records (memory) */
} scrape_t;

typedef enum metric_src_e {
    M_NET_LOOP,  /* one sample per loop, {loop="i"}: imgw_loop_stats_t */
    M_NET_SUM,   /* summed over loops: imgw_loop_stats_t */
    M_CORE_SUM,  /* summed over loops: imgw_core_stats_t (imgw_stat_t) */
    M_CORE_ERRS, /* core errors[]: a sample per ErrorCode but SUCCESS,
                    then "other" */
    M_NODE,      /* node_vals_t */
    M_NODE_STORE /* node_vals_t, only when have_store */
} metric_src_t;

/*
 * One row per sample line (per loop for M_NET_LOOP, per code for
 * M_CORE_ERRS). Consecutive rows of one name are one family: its HELP and
 * TYPE come from its first row. The order is the page's order; names,
 * types and labels are what dashboards and tests scrape: keep them.
 */
typedef struct metric_s {
    const char *name;
    const char *type;
    const char *help;
    const char *labels; /* inside {}, or NULL */
    metric_src_t src;
    size_t off; /* of the field in the src's struct */
} metric_t;

#define NET(f) offsetof(imgw_loop_stats_t, f)
#define CORE(f) offsetof(imgw_core_stats_t, f)
#define NODE(f) offsetof(node_vals_t, f)
#define C "counter"
#define G "gauge"

static const metric_t metrics[] = {
    {"imgw_connections_open", G, "Open WebSocket connections per loop.", NULL,
     M_NET_LOOP, NET(ws_open)},
    {"imgw_tcp_connections_open", G,
     "Open TCP connections (HTTP and WebSocket) per loop.", NULL, M_NET_LOOP,
     NET(conns_open)},
    {"imgw_connections_accepted_total", C, "TCP connections accepted.", NULL,
     M_NET_SUM, NET(accepted)},
    {"imgw_handshakes_total", C, "WebSocket upgrade requests by result.",
     "result=\"ok\"", M_NET_SUM, NET(handshakes_ok)},
    {"imgw_handshakes_total", C, NULL, "result=\"failed\"", M_NET_SUM,
     NET(handshakes_failed)},
    {"imgw_auth_total", C,
     "Authentications by result (handshake tokens and CMD_AUTH_REQ).",
     "result=\"ok\"", M_CORE_SUM, CORE(auth_ok)},
    /* auth_fail[] is indexed by imgw_jwt_result_t (negated), [7] other. */
    {"imgw_auth_failures_total", C, "Failed authentications by reason.",
     "reason=\"malformed\"", M_CORE_SUM, CORE(auth_fail[1])},
    {"imgw_auth_failures_total", C, NULL, "reason=\"bad_alg\"", M_CORE_SUM,
     CORE(auth_fail[2])},
    {"imgw_auth_failures_total", C, NULL, "reason=\"bad_signature\"",
     M_CORE_SUM, CORE(auth_fail[3])},
    {"imgw_auth_failures_total", C, NULL, "reason=\"expired\"", M_CORE_SUM,
     CORE(auth_fail[4])},
    {"imgw_auth_failures_total", C, NULL, "reason=\"not_yet_valid\"",
     M_CORE_SUM, CORE(auth_fail[5])},
    {"imgw_auth_failures_total", C, NULL, "reason=\"bad_claim\"", M_CORE_SUM,
     CORE(auth_fail[6])},
    {"imgw_auth_failures_total", C, NULL, "reason=\"other\"", M_CORE_SUM,
     CORE(auth_fail[7])},
    {"imgw_handshake_unauthorized_total", C, "Upgrades refused with HTTP 401.",
     NULL, M_CORE_SUM, CORE(handshake_401)},
    {"imgw_http_requests_total", C, "Plain HTTP requests.", NULL, M_NET_SUM,
     NET(http_requests)},
    {"imgw_frames_total", C, "WebSocket messages by direction.", "dir=\"in\"",
     M_NET_SUM, NET(frames_in)},
    {"imgw_frames_total", C, NULL, "dir=\"out\"", M_NET_SUM, NET(frames_out)},
    {"imgw_bytes_total", C, "Socket bytes by direction.", "dir=\"in\"",
     M_NET_SUM, NET(bytes_in)},
    {"imgw_bytes_total", C, NULL, "dir=\"out\"", M_NET_SUM, NET(bytes_out)},
    {"imgw_messages_total", C,
     "Messages: sent (stored), pushed (push frames written), synced "
     "(entries returned by sync), duplicate (dedupe hits).",
     "kind=\"sent\"", M_CORE_SUM, CORE(msgs_sent)},
    {"imgw_messages_total", C, NULL, "kind=\"pushed\"", M_CORE_SUM,
     CORE(msgs_pushed)},
    {"imgw_messages_total", C, NULL, "kind=\"synced\"", M_CORE_SUM,
     CORE(msgs_synced)},
    {"imgw_messages_total", C, NULL, "kind=\"duplicate\"", M_CORE_SUM,
     CORE(msgs_dup)},
    {"imgw_error_responses_total", C,
     "Error responses sent to clients by error code.", "code", M_CORE_ERRS,
     CORE(errors)},
    {"imgw_slow_consumers_total", C,
     "Connections closed because their write queue hit its bound.", NULL,
     M_NET_SUM, NET(slow_consumers)},
    {"imgw_refused_total", C,
     "Connections or upgrades refused by admission control, by reason.",
     "reason=\"max_connections\"", M_NET_SUM, NET(refused_full)},
    {"imgw_refused_total", C, NULL, "reason=\"per_ip\"", M_NET_SUM,
     NET(refused_ip)},
    {"imgw_refused_total", C, NULL, "reason=\"handshake_rate\"", M_NET_SUM,
     NET(refused_rate)},
    {"imgw_refused_total", C, NULL, "reason=\"origin\"", M_CORE_SUM,
     CORE(refused_origin)},
    {"imgw_batch_waits_total", C,
     "Busy loop iterations followed by a server.batch_us wait.", NULL,
     M_NET_SUM, NET(batch_waits)},
    {"imgw_kicks_total", C, "Connections kicked by a newer login.", NULL,
     M_CORE_SUM, CORE(kicks)},
    {"imgw_heartbeats_total", C, "Heartbeats answered.", NULL, M_CORE_SUM,
     CORE(heartbeats)},
    {"imgw_rate_limited_total", C,
     "Frames refused by the per-connection rate limits.", NULL, M_CORE_SUM,
     CORE(rate_limited)},
    {"imgw_api_pushes_total", C,
     "Frames written for /api/push and broker downlinks.", NULL, M_CORE_SUM,
     CORE(api_pushes)},
    {"imgw_presence_pushes_total", C,
     "CMD_PRESENCE_PUSH frames written to subscribers.", NULL, M_CORE_SUM,
     CORE(presence_pushes)},
    {"imgw_store_ops_total", C, "Store operations completed.", NULL, M_CORE_SUM,
     CORE(store_ops)},
    {"imgw_store_errors_total", C, "Store operations that failed.", NULL,
     M_CORE_SUM, CORE(store_errors)},
    {"imgw_mailbox_depth", G,
     "Mail items posted to the loop and not yet drained.", NULL, M_NET_LOOP,
     NET(mailbox_depth)},
    {"imgw_mailbox_drained_total", C, "Mail items drained by the loop.", NULL,
     M_NET_LOOP, NET(mailbox_drained)},
    {"imgw_mailbox_wakeups_total", C, "Mailbox wake-ups (drain batches).", NULL,
     M_NET_LOOP, NET(mailbox_wakeups)},
    {"imgw_mailbox_last_batch", G, "Items in the loop's last mailbox drain.",
     NULL, M_NET_LOOP, NET(mailbox_last_batch)},
    {"imgw_users_online", G,
     "Users with at least one authenticated connection on this node.", NULL,
     M_NODE, NODE(users_online)},
    {"imgw_presence_watched_users", G,
     "Users with presence subscribers on this node.", NULL, M_NODE,
     NODE(presence_watched)},
    {"imgw_presence_subscriptions", G,
     "Presence subscriptions of this node's connections.", NULL, M_NODE,
     NODE(presence_subs)},
    {"imgw_draining", G, "1 while the node drains.", NULL, M_NODE,
     NODE(draining)},
    {"imgw_store_up", G, "1 while the store backend is reachable from every loop.",
     NULL, M_NODE, NODE(store_up)},
    /* Memory backend only: its per-user records and the requests refused
     * at store.max_users (Redis keeps its own keys). */
    {"imgw_store_users", G, "Per-user records held by the memory store.", NULL,
     M_NODE_STORE, NODE(store_users)},
    {"imgw_store_users_max", G,
     "Cap on the memory store's per-user records (store.max_users).", NULL,
     M_NODE_STORE, NODE(store_users_max)},
    {"imgw_store_users_refused_total", C,
     "Requests refused because the memory store held store.max_users user "
     "records.",
     NULL, M_NODE_STORE, NODE(store_users_refused)},
    {"imgw_mq_up", G,
     "1 while the RabbitMQ channel is open (0 also when no broker is "
     "configured).",
     NULL, M_NODE, NODE(mq_up)},
    {"imgw_mq_rejected_total", C,
     "Broker messages rejected without requeue (malformed, unknown code, "
     "oversized).",
     NULL, M_NODE, NODE(mq_rejected)},
    {"imgw_mq_consumed_total", C, "Messages consumed from this node's queue.",
     NULL, M_NODE, NODE(mq_consumed)},
    {"imgw_mq_published_total", C,
     "Inter-node publishes confirmed by the broker.", NULL, M_NODE,
     NODE(mq_published)},
    {"imgw_mq_publish_dropped_total", C,
     "Publishes dropped while the broker was unavailable.", NULL, M_NODE,
     NODE(mq_publish_dropped)},
    {"imgw_mq_reconnects_total", C, "Reconnections to the broker.", NULL,
     M_NODE, NODE(mq_reconnects)},
    {"imgw_remote_push_dropped_total", C,
     "Pushes for other nodes that could not be published (the receivers "
     "sync them from the store).",
     NULL, M_NODE, NODE(remote_dropped)},
    {"imgw_nacos_registered", G,
     "Ports currently registered in Nacos (0 without nacos.server).", NULL,
     M_NODE, NODE(nacos_registered)},
    {"imgw_nacos_requests_total", C, "Requests sent to Nacos.", NULL, M_NODE,
     NODE(nacos_requests)},
    {"imgw_nacos_beats_ok_total", C, "Beats Nacos accepted.", NULL, M_NODE,
     NODE(nacos_beats_ok)},
    {"imgw_nacos_failures_total", C,
     "Nacos requests that failed (connect, timeout, non-2xx).", NULL, M_NODE,
     NODE(nacos_failures)},
    {"imgw_process_resident_memory_bytes", G,
     "Resident set size of the process.", NULL, M_NODE, NODE(rss)},
    {"imgw_process_open_fds", G, "Open file descriptors of the process.", NULL,
     M_NODE, NODE(fds)},
};

#undef NET
#undef CORE
#undef NODE
#undef C
#undef G

/* Reads every source once: the loops' counters and the node-wide values. */
static int
scrape_take(scrape_t *sc, imgw_node_t *node)
{
    memset(sc, 0, sizeof(*sc));
    sc->node = node;
    sc->n = node->n_loops;
    sc->net = imgw_try_calloc((size_t)sc->n, sizeof(*sc->net));
    if (sc->net == NULL)
        return -1;
    for (int i = 0; i < sc->n; i++)
        imgw_loop_stats(imgw_net_loop(node->net, i), &sc->net[i]);

    node_vals_t *v = &sc->v;
    v->users_online = imgw_usermap_users(node->users);
    v->presence_watched = imgw_watchmap_users(node->watches);
    v->presence_subs = imgw_watchmap_subs(node->watches);
    v->draining = (uint64_t)imgw_net_draining(node->net);
    v->store_up = (uint64_t)imgw_store_ready(node->store, node->n_loops);
    imgw_store_stats_t ss;
    if (node->store != NULL && imgw_store_stats(node->store, &ss) == 0) {
        sc->have_store = 1;
        v->store_users = ss.users;
        v->store_users_max = ss.max_users;
        v->store_users_refused = ss.users_refused;
    }
    imgw_mq_stats_t ms;
    memset(&ms, 0, sizeof(ms));
    if (node->mq != NULL)
        imgw_mq_stats(node->mq, &ms);
    v->mq_up = (uint64_t)ms.connected;
    v->mq_rejected = ms.rejected;
    v->mq_consumed = ms.consumed;
    v->mq_published = ms.published;
    v->mq_publish_dropped = ms.publish_dropped;
    v->mq_reconnects = ms.reconnects;
    v->remote_dropped = atomic_load(&node->remote_dropped);
    imgw_nacos_stats_t ns;
    imgw_nacos_stats(NULL, &ns);
    v->nacos_registered = ns.registered;
    v->nacos_requests = ns.requests;
    v->nacos_beats_ok = ns.beats_ok;
    v->nacos_failures = ns.failures;
    v->rss = (uint64_t)rss_bytes();
    v->fds = (uint64_t)open_fds();
    return 0;
}

static uint64_t
core_sum(const scrape_t *sc, size_t off)
{
    uint64_t s = 0;
    for (int i = 0; i < sc->n; i++)
        s += imgw_stat_get(
            (const imgw_stat_t *)((const char *)&sc->node->loops[i]->st + off));
    return s;
}

static uint64_t
net_at(const scrape_t *sc, int loop, size_t off)
{
    return *(const uint64_t *)((const char *)&sc->net[loop] + off);
}

static void
sample(imgw_buf_t *b, const char *name, const char *labels, uint64_t v)
{
    if (labels)
        imgw_buf_fmt(b, "%s{%s} %llu\n", name, labels, (unsigned long long)v);
    else
        imgw_buf_fmt(b, "%s %llu\n", name, (unsigned long long)v);
}

static void
render_row(imgw_buf_t *b, const scrape_t *sc, const metric_t *m)
{
    char lab[96];
    uint64_t t = 0;
    switch (m->src) {
    case M_NET_LOOP:
        for (int i = 0; i < sc->n; i++) {
            snprintf(lab, sizeof(lab), "loop=\"%d\"", i);
            sample(b, m->name, lab, net_at(sc, i, m->off));
        }
        return;
    case M_NET_SUM:
        for (int i = 0; i < sc->n; i++)
            t += net_at(sc, i, m->off);
        sample(b, m->name, m->labels, t);
        return;
    case M_CORE_SUM:
        sample(b, m->name, m->labels, core_sum(sc, m->off));
        return;
    case M_CORE_ERRS: {
        /* Index 0 is ERR_SUCCESS, never an error response. */
        size_t n = imgw_codec_err_count();
        for (size_t e = 1; e <= n; e++) {
            size_t slot = e < n ? e : IMGW_N_ERRCODES - 1;
            const char *code =
                e < n ? imgw_codec_err_name(imgw_codec_err_value(e)) : "other";
            snprintf(lab, sizeof(lab), "%s=\"%s\"", m->labels, code);
            sample(b, m->name, lab,
                   core_sum(sc, m->off + slot * sizeof(imgw_stat_t)));
        }
        return;
    }
    case M_NODE:
    case M_NODE_STORE:
        sample(b, m->name, m->labels,
               *(const uint64_t *)((const char *)&sc->v + m->off));
        return;
    }
}

char *
imgw_metrics_render(imgw_node_t *node, size_t *len)
{
    imgw_buf_t b = {0};
    scrape_t sc;
    if (imgw_buf_reserve(&b, 8192) != 0)
        return NULL;
    if (scrape_take(&sc, node) != 0) {
        imgw_buf_free(&b);
        return NULL;
    }
    const char *family = NULL;
    for (size_t i = 0; i < sizeof(metrics) / sizeof(metrics[0]); i++) {
        const metric_t *m = &metrics[i];
        if (m->src == M_NODE_STORE && !sc.have_store)
            continue;
        if (family == NULL || strcmp(family, m->name) != 0) {
            head(&b, m->name, m->type, m->help);
            family = m->name;
        }
        render_row(&b, &sc, m);
    }
    /* The hooks render their own families (src/hooks: calls, failures,
     * latency histogram, queue depth); none when no hook is configured. */
    char *ht = imgw_hooks_metrics(node);
    if (ht != NULL)
        imgw_buf_str(&b, ht);
    imgw_free(ht);
    imgw_free(sc.net);
    if (b.err) {
        imgw_buf_free(&b);
        return NULL;
    }
    *len = b.len;
    return b.p;
}
