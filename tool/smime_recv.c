/*
 * kvp11 smime verify|decrypt|open: the receiving side (smime.c has the
 * rest). The message streams through smime_read.c: the content is written
 * to the output as it is decrypted or digested, and the verdict comes at
 * the end (the SignerInfos follow the content; the AES-GCM tag too). With
 * --out FILE the output is a temporary file renamed into place only when
 * every check passed; on stdout the consumer must check the exit status.
 *
 * decrypt and open find the certificate to decrypt with from the message's
 * RecipientInfos (issuer and serial number, or subject key identifier)
 * among the account's private certificates, active or retired, unless
 * --cert names it; -v says which one was used.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/err.h>

#include "core/util.h"
#include "engine.h"
#include "smime.h"

#define ossl_reason kvp_engine_ossl_reason

/* ---------------------------------------------------------------- signers */

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

/* The registered certificates to accept as signers: only, or all of the account. */
static int signer_set(kvp_tool *t, const smime_args *a, const char *only, kvp_cert_rec **recs,
                      size_t *n, STACK_OF(X509) **certs)
{
  char err[KVP_ERRLEN] = "";
  if (only) {
    X509 *x = NULL;
    if (!(*recs = calloc(1, sizeof(**recs))))
      return sm_nomem(t);
    *n = 1;
    int rc = sm_get_rec(t, a, only, 0, *recs, &x);
    X509_free(x);
    if (rc != KVP_EXIT_OK)
      return rc;
  } else if (kvp_registry_list(t->reg, a->account, recs, n, err, sizeof(err)) != KVP_OK) {
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "%s", err);
  }
  if (!(*certs = sk_X509_new_null()))
    return sm_nomem(t);
  for (size_t i = 0; i < *n; i++) {
    X509 *x = (*recs)[i].der_len ? sm_rec_x509(&(*recs)[i]) : NULL;
    if (x && !sk_X509_push(*certs, x)) {
      X509_free(x);
      return sm_nomem(t);
    }
  }
  return KVP_EXIT_OK;
}

/* si's signer must be one of recs, valid at the signing time. */
static int signer_check(kvp_tool *t, const smime_args *a, const char *only, CMS_SignerInfo *si,
                        const kvp_cert_rec *recs, size_t n)
{
  X509 *signer = NULL;
  char sub[256], fp[65], who[300] = "";
  const kvp_cert_rec *match = NULL;
  int rc = KVP_EXIT_ERROR;
  CMS_SignerInfo_get0_algs(si, NULL, &signer, NULL, NULL);
  if (!signer) {
    ASN1_INTEGER *sno = NULL;
    X509_NAME *iss = NULL;
    ASN1_OCTET_STRING *kid = NULL;
    if (CMS_SignerInfo_get0_signer_id(si, &kid, &iss, &sno) && iss) {
      char *in = X509_NAME_oneline(iss, NULL, 0);
      snprintf(who, sizeof(who), " (issuer %s)", in ? in : "?");
      OPENSSL_free(in);
    }
    if (only)
      return kvp_tool_fail(t, rc,
                           "unknown signer%s: the message does not carry its certificate and it "
                           "is not certificate '%s'",
                           who, only);
    return kvp_tool_fail(t, rc,
                         "unknown signer%s: the message does not carry its certificate and no "
                         "registered certificate of account '%s' matches",
                         who, a->account);
  }
  if (sm_sha256_hex(signer, fp) != 0)
    return kvp_tool_fail(t, rc, "cannot hash the signer's certificate: %s", ossl_reason());
  for (size_t j = 0; j < n && !match; j++)
    if (strcmp(recs[j].sha256, fp) == 0)
      match = &recs[j];
  if (!match) {
    sm_subject_of(signer, sub, sizeof(sub));
    if (only)
      return kvp_tool_fail(t, rc, "unknown signer %s (sha256 %s): not certificate '%s'", sub, fp,
                           only);
    return kvp_tool_fail(t, rc,
                         "unknown signer %s (sha256 %s): not a registered certificate of account '%s'",
                         sub, fp, a->account);
  }
  int64_t st = signing_time(si);
  return sm_check_valid(t, match, st >= 0 ? st : (int64_t)time(NULL),
                        st >= 0 ? "the message was signed at" : "now");
}

