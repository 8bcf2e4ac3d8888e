/*
 * test_jwt.c: unit tests for core/jwt.c (token verification, HS256 minting).
 *
 * Single-threaded. The tests mint their own tokens with chosen headers and
 * claims: HS256 with mbedtls_md_hmac, RS256 and ES256 with the private keys
 * in $IMGW_TEST_DATA/jwt (default test/unit/data/jwt, relative to the repo
 * root where meson runs us). Those keys are test-only, generated with
 *   openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048
 *   openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256
 * and "openssl pkey -pubout" for the public halves. A few tokens minted by
 * PyJWT 2.6 with the same keys pin interoperability; regenerating the keys
 * means regenerating those too (see test_interop).
 */
#include "jwt.h"

#include "err.h"
#include "test.h"

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/ecdsa.h>
#include <mbedtls/entropy.h>
#include <mbedtls/md.h>
#include <mbedtls/pk.h>
#include <stdarg.h>
#include <stdint.h>

#define NOW ((int64_t)1700000000)
#define LEEWAY 30
#define SECRET "s3cret-for-tests"
#define TOK_MAX 16384

enum { HS, RS, ES };

typedef struct signer_s {
    int kind;                /* HS, RS or ES: how the signature is made */
    const unsigned char *secret; /* HS: key bytes (may be a PEM file) */
    size_t secret_len;
    mbedtls_pk_context *pk;  /* RS/ES: private key */
} signer_t;

enum { FLIP_SIG = 1, NO_SIG = 2 };

static mbedtls_entropy_context entropy;
static mbedtls_ctr_drbg_context drbg;
static mbedtls_pk_context rsa_key, rsa_other, ec_key, ec_other;

/* ---- helpers ------------------------------------------------------------ */

static const char *
data_path(const char *name)
{
    static char path[4][512];
    static int next;
    const char *dir = getenv("IMGW_TEST_DATA");
    char *p = path[next++ % 4];

    snprintf(p, sizeof path[0], "%s/jwt/%s",
             dir != NULL && dir[0] != '\0' ? dir : "test/unit/data", name);
    return p;
}

/* The test's own encoder, independent of the one in jwt.c. */
static size_t
b64url(const unsigned char *src, size_t n, char *dst)
{
    static const char a[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t o = 0, i = 0;

    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)src[i] << 16 | (uint32_t)src[i + 1] << 8 |
                     src[i + 2];
        dst[o++] = a[v >> 18];
        dst[o++] = a[(v >> 12) & 63];
        dst[o++] = a[(v >> 6) & 63];
        dst[o++] = a[v & 63];
    }
    if (n - i == 1) {
        dst[o++] = a[src[i] >> 2];
        dst[o++] = a[(src[i] & 3) << 4];
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)src[i] << 8 | src[i + 1];
        dst[o++] = a[v >> 10];
        dst[o++] = a[(v >> 4) & 63];
        dst[o++] = a[(v << 2) & 63];
    }
    dst[o] = '\0';
    return o;
}

static const char *
alg_name(int kind)
{
    return kind == HS ? "HS256" : kind == RS ? "RS256" : "ES256";
}

/*
 * Mints header.payload.signature into out (TOK_MAX). header NULL means
 * {"alg":<signer's alg>,"typ":"JWT"}. Returns the token.
 */
static char *
mint(const signer_t *s, const char *header, const char *payload, int flags,
     char *out)
{
    const mbedtls_md_info_t *sha = mbedtls_md_info_from_type(MBEDTLS_MD_SHA256);
    unsigned char sig[MBEDTLS_PK_SIGNATURE_MAX_SIZE], hash[32];
    char defhdr[64];
    size_t n, siglen = 0;
    int rc = 0;

    if (header == NULL) {
        snprintf(defhdr, sizeof defhdr, "{\"alg\":\"%s\",\"typ\":\"JWT\"}",
                 alg_name(s->kind));
        header = defhdr;
    }
    if (4 * (strlen(header) + strlen(payload)) / 3 + 1000 > TOK_MAX)
        abort();
    n = b64url((const unsigned char *)header, strlen(header), out);
    out[n++] = '.';
    n += b64url((const unsigned char *)payload, strlen(payload), out + n);
    mbedtls_md(sha, (const unsigned char *)out, n, hash);

    if (s->kind == HS) {
        rc = mbedtls_md_hmac(sha, s->secret, s->secret_len,
                             (const unsigned char *)out, n, sig);
        siglen = 32;
    } else if (s->kind == RS) {
        rc = mbedtls_pk_sign(s->pk, MBEDTLS_MD_SHA256, hash, 32, sig, &siglen,
                             mbedtls_ctr_drbg_random, &drbg);
    } else {
        /* JWS wants raw r || s, not the DER of mbedtls_pk_sign(). */
        mbedtls_ecp_keypair *ec = mbedtls_pk_ec(*s->pk);
        mbedtls_mpi r, ss;
        mbedtls_mpi_init(&r);
        mbedtls_mpi_init(&ss);
        rc = mbedtls_ecdsa_sign(&ec->grp, &r, &ss, &ec->d, hash, 32,
                                mbedtls_ctr_drbg_random, &drbg);
        if (rc == 0)
            rc = mbedtls_mpi_write_binary(&r, sig, 32);
        if (rc == 0)
            rc = mbedtls_mpi_write_binary(&ss, sig + 32, 32);
        mbedtls_mpi_free(&r);
        mbedtls_mpi_free(&ss);
        siglen = 64;
    }
    if (rc != 0) {
        printf("  FAIL  signing failed: -0x%04x\n", (unsigned)-rc);
        abort();
    }
    if (flags & FLIP_SIG)
        sig[siglen / 2] ^= 0x01;
    if (flags & NO_SIG)
        siglen = 0;
    out[n++] = '.';
    b64url(sig, siglen, out + n);
    return out;
}

/*
 * Most tests check one rule on a minimal payload, so these verifiers accept
 * a token without exp; the default (exp required) has its own test,
 * require_exp, with zeroed options as a caller would write them.
 */
static imgw_jwt_t *
mkv(const char *secret, const char *keyfile, const char *iss,
    const char *aud, const char *apps)
{
    imgw_jwt_opts_t o = {0};
    imgw_jwt_t *j = NULL;
    char err[256] = "";
    int rc;

    o.hs256_secret = secret;
    o.public_key_pem = keyfile != NULL ? data_path(keyfile) : NULL;
    o.leeway = LEEWAY;
    o.issuer = iss;
    o.audience = aud;
    o.app_ids = apps;
    o.exp_optional = 1;
    rc = imgw_jwt_new(&j, &o, err, sizeof err);
    if (rc != 0) {
        printf("  FAIL  imgw_jwt_new: %d %s\n", rc, err);
        test_failed_++;
        abort();
    }
    return j;
}

static imgw_jwt_result_t
vfy(imgw_jwt_t *j, const char *tok, int64_t now, imgw_jwt_claims_t *c)
{
    return imgw_jwt_verify(j, tok, strlen(tok), now, c);
}

/* Verifier accepting only the given algorithm with the right key. */
static imgw_jwt_t *
verifier_for(int kind)
{
    if (kind == HS)
        return mkv(SECRET, NULL, NULL, NULL, NULL);
    return mkv(NULL, kind == RS ? "rsa_public.pem" : "ec_public.pem", NULL,
               NULL, NULL);
}

static signer_t
signer_for(int kind, int other)
{
    signer_t s = {kind, NULL, 0, NULL};

    if (kind == HS) {
        s.secret = (const unsigned char *)(other ? "another-secret" : SECRET);
        s.secret_len = strlen((const char *)s.secret);
    } else if (kind == RS) {
        s.pk = other ? &rsa_other : &rsa_key;
    } else {
        s.pk = other ? &ec_other : &ec_key;
    }
    return s;
}

static const char *
fmt(const char *f, ...)
{
    static char buf[4][8192];
    static int next;
    char *b = buf[next++ % 4];
    va_list ap;

    va_start(ap, f);
    vsnprintf(b, sizeof buf[0], f, ap);
    va_end(ap);
    return b;
}

/* Every cut of a valid token is refused without a crash (ASan watches). */
static void
check_truncations(imgw_jwt_t *j, const char *tok)
{
    size_t len = strlen(tok), bad = 0;
    imgw_jwt_claims_t c;

    for (size_t n = 0; n < len; n++) {
        /* A heap copy of exactly n bytes so ASan sees any overread. */
        char *t = malloc(n ? n : 1);
        memcpy(t, tok, n);
        if (imgw_jwt_verify(j, t, n, NOW, &c) == IMGW_JWT_OK)
            bad++;
        free(t);
    }
    CHECK_EQ_INT(bad, 0);
    CHECK_EQ_INT(imgw_jwt_verify(j, tok, len, NOW, &c), IMGW_JWT_OK);
}

/*
 * Any one changed character must be refused: the base64url encoding is
 * canonical, so a different text is different bytes under the signature.
 */
static void
check_mutations(imgw_jwt_t *j, const char *tok)
{
    static const char repl[] = {'A', '_', '.', '='};
    size_t len = strlen(tok), bad = 0, tried = 0;
    char t[TOK_MAX];

    for (size_t i = 0; i < len; i++) {
        for (size_t k = 0; k < sizeof repl; k++) {
            if (tok[i] == repl[k])
                continue;
            memcpy(t, tok, len + 1);
            t[i] = repl[k];
            tried++;
            if (imgw_jwt_verify(j, t, len, NOW, NULL) == IMGW_JWT_OK)
                bad++;
        }
    }
    CHECK(tried > 3 * len);
    CHECK_EQ_INT(bad, 0);
}

