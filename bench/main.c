/*
 * main.c: imgw-bench's parent process: options, server-side preparation
 * (groups through the admin API), forking the workers, the barrier, server
 * CPU/RSS sampling from /proc, merging the workers' results and printing a
 * human summary plus exactly one "JSON {...}" line. Also --smoke, which
 * starts its own server and fails on any lost or duplicated message.
 *
 * Single-threaded; the parent never runs a libuv loop, so fork() is safe.
 */
#include "bench.h"
#include "worker.h"

#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_PROCS 64
/* imgw refuses jwt_secret and admin_token values under 32 bytes. */
#define BENCH_DEFAULT_SECRET "bench-secret-0123456789abcdef0123456789"
#define BENCH_DEFAULT_ADMIN "bench-admin-token-0123456789abcdef"
#define CONNS_PER_PROC 19000 /* the fd hard limit here is 20,000 */

static const char *const k_scen[] = {"connect", "relay", "group", "downlink",
                                     "storm"};

/* ---- server sampling -------------------------------------------------- */

typedef struct srv_sample_s {
    int ok;
    uint64_t cpu_us;
    uint64_t sys_us;
    uint64_t rss_kb;
} srv_sample_t;

static srv_sample_t
srv_sample(int pid)
{
    srv_sample_t s = {0, 0, 0, 0};
    if (pid <= 0)
        return s;
    char path[64], buf[4096];
    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return s;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')'); /* comm may contain spaces */
    if (p == NULL)
        return s;
    unsigned long long ut = 0, st = 0;
    /* after ')': state(3) ... utime is field 14, stime 15 */
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu",
               &ut, &st) != 2)
        return s;
    long hz = sysconf(_SC_CLK_TCK);
    s.cpu_us = (ut + st) * 1000000ull / (unsigned long long)hz;
    s.sys_us = st * 1000000ull / (unsigned long long)hz;
    snprintf(path, sizeof(path), "/proc/%d/status", pid);
    f = fopen(path, "r");
    if (f) {
        while (fgets(buf, sizeof(buf), f))
            if (strncmp(buf, "VmRSS:", 6) == 0)
                s.rss_kb = strtoull(buf + 6, NULL, 10);
        fclose(f);
    }
    s.ok = 1;
    return s;
}

/* ---- tiny blocking HTTP client for the admin API ---------------------- */

static int
http_request(const bopts_t *o, const char *method, const char *path,
             const char *body, char *resp, size_t resplen)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct timeval tv = {5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)o->port);
    inet_pton(AF_INET, o->host, &sa.sin_addr);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        close(fd);
        return -1;
    }
    size_t blen = body ? strlen(body) : 0;
    char *req = malloc(blen + 512);
    int n =
        snprintf(req, blen + 512,
                 "%s %s HTTP/1.1\r\nHost: %s:%d\r\n"
                 "Authorization: Bearer %s\r\n"
                 "Content-Type: application/json\r\n"
                 "Content-Length: %zu\r\nConnection: close\r\n\r\n%s",
                 method, path, o->host, o->port,
                 o->admin_token ? o->admin_token : "", blen, body ? body : "");
    ssize_t off = 0;
    while (off < n) {
        ssize_t k = write(fd, req + off, (size_t)(n - off));
        if (k <= 0)
            break;
        off += k;
    }
    free(req);
    size_t got = 0;
    while (got + 1 < resplen) {
        ssize_t k = read(fd, resp + got, resplen - 1 - got);
        if (k <= 0)
            break;
        got += (size_t)k;
    }
    resp[got] = 0;
    close(fd);
    if (got < 12 || strncmp(resp, "HTTP/1.", 7) != 0)
        return -1;
    return atoi(resp + 9);
}

static int
create_groups(const bopts_t *o)
{
    size_t cap = (size_t)o->members * 48 + 64;
    char *body = malloc(cap);
    char resp[1024], path[96];
    for (int g = 0; g < o->groups; g++) {
        size_t off = (size_t)snprintf(body, cap, "{\"members\":[");
        for (int j = 0; j < o->members; j++)
            off += (size_t)snprintf(body + off, cap - off, "%s\"bg%dm%d\"",
                                    j ? "," : "", g, j);
        snprintf(body + off, cap - off, "]}");
        snprintf(path, sizeof(path), "/api/groups/bgrp%d", g);
        int st = http_request(o, "PUT", path, body, resp, sizeof(resp));
        if (st < 200 || st > 299) {
            fprintf(stderr,
                    "imgw-bench: PUT %s failed: HTTP %d (is auth.admin_token "
                    "set to --admin-token?)\n%.300s\n",
                    path, st, resp);
            free(body);
            return -1;
        }
    }
    free(body);
    return 0;
}

/* ---- running the workers ---------------------------------------------- */

static pid_t g_kids[MAX_PROCS];
static int g_nkids;

static void
on_alarm(int sig)
{
    (void)sig;
    static const char msg[] = "imgw-bench: run exceeded its time budget\n";
    ssize_t k = write(2, msg, sizeof(msg) - 1);
    (void)k;
    for (int i = 0; i < g_nkids; i++)
        if (g_kids[i] > 0)
            kill(g_kids[i], SIGKILL);
    _exit(3);
}