/*
 * After the content of m went through md: every signer must be a registered
 * certificate of the account (only != NULL: that one), valid at the signing
 * time (else now), and every signature must verify.
 */
static int verify_signers(kvp_tool *t, const smime_args *a, const char *only, sm_msg *m, BIO *md)
{
  kvp_cert_rec *recs = NULL;
  size_t n = 0;
  STACK_OF(X509) *certs = NULL;
  int rc;
  STACK_OF(CMS_SignerInfo) *sis = CMS_get0_SignerInfos(m->cms);
  if (!sis || sk_CMS_SignerInfo_num(sis) <= 0) {
    rc = kvp_tool_fail(t, KVP_EXIT_ERROR, "the message has no signature");
    goto out;
  }
  if ((rc = signer_set(t, a, only, &recs, &n, &certs)) != KVP_EXIT_OK)
    goto out;
  ERR_clear_error();
  /* Registered certificates first, then those the message carries. */
  if (CMS_set1_signers_certs(m->cms, certs, 0) < 0) {
    rc = kvp_tool_fail(t, KVP_EXIT_ERROR, "cannot read the signers: %s", ossl_reason());
    goto out;
  }
  for (int i = 0; i < sk_CMS_SignerInfo_num(sis) && rc == KVP_EXIT_OK; i++)
    rc = signer_check(t, a, only, sk_CMS_SignerInfo_value(sis, i), recs, n);
  if (rc == KVP_EXIT_OK && sm_verify_signatures(m, md) != 0)
    rc = m->err[0] ? kvp_tool_fail(t, KVP_EXIT_ERROR, "%s", m->err)
                   : kvp_tool_fail(t, KVP_EXIT_ERROR,
                                   "the signature does not verify (the message was changed, or "
                                   "not signed with this certificate's key): %s",
                                   ossl_reason());
out:
  sk_X509_pop_free(certs, X509_free);
  kvp_cert_rec_free_array(recs, n);
  return rc;
}

/* What verify, decrypt and open share. */
typedef struct recv_ctx {
  BIO *in, *content, *plain, *md;
  const char *what;
  sm_msg *m, *inner;
  sm_out out;
  kvp_cert_rec rec;
  X509 *x;
  kvp_engine_key k;
} recv_ctx;

static int recv_begin(kvp_tool *t, smime_args *a, int expect, recv_ctx *r)
{
  int rc;
  memset(r, 0, sizeof(*r));
  if ((rc = sm_setup(t, a)) != KVP_EXIT_OK ||
      (rc = sm_in_open(t, a->v[O_IN], &r->in, &r->what)) != KVP_EXIT_OK)
    return rc;
  if (!(r->m = malloc(sizeof(*r->m))))
    return sm_nomem(t);
  if (sm_msg_begin(r->m, r->in, a->inform, expect, r->what) != 0)
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "%s", r->m->err);
  return KVP_EXIT_OK;
}

static int recv_end(kvp_tool *t, recv_ctx *r, int rc)
{
  if (r->md)
    sm_md_free(r->md, r->out.bio);
  if (rc == KVP_EXIT_OK)
    rc = sm_out_commit(t, &r->out);
  else
    sm_out_abort(&r->out);
  BIO_free_all(r->plain);
  if (r->inner) {
    sm_msg_free(r->inner);
    free(r->inner);
  }
  if (r->m) {
    sm_msg_free(r->m);
    free(r->m);
  }
  kvp_engine_key_free(&r->k);
  X509_free(r->x);
  kvp_cert_rec_clear(&r->rec);
  BIO_free(r->content);
  BIO_free(r->in);
  return rc;
}

