/* The log lines of a delivery's outcome (see outcome_log.h). */
#include "store/outcome_log.h"

#include "log.h"

void gr_log_retry(const char *handler, int64_t delivery, const char *kind, unsigned attempt,
                  unsigned max, const char *error, int64_t delay_ms)
{
    gr_info("handler \"%s\" asked to retry delivery %lld (%s, attempt %u of %u: %s); next try "
            "in %lld ms",
            handler, (long long)delivery, kind, attempt, max, error, (long long)delay_ms);
}

void gr_log_dead_letter(const char *handler, int64_t delivery, const char *kind,
                        const char *error)
{
    gr_warn("handler \"%s\": delivery %lld (%s) is a dead letter: %s (graphrouter dlq show %lld)",
            handler, (long long)delivery, kind, error, (long long)delivery);
}
