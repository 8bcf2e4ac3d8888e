/*
 * jwt.c: JSON Web Token verification and HS256 minting with mbedtls and
 * cJSON (protocol.md section 4; the contract is in jwt.h).
 *
 * Threads: a verifier belongs to the loop thread that created it, because
 * mbedtls key contexts are not safe for concurrent use; every loop builds its
 * own from the shared options. imgw_jwt_reason() and imgw_jwt_sign_hs256()
 * keep no state and may be called from any thread.
 *
 * Everything before the signature check is attacker-controlled, so
 * imgw_jwt_verify() works in a fixed order: bound and split the token, parse
 * only the header, take the algorithm from what is configured (the key is
 * never chosen by the token: kid, jku, x5u and friends are ignored), check
 * the signature over the raw "header.payload" text, and only then parse the
 * claims. Segments decode into one stack buffer bounded by
 * IMGW_JWT_MAX_TOKEN, reused segment after segment; every cJSON tree is
 * freed before returning.
 *
 * Note: cJSON 1.7 records parse errors in a process-wide variable, written
 * by every parse. The race is benign (we never read it) but ThreadSanitizer
 * will report it; suppress cJSON_ParseWithLengthOpts if it does.
 */
#include "jwt.h"

#include "alloc.h"
#include "utf8.h"
#include "err.h"

#include <cjson/cJSON.h>
#include <mbedtls/ecdsa.h>
#include <mbedtls/error.h>
#include <mbedtls/md.h>
#include <mbedtls/pk.h>
#include <mbedtls/platform_util.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/*
 * A real header is {"alg":..,"typ":..,"kid":..}, well under 100 bytes. The
 * header is parsed before anything is authenticated, so it gets a much
 * smaller budget than the whole token: that bounds the work (and the
 * duplicate-key scan, quadratic in the key count) a forger can buy.
 */
#define JWT_MAX_HEADER 1024
#define JWT_MAX_DEPTH 16 /* nesting allowed in header and payload JSON */
#define JWT_SHA256_LEN 32
#define JWT_ES256_SIG_LEN 64    /* raw r || s, RFC 7518 section 3.4 */
#define JWT_RSA_MIN_BITS 2048   /* RFC 7518 section 3.3: "MUST" */
#define JWT_MAX_EXACT 9007199254740992.0 /* 2^53: doubles stay integers */
#define JWT_MAX_KEY_FILE (64 * 1024) /* a 16384-bit RSA PEM is ~3 KiB */

/* Algorithms a verifier can accept; positive so they never look like an
   imgw_jwt_result_t. */
enum { JWT_ALG_HS256 = 1, JWT_ALG_RS256, JWT_ALG_ES256 };

struct imgw_jwt_s {
    unsigned char *secret;  /* owned copy of hs256_secret; NULL = no HS256 */
    size_t secret_len;
    mbedtls_pk_context pk;  /* public key; initialised even when unused */
    int pk_alg;             /* JWT_ALG_RS256, JWT_ALG_ES256, or 0 = no key */
    int leeway;             /* seconds, >= 0 */
    int exp_optional;       /* 1 = a token without exp is accepted */
    char *issuer;           /* owned; NULL = not checked */
    char *audience;         /* owned; NULL = not checked */
    char *app_ids;          /* owned comma list; NULL = not checked */
};

/* ---- small helpers ---------------------------------------------------- */

static int
jwt_nonempty(const char *s)
{
    return s != NULL && s[0] != '\0';
}

/*
 * mbedtls 2.28 keeps its constant-time compare private. This loop reads
 * every byte whatever differs, so the time taken does not tell a forger how
 * much of a guessed MAC was right.
 */
static int
jwt_ct_equal(const unsigned char *a, const unsigned char *b, size_t n)
{
    volatile unsigned char diff = 0;

    for (size_t i = 0; i < n; i++)
        diff |= a[i] ^ b[i];
    return diff == 0;
}

static int
jwt_b64url_digit(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '-')
        return 62;
    if (c == '_')
        return 63;
    return -1;
}

/*
 * Decodes unpadded base64url src[0..n) into dst, which has room for n * 3 / 4
 * bytes. Returns the decoded length, or -1 for a character outside the
 * alphabet (padding '=' included, RFC 7515 section 2 omits it), a length of
 * 4k+1, or nonzero unused bits in the last character. The last rule makes
 * the encoding canonical: one byte string, one token text.
 */
