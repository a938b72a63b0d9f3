/*
 * kvp11 smime sign|verify|encrypt|decrypt|seal|open: S/MIME (RFC 8551, CMS)
 * messages with registered certificates.
 *
 * encrypt and verify are local OpenSSL CMS operations on registered
 * certificates. sign and decrypt run through libkvp11.so, loaded by the
 * OpenSSL pkcs11 engine (libp11): the private key stays in its key store and
 * never enters this process; the engine hands OpenSSL an EVP_PKEY whose
 * private operations are C_Sign / C_Decrypt calls into the module.
 *
 * Trust on verify is "registered", not a CA chain: the signer's certificate
 * must be, byte for byte (SHA-256 thumbprint), a certificate registered in
 * the account, within its validity at the signing time.
 *
 * Nothing reaches stdout unless the whole command succeeded: results are
 * built in memory BIOs (which OpenSSL wipes when freed) and written at the end.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/pem.h> /* before cms.h: declares PEM_read_bio_CMS */
#include <openssl/cms.h>
#include <openssl/crypto.h>
#include <openssl/engine.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <openssl/ui.h>
#include <openssl/x509.h>

#include "core/util.h"
#include "engine.h"
#include "tool.h"

#ifndef KVP11_MODULE_INSTALLED
#define KVP11_MODULE_INSTALLED "/usr/lib/x86_64-linux-gnu/pkcs11/libkvp11.so"
#endif

enum {
  S_CERT = 0,
  S_TO,
  S_FROM,
  S_DETACHED,
  S_DIGEST,
  S_CIPHER,
  S_OAEP,
  S_BINARY,
  S_ACCOUNT,
  S_INFORM,
  S_OUTFORM,
  S_CONTENT,
  S_MODULE,
  S_COUNT,
  S_BASE = 256,
};
#define SOPT(o) (1u << (o))
#define MAX_TO 16

