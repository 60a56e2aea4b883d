/* The request path's batch handling: 400 reasons, and per-item clientState
 * decisions (fallback, per-subscription, wrong, missing, no secret) within
 * one mixed batch. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "http/ingest.h"
#include "util.h"

static const char *config_text =
    "{\"client_state\": \"fallback-secret\","
    " \"subscriptions\": [{\"id\": \"listed\", \"client_state\": \"own-secret\"}],"
    " \"handlers\": {}, \"routes\": []}";

static struct gr_config *load(const char *text)
{
    struct gr_config *cfg;
    char *err = NULL;
    if (gr_config_parse("i.json", text, strlen(text), &cfg, &err) != 0)
        fail_msg("%s", err);
    return cfg;
}

static void test_bad_bodies(void **state)
{
    (void)state;
    struct gr_config *cfg = load(config_text);
    static const struct {
        const char *body, *reason;
    } bad[] = {
        {"", "not valid JSON"},
        {"{\"value\": [", "not valid JSON"},
        {"[1]", "no \"value\" array"},
        {"{\"value\": {}}", "no \"value\" array"},
        {"{\"values\": []}", "no \"value\" array"},
        {"{\"specversion\": \"1.0\", \"data\": {}}", "CloudEvent"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct gr_ingest in;
        gr_ingest_parse(cfg, NULL, bad[i].body, strlen(bad[i].body), &in);
        assert_int_equal(in.status, 400);
        assert_non_null(strstr(in.reason, bad[i].reason));
        assert_null(strchr(in.reason, '\n'));
        gr_ingest_free(&in);
    }
    struct gr_ingest in;
    gr_ingest_parse(cfg, NULL, "{\"value\": []}", 13, &in);
    assert_int_equal(in.status, 202);
    assert_int_equal(in.nitems, 0);
    gr_ingest_free(&in);
    gr_config_free(cfg);
}

static void test_mixed_batch(void **state)
{
    (void)state;
    struct gr_config *cfg = load(config_text);
    const char *body =
        "{\"value\": ["
        "{\"subscriptionId\": \"other\", \"clientState\": \"fallback-secret\", \"n\": 0},"
        "{\"subscriptionId\": \"listed\", \"clientState\": \"own-secret\", \"n\": 1},"
        "{\"subscriptionId\": \"listed\", \"clientState\": \"fallback-secret\", \"n\": 2},"
        "{\"subscriptionId\": \"other\", \"clientState\": \"wrong\", \"n\": 3},"
        "{\"subscriptionId\": \"other\", \"n\": 4},"
        "{\"subscriptionId\": \"other\", \"clientState\": null, \"n\": 5},"
        "\"not an object\","
        "{\"clientState\": \"fallback-secret\"},"
        "{\"subscriptionId\": \"NA\", \"clientState\": \"NA\", \"changeType\": \"Validation: x\"},"
        "{\"SubscriptionId\": \"LISTED\", \"ClientState\": \"own-secret\", \"n\": 9}"
        "]}";
    struct gr_ingest in;
    gr_ingest_parse(cfg, NULL, body, strlen(body), &in);
    assert_int_equal(in.status, 202);
    assert_int_equal(in.received, 10);
    assert_int_equal(in.nitems, 3);
    /* each item's own text, without its clientState member (in any case) */
    assert_string_equal(in.items[0].body, "{\"subscriptionId\": \"other\",\"n\": 0}");
    assert_string_equal(in.items[1].body, "{\"subscriptionId\": \"listed\",\"n\": 1}");
    assert_string_equal(in.items[2].body, "{\"SubscriptionId\": \"LISTED\",\"n\": 9}");
    assert_int_equal(in.items[0].len, strlen(in.items[0].body));
    assert_false(in.items[0].rich);
    assert_null(in.tokens); /* no rich item: the tokens are not even read */
    assert_int_equal(in.dropped[GR_DROP_BAD_CLIENT_STATE], 2);
    assert_int_equal(in.dropped[GR_DROP_MISSING_CLIENT_STATE], 2);
    assert_int_equal(in.dropped[GR_DROP_MALFORMED_ITEM], 2);
    assert_int_equal(in.dropped[GR_DROP_VALIDATION_MESSAGE], 1);
    assert_int_equal(in.dropped[GR_DROP_NO_SECRET], 0);
    gr_ingest_free(&in);
    gr_config_free(cfg);
}

/* Members are read as a worker reads them from jansson's tree: the key spelt
 * exactly so wins over other spellings, a repeated key's last value counts,
 * escapes in keys are decoded; every member named clientState in any
 * spelling is left out of the stored text. */