static int
jwt_b64url_decode(const char *src, size_t n, unsigned char *dst)
{
    uint32_t acc = 0;
    int bits = 0;
    int out = 0;

    if (n % 4 == 1)
        return -1;
    for (size_t i = 0; i < n; i++) {
        int v = jwt_b64url_digit((unsigned char)src[i]);
        if (v < 0)
            return -1;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            dst[out++] = (unsigned char)(acc >> bits);
        }
    }
    if (acc & ((1u << bits) - 1))
        return -1;
    return out;
}

static size_t
jwt_b64url_len(size_t n)
{
    return (n * 4 + 2) / 3;
}

/* Encodes src[0..n) into dst (jwt_b64url_len(n) bytes, no NUL). */
static size_t
jwt_b64url_encode(const unsigned char *src, size_t n, char *dst)
{
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    uint32_t acc = 0;
    int bits = 0;
    size_t out = 0;

    for (size_t i = 0; i < n; i++) {
        acc = (acc << 8) | src[i];
        bits += 8;
        while (bits >= 6) {
            bits -= 6;
            dst[out++] = alphabet[(acc >> bits) & 63];
        }
    }
    if (bits > 0)
        dst[out++] = alphabet[(acc << (6 - bits)) & 63];
    return out;
}

/*
 * A flat pass before cJSON. cJSON recurses once per nesting level up to its
 * own limit of 1000, so depth is capped here where it is cheap. It also
 * refuses what cJSON would silently mangle or wrongly accept: a NUL byte or
 * a \u0000 escape ends a cJSON string early ("alice\u0000x" would become
 * user "alice"), and cJSON takes every control byte for whitespace and
 * keeps raw ones inside strings, where RFC 8259 allows neither.
 */
static int
jwt_json_prescan(const unsigned char *s, size_t n)
{
    int depth = 0;
    int in_str = 0;

    for (size_t i = 0; i < n; i++) {
        unsigned char c = s[i];

        if (c < 0x20 && (in_str || (c != '\t' && c != '\n' && c != '\r')))
            return -1;
        if (in_str) {
            if (c == '\\') {
                if (i + 5 < n && s[i + 1] == 'u' &&
                    memcmp(s + i + 2, "0000", 4) == 0)
                    return -1;
                i++; /* skip the escaped byte so \" does not end the string */
            } else if (c == '"') {
                in_str = 0;
            }
        } else if (c == '"') {
            in_str = 1;
        } else if (c == '{' || c == '[') {
            if (++depth > JWT_MAX_DEPTH)
                return -1;
        } else if (c == '}' || c == ']') {
            depth--;
        }
    }
    return 0;
}

/*
 * cJSON keeps every duplicate and its lookups return the first, while other
 * JWT libraries take the last: a token that means different things to
 * different readers is refused. Only the top level carries claims.
 */
static int
jwt_has_dup_keys(const cJSON *obj)
{
    for (const cJSON *a = obj->child; a != NULL; a = a->next)
        for (const cJSON *b = a->next; b != NULL; b = b->next)
            if (strcmp(a->string, b->string) == 0)
                return 1;
    return 0;
}

/*
 * Decodes one base64url segment into buf (room for n * 3 / 4 + 1 bytes) and
 * parses it as a JSON object of at most max bytes. Returns the tree (caller
 * frees) or NULL when anything about it is malformed.
 */
static cJSON *
jwt_parse_segment(const char *seg, size_t n, unsigned char *buf, size_t max)
{
    cJSON *obj;
    int len;

    len = jwt_b64url_decode(seg, n, buf);
    if (len <= 0 || (size_t)len > max)
        return NULL;
    buf[len] = '\0';
    if (!imgw_utf8_valid(buf, (size_t)len) ||
        jwt_json_prescan(buf, (size_t)len) != 0)
        return NULL;
    /* require_null_terminated: trailing bytes after the object are an
       error, not ignored. */
    obj = cJSON_ParseWithOpts((const char *)buf, NULL, 1);
    if (obj == NULL)
        return NULL;
    if (!cJSON_IsObject(obj) || jwt_has_dup_keys(obj)) {
        cJSON_Delete(obj);
        return NULL;
    }
    return obj;
}

/* Always the case-sensitive lookup: cJSON_GetObjectItem() would take "SUB"
   for "sub". */
static const cJSON *
jwt_get(const cJSON *obj, const char *key)
{
    return cJSON_GetObjectItemCaseSensitive(obj, key);
}

