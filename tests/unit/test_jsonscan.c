/*
 * The request path's JSON scanner (core/http/jsonscan.c) against jansson, on the
 * cases a fuzzer is unlikely to build: numbers at the edges of long long and
 * double, every kind of bad escape and surrogate, overlong and out-of-range
 * UTF-8, and nesting around JSON_PARSER_MAX_DEPTH. For each text, the scanner
 * must accept it exactly when json_loadb(text, len, 0) does. Also checked:
 * decoding escapes, and comparing a string with or without escapes.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "http/jsonscan.h"

/* A whole body as ingest checks it: an object or array, then nothing. */
static bool scanner_accepts(const char *text, size_t len)
{
    struct gr_jscan s;
    gr_jscan_init(&s, text, len);
    gr_jscan_ws(&s);
    if (s.p == s.end || (*s.p != '[' && *s.p != '{'))
        return false;
    if (!gr_jscan_value(&s))
        return false;
    gr_jscan_ws(&s);
    return s.p == s.end;
}

static void agree(const char *text, size_t len)
{
    json_t *j = json_loadb(text, len, 0, NULL);
    bool jansson = j != NULL;
    json_decref(j);
    if (scanner_accepts(text, len) != jansson)
        fail_msg("scanner %s, jansson %s: %.*s", jansson ? "refuses" : "accepts",
                 jansson ? "accepts" : "refuses", (int)(len > 200 ? 200 : len), text);
}

static void test_agrees_with_jansson(void **state)
{
    (void)state;
    static const char *const cases[] = {
        /* structure */
        "", " ", "{}", "[]", " [ ] ", "{\"a\":1}", "{\"a\":1,}", "[1,]", "[,1]", "{\"a\"}",
        "{\"a\":}", "{1:2}", "[1 2]", "[1]x", "[1] [2]", "1", "\"s\"", "true", "[true,false,null]",
        "[tru]", "[nul]", "[truex]", "[true1]", "{\"a\":1 \"b\":2}", "[\t\r\n1\t]", "[\f1]",
        "\xef\xbb\xbf[1]",
        /* numbers */
        "[0]", "[-0]", "[01]", "[-01]", "[-]", "[1.]", "[.5]", "[1.5]", "[1e5]", "[1E+5]",
        "[1e-5]", "[1e]", "[1e+]", "[-1.5e-3]", "[+1]", "[0x1]", "[1.5.2]", "[Infinity]", "[NaN]",
        "[9223372036854775807]", "[9223372036854775808]", "[-9223372036854775808]",
        "[-9223372036854775809]", "[99999999999999999999999]", "[1e308]", "[1e309]", "[-1e309]",
        "[1e-400]", "[2.2250738585072014e-308]", "[123456789012345678901234567890.5]",
        /* strings and escapes */
        "[\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"]", "[\"\\a\"]", "[\"\\x41\"]", "[\"\\u0041\"]",
        "[\"\\u004\"]", "[\"\\u00zz\"]", "[\"\\u0000\"]", "[\"\\uD83D\\uDE00\"]", "[\"\\uD83D\"]",
        "[\"\\uD83Dx\"]", "[\"\\uD83D\\u0041\"]", "[\"\\uDE00\"]", "[\"\\uDE00\\uD83D\"]",
        "[\"\\uD83D\\uD83D\"]", "[\"\\uDBFF\\uDFFF\"]", "[\"\\", "[\"abc", "[\"a\tb\"]",
        "[\"a\x01\"]", "[\"a\x7f\"]", "{\"\\u0000\":1}", "{\"k\\u00e9\":1}",
        /* UTF-8 */
        "[\"\xc3\xa9\"]", "[\"\xc3\"]", "[\"\xc3\x28\"]", "[\"\xc0\xaf\"]", "[\"\xc1\xbf\"]",
        "[\"\xe0\x80\xaf\"]", "[\"\xe0\xa0\x80\"]", "[\"\xed\xa0\x80\"]", "[\"\xed\x9f\xbf\"]",
        "[\"\xef\xbf\xbf\"]", "[\"\xf0\x8f\xbf\xbf\"]", "[\"\xf0\x90\x80\x80\"]",
        "[\"\xf4\x8f\xbf\xbf\"]", "[\"\xf4\x90\x80\x80\"]", "[\"\xf5\x80\x80\x80\"]", "[\"\xff\"]",
        "[\"\x80\"]", "[\xc3\xa9]", "{\"\xe2\x82\xac\":\"\xe2\x82\xac\"}",
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        agree(cases[i], strlen(cases[i]));
    /* NUL bytes: in strings, between tokens, at the end (see jsonscan.h for
     * the one case where jansson skips one and the scanner does not) */
    agree("[\"a\0b\"]", 6);
    agree("[1,\0 2]", 7);
    agree("[1] \0", 5);
    agree("[\0]", 3);
}

/* n nested arrays, with a scalar in the innermost one or not. */
static void nested(size_t n, bool scalar)
{
    char *text = malloc(2 * n + 2);
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        text[k++] = '[';
    if (scalar)
        text[k++] = '1';
    for (size_t i = 0; i < n; i++)
        text[k++] = ']';
    agree(text, k);
    free(text);
}

static void test_depth_as_jansson_counts_it(void **state)
{
    (void)state;
    for (size_t n = JSON_PARSER_MAX_DEPTH - 2; n <= JSON_PARSER_MAX_DEPTH + 2; n++) {
        nested(n, false);
        nested(n, true);
    }
}

static void test_decode_and_compare(void **state)
{
    (void)state;
    const char *text = "[\"caf\\u00e9 \\uD83D\\uDE00 \\\"q\\\" \\n\\/ \xe2\x82\xac\", \"ClientState\", "
                       "\"client\\u0053tate\"]";
    struct gr_jscan s;
    gr_jscan_init(&s, text, strlen(text));
    assert_true(gr_jscan_take(&s, '['));
    struct gr_jstr a, b, c;
    gr_jscan_ws(&s);
    assert_true(gr_jscan_string(&s, &a));
    assert_true(gr_jscan_take(&s, ','));
    gr_jscan_ws(&s);
    assert_true(gr_jscan_string(&s, &b));
    assert_true(gr_jscan_take(&s, ','));
    gr_jscan_ws(&s);
    assert_true(gr_jscan_string(&s, &c));
    size_t len;
    char *decoded = gr_jstr_decode(&a, &len);
    json_t *ref = json_loads(text, 0, NULL);
    assert_non_null(ref);
    assert_string_equal(decoded, json_string_value(json_array_get(ref, 0)));
    assert_int_equal(len, json_string_length(json_array_get(ref, 0)));
    free(decoded);
    json_decref(ref);
    assert_true(a.escaped);
    assert_false(b.escaped);
    assert_true(gr_jstr_is(&b, "clientState", true));
    assert_false(gr_jstr_is(&b, "clientState", false));
    assert_true(gr_jstr_is(&c, "clientState", false));
    assert_false(gr_jstr_is(&c, "clientStat", true));
}

static void test_error_position(void **state)
{
    (void)state;
    const char *text = "{\"value\": [\n  {\"\xc3\xa9\": tru}\n]}";
    struct gr_jscan s;
    gr_jscan_init(&s, text, strlen(text));
    assert_false(gr_jscan_value(&s));
    int line, col;
    gr_jscan_where(&s, &line, &col);
    assert_int_equal(line, 2);
    assert_int_equal(col, 9); /* "é" is one character */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_agrees_with_jansson),
        cmocka_unit_test(test_depth_as_jansson_counts_it),
        cmocka_unit_test(test_decode_and_compare),
        cmocka_unit_test(test_error_position),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
