/*
 * node_fixture.h: a node of core loops for the core unit tests
 * (test_deliver, test_downlink, test_metrics style): the net's loops are
 * created but never started, so no thread runs and nothing is served; the
 * test thread plays each loop's thread, and loop.c's part: it opens each
 * loop's mailbox itself (as loop_thread would) with a callback that hands
 * core's mail to deliver.c on that loop. What routing posts to a loop's
 * mailbox stays there (fixture_depth() counts it) until fixture_drain()
 * runs that loop's uv loop once. Users are put online in the user
 * map with refs of any loop; such refs name no connection, so writing to
 * them is dropped the way a push to a connection that just went is.
 *
 * Single-threaded; include once per test binary.
 */
#ifndef IMGW_TEST_NODE_FIXTURE_H
#define IMGW_TEST_NODE_FIXTURE_H

#include <stdio.h>
#include <string.h>

#include <uv.h>

#include "alloc.h"
#include "mailbox.h"
#include "net_int.h"
#include "node.h"
#include "session.h"

#define FIXTURE_LOOPS 3

static imgw_node_t fx_node;
static imgw_config_t fx_cfg;
static imgw_core_loop_t fx_loops[FIXTURE_LOOPS];
static imgw_core_loop_t *fx_loop_ptrs[FIXTURE_LOOPS];
static imgw_net_handlers_t fx_handlers;
static uint8_t fx_out[2][1 << 16];
static const uint16_t fx_no_ports[1];

static inline imgw_core_loop_t *
fixture_core(imgw_loop_t *l)
{
    for (int i = 0; i < FIXTURE_LOOPS; i++)
        if (fx_loops[i].loop == l)
            return &fx_loops[i];
    return NULL;
}

/* What a running loop does with core's mail (loop.c's mailbox_cb, then
 * session.c's on_mail, for the routing kinds). */
static inline void
fixture_mailbox_cb(imgw_mailbox_t *mb, imgw_mpsc_node_t *n)
{
    imgw_deliver_mail(fixture_core(mb->data), (imgw_mail_t *)n);
}

static inline int
fixture_setup(void)
{
    char err[256] = "";
    imgw_net_opts_t o = {
        .bind = "127.0.0.1",
        .ports = fx_no_ports, /* none (a pointer all the same: memcpy) */
        .n_ports = 0,
        .n_loops = FIXTURE_LOOPS,
        .auth_timeout = 10,
        .max_frame_bytes = 65536,
        .max_queued_bytes = 1 << 20,
        .max_body_bytes = 65536,
        .max_connections = 100,
        .handlers = &fx_handlers,
        .data = &fx_node,
    };
    if (imgw_net_new(&fx_node.net, &o, err, sizeof(err)) != 0) {
        printf("  cannot create the net: %s\n", err);
        return -1;
    }
    if (imgw_usermap_new(&fx_node.users, 4) != 0 ||
        imgw_watchmap_new(&fx_node.watches, 4) != 0)
        return -1;
    fx_node.cfg = &fx_cfg;
    fx_node.loops = fx_loop_ptrs;
    fx_node.n_loops = FIXTURE_LOOPS;
    for (int i = 0; i < FIXTURE_LOOPS; i++) {
        fx_loop_ptrs[i] = &fx_loops[i];
        fx_loops[i].node = &fx_node;
        fx_loops[i].index = i;
        fx_loops[i].loop = imgw_net_loop(fx_node.net, i);
        if (imgw_mailbox_init(&fx_loops[i].loop->mbox, &fx_loops[i].loop->uv,
                              fixture_mailbox_cb, fx_loops[i].loop) != 0)
            return -1;
    }
    /* Loop 0 is the one the tests call from: its encode buffer. */
    fx_loops[0].out = fx_out[0];
    fx_loops[0].out_cap = sizeof(fx_out[0]);
    return 0;
}

/* Mail waiting in loop i's mailbox. */
static inline uint64_t
fixture_depth(int i)
{
    imgw_loop_stats_t st;
    imgw_loop_stats(imgw_net_loop(fx_node.net, i), &st);
    return st.mailbox_depth;
}

/* Runs loop i once: its mail goes to deliver.c (and is freed). */
static inline void
fixture_drain(int i)
{
    uv_run(imgw_loop_uv(imgw_net_loop(fx_node.net, i)), UV_RUN_NOWAIT);
}

static inline void
fixture_drain_all(void)
{
    for (int i = 0; i < FIXTURE_LOOPS; i++)
        fixture_drain(i);
}

/* Puts user online with one connection on loop `loop` (slot picks it). */
static inline imgw_conn_ref_t
fixture_online(const char *user, const char *platform, int loop,
               uint32_t slot)
{
    imgw_conn_ref_t r = {(uint16_t)loop, slot, 1}, kicked;
    imgw_usermap_add(fx_node.users, user, platform, r, &kicked);
    return r;
}

static inline void
fixture_offline(const char *user, imgw_conn_ref_t r)
{
    imgw_usermap_remove(fx_node.users, user, r);
}

static inline void
fixture_teardown(void)
{
    fixture_drain_all();
    for (int i = 0; i < FIXTURE_LOOPS; i++) {
        imgw_loop_t *l = fx_loops[i].loop;
        imgw_mailbox_close(&l->mbox, NULL);
        uv_run(&l->uv, UV_RUN_DEFAULT); /* the close callbacks */
        uv_loop_close(&l->uv);
    }
    imgw_deliver_thread_free();
    imgw_usermap_free(fx_node.users);
    imgw_watchmap_free(fx_node.watches);
    imgw_net_free(fx_node.net);
}

#endif
