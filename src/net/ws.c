/*
 * ws.c: the WebSocket layer (RFC 6455) on wslay's frame API.
 *
 * Thread: the owning loop only. Only this file sees wslay.h.
 *
 * Why the frame API and not wslay_event: an event context carries two
 * 4 KiB buffers per connection, which alone breaks the 1 KB budget of an
 * idle connection. A frame context (one 4 KiB input buffer) holds no state
 * between frames, so it is borrowed from a per-loop pool only while a
 * frame is partially received and returned at the next frame boundary.
 * Boundaries are found by accounting: wslay_frame_recv() rejects
 * non-minimal length encodings, so a completed frame used exactly
 * 2 + (0|2|8) + 4 (mask) + payload bytes, and the context is clean when
 * the bytes fed to it equal the bytes of the frames it completed.
 *
 * Most reads hold only whole small data frames (an IM envelope is a few
 * hundred bytes): fast_frames() unmasks and delivers those itself, and
 * wslay sees a read only from the first frame that is anything else.
 *
 * Likewise the per-connection receive state (imgw_ws_rx_t) lives in the
 * loop while a read is processed and is copied to the heap only when a
 * read ends inside a frame or a fragmented message.
 *
 * Outgoing frames are built here (server frames are unmasked: a 2-10 byte
 * header), so a fan-out payload encoded once is copied straight into each
 * connection's output block.
 *
 * This is the WebSocket protocol handler (imgw__ws_proto): conn.c calls it
 * through the handler table only, and it calls conn.c's face only.
 */
#include <stdlib.h>
#include <string.h>

#include <wslay/wslay.h>

#include "utf8.h"
#include "alloc.h"
#include "err.h"
#include "log.h"
#include "net_int.h"

typedef struct imgw_ws_rx_s {
    wslay_frame_context_ptr fctx; /* borrowed while a frame is partial */
    uint64_t fed;                 /* bytes handed to fctx */
    uint64_t done;                /* bytes of frames fctx completed */
    /* current frame */
    int in_frame;
    uint8_t opcode;
    uint8_t fin;
    uint64_t plen;
    uint64_t got;
    /* fragmented / multi-read message */
    int in_msg;
    uint8_t msg_opcode;
    uint8_t *msg;
    size_t msg_len;
    size_t msg_cap;
    uint32_t msg_frames; /* frames of the message so far (<= IMGW_WS_MAX_FRAGMENTS) */
    /* control frame payload (<= 125 bytes) */
    size_t ctl_len;
    uint8_t ctl[125];
} imgw_ws_rx_t;

static _Thread_local imgw_ws_rx_t loop_rx; /* the in-loop receive state */

static ssize_t
feed_recv(uint8_t *buf, size_t len, int flags, void *user_data)
{
    imgw_ws_feed_t *f = user_data;
    (void)flags;
    if (f->len == 0)
        return -1; /* wslay maps this to WSLAY_ERR_WANT_READ */
    size_t n = len < f->len ? len : f->len;
    memcpy(buf, f->p, n);
    f->p += n;
    f->len -= n;
    f->fed += n;
    return (ssize_t)n;
}

static ssize_t
never_send(const uint8_t *data, size_t len, int flags, void *user_data)
{
    (void)data, (void)len, (void)flags, (void)user_data;
    return -1;
}

static int
never_genmask(uint8_t *buf, size_t len, void *user_data)
{
    (void)buf, (void)len, (void)user_data;
    return -1;
}

static wslay_frame_context_ptr
fctx_get(imgw_loop_t *l)
{
    if (l->n_ws_pool > 0)
        return l->ws_pool[--l->n_ws_pool];
    static const struct wslay_frame_callbacks cbs = {never_send, feed_recv,
                                                     never_genmask};
    wslay_frame_context_ptr f;
    if (wslay_frame_context_init(&f, &cbs, &l->feed) != 0)
        return NULL;
    return f;
}

