/*
 * kvp11 smime sign|verify|encrypt|decrypt|seal|open: S/MIME (RFC 8551, CMS)
 * messages with registered certificates. This file: the command line, the
 * shared helpers, and the sending side (sign, encrypt, seal);
 * smime_recv.c: verify, decrypt, open.
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
 * Every command streams (smime.h): the message is read once from stdin or
 * --in and written as it is processed, in constant memory. The sending side
 * uses OpenSSL's streaming writers (CMS_STREAM: SMIME_write_CMS,
 * i2d_CMS_bio_stream, PEM_write_bio_CMS_stream); seal writes the signed
 * entity straight into the enveloping stream (sm_stream, smime_io.c). With
 * --out FILE nothing appears under FILE unless the command succeeded.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <getopt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/bio.h>
#include <openssl/pem.h> /* before cms.h: declares PEM_write_bio_CMS_stream */
#include <openssl/cms.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "core/util.h"
#include "engine.h"
#include "smime.h"

#ifndef KVP11_MODULE_INSTALLED
#define KVP11_MODULE_INSTALLED "/usr/lib/x86_64-linux-gnu/pkcs11/libkvp11.so"
#endif



typedef struct smime_cmd {
  const char *cmd;
  uint64_t allowed;
  int (*run)(kvp_tool *t, smime_args *a);
  const char *synopsis;
} smime_cmd;

#define SIGN_OPTS (OPT(O_DETACHED) | OPT(O_DIGEST) | OPT(O_BINARY))
#define ENC_OPTS (OPT(O_CIPHER) | OPT(O_OAEP) | OPT(O_BINARY))
#define IO_OPTS (OPT(O_IN) | OPT(O_OUT) | OPT(O_ACCOUNT))

static const smime_cmd smime_cmds[] = {
    {"smime sign", OPT(O_CERT) | SIGN_OPTS | IO_OPTS | OPT(O_OUTFORM) | OPT(O_MODULE),
     sm_cmd_sign,
     "smime sign --cert NAME [--detached] [--digest sha256|sha384|sha512]\n"
     "[--binary] [--outform smime|pem|der] [--account A]\n"
     "[--module SO] [--in FILE] [--out FILE]"},
    {"smime verify", OPT(O_CERT) | IO_OPTS | OPT(O_INFORM) | OPT(O_CONTENT) | OPT(O_BINARY),
     sm_cmd_verify,
     "smime verify [--cert PARTNER] [--inform smime|pem|der]\n"
     "[--content FILE] [--binary] [--account A] [--in FILE] [--out FILE]"},
    {"smime encrypt", OPT(O_TO) | ENC_OPTS | IO_OPTS | OPT(O_OUTFORM), sm_cmd_encrypt,
     "smime encrypt --to PARTNER [--to PARTNER2 ...]\n"
     "[--cipher aes-256-cbc|aes-256-gcm] [--oaep] [--binary]\n"
     "[--outform smime|pem|der] [--account A] [--in FILE] [--out FILE]"},
    {"smime decrypt", OPT(O_CERT) | IO_OPTS | OPT(O_INFORM) | OPT(O_MODULE), sm_cmd_decrypt,
     "smime decrypt [--cert NAME] [--inform smime|pem|der] [--account A]\n"
     "[--module SO] [--in FILE] [--out FILE]"},
    {"smime seal",
     OPT(O_CERT) | OPT(O_TO) | SIGN_OPTS | ENC_OPTS | IO_OPTS | OPT(O_OUTFORM) | OPT(O_MODULE),
     sm_cmd_seal,
     "smime seal --cert NAME --to PARTNER [--to PARTNER2 ...] [--detached]\n"
     "[--digest D] [--cipher C] [--oaep] [--binary] [--outform F]\n"
     "[--account A] [--module SO] [--in FILE] [--out FILE]"},
    {"smime open",
     OPT(O_CERT) | OPT(O_FROM) | IO_OPTS | OPT(O_INFORM) | OPT(O_MODULE) | OPT(O_BINARY),
     sm_cmd_open,
     "smime open [--cert NAME] [--from PARTNER] [--inform smime|pem|der]\n"
     "[--binary] [--account A] [--module SO] [--in FILE] [--out FILE]"},
};

