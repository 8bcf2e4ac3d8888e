/*
 * test_tls.c: unit tests for net/tls.c (the contract is in tls.h).
 *
 * Single-threaded, no sockets. Each test wires an mbedtls 2.28 *client*
 * to an imgw_tls_t server through in-memory byte queues: the client's
 * send BIO appends to c2s, which pump() feeds to imgw_tls_feed(); the
 * server's io->send appends to s2c, which the client's receive BIO reads.
 * pump() moves bytes both ways until nothing moves.
 *
 * Fixtures in $IMGW_TEST_DATA/tls (default test/unit/data/tls, relative to
 * the repo root where meson runs us); see README.md there for how they were
 * made. The client trusts cert.pem and rsa_cert.pem (self-signed,
 * CN=localhost) and verifies the name "localhost".
 */
#include "tls.h"

#include "err.h"
#include "test.h"

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/ssl.h>
#include <mbedtls/x509_crt.h>
#include <stdint.h>
#include <uv.h>

#define MIB (1024 * 1024)

/* ---- fixtures and the client side -------------------------------------- */

static char data_dir[512];
static mbedtls_entropy_context c_entropy;
static mbedtls_ctr_drbg_context c_drbg;
static mbedtls_x509_crt c_ca;
static int verify_calls; /* client certificate checks: full handshakes */

static const char *
fixture(const char *name)
{
    static char path[4][768];
    static int next;
    char *p = path[next++ % 4];

    snprintf(p, sizeof path[0], "%s/%s", data_dir, name);
    return p;
}

static int
count_verify(void *arg, mbedtls_x509_crt *crt, int depth, uint32_t *flags)
{
    (void)arg;
    (void)crt;
    (void)depth;
    (void)flags; /* keep mbedtls' verdict */
    verify_calls++;
    return 0;
}

enum { CLI_DEFAULT, CLI_TLS11, CLI_CBC, CLI_ALPN_H2, CLI_NO_ALPN };

/* A client config: the given variant of "verify localhost against our
   fixtures, offer http/1.1". */
static void
client_conf(mbedtls_ssl_config *conf, int variant)
{
    static const char *alpn_http[] = {"http/1.1", NULL};
    static const char *alpn_h2[] = {"h2", NULL};
    static const int cbc[] = {
        MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256,
        MBEDTLS_TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256,
        MBEDTLS_TLS_RSA_WITH_AES_128_GCM_SHA256, /* static RSA, no PFS */
        0};

    mbedtls_ssl_config_init(conf);
    if (mbedtls_ssl_config_defaults(conf, MBEDTLS_SSL_IS_CLIENT,
                                    MBEDTLS_SSL_TRANSPORT_STREAM,
                                    MBEDTLS_SSL_PRESET_DEFAULT) != 0)
        abort();
    mbedtls_ssl_conf_rng(conf, mbedtls_ctr_drbg_random, &c_drbg);
    mbedtls_ssl_conf_authmode(conf, MBEDTLS_SSL_VERIFY_REQUIRED);
    mbedtls_ssl_conf_ca_chain(conf, &c_ca, NULL);
    mbedtls_ssl_conf_verify(conf, count_verify, NULL);
    mbedtls_ssl_conf_session_tickets(conf, MBEDTLS_SSL_SESSION_TICKETS_ENABLED);
    if (variant == CLI_TLS11) {
        mbedtls_ssl_conf_min_version(conf, MBEDTLS_SSL_MAJOR_VERSION_3,
                                     MBEDTLS_SSL_MINOR_VERSION_1);
        mbedtls_ssl_conf_max_version(conf, MBEDTLS_SSL_MAJOR_VERSION_3,
                                     MBEDTLS_SSL_MINOR_VERSION_2);
    }
    if (variant == CLI_CBC)
        mbedtls_ssl_conf_ciphersuites(conf, cbc);
    if (variant == CLI_ALPN_H2)
        mbedtls_ssl_conf_alpn_protocols(conf, alpn_h2);
    else if (variant != CLI_NO_ALPN)
        mbedtls_ssl_conf_alpn_protocols(conf, alpn_http);
}

/* ---- byte queues and the link ------------------------------------------ */

