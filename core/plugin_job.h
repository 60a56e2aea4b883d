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

#include "plugin_host.h"

/* Around each plugin call a job makes: `what` is "init", "reopen" or
 * "fini" (a string literal). Outside a job (graphrouter --check) these do
 * nothing. */
void gr_job_call_begin(const struct gr_handler *h, const char *what);
void gr_job_call_end(void);

/* The call a job was abandoned in. */
struct gr_job_stuck {
    char handler[65];
    const char *what;
    unsigned timeout_s;
};

/* Run fn(arg) on a new thread and wait until it returns: true. If one of its
 * plugin calls runs past its handler's timeout_s, fills *stuck, counts it
 * (graphrouter_plugin_calls_stuck_total) and returns false at once, leaving
 * the thread to finish alone: it then calls abandoned(arg) (may be NULL),
 * which must release what fn produced and arg itself. */
bool gr_job_run(void (*fn)(void *arg), void *arg, void (*abandoned)(void *arg),
                struct gr_job_stuck *stuck);

/* Whether a job was ever abandoned: its thread may still be in plugin code. */
bool gr_job_any_abandoned(void);

#endif
