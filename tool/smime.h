/*
 * kvp11 smime: the parts shared by smime.c (commands), smime_io.c (input,
 * output files, the streaming writers), smime_ber.c (the streaming BER /
 * base64 / MIME reader) and smime_read.c (streaming verify and decrypt).
 *
 * Everything streams: a message is read once, in pieces, and written as it
 * is processed; no layer is held in memory (only the small CMS parts around
 * the content: recipient infos, signer infos, certificates, bounded by
 * SM_MAX_META).
 */
#ifndef KVP_TOOL_SMIME_H
#define KVP_TOOL_SMIME_H

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include <openssl/bio.h>
#include <openssl/buffer.h>
#include <openssl/pem.h> /* before cms.h: declares PEM_write_bio_CMS */
#include <openssl/cms.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include "core/registry.h"
#include "engine.h"
#include "tool.h"

#define MAX_TO 16

enum { F_AUTO = 0, F_SMIME, F_PEM, F_DER };

typedef struct smime_args {
  const char *v[O_COUNT]; /* option values; flags are "" when given */
  const char *to[MAX_TO]; /* every --to */
  size_t n_to;
  const char *account; /* resolved account */
  const EVP_MD *md;
  const EVP_CIPHER *cipher;
  int inform, outform; /* F_* */
} smime_args;

/* The CMS parts around the content: recipient and signer infos, certificates. */
#define SM_MAX_META (4u << 20)

/* ------------------------------------------------------------ smime.c */

int sm_nomem(const kvp_tool *t);
/* Format into err unless it holds a message already (the first failure is the one told). */
void sm_first_err(char *err, size_t len, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));
/* Configuration, account, registry. */
int sm_setup(kvp_tool *t, smime_args *a);
/* The registered certificate name (need_private: with a key); *x its X509. */
int sm_get_rec(kvp_tool *t, const smime_args *a, const char *name, int need_private,
               kvp_cert_rec *rec, X509 **x);
X509 *sm_rec_x509(const kvp_cert_rec *rec);
int sm_check_valid(kvp_tool *t, const kvp_cert_rec *rec, int64_t at, const char *when);
void sm_subject_of(X509 *x, char *out, size_t len);
/* The private key of rec through libkvp11.so (engine.h). */
int sm_load_key(kvp_tool *t, const smime_args *a, const kvp_cert_rec *rec, X509 *x,
                kvp_engine_key *k);

/* The commands (smime.c: sign, encrypt, seal; smime_recv.c: the others). */
int sm_cmd_sign(kvp_tool *t, smime_args *a);
int sm_cmd_encrypt(kvp_tool *t, smime_args *a);
int sm_cmd_seal(kvp_tool *t, smime_args *a);
int sm_cmd_verify(kvp_tool *t, smime_args *a);
int sm_cmd_decrypt(kvp_tool *t, smime_args *a);
int sm_cmd_open(kvp_tool *t, smime_args *a);
int sm_sha256_hex(X509 *x, char out[65]);

/* ---------------------------------------------------------- smime_io.c */

/* Where a command writes: stdout, or --out FILE through a temporary file
 * beside it, renamed over FILE only when the command succeeded. */
typedef struct sm_out {
  BIO *bio;         /* buffered writer */
  FILE *fp;         /* under bio */
  char *path;       /* --out FILE, or NULL for stdout */
  char *tmp;        /* the temporary file beside path */
  off_t start;      /* stdout is a regular file: its offset at the start */
  int stdout_reg;   /* 1: truncate stdout back to start on failure */
} sm_out;

int sm_out_open(kvp_tool *t, const char *path, sm_out *o);
/* Flush and move into place. An exit code; on failure sm_out_abort is done. */
int sm_out_commit(kvp_tool *t, sm_out *o);
/* Remove what was written (temporary file; stdout truncated back when it is
 * a regular file) and free. Harmless after a commit. */
void sm_out_abort(sm_out *o);

/* The input: --in FILE or stdin, a buffered reader. what: names it in messages. */
int sm_in_open(kvp_tool *t, const char *path, BIO **in, const char **what);
/* The input (of sm_in_open) has no byte: OpenSSL's streaming writers cannot
 * write an empty content (their ASN.1 BIO never starts), so the sending
 * commands finish such a message whole. */
