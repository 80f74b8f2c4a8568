// What the C++ test programs share: pass/fail counting (one line per failure,
// a final "N passed, M failed" line) and the seg_cross_entropy cases both run.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

namespace test_harness {

inline int g_passed = 0;
inline int g_failed = 0;

inline void check(bool ok, const std::string& name, const std::string& detail = "") {
  if (ok) {
    ++g_passed;
  } else {
    ++g_failed;
    std::printf("FAIL %s %s\n", name.c_str(), detail.c_str());
  }
}

// Prints the summary line; the exit status of the test program.
inline int summary() {
  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}

// logits [B, K, h, w] resampled to labels [B, H, W].
struct CeCase {
  int B, K, h, w, H, W;
  bool align_corners;
  int keep_mode;  // 0 none, 1 per batch [1, K], 2 per sample [B, K]
  int64_t ignore;
  double p_ignore;  // the probability of a label being ignore
};

// Odd sizes, both align_corners conventions, every keep mode, integer factors.
inline std::vector<CeCase> shared_ce_cases() {
  return {
      {2, 19, 9, 13, 37, 51, false, 0, 255, 0.1},
      {2, 19, 9, 13, 37, 51, true, 2, 255, 0.1},
      {3, 2, 5, 7, 23, 17, false, 1, 255, 0.2},
      {3, 2, 5, 7, 23, 17, true, 2, -1, 0.2},
      {1, 21, 6, 5, 6, 5, false, 1, 255, 0.1},     // no resampling
      {1, 21, 6, 5, 6, 5, true, 0, 255, 0.1},
      {2, 7, 11, 9, 5, 4, false, 2, 255, 0.1},     // downsampling
      {2, 7, 11, 9, 5, 4, true, 1, 255, 0.1},
      {2, 5, 1, 1, 6, 5, false, 0, 255, 0.1},      // 1x1 source
      {2, 5, 4, 3, 1, 1, true, 0, 255, 0.0},       // 1x1 target
      {1, 150, 4, 6, 13, 22, false, 2, 255, 0.1},  // K > 32
      {2, 3, 4, 5, 9, 11, false, 0, 255, 1.0},     // everything ignored
      {1, 4, 3, 70, 5, 333, false, 2, 255, 0.1},   // wide: several strips / column tiles
      {2, 19, 9, 13, 36, 52, false, 2, 255, 0.1},  // integer factor 4
      {2, 19, 9, 13, 33, 49, true, 1, 255, 0.1},
      {1, 3, 5, 24, 17, 192, false, 0, 255, 0.1},  // x8
  };
}

}  // namespace test_harness
