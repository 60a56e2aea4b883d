/*
 * graphrouter: command line, start-up, the control thread and shutdown.
 *
 * The main thread becomes the control thread. Signal handlers only write one
 * byte to a pipe; the control loop reads it and acts: SIGHUP builds a new
 * generation beside the running one and swaps it in (bursts coalesce into one
 * reload), SIGUSR1 asks handlers to reopen their files, SIGTERM/SIGINT drain
 * and exit. The loop also destroys retired generations once nothing pins
 * them. Every other thread runs with these signals blocked.
 */
#define _GNU_SOURCE
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <libgen.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "generation.h"
#include "graph/manager.h"
#include "http/http.h"
#include "log.h"
#include "plugin/plugin_host.h"
#include "plugin/plugin_job.h"
#include "privs.h"
#include "store/store.h"
#include "store/store_admin.h"
#include "util.h"
#include "worker/worker.h"

static int control_pipe[2] = {-1, -1};

static void wake(char c)
{
    int saved = errno;
    if (write(control_pipe[1], &c, 1) < 0) {
        /* the pipe is full: a wake-up is already pending */
    }
    errno = saved;
}

static void on_signal(int sig)
{
    wake(sig == SIGHUP ? 'H' : sig == SIGUSR1 ? 'U' : 'T');
}

static void on_generation_idle(void)
{
    wake('R');
}

/* ---- the control thread ---------------------------------------------------
 * It acts on signals (through control_pipe), reloads, retires generations
 * and watches the workers' handle() calls; plugin code it needs run (init,
 * reopen, fini) runs as supervised jobs (plugin_job.h) while it goes on
 * doing that every 250 ms (control_tick). */

struct control {
    const char *file;
    uint64_t next_id;
    struct gr_generation *retired;
    struct gr_store *store;     /* NULL until started */
    struct gr_manager *manager; /* NULL until started */
    struct gr_workers *workers; /* NULL until started */
    bool hup, usr1, term;       /* signals not acted on yet */
    bool restart;               /* a handle() call is stuck: exit with status 1 */
};

/* A handle() call past its handler's timeout_s. In-process code cannot be
 * stopped safely, so graphrouter restarts: it shuts down as for SIGTERM and
 * exits with status 1 once the stuck call has had shutdown_timeout_s more;
 * at the next start that delivery counts a failed attempt (see recover() in
 * the store), so one that hangs every time ends as a dead letter. */
static void restart_for(struct gr_store *store, const struct gr_late_call *o)
{
    char *note = gr_xprintf("handle() did not return within the handler's timeout_s (%u s); "
                            "graphrouter restarted",
                            o->timeout_s);
    /* a direct delivery (o->id 0) gets its unit now, and so an id */
    int64_t id = gr_store_note_running(store, o->id, o->item, o->handler, note);
    free(note);
    if (!id)
        id = o->id;
    if (id)
        gr_error("handler \"%s\": handle() has run for %lld s on delivery %lld, past its "
                 "timeout_s (%u s); restarting graphrouter (exit status 1): the delivery counts "
                 "a failed attempt and runs again after the restart",
                 o->handler, (long long)(o->running_ms / 1000), (long long)id, o->timeout_s);
    else
        gr_error("handler \"%s\": handle() has run for %lld s on item %lld, past its "
                 "timeout_s (%u s); restarting graphrouter (exit status 1): the delivery counts "
                 "a failed attempt and runs again after the restart",
                 o->handler, (long long)(o->running_ms / 1000), (long long)o->item, o->timeout_s);
}

/* Take in signals and check the workers' calls. True when the control
 * thread must stop waiting for a plugin job: shutting down or restarting. */
static bool control_tick(void *arg)
{
    struct control *ctl = arg;
    char buf[64];
    ssize_t n;
    while ((n = read(control_pipe[0], buf, sizeof buf)) > 0) {
        for (ssize_t i = 0; i < n; i++) {
            ctl->hup |= buf[i] == 'H';
            ctl->term |= buf[i] == 'T';
            ctl->usr1 |= buf[i] == 'U';
        }
    }
    struct gr_late_call overdue;
    while (ctl->workers && gr_workers_overdue(ctl->workers, &overdue)) { /* each stuck call, once */
        restart_for(ctl->store, &overdue);
        ctl->restart = true;
    }
    return ctl->term || ctl->restart;
}

