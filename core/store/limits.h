/*
 * How store.max_db_bytes is shared out on disk (see README, Configuration
 * reference: store). The cap counts everything the store keeps on disk: the
 * database file, its write-ahead log (-wal) and the WAL index (-shm). It is
 * split into three shares, each bounded:
 *
 *   WAL    a quarter of the cap, at most 64 MiB: checkpoints run once the WAL
 *          holds a quarter of its share (wal_autocheckpoint), and the file is
 *          cut back to that much (journal_size_limit) when it restarts;
 *   -shm   32 KiB per 4,062 WAL frames the WAL share can hold;
 *   database  the rest, enforced by SQLite (max_page_count). A checkpoint
 *          copies WAL pages into the database file, which can grow only up
 *          to its share: the WAL share is the margin that checkpoint needs.
 *
 * Each commit is kept within the WAL's share: it may rewrite item bodies
 * (appending one, or changing an item's state, which rewrites its record)
 * of T bytes in all while
 *   WAL + 2 T                  <= 3/4 of the WAL share (WAL: the frames it holds
 *                                since it last restarted);
 * the requests past that wait for the next commit (the first always runs).
 * An append of B bytes is refused as full (503, reason "full") when
 *   used database pages + 2 B  > 90% of the database share (the rest is kept
 *                                for routing and completing what is stored), or
 *   WAL + 2 B                  > 3/4 of the WAL share (it could not be written
 *                                even alone).
 * Pure arithmetic, so that it can be tested alone.
 */
#ifndef GR_STORE_LIMITS_H
#define GR_STORE_LIMITS_H

#include <stdbool.h>
#include <stdint.h>

#define GR_WAL_FRAME_HEADER 24  /* bytes before each page in the WAL */
#define GR_WAL_HEADER 32        /* bytes at the start of the WAL */
#define GR_SHM_REGION 32768     /* the -shm file grows by this ... */
#define GR_SHM_REGION_FRAMES 4062 /* ... for this many WAL frames (the first region) */
#define GR_WAL_SHARE_MAX (UINT64_C(64) << 20)
#define GR_AUTOCHECKPOINT_MAX 1000 /* SQLite's default, in pages */

struct gr_store_limits {
    uint64_t cap;            /* store.max_db_bytes; 0: no cap */
    uint64_t page_size;
    uint64_t wal_share;      /* bytes the -wal file may take */
    uint64_t shm_share;      /* bytes the -shm file may take */
    uint64_t db_share;       /* bytes the database file may take: max_page_count pages */
    uint64_t max_page_count; /* 0: no cap */
    uint64_t append_db;      /* appends stop once used pages + 2 B would pass this */
    uint64_t append_wal;     /* ... or once the WAL + 2 (T + B) would pass this */
    unsigned autocheckpoint; /* pages (PRAGMA wal_autocheckpoint) */
    int64_t journal_size_limit; /* bytes (PRAGMA journal_size_limit) */
    /* Set by the writer after a commit failed for want of room (a full disk,
     * with or without a cap): a transaction then rewrites at most this many
     * body bytes beyond its first request, halved on each further failure,
     * so that the retried completions, which must not be dropped, fit again
     * in smaller transactions. 0 once a commit succeeds. */
    uint64_t full_budget;
};

/* The shares of a cap (0: none) for a database of this page size. */
void gr_store_limits_compute(uint64_t cap, uint64_t page_size, struct gr_store_limits *out);

enum gr_store_fit {
    GR_FIT_OK,
    GR_FIT_DB_FULL,  /* the database share is (nearly) used up */
    GR_FIT_WAL_FULL, /* the WAL cannot take this commit's appends now */
};

/* Whether a commit that already rewrote `commit` bytes of item bodies may
 * take `more`: the WAL holding `wal` bytes, twice the bodies' bytes must stay
 * within 3/4 of its share. Always true without a cap. */
bool gr_store_limits_commit_fits(const struct gr_store_limits *l, uint64_t wal, uint64_t commit,
                                 uint64_t more);

/* Whether an append of `append` bytes fits, the database using `used` bytes
 * of live pages (free pages are reused), the WAL holding `wal` bytes and
 * the same commit having rewritten `commit` bytes before it. GR_FIT_WAL_FULL
 * with `commit` > 0: it may fit in the next commit. */
enum gr_store_fit gr_store_limits_fit(const struct gr_store_limits *l, uint64_t used,
                                      uint64_t wal, uint64_t commit, uint64_t append);

#endif
