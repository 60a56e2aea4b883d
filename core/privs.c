/* Dropping root for the configured "user" (see privs.h). Control thread,
 * at start only. */
#define _GNU_SOURCE
#include "privs.h"

#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "util.h"

int gr_privs_lookup(const char *name, uid_t *uid, gid_t *gid, char **why)
{
    long size = sysconf(_SC_GETPW_R_SIZE_MAX);
    size_t n = size > 0 ? (size_t)size : 16384;
    for (;;) {
        char *buf = gr_xmalloc(n);
        struct passwd pw, *found = NULL;
        int rc = getpwnam_r(name, &pw, buf, n, &found);
        if (rc == ERANGE && n < (1u << 20)) {
            free(buf);
            n *= 2;
            continue;
        }
        if (found) {
            *uid = pw.pw_uid;
            *gid = pw.pw_gid;
        } else if (rc == 0 || rc == ENOENT || rc == ESRCH) {
            *why = gr_xprintf("there is no user \"%s\" on this system (create it, e.g. "
                              "useradd --system --no-create-home %s)",
                              name, name);
        } else {
            *why = gr_xprintf("cannot look up user \"%s\": %s", name, strerror(rc));
        }
        free(buf);
        return found ? 0 : -1;
    }
}

/* The sanitizers' leak check stops the world with ptrace, which a process
 * that changed its uid no longer allows unless it is marked dumpable again;
 * release builds stay undumpable (no core file, no ptrace by the user). */
#if defined(__SANITIZE_ADDRESS__)
#define GR_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define GR_SANITIZED 1
#endif
#endif

int gr_privs_drop(const char *name, uid_t uid, gid_t gid, char **why)
{
    if (geteuid() != 0) {
        if (getuid() == uid && geteuid() == uid && getgid() == gid && getegid() == gid)
            return 0;
        *why = gr_xprintf("graphrouter runs as uid %u, not as root, so it cannot become user "
                          "\"%s\" (uid %u): start it as root, or as that user",
                          (unsigned)geteuid(), name, (unsigned)uid);
        return -1;
    }
    if (initgroups(name, gid) != 0) {
        *why = gr_xprintf("cannot take on the groups of user \"%s\" (initgroups): %s", name,
                          strerror(errno));
        return -1;
    }
    if (setgid(gid) != 0) {
        *why = gr_xprintf("cannot set the group id %u of user \"%s\": %s", (unsigned)gid, name,
                          strerror(errno));
        return -1;
    }
    if (setuid(uid) != 0) {
        *why = gr_xprintf("cannot set the user id %u of user \"%s\": %s", (unsigned)uid, name,
                          strerror(errno));
        return -1;
    }
    if (uid != 0 && (setuid(0) == 0 || geteuid() != uid || getuid() != uid ||
                     getegid() != gid || getgid() != gid)) {
        *why = gr_xprintf("after becoming user \"%s\" the process could still regain root; "
                          "refusing to run",
                          name);
        return -1;
    }
#ifdef GR_SANITIZED
    prctl(PR_SET_DUMPABLE, 1, 0, 0, 0);
#endif
    return 0;
}