typedef struct bytes_s {
    uint8_t *p;
    size_t off; /* consumed up to here */
    size_t len; /* filled up to here; off <= len <= cap */
    size_t cap;
} bytes_t;

static void
bytes_put(bytes_t *b, const void *p, size_t n)
{
    if (b->off == b->len)
        b->off = b->len = 0;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;

        while (cap < b->len + n)
            cap *= 2;
        b->p = realloc(b->p, cap);
        if (b->p == NULL)
            abort();
        b->cap = cap;
    }
    memcpy(b->p + b->len, p, n);
    b->len += n;
}

static size_t
bytes_avail(const bytes_t *b)
{
    return b->len - b->off;
}

static void
bytes_free(bytes_t *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

typedef struct link_s {
    imgw_tls_t *srv;
    mbedtls_ssl_context cli;
    bytes_t c2s;      /* client records not yet fed to the server */
    bytes_t s2c;      /* server records not yet read by the client */
    bytes_t srv_got;  /* plaintext the server's io->recv was given */
    bytes_t cli_got;  /* plaintext the client read */
    size_t s2c_total; /* bytes the server ever sent */
    size_t c2s_total; /* bytes the client ever sent */
    size_t chunk;     /* feed the server this many bytes at once; 0 = all */
    int echo;         /* io->recv writes back what it gets */
    int reenter;      /* io->recv calls feed (refused) and close_notify */
    int send_fail;    /* io->send fails with this when nonzero */
    int feed_rc;      /* first nonzero imgw_tls_feed() result */
    int echo_rc;      /* first nonzero imgw_tls_write() in io->recv */
    int reenter_rc;   /* what the nested imgw_tls_feed() returned */
    int cli_rc;       /* first fatal client error */
    int cli_closed;   /* the client read the server's close_notify */
} link_t;

static int
srv_send(void *arg, const uint8_t *p, size_t n)
{
    link_t *l = arg;

    if (l->send_fail)
        return l->send_fail;
    bytes_put(&l->s2c, p, n);
    l->s2c_total += n;
    return 0;
}

static void
srv_recv(void *arg, const uint8_t *p, size_t n)
{
    link_t *l = arg;

    bytes_put(&l->srv_got, p, n);
    if (l->echo) {
        int rc = imgw_tls_write(l->srv, p, n);

        if (rc != 0 && l->echo_rc == 0)
            l->echo_rc = rc;
    }
    if (l->reenter) {
        l->reenter_rc = imgw_tls_feed(l->srv, (const uint8_t *)"x", 1);
        imgw_tls_close_notify(l->srv);
    }
}

static int
cli_bio_send(void *arg, const unsigned char *p, size_t n)
{
    link_t *l = arg;

    bytes_put(&l->c2s, p, n);
    l->c2s_total += n;
    return (int)n;
}

static int
cli_bio_recv(void *arg, unsigned char *p, size_t n)
{
    link_t *l = arg;
    size_t avail = bytes_avail(&l->s2c);

    if (avail == 0)
        return MBEDTLS_ERR_SSL_WANT_READ;
    if (n > avail)
        n = avail;
    memcpy(p, l->s2c.p + l->s2c.off, n);
    l->s2c.off += n;
    return (int)n;
}

static void
link_open(link_t *l, imgw_tls_ctx_t *ctx, const mbedtls_ssl_config *conf)
{
    imgw_tls_io_t io = {srv_send, srv_recv, l};

    memset(l, 0, sizeof *l);
    if (imgw_tls_new(&l->srv, ctx, &io) != 0)
        abort();
    mbedtls_ssl_init(&l->cli);
    if (mbedtls_ssl_setup(&l->cli, conf) != 0 ||
        mbedtls_ssl_set_hostname(&l->cli, "localhost") != 0)
        abort();
    mbedtls_ssl_set_bio(&l->cli, l, cli_bio_send, cli_bio_recv, NULL);
}

static void
link_close(link_t *l)
{
    imgw_tls_free(l->srv);
    mbedtls_ssl_free(&l->cli);
    bytes_free(&l->c2s);
    bytes_free(&l->s2c);
    bytes_free(&l->srv_got);
    bytes_free(&l->cli_got);
}

static int
cli_done(const link_t *l)
{
    return l->cli.state == MBEDTLS_SSL_HANDSHAKE_OVER;
}

/* One client step: handshake or read everything readable. Returns 1 if
   it moved anything. */
static int
cli_step(link_t *l)
{
    size_t in0 = l->s2c.off, out0 = l->c2s.len;
    int ret;

    if (l->cli_rc != 0 || l->cli_closed)
        return 0;
    if (!cli_done(l)) {
        ret = mbedtls_ssl_handshake(&l->cli);
        if (ret != 0 && ret != MBEDTLS_ERR_SSL_WANT_READ)
            l->cli_rc = ret;
        return ret == 0 || l->s2c.off != in0 || l->c2s.len != out0;
    }
    for (;;) {
        uint8_t buf[4096];

        ret = mbedtls_ssl_read(&l->cli, buf, sizeof buf);
        if (ret > 0) {
            bytes_put(&l->cli_got, buf, (size_t)ret);
            continue;
        }
        if (ret == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY)
            l->cli_closed = 1;
        else if (ret != MBEDTLS_ERR_SSL_WANT_READ && ret != 0)
            l->cli_rc = ret;
        break;
    }
    return l->s2c.off != in0 || l->c2s.len != out0;
}

/* Moves bytes both ways until nothing moves. */
static void
pump(link_t *l)
{
    for (int guard = 0; guard < 100000; guard++) {
        int moved = 0;

        while (bytes_avail(&l->c2s) > 0 && l->feed_rc == 0) {
            size_t n = bytes_avail(&l->c2s);
            int rc;

            if (l->chunk != 0 && n > l->chunk)
                n = l->chunk;
            rc = imgw_tls_feed(l->srv, l->c2s.p + l->c2s.off, n);
            l->c2s.off += n;
            moved = 1;
            if (rc != 0)
                l->feed_rc = rc;
        }
        moved |= cli_step(l);
        if (!moved)
            return;
    }
    printf("  pump: no quiescence\n");
}

static int
cli_write(link_t *l, const void *p, size_t n)
{
    const uint8_t *q = p;

    while (n > 0) {
        int ret = mbedtls_ssl_write(&l->cli, q, n);

        if (ret <= 0)
            return ret;
        q += ret;
        n -= (size_t)ret;
    }
    return 0;
}

static int
bytes_eq(const bytes_t *b, const void *p, size_t n)
{
    return bytes_avail(b) == n && memcmp(b->p + b->off, p, n) == 0;
}

static void
fill_pattern(uint8_t *p, size_t n, uint32_t seed)
{
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1103515245u + 12345u;
        p[i] = (uint8_t)(seed >> 16);
    }
}