static int
readn(int fd, void *buf, size_t len)
{
    char *p = buf;
    size_t off = 0;
    while (off < len) {
        ssize_t k = read(fd, p + off, len - off);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return -1;
        off += (size_t)k;
    }
    return 0;
}

typedef struct run_out_s {
    bresult_t total;
    srv_sample_t s0, s1, s2; /* before setup, after setup, after the phase */
    srv_sample_t w1[8], w2[8]; /* --watch-pid processes, s1 and s2 times */
    int workers_failed;
    int procs;
} run_out_t;

static int
units_of(const bopts_t *o)
{
    switch (o->scenario) {
    case SC_RELAY:
        return o->pairs;
    case SC_GROUP:
        return o->groups;
    case SC_DOWNLINK:
        return o->receivers;
    default:
        return o->conns;
    }
}

static int
conns_of(const bopts_t *o)
{
    switch (o->scenario) {
    case SC_RELAY:
        return 2 * o->pairs;
    case SC_GROUP:
        return o->groups * o->members;
    case SC_DOWNLINK:
        return o->receivers;
    default:
        return o->conns;
    }
}

static int
run_bench(bopts_t *o, run_out_t *out)
{
    memset(out, 0, sizeof(*out));
    bconn_global_init(o);
    bhist_init(&out->total.h_conn);
    bhist_init(&out->total.h_lat);
    bhist_init(&out->total.h_ack);
    bhist_init(&out->total.h_storm);
    bhist_init(&out->total.h_lat_actual);
    bhist_init(&out->total.h_up);
    int conns = conns_of(o);
    int procs = o->procs;
    if (procs <= 0)
        procs = (conns + CONNS_PER_PROC - 1) / CONNS_PER_PROC;
    if (procs < 1)
        procs = 1;
    if (procs > units_of(o))
        procs = units_of(o) > 0 ? units_of(o) : 1;
    if (procs > MAX_PROCS)
        procs = MAX_PROCS;
    out->procs = procs;
    if (o->scenario == SC_GROUP && create_groups(o) < 0)
        return -1;

    double crate = (o->scenario == SC_CONNECT || o->scenario == SC_STORM)
                       ? o->rate
                       : o->conn_rate;
    double budget = conns / (crate > 0 ? crate : 1) + o->timeout * 2 + 30;
    budget += o->scenario == SC_CONNECT ? o->hold
              : o->scenario == SC_STORM ? o->jitter + o->timeout
                                        : o->duration + o->drain;
    signal(SIGALRM, on_alarm);
    alarm((unsigned)budget + 1);

    out->s0 = srv_sample(o->server_pid);
    int up[MAX_PROCS], down[MAX_PROCS];
    fflush(stdout);
    fflush(stderr);
    g_nkids = 0;
    for (int k = 0; k < procs; k++) {
        int a[2], b[2];
        if (pipe(a) < 0 || pipe(b) < 0) {
            perror("pipe");
            return -1;
        }
        pid_t pid = fork();
        if (pid < 0) {
            perror("fork");
            return -1;
        }
        if (pid == 0) {
            signal(SIGALRM, SIG_DFL);
            alarm(0);
            close(a[0]);
            close(b[1]);
            for (int j = 0; j < k; j++) {
                close(up[j]);
                close(down[j]);
            }
            _exit(worker_main(o, k, procs, b[0], a[1]));
        }
        close(a[1]);
        close(b[0]);
        up[k] = a[0];
        down[k] = b[1];
        g_kids[g_nkids++] = pid;
    }
    /* barrier: every worker has finished its setup */
    int alive[MAX_PROCS];
    for (int k = 0; k < procs; k++) {
        char ch = 0;
        alive[k] = readn(up[k], &ch, 1) == 0 && ch == 'R';
        if (!alive[k])
            out->workers_failed++;
    }
    if (o->scenario == SC_CONNECT)
        usleep(300 * 1000); /* let the server finish what it was doing */
    out->s1 = srv_sample(o->server_pid);
    for (int i = 0; i < o->nwatch; i++)
        out->w1[i] = srv_sample(o->watch_pid[i]);
    for (int k = 0; k < procs; k++)
        if (alive[k] && write(down[k], "G", 1) != 1)
            alive[k] = 0;
    bresult_t *r = malloc(sizeof(*r));
    for (int k = 0; k < procs; k++) {
        char ch = 0;
        if (!alive[k] || readn(up[k], &ch, 1) < 0 || ch != 'D' ||
            readn(up[k], r, sizeof(*r)) < 0) {
            if (alive[k])
                out->workers_failed++;
            continue;
        }
        bresult_t *t = &out->total;
        /* sum every counter: they are the leading uint64_t fields */
        uint64_t *dst = (uint64_t *)t, *src = (uint64_t *)r;
        size_t nctr = offsetof(bresult_t, cpu_setup_us) / sizeof(uint64_t);
        for (size_t i = 0; i < nctr; i++) {
            if (&dst[i] == &t->ack_err_code) {
                if (!dst[i])
                    dst[i] = src[i];
                continue;
            }
            dst[i] += src[i];
        }
        t->cpu_setup_us += r->cpu_setup_us;
        t->cpu_phase_us += r->cpu_phase_us;
        t->cpu_phase_sys_us += r->cpu_phase_sys_us;
        t->cpu_setup_sys_us += r->cpu_setup_sys_us;
        if (r->setup_ns > t->setup_ns)
            t->setup_ns = r->setup_ns;
        if (r->phase_ns > t->phase_ns)
            t->phase_ns = r->phase_ns;
        if (t->err[0] == 0 && r->err[0])
            memcpy(t->err, r->err, sizeof(t->err));
        bhist_merge(&t->h_conn, &r->h_conn);
        bhist_merge(&t->h_lat, &r->h_lat);
        bhist_merge(&t->h_ack, &r->h_ack);
        bhist_merge(&t->h_storm, &r->h_storm);
        bhist_merge(&t->h_lat_actual, &r->h_lat_actual);
        bhist_merge(&t->h_up, &r->h_up);
    }
    free(r);
    out->s2 = srv_sample(o->server_pid);
    for (int i = 0; i < o->nwatch; i++)
        out->w2[i] = srv_sample(o->watch_pid[i]);
    for (int k = 0; k < procs; k++) {
        int st;
        close(up[k]);
        close(down[k]);
        waitpid(g_kids[k], &st, 0);
    }
    g_nkids = 0;
    alarm(0);
    return 0;
}

