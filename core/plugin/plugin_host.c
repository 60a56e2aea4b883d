/*
 * Plugin loading, ABI checks, the host service table and handler config
 * schema checks (see plugin_host.h). Loading runs on the control thread; the
 * host functions run on whatever thread calls them and touch only the
 * handler or message they are given (json_lock guards the one lazy cache).
 */
#define _GNU_SOURCE
#include "plugin/plugin_host.h"

#include <dlfcn.h>
#include <errno.h>
#include <libgen.h>
#include <openssl/crypto.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "secret.h"
#include "util.h"

struct gr_json_cache {
    struct gr_json_cache *next;
    char *key; /* NULL: the whole config */
    char *text;
};

/* ---- host functions ---------------------------------------------------- */

GR_PLUGIN_PRINTF(3, 4) static void host_log(const struct gr_handler *h, int level,
                                            const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    level = level < GR_LOG_ERROR ? GR_LOG_ERROR : level > GR_LOG_DEBUG ? GR_LOG_DEBUG : level;
    gr_log_handler(level, h ? h->name : NULL, fmt, ap);
    va_end(ap);
}

GR_PLUGIN_PRINTF(2, 3) static void host_init_error(struct gr_handler *h, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    free(h->init_error);
    h->init_error = gr_xvprintf(fmt, ap);
    va_end(ap);
}

static const char *host_handler_name(const struct gr_handler *h)
{
    return h->name;
}

static const json_t *config_get(const struct gr_handler *h, const char *key)
{
    return key ? json_object_get(h->conf->config, key) : NULL;
}

static const char *host_config_string(const struct gr_handler *h, const char *key)
{
    return json_string_value(config_get(h, key));
}

static int64_t host_config_int(const struct gr_handler *h, const char *key, int64_t dflt)
{
    const json_t *v = config_get(h, key);
    return json_is_integer(v) ? (int64_t)json_integer_value(v) : dflt;
}

static double host_config_number(const struct gr_handler *h, const char *key, double dflt)
{
    const json_t *v = config_get(h, key);
    return json_is_number(v) ? json_number_value(v) : dflt;
}

static int host_config_bool(const struct gr_handler *h, const char *key, int dflt)
{
    const json_t *v = config_get(h, key);
    return json_is_boolean(v) ? json_is_true(v) : dflt;
}

static size_t host_config_list_size(const struct gr_handler *h, const char *key)
{
    const json_t *v = config_get(h, key);
    return json_is_string(v) ? 1 : json_array_size(v);
}

static const char *host_config_list_item(const struct gr_handler *h, const char *key, size_t i)
{
    const json_t *v = config_get(h, key);
    if (json_is_string(v))
        return i == 0 ? json_string_value(v) : NULL;
    return json_string_value(json_array_get(v, i));
}

static const char *host_config_json(const struct gr_handler *h, const char *key)
{
    const json_t *v = key ? config_get(h, key) : h->conf->config;
    if (!v)
        return NULL;
    struct gr_handler *mh = (struct gr_handler *)h;
    pthread_mutex_lock(&mh->json_lock);
    struct gr_json_cache *e = mh->json_cache;
    while (e && !(key ? e->key && strcmp(e->key, key) == 0 : !e->key))
        e = e->next;
    if (!e) {
        e = gr_xcalloc(1, sizeof *e);
        e->key = key ? gr_xstrdup(key) : NULL;
        e->text = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
        if (!e->text)
            e->text = gr_xstrdup("null");
        e->next = mh->json_cache;
        mh->json_cache = e;
    }
    pthread_mutex_unlock(&mh->json_lock);
    return e->text;
}

static int host_msg_kind(const struct gr_msg *m)
{
    return m->kind;
}

static const char *host_msg_json(const struct gr_msg *m, size_t *len)
{
    if (len)
        *len = m->len;
    return m->json;
}

json_t *gr_msg_root(struct gr_msg *m)
{
    if (!m->root)
        m->root = json_loadb(m->json, m->len, 0, NULL);
    return m->root;
}

/* The getters take a const message but fill its parse cache: the message is
 * used by the one thread that is handling it. */
