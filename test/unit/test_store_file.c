/*
 * test_store_file.c: the "file" backend. First the store contract suite
 * (store_contract.c) and the memory engine's cases of test_store_memory.c
 * against it (the file backend is the memory backend plus a journal, so
 * the engine's clock and counters are its too), then what only it does: state
 * that survives a close and reopen (timelines, seqs, revokes, dedupe keys,
 * groups, positions, the time each entry was stored), a torn or corrupted
 * journal tail, snapshots (compaction) and a crash in the middle of one, a
 * damaged snapshot, the data directory lock, and a journal that cannot be
 * written.
 *
 * Each store gets a fresh directory under $TMPDIR (or /tmp), removed at
 * the end.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "store.h"

/*
 * ThreadSanitizer's deadlock detector tracks at most 64 mutexes held by one
 * thread and fails a CHECK (then hangs printing it) at the 65th. A
 * file-backend append to a 1000-member group holds the journal lock plus
 * all 64 shard locks (store_contract.c's append_refused does one), so
 * this binary runs without that detector; data races are still checked,
 * and test_store_memory keeps the detector for the shard lock order
 * (at most 64 there). test/run.py sets the same for its TSan units; this
 * makes the binary run alone too.
 */
#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define TEST_STORE_FILE_TSAN 1
#endif
#endif
#if defined(__SANITIZE_THREAD__) || defined(TEST_STORE_FILE_TSAN)
const char *__tsan_default_options(void);
const char *
__tsan_default_options(void)
{
    return "detect_deadlocks=0";
}
#endif

#define TEST_STORE_BACKEND "file"
#define TEST_STORE_NO_MAIN 1
#define TEST_STORE_MEM_OF(s) imgw__store_file_inner(s)
#define TEST_STORE_SET_CLOCK(s, fn, arg) imgw__store_file_set_clock(s, fn, arg)

static char tdir[256];
static int tdir_n;
static int keep_dir; /* 1: the next open reuses tdir (a restart) */
static const char *tfsync = "never";

static void
rm_rf(const char *path)
{
    char cmd[sizeof(tdir) + 16];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", path);
    if (system(cmd) != 0)
        printf("  (could not remove %s)\n", path);
}

static void
test_store_prep(imgw_store_cfg_t *cfg)
{
    if (!keep_dir) {
        if (tdir[0])
            rm_rf(tdir); /* the previous case's */
        const char *base = getenv("TMPDIR");
        snprintf(tdir, sizeof(tdir), "%s/imgw-test-store-file-%d-%d",
                 base && base[0] ? base : "/tmp", (int)getpid(), ++tdir_n);
        rm_rf(tdir);
    }
    cfg->path = tdir;
    cfg->fsync = tfsync;
}

#include "test_store_memory.c"

/* ---- helpers ---------------------------------------------------------- */

/* Close and open again on the same directory, keeping the fake clock. */
static void
fx_restart(fx_t *f, int rc, int rd, int dt)
{
    int64_t now = fake_now;
    fx_close(f);
    keep_dir = 1;
    fx_open(f, rc, rd, dt);
    keep_dir = 0;
    fake_now = now;
}

static int
path_of(char *buf, size_t len, const char *prefix)
{
    DIR *d = opendir(tdir);
    struct dirent *e;
    int found = 0;
    while (d && (e = readdir(d)) != NULL)
        if (strncmp(e->d_name, prefix, strlen(prefix)) == 0 &&
            strstr(e->d_name, ".tmp") == NULL) {
            snprintf(buf, len, "%s/%s", tdir, e->d_name);
            found++;
        }
    if (d)
        closedir(d);
    return found;
}

static long
file_size(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 ? (long)st.st_size : -1;
}

static void
append_bytes(const char *p, const void *b, size_t n)
{
    FILE *fp = fopen(p, "ab");
    if (fp) {
        fwrite(b, 1, n, fp);
        fclose(fp);
    }
}

/* A timeline as "seq:mid:revoked," text, for before/after comparisons. */
static void
timeline_text(fx_t *f, const char *user, char *out, size_t len)
{
    sync_res_t *r = do_sync(f, user, 0, 0, 500);
    size_t o = 0;
    out[0] = '\0';
    for (size_t i = 0; i < r->n && o < len; i++)
        o += (size_t)snprintf(out + o, len - o, "%lld:%llu:%d,",
                              (long long)r->seq[i],
                              (unsigned long long)r->mid[i], r->revoked[i]);
}

