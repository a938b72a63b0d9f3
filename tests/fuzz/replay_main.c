/*
 * Corpus replay driver for the fuzz targets in builds without libFuzzer:
 * every regular file under each argument (a file or a directory, walked
 * recursively) goes once through LLVMFuzzerTestOneInput. Exits 1 if nothing
 * was read (a seed directory that went missing must not pass silently).
 */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz_common.h"

#define REPLAY_MAX_INPUT (4 * 1024 * 1024)

static unsigned long replayed;

static int replay_file(const char *path)
{
  FILE *fp = fopen(path, "rb");
  unsigned char *buf = NULL;
  size_t len = 0;
  long sz;

  if (fp == NULL) {
    perror(path);
    return -1;
  }
  if (fseek(fp, 0, SEEK_END) != 0 || (sz = ftell(fp)) < 0 || sz > REPLAY_MAX_INPUT ||
      fseek(fp, 0, SEEK_SET) != 0) {
    fprintf(stderr, "%s: cannot size the file (or larger than %d bytes)\n", path,
            REPLAY_MAX_INPUT);
    fclose(fp);
    return -1;
  }
  buf = malloc(sz > 0 ? (size_t)sz : 1);
  if (buf == NULL) {
    fclose(fp);
    return -1;
  }
  len = fread(buf, 1, (size_t)sz, fp);
  fclose(fp);
  if (len != (size_t)sz) {
    fprintf(stderr, "%s: short read\n", path);
    free(buf);
    return -1;
  }
  LLVMFuzzerTestOneInput(buf, len);
  free(buf);
  replayed++;
  return 0;
}

static int replay_path(const char *path)
{
  struct stat st;
  DIR *d;
  struct dirent *de;
  int rc = 0;

  if (stat(path, &st) != 0) {
    perror(path);
    return -1;
  }
  if (S_ISREG(st.st_mode))
    return replay_file(path);
  if (!S_ISDIR(st.st_mode))
    return 0;
  d = opendir(path);
  if (d == NULL) {
    perror(path);
    return -1;
  }
  while ((de = readdir(d)) != NULL) {
    char sub[4096];
    if (de->d_name[0] == '.')
      continue;
    snprintf(sub, sizeof(sub), "%s/%s", path, de->d_name);
    if (replay_path(sub) != 0)
      rc = -1;
  }
  closedir(d);
  return rc;
}

int main(int argc, char **argv)
{
  int rc = 0;

  LLVMFuzzerInitialize(&argc, &argv);
  if (argc < 2) {
    fprintf(stderr, "usage: %s FILE|DIR...\n", argv[0]);
    return 2;
  }
  for (int i = 1; i < argc; i++)
    if (replay_path(argv[i]) != 0)
      rc = 1;
  printf("%s: %lu inputs replayed\n", argv[0], replayed);
  if (replayed == 0) {
    fprintf(stderr, "%s: no input found\n", argv[0]);
    rc = 1;
  }
  return rc;
}
