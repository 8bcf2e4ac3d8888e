/*
 * test_config.c: unit tests for src/core/config.c (protocol.md section 9).
 *
 * Every test runs inside a fresh temporary directory (main() chdirs there)
 * so that a conf/imgw.ini in the caller's cwd can never leak in; tests that
 * want the default file create it there. Environments are passed as explicit
 * envp arrays, never through setenv(), except the one test of envp == NULL.
 */
#include "config.h"
#include "log.h"
#include "test.h"

#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

static char errbuf[512];
static char tmpdir[] = "/tmp/imgw_test_config_XXXXXX";
static char shipped_ini[2 * PATH_MAX + 32]; /* the repo's conf/imgw.ini */

#define ARGS(...) ((char *[]){__VA_ARGS__, NULL})
#define NOARGS ((char *[]){NULL})
#define NOENV ((char *[]){NULL})

/* Loads with argv = "imgw" + args and the given envp; prints any error. */
static int
load(imgw_config_t *cfg, char **args, char **envp)
{
    char *argv[64];
    int argc = 0;

    argv[argc++] = "imgw";
    while (*args != NULL && argc < 63)
        argv[argc++] = *args++;
    argv[argc] = NULL;
    errbuf[0] = '\0';
    int rc = imgw_config_load(cfg, argc, argv, envp, errbuf, sizeof(errbuf));
    if (errbuf[0] != '\0')
        printf("        err: %s\n", errbuf);
    return rc;
}

static int
err_has(const char *s)
{
    return strstr(errbuf, s) != NULL;
}

/* Writes text to a new temporary file and returns its path (static). */
static const char *
write_tmp(const char *text)
{
    static char path[64];
    int fd;

    snprintf(path, sizeof(path), "%s/cfgXXXXXX", tmpdir);
    fd = mkstemp(path);
    if (fd < 0) {
        perror("mkstemp");
        exit(1);
    }
    if (write(fd, text, strlen(text)) != (ssize_t)strlen(text)) {
        perror("write");
        exit(1);
    }
    close(fd);
    return path;
}

static void
write_file(const char *path, const char *text)
{
    FILE *fp = fopen(path, "w");

    if (fp == NULL) {
        perror(path);
        exit(1);
    }
    fputs(text, fp);
    fclose(fp);
}

/* The derivation config.h promises, done independently here. */
static int
expected_node_id(const char *broker_id)
{
    uint32_t h = 2166136261u;

    for (const unsigned char *p = (const unsigned char *)broker_id; *p; p++) {
        h ^= *p;
        h *= 16777619u;
    }
    return (int)(h % 1024u);
}

static void
expected_broker_id(char *out, size_t outlen, unsigned port)
{
    char host[256];

    if (gethostname(host, sizeof(host)) != 0 || host[0] == '\0')
        snprintf(host, sizeof(host), "localhost");
    host[sizeof(host) - 1] = '\0';
    /* config.c clips the host name so "-<port>" always fits broker_id. */
    snprintf(out, outlen, "%.*s-%u",
             (int)(sizeof(((imgw_config_t *)0)->broker_id) - 8), host, port);
}

/* Bytewise compare, ignoring the fields that record where config came from. */
static int
same_config(const imgw_config_t *a, const imgw_config_t *b)
{
    imgw_config_t x = *a, y = *b;

    memset(x.config_path, 0, sizeof(x.config_path));
    memset(y.config_path, 0, sizeof(y.config_path));
    x.config_explicit = y.config_explicit = 0;
    return memcmp(&x, &y, sizeof(x)) == 0;
}

TEST(defaults)
{
    imgw_config_t cfg, d;
    char bid[256];
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);

    imgw_config_defaults(&d);
    CHECK_EQ_INT(d.n_ports, 1);
    CHECK_EQ_INT(d.ports[0], 8080);
    CHECK_EQ_STR(d.bind, "0.0.0.0");
    CHECK_EQ_INT(d.threads, cpus < 1 ? 1 : cpus > 256 ? 256 : cpus);
    expected_broker_id(bid, sizeof(bid), 8080);
    CHECK_EQ_STR(d.broker_id, bid);
    CHECK_EQ_INT(d.node_id, expected_node_id(d.broker_id));
    CHECK_EQ_INT(d.route_ttl, 180);
    CHECK_EQ_INT(d.revoke_window, 120);
    CHECK_EQ_INT(d.max_connections, 1000000);
    CHECK_EQ_INT(d.max_connections_per_ip, 0);
    CHECK_EQ_INT(d.handshake_rate, 0);
    CHECK_EQ_INT(d.heartbeat_timeout, 90);
    CHECK_EQ_INT(d.auth_timeout, 10);
    CHECK_EQ_INT(d.drain_seconds, 10);
    CHECK_EQ_STR(d.origins, "");
    CHECK_EQ_STR(d.jwt_secret, "");
    CHECK_EQ_STR(d.jwt_public_key, "");
    CHECK_EQ_INT(d.leeway, 30);
    CHECK_EQ_INT(d.require_exp, 1);
    CHECK_EQ_STR(d.issuer, "");
    CHECK_EQ_STR(d.audience, "");
    CHECK_EQ_STR(d.app_ids, "");
    CHECK_EQ_STR(d.admin_token, "");
    CHECK_EQ_INT(d.dev_tokens, 0);
    CHECK_EQ_STR(d.backend, "memory");
    CHECK_EQ_STR(d.redis_url, "redis://127.0.0.1:6379/0");
    CHECK_EQ_INT(d.retention_count, 10000);
    CHECK_EQ_INT(d.retention_days, 7);
    CHECK_EQ_INT(d.dedupe_ttl, 86400);
    CHECK_EQ_INT(d.redis_timeout_ms, 2000);
    CHECK_EQ_STR(d.mq_url, "");
    CHECK_EQ_STR(d.mq_exchange, "imgw.direct");
    CHECK_EQ_INT(d.mq_prefetch, 256);
    CHECK_EQ_INT(d.max_message_bytes, 65536);
    CHECK_EQ_INT(d.max_frame_bytes, 131072);
    CHECK_EQ_INT(d.send_rate, 50);
    CHECK_EQ_INT(d.max_queued_bytes, 4194304);
    CHECK_EQ_INT(d.max_body_bytes, 1048576);
    CHECK_EQ_STR(d.tls_cert, "");
    CHECK_EQ_STR(d.tls_key, "");
    CHECK_EQ_INT(d.n_tls_ports, 0);
    CHECK_EQ_STR(d.nacos_server, "");
    CHECK_EQ_STR(d.nacos_service, "imgw");
    CHECK_EQ_STR(d.nacos_group, "DEFAULT_GROUP");
    CHECK_EQ_STR(d.nacos_namespace, "");
    CHECK_EQ_STR(d.nacos_ip, "127.0.0.1");
    CHECK_EQ_INT(d.nacos_beat_interval, 5);
    CHECK_EQ_INT(d.log_level, IMGW_LOG_INFO_L);

    /* No file in cwd, no args, no env: exactly the defaults. */
    CHECK_EQ_INT(load(&cfg, NOARGS, NOENV), IMGW_CONFIG_OK);
    CHECK(same_config(&cfg, &d));
    CHECK_EQ_STR(cfg.config_path, "");
    CHECK_EQ_INT(cfg.config_explicit, 0);
}