/* ---- tests -------------------------------------------------------------- */

static imgw_tls_ctx_t *ctx;       /* cert.pem + key.pem, shared by most tests */
static mbedtls_ssl_config c_conf; /* CLI_DEFAULT */

TEST(ctx_new_ok)
{
    char err[256] = "untouched";
    int rc;

    printf("  the EC fixtures load; err is cleared on success\n");
    rc = imgw_tls_ctx_new(&ctx, fixture("cert.pem"), fixture("key.pem"), err,
                          sizeof err);
    CHECK_EQ_INT(rc, 0);
    CHECK(ctx != NULL);
    CHECK_EQ_STR(err, "");
}

TEST(handshake)
{
    link_t l;

    printf("  a client verifying CN/SAN localhost completes a handshake\n");
    link_open(&l, ctx, &c_conf);
    CHECK_EQ_INT(imgw_tls_established(l.srv), 0);
    pump(&l);
    CHECK_EQ_INT(l.feed_rc, 0);
    CHECK_EQ_INT(l.cli_rc, 0);
    CHECK(cli_done(&l));
    CHECK_EQ_INT(imgw_tls_established(l.srv), 1);
    CHECK_EQ_INT(mbedtls_ssl_get_verify_result(&l.cli), 0);
    printf("  negotiated %s %s\n", mbedtls_ssl_get_version(&l.cli),
           mbedtls_ssl_get_ciphersuite(&l.cli));
    CHECK_EQ_STR(mbedtls_ssl_get_version(&l.cli), "TLSv1.2");
    CHECK_EQ_STR(mbedtls_ssl_get_ciphersuite(&l.cli),
                 "TLS-ECDHE-ECDSA-WITH-AES-128-GCM-SHA256");
    CHECK_EQ_STR(mbedtls_ssl_get_alpn_protocol(&l.cli), "http/1.1");
    link_close(&l);
}