/* ---- reporting -------------------------------------------------------- */

static double
us(uint64_t ns)
{
    return (double)ns / 1000.0;
}

static int
fmt_hist(char *b, size_t cap, const bhist_t *h)
{
    return snprintf(b, cap,
                    "{\"count\":%llu,\"p50\":%.1f,\"p90\":%.1f,\"p99\":%.1f,"
                    "\"p999\":%.1f,\"max\":%.1f,\"mean\":%.1f}",
                    (unsigned long long)h->count, us(bhist_quantile(h, .5)),
                    us(bhist_quantile(h, .9)), us(bhist_quantile(h, .99)),
                    us(bhist_quantile(h, .999)), us(h->max),
                    bhist_mean(h) / 1000.0);
}

static void
print_hist(const char *what, const bhist_t *h)
{
    if (h->count == 0) {
        printf("  %-22s (none)\n", what);
        return;
    }
    printf("  %-22s p50 %.1f  p90 %.1f  p99 %.1f  p99.9 %.1f  max %.1f us"
           "  (n=%llu)\n",
           what, us(bhist_quantile(h, .5)), us(bhist_quantile(h, .9)),
           us(bhist_quantile(h, .99)), us(bhist_quantile(h, .999)), us(h->max),
           (unsigned long long)h->count);
}

