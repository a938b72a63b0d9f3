/*
 * kvp11 csr / kvp11 cert selfsign: a PKCS#10 certificate request, or a
 * self-signed X.509 v3 certificate, signed by a key that stays in its store.
 *
 * The signature is made through the backend interface, as the module makes
 * it: the tool opens the key's store (store.c), hashes the to-be-signed DER
 * and asks the store to sign the digest with the key. The key is chosen by a
 * registry entry (--cert-name: a private certificate, or a key-only entry),
 * or by its store and name (--vault/--hsm --key; an entry of the account with
 * that key reference names it in messages). Nothing is registered.
 *
 * The public key written into the request or certificate is the key's as the
 * registry or the key store knows it, never the engine's; the signature is
 * checked with it before anything is written, so a module that signed with
 * another key is caught.
 */
#define _POSIX_C_SOURCE 200809L

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "backend/backend.h"
#include "core/cert.h"
#include "core/p11names.h"
#include "core/status.h"
#include "core/util.h"
#include "engine.h"
#include "tool.h"



#define DEFAULT_DAYS 365
#define MAX_DAYS 36500

typedef struct csr_args {
  const char *v[O_COUNT]; /* option values; flags are "" when given */
  int selfsign;           /* cert selfsign, else csr */
  const EVP_MD *md;
  long days;
  const char *account; /* resolved */
} csr_args;

/* The key to sign with, as resolved from the command line. */
typedef struct csr_key {
  char *label;          /* the registry entry's name, or NULL */
  char what[600];       /* "certificate 'NAME'", "entry 'NAME'" (key-only), "keyvault:V/K" */
  EVP_PKEY *pub;        /* the key's public key, from the registry or the key store */
  char *ref;            /* its key reference "hsm:H/K", "keyvault:V/K[/VER]" */
  kvp_tool_store store; /* the key's store, opened (store.c) */
  kvp_key *key;         /* the key, opened in it */
} csr_key;

static const char *const csr_synopsis =
    "csr (--cert-name NAME | --vault V --key K | --hsm H --key K)\n"
    "--subject /CN=.../O=... [--san DNS:a.example,email:x@y,IP:127.0.0.1]\n"
    "[--digest sha256|sha384|sha512] [--pss] [--account A] [--module SO]\n"
    "[--pin-file F] [--out FILE] [--json]";
static const char *const selfsign_synopsis =
    "cert selfsign (--cert-name NAME | --vault V --key K | --hsm H --key K)\n"
    "--subject /CN=.../O=... [--san ...] [--days N] [--digest D]\n"
    "[--pss] [--account A] [--module SO] [--pin-file F] [--out FILE]\n"
    "[--json]";


void kvp_tool_csr_usage(FILE *f)
{
  kvp_tool_synopsis(f, "  kvp11 [-c FILE] ", "csr", csr_synopsis);
}

static void csr_help(FILE *f, int selfsign)
{
  if (selfsign)
    kvp_tool_synopsis(f, "usage: kvp11 [-c FILE] ", "cert selfsign", selfsign_synopsis);
  else
    kvp_tool_synopsis(f, "usage: kvp11 [-c FILE] ", "csr", csr_synopsis);
  fprintf(f,
          "\n"
          "%s"
          "  --cert-name NAME  the key of registry entry NAME of the account (a private\n"
          "                    certificate, or a key without a certificate yet)\n"
          "  --vault V --key K the key K of the configured [vault V] (K may be K/VERSION)\n"
          "  --hsm H --key K   the key labelled K in the configured [hsm H]\n"
          "  --subject S       /TYPE=value/... (e.g. /CN=as2.example.com/O=Example/C=DE);\n"
          "                    '\\/' is a '/' inside a value\n"
          "  --san LIST        subjectAltName: comma-separated DNS:name, email:addr,\n"
          "                    IP:address, URI:uri\n"
          "%s"
          "  --digest D        sha256 (default), sha384, sha512\n"
          "  --pss             RSASSA-PSS signature (RSA keys; salt = digest length)\n"
          "  --account A       default: the first configured account\n"
          "  --module SO       accepted for compatibility; the key store signs directly\n"
          "  --pin-file F      HSM user PIN when the key's [hsm] has no pin_file/pin_env\n"
          "                    (else $KVP11_PIN); the file must be private (0600)\n"
          "  --out FILE        write the PEM there instead of stdout\n"
          "  --json            print {type, key, key_ref, subject, signature, spki, pem}\n"
          "                    (with --out: the file gets the PEM, stdout the JSON)\n"
          "\n"
          "The key signs inside its store: the tool hashes what is signed and the key\n"
          "store signs the digest, as for libkvp11.so. The signature is verified with\n"
          "the key's public key (the registry's, else the store's) before it is written.\n",
          selfsign ? "Writes a self-signed X.509 v3 certificate (PEM): basicConstraints CA:FALSE,\n"
                     "keyUsage, subjectKeyIdentifier, the SANs; serial of 16 random bytes.\n\n"
                   : "Writes a PKCS#10 certificate request (PEM) for the key.\n\n",
          selfsign ? "  --days N          validity in days from now (default 365)\n" : "");
}

