/*
 * test_downlink.c: unit tests for core/downlink.c, the one handler of the
 * business downlink (POST /api/push bodies and the broker's downlink
 * messages), on node_fixture.h's never-started node of three loops. Every
 * refusal answers 400 with its own sentence and sends nothing; a good body
 * answers 200, counts the connections it targets (a user listed twice
 * once), and posts one mail to each other loop holding any of them; data
 * may be absent; broadcast goes to every loop.
 */
#include "downlink.h"

#include <cjson/cJSON.h>

#include "node_fixture.h"
#include "test.h"

static int
push(const char *body, size_t *targets, const char **why)
{
    cJSON *j = cJSON_Parse(body);
    *why = NULL;
    *targets = 99;
    int st = imgw_downlink_push(&fx_loops[0], j, targets, why);
    cJSON_Delete(j);
    return st;
}

static int
nothing_posted(void)
{
    return fixture_depth(0) == 0 && fixture_depth(1) == 0 &&
           fixture_depth(2) == 0;
}

/* 400 with exactly this sentence, nothing targeted or posted. */
static int
refused(const char *body, const char *sentence)
{
    size_t n;
    const char *why;
    int st = push(body, &n, &why);
    int ok = st == 400 && n == 0 && why != NULL &&
             strcmp(why, sentence) == 0 && nothing_posted();
    if (!ok)
        printf("  (%s: %d, %zu, \"%s\")\n", body, st, n, why ? why : "");
    return ok;
}

TEST(refusals)
{
    CHECK(refused("{\"ids\":[\"a\"],\"data\":{}}",
                  "code must be a command number"));
    CHECK(refused("{\"code\":1.5,\"ids\":[\"a\"]}",
                  "code must be a command number"));
    CHECK(refused("{\"code\":102,\"ids\":[\"a\"],\"data\":[]}",
                  "data must be an object"));
    CHECK(refused("{\"code\":102,\"data\":{}}",
                  "ids must be an array of user ids"));
    CHECK(refused("{\"code\":102,\"ids\":[\"a\"],\"broadcast\":1}",
                  "broadcast must be a boolean"));
    CHECK(refused("{\"code\":200,\"ids\":[\"a\"],\"data\":{}}",
                  "unknown or client-side code"));
    CHECK(refused("{\"code\":12345,\"ids\":[\"a\"],\"data\":{}}",
                  "unknown or client-side code"));
    CHECK(refused("{\"code\":102,\"ids\":[\"a\"],\"data\":{\"reason\":5}}",
                  "data does not fit the command's body"));
    CHECK(refused("{\"code\":102,\"ids\":[\"a\"],\"data\":{\"reason\":"
                  "\"\xff\"}}",
                  "data has a string that is not UTF-8"));
    CHECK(refused("{\"code\":102,\"ids\":[1],\"data\":{}}",
                  "ids must be strings"));
    CHECK(refused("{\"code\":102,\"ids\":[\"\"],\"data\":{}}",
                  "ids: an id is empty"));
    CHECK(refused("{\"code\":102,\"ids\":[\"a b\"],\"data\":{}}",
                  "ids: an id may only contain A-Z a-z 0-9 . _ @ -"));
    char big[256];
    memset(big, 'x', 128);
    big[128] = '\0';
    char body[512];
    snprintf(body, sizeof(body), "{\"code\":102,\"ids\":[\"%s\"]}", big);
    CHECK(refused(body, "ids: an id is longer than 127 bytes"));
}

TEST(too_many_ids)
{
    cJSON *j = cJSON_CreateObject();
    cJSON *ids = cJSON_AddArrayToObject(j, "ids");
    cJSON_AddNumberToObject(j, "code", 102);
    for (int i = 0; i < 10001; i++)
        cJSON_AddItemToArray(ids, cJSON_CreateString("u"));
    size_t n = 5;
    const char *why = NULL;
    CHECK_EQ_INT(imgw_downlink_push(&fx_loops[0], j, &n, &why), 400);
    CHECK_EQ_STR(why, "too many ids");
    CHECK(nothing_posted());
    cJSON_Delete(j);
}

TEST(targets_and_routing)
{
    imgw_conn_ref_t a = fixture_online("alice", "web", 0, 1);
    imgw_conn_ref_t b = fixture_online("bob", "web", 1, 1);
    imgw_conn_ref_t b2 = fixture_online("bob", "ios", 1, 2);
    size_t n;
    const char *why;

    /* alice twice (a set), bob's two connections, nobody offline. */
    CHECK_EQ_INT(push("{\"code\":102,\"ids\":[\"alice\",\"bob\",\"alice\","
                      "\"nobody\"],\"data\":{\"reason\":\"bye\"}}",
                      &n, &why),
                 200);
    CHECK_EQ_INT(n, 3);
    CHECK(fixture_depth(0) == 0 && fixture_depth(1) == 1 &&
          fixture_depth(2) == 0);
    fixture_drain_all();
    /* data may be absent: an all-default body. */
    CHECK_EQ_INT(push("{\"code\":102,\"ids\":[\"bob\"]}", &n, &why), 200);
    CHECK_EQ_INT(n, 2);
    CHECK_EQ_INT(fixture_depth(1), 1);
    fixture_drain_all();
    /* No one online: 200, nothing targeted. */
    CHECK_EQ_INT(push("{\"code\":102,\"ids\":[\"ghost\"]}", &n, &why), 200);
    CHECK_EQ_INT(n, 0);
    CHECK(nothing_posted());
    fixture_offline("alice", a);
    fixture_offline("bob", b);
    fixture_offline("bob", b2);
}

TEST(broadcast)
{
    size_t n;
    const char *why;
    CHECK_EQ_INT(push("{\"code\":102,\"broadcast\":true,\"data\":{}}", &n,
                      &why),
                 200);
    CHECK(fixture_depth(0) == 1 && fixture_depth(1) == 1 &&
          fixture_depth(2) == 1);
    fixture_drain_all();
    CHECK(nothing_posted());
}

int
main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (fixture_setup() != 0) {
        CHECK(!"fixture_setup");
        TEST_DONE();
    }
    RUN(refusals);
    RUN(too_many_ids);
    RUN(targets_and_routing);
    RUN(broadcast);
    fixture_teardown();
    TEST_DONE();
}
