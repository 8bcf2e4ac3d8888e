/*
 * metrics.c: renders /metrics (see metrics.h). Called on whichever loop
 * serves the scrape; it reads the other loops' counters without locks:
 * they are only ever incremented by their own loop, so a scrape sees
 * values at most a moment old.
 */
#include <dirent.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "metrics.h"
#include "alloc.h"
#include "buf.h"
#include "hooks.h"
#include "mq.h"
#include "nacos.h"

/* The page is built in an imgw_buf_t (base/buf.h): an allocation failure
 * sticks and is checked once at the end. */

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

static const char *const err_names[IMGW_N_ERRCODES] = {
    "ERR_SUCCESS",           "ERR_UNKNOWN",         "ERR_INVALID_PARAM",
    "ERR_SERVER_BUSY",       "ERR_AUTH_FAILED",     "ERR_TOKEN_EXPIRED",
    "ERR_PERMISSION_DENIED", "ERR_USER_NOT_EXIST",  "ERR_MESSAGE_TOO_LARGE",
    "ERR_SEND_TOO_FAST",     "ERR_CONVERSATION_NOT_EXIST", "other"};

static const char *const auth_reasons[8] = {
    "ok",      "malformed",     "bad_alg",   "bad_signature",
    "expired", "not_yet_valid", "bad_claim", "other"};

#define SUM(field)                                                           \
    ({                                                                       \
        uint64_t s_ = 0;                                                     \
        for (int i_ = 0; i_ < node->n_loops; i_++)                           \
            s_ += node->loops[i_]->st.field;                                 \
        s_;                                                                  \
    })