/* ------------------------------------------------------------------ usage */

void kvp_tool_smime_usage(FILE *f)
{
  for (size_t i = 0; i < KVP_ARRAY_SIZE(smime_cmds); i++)
    kvp_tool_synopsis(f, "  kvp11 [-c FILE] ", smime_cmds[i].cmd, smime_cmds[i].synopsis);
}

/* One help line per option; only those of the command. */
static const char *const opt_help[O_COUNT] = {
    [O_CERT] = "  --cert NAME      our private certificate to sign with (its key is used\n"
               "                   through libkvp11.so)\n",
    [O_TO] = "  --to PARTNER     a registered recipient certificate (repeatable)\n",
    [O_FROM] = "  --from PARTNER   the only accepted signer\n",
    [O_DETACHED] = "  --detached       multipart/signed (content in clear beside the signature)\n",
    [O_DIGEST] = "  --digest D       sha256 (default), sha384, sha512\n",
    [O_CIPHER] = "  --cipher C       aes-256-cbc (default), aes-256-gcm (AuthEnvelopedData)\n",
    [O_OAEP] = "  --oaep           RSA-OAEP key transport (default: RSA PKCS#1 v1.5)\n",
    [O_BINARY] = "  --binary         the content is bytes as they are (default: text, line ends\n"
                 "                   made CRLF as S/MIME requires)\n",
    [O_ACCOUNT] = "  --account A      default: the first configured account\n",
    [O_INFORM] = "  --inform F       input form: smime, pem or der (default: detected)\n",
    [O_OUTFORM] = "  --outform F      output form: smime (default), pem or der\n",
    [O_CONTENT] = "  --content FILE   the content of a detached pem/der signature\n",
    [O_MODULE] = "  --module SO      libkvp11.so (default: $KVP11_MODULE, else " KVP11_MODULE_INSTALLED ")\n",
    [O_IN] = "  --in FILE        read the message from FILE (default: stdin)\n",
    [O_OUT] = "  --out FILE       write to FILE, only if the command succeeds (default: stdout)\n",
};

/* The options that mean something else on the receiving side. */
static const char *recv_help(const smime_cmd *c, int o)
{
  if (o == O_CERT && c->run == sm_cmd_verify)
    return "  --cert PARTNER   the only accepted signer\n";
  if (o == O_CERT)
    return "  --cert NAME      our certificate to decrypt with (its key is used through\n"
           "                   libkvp11.so); default: the one the message is for, among\n"
           "                   the account's private certificates, active or retired\n"
           "                   (-v says which)\n";
  if (o == O_BINARY)
    return "  --binary         the detached content was signed as bytes as they are\n"
           "                   (default: as canonical text, CRLF line ends)\n";
  return opt_help[o];
}

static void smime_cmd_usage(FILE *f, const smime_cmd *c)
{
  int recv = c->run == sm_cmd_verify || c->run == sm_cmd_decrypt || c->run == sm_cmd_open;
  kvp_tool_synopsis(f, "usage: kvp11 [-c FILE] ", c->cmd, c->synopsis);
  fputc('\n', f);
  for (int o = 0; o < O_COUNT; o++)
    if ((c->allowed & OPT(o)) && opt_help[o])
      fputs(recv ? recv_help(c, o) : opt_help[o], f);
  fputs("\nThe message streams: read once, written as it is processed. On stdout a\n"
        "failed verify, decrypt or open may have written part of the content: check\n"
        "the exit status, or use --out FILE (written only when the command succeeds).\n",
        f);
  if (c->allowed & (OPT(O_FROM) | OPT(O_CONTENT)))
    fputs("Signers are trusted when their certificate is registered in the account\n"
          "and valid at the signing time.\n",
          f);
}

/* ------------------------------------------------------------- helpers */