static int nomem(const kvp_tool *t)
{
  return kvp_tool_fail(t, KVP_EXIT_ERROR, "out of memory");
}

/* ------------------------------------------------------- subject and SAN */

/*
 * "/TYPE=value/TYPE=value": each part added with X509_NAME_add_entry_by_txt
 * (MBSTRING_UTF8). A backslash makes the next character literal ("\/").
 */
static int parse_subject(kvp_tool *t, const char *s, X509_NAME **out)
{
  X509_NAME *name = NULL;
  char *part = NULL;
  int rc = KVP_EXIT_ERROR, n = 0;

  if (s[0] != '/') {
    kvp_tool_fail(t, rc, "bad --subject '%s': it must start with '/' (/CN=name/O=org)", s);
    goto out;
  }
  if (!(name = X509_NAME_new()) || !(part = malloc(strlen(s) + 1))) {
    nomem(t);
    goto out;
  }
  const char *p = s + 1;
  for (;;) {
    const char *start = p;
    size_t o = 0;
    char *eq = NULL;
    while (*p && *p != '/') {
      if (*p == '\\') {
        if (!p[1]) {
          kvp_tool_fail(t, rc, "bad --subject '%s': it ends with a lone '\\'", s);
          goto out;
        }
        p++;
      } else if (*p == '=' && !eq) {
        eq = part + o;
      }
      part[o++] = *p++;
    }
    part[o] = 0;
    int plen = (int)(p - start);
    if (o == 0) {
      kvp_tool_fail(t, rc, "bad --subject '%s': empty part (two '/' in a row, or a '/' at the end)",
                    s);
      goto out;
    }
    if (!eq || eq == part) {
      kvp_tool_fail(t, rc, "bad --subject: '%.*s' is not TYPE=value", plen, start);
      goto out;
    }
    *eq = 0;
    const char *type = part, *value = eq + 1;
    if (!*value) {
      kvp_tool_fail(t, rc, "bad --subject: '%.*s' has an empty value", plen, start);
      goto out;
    }
    if (OBJ_txt2nid(type) == NID_undef) {
      kvp_tool_fail(t, rc, "bad --subject: unknown attribute type '%s' in '%.*s'", type, plen,
                    start);
      goto out;
    }
    ERR_clear_error();
    if (!X509_NAME_add_entry_by_txt(name, type, MBSTRING_UTF8, (const unsigned char *)value, -1, -1,
                                    0)) {
      kvp_tool_fail(t, rc, "bad --subject: '%.*s' is not a valid %s: %s", plen, start, type,
                    kvp_engine_ossl_reason());
      goto out;
    }
    n++;
    if (!*p)
      break;
    p++;
  }
  if (n == 0) {
    kvp_tool_fail(t, rc, "bad --subject '%s': no attributes", s);
    goto out;
  }
  *out = name;
  name = NULL;
  rc = KVP_EXIT_OK;
out:
  X509_NAME_free(name);
  free(part);
  return rc;
}

static int dns_ok(const char *s)
{
  size_t n = strlen(s);
  if (n == 0 || n > 253 || s[0] == '.' || s[0] == '-' || strstr(s, ".."))
    return 0;
  for (const char *p = s; *p; p++)
    if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
          *p == '-' || *p == '.' || *p == '_' || (*p == '*' && p == s && p[1] == '.')))
      return 0;
  return 1;
}

/* Printable ASCII without spaces. */
static int ia5_ok(const char *s)
{
  if (!*s)
    return 0;
  for (const unsigned char *p = (const unsigned char *)s; *p; p++)
    if (*p <= 0x20 || *p >= 0x7f)
      return 0;
  return 1;
}

static int email_ok(const char *s)
{
  const char *at = strchr(s, '@');
  return ia5_ok(s) && at && at != s && at[1] && !strchr(at + 1, '@');
}

static GENERAL_NAME *ia5_name(int type, const char *v)
{
  GENERAL_NAME *gn = GENERAL_NAME_new();
  ASN1_IA5STRING *ia5 = ASN1_IA5STRING_new();
  if (!gn || !ia5 || !ASN1_STRING_set(ia5, v, (int)strlen(v))) {
    GENERAL_NAME_free(gn);
    ASN1_IA5STRING_free(ia5);
    return NULL;
  }
  GENERAL_NAME_set0_value(gn, type, ia5);
  return gn;
}

