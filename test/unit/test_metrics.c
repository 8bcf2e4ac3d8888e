/*
 * test_metrics.c: unit tests for core/metrics.c, the /metrics page, on a
 * node_fixture.h's node of three loops, created but never started (no
 * traffic: the counters are set by hand, as the loops' owners would). Checks the text
 * format (HELP and TYPE once per family, before its samples), that core
 * counters are summed over the loops, per-loop gauges carry loop labels,
 * error responses are labelled by the proto's code names, node values
 * (users online, draining) come through, the store families appear only
 * with a store that has them, and an allocation failure yields NULL.
 */
#include "metrics.h"

#include "node_fixture.h"
#include "test.h"

/* The value of the sample line that starts with `series ` exactly, or -1. */
static long long
value_of(const char *text, const char *series)
{
    size_t n = strlen(series);
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : p) {
        if (strncmp(p, series, n) == 0 && p[n] == ' ')
            return strtoll(p + n + 1, NULL, 10);
    }
    return -1;
}

static int
occurrences(const char *text, const char *s)
{
    int k = 0;
    for (const char *p = text; (p = strstr(p, s)) != NULL; p += strlen(s))
        k++;
    return k;
}

TEST(format_and_sums)
{
    size_t len = 0;

    imgw_stat_add(&fx_loops[0].st.msgs_sent, 3);
    imgw_stat_add(&fx_loops[1].st.msgs_sent, 4);
    imgw_stat_inc(&fx_loops[1].st.kicks);
    imgw_stat_add(&fx_loops[0].st.heartbeats, 10);
    imgw_stat_add(&fx_loops[1].st.heartbeats, 5);
    imgw_stat_inc(&fx_loops[0].st.auth_fail[4]); /* expired */
    char *t = imgw_metrics_render(&fx_node, &len);
    CHECK(t != NULL);
    if (t == NULL)
        return;
    CHECK_EQ_INT(len, strlen(t));
    CHECK_EQ_INT(value_of(t, "imgw_messages_total{kind=\"sent\"}"), 7);
    CHECK_EQ_INT(value_of(t, "imgw_kicks_total"), 1);
    CHECK_EQ_INT(value_of(t, "imgw_heartbeats_total"), 15);
    CHECK_EQ_INT(value_of(t, "imgw_auth_failures_total{reason=\"expired\"}"),
                 1);
    CHECK_EQ_INT(value_of(t, "imgw_auth_failures_total{reason=\"malformed\"}"),
                 0);
    /* One HELP and one TYPE per family, HELP first. */
    CHECK_EQ_INT(occurrences(t, "# HELP imgw_messages_total "), 1);
    CHECK_EQ_INT(occurrences(t, "# TYPE imgw_messages_total counter\n"), 1);
    CHECK_EQ_INT(occurrences(t, "# TYPE imgw_users_online gauge\n"), 1);
    CHECK(strstr(t, "# HELP imgw_messages_total ") <
          strstr(t, "# TYPE imgw_messages_total "));
    CHECK(strstr(t, "# TYPE imgw_messages_total ") <
          strstr(t, "imgw_messages_total{kind=\"sent\"}"));
    /* Per-loop gauges, one sample per loop. */
    CHECK_EQ_INT(value_of(t, "imgw_connections_open{loop=\"0\"}"), 0);
    CHECK_EQ_INT(value_of(t, "imgw_connections_open{loop=\"2\"}"), 0);
    CHECK_EQ_INT(value_of(t, "imgw_connections_open{loop=\"3\"}"), -1);
    CHECK(t[len - 1] == '\n');
    imgw_free(t);
}

