/*
 * Fuzz target: S/MIME input to `kvp11 smime verify`, `smime decrypt` and
 * `smime open` (tool/smime_recv.c), through the streaming reader
 * (tool/smime_read.c, tool/smime_ber.c).
 *
 * tool/smime_recv.c is compiled into this target (#include below), so the
 * code under test is the tool's own, static functions included; smime.c,
 * smime_read.c, smime_ber.c, smime_io.c and engine.c are linked in:
 *   sm_msg_begin  --inform smime|pem|der or detected; MIME headers,
 *                 multipart/signed boundaries, base64 lines (EVP_Decode*),
 *                 the BER structure around the content read in pieces and
 *                 re-encoded as a CMS head without its content
 *   verify_rest   the content streamed through the digests of the message
 *                 (the micalg of a multipart/signed one; text made canonical
 *                 unless --binary) to the output, the SignerInfos after it;
 *                 verify_signers: the registry's certificates as the signer
 *                 set, signer lookup by SHA-256 thumbprint, validity at the
 *                 signing time, CMS_SignerInfo_verify(_content)
 *   pick_cert     recipient matching (ktri / kari), the refusal of ECDH
 *   start_decrypt the content-encryption key, the cipher over the streamed
 *                 content; decrypt_end: the structure after the content, the
 *                 GCM tag handed to the cipher, padding and tag checked
 *   open_rest     the signed entity inside the decrypted stream, verified
 * One step goes through the engine in the tool and is mirrored: the
 * certificate's private key is held in this process (start_decrypt is given
 * it instead of the engine key that decrypt_begin would load).
 * The helpers of tool/main.c (kvp_tool_fail, ...; main.c has main()) and
 * kvp_tool_isotime (tool/output.c) are replaced below. kvp_tool_fail counts
 * its calls and keeps the last message.
 *
 * Set up once per process (LLVMFuzzerInitialize) under $TMPDIR (or /tmp): a
 * kvp11.conf with one account and a registry with three certificates:
 *   partner  public,  RSA-2048  (self-signed; issues the other two)
 *   me       private, RSA-1024  (decrypt/open; small so decryption is fast)
 *   ec       private, EC P-256  (ECDSA signer, ECDH recipient)
 * Keys and certificates are derived from fixed labels (deterministic primes
 * and scalar; RSA PKCS#1 v1.5 certificate signatures; validity 2020-2099),
 * so a seed or a reproducer written by one process verifies in any other.
 *
 * Input: byte 0 selects the command line, the rest is stdin.
 *   bits 0-1 --inform: 0 detected, 1 smime, 2 pem, 3 der
 *   bit  2   --binary (verify, open; decrypt has no --binary)
 *   bits 3-4 0 smime verify, 1 smime verify --cert N, 2 smime decrypt --cert N,
 *            3 smime open --cert N
 *   bit  5   N: 0 partner (verify) / me (decrypt, open); 1 ec
 *   bit  6   verify: --content; bytes 1-2 are a big-endian length L, the next
 *            L bytes the content, the rest stdin.  open: --from
 *   bit  7   open --from: 0 partner, 1 ec
 * Usage errors of the tool (--content with --inform smime) end the input.
 *
 * Oracles: a command that fails printed exactly one message (tool.h: "exactly
 * one line"), one that succeeds none; a verified message has signers that
 * are registered certificates (byte for byte: the SHA-256 computed here),
 * the --cert / --from one when given, valid at the signing time.
 */
#include "smime_recv.c"

#include <stdarg.h>
#include <sys/stat.h>
#include <unistd.h>


#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/param_build.h>

#include "core/cert.h"
#include "core/log.h"
#include "fuzz_common.h"

#define FUZZ_ACCOUNT "default"
#define FUZZ_NO_MODULE "/dev/null/libkvp11.so" /* never exists: load_key stops */
#define NOT_BEFORE "20200101000000Z"
#define NOT_AFTER "20991231235959Z"

enum { K_PARTNER = 0, K_ME, K_EC, K_COUNT };

static const char *const key_names[K_COUNT] = {"partner", "me", "ec"};

typedef struct fuzz_key {
  EVP_PKEY *pkey;
  X509 *x;
  char sha256[65];
  int64_t not_before, not_after;
} fuzz_key;

static fuzz_key keys[K_COUNT];
static kvp_tool tool;
static char dir[512], conf[600], regpath[600];

/* ---- the helpers of tool/main.c ---- */

static int fail_calls;
static char fail_msg[2 * KVP_ERRLEN];
static int trace; /* KVP11_FUZZ_TRACE=1: one line per input on stderr (what happened) */

int kvp_tool_fail(const kvp_tool *t, int code, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(fail_msg, sizeof(fail_msg), fmt, ap);
  va_end(ap);
  FUZZ_CHECK(fail_msg[0] != '\0');
  fail_calls++;
  return code;
}

void kvp_tool_warn(const kvp_tool *t, const char *fmt, ...)
{
  (void)fmt;
}

int kvp_tool_badopt(const kvp_tool *t, int c, char **argv, const char *help)
{
  return kvp_tool_fail(t, KVP_EXIT_USAGE, "bad option (see %s)", help);
}

int kvp_tool_load_config(kvp_tool *t)
{
  char err[KVP_ERRLEN] = "";
  if (t->cfg != NULL)
    return KVP_EXIT_OK;
  if (kvp_config_load(conf, &t->cfg, err, sizeof(err)) != KVP_OK)
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "%s", err);
  kvp_log_threshold = -1; /* as the tool without -v and log_file */
  return KVP_EXIT_OK;
}

