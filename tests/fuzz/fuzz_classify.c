/*
 * Fuzz gr_classify() (core/route/classify.c) with untrusted resource paths.
 *
 * Input: RESOURCE [NUL ODATA_TYPE [NUL LIFECYCLE_EVENT]]; an empty input
 * passes NULL for everything. Each part is copied into its own malloc'd,
 * NUL-terminated string, so a read past its end is caught by ASan.
 *
 * Checks, beyond "no crash, leak or UB": the type is a valid enum value with a
 * name; a lifecycle event always gives "lifecycle"; there is at most one id per
 * role, each with a static role name and an owned value no longer than the
 * resource (decoding %HH only shrinks it) that gr_classification_id() returns;
 * gr_classification_free() leaves the struct empty.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "route/classify.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char *dup_part(const uint8_t *p, size_t n)
{
    char *s = malloc(n + 1);
    if (!s)
        abort();
    if (n)
        memcpy(s, p, n);
    s[n] = '\0';
    return s;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *parts[3] = {NULL, NULL, NULL};
    size_t lens[3] = {0, 0, 0};
    if (size > 0) {
        size_t start = 0;
        int k = 0;
        for (size_t i = 0; i <= size && k < 3; i++) {
            if (i == size || (data[i] == 0 && k < 2)) {
                parts[k] = dup_part(data + start, i - start);
                lens[k] = i - start;
                k++;
                start = i + 1;
                if (i == size)
                    break;
            }
        }
    }

    struct gr_classification c;
    gr_classify(parts[0], parts[1], parts[2], &c);

    if ((unsigned)c.type >= GR_RT_COUNT || !gr_rtype_name(c.type))
        abort();
    if (gr_rtype_parse(gr_rtype_name(c.type)) != (int)c.type)
        abort();
    if (parts[2] && c.type != GR_RT_LIFECYCLE)
        abort();
    if (!parts[0] && c.nids != 0)
        abort();
    if (c.nids && !c.ids)
        abort();
    for (size_t i = 0; i < c.nids; i++) {
        if (!c.ids[i].role || !c.ids[i].value)
            abort();
        if (strlen(c.ids[i].value) > lens[0])
            abort();
        for (size_t j = 0; j < i; j++)
            if (strcmp(c.ids[i].role, c.ids[j].role) == 0)
                abort(); /* first of each role only */
        if (gr_classification_id(&c, c.ids[i].role) != c.ids[i].value)
            abort();
    }

    gr_classification_free(&c);
    if (c.ids || c.nids)
        abort();
    for (int k = 0; k < 3; k++)
        free(parts[k]);
    return 0;
}