TEST(hello_echo)
{
    link_t l;

    printf("  \"hello\" reaches io->recv; a write inside io->recv echoes it\n");
    link_open(&l, ctx, &c_conf);
    l.echo = 1;
    pump(&l);
    CHECK_EQ_INT(cli_write(&l, "hello", 5), 0);
    pump(&l);
    CHECK_EQ_INT(l.feed_rc, 0);
    CHECK(bytes_eq(&l.srv_got, "hello", 5));
    CHECK_EQ_INT(l.echo_rc, 0);
    CHECK(bytes_eq(&l.cli_got, "hello", 5));
    link_close(&l);
}

TEST(large_transfer)
{
    uint8_t *up = malloc(MIB), *down = malloc(MIB);
    link_t l;

    printf("  1 MiB up in 10007-byte writes (echoed), 1 MiB down in one "
           "imgw_tls_write: intact\n");
    fill_pattern(up, MIB, 1);
    fill_pattern(down, MIB, 2);
    link_open(&l, ctx, &c_conf);
    l.echo = 1;
    pump(&l);
    for (size_t off = 0; off < MIB; off += 10007) {
        size_t n = MIB - off < 10007 ? MIB - off : 10007;

        if (cli_write(&l, up + off, n) != 0)
            break;
        pump(&l);
    }
    CHECK_EQ_INT(l.feed_rc, 0);
    CHECK_EQ_INT(l.echo_rc, 0);
    CHECK(bytes_eq(&l.srv_got, up, MIB));
    CHECK(bytes_eq(&l.cli_got, up, MIB));

    l.echo = 0;
    l.cli_got.off = l.cli_got.len = 0;
    CHECK_EQ_INT(imgw_tls_write(l.srv, down, MIB), 0);
    pump(&l);
    CHECK_EQ_INT(l.cli_rc, 0);
    CHECK(bytes_eq(&l.cli_got, down, MIB));
    link_close(&l);
    free(up);
    free(down);
}

TEST(write_before_handshake)
{
    uint8_t *big = calloc(1, 300 * 1024);
    link_t l;

    printf("  plaintext written before/during the handshake arrives after "
           "it, in order\n");
    link_open(&l, ctx, &c_conf);
    CHECK_EQ_INT(imgw_tls_write(l.srv, (const uint8_t *)"early-", 6), 0);
    CHECK_EQ_INT(l.s2c_total, 0);
    /* ClientHello in, server's first flight out, then a mid-handshake
       write while the server waits for the client's Finished. */
    cli_step(&l);
    CHECK_EQ_INT(imgw_tls_feed(l.srv, l.c2s.p + l.c2s.off, bytes_avail(&l.c2s)),
                 0);
    l.c2s.off = l.c2s.len;
    CHECK(l.s2c_total > 0);
    CHECK_EQ_INT(imgw_tls_established(l.srv), 0);
    CHECK_EQ_INT(imgw_tls_write(l.srv, (const uint8_t *)"bird", 4), 0);
    pump(&l);
    CHECK_EQ_INT(imgw_tls_established(l.srv), 1);
    CHECK(bytes_eq(&l.cli_got, "early-bird", 10));
    link_close(&l);

    printf("  more than 256 KiB before the handshake: IMGW_EQUEUEFULL, "
           "what was taken still arrives\n");
    link_open(&l, ctx, &c_conf);
    CHECK_EQ_INT(imgw_tls_write(l.srv, big, 200 * 1024), 0);
    CHECK_EQ_INT(imgw_tls_write(l.srv, big, 100 * 1024), IMGW_EQUEUEFULL);
    pump(&l);
    CHECK_EQ_INT(l.feed_rc, 0);
    CHECK_EQ_INT(bytes_avail(&l.cli_got), 200 * 1024);
    link_close(&l);
    free(big);
}

