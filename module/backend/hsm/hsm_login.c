/*
 * Logging in to the HSM's token.
 *
 * Configured PIN (pin_file / pin_env): the backend logs in itself, on the
 * anchor session, at initialization and again when the token forgot that
 * login. A real HSM (or a TPM) locks the user PIN after a few failures, so a
 * refused configured PIN is never tried twice: after CKR_PIN_INCORRECT,
 * CKR_PIN_LOCKED, CKR_PIN_EXPIRED (or CKR_PIN_INVALID / CKR_PIN_LEN_RANGE)
 * no further C_Login is made until the PIN file changes (device, inode,
 * size or modification time) or the application initializes kvp11 again (a
 * new backend). Before every attempt the token flags are read: with
 * CKF_USER_PIN_LOCKED or CKF_USER_PIN_FINAL_TRY no attempt is made at all
 * (an admin logs in by hand to reset the counter). The refusal is recorded
 * with kvp_fail and sign / decrypt / open_key return CKR_DEVICE_ERROR, a
 * code every entry point may return; never a CKR_PIN_* code.
 *
 * Pass-through PIN (neither configured): login() sends the application's
 * PIN to the HSM's C_Login. A token is logged in once per application, so
 * a second login() on a token that is logged in already is checked against
 * a salted hash (HMAC-SHA256, random salt per process) of the PIN that
 * logged it in, kept per module and slot: the same PIN is CKR_OK, another
 * one CKR_PIN_INCORRECT, and the HSM never sees it. The PIN itself is
 * never kept.
 */
#include <pthread.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "backend/hsm/hsm_internal.h"
#include "core/config.h"
#include "core/log.h"
#include "core/p11names.h"
#include "core/status.h"
#include "core/util.h"

/* ---------- hashes of the PINs that logged tokens in (this process) ---------- */

typedef struct {
  CK_FUNCTION_LIST_PTR f;
  CK_SLOT_ID slot;
  pid_t pid;
  unsigned char hash[KVP_HSM_PIN_HASH_LEN];
} kvp_hsm_login_rec;

static pthread_mutex_t g_login_lock = PTHREAD_MUTEX_INITIALIZER;
static kvp_hsm_login_rec g_logins[16];
static unsigned char g_salt[16];
static int g_salt_ok;
static pthread_once_t g_salt_once = PTHREAD_ONCE_INIT;

static void salt_init(void)
{
  ERR_set_mark();
  g_salt_ok = RAND_bytes(g_salt, (int)sizeof(g_salt)) == 1;
  ERR_pop_to_mark();
}

int kvp_hsm_login_setup(kvp_hsm_backend *be)
{
  (void)be;
  pthread_once(&g_salt_once, salt_init);
  return g_salt_ok;
}

static int pin_hash(const CK_UTF8CHAR *pin, CK_ULONG len, unsigned char out[KVP_HSM_PIN_HASH_LEN])
{
  size_t n = 0;
  ERR_set_mark();
  int ok = g_salt_ok &&
           EVP_Q_mac(NULL, "HMAC", NULL, "SHA256", NULL, g_salt, sizeof(g_salt), pin, (size_t)len,
                     out, KVP_HSM_PIN_HASH_LEN, &n) != NULL &&
           n == KVP_HSM_PIN_HASH_LEN;
  ERR_pop_to_mark();
  return ok;
}

static kvp_hsm_login_rec *login_find_locked(const kvp_hsm_backend *be)
{
  for (size_t i = 0; i < KVP_ARRAY_SIZE(g_logins); i++)
    if (g_logins[i].f == be->f && g_logins[i].slot == be->slot && g_logins[i].pid == getpid())
      return &g_logins[i];
  return NULL;
}

