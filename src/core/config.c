/*
 * config.c: loading and validating imgw's configuration (protocol.md
 * section 9; the contract is in config.h).
 *
 * Threads: main thread only, once, before any loop starts. Nothing here
 * keeps state between calls except inih's own option globals, which are set
 * before each parse (the unit tests call imgw_config_load() many times).
 *
 * Everything is driven by one table, opts[] below, in the spirit of nginx's
 * ngx_command_t: each row names a [section] key, its type, where it lives in
 * imgw_config_t, its default as text, its bounds and its help line. The same
 * setter parses a default, an INI value, an IMGW__SECTION__KEY variable and
 * the -t option, so a default can never bypass validation and --help can
 * never disagree with the code.
 *
 * Order of work in imgw_config_load(): scan the command line first (so that
 * -h/-V/-c are known and bad options fail early), then apply defaults, the
 * INI file, the environment and finally the command-line values, which gives
 * CLI > env > file > default even though the CLI is read first. Values that
 * depend on others (broker_id, node_id, nacos.ip) are derived last so that a
 * port from the environment or a broker_id from the file counts, and the
 * cross-key checks run on the final result.
 */
#include "config.h"
#include "hash.h"

#include "log.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h> /* ini.h uses bool without including it */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <ini.h>

extern char **environ;

#define IMGW__CONFIG_DEFAULT_PATH "conf/imgw.ini"
#define IMGW__CONFIG_ENV_PREFIX "IMGW__"
/*
 * Longest INI line we accept. inih's built-in limit is 200 bytes, too short
 * for a 511-byte jwt_secret or a 1023-byte origins list; longer lines are
 * split by inih and surface as a syntax error on that line.
 */
#define IMGW__CONFIG_MAX_LINE 4096

typedef enum imgw_config_type_e {
    IMGW__CT_INT,
    IMGW__CT_BOOL,
    IMGW__CT_STR,
    IMGW__CT_PORTS,
    IMGW__CT_ENUM
} imgw_config_type_t;

/*
 * One configuration key. For ints, min/max bound the value; for port lists
 * they bound the number of entries. def is the default as the operator would
 * write it and goes through the same setter as any other value; def == NULL
 * marks a derived default, described for humans by shown.
 */
typedef struct imgw_config_opt_s {
    const char *section;
    const char *key;
    imgw_config_type_t type;
    size_t off;       /* offsetof the value in imgw_config_t */
    size_t size;      /* strings: buffer size including the NUL */
    size_t count_off; /* port lists: offsetof the int entry count */
    const char *def;  /* default as text; NULL = derived, see shown */
    long long min;
    long long max;
    const char *choices; /* enums: '|'-separated accepted values */
    const char *shown;   /* derived defaults: how --help describes them */
    const char *help;
} imgw_config_opt_t;

/*
 * The _Generic selections make a row fail to compile when its field has the
 * wrong C type (an int row pointing at a char array, say), which offsetof
 * alone would silently accept.
 */
#define IMGW__FIELD(field) (((imgw_config_t *)0)->field)
#define IMGW__OFF_INT(field)                                                   \
    _Generic(IMGW__FIELD(field), int : offsetof(imgw_config_t, field))
#define IMGW__OFF_STR(field)                                                   \
    _Generic(IMGW__FIELD(field), char * : offsetof(imgw_config_t, field))
#define IMGW__OFF_PORTS(field)                                                 \
    _Generic(IMGW__FIELD(field), uint16_t * : offsetof(imgw_config_t, field))

/* The rows read best one key per entry, so the formatter keeps off. */
/* clang-format off */
#define OPT_INT(sec, key, field, def, min, max, help)                        \
    {sec, key, IMGW__CT_INT, IMGW__OFF_INT(field), 0, 0, def, min, max,      \
     NULL, NULL, help}
#define OPT_INT_DERIVED(sec, key, field, shown, min, max, help)              \
    {sec, key, IMGW__CT_INT, IMGW__OFF_INT(field), 0, 0, NULL, min, max,     \
     NULL, shown, help}
#define OPT_BOOL(sec, key, field, def, help)                                 \
    {sec, key, IMGW__CT_BOOL, IMGW__OFF_INT(field), 0, 0, def, 0, 1, NULL,   \
     NULL, help}
#define OPT_STR(sec, key, field, def, help)                                  \
    {sec, key, IMGW__CT_STR, IMGW__OFF_STR(field),                           \
     sizeof(IMGW__FIELD(field)), 0, def, 0, 0, NULL, NULL, help}
#define OPT_STR_DERIVED(sec, key, field, shown, help)                        \
    {sec, key, IMGW__CT_STR, IMGW__OFF_STR(field),                           \
     sizeof(IMGW__FIELD(field)), 0, "", 0, 0, NULL, shown, help}
#define OPT_ENUM(sec, key, field, def, choices, help)                        \
    {sec, key, IMGW__CT_ENUM, IMGW__OFF_STR(field),                          \
     sizeof(IMGW__FIELD(field)), 0, def, 0, 0, choices, NULL, help}
#define OPT_PORTS(sec, key, field, nfield, def, min, help)                   \
    {sec, key, IMGW__CT_PORTS, IMGW__OFF_PORTS(field), 0,                    \
     IMGW__OFF_INT(nfield), def, min, IMGW_CONFIG_MAX_PORTS, NULL, NULL,     \
     help}

/* Bounds shared by several rows. */
#define IMGW__DAY 86400
#define IMGW__MIB (1024 * 1024)