TEST(file_parsing)
{
    imgw_config_t cfg;
    const char *p = write_tmp("; a comment\n"
                              "# another comment\n"
                              "[server]\n"
                              "ports = 9000, 9001\n"
                              "bind = 127.0.0.1\n"
                              "threads = 3\n"
                              "route_ttl = 60   ; inline comment\n"
                              "heartbeat_timeout=5\n"
                              "origins = https://a.example,https://b.example\n"
                              "\n"
                              "[auth]\n"
                              "jwt_secret = s3cret-0123456789abcdef0123456789\n"
                              "dev_tokens = yes\n"
                              "app_ids = app1,app2\n"
                              "[store]\n"
                              "backend = REDIS\n"
                              "redis_url = redis://10.0.0.1:6380/2\n"
                              "[mq]\n"
                              "url = amqp://guest:guest@127.0.0.1:5672/\n"
                              "prefetch = 10\n"
                              "[limits]\n"
                              "max_message_bytes = 1024\n"
                              "max_frame_bytes = 4096\n"
                              "[tls]\n"
                              "cert = /etc/imgw/cert.pem\n"
                              "key = /etc/imgw/key.pem\n"
                              "ports = 8443\n"
                              "[nacos]\n"
                              "server = 127.0.0.1:8848\n"
                              "namespace = dev\n"
                              "beat_interval = 2\n");

    CHECK_EQ_INT(load(&cfg, ARGS("-c", (char *)p), NOENV), IMGW_CONFIG_OK);
    CHECK_EQ_STR(cfg.config_path, p);
    CHECK_EQ_INT(cfg.config_explicit, 1);
    CHECK_EQ_INT(cfg.n_ports, 2);
    CHECK_EQ_INT(cfg.ports[0], 9000);
    CHECK_EQ_INT(cfg.ports[1], 9001);
    CHECK_EQ_STR(cfg.bind, "127.0.0.1");
    CHECK_EQ_INT(cfg.threads, 3);
    CHECK_EQ_INT(cfg.route_ttl, 60);
    CHECK_EQ_INT(cfg.heartbeat_timeout, 5);
    CHECK_EQ_STR(cfg.origins, "https://a.example,https://b.example");
    CHECK_EQ_STR(cfg.jwt_secret, "s3cret-0123456789abcdef0123456789");
    CHECK_EQ_INT(cfg.dev_tokens, 1);
    CHECK_EQ_STR(cfg.app_ids, "app1,app2");
    CHECK_EQ_STR(cfg.backend, "redis"); /* canonical spelling */
    CHECK_EQ_STR(cfg.redis_url, "redis://10.0.0.1:6380/2");
    CHECK_EQ_STR(cfg.mq_url, "amqp://guest:guest@127.0.0.1:5672/");
    CHECK_EQ_INT(cfg.mq_prefetch, 10);
    CHECK_EQ_INT(cfg.max_message_bytes, 1024);
    CHECK_EQ_INT(cfg.max_frame_bytes, 4096);
    CHECK_EQ_INT(cfg.n_tls_ports, 1);
    CHECK_EQ_INT(cfg.tls_ports[0], 8443);
    CHECK_EQ_STR(cfg.nacos_server, "127.0.0.1:8848");
    CHECK_EQ_STR(cfg.nacos_namespace, "dev");
    CHECK_EQ_STR(cfg.nacos_ip, "127.0.0.1"); /* = bind */
    CHECK_EQ_INT(cfg.nacos_beat_interval, 2);
    /* Untouched keys keep their defaults. */
    CHECK_EQ_INT(cfg.auth_timeout, 10);
    CHECK_EQ_INT(cfg.send_rate, 50);
    unlink(p);

    /* --config=FILE and -cFILE spellings. */
    p = write_tmp("[server]\nports = 7001\n");
    CHECK_EQ_INT(load(&cfg,
                      ARGS("--config="
                           "placeholder"),
                      NOENV),
                 IMGW_CONFIG_ERROR);
    char opt[128];
    snprintf(opt, sizeof(opt), "--config=%s", p);
    CHECK_EQ_INT(load(&cfg, ARGS(opt), NOENV), IMGW_CONFIG_OK);
    CHECK_EQ_INT(cfg.ports[0], 7001);
    snprintf(opt, sizeof(opt), "-c%s", p);
    CHECK_EQ_INT(load(&cfg, ARGS(opt), NOENV), IMGW_CONFIG_OK);
    CHECK_EQ_INT(cfg.ports[0], 7001);
    CHECK_EQ_INT(load(&cfg, ARGS("--config", (char *)p), NOENV),
                 IMGW_CONFIG_OK);
    CHECK_EQ_INT(cfg.ports[0], 7001);
    unlink(p);
}

TEST(default_file)
{
    imgw_config_t cfg, d;

    /* Without -c, conf/imgw.ini in cwd is read when present... */
    mkdir("conf", 0755);
    write_file("conf/imgw.ini", "[server]\nroute_ttl = 42\n");
    CHECK_EQ_INT(load(&cfg, NOARGS, NOENV), IMGW_CONFIG_OK);
    CHECK_EQ_INT(cfg.route_ttl, 42);
    CHECK_EQ_STR(cfg.config_path, "conf/imgw.ini");
    CHECK_EQ_INT(cfg.config_explicit, 0);

    /* ...and errors in it count like any other file's. */
    write_file("conf/imgw.ini", "[server]\nroute_ttl = soon\n");
    CHECK_EQ_INT(load(&cfg, NOARGS, NOENV), IMGW_CONFIG_ERROR);
    CHECK(err_has("server.route_ttl"));
    CHECK(err_has("conf/imgw.ini:2"));

    /* ...and its absence silently means the built-in defaults. */
    unlink("conf/imgw.ini");
    rmdir("conf");
    imgw_config_defaults(&d);
    CHECK_EQ_INT(load(&cfg, NOARGS, NOENV), IMGW_CONFIG_OK);
    CHECK(same_config(&cfg, &d));
    CHECK_EQ_STR(errbuf, "");
}

