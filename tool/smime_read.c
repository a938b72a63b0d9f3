/*
 * Streaming verify and decrypt for kvp11 smime (smime.h).
 *
 * OpenSSL parses a CMS message whole (d2i, SMIME_read_CMS): the content is
 * an OCTET STRING in memory. Here the message is read once, in pieces: the
 * BER structure around the content is read with smime_ber.c and re-encoded
 * as a small CMS object without its content (a "head": detached, which CMS
 * allows for both SignedData and EnvelopedData), which OpenSSL decodes; the
 * content is then streamed through OpenSSL's own content chain:
 *   - decrypt: CMS_decrypt_set1_pkey_and_peer on the head (the recipient
 *     infos), then CMS_dataInit(head, content BIO) gives the cipher BIO; the
 *     AES-GCM tag (after the content in AuthEnvelopedData) is handed to the
 *     cipher when the content ends, before its final block;
 *   - verify: the content goes through one digest BIO per digest algorithm
 *     of the message (the multipart/signed micalg) to the output; then the
 *     SignerInfos are read, and CMS_SignerInfo_verify and
 *     CMS_SignerInfo_verify_content check them against those digests.
 */
#define _POSIX_C_SOURCE 200809L

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/err.h>

#include "smime.h"

static int merr(sm_msg *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int merr(sm_msg *m, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  sm_first_err(m->err, sizeof(m->err), fmt, ap);
  va_end(ap);
  return -1;
}

/* The reader's error, named after the input. */
static int derr(sm_msg *m)
{
  if (m->der.err[0])
    return merr(m, "%s: %s", m->what, m->der.err);
  return merr(m, "%s: the CMS structure is damaged", m->what);
}

static const char *form_name(int f)
{
  return f == F_PEM ? "a PEM CMS message" : f == F_DER ? "a DER CMS message" : "an S/MIME message";
}

void sm_msg_free(sm_msg *m)
{
  CMS_ContentInfo_free(m->cms);
  BUF_MEM_free(m->oid);
  BUF_MEM_free(m->body);
  BUF_MEM_free(m->eci);
  sk_X509_ALGOR_pop_free(m->mdalgs, X509_ALGOR_free);
  sm_der_free(&m->der);
  OPENSSL_cleanse(m->src.buf, sizeof(m->src.buf));
  m->cms = NULL;
  m->oid = m->body = m->eci = NULL;
  m->mdalgs = NULL;
}

/* ------------------------------------------------------------------ MIME */

/* The MIME headers up to the blank line: Content-Type, Content-Transfer-Encoding.
 * -1: not a header block. */
static int read_headers(sm_src *s, char *ct, size_t ctlen, char *cte, size_t ctelen)
{
  char line[4096];
  char *cur = NULL;
  size_t curlen = 0, total = 0;
  int n_hdr = 0;
  ct[0] = cte[0] = 0;
  for (;;) {
    size_t n = sm_src_line(s, line, sizeof(line));
    if (n == 0)
      return n_hdr ? 0 : -1;
    total += n;
    if (total > 65536)
      return -1;
    while (n && (line[n - 1] == '\n' || line[n - 1] == '\r'))
      line[--n] = 0;
    if (n == 0)
      return n_hdr ? 0 : -1;
    if (line[0] == ' ' || line[0] == '\t') {
      if (cur && strlen(cur) + n + 1 < curlen)
        strcat(cur, line);
      continue;
    }
    char *colon = strchr(line, ':');
    if (!colon || colon == line)
      return -1;
    n_hdr++;
    *colon = 0;
    const char *v = colon + 1;
    while (*v == ' ' || *v == '\t')
      v++;
    cur = NULL;
    if (!strcasecmp(line, "Content-Type"))
      cur = ct, curlen = ctlen;
    else if (!strcasecmp(line, "Content-Transfer-Encoding"))
      cur = cte, curlen = ctelen;
    if (cur)
      snprintf(cur, curlen, "%s", v);
  }
}

/* The media type of a Content-Type value is t (case-insensitive). */
static int mime_is(const char *ct, const char *t)
{
  size_t n = strlen(t);
  if (strncasecmp(ct, t, n) != 0)
    return 0;
  return ct[n] == 0 || ct[n] == ';' || ct[n] == ' ' || ct[n] == '\t';
}

/* Parameter name of a Content-Type value, unquoted, into out. 0 if present. */
static int mime_param(const char *ct, const char *name, char *out, size_t cap)
{
  size_t nl = strlen(name);
  const char *p = strchr(ct, ';');
  while (p) {
    p++;
    while (*p == ' ' || *p == '\t')
      p++;
    if (!strncasecmp(p, name, nl) && p[nl] == '=') {
      const char *v = p + nl + 1, *e;
      if (*v == '"') {
        v++;
        e = strchr(v, '"');
      } else {
        e = v + strcspn(v, "; \t");
      }
      size_t k = e ? (size_t)(e - v) : strlen(v);
      if (k + 1 > cap)
        return -1;
      memcpy(out, v, k);
      out[k] = 0;
      return 0;
    }
    p = strchr(p, ';');
  }
  return -1;
}

/* line is "--boundary" or "--boundary--" (then only white space); 2: closing. */
static int is_boundary(const char *line, size_t n, const char *b)
{
  size_t bl = strlen(b);
  if (n < 2 + bl || line[0] != '-' || line[1] != '-' || memcmp(line + 2, b, bl) != 0)
    return 0;
  const char *r = line + 2 + bl, *end = line + n;
  int closing = end - r >= 2 && r[0] == '-' && r[1] == '-';
  for (r += closing ? 2 : 0; r < end; r++)
    if (*r != ' ' && *r != '\t' && *r != '\r' && *r != '\n')
      return 0;
  return closing ? 2 : 1;
}

static int smime_head(sm_msg *m)
{
  char ct[1024], cte[64], line[1024];
  if (read_headers(&m->src, ct, sizeof(ct), cte, sizeof(cte)) < 0 || !ct[0])
    return merr(m, "%s is not an S/MIME message: no Content-Type header", m->what);
  if (mime_is(ct, "multipart/signed")) {
    if (mime_param(ct, "boundary", m->boundary, sizeof(m->boundary)) != 0 || !m->boundary[0])
      return merr(m, "%s: multipart/signed without a usable boundary parameter", m->what);
    if (mime_param(ct, "micalg", m->micalg, sizeof(m->micalg)) != 0)
      m->micalg[0] = 0;
    size_t n;
    while ((n = sm_src_line(&m->src, line, sizeof(line))) > 0)
      if (is_boundary(line, n, m->boundary) == 1)
        break;
    if (n == 0)
      return merr(m, "%s: the multipart/signed message has no parts (boundary \"%s\" not found)",
                  m->what, m->boundary);
    m->multipart = 1;
    return 0;
  }
  if (!mime_is(ct, "application/pkcs7-mime") && !mime_is(ct, "application/x-pkcs7-mime"))
    return merr(m, "%s is not an S/MIME message (Content-Type: %.100s)", m->what, ct);
  int b64 = 1;
  if (cte[0] && !strcasecmp(cte, "binary"))
    b64 = 0;
  else if (cte[0] && strcasecmp(cte, "base64") != 0)
    return merr(m, "%s: unsupported Content-Transfer-Encoding '%.40s' (base64 or binary)", m->what,
                cte);
  return sm_der_init(&m->der, &m->src, b64, 0) == 0 ? 0 : merr(m, "out of memory");
}

static int pem_head(sm_msg *m)
{
  char line[1024];
  size_t n;
  while ((n = sm_src_line(&m->src, line, sizeof(line))) > 0) {
    if (strspn(line, " \t\r\n") == n)
      continue;
    if (!strncmp(line, "-----BEGIN CMS-----", 19) || !strncmp(line, "-----BEGIN PKCS7-----", 21))
      return sm_der_init(&m->der, &m->src, 1, 1) == 0 ? 0 : merr(m, "out of memory");
    break;
  }
  return merr(m, "%s is not a PEM CMS message: no -----BEGIN CMS----- line", m->what);
}

/* ------------------------------------------------------------ CMS heads */

/* The next element of f, which must have the tag; appended raw to b. */
static int take(sm_msg *m, sm_frame *f, int tag, BUF_MEM *b, size_t max, const char *what)
{
  sm_hdr h;
  int r = sm_frame_next(&m->der, f, &h);
  if (r < 0)
    return derr(m);
  if (r == 0 || h.tag != tag)
    return merr(m, "%s: the CMS structure has no %s where expected (byte %llu)", m->what, what,
                (unsigned long long)m->der.off);
  return sm_elem_rest(&m->der, &h, b, max) == 0 ? 0 : derr(m);
}

static size_t hdr_len(size_t len)
{
  size_t n = 1;
  if (len < 0x80)
    return 2;
  for (; len; len >>= 8)
    n++;
  return n + 1;
}

/* m->cms: ContentInfo { oid, [0] { SEQUENCE { body, SEQUENCE { eci }, tail } } }. */
static int build_head(sm_msg *m, const void *tail, size_t tail_len)
{
  size_t eci = m->eci->length;
  size_t sd = m->body->length + hdr_len(eci) + eci + tail_len;
  size_t f0 = hdr_len(sd) + sd;
  size_t ci = m->oid->length + hdr_len(f0) + f0;
  BUF_MEM *b = BUF_MEM_new();
  int ok = b && sm_put_hdr(b, 0x30, ci) == 0 && sm_put(b, m->oid->data, m->oid->length) == 0 &&
           sm_put_hdr(b, 0xA0, f0) == 0 && sm_put_hdr(b, 0x30, sd) == 0 &&
           sm_put(b, m->body->data, m->body->length) == 0 && sm_put_hdr(b, 0x30, eci) == 0 &&
           sm_put(b, m->eci->data, eci) == 0 && sm_put(b, tail, tail_len) == 0;
  if (!ok) {
    BUF_MEM_free(b);
    return merr(m, "out of memory");
  }
  const unsigned char *p = (const unsigned char *)b->data;
  ERR_clear_error();
  CMS_ContentInfo_free(m->cms);
  m->cms = d2i_CMS_ContentInfo(NULL, &p, (long)b->length);
  BUF_MEM_free(b);
  if (!m->cms) {
    const char *r = ERR_reason_error_string(ERR_peek_last_error());
    ERR_clear_error();
    return merr(m, "%s: the CMS structure does not parse: %s", m->what, r ? r : "bad encoding");
  }
  return 0;
}

static int env_head(sm_msg *m)
{
  static const unsigned char placeholder_mac[18] = {0x04, 16};
  sm_frame *sd = &m->outer[2];
  sm_hdr h;
  if (take(m, sd, 0x02, m->body, 16, "version") < 0)
    return -1;
  int r = sm_frame_next(&m->der, sd, &h);
  if (r > 0 && h.tag == 0xA0) { /* originatorInfo */
    if (sm_elem_rest(&m->der, &h, m->body, SM_MAX_META) < 0)
      return derr(m);
    r = sm_frame_next(&m->der, sd, &h);
  }
  if (r < 0)
    return derr(m);
  if (r == 0 || h.tag != 0x31)
    return merr(m, "%s: the CMS structure has no recipient infos", m->what);
  if (sm_elem_rest(&m->der, &h, m->body, SM_MAX_META) < 0)
    return derr(m);
  if ((r = sm_frame_next(&m->der, sd, &h)) <= 0 || h.tag != 0x30)
    return r < 0 ? derr(m) : merr(m, "%s: the CMS structure has no encrypted content info", m->what);
  sm_frame_open(&m->der, &h, &m->outer[3]);
  m->n_outer = 4;
  if (take(m, &m->outer[3], 0x06, m->eci, 64, "content type") < 0 ||
      take(m, &m->outer[3], 0x30, m->eci, 4096, "content encryption algorithm") < 0)
    return -1;
  if ((r = sm_frame_next(&m->der, &m->outer[3], &h)) < 0)
    return derr(m);
  if (r == 0 || (h.tag != 0x80 && h.tag != 0xA0))
    return merr(m, "%s: the encrypted content is not in the message", m->what);
  sm_octets_init(&m->oct, &m->der, &h);
  m->has_content = 1;
  int auth = m->nid == NID_id_smime_ct_authEnvelopedData;
  /* AuthEnvelopedData: its mac follows the content; a placeholder for now. */
  return build_head(m, auth ? placeholder_mac : NULL, auth ? sizeof(placeholder_mac) : 0);
}

static int signed_head(sm_msg *m)
{
  sm_frame *sd = &m->outer[2];
  sm_hdr h;
  if (take(m, sd, 0x02, m->body, 16, "version") < 0)
    return -1;
  size_t at = m->body->length;
  if (take(m, sd, 0x31, m->body, SM_MAX_META, "digest algorithms") < 0)
    return -1;
  /* X509_ALGORS is a SEQUENCE OF: decode the SET OF as one. */
  size_t len = m->body->length - at;
  unsigned char *seq = OPENSSL_memdup(m->body->data + at, len);
  const unsigned char *p = seq;
  if (seq)
    seq[0] = 0x30;
  m->mdalgs = seq ? d2i_X509_ALGORS(NULL, &p, (long)len) : NULL;
  OPENSSL_free(seq);
  if (!m->mdalgs)
    return merr(m, "%s: the digest algorithms do not parse", m->what);
  int r = sm_frame_next(&m->der, sd, &h);
  if (r <= 0 || h.tag != 0x30)
    return r < 0 ? derr(m) : merr(m, "%s: the CMS structure has no content info", m->what);
  sm_frame_open(&m->der, &h, &m->outer[3]);
  m->n_outer = 4;
  if (take(m, &m->outer[3], 0x06, m->eci, 64, "content type") < 0)
    return -1;
  if ((r = sm_frame_next(&m->der, &m->outer[3], &h)) < 0)
    return derr(m);
  if (r == 0) { /* detached: the content is elsewhere */
    m->n_outer = 3;
    return 0;
  }
  if (h.tag != 0xA0)
    return merr(m, "%s: unexpected element in the content info", m->what);
  sm_frame_open(&m->der, &h, &m->outer[4]);
  m->n_outer = 5;
  if ((r = sm_frame_next(&m->der, &m->outer[4], &h)) <= 0 || (h.tag != 0x04 && h.tag != 0x24))
    return r < 0 ? derr(m) : merr(m, "%s: the signed content is not an OCTET STRING", m->what);
  sm_octets_init(&m->oct, &m->der, &h);
  m->has_content = 1;
  return 0;
}

static int cms_head(sm_msg *m, int expect)
{
  sm_der *d = &m->der;
  sm_hdr h;
  const char *fn = form_name(m->form);
  if (sm_hdr_read(d, &h) < 0 || h.tag != 0x30)
    return merr(m, "%s is not %s: %s", m->what, fn, d->err[0] ? d->err : "not a CMS ContentInfo");
  sm_frame_open(d, &h, &m->outer[0]);
  if (!(m->oid = BUF_MEM_new()) || !(m->body = BUF_MEM_new()) || !(m->eci = BUF_MEM_new()))
    return merr(m, "out of memory");
  if (sm_frame_next(d, &m->outer[0], &h) <= 0 || h.tag != 0x06 || h.len > 64 ||
      sm_elem_rest(d, &h, m->oid, 80) < 0)
    return merr(m, "%s is not %s: %s", m->what, fn, d->err[0] ? d->err : "not a CMS ContentInfo");
  const unsigned char *p = (const unsigned char *)m->oid->data;
  ASN1_OBJECT *o = d2i_ASN1_OBJECT(NULL, &p, (long)m->oid->length);
  m->nid = o ? OBJ_obj2nid(o) : NID_undef;
  ASN1_OBJECT_free(o);
  const char *sn = m->nid != NID_undef ? OBJ_nid2sn(m->nid) : "unknown";
  if (expect == NID_pkcs7_signed && m->nid != NID_pkcs7_signed)
    return merr(m, "the message is not signed (CMS content type %s)", sn);
  if (expect != NID_pkcs7_signed && m->nid != NID_pkcs7_enveloped &&
      m->nid != NID_id_smime_ct_authEnvelopedData)
    return merr(m, "the message is not encrypted (CMS content type %s)", sn);
  int r = sm_frame_next(d, &m->outer[0], &h);
  if (r <= 0 || h.tag != 0xA0)
    return r < 0 ? derr(m) : merr(m, "%s: the CMS ContentInfo has no content", m->what);
  sm_frame_open(d, &h, &m->outer[1]);
  if ((r = sm_frame_next(d, &m->outer[1], &h)) <= 0 || h.tag != 0x30)
    return r < 0 ? derr(m) : merr(m, "%s: the CMS content is not a SEQUENCE", m->what);
  sm_frame_open(d, &h, &m->outer[2]);
  m->n_outer = 3;
  return m->nid == NID_pkcs7_signed ? signed_head(m) : env_head(m);
}

int sm_msg_begin(sm_msg *m, BIO *in, int form, int expect, const char *what)
{
  const unsigned char *p;
  memset(m, 0, sizeof(*m));
  sm_src_init(&m->src, in);
  snprintf(m->what, sizeof(m->what), "%s", what);
  size_t n = sm_src_peek(&m->src, &p);
  if (n == 0)
    return m->src.ioerr ? merr(m, "cannot read %s", what) : merr(m, "%s is empty", what);
  if (form == F_AUTO) {
    size_t i = 0;
    while (i < n && (p[i] == ' ' || p[i] == '\t' || p[i] == '\r' || p[i] == '\n'))
      i++;
    if (n - i >= 10 && memcmp(p + i, "-----BEGIN", 10) == 0)
      form = F_PEM;
    else if (p[0] == 0x30)
      form = F_DER;
    else
      form = F_SMIME;
  }
  m->form = form;
  if (form == F_SMIME) {
    if (smime_head(m) < 0)
      return -1;
    if (m->multipart) {
      m->nid = NID_pkcs7_signed;
      if (expect != NID_pkcs7_signed)
        return merr(m, "the message is not encrypted (it is multipart/signed)");
      return 0;
    }
  } else if (form == F_PEM) {
    if (pem_head(m) < 0)
      return -1;
  } else if (sm_der_init(&m->der, &m->src, 0, 0) != 0) {
    return merr(m, "out of memory");
  }
  return cms_head(m, expect);
}

/* Close the frames inside SignedData / EnvelopedData (innermost first). */
static int close_inner(sm_msg *m)
{
  for (int i = m->n_outer - 1; i >= 3; i--)
    if (sm_frame_close(&m->der, &m->outer[i], "after the content") < 0)
      return derr(m);
  m->n_outer = 3;
  return 0;
}

static int close_outer(sm_msg *m)
{
  if (sm_frame_close(&m->der, &m->outer[1], "after the content") < 0 ||
      sm_frame_close(&m->der, &m->outer[0], "after the content") < 0)
    return derr(m);
  m->tail_done = 1;
  return 0;
}

/* ---------------------------------------------------------------- decrypt */

/* The content ended: read the rest of the structure; hand the GCM tag on. */
static int env_tail(void *arg)
{
  sm_msg *m = arg;
  sm_hdr h;
  int r, auth = m->nid == NID_id_smime_ct_authEnvelopedData, have_mac = 0;
  if (close_inner(m) < 0)
    return -1;
  while ((r = sm_frame_next(&m->der, &m->outer[2], &h)) > 0) {
    if (auth && h.tag == 0xA1)
      return merr(m, "%s: authenticated attributes in AuthEnvelopedData are not supported", m->what);
    if (auth && h.tag == 0x04 && !have_mac) {
      unsigned char mac[16];
      if (h.len < 4 || h.len > sizeof(mac))
        return merr(m, "%s: bad authentication tag length %llu", m->what, (unsigned long long)h.len);
      if (sm_der_read(&m->der, mac, (size_t)h.len) < 0)
        return derr(m);
      if (!m->cctx || EVP_CIPHER_CTX_ctrl(m->cctx, EVP_CTRL_AEAD_SET_TAG, (int)h.len, mac) <= 0)
        return merr(m, "%s: cannot set the authentication tag", m->what);
      have_mac = 1;
    } else if (sm_elem_skip(&m->der, &h) < 0) {
      return derr(m);
    }
  }
  if (r < 0)
    return derr(m);
  if (auth && !have_mac)
    return merr(m, "%s: the AuthEnvelopedData has no authentication tag", m->what);
  return close_outer(m);
}

int sm_decrypt_stream(sm_msg *m, EVP_PKEY *pkey, X509 *cert, BIO **plain)
{
  *plain = NULL;
  if (CMS_decrypt_set1_pkey_and_peer(m->cms, pkey, cert, NULL) != 1)
    return -1;
  BIO *ob = sm_octets_bio(&m->oct, env_tail, m);
  if (!ob)
    return merr(m, "out of memory");
  BIO *c = CMS_dataInit(m->cms, ob);
  if (!c) {
    BIO_free(ob);
    return -1;
  }
  BIO *cb = BIO_find_type(c, BIO_TYPE_CIPHER);
  if (!cb || BIO_get_cipher_ctx(cb, &m->cctx) <= 0) {
    BIO_free_all(c);
    return merr(m, "%s: no cipher in the content chain", m->what);
  }
  *plain = c;
  return 0;
}

int sm_decrypt_finish(sm_msg *m, BIO *plain)
{
  BIO *cb = plain ? BIO_find_type(plain, BIO_TYPE_CIPHER) : NULL;
  int ok = cb && BIO_get_cipher_status(cb) == 1;
  m->cctx = NULL;
  BIO_free_all(plain);
  if (m->err[0])
    return -1;
  if (m->der.err[0])
    return derr(m);
  if (!m->tail_done)
    return merr(m, "%s: the encrypted content was not read to its end", m->what);
  if (!ok) {
    merr(m, "the content does not decrypt or authenticate");
    return -2;
  }
  return 0;
}

/* ------------------------------------------------------------------ verify */

static int wr(sm_msg *m, BIO *w, const void *p, size_t n)
{
  if (n == 0 || BIO_write(w, p, (int)n) == (int)n)
    return 0;
  return merr(m, "cannot write the content");
}

static BIO *md_push(BIO *top, const EVP_MD *md, int *n)
{
  for (BIO *b = top; b && BIO_method_type(b) == BIO_TYPE_MD; b = BIO_next(b)) {
    const EVP_MD *have = NULL;
    if (BIO_get_md(b, &have) > 0 && have && EVP_MD_get_type(have) == EVP_MD_get_type(md))
      return top;
  }
  BIO *b = BIO_new(BIO_f_md());
  if (!b || !BIO_set_md(b, md)) {
    BIO_free(b);
    return NULL;
  }
  (*n)++;
  return BIO_push(b, top);
}

/* Free a chain of digest BIOs down to (not including) sink. */
static void md_free(BIO *md, BIO *sink)
{
  while (md && md != sink) {
    BIO *next = BIO_pop(md);
    BIO_free(md);
    md = next;
  }
}

/* Digest BIOs over out: the message's algorithms, or the micalg's (all
 * SHA-2 when it names none known). */
static BIO *md_chain(sm_msg *m, BIO *out)
{
  BIO *top = out, *t;
  int n = 0;
  if (m->multipart) {
    char name[64];
    size_t k = 0;
    for (const char *p = m->micalg; *p && k + 1 < sizeof(name); p++)
      if (*p != '-' && *p != '"')
        name[k++] = *p;
    name[k] = 0;
    const EVP_MD *md = k ? EVP_get_digestbyname(name) : NULL;
    if (md && (t = md_push(top, md, &n)))
      top = t;
    if (!md) {
      const EVP_MD *all[] = {EVP_sha256(), EVP_sha384(), EVP_sha512()};
      for (size_t i = 0; i < 3; i++)
        if ((t = md_push(top, all[i], &n)))
          top = t;
    }
  } else {
    for (int i = 0; i < sk_X509_ALGOR_num(m->mdalgs) && n < 4; i++) {
      const EVP_MD *md = EVP_get_digestbyobj(sk_X509_ALGOR_value(m->mdalgs, i)->algorithm);
      if (md && (t = md_push(top, md, &n)))
        top = t;
    }
  }
  if (n == 0) {
    md_free(top, out);
    merr(m, "%s: no digest algorithm of the message is supported", m->what);
    return NULL;
  }
  return top;
}

/* One line of content (n bytes, maybe ending in '\n'): as it is, or made
 * canonical (trailing CRs dropped, CRLF), as OpenSSL does for text. */
static int put_line(sm_msg *m, BIO *w, const char *line, size_t n, int binary)
{
  if (binary || n == 0 || line[n - 1] != '\n')
    return wr(m, w, line, n);
  while (n && (line[n - 1] == '\n' || line[n - 1] == '\r'))
    n--;
  return wr(m, w, line, n) < 0 ? -1 : wr(m, w, "\r\n", 2);
}

/* The first part of a multipart/signed message, to w. The line end before
 * the boundary belongs to the boundary (RFC 2046). */
static int multipart_content(sm_msg *m, int binary, BIO *w)
{
  char line[8192], held[2];
  size_t nheld = 0;
  int bol = 1;
  for (;;) {
    size_t n = sm_src_line(&m->src, line, sizeof(line));
    if (n == 0)
      return merr(m, "%s: the multipart/signed message ends inside its content (no boundary)",
                  m->what);
    int b = bol ? is_boundary(line, n, m->boundary) : 0;
    if (b == 2)
      return merr(m, "%s: the multipart/signed message has no signature part", m->what);
    if (b == 1)
      return 0;
    int full = line[n - 1] == '\n';
    size_t body = n, eol = 0;
    if (full) {
      eol = body >= 2 && line[body - 2] == '\r' ? 2 : 1;
      body -= eol;
    }
    if (nheld && wr(m, w, binary ? held : "\r\n", binary ? nheld : 2) < 0)
      return -1;
    if (!binary && full)
      while (body && line[body - 1] == '\r')
        body--;
    if (wr(m, w, line, body) < 0)
      return -1;
    nheld = eol;
    memcpy(held, line + n - eol, eol);
    bol = full;
  }
}

/* The signature part of a multipart/signed message: m->cms. */
static int multipart_signature(sm_msg *m)
{
  char ct[1024], cte[64];
  sm_hdr h;
  if (read_headers(&m->src, ct, sizeof(ct), cte, sizeof(cte)) < 0)
    return merr(m, "%s: the signature part of the multipart/signed message has no headers",
                m->what);
  if (!mime_is(ct, "application/pkcs7-signature") && !mime_is(ct, "application/x-pkcs7-signature"))
    return merr(m, "%s: the second part of the multipart/signed message is not a signature (%.80s)",
                m->what, ct[0] ? ct : "no Content-Type");
  if (cte[0] && strcasecmp(cte, "base64") != 0)
    return merr(m, "%s: the signature part is not base64", m->what);
  if (sm_der_init(&m->der, &m->src, 1, 0) != 0)
    return merr(m, "out of memory");
  BUF_MEM *sig = BUF_MEM_new();
  if (!sig)
    return merr(m, "out of memory");
  if (sm_hdr_read(&m->der, &h) < 0 || h.tag != 0x30 ||
      sm_elem_rest(&m->der, &h, sig, SM_MAX_META) < 0) {
    BUF_MEM_free(sig);
    return m->der.err[0] ? derr(m) : merr(m, "%s: the signature part is not CMS", m->what);
  }
  const unsigned char *p = (const unsigned char *)sig->data;
  m->cms = d2i_CMS_ContentInfo(NULL, &p, (long)sig->length);
  BUF_MEM_free(sig);
  ERR_clear_error();
  if (!m->cms)
    return merr(m, "%s: the signature part does not parse as CMS", m->what);
  if (OBJ_obj2nid(CMS_get0_type(m->cms)) != NID_pkcs7_signed)
    return merr(m, "%s: the signature part is not CMS SignedData", m->what);
  return 0;
}

/* --content FILE of a pem/der signature, to w. */
static int detached_content(sm_msg *m, BIO *dcont, int binary, BIO *w)
{
  sm_src *s = malloc(sizeof(*s));
  char *line = malloc(8192);
  int rc = 0;
  size_t n;
  if (!s || !line) {
    free(s);
    free(line);
    return merr(m, "out of memory");
  }
  sm_src_init(s, dcont);
  while (rc == 0 && (n = sm_src_line(s, line, 8192)) > 0)
    rc = put_line(m, w, line, n, binary);
  if (rc == 0 && s->ioerr)
    rc = merr(m, "cannot read the --content file");
  free(s);
  free(line);
  return rc;
}

/* After the content: the certificates and SignerInfos; m->cms. */
static int signed_tail(sm_msg *m)
{
  sm_hdr h;
  int r;
  BUF_MEM *tail = BUF_MEM_new();
  if (!tail)
    return merr(m, "out of memory");
  if (close_inner(m) < 0)
    goto bad;
  while ((r = sm_frame_next(&m->der, &m->outer[2], &h)) > 0)
    if (sm_elem_rest(&m->der, &h, tail, SM_MAX_META) < 0)
      break;
  if (m->der.err[0] || close_outer(m) < 0)
    goto bad;
  r = build_head(m, tail->data, tail->length);
  BUF_MEM_free(tail);
  return r;
bad:
  BUF_MEM_free(tail);
  return derr(m);
}

int sm_signed_stream(sm_msg *m, BIO *dcont, int binary, BIO *out, BIO **mdp)
{
  unsigned char buf[16384];
  int rc = -1;
  *mdp = NULL;
  if (m->multipart && dcont)
    return merr(m, "--content: the message is multipart/signed, its content is inside");
  if (!m->multipart && m->has_content && dcont)
    return merr(m, "--content: the message carries its content");
  if (!m->multipart && !m->has_content && !dcont)
    return merr(m, "the signature is detached and its content is missing (give the whole "
                   "multipart/signed message, or --content FILE)");
  BIO *md = md_chain(m, out);
  if (!md)
    return -1;
  if (m->multipart) {
    rc = multipart_content(m, binary, md) == 0 ? multipart_signature(m) : -1;
  } else if (dcont) {
    rc = detached_content(m, dcont, binary, md) == 0 ? signed_tail(m) : -1;
  } else {
    long r;
    while ((r = sm_octets_read(&m->oct, buf, sizeof(buf))) > 0)
      if (wr(m, md, buf, (size_t)r) < 0)
        break;
    rc = r == 0 ? signed_tail(m) : (m->err[0] ? -1 : derr(m));
  }
  OPENSSL_cleanse(buf, sizeof(buf));
  if (rc != 0 || BIO_flush(md) <= 0) {
    md_free(md, out);
    return merr(m, "cannot write the content");
  }
  *mdp = md;
  return 0;
}

void sm_md_free(BIO *md, BIO *sink)
{
  md_free(md, sink);
}

/* 1 when the chain of digest BIOs md hashed the content with the digest of alg. */
static int chain_has(BIO *md, const X509_ALGOR *alg)
{
  int nid = OBJ_obj2nid(alg->algorithm);
  for (BIO *b = md; b && BIO_method_type(b) == BIO_TYPE_MD; b = BIO_next(b)) {
    const EVP_MD *have = NULL;
    if (BIO_get_md(b, &have) > 0 && have && EVP_MD_get_type(have) == nid)
      return 1;
  }
  return 0;
}

int sm_verify_signatures(sm_msg *m, BIO *md)
{
  STACK_OF(CMS_SignerInfo) *sis = CMS_get0_SignerInfos(m->cms);
  ERR_clear_error();
  m->err[0] = 0;
  for (int i = 0; i < sk_CMS_SignerInfo_num(sis); i++) {
    CMS_SignerInfo *si = sk_CMS_SignerInfo_value(sis, i);
    X509_ALGOR *dig = NULL;
    CMS_SignerInfo_get0_algs(si, NULL, NULL, &dig, NULL);
    if (dig != NULL && !chain_has(md, dig)) {
      char name[64];
      OBJ_obj2txt(name, sizeof(name), dig->algorithm, 0);
      return merr(m,
                  "%s: the signature is made with %s, but the message's %s names %s: the "
                  "content was hashed while it streamed, before the signature came (ask the "
                  "sender to correct it)",
                  m->what, name, m->multipart ? "micalg" : "digest algorithm list",
                  m->multipart && m->micalg[0] ? m->micalg : "other digests");
    }
    if (CMS_signed_get_attr_count(si) >= 0 && CMS_SignerInfo_verify(si) <= 0)
      return -1;
    if (CMS_SignerInfo_verify_content(si, md) <= 0)
      return -1;
  }
  return 0;
}
