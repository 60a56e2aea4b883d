/*
 * file: append every notification or event it receives to a file, one JSON
 * object per line.
 *
 *   "archive": {"plugin": "file", "config": {"path": "var/events.jsonl"}}
 *
 * Each line goes out in a single write(2) on a descriptor opened with
 * O_APPEND, so lines from concurrent workers never interleave. Missing parent
 * directories are created. On SIGUSR1 the file is reopened (for logrotate's
 * "create" mode): writers hold a read lock on the descriptor, the reopen swaps
 * it under the write lock. A failed write (disk full, I/O error) returns
 * GR_RETRY, so nothing is lost while the disk recovers.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <graphrouter/plugin.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const struct gr_host *host;

struct file_state {
    struct gr_handler *h;
    char *path;
    int fd;
    pthread_rwlock_t lock;
    struct gr_metric *lines, *errors;
};

/* mkdir -p for the directories above `path`. */
static int make_parents(const char *path)
{
    char *dir = strdup(path);
    if (!dir)
        return -1;
    for (char *p = dir + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(dir, 0750) != 0 && errno != EEXIST) {
            free(dir);
            return -1;
        }
        *p = '/';
    }
    free(dir);
    return 0;
}

static int open_log(const char *path)
{
    return open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
}

static int file_init(struct gr_handler *h, void **state)
{
    const char *path = host->config_string(h, "path");
    if (!*path) {
        host->init_error(h, "\"path\" is empty");
        return -1;
    }
    int fd = make_parents(path) == 0 ? open_log(path) : -1;
    if (fd < 0) {
        host->init_error(h, "cannot open %s for appending: %s", path, strerror(errno));
        return -1;
    }
    struct file_state *s = calloc(1, sizeof *s);
    if (!s || !(s->path = strdup(path))) {
        free(s);
        close(fd);
        host->init_error(h, "out of memory");
        return -1;
    }
    s->h = h;
    s->fd = fd;
    pthread_rwlock_init(&s->lock, NULL);
    s->lines = host->metric(h, "file_lines_total", "Lines appended by file handlers.", 0);
    s->errors = host->metric(h, "file_write_errors_total",
                             "Writes that failed (the delivery is retried).", 0);
    *state = s;
    return 0;
}

static int file_handle(void *state, struct gr_msg *msg)
{
    struct file_state *s = state;
    size_t len;
    const char *json = host->msg_json(msg, &len);
    char *line = malloc(len + 1);
    if (!line)
        return GR_RETRY;
    memcpy(line, json, len);
    line[len] = '\n';

    pthread_rwlock_rdlock(&s->lock);
    ssize_t n = write(s->fd, line, len + 1);
    int err = errno;
    pthread_rwlock_unlock(&s->lock);
    free(line);
    if (n == (ssize_t)(len + 1)) {
        host->metric_add(s->lines, 1);
        return GR_OK;
    }
    host->metric_add(s->errors, 1);
    host->log(s->h, GR_LOG_ERROR, "write to %s failed: %s; will retry", s->path,
              n < 0 ? strerror(err) : "short write");
    return GR_RETRY;
}

static void file_reopen(void *state)
{
    struct file_state *s = state;
    int fd = open_log(s->path);
    if (fd < 0) {
        host->log(s->h, GR_LOG_ERROR, "reopen of %s failed: %s; still writing to the old file",
                  s->path, strerror(errno));
        return;
    }
    pthread_rwlock_wrlock(&s->lock);
    int old = s->fd;
    s->fd = fd;
    pthread_rwlock_unlock(&s->lock);
    close(old);
}

static void file_fini(void *state)
{
    struct file_state *s = state;
    close(s->fd);
    pthread_rwlock_destroy(&s->lock);
    free(s->path);
    free(s);
}

static const struct gr_config_key file_keys[] = {
    {"path", GR_CONFIG_STRING, 1, "the file to append JSON lines to"},
    {NULL, 0, 0, NULL},
};

static const struct gr_plugin file_plugin = {
    .abi_major = GR_PLUGIN_ABI_MAJOR,
    .abi_minor = GR_PLUGIN_ABI_MINOR,
    .size = sizeof(struct gr_plugin),
    .name = "file",
    .version = "1.0",
    .description = "appends each notification or event as one JSON line to a file",
    .config_keys = file_keys,
    .init = file_init,
    .handle = file_handle,
    .fini = file_fini,
    .reopen = file_reopen,
};

GR_PLUGIN_EXPORT const struct gr_plugin *gr_plugin_entry(const struct gr_host *h)
{
    host = h;
    return &file_plugin;
}