/* "DNS:a,email:b@c,IP:1.2.3.4,URI:https://x" into GENERAL_NAMES. */
static int parse_san(kvp_tool *t, const char *s, GENERAL_NAMES **out)
{
  GENERAL_NAMES *gens = NULL;
  char *copy = NULL;
  int rc = KVP_EXIT_ERROR;

  if (!(gens = sk_GENERAL_NAME_new_null()) || !(copy = strdup(s))) {
    nomem(t);
    goto out;
  }
  char *save = NULL, *p = copy;
  if (!*s || s[strlen(s) - 1] == ',' || s[0] == ',' || strstr(s, ",,")) {
    kvp_tool_fail(t, rc, "bad --san '%s': an empty entry", s);
    goto out;
  }
  for (char *e = strtok_r(p, ",", &save); e; e = strtok_r(NULL, ",", &save)) {
    char *colon = strchr(e, ':');
    GENERAL_NAME *gn = NULL;
    if (!colon) {
      kvp_tool_fail(t, rc, "bad --san entry '%s': TYPE:value, TYPE one of DNS, email, IP, URI", e);
      goto out;
    }
    size_t tl = (size_t)(colon - e);
    const char *v = colon + 1;
    if (tl == 3 && !strncasecmp(e, "DNS", 3)) {
      if (!dns_ok(v)) {
        kvp_tool_fail(t, rc, "bad --san entry '%s': '%s' is not a DNS name", e, v);
        goto out;
      }
      gn = ia5_name(GEN_DNS, v);
    } else if (tl == 5 && !strncasecmp(e, "email", 5)) {
      if (!email_ok(v)) {
        kvp_tool_fail(t, rc, "bad --san entry '%s': '%s' is not an email address", e, v);
        goto out;
      }
      gn = ia5_name(GEN_EMAIL, v);
    } else if (tl == 3 && !strncasecmp(e, "URI", 3)) {
      if (!ia5_ok(v) || !strchr(v, ':')) {
        kvp_tool_fail(t, rc, "bad --san entry '%s': '%s' is not a URI", e, v);
        goto out;
      }
      gn = ia5_name(GEN_URI, v);
    } else if (tl == 2 && !strncasecmp(e, "IP", 2)) {
      ASN1_OCTET_STRING *ip = a2i_IPADDRESS(v);
      ERR_clear_error();
      if (!ip) {
        kvp_tool_fail(t, rc, "bad --san entry '%s': '%s' is not an IP address", e, v);
        goto out;
      }
      if (!(gn = GENERAL_NAME_new())) {
        ASN1_OCTET_STRING_free(ip);
      } else {
        GENERAL_NAME_set0_value(gn, GEN_IPADD, ip);
      }
    } else {
      kvp_tool_fail(t, rc, "bad --san entry '%s': unknown type '%.*s' (DNS, email, IP or URI)", e,
                    (int)tl, e);
      goto out;
    }
    if (!gn || !sk_GENERAL_NAME_push(gens, gn)) {
      GENERAL_NAME_free(gn);
      nomem(t);
      goto out;
    }
  }
  *out = gens;
  gens = NULL;
  rc = KVP_EXIT_OK;
out:
  GENERAL_NAMES_free(gens);
  free(copy);
  return rc;
}

/* ------------------------------------------------------------- the key */

static void csr_key_clear(csr_key *k)
{
  if (k->key)
    k->store.be->ops->close_key(k->store.be, k->key);
  kvp_tool_store_close(&k->store);
  free(k->label);
  free(k->ref);
  EVP_PKEY_free(k->pub);
  memset(k, 0, sizeof(*k));
}

/* The public key of a registry entry: its certificate's, or its recorded SPKI. */
static int rec_pub(kvp_tool *t, const kvp_cert_rec *rec, EVP_PKEY **out)
{
  if ((*out = kvp_tool_rec_pubkey(rec)) != NULL)
    return KVP_EXIT_OK;
  if (rec->der_len > 0)
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "certificate '%s': the registered DER does not parse",
                         rec->name);
  return kvp_tool_fail(t, KVP_EXIT_ERROR, "entry '%s' has no certificate and no public key",
                       rec->name);
}

/* --cert-name NAME */
static int key_by_name(kvp_tool *t, const csr_args *a, csr_key *k)
{
  const char *name = a->v[O_CERTNAME];
  kvp_cert_rec rec = {0};
  char err[KVP_ERRLEN] = "";
  int rc;

  int r =
      t->reg ? kvp_registry_get(t->reg, a->account, name, &rec, err, sizeof(err)) : KVP_ENOTFOUND;
  if (r == KVP_ENOTFOUND) {
    rc = kvp_tool_fail(t, KVP_EXIT_ERROR, "account '%s' has no certificate named '%s'", a->account,
                       name);
    goto out;
  }
  if (r != KVP_OK) {
    rc = kvp_tool_fail(t, KVP_EXIT_ERROR, "%s", err);
    goto out;
  }
  if (rec.type != KVP_CERT_PRIVATE) {
    rc = kvp_tool_fail(t, KVP_EXIT_ERROR, "'%s' is a partner's certificate: it has no key", name);
    goto out;
  }
  if ((rc = rec_pub(t, &rec, &k->pub)) != KVP_EXIT_OK)
    goto out;
  if (!(k->label = strdup(name)) || (rec.key_ref && !(k->ref = strdup(rec.key_ref)))) {
    rc = nomem(t);
    goto out;
  }
  snprintf(k->what, sizeof(k->what), "%s '%s'", rec.der_len ? "certificate" : "entry", name);
  rc = KVP_EXIT_OK;
out:
  kvp_cert_rec_clear(&rec);
  return rc;
}

/* A registry entry of the account whose key reference is ref (or ref/VERSION
 * for a Key Vault key); copies its name and public key into k. *found = 0
 * when there is none. */
