/*
 * file.c: the durable embedded store backend ("file"): the memory backend
 * holds the live state, and every request that changes durable state is
 * also written to an append-only journal in the data directory before its
 * callback reports success. On start the newest snapshot and the journals
 * after it are replayed into an empty memory backend. docs/store.md, "The
 * file backend", has the design and why it was chosen over LMDB.
 *
 * Files in the data directory (<gen> is 16 hex digits):
 *     LOCK            flock()ed while a process uses the directory
 *     snap.<gen>      the live state when journal.<gen> was started
 *     journal.<gen>   requests after that, in the order they were applied
 *     *.tmp           a snapshot being written; removed on start
 * Recovery loads the highest snap.<G> (none: G = 0) and replays every
 * journal.<N> with N >= G in order. Compaction writes snap.<J+1> from the
 * live state, switching new requests to journal.<J+1> at the same instant,
 * renames it into place only once it is on disk, and then deletes the older
 * files; a crash at any step leaves a set of files that recovers the same
 * state.
 *
 * Ordering. Loops are threads and the memory backend lets requests on
 * different shards run in parallel, but replay applies records one by one:
 * the journal must hold the requests in an order that, replayed, gives the
 * same state. The simplest order with that property is the order in which
 * they were applied, so every journaled request applies to the memory
 * backend and writes its record under one mutex (f->mu, the journal lock).
 * Any two requests are then in the same order in memory and on disk: two
 * appends to one timeline get the same seqs on replay, a dedupe key is
 * seen by the same retry, a group_set/group_del pair ends the same way.
 * The price is that writes no longer run in parallel on different shards;
 * reads (sync, max_seq, msg_get, group_get) and routes never take the
 * lock. Per-shard journals with a global sequence number would keep the
 * parallelism but need a merge on replay and an append touches up to 64
 * shards; at the rates one node's loops produce, a write() under a mutex
 * costs less than that machinery (docs/benchmarks.md has the measurement).
 *
 * Time. The memory backend stamps entries, dedupe keys and metadata with
 * its clock (retention, expiry). For replay to rebuild those stamps each
 * record carries the time the request used: this backend installs a clock
 * into its memory backend that returns a thread-local override while a
 * request is applied, and the base clock otherwise.
 *
 * Durability. The record is write()n to the journal (O_APPEND) before the
 * callback runs, so a process crash (kill -9) loses nothing acknowledged:
 * the page cache survives the process. store.fsync = always also
 * fdatasync()s before the callback (power loss too, at a large cost),
 * interval has a background thread fdatasync every fsync_interval_ms
 * (power loss costs at most that much), never leaves it to the kernel.
 * A journal that cannot be written stops all further writes (EBUSY):
 * a state in memory that the disk does not have would be acknowledged
 * and then lost.
 *
 * Threads: open/close on the main thread; requests on any loop; the
 * background thread (fsync and compaction) takes f->mu briefly to swap
 * file descriptors, and for the in-memory dump of a compaction.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "alloc.h"
#include "clock.h"
#include "err.h"
#include "id.h"
#include "log.h"
#include "rec.h"
#include "store_impl.h"

#define FILE_MAGIC_JOURNAL "IMGWJNL1"
#define FILE_MAGIC_SNAP "IMGWSNP1"
#define FILE_MAGIC_LEN 8
#define FILE_HDR_LEN (FILE_MAGIC_LEN + 8) /* magic + u64 generation */
#define FILE_DEFAULT_DIR "data"
#define FILE_DEFAULT_FSYNC_MS 1000
#define FILE_DEFAULT_COMPACT ((int64_t)64 << 20)
#define FILE_MIN_COMPACT ((int64_t)1 << 16)
#define FILE_ID_WAIT_MAX_MS 10000 /* see wait_past_ids */
#define FILE_NAME_MAX 64

/* Journal record types (rec.h; snapshot types are 0x41..). */
enum {
    J_APPEND = 1,
    J_REVOKE = 2,
    J_DELIVERED = 3,
    J_READ = 4,
    J_GROUP_SET = 5,
    J_GROUP_DEL = 6,
    J_CONV_READ = 7, /* imgw_store_conv_read */
    J_CONV_DEL = 8,  /* imgw_store_conv_delete */
};

typedef enum { FSYNC_NEVER, FSYNC_INTERVAL, FSYNC_ALWAYS } fsync_mode_t;

typedef struct imgw__file_s {
    imgw_store_t inner;           /* the memory backend: the live state */
    imgw_store_loop_t *replay_sl; /* inner handle for replay and compaction */
    char *dir;
    int dir_fd, lock_fd;
    fsync_mode_t fsync;
    int fsync_ms;
    int64_t compact_bytes;
    imgw__store_clock_fn clock; /* base clock (tests replace it) */
    void *clock_arg;

    pthread_mutex_t mu; /* the journal lock: see "Ordering" above */
    int fd;             /* current journal, O_APPEND */
    uint64_t gen;       /* its generation */
    int64_t jbytes;     /* its size */
    int64_t snap_bytes; /* size of the newest snapshot */
    int dirty;          /* written since the last fdatasync */
    int broken;         /* a write failed: refuse all further writes */
    int compacting;     /* one compaction at a time */
    int kicked;         /* the thread was woken for a compaction */

    pthread_mutex_t bg_mu; /* the background thread's sleep */
    pthread_cond_t bg_cv;
    pthread_t bg;
    int bg_started, bg_stop;
} imgw__file_t;

typedef struct imgw__file_loop_s {
    imgw_store_loop_t base;   /* first: sl points here */
    imgw_store_loop_t *inner; /* memory backend handle */
    imgw__rec_buf_t buf;      /* encode buffer, reused */
} imgw__file_loop_t;

/* ---- CRC-32 (IEEE, reflected), table built once ------------------------- */

static uint32_t crc_table[256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void
crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
}

uint32_t
imgw__crc32(uint32_t crc, const void *p, size_t n)
{
    pthread_once(&crc_once, crc_init);
    const uint8_t *b = p;
    crc = ~crc;
    for (size_t i = 0; i < n; i++)
        crc = crc_table[(crc ^ b[i]) & 0xff] ^ (crc >> 8);
    return ~crc;
}

/* ---- clock ---------------------------------------------------------------- */

/* Set while a request is applied to the memory backend on this thread. */
static _Thread_local int tl_now_set;
static _Thread_local int64_t tl_now;

static int64_t
file_realtime_ms(void *arg)
{
    (void)arg;
    return imgw_clock_wall_ms();
}

/* The memory backend's clock (installed in open). */
static int64_t
file_clock(void *arg)
{
    imgw__file_t *f = arg;
    return tl_now_set ? tl_now : f->clock(f->clock_arg);
}

static void
now_begin(int64_t now)
{
    tl_now = now;
    tl_now_set = 1;
}

static void
now_end(void)
{
    tl_now_set = 0;
}

/* ---- files ------------------------------------------------------------- */

