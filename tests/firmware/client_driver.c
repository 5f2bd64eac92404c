/* Test and benchmark driver for the C client (tests/firmware, benchmarks/bench_firmware.py).
 *
 *   client_driver run NAME MODE FRAMES_FILE COUNT H W C DTYPE ROW_MM COL_MM OUT_FILE
 *       run COUNT frames read from FRAMES_FILE (raw samples, frame after frame), write one binary
 *       record per result to OUT_FILE (layout: tests/firmware/driver.py)
 *   client_driver soak NAME COUNT H W            COUNT frames, prints "AT k rss_anon_kb" lines
 *   client_driver bench NAME COUNT H W WARMUP    prints round-trip ns of each call, one per line
 *   client_driver interactive NAME MODE H W BIG_H BIG_W
 *       commands on stdin: small N | big | burst N | wait MS | recover MS | latest | stats | try |
 *       reconnect | quit
 *   client_driver connect NAME                   prints the connect status and message
 *
 * Every line it prints is "WORD fields...". Exit status 0 unless the scenario itself went wrong.
 */
#define _GNU_SOURCE
#include "slicert_client.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static long rss_anon_kb(void) {
  FILE *f = fopen("/proc/self/status", "r");
  if (!f) return -1;
  char line[256];
  long kb = -1;
  while (fgets(line, sizeof line, f))
    if (sscanf(line, "RssAnon: %ld kB", &kb) == 1) break;
  fclose(f);
  return kb;
}

static int connect_or_print(const char *name, slicert_mode mode, slicert_client **c) {
  slicert_connect_options o = {mode, 0, (uint32_t)atoi(getenv("SLICERT_SPIN_US") ? getenv("SLICERT_SPIN_US") : "0")};
  slicert_status st = slicert_connect(name, &o, c);
  if (st != SLICERT_OK) {
    printf("CONNECT %s %s\n", slicert_status_name(st), slicert_last_error());
    return 1;
  }
  slicert_info info;
  slicert_get_info(*c, &info);
  printf("CONNECTED lane %u pid %u epoch %u\n", info.lane, info.worker_pid, info.worker_epoch);
  fflush(stdout);
  return 0;
}

static size_t itemsize(int dtype) { return dtype == 1 ? 1 : (dtype == 2 || dtype == 3) ? 2 : 4; }

static int cmd_run(char **a) {
  const char *name = a[0];
  slicert_mode mode = strcmp(a[1], "cine") == 0 ? SLICERT_MODE_CINE : SLICERT_MODE_STILL;
  long count = atol(a[3]);
  uint32_t h = (uint32_t)atol(a[4]), w = (uint32_t)atol(a[5]), ch = (uint32_t)atol(a[6]);
  int dtype = atoi(a[7]);
  double row = atof(a[8]), col = atof(a[9]);
  size_t frame_bytes = (size_t)h * w * ch * itemsize(dtype);
  FILE *in = fopen(a[2], "rb"), *out = fopen(a[10], "wb");
  if (!in || !out) { printf("ERROR cannot open files\n"); return 2; }
  uint8_t *pixels = malloc(frame_bytes), *mask = malloc((size_t)h * w);
  slicert_client *c = NULL;
  if (!pixels || !mask || connect_or_print(name, mode, &c)) return 2;
  slicert_result r;
  for (long k = 0; k < count; ++k) {
    if (fread(pixels, 1, frame_bytes, in) != frame_bytes) { printf("ERROR short frames file\n"); return 2; }
    slicert_frame f = {pixels, (slicert_dtype)dtype, h, w, ch, {row, col}};
    memset(&r, 0, sizeof r);
    r.mask = mask;
    r.mask_capacity = (size_t)h * w;
    slicert_status st = slicert_run(c, &f, 10000, &r);
    int32_t rec[4] = {(int32_t)st, r.label, (int32_t)r.num_classes, (int32_t)r.has_areas};
    fwrite(rec, 4, 4, out);
    fwrite(r.scores, 4, SLICERT_MAX_CLASSES, out);
    fwrite(r.pixel_counts, 8, SLICERT_MAX_CLASSES, out);
    fwrite(r.areas_mm2, 8, SLICERT_MAX_CLASSES, out);
    uint32_t dims[2] = {r.mask_height, r.mask_width};
    fwrite(dims, 4, 2, out);
    fwrite(mask, 1, (size_t)r.mask_height * r.mask_width, out);
    if (st != SLICERT_OK) printf("FRAME %ld %s %s\n", k, slicert_status_name(st), slicert_last_error());
  }
  fclose(in);
  fclose(out);
  printf("DONE %ld\n", count);
  slicert_disconnect(&c);
  free(pixels);
  free(mask);
  return 0;
}