static const struct option smime_longopts[] = {
    {"cert", required_argument, NULL, S_BASE + S_CERT},
    {"to", required_argument, NULL, S_BASE + S_TO},
    {"from", required_argument, NULL, S_BASE + S_FROM},
    {"detached", no_argument, NULL, S_BASE + S_DETACHED},
    {"digest", required_argument, NULL, S_BASE + S_DIGEST},
    {"cipher", required_argument, NULL, S_BASE + S_CIPHER},
    {"oaep", no_argument, NULL, S_BASE + S_OAEP},
    {"binary", no_argument, NULL, S_BASE + S_BINARY},
    {"account", required_argument, NULL, S_BASE + S_ACCOUNT},
    {"inform", required_argument, NULL, S_BASE + S_INFORM},
    {"outform", required_argument, NULL, S_BASE + S_OUTFORM},
    {"content", required_argument, NULL, S_BASE + S_CONTENT},
    {"module", required_argument, NULL, S_BASE + S_MODULE},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

typedef struct smime_args {
  const char *v[S_COUNT]; /* option values; flags are "" when given */
  const char *to[MAX_TO]; /* every --to */
  size_t n_to;
  const char *account; /* resolved account */
  const EVP_MD *md;
  const EVP_CIPHER *cipher;
  int inform, outform; /* F_* */
} smime_args;

enum { F_AUTO = 0, F_SMIME, F_PEM, F_DER };

typedef struct smime_cmd {
  const char *cmd;
  unsigned allowed;
  int (*run)(kvp_tool *t, smime_args *a);
  const char *synopsis;
} smime_cmd;

static int smime_sign(kvp_tool *t, smime_args *a);
static int smime_verify(kvp_tool *t, smime_args *a);
static int smime_encrypt(kvp_tool *t, smime_args *a);
static int smime_decrypt(kvp_tool *t, smime_args *a);
static int smime_seal(kvp_tool *t, smime_args *a);
static int smime_open(kvp_tool *t, smime_args *a);

#define SIGN_OPTS (SOPT(S_DETACHED) | SOPT(S_DIGEST) | SOPT(S_BINARY))
#define ENC_OPTS (SOPT(S_CIPHER) | SOPT(S_OAEP) | SOPT(S_BINARY))

static const smime_cmd smime_cmds[] = {
    {"smime sign", SOPT(S_CERT) | SIGN_OPTS | SOPT(S_ACCOUNT) | SOPT(S_OUTFORM) | SOPT(S_MODULE),
     smime_sign,
     "smime sign --cert NAME [--detached] [--digest sha256|sha384|sha512]\n"
     "[--binary] [--outform smime|pem|der] [--account A]\n"
     "[--module SO] < message > signed"},
    {"smime verify",
     SOPT(S_CERT) | SOPT(S_ACCOUNT) | SOPT(S_INFORM) | SOPT(S_CONTENT) | SOPT(S_BINARY),
     smime_verify,
     "smime verify [--cert PARTNER] [--inform smime|pem|der]\n"
     "[--content FILE] [--binary] [--account A] < signed > message"},
    {"smime encrypt", SOPT(S_TO) | ENC_OPTS | SOPT(S_ACCOUNT) | SOPT(S_OUTFORM), smime_encrypt,
     "smime encrypt --to PARTNER [--to PARTNER2 ...]\n"
     "[--cipher aes-256-cbc|aes-256-gcm] [--oaep] [--binary]\n"
     "[--outform smime|pem|der] [--account A] < message > enveloped"},
    {"smime decrypt", SOPT(S_CERT) | SOPT(S_ACCOUNT) | SOPT(S_INFORM) | SOPT(S_MODULE),
     smime_decrypt,
     "smime decrypt --cert NAME [--inform smime|pem|der] [--account A]\n"
     "[--module SO] < enveloped > message"},
    {"smime seal",
     SOPT(S_CERT) | SOPT(S_TO) | SIGN_OPTS | ENC_OPTS | SOPT(S_ACCOUNT) | SOPT(S_OUTFORM) |
         SOPT(S_MODULE),
     smime_seal,
     "smime seal --cert NAME --to PARTNER [--to PARTNER2 ...] [--detached]\n"
     "[--digest D] [--cipher C] [--oaep] [--binary] [--outform F]\n"
     "[--account A] [--module SO] < message > enveloped"},
    {"smime open",
     SOPT(S_CERT) | SOPT(S_FROM) | SOPT(S_ACCOUNT) | SOPT(S_INFORM) | SOPT(S_MODULE) |
         SOPT(S_BINARY),
     smime_open,
     "smime open --cert NAME [--from PARTNER] [--inform smime|pem|der]\n"
     "[--binary] [--account A] [--module SO] < enveloped > message"},
};

/* ------------------------------------------------------------------ usage */

static void synopsis(FILE *f, const char *prefix, const smime_cmd *c)
{
  kvp_tool_synopsis(f, prefix, c->cmd, c->synopsis);
}

void kvp_tool_smime_usage(FILE *f)
{
  for (size_t i = 0; i < KVP_ARRAY_SIZE(smime_cmds); i++)
    synopsis(f, "  kvp11 [-c FILE] ", &smime_cmds[i]);
}

static void smime_cmd_usage(FILE *f, const smime_cmd *c)
{
  synopsis(f, "usage: kvp11 [-c FILE] ", c);
  fprintf(f,
          "\n"
          "  --cert NAME      a registered certificate of the account; for sign, decrypt,\n"
          "                   seal and open a private one (its key is used through\n"
          "                   libkvp11.so); for verify the only accepted signer\n"
          "  --to PARTNER     a registered recipient certificate (repeatable)\n"
          "  --from PARTNER   open: the only accepted signer\n"
          "  --detached       multipart/signed (content in clear beside the signature)\n"
          "  --digest D       sha256 (default), sha384, sha512\n"
          "  --cipher C       aes-256-cbc (default), aes-256-gcm (AuthEnvelopedData)\n"
          "  --oaep           RSA-OAEP key transport (default: RSA PKCS#1 v1.5)\n"
          "  --binary         sign/encrypt the input bytes as they are (default: text,\n"
          "                   line ends made CRLF as S/MIME requires); verify/open: the\n"
          "                   detached content was signed as binary\n"
          "  --inform F       input form: smime, pem or der (default: detected)\n"
          "  --outform F      output form: smime (default), pem or der\n"
          "  --content FILE   verify: the content of a detached pem/der signature\n"
          "  --module SO      libkvp11.so (default: $KVP11_MODULE, else %s)\n"
          "  --account A      default: the first configured account\n"
          "\n"
          "Signers are trusted when their certificate is registered in the account\n"
          "(verify, open) and valid at the signing time.\n",
          KVP11_MODULE_INSTALLED);
}

/* ------------------------------------------------------------- helpers */

/* The reason of the most recent OpenSSL error, or "unknown error"; clears the queue. */
/* shared with engine.c */
#define ossl_reason kvp_engine_ossl_reason
#define quiet_begin kvp_engine_quiet_begin
#define quiet_end kvp_engine_quiet_end

static int nomem(const kvp_tool *t)
{
  return kvp_tool_fail(t, KVP_EXIT_ERROR, "out of memory");
}

/* Read all of stdin. */
static int read_stdin(const kvp_tool *t, unsigned char **out, size_t *len)
{
  size_t cap = 0, n = 0;
  unsigned char *buf = NULL;
  for (;;) {
    if (cap - n < 65536) {
      size_t ncap = cap ? cap * 2 : 65536;
      if (ncap < cap) {
        kvp_wipe(buf, n);
        free(buf);
        return kvp_tool_fail(t, KVP_EXIT_ERROR, "stdin: input too large");
      }
      unsigned char *nb = malloc(ncap);
      if (!nb) {
        kvp_wipe(buf, n);
        free(buf);
        return nomem(t);
      }
      if (n)
        memcpy(nb, buf, n);
      kvp_wipe(buf, n);
      free(buf);
      buf = nb;
      cap = ncap;
    }
    size_t r = fread(buf + n, 1, cap - n, stdin);
    n += r;
    if (r == 0) {
      if (ferror(stdin)) {
        int e = errno;
        kvp_wipe(buf, n);
        free(buf);
        return kvp_tool_fail(t, KVP_EXIT_ERROR, "cannot read stdin: %s", strerror(e));
      }
      break;
    }
  }
  *out = buf;
  *len = n;
  return KVP_EXIT_OK;
}

static void free_input(unsigned char *buf, size_t len)
{
  if (buf) {
    kvp_wipe(buf, len);
    free(buf);
  }
}

/* Write the contents of a memory BIO to stdout. */
static int emit(const kvp_tool *t, BIO *mem)
{
  char *data = NULL;
  long n = BIO_get_mem_data(mem, &data);
  if (n > 0 && fwrite(data, 1, (size_t)n, stdout) != (size_t)n)
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "cannot write stdout: %s", strerror(errno));
  if (fflush(stdout) != 0)
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "cannot write stdout: %s", strerror(errno));
  return KVP_EXIT_OK;
}

static void subject_of(X509 *x, char *out, size_t len)
{
  BIO *b = BIO_new(BIO_s_mem());
  char *d = NULL;
  long n;
  snprintf(out, len, "?");
  if (!b)
    return;
  if (X509_NAME_print_ex(b, X509_get_subject_name(x), 0, XN_FLAG_RFC2253) >= 0 &&
      (n = BIO_get_mem_data(b, &d)) > 0)
    snprintf(out, len, "%.*s", (int)n, d);
  BIO_free(b);
}

static int sha256_hex(X509 *x, char out[65])
{
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  if (!X509_digest(x, EVP_sha256(), md, &n) || n != 32)
    return -1;
  kvp_hex(md, 32, out);
  return 0;
}