/*
 * An id (user or app) becomes a Redis key part, a log field and a protobuf
 * string: non-empty, shorter than its buffer, no control bytes. The JSON was
 * already checked to be UTF-8.
 */
static int
jwt_id_ok(const char *s, size_t n, size_t max)
{
    if (n == 0 || n >= max)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f)
            return 0;
    }
    return 1;
}

/* ---- raw member text --------------------------------------------------- */

/*
 * cJSON keeps only the double of a number, and a double has already lost
 * what matters for an id: "9007199254740993" parses to 2^53 and would name
 * another user. So numeric ids are read from the token text. The payload
 * was accepted by cJSON with require_null_terminated, so it is one valid
 * JSON object; these walkers only need to find where its members start and
 * end, and they still stop at the NUL whatever they meet.
 */
static const char *
jwt_skip_ws(const char *p)
{
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
        p++;
    return p;
}

/* p is at an opening quote; returns the byte after the closing one. */
static const char *
jwt_skip_string(const char *p)
{
    p++;
    while (*p != '\0' && *p != '"') {
        if (*p == '\\' && p[1] != '\0')
            p++;
        p++;
    }
    return *p == '"' ? p + 1 : p;
}

/* Returns the end of the value at p: the ',' or '}' of the enclosing
   object that follows it (or the NUL). */
static const char *
jwt_skip_value(const char *p)
{
    int depth = 0;

    while (*p != '\0') {
        if (depth == 0 && (*p == ',' || *p == '}'))
            break;
        if (*p == '"') {
            p = jwt_skip_string(p);
            continue;
        }
        if (*p == '{' || *p == '[')
            depth++;
        else if (*p == '}' || *p == ']')
            depth--;
        p++;
    }
    return p;
}

/*
 * Finds the text of the value of member number index (0-based, in document
 * order, which is also the order of cJSON's child list) of the top-level
 * object json. Sets *start and *n, blanks trimmed. Returns 0 or -1.
 */
static int
jwt_member_text(const char *json, size_t index, const char **start, size_t *n)
{
    const char *p = jwt_skip_ws(json);
    const char *end;

    if (*p != '{')
        return -1;
    p++;
    for (size_t i = 0;; i++) {
        p = jwt_skip_ws(p);
        if (*p != '"')
            return -1;
        p = jwt_skip_ws(jwt_skip_string(p));
        if (*p != ':')
            return -1;
        p = jwt_skip_ws(p + 1);
        end = jwt_skip_value(p);
        if (i == index) {
            while (end > p && (end[-1] == ' ' || end[-1] == '\t' ||
                               end[-1] == '\n' || end[-1] == '\r'))
                end--;
            *start = p;
            *n = (size_t)(end - p);
            return 0;
        }
        if (*end != ',')
            return -1;
        p = end + 1;
    }
}

/*
 * Whether t[0..n) is a plain JSON integer of at most 2^53 in magnitude:
 * digits with an optional '-', no fraction, no exponent, not "-0". Within
 * 2^53 every reader of the token, JavaScript included, sees the same
 * integer; "1e3" or "42.0" are refused because readers disagree on whether
 * those are integers at all (Python's json makes them floats).
 */
static int
jwt_exact_int_text(const char *t, size_t n)
{
    uint64_t v = 0;
    size_t i = 0;

    if (n > 0 && t[0] == '-')
        i = 1;
    if (i == n || n - i > 16) /* 2^53 has 16 digits */
        return 0;
    if (t[i] == '0' && n - i > 1)
        return 0;
    for (size_t k = i; k < n; k++) {
        if (t[k] < '0' || t[k] > '9')
            return 0;
        v = v * 10 + (uint64_t)(t[k] - '0');
    }
    if (v > ((uint64_t)1 << 53))
        return 0;
    return !(i == 1 && v == 0);
}

/*
 * Copies a string or integer id claim into dst[max]. An integer is copied
 * as its token text, which jwt_exact_int_text() makes canonical. json is
 * the payload text the claim came from, obj its parsed top level. Returns
 * 0 or -1.
 */
static int
jwt_id_copy(const char *json, const cJSON *obj, const cJSON *item, char *dst,
            size_t max)
{
    if (cJSON_IsString(item)) {
        size_t n = strlen(item->valuestring);
        if (!jwt_id_ok(item->valuestring, n, max))
            return -1;
        memcpy(dst, item->valuestring, n + 1);
        return 0;
    }
    if (cJSON_IsNumber(item)) {
        const cJSON *it = obj->child;
        const char *t;
        size_t index = 0, n;

        while (it != NULL && it != item) {
            it = it->next;
            index++;
        }
        if (it == NULL || jwt_member_text(json, index, &t, &n) != 0 ||
            !jwt_exact_int_text(t, n) || n >= max)
            return -1;
        memcpy(dst, t, n);
        dst[n] = '\0';
        return 0;
    }
    return -1;
}

