/*
 * Handlers' durable state in the SQLite store (plugin.h: state_get,
 * state_put, state_delete; store.h: state_get and the state of a delivery's
 * outcome).
 *
 *   handler_state(handler, key, value, updated_ms)   layout 3
 *
 * A delivery that returned GR_OK carries the keys it changed; the writer
 * writes them in the transaction that finishes the delivery and stores what
 * it emitted. Between the moment the worker hands the completion over and
 * its commit (completions are written lazily, within milliseconds), the new
 * values are kept in an overlay in memory, so that a call starting after
 * the one that put them sees them; the overlay entry goes once its commit is
 * done (a later put of the same key keeps its own). Reads go to the overlay,
 * then to the file through a small pool of read-only connections, never
 * through the writer: WAL lets them read beside it.
 *
 * Locking: the overlay is under the store's `lock`; the pool under
 * `readers_lock`.
 */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>

#include "store/sqlite.h"
#include "log.h"
#include "util.h"

struct sq_overlay {
    struct sq_overlay *next;
    char *handler, *key;
    char *value; /* NULL: deleted */
    size_t len;
    uint64_t seq; /* the request that wrote it */
};

static size_t bucket(const char *handler, const char *key)
{
    uint64_t h = 1469598103934665603u; /* FNV-1a */
    for (const char *p = handler; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211u;
    h = (h ^ '\n') * 1099511628211u;
    for (const char *p = key; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211u;
    return (size_t)(h % GR_ARRAY_LEN(((struct sqlite_store *)0)->overlay));
}

static struct sq_overlay **find(struct sqlite_store *s, const char *handler, const char *key)
{
    struct sq_overlay **p = &s->overlay[bucket(handler, key)];
    while (*p && (strcmp((*p)->handler, handler) != 0 || strcmp((*p)->key, key) != 0))
        p = &(*p)->next;
    return p;
}

void sq_state_queued(struct sqlite_store *s, const char *handler, const struct gr_state_write *ws,
                     size_t n, uint64_t *seq)
{
    *seq = ++s->state_seq;
    for (size_t i = 0; i < n; i++) {
        const struct gr_state_write *w = &ws[i];
        struct sq_overlay **p = find(s, handler, w->key), *e = *p;
        if (!e) {
            e = *p = gr_xcalloc(1, sizeof *e);
            e->handler = gr_xstrdup(handler);
            e->key = gr_xstrdup(w->key);
        }
        free(e->value);
        e->value = w->value ? gr_xmemdup(w->value, w->len) : NULL;
        e->len = w->len;
        e->seq = *seq;
    }
}

void sq_state_committed(struct sqlite_store *s, const char *handler,
                        const struct gr_state_write *w, size_t n, uint64_t seq)
{
    if (!n)
        return;
    pthread_mutex_lock(&s->lock);
    for (size_t i = 0; i < n; i++) {
        struct sq_overlay **p = find(s, handler, w[i].key), *e = *p;
        if (e && e->seq == seq) { /* no later put of the key is waiting */
            *p = e->next;
            free(e->handler);
            free(e->key);
            free(e->value);
            free(e);
        }
    }
    pthread_mutex_unlock(&s->lock);
}

int sq_state_write(struct sqlite_store *s, const char *handler, const struct gr_state_write *w,
                   size_t n, int64_t now)
{
    if (!n)
        return 0;
    sqlite3_stmt *put, *del;
    int rc = sqlite3_prepare_v2(s->db, "INSERT OR REPLACE INTO handler_state(handler, key, "
                                       "value, updated_ms) VALUES(?1, ?2, ?3, ?4)",
                                -1, &put, NULL);
    if (rc != SQLITE_OK)
        return rc;
    if ((rc = sqlite3_prepare_v2(s->db, "DELETE FROM handler_state WHERE handler = ?1 AND key = ?2",
                                 -1, &del, NULL)) != SQLITE_OK) {
        sqlite3_finalize(put);
        return rc;
    }
    for (size_t i = 0; i < n && !rc; i++) {
        sqlite3_stmt *st = w[i].value ? put : del;
        sqlite3_bind_text(st, 1, handler, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, w[i].key, -1, SQLITE_STATIC);
        if (w[i].value) {
            sqlite3_bind_blob(st, 3, w[i].value, (int)w[i].len, SQLITE_STATIC);
            sqlite3_bind_int64(st, 4, now);
        }
        rc = sq_step(st);
    }
    sqlite3_finalize(put);
    sqlite3_finalize(del);
    return rc;
}

/* ---- reading ---------------------------------------------------------------- */

static sqlite3 *get_reader(struct sqlite_store *s)
{
    pthread_mutex_lock(&s->readers_lock);
    sqlite3 *db = s->nreaders ? s->readers[--s->nreaders] : NULL;
    pthread_mutex_unlock(&s->readers_lock);
    if (db)
        return db;
    if (sqlite3_open_v2(s->path, &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL) !=
        SQLITE_OK) {
        gr_error("store: cannot open %s to read handler state: %s", s->path,
                 db ? sqlite3_errmsg(db) : "out of memory");
        sqlite3_close(db);
        return NULL;
    }
    sqlite3_busy_timeout(db, 5000);
    return db;
}

static void put_reader(struct sqlite_store *s, sqlite3 *db)
{
    pthread_mutex_lock(&s->readers_lock);
    if (s->nreaders < GR_ARRAY_LEN(s->readers)) {
        s->readers[s->nreaders++] = db;
        db = NULL;
    }
    pthread_mutex_unlock(&s->readers_lock);
    sqlite3_close(db); /* more than the pool keeps */
}

int sq_state_get(struct gr_store *base, const char *handler, const char *key, char **value,
                 size_t *len)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    *value = NULL;
    *len = 0;
    pthread_mutex_lock(&s->lock);
    struct sq_overlay *e = *find(s, handler, key);
    int found = e ? (e->value != NULL) : -2;
    if (e && e->value) {
        *value = gr_xmemdup(e->value, e->len); /* NUL-terminated after len bytes */
        *len = e->len;
    }
    pthread_mutex_unlock(&s->lock);
    if (found != -2)
        return found;
    sqlite3 *db = get_reader(s);
    if (!db)
        return -1;
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(db, "SELECT value FROM handler_state WHERE handler = ?1 AND "
                                    "key = ?2",
                                -1, &st, NULL);
    int result = -1;
    if (rc == SQLITE_OK) {
        sqlite3_bind_text(st, 1, handler, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, key, -1, SQLITE_STATIC);
        rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) {
            size_t n = (size_t)sqlite3_column_bytes(st, 0);
            const void *v = sqlite3_column_blob(st, 0);
            *value = gr_xmalloc(n + 1);
            if (n)
                memcpy(*value, v, n);
            (*value)[n] = '\0';
            *len = n;
            result = 1;
        } else if (rc == SQLITE_DONE) {
            result = 0;
        }
        sqlite3_finalize(st);
    }
    if (result < 0)
        gr_error("store: reading handler \"%s\"'s state failed: %s", handler,
                 sqlite3_errmsg(db));
    put_reader(s, db);
    return result;
}

void sq_state_close(struct sqlite_store *s)
{
    for (size_t i = 0; i < s->nreaders; i++)
        sqlite3_close(s->readers[i]);
    s->nreaders = 0;
    for (size_t b = 0; b < GR_ARRAY_LEN(s->overlay); b++)
        for (struct sq_overlay *e = s->overlay[b], *next; e; e = next) {
            next = e->next;
            free(e->handler);
            free(e->key);
            free(e->value);
            free(e);
        }
}
