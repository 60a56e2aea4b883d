/* A plugin built for another ABI: BAD_MAJOR / BAD_MINOR are set by the build
 * (tests/CMakeLists.txt). The router must refuse another major or a newer
 * minor, naming both versions, and run an older minor (abi_old: 1.0). */
#include <graphrouter/plugin.h>

static int handle(void *state, struct gr_msg *msg)
{
    (void)state;
    (void)msg;
    return GR_OK;
}

static const struct gr_plugin plugin = {
    .abi_major = BAD_MAJOR,
    .abi_minor = BAD_MINOR,
    .size = sizeof(struct gr_plugin),
    .name = "bad_abi",
    .handle = handle,
};

GR_PLUGIN_EXPORT const struct gr_plugin *gr_plugin_entry(const struct gr_host *host)
{
    (void)host;
    return &plugin;
}
