/* test_http.c: the RFC 6455 upgrade checks and the request helpers. */
#include <string.h>

#include "net_int.h"
#include "test.h"

static void
add(imgw_http_req_t *r, const char *name, const char *value)
{
    r->names[r->n_headers] = (imgw_span_t){name, strlen(name)};
    r->values[r->n_headers] = (imgw_span_t){value, strlen(value)};
    r->n_headers++;
}

static void
valid(imgw_http_req_t *r)
{
    memset(r, 0, sizeof(*r));
    add(r, "Host", "x");
    add(r, "Upgrade", "websocket");
    add(r, "Connection", "keep-alive, Upgrade");
    add(r, "Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==");
    add(r, "Sec-WebSocket-Version", "13");
}

TEST(upgrade_ok)
{
    imgw_http_req_t r;
    char acc[29];
    valid(&r);
    CHECK_EQ_INT(imgw__http_check_upgrade(&r, 1, acc), 0);
    CHECK_EQ_STR(acc, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    /* Header names and tokens are case-insensitive. */
    memset(&r, 0, sizeof(r));
    add(&r, "upgrade", "WebSocket");
    add(&r, "CONNECTION", "upgrade");
    add(&r, "sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
    add(&r, "sec-websocket-version", "13");
    CHECK_EQ_INT(imgw__http_check_upgrade(&r, 1, acc), 0);
}

TEST(upgrade_errors)
{
    imgw_http_req_t r;
    char acc[29];
    valid(&r);
    CHECK_EQ_INT(imgw__http_check_upgrade(&r, 0, acc), 400); /* not GET */
    valid(&r);
    r.values[1] = (imgw_span_t){"h2c", 3};
    CHECK_EQ_INT(imgw__http_check_upgrade(&r, 1, acc), 400);
    valid(&r);
    r.values[2] = (imgw_span_t){"keep-alive", 10};
    CHECK_EQ_INT(imgw__http_check_upgrade(&r, 1, acc), 400);
    valid(&r);
    r.values[3] = (imgw_span_t){"short", 5};
    CHECK_EQ_INT(imgw__http_check_upgrade(&r, 1, acc), 400);
    valid(&r);
    r.values[4] = (imgw_span_t){"8", 1};
    CHECK_EQ_INT(imgw__http_check_upgrade(&r, 1, acc), 426);
    valid(&r);
    r.n_headers = 4; /* no version */
    CHECK_EQ_INT(imgw__http_check_upgrade(&r, 1, acc), 426);
    valid(&r);
    r.n_headers = 3; /* no key */
    CHECK_EQ_INT(imgw__http_check_upgrade(&r, 1, acc), 400);
}

TEST(query_and_cookies)
{
    imgw_http_req_t r;
    char out[64];
    memset(&r, 0, sizeof(r));
    const char *q = "a=1&token=abc%2Edef&x=&y";
    r.query = (imgw_span_t){q, strlen(q)};
    CHECK_EQ_INT(imgw_http_query_param(&r, "token", out, sizeof(out)), 0);
    CHECK_EQ_STR(out, "abc.def");
    CHECK_EQ_INT(imgw_http_query_param(&r, "x", out, sizeof(out)), 0);
    CHECK_EQ_STR(out, "");
    CHECK_EQ_INT(imgw_http_query_param(&r, "tok", out, sizeof(out)), -1);
    CHECK_EQ_INT(imgw_http_query_param(&r, "token", out, 4), -2); /* too long */
    add(&r, "Cookie", "sid=1; token=t0k; other=2");
    CHECK_EQ_INT(imgw_http_cookie(&r, "token", out, sizeof(out)), 0);
    CHECK_EQ_STR(out, "t0k");
    CHECK_EQ_INT(imgw_http_cookie(&r, "sid", out, sizeof(out)), 0);
    CHECK_EQ_STR(out, "1");
    CHECK_EQ_INT(imgw_http_cookie(&r, "nope", out, sizeof(out)), -1);
    const imgw_span_t *h = imgw_http_header(&r, "COOKIE");
    CHECK(h != NULL && h->len == strlen("sid=1; token=t0k; other=2"));
    CHECK(imgw_http_header(&r, "missing") == NULL);
}

int
main(void)
{
    RUN(upgrade_ok);
    RUN(upgrade_errors);
    RUN(query_and_cookies);
    TEST_DONE();
}
