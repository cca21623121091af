/* test_web.c - the web module's pure parts: If-None-Match matching and the
 * embedded file table. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "web/web.h"

static void etag_match(void **state)
{
    const char *t = "\"abc\"";
    assert_true(web_etag_match("\"abc\"", t));
    assert_true(web_etag_match("W/\"abc\"", t)); /* weak comparison */
    assert_true(web_etag_match("\"x\", \"abc\"", t));
    assert_true(web_etag_match(" \"x\",\t\"abc\" ,", t));
    assert_true(web_etag_match("*", t));
    assert_false(web_etag_match(NULL, t));
    assert_false(web_etag_match("", t));
    assert_false(web_etag_match("\"abcd\"", t));
    assert_false(web_etag_match("\"ab\"", t));
    assert_false(web_etag_match("abc", t));   /* unquoted: malformed */
    assert_false(web_etag_match("\"abc", t)); /* unterminated */
    assert_false(web_etag_match("\"x\" junk \"abc\"", t));
}

static void files(void **state)
{
    const web_file *idx = web_find("");
    assert_non_null(idx);
    assert_string_equal(idx->path, "index.html");
    assert_ptr_equal(web_find("index.html"), idx);
    assert_string_equal(idx->type, "text/html; charset=utf-8");
    assert_true(idx->data_end > idx->data);
    /* index.html names the build's version in its /static/ URLs */
    char want[64];
    snprintf(want, sizeof want, "/static/%s/app/main.js", web_version());
    assert_non_null(memmem(idx->data, (size_t)(idx->data_end - idx->data), want, strlen(want)));
    const web_file *js = web_find("vendor/uplot.js");
    assert_non_null(js);
    assert_string_equal(js->type, "text/javascript; charset=utf-8");
    assert_true(js->gz_end - js->gz > 2 && js->gz[0] == 0x1f && js->gz[1] == 0x8b);
    assert_true(js->gz_end - js->gz < (js->data_end - js->data) / 2);
    assert_true(js->etag[0] == '"' && js->etag[strlen(js->etag) - 1] == '"');
    assert_null(web_find("app/nope.js"));
    assert_null(web_find("../index.html"));
    assert_null(web_find("/app/main.js"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(etag_match),
        cmocka_unit_test(files),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
