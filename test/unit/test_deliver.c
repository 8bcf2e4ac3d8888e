/*
 * test_deliver.c: unit tests for core/deliver.c, routing on this node
 * (node_fixture.h: three loops, never started; the test calls from loop
 * 0). What is checked is where work goes: a push, frame or pre-encoded
 * frame reaches each other loop with the users' connections as exactly
 * one mail (however many targets it holds there), nothing is posted for
 * the calling loop (written at once) or for users who are not online,
 * the excluded connection (the sender's) is skipped, raw deliveries
 * count their targets, a broadcast posts one mail to every loop and
 * counts the authenticated sessions, a kick goes to the owning loop, an
 * allocation failure posts nothing, and every mail drains on its loop.
 */
#include "node_fixture.h"

#include "test.h"

static const imgw_conn_ref_t none = {0xffff, 0, 0};

static int
depths_are(uint64_t d0, uint64_t d1, uint64_t d2)
{
    return fixture_depth(0) == d0 && fixture_depth(1) == d1 &&
           fixture_depth(2) == d2;
}

TEST(push_one_mail_per_other_loop)
{
    imgw_conn_ref_t a = fixture_online("alice", "web", 0, 1);
    imgw_conn_ref_t b1 = fixture_online("bob", "web", 1, 1);
    imgw_conn_ref_t b2 = fixture_online("bob", "ios", 1, 2);
    imgw_conn_ref_t c = fixture_online("carol", "web", 2, 1);
    const char *users[] = {"alice", "bob", "carol", "nobody"};
    const int64_t seqs[] = {1, 2, 3, 4};
    const uint8_t blob[] = {0x0a, 0x01, 'x'};

    imgw_deliver_push(&fx_loops[0], blob, sizeof(blob), 1000, users, seqs, 4,
                      none);
    /* bob's two connections on loop 1 share one mail; loop 0 (the caller)
     * wrote at once; "nobody" is not online. */
    CHECK(depths_are(0, 1, 1));
    fixture_drain_all();
    CHECK(depths_are(0, 0, 0));

    /* Only users on loop 2 and the caller's loop: loop 1 gets nothing. */
    const char *two[] = {"alice", "carol"};
    imgw_deliver_push(&fx_loops[0], blob, sizeof(blob), 1000, two, seqs, 2,
                      none);
    CHECK(depths_are(0, 0, 1));
    fixture_drain_all();

    /* The excluded connection (the sender's own) is skipped. */
    const char *only_carol[] = {"carol"};
    imgw_deliver_push(&fx_loops[0], blob, sizeof(blob), 1000, only_carol,
                      seqs, 1, c);
    CHECK(depths_are(0, 0, 0));

    /* Nobody online at all: no mail. */
    const char *ghosts[] = {"ghost1", "ghost2"};
    imgw_deliver_push(&fx_loops[0], blob, sizeof(blob), 1000, ghosts, seqs,
                      2, none);
    CHECK(depths_are(0, 0, 0));
    fixture_offline("alice", a);
    fixture_offline("bob", b1);
    fixture_offline("bob", b2);
    fixture_offline("carol", c);
}

TEST(raw_counts_targets)
{
    imgw_conn_ref_t a = fixture_online("alice", "web", 0, 1);
    imgw_conn_ref_t b1 = fixture_online("bob", "web", 1, 1);
    imgw_conn_ref_t b2 = fixture_online("bob", "ios", 2, 2);
    const char *users[] = {"alice", "bob", "nobody"};
    const uint8_t pb[] = {1, 2, 3}, json[] = "{}";

    size_t n = imgw_deliver_raw(&fx_loops[0], pb, sizeof(pb), json, 2, users,
                                3);
    CHECK_EQ_INT(n, 3); /* alice's one, bob's two; nobody's none */
    CHECK(depths_are(0, 1, 1));
    fixture_drain_all();
    CHECK(depths_are(0, 0, 0));
    fixture_offline("alice", a);
    fixture_offline("bob", b1);
    fixture_offline("bob", b2);
}