static int
status_of_append(fx_t *f, const char *cmid, uint64_t mid,
                 const char *const *users, size_t n, imgw_store_append_t *out)
{
    int64_t seqs[8];
    return append_msg(f, cmid, mid, "c", users, n, seqs, out);
}

/* A mix of every journaled request. */
static void
fill(fx_t *f)
{
    const char *ab[] = {"a", "b"}, *ba[] = {"b", "a"}, *grp[] = {"a", "b",
                                                                 "c"};
    int64_t seqs[8];
    for (int i = 1; i <= 5; i++)
        append_msg(f, "", (uint64_t)i, "s_a_b", ab, 2, seqs, NULL);
    append_msg(f, "k1", 6, "s_a_b", ba, 2, seqs, NULL);
    append_msg(f, "k2", 7, "g_1", grp, 3, seqs, NULL);
    fake_now += 1000;
    append_msg(f, "", 8, "s_a_b", ab, 2, seqs, NULL);
    CHECK_EQ_INT(DONE(f, imgw_store_revoke(f->sl, 3, done_cb, res)), 0);
    imgw_store_set_delivered(f->sl, "a", "phone", 4, NULL, NULL);
    imgw_store_set_read(f->sl, "b", "s_a_b", "5", NULL, NULL);
    imgw_store_group_set(f->sl, "g1", grp, 3, NULL, NULL);
    imgw_store_group_set(f->sl, "g2", ab, 2, NULL, NULL);
    imgw_store_group_del(f->sl, "g2", NULL, NULL);
}

typedef struct snap_s {
    char a[4096], b[4096], c[4096];
    int64_t ma, mb, mc;
} snap_t;

static void
take(fx_t *f, snap_t *s)
{
    timeline_text(f, "a", s->a, sizeof(s->a));
    timeline_text(f, "b", s->b, sizeof(s->b));
    timeline_text(f, "c", s->c, sizeof(s->c));
    s->ma = max_seq(f, "a");
    s->mb = max_seq(f, "b");
    s->mc = max_seq(f, "c");
}

/* Everything fill() left, as seen after a restart. */
static void
check_filled(fx_t *f, const snap_t *before)
{
    snap_t now;
    take(f, &now);
    CHECK_EQ_STR(now.a, before->a);
    CHECK_EQ_STR(now.b, before->b);
    CHECK_EQ_STR(now.c, before->c);
    CHECK_EQ_INT(now.ma, 8);
    CHECK_EQ_INT(now.mb, 8);
    CHECK_EQ_INT(now.mc, 1);
    CHECK(strstr(now.a, "3:3:1,") != NULL); /* the revoke survived */
    /* The dedupe keys: a retry gets the first message id and seq. */
    imgw_store_append_t req;
    const char *ba[] = {"b", "a"}, *grp[] = {"a", "b", "c"};
    CHECK_EQ_INT(status_of_append(f, "k1", 99, ba, 2, &req), 0);
    CHECK_EQ_INT(req.duplicate, 1);
    CHECK_EQ_INT(req.dup_message_id, 6);
    CHECK_EQ_INT(req.dup_seq, 6);
    CHECK_EQ_INT(status_of_append(f, "k2", 98, grp, 3, &req), 0);
    CHECK_EQ_INT(req.duplicate, 1);
    CHECK_EQ_INT(req.dup_message_id, 7);
    /* Message metadata (revoke lookups). */
    msg_res_t *m = msg_get(f, 7);
    CHECK_EQ_INT(m->status, 0);
    CHECK_EQ_STR(m->sender, "a");
    CHECK_EQ_STR(m->conv, "g_1");
    CHECK_EQ_INT(msg_get(f, 3)->m.revoked, 1);
    /* A message id the store holds is still refused. */
    const char *ab[] = {"a", "b"};
    CHECK_EQ_INT(status_of_append(f, "", 8, ab, 2, NULL), IMGW_EEXIST);
    /* Groups and positions. */
    grp_res_t *g = group_get(f, "g1");
    CHECK_EQ_INT(g->status, 0);
    CHECK_EQ_INT(g->n, 3);
    CHECK_EQ_INT(group_get(f, "g2")->status, IMGW_ENOTFOUND);
    int64_t seq = 0;
    char buf[64] = "";
    CHECK_EQ_INT(imgw__store_mem_get_delivered(TEST_STORE_MEM_OF(f->s), "a",
                                               "phone", &seq),
                 0);
    CHECK_EQ_INT(seq, 4);
    CHECK_EQ_INT(imgw__store_mem_get_read(TEST_STORE_MEM_OF(f->s), "b", "s_a_b",
                                          buf, sizeof(buf)),
                 0);
    CHECK_EQ_STR(buf, "5");
    /* New appends continue the seqs. */
    int64_t seqs[2];
    CHECK_EQ_INT(append_msg(f, "", 100, "s_a_b", ab, 2, seqs, NULL), 0);
    CHECK_EQ_INT(seqs[0], 9);
    CHECK_EQ_INT(seqs[1], 9);
}

