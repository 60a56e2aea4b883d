/*
 * The strict request-head parser (core/http/head.c) and the address helpers
 * (core/http/addr.c): every refusal reason with its status, heads that are
 * still incomplete, the size limits at their edges, and the CIDR and
 * X-Forwarded-For rules that decide who a client is.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "http/addr.h"
#include "http/head.h"

static int check(const char *head, struct gr_head_verdict *v, size_t *len)
{
    return gr_head_check(head, strlen(head), len, v);
}

static void expect_refused(const char *head, unsigned status, enum gr_head_error e)
{
    struct gr_head_verdict v;
    size_t len = 0;
    int rc = check(head, &v, &len);
    if (rc != -1 || v.status != status || v.error != e)
        fail_msg("%.60s: rc %d status %u error %s, want %u %s", head, rc, v.status,
                 gr_head_error_name(v.error), status, gr_head_error_name(e));
    assert_non_null(v.reason);
}

static void test_valid_heads(void **state)
{
    (void)state;
    struct gr_head_verdict v;
    size_t len = 0;
    const char *h = "POST /notifications?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}";
    assert_int_equal(check(h, &v, &len), 1);
    assert_int_equal(len, strlen(h) - 2); /* the body is not part of the head */
    /* leading empty lines are skipped; HTTP/1.0 needs no Host */
    assert_int_equal(check("\r\n\r\nGET / HTTP/1.0\r\n\r\n", &v, &len), 1);
    /* a value may hold spaces, tabs and obs-text */
    assert_int_equal(check("GET / HTTP/1.1\r\nHost: a\r\nX: a \t\xc3\xa9 b\r\n\r\n", &v, &len), 1);
}

static void test_incomplete_heads_wait(void **state)
{
    (void)state;
    struct gr_head_verdict v;
    size_t len;
    const char *parts[] = {"", "P", "POST /n HTTP/1.1", "POST /n HTTP/1.1\r",
                           "POST /n HTTP/1.1\r\nHost: a\r\n", "POST /n HTTP/1.1\r\nHost: a\r\n\r"};
    for (size_t i = 0; i < sizeof parts / sizeof *parts; i++)
        assert_int_equal(check(parts[i], &v, &len), 0);
}

static void test_refusals(void **state)
{
    (void)state;
    expect_refused("POST /n HTTP/1.1\nHost: a\n\n", 400, GR_HEAD_MALFORMED);
    expect_refused("POST /n HTTP/1.1\r\nHost: a\rX: b\r\n\r\n", 400, GR_HEAD_MALFORMED);
    expect_refused("POST /n HTTP/1.1\r\nHost : a\r\n\r\n", 400, GR_HEAD_MALFORMED);
    expect_refused("POST /n HTTP/1.1\r\nHost: a\r\n b\r\n\r\n", 400, GR_HEAD_MALFORMED);
    expect_refused("POST /n HTTP/1.1\r\nHost: a\r\nX: \x7f\r\n\r\n", 400, GR_HEAD_MALFORMED);
    expect_refused("POST  /n HTTP/1.1\r\nHost: a\r\n\r\n", 400, GR_HEAD_MALFORMED);
    expect_refused("POST http://a/n HTTP/1.1\r\nHost: a\r\n\r\n", 400, GR_HEAD_MALFORMED);
    expect_refused("POST /n HTTP/1.1 \r\nHost: a\r\n\r\n", 400, GR_HEAD_MALFORMED);
    expect_refused("POST /n HTTP/2.0\r\nHost: a\r\n\r\n", 505, GR_HEAD_VERSION);
    expect_refused("POST /n HTTP/1.1\r\n\r\n", 400, GR_HEAD_HOST);
    expect_refused("POST /n HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n", 400, GR_HEAD_HOST);
    expect_refused("POST /n HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
                   400, GR_HEAD_LENGTH);
    expect_refused("POST /n HTTP/1.1\r\nHost: a\r\nContent-Length: 1,1\r\n\r\n", 400,
                   GR_HEAD_LENGTH);
    expect_refused("POST /n HTTP/1.1\r\nHost: a\r\nContent-Length: 1234567890123456789\r\n\r\n",
                   400, GR_HEAD_LENGTH);
    expect_refused("POST /n HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: "
                   "chunked\r\n\r\n",
                   400, GR_HEAD_LENGTH);
    expect_refused("POST /n HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", 411,
                   GR_HEAD_CHUNKED);
    expect_refused("POST /n HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501,
                   GR_HEAD_CODING);
    expect_refused("POST /n HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
                   "Transfer-Encoding: chunked\r\n\r\n",
                   501, GR_HEAD_CODING);
}