const char *kvp_tool_loghint(const kvp_tool *t)
{
  return " (kvp11 -v shows why)";
}

int kvp_tool_account(kvp_tool *t, const char *name, const char **account)
{
  *account = name != NULL ? name : FUZZ_ACCOUNT;
  return KVP_EXIT_OK;
}

const void *kvp_tool_subcommand(kvp_tool *t, const char *group, int argc, char **argv,
                                void (*usage)(FILE *), const void *table, size_t stride, size_t n,
                                int *rc)
{
  *rc = kvp_tool_fail(t, KVP_EXIT_USAGE, "not in the fuzz target");
  return NULL;
}

/* Usage text is never printed by the target. */
void kvp_tool_synopsis(FILE *f, const char *prefix, const char *cmd, const char *text)
{
  fprintf(f, "%s%s %s\n", prefix, cmd, text);
}

/* As tool/output.c (not linked: the target depends on smime.c alone). */
void kvp_tool_isotime(int64_t t, char out[32])
{
  time_t tt = (time_t)t;
  struct tm tm;
  if (!gmtime_r(&tt, &tm) || !strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm))
    snprintf(out, 32, "@%lld", (long long)t);
}

int kvp_tool_open_registry(kvp_tool *t)
{
  char err[KVP_ERRLEN] = "";
  if (t->reg != NULL)
    return KVP_EXIT_OK;
  if (kvp_registry_open(regpath, 0, &t->reg, err, sizeof(err)) != KVP_OK)
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "%s", err);
  return KVP_EXIT_OK;
}

/* ---- deterministic keys and certificates ---- */

static void __attribute__((noreturn)) die(const char *what)
{
  fprintf(stderr, "fuzz_smime: setup failed: %s\n", what);
  ERR_print_errors_fp(stderr);
  exit(1);
}

/* nbytes (<= 256) pseudo-random bytes from label: SHA-256(label || i) blocks. */
static void expand(const char *label, unsigned char *out, size_t nbytes)
{
  unsigned char block[32], in[128];
  size_t ll = strlen(label);
  unsigned int n = 0;

  if (ll + 1 > sizeof(in))
    die("label");
  memcpy(in, label, ll);
  for (size_t off = 0, i = 0; off < nbytes; off += 32, i++) {
    in[ll] = (unsigned char)i;
    if (!EVP_Digest(in, ll + 1, block, &n, EVP_sha256(), NULL))
      die("sha256");
    memcpy(out + off, block, nbytes - off < 32 ? nbytes - off : 32);
  }
}

/* The first prime p >= an odd number derived from label, top two bits set, gcd(p-1, e) = 1. */
static BIGNUM *det_prime(const char *label, int bits, const BIGNUM *e, BN_CTX *ctx)
{
  unsigned char buf[256];
  BIGNUM *p, *pm1 = BN_new(), *g = BN_new();

  expand(label, buf, (size_t)bits / 8);
  p = BN_bin2bn(buf, bits / 8, NULL);
  if (p == NULL || pm1 == NULL || g == NULL || !BN_set_bit(p, bits - 1) ||
      !BN_set_bit(p, bits - 2) || !BN_set_bit(p, 0))
    die("prime");
  for (;;) {
    if (BN_check_prime(p, ctx, NULL) == 1 && BN_sub(pm1, p, BN_value_one()) &&
        BN_gcd(g, pm1, e, ctx) && BN_is_one(g))
      break;
    if (!BN_add_word(p, 2))
      die("prime");
  }
  BN_free(pm1);
  BN_free(g);
  return p;
}

static EVP_PKEY *det_rsa(const char *label, int bits)
{
  char lp[64], lq[64];
  BN_CTX *ctx = BN_CTX_new();
  BIGNUM *e = BN_new(), *p, *q, *n = BN_new(), *d = BN_new(), *phi = BN_new();
  BIGNUM *p1 = BN_new(), *q1 = BN_new(), *dp = BN_new(), *dq = BN_new(), *qi = BN_new();
  OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
  OSSL_PARAM *params = NULL;
  EVP_PKEY_CTX *pctx = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL);
  EVP_PKEY *pkey = NULL;

  if (ctx == NULL || e == NULL || !BN_set_word(e, 65537))
    die("rsa");
  snprintf(lp, sizeof(lp), "kvp11 fuzz_smime %s p", label);
  snprintf(lq, sizeof(lq), "kvp11 fuzz_smime %s q", label);
  p = det_prime(lp, bits / 2, e, ctx);
  q = det_prime(lq, bits / 2, e, ctx);
  if (BN_cmp(p, q) < 0) { /* p > q, as OpenSSL keeps them */
    BIGNUM *tmp = p;
    p = q;
    q = tmp;
  }
  if (n == NULL || d == NULL || phi == NULL || p1 == NULL || q1 == NULL || dp == NULL ||
      dq == NULL || qi == NULL || bld == NULL || pctx == NULL || !BN_mul(n, p, q, ctx) ||
      !BN_sub(p1, p, BN_value_one()) || !BN_sub(q1, q, BN_value_one()) ||
      !BN_mul(phi, p1, q1, ctx) || !BN_mod_inverse(d, e, phi, ctx) || !BN_mod(dp, d, p1, ctx) ||
      !BN_mod(dq, d, q1, ctx) || !BN_mod_inverse(qi, q, p, ctx) ||
      !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, n) ||
      !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, e) ||
      !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_D, d) ||
      !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_FACTOR1, p) ||
      !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_FACTOR2, q) ||
      !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_EXPONENT1, dp) ||
      !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_EXPONENT2, dq) ||
      !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_COEFFICIENT1, qi) ||
      (params = OSSL_PARAM_BLD_to_param(bld)) == NULL || EVP_PKEY_fromdata_init(pctx) <= 0 ||
      EVP_PKEY_fromdata(pctx, &pkey, EVP_PKEY_KEYPAIR, params) <= 0)
    die("rsa key");
  OSSL_PARAM_free(params);
  OSSL_PARAM_BLD_free(bld);
  EVP_PKEY_CTX_free(pctx);
  BN_clear_free(d);
  BN_clear_free(dp);
  BN_clear_free(dq);
  BN_clear_free(qi);
  BN_clear_free(p);
  BN_clear_free(q);
  BN_clear_free(p1);
  BN_clear_free(q1);
  BN_clear_free(phi);
  BN_free(n);
  BN_free(e);
  BN_CTX_free(ctx);
  return pkey;
}