/* verify after the output is open: the content streamed, then the signers. */
static int verify_rest(kvp_tool *t, const smime_args *a, recv_ctx *r)
{
  if (sm_signed_stream(r->m, r->content, a->v[O_BINARY] != NULL, r->out.bio, &r->md) != 0)
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "%s", r->m->err);
  return verify_signers(t, a, a->v[O_CERT], r->m, r->md);
}

int sm_cmd_verify(kvp_tool *t, smime_args *a)
{
  recv_ctx r;
  int rc = recv_begin(t, a, NID_pkcs7_signed, &r);
  if (rc != KVP_EXIT_OK)
    return recv_end(t, &r, rc);
  if (a->v[O_CONTENT] && !(r.content = BIO_new_file(a->v[O_CONTENT], "rb")))
    return recv_end(t, &r, kvp_tool_fail(t, KVP_EXIT_ERROR, "cannot open %s: %s", a->v[O_CONTENT],
                                         strerror(errno)));
  if ((rc = sm_out_open(t, a->v[O_OUT], &r.out)) != KVP_EXIT_OK)
    return recv_end(t, &r, rc);
  return recv_end(t, &r, verify_rest(t, a, &r));
}

/* ---------------------------------------------------------------- decrypt */

/* x is a recipient of cms; *agree: by key agreement (ECDH). */
static int is_recipient(CMS_ContentInfo *cms, X509 *x, int *agree)
{
  STACK_OF(CMS_RecipientInfo) *ris = CMS_get0_RecipientInfos(cms);
  *agree = 0;
  for (int i = 0; ris && i < sk_CMS_RecipientInfo_num(ris); i++) {
    CMS_RecipientInfo *ri = sk_CMS_RecipientInfo_value(ris, i);
    int type = CMS_RecipientInfo_type(ri);
    if (type == CMS_RECIPINFO_TRANS && CMS_RecipientInfo_ktri_cert_cmp(ri, x) == 0)
      return 1;
    if (type == CMS_RECIPINFO_AGREE) {
      STACK_OF(CMS_RecipientEncryptedKey) *reks = CMS_RecipientInfo_kari_get0_reks(ri);
      for (int j = 0; reks && j < sk_CMS_RecipientEncryptedKey_num(reks); j++)
        if (CMS_RecipientEncryptedKey_cert_cmp(sk_CMS_RecipientEncryptedKey_value(reks, j), x) == 0)
          return *agree = 1;
    }
  }
  return 0;
}

/* How the first key-transport recipient of cms is named, for messages. */
static void first_recipient(CMS_ContentInfo *cms, char *out, size_t len)
{
  STACK_OF(CMS_RecipientInfo) *ris = CMS_get0_RecipientInfos(cms);
  ASN1_OCTET_STRING *kid = NULL;
  X509_NAME *iss = NULL;
  ASN1_INTEGER *sno = NULL;
  snprintf(out, len, "?");
  for (int i = 0; ris && i < sk_CMS_RecipientInfo_num(ris); i++) {
    CMS_RecipientInfo *ri = sk_CMS_RecipientInfo_value(ris, i);
    if (CMS_RecipientInfo_type(ri) != CMS_RECIPINFO_TRANS ||
        !CMS_RecipientInfo_ktri_get0_signer_id(ri, &kid, &iss, &sno))
      continue;
    if (iss && sno) {
      char *in = X509_NAME_oneline(iss, NULL, 0);
      BIGNUM *bn = ASN1_INTEGER_to_BN(sno, NULL);
      char *hex = bn ? BN_bn2hex(bn) : NULL;
      snprintf(out, len, "issuer %s serial %s", in ? in : "?", hex ? hex : "?");
      OPENSSL_free(hex);
      BN_free(bn);
      OPENSSL_free(in);
    } else if (kid) {
      char hex[2 * 64 + 1];
      int n = ASN1_STRING_length(kid) > 64 ? 64 : ASN1_STRING_length(kid);
      kvp_hex(ASN1_STRING_get0_data(kid), (size_t)n, hex);
      snprintf(out, len, "subject key id %s", hex);
    }
    return;
  }
}

