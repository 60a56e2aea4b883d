/*
 * The SQLite store's private parts, shared by its files (see store.h for
 * the interface):
 *
 *   sqlite.c         layout and migration, opening and recovery, the interface
 *   sqlite_writer.c  the request queue and the writer thread (group commit)
 *   sqlite_work.c    the requests: appends, takes, routing and delivery outcomes
 *   sqlite_maint.c   sweeping, retention, recounting (the writer's maintenance)
 *
 * One database in WAL mode, one writer thread that owns the connection.
 *
 * Every write (appends from HTTP threads, takes and completions from
 * workers) is a request queued to the writer, which runs all the requests
 * that queued up while its previous transaction committed in one new
 * transaction: group commit for the whole process. A transaction holding an
 * append commits with synchronous=FULL (the 202 promise survives power loss)
 * unless store.synchronous is "normal"; one holding only takes and
 * completions commits with NORMAL: losing it to a power cut repeats work,
 * which at-least-once allows, and WAL keeps it across a process crash.
 *
 * SQLite's automatic checkpoint runs inside the writer's commits (a
 * checkpointer thread on a second connection was measured: slower, with
 * 100 ms ack stalls, on 2 cores).
 *
 * Tables (layout 4):
 *   batches(id, tokens, received_ms)      a POST's validationTokens, once
 *   items(id, state, due_ms, done_ms, tries, waits, received_ms, len, batch_id,
 *         dedupe, note)
 *   bodies(id, body)                      an item's body as received, by its id
 *       state (ITEM_*): to route, taken, routed (units open), done, held
 *       (done, with dead letters: retention leaves it)
 *   units(id, item_id, handler, event, state, attempts, due_ms, created_ms,
 *         finished_ms, last_error)
 *       state 0 pending, 1 running, 2 done, 3 dead
 *   Duplicate keys are kept in memory (dedupe.h), rebuilt from
 *   items.dedupe at start.
 *
 * The happy path writes an item three times: its insert (the commit the
 * POST waits for), its take (state and tries), and its completion (state and
 * done_ms), and no unit at all: the worker that routes an item delivers it
 * to its targets at once (store.h: completed()). Units exist only where a
 * delivery carries information of its own: a retry, a dead letter, an
 * emitted event, a handler with a concurrency limit, an item taken before a
 * restart. Bodies live in a table of their own, written once, so that a
 * state change rewrites a page of small item records (about 50 to a page),
 * not a page of bodies; and every value a state change writes has the width
 * of the value it replaces (states are one-byte integers, done_ms starts as
 * received_ms, tries goes from 0 to 1, which SQLite both stores in no
 * bytes), so the record keeps its size and SQLite overwrites it in place.
 *
 * Locking: `lock` guards the request queue, the counters and the cached
 * statistics; the main connection is used by the writer thread only.
 */
#ifndef GR_STORE_SQLITE_H
#define GR_STORE_SQLITE_H

#include <pthread.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "store/dedupe.h"
#include "store/limits.h"
#include "store/store.h"

/* One-byte integers, all of them (see above). */
enum { ITEM_TO_ROUTE = 2, ITEM_TAKEN = 3, ITEM_ROUTED = 4, ITEM_DONE = 5, ITEM_HELD = 6 };
enum { UNIT_PENDING = 0, UNIT_RUNNING = 1, UNIT_DONE = 2, UNIT_DEAD = 3 };

#define MAINTENANCE_MS 1000 /* purge, recount, statistics, sweep */
#define PURGE_BATCH 500     /* rows per statement */
#define PURGE_BUDGET_MS 20  /* per maintenance; more due: maintenance comes back sooner */
#define ROUTE_CHAIN 32    /* items one take hands out for routing */
#define DELIVERY_CHAIN 32 /* deliveries one take hands out (one handler's) */
#define NOTE_DUPLICATE "duplicate" /* items.note of an item not delivered: seen before */

/* The layout below; kept in PRAGMA user_version. A file of another version
 * is refused, never reinterpreted. */