static void
file_name(char *buf, const char *kind, uint64_t gen, const char *suffix)
{
    snprintf(buf, FILE_NAME_MAX, "%s.%016" PRIx64 "%s", kind, gen, suffix);
}

static int
write_all(int fd, const uint8_t *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static void
put_header(uint8_t *hdr, const char *magic, uint64_t gen)
{
    memcpy(hdr, magic, FILE_MAGIC_LEN);
    for (int i = 0; i < 8; i++)
        hdr[FILE_MAGIC_LEN + i] = (uint8_t)(gen >> (8 * i));
}

/* Creates journal.<gen> with its header; returns the fd or < 0. */
static int
journal_create(imgw__file_t *f, uint64_t gen)
{
    char name[FILE_NAME_MAX];
    uint8_t hdr[FILE_HDR_LEN];
    file_name(name, "journal", gen, "");
    int fd = openat(f->dir_fd, name, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC,
                    0600);
    if (fd < 0)
        return -errno;
    put_header(hdr, FILE_MAGIC_JOURNAL, gen);
    int r = ftruncate(fd, 0) == 0 ? write_all(fd, hdr, sizeof(hdr)) : -errno;
    if (r == 0 && fsync(f->dir_fd) != 0)
        r = -errno;
    if (r != 0) {
        close(fd);
        return r;
    }
    return fd;
}

/*
 * Writes one encoded request (b) under f->mu. On failure the journal is
 * cut back to its last whole record and the backend refuses all later
 * writes: the request is already applied in memory, and letting later
 * requests (a retry that the dedupe key would answer from memory) report
 * success for state that is not on disk would break the contract.
 */
static int
journal_write_locked(imgw__file_t *f, const imgw__rec_buf_t *b)
{
    int r = write_all(f->fd, b->p, b->len);
    if (r == 0 && f->fsync == FSYNC_ALWAYS && fdatasync(f->fd) != 0)
        r = -errno;
    if (r != 0) {
        IMGW_LOG_ERROR("store: cannot write the journal in %s: %s; no more "
                       "writes are accepted until restart",
                       f->dir, strerror(-r));
        if (ftruncate(f->fd, (off_t)f->jbytes) != 0)
            IMGW_LOG_ERROR("store: cannot cut the journal back: %s",
                           strerror(errno));
        f->broken = 1;
        return IMGW_ETIMEDOUT; /* applied in memory, not on disk */
    }
    f->jbytes += (int64_t)b->len;
    f->dirty = f->fsync == FSYNC_INTERVAL;
    if (!f->kicked && f->jbytes >= f->compact_bytes &&
        f->jbytes >= f->snap_bytes) {
        /* Wake the background thread now rather than at its next period.
         * Lock order f->mu -> f->bg_mu: the thread never holds bg_mu while
         * it takes mu. */
        f->kicked = 1;
        pthread_mutex_lock(&f->bg_mu);
        pthread_cond_signal(&f->bg_cv);
        pthread_mutex_unlock(&f->bg_mu);
    }
    return 0;
}

/* ---- record encoding ------------------------------------------------------ */

static imgw__rec_buf_t *
loop_buf(imgw_store_loop_t *sl)
{
    imgw__rec_buf_t *b = &((imgw__file_loop_t *)sl)->buf;
    b->len = 0;
    b->err = 0;
    return b;
}

static imgw_store_loop_t *
inner_of(imgw_store_loop_t *sl)
{
    return ((imgw__file_loop_t *)sl)->inner;
}

/* ---- replay ---------------------------------------------------------------- */

typedef struct {
    int status;
    int64_t seq0;
} capture_t;

static void
cap_append_cb(imgw_store_append_t *req, int status, void *data)
{
    capture_t *c = data;
    c->status = status;
    c->seq0 = status == 0 && !req->duplicate ? req->seqs[0] : 0;
}

static void
cap_done_cb(int status, void *data)
{
    ((capture_t *)data)->status = status;
}

typedef struct replay_s {
    imgw__file_t *f;
    uint64_t max_id;   /* highest message id seen */
    size_t applied;    /* records applied */
    size_t failed;     /* valid records the memory backend refused */
    size_t mismatched; /* appends that got another seq than at first */
} replay_t;

static int
replay_append(replay_t *rp, imgw__rec_rd_t *r, int64_t now)
{
    imgw_store_append_t req;
    memset(&req, 0, sizeof(req));
    req.message_id = imgw__rec_get_u64(r);
    req.server_time_ms = (int64_t)imgw__rec_get_u64(r);
    int64_t seq0 = (int64_t)imgw__rec_get_u64(r);
    req.sender = imgw__rec_get_str(r);
    req.client_msg_id = imgw__rec_get_str(r);
    req.conversation_id = imgw__rec_get_str(r);
    uint16_t n = imgw__rec_get_u16(r);
    if (r->err || n == 0 || n > IMGW_STORE_MAX_GROUP)
        return IMGW_EPROTO;
    const char **users = imgw_try_malloc(n * sizeof(*users));
    int64_t *seqs = imgw_try_malloc(n * sizeof(*seqs));
    int st = IMGW_ENOMEM;
    if (users == NULL || seqs == NULL)
        goto out;
    for (uint16_t i = 0; i < n; i++)
        users[i] = imgw__rec_get_str(r);
    req.entry = imgw__rec_get_bytes(r, &req.entry_len);
    /* The conversation list's type and preview: absent from records
     * written before conversations existed. */
    if (!r->err && r->n - r->off > 0) {
        req.msg_type = (int32_t)imgw__rec_get_u32(r);
        req.preview = imgw__rec_get_str(r);
    }
    st = IMGW_EPROTO;
    if (r->err)
        goto out;
    req.users = users;
    req.n_users = n;
    req.seqs = seqs;
    capture_t c = {0, 0};
    c.status = 1; /* not run yet */
    now_begin(now);
    st = imgw_store_append(rp->f->replay_sl, &req, cap_append_cb, &c);
    (void)imgw_store_loop_run_completions(rp->f->replay_sl);
    now_end();
    if (st == 0)
        st = c.status;
    if (st == 0 && c.seq0 != seq0)
        rp->mismatched++;
    if (req.message_id > rp->max_id)
        rp->max_id = req.message_id;
out:
    imgw_free(users);
    imgw_free(seqs);
    return st;
}

/* Applies one journal record to the memory backend. */
static int
replay_record(replay_t *rp, uint8_t type, const uint8_t *p, size_t n)
{
    imgw__rec_rd_t r = {p, n, 0, 0};
    imgw_store_loop_t *sl = rp->f->replay_sl;
    int64_t now = (int64_t)imgw__rec_get_u64(&r);
    capture_t c = {0, 0};
    int st;
    if (type == J_APPEND)
        return replay_append(rp, &r, now);
    now_begin(now);
    switch (type) {
    case J_REVOKE: {
        uint64_t id = imgw__rec_get_u64(&r);
        st = r.err ? r.err : imgw_store_revoke(sl, id, cap_done_cb, &c);
        break;
    }
    case J_DELIVERED: {
        const char *user = imgw__rec_get_str(&r);
        const char *dev = imgw__rec_get_str(&r);
        int64_t seq = (int64_t)imgw__rec_get_u64(&r);
        st = r.err ? r.err
                   : imgw_store_set_delivered(sl, user, dev, seq, cap_done_cb,
                                              &c);
        break;
    }
    case J_READ: {
        const char *user = imgw__rec_get_str(&r);
        const char *conv = imgw__rec_get_str(&r);
        const char *mid = imgw__rec_get_str(&r);
        st = r.err ? r.err
                   : imgw_store_set_read(sl, user, conv, mid, cap_done_cb, &c);
        break;
    }
    case J_GROUP_SET: {
        const char *gid = imgw__rec_get_str(&r);
        uint16_t k = imgw__rec_get_u16(&r);
        const char **mem = NULL;
        if (!r.err && k > 0 && k <= IMGW_STORE_MAX_GROUP)
            mem = imgw_try_malloc(k * sizeof(*mem));
        for (uint16_t i = 0; mem != NULL && i < k; i++)
            mem[i] = imgw__rec_get_str(&r);
        if (r.err || k > IMGW_STORE_MAX_GROUP)
            st = IMGW_EPROTO;
        else if (k > 0 && mem == NULL)
            st = IMGW_ENOMEM;
        else
            st = imgw_store_group_set(sl, gid, mem, k, cap_done_cb, &c);
        imgw_free(mem);
        break;
    }
    case J_GROUP_DEL: {
        const char *gid = imgw__rec_get_str(&r);
        st = r.err ? r.err : imgw_store_group_del(sl, gid, cap_done_cb, &c);
        break;
    }
    case J_CONV_READ:
    case J_CONV_DEL: {
        const char *user = imgw__rec_get_str(&r);
        int kind = imgw__rec_get_u8(&r);
        const char *peer = imgw__rec_get_str(&r);
        int64_t seq = type == J_CONV_READ ? (int64_t)imgw__rec_get_u64(&r) : 0;
        if (r.err)
            st = r.err;
        else if (type == J_CONV_READ)
            st = imgw_store_conv_read(sl, user, kind, peer, seq, cap_done_cb,
                                      &c);
        else
            st = imgw_store_conv_delete(sl, user, kind, peer, cap_done_cb, &c);
        break;
    }
    default:
        st = IMGW_EPROTO;
    }
    /* The callback runs here, still with the record's time (store.h:
     * never before the request function returned). */
    (void)imgw_store_loop_run_completions(sl);
    now_end();
    return st == 0 ? c.status : st;
}

/*
 * Reads the records of one file. For a journal, a record that is cut off
 * or fails its CRC ends the file: a crash or power loss during a write
 * leaves exactly that, so the rest is cut off (with a warning) and the
 * journal continues from the last whole record. For a snapshot, which is
 * renamed into place only once complete and synced, it is an error.
 * Returns 0 or a negative code with err filled.
 */
static int
read_file(imgw__file_t *f, const char *name, int is_snap, replay_t *rp,
          imgw__store_mem_loader_t *ld, int64_t *size_out, char *err,
          size_t errlen)
{
    int fd = openat(f->dir_fd, name, (is_snap ? O_RDONLY : O_RDWR) | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "store: cannot open %s/%s: %s", f->dir, name,
                 strerror(errno));
        return IMGW_ECONFIG;
    }
    FILE *fp = fdopen(fd, is_snap ? "rb" : "r+b");
    if (fp == NULL) {
        close(fd);
        snprintf(err, errlen, "store: out of memory");
        return IMGW_ENOMEM;
    }
    static const size_t vbuf = 1 << 20;
    setvbuf(fp, NULL, _IOFBF, vbuf);
    uint8_t hdr[FILE_HDR_LEN];
    uint8_t *rec = NULL;
    size_t cap = 0;
    int64_t good = 0;
    const char *why = NULL;
    int r = 0;
    size_t got = fread(hdr, 1, sizeof(hdr), fp);
    if (got != sizeof(hdr) ||
        memcmp(hdr, is_snap ? FILE_MAGIC_SNAP : FILE_MAGIC_JOURNAL,
               FILE_MAGIC_LEN) != 0) {
        why = got == 0 ? "empty" : "bad header";
        goto bad;
    }
    good = FILE_HDR_LEN;
    for (;;) {
        uint8_t h[IMGW__REC_HDR];
        got = fread(h, 1, sizeof(h), fp);
        if (got == 0 && feof(fp))
            break;
        if (got != sizeof(h)) {
            why = "a record cut off";
            goto bad;
        }
        uint32_t len = imgw__rec_le32(h), crc = imgw__rec_le32(h + 4);
        if (len == 0 || len > IMGW__REC_MAX) {
            why = "a bad record length";
            goto bad;
        }
        if (len > cap) {
            uint8_t *q = imgw_try_realloc(rec, len);
            if (q == NULL) {
                snprintf(err, errlen, "store: out of memory reading %s", name);
                r = IMGW_ENOMEM;
                goto out;
            }
            rec = q;
            cap = len;
        }
        if (fread(rec, 1, len, fp) != len) {
            why = "a record cut off";
            goto bad;
        }
        if (imgw__crc32(0, rec, len) != crc) {
            why = "a record with a bad CRC";
            goto bad;
        }
        int st = is_snap ? imgw__store_mem_load(ld, rec[0], rec + 1, len - 1)
                         : replay_record(rp, rec[0], rec + 1, len - 1);
        if (st == IMGW_ENOMEM) {
            snprintf(err, errlen, "store: out of memory loading %s", name);
            r = st;
            goto out;
        }
        if (st != 0 && is_snap) {
            snprintf(err, errlen,
                     "store: %s/%s: record at byte %" PRId64 " is malformed "
                     "(%s)",
                     f->dir, name, good, imgw_strerror(st));
            r = IMGW_ECONFIG;
            goto out;
        }
        if (st != 0)
            rp->failed++;
        else if (rp != NULL)
            rp->applied++;
        good += IMGW__REC_HDR + len;
    }
    goto out;
bad:
    if (is_snap) {
        snprintf(err, errlen,
                 "store: snapshot %s/%s is damaged at byte %" PRId64 " (%s); "
                 "move it away to start from the journals alone",
                 f->dir, name, good, why);
        r = IMGW_ECONFIG;
        goto out;
    }
    {
        struct stat stt;
        int64_t size = fstat(fd, &stt) == 0 ? (int64_t)stt.st_size : -1;
        IMGW_LOG_WARN("store: journal %s/%s ends in %s at byte %" PRId64
                      " of %" PRId64 "; cutting off the rest (a crash during "
                      "a write leaves this)",
                      f->dir, name, why, good, size);
        if (good < FILE_HDR_LEN) {
            /* No valid header: rewrite it, the file holds nothing. */
            uint8_t h2[FILE_HDR_LEN];
            uint64_t gen = 0;
            sscanf(name, "journal.%" SCNx64, &gen);
            put_header(h2, FILE_MAGIC_JOURNAL, gen);
            if (ftruncate(fd, 0) != 0 ||
                pwrite(fd, h2, sizeof(h2), 0) != (ssize_t)sizeof(h2)) {
                snprintf(err, errlen, "store: cannot repair %s/%s: %s", f->dir,
                         name, strerror(errno));
                r = IMGW_ECONFIG;
                goto out;
            }
            good = FILE_HDR_LEN;
        } else if (ftruncate(fd, (off_t)good) != 0) {
            snprintf(err, errlen, "store: cannot cut %s/%s: %s", f->dir, name,
                     strerror(errno));
            r = IMGW_ECONFIG;
            goto out;
        }
    }
out:
    if (size_out != NULL)
        *size_out = good;
    imgw_free(rec);
    fclose(fp);
    return r;
}

