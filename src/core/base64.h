/* base64.h - base64 decoding (RFC 4648 section 4, the standard alphabet),
 * for HTTP Basic credentials, password-file salts and hashes, and WebSocket
 * keys. One strict decoder: the input must be canonical, i.e. padded to a
 * multiple of 4 with '=' and with the unused bits of the last symbol zero, so
 * every byte string has exactly one accepted encoding. */
#ifndef THZ_BASE64_H
#define THZ_BASE64_H

#include <stddef.h>
#include <stdint.h>

/* Decodes the n characters at s into out (at most max bytes). Returns the
 * number of bytes, or -1 when s is not canonical base64 or does not fit. */
long thz_b64_decode(const char *s, size_t n, uint8_t *out, size_t max);

#endif
