/* web_int.h - what the generated build/web/assets.c (web/build.mjs) defines
 * for web.c: the table of embedded files. Private to src/web and the
 * generated file. */
#ifndef THZ_WEB_INT_H
#define THZ_WEB_INT_H

#include <stddef.h>

#include "web/web.h"

extern const web_file web_files[];
extern const size_t web_nfiles;
extern const char web_build_version[];
/* The Content-Security-Policy of index.html (it names the hash of the
 * inline import map). */
extern const char web_index_csp[];

#endif
