// The training machinery: mean IoU against HF evaluate's documented example, the lr schedules
// against transformers' formulas, augmentation determinism and the cat_max_ratio rule, the
// prefetch queue's order, and short runs of a tiny SegFormer on synthetic scenes: the loss falls,
// a stopped + resumed run equals an uninterrupted one bit for bit, and a few images are overfitted.
#include <doctest/doctest.h>

#include <atomic>
#include <cmath>
#include <filesystem>
#include <limits>
#include <thread>

#include <segml/data/synthetic_scenes.hpp>
#include <segml/io/image.hpp>
#include <segml/train/trainer.hpp>

#include "support.hpp"
#include "train_support.hpp"

using namespace segml;
using namespace segml::train;
namespace fs = std::filesystem;

namespace {

// A fresh folder under the system temp dir, removed at scope exit.
using segml::test::TempDir;

SegformerConfig tiny_config(const std::vector<std::string>& labels) { return segml::test::tiny_train_config(labels); }

// 8 train, 2 val scenes of 64x48 (generated once per test run).
const fs::path& scenes() { return segml::test::scenes_once("scenes", 8, 2, 64, 48, 3); }

TrainOptions small_options(const fs::path& out) {
  TrainOptions o;
  o.output_dir = out.string();
  o.max_steps = 6;
  o.per_device_train_batch_size = 2;
  o.learning_rate = 3e-3;
  o.crop_height = o.crop_width = 48;
  o.verbose = false;
  o.seed = 11;
  return o;
}

using segml::test::processor_for;

// Parameters and buffers.
std::vector<float> parameters_of(SegformerForSemanticSegmentation<float>& m) { return segml::test::parameters_of(m, true); }

}  // namespace

TEST_CASE("mean_iou: HF evaluate's documented example") {
  // evaluate/metrics/mean_iou/mean_iou.py docstring: three maps, num_labels=10, ignore_index=255.
  const std::vector<std::vector<int>> pred = {{1, 2, 3, 4, 5, 255}, {2, 7, 9, 2, 3, 6}, {2, 2, 3, 8, 2, 4, 3, 255, 2}};
  const std::vector<std::vector<int>> label = {{0, 3, 5, 4, 6, 255}, {1, 7, 9, 2, 3, 6}, {1, 2, 2, 8, 2, 1, 3, 255, 1}};
  MeanIoUAccumulator acc(10, 255);
  for (size_t i = 0; i < pred.size(); ++i) acc.add(pred[i].data(), label[i].data(), int64_t(pred[i].size()));
  const MeanIoU r = acc.compute();
  CHECK(r.mean_iou == doctest::Approx(0.47750000000000004).epsilon(1e-12));
  CHECK(std::abs(r.mean_iou - 0.47750000000000004) < 1e-9);
  CHECK(std::abs(r.mean_accuracy - 0.5916666666666666) < 1e-9);
  CHECK(std::abs(r.overall_accuracy - 0.5263157894736842) < 1e-9);
  const double iou[10] = {0, 0, .375, .4, .5, 0, .5, 1, 1, 1};
  const double accuracy[10] = {0, 0, .75, 2.0 / 3.0, 1, 0, .5, 1, 1, 1};
  for (int c = 0; c < 10; ++c) {
    CHECK(std::abs(r.per_category_iou[size_t(c)] - iou[c]) < 1e-9);
    CHECK(std::abs(r.per_category_accuracy[size_t(c)] - accuracy[c]) < 1e-9);
  }
}