static EVP_PKEY *det_p256(const char *label)
{
  unsigned char buf[32], pub[65];
  char l[64];
  BN_CTX *ctx = BN_CTX_new();
  EC_GROUP *grp = EC_GROUP_new_by_curve_name(NID_X9_62_prime256v1);
  EC_POINT *pt = grp != NULL ? EC_POINT_new(grp) : NULL;
  BIGNUM *priv = NULL;
  OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
  OSSL_PARAM *params = NULL;
  EVP_PKEY_CTX *pctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
  EVP_PKEY *pkey = NULL;

  snprintf(l, sizeof(l), "kvp11 fuzz_smime %s", label);
  expand(l, buf, sizeof(buf));
  priv = BN_bin2bn(buf, sizeof(buf), NULL);
  if (ctx == NULL || pt == NULL || priv == NULL || bld == NULL || pctx == NULL ||
      !BN_mod(priv, priv, EC_GROUP_get0_order(grp), ctx) || BN_is_zero(priv) ||
      !EC_POINT_mul(grp, pt, priv, NULL, NULL, ctx) ||
      EC_POINT_point2oct(grp, pt, POINT_CONVERSION_UNCOMPRESSED, pub, sizeof(pub), ctx) !=
          sizeof(pub) ||
      !OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0) ||
      !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_PRIV_KEY, priv) ||
      !OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, pub, sizeof(pub)) ||
      (params = OSSL_PARAM_BLD_to_param(bld)) == NULL || EVP_PKEY_fromdata_init(pctx) <= 0 ||
      EVP_PKEY_fromdata(pctx, &pkey, EVP_PKEY_KEYPAIR, params) <= 0)
    die("ec key");
  OSSL_PARAM_free(params);
  OSSL_PARAM_BLD_free(bld);
  EVP_PKEY_CTX_free(pctx);
  BN_clear_free(priv);
  EC_POINT_free(pt);
  EC_GROUP_free(grp);
  BN_CTX_free(ctx);
  return pkey;
}

/* A certificate for pkey, issued by issuer (NULL: self-signed), signed with
 * issuer_key (RSA: deterministic signature). */
static X509 *det_cert(EVP_PKEY *pkey, const char *cn, long serial, X509 *issuer,
                      EVP_PKEY *issuer_key)
{
  X509 *x = X509_new();
  if (x == NULL || !X509_set_version(x, 2) ||
      !ASN1_INTEGER_set(X509_get_serialNumber(x), serial) ||
      !ASN1_TIME_set_string(X509_getm_notBefore(x), NOT_BEFORE) ||
      !ASN1_TIME_set_string(X509_getm_notAfter(x), NOT_AFTER) ||
      !X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "O", MBSTRING_ASC,
                                  (const unsigned char *)"kvp11 fuzz", -1, -1, 0) ||
      !X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC,
                                  (const unsigned char *)cn, -1, -1, 0) ||
      !X509_set_issuer_name(x, X509_get_subject_name(issuer != NULL ? issuer : x)) ||
      !X509_set_pubkey(x, pkey) || X509_sign(x, issuer_key, EVP_sha256()) <= 0)
    die("certificate");
  return x;
}

static void make_keys(void)
{
  keys[K_PARTNER].pkey = det_rsa("partner", 2048);
  keys[K_ME].pkey = det_rsa("me", 1024);
  keys[K_EC].pkey = det_p256("ec");
  keys[K_PARTNER].x = det_cert(keys[K_PARTNER].pkey, "fuzz partner", 1, NULL, keys[K_PARTNER].pkey);
  keys[K_ME].x = det_cert(keys[K_ME].pkey, "fuzz me", 2, keys[K_PARTNER].x, keys[K_PARTNER].pkey);
  keys[K_EC].x = det_cert(keys[K_EC].pkey, "fuzz ec", 3, keys[K_PARTNER].x, keys[K_PARTNER].pkey);
  for (int i = 0; i < K_COUNT; i++) {
    if (sm_sha256_hex(keys[i].x, keys[i].sha256) != 0)
      die("sha256");
  }
}

static void free_keys(void)
{
  for (int i = 0; i < K_COUNT; i++) {
    EVP_PKEY_free(keys[i].pkey);
    X509_free(keys[i].x);
    keys[i].pkey = NULL;
    keys[i].x = NULL;
  }
}