TEST(missing_explicit_file)
{
    imgw_config_t cfg;
    char path[128];

    snprintf(path, sizeof(path), "%s/does-not-exist.ini", tmpdir);
    CHECK_EQ_INT(load(&cfg, ARGS("-c", path), NOENV), IMGW_CONFIG_ERROR);
    CHECK(err_has("does-not-exist.ini"));
    CHECK(strncmp(errbuf, "config: ", 8) == 0);

    /* A directory is not a config file. */
    CHECK_EQ_INT(load(&cfg, ARGS("-c", tmpdir), NOENV), IMGW_CONFIG_ERROR);
    CHECK(err_has(tmpdir));

    CHECK_EQ_INT(load(&cfg, ARGS("-c", ""), NOENV), IMGW_CONFIG_ERROR);
    CHECK_EQ_INT(load(&cfg, ARGS("-c"), NOENV), IMGW_CONFIG_ERROR);
    CHECK(err_has("requires an argument"));
}

TEST(env_override)
{
    imgw_config_t cfg;
    const char *p = write_tmp("[server]\nports = 9000\nauth_timeout = 4\n"
                              "[auth]\nissuer = file-iss\n");

    CHECK_EQ_INT(
        load(&cfg, ARGS("-c", (char *)p),
             ARGS("PATH=/usr/bin", "IMGW__SERVER__PORTS=19000,19001",
                  "IMGW__AUTH__ISSUER=env-iss", "IMGW__LIMITS__SEND_RATE=7",
                  "IMGW__STORE__BACKEND=redis", "IMGW__AUTH__DEV_TOKENS=on",
                  "IMGW_SOMETHING_ELSE=ignored")),
        IMGW_CONFIG_OK);
    CHECK_EQ_INT(cfg.n_ports, 2);
    CHECK_EQ_INT(cfg.ports[0], 19000);
    CHECK_EQ_INT(cfg.ports[1], 19001);
    CHECK_EQ_INT(cfg.auth_timeout, 4); /* file value, no env for it */
    CHECK_EQ_STR(cfg.issuer, "env-iss");
    CHECK_EQ_INT(cfg.send_rate, 7);
    CHECK_EQ_STR(cfg.backend, "redis");
    CHECK_EQ_INT(cfg.dev_tokens, 1);

    /* An empty value sets a string key to empty. */
    CHECK_EQ_INT(load(&cfg, ARGS("-c", (char *)p), ARGS("IMGW__AUTH__ISSUER=")),
                 IMGW_CONFIG_OK);
    CHECK_EQ_STR(cfg.issuer, "");
    unlink(p);
}

TEST(precedence)
{
    imgw_config_t cfg;
    const char *p = write_tmp("[server]\nthreads = 3\n");

    CHECK_EQ_INT(load(&cfg, ARGS("-c", (char *)p), NOENV), IMGW_CONFIG_OK);
    CHECK_EQ_INT(cfg.threads, 3); /* file > default */
    CHECK_EQ_INT(
        load(&cfg, ARGS("-c", (char *)p), ARGS("IMGW__SERVER__THREADS=5")),
        IMGW_CONFIG_OK);
    CHECK_EQ_INT(cfg.threads, 5); /* env > file */
    CHECK_EQ_INT(load(&cfg, ARGS("-c", (char *)p, "-t", "7"),
                      ARGS("IMGW__SERVER__THREADS=5")),
                 IMGW_CONFIG_OK);
    CHECK_EQ_INT(cfg.threads, 7); /* CLI > env */
    /* -t before -c on the command line changes nothing. */
    CHECK_EQ_INT(load(&cfg, ARGS("--threads=2", "-c", (char *)p),
                      ARGS("IMGW__SERVER__THREADS=5")),
                 IMGW_CONFIG_OK);
    CHECK_EQ_INT(cfg.threads, 2);
    CHECK_EQ_INT(load(&cfg, ARGS("-t2"), NOENV), IMGW_CONFIG_OK);
    CHECK_EQ_INT(cfg.threads, 2);

    /* -t is validated like the key it sets. */
    CHECK_EQ_INT(load(&cfg, ARGS("-t", "0"), NOENV), IMGW_CONFIG_ERROR);
    CHECK(err_has("server.threads"));
    CHECK(err_has("-t"));
    CHECK_EQ_INT(load(&cfg, ARGS("-t", "many"), NOENV), IMGW_CONFIG_ERROR);
    CHECK(err_has("server.threads"));
    unlink(p);
}

TEST(log_level)
{
    imgw_config_t cfg;

    CHECK_EQ_INT(load(&cfg, NOARGS, NOENV), IMGW_CONFIG_OK);
    CHECK_EQ_INT(cfg.log_level, IMGW_LOG_INFO_L);
    CHECK_EQ_INT(load(&cfg, ARGS("-l", "debug"), NOENV), IMGW_CONFIG_OK);
    CHECK_EQ_INT(cfg.log_level, IMGW_LOG_DEBUG_L);
    CHECK_EQ_INT(load(&cfg, ARGS("--log-level", "warn"), NOENV),
                 IMGW_CONFIG_OK);
    CHECK_EQ_INT(cfg.log_level, IMGW_LOG_WARN_L);
    /* -l beats IMGW_LOG (CLI > env, issue 18; it used to be the reverse),
     * and IMGW_LOG beats the default. */
    CHECK_EQ_INT(load(&cfg, ARGS("-l", "debug"), ARGS("IMGW_LOG=error")),
                 IMGW_CONFIG_OK);
    CHECK_EQ_INT(cfg.log_level, IMGW_LOG_DEBUG_L);
    CHECK_EQ_INT(load(&cfg, ARGS("--log-level", "error"), ARGS("IMGW_LOG=trace")),
                 IMGW_CONFIG_OK);
    CHECK_EQ_INT(cfg.log_level, IMGW_LOG_ERROR_L);
    CHECK_EQ_INT(load(&cfg, NOARGS, ARGS("IMGW_LOG=trace")), IMGW_CONFIG_OK);
    CHECK_EQ_INT(cfg.log_level, IMGW_LOG_TRACE);
    /* An empty IMGW_LOG is as good as unset. */
    CHECK_EQ_INT(load(&cfg, ARGS("-l", "warn"), ARGS("IMGW_LOG=")),
                 IMGW_CONFIG_OK);
    CHECK_EQ_INT(cfg.log_level, IMGW_LOG_WARN_L);

    CHECK_EQ_INT(load(&cfg, ARGS("-l", "loud"), NOENV), IMGW_CONFIG_ERROR);
    CHECK(err_has("loud"));
    CHECK_EQ_INT(load(&cfg, NOARGS, ARGS("IMGW_LOG=loud")), IMGW_CONFIG_ERROR);
    CHECK(err_has("IMGW_LOG"));
    /* A bad IMGW_LOG is reported even when -l overrides it. */
    CHECK_EQ_INT(load(&cfg, ARGS("-l", "info"), ARGS("IMGW_LOG=loud")),
                 IMGW_CONFIG_ERROR);
    CHECK(err_has("IMGW_LOG"));
}

