/*
 * Plugin code the control thread needs run (a generation's build with each
 * handler's init, reopen on SIGUSR1, a retired generation's fini) runs on a
 * job thread that the control thread waits for and supervises: a plugin call
 * still running past its handler's timeout_s is reported, and the job is
 * abandoned to its thread instead of blocking the control thread (which
 * handles signals, reloads and the watchdog of handle() calls) for good.
 *
 * In-process code cannot be stopped, so an abandoned job keeps what it holds
 * (a generation being built or retired, its plugins loaded) until its call
 * returns, if ever; at exit, plugins are then left loaded (see main.c).
 */
#ifndef GR_PLUGIN_JOB_H
#define GR_PLUGIN_JOB_H

#include <stdbool.h>
#include <stdint.h>

#include "plugin/callwatch.h"
#include "plugin/plugin_host.h"

/* Around each plugin call a job makes: `what` is "init", "reopen" or
 * "fini" (a string literal). Outside a job (graphrouter --check) these do
 * nothing. */
void gr_job_call_begin(const struct gr_handler *h, const char *what);
void gr_job_call_end(void);

/* Why a job was abandoned. */
struct gr_job_stuck {
    struct gr_late_call call; /* the call past its timeout_s, unless given_up */
    bool given_up;            /* by `give_up` */
};

/* Run fn(arg) on a new thread and wait until it returns: true. Returns
 * false at once, leaving the thread to finish alone, when one of its plugin
 * calls runs past its handler's timeout_s (counted in
 * graphrouter_plugin_calls_stuck_total) or when give_up(ctx) (called about
 * every 250 ms; may be NULL) says so; *stuck says which. An abandoned thread
 * calls abandoned(arg) (may be NULL) once fn returns, if ever: it must
 * release what fn produced and arg itself. */
bool gr_job_run(void (*fn)(void *arg), void *arg, void (*abandoned)(void *arg),
                bool (*give_up)(void *ctx), void *ctx, struct gr_job_stuck *stuck);

/* Whether an abandoned job is still running: its thread may be in plugin code,
 * so no plugin may be unloaded. */
bool gr_job_abandoned_running(void);

#endif