/* ---- tests -------------------------------------------------------------- */

TEST(restart_keeps_state)
{
    fx_t f;
    snap_t before;
    fx_open(&f, 1000, 7, 86400);
    fill(&f);
    take(&f, &before);
    printf("  a before restart: %s\n", before.a);
    fx_restart(&f, 1000, 7, 86400);
    check_filled(&f, &before);
    /* And once more, with the appends of the first check journaled too. */
    fx_restart(&f, 1000, 7, 86400);
    CHECK_EQ_INT(max_seq(&f, "a"), 9);
    fx_close(&f);
    rm_rf(tdir);
}

/* Replay stamps entries with the time they were first stored: retention
 * by age still counts from then, not from the restart. */
TEST(restart_keeps_times)
{
    fx_t f;
    const char *ab[] = {"a", "b"};
    int64_t seqs[2];
    fx_open(&f, 1000, 1, 60);
    append_msg(&f, "old", 1, "c", ab, 2, seqs, NULL);
    fake_now += DAY_MS / 2;
    append_msg(&f, "", 2, "c", ab, 2, seqs, NULL);
    fx_restart(&f, 1000, 1, 60);
    fake_now = T0 + DAY_MS / 2 + 30 * 1000; /* 30 s after the second */
    sync_res_t *r = do_sync(&f, "a", 0, 0, 10);
    CHECK_EQ_INT(r->n, 2);
    /* The dedupe key of the first expired 60 s after T0, not after the
     * restart. */
    imgw_store_append_t req;
    CHECK_EQ_INT(status_of_append(&f, "old", 3, ab, 2, &req), 0);
    CHECK_EQ_INT(req.duplicate, 0);
    fake_now = T0 + DAY_MS + 1; /* the first is a day old, the second not */
    r = do_sync(&f, "a", 0, 0, 10);
    CHECK_EQ_INT(r->n, 2);
    CHECK_EQ_INT(r->seq[0], 2);
    CHECK_EQ_INT(max_seq(&f, "a"), 3);
    fx_close(&f);
    rm_rf(tdir);
}

/* A durable timeline keeps its epoch across restarts (journal replay) and
 * compactions (snapshots): clients see no discontinuity. */
TEST(restart_keeps_epoch)
{
    fx_t f;
    const char *ab[] = {"a", "b"};
    int64_t seqs[2];
    fx_open(&f, 1000, 7, 86400);
    CHECK_EQ_INT(append_msg(&f, "", 500, "c", ab, 2, seqs, NULL), 0);
    CHECK_EQ_INT(append_msg(&f, "", 501, "c", ab, 2, seqs, NULL), 0);
    fx_restart(&f, 1000, 7, 86400);
    CHECK_EQ_INT(max_seq(&f, "a"), 2);
    printf("  epoch after replay: %llu\n", (unsigned long long)last_epoch);
    CHECK(last_epoch == 500);
    CHECK_EQ_INT(imgw__store_file_compact(f.s), 0);
    fx_restart(&f, 1000, 7, 86400);
    CHECK_EQ_INT(max_seq(&f, "b"), 2);
    printf("  epoch after a snapshot: %llu\n", (unsigned long long)last_epoch);
    CHECK(last_epoch == 500);
    CHECK_EQ_INT(append_msg(&f, "", 502, "c", ab, 2, seqs, NULL), 0);
    sync_res_t *r = do_sync(&f, "a", 0, 0, 10);
    CHECK(r->epoch == 500 && r->n == 3 && r->oldest == 1);
    fx_close(&f);
    rm_rf(tdir);
}

