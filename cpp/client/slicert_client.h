/* slicert_client.h: call a SliceRT worker (`slicert worker --shm NAME`) from firmware over shared memory.
 *
 * Plain C ABI (C11), Linux, libc + pthreads only. Shared-memory layout version SLICERT_LAYOUT_VERSION:
 * a segment of another version is refused at connect with SLICERT_E_VERSION.
 *
 * Rules the firmware can rely on:
 *  - Every function returns a slicert_status; on failure slicert_last_error() gives a message
 *    (thread-local, valid until the calling thread's next slicert_* call). Nothing aborts or exits.
 *  - The client allocates memory once, in slicert_connect (one handle; freed by slicert_disconnect).
 *  - slicert_submit never blocks: it copies the frame into a free slot and returns (SLICERT_E_BUSY when
 *    every slot of this client's lane is still in use). slicert_wait blocks at most timeout_ms.
 *  - A dead or hung worker turns into SLICERT_E_WORKER_DOWN (submit) or SLICERT_E_WORKER_DOWN /
 *    SLICERT_E_TIMEOUT (wait) within the timeouts, never a hang. When a supervisor restarts the worker,
 *    the same handle works again: frames lost in the crash report SLICERT_E_RESTARTED.
 *  - A handle is used by one thread at a time (no internal locking); use one handle per thread.
 */
#ifndef SLICERT_CLIENT_H
#define SLICERT_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SLICERT_LAYOUT_VERSION 1u
#define SLICERT_MAX_CLASSES 64u
#define SLICERT_MESSAGE_BYTES 256u

typedef enum slicert_status {
  SLICERT_OK = 0,
  SLICERT_E_INVALID_ARGUMENT = 1, /* a NULL pointer, a bad dtype/size, a frame id this handle never issued */
  SLICERT_E_NOT_FOUND = 2,        /* no segment of that name (worker not started yet?) */
  SLICERT_E_VERSION = 3,          /* the segment speaks another layout version */
  SLICERT_E_CORRUPT = 4,          /* the segment header is inconsistent (magic, sizes) */
  SLICERT_E_NO_LANE = 5,          /* every client lane of the segment is taken */
  SLICERT_E_BUSY = 6,             /* every slot of this lane is in use: frame not queued (counted as dropped) */
  SLICERT_E_PENDING = 7,          /* slicert_poll: the result is not there yet */
  SLICERT_E_TIMEOUT = 8,          /* slicert_wait: no result within timeout_ms (the frame stays queued) */
  SLICERT_E_WORKER_DOWN = 9,      /* no live worker (dead, hung, stopped or still starting) */
  SLICERT_E_RESTARTED = 10,       /* the worker restarted before this frame finished; resubmit if needed */
  SLICERT_E_DROPPED = 11,         /* cine: a newer frame superseded this one before it ran */
  SLICERT_E_REJECTED = 12,        /* the worker refused this frame (bad input); result.message says why */
  SLICERT_E_TOO_LARGE = 13,       /* the frame or its mask does not fit the segment's slots */
  SLICERT_E_SYSTEM = 14           /* an OS call failed (errno in the message) */
} slicert_status;

typedef enum slicert_mode {
  SLICERT_MODE_STILL = 1, /* every frame runs, in submission order (radiography, CT) */
  SLICERT_MODE_CINE = 2   /* latest frame wins: older queued frames are dropped (ultrasound, fluoroscopy) */
} slicert_mode;

typedef enum slicert_dtype {
  SLICERT_DTYPE_U8 = 1,
  SLICERT_DTYPE_U16 = 2,
  SLICERT_DTYPE_I16 = 3,
  SLICERT_DTYPE_I32 = 4,
  SLICERT_DTYPE_F32 = 5
} slicert_dtype;

typedef enum slicert_task { SLICERT_TASK_CLASSIFICATION = 1, SLICERT_TASK_SEGMENTATION = 2 } slicert_task;

/* Indices into slicert_result.timings_ms; the first seven are the worker's Result.timings_ms. */
enum {
  SLICERT_T_DECODE = 0, SLICERT_T_PREPROCESS, SLICERT_T_H2D, SLICERT_T_INFER, SLICERT_T_D2H,
  SLICERT_T_POSTPROCESS, SLICERT_T_TOTAL, SLICERT_T_WORKER, /* worker: frame taken -> result published */
  SLICERT_T_COUNT
};

typedef struct slicert_connect_options {
  slicert_mode mode;            /* 0 = SLICERT_MODE_STILL */
  uint32_t liveness_timeout_ms; /* worker silent longer = down; 0 = the segment's hang timeout */
  uint32_t spin_us;             /* slicert_wait polls this long before sleeping (0 = sleep at once) */
} slicert_connect_options;

