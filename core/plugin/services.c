/*
 * The host services of ABI 1.2 (plugin.h): Graph requests with the router's
 * app token, and handlers' durable state with its per-key locks.
 *
 * Everything here runs on the worker thread that is inside the handle()
 * call owning the message; what a call was given lives in its gr_msg until
 * gr_msg_finish. The one shared structure is the table of state locks, under
 * `locks_lock`.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "generation.h"
#include "log.h"
#include "metrics.h"
#include "plugin/plugin_host.h"
#include "util.h"

#define GR_TIMEOUT_MARGIN_MS 2000 /* waits end this long before timeout_s, at most */

/* When a wait inside handle() must have ended, so that the call can return
 * before its timeout_s restarts the router (gr_mono_ms; 0: no limit). */
static int64_t call_deadline(const struct gr_msg *m)
{
    int64_t limit = (int64_t)m->handler->conf->timeout_s * 1000, margin = limit / 4;
    if (margin > GR_TIMEOUT_MARGIN_MS)
        margin = GR_TIMEOUT_MARGIN_MS;
    return limit ? m->started_mono + limit - margin : 0;
}

/* ---- Graph --------------------------------------------------------------- */

int gr_host_graph_available(const struct gr_handler *h)
{
    return h && h->gen && h->gen->graph != NULL;
}

static void forget_answer(struct gr_msg *m)
{
    if (m->answer) {
        gr_graph_response_free(m->answer);
        free(m->answer);
        m->answer = NULL;
    }
}

/* Refused before anything is sent: status 0 and why. */
/* Not sent: for good (`refused`), or for this call only. */
static int not_sent(struct gr_msg *m, struct gr_graph_answer *a, const char *why, bool refused)
{
    m->answer = gr_xcalloc(1, sizeof *m->answer);
    m->answer->error = gr_xstrdup(why);
    a->error = m->answer->error;
    a->refused = refused;
    return -1;
}

static int refuse(struct gr_msg *m, struct gr_graph_answer *a, const char *why)
{
    return not_sent(m, a, why, true);
}

int gr_host_graph_request(struct gr_msg *m, const char *method, const char *target,
                          const char *body, struct gr_graph_answer *a)
{
    *a = (struct gr_graph_answer){0};
    forget_answer(m);
    struct gr_handler *h = m->handler;
    if (!h->gen->graph)
        return refuse(m, a, "the configuration has no \"graph\" section");
    if (!method || !target || !*target)
        return refuse(m, a, "a Graph request needs a method and a target");
    json_t *root = gr_msg_root(m);
    const char *tenant = json_string_value(json_object_get(root, "tenant_id"));
    if (!tenant)
        return refuse(m, a, "the message names no tenant (\"tenant_id\")");
    if (!gr_graph_has_tenant(h->gen->graph, tenant))
        return refuse(m, a, "the message's tenant is not in graph.tenants");
    const char *base = h->gen->cfg->graph.base_url;
    size_t nbase = strlen(base);
    if (target[0] != '/' && (strncmp(target, base, nbase) != 0 || target[nbase] != '/')) {
        gr_warn_limited("handler \"%s\": a Graph request to a URL outside graph.base_url (%s) "
                        "is refused",
                        h->name, base);
        return refuse(m, a, "the URL is outside graph.base_url: only paths under it, and "
                            "links Graph gives that start with it, are requested");
    }
    int64_t deadline = call_deadline(m);
    if (deadline && deadline <= gr_mono_ms() + 100) /* a retry has the whole time again */
        return not_sent(m, a, "no time is left within the handler's timeout_s", false);
    struct gr_graph_response *r = m->answer = gr_xcalloc(1, sizeof *r);
    enum gr_graph_outcome o =
        gr_graph_call(h->gen->graph, tenant, method, target, body, false, NULL, deadline, r);
    if (o == GR_GRAPH_THROTTLED) { /* held back, not sent: as Graph would say it */
        r->status = 429;
        free(r->error);
        r->error = gr_xprintf("the tenant is held back for %lld ms (an earlier Retry-After, "
                              "or it does not answer)",
                              (long long)r->retry_after_ms);
    }
    gr_metrics_handler_graph(h->stats, o == GR_GRAPH_ANSWERED ? r->status : 0);
    *a = (struct gr_graph_answer){.status = (int)r->status, .json = r->text, .len = r->len,
                                  .retry_after_ms = r->retry_after_ms, .location = r->location,
                                  .error = r->error};
    return o == GR_GRAPH_FAILED ? -1 : 0;
}

/* ---- state ----------------------------------------------------------------- */

static bool key_ok(const char *key)
{
    size_t n = key ? strlen(key) : 0;
    return n > 0 && n <= GR_STATE_KEY_MAX;
}

static struct gr_state_write *own_write(struct gr_msg *m, const char *key)
{
    for (size_t i = 0; i < m->nwrites; i++)
        if (strcmp(m->writes[i].key, key) == 0)
            return &m->writes[i];
    return NULL;
}

const char *gr_host_state_get(struct gr_msg *m, const char *key, size_t *len)
{
    size_t dummy;
    len = len ? len : &dummy;
    *len = 0;
    if (!key_ok(key) || !m->store)
        return NULL;
    const struct gr_state_write *w = own_write(m, key);
    if (w) {
        *len = w->value ? w->len : 0;
        return w->value;
    }
    char *v = NULL;
    if (gr_store_state_get(m->store, m->handler->name, key, &v, len) != 1)
        return NULL;
    m->reads = gr_xrealloc(m->reads, (m->nreads + 1) * sizeof *m->reads);
    m->reads[m->nreads++] = v;
    return v;
}