static void report_stuck(const char *doing, const struct gr_job_stuck *st)
{
    if (st->given_up)
        gr_warn("%s: no longer waited for: graphrouter is stopping", doing);
    else
        gr_error("%s: handler \"%s\": %s() has not returned after %u s (the handler's "
                 "timeout_s); left to finish alone",
                 doing, st->call.handler, st->call.what, st->call.timeout_s);
}

struct build {
    const char *file;
    uint64_t id;
    struct gr_generation *prev; /* pinned for the build, which unpins it */
    struct gr_generation *g;
    char *err;
    int rc;
};

static void build_job(void *arg)
{
    struct build *b = arg;
    b->rc = gr_generation_build(b->file, b->id, b->prev, &b->g, &b->err);
}

static void build_abandoned(void *arg)
{
    struct build *b = arg;
    gr_generation_destroy(b->g);
    free(b->err);
    free(b);
}

/* gr_generation_build as a supervised job: 0 or -1 with *err as it returns;
 * -2 when it was given up on (*stuck says why). */
static int build(struct control *ctl, uint64_t id, bool on_current, struct gr_generation **out,
                 char **err, struct gr_job_stuck *stuck)
{
    struct build *b = gr_xcalloc(1, sizeof *b);
    *b = (struct build){.file = ctl->file, .id = id,
                        .prev = on_current ? gr_generation_pin() : NULL};
    if (!gr_job_run(build_job, b, build_abandoned, control_tick, ctl, stuck))
        return -2;
    *out = b->g;
    *err = b->err;
    int rc = b->rc;
    free(b);
    return rc;
}

static void destroy_job(void *arg)
{
    gr_generation_destroy(arg);
}

/* fini and unload as a supervised job; false if it was given up on. */
static bool destroy(struct control *ctl, struct gr_generation *g, const char *doing)
{
    struct gr_job_stuck stuck;
    if (gr_job_run(destroy_job, g, NULL, control_tick, ctl, &stuck))
        return true;
    report_stuck(doing, &stuck);
    return false;
}

/* Plugins can be unloaded only once no plugin code runs: exit without. */
static _Noreturn void exit_leaving_plugins(int status)
{
    gr_info("stopped (with a plugin call still running)");
    gr_plugin_host_cleanup();
    _exit(status);
}

static void usage(FILE *out)
{
    fprintf(out,
            "usage: graphrouter -c FILE [--check]\n"
            "       graphrouter -c FILE status\n"
            "       graphrouter -c FILE dlq list | show ID | replay ID | replay --all | purge\n"
            "       graphrouter -c FILE subscriptions [--json]\n"
            "       graphrouter --version | -h\n"
            "\n"
            "Receives Microsoft Graph change notifications and routes them to handler plugins.\n"
            "\n"
            "  -c, --config FILE  the configuration file (JSON; see README)\n"
            "  -t, --check        load and check the configuration, every plugin and every\n"
            "                     handler's config, and the store (read-only, quick_check),\n"
            "                     then exit: 0 if all is well, 1 otherwise\n"
            "  -V, --version      print the version and plugin ABI, then exit\n"
            "  -h, --help         this text\n"
            "\n"
            "status shows the deliveries pending, in progress and dead per handler; dlq lists,\n"
            "shows, replays and purges dead letters; subscriptions lists the subscriptions\n"
            "graphrouter manages. All work while graphrouter runs.\n"
            "\n"
            "Signals: HUP reloads the configuration and plugins, USR1 makes handlers reopen\n"
            "their files, TERM and INT finish the work in flight and exit.\n");
}