static const imgw_config_opt_t opts[] = {
    /* [server] */
    OPT_PORTS("server", "ports", ports, n_ports, "8080", 1,
              "comma list of WebSocket/HTTP ports; every loop listens on "
              "each (SO_REUSEPORT)"),
    OPT_STR("server", "bind", bind, "0.0.0.0",
            "listen address (IPv4 or IPv6 literal)"),
    OPT_INT_DERIVED("server", "threads", threads, "CPU count", 1, 256,
                    "number of reactor loops (-t overrides)"),
    OPT_STR_DERIVED("server", "broker_id", broker_id, "<hostname>-<first port>",
                    "this node's id: RabbitMQ queue name and route value"),
    OPT_INT_DERIVED("server", "node_id", node_id, "hash of broker_id", 0, 1023,
                    "10-bit node id inside message ids; unique per cluster"),
    OPT_INT("server", "route_ttl", route_ttl, "180", 1, 30 * IMGW__DAY,
            "seconds a user route lives in Redis; refreshed by heartbeats"),
    OPT_INT("server", "revoke_window", revoke_window, "120", 0, 30 * IMGW__DAY,
            "seconds after sending during which a message may be revoked"),
    OPT_ENUM("server", "sync_max_seq", sync_max_seq, "bound", "bound|after",
             "SyncRequest with min_seq 0: bound = max_seq is an upper bound "
             "(contract); after = the messages after max_seq (seed 003)"),
    OPT_INT("server", "max_connections", max_connections, "1000000", 1,
            100000000, "connections per node; beyond: HTTP 503"),
    OPT_INT("server", "max_connections_per_ip", max_connections_per_ip, "0", 0,
            100000000, "connections per client address; 0 = unlimited"),
    OPT_INT("server", "handshake_rate", handshake_rate, "0", 0, 10000000,
            "new connections per second per loop; 0 = unlimited"),
    OPT_INT("server", "batch_us", batch_us, "200", 0, 10000,
            "microseconds a busy loop waits for more input before it polls "
            "again (fewer wake-ups and writes under load); 0 = off"),
    OPT_INT("server", "heartbeat_timeout", heartbeat_timeout, "90", 1,
            IMGW__DAY, "seconds without a frame before close 4000"),
    OPT_INT("server", "auth_timeout", auth_timeout, "10", 1, 3600,
            "seconds to authenticate before close 4001"),
    OPT_INT("server", "drain_seconds", drain_seconds, "10", 0, 3600,
            "seconds over which connections are closed on SIGTERM"),
    OPT_STR("server", "origins", origins, "",
            "comma list of allowed Origin header values; empty = any"),

    /* [auth] */
    OPT_STR("auth", "jwt_secret", jwt_secret, "",
            "HS256 secret, at least 32 bytes; empty = HS256 not accepted"),
    OPT_STR("auth", "jwt_public_key", jwt_public_key, "",
            "PEM public key file for RS256/ES256"),
    OPT_INT("auth", "leeway", leeway, "30", 0, 3600,
            "seconds of clock skew allowed for exp/nbf"),
    OPT_BOOL("auth", "require_exp", require_exp, "true",
             "refuse tokens without an exp claim"),
    OPT_STR("auth", "issuer", issuer, "",
            "required iss claim; empty = not checked"),
    OPT_STR("auth", "audience", audience, "",
            "required aud claim; empty = not checked"),
    OPT_STR("auth", "app_ids", app_ids, "",
            "comma list of accepted app_id claims; empty = not checked"),
    OPT_STR("auth", "admin_token", admin_token, "",
            "bearer token for /api/*, at least 32 bytes; empty = /api "
            "disabled (404)"),
    OPT_INT("auth", "admin_fail_limit", admin_fail_limit, "20", 0, 1000000,
            "failed /api authentications a minute per client address (per "
            "loop) before 429; 0 = no limit"),
    OPT_BOOL("auth", "dev_tokens", dev_tokens, "false",
             "enable /dev/token and /dev/group (development only)"),

    /* [store] */
    OPT_ENUM("store", "backend", backend, "memory", "memory|file|redis",
             "message and route store: memory (single node, lost on "
             "restart), file (single node, durable) or redis"),
    OPT_STR("store", "path", store_path, "data",
            "data directory of the file backend"),
    OPT_ENUM("store", "fsync", store_fsync, "interval",
             "always|interval|never",
             "file backend: fdatasync the journal before every answer, "
             "every fsync_interval_ms, or never"),
    OPT_INT("store", "fsync_interval_ms", store_fsync_interval_ms, "1000", 1,
            60000, "file backend: milliseconds between fdatasyncs"),
    OPT_INT("store", "compact_bytes", store_compact_bytes, "67108864", 65536,
            2147483647,
            "file backend: journal bytes that trigger a snapshot"),
    OPT_STR("store", "redis_url", redis_url, "redis://127.0.0.1:6379/0",
            "Redis address when backend = redis"),
    OPT_INT("store", "retention_count", retention_count, "10000", 1, 100000000,
            "messages kept per timeline"),
    OPT_INT("store", "retention_days", retention_days, "7", 1, 3650,
            "days messages are kept"),
    OPT_INT("store", "dedupe_ttl", dedupe_ttl, "86400", 1, 30 * IMGW__DAY,
            "seconds a client message id is remembered for dedupe"),
    OPT_INT("store", "redis_timeout_ms", redis_timeout_ms, "2000", 1, 600000,
            "milliseconds before a Redis command fails"),
    OPT_INT("store", "seq_idle_days", seq_idle_days, "30", 1, 3650,
            "days a user's max seq outlives retention after its last use"),
    OPT_INT("store", "max_users", max_users, "2000000", 1, 1000000000,
            "memory backend: per-user records; past it sends to new users "
            "get ERR_SERVER_BUSY"),
    OPT_INT("store", "max_conversations", max_conversations, "200", 1, 10000,
            "conversations kept per user (every backend); the one updated "
            "longest ago is dropped"),

    /* [mq] */
    OPT_STR("mq", "url", mq_url, "",
            "amqp://user:pass@host:port/vhost; empty = single node, no broker"),
    OPT_STR("mq", "exchange", mq_exchange, "imgw.direct",
            "direct exchange for downlink; routing key = broker_id"),
    OPT_INT("mq", "prefetch", mq_prefetch, "256", 1, 65535,
            "unacknowledged deliveries in flight (basic.qos)"),

    /* [limits] */
    OPT_INT("limits", "max_message_bytes", max_message_bytes, "65536", 1,
            64 * IMGW__MIB, "content bytes; over: ERR_MESSAGE_TOO_LARGE"),
    OPT_INT("limits", "max_frame_bytes", max_frame_bytes, "131072", 1024,
            64 * IMGW__MIB, "whole WebSocket message; over: close 1009"),
    OPT_INT("limits", "send_rate", send_rate, "50", 1, 1000000,
            "sends per second per connection (burst 2x)"),
    OPT_INT("limits", "user_send_rate", user_send_rate, "0", 0, 1000000,
            "sends per second per user, all its connections on this node "
            "together (burst 2x); 0 = 2 x send_rate"),
    OPT_INT("limits", "user_receipt_rate", user_receipt_rate, "0", 0,
            1000000,
            "read receipts and typing requests per second per user on this "
            "node (burst 2x); 0 = send_rate"),
    OPT_INT("limits", "presence_subscriptions", presence_subscriptions,
            "100", 0, 10000,
            "users one connection may subscribe to for presence pushes; "
            "0 = subscriptions off"),
    OPT_INT("limits", "receipt_interval_ms", receipt_interval_ms, "1000", 10,
            60000,
            "at most one read receipt push per (user, conversation) per "
            "interval; the latest position is pushed at its end"),
    OPT_INT("limits", "typing_interval_ms", typing_interval_ms, "2000", 10,
            60000,
            "at most one typing push per (user, conversation) per interval; "
            "the latest status is pushed at its end"),
    OPT_INT("limits", "max_queued_bytes", max_queued_bytes, "4194304", 4096,
            1024 * IMGW__MIB, "per-connection write queue bound"),
    OPT_INT("limits", "max_body_bytes", max_body_bytes, "1048576", 1024,
            64 * IMGW__MIB, "HTTP request body bound (/api)"),

    /* [tls] */
    OPT_STR("tls", "cert", tls_cert, "", "PEM certificate chain file"),
    OPT_STR("tls", "key", tls_key, "", "PEM private key file"),
    OPT_PORTS("tls", "ports", tls_ports, n_tls_ports, "", 0,
              "comma list of wss ports, separate from server.ports; "
              "empty = no TLS"),

    /* [nacos] */
    OPT_STR("nacos", "server", nacos_server, "",
            "Nacos host:port; empty = no registration"),
    OPT_STR("nacos", "service", nacos_service, "imgw", "service name"),
    OPT_STR("nacos", "group", nacos_group, "DEFAULT_GROUP", "group name"),
    OPT_STR("nacos", "namespace", nacos_namespace, "",
            "namespace id; empty = public"),
    OPT_STR_DERIVED("nacos", "ip", nacos_ip, "bind, or 127.0.0.1 if wildcard",
                    "address registered in Nacos"),
    OPT_INT("nacos", "beat_interval", nacos_beat_interval, "5", 1, 3600,
            "seconds between heartbeats to Nacos"),

    /* [hooks] (docs/hooks.md) */
    OPT_STR("hooks", "before_send_url", hooks_before_send_url, "",
            "http(s) URL asked before each send is stored; empty = off"),
    OPT_STR("hooks", "events_url", hooks_events_url, "",
            "http(s) URL receiving event batches; empty = off"),
    OPT_STR("hooks", "events", hooks_events,
            "message.offline,user.online,user.offline",
            "comma list of events sent to events_url"),
    OPT_STR("hooks", "secret", hooks_secret, "",
            "HMAC-SHA256 key signing every hook request (16+ bytes; "
            "required with a hook URL)"),
    OPT_ENUM("hooks", "failure", hooks_failure, "closed", "open|closed",
             "before-send hook timeout/down/bad answer: open = allow, "
             "closed = ERR_SERVER_BUSY"),
    OPT_INT("hooks", "timeout_ms", hooks_timeout_ms, "1000", 10, 60000,
            "before-send call timeout (ms)"),
    OPT_INT("hooks", "max_inflight", hooks_max_inflight, "256", 1, 65536,
            "before-send calls in flight per loop; beyond: ERR_SERVER_BUSY"),
    OPT_INT("hooks", "max_response_bytes", hooks_max_response_bytes, "65536",
            256, 16 * IMGW__MIB, "hook response body bound"),
    OPT_INT("hooks", "batch", hooks_batch, "100", 1, 10000,
            "events per POST"),
    OPT_INT("hooks", "flush_ms", hooks_flush_ms, "200", 10, 60000,
            "at most one event POST per loop every flush_ms"),
    OPT_INT("hooks", "queue_max", hooks_queue_max, "10000", 1, 1000000,
            "events held per loop; beyond: dropped and counted"),
    OPT_INT("hooks", "retry_max_ms", hooks_retry_max_ms, "30000", 100,
            3600000, "cap of the event POST retry backoff (ms)"),
    OPT_INT("hooks", "preview_bytes", hooks_preview_bytes, "128", 0, 4096,
            "message.offline content preview bound (bytes, UTF-8 cut)"),
};
/* clang-format on */