TEST(unknown_keys)
{
    imgw_config_t cfg;
    const char *p;

    p = write_tmp("[server]\nports = 8080\n\nfoo = 1\n");
    CHECK_EQ_INT(load(&cfg, ARGS("-c", (char *)p), NOENV), IMGW_CONFIG_ERROR);
    CHECK(err_has("unknown key 'server.foo'"));
    CHECK(err_has(":4)"));
    CHECK(err_has(p));
    unlink(p);

    p = write_tmp("[sever]\nports = 8080\n");
    CHECK_EQ_INT(load(&cfg, ARGS("-c", (char *)p), NOENV), IMGW_CONFIG_ERROR);
    CHECK(err_has("sever.ports"));
    CHECK(err_has(":2)"));
    unlink(p);

    p = write_tmp("ports = 8080\n");
    CHECK_EQ_INT(load(&cfg, ARGS("-c", (char *)p), NOENV), IMGW_CONFIG_ERROR);
    CHECK(err_has("ports"));
    CHECK(err_has(":1)"));
    unlink(p);

    /* A syntax error names file:line. */
    p = write_tmp("[server]\nports = 8080\nthis line has no equals sign\n");
    CHECK_EQ_INT(load(&cfg, ARGS("-c", (char *)p), NOENV), IMGW_CONFIG_ERROR);
    CHECK(err_has("syntax"));
    CHECK(err_has(":3)"));
    unlink(p);

    /* A continuation line is not silently folded into the value above. */
    p = write_tmp("[server]\nports = 8080,\n  8081\n");
    CHECK_EQ_INT(load(&cfg, ARGS("-c", (char *)p), NOENV), IMGW_CONFIG_ERROR);
    unlink(p);

    /* A repeated key is an error, not last-one-wins. */
    p = write_tmp("[server]\nroute_ttl = 5\n[auth]\nleeway = 1\n"
                  "[server]\nroute_ttl = 6\n");
    CHECK_EQ_INT(load(&cfg, ARGS("-c", (char *)p), NOENV), IMGW_CONFIG_ERROR);
    CHECK(err_has("server.route_ttl"));
    CHECK(err_has(":6)"));
    unlink(p);

    /* Section and key names are case-insensitive in the file. */
    p = write_tmp("[Server]\nRoute_TTL = 5\n");
    CHECK_EQ_INT(load(&cfg, ARGS("-c", (char *)p), NOENV), IMGW_CONFIG_OK);
    CHECK_EQ_INT(cfg.route_ttl, 5);
    unlink(p);
}

TEST(unknown_env)
{
    imgw_config_t cfg;

    CHECK_EQ_INT(load(&cfg, NOARGS, ARGS("IMGW__SERVER__NOPE=1")),
                 IMGW_CONFIG_ERROR);
    CHECK(err_has("IMGW__SERVER__NOPE"));
    CHECK(err_has("unknown variable"));
    /* Upper case is the contract. */
    CHECK_EQ_INT(load(&cfg, NOARGS, ARGS("IMGW__server__ports=1")),
                 IMGW_CONFIG_ERROR);
    CHECK(err_has("IMGW__server__ports"));
    CHECK_EQ_INT(load(&cfg, NOARGS, ARGS("IMGW__PORTS=1")), IMGW_CONFIG_ERROR);
    CHECK_EQ_INT(load(&cfg, NOARGS, ARGS("IMGW__=1")), IMGW_CONFIG_ERROR);
    /* A bad value in env names the key and the variable. */
    CHECK_EQ_INT(load(&cfg, NOARGS, ARGS("IMGW__SERVER__ROUTE_TTL=abc")),
                 IMGW_CONFIG_ERROR);
    CHECK(err_has("server.route_ttl"));
    CHECK(err_has("IMGW__SERVER__ROUTE_TTL"));
    /* Single-underscore IMGW_ names other than IMGW_LOG are not ours. */
    CHECK_EQ_INT(load(&cfg, NOARGS, ARGS("IMGW_BIN=/x", "IMGWX=1")),
                 IMGW_CONFIG_OK);
}

