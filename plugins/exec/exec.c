/*
 * exec: run a command for every notification or event it receives, with the
 * message's JSON on the command's standard input.
 *
 *   "script": {"plugin": "exec", "config": {
 *       "command": ["/usr/local/bin/on-change", "--quiet"],
 *       "timeout_ms": 30000, "retry_exit_codes": [75]}}
 *
 * "command" is the argv, run directly (no shell); argv[0] is an absolute path,
 * checked at init. The child starts with a clean environment: only
 * PATH=/usr/local/bin:/usr/bin:/bin plus "env", in "cwd" if given, in a
 * process group of its own, with default signal dispositions and an empty
 * signal mask. Its standard input is the message's JSON (exactly those bytes,
 * then end of file), its standard output goes to /dev/null, and the first line
 * of its standard error (up to 4 KiB are read) explains a failure.
 *
 * Outcome: exit status 0 is GR_OK; a status listed in "retry_exit_codes"
 * (default 75, EX_TEMPFAIL) is GR_RETRY; a run that outlives "timeout_ms" has
 * its whole process group killed (SIGKILL) and is GR_RETRY; any other status,
 * death by a signal, or a command that cannot be started is GR_FAIL.
 *
 * Children are started with posix_spawn (glibc clones with CLONE_VFORK; no
 * code of ours runs in the child), every descriptor the child does not need is
 * closed in it, and every child is reaped before handle() returns.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <graphrouter/plugin.h>
#include <jansson.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define EXEC_DEFAULT_PATH "PATH=/usr/local/bin:/usr/bin:/bin"
#define EXEC_STDERR_MAX 4096 /* bytes of the child's stderr kept */
#define EXEC_LINE_MAX 200    /* bytes of its first line in the error text */
#define EXEC_MAX_TIMEOUT_MS 86400000

static const struct gr_host *host;

struct exec_state {
    struct gr_handler *h;
    char **argv; /* NULL-terminated copies */
    char **envp; /* NULL-terminated "NAME=value" */
    char *cwd;   /* NULL: the router's working directory */
    int64_t timeout_ms;
    unsigned char retry_codes[256]; /* non-zero: that exit status means GR_RETRY */
    struct gr_metric *ok, *retry, *fail, *timeouts;
};

/* ---- configuration -------------------------------------------------------- */

static void free_strv(char **v)
{
    for (size_t i = 0; v && v[i]; i++)
        free(v[i]);
    free(v);
}

static void state_free(struct exec_state *s)
{
    free_strv(s->argv);
    free_strv(s->envp);
    free(s->cwd);
    free(s);
}

/* Parse config[key] as JSON; NULL (and *absent set) when the key is absent. */
static json_t *config_value(struct exec_state *s, const char *key, int *absent)
{
    const char *text = host->config_json(s->h, key);
    *absent = !text || strcmp(text, "null") == 0;
    return *absent ? NULL : json_loads(text, JSON_DECODE_ANY, NULL);
}

