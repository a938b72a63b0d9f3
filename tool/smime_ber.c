/*
 * The streaming reader under kvp11 smime (smime.h): a byte source with
 * lookahead, the DER bytes of a message (raw, or base64 decoded with
 * OpenSSL's EVP_Decode*), BER headers and frames, and the octets of an
 * OCTET STRING of any size and length form, also as a BIO for OpenSSL's CMS
 * content chain. Nothing is held beyond a fixed buffer, except what a
 * caller collects on purpose (sm_elem_rest, bounded).
 */
#define _POSIX_C_SOURCE 200809L

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "smime.h"

/* ---------------------------------------------------------------- source */

void sm_src_init(sm_src *s, BIO *bio)
{
  s->bio = bio;
  s->pos = s->len = 0;
  s->eof = s->ioerr = 0;
  s->off = s->line = 0;
}

static int src_fill(sm_src *s)
{
  if (s->pos < s->len)
    return 1;
  if (s->eof)
    return 0;
  s->pos = s->len = 0;
  int r = BIO_read(s->bio, s->buf, (int)sizeof(s->buf));
  if (r > 0) {
    s->len = (size_t)r;
    return 1;
  }
  s->eof = 1;
  if (r < 0)
    s->ioerr = 1;
  return 0;
}

size_t sm_src_peek(sm_src *s, const unsigned char **p)
{
  if (!src_fill(s))
    return 0;
  *p = s->buf + s->pos;
  return s->len - s->pos;
}

static void src_skip(sm_src *s, size_t n)
{
  s->pos += n;
  s->off += n;
}

size_t sm_src_line(sm_src *s, char *line, size_t cap)
{
  size_t n = 0;
  while (n + 1 < cap && src_fill(s)) {
    const unsigned char *p = s->buf + s->pos;
    size_t avail = s->len - s->pos, room = cap - 1 - n;
    size_t k = avail < room ? avail : room;
    const unsigned char *nl = memchr(p, '\n', k);
    if (nl)
      k = (size_t)(nl - p) + 1;
    memcpy(line + n, p, k);
    n += k;
    src_skip(s, k);
    if (nl) {
      s->line++;
      break;
    }
  }
  line[n] = 0;
  return n;
}

/* ------------------------------------------------------------- DER bytes */

int sm_der_init(sm_der *d, sm_src *src, int b64, int pem)
{
  memset(d, 0, sizeof(*d));
  d->src = src;
  d->bol = 1; /* every caller starts at the beginning of a line */
  d->b64 = b64;
  d->pem = pem;
  if (b64) {
    if (!(d->ctx = EVP_ENCODE_CTX_new()))
      return -1;
    EVP_DecodeInit(d->ctx);
  }
  return 0;
}

void sm_der_free(sm_der *d)
{
  EVP_ENCODE_CTX_free(d->ctx);
  OPENSSL_cleanse(d->out, sizeof(d->out));
  d->ctx = NULL;
}

