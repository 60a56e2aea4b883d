/*
 * The control plane's pure parts: the "graph" section and declared
 * subscriptions (every error names file:line:col), the lifetime table,
 * Graph's time stamps, Retry-After, the renewal schedule and backoff, new
 * clientStates, and the managed secrets as ingest checks them.
 */
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

#include "config.h"
#include "graph/client.h"
#include "graph/lifetime.h"
#include "graph/managed.h"
#include "graph/manager.h"
#include "http/ingest.h"
#include "util.h"

#define TAIL "\"handlers\": {\"a\": {\"plugin\": \"file\"}}, \"routes\": []"
#define GRAPH1                                                                                \
    "\"graph\": {\"app_id\": \"app\", \"public_url\": \"https://in.example.com/\", "          \
    "\"tenants\": [{\"id\": \"T1\", \"client_secret_env\": \"S\"}]}, "
#define GRAPH2                                                                                \
    "\"graph\": {\"app_id\": \"app\", \"public_url\": \"https://in.example.com\", "           \
    "\"tenants\": [{\"id\": \"T1\", \"client_secret_env\": \"S\"}, {\"id\": \"T2\", "        \
    "\"client_secret_env\": \"S\"}]}, "

struct error_case {
    const char *text;
    const char *where; /* "t.json:L:C: " */
    const char *what;
};