/* Whether id is one of the entries of a comma list (blanks around entries
   are ignored). */
static int
jwt_list_has(const char *list, const char *id)
{
    size_t idlen = strlen(id);
    const char *p = list;

    for (;;) {
        const char *end = strchr(p, ',');
        const char *stop = end != NULL ? end : p + strlen(p);
        while (p < stop && (*p == ' ' || *p == '\t'))
            p++;
        while (stop > p && (stop[-1] == ' ' || stop[-1] == '\t'))
            stop--;
        if ((size_t)(stop - p) == idlen && idlen > 0 &&
            memcmp(p, id, idlen) == 0)
            return 1;
        if (end == NULL)
            return 0;
        p = end + 1;
    }
}

static int
jwt_list_empty(const char *list)
{
    for (const char *p = list; *p != '\0'; p++)
        if (*p != ',' && *p != ' ' && *p != '\t')
            return 0;
    return 1;
}

/* RFC 7519 section 4.1.3: aud is one string or an array of strings. */
static int
jwt_aud_ok(const cJSON *aud, const char *want)
{
    const cJSON *it;

    if (cJSON_IsString(aud))
        return strcmp(aud->valuestring, want) == 0;
    if (!cJSON_IsArray(aud))
        return 0;
    cJSON_ArrayForEach(it, aud)
        if (cJSON_IsString(it) && strcmp(it->valuestring, want) == 0)
            return 1;
    return 0;
}

/*
 * A NumericDate (exp, nbf, iat) must be a finite number of seconds in
 * [0, 2^53]: cJSON turns 1e999 into infinity, which would make a token that
 * never expires, and nothing real is negative or beyond year 285 million.
 * Fractions are allowed (RFC 7519 section 2).
 */
static int
jwt_time_ok(const cJSON *t)
{
    return t == NULL || (cJSON_IsNumber(t) && t->valuedouble >= 0.0 &&
                         t->valuedouble <= JWT_MAX_EXACT);
}

/* ---- verifier ----------------------------------------------------------- */

static int
jwt_load_key(imgw_jwt_t *j, const char *path, char *err, size_t errlen)
{
    char msg[128];
    struct stat st;
    int rc;

    /* mbedtls sizes its read buffer with ftell(), which on a directory
       gives LONG_MAX: look before letting it allocate. */
    if (stat(path, &st) != 0) {
        imgw_err_fmt(err, errlen, "jwt: cannot read public key %s: %s", path,
                     strerror(errno));
        return IMGW_ECONFIG;
    }
    if (!S_ISREG(st.st_mode) || st.st_size > JWT_MAX_KEY_FILE) {
        imgw_err_fmt(err, errlen,
                     "jwt: public key %s is not a regular file of at most %d "
                     "bytes",
                     path, JWT_MAX_KEY_FILE);
        return IMGW_ECONFIG;
    }
    rc = mbedtls_pk_parse_public_keyfile(&j->pk, path);
    if (rc != 0) {
        mbedtls_strerror(rc, msg, sizeof msg);
        imgw_err_fmt(err, errlen,
                     "jwt: cannot load public key %s: %s (want a PEM or DER "
                     "public key, not a private key or certificate)",
                     path, msg);
        return IMGW_ECONFIG;
    }
    switch (mbedtls_pk_get_type(&j->pk)) {
    case MBEDTLS_PK_RSA:
        if (mbedtls_pk_get_bitlen(&j->pk) < JWT_RSA_MIN_BITS) {
            imgw_err_fmt(
                err, errlen,
                "jwt: RSA key %s has %zu bits, RS256 needs at least %d", path,
                mbedtls_pk_get_bitlen(&j->pk), JWT_RSA_MIN_BITS);
            return IMGW_ECONFIG;
        }
        j->pk_alg = JWT_ALG_RS256;
        return 0;
    case MBEDTLS_PK_ECKEY:
    case MBEDTLS_PK_ECDSA:
        if (mbedtls_pk_ec(j->pk)->grp.id != MBEDTLS_ECP_DP_SECP256R1) {
            imgw_err_fmt(err, errlen,
                         "jwt: EC key %s is not on P-256, the only curve of "
                         "ES256",
                         path);
            return IMGW_ECONFIG;
        }
        j->pk_alg = JWT_ALG_ES256;
        return 0;
    default:
        imgw_err_fmt(err, errlen, "jwt: key %s is neither RSA nor EC P-256",
                     path);
        return IMGW_ECONFIG;
    }
}