static const char *host_msg_field(const struct gr_msg *m, const char *name)
{
    return name ? json_string_value(json_object_get(gr_msg_root((struct gr_msg *)m), name)) : NULL;
}

static const char *host_msg_resource_id(const struct gr_msg *m, const char *role)
{
    json_t *ids = json_object_get(gr_msg_root((struct gr_msg *)m), "resource_ids");
    return role ? json_string_value(json_object_get(ids, role)) : NULL;
}

static int host_emit(struct gr_msg *m, const char *key, const char *json, size_t len)
{
    struct gr_handler *h = m->handler;
    const struct gr_emit_targets *t = NULL;
    for (size_t i = 0; key && i < h->nemit; i++)
        if (strcmp(h->emit[i].key, key) == 0)
            t = &h->emit[i];
    if (!t) {
        gr_log(GR_LOG_LEVEL_ERROR,
               "emit() refused: \"%s\" is not a handler-list key of handler \"%s\"",
               key ? key : "(null)", h->name);
        return -1;
    }
    json_error_t jerr;
    json_t *event = json ? json_loadb(json, len, 0, &jerr) : NULL;
    if (!json_is_object(event)) {
        json_decref(event);
        gr_log(GR_LOG_LEVEL_ERROR, "emit() refused: handler \"%s\" emitted something that is "
                                   "not a JSON object",
               h->name);
        return -1;
    }
    /* Re-encode compactly: every event is one line for line-based outputs. */
    char *text = json_dumps(event, JSON_COMPACT);
    json_decref(event);
    size_t tlen = strlen(text);
    for (size_t i = 0; i < t->n; i++) {
        if (m->nemitted == m->cap) {
            m->cap = m->cap ? m->cap * 2 : 4;
            m->emitted = gr_xrealloc(m->emitted, m->cap * sizeof *m->emitted);
        }
        m->emitted[m->nemitted++] =
            (struct gr_emitted){t->handlers[i], i + 1 < t->n ? gr_xstrndup(text, tlen) : text,
                                tlen};
    }
    if (t->n == 0)
        free(text);
    return 0;
}

static struct gr_metric *host_metric(struct gr_handler *h, const char *name, const char *help,
                                     int is_gauge)
{
    struct gr_metric *m = gr_metrics_plugin(h->name, name, help, is_gauge != 0);
    if (!m)
        gr_log(GR_LOG_LEVEL_ERROR,
               "handler \"%s\": metric name \"%s\" refused (use [a-z_][a-z0-9_]*, one type per "
               "name)",
               h->name, name ? name : "(null)");
    return m;
}

static void host_metric_add(struct gr_metric *m, int64_t delta)
{
    gr_metric_add(m, delta);
}

static void host_metric_set(struct gr_metric *m, int64_t value)
{
    gr_metric_set(m, value);
}

GR_PLUGIN_PRINTF(2, 3) static void host_set_error(struct gr_msg *m, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    free(m->error);
    m->error = gr_xvprintf(fmt, ap);
    va_end(ap);
}

#define GR_MAX_RETRY_AFTER_MS (INT64_C(86400) * 1000)

static void host_retry_after(struct gr_msg *m, int64_t ms)
{
    if (ms > GR_MAX_RETRY_AFTER_MS)
        ms = GR_MAX_RETRY_AFTER_MS;
    m->retry_after_ms = ms > 0 ? ms : 0;
}

static const struct gr_host host_table = {
    .abi_major = GR_PLUGIN_ABI_MAJOR,
    .abi_minor = GR_PLUGIN_ABI_MINOR,
    .size = sizeof(struct gr_host),
    .version = GR_VERSION,
    .log = host_log,
    .init_error = host_init_error,
    .handler_name = host_handler_name,
    .config_string = host_config_string,
    .config_int = host_config_int,
    .config_number = host_config_number,
    .config_bool = host_config_bool,
    .config_list_size = host_config_list_size,
    .config_list_item = host_config_list_item,
    .config_json = host_config_json,
    .msg_kind = host_msg_kind,
    .msg_json = host_msg_json,
    .msg_field = host_msg_field,
    .msg_resource_id = host_msg_resource_id,
    .emit = host_emit,
    .metric = host_metric,
    .metric_add = host_metric_add,
    .metric_set = host_metric_set,
    .set_error = host_set_error,
    .retry_after = host_retry_after,
    .graph_available = gr_host_graph_available,
    .graph_request = gr_host_graph_request,
    .state_get = gr_host_state_get,
    .state_put = gr_host_state_put,
    .state_delete = gr_host_state_delete,
    .state_lock = gr_host_state_lock,
};