/* shared with engine.c */
#define ossl_reason kvp_engine_ossl_reason
#define quiet_begin kvp_engine_quiet_begin
#define quiet_end kvp_engine_quiet_end

int sm_nomem(const kvp_tool *t)
{
  return kvp_tool_fail(t, KVP_EXIT_ERROR, "out of memory");
}

void sm_subject_of(X509 *x, char *out, size_t len)
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

int sm_sha256_hex(X509 *x, char out[65])
{
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  if (!X509_digest(x, EVP_sha256(), md, &n) || n != 32)
    return -1;
  kvp_hex(md, 32, out);
  return 0;
}

X509 *sm_rec_x509(const kvp_cert_rec *rec)
{
  const unsigned char *p = rec->der;
  return d2i_X509(NULL, &p, (long)rec->der_len);
}

int sm_setup(kvp_tool *t, smime_args *a)
{
  if (kvp_tool_load_config(t) != KVP_EXIT_OK ||
      kvp_tool_account(t, a->v[O_ACCOUNT], &a->account) != KVP_EXIT_OK ||
      kvp_tool_open_registry(t) != KVP_EXIT_OK)
    return KVP_EXIT_ERROR;
  return KVP_EXIT_OK;
}

/* One registered certificate; need_private: it must have a key (2: to sign with). */
int sm_get_rec(kvp_tool *t, const smime_args *a, const char *name, int need_private,
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
                         need_private == 2 ? "sign" : "decrypt");
  if (need_private == 2 && rec->state == KVP_STATE_RETIRED)
    return kvp_tool_fail(t, KVP_EXIT_ERROR,
                         "certificate '%s' is retired: it decrypts messages still in flight but "
                         "never signs",
                         name);
  if (rec->der_len == 0)
    return kvp_tool_fail(t, KVP_EXIT_ERROR,
                         "'%s' is a key without a certificate yet: request one with kvp11 csr "
                         "--cert-name %s, then register it with kvp11 cert add --name %s",
                         name, name, name);
  if (!(*x = sm_rec_x509(rec)))
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "certificate '%s': the registered DER does not parse",
                         name);
  return KVP_EXIT_OK;
}

/* The certificate must be valid at 'at'; what names it in the message. */
int sm_check_valid(kvp_tool *t, const kvp_cert_rec *rec, int64_t at, const char *when)
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

int sm_load_key(kvp_tool *t, const smime_args *a, const kvp_cert_rec *rec, X509 *x,
                kvp_engine_key *k)
{
  const char *module = kvp_engine_module(a->v[O_MODULE]);
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

/* ------------------------------------------------------------- sending */

/* An unfinished SignedData with rec's key as signer (the signature is made
 * when the stream is finalised). */
static int make_signed(kvp_tool *t, const smime_args *a, const kvp_cert_rec *rec, X509 *x,
                       kvp_engine_key *k, int flags, CMS_ContentInfo **cms)
{
  int rc = sm_check_valid(t, rec, (int64_t)time(NULL), "now");
  if (rc != KVP_EXIT_OK || (rc = sm_load_key(t, a, rec, x, k)) != KVP_EXIT_OK)
    return rc;
  ERR_clear_error();
  int q = quiet_begin(t);
  int ok = (*cms = CMS_sign(NULL, NULL, NULL, NULL, flags | CMS_PARTIAL)) != NULL &&
           CMS_add1_signer(*cms, x, k->pkey, a->md, flags | CMS_PARTIAL) != NULL;
  quiet_end(q);
  if (!ok)
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "cannot sign with the key of certificate '%s': %s%s",
                         rec->name, ossl_reason(), kvp_tool_loghint(t));
  return KVP_EXIT_OK;
}

