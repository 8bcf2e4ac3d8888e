/*
 * fuzz_jwt: imgw_jwt_verify() on arbitrary tokens, as the AuthRequest
 * token or the ?token= query parameter reaches it.
 *
 * Three verifiers, chosen by byte 0: HS256 + the RSA public key, HS256 +
 * the EC P-256 public key with issuer/audience/app_ids rules, and HS256
 * only with leeway. The rest of the input is the token (in a heap buffer
 * of exactly its size). "now" is fixed so that the seed tokens' exp/nbf
 * claims behave the same on every run.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jwt.h"
#include "log.h"

#ifndef IMGW_FUZZ_ROOT
#define IMGW_FUZZ_ROOT "."
#endif
#define KEYS IMGW_FUZZ_ROOT "/test/unit/data/jwt/"
#define FUZZ_NOW 1700000000

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static imgw_jwt_t *v[3];

static void
init(void)
{
    char err[256];
    const imgw_jwt_opts_t o[3] = {
        {"fuzz-secret", KEYS "rsa_public.pem", 0, NULL, NULL, NULL, 0},
        {"fuzz-secret", KEYS "ec_public.pem", 30, "imgw", "chat", "app1,app2",
         0},
        /* The one verifier that takes tokens without exp, so the claim
           checks after it are reached without one. */
        {"fuzz-secret", NULL, 60, NULL, "chat", NULL, 1},
    };
    imgw_log_set_level(IMGW_LOG_OFF);
    for (int i = 0; i < 3; i++) {
        if (imgw_jwt_new(&v[i], &o[i], err, sizeof(err)) != 0) {
            fprintf(stderr, "fuzz_jwt: verifier %d: %s\n", i, err);
            abort();
        }
    }
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    imgw_jwt_claims_t claims;
    if (v[0] == NULL)
        init();
    if (size < 1)
        return 0;
    size_t len = size - 1;
    char *tok = malloc(len ? len : 1);
    if (tok == NULL)
        abort();
    memcpy(tok, data + 1, len);
    memset(&claims, 0xA5, sizeof(claims));
    imgw_jwt_result_t r =
        imgw_jwt_verify(v[data[0] % 3], tok, len, FUZZ_NOW, &claims);
    if (r == IMGW_JWT_OK) {
        /* Claims must be terminated strings and a user id is required. */
        if (memchr(claims.user_id, 0, sizeof(claims.user_id)) == NULL ||
            memchr(claims.app_id, 0, sizeof(claims.app_id)) == NULL ||
            claims.user_id[0] == '\0')
            abort();
    } else if (r < IMGW_JWT_BAD_CLAIM || r > 0) {
        abort();
    }
    (void)imgw_jwt_reason(r);
    free(tok);
    return 0;
}
