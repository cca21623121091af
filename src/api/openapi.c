/* openapi.c - the OpenAPI 3.0 document of the REST API, kept as
 * src/api/openapi.json and embedded into the binary at build time with the
 * assembler's .incbin (the Makefile names the JSON as a prerequisite of this
 * object, so editing it rebuilds this file). */
#include <stddef.h>

#include "api/api_int.h"

/* The path is relative to the directory make runs in (the repository root),
 * where every build (daemon, unit tests, fuzzers, sanitizers) compiles. */
__asm__(".section .rodata\n"
        ".balign 16\n"
        ".globl thz_openapi_start\n"
        ".hidden thz_openapi_start\n"
        ".globl thz_openapi_end\n"
        ".hidden thz_openapi_end\n"
        "thz_openapi_start:\n"
        ".incbin \"src/api/openapi.json\"\n"
        "thz_openapi_end:\n"
        ".byte 0\n"
        ".previous\n");

extern const char thz_openapi_start[], thz_openapi_end[];

const char *api_openapi_json(size_t *len)
{
    *len = (size_t)(thz_openapi_end - thz_openapi_start);
    return thz_openapi_start;
}