/* Only a context at a frame boundary (nothing buffered) may be reused. */
static void
fctx_put(imgw_loop_t *l, wslay_frame_context_ptr f, int clean)
{
    if (f == NULL)
        return;
    if (clean && l->n_ws_pool < IMGW_WS_POOL_MAX)
        l->ws_pool[l->n_ws_pool++] = f;
    else
        wslay_frame_context_free(f);
}

/* Frees the oldest pooled contexts; the newest keep entries stay. */
static void
ws_trim(imgw_loop_t *l, size_t keep)
{
    if (l->n_ws_pool <= keep)
        return;
    size_t drop = l->n_ws_pool - keep;
    for (size_t i = 0; i < drop; i++)
        wslay_frame_context_free(l->ws_pool[i]);
    memmove(l->ws_pool, l->ws_pool + drop, keep * sizeof(l->ws_pool[0]));
    l->n_ws_pool = keep;
}

static void
ws_free(imgw_conn_t *c)
{
    /* c->rx shares its word with the HTTP handler's c->http. */
    if (c->proto != IMGW_PROTO_WS)
        return;
    imgw_ws_rx_t *rx = c->rx;
    if (rx == NULL)
        return;
    fctx_put(c->loop, rx->fctx, 0);
    imgw_free(rx->msg);
    imgw_free(rx);
    c->rx = NULL;
}

size_t
imgw__ws_header(uint8_t *hdr, int opcode, size_t len)
{
    hdr[0] = (uint8_t)(0x80 | (opcode & 0x0f));
    if (len < 126) {
        hdr[1] = (uint8_t)len;
        return 2;
    }
    if (len < 65536) {
        hdr[1] = 126;
        hdr[2] = (uint8_t)(len >> 8);
        hdr[3] = (uint8_t)len;
        return 4;
    }
    hdr[1] = 127;
    for (int i = 0; i < 8; i++)
        hdr[2 + i] = (uint8_t)((uint64_t)len >> (56 - 8 * i));
    return 10;
}

/* The connection has answered 101: it is a WebSocket from now on. */
static void
ws_start(imgw_conn_t *c)
{
    imgw_stat_inc(&c->loop->st.ws_open);
    c->flags |= IMGW_CF_COUNTED_WS;
    c->state = IMGW_CONN_WS;
}

/* imgw_conn_send_ws() */
static int
ws_send(imgw_conn_t *c, int is_text, const uv_buf_t *pieces, size_t n)
{
    uint8_t hdr[10];
    uv_buf_t bufs[9];
    size_t total = 0;
    if (c->state != IMGW_CONN_WS)
        return IMGW_ECLOSED;
    if (n > 8)
        return IMGW_EINVAL;
    for (size_t i = 0; i < n; i++)
        total += pieces[i].len;
    size_t hl = imgw__ws_header(hdr, is_text ? 1 : 2, total);
    bufs[0] = uv_buf_init((char *)hdr, (unsigned)hl);
    for (size_t i = 0; i < n; i++)
        bufs[i + 1] = pieces[i];
    int r = imgw__conn_write_raw(c, bufs, n + 1, 1);
    if (r == IMGW_EQUEUEFULL) {
        imgw_stat_inc(&c->loop->st.slow_consumers);
        IMGW_LOG_WARN_RL("slow consumer %s closed: %zu bytes queued",
                         imgw_conn_peer(c), (size_t)c->queued);
        /* Its queue is full, so a close frame could not get through in
         * time either: drop the connection. */
        imgw__conn_close_now(c);
        return r;
    }
    if (r < 0) {
        imgw__conn_close_now(c);
        return r;
    }
    imgw_stat_inc(&c->loop->st.frames_out);
    return 0;
}