/* ---- per-algorithm suite -------------------------------------------------- */

static void
alg_suite(int kind)
{
    signer_t s = signer_for(kind, 0), other = signer_for(kind, 1);
    imgw_jwt_t *j = verifier_for(kind);
    imgw_jwt_t *without;
    imgw_jwt_claims_t c;
    char tok[TOK_MAX], tok2[TOK_MAX], spliced[TOK_MAX];
    const char *p1, *p2, *d1, *d2, *e1;

    /* Valid. */
    mint(&s, NULL, fmt("{\"sub\":\"alice\",\"iat\":%lld,\"exp\":%lld}",
                       (long long)NOW, (long long)NOW + 600), 0, tok);
    memset(&c, 0x55, sizeof c);
    CHECK_EQ_INT(vfy(j, tok, NOW, &c), IMGW_JWT_OK);
    CHECK_EQ_STR(c.user_id, "alice");
    CHECK_EQ_STR(c.app_id, "");
    CHECK_EQ_INT(c.exp, NOW + 600);
    CHECK_EQ_INT(vfy(j, tok, NOW, NULL), IMGW_JWT_OK);

    /* Tampered payload: alice's header and signature around mallory's
       claims. */
    mint(&s, NULL, fmt("{\"sub\":\"mallory\",\"exp\":%lld}",
                       (long long)NOW + 600), 0, tok2);
    d1 = strchr(tok, '.');
    e1 = strchr(d1 + 1, '.');
    p1 = strchr(tok2, '.');
    p2 = strchr(p1 + 1, '.');
    d2 = e1;
    snprintf(spliced, sizeof spliced, "%.*s%.*s%s", (int)(d1 - tok), tok,
             (int)(p2 - p1), p1, d2);
    CHECK_EQ_INT(vfy(j, spliced, NOW, &c), IMGW_JWT_BAD_SIG);

    /* Tampered signature. */
    mint(&s, NULL, "{\"sub\":\"alice\"}", FLIP_SIG, tok2);
    CHECK_EQ_INT(vfy(j, tok2, NOW, &c), IMGW_JWT_BAD_SIG);
    mint(&s, NULL, "{\"sub\":\"alice\"}", NO_SIG, tok2);
    CHECK_EQ_INT(vfy(j, tok2, NOW, &c), IMGW_JWT_BAD_SIG);

    /* exp: refused once now > exp + leeway. */
    mint(&s, NULL, fmt("{\"sub\":\"alice\",\"exp\":%lld}",
                       (long long)(NOW - LEEWAY - 1)), 0, tok2);
    CHECK_EQ_INT(vfy(j, tok2, NOW, &c), IMGW_JWT_EXPIRED);
    mint(&s, NULL, fmt("{\"sub\":\"alice\",\"exp\":%lld}",
                       (long long)(NOW - LEEWAY)), 0, tok2);
    CHECK_EQ_INT(vfy(j, tok2, NOW, &c), IMGW_JWT_OK);
    CHECK_EQ_INT(c.exp, NOW - LEEWAY);

    /* nbf: refused while now + leeway < nbf. */
    mint(&s, NULL, fmt("{\"sub\":\"alice\",\"nbf\":%lld}",
                       (long long)(NOW + LEEWAY + 1)), 0, tok2);
    CHECK_EQ_INT(vfy(j, tok2, NOW, &c), IMGW_JWT_NOT_YET);
    mint(&s, NULL, fmt("{\"sub\":\"alice\",\"nbf\":%lld}",
                       (long long)(NOW + LEEWAY)), 0, tok2);
    CHECK_EQ_INT(vfy(j, tok2, NOW, &c), IMGW_JWT_OK);

    /* Wrong key. */
    mint(&other, NULL, "{\"sub\":\"alice\"}", 0, tok2);
    CHECK_EQ_INT(vfy(j, tok2, NOW, &c), IMGW_JWT_BAD_SIG);

    /* alg none, in any case, signed or not. */
    mint(&s, "{\"alg\":\"none\",\"typ\":\"JWT\"}", "{\"sub\":\"alice\"}",
         NO_SIG, tok2);
    CHECK_EQ_INT(vfy(j, tok2, NOW, &c), IMGW_JWT_BAD_ALG);
    mint(&s, "{\"alg\":\"None\"}", "{\"sub\":\"alice\"}", NO_SIG, tok2);
    CHECK_EQ_INT(vfy(j, tok2, NOW, &c), IMGW_JWT_BAD_ALG);
    mint(&s, "{\"alg\":\"NONE\"}", "{\"sub\":\"alice\"}", 0, tok2);
    CHECK_EQ_INT(vfy(j, tok2, NOW, &c), IMGW_JWT_BAD_ALG);

    /* Same alg, verifier configured with everything but it. */
    if (kind == HS)
        without = mkv(NULL, "rsa_public.pem", NULL, NULL, NULL);
    else if (kind == RS)
        without = mkv(SECRET, "ec_public.pem", NULL, NULL, NULL);
    else
        without = mkv(SECRET, "rsa_public.pem", NULL, NULL, NULL);
    CHECK_EQ_INT(vfy(without, tok, NOW, &c), IMGW_JWT_BAD_ALG);
    imgw_jwt_free(without);

    check_truncations(j, tok);
    check_mutations(j, tok);
    imgw_jwt_free(j);
}

TEST(hs256)
{
    alg_suite(HS);
}

TEST(rs256)
{
    alg_suite(RS);
}

TEST(es256)
{
    alg_suite(ES);
}

/* ---- claims --------------------------------------------------------------- */

/* Mints an HS256 token with the given payload and verifies it. */
static imgw_jwt_result_t
hs_claims(imgw_jwt_t *j, const char *payload, imgw_jwt_claims_t *c)
{
    signer_t s = signer_for(HS, 0);
    char tok[TOK_MAX];

    memset(c, 0, sizeof *c);
    return vfy(j, mint(&s, NULL, payload, 0, tok), NOW, c);
}