static void pattern(uint16_t *p, size_t n, uint32_t k) {
  for (size_t i = 0; i < n; ++i) p[i] = (uint16_t)((i * 2654435761u + k * 40503u) & 4095u);
}

static int cmd_soak(char **a) {
  long count = atol(a[1]);
  uint32_t h = (uint32_t)atol(a[2]), w = (uint32_t)atol(a[3]);
  uint16_t *px = malloc((size_t)h * w * 2);
  slicert_client *c = NULL;
  if (!px || connect_or_print(a[0], SLICERT_MODE_STILL, &c)) return 2;
  slicert_result r;
  long bad = 0;
  for (long k = 1; k <= count; ++k) {
    pattern(px, (size_t)h * w, (uint32_t)(k & 7));
    slicert_frame f = {px, SLICERT_DTYPE_U16, h, w, 1, {0.5, 0.5}};
    memset(&r, 0, sizeof r);
    slicert_status st = slicert_run(c, &f, 10000, &r);
    if (st != SLICERT_OK) {
      if (++bad < 5) printf("FRAME %ld %s %s\n", k, slicert_status_name(st), slicert_last_error());
    }
    if (k % 1000 == 0) {
      printf("AT %ld %ld\n", k, rss_anon_kb());
      fflush(stdout);
    }
  }
  slicert_stats s;
  slicert_get_stats(c, &s);
  printf("DONE %ld bad %ld completed %llu\n", count, bad, (unsigned long long)s.completed);
  slicert_disconnect(&c);
  free(px);
  return bad ? 1 : 0;
}

static int cmd_bench(char **a) {
  long count = atol(a[1]), warmup = atol(a[4]);
  uint32_t h = (uint32_t)atol(a[2]), w = (uint32_t)atol(a[3]);
  uint16_t *px = malloc((size_t)h * w * 2);
  slicert_client *c = NULL;
  if (!px || connect_or_print(a[0], SLICERT_MODE_STILL, &c)) return 2;
  pattern(px, (size_t)h * w, 1);
  slicert_result r;
  for (long k = -warmup; k < count; ++k) {
    slicert_frame f = {px, SLICERT_DTYPE_U16, h, w, 1, {0.0, 0.0}};
    r.mask = NULL;
    uint64_t t0 = now_ns();
    slicert_status st = slicert_run(c, &f, 10000, &r);
    uint64_t t1 = now_ns();
    if (st != SLICERT_OK) { printf("FRAME %ld %s %s\n", k, slicert_status_name(st), slicert_last_error()); return 1; }
    if (k >= 0) /* ns of the call; ms: session total, worker frame, submit -> worker took it */
      printf("RT %llu %.6f %.6f %.6f\n", (unsigned long long)(t1 - t0), r.timings_ms[SLICERT_T_TOTAL],
             r.timings_ms[SLICERT_T_WORKER], r.queue_ms);
  }
  slicert_disconnect(&c);
  free(px);
  return 0;
}

