/* fuzz_etag.c - libFuzzer target for web_etag_match, the If-None-Match
 * parser of the web module: the input (NUL-terminated, as the HTTP layer
 * hands header values over) against a fixed tag and against itself. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "web/web.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    if (!s) return 0;
    memcpy(s, data, size);
    s[size] = '\0';
    (void)web_etag_match(s, "\"0123456789abcdef0123\"");
    (void)web_etag_match(s, "\"0123456789abcdef0123.gz\"");
    /* A list that is exactly one quoted tag matches itself. */
    if (size >= 2 && s[0] == '"' && s[size - 1] == '"' && !memchr(s + 1, '"', size - 2) &&
        strlen(s) == size && !web_etag_match(s, s))
        abort();
    free(s);
    return 0;
}