static void warn_about(const struct gr_config *cfg)
{
    if (!cfg->has_fallback_secret && cfg->nsubscriptions == 0 && cfg->ndeclarations == 0)
        gr_warn("%s: no \"client_state\" and no \"subscriptions\": every notification will be "
                "dropped",
                cfg->file);
    if (cfg->routes.n == 0)
        gr_warn("%s: no routes: every notification will be unrouted", cfg->file);
    if (cfg->has_tokens != (cfg->ndecryption_keys > 0))
        gr_warn("%s: rich notifications need both \"validation_tokens\" and "
                "\"decryption_keys\"; items with encryptedContent will be dropped",
                cfg->file);
}

static int run_check(const char *file)
{
    struct control ctl = {.file = file};
    struct gr_generation *g;
    char *err = NULL;
    struct gr_job_stuck stuck;
    int rc = build(&ctl, 1, false, &g, &err, &stuck);
    if (rc == -2) {
        fprintf(stderr, "%s: handler \"%s\": init() has not returned after %u s (the handler's "
                        "timeout_s)\n",
                file, stuck.call.handler, stuck.call.timeout_s);
        gr_plugin_host_cleanup();
        _exit(1); /* the plugin's code is still running: nothing can be unloaded */
    }
    if (rc < 0) {
        fprintf(stderr, "%s\n", err);
        free(err);
    } else {
        warn_about(g->cfg);
        /* the store, read-only: corrupt, of a layout refused, or unchecked is a failure */
        char *store = NULL;
        if (gr_store_check(g->cfg->store_path, GR_STORE_CHECK_TIMEOUT_MS, &store) != 0) {
            fprintf(stderr, "%s: %s\n", file, store);
            rc = -1;
        } else {
            printf("%s\n", store);
            if (g->cfg->ndeclarations)
                printf("%s: ok (%zu handlers, %zu routes, %zu declared subscriptions)\n", file,
                       g->nhandlers, g->cfg->routes.n, g->cfg->ndeclarations);
            else
                printf("%s: ok (%zu handlers, %zu routes)\n", file, g->nhandlers,
                       g->cfg->routes.n);
        }
        free(store);
        fflush(stdout);
        if (!destroy(&ctl, g, "checking the configuration")) {
            gr_plugin_host_cleanup();
            _exit(1);
        }
    }
    gr_plugin_host_cleanup();
    return rc < 0 ? 1 : 0;
}

/* Settings used once at start; a reload must not change them. */
static char *start_only_change(const struct gr_config *a, const struct gr_config *b)
{
    if (strcmp(a->listen_address, b->listen_address) != 0 || a->listen_port != b->listen_port ||
        a->http_threads != b->http_threads)
        return gr_xprintf("\"listen\" changed (%s:%u, %u threads -> %s:%u, %u threads); the "
                          "listener is never restarted, so restart graphrouter to apply it",
                          a->listen_address, a->listen_port, a->http_threads, b->listen_address,
                          b->listen_port, b->http_threads);
    if (a->connection_timeout_s != b->connection_timeout_s)
        return gr_xprintf("\"limits.connection_timeout_s\" changed; it applies to the "
                          "listener, so restart graphrouter to apply it");
    if ((a->tls_cert_file != NULL) != (b->tls_cert_file != NULL))
        return gr_xprintf("\"tls\" was %s; the listener speaks HTTPS or HTTP from its start, "
                          "so restart graphrouter to apply it (a new certificate and key need "
                          "no restart)",
                          b->tls_cert_file ? "added" : "removed");
    if (a->workers != b->workers)
        return gr_xprintf("\"workers\" changed; restart graphrouter to apply it");
    if (!a->user != !b->user || (a->user && strcmp(a->user, b->user) != 0))
        return gr_xprintf("\"user\" changed; graphrouter becomes that user once, at start, so "
                          "restart graphrouter to apply it");
    if (strcmp(a->store_path, b->store_path) != 0 || a->max_pending != b->max_pending ||
        a->max_pending_bytes != b->max_pending_bytes || a->max_db_bytes != b->max_db_bytes ||
        a->synchronous_full != b->synchronous_full || a->dedupe_window_s != b->dedupe_window_s ||
        a->retention_s != b->retention_s)
        return gr_xprintf("\"store\" changed; the store is opened once, so restart graphrouter "
                          "to apply it");
    return NULL;
}

