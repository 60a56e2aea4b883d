/* Config checking: every error names file:line:col and says what is wrong;
 * valid configs produce the documented defaults. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "config.h"
#include "util.h"

#define MIN_TAIL "\"handlers\": {\"a\": {\"plugin\": \"file\"}}, \"routes\": []"

struct error_case {
    const char *text;
    const char *where; /* expected "t.json:L:C: " prefix */
    const char *what;  /* a substring of the message */
};

static const struct error_case errors[] = {
    {"{\n  \"listen\": {\"port\": 8080},\n  \"routs\": []\n}", "t.json:3:3: ",
     "unknown key \"routs\" in the configuration; did you mean \"routes\"?"},
    {"{\"handlers\": {}, \"routes\": [], \"bogus\": 1}", "t.json:1:32: ",
     "unknown key \"bogus\" in the configuration (known keys: listen, paths"},
    {"{\n\"listen\": {\"port\": \"8080\"}, " MIN_TAIL "}", "t.json:2:12: ",
     "\"port\" must be an integer, not a string"},
    {"{\"listen\": {\"port\": 70000}, " MIN_TAIL "}", "t.json:1:13: ",
     "\"port\" is 70000; it must be between 0 and 65535"},
    {"{\"listen\": {\"address\": \"localhost\"}, " MIN_TAIL "}", "t.json:1:13: ",
     "numeric IPv4 or IPv6 address"},
    {"{\"paths\": {\"notifications\": \"hook\"}, " MIN_TAIL "}", "t.json:1:12: ",
     "must start with '/'"},
    {"{\"paths\": {\"lifecycle\": [\"/metrics\"]}, " MIN_TAIL "}", "t.json:1:12: ",
     "reserved for graphrouter"},
    {"{\"limits\": {\"max_body_bytes\": 10}, " MIN_TAIL "}", "t.json:1:13: ",
     "between 1024 and"},
    {"{\"client_state\": \"\", " MIN_TAIL "}", "t.json:1:2: ", "\"client_state\" is empty"},
    {"{\"subscriptions\": [{\"id\": \"s\", \"client_state\": \"x\"},\n {\"id\": \"S\", "
     "\"client_state\": \"y\"}], " MIN_TAIL "}",
     "t.json:2:2: ", "subscription \"S\" is listed twice"},
    {"{\"subscriptions\": [{\"id\": \"s\"}], " MIN_TAIL "}", "t.json:1:20: ",
     "missing required key \"client_state\""},
    {"{\"subscriptions\": [{\"id\": \"s\", \"client_state\": \"x\", \"secret\": 1}], " MIN_TAIL
     "}",
     "t.json:1:53: ", "unknown key \"secret\" in a subscription"},
    {"{\"log_level\": \"loud\", " MIN_TAIL "}", "t.json:1:2: ", "use error, warn, info or debug"},
    {"{\"routes\": []}", "t.json:1:1: ", "missing required key \"handlers\""},
    {"{\"handlers\": {}}", "t.json:1:1: ", "missing required key \"routes\""},
    {"{\"handlers\": {\"bad name\": {\"plugin\": \"file\"}}, \"routes\": []}", "t.json:1:15: ",
     "handler name \"bad name\" must be"},
    {"{\"handlers\": {\"a\": {\"plugin\": \"../x\"}}, \"routes\": []}", NULL, NULL},
    {"{\"handlers\": {\"a\": {\"plugin\": \"f i l e\"}}, \"routes\": []}", "t.json:1:21: ",
     "use a bare name such as \"file\""},
    {"{\"handlers\": {\"a\": {\"plugin\": \"file\", \"confg\": {}}}, \"routes\": []}",
     "t.json:1:39: ", "unknown key \"confg\" in handler \"a\"; did you mean \"config\"?"},
    {"{\"handlers\": {\"a\": {\"plugin\": \"file\", \"retry\": {\"max_attempts\": 0}}}, \"routes\": "
     "[]}",
     "t.json:1:49: ", "\"max_attempts\" is 0"},
    {"{\"handlers\": {\"a\": {\"plugin\": \"file\", \"retry\": {\"initial_backoff_ms\": 5000, "
     "\"max_backoff_ms\": 10}}}, \"routes\": []}",
     "t.json:1:77: ", "is below \"initial_backoff_ms\""},
    {"{\"handlers\": {\"a\": {\"plugin\": \"file\", \"timeout_s\": 86401}}, \"routes\": []}",
     "t.json:1:39: ", "\"timeout_s\" is 86401"},
    {"{\"handlers\": {\"a\": {\"plugin\": \"file\", \"timeout_s\": -1}}, \"routes\": []}",
     "t.json:1:39: ", "\"timeout_s\" is -1"},
    {"{\"handlers\": {\"a\": {\"plugin\": \"exec\", \"timeout_s\": 60, \"config\": "
     "{\"timeout_ms\": 60000}}}, \"routes\": []}",
     "t.json:1:39: ", "\"timeout_s\" (60 s) of handler \"a\" must be longer than its plugin's "
     "\"timeout_ms\" (60000 ms)"},
    {"{\"handlers\": {\"a\": {\"plugin\": 5}}, \"routes\": []}", "t.json:1:21: ",
     "\"plugin\" must be a string, not an integer"},
    /* routes */
    {"{\"handlers\": {\"a\": {\"plugin\": \"file\"}},\n \"routes\": [{\"name\": \"r\", \"to\": "
     "[\"a\", \"b\"]}]}",
     "t.json:2:39: ", "route \"r\" sends to handler \"b\", which is not defined in \"handlers\""},
    {"{\"handlers\": {\"a\": {\"plugin\": \"file\"}}, \"routes\": [{\"to\": [\"a\"]}]}",
     "t.json:1:52: ", "missing required key \"name\""},
    {"{\"handlers\": {\"a\": {\"plugin\": \"file\"}}, \"routes\": [{\"name\": \"r\"}]}",
     "t.json:1:52: ", "route \"r\" has no \"to\""},
    {"{\"handlers\": {\"a\": {\"plugin\": \"file\"}}, \"routes\": [\n {\"name\": \"r\", \"match\": "
     "{\"resource_type\": [\"mesage\"]}, \"to\": \"a\"}]}",
     "t.json:2:26: ", "unknown resource_type \"mesage\""},
    {"{\"handlers\": {\"a\": {\"plugin\": \"file\"}}, \"routes\": [{\"name\": \"r\", \"match\": "
     "{\"change_type\": \"moved\"}, \"to\": \"a\"}]}",
     "t.json:1:76: ", "unknown change_type \"moved\""},
    {"{\"handlers\": {\"a\": {\"plugin\": \"file\"}}, \"routes\": [{\"name\": \"r\", \"match\": "
     "{\"tenant\": [\"t\"]}, \"to\": \"a\"}]}",
     "t.json:1:76: ", "unknown key \"tenant\" in the match of route \"r\""},
    {"{\"handlers\": {\"a\": {\"plugin\": \"file\"}}, \"routes\": [{\"name\": \"r\", \"match\": "
     "{\"tenant_id\": []}, \"to\": \"a\"}]}",
     "t.json:1:76: ", "is an empty list"},
    {"{\"handlers\": {\"a\": {\"plugin\": \"file\"}}, \"routes\": [{\"name\": \"r\", \"to\": "
     "\"a\"},\n {\"name\": \"r\", \"to\": \"a\"}]}",
     "t.json:2:2: ", "two routes are named \"r\""},
    {"{\"handlers\": {\"a\": {\"plugin\": \"file\"}}, \"routes\": [{\"name\": \"d1\", \"default\": "
     "true, \"to\": \"a\"},\n {\"name\": \"d2\", \"default\": true, \"to\": \"a\"}]}",
     "t.json:2:2: ", "only one route can be the default"},
    {"{\"handlers\": {\"a\": {\"plugin\": \"file\"}}, \"routes\": [{\"name\": \"d\", \"default\": "
     "true, \"match\": {}, \"to\": \"a\"}]}",
     "t.json:1:83: ", "cannot have a \"match\""},
    {"{\"handlers\": {\"a\": {\"plugin\": \"file\"}}, \"routes\": [{\"name\": \"r\", \"continue\": "
     "\"no\", \"to\": \"a\"}]}",
     "t.json:1:66: ", "\"continue\" must be true or false"},
    /* JSON syntax errors keep their position and never echo the text near them */
    {"{\"client_state\": \"top\\qsecret\"}", "t.json:1:", "invalid escape"},
    {"{\"handlers\": {}, \"handlers\": {}, \"routes\": []}", "t.json:1:", "duplicate object key"},
    {"[1, 2]", "t.json:1:1: ", "must be a JSON object"},
    /* multi-byte characters count as one column */
    {"{\"//\": \"h\xc3\xa9h\xc3\xa9\", \"x\": 1, " MIN_TAIL "}", "t.json:1:16: ",
     "unknown key \"x\""},
};