static X509 *rec_x509(const kvp_cert_rec *rec)
{
  const unsigned char *p = rec->der;
  return d2i_X509(NULL, &p, (long)rec->der_len);
}

/* Configuration, account, registry. */
static int setup(kvp_tool *t, smime_args *a)
{
  if (kvp_tool_load_config(t) != KVP_EXIT_OK ||
      kvp_tool_account(t, a->v[S_ACCOUNT], &a->account) != KVP_EXIT_OK ||
      kvp_tool_open_registry(t) != KVP_EXIT_OK)
    return KVP_EXIT_ERROR;
  return KVP_EXIT_OK;
}

/* One registered certificate; need_private: it must have a key. */
static int get_rec(kvp_tool *t, const smime_args *a, const char *name, int need_private,
                   kvp_cert_rec *rec, X509 **x)
{
  char err[KVP_ERRLEN] = "";
  int r = kvp_registry_get(t->reg, a->account, name, rec, err, sizeof(err));
  if (r == KVP_ENOTFOUND)
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "account '%s' has no certificate named '%s'",
                         a->account, name);
  if (r != KVP_OK)
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "%s", err);
  if (need_private && rec->type != KVP_CERT_PRIVATE)
    return kvp_tool_fail(t, KVP_EXIT_ERROR,
                         "certificate '%s' is a public certificate: it has no key to %s with", name,
                         strstr(t->cmd, "sign") || strstr(t->cmd, "seal") ? "sign" : "decrypt");
  if (rec->der_len == 0)
    return kvp_tool_fail(t, KVP_EXIT_ERROR,
                         "'%s' is a key without a certificate yet: request one with kvp11 csr "
                         "--cert-name %s, then register it with kvp11 cert add --name %s",
                         name, name, name);
  if (!(*x = rec_x509(rec)))
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "certificate '%s': the registered DER does not parse",
                         name);
  return KVP_EXIT_OK;
}

/* The certificate must be valid at 'at'; what names it in the message. */
static int check_valid(kvp_tool *t, const kvp_cert_rec *rec, int64_t at, const char *when)
{
  char nb[32], na[32], w[32];
  if (at >= rec->not_before && at <= rec->not_after)
    return KVP_EXIT_OK;
  kvp_tool_isotime(rec->not_before, nb);
  kvp_tool_isotime(rec->not_after, na);
  kvp_tool_isotime(at, w);
  if (at > rec->not_after)
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "certificate '%s' expired on %s (%s %s)", rec->name, na,
                         when, w);
  return kvp_tool_fail(t, KVP_EXIT_ERROR, "certificate '%s' is not valid before %s (%s %s)",
                       rec->name, nb, when, w);
}

/* ------------------------------------------------- the key through the module */

typedef kvp_engine_key p11key;
#define p11key_free kvp_engine_key_free

/* The private key of rec (a private certificate), as an engine key. */
static int load_key(kvp_tool *t, const smime_args *a, const kvp_cert_rec *rec, X509 *x, p11key *k)
{
  const char *module = kvp_engine_module(a->v[S_MODULE]);
  const kvp_account_conf *ac = kvp_config_find_account(t->cfg, a->account);
  const char *label = ac && ac->label ? ac->label : a->account;
  char what[400];
  int rc;

  snprintf(what, sizeof(what), "certificate '%s'", rec->name);
  rc = kvp_engine_load_key(t, module, label, rec->name, what, NULL, k);
  if (rc != KVP_EXIT_OK)
    return rc;
  if (X509_check_private_key(x, k->pkey) != 1)
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "the key %s is not the key of certificate '%s'",
                         k->uri, rec->name);
  ERR_clear_error();
  return KVP_EXIT_OK;
}

/* ------------------------------------------------------ reading and writing */

typedef struct cms_in {
  BIO *in;    /* over the input buffer */
  BIO *bcont; /* detached content of a multipart/signed message */
  CMS_ContentInfo *cms;
} cms_in;

static void cms_in_free(cms_in *c)
{
  CMS_ContentInfo_free(c->cms);
  BIO_free(c->bcont);
  BIO_free(c->in);
  memset(c, 0, sizeof(*c));
}

static const char *form_name(int f)
{
  return f == F_PEM ? "a PEM CMS message" : f == F_DER ? "a DER CMS message" : "an S/MIME message";
}

/* Parse a CMS message from buf; what names the input in messages. binary:
 * keep the detached content of a multipart/signed message byte for byte
 * (the signer used -binary), instead of canonicalising it to CRLF. */
/*
 * multipart/signed with --binary: the CRLF before a boundary belongs to the
 * boundary (RFC 2046), but OpenSSL 3.0's reader keeps its CR in the content
 * when the message has CRLF line ends (the usual form on the wire, e.g. AS2),
 * so a correct signature fails to verify. Drop that one CR. max: an upper
 * bound of the content length. 0, or -1 when out of memory.
 */
static int crlf_content_fix(cms_in *c, size_t max)
{
  unsigned char *buf = malloc(max + 1);
  size_t n = 0;
  int r, rc = -1;
  BIO *fixed = NULL;

  if (buf == NULL)
    return -1;
  while (n <= max && (r = BIO_read(c->bcont, buf + n, (int)(max + 1 - n))) > 0)
    n += (size_t)r;
  if (n > 0 && buf[n - 1] == '\r')
    n--;
  if ((fixed = BIO_new(BIO_s_mem())) != NULL && (n == 0 || BIO_write(fixed, buf, (int)n) == (int)n)) {
    BIO_free(c->bcont);
    c->bcont = fixed;
    fixed = NULL;
    rc = 0;
  }
  BIO_free(fixed);
  free(buf);
  return rc;
}

