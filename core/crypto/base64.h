/*
 * Base64 (RFC 4648): the standard alphabet with padding (Graph's encrypted
 * content) and the URL-safe alphabet without padding (JWTs, JWKS). Decoding
 * is strict: a character outside the alphabet, or bits left over, fails.
 * Pure functions.
 */
#ifndef GR_BASE64_H
#define GR_BASE64_H

#include <stdbool.h>
#include <stddef.h>

/* Decode into a new buffer (free it); NULL on invalid input. Padding is
 * required to be right when present and may be omitted. */
unsigned char *gr_base64_decode(const char *s, size_t len, size_t *out_len);
unsigned char *gr_base64url_decode(const char *s, size_t len, size_t *out_len);

/* Encode into a new NUL-terminated string (free it). */
char *gr_base64_encode(const unsigned char *data, size_t len);
char *gr_base64url_encode(const unsigned char *data, size_t len);

#endif
