/*
 * httpc.c: libcurl's multi interface on a libuv loop (see httpc.h).
 *
 * This is libcurl's documented event-loop integration
 * (curl_multi_socket_action, docs/examples/multi-uv.c): curl tells us, per
 * socket, what to wait for (socket callback -> one uv_poll_t per socket)
 * and when it next needs a call without I/O (timer callback -> one
 * uv_timer_t); we call curl_multi_socket_action from those handles and then
 * collect finished transfers with curl_multi_info_read. curl is never
 * re-entered from its own callbacks: the timer callback only (re)arms the
 * uv timer, even for a timeout of 0, so the call happens on the next turn.
 *
 * The multi handle keeps a connection cache: a later request to the same
 * host reuses an idle keep-alive connection (and the DNS cache). Name
 * lookups use libcurl's resolver (Debian builds it threaded), so a slow DNS
 * server does not stop the loop either.
 *
 * Thread: the loop's thread only.
 */
#include "httpc.h"

#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#include "alloc.h"
#include "err.h"
#include "list.h"

/* Idle connections the multi keeps for reuse (all hosts together). */
#define HTTPC_MAXCONNECTS 64

typedef struct httpc_sock_s {
    uv_poll_t poll;
    imgw_httpc_t *h;
    curl_socket_t fd;
} httpc_sock_t;

struct imgw_httpc_req_s {
    imgw_list_t link; /* in h->reqs */
    CURL *easy;
    struct curl_slist *headers;
    char *body; /* the request body (copied) */
    char *in;   /* response body, in_len < in_cap, NUL-terminated */
    size_t in_len, in_cap, max_response;
    int too_big;
    uint64_t start_ns;
    imgw_httpc_cb cb;
    void *arg;
    char errbuf[CURL_ERROR_SIZE];
};

struct imgw_httpc_s {
    uv_loop_t *loop;
    CURLM *multi;
    uv_timer_t timer;
    imgw_list_t reqs; /* in flight, newest first */
    size_t n_reqs;
    int open_handles; /* timer + polls; freed at 0 once freeing */
    int dispatching;  /* inside httpc_done: free is deferred */
    int freeing;
};

int
imgw_httpc_global_init(void)
{
    return curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? 0 : IMGW_ENOMEM;
}

static void
httpc_release(imgw_httpc_t *h)
{
    if (h->freeing && h->open_handles == 0 && !h->dispatching)
        imgw_free(h);
}

static void
httpc_handle_closed(uv_handle_t *hd)
{
    imgw_httpc_t *h = hd->data;
    h->open_handles--;
    httpc_release(h);
}

static void
httpc_sock_closed(uv_handle_t *hd)
{
    httpc_sock_t *ps = hd->data;
    imgw_httpc_t *h = ps->h;
    imgw_free(ps);
    h->open_handles--;
    httpc_release(h);
}

/* Frees a request that is no longer in the multi handle. */
static void
httpc_req_free(imgw_httpc_t *h, imgw_httpc_req_t *r)
{
    imgw_list_remove(&r->link);
    h->n_reqs--;
    curl_easy_cleanup(r->easy);
    curl_slist_free_all(r->headers);
    imgw_free(r->body);
    imgw_free(r->in);
    imgw_free(r);
}

static int
httpc_status(CURLcode rc, const imgw_httpc_req_t *r)
{
    if (rc == CURLE_OK)
        return 0;
    if (r->too_big)
        return IMGW_ETOOBIG;
    if (rc == CURLE_OPERATION_TIMEDOUT)
        return IMGW_ETIMEDOUT;
    if (rc == CURLE_OUT_OF_MEMORY)
        return IMGW_ENOMEM;
    return IMGW_EPROTO;
}

/* Hands every finished transfer to its callback. */
static void
httpc_done(imgw_httpc_t *h)
{
    CURLMsg *m;
    int left;
    h->dispatching++;
    while (!h->freeing && (m = curl_multi_info_read(h->multi, &left)) != NULL) {
        if (m->msg != CURLMSG_DONE)
            continue;
        imgw_httpc_req_t *r = NULL;
        CURL *e = m->easy_handle;
        CURLcode rc = m->data.result;
        curl_easy_getinfo(e, CURLINFO_PRIVATE, (char **)&r);
        curl_multi_remove_handle(h->multi, e);
        imgw_httpc_resp_t resp = {0};
        resp.status = httpc_status(rc, r);
        if (rc == CURLE_OK)
            curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &resp.http);
        resp.body = r->in ? r->in : "";
        resp.body_len = r->in_len;
        resp.elapsed_us = (uv_hrtime() - r->start_ns) / 1000;
        resp.error = r->errbuf[0] ? r->errbuf : curl_easy_strerror(rc);
        imgw_httpc_cb cb = r->cb;
        void *arg = r->arg;
        r->cb = NULL;
        cb(&resp, arg);
        httpc_req_free(h, r);
    }
    h->dispatching--;
    if (h->freeing && h->dispatching == 0) {
        h->freeing = 0; /* let imgw_httpc_free run for real now */
        imgw_httpc_free(h);
    }
}

