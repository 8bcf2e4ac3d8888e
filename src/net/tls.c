/*
 * tls.c: server-side TLS for wss:// listeners, with mbedtls 2.28, as a byte
 * transformer (the contract is in tls.h; docs/tls.md has the policy).
 *
 * Threads: an imgw_tls_ctx_t and every imgw_tls_t made from it are used by
 * one loop thread only. Each loop builds its own ctx from the same files, so
 * the RNG, the ticket keys and mbedtls' config are never shared and need no
 * locks. Only this file sees mbedtls' SSL types.
 *
 * Data flow. There is no socket here: mbedtls talks to two BIO callbacks.
 * The receive BIO reads from a view of the ciphertext passed to
 * imgw_tls_feed() (tls_bio_recv copies into mbedtls' record buffer and
 * advances the view; it never allocates or moves anything of ours), and
 * the send BIO hands each record straight to io->send, which accepts
 * everything or fails for good, so mbedtls never sees WANT_WRITE. feed()
 * runs mbedtls until it asks the receive BIO for bytes the view no longer
 * has; mbedtls keeps a partial record in its own input buffer, so when
 * feed() returns the view has been consumed entirely and no ciphertext is
 * kept on our side. That is why there is no input
 * buffer of our own (and nothing to bound): mbedtls' record buffer is the
 * bound, and a peer cannot make us hold more than one record.
 *
 * Re-entrancy: io->recv may call imgw_tls_write() (a server answers inside
 * the callback) and imgw_tls_close_notify(). Both are safe because plaintext
 * is delivered from a stack copy after mbedtls_ssl_read() has returned, so
 * mbedtls is between calls and nothing points into its buffers. io->recv
 * must not call imgw_tls_feed() (refused with IMGW_EINVAL) nor
 * imgw_tls_free(): like every callback in imgw it marks and defers the
 * close. io->send must not call back into this file.
 *
 * Memory: mbedtls_ssl_setup() allocates a connection's record buffers,
 * MBEDTLS_SSL_IN_BUFFER_LEN + MBEDTLS_SSL_OUT_BUFFER_LEN, about 16.7 KiB
 * each with Debian's IN/OUT_CONTENT_LEN of 16384, plus the handshake state,
 * all in imgw_tls_new(), before the peer has sent a byte. Measured with
 * glibc on Debian 12: 37 KB after imgw_tls_new(), a peak of 42 KB (EC
 * P-256 certificate) or 46 KB (RSA 2048) during the handshake, 36 KB once
 * established. Debian's build has MBEDTLS_SSL_MAX_FRAGMENT_LENGTH (a client
 * may ask for smaller records, but the buffers keep their full size) and
 * not MBEDTLS_SSL_VARIABLE_BUFFER_LENGTH (which would shrink them after the
 * handshake); we do not rebuild mbedtls. TODO(memory): idle TLS
 * connections are the bulk of that cost; Debian's build has
 * MBEDTLS_SSL_CONTEXT_SERIALIZATION, so an idle connection could be saved
 * with mbedtls_ssl_context_save() (a few hundred bytes) and its context
 * freed, then restored on the next read. Not done yet: it costs a fresh
 * mbedtls_ssl_setup() (allocation) on every wake-up.
 */
#include "tls.h"

#include "alloc.h"
#include "err.h"
#include "log.h"

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/error.h>
#include <mbedtls/net_sockets.h>
#include <mbedtls/pk.h>
#include <mbedtls/platform_util.h>
#include <mbedtls/ssl.h>
#include <mbedtls/ssl_ticket.h>
#include <mbedtls/version.h>
#include <mbedtls/x509_crt.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* The calls below (keyfile parsing, check_pair, conf_min_version, the
   ticket setup) are the 2.x API; 3.x changed them. Fail here, not in a
   confusing error further down. */
#if MBEDTLS_VERSION_MAJOR != 2
#error "src/net/tls.c is written against the mbedtls 2.28 API"
#endif

/*
 * Plaintext written before the handshake completes is held until it does.
 * A server writes little then (a queued greeting at most); more is a bug
 * or a peer stalling its handshake, so it is refused with IMGW_EQUEUEFULL.
 */
#define TLS_MAX_EARLY (256 * 1024)
#define TLS_EARLY_MIN_CAP 1024

/* PEM files larger than this are refused before mbedtls reads them: a
   chain of a few certificates is a few KiB, and mbedtls sizes its read
   buffer with ftell(), which gives LONG_MAX on a directory. */