/* One --to recipient added to the unfinished envelope cms. */
static int add_recipient(kvp_tool *t, const smime_args *a, const char *name, int flags,
                         CMS_ContentInfo *cms)
{
  kvp_cert_rec rec = {0};
  X509 *x = NULL;
  int rc;
  if ((rc = sm_get_rec(t, a, name, 0, &rec, &x)) != KVP_EXIT_OK ||
      (rc = sm_check_valid(t, &rec, (int64_t)time(NULL), "now")) != KVP_EXIT_OK)
    goto out;
  rc = KVP_EXIT_ERROR;
  int kt = EVP_PKEY_get_base_id(X509_get0_pubkey(x));
  if (kt != EVP_PKEY_RSA && kt != EVP_PKEY_EC) {
    kvp_tool_fail(t, rc, "certificate '%s': RSA or EC recipients only", name);
    goto out;
  }
  if (a->v[O_OAEP] && kt != EVP_PKEY_RSA) {
    kvp_tool_fail(t, rc, "--oaep: certificate '%s' has no RSA key", name);
    goto out;
  }
  CMS_RecipientInfo *ri = CMS_add1_recipient_cert(cms, x, flags | (a->v[O_OAEP] ? CMS_KEY_PARAM : 0));
  if (!ri) {
    kvp_tool_fail(t, rc, "cannot add recipient '%s': %s", name, ossl_reason());
    goto out;
  }
  if (a->v[O_OAEP]) {
    EVP_PKEY_CTX *pctx = CMS_RecipientInfo_get0_pkey_ctx(ri);
    if (!pctx || EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_OAEP_PADDING) <= 0) {
      kvp_tool_fail(t, rc, "cannot set RSA-OAEP for '%s': %s", name, ossl_reason());
      goto out;
    }
  }
  rc = KVP_EXIT_OK;
out:
  X509_free(x);
  kvp_cert_rec_clear(&rec);
  return rc;
}

/* An unfinished envelope to every --to. */
static int make_envelope(kvp_tool *t, const smime_args *a, int flags, CMS_ContentInfo **cms)
{
  ERR_clear_error();
  if (!(*cms = CMS_encrypt(NULL, NULL, a->cipher, flags | CMS_PARTIAL | CMS_STREAM)))
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "cannot create the enveloped message: %s",
                         ossl_reason());
  for (size_t i = 0; i < a->n_to; i++) {
    int rc = add_recipient(t, a, a->to[i], flags, *cms);
    if (rc != KVP_EXIT_OK)
      return rc;
  }
  return KVP_EXIT_OK;
}

/* Stream in through cms to out in form (OpenSSL's streaming writers). */
static int write_stream(int form, CMS_ContentInfo *cms, BIO *in, int flags, BIO *out)
{
  ERR_clear_error();
  flags = (flags & ~CMS_PARTIAL) | CMS_STREAM;
  if (form == F_PEM)
    return PEM_write_bio_CMS_stream(out, cms, in, flags);
  if (form == F_DER)
    return i2d_CMS_bio_stream(out, cms, in, flags);
  return SMIME_write_CMS(out, cms, in, flags);
}

/* An empty content, finished whole and written in form (see sm_in_empty). */
static int write_final(int form, CMS_ContentInfo *cms, BIO *in, int flags, BIO *out)
{
  ERR_clear_error();
  flags &= ~(CMS_STREAM | CMS_PARTIAL);
  if (!CMS_final(cms, in, NULL, flags))
    return 0;
  if (form == F_PEM)
    return PEM_write_bio_CMS(out, cms);
  if (form == F_DER)
    return i2d_CMS_bio(out, cms);
  /* CMS_REUSE_DIGEST: signed already; the detached content is in (empty) */
  return SMIME_write_CMS(out, cms, in, flags | CMS_REUSE_DIGEST);
}

/* What sign, encrypt and seal share: the input, the output. */
typedef struct send_ctx {
  kvp_cert_rec rec;
  X509 *x;
  kvp_engine_key k;
  BIO *in;
  const char *what;
  sm_out out;
  CMS_ContentInfo *sig, *env;
} send_ctx;

static int send_begin(kvp_tool *t, smime_args *a, int sign, send_ctx *s)
{
  int rc;
  memset(s, 0, sizeof(*s));
  if ((rc = sm_setup(t, a)) != KVP_EXIT_OK ||
      (sign && (rc = sm_get_rec(t, a, a->v[O_CERT], 2, &s->rec, &s->x)) != KVP_EXIT_OK) ||
      (rc = sm_in_open(t, a->v[O_IN], &s->in, &s->what)) != KVP_EXIT_OK)
    return rc;
  return sm_out_open(t, a->v[O_OUT], &s->out);
}

