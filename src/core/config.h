/*
 * config.h: imgw's configuration (protocol.md section 9).
 *
 * One table of {section, key, type, offset, default, min, max} drives
 * loading, env overrides (IMGW__SECTION__KEY), validation and --help; the
 * resulting imgw_config_t is filled once on the main thread before any loop
 * starts and is read-only afterwards (every thread may read it).
 *
 * Precedence: CLI > env > file > default; for the log level too:
 * --log-level beats IMGW_LOG.
 */
#ifndef IMGW_CONFIG_H
#define IMGW_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#define IMGW_CONFIG_MAX_PORTS 16
#define IMGW_CONFIG_MAX_LIST 32
/* Shortest auth.jwt_secret / auth.admin_token accepted (bytes): 256 bits. */
#define IMGW_CONFIG_MIN_SECRET 32

typedef struct imgw_config_s {
    /* command line / process */
    char config_path[512];  /* -c; "" = conf/imgw.ini if present */
    int config_explicit;    /* 1 when -c was given (missing file = error) */
    int log_level;          /* IMGW_LOG_* from log.h after IMGW_LOG / -l */

    /* [server] */
    uint16_t ports[IMGW_CONFIG_MAX_PORTS];
    int n_ports;
    char bind[64];
    const char *weak_secret; /* set by load: the key of a short secret
                                accepted because bind is loopback; main
                                warns about it. NULL when none. */
    int threads;            /* default: CPU count */
    char broker_id[128];    /* default: hostname-<first port> */
    int node_id;            /* 0..1023; default: hash of broker_id */
    int route_ttl;          /* seconds */
    int revoke_window;      /* seconds */
    int max_connections;
    int max_connections_per_ip; /* 0 = unlimited */
    int handshake_rate;     /* new connections/s per loop; 0 = unlimited */
    int batch_us;           /* busy loop's wait before polling; 0 = off */
    int heartbeat_timeout;  /* seconds */
    int auth_timeout;       /* seconds */
    int drain_seconds;      /* paced drain window on SIGTERM */
    char sync_max_seq[8];   /* "bound" (contract) | "after" (seed 003) */
    char origins[1024];     /* comma list of allowed Origin values; "" = any */

    /* [auth] */
    char jwt_secret[512];   /* "" or at least IMGW_CONFIG_MIN_SECRET bytes,
                               unless the node listens on loopback only */
    char jwt_public_key[512]; /* PEM file path */
    int leeway;
    int require_exp;        /* bool: tokens without exp are refused */
    char issuer[256];
    char audience[256];
    char app_ids[1024];     /* comma list; "" = not checked */
    char admin_token[256];  /* "" = /api disabled (404), else at least
                               IMGW_CONFIG_MIN_SECRET bytes */
    int admin_fail_limit;   /* failed admin auths a minute per address and
                               loop before 429; 0 = no limit */
    int dev_tokens;         /* bool: /dev/token, /dev/group enabled */

    /* [store] */
    char backend[16];       /* "memory" | "file" | "redis" */
    char redis_url[512];
    char store_path[512];   /* file backend: data directory */
    char store_fsync[16];   /* "always" | "interval" | "never" */
    int store_fsync_interval_ms;
    int store_compact_bytes;
    int retention_count;
    int retention_days;
    int dedupe_ttl;         /* seconds */
    int redis_timeout_ms;
    int seq_idle_days;      /* IM-SEQ lives retention + this after use */
    int max_users;          /* memory backend: user records */
    int max_conversations;  /* memory backend: conversations per user */

    /* [mq] */
    char mq_url[512];       /* "" = single node */
    char mq_exchange[128];
    int mq_prefetch;

    /* [limits] */
    int max_message_bytes;
    int max_frame_bytes;
    int send_rate;          /* msgs/s per connection, burst 2x */
    int user_send_rate;     /* msgs/s per user on this node, burst 2x;
                               0 = 2 x send_rate */
    int user_receipt_rate;  /* receipts + typing /s per user on this node,
                               burst 2x; 0 = send_rate */
    int presence_subscriptions; /* presence subscriptions per connection;
                                   0 = off */
    int receipt_interval_ms; /* receipt pushes per (user, conversation):
                                at most one per interval */
    int typing_interval_ms;  /* the same for typing pushes */
    int max_queued_bytes;   /* per-connection write queue bound */
    int max_body_bytes;     /* HTTP request body bound (api) */

    /* [tls] */
    char tls_cert[512];
    char tls_key[512];
    uint16_t tls_ports[IMGW_CONFIG_MAX_PORTS];
    int n_tls_ports;

    /* [nacos] */
    char nacos_server[256]; /* host:port; "" = no registration */
    char nacos_service[128];
    char nacos_group[128];
    char nacos_namespace[128];
    char nacos_ip[64];      /* address to register; default: bind or 127.0.0.1 */
    int nacos_beat_interval; /* seconds */

    /* [hooks] (docs/hooks.md) */
    char hooks_before_send_url[512]; /* "" = no before-send hook */
    char hooks_events_url[512];      /* "" = no event hook */
    char hooks_events[256];          /* comma list of event types */
    char hooks_secret[512];          /* HMAC-SHA256 key of every request */
    char hooks_failure[8];           /* "open" | "closed" */
    int hooks_timeout_ms;            /* one before-send call */
    int hooks_max_inflight;          /* before-send calls per loop */
    int hooks_max_response_bytes;    /* response body bound */
    int hooks_batch;                 /* events per POST */
    int hooks_flush_ms;              /* at most one event POST per ... */
    int hooks_queue_max;             /* events held per loop */
    int hooks_retry_max_ms;          /* backoff cap of event POSTs */
    int hooks_preview_bytes;         /* message.offline content preview */
} imgw_config_t;

enum {
    IMGW_CONFIG_OK = 0,      /* run the server */
    IMGW_CONFIG_EXIT_OK = 1, /* --help or --version printed: exit 0 */
    IMGW_CONFIG_ERROR = 2    /* err filled, names the bad key: exit 2 */
};

/** Fills every field with its built-in default. */
void imgw_config_defaults(imgw_config_t *cfg);

/*
 * Loads the whole configuration: defaults, then the INI file, then
 * IMGW__SECTION__KEY variables and IMGW_LOG from envp (NULL = environ), then
 * the command line. Validates every value. Returns IMGW_CONFIG_OK,
 * IMGW_CONFIG_EXIT_OK (help/version text written to stdout) or
 * IMGW_CONFIG_ERROR with a one-line message in err that names the key.
 */
int imgw_config_load(imgw_config_t *cfg, int argc, char **argv, char **envp,
                     char *err, size_t errlen);

/** Writes --help text (every option and every key with default) to fp. */
void imgw_config_usage(void *fp);

/* IMGW_VERSION: generated from meson.build's project version. */
#include "imgw_version.h"

#endif