/* Remember (hash != NULL) or forget the PIN that logged be's token in. */
static void login_record(const kvp_hsm_backend *be, const unsigned char *hash)
{
  pthread_mutex_lock(&g_login_lock);
  kvp_hsm_login_rec *r = login_find_locked(be);
  if (r == NULL && hash != NULL)
    for (size_t i = 0; r == NULL && i < KVP_ARRAY_SIZE(g_logins); i++)
      if (g_logins[i].f == NULL || g_logins[i].pid != getpid())
        r = &g_logins[i];
  if (r != NULL) {
    OPENSSL_cleanse(r, sizeof(*r));
    if (hash != NULL) {
      r->f = be->f;
      r->slot = be->slot;
      r->pid = getpid();
      memcpy(r->hash, hash, KVP_HSM_PIN_HASH_LEN);
    }
  }
  pthread_mutex_unlock(&g_login_lock);
}

/* 1: the token was logged in with a PIN of this hash, 0: another one, -1: unknown. */
static int login_matches(const kvp_hsm_backend *be, const unsigned char *hash)
{
  int m = -1;
  pthread_mutex_lock(&g_login_lock);
  kvp_hsm_login_rec *r = login_find_locked(be);
  if (r != NULL)
    m = CRYPTO_memcmp(r->hash, hash, KVP_HSM_PIN_HASH_LEN) == 0;
  pthread_mutex_unlock(&g_login_lock);
  return m;
}

/* ---------- sessions ---------- */

/* 1: user session, 0: public session, -1: the HSM does not know s. */
static int session_state(kvp_hsm_backend *be, CK_SESSION_HANDLE s)
{
  CK_SESSION_INFO si;
  if (s == CK_INVALID_HANDLE)
    return -1;
  CK_RV rv = KVP_HSM_CALL(be, C_GetSessionInfo, s, &si);
  if (rv != CKR_OK)
    return kvp_hsm_session_gone(rv) ? -1 : 0;
  return si.state == CKS_RO_USER_FUNCTIONS || si.state == CKS_RW_USER_FUNCTIONS;
}

int kvp_hsm_session_logged_in(kvp_hsm_backend *be, CK_SESSION_HANDLE s)
{
  return session_state(be, s) == 1;
}

/*
 * C_Login on the anchor session, opening it if needed and once more if the
 * HSM has lost it (C_CloseAllSessions by someone else, HSM restart). Returns
 * the HSM's CK_RV as is. init_lock held.
 */
static CK_RV anchor_login_locked(kvp_hsm_backend *be, const CK_UTF8CHAR *pin, CK_ULONG pin_len)
{
  for (int attempt = 0;; attempt++) {
    CK_RV rv;
    if (be->anchor == CK_INVALID_HANDLE) {
      rv = kvp_hsm_session_open(be, 0, &be->anchor);
      if (rv != CKR_OK)
        return rv;
    }
    rv = KVP_HSM_CALL(be, C_Login, be->anchor, CKU_USER, (CK_UTF8CHAR_PTR)pin, pin_len);
    if (kvp_hsm_session_gone(rv) && attempt == 0) {
      be->anchor = CK_INVALID_HANDLE; /* gone: forgotten, not closed */
      kvp_hsm_session_lost(be);
      continue;
    }
    return rv;
  }
}

/* ---------- configured PIN ---------- */

static int pin_refused(CK_RV rv)
{
  return rv == CKR_PIN_INCORRECT || rv == CKR_PIN_LOCKED || rv == CKR_PIN_EXPIRED ||
         rv == CKR_PIN_INVALID || rv == CKR_PIN_LEN_RANGE;
}

/* The PIN file's identity now (have_stat 0 for pin_env or a missing file). */
static void pin_file_id(const kvp_hsm_backend *be, kvp_hsm_pin_guard *g)
{
  struct stat st;
  memset(g, 0, sizeof(*g));
  if (be->pin_file == NULL || stat(be->pin_file, &st) != 0)
    return;
  g->have_stat = 1;
  g->dev = st.st_dev;
  g->ino = st.st_ino;
  g->size = st.st_size;
  g->mtime = st.st_mtim;
}