TEST_CASE("mean_iou: NaN for classes absent from both, reduce_labels and label_map") {
  const int pred[4] = {0, 0, 1, 1}, label[4] = {0, 0, 1, 0};
  MeanIoUAccumulator acc(3, 255);
  acc.add(pred, label, 4);
  const MeanIoU r = acc.compute();
  CHECK(std::isnan(r.per_category_iou[2]));
  CHECK(std::isnan(r.per_category_accuracy[2]));
  CHECK(r.mean_iou == doctest::Approx((2.0 / 3.0 + 0.5) / 2));  // NaN-aware mean over classes 0, 1
  CHECK(acc.compute(0.0).per_category_iou[2] == 0.0);

  // reduce_labels: stored 0 -> ignored, k -> k - 1.
  const int stored[4] = {0, 1, 2, 2}, p2[4] = {1, 0, 1, 0};
  MeanIoUAccumulator red(2, 255, true);
  red.add(p2, stored, 4);
  const MeanIoU rr = red.compute();
  CHECK(rr.overall_accuracy == doctest::Approx(2.0 / 3.0));  // pixel 0 ignored; 1->0 hit, 2->1 hit once
  CHECK(rr.per_category_accuracy[0] == doctest::Approx(1.0));
  CHECK(rr.per_category_accuracy[1] == doctest::Approx(0.5));

  // label_map acts on the label before anything else.
  MeanIoUAccumulator mapped(2, 255, false, {{5, 1}});
  const int p3[2] = {1, 0}, l3[2] = {5, 0};
  mapped.add(p3, l3, 2);
  CHECK(mapped.compute().overall_accuracy == doctest::Approx(1.0));
}

TEST_CASE("schedules: linear with warmup is transformers' get_linear_schedule_with_warmup and poly with warmup") {
  Schedule s;
  s.kind = "linear";
  s.base_lr = 2.0;
  s.total_steps = 10;
  s.warmup_steps = 4;
  // lambda(step) = step / warmup for step < warmup, else max(0, (total - step) / (total - warmup)).
  const double want[11] = {0, 0.25, 0.5, 0.75, 1, 5.0 / 6, 4.0 / 6, 3.0 / 6, 2.0 / 6, 1.0 / 6, 0};
  for (int i = 0; i <= 10; ++i) CHECK(s.lr(i) == doctest::Approx(2.0 * want[i]).epsilon(1e-12));

  Schedule p;
  p.kind = "poly";
  p.base_lr = 1.0;
  p.total_steps = 100;
  p.warmup_steps = 10;
  p.warmup_ratio = 1e-6;
  p.power = 1.0;
  CHECK(p.lr(0) == doctest::Approx(1e-6));                                        // base * ratio
  CHECK(p.lr(5) == doctest::Approx(0.95 * (1 - 0.5 * (1 - 1e-6))).epsilon(1e-12));  // mmseg warmup on poly
  CHECK(p.lr(10) == doctest::Approx(0.9));
  CHECK(p.lr(60) == doctest::Approx(0.4));
  CHECK(p.lr(100) == doctest::Approx(0.0));

  Schedule c;
  c.kind = "constant";
  c.base_lr = 0.5;
  CHECK(c.lr(123) == 0.5);
  Schedule bad;
  bad.kind = "cosine_with_restarts";
  CHECK_THROWS_WITH_AS(bad.lr(0), doctest::Contains("unknown lr_scheduler_type 'cosine_with_restarts'"), segml::Error);
  CHECK_THROWS_WITH_AS(bad.lr(0), doctest::Contains("constant_with_warmup"), segml::Error);  // lists the known ones
}

