/*
 * Private keys through libkvp11.so and the OpenSSL pkcs11 engine (engine.h).
 *
 * The ENGINE API is deprecated in OpenSSL 3 but it is the path Debian 12
 * ships for libp11; the deprecation warnings are switched off for this file
 * only.
 */
#define _POSIX_C_SOURCE 200809L
#define OPENSSL_SUPPRESS_DEPRECATED

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/engine.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ui.h>

#include "engine.h"

#ifndef KVP11_MODULE_INSTALLED
#define KVP11_MODULE_INSTALLED "/usr/lib/x86_64-linux-gnu/pkcs11/libkvp11.so"
#endif

const char *kvp_engine_ossl_reason(void)
{
  static char buf[256];
  unsigned long e, last = 0;
  while ((e = ERR_get_error()) != 0)
    last = e;
  const char *r = last ? ERR_reason_error_string(last) : NULL;
  if (r)
    snprintf(buf, sizeof(buf), "%s", r);
  else if (last)
    snprintf(buf, sizeof(buf), "OpenSSL error %lx", last);
  else
    snprintf(buf, sizeof(buf), "unknown error");
  return buf;
}

int kvp_engine_quiet_begin(const kvp_tool *t)
{
  const char *dbg = kvp_getenv("KVP11_DEBUG");
  if (t->verbose || (dbg && *dbg))
    return -1;
  fflush(stderr);
  int saved = dup(2);
  int fd = open("/dev/null", O_WRONLY);
  if (saved < 0 || fd < 0) {
    if (saved >= 0)
      close(saved);
    if (fd >= 0)
      close(fd);
    return -1;
  }
  dup2(fd, 2);
  close(fd);
  return saved;
}

void kvp_engine_quiet_end(int saved)
{
  if (saved < 0)
    return;
  fflush(stderr);
  dup2(saved, 2);
  close(saved);
}

const char *kvp_engine_module(const char *opt)
{
  const char *env = kvp_getenv("KVP11_MODULE");
  if (opt && *opt)
    return opt;
  if (env && *env)
    return env;
  return KVP11_MODULE_INSTALLED;
}

/* RFC 7512 / RFC 3986 percent-encoding of a path attribute value. */
static void pct_encode(const char *s, char *out, size_t outlen)
{
  static const char hex[] = "0123456789ABCDEF";
  size_t o = 0;
  for (const unsigned char *p = (const unsigned char *)s; *p && o + 4 < outlen; p++) {
    if ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
        *p == '-' || *p == '.' || *p == '_' || *p == '~') {
      out[o++] = (char)*p;
    } else {
      out[o++] = '%';
      out[o++] = hex[*p >> 4];
      out[o++] = hex[*p & 15];
    }
  }
  out[o] = 0;
}

/* The engine library: $OPENSSL_ENGINES or OpenSSL's ENGINESDIR, /pkcs11.so. */
static void engine_so(char *out, size_t len)
{
  const char *env = kvp_getenv("OPENSSL_ENGINES");
  char dir[512] = "";
  if (env && *env) {
    snprintf(dir, sizeof(dir), "%s", env);
  } else {
    const char *v = OpenSSL_version(OPENSSL_ENGINES_DIR); /* ENGINESDIR: "/path" */
    const char *q1 = v ? strchr(v, '"') : NULL;
    const char *q2 = q1 ? strchr(q1 + 1, '"') : NULL;
    if (q1 && q2)
      snprintf(dir, sizeof(dir), "%.*s", (int)(q2 - q1 - 1), q1 + 1);
  }
  if (dir[0])
    snprintf(out, len, "%s/pkcs11.so", dir);
  else
    out[0] = 0;
}

void kvp_engine_key_free(kvp_engine_key *k)
{
  EVP_PKEY_free(k->pkey);
  if (k->e) {
    ENGINE_finish(k->e);
    ENGINE_free(k->e);
  }
  k->pkey = NULL;
  k->e = NULL;
}