static const struct error_case errors[] = {
    {"{\"graph\": {\"app_id\": \"a\", \"tenants\": [{\"id\": \"t\", \"client_secret_env\": "
     "\"S\"}], \"base_url\": \"http://graph.microsoft.com/v1.0\"}, " TAIL "}",
     "t.json:1:79: ", "\"base_url\" is \"http://graph.microsoft.com/v1.0\": it must be an https://"},
    {"{\"graph\": {\"app_id\": \"a\", \"tenants\": [{\"id\": \"t\", \"client_secret_env\": "
     "\"S\"}], \"public_url\": \"https://x/?a=1\"}, " TAIL "}",
     "t.json:1:79: ", "without a query"},
    {"{\"graph\": {\"app_id\": \"a\", \"tenants\": [{\"id\": \"t\", \"client_secret_env\": "
     "\"S\"}], \"publicurl\": \"https://x\"}, " TAIL "}",
     "t.json:1:79: ", "unknown key \"publicurl\" in \"graph\"; did you mean \"public_url\"?"},
    {"{\"graph\": {\"app_id\": \"a\"}, " TAIL "}", "t.json:1:2: ",
     "missing required key \"tenants\""},
    {"{\"graph\": {\"tenants\": []}, " TAIL "}", "t.json:1:2: ",
     "missing required key \"app_id\""},
    {"{\"graph\": {\"app_id\": \"a\", \"tenants\": [{\"id\": \"t\"}]}, " TAIL "}",
     "t.json:1:39: ", "graph tenant \"t\" needs exactly one credential"},
    {"{\"graph\": {\"app_id\": \"a\", \"tenants\": [{\"id\": \"t\", \"client_secret_env\": \"S\", "
     "\"client_secret_file\": \"f\"}]}, " TAIL "}",
     "t.json:1:39: ", "needs exactly one credential"},
    {"{\"graph\": {\"app_id\": \"a\", \"tenants\": [{\"id\": \"t\", \"client_certificate_file\": "
     "\"c\"}]}, " TAIL "}",
     "t.json:1:39: ", "\"client_certificate_file\" and \"private_key_file\" go together"},
    {"{\"graph\": {\"app_id\": \"a\", \"tenants\": [{\"id\": \"t\", \"client_secret_env\": "
     "\"S\"},\n {\"id\": \"T\", \"client_secret_env\": \"S\"}]}, " TAIL "}",
     "t.json:2:2: ", "graph tenant \"T\" is listed twice"},
    {"{\"graph\": {\"app_id\": \"a\", \"connect_timeout_s\": 90, \"timeout_s\": 60, "
     "\"tenants\": [{\"id\": \"t\", \"client_secret_env\": \"S\"}]}, " TAIL "}",
     "t.json:1:27: ", "\"connect_timeout_s\" (90) is longer than \"timeout_s\" (60)"},
    /* declarations */
    {"{\"subscriptions\": [{\"resource\": \"/users/u/messages\", \"change_type\": \"created\"}], "
     TAIL "}",
     "t.json:1:21: ", "which needs a \"graph\" section"},
    {"{\"graph\": {\"app_id\": \"a\", \"tenants\": [{\"id\": \"t\", \"client_secret_env\": "
     "\"S\"}]}, \"subscriptions\": [{\"resource\": \"/users/u/messages\", \"change_type\": "
     "\"created\"}], " TAIL "}",
     "t.json:1:2: ", "\"graph\" needs \"public_url\""},
    {"{" GRAPH1 "\"subscriptions\": [{\"resource\": \"/users/u/messages\"}], " TAIL "}",
     "t.json:1:", "missing required key \"change_type\""},
    {"{" GRAPH1 "\"subscriptions\": [{\"resource\": \"/users/u/messages\", \"change_type\": "
     "[\"created\", \"moved\"]}], " TAIL "}",
     "t.json:1:", "change_type \"moved\": use created, updated or deleted, each once"},
    {"{" GRAPH1 "\"subscriptions\": [{\"resource\": \"/users/u/messages\", \"change_type\": "
     "\"resync\"}], " TAIL "}",
     "t.json:1:", "change_type \"resync\": use created, updated or deleted"},
    {"{" GRAPH2 "\"subscriptions\": [{\"resource\": \"/users/u/messages\", \"change_type\": "
     "\"created\"}], " TAIL "}",
     "t.json:1:", "needs \"tenant\": graph.tenants lists more than one"},
    {"{" GRAPH2 "\"subscriptions\": [{\"resource\": \"/users/u/messages\", \"change_type\": "
     "\"created\", \"tenant\": \"T3\"}], " TAIL "}",
     "t.json:1:", "tenant \"T3\" is not in graph.tenants"},
    {"{" GRAPH1 "\"subscriptions\": [{\"resource\": \"/communications/presences/u\", "
     "\"change_type\": \"updated\",\n \"expiration_minutes\": 61}], " TAIL "}",
     "t.json:2:2: ", "\"expiration_minutes\" of subscription \"/communications/presences/u\" "
                     "must be between 1 and 60: Graph keeps a presence subscription at most 60"},
    {"{" GRAPH1 "\"subscriptions\": [{\"resource\": \"/users/u/messages?$select=subject\", "
     "\"change_type\": \"created\", \"include_resource_data\": true, \"certificate_id\": \"c\", "
     "\"expiration_minutes\": 1441}], " TAIL "}",
     "t.json:1:", "must be between 1 and 1440: Graph keeps a message subscription (with "
                  "resource data) at most 1440 minutes"},
    {"{" GRAPH1 "\"subscriptions\": [{\"resource\": \"/users/u/messages\", \"change_type\": "
     "\"created\", \"include_resource_data\": true, \"certificate_id\": \"c\"}], " TAIL "}",
     "t.json:1:", "Outlook includes resource data only with a $select"},
    {"{" GRAPH1 "\"subscriptions\": [{\"resource\": \"/chats/getAllMessages\", \"change_type\": "
     "\"created\", \"include_resource_data\": true}], " TAIL "}",
     "t.json:1:", "it needs \"certificate_id\""},
    {"{" GRAPH1 "\"subscriptions\": [{\"resource\": \"/chats/getAllMessages\", \"change_type\": "
     "\"created\", \"certificate_id\": \"c\"}], " TAIL "}",
     "t.json:1:", "\"certificate_id\" is for subscriptions with \"include_resource_data\": true"},
    {"{" GRAPH1 "\"subscriptions\": [{\"resource\": \"/chats/getAllMessages\", \"change_type\": "
     "\"created\", \"include_resource_data\": true, \"certificate_id\": \"c\"}], " TAIL "}",
     "t.json:1:", "certificate_id \"c\" names no entry of \"decryption_keys\""},
    {"{" GRAPH1 "\"subscriptions\": [{\"resource\": \"/solutions/bookingBusinesses\", "
     "\"change_type\": \"created\"}], " TAIL "}",
     "t.json:1:", "does not know the longest lifetime Graph allows for this resource; set "
                  "\"expiration_minutes\""},
    {"{" GRAPH1 "\"subscriptions\": [{\"resource\": \"/users/u/messages\", \"change_type\": "
     "\"created\"},\n {\"resource\": \"/users/u/messages\", \"change_type\": [\"created\"]}], "
     TAIL "}",
     "t.json:2:2: ", "subscription \"/users/u/messages\" (created, tenant T1) is declared twice"},
    {"{" GRAPH1 "\"subscriptions\": [{\"resource\": \"/users/U/messages\", \"change_type\": "
     "\"created\"},\n {\"resource\": \"users/u/messages\", \"change_type\": \"created\", "
     "\"include_resource_data\": false}], " TAIL "}",
     "t.json:2:2: ", "is declared twice (Graph keeps one subscription per tenant"},
    {"{" GRAPH1 "\"subscriptions\": [{\"id\": \"s\", \"client_state\": \"x\", \"resource\": "
     "\"/users/u/messages\", \"change_type\": \"created\"}], " TAIL "}",
     "t.json:1:", "either names an \"id\""},
    {"{" GRAPH1 "\"subscriptions\": [{\"resource\": \"https://graph.microsoft.com/v1.0/users\", "
     "\"change_type\": \"updated\"}], " TAIL "}",
     "t.json:1:", "a Graph path such as /users/{id}/messages"},
    {"{" GRAPH1 "\"subscriptions\": [{\"resource\": \"/users/u /messages\", "
     "\"change_type\": \"created\"}], " TAIL "}",
     "t.json:1:", "a Graph path such as /users/{id}/messages"}, /* a space outside the query */
    {"{" GRAPH1 "\"subscriptions\": [{\"resource\": \"/users/u/messages?$filter=a\\tb\", "
     "\"change_type\": \"created\"}], " TAIL "}",
     "t.json:1:", "a Graph path such as /users/{id}/messages"}, /* a control character */
    {"{" GRAPH1 "\"subscriptions\": [{\"resource\": \"/me/drive/root\", \"change_type\": "
     "\"created\"}], " TAIL "}",
     "t.json:1:", "Graph notifies driveItem subscriptions of \"updated\" only"},
};