/* ---- setup ---- */

static void cleanup(void)
{
  static const char *const files[] = {"kvp11.conf", "registry.db", "registry.db-wal",
                                      "registry.db-shm", "registry.db-journal"};
  char path[700];

  if (tool.reg != NULL)
    kvp_registry_close(tool.reg);
  if (tool.cfg != NULL)
    kvp_config_free(tool.cfg);
  tool.reg = NULL;
  tool.cfg = NULL;
  free_keys();
  if (dir[0] == '\0')
    return;
  for (size_t i = 0; i < KVP_ARRAY_SIZE(files); i++) {
    snprintf(path, sizeof(path), "%s/%s", dir, files[i]);
    unlink(path);
  }
  rmdir(dir);
}

static void register_keys(void)
{
  char err[KVP_ERRLEN] = "", ref[64];

  for (int i = 0; i < K_COUNT; i++) {
    kvp_cert_rec rec;
    unsigned char *der = NULL;
    int n = i2d_X509(keys[i].x, &der);
    memset(&rec, 0, sizeof(rec));
    if (n <= 0 || kvp_cert_fill_rec(der, (size_t)n, &rec, err, sizeof(err)) != KVP_OK)
      die(err[0] ? err : "certificate");
    OPENSSL_free(der);
    if (strcmp(rec.sha256, keys[i].sha256) != 0)
      die("thumbprint");
    keys[i].not_before = rec.not_before;
    keys[i].not_after = rec.not_after;
    rec.account = strdup(FUZZ_ACCOUNT);
    rec.name = strdup(key_names[i]);
    rec.type = i == K_PARTNER ? KVP_CERT_PUBLIC : KVP_CERT_PRIVATE;
    if (rec.type == KVP_CERT_PRIVATE) {
      snprintf(ref, sizeof(ref), "hsm:fuzz/%s", key_names[i]);
      rec.key_ref = strdup(ref);
    }
    if (rec.account == NULL || rec.name == NULL ||
        kvp_registry_add(tool.reg, &rec, 0, err, sizeof(err)) != KVP_OK)
      die(err[0] ? err : "registry");
    kvp_cert_rec_clear(&rec);
  }
}

static void fuzz_setup(void)
{
  const char *tmp = getenv("TMPDIR");
  FILE *fp;

  snprintf(dir, sizeof(dir), "%s/kvp11-fuzz-smime.%d",
           tmp != NULL && tmp[0] != '\0' ? tmp : "/tmp", (int)getpid());
  snprintf(conf, sizeof(conf), "%s/kvp11.conf", dir);
  snprintf(regpath, sizeof(regpath), "%s/registry.db", dir);
  if (mkdir(dir, 0700) != 0)
    die(dir);
  atexit(cleanup);
  fp = fopen(conf, "w");
  if (fp == NULL)
    die(conf);
  fprintf(fp, "[global]\nregistry = %s\nlog_level = error\nlog_file = /dev/null\n\n"
          "[account " FUZZ_ACCOUNT "]\nlabel = fuzz\n",
          regpath);
  fclose(fp);
  tool.cmd = "smime";
  if (kvp_tool_load_config(&tool) != KVP_EXIT_OK || kvp_tool_open_registry(&tool) != KVP_EXIT_OK)
    die(fail_msg);
  register_keys();
}

/* ---- seeds ---- */

enum {
  B_SMIME = 1,
  B_PEM = 2,
  B_DER = 3,
  B_BINARY = 4,
  B_VERIFY = 0,
  B_VERIFY_CERT = 1 << 3,
  B_DECRYPT = 2 << 3,
  B_OPEN = 3 << 3,
  B_EC = 1 << 5,
  B_CONTENT = 1 << 6, /* verify */
  B_FROM = 1 << 6,    /* open */
  B_FROM_EC = 1 << 7,
};

static const char seed_text[] = "Content-Type: text/plain\n\nkvp11 fuzz seed: an EDI invoice\n"
                                "UNB+UNOC:3+SENDER+RECEIVER+261125:1200+1'\n";

/* Write seed NAME: the header byte, an optional content part, the message. */
static void put_seed(const char *sdir, const char *name, unsigned char hdr, const void *content,
                     size_t clen, BIO *msg)
{
  char *data = NULL;
  long n = BIO_get_mem_data(msg, &data);
  size_t off = 0, len = 1 + ((hdr & B_CONTENT) && (hdr & (3 << 3)) < B_DECRYPT ? 2 + clen : 0) +
                        (n > 0 ? (size_t)n : 0);
  unsigned char *buf = malloc(len);

  if (buf == NULL)
    die("memory");
  buf[off++] = hdr;
  if ((hdr & B_CONTENT) && (hdr & (3 << 3)) < B_DECRYPT) {
    buf[off++] = (unsigned char)(clen >> 8);
    buf[off++] = (unsigned char)clen;
    memcpy(buf + off, content, clen);
    off += clen;
  }
  if (n > 0)
    memcpy(buf + off, data, (size_t)n);
  if (fuzz_seed(sdir, name, buf, len) != 0)
    die(name);
  free(buf);
}

static BIO *mem_bio(void)
{
  BIO *b = BIO_new(BIO_s_mem());
  if (b == NULL)
    die("memory");
  return b;
}