#define TLS_MAX_PEM_FILE (1024 * 1024)

/* Session tickets stay valid (and ticket keys rotate) every 24 hours. */
#define TLS_TICKET_LIFETIME (24 * 3600)

/* One record's plaintext at most: mbedtls_ssl_read() then drains a record
   per call. On the stack: loop threads have megabytes of it. */
#define TLS_READ_CHUNK MBEDTLS_SSL_IN_CONTENT_LEN

struct imgw_tls_ctx_s {
    mbedtls_ssl_config conf; /* points at all the members below */
    mbedtls_x509_crt crt;    /* our chain, leaf first */
    mbedtls_pk_context pk;   /* the leaf's private key */
    mbedtls_entropy_context entropy;
    mbedtls_ctr_drbg_context drbg; /* this loop's RNG: handshakes, tickets */
    mbedtls_ssl_ticket_context ticket; /* this loop's ticket keys */
};

struct imgw_tls_s {
    mbedtls_ssl_context ssl; /* points at ctx->conf: ctx outlives us */
    imgw_tls_io_t io;
    /* The ciphertext the receive BIO reads: the caller's buffer, valid
       only inside imgw_tls_feed(); in_len bytes remain at in. */
    const uint8_t *in;
    size_t in_len;
    /* Plaintext written before the handshake completed (owned). */
    uint8_t *early;
    size_t early_len;
    size_t early_cap;
    int err;                  /* sticky fatal code; 0 while usable */
    unsigned established : 1; /* handshake completed */
    unsigned starved : 1;     /* the receive BIO ran out of input */
    unsigned feeding : 1;     /* inside imgw_tls_feed() */
    unsigned closing : 1;     /* we sent (or meant to send) close_notify */
    unsigned send_failed : 1; /* io->send failed: send nothing more */
};

/*
 * What we offer. TLS 1.2 only: mbedtls 2.28 as Debian ships it has no
 * MBEDTLS_SSL_PROTO_TLS1_3 (its MBEDTLS_SSL_PROTO_TLS1_3_EXPERIMENTAL is an
 * unsupported prototype and off), so the maximum is pinned to 1.2 below
 * whatever the build. Cipher suites: ECDHE (forward secrecy) with AEAD only,
 * Mozilla's "intermediate" list minus DHE. PRESET_DEFAULT alone would also
 * accept static-RSA key exchange and CBC suites from old clients. mbedtls
 * only picks suites matching the certificate's key, so an RSA and an ECDSA
 * certificate both work with this one list. Server preference order.
 */
static const int tls_ciphersuites[] = {
    MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    MBEDTLS_TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    MBEDTLS_TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    MBEDTLS_TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    MBEDTLS_TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    0};

/* Key exchange groups, preferred first; the rest of the compiled-in list
   (brainpool, secp521r1, ...) only costs CPU. */
static const mbedtls_ecp_group_id tls_curves[] = {
    MBEDTLS_ECP_DP_CURVE25519, MBEDTLS_ECP_DP_SECP256R1,
    MBEDTLS_ECP_DP_SECP384R1, MBEDTLS_ECP_DP_NONE};

/*
 * Browsers offer "http/1.1" on WebSocket connections. A client that offers
 * ALPN without it (h2 only) is refused with no_application_protocol, as RFC
 * 7301 says: we could not speak h2 anyway. Clients that send no ALPN at all
 * are unaffected.
 */
static const char *tls_alpn[] = {"http/1.1", NULL};

/* ---- context ------------------------------------------------------------ */

/* Checks that path is a readable regular file of sane size before mbedtls
   opens it, so the message can say why (errno) rather than mbedtls'
   generic "file I/O error". what is "tls.cert" or "tls.key". */
static int
tls_check_file(const char *what, const char *path, char *err, size_t errlen)
{
    struct stat st;

    if (path == NULL || path[0] == '\0') {
        imgw_err_fmt(err, errlen, "%s: no file given", what);
        return IMGW_ECONFIG;
    }
    if (stat(path, &st) != 0) {
        imgw_err_fmt(err, errlen, "%s: cannot read '%s': %s", what, path,
                     strerror(errno));
        return IMGW_ECONFIG;
    }
    if (!S_ISREG(st.st_mode) || st.st_size > TLS_MAX_PEM_FILE) {
        imgw_err_fmt(err, errlen,
                     "%s: cannot read '%s': not a regular file of at most %d "
                     "bytes",
                     what, path, TLS_MAX_PEM_FILE);
        return IMGW_ECONFIG;
    }
    return 0;
}

