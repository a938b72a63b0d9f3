/* Per-thread status: see status.h. */
#include "core/status.h"

#include <stdarg.h>
#include <stdio.h>

#include "core/log.h"
#include "core/p11names.h"

static _Thread_local kvp_status tls_status;

void kvp_status_clear(void)
{
  tls_status.rv = CKR_OK;
  tls_status.msg[0] = '\0';
}

CK_RV kvp_fail_loc(int level, CK_RV rv, const char *file, int line, const char *func,
                   const char *fmt, ...)
{
  va_list ap;

  va_start(ap, fmt);
  if (tls_status.msg[0] == '\0') {
    vsnprintf(tls_status.msg, sizeof(tls_status.msg), fmt, ap);
    tls_status.rv = rv;
    if (level >= 0 && level <= kvp_log_threshold)
      kvp_log_write(level, file, line, func, "%s (%s)", tls_status.msg, kvp_ckr_name(rv));
  } else if (level >= 0 && KVP_LOG_DEBUG <= kvp_log_threshold) {
    /* a reason is recorded already: this one only adds context */
    char more[KVP_STATUS_MSGLEN];
    vsnprintf(more, sizeof(more), fmt, ap);
    kvp_log_write(KVP_LOG_DEBUG, file, line, func, "%s (%s)", more, kvp_ckr_name(rv));
  }
  va_end(ap);
  return rv;
}

const char *kvp_status_reason(void)
{
  return tls_status.msg[0] != '\0' ? tls_status.msg : NULL;
}

CK_RV kvp_status_rv(void)
{
  return tls_status.rv;
}

void kvp_status_get(kvp_status *out)
{
  *out = tls_status;
}

void kvp_status_set(const kvp_status *st)
{
  if (tls_status.msg[0] == '\0' && st != NULL && st->msg[0] != '\0')
    tls_status = *st;
}

const char *kvp_status_text(CK_RV rv, char *buf, size_t len)
{
  const char *r = kvp_status_reason();

  if (r != NULL)
    snprintf(buf, len, "%s", r);
  else
    snprintf(buf, len, "%s", kvp_ckr_name(rv));
  return buf;
}