/* The certificate a generation serves, at start and after each reload. */
static void log_tls(const struct gr_generation *g)
{
    if (!g->tls)
        return;
    char when[GR_RFC3339_LEN];
    gr_rfc3339(gr_tls_cred_not_after(g->tls) * 1000, when);
    gr_info("tls: serving the certificate %s from %s, valid until %s", gr_tls_cred_subject(g->tls),
            g->cfg->tls_cert_file, when);
    gr_metrics_tls_expiry(gr_tls_cred_not_after(g->tls));
}

static void reload(struct control *ctl)
{
    gr_info("reload requested: building generation %llu from %s",
            (unsigned long long)ctl->next_id, ctl->file);
    struct gr_generation *cur = gr_generation_pin();
    struct gr_generation *g = NULL;
    char *err = NULL;
    struct gr_job_stuck stuck;
    int rc = build(ctl, ctl->next_id, true, &g, &err, &stuck);
    if (rc == -2) {
        ctl->next_id++; /* that id stays with the abandoned build */
        err = stuck.given_up
                  ? gr_xstrdup("graphrouter is stopping; that build is left to finish alone")
                  : gr_xprintf("handler \"%s\": init() has not returned after %u s (the "
                               "handler's timeout_s); that build is left to finish alone",
                               stuck.call.handler, stuck.call.timeout_s);
    } else if (rc == 0) {
        err = start_only_change(cur->cfg, g->cfg);
        if (err) {
            destroy(ctl, g, "reload");
            g = NULL;
        }
    }
    if (!g) {
        gr_error("reload failed; generation %llu keeps serving: %s", (unsigned long long)cur->id,
                 err);
        free(err);
        gr_metrics_reload(false);
        gr_generation_unpin(cur);
        return;
    }
    ctl->next_id++;
    gr_log_set_level(g->cfg->log_level);
    warn_about(g->cfg);
    if (g->jwks)
        gr_jwks_start(g->jwks);
    /* The store learns the new handler set first: work routed on the new
     * generation never reaches it before its handlers do. */
    gr_store_set_handlers(ctl->store, g->store_handlers, g->nhandlers);
    struct gr_generation *old = gr_generation_swap(g);
    old->next_retired = ctl->retired;
    ctl->retired = old;
    gr_generation_unpin(old); /* its reference for being current */
    gr_generation_unpin(cur);
    gr_metrics_reload(true);
    log_tls(g);
    gr_info("reloaded: generation %llu serves now (%zu handlers, %zu routes)",
            (unsigned long long)g->id, g->nhandlers, g->cfg->routes.n);
    gr_manager_reconcile(ctl->manager); /* what the new configuration declares, at once */
}

/* Destroy retired generations nothing uses any more. */
static void reap(struct control *ctl)
{
    for (struct gr_generation **p = &ctl->retired; *p;) {
        struct gr_generation *g = *p;
        if (atomic_load(&g->refs) != 0) {
            p = &g->next_retired;
            continue;
        }
        *p = g->next_retired;
        gr_info("generation %llu retired", (unsigned long long)g->id);
        destroy(ctl, g, "retiring a generation"); /* stuck: it stays loaded */
    }
}

static void reopen_job(void *arg)
{
    struct gr_generation *g = arg;
    for (size_t i = 0; i < g->nhandlers; i++) {
        struct gr_handler *h = &g->handlers[i];
        if (!h->lib->desc.reopen)
            continue;
        gr_job_call_begin(h, "reopen");
        h->lib->desc.reopen(h->state);
        gr_job_call_end();
    }
}

/* The generation whose reopen was given up on and still runs: SIGUSR1 does
 * not start another reopen on the same handler states meanwhile. */
static _Atomic(struct gr_generation *) reopen_running;

static void reopen_abandoned(void *arg)
{
    struct gr_generation *g = arg;
    atomic_compare_exchange_strong(&reopen_running, &g, NULL);
    gr_generation_unpin(arg);
}

