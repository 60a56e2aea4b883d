/*
 * Operating the store from the command line, while the daemon runs or not:
 *
 *   graphrouter -c FILE status
 *   graphrouter -c FILE dlq list | show ID | replay ID | replay --all | purge
 *
 * It opens the configuration's store with its own connection (SQLite WAL
 * lets it read beside the daemon, and its writes wait for the daemon's
 * transaction to end); the daemon notices replayed work within a second.
 */
#ifndef GR_STORE_ADMIN_H
#define GR_STORE_ADMIN_H

/* argv[0] is "status" or "dlq". Returns the exit status. */
int gr_store_admin(const char *config_file, int argc, char **argv);

#endif