/* The message has CRLF line ends before a "--" (boundary) line. */
static int has_crlf_boundary(const unsigned char *buf, size_t len)
{
  for (size_t i = 0; i + 4 <= len; i++)
    if (buf[i] == '\r' && buf[i + 1] == '\n' && buf[i + 2] == '-' && buf[i + 3] == '-')
      return 1;
  return 0;
}

static int read_cms(kvp_tool *t, int form, int binary, const unsigned char *buf, size_t len,
                    const char *what, cms_in *c)
{
  if (len == 0)
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "%s is empty", what);
  if (len > INT32_MAX)
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "%s is too large", what);
  if (form == F_AUTO) {
    size_t i = 0;
    while (i < len && (buf[i] == ' ' || buf[i] == '\t' || buf[i] == '\r' || buf[i] == '\n'))
      i++;
    if (len - i >= 10 && memcmp(buf + i, "-----BEGIN", 10) == 0)
      form = F_PEM;
    else if (buf[0] == 0x30)
      form = F_DER;
    else
      form = F_SMIME;
  }
  ERR_clear_error();
  if (!(c->in = BIO_new_mem_buf(buf, (int)len)))
    return nomem(t);
  if (form == F_SMIME)
    c->cms = SMIME_read_CMS_ex(c->in, binary ? CMS_BINARY : 0, &c->bcont, NULL);
  else if (form == F_PEM)
    c->cms = PEM_read_bio_CMS(c->in, NULL, NULL, NULL);
  else
    c->cms = d2i_CMS_bio(c->in, NULL);
  if (!c->cms)
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "%s is not %s: %s", what, form_name(form),
                         ossl_reason());
  if (binary && c->bcont && has_crlf_boundary(buf, len) && crlf_content_fix(c, len) != 0)
    return nomem(t);
  return KVP_EXIT_OK;
}

/* Write cms in the output form; data: the content, for multipart/signed. */
static int write_cms(kvp_tool *t, int form, CMS_ContentInfo *cms, BIO *data, int flags, BIO *out)
{
  int ok;
  ERR_clear_error();
  if (form == F_PEM)
    ok = PEM_write_bio_CMS(out, cms);
  else if (form == F_DER)
    ok = i2d_CMS_bio(out, cms);
  else
    ok = SMIME_write_CMS(out, cms, data, flags);
  if (!ok)
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "cannot write the message: %s", ossl_reason());
  return KVP_EXIT_OK;
}

/* ---------------------------------------------------------------- sign */

/* Sign in (bytes) with rec's key; the message in form goes to out. */
static int do_sign(kvp_tool *t, const smime_args *a, const kvp_cert_rec *rec, X509 *x,
                   const unsigned char *buf, size_t len, int form, int extra_flags, BIO *out)
{
  p11key k = {0};
  CMS_ContentInfo *cms = NULL;
  BIO *in = NULL;
  int flags = CMS_PARTIAL | extra_flags | (a->v[S_BINARY] ? CMS_BINARY : 0) |
              (a->v[S_DETACHED] ? CMS_DETACHED : 0);
  int rc = check_valid(t, rec, (int64_t)time(NULL), "now");
  if (rc != KVP_EXIT_OK)
    return rc;
  if ((rc = load_key(t, a, rec, x, &k)) != KVP_EXIT_OK)
    goto out;
  rc = KVP_EXIT_ERROR;
  if (len > INT32_MAX) {
    kvp_tool_fail(t, rc, "stdin is too large");
    goto out;
  }
  if (!(in = BIO_new_mem_buf(buf, (int)len))) {
    nomem(t);
    goto out;
  }
  ERR_clear_error();
  int q = quiet_begin(t);
  int ok = (cms = CMS_sign(NULL, NULL, NULL, NULL, flags)) != NULL &&
           CMS_add1_signer(cms, x, k.pkey, a->md, flags) != NULL &&
           CMS_final(cms, in, NULL, flags & ~CMS_PARTIAL);
  quiet_end(q);
  if (!ok) {
    kvp_tool_fail(t, rc, "cannot sign with the key of certificate '%s': %s%s", rec->name,
                  ossl_reason(), kvp_tool_loghint(t));
    goto out;
  }
  BIO_free(in); /* a fresh reader over the content for multipart/signed */
  if (!(in = BIO_new_mem_buf(buf, (int)len))) {
    nomem(t);
    goto out;
  }
  /* CMS_REUSE_DIGEST: the signature is final; a detached S/MIME writer would
   * otherwise digest and sign the content a second time. */
  rc = write_cms(t, form, cms, in, (flags & ~CMS_PARTIAL) | CMS_REUSE_DIGEST, out);
out:
  BIO_free(in);
  CMS_ContentInfo_free(cms);
  p11key_free(&k);
  return rc;
}

static int smime_sign(kvp_tool *t, smime_args *a)
{
  kvp_cert_rec rec = {0};
  X509 *x = NULL;
  unsigned char *buf = NULL;
  size_t len = 0;
  BIO *out = NULL;
  int rc;

  if ((rc = setup(t, a)) || (rc = get_rec(t, a, a->v[S_CERT], 1, &rec, &x)) ||
      (rc = read_stdin(t, &buf, &len)))
    goto out;
  if (!(out = BIO_new(BIO_s_mem()))) {
    rc = nomem(t);
    goto out;
  }
  if ((rc = do_sign(t, a, &rec, x, buf, len, a->outform, 0, out)) == KVP_EXIT_OK)
    rc = emit(t, out);
out:
  BIO_free(out);
  free_input(buf, len);
  X509_free(x);
  kvp_cert_rec_clear(&rec);
  return rc;
}

/* -------------------------------------------------------------- verify */

