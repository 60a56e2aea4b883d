/*
 * graphrouter plugin ABI.
 *
 * This is the only header a handler plugin needs. It uses no types from
 * jansson, OpenSSL or libcurl, so a plugin keeps working when those libraries
 * change under the router. A plugin that wants to parse JSON links its own
 * JSON library and works on the JSON text the router hands it.
 *
 * A plugin is a shared object that exports exactly one symbol:
 *
 *     GR_PLUGIN_EXPORT const struct gr_plugin *
 *     gr_plugin_entry(const struct gr_host *host);
 *
 * It returns a descriptor (struct gr_plugin) that lives as long as the shared
 * object is loaded, usually a static const. Everything the router offers
 * reaches the plugin through the `host` table; the router exports no symbols,
 * so build plugins with -fvisibility=hidden and -Wl,--no-undefined.
 *
 * Versioning. Both structs begin with abi_major, abi_minor and size. The
 * router refuses a plugin whose abi_major differs from its own or whose
 * abi_minor is newer than its own. Fields are only ever appended: a plugin
 * built against an older minor sees a smaller struct gr_host (check
 * GR_HOST_HAS before calling a newer function), and the router zero-fills
 * the descriptor fields an older plugin does not have.
 *
 * Lifecycle. Every handler in the configuration is one instance of a plugin:
 * two handlers using the "file" plugin get two init() calls and two states.
 *
 *   gr_plugin_entry(host)  once per load; keep `host` in a static, it stays
 *                          valid until the shared object is unloaded. A
 *                          reload that finds the file unchanged keeps the
 *                          loaded object and does not call it again.
 *   init(h, &state)        once per handler per configuration generation, on
 *                          a thread the router's control thread supervises
 *                          (as are reopen and fini): one still running past
 *                          the handler's "timeout_s" is left to finish alone
 *                          (an init then fails its reload, or the start), and
 *                          the next init, reopen or fini of the same plugin
 *                          may run beside it. Return 0, or a
 *                          negative value after describing the problem with
 *                          host->init_error(); then release what init
 *                          allocated, since fini is not called. `h` stays
 *                          valid until fini.
 *   handle(state, msg)     once per delivery, on worker threads, concurrently
 *                          for the same state unless flags has
 *                          GR_PLUGIN_SERIAL. Returns GR_OK, GR_RETRY or GR_FAIL,
 *                          within the handler's "timeout_s" (300 s by default):
 *                          a call still running then restarts the router, and
 *                          the delivery counts a failed attempt.
 *   reopen(state)          on SIGUSR1, off the workers, possibly while
 *                          handle() runs on them (log rotation).
 *   fini(state)            once, off the workers, after the last
 *                          handle() of this generation has returned. Must
 *                          not fail.
 *
 * A reload (SIGHUP) builds a new generation beside the running one: init runs
 * for the new handlers while the old ones still handle work, and the old
 * generation's fini runs once nothing uses it. The same shared object may
 * therefore have live states from two generations at once.
 *
 * Plugins never call curl_global_init, install signal handlers, fork, exit or
 * change the process's working directory: the router owns the process. To
 * run a program, posix_spawn it and wait for it within handle() (the bundled
 * exec plugin does): no plugin code runs in the child.
 */
#ifndef GRAPHROUTER_PLUGIN_H
#define GRAPHROUTER_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define GR_PLUGIN_ABI_MAJOR 1
#define GR_PLUGIN_ABI_MINOR 3

#if defined(__GNUC__) || defined(__clang__)
#define GR_PLUGIN_EXPORT __attribute__((visibility("default")))
#define GR_PLUGIN_PRINTF(fmt, args) __attribute__((format(printf, fmt, args)))
#else
#define GR_PLUGIN_EXPORT
#define GR_PLUGIN_PRINTF(fmt, args)
#endif

/* Opaque handles owned by the router. */
struct gr_handler; /* one configured handler: its name, config, metrics */
struct gr_msg;     /* one delivery: a routed notification or an event */
struct gr_metric;  /* one metric series registered by a handler */

/* What handle() returns. */
enum gr_result {
    GR_OK = 0,    /* done; what the call emitted is delivered */
    GR_RETRY = 1, /* try again later, with backoff; emitted events are discarded */
    GR_FAIL = 2   /* give up on this delivery; emitted events are discarded */
};

