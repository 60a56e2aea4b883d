/*
 * Fuzz gr_ingest_parse() (core/http/ingest.c) with untrusted notification POST
 * bodies, then do with every accepted item what a worker does: build the
 * routed notification (core/route/notification.c, core/route/classify.c) and match it
 * against the routes (core/route/router.c).
 *
 * The config is parsed once, with a top-level client_state and listed
 * subscriptions whose secrets are the clientState values in
 * tests/vectors/docs-samples, so the seed items get accepted, dropped for a
 * bad clientState, or checked against the fallback.
 *
 * The body is copied into a malloc'd buffer of exactly `size` bytes (no NUL
 * after it), as gr_ingest_parse takes (body, len): ASan reports any read past
 * len by the core code (the system jansson is not instrumented).
 *
 * Checks, beyond "no crash, leak or UB": the status is 202 or 400; a 400 has a
 * one-line reason and no items; a 202 has no reason and every item of the
 * batch is either accepted or dropped for exactly one reason; every accepted
 * item is a JSON object of exactly its stated length, ready to store.
 *
 * And ingest against jansson, the reference: ingest reads the body with its
 * own scanner (core/http/jsonscan.c), so the same body is also parsed with
 * json_loadb and judged here from jansson's tree, as a worker reads items:
 * the body is refused as invalid JSON exactly when jansson refuses it; a body
 * jansson reads gets the same status; each item gets the same verdict (drop
 * reason, or accepted); an accepted item's stored text parses to the item
 * without its clientState members (json_equal), with the same duplicate key
 * and the same rich flag. Any disagreement aborts.
 */
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "config.h"
#include "http/ingest.h"
#include "route/notification.h"
#include "route/router.h"
#include "store/store.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char config_text[] =
    "{\"client_state\": \"<<--SpecifiedClientState-->>\",\n"
    " \"subscriptions\": [\n"
    "  {\"id\": \"{Subscription id}\", \"client_state\": \"{secret client state}\"},\n"
    "  {\"id\": \"{subscription_guid}\", \"client_state\": \"secretClientValue\"},\n"
    "  {\"id\": \"<subscription_guid>\", \"client_state\": \"<secretClientState>\"},\n"
    "  {\"id\": \"e3898f08-5cd0-4a6a-80fc-6addbfb73b7b\", \"client_state\": \"{secret client "
    "state}\"},\n"
    "  {\"id\": \"aa269f87-2a92-4cff-a43e-2771878c3727\", \"client_state\": \"My client state\"}\n"
    " ],\n"
    " \"handlers\": {},\n"
    " \"routes\": []}\n";

static struct gr_config *cfg;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    char *err = NULL;
    if (gr_config_parse("fuzz-ingest.json", config_text, strlen(config_text), &cfg, &err) != 0) {
        fprintf(stderr, "fuzz_ingest: bad built-in config: %s\n", err ? err : "(no message)");
        abort();
    }
    return 0;
}

/* What a worker does with a stored item (core/worker/worker.c, route). */
static void route_item(const struct gr_store_item *it)
{
    json_error_t jerr;
    if (!it->body || strlen(it->body) != it->len)
        abort();
    json_t *item = json_loadb(it->body, it->len, 0, &jerr);
    if (!json_is_object(item))
        abort(); /* ingest only accepts objects and stores their own text */
    unsigned char key[32];
    if (gr_ingest_dedupe_key(item, key) != it->has_dedupe)
        abort(); /* the key depends on the item's content only */
    struct gr_classification cls;
    json_t *n = gr_notification_build(item, 1700000000000, NULL, &cls);
    struct gr_route_input in;
    gr_notification_route_input(n, cls.type, &in);
    bool targets[1] = {false}; /* no handlers, no routes */
    if (gr_router_match(&cfg->routes, &in, targets, NULL) != 0)
        abort();
    char *text = json_dumps(n, JSON_COMPACT);
    if (!text)
        abort();
    free(text);
    gr_classification_free(&cls);
    json_decref(n);
    json_decref(item);
}

