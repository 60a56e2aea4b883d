/*
 * Rate-limited log lines (core/log.c, gr_log_limited).
 *
 * stderr is pointed at a temporary file while the limiter runs. Checked: a
 * burst of 3 per 50 ms writes 3 of 10 lines; the next line after the window
 * carries suppressed=7 and the one after it none; a line above the log
 * level is neither written nor counted; and four threads calling 1,000
 * times each write exactly the burst within one window.
 */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "log.h"

static int saved_stderr = -1;
static FILE *capture;

static void capture_start(void)
{
    fflush(stderr);
    capture = tmpfile();
    assert_non_null(capture);
    saved_stderr = dup(STDERR_FILENO);
    assert_true(dup2(fileno(capture), STDERR_FILENO) >= 0);
}

/* What was written since capture_start, as one string (caller frees). */
static char *capture_end(void)
{
    dup2(saved_stderr, STDERR_FILENO);
    close(saved_stderr);
    long n = ftell(capture);
    assert_true(n >= 0);
    char *text = calloc(1, (size_t)n + 1);
    rewind(capture);
    assert_int_equal(fread(text, 1, (size_t)n, capture), (size_t)n);
    fclose(capture);
    return text;
}

static size_t count(const char *text, const char *needle)
{
    size_t n = 0;
    for (const char *p = text; (p = strstr(p, needle)) != NULL; p += strlen(needle))
        n++;
    return n;
}

/* 3 lines per 50 ms (initialised in place: a mutex is not copied). */
static void short_limit(struct gr_log_limit *l)
{
    gr_log_limit_init(l);
    l->burst = 3;
    l->window_ms = 50;
}

static void test_burst_then_suppressed_count(void **state)
{
    (void)state;
    gr_log_set_level(GR_LOG_LEVEL_INFO);
    struct gr_log_limit l;
    short_limit(&l);
    capture_start();
    for (int i = 0; i < 10; i++)
        gr_log_limited(&l, GR_LOG_LEVEL_WARN, "flood line %d", i);
    struct timespec pause = {0, 80 * 1000000};
    nanosleep(&pause, NULL);
    gr_log_limited(&l, GR_LOG_LEVEL_WARN, "after the window");
    gr_log_limited(&l, GR_LOG_LEVEL_WARN, "and one more");
    char *text = capture_end();
    assert_int_equal(count(text, "flood line"), 3);
    assert_non_null(strstr(text, "flood line 2\""));
    assert_null(strstr(text, "flood line 3\""));
    assert_int_equal(count(text, "suppressed="), 1);
    assert_non_null(strstr(text, "msg=\"after the window\" suppressed=7\n"));
    assert_non_null(strstr(text, "msg=\"and one more\"\n"));
    free(text);
}

static void test_below_level_is_not_counted(void **state)
{
    (void)state;
    gr_log_set_level(GR_LOG_LEVEL_ERROR);
    struct gr_log_limit l;
    short_limit(&l);
    capture_start();
    for (int i = 0; i < 10; i++)
        gr_log_limited(&l, GR_LOG_LEVEL_WARN, "hidden %d", i);
    gr_log_set_level(GR_LOG_LEVEL_INFO);
    gr_log_limited(&l, GR_LOG_LEVEL_WARN, "shown");
    char *text = capture_end();
    assert_int_equal(count(text, "hidden"), 0);
    assert_non_null(strstr(text, "msg=\"shown\"\n"));
    assert_null(strstr(text, "suppressed="));
    free(text);
}

static void *flood(void *arg)
{
    for (int i = 0; i < 1000; i++)
        gr_log_limited(arg, GR_LOG_LEVEL_WARN, "threaded %d", i);
    return NULL;
}

static void test_threads_share_the_burst(void **state)
{
    (void)state;
    gr_log_set_level(GR_LOG_LEVEL_INFO);
    struct gr_log_limit l;
    gr_log_limit_init(&l); /* 10 per 10 s: the threads finish well within one window */
    capture_start();
    pthread_t t[4];
    for (int i = 0; i < 4; i++)
        assert_int_equal(pthread_create(&t[i], NULL, flood, &l), 0);
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    char *text = capture_end();
    assert_int_equal(count(text, "threaded"), GR_LOG_LIMIT_BURST);
    assert_int_equal(l.suppressed, 4000 - GR_LOG_LIMIT_BURST);
    free(text);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_burst_then_suppressed_count),
        cmocka_unit_test(test_below_level_is_not_counted),
        cmocka_unit_test(test_threads_share_the_burst),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