enum gr_log_level { GR_LOG_ERROR = 0, GR_LOG_WARN = 1, GR_LOG_INFO = 2, GR_LOG_DEBUG = 3 };

/* What a delivery carries (host->msg_kind). */
enum gr_msg_kind {
    GR_MSG_NOTIFICATION = 1, /* a routed change notification (README: "Routed notification") */
    GR_MSG_EVENT = 2         /* a JSON object emitted by another handler */
};

/*
 * Handler configuration schema. The descriptor lists the keys its "config"
 * object may hold; the router checks every handler's config against it before
 * init, and reports unknown keys, wrong types and missing required keys with
 * file:line:column. Keys starting with "//" are comments and never reach the
 * plugin.
 */
enum gr_config_type {
    GR_CONFIG_STRING = 1,
    GR_CONFIG_INT = 2,          /* integer, fits int64_t */
    GR_CONFIG_NUMBER = 3,       /* integer or real */
    GR_CONFIG_BOOL = 4,
    GR_CONFIG_STRING_LIST = 5,  /* array of strings */
    GR_CONFIG_HANDLER_LIST = 6, /* array of handler names; each must exist, and
                                   the router refuses cycles. Targets of emit(). */
    GR_CONFIG_JSON = 7,         /* any JSON value; read it with config_json() */
    GR_CONFIG_SECRET = 8        /* since ABI 1.3: a secret, written as a string,
                                   {"file": "/path"} or {"env": "NAME"}. The router
                                   reads the file or the variable when it loads the
                                   configuration (start, SIGHUP, --check) and the
                                   plugin gets the secret as a string: config_string()
                                   (and config_json()) return it. The router wipes it
                                   from memory after fini; a plugin that copies it
                                   wipes its copy. Never log it. */
};

struct gr_config_key {
    const char *name; /* NULL ends the list */
    int type;         /* enum gr_config_type */
    int required;     /* non-zero: the key must be present */
    const char *help; /* one line, shown in error messages */
};

/* gr_plugin.flags */
#define GR_PLUGIN_SERIAL 0x1u /* never call handle() concurrently for one state */

struct gr_plugin {
    uint16_t abi_major; /* GR_PLUGIN_ABI_MAJOR */
    uint16_t abi_minor; /* GR_PLUGIN_ABI_MINOR */
    uint32_t size;      /* sizeof(struct gr_plugin) */

    const char *name;        /* short name, e.g. "file" */
    const char *version;     /* the plugin's own version, free form */
    const char *description; /* one line */
    uint32_t flags;          /* GR_PLUGIN_* */

    /* Keys allowed in the handler's "config" object; NULL or {NULL} = none. */
    const struct gr_config_key *config_keys;

    /* Optional. See the lifecycle above. *state starts as NULL. */
    int (*init)(struct gr_handler *h, void **state);
    /* Required. `msg` is borrowed for the duration of the call. */
    int (*handle)(void *state, struct gr_msg *msg);
    /* Optional. */
    void (*fini)(void *state);
    /* Optional: reopen files after log rotation (SIGUSR1). */
    void (*reopen)(void *state);
};

/* What a Graph request answered (host->graph_request, ABI 1.2). Strings are
 * the router's, valid until the next graph_request on the same message or
 * the end of the handle() call, whichever comes first. */
struct gr_graph_answer {
    int status;             /* the HTTP status; 0: no answer (see error) */
    const char *json;       /* the answer's body (JSON text), or NULL */
    size_t len;
    int64_t retry_after_ms; /* 429, 503: how long Graph asked to wait (0: it did not say) */
    const char *location;   /* the Location header (a 410 from a delta query), or NULL */
    const char *error;      /* why it failed, for host->set_error; NULL on a 2xx */
    int refused;            /* non-zero: not sent, and it never will be as asked (no "graph"
                             * section, a tenant it does not name, a URL outside base_url) */
};

/* Limits of a handler's durable state (host->state_*, ABI 1.2). */
#define GR_STATE_KEY_MAX 256          /* bytes of a key: 1 to this, no NUL */
#define GR_STATE_VALUE_MAX (64 * 1024) /* bytes of a value: 0 to this */

/*
 * Services the router offers. Every function is safe to call from any thread
 * the router calls the plugin on. Strings returned are borrowed: never free
 * them, and copy them if they must outlive the stated lifetime.
 */
struct gr_host {
    uint16_t abi_major;
    uint16_t abi_minor;
    uint32_t size;
    const char *version; /* the router's version string */