static void der_err(sm_der *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void sm_first_err(char *err, size_t len, const char *fmt, va_list ap)
{
  if (!err[0])
    vsnprintf(err, len, fmt, ap);
}

static void der_err(sm_der *d, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  sm_first_err(d->err, sizeof(d->err), fmt, ap);
  va_end(ap);
}

/* The base64 ended (EOF, or a line starting with '-'). */
static int b64_final(sm_der *d)
{
  int ol = 0;
  d->done = 1;
  if (EVP_DecodeFinal(d->ctx, d->out, &ol) < 0) {
    der_err(d, "the base64 ends in the middle of a 4-character group (line %llu)", (unsigned long long)d->src->line + 1);
    return -1;
  }
  d->opos = 0;
  d->olen = (size_t)ol;
  return ol > 0;
}

/* Decode the next piece of base64: 1 bytes in out, 0 the end, -1 error. */
static int b64_fill(sm_der *d)
{
  sm_src *s = d->src;
  while (d->opos == d->olen) {
    const unsigned char *p;
    if (d->done)
      return 0;
    size_t n = sm_src_peek(s, &p);
    if (n == 0)
      return b64_final(d);
    if (p[0] == '-' && d->bol)
      return b64_final(d); /* -----END ..., or a MIME boundary */
    if (n > 24576)
      n = 24576;
    const unsigned char *dash = memchr(p, '-', n);
    if (dash)
      n = (size_t)(dash - p);
    if (n == 0) {
      der_err(d, "line %llu is not base64", (unsigned long long)s->line + 1);
      return -1;
    }
    int ol = 0;
    for (const unsigned char *q = p, *e = p + n; (q = memchr(q, '\n', (size_t)(e - q))) != NULL; q++)
      s->line++;
    int r = EVP_DecodeUpdate(d->ctx, d->out, &ol, p, (int)n);
    d->bol = p[n - 1] == '\n';
    src_skip(s, n);
    if (r < 0) {
      der_err(d, "the base64 is damaged (before line %llu)", (unsigned long long)s->line + 1);
      return -1;
    }
    d->opos = 0;
    d->olen = (size_t)ol;
  }
  return 1;
}

long sm_der_read_some(sm_der *d, unsigned char *p, size_t n)
{
  if (d->err[0])
    return -1;
  if (!d->b64) {
    const unsigned char *q;
    size_t k = sm_src_peek(d->src, &q);
    if (k == 0)
      return d->src->ioerr ? (der_err(d, "read error"), -1) : 0;
    if (k > n)
      k = n;
    memcpy(p, q, k);
    src_skip(d->src, k);
    d->off += k;
    return (long)k;
  }
  int r = b64_fill(d);
  if (r <= 0)
    return r;
  size_t k = d->olen - d->opos;
  if (k > n)
    k = n;
  memcpy(p, d->out + d->opos, k);
  d->opos += k;
  d->off += k;
  return (long)k;
}

int sm_der_read(sm_der *d, unsigned char *p, size_t n)
{
  while (n > 0) {
    long r = sm_der_read_some(d, p, n);
    if (r < 0)
      return -1;
    if (r == 0) {
      der_err(d, "the message is truncated: it ends inside the CMS structure (after %llu bytes of it)", (unsigned long long)d->off);
      return -1;
    }
    p += r;
    n -= (size_t)r;
  }
  return 0;
}

/* ------------------------------------------------------------------- BER */

int sm_hdr_read(sm_der *d, sm_hdr *h)
{
  unsigned char b[2];
  uint64_t at = d->off;
  memset(h, 0, sizeof(*h));
  if (sm_der_read(d, b, 2) < 0)
    return -1;
  h->tag = b[0];
  h->raw[0] = b[0];
  h->raw[1] = b[1];
  h->rawlen = 2;
  if ((b[0] & 0x1f) == 0x1f) {
    der_err(d, "unsupported ASN.1 tag at byte %llu of the CMS structure", (unsigned long long)at);
    return -1;
  }
  if (b[1] < 0x80) {
    h->len = b[1];
  } else if (b[1] == 0x80) {
    if (!(b[0] & 0x20)) {
      der_err(d, "bad ASN.1 length at byte %llu of the CMS structure", (unsigned long long)at);
      return -1;
    }
    h->indef = 1;
  } else {
    size_t nb = b[1] & 0x7f;
    if (nb > 8 || sm_der_read(d, h->raw + 2, nb) < 0) {
      der_err(d, "bad ASN.1 length at byte %llu of the CMS structure", (unsigned long long)at);
      return -1;
    }
    h->rawlen += nb;
    for (size_t i = 0; i < nb; i++)
      h->len = (h->len << 8) | h->raw[2 + i];
    if (h->len > ((uint64_t)1 << 60)) {
      der_err(d, "bad ASN.1 length at byte %llu of the CMS structure", (unsigned long long)at);
      return -1;
    }
  }
  return 0;
}

static int is_eoc(const sm_hdr *h)
{
  return h->tag == 0 && !h->indef && h->len == 0;
}

void sm_frame_open(const sm_der *d, const sm_hdr *h, sm_frame *f)
{
  f->indef = h->indef;
  f->end = d->off + h->len;
}

int sm_frame_next(sm_der *d, sm_frame *f, sm_hdr *h)
{
  if (!f->indef) {
    if (d->off == f->end)
      return 0;
    if (d->off > f->end) {
      der_err(d, "an ASN.1 element overruns its parent (byte %llu of the CMS structure)", (unsigned long long)d->off);
      return -1;
    }
  }
  if (sm_hdr_read(d, h) < 0)
    return -1;
  if (is_eoc(h)) {
    if (f->indef)
      return 0;
    der_err(d, "unexpected end-of-contents at byte %llu of the CMS structure", (unsigned long long)d->off);
    return -1;
  }
  if (!f->indef && !h->indef && d->off + h->len > f->end) {
    der_err(d, "an ASN.1 element overruns its parent (byte %llu of the CMS structure)", (unsigned long long)d->off);
    return -1;
  }
  return 1;
}

int sm_put(BUF_MEM *b, const void *p, size_t n)
{
  size_t at = b->length;
  if (n == 0)
    return 0;
  if (BUF_MEM_grow_clean(b, at + n) != at + n)
    return -1;
  memcpy(b->data + at, p, n);
  return 0;
}

int sm_put_hdr(BUF_MEM *b, int tag, size_t len)
{
  unsigned char h[10];
  size_t n = 0;
  h[n++] = (unsigned char)tag;
  if (len < 0x80) {
    h[n++] = (unsigned char)len;
  } else {
    size_t nb = 0;
    for (size_t l = len; l; l >>= 8)
      nb++;
    h[n++] = (unsigned char)(0x80 | nb);
    for (size_t i = nb; i > 0; i--)
      h[n++] = (unsigned char)(len >> (8 * (i - 1)));
  }
  return sm_put(b, h, n);
}

static int elem_rest(sm_der *d, const sm_hdr *h, BUF_MEM *b, size_t max, int depth)
{
  unsigned char tmp[4096];
  if (depth > 32) {
    der_err(d, "ASN.1 nested too deeply (byte %llu of the CMS structure)", (unsigned long long)d->off);
    return -1;
  }
  if (b && (b->length + h->rawlen > max || sm_put(b, h->raw, h->rawlen) < 0))
    goto big;
  if (!h->indef) {
    uint64_t left = h->len;
    if (b && b->length + left > max)
      goto big;
    while (left > 0) {
      size_t k = left < sizeof(tmp) ? (size_t)left : sizeof(tmp);
      if (sm_der_read(d, tmp, k) < 0 || (b && sm_put(b, tmp, k) < 0))
        return -1;
      left -= k;
    }
    return 0;
  }
  for (;;) {
    sm_hdr in;
    if (sm_hdr_read(d, &in) < 0)
      return -1;
    if (is_eoc(&in))
      return b && sm_put(b, in.raw, in.rawlen) < 0 ? -1 : 0;
    if (elem_rest(d, &in, b, max, depth + 1) < 0)
      return -1;
  }
big:
  der_err(d, "the CMS structure around the content is too large (more than %llu bytes)", (unsigned long long)max);
  return -1;
}

int sm_elem_rest(sm_der *d, const sm_hdr *h, BUF_MEM *b, size_t max)
{
  return elem_rest(d, h, b, max, 0);
}

int sm_elem_skip(sm_der *d, const sm_hdr *h)
{
  return elem_rest(d, h, NULL, 0, 0);
}

int sm_frame_close(sm_der *d, sm_frame *f, const char *what)
{
  sm_hdr h;
  int r = sm_frame_next(d, f, &h);
  if (r > 0)
    der_err(d, "%s: unexpected ASN.1 element at byte %llu of the CMS structure", what,
            (unsigned long long)d->off);
  return r == 0 ? 0 : -1;
}

/* ---------------------------------------------------------------- octets */

int sm_octets_init(sm_octets *o, sm_der *d, const sm_hdr *h)
{
  memset(o, 0, sizeof(*o));
  o->d = d;
  if (!(h->tag & 0x20)) {
    o->prim_top = 1;
    o->left = h->len;
    return 0;
  }
  sm_frame_open(d, h, &o->stk[0]);
  o->depth = 1;
  return 0;
}

long sm_octets_read(sm_octets *o, unsigned char *p, size_t n)
{
  sm_der *d = o->d;
  while (o->left == 0) {
    sm_hdr h;
    if (o->done || o->prim_top || o->depth == 0) {
      o->done = 1;
      return 0;
    }
    int r = sm_frame_next(d, &o->stk[o->depth - 1], &h);
    if (r < 0)
      return -1;
    if (r == 0) {
      o->depth--;
    } else if (h.tag == 0x04) {
      o->left = h.len;
    } else if (h.tag == 0x24 && o->depth < (int)(sizeof(o->stk) / sizeof(o->stk[0]))) {
      sm_frame_open(d, &h, &o->stk[o->depth++]);
    } else {
      der_err(d, "the content is not an OCTET STRING (byte %llu of the CMS structure)", (unsigned long long)d->off);
      return -1;
    }
  }
  size_t k = n < o->left ? n : (size_t)o->left;
  if (sm_der_read(d, p, k) < 0)
    return -1;
  o->left -= k;
  return (long)k;
}

/* The octets as a BIO. */
typedef struct oct_bio {
  sm_octets *o;
  int (*at_end)(void *arg);
  void *arg;
  int ended;
} oct_bio;

static int ob_read(BIO *b, char *buf, int len)
{
  oct_bio *c = BIO_get_data(b);
  if (len <= 0 || c->ended)
    return c->ended < 0 ? -1 : 0;
  long r = sm_octets_read(c->o, (unsigned char *)buf, (size_t)len);
  if (r < 0) {
    c->ended = -1;
    return -1;
  }
  if (r == 0) {
    c->ended = 1;
    if (c->at_end && c->at_end(c->arg) != 0) {
      c->ended = -1;
      return -1;
    }
    return 0;
  }
  return (int)r;
}

static long ob_ctrl(BIO *b, int cmd, long num, void *ptr)
{
  (void)num;
  (void)ptr;
  oct_bio *c = BIO_get_data(b);
  if (cmd == BIO_CTRL_EOF)
    return c->ended != 0;
  return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

static int ob_destroy(BIO *b)
{
  free(BIO_get_data(b));
  BIO_set_data(b, NULL);
  return 1;
}

static int ob_create(BIO *b)
{
  BIO_set_init(b, 1);
  return 1;
}

BIO *sm_octets_bio(sm_octets *o, int (*at_end)(void *arg), void *arg)
{
  static BIO_METHOD *meth;
  static const sm_bio_fns fns = {BIO_TYPE_SOURCE_SINK, "kvp11 smime content", ob_read, NULL,
                                 NULL, ob_ctrl, ob_create, ob_destroy};
  if (!sm_bio_method(&meth, &fns))
    return NULL;
  oct_bio *c = calloc(1, sizeof(*c));
  BIO *b = c ? BIO_new(meth) : NULL;
  if (!b) {
    free(c);
    return NULL;
  }
  c->o = o;
  c->at_end = at_end;
  c->arg = arg;
  BIO_set_data(b, c);
  return b;
}
