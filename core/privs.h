/*
 * Running as an unprivileged user: the top-level "user" key. graphrouter
 * started as root binds its port and opens the store, its keys and the
 * handlers' files first, then takes on that user's uid, gid and
 * supplementary groups for good (README "Configuration reference", "user").
 */
#ifndef GR_PRIVS_H
#define GR_PRIVS_H

#include <sys/types.h>

/* The uid and primary gid of user `name`; -1 with *why (malloc'd) when
 * there is no such user or the user database cannot be read. */
int gr_privs_lookup(const char *name, uid_t *uid, gid_t *gid, char **why);

/* Become `name` (uid, gid): initgroups, setgid, setuid, in that order, then
 * check that setuid(0) fails. Not root: 0 if the process already is that
 * user, else -1. -1 with *why (malloc'd) on any failure; the caller must not
 * go on then, the process may be half-way. Call it before any thread runs
 * plugin code (glibc applies each change to every thread, but a plugin call
 * in flight would see it change under it). */
int gr_privs_drop(const char *name, uid_t uid, gid_t gid, char **why);

#endif
