/*
 * kvp11 smime: where a command reads and writes (smime.h).
 *
 * Input: --in FILE or stdin, buffered. Output: stdout, or --out FILE written
 * to a temporary file beside FILE and renamed over it only when the command
 * succeeded, so a failed command leaves nothing (a half-written or
 * unverified message never appears under FILE). A stdout that is a regular
 * file is truncated back to where it started on failure; a pipe cannot be:
 * its reader must check the exit status.
 *
 * sm_stream: the streaming writer of an enveloped CMS message in any output
 * form (OpenSSL's BIO_new_CMS under base64 and the S/MIME or PEM framing),
 * which seal writes the signed entity into: the content goes through it
 * once, as it is produced.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/err.h>

#include "engine.h"
#include "smime.h"

#define IO_BUF (1 << 16)

int sm_in_open(kvp_tool *t, const char *path, BIO **in, const char **what)
{
  FILE *f = stdin;
  struct stat st;
  *in = NULL;
  *what = "stdin";
  if (path && strcmp(path, "-") != 0) {
    *what = path;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
      return kvp_tool_fail(t, KVP_EXIT_ERROR, "--in %s: is a directory", path);
    if (!(f = fopen(path, "rb")))
      return kvp_tool_fail(t, KVP_EXIT_ERROR, "cannot open %s: %s", path, strerror(errno));
  }
  setvbuf(f, NULL, _IOFBF, IO_BUF);
  if (!(*in = BIO_new_fp(f, f == stdin ? BIO_NOCLOSE : BIO_CLOSE))) {
    if (f != stdin)
      fclose(f);
    return sm_nomem(t);
  }
  return KVP_EXIT_OK;
}

int sm_in_empty(BIO *in)
{
  FILE *f = NULL;
  if (BIO_get_fp(in, &f) <= 0 || f == NULL)
    return 0;
  int c = getc(f);
  if (c == EOF)
    return 1;
  ungetc(c, f);
  return 0;
}

int sm_out_open(kvp_tool *t, const char *path, sm_out *o)
{
  struct stat st;
  memset(o, 0, sizeof(*o));
  if (!path || strcmp(path, "-") == 0) {
    if (fstat(1, &st) == 0 && S_ISREG(st.st_mode) && (o->start = lseek(1, 0, SEEK_CUR)) >= 0)
      o->stdout_reg = 1;
    o->fp = stdout;
  } else {
    char *d = strdup(path), *b = strdup(path);
    size_t len = strlen(path) + 32;
    o->path = strdup(path);
    o->tmp = malloc(len);
    if (!d || !b || !o->path || !o->tmp) {
      free(d);
      free(b);
      sm_out_abort(o);
      return sm_nomem(t);
    }
    snprintf(o->tmp, len, "%s/.%s.kvp11-XXXXXX", dirname(d), basename(b));
    free(d);
    free(b);
    int fd = mkstemp(o->tmp);
    if (fd < 0) {
      int e = errno;
      free(o->tmp);
      o->tmp = NULL;
      sm_out_abort(o);
      return kvp_tool_fail(t, KVP_EXIT_ERROR, "cannot create a temporary file beside %s: %s", path,
                           strerror(e));
    }
    if (!(o->fp = fdopen(fd, "wb"))) {
      close(fd);
      sm_out_abort(o);
      return sm_nomem(t);
    }
  }
  setvbuf(o->fp, NULL, _IOFBF, IO_BUF);
  if (!(o->bio = BIO_new_fp(o->fp, BIO_NOCLOSE))) {
    sm_out_abort(o);
    return sm_nomem(t);
  }
  return KVP_EXIT_OK;
}

int sm_out_commit(kvp_tool *t, sm_out *o)
{
  const char *name = o->path ? o->path : "stdout";
  int e = 0;
  if (BIO_flush(o->bio) <= 0 || fflush(o->fp) != 0 || ferror(o->fp))
    e = errno ? errno : EIO;
  if (!e && o->path) {
    FILE *f = o->fp;
    o->fp = NULL;
    if (fclose(f) != 0 || rename(o->tmp, o->path) != 0)
      e = errno;
  }
  if (e) {
    sm_out_abort(o);
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "cannot write %s: %s", name, strerror(e));
  }
  BIO_free(o->bio);
  free(o->tmp);
  free(o->path);
  memset(o, 0, sizeof(*o));
  return KVP_EXIT_OK;
}

void sm_out_abort(sm_out *o)
{
  BIO_free(o->bio);
  if (o->path) {
    if (o->fp)
      fclose(o->fp);
    if (o->tmp)
      unlink(o->tmp);
  } else if (o->fp && o->stdout_reg) {
    fflush(o->fp);
    if (ftruncate(1, o->start) == 0)
      lseek(1, o->start, SEEK_SET);
  }
  free(o->tmp);
  free(o->path);
  memset(o, 0, sizeof(*o));
}

/* ------------------------------------------------------ streaming writer */