TEST_CASE("augment: same seed, same example and another seed, another and padding uses 0 / 255") {
  const Scene scene = generate_scene(5, 96, 64);
  SegformerImageProcessor proc;
  AugmentOptions opt;
  opt.crop_height = 48;
  opt.crop_width = 40;
  const Example a = augment(scene.image, scene.label, proc, opt, sample_seed(1, 0, 3));
  const Example b = augment(scene.image, scene.label, proc, opt, sample_seed(1, 0, 3));
  const Example c = augment(scene.image, scene.label, proc, opt, sample_seed(1, 1, 3));
  REQUIRE(a.pixel_values.shape() == Shape{3, 48, 40});
  REQUIRE(a.labels.shape() == Shape{48, 40});
  CHECK(std::equal(a.pixel_values.data(), a.pixel_values.data() + a.pixel_values.numel(), b.pixel_values.data()));
  CHECK(std::equal(a.labels.data(), a.labels.data() + a.labels.numel(), b.labels.data()));
  CHECK_FALSE(std::equal(a.pixel_values.data(), a.pixel_values.data() + a.pixel_values.numel(), c.pixel_values.data()));
  CHECK(sample_seed(1, 0, 3) != sample_seed(1, 3, 0));

  // A crop larger than the (resized) image: the rest is padded with 0 and label 255.
  AugmentOptions big = opt;
  big.crop_height = big.crop_width = 400;
  big.ratio_min = big.ratio_max = 0.5;  // short side 200 -> image 300x200 inside a 400x400 crop
  const Example d = augment(scene.image, scene.label, proc, big, 7);
  CHECK(d.labels.data()[399 * 400 + 399] == 255);
  CHECK(d.pixel_values.data()[399 * 400 + 399] == 0.0f);
  CHECK(d.labels.data()[0] != 255);
}

TEST_CASE("augment: cat_max_ratio redraws crops dominated by one class") {
  // 100x100 label of class 0 with a 40x40 square of class 1 in the top-left corner.
  Image label(100, 100, 1, 0);
  for (int y = 0; y < 40; ++y)
    for (int x = 0; x < 40; ++x) label.at(y, x) = 1;
  AugmentOptions with, without;
  with.crop_height = with.crop_width = without.crop_height = without.crop_width = 50;
  without.cat_max_ratio = 1.0;
  int balanced_with = 0, balanced_without = 0;
  for (uint64_t seed = 0; seed < 200; ++seed) {
    Generator g1(seed), g2(seed);
    const CropBox a = random_crop_box(label, with, g1), b = random_crop_box(label, without, g2);
    const bool bal_a = train::detail::crop_is_balanced(label, a.y0, a.x0, 50, 50, 0.75, 255);
    const bool bal_b = train::detail::crop_is_balanced(label, b.y0, b.x0, 50, 50, 0.75, 255);
    if (bal_b) CHECK((a.y0 == b.y0 && a.x0 == b.x0));  // a balanced first draw is kept
    balanced_with += bal_a, balanced_without += bal_b;
  }
  MESSAGE("balanced crops: " << balanced_with << "/200 with cat_max_ratio 0.75, " << balanced_without << "/200 without");
  CHECK(balanced_with > 2 * balanced_without);
  CHECK(balanced_with > 150);
  // Ignored pixels do not count: a crop of one class plus 255 is not balanced.
  Image ignore(10, 10, 1, 255);
  ignore.at(0, 0) = 3;
  CHECK_FALSE(train::detail::crop_is_balanced(ignore, 0, 0, 10, 10, 0.75, 255));
}

TEST_CASE("prefetcher: items in order whatever the workers' timing and errors surface at their item") {
  Prefetcher<int64_t> p(
      [](int64_t k) {
        std::this_thread::sleep_for(std::chrono::microseconds((k * 7919) % 300));
        if (k == 40) throw Error("item 40 failed");
        return k * k;
      },
      5, 3, 4);
  for (int64_t k = 5; k < 40; ++k) CHECK(p.next() == k * k);
  CHECK_THROWS_WITH_AS(p.next(), doctest::Contains("item 40"), segml::Error);
}