/* Write cms in form (B_SMIME, B_PEM, B_DER); data: the detached content for smime. */
static BIO *out_form(CMS_ContentInfo *cms, int form, const void *data, size_t dlen, int flags)
{
  BIO *out = mem_bio(), *in = NULL;
  int ok;
  if (form == B_PEM)
    ok = PEM_write_bio_CMS(out, cms);
  else if (form == B_DER)
    ok = i2d_CMS_bio(out, cms);
  else {
    in = data != NULL ? BIO_new_mem_buf(data, (int)dlen) : NULL;
    ok = SMIME_write_CMS(out, cms, in, flags);
  }
  BIO_free(in);
  if (!ok)
    die("write");
  return out;
}

/* Signed by keys[signer] (and keys[signer2] if >= 0), as the tool's do_sign does. */
static CMS_ContentInfo *sign_msg(int signer, int signer2, const void *data, size_t dlen,
                                 int flags, const EVP_MD *md)
{
  BIO *in = BIO_new_mem_buf(data, (int)dlen);
  CMS_ContentInfo *cms = CMS_sign(NULL, NULL, NULL, NULL, flags | CMS_PARTIAL);
  if (in == NULL || cms == NULL ||
      CMS_add1_signer(cms, keys[signer].x, keys[signer].pkey, md, flags) == NULL ||
      (signer2 >= 0 &&
       CMS_add1_signer(cms, keys[signer2].x, keys[signer2].pkey, md, flags) == NULL) ||
      !CMS_final(cms, in, NULL, flags))
    die("sign");
  BIO_free(in);
  return cms;
}

/* Encrypted for keys[r] (and keys[r2] if >= 0), as the tool's do_encrypt does. */
static CMS_ContentInfo *encrypt_msg(int r, int r2, int oaep, const EVP_CIPHER *cipher,
                                    const void *data, size_t dlen, int flags)
{
  BIO *in = BIO_new_mem_buf(data, (int)dlen);
  CMS_ContentInfo *cms = CMS_encrypt(NULL, NULL, cipher, flags | CMS_PARTIAL);
  int rs[2] = {r, r2};
  if (in == NULL || cms == NULL)
    die("encrypt");
  for (int i = 0; i < 2 && rs[i] >= 0; i++) {
    int o = oaep && EVP_PKEY_get_base_id(keys[rs[i]].pkey) == EVP_PKEY_RSA;
    CMS_RecipientInfo *ri =
        CMS_add1_recipient_cert(cms, keys[rs[i]].x, flags | (o ? CMS_KEY_PARAM : 0));
    if (ri == NULL ||
        (o && EVP_PKEY_CTX_set_rsa_padding(CMS_RecipientInfo_get0_pkey_ctx(ri),
                                           RSA_PKCS1_OAEP_PADDING) <= 0))
      die("recipient");
  }
  if (!CMS_final(cms, in, NULL, flags))
    die("encrypt");
  BIO_free(in);
  return cms;
}

/* The signed S/MIME entity that `smime seal` puts in the envelope (crlf), or
 * that `openssl cms -sign | openssl cms -encrypt` does (LF line ends). */
static BIO *sealed_entity(int signer, int detached, int binary, int crlf)
{
  int flags = (crlf ? CMS_CRLFEOL : 0) | (detached ? CMS_DETACHED : 0) | (binary ? CMS_BINARY : 0);
  CMS_ContentInfo *cms = sign_msg(signer, -1, seed_text, sizeof(seed_text) - 1, flags, EVP_sha256());
  BIO *out = out_form(cms, B_SMIME, seed_text, sizeof(seed_text) - 1, flags | CMS_REUSE_DIGEST);
  CMS_ContentInfo_free(cms);
  return out;
}

/* A message written by OpenSSL's streaming writers (indefinite lengths, the
 * content in chunks), as `openssl cms -stream` and kvp11 write them. */
static void stream_seed(const char *sdir, const char *name, unsigned char hdr, CMS_ContentInfo *cms,
                        int form, const void *data, size_t len, int flags)
{
  BIO *in = BIO_new_mem_buf(data, (int)len), *out = mem_bio();
  int ok;
  if (cms == NULL || in == NULL)
    die("stream seed");
  flags |= CMS_STREAM;
  ok = form == B_DER   ? i2d_CMS_bio_stream(out, cms, in, flags)
       : form == B_PEM ? PEM_write_bio_CMS_stream(out, cms, in, flags)
                       : SMIME_write_CMS(out, cms, in, flags);
  if (!ok)
    die("stream seed");
  put_seed(sdir, name, hdr, NULL, 0, out);
  BIO_free(out);
  BIO_free(in);
  CMS_ContentInfo_free(cms);
}

static CMS_ContentInfo *stream_envelope(const EVP_CIPHER *cipher)
{
  CMS_ContentInfo *cms = CMS_encrypt(NULL, NULL, cipher, CMS_BINARY | CMS_PARTIAL | CMS_STREAM);
  if (cms == NULL || CMS_add1_recipient_cert(cms, keys[K_ME].x, CMS_BINARY) == NULL)
    die("stream envelope");
  return cms;
}