#define SCHEMA_VERSION 4

/* REQ_SYNC: written at once, after what was queued before it, and waited
 * for (sq_run_now): a stuck delivery's note, or nothing (a flush).
 * REQ_CALL: the same for the control plane's records (sqlite_subs.c): `call`
 * runs inside the transaction, and the caller waits for it however long. */
enum req_kind { REQ_APPEND, REQ_TAKE, REQ_ROUTED, REQ_DELIVERED, REQ_COMPLETED, REQ_SYNC, REQ_CALL };

/* REQ_COMPLETED: one target's outcome (strings owned). */
struct sq_part {
    char *handler;
    int result;
    char *text; /* error */
    int64_t delay_ms;
    struct gr_emitted_event *events;
    size_t nevents;
    struct gr_state_write *state;
    size_t nstate;
    uint64_t state_seq;
    bool noted;
    char *kind;            /* what was delivered, for the log lines ("message") */
    unsigned max_attempts; /* the handler's */
};

/* What one request changed, applied to the counters once it is kept. */
struct delta {
    uint64_t added_items, added_bytes, done_items, done_bytes, routed, duplicates;
    bool new_work;
};
struct sqlite_store;

struct req {
    enum req_kind kind;
    struct req *next;
    int64_t queued_ms;        /* monotonic: when it was queued */
    struct gr_append *append; /* REQ_APPEND */
    bool failed;              /* undone alone (its savepoint rolled back) */
    bool later;               /* left for the next commit (the WAL's share, limits.h) */
    bool duplicate;           /* REQ_ROUTED: the item was a duplicate, not delivered */
    /* REQ_TAKE */
    struct gr_store_handler *handlers;
    size_t nh;
    bool prefer_delivery;
    struct gr_work *taken;
    int64_t next_due_ms;
    bool done;
    bool abandoned; /* REQ_SYNC: its caller stopped waiting; the writer frees it */
    int64_t unit;   /* REQ_SYNC: the unit noted (0: the direct delivery of item to handler) */
    int64_t item;
    char *handler;
    struct sq_part *parts; /* REQ_COMPLETED: one per target */
    size_t nparts;
    /* REQ_ROUTED, REQ_DELIVERED: the work and a copy of its outcome */
    struct gr_work *work;
    int result;
    char **targets;
    size_t ntargets;
    char *text; /* note or error */
    int64_t delay_ms;
    struct gr_emitted_event *events; /* strings owned */
    size_t nevents;
    char *life_sub, *life_event; /* REQ_ROUTED: a managed subscription's lifecycle event */
    struct gr_state_write *state; /* REQ_DELIVERED: the handler's state it changed (owned) */
    size_t nstate;
    uint64_t state_seq;           /* ... its overlay entries' number (sqlite_state.c) */
    /* REQ_CALL */
    int (*call)(struct sqlite_store *s, struct req *r, int64_t now, struct delta *d);
    void *arg;
};

enum stmt_id {
    S_INS_BATCH, S_INS_ITEM, S_INS_BODY, S_ROUTE_NEXT, S_ITEM_STATE,
    S_ITEM_WAIT, S_ITEM_DONE, S_ITEM_TAKE, S_ITEM_COMPLETE, S_INS_UNIT, S_UNIT_NEXT, S_UNIT_HEAD,
    S_FIRST_UNROUTED, S_UNIT_GET, S_UNIT_RUN, S_UNIT_NOTE, S_UNIT_NOTE_DIRECT, S_UNIT_NOTED, S_UNIT_EXISTS,
    S_UNIT_FINISH, S_UNIT_RETRY, S_ITEM_CLOSE, S_NEXT_DUE_UNIT, S_NEXT_DUE_ITEM, S_USED_PAGES,
    S_OLDEST, S_DATA_VERSION,
    S_BEGIN, S_COMMIT, S_SAVEPOINT, S_RELEASE, S_ROLLBACK_TO, S_SYNC_FULL, S_SYNC_NORMAL, S_COUNT
};