TEST_CASE("trainer: a tiny SegFormer's loss falls on synthetic scenes") {
  TempDir out("loss");
  const SegmentationDataset train_ds = SegmentationDataset::open(scenes(), "train");
  const SegmentationDataset val_ds = SegmentationDataset::open(scenes(), "val");
  SegformerForSemanticSegmentation<float> model(tiny_config(train_ds.id2label()), 1);
  TrainOptions o = small_options(out.path);
  o.max_steps = 30;
  o.lr_scheduler_type = "constant";
  o.learning_rate = 1e-2;
  Trainer t(model, processor_for(o), train_ds, val_ds, o);
  REQUIRE(t.run());
  const auto& h = t.history();
  REQUIRE(h.size() == 30);
  double first = 0, last = 0;
  for (int i = 0; i < 5; ++i) first += h[size_t(i)].loss / 5, last += h[h.size() - 1 - size_t(i)].loss / 5;
  MESSAGE("mean loss of the first 5 steps " << first << ", of the last 5 " << last);
  CHECK(last < 0.8 * first);
  CHECK(fs::exists(out.path / "model.safetensors"));
  CHECK(fs::exists(out.path / "preprocessor_config.json"));
  CHECK(fs::exists(out.path / "training_curves.svg"));
  CHECK(fs::file_size(out.path / "train_log.jsonl") > 0);
  REQUIRE(t.evals().size() == 1);
  // The saved checkpoint loads strictly and carries the dataset's labels.
  LoadOptions lo;
  lo.strict = true;
  auto reloaded = from_pretrained(out.path.string(), lo);
  CHECK(reloaded.config.id2label.at(3) == "sky");
}

TEST_CASE("trainer: stop after k steps + resume == uninterrupted run (losses and parameters)") {
  const SegmentationDataset train_ds = SegmentationDataset::open(scenes(), "train");
  std::vector<std::string> labels = train_ds.id2label();
  SegformerConfig cfg = tiny_config(labels);
  cfg.classifier_dropout_prob = 0.1;  // exercise the dropout generator's state too
  cfg.drop_path_rate = 0.1;

  TempDir a("resume_a"), b("resume_b");
  TrainOptions oa = small_options(a.path), ob = small_options(b.path);
  oa.optimizer = ob.optimizer = "adamw";
  oa.max_grad_norm = ob.max_grad_norm = 1.0;
  oa.gradient_accumulation_steps = ob.gradient_accumulation_steps = 2;
  oa.max_steps = ob.max_steps = 6;

  SegformerForSemanticSegmentation<float> full(cfg, 4);
  Trainer ta(full, processor_for(oa), train_ds, std::nullopt, oa);
  REQUIRE(ta.run());

  std::atomic<bool> stop{false};
  {
    SegformerForSemanticSegmentation<float> first(cfg, 4);
    Trainer tb(first, processor_for(ob), train_ds, std::nullopt, ob);
    tb.on_step = [&](const StepRecord& r) { stop = r.step == 3; };
    CHECK_FALSE(tb.run(&stop));
    CHECK(tb.step() == 3);
  }
  SegformerForSemanticSegmentation<float> resumed(cfg, 999);  // weights come from the resume state
  Trainer tc(resumed, processor_for(ob), train_ds, std::nullopt, ob);
  tc.load_state((b.path / "checkpoint-3").string());
  CHECK(tc.step() == 3);
  REQUIRE(tc.run());
  REQUIRE(tc.history().size() == ta.history().size());
  for (size_t i = 0; i < ta.history().size(); ++i) {
    INFO("step " << i + 1);
    CHECK(tc.history()[i].loss == ta.history()[i].loss);
  }
  const std::vector<float> pa = parameters_of(full), pc = parameters_of(resumed);
  REQUIRE(pa.size() == pc.size());
  double max_diff = 0;
  for (size_t i = 0; i < pa.size(); ++i) max_diff = std::max(max_diff, double(std::abs(pa[i] - pc[i])));
  MESSAGE("max abs parameter difference, resumed vs uninterrupted: " << max_diff);
  CHECK(max_diff == 0.0);
}

TEST_CASE("trainer: the tiny model overfits two images") {
  TempDir out("overfit");
  const SegmentationDataset two = SegmentationDataset::open(scenes(), "train").subset(2);
  SegformerForSemanticSegmentation<float> model(tiny_config(two.id2label()), 2);
  TrainOptions o = small_options(out.path);
  o.augment = false;
  o.crop_height = 96;  // 2x upsampled input: the logits (1/4) are at half the label's resolution
  o.crop_width = 128;
  o.max_steps = 200;
  o.lr_scheduler_type = "constant";
  o.learning_rate = 1e-2;
  Trainer t(model, processor_for(o), two, two, o);
  REQUIRE(t.run());
  const double acc = t.evals().back().metrics.overall_accuracy;
  MESSAGE("pixel accuracy on the 2 training images after 200 steps: " << acc << ", loss " << t.history().back().loss);
  CHECK(acc > 0.9);
}