static int
tls_load(imgw_tls_ctx_t *ctx, const char *cert_path, const char *key_path,
         char *err, size_t errlen)
{
    char msg[160];
    int rc;

    rc = tls_check_file("tls.cert", cert_path, err, errlen);
    if (rc != 0)
        return rc;
    rc = mbedtls_x509_crt_parse_file(&ctx->crt, cert_path);
    if (rc < 0) {
        mbedtls_strerror(rc, msg, sizeof msg);
        imgw_err_fmt(err, errlen, "tls.cert: cannot read '%s': %s", cert_path,
                     msg);
        return IMGW_ECONFIG;
    }
    /* A positive count means some certificates of the chain did not parse:
       serving a chain with holes fails at the client, so refuse it here. */
    if (rc > 0) {
        imgw_err_fmt(err, errlen,
                     "tls.cert: cannot read '%s': %d certificate(s) in it do "
                     "not parse",
                     cert_path, rc);
        return IMGW_ECONFIG;
    }

    rc = tls_check_file("tls.key", key_path, err, errlen);
    if (rc != 0)
        return rc;
    rc = mbedtls_pk_parse_keyfile(&ctx->pk, key_path, NULL);
    if (rc != 0) {
        mbedtls_strerror(rc, msg, sizeof msg);
        imgw_err_fmt(err, errlen, "tls.key: cannot read '%s': %s%s", key_path,
                     msg,
                     rc == MBEDTLS_ERR_PK_PASSWORD_REQUIRED
                         ? " (encrypted keys are not supported)"
                         : "");
        return IMGW_ECONFIG;
    }
    /* Without this a wrong key is only noticed at the first handshake, as a
       failure every client reports differently. */
    /* mbedtls' own text here ("ECP - Bad input parameters") would only
       mislead, so only the key type mismatch is spelt out. */
    rc = mbedtls_pk_check_pair(&ctx->crt.pk, &ctx->pk);
    if (rc != 0) {
        imgw_err_fmt(err, errlen,
                     "tls.key: '%s' does not match the certificate in '%s'%s",
                     key_path, cert_path,
                     rc == MBEDTLS_ERR_PK_TYPE_MISMATCH
                         ? " (a different key type)"
                         : "");
        return IMGW_ECONFIG;
    }
    return 0;
}

static int
tls_setup(imgw_tls_ctx_t *ctx, char *err, size_t errlen)
{
    static const char pers[] = "imgw-tls";
    mbedtls_ssl_config *conf = &ctx->conf;
    char msg[160];
    const char *step;
    int rc;

    step = "seeding the RNG";
    rc = mbedtls_ctr_drbg_seed(&ctx->drbg, mbedtls_entropy_func, &ctx->entropy,
                               (const unsigned char *)pers, sizeof pers - 1);
    if (rc != 0)
        goto fail;

    step = "setting up the configuration";
    rc = mbedtls_ssl_config_defaults(conf, MBEDTLS_SSL_IS_SERVER,
                                     MBEDTLS_SSL_TRANSPORT_STREAM,
                                     MBEDTLS_SSL_PRESET_DEFAULT);
    if (rc != 0)
        goto fail;
    mbedtls_ssl_conf_rng(conf, mbedtls_ctr_drbg_random, &ctx->drbg);
    mbedtls_ssl_conf_min_version(conf, MBEDTLS_SSL_MAJOR_VERSION_3,
                                 MBEDTLS_SSL_MINOR_VERSION_3);
    mbedtls_ssl_conf_max_version(conf, MBEDTLS_SSL_MAJOR_VERSION_3,
                                 MBEDTLS_SSL_MINOR_VERSION_3);
    mbedtls_ssl_conf_ciphersuites(conf, tls_ciphersuites);
    mbedtls_ssl_conf_curves(conf, tls_curves);

    step = "setting ALPN";
    rc = mbedtls_ssl_conf_alpn_protocols(conf, tls_alpn);
    if (rc != 0)
        goto fail;

    step = "using the certificate and key";
    rc = mbedtls_ssl_conf_own_cert(conf, &ctx->crt, &ctx->pk);
    if (rc != 0)
        goto fail;

    /* Resumption by ticket (RFC 5077) keeps no server state per session.
       The keys are this loop's: a client that reconnects to another loop
       (SO_REUSEPORT hashes the new source port) gets a full handshake. */
    step = "setting up session tickets";
    rc = mbedtls_ssl_ticket_setup(&ctx->ticket, mbedtls_ctr_drbg_random,
                                  &ctx->drbg, MBEDTLS_CIPHER_AES_256_GCM,
                                  TLS_TICKET_LIFETIME);
    if (rc != 0)
        goto fail;
    mbedtls_ssl_conf_session_tickets_cb(conf, mbedtls_ssl_ticket_write,
                                        mbedtls_ssl_ticket_parse, &ctx->ticket);
    return 0;

fail:
    mbedtls_strerror(rc, msg, sizeof msg);
    imgw_err_fmt(err, errlen, "tls: %s failed: %s", step, msg);
    return rc == MBEDTLS_ERR_SSL_ALLOC_FAILED ? IMGW_ENOMEM : IMGW_ECONFIG;
}