TEST(user_id)
{
    imgw_jwt_t *j = verifier_for(HS);
    imgw_jwt_claims_t c;
    char big[200];

    CHECK_EQ_INT(hs_claims(j, "{\"sub\":\"alice\"}", &c), IMGW_JWT_OK);
    CHECK_EQ_STR(c.user_id, "alice");
    CHECK_EQ_INT(c.exp, 0);
    CHECK_EQ_INT(hs_claims(j, "{\"user_id\":\"bob\"}", &c), IMGW_JWT_OK);
    CHECK_EQ_STR(c.user_id, "bob");
    CHECK_EQ_INT(hs_claims(j, "{\"uid\":12345}", &c), IMGW_JWT_OK);
    CHECK_EQ_STR(c.user_id, "12345");
    CHECK_EQ_INT(hs_claims(j, "{\"uid\":\"u-7\"}", &c), IMGW_JWT_OK);
    CHECK_EQ_STR(c.user_id, "u-7");
    CHECK_EQ_INT(hs_claims(j, "{\"sub\":9007199254740992}", &c),
                 IMGW_JWT_OK);
    CHECK_EQ_STR(c.user_id, "9007199254740992");
    CHECK_EQ_INT(hs_claims(j, "{\"sub\":-9007199254740992}", &c),
                 IMGW_JWT_OK);
    CHECK_EQ_STR(c.user_id, "-9007199254740992");
    CHECK_EQ_INT(hs_claims(j, "{\"sub\" : 0 }", &c), IMGW_JWT_OK);
    CHECK_EQ_STR(c.user_id, "0");
    CHECK_EQ_INT(hs_claims(j, "{\"iat\":1, \"sub\" :\t42\n}", &c),
                 IMGW_JWT_OK);
    CHECK_EQ_STR(c.user_id, "42");
    /* The id is read from the token text, after whatever precedes it. */
    CHECK_EQ_INT(hs_claims(j, "{\"x\":{\"sub\":1,\"a\":[\",}\\\"\",{}]},"
                              "\"sub\":7}", &c), IMGW_JWT_OK);
    CHECK_EQ_STR(c.user_id, "7");
    /* Beyond 2^53 a double rounds: 2^53 + 1 parses to 2^53 and would be
       that user (audit item 4). The text decides, not the double. */
    CHECK_EQ_INT(hs_claims(j, "{\"sub\":9007199254740993}", &c),
                 IMGW_JWT_BAD_CLAIM);
    CHECK_EQ_INT(hs_claims(j, "{\"user_id\":9007199254740993}", &c),
                 IMGW_JWT_BAD_CLAIM);
    CHECK_EQ_INT(hs_claims(j, "{\"uid\":9007199254740993}", &c),
                 IMGW_JWT_BAD_CLAIM);
    CHECK_EQ_INT(hs_claims(j, "{\"uid\":-9007199254740993}", &c),
                 IMGW_JWT_BAD_CLAIM);
    CHECK_EQ_INT(hs_claims(j, "{\"sub\":90071992547409921}", &c),
                 IMGW_JWT_BAD_CLAIM);
    CHECK_EQ_INT(hs_claims(j, "{\"sub\":18446744073709551617}", &c),
                 IMGW_JWT_BAD_CLAIM);
    CHECK_EQ_INT(hs_claims(j, "{\"app_id\":9007199254740993,\"sub\":\"a\"}",
                           &c), IMGW_JWT_BAD_CLAIM);
    /* Integers in other spellings: readers disagree on what they are
       (Python's json makes 1e3 and 42.0 floats), so they are refused. */
    CHECK_EQ_INT(hs_claims(j, "{\"sub\":1e3}", &c), IMGW_JWT_BAD_CLAIM);
    CHECK_EQ_INT(hs_claims(j, "{\"sub\":42.0}", &c), IMGW_JWT_BAD_CLAIM);
    CHECK_EQ_INT(hs_claims(j, "{\"sub\":4.2E1}", &c), IMGW_JWT_BAD_CLAIM);
    CHECK_EQ_INT(hs_claims(j, "{\"sub\":-0}", &c), IMGW_JWT_BAD_CLAIM);
    CHECK_EQ_INT(hs_claims(j, "{\"sub\":\"Jos\\u00e9\"}", &c), IMGW_JWT_OK);
    CHECK_EQ_STR(c.user_id, "Jos\xc3\xa9");

    /* Precedence: sub, then user_id, then uid. */
    CHECK_EQ_INT(hs_claims(j, "{\"uid\":1,\"user_id\":\"u\",\"sub\":\"s\"}",
                           &c), IMGW_JWT_OK);
    CHECK_EQ_STR(c.user_id, "s");
    CHECK_EQ_INT(hs_claims(j, "{\"uid\":1,\"user_id\":\"u\"}", &c),
                 IMGW_JWT_OK);
    CHECK_EQ_STR(c.user_id, "u");
    /* An invalid sub does not fall back to the next claim. */
    CHECK_EQ_INT(hs_claims(j, "{\"sub\":\"\",\"user_id\":\"bob\"}", &c),
                 IMGW_JWT_BAD_CLAIM);

    CHECK_EQ_INT(hs_claims(j, "{}", &c), IMGW_JWT_BAD_CLAIM);
    CHECK_EQ_INT(hs_claims(j, "{\"SUB\":\"alice\"}", &c), IMGW_JWT_BAD_CLAIM);
    CHECK_EQ_INT(hs_claims(j, "{\"sub\":\"\"}", &c), IMGW_JWT_BAD_CLAIM);
    CHECK_EQ_INT(hs_claims(j, "{\"sub\":null}", &c), IMGW_JWT_BAD_CLAIM);
    CHECK_EQ_INT(hs_claims(j, "{\"sub\":true}", &c), IMGW_JWT_BAD_CLAIM);
    CHECK_EQ_INT(hs_claims(j, "{\"sub\":{\"a\":1}}", &c), IMGW_JWT_BAD_CLAIM);
    CHECK_EQ_INT(hs_claims(j, "{\"sub\":[\"a\"]}", &c), IMGW_JWT_BAD_CLAIM);
    CHECK_EQ_INT(hs_claims(j, "{\"uid\":1.5}", &c), IMGW_JWT_BAD_CLAIM);
    CHECK_EQ_INT(hs_claims(j, "{\"uid\":9007199254740994}", &c),
                 IMGW_JWT_BAD_CLAIM);
    CHECK_EQ_INT(hs_claims(j, "{\"uid\":1e300}", &c), IMGW_JWT_BAD_CLAIM);
    CHECK_EQ_INT(hs_claims(j, "{\"sub\":\"a\\nb\"}", &c), IMGW_JWT_BAD_CLAIM);
    /* cJSON would cut "alice\u0000x" to "alice": refused before that. */
    CHECK_EQ_INT(hs_claims(j, "{\"sub\":\"alice\\u0000x\"}", &c),
                 IMGW_JWT_MALFORMED);

    memset(big, 'x', 127);
    big[127] = '\0';
    CHECK_EQ_INT(hs_claims(j, fmt("{\"sub\":\"%s\"}", big), &c), IMGW_JWT_OK);
    CHECK_EQ_INT(strlen(c.user_id), 127);
    big[127] = 'x';
    big[128] = '\0';
    CHECK_EQ_INT(hs_claims(j, fmt("{\"sub\":\"%s\"}", big), &c),
                 IMGW_JWT_BAD_CLAIM);
    imgw_jwt_free(j);
}

TEST(time_claims)
{
    imgw_jwt_t *j = verifier_for(HS);
    imgw_jwt_claims_t c;

    CHECK_EQ_INT(hs_claims(j, "{\"sub\":\"a\",\"exp\":\"2099\"}", &c),
                 IMGW_JWT_MALFORMED);
    CHECK_EQ_INT(hs_claims(j, "{\"sub\":\"a\",\"nbf\":null}", &c),
                 IMGW_JWT_MALFORMED);
    CHECK_EQ_INT(hs_claims(j, "{\"sub\":\"a\",\"iat\":true}", &c),
                 IMGW_JWT_MALFORMED);
    /* iat in the future is not our business; only its type is. */
    CHECK_EQ_INT(hs_claims(j, fmt("{\"sub\":\"a\",\"iat\":%lld}",
                                  (long long)NOW + 99999), &c), IMGW_JWT_OK);
    /* Fractional NumericDate (RFC 7519 section 2). */
    CHECK_EQ_INT(hs_claims(j, fmt("{\"sub\":\"a\",\"exp\":%lld.5}",
                                  (long long)(NOW - LEEWAY - 1)), &c),
                 IMGW_JWT_EXPIRED);
    CHECK_EQ_INT(hs_claims(j, fmt("{\"sub\":\"a\",\"exp\":%lld.5}",
                                  (long long)(NOW - LEEWAY)), &c),
                 IMGW_JWT_OK);
    /* NumericDates must be finite and in [0, 2^53] (audit item 4):
       1e999 is infinity to cJSON, a token that would never expire. */
    CHECK_EQ_INT(hs_claims(j, "{\"sub\":\"a\",\"exp\":1e999}", &c),
                 IMGW_JWT_MALFORMED);
    CHECK_EQ_INT(hs_claims(j, "{\"sub\":\"a\",\"exp\":1e300}", &c),
                 IMGW_JWT_MALFORMED);
    CHECK_EQ_INT(hs_claims(j, "{\"sub\":\"a\",\"exp\":9007199254740994}",
                           &c), IMGW_JWT_MALFORMED);
    CHECK_EQ_INT(hs_claims(j, "{\"sub\":\"a\",\"exp\":9007199254740992}",
                           &c), IMGW_JWT_OK);
    CHECK_EQ_INT(c.exp, 9007199254740992LL);
    CHECK_EQ_INT(hs_claims(j, "{\"sub\":\"a\",\"exp\":-1e300}", &c),
                 IMGW_JWT_MALFORMED);
    CHECK_EQ_INT(hs_claims(j, "{\"sub\":\"a\",\"exp\":-1}", &c),
                 IMGW_JWT_MALFORMED);
    CHECK_EQ_INT(hs_claims(j, "{\"sub\":\"a\",\"nbf\":-1e999}", &c),
                 IMGW_JWT_MALFORMED);
    CHECK_EQ_INT(hs_claims(j, "{\"sub\":\"a\",\"nbf\":1e999}", &c),
                 IMGW_JWT_MALFORMED);
    CHECK_EQ_INT(hs_claims(j, "{\"sub\":\"a\",\"iat\":1e999}", &c),
                 IMGW_JWT_MALFORMED);
    CHECK_EQ_INT(hs_claims(j, "{\"sub\":\"a\",\"exp\":0}", &c),
                 IMGW_JWT_EXPIRED);
    /* Expiry is checked before the other claims. */
    CHECK_EQ_INT(hs_claims(j, "{\"exp\":1}", &c), IMGW_JWT_EXPIRED);
    imgw_jwt_free(j);

    /* Zero leeway: the boundary moves to exp itself. */
    {
        imgw_jwt_opts_t o = {0};
        signer_t s = signer_for(HS, 0);
        char tok[TOK_MAX];

        o.hs256_secret = SECRET;
        CHECK_EQ_INT(imgw_jwt_new(&j, &o, NULL, 0), 0);
        mint(&s, NULL, fmt("{\"sub\":\"a\",\"exp\":%lld}", (long long)NOW),
             0, tok);
        CHECK_EQ_INT(vfy(j, tok, NOW, &c), IMGW_JWT_OK);
        CHECK_EQ_INT(vfy(j, tok, NOW + 1, &c), IMGW_JWT_EXPIRED);
        imgw_jwt_free(j);
    }
}

/* Audit item 15: a token without exp would be good forever; the default
   (zeroed options, auth.require_exp = true) refuses it. */