const struct gr_host *gr_plugin_host(void)
{
    return &host_table;
}

void gr_handler_release(struct gr_handler *h)
{
    for (struct gr_json_cache *e = h->json_cache, *next; e; e = next) {
        next = e->next;
        free(e->key);
        OPENSSL_cleanse(e->text, strlen(e->text)); /* a GR_CONFIG_SECRET may be in it */
        free(e->text);
        free(e);
    }
    h->json_cache = NULL;
    free(h->init_error);
    h->init_error = NULL;
    for (size_t i = 0; i < h->nemit; i++)
        free(h->emit[i].handlers);
    free(h->emit);
    h->emit = NULL;
    h->nemit = 0;
}

/* ---- loading ----------------------------------------------------------- */

static pthread_mutex_t load_lock = PTHREAD_MUTEX_INITIALIZER;
static char *link_dir;
static unsigned long link_seq;

void gr_plugin_host_cleanup(void)
{
    pthread_mutex_lock(&load_lock);
    if (link_dir) {
        rmdir(link_dir);
        free(link_dir);
        link_dir = NULL;
    }
    pthread_mutex_unlock(&load_lock);
}

int gr_plugin_host_set_owner(uid_t uid, gid_t gid, char **why)
{
    int rc = 0;
    pthread_mutex_lock(&load_lock);
    if (link_dir && chown(link_dir, uid, gid) != 0) {
        *why = gr_xprintf("cannot give %s to uid %u: %s", link_dir, (unsigned)uid,
                          strerror(errno));
        rc = -1;
    }
    pthread_mutex_unlock(&load_lock);
    return rc;
}

/* dlopen through a fresh symlink (see plugin_host.h). Called with load_lock. */
static void *open_fresh(const char *real, char **why)
{
    if (!link_dir) {
        const char *base = getenv("TMPDIR");
        char *tmpl = gr_xprintf("%s/graphrouter-plugins.XXXXXX", base && *base ? base : "/tmp");
        if (!mkdtemp(tmpl)) {
            *why = gr_xprintf("cannot create a private directory for loading plugins (%s): %s",
                              tmpl, strerror(errno));
            free(tmpl);
            return NULL;
        }
        link_dir = tmpl;
    }
    char *copy = gr_xstrdup(real);
    char *link = gr_xprintf("%s/%lu-%s", link_dir, ++link_seq, basename(copy));
    free(copy);
    if (symlink(real, link) != 0) {
        *why = gr_xprintf("cannot create %s: %s", link, strerror(errno));
        free(link);
        return NULL;
    }
    dlerror();
    void *dl = dlopen(link, RTLD_NOW | RTLD_LOCAL);
    if (!dl) {
        const char *e = dlerror();
        e = e ? e : "unknown error";
        size_t ll = strlen(link);
        if (strncmp(e, link, ll) == 0 && strncmp(e + ll, ": ", 2) == 0)
            e += ll + 2; /* the message starts with the symlink's name; drop it */
        *why = gr_xstrdup(e);
    }
    unlink(link);
    free(link);
    return dl;
}

/* The shared objects loaded, each with the descriptor its entry point
 * returned and the number of gr_plugin_libs holding it. For an unchanged file
 * dlopen hands back the object already loaded; its entry point ran when the
 * object was loaded and is not called again ("once per load", plugin.h). The
 * serving generation's workers and jobs run that object's code meanwhile, so a
 * second call, which stores `host` in the plugin's static again, would be a
 * data race with every one of them. Guarded by load_lock, which is held from
 * dlopen to registration and around dlclose, so the list matches what the
 * dynamic loader holds. */
struct loaded_object {
    struct loaded_object *next;
    void *dl;
    const struct gr_plugin *desc;
    unsigned holders;
};
static struct loaded_object *loaded_objects;

static struct loaded_object *loaded_find(void *dl)
{
    for (struct loaded_object *o = loaded_objects; o; o = o->next)
        if (o->dl == dl)
            return o;
    return NULL;
}