static void test_errors(void **state)
{
    (void)state;
    int failures = 0;
    for (size_t i = 0; i < sizeof errors / sizeof errors[0]; i++) {
        const struct error_case *k = &errors[i];
        struct gr_config *cfg = NULL;
        char *err = NULL;
        int rc = gr_config_parse("t.json", k->text, strlen(k->text), &cfg, &err);
        if (!k->where) { /* a valid config */
            if (rc != 0)
                fail_msg("case %zu: unexpected error %s", i, err);
            gr_config_free(cfg);
            continue;
        }
        if (rc == 0) {
            print_error("case %zu: accepted, expected %s%s\n", i, k->where, k->what);
            failures++;
            continue;
        }
        if (strncmp(err, k->where, strlen(k->where)) != 0 || !strstr(err, k->what)) {
            print_error("case %zu: got  %s\n         want %s...%s\n", i, err, k->where, k->what);
            failures++;
        }
        assert_null(strstr(err, "qsecret")); /* secrets never reach messages */
        free(err);
    }
    assert_int_equal(failures, 0);
}

static void test_defaults(void **state)
{
    (void)state;
    const char *text = "{" MIN_TAIL "}";
    struct gr_config *cfg;
    char *err = NULL;
    assert_int_equal(gr_config_parse("t.json", text, strlen(text), &cfg, &err), 0);
    assert_string_equal(cfg->listen_address, "127.0.0.1");
    assert_int_equal(cfg->listen_port, 8080);
    assert_int_equal(cfg->n_notification_paths, 1);
    assert_string_equal(cfg->notification_paths[0], "/notifications");
    assert_string_equal(cfg->lifecycle_paths[0], "/lifecycle");
    assert_int_equal(cfg->max_body_bytes, 4194304);
    assert_int_equal(cfg->max_connections, 4096);
    assert_int_equal(cfg->max_connections_per_ip, 128);
    assert_int_equal(cfg->header_timeout_s, 10);
    assert_int_equal(cfg->body_timeout_s, 30);
    assert_int_equal(cfg->connection_timeout_s, 30);
    assert_null(cfg->allow_from);
    assert_null(cfg->trusted_proxies);
    assert_int_equal(cfg->max_pending, 100000);
    assert_int_equal(cfg->workers, 4);
    assert_false(cfg->has_fallback_secret);
    assert_int_equal(cfg->handlers[0].retry.max_attempts, 10);
    assert_int_equal(cfg->handlers[0].retry.initial_backoff_ms, 1000);
    assert_int_equal(cfg->handlers[0].retry.max_backoff_ms, 600000);
    assert_int_equal(cfg->handlers[0].timeout_s, 300);
    assert_int_equal(cfg->handlers[0].concurrency, 0);
    assert_string_equal(cfg->handlers[0].plugin_path, GR_DEFAULT_PLUGIN_DIR "/file.so");
    gr_config_free(cfg);
}