int
imgw_tls_ctx_new(imgw_tls_ctx_t **out, const char *cert_path,
                 const char *key_path, char *err, size_t errlen)
{
    imgw_tls_ctx_t *ctx;
    int rc;

    if (out == NULL) {
        imgw_err_fmt(err, errlen, "tls: no output pointer");
        return IMGW_EINVAL;
    }
    *out = NULL;
    if (err != NULL && errlen > 0)
        err[0] = '\0';
    ctx = imgw_try_calloc(1, sizeof *ctx);
    if (ctx == NULL) {
        imgw_err_fmt(err, errlen, "tls: out of memory");
        return IMGW_ENOMEM;
    }
    /* Initialise everything first so imgw_tls_ctx_free() is safe after a
       failure at any step. */
    mbedtls_ssl_config_init(&ctx->conf);
    mbedtls_x509_crt_init(&ctx->crt);
    mbedtls_pk_init(&ctx->pk);
    mbedtls_entropy_init(&ctx->entropy);
    mbedtls_ctr_drbg_init(&ctx->drbg);
    mbedtls_ssl_ticket_init(&ctx->ticket);

    rc = tls_load(ctx, cert_path, key_path, err, errlen);
    if (rc == 0)
        rc = tls_setup(ctx, err, errlen);
    if (rc != 0) {
        imgw_tls_ctx_free(ctx);
        return rc;
    }
    *out = ctx;
    return 0;
}

/* Call only after every imgw_tls_t made from ctx has been freed: their
   mbedtls contexts point into it. */
void
imgw_tls_ctx_free(imgw_tls_ctx_t *ctx)
{
    if (ctx == NULL)
        return;
    mbedtls_ssl_ticket_free(&ctx->ticket);
    mbedtls_ssl_config_free(&ctx->conf);
    mbedtls_pk_free(&ctx->pk); /* zeroizes the private key */
    mbedtls_x509_crt_free(&ctx->crt);
    mbedtls_ctr_drbg_free(&ctx->drbg);
    mbedtls_entropy_free(&ctx->entropy);
    imgw_free(ctx);
}

/* ---- BIO callbacks ------------------------------------------------------ */

/*
 * mbedtls' receive callback: hands out what is left of the fed view. Never
 * returns 0 (mbedtls would take it for EOF): an empty view is WANT_READ,
 * and t->starved records that mbedtls stopped for lack of input, which is
 * what tells feed() it is done.
 */
static int
tls_bio_recv(void *arg, unsigned char *buf, size_t len)
{
    imgw_tls_t *t = arg;
    size_t n;

    if (t->in_len == 0) {
        t->starved = 1;
        return MBEDTLS_ERR_SSL_WANT_READ;
    }
    n = len < t->in_len ? len : t->in_len;
    if (n > INT32_MAX)
        n = INT32_MAX;
    memcpy(buf, t->in, n);
    t->in += n;
    t->in_len -= n;
    return (int)n;
}

/*
 * mbedtls' send callback: every record goes straight to io->send, which
 * takes all of it or fails for good. After a failure nothing more is sent
 * (mbedtls would try to send an alert), and the io code becomes the sticky
 * error so the caller sees it rather than an mbedtls code.
 */
static int
tls_bio_send(void *arg, const unsigned char *buf, size_t len)
{
    imgw_tls_t *t = arg;
    int rc;

    if (t->send_failed)
        return MBEDTLS_ERR_NET_SEND_FAILED;
    if (len > INT32_MAX)
        len = INT32_MAX;
    rc = t->io.send(t->io.arg, buf, len);
    if (rc < 0) {
        t->send_failed = 1;
        if (t->err == 0)
            t->err = rc;
        return MBEDTLS_ERR_NET_SEND_FAILED;
    }
    return (int)len;
}

