/*
 * The configuration file: parsing, strict checking, and the checked result.
 *
 * Strict means: an unknown key, a wrong type, a value out of range or a name
 * that refers to nothing is an error that names file:line:col. Keys that
 * start with "//" are comments, accepted in every object. The README's
 * "Configuration reference" documents every key; keep the two in step.
 *
 * A struct gr_config is immutable once parsed and belongs to one generation;
 * strings in it point into `root` and live as long as the config. Secrets
 * (secret.h) are resolved while it is parsed; those left in `root` are
 * wiped when it is freed.
 */
#ifndef GR_CONFIG_H
#define GR_CONFIG_H

#include <jansson.h>

#include "http/addr.h"
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "check.h"
#include "crypto/decrypt.h"
#include "graph/graph_conf.h"
#include "route/router.h"
#include "secret.h"

#define GR_SECRET_DIGEST_LEN 32 /* SHA-256 */

/* A clientState secret, kept only as its SHA-256 digest. */
struct gr_secret {
    unsigned char digest[GR_SECRET_DIGEST_LEN];
};

struct gr_subscription {
    const char *id; /* as configured; matched case-insensitively */
    struct gr_secret secret;
};

struct gr_retry_policy {
    unsigned max_attempts;
    int64_t initial_backoff_ms;
    int64_t max_backoff_ms;
};

/* A handler's default "timeout_s", far above the default time limits of the
 * bundled plugins (http 10 s, exec 30 s), so it only catches a call that is
 * stuck; a longer "timeout_ms" in the handler's config raises it (config.c). */
#define GR_HANDLER_TIMEOUT_S 300

struct gr_handler_conf {
    const char *name;
    unsigned concurrency; /* 0: any number of workers; 1: one at a time, in order */
    unsigned timeout_s;   /* a handle() call running longer restarts graphrouter; 0: never */
    const char *plugin;  /* as written */
    char *plugin_path;   /* resolved: <plugin_dir>/<name>.so, or the path as written */
    json_t *config;      /* the "config" object; never NULL (empty object if absent) */
    const json_t *node;  /* the handler's object, for error positions */
    struct gr_retry_policy retry;
};

/* "validation_tokens": how Graph's validation tokens are checked. */
struct gr_tokens_conf {
    const char **app_ids;
    size_t napp_ids;
    const char **tenant_ids; /* none: any tenant */
    size_t ntenant_ids;
    const char *jwks_url;  /* https only */
    const char *jwks_file; /* used instead of the URL when set */
    const char *ca_file;
    int64_t refresh_s, min_refresh_s;
};

struct gr_config {
    char *file;
    json_t *root;
    struct gr_jsonpos *pos;

    const char *listen_address;
    unsigned listen_port;
    unsigned http_threads;

    const char **notification_paths;
    size_t n_notification_paths;
    const char **lifecycle_paths;
    size_t n_lifecycle_paths;

    /* "limits" (README: "Limits and hostile clients") */
    size_t max_body_bytes;
    unsigned max_connections;        /* open connections in all */
    unsigned max_connections_per_ip; /* per client address */
    unsigned header_timeout_s;       /* a request head must be complete within this */
    unsigned body_timeout_s;         /* a body must be complete within this of its head */
    unsigned connection_timeout_s;   /* an idle kept-alive connection is closed after this */
    struct gr_cidr *allow_from;      /* NULL: every address may connect */
    size_t n_allow_from;
    struct gr_cidr *trusted_proxies; /* X-Forwarded-For is read only from these */
    size_t n_trusted_proxies;

    /* "tls": native HTTPS (http/tls.h); NULL: plain HTTP */
    const char *tls_cert_file, *tls_key_file;
    const json_t *tls_node; /* for error positions */

    /* "store" */
    const char *store_path;
    uint64_t max_pending, max_pending_bytes, max_db_bytes;
    bool synchronous_full;
    int64_t dedupe_window_s, retention_s;

    bool has_fallback_secret;
    struct gr_secret fallback_secret;
    struct gr_subscription *subscriptions; /* listed by id; sorted by id, case-insensitively */
    size_t nsubscriptions;
    struct gr_declaration *declarations;   /* declared: graphrouter creates and keeps them */
    size_t ndeclarations;
    struct gr_graph_conf graph;

    /* "user": who graphrouter becomes once its port, store and files are
     * open (privs.h); NULL: it stays who started it */
    const char *user;
    uid_t uid;
    gid_t gid;

    const char *plugin_dir;
    unsigned workers;
    int log_level;
    unsigned shutdown_timeout_s;

    bool has_tokens; /* "validation_tokens" present */
    struct gr_tokens_conf tokens;
    struct gr_decryption_key_conf *decryption_keys;
    size_t ndecryption_keys;

    struct gr_handler_conf *handlers;
    size_t nhandlers;
    struct gr_routes routes;
    struct gr_secret_nodes secrets; /* JSON strings holding secrets, wiped at free */
};

/* Read and check a config file. On error returns -1 and sets *err to a
 * malloc'd "FILE:LINE:COL: what is wrong" (free it). */
int gr_config_load(const char *file, struct gr_config **out, char **err);
/* Same, from text (tests). */
int gr_config_parse(const char *file, const char *text, size_t len, struct gr_config **out,
                    char **err);
void gr_config_free(struct gr_config *cfg);

/* Index of the handler named `name`, or -1. */
int gr_config_handler_index(const struct gr_config *cfg, const char *name);
/* The subscription's own secret, or NULL if it is not listed. */
const struct gr_subscription *gr_config_subscription(const struct gr_config *cfg, const char *id);
/* Digest a secret as it is stored in struct gr_secret. */
void gr_secret_digest(const char *value, size_t len, struct gr_secret *out);
/* Constant-time: does `value` match `secret`? */
bool gr_secret_matches(const struct gr_secret *secret, const char *value, size_t len);

#endif
