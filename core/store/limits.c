/* How store.max_db_bytes is shared out on disk (see limits.h). */
#include "store/limits.h"

void gr_store_limits_compute(uint64_t cap, uint64_t page_size, struct gr_store_limits *out)
{
    if (page_size < 512)
        page_size = 4096;
    uint64_t frame = page_size + GR_WAL_FRAME_HEADER;
    *out = (struct gr_store_limits){.cap = cap, .page_size = page_size};
    if (!cap) { /* no cap: SQLite's checkpoints, and a WAL cut back after a big commit */
        out->autocheckpoint = GR_AUTOCHECKPOINT_MAX;
        out->journal_size_limit = (int64_t)(GR_WAL_HEADER + GR_AUTOCHECKPOINT_MAX * frame);
        return;
    }
    uint64_t wal = cap / 4 < GR_WAL_SHARE_MAX ? cap / 4 : GR_WAL_SHARE_MAX;
    uint64_t frames = wal > GR_WAL_HEADER ? (wal - GR_WAL_HEADER) / frame : 0;
    out->wal_share = wal;
    out->shm_share = GR_SHM_REGION * (frames / GR_SHM_REGION_FRAMES + 1);
    uint64_t rest = cap > wal + out->shm_share ? cap - wal - out->shm_share : 0;
    out->max_page_count = rest / page_size ? rest / page_size : 1;
    out->db_share = out->max_page_count * page_size;
    out->append_db = out->db_share / 10 * 9;
    out->append_wal = wal / 4 * 3;
    uint64_t ckpt = frames / 4;
    out->autocheckpoint = ckpt < 1                       ? 1
                          : ckpt > GR_AUTOCHECKPOINT_MAX ? GR_AUTOCHECKPOINT_MAX
                                                         : (unsigned)ckpt;
    out->journal_size_limit = (int64_t)(wal / 4);
}

bool gr_store_limits_commit_fits(const struct gr_store_limits *l, uint64_t wal, uint64_t commit,
                                 uint64_t more)
{
    if (l->full_budget && commit && commit + more > l->full_budget)
        return false;
    if (!l->cap)
        return true;
    uint64_t batch = commit + more;
    return batch <= l->append_wal && wal + 2 * batch <= l->append_wal;
}

enum gr_store_fit gr_store_limits_fit(const struct gr_store_limits *l, uint64_t used,
                                      uint64_t wal, uint64_t commit, uint64_t append)
{
    if (!l->cap)
        return GR_FIT_OK;
    /* twice the bytes: a body's pages, and what routing and indexes add */
    if (append > l->append_db || used + 2 * append > l->append_db)
        return GR_FIT_DB_FULL;
    return gr_store_limits_commit_fits(l, wal, commit, append) ? GR_FIT_OK : GR_FIT_WAL_FULL;
}
