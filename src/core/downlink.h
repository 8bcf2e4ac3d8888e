/*
 * downlink.h: the business downlink (protocol.md section 8), one handler
 * for POST /api/push (api.c) and for the broker's messages (the MQ mail a
 * loop receives). Internal to src/core. Loop thread only.
 */
#ifndef IMGW_DOWNLINK_H
#define IMGW_DOWNLINK_H

#include "session.h"

struct cJSON;

/* The downlink body {code, ids, data, broadcast}: encoded once per codec,
 * delivered to the users' connections on this node. Returns the HTTP
 * status (200, 400, 503), fills *targets and, unless 200, *why (a static
 * sentence). */
int imgw_downlink_push(imgw_core_loop_t *cl, const struct cJSON *j,
                       size_t *targets, const char **why);
/* An IMGW_MAIL_MQ mail: parsed by cluster.c, routed through deliver.c,
 * settled with the broker. Frees m. */
void imgw_downlink_mail(imgw_core_loop_t *cl, imgw_mail_t *m);

#endif