static void write_stream_seeds(const char *sdir)
{
  const size_t tl = sizeof(seed_text) - 1;
  BIO *entity = mem_bio();
  char *data = NULL;
  long n;
  CMS_ContentInfo *sig = CMS_sign(keys[K_PARTNER].x, keys[K_PARTNER].pkey, NULL, NULL,
                                  CMS_PARTIAL | CMS_STREAM);
  stream_seed(sdir, "verify-stream.smime", B_VERIFY, sig, B_SMIME, seed_text, tl, 0);
  sig = CMS_sign(keys[K_EC].x, keys[K_EC].pkey, NULL, NULL, CMS_BINARY | CMS_PARTIAL | CMS_STREAM);
  stream_seed(sdir, "verify-stream.der", B_VERIFY | B_DER | B_BINARY, sig, B_DER, seed_text, tl,
              CMS_BINARY);
  stream_seed(sdir, "decrypt-stream.der", B_DECRYPT | B_DER, stream_envelope(EVP_aes_256_cbc()),
              B_DER, seed_text, tl, CMS_BINARY);
  stream_seed(sdir, "decrypt-stream-gcm.pem", B_DECRYPT | B_PEM, stream_envelope(EVP_aes_256_gcm()),
              B_PEM, seed_text, tl, CMS_BINARY);
  /* seal: a streamed signed entity inside a streamed envelope */
  sig = CMS_sign(keys[K_PARTNER].x, keys[K_PARTNER].pkey, NULL, NULL,
                 CMS_DETACHED | CMS_PARTIAL | CMS_STREAM);
  BIO *in = BIO_new_mem_buf(seed_text, (int)tl);
  if (sig == NULL || in == NULL ||
      !SMIME_write_CMS(entity, sig, in, CMS_DETACHED | CMS_STREAM | CMS_CRLFEOL))
    die("stream seal");
  n = BIO_get_mem_data(entity, &data);
  stream_seed(sdir, "open-stream-gcm.smime", B_OPEN | B_FROM, stream_envelope(EVP_aes_256_gcm()),
              B_SMIME, data, (size_t)n, CMS_BINARY);
  BIO_free(in);
  BIO_free(entity);
  CMS_ContentInfo_free(sig);
}

