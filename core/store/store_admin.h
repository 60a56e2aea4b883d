/*
 * Operating the store from the command line, while the daemon runs or not:
 *
 *   graphrouter -c FILE status
 *   graphrouter -c FILE dlq list | show ID | replay ID | replay --all | purge
 *   graphrouter -c FILE subscriptions [--json]
 *
 * It opens the configuration's store with its own connection (SQLite WAL
 * lets it read beside the daemon, and its writes wait for the daemon's
 * transaction to end); the daemon notices replayed work within a second.
 */
#ifndef GR_STORE_ADMIN_H
#define GR_STORE_ADMIN_H

#include <sqlite3.h>
#include <stdbool.h>
#include <stdint.h>

struct gr_config;

/* argv[0] is "status", "dlq" or "subscriptions". Returns the exit status. */
int gr_store_admin(const char *config_file, int argc, char **argv);
/* --check: the store at `path` opened read-only (never created nor
 * written) and SQLite's quick_check run on it, giving up after `timeout_ms`.
 * Returns 0 (fine: *report is a line for stdout, "store PATH: ok ..." or
 * "... does not exist yet ...") or 1 (*report says what is wrong: corrupt,
 * unreadable, a layout graphrouter refuses, or the check gave up). */
#define GR_STORE_CHECK_TIMEOUT_MS 10000
int gr_store_check(const char *path, int64_t timeout_ms, char **report);
/* "45s", "3m07s", "2h03m", "4d21h"; "-" for 0 or less. */
void gr_admin_duration(int64_t ms, char out[32]);
/* The subscriptions command (subs_admin.c). */
int gr_subs_admin(sqlite3 *db, const struct gr_config *cfg, bool json);

#endif