static int send_end(kvp_tool *t, send_ctx *s, int rc)
{
  if (rc == KVP_EXIT_OK)
    rc = sm_out_commit(t, &s->out);
  else
    sm_out_abort(&s->out);
  CMS_ContentInfo_free(s->sig);
  CMS_ContentInfo_free(s->env);
  kvp_engine_key_free(&s->k);
  BIO_free(s->in);
  X509_free(s->x);
  kvp_cert_rec_clear(&s->rec);
  return rc;
}

static int sign_flags(const smime_args *a)
{
  return (a->v[O_BINARY] ? CMS_BINARY : 0) | (a->v[O_DETACHED] ? CMS_DETACHED : 0) | CMS_STREAM;
}

int sm_cmd_sign(kvp_tool *t, smime_args *a)
{
  send_ctx s;
  int flags = sign_flags(a);
  int rc = send_begin(t, a, 1, &s);
  if (rc != KVP_EXIT_OK || (rc = make_signed(t, a, &s.rec, s.x, &s.k, flags, &s.sig)) != KVP_EXIT_OK)
    return send_end(t, &s, rc);
  int q = quiet_begin(t), ok;
  ERR_clear_error();
  /* detached pem/der: the content is only digested */
  if ((a->v[O_DETACHED] && a->outform != F_SMIME) || sm_in_empty(s.in))
    ok = write_final(a->outform, s.sig, s.in, flags, s.out.bio);
  else
    ok = write_stream(a->outform, s.sig, s.in, flags, s.out.bio);
  quiet_end(q);
  if (!ok)
    rc = kvp_tool_fail(t, KVP_EXIT_ERROR, "cannot sign with the key of certificate '%s': %s%s",
                       s.rec.name, ossl_reason(), kvp_tool_loghint(t));
  return send_end(t, &s, rc);
}

int sm_cmd_encrypt(kvp_tool *t, smime_args *a)
{
  send_ctx s;
  int flags = a->v[O_BINARY] ? CMS_BINARY : 0;
  int rc = send_begin(t, a, 0, &s);
  if (rc == KVP_EXIT_OK && (rc = make_envelope(t, a, flags, &s.env)) == KVP_EXIT_OK &&
      !(sm_in_empty(s.in) ? write_final(a->outform, s.env, s.in, flags, s.out.bio)
                          : write_stream(a->outform, s.env, s.in, flags, s.out.bio)))
    rc = kvp_tool_fail(t, KVP_EXIT_ERROR, "cannot encrypt: %s", ossl_reason());
  return send_end(t, &s, rc);
}

/* Sign and encrypt in one pass: the signed S/MIME entity
 * is written by OpenSSL's S/MIME writer straight into the enveloping stream
 * (through a flush barrier, so that the inner writer's final flush does not
 * finalise the outer cipher). */
