/* The configuration's secret resolver (core/secret.c): a string, a file or
 * an environment variable; every failure has its position and never shows
 * the secret. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "jsonpos.h"
#include "secret.h"
#include "util.h"

static char dir[] = "/tmp/gr-secret-XXXXXX";

static void put(const char *name, const char *content, mode_t mode)
{
    char *path = gr_xprintf("%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(content, f);
    fclose(f);
    assert_int_equal(chmod(path, mode), 0);
    free(path);
}

struct resolved {
    int rc;
    char *value;
    size_t len;
    char *err;
};

/* Resolve "s" in `text` (a JSON object), with "t.json" positions. */
static struct resolved resolve(const char *text)
{
    json_error_t jerr;
    json_t *root = json_loads(text, JSON_ALLOW_NUL, &jerr);
    assert_non_null(root);
    struct gr_jsonpos *pos = gr_jsonpos_build(text, strlen(text), root);
    struct gr_check c = {.file = "t.json", .pos = pos};
    struct resolved r = {0};
    r.rc = gr_secret_resolve(&c, root, "s", false, "thing", &r.value, &r.len);
    r.err = c.err;
    gr_jsonpos_free(pos);
    json_decref(root);
    return r;
}

static void done(struct resolved *r)
{
    gr_secret_wipe(r->value, r->len);
    free(r->err);
}

static void accepts(const char *text, const char *want)
{
    struct resolved r = resolve(text);
    if (r.rc != 0)
        fail_msg("%s: %s", text, r.err);
    assert_int_equal(r.len, strlen(want));
    assert_string_equal(r.value, want);
    assert_null(r.err);
    done(&r);
}

static void refuses(const char *text, const char *where, const char *what, const char *secret)
{
    struct resolved r = resolve(text);
    assert_int_equal(r.rc, -1);
    assert_null(r.value);
    assert_non_null(r.err);
    if (strncmp(r.err, where, strlen(where)) != 0 || !strstr(r.err, what))
        fail_msg("%s: got \"%s\", want \"%s...%s\"", text, r.err, where, what);
    if (secret && strstr(r.err, secret))
        fail_msg("%s: the message shows the secret: %s", text, r.err);
    done(&r);
}

static void test_string(void **state)
{
    (void)state;
    accepts("{\"s\": \"inline\"}", "inline");
    struct resolved r = resolve("{\"s\": null}"); /* absent: nothing, no error */
    assert_int_equal(r.rc, 0);
    assert_null(r.value);
    assert_null(r.err);
    refuses("{\"s\": \"\"}", "t.json:1:2: ", "thing: \"s\" is empty", NULL);
    refuses("{\"s\": \"a\\u0000b\"}", "t.json:1:2: ", "holds a NUL character", NULL);
}

static void test_file(void **state)
{
    (void)state;
    put("echo.txt", "from-echo\n", 0600);
    put("crlf.txt", "from-windows\r\n", 0600);
    put("bare.txt", "no-newline", 0400);
    put("two.txt", "two-newlines\n\n", 0600);
    put("lines.txt", "first-line\nsecond\n", 0600);
    put("empty.txt", "", 0600);
    put("newline.txt", "\n", 0600);
    put("open.txt", "readable-by-all\n", 0644);
    char *t;
#define FILE_CASE(name) (t = gr_xprintf("{\"s\": {\"file\": \"%s/%s\"}}", dir, name))
    accepts(FILE_CASE("echo.txt"), "from-echo"), free(t);
    accepts(FILE_CASE("crlf.txt"), "from-windows"), free(t);
    accepts(FILE_CASE("bare.txt"), "no-newline"), free(t);
    /* only one trailing newline goes; what is left is not one line */
    refuses(FILE_CASE("two.txt"), "t.json:1:8: ", "must hold the secret on one line",
            "two-newlines"), free(t);
    refuses(FILE_CASE("lines.txt"), "t.json:1:8: ", "must hold the secret on one line",
            "first-line"), free(t);
    refuses(FILE_CASE("empty.txt"), "t.json:1:8: ", "empty.txt is empty", NULL), free(t);
    refuses(FILE_CASE("newline.txt"), "t.json:1:8: ", "newline.txt is empty", NULL), free(t);
    refuses(FILE_CASE("open.txt"), "t.json:1:8: ",
            "open.txt is readable or writable by group or others (mode 0644)",
            "readable-by-all"), free(t);
    refuses(FILE_CASE("missing.txt"), "t.json:1:8: ",
            "thing: cannot open", NULL), free(t);
    refuses(FILE_CASE("missing.txt"), "t.json:1:8: ", "No such file or directory", NULL), free(t);
#undef FILE_CASE
    /* a relative path is relative to the working directory */
    char *cwd = getcwd(NULL, 0);
    assert_int_equal(chdir(dir), 0);
    accepts("{\"s\": {\"file\": \"echo.txt\"}}", "from-echo");
    assert_int_equal(chdir(cwd), 0);
    free(cwd);
    refuses("{\"s\": {\"file\": \"\"}}", "t.json:1:8: ", "\"file\" names no file", NULL);
    refuses("{\"s\": {\"file\": 3}}", "t.json:1:8: ", "\"file\" of \"s\" must be a string", NULL);
}