TEST(bad_values)
{
    imgw_config_t cfg;
    static const struct {
        const char *env;
        const char *key;
    } cases[] = {
        {"IMGW__SERVER__THREADS=abc", "server.threads"},
        {"IMGW__SERVER__THREADS=4x", "server.threads"},
        {"IMGW__SERVER__THREADS=", "server.threads"},
        {"IMGW__SERVER__THREADS=257", "server.threads"},
        {"IMGW__SERVER__NODE_ID=1024", "server.node_id"},
        {"IMGW__SERVER__NODE_ID=-1", "server.node_id"},
        {"IMGW__SERVER__HEARTBEAT_TIMEOUT=0", "server.heartbeat_timeout"},
        {"IMGW__SERVER__MAX_CONNECTIONS=99999999999999999999",
         "server.max_connections"},
        {"IMGW__MQ__PREFETCH=65536", "mq.prefetch"},
        {"IMGW__LIMITS__MAX_FRAME_BYTES=1023", "limits.max_frame_bytes"},
        {"IMGW__LIMITS__MAX_MESSAGE_BYTES=0", "limits.max_message_bytes"},
        {"IMGW__AUTH__DEV_TOKENS=maybe", "auth.dev_tokens"},
        {"IMGW__AUTH__DEV_TOKENS=", "auth.dev_tokens"},
        {"IMGW__STORE__BACKEND=mysql", "store.backend"},
        {"IMGW__STORE__BACKEND=", "store.backend"},
        {"IMGW__SERVER__PORTS=", "server.ports"},
        {"IMGW__SERVER__PORTS=0", "server.ports"},
        {"IMGW__SERVER__PORTS=65536", "server.ports"},
        {"IMGW__SERVER__PORTS=80,80", "server.ports"},
        {"IMGW__SERVER__PORTS=80,,81", "server.ports"},
        {"IMGW__SERVER__PORTS=80,", "server.ports"},
        {"IMGW__SERVER__PORTS=http", "server.ports"},
        {"IMGW__SERVER__PORTS=1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17",
         "server.ports"},
        {"IMGW__TLS__PORTS=x", "tls.ports"},
        {"IMGW__SERVER__BIND=localhost", "server.bind"},
        {"IMGW__MQ__URL=http://rabbit", "mq.url"},
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *env[] = {(char *)cases[i].env, NULL};

        printf("    case %s\n", cases[i].env);
        CHECK_EQ_INT(load(&cfg, NOARGS, env), IMGW_CONFIG_ERROR);
        CHECK(err_has(cases[i].key));
    }

    /* Bools accept the usual spellings, any case. */
    static const char *const truthy[] = {"true", "1",    "yes",
                                         "on",   "TRUE", "Yes"};
    static const char *const falsy[] = {"false", "0", "no", "off", "OFF"};
    for (size_t i = 0; i < sizeof(truthy) / sizeof(truthy[0]); i++) {
        char var[64];
        char *env[] = {var, NULL};

        snprintf(var, sizeof(var), "IMGW__AUTH__DEV_TOKENS=%s", truthy[i]);
        CHECK_EQ_INT(load(&cfg, NOARGS, env), IMGW_CONFIG_OK);
        CHECK_EQ_INT(cfg.dev_tokens, 1);
    }
    for (size_t i = 0; i < sizeof(falsy) / sizeof(falsy[0]); i++) {
        char var[64];
        char *env[] = {var, NULL};

        snprintf(var, sizeof(var), "IMGW__AUTH__DEV_TOKENS=%s", falsy[i]);
        CHECK_EQ_INT(load(&cfg, NOARGS, env), IMGW_CONFIG_OK);
        CHECK_EQ_INT(cfg.dev_tokens, 0);
    }

    /* Range edges are inclusive. */
    CHECK_EQ_INT(
        load(&cfg, NOARGS,
             ARGS("IMGW__SERVER__NODE_ID=1023", "IMGW__SERVER__THREADS=256",
                  "IMGW__MQ__PREFETCH=65535")),
        IMGW_CONFIG_OK);
    CHECK_EQ_INT(cfg.node_id, 1023);
    CHECK_EQ_INT(cfg.threads, 256);
    CHECK_EQ_INT(load(&cfg, NOARGS, ARGS("IMGW__SERVER__NODE_ID=0")),
                 IMGW_CONFIG_OK);
    CHECK_EQ_INT(cfg.node_id, 0);
    CHECK_EQ_INT(load(&cfg, NOARGS, ARGS("IMGW__SERVER__BIND=::1")),
                 IMGW_CONFIG_OK);
    CHECK_EQ_STR(cfg.bind, "::1");
}

TEST(cross_checks)
{
    imgw_config_t cfg;

    CHECK_EQ_INT(load(&cfg, NOARGS,
                      ARGS("IMGW__LIMITS__MAX_FRAME_BYTES=4096",
                           "IMGW__LIMITS__MAX_MESSAGE_BYTES=4097")),
                 IMGW_CONFIG_ERROR);
    CHECK(err_has("limits.max_message_bytes"));
    CHECK_EQ_INT(load(&cfg, NOARGS,
                      ARGS("IMGW__LIMITS__MAX_FRAME_BYTES=4096",
                           "IMGW__LIMITS__MAX_MESSAGE_BYTES=4096")),
                 IMGW_CONFIG_OK);
    /* The default max_message_bytes (65536) does not fit a 4 KiB frame. */
    CHECK_EQ_INT(load(&cfg, NOARGS, ARGS("IMGW__LIMITS__MAX_FRAME_BYTES=4096")),
                 IMGW_CONFIG_ERROR);
    CHECK(err_has("limits.max_message_bytes"));
    CHECK_EQ_INT(
        load(&cfg, NOARGS, ARGS("IMGW__LIMITS__MAX_QUEUED_BYTES=65536")),
        IMGW_CONFIG_ERROR);
    CHECK(err_has("limits.max_queued_bytes"));

    CHECK_EQ_INT(load(&cfg, NOARGS, ARGS("IMGW__TLS__PORTS=8443")),
                 IMGW_CONFIG_ERROR);
    CHECK(err_has("tls.cert"));
    CHECK_EQ_INT(load(&cfg, NOARGS,
                      ARGS("IMGW__TLS__PORTS=8443", "IMGW__TLS__CERT=c.pem")),
                 IMGW_CONFIG_ERROR);
    CHECK(err_has("tls.key"));
    CHECK_EQ_INT(load(&cfg, NOARGS,
                      ARGS("IMGW__TLS__PORTS=8080", "IMGW__TLS__CERT=c.pem",
                           "IMGW__TLS__KEY=k.pem")),
                 IMGW_CONFIG_ERROR);
    CHECK(err_has("tls.ports"));
    CHECK_EQ_INT(load(&cfg, NOARGS,
                      ARGS("IMGW__TLS__PORTS=8443, 8444",
                           "IMGW__TLS__CERT=c.pem", "IMGW__TLS__KEY=k.pem")),
                 IMGW_CONFIG_OK);
    CHECK_EQ_INT(cfg.n_tls_ports, 2);
    CHECK_EQ_INT(cfg.tls_ports[1], 8444);

    CHECK_EQ_INT(
        load(&cfg, NOARGS,
             ARGS("IMGW__STORE__BACKEND=redis", "IMGW__STORE__REDIS_URL=")),
        IMGW_CONFIG_ERROR);
    CHECK(err_has("store.redis_url"));
    CHECK_EQ_INT(load(&cfg, NOARGS, ARGS("IMGW__MQ__URL=amqps://u:p@h:5671/v")),
                 IMGW_CONFIG_OK);
    /* The password in a bad mq.url is not echoed. */
    CHECK_EQ_INT(load(&cfg, NOARGS, ARGS("IMGW__MQ__URL=ftp://u:hunter2@h")),
                 IMGW_CONFIG_ERROR);
    CHECK(!err_has("hunter2"));
}