static int load_command(struct exec_state *s)
{
    int absent;
    json_t *cmd = config_value(s, "command", &absent);
    size_t n = json_array_size(cmd);
    int rc = -1;
    if (!json_is_array(cmd) || n == 0) {
        host->init_error(s->h, "\"command\" must be a non-empty list of strings: the program's "
                               "absolute path, then its arguments (no shell is involved)");
        goto out;
    }
    if (!(s->argv = calloc(n + 1, sizeof *s->argv))) {
        host->init_error(s->h, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *a = json_array_get(cmd, i);
        const char *v = json_string_value(a);
        if (!v || strlen(v) != json_string_length(a)) {
            host->init_error(s->h, "\"command\"[%zu] must be a string without NUL bytes", i);
            goto out;
        }
        if (!(s->argv[i] = strdup(v))) {
            host->init_error(s->h, "out of memory");
            goto out;
        }
    }
    const char *prog = s->argv[0];
    struct stat st;
    if (prog[0] != '/')
        host->init_error(s->h, "\"command\": \"%s\" is not an absolute path (no PATH search "
                               "is done)",
                         prog);
    else if (stat(prog, &st) != 0)
        host->init_error(s->h, "\"command\": cannot run %s: %s", prog, strerror(errno));
    else if (!S_ISREG(st.st_mode))
        host->init_error(s->h, "\"command\": cannot run %s: not a regular file", prog);
    else if (access(prog, X_OK) != 0)
        host->init_error(s->h, "\"command\": cannot run %s: %s (not executable)", prog,
                         strerror(errno));
    else
        rc = 0;
out:
    json_decref(cmd);
    return rc;
}

static int is_env_name(const char *s)
{
    if (!((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') || *s == '_'))
        return 0;
    for (; *s; s++)
        if (!((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') ||
              *s == '_'))
            return 0;
    return 1;
}

static char *env_entry(const char *name, const char *value)
{
    size_t n = strlen(name) + strlen(value) + 2;
    char *e = malloc(n);
    if (e)
        snprintf(e, n, "%s=%s", name, value);
    return e;
}

/* envp: PATH (unless "env" sets its own), then "env" in its order. */
static int load_env(struct exec_state *s)
{
    int absent;
    json_t *env = config_value(s, "env", &absent);
    int rc = -1;
    if (!absent && !json_is_object(env)) {
        host->init_error(s->h, "\"env\" must be an object of variable names to string values");
        goto out;
    }
    size_t n = json_object_size(env), k = 0;
    if (!(s->envp = calloc(n + 2, sizeof *s->envp))) {
        host->init_error(s->h, "out of memory");
        goto out;
    }
    if (!json_object_get(env, "PATH") && !(s->envp[k++] = strdup(EXEC_DEFAULT_PATH))) {
        host->init_error(s->h, "out of memory");
        goto out;
    }
    const char *name;
    json_t *value;
    json_object_foreach(env, name, value) {
        if (!is_env_name(name)) {
            host->init_error(s->h, "\"env\": \"%s\" is not a valid variable name (letters, "
                                   "digits and _, not starting with a digit)",
                             name);
            goto out;
        }
        const char *v = json_string_value(value);
        if (!v || strlen(v) != json_string_length(value)) {
            host->init_error(s->h, "\"env\": the value of \"%s\" must be a string without NUL "
                                   "bytes",
                             name);
            goto out;
        }
        if (!(s->envp[k++] = env_entry(name, v))) {
            host->init_error(s->h, "out of memory");
            goto out;
        }
    }
    rc = 0;
out:
    json_decref(env);
    return rc;
}

static int load_retry_codes(struct exec_state *s)
{
    int absent;
    json_t *codes = config_value(s, "retry_exit_codes", &absent);
    int rc = -1;
    if (absent) {
        s->retry_codes[75] = 1; /* EX_TEMPFAIL */
        rc = 0;
        goto out;
    }
    if (!json_is_array(codes)) {
        host->init_error(s->h, "\"retry_exit_codes\" must be a list of exit statuses (1-255)");
        goto out;
    }
    for (size_t i = 0; i < json_array_size(codes); i++) {
        json_t *c = json_array_get(codes, i);
        json_int_t v = json_is_integer(c) ? json_integer_value(c) : -1;
        if (v < 1 || v > 255) {
            host->init_error(s->h, "\"retry_exit_codes\"[%zu] must be an integer from 1 to 255",
                             i);
            goto out;
        }
        s->retry_codes[v] = 1;
    }
    rc = 0;
out:
    json_decref(codes);
    return rc;
}

static int exec_init(struct gr_handler *h, void **state)
{
    struct exec_state *s = calloc(1, sizeof *s);
    if (!s) {
        host->init_error(h, "out of memory");
        return -1;
    }
    s->h = h;
    s->timeout_ms = host->config_int(h, "timeout_ms", 30000);
    if (s->timeout_ms < 1 || s->timeout_ms > EXEC_MAX_TIMEOUT_MS) {
        host->init_error(h, "\"timeout_ms\" must be between 1 and %d", EXEC_MAX_TIMEOUT_MS);
        goto fail;
    }
    if (load_command(s) < 0 || load_env(s) < 0 || load_retry_codes(s) < 0)
        goto fail;
    const char *cwd = host->config_string(h, "cwd");
    if (cwd) {
        struct stat st;
        if (!*cwd) {
            host->init_error(h, "\"cwd\" is empty");
            goto fail;
        }
        const char *why = NULL;
        if (stat(cwd, &st) != 0)
            why = strerror(errno);
        else if (!S_ISDIR(st.st_mode))
            why = "not a directory";
        else if (access(cwd, X_OK) != 0)
            why = strerror(errno);
        if (why) {
            host->init_error(h, "\"cwd\": cannot enter %s: %s", cwd, why);
            goto fail;
        }
        if (!(s->cwd = strdup(cwd))) {
            host->init_error(h, "out of memory");
            goto fail;
        }
    }
    s->ok = host->metric(h, "exec_runs_ok_total", "Commands that exited 0 (delivered).", 0);
    s->retry = host->metric(h, "exec_runs_retry_total",
                            "Runs to be retried: a retry exit status or a timeout.", 0);
    s->fail = host->metric(h, "exec_runs_fail_total",
                           "Runs that failed for good: another status, a signal, or no start.", 0);
    s->timeouts = host->metric(h, "exec_timeouts_total", "Runs killed after timeout_ms.", 0);
    *state = s;
    return 0;
fail:
    state_free(s);
    return -1;
}

static void exec_fini(void *state)
{
    state_free(state);
}

/* ---- running the command ----------------------------------------------------- */

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void close_fd(int *fd)
{
    if (*fd >= 0) {
        close(*fd);
        *fd = -1;
    }
}

/* A pipe whose descriptors are close-on-exec and above 2 (so that dup2 onto
 * 0-2 in the child never meets itself), with the parent's end non-blocking. */
static int make_pipe(int fds[2], int parent_end)
{
    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0)
        return -1;
    for (int i = 0; i < 2; i++) {
        if (p[i] > 2)
            continue;
        int moved = fcntl(p[i], F_DUPFD_CLOEXEC, 3);
        int err = errno;
        close(p[i]);
        p[i] = moved;
        if (moved < 0) {
            close_fd(&p[1 - i]);
            errno = err;
            return -1;
        }
    }
    int fl = fcntl(p[parent_end], F_GETFL);
    if (fl < 0 || fcntl(p[parent_end], F_SETFL, fl | O_NONBLOCK) < 0) {
        int err = errno;
        close(p[0]);
        close(p[1]);
        errno = err;
        return -1;
    }
    fds[0] = p[0];
    fds[1] = p[1];
    return 0;
}

/* The first non-empty line of what the child wrote to stderr, at most
 * EXEC_LINE_MAX bytes, with anything but printable ASCII replaced by '?'. */
static void first_line(const char *buf, size_t len, char out[EXEC_LINE_MAX + 1])
{
    size_t i = 0, n = 0;
    for (;;) {
        while (i < len && (buf[i] == ' ' || buf[i] == '\t' || buf[i] == '\r' || buf[i] == '\n'))
            i++;
        if (i >= len)
            break;
        size_t end = i;
        while (end < len && buf[end] != '\n')
            end++;
        while (end > i && (buf[end - 1] == ' ' || buf[end - 1] == '\t' || buf[end - 1] == '\r'))
            end--;
        for (; i < end && n < EXEC_LINE_MAX; i++) {
            unsigned char c = (unsigned char)buf[i];
            out[n++] = c >= 0x20 && c < 0x7f ? (char)c : '?';
        }
        break;
    }
    out[n] = '\0';
}

struct run {
    int spawn_error; /* errno of a failed start, else 0 */
    int wait_error;  /* errno of poll() or waitpid() once it ran, else 0 */
    int timed_out;
    int status; /* from waitpid */
    char err[EXEC_STDERR_MAX];
    size_t err_len;
};

/* Read what the child wrote to stderr: keep the first EXEC_STDERR_MAX bytes,
 * drain the rest. Closes *fd at end of file or on an error. */
static void read_stderr(struct run *r, int *fd)
{
    for (;;) {
        char sink[4096];
        char *to = r->err_len < sizeof r->err ? r->err + r->err_len : sink;
        size_t room = r->err_len < sizeof r->err ? sizeof r->err - r->err_len : sizeof sink;
        ssize_t n = read(*fd, to, room);
        if (n > 0) {
            if (to != sink)
                r->err_len += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        close_fd(fd); /* end of file, or an error */
        return;
    }
}

/* Write as much of the message as the pipe takes. Closes *fd when all is
 * written, or when the child closed its end (EPIPE: it need not read). */
static void write_stdin(int *fd, const char *data, size_t len, size_t *off)
{
    while (*off < len) {
        ssize_t n = write(*fd, data + *off, len - *off);
        if (n > 0) {
            *off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        break; /* EPIPE or another error: stop feeding it */
    }
    close_fd(fd);
}

static int open_pidfd(pid_t pid)
{
#ifdef SYS_pidfd_open
    return (int)syscall(SYS_pidfd_open, pid, 0); /* close-on-exec by definition */
#else
    (void)pid;
    return -1;
#endif
}

static void kill_group(pid_t pid)
{
    kill(-pid, SIGKILL); /* the child and whatever it started */
    kill(pid, SIGKILL);  /* in case it left its group */
}

static pid_t reap(pid_t pid, int *status, int flags)
{
    pid_t w;
    do
        w = waitpid(pid, status, flags);
    while (w < 0 && errno == EINTR);
    return w;
}

static int start(struct exec_state *s, int in_r, int err_w, pid_t *pid)
{
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    int rc = posix_spawn_file_actions_init(&fa);
    if (rc != 0)
        return rc;
    rc = posix_spawnattr_init(&attr);
    if (rc != 0) {
        posix_spawn_file_actions_destroy(&fa);
        return rc;
    }
    sigset_t none, all;
    sigemptyset(&none);
    sigfillset(&all);
    /* The router blocks SIGTERM & co. in its threads and ignores SIGPIPE:
     * the child gets neither. Its own process group, so a timeout kills all. */
    if (!rc)
        rc = posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK |
                                                 POSIX_SPAWN_SETSIGDEF);
    if (!rc)
        rc = posix_spawnattr_setpgroup(&attr, 0);
    if (!rc)
        rc = posix_spawnattr_setsigmask(&attr, &none);
    if (!rc)
        rc = posix_spawnattr_setsigdefault(&attr, &all);
    if (!rc)
        rc = posix_spawn_file_actions_adddup2(&fa, in_r, 0);
    if (!rc)
        rc = posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    if (!rc)
        rc = posix_spawn_file_actions_adddup2(&fa, err_w, 2);
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 34))
    /* descriptors other threads opened without O_CLOEXEC do not leak either */
    if (!rc)
        rc = posix_spawn_file_actions_addclosefrom_np(&fa, 3);
#endif
    if (!rc && s->cwd)
        rc = posix_spawn_file_actions_addchdir_np(&fa, s->cwd);
    if (!rc)
        rc = posix_spawn(pid, s->argv[0], &fa, &attr, s->argv, s->envp);
    posix_spawnattr_destroy(&attr);
    posix_spawn_file_actions_destroy(&fa);
    return rc;
}

/* Run the command once with `data` on its stdin; fills r. Returns 0, or an
 * errno value when the pipes cannot be made (r->spawn_error for a failed
 * start). */
static int run_command(struct exec_state *s, const char *data, size_t len, struct run *r)
{
    int in[2], errp[2] = {-1, -1};
    if (make_pipe(in, 1) < 0)
        return errno;
    if (make_pipe(errp, 0) < 0) {
        int err = errno;
        close(in[0]);
        close(in[1]);
        return err;
    }
    int64_t deadline = now_ms() + s->timeout_ms;
    pid_t pid;
    r->spawn_error = start(s, in[0], errp[1], &pid);
    close_fd(&in[0]);
    close_fd(&errp[1]);
    if (r->spawn_error) {
        close_fd(&in[1]);
        close_fd(&errp[0]);
        return 0;
    }
    int to_child = in[1], from_child = errp[0];
    int pidfd = open_pidfd(pid); /* -1: poll for the exit instead */
    size_t off = 0;
    int exited = 0;
    if (len == 0)
        close_fd(&to_child);
    while (!exited) {
        int64_t left = deadline - now_ms();
        if (left <= 0) {
            kill_group(pid);
            reap(pid, &r->status, 0);
            r->timed_out = 1;
            break;
        }
        struct pollfd p[3];
        int np = 0, ip = -1, ep = -1, xp = -1;
        if (to_child >= 0) {
            p[np] = (struct pollfd){.fd = to_child, .events = POLLOUT};
            ip = np++;
        }
        if (from_child >= 0) {
            p[np] = (struct pollfd){.fd = from_child, .events = POLLIN};
            ep = np++;
        }
        if (pidfd >= 0) {
            p[np] = (struct pollfd){.fd = pidfd, .events = POLLIN};
            xp = np++;
        }
        /* without a pidfd, look for the exit every 20 ms */
        int ms = pidfd >= 0 ? (left > 1000 ? 1000 : (int)left) : (left > 20 ? 20 : (int)left);
        int n = poll(p, (nfds_t)np, ms);
        if (n < 0 && errno != EINTR) {
            r->wait_error = errno; /* cannot watch it: stop it rather than leave it behind */
            kill_group(pid);
            reap(pid, &r->status, 0);
            break;
        }
        if (n > 0 && ip >= 0 && p[ip].revents)
            write_stdin(&to_child, data, len, &off);
        if (n > 0 && ep >= 0 && p[ep].revents)
            read_stderr(r, &from_child);
        if (xp < 0 || (n > 0 && p[xp].revents)) {
            pid_t w = reap(pid, &r->status, WNOHANG);
            if (w < 0) { /* reaped by someone else (ECHILD): how it ended is unknown */
                r->wait_error = errno;
                break;
            }
            exited = w == pid;
        }
    }
    if (exited && from_child >= 0)
        read_stderr(r, &from_child); /* what it wrote just before exiting */
    close_fd(&to_child);
    close_fd(&from_child);
    if (pidfd >= 0)
        close(pidfd);
    return 0;
}

/* "KILL" for SIGKILL; NULL if unknown (sigabbrev_np is thread-safe, strsignal is not). */
static const char *signame(int sig)
{
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 32))
    return sigabbrev_np(sig);
#else
    (void)sig;
    return NULL;
#endif
}

static int outcome(struct exec_state *s, int result)
{
    host->metric_add(result == GR_OK ? s->ok : result == GR_RETRY ? s->retry : s->fail, 1);
    return result;
}

static int exec_handle(void *state, struct gr_msg *msg)
{
    struct exec_state *s = state;
    int can_explain = GR_HOST_HAS(host, set_error);
    size_t len;
    const char *json = host->msg_json(msg, &len);
    struct run *r = calloc(1, sizeof *r);
    if (!r)
        return outcome(s, GR_RETRY);
    int err = run_command(s, json, len, r);
    int result;
    char line[EXEC_LINE_MAX + 1];
    first_line(r->err, r->err_len, line);
    const char *sep = *line ? ": " : "";
    if (err) { /* no pipes: out of descriptors, most likely; it passes */
        if (can_explain)
            host->set_error(msg, "cannot run %s: %s", s->argv[0], strerror(err));
        result = GR_RETRY;
    } else if (r->spawn_error) {
        int e = r->spawn_error;
        if (can_explain)
            host->set_error(msg, "cannot run %s%s%s%s: %s", s->argv[0], s->cwd ? " (in " : "",
                            s->cwd ? s->cwd : "", s->cwd ? ")" : "", strerror(e));
        /* no process to be had now is temporary; a missing program is not */
        result = e == EAGAIN || e == ENOMEM || e == EMFILE || e == ENFILE ? GR_RETRY : GR_FAIL;
    } else if (r->wait_error) {
        if (can_explain)
            host->set_error(msg, "lost track of %s: %s", s->argv[0], strerror(r->wait_error));
        /* it was killed (poll failed): run it again; it ended unseen (ECHILD): do not */
        result = r->wait_error == ECHILD ? GR_FAIL : GR_RETRY;
    } else if (r->timed_out) {
        host->metric_add(s->timeouts, 1);
        if (can_explain)
            host->set_error(msg, "timed out after %lld ms%s%s", (long long)s->timeout_ms, sep,
                            line);
        result = GR_RETRY;
    } else if (WIFEXITED(r->status)) {
        int code = WEXITSTATUS(r->status);
        if (code == 0) {
            result = GR_OK;
        } else {
            if (can_explain)
                host->set_error(msg, "exit status %d%s%s", code, sep, line);
            result = s->retry_codes[code] ? GR_RETRY : GR_FAIL;
        }
    } else if (WIFSIGNALED(r->status)) {
        int sig = WTERMSIG(r->status);
        const char *name = signame(sig);
        if (can_explain)
            host->set_error(msg, "killed by signal %d%s%s%s%s%s", sig, name ? " (SIG" : "",
                            name ? name : "", name ? ")" : "", sep, line);
        result = GR_FAIL;
    } else {
        if (can_explain)
            host->set_error(msg, "ended with wait status %#x", (unsigned)r->status);
        result = GR_FAIL;
    }
    host->log(s->h, GR_LOG_DEBUG, "%s: %s", s->argv[0],
              result == GR_OK ? "ok" : result == GR_RETRY ? "to be retried" : "failed");
    free(r);
    return outcome(s, result);
}

static const struct gr_config_key exec_keys[] = {
    {"command", GR_CONFIG_STRING_LIST, 1,
     "the program's absolute path, then its arguments (no shell)"},
    {"timeout_ms", GR_CONFIG_INT, 0, "kill the run's process group after this long, default 30000"},
    {"retry_exit_codes", GR_CONFIG_JSON, 0, "exit statuses (1-255) that mean retry, default [75]"},
    {"env", GR_CONFIG_JSON, 0, "an object of extra environment variables"},
    {"cwd", GR_CONFIG_STRING, 0, "the directory to run the command in"},
    {NULL, 0, 0, NULL},
};

static const struct gr_plugin exec_plugin = {
    .abi_major = GR_PLUGIN_ABI_MAJOR,
    .abi_minor = GR_PLUGIN_ABI_MINOR,
    .size = sizeof(struct gr_plugin),
    .name = "exec",
    .version = "1.0",
    .description = "runs a command for each notification or event, with its JSON on stdin",
    .config_keys = exec_keys,
    .init = exec_init,
    .handle = exec_handle,
    .fini = exec_fini,
};

GR_PLUGIN_EXPORT const struct gr_plugin *gr_plugin_entry(const struct gr_host *h)
{
    host = h;
    return &exec_plugin;
}
