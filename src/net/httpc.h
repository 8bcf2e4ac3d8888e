/*
 * httpc.h: the one HTTP client for imgw's outgoing calls (business hooks,
 * Nacos). libcurl's multi interface driven by a libuv loop: one client per
 * loop, requests never block the loop thread, connections are kept alive
 * and reused per host, HTTPS verifies the peer, each request has its own
 * timeout and a bound on the response body it keeps.
 *
 * Only httpc.c sees curl.h. Thread: every function except
 * imgw_httpc_global_init() runs on the thread of the loop given to
 * imgw_httpc_new(); callbacks run there too.
 */
#ifndef IMGW_HTTPC_H
#define IMGW_HTTPC_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

typedef struct imgw_httpc_s imgw_httpc_t;
typedef struct imgw_httpc_req_s imgw_httpc_req_t;

/* One request's outcome; valid only during the callback. */
typedef struct imgw_httpc_resp_s {
    int status;         /* 0 = an HTTP answer arrived; else IMGW_ETIMEDOUT,
                           IMGW_ETOOBIG (body over max_response), or
                           IMGW_EPROTO (connect, TLS, protocol: see error) */
    long http;          /* HTTP status code; 0 without an answer */
    const char *body;   /* NUL-terminated (the NUL is not counted) */
    size_t body_len;
    uint64_t elapsed_us;
    const char *error;  /* libcurl's reason when status != 0 */
} imgw_httpc_resp_t;

typedef void (*imgw_httpc_cb)(const imgw_httpc_resp_t *resp, void *arg);

typedef struct imgw_httpc_opts_s {
    const char *method;       /* "GET", "POST", "PUT", "DELETE" */
    const char *url;          /* http:// or https:// */
    const char *content_type; /* NULL: no Content-Type */
    const char *body;         /* copied; NULL/0: none */
    size_t body_len;
    const char *const *headers; /* "Name: value" lines, copied */
    size_t n_headers;
    uint64_t timeout_ms;      /* whole request, connect included */
    size_t max_response;      /* body bytes kept; more: IMGW_ETOOBIG */
} imgw_httpc_opts_t;

/* curl_global_init, once, on the main thread before any other thread
 * starts. Returns 0 or IMGW_ENOMEM. */
int imgw_httpc_global_init(void);

/* A client on loop. Returns 0, IMGW_ENOMEM. */
int imgw_httpc_new(imgw_httpc_t **out, uv_loop_t *loop);

/*
 * Abandons every request in flight (their callbacks never run) and closes
 * the client. Memory goes in libuv close callbacks: run the loop once more.
 * Safe inside a callback of this client. h may be NULL.
 */
void imgw_httpc_free(imgw_httpc_t *h);

/*
 * Starts a request; cb(resp, arg) runs exactly once, later, on the loop
 * (never inside this call), unless the request is cancelled or the client
 * freed first. *out (may be NULL) names the request for imgw_httpc_cancel
 * until its callback starts. Returns 0, IMGW_EINVAL or IMGW_ENOMEM (then
 * cb never runs).
 */
int imgw_httpc_request(imgw_httpc_t *h, const imgw_httpc_opts_t *o,
                       imgw_httpc_cb cb, void *arg, imgw_httpc_req_t **out);

/* Abandons r before its callback ran: the callback never runs. */
void imgw_httpc_cancel(imgw_httpc_t *h, imgw_httpc_req_t *r);

/* Requests started and not yet finished. */
size_t imgw_httpc_inflight(const imgw_httpc_t *h);

#endif