#define IMGW__N_OPTS (sizeof(opts) / sizeof(opts[0]))

/* State of one imgw_config_load() call; lives on its stack. */
typedef struct imgw_config_load_s {
    imgw_config_t *cfg;
    unsigned char set[IMGW__N_OPTS];     /* given by file, env or CLI */
    unsigned char in_file[IMGW__N_OPTS]; /* seen in the file: no repeats */
    int failed;                          /* handler already wrote err */
    char *err;
    size_t errlen;
} imgw_config_load_t;

static void imgw_config_fail(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void
imgw_config_fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    int n;

    if (err == NULL || errlen == 0)
        return;
    n = snprintf(err, errlen, "config: ");
    if (n < 0 || (size_t)n >= errlen)
        return;
    va_start(ap, fmt);
    vsnprintf(err + n, errlen - (size_t)n, fmt, ap);
    va_end(ap);
}

static const imgw_config_opt_t *
imgw_config_find(const char *section, const char *key)
{
    for (size_t i = 0; i < IMGW__N_OPTS; i++)
        if (strcasecmp(opts[i].section, section) == 0 &&
            strcasecmp(opts[i].key, key) == 0)
            return &opts[i];
    return NULL;
}

static int
imgw_config_section_known(const char *section)
{
    for (size_t i = 0; i < IMGW__N_OPTS; i++)
        if (strcasecmp(opts[i].section, section) == 0)
            return 1;
    return 0;
}

/* Copies s without leading and trailing blanks into out (outlen bytes). */
static void
imgw_config_trim(const char *s, char *out, size_t outlen)
{
    size_t len;

    while (*s && isspace((unsigned char)*s))
        s++;
    len = strlen(s);
    while (len > 0 && isspace((unsigned char)s[len - 1]))
        len--;
    if (len >= outlen)
        len = outlen - 1;
    memmove(out, s, len); /* out may be s itself */
    out[len] = '\0';
}

