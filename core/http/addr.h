/*
 * Client addresses and CIDR ranges, for limits.allow_from,
 * limits.trusted_proxies, the per-address connection cap and log lines.
 * IPv4 is kept in its IPv4-mapped IPv6 form (::ffff:a.b.c.d), so one 16-byte
 * key and one matcher serve both families.
 */
#ifndef GR_ADDR_H
#define GR_ADDR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct gr_addr {
    uint8_t b[16];
};

struct gr_cidr {
    struct gr_addr net; /* host bits cleared */
    unsigned bits;      /* prefix length over the 128-bit form */
};

/* The address of a socket peer; false for a family other than IPv4/IPv6. */
bool gr_addr_from_sockaddr(const struct sockaddr *sa, struct gr_addr *out);
/* "192.0.2.1" or "2001:db8::1" (surrounding spaces not allowed). */
bool gr_addr_parse(const char *text, size_t len, struct gr_addr *out);
/* "192.0.2.0/24", "2001:db8::/32", or a lone address (a /32 or /128). */
bool gr_cidr_parse(const char *text, struct gr_cidr *out);
bool gr_cidr_match(const struct gr_cidr *c, const struct gr_addr *a);
bool gr_cidr_list_match(const struct gr_cidr *list, size_t n, const struct gr_addr *a);

/* Text form, IPv4 without the ::ffff: prefix. */
#define GR_ADDR_TEXT 46
void gr_addr_format(const struct gr_addr *a, char out[GR_ADDR_TEXT]);

/*
 * The client behind a trusted proxy: the X-Forwarded-For list (the value of
 * every such header, joined by commas) read from the right, skipping the
 * addresses of trusted proxies; the first other address is the client. An
 * entry that is not an address ends the walk: everything left of it may be
 * forged. Returns false (keep the socket address) when no client is found.
 */
bool gr_forwarded_client(const char *xff, const struct gr_cidr *trusted, size_t ntrusted,
                         struct gr_addr *out);

#endif
