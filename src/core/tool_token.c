/*
 * tool_token.c: imgw-token, mints an HS256 development token.
 *
 *   imgw-token [-s SECRET] [-t TTL_SECONDS] USER
 *
 * The secret defaults to $IMGW__AUTH__JWT_SECRET. For development and
 * tests only: production tokens come from your identity service.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "jwt.h"

int
main(int argc, char **argv)
{
    const char *secret = getenv("IMGW__AUTH__JWT_SECRET");
    long ttl = 86400;
    const char *user = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-s") == 0 && i + 1 < argc)
            secret = argv[++i];
        else if (strcmp(argv[i], "-t") == 0 && i + 1 < argc)
            ttl = strtol(argv[++i], NULL, 10);
        else if (argv[i][0] == '-') {
            fprintf(stderr, "usage: imgw-token [-s SECRET] [-t TTL] USER\n");
            return 2;
        } else
            user = argv[i];
    }
    if (user == NULL || secret == NULL || secret[0] == '\0') {
        fprintf(stderr, "usage: imgw-token [-s SECRET] [-t TTL] USER "
                        "(or set IMGW__AUTH__JWT_SECRET)\n");
        return 2;
    }
    char tok[2048];
    int n = imgw_jwt_sign_hs256(secret, user, (int64_t)time(NULL), ttl, tok,
                                sizeof(tok));
    if (n < 0) {
        fprintf(stderr, "imgw-token: cannot sign\n");
        return 1;
    }
    puts(tok);
    return 0;
}