/* The verdict on one item, from jansson's tree (as ingest.c decides it). */
static int reference_verdict(const json_t *item)
{
    const char *sub = gr_json_string_ci(item, "subscriptionId");
    if (!json_is_object(item) || !sub)
        return GR_DROP_MALFORMED_ITEM;
    const char *change = gr_json_string_ci(item, "changeType");
    if (strcmp(sub, "NA") == 0 && change && strncmp(change, "Validation:", 11) == 0)
        return GR_DROP_VALIDATION_MESSAGE;
    const struct gr_subscription *listed = gr_config_subscription(cfg, sub);
    const struct gr_secret *secret =
        listed ? &listed->secret : cfg->has_fallback_secret ? &cfg->fallback_secret : NULL;
    const json_t *cs = gr_json_get_ci(item, "clientState");
    if (!json_is_string(cs))
        return GR_DROP_MISSING_CLIENT_STATE;
    if (!secret)
        return GR_DROP_NO_SECRET;
    if (!gr_secret_matches(secret, json_string_value(cs), json_string_length(cs)))
        return GR_DROP_BAD_CLIENT_STATE;
    return -1; /* accepted */
}

/* The item as it should be stored: without any key matching clientState. */
static json_t *reference_stored(const json_t *item)
{
    json_t *kept = json_deep_copy(item);
    const char *key;
    json_t *v;
    void *tmp;
    json_object_foreach_safe(kept, tmp, key, v) {
        if (strcasecmp(key, "clientState") == 0)
            json_object_del(kept, key);
    }
    return kept;
}

static void compare_with_jansson(const char *body, size_t size, const struct gr_ingest *in)
{
    json_t *root = json_loadb(body, size, 0, NULL);
    bool invalid = in->status == 400 && strstr(in->reason, "not valid JSON");
    if (root && invalid && memchr(body, '\0', size)) {
        /* jansson 2.14 skips a NUL byte that follows a number or a literal
         * ("[7\0]" loads); the scanner refuses it, as JSON does */
        json_decref(root);
        return;
    }
    if (!root != invalid)
        abort(); /* the scanner and jansson disagree on what is JSON */
    if (!root)
        return;
    const json_t *value = json_object_get(root, "value");
    if (!json_is_array(value)) {
        if (in->status != 400)
            abort();
        json_decref(root);
        return;
    }
    if (in->status != 202 || in->received != json_array_size(value))
        abort();
    size_t dropped[GR_DROP_COUNT] = {0}, accepted = 0;
    bool rich = false;
    for (size_t i = 0; i < json_array_size(value); i++) {
        const json_t *item = json_array_get(value, i);
        int verdict = reference_verdict(item);
        if (verdict >= 0) {
            dropped[verdict]++;
            continue;
        }
        if (accepted >= in->nitems)
            abort();
        const struct gr_store_item *it = &in->items[accepted++];
        json_t *stored = json_loadb(it->body, it->len, 0, NULL);
        json_t *want = reference_stored(item);
        if (!stored || !json_equal(stored, want))
            abort(); /* stored text is not the item without its clientState */
        unsigned char key[32];
        bool has = gr_ingest_dedupe_key(item, key);
        if (has != it->has_dedupe || (has && memcmp(key, it->dedupe, sizeof key) != 0))
            abort();
        bool is_rich = json_is_object(gr_json_get_ci(item, "encryptedContent"));
        if (is_rich != it->rich)
            abort();
        rich |= is_rich;
        json_decref(stored);
        json_decref(want);
    }
    if (accepted != in->nitems || memcmp(dropped, in->dropped, sizeof dropped) != 0)
        abort();
    if (!rich && in->tokens)
        abort(); /* tokens are read only for a rich item */
    json_decref(root);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *body = malloc(size ? size : 1);
    if (!body)
        abort();
    if (size)
        memcpy(body, data, size);

    struct gr_ingest in;
    gr_ingest_parse(cfg, NULL, body, size, &in);

    if (in.status == 400) {
        if (!in.reason || strchr(in.reason, '\n') || in.nitems != 0)
            abort();
    } else if (in.status == 202) {
        if (in.reason)
            abort();
        size_t dropped = 0;
        for (size_t r = 0; r < GR_DROP_COUNT; r++)
            dropped += in.dropped[r];
        if (in.nitems + dropped != in.received)
            abort();
        for (size_t i = 0; i < in.nitems; i++)
            route_item(&in.items[i]);
    } else {
        abort();
    }
    compare_with_jansson(body, size, &in);

    gr_ingest_free(&in);
    free(body);
    return 0;
}