/* The whole conversation list of user, one line per entry. */
static void
conv_text(fx_t *f, const char *user, char *out, size_t cap)
{
    list_res_t *r = conv_list(f, user, 0, IMGW_STORE_CONV_PAGE_MAX);
    size_t k = (size_t)snprintf(out, cap, "status %d total %llu:", r->status,
                                (unsigned long long)r->total);
    for (size_t i = 0; i < r->n && k < cap; i++)
        k += (size_t)snprintf(
            out + k, cap - k, " [%d %s mid %llu seq %lld by %s type %d '%s' "
                              "unread %u read %lld at %lld]",
            r->c[i].kind, r->c[i].peer,
            (unsigned long long)r->c[i].last_message_id,
            (long long)r->c[i].last_seq, r->c[i].last_sender,
            r->c[i].last_type, r->c[i].preview, r->c[i].unread,
            (long long)r->c[i].read_seq, (long long)r->c[i].updated_ms);
}

/* Conversation state (issue 13) survives a restart: appends replayed with
 * their type and preview, reads and deletes from their own journal
 * records, and all of it through a snapshot. */
TEST(restart_keeps_conversations)
{
    fx_t f;
    char before[4096], after[4096], alice[4096];
    fx_open(&f, 1000, 7, 86400);
    const char *ab[] = {"alice", "bob"}, *ac[] = {"alice", "carol"};
    const char *g[] = {"carol", "bob", "alice"};
    CHECK_EQ_INT(conv_post(&f, "s_alice_bob", ab, 2, "hi bob"), 0);
    CHECK_EQ_INT(conv_post(&f, "s_alice_bob", ab, 2, "again"), 0);
    CHECK_EQ_INT(conv_post(&f, "s_alice_carol", ac, 2, "hi carol"), 0);
    CHECK_EQ_INT(conv_post(&f, "g_team", g, 3, "team"), 0);
    CHECK_EQ_INT(conv_post(&f, "g_team", g, 3, "team 2"), 0);
    CHECK_EQ_INT(CONV_READ(&f, "bob", CONV_S, "alice", 1), 0);
    CHECK_EQ_INT(CONV_DEL(&f, "carol", CONV_S, "alice"), 0);
    conv_text(&f, "bob", before, sizeof(before));
    conv_text(&f, "alice", alice, sizeof(alice));
    printf("  bob before restart: %s\n", before);
    CHECK(strstr(before, "unread 1 read 1") != NULL);
    fx_restart(&f, 1000, 7, 86400);
    conv_text(&f, "bob", after, sizeof(after));
    printf("  bob after restart:  %s\n", after);
    CHECK_EQ_STR(after, before);
    conv_text(&f, "carol", after, sizeof(after));
    CHECK(strstr(after, "alice") == NULL); /* the delete was replayed */
    CHECK(strstr(after, "team") != NULL);
    /* Through a snapshot, then a journal on top of it. */
    CHECK_EQ_INT(imgw__store_file_compact(f.s), 0);
    CHECK_EQ_INT(CONV_READ(&f, "alice", CONV_G, "team", 0), 0);
    conv_text(&f, "alice", alice, sizeof(alice));
    fx_restart(&f, 1000, 7, 86400);
    conv_text(&f, "bob", after, sizeof(after));
    CHECK_EQ_STR(after, before);
    conv_text(&f, "alice", after, sizeof(after));
    printf("  alice after snapshot + restart: %s\n", after);
    CHECK_EQ_STR(after, alice);
    CHECK(strstr(after, "total 0") != NULL);
    fx_close(&f);
    rm_rf(tdir);
}

