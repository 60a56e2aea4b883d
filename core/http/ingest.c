/* Notification batch parsing and per-item authentication (see ingest.h). */
#define _GNU_SOURCE
#include "http/ingest.h"

#include <ctype.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "http/jsonscan.h"
#include "log.h"
#include "route/notification.h"
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
    gr_log_limited(&drop_limits[reason], GR_LOG_LEVEL_WARN,
                   "item dropped (%s): %s; subscription=%.*s", gr_drop_reason_name(reason), why,
                   GR_LOG_ID_MAX, subscription ? subscription : "(none)");
}

/* Event Hubs sends this once to test reachability; it is not a change. */
static bool is_validation_message(const char *subscription, const char *change)
{
    return subscription && strcmp(subscription, "NA") == 0 && change &&
           strncmp(change, "Validation:", 11) == 0;
}

/* The POST's validationTokens, read once, when its first rich item needs them. */
static void read_tokens(const char *text, size_t len, struct gr_ingest *out)
{
    json_t *value = text ? json_loadb(text, len, JSON_DECODE_ANY, NULL) : NULL;
    const char *why;
    out->tokens = gr_token_list_new(value, &out->tokens_skipped, &why);
    json_decref(value);
    if (why || out->tokens_skipped)
        gr_warn_limited("validationTokens: %s%s%zu entr%s skipped (not a string, longer than %d "
                        "bytes, or not a JWT naming a tenant); rich items not covered are dropped",
                        why ? why : "", why ? "; " : "", out->tokens_skipped,
                        out->tokens_skipped == 1 ? "y" : "ies", GR_TOKEN_MAX_BYTES);
}

static void hash_field(EVP_MD_CTX *md, const char *tag, const char *value)
{
    EVP_DigestUpdate(md, tag, strlen(tag) + 1);
    if (value)
        EVP_DigestUpdate(md, value, strlen(value) + 1);
}

/* What identifies a change (see ingest.h); the strings as JSON values, decoded. */
struct change_identity {
    const char *subscription, *change, *resource, *lifecycle, *id, *etag, *sequence;
};