/* imgw_conn_close_ws(): the closing handshake. */
static void
ws_close(imgw_conn_t *c, int code, const char *reason)
{
    uint8_t payload[125];
    uint8_t hdr[10];
    size_t rl = reason ? strlen(reason) : 0;
    if (c->state != IMGW_CONN_WS)
        return;
    if (rl > sizeof(payload) - 2)
        rl = sizeof(payload) - 2;
    payload[0] = (uint8_t)(code >> 8);
    payload[1] = (uint8_t)(code & 0xff);
    if (rl)
        memcpy(payload + 2, reason, rl);
    size_t hl = imgw__ws_header(hdr, 8, rl + 2);
    uv_buf_t bufs[2] = {uv_buf_init((char *)hdr, (unsigned)hl),
                        uv_buf_init((char *)payload, (unsigned)(rl + 2))};
    c->state = IMGW_CONN_CLOSING;
    c->flags |= IMGW_CF_CLOSE_SENT;
    /* The close frame goes out even when the queue is at its bound. */
    int r = imgw__conn_write_raw(c, bufs, 2, 0);
    if (r < 0) {
        imgw__conn_close_now(c);
        return;
    }
    /* Wait for the peer's close frame, but not forever. */
    imgw_conn_set_deadline(c, c->loop->now_ms + IMGW_CLOSE_GRACE_MS);
}

/* ---- receiving ------------------------------------------------------- */

static void
ws_fail(imgw_conn_t *c, int code, const char *why)
{
    IMGW_LOG_DEBUG("websocket %s: closing %d (%s)", imgw_conn_peer(c), code,
                   why);
    if (c->state == IMGW_CONN_WS)
        ws_close(c, code, why);
    else
        imgw__conn_close_now(c);
}

static void
send_control(imgw_conn_t *c, int opcode, const uint8_t *p, size_t n)
{
    uint8_t hdr[10];
    size_t hl = imgw__ws_header(hdr, opcode, n);
    uv_buf_t b[2] = {uv_buf_init((char *)hdr, (unsigned)hl),
                     uv_buf_init((char *)p, (unsigned)n)};
    if (imgw__conn_write_raw(c, b, n ? 2 : 1, 0) < 0)
        imgw__conn_close_now(c);
}

static int
close_code_valid(int code)
{
    if (code >= 3000 && code <= 4999)
        return 1;
    switch (code) {
    case 1000: case 1001: case 1002: case 1003: case 1007: case 1008:
    case 1009: case 1010: case 1011:
        return 1;
    default:
        return 0;
    }
}

static void
on_control(imgw_conn_t *c, imgw_ws_rx_t *rx)
{
    switch (rx->opcode) {
    case 0x8: { /* close */
        int code = 1000;
        if (rx->ctl_len == 1) {
            ws_fail(c, 1002, "bad close payload");
            return;
        }
        if (rx->ctl_len >= 2) {
            code = (rx->ctl[0] << 8) | rx->ctl[1];
            if (!close_code_valid(code)) {
                ws_fail(c, 1002, "bad close code");
                return;
            }
            if (!imgw_utf8_valid(rx->ctl + 2, rx->ctl_len - 2)) {
                ws_fail(c, 1007, "bad close reason");
                return;
            }
        }
        if (c->state == IMGW_CONN_WS) {
            /* Echo the code, then close once it is written. */
            uint8_t p[2] = {(uint8_t)(code >> 8), (uint8_t)code};
            send_control(c, 0x8, p, 2);
            c->state = IMGW_CONN_CLOSING;
            c->flags |= IMGW_CF_CLOSE_SENT;
        }
        c->flags |= IMGW_CF_CLOSE_AFTER;
        imgw__conn_flush(c);
        return;
    }
    case 0x9: /* ping */
        if (c->state != IMGW_CONN_WS)
            return;
        /* Pongs count against the output bound: a client that pings but
         * never reads would otherwise grow our memory without limit. */
        if (c->queued + rx->ctl_len + 2 > c->loop->net->opts.max_queued_bytes) {
            imgw_stat_inc(&c->loop->st.slow_consumers);
            IMGW_LOG_WARN_RL("slow consumer %s closed: pongs not read",
                             imgw_conn_peer(c));
            imgw__conn_close_now(c);
            return;
        }
        send_control(c, 0xA, rx->ctl, rx->ctl_len);
        return;
    default: /* pong */
        return;
    }
}

