// bench/data_parallel: training throughput of data-parallel SegFormer on MPI, and what its
// communication costs (docs/distributed.md, bench/README.md "Data-parallel training").
//
//   bench/data_parallel --threads 2                          # 1 process x 2 threads
//   mpirun -np 2 bench/data_parallel --threads 1             # 2 processes x 1 thread
//
// Each step is the Trainer's data-parallel step on random images (HF loss over the global count of
// valid pixels, SyncBN, gradients summed in buckets started during backward by
// distributed::GradientReducer, then an SGD update). Reported (rank 0): images/s over every
// process; per step the forward, the backward, and the time after backward spent waiting for
// gradient sums still in flight (the communication not hidden, plus any wait for a slower rank);
// with --no-overlap every sum starts only after backward, the baseline that time is compared
// with; then the same bytes summed with a blocking allreduce on their own, and the allreduce
// bandwidth (algorithm bandwidth = bytes / time; bus bandwidth = algbw x 2 (N - 1) / N, the
// figure comparable across N).
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <segml/segformer.hpp>
#include <segml/train/optim.hpp>
#ifdef SEGML_HAVE_MPI
#include <segml/distributed/mpi.hpp>
#endif
#include <segml/distributed/data_parallel.hpp>
#include <segml/kernels/cross_entropy.hpp>

using namespace segml;
using Clock = std::chrono::steady_clock;

namespace {
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }
double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}
}  // namespace