/* ---- directory scan and recovery --------------------------------------- */

typedef struct gens_s {
    uint64_t *v;
    size_t n, cap;
} gens_t;

static int
gens_push(gens_t *g, uint64_t x)
{
    if (g->n == g->cap) {
        size_t nc = g->cap ? g->cap * 2 : 8;
        uint64_t *q = imgw_try_realloc(g->v, nc * sizeof(*q));
        if (q == NULL)
            return IMGW_ENOMEM;
        g->v = q;
        g->cap = nc;
    }
    g->v[g->n++] = x;
    return 0;
}

static int
gen_cmp(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Parses "<kind>.<16 hex>" exactly. */
static int
parse_gen(const char *name, const char *kind, uint64_t *gen)
{
    size_t kl = strlen(kind);
    if (strncmp(name, kind, kl) != 0 || name[kl] != '.' ||
        strlen(name + kl + 1) != 16)
        return 0;
    uint64_t v = 0;
    for (const char *p = name + kl + 1; *p; p++) {
        int d = *p >= '0' && *p <= '9'   ? *p - '0'
                : *p >= 'a' && *p <= 'f' ? *p - 'a' + 10
                                         : -1;
        if (d < 0)
            return 0;
        v = v << 4 | (uint64_t)d;
    }
    *gen = v;
    return 1;
}

static int
scan_dir(imgw__file_t *f, gens_t *snaps, gens_t *journals)
{
    int fd = dup(f->dir_fd);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    if (d == NULL) {
        if (fd >= 0)
            close(fd);
        return IMGW_ECONFIG;
    }
    rewinddir(d);
    struct dirent *e;
    int r = 0;
    while (r == 0 && (e = readdir(d)) != NULL) {
        uint64_t g;
        size_t l = strlen(e->d_name);
        if (l > 4 && strcmp(e->d_name + l - 4, ".tmp") == 0)
            (void)unlinkat(f->dir_fd, e->d_name, 0); /* an unfinished one */
        else if (parse_gen(e->d_name, "snap", &g))
            r = gens_push(snaps, g);
        else if (parse_gen(e->d_name, "journal", &g))
            r = gens_push(journals, g);
    }
    closedir(d);
    if (snaps->n > 1)
        qsort(snaps->v, snaps->n, sizeof(uint64_t), gen_cmp);
    if (journals->n > 1)
        qsort(journals->v, journals->n, sizeof(uint64_t), gen_cmp);
    return r;
}

/* Deletes snapshots and journals older than gen (they are covered). */
static void
remove_older(imgw__file_t *f, uint64_t gen)
{
    gens_t s = {0}, j = {0};
    if (scan_dir(f, &s, &j) == 0) {
        char name[FILE_NAME_MAX];
        for (size_t i = 0; i < s.n && s.v[i] < gen; i++) {
            file_name(name, "snap", s.v[i], "");
            (void)unlinkat(f->dir_fd, name, 0);
        }
        for (size_t i = 0; i < j.n && j.v[i] < gen; i++) {
            file_name(name, "journal", j.v[i], "");
            (void)unlinkat(f->dir_fd, name, 0);
        }
    }
    imgw_free(s.v);
    imgw_free(j.v);
}

/*
 * Message ids are node id + millisecond + a sequence (id.c) and the
 * generator starts from the clock, so a node restarted within the
 * millisecond of its last journaled id (or with ids borrowed ahead of the
 * clock under load) could hand out an id the store still holds, which
 * append refuses with EEXIST. Waiting until the clock has passed the last
 * id's millisecond rules that out. A clock far behind (stepped back) is
 * not waited for: that is logged, as ids may then go backwards.
 */
static void
wait_past_ids(uint64_t max_id)
{
    if (max_id == 0)
        return;
    int64_t last_ms = imgw_id_time_ms(max_id);
    int64_t now = file_realtime_ms(NULL);
    if (now > last_ms)
        return;
    if (last_ms - now > FILE_ID_WAIT_MAX_MS) {
        IMGW_LOG_WARN("store: the clock is %" PRId64 " ms behind the last "
                      "stored message id; new ids may sort before old ones",
                      last_ms - now);
        return;
    }
    while ((now = file_realtime_ms(NULL)) <= last_ms) {
        struct timespec ts = {0, (long)(last_ms - now + 1) * 1000000L};
        nanosleep(&ts, NULL);
    }
}

static int
recover(imgw__file_t *f, char *err, size_t errlen)
{
    gens_t snaps = {0}, journals = {0};
    replay_t rp = {.f = f};
    char name[FILE_NAME_MAX];
    uint64_t max_id = 0;
    int r = scan_dir(f, &snaps, &journals);
    if (r != 0) {
        snprintf(err, errlen, "store: cannot list %s", f->dir);
        goto out;
    }
    uint64_t g = snaps.n ? snaps.v[snaps.n - 1] : 0;
    if (snaps.n) {
        imgw__store_mem_loader_t *ld = imgw__store_mem_load_begin(&f->inner);
        if (ld == NULL) {
            r = IMGW_ENOMEM;
            goto out;
        }
        file_name(name, "snap", g, "");
        r = read_file(f, name, 1, NULL, ld, &f->snap_bytes, err, errlen);
        imgw__store_mem_load_end(ld, &max_id);
        if (r != 0)
            goto out;
    }
    uint64_t last = 0;
    int have = 0;
    for (size_t i = 0; i < journals.n; i++) {
        if (journals.v[i] < g) {
            file_name(name, "journal", journals.v[i], "");
            (void)unlinkat(f->dir_fd, name, 0); /* covered by the snapshot */
            continue;
        }
        file_name(name, "journal", journals.v[i], "");
        r = read_file(f, name, 0, &rp, NULL, &f->jbytes, err, errlen);
        if (r != 0)
            goto out;
        last = journals.v[i];
        have = 1;
    }
    if (rp.max_id > max_id)
        max_id = rp.max_id;
    if (have) {
        file_name(name, "journal", last, "");
        f->fd = openat(f->dir_fd, name, O_WRONLY | O_APPEND | O_CLOEXEC);
        f->gen = last;
    } else {
        f->gen = g > 0 ? g : 1;
        f->jbytes = FILE_HDR_LEN;
        f->fd = journal_create(f, f->gen);
    }
    if (f->fd < 0) {
        int e = f->fd == -1 ? errno : -f->fd;
        snprintf(err, errlen, "store: cannot open the journal in %s: %s",
                 f->dir, strerror(e));
        r = IMGW_ECONFIG;
        goto out;
    }
    if (rp.failed || rp.mismatched)
        IMGW_LOG_WARN("store: replay: %zu records refused, %zu appends got "
                      "other seqs than when written",
                      rp.failed, rp.mismatched);
    IMGW_LOG_INFO("store: file backend in %s: snapshot %s (%" PRId64
                  " bytes), %zu journal records replayed, fsync %s",
                  f->dir, snaps.n ? "loaded" : "none", f->snap_bytes,
                  rp.applied,
                  f->fsync == FSYNC_ALWAYS     ? "always"
                  : f->fsync == FSYNC_INTERVAL ? "interval"
                                               : "never");
    wait_past_ids(max_id);
out:
    imgw_free(snaps.v);
    imgw_free(journals.v);
    return r;
}

/* ---- compaction ---------------------------------------------------------- */

/*
 * Under f->mu: dumps the live state into memory and switches new requests
 * to journal.<gen+1>, so the snapshot is exactly the state before the new
 * journal's first record. Then, without the lock: syncs the old journal,
 * writes snap.<gen+1>.tmp, syncs it, renames it into place, syncs the
 * directory and deletes the files it covers. Loops wait for the lock only
 * during the dump (memory copying, no I/O besides creating a file).
 */
static int
compact(imgw__file_t *f)
{
    imgw__rec_buf_t b = {0};
    uint8_t hdr[FILE_HDR_LEN];
    char name[FILE_NAME_MAX], tmp[FILE_NAME_MAX];

    pthread_mutex_lock(&f->mu);
    if (f->broken || f->compacting) {
        pthread_mutex_unlock(&f->mu);
        return IMGW_EBUSY;
    }
    uint64_t gen = f->gen + 1;
    put_header(hdr, FILE_MAGIC_SNAP, gen);
    imgw__rec_put(&b, hdr, sizeof(hdr));
    int r = imgw__store_mem_dump(&f->inner, &b);
    int nfd = r == 0 ? journal_create(f, gen) : r;
    if (nfd < 0) {
        pthread_mutex_unlock(&f->mu);
        IMGW_LOG_WARN("store: compaction: %s",
                      r ? imgw_strerror(r) : strerror(-nfd));
        imgw_free(b.p);
        return nfd;
    }
    int ofd = f->fd;
    f->fd = nfd;
    f->gen = gen;
    f->jbytes = FILE_HDR_LEN;
    f->dirty = 0;
    f->compacting = 1;
    f->kicked = 0;
    pthread_mutex_unlock(&f->mu);

    if (f->fsync != FSYNC_NEVER)
        (void)fdatasync(ofd);
    close(ofd);
    file_name(name, "snap", gen, "");
    file_name(tmp, "snap", gen, ".tmp");
    int sfd = openat(f->dir_fd, tmp,
                     O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    r = sfd < 0 ? -errno : write_all(sfd, b.p, b.len);
    if (r == 0 && f->fsync != FSYNC_NEVER && fdatasync(sfd) != 0)
        r = -errno;
    if (sfd >= 0)
        close(sfd);
    if (r == 0 && renameat(f->dir_fd, tmp, f->dir_fd, name) != 0)
        r = -errno;
    if (r == 0) {
        if (f->fsync != FSYNC_NEVER)
            (void)fsync(f->dir_fd);
        remove_older(f, gen);
        IMGW_LOG_INFO("store: snapshot %s: %zu bytes", name, b.len);
    } else {
        /* The journals still hold everything; the next try covers it. */
        (void)unlinkat(f->dir_fd, tmp, 0);
        IMGW_LOG_WARN("store: cannot write snapshot %s/%s: %s", f->dir, tmp,
                      strerror(-r));
    }
    pthread_mutex_lock(&f->mu);
    if (r == 0)
        f->snap_bytes = (int64_t)b.len;
    f->compacting = 0;
    pthread_mutex_unlock(&f->mu);
    imgw_free(b.p);
    return r == 0 ? 0 : IMGW_EBUSY;
}

/* The journal is due for a snapshot when it passed compact_bytes and the
 * size of the last snapshot (so a large live state is not rewritten for
 * every few records). */
static int
compact_due(imgw__file_t *f)
{
    pthread_mutex_lock(&f->mu);
    int due = !f->broken && !f->compacting && f->jbytes >= f->compact_bytes &&
              f->jbytes >= f->snap_bytes;
    pthread_mutex_unlock(&f->mu);
    return due;
}

/* Background thread: fdatasync (interval) and compaction. It syncs a dup
 * of the journal fd so a compaction may switch files meanwhile, and so
 * that no loop waits for the disk. */
static void *
bg_main(void *arg)
{
    imgw__file_t *f = arg;
    int period = f->fsync == FSYNC_INTERVAL ? f->fsync_ms : 1000;
    pthread_mutex_lock(&f->bg_mu);
    while (!f->bg_stop) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += period / 1000;
        ts.tv_nsec += (long)(period % 1000) * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&f->bg_cv, &f->bg_mu, &ts);
        /* A kick may also arrive while the thread works (no wait): it is
         * seen at the next period at the latest. */
        if (f->bg_stop)
            break;
        pthread_mutex_unlock(&f->bg_mu);
        int fd = -1;
        pthread_mutex_lock(&f->mu);
        if (f->dirty) {
            fd = dup(f->fd);
            f->dirty = fd < 0;
        }
        pthread_mutex_unlock(&f->mu);
        if (fd >= 0) {
            if (fdatasync(fd) != 0)
                IMGW_LOG_WARN("store: fdatasync of the journal: %s",
                              strerror(errno));
            close(fd);
        }
        if (compact_due(f))
            (void)compact(f);
        pthread_mutex_lock(&f->bg_mu);
    }
    pthread_mutex_unlock(&f->bg_mu);
    return NULL;
}