/* The signing time of si, or -1 when it has none. */
static int64_t signing_time(CMS_SignerInfo *si)
{
  int idx = CMS_signed_get_attr_by_NID(si, NID_pkcs9_signingTime, -1);
  if (idx < 0)
    return -1;
  X509_ATTRIBUTE *attr = CMS_signed_get_attr(si, idx);
  ASN1_TYPE *at = attr ? X509_ATTRIBUTE_get0_type(attr, 0) : NULL;
  const ASN1_TIME *tm = NULL;
  if (at && at->type == V_ASN1_UTCTIME)
    tm = at->value.utctime;
  else if (at && at->type == V_ASN1_GENERALIZEDTIME)
    tm = at->value.generalizedtime;
  if (!tm)
    return -1;
  ASN1_TIME *epoch = ASN1_TIME_set(NULL, 0);
  int days = 0, secs = 0;
  int ok = epoch && ASN1_TIME_diff(&days, &secs, epoch, tm);
  ASN1_TIME_free(epoch);
  return ok ? (int64_t)days * 86400 + secs : -1;
}

/*
 * Verify the signed message c: every signer must be a registered certificate
 * of the account (only != NULL: that one), valid at the signing time (else
 * now), and every signature must verify. The content goes to out.
 */
static int verify_cms(kvp_tool *t, const smime_args *a, const char *only, cms_in *c, BIO *content,
                      BIO *out)
{
  char err[KVP_ERRLEN] = "";
  kvp_cert_rec *recs = NULL, one = {0};
  size_t n = 0;
  STACK_OF(X509) *certs = NULL;
  int rc = KVP_EXIT_ERROR;
  BIO *dcont = content ? content : c->bcont;

  int nid = OBJ_obj2nid(CMS_get0_type(c->cms));
  if (nid != NID_pkcs7_signed) {
    kvp_tool_fail(t, rc, "the message is not signed (CMS content type %s)",
                  nid != NID_undef ? OBJ_nid2sn(nid) : "unknown");
    goto out;
  }
  if (only) {
    X509 *x = NULL;
    if ((rc = get_rec(t, a, only, 0, &one, &x)) != KVP_EXIT_OK)
      goto out;
    X509_free(x);
    rc = KVP_EXIT_ERROR;
    recs = &one;
    n = 1;
  } else if (kvp_registry_list(t->reg, a->account, &recs, &n, err, sizeof(err)) != KVP_OK) {
    kvp_tool_fail(t, rc, "%s", err);
    goto out;
  }
  if (!(certs = sk_X509_new_null())) {
    nomem(t);
    goto out;
  }
  for (size_t i = 0; i < n; i++) {
    X509 *x = rec_x509(&recs[i]);
    if (x && !sk_X509_push(certs, x)) {
      X509_free(x);
      nomem(t);
      goto out;
    }
  }
  if (CMS_is_detached(c->cms) && !dcont) {
    kvp_tool_fail(t, rc,
                  "the signature is detached and its content is missing (give the whole "
                  "multipart/signed message, or --content FILE)");
    goto out;
  }
  STACK_OF(CMS_SignerInfo) *sis = CMS_get0_SignerInfos(c->cms);
  if (!sis || sk_CMS_SignerInfo_num(sis) <= 0) {
    kvp_tool_fail(t, rc, "the message has no signature");
    goto out;
  }
  /* Registered certificates first, then those the message carries. */
  ERR_clear_error();
  if (CMS_set1_signers_certs(c->cms, certs, 0) < 0) {
    kvp_tool_fail(t, rc, "cannot read the signers: %s", ossl_reason());
    goto out;
  }
  for (int i = 0; i < sk_CMS_SignerInfo_num(sis); i++) {
    CMS_SignerInfo *si = sk_CMS_SignerInfo_value(sis, i);
    X509 *signer = NULL;
    char sub[256], fp[65];
    const kvp_cert_rec *match = NULL;
    CMS_SignerInfo_get0_algs(si, NULL, &signer, NULL, NULL);
    if (!signer) {
      ASN1_INTEGER *sno = NULL;
      X509_NAME *iss = NULL;
      ASN1_OCTET_STRING *kid = NULL;
      char who[300] = "";
      if (CMS_SignerInfo_get0_signer_id(si, &kid, &iss, &sno) && iss) {
        char *in = X509_NAME_oneline(iss, NULL, 0);
        snprintf(who, sizeof(who), " (issuer %s)", in ? in : "?");
        OPENSSL_free(in);
      }
      if (only)
        kvp_tool_fail(t, rc,
                      "unknown signer%s: the message does not carry its certificate and it "
                      "is not certificate '%s'",
                      who, only);
      else
        kvp_tool_fail(t, rc,
                      "unknown signer%s: the message does not carry its certificate and no "
                      "registered certificate of account '%s' matches",
                      who, a->account);
      goto out;
    }
    if (sha256_hex(signer, fp) != 0) {
      kvp_tool_fail(t, rc, "cannot hash the signer's certificate: %s", ossl_reason());
      goto out;
    }
    for (size_t j = 0; j < n && !match; j++)
      if (strcmp(recs[j].sha256, fp) == 0)
        match = &recs[j];
    if (!match) {
      subject_of(signer, sub, sizeof(sub));
      if (only)
        kvp_tool_fail(t, rc, "unknown signer %s (sha256 %s): not certificate '%s'", sub, fp, only);
      else
        kvp_tool_fail(t, rc,
                      "unknown signer %s (sha256 %s): not a registered certificate of account '%s'",
                      sub, fp, a->account);
      goto out;
    }
    int64_t st = signing_time(si);
    if ((rc = check_valid(t, match, st >= 0 ? st : (int64_t)time(NULL),
                          st >= 0 ? "the message was signed at" : "now")) != KVP_EXIT_OK)
      goto out;
    rc = KVP_EXIT_ERROR;
  }
  ERR_clear_error();
  if (!CMS_verify(c->cms, NULL, NULL, dcont, out,
                  CMS_NO_SIGNER_CERT_VERIFY | (a->v[S_BINARY] ? CMS_BINARY : 0))) {
    kvp_tool_fail(t, rc,
                  "the signature does not verify (the message was changed, or not signed "
                  "with this certificate's key): %s",
                  ossl_reason());
    goto out;
  }
  rc = KVP_EXIT_OK;
out:
  sk_X509_pop_free(certs, X509_free);
  if (recs != &one)
    kvp_cert_rec_free_array(recs, n);
  kvp_cert_rec_clear(&one);
  return rc;
}

