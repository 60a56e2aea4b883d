/* The in-memory store: FIFO order, all-or-nothing bounds, delayed retries,
 * follow-up jobs, and draining on close. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "store.h"
#include "util.h"

static struct gr_job *job(const char *payload)
{
    return gr_job_new(GR_JOB_ROUTE, payload, strlen(payload), NULL);
}

static void test_fifo_and_bound(void **state)
{
    (void)state;
    struct gr_store *s = gr_store_new(3);
    struct gr_job *a[2] = {job("a"), job("b")};
    assert_int_equal(gr_store_append(s, a, 2), 0);
    struct gr_job *b[2] = {job("c"), job("d")};
    assert_int_equal(gr_store_append(s, b, 2), -1); /* 4 > 3: none taken */
    struct gr_job *t = gr_store_take(s);
    assert_string_equal(t->payload, "a");
    struct gr_store_stats st;
    gr_store_stats(s, &st);
    assert_int_equal(st.ready, 1);
    assert_int_equal(st.running, 1);
    /* running work still counts toward the bound */
    assert_int_equal(gr_store_append(s, b, 2), -1);
    assert_int_equal(gr_store_append(s, b, 1), 0);
    gr_store_complete(s, t, NULL, 0);
    t = gr_store_take(s);
    assert_string_equal(t->payload, "b");
    struct gr_job *follow[1] = {job("child")};
    gr_store_complete(s, t, follow, 1);
    assert_string_equal((t = gr_store_take(s))->payload, "c");
    gr_store_complete(s, t, NULL, 0);
    assert_string_equal((t = gr_store_take(s))->payload, "child");
    gr_store_complete(s, t, NULL, 0);
    gr_job_free(b[1]);
    assert_int_equal(gr_store_free(s), 0);
}

static void test_retry_delay_and_close(void **state)
{
    (void)state;
    struct gr_store *s = gr_store_new(10);
    struct gr_job *a[1] = {job("slow")};
    assert_int_equal(gr_store_append(s, a, 1), 0);
    struct gr_job *t = gr_store_take(s);
    int64_t t0 = gr_mono_ms();
    gr_store_retry(s, t, 150);
    struct gr_store_stats st;
    gr_store_stats(s, &st);
    assert_int_equal(st.delayed, 1);
    t = gr_store_take(s); /* blocks until due */
    assert_true(gr_mono_ms() - t0 >= 150);
    assert_string_equal(t->payload, "slow");
    /* closed: appends refused; take drains, then returns NULL */
    gr_store_retry(s, t, 60000);
    gr_store_close(s, gr_mono_ms() + 100);
    struct gr_job *b[1] = {job("late")};
    assert_int_equal(gr_store_append(s, b, 1), -1);
    gr_job_free(b[0]);
    assert_null(gr_store_take(s)); /* the delayed job is past the deadline */
    assert_int_equal(gr_store_free(s), 1);
}

static void test_close_returns_when_empty(void **state)
{
    (void)state;
    struct gr_store *s = gr_store_new(10);
    gr_store_close(s, gr_mono_ms() + 60000);
    int64_t t0 = gr_mono_ms();
    assert_null(gr_store_take(s));
    assert_true(gr_mono_ms() - t0 < 1000);
    assert_int_equal(gr_store_free(s), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fifo_and_bound),
        cmocka_unit_test(test_retry_delay_and_close),
        cmocka_unit_test(test_close_returns_when_empty),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