static void test_errors(void **state)
{
    (void)state;
    int failures = 0;
    for (size_t i = 0; i < sizeof errors / sizeof errors[0]; i++) {
        const struct error_case *k = &errors[i];
        struct gr_config *cfg = NULL;
        char *err = NULL;
        if (gr_config_parse("t.json", k->text, strlen(k->text), &cfg, &err) == 0) {
            print_error("case %zu: accepted, expected %s%s\n", i, k->where, k->what);
            gr_config_free(cfg);
            failures++;
            continue;
        }
        if (strncmp(err, k->where, strlen(k->where)) != 0 || !strstr(err, k->what)) {
            print_error("case %zu: got  %s\n         want %s...%s\n", i, err, k->where, k->what);
            failures++;
        }
        free(err);
    }
    assert_int_equal(failures, 0);
}

static void test_declarations(void **state)
{
    (void)state;
    const char *text =
        "{" GRAPH2 "\"client_state\": \"fallback\", \"subscriptions\": ["
        "{\"resource\": \"/users/u/messages\", \"change_type\": [\"deleted\", \"created\"], "
        "\"tenant\": \"t2\"},"
        "{\"resource\": \"/communications/presences/u\", \"change_type\": \"updated\", "
        "\"tenant\": \"T1\", \"expiration_minutes\": 30},"
        "{\"resource\": \"/communications/presences?$filter=id in ('a','b')\", "
        "\"change_type\": \"updated\", \"tenant\": \"T1\"},"
        "{\"resource\": \"/me/drive/root\", \"change_type\": \"updated\", \"tenant\": \"T1\"},"
        "{\"resource\": \"/teams/t/schedule/shifts\", \"change_type\": \"created\", "
        "\"tenant\": \"T1\"},"
        "{\"id\": \"listed\", \"client_state\": \"own\"}], " TAIL "}";
    struct gr_config *cfg;
    char *err = NULL;
    if (gr_config_parse("t.json", text, strlen(text), &cfg, &err) != 0)
        fail_msg("%s", err);
    assert_true(cfg->graph.present);
    assert_string_equal(cfg->graph.public_url, "https://in.example.com");
    assert_string_equal(cfg->graph.base_url, "https://graph.microsoft.com/v1.0");
    assert_string_equal(cfg->graph.login_url, "https://login.microsoftonline.com");
    assert_int_equal(cfg->graph.connect_timeout_s, 10);
    assert_int_equal(cfg->graph.timeout_s, 60);
    assert_int_equal(cfg->graph.write_budget, 1000);
    assert_int_equal(cfg->graph.write_budget_window_s, 20);
    assert_int_equal(cfg->graph.reconcile_interval_s, 3600);
    assert_int_equal(cfg->ndeclarations, 5);
    assert_int_equal(cfg->nsubscriptions, 1);
    const struct gr_declaration *d = &cfg->declarations[0];
    assert_string_equal(d->tenant, "T2"); /* as written in graph.tenants */
    assert_string_equal(d->change_type, "created,deleted"); /* Graph's order */
    assert_int_equal(d->expiration_minutes, 10080);
    assert_int_equal(d->type, GR_RT_MESSAGE);
    assert_false(d->rich);
    assert_string_equal(d->key, "T2\nusers/u/messages\ncreated,deleted\nbasic");
    assert_int_equal(cfg->declarations[1].expiration_minutes, 30);
    assert_string_equal(cfg->declarations[2].resource,
                        "/communications/presences?$filter=id in ('a','b')");
    assert_int_equal(cfg->declarations[2].expiration_minutes, 60);
    assert_int_equal(cfg->declarations[3].expiration_minutes, 42300);
    assert_int_equal(cfg->declarations[4].expiration_minutes, 360);
    gr_config_free(cfg);
}

