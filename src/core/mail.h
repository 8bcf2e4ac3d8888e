/*
 * mail.h: the payload of mail between loops (imgw_mail_data_t, node.h):
 * one block per fan-out, shared by the loops it goes to, freed by the last
 * one. Internal to src/core. Thread: any (the count is atomic; the bytes
 * are immutable once the mail is posted).
 */
#ifndef IMGW_MAIL_H
#define IMGW_MAIL_H

#include <stddef.h>

#include "node.h"

/* One block holding a copy of p0[0..n0) (ptr[0]) and p1[0..n1) (ptr[1]);
 * a NULL p leaves its ptr NULL. refs references (one per mail that will
 * carry it). NULL when out of memory. */
imgw_mail_data_t *imgw_mail_data_new(const void *p0, size_t n0, const void *p1,
                                     size_t n1, unsigned refs);
/* Drops one reference; the last frees the block. NULL is ignored. */
void imgw_mail_data_release(imgw_mail_data_t *d);
/* A mail for n targets with just its header set (kind, n, data NULL);
 * NULL when out of memory. */
imgw_mail_t *imgw_mail_new(int kind, size_t n);
/* Frees a mail and releases its data reference. */
void imgw_mail_free(imgw_mail_t *m);
/* The bytes of a FRAME body for command: the union member it uses
 * (a typing push is ~400 B of the union's ~2.9 KB). */
size_t imgw_push_body_size(int command);

#endif
