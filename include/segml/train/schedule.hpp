// segml/train/schedule.hpp: learning-rate schedules as pure functions of the step.
//
// lr(step) for step = 0, 1, ... (the lr used by optimizer step number `step`):
//  - warmup_poly: linear warmup from base*warmup_ratio to base over warmup_steps (mmseg's
//    `warmup='linear'`), then polynomial decay (1 - t/total)^power * (base - min) + min
//    (the SegFormer recipe: power 1.0, min 0);
//  - linear (HF Trainer's get_linear_schedule_with_warmup): warmup 0 -> base, then linear to 0;
//  - constant.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>

#include "segml/core/error.hpp"

namespace segml::train {

struct Schedule {
  std::string kind = "linear";  // "linear" | "poly" | "constant"
  double base_lr = 6e-5;
  int64_t total_steps = 1;
  int64_t warmup_steps = 0;
  double warmup_ratio = 1e-6;   // poly only: lr at step 0 = base * ratio
  double power = 1.0;           // poly only
  double min_lr = 0.0;          // poly only

  double lr(int64_t step) const {
    SEGML_CHECK(total_steps >= 1, "Schedule: total_steps must be >= 1, got ", total_steps);
    if (kind == "constant") return step < warmup_steps ? base_lr * double(step + 1) / double(warmup_steps) : base_lr;
    if (kind == "linear") {
      // transformers: step < warmup -> step / warmup; else (total - step) / (total - warmup).
      if (step < warmup_steps) return base_lr * double(step) / double(std::max<int64_t>(1, warmup_steps));
      return base_lr * std::max(0.0, double(total_steps - step) / double(std::max<int64_t>(1, total_steps - warmup_steps)));
    }
    if (kind == "poly") {
      const double t = std::min(1.0, double(step) / double(total_steps));
      const double poly = (base_lr - min_lr) * std::pow(1.0 - t, power) + min_lr;
      if (step < warmup_steps) {
        const double k = (1.0 - double(step) / double(warmup_steps)) * (1.0 - warmup_ratio);
        return poly * (1.0 - k);
      }
      return poly;
    }
    fail("Schedule: unknown kind '", kind, "' (expected linear, poly or constant)");
  }
};

}  // namespace segml::train