static int smime_verify(kvp_tool *t, smime_args *a)
{
  unsigned char *buf = NULL;
  size_t len = 0;
  cms_in c = {0};
  BIO *out = NULL, *content = NULL;
  int rc;

  if ((rc = setup(t, a)))
    goto out;
  if (a->v[S_CONTENT] && !(content = BIO_new_file(a->v[S_CONTENT], "rb"))) {
    rc = kvp_tool_fail(t, KVP_EXIT_ERROR, "cannot open %s: %s", a->v[S_CONTENT], strerror(errno));
    goto out;
  }
  if ((rc = read_stdin(t, &buf, &len)) || (rc = read_cms(t, a->inform, a->v[S_BINARY] != NULL, buf, len, "stdin", &c)))
    goto out;
  if (content && c.bcont) {
    rc = kvp_tool_fail(t, KVP_EXIT_ERROR,
                       "--content: the message is multipart/signed, its content is inside");
    goto out;
  }
  if (!(out = BIO_new(BIO_s_mem()))) {
    rc = nomem(t);
    goto out;
  }
  if ((rc = verify_cms(t, a, a->v[S_CERT], &c, content, out)) == KVP_EXIT_OK)
    rc = emit(t, out);
out:
  BIO_free(out);
  BIO_free(content);
  cms_in_free(&c);
  free_input(buf, len);
  return rc;
}

/* ------------------------------------------------------------- encrypt */

static int do_encrypt(kvp_tool *t, const smime_args *a, const unsigned char *buf, size_t len,
                      int flags, BIO *out)
{
  kvp_cert_rec rec = {0};
  X509 *x = NULL;
  CMS_ContentInfo *cms = NULL;
  BIO *in = NULL;
  int rc = KVP_EXIT_ERROR;

  flags |= a->v[S_BINARY] ? CMS_BINARY : 0;
  if (len > INT32_MAX) {
    kvp_tool_fail(t, rc, "stdin is too large");
    goto out;
  }
  ERR_clear_error();
  if (!(cms = CMS_encrypt(NULL, NULL, a->cipher, flags | CMS_PARTIAL))) {
    kvp_tool_fail(t, rc, "cannot create the enveloped message: %s", ossl_reason());
    goto out;
  }
  for (size_t i = 0; i < a->n_to; i++) {
    kvp_cert_rec_clear(&rec);
    memset(&rec, 0, sizeof(rec));
    X509_free(x);
    x = NULL;
    if ((rc = get_rec(t, a, a->to[i], 0, &rec, &x)) != KVP_EXIT_OK ||
        (rc = check_valid(t, &rec, (int64_t)time(NULL), "now")) != KVP_EXIT_OK)
      goto out;
    rc = KVP_EXIT_ERROR;
    int kt = EVP_PKEY_get_base_id(X509_get0_pubkey(x));
    if (kt != EVP_PKEY_RSA && kt != EVP_PKEY_EC) {
      kvp_tool_fail(t, rc, "certificate '%s': RSA or EC recipients only", a->to[i]);
      goto out;
    }
    if (a->v[S_OAEP] && kt != EVP_PKEY_RSA) {
      kvp_tool_fail(t, rc, "--oaep: certificate '%s' has no RSA key", a->to[i]);
      goto out;
    }
    CMS_RecipientInfo *ri =
        CMS_add1_recipient_cert(cms, x, flags | (a->v[S_OAEP] ? CMS_KEY_PARAM : 0));
    if (!ri) {
      kvp_tool_fail(t, rc, "cannot add recipient '%s': %s", a->to[i], ossl_reason());
      goto out;
    }
    if (a->v[S_OAEP]) {
      EVP_PKEY_CTX *pctx = CMS_RecipientInfo_get0_pkey_ctx(ri);
      if (!pctx || EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_OAEP_PADDING) <= 0) {
        kvp_tool_fail(t, rc, "cannot set RSA-OAEP for '%s': %s", a->to[i], ossl_reason());
        goto out;
      }
    }
  }
  if (!(in = BIO_new_mem_buf(buf, (int)len))) {
    nomem(t);
    goto out;
  }
  if (!CMS_final(cms, in, NULL, flags)) {
    kvp_tool_fail(t, rc, "cannot encrypt: %s", ossl_reason());
    goto out;
  }
  rc = write_cms(t, a->outform, cms, NULL, flags, out);
out:
  BIO_free(in);
  CMS_ContentInfo_free(cms);
  X509_free(x);
  kvp_cert_rec_clear(&rec);
  return rc;
}

static int smime_encrypt(kvp_tool *t, smime_args *a)
{
  unsigned char *buf = NULL;
  size_t len = 0;
  BIO *out = NULL;
  int rc;

  if ((rc = setup(t, a)) || (rc = read_stdin(t, &buf, &len)))
    goto out;
  if (!(out = BIO_new(BIO_s_mem()))) {
    rc = nomem(t);
    goto out;
  }
  if ((rc = do_encrypt(t, a, buf, len, 0, out)) == KVP_EXIT_OK)
    rc = emit(t, out);
out:
  BIO_free(out);
  free_input(buf, len);
  return rc;
}

/* ------------------------------------------------------------- decrypt */