/* ---- connections -------------------------------------------------------- */

int
imgw_tls_new(imgw_tls_t **out, imgw_tls_ctx_t *ctx, const imgw_tls_io_t *io)
{
    imgw_tls_t *t;

    /* Bad arguments are a caller's bug: IMGW_EINVAL, beyond tls.h's list. */
    if (out == NULL)
        return IMGW_EINVAL;
    *out = NULL;
    if (ctx == NULL || io == NULL || io->send == NULL || io->recv == NULL)
        return IMGW_EINVAL;
    t = imgw_try_calloc(1, sizeof *t);
    if (t == NULL)
        return IMGW_ENOMEM;
    t->io = *io;
    mbedtls_ssl_init(&t->ssl);
    /* This is where mbedtls allocates the two record buffers (~33 KiB). */
    if (mbedtls_ssl_setup(&t->ssl, &ctx->conf) != 0) {
        mbedtls_ssl_free(&t->ssl);
        imgw_free(t);
        /* Only allocations can fail in setup once the config is valid. */
        return IMGW_ENOMEM;
    }
    mbedtls_ssl_set_bio(&t->ssl, t, tls_bio_send, tls_bio_recv, NULL);
    *out = t;
    return 0;
}

void
imgw_tls_free(imgw_tls_t *t)
{
    if (t == NULL)
        return;
    mbedtls_ssl_free(&t->ssl);
    if (t->early != NULL) {
        /* Application plaintext: do not leave it in freed memory. */
        mbedtls_platform_zeroize(t->early, t->early_cap);
        imgw_free(t->early);
    }
    imgw_free(t);
}

/* Makes err the connection's sticky error (the first one wins) and
   returns the sticky one. */
static int
tls_fail(imgw_tls_t *t, int err)
{
    if (t->err == 0)
        t->err = err;
    return t->err;
}

/* Maps an mbedtls failure of handshake/read/write to our code. A failed
   io->send has already put its own code in t->err. */
static int
tls_fail_mbedtls(imgw_tls_t *t, int mret, const char *what)
{
    if (t->err != 0)
        return t->err;
    if (mret != MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY &&
        imgw_log_enabled(IMGW_LOG_DEBUG_L)) {
        char msg[160];

        mbedtls_strerror(mret, msg, sizeof msg);
        IMGW_LOG_DEBUG("tls: %s failed: %s (-0x%04x)", what, msg,
                       (unsigned)-mret);
    }
    return tls_fail(t, mret == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY ? IMGW_ECLOSED
                                                                 : IMGW_EPROTO);
}

/* Encrypts all of p: mbedtls_ssl_write() takes at most one record's worth
   per call, and never returns WANT_WRITE because io->send takes it all. */
static int
tls_write_all(imgw_tls_t *t, const uint8_t *p, size_t n)
{
    while (n > 0) {
        int ret = mbedtls_ssl_write(&t->ssl, p, n);

        if (ret <= 0)
            return tls_fail_mbedtls(
                t, ret == 0 ? MBEDTLS_ERR_SSL_INTERNAL_ERROR : ret, "write");
        p += ret;
        n -= (size_t)ret;
    }
    return t->err;
}

/* The handshake just completed: send what was written before it. */
static int
tls_flush_early(imgw_tls_t *t)
{
    int rc = 0;

    if (t->early_len > 0)
        rc = tls_write_all(t, t->early, t->early_len);
    if (t->early != NULL) {
        mbedtls_platform_zeroize(t->early, t->early_cap);
        imgw_free(t->early);
    }
    t->early = NULL;
    t->early_len = t->early_cap = 0;
    return rc;
}

/*
 * Runs the handshake, then reads, until mbedtls has used all of p.
 *
 * Why "starved" and not just WANT_READ: mbedtls_ssl_read() also returns
 * WANT_READ after a record that carried no application data (a refused
 * renegotiation ClientHello, say) while more input is waiting, and 0 after
 * empty application data records (mbedtls allows three in a row). Only a
 * WANT_READ raised by our receive BIO on an empty view means "done";
 * otherwise we go on while mbedtls makes progress, on our input or on
 * bytes it already holds (mbedtls_ssl_check_pending()).
 */