TEST(session_resumption)
{
    mbedtls_ssl_session sess;
    imgw_tls_ctx_t *other = NULL;
    link_t a, b, c;
    int calls;

    printf("  a ticket from the first connection resumes the second: no "
           "certificate (no verify call), fewer bytes\n");
    mbedtls_ssl_session_init(&sess);
    link_open(&a, ctx, &c_conf);
    calls = verify_calls;
    pump(&a);
    CHECK(cli_done(&a));
    CHECK(verify_calls > calls);
    CHECK_EQ_INT(mbedtls_ssl_get_session(&a.cli, &sess), 0);
    printf("  ticket of %zu bytes\n", sess.ticket_len);
    CHECK(sess.ticket_len > 0);

    link_open(&b, ctx, &c_conf);
    CHECK_EQ_INT(mbedtls_ssl_set_session(&b.cli, &sess), 0);
    calls = verify_calls;
    pump(&b);
    CHECK_EQ_INT(b.feed_rc, 0);
    CHECK(cli_done(&b));
    CHECK_EQ_INT(imgw_tls_established(b.srv), 1);
    CHECK_EQ_INT(verify_calls, calls);
    printf("  server sent %zu bytes in full, %zu resumed\n", a.s2c_total,
           b.s2c_total);
    CHECK(b.s2c_total < a.s2c_total / 2);
    b.echo = 1;
    CHECK_EQ_INT(cli_write(&b, "again", 5), 0);
    pump(&b);
    CHECK(bytes_eq(&b.cli_got, "again", 5));

    printf("  another ctx (another loop) cannot read the ticket: full "
           "handshake instead\n");
    CHECK_EQ_INT(imgw_tls_ctx_new(&other, fixture("cert.pem"),
                                  fixture("key.pem"), NULL, 0),
                 0);
    link_open(&c, other, &c_conf);
    CHECK_EQ_INT(mbedtls_ssl_set_session(&c.cli, &sess), 0);
    calls = verify_calls;
    pump(&c);
    CHECK_EQ_INT(c.feed_rc, 0);
    CHECK_EQ_INT(imgw_tls_established(c.srv), 1);
    CHECK(verify_calls > calls);

    link_close(&a);
    link_close(&b);
    link_close(&c);
    imgw_tls_ctx_free(other);
    mbedtls_ssl_session_free(&sess);
}

TEST(close_notify)
{
    link_t l;

    printf("  the client's close_notify: feed returns IMGW_ECLOSED; writes "
           "fail; ours still goes out\n");
    link_open(&l, ctx, &c_conf);
    pump(&l);
    CHECK_EQ_INT(mbedtls_ssl_close_notify(&l.cli), 0);
    pump(&l);
    CHECK_EQ_INT(l.feed_rc, IMGW_ECLOSED);
    CHECK_EQ_INT(imgw_tls_feed(l.srv, (const uint8_t *)"x", 1), IMGW_ECLOSED);
    CHECK_EQ_INT(imgw_tls_write(l.srv, (const uint8_t *)"x", 1), IMGW_ECLOSED);
    imgw_tls_close_notify(l.srv);
    pump(&l);
    CHECK_EQ_INT(l.cli_closed, 1);
    link_close(&l);

    printf("  the server's close_notify reaches the client; later writes "
           "are IMGW_ECLOSED\n");
    link_open(&l, ctx, &c_conf);
    pump(&l);
    imgw_tls_close_notify(l.srv);
    imgw_tls_close_notify(l.srv); /* idempotent */
    pump(&l);
    CHECK_EQ_INT(l.cli_closed, 1);
    CHECK_EQ_INT(l.cli_rc, 0);
    CHECK_EQ_INT(imgw_tls_write(l.srv, (const uint8_t *)"x", 1), IMGW_ECLOSED);
    link_close(&l);

    printf("  close_notify before the handshake sends nothing\n");
    link_open(&l, ctx, &c_conf);
    imgw_tls_close_notify(l.srv);
    CHECK_EQ_INT(l.s2c_total, 0);
    CHECK_EQ_INT(imgw_tls_write(l.srv, (const uint8_t *)"x", 1), IMGW_ECLOSED);
    link_close(&l);
}