static int key_in_registry(kvp_tool *t, const csr_args *a, const char *ref, int vault, csr_key *k,
                           int *found)
{
  kvp_cert_rec *recs = NULL;
  size_t n = 0, rl = strlen(ref);
  char err[KVP_ERRLEN] = "";
  int rc = KVP_EXIT_OK;

  *found = 0;
  if (!t->reg)
    return KVP_EXIT_OK;
  if (kvp_registry_list(t->reg, a->account, &recs, &n, err, sizeof(err)) != KVP_OK)
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "%s", err);
  for (size_t i = 0; i < n; i++) {
    const char *kr = recs[i].key_ref;
    if (recs[i].type != KVP_CERT_PRIVATE || !kr || strncmp(kr, ref, rl) != 0)
      continue;
    if (kr[rl] != 0 && !(vault && kr[rl] == '/' && kr[rl + 1] && !strchr(kr + rl + 1, '/')))
      continue;
    if ((rc = rec_pub(t, &recs[i], &k->pub)) != KVP_EXIT_OK)
      break;
    if (!(k->label = strdup(recs[i].name)) || !(k->ref = strdup(kr))) {
      rc = nomem(t);
      break;
    }
    snprintf(k->what, sizeof(k->what), "%s '%s' (%s)", recs[i].der_len ? "certificate" : "entry",
             recs[i].name, kr);
    *found = 1;
    break;
  }
  kvp_cert_rec_free_array(recs, n);
  return rc;
}

/* --vault V --key K / --hsm H --key K: an entry of the account pointing at the
 * key names it in messages; without one the key store's public key is used. */
static int key_by_store(kvp_tool *t, const csr_args *a, csr_key *k)
{
  const int is_hsm = a->v[O_HSM] != NULL;
  const char *store = is_hsm ? a->v[O_HSM] : a->v[O_VAULT];
  char err[KVP_ERRLEN] = "";
  char *scheme = NULL, *pstore = NULL, *pname = NULL;
  int rc = KVP_EXIT_ERROR, found = 0;
  size_t n = strlen("keyvault:/") + strlen(store) + strlen(a->v[O_KEY]) + 1;

  if (!(k->ref = malloc(n)))
    return nomem(t);
  snprintf(k->ref, n, "%s:%s/%s", is_hsm ? "hsm" : "keyvault", store, a->v[O_KEY]);
  if (kvp_keyref_parse(k->ref, &scheme, &pstore, &pname, err, sizeof(err)) != KVP_OK) {
    rc = kvp_tool_fail(t, KVP_EXIT_USAGE, "%s", err);
    goto out;
  }
  char *ref = k->ref;
  k->ref = NULL;
  rc = key_in_registry(t, a, ref, !is_hsm, k, &found);
  if (rc == KVP_EXIT_OK && !found) {
    snprintf(k->what, sizeof(k->what), "%s", ref);
    k->ref = ref;
    ref = NULL;
  }
  free(ref);
out:
  free(scheme);
  free(pstore);
  free(pname);
  return rc;
}

/* Open the key's store and the key (the one way the tool opens a store). */
static int open_signer(kvp_tool *t, const csr_args *a, csr_key *k)
{
  char *kname = NULL;
  int rc = kvp_tool_store_find_ref(t, k->ref, &k->store, &kname);
  if (rc == KVP_EXIT_OK)
    rc = kvp_tool_store_open(t, &k->store, a->v[O_PINFILE], 1);
  if (rc == KVP_EXIT_OK)
    rc = kvp_tool_store_key(t, &k->store, kname, &k->key);
  free(kname);
  if (rc != KVP_EXIT_OK)
    return rc;
  if (!k->pub) { /* no registry entry: the key store's public key */
    if (!EVP_PKEY_up_ref(k->key->pub))
      return nomem(t);
    k->pub = k->key->pub;
  }
  return KVP_EXIT_OK;
}

/* ------------------------------------------------------------- signing */

/* The AlgorithmIdentifier of the signature: RSA PKCS#1 v1.5, RSASSA-PSS
 * (MGF1 with the same digest, salt = digest length) or ECDSA. */