static int
jwt_dup_opt(char **dst, const char *src)
{
    if (!jwt_nonempty(src))
        return 0;
    *dst = imgw_try_strdup(src);
    return *dst != NULL ? 0 : IMGW_ENOMEM;
}

int
imgw_jwt_new(imgw_jwt_t **out, const imgw_jwt_opts_t *opts, char *err,
             size_t errlen)
{
    imgw_jwt_t *j;
    int rc;

    if (out == NULL || opts == NULL) {
        imgw_err_fmt(err, errlen, "jwt: no options");
        return IMGW_EINVAL;
    }
    *out = NULL;
    j = imgw_try_calloc(1, sizeof *j);
    if (j == NULL) {
        imgw_err_fmt(err, errlen, "jwt: out of memory");
        return IMGW_ENOMEM;
    }
    mbedtls_pk_init(&j->pk);
    j->leeway = opts->leeway > 0 ? opts->leeway : 0;
    j->exp_optional = opts->exp_optional != 0;

    rc = 0;
    if (jwt_nonempty(opts->hs256_secret)) {
        j->secret_len = strlen(opts->hs256_secret);
        j->secret = imgw_try_malloc(j->secret_len);
        if (j->secret == NULL)
            rc = IMGW_ENOMEM;
        else
            memcpy(j->secret, opts->hs256_secret, j->secret_len);
    }
    if (rc == 0)
        rc = jwt_dup_opt(&j->issuer, opts->issuer);
    if (rc == 0)
        rc = jwt_dup_opt(&j->audience, opts->audience);
    if (rc == 0)
        rc = jwt_dup_opt(&j->app_ids, opts->app_ids);
    if (rc != 0) {
        imgw_err_fmt(err, errlen, "jwt: out of memory");
        imgw_jwt_free(j);
        return rc;
    }
    /* A list of only commas would refuse every token; say so at startup
       rather than at the first login. */
    if (j->app_ids != NULL && jwt_list_empty(j->app_ids)) {
        imgw_err_fmt(err, errlen, "jwt: app_ids \"%s\" names no app",
                     j->app_ids);
        imgw_jwt_free(j);
        return IMGW_ECONFIG;
    }
    if (jwt_nonempty(opts->public_key_pem)) {
        rc = jwt_load_key(j, opts->public_key_pem, err, errlen);
        if (rc != 0) {
            imgw_jwt_free(j);
            return rc;
        }
    }
    *out = j;
    return 0;
}

void
imgw_jwt_free(imgw_jwt_t *j)
{
    if (j == NULL)
        return;
    if (j->secret != NULL) {
        mbedtls_platform_zeroize(j->secret, j->secret_len);
        imgw_free(j->secret);
    }
    mbedtls_pk_free(&j->pk);
    imgw_free(j->issuer);
    imgw_free(j->audience);
    imgw_free(j->app_ids);
    imgw_free(j);
}

/*
 * Parses the header and returns the JWT_ALG_* to verify with, or a negative
 * imgw_jwt_result_t. Only "alg" is read (and "crit", see below): the key is
 * whatever is configured for that algorithm, never something the token names.
 */
static int
jwt_header_alg(const imgw_jwt_t *j, const char *seg, size_t n,
               unsigned char *buf)
{
    const cJSON *alg;
    cJSON *hdr;
    int r;

    hdr = jwt_parse_segment(seg, n, buf, JWT_MAX_HEADER);
    if (hdr == NULL)
        return IMGW_JWT_MALFORMED;
    alg = jwt_get(hdr, "alg");
    /* Names are case-sensitive (RFC 7515 section 4.1.1), so "none" in any
       case, like every name not listed, falls to BAD_ALG. */
    if (!cJSON_IsString(alg))
        r = IMGW_JWT_BAD_ALG;
    else if (strcmp(alg->valuestring, "HS256") == 0)
        r = j->secret != NULL ? JWT_ALG_HS256 : IMGW_JWT_BAD_ALG;
    else if (strcmp(alg->valuestring, "RS256") == 0)
        r = j->pk_alg == JWT_ALG_RS256 ? JWT_ALG_RS256 : IMGW_JWT_BAD_ALG;
    else if (strcmp(alg->valuestring, "ES256") == 0)
        r = j->pk_alg == JWT_ALG_ES256 ? JWT_ALG_ES256 : IMGW_JWT_BAD_ALG;
    else
        r = IMGW_JWT_BAD_ALG;
    /* RFC 7515 section 4.1.11: a token must be refused when "crit" lists
       extensions we do not implement, and we implement none. */
    if (r > 0 && jwt_get(hdr, "crit") != NULL)
        r = IMGW_JWT_MALFORMED;
    cJSON_Delete(hdr);
    return r;
}