static void
deliver(imgw_conn_t *c, int opcode, const uint8_t *p, size_t n)
{
    imgw_stat_inc(&c->loop->st.frames_in);
    if (c->state != IMGW_CONN_WS)
        return; /* closing: data is dropped */
    if (opcode == 1 && !imgw_utf8_valid(p, n)) {
        ws_fail(c, 1007, "invalid UTF-8");
        return;
    }
    c->loop->net->h->on_message(c, opcode == 1, p, n);
}

/*
 * The common case without wslay: whole, final, masked text or binary
 * frames of up to IMGW_WS_FAST_MAX payload bytes at the start of data,
 * while nothing is partial (no c->rx). Returns the bytes it consumed and
 * stops at the first frame that is anything else (a control frame, a
 * fragment, a frame cut by the read, a 64-bit or non-minimal length, RSV
 * bits, no mask, a payload over the limit...): process() then judges it
 * exactly as before, so the rules and the answers live in one place.
 * Returns -1 when a delivery closed the connection.
 *
 * Saves wslay's copy into its 4 KiB buffer, the frame context borrowed
 * and returned per read, and its per-byte state machine: about 1,500
 * instructions per message (docs/benchmarks.md).
 */
#define IMGW_WS_FAST_MAX 4096
static _Thread_local uint8_t unmask_buf[IMGW_WS_FAST_MAX];

static ssize_t
fast_frames(imgw_conn_t *c, const uint8_t *data, size_t len)
{
    size_t limit = c->loop->net->opts.max_frame_bytes;
    size_t off = 0;
    while (len - off >= 6) {
        const uint8_t *h = data + off;
        uint8_t op = h[0] & 0x0f;
        if ((h[0] & 0xf0) != 0x80 || (op != 1 && op != 2) || !(h[1] & 0x80))
            break; /* not final, RSV set, not data, or unmasked */
        size_t plen = h[1] & 0x7f, hl = 6;
        if (plen == 127)
            break;
        if (plen == 126) {
            if (len - off < 8)
                break;
            plen = ((size_t)h[2] << 8) | h[3];
            if (plen < 126)
                break; /* non-minimal: wslay refuses it */
            hl = 8;
        }
        if (plen > IMGW_WS_FAST_MAX || plen > limit || len - off - hl < plen)
            break;
        const uint8_t *mask = h + hl - 4, *src = h + hl;
        uint32_t m32;
        memcpy(&m32, mask, 4);
        uint64_t m64 = ((uint64_t)m32 << 32) | m32;
        size_t i = 0;
        for (; i + 8 <= plen; i += 8) {
            uint64_t w;
            memcpy(&w, src + i, 8);
            w ^= m64;
            memcpy(unmask_buf + i, &w, 8);
        }
        for (; i < plen; i++)
            unmask_buf[i] = src[i] ^ mask[i & 3];
        off += hl + plen;
        deliver(c, op, unmask_buf, plen);
        if (c->state != IMGW_CONN_WS && c->state != IMGW_CONN_CLOSING)
            return -1;
    }
    return (ssize_t)off;
}

static int
msg_append(imgw_ws_rx_t *rx, const uint8_t *p, size_t n, size_t limit)
{
    if (rx->msg_len + n > limit)
        return -1;
    if (n == 0)
        return 0; /* an empty fragment: rx->msg may still be NULL */
    if (rx->msg_len + n > rx->msg_cap) {
        size_t cap = rx->msg_cap ? rx->msg_cap : 4096;
        while (cap < rx->msg_len + n)
            cap *= 2;
        if (cap > limit)
            cap = limit;
        uint8_t *m = imgw_try_realloc(rx->msg, cap);
        if (m == NULL)
            return -1;
        rx->msg = m;
        rx->msg_cap = cap;
    }
    memcpy(rx->msg + rx->msg_len, p, n);
    rx->msg_len += n;
    return 0;
}

static size_t
frame_header_len(uint64_t plen)
{
    return 2 + (plen < 126 ? 0 : plen < 65536 ? 2 : 8) + 4;
}

/*
 * Processes frames from the bytes in l->feed. Returns 0 to go on, -1 when
 * the connection failed or closed (state left as is).
 */
