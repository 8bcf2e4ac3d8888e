/*
 * test_mail: the payload of mail between loops (src/core/mail.c): one
 * block per fan-out with both parts copied and aligned, one reference per
 * mail, freed by the last release (ASan's leak check in the sanitizer run
 * sees a missed or a double free), and FRAME bodies sized by command.
 */
#include <stdint.h>
#include <string.h>

#include "mail.h"
#include "test.h"

TEST(data_copies_and_counts)
{
    const char blob[] = "push-blob", json[] = "{\"a\":1}";
    imgw_mail_data_t *d = imgw_mail_data_new(blob, 9, json, 7, 3);

    CHECK(d != NULL);
    CHECK_EQ_INT(d->len[0], 9);
    CHECK_EQ_INT(d->len[1], 7);
    CHECK(memcmp(d->ptr[0], blob, 9) == 0);
    CHECK(memcmp(d->ptr[1], json, 7) == 0);
    CHECK(d->ptr[0] != (const uint8_t *)blob);
    CHECK_EQ_INT((uintptr_t)d->ptr[1] % 8, 0);
    CHECK_EQ_INT(atomic_load(&d->refs), 3);
    imgw_mail_data_release(d);
    CHECK_EQ_INT(atomic_load(&d->refs), 2);
    imgw_mail_data_release(d);
    CHECK_EQ_INT(atomic_load(&d->refs), 1);
    imgw_mail_data_release(d); /* frees */
    imgw_mail_data_release(NULL);

    /* a missing part stays NULL (RAW without a JSON frame) */
    d = imgw_mail_data_new(blob, 9, NULL, 0, 1);
    CHECK(d != NULL && d->ptr[1] == NULL && d->len[1] == 0);
    imgw_mail_data_release(d);
    /* an empty part is present, not NULL */
    d = imgw_mail_data_new("", 0, NULL, 0, 1);
    CHECK(d != NULL && d->ptr[0] != NULL && d->len[0] == 0);
    imgw_mail_data_release(d);
    CHECK(imgw_mail_data_new(blob, SIZE_MAX - 4, NULL, 0, 1) == NULL);
}

TEST(mail_header_is_small)
{
    imgw_mail_t *m = imgw_mail_new(IMGW_MAIL_PUSH, 4);

    printf("  sizeof(imgw_mail_t) = %zu, sizeof(imgw_push_body_t) = %zu\n",
           sizeof(imgw_mail_t), sizeof(imgw_push_body_t));
    CHECK(sizeof(imgw_mail_t) <= 96);
    CHECK(m != NULL && m->kind == IMGW_MAIL_PUSH && m->n == 4 &&
          m->data == NULL);
    m->data = imgw_mail_data_new("x", 1, NULL, 0, 1);
    imgw_mail_free(m); /* releases its data too */
    imgw_mail_free(NULL);
    CHECK(imgw_mail_new(IMGW_MAIL_RAW, SIZE_MAX / 8) == NULL);
}

TEST(body_sizes)
{
    CHECK_EQ_INT(imgw_push_body_size(im_CommandType_CMD_TYPING_STATUS_PUSH),
                 sizeof(im_TypingStatusPush));
    CHECK_EQ_INT(imgw_push_body_size(im_CommandType_CMD_READ_RECEIPT_PUSH),
                 sizeof(im_ReadReceiptPush));
    CHECK_EQ_INT(imgw_push_body_size(im_CommandType_CMD_REVOKE_MSG_PUSH),
                 sizeof(im_RevokeMessagePush));
    CHECK_EQ_INT(imgw_push_body_size(im_CommandType_CMD_KICK_PUSH),
                 sizeof(im_KickPush));
    CHECK_EQ_INT(imgw_push_body_size(0), sizeof(imgw_push_body_t));
    CHECK(imgw_push_body_size(im_CommandType_CMD_TYPING_STATUS_PUSH) <
          sizeof(imgw_push_body_t) / 4);
}

int
main(void)
{
    RUN(data_copies_and_counts);
    RUN(mail_header_is_small);
    RUN(body_sizes);
    TEST_DONE();
}
