/* err.c - descriptions of the thinghz error codes. */
#include <errno.h>

#include "core/err.h"

const char *thz_strerror(thz_err e)
{
    switch (e) {
    case THZ_OK: return "success";
    case THZ_EAGAIN: return "incomplete input";
    case THZ_ENOMEM: return "out of memory";
    case THZ_EINVAL: return "invalid argument";
    case THZ_EMALFORMED: return "malformed packet";
    case THZ_EPROTO: return "protocol error";
    case THZ_EVERSION: return "unsupported protocol version";
    case THZ_ETOPIC: return "topic name invalid";
    case THZ_EFILTER: return "topic filter invalid";
    case THZ_ETOOBIG: return "too large";
    case THZ_EDENIED: return "not authorized";
    case THZ_EBADAUTH: return "bad user name or password";
    case THZ_EBADID: return "client identifier not valid";
    case THZ_EQUOTA: return "quota exceeded";
    case THZ_ERATE: return "message rate too high";
    case THZ_EIO: return "input/output error";
    case THZ_ECORRUPT: return "corrupt data";
    case THZ_ENOTFOUND: return "not found";
    case THZ_EEXIST: return "already exists";
    case THZ_EUNSUPPORTED: return "unsupported";
    case THZ_ENOSPC: return "no space left on device";
    }
    return "unknown error";
}

thz_err thz_err_from_errno(int e)
{
    return e == ENOSPC || e == EDQUOT ? THZ_ENOSPC : THZ_EIO;
}
