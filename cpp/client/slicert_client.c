/* SliceRT isolated-mode client: see slicert_client.h for the contract and docs/firmware.md for the
 * protocol. C11 + POSIX (shm_open, mmap) + Linux futex(2). Allocates once (the handle, in connect).
 *
 * Memory order: a slot's request is published by a release store of req_seq after the descriptor
 * and pixels; the worker's result is read after an acquire load of done_seq. The doorbell is a
 * seq_cst fetch-add, so the load of worker_waiting after it cannot be hoisted above it (a sleeping
 * worker is never missed; the worker's futex compare covers the other order). The segment is not
 * trusted either: every size and count read from it is bounded before use.
 */
#define _GNU_SOURCE
#include "slicert_client.h"
#include "slicert_shm_layout.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define WAIT_SLICE_NS 5000000ull      /* liveness is re-checked at least this often while waiting */
#define RECHECK_NAME_NS 100000000ull  /* how often a DOWN client looks for a re-created segment */

_Static_assert(sizeof(float) == 4 && sizeof(double) == 8, "IEEE-754 float32/float64 expected");
_Static_assert(SLRT_S_MESSAGE + SLRT_MESSAGE_BYTES <= SLRT_SLOT_META_SIZE, "slot result block overflows");
_Static_assert(SLRT_H_LABELS + SLRT_MAX_CLASSES * SLRT_LABEL_BYTES <= SLRT_HEADER_SIZE, "labels overflow header");
_Static_assert(SLICERT_MAX_CLASSES == SLRT_MAX_CLASSES && SLICERT_LAYOUT_VERSION == SLRT_LAYOUT_VERSION,
               "public header and layout disagree");

struct slicert_client {
  char name[256];
  uint8_t *base;
  size_t size;
  uint64_t segment_id;
  dev_t dev;
  ino_t ino;
  uint32_t lanes, slots, hang_ms;
  uint64_t lane_size, slot_size, frame_cap, mask_cap;
  uint32_t lane;
  uint8_t *lane_ptr;
  slicert_mode mode;
  uint32_t liveness_ms;
  uint32_t spin_us;
  pid_t pid;
  uint64_t next_seq;
  uint64_t seq[SLRT_MAX_SLOTS];        /* request last published in each slot (0 = never) */
  uint8_t collected[SLRT_MAX_SLOTS];   /* its result was read, or it was abandoned */
  uint32_t epoch_seen;
  uint64_t last_name_check_ns;
  slicert_stats stats;
};

static _Thread_local char tls_error[SLICERT_MESSAGE_BYTES];

static slicert_status fail(slicert_status st, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(tls_error, sizeof tls_error, fmt, ap);
  va_end(ap);
  return st;
}

static slicert_status ok(void) {
  tls_error[0] = '\0';
  return SLICERT_OK;
}

const char *slicert_last_error(void) { return tls_error; }

const char *slicert_status_name(slicert_status s) {
  switch (s) {
    case SLICERT_OK: return "SLICERT_OK";
    case SLICERT_E_INVALID_ARGUMENT: return "SLICERT_E_INVALID_ARGUMENT";
    case SLICERT_E_NOT_FOUND: return "SLICERT_E_NOT_FOUND";
    case SLICERT_E_VERSION: return "SLICERT_E_VERSION";
    case SLICERT_E_CORRUPT: return "SLICERT_E_CORRUPT";
    case SLICERT_E_NO_LANE: return "SLICERT_E_NO_LANE";
    case SLICERT_E_BUSY: return "SLICERT_E_BUSY";
    case SLICERT_E_PENDING: return "SLICERT_E_PENDING";
    case SLICERT_E_TIMEOUT: return "SLICERT_E_TIMEOUT";
    case SLICERT_E_WORKER_DOWN: return "SLICERT_E_WORKER_DOWN";
    case SLICERT_E_RESTARTED: return "SLICERT_E_RESTARTED";
    case SLICERT_E_DROPPED: return "SLICERT_E_DROPPED";
    case SLICERT_E_REJECTED: return "SLICERT_E_REJECTED";
    case SLICERT_E_TOO_LARGE: return "SLICERT_E_TOO_LARGE";
    case SLICERT_E_SYSTEM: return "SLICERT_E_SYSTEM";
  }
  return "SLICERT_E_UNKNOWN";
}