/* Strict base-10 integer: digits only, optional sign, no trailing junk. */
static int
imgw_config_parse_ll(const char *s, long long *out)
{
    char *end;

    if (*s == '\0' || isspace((unsigned char)*s))
        return -1;
    errno = 0;
    *out = strtoll(s, &end, 10);
    if (*end != '\0')
        return -1;
    if (errno == ERANGE)
        return -2;
    return 0;
}

static int
imgw_config_parse_bool(const char *s)
{
    static const char *const yes[] = {"true", "1", "yes", "on"};
    static const char *const no[] = {"false", "0", "no", "off"};

    for (size_t i = 0; i < 4; i++) {
        if (strcasecmp(s, yes[i]) == 0)
            return 1;
        if (strcasecmp(s, no[i]) == 0)
            return 0;
    }
    return -1;
}

/*
 * Parses a comma-separated port list such as "8080, 8081" into ports[].
 * Returns the count, or -1 with why (a short phrase) filled in.
 */
static int
imgw_config_parse_ports(const char *s, uint16_t *ports, char *why,
                        size_t whylen)
{
    char tok[32];
    int n = 0;
    const char *p = s;

    if (*s == '\0')
        return 0;
    for (;;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        long long v;

        if (len >= sizeof(tok)) {
            snprintf(why, whylen, "entry %d is not a port number", n + 1);
            return -1;
        }
        memcpy(tok, p, len);
        tok[len] = '\0';
        imgw_config_trim(tok, tok, sizeof(tok));
        if (tok[0] == '\0') {
            snprintf(why, whylen, "entry %d is empty", n + 1);
            return -1;
        }
        if (imgw_config_parse_ll(tok, &v) != 0 || v < 1 || v > 65535) {
            snprintf(why, whylen, "'%s' is not a port number (1..65535)", tok);
            return -1;
        }
        if (n == IMGW_CONFIG_MAX_PORTS) {
            snprintf(why, whylen, "more than %d ports", IMGW_CONFIG_MAX_PORTS);
            return -1;
        }
        for (int i = 0; i < n; i++) {
            if (ports[i] == (uint16_t)v) {
                snprintf(why, whylen, "port %lld is listed twice", v);
                return -1;
            }
        }
        ports[n++] = (uint16_t)v;
        if (comma == NULL)
            break;
        p = comma + 1;
    }
    return n;
}

/*
 * Parses val for option o and stores it in cfg. where is appended to an
 * error (" (conf/imgw.ini:3)", " (from -t)"). Values are echoed in errors
 * only when short and not strings, so a secret never reaches a log.
 * Returns 0 or -1 with err filled.
 */
static int
imgw_config_set(imgw_config_t *cfg, const imgw_config_opt_t *o, const char *raw,
                const char *where, char *err, size_t errlen)
{
    char *base = (char *)cfg + o->off;
    char val[IMGW__CONFIG_MAX_LINE];
    long long v;
    int rc, b;

    if (strlen(raw) >= sizeof(val)) {
        imgw_config_fail(err, errlen, "%s.%s: value is too long%s", o->section,
                         o->key, where);
        return -1;
    }
    imgw_config_trim(raw, val, sizeof(val));

    switch (o->type) {
    case IMGW__CT_INT:
        rc = imgw_config_parse_ll(val, &v);
        if (rc == -1) {
            imgw_config_fail(err, errlen, "%s.%s: '%.64s' is not an integer%s",
                             o->section, o->key, val, where);
            return -1;
        }
        if (rc == -2 || v < o->min || v > o->max) {
            imgw_config_fail(err, errlen,
                             "%s.%s: %.64s is out of range %lld..%lld%s",
                             o->section, o->key, val, o->min, o->max, where);
            return -1;
        }
        *(int *)(void *)base = (int)v;
        return 0;

    case IMGW__CT_BOOL:
        b = imgw_config_parse_bool(val);
        if (b < 0) {
            imgw_config_fail(err, errlen,
                             "%s.%s: '%.64s' is not a boolean "
                             "(true|false|yes|no|on|off|1|0)%s",
                             o->section, o->key, val, where);
            return -1;
        }
        *(int *)(void *)base = b;
        return 0;

    case IMGW__CT_STR:
        if (strlen(val) >= o->size) {
            imgw_config_fail(
                err, errlen, "%s.%s: value is too long (%zu bytes, max %zu)%s",
                o->section, o->key, strlen(val), o->size - 1, where);
            return -1;
        }
        /* Zero-padded so that two equal configs compare equal bytewise. */
        memset(base, 0, o->size);
        memcpy(base, val, strlen(val));
        return 0;

    case IMGW__CT_ENUM: {
        const char *c = o->choices;

        while (*c) {
            size_t len = strcspn(c, "|");

            if (strlen(val) == len && strncasecmp(val, c, len) == 0 &&
                len < o->size) {
                memset(base, 0, o->size);
                memcpy(base, c, len); /* canonical spelling */
                return 0;
            }
            c += len;
            if (*c == '|')
                c++;
        }
        imgw_config_fail(err, errlen, "%s.%s: '%.64s' is not one of %s%s",
                         o->section, o->key, val, o->choices, where);
        return -1;
    }

    case IMGW__CT_PORTS: {
        uint16_t ports[IMGW_CONFIG_MAX_PORTS] = {0};
        char why[96];
        int n = imgw_config_parse_ports(val, ports, why, sizeof(why));

        if (n >= 0 && n < o->min)
            snprintf(why, sizeof(why), "at least %lld port%s required", o->min,
                     o->min == 1 ? " is" : "s are");
        if (n < o->min) {
            imgw_config_fail(err, errlen, "%s.%s: %s%s", o->section, o->key,
                             why, where);
            return -1;
        }
        memcpy(base, ports, sizeof(ports));
        *(int *)(void *)((char *)cfg + o->count_off) = n;
        return 0;
    }
    }
    return -1;
}

static void
imgw_config_derive_broker_id(imgw_config_t *cfg)
{
    char host[128];

    if (gethostname(host, sizeof(host)) != 0 || host[0] == '\0')
        snprintf(host, sizeof(host), "localhost");
    host[sizeof(host) - 1] = '\0';
    memset(cfg->broker_id, 0, sizeof(cfg->broker_id));
    /* Clip the host name so that "-<port>" always fits: ids must differ. */
    snprintf(cfg->broker_id, sizeof(cfg->broker_id), "%.*s-%u",
             (int)(sizeof(cfg->broker_id) - 8), host,
             cfg->n_ports > 0 ? (unsigned)cfg->ports[0] : 0u);
}