int sm_stream_begin(kvp_tool *t, BIO *out, int form, int crlf, CMS_ContentInfo *cms, sm_stream *s)
{
  const char *eol = crlf ? "\r\n" : "\n";
  int nid = OBJ_obj2nid(CMS_get0_type(cms));
  const char *type = nid == NID_id_smime_ct_authEnvelopedData ? "authEnveloped-data"
                     : nid == NID_pkcs7_signed                ? "signed-data"
                                                              : "enveloped-data";
  BIO *under = out;
  memset(s, 0, sizeof(*s));
  s->out = out;
  s->form = form;
  s->crlf = crlf;
  if (form == F_SMIME &&
      BIO_printf(out,
                 "MIME-Version: 1.0%sContent-Disposition: attachment; filename=\"smime.p7m\"%s"
                 "Content-Type: application/pkcs7-mime; smime-type=%s; name=\"smime.p7m\"%s"
                 "Content-Transfer-Encoding: base64%s%s",
                 eol, eol, type, eol, eol, eol) <= 0)
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "cannot write the message");
  if (form == F_PEM && BIO_puts(out, "-----BEGIN CMS-----\n") <= 0)
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "cannot write the message");
  if (form != F_DER) {
    if (!(s->b64 = BIO_new(BIO_f_base64())))
      return sm_nomem(t);
    under = BIO_push(s->b64, out);
  }
  ERR_clear_error();
  if (!(s->w = BIO_new_CMS(under, cms)))
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "cannot start the message: %s",
                         kvp_engine_ossl_reason());
  return KVP_EXIT_OK;
}

void sm_stream_free(sm_stream *s)
{
  BIO *under = s->b64 ? s->b64 : s->out;
  while (s->w && s->w != under) {
    BIO *next = BIO_pop(s->w);
    BIO_free(s->w);
    s->w = next;
  }
  if (s->b64) {
    BIO_pop(s->b64);
    BIO_free(s->b64);
  }
  s->w = s->b64 = NULL;
}

int sm_stream_end(kvp_tool *t, sm_stream *s)
{
  ERR_clear_error();
  int ok = BIO_flush(s->w) > 0; /* the CMS structure is finalised here */
  BIO *under = s->b64 ? s->b64 : s->out;
  while (s->w && s->w != under) {
    BIO *next = BIO_pop(s->w);
    BIO_free(s->w);
    s->w = next;
  }
  s->w = NULL;
  if (s->b64 && BIO_flush(s->b64) <= 0)
    ok = 0;
  if (ok && s->form == F_SMIME)
    ok = BIO_puts(s->out, s->crlf ? "\r\n" : "\n") > 0;
  if (ok && s->form == F_PEM)
    ok = BIO_puts(s->out, "-----END CMS-----\n") > 0;
  sm_stream_free(s);
  if (!ok)
    return kvp_tool_fail(t, KVP_EXIT_ERROR, "cannot write the message: %s",
                         kvp_engine_ossl_reason());
  return KVP_EXIT_OK;
}

/* ---------------------------------------------------------- flush barrier */

/* A filter that passes writes on and keeps flushes to itself: OpenSSL's
 * writers flush when they finish, and a flush reaching a cipher BIO
 * finalises it. seal writes the signed entity through this into the
 * enveloping stream, which sm_stream_end finalises itself. */
static int fb_write(BIO *b, const char *in, int n)
{
  int r = BIO_write(BIO_next(b), in, n);
  BIO_clear_retry_flags(b);
  BIO_copy_next_retry(b);
  return r;
}

static int fb_puts(BIO *b, const char *s)
{
  return fb_write(b, s, (int)strlen(s));
}

static long fb_ctrl(BIO *b, int cmd, long num, void *ptr)
{
  if (cmd == BIO_CTRL_FLUSH)
    return 1;
  if (cmd == BIO_CTRL_PUSH || cmd == BIO_CTRL_POP || !BIO_next(b))
    return 0;
  return BIO_ctrl(BIO_next(b), cmd, num, ptr);
}

static int fb_create(BIO *b)
{
  BIO_set_init(b, 1);
  return 1;
}

BIO_METHOD *sm_bio_method(BIO_METHOD **meth, const sm_bio_fns *f)
{
  if (*meth)
    return *meth;
  BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | f->type, f->name);
  if (!m || (f->read && !BIO_meth_set_read(m, f->read)) ||
      (f->write && !BIO_meth_set_write(m, f->write)) ||
      (f->puts && !BIO_meth_set_puts(m, f->puts)) || (f->ctrl && !BIO_meth_set_ctrl(m, f->ctrl)) ||
      (f->create && !BIO_meth_set_create(m, f->create)) ||
      (f->destroy && !BIO_meth_set_destroy(m, f->destroy))) {
    BIO_meth_free(m);
    return NULL;
  }
  return *meth = m;
}

BIO *sm_flush_barrier(void)
{
  static BIO_METHOD *meth;
  static const sm_bio_fns fns = {BIO_TYPE_FILTER, "kvp11 flush barrier", NULL, fb_write,
                                 fb_puts, fb_ctrl, fb_create, NULL};
  BIO_METHOD *m = sm_bio_method(&meth, &fns);
  return m ? BIO_new(m) : NULL;
}
