/*
 * Realistic change notifications for every resource type graphrouter
 * classifies: resource paths in the syntax Graph uses for that type,
 * resourceData, and the resource content a rich notification carries.
 */
#ifndef GRSIM_PAYLOADS_H
#define GRSIM_PAYLOADS_H

#include <jansson.h>

/* One generated resource: path, resourceData and (for rich items) content. */
struct sim_resource {
    char *resource;
    json_t *resource_data; /* owned */
    json_t *content;       /* owned: what encryptedContent will hold */
};

/* NULL-terminated list of the types this tool can generate. */
extern const char *const sim_types[];

/* Fill `out` for `type` (NULL-safe names as in the README); -1 if unknown.
 * Ids are random; `user` is the user id to use where a type names one. */
int sim_resource_new(const char *type, const char *user, struct sim_resource *out);
void sim_resource_free(struct sim_resource *r);

/* A random GUID, lower case. */
void sim_guid(char out[37]);

#endif