static int pin_file_changed(const kvp_hsm_pin_guard *was, const kvp_hsm_pin_guard *now)
{
  if (!was->have_stat || !now->have_stat)
    return was->have_stat != now->have_stat && now->have_stat;
  return was->dev != now->dev || was->ino != now->ino || was->size != now->size ||
         was->mtime.tv_sec != now->mtime.tv_sec || was->mtime.tv_nsec != now->mtime.tv_nsec;
}

static const char *pin_source(const kvp_hsm_backend *be)
{
  return be->pin_file ? "pin_file" : "pin_env";
}

/* Refuse further attempts until the PIN file changes. */
static CK_RV block(kvp_hsm_backend *be, const kvp_hsm_pin_guard *id, CK_RV why, const char *what)
{
  be->pin_guard = *id;
  be->pin_guard.blocked = 1;
  be->pin_guard.why = why;
  snprintf(be->pin_guard.what, sizeof(be->pin_guard.what), "%s", what);
  return kvp_fail(CKR_DEVICE_ERROR,
                  "hsm %s: %s; kvp11 makes no further login attempt with the configured PIN "
                  "until %s changes or the application restarts",
                  be->base.name, what, be->pin_file ? be->pin_file : "the PIN");
}

/* CKR_OK when a login attempt may be made now. */
static CK_RV guard_allows_locked(kvp_hsm_backend *be, const kvp_hsm_pin_guard *now)
{
  kvp_hsm_pin_guard *g = &be->pin_guard;
  time_t t = time(NULL);
  if (!g->blocked && g->retry_at > t && g->retry_at - t <= KVP_HSM_INIT_RETRY_SECS)
    return kvp_fail(CKR_DEVICE_ERROR,
                    "hsm %s: the last login to token '%s' failed (%s); not tried again before "
                    "%d s",
                    be->base.name, kvp_hsm_token(be), kvp_ckr_name(g->why),
                    KVP_HSM_INIT_RETRY_SECS);
  if (!g->blocked)
    return CKR_OK;
  if (be->pin_file != NULL && pin_file_changed(g, now)) {
    KVP_INFO("hsm %s: %s changed; logging in to token '%s' again", be->base.name, be->pin_file,
             kvp_hsm_token(be));
    g->blocked = 0;
    return CKR_OK;
  }
  return kvp_fail(CKR_DEVICE_ERROR,
                  "hsm %s: not logged in: %s; no login attempt until %s changes or the "
                  "application restarts",
                  be->base.name, g->what, be->pin_file ? be->pin_file : "the PIN");
}

/* The token's PIN counters: never spend the last try, nor try a locked PIN. */
static CK_RV flags_allow_locked(kvp_hsm_backend *be, const kvp_hsm_pin_guard *now)
{
  CK_TOKEN_INFO ti;
  char what[200];
  CK_RV rv = KVP_HSM_CALL(be, C_GetTokenInfo, be->slot, &ti);
  if (rv != CKR_OK)
    return CKR_OK; /* the login itself will say what is wrong */
  if (ti.flags & CKF_USER_PIN_LOCKED) {
    snprintf(what, sizeof(what), "the user PIN of token '%s' is locked (CKF_USER_PIN_LOCKED)",
             kvp_hsm_token(be));
    return block(be, now, CKR_PIN_LOCKED, what);
  }
  if (ti.flags & CKF_USER_PIN_FINAL_TRY) {
    snprintf(what, sizeof(what),
             "token '%s' allows one more user PIN attempt (CKF_USER_PIN_FINAL_TRY), which "
             "kvp11 leaves to an admin (log in by hand with the right PIN)",
             kvp_hsm_token(be));
    return block(be, now, CKR_PIN_INCORRECT, what);
  }
  if (ti.flags & CKF_USER_PIN_COUNT_LOW)
    KVP_WARN("hsm %s: token '%s' reports failed user PIN attempts (CKF_USER_PIN_COUNT_LOW)",
             be->base.name, kvp_hsm_token(be));
  return CKR_OK;
}