static void test_lifetimes(void **state)
{
    (void)state;
    static const struct {
        const char *resource;
        bool rich;
        unsigned minutes;
    } cases[] = {
        {"/users/u/messages", false, 10080},
        {"me/mailFolders('inbox')/messages?$select=subject", true, 1440},
        {"/users/u/events", false, 10080},
        {"/users/u/contacts", false, 10080},
        {"/users", false, 41760},
        {"/groups/g/members", false, 41760},
        {"/communications/presences/u", true, 60},
        {"/communications/presences?$filter=id in ('a')", false, 60},
        {"/teams/getAllMessages", true, 4320},
        {"/chats/c/messages", false, 4320},
        {"/teams/t/channels", false, 4320},
        {"/chats", false, 4320},
        {"/teams/t/members", false, 4320},
        {"/me/drive/root", false, 42300},
        {"/drives/d/root", false, 42300},
        {"/sites/s/lists/l", false, 42300},
        {"/security/alerts/a", false, 43200},
        {"/communications/callRecords", false, 4230},
        {"groups/g/conversations", false, 4230},
        {"/me/todo/lists/l/tasks", false, 4230},
        {"/teams/t/schedule/shifts", false, 360},
        {"/reports/healthmonitoring/alerts", false, 42300},
        {"copilot/interactionHistory/getAllEnterpriseInteractions", false, 4320},
        {"/print/printers/p/jobs", false, 4230},
        {"/solutions/bookingBusinesses", false, 0},
        {"/users/u/teamwork/installedApps", false, 4320},
        {"/users/u/settings", false, 0},
        {"/users('u')", false, 41760},
        {"/groups/g/owners", false, 41760},
        {"/groups/g/drive/root", false, 42300},
        {"/sites/s/lists/l/items?$select=blueprint/x", false, 42300},
        {"/me/drive/root:/blueprint/printing:", false, 42300},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        enum gr_rtype type;
        unsigned got = gr_lifetime_max_minutes(cases[i].resource, cases[i].rich, &type);
        if (got != cases[i].minutes)
            fail_msg("%s: %u minutes, want %u", cases[i].resource, got, cases[i].minutes);
    }
}

static void test_times(void **state)
{
    (void)state;
    int64_t ms;
    assert_true(gr_graph_parse_time("2026-12-03T14:05:09.1234567Z", &ms));
    assert_int_equal(ms, INT64_C(1796306709123));
    assert_true(gr_graph_parse_time("2026-12-03T14:05:09Z", &ms));
    assert_int_equal(ms, INT64_C(1796306709000));
    assert_true(gr_graph_parse_time("2026-12-03T15:05:09.5+01:00", &ms));
    assert_int_equal(ms, INT64_C(1796306709500));
    assert_true(gr_graph_parse_time("2026-12-03T06:05:09.9097561-08:00", &ms));
    assert_int_equal(ms, INT64_C(1796306709909));
    assert_false(gr_graph_parse_time("2026-12-03 14:05:09Z", &ms));
    assert_false(gr_graph_parse_time("2026-12-03T14:05:09.12345678Z", &ms));
    assert_false(gr_graph_parse_time("2026-12-03T14:05:09", &ms));
    assert_false(gr_graph_parse_time("2026-13-03T14:05:09Z", &ms));
    assert_false(gr_graph_parse_time("2026-12-03T14:05:09Zjunk", &ms));
    assert_false(gr_graph_parse_time(NULL, &ms));
    char out[GR_RFC3339_LEN];
    gr_rfc3339(INT64_C(1796306709123), out);
    assert_string_equal(out, "2026-12-03T14:05:09.123Z");
}