/* Decrypt c with the key of certificate name; the content goes to out. */
static int decrypt_cms(kvp_tool *t, const smime_args *a, const char *name, cms_in *c, BIO *out)
{
  kvp_cert_rec rec = {0};
  X509 *x = NULL;
  p11key k = {0};
  int rc;

  int nid = OBJ_obj2nid(CMS_get0_type(c->cms));
  if (nid != NID_pkcs7_enveloped && nid != NID_id_smime_ct_authEnvelopedData) {
    rc = kvp_tool_fail(t, KVP_EXIT_ERROR, "the message is not encrypted (CMS content type %s)",
                       nid != NID_undef ? OBJ_nid2sn(nid) : "unknown");
    goto out;
  }
  if ((rc = get_rec(t, a, name, 1, &rec, &x)) != KVP_EXIT_OK)
    goto out;
  rc = KVP_EXIT_ERROR;
  STACK_OF(CMS_RecipientInfo) *ris = CMS_get0_RecipientInfos(c->cms);
  int match = 0, agree = 0, nri = ris ? sk_CMS_RecipientInfo_num(ris) : 0;
  for (int i = 0; i < nri && !match; i++) {
    CMS_RecipientInfo *ri = sk_CMS_RecipientInfo_value(ris, i);
    int type = CMS_RecipientInfo_type(ri);
    if (type == CMS_RECIPINFO_TRANS) {
      match = CMS_RecipientInfo_ktri_cert_cmp(ri, x) == 0;
    } else if (type == CMS_RECIPINFO_AGREE) {
      STACK_OF(CMS_RecipientEncryptedKey) *reks = CMS_RecipientInfo_kari_get0_reks(ri);
      for (int j = 0; reks && j < sk_CMS_RecipientEncryptedKey_num(reks) && !match; j++)
        match = agree =
            CMS_RecipientEncryptedKey_cert_cmp(sk_CMS_RecipientEncryptedKey_value(reks, j), x) == 0;
    }
  }
  if (!match) {
    kvp_tool_fail(t, rc, "this message is not for certificate '%s' (none of its %d recipients)",
                  name, nri);
    goto out;
  }
  if (agree) {
    /* The module decrypts with RSA keys only (CKM_RSA_PKCS, CKM_RSA_PKCS_OAEP). */
    kvp_tool_fail(t, rc,
                  "the message is for certificate '%s' by EC key agreement (ECDH), which "
                  "libkvp11.so does not do: decryption needs an RSA certificate",
                  name);
    goto out;
  }
  if ((rc = load_key(t, a, &rec, x, &k)) != KVP_EXIT_OK)
    goto out;
  rc = KVP_EXIT_ERROR;
  ERR_clear_error();
  int q = quiet_begin(t);
  int ok = CMS_decrypt(c->cms, k.pkey, x, NULL, out, 0);
  quiet_end(q);
  if (!ok) {
    const char *why = ossl_reason();
    if (!strcmp(why, "unknown error")) /* AES-GCM: the tag did not match */
      why = "the content does not decrypt or authenticate";
    kvp_tool_fail(t, rc,
                  "cannot decrypt with the key of certificate '%s' (damaged or changed "
                  "message, or a key the module cannot use): %s%s",
                  name, why, kvp_tool_loghint(t));
    goto out;
  }
  rc = KVP_EXIT_OK;
out:
  p11key_free(&k);
  X509_free(x);
  kvp_cert_rec_clear(&rec);
  return rc;
}

static int smime_decrypt(kvp_tool *t, smime_args *a)
{
  unsigned char *buf = NULL;
  size_t len = 0;
  cms_in c = {0};
  BIO *out = NULL;
  int rc;

  if ((rc = setup(t, a)) || (rc = read_stdin(t, &buf, &len)) ||
      (rc = read_cms(t, a->inform, a->v[S_BINARY] != NULL, buf, len, "stdin", &c)))
    goto out;
  if (!(out = BIO_new(BIO_s_mem()))) {
    rc = nomem(t);
    goto out;
  }
  if ((rc = decrypt_cms(t, a, a->v[S_CERT], &c, out)) == KVP_EXIT_OK)
    rc = emit(t, out);
out:
  BIO_free(out);
  cms_in_free(&c);
  free_input(buf, len);
  return rc;
}

/* ---------------------------------------------------------- seal, open */

static int smime_seal(kvp_tool *t, smime_args *a)
{
  kvp_cert_rec rec = {0};
  X509 *x = NULL;
  unsigned char *buf = NULL;
  size_t len = 0;
  BIO *signed_bio = NULL, *out = NULL;
  int rc;

  if ((rc = setup(t, a)) || (rc = get_rec(t, a, a->v[S_CERT], 1, &rec, &x)) ||
      (rc = read_stdin(t, &buf, &len)))
    goto out;
  if (!(signed_bio = BIO_new(BIO_s_mem())) || !(out = BIO_new(BIO_s_mem()))) {
    rc = nomem(t);
    goto out;
  }
  /* The signed S/MIME entity, CRLF line ends, is the content of the envelope. */
  if ((rc = do_sign(t, a, &rec, x, buf, len, F_SMIME, CMS_CRLFEOL, signed_bio)) != KVP_EXIT_OK)
    goto out;
  char *sdata = NULL;
  long slen = BIO_get_mem_data(signed_bio, &sdata);
  if (slen <= 0) {
    rc = kvp_tool_fail(t, KVP_EXIT_ERROR, "signing produced no output");
    goto out;
  }
  smime_args ea = *a;
  ea.v[S_BINARY] = ""; /* the entity is canonical already */
  if ((rc = do_encrypt(t, &ea, (const unsigned char *)sdata, (size_t)slen, 0, out)) == KVP_EXIT_OK)
    rc = emit(t, out);
out:
  BIO_free(signed_bio);
  BIO_free(out);
  free_input(buf, len);
  X509_free(x);
  kvp_cert_rec_clear(&rec);
  return rc;
}

