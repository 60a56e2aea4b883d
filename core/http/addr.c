/* Client addresses and CIDR ranges (see addr.h). */
#define _GNU_SOURCE
#include "http/addr.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

static const uint8_t v4_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

bool gr_addr_from_sockaddr(const struct sockaddr *sa, struct gr_addr *out)
{
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *v4 = (const struct sockaddr_in *)sa;
        memcpy(out->b, v4_prefix, 12);
        memcpy(out->b + 12, &v4->sin_addr, 4);
        return true;
    }
    if (sa->sa_family == AF_INET6) {
        memcpy(out->b, &((const struct sockaddr_in6 *)sa)->sin6_addr, 16);
        return true;
    }
    return false;
}

bool gr_addr_parse(const char *text, size_t len, struct gr_addr *out)
{
    char buf[64];
    if (len == 0 || len >= sizeof buf)
        return false;
    memcpy(buf, text, len);
    buf[len] = '\0';
    struct in_addr v4;
    if (inet_pton(AF_INET, buf, &v4) == 1) {
        memcpy(out->b, v4_prefix, 12);
        memcpy(out->b + 12, &v4, 4);
        return true;
    }
    return inet_pton(AF_INET6, buf, out->b) == 1;
}

bool gr_cidr_parse(const char *text, struct gr_cidr *out)
{
    const char *slash = strchr(text, '/');
    size_t alen = slash ? (size_t)(slash - text) : strlen(text);
    if (!gr_addr_parse(text, alen, &out->net))
        return false;
    bool v4 = memchr(text, ':', alen) == NULL;
    unsigned max = v4 ? 32 : 128, bits = max;
    if (slash) {
        const char *p = slash + 1;
        if (!*p || strlen(p) > 3)
            return false;
        bits = 0;
        for (; *p; p++) {
            if (*p < '0' || *p > '9')
                return false;
            bits = bits * 10 + (unsigned)(*p - '0');
        }
        if (bits > max)
            return false;
    }
    out->bits = v4 ? bits + 96 : bits;
    for (unsigned i = out->bits; i < 128; i++)
        out->net.b[i / 8] &= (uint8_t) ~(0x80u >> (i % 8));
    return true;
}

bool gr_cidr_match(const struct gr_cidr *c, const struct gr_addr *a)
{
    unsigned full = c->bits / 8, rest = c->bits % 8;
    if (memcmp(c->net.b, a->b, full) != 0)
        return false;
    if (!rest)
        return true;
    uint8_t mask = (uint8_t)(0xffu << (8 - rest));
    return (a->b[full] & mask) == c->net.b[full];
}

bool gr_cidr_list_match(const struct gr_cidr *list, size_t n, const struct gr_addr *a)
{
    for (size_t i = 0; i < n; i++)
        if (gr_cidr_match(&list[i], a))
            return true;
    return false;
}

void gr_addr_format(const struct gr_addr *a, char out[GR_ADDR_TEXT])
{
    if (memcmp(a->b, v4_prefix, 12) == 0)
        inet_ntop(AF_INET, a->b + 12, out, GR_ADDR_TEXT);
    else
        inet_ntop(AF_INET6, a->b, out, GR_ADDR_TEXT);
}

bool gr_forwarded_client(const char *xff, const struct gr_cidr *trusted, size_t ntrusted,
                         struct gr_addr *out)
{
    size_t end = strlen(xff);
    while (end > 0) {
        size_t start = end;
        while (start > 0 && xff[start - 1] != ',')
            start--;
        size_t a = start, b = end;
        while (a < b && (xff[a] == ' ' || xff[a] == '\t'))
            a++;
        while (b > a && (xff[b - 1] == ' ' || xff[b - 1] == '\t'))
            b--;
        struct gr_addr addr;
        if (!gr_addr_parse(xff + a, b - a, &addr))
            return false;
        if (!gr_cidr_list_match(trusted, ntrusted, &addr)) {
            *out = addr;
            return true;
        }
        end = start ? start - 1 : 0;
    }
    return false;
}
