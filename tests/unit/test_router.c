/* Routing semantics: ordered evaluation, fan-out, "continue": false, the
 * default route, unrouted items, and every match key. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "config.h"
#include "util.h"

static const char *config_text =
    "{\"handlers\": {\"mail\": {\"plugin\": \"x\"}, \"teams\": {\"plugin\": \"x\"},"
    "  \"audit\": {\"plugin\": \"x\"}, \"archive\": {\"plugin\": \"x\"}, \"tenant_b\": {\"plugin\": "
    "\"x\"}},"
    " \"routes\": ["
    "  {\"name\": \"outlook\", \"match\": {\"resource_type\": [\"message\", \"event\"], "
    "\"change_type\": [\"created\", \"updated\"]}, \"to\": [\"mail\", \"audit\"]},"
    "  {\"name\": \"chat\", \"match\": {\"resource_type\": \"chatMessage\"}, \"to\": [\"teams\"], "
    "\"continue\": false},"
    "  {\"name\": \"b-only\", \"match\": {\"tenant_id\": [\"TENANT-B\"]}, \"to\": [\"tenant_b\"]},"
    "  {\"name\": \"one-sub\", \"match\": {\"subscription_id\": [\"sub-1\", \"sub-2\"], "
    "\"resource\": \"users/*/messages/*\"}, \"to\": [\"audit\"]},"
    "  {\"name\": \"everything\", \"match\": {}, \"to\": [\"audit\"]},"
    "  {\"name\": \"rest\", \"default\": true, \"to\": [\"archive\"]}"
    "]}";

/* Without the catch-all, to exercise the default route. */
static const char *config_no_catchall =
    "{\"handlers\": {\"mail\": {\"plugin\": \"x\"}, \"archive\": {\"plugin\": \"x\"}},"
    " \"routes\": ["
    "  {\"name\": \"rest\", \"default\": true, \"to\": [\"archive\"]},"
    "  {\"name\": \"outlook\", \"match\": {\"resource_type\": \"message\"}, \"to\": \"mail\"}"
    "]}";

static const char *config_no_default =
    "{\"handlers\": {\"mail\": {\"plugin\": \"x\"}},"
    " \"routes\": [{\"name\": \"outlook\", \"match\": {\"resource_type\": \"message\"}, \"to\": "
    "\"mail\"}]}";

struct route_case {
    const char *config;
    struct gr_route_input in;
    const char *handlers; /* expected targets, space-separated, config order */
    const char *fired;    /* expected routes, space-separated */
};

#define IN(type, change, tenant, sub, resource) {type, change, tenant, sub, resource}

static const struct route_case cases[] = {
    /* fan-out: outlook (two handlers) + everything; audit receives once */
    {NULL, IN(GR_RT_MESSAGE, "created", "t", "s", "users/u/messages/m"), "mail audit",
     "outlook everything"},
    /* change_type is case-insensitive; deleted is not in the route */
    {NULL, IN(GR_RT_EVENT, "Updated", "t", "s", "x"), "mail audit", "outlook everything"},
    {NULL, IN(GR_RT_EVENT, "deleted", "t", "s", "x"), "audit", "everything"},
    /* continue: false stops after the chat route */
    {NULL, IN(GR_RT_CHAT_MESSAGE, "created", "TENANT-B", "s", "x"), "teams", "chat"},
    /* tenant match, case-insensitive GUIDs */
    {NULL, IN(GR_RT_PRESENCE, "updated", "tenant-b", "s", "x"), "audit tenant_b",
     "b-only everything"},
    /* subscription list + resource glob, both must hold */
    {NULL, IN(GR_RT_MESSAGE, "deleted", "t", "sub-2", "Users/U1/Messages/M1"), "audit",
     "one-sub everything"},
    {NULL, IN(GR_RT_LIFECYCLE, NULL, "t", "sub-2", NULL), "audit", "everything"},
    /* the default route fires only when nothing else did */
    {"no_catchall", IN(GR_RT_MESSAGE, "created", "t", "s", "x"), "mail", "outlook"},
    {"no_catchall", IN(GR_RT_TEAM, "created", "t", "s", "x"), "archive", "rest"},
    /* nothing matches and there is no default: unrouted */
    {"no_default", IN(GR_RT_TEAM, "created", "t", "s", "x"), "", ""},
};

static void join(struct gr_buf *b, const char *s)
{
    if (b->len)
        gr_buf_puts(b, " ");
    gr_buf_puts(b, s);
}

static void test_cases(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const struct route_case *k = &cases[i];
        const char *text = !k->config                             ? config_text
                           : strcmp(k->config, "no_catchall") == 0 ? config_no_catchall
                                                                  : config_no_default;
        struct gr_config *cfg;
        char *err = NULL;
        if (gr_config_parse("r.json", text, strlen(text), &cfg, &err) != 0)
            fail_msg("%s", err);
        bool targets[8] = {0}, fired[8] = {0};
        size_t n = gr_router_match(&cfg->routes, &k->in, targets, fired);
        struct gr_buf got_t = {0}, got_f = {0};
        gr_buf_puts(&got_t, "");
        gr_buf_puts(&got_f, "");
        for (size_t h = 0; h < cfg->nhandlers; h++)
            if (targets[h])
                join(&got_t, cfg->handlers[h].name);
        size_t nf = 0;
        for (size_t r = 0; r < cfg->routes.n; r++)
            if (fired[r]) {
                join(&got_f, cfg->routes.v[r].name);
                nf++;
            }
        if (strcmp(got_t.data, k->handlers) != 0 || strcmp(got_f.data, k->fired) != 0 || n != nf)
            fail_msg("case %zu: handlers [%s] routes [%s] (n=%zu), expected [%s] [%s]", i,
                     got_t.data, got_f.data, n, k->handlers, k->fired);
        gr_buf_free(&got_t);
        gr_buf_free(&got_f);
        gr_config_free(cfg);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_cases)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