static void
imgw_config_derive_nacos_ip(imgw_config_t *cfg)
{
    const char *ip = cfg->bind;

    /* A wildcard cannot be dialled; loopback at least works on one host. */
    if (ip[0] == '\0' || strcmp(ip, "0.0.0.0") == 0 || strcmp(ip, "::") == 0)
        ip = "127.0.0.1";
    memset(cfg->nacos_ip, 0, sizeof(cfg->nacos_ip));
    snprintf(cfg->nacos_ip, sizeof(cfg->nacos_ip), "%s", ip);
}

static int
imgw_config_cpu_count(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);

    if (n < 1)
        return 1;
    return n > 256 ? 256 : (int)n;
}

void
imgw_config_defaults(imgw_config_t *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->log_level = IMGW_LOG_INFO_L;
    for (size_t i = 0; i < IMGW__N_OPTS; i++) {
        /* The table's defaults are valid by construction (test_config
         * checks them); a failure here would be a bug in opts[]. */
        if (opts[i].def != NULL)
            imgw_config_set(cfg, &opts[i], opts[i].def, "", NULL, 0);
    }
    cfg->threads = imgw_config_cpu_count();
    imgw_config_derive_broker_id(cfg);
    cfg->node_id = (int)(imgw_hash_fnv1a32(cfg->broker_id) % 1024u);
    imgw_config_derive_nacos_ip(cfg);
}

/* inih callback: one "key = value" line of the file. */
static int
imgw_config_ini_cb(void *user, const char *section, const char *name,
                   const char *value)
{
    imgw_config_load_t *ld = user;
    const imgw_config_opt_t *o;
    size_t i;

    if (ld->failed)
        return 0;
    ld->failed = 1; /* until proven otherwise */
    if (section[0] == '\0') {
        imgw_config_fail(ld->err, ld->errlen,
                         "key '%s' is outside any [section]", name);
        return 0;
    }
    o = imgw_config_find(section, name);
    if (o == NULL) {
        if (imgw_config_section_known(section))
            imgw_config_fail(ld->err, ld->errlen, "unknown key '%s.%s'",
                             section, name);
        else
            imgw_config_fail(ld->err, ld->errlen,
                             "unknown key '%s.%s' (no section [%s])", section,
                             name, section);
        return 0;
    }
    i = (size_t)(o - opts);
    if (ld->in_file[i]) {
        /* Last-one-wins would hide a stale line; make it visible. */
        imgw_config_fail(ld->err, ld->errlen, "%s.%s: key is repeated",
                         o->section, o->key);
        return 0;
    }
    ld->in_file[i] = 1;
    /* The line number is not known here; the caller appends file:line. */
    if (imgw_config_set(ld->cfg, o, value, "", ld->err, ld->errlen) != 0)
        return 0;
    ld->set[i] = 1;
    ld->failed = 0;
    return 1;
}

/*
 * Reads the INI file. A missing default file is fine (built-in defaults);
 * a missing -c file, an unreadable file or any bad line is an error.
 */
static int
imgw_config_load_file(imgw_config_load_t *ld)
{
    imgw_config_t *cfg = ld->cfg;
    int explicit_path = cfg->config_explicit;
    struct stat st;
    FILE *fp;
    int line;
    size_t n;

    fp = fopen(cfg->config_path, "r");
    if (fp == NULL) {
        if (!explicit_path && errno == ENOENT) {
            cfg->config_path[0] = '\0'; /* no file was read */
            return 0;
        }
        imgw_config_fail(ld->err, ld->errlen, "cannot open '%s': %s",
                         cfg->config_path, strerror(errno));
        return -1;
    }
    if (fstat(fileno(fp), &st) == 0 && S_ISDIR(st.st_mode)) {
        fclose(fp);
        imgw_config_fail(ld->err, ld->errlen, "cannot open '%s': %s",
                         cfg->config_path, strerror(EISDIR));
        return -1;
    }

    /*
     * Debian's inih exposes its compile-time options as variables. Heap
     * lines that may grow (see IMGW__CONFIG_MAX_LINE); no multi-line
     * values, so a stray indented line is an error instead of silently
     * replacing the value above it; stop at the first error so that the
     * line inih reports is the one our handler complained about.
     */
    ini_use_stack = false;
    ini_allow_realloc = true;
    ini_max_line = IMGW__CONFIG_MAX_LINE;
    ini_allow_multiline = false;
    ini_stop_on_first_error = true;

    line = ini_parse_file(fp, imgw_config_ini_cb, ld);
    fclose(fp);
    if (line == 0)
        return 0;
    if (line < 0) {
        imgw_config_fail(ld->err, ld->errlen, "cannot read '%s': %s",
                         cfg->config_path,
                         line == -2 ? "out of memory" : "I/O error");
        return -1;
    }
    if (!ld->failed)
        imgw_config_fail(ld->err, ld->errlen,
                         "syntax error, expected '[section]' or "
                         "'key = value'");
    if (ld->err == NULL || ld->errlen == 0)
        return -1;
    n = strlen(ld->err);
    if (n + 1 < ld->errlen)
        snprintf(ld->err + n, ld->errlen - n, " (%s:%d)", cfg->config_path,
                 line);
    return -1;
}

/* Builds the variable name for o: IMGW__SECTION__KEY. */
static void
imgw_config_env_name(const imgw_config_opt_t *o, char *out, size_t outlen)
{
    size_t n;

    snprintf(out, outlen, "%s%s__%s", IMGW__CONFIG_ENV_PREFIX, o->section,
             o->key);
    n = strlen(IMGW__CONFIG_ENV_PREFIX);
    for (char *p = out + n; *p; p++)
        *p = (char)toupper((unsigned char)*p);
}

/*
 * Applies every IMGW__* variable. Each must name a known key exactly, in
 * upper case: a typo must not leave a node silently misconfigured.
 */
