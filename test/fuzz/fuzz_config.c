/*
 * fuzz_config: imgw_config_load() with a fuzzed INI file, environment and
 * command line.
 *
 * Input: INI text, then optionally a NUL byte and environment strings
 * ("IMGW__SERVER__PORTS=9000", one per line), then optionally another NUL
 * and extra command-line arguments (one per line). The file is a memfd
 * opened through /proc/self/fd, so nothing touches the disk; the command
 * line is always "imgw -c <that file>" plus the extras. Extras that could
 * name another file (anything that looks like -c/--config) are dropped:
 * reading /dev/zero or a FIFO would hang the target, not find a bug.
 * stdout goes to /dev/null (-h and -V print there).
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "config.h"
#include "log.h"

#define MAX_ENV 32
#define MAX_ARGS 16

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int memfd = -1;
static char path[64];
static imgw_config_t cfg;

/* Splits s[0..n) at '\n' into NUL-terminated strings in a fresh buffer. */
static size_t
split_lines(const uint8_t *s, size_t n, char **buf, char **vec, size_t max)
{
    size_t k = 0;
    *buf = malloc(n + 1);
    if (*buf == NULL)
        abort();
    memcpy(*buf, s, n);
    (*buf)[n] = '\0';
    char *p = *buf, *end = *buf + n;
    while (p < end && k < max) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        if (nl)
            *nl = '\0';
        vec[k++] = p;
        p = nl ? nl + 1 : end;
    }
    return k;
}

static int
names_a_file(const char *a)
{
    if (a[0] != '-')
        return 0;
    if (a[1] == '-') {
        const char *eq = strchr(a, '=');
        size_t n = eq ? (size_t)(eq - a) : strlen(a);
        return memchr(a, 'c', n) != NULL; /* --config, --c, ... */
    }
    return strchr(a, 'c') != NULL; /* -c, -tc, -Vc... */
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[512];
    char *envbuf = NULL, *argbuf = NULL;
    char *envp[MAX_ENV + 1];
    char *argv[MAX_ARGS + 4];
    char *envraw[MAX_ENV], *argraw[MAX_ARGS];

    if (memfd < 0) {
        imgw_log_set_level(IMGW_LOG_OFF);
        memfd = memfd_create("fuzz_config.ini", 0);
        if (memfd < 0)
            abort();
        snprintf(path, sizeof(path), "/proc/self/fd/%d", memfd);
        int devnull = open("/dev/null", O_WRONLY);
        if (devnull >= 0) {
            dup2(devnull, STDOUT_FILENO);
            close(devnull);
        }
    }
    const uint8_t *sep = memchr(data, 0, size);
    size_t ini_len = sep ? (size_t)(sep - data) : size;
    if (ftruncate(memfd, 0) != 0 ||
        (ini_len && pwrite(memfd, data, ini_len, 0) != (ssize_t)ini_len))
        abort();

    size_t ne = 0, na = 0;
    if (sep) {
        const uint8_t *rest = sep + 1;
        size_t rlen = size - ini_len - 1;
        const uint8_t *sep2 = memchr(rest, 0, rlen);
        size_t elen = sep2 ? (size_t)(sep2 - rest) : rlen;
        ne = split_lines(rest, elen, &envbuf, envraw, MAX_ENV);
        if (sep2)
            na = split_lines(sep2 + 1, rlen - elen - 1, &argbuf, argraw,
                             MAX_ARGS);
    }
    for (size_t i = 0; i < ne; i++)
        envp[i] = envraw[i];
    envp[ne] = NULL;

    int argc = 0;
    argv[argc++] = "imgw";
    argv[argc++] = "-c";
    argv[argc++] = path;
    for (size_t i = 0; i < na; i++)
        if (!names_a_file(argraw[i]))
            argv[argc++] = argraw[i];
    argv[argc] = NULL;

    memset(err, 0x5A, sizeof(err));
    int r = imgw_config_load(&cfg, argc, argv, envp, err, sizeof(err));
    if (r != IMGW_CONFIG_OK && r != IMGW_CONFIG_EXIT_OK &&
        r != IMGW_CONFIG_ERROR)
        abort();
    if (memchr(err, 0, sizeof(err)) == NULL)
        abort();
    if (r == IMGW_CONFIG_ERROR && err[0] == '\0')
        abort(); /* "err filled, names the bad key" */
    if (r == IMGW_CONFIG_OK) {
        /* A loaded configuration satisfies its own bounds. */
        if (cfg.n_ports < 0 || cfg.n_ports > IMGW_CONFIG_MAX_PORTS ||
            cfg.n_tls_ports < 0 || cfg.n_tls_ports > IMGW_CONFIG_MAX_PORTS ||
            cfg.node_id < 0 || cfg.node_id > 1023 ||
            memchr(cfg.broker_id, 0, sizeof(cfg.broker_id)) == NULL ||
            memchr(cfg.bind, 0, sizeof(cfg.bind)) == NULL ||
            memchr(cfg.nacos_ip, 0, sizeof(cfg.nacos_ip)) == NULL)
            abort();
    }
    free(envbuf);
    free(argbuf);
    return 0;
}
