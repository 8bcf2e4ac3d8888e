/*
 * mq.h: the broker thread (RabbitMQ through rabbitmq-c).
 *
 * One dedicated thread owns the AMQP connection (rabbitmq-c must never be
 * shared between threads). It declares the direct exchange and the node's
 * queue (named broker_id, bound with routing key broker_id), consumes with
 * a prefetch window, and publishes what other threads hand it through its
 * own lock-free queue plus an eventfd it polls together with the AMQP
 * socket. It reconnects with capped exponential backoff and re-declares
 * everything. Nothing here ever blocks a caller: publish and ack only
 * enqueue.
 *
 * Delivery accounting: a consumed message is handed to on_message with its
 * delivery tag; it is acked (or rejected without requeue) only when the
 * consumer calls imgw_mq_ack() / imgw_mq_reject(), from any thread, after
 * the owning loops accepted it.
 */
#ifndef IMGW_MQ_H
#define IMGW_MQ_H

#include <stddef.h>
#include <stdint.h>

typedef struct imgw_mq_s imgw_mq_t;

/*
 * Runs on the MQ thread for every consumed message. body is valid only
 * during the call (copy what you keep). The consumer must eventually call
 * imgw_mq_ack or imgw_mq_reject with tag (tags from a dead connection are
 * ignored: the broker redelivers those messages).
 */
typedef void (*imgw_mq_message_cb)(void *data, const uint8_t *body, size_t len,
                                   uint64_t tag);

typedef struct imgw_mq_opts_s {
    const char *url;        /* amqp://user:pass@host:port/vhost */
    const char *broker_id;  /* queue name and routing key */
    const char *exchange;   /* direct exchange, "imgw.direct" */
    int prefetch;           /* unacked deliveries in flight */
    int heartbeat;          /* AMQP heartbeat seconds (0 = off) */
    size_t max_message;     /* bigger deliveries are rejected */
    int publish_ttl_ms;     /* per-message expiration of what this node
                               publishes (0 = none): a push queued for a
                               node that is down is useless once stale,
                               the receivers sync from the store */
    imgw_mq_message_cb on_message;
    void *data;
} imgw_mq_opts_t;

typedef struct imgw_mq_stats_s {
    uint64_t consumed;        /* deliveries received */
    uint64_t acked;
    uint64_t rejected;        /* malformed/oversized, rejected no requeue */
    uint64_t published;       /* confirmed by the broker */
    uint64_t publish_dropped; /* queued while disconnected, or nacked */
    uint64_t reconnects;
    int connected;            /* 1 while the channel is open */
} imgw_mq_stats_t;

/** Validates the URL, starts the thread (which connects in the background). */
int imgw_mq_start(imgw_mq_t **out, const imgw_mq_opts_t *opts, char *err,
                  size_t errlen);
/*
 * Any thread: queues a persistent publish of body (copied) to the exchange
 * with routing_key. Returns 0, or IMGW_EMQ when the broker is down (the
 * message is dropped and counted: the store already has it) or the queue
 * of pending publishes is full.
 */
int imgw_mq_publish(imgw_mq_t *mq, const char *routing_key, const uint8_t *body,
                    size_t len);
/** Any thread: acknowledge / reject (no requeue) a delivery. */
void imgw_mq_ack(imgw_mq_t *mq, uint64_t tag);
void imgw_mq_reject(imgw_mq_t *mq, uint64_t tag);
/** Any thread. */
int imgw_mq_connected(imgw_mq_t *mq);
void imgw_mq_stats(imgw_mq_t *mq, imgw_mq_stats_t *out);
/** Stops the thread (closes the connection cleanly) and frees. */
void imgw_mq_stop(imgw_mq_t *mq);

#endif
