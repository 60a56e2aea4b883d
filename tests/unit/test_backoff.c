/*
 * Retry backoff (core/worker/worker.c, gr_backoff_ms): exponential with full
 * jitter. Before attempt n+1 the wait is uniform in
 * [0, min(max_backoff_ms, initial_backoff_ms * 2^(n-1))].
 *
 * Checked on many draws: every wait is within its cap, the caps double and
 * then stay at the maximum, and the draws spread over the whole range (the
 * mean is near half the cap, both low and high quarters occur): a backoff
 * that always waited 0, or always the cap, would fail.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "worker/worker.h"

#define DRAWS 4000

static void check_spread(const struct gr_retry_policy *p, unsigned attempts, int64_t cap)
{
    double sum = 0;
    unsigned low = 0, high = 0;
    for (int i = 0; i < DRAWS; i++) {
        int64_t d = gr_backoff_ms(p, attempts);
        assert_true(d >= 0);
        assert_true(d <= cap);
        sum += (double)d;
        low += d < cap / 4;
        high += d > cap - cap / 4;
    }
    double mean = sum / DRAWS;
    /* uniform on [0, cap]: mean cap/2 (its standard error here is under 1%) */
    assert_true(mean > cap * 0.45 && mean < cap * 0.55);
    assert_true(low > DRAWS / 8 && high > DRAWS / 8);
}

static void test_caps_double_then_stay_at_the_maximum(void **state)
{
    (void)state;
    struct gr_retry_policy p = {.max_attempts = 10, .initial_backoff_ms = 1000,
                                .max_backoff_ms = 600000};
    int64_t cap = 1000;
    for (unsigned attempts = 1; attempts <= 12; attempts++) {
        check_spread(&p, attempts, cap);
        cap = cap * 2 > 600000 ? 600000 : cap * 2;
    }
}

static void test_small_and_degenerate_policies(void **state)
{
    (void)state;
    struct gr_retry_policy p = {.max_attempts = 3, .initial_backoff_ms = 200,
                                .max_backoff_ms = 500};
    check_spread(&p, 1, 200);
    check_spread(&p, 2, 400);
    check_spread(&p, 3, 500);
    check_spread(&p, 1000, 500); /* no overflow after many attempts */
    struct gr_retry_policy zero = {.max_attempts = 3, .initial_backoff_ms = 0,
                                   .max_backoff_ms = 0};
    assert_int_equal(gr_backoff_ms(&zero, 1), 0);
    assert_int_equal(gr_backoff_ms(&zero, 5), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_caps_double_then_stay_at_the_maximum),
        cmocka_unit_test(test_small_and_degenerate_policies),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
