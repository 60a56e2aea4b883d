/* Base64 in both alphabets (see base64.h). */
#include "crypto/base64.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

static const char std_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
static const char url_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* value + 1 of every byte in each alphabet; 0 = not in it. Built once. */
static unsigned char std_values[256], url_values[256];

static void build_tables(void)
{
    for (int i = 0; i < 64; i++) {
        std_values[(unsigned char)std_alphabet[i]] = (unsigned char)(i + 1);
        url_values[(unsigned char)url_alphabet[i]] = (unsigned char)(i + 1);
    }
}

static unsigned char *decode(const char *s, size_t len, size_t *out_len, bool url)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, build_tables);
    const unsigned char *values = url ? url_values : std_values;
    size_t pad = 0;
    while (len > 0 && s[len - 1] == '=' && pad < 2) {
        len--;
        pad++;
    }
    if (len % 4 == 1 || (pad && (len + pad) % 4 != 0))
        return NULL;
    unsigned char *out = gr_xmalloc(len / 4 * 3 + 3);
    const unsigned char *in = (const unsigned char *)s;
    size_t i = 0, o = 0;
    for (; i + 4 <= len; i += 4) { /* whole quads */
        unsigned a = values[in[i]], b = values[in[i + 1]], c = values[in[i + 2]],
                 d = values[in[i + 3]];
        if (!a || !b || !c || !d) {
            free(out);
            return NULL;
        }
        unsigned v = (a - 1) << 18 | (b - 1) << 12 | (c - 1) << 6 | (d - 1);
        out[o++] = (unsigned char)(v >> 16);
        out[o++] = (unsigned char)(v >> 8);
        out[o++] = (unsigned char)v;
    }
    if (i < len) { /* 2 or 3 characters left */
        unsigned v = 0;
        size_t left = len - i;
        for (size_t k = 0; k < left; k++) {
            unsigned x = values[in[i + k]];
            if (!x) {
                free(out);
                return NULL;
            }
            v = v << 6 | (x - 1);
        }
        if (left == 2) {
            if (v & 0xf) /* non-canonical: bits set past the end */
                goto bad;
            out[o++] = (unsigned char)(v >> 4);
        } else {
            if (v & 0x3)
                goto bad;
            out[o++] = (unsigned char)(v >> 10);
            out[o++] = (unsigned char)(v >> 2);
        }
    }
    *out_len = o;
    return out;
bad:
    free(out);
    return NULL;
}

unsigned char *gr_base64_decode(const char *s, size_t len, size_t *out_len)
{
    return decode(s, len, out_len, false);
}

unsigned char *gr_base64url_decode(const char *s, size_t len, size_t *out_len)
{
    return decode(s, len, out_len, true);
}

static char *encode(const unsigned char *data, size_t len, bool url)
{
    const char *alphabet = url ? url_alphabet : std_alphabet;
    char *out = gr_xmalloc((len + 2) / 3 * 4 + 1);
    size_t o = 0, i = 0;
    for (; i + 2 < len; i += 3) {
        unsigned v = (unsigned)data[i] << 16 | (unsigned)data[i + 1] << 8 | data[i + 2];
        out[o++] = alphabet[v >> 18];
        out[o++] = alphabet[(v >> 12) & 63];
        out[o++] = alphabet[(v >> 6) & 63];
        out[o++] = alphabet[v & 63];
    }
    if (i < len) {
        unsigned v = (unsigned)data[i] << 16 | (i + 1 < len ? (unsigned)data[i + 1] << 8 : 0);
        out[o++] = alphabet[v >> 18];
        out[o++] = alphabet[(v >> 12) & 63];
        if (i + 1 < len)
            out[o++] = alphabet[(v >> 6) & 63];
        else if (!url)
            out[o++] = '=';
        if (!url)
            out[o++] = '=';
    }
    out[o] = '\0';
    return out;
}

char *gr_base64_encode(const unsigned char *data, size_t len)
{
    return encode(data, len, false);
}

char *gr_base64url_encode(const unsigned char *data, size_t len)
{
    return encode(data, len, true);
}