static void
report(const bopts_t *o, const run_out_t *ro)
{
    const bresult_t *t = &ro->total;
    double phase_s = (double)t->phase_ns / 1e9;
    double setup_s = (double)t->setup_ns / 1e9;
    double achieved = phase_s > 0 ? (double)t->sent / phase_s : 0;
    int have_srv = ro->s0.ok && ro->s2.ok;
    /* the unit of "per msg" for each scenario */
    uint64_t units = 0;
    double client_cpu_us = 0, server_cpu_us = 0;
    double client_sys_us = 0, server_sys_us = 0;
    const char *unit = "msg";
    switch (o->scenario) {
    case SC_CONNECT:
        units = t->conns_ok;
        unit = "conn";
        client_cpu_us = (double)t->cpu_setup_us;
        client_sys_us = (double)t->cpu_setup_sys_us;
        server_cpu_us = (double)(ro->s1.cpu_us - ro->s0.cpu_us);
        server_sys_us = (double)(ro->s1.sys_us - ro->s0.sys_us);
        break;
    case SC_STORM:
        units = t->reconnect_ok;
        unit = "reconnect";
        client_cpu_us = (double)t->cpu_phase_us;
        server_cpu_us = (double)(ro->s2.cpu_us - ro->s1.cpu_us);
        break;
    case SC_DOWNLINK:
        units = t->received;
        unit = "delivery";
        client_cpu_us = (double)t->cpu_phase_us;
        server_cpu_us = (double)(ro->s2.cpu_us - ro->s1.cpu_us);
        break;
    default:
        units = t->sent;
        client_cpu_us = (double)t->cpu_phase_us;
        server_cpu_us = (double)(ro->s2.cpu_us - ro->s1.cpu_us);
        break;
    }
    if (o->scenario != SC_CONNECT) {
        client_sys_us = (double)t->cpu_phase_sys_us;
        server_sys_us = (double)(ro->s2.sys_us - ro->s1.sys_us);
    }
    double cli_per = units ? client_cpu_us / (double)units : 0;
    double cli_sys_per = units ? client_sys_us / (double)units : 0;
    double srv_sys_per = units ? server_sys_us / (double)units : 0;
    double srv_per = units ? server_cpu_us / (double)units : 0;
    double srv_per_deliv =
        t->received ? server_cpu_us / (double)t->received : 0;
    double srv_pct = o->scenario == SC_CONNECT
                         ? (setup_s > 0 ? server_cpu_us / 1e4 / setup_s : 0)
                         : (phase_s > 0 ? server_cpu_us / 1e4 / phase_s : 0);
    double rss_per_conn =
        (have_srv && t->conns_ok)
            ? ((double)ro->s1.rss_kb - (double)ro->s0.rss_kb) * 1024.0 /
                  (double)t->conns_ok
            : 0;

    /* ---- human summary ---- */
    printf("imgw-bench %s%s%s: %s:%d, codec %s, procs %d\n",
           k_scen[o->scenario], o->label ? " " : "", o->label ? o->label : "",
           o->host, o->port, o->json ? "json" : "protobuf", ro->procs);
    printf("  connections            %llu ok, %llu failed (http %llu, auth "
           "%llu) in %.2f s\n",
           (unsigned long long)t->conns_ok, (unsigned long long)t->conns_fail,
           (unsigned long long)t->http_fail, (unsigned long long)t->auth_fail,
           setup_s);
    print_hist("connect+upgrade+auth", &t->h_conn);
    switch (o->scenario) {
    case SC_CONNECT:
        printf("  rate                   target %.0f conn/s, achieved %.0f "
               "conn/s; held %.1f s\n",
               o->rate, setup_s > 0 ? (double)t->conns_ok / setup_s : 0,
               phase_s);
        break;
    case SC_STORM:
        printf("  storm                  %llu reconnected, %llu failed; "
               "99%% after %.1f ms, 100%% after %.1f ms (jitter %.1f s)\n",
               (unsigned long long)t->reconnect_ok,
               (unsigned long long)t->reconnect_fail,
               us(bhist_quantile(&t->h_storm, .99)) / 1000.0,
               us(t->h_storm.max) / 1000.0, o->jitter);
        print_hist("reconnect latency", &t->h_lat);
        break;
    default:
        printf("  rate                   target %.0f msg/s, achieved %.0f "
               "msg/s over %.2f s\n",
               o->rate, achieved, phase_s);
        printf("  sent %llu  acked %llu (errors %llu, first code %llu)  "
               "skipped %llu  unacked %llu\n",
               (unsigned long long)t->sent, (unsigned long long)t->acked_ok,
               (unsigned long long)t->acked_err,
               (unsigned long long)t->ack_err_code,
               (unsigned long long)t->skipped, (unsigned long long)t->unacked);
        printf("  deliveries/s           %.0f\n",
               phase_s > 0 ? (double)t->received / phase_s : 0);
        printf("  deliveries expected %llu  received %llu  lost %llu  "
               "duplicated %llu  seq gaps %llu  misrouted %llu\n",
               (unsigned long long)t->expected, (unsigned long long)t->received,
               (unsigned long long)t->lost, (unsigned long long)t->dup,
               (unsigned long long)t->seq_gaps,
               (unsigned long long)t->misrouted);
        print_hist("delivery latency", &t->h_lat);
        print_hist("  from actual send", &t->h_lat_actual);
        print_hist("  send->server_time", &t->h_up);
        print_hist("ack latency", &t->h_ack);
        break;
    }
    if (t->closed_unexpected || t->kicked || t->error_rsp || t->err[0])
        printf("  problems               closed %llu, kicked %llu, error "
               "responses %llu; first: %s\n",
               (unsigned long long)t->closed_unexpected,
               (unsigned long long)t->kicked, (unsigned long long)t->error_rsp,
               t->err[0] ? t->err : "-");
    printf(
        "  client CPU             %.2f us/%s (user %.2f, sys %.2f; %.2f s)\n",
        cli_per, unit, cli_per - cli_sys_per, cli_sys_per, client_cpu_us / 1e6);
    if (have_srv) {
        printf("  server CPU             %.2f us/%s (user %.2f, sys %.2f)",
               srv_per, unit, srv_per - srv_sys_per, srv_sys_per);
        if (o->scenario == SC_GROUP)
            printf(", %.2f us/delivery", srv_per_deliv);
        printf(" (%.2f s, %.0f%% of a core)\n", server_cpu_us / 1e6, srv_pct);
        printf("  server RSS             %llu kB before, %llu kB after "
               "setup, %llu kB at end",
               (unsigned long long)ro->s0.rss_kb,
               (unsigned long long)ro->s1.rss_kb,
               (unsigned long long)ro->s2.rss_kb);
        if (o->scenario == SC_CONNECT)
            printf("; %.0f bytes/conn", rss_per_conn);
        printf("\n");
    }
    for (int i = 0; i < o->nwatch; i++) {
        if (!ro->w1[i].ok || !ro->w2[i].ok)
            continue;
        double c = (double)(ro->w2[i].cpu_us - ro->w1[i].cpu_us);
        double sy = (double)(ro->w2[i].sys_us - ro->w1[i].sys_us);
        printf("  %-22s %.2f us/%s (user %.2f, sys %.2f) (%.0f%% of a core)\n",
               o->watch_name[i], units ? c / (double)units : 0, unit,
               units ? (c - sy) / (double)units : 0,
               units ? sy / (double)units : 0,
               phase_s > 0 ? c / 1e4 / phase_s : 0);
    }
    if (ro->workers_failed)
        printf("  WARNING: %d worker(s) failed\n", ro->workers_failed);

    /* ---- the JSON line ---- */
    static char j[16384];
    size_t n = 0;
#define J(...) n += (size_t)snprintf(j + n, sizeof(j) - n, __VA_ARGS__)
    J("{\"scenario\":\"%s\"", k_scen[o->scenario]);
    if (o->label)
        J(",\"label\":\"%s\"", o->label);
    J(",\"params\":{\"host\":\"%s\",\"port\":%d,\"codec\":\"%s\","
      "\"procs\":%d,\"conns\":%d,\"pairs\":%d,\"groups\":%d,\"members\":%d,"
      "\"receivers\":%d,\"rate\":%.1f,\"conn_rate\":%.1f,\"duration\":%.1f,"
      "\"hold\":%.1f,\"jitter\":%.2f,\"size\":%d}",
      o->host, o->port, o->json ? "json" : "protobuf", ro->procs, conns_of(o),
      o->pairs, o->groups, o->members, o->receivers, o->rate, o->conn_rate,
      o->duration, o->hold, o->jitter, o->size);
    J(",\"rate\":%.1f,\"deliveries_per_s\":%.1f,\"achieved_rate\":%.1f,"
      "\"phase_s\":%.3f,\"setup_s\":%.3f",
      o->rate, phase_s > 0 ? (double)t->received / phase_s : 0,
      o->scenario == SC_CONNECT
          ? (setup_s > 0 ? (double)t->conns_ok / setup_s : 0)
          : achieved,
      phase_s, setup_s);
    J(",\"conns_ok\":%llu,\"conns_fail\":%llu,\"sent\":%llu,\"acked\":%llu,"
      "\"ack_errors\":%llu,\"skipped\":%llu,\"unacked\":%llu,"
      "\"expected\":%llu,\"received\":%llu,\"lost\":%llu,"
      "\"duplicated\":%llu,\"seq_gaps\":%llu,\"misrouted\":%llu,"
      "\"closed_unexpected\":%llu,\"kicked\":%llu,\"error_rsp\":%llu",
      (unsigned long long)t->conns_ok, (unsigned long long)t->conns_fail,
      (unsigned long long)t->sent, (unsigned long long)t->acked_ok,
      (unsigned long long)t->acked_err, (unsigned long long)t->skipped,
      (unsigned long long)t->unacked, (unsigned long long)t->expected,
      (unsigned long long)t->received, (unsigned long long)t->lost,
      (unsigned long long)t->dup, (unsigned long long)t->seq_gaps,
      (unsigned long long)t->misrouted,
      (unsigned long long)t->closed_unexpected, (unsigned long long)t->kicked,
      (unsigned long long)t->error_rsp);
    J(",\"latency_us\":");
    n += (size_t)fmt_hist(j + n, sizeof(j) - n,
                          o->scenario == SC_CONNECT ? &t->h_conn : &t->h_lat);
    J(",\"latency_from_actual_send_us\":");
    n += (size_t)fmt_hist(j + n, sizeof(j) - n, &t->h_lat_actual);
    J(",\"to_server_time_us\":");
    n += (size_t)fmt_hist(j + n, sizeof(j) - n, &t->h_up);
    J(",\"ack_latency_us\":");
    n += (size_t)fmt_hist(j + n, sizeof(j) - n, &t->h_ack);
    J(",\"connect_latency_us\":");
    n += (size_t)fmt_hist(j + n, sizeof(j) - n, &t->h_conn);
    if (o->scenario == SC_STORM)
        J(",\"storm\":{\"reconnected\":%llu,\"failed\":%llu,\"t99_ms\":%.1f,"
          "\"t100_ms\":%.1f}",
          (unsigned long long)t->reconnect_ok,
          (unsigned long long)t->reconnect_fail,
          us(bhist_quantile(&t->h_storm, .99)) / 1000.0,
          us(t->h_storm.max) / 1000.0);
    J(",\"unit\":\"%s\",\"client_cpu_us_per_msg\":%.3f,"
      "\"client_sys_us_per_msg\":%.3f",
      unit, cli_per, cli_sys_per);
    if (have_srv) {
        J(",\"server_cpu_us_per_msg\":%.3f,\"server_sys_us_per_msg\":%.3f,"
          "\"server_cpu_us_per_delivery\":%.3f,\"server_cpu_pct\":%.1f",
          srv_per, srv_sys_per, srv_per_deliv, srv_pct);
        J(",\"server_rss_kb\":{\"before\":%llu,\"after_setup\":%llu,"
          "\"end\":%llu},\"server_rss_per_conn_bytes\":%.0f",
          (unsigned long long)ro->s0.rss_kb, (unsigned long long)ro->s1.rss_kb,
          (unsigned long long)ro->s2.rss_kb, rss_per_conn);
    } else {
        J(",\"server_cpu_us_per_msg\":null,\"server_rss_kb\":null");
    }
    if (o->recv_host || o->recv_port > 0)
        J(",\"recv\":{\"host\":\"%s\",\"port\":%d}",
          o->recv_host ? o->recv_host : o->host,
          o->recv_port > 0 ? o->recv_port : o->port);
    if (o->nwatch) {
        J(",\"watch\":{");
        for (int i = 0; i < o->nwatch; i++) {
            int ok = ro->w1[i].ok && ro->w2[i].ok;
            double c = ok ? (double)(ro->w2[i].cpu_us - ro->w1[i].cpu_us) : 0;
            double sy = ok ? (double)(ro->w2[i].sys_us - ro->w1[i].sys_us) : 0;
            J("%s\"%s\":{\"pid\":%d,\"cpu_us\":%.0f,\"sys_us\":%.0f,"
              "\"cpu_us_per_msg\":%.3f,\"sys_us_per_msg\":%.3f,"
              "\"cpu_pct\":%.1f}",
              i ? "," : "", o->watch_name[i], o->watch_pid[i], c, sy,
              units ? c / (double)units : 0, units ? sy / (double)units : 0,
              phase_s > 0 ? c / 1e4 / phase_s : 0);
        }
        J("}");
    }
    J(",\"workers_failed\":%d", ro->workers_failed);
    if (t->err[0]) {
        J(",\"first_error\":\"");
        for (const char *p = t->err; *p && n + 8 < sizeof(j); p++) {
            if (*p == '"' || *p == '\\')
                j[n++] = '\\';
            j[n++] = (*p >= 32 && *p < 127) ? *p : '?';
        }
        J("\"");
    }
    J("}");
#undef J
    printf("JSON %s\n", j);
    fflush(stdout);
}

