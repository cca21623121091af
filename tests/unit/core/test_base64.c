/* test_base64.c - the one base64 decoder: RFC 4648 vectors, canonical form only. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "core/base64.h"

static long dec(const char *s, uint8_t *out, size_t max)
{
    return thz_b64_decode(s, strlen(s), out, max);
}

static void rfc4648_vectors(void **state)
{
    static const char *const in[] = {"",         "Zg==",     "Zm8=",    "Zm9v",
                                     "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"};
    static const char *const want[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
    for (size_t i = 0; i < sizeof in / sizeof *in; i++) {
        uint8_t out[16];
        long n = dec(in[i], out, sizeof out);
        assert_int_equal(n, (long)strlen(want[i]));
        assert_memory_equal(out, want[i], (size_t)n);
    }
    uint8_t out[3];
    assert_int_equal(dec("/+8=", out, sizeof out), 2);
    assert_int_equal(out[0], 0xff);
    assert_int_equal(out[1], 0xef);
}

static void refuses_what_is_not_canonical(void **state)
{
    uint8_t out[16];
    assert_int_equal(dec("Zg", out, sizeof out), -1);     /* unpadded */
    assert_int_equal(dec("Zh==", out, sizeof out), -1);   /* unused bits set */
    assert_int_equal(dec("Zm9=", out, sizeof out), -1);   /* unused bits set */
    assert_int_equal(dec("Z===", out, sizeof out), -1);   /* three '=' */
    assert_int_equal(dec("Zg=a", out, sizeof out), -1);   /* '=' inside */
    assert_int_equal(dec("Zm9v\n", out, sizeof out), -1); /* not a multiple of 4 */
    assert_int_equal(dec("Zm-v", out, sizeof out), -1);   /* base64url is another alphabet */
    assert_int_equal(dec("Zm9vYmFy", out, 5), -1);        /* does not fit */
    assert_int_equal(dec("Zm9vYmE=", out, 5), 5);         /* just fits */
    /* a WebSocket key (RFC 6455 section 1.3) is 16 bytes */
    assert_int_equal(dec("dGhlIHNhbXBsZSBub25jZQ==", out, sizeof out), 16);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(rfc4648_vectors),
        cmocka_unit_test(refuses_what_is_not_canonical),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
