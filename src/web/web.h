/* web.h - the web app (docs/DASHBOARD.md) served by the daemon: index.html
 * at `/` and the app's modules, styles and vendored libraries under
 * `/static/VERSION/...`, all embedded into the binary at build time from
 * build/web (made by web/build.mjs from web/). */
#ifndef THZ_WEB_H
#define THZ_WEB_H

#include <stdbool.h>
#include <stddef.h>

#include "core/err.h"

/* Registers GET `/` and GET `/static/{path...}` (HEAD too) with the HTTP
 * router. Call before net_start, after http_start. */
thz_err web_start(void);

/* True if the If-None-Match header value inm (may be NULL) matches etag (a
 * quoted strong tag such as "\"abc\""), with the weak comparison RFC 9110
 * section 13.1.2 prescribes: "*" matches, W/ prefixes are ignored. Pure. */
bool web_etag_match(const char *inm, const char *etag);

/* The asset at path (relative, e.g. "app/main.js"; "" is index.html), or
 * NULL. The pointers returned stay valid for the process lifetime. */
typedef struct web_file {
    const char *path; /* "app/main.js" */
    const char *type; /* Content-Type */
    const char *etag; /* quoted, of the uncompressed bytes */
    const unsigned char *data, *data_end;
    const unsigned char *gz, *gz_end; /* gz == gz_end: not worth compressing */
} web_file;
const web_file *web_find(const char *path);
/* The build's version: the first segment of every /static path. */
const char *web_version(void);

#endif