static int
imgw_config_load_env(imgw_config_load_t *ld, char **envp)
{
    size_t plen = strlen(IMGW__CONFIG_ENV_PREFIX);

    for (char **e = envp; *e != NULL; e++) {
        const char *eq = strchr(*e, '=');
        size_t nlen = eq ? (size_t)(eq - *e) : strlen(*e);
        const imgw_config_opt_t *o = NULL;
        char name[128], where[160];

        if (strncmp(*e, IMGW__CONFIG_ENV_PREFIX, plen) != 0)
            continue;
        for (size_t i = 0; i < IMGW__N_OPTS && o == NULL; i++) {
            imgw_config_env_name(&opts[i], name, sizeof(name));
            if (strlen(name) == nlen && strncmp(name, *e, nlen) == 0)
                o = &opts[i];
        }
        if (o == NULL) {
            imgw_config_fail(ld->err, ld->errlen, "unknown variable %.*s",
                             (int)(nlen > 100 ? 100 : nlen), *e);
            return -1;
        }
        snprintf(where, sizeof(where), " (from %s)", name);
        if (imgw_config_set(ld->cfg, o, eq ? eq + 1 : "", where, ld->err,
                            ld->errlen) != 0)
            return -1;
        ld->set[o - opts] = 1;
    }
    return 0;
}

/* What the command line asked for; applied after file and env. */
typedef struct imgw_config_cli_s {
    const char *config;    /* -c */
    const char *threads;   /* -t */
    const char *log_level; /* -l */
    int help;
    int version;
} imgw_config_cli_t;

/*
 * Parses argv by hand rather than with getopt_long, whose optind and
 * internal state are process globals: imgw_config_load() must be callable
 * again (the tests do). Accepts "-c FILE", "-cFILE", "--config FILE",
 * "--config=FILE", clustered flags ("-hV") and "--" ending the options.
 */
static int
imgw_config_parse_argv(int argc, char **argv, imgw_config_cli_t *cli, char *err,
                       size_t errlen)
{
    static const struct {
        char shrt;
        const char *lng;
        int has_arg;
    } known[] = {
        {'c', "config", 1},  {'t', "threads", 1}, {'l', "log-level", 1},
        {'V', "version", 0}, {'h', "help", 0},
    };
    const size_t nknown = sizeof(known) / sizeof(known[0]);
    int i;

    memset(cli, 0, sizeof(*cli));
    for (i = 1; i < argc; i++) {
        const char *a = argv[i];
        size_t k = nknown;
        const char *arg = NULL;

        if (strcmp(a, "--") == 0) {
            i++;
            break;
        }
        if (a[0] != '-' || a[1] == '\0')
            break; /* a positional argument */

        if (a[1] == '-') {
            const char *eq = strchr(a + 2, '=');
            size_t len = eq ? (size_t)(eq - (a + 2)) : strlen(a + 2);

            for (k = 0; k < nknown; k++)
                if (strlen(known[k].lng) == len &&
                    strncmp(known[k].lng, a + 2, len) == 0)
                    break;
            if (k == nknown) {
                imgw_config_fail(err, errlen, "unknown option '%.*s'",
                                 (int)(len + 2 > 64 ? 64 : len + 2), a);
                return -1;
            }
            if (!known[k].has_arg && eq) {
                imgw_config_fail(err, errlen, "option '--%s' takes no argument",
                                 known[k].lng);
                return -1;
            }
            if (known[k].has_arg) {
                if (eq)
                    arg = eq + 1;
                else if (i + 1 < argc)
                    arg = argv[++i];
                else {
                    imgw_config_fail(err, errlen,
                                     "option '--%s' requires an argument",
                                     known[k].lng);
                    return -1;
                }
            }
        } else {
            /* A cluster of short options; one taking an argument ends it. */
            for (const char *p = a + 1; *p; p++) {
                for (k = 0; k < nknown; k++)
                    if (known[k].shrt == *p)
                        break;
                if (k == nknown) {
                    imgw_config_fail(err, errlen, "unknown option '-%c'", *p);
                    return -1;
                }
                if (!known[k].has_arg) {
                    if (known[k].shrt == 'V')
                        cli->version = 1;
                    else
                        cli->help = 1;
                    continue;
                }
                if (p[1] != '\0')
                    arg = p + 1;
                else if (i + 1 < argc)
                    arg = argv[++i];
                else {
                    imgw_config_fail(err, errlen,
                                     "option '-%c' requires an argument", *p);
                    return -1;
                }
                break;
            }
            if (arg == NULL)
                continue; /* flags only */
        }

        switch (known[k].shrt) {
        case 'c':
            cli->config = arg;
            break;
        case 't':
            cli->threads = arg;
            break;
        case 'l':
            cli->log_level = arg;
            break;
        case 'V':
            cli->version = 1;
            break;
        case 'h':
            cli->help = 1;
            break;
        }
    }
    if (i < argc) {
        imgw_config_fail(err, errlen, "unexpected argument '%.64s'", argv[i]);
        return -1;
    }
    return 0;
}

/* 127.0.0.0/8 or ::1: no other host can reach the listeners. */
static int
imgw_config_bind_is_loopback(const char *bind)
{
    unsigned char a[16];

    if (inet_pton(AF_INET, bind, a) == 1)
        return a[0] == 127;
    return inet_pton(AF_INET6, bind, a) == 1 &&
           memcmp(a, "\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\1", 16) == 0;
}

/*
 * A shared secret short enough to guess is worse than none: HS256 tokens
 * and admin requests can be tried offline or at thousands per second from
 * the network. Empty still means "off". The length is in bytes, as
 * configured. A node bound to loopback only (a laptop, a benchmark beside
 * its load generator) is not reachable from another host, so there a
 * short secret starts with a warning (cfg->weak_secret) instead of
 * refusing: the shared benchmark tools use such secrets.
 */
static int
imgw_config_check_secret(imgw_config_t *cfg, const char *key,
                         const char *value, char *err, size_t errlen)
{
    size_t n = strlen(value);

    if (n == 0 || n >= IMGW_CONFIG_MIN_SECRET)
        return 0;
    if (imgw_config_bind_is_loopback(cfg->bind)) {
        cfg->weak_secret = key;
        return 0;
    }
    imgw_config_fail(err, errlen,
                     "%s: %zu bytes is too short, at least %d are required "
                     "(e.g. openssl rand -base64 32)",
                     key, n, IMGW_CONFIG_MIN_SECRET);
    return -1;
}

/* Checks that involve more than one key; run on the final values. */

/*
 * A hook URL: http:// or https://, a host, no whitespace or control bytes
 * (it goes into libcurl as is). Returns NULL or why not.
 */
