/*
 * amqp_sink.c: a plain RabbitMQ consumer, the baseline for imgw-bench's
 * downlink scenario. It consumes the way imgw's MQ thread does (durable
 * queue bound to exchange imgw.direct with routing key = queue name,
 * basic.qos prefetch, manual acks, one basic.ack with multiple = 1 per
 * drained batch) and does nothing else with a message than find the
 * intended send time that imgw-bench put in its content
 * ("content":"<stream>:<n>:<hex intended ns>:...), so that its arrival
 * latency and rate compare with the pushes imgw delivers to WebSocket
 * clients for the same publish rate.
 *
 *   amqp_sink URL QUEUE SECONDS [PREFETCH]
 *
 * Declares and binds QUEUE, prints "READY" once consuming, stops SECONDS
 * after that (or 2 s after the last message once one arrived and the stream
 * went idle), prints one JSON line and deletes nothing (the queue is
 * durable, like imgw's). Time is CLOCK_MONOTONIC, as uv_hrtime() in the
 * bench. Build (bench/run_cluster.py does it):
 *   gcc -O2 -D_GNU_SOURCE -o /tmp/amqp_sink bench/amqp_sink.c -lrabbitmq
 */
#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

static uint64_t
now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int
cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* intended ns from '"content":"s:n:HEX:' in body; 0 when absent */
static uint64_t
intended_of(const char *b, size_t len)
{
    static const char key[] = "\"content\":\"";
    const char *p = memmem(b, len, key, sizeof(key) - 1);
    if (p == NULL)
        return 0;
    const char *e = b + len;
    p += sizeof(key) - 1;
    for (int colons = 0; p < e && colons < 2; p++)
        if (*p == ':')
            colons++;
    uint64_t v = 0;
    for (; p < e && *p != ':'; p++) {
        int d = *p >= '0' && *p <= '9'   ? *p - '0'
                : *p >= 'a' && *p <= 'f' ? *p - 'a' + 10
                                         : -1;
        if (d < 0)
            return 0;
        v = v * 16 + (uint64_t)d;
    }
    return v;
}

#define DIE(...)                                                               \
    do {                                                                       \
        fprintf(stderr, "amqp_sink: " __VA_ARGS__);                            \
        fputc('\n', stderr);                                                   \
        return 1;                                                              \
    } while (0)

static int
rpc_ok(amqp_connection_state_t c)
{
    return amqp_get_rpc_reply(c).reply_type == AMQP_RESPONSE_NORMAL;
}

int
main(int argc, char **argv)
{
    if (argc < 4)
        DIE("usage: amqp_sink URL QUEUE SECONDS [PREFETCH]");
    char *url = strdup(argv[1]);
    const char *qn = argv[2];
    double secs = atof(argv[3]);
    int prefetch = argc > 4 ? atoi(argv[4]) : 256;
    struct amqp_connection_info ci;
    if (amqp_parse_url(url, &ci) != AMQP_STATUS_OK)
        DIE("bad url");
    amqp_connection_state_t c = amqp_new_connection();
    amqp_socket_t *s = amqp_tcp_socket_new(c);
    if (s == NULL || amqp_socket_open(s, ci.host, ci.port) != 0)
        DIE("connect failed");
    if (amqp_login(c, ci.vhost, 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, ci.user,
                   ci.password)
            .reply_type != AMQP_RESPONSE_NORMAL)
        DIE("login failed");
    amqp_channel_open(c, 1);
    if (!rpc_ok(c))
        DIE("channel.open failed");
    amqp_bytes_t q = amqp_cstring_bytes(qn);
    amqp_bytes_t x = amqp_cstring_bytes("imgw.direct");
    amqp_exchange_declare(c, 1, x, amqp_cstring_bytes("direct"), 0, 1, 0, 0,
                          amqp_empty_table);
    if (!rpc_ok(c))
        DIE("exchange.declare failed");
    amqp_queue_declare(c, 1, q, 0, 1, 0, 0, amqp_empty_table);
    if (!rpc_ok(c))
        DIE("queue.declare failed");
    amqp_queue_purge(c, 1, q);
    amqp_queue_bind(c, 1, q, x, q, amqp_empty_table);
    if (!rpc_ok(c))
        DIE("queue.bind failed");
    amqp_basic_qos(c, 1, 0, (uint16_t)prefetch, 0);
    amqp_basic_consume(c, 1, q, amqp_empty_bytes, 0, 0, 0, amqp_empty_table);
    if (!rpc_ok(c))
        DIE("basic.consume failed");
    printf("READY\n");
    fflush(stdout);

    size_t cap = 1 << 20, n = 0, nolat = 0;
    uint64_t *lat = malloc(cap * sizeof(*lat));
    uint64_t t_start = now_ns(), first_int = 0, first_arr = 0, last_arr = 0;
    uint64_t end = t_start + (uint64_t)(secs * 1e9), unacked_tag = 0;
    for (;;) {
        uint64_t t = now_ns();
        if (t >= end || (n && t - last_arr > 2000000000ull))
            break;
        /* ack what we have once nothing more is waiting (one per batch) */
        if (unacked_tag && !amqp_data_in_buffer(c) &&
            !amqp_frames_enqueued(c)) {
            amqp_basic_ack(c, 1, unacked_tag, 1);
            unacked_tag = 0;
        }
        struct timeval tv = {0, 200000};
        amqp_envelope_t env;
        amqp_maybe_release_buffers(c);
        amqp_rpc_reply_t r = amqp_consume_message(c, &env, &tv, 0);
        if (r.reply_type != AMQP_RESPONSE_NORMAL) {
            if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
                r.library_error == AMQP_STATUS_TIMEOUT)
                continue;
            DIE("consume failed");
        }
        uint64_t ta = now_ns();
        uint64_t ti = intended_of(env.message.body.bytes, env.message.body.len);
        if (ti && ti <= ta) {
            if (n == cap) {
                cap *= 2;
                lat = realloc(lat, cap * sizeof(*lat));
            }
            if (first_int == 0 || ti < first_int)
                first_int = ti;
            lat[n++] = ta - ti;
        } else {
            nolat++;
        }
        if (first_arr == 0)
            first_arr = ta;
        last_arr = ta;
        unacked_tag = env.delivery_tag;
        amqp_destroy_envelope(&env);
        if (n % 4096 == 0 && unacked_tag) { /* bound the batch */
            amqp_basic_ack(c, 1, unacked_tag, 1);
            unacked_tag = 0;
        }
    }
    if (unacked_tag)
        amqp_basic_ack(c, 1, unacked_tag, 1);
    qsort(lat, n, sizeof(*lat), cmp_u64);
#define P(f) (n ? (double)lat[(size_t)((double)(n - 1) * (f))] / 1e3 : 0)
    double span = n && last_arr > first_int ? (last_arr - first_int) / 1e9 : 0;
    printf("JSON {\"scenario\":\"amqp_sink\",\"queue\":\"%s\",\"received\":%zu,"
           "\"no_timestamp\":%zu,\"span_s\":%.3f,\"rate\":%.1f,"
           "\"latency_us\":{\"p50\":%.0f,\"p90\":%.0f,\"p99\":%.0f,"
           "\"max\":%.0f}}\n",
           qn, n, nolat, span, span > 0 ? n / span : 0, P(.5), P(.9), P(.99),
           n ? lat[n - 1] / 1e3 : 0);
    amqp_channel_close(c, 1, AMQP_REPLY_SUCCESS);
    amqp_connection_close(c, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(c);
    return 0;
}