int sm_cmd_seal(kvp_tool *t, smime_args *a)
{
  send_ctx s;
  sm_stream st = {0};
  int flags = sign_flags(a);
  int rc = send_begin(t, a, 1, &s);
  if (rc != KVP_EXIT_OK || (rc = make_envelope(t, a, CMS_BINARY, &s.env)) != KVP_EXIT_OK ||
      (rc = make_signed(t, a, &s.rec, s.x, &s.k, flags, &s.sig)) != KVP_EXIT_OK ||
      (rc = sm_stream_begin(t, s.out.bio, a->outform, 0, s.env, &st)) != KVP_EXIT_OK) {
    sm_stream_free(&st);
    return send_end(t, &s, rc);
  }
  BIO *bar = sm_flush_barrier();
  if (!bar) {
    sm_stream_free(&st);
    return send_end(t, &s, sm_nomem(t));
  }
  BIO_push(bar, st.w);
  int q = quiet_begin(t);
  ERR_clear_error();
  /* CRLF line ends for the MIME structure, as S/MIME wants; but not around
   * binary detached content: OpenSSL 3.0's reader then keeps the CR before
   * the boundary in the content and the signature fails for such peers. */
  int eol = a->v[O_BINARY] && a->v[O_DETACHED] ? 0 : CMS_CRLFEOL;
  int ok = sm_in_empty(s.in) ? write_final(F_SMIME, s.sig, s.in, flags | eol, bar)
                             : SMIME_write_CMS(bar, s.sig, s.in, flags | eol);
  quiet_end(q);
  BIO_pop(bar);
  BIO_free(bar);
  if (!ok) {
    rc = kvp_tool_fail(t, KVP_EXIT_ERROR, "cannot sign with the key of certificate '%s': %s%s",
                       s.rec.name, ossl_reason(), kvp_tool_loghint(t));
    sm_stream_free(&st);
  } else {
    rc = sm_stream_end(t, &st);
  }
  return send_end(t, &s, rc);
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
  while ((o = getopt_long(argc, argv, ":h", kvp_tool_longopts, NULL)) != -1) {
    if (o == 'h') {
      smime_cmd_usage(stdout, c);
      return KVP_EXIT_OK;
    }
    if (o < KVP_TOOL_OPT_BASE || o >= KVP_TOOL_OPT_BASE + O_COUNT)
      return kvp_tool_badopt(t, o, argv, "kvp11 smime --help");
    o -= KVP_TOOL_OPT_BASE;
    if (!(c->allowed & OPT(o)))
      return kvp_tool_fail(t, KVP_EXIT_USAGE,
                           "option '--%s' does not apply here (see kvp11 %s --help)",
                           kvp_tool_longopts[o].name, c->cmd);
    if (o == O_TO) {
      if (a->n_to == MAX_TO)
        return kvp_tool_fail(t, KVP_EXIT_USAGE, "at most %d --to", MAX_TO);
      a->to[a->n_to++] = optarg;
      a->v[o] = optarg;
      continue;
    }
    if (a->v[o])
      return kvp_tool_fail(t, KVP_EXIT_USAGE, "option '--%s' given twice", kvp_tool_longopts[o].name);
    a->v[o] = optarg ? optarg : "";
  }
  if (optind < argc)
    return kvp_tool_fail(t, KVP_EXIT_USAGE, "unexpected argument '%s' (see kvp11 %s --help)",
                         argv[optind], c->cmd);
  if ((c->allowed & OPT(O_CERT)) && c->run != sm_cmd_verify && c->run != sm_cmd_decrypt &&
      c->run != sm_cmd_open && !a->v[O_CERT])
    return kvp_tool_fail(t, KVP_EXIT_USAGE, "--cert is required (see kvp11 %s --help)", c->cmd);
  if ((c->allowed & OPT(O_TO)) && a->n_to == 0)
    return kvp_tool_fail(t, KVP_EXIT_USAGE, "--to is required (see kvp11 %s --help)", c->cmd);
  if ((rc = kvp_tool_digest(t, a->v[O_DIGEST], &a->md)) >= 0)
    return rc;
  const char *ci = a->v[O_CIPHER] ? a->v[O_CIPHER] : "aes-256-cbc";
  if (!strcmp(ci, "aes-256-cbc"))
    a->cipher = EVP_aes_256_cbc();
  else if (!strcmp(ci, "aes-256-gcm"))
    a->cipher = EVP_aes_256_gcm();
  else
    return kvp_tool_fail(t, KVP_EXIT_USAGE, "bad --cipher '%s': aes-256-cbc or aes-256-gcm", ci);
  a->inform = F_AUTO;
  a->outform = F_SMIME;
  if ((rc = parse_form(t, "--inform", a->v[O_INFORM], &a->inform)) >= 0 ||
      (rc = parse_form(t, "--outform", a->v[O_OUTFORM], &a->outform)) >= 0)
    return rc;
  if (a->v[O_CONTENT] && a->inform == F_SMIME)
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