static const char *
imgw_config_url_bad(const char *u)
{
    size_t skip;
    if (strncmp(u, "http://", 7) == 0)
        skip = 7;
    else if (strncmp(u, "https://", 8) == 0)
        skip = 8;
    else
        return "must start with http:// or https://";
    if (u[skip] == '\0' || u[skip] == '/' || u[skip] == ':' ||
        u[skip] == '?' || u[skip] == '#' || u[skip] == '@')
        return "has no host";
    for (const char *p = u; *p; p++)
        if ((unsigned char)*p <= ' ' || (unsigned char)*p >= 0x7f)
            return "has a space, control or non-ASCII byte";
    return NULL;
}

/* [hooks]: URLs, the secret they need, the event names. */
static int
imgw_config_check_hooks(const imgw_config_t *cfg, char *err, size_t errlen)
{
    const char *why;
    if (cfg->hooks_before_send_url[0] &&
        (why = imgw_config_url_bad(cfg->hooks_before_send_url)) != NULL) {
        imgw_config_fail(err, errlen, "hooks.before_send_url: '%s' %s",
                         cfg->hooks_before_send_url, why);
        return -1;
    }
    if (cfg->hooks_events_url[0] &&
        (why = imgw_config_url_bad(cfg->hooks_events_url)) != NULL) {
        imgw_config_fail(err, errlen, "hooks.events_url: '%s' %s",
                         cfg->hooks_events_url, why);
        return -1;
    }
    if ((cfg->hooks_before_send_url[0] || cfg->hooks_events_url[0]) &&
        strlen(cfg->hooks_secret) < 16) {
        imgw_config_fail(err, errlen,
                         "hooks.secret: at least 16 bytes are required when "
                         "a hook URL is set (every request is signed)");
        return -1;
    }
    /* Each name of hooks.events must be one we send. */
    const char *p = cfg->hooks_events;
    while (*p) {
        size_t n = strcspn(p, ",");
        size_t a = 0, b = n;
        while (a < b && p[a] == ' ')
            a++;
        while (b > a && p[b - 1] == ' ')
            b--;
        static const char *const known[] = {"message.offline", "user.online",
                                            "user.offline"};
        int ok = b == a; /* empty items are ignored */
        for (size_t k = 0; k < 3 && !ok; k++)
            ok = strlen(known[k]) == b - a && memcmp(known[k], p + a, b - a) == 0;
        if (!ok) {
            imgw_config_fail(err, errlen,
                             "hooks.events: unknown event '%.*s' (known: "
                             "message.offline, user.online, user.offline)",
                             (int)(b - a), p + a);
            return -1;
        }
        p += n;
        if (*p == ',')
            p++;
    }
    return 0;
}

static int
imgw_config_validate(imgw_config_t *cfg, char *err, size_t errlen)
{
    unsigned char addr[16];

    cfg->weak_secret = NULL;
    if (imgw_config_check_secret(cfg, "auth.jwt_secret", cfg->jwt_secret,
                                 err, errlen) != 0 ||
        imgw_config_check_secret(cfg, "auth.admin_token", cfg->admin_token,
                                 err, errlen) != 0)
        return -1;

    if (inet_pton(AF_INET, cfg->bind, addr) != 1 &&
        inet_pton(AF_INET6, cfg->bind, addr) != 1) {
        imgw_config_fail(err, errlen,
                         "server.bind: '%.64s' is not an IPv4 or IPv6 address",
                         cfg->bind);
        return -1;
    }
    if (cfg->max_message_bytes > cfg->max_frame_bytes) {
        imgw_config_fail(err, errlen,
                         "limits.max_message_bytes: %d is larger than "
                         "limits.max_frame_bytes (%d)",
                         cfg->max_message_bytes, cfg->max_frame_bytes);
        return -1;
    }
    if (cfg->max_queued_bytes < cfg->max_frame_bytes) {
        /* A frame that can never be queued would be a certain close. */
        imgw_config_fail(err, errlen,
                         "limits.max_queued_bytes: %d is smaller than "
                         "limits.max_frame_bytes (%d)",
                         cfg->max_queued_bytes, cfg->max_frame_bytes);
        return -1;
    }
    if (strcmp(cfg->backend, "redis") == 0 && cfg->redis_url[0] == '\0') {
        imgw_config_fail(err, errlen,
                         "store.redis_url: required when store.backend is "
                         "redis");
        return -1;
    }
    if (cfg->mq_url[0] != '\0' && strncmp(cfg->mq_url, "amqp://", 7) != 0 &&
        strncmp(cfg->mq_url, "amqps://", 8) != 0) {
        /* The URL is not echoed: it usually carries a password. */
        imgw_config_fail(err, errlen,
                         "mq.url: must start with amqp:// or amqps://");
        return -1;
    }
    if (cfg->mq_url[0] != '\0' && cfg->mq_exchange[0] == '\0') {
        imgw_config_fail(err, errlen, "mq.exchange: must not be empty");
        return -1;
    }
    if (cfg->n_tls_ports > 0 && cfg->tls_cert[0] == '\0') {
        imgw_config_fail(err, errlen,
                         "tls.cert: required when tls.ports "
                         "is set");
        return -1;
    }
    if (cfg->tls_cert[0] != '\0' && cfg->tls_key[0] == '\0') {
        imgw_config_fail(err, errlen,
                         "tls.key: required when tls.cert is "
                         "set");
        return -1;
    }
    if (cfg->tls_key[0] != '\0' && cfg->tls_cert[0] == '\0') {
        imgw_config_fail(err, errlen,
                         "tls.cert: required when tls.key is "
                         "set");
        return -1;
    }
    for (int i = 0; i < cfg->n_tls_ports; i++) {
        for (int j = 0; j < cfg->n_ports; j++) {
            if (cfg->tls_ports[i] == cfg->ports[j]) {
                imgw_config_fail(err, errlen,
                                 "tls.ports: port %u is also in server.ports",
                                 (unsigned)cfg->tls_ports[i]);
                return -1;
            }
        }
    }
    if (cfg->nacos_server[0] != '\0' && cfg->nacos_service[0] == '\0') {
        imgw_config_fail(err, errlen, "nacos.service: must not be empty");
        return -1;
    }
    return imgw_config_check_hooks(cfg, err, errlen);
}