static int cmd_interactive(char **a) {
  slicert_mode mode = strcmp(a[1], "cine") == 0 ? SLICERT_MODE_CINE : SLICERT_MODE_STILL;
  uint32_t h = (uint32_t)atol(a[2]), w = (uint32_t)atol(a[3]);
  uint32_t bh = (uint32_t)atol(a[4]), bw = (uint32_t)atol(a[5]);
  uint16_t *small = malloc((size_t)h * w * 2), *big = malloc((size_t)bh * bw * 2);
  slicert_client *c = NULL;
  if (!small || !big || connect_or_print(a[0], mode, &c)) return 2;
  pattern(small, (size_t)h * w, 3);
  pattern(big, (size_t)bh * bw, 5);
  slicert_result r;
  uint64_t last = 0;
  char line[128];
  while (fgets(line, sizeof line, stdin)) {
    char cmd[32] = {0};
    long arg = 0;
    sscanf(line, "%31s %ld", cmd, &arg);
    slicert_frame fs = {small, SLICERT_DTYPE_U16, h, w, 1, {0.0, 0.0}};
    slicert_frame fb = {big, SLICERT_DTYPE_U16, bh, bw, 1, {0.0, 0.0}};
    if (strcmp(cmd, "small") == 0) {
      long okn = 0;
      for (long k = 0; k < arg; ++k) {
        memset(&r, 0, sizeof r);
        slicert_status st = slicert_run(c, &fs, 5000, &r);
        if (st == SLICERT_OK) ++okn;
        else printf("FRAME %ld %s %s\n", k, slicert_status_name(st), slicert_last_error());
      }
      printf("OK %ld\n", okn);
    } else if (strcmp(cmd, "big") == 0) {
      slicert_status st = slicert_submit(c, &fb, &last);
      printf("SUBMITTED %s %llu\n", slicert_status_name(st), (unsigned long long)last);
    } else if (strcmp(cmd, "burst") == 0) { /* submit arg small frames back to back, then collect the latest */
      long busy = 0;
      for (long k = 0; k < arg; ++k) {
        slicert_status st = slicert_submit(c, &fs, &last);
        if (st == SLICERT_E_BUSY) ++busy;
      }
      printf("BURST busy %ld last %llu\n", busy, (unsigned long long)last);
    } else if (strcmp(cmd, "wait") == 0) {
      memset(&r, 0, sizeof r);
      uint64_t t0 = now_ns();
      slicert_status st = slicert_wait(c, last, (uint32_t)arg, &r);
      printf("WAITED %s %.3f %s\n", slicert_status_name(st), (double)(now_ns() - t0) * 1e-6,
             st == SLICERT_OK ? "-" : slicert_last_error());
    } else if (strcmp(cmd, "recover") == 0) { /* small frames until one succeeds, at most arg ms */
      uint64_t t0 = now_ns();
      long tries = 0;
      slicert_status st = SLICERT_E_WORKER_DOWN;
      while ((now_ns() - t0) < (uint64_t)arg * 1000000ull) {
        ++tries;
        memset(&r, 0, sizeof r);
        st = slicert_run(c, &fs, 2000, &r);
        if (st == SLICERT_OK) break;
        struct timespec pause = {0, 2000000};
        nanosleep(&pause, NULL);
      }
      printf("RECOVERED %s %.3f %ld\n", slicert_status_name(st), (double)(now_ns() - t0) * 1e-6, tries);
    } else if (strcmp(cmd, "stats") == 0) {
      slicert_stats s;
      slicert_get_stats(c, &s);
      printf("STATS submitted %llu completed %llu busy %llu superseded %llu rejected %llu restarted %llu epochs %u\n",
             (unsigned long long)s.submitted, (unsigned long long)s.completed, (unsigned long long)s.dropped_busy,
             (unsigned long long)s.dropped_superseded, (unsigned long long)s.rejected,
             (unsigned long long)s.restarted, s.epochs_seen);
    } else if (strcmp(cmd, "latest") == 0) {
      memset(&r, 0, sizeof r);
      slicert_status st = slicert_latest(c, &r);
      printf("LATEST %s %llu dropped_before %u\n", slicert_status_name(st), (unsigned long long)r.frame_id,
             r.dropped_before);
    } else if (strcmp(cmd, "reconnect") == 0) {
      slicert_status st = slicert_reconnect(c);
      printf("RECONNECT %s %s\n", slicert_status_name(st), st == SLICERT_OK ? "-" : slicert_last_error());
    } else if (strcmp(cmd, "try") == 0) { /* one small frame; the status and message */
      memset(&r, 0, sizeof r);
      slicert_status st = slicert_run(c, &fs, 2000, &r);
      printf("TRY %s %s\n", slicert_status_name(st), st == SLICERT_OK ? "-" : slicert_last_error());
    } else if (strcmp(cmd, "quit") == 0) {
      break;
    } else {
      printf("UNKNOWN %s\n", cmd);
    }
    fflush(stdout);
  }
  slicert_disconnect(&c);
  free(small);
  free(big);
  return 0;
}

static int cmd_connect(char **a) {
  slicert_client *c = NULL;
  slicert_status st = slicert_connect(a[0], NULL, &c);
  printf("CONNECT %s %s\n", slicert_status_name(st), st == SLICERT_OK ? "-" : slicert_last_error());
  slicert_disconnect(&c);
  return 0;
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (argc >= 13 && strcmp(argv[1], "run") == 0) return cmd_run(argv + 2);
  if (argc >= 6 && strcmp(argv[1], "soak") == 0) return cmd_soak(argv + 2);
  if (argc >= 7 && strcmp(argv[1], "bench") == 0) return cmd_bench(argv + 2);
  if (argc >= 8 && strcmp(argv[1], "interactive") == 0) return cmd_interactive(argv + 2);
  if (argc >= 3 && strcmp(argv[1], "connect") == 0) return cmd_connect(argv + 2);
  fprintf(stderr, "usage: see the comment at the top of client_driver.c\n");
  return 2;
}
