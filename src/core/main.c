/*
 * main.c: imgw's entry point. Loads the configuration, raises the file
 * descriptor limit, builds the node (user map, id generator, store), starts
 * one reactor loop per thread and waits on the main thread for SIGTERM or
 * SIGINT, which start the paced drain; exits 0 once the loops are done.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include <uv.h>

#include "alloc.h"
#include "err.h"
#include "log.h"
#include "httpc.h"
#include "nacos.h"
#include "node.h"
#include "session.h"
#include "tls.h"

/* Exit status when a port is already served by another process (another
 * imgw included); 2 is a configuration error, 1 any other failure. */
#define IMGW_EXIT_PORT_IN_USE 3

static imgw_node_t node;
static imgw_config_t cfg;
static imgw_nacos_t *nacos; /* NULL unless nacos.server is set */

/* Deregistration is over (or timed out): let main join the loops. */
static void
on_nacos_stopped(void *loop)
{
    uv_stop(loop);
}

static void
on_signal(uv_signal_t *h, int signum)
{
    IMGW_LOG_INFO("signal %d: draining over %d s", signum, cfg.drain_seconds);
    atomic_store(&node.draining, 1);
    imgw_net_drain(node.net, cfg.drain_seconds * 1000);
    /* Keep the main loop turning while the Nacos DELETEs go out (at most
     * 2 s, in parallel with the drain); a second signal stops waiting. */
    static int nacos_stopping;
    if (nacos != NULL && !nacos_stopping) {
        nacos_stopping = 1;
        imgw_nacos_stop(nacos, on_nacos_stopped, h->loop);
    } else {
        uv_stop(h->loop);
    }
}

/* Raises RLIMIT_NOFILE's soft limit to the hard one; returns the limit. */
static long
raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return -1;
    if (rl.rlim_cur < rl.rlim_max) {
        rlim_t want = rl.rlim_max;
        rl.rlim_cur = want;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
            IMGW_LOG_WARN("cannot raise the open file limit to %llu",
                          (unsigned long long)want);
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    return (long)rl.rlim_cur;
}

static int
core_loops_new(void)
{
    node.loops = imgw_try_calloc((size_t)node.n_loops, sizeof(*node.loops));
    if (node.loops == NULL)
        return IMGW_ENOMEM;
    for (int i = 0; i < node.n_loops; i++) {
        imgw_core_loop_t *cl = imgw_try_calloc(1, sizeof(*cl));
        if (cl == NULL)
            return IMGW_ENOMEM;
        node.loops[i] = cl;
        cl->node = &node;
        cl->index = i;
        cl->scratch_cap = (size_t)cfg.max_frame_bytes + 4096;
        cl->scratch = imgw_try_malloc(cl->scratch_cap);
        /* One frame in either codec: JSON escaping can grow content up to
         * six times (\u00XX), and pushes share the buffer in halves. */
        cl->out_cap = (size_t)cfg.max_frame_bytes * 8 + 65536;
        cl->out = imgw_try_malloc(cl->out_cap);
        imgw_pool_init(&cl->send_ctxs, IMGW_SEND_CTX_BLOCK, 256);
        if (cl->scratch == NULL || cl->out == NULL)
            return IMGW_ENOMEM;
    }
    return 0;
}

static void
core_loops_free(void)
{
    if (node.loops == NULL)
        return;
    for (int i = 0; i < node.n_loops; i++) {
        imgw_core_loop_t *cl = node.loops[i];
        if (cl == NULL)
            continue;
        if (cl->jwt)
            imgw_jwt_free(cl->jwt);
        imgw_free(cl->scratch);
        imgw_free(cl->out);
        imgw_pool_drain(&cl->send_ctxs);
        imgw_free(cl);
    }
    imgw_free(node.loops);
}