static void test_env(void **state)
{
    (void)state;
    setenv("GR_TEST_SECRET", "from-the-env", 1);
    setenv("GR_TEST_EMPTY", "", 1);
    setenv("GR_TEST_LINES", "env-line\nother", 1);
    unsetenv("GR_TEST_UNSET");
    accepts("{\"s\": {\"env\": \"GR_TEST_SECRET\"}}", "from-the-env");
    accepts("{\"s\": {\"//\": \"a comment\", \"env\": \"GR_TEST_SECRET\"}}", "from-the-env");
    refuses("{\"s\": {\"env\": \"GR_TEST_UNSET\"}}", "t.json:1:8: ",
            "thing: the environment variable GR_TEST_UNSET is not set", NULL);
    refuses("{\"s\": {\"env\": \"GR_TEST_EMPTY\"}}", "t.json:1:8: ",
            "the environment variable GR_TEST_EMPTY is empty", NULL);
    refuses("{\"s\": {\"env\": \"GR_TEST_LINES\"}}", "t.json:1:8: ", "on one line", "env-line");
    refuses("{\"s\": {\"env\": \"\"}}", "t.json:1:8: ", "names no environment variable", NULL);
}

static void test_shapes(void **state)
{
    (void)state;
    static const char *const want = "\"s\" must be the secret as a string, {\"file\": \"/path\"} "
                                    "or {\"env\": \"NAME\"}, not ";
    static const struct {
        const char *text, *kind;
    } cases[] = {
        {"{\"s\": 42}", "a number"},
        {"{\"s\": true}", "a boolean"},
        {"{\"s\": [\"x\"]}", "an array"},
        {"{\"s\": {}}", "an object without \"file\" or \"env\""},
        {"{\"s\": {\"path\": \"x\"}}", "an object without \"file\" or \"env\""},
        {"{\"s\": {\"file\": \"a\", \"env\": \"B\"}}", "an object with more than one key"},
        {"{\"s\": {\"env\": \"B\", \"extra\": 1}}", "an object with more than one key"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char *what = gr_xprintf("%s%s", want, cases[i].kind);
        refuses(cases[i].text, "t.json:1:2: ", what, NULL);
        free(what);
    }
    /* required */
    json_t *root = json_object();
    struct gr_check c = {.file = "t.json"};
    char *v = NULL;
    size_t len = 0;
    assert_int_equal(gr_secret_resolve(&c, root, "s", true, NULL, &v, &len), -1);
    assert_non_null(strstr(c.err, "missing required key \"s\""));
    free(c.err);
    json_decref(root);
}

/* Strings noted as secrets are overwritten before jansson frees them. */
static void test_nodes_wipe(void **state)
{
    (void)state;
    json_t *obj = json_pack("{s:s, s:i}", "secret", "wipe-me", "n", 1);
    struct gr_secret_nodes l = {0};
    gr_secret_nodes_add(&l, obj, "secret");
    gr_secret_nodes_add(&l, obj, "n");       /* not a string: ignored */
    gr_secret_nodes_add(&l, obj, "missing"); /* absent: ignored */
    assert_int_equal(l.n, 1);
    json_t *s = json_incref(json_object_get(obj, "secret")); /* to look at it after */
    gr_secret_nodes_wipe(&l);
    assert_int_equal(l.n, 0);
    assert_null(l.v);
    assert_int_equal(json_string_length(s), 7);
    assert_memory_equal(json_string_value(s), "\0\0\0\0\0\0\0", 7);
    json_decref(s);
    json_decref(obj);
}

int main(void)
{
    if (!mkdtemp(dir))
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_string), cmocka_unit_test(test_file), cmocka_unit_test(test_env),
        cmocka_unit_test(test_shapes), cmocka_unit_test(test_nodes_wipe),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    char *cmd = gr_xprintf("rm -rf %s", dir);
    if (system(cmd) != 0)
        rc = rc ? rc : 1;
    free(cmd);
    return rc;
}