int
imgw_config_load(imgw_config_t *cfg, int argc, char **argv, char **envp,
                 char *err, size_t errlen)
{
    imgw_config_load_t ld;
    imgw_config_cli_t cli;
    const imgw_config_opt_t *o;
    const char *env_log = NULL;
    int level;

    if (err != NULL && errlen > 0)
        err[0] = '\0';
    if (envp == NULL)
        envp = environ;

    imgw_config_defaults(cfg);
    if (imgw_config_parse_argv(argc, argv, &cli, err, errlen) != 0)
        return IMGW_CONFIG_ERROR;
    if (cli.help) {
        imgw_config_usage(stdout);
        return IMGW_CONFIG_EXIT_OK;
    }
    if (cli.version) {
        printf("imgw %s\n", IMGW_VERSION);
        return IMGW_CONFIG_EXIT_OK;
    }

    memset(&ld, 0, sizeof(ld));
    ld.cfg = cfg;
    ld.err = err;
    ld.errlen = errlen;

    /* -c FILE */
    if (cli.config != NULL) {
        if (cli.config[0] == '\0') {
            imgw_config_fail(err, errlen, "-c: empty file name");
            return IMGW_CONFIG_ERROR;
        }
        if (strlen(cli.config) >= sizeof(cfg->config_path)) {
            imgw_config_fail(err, errlen, "-c: file name is too long");
            return IMGW_CONFIG_ERROR;
        }
        snprintf(cfg->config_path, sizeof(cfg->config_path), "%s", cli.config);
        cfg->config_explicit = 1;
    } else {
        snprintf(cfg->config_path, sizeof(cfg->config_path), "%s",
                 IMGW__CONFIG_DEFAULT_PATH);
    }
    if (imgw_config_load_file(&ld) != 0)
        return IMGW_CONFIG_ERROR;

    if (imgw_config_load_env(&ld, envp) != 0)
        return IMGW_CONFIG_ERROR;
    for (char **e = envp; *e != NULL; e++)
        if (strncmp(*e, "IMGW_LOG=", 9) == 0)
            env_log = *e + 9;

    /* The command line beats the file and the environment. */
    if (cli.threads != NULL) {
        int rc;

        o = imgw_config_find("server", "threads");
        rc = imgw_config_set(cfg, o, cli.threads, " (from -t)", err, errlen);
        if (rc != 0)
            return IMGW_CONFIG_ERROR;
        ld.set[o - opts] = 1;
    }
    /* The log level follows the same precedence as every key (issue 18):
     * IMGW_LOG first, then -l, which beats it. Both are still validated,
     * so a typo in either stops the start. An empty IMGW_LOG counts as
     * unset. (protocol.md section 9 had IMGW_LOG beat -l, like RUST_LOG;
     * that contradicted "CLI > env" and surprised users.) */
    if (env_log != NULL && env_log[0] != '\0') {
        level = imgw_log_parse_level(env_log);
        if (level < 0) {
            imgw_config_fail(err, errlen,
                             "IMGW_LOG: unknown log level '%.32s' "
                             "(trace|debug|info|warn|error)",
                             env_log);
            return IMGW_CONFIG_ERROR;
        }
        cfg->log_level = level;
    }
    if (cli.log_level != NULL) {
        level = imgw_log_parse_level(cli.log_level);
        if (level < 0) {
            imgw_config_fail(err, errlen,
                             "-l: unknown log level '%.32s' "
                             "(trace|debug|info|warn|error)",
                             cli.log_level);
            return IMGW_CONFIG_ERROR;
        }
        cfg->log_level = level;
    }

    /* Derived defaults, now that every source has been applied. */
    if (cfg->broker_id[0] == '\0' ||
        !ld.set[imgw_config_find("server", "broker_id") - opts])
        imgw_config_derive_broker_id(cfg);
    if (!ld.set[imgw_config_find("server", "node_id") - opts])
        cfg->node_id = (int)(imgw_hash_fnv1a32(cfg->broker_id) % 1024u);
    if (cfg->nacos_ip[0] == '\0' ||
        !ld.set[imgw_config_find("nacos", "ip") - opts])
        imgw_config_derive_nacos_ip(cfg);

    if (imgw_config_validate(cfg, err, errlen) != 0)
        return IMGW_CONFIG_ERROR;
    return IMGW_CONFIG_OK;
}

void
imgw_config_usage(void *fp_)
{
    FILE *fp = fp_;
    const char *section = "";

    fprintf(fp,
            "usage: imgw [-c FILE] [-t N] [-l LEVEL] [-V] [-h]\n"
            "\n"
            "options:\n"
            "  -c, --config FILE      INI file (default %s; if that is\n"
            "                         missing, built-in defaults are used)\n"
            "  -t, --threads N        reactor loops (server.threads)\n"
            "  -l, --log-level LEVEL  trace|debug|info|warn|error (default "
            "info);\n"
            "                         beats env IMGW_LOG\n"
            "  -V, --version          print the version and exit\n"
            "  -h, --help             print this help and exit\n"
            "\n"
            "configuration keys, [section] key = default. Each can be set "
            "by env\n"
            "IMGW__<SECTION>__<KEY> (upper case). Precedence: CLI > env > "
            "file > default.\n",
            IMGW__CONFIG_DEFAULT_PATH);
    for (size_t i = 0; i < IMGW__N_OPTS; i++) {
        const imgw_config_opt_t *o = &opts[i];
        const char *def = o->shown ? o->shown : o->def;

        if (strcmp(section, o->section) != 0) {
            section = o->section;
            fprintf(fp, "\n[%s]\n", section);
        }
        if (o->shown)
            fprintf(fp, "  %-22s = (%s)\n", o->key, def);
        else if (def[0] != '\0')
            fprintf(fp, "  %-22s = %s\n", o->key, def);
        else
            fprintf(fp, "  %-22s =\n", o->key); /* empty: unset */
        fprintf(fp, "      %s", o->help);
        if (o->type == IMGW__CT_INT)
            fprintf(fp, " [%lld..%lld]", o->min, o->max);
        else if (o->type == IMGW__CT_ENUM)
            fprintf(fp, " [%s]", o->choices);
        else if (o->type == IMGW__CT_BOOL)
            fprintf(fp, " [true|false]");
        else if (o->type == IMGW__CT_PORTS)
            fprintf(fp, " [%lld..%lld ports]", o->min, o->max);
        fprintf(fp, "\n");
    }
}