static imgw_jwt_result_t
jwt_es256_verify(imgw_jwt_t *j, const unsigned char *hash,
                 const unsigned char *sig)
{
    /* JWS carries r || s, not the DER that mbedtls_pk_verify() expects, so
       go one level down to the keypair. (grp and Q are private fields in
       mbedtls 3; this needs mbedtls_ecp_export() there.) */
    mbedtls_ecp_keypair *ec = mbedtls_pk_ec(j->pk);
    mbedtls_mpi r, s;
    int rc;

    mbedtls_mpi_init(&r);
    mbedtls_mpi_init(&s);
    rc = mbedtls_mpi_read_binary(&r, sig, JWT_ES256_SIG_LEN / 2);
    if (rc == 0)
        rc = mbedtls_mpi_read_binary(&s, sig + JWT_ES256_SIG_LEN / 2,
                                     JWT_ES256_SIG_LEN / 2);
    if (rc == 0)
        rc = mbedtls_ecdsa_verify(&ec->grp, hash, JWT_SHA256_LEN, &ec->Q, &r,
                                  &s);
    mbedtls_mpi_free(&r);
    mbedtls_mpi_free(&s);
    return rc == 0 ? IMGW_JWT_OK : IMGW_JWT_BAD_SIG;
}

/* Checks the signature segment seg[0..n) over input[0..ilen), the raw
   "header.payload" text. buf receives the decoded signature. */
static imgw_jwt_result_t
jwt_check_sig(imgw_jwt_t *j, int alg, const char *input, size_t ilen,
              const char *seg, size_t n, unsigned char *buf)
{
    const mbedtls_md_info_t *sha256 =
        mbedtls_md_info_from_type(MBEDTLS_MD_SHA256);
    unsigned char mac[JWT_SHA256_LEN];
    imgw_jwt_result_t r = IMGW_JWT_BAD_SIG;
    int siglen;

    siglen = jwt_b64url_decode(seg, n, buf);
    if (siglen < 0)
        return IMGW_JWT_MALFORMED;
    if (sha256 == NULL)
        return IMGW_JWT_BAD_SIG;

    switch (alg) {
    case JWT_ALG_HS256:
        /* The length is public; only the bytes need constant time. */
        if (siglen == JWT_SHA256_LEN &&
            mbedtls_md_hmac(sha256, j->secret, j->secret_len,
                            (const unsigned char *)input, ilen, mac) == 0 &&
            jwt_ct_equal(mac, buf, JWT_SHA256_LEN))
            r = IMGW_JWT_OK;
        break;
    case JWT_ALG_RS256:
        if ((size_t)siglen == mbedtls_pk_get_len(&j->pk) &&
            mbedtls_md(sha256, (const unsigned char *)input, ilen, mac) == 0 &&
            mbedtls_pk_verify(&j->pk, MBEDTLS_MD_SHA256, mac, sizeof mac, buf,
                              (size_t)siglen) == 0)
            r = IMGW_JWT_OK;
        break;
    case JWT_ALG_ES256:
        if (siglen == JWT_ES256_SIG_LEN &&
            mbedtls_md(sha256, (const unsigned char *)input, ilen, mac) == 0)
            r = jwt_es256_verify(j, mac, buf);
        break;
    default:
        break;
    }
    /* The expected MAC for a forged payload is exactly what a forger
       wants; leave none of it on the stack. */
    mbedtls_platform_zeroize(mac, sizeof mac);
    return r;
}

/* Applies the claim rules of protocol.md section 4 to a verified payload:
   json is its text, p the parsed object. */