TEST(garbage)
{
    static const char http[] = "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";
    static const uint8_t huge_record[] = {0x16, 0x03, 0x03, 0xff, 0xff};
    imgw_tls_io_t io;
    uint8_t junk[2048];
    link_t l;
    int rc;

    printf("  random bytes, plain HTTP, an oversized record: negative, "
           "sticky, no crash\n");
    fill_pattern(junk, sizeof junk, 7);
    link_open(&l, ctx, &c_conf);
    rc = imgw_tls_feed(l.srv, junk, sizeof junk);
    CHECK(rc < 0);
    CHECK_EQ_INT(imgw_tls_feed(l.srv, junk, sizeof junk), rc);
    CHECK_EQ_INT(imgw_tls_write(l.srv, junk, 10), rc);
    link_close(&l);

    link_open(&l, ctx, &c_conf);
    CHECK_EQ_INT(imgw_tls_feed(l.srv, (const uint8_t *)http, sizeof http - 1),
                 IMGW_EPROTO);
    link_close(&l);

    link_open(&l, ctx, &c_conf);
    CHECK_EQ_INT(imgw_tls_feed(l.srv, huge_record, sizeof huge_record),
                 IMGW_EPROTO);
    link_close(&l);

    printf("  a flipped bit in an application record: IMGW_EPROTO, nothing "
           "delivered\n");
    link_open(&l, ctx, &c_conf);
    pump(&l);
    CHECK_EQ_INT(cli_write(&l, "hello", 5), 0);
    l.c2s.p[l.c2s.len - 1] ^= 1;
    pump(&l);
    CHECK_EQ_INT(l.feed_rc, IMGW_EPROTO);
    CHECK_EQ_INT(bytes_avail(&l.srv_got), 0);
    link_close(&l);

    printf("  bad arguments to imgw_tls_new: IMGW_EINVAL\n");
    {
        imgw_tls_t *t = (imgw_tls_t *)&io;

        memset(&io, 0, sizeof io);
        CHECK_EQ_INT(imgw_tls_new(&t, ctx, &io), IMGW_EINVAL);
        CHECK(t == NULL);
    }
}

TEST(byte_by_byte)
{
    uint8_t msg[20000];
    link_t l;

    printf("  the server is fed one byte at a time: handshake, a 2-record "
           "message, echo\n");
    fill_pattern(msg, sizeof msg, 3);
    link_open(&l, ctx, &c_conf);
    l.chunk = 1;
    l.echo = 1;
    pump(&l);
    CHECK_EQ_INT(l.feed_rc, 0);
    CHECK_EQ_INT(imgw_tls_established(l.srv), 1);
    CHECK_EQ_INT(cli_write(&l, msg, sizeof msg), 0);
    pump(&l);
    CHECK_EQ_INT(l.feed_rc, 0);
    CHECK(bytes_eq(&l.srv_got, msg, sizeof msg));
    CHECK(bytes_eq(&l.cli_got, msg, sizeof msg));
    link_close(&l);
}

TEST(empty_records)
{
    link_t l;
    size_t n0;

    printf("  empty application records between data records (mbedtls_ssl_"
           "read returns 0 or WANT_READ with input left): all data arrives\n");
    link_open(&l, ctx, &c_conf);
    pump(&l);
    CHECK_EQ_INT(cli_write(&l, "a", 1), 0);
    n0 = l.c2s_total;
    CHECK_EQ_INT(mbedtls_ssl_write(&l.cli, (const unsigned char *)"", 0), 0);
    CHECK_EQ_INT(l.c2s_total - n0, 5 + 8 + 16); /* an empty GCM record */
    CHECK_EQ_INT(mbedtls_ssl_write(&l.cli, (const unsigned char *)"", 0), 0);
    CHECK_EQ_INT(cli_write(&l, "b", 1), 0);
    CHECK_EQ_INT(mbedtls_ssl_write(&l.cli, (const unsigned char *)"", 0), 0);
    CHECK_EQ_INT(cli_write(&l, "c", 1), 0);
    pump(&l);
    CHECK_EQ_INT(l.feed_rc, 0);
    CHECK(bytes_eq(&l.srv_got, "abc", 3));
    link_close(&l);
}

