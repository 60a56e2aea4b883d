/* A shared object without gr_plugin_entry(): the router must refuse it. */
#include <graphrouter/plugin.h>

GR_PLUGIN_EXPORT int some_other_function(void);

GR_PLUGIN_EXPORT int some_other_function(void)
{
    return 42;
}