static void write_seeds(const char *sdir)
{
  const size_t tl = sizeof(seed_text) - 1;
  static const struct {
    const char *name;
    int signer, signer2, flags, form;
    unsigned char hdr;
  } sigs[] = {
      {"verify-opaque.smime", K_PARTNER, -1, 0, B_SMIME, B_VERIFY},
      {"verify-detached.smime", K_PARTNER, -1, CMS_DETACHED, B_SMIME, B_VERIFY},
      {"verify-detached-binary.smime", K_PARTNER, -1, CMS_DETACHED | CMS_BINARY, B_SMIME,
       B_VERIFY | B_BINARY},
      /* CRLF MIME (as sent over AS2) with binary content (OpenSSL 3.0's reader
       * keeps the CR before the boundary; the streaming reader does not) */
      {"verify-detached-binary-crlf.smime", K_PARTNER, -1, CMS_DETACHED | CMS_BINARY | CMS_CRLFEOL,
       B_SMIME, B_VERIFY | B_BINARY},
      {"verify-cert-detected.smime", K_EC, -1, CMS_DETACHED, 0, B_VERIFY_CERT | B_EC},
      {"verify-cert.pem", K_PARTNER, -1, 0, B_PEM, B_VERIFY_CERT | B_PEM},
      {"verify-ecdsa.der", K_EC, -1, 0, B_DER, B_VERIFY | B_DER},
      {"verify-nocerts.der", K_PARTNER, -1, CMS_NOCERTS, B_DER, B_VERIFY},
      {"verify-two-signers.smime", K_PARTNER, K_EC, CMS_DETACHED, B_SMIME, B_VERIFY},
      {"verify-content.der", K_PARTNER, -1, CMS_DETACHED | CMS_BINARY, B_DER,
       B_VERIFY | B_DER | B_CONTENT | B_BINARY},
      {"verify-content.pem", K_EC, -1, CMS_DETACHED, B_PEM, B_VERIFY | B_PEM | B_CONTENT},
      {"verify-wrong-cert.smime", K_EC, -1, 0, B_SMIME, B_VERIFY_CERT | B_SMIME},
      {"decrypt-signed.smime", K_PARTNER, -1, 0, B_SMIME, B_DECRYPT},
  };
  static const struct {
    const char *name;
    int r, r2, oaep, gcm, form, flags;
    unsigned char hdr;
  } encs[] = {
      {"decrypt-v15.smime", K_ME, -1, 0, 0, B_SMIME, 0, B_DECRYPT},
      {"decrypt-oaep.pem", K_ME, -1, 1, 0, B_PEM, CMS_BINARY, B_DECRYPT | B_PEM},
      {"decrypt-gcm.der", K_ME, -1, 0, 1, B_DER, CMS_BINARY, B_DECRYPT | B_DER},
      {"decrypt-two.smime", K_EC, K_ME, 1, 1, B_SMIME, 0, B_DECRYPT},
      {"decrypt-ecdh.smime", K_EC, -1, 0, 0, B_SMIME, 0, B_DECRYPT | B_EC},
      {"decrypt-not-for-me.der", K_EC, -1, 0, 0, B_DER, 0, B_DECRYPT | B_DER},
      {"verify-enveloped.smime", K_ME, -1, 0, 0, B_SMIME, 0, B_VERIFY},
  };
  static const struct {
    const char *name;
    int signer, detached, oaep, gcm, form, crlf;
    unsigned char hdr;
  } seals[] = {
      {"open-detached.smime", K_PARTNER, 1, 0, 0, B_SMIME, 1, B_OPEN | B_FROM},
      {"open-opaque-oaep-gcm.der", K_EC, 0, 1, 1, B_DER, 1, B_OPEN | B_FROM | B_FROM_EC},
      {"open-binary-lf.smime", K_PARTNER, 1, 0, 0, B_SMIME, 0, B_OPEN | B_BINARY},
      /* binary detached content in a CRLF MIME structure */
      {"open-binary-crlf.pem", K_PARTNER, 1, 0, 0, B_PEM, 1, B_OPEN | B_BINARY},
      {"open-wrong-from.smime", K_PARTNER, 0, 0, 0, B_SMIME, 1, B_OPEN | B_FROM | B_FROM_EC},
  };
  BIO *out;
  CMS_ContentInfo *cms;

  for (size_t i = 0; i < KVP_ARRAY_SIZE(sigs); i++) {
    const EVP_MD *md = i % 3 == 1 ? EVP_sha384() : i % 3 == 2 ? EVP_sha512() : EVP_sha256();
    int form = sigs[i].form != 0 ? sigs[i].form : B_SMIME;
    cms = sign_msg(sigs[i].signer, sigs[i].signer2, seed_text, tl, sigs[i].flags, md);
    out = out_form(cms, form, seed_text, tl, sigs[i].flags | CMS_REUSE_DIGEST);
    put_seed(sdir, sigs[i].name, sigs[i].hdr, seed_text, tl, out);
    BIO_free(out);
    CMS_ContentInfo_free(cms);
  }
  for (size_t i = 0; i < KVP_ARRAY_SIZE(encs); i++) {
    cms = encrypt_msg(encs[i].r, encs[i].r2, encs[i].oaep,
                      encs[i].gcm ? EVP_aes_256_gcm() : EVP_aes_256_cbc(), seed_text, tl,
                      encs[i].flags);
    out = out_form(cms, encs[i].form, NULL, 0, encs[i].flags);
    put_seed(sdir, encs[i].name, encs[i].hdr, NULL, 0, out);
    BIO_free(out);
    CMS_ContentInfo_free(cms);
  }
  for (size_t i = 0; i < KVP_ARRAY_SIZE(seals); i++) {
    BIO *entity = sealed_entity(seals[i].signer, seals[i].detached, seals[i].hdr & B_BINARY,
                                seals[i].crlf);
    char *data = NULL;
    long n = BIO_get_mem_data(entity, &data);
    cms = encrypt_msg(K_ME, -1, seals[i].oaep, seals[i].gcm ? EVP_aes_256_gcm() : EVP_aes_256_cbc(),
                      data, (size_t)n, CMS_BINARY);
    out = out_form(cms, seals[i].form, NULL, 0, CMS_BINARY);
    put_seed(sdir, seals[i].name, seals[i].hdr, NULL, 0, out);
    BIO_free(out);
    BIO_free(entity);
    CMS_ContentInfo_free(cms);
  }
  /* a signature by a key that is not registered */
  {
    EVP_PKEY *other = det_rsa("stranger", 1024);
    X509 *ox = det_cert(other, "fuzz stranger", 9, NULL, other);
    BIO *in = BIO_new_mem_buf(seed_text, (int)tl);
    cms = in != NULL ? CMS_sign(ox, other, NULL, in, 0) : NULL;
    if (cms == NULL)
      die("sign");
    out = out_form(cms, B_SMIME, NULL, 0, 0);
    put_seed(sdir, "verify-stranger.smime", B_VERIFY, NULL, 0, out);
    BIO_free(out);
    BIO_free(in);
    CMS_ContentInfo_free(cms);
    X509_free(ox);
    EVP_PKEY_free(other);
  }
  {
    BIO *b = mem_bio();
    BIO_puts(b, "MIME-Version: 1.0\nContent-Type: multipart/signed; protocol=\"application/"
                "pkcs7-signature\"; micalg=sha-256; boundary=\"b\"\n\n--b\n\nhello\n--b\n"
                "Content-Type: application/pkcs7-signature\n"
                "Content-Transfer-Encoding: base64\n\nMAA=\n--b--\n");
    put_seed(sdir, "garbage-multipart.smime", B_VERIFY, NULL, 0, b);
    BIO_free(b);
  }
  write_stream_seeds(sdir);
}

/* ---- one input ---- */

/* After a successful verify: every signer is registered, the expected one if
 * given, and valid at the signing time. */
static void check_signers(CMS_ContentInfo *cms, int only)
{
  STACK_OF(CMS_SignerInfo) *sis = CMS_get0_SignerInfos(cms);
  FUZZ_CHECK(sis != NULL && sk_CMS_SignerInfo_num(sis) > 0);
  for (int i = 0; i < sk_CMS_SignerInfo_num(sis); i++) {
    CMS_SignerInfo *si = sk_CMS_SignerInfo_value(sis, i);
    X509 *signer = NULL;
    char fp[65];
    int k = -1;
    int64_t st;
    CMS_SignerInfo_get0_algs(si, NULL, &signer, NULL, NULL);
    FUZZ_CHECK(signer != NULL);
    FUZZ_CHECK(sm_sha256_hex(signer, fp) == 0);
    for (int j = 0; j < K_COUNT; j++)
      if (strcmp(fp, keys[j].sha256) == 0)
        k = j;
    FUZZ_CHECK(k >= 0);
    FUZZ_CHECK(only < 0 || k == only);
    st = signing_time(si);
    FUZZ_CHECK(st < 0 || (st >= keys[k].not_before && st <= keys[k].not_after));
  }
}

