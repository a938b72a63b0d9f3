/*
 * secrets-scan — count occurrences of secret byte strings in files.
 *
 *   secrets-scan NEEDLES FILE...
 *
 * NEEDLES has one needle per line: "NAME HEX" (the needle's bytes in hex, so
 * binary needles work). For each needle and each FILE it prints
 *   hits NAME FILE COUNT
 * and, for each hit, one line
 *   at NAME FILE OFFSET CONTEXT
 * where CONTEXT shows up to 24 bytes before and after the hit (printable bytes
 * as is, others as '.') and the hit itself only as "<NAME:LEN>", so the report
 * never prints the secret. Exit status: 0 no hit, 1 at least one hit, 2 error.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_NEEDLES 128
#define MAX_SHOWN 50

struct needle {
  char name[64];
  unsigned char *b;
  size_t n;
};

static int hexval(int c)
{
  if (c >= '0' && c <= '9')
    return c - '0';
  c = tolower(c);
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  return -1;
}

static unsigned char *slurp(const char *path, size_t *len)
{
  FILE *fp = fopen(path, "rb");
  unsigned char *b = NULL;
  size_t cap = 0, n = 0, r;

  if (fp == NULL)
    return NULL;
  do {
    if (n == cap) {
      unsigned char *nb;
      cap = cap ? cap * 2 : 1 << 20;
      nb = realloc(b, cap);
      if (nb == NULL) {
        free(b);
        fclose(fp);
        return NULL;
      }
      b = nb;
    }
    r = fread(b + n, 1, cap - n, fp);
    n += r;
  } while (r > 0);
  fclose(fp);
  *len = n;
  return b;
}

static void show(const unsigned char *b, size_t len, size_t lo, size_t hi)
{
  for (size_t i = lo; i < hi && i < len; i++)
    putchar(isprint(b[i]) && b[i] != ' ' ? b[i] : '.');
}

int main(int argc, char **argv)
{
  struct needle nd[MAX_NEEDLES];
  size_t nn = 0;
  char line[8192];
  FILE *fp;
  int any = 0;

  if (argc < 3) {
    fprintf(stderr, "usage: %s NEEDLES FILE...\n", argv[0]);
    return 2;
  }
  fp = fopen(argv[1], "r");
  if (fp == NULL) {
    perror(argv[1]);
    return 2;
  }
  while (nn < MAX_NEEDLES && fgets(line, sizeof(line), fp) != NULL) {
    char hex[8192];
    size_t hl;
    if (sscanf(line, "%63s %8191s", nd[nn].name, hex) != 2)
      continue;
    hl = strlen(hex);
    if (hl % 2 != 0 || hl == 0)
      continue;
    nd[nn].n = hl / 2;
    nd[nn].b = malloc(nd[nn].n);
    if (nd[nn].b == NULL)
      return 2;
    for (size_t i = 0; i < nd[nn].n; i++) {
      int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);
      if (hi < 0 || lo < 0)
        return 2;
      nd[nn].b[i] = (unsigned char)(hi << 4 | lo);
    }
    nn++;
  }
  fclose(fp);

  for (int a = 2; a < argc; a++) {
    size_t len = 0;
    unsigned char *b = slurp(argv[a], &len);
    if (b == NULL) {
      fprintf(stderr, "secrets-scan: cannot read %s\n", argv[a]);
      return 2;
    }
    for (size_t k = 0; k < nn; k++) {
      size_t count = 0, off = 0;
      const unsigned char *p;
      while (off < len && (p = memmem(b + off, len - off, nd[k].b, nd[k].n)) != NULL) {
        size_t at = (size_t)(p - b);
        if (count < MAX_SHOWN) {
          printf("at %s %s %zu ", nd[k].name, argv[a], at);
          show(b, len, at > 40 ? at - 40 : 0, at);
          printf("<%s:%zu>", nd[k].name, nd[k].n);
          show(b, len, at + nd[k].n, at + nd[k].n + 24);
          putchar('\n');
        }
        count++;
        off = at + 1;
      }
      printf("hits %s %s %zu\n", nd[k].name, argv[a], count);
      if (count > 0)
        any = 1;
    }
    free(b);
  }
  return any ? 1 : 0;
}