/* ---- open, close, loops ------------------------------------------------- */

static void file_close(imgw_store_t *s);

static int
file_open(imgw_store_t *s, const imgw_store_cfg_t *cfg, char *err,
          size_t errlen)
{
    imgw__file_t *f = imgw_try_calloc(1, sizeof(*f));
    if (f == NULL)
        return IMGW_ENOMEM;
    f->fd = f->dir_fd = f->lock_fd = -1;
    f->clock = file_realtime_ms;
    pthread_mutex_init(&f->mu, NULL);
    pthread_mutex_init(&f->bg_mu, NULL);
    pthread_cond_init(&f->bg_cv, NULL);
    s->impl = f;
    int r = IMGW_ECONFIG;

    const char *fs = cfg->fsync && cfg->fsync[0] ? cfg->fsync : "interval";
    if (strcmp(fs, "always") == 0)
        f->fsync = FSYNC_ALWAYS;
    else if (strcmp(fs, "interval") == 0)
        f->fsync = FSYNC_INTERVAL;
    else if (strcmp(fs, "never") == 0)
        f->fsync = FSYNC_NEVER;
    else {
        snprintf(err, errlen, "store: fsync must be always, interval or never");
        goto fail;
    }
    f->fsync_ms = cfg->fsync_interval_ms > 0 ? cfg->fsync_interval_ms
                                             : FILE_DEFAULT_FSYNC_MS;
    f->compact_bytes =
        cfg->compact_bytes > 0 ? cfg->compact_bytes : FILE_DEFAULT_COMPACT;
    if (f->compact_bytes < FILE_MIN_COMPACT)
        f->compact_bytes = FILE_MIN_COMPACT;
    f->dir = imgw_try_strdup(cfg->path && cfg->path[0] ? cfg->path : FILE_DEFAULT_DIR);
    if (f->dir == NULL) {
        r = IMGW_ENOMEM;
        goto fail;
    }
    if (mkdir(f->dir, 0700) != 0 && errno != EEXIST) {
        snprintf(err, errlen, "store: cannot create %s: %s", f->dir,
                 strerror(errno));
        goto fail;
    }
    f->dir_fd = open(f->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (f->dir_fd < 0) {
        snprintf(err, errlen, "store: cannot open %s: %s", f->dir,
                 strerror(errno));
        goto fail;
    }
    /* Two processes appending to one journal would interleave records. */
    f->lock_fd = openat(f->dir_fd, "LOCK", O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (f->lock_fd < 0 || flock(f->lock_fd, LOCK_EX | LOCK_NB) != 0) {
        snprintf(err, errlen, "store: %s is in use by another process (%s)",
                 f->dir, strerror(errno));
        goto fail;
    }
    f->inner.be = &imgw__store_memory;
    r = imgw__store_memory.open(&f->inner, cfg, err, errlen);
    if (r != 0) {
        f->inner.be = NULL;
        goto fail;
    }
    imgw__store_mem_set_clock(&f->inner, file_clock, f);
    /* Through store.c, like any handle: replay validates every record's
     * arguments the way requests are validated, and runs the callbacks
     * with imgw_store_loop_run_completions(). */
    r = imgw_store_loop_open(&f->inner, 0, NULL, &f->replay_sl);
    if (r != 0)
        goto fail;
    r = recover(f, err, errlen);
    if (r != 0)
        goto fail;
    if (pthread_create(&f->bg, NULL, bg_main, f) != 0) {
        snprintf(err, errlen, "store: cannot start the journal thread");
        r = IMGW_ENOMEM;
        goto fail;
    }
    f->bg_started = 1;
    return 0;
fail:
    file_close(s);
    return r;
}

static void
file_close(imgw_store_t *s)
{
    imgw__file_t *f = s->impl;
    if (f == NULL)
        return;
    if (f->bg_started) {
        pthread_mutex_lock(&f->bg_mu);
        f->bg_stop = 1;
        pthread_cond_signal(&f->bg_cv);
        pthread_mutex_unlock(&f->bg_mu);
        pthread_join(f->bg, NULL);
    }
    if (f->fd >= 0) {
        if (f->fsync != FSYNC_NEVER)
            (void)fdatasync(f->fd);
        close(f->fd);
    }
    if (f->replay_sl != NULL)
        imgw_store_loop_close(f->replay_sl);
    if (f->inner.be != NULL)
        imgw__store_memory.close(&f->inner);
    if (f->lock_fd >= 0)
        close(f->lock_fd); /* drops the flock */
    if (f->dir_fd >= 0)
        close(f->dir_fd);
    pthread_cond_destroy(&f->bg_cv);
    pthread_mutex_destroy(&f->bg_mu);
    pthread_mutex_destroy(&f->mu);
    imgw_free(f->dir);
    imgw_free(f);
    s->impl = NULL;
}

static int
file_loop_open(imgw_store_t *s, int loop_index, uv_loop_t *loop,
               imgw_store_loop_t **out)
{
    imgw__file_t *f = s->impl;
    imgw__file_loop_t *fl = imgw_try_calloc(1, sizeof(*fl));
    if (fl == NULL)
        return IMGW_ENOMEM;
    int r = imgw__store_memory.loop_open(&f->inner, loop_index, loop,
                                         &fl->inner);
    if (r != 0) {
        imgw_free(fl);
        return r;
    }
    fl->base.store = s;
    fl->base.be = s->be;
    fl->base.loop_index = loop_index;
    fl->base.loop = loop;
    *out = &fl->base;
    return 0;
}

static void
file_loop_close(imgw_store_loop_t *sl)
{
    imgw__file_loop_t *fl = (imgw__file_loop_t *)sl;
    imgw__store_memory.loop_close(fl->inner);
    imgw_free(fl->buf.p);
    imgw_free(fl);
}

/* 0 once the journal cannot be written: this node takes no writes. */
static int
file_loop_ready(imgw_store_loop_t *sl)
{
    imgw__file_t *f = sl->store->impl;
    pthread_mutex_lock(&f->mu);
    int ok = !f->broken;
    pthread_mutex_unlock(&f->mu);
    return ok;
}

static void
file_tick(imgw_store_t *s, int64_t now_ms)
{
    imgw__file_t *f = s->impl;
    imgw__store_memory.tick(&f->inner, now_ms);
}

/* ---- journaled requests ---------------------------------------------------- */

/*
 * Each one encodes its record first (no lock), then under f->mu applies
 * the request to the memory backend with the record's time and, if it
 * changed state, writes the record; the caller's callback runs after the
 * unlock (it may call back into the store). Requests that fail or change
 * nothing (a duplicate append, revoking an unknown id) write nothing.
 */

static int
file_append(imgw_store_loop_t *sl, imgw_store_append_t *req,
            imgw_store_append_cb cb, void *data)
{
    imgw__file_t *f = sl->store->impl;
    imgw__rec_buf_t *b = loop_buf(sl);
    int64_t now = f->clock(f->clock_arg);
    size_t at = imgw__rec_begin(b, J_APPEND);
    imgw__rec_put_u64(b, (uint64_t)now);
    imgw__rec_put_u64(b, req->message_id);
    imgw__rec_put_u64(b, (uint64_t)req->server_time_ms);
    size_t seq_at = b->len; /* the sender's seq, known only after applying */
    imgw__rec_put_u64(b, 0);
    imgw__rec_put_str(b, req->sender);
    imgw__rec_put_str(b, req->client_msg_id);
    imgw__rec_put_str(b, req->conversation_id);
    imgw__rec_put_u16(b, (uint16_t)req->n_users);
    for (size_t i = 0; i < req->n_users; i++)
        imgw__rec_put_str(b, req->users[i]);
    imgw__rec_put_bytes(b, req->entry, req->entry_len);
    imgw__rec_put_u32(b, (uint32_t)req->msg_type);
    char preview[IMGW_STORE_PREVIEW_MAX + 1];
    size_t pl = req->preview
                    ? imgw__store_cut_utf8(req->preview, IMGW_STORE_PREVIEW_MAX)
                    : 0;
    if (pl > 0)
        memcpy(preview, req->preview, pl);
    preview[pl] = '\0';
    imgw__rec_put_str(b, preview);
    if (b->err)
        return b->err;

    capture_t c = {0, 0};
    pthread_mutex_lock(&f->mu);
    if (f->broken) {
        pthread_mutex_unlock(&f->mu);
        cb(req, IMGW_EBUSY, data);
        return 0;
    }
    now_begin(now);
    int r = imgw__store_memory.append(inner_of(sl), req, cap_append_cb, &c);
    now_end();
    if (r == 0 && c.status == 0 && !req->duplicate) {
        for (int i = 0; i < 8; i++)
            b->p[seq_at + i] = (uint8_t)((uint64_t)c.seq0 >> (8 * i));
        imgw__rec_end(b, at);
        c.status = journal_write_locked(f, b);
    }
    pthread_mutex_unlock(&f->mu);
    if (r != 0)
        return r;
    cb(req, c.status, data);
    return 0;
}

/* The common tail of the small requests: b holds the whole record. */
typedef int (*apply_fn)(imgw_store_loop_t *inner, const void *args,
                        capture_t *c);

static int
journaled(imgw_store_loop_t *sl, imgw__rec_buf_t *b, size_t at, int64_t now,
          apply_fn apply, const void *args, imgw_store_done_cb cb, void *data)
{
    imgw__file_t *f = sl->store->impl;
    imgw__rec_end(b, at);
    if (b->err)
        return b->err;
    capture_t c = {0, 0};
    pthread_mutex_lock(&f->mu);
    if (f->broken) {
        pthread_mutex_unlock(&f->mu);
        if (cb)
            cb(IMGW_EBUSY, data);
        return 0;
    }
    now_begin(now);
    int r = apply(inner_of(sl), args, &c);
    now_end();
    if (r == 0 && c.status == 0)
        c.status = journal_write_locked(f, b);
    pthread_mutex_unlock(&f->mu);
    if (r != 0)
        return r;
    if (cb)
        cb(c.status, data);
    return 0;
}

typedef struct {
    const char *a, *b, *c;
    int64_t seq;
    uint64_t id;
    const char *const *members;
    size_t n;
} args_t;

static int
apply_revoke(imgw_store_loop_t *in, const void *v, capture_t *c)
{
    const args_t *a = v;
    return imgw__store_memory.revoke(in, a->id, cap_done_cb, c);
}

static int
file_revoke(imgw_store_loop_t *sl, uint64_t message_id, imgw_store_done_cb cb,
            void *data)
{
    imgw__file_t *f = sl->store->impl;
    imgw__rec_buf_t *b = loop_buf(sl);
    int64_t now = f->clock(f->clock_arg);
    size_t at = imgw__rec_begin(b, J_REVOKE);
    imgw__rec_put_u64(b, (uint64_t)now);
    imgw__rec_put_u64(b, message_id);
    args_t a = {.id = message_id};
    return journaled(sl, b, at, now, apply_revoke, &a, cb, data);
}

static int
apply_delivered(imgw_store_loop_t *in, const void *v, capture_t *c)
{
    const args_t *a = v;
    return imgw__store_memory.set_delivered(in, a->a, a->b, a->seq,
                                            cap_done_cb, c);
}

static int
file_set_delivered(imgw_store_loop_t *sl, const char *user, const char *device,
                   int64_t seq, imgw_store_done_cb cb, void *data)
{
    imgw__file_t *f = sl->store->impl;
    imgw__rec_buf_t *b = loop_buf(sl);
    int64_t now = f->clock(f->clock_arg);
    size_t at = imgw__rec_begin(b, J_DELIVERED);
    imgw__rec_put_u64(b, (uint64_t)now);
    imgw__rec_put_str(b, user);
    imgw__rec_put_str(b, device);
    imgw__rec_put_u64(b, (uint64_t)seq);
    args_t a = {.a = user, .b = device, .seq = seq};
    return journaled(sl, b, at, now, apply_delivered, &a, cb, data);
}

static int
apply_read(imgw_store_loop_t *in, const void *v, capture_t *c)
{
    const args_t *a = v;
    return imgw__store_memory.set_read(in, a->a, a->b, a->c, cap_done_cb, c);
}

static int
file_set_read(imgw_store_loop_t *sl, const char *user,
              const char *conversation_id, const char *message_id,
              imgw_store_done_cb cb, void *data)
{
    imgw__file_t *f = sl->store->impl;
    imgw__rec_buf_t *b = loop_buf(sl);
    int64_t now = f->clock(f->clock_arg);
    size_t at = imgw__rec_begin(b, J_READ);
    imgw__rec_put_u64(b, (uint64_t)now);
    imgw__rec_put_str(b, user);
    imgw__rec_put_str(b, conversation_id);
    imgw__rec_put_str(b, message_id);
    args_t a = {.a = user, .b = conversation_id, .c = message_id};
    return journaled(sl, b, at, now, apply_read, &a, cb, data);
}

static int
apply_group_set(imgw_store_loop_t *in, const void *v, capture_t *c)
{
    const args_t *a = v;
    return imgw__store_memory.group_set(in, a->a, a->members, a->n,
                                        cap_done_cb, c);
}

static int
file_group_set(imgw_store_loop_t *sl, const char *gid,
               const char *const *members, size_t n, imgw_store_done_cb cb,
               void *data)
{
    imgw__file_t *f = sl->store->impl;
    imgw__rec_buf_t *b = loop_buf(sl);
    int64_t now = f->clock(f->clock_arg);
    size_t at = imgw__rec_begin(b, J_GROUP_SET);
    imgw__rec_put_u64(b, (uint64_t)now);
    imgw__rec_put_str(b, gid);
    imgw__rec_put_u16(b, (uint16_t)n);
    for (size_t i = 0; i < n; i++)
        imgw__rec_put_str(b, members[i]);
    args_t a = {.a = gid, .members = members, .n = n};
    return journaled(sl, b, at, now, apply_group_set, &a, cb, data);
}

static int
apply_group_del(imgw_store_loop_t *in, const void *v, capture_t *c)
{
    const args_t *a = v;
    return imgw__store_memory.group_del(in, a->a, cap_done_cb, c);
}

static int
file_group_del(imgw_store_loop_t *sl, const char *gid, imgw_store_done_cb cb,
               void *data)
{
    imgw__file_t *f = sl->store->impl;
    imgw__rec_buf_t *b = loop_buf(sl);
    int64_t now = f->clock(f->clock_arg);
    size_t at = imgw__rec_begin(b, J_GROUP_DEL);
    imgw__rec_put_u64(b, (uint64_t)now);
    imgw__rec_put_str(b, gid);
    args_t a = {.a = gid};
    return journaled(sl, b, at, now, apply_group_del, &a, cb, data);
}

static int
apply_conv_read(imgw_store_loop_t *in, const void *v, capture_t *c)
{
    const args_t *a = v;
    return imgw__store_memory.conv_read(in, a->a, (int)a->n, a->b, a->seq,
                                        cap_done_cb, c);
}

static int
file_conv_read(imgw_store_loop_t *sl, const char *user, int kind,
               const char *peer, int64_t read_seq, imgw_store_done_cb cb,
               void *data)
{
    imgw__file_t *f = sl->store->impl;
    imgw__rec_buf_t *b = loop_buf(sl);
    int64_t now = f->clock(f->clock_arg);
    size_t at = imgw__rec_begin(b, J_CONV_READ);
    imgw__rec_put_u64(b, (uint64_t)now);
    imgw__rec_put_str(b, user);
    imgw__rec_put_u8(b, (uint8_t)kind);
    imgw__rec_put_str(b, peer);
    imgw__rec_put_u64(b, (uint64_t)read_seq);
    args_t a = {.a = user, .b = peer, .seq = read_seq, .n = (size_t)kind};
    return journaled(sl, b, at, now, apply_conv_read, &a, cb, data);
}

static int
apply_conv_del(imgw_store_loop_t *in, const void *v, capture_t *c)
{
    const args_t *a = v;
    return imgw__store_memory.conv_delete(in, a->a, (int)a->n, a->b,
                                          cap_done_cb, c);
}

static int
file_conv_delete(imgw_store_loop_t *sl, const char *user, int kind,
                 const char *peer, imgw_store_done_cb cb, void *data)
{
    imgw__file_t *f = sl->store->impl;
    imgw__rec_buf_t *b = loop_buf(sl);
    int64_t now = f->clock(f->clock_arg);
    size_t at = imgw__rec_begin(b, J_CONV_DEL);
    imgw__rec_put_u64(b, (uint64_t)now);
    imgw__rec_put_str(b, user);
    imgw__rec_put_u8(b, (uint8_t)kind);
    imgw__rec_put_str(b, peer);
    args_t a = {.a = user, .b = peer, .n = (size_t)kind};
    return journaled(sl, b, at, now, apply_conv_del, &a, cb, data);
}

/* ---- reads and routes: the memory backend alone ------------------------ */

static int
file_conv_list(imgw_store_loop_t *sl, const char *user, int64_t before_seq,
               int limit, imgw_store_conv_list_cb cb, void *data)
{
    return imgw__store_memory.conv_list(inner_of(sl), user, before_seq, limit,
                                        cb, data);
}

static int
file_sync(imgw_store_loop_t *sl, const char *user, int64_t min_seq,
          int64_t max_seq, int limit, imgw_store_sync_cb cb, void *data)
{
    return imgw__store_memory.sync(inner_of(sl), user, min_seq, max_seq, limit,
                                   cb, data);
}

static int
file_dedupe_get(imgw_store_loop_t *sl, const char *sender, const char *cmid,
                imgw_store_dedupe_cb cb, void *data)
{
    return imgw__store_memory.dedupe_get(inner_of(sl), sender, cmid, cb, data);
}

static int
file_max_seq(imgw_store_loop_t *sl, const char *user, imgw_store_seq_cb cb,
             void *data)
{
    return imgw__store_memory.max_seq(inner_of(sl), user, cb, data);
}

static int
file_msg_get(imgw_store_loop_t *sl, uint64_t message_id, imgw_store_msg_cb cb,
             void *data)
{
    return imgw__store_memory.msg_get(inner_of(sl), message_id, cb, data);
}

static int
file_group_get(imgw_store_loop_t *sl, const char *gid,
               imgw_store_members_cb cb, void *data)
{
    return imgw__store_memory.group_get(inner_of(sl), gid, cb, data);
}

/* Routes say which node a user is connected to now: after a restart no
 * connection survives, so they are not journaled. */
static int
file_route_set(imgw_store_loop_t *sl, const char *user, const char *platform,
               const char *broker_id, int ttl, imgw_store_done_cb cb,
               void *data)
{
    return imgw__store_memory.route_set(inner_of(sl), user, platform,
                                        broker_id, ttl, cb, data);
}

static int
file_route_del(imgw_store_loop_t *sl, const char *user, const char *platform,
               const char *broker_id, imgw_store_done_cb cb, void *data)
{
    return imgw__store_memory.route_del(inner_of(sl), user, platform,
                                        broker_id, cb, data);
}

static int
file_route_refresh(imgw_store_loop_t *sl, const char *user, int ttl,
                   imgw_store_done_cb cb, void *data)
{
    return imgw__store_memory.route_refresh(inner_of(sl), user, ttl, cb, data);
}

static int
file_route_get(imgw_store_loop_t *sl, const char *user,
               imgw_store_routes_cb cb, void *data)
{
    return imgw__store_memory.route_get(inner_of(sl), user, cb, data);
}

const imgw_store_backend_t imgw__store_file = {
    .name = "file",
    .open = file_open,
    .close = file_close,
    .loop_open = file_loop_open,
    .loop_close = file_loop_close,
    .loop_ready = file_loop_ready,
    .tick = file_tick,
    .append = file_append,
    .sync = file_sync,
    .max_seq = file_max_seq,
    .dedupe_get = file_dedupe_get,
    .set_delivered = file_set_delivered,
    .set_read = file_set_read,
    .msg_get = file_msg_get,
    .revoke = file_revoke,
    .group_set = file_group_set,
    .group_get = file_group_get,
    .group_del = file_group_del,
    .route_set = file_route_set,
    .route_del = file_route_del,
    .route_refresh = file_route_refresh,
    .route_get = file_route_get,
    .conv_list = file_conv_list,
    .conv_read = file_conv_read,
    .conv_delete = file_conv_delete,
};

/* ---- test hooks (store_impl.h) -------------------------------------------- */

imgw_store_t *
imgw__store_file_inner(imgw_store_t *s)
{
    if (s != NULL && s->be == &imgw__store_file && s->impl != NULL)
        return &((imgw__file_t *)s->impl)->inner;
    return s;
}

void
imgw__store_file_set_clock(imgw_store_t *s, imgw__store_clock_fn fn, void *arg)
{
    if (s == NULL || s->be != &imgw__store_file)
        return;
    imgw__file_t *f = s->impl;
    f->clock = fn ? fn : file_realtime_ms;
    f->clock_arg = fn ? arg : NULL;
}

int
imgw__store_file_compact(imgw_store_t *s)
{
    if (s == NULL || s->be != &imgw__store_file)
        return IMGW_EINVAL;
    return compact(s->impl);
}