TEST(require_exp)
{
    imgw_jwt_opts_t o = {0};
    imgw_jwt_claims_t c;
    imgw_jwt_t *j;

    o.hs256_secret = SECRET;
    o.leeway = LEEWAY;
    CHECK_EQ_INT(imgw_jwt_new(&j, &o, NULL, 0), 0);
    CHECK_EQ_INT(hs_claims(j, "{\"sub\":\"a\"}", &c), IMGW_JWT_BAD_CLAIM);
    CHECK_EQ_INT(hs_claims(j, "{\"sub\":\"a\",\"iat\":1700000000}", &c),
                 IMGW_JWT_BAD_CLAIM);
    CHECK_EQ_INT(hs_claims(j, "{\"sub\":\"a\",\"exp\":null}", &c),
                 IMGW_JWT_MALFORMED);
    CHECK_EQ_INT(hs_claims(j, fmt("{\"sub\":\"a\",\"exp\":%lld}",
                                  (long long)NOW + 60), &c), IMGW_JWT_OK);
    CHECK_EQ_INT(c.exp, NOW + 60);
    imgw_jwt_free(j);

    o.exp_optional = 1;
    CHECK_EQ_INT(imgw_jwt_new(&j, &o, NULL, 0), 0);
    CHECK_EQ_INT(hs_claims(j, "{\"sub\":\"a\"}", &c), IMGW_JWT_OK);
    CHECK_EQ_STR(c.user_id, "a");
    CHECK_EQ_INT(c.exp, 0);
    imgw_jwt_free(j);
}

/* The admin token comparison: equal bytes only, whatever the lengths. */
TEST(secret_equal)
{
    static const char tok[] = "admin-token-0123456789abcdef0123";

    CHECK_EQ_INT(imgw_jwt_secret_equal(tok, 32, tok, 32), 1);
    CHECK_EQ_INT(imgw_jwt_secret_equal("admin-token-0123456789abcdef0123",
                                       32, tok, 32), 1);
    CHECK_EQ_INT(imgw_jwt_secret_equal(tok, 31, tok, 32), 0);
    CHECK_EQ_INT(imgw_jwt_secret_equal(tok, 32, tok, 31), 0);
    CHECK_EQ_INT(imgw_jwt_secret_equal("admin-token-0123456789abcdef0124",
                                       32, tok, 32), 0);
    CHECK_EQ_INT(imgw_jwt_secret_equal("", 0, tok, 32), 0);
    CHECK_EQ_INT(imgw_jwt_secret_equal(NULL, 0, "", 0), 1);
    CHECK_EQ_INT(imgw_jwt_secret_equal(NULL, 5, tok, 32), 0);
    /* A prefix is not enough (a byte loop over the shorter would say so). */
    CHECK_EQ_INT(imgw_jwt_secret_equal("adm", 3, tok, 32), 0);
}

TEST(issuer_audience)
{
    imgw_jwt_t *j = mkv(SECRET, NULL, "imgw-auth", "imgw", NULL);
    imgw_jwt_t *open = verifier_for(HS);
    imgw_jwt_claims_t c;

    CHECK_EQ_INT(hs_claims(j, "{\"sub\":\"a\",\"iss\":\"imgw-auth\","
                              "\"aud\":\"imgw\"}", &c), IMGW_JWT_OK);
    CHECK_EQ_INT(hs_claims(j, "{\"sub\":\"a\",\"iss\":\"imgw-auth\","
                              "\"aud\":[\"other\",\"imgw\"]}", &c),
                 IMGW_JWT_OK);
    CHECK_EQ_INT(hs_claims(j, "{\"sub\":\"a\",\"iss\":\"evil\","
                              "\"aud\":\"imgw\"}", &c), IMGW_JWT_BAD_CLAIM);
    CHECK_EQ_INT(hs_claims(j, "{\"sub\":\"a\",\"aud\":\"imgw\"}", &c),
                 IMGW_JWT_BAD_CLAIM);
    CHECK_EQ_INT(hs_claims(j, "{\"sub\":\"a\",\"iss\":1,\"aud\":\"imgw\"}",
                           &c), IMGW_JWT_BAD_CLAIM);
    CHECK_EQ_INT(hs_claims(j, "{\"sub\":\"a\",\"iss\":\"imgw-auth\"}", &c),
                 IMGW_JWT_BAD_CLAIM);
    CHECK_EQ_INT(hs_claims(j, "{\"sub\":\"a\",\"iss\":\"imgw-auth\","
                              "\"aud\":\"imgw2\"}", &c), IMGW_JWT_BAD_CLAIM);
    CHECK_EQ_INT(hs_claims(j, "{\"sub\":\"a\",\"iss\":\"imgw-auth\","
                              "\"aud\":[\"other\"]}", &c),
                 IMGW_JWT_BAD_CLAIM);
    CHECK_EQ_INT(hs_claims(j, "{\"sub\":\"a\",\"iss\":\"imgw-auth\","
                              "\"aud\":[]}", &c), IMGW_JWT_BAD_CLAIM);
    CHECK_EQ_INT(hs_claims(j, "{\"sub\":\"a\",\"iss\":\"imgw-auth\","
                              "\"aud\":[[\"imgw\"],7]}", &c),
                 IMGW_JWT_BAD_CLAIM);
    CHECK_EQ_INT(hs_claims(j, "{\"sub\":\"a\",\"iss\":\"imgw-auth\","
                              "\"aud\":{\"imgw\":1}}", &c),
                 IMGW_JWT_BAD_CLAIM);
    /* Not configured: not checked. */
    CHECK_EQ_INT(hs_claims(open, "{\"sub\":\"a\",\"iss\":\"x\",\"aud\":7}",
                           &c), IMGW_JWT_OK);
    imgw_jwt_free(j);
    imgw_jwt_free(open);
}

TEST(app_ids)
{
    imgw_jwt_t *j = mkv(SECRET, NULL, NULL, NULL, "web, ios ,7");
    imgw_jwt_t *open = verifier_for(HS);
    imgw_jwt_claims_t c;

    CHECK_EQ_INT(hs_claims(j, "{\"sub\":\"a\",\"app_id\":\"web\"}", &c),
                 IMGW_JWT_OK);
    CHECK_EQ_STR(c.app_id, "web");
    CHECK_EQ_INT(hs_claims(j, "{\"sub\":\"a\",\"app_id\":\"ios\"}", &c),
                 IMGW_JWT_OK);
    CHECK_EQ_INT(hs_claims(j, "{\"sub\":\"a\",\"app_id\":7}", &c),
                 IMGW_JWT_OK);
    CHECK_EQ_STR(c.app_id, "7");
    CHECK_EQ_INT(hs_claims(j, "{\"sub\":\"a\",\"app_id\":\"android\"}", &c),
                 IMGW_JWT_BAD_CLAIM);
    CHECK_EQ_INT(hs_claims(j, "{\"sub\":\"a\",\"app_id\":\"we\"}", &c),
                 IMGW_JWT_BAD_CLAIM);
    CHECK_EQ_INT(hs_claims(j, "{\"sub\":\"a\",\"app_id\":\"web,ios\"}", &c),
                 IMGW_JWT_BAD_CLAIM);
    CHECK_EQ_INT(hs_claims(j, "{\"sub\":\"a\",\"app_id\":\"\"}", &c),
                 IMGW_JWT_BAD_CLAIM);
    CHECK_EQ_INT(hs_claims(j, "{\"sub\":\"a\"}", &c), IMGW_JWT_BAD_CLAIM);
    CHECK_EQ_INT(hs_claims(j, "{\"sub\":\"a\",\"app_id\":[\"web\"]}", &c),
                 IMGW_JWT_BAD_CLAIM);
    /* Not configured: copied when present, empty when absent. */
    CHECK_EQ_INT(hs_claims(open, "{\"sub\":\"a\",\"app_id\":\"any\"}", &c),
                 IMGW_JWT_OK);
    CHECK_EQ_STR(c.app_id, "any");
    CHECK_EQ_INT(hs_claims(open, "{\"sub\":\"a\"}", &c), IMGW_JWT_OK);
    CHECK_EQ_STR(c.app_id, "");
    imgw_jwt_free(j);
    imgw_jwt_free(open);
}

/* ---- header handling ------------------------------------------------------ */

TEST(key_hints_ignored)
{
    imgw_jwt_t *hs = verifier_for(HS), *rs = verifier_for(RS);
    signer_t s = signer_for(HS, 0), bad = signer_for(HS, 1);
    signer_t r = signer_for(RS, 0), rbad = signer_for(RS, 1);
    const char *hdr_hs = "{\"alg\":\"HS256\",\"kid\":\"../../etc/passwd\","
                         "\"jku\":\"http://127.0.0.1:1/jwks\","
                         "\"x5u\":\"http://127.0.0.1:1/cert\","
                         "\"jwk\":{\"kty\":\"oct\",\"k\":\"AAAA\"}}";
    const char *hdr_rs = "{\"alg\":\"RS256\",\"kid\":\"other\","
                         "\"jku\":\"https://evil.example/jwks.json\"}";
    imgw_jwt_claims_t c;
    char tok[TOK_MAX];

    CHECK_EQ_INT(vfy(hs, mint(&s, hdr_hs, "{\"sub\":\"a\"}", 0, tok), NOW,
                     &c), IMGW_JWT_OK);
    CHECK_EQ_INT(vfy(hs, mint(&bad, hdr_hs, "{\"sub\":\"a\"}", 0, tok), NOW,
                     &c), IMGW_JWT_BAD_SIG);
    CHECK_EQ_INT(vfy(rs, mint(&r, hdr_rs, "{\"sub\":\"a\"}", 0, tok), NOW,
                     &c), IMGW_JWT_OK);
    CHECK_EQ_INT(vfy(rs, mint(&rbad, hdr_rs, "{\"sub\":\"a\"}", 0, tok), NOW,
                     &c), IMGW_JWT_BAD_SIG);
    /* typ is optional and not interpreted. */
    CHECK_EQ_INT(vfy(hs, mint(&s, "{\"alg\":\"HS256\"}", "{\"sub\":\"a\"}", 0,
                              tok), NOW, &c), IMGW_JWT_OK);
    CHECK_EQ_INT(vfy(hs, mint(&s, "{\"typ\":\"at+jwt\",\"alg\":\"HS256\"}",
                              "{\"sub\":\"a\"}", 0, tok), NOW, &c),
                 IMGW_JWT_OK);
    /* crit names extensions we would have to understand: refused. */
    CHECK_EQ_INT(vfy(hs, mint(&s, "{\"alg\":\"HS256\",\"crit\":[\"b64\"],"
                                  "\"b64\":false}", "{\"sub\":\"a\"}", 0,
                              tok), NOW, &c), IMGW_JWT_MALFORMED);
    imgw_jwt_free(hs);
    imgw_jwt_free(rs);
}