int sm_in_empty(BIO *in);

/* A streaming writer of an enveloped (or any) CMS object in form F_*: the
 * content is written to .w; sm_stream_end finalises the CMS structure. */
typedef struct sm_stream {
  BIO *w;   /* write the content here */
  BIO *b64; /* base64 under w (smime, pem) */
  BIO *out; /* the destination */
  int form;
  int crlf; /* S/MIME headers with CRLF line ends */
} sm_stream;
int sm_stream_begin(kvp_tool *t, BIO *out, int form, int crlf, CMS_ContentInfo *cms, sm_stream *s);
int sm_stream_end(kvp_tool *t, sm_stream *s);
void sm_stream_free(sm_stream *s);

/* A filter BIO that passes writes on and keeps flushes to itself. */
BIO *sm_flush_barrier(void);

/* The callbacks of one of our BIO types (NULL: not set). */
typedef struct sm_bio_fns {
  int type; /* BIO_TYPE_SOURCE_SINK or BIO_TYPE_FILTER */
  const char *name;
  int (*read)(BIO *b, char *buf, int len);
  int (*write)(BIO *b, const char *in, int n);
  int (*puts)(BIO *b, const char *s);
  long (*ctrl)(BIO *b, int cmd, long num, void *ptr);
  int (*create)(BIO *b);
  int (*destroy)(BIO *b);
} sm_bio_fns;
/* *meth, made from f on first use (NULL when that fails). */
BIO_METHOD *sm_bio_method(BIO_METHOD **meth, const sm_bio_fns *f);

/* ---------------------------------------------------------- smime_ber.c */

/* Pull source with lookahead over a BIO. */
typedef struct sm_src {
  BIO *bio;
  unsigned char buf[65536];
  size_t pos, len;
  int eof, ioerr;
  uint64_t off;  /* bytes consumed */
  uint64_t line; /* lines consumed (by sm_src_line) */
} sm_src;

void sm_src_init(sm_src *s, BIO *bio);
/* Bytes available without reading (0: EOF or error). */
size_t sm_src_peek(sm_src *s, const unsigned char **p);
/* A line up to '\n' included, at most cap-1 bytes (NUL-terminated); 0 at EOF. */
size_t sm_src_line(sm_src *s, char *line, size_t cap);

/* The DER bytes of a message: raw, or decoded from base64 lines. */
typedef struct sm_der {
  sm_src *src;
  int b64;        /* base64 lines */
  int pem;        /* base64 ending at a "-----END" line */
  int stop_dash;  /* base64 ending at a "--" (MIME boundary) line */
  EVP_ENCODE_CTX *ctx;
  unsigned char out[24576 + 1024];
  size_t opos, olen;
  int done;       /* the base64 ended */
  int bol;        /* the last base64 byte read ended a line */
  uint64_t off;   /* DER bytes consumed */
  char err[320];  /* the first error */
} sm_der;

int sm_der_init(sm_der *d, sm_src *src, int b64, int pem);
void sm_der_free(sm_der *d);
/* Exactly n bytes; -1 with d->err set at EOF or error. */
int sm_der_read(sm_der *d, unsigned char *p, size_t n);
/* Up to n bytes: 0 at the end, -1 on error. */
long sm_der_read_some(sm_der *d, unsigned char *p, size_t n);

/* A BER header: the first identifier octet (low tag numbers only). */
typedef struct sm_hdr {
  int tag;        /* identifier octet, e.g. 0x30, 0xA0, 0x04 */
  int indef;      /* indefinite length */
  uint64_t len;   /* definite length */
  unsigned char raw[12];
  size_t rawlen;
} sm_hdr;
int sm_hdr_read(sm_der *d, sm_hdr *h);

