/*
 * Logging. One line per event: time, level, where (file:line function), text.
 * Never pass a secret to these functions.
 *
 * The level (default warn) and destination come from the configuration ([global] log_level,
 * log_file) and are overridden by the environment variable
 * KVP11_DEBUG="level[:file]" (e.g. "debug:/tmp/kvp11.log"), read once.
 */
#ifndef KVP_CORE_LOG_H
#define KVP_CORE_LOG_H

typedef enum {
  KVP_LOG_ERROR = 0,
  KVP_LOG_WARN = 1,
  KVP_LOG_INFO = 2,
  KVP_LOG_DEBUG = 3,
} kvp_log_level;

/* Current threshold; messages above it are dropped before formatting. */
extern int kvp_log_threshold;

/* Parse "error|warn|info|debug"; returns -1 when unknown. */
int kvp_log_level_parse(const char *s);

/*
 * Configure logging. level: threshold; file: path to append to, or NULL for
 * stderr. KVP11_DEBUG overrides both. Safe to call again (re-opens the file).
 */
void kvp_log_setup(int level, const char *file);
/* Close the log file, if any (C_Finalize). */
void kvp_log_close(void);

void kvp_log_write(int level, const char *file, int line, const char *func,
                   const char *fmt, ...) __attribute__((format(printf, 5, 6)));

#define KVP_LOG(lvl, ...)                                                      \
  do {                                                                         \
    if ((lvl) <= kvp_log_threshold)                                            \
      kvp_log_write((lvl), __FILE__, __LINE__, __func__, __VA_ARGS__);         \
  } while (0)
#define KVP_ERROR(...) KVP_LOG(KVP_LOG_ERROR, __VA_ARGS__)
#define KVP_WARN(...) KVP_LOG(KVP_LOG_WARN, __VA_ARGS__)
#define KVP_INFO(...) KVP_LOG(KVP_LOG_INFO, __VA_ARGS__)
#define KVP_DEBUG(...) KVP_LOG(KVP_LOG_DEBUG, __VA_ARGS__)

#endif