TEST(bad_alg)
{
    imgw_jwt_t *all = mkv(SECRET, "rsa_public.pem", NULL, NULL, NULL);
    signer_t s = signer_for(HS, 0);
    static const char *const hdrs[] = {
        "{}",
        "{\"typ\":\"JWT\"}",
        "{\"alg\":null}",
        "{\"alg\":256}",
        "{\"alg\":[\"HS256\"]}",
        "{\"alg\":\"\"}",
        "{\"alg\":\"hs256\"}",
        "{\"alg\":\"HS256 \"}",
        "{\"alg\":\"HS384\"}",
        "{\"alg\":\"HS512\"}",
        "{\"alg\":\"PS256\"}",
        "{\"alg\":\"RSA-OAEP\"}",
        "{\"alg\":\"nOnE\"}",
        "{\"ALG\":\"HS256\"}",
    };
    char tok[TOK_MAX];

    for (size_t i = 0; i < sizeof hdrs / sizeof hdrs[0]; i++) {
        mint(&s, hdrs[i], "{\"sub\":\"a\"}", 0, tok);
        CHECK_EQ_INT(vfy(all, tok, NOW, NULL), IMGW_JWT_BAD_ALG);
    }
    imgw_jwt_free(all);
}

TEST(duplicates)
{
    imgw_jwt_t *j = verifier_for(HS);
    signer_t s = signer_for(HS, 0);
    imgw_jwt_claims_t c;
    char tok[TOK_MAX];

    CHECK_EQ_INT(hs_claims(j, "{\"sub\":\"alice\",\"sub\":\"admin\"}", &c),
                 IMGW_JWT_MALFORMED);
    CHECK_EQ_INT(hs_claims(j, "{\"sub\":\"alice\",\"\\u0073ub\":\"admin\"}",
                           &c), IMGW_JWT_MALFORMED);
    CHECK_EQ_INT(hs_claims(j, fmt("{\"sub\":\"a\",\"exp\":1,\"exp\":%lld}",
                                  (long long)NOW + 60), &c),
                 IMGW_JWT_MALFORMED);
    CHECK_EQ_INT(hs_claims(j, "{\"sub\":\"a\",\"app_id\":\"x\","
                              "\"app_id\":\"y\"}", &c), IMGW_JWT_MALFORMED);
    /* Different case is a different claim, not a duplicate. */
    CHECK_EQ_INT(hs_claims(j, "{\"sub\":\"a\",\"Sub\":\"b\"}", &c),
                 IMGW_JWT_OK);
    CHECK_EQ_STR(c.user_id, "a");
    /* Nested objects carry no claims; duplicates there are left alone. */
    CHECK_EQ_INT(hs_claims(j, "{\"sub\":\"a\",\"x\":{\"k\":1,\"k\":2}}", &c),
                 IMGW_JWT_OK);
    mint(&s, "{\"alg\":\"HS256\",\"alg\":\"none\"}", "{\"sub\":\"a\"}", 0,
         tok);
    CHECK_EQ_INT(vfy(j, tok, NOW, &c), IMGW_JWT_MALFORMED);
    mint(&s, "{\"alg\":\"none\",\"alg\":\"HS256\"}", "{\"sub\":\"a\"}", 0,
         tok);
    CHECK_EQ_INT(vfy(j, tok, NOW, &c), IMGW_JWT_MALFORMED);
    imgw_jwt_free(j);
}

/* ---- sizes, nesting, garbage --------------------------------------------- */

static char *
repeat(char ch, size_t n)
{
    char *s = malloc(n + 1);
    memset(s, ch, n);
    s[n] = '\0';
    return s;
}

TEST(sizes_and_depth)
{
    imgw_jwt_t *j = verifier_for(HS);
    signer_t s = signer_for(HS, 0);
    imgw_jwt_claims_t c;
    char tok[TOK_MAX], open[64], close[64];
    char *pad;

    /* A 1100-byte header stays under the token limit but not the header's. */
    pad = repeat('h', 1100);
    mint(&s, fmt("{\"alg\":\"HS256\",\"x\":\"%s\"}", pad), "{\"sub\":\"a\"}",
         0, tok);
    CHECK(strlen(tok) < IMGW_JWT_MAX_TOKEN);
    CHECK_EQ_INT(vfy(j, tok, NOW, &c), IMGW_JWT_MALFORMED);
    free(pad);
    pad = repeat('h', 900);
    mint(&s, fmt("{\"alg\":\"HS256\",\"x\":\"%s\"}", pad), "{\"sub\":\"a\"}",
         0, tok);
    CHECK_EQ_INT(vfy(j, tok, NOW, &c), IMGW_JWT_OK);
    free(pad);

    /* A big payload fits as long as the token does. */
    pad = repeat('p', 2900);
    mint(&s, NULL, fmt("{\"sub\":\"a\",\"pad\":\"%s\"}", pad), 0, tok);
    CHECK(strlen(tok) <= IMGW_JWT_MAX_TOKEN);
    CHECK_EQ_INT(vfy(j, tok, NOW, &c), IMGW_JWT_OK);
    free(pad);
    pad = repeat('p', 3000);
    mint(&s, NULL, fmt("{\"sub\":\"a\",\"pad\":\"%s\"}", pad), 0, tok);
    CHECK(strlen(tok) > IMGW_JWT_MAX_TOKEN);
    CHECK_EQ_INT(vfy(j, tok, NOW, &c), IMGW_JWT_MALFORMED);
    free(pad);

    /* Length is checked before anything is read. */
    pad = repeat('A', IMGW_JWT_MAX_TOKEN + 1);
    CHECK_EQ_INT(imgw_jwt_verify(j, pad, IMGW_JWT_MAX_TOKEN + 1, NOW, &c),
                 IMGW_JWT_MALFORMED);
    CHECK_EQ_INT(imgw_jwt_verify(j, pad, SIZE_MAX, NOW, &c),
                 IMGW_JWT_MALFORMED);
    free(pad);

    /* Nesting: 16 levels including the top object pass, 17 do not. */
    memset(open, '[', sizeof open);
    memset(close, ']', sizeof close);
    CHECK_EQ_INT(hs_claims(j, fmt("{\"sub\":\"a\",\"n\":%.*s%.*s}", 15, open,
                                  15, close), &c), IMGW_JWT_OK);
    CHECK_EQ_INT(hs_claims(j, fmt("{\"sub\":\"a\",\"n\":%.*s%.*s}", 16, open,
                                  16, close), &c), IMGW_JWT_MALFORMED);
    /* Brackets inside strings are not nesting. */
    CHECK_EQ_INT(hs_claims(j, fmt("{\"sub\":\"a\",\"n\":\"%.*s\\\"%.*s\"}",
                                  40, open, 40, open), &c), IMGW_JWT_OK);
    mint(&s, fmt("{\"alg\":\"HS256\",\"n\":%.*s%.*s}", 16, open, 16, close),
         "{\"sub\":\"a\"}", 0, tok);
    CHECK_EQ_INT(vfy(j, tok, NOW, &c), IMGW_JWT_MALFORMED);
    imgw_jwt_free(j);
}