static void reopen(struct control *ctl)
{
    struct gr_generation *g = gr_generation_pin();
    if (atomic_load(&reopen_running) == g) {
        gr_warn("SIGUSR1 ignored: the last reopen of generation %llu has not returned",
                (unsigned long long)g->id);
        gr_generation_unpin(g);
        return;
    }
    gr_info("SIGUSR1: handlers reopen their files");
    struct gr_job_stuck stuck;
    if (gr_job_run(reopen_job, g, reopen_abandoned, control_tick, ctl, &stuck)) {
        gr_generation_unpin(g);
        return;
    }
    atomic_store(&reopen_running, g); /* a set after its clear would only skip a reopen */
    report_stuck("SIGUSR1", &stuck);
}

static void raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static int setup_signals(sigset_t *handled)
{
    if (pipe2(control_pipe, O_CLOEXEC | O_NONBLOCK) != 0)
        return -1;
    sigemptyset(handled);
    sigaddset(handled, SIGHUP);
    sigaddset(handled, SIGTERM);
    sigaddset(handled, SIGINT);
    sigaddset(handled, SIGUSR1);
    /* Blocked now, so every thread started from here on inherits the block;
     * the control thread unblocks them once everything runs. */
    pthread_sigmask(SIG_BLOCK, handled, NULL);
    struct sigaction sa = {.sa_handler = on_signal, .sa_flags = SA_RESTART};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGHUP, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGXFSZ, SIG_IGN); /* a file size limit fails the write (the store answers 503) */
    return 0;
}

/* ---- the "user" key (privs.h) ---------------------------------------------
 * graphrouter starts as root, binds its port, opens the store and runs the
 * handlers' init (which open their files), then becomes the user before
 * any delivery starts. What it opens after that (the configuration, plugins,
 * key and secret files at a reload; the store's extra connections) is
 * opened as the user. */

/* The store's files are graphrouter's own: the user gets them. */
static int give_store(const struct gr_config *cfg, char **err)
{
    static const char *const suffixes[] = {"", "-wal", "-shm"};
    for (size_t i = 0; i < GR_ARRAY_LEN(suffixes); i++) {
        char *path = gr_xprintf("%s%s", cfg->store_path, suffixes[i]);
        bool failed = chown(path, cfg->uid, cfg->gid) != 0 && errno != ENOENT;
        if (failed)
            *err = gr_xprintf("cannot give the store file %s to user \"%s\": %s", path,
                              cfg->user, strerror(errno));
        free(path);
        if (failed)
            return -1;
    }
    return 0;
}

/* After the drop: what graphrouter still needs, checked as the user. */
static int check_as_user(const struct gr_generation *g, char **err)
{
    const struct gr_config *cfg = g->cfg;
    char *copy = gr_xstrdup(cfg->store_path);
    const char *dir = dirname(copy);
    bool failed = access(dir, W_OK | X_OK) != 0 || access(cfg->store_path, R_OK | W_OK) != 0;
    if (failed)
        *err = gr_xprintf("user \"%s\" cannot use the store %s (its directory %s must be the "
                          "user's, e.g. chown %s %s): %s",
                          cfg->user, cfg->store_path, dir, cfg->user, dir, strerror(errno));
    free(copy);
    if (failed)
        return -1;
    /* A reload reads these again: say now, not at the first SIGHUP. */
    if (access(cfg->file, R_OK) != 0)
        gr_warn("user \"%s\" cannot read the configuration %s (%s): a reload (SIGHUP) will "
                "fail",
                cfg->user, cfg->file, strerror(errno));
    for (size_t i = 0; i < g->nhandlers; i++)
        if (access(g->handlers[i].conf->plugin_path, R_OK) != 0)
            gr_warn("user \"%s\" cannot read the plugin %s (%s): a reload (SIGHUP) will fail",
                    cfg->user, g->handlers[i].conf->plugin_path, strerror(errno));
    const char *tls_files[] = {cfg->tls_cert_file, cfg->tls_key_file};
    for (size_t i = 0; i < 2; i++)
        if (tls_files[i] && access(tls_files[i], R_OK) != 0)
            gr_warn("user \"%s\" cannot read the TLS file %s (%s): a reload (SIGHUP) will fail",
                    cfg->user, tls_files[i], strerror(errno));
    return 0;
}