TEST(torn_tail)
{
    fx_t f;
    snap_t before;
    char jp[600];
    fx_open(&f, 1000, 7, 86400);
    fill(&f);
    take(&f, &before);
    fx_close(&f);
    CHECK_EQ_INT(path_of(jp, sizeof(jp), "journal."), 1);
    long good = file_size(jp);
    /* Half a record: a length, a CRC and a few bytes of payload. */
    const uint8_t torn[] = {200, 0, 0, 0, 1, 2, 3, 4, 1, 9, 9};
    append_bytes(jp, torn, sizeof(torn));
    CHECK_EQ_INT(file_size(jp), good + (long)sizeof(torn));
    keep_dir = 1;
    fx_open(&f, 1000, 7, 86400);
    keep_dir = 0;
    fake_now = T0 + 1000;
    CHECK_EQ_INT(file_size(jp), good); /* cut back to the last record */
    check_filled(&f, &before);
    fx_restart(&f, 1000, 7, 86400);
    CHECK_EQ_INT(max_seq(&f, "a"), 9); /* the append after the cut too */
    fx_close(&f);
    rm_rf(tdir);
}

TEST(crc_corruption)
{
    fx_t f;
    char jp[600];
    const char *ab[] = {"a", "b"};
    int64_t seqs[2];
    fx_open(&f, 1000, 7, 86400);
    for (int i = 1; i <= 3; i++)
        append_msg(&f, "", (uint64_t)i, "c", ab, 2, seqs, NULL);
    CHECK_EQ_INT(path_of(jp, sizeof(jp), "journal."), 1);
    long two = file_size(jp);
    append_msg(&f, "", 4, "c", ab, 2, seqs, NULL);
    long three = file_size(jp);
    fx_close(&f);
    /* Flip one byte inside the last record's payload. */
    FILE *fp = fopen(jp, "r+b");
    CHECK(fp != NULL);
    if (fp) {
        fseek(fp, (two + three) / 2, SEEK_SET);
        int c = fgetc(fp);
        fseek(fp, (two + three) / 2, SEEK_SET);
        fputc(c ^ 0x55, fp);
        fclose(fp);
    }
    keep_dir = 1;
    fx_open(&f, 1000, 7, 86400);
    keep_dir = 0;
    CHECK_EQ_INT(max_seq(&f, "a"), 3); /* the bad record is dropped */
    CHECK_EQ_INT(file_size(jp), two);
    CHECK_EQ_INT(append_msg(&f, "", 5, "c", ab, 2, seqs, NULL), 0);
    CHECK_EQ_INT(seqs[0], 4);
    fx_restart(&f, 1000, 7, 86400);
    sync_res_t *r = do_sync(&f, "b", 0, 0, 10);
    CHECK_EQ_INT(r->n, 4);
    CHECK_EQ_INT(r->mid[3], 5);
    fx_close(&f);
    rm_rf(tdir);
}

TEST(compaction)
{
    fx_t f;
    snap_t before;
    char p[600];
    fx_open(&f, 1000, 7, 86400);
    fill(&f);
    take(&f, &before);
    CHECK_EQ_INT(path_of(p, sizeof(p), "snap."), 0);
    CHECK_EQ_INT(imgw__store_file_compact(f.s), 0);
    CHECK_EQ_INT(path_of(p, sizeof(p), "snap."), 1);
    CHECK_EQ_INT(path_of(p, sizeof(p), "journal."), 1); /* the old one went */
    CHECK_EQ_INT(file_size(p), 16);                     /* only a header */
    imgw__store_mem_stats_t st0 = stats(&f);
    fx_restart(&f, 1000, 7, 86400);
    imgw__store_mem_stats_t st1 = stats(&f);
    CHECK_EQ_INT(st1.entries, st0.entries);
    CHECK_EQ_INT(st1.blobs_live, st0.blobs_live); /* shared blobs stay shared */
    CHECK_EQ_INT(st1.metas, st0.metas);
    CHECK_EQ_INT(st1.dedupes, st0.dedupes);
    CHECK_EQ_INT(st1.groups, st0.groups);
    check_filled(&f, &before); /* appends message 100 to the new journal */
    /* A second compaction over snapshot + journal, then a restart. */
    CHECK_EQ_INT(imgw__store_file_compact(f.s), 0);
    CHECK_EQ_INT(path_of(p, sizeof(p), "snap."), 1);
    fx_restart(&f, 1000, 7, 86400);
    CHECK_EQ_INT(max_seq(&f, "a"), 9);
    sync_res_t *r = do_sync(&f, "a", 8, 0, 10);
    CHECK_EQ_INT(r->n, 1);
    CHECK_EQ_INT(r->mid[0], 100);
    fx_close(&f);
    rm_rf(tdir);
}