    /* ---- logging --------------------------------------------------------
     * One log line, tagged with the handler's name. The text is escaped, so
     * untrusted values cannot forge lines. Never log secrets or decrypted
     * content. `h` may be NULL (inside gr_plugin_entry). */
    void (*log)(const struct gr_handler *h, int level, const char *fmt, ...) GR_PLUGIN_PRINTF(3, 4);

    /* Explain why init() fails; the router prints it with the position of
     * the handler in the config file. Only meaningful during init(). */
    void (*init_error)(struct gr_handler *h, const char *fmt, ...) GR_PLUGIN_PRINTF(2, 3);

    /* The handler's name as configured. Valid until fini. */
    const char *(*handler_name)(const struct gr_handler *h);

    /* ---- configuration -----------------------------------------------
     * Typed getters for the handler's "config" object. The router already
     * checked every key against config_keys, so a getter only returns the
     * default when the key is absent (or null). Strings are valid until fini. */
    const char *(*config_string)(const struct gr_handler *h, const char *key); /* NULL if absent */
    int64_t (*config_int)(const struct gr_handler *h, const char *key, int64_t dflt);
    double (*config_number)(const struct gr_handler *h, const char *key, double dflt);
    int (*config_bool)(const struct gr_handler *h, const char *key, int dflt);
    /* STRING_LIST and HANDLER_LIST keys: number of entries, and entry i. */
    size_t (*config_list_size)(const struct gr_handler *h, const char *key);
    const char *(*config_list_item)(const struct gr_handler *h, const char *key, size_t i);
    /* Compact JSON text of config[key], or of the whole config object when
     * key is NULL; NULL if absent. Valid until fini. */
    const char *(*config_json)(const struct gr_handler *h, const char *key);

    /* ---- the message being handled ------------------------------------
     * Valid only during the handle() call that received `msg`. */
    int (*msg_kind)(const struct gr_msg *msg); /* enum gr_msg_kind */
    /* The whole message as one line of compact JSON (no newline). */
    const char *(*msg_json)(const struct gr_msg *msg, size_t *len);
    /* A top-level string member, e.g. "resource_type", "tenant_id",
     * "change_type", "event"; NULL when absent, null or not a string. */
    const char *(*msg_field)(const struct gr_msg *msg, const char *name);
    /* An id found on the resource path by role ("user", "message", "team",
     * "channel", ...; README: "Resource ids"); NULL if the path has none. */
    const char *(*msg_resource_id)(const struct gr_msg *msg, const char *role);

    /* Hand a JSON object to the handlers listed under `key` (a
     * GR_CONFIG_HANDLER_LIST key) in this handler's config. The text is
     * copied. The events are delivered only if this handle() call returns
     * GR_OK. Returns 0, or -1 if the JSON is not an object or `key` is not a
     * handler list of this handler (the reason is logged). */
    int (*emit)(struct gr_msg *msg, const char *key, const char *json, size_t len);

    /* ---- metrics ------------------------------------------------------
     * Register a series exported on /metrics as
     * graphrouter_plugin_<name>{handler="<handler>"}. `name` is
     * [a-z_][a-z0-9_]*. Call from init(); the same name returns the same
     * series, which survives reloads. Returns NULL on a bad name. The
     * handle is valid until fini; add/set are lock-free and thread-safe. */
    struct gr_metric *(*metric)(struct gr_handler *h, const char *name, const char *help,
                                int is_gauge);
    void (*metric_add)(struct gr_metric *m, int64_t delta);
    void (*metric_set)(struct gr_metric *m, int64_t value); /* gauges only */

    /* ---- since ABI 1.1 (check GR_HOST_HAS(host, set_error)) --------------
     * Say why this handle() call answers GR_RETRY or GR_FAIL: "HTTP 503",
     * "exit status 3". Kept as the delivery's last error, shown by
     * `graphrouter dlq` and in the log. The text is copied; the last call
     * wins. Only during the handle() call that received `msg`. */
    void (*set_error)(struct gr_msg *msg, const char *fmt, ...) GR_PLUGIN_PRINTF(2, 3);
    /* With GR_RETRY: the receiving end asked to wait at least `ms` before the
     * next attempt (an HTTP Retry-After). The router waits the longer of this
     * and its own backoff, capped at one day. Only during handle(). */
    void (*retry_after)(struct gr_msg *msg, int64_t ms);