int
imgw_tls_feed(imgw_tls_t *t, const uint8_t *p, size_t n)
{
    uint8_t buf[TLS_READ_CHUNK];
    int rc = 0;

    if (t->err != 0)
        return t->err;
    if (t->feeding)
        return IMGW_EINVAL; /* from io->recv: see the top of the file */
    t->feeding = 1;
    t->in = p;
    t->in_len = n;

    for (;;) {
        size_t before = t->in_len;
        int ret;

        t->starved = 0;
        if (!t->established) {
            ret = mbedtls_ssl_handshake(&t->ssl);
            if (ret == 0) {
                t->established = 1;
                IMGW_LOG_DEBUG("tls: handshake done: %s %s",
                               mbedtls_ssl_get_version(&t->ssl),
                               mbedtls_ssl_get_ciphersuite(&t->ssl));
                rc = tls_flush_early(t);
                if (rc != 0)
                    break;
                continue;
            }
        } else {
            ret = mbedtls_ssl_read(&t->ssl, buf, sizeof buf);
            if (ret > 0) {
                t->io.recv(t->io.arg, buf, (size_t)ret);
                /* io->recv may have written, and that may have failed. */
                if (t->err != 0) {
                    rc = t->err;
                    break;
                }
                continue;
            }
            /* 0 would be EOF if our receive BIO ever returned 0; it never
               does, so 0 is an empty record (see above). */
            if (ret == 0)
                ret = MBEDTLS_ERR_SSL_WANT_READ;
        }
        if (ret != MBEDTLS_ERR_SSL_WANT_READ) {
            rc =
                tls_fail_mbedtls(t, ret, t->established ? "read" : "handshake");
            break;
        }
        if (t->starved)
            break;
        if (t->in_len < before || mbedtls_ssl_check_pending(&t->ssl))
            continue;
        if (t->in_len == 0)
            break;
        /* mbedtls neither used input nor holds any, yet did not ask for
           more: never seen, but dropping the rest would corrupt the
           stream silently, and looping would spin. */
        IMGW_LOG_DEBUG("tls: mbedtls stalled with %zu bytes unread", t->in_len);
        rc = tls_fail(t, IMGW_EPROTO);
        break;
    }

    /* The view dies with the caller's buffer. */
    t->in = NULL;
    t->in_len = 0;
    t->feeding = 0;
    return rc;
}

/* Appends plaintext written before the handshake completed. */
static int
tls_buffer_early(imgw_tls_t *t, const uint8_t *p, size_t n)
{
    if (n > TLS_MAX_EARLY - t->early_len)
        return IMGW_EQUEUEFULL;
    if (t->early_len + n > t->early_cap) {
        size_t cap = t->early_cap ? t->early_cap : TLS_EARLY_MIN_CAP;
        uint8_t *q;

        while (cap < t->early_len + n)
            cap *= 2;
        if (cap > TLS_MAX_EARLY)
            cap = TLS_MAX_EARLY;
        q = imgw_try_malloc(cap);
        if (q == NULL)
            return IMGW_ENOMEM;
        /* Copy rather than realloc so the old plaintext can be wiped. */
        if (t->early_len > 0)
            memcpy(q, t->early, t->early_len);
        if (t->early != NULL) {
            mbedtls_platform_zeroize(t->early, t->early_cap);
            imgw_free(t->early);
        }
        t->early = q;
        t->early_cap = cap;
    }
    memcpy(t->early + t->early_len, p, n);
    t->early_len += n;
    return 0;
}

int
imgw_tls_write(imgw_tls_t *t, const uint8_t *p, size_t n)
{
    if (t->err != 0)
        return t->err;
    if (t->closing)
        return IMGW_ECLOSED;
    if (n == 0)
        return 0;
    if (!t->established)
        return tls_buffer_early(t, p, n);
    return tls_write_all(t, p, n);
}

/*
 * Before the handshake completes there are no keys to protect an alert
 * with, so nothing is sent; either way later writes fail with
 * IMGW_ECLOSED. feed() keeps working, so the peer's own close_notify
 * (or its last data) can still be read. After the peer's close_notify
 * (feed returned IMGW_ECLOSED) this still answers with ours, as TLS 1.2
 * asks; after any other failure it does nothing.
 */
void
imgw_tls_close_notify(imgw_tls_t *t)
{
    if (t->closing || (t->err != 0 && t->err != IMGW_ECLOSED))
        return;
    t->closing = 1;
    if (t->established) {
        int ret = mbedtls_ssl_close_notify(&t->ssl);

        if (ret != 0)
            (void)tls_fail_mbedtls(t, ret, "close_notify");
    }
}

int
imgw_tls_established(const imgw_tls_t *t)
{
    return t->established;
}
