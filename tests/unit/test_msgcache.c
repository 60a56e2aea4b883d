/*
 * Notifications kept from routing to delivery (core/worker/msgcache.c).
 *
 * Checked: a text is handed out once per use and the last take empties the
 * slot; an id the slot does not hold (never put, evicted by a colliding id,
 * or used up) is a miss; a text over max_len or with no use is not kept,
 * and such a put still empties the item's slot; an entry is a miss for an
 * item with the same id but another receive time (a reused id);
 * and four threads putting and taking 100,000 ids in 64 slots get back
 * exactly the text of the id they asked for, or a miss (run under ASan in CI: nothing leaks
 * or is freed twice).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "worker/msgcache.h"
#include "util.h"

static char *text_of(int64_t id, size_t *len)
{
    char *t = gr_xprintf("{\"item\":%lld}", (long long)id);
    *len = strlen(t);
    return t;
}

static void test_uses_then_empty(void **state)
{
    (void)state;
    struct gr_msgcache c;
    gr_msgcache_init(&c, 8, 1024);
    size_t len;
    char *t = text_of(42, &len);
    gr_msgcache_put(&c, 42, 1000, t, len, 3);
    for (int i = 0; i < 3; i++) {
        size_t got_len = 0;
        char *got = gr_msgcache_take(&c, 42, 1000, &got_len);
        assert_non_null(got);
        assert_string_equal(got, "{\"item\":42}");
        assert_int_equal(got_len, strlen("{\"item\":42}"));
        free(got);
    }
    assert_null(gr_msgcache_take(&c, 42, 1000, &len));
    assert_null(c.slots[42 % 8].text);
    gr_msgcache_destroy(&c);
}

static void test_misses(void **state)
{
    (void)state;
    struct gr_msgcache c;
    gr_msgcache_init(&c, 8, 16);
    size_t len;
    assert_null(gr_msgcache_take(&c, 1, 1000, &len)); /* never put */
    char *t = text_of(1, &len);
    gr_msgcache_put(&c, 1, 1000, t, len, 1);
    t = text_of(9, &len); /* the same slot: evicts item 1 */
    gr_msgcache_put(&c, 9, 1000, t, len, 1);
    assert_null(gr_msgcache_take(&c, 1, 1000, &len));
    char *got = gr_msgcache_take(&c, 9, 1000, &len);
    assert_string_equal(got, "{\"item\":9}");
    free(got);
    t = gr_xstrdup("{\"a text longer than max_len\":1}");
    gr_msgcache_put(&c, 2, 1000, t, strlen(t), 1);
    assert_null(gr_msgcache_take(&c, 2, 1000, &len));
    t = text_of(3, &len);
    gr_msgcache_put(&c, 3, 1000, t, len, 0); /* no delivery to take it */
    assert_null(gr_msgcache_take(&c, 3, 1000, &len));
    t = text_of(4, &len);
    gr_msgcache_put(&c, 4, 1000, t, len, 2);
    gr_msgcache_destroy(&c); /* frees what is still kept */
}

/* SQLite reuses a purged item's id: an entry left for the old item (its
 * deliveries never came) must never reach the new one. */
static void test_a_reused_id_never_gets_the_old_text(void **state)
{
    (void)state;
    struct gr_msgcache c;
    gr_msgcache_init(&c, 8, 64);
    size_t len;
    gr_msgcache_put(&c, 5, 1000, gr_xstrdup("{\"old\":1}"), 9, 2);
    assert_null(gr_msgcache_take(&c, 5, 2000, &len)); /* same id, another item */
    /* routing the new item keeps nothing (too long, rich: text NULL, no
     * handler: no use) and still empties the slot */
    char *big = calloc(1, 100);
    memset(big, 'x', 99);
    gr_msgcache_put(&c, 5, 2000, big, 99, 1);
    assert_null(c.slots[5].text);
    gr_msgcache_put(&c, 5, 1000, gr_xstrdup("{\"old\":1}"), 9, 2);
    gr_msgcache_put(&c, 5, 2000, NULL, 0, 1);
    assert_null(c.slots[5].text);
    gr_msgcache_put(&c, 5, 1000, gr_xstrdup("{\"old\":1}"), 9, 2);
    gr_msgcache_put(&c, 5, 2000, gr_xstrdup("{}"), 2, 0);
    assert_null(c.slots[5].text);
    assert_null(gr_msgcache_take(&c, 5, 1000, &len));
    gr_msgcache_destroy(&c);
}

struct race {
    struct gr_msgcache *c;
    int64_t first;
    unsigned hits, wrong;
};

static void *racer(void *arg)
{
    struct race *r = arg;
    for (int64_t id = r->first; id < r->first + 25000; id++) {
        size_t len;
        char *t = text_of(id, &len);
        gr_msgcache_put(r->c, id, 1000, t, len, 2);
        for (int k = 0; k < 2; k++) {
            /* ask for this id, and for one another thread may have put */
            int64_t ask = k ? id : (id + 25000) % 100000;
            char *got = gr_msgcache_take(r->c, ask, 1000, &len);
            if (!got)
                continue;
            char *want = text_of(ask, &len);
            if (strcmp(got, want) != 0)
                r->wrong++;
            else
                r->hits++;
            free(want);
            free(got);
        }
    }
    return NULL;
}

static void test_threads_get_their_own_text(void **state)
{
    (void)state;
    struct gr_msgcache c;
    gr_msgcache_init(&c, 64, 1024);
    pthread_t t[4];
    struct race r[4];
    for (int i = 0; i < 4; i++) {
        r[i] = (struct race){.c = &c, .first = i * 25000};
        assert_int_equal(pthread_create(&t[i], NULL, racer, &r[i]), 0);
    }
    unsigned hits = 0;
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        assert_int_equal(r[i].wrong, 0);
        hits += r[i].hits;
    }
    assert_true(hits > 0); /* how many depends on the interleaving; none is wrong */
    gr_msgcache_destroy(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_uses_then_empty),
        cmocka_unit_test(test_misses),
        cmocka_unit_test(test_a_reused_id_never_gets_the_old_text),
        cmocka_unit_test(test_threads_get_their_own_text),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