TEST(malformed)
{
    imgw_jwt_t *j = mkv(SECRET, "ec_public.pem", NULL, NULL, NULL);
    signer_t s = signer_for(HS, 0);
    imgw_jwt_claims_t c;
    char tok[TOK_MAX], t2[TOK_MAX];
    static const char *const garbage[] = {
        "", ".", "..", "...", "a", "a.b", "a.b.c", "a..c", ".b.c", "a.b.",
        "eyJhbGciOiJIUzI1NiJ9", "eyJhbGciOiJIUzI1NiJ9.",
        "eyJhbGciOiJIUzI1NiJ9..", "eyJhbGciOiJIUzI1NiJ9.e30",
        "eyJhbGciOiJIUzI1NiJ9.e30.a.b",
        "eyJhbGciOiJIUzI1NiJ9.e30.a.b.c", "Bearer x.y.z", " . . ",
        "\xff\xfe.\x80.\x01", "e30=.e30.e30", "%%%.%%%.%%%",
    };
    size_t n;

    for (size_t i = 0; i < sizeof garbage / sizeof garbage[0]; i++)
        CHECK_EQ_INT(vfy(j, garbage[i], NOW, &c), IMGW_JWT_MALFORMED);
    CHECK_EQ_INT(imgw_jwt_verify(j, NULL, 10, NOW, &c), IMGW_JWT_MALFORMED);
    /* Well-formed but unsigned: an empty signature is just a wrong one. */
    CHECK_EQ_INT(vfy(j, "eyJhbGciOiJIUzI1NiJ9.e30.", NOW, &c),
                 IMGW_JWT_BAD_SIG);

    /* Header not an object / not JSON. */
    static const char *const hdrs[] = {
        "[\"HS256\"]", "\"HS256\"", "null", "1", "{", "{\"alg\":\"HS256\"",
        "{\"alg\":\"HS256\"}x", "{\"alg\":\"HS256\"}{}", "{'alg':'HS256'}",
        "{\"alg\":\"HS\\u0000256\"}", "{\"alg\":\"HS256\"}\n\x01",
    };
    for (size_t i = 0; i < sizeof hdrs / sizeof hdrs[0]; i++) {
        mint(&s, hdrs[i], "{\"sub\":\"a\"}", 0, tok);
        CHECK_EQ_INT(vfy(j, tok, NOW, &c), IMGW_JWT_MALFORMED);
    }
    /* Whitespace around the object is still JSON. */
    mint(&s, " {\"alg\":\"HS256\"}\n", "{\"sub\":\"a\"}", 0, tok);
    CHECK_EQ_INT(vfy(j, tok, NOW, &c), IMGW_JWT_OK);

    /* Correctly signed payloads that are not a JSON object. */
    static const char *const payloads[] = {
        "[\"sub\",\"a\"]", "\"a\"", "null", "42", "", "{\"sub\":\"a\"",
        "{\"sub\":\"a\"} x", "{\"sub\":\"\xc3\"}", "{\"sub\":\"\xed\xa0\x80\"}",
        "{\"sub\":\"\xc0\xaf\"}", "{\"sub\":\"\\ud800\"}",
    };
    for (size_t i = 0; i < sizeof payloads / sizeof payloads[0]; i++) {
        mint(&s, NULL, payloads[i], 0, tok);
        CHECK_EQ_INT(vfy(j, tok, NOW, &c), IMGW_JWT_MALFORMED);
    }

    /* Padding and non-canonical base64url. */
    mint(&s, NULL, "{\"sub\":\"a\"}", 0, tok);
    CHECK_EQ_INT(vfy(j, tok, NOW, &c), IMGW_JWT_OK);
    n = strlen(tok);
    memcpy(t2, tok, n);  /* 43 sig chars, so one '=' of padding */
    memcpy(t2 + n, "=", 2);
    CHECK_EQ_INT(vfy(j, t2, NOW, &c), IMGW_JWT_MALFORMED);
    memcpy(t2, tok, n + 1);
    t2[n - 1] = (char)(t2[n - 1] == 'A' ? 'B' : t2[n - 1] ^ 1);
    CHECK(vfy(j, t2, NOW, &c) != IMGW_JWT_OK);
    memcpy(t2, tok, n + 1);
    t2[5] = '+'; /* standard base64, not base64url */
    CHECK_EQ_INT(vfy(j, t2, NOW, &c), IMGW_JWT_MALFORMED);
    /* A NUL inside the given length is just a bad character. */
    memcpy(t2, tok, n + 1);
    t2[n - 3] = '\0';
    CHECK_EQ_INT(imgw_jwt_verify(j, t2, n, NOW, &c), IMGW_JWT_MALFORMED);
    imgw_jwt_free(j);
}

/* Deterministic so a failure reproduces. */
static uint32_t
xorshift(uint32_t *st)
{
    uint32_t x = *st;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return *st = x;
}

TEST(garbage_fuzz)
{
    static const char alpha[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_..";
    imgw_jwt_t *j = mkv(SECRET, "rsa_public.pem", NULL, NULL, NULL);
    signer_t s = signer_for(HS, 0);
    uint32_t st = 2463534242u;
    size_t bad = 0;
    char tok[TOK_MAX], buf[600];

    for (int i = 0; i < 3000; i++) {
        size_t n = xorshift(&st) % sizeof buf;
        int binary = i % 3 == 0;
        char *t;
        for (size_t k = 0; k < n; k++)
            buf[k] = binary ? (char)xorshift(&st)
                            : alpha[xorshift(&st) % (sizeof alpha - 1)];
        t = malloc(n ? n : 1);
        memcpy(t, buf, n);
        if (imgw_jwt_verify(j, t, n, NOW, NULL) == IMGW_JWT_OK)
            bad++;
        free(t);
    }
    /* Valid base64url of random bytes in each segment, so the JSON and
       UTF-8 checks see garbage too. */
    for (int i = 0; i < 500; i++) {
        unsigned char raw[200];
        size_t n = xorshift(&st) % sizeof raw;
        char hdr[300];
        for (size_t k = 0; k < n; k++)
            raw[k] = (unsigned char)xorshift(&st);
        if (i % 2)
            raw[0] = '{';
        memcpy(hdr, raw, n);
        hdr[n] = '\0';
        mint(&s, n > 0 && memchr(hdr, 0, n) == NULL ? hdr : "{}", hdr, 0,
             tok);
        if (vfy(j, tok, NOW, NULL) == IMGW_JWT_OK)
            bad++;
    }
    CHECK_EQ_INT(bad, 0);
    imgw_jwt_free(j);
}

/* ---- attacks on key handling ---------------------------------------------- */

static unsigned char *
read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    unsigned char *buf = malloc(65536);
    *len = f != NULL ? fread(buf, 1, 65536, f) : 0;
    if (f != NULL)
        fclose(f);
    return buf;
}

/*
 * The classic confusion: an HS256 token MACed with the server's public key
 * file as the secret, hoping the verifier feeds "the key" to HMAC.
 */
TEST(alg_confusion)
{
    static const char *const pubs[] = {"rsa_public.pem", "ec_public.pem"};
    imgw_jwt_claims_t c;
    char tok[TOK_MAX];

    for (size_t i = 0; i < 2; i++) {
        size_t len;
        unsigned char *pem = read_file(data_path(pubs[i]), &len);
        signer_t forger = {HS, pem, len, NULL};
        imgw_jwt_t *pub_only = mkv(NULL, pubs[i], NULL, NULL, NULL);
        imgw_jwt_t *both = mkv(SECRET, pubs[i], NULL, NULL, NULL);

        CHECK(len > 100);
        mint(&forger, NULL, "{\"sub\":\"admin\"}", 0, tok);
        CHECK_EQ_INT(vfy(pub_only, tok, NOW, &c), IMGW_JWT_BAD_ALG);
        CHECK_EQ_INT(vfy(both, tok, NOW, &c), IMGW_JWT_BAD_SIG);
        /* Without the trailing newline, as some tools strip it. */
        forger.secret_len = len - 1;
        mint(&forger, NULL, "{\"sub\":\"admin\"}", 0, tok);
        CHECK_EQ_INT(vfy(both, tok, NOW, &c), IMGW_JWT_BAD_SIG);
        imgw_jwt_free(pub_only);
        imgw_jwt_free(both);
        free(pem);
    }

    /* RS256 and ES256 tokens are refused by the verifier of the other. */
    {
        signer_t rs = signer_for(RS, 0), es = signer_for(ES, 0);
        imgw_jwt_t *rsv = verifier_for(RS), *esv = verifier_for(ES);
        imgw_jwt_t *hsv = verifier_for(HS);

        mint(&rs, NULL, "{\"sub\":\"a\"}", 0, tok);
        CHECK_EQ_INT(vfy(esv, tok, NOW, &c), IMGW_JWT_BAD_ALG);
        CHECK_EQ_INT(vfy(hsv, tok, NOW, &c), IMGW_JWT_BAD_ALG);
        mint(&es, NULL, "{\"sub\":\"a\"}", 0, tok);
        CHECK_EQ_INT(vfy(rsv, tok, NOW, &c), IMGW_JWT_BAD_ALG);
        CHECK_EQ_INT(vfy(hsv, tok, NOW, &c), IMGW_JWT_BAD_ALG);
        /* An ES256 signature relabelled RS256 (and the reverse). */
        mint(&es, "{\"alg\":\"RS256\"}", "{\"sub\":\"a\"}", 0, tok);
        CHECK_EQ_INT(vfy(rsv, tok, NOW, &c), IMGW_JWT_BAD_SIG);
        mint(&rs, "{\"alg\":\"ES256\"}", "{\"sub\":\"a\"}", 0, tok);
        CHECK_EQ_INT(vfy(esv, tok, NOW, &c), IMGW_JWT_BAD_SIG);
        imgw_jwt_free(rsv);
        imgw_jwt_free(esv);
        imgw_jwt_free(hsv);
    }
}