static int become_user(const struct gr_generation *g, char **err)
{
    const struct gr_config *cfg = g->cfg;
    if (!cfg->user) {
        if (geteuid() == 0)
            gr_warn("running as root: set \"user\" in %s (e.g. \"graphrouter\") to drop root "
                    "once the port and the store are open",
                    cfg->file);
        return 0;
    }
    char *why = NULL;
    if (geteuid() == 0 && (give_store(cfg, err) < 0 || gr_plugin_host_set_owner(cfg->uid,
                                                                                 cfg->gid, &why) < 0))
        goto fail;
    if (gr_privs_drop(cfg->user, cfg->uid, cfg->gid, &why) < 0)
        goto fail;
    if (check_as_user(g, err) < 0)
        return -1;
    gr_info("running as user %s (uid %u, gid %u)", cfg->user, (unsigned)cfg->uid,
            (unsigned)cfg->gid);
    return 0;
fail:
    if (why)
        *err = why;
    return -1;
}

static int run(const char *file)
{
    raise_fd_limit();
    sigset_t handled;
    if (setup_signals(&handled) < 0) {
        gr_error("cannot create the control pipe: %s", strerror(errno));
        return 1;
    }
    struct control ctl = {.file = file, .next_id = 2};
    struct gr_generation *g = NULL;
    char *err = NULL;
    struct gr_job_stuck stuck;
    int built = build(&ctl, 1, false, &g, &err, &stuck);
    if (built == -2) {
        report_stuck("cannot start", &stuck);
        exit_leaving_plugins(1);
    }
    if (built < 0) {
        gr_error("cannot start: %s", err);
        free(err);
        gr_plugin_host_cleanup();
        return 1;
    }
    gr_log_set_level(g->cfg->log_level);
    warn_about(g->cfg);
    if (g->jwks)
        gr_jwks_start(g->jwks);
    gr_generation_swap(g);
    log_tls(g);
    gr_generation_set_idle_hook(on_generation_idle);

    const struct gr_config *cfg = g->cfg;
    struct gr_store_config sc = {.path = cfg->store_path,
                                 .max_pending = cfg->max_pending,
                                 .max_pending_bytes = cfg->max_pending_bytes,
                                 .max_db_bytes = cfg->max_db_bytes,
                                 .synchronous_full = cfg->synchronous_full,
                                 .dedupe_window_ms = cfg->dedupe_window_s * 1000,
                                 .retention_ms = cfg->retention_s * 1000};
    struct gr_store *store = gr_store_sqlite_open(&sc, g->store_handlers, g->nhandlers, &err);
    if (!store) {
        gr_error("cannot start: %s", err);
        free(err);
        if (!destroy(&ctl, gr_generation_swap(NULL), "cannot start"))
            exit_leaving_plugins(1);
        gr_plugin_host_cleanup();
        return 1;
    }
    ctl.store = store;
    /* The managed subscriptions' secrets are known before the first POST. */
    struct gr_manager *manager = gr_manager_new(store, &err);
    struct gr_http *http = manager ? gr_http_start(g->cfg, store, &err) : NULL;
    /* Dropped before the first delivery: no handler runs as root. */
    if (http && become_user(g, &err) < 0) {
        gr_http_stop(http);
        http = NULL;
    }
    struct gr_workers *workers = http ? gr_workers_start(store, g->cfg->workers) : NULL;
    if (!http) {
        gr_error("cannot start: %s", err);
        free(err);
        gr_manager_stop(manager);
        gr_store_stop_taking(store);
        gr_store_close(store);
        if (!destroy(&ctl, gr_generation_swap(NULL), "cannot start"))
            exit_leaving_plugins(1);
        gr_plugin_host_cleanup();
        return 1;
    }
    gr_info("graphrouter %s listening on %s://%s:%u (%zu handlers, %zu routes, %u workers, store %s)",
            GR_VERSION, g->tls ? "https" : "http", g->cfg->listen_address, gr_http_port(http),
            g->nhandlers,
            g->cfg->routes.n, g->cfg->workers, g->cfg->store_path);
    /* Graph validates the notification URL while it creates a subscription:
     * the listener serves before the manager's first create. */
    gr_manager_start(manager);
    ctl.manager = manager;
    pthread_sigmask(SIG_UNBLOCK, &handled, NULL);

    ctl.workers = workers;
    for (;;) {
        struct pollfd p = {.fd = control_pipe[0], .events = POLLIN};
        poll(&p, 1, 1000);
        control_tick(&ctl);
        reap(&ctl);
        if (ctl.term || ctl.restart)
            break;
        if (ctl.hup) {
            ctl.hup = false;
            reload(&ctl);
        }
        if (ctl.usr1) {
            ctl.usr1 = false;
            reopen(&ctl);
        }
    }
    /* a failure: systemd's Restart=on-failure starts it again */
    int status = ctl.restart ? 1 : 0;

    /* Shutdown: no new requests; those in progress are answered (their items
     * committed); workers finish what they hold; what waits stays stored. */
    g = gr_generation_pin();
    int64_t grace_ms = (int64_t)g->cfg->shutdown_timeout_s * 1000;
    gr_generation_unpin(g);
    int64_t deadline = gr_mono_ms() + grace_ms, wall_deadline = gr_wall_ms() + grace_ms;
    gr_info("shutting down: finishing requests and the deliveries in progress (up to %lld s)",
            (long long)(grace_ms / 1000));
    gr_manager_stop(manager); /* first: a Graph call in progress is cut short */
    ctl.manager = NULL;
    gr_http_quiesce(http);
    if (!gr_http_wait_idle(http, deadline))
        gr_warn("requests still in progress at the shutdown deadline are cut off");
    gr_http_stop(http);
    gr_store_stop_taking(store);
    if (!gr_workers_join(workers, wall_deadline)) {
        /* Its delivery stays "running" in the store and is taken again at
         * the next start, counting this attempt. */
        gr_error("exiting with a handler still running");
        gr_store_flush(store); /* what the other workers finished */
        _exit(1);
    }
    gr_store_close(store);
    struct gr_generation *last = gr_generation_swap(NULL);
    gr_generation_unpin(last);
    ctl.workers = NULL;
    ctl.term = false; /* the jobs below are waited for: what they wait on is bounded */
    reap(&ctl);
    /* A job given up on may still use `last` (a reopen pins it) or run
     * plugin code: then nothing is unloaded. */
    if (gr_job_abandoned_running() || atomic_load(&last->refs) != 0 ||
        !destroy(&ctl, last, "stopping"))
        exit_leaving_plugins(status ? status : 1);
    gr_plugin_host_cleanup();
    gr_info("stopped");
    return status;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {{"config", required_argument, NULL, 'c'},
                                         {"check", no_argument, NULL, 't'},
                                         {"version", no_argument, NULL, 'V'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    const char *file = NULL;
    bool check = false;
    int c;
    while ((c = getopt_long(argc, argv, "+c:tVh", opts, NULL)) != -1) {
        switch (c) {
        case 'c': file = optarg; break;
        case 't': check = true; break;
        case 'V':
            printf("graphrouter %s (plugin ABI %d.%d)\n", GR_VERSION, GR_PLUGIN_ABI_MAJOR,
                   GR_PLUGIN_ABI_MINOR);
            return 0;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (!file) {
        usage(stderr);
        return 2;
    }
    if (optind < argc) { /* status, dlq ... */
        if (check) {
            usage(stderr);
            return 2;
        }
        return gr_store_admin(file, argc - optind, argv + optind);
    }
    /* Once, before any thread starts: libcurl (JWKS fetches) needs it. */
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != 0) {
        fprintf(stderr, "graphrouter: libcurl failed to initialise\n");
        return 1;
    }
    int rc = check ? run_check(file) : run(file);
    curl_global_cleanup();
    return rc;
}
