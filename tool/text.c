/*
 * Text columns by display width: a UTF-8 name like "Müller GmbH" or "東京"
 * takes as many columns as it shows, not as many bytes.
 */
#include <stdio.h>
#include <string.h>

#include "tool.h"

/* Columns one code point takes: 0 for combining marks, 2 for East Asian wide ones. */
static int cp_width(unsigned long c)
{
  if ((c >= 0x300 && c <= 0x36f) || (c >= 0x200b && c <= 0x200f) || (c >= 0xfe00 && c <= 0xfe0f))
    return 0;
  if ((c >= 0x1100 && c <= 0x115f) || (c >= 0x2e80 && c <= 0xa4cf) || (c >= 0xac00 && c <= 0xd7a3) ||
      (c >= 0xf900 && c <= 0xfaff) || (c >= 0xfe30 && c <= 0xfe4f) || (c >= 0xff00 && c <= 0xff60) ||
      (c >= 0xffe0 && c <= 0xffe6) || (c >= 0x1f300 && c <= 0x1f64f) ||
      (c >= 0x1f900 && c <= 0x1f9ff) || (c >= 0x20000 && c <= 0x3fffd))
    return 2;
  return 1;
}

int kvp_tool_width(const char *s)
{
  const unsigned char *p = (const unsigned char *)s;
  int w = 0;
  while (*p) {
    unsigned long c = *p;
    int n = c < 0x80 ? 0 : (c & 0xe0) == 0xc0 ? 1 : (c & 0xf0) == 0xe0 ? 2 : (c & 0xf8) == 0xf0 ? 3 : -1;
    if (n < 0) { /* not UTF-8: one column per byte */
      w++;
      p++;
      continue;
    }
    c = n ? c & (0x3fu >> n) : c;
    p++;
    for (int i = 0; i < n && (*p & 0xc0) == 0x80; i++, p++)
      c = (c << 6) | (*p & 0x3f);
    w += cp_width(c);
  }
  return w;
}

void kvp_tool_cell(FILE *f, const char *s, int width)
{
  int pad = width - kvp_tool_width(s);
  fputs(s, f);
  if (pad > 0)
    fprintf(f, "%*s", pad, "");
}