TEST(io_failures)
{
    link_t l;

    printf("  io->send failing: feed returns its code\n");
    link_open(&l, ctx, &c_conf);
    l.send_fail = UV_EPIPE;
    pump(&l);
    CHECK_EQ_INT(l.feed_rc, UV_EPIPE);
    CHECK_EQ_INT(imgw_tls_write(l.srv, (const uint8_t *)"x", 1), UV_EPIPE);
    link_close(&l);

    printf("  io->recv calling feed is refused; close_notify inside it "
           "works\n");
    link_open(&l, ctx, &c_conf);
    l.reenter = 1;
    pump(&l);
    CHECK_EQ_INT(cli_write(&l, "hi", 2), 0);
    pump(&l);
    CHECK_EQ_INT(l.reenter_rc, IMGW_EINVAL);
    CHECK_EQ_INT(l.feed_rc, 0);
    CHECK(bytes_eq(&l.srv_got, "hi", 2));
    CHECK_EQ_INT(l.cli_closed, 1);
    link_close(&l);
}

TEST(policy)
{
    mbedtls_ssl_config conf;
    imgw_tls_ctx_t *rsa = NULL;
    link_t l;

    printf("  a TLS 1.1 client is refused\n");
    client_conf(&conf, CLI_TLS11);
    link_open(&l, ctx, &conf);
    pump(&l);
    CHECK_EQ_INT(l.feed_rc, IMGW_EPROTO);
    CHECK(l.cli_rc != 0);
    link_close(&l);
    mbedtls_ssl_config_free(&conf);

    printf("  a client offering only CBC or static-RSA suites is refused\n");
    client_conf(&conf, CLI_CBC);
    link_open(&l, ctx, &conf);
    pump(&l);
    CHECK_EQ_INT(l.feed_rc, IMGW_EPROTO);
    link_close(&l);
    mbedtls_ssl_config_free(&conf);

    printf("  ALPN: h2 only is refused, no ALPN is fine\n");
    client_conf(&conf, CLI_ALPN_H2);
    link_open(&l, ctx, &conf);
    pump(&l);
    CHECK_EQ_INT(l.feed_rc, IMGW_EPROTO);
    link_close(&l);
    mbedtls_ssl_config_free(&conf);
    client_conf(&conf, CLI_NO_ALPN);
    link_open(&l, ctx, &conf);
    pump(&l);
    CHECK_EQ_INT(l.feed_rc, 0);
    CHECK_EQ_INT(imgw_tls_established(l.srv), 1);
    CHECK(mbedtls_ssl_get_alpn_protocol(&l.cli) == NULL);
    link_close(&l);
    mbedtls_ssl_config_free(&conf);

    printf("  an RSA certificate works, with ECDHE-RSA\n");
    CHECK_EQ_INT(imgw_tls_ctx_new(&rsa, fixture("rsa_cert.pem"),
                                  fixture("rsa_key.pem"), NULL, 0),
                 0);
    link_open(&l, rsa, &c_conf);
    pump(&l);
    CHECK_EQ_INT(l.feed_rc, 0);
    CHECK_EQ_INT(l.cli_rc, 0);
    CHECK_EQ_INT(mbedtls_ssl_get_verify_result(&l.cli), 0);
    printf("  negotiated %s\n", mbedtls_ssl_get_ciphersuite(&l.cli));
    CHECK_EQ_STR(mbedtls_ssl_get_ciphersuite(&l.cli),
                 "TLS-ECDHE-RSA-WITH-AES-128-GCM-SHA256");
    link_close(&l);
    imgw_tls_ctx_free(rsa);
}

