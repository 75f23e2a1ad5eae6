// segml/train/schedule.hpp: learning-rate schedules as pure functions of the step.
//
// lr(step) for step = 0, 1, ... (the lr used by optimizer step number `step`):
//  - poly: linear warmup from base*warmup_ratio to base over warmup_steps (mmseg's
//    `warmup='linear'`), then polynomial decay (1 - t/total)^power * (base - min) + min
//    (the SegFormer recipe: power 1.0, min 0);
//  - HF's lr_scheduler_type names, as transformers' optimization.py defines them (warm-up
//    base * step / warmup, then): linear (to 0 at total), cosine (half a cosine period to 0),
//    constant (no warm-up at all, like HF), constant_with_warmup, polynomial (power 1 to
//    lr_end = 1e-7, then lr_end).
// An unknown kind is an error listing the known ones.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numbers>
#include <string>

#include "segml/core/error.hpp"

namespace segml::train {

inline constexpr const char* kScheduleKinds = "linear, cosine, constant, constant_with_warmup, polynomial, poly";

struct Schedule {
  std::string kind = "linear";  // one of kScheduleKinds
  double base_lr = 6e-5;
  int64_t total_steps = 1;
  int64_t warmup_steps = 0;
  double warmup_ratio = 1e-6;   // poly only: lr at step 0 = base * ratio
  double power = 1.0;           // poly only
  double min_lr = 0.0;          // poly only

  double lr(int64_t step) const {
    SEGML_CHECK(total_steps >= 1, "Schedule: total_steps must be >= 1, got ", total_steps);
    const double warm = double(std::max<int64_t>(1, warmup_steps));
    if (kind == "constant") return base_lr;
    if (kind == "constant_with_warmup") return step < warmup_steps ? base_lr * double(step) / warm : base_lr;
    if (kind == "linear") {
      // transformers: step < warmup -> step / warmup; else (total - step) / (total - warmup).
      if (step < warmup_steps) return base_lr * double(step) / warm;
      return base_lr * std::max(0.0, double(total_steps - step) / double(std::max<int64_t>(1, total_steps - warmup_steps)));
    }
    if (kind == "cosine") {  // num_cycles 0.5
      if (step < warmup_steps) return base_lr * double(step) / warm;
      const double progress = double(step - warmup_steps) / double(std::max<int64_t>(1, total_steps - warmup_steps));
      return base_lr * std::max(0.0, 0.5 * (1.0 + std::cos(std::numbers::pi * progress)));
    }
    if (kind == "polynomial") {  // lr_end 1e-7, power 1
      const double lr_end = 1e-7;
      SEGML_CHECK(base_lr > lr_end, "Schedule: polynomial needs a learning rate above its end value 1e-7, got ", base_lr);
      if (step < warmup_steps) return base_lr * double(step) / warm;
      if (step > total_steps) return lr_end;
      const double remaining = 1.0 - double(step - warmup_steps) / double(std::max<int64_t>(1, total_steps - warmup_steps));
      return (base_lr - lr_end) * remaining + lr_end;
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
    fail("Schedule: unknown lr_scheduler_type '", kind, "' (expected one of: ", kScheduleKinds, ")");
  }
};

}  // namespace segml::train
