/*
 * The in-memory duplicate keys (core/store/dedupe.c).
 *
 * Keys are SHA-256-like: random 32 bytes here. Checked: a key is a duplicate
 * within the window and not after it; the same item is not its own
 * duplicate; a key outlives many rebuilds of the table (100,000 keys from a
 * 1,024-slot start); keys out of the window make room, so a steady stream
 * keeps the table bounded by what the window holds, not by its history; and
 * loading keeps whatever sighting the caller sets last.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "store/dedupe.h"

#define WINDOW 1000

static void key_of(unsigned n, unsigned char key[32])
{
    /* a cheap, well-mixed 32 bytes per n (splitmix64) */
    uint64_t x = n * 0x9E3779B97F4A7C15ull + 1;
    for (int i = 0; i < 4; i++) {
        uint64_t z = (x += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
        memcpy(key + 8 * i, &z, 8);
    }
}

static void test_window_and_the_same_item(void **state)
{
    (void)state;
    struct gr_dedupe d = {0};
    unsigned char k[32], other[32];
    key_of(1, k);
    key_of(2, other);
    assert_false(gr_dedupe_check(&d, k, 10, 5000, 5000, WINDOW));   /* first sighting */
    assert_true(gr_dedupe_check(&d, k, 11, 5500, 5500, WINDOW));    /* Graph retried */
    assert_false(gr_dedupe_check(&d, k, 10, 5000, 5600, WINDOW));   /* item 10 again */
    assert_false(gr_dedupe_check(&d, other, 12, 5600, 5600, WINDOW));
    /* the window counts from the first sighting, not the duplicates */
    assert_true(gr_dedupe_check(&d, k, 13, 6000, 6000, WINDOW));
    assert_false(gr_dedupe_check(&d, k, 14, 6001, 6001, WINDOW));   /* 1001 ms later: new */
    assert_true(gr_dedupe_check(&d, k, 15, 6500, 6500, WINDOW));    /* ... and the new first */
    gr_dedupe_free(&d);
}

/* An item that was not delivered after all forgets its sighting; another
 * item's sighting is not forgotten on its behalf. */
static void test_forget(void **state)
{
    (void)state;
    struct gr_dedupe d = {0};
    unsigned char k[32], other[32];
    key_of(1, k);
    key_of(2, other);
    gr_dedupe_forget(&d, k, 10); /* an empty set: nothing to forget */
    assert_false(gr_dedupe_check(&d, k, 10, 5000, 5000, WINDOW));
    assert_false(gr_dedupe_check(&d, other, 20, 5000, 5000, WINDOW));
    gr_dedupe_forget(&d, k, 11); /* not item 11's sighting */
    assert_true(gr_dedupe_check(&d, k, 11, 5100, 5100, WINDOW));
    gr_dedupe_forget(&d, k, 10); /* item 10 was dropped */
    assert_false(gr_dedupe_check(&d, k, 12, 5200, 5200, WINDOW)); /* item 12 is the first now */
    assert_true(gr_dedupe_check(&d, k, 13, 5300, 5300, WINDOW));
    assert_true(gr_dedupe_check(&d, other, 21, 5300, 5300, WINDOW)); /* untouched */
    gr_dedupe_free(&d);
}

static void test_keys_survive_rebuilds(void **state)
{
    (void)state;
    struct gr_dedupe d = {0};
    unsigned char k[32];
    for (unsigned i = 0; i < 100000; i++) {
        key_of(i, k);
        assert_false(gr_dedupe_check(&d, k, i, 1000000, 1000000, WINDOW));
    }
    assert_true(d.used <= 100000); /* some may still wait in the old table */
    assert_true(d.cap >= 100000 * 4 / 3);
    for (unsigned i = 0; i < 100000; i++) {
        key_of(i, k);
        assert_true(gr_dedupe_check(&d, k, 1000000 + i, 1000500, 1000500, WINDOW));
    }
    gr_dedupe_free(&d);
}

/* A table taking over moves the old one's keys a few slots per call: a
 * call never moves the whole table, and every key stays known meanwhile. */
static void test_a_growing_table_moves_keys_call_by_call(void **state)
{
    (void)state;
    struct gr_dedupe d = {0};
    unsigned char k[32];
    unsigned n = 0;
    while (!d.old) { /* until a table takes over from one with keys */
        key_of(n, k);
        assert_false(gr_dedupe_check(&d, k, n, 1000000, 1000000, WINDOW));
        n++;
    }
    size_t old_cap = d.old_cap;
    assert_true(old_cap >= 1024);
    assert_true(d.moved <= 64); /* the call that grew it moved one step at most */
    unsigned calls = 0;
    for (unsigned i = 0; d.old; i++, calls++) { /* every key, old or new, is still a duplicate */
        key_of(i % n, k);
        size_t before = d.moved;
        assert_true(gr_dedupe_check(&d, k, 1000000 + i, 1000100, 1000100, WINDOW));
        assert_true(!d.old || d.moved - before <= 64);
    }
    assert_true(calls >= old_cap / 64 - 1); /* the move took many calls */
    for (unsigned i = 0; i < n; i++) {
        key_of(i, k);
        assert_true(gr_dedupe_check(&d, k, 2000000 + i, 1000200, 1000200, WINDOW));
    }
    gr_dedupe_free(&d);
}

static void test_old_keys_make_room(void **state)
{
    (void)state;
    struct gr_dedupe d = {0};
    unsigned char k[32];
    /* 200 keys a "millisecond" for 10 windows: 2,000,000 keys seen, at most
     * 200,000 within the window at any time */
    for (unsigned i = 0; i < 2000000; i++) {
        int64_t t = 1000000 + i / 200;
        key_of(i, k);
        assert_false(gr_dedupe_check(&d, k, i, t, t, WINDOW));
    }
    assert_true(d.cap <= 1048576); /* 200,000 live keys: 600,000 slots rounded up */
    /* the last window's keys are all still known, older ones are not */
    int64_t now = 1000000 + 1999999 / 200;
    for (unsigned i = 2000000 - 1000; i < 2000000; i++) {
        key_of(i, k);
        assert_true(gr_dedupe_check(&d, k, 5000000 + i, now, now, WINDOW));
    }
    key_of(0, k);
    assert_false(gr_dedupe_check(&d, k, 9000000, now, now, WINDOW));
    gr_dedupe_free(&d);
}

static void test_set_keeps_the_last_value(void **state)
{
    (void)state;
    struct gr_dedupe d = {0};
    unsigned char k[32];
    key_of(7, k);
    gr_dedupe_set(&d, k, 20, 9000, 0);
    gr_dedupe_set(&d, k, 19, 8000, 0); /* an older sighting, loaded later */
    assert_int_equal(d.used, 1);
    assert_true(gr_dedupe_check(&d, k, 21, 8900, 9000, WINDOW)); /* within 1000 of 8000 */
    assert_false(gr_dedupe_check(&d, k, 22, 9100, 9100, WINDOW));
    gr_dedupe_free(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_window_and_the_same_item),
        cmocka_unit_test(test_forget),
        cmocka_unit_test(test_keys_survive_rebuilds),
        cmocka_unit_test(test_a_growing_table_moves_keys_call_by_call),
        cmocka_unit_test(test_old_keys_make_room),
        cmocka_unit_test(test_set_keeps_the_last_value),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
