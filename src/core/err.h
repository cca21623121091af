/* err.h - the one error enum of thinghz; 0 is success, everything else a named failure. */
#ifndef THZ_ERR_H
#define THZ_ERR_H

typedef enum thz_err {
    THZ_OK = 0,
    THZ_EAGAIN,       /* not enough input yet (a partial packet); try again with more */
    THZ_ENOMEM,       /* an allocation failed */
    THZ_EINVAL,       /* a caller passed a bad argument or a setting is out of range */
    THZ_EMALFORMED,   /* input violates the wire format (MQTT 0x81) */
    THZ_EPROTO,       /* input is well formed but breaks the protocol rules (MQTT 0x82) */
    THZ_EVERSION,     /* unsupported protocol version (MQTT 0x84 / 3.1.1 rc 1) */
    THZ_ETOPIC,       /* topic name invalid (MQTT 0x90) */
    THZ_EFILTER,      /* topic filter invalid (MQTT 0x8F) */
    THZ_ETOOBIG,      /* larger than the configured bound (MQTT 0x95) */
    THZ_EDENIED,      /* not authorized (MQTT 0x87) */
    THZ_EBADAUTH,     /* bad user name or password (MQTT 0x86) */
    THZ_EBADID,       /* client identifier not valid (MQTT 0x85) */
    THZ_EQUOTA,       /* a quota or queue bound was hit (MQTT 0x97) */
    THZ_ERATE,        /* message rate too high (MQTT 0x96) */
    THZ_EIO,          /* a system call failed; errno-level detail is logged where it happened */
    THZ_ECORRUPT,     /* stored data failed its checksum or does not parse */
    THZ_ENOTFOUND,    /* no such object */
    THZ_EEXIST,       /* the object already exists */
    THZ_EUNSUPPORTED, /* a feature the peer asked for that we do not implement */
    THZ_ENOSPC        /* the disk (or the user's disk quota) is full: ENOSPC, EDQUOT, SQLITE_FULL
                         (MQTT 0x97, HTTP 507); retrying once space returns succeeds */
} thz_err;

/* Returns a static, human-readable description of e; never NULL. */
const char *thz_strerror(thz_err e);

/* THZ_ENOSPC for ENOSPC and EDQUOT, else THZ_EIO: how a failed write(2),
 * fsync(2) or rename(2) is reported, so "the disk is full" stays distinct. */
thz_err thz_err_from_errno(int e);

#endif