/* -- shared-memory access ---------------------------------------------------------------------------- */
static inline _Atomic uint32_t *a32(uint8_t *p) { return (_Atomic uint32_t *)(void *)p; }
static inline _Atomic uint64_t *a64(uint8_t *p) { return (_Atomic uint64_t *)(void *)p; }
static inline uint32_t ld32(uint8_t *p) { return atomic_load_explicit(a32(p), memory_order_acquire); }
static inline uint64_t ld64(uint8_t *p) { return atomic_load_explicit(a64(p), memory_order_acquire); }
static inline void st32(uint8_t *p, uint32_t v) { atomic_store_explicit(a32(p), v, memory_order_release); }
static inline void st64(uint8_t *p, uint64_t v) { atomic_store_explicit(a64(p), v, memory_order_release); }
static inline uint32_t raw32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint64_t raw64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline uint8_t *slot_ptr(const slicert_client *c, uint32_t i) {
  return c->lane_ptr + SLRT_LANE_HEADER_SIZE + (uint64_t)i * c->slot_size;
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void futex_wait(uint8_t *word, uint32_t expected, uint64_t ns) {
  struct timespec ts = {(time_t)(ns / 1000000000ull), (long)(ns % 1000000000ull)};
  (void)syscall(SYS_futex, word, FUTEX_WAIT, expected, &ts, NULL, 0); /* EAGAIN/EINTR/ETIMEDOUT: re-check */
}

static void futex_wake(uint8_t *word) { (void)syscall(SYS_futex, word, FUTEX_WAKE, 1, NULL, NULL, 0); }

static int pid_gone(uint32_t pid) {
  if (pid == 0 || pid > (uint32_t)INT_MAX) return 1;
  return kill((pid_t)pid, 0) == -1 && errno == ESRCH;
}

static uint64_t align64(uint64_t n) { return (n + SLRT_ALIGN - 1) / SLRT_ALIGN * SLRT_ALIGN; }

/* -- connect ---------------------------------------------------------------------------------------- */
static slicert_status check_geometry(slicert_client *c, const uint8_t *h, size_t size) {
  uint64_t magic = raw64(h + SLRT_H_MAGIC);
  uint32_t version = raw32(h + SLRT_H_VERSION);
  if (magic != SLRT_MAGIC)
    return fail(SLICERT_E_CORRUPT, "segment %s: bad magic 0x%016llx (not a SliceRT segment, or not initialised)",
                c->name, (unsigned long long)magic);
  if (version != SLRT_LAYOUT_VERSION)
    return fail(SLICERT_E_VERSION, "segment %s speaks layout version %u, this client speaks %u", c->name, version,
                SLRT_LAYOUT_VERSION);
  if (raw32(h + SLRT_H_HEADER_SIZE) != SLRT_HEADER_SIZE || raw32(h + SLRT_H_MAX_CLASSES) != SLRT_MAX_CLASSES)
    return fail(SLICERT_E_CORRUPT, "segment %s: header_size %u / max_classes %u, expected %u / %u", c->name,
                raw32(h + SLRT_H_HEADER_SIZE), raw32(h + SLRT_H_MAX_CLASSES), SLRT_HEADER_SIZE, SLRT_MAX_CLASSES);
  uint32_t lanes = raw32(h + SLRT_H_LANE_COUNT), slots = raw32(h + SLRT_H_SLOTS_PER_LANE);
  uint64_t fcap = raw64(h + SLRT_H_FRAME_CAPACITY), mcap = raw64(h + SLRT_H_MASK_CAPACITY);
  uint32_t hang = raw32(h + SLRT_H_HANG_TIMEOUT_MS);
  if (lanes < 1 || lanes > SLRT_MAX_LANES || slots < 1 || slots > SLRT_MAX_SLOTS || fcap < 1 ||
      fcap > (1ull << 31) || mcap > (1ull << 31) || hang < 10 || hang > 600000)
    return fail(SLICERT_E_CORRUPT, "segment %s: geometry out of bounds (lanes %u, slots %u, frame %llu B, "
                "mask %llu px, hang %u ms)", c->name, lanes, slots, (unsigned long long)fcap,
                (unsigned long long)mcap, hang);
  /* bounded above, so none of these products overflow 64 bits */
  uint64_t slot_size = SLRT_SLOT_META_SIZE + align64(fcap) + align64(mcap);
  uint64_t lane_size = SLRT_LANE_HEADER_SIZE + slots * slot_size;
  uint64_t total = SLRT_HEADER_SIZE + lanes * lane_size;
  if (raw64(h + SLRT_H_SLOT_SIZE) != slot_size || raw64(h + SLRT_H_LANE_SIZE) != lane_size ||
      raw64(h + SLRT_H_TOTAL_SIZE) != total || (uint64_t)size != total)
    return fail(SLICERT_E_CORRUPT, "segment %s: sizes disagree (slot %llu/%llu, lane %llu/%llu, total %llu/%llu, "
                "file %zu)", c->name, (unsigned long long)raw64(h + SLRT_H_SLOT_SIZE), (unsigned long long)slot_size,
                (unsigned long long)raw64(h + SLRT_H_LANE_SIZE), (unsigned long long)lane_size,
                (unsigned long long)raw64(h + SLRT_H_TOTAL_SIZE), (unsigned long long)total, size);
  c->lanes = lanes;
  c->slots = slots;
  c->frame_cap = fcap;
  c->mask_cap = mcap;
  c->slot_size = slot_size;
  c->lane_size = lane_size;
  c->hang_ms = hang;
  return SLICERT_OK;
}

static slicert_status claim_lane(slicert_client *c) {
  for (uint32_t l = 0; l < c->lanes; ++l) {
    uint8_t *lane = c->base + SLRT_HEADER_SIZE + (uint64_t)l * c->lane_size;
    uint32_t expected = 0;
    int won = atomic_compare_exchange_strong(a32(lane + SLRT_L_OWNER_PID), &expected, (uint32_t)c->pid);
    if (!won && expected != (uint32_t)c->pid && pid_gone(expected)) /* its client died: take the lane over */
      won = atomic_compare_exchange_strong(a32(lane + SLRT_L_OWNER_PID), &expected, (uint32_t)c->pid);
    if (!won) continue;
    c->lane = l;
    c->lane_ptr = lane;
    st32(lane + SLRT_L_MODE, (uint32_t)c->mode);
    st32(lane + SLRT_L_CLIENT_ABI, SLRT_LAYOUT_VERSION);
    st32(lane + SLRT_L_CLIENT_WAITING, 0);
    st64(lane + SLRT_L_CLAIM_NONCE, now_ns() ^ ((uint64_t)c->pid << 32));
    /* Sequence numbers go on from the lane's history; a frame a previous owner left queued is
     * abandoned (its slot frees itself once the worker finishes or fails it). */
    uint64_t top = 0;
    for (uint32_t i = 0; i < c->slots; ++i) {
      uint8_t *s = slot_ptr(c, i);
      uint64_t r = ld64(s + SLRT_S_REQ_SEQ), d = ld64(s + SLRT_S_DONE_SEQ);
      c->seq[i] = r;
      c->collected[i] = 1;
      if (r > top) top = r;
      if (d > top) top = d;
    }
    c->next_seq = top;
    return SLICERT_OK;
  }
  return fail(SLICERT_E_NO_LANE, "segment %s: all %u client lanes are taken", c->name, c->lanes);
}

static slicert_status attach(slicert_client *c) {
  int fd = shm_open(c->name, O_RDWR, 0);
  if (fd < 0) {
    if (errno == ENOENT) return fail(SLICERT_E_NOT_FOUND, "no shared-memory segment %s (is the worker running?)", c->name);
    return fail(SLICERT_E_SYSTEM, "shm_open(%s): %s", c->name, strerror(errno));
  }
  struct stat sb;
  if (fstat(fd, &sb) != 0) {
    int e = errno;
    close(fd);
    return fail(SLICERT_E_SYSTEM, "fstat(%s): %s", c->name, strerror(e));
  }
  if (sb.st_size < (off_t)SLRT_HEADER_SIZE) {
    close(fd);
    return fail(SLICERT_E_CORRUPT, "segment %s is %lld bytes, smaller than its %u-byte header", c->name,
                (long long)sb.st_size, SLRT_HEADER_SIZE);
  }
  size_t size = (size_t)sb.st_size;
  void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  int e = errno;
  close(fd);
  if (p == MAP_FAILED) return fail(SLICERT_E_SYSTEM, "mmap(%s, %zu bytes): %s", c->name, size, strerror(e));
  c->base = (uint8_t *)p;
  c->size = size;
  slicert_status st = check_geometry(c, c->base, size);
  if (st == SLICERT_OK) st = claim_lane(c);
  if (st != SLICERT_OK) {
    munmap(p, size);
    c->base = NULL;
    c->lane_ptr = NULL;
    return st;
  }
  c->dev = sb.st_dev;
  c->ino = sb.st_ino;
  c->segment_id = raw64(c->base + SLRT_H_SEGMENT_ID);
  c->epoch_seen = ld32(c->base + SLRT_H_WORKER_EPOCH);
  c->stats.epochs_seen = 1;
  return SLICERT_OK;
}

static void detach(slicert_client *c) {
  if (!c->base) return;
  uint32_t me = (uint32_t)c->pid;
  atomic_compare_exchange_strong(a32(c->lane_ptr + SLRT_L_OWNER_PID), &me, 0u);
  munmap(c->base, c->size);
  c->base = NULL;
  c->lane_ptr = NULL;
}

slicert_status slicert_connect(const char *shm_name, const slicert_connect_options *options, slicert_client **out) {
  if (!out) return fail(SLICERT_E_INVALID_ARGUMENT, "slicert_connect: out is NULL");
  *out = NULL;
  if (!shm_name || !shm_name[0]) return fail(SLICERT_E_INVALID_ARGUMENT, "slicert_connect: empty segment name");
  size_t n = strlen(shm_name);
  if (n > 200) return fail(SLICERT_E_INVALID_ARGUMENT, "slicert_connect: segment name longer than 200 characters");
  slicert_mode mode = options && options->mode ? options->mode : SLICERT_MODE_STILL;
  if (mode != SLICERT_MODE_STILL && mode != SLICERT_MODE_CINE)
    return fail(SLICERT_E_INVALID_ARGUMENT, "slicert_connect: mode %d is neither STILL (1) nor CINE (2)", (int)mode);
  slicert_client *c = calloc(1, sizeof *c);
  if (!c) return fail(SLICERT_E_SYSTEM, "slicert_connect: out of memory");
  snprintf(c->name, sizeof c->name, "%s%s", shm_name[0] == '/' ? "" : "/", shm_name);
  c->mode = mode;
  c->liveness_ms = options ? options->liveness_timeout_ms : 0;
  c->spin_us = options ? (options->spin_us > 10000 ? 10000 : options->spin_us) : 0;
  c->pid = getpid();
  slicert_status st = attach(c);
  if (st != SLICERT_OK) {
    free(c);
    return st;
  }
  *out = c;
  return ok();
}

slicert_status slicert_disconnect(slicert_client **client) {
  if (!client || !*client) return ok();
  detach(*client);
  free(*client);
  *client = NULL;
  return ok();
}

slicert_status slicert_reconnect(slicert_client *c) {
  if (!c) return fail(SLICERT_E_INVALID_ARGUMENT, "slicert_reconnect: client is NULL");
  detach(c);
  slicert_stats keep = c->stats;
  slicert_status st = attach(c);
  uint32_t epochs = keep.epochs_seen + 1;
  c->stats = keep;
  c->stats.epochs_seen = epochs;
  return st == SLICERT_OK ? ok() : st;
}

/* -- liveness --------------------------------------------------------------------------------------- */
static slicert_status worker_down(slicert_client *c, const char *why) {
  uint64_t t = now_ns();
  const char *hint = "";
  if (t - c->last_name_check_ns > RECHECK_NAME_NS) {
    c->last_name_check_ns = t;
    int fd = shm_open(c->name, O_RDONLY, 0);
    struct stat sb;
    uint64_t id = 0;
    /* a new file, or the same inode number reused for a new segment (its random id differs) */
    if (fd >= 0 && fstat(fd, &sb) == 0 &&
        (sb.st_ino != c->ino || sb.st_dev != c->dev ||
         (pread(fd, &id, sizeof id, SLRT_H_SEGMENT_ID) == (ssize_t)sizeof id && id != c->segment_id)))
      hint = "; the segment was re-created: call slicert_reconnect()";
    if (fd >= 0) close(fd);
  }
  uint32_t sup = raw32(c->base + SLRT_H_SUPERVISOR_PID);
  if (sup && !hint[0] && !pid_gone(sup)) hint = "; its supervisor is restarting it";
  return fail(SLICERT_E_WORKER_DOWN, "segment %s: worker %s%s", c->name, why, hint);
}

static slicert_status check_worker(slicert_client *c, int check_pid) {
  if (!c->base) return fail(SLICERT_E_WORKER_DOWN, "segment %s is not mapped: call slicert_reconnect()", c->name);
  uint8_t *h = c->base;
  uint32_t state = ld32(h + SLRT_H_WORKER_STATE);
  uint32_t epoch = ld32(h + SLRT_H_WORKER_EPOCH);
  if (epoch != c->epoch_seen) {
    c->epoch_seen = epoch;
    c->stats.epochs_seen++;
  }
  char why[96];
  if (state != SLRT_STATE_READY) {
    snprintf(why, sizeof why, "is not running (state %u)", state);
    return worker_down(c, why);
  }
  uint64_t live_ns = (uint64_t)(c->liveness_ms ? c->liveness_ms : c->hang_ms) * 1000000ull;
  uint64_t hb = ld64(h + SLRT_H_HEARTBEAT_NS), t = now_ns();
  if (t > hb && t - hb > live_ns) {
    snprintf(why, sizeof why, "pid %u is hung (no heartbeat for %llu ms)", ld32(h + SLRT_H_WORKER_PID),
             (unsigned long long)((t - hb) / 1000000ull));
    return worker_down(c, why);
  }
  if (check_pid) {
    uint32_t pid = ld32(h + SLRT_H_WORKER_PID);
    if (pid_gone(pid)) {
      snprintf(why, sizeof why, "pid %u is gone", pid);
      return worker_down(c, why);
    }
  }
  return SLICERT_OK;
}

/* -- frames ----------------------------------------------------------------------------------------- */
static const uint32_t kItemSize[6] = {0, 1, 2, 2, 4, 4};

slicert_status slicert_submit(slicert_client *c, const slicert_frame *f, uint64_t *frame_id) {
  if (!c || !f || !f->pixels) return fail(SLICERT_E_INVALID_ARGUMENT, "slicert_submit: NULL client, frame or pixels");
  if ((int)f->dtype < 1 || (int)f->dtype > 5)
    return fail(SLICERT_E_INVALID_ARGUMENT, "slicert_submit: dtype %d is not a slicert_dtype", (int)f->dtype);
  if (f->channels != 1 && f->channels != 3)
    return fail(SLICERT_E_INVALID_ARGUMENT, "slicert_submit: channels %u must be 1 or 3", f->channels);
  if (f->height < 1 || f->height > SLRT_MAX_SIDE || f->width < 1 || f->width > SLRT_MAX_SIDE)
    return fail(SLICERT_E_INVALID_ARGUMENT, "slicert_submit: %u x %u pixels is outside 1..%u", f->height, f->width,
                SLRT_MAX_SIDE);
  double sr = f->pixel_spacing_mm[0], sc = f->pixel_spacing_mm[1];
  if (!(sr == 0.0 && sc == 0.0) && !(sr > 0.0 && sr <= 1e3 && sc > 0.0 && sc <= 1e3))
    return fail(SLICERT_E_INVALID_ARGUMENT, "slicert_submit: pixel spacing (%g, %g) mm must be both 0 or in (0, 1000]",
                sr, sc);
  if (!c->base) return check_worker(c, 0);
  uint64_t pixels = (uint64_t)f->height * f->width;
  uint64_t bytes = pixels * f->channels * kItemSize[f->dtype];
  if (bytes > c->frame_cap)
    return fail(SLICERT_E_TOO_LARGE, "slicert_submit: a %llu-byte frame does not fit the %llu-byte slots",
                (unsigned long long)bytes, (unsigned long long)c->frame_cap);
  if (ld32(c->base + SLRT_H_TASK) == SLICERT_TASK_SEGMENTATION && pixels > c->mask_cap)
    return fail(SLICERT_E_TOO_LARGE, "slicert_submit: a %u x %u mask does not fit the %llu-pixel mask area",
                f->height, f->width, (unsigned long long)c->mask_cap);
  slicert_status st = check_worker(c, 0);
  if (st != SLICERT_OK) return st;

  int pick = -1;
  uint64_t pick_seq = UINT64_MAX;
  for (uint32_t i = 0; i < c->slots; ++i) {
    if (ld64(slot_ptr(c, i) + SLRT_S_DONE_SEQ) != c->seq[i]) continue; /* queued or running */
    if (c->collected[i]) { pick = (int)i; break; }
    /* cine: an uncollected result is superseded by the newer frame; take the oldest such slot */
    if (c->mode == SLICERT_MODE_CINE && c->seq[i] < pick_seq) { pick = (int)i; pick_seq = c->seq[i]; }
  }
  if (pick < 0) {
    c->stats.dropped_busy++;
    st64(c->lane_ptr + SLRT_L_CLIENT_DROPPED, c->stats.dropped_busy);
    return fail(SLICERT_E_BUSY, "slicert_submit: all %u slots of lane %u are queued or uncollected (frame dropped)",
                c->slots, c->lane);
  }
  uint8_t *s = slot_ptr(c, (uint32_t)pick);
  uint32_t desc[4] = {(uint32_t)f->dtype, f->channels, f->height, f->width};
  memcpy(s + SLRT_S_DTYPE, desc, sizeof desc);
  memcpy(s + SLRT_S_SPACING_ROW_MM, &sr, 8);
  memcpy(s + SLRT_S_SPACING_COL_MM, &sc, 8);
  memcpy(s + SLRT_S_FRAME_BYTES, &bytes, 8);
  memcpy(s + SLRT_SLOT_META_SIZE, f->pixels, (size_t)bytes);
  uint64_t t = now_ns();
  memcpy(s + SLRT_S_SUBMIT_NS, &t, 8);
  uint64_t seq = ++c->next_seq;
  c->seq[pick] = seq;
  c->collected[pick] = 0;
  st64(s + SLRT_S_REQ_SEQ, seq); /* release: descriptor and pixels are visible before the sequence number */
  c->stats.submitted++;
  st64(c->lane_ptr + SLRT_L_SUBMITTED, c->stats.submitted);
  atomic_fetch_add_explicit(a32(c->base + SLRT_H_DOORBELL), 1u, memory_order_seq_cst);
  if (ld32(c->base + SLRT_H_WORKER_WAITING)) futex_wake(c->base + SLRT_H_DOORBELL);
  if (frame_id) *frame_id = seq;
  return ok();
}

static int find_slot(const slicert_client *c, uint64_t id) {
  for (uint32_t i = 0; i < c->slots; ++i)
    if (c->seq[i] == id && !c->collected[i]) return (int)i;
  return -1;
}

/* Cine: once frame `seq` is collected, finished older frames are stale; collect them silently, counting
 * the ones the worker skipped. */
static void supersede_older(slicert_client *c, uint64_t seq) {
  for (uint32_t i = 0; i < c->slots; ++i) {
    if (c->collected[i] || c->seq[i] >= seq) continue;
    uint8_t *s = slot_ptr(c, i);
    if (ld64(s + SLRT_S_DONE_SEQ) != c->seq[i]) continue;
    int32_t wstatus;
    memcpy(&wstatus, s + SLRT_S_STATUS, 4);
    if (wstatus == SLICERT_E_DROPPED) c->stats.dropped_superseded++;
    c->collected[i] = 1;
  }
}

/* Copies slot i's result (done_seq already seen == seq[i]) into r; bounds every count it reads. */
static slicert_status read_result(slicert_client *c, uint32_t i, slicert_result *r) {
  uint8_t *s = slot_ptr(c, i);
  int32_t wstatus;
  memcpy(&wstatus, s + SLRT_S_STATUS, 4);
  uint32_t flags = raw32(s + SLRT_S_RESULT_FLAGS);
  uint32_t ncls = raw32(s + SLRT_S_NUM_CLASSES), mh = raw32(s + SLRT_S_MASK_HEIGHT), mw = raw32(s + SLRT_S_MASK_WIDTH);
  slicert_status st;
  switch (wstatus) {
    case 0: st = SLICERT_OK; break;
    case SLICERT_E_RESTARTED: st = SLICERT_E_RESTARTED; c->stats.restarted++; break;
    case SLICERT_E_DROPPED: st = SLICERT_E_DROPPED; c->stats.dropped_superseded++; break;
    case SLICERT_E_REJECTED: st = SLICERT_E_REJECTED; c->stats.rejected++; break;
    default:
      c->collected[i] = 1;
      return fail(SLICERT_E_CORRUPT, "frame %llu: the worker wrote unknown status %d", (unsigned long long)c->seq[i],
                  (int)wstatus);
  }
  if (ncls > SLRT_MAX_CLASSES || (uint64_t)mh * mw > c->mask_cap) {
    c->collected[i] = 1;
    return fail(SLICERT_E_CORRUPT, "frame %llu: result out of bounds (%u classes, %u x %u mask)",
                (unsigned long long)c->seq[i], ncls, mh, mw);
  }
  uint64_t mask_bytes = (flags & SLRT_RF_HAS_MASK) ? (uint64_t)mh * mw : 0;
  if (mask_bytes && r->mask && r->mask_capacity < mask_bytes)
    return fail(SLICERT_E_TOO_LARGE, "frame %llu: the %u x %u mask needs %llu bytes, result.mask_capacity is %zu",
                (unsigned long long)c->seq[i], mh, mw, (unsigned long long)mask_bytes, r->mask_capacity);
  uint64_t t_seen = now_ns();
  r->frame_id = c->seq[i];
  r->status = st;
  r->task = (slicert_task)ld32(c->base + SLRT_H_TASK);
  r->num_classes = ncls;
  memcpy(&r->label, s + SLRT_S_LABEL, 4);
  r->dropped_before = raw32(s + SLRT_S_DROPPED_BEFORE);
  r->has_areas = (flags & SLRT_RF_HAS_AREAS) ? 1u : 0u;
  r->worker_epoch = raw32(s + SLRT_S_WORKER_EPOCH);
  r->mask_height = mask_bytes ? mh : 0;
  r->mask_width = mask_bytes ? mw : 0;
  memcpy(r->timings_ms, s + SLRT_S_TIMINGS, sizeof r->timings_ms);
  memset(r->scores, 0, sizeof r->scores);
  memset(r->pixel_counts, 0, sizeof r->pixel_counts);
  memset(r->areas_mm2, 0, sizeof r->areas_mm2);
  if (st == SLICERT_OK) {
    if (r->task == SLICERT_TASK_CLASSIFICATION) memcpy(r->scores, s + SLRT_S_SCORES, ncls * sizeof(float));
    if (flags & SLRT_RF_HAS_MASK) memcpy(r->pixel_counts, s + SLRT_S_PIXEL_COUNTS, ncls * sizeof(uint64_t));
    if (r->has_areas) memcpy(r->areas_mm2, s + SLRT_S_AREAS_MM2, ncls * sizeof(double));
    if (mask_bytes && r->mask) memcpy(r->mask, s + SLRT_SLOT_META_SIZE + align64(c->frame_cap), (size_t)mask_bytes);
    c->stats.completed++;
  }
  memcpy(r->message, s + SLRT_S_MESSAGE, SLRT_MESSAGE_BYTES);
  r->message[SLRT_MESSAGE_BYTES - 1] = '\0';
  if (st == SLICERT_OK) r->message[0] = '\0';
  uint64_t submit = raw64(s + SLRT_S_SUBMIT_NS), taken = raw64(s + SLRT_S_TAKEN_NS);
  r->queue_ms = taken > submit ? (double)(taken - submit) * 1e-6 : 0.0;
  r->round_trip_ms = t_seen > submit ? (double)(t_seen - submit) * 1e-6 : 0.0;
  c->collected[i] = 1;
  if (c->mode == SLICERT_MODE_CINE) supersede_older(c, r->frame_id);
  if (st == SLICERT_OK) return ok();
  return fail(st, "frame %llu: %s", (unsigned long long)r->frame_id, r->message[0] ? r->message : slicert_status_name(st));
}

slicert_status slicert_wait(slicert_client *c, uint64_t id, uint32_t timeout_ms, slicert_result *r) {
  if (!c || !r) return fail(SLICERT_E_INVALID_ARGUMENT, "slicert_wait: NULL client or result");
  if (!c->base) return check_worker(c, 0);
  int i = find_slot(c, id);
  if (i < 0)
    return fail(SLICERT_E_INVALID_ARGUMENT, "slicert_wait: frame %llu is not pending on this handle (collected, "
                "or never submitted)", (unsigned long long)id);
  uint8_t *done = slot_ptr(c, (uint32_t)i) + SLRT_S_DONE_SEQ;
  uint8_t *word = c->lane_ptr + SLRT_L_DONE_WORD;
  uint64_t start = now_ns();
  uint64_t deadline = start + (uint64_t)timeout_ms * 1000000ull;
  if (c->spin_us && timeout_ms) { /* the result of a short frame often lands within the spin */
    uint64_t spin_end = start + (uint64_t)c->spin_us * 1000ull;
    if (spin_end > deadline) spin_end = deadline;
    while (ld64(done) != id && now_ns() < spin_end) {
    }
  }
  for (;;) {
    if (ld64(done) == id) return read_result(c, (uint32_t)i, r);
    slicert_status st = check_worker(c, 1);
    if (st != SLICERT_OK) return st;
    uint64_t t = now_ns();
    if (t >= deadline) {
      if (timeout_ms == 0) return fail(SLICERT_E_PENDING, "frame %llu: no result yet", (unsigned long long)id);
      return fail(SLICERT_E_TIMEOUT, "frame %llu: no result within %u ms (still queued)", (unsigned long long)id,
                  timeout_ms);
    }
    uint32_t w = ld32(word);
    st32(c->lane_ptr + SLRT_L_CLIENT_WAITING, 1);
    atomic_thread_fence(memory_order_seq_cst);
    if (ld64(done) != id) {
      uint64_t left = deadline - t;
      futex_wait(word, w, left < WAIT_SLICE_NS ? left : WAIT_SLICE_NS);
    }
    st32(c->lane_ptr + SLRT_L_CLIENT_WAITING, 0);
  }
}

slicert_status slicert_latest(slicert_client *c, slicert_result *r) {
  if (!c || !r) return fail(SLICERT_E_INVALID_ARGUMENT, "slicert_latest: NULL client or result");
  if (!c->base) return check_worker(c, 0);
  int best = -1;
  for (uint32_t i = 0; i < c->slots; ++i)
    if (!c->collected[i] && ld64(slot_ptr(c, i) + SLRT_S_DONE_SEQ) == c->seq[i] &&
        (best < 0 || c->seq[i] > c->seq[best]))
      best = (int)i;
  if (best < 0) return fail(SLICERT_E_PENDING, "no new result on lane %u", c->lane);
  return read_result(c, (uint32_t)best, r); /* collects the older finished ones too (cine) */
}

slicert_status slicert_run(slicert_client *c, const slicert_frame *f, uint32_t timeout_ms, slicert_result *r) {
  uint64_t id = 0;
  slicert_status st = slicert_submit(c, f, &id);
  if (st != SLICERT_OK) return st;
  return slicert_wait(c, id, timeout_ms, r);
}

/* -- introspection ---------------------------------------------------------------------------------- */
slicert_status slicert_get_info(const slicert_client *c, slicert_info *info) {
  if (!c || !info) return fail(SLICERT_E_INVALID_ARGUMENT, "slicert_get_info: NULL client or info");
  if (!c->base) return fail(SLICERT_E_WORKER_DOWN, "segment %s is not mapped: call slicert_reconnect()", c->name);
  uint8_t *h = c->base;
  memset(info, 0, sizeof *info);
  info->task = (slicert_task)ld32(h + SLRT_H_TASK);
  uint32_t n = ld32(h + SLRT_H_NUM_CLASSES);
  info->num_classes = n > SLRT_MAX_CLASSES ? SLRT_MAX_CLASSES : n;
  info->lane = c->lane;
  info->lanes = c->lanes;
  info->slots_per_lane = c->slots;
  info->frame_capacity = c->frame_cap;
  info->mask_capacity = c->mask_cap;
  info->worker_pid = ld32(h + SLRT_H_WORKER_PID);
  info->worker_epoch = ld32(h + SLRT_H_WORKER_EPOCH);
  info->restarts = ld32(h + SLRT_H_RESTARTS);
  info->hang_timeout_ms = c->hang_ms;
  memcpy(info->bundle_name, h + SLRT_H_BUNDLE_NAME, sizeof info->bundle_name);
  info->bundle_name[sizeof info->bundle_name - 1] = '\0';
  return ok();
}

slicert_status slicert_get_stats(const slicert_client *c, slicert_stats *stats) {
  if (!c || !stats) return fail(SLICERT_E_INVALID_ARGUMENT, "slicert_get_stats: NULL client or stats");
  *stats = c->stats;
  return ok();
}

slicert_status slicert_label(const slicert_client *c, uint32_t index, char *buf, size_t buf_size) {
  if (!c || !buf || buf_size == 0) return fail(SLICERT_E_INVALID_ARGUMENT, "slicert_label: NULL client or buffer");
  if (!c->base) return fail(SLICERT_E_WORKER_DOWN, "segment %s is not mapped: call slicert_reconnect()", c->name);
  uint32_t n = ld32(c->base + SLRT_H_NUM_CLASSES);
  if (index >= n || index >= SLRT_MAX_CLASSES)
    return fail(SLICERT_E_INVALID_ARGUMENT, "slicert_label: class %u of %u", index, n);
  const char *src = (const char *)c->base + SLRT_H_LABELS + index * SLRT_LABEL_BYTES;
  size_t len = strnlen(src, SLRT_LABEL_BYTES - 1);
  if (len >= buf_size) len = buf_size - 1;
  memcpy(buf, src, len);
  buf[len] = '\0';
  return ok();
}