static CK_RV read_conf_pin(kvp_hsm_backend *be, char **pin, size_t *pin_len)
{
  kvp_hsm_conf c;
  char err[KVP_ERRLEN];
  memset(&c, 0, sizeof(c));
  c.name = be->base.name;
  c.module = be->module;
  c.token_label = be->token_label;
  c.serial = be->serial;
  c.pin_file = be->pin_file;
  c.pin_env = be->pin_env;
  c.line = be->conf_line;
  err[0] = '\0';
  int rc = kvp_hsm_conf_pin(&c, pin, pin_len, err, sizeof(err));
  if (rc != KVP_OK)
    return kvp_fail(rc == KVP_ENOMEM ? CKR_HOST_MEMORY : CKR_DEVICE_ERROR,
                    "hsm %s: cannot read the PIN: %s", be->base.name, err);
  return CKR_OK;
}

CK_RV kvp_hsm_conf_login_locked(kvp_hsm_backend *be)
{
  kvp_hsm_pin_guard now;
  char *pin = NULL;
  size_t pin_len = 0;
  unsigned char hash[KVP_HSM_PIN_HASH_LEN];

  pin_file_id(be, &now); /* before reading: a change after it is noticed */
  CK_RV rv = guard_allows_locked(be, &now);
  if (rv == CKR_OK)
    rv = flags_allow_locked(be, &now);
  if (rv == CKR_OK)
    rv = read_conf_pin(be, &pin, &pin_len);
  if (rv != CKR_OK)
    return rv;
  int hashed = pin_hash((const CK_UTF8CHAR *)pin, (CK_ULONG)pin_len, hash);
  CK_RV hrv = anchor_login_locked(be, (const CK_UTF8CHAR *)pin, (CK_ULONG)pin_len);
  kvp_free_secret(pin);
  if (hrv == CKR_OK || hrv == CKR_USER_ALREADY_LOGGED_IN) {
    if (hrv == CKR_OK && hashed)
      login_record(be, hash);
    OPENSSL_cleanse(hash, sizeof(hash));
    be->pin_guard.blocked = 0;
    be->pin_guard.retry_at = 0;
    atomic_store(&be->logged_in, 1);
    return CKR_OK;
  }
  OPENSSL_cleanse(hash, sizeof(hash));
  if (pin_refused(hrv)) {
    char what[200];
    snprintf(what, sizeof(what), "token '%s' refused the PIN from %s: C_Login: %s",
             kvp_hsm_token(be), pin_source(be), kvp_ckr_name(hrv));
    return block(be, &now, hrv, what);
  }
  if (hrv != CKR_HOST_MEMORY) { /* a token that does not answer: one try per period */
    be->pin_guard.retry_at = time(NULL) + KVP_HSM_INIT_RETRY_SECS;
    be->pin_guard.why = hrv;
  }
  return kvp_fail(hrv == CKR_HOST_MEMORY ? CKR_HOST_MEMORY : CKR_DEVICE_ERROR,
                  "hsm %s: C_Login with the configured PIN (token '%s'): %s", be->base.name,
                  kvp_hsm_token(be), kvp_ckr_name(hrv));
}

/* The token forgot our login (all our sessions were closed under us): log in
 * again with the configured PIN, if the guard allows. Serialised by init_lock. */
CK_RV kvp_hsm_relogin(kvp_hsm_backend *be)
{
  pthread_mutex_lock(&be->init_lock);
  CK_RV rv = CKR_OK;
  int st = session_state(be, be->anchor);
  if (st < 0 && be->anchor != CK_INVALID_HANDLE) { /* closed under us: forgotten */
    be->anchor = CK_INVALID_HANDLE;
    kvp_hsm_session_lost(be);
  }
  if (st == 1) { /* logged in (by us, or by someone else in the process) */
    atomic_store(&be->logged_in, 1);
  } else {
    atomic_store(&be->logged_in, 0);
    if (!be->pin_guard.blocked)
      KVP_WARN("hsm %s: token '%s' is not logged in; logging in with the configured PIN",
               be->base.name, kvp_hsm_token(be));
    rv = kvp_hsm_conf_login_locked(be);
    if (rv == CKR_OK)
      atomic_fetch_add(&be->login_gen, 1);
  }
  pthread_mutex_unlock(&be->init_lock);
  return rv;
}