/* ---- smoke ------------------------------------------------------------ */

static int
free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t sl = sizeof(sa);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
        getsockname(fd, (struct sockaddr *)&sa, &sl) < 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    close(fd);
    return ntohs(sa.sin_port);
}

static int
port_open(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int ok = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
    close(fd);
    return ok;
}

static int
smoke_check(const char *what, const run_out_t *ro, int want_conns)
{
    const bresult_t *t = &ro->total;
    int bad = t->conns_ok != (uint64_t)want_conns || t->sent == 0 || t->lost ||
              t->dup || t->acked_err || t->misrouted || t->unacked ||
              t->closed_unexpected || ro->workers_failed ||
              t->received != t->expected;
    fprintf(stderr,
            "imgw-bench smoke %s: %s (conns %llu/%d, sent %llu, "
            "received %llu/%llu, lost %llu, dup %llu, ack errors %llu)\n",
            what, bad ? "FAIL" : "ok", (unsigned long long)t->conns_ok,
            want_conns, (unsigned long long)t->sent,
            (unsigned long long)t->received, (unsigned long long)t->expected,
            (unsigned long long)t->lost, (unsigned long long)t->dup,
            (unsigned long long)t->acked_err);
    return bad;
}

static int
smoke_main(bopts_t *o, const char *server_bin)
{
    int port = free_port();
    if (port < 0) {
        fprintf(stderr, "imgw-bench smoke: no free port\n");
        return 2;
    }
    char portbuf[16];
    snprintf(portbuf, sizeof(portbuf), "%d", port);
    fflush(stdout);
    pid_t srv = fork();
    if (srv == 0) {
        setenv("IMGW__SERVER__PORTS", portbuf, 1);
        setenv("IMGW__AUTH__JWT_SECRET", o->secret, 1);
        setenv("IMGW__LIMITS__SEND_RATE", "100000", 1);
        setenv("IMGW__AUTH__ADMIN_TOKEN", o->admin_token, 1);
        if (getenv("IMGW_LOG") == NULL)
            setenv("IMGW_LOG", "warn", 1);
        execl(server_bin, server_bin, "-t", "1", (char *)NULL);
        perror("exec server");
        _exit(127);
    }
    int up = 0;
    for (int i = 0; i < 100 && !up; i++) {
        int st;
        if (waitpid(srv, &st, WNOHANG) == srv) {
            fprintf(stderr, "imgw-bench smoke: server exited early\n");
            return 2;
        }
        up = port_open(port);
        if (!up)
            usleep(100 * 1000);
    }
    int bad = 0;
    if (!up) {
        fprintf(stderr, "imgw-bench smoke: server did not listen on %d\n",
                port);
        bad = 2;
    } else {
        run_out_t ro;
        o->port = port;
        o->server_pid = srv;
        o->scenario = SC_RELAY;
        o->pairs = 20;
        o->rate = 200;
        o->duration = 3;
        o->drain = 5;
        o->procs = 1;
        o->json = 0;
        if (run_bench(o, &ro) < 0)
            bad = 1;
        else {
            report(o, &ro);
            bad |= smoke_check("relay/protobuf", &ro, 40);
        }
        o->json = 1;
        o->duration = 2;
        snprintf(o->runid, sizeof(o->runid), "%lxj",
                 (unsigned long)time(NULL) ^ (unsigned long)getpid());
        if (run_bench(o, &ro) < 0)
            bad = 1;
        else {
            report(o, &ro);
            bad |= smoke_check("relay/json", &ro, 40);
        }
    }
    kill(srv, SIGTERM);
    int st = 0;
    for (int i = 0; i < 50; i++) {
        if (waitpid(srv, &st, WNOHANG) == srv)
            goto reaped;
        usleep(100 * 1000);
    }
    kill(srv, SIGKILL);
    waitpid(srv, &st, 0);
reaped:
    fprintf(stderr, "imgw-bench smoke: %s\n", bad ? "FAILED" : "passed");
    return bad ? 1 : 0;
}