/* ES256 signatures must be exactly 64 raw bytes (not DER, not r alone). */
TEST(es256_signature_shape)
{
    imgw_jwt_t *j = verifier_for(ES);
    signer_t es = signer_for(ES, 0);
    char tok[TOK_MAX], t2[TOK_MAX];
    unsigned char zero[64] = {0}, der[MBEDTLS_PK_SIGNATURE_MAX_SIZE];
    const mbedtls_md_info_t *sha = mbedtls_md_info_from_type(MBEDTLS_MD_SHA256);
    unsigned char hash[32];
    size_t derlen = 0;
    char *dot;
    int n;

    mint(&es, NULL, "{\"sub\":\"a\"}", 0, tok);
    CHECK_EQ_INT(vfy(j, tok, NOW, NULL), IMGW_JWT_OK);
    dot = strrchr(tok, '.');

    /* r = s = 0 is outside [1, n-1]. */
    n = snprintf(t2, sizeof t2, "%.*s.", (int)(dot - tok), tok);
    b64url(zero, sizeof zero, t2 + n);
    CHECK_EQ_INT(vfy(j, t2, NOW, NULL), IMGW_JWT_BAD_SIG);
    /* 32 bytes: wrong length. */
    b64url(zero, 32, t2 + n);
    CHECK_EQ_INT(vfy(j, t2, NOW, NULL), IMGW_JWT_BAD_SIG);
    /* A valid signature in DER form, as mbedtls_pk_sign() makes it. */
    mbedtls_md(sha, (const unsigned char *)tok, (size_t)(dot - tok), hash);
    CHECK_EQ_INT(mbedtls_pk_sign(&ec_key, MBEDTLS_MD_SHA256, hash, 32, der,
                                 &derlen, mbedtls_ctr_drbg_random, &drbg), 0);
    b64url(der, derlen, t2 + n);
    CHECK_EQ_INT(vfy(j, t2, NOW, NULL), IMGW_JWT_BAD_SIG);
    imgw_jwt_free(j);
}

/* ---- construction --------------------------------------------------------- */

static int
try_new(const char *secret, const char *key, const char *apps, char *err,
        size_t errlen)
{
    imgw_jwt_opts_t o = {0};
    imgw_jwt_t *j = (imgw_jwt_t *)&o; /* must be reset on failure */
    int rc;

    o.hs256_secret = secret;
    o.public_key_pem = key;
    o.app_ids = apps;
    rc = imgw_jwt_new(&j, &o, err, errlen);
    if (rc == 0)
        imgw_jwt_free(j);
    else
        CHECK(j == NULL);
    return rc;
}

TEST(new_errors)
{
    char err[512];
    imgw_jwt_t *j;
    imgw_jwt_opts_t none = {0};
    signer_t s = signer_for(HS, 0);
    char tok[TOK_MAX];

    err[0] = '\0';
    CHECK_EQ_INT(try_new(NULL, data_path("missing.pem"), NULL, err,
                         sizeof err), IMGW_ECONFIG);
    CHECK(strstr(err, "missing.pem") != NULL);
    printf("  (err: %s)\n", err);
    err[0] = '\0';
    CHECK_EQ_INT(try_new(NULL, data_path("rsa_private.pem"), NULL, err,
                         sizeof err), IMGW_ECONFIG);
    CHECK(strstr(err, "rsa_private.pem") != NULL);
    err[0] = '\0';
    CHECK_EQ_INT(try_new(SECRET, data_path("ec384_public.pem"), NULL, err,
                         sizeof err), IMGW_ECONFIG);
    CHECK(strstr(err, "ec384_public.pem") != NULL);
    printf("  (err: %s)\n", err);
    err[0] = '\0';
    CHECK_EQ_INT(try_new(NULL, data_path("rsa1024_public.pem"), NULL, err,
                         sizeof err), IMGW_ECONFIG);
    CHECK(strstr(err, "rsa1024_public.pem") != NULL);
    printf("  (err: %s)\n", err);
    /* A directory is not a key either. */
    CHECK_EQ_INT(try_new(NULL, "test", NULL, err, sizeof err), IMGW_ECONFIG);
    CHECK_EQ_INT(try_new(SECRET, NULL, " , ,", err, sizeof err),
                 IMGW_ECONFIG);
    /* No room for the message is fine. */
    CHECK_EQ_INT(try_new(NULL, data_path("missing.pem"), NULL, NULL, 0),
                 IMGW_ECONFIG);
    CHECK_EQ_INT(try_new(NULL, data_path("missing.pem"), NULL, err, 1),
                 IMGW_ECONFIG);
    CHECK_EQ_STR(err, "");
    CHECK_EQ_INT(imgw_jwt_new(&j, NULL, err, sizeof err), IMGW_EINVAL);
    CHECK_EQ_INT(imgw_jwt_new(NULL, &none, err, sizeof err), IMGW_EINVAL);
    CHECK_EQ_INT(try_new("", "", "", err, sizeof err), 0);

    /* Nothing configured is allowed; then nothing is accepted. */
    CHECK_EQ_INT(imgw_jwt_new(&j, &none, err, sizeof err), 0);
    mint(&s, NULL, "{\"sub\":\"a\"}", 0, tok);
    CHECK_EQ_INT(vfy(j, tok, NOW, NULL), IMGW_JWT_BAD_ALG);
    imgw_jwt_free(j);
    imgw_jwt_free(NULL);
    CHECK_EQ_INT(vfy(NULL, tok, NOW, NULL), IMGW_JWT_BAD_ALG);

    /* The options are copied: the caller's strings may go away. */
    {
        char secret[] = SECRET, iss[] = "iss1";
        imgw_jwt_opts_t o = {0};
        imgw_jwt_claims_t c;
        o.hs256_secret = secret;
        o.issuer = iss;
        o.exp_optional = 1;
        CHECK_EQ_INT(imgw_jwt_new(&j, &o, err, sizeof err), 0);
        memset(secret, 'x', sizeof secret - 1);
        memset(iss, 'y', sizeof iss - 1);
        CHECK_EQ_INT(hs_claims(j, "{\"sub\":\"a\",\"iss\":\"iss1\"}", &c),
                     IMGW_JWT_OK);
        imgw_jwt_free(j);
    }
}

/* ---- minting --------------------------------------------------------------- */