TEST(cli)
{
    imgw_config_t cfg;

    CHECK_EQ_INT(load(&cfg, ARGS("--version"), NOENV), IMGW_CONFIG_EXIT_OK);
    CHECK_EQ_INT(load(&cfg, ARGS("-V"), NOENV), IMGW_CONFIG_EXIT_OK);
    CHECK_EQ_INT(load(&cfg, ARGS("--help"), NOENV), IMGW_CONFIG_EXIT_OK);
    CHECK_EQ_INT(load(&cfg, ARGS("-h"), NOENV), IMGW_CONFIG_EXIT_OK);
    /* Help wins over a broken config: it never reads the file. */
    CHECK_EQ_INT(load(&cfg, ARGS("-c", "/nonexistent/x.ini", "-h"), NOENV),
                 IMGW_CONFIG_EXIT_OK);

    CHECK_EQ_INT(load(&cfg, ARGS("--bogus"), NOENV), IMGW_CONFIG_ERROR);
    CHECK(err_has("--bogus"));
    CHECK_EQ_INT(load(&cfg, ARGS("-x"), NOENV), IMGW_CONFIG_ERROR);
    CHECK(err_has("-x"));
    CHECK_EQ_INT(load(&cfg, ARGS("-t"), NOENV), IMGW_CONFIG_ERROR);
    CHECK(err_has("-t"));
    CHECK_EQ_INT(load(&cfg, ARGS("--threads"), NOENV), IMGW_CONFIG_ERROR);
    CHECK(err_has("--threads"));
    CHECK_EQ_INT(load(&cfg, ARGS("-l"), NOENV), IMGW_CONFIG_ERROR);
    CHECK_EQ_INT(load(&cfg, ARGS("--version=2"), NOENV), IMGW_CONFIG_ERROR);
    CHECK_EQ_INT(load(&cfg, ARGS("stray"), NOENV), IMGW_CONFIG_ERROR);
    CHECK(err_has("stray"));
    CHECK_EQ_INT(load(&cfg, ARGS("--", "stray"), NOENV), IMGW_CONFIG_ERROR);
    CHECK_EQ_INT(load(&cfg, ARGS("--"), NOENV), IMGW_CONFIG_OK);
    CHECK_EQ_INT(load(&cfg, ARGS("--log-level=debug", "--threads", "3"), NOENV),
                 IMGW_CONFIG_OK);
    CHECK_EQ_INT(cfg.log_level, IMGW_LOG_DEBUG_L);
    CHECK_EQ_INT(cfg.threads, 3);

    /* A tiny err buffer is truncated, never overrun. */
    char small[12];
    char *argv[] = {"imgw", "--bogus-option-with-a-long-name", NULL};
    CHECK_EQ_INT(imgw_config_load(&cfg, 2, argv, NOENV, small, sizeof(small)),
                 IMGW_CONFIG_ERROR);
    CHECK_EQ_INT(strlen(small), sizeof(small) - 1);
}

TEST(usage)
{
    FILE *fp = tmpfile();
    char buf[16384];
    size_t n;

    if (fp == NULL) {
        CHECK(fp != NULL);
        return;
    }
    imgw_config_usage(fp);
    rewind(fp);
    n = fread(buf, 1, sizeof(buf) - 1, fp);
    buf[n] = '\0';
    fclose(fp);
    CHECK(strstr(buf, "--config") != NULL);
    CHECK(strstr(buf, "--threads") != NULL);
    CHECK(strstr(buf, "--log-level") != NULL);
    CHECK(strstr(buf, "--version") != NULL);
    CHECK(strstr(buf, "IMGW__") != NULL);
    CHECK(strstr(buf, "[server]") != NULL);
    CHECK(strstr(buf, "[nacos]") != NULL);
    CHECK(strstr(buf, "max_queued_bytes") != NULL);
    CHECK(strstr(buf, "4194304") != NULL);
    CHECK(strstr(buf, "imgw.direct") != NULL);
    CHECK(strstr(buf, "redis://127.0.0.1:6379/0") != NULL);
    CHECK(strstr(buf, "beat_interval") != NULL);
}

TEST(derived_ids)
{
    imgw_config_t cfg;
    char bid[256];
    const char *p;

    /* A port from env counts for the default broker_id. */
    CHECK_EQ_INT(load(&cfg, NOARGS, ARGS("IMGW__SERVER__PORTS=9001,9002")),
                 IMGW_CONFIG_OK);
    expected_broker_id(bid, sizeof(bid), 9001);
    CHECK_EQ_STR(cfg.broker_id, bid);
    CHECK_EQ_INT(cfg.node_id, expected_node_id(bid));

    /* A port from the file, too. */
    p = write_tmp("[server]\nports = 7007\n");
    CHECK_EQ_INT(load(&cfg, ARGS("-c", (char *)p), NOENV), IMGW_CONFIG_OK);
    expected_broker_id(bid, sizeof(bid), 7007);
    CHECK_EQ_STR(cfg.broker_id, bid);
    CHECK_EQ_INT(cfg.node_id, expected_node_id(bid));
    unlink(p);

    /* An explicit broker_id is kept, and node_id hashes it. */
    CHECK_EQ_INT(load(&cfg, NOARGS, ARGS("IMGW__SERVER__BROKER_ID=node-a")),
                 IMGW_CONFIG_OK);
    CHECK_EQ_STR(cfg.broker_id, "node-a");
    CHECK_EQ_INT(cfg.node_id, expected_node_id("node-a"));
    /* An empty one means the default. */
    CHECK_EQ_INT(load(&cfg, NOARGS, ARGS("IMGW__SERVER__BROKER_ID=")),
                 IMGW_CONFIG_OK);
    expected_broker_id(bid, sizeof(bid), 8080);
    CHECK_EQ_STR(cfg.broker_id, bid);
    /* An explicit node_id is kept. */
    CHECK_EQ_INT(
        load(&cfg, NOARGS,
             ARGS("IMGW__SERVER__BROKER_ID=node-a", "IMGW__SERVER__NODE_ID=7")),
        IMGW_CONFIG_OK);
    CHECK_EQ_INT(cfg.node_id, 7);
    /* Same input, same id: the hash is stable. */
    CHECK_EQ_INT(expected_node_id("node-a"), expected_node_id("node-a"));

    /* nacos.ip follows a specific bind address, else loopback. */
    CHECK_EQ_INT(load(&cfg, NOARGS, ARGS("IMGW__SERVER__BIND=10.1.2.3")),
                 IMGW_CONFIG_OK);
    CHECK_EQ_STR(cfg.nacos_ip, "10.1.2.3");
    CHECK_EQ_INT(load(&cfg, NOARGS, ARGS("IMGW__SERVER__BIND=::")),
                 IMGW_CONFIG_OK);
    CHECK_EQ_STR(cfg.nacos_ip, "127.0.0.1");
    CHECK_EQ_INT(load(&cfg, NOARGS, ARGS("IMGW__NACOS__IP=192.168.0.9")),
                 IMGW_CONFIG_OK);
    CHECK_EQ_STR(cfg.nacos_ip, "192.168.0.9");
}

