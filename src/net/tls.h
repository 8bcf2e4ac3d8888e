/*
 * tls.h: TLS for wss:// listeners, with mbedtls, as a byte transformer.
 *
 * Only tls.c sees mbedtls' SSL types. A connection's TLS state sits between
 * the socket and the HTTP/WebSocket layers: ciphertext read from the socket
 * goes in with imgw_tls_feed(), which drives the handshake and hands
 * plaintext to io->recv; plaintext to send goes in with imgw_tls_write(),
 * which hands records to io->send. No socket I/O happens here.
 *
 * Threads: an imgw_tls_ctx_t (certificate, key, RNG, session ticket keys)
 * belongs to one loop; every loop makes its own from the same files. A
 * connection's imgw_tls_t is used only by its loop.
 */
#ifndef IMGW_TLS_H
#define IMGW_TLS_H

#include <stddef.h>
#include <stdint.h>

typedef struct imgw_tls_ctx_s imgw_tls_ctx_t;
typedef struct imgw_tls_s imgw_tls_t;

typedef struct imgw_tls_io_s {
    /* Ciphertext for the peer; returns 0 or a negative code (fatal). */
    int (*send)(void *arg, const uint8_t *p, size_t n);
    /* Decrypted application data, valid during the call. */
    void (*recv)(void *arg, const uint8_t *p, size_t n);
    void *arg;
} imgw_tls_io_t;

/*
 * Loads the PEM certificate chain and private key, sets up TLS 1.2 (and
 * 1.3 when the mbedtls build has it), session tickets and an RNG. A missing
 * or unparsable file, or a key that does not match the certificate, is an
 * error: returns IMGW_ECONFIG with a message naming the file in err.
 */
int imgw_tls_ctx_new(imgw_tls_ctx_t **out, const char *cert_path,
                     const char *key_path, char *err, size_t errlen);
void imgw_tls_ctx_free(imgw_tls_ctx_t *ctx);

/* A server-side connection state. Returns 0 or IMGW_ENOMEM. */
int imgw_tls_new(imgw_tls_t **out, imgw_tls_ctx_t *ctx,
                 const imgw_tls_io_t *io);
void imgw_tls_free(imgw_tls_t *t);

/*
 * Ciphertext from the socket. Progresses the handshake and delivers any
 * plaintext to io->recv (possibly several times). Returns 0, or a negative
 * code when the connection must be closed (handshake failure, bad record,
 * the peer's close_notify: IMGW_ECLOSED).
 */
int imgw_tls_feed(imgw_tls_t *t, const uint8_t *p, size_t n);

/*
 * Encrypts n bytes of plaintext into records handed to io->send. Before
 * the handshake completes the plaintext is buffered and sent once it does.
 * Returns 0 or a negative code (fatal).
 */
int imgw_tls_write(imgw_tls_t *t, const uint8_t *p, size_t n);

/* Queues a close_notify alert (via io->send). */
void imgw_tls_close_notify(imgw_tls_t *t);

/* 1 once the handshake has completed. */
int imgw_tls_established(const imgw_tls_t *t);

#endif