static int write_key(struct gr_msg *m, const char *key, const void *value, size_t len)
{
    if (!key_ok(key) || (value && len > GR_STATE_VALUE_MAX)) {
        gr_warn("handler \"%s\": state key or value out of bounds (keys 1-%d bytes, values "
                "at most %d bytes); not kept",
                m->handler->name, GR_STATE_KEY_MAX, GR_STATE_VALUE_MAX);
        return -1;
    }
    struct gr_state_write *w = own_write(m, key);
    if (!w) {
        m->writes = gr_xrealloc(m->writes, (m->nwrites + 1) * sizeof *m->writes);
        w = &m->writes[m->nwrites++];
        *w = (struct gr_state_write){.key = gr_xstrdup(key)};
    }
    char *old = w->value; /* state_get may have handed it out: it lives until the end */
    w->value = value ? gr_xmemdup(value, len) : NULL; /* bytes: NULs included */
    w->len = value ? len : 0;
    if (old) {
        m->reads = gr_xrealloc(m->reads, (m->nreads + 1) * sizeof *m->reads);
        m->reads[m->nreads++] = old;
    }
    return 0;
}

int gr_host_state_put(struct gr_msg *m, const char *key, const void *value, size_t len)
{
    return write_key(m, key, value ? value : "", value ? len : 0);
}

int gr_host_state_delete(struct gr_msg *m, const char *key)
{
    return write_key(m, key, NULL, 0);
}

/* ---- state locks ------------------------------------------------------------ */

struct gr_state_lock {
    struct gr_state_lock *next;
    char *id; /* handler "\n" key */
    bool held;
    unsigned users; /* the holder and the waiters */
    pthread_cond_t free;
};

static pthread_mutex_t locks_lock = PTHREAD_MUTEX_INITIALIZER;
static struct gr_state_lock *locks;

static void unlock_state(struct gr_state_lock *l)
{
    pthread_mutex_lock(&locks_lock);
    l->held = false;
    if (--l->users == 0) { /* nobody waits: the entry goes */
        struct gr_state_lock **p = &locks;
        while (*p != l)
            p = &(*p)->next;
        *p = l->next;
        pthread_cond_destroy(&l->free);
        free(l->id);
        free(l);
    } else {
        pthread_cond_signal(&l->free);
    }
    pthread_mutex_unlock(&locks_lock);
}

int gr_host_state_lock(struct gr_msg *m, const char *key, int wait)
{
    if (!key_ok(key))
        return -1;
    char *id = gr_xprintf("%s\n%s", m->handler->name, key);
    for (size_t i = 0; i < m->nlocks; i++)
        if (strcmp(m->locks[i]->id, id) == 0) {
            free(id);
            return 1;
        }
    /* A call that holds a key never waits for another: two calls can then
     * never wait for each other. */
    wait = wait && m->nlocks == 0;
    pthread_mutex_lock(&locks_lock);
    struct gr_state_lock *l = locks;
    while (l && strcmp(l->id, id) != 0)
        l = l->next;
    if (!l) {
        l = gr_xcalloc(1, sizeof *l);
        l->id = id;
        id = NULL;
        gr_cond_init_mono(&l->free);
        l->next = locks;
        locks = l;
    }
    free(id);
    if (l->held && !wait) {
        pthread_mutex_unlock(&locks_lock);
        return 0;
    }
    l->users++;
    int64_t deadline = call_deadline(m);
    while (l->held && (!deadline || gr_mono_ms() < deadline)) {
        if (!deadline) {
            pthread_cond_wait(&l->free, &locks_lock);
            continue;
        }
        struct timespec ts = {.tv_sec = deadline / 1000, .tv_nsec = (deadline % 1000) * 1000000};
        pthread_cond_timedwait(&l->free, &locks_lock, &ts);
    }
    if (l->held) { /* the holders took this call's time: it answers GR_RETRY */
        l->users--; /* the holder remains, and so does the entry */
        pthread_mutex_unlock(&locks_lock);
        gr_warn_limited("handler \"%s\": a state lock was not free within the handler's "
                        "timeout_s",
                        m->handler->name);
        return 0;
    }
    l->held = true;
    pthread_mutex_unlock(&locks_lock);
    m->locks = gr_xrealloc(m->locks, (m->nlocks + 1) * sizeof *m->locks);
    m->locks[m->nlocks++] = l;
    return 1;
}

void gr_msg_finish(struct gr_msg *m)
{
    for (size_t i = 0; i < m->nlocks; i++)
        unlock_state(m->locks[i]);
    free(m->locks);
    m->locks = NULL;
    m->nlocks = 0;
    forget_answer(m);
    for (size_t i = 0; i < m->nreads; i++)
        free(m->reads[i]);
    free(m->reads);
    m->reads = NULL;
    m->nreads = 0;
    for (size_t i = 0; i < m->nwrites; i++) {
        free(m->writes[i].key);
        free(m->writes[i].value);
    }
    free(m->writes);
    m->writes = NULL;
    m->nwrites = 0;
}