/* recv_begin of smime_recv.c, over the fuzz input instead of a file; the
 * output is a memory BIO. */
static int fuzz_begin(smime_args *a, const uint8_t *data, size_t size, int expect, recv_ctx *r)
{
  memset(r, 0, sizeof(*r));
  if (sm_setup(&tool, a) != KVP_EXIT_OK)
    return KVP_EXIT_ERROR;
  r->in = BIO_new_mem_buf(size > 0 ? data : (const uint8_t *)"", (int)size);
  r->out.bio = BIO_new(BIO_s_mem());
  r->m = malloc(sizeof(*r->m));
  FUZZ_CHECK(r->in != NULL && r->out.bio != NULL && r->m != NULL);
  if (sm_msg_begin(r->m, r->in, a->inform, expect, "stdin") != 0)
    return kvp_tool_fail(&tool, KVP_EXIT_ERROR, "%s", r->m->err);
  return KVP_EXIT_OK;
}

/* decrypt_begin with the certificate's key held here instead of the engine's. */
static int fuzz_decrypt_begin(smime_args *a, int k, recv_ctx *r)
{
  int rc = pick_cert(&tool, a, r);
  if (rc != KVP_EXIT_OK)
    return rc;
  FUZZ_CHECK(X509_cmp(r->x, keys[k].x) == 0);
  return start_decrypt(&tool, r, keys[k].pkey);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
  const char *sdir = fuzz_seed_dir();
  make_keys();
  if (sdir != NULL) {
    write_seeds(sdir);
    free_keys();
    exit(0);
  }
  fuzz_setup();
  trace = getenv("KVP11_FUZZ_TRACE") != NULL && strcmp(getenv("KVP11_FUZZ_TRACE"), "1") == 0;
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  static const int inform[4] = {F_AUTO, F_SMIME, F_PEM, F_DER};
  smime_args a;
  recv_ctx r;
  BIO *content = NULL;
  unsigned hdr;
  int cmd, k = K_ME, rc, only = -1;

  if (size < 1)
    return 0;
  hdr = data[0];
  data++;
  size--;
  cmd = (hdr >> 3) & 3;
  memset(&a, 0, sizeof(a));
  a.account = FUZZ_ACCOUNT;
  a.inform = inform[hdr & 3];
  a.outform = F_SMIME;
  a.md = EVP_sha256();
  a.cipher = EVP_aes_256_cbc();
  a.v[O_MODULE] = FUZZ_NO_MODULE;
  if ((hdr & 4) && cmd != 2)
    a.v[O_BINARY] = "";
  if (cmd == 0 || cmd == 1) {
    /* smime verify [--cert N] [--content FILE] */
    if (cmd == 1) {
      only = hdr & B_EC ? K_EC : K_PARTNER;
      a.v[O_CERT] = key_names[only];
    }
    if (hdr & B_CONTENT) {
      size_t clen;
      if (a.inform == F_SMIME || size < 2)
        return 0; /* a usage error of the tool */
      clen = ((size_t)data[0] << 8) | data[1];
      data += 2;
      size -= 2;
      if (clen > size)
        clen = size;
      content = BIO_new_mem_buf(clen > 0 ? data : (const uint8_t *)"", (int)clen);
      FUZZ_CHECK(content != NULL);
      data += clen;
      size -= clen;
    }
    tool.cmd = "smime verify";
  } else {
    k = hdr & B_EC ? K_EC : K_ME;
    a.v[O_CERT] = key_names[k];
    if (cmd == 3 && (hdr & B_FROM)) {
      only = hdr & B_FROM_EC ? K_EC : K_PARTNER;
      a.v[O_FROM] = key_names[only];
    }
    tool.cmd = cmd == 2 ? "smime decrypt" : "smime open";
  }

  fail_calls = 0;
  rc = fuzz_begin(&a, data, size, cmd <= 1 ? NID_pkcs7_signed : NID_pkcs7_enveloped, &r);
  FUZZ_CHECK(rc == KVP_EXIT_OK ? fail_calls == 0 : fail_calls == 1);
  if (rc != KVP_EXIT_OK)
    goto out;
  if (cmd <= 1) {
    r.content = content;
    content = NULL;
    rc = verify_rest(&tool, &a, &r);
    FUZZ_CHECK(rc == KVP_EXIT_OK ? fail_calls == 0 : fail_calls == 1);
    if (rc == KVP_EXIT_OK)
      check_signers(r.m->cms, only);
  } else if ((rc = fuzz_decrypt_begin(&a, k, &r)) == KVP_EXIT_OK) {
    rc = cmd == 2 ? decrypt_end(&tool, &r, r.out.bio) : open_rest(&tool, &a, &r);
    FUZZ_CHECK(rc == KVP_EXIT_OK ? fail_calls == 0 : fail_calls == 1);
    if (rc == KVP_EXIT_OK && cmd == 3)
      check_signers(r.inner->cms, only);
  } else {
    FUZZ_CHECK(fail_calls == 1);
  }
out:
  if (trace)
    fprintf(stderr, "fuzz_smime: %s: %s%s\n", tool.cmd, rc == KVP_EXIT_OK ? "ok" : "failed: ",
            rc == KVP_EXIT_OK ? "" : fail_msg);
  recv_end(&tool, &r, KVP_EXIT_ERROR); /* the memory output has no file to commit */
  BIO_free(content);
  ERR_clear_error();
  return 0;
}