static imgw_jwt_result_t
jwt_check_claims(const imgw_jwt_t *j, const char *json, const cJSON *p,
                 int64_t now, imgw_jwt_claims_t *c)
{
    const cJSON *exp = jwt_get(p, "exp");
    const cJSON *nbf = jwt_get(p, "nbf");
    const cJSON *iat = jwt_get(p, "iat");
    const cJSON *app, *user;

    /* NaN fails both comparisons of jwt_time_ok(), so it is refused too
       (cJSON cannot produce it from valid JSON anyway). */
    if (!jwt_time_ok(exp) || !jwt_time_ok(nbf) || !jwt_time_ok(iat))
        return IMGW_JWT_MALFORMED;
    /* A token without exp is good forever once leaked; refused unless the
       operator opted out (auth.require_exp = false). */
    if (exp == NULL && !j->exp_optional)
        return IMGW_JWT_BAD_CLAIM;
    /* In doubles: NumericDate may be fractional or huge, and now is exact
       far beyond any real clock. */
    if (exp != NULL && (double)now > exp->valuedouble + j->leeway)
        return IMGW_JWT_EXPIRED;
    if (nbf != NULL && (double)now + j->leeway < nbf->valuedouble)
        return IMGW_JWT_NOT_YET;

    if (j->issuer != NULL) {
        const cJSON *iss = jwt_get(p, "iss");
        if (!cJSON_IsString(iss) || strcmp(iss->valuestring, j->issuer) != 0)
            return IMGW_JWT_BAD_CLAIM;
    }
    if (j->audience != NULL && !jwt_aud_ok(jwt_get(p, "aud"), j->audience))
        return IMGW_JWT_BAD_CLAIM;

    app = jwt_get(p, "app_id");
    if (app != NULL &&
        jwt_id_copy(json, p, app, c->app_id, sizeof c->app_id) != 0)
        return IMGW_JWT_BAD_CLAIM;
    if (j->app_ids != NULL &&
        (app == NULL || !jwt_list_has(j->app_ids, c->app_id)))
        return IMGW_JWT_BAD_CLAIM;

    /* The first claim present decides: an invalid "sub" does not fall back
       to "user_id", so one token never names two users. */
    user = jwt_get(p, "sub");
    if (user == NULL)
        user = jwt_get(p, "user_id");
    if (user == NULL)
        user = jwt_get(p, "uid");
    if (user == NULL ||
        jwt_id_copy(json, p, user, c->user_id, sizeof c->user_id) != 0)
        return IMGW_JWT_BAD_CLAIM;

    c->exp = exp != NULL ? (int64_t)exp->valuedouble : 0;
    return IMGW_JWT_OK;
}

imgw_jwt_result_t
imgw_jwt_verify(imgw_jwt_t *j, const char *token, size_t len, int64_t now,
                imgw_jwt_claims_t *claims)
{
    /* Decoded segments are at most 3/4 of len, plus the NUL cJSON needs. */
    unsigned char buf[IMGW_JWT_MAX_TOKEN];
    const char *dot1, *dot2, *end;
    imgw_jwt_claims_t c;
    imgw_jwt_result_t r;
    cJSON *payload;
    int alg;

    if (token == NULL || len == 0 || len > IMGW_JWT_MAX_TOKEN)
        return IMGW_JWT_MALFORMED;
    end = token + len;
    dot1 = memchr(token, '.', len);
    if (dot1 == NULL)
        return IMGW_JWT_MALFORMED;
    dot2 = memchr(dot1 + 1, '.', (size_t)(end - dot1 - 1));
    /* Exactly three parts: five would be a JWE, which we do not take. */
    if (dot2 == NULL || memchr(dot2 + 1, '.', (size_t)(end - dot2 - 1)))
        return IMGW_JWT_MALFORMED;
    if (dot1 == token || dot2 == dot1 + 1)
        return IMGW_JWT_MALFORMED;
    if (j == NULL)
        return IMGW_JWT_BAD_ALG;

    alg = jwt_header_alg(j, token, (size_t)(dot1 - token), buf);
    if (alg < 0)
        return (imgw_jwt_result_t)alg;
    r = jwt_check_sig(j, alg, token, (size_t)(dot2 - token), dot2 + 1,
                      (size_t)(end - dot2 - 1), buf);
    if (r != IMGW_JWT_OK)
        return r;

    payload = jwt_parse_segment(dot1 + 1, (size_t)(dot2 - dot1 - 1), buf,
                                sizeof buf - 1);
    if (payload == NULL)
        return IMGW_JWT_MALFORMED;
    memset(&c, 0, sizeof c);
    r = jwt_check_claims(j, (const char *)buf, payload, now, &c);
    cJSON_Delete(payload);
    if (r == IMGW_JWT_OK && claims != NULL)
        *claims = c;
    return r;
}

