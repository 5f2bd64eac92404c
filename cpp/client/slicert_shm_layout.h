/* SliceRT isolated mode: shared-memory layout version 1 (internal to slicert_client.c).
 *
 * Mirrors engine/worker/layout.py; tests/firmware/test_layout.py checks every SLRT_* offset below
 * against the Python constants of the same name. All fields little-endian, naturally aligned.
 * One writer per word: geometry = creator, worker block + slot results = worker, doorbell + lane
 * client block + slot requests = the client that owns the lane.
 */
#ifndef SLICERT_SHM_LAYOUT_H
#define SLICERT_SHM_LAYOUT_H

#define SLRT_MAGIC 0x0054524543494C53ULL /* "SLICERT\0" */
#define SLRT_LAYOUT_VERSION 1u
#define SLRT_HEADER_SIZE 4096u
#define SLRT_LANE_HEADER_SIZE 256u
#define SLRT_SLOT_META_SIZE 2048u
#define SLRT_MAX_CLASSES 64u
#define SLRT_LABEL_BYTES 32u
#define SLRT_MESSAGE_BYTES 256u
#define SLRT_MAX_LANES 64u
#define SLRT_MAX_SLOTS 64u
#define SLRT_MAX_SIDE 65535u
#define SLRT_ALIGN 64u

/* header */
#define SLRT_H_MAGIC 0
#define SLRT_H_VERSION 8
#define SLRT_H_HEADER_SIZE 12
#define SLRT_H_TOTAL_SIZE 16
#define SLRT_H_LANE_COUNT 24
#define SLRT_H_SLOTS_PER_LANE 28
#define SLRT_H_LANE_SIZE 32
#define SLRT_H_SLOT_SIZE 40
#define SLRT_H_FRAME_CAPACITY 48
#define SLRT_H_MASK_CAPACITY 56
#define SLRT_H_MAX_CLASSES 64
#define SLRT_H_HANG_TIMEOUT_MS 68
#define SLRT_H_SEGMENT_ID 72
#define SLRT_H_SUPERVISOR_PID 80
#define SLRT_H_RESTARTS 84
#define SLRT_H_STANDBY_PID 88
#define SLRT_H_WORKER_PID 128
#define SLRT_H_WORKER_EPOCH 132
#define SLRT_H_WORKER_STATE 136
#define SLRT_H_WORKER_WAITING 140
#define SLRT_H_HEARTBEAT_NS 144
#define SLRT_H_BUSY_LANE 152
#define SLRT_H_TASK 156
#define SLRT_H_BUSY_SEQ 160
#define SLRT_H_BUSY_SINCE_NS 168
#define SLRT_H_FRAMES_DONE 176
#define SLRT_H_NUM_CLASSES 184
#define SLRT_H_DOORBELL 192
#define SLRT_H_BUNDLE_NAME 256
#define SLRT_H_LABELS 512

#define SLRT_STATE_DOWN 0u
#define SLRT_STATE_READY 1u
#define SLRT_STATE_STOPPING 2u

/* lane */
#define SLRT_L_OWNER_PID 0
#define SLRT_L_MODE 4
#define SLRT_L_CLIENT_ABI 8
#define SLRT_L_CLIENT_WAITING 12
#define SLRT_L_CLAIM_NONCE 16
#define SLRT_L_SUBMITTED 24
#define SLRT_L_CLIENT_DROPPED 32
#define SLRT_L_DONE_WORD 64
#define SLRT_L_COMPLETED 72
#define SLRT_L_WORKER_DROPPED 80
#define SLRT_L_REJECTED 88

/* slot: request (client) */
#define SLRT_S_REQ_SEQ 0
#define SLRT_S_DTYPE 8
#define SLRT_S_CHANNELS 12
#define SLRT_S_HEIGHT 16
#define SLRT_S_WIDTH 20
#define SLRT_S_SPACING_ROW_MM 24
#define SLRT_S_SPACING_COL_MM 32
#define SLRT_S_FRAME_BYTES 40
#define SLRT_S_SUBMIT_NS 48
/* slot: result (worker) */
#define SLRT_S_DONE_SEQ 64
#define SLRT_S_STATUS 72
#define SLRT_S_RESULT_FLAGS 76
#define SLRT_S_LABEL 80
#define SLRT_S_DROPPED_BEFORE 84
#define SLRT_S_MASK_HEIGHT 88
#define SLRT_S_MASK_WIDTH 92
#define SLRT_S_WORKER_EPOCH 96
#define SLRT_S_NUM_CLASSES 100
#define SLRT_S_TAKEN_NS 104
#define SLRT_S_DONE_NS 112
#define SLRT_S_TIMINGS 128
#define SLRT_S_SCORES 192
#define SLRT_S_PIXEL_COUNTS 448
#define SLRT_S_AREAS_MM2 960
#define SLRT_S_MESSAGE 1472

#define SLRT_RF_HAS_AREAS 1u
#define SLRT_RF_HAS_MASK 2u

#endif