struct sqlite_store {
    struct gr_store base;
    struct gr_store_config cfg;
    char *path;
    sqlite3 *db;
    sqlite3_stmt *stmt[S_COUNT];
    pthread_t writer;
    bool writer_started;

    pthread_mutex_t lock;
    pthread_cond_t wake;     /* the writer: requests queued */
    pthread_cond_t answered; /* takers: a take was answered */
    pthread_cond_t work;     /* idle takers: new work may exist */
    struct req *head, *tail;
    size_t queued, urgent; /* requests in the queue; appends, syncs and calls among them */
    size_t takes;          /* takes in the queue, the first queued at takes_since_ms */
    int64_t takes_since_ms;
    int64_t last_append_ms; /* when the last append was queued (monotonic) */
    bool stopping, taking_stopped;
    uint64_t work_seq;
    uint64_t items_pending, bytes_pending, items_to_route;
    struct gr_store_stats_handler *stats;
    size_t nstats;
    struct gr_store_handler *handlers; /* the current configuration's */
    size_t nhandlers;
    bool handlers_changed;
    unsigned rr; /* round-robin start among handlers */
    int64_t next_maintenance_ms;
    bool failing; /* the last transaction failed: log once */
    uint64_t page_size;
    struct gr_store_limits limits; /* max_db_bytes, shared out (limits.h) */
    char *wal_path;                /* the -wal file, whose size counts */
    uint64_t wal_frames;           /* frames in the WAL after the last commit (0: restarts) */
    uint64_t wal_now;              /* bytes the WAL holds when the writer's transaction began */
    uint64_t commit_rewritten;     /* body bytes the transaction has written so far */
    sqlite3_int64 batch_id;             /* the writer's last token batch ... */
    struct gr_token_list *batch_tokens; /* ... parsed (see take_route) */
    bool recount_needed;   /* the counters may be off: rebuild them from the tables */
    int64_t data_version;  /* changes when another connection (graphrouter dlq) writes */
    struct gr_dedupe dedupe;
    /* handler state (sqlite_state.c): what completions queued but not yet
     * committed wrote, under `lock`; read-only connections for state_get */
    struct sq_overlay *overlay[64];
    uint64_t state_seq;
    bool state_dropped; /* a state write was given up at the exit: none may follow (writer) */
    pthread_mutex_t readers_lock;
    sqlite3 *readers[8];
    size_t nreaders;
};

#define S(st, i) ((st)->stmt[i])

/* Routed items none of whose deliveries is pending or running are done,
 * after work was swept or recovered (sqlite.c). */
extern const char sq_close_finished_items[];

/* sqlite.c: the SQL of the writer's prepared statements (test_store_plans) */
const char *sq_statement(int i);

/* sqlite_maint.c: the purge's statements (?1 the cutoff, ?3 the batch) */
extern const char *const sq_purge_sql[];
extern const size_t sq_npurge;

/* sqlite.c: a delivery found interrupted by a stop (recover(), or an item
 * taken before it, routed again: sq_do_routed), its attempt-th attempt
 * charged: counted and logged. True if that used up its handler's max
 * attempts (0: the handler is not configured, never). It runs again
 * sq_recovery_wait_ms(attempts) later: 1, 2, 4 ... 60 s, so that a plugin
 * that crashes the process restarts it no faster than that. */
bool sq_interrupted(int64_t id, const char *name, unsigned attempts, unsigned max);
int64_t sq_recovery_wait_ms(unsigned attempts);
#define SQ_INTERRUPTED_ERROR "graphrouter stopped while the handler ran (a crash?)"

/* sqlite.c: helpers */
int sq_step(sqlite3_stmt *st); /* step and reset: 0, or an SQLite error */
char *sq_column_text(sqlite3_stmt *st, int col, size_t *len); /* a malloc'd copy, or NULL */
int sq_exec(sqlite3 *db, const char *sql); /* logs a failure */
uint64_t sq_wal_bytes(const struct sqlite_store *s); /* the -wal file's size now */
bool sq_is_full(int rc); /* SQLITE_FULL: max_page_count reached, or the disk is full */
void sq_free_req(struct req *r);