static X509_ALGOR *sig_alg(const csr_args *a, int ec)
{
  X509_ALGOR *alg = X509_ALGOR_new(), *mgf_md = NULL;
  RSA_PSS_PARAMS *pss = NULL;
  ASN1_STRING *params = NULL, *mdstr = NULL;
  int sig_nid = NID_undef, ok = 0;

  if (!alg)
    return NULL;
  if (!a->v[O_PSS]) {
    ok = OBJ_find_sigid_by_algs(&sig_nid, EVP_MD_get_type(a->md),
                                ec ? NID_X9_62_id_ecPublicKey : NID_rsaEncryption) &&
         X509_ALGOR_set0(alg, OBJ_nid2obj(sig_nid), ec ? V_ASN1_UNDEF : V_ASN1_NULL, NULL);
  } else if ((pss = RSA_PSS_PARAMS_new()) && (pss->hashAlgorithm = X509_ALGOR_new()) &&
             (pss->maskGenAlgorithm = X509_ALGOR_new()) && (mgf_md = X509_ALGOR_new()) &&
             (pss->saltLength = ASN1_INTEGER_new())) {
    X509_ALGOR_set_md(pss->hashAlgorithm, a->md);
    X509_ALGOR_set_md(mgf_md, a->md);
    ok = (mdstr = ASN1_item_pack(mgf_md, ASN1_ITEM_rptr(X509_ALGOR), NULL)) != NULL &&
         X509_ALGOR_set0(pss->maskGenAlgorithm, OBJ_nid2obj(NID_mgf1), V_ASN1_SEQUENCE, mdstr) &&
         ASN1_INTEGER_set(pss->saltLength, EVP_MD_get_size(a->md)) &&
         (params = ASN1_item_pack(pss, ASN1_ITEM_rptr(RSA_PSS_PARAMS), NULL)) != NULL &&
         X509_ALGOR_set0(alg, OBJ_nid2obj(NID_rsassaPss), V_ASN1_SEQUENCE, params);
    if (ok)
      params = NULL; /* owned by alg */
    mdstr = ok ? NULL : mdstr;
  }
  if (!ok && mdstr && pss && pss->maskGenAlgorithm && pss->maskGenAlgorithm->parameter == NULL)
    ASN1_STRING_free(mdstr);
  ASN1_STRING_free(params);
  X509_ALGOR_free(mgf_md);
  RSA_PSS_PARAMS_free(pss);
  if (!ok) {
    X509_ALGOR_free(alg);
    return NULL;
  }
  return alg;
}

static kvp_hash md_hash(const EVP_MD *md)
{
  switch (EVP_MD_get_type(md)) {
  case NID_sha384: return KVP_HASH_SHA384;
  case NID_sha512: return KVP_HASH_SHA512;
  default: return KVP_HASH_SHA256;
  }
}

/*
 * Sign tbs (the DER to be signed) with the key in its store, through the
 * backend interface ("sign this digest with this key"): hash it here, the
 * store signs the digest. The signature is a BIT STRING as X.509 carries it
 * (ECDSA: DER of r and s).
 */
static int sign_tbs(kvp_tool *t, const csr_args *a, csr_key *k, const unsigned char *tbs,
                    size_t tbs_len, ASN1_BIT_STRING **out)
{
  unsigned char dg[EVP_MAX_MD_SIZE], sig[1100], *der = NULL;
  unsigned int dlen = 0;
  CK_ULONG slen = sizeof(sig);
  int ec = k->key->type == KVP_KEY_EC, der_len = 0;
  kvp_sig_alg alg = {.scheme = ec ? KVP_SIG_ECDSA : a->v[O_PSS] ? KVP_SIG_RSA_PSS : KVP_SIG_RSA_PKCS1,
                     .hash = ec ? KVP_HASH_NONE : md_hash(a->md),
                     .mgf1 = md_hash(a->md),
                     .salt_len = (size_t)EVP_MD_get_size(a->md)};

  if (!EVP_Digest(tbs, tbs_len, dg, &dlen, a->md, NULL))
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "cannot hash: %s", kvp_engine_ossl_reason());
  if (ec && dlen > (k->key->bits + 7) / 8)
    dlen = (k->key->bits + 7) / 8; /* ECDSA takes the digest's leftmost field-size bits */
  kvp_status_clear();
  CK_RV rv = kvp_backend_sign(k->key, &alg, dg, dlen, sig, &slen);
  if (rv != CKR_OK)
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "cannot sign with %s: %s", k->what,
                         kvp_tool_reason(t, rv));
  if (ec) { /* r||s to the DER SEQUENCE X.509 carries */
    size_t n = 0;
    if ((der = kvp_ecdsa_raw_to_der(sig, slen, &n)) == NULL)
      return nomem(t);
    der_len = (int)n;
  }
  ASN1_BIT_STRING *bs = ASN1_BIT_STRING_new();
  int ok = bs && (ec ? der_len > 0 && ASN1_BIT_STRING_set(bs, der, der_len)
                     : ASN1_BIT_STRING_set(bs, sig, (int)slen));
  OPENSSL_free(der);
  if (!ok) {
    ASN1_BIT_STRING_free(bs);
    return nomem(t);
  }
  /* no unused bits */
  bs->flags &= ~(ASN1_STRING_FLAG_BITS_LEFT | 0x07);
  bs->flags |= ASN1_STRING_FLAG_BITS_LEFT;
  *out = bs;
  return KVP_EXIT_OK;
}

/* Sign the request: its info is the TBS, algorithm and signature set after. */
static int sign_req(kvp_tool *t, const csr_args *a, csr_key *k, X509_REQ *req)
{
  unsigned char *tbs = NULL;
  ASN1_BIT_STRING *sig = NULL;
  X509_ALGOR *alg = sig_alg(a, k->key->type == KVP_KEY_EC);
  int n = i2d_re_X509_REQ_tbs(req, &tbs);
  int rc = !alg || n <= 0 ? nomem(t) : sign_tbs(t, a, k, tbs, (size_t)n, &sig);
  if (rc == KVP_EXIT_OK) {
    if (X509_REQ_set1_signature_algo(req, alg))
      X509_REQ_set0_signature(req, sig);
    else
      rc = nomem(t), ASN1_BIT_STRING_free(sig);
  }
  OPENSSL_free(tbs);
  X509_ALGOR_free(alg);
  return rc;
}