TEST(sign_hs256)
{
    imgw_jwt_t *j = verifier_for(HS);
    imgw_jwt_t *other = mkv("another-secret", NULL, NULL, NULL, NULL);
    imgw_jwt_claims_t c;
    char tok[TOK_MAX], want[512];
    const char *payload;
    int n, m;
    size_t hb;

    n = imgw_jwt_sign_hs256(SECRET, "alice", NOW, 3600, tok, sizeof tok);
    CHECK(n > 0);
    CHECK_EQ_INT(strlen(tok), n);
    CHECK_EQ_INT(vfy(j, tok, NOW, &c), IMGW_JWT_OK);
    CHECK_EQ_STR(c.user_id, "alice");
    CHECK_EQ_INT(c.exp, NOW + 3600);
    CHECK_EQ_INT(vfy(j, tok, NOW + 3600 + LEEWAY, &c), IMGW_JWT_OK);
    CHECK_EQ_INT(vfy(j, tok, NOW + 3600 + LEEWAY + 1, &c), IMGW_JWT_EXPIRED);
    CHECK_EQ_INT(vfy(other, tok, NOW, &c), IMGW_JWT_BAD_SIG);

    /* Exact text: header, then claims in the documented order. */
    hb = b64url((const unsigned char *)"{\"alg\":\"HS256\",\"typ\":\"JWT\"}",
                27, want);
    CHECK_EQ_STR(want, "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9");
    want[hb++] = '.';
    payload = fmt("{\"sub\":\"alice\",\"iat\":%lld,\"exp\":%lld}",
                  (long long)NOW, (long long)NOW + 3600);
    b64url((const unsigned char *)payload, strlen(payload), want + hb);
    CHECK(strncmp(tok, want, strlen(want)) == 0);
    CHECK(tok[strlen(want)] == '.');

    /* JSON escaping and UTF-8 round-trip. */
    n = imgw_jwt_sign_hs256(SECRET, "a\"b\\c", NOW, 60, tok, sizeof tok);
    CHECK(n > 0);
    CHECK_EQ_INT(vfy(j, tok, NOW, &c), IMGW_JWT_OK);
    CHECK_EQ_STR(c.user_id, "a\"b\\c");
    n = imgw_jwt_sign_hs256(SECRET, "Jos\xc3\xa9", NOW, 60, tok, sizeof tok);
    CHECK_EQ_INT(vfy(j, tok, NOW, &c), IMGW_JWT_OK);
    CHECK_EQ_STR(c.user_id, "Jos\xc3\xa9");
    n = imgw_jwt_sign_hs256(SECRET, "\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"",
                            NOW, 60, tok, sizeof tok);
    CHECK_EQ_INT(vfy(j, tok, NOW, &c), IMGW_JWT_OK);
    CHECK_EQ_STR(c.user_id, "\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"");

    /* The longest user, all quotes: the worst case for escaping. */
    {
        char *u = repeat('"', IMGW_JWT_MAX_USER - 1);
        n = imgw_jwt_sign_hs256(SECRET, u, NOW, 60, tok, sizeof tok);
        CHECK(n > 0);
        CHECK_EQ_INT(vfy(j, tok, NOW, &c), IMGW_JWT_OK);
        CHECK_EQ_STR(c.user_id, u);
        u[IMGW_JWT_MAX_USER - 1] = '"';
        u = realloc(u, IMGW_JWT_MAX_USER + 1);
        u[IMGW_JWT_MAX_USER] = '\0';
        CHECK_EQ_INT(imgw_jwt_sign_hs256(SECRET, u, NOW, 60, tok, sizeof tok),
                     IMGW_EINVAL);
        free(u);
    }

    /* Users that verify would refuse are refused here. */
    CHECK_EQ_INT(imgw_jwt_sign_hs256(SECRET, "", NOW, 60, tok, sizeof tok),
                 IMGW_EINVAL);
    CHECK_EQ_INT(imgw_jwt_sign_hs256(SECRET, "a\nb", NOW, 60, tok, sizeof tok),
                 IMGW_EINVAL);
    CHECK_EQ_INT(imgw_jwt_sign_hs256(SECRET, "\xc3", NOW, 60, tok, sizeof tok),
                 IMGW_EINVAL);
    CHECK_EQ_INT(imgw_jwt_sign_hs256(SECRET, NULL, NOW, 60, tok, sizeof tok),
                 IMGW_EINVAL);
    CHECK_EQ_INT(imgw_jwt_sign_hs256(NULL, "a", NOW, 60, tok, sizeof tok),
                 IMGW_EINVAL);
    CHECK_EQ_INT(imgw_jwt_sign_hs256("", "a", NOW, 60, tok, sizeof tok),
                 IMGW_EINVAL);
    CHECK_EQ_INT(imgw_jwt_sign_hs256(SECRET, "a", INT64_MAX - 5, 60, tok,
                                     sizeof tok), IMGW_EINVAL);

    /* Every buffer too small (room for the NUL included) is refused
       without writing past it; ASan watches the exact-size heap copy. */
    n = imgw_jwt_sign_hs256(SECRET, "bob", NOW, 60, tok, sizeof tok);
    CHECK(n > 0);
    {
        size_t bad = 0;
        for (size_t len = 0; len <= (size_t)n; len++) {
            char *b = malloc(len ? len : 1);
            if (imgw_jwt_sign_hs256(SECRET, "bob", NOW, 60, b, len) !=
                IMGW_ETOOBIG)
                bad++;
            free(b);
        }
        CHECK_EQ_INT(bad, 0);
        char *b = malloc((size_t)n + 1);
        m = imgw_jwt_sign_hs256(SECRET, "bob", NOW, 60, b, (size_t)n + 1);
        CHECK_EQ_INT(m, n);
        CHECK_EQ_STR(b, tok);
        free(b);
    }
    /* Negative ttl mints an already-expired token. */
    n = imgw_jwt_sign_hs256(SECRET, "bob", NOW, -LEEWAY - 1, tok, sizeof tok);
    CHECK_EQ_INT(vfy(j, tok, NOW, &c), IMGW_JWT_EXPIRED);
    imgw_jwt_free(j);
    imgw_jwt_free(other);
}

/* ---- interop and misc ------------------------------------------------------ */

/*
 * Minted by PyJWT 2.6 with the fixture keys at iat 1700000000, exp +600:
 *   jwt.encode({"sub":"py-rs",...,"aud":["imgw","x"],"iss":"py"}, rsa,
 *              algorithm="RS256", headers={"kid":"k1"})
 *   jwt.encode({"sub":"py-es",...}, ec, algorithm="ES256")
 *   jwt.encode({"uid":4242,...,"app_id":"web"}, "py-secret", "HS256")
 */
TEST(interop)
{
    static const char rs[] =
        "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIiwidHlwIjoiSldUIn0."
        "eyJzdWIiOiJweS1ycyIsImlhdCI6MTcwMDAwMDAwMCwiZXhwIjoxNzAwMDAwNjAwLCJh"
        "dWQiOlsiaW1ndyIsIngiXSwiaXNzIjoicHkifQ."
        "YmKvTER21sTP8U-dpJvN8IBIxU20LmmgD3OJsJQc5XsQkmkHb6bfYlwx2CzU3h-YGJDh"
        "qD_TQt1-wACghf2eLNm7QjfmIndc8WgrPbEQXqCP7_2oFiLPs-E9ymzLhur9ROGXb0tz"
        "uHMIYzn0TngN6sERQ7UXig6d1-CQDNS4Mn9iHGR4Y66Hhu3O3aWGGS4fbvX_VSAEBtLp"
        "s-n0m3y7uz7pm1zm1KlHC6Dwoz7ka7_JOIjbmRIWKMPxwGNLOGq653tnTtPhaJwyhF9N"
        "yM_Ie1QPmEvdEteY2TSQ0JgC6FpnqvF857ItS85JCefbK_mz_zVC1932AD2iD-ugkhLD"
        "Xg";
    static const char es[] =
        "eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCJ9."
        "eyJzdWIiOiJweS1lcyIsImlhdCI6MTcwMDAwMDAwMCwiZXhwIjoxNzAwMDAwNjAwfQ."
        "5X9EDFykyjsOQJ3fGr3oi7y1iQf1bqWVGOXStak0NxUG2lvi_3gE9yq9I7Qaq-cYQxU9"
        "w6nirHThSDpbHcIw4Q";
    static const char hs[] =
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."
        "eyJ1aWQiOjQyNDIsImlhdCI6MTcwMDAwMDAwMCwiZXhwIjoxNzAwMDAwNjAwLCJhcHBf"
        "aWQiOiJ3ZWIifQ."
        "8i8NIrGOEvqAZiFWb4hT6RcyXffx7tqYuBnvwR7tBkU";
    imgw_jwt_t *rsv = mkv(NULL, "rsa_public.pem", "py", "imgw", NULL);
    imgw_jwt_t *esv = verifier_for(ES);
    imgw_jwt_t *hsv = mkv("py-secret", NULL, NULL, NULL, "web");
    imgw_jwt_claims_t c;

    CHECK_EQ_INT(vfy(rsv, rs, NOW, &c), IMGW_JWT_OK);
    CHECK_EQ_STR(c.user_id, "py-rs");
    CHECK_EQ_INT(c.exp, NOW + 600);
    CHECK_EQ_INT(vfy(rsv, rs, NOW + 600 + LEEWAY + 1, &c), IMGW_JWT_EXPIRED);
    CHECK_EQ_INT(vfy(esv, es, NOW, &c), IMGW_JWT_OK);
    CHECK_EQ_STR(c.user_id, "py-es");
    CHECK_EQ_INT(vfy(hsv, hs, NOW, &c), IMGW_JWT_OK);
    CHECK_EQ_STR(c.user_id, "4242");
    CHECK_EQ_STR(c.app_id, "web");
    imgw_jwt_free(rsv);
    imgw_jwt_free(esv);
    imgw_jwt_free(hsv);
}

TEST(reasons)
{
    CHECK_EQ_STR(imgw_jwt_reason(IMGW_JWT_OK), "ok");
    CHECK_EQ_STR(imgw_jwt_reason(IMGW_JWT_MALFORMED), "malformed");
    CHECK_EQ_STR(imgw_jwt_reason(IMGW_JWT_BAD_ALG), "bad_alg");
    CHECK_EQ_STR(imgw_jwt_reason(IMGW_JWT_BAD_SIG), "bad_signature");
    CHECK_EQ_STR(imgw_jwt_reason(IMGW_JWT_EXPIRED), "expired");
    CHECK_EQ_STR(imgw_jwt_reason(IMGW_JWT_NOT_YET), "not_yet_valid");
    CHECK_EQ_STR(imgw_jwt_reason(IMGW_JWT_BAD_CLAIM), "bad_claim");
    CHECK_EQ_STR(imgw_jwt_reason((imgw_jwt_result_t)-99), "unknown");
}

/* ---- main ------------------------------------------------------------------ */

static void
load_private(mbedtls_pk_context *pk, const char *name)
{
    int rc;

    mbedtls_pk_init(pk);
    rc = mbedtls_pk_parse_keyfile(pk, data_path(name), NULL);
    if (rc != 0) {
        printf("cannot load %s: -0x%04x (run from the repo root or set "
               "IMGW_TEST_DATA)\n", data_path(name), (unsigned)-rc);
        exit(1);
    }
}

int
main(void)
{
    static const unsigned char pers[] = "imgw-test-jwt";

    mbedtls_entropy_init(&entropy);
    mbedtls_ctr_drbg_init(&drbg);
    if (mbedtls_ctr_drbg_seed(&drbg, mbedtls_entropy_func, &entropy, pers,
                              sizeof pers - 1) != 0) {
        printf("ctr_drbg_seed failed\n");
        return 1;
    }
    load_private(&rsa_key, "rsa_private.pem");
    load_private(&rsa_other, "rsa_other_private.pem");
    load_private(&ec_key, "ec_private.pem");
    load_private(&ec_other, "ec_other_private.pem");

    RUN(hs256);
    RUN(rs256);
    RUN(es256);
    RUN(user_id);
    RUN(time_claims);
    RUN(require_exp);
    RUN(secret_equal);
    RUN(issuer_audience);
    RUN(app_ids);
    RUN(key_hints_ignored);
    RUN(bad_alg);
    RUN(duplicates);
    RUN(sizes_and_depth);
    RUN(malformed);
    RUN(garbage_fuzz);
    RUN(alg_confusion);
    RUN(es256_signature_shape);
    RUN(new_errors);
    RUN(sign_hs256);
    RUN(interop);
    RUN(reasons);

    mbedtls_pk_free(&rsa_key);
    mbedtls_pk_free(&rsa_other);
    mbedtls_pk_free(&ec_key);
    mbedtls_pk_free(&ec_other);
    mbedtls_ctr_drbg_free(&drbg);
    mbedtls_entropy_free(&entropy);
    TEST_DONE();
}