TEST_CASE("clip_grad_norm: torch semantics (total L2 norm, scale by max / (norm + 1e-6))") {
  Var<float> a(Tensor<float>::zeros({2}), true), b(Tensor<float>::zeros({1}), true);
  a.grad() = Tensor<float>::from({2}, {3, 0});
  b.grad() = Tensor<float>::from({1}, {4});
  std::vector<Var<float>*> ps{&a, &b};
  CHECK(clip_grad_norm(ps, 10.0) == doctest::Approx(5.0));
  CHECK(a.grad().data()[0] == 3.0f);  // below the limit: untouched
  CHECK(clip_grad_norm(ps, 1.0) == doctest::Approx(5.0));
  CHECK(a.grad().data()[0] == doctest::Approx(3.0 / (5.0 + 1e-6)));
  CHECK(b.grad().data()[0] == doctest::Approx(4.0 / (5.0 + 1e-6)));
}

TEST_CASE("mean_iou: randomized cases equal a numpy reimplementation of evaluate's mean_iou") {
  // tools/fixtures/metrics.py: maps of random sizes, stored ignore values, a class absent from both,
  // reduce_labels, a label_map, 35 classes. Exact counts, so the results agree to double rounding.
  const test::Fixture fx("metrics");
  for (const std::string c : {"plain", "absent_class", "reduce_labels", "label_map", "many_classes"}) {
    const Tensor<int64_t> params = fx.get<int64_t>(c + ".params");
    const int64_t num_labels = params.data()[0], ignore = params.data()[1], maps = params.data()[3];
    std::map<int64_t, int64_t> label_map;
    if (fx.contains(c + ".label_map")) {
      const Tensor<int64_t> m = fx.get<int64_t>(c + ".label_map");
      for (int64_t i = 0; i < m.size(0); ++i) label_map[m.at({i, 0})] = m.at({i, 1});
    }
    MeanIoUAccumulator acc(num_labels, ignore, params.data()[2] != 0, label_map);
    for (int64_t i = 0; i < maps; ++i) {
      const Tensor<int64_t> p = fx.get<int64_t>(c + ".pred." + std::to_string(i));
      const Tensor<int64_t> l = fx.get<int64_t>(c + ".label." + std::to_string(i));
      acc.add(p.data(), l.data(), p.numel());
    }
    const MeanIoU r = acc.compute();
    auto same = [](double got, double want) { return std::isnan(want) ? std::isnan(got) : std::abs(got - want) <= 1e-12; };
    INFO("case ", c);
    CHECK(same(r.mean_iou, fx.get<double>(c + ".mean_iou").data()[0]));
    CHECK(same(r.mean_accuracy, fx.get<double>(c + ".mean_accuracy").data()[0]));
    CHECK(same(r.overall_accuracy, fx.get<double>(c + ".overall_accuracy").data()[0]));
    const Tensor<double> iou = fx.get<double>(c + ".per_category_iou"), accuracy = fx.get<double>(c + ".per_category_accuracy");
    int64_t bad = 0, nans = 0;
    for (int64_t k = 0; k < num_labels; ++k) {
      bad += !same(r.per_category_iou[size_t(k)], iou.data()[k]) + !same(r.per_category_accuracy[size_t(k)], accuracy.data()[k]);
      nans += std::isnan(iou.data()[k]);
    }
    CHECK(bad == 0);
    if (c == "absent_class") CHECK(nans >= 1);
    MESSAGE(c << ": mean_iou " << r.mean_iou << " (numpy " << fx.get<double>(c + ".mean_iou").data()[0] << ")");
  }
}