static int
process(imgw_conn_t *c, imgw_ws_rx_t *rx)
{
    imgw_loop_t *l = c->loop;
    size_t limit = l->net->opts.max_frame_bytes;
    struct wslay_frame_iocb iocb;
    for (;;) {
        if (c->state == IMGW_CONN_CLOSED)
            return -1;
        memset(&iocb, 0, sizeof(iocb));
        ssize_t r = wslay_frame_recv(rx->fctx, &iocb);
        if (r == WSLAY_ERR_WANT_READ)
            return 0;
        if (r < 0) {
            ws_fail(c, 1002, "protocol error");
            return -1;
        }
        if (!rx->in_frame) {
            rx->in_frame = 1;
            rx->opcode = iocb.opcode;
            rx->fin = iocb.fin;
            rx->plen = iocb.payload_length;
            rx->got = 0;
            rx->ctl_len = 0;
            if (!iocb.mask) {
                ws_fail(c, 1002, "unmasked client frame");
                return -1;
            }
            if (iocb.rsv) {
                ws_fail(c, 1002, "reserved bits set");
                return -1;
            }
            switch (iocb.opcode) {
            case 0x0:
                if (!rx->in_msg) {
                    ws_fail(c, 1002, "continuation without a message");
                    return -1;
                }
                /* Empty continuations cost no bytes, so the byte limit
                 * does not bound them: count frames too. */
                if (++rx->msg_frames > IMGW_WS_MAX_FRAGMENTS) {
                    ws_fail(c, 1009, "too many fragments");
                    return -1;
                }
                break;
            case 0x1:
            case 0x2:
                if (rx->in_msg) {
                    ws_fail(c, 1002, "new message inside a fragmented one");
                    return -1;
                }
                break;
            case 0x8:
            case 0x9:
            case 0xA:
                break;
            default:
                ws_fail(c, 1002, "reserved opcode");
                return -1;
            }
            if (iocb.opcode < 0x8 &&
                (rx->in_msg ? rx->msg_len : 0) + iocb.payload_length > limit) {
                ws_fail(c, 1009, "message too big");
                return -1;
            }
        }
        rx->got += iocb.data_length;
        int ctl = rx->opcode >= 0x8;
        if (ctl) {
            memcpy(rx->ctl + rx->ctl_len, iocb.data, iocb.data_length);
            rx->ctl_len += iocb.data_length;
        } else if (!rx->in_msg && rx->fin &&
                   iocb.data_length == rx->plen) {
            /* The common case: a whole unfragmented message in one piece,
             * delivered from wslay's buffer without a copy. */
            rx->in_frame = 0;
            rx->done += frame_header_len(rx->plen) + rx->plen;
            deliver(c, rx->opcode, iocb.data, iocb.data_length);
            if (c->state != IMGW_CONN_WS && c->state != IMGW_CONN_CLOSING)
                return -1;
            continue;
        } else {
            if (!rx->in_msg) {
                rx->in_msg = 1;
                rx->msg_opcode = rx->opcode;
                rx->msg_len = 0;
                rx->msg_frames = 1;
            }
            if (msg_append(rx, iocb.data, iocb.data_length, limit) != 0) {
                ws_fail(c, 1009, "message too big");
                return -1;
            }
        }
        if (rx->got < rx->plen)
            continue;
        /* The frame is complete. */
        rx->in_frame = 0;
        rx->done += frame_header_len(rx->plen) + rx->plen;
        if (ctl) {
            on_control(c, rx);
        } else if (rx->fin) {
            rx->in_msg = 0;
            deliver(c, rx->msg_opcode, rx->msg, rx->msg_len);
            rx->msg_len = 0;
            /* Return a big reassembly buffer's memory at once. */
            imgw_free(rx->msg);
            rx->msg = NULL;
            rx->msg_cap = 0;
        }
        if (c->state != IMGW_CONN_WS && c->state != IMGW_CONN_CLOSING)
            return -1;
    }
}

/*
 * wslay reports a frame only once payload bytes are there, so a header
 * announcing a huge frame would otherwise wait silently for them. When the
 * bytes after the last complete frame (stream offset rx->done) hold a
 * whole header in this chunk, read its length here and refuse early.
 */