typedef struct slicert_frame {
  const void *pixels;             /* height * width * channels samples, rows contiguous, native byte order */
  slicert_dtype dtype;
  uint32_t height, width;         /* pixels, 1..65535 */
  uint32_t channels;              /* 1 grey, 3 RGB interleaved */
  double pixel_spacing_mm[2];     /* (row, col); {0, 0} = unknown (no areas) */
} slicert_frame;

typedef struct slicert_result {
  /* in: where a segmentation mask is copied (NULL = do not copy it) */
  uint8_t *mask;
  size_t mask_capacity;           /* bytes at mask */
  /* out */
  uint64_t frame_id;
  slicert_status status;          /* SLICERT_OK, or why this frame has no result */
  slicert_task task;
  uint32_t num_classes;
  int32_t label;                  /* classification: index of the best class; -1 otherwise */
  uint32_t dropped_before;        /* frames of this lane dropped since the previous result */
  uint32_t has_areas;             /* segmentation with pixel spacing */
  uint32_t mask_height, mask_width; /* segmentation: mask in the source geometry (0 x 0 if none) */
  uint32_t worker_epoch;
  float scores[SLICERT_MAX_CLASSES];         /* classification: post-processed scores */
  uint64_t pixel_counts[SLICERT_MAX_CLASSES]; /* segmentation: source pixels per class */
  double areas_mm2[SLICERT_MAX_CLASSES];      /* segmentation with spacing: mm^2 per class */
  double timings_ms[SLICERT_T_COUNT];
  double queue_ms;                /* submit -> worker took the frame */
  double round_trip_ms;           /* submit -> result seen by this client */
  char message[SLICERT_MESSAGE_BYTES]; /* the worker's reason when status != SLICERT_OK */
} slicert_result;

typedef struct slicert_info {
  slicert_task task;
  uint32_t num_classes;
  uint32_t lane;                  /* this handle's lane */
  uint32_t lanes, slots_per_lane;
  uint64_t frame_capacity;        /* bytes */
  uint64_t mask_capacity;         /* pixels */
  uint32_t worker_pid, worker_epoch, restarts;
  uint32_t hang_timeout_ms;
  char bundle_name[64];
} slicert_info;

typedef struct slicert_stats {
  uint64_t submitted;
  uint64_t completed;             /* results collected with SLICERT_OK */
  uint64_t dropped_busy;          /* submits refused with SLICERT_E_BUSY */
  uint64_t dropped_superseded;    /* cine frames the worker skipped for a newer one */
  uint64_t rejected;
  uint64_t restarted;             /* frames lost to a worker restart */
  uint32_t epochs_seen;           /* worker epochs this handle has talked to */
} slicert_stats;

typedef struct slicert_client slicert_client;

/* Map the segment "/NAME" (or "NAME"), check its version and geometry, claim a free lane. */
slicert_status slicert_connect(const char *shm_name, const slicert_connect_options *options,
                               slicert_client **out);
/* Release the lane and the mapping; *client is set to NULL. Safe on NULL. */
slicert_status slicert_disconnect(slicert_client **client);
/* Re-map the segment when it was re-created (new segment id), keeping the handle. */
slicert_status slicert_reconnect(slicert_client *client);

/* Copy a frame into a free slot and ring the worker; *frame_id identifies it. Never blocks. */
slicert_status slicert_submit(slicert_client *client, const slicert_frame *frame, uint64_t *frame_id);
/* Wait at most timeout_ms for frame_id's result (0 = just look). The return value equals result->status
 * when a result (or its failure) arrived; TIMEOUT / WORKER_DOWN leave the frame queued. */
slicert_status slicert_wait(slicert_client *client, uint64_t frame_id, uint32_t timeout_ms,
                            slicert_result *result);
/* Cine: the newest finished result of this lane (older finished ones are discarded); PENDING if none. */
slicert_status slicert_latest(slicert_client *client, slicert_result *result);
/* submit + wait. */
slicert_status slicert_run(slicert_client *client, const slicert_frame *frame, uint32_t timeout_ms,
                           slicert_result *result);

slicert_status slicert_get_info(const slicert_client *client, slicert_info *info);
slicert_status slicert_get_stats(const slicert_client *client, slicert_stats *stats);
/* Copy class `index`'s label (NUL-terminated) into buf. */
slicert_status slicert_label(const slicert_client *client, uint32_t index, char *buf, size_t buf_size);

/* The calling thread's message for the last failed call ("" if none). Never NULL. */
const char *slicert_last_error(void);
/* A constant name for a status ("SLICERT_E_BUSY"). Never NULL. */
const char *slicert_status_name(slicert_status status);

#ifdef __cplusplus
}
#endif
#endif