static void test_retry_after(void **state)
{
    (void)state;
    int64_t now = INT64_C(1796306709000); /* Thu, 03 Dec 2026 14:05:09 GMT */
    assert_int_equal(gr_graph_retry_after_ms("120", now), 120000);
    assert_int_equal(gr_graph_retry_after_ms("0", now), 0);
    assert_int_equal(gr_graph_retry_after_ms("999999", now), 86400000); /* at most a day */
    assert_int_equal(gr_graph_retry_after_ms("Thu, 03 Dec 2026 14:05:39 GMT", now), 30000);
    assert_int_equal(gr_graph_retry_after_ms("Thu, 03 Dec 2026 14:00:00 GMT", now), 0);
    assert_int_equal(gr_graph_retry_after_ms("soon", now), -1);
    assert_int_equal(gr_graph_retry_after_ms("-5", now), -1);
    assert_int_equal(gr_graph_retry_after_ms("", now), -1);
}

static void test_schedule(void **state)
{
    (void)state;
    int64_t h = 3600 * 1000;
    /* two thirds of the granted lifetime, up to 5 % of it earlier */
    assert_int_equal(gr_manager_renewal_due(0, 3 * h, 0.0, 0), 2 * h);
    assert_int_equal(gr_manager_renewal_due(0, 3 * h, 1.0, 0), 2 * h - 3 * h / 20);
    assert_int_equal(gr_manager_renewal_due(1000, 7000, 0.5, 1000), 4850);
    /* a lifetime already spent: not in a loop, a second from now */
    assert_int_equal(gr_manager_renewal_due(0, 10, 0.0, 5000), 6000);
    /* backoff: about 1 s, doubling, to 5 minutes, between half of it and all of it */
    assert_int_equal(gr_manager_backoff_ms(1, 0.0), 500);
    assert_int_equal(gr_manager_backoff_ms(1, 1.0), 1000);
    assert_int_equal(gr_manager_backoff_ms(2, 1.0), 2000);
    assert_int_equal(gr_manager_backoff_ms(4, 0.0), 4000);
    assert_int_equal(gr_manager_backoff_ms(9, 1.0), 256000);
    assert_int_equal(gr_manager_backoff_ms(10, 1.0), 300000);
    assert_int_equal(gr_manager_backoff_ms(1000, 0.0), 150000);
}

static void test_urls(void **state)
{
    (void)state;
    static const char *const allowed[] = {
        "https://graph.microsoft.com/v1.0", "https://in.example.com", "http://127.0.0.1:8080",
        "http://localhost/hooks", "http://[::1]:9/x", "HTTPS://graph.microsoft.us/v1.0"};
    static const char *const refused[] = {
        "http://graph.microsoft.com/v1.0", "http://localhost:1@evil.example/v1.0",
        "https://user:pw@graph.microsoft.com", "http://localhost.evil.example",
        "http://127.0.0.1:80evil", "https://", "https:///path", "ftp://localhost",
        "https://graph microsoft.com", "https://x#frag", "http://127.0.0.2", "https://x\\y"};
    for (size_t i = 0; i < sizeof allowed / sizeof *allowed; i++)
        if (!gr_graph_url_allowed(allowed[i]))
            fail_msg("refused %s", allowed[i]);
    for (size_t i = 0; i < sizeof refused / sizeof *refused; i++)
        if (gr_graph_url_allowed(refused[i]))
            fail_msg("allowed %s", refused[i]);
}

