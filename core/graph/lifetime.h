/*
 * How long Graph lets a subscription live, by resource (graph-protocol.md
 * §7.3, Microsoft's table of November 2024): the default lifetime of a
 * declared subscription, and the limit an "expiration_minutes" may not pass.
 * Pure functions.
 */
#ifndef GR_LIFETIME_H
#define GR_LIFETIME_H

#include <stdbool.h>

#include "route/classify.h"

/* The maximum lifetime in minutes of a subscription to `resource` (with
 * resource data when `rich`), or 0 when graphrouter does not know the
 * resource. *type gets the resource's classification. */
unsigned gr_lifetime_max_minutes(const char *resource, bool rich, enum gr_rtype *type);

#endif