static bool identity_key(const struct change_identity *c, unsigned char key[32])
{
    if (!c->id && !c->etag && !c->sequence)
        return false;
    char *change = gr_xstrdup(c->change ? c->change : "");
    for (char *p = change; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned int n = 0;
    EVP_DigestInit_ex(md, gr_sha256(), NULL);
    hash_field(md, "subscription", c->subscription);
    hash_field(md, "change", change);
    hash_field(md, "resource", c->resource);
    hash_field(md, "lifecycle", c->lifecycle);
    hash_field(md, "id", c->id);
    hash_field(md, "etag", c->etag);
    hash_field(md, "sequence", c->sequence);
    EVP_DigestFinal_ex(md, key, &n);
    EVP_MD_CTX_free(md);
    free(change);
    return true;
}

bool gr_ingest_dedupe_key(const json_t *item, unsigned char key[32])
{
    const json_t *data = gr_json_get_ci(item, "resourceData");
    const json_t *seq = gr_json_get_ci(data, "sequenceNumber");
    char seqbuf[32];
    const char *seqs = json_string_value(seq);
    if (!seqs && json_is_integer(seq)) {
        snprintf(seqbuf, sizeof seqbuf, "%" JSON_INTEGER_FORMAT, json_integer_value(seq));
        seqs = seqbuf;
    }
    struct change_identity c = {
        .subscription = gr_json_string_ci(item, "subscriptionId"),
        .change = gr_json_string_ci(item, "changeType"),
        .resource = gr_json_string_ci(item, "resource"),
        .lifecycle = gr_json_string_ci(item, "lifecycleEvent"),
        .id = gr_json_string_ci(item, "id"),
        .etag = gr_json_string_ci(data, "@odata.etag"),
        .sequence = seqs,
    };
    return identity_key(&c, key);
}

/* ---- finding members in the text ------------------------------------------
 *
 * The request path does not build a tree: the body is checked once with the
 * scanner (jsonscan.h), which accepts exactly what jansson accepts, and each
 * item's members are then found in its text. A member is found as
 * gr_json_get_ci finds it in jansson's tree, so that what ingest reads is
 * what a worker reads later: the key spelt exactly so, else the first key
 * that matches ignoring case; with a repeated key, its last value (jansson
 * keeps the last value of a key at the place of its first occurrence). */

struct span {
    const char *p, *end;
};

struct member_want {
    const char *name;
    size_t len; /* strlen(name) */
    bool exact_found, ci_found;
    struct span exact, ci;
    char ci_key[24]; /* the first key matching ignoring case, decoded (names are short) */
};

/* The key's text, decoded if it has escapes (*heap then to be freed). */
static const char *key_text(const struct gr_jstr *key, size_t *len, char **heap)
{
    *heap = NULL;
    if (!key->escaped) {
        *len = key->len;
        return key->raw;
    }
    *heap = gr_jstr_decode(key, len);
    return *heap;
}

static void offer(struct member_want *w, const char *key, size_t len, struct span value)
{
    size_t n = w->len;
    if (len != n || strncasecmp(key, w->name, n) != 0)
        return;
    if (memcmp(key, w->name, n) == 0) {
        w->exact_found = true;
        w->exact = value;
    }
    if (!w->ci_found) {
        w->ci_found = true;
        memcpy(w->ci_key, key, n);
    }
    if (memcmp(key, w->ci_key, n) == 0)
        w->ci = value;
}

static bool found(const struct member_want *w, struct span *out)
{
    if (!w->exact_found && !w->ci_found)
        return false;
    *out = w->exact_found ? w->exact : w->ci;
    return true;
}

/* An item's text without some of its members: the kept members joined by a
 * comma (NUL-terminated; never longer than the item). */
struct kept_text {
    char *text;
    size_t len;
};

/* Walk the members of the object at `obj` (already checked) and offer each
 * to the wants. With keep, also copy every member whose key does not match
 * `cut` (ignoring case) into keep->text. */
static void walk_members(struct span obj, struct member_want *wants, size_t nwants,
                         const char *cut, struct kept_text *keep)
{
    size_t cut_len = cut ? strlen(cut) : 0;
    struct gr_jscan s;
    gr_jscan_init(&s, obj.p, (size_t)(obj.end - obj.p));
    char *o = NULL;
    if (keep) {
        o = keep->text = gr_xmalloc((size_t)(obj.end - obj.p) + 1);
        *o++ = '{';
    }
    s.p++; /* '{' */
    if (!gr_jscan_take(&s, '}')) {
        do {
            gr_jscan_ws(&s);
            const char *member = s.p;
            struct gr_jstr key;
            gr_jscan_string(&s, &key);
            gr_jscan_take(&s, ':');
            gr_jscan_ws(&s);
            struct span value = {s.p, NULL};
            gr_jscan_value(&s);
            value.end = s.p;
            size_t len;
            char *heap;
            const char *k = key_text(&key, &len, &heap);
            for (size_t i = 0; i < nwants; i++)
                offer(&wants[i], k, len, value);
            bool dropped = cut && len == cut_len && strncasecmp(k, cut, len) == 0;
            free(heap);
            if (!keep || dropped)
                continue;
            if (o > keep->text + 1)
                *o++ = ',';
            memcpy(o, member, (size_t)(value.end - member));
            o += value.end - member;
        } while (gr_jscan_take(&s, ','));
    }
    if (keep) {
        *o++ = '}';
        *o = '\0';
        keep->len = (size_t)(o - keep->text);
    }
}

/* A string member's value, decoded; NULL when absent or not a string. */
static char *string_of(const struct member_want *w)
{
    struct span v;
    if (!found(w, &v) || *v.p != '"')
        return NULL;
    struct gr_jstr str = {v.p + 1, (size_t)(v.end - v.p - 2), false};
    str.escaped = memchr(str.raw, '\\', str.len) != NULL;
    size_t len;
    return gr_jstr_decode(&str, &len);
}

/* sequenceNumber as the key uses it: a string, or an integer in decimal
 * (as jansson prints it); NULL for anything else. */
static char *sequence_of(const struct member_want *w)
{
    struct span v;
    if (!found(w, &v))
        return NULL;
    if (*v.p == '"')
        return string_of(w);
    if (*v.p != '-' && (*v.p < '0' || *v.p > '9'))
        return NULL;
    for (const char *p = v.p; p < v.end; p++)
        if (*p == '.' || *p == 'e' || *p == 'E')
            return NULL; /* a real, not an integer */
    char buf[32];
    size_t n = (size_t)(v.end - v.p);
    if (n >= sizeof buf)
        return NULL; /* longer than any long long: the scan refused it */
    memcpy(buf, v.p, n);
    buf[n] = '\0';
    return gr_xprintf("%lld", strtoll(buf, NULL, 10));
}

enum { F_SUBSCRIPTION, F_CHANGE, F_CLIENT_STATE, F_RESOURCE, F_LIFECYCLE, F_ID, F_ENCRYPTED,
       F_DATA, F_COUNT };

struct judged {
    char *strings[F_COUNT];
    char *etag, *sequence;
};

static void judged_free(struct judged *j)
{
    for (size_t i = 0; i < F_COUNT; i++)
        free(j->strings[i]);
    free(j->etag);
    free(j->sequence);
}

#define WANT(n) {.name = (n), .len = sizeof(n) - 1}

/* An item's verdict: a drop reason (with *why), or -1: accepted. Reads the
 * subscription and the clientState into j. A subscription listed in the
 * configuration, or one graphrouter manages, accepts only its own secret;
 * any other subscription the secret of one being created (Graph may deliver
 * before the create has answered with its id), or else the top-level one. */
static int verdict(const struct gr_config *cfg, const struct gr_managed *managed,
                   const struct member_want *wants, struct judged *j, const char **why)
{
    j->strings[F_SUBSCRIPTION] = string_of(&wants[F_SUBSCRIPTION]);
    j->strings[F_CHANGE] = string_of(&wants[F_CHANGE]);
    const char *sub = j->strings[F_SUBSCRIPTION];
    if (!sub) {
        *why = "not an object with a string \"subscriptionId\"";
        return GR_DROP_MALFORMED_ITEM;
    }
    if (is_validation_message(sub, j->strings[F_CHANGE])) {
        *why = "Event Hubs reachability test item";
        return GR_DROP_VALIDATION_MESSAGE;
    }
    const struct gr_subscription *listed = gr_config_subscription(cfg, sub);
    const struct gr_managed_sub *own = listed ? NULL : gr_managed_find(managed, sub);
    const struct gr_secret *secret = listed ? &listed->secret
                                     : own  ? &own->secret
                                     : cfg->has_fallback_secret ? &cfg->fallback_secret
                                                                : NULL;
    const char *cs = j->strings[F_CLIENT_STATE] = string_of(&wants[F_CLIENT_STATE]);
    if (!cs) {
        *why = "no clientState";
        return GR_DROP_MISSING_CLIENT_STATE;
    }
    size_t len = strlen(cs);
    if (!listed && !own && gr_managed_pending_match(managed, cs, len))
        return -1;
    if (!secret) {
        *why = "subscription not listed in \"subscriptions\" and no top-level \"client_state\"";
        return GR_DROP_NO_SECRET;
    }
    if (!gr_secret_matches(secret, cs, len)) {
        *why = listed ? "clientState does not match this subscription's client_state"
               : own  ? "clientState does not match the one graphrouter created this "
                        "subscription with"
                      : "clientState does not match the top-level client_state";
        return GR_DROP_BAD_CLIENT_STATE;
    }
    return -1;
}

static void judge_item(const struct gr_config *cfg, const struct gr_managed *managed,
                       struct span item, struct gr_ingest *out, bool *needs_tokens)
{
    struct member_want wants[F_COUNT] = {
        [F_SUBSCRIPTION] = WANT("subscriptionId"), [F_CHANGE] = WANT("changeType"),
        [F_CLIENT_STATE] = WANT("clientState"),    [F_RESOURCE] = WANT("resource"),
        [F_LIFECYCLE] = WANT("lifecycleEvent"),    [F_ID] = WANT("id"),
        [F_ENCRYPTED] = WANT("encryptedContent"),  [F_DATA] = WANT("resourceData"),
    };
    struct judged j = {0};
    const char *why = "not an object with a string \"subscriptionId\"";
    int reason = GR_DROP_MALFORMED_ITEM;
    /* Stored without its clientState members: the secret is checked here and
     * never written to disk (nor shown by graphrouter dlq show). */
    struct kept_text kept = {0};
    if (*item.p == '{') {
        walk_members(item, wants, F_COUNT, "clientState", &kept);
        reason = verdict(cfg, managed, wants, &j, &why);
    }
    if (reason >= 0) {
        drop(out, (enum gr_drop_reason)reason, j.strings[F_SUBSCRIPTION], why);
        judged_free(&j);
        free(kept.text);
        return;
    }
    struct gr_store_item *it = &out->items[out->nitems++];
    it->body = kept.text;
    it->len = kept.len;
    struct span data;
    if (found(&wants[F_DATA], &data) && *data.p == '{') {
        struct member_want inner[2] = {WANT("@odata.etag"), WANT("sequenceNumber")};
        walk_members(data, inner, 2, NULL, NULL);
        j.etag = string_of(&inner[0]);
        j.sequence = sequence_of(&inner[1]);
    }
    for (int f = F_RESOURCE; f <= F_ID; f++)
        j.strings[f] = string_of(&wants[f]);
    struct change_identity c = {j.strings[F_SUBSCRIPTION], j.strings[F_CHANGE],
                                j.strings[F_RESOURCE],     j.strings[F_LIFECYCLE],
                                j.strings[F_ID],           j.etag,
                                j.sequence};
    it->has_dedupe = identity_key(&c, it->dedupe);
    /* Rich items keep the POST's tokens that must cover them; a worker checks. */
    struct span enc;
    it->rich = found(&wants[F_ENCRYPTED], &enc) && *enc.p == '{';
    *needs_tokens |= it->rich;
    judged_free(&j);
}

/* Check the whole body; find the top-level "value" array's elements and the
 * "validationTokens" and "specversion" members (exact keys, the last of each,
 * as json_object_get finds them). Returns false on a syntax error. */
struct top {
    bool is_object;
    bool has_value, value_is_array, has_specversion;
    struct span *elements; /* of the last "value" array */
    size_t nelements, cap;
    struct span tokens;
    bool has_tokens;
};

/* The "value" array at s->p: check it and keep its elements' spans. */
static bool scan_items(struct gr_jscan *s, struct top *t)
{
    t->nelements = 0; /* a repeated "value": the last one counts */
    if (!gr_jscan_enter(s))
        return false;
    s->p++; /* '[' */
    if (!gr_jscan_take(s, ']')) {
        do {
            gr_jscan_ws(s);
            const char *e = s->p;
            if (!gr_jscan_value(s))
                return false;
            if (t->nelements == t->cap) {
                t->cap = t->cap ? 2 * t->cap : 16;
                t->elements = gr_xrealloc(t->elements, t->cap * sizeof *t->elements);
            }
            t->elements[t->nelements++] = (struct span){e, s->p};
        } while (gr_jscan_take(s, ','));
        if (!gr_jscan_take(s, ']'))
            return gr_jscan_fail(s);
    }
    gr_jscan_leave(s);
    return true;
}

/* One member of the top-level object. */
static bool scan_top_member(struct gr_jscan *s, struct top *t)
{
    gr_jscan_ws(s);
    struct gr_jstr key;
    if (!gr_jscan_string(s, &key))
        return false;
    if (!gr_jscan_take(s, ':'))
        return gr_jscan_fail(s);
    gr_jscan_ws(s);
    const char *v = s->p;
    if (gr_jstr_is(&key, "value", false)) {
        t->has_value = true;
        t->value_is_array = v < s->end && *v == '[';
        return t->value_is_array ? scan_items(s, t) : gr_jscan_value(s);
    }
    if (!gr_jscan_value(s))
        return false;
    if (gr_jstr_is(&key, "validationTokens", false)) {
        t->has_tokens = true;
        t->tokens = (struct span){v, s->p};
    } else if (gr_jstr_is(&key, "specversion", false)) {
        t->has_specversion = true;
    }
    return true;
}

static bool scan_top(struct gr_jscan *s, struct top *t)
{
    gr_jscan_ws(s);
    if (s->p < s->end && *s->p == '[') {
        if (!gr_jscan_value(s))
            return false;
    } else if (s->p < s->end && *s->p == '{') {
        t->is_object = true;
        if (!gr_jscan_enter(s))
            return false;
        s->p++;
        if (!gr_jscan_take(s, '}')) {
            do {
                if (!scan_top_member(s, t))
                    return false;
            } while (gr_jscan_take(s, ','));
            if (!gr_jscan_take(s, '}'))
                return gr_jscan_fail(s);
        }
        gr_jscan_leave(s);
    } else {
        return gr_jscan_fail(s); /* '[' or '{' expected */
    }
    gr_jscan_ws(s);
    return s->p == s->end || gr_jscan_fail(s); /* end of input expected */
}

void gr_ingest_parse(const struct gr_config *cfg, const struct gr_managed *managed,
                     const char *body, size_t len, struct gr_ingest *out)
{
    *out = (struct gr_ingest){.status = 202};
    struct gr_jscan s;
    gr_jscan_init(&s, body, len);
    struct top t = {0};
    if (!scan_top(&s, &t)) {
        int line, col;
        gr_jscan_where(&s, &line, &col);
        out->status = 400;
        out->reason = gr_xprintf("body is not valid JSON (line %d, column %d)", line, col);
        free(t.elements);
        return;
    }
    if (!t.is_object || !t.has_value || !t.value_is_array) {
        out->status = 400;
        out->reason = gr_xstrdup(
            t.is_object && t.has_specversion
                ? "body is a CloudEvent; graphrouter takes Graph webhook deliveries, a "
                  "changeNotificationCollection with a \"value\" array"
                : "body has no \"value\" array; a Graph changeNotificationCollection looks like "
                  "{\"value\": [...]}");
        free(t.elements);
        return;
    }
    out->received = t.nelements;
    out->items = gr_xcalloc(out->received ? out->received : 1, sizeof *out->items);
    bool needs_tokens = false;
    for (size_t i = 0; i < t.nelements; i++)
        judge_item(cfg, managed, t.elements[i], out, &needs_tokens);
    if (needs_tokens)
        read_tokens(t.has_tokens ? t.tokens.p : NULL,
                    t.has_tokens ? (size_t)(t.tokens.end - t.tokens.p) : 0, out);
    free(t.elements);
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