/* Sign the certificate: the algorithm goes into the TBS and beside it. OpenSSL
 * has no setter for a certificate's signature outside X509_sign, so the
 * certificate's own algorithm and signature fields are filled in place. */
static int sign_cert(kvp_tool *t, const csr_args *a, csr_key *k, X509 *x)
{
  unsigned char *tbs = NULL;
  ASN1_BIT_STRING *sig = NULL;
  const ASN1_BIT_STRING *psig = NULL;
  const X509_ALGOR *palg = NULL;
  X509_ALGOR *alg = sig_alg(a, k->key->type == KVP_KEY_EC);
  int rc = KVP_EXIT_ERROR;

  X509_get0_signature(&psig, &palg, x);
  if (!alg || !X509_ALGOR_copy((X509_ALGOR *)X509_get0_tbs_sigalg(x), alg) ||
      !X509_ALGOR_copy((X509_ALGOR *)palg, alg)) {
    rc = nomem(t);
    goto out;
  }
  int n = i2d_re_X509_tbs(x, &tbs);
  if (n <= 0) {
    rc = kvp_tool_fail(t, rc, "cannot encode the certificate: %s", kvp_engine_ossl_reason());
    goto out;
  }
  if ((rc = sign_tbs(t, a, k, tbs, (size_t)n, &sig)) != KVP_EXIT_OK)
    goto out;
  if (!ASN1_STRING_copy((ASN1_BIT_STRING *)psig, sig)) {
    rc = nomem(t);
    goto out;
  }
  ((ASN1_BIT_STRING *)psig)->flags = sig->flags;
  rc = KVP_EXIT_OK;
out:
  ASN1_BIT_STRING_free(sig);
  OPENSSL_free(tbs);
  X509_ALGOR_free(alg);
  return rc;
}

static int add_san_req(STACK_OF(X509_EXTENSION) * *exts, GENERAL_NAMES *san)
{
  return !san || X509V3_add1_i2d(exts, NID_subject_alt_name, san, 0, X509V3_ADD_DEFAULT) == 1;
}

/* The certificate's fields and extensions, before signing. */
static int fill_cert(kvp_tool *t, const csr_args *a, X509 *x, X509_NAME *subject,
                     GENERAL_NAMES *san, EVP_PKEY *pub)
{
  unsigned char serial[16], kid[KVP_KEY_ID_LEN];
  BIGNUM *bn = NULL;
  BASIC_CONSTRAINTS *bc = NULL;
  ASN1_BIT_STRING *ku = NULL;
  ASN1_OCTET_STRING *skid = NULL;
  int ok = 0;

  if (RAND_bytes(serial, sizeof(serial)) != 1)
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "no random serial: %s", kvp_engine_ossl_reason());
  serial[0] &= 0x7f; /* positive */
  serial[0] |= 0x40; /* and 16 bytes long */
  ok = X509_set_version(x, X509_VERSION_3) && (bn = BN_bin2bn(serial, sizeof(serial), NULL)) &&
       BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) && X509_set_subject_name(x, subject) &&
       X509_set_issuer_name(x, subject) && X509_gmtime_adj(X509_getm_notBefore(x), 0) &&
       X509_time_adj_ex(X509_getm_notAfter(x), (int)a->days, 0, NULL) && X509_set_pubkey(x, pub);
  if (ok) {
    int rsa = EVP_PKEY_get_base_id(pub) == EVP_PKEY_RSA;
    ok = (bc = BASIC_CONSTRAINTS_new()) != NULL && (ku = ASN1_BIT_STRING_new()) != NULL &&
         ASN1_BIT_STRING_set_bit(ku, 0, 1) && (!rsa || ASN1_BIT_STRING_set_bit(ku, 2, 1)) &&
         kvp_pubkey_id(pub, kid) == KVP_OK && (skid = ASN1_OCTET_STRING_new()) != NULL &&
         ASN1_OCTET_STRING_set(skid, kid, sizeof(kid)) &&
         X509_add1_ext_i2d(x, NID_basic_constraints, bc, 1, X509V3_ADD_DEFAULT) == 1 &&
         X509_add1_ext_i2d(x, NID_key_usage, ku, 1, X509V3_ADD_DEFAULT) == 1 &&
         X509_add1_ext_i2d(x, NID_subject_key_identifier, skid, 0, X509V3_ADD_DEFAULT) == 1 &&
         (!san || X509_add1_ext_i2d(x, NID_subject_alt_name, san, 0, X509V3_ADD_DEFAULT) == 1);
  }
  BN_free(bn);
  BASIC_CONSTRAINTS_free(bc);
  ASN1_BIT_STRING_free(ku);
  ASN1_OCTET_STRING_free(skid);
  if (!ok)
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "cannot build the certificate: %s",
                         kvp_engine_ossl_reason());
  return KVP_EXIT_OK;
}