int
imgw_jwt_secret_equal(const void *a, size_t alen, const void *b, size_t blen)
{
    const mbedtls_md_info_t *sha256 =
        mbedtls_md_info_from_type(MBEDTLS_MD_SHA256);
    unsigned char da[JWT_SHA256_LEN], db[JWT_SHA256_LEN];
    int eq;

    if (sha256 == NULL || (a == NULL && alen > 0) || (b == NULL && blen > 0))
        return 0;
    if (mbedtls_md(sha256, a, alen, da) != 0 ||
        mbedtls_md(sha256, b, blen, db) != 0)
        return 0;
    eq = jwt_ct_equal(da, db, JWT_SHA256_LEN);
    mbedtls_platform_zeroize(da, sizeof da);
    mbedtls_platform_zeroize(db, sizeof db);
    return eq;
}

const char *
imgw_jwt_reason(imgw_jwt_result_t r)
{
    switch (r) {
    case IMGW_JWT_OK:
        return "ok";
    case IMGW_JWT_MALFORMED:
        return "malformed";
    case IMGW_JWT_BAD_ALG:
        return "bad_alg";
    case IMGW_JWT_BAD_SIG:
        return "bad_signature";
    case IMGW_JWT_EXPIRED:
        return "expired";
    case IMGW_JWT_NOT_YET:
        return "not_yet_valid";
    case IMGW_JWT_BAD_CLAIM:
        return "bad_claim";
    }
    return "unknown";
}

/* ---- minting ------------------------------------------------------------ */

/*
 * Why the checks: a minted token must pass imgw_jwt_verify(), so the user
 * obeys the same rules (1..127 bytes of UTF-8, no control bytes, which also
 * means only '"' and '\\' need escaping).
 */
int
imgw_jwt_sign_hs256(const char *secret, const char *user, int64_t now,
                    int64_t ttl, char *out, size_t outlen)
{
    static const char header[] = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";
    const mbedtls_md_info_t *sha256 =
        mbedtls_md_info_from_type(MBEDTLS_MD_SHA256);
    char payload[2 * IMGW_JWT_MAX_USER + 96];
    unsigned char mac[JWT_SHA256_LEN];
    size_t ulen, plen, hb, pb, need;
    int n;

    if (!jwt_nonempty(secret) || user == NULL || out == NULL)
        return IMGW_EINVAL;
    ulen = strlen(user);
    if (!jwt_id_ok(user, ulen, IMGW_JWT_MAX_USER) ||
        !imgw_utf8_valid((const uint8_t *)user, ulen))
        return IMGW_EINVAL;
    if ((ttl > 0 && now > INT64_MAX - ttl) ||
        (ttl < 0 && now < INT64_MIN - ttl))
        return IMGW_EINVAL;

    memcpy(payload, "{\"sub\":\"", 8);
    plen = 8;
    for (size_t i = 0; i < ulen; i++) {
        if (user[i] == '"' || user[i] == '\\')
            payload[plen++] = '\\';
        payload[plen++] = user[i];
    }
    n = snprintf(payload + plen, sizeof payload - plen,
                 "\",\"iat\":%lld,\"exp\":%lld}", (long long)now,
                 (long long)(now + ttl));
    if (n < 0 || (size_t)n >= sizeof payload - plen)
        return IMGW_EINVAL; /* cannot happen: sized for the worst case */
    plen += (size_t)n;

    hb = jwt_b64url_len(sizeof header - 1);
    pb = jwt_b64url_len(plen);
    need = hb + 1 + pb + 1 + jwt_b64url_len(JWT_SHA256_LEN);
    if (sha256 == NULL)
        return IMGW_EINVAL;
    if (need + 1 > outlen)
        return IMGW_ETOOBIG;

    jwt_b64url_encode((const unsigned char *)header, sizeof header - 1, out);
    out[hb] = '.';
    jwt_b64url_encode((const unsigned char *)payload, plen, out + hb + 1);
    out[hb + 1 + pb] = '.';
    if (mbedtls_md_hmac(sha256, (const unsigned char *)secret, strlen(secret),
                        (const unsigned char *)out, hb + 1 + pb, mac) != 0)
        return IMGW_EINVAL;
    jwt_b64url_encode(mac, sizeof mac, out + hb + 1 + pb + 1);
    out[need] = '\0';
    mbedtls_platform_zeroize(mac, sizeof mac);
    return (int)need;
}