static int smime_open(kvp_tool *t, smime_args *a)
{
  unsigned char *buf = NULL;
  size_t len = 0;
  cms_in c = {0}, inner = {0};
  BIO *plain = NULL, *out = NULL;
  int rc;

  if ((rc = setup(t, a)) || (rc = read_stdin(t, &buf, &len)) ||
      (rc = read_cms(t, a->inform, a->v[S_BINARY] != NULL, buf, len, "stdin", &c)))
    goto out;
  if (!(plain = BIO_new(BIO_s_mem())) || !(out = BIO_new(BIO_s_mem()))) {
    rc = nomem(t);
    goto out;
  }
  if ((rc = decrypt_cms(t, a, a->v[S_CERT], &c, plain)) != KVP_EXIT_OK)
    goto out;
  char *pdata = NULL;
  long plen = BIO_get_mem_data(plain, &pdata);
  if ((rc = read_cms(t, F_AUTO, a->v[S_BINARY] != NULL, (const unsigned char *)pdata, plen > 0 ? (size_t)plen : 0,
                     "the decrypted content", &inner)) != KVP_EXIT_OK)
    goto out;
  if ((rc = verify_cms(t, a, a->v[S_FROM], &inner, NULL, out)) == KVP_EXIT_OK)
    rc = emit(t, out);
out:
  cms_in_free(&inner);
  BIO_free(plain);
  BIO_free(out);
  cms_in_free(&c);
  free_input(buf, len);
  return rc;
}

/* ------------------------------------------------------------ dispatch */

static int parse_form(kvp_tool *t, const char *opt, const char *v, int *out)
{
  if (!v)
    return -1;
  if (!strcmp(v, "smime"))
    *out = F_SMIME;
  else if (!strcmp(v, "pem"))
    *out = F_PEM;
  else if (!strcmp(v, "der"))
    *out = F_DER;
  else
    return kvp_tool_fail(t, KVP_EXIT_USAGE, "bad %s '%s': smime, pem or der", opt, v);
  return -1;
}

static int parse_args(kvp_tool *t, const smime_cmd *c, int argc, char **argv, smime_args *a)
{
  int o, rc;
  opterr = 0;
  optind = 0;
  while ((o = getopt_long(argc, argv, ":h", smime_longopts, NULL)) != -1) {
    if (o == 'h') {
      smime_cmd_usage(stdout, c);
      return KVP_EXIT_OK;
    }
    if (o < S_BASE || o >= S_BASE + S_COUNT)
      return kvp_tool_badopt(t, o, argv, "kvp11 smime --help");
    o -= S_BASE;
    if (!(c->allowed & SOPT(o)))
      return kvp_tool_fail(t, KVP_EXIT_USAGE,
                           "option '--%s' does not apply here (see kvp11 %s --help)",
                           smime_longopts[o].name, c->cmd);
    if (o == S_TO) {
      if (a->n_to == MAX_TO)
        return kvp_tool_fail(t, KVP_EXIT_USAGE, "at most %d --to", MAX_TO);
      a->to[a->n_to++] = optarg;
      a->v[o] = optarg;
      continue;
    }
    if (a->v[o])
      return kvp_tool_fail(t, KVP_EXIT_USAGE, "option '--%s' given twice", smime_longopts[o].name);
    a->v[o] = optarg ? optarg : "";
  }
  if (optind < argc)
    return kvp_tool_fail(t, KVP_EXIT_USAGE, "unexpected argument '%s' (see kvp11 %s --help)",
                         argv[optind], c->cmd);
  if ((c->allowed & SOPT(S_CERT)) && c->run != smime_verify && !a->v[S_CERT])
    return kvp_tool_fail(t, KVP_EXIT_USAGE, "--cert is required (see kvp11 %s --help)", c->cmd);
  if ((c->allowed & SOPT(S_TO)) && a->n_to == 0)
    return kvp_tool_fail(t, KVP_EXIT_USAGE, "--to is required (see kvp11 %s --help)", c->cmd);
  const char *d = a->v[S_DIGEST] ? a->v[S_DIGEST] : "sha256";
  if (!strcmp(d, "sha256"))
    a->md = EVP_sha256();
  else if (!strcmp(d, "sha384"))
    a->md = EVP_sha384();
  else if (!strcmp(d, "sha512"))
    a->md = EVP_sha512();
  else
    return kvp_tool_fail(t, KVP_EXIT_USAGE, "bad --digest '%s': sha256, sha384 or sha512", d);
  const char *ci = a->v[S_CIPHER] ? a->v[S_CIPHER] : "aes-256-cbc";
  if (!strcmp(ci, "aes-256-cbc"))
    a->cipher = EVP_aes_256_cbc();
  else if (!strcmp(ci, "aes-256-gcm"))
    a->cipher = EVP_aes_256_gcm();
  else
    return kvp_tool_fail(t, KVP_EXIT_USAGE, "bad --cipher '%s': aes-256-cbc or aes-256-gcm", ci);
  a->inform = F_AUTO;
  a->outform = F_SMIME;
  if ((rc = parse_form(t, "--inform", a->v[S_INFORM], &a->inform)) >= 0 ||
      (rc = parse_form(t, "--outform", a->v[S_OUTFORM], &a->outform)) >= 0)
    return rc;
  if (a->v[S_CONTENT] && a->inform == F_SMIME)
    return kvp_tool_fail(
        t, KVP_EXIT_USAGE,
        "--content goes with --inform pem or der (an S/MIME message has its content)");
  return -1;
}

int kvp_tool_smime(kvp_tool *t, int argc, char **argv)
{
  int rc;
  const smime_cmd *c =
      kvp_tool_subcommand(t, "smime", argc, argv, kvp_tool_smime_usage, smime_cmds,
                          sizeof(smime_cmds[0]), KVP_ARRAY_SIZE(smime_cmds), &rc);
  if (c == NULL)
    return rc;
  smime_args a = {0};
  rc = parse_args(t, c, argc - 1, argv + 1, &a);
  return rc >= 0 ? rc : c->run(t, &a);
}