int main(int argc, char** argv) {
#ifdef SEGML_HAVE_MPI
  distributed::MpiSession mpi(&argc, &argv);
  std::shared_ptr<distributed::Communicator> world = mpi.world();
#else
  std::shared_ptr<distributed::Communicator> world;
#endif
  const int rank = world ? world->rank() : 0, size = world ? world->size() : 1;
  CLI::App app{"Data-parallel training throughput and communication (run alone, or with mpirun -np N)"};
  std::string config = "b0", json;
  int64_t image = 512, batch = 1, steps = 6, warmup = 2, labels = 19;
  int threads = 0;
  double bucket_mb = 25;
  bool no_overlap = false;
  app.add_option("--config", config, "b0..b5")->check(CLI::IsMember({"b0", "b1", "b2", "b3", "b4", "b5"}))->capture_default_str();
  app.add_option("--size", image, "Square image size")->check(CLI::Range(32, 2048))->capture_default_str();
  app.add_option("--batch", batch, "Images per process per step")->check(CLI::Range(1, 64))->capture_default_str();
  app.add_option("--steps", steps, "Timed steps")->check(CLI::Range(1, 10000))->capture_default_str();
  app.add_option("--warmup", warmup, "Untimed steps first")->check(CLI::Range(0, 100))->capture_default_str();
  app.add_option("--labels", labels, "Classes")->check(CLI::Range(2, 1000))->capture_default_str();
  app.add_option("--threads", threads, "Compute threads per process (default: all cores)")->check(CLI::Range(1, 4096));
  app.add_option("--bucket-cap-mb", bucket_mb, "Gradient bucket size in MiB")->check(CLI::Range(0.001, 4096.0))->capture_default_str();
  app.add_flag("--no-overlap", no_overlap,
               "Start every gradient sum after backward instead of during it (the baseline of the overlap)");
  app.add_option("--json", json, "Append the result as one JSON line to this file (rank 0)");
  CLI11_PARSE(app, argc, argv);
  if (threads > 0) set_num_threads(threads);

  SegformerConfig cfg = config == "b0"   ? SegformerConfig::b0()
                        : config == "b1" ? SegformerConfig::b1()
                        : config == "b2" ? SegformerConfig::b2()
                        : config == "b3" ? SegformerConfig::b3()
                        : config == "b4" ? SegformerConfig::b4()
                                         : SegformerConfig::b5();
  cfg.num_labels = labels;
  cfg.classifier_dropout_prob = 0.0;
  cfg.drop_path_rate = 0.0;
  SegformerForSemanticSegmentation<float> model(cfg, 0);
  model.train();
  std::vector<train::ParamGroup<float>> groups(1);
  std::vector<Var<float>*> params;
  std::vector<Tensor<float>*> state;
  int64_t numel = 0;
  nn::Visitor<float> v;
  v.parameter = [&](const std::string& name, Var<float>& p) {
    groups[0].params.emplace_back(name, p);
    params.push_back(&p);
    state.push_back(&p.data());
    numel += p.numel();
  };
  v.buffer = [&](const std::string&, Tensor<float>& t) { state.push_back(&t); };
  model.visit(v);
  train::SGD<float> sgd(std::move(groups), 0.9);

  std::unique_ptr<distributed::GradientReducer> reducer;
  std::shared_ptr<distributed::Communicator> sums;
  if (world && size > 1) {
    distributed::broadcast_tensors(*world, state);
    sums = world->duplicate();
    reducer = std::make_unique<distributed::GradientReducer>(world->duplicate(), params,
                                                             static_cast<int64_t>(bucket_mb * 1024 * 1024));
    for (nn::BatchNorm2d<float>* bn : model.batch_norms())
      bn->sync = [c = world->duplicate()](double* d, int64_t n) { c->allreduce_sum(d, n); };
  }

  // Random images and labels (5 % ignored), different on every process.
  Generator g(1000 + static_cast<uint64_t>(rank));
  Tensor<float> x = Tensor<float>::empty({batch, 3, image, image});
  g.fill_normal(x.data(), x.numel());
  Tensor<int64_t> y = Tensor<int64_t>::empty({batch, image, image});
  for (int64_t i = 0; i < y.numel(); ++i) {
    const float u = g.uniform();
    y.data()[i] = u < 0.05f ? 255 : static_cast<int64_t>(u * float(labels)) % labels;
  }

  std::vector<double> step_s, fwd_s, bwd_s, wait_s;
  for (int64_t s = 0; s < warmup + steps; ++s) {
    if (world) world->barrier();
    const auto t0 = Clock::now();
    const SegformerOutput<float> out = model.forward(Var<float>(x), &y);
    double loss_sums[2] = {double(out.loss.data().data()[0]), 1.0};
    if (sums) {
      const double valid = double(kernels::cross_entropy_count_valid(y.data(), y.numel(), labels, 255));
      loss_sums[0] *= valid;
      loss_sums[1] = valid;
      sums->allreduce_sum(loss_sums, 2);
    }
    const double fwd = seconds_since(t0);
    const auto t1 = Clock::now();
    if (reducer && !no_overlap) reducer->arm();
    const double weight = sums ? double(kernels::cross_entropy_count_valid(y.data(), y.numel(), labels, 255)) / loss_sums[1] : 1.0;
    out.loss.backward(Tensor<float>::full(out.loss.shape(), static_cast<float>(weight)));
    const double bwd = seconds_since(t1);
    const auto t2 = Clock::now();
    if (reducer && no_overlap) reducer->arm();  // nothing started yet: finish() starts every bucket
    if (reducer) reducer->finish();
    const double wait = seconds_since(t2);
    sgd.step(1e-4);
    sgd.zero_grad();
    const double total = seconds_since(t0);
    if (s >= warmup) step_s.push_back(total), fwd_s.push_back(fwd), bwd_s.push_back(bwd), wait_s.push_back(wait);
  }
  if (world && size > 1) distributed::check_replicas(*world, std::vector<const Tensor<float>*>(state.begin(), state.end()), "bench");

  // The same bytes summed on their own, blocking: the communication with nothing to hide behind.
  double alone = 0;
  if (world && size > 1) {
    std::vector<float> buf(static_cast<size_t>(numel), 1.0f);
    std::vector<double> t;
    for (int r = 0; r < 5; ++r) {
      world->barrier();
      const auto a = Clock::now();
      world->allreduce_sum(buf.data(), numel);
      t.push_back(seconds_since(a));
    }
    alone = median(t);
  }
  const double bytes = 4.0 * double(numel);
  const double step = median(step_s), wait = median(wait_s);
  const double ips = double(batch * size) / step;
  const double algbw = alone > 0 ? bytes / alone / 1e9 : 0.0, busbw = algbw * 2.0 * (size - 1) / std::max(1, size);
  if (rank == 0) {
    std::printf("%s %lldx%lld, %d process(es) x %d thread(s), batch %lld per process: %.2f images/s (step %.3f s: "
                "forward %.3f, backward %.3f, waiting for gradient sums %.4f)\n",
                config.c_str(), static_cast<long long>(image), static_cast<long long>(image), size, num_threads(),
                static_cast<long long>(batch), ips, step, median(fwd_s), median(bwd_s), wait);
    if (alone > 0)
      std::printf("gradients %.1f MB in %lld bucket(s)%s; the same sum alone (blocking) %.4f s; allreduce %.2f GB/s "
                  "(bus bandwidth %.2f GB/s)\n",
                  bytes / 1e6, static_cast<long long>(reducer->bucket_count()),
                  no_overlap ? ", every sum started after backward" : ", started during backward as buckets complete",
                  alone, algbw, busbw);
    if (!json.empty()) {
      std::ofstream f(json, std::ios::app);
      f << nlohmann::json{{"config", config}, {"size", image}, {"processes", size}, {"threads", num_threads()},
                          {"batch_per_process", batch}, {"images_per_s", ips}, {"step_s", step},
                          {"forward_s", median(fwd_s)}, {"backward_s", median(bwd_s)}, {"exposed_comm_s", wait},
                          {"allreduce_alone_s", alone}, {"gradient_bytes", bytes},
                          {"overlap", !no_overlap}, {"bucket_cap_mb", bucket_mb}, {"algbw_GBps", algbw}, {"busbw_GBps", busbw}}
                .dump()
        << "\n";
    }
  }
  return 0;
}