    /* ---- since ABI 1.2 (check GR_HOST_HAS(host, state_lock)) -------------
     * Microsoft Graph, with the router's app-only token: a plugin never sees
     * a token or a secret. */

    /* Non-zero if the configuration has a "graph" section, so that
     * graph_request can work (callable from init). */
    int (*graph_available)(const struct gr_handler *h);

    /* One Graph call for the tenant of the message being handled (its
     * "tenant_id"). `target` is a path under graph.base_url
     * ("/users/u/messages/m?$select=subject"), or an absolute URL only when
     * it starts with graph.base_url + "/" (an @odata.nextLink or
     * @odata.deltaLink): any other URL is refused (status 0, an error, a log
     * line, answer->refused). `body` is JSON text or NULL. Returns 0 when
     * Graph answered (see answer->status), -1 when the call was not made or
     * got no answer (answer->error says why; answer->refused when asking
     * again cannot help). A 429 or 503 gives its Retry-After in
     * answer->retry_after_ms: answer GR_RETRY with host->retry_after. When
     * graphrouter holds the tenant back after an earlier Retry-After, the
     * call is not made and the answer is a 429 with the time left. The call
     * ends 2 s before the handler's "timeout_s" (a quarter of it if that
     * is shorter) and within graph.timeout_s; with no time left it is not
     * made (-1, not refused: a retry has its whole time again). Only
     * during the handle() call that received `msg`; the answer's strings
     * live until the next graph_request or the end of that call. */
    int (*graph_request)(struct gr_msg *msg, const char *method, const char *target,
                         const char *body, struct gr_graph_answer *answer);

    /* Durable state: a map of keys to values per handler name, kept in the
     * store across restarts and reloads. Only during handle().
     *
     * state_get returns the value as this call sees it: its own puts and
     * deletes first, then what earlier calls that returned GR_OK put,
     * committed or not yet. NULL if absent. *len is its length, and a NUL
     * follows it, so a text value can be used as a string. Valid until the
     * handle() call returns.
     *
     * state_put and state_delete take effect only if this call returns
     * GR_OK: they are written in the same transaction that finishes the
     * delivery and stores what it emitted, and visible to other calls as
     * soon as the router has recorded its outcome, right after it returned
     * (before the write; under state_lock, always to the next holder). A call that returns GR_RETRY or GR_FAIL, or
     * that a crash interrupts, leaves the state as it found it. They return
     * 0, or -1 when the key or value is out of bounds (GR_STATE_KEY_MAX,
     * GR_STATE_VALUE_MAX). Values are bytes; the router copies them.
     *
     * Two calls that write one key at the same time: the one that finishes
     * last wins. To read, change and write a key safely while the handler
     * runs calls concurrently, take state_lock(msg, key, 1) first: calls
     * that lock the same key of the same handler run one at a time, and
     * each sees what the one before it put. The lock is held until this
     * call's puts are visible to the next. state_lock returns 1 when this
     * call holds the lock, 0 when another call holds it: with wait 0 at
     * once, else once the wait would take the call past the end of its time
     * (2 s before the handler's "timeout_s", or a quarter of it if shorter):
     * answer GR_RETRY then. A call may lock several keys, but waits only
     * for its first: while it holds one, state_lock on another returns at
     * once, so two calls never wait for each other. -1: the key is out of
     * bounds. (A handler with "concurrency": 1, or a plugin with
     * GR_PLUGIN_SERIAL, runs one call at a time anyway.) */
    const char *(*state_get)(struct gr_msg *msg, const char *key, size_t *len);
    int (*state_put)(struct gr_msg *msg, const char *key, const void *value, size_t len);
    int (*state_delete)(struct gr_msg *msg, const char *key);
    int (*state_lock)(struct gr_msg *msg, const char *key, int wait);
};

/* True if the running router's host table has `field` (for plugins built
 * against a newer minor than the router they run in). */
#define GR_HOST_HAS(host, field)                                                                   \
    ((host)->size >= offsetof(struct gr_host, field) + sizeof((host)->field))

#define GR_PLUGIN_ENTRY_SYMBOL "gr_plugin_entry"
typedef const struct gr_plugin *(*gr_plugin_entry_fn)(const struct gr_host *host);

/* Defined by every plugin. */
GR_PLUGIN_EXPORT const struct gr_plugin *gr_plugin_entry(const struct gr_host *host);

#ifdef __cplusplus
}
#endif

#endif