/* ---------- pass-through PIN ---------- */

static CK_RV passthrough_login_locked(kvp_hsm_backend *be, const CK_UTF8CHAR *pin, CK_ULONG pin_len,
                                      const unsigned char *hash)
{
  int m = login_matches(be, hash);
  if (m >= 0 && kvp_hsm_session_logged_in(be, be->anchor)) {
    if (m == 0)
      return kvp_fail(CKR_PIN_INCORRECT,
                      "hsm %s: token '%s' is logged in already with another PIN; this one was "
                      "not sent to the HSM",
                      be->base.name, kvp_hsm_token(be));
    if (!atomic_exchange(&be->logged_in, 1))
      atomic_fetch_add(&be->login_gen, 1);
    return CKR_OK;
  }
  if (m >= 0)
    login_record(be, NULL); /* the token forgot that login */
  CK_RV hrv = anchor_login_locked(be, pin, pin_len);
  if (hrv == CKR_USER_ALREADY_LOGGED_IN)
    return kvp_fail(CKR_USER_ANOTHER_ALREADY_LOGGED_IN,
                    "hsm %s: token '%s' was logged in by someone else in this process; kvp11 "
                    "cannot check the PIN",
                    be->base.name, kvp_hsm_token(be));
  if (hrv != CKR_OK)
    return kvp_fail(kvp_hsm_map_rv(hrv), "hsm %s: C_Login (token '%s'): %s", be->base.name,
                    kvp_hsm_token(be), kvp_ckr_name(hrv));
  login_record(be, hash);
  atomic_fetch_add(&be->login_gen, 1);
  atomic_store(&be->logged_in, 1);
  return CKR_OK;
}

CK_RV kvp_hsm_login(kvp_backend *bep, const CK_UTF8CHAR *pin, CK_ULONG pin_len)
{
  kvp_hsm_backend *be = kvp_hsm_of(bep);
  unsigned char hash[KVP_HSM_PIN_HASH_LEN];
  if (be->has_pin)
    return CKR_OK; /* logged in with the configured PIN at first use */
  if (pin == NULL && pin_len > 0)
    return CKR_ARGUMENTS_BAD;
  CK_RV rv = kvp_hsm_ensure_init(be);
  if (rv != CKR_OK)
    return rv;
  if (!pin_hash(pin, pin_len, hash))
    return kvp_fail(CKR_FUNCTION_FAILED, "hsm %s: cannot hash the PIN (OpenSSL HMAC)",
                    be->base.name);
  pthread_mutex_lock(&be->init_lock);
  rv = passthrough_login_locked(be, pin, pin_len, hash);
  pthread_mutex_unlock(&be->init_lock);
  OPENSSL_cleanse(hash, sizeof(hash));
  return rv;
}

CK_RV kvp_hsm_logout(kvp_backend *bep)
{
  kvp_hsm_backend *be = kvp_hsm_of(bep);
  if (be->has_pin)
    return CKR_OK;
  if (!atomic_load_explicit(&be->ready, memory_order_acquire))
    return CKR_USER_NOT_LOGGED_IN;
  atomic_store(&be->logged_in, 0);
  atomic_fetch_add(&be->login_gen, 1);
  pthread_mutex_lock(&be->init_lock);
  login_record(be, NULL);
  CK_RV rv = be->anchor != CK_INVALID_HANDLE ? KVP_HSM_CALL(be, C_Logout, be->anchor) : CKR_OK;
  pthread_mutex_unlock(&be->init_lock);
  if (rv != CKR_OK && rv != CKR_USER_NOT_LOGGED_IN && !kvp_hsm_session_gone(rv))
    return kvp_fail(kvp_hsm_map_rv(rv), "hsm %s: C_Logout: %s", be->base.name, kvp_ckr_name(rv));
  return CKR_OK;
}
