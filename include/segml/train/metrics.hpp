// segml/train/metrics.hpp: mean IoU with exactly the semantics of HF evaluate's `mean_iou`.
//
// Per (prediction, label) pair: label_map and reduce_labels act on the LABEL only; pixels whose label
// equals ignore_index are dropped from both; the intersection (pred == label), prediction and label
// histograms over [0, num_labels) are accumulated over the whole dataset in double (values outside
// the range are dropped, as np.histogram does). Then per class IoU = I / (P + L - I) and
// accuracy = I / L, NaN when the denominator is 0; mean_iou and mean_accuracy are NaN-aware means;
// overall_accuracy = sum(I) / sum(L). nan_to_num, when set, replaces NaN in every output after the
// means are taken.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <optional>
#include <vector>

#include "segml/core/error.hpp"

namespace segml::train {

struct MeanIoU {
  double mean_iou = 0, mean_accuracy = 0, overall_accuracy = 0;
  std::vector<double> per_category_iou, per_category_accuracy;
};

class MeanIoUAccumulator {
 public:
  MeanIoUAccumulator(int64_t num_labels, int64_t ignore_index = 255, bool reduce_labels = false,
                     std::map<int64_t, int64_t> label_map = {})
      : n_(num_labels), ignore_(ignore_index), reduce_(reduce_labels), label_map_(std::move(label_map)),
        intersect_(static_cast<size_t>(num_labels), 0.0), pred_(intersect_), label_(intersect_),
        confusion_(static_cast<size_t>(num_labels * num_labels), 0.0) {
    SEGML_CHECK(num_labels >= 1, "mean_iou: num_labels must be >= 1, got ", num_labels);
  }

  // pred and label: n pixels each (same image), values are class ids.
  template <class P, class L>
  void add(const P* pred, const L* label, int64_t n) {
    for (int64_t i = 0; i < n; ++i) {
      int64_t l = static_cast<int64_t>(label[i]);
      if (!label_map_.empty()) {
        auto it = label_map_.find(l);
        if (it != label_map_.end()) l = it->second;
      }
      if (reduce_) {  // 0 -> 255, k -> k - 1, 254 (formerly 255) -> 255
        l = l == 0 ? 255 : l - 1;
        if (l == 254) l = 255;
      }
      if (l == ignore_) continue;
      const int64_t p = static_cast<int64_t>(pred[i]);
      const bool p_in = p >= 0 && p < n_, l_in = l >= 0 && l < n_;
      if (p_in) pred_[static_cast<size_t>(p)] += 1;
      if (l_in) label_[static_cast<size_t>(l)] += 1;
      if (p_in && p == l) intersect_[static_cast<size_t>(p)] += 1;
      if (p_in && l_in) confusion_[static_cast<size_t>(l * n_ + p)] += 1;
    }
  }

  MeanIoU compute(std::optional<double> nan_to_num = std::nullopt) const {
    const double nan = std::numeric_limits<double>::quiet_NaN();
    MeanIoU r;
    double iou_sum = 0, acc_sum = 0, total_i = 0, total_l = 0;
    int iou_n = 0, acc_n = 0;
    for (int64_t c = 0; c < n_; ++c) {
      const double I = intersect_[static_cast<size_t>(c)], P = pred_[static_cast<size_t>(c)], L = label_[static_cast<size_t>(c)];
      const double U = P + L - I;
      const double iou = U == 0 ? nan : I / U, acc = L == 0 ? nan : I / L;
      r.per_category_iou.push_back(iou);
      r.per_category_accuracy.push_back(acc);
      if (!std::isnan(iou)) iou_sum += iou, ++iou_n;
      if (!std::isnan(acc)) acc_sum += acc, ++acc_n;
      total_i += I;
      total_l += L;
    }
    r.mean_iou = iou_n ? iou_sum / iou_n : nan;
    r.mean_accuracy = acc_n ? acc_sum / acc_n : nan;
    r.overall_accuracy = total_l == 0 ? nan : total_i / total_l;
    if (nan_to_num) {
      auto fix = [&](double& v) { if (std::isnan(v)) v = *nan_to_num; };
      fix(r.mean_iou), fix(r.mean_accuracy), fix(r.overall_accuracy);
      for (auto& v : r.per_category_iou) fix(v);
      for (auto& v : r.per_category_accuracy) fix(v);
    }
    return r;
  }

  // confusion(label, pred) pixel counts over the non-ignored pixels, row-major (num_labels^2).
  const std::vector<double>& confusion() const { return confusion_; }

  // Adds up the counts of several accumulators that saw disjoint images (data-parallel
  // evaluation): `sum` sums a buffer of doubles over the processes in place. The counts are whole
  // numbers, exact in double up to 2^53 pixels, so the result equals one accumulator seeing all.
  template <class Sum>
  void sum_over(Sum&& sum) {
    std::vector<double> all;
    for (const std::vector<double>* v : {&intersect_, &pred_, &label_, &confusion_}) all.insert(all.end(), v->begin(), v->end());
    sum(all.data(), static_cast<int64_t>(all.size()));
    size_t at = 0;
    for (std::vector<double>* v : {&intersect_, &pred_, &label_, &confusion_})
      for (double& x : *v) x = all[at++];
  }
  int64_t num_labels() const { return n_; }

 private:
  int64_t n_, ignore_;
  bool reduce_;
  std::map<int64_t, int64_t> label_map_;
  std::vector<double> intersect_, pred_, label_, confusion_;
};

}  // namespace segml::train