/* The descriptor of a freshly loaded object, from its entry point and checked;
 * NULL with *err set. Called with load_lock. */
static const struct gr_plugin *first_entry(void *dl, const char *path, char **err)
{
    void *sym = dlsym(dl, GR_PLUGIN_ENTRY_SYMBOL);
    gr_plugin_entry_fn entry;
    memcpy(&entry, &sym, sizeof entry);
    const struct gr_plugin *desc = entry ? entry(&host_table) : NULL;
    if (!entry)
        *err = gr_xprintf("plugin %s: no exported function %s(); is it a graphrouter plugin "
                          "built with GR_PLUGIN_EXPORT?",
                          path, GR_PLUGIN_ENTRY_SYMBOL);
    else if (!desc)
        *err = gr_xprintf("plugin %s: %s() returned NULL", path, GR_PLUGIN_ENTRY_SYMBOL);
    else if (desc->abi_major != GR_PLUGIN_ABI_MAJOR || desc->abi_minor > GR_PLUGIN_ABI_MINOR)
        *err = gr_xprintf("plugin %s was built for plugin ABI %u.%u, but this graphrouter "
                          "provides ABI %u.%u (the major must match and the minor must not be "
                          "newer); rebuild the plugin against this graphrouter's "
                          "graphrouter/plugin.h",
                          path, desc->abi_major, desc->abi_minor, GR_PLUGIN_ABI_MAJOR,
                          GR_PLUGIN_ABI_MINOR);
    else if (desc->size < offsetof(struct gr_plugin, handle) + sizeof desc->handle)
        *err = gr_xprintf("plugin %s: descriptor size %u is too small", path, desc->size);
    else if (!desc->handle)
        *err = gr_xprintf("plugin %s: its descriptor has no handle() function", path);
    return *err ? NULL : desc;
}

int gr_plugin_lib_load(const char *path, struct gr_plugin_lib *lib, char **err)
{
    *lib = (struct gr_plugin_lib){0};
    *err = NULL;
    char *real = realpath(path, NULL);
    struct stat st;
    if (!real || stat(real, &st) != 0 || !S_ISREG(st.st_mode)) {
        *err = gr_xprintf("plugin %s: cannot open: %s", path,
                          real ? "not a regular file" : strerror(errno));
        free(real);
        return -1;
    }
    char *why = NULL;
    pthread_mutex_lock(&load_lock);
    void *dl = open_fresh(real, &why);
    free(real);
    if (!dl) {
        pthread_mutex_unlock(&load_lock);
        *err = gr_xprintf("plugin %s: cannot load: %s", path, why);
        free(why);
        return -1;
    }
    const struct gr_plugin *desc;
    struct loaded_object *o = loaded_find(dl);
    if (o) {
        o->holders++;
        desc = o->desc;
    } else if ((desc = first_entry(dl, path, err))) {
        o = gr_xcalloc(1, sizeof *o);
        *o = (struct loaded_object){.next = loaded_objects, .dl = dl, .desc = desc, .holders = 1};
        loaded_objects = o;
    } else {
        dlclose(dl);
    }
    pthread_mutex_unlock(&load_lock);
    if (!desc)
        return -1;
    size_t n = desc->size < sizeof lib->desc ? desc->size : sizeof lib->desc;
    memcpy(&lib->desc, desc, n);
    if (!lib->desc.name)
        lib->desc.name = "unnamed";
    lib->dl = dl;
    lib->path = gr_xstrdup(path);
    return 0;
}

void gr_plugin_lib_unload(struct gr_plugin_lib *lib)
{
    if (lib->dl) {
        pthread_mutex_lock(&load_lock);
        for (struct loaded_object **p = &loaded_objects; *p; p = &(*p)->next) {
            if ((*p)->dl == lib->dl) {
                struct loaded_object *o = *p;
                if (--o->holders == 0) {
                    *p = o->next;
                    free(o);
                }
                break;
            }
        }
        dlclose(lib->dl);
        pthread_mutex_unlock(&load_lock);
    }
    free(lib->path);
    *lib = (struct gr_plugin_lib){0};
}