TEST(port_lists)
{
    imgw_config_t cfg;
    const char *p;

    p = write_tmp("[server]\nports =  8080 ,  8081,8082\t, 9000  \n");
    CHECK_EQ_INT(load(&cfg, ARGS("-c", (char *)p), NOENV), IMGW_CONFIG_OK);
    CHECK_EQ_INT(cfg.n_ports, 4);
    CHECK_EQ_INT(cfg.ports[0], 8080);
    CHECK_EQ_INT(cfg.ports[1], 8081);
    CHECK_EQ_INT(cfg.ports[2], 8082);
    CHECK_EQ_INT(cfg.ports[3], 9000);
    unlink(p);

    CHECK_EQ_INT(load(&cfg, NOARGS,
                      ARGS("IMGW__SERVER__PORTS=1,2,3,4,5,6,7,8,9,10,11,12,"
                           "13,14,15,16")),
                 IMGW_CONFIG_OK);
    CHECK_EQ_INT(cfg.n_ports, IMGW_CONFIG_MAX_PORTS);
    CHECK_EQ_INT(cfg.ports[15], 16);
    CHECK_EQ_INT(load(&cfg, NOARGS, ARGS("IMGW__SERVER__PORTS= 65535 ")),
                 IMGW_CONFIG_OK);
    CHECK_EQ_INT(cfg.n_ports, 1);
    CHECK_EQ_INT(cfg.ports[0], 65535);
    CHECK_EQ_INT(cfg.ports[1], 0); /* no stale entries */

    /* tls.ports may be empty: no TLS listeners. */
    CHECK_EQ_INT(load(&cfg, NOARGS, ARGS("IMGW__TLS__PORTS=")), IMGW_CONFIG_OK);
    CHECK_EQ_INT(cfg.n_tls_ports, 0);
}

TEST(string_limits)
{
    imgw_config_t cfg;
    char var[2048], line[sizeof(var) + 64];
    const char *p;

    /* 511 bytes fit jwt_secret[512] (and need a long INI line). */
    memset(var, 'k', 511);
    var[511] = '\0';
    snprintf(line, sizeof(line), "[auth]\njwt_secret = %s\n", var);
    p = write_tmp(line);
    CHECK_EQ_INT(load(&cfg, ARGS("-c", (char *)p), NOENV), IMGW_CONFIG_OK);
    CHECK_EQ_INT(strlen(cfg.jwt_secret), 511);
    unlink(p);

    /* 512 do not; the error names the key but not the secret. */
    memset(var, 'k', 512);
    var[512] = '\0';
    snprintf(line, sizeof(line), "[auth]\njwt_secret = %s\n", var);
    p = write_tmp(line);
    CHECK_EQ_INT(load(&cfg, ARGS("-c", (char *)p), NOENV), IMGW_CONFIG_ERROR);
    CHECK(err_has("auth.jwt_secret"));
    CHECK(err_has("too long"));
    CHECK(err_has(":2)"));
    CHECK(!err_has("kkkkkkkk"));
    unlink(p);

    /* Same through env, for a small field. */
    snprintf(var, sizeof(var), "IMGW__SERVER__BIND=");
    memset(var + strlen(var), '1', 64);
    var[strlen("IMGW__SERVER__BIND=") + 64] = '\0';
    char *env[] = {var, NULL};
    CHECK_EQ_INT(load(&cfg, NOARGS, env), IMGW_CONFIG_ERROR);
    CHECK(err_has("server.bind"));
    CHECK(err_has("too long"));

    /* A line beyond any sane length is an error, not a truncated value. */
    static char huge[10000];
    memset(huge, 0, sizeof(huge));
    strcpy(huge, "[server]\norigins = ");
    memset(huge + strlen(huge), 'o', 6000);
    strcat(huge, "\n");
    p = write_tmp(huge);
    CHECK_EQ_INT(load(&cfg, ARGS("-c", (char *)p), NOENV), IMGW_CONFIG_ERROR);
    unlink(p);
}

TEST(environ_default)
{
    imgw_config_t cfg;

    /* envp == NULL reads the process environment. */
    setenv("IMGW__SERVER__ROUTE_TTL", "77", 1);
    errbuf[0] = '\0';
    char *argv[] = {"imgw", NULL};
    CHECK_EQ_INT(imgw_config_load(&cfg, 1, argv, NULL, errbuf, sizeof(errbuf)),
                 IMGW_CONFIG_OK);
    CHECK_EQ_INT(cfg.route_ttl, 77);
    unsetenv("IMGW__SERVER__ROUTE_TTL");
}

/*
 * Counts the keys that --help lists but the shipped file does not document
 * in their section, either as ";key =" or as prose "; key:".
 */
static int
undocumented_keys(void)
{
    static char usage[32768], ini[65536];
    char section[64] = "", want[128], *line, *save;
    FILE *fp;
    size_t n;
    int missing = 0;

    fp = tmpfile();
    if (fp == NULL)
        return -1;
    imgw_config_usage(fp);
    rewind(fp);
    n = fread(usage, 1, sizeof(usage) - 1, fp);
    usage[n] = '\0';
    fclose(fp);
    fp = fopen(shipped_ini, "r");
    if (fp == NULL)
        return -1;
    n = fread(ini, 1, sizeof(ini) - 1, fp);
    ini[n] = '\0';
    fclose(fp);

    for (line = strtok_r(usage, "\n", &save); line != NULL;
         line = strtok_r(NULL, "\n", &save)) {
        char key[64], *sec_at, *next_sec;

        if (line[0] == '[') {
            snprintf(section, sizeof(section), "%.*s",
                     (int)strcspn(line, "]") + 1, line);
            continue;
        }
        if (section[0] == '\0' || strncmp(line, "  ", 2) != 0 ||
            line[2] == ' ' || sscanf(line + 2, "%63s", key) != 1)
            continue;
        /* Look only inside this section of the file. */
        sec_at = strstr(ini, section);
        if (sec_at == NULL) {
            printf("    section %s missing from conf/imgw.ini\n", section);
            missing++;
            continue;
        }
        next_sec = strstr(sec_at + 1, "\n[");
        if (next_sec != NULL)
            *next_sec = '\0';
        snprintf(want, sizeof(want), "\n;%s =", key);
        int found = strstr(sec_at, want) != NULL;
        snprintf(want, sizeof(want), "\n; %s:", key);
        found = found || strstr(sec_at, want) != NULL;
        if (next_sec != NULL)
            *next_sec = '\n';
        if (!found) {
            printf("    %s %s is not documented in conf/imgw.ini\n", section,
                   key);
            missing++;
        }
    }
    return missing;
}

/*
 * The shipped conf/imgw.ini must run as-is and its ";key = value" lines
 * must be the true defaults: uncomment every one of them and the result
 * must still equal imgw_config_defaults().
 */