/* ctx_new must fail with IMGW_ECONFIG and an err naming want and path. */
static void
check_bad_ctx(const char *cert, const char *key, const char *want,
              const char *path)
{
    imgw_tls_ctx_t *c = (imgw_tls_ctx_t *)&c; /* must be reset to NULL */
    char err[512] = "";
    int rc;

    rc = imgw_tls_ctx_new(&c, cert, key, err, sizeof err);
    printf("  -> %s\n", err);
    CHECK_EQ_INT(rc, IMGW_ECONFIG);
    CHECK(c == NULL);
    CHECK(strstr(err, want) != NULL);
    CHECK(path == NULL || strstr(err, path) != NULL);
}

TEST(ctx_errors)
{
    char cert[768], key[768], other[768], garbage[768], rsa_key[768];
    char missing[768], encrypted[768];

    snprintf(cert, sizeof cert, "%s", fixture("cert.pem"));
    snprintf(key, sizeof key, "%s", fixture("key.pem"));
    snprintf(other, sizeof other, "%s", fixture("other_key.pem"));
    snprintf(garbage, sizeof garbage, "%s", fixture("garbage.pem"));
    snprintf(rsa_key, sizeof rsa_key, "%s", fixture("rsa_key.pem"));
    snprintf(missing, sizeof missing, "%s", fixture("missing.pem"));
    snprintf(encrypted, sizeof encrypted, "%s", fixture("encrypted_key.pem"));

    printf("  missing certificate file\n");
    check_bad_ctx(missing, key, "tls.cert: cannot read", missing);
    printf("  missing key file\n");
    check_bad_ctx(cert, missing, "tls.key: cannot read", missing);
    printf("  garbage PEM as certificate\n");
    check_bad_ctx(garbage, key, "tls.cert: cannot read", garbage);
    printf("  garbage PEM as key\n");
    check_bad_ctx(cert, garbage, "tls.key: cannot read", garbage);
    printf("  a certificate given as the key\n");
    check_bad_ctx(cert, cert, "tls.key: cannot read", cert);
    printf("  a key as the certificate\n");
    check_bad_ctx(key, key, "tls.cert: cannot read", key);
    printf("  a directory as the certificate\n");
    check_bad_ctx(data_dir, key, "tls.cert: cannot read", data_dir);
    printf("  an empty key path\n");
    check_bad_ctx(cert, "", "tls.key", NULL);
    printf("  an encrypted key\n");
    check_bad_ctx(cert, encrypted, "encrypted keys are not supported",
                  encrypted);
    printf("  another EC key: mismatch\n");
    check_bad_ctx(cert, other, "does not match", other);
    printf("  an RSA key for the EC certificate: mismatch\n");
    check_bad_ctx(cert, rsa_key, "does not match", rsa_key);
}

int
main(void)
{
    const char *dir = getenv("IMGW_TEST_DATA");

    snprintf(data_dir, sizeof data_dir, "%s/tls",
             dir != NULL && dir[0] != '\0' ? dir : "test/unit/data");
    mbedtls_entropy_init(&c_entropy);
    mbedtls_ctr_drbg_init(&c_drbg);
    mbedtls_x509_crt_init(&c_ca);
    if (mbedtls_ctr_drbg_seed(&c_drbg, mbedtls_entropy_func, &c_entropy,
                              (const unsigned char *)"client", 6) != 0 ||
        mbedtls_x509_crt_parse_file(&c_ca, fixture("cert.pem")) != 0 ||
        mbedtls_x509_crt_parse_file(&c_ca, fixture("rsa_cert.pem")) != 0) {
        printf("cannot load fixtures from %s\n", data_dir);
        return 1;
    }
    client_conf(&c_conf, CLI_DEFAULT);

    RUN(ctx_new_ok);
    if (ctx == NULL)
        TEST_DONE();
    RUN(handshake);
    RUN(hello_echo);
    RUN(large_transfer);
    RUN(write_before_handshake);
    RUN(session_resumption);
    RUN(close_notify);
    RUN(garbage);
    RUN(byte_by_byte);
    RUN(empty_records);
    RUN(io_failures);
    RUN(policy);
    RUN(ctx_errors);

    imgw_tls_ctx_free(ctx);
    mbedtls_ssl_config_free(&c_conf);
    mbedtls_x509_crt_free(&c_ca);
    mbedtls_ctr_drbg_free(&c_drbg);
    mbedtls_entropy_free(&c_entropy);
    TEST_DONE();
}