/* Write the PEM in mem to --out FILE or stdout. */
static int emit(kvp_tool *t, const csr_args *a, BIO *mem)
{
  char *data = NULL;
  long n = BIO_get_mem_data(mem, &data);
  const char *file = a->v[O_OUT];
  if (n <= 0)
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "nothing to write");
  if (!file) {
    if (fwrite(data, 1, (size_t)n, stdout) != (size_t)n || fflush(stdout) != 0)
      return kvp_tool_fail(t, KVP_EXIT_ERROR, "cannot write stdout: %s", strerror(errno));
    return KVP_EXIT_OK;
  }
  int fd = open(file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0)
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "cannot create %s: %s", file, strerror(errno));
  ssize_t w = write(fd, data, (size_t)n);
  int e = errno;
  if (close(fd) != 0 && w == n) {
    w = -1;
    e = errno;
  }
  if (w != n) {
    unlink(file);
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "cannot write %s: %s", file,
                         w < 0 ? strerror(e) : "short write");
  }
  return KVP_EXIT_OK;
}

/* --json: what was made, for scripts. */
static int emit_json(kvp_tool *t, const csr_args *a, const csr_key *k, BIO *mem,
                     const X509_NAME *subject, const X509_ALGOR *calg, X509_REQ *req)
{
  char *data = NULL, subj[1024] = "", alg[80] = "", fp[72] = "";
  long n = BIO_get_mem_data(mem, &data);
  const X509_ALGOR *ralg = NULL;
  BIO *b = BIO_new(BIO_s_mem());
  char *pem = n > 0 ? strndup(data, (size_t)n) : NULL;

  if (req)
    X509_REQ_get0_signature(req, NULL, &ralg);
  OBJ_obj2txt(alg, sizeof(alg), (calg ? calg : ralg)->algorithm, 0);
  if (b && X509_NAME_print_ex(b, subject, 0, XN_FLAG_RFC2253) >= 0) {
    int m = BIO_read(b, subj, (int)sizeof(subj) - 1);
    subj[m > 0 ? m : 0] = '\0';
  }
  BIO_free(b);
  kvp_pubkey_fingerprint(k->pub, fp);
  json_t *o = json_pack("{s:s, s:s, s:s?, s:s, s:s, s:s, s:s?}", "type",
                        a->selfsign ? "certificate" : "request", "key", k->what, "key_ref", k->ref,
                        "subject", subj, "signature", alg, "spki", fp, "pem", pem);
  free(pem);
  return kvp_tool_print_json(stdout, o) ? kvp_tool_fail(t, KVP_EXIT_ERROR, "cannot format the output")
                                        : KVP_EXIT_OK;
}

static int run(kvp_tool *t, csr_args *a)
{
  X509_NAME *subject = NULL;
  GENERAL_NAMES *san = NULL;
  csr_key key = {0};
  X509_REQ *req = NULL;
  X509 *x = NULL;
  STACK_OF(X509_EXTENSION) *exts = NULL;
  BIO *mem = NULL;
  int rc;

  /* What to sign first: a bad subject or SAN needs no key store. */
  if ((rc = parse_subject(t, a->v[O_SUBJECT], &subject)) != KVP_EXIT_OK ||
      (a->v[O_SAN] && (rc = parse_san(t, a->v[O_SAN], &san)) != KVP_EXIT_OK))
    goto out;
  if ((rc = kvp_tool_load_config(t)) != KVP_EXIT_OK ||
      (rc = kvp_tool_account(t, a->v[O_ACCOUNT], &a->account)) != KVP_EXIT_OK ||
      (rc = kvp_tool_open_registry_ro(t)) != KVP_EXIT_OK)
    goto out;
  rc = a->v[O_CERTNAME] ? key_by_name(t, a, &key) : key_by_store(t, a, &key);
  if (rc != KVP_EXIT_OK || (rc = open_signer(t, a, &key)) != KVP_EXIT_OK)
    goto out;
  rc = KVP_EXIT_ERROR;
  int ktype = EVP_PKEY_get_base_id(key.pub);
  if (ktype != EVP_PKEY_RSA && ktype != EVP_PKEY_EC) {
    kvp_tool_fail(t, rc, "%s: RSA or EC keys only", key.what);
    goto out;
  }
  if (a->v[O_PSS] && ktype != EVP_PKEY_RSA) {
    kvp_tool_fail(t, rc, "--pss: %s is not an RSA key", key.what);
    goto out;
  }

  /* The unsigned request or certificate, with the key's public key. */
  ERR_clear_error();
  if (a->selfsign) {
    if (!(x = X509_new())) {
      nomem(t);
      goto out;
    }
    if ((rc = fill_cert(t, a, x, subject, san, key.pub)) != KVP_EXIT_OK)
      goto out;
    rc = KVP_EXIT_ERROR;
  } else {
    if (!(req = X509_REQ_new()) || !X509_REQ_set_version(req, X509_REQ_VERSION_1) ||
        !X509_REQ_set_subject_name(req, subject) || !X509_REQ_set_pubkey(req, key.pub) ||
        !add_san_req(&exts, san) || (exts && !X509_REQ_add_extensions(req, exts))) {
      kvp_tool_fail(t, rc, "cannot build the request: %s", kvp_engine_ossl_reason());
      goto out;
    }
  }

  /* Sign in the key store. */
  rc = a->selfsign ? sign_cert(t, a, &key, x) : sign_req(t, a, &key, req);
  if (rc != KVP_EXIT_OK)
    goto out;
  rc = KVP_EXIT_ERROR;
  /* The signature must verify with the key's public key as we know it. */
  ERR_clear_error();
  int ok = a->selfsign ? X509_verify(x, key.pub) > 0 : X509_REQ_verify(req, key.pub) > 0;
  if (!ok) {
    kvp_tool_fail(t, rc,
                  "the signature made in the key store does not verify with the public key "
                  "of %s: refused",
                  key.what);
    goto out;
  }
  if (!(mem = BIO_new(BIO_s_mem())) ||
      !(a->selfsign ? PEM_write_bio_X509(mem, x) : PEM_write_bio_X509_REQ(mem, req))) {
    kvp_tool_fail(t, rc, "cannot write the PEM: %s", kvp_engine_ossl_reason());
    goto out;
  }
  rc = a->v[O_JSON] && !a->v[O_OUT] ? KVP_EXIT_OK : emit(t, a, mem);
  if (rc == KVP_EXIT_OK && a->v[O_JSON])
    rc = emit_json(t, a, &key, mem, subject, a->selfsign ? X509_get0_tbs_sigalg(x) : NULL, req);
out:
  BIO_free(mem);
  sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
  X509_free(x);
  X509_REQ_free(req);
  csr_key_clear(&key);
  GENERAL_NAMES_free(san);
  X509_NAME_free(subject);
  return rc;
}