/*
 * Audit item 13: a jwt_secret or admin_token of a few bytes can be guessed;
 * below 32 bytes the load fails (imgw exits 2) naming the key, never the
 * value. Empty still means "off".
 */
TEST(short_secrets)
{
    static const char *const keys[][2] = {
        {"auth.jwt_secret", "IMGW__AUTH__JWT_SECRET="},
        {"auth.admin_token", "IMGW__AUTH__ADMIN_TOKEN="},
    };
    imgw_config_t cfg;
    char var[128], line[160];

    for (size_t k = 0; k < 2; k++) {
        const size_t lens[] = {1, 3, 15, 31};
        for (size_t i = 0; i < 4; i++) {
            snprintf(var, sizeof(var), "%s", keys[k][1]);
            memset(var + strlen(var), 'q', lens[i]);
            var[strlen(keys[k][1]) + lens[i]] = '\0';
            CHECK_EQ_INT(load(&cfg, NOARGS, ARGS(var)), IMGW_CONFIG_ERROR);
            CHECK(err_has(keys[k][0]));
            CHECK(err_has("too short"));
            CHECK(err_has("at least 32"));
            CHECK(!err_has("qqq"));
        }
        snprintf(var, sizeof(var), "%s", keys[k][1]);
        memset(var + strlen(var), 'q', 32);
        var[strlen(keys[k][1]) + 32] = '\0';
        CHECK_EQ_INT(load(&cfg, NOARGS, ARGS(var)), IMGW_CONFIG_OK);
        snprintf(var, sizeof(var), "%s", keys[k][1]);
        CHECK_EQ_INT(load(&cfg, NOARGS, ARGS(var)), IMGW_CONFIG_OK);
    }
    /* From the file, too (and make run's old dev secret). */
    snprintf(line, sizeof(line), "[auth]\njwt_secret = imgw-dev-secret\n");
    const char *p = write_tmp(line);
    CHECK_EQ_INT(load(&cfg, ARGS("-c", (char *)p), NOENV), IMGW_CONFIG_ERROR);
    CHECK(err_has("auth.jwt_secret: 15 bytes is too short"));
    unlink(p);
    snprintf(line, sizeof(line), "[auth]\nadmin_token = adm\n");
    p = write_tmp(line);
    CHECK_EQ_INT(load(&cfg, ARGS("-c", (char *)p), NOENV), IMGW_CONFIG_ERROR);
    CHECK(err_has("auth.admin_token: 3 bytes is too short"));
    unlink(p);
}

TEST(require_exp_key)
{
    imgw_config_t cfg;

    CHECK_EQ_INT(load(&cfg, NOARGS, NOENV), IMGW_CONFIG_OK);
    CHECK_EQ_INT(cfg.require_exp, 1);
    CHECK_EQ_INT(load(&cfg, NOARGS, ARGS("IMGW__AUTH__REQUIRE_EXP=false")),
                 IMGW_CONFIG_OK);
    CHECK_EQ_INT(cfg.require_exp, 0);
    CHECK_EQ_INT(load(&cfg, NOARGS, ARGS("IMGW__AUTH__REQUIRE_EXP=maybe")),
                 IMGW_CONFIG_ERROR);
    CHECK(err_has("auth.require_exp"));
}

TEST(shipped_ini)
{
    imgw_config_t cfg, d;
    FILE *in, *out;
    char line[4096], path[128];
    int settings = 0;

    in = fopen(shipped_ini, "r");
    if (in == NULL) {
        printf("    skipped: %s not found\n", shipped_ini);
        return;
    }
    imgw_config_defaults(&d);
    CHECK_EQ_INT(load(&cfg, ARGS("-c", shipped_ini), NOENV), IMGW_CONFIG_OK);
    CHECK(same_config(&cfg, &d));

    snprintf(path, sizeof(path), "%s/uncommented.ini", tmpdir);
    out = fopen(path, "w");
    if (out == NULL) {
        fclose(in);
        CHECK(out != NULL);
        return;
    }
    while (fgets(line, sizeof(line), in) != NULL) {
        /* ";key = default" (no blank after ';') is a default setting. */
        if (line[0] == ';' && line[1] >= 'a' && line[1] <= 'z' &&
            strchr(line, '=') != NULL) {
            fputs(line + 1, out);
            settings++;
        } else {
            fputs(line, out);
        }
    }
    fclose(in);
    fclose(out);
    printf("    %d default settings uncommented\n", settings);
    CHECK(settings >= 40);
    CHECK_EQ_INT(undocumented_keys(), 0);
    CHECK_EQ_INT(load(&cfg, ARGS("-c", path), NOENV), IMGW_CONFIG_OK);
    CHECK(same_config(&cfg, &d));
    unlink(path);
}

int
main(void)
{
    char here[PATH_MAX], root[PATH_MAX];
    const char *src = __FILE__;
    const char *suffix = "test/unit/test_config.c";
    size_t n = strlen(src), sl = strlen(suffix);

    /*
     * Find the repo's conf/imgw.ini before leaving the cwd: meson runs us
     * from the source root, while __FILE__ may be absolute or relative to
     * wherever the compiler ran.
     */
    if (getcwd(here, sizeof(here)) == NULL)
        snprintf(here, sizeof(here), ".");
    snprintf(root, sizeof(root), "%.*s",
             n >= sl && strcmp(src + n - sl, suffix) == 0 ? (int)(n - sl) : 0,
             src);
    snprintf(shipped_ini, sizeof(shipped_ini), "%s/conf/imgw.ini", here);
    if (access(shipped_ini, R_OK) != 0) {
        if (root[0] == '/')
            snprintf(shipped_ini, sizeof(shipped_ini), "%sconf/imgw.ini", root);
        else
            snprintf(shipped_ini, sizeof(shipped_ini), "%s/%sconf/imgw.ini",
                     here, root);
    }

    if (mkdtemp(tmpdir) == NULL || chdir(tmpdir) != 0) {
        perror(tmpdir);
        return 1;
    }

    RUN(defaults);
    RUN(file_parsing);
    RUN(default_file);
    RUN(missing_explicit_file);
    RUN(env_override);
    RUN(precedence);
    RUN(log_level);
    RUN(unknown_keys);
    RUN(unknown_env);
    RUN(bad_values);
    RUN(cross_checks);
    RUN(cli);
    RUN(usage);
    RUN(derived_ids);
    RUN(port_lists);
    RUN(string_limits);
    RUN(environ_default);
    RUN(short_secrets);
    RUN(require_exp_key);
    RUN(shipped_ini);

    if (chdir("/") == 0)
        rmdir(tmpdir);
    TEST_DONE();
}