static void test_members_as_jansson_reads_them(void **state)
{
    (void)state;
    struct gr_config *cfg = load(config_text);
    const char *body =
        "{\"value\": [{\"subscriptionId\": \"other\", \"ClientState\": \"fallback-secret\","
        " \"clientState\": \"wrong\", \"clientState\": \"fallback-secret\", \"n\": 1},"
        "{\"subscriptionId\": \"other\", \"client\\u0053tate\": \"wrong\", "
        "\"CLIENTSTATE\": \"fallback-secret\"},"
        "{\"subscriptionId\": \"other\", \"CLIENTSTATE\": \"fallback-secret\", "
        "\"clientstate\": \"wrong\", \"n\": [1, {\"clientState\": \"kept: not a member of the item\"}]}"
        "], \"value\": \"the last value counts\"}";
    struct gr_ingest in;
    gr_ingest_parse(cfg, NULL, body, strlen(body), &in);
    assert_int_equal(in.status, 400); /* the last "value" is not an array */
    gr_ingest_free(&in);
    char *one = gr_xstrdup(body);
    *strstr(one, "], \"value\"") = '\0';
    char *fixed = gr_xprintf("%s]}", one);
    gr_ingest_parse(cfg, NULL, fixed, strlen(fixed), &in);
    assert_int_equal(in.status, 202);
    assert_int_equal(in.received, 3);
    assert_int_equal(in.dropped[GR_DROP_BAD_CLIENT_STATE], 1); /* exact "clientState" is "wrong" */
    assert_int_equal(in.nitems, 2);
    assert_string_equal(in.items[0].body, "{\"subscriptionId\": \"other\",\"n\": 1}");
    assert_string_equal(in.items[1].body,
                        "{\"subscriptionId\": \"other\",\"n\": [1, {\"clientState\": \"kept: not a "
                        "member of the item\"}]}");
    gr_ingest_free(&in);
    free(fixed);
    free(one);
    gr_config_free(cfg);
}

static void test_no_fallback(void **state)
{
    (void)state;
    struct gr_config *cfg = load("{\"subscriptions\": [{\"id\": \"listed\", \"client_state\": "
                                 "\"own\"}], \"handlers\": {}, \"routes\": []}");
    const char *body = "{\"value\": [{\"subscriptionId\": \"other\", \"clientState\": \"x\"},"
                       "{\"subscriptionId\": \"listed\", \"clientState\": \"own\"}]}";
    struct gr_ingest in;
    gr_ingest_parse(cfg, NULL, body, strlen(body), &in);
    assert_int_equal(in.nitems, 1);
    assert_int_equal(in.dropped[GR_DROP_NO_SECRET], 1);
    gr_ingest_free(&in);
    gr_config_free(cfg);
}

static bool key_of(const char *text, unsigned char key[32])
{
    json_t *item = json_loads(text, 0, NULL);
    assert_non_null(item);
    bool has = gr_ingest_dedupe_key(item, key);
    json_decref(item);
    return has;
}

static void test_dedupe_keys(void **state)
{
    (void)state;
    unsigned char a[32], b[32];
    /* without an id, an etag or a sequence number a change has no identity */
    assert_false(key_of("{\"subscriptionId\": \"s\", \"changeType\": \"updated\", "
                        "\"resource\": \"communications/presences/u\", \"resourceData\": "
                        "{\"id\": \"u\"}}", a));
    /* the same change: same key, whatever else differs (clientState, order, case of changeType) */
    assert_true(key_of("{\"subscriptionId\": \"s\", \"changeType\": \"created\", \"resource\": "
                       "\"r\", \"clientState\": \"x\", \"resourceData\": {\"@odata.etag\": \"W/1\"}}", a));
    assert_true(key_of("{\"resourceData\": {\"@odata.etag\": \"W/1\"}, \"changeType\": \"Created\", "
                       "\"resource\": \"r\", \"subscriptionId\": \"s\"}", b));
    assert_memory_equal(a, b, 32);
    /* another etag, resource, subscription or change type: another change */
    static const char *const others[] = {
        "{\"subscriptionId\": \"s\", \"changeType\": \"created\", \"resource\": \"r\", "
        "\"resourceData\": {\"@odata.etag\": \"W/2\"}}",
        "{\"subscriptionId\": \"s\", \"changeType\": \"created\", \"resource\": \"r2\", "
        "\"resourceData\": {\"@odata.etag\": \"W/1\"}}",
        "{\"subscriptionId\": \"t\", \"changeType\": \"created\", \"resource\": \"r\", "
        "\"resourceData\": {\"@odata.etag\": \"W/1\"}}",
        "{\"subscriptionId\": \"s\", \"changeType\": \"updated\", \"resource\": \"r\", "
        "\"resourceData\": {\"@odata.etag\": \"W/1\"}}",
    };
    for (size_t i = 0; i < sizeof others / sizeof others[0]; i++) {
        assert_true(key_of(others[i], b));
        assert_memory_not_equal(a, b, 32);
    }
    /* the notification's own id, or an Entra sequence number (string or number) */
    assert_true(key_of("{\"subscriptionId\": \"s\", \"id\": \"n1\"}", a));
    assert_true(key_of("{\"subscriptionId\": \"s\", \"id\": \"n2\"}", b));
    assert_memory_not_equal(a, b, 32);
    assert_true(key_of("{\"subscriptionId\": \"s\", \"resourceData\": {\"sequenceNumber\": 7}}", a));
    assert_true(key_of("{\"subscriptionId\": \"s\", \"resourceData\": {\"sequenceNumber\": \"7\"}}", b));
    assert_memory_equal(a, b, 32);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_bodies),
        cmocka_unit_test(test_mixed_batch),
        cmocka_unit_test(test_no_fallback),
        cmocka_unit_test(test_members_as_jansson_reads_them),
        cmocka_unit_test(test_dedupe_keys),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