char *
imgw_metrics_render(imgw_node_t *node, size_t *len)
{
    imgw_buf_t b = {0};
    if (imgw_buf_reserve(&b, 8192) != 0)
        return NULL;
    int n = node->n_loops;
    imgw_loop_stats_t *ls = imgw_try_calloc((size_t)n, sizeof(*ls));
    if (ls == NULL) {
        imgw_free(b.p);
        return NULL;
    }
    for (int i = 0; i < n; i++)
        imgw_loop_stats(imgw_net_loop(node->net, i), &ls[i]);

#define PER_LOOP(name, type, help, expr)                                     \
    do {                                                                     \
        head(&b, name, type, help);                                          \
        for (int i = 0; i < n; i++)                                          \
            imgw_buf_fmt(&b, name "{loop=\"%d\"} %llu\n", i,                          \
                (unsigned long long)(expr));                                 \
    } while (0)
#define TOTAL(name, type, help, expr)                                        \
    do {                                                                     \
        uint64_t t_ = 0;                                                     \
        for (int i = 0; i < n; i++)                                          \
            t_ += (expr);                                                    \
        head(&b, name, type, help);                                          \
        imgw_buf_fmt(&b, name " %llu\n", (unsigned long long)t_);                     \
    } while (0)

    PER_LOOP("imgw_connections_open", "gauge",
             "Open WebSocket connections per loop.", ls[i].ws_open);
    PER_LOOP("imgw_tcp_connections_open", "gauge",
             "Open TCP connections (HTTP and WebSocket) per loop.",
             ls[i].conns_open);
    TOTAL("imgw_connections_accepted_total", "counter",
          "TCP connections accepted.", ls[i].accepted);
    head(&b, "imgw_handshakes_total", "counter",
         "WebSocket upgrade requests by result.");
    {
        uint64_t ok = 0, bad = 0;
        for (int i = 0; i < n; i++) {
            ok += ls[i].handshakes_ok;
            bad += ls[i].handshakes_failed;
        }
        imgw_buf_fmt(&b, "imgw_handshakes_total{result=\"ok\"} %llu\n",
            (unsigned long long)ok);
        imgw_buf_fmt(&b, "imgw_handshakes_total{result=\"failed\"} %llu\n",
            (unsigned long long)bad);
    }
    head(&b, "imgw_auth_total", "counter",
         "Authentications by result (handshake tokens and CMD_AUTH_REQ).");
    imgw_buf_fmt(&b, "imgw_auth_total{result=\"ok\"} %llu\n",
        (unsigned long long)SUM(auth_ok));
    head(&b, "imgw_auth_failures_total", "counter",
         "Failed authentications by reason.");
    for (int r = 1; r < 8; r++)
        imgw_buf_fmt(&b, "imgw_auth_failures_total{reason=\"%s\"} %llu\n",
            auth_reasons[r], (unsigned long long)SUM(auth_fail[r]));
    TOTAL("imgw_handshake_unauthorized_total", "counter",
          "Upgrades refused with HTTP 401.",
          node->loops[i]->st.handshake_401);
    TOTAL("imgw_http_requests_total", "counter", "Plain HTTP requests.",
          ls[i].http_requests);
    head(&b, "imgw_frames_total", "counter",
         "WebSocket messages by direction.");
    {
        uint64_t in = 0, out = 0;
        for (int i = 0; i < n; i++) {
            in += ls[i].frames_in;
            out += ls[i].frames_out;
        }
        imgw_buf_fmt(&b, "imgw_frames_total{dir=\"in\"} %llu\n",
            (unsigned long long)in);
        imgw_buf_fmt(&b, "imgw_frames_total{dir=\"out\"} %llu\n",
            (unsigned long long)out);
    }
    head(&b, "imgw_bytes_total", "counter", "Socket bytes by direction.");
    {
        uint64_t in = 0, out = 0;
        for (int i = 0; i < n; i++) {
            in += ls[i].bytes_in;
            out += ls[i].bytes_out;
        }
        imgw_buf_fmt(&b, "imgw_bytes_total{dir=\"in\"} %llu\n",
            (unsigned long long)in);
        imgw_buf_fmt(&b, "imgw_bytes_total{dir=\"out\"} %llu\n",
            (unsigned long long)out);
    }
    head(&b, "imgw_messages_total", "counter",
         "Messages: sent (stored), pushed (push frames written), synced "
         "(entries returned by sync), duplicate (dedupe hits).");
    imgw_buf_fmt(&b, "imgw_messages_total{kind=\"sent\"} %llu\n",
        (unsigned long long)SUM(msgs_sent));
    imgw_buf_fmt(&b, "imgw_messages_total{kind=\"pushed\"} %llu\n",
        (unsigned long long)SUM(msgs_pushed));
    imgw_buf_fmt(&b, "imgw_messages_total{kind=\"synced\"} %llu\n",
        (unsigned long long)SUM(msgs_synced));
    imgw_buf_fmt(&b, "imgw_messages_total{kind=\"duplicate\"} %llu\n",
        (unsigned long long)SUM(msgs_dup));
    head(&b, "imgw_error_responses_total", "counter",
         "Error responses sent to clients by error code.");
    for (int e = 1; e < IMGW_N_ERRCODES; e++)
        imgw_buf_fmt(&b, "imgw_error_responses_total{code=\"%s\"} %llu\n",
            err_names[e], (unsigned long long)SUM(errors[e]));
    TOTAL("imgw_slow_consumers_total", "counter",
          "Connections closed because their write queue hit its bound.",
          ls[i].slow_consumers);
    head(&b, "imgw_refused_total", "counter",
         "Connections or upgrades refused by admission control, by reason.");
    {
        uint64_t full = 0, ip = 0, rate = 0, origin = 0;
        for (int i = 0; i < n; i++) {
            full += ls[i].refused_full;
            ip += ls[i].refused_ip;
            rate += ls[i].refused_rate;
            origin += node->loops[i]->st.refused_origin;
        }
        imgw_buf_fmt(&b, "imgw_refused_total{reason=\"max_connections\"} %llu\n",
            (unsigned long long)full);
        imgw_buf_fmt(&b, "imgw_refused_total{reason=\"per_ip\"} %llu\n",
            (unsigned long long)ip);
        imgw_buf_fmt(&b, "imgw_refused_total{reason=\"handshake_rate\"} %llu\n",
            (unsigned long long)rate);
        imgw_buf_fmt(&b, "imgw_refused_total{reason=\"origin\"} %llu\n",
            (unsigned long long)origin);
    }
    TOTAL("imgw_kicks_total", "counter",
          "Connections kicked by a newer login.", node->loops[i]->st.kicks);
    TOTAL("imgw_heartbeats_total", "counter", "Heartbeats answered.",
          node->loops[i]->st.heartbeats);
    TOTAL("imgw_rate_limited_total", "counter",
          "Frames refused by the per-connection rate limits.",
          node->loops[i]->st.rate_limited);
    TOTAL("imgw_api_pushes_total", "counter",
          "Frames written for /api/push and broker downlinks.",
          node->loops[i]->st.api_pushes);
    TOTAL("imgw_store_ops_total", "counter", "Store operations completed.",
          node->loops[i]->st.store_ops);
    TOTAL("imgw_store_errors_total", "counter",
          "Store operations that failed.", node->loops[i]->st.store_errors);
    PER_LOOP("imgw_mailbox_depth", "gauge",
             "Mail items posted to the loop and not yet drained.",
             ls[i].mailbox_depth);
    PER_LOOP("imgw_mailbox_drained_total", "counter",
             "Mail items drained by the loop.", ls[i].mailbox_drained);
    PER_LOOP("imgw_mailbox_wakeups_total", "counter",
             "Mailbox wake-ups (drain batches).", ls[i].mailbox_wakeups);
    PER_LOOP("imgw_mailbox_last_batch", "gauge",
             "Items in the loop's last mailbox drain.",
             ls[i].mailbox_last_batch);
    head(&b, "imgw_users_online", "gauge",
         "Users with at least one authenticated connection on this node.");
    imgw_buf_fmt(&b, "imgw_users_online %zu\n", imgw_usermap_users(node->users));
    head(&b, "imgw_draining", "gauge", "1 while the node drains.");
    imgw_buf_fmt(&b, "imgw_draining %d\n", imgw_net_draining(node->net));
    head(&b, "imgw_store_up", "gauge",
         "1 while the store backend is reachable from loop 0.");
    imgw_buf_fmt(&b, "imgw_store_up %d\n",
        node->loops[0]->store ? imgw_store_loop_ready(node->loops[0]->store)
                              : 0);
    {
        /* Memory backend only: its per-user records and the requests
         * refused at store.max_users (Redis keeps its own keys). */
        imgw_store_stats_t ss;
        if (node->store != NULL && imgw_store_stats(node->store, &ss) == 0) {
            head(&b, "imgw_store_users", "gauge",
                 "Per-user records held by the memory store.");
            imgw_buf_fmt(&b, "imgw_store_users %zu\n", ss.users);
            head(&b, "imgw_store_users_max", "gauge",
                 "Cap on the memory store's per-user records "
                 "(store.max_users).");
            imgw_buf_fmt(&b, "imgw_store_users_max %zu\n", ss.max_users);
            head(&b, "imgw_store_users_refused_total", "counter",
                 "Requests refused because the memory store held "
                 "store.max_users user records.");
            imgw_buf_fmt(&b, "imgw_store_users_refused_total %llu\n",
                (unsigned long long)ss.users_refused);
        }
    }
    {
        imgw_mq_stats_t ms;
        memset(&ms, 0, sizeof(ms));
        if (node->mq != NULL)
            imgw_mq_stats(node->mq, &ms);
        head(&b, "imgw_mq_up", "gauge",
             "1 while the RabbitMQ channel is open (0 also when no broker "
             "is configured).");
        imgw_buf_fmt(&b, "imgw_mq_up %d\n", ms.connected);
        head(&b, "imgw_mq_rejected_total", "counter",
             "Broker messages rejected without requeue (malformed, unknown "
             "code, oversized).");
        imgw_buf_fmt(&b, "imgw_mq_rejected_total %llu\n",
            (unsigned long long)ms.rejected);
        head(&b, "imgw_mq_consumed_total", "counter",
             "Messages consumed from this node's queue.");
        imgw_buf_fmt(&b, "imgw_mq_consumed_total %llu\n",
            (unsigned long long)ms.consumed);
        head(&b, "imgw_mq_published_total", "counter",
             "Inter-node publishes confirmed by the broker.");
        imgw_buf_fmt(&b, "imgw_mq_published_total %llu\n",
            (unsigned long long)ms.published);
        head(&b, "imgw_mq_publish_dropped_total", "counter",
             "Publishes dropped while the broker was unavailable.");
        imgw_buf_fmt(&b, "imgw_mq_publish_dropped_total %llu\n",
            (unsigned long long)(ms.publish_dropped));
        head(&b, "imgw_mq_reconnects_total", "counter",
             "Reconnections to the broker.");
        imgw_buf_fmt(&b, "imgw_mq_reconnects_total %llu\n",
            (unsigned long long)ms.reconnects);
        head(&b, "imgw_remote_push_dropped_total", "counter",
             "Pushes for other nodes that could not be published (the "
             "receivers sync them from the store).");
        imgw_buf_fmt(&b, "imgw_remote_push_dropped_total %llu\n",
            (unsigned long long)atomic_load(&node->remote_dropped));
    }
    {
        imgw_nacos_stats_t ns;
        imgw_nacos_stats(NULL, &ns);
        head(&b, "imgw_nacos_registered", "gauge",
             "Ports currently registered in Nacos (0 without nacos.server).");
        imgw_buf_fmt(&b, "imgw_nacos_registered %llu\n", (unsigned long long)ns.registered);
        head(&b, "imgw_nacos_requests_total", "counter",
             "Requests sent to Nacos.");
        imgw_buf_fmt(&b, "imgw_nacos_requests_total %llu\n",
            (unsigned long long)ns.requests);
        head(&b, "imgw_nacos_beats_ok_total", "counter",
             "Beats Nacos accepted.");
        imgw_buf_fmt(&b, "imgw_nacos_beats_ok_total %llu\n",
            (unsigned long long)ns.beats_ok);
        head(&b, "imgw_nacos_failures_total", "counter",
             "Nacos requests that failed (connect, timeout, non-2xx).");
        imgw_buf_fmt(&b, "imgw_nacos_failures_total %llu\n",
            (unsigned long long)ns.failures);
    }
    {
        char *ht = imgw_hooks_metrics(node);
        if (ht != NULL)
            imgw_buf_fmt(&b, "%s", ht);
        imgw_free(ht);
    }
    head(&b, "imgw_process_resident_memory_bytes", "gauge",
         "Resident set size of the process.");
    imgw_buf_fmt(&b, "imgw_process_resident_memory_bytes %ld\n", rss_bytes());
    head(&b, "imgw_process_open_fds", "gauge",
         "Open file descriptors of the process.");
    imgw_buf_fmt(&b, "imgw_process_open_fds %ld\n", open_fds());
#undef PER_LOOP
#undef TOTAL
    imgw_free(ls);
    if (b.err) {
        imgw_free(b.p);
        return NULL;
    }
    *len = b.len;
    return b.p;
}