/* A crash after the switch to the new journal but before the snapshot
 * was renamed into place: both journals are there, no new snapshot. */
TEST(compaction_crash)
{
    fx_t f;
    snap_t before;
    char j1[600], j2[600], sp[600], cmd[2048];
    fx_open(&f, 1000, 7, 86400);
    fill(&f);
    take(&f, &before);
    CHECK_EQ_INT(path_of(j1, sizeof(j1), "journal."), 1);
    snprintf(cmd, sizeof(cmd), "cp '%s' '%s/keep'", j1, tdir);
    CHECK_EQ_INT(system(cmd), 0);
    CHECK_EQ_INT(imgw__store_file_compact(f.s), 0);
    fx_close(&f);
    CHECK_EQ_INT(path_of(sp, sizeof(sp), "snap."), 1);
    CHECK_EQ_INT(path_of(j2, sizeof(j2), "journal."), 1);
    unlink(sp);
    snprintf(cmd, sizeof(cmd), "mv '%s/keep' '%s'", tdir, j1);
    CHECK_EQ_INT(system(cmd), 0);
    CHECK_EQ_INT(path_of(j2, sizeof(j2), "journal."), 2);
    keep_dir = 1;
    fx_open(&f, 1000, 7, 86400);
    keep_dir = 0;
    fake_now = T0 + 1000;
    check_filled(&f, &before);
    fx_close(&f);
    rm_rf(tdir);
}

TEST(damaged_snapshot)
{
    fx_t f;
    char sp[600];
    fx_open(&f, 1000, 7, 86400);
    fill(&f);
    CHECK_EQ_INT(imgw__store_file_compact(f.s), 0);
    fx_close(&f);
    CHECK_EQ_INT(path_of(sp, sizeof(sp), "snap."), 1);
    FILE *fp = fopen(sp, "r+b");
    if (fp) {
        fseek(fp, 40, SEEK_SET);
        fputc(0xAA, fp);
        fclose(fp);
    }
    imgw_store_cfg_t cfg = {"file", NULL, 1000, 7, 86400, 1000, 1};
    keep_dir = 1;
    test_store_prep(&cfg);
    keep_dir = 0;
    imgw_store_t *s = NULL;
    char err[256] = "";
    CHECK_EQ_INT(imgw_store_open(&s, &cfg, err, sizeof(err)), IMGW_ECONFIG);
    printf("  error: %s\n", err);
    CHECK(strstr(err, "damaged") != NULL);
    CHECK(s == NULL);
    rm_rf(tdir);
}

TEST(dir_lock)
{
    fx_t f;
    fx_open(&f, 1000, 7, 86400);
    imgw_store_cfg_t cfg = {"file", NULL, 1000, 7, 86400, 1000, 1};
    keep_dir = 1;
    test_store_prep(&cfg);
    keep_dir = 0;
    imgw_store_t *s = NULL;
    char err[256] = "";
    CHECK_EQ_INT(imgw_store_open(&s, &cfg, err, sizeof(err)), IMGW_ECONFIG);
    printf("  error: %s\n", err);
    CHECK(strstr(err, "in use") != NULL);
    fx_close(&f);
    CHECK_EQ_INT(imgw_store_open(&s, &cfg, err, sizeof(err)), 0);
    imgw_store_close(s);
    imgw_store_cfg_t bad = cfg;
    bad.fsync = "sometimes";
    CHECK_EQ_INT(imgw_store_open(&s, &bad, err, sizeof(err)), IMGW_ECONFIG);
    CHECK(strstr(err, "fsync") != NULL);
    rm_rf(tdir);
}

/*
 * A journal write that fails (here: RLIMIT_FSIZE, as a full disk would):
 * that request is answered ETIMEDOUT (it is in memory but not on disk),
 * every later write EBUSY with nothing applied, and a restart has exactly
 * what was written before.
 */
