/* Token coverage and decryption of rich items (see rich.h). Stateless; the
 * JWKS object, key ring and content key cache it uses are thread-safe. */
#define _GNU_SOURCE
#include "crypto/rich.h"

#include <stdlib.h>
#include <strings.h>
#include <time.h>

#include "crypto/decrypt.h"
#include "crypto/jwks.h"
#include "crypto/jwt.h"
#include "crypto/keycache.h"
#include "log.h"
#include "route/notification.h"
#include "util.h"

struct coverage {
    bool covered, any_candidate, unknown_kid;
};

/* Verify the tokens that claim the item's tenant (the cache makes repeats
 * cheap), stopping at the first valid one, and count each distinct token the
 * first time it is verified. Tokens are never logged. */
static struct coverage check_tokens(struct gr_generation *g, const struct gr_token_list *tokens,
                                    const char *tenant, int64_t received_s)
{
    struct coverage cov = {0};
    size_t tried = 0;
    for (size_t i = 0; tenant && i < tokens->n && !cov.covered; i++) {
        const struct gr_listed_token *t = &tokens->v[i];
        if (strcasecmp(t->claimed_tid, tenant) != 0)
            continue;
        if (tried++ == GR_RICH_MAX_CANDIDATES)
            break;
        cov.any_candidate = true;
        struct gr_token_claims claims;
        bool first = false;
        enum gr_token_result r =
            gr_jwks_verify(g->jwks, t->token, t->len, received_s, &claims, &first);
        if (r == GR_TOKEN_VALID)
            r = gr_token_policy_check(&claims, &g->token_policy, received_s);
        if (first) {
            gr_metrics_token((int)r);
            if (r != GR_TOKEN_VALID && r != GR_TOKEN_UNKNOWN_KID)
                gr_warn_limited("validation token rejected: %s; tenant=%.80s",
                                gr_token_result_name(r), tenant);
        }
        /* the verified tid, not the claimed one, decides */
        cov.covered = r == GR_TOKEN_VALID && strcasecmp(claims.tid, tenant) == 0;
        cov.unknown_kid |= r == GR_TOKEN_UNKNOWN_KID;
        gr_token_claims_free(&claims);
    }
    return cov;
}

static enum gr_drop_reason decrypt_reason(enum gr_decrypt_result r)
{
    switch (r) {
    case GR_DECRYPT_UNKNOWN_KEY: return GR_DROP_DECRYPT_UNKNOWN_KEY;
    case GR_DECRYPT_BAD_KEY: return GR_DROP_DECRYPT_BAD_KEY;
    case GR_DECRYPT_BAD_SIGNATURE: return GR_DROP_DECRYPT_BAD_SIGNATURE;
    case GR_DECRYPT_BAD_PADDING: return GR_DROP_DECRYPT_BAD_PADDING;
    case GR_DECRYPT_NOT_JSON: return GR_DROP_DECRYPT_NOT_JSON;
    default: return GR_DROP_DECRYPT_MALFORMED;
    }
}

static const char *or_none(const char *s)
{
    return s ? s : "(none)";
}

static enum gr_rich_outcome drop(enum gr_drop_reason *out, enum gr_drop_reason reason,
                                 const json_t *item, const char *detail)
{
    *out = reason;
    gr_warn_limited("rich item dropped (%s): %s; subscription=%.80s tenant=%.80s",
                    gr_drop_reason_name(reason), detail,
                    or_none(gr_json_string_ci(item, "subscriptionId")),
                    or_none(gr_json_string_ci(item, "tenantId")));
    return GR_RICH_DROP;
}

enum gr_rich_outcome gr_rich_open(struct gr_generation *g, struct gr_keycache *keys,
                                  const json_t *item, const struct gr_token_list *tokens,
                                  int64_t received_ms, json_t **content,
                                  enum gr_drop_reason *reason, struct gr_keycache_ref *key)
{
    *content = NULL;
    key->set = false;
    const json_t *ec = gr_json_get_ci(item, "encryptedContent");
    if (!ec || json_is_null(ec))
        return GR_RICH_PLAIN;
    if (!json_is_object(ec))
        return drop(reason, GR_DROP_DECRYPT_MALFORMED, item, "encryptedContent is not an object");
    if (!g->jwks || !g->keyring)
        return drop(reason, GR_DROP_RICH_NOT_CONFIGURED, item,
                    "configure validation_tokens and decryption_keys to receive rich "
                    "notifications");

    if (!tokens)
        return drop(reason, GR_DROP_TOKEN_MISSING, item,
                    "its POST carried no usable validationTokens (null tokens mean Graph could "
                    "not encrypt for this app: see the README)");
    /* The same tenant the routed notification reports. */
    const char *tenant = gr_json_string_ci(item, "tenantId");
    if (!tenant)
        tenant = gr_json_string_ci(item, "organizationId");
    struct coverage cov = check_tokens(g, tokens, tenant, received_ms / 1000);
    if (!cov.covered) {
        if (cov.unknown_kid && gr_wall_ms() - received_ms < GR_RICH_MAX_WAIT_MS &&
            gr_jwks_wait_for_kid(g->jwks, received_ms))
            return GR_RICH_WAIT;
        return drop(reason, cov.any_candidate ? GR_DROP_TOKEN_INVALID : GR_DROP_TOKEN_UNCOVERED,
                    item,
                    cov.any_candidate ? "no validation token for this item's tenant is valid"
                                      : "no validation token of the POST is for this item's "
                                        "tenant");
    }
    enum gr_decrypt_result d = gr_decrypt_cached(g->keyring, keys, ec, content, key);
    if (d != GR_DECRYPT_OK) {
        char *why = gr_xprintf("decryption failed: %s", gr_decrypt_result_name(d));
        enum gr_rich_outcome rc = drop(reason, decrypt_reason(d), item, why);
        free(why);
        return rc;
    }
    return GR_RICH_OK;
}

enum gr_decrypt_result gr_rich_content(struct gr_generation *g, struct gr_keycache *keys,
                                       const json_t *item, json_t **content)
{
    *content = NULL;
    const json_t *ec = gr_json_get_ci(item, "encryptedContent");
    if (!json_is_object(ec))
        return GR_DECRYPT_OK;
    return g->keyring ? gr_decrypt_cached(g->keyring, keys, ec, content, NULL)
                      : GR_DECRYPT_UNKNOWN_KEY;
}