/* The registered private certificate (active or retired) m is for. */
static int find_recipient(kvp_tool *t, const smime_args *a, CMS_ContentInfo *cms, kvp_cert_rec *rec,
                          X509 **x, int *agree)
{
  char err[KVP_ERRLEN] = "", who[400];
  kvp_cert_rec *recs = NULL;
  size_t n = 0;
  int found = 0;
  if (kvp_registry_list(t->reg, a->account, &recs, &n, err, sizeof(err)) != KVP_OK)
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "%s", err);
  for (size_t i = 0; i < n && !found; i++) {
    X509 *c = recs[i].type == KVP_CERT_PRIVATE && recs[i].der_len ? sm_rec_x509(&recs[i]) : NULL;
    if (c && is_recipient(cms, c, agree)) {
      *rec = recs[i];
      memset(&recs[i], 0, sizeof(recs[i]));
      *x = c;
      found = 1;
    } else {
      X509_free(c);
    }
  }
  kvp_cert_rec_free_array(recs, n);
  if (found)
    return KVP_EXIT_OK;
  STACK_OF(CMS_RecipientInfo) *ris = CMS_get0_RecipientInfos(cms);
  first_recipient(cms, who, sizeof(who));
  return kvp_tool_fail(t, KVP_EXIT_ERROR,
                       "the message is for none of the private certificates of account '%s' "
                       "(%d recipient%s; the first: %s)",
                       a->account, ris ? sk_CMS_RecipientInfo_num(ris) : 0,
                       ris && sk_CMS_RecipientInfo_num(ris) == 1 ? "" : "s", who);
}

/* The certificate to decrypt with: --cert, or the one the message is for. */
static int pick_cert(kvp_tool *t, const smime_args *a, recv_ctx *r)
{
  int agree = 0, rc;
  const char *name = a->v[O_CERT];
  if (name) {
    if ((rc = sm_get_rec(t, a, name, 1, &r->rec, &r->x)) != KVP_EXIT_OK)
      return rc;
    if (!is_recipient(r->m->cms, r->x, &agree)) {
      STACK_OF(CMS_RecipientInfo) *ris = CMS_get0_RecipientInfos(r->m->cms);
      return kvp_tool_fail(t, KVP_EXIT_ERROR,
                           "this message is not for certificate '%s' (none of its %d recipients)",
                           name, ris ? sk_CMS_RecipientInfo_num(ris) : 0);
    }
  } else if ((rc = find_recipient(t, a, r->m->cms, &r->rec, &r->x, &agree)) != KVP_EXIT_OK) {
    return rc;
  }
  if (agree) /* the module decrypts with RSA keys only (CKM_RSA_PKCS, CKM_RSA_PKCS_OAEP) */
    return kvp_tool_fail(t, KVP_EXIT_ERROR,
                         "the message is for certificate '%s' by EC key agreement (ECDH), which "
                         "libkvp11.so does not do: decryption needs an RSA certificate",
                         r->rec.name);
  if (t->verbose)
    fprintf(stderr, "kvp11: %s: decrypting with certificate '%s'%s\n", t->cmd, r->rec.name,
            r->rec.state == KVP_STATE_RETIRED ? " (retired)" : "");
  return KVP_EXIT_OK;
}

/* The content-encryption key from the recipient info (pkey: through the
 * module), then the cipher over the content: r->plain. */