/* ---------------------------------------------------------- arguments */

static int parse_args(kvp_tool *t, int argc, char **argv, csr_args *a)
{
  const char *help = a->selfsign ? "kvp11 cert selfsign --help" : "kvp11 csr --help";
  /* --days: a certificate's validity, selfsign only */
  const uint64_t csr_opts = OPT(O_CERTNAME) | OPT(O_VAULT) | OPT(O_HSM) | OPT(O_KEY) |
                            OPT(O_SUBJECT) | OPT(O_SAN) | OPT(O_DIGEST) | OPT(O_PSS) |
                            OPT(O_ACCOUNT) | OPT(O_MODULE) | OPT(O_OUT) | OPT(O_PINFILE) |
                            OPT(O_JSON);
  const kvp_tool_opts o = {a->selfsign ? csr_opts | OPT(O_DAYS) : csr_opts, 0,
                           a->selfsign ? "cert selfsign" : "csr", help};
  int rc = kvp_tool_parse_opts(t, &o, argc, argv, a->v, NULL);
  if (rc == KVP_TOOL_HELP) {
    csr_help(stdout, a->selfsign);
    return KVP_EXIT_OK;
  }
  if (rc >= 0)
    return rc;
  int sel = (a->v[O_CERTNAME] != NULL) + (a->v[O_VAULT] != NULL) + (a->v[O_HSM] != NULL);
  if (sel != 1)
    return kvp_tool_fail(t, KVP_EXIT_USAGE,
                         "exactly one of --cert-name, --vault or --hsm names the key (see %s)",
                         help);
  if (a->v[O_CERTNAME] && a->v[O_KEY])
    return kvp_tool_fail(t, KVP_EXIT_USAGE, "--key goes with --vault or --hsm, not --cert-name");
  if (!a->v[O_CERTNAME] && (!a->v[O_KEY] || !*a->v[O_KEY]))
    return kvp_tool_fail(t, KVP_EXIT_USAGE, "--%s needs --key (see %s)",
                         a->v[O_VAULT] ? "vault" : "hsm", help);
  if (!a->v[O_SUBJECT])
    return kvp_tool_fail(t, KVP_EXIT_USAGE, "--subject is required (see %s)", help);
  if ((rc = kvp_tool_digest(t, a->v[O_DIGEST], &a->md)) >= 0)
    return rc;
  a->days = DEFAULT_DAYS;
  if (a->v[O_DAYS]) {
    char *end = NULL;
    errno = 0;
    long v = strtol(a->v[O_DAYS], &end, 10);
    if (errno || !end || *end || end == a->v[O_DAYS] || v < 1 || v > MAX_DAYS)
      return kvp_tool_fail(t, KVP_EXIT_USAGE, "bad --days '%s': 1 to %d", a->v[O_DAYS], MAX_DAYS);
    a->days = v;
  }
  if (a->v[O_OUT] && !*a->v[O_OUT])
    return kvp_tool_fail(t, KVP_EXIT_USAGE, "--out needs a file name");
  return -1;
}

int kvp_tool_csr(kvp_tool *t, int argc, char **argv)
{
  csr_args a = {0};
  t->cmd = "csr";
  int rc = parse_args(t, argc, argv, &a);
  return rc >= 0 ? rc : run(t, &a);
}

int kvp_tool_cert_selfsign(kvp_tool *t, int argc, char **argv)
{
  csr_args a = {0};
  a.selfsign = 1;
  t->cmd = "cert selfsign";
  int rc = parse_args(t, argc, argv, &a);
  return rc >= 0 ? rc : run(t, &a);
}