/* ---- config schema ----------------------------------------------------- */

static const char *type_text(int type)
{
    switch (type) {
    case GR_CONFIG_STRING: return "a string";
    case GR_CONFIG_INT: return "an integer";
    case GR_CONFIG_NUMBER: return "a number";
    case GR_CONFIG_BOOL: return "true or false";
    case GR_CONFIG_STRING_LIST: return "a string or a list of strings";
    case GR_CONFIG_HANDLER_LIST: return "a handler name or a list of handler names";
    case GR_CONFIG_SECRET: return "a string, {\"file\": \"/path\"} or {\"env\": \"NAME\"}";
    default: return "any JSON value";
    }
}

static bool type_ok(int type, const json_t *v)
{
    switch (type) {
    case GR_CONFIG_STRING: return json_is_string(v);
    case GR_CONFIG_INT: return json_is_integer(v);
    case GR_CONFIG_NUMBER: return json_is_number(v);
    case GR_CONFIG_BOOL: return json_is_boolean(v);
    case GR_CONFIG_STRING_LIST:
    case GR_CONFIG_HANDLER_LIST:
        if (json_is_string(v))
            return true;
        if (!json_is_array(v))
            return false;
        for (size_t i = 0; i < json_array_size(v); i++)
            if (!json_is_string(json_array_get(v, i)))
                return false;
        return true;
    case GR_CONFIG_JSON: return true;
    case GR_CONFIG_SECRET: return json_is_string(v) || json_is_object(v); /* resolved after */
    default: return false;
    }
}

/* A GR_CONFIG_SECRET key: the secret, as a string, replaces a {"file"} or
 * {"env"}; either way the string is noted for the wipe. */
static int resolve_secret(struct gr_check *c, const struct gr_handler_conf *hc, const char *key,
                          struct gr_secret_nodes *secrets)
{
    char *what = gr_xprintf("handler \"%s\"", hc->name), *secret = NULL;
    size_t len = 0;
    int rc = gr_secret_resolve(c, hc->config, key, false, what, &secret, &len);
    free(what);
    if (rc < 0 || !secret)
        return rc;
    if (!json_is_string(json_object_get(hc->config, key))) /* {"file"} or {"env"} */
        json_object_set_new(hc->config, key, json_stringn_nocheck(secret, len));
    gr_secret_wipe(secret, len);
    gr_secret_nodes_add(secrets, hc->config, key);
    return 0;
}

int gr_plugin_check_config(struct gr_check *c, const struct gr_handler_conf *hc,
                           const struct gr_plugin *desc, struct gr_secret_nodes *secrets)
{
    const struct gr_config_key *keys = desc->config_keys;
    size_t n = 0;
    while (keys && keys[n].name)
        n++;
    const char **names = gr_xcalloc(n + 1, sizeof *names);
    for (size_t i = 0; i < n; i++)
        names[i] = keys[i].name;
    char *what = gr_xprintf("the config of handler \"%s\" (plugin \"%s\")", hc->name, desc->name);
    int rc = gr_check_keys(c, hc->config, what, names);
    free(what);
    free(names);
    if (rc < 0)
        return -1;
    for (size_t i = 0; i < n; i++) {
        const json_t *v = json_object_get(hc->config, keys[i].name);
        if (!v || json_is_null(v)) {
            if (keys[i].required) /* at "config", or at the handler if it has none */
                return gr_check_fail_member(c, hc->node, "config",
                                           "handler \"%s\": missing required key \"%s\" in "
                                           "\"config\" (%s)",
                                           hc->name, keys[i].name,
                                           keys[i].help ? keys[i].help : type_text(keys[i].type));
            continue;
        }
        if (!type_ok(keys[i].type, v))
            return gr_check_fail_member(c, hc->config, keys[i].name,
                                        "handler \"%s\": \"%s\" must be %s%s%s%s", hc->name,
                                        keys[i].name, type_text(keys[i].type),
                                        keys[i].help ? " (" : "", keys[i].help ? keys[i].help : "",
                                        keys[i].help ? ")" : "");
        if (keys[i].type == GR_CONFIG_SECRET &&
            resolve_secret(c, hc, keys[i].name, secrets) < 0)
            return -1;
    }
    return 0;
}