static int start_decrypt(kvp_tool *t, recv_ctx *r, EVP_PKEY *pkey)
{
  ERR_clear_error();
  int q = kvp_engine_quiet_begin(t);
  int ok = sm_decrypt_stream(r->m, pkey, r->x, &r->plain) == 0;
  kvp_engine_quiet_end(q);
  if (!ok && r->m->err[0])
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "%s", r->m->err);
  if (!ok)
    return kvp_tool_fail(t, KVP_EXIT_ERROR,
                         "cannot decrypt with the key of certificate '%s' (damaged or changed "
                         "message, or a key the module cannot use): %s%s",
                         r->rec.name, ossl_reason(), kvp_tool_loghint(t));
  return KVP_EXIT_OK;
}

static int decrypt_begin(kvp_tool *t, const smime_args *a, recv_ctx *r)
{
  int rc;
  if ((rc = pick_cert(t, a, r)) != KVP_EXIT_OK ||
      (rc = sm_load_key(t, a, &r->rec, r->x, &r->k)) != KVP_EXIT_OK)
    return rc;
  return start_decrypt(t, r, r->k.pkey);
}

/* The plaintext read to its end (out: where it goes, or NULL), then checked. */
static int decrypt_end(kvp_tool *t, recv_ctx *r, BIO *out)
{
  unsigned char buf[16384];
  int n, werr = 0;
  while ((n = BIO_read(r->plain, buf, (int)sizeof(buf))) > 0)
    if (out && BIO_write(out, buf, n) != n) {
      werr = 1;
      break;
    }
  OPENSSL_cleanse(buf, sizeof(buf));
  int status = werr ? 0 : sm_decrypt_finish(r->m, r->plain);
  r->plain = NULL;
  if (werr)
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "cannot write the content");
  if (status == -2)
    return kvp_tool_fail(t, KVP_EXIT_ERROR,
                         "cannot decrypt with the key of certificate '%s' (damaged or changed "
                         "message): %s",
                         r->rec.name, r->m->err);
  return status == 0 ? KVP_EXIT_OK : kvp_tool_fail(t, KVP_EXIT_ERROR, "%s", r->m->err);
}

/* decrypt and open: read the envelope, start its decryption, open the output. */
static int envelope_begin(kvp_tool *t, smime_args *a, recv_ctx *r)
{
  int rc = recv_begin(t, a, NID_pkcs7_enveloped, r);
  if (rc == KVP_EXIT_OK && (rc = decrypt_begin(t, a, r)) == KVP_EXIT_OK)
    rc = sm_out_open(t, a->v[O_OUT], &r->out);
  return rc;
}

int sm_cmd_decrypt(kvp_tool *t, smime_args *a)
{
  recv_ctx r;
  int rc = envelope_begin(t, a, &r);
  return recv_end(t, &r, rc != KVP_EXIT_OK ? rc : decrypt_end(t, &r, r.out.bio));
}

/* open after the decryption started and the output is open: the signed
 * entity inside is verified while its content is written out. */
static int open_rest(kvp_tool *t, const smime_args *a, recv_ctx *r)
{
  int rc;
  if (!(r->inner = malloc(sizeof(*r->inner))))
    return sm_nomem(t);
  if (sm_msg_begin(r->inner, r->plain, F_AUTO, NID_pkcs7_signed, "the decrypted content") != 0 ||
      sm_signed_stream(r->inner, NULL, a->v[O_BINARY] != NULL, r->out.bio, &r->md) != 0) {
    /* a damaged envelope says so before its content does */
    if ((rc = decrypt_end(t, r, NULL)) == KVP_EXIT_OK)
      rc = kvp_tool_fail(t, KVP_EXIT_ERROR, "%s", r->inner->err);
    return rc;
  }
  if ((rc = decrypt_end(t, r, NULL)) != KVP_EXIT_OK)
    return rc;
  return verify_signers(t, a, a->v[O_FROM], r->inner, r->md);
}

int sm_cmd_open(kvp_tool *t, smime_args *a)
{
  recv_ctx r;
  int rc = envelope_begin(t, a, &r);
  return recv_end(t, &r, rc != KVP_EXIT_OK ? rc : open_rest(t, a, &r));
}