TEST(write_failure)
{
    fx_t f;
    const char *ab[] = {"a", "b"};
    int64_t seqs[2];
    char jp[600];
    fx_open(&f, 1000, 7, 86400);
    append_msg(&f, "", 1, "c", ab, 2, seqs, NULL);
    CHECK_EQ_INT(path_of(jp, sizeof(jp), "journal."), 1);
    long size = file_size(jp);
    struct rlimit old, lim;
    getrlimit(RLIMIT_FSIZE, &old);
    lim = old;
    lim.rlim_cur = (rlim_t)size + 10;
    signal(SIGXFSZ, SIG_IGN);
    CHECK_EQ_INT(setrlimit(RLIMIT_FSIZE, &lim), 0);
    imgw_store_append_t req;
    app_res_t ar = {0, 0};
    char blob[] = "2";
    memset(&req, 0, sizeof(req));
    req.sender = "a";
    req.client_msg_id = "kk";
    req.message_id = 2;
    req.conversation_id = "c";
    req.users = ab;
    req.n_users = 2;
    req.entry = (const uint8_t *)blob;
    req.entry_len = 1;
    req.seqs = seqs;
    CHECK_EQ_INT(imgw_store_append(f.sl, &req, app_cb, &ar), 0);
    CHECK_EQ_INT(ar.calls, 0); /* never before the request returned */
    sc_wait(&f, &ar.calls);
    CHECK_EQ_INT(ar.calls, 1);
    CHECK_EQ_INT(ar.status, IMGW_ETIMEDOUT);
    setrlimit(RLIMIT_FSIZE, &old);
    CHECK_EQ_INT(file_size(jp), size); /* the partial record was cut off */
    CHECK_EQ_INT(imgw_store_loop_ready(f.sl), 0);
    /* The retry would hit the dedupe key in memory: refused instead. */
    ar.calls = 0;
    CHECK_EQ_INT(imgw_store_append(f.sl, &req, app_cb, &ar), 0);
    CHECK_EQ_INT(ar.calls, 0);
    sc_wait(&f, &ar.calls);
    CHECK_EQ_INT(ar.status, IMGW_EBUSY);
    CHECK_EQ_INT(req.duplicate, 0);
    CHECK_EQ_INT(
        DONE(&f, imgw_store_set_delivered(f.sl, "a", "d", 1, done_cb, res)),
        IMGW_EBUSY);
    fx_restart(&f, 1000, 7, 86400);
    CHECK_EQ_INT(imgw_store_loop_ready(f.sl), 1);
    CHECK_EQ_INT(max_seq(&f, "a"), 1);
    CHECK_EQ_INT(append_msg(&f, "kk", 3, "c", ab, 2, seqs, &req), 0);
    CHECK_EQ_INT(req.duplicate, 0);
    CHECK_EQ_INT(seqs[0], 2);
    fx_close(&f);
    rm_rf(tdir);
}

int
main(void)
{
    imgw_log_set_level(IMGW_LOG_ERROR_L);
    /* The contract, then test_store_memory.c's engine cases. */
    sc_run_contract();
    RUN(open_errors);
    RUN(append_blobs_shared);
    RUN(append_refused_holds_nothing);
    RUN(retention_count);
    RUN(retention_age);
    RUN(dedupe);
    RUN(revoke_and_msg_get);
    RUN(record_caps);
    RUN(groups);
    RUN(routes);
    RUN(routes_shared_strings);
    RUN(watchers_single_node);
    RUN(positions);
    RUN(tick_sweeps);
    RUN(blob_dropped_meta_kept);
    RUN(index_many);
    RUN(id_validator);
    RUN(store_edge_ids_no_records);
    RUN(user_cap);
    RUN(seq_idle_expiry);
    RUN(idle_user_routes_inline);
    RUN(used_created_aged_freed);
    RUN(seq_ttl_rounds_up);
    RUN(timeline_epoch);
    RUN(reentrant_sync);
    RUN(failmalloc);
    RUN(concurrent_appends);
    rm_rf(tdir);
    /* The file backend's own. */
    tfsync = "interval";
    RUN(restart_keeps_state);
    RUN(restart_keeps_times);
    RUN(restart_keeps_epoch);
    RUN(restart_keeps_conversations);
    RUN(torn_tail);
    RUN(crc_corruption);
    RUN(compaction);
    RUN(compaction_crash);
    RUN(damaged_snapshot);
    RUN(dir_lock);
    RUN(write_failure);
    TEST_DONE();
}
