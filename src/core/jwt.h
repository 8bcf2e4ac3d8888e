/*
 * jwt.h: JSON Web Token verification (protocol.md section 4) with mbedtls.
 *
 * A verifier holds the parsed keys and the claim rules. It is NOT shared
 * between threads (mbedtls key contexts are not safe for concurrent use):
 * every loop creates its own from the same options.
 */
#ifndef IMGW_JWT_H
#define IMGW_JWT_H

#include <stddef.h>
#include <stdint.h>

typedef struct imgw_jwt_s imgw_jwt_t;

typedef struct imgw_jwt_opts_s {
    const char *hs256_secret;   /* NULL or "" = HS256 not accepted */
    const char *public_key_pem; /* path of a PEM public key (RSA -> RS256,
                                   EC P-256 -> ES256); NULL/"" = none */
    int leeway;                 /* seconds of skew allowed on exp/nbf */
    const char *issuer;         /* NULL/"" = not checked */
    const char *audience;       /* NULL/"" = not checked (aud may be a
                                   string or an array of strings) */
    const char *app_ids;        /* comma list; NULL/"" = not checked */
    int exp_optional;           /* 0 (the default) = a token without exp
                                   is IMGW_JWT_BAD_CLAIM; 1 = accepted */
} imgw_jwt_opts_t;

#define IMGW_JWT_MAX_TOKEN 4096
#define IMGW_JWT_MAX_USER 128

typedef struct imgw_jwt_claims_s {
    char user_id[IMGW_JWT_MAX_USER]; /* sub, else user_id, else uid */
    char app_id[128];
    int64_t exp; /* 0 when absent */
} imgw_jwt_claims_t;

typedef enum imgw_jwt_result_e {
    IMGW_JWT_OK = 0,
    IMGW_JWT_MALFORMED = -1,   /* not three base64url parts, bad JSON... */
    IMGW_JWT_BAD_ALG = -2,     /* none, unknown, or not configured */
    IMGW_JWT_BAD_SIG = -3,
    IMGW_JWT_EXPIRED = -4,     /* exp + leeway < now */
    IMGW_JWT_NOT_YET = -5,     /* nbf - leeway > now */
    IMGW_JWT_BAD_CLAIM = -6,   /* iss/aud/app_id mismatch, no user id,
                                  no exp (unless exp_optional) */
} imgw_jwt_result_t;

/*
 * Creates a verifier. Returns 0 and sets *out, or a negative IMGW_E* code
 * with a message in err (e.g. unreadable or unparsable key file).
 */
int imgw_jwt_new(imgw_jwt_t **out, const imgw_jwt_opts_t *opts, char *err,
                 size_t errlen);
void imgw_jwt_free(imgw_jwt_t *j);

/*
 * Verifies token[0..len) at unix time now (seconds). Fills claims on
 * IMGW_JWT_OK. Signature comparison is constant-time. Tokens longer than
 * IMGW_JWT_MAX_TOKEN are IMGW_JWT_MALFORMED.
 */
imgw_jwt_result_t imgw_jwt_verify(imgw_jwt_t *j, const char *token, size_t len,
                                  int64_t now, imgw_jwt_claims_t *claims);

/*
 * Whether a[0..alen) equals b[0..blen), for comparing a presented secret
 * (the admin bearer token) with the configured one. Both are hashed with
 * SHA-256 and the digests compared in constant time, so neither the time
 * nor an early exit tells the caller how long the secret is or how much of
 * a guess was right. Returns 1 when equal, 0 otherwise. Any thread.
 */
int imgw_jwt_secret_equal(const void *a, size_t alen, const void *b,
                          size_t blen);

/** Short reason text for logs/metrics ("expired", "bad_signature", ...). */
const char *imgw_jwt_reason(imgw_jwt_result_t r);

/*
 * Mints an HS256 token {"sub":user,"iat":now,"exp":now+ttl} for the dev
 * token endpoint and the bench tool. Returns its length, or a negative
 * IMGW_E* code when out is too small.
 */
int imgw_jwt_sign_hs256(const char *secret, const char *user, int64_t now,
                        int64_t ttl, char *out, size_t outlen);

#endif