/* A constructed element being read: its end (definite) or an end-of-contents. */
typedef struct sm_frame {
  int indef;
  uint64_t end;
} sm_frame;
void sm_frame_open(const sm_der *d, const sm_hdr *h, sm_frame *f);
/* The next element's header in f: 1, 0 at f's end (its end-of-contents read), -1 error. */
int sm_frame_next(sm_der *d, sm_frame *f, sm_hdr *h);
/* The rest of the element whose header is h, appended raw (h included) to b; max bounds b. */
int sm_elem_rest(sm_der *d, const sm_hdr *h, BUF_MEM *b, size_t max);
/* Skip the rest of the element whose header is h. */
int sm_elem_skip(sm_der *d, const sm_hdr *h);
/* f must end here: its end-of-contents, or its end offset. */
int sm_frame_close(sm_der *d, sm_frame *f, const char *what);
/* Append a DER header for tag with length len to b. */
int sm_put_hdr(BUF_MEM *b, int tag, size_t len);
int sm_put(BUF_MEM *b, const void *p, size_t n);

/* The octets of an OCTET STRING (primitive or constructed, any length form). */
typedef struct sm_octets {
  sm_der *d;
  sm_frame stk[8];
  int depth;
  uint64_t left; /* in the current primitive chunk */
  int prim_top;  /* the string was primitive: done when left reaches 0 */
  int done;
} sm_octets;
int sm_octets_init(sm_octets *o, sm_der *d, const sm_hdr *h);
long sm_octets_read(sm_octets *o, unsigned char *p, size_t n);

/* A read-only BIO over an sm_octets (the encrypted content for CMS_dataInit).
 * at_end is called once when the octets end, before EOF is reported. */
BIO *sm_octets_bio(sm_octets *o, int (*at_end)(void *arg), void *arg);

/* --------------------------------------------------------- smime_read.c */

/* A parsed message head: a CMS object without its content (detached), and
 * where the content is. */
typedef struct sm_msg {
  sm_src src;
  sm_der der;
  int form;               /* F_SMIME, F_PEM, F_DER */
  int nid;                /* content type */
  CMS_ContentInfo *cms;   /* the head, content left out */
  sm_octets oct;          /* the content */
  int has_content;        /* 0: detached (no content in the structure) */
  sm_frame outer[5];      /* open frames around the content, outermost first */
  int n_outer;
  BUF_MEM *oid, *body, *eci; /* raw parts of the head, for the skeleton */
  X509_ALGORS *mdalgs;    /* signed: the digest algorithms */
  EVP_CIPHER_CTX *cctx;   /* decrypt: the cipher (AuthEnvelopedData: its tag) */
  int tail_done;          /* the structure was read to its end */
  /* multipart/signed */
  int multipart;
  char boundary[80];
  char micalg[64];
  char what[512];         /* names the input in messages */
  char err[1024];
} sm_msg;

/* expect: NID_pkcs7_signed, or NID_pkcs7_enveloped for either encrypted kind. */
int sm_msg_begin(sm_msg *m, BIO *in, int form, int expect, const char *what);
void sm_msg_free(sm_msg *m);

/* Decrypt m (enveloped or authEnveloped) with pkey/cert; plaintext to out as
 * it goes. The tag of AuthEnvelopedData is checked at the end. -1 with m->err. */
int sm_decrypt_stream(sm_msg *m, EVP_PKEY *pkey, X509 *cert, BIO **plain);
/* After the plaintext was read to its end: the structure complete, the
 * padding or tag right. Frees plain. -2: the content does not decrypt or
 * authenticate (m->err says so too). */
int sm_decrypt_finish(sm_msg *m, BIO *plain);

/* Signed: stream the content (binary: as it is; else canonical CRLF for a
 * multipart/signed part) through the digests of the message to out; then the
 * SignerInfos are read and m->cms is complete (its content detached).
 * dcont: the detached content (--content) of a pem/der message. The digest
 * chain is left in *md for sm_verify_signatures. -1 with m->err. */
int sm_signed_stream(sm_msg *m, BIO *dcont, int binary, BIO *out, BIO **md);
/* Free the digest chain of sm_signed_stream down to sink. */
void sm_md_free(BIO *md, BIO *sink);
/* Every SignerInfo's signature and content digest (signers set beforehand).
 * -1 with m->err when a signature's digest was not computed while the content
 * streamed (a micalg that names another digest), else -1 with OpenSSL's error. */
int sm_verify_signatures(sm_msg *m, BIO *md);

#endif