int kvp_engine_load_key(kvp_tool *t, const char *module, const char *token, const char *object,
                        const char *what, const char *pin, kvp_engine_key *k)
{
  char so[600], etoken[600], eobject[800];
  int rc = KVP_EXIT_ERROR, q;

  memset(k, 0, sizeof(*k));
  if (access(module, R_OK) != 0)
    return kvp_tool_fail(t, rc, "kvp11 module %s: %s (--module or KVP11_MODULE names it)", module,
                         strerror(errno));
  /* The module reads the configuration the tool uses. */
  if (t->cfg && setenv("KVP11_CONF", t->cfg->path, 1) != 0)
    return kvp_tool_fail(t, rc, "out of memory");
  pct_encode(token, etoken, sizeof(etoken));
  pct_encode(object, eobject, sizeof(eobject));
  snprintf(k->uri, sizeof(k->uri), "pkcs11:token=%s;object=%s;type=private", etoken, eobject);
  engine_so(so, sizeof(so));

  ERR_clear_error();
  q = kvp_engine_quiet_begin(t);
  /* An engine already loaded (e.g. by OPENSSL_CONF) is used as it is. */
  k->e = ENGINE_by_id("pkcs11");
  ERR_clear_error();
  if (k->e == NULL && so[0] && access(so, R_OK) == 0) {
    k->e = ENGINE_by_id("dynamic");
    if (k->e && (!ENGINE_ctrl_cmd_string(k->e, "SO_PATH", so, 0) ||
                 !ENGINE_ctrl_cmd_string(k->e, "ID", "pkcs11", 0) ||
                 !ENGINE_ctrl_cmd_string(k->e, "LIST_ADD", "1", 0) ||
                 !ENGINE_ctrl_cmd_string(k->e, "LOAD", NULL, 0))) {
      ENGINE_free(k->e);
      k->e = NULL;
    }
  }
  if (!k->e) {
    kvp_engine_quiet_end(q);
    return kvp_tool_fail(t, rc,
                         "cannot load the OpenSSL pkcs11 engine %s: %s (install "
                         "libengine-pkcs11-openssl)",
                         so[0] ? so : "pkcs11", kvp_engine_ossl_reason());
  }
  if (!ENGINE_ctrl_cmd_string(k->e, "MODULE_PATH", module, 0)) {
    kvp_engine_quiet_end(q);
    ENGINE_free(k->e);
    k->e = NULL;
    return kvp_tool_fail(t, rc, "pkcs11 engine: cannot set MODULE_PATH: %s",
                         kvp_engine_ossl_reason());
  }
  if (!t->verbose)
    ENGINE_ctrl_cmd_string(k->e, "QUIET", NULL, 1);
  if (!ENGINE_init(k->e)) {
    kvp_engine_quiet_end(q);
    ENGINE_free(k->e);
    k->e = NULL;
    return kvp_tool_fail(t, rc, "pkcs11 engine: cannot initialise %s: %s%s", module,
                         kvp_engine_ossl_reason(), kvp_tool_loghint(t));
  }
  if (pin && !ENGINE_ctrl_cmd_string(k->e, "PIN", pin, 0)) {
    kvp_engine_quiet_end(q);
    kvp_tool_fail(t, rc, "pkcs11 engine: cannot pass the PIN: %s", kvp_engine_ossl_reason());
    kvp_engine_key_free(k);
    return rc;
  }
  /* UI_null: never prompt for a PIN; without pin the module logs in with the
   * configured one (or the key needs none). */
  k->pkey = ENGINE_load_private_key(k->e, k->uri, (UI_METHOD *)UI_null(), NULL);
  /* Keep the engine out of OpenSSL's default tables: only the key loaded here
   * uses it. The module runs in this process, and keys that it (or the tool)
   * builds must stay ordinary provider keys. */
  ENGINE_unregister_RSA(k->e);
  ENGINE_unregister_EC(k->e);
  ENGINE_unregister_pkey_meths(k->e);
  kvp_engine_quiet_end(q);
  if (!k->pkey) {
    kvp_tool_fail(t, rc, "the key of %s is not available through %s (%s): %s%s", what, module,
                  k->uri, kvp_engine_ossl_reason(), kvp_tool_loghint(t));
    kvp_engine_key_free(k);
    return rc;
  }
  ERR_clear_error();
  return KVP_EXIT_OK;
}