/* timeout_s leaves room for the plugin's own "timeout_ms", when it has one. */
static void test_timeout_follows_the_plugins_own(void **state)
{
    (void)state;
    static const struct {
        const char *handler;
        unsigned timeout_s;
    } cases[] = {
        {"{\"plugin\": \"exec\", \"config\": {\"timeout_ms\": 30000}}", 300},
        {"{\"plugin\": \"exec\", \"config\": {\"timeout_ms\": 600000}}", 660},
        {"{\"plugin\": \"exec\", \"config\": {\"timeout_ms\": 600001}}", 661},
        {"{\"plugin\": \"exec\", \"timeout_s\": 61, \"config\": {\"timeout_ms\": 60000}}", 61},
        {"{\"plugin\": \"exec\", \"timeout_s\": 0, \"config\": {\"timeout_ms\": 60000}}", 0},
        {"{\"plugin\": \"http\", \"config\": {\"timeout_ms\": \"soon\"}}", 300},
        {"{\"plugin\": \"http\", \"config\": {\"timeout_ms\": 9223372036854775807}}", 86400},
        {"{\"plugin\": \"http\", \"timeout_s\": 0, \"config\": {\"timeout_ms\": "
         "9223372036854775807}}", 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char *text = gr_xprintf("{\"handlers\": {\"a\": %s}, \"routes\": []}", cases[i].handler);
        struct gr_config *cfg;
        char *err = NULL;
        assert_int_equal(gr_config_parse("t.json", text, strlen(text), &cfg, &err), 0);
        assert_int_equal(cfg->handlers[0].timeout_s, cases[i].timeout_s);
        gr_config_free(cfg);
        free(text);
    }
}

static void test_secrets(void **state)
{
    (void)state;
    const char *text = "{\"client_state\": \"fallback\", \"subscriptions\": ["
                       "{\"id\": \"B-SUB\", \"client_state\": \"own-b\"},"
                       "{\"id\": \"a-sub\", \"client_state\": \"own-a\"}], " MIN_TAIL "}";
    struct gr_config *cfg;
    char *err = NULL;
    assert_int_equal(gr_config_parse("t.json", text, strlen(text), &cfg, &err), 0);
    const struct gr_subscription *b = gr_config_subscription(cfg, "b-sub");
    assert_non_null(b);
    assert_true(gr_secret_matches(&b->secret, "own-b", 5));
    assert_false(gr_secret_matches(&b->secret, "own-B", 5));
    assert_false(gr_secret_matches(&b->secret, "own-b ", 6));
    assert_false(gr_secret_matches(&b->secret, "fallback", 8));
    assert_non_null(gr_config_subscription(cfg, "A-SUB"));
    assert_null(gr_config_subscription(cfg, "c-sub"));
    assert_true(gr_secret_matches(&cfg->fallback_secret, "fallback", 8));
    gr_config_free(cfg);
}

static void test_paths_and_plugins(void **state)
{
    (void)state;
    const char *text = "{\"paths\": {\"notifications\": [\"/a\", \"/b\"], \"lifecycle\": \"/a\"},"
                       " \"plugin_dir\": \"/opt/p\","
                       " \"handlers\": {\"x\": {\"plugin\": \"mail\"}, \"y\": {\"plugin\": "
                       "\"./y.so\"}}, \"routes\": []}";
    struct gr_config *cfg;
    char *err = NULL;
    assert_int_equal(gr_config_parse("t.json", text, strlen(text), &cfg, &err), 0);
    assert_int_equal(cfg->n_notification_paths, 2);
    assert_string_equal(cfg->notification_paths[1], "/b");
    assert_string_equal(cfg->lifecycle_paths[0], "/a");
    assert_string_equal(cfg->handlers[0].plugin_path, "/opt/p/mail.so");
    assert_string_equal(cfg->handlers[1].plugin_path, "./y.so");
    assert_int_equal(gr_config_handler_index(cfg, "y"), 1);
    assert_int_equal(gr_config_handler_index(cfg, "z"), -1);
    gr_config_free(cfg);
}

static void test_example_config_is_valid(void **state)
{
    (void)state;
    struct gr_config *cfg;
    char *err = NULL;
    if (gr_config_load(GR_SOURCE_DIR "/config/graphrouter.json", &cfg, &err) != 0)
        fail_msg("%s", err);
    assert_true(cfg->nhandlers >= 5);
    gr_config_free(cfg);
}

/* Found by fuzzing: jansson accepts a NUL byte after a number (the position
 * scanner used to loop forever on it). A NUL byte is refused where it is. */
static void test_nul_byte(void **state)
{
    (void)state;
    static const char text[] = "{\"workers\": 9\0, \"handlers\": {}, \"routes\": []}";
    struct gr_config *cfg;
    char *err = NULL;
    assert_int_equal(gr_config_parse("t.json", text, sizeof text - 1, &cfg, &err), -1);
    assert_string_equal(err, "t.json:1:14: NUL byte in the configuration");
    free(err);
    assert_int_equal(gr_config_parse("t.json", "[9\0]", 4, &cfg, &err), -1);
    assert_string_equal(err, "t.json:1:3: NUL byte in the configuration");
    free(err);
}

static void test_missing_file(void **state)
{
    (void)state;
    struct gr_config *cfg;
    char *err = NULL;
    assert_int_equal(gr_config_load("/nonexistent/graphrouter.json", &cfg, &err), -1);
    assert_string_equal(err, "/nonexistent/graphrouter.json: cannot open: No such file or directory");
    free(err);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_timeout_follows_the_plugins_own),
        cmocka_unit_test(test_secrets),
        cmocka_unit_test(test_paths_and_plugins),
        cmocka_unit_test(test_example_config_is_valid),
        cmocka_unit_test(test_nul_byte),
        cmocka_unit_test(test_missing_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