/* ---- options ---------------------------------------------------------- */

static void
usage(FILE *f)
{
    fprintf(
        f,
        "usage: imgw-bench SCENARIO [options]     (or --scenario SCENARIO)\n"
        "       imgw-bench --smoke PATH/TO/imgw   (starts its own server)\n"
        "scenarios: connect relay group downlink storm\n"
        "  --host H          server address in 127.0.0.0/8 (127.0.0.1)\n"
        "  --port P          server port (8080)\n"
        "  -n, --conns N     connect/storm: connections (1000)\n"
        "  --pairs N         relay: sender/receiver pairs bu<i> -> bv<i> "
        "(100)\n"
        "  --groups G        group: groups bgrp<g> (1)\n"
        "  --members M       group: members per group, member 0 sends (100)\n"
        "  --receivers N     downlink: receivers bd<i> (100)\n"
        "  --rate R          conns/s (connect, storm) or msgs/s aggregate "
        "(1000)\n"
        "  --conn-rate R     setup connect rate for relay/group/downlink "
        "(2000)\n"
        "  --duration S      seconds of sending (10)\n"
        "  --hold S          connect: seconds to hold the connections (5)\n"
        "  --jitter S        storm: reconnect spread (1)\n"
        "  --drain S         wait for late deliveries after sending (5)\n"
        "  --timeout S       connect+upgrade+auth timeout (30)\n"
        "  --size B          content bytes (64)\n"
        "  --json            text frames (JSON codec) instead of protobuf\n"
        "  --secret S        HS256 secret (" BENCH_DEFAULT_SECRET ")\n"
        "  --admin-token T   group: admin API token (" BENCH_DEFAULT_ADMIN ")\n"
        "  --amqp URL        downlink: amqp://guest:guest@127.0.0.1:5672/%%2f\n"
        "  --broker-id ID    downlink: routing key of the server's queue\n"
        "  --server-pid PID  measure server CPU and RSS from /proc\n"
        "  --recv-host H     receivers connect to H (in 127.0.0.0/8) instead "
        "of --host\n"
        "  --recv-port P     receivers connect to port P (another node: "
        "cross-node)\n"
        "  --watch-pid N=PID also report CPU of PID (another node, "
        "redis-server,\n"
        "                    the broker) over the measured phase as N; "
        "up to 8\n"
        "  --procs K         worker processes (default: one per %d conns)\n"
        "  --label TEXT      copied into the JSON line\n"
        "  --heartbeat-burst runs > 40 s: heartbeat all connections in the "
        "same\n"
        "                    millisecond every 30 s (default: spread over "
        "30 s)\n",
        CONNS_PER_PROC);
}