static void
httpc_poll_cb(uv_poll_t *p, int status, int events)
{
    httpc_sock_t *ps = p->data;
    imgw_httpc_t *h = ps->h;
    int flags = 0, running;
    if (status < 0)
        flags = CURL_CSELECT_ERR;
    if (events & UV_READABLE)
        flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE)
        flags |= CURL_CSELECT_OUT;
    curl_multi_socket_action(h->multi, ps->fd, flags, &running);
    httpc_done(h);
}

static void
httpc_timer_cb(uv_timer_t *t)
{
    imgw_httpc_t *h = t->data;
    int running;
    curl_multi_socket_action(h->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    httpc_done(h);
}

/* CURLMOPT_TIMERFUNCTION: only arms the uv timer (never calls curl). */
static int
httpc_timer_fn(CURLM *multi, long timeout_ms, void *userp)
{
    imgw_httpc_t *h = userp;
    (void)multi;
    if (timeout_ms < 0)
        uv_timer_stop(&h->timer);
    else
        uv_timer_start(&h->timer, httpc_timer_cb, (uint64_t)timeout_ms, 0);
    return 0;
}

/* CURLMOPT_SOCKETFUNCTION: one uv_poll_t per socket curl watches. */
static int
httpc_socket_fn(CURL *easy, curl_socket_t s, int what, void *userp,
                void *socketp)
{
    imgw_httpc_t *h = userp;
    httpc_sock_t *ps = socketp;
    (void)easy;
    if (what == CURL_POLL_REMOVE) {
        if (ps != NULL) {
            curl_multi_assign(h->multi, s, NULL);
            uv_poll_stop(&ps->poll);
            uv_close((uv_handle_t *)&ps->poll, httpc_sock_closed);
        }
        return 0;
    }
    if (ps == NULL) {
        ps = imgw_try_calloc(1, sizeof(*ps));
        if (ps == NULL)
            return -1;
        if (uv_poll_init_socket(h->loop, &ps->poll, s) != 0) {
            imgw_free(ps);
            return -1;
        }
        ps->h = h;
        ps->fd = s;
        ps->poll.data = ps;
        h->open_handles++;
        curl_multi_assign(h->multi, s, ps);
    }
    int ev = 0;
    if (what & CURL_POLL_IN)
        ev |= UV_READABLE;
    if (what & CURL_POLL_OUT)
        ev |= UV_WRITABLE;
    uv_poll_start(&ps->poll, ev, httpc_poll_cb);
    return 0;
}

int
imgw_httpc_new(imgw_httpc_t **out, uv_loop_t *loop)
{
    imgw_httpc_t *h = imgw_try_calloc(1, sizeof(*h));
    *out = NULL;
    if (h == NULL)
        return IMGW_ENOMEM;
    h->loop = loop;
    imgw_list_init(&h->reqs);
    h->multi = curl_multi_init();
    if (h->multi == NULL) {
        imgw_free(h);
        return IMGW_ENOMEM;
    }
    curl_multi_setopt(h->multi, CURLMOPT_SOCKETFUNCTION, httpc_socket_fn);
    curl_multi_setopt(h->multi, CURLMOPT_SOCKETDATA, h);
    curl_multi_setopt(h->multi, CURLMOPT_TIMERFUNCTION, httpc_timer_fn);
    curl_multi_setopt(h->multi, CURLMOPT_TIMERDATA, h);
    curl_multi_setopt(h->multi, CURLMOPT_MAXCONNECTS, (long)HTTPC_MAXCONNECTS);
    uv_timer_init(loop, &h->timer);
    h->timer.data = h;
    h->open_handles = 1;
    *out = h;
    return 0;
}

void
imgw_httpc_free(imgw_httpc_t *h)
{
    if (h == NULL || h->freeing)
        return;
    h->freeing = 1;
    if (h->dispatching)
        return; /* httpc_done finishes it */
    imgw_list_t *l;
    while ((l = imgw_list_first(&h->reqs)) != NULL) {
        imgw_httpc_req_t *r = IMGW_LIST_ENTRY(l, imgw_httpc_req_t, link);
        curl_multi_remove_handle(h->multi, r->easy);
        httpc_req_free(h, r);
    }
    /* Closing the cached connections calls httpc_socket_fn with
     * CURL_POLL_REMOVE, which closes their polls. */
    curl_multi_cleanup(h->multi);
    h->multi = NULL;
    uv_timer_stop(&h->timer);
    uv_close((uv_handle_t *)&h->timer, httpc_handle_closed);
}

static size_t
httpc_write_cb(char *p, size_t size, size_t nmemb, void *arg)
{
    imgw_httpc_req_t *r = arg;
    size_t n = size * nmemb;
    if (n > r->max_response - r->in_len) {
        r->too_big = 1;
        return 0; /* aborts the transfer: CURLE_WRITE_ERROR */
    }
    if (r->in_len + n + 1 > r->in_cap) {
        size_t cap = r->in_cap ? r->in_cap : 1024;
        while (cap < r->in_len + n + 1)
            cap *= 2;
        char *q = imgw_try_realloc(r->in, cap);
        if (q == NULL)
            return 0;
        r->in = q;
        r->in_cap = cap;
    }
    memcpy(r->in + r->in_len, p, n);
    r->in_len += n;
    r->in[r->in_len] = '\0';
    return n;
}

static int
httpc_setup(imgw_httpc_req_t *r, const imgw_httpc_opts_t *o)
{
    CURL *e = r->easy;
    CURLcode c = CURLE_OK;
#define HTTPC_SET(opt, val)                                                    \
    do {                                                                       \
        if (c == CURLE_OK)                                                     \
            c = curl_easy_setopt(e, opt, val);                                 \
    } while (0)
    HTTPC_SET(CURLOPT_URL, o->url);
    HTTPC_SET(CURLOPT_PRIVATE, r);
    HTTPC_SET(CURLOPT_NOSIGNAL, 1L);
    HTTPC_SET(CURLOPT_ERRORBUFFER, r->errbuf);
    HTTPC_SET(CURLOPT_TIMEOUT_MS, (long)(o->timeout_ms ? o->timeout_ms : 5000));
    HTTPC_SET(CURLOPT_PROTOCOLS_STR, "http,https");
    HTTPC_SET(CURLOPT_FOLLOWLOCATION, 0L);
    HTTPC_SET(CURLOPT_WRITEFUNCTION, httpc_write_cb);
    HTTPC_SET(CURLOPT_WRITEDATA, r);
    HTTPC_SET(CURLOPT_USERAGENT, "imgw");
    HTTPC_SET(CURLOPT_TCP_NODELAY, 1L);
    if (r->body != NULL || strcmp(o->method, "POST") == 0 ||
        strcmp(o->method, "PUT") == 0) {
        HTTPC_SET(CURLOPT_POSTFIELDSIZE, (long)o->body_len);
        HTTPC_SET(CURLOPT_POSTFIELDS, r->body ? r->body : "");
    }
    if (strcmp(o->method, "GET") != 0 && strcmp(o->method, "POST") != 0)
        HTTPC_SET(CURLOPT_CUSTOMREQUEST, o->method);
    HTTPC_SET(CURLOPT_HTTPHEADER, r->headers);
#undef HTTPC_SET
    return c == CURLE_OK ? 0 : IMGW_EINVAL;
}

int
imgw_httpc_request(imgw_httpc_t *h, const imgw_httpc_opts_t *o,
                   imgw_httpc_cb cb, void *arg, imgw_httpc_req_t **out)
{
    if (out)
        *out = NULL;
    if (h == NULL || h->freeing || o->url == NULL || o->method == NULL ||
        cb == NULL)
        return IMGW_EINVAL;
    imgw_httpc_req_t *r = imgw_try_calloc(1, sizeof(*r));
    if (r == NULL)
        return IMGW_ENOMEM;
    r->max_response = o->max_response ? o->max_response : 65536;
    r->cb = cb;
    r->arg = arg;
    int rc = IMGW_ENOMEM;
    if ((r->easy = curl_easy_init()) == NULL)
        goto fail;
    if (o->body_len > 0) {
        if ((r->body = imgw_try_malloc(o->body_len)) == NULL)
            goto fail;
        memcpy(r->body, o->body, o->body_len);
    }
    /* curl's default "Expect: 100-continue" for larger bodies costs a round
     * trip (or a second of waiting) against servers that ignore it. */
    const char *fixed[2] = {"Expect:", NULL};
    char ctype[160];
    if (o->content_type != NULL) {
        snprintf(ctype, sizeof(ctype), "Content-Type: %s", o->content_type);
        fixed[1] = ctype;
    }
    for (size_t i = 0; i < 2 + o->n_headers; i++) {
        const char *line = i < 2 ? fixed[i] : o->headers[i - 2];
        if (line == NULL)
            continue;
        struct curl_slist *l = curl_slist_append(r->headers, line);
        if (l == NULL)
            goto fail;
        r->headers = l;
    }
    if ((rc = httpc_setup(r, o)) != 0)
        goto fail;
    r->start_ns = uv_hrtime();
    if (curl_multi_add_handle(h->multi, r->easy) != CURLM_OK) {
        rc = IMGW_ENOMEM;
        goto fail;
    }
    imgw_list_insert_head(&h->reqs, &r->link);
    h->n_reqs++;
    if (out)
        *out = r;
    return 0;
fail:
    if (r->easy)
        curl_easy_cleanup(r->easy);
    curl_slist_free_all(r->headers);
    imgw_free(r->body);
    imgw_free(r);
    return rc;
}

void
imgw_httpc_cancel(imgw_httpc_t *h, imgw_httpc_req_t *r)
{
    if (h == NULL || r == NULL || r->cb == NULL)
        return;
    curl_multi_remove_handle(h->multi, r->easy);
    httpc_req_free(h, r);
}

size_t
imgw_httpc_inflight(const imgw_httpc_t *h)
{
    return h ? h->n_reqs : 0;
}
