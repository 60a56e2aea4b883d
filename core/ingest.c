/* Notification batch parsing and per-item authentication (see ingest.h). */
#define _GNU_SOURCE
#include "ingest.h"

#include <ctype.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "log.h"
#include "notification.h"
#include "util.h"

/* Longest subscription id quoted in a log line. */
#define GR_LOG_ID_MAX 80

/* One log limit per reason: a flood of one kind does not hide another. */
static struct gr_log_limit drop_limits[GR_DROP_COUNT];
static pthread_once_t drop_limits_once = PTHREAD_ONCE_INIT;

static void init_drop_limits(void)
{
    for (size_t i = 0; i < GR_DROP_COUNT; i++)
        gr_log_limit_init(&drop_limits[i]);
}

static void drop(struct gr_ingest *out, enum gr_drop_reason reason, const char *subscription,
                 const char *why)
{
    out->dropped[reason]++;
    pthread_once(&drop_limits_once, init_drop_limits);
    gr_log_limited(&drop_limits[reason], GR_LOG_LEVEL_WARN, "item dropped (%s): %s; subscription=%.*s", gr_drop_reason_name(reason), why,
            GR_LOG_ID_MAX, subscription ? subscription : "(none)");
}

/* Event Hubs sends this once to test reachability; it is not a change. */
static bool is_validation_message(const char *subscription, const json_t *item)
{
    const char *change = gr_json_string_ci(item, "changeType");
    return subscription && strcmp(subscription, "NA") == 0 && change &&
           strncmp(change, "Validation:", 11) == 0;
}

/* The POST's validationTokens, read once, when its first rich item needs them. */
static void read_tokens(const json_t *value, struct gr_ingest *out, bool *read)
{
    if (*read)
        return;
    *read = true;
    const char *why;
    out->tokens = gr_token_list_new(value, &out->tokens_skipped, &why);
    if (why || out->tokens_skipped)
        gr_warn_limited("validationTokens: %s%s%zu entr%s skipped (not a string, longer than %d bytes, "
                "or not a JWT naming a tenant); rich items not covered are dropped",
                why ? why : "", why ? "; " : "", out->tokens_skipped,
                out->tokens_skipped == 1 ? "y" : "ies", GR_TOKEN_MAX_BYTES);
}

static void hash_field(EVP_MD_CTX *md, const char *tag, const char *value)
{
    EVP_DigestUpdate(md, tag, strlen(tag) + 1);
    if (value)
        EVP_DigestUpdate(md, value, strlen(value) + 1);
}

bool gr_ingest_dedupe_key(const json_t *item, unsigned char key[32])
{
    const json_t *data = gr_json_get_ci(item, "resourceData");
    const char *id = gr_json_string_ci(item, "id");
    const char *etag = gr_json_string_ci(data, "@odata.etag");
    const json_t *seq = gr_json_get_ci(data, "sequenceNumber");
    char seqbuf[32];
    const char *seqs = json_string_value(seq);
    if (!seqs && json_is_integer(seq)) {
        snprintf(seqbuf, sizeof seqbuf, "%" JSON_INTEGER_FORMAT, json_integer_value(seq));
        seqs = seqbuf;
    }
    if (!id && !etag && !seqs)
        return false;
    const char *ct = gr_json_string_ci(item, "changeType");
    char *change = gr_xstrdup(ct ? ct : "");
    for (char *p = change; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned int n = 0;
    EVP_DigestInit_ex(md, EVP_sha256(), NULL);
    hash_field(md, "subscription", gr_json_string_ci(item, "subscriptionId"));
    hash_field(md, "change", change);
    hash_field(md, "resource", gr_json_string_ci(item, "resource"));
    hash_field(md, "lifecycle", gr_json_string_ci(item, "lifecycleEvent"));
    hash_field(md, "id", id);
    hash_field(md, "etag", etag);
    hash_field(md, "sequence", seqs);
    EVP_DigestFinal_ex(md, key, &n);
    EVP_MD_CTX_free(md);
    free(change);
    return true;
}

static void judge_item(const struct gr_config *cfg, const json_t *item, const json_t *tokens,
                       bool *tokens_read, struct gr_ingest *out)
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
    struct gr_store_item *it = &out->items[out->nitems++];
    /* Stored without its clientState: the secret has been checked and is not
     * written to disk (nor shown by graphrouter dlq show). */
    json_t *kept = json_copy((json_t *)item); /* shallow */
    const char *key;
    json_t *v;
    void *tmp;
    json_object_foreach_safe(kept, tmp, key, v) {
        if (strcasecmp(key, "clientState") == 0)
            json_object_del(kept, key);
    }
    it->body = json_dumps(kept, JSON_COMPACT);
    json_decref(kept);
    it->len = strlen(it->body);
    it->has_dedupe = gr_ingest_dedupe_key(item, it->dedupe);
    /* Rich items keep the POST's tokens that must cover them; a worker checks. */
    it->rich = json_is_object(gr_json_get_ci(item, "encryptedContent"));
    if (it->rich)
        read_tokens(tokens, out, tokens_read);
}

void gr_ingest_parse(const struct gr_config *cfg, const char *body, size_t len,
                     struct gr_ingest *out)
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
    out->items = gr_xcalloc(out->received ? out->received : 1, sizeof *out->items);
    const json_t *tokens = json_object_get(root, "validationTokens");
    bool tokens_read = false;
    for (size_t i = 0; i < out->received; i++)
        judge_item(cfg, json_array_get(value, i), tokens, &tokens_read, out);
    json_decref(root);
}

void gr_ingest_free(struct gr_ingest *in)
{
    for (size_t i = 0; i < in->nitems; i++)
        free(in->items[i].body);
    free(in->items);
    gr_token_list_unref(in->tokens);
    free(in->reason);
    *in = (struct gr_ingest){0};
}