TEST(broadcast_every_loop)
{
    const uint8_t pb[] = {1}, json[] = "{}";

    imgw_stat_add(&fx_loops[0].st.sessions_authed, 2);
    imgw_stat_add(&fx_loops[2].st.sessions_authed, 5);
    size_t n = imgw_deliver_raw(&fx_loops[0], pb, sizeof(pb), json, 2, NULL,
                                0);
    CHECK_EQ_INT(n, 7); /* the authenticated sessions of the node */
    /* One mail to every loop, the caller's included: each walks its own
     * connections. */
    CHECK(depths_are(1, 1, 1));
    fixture_drain_all();
    CHECK(depths_are(0, 0, 0));
    imgw_stat_add(&fx_loops[0].st.sessions_authed, (uint64_t)-2);
    imgw_stat_add(&fx_loops[2].st.sessions_authed, (uint64_t)-5);
}

TEST(frame_routes_like_push)
{
    imgw_conn_ref_t b = fixture_online("bob", "web", 1, 1);
    imgw_conn_ref_t c = fixture_online("carol", "web", 2, 1);
    imgw_push_body_t body;
    const char *users[] = {"bob", "carol"};

    memset(&body, 0, sizeof(body));
    snprintf(body.typing.user_id, sizeof(body.typing.user_id),
             "alice");
    imgw_deliver_frame(&fx_loops[0], im_CommandType_CMD_TYPING_STATUS_PUSH, &body,
                       users, 2, none);
    CHECK(depths_are(0, 1, 1));
    fixture_drain_all();
    /* Excluding bob's connection leaves loop 1 out. */
    imgw_deliver_frame(&fx_loops[0], im_CommandType_CMD_TYPING_STATUS_PUSH, &body,
                       users, 2, b);
    CHECK(depths_are(0, 0, 1));
    fixture_drain_all();
    fixture_offline("bob", b);
    fixture_offline("carol", c);
}

TEST(kick_goes_to_the_owner)
{
    imgw_conn_ref_t on1 = {1, 7, 1}, on0 = {0, 7, 1};

    imgw_deliver_kick(&fx_loops[0], on1, "web");
    CHECK(depths_are(0, 1, 0));
    /* On the caller's own loop the kick is done at once (this ref names
     * no connection, so nothing happens). */
    imgw_deliver_kick(&fx_loops[0], on0, "web");
    CHECK(depths_are(0, 1, 0));
    fixture_drain_all();
    CHECK(depths_are(0, 0, 0));
}

TEST(allocation_failure_posts_nothing)
{
    imgw_conn_ref_t b = fixture_online("bob", "web", 1, 1);
    const char *users[] = {"bob"};
    const int64_t seqs[] = {1};
    const uint8_t blob[] = {0x0a, 0x01, 'x'};
    const uint8_t pb[] = {1}, json[] = "{}";
    imgw_conn_ref_t on1 = {1, 7, 1};

    /* Warm the routing scratch, so the next allocation is the mail's. */
    imgw_deliver_push(&fx_loops[0], blob, sizeof(blob), 1, users, seqs, 1,
                      none);
    fixture_drain_all();
    imgw__alloc_fail_nth(1);
    imgw_deliver_push(&fx_loops[0], blob, sizeof(blob), 1, users, seqs, 1,
                      none);
    CHECK_EQ_INT(imgw__alloc_fail_nth(0), 0); /* it was used */
    CHECK(depths_are(0, 0, 0));
    imgw__alloc_fail_nth(2); /* the mail, then its copy of the blob */
    imgw_deliver_push(&fx_loops[0], blob, sizeof(blob), 1, users, seqs, 1,
                      none);
    CHECK(depths_are(0, 0, 0));
    imgw__alloc_fail_nth(2); /* a raw mail's first frame copy */
    CHECK_EQ_INT(imgw_deliver_raw(&fx_loops[0], pb, 1, json, 2, users, 1), 1);
    CHECK(depths_are(0, 0, 0));
    imgw__alloc_fail_nth(1);
    imgw_deliver_kick(&fx_loops[0], on1, "web");
    CHECK(depths_are(0, 0, 0));
    imgw__alloc_fail_nth(0);
    /* And with memory again, all goes through. */
    imgw_deliver_push(&fx_loops[0], blob, sizeof(blob), 1, users, seqs, 1,
                      none);
    CHECK(depths_are(0, 1, 0));
    fixture_drain_all();
    fixture_offline("bob", b);
}

int
main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (fixture_setup() != 0) {
        CHECK(!"fixture_setup");
        TEST_DONE();
    }
    RUN(push_one_mail_per_other_loop);
    RUN(raw_counts_targets);
    RUN(broadcast_every_loop);
    RUN(frame_routes_like_push);
    RUN(kick_goes_to_the_owner);
    RUN(allocation_failure_posts_nothing);
    fixture_teardown();
    TEST_DONE();
}