static void test_client_states(void **state)
{
    (void)state;
    char *a = gr_graph_new_client_state(), *b = gr_graph_new_client_state();
    assert_int_equal(strlen(a), 43);
    assert_true(strspn(a, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") == 43);
    assert_string_not_equal(a, b);
    free(a);
    free(b);
}

/* Ingest checks a managed subscription's own secret, never the fallback,
 * and accepts an unknown subscription with a secret being created. */
static void test_managed_secrets(void **state)
{
    (void)state;
    const char *text = "{\"client_state\": \"fallback\", " TAIL "}";
    struct gr_config *cfg;
    char *err = NULL;
    assert_int_equal(gr_config_parse("t.json", text, strlen(text), &cfg, &err), 0);
    struct gr_managed *m = gr_managed_new();
    struct gr_secret own, pending;
    gr_secret_digest("own-secret", 10, &own);
    gr_secret_digest("new-secret", 10, &pending);
    gr_managed_add(m, "MANAGED", own.digest, "k", "t", "/users/u/messages");
    gr_managed_add_pending(m, pending.digest);
    gr_managed_publish(m);
    struct gr_managed *snap = gr_managed_pin();
    assert_non_null(gr_managed_find(snap, "managed"));
    static const struct {
        const char *sub, *secret;
        size_t accepted;
        int dropped_bad;
    } cases[] = {
        {"managed", "own-secret", 1, 0}, {"managed", "fallback", 0, 1},
        {"managed", "new-secret", 0, 1}, {"unknown", "new-secret", 1, 0},
        {"unknown", "fallback", 1, 0},   {"unknown", "own-secret", 0, 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char *body = gr_xprintf("{\"value\": [{\"subscriptionId\": \"%s\", \"clientState\": "
                                "\"%s\", \"changeType\": \"created\"}]}",
                                cases[i].sub, cases[i].secret);
        struct gr_ingest in;
        gr_ingest_parse(cfg, snap, body, strlen(body), &in);
        if (in.nitems != cases[i].accepted ||
            (int)in.dropped[GR_DROP_BAD_CLIENT_STATE] != cases[i].dropped_bad)
            fail_msg("case %zu (%s, %s): %zu accepted", i, cases[i].sub, cases[i].secret,
                     in.nitems);
        gr_ingest_free(&in);
        free(body);
    }
    gr_managed_unpin(snap);
    gr_managed_publish(NULL);
    gr_config_free(cfg);
}

/* A secret file is the secret, one trailing newline stripped; one that
 * group or others can read is refused, as an empty one. */
static void test_secret_files(void **state)
{
    (void)state;
    char dir[] = "/tmp/gr-graph-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char *path = gr_xprintf("%s/secret.txt", dir);
    static const struct {
        const char *content;
        mode_t mode;
        const char *error; /* NULL: accepted */
    } cases[] = {
        {"s3cret\n", 0600, NULL},
        {"s3cret", 0600, NULL},
        {"s3cret\n", 0640, "is readable or writable by group or others (mode 0640)"},
        {"\n", 0600, "secret.txt is empty"},
        {"two\nlines\n", 0600, "must hold the secret on one line"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        FILE *f = fopen(path, "w");
        fputs(cases[i].content, f);
        fclose(f);
        chmod(path, cases[i].mode);
        char *text = gr_xprintf("{\"graph\": {\"app_id\": \"a\", \"tenants\": [{\"id\": \"t\", "
                                "\"client_secret_file\": \"%s\"}]}, " TAIL "}",
                                path);
        struct gr_config *cfg;
        char *err = NULL;
        assert_int_equal(gr_config_parse("t.json", text, strlen(text), &cfg, &err), 0);
        struct gr_check c = {.file = "t.json", .pos = cfg->pos};
        struct gr_graph_client *client = NULL;
        int rc = gr_graph_client_build(&c, &cfg->graph, &client);
        if (cases[i].error) {
            assert_int_equal(rc, -1);
            if (!strstr(c.err, cases[i].error))
                fail_msg("case %zu: %s", i, c.err);
            if (strncmp(c.err, "t.json:1:51: graph tenant \"t\": ", 31) != 0)
                fail_msg("case %zu: %s", i, c.err);
        } else {
            if (rc != 0)
                fail_msg("case %zu: %s", i, c.err);
        }
        free(c.err);
        gr_graph_client_free(client);
        gr_config_free(cfg);
        free(text);
    }
    unlink(path);
    rmdir(dir);
    free(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_errors),         cmocka_unit_test(test_declarations),
        cmocka_unit_test(test_lifetimes),      cmocka_unit_test(test_times),
        cmocka_unit_test(test_retry_after),    cmocka_unit_test(test_schedule),
        cmocka_unit_test(test_client_states),  cmocka_unit_test(test_managed_secrets),
        cmocka_unit_test(test_urls),
        cmocka_unit_test(test_secret_files),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