/* sqlite_writer.c */
void sq_enqueue(struct sqlite_store *s, struct req *r);
void sq_enqueue_locked(struct sqlite_store *s, struct req *r); /* under lock */
void sq_count_queue(struct sqlite_store *s); /* under lock */
/* Queue `r` as urgent and wait (up to 5 s) until the writer ran it, with
 * everything queued before it. False if it was not written. */
bool sq_run_now(struct sqlite_store *s, struct req *r, int64_t *unit /* REQ_SYNC's, or NULL */);
/* The same without a time limit, for a REQ_CALL; the caller frees `r`. */
bool sq_run_call(struct sqlite_store *s, struct req *r);
void *sq_writer_main(void *arg);

/* sqlite_work.c: run by the writer inside its transaction */
#define APPEND_FULL (-1)  /* over a limit: nothing written, answered 503 "full" */
#define APPEND_LATER (-2) /* does not fit this commit's WAL share: run in the next commit */
int sq_do_append(struct sqlite_store *s, struct gr_append *a, uint64_t batch_items,
                 uint64_t batch_bytes, uint64_t rewritten, uint64_t *bytes);
int sq_do_take(struct sqlite_store *s, struct req *r, int64_t now);
/* The body of the item just inserted (S_INS_ITEM), in bodies. */
int sq_insert_body(struct sqlite_store *s, const char *body, size_t len);
int sq_do_routed(struct sqlite_store *s, struct req *r, int64_t now, uint64_t *done_items,
                 uint64_t *done_bytes, uint64_t *routed, bool *new_work);
int sq_do_delivered(struct sqlite_store *s, struct req *r, int64_t now, uint64_t *done_items,
                    uint64_t *done_bytes, bool *new_work);
int sq_do_completed(struct sqlite_store *s, struct req *r, int64_t now, uint64_t *done_items,
                    uint64_t *done_bytes, uint64_t *routed, bool *new_work);
/* REQ_SYNC with a note: the stuck delivery's unit keeps it (a direct
 * delivery gets its unit now); r->unit is set to the unit's id */
int sq_do_note(struct sqlite_store *s, struct req *r, int64_t now);
void sq_free_chain(struct gr_work *w);
struct gr_store_stats_handler *sq_hstat(struct sqlite_store *s, const char *name); /* under lock */

/* sqlite_subs.c */
int sq_add_sub_event(struct sqlite_store *s, const char *subscription, const char *event,
                     int64_t item, int64_t now);
int sq_subs_load(struct gr_store *base, struct gr_sub_record **out, size_t *n,
                 struct gr_sub_event **events, size_t *nevents);
int sq_subs_put(struct gr_store *base, const struct gr_sub_record *r, const int64_t *consumed,
                size_t nconsumed, const struct gr_store_item *resync);
int sq_subs_delete(struct gr_store *base, const char *key);
bool sq_lease(struct gr_store *base, int64_t ttl_ms);

/* sqlite_state.c: a completion's state writes enter the overlay (under
 * lock; *seq numbers them) and leave it once committed */
void sq_state_queued(struct sqlite_store *s, const char *handler, const struct gr_state_write *w,
                     size_t n, uint64_t *seq);
void sq_state_committed(struct sqlite_store *s, const char *handler,
                        const struct gr_state_write *w, size_t n, uint64_t seq);
int sq_state_write(struct sqlite_store *s, const char *handler, const struct gr_state_write *w,
                   size_t n, int64_t now);
int sq_state_get(struct gr_store *base, const char *handler, const char *key, char **value,
                 size_t *len);
void sq_state_close(struct sqlite_store *s);

/* sqlite_maint.c: true if purging is behind (maintenance should come back soon) */
bool sq_maintenance(struct sqlite_store *s);

#endif