static void test_size_limits(void **state)
{
    (void)state;
    size_t n = GR_HEAD_MAX_BYTES + 64;
    char *buf = malloc(n + 1);
    struct gr_head_verdict v;
    size_t len;
    /* a request line longer than GR_HEAD_MAX_TARGET: 414, complete or not */
    memset(buf, 'a', n);
    memcpy(buf, "GET /", 5);
    buf[GR_HEAD_MAX_TARGET + 10] = '\0';
    assert_int_equal(gr_head_check(buf, strlen(buf), &len, &v), -1);
    assert_int_equal(v.status, 414);
    /* a head past GR_HEAD_MAX_BYTES: 431 even before its end arrives */
    strcpy(buf, "GET / HTTP/1.1\r\nHost: a\r\nX: ");
    size_t used = strlen(buf);
    memset(buf + used, 'b', n - used);
    buf[n] = '\0';
    assert_int_equal(gr_head_check(buf, n, &len, &v), -1);
    assert_int_equal(v.status, 431);
    /* just under the limit: still waiting */
    assert_int_equal(gr_head_check(buf, GR_HEAD_MAX_BYTES - 8, &len, &v), 0);
    /* exactly GR_HEAD_MAX_BYTES, the empty line included: accepted; one
     * byte more: refused, and decided by the first GR_HEAD_MAX_BYTES + 1
     * bytes, all the gate reads (not "incomplete" with a CR last) */
    for (size_t total = GR_HEAD_MAX_BYTES; total <= GR_HEAD_MAX_BYTES + 2; total++) {
        strcpy(buf, "GET / HTTP/1.1\r\nHost: a\r\nX: ");
        used = strlen(buf);
        memset(buf + used, 'b', total - 4 - used);
        memcpy(buf + total - 4, "\r\n\r\n", 5);
        int want = total == GR_HEAD_MAX_BYTES ? 1 : -1;
        assert_int_equal(gr_head_check(buf, total, &len, &v), want);
        if (want == 1)
            assert_int_equal(len, GR_HEAD_MAX_BYTES);
        else
            assert_int_equal(v.status, 431);
        assert_int_equal(gr_head_check(buf, GR_HEAD_MAX_BYTES + 1, &len, &v), want);
    }
    /* too many fields */
    strcpy(buf, "GET / HTTP/1.1\r\nHost: a\r\n");
    for (int i = 0; i < GR_HEAD_MAX_FIELDS; i++)
        strcat(buf, "X: y\r\n");
    strcat(buf, "\r\n");
    assert_int_equal(gr_head_check(buf, strlen(buf), &len, &v), -1);
    assert_int_equal(v.status, 431);
    free(buf);
}

static struct gr_addr addr(const char *text)
{
    struct gr_addr a;
    assert_true(gr_addr_parse(text, strlen(text), &a));
    return a;
}

static void test_cidr(void **state)
{
    (void)state;
    struct gr_cidr c;
    assert_true(gr_cidr_parse("192.0.2.0/24", &c));
    struct gr_addr in = addr("192.0.2.200"), out = addr("192.0.3.1"), v6 = addr("2001:db8::1");
    assert_true(gr_cidr_match(&c, &in));
    assert_false(gr_cidr_match(&c, &out));
    assert_false(gr_cidr_match(&c, &v6));
    assert_true(gr_cidr_parse("2001:db8::/32", &c));
    assert_true(gr_cidr_match(&c, &v6));
    assert_false(gr_cidr_match(&c, &in));
    assert_true(gr_cidr_parse("10.1.2.3", &c)); /* a lone address */
    struct gr_addr ten = addr("10.1.2.3"), ten4 = addr("10.1.2.4");
    assert_true(gr_cidr_match(&c, &ten));
    assert_false(gr_cidr_match(&c, &ten4));
    assert_true(gr_cidr_parse("0.0.0.0/0", &c));
    assert_true(gr_cidr_match(&c, &out));
    assert_false(gr_cidr_match(&c, &v6)); /* IPv4's /0 is all of IPv4 only */
    const char *bad[] = {"", "10.0.0.0/33", "10.0.0.0/", "10.0.0/8", "::/129", "a/8", "10.0.0.0/8x"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        assert_false(gr_cidr_parse(bad[i], &c));
    char text[GR_ADDR_TEXT];
    gr_addr_format(&in, text);
    assert_string_equal(text, "192.0.2.200");
    gr_addr_format(&v6, text);
    assert_string_equal(text, "2001:db8::1");
}

static void test_forwarded_client(void **state)
{
    (void)state;
    struct gr_cidr trusted[2];
    assert_true(gr_cidr_parse("10.0.0.0/8", &trusted[0]));
    assert_true(gr_cidr_parse("127.0.0.1", &trusted[1]));
    struct gr_addr got, want = addr("203.0.113.7");
    /* the rightmost address that is not a proxy */
    assert_true(gr_forwarded_client("198.51.100.1, 203.0.113.7, 10.1.1.1", trusted, 2, &got));
    assert_memory_equal(got.b, want.b, 16);
    assert_true(gr_forwarded_client("203.0.113.7", trusted, 2, &got));
    assert_memory_equal(got.b, want.b, 16);
    /* garbage ends the walk: what lies left of it may be forged */
    assert_false(gr_forwarded_client("203.0.113.7, junk, 10.1.1.1", trusted, 2, &got));
    assert_false(gr_forwarded_client("10.1.1.1, 127.0.0.1", trusted, 2, &got));
    assert_false(gr_forwarded_client("", trusted, 2, &got));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_heads),   cmocka_unit_test(test_incomplete_heads_wait),
        cmocka_unit_test(test_refusals),      cmocka_unit_test(test_size_limits),
        cmocka_unit_test(test_cidr),          cmocka_unit_test(test_forwarded_client),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