TEST(error_labels_from_the_proto)
{
    size_t len;
    int idx = imgw_codec_err_index(im_ErrorCode_ERR_INVALID_PARAM);

    CHECK(idx > 0);
    imgw_stat_add(&fx_loops[0].st.errors[idx], 2);
    imgw_stat_add(&fx_loops[1].st.errors[idx], 1);
    imgw_stat_inc(&fx_loops[1].st.errors[IMGW_N_ERRCODES - 1]); /* other */
    char *t = imgw_metrics_render(&fx_node, &len);
    CHECK(t != NULL);
    if (t == NULL)
        return;
    CHECK_EQ_INT(
        value_of(t, "imgw_error_responses_total{code=\"ERR_INVALID_PARAM\"}"),
        3);
    CHECK_EQ_INT(value_of(t, "imgw_error_responses_total{code=\"other\"}"), 1);
    /* ERR_SUCCESS is never an error response. */
    CHECK_EQ_INT(occurrences(t, "code=\"ERR_SUCCESS\""), 0);
    /* Every other ErrorCode has its sample. */
    int all = 1;
    for (size_t i = 1; i < imgw_codec_err_count(); i++) {
        char s[128];
        snprintf(s, sizeof(s), "imgw_error_responses_total{code=\"%s\"}",
                 imgw_codec_err_name(imgw_codec_err_value(i)));
        all &= value_of(t, s) >= 0;
    }
    CHECK(all);
    imgw_free(t);
}

TEST(node_values)
{
    size_t len;
    imgw_conn_ref_t r1 = {0}, r2 = {0}, kicked;

    r1.slot = 1;
    r2.slot = 2;
    imgw_usermap_add(fx_node.users, "alice", "web", r1, &kicked);
    imgw_usermap_add(fx_node.users, "bob", "web", r2, &kicked);
    char *t = imgw_metrics_render(&fx_node, &len);
    CHECK(t != NULL);
    if (t == NULL)
        return;
    CHECK_EQ_INT(value_of(t, "imgw_users_online"), 2);
    CHECK_EQ_INT(value_of(t, "imgw_draining"), 0);
    CHECK_EQ_INT(value_of(t, "imgw_store_up"), 0); /* no store */
    /* Without a store (stats), no store families at all. */
    CHECK_EQ_INT(occurrences(t, "imgw_store_users "), 0);
    CHECK_EQ_INT(occurrences(t, "# HELP imgw_store_users_max"), 0);
    imgw_free(t);
}

TEST(memory_store_families)
{
    size_t len;
    char err[256];
    imgw_store_cfg_t sc;

    memset(&sc, 0, sizeof(sc));
    sc.backend = "memory";
    sc.retention_count = 100;
    sc.retention_days = 1;
    sc.dedupe_ttl = 60;
    sc.n_loops = FIXTURE_LOOPS;
    CHECK_EQ_INT(imgw_store_open(&fx_node.store, &sc, err, sizeof(err)), 0);
    char *t = imgw_metrics_render(&fx_node, &len);
    CHECK(t != NULL);
    if (t != NULL) {
        CHECK_EQ_INT(value_of(t, "imgw_store_users"), 0);
        CHECK(value_of(t, "imgw_store_users_max") > 0);
        CHECK_EQ_INT(value_of(t, "imgw_store_users_refused_total"), 0);
    }
    imgw_free(t);
    imgw_store_close(fx_node.store);
    fx_node.store = NULL;
}

TEST(allocation_failure)
{
    size_t len = 12345;

    imgw__alloc_fail_nth(1); /* the page's buffer */
    CHECK(imgw_metrics_render(&fx_node, &len) == NULL);
    imgw__alloc_fail_nth(2); /* the scrape's per-loop copy */
    CHECK(imgw_metrics_render(&fx_node, &len) == NULL);
    imgw__alloc_fail_nth(0);
    char *t = imgw_metrics_render(&fx_node, &len);
    CHECK(t != NULL); /* and all is well again */
    imgw_free(t);
}

int
main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (fixture_setup() != 0) {
        CHECK(!"fixture_setup");
        TEST_DONE();
    }
    RUN(format_and_sums);
    RUN(error_labels_from_the_proto);
    RUN(node_values);
    RUN(memory_store_families);
    RUN(allocation_failure);
    fixture_teardown();
    TEST_DONE();
}
