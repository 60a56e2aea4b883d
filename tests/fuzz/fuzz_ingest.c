/*
 * Fuzz gr_ingest_parse() (core/ingest.c) with untrusted notification POST
 * bodies, then do with every accepted item what a worker does: build the
 * routed notification (core/notification.c, core/classify.c) and match it
 * against the routes (core/router.c).
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
 */
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "ingest.h"
#include "notification.h"
#include "router.h"
#include "store.h"

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

/* What a worker does with a stored item (core/worker.c, route). */
static void route_item(const struct gr_store_item *it)
{
    json_error_t jerr;
    if (!it->body || strlen(it->body) != it->len)
        abort();
    json_t *item = json_loadb(it->body, it->len, 0, &jerr);
    if (!json_is_object(item))
        abort(); /* ingest only accepts objects and stores them re-serialised */
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

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *body = malloc(size ? size : 1);
    if (!body)
        abort();
    if (size)
        memcpy(body, data, size);

    struct gr_ingest in;
    gr_ingest_parse(cfg, body, size, &in);

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

    gr_ingest_free(&in);
    free(body);
    return 0;
}
