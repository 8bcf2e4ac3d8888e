/*
 * mail.c: mail headers and their shared payload (mail.h).
 */
#include "mail.h"

#include <string.h>

#include "alloc.h"

imgw_mail_data_t *
imgw_mail_data_new(const void *p0, size_t n0, const void *p1, size_t n1,
                   unsigned refs)
{
    size_t n0a = (n0 + 7) & ~(size_t)7; /* ptr[1] stays 8-aligned */
    imgw_mail_data_t *d;

    if (n0a < n0 || n0a + n1 < n0a ||
        n0a + n1 > SIZE_MAX - sizeof(*d) - 1)
        return NULL;
    d = imgw_try_malloc(sizeof(*d) + n0a + n1 + 1);
    if (d == NULL)
        return NULL;
    atomic_init(&d->refs, refs);
    d->ptr[0] = d->ptr[1] = NULL;
    d->len[0] = d->len[1] = 0;
    if (p0 != NULL) {
        d->ptr[0] = d->bytes;
        d->len[0] = n0;
        memcpy(d->ptr[0], p0, n0);
    }
    if (p1 != NULL) {
        d->ptr[1] = d->bytes + n0a;
        d->len[1] = n1;
        memcpy(d->ptr[1], p1, n1);
    }
    return d;
}

void
imgw_mail_data_release(imgw_mail_data_t *d)
{
    /* acq_rel: the freeing thread sees every other loop done with it. */
    if (d != NULL && atomic_fetch_sub_explicit(&d->refs, 1,
                                               memory_order_acq_rel) == 1)
        imgw_free(d);
}

imgw_mail_t *
imgw_mail_new(int kind, size_t n)
{
    imgw_mail_t *m;

    if (n > (SIZE_MAX - sizeof(*m)) / sizeof(imgw_target_t))
        return NULL;
    m = imgw_try_malloc(sizeof(*m) + n * sizeof(imgw_target_t));
    if (m == NULL)
        return NULL;
    memset(m, 0, sizeof(*m));
    m->kind = kind;
    m->n = n;
    return m;
}

void
imgw_mail_free(imgw_mail_t *m)
{
    if (m == NULL)
        return;
    imgw_mail_data_release(m->data);
    imgw_free(m);
}

size_t
imgw_push_body_size(int command)
{
    switch (command) {
    case im_CommandType_CMD_KICK_PUSH:
        return sizeof(im_KickPush);
    case im_CommandType_CMD_TYPING_STATUS_PUSH:
        return sizeof(im_TypingStatusPush);
    case im_CommandType_CMD_READ_RECEIPT_PUSH:
        return sizeof(im_ReadReceiptPush);
    case im_CommandType_CMD_REVOKE_MSG_PUSH:
        return sizeof(im_RevokeMessagePush);
    default:
        return sizeof(imgw_push_body_t);
    }
}
