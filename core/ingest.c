/* Notification batch parsing and per-item authentication (see ingest.h). */
#define _GNU_SOURCE
#include "ingest.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "notification.h"
#include "util.h"

/* Longest subscription id quoted in a log line. */
#define GR_LOG_ID_MAX 80

static void drop(struct gr_ingest *out, enum gr_drop_reason reason, const char *subscription,
                 const char *why)
{
    out->dropped[reason]++;
    gr_warn("item dropped (%s): %s; subscription=%.*s", gr_drop_reason_name(reason), why,
            GR_LOG_ID_MAX, subscription ? subscription : "(none)");
}

/* Event Hubs sends this once to test reachability; it is not a change. */
static bool is_validation_message(const char *subscription, const json_t *item)
{
    const char *change = gr_json_string_ci(item, "changeType");
    return subscription && strcmp(subscription, "NA") == 0 && change &&
           strncmp(change, "Validation:", 11) == 0;
}

/* The POST's validationTokens, read when its first rich item needs them. */
struct batch_tokens {
    const json_t *value;
    bool read;
    struct gr_token_list *list;
};

static struct gr_token_list *tokens_for_rich_item(struct batch_tokens *b, struct gr_ingest *out)
{
    if (!b->read) {
        b->read = true;
        const char *why;
        b->list = gr_token_list_new(b->value, &out->tokens_skipped, &why);
        if (why || out->tokens_skipped)
            gr_warn("validationTokens: %s%s%zu entr%s skipped (not a string, longer than %d "
                    "bytes, or not a JWT naming a tenant); rich items not covered are dropped",
                    why ? why : "", why ? "; " : "", out->tokens_skipped,
                    out->tokens_skipped == 1 ? "y" : "ies", GR_TOKEN_MAX_BYTES);
    }
    return gr_token_list_ref(b->list);
}

static void judge_item(const struct gr_config *cfg, const json_t *item, int64_t received_ms,
                       struct batch_tokens *tokens, struct gr_ingest *out)
{
    const char *sub = gr_json_string_ci(item, "subscriptionId");
    if (!json_is_object(item) || !sub) {
        drop(out, GR_DROP_MALFORMED_ITEM, NULL,
             "not an object with a string \"subscriptionId\"");
        return;
    }
    if (is_validation_message(sub, item)) {
        drop(out, GR_DROP_VALIDATION_MESSAGE, sub, "Event Hubs reachability test item");
        return;
    }
    const struct gr_subscription *listed = gr_config_subscription(cfg, sub);
    const struct gr_secret *secret =
        listed ? &listed->secret : cfg->has_fallback_secret ? &cfg->fallback_secret : NULL;
    const json_t *cs = gr_json_get_ci(item, "clientState");
    if (!json_is_string(cs)) {
        drop(out, GR_DROP_MISSING_CLIENT_STATE, sub, "no clientState");
        return;
    }
    if (!secret) {
        drop(out, GR_DROP_NO_SECRET, sub,
             "subscription not listed in \"subscriptions\" and no top-level \"client_state\"");
        return;
    }
    if (!gr_secret_matches(secret, json_string_value(cs), json_string_length(cs))) {
        drop(out, GR_DROP_BAD_CLIENT_STATE, sub,
             listed ? "clientState does not match this subscription's client_state"
                    : "clientState does not match the top-level client_state");
        return;
    }
    char *text = json_dumps(item, JSON_COMPACT);
    struct gr_job *job = gr_job_new(GR_JOB_ROUTE, text, strlen(text), NULL);
    free(text);
    job->received_ms = received_ms;
    /* Rich items share the tokens that must cover them; a worker checks. */
    if (json_is_object(gr_json_get_ci(item, "encryptedContent")))
        job->tokens = tokens_for_rich_item(tokens, out);
    out->jobs[out->njobs++] = job;
}

void gr_ingest_parse(const struct gr_config *cfg, const char *body, size_t len,
                     int64_t received_ms, struct gr_ingest *out)
{
    *out = (struct gr_ingest){.status = 202};
    json_error_t jerr;
    json_t *root = json_loadb(body, len, 0, &jerr);
    if (!root) {
        out->status = 400;
        out->reason = gr_xprintf("body is not valid JSON (line %d, column %d)", jerr.line,
                                 jerr.column);
        return;
    }
    const json_t *value = json_object_get(root, "value");
    if (!json_is_array(value)) {
        out->status = 400;
        out->reason = gr_xstrdup(
            json_object_get(root, "specversion")
                ? "body is a CloudEvent; graphrouter takes Graph webhook deliveries, a "
                  "changeNotificationCollection with a \"value\" array"
                : "body has no \"value\" array; a Graph changeNotificationCollection looks like "
                  "{\"value\": [...]}");
        json_decref(root);
        return;
    }
    out->received = json_array_size(value);
    out->jobs = gr_xcalloc(out->received, sizeof *out->jobs);
    struct batch_tokens tokens = {.value = json_object_get(root, "validationTokens")};
    for (size_t i = 0; i < out->received; i++)
        judge_item(cfg, json_array_get(value, i), received_ms, &tokens, out);
    gr_token_list_unref(tokens.list);
    json_decref(root);
}

void gr_ingest_free(struct gr_ingest *in)
{
    for (size_t i = 0; i < in->njobs; i++)
        gr_job_free(in->jobs[i]);
    free(in->jobs);
    free(in->reason);
    *in = (struct gr_ingest){0};
}