static int
parse_scenario(const char *s)
{
    for (int i = 0; i < (int)(sizeof(k_scen) / sizeof(k_scen[0])); i++)
        if (strcmp(s, k_scen[i]) == 0)
            return i;
    return -1;
}

static void
raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

int
main(int argc, char **argv)
{
    static bopts_t o;
    o.scenario = -1;
    o.host = "127.0.0.1";
    o.port = 8080;
    o.conns = 1000;
    o.pairs = 100;
    o.groups = 1;
    o.members = 100;
    o.receivers = 100;
    o.rate = 1000;
    o.conn_rate = 2000;
    o.duration = 10;
    o.hold = 5;
    o.jitter = 1;
    o.drain = 5;
    o.timeout = 30;
    o.size = 64;
    o.secret = BENCH_DEFAULT_SECRET;
    o.admin_token = BENCH_DEFAULT_ADMIN;
    o.amqp_url = "amqp://guest:guest@127.0.0.1:5672/%2f";
    o.broker_id = NULL;
    const char *smoke = NULL;
    enum {
        O_HOST = 256,
        O_PORT,
        O_PAIRS,
        O_GROUPS,
        O_MEMBERS,
        O_RECV,
        O_RATE,
        O_CRATE,
        O_DUR,
        O_HOLD,
        O_JIT,
        O_DRAIN,
        O_TMO,
        O_SIZE,
        O_JSON,
        O_SECRET,
        O_ADMIN,
        O_AMQP,
        O_BROKER,
        O_PID,
        O_PROCS,
        O_LABEL,
        O_SCEN,
        O_SMOKE,
        O_HELP,
        O_HBB,
        O_RHOST,
        O_RPORT,
        O_WATCH
    };
    static const struct option lo[] = {{"host", 1, 0, O_HOST},
                                       {"port", 1, 0, O_PORT},
                                       {"conns", 1, 0, 'n'},
                                       {"pairs", 1, 0, O_PAIRS},
                                       {"groups", 1, 0, O_GROUPS},
                                       {"members", 1, 0, O_MEMBERS},
                                       {"receivers", 1, 0, O_RECV},
                                       {"rate", 1, 0, O_RATE},
                                       {"conn-rate", 1, 0, O_CRATE},
                                       {"duration", 1, 0, O_DUR},
                                       {"hold", 1, 0, O_HOLD},
                                       {"jitter", 1, 0, O_JIT},
                                       {"drain", 1, 0, O_DRAIN},
                                       {"timeout", 1, 0, O_TMO},
                                       {"size", 1, 0, O_SIZE},
                                       {"json", 0, 0, O_JSON},
                                       {"secret", 1, 0, O_SECRET},
                                       {"admin-token", 1, 0, O_ADMIN},
                                       {"amqp", 1, 0, O_AMQP},
                                       {"broker-id", 1, 0, O_BROKER},
                                       {"server-pid", 1, 0, O_PID},
                                       {"procs", 1, 0, O_PROCS},
                                       {"label", 1, 0, O_LABEL},
                                       {"scenario", 1, 0, O_SCEN},
                                       {"smoke", 1, 0, O_SMOKE},
                                       {"help", 0, 0, O_HELP},
                                       {"heartbeat-burst", 0, 0, O_HBB},
                                       {"recv-host", 1, 0, O_RHOST},
                                       {"recv-port", 1, 0, O_RPORT},
                                       {"watch-pid", 1, 0, O_WATCH},
                                       {0, 0, 0, 0}};
    int ch;
    while ((ch = getopt_long(argc, argv, "n:h", lo, NULL)) != -1) {
        switch (ch) {
        case O_HOST:
            o.host = optarg;
            break;
        case O_PORT:
            o.port = atoi(optarg);
            break;
        case 'n':
            o.conns = atoi(optarg);
            break;
        case O_PAIRS:
            o.pairs = atoi(optarg);
            break;
        case O_GROUPS:
            o.groups = atoi(optarg);
            break;
        case O_MEMBERS:
            o.members = atoi(optarg);
            break;
        case O_RECV:
            o.receivers = atoi(optarg);
            break;
        case O_RATE:
            o.rate = atof(optarg);
            break;
        case O_CRATE:
            o.conn_rate = atof(optarg);
            break;
        case O_DUR:
            o.duration = atof(optarg);
            break;
        case O_HOLD:
            o.hold = atof(optarg);
            break;
        case O_JIT:
            o.jitter = atof(optarg);
            break;
        case O_DRAIN:
            o.drain = atof(optarg);
            break;
        case O_TMO:
            o.timeout = atof(optarg);
            break;
        case O_SIZE:
            o.size = atoi(optarg);
            break;
        case O_JSON:
            o.json = 1;
            break;
        case O_SECRET:
            o.secret = optarg;
            break;
        case O_ADMIN:
            o.admin_token = optarg;
            break;
        case O_AMQP:
            o.amqp_url = optarg;
            break;
        case O_BROKER:
            o.broker_id = optarg;
            break;
        case O_PID:
            o.server_pid = atoi(optarg);
            break;
        case O_PROCS:
            o.procs = atoi(optarg);
            break;
        case O_LABEL:
            o.label = optarg;
            break;
        case O_SCEN:
            o.scenario = parse_scenario(optarg);
            break;
        case O_SMOKE:
            smoke = optarg;
            break;
        case O_HBB:
            o.hb_burst = 1;
            break;
        case O_RHOST:
            o.recv_host = optarg;
            break;
        case O_RPORT:
            o.recv_port = atoi(optarg);
            break;
        case O_WATCH: {
            char *eq = strchr(optarg, '=');
            if (eq == NULL || eq == optarg || atoi(eq + 1) <= 0 ||
                o.nwatch >= 8) {
                fprintf(stderr, "imgw-bench: --watch-pid NAME=PID (up to 8)\n");
                return 2;
            }
            *eq = 0;
            o.watch_name[o.nwatch] = optarg;
            o.watch_pid[o.nwatch++] = atoi(eq + 1);
            break;
        }
        case 'h':
        case O_HELP:
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc && o.scenario < 0)
        o.scenario = parse_scenario(argv[optind++]);
    if (o.scenario < 0 && smoke == NULL) {
        usage(stderr);
        return 2;
    }
    struct in_addr ia;
    if (inet_pton(AF_INET, o.host, &ia) != 1 ||
        (ntohl(ia.s_addr) >> 24) != 127) {
        fprintf(stderr, "imgw-bench: --host must be an IPv4 address in "
                        "127.0.0.0/8\n");
        return 2;
    }
    if (o.recv_host &&
        (inet_pton(AF_INET, o.recv_host, &ia) != 1 ||
         (ntohl(ia.s_addr) >> 24) != 127)) {
        fprintf(stderr, "imgw-bench: --recv-host must be an IPv4 address in "
                        "127.0.0.0/8\n");
        return 2;
    }
    if (o.recv_port < 0 || o.recv_port > 65535) {
        fprintf(stderr, "imgw-bench: bad --recv-port\n");
        return 2;
    }
    if (o.size < 0 || o.size > 1 << 20 || o.rate <= 0 || o.members < 2 ||
        o.pairs < 0 || o.conns < 0 || o.port <= 0 || o.port > 65535) {
        fprintf(stderr, "imgw-bench: bad option value\n");
        return 2;
    }
    if (o.scenario == SC_DOWNLINK && o.broker_id == NULL) {
        fprintf(stderr, "imgw-bench: downlink needs --broker-id\n");
        return 2;
    }
    snprintf(o.runid, sizeof(o.runid), "%lx",
             ((unsigned long)time(NULL) << 8) ^ (unsigned long)getpid());
    raise_nofile();
    signal(SIGPIPE, SIG_IGN);
    bconn_global_init(&o);
    if (smoke)
        return smoke_main(&o, smoke);
    run_out_t ro;
    if (run_bench(&o, &ro) < 0)
        return 1;
    report(&o, &ro);
    const bresult_t *t = &ro.total;
    return (t->lost || t->dup || ro.workers_failed) ? 1 : 0;
}
