/*
 * test_list.c: unit tests for base/list.h, the intrusive doubly linked
 * list: order of inserts, removal from anywhere (and of unlinked nodes),
 * the zeroed and removed "unlinked" states, splicing a whole list, safe
 * iteration while removing, and getting the object back from its node.
 */
#include "list.h"

#include "test.h"

typedef struct item_s {
    int v;
    imgw_list_t link;
} item_t;

/* The values of head front to back, as a string ("123"), checking the
 * back links agree on the way. */
static const char *
order(imgw_list_t *head)
{
    static char buf[64];
    size_t n = 0;
    imgw_list_t *pos, *prev = head;

    IMGW_LIST_FOREACH(pos, head)
    {
        if (pos->prev != prev || n + 1 >= sizeof(buf))
            return "broken";
        buf[n++] = (char)('0' + IMGW_LIST_ENTRY(pos, item_t, link)->v);
        prev = pos;
    }
    if (head->prev != prev)
        return "broken";
    buf[n] = '\0';
    return buf;
}

TEST(empty)
{
    imgw_list_t h;

    imgw_list_init(&h);
    CHECK(imgw_list_empty(&h));
    CHECK(imgw_list_first(&h) == NULL);
    CHECK(imgw_list_last(&h) == NULL);
    CHECK_EQ_STR(order(&h), "");
}

TEST(insert_order)
{
    item_t it[4] = {{1, {0}}, {2, {0}}, {3, {0}}, {4, {0}}};
    imgw_list_t h;

    imgw_list_init(&h);
    imgw_list_insert_tail(&h, &it[1].link);
    imgw_list_insert_tail(&h, &it[2].link);
    imgw_list_insert_head(&h, &it[0].link);
    imgw_list_insert_tail(&h, &it[3].link);
    CHECK_EQ_STR(order(&h), "1234");
    CHECK(!imgw_list_empty(&h));
    CHECK(imgw_list_first(&h) == &it[0].link);
    CHECK(imgw_list_last(&h) == &it[3].link);
    CHECK_EQ_INT(IMGW_LIST_ENTRY(imgw_list_first(&h), item_t, link)->v, 1);
}

TEST(remove_anywhere)
{
    item_t it[4] = {{1, {0}}, {2, {0}}, {3, {0}}, {4, {0}}};
    imgw_list_t h;

    imgw_list_init(&h);
    for (int i = 0; i < 4; i++)
        imgw_list_insert_tail(&h, &it[i].link);
    imgw_list_remove(&it[1].link); /* middle */
    CHECK_EQ_STR(order(&h), "134");
    imgw_list_remove(&it[0].link); /* front */
    CHECK_EQ_STR(order(&h), "34");
    imgw_list_remove(&it[3].link); /* back */
    CHECK_EQ_STR(order(&h), "3");
    imgw_list_remove(&it[2].link); /* the last one */
    CHECK(imgw_list_empty(&h));
    CHECK_EQ_STR(order(&h), "");
}

TEST(unlinked_states)
{
    item_t a = {1, {0}}, b = {2, {0}};
    imgw_list_t h;

    imgw_list_init(&h);
    /* A zeroed node is unlinked, and removing it changes nothing. */
    CHECK(!imgw_list_linked(&a.link));
    imgw_list_remove(&a.link);
    CHECK(a.link.next == NULL);
    imgw_list_insert_tail(&h, &a.link);
    imgw_list_insert_tail(&h, &b.link);
    CHECK(imgw_list_linked(&a.link));
    imgw_list_remove(&a.link);
    CHECK(!imgw_list_linked(&a.link));
    /* Removing it twice leaves the list alone. */
    imgw_list_remove(&a.link);
    CHECK_EQ_STR(order(&h), "2");
    /* A removed node can go into a list again. */
    imgw_list_insert_head(&h, &a.link);
    CHECK_EQ_STR(order(&h), "12");
}

TEST(move_all)
{
    item_t it[3] = {{1, {0}}, {2, {0}}, {3, {0}}};
    imgw_list_t from, to;

    imgw_list_init(&from);
    imgw_list_move_all(&from, &to); /* an empty one */
    CHECK(imgw_list_empty(&to));
    CHECK(imgw_list_empty(&from));
    for (int i = 0; i < 3; i++)
        imgw_list_insert_tail(&from, &it[i].link);
    imgw_list_move_all(&from, &to);
    CHECK(imgw_list_empty(&from));
    CHECK_EQ_STR(order(&to), "123");
    CHECK_EQ_STR(order(&from), "");
    /* The moved nodes belong to the new head: removing touches it only. */
    imgw_list_remove(&it[0].link);
    CHECK_EQ_STR(order(&to), "23");
    CHECK(imgw_list_empty(&from));
}

TEST(foreach_safe_removes)
{
    item_t it[5] = {{1, {0}}, {2, {0}}, {3, {0}}, {4, {0}}, {5, {0}}};
    imgw_list_t h, *pos, *n;
    int seen = 0;

    imgw_list_init(&h);
    for (int i = 0; i < 5; i++)
        imgw_list_insert_tail(&h, &it[i].link);
    IMGW_LIST_FOREACH_SAFE(pos, n, &h)
    {
        seen++;
        if (IMGW_LIST_ENTRY(pos, item_t, link)->v % 2)
            imgw_list_remove(pos);
    }
    CHECK_EQ_INT(seen, 5);
    CHECK_EQ_STR(order(&h), "24");
}

int
main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    RUN(empty);
    RUN(insert_order);
    RUN(remove_anywhere);
    RUN(unlinked_states);
    RUN(move_all);
    RUN(foreach_safe_removes);
    TEST_DONE();
}