int
main(int argc, char **argv)
{
    char err[512];
    int r = imgw_config_load(&cfg, argc, argv, NULL, err, sizeof(err));
    if (r == IMGW_CONFIG_EXIT_OK)
        return 0;
    if (r != IMGW_CONFIG_OK) {
        fprintf(stderr, "imgw: %s\n", err);
        return 2;
    }
    imgw_log_set_level(cfg.log_level);
    signal(SIGPIPE, SIG_IGN);
    imgw_alloc_init();
    imgw_alloc_install_cjson();
    /* libcurl's global state, before any thread (hooks, Nacos). */
    if (imgw_httpc_global_init() != 0) {
        fprintf(stderr, "imgw: cannot initialise libcurl\n");
        return 1;
    }

    /* A bad key file is a configuration error: check it before anything
     * starts (each loop parses its own copy later). */
    imgw_jwt_opts_t jo = {cfg.jwt_secret, cfg.jwt_public_key, cfg.leeway,
                          cfg.issuer,     cfg.audience,       cfg.app_ids,
                          !cfg.require_exp};
    imgw_jwt_t *probe = NULL;
    if (imgw_jwt_new(&probe, &jo, err, sizeof(err)) != 0) {
        fprintf(stderr, "imgw: %s\n", err);
        return 2;
    }
    imgw_jwt_free(probe);
    if (cfg.n_tls_ports > 0) {
        /* Same for the certificate and key (each loop loads its own). */
        imgw_tls_ctx_t *t = NULL;
        if (imgw_tls_ctx_new(&t, cfg.tls_cert, cfg.tls_key, err,
                             sizeof(err)) != 0) {
            fprintf(stderr, "imgw: %s\n", err);
            return 2;
        }
        imgw_tls_ctx_free(t);
    }
    if (cfg.weak_secret != NULL)
        IMGW_LOG_WARN("%s is shorter than %d bytes: accepted only because "
                      "server.bind %s is loopback; a node reachable from the "
                      "network refuses it",
                      cfg.weak_secret, IMGW_CONFIG_MIN_SECRET, cfg.bind);
    if (cfg.dev_tokens)
        IMGW_LOG_WARN("auth.dev_tokens is on: /dev/token mints a token for "
                      "any user and /dev/group overwrites any group, without "
                      "authentication; development only, never on a "
                      "reachable server");
    if (cfg.jwt_secret[0] == '\0' && cfg.jwt_public_key[0] == '\0')
        IMGW_LOG_WARN("neither auth.jwt_secret nor auth.jwt_public_key is set: "
                      "every token will be refused");

    long nofile = raise_nofile();
    long capacity = nofile - 64 - 4L * cfg.threads * (cfg.n_ports + 2);
    if (capacity > cfg.max_connections)
        capacity = cfg.max_connections;
    IMGW_LOG_INFO("imgw %s: broker_id %s, node_id %d, %d loops, ports %d..., "
                  "open file limit %ld: capacity about %ld connections",
                  IMGW_VERSION, cfg.broker_id, cfg.node_id, cfg.threads,
                  cfg.ports[0], nofile, capacity);

    node.cfg = &cfg;
    node.n_loops = cfg.threads;
    node.start_ms = (uint64_t)imgw_now_ms();
    imgw_id_init(&node.ids, cfg.node_id);
    if (imgw_usermap_new(&node.users, 64) != 0 ||
        imgw_watchmap_new(&node.watches, 64) != 0 || core_loops_new() != 0) {
        fprintf(stderr, "imgw: out of memory\n");
        return 1;
    }
    imgw_store_cfg_t sc = {cfg.backend,       cfg.redis_url,
                           cfg.retention_count, cfg.retention_days,
                           cfg.dedupe_ttl,    cfg.redis_timeout_ms,
                           cfg.threads};
    sc.path = cfg.store_path;
    sc.fsync = cfg.store_fsync;
    sc.fsync_interval_ms = cfg.store_fsync_interval_ms;
    sc.compact_bytes = cfg.store_compact_bytes;
    sc.seq_idle_days = cfg.seq_idle_days;
    sc.max_users = (size_t)cfg.max_users;
    sc.max_conversations = cfg.max_conversations;
    if ((r = imgw_store_open(&node.store, &sc, err, sizeof(err))) != 0) {
        fprintf(stderr, "imgw: store: %s\n", err);
        return 2;
    }

    imgw_net_opts_t no = {
        .bind = cfg.bind,
        .ports = cfg.ports,
        .n_ports = cfg.n_ports,
        .tls_ports = cfg.tls_ports,
        .n_tls_ports = cfg.n_tls_ports,
        .tls_cert = cfg.tls_cert,
        .tls_key = cfg.tls_key,
        .n_loops = cfg.threads,
        .auth_timeout = cfg.auth_timeout,
        .max_frame_bytes = (size_t)cfg.max_frame_bytes,
        .max_queued_bytes = (size_t)cfg.max_queued_bytes,
        .max_body_bytes = (size_t)cfg.max_body_bytes,
        .max_connections = cfg.max_connections,
        .max_connections_per_ip = cfg.max_connections_per_ip,
        .handshake_rate = cfg.handshake_rate,
        .batch_us = cfg.batch_us,
        .handlers = &imgw_core_handlers,
        .data = &node,
    };
    if ((r = imgw_net_new(&node.net, &no, err, sizeof(err))) != 0) {
        fprintf(stderr, "imgw: %s\n", err);
        /* A port someone else serves has its own exit status, so scripts
         * and supervisors can tell it from a crash (operations.md). */
        return r == UV_EADDRINUSE ? IMGW_EXIT_PORT_IN_USE : 1;
    }

    uv_loop_t *main_loop = uv_default_loop();
    uv_signal_t sigterm, sigint;
    uv_signal_init(main_loop, &sigterm);
    uv_signal_init(main_loop, &sigint);
    uv_signal_start(&sigterm, on_signal, SIGTERM);
    uv_signal_start(&sigint, on_signal, SIGINT);
    /* Nothing is sent before uv_run below, when the loops are listening. */
    if (cfg.nacos_server[0] != '\0' &&
        imgw_nacos_start(&nacos, main_loop, &cfg, err, sizeof(err)) != 0) {
        fprintf(stderr, "imgw: %s\n", err);
        return 2;
    }

    if ((r = imgw_net_start(node.net)) != 0) {
        /* A loop that failed has closed its mailbox: nothing can be
         * posted to it, so leave without a drain. */
        fprintf(stderr, "imgw: cannot start the loops: %s\n",
                imgw_strerror(r));
        return 1;
    }
    IMGW_LOG_INFO("listening on %s port %d (%d loops)", cfg.bind,
                  cfg.ports[0], cfg.threads);
    if (cfg.mq_url[0] != '\0') {
        if ((r = imgw_cluster_start(&node, err, sizeof(err))) != 0) {
            fprintf(stderr, "imgw: %s\n", err);
            return 2;
        }
        IMGW_LOG_INFO("cluster: broker node %s on exchange %s", cfg.broker_id,
                      cfg.mq_exchange);
    }

    uv_run(main_loop, UV_RUN_DEFAULT);

    /* The drain closes connections over drain_seconds; give the close
     * handshakes a little longer, then leave regardless. */
    r = imgw_net_join(node.net, cfg.drain_seconds * 1000 + 5000);
    if (r != 0) {
        IMGW_LOG_WARN("loops did not finish in time; exiting anyway");
        return 0;
    }
    /* The loops are gone: nothing can publish or receive any more. */
    imgw_cluster_stop(&node);
    uv_close((uv_handle_t *)&sigterm, NULL);
    uv_close((uv_handle_t *)&sigint, NULL);
    imgw_nacos_free(nacos); /* memory goes in the close callbacks below */
    uv_run(main_loop, UV_RUN_NOWAIT);
    uv_loop_close(main_loop);
    imgw_net_free(node.net);
    imgw_store_close(node.store);
    core_loops_free();
    imgw_usermap_free(node.users);
    imgw_watchmap_free(node.watches);
    IMGW_LOG_INFO("stopped");
    return 0;
}