static int
announced_too_big(imgw_conn_t *c, imgw_ws_rx_t *rx, const uint8_t *data,
                  size_t len, uint64_t fed_before)
{
    if (rx->done < fed_before || rx->done >= fed_before + len)
        return 0;
    const uint8_t *h = data + (rx->done - fed_before);
    size_t avail = len - (size_t)(rx->done - fed_before);
    if (avail < 2 || (h[0] & 0x0f) >= 0x8)
        return 0;
    uint64_t plen = h[1] & 0x7f;
    size_t need = plen == 126 ? 4 : plen == 127 ? 10 : 2;
    if (avail < need)
        return 0;
    if (plen == 126)
        plen = ((uint64_t)h[2] << 8) | h[3];
    else if (plen == 127)
        for (int i = 0, j = 2; i < 8; i++, j++)
            plen = i == 0 ? h[j] : (plen << 8) | h[j];
    size_t limit = c->loop->net->opts.max_frame_bytes;
    if ((rx->in_msg ? rx->msg_len : 0) + plen <= limit)
        return 0;
    ws_fail(c, 1009, "message too big");
    return 1;
}

static void
ws_feed(imgw_conn_t *c, const uint8_t *data, size_t len)
{
    imgw_loop_t *l = c->loop;
    imgw_ws_rx_t *rx = c->rx;
    if (c->flags & IMGW_CF_RX_DEAD)
        return;
    if (rx == NULL) {
        ssize_t k = fast_frames(c, data, len);
        if (k < 0) {
            c->flags |= IMGW_CF_RX_DEAD; /* nothing partial to drop */
            return;
        }
        data += k;
        len -= (size_t)k;
        if (len == 0)
            return;
        rx = &loop_rx;
        memset(rx, 0, offsetof(imgw_ws_rx_t, ctl));
    }
    if (rx->fctx == NULL) {
        rx->fctx = fctx_get(l);
        if (rx->fctx == NULL) {
            if (rx == &loop_rx)
                imgw_free(rx->msg);
            imgw__conn_close_now(c);
            return;
        }
        rx->fed = rx->done = 0;
    }
    uint64_t fed_before = rx->fed;
    l->feed.p = data;
    l->feed.len = len;
    l->feed.fed = rx->fed;
    int r = process(c, rx);
    rx->fed = l->feed.fed;
    l->feed.len = 0;
    if (r == 0 && !rx->in_frame && announced_too_big(c, rx, data, len,
                                                      fed_before))
        r = -1;

    int boundary = !rx->in_frame && rx->fed == rx->done;
    if (r != 0 || c->state == IMGW_CONN_CLOSED) {
        /* The connection is going away: drop partial state and ignore
         * whatever else arrives on it. */
        c->flags |= IMGW_CF_RX_DEAD;
        if (rx == &loop_rx) {
            fctx_put(l, rx->fctx, boundary);
            imgw_free(rx->msg);
        } /* else conn_close_cb frees c->rx */
        return;
    }
    if (boundary) {
        fctx_put(l, rx->fctx, 1);
        rx->fctx = NULL;
    }
    int partial = rx->fctx != NULL || rx->in_msg;
    if (rx == &loop_rx) {
        if (partial) {
            imgw_ws_rx_t *heap = imgw_try_malloc(sizeof(*heap));
            if (heap == NULL) {
                fctx_put(l, rx->fctx, 0);
                imgw_free(rx->msg);
                imgw__conn_close_now(c);
                return;
            }
            memcpy(heap, rx, sizeof(*heap));
            c->rx = heap;
        } else {
            imgw_free(rx->msg);
        }
    } else if (!partial) {
        imgw_free(rx->msg);
        imgw_free(rx);
        c->rx = NULL;
    }
}

const imgw_proto_t imgw__ws_proto = {
    .name = "websocket",
    .start = ws_start,
    .feed = ws_feed,
    .send = ws_send,
    .close = ws_close,
    .free = ws_free,
    .trim = ws_trim,
};
