// finetune_sidewalk: fine-tune (or train from scratch) a SegFormer on a segmentation dataset.
//
// With no arguments it generates a small procedural street-scene dataset (runs/synthetic-scenes),
// trains a randomly initialised B0 on it for a few minutes on a laptop CPU, evaluates it, and
// writes an HF checkpoint, train_log.jsonl and training_curves.svg to runs/finetune.
//
// Flags: HF TrainingArguments' names (--learning_rate, --num_train_epochs, --max_steps, ...), listed
// first in --help, come from the one table of segml/train/options.hpp, which also gives their
// ranges; segml's earlier names (--lr, --epochs, --steps, ...) stay as aliases of the same fields.
// An HF name and its alias given with different values are refused, naming both.
//
// Resuming (docs/training.md): every save is a complete checkpoint-<step>/ folder, published
// atomically; Ctrl-C stops after the current step and saves one. `--resume_from_checkpoint RUN`
// (alias --resume) continues from RUN's latest complete checkpoint, `RUN/checkpoint-N` from that
// one, `true` from the latest of --output_dir (HF's resume_from_checkpoint=True), into RUN (or
// --output_dir). The saved options are reused; the table's `change` options (max_steps,
// num_train_epochs, eval_steps, save_steps, ...) and --threads may override them (each override is
// printed); a `keep` option is refused when its value differs from the saved one. Every numeric
// flag is range-checked (examples/cli_checks.hpp).
//
// Data-parallel (docs/distributed.md): `mpirun -np N finetune_sidewalk ...` (or srun) trains one
// model on N processes when the program was built with MPI. --per_device_train_batch_size is per
// process; the global batch is that x N x --gradient_accumulation_steps, and a step equals the
// one-process step on the same global batch. Rank 0 alone prints and writes; an error on any rank
// ends the whole job with the rank in the message.
#include <CLI/CLI.hpp>

#include <atomic>
#include <charconv>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <limits>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include <segml/segformer.hpp>
#include <segml/train/trainer.hpp>
#ifdef SEGML_HAVE_MPI
#include <segml/distributed/mpi.hpp>
#endif

#include "cli_checks.hpp"

namespace fs = std::filesystem;
using namespace segml;

namespace {

std::atomic<bool> g_stop{false};

extern "C" void on_signal(int) {
  if (g_stop.load()) std::_Exit(130);  // a second Ctrl-C: leave now
  g_stop.store(true);
}

constexpr int64_t kMinCrop = 16, kMaxCrop = 8192;

// "512" or "384x512" -> (height, width), each in [kMinCrop, kMaxCrop]; nullopt otherwise.
std::optional<std::pair<int64_t, int64_t>> parse_size(const std::string& s) {
  const auto x = s.find('x');
  int64_t h = 0, w = 0;
  if (!cli::detail::parse_whole(s.substr(0, x), h)) return std::nullopt;
  if (x == std::string::npos)
    w = h;
  else if (!cli::detail::parse_whole(s.substr(x + 1), w))
    return std::nullopt;
  if (h < kMinCrop || h > kMaxCrop || w < kMinCrop || w > kMaxCrop) return std::nullopt;
  return std::pair{h, w};
}

CLI::Validator crop_size_check() {
  const std::string range = "H or HxW with whole numbers in [" + std::to_string(kMinCrop) + ", " + std::to_string(kMaxCrop) + "]";
  return CLI::Validator(
      [range](std::string& s) -> std::string { return parse_size(s) ? "" : "got '" + s + "', expected " + range; },
      "(" + range + ")");
}

// --seed: any whole number in [0, 2^64 - 1] (CLI11 alone would wrap "-1" around).
CLI::Validator seed_check() {
  return CLI::Validator(
      [](std::string& s) -> std::string {
        uint64_t v = 0;
        const auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
        if (s.empty() || ec != std::errc() || p != s.data() + s.size())
          return "got '" + s + "', expected a whole number in [0, 18446744073709551615]";
        return "";
      },
      "(0 .. 2^64-1)");
}

SegformerConfig preset(const std::string& name) {
  if (name == "b0") return SegformerConfig::b0();
  if (name == "b1") return SegformerConfig::b1();
  if (name == "b2") return SegformerConfig::b2();
  if (name == "b3") return SegformerConfig::b3();
  if (name == "b4") return SegformerConfig::b4();
  if (name == "b5") return SegformerConfig::b5();
  fail("--config: unknown preset '", name, "' (b0 .. b5)");
}

// The same folder, however it is spelled (./runs/x, runs/x/, an absolute path).
bool same_folder(const fs::path& a, const fs::path& b) {
  std::error_code ec;
  return fs::weakly_canonical(a, ec) == fs::weakly_canonical(b, ec);
}

// The command line of the TrainOptions table: --<name> and --<alias> are separate CLI11 options
// into separate strings, so that both given with different values can be refused naming both.
class OptionFlags {
 public:
  struct Flag {
    std::string name_text, alias_text;
    bool name_flag = false, alias_flag = false;
    CLI::Option* name = nullptr;
    CLI::Option* alias = nullptr;
  };

  // Adds the rows with info.hf == hf to `group`.
  void add(CLI::App& app, bool hf, const std::string& group) { add_rows(app, hf, false, group); }
  // Adds the aliases of every row to `group` (after the other groups, so --help lists them last).
  void add_aliases(CLI::App& app, const std::string& group) {
    add_rows(app, true, true, group);
    add_rows(app, false, true, group);
  }

 private:
  void add_rows(CLI::App& app, bool hf, bool aliases, const std::string& group) {
    const train::TrainOptions defaults;
    train::for_each_option(defaults, [&](const train::OptionInfo& info, const auto& def) {
      if (!info.cli || info.hf != hf) return;
      Flag& f = flags_[info.name];
      if (!aliases) order_.push_back(info.name);
      using T = std::decay_t<decltype(def)>;
      auto bind = [&](const std::string& flag, std::string& text, bool& on, const std::string& help) -> CLI::Option* {
        CLI::Option* o = nullptr;
        if constexpr (std::is_same_v<T, bool>) {
          o = app.add_flag(flag, on, help);
        } else {
          o = app.add_option(flag, text, help);
          if constexpr (std::is_same_v<T, std::string>) {
            if (*info.choices) o->check(CLI::IsMember(split(info.choices)));
          } else if constexpr (std::is_same_v<T, uint64_t>) {
            o->check(seed_check());
          } else if constexpr (std::is_integral_v<T>) {
            o->type_name("INT");
            o->check(cli::whole(static_cast<int64_t>(info.lo),
                                info.hi >= train::kNoLimit ? std::numeric_limits<int64_t>::max() : static_cast<int64_t>(info.hi)));
          } else {
            o->type_name("FLOAT");
            o->check(cli::real(info.lo, info.hi, info.open_low));
          }
        }
        return o;
      };
      if (!aliases) {
        std::ostringstream help;
        help << info.help;
        if constexpr (!std::is_same_v<T, bool>) help << " [default: " << nlohmann::json(def).dump() << "]";
        if (*info.alias) help << " (alias: --" << info.alias << ")";
        f.name = bind("--" + std::string(info.name), f.name_text, f.name_flag, help.str());
        f.name->group(group);
      } else if (*info.alias) {
        f.alias = bind("--" + std::string(info.alias), f.alias_text, f.alias_flag,
                       "Alias of --" + std::string(info.name) + " (segml's earlier name)");
        f.alias->group(group);
      }
    });
  }

 public:

  // The flag as typed (the HF name or the alias) and its value text, if given; both given with
  // different values is an error naming both.
  std::optional<std::pair<std::string, std::string>> given(const std::string& name) const {
    const Flag& f = flags_.at(name);
    std::optional<std::pair<std::string, std::string>> by_name, by_alias;
    if (f.name->count() > 0) by_name = std::pair{f.name->get_name(), value(f, false)};
    if (f.alias && f.alias->count() > 0) by_alias = std::pair{f.alias->get_name(), value(f, true)};
    if (by_name && by_alias) {
      train::TrainOptions a, b;
      set(a, name, by_name->second), set(b, name, by_alias->second);
      if (a.to_json().at(name) != b.to_json().at(name))
        fail(by_name->first, " ", by_name->second, " and its alias ", by_alias->first, " ", by_alias->second,
             " are given with different values: give one of them");
    }
    return by_name ? by_name : by_alias;
  }

  // Sets option `name` of `o` from its command-line text.
  static void set(train::TrainOptions& o, const std::string& name, const std::string& text) {
    train::for_each_option(o, [&](const train::OptionInfo& info, auto& v) {
      if (name != info.name) return;
      using T = std::decay_t<decltype(v)>;
      if constexpr (std::is_same_v<T, bool>) {
        v = text == "true";
      } else if constexpr (std::is_same_v<T, std::string>) {
        v = text;
      } else if constexpr (std::is_integral_v<T>) {
        const auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
        if (ec != std::errc() || p != text.data() + text.size()) fail("--", name, ": got '", text, "', expected a whole number");
      } else {
        v = std::strtod(text.c_str(), nullptr);
      }
    });
  }

  const std::vector<std::string>& names() const { return order_; }

 private:
  static std::string value(const Flag& f, bool alias) {
    const CLI::Option* o = alias ? f.alias : f.name;
    if (o->get_expected_min() == 0) return (alias ? f.alias_flag : f.name_flag) ? "true" : "false";
    return alias ? f.alias_text : f.name_text;
  }
  static std::vector<std::string> split(const std::string& words) {
    std::vector<std::string> out;
    size_t at = 0;
    for (size_t bar; (bar = words.find('|', at)) != std::string::npos; at = bar + 1) out.push_back(words.substr(at, bar - at));
    out.push_back(words.substr(at));
    return out;
  }
  std::map<std::string, Flag> flags_;
  std::vector<std::string> order_;
};

}  // namespace

// The MPI job this process is a rank of (none for a plain run, or a build without MPI).
struct Job {
#ifdef SEGML_HAVE_MPI
  Job(int* argc, char*** argv) : mpi(argc, argv) {}
  distributed::MpiSession mpi;
  std::shared_ptr<distributed::Communicator> world() const { return mpi.world(); }
#else
  Job(int*, char***) {}
  std::shared_ptr<distributed::Communicator> world() const { return nullptr; }
#endif
  int rank() const { return world() ? world()->rank() : 0; }
  int size() const { return world() ? world()->size() : 1; }
};

// The number of ranks an MPI launcher says this process belongs to (1 when none).
int launcher_world_size() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE"})
    if (const char* s = std::getenv(v)) return std::max(1, std::atoi(s));
  return 1;
}

int main(int argc, char** argv) {
  Job job(&argc, &argv);
  // Rank 0 alone prints; the others' errors still reach stderr.
  if (job.rank() != 0 && !std::freopen("/dev/null", "w", stdout)) return 1;
  CLI::App app{"Fine-tune a SegFormer for semantic segmentation on the CPU (see docs/training.md).\n"
               "Without arguments: B0 from scratch on built-in procedural street scenes, a few minutes."};
  std::string model_path, config_name, data_dir, resume, class_map, crop = "";
  int64_t subset = 0;
  bool no_augment = false;
  int threads = 0;
  int64_t max_pixels = kDefaultMaxPixels;

  // HF TrainingArguments' names first, then segml's own flags, then the aliases.
  const std::string hf_group = "HuggingFace TrainingArguments", segml_group = "segml",
                    alias_group = "Aliases (segml's earlier names of the options above)";
  OptionFlags flags;
  flags.add(app, /*hf=*/true, hf_group);
  // This program's own defaults where they differ from the table's.
  app.get_option("--learning_rate")->description(app.get_option("--learning_rate")->get_description() +
                                                 "; this program without --model: 1e-3");
  app.get_option("--num_train_epochs")->description(app.get_option("--num_train_epochs")->get_description() +
                                                    "; this program without either: 10 epochs (1000 steps on the built-in data)");
  app.get_option("--eval_steps")->description(app.get_option("--eval_steps")->get_description() +
                                              "; this program when not given: 5 evaluations per run");
  app.add_option("--resume_from_checkpoint", resume,
                 "Continue a run: a run folder (its latest complete checkpoint), one of its checkpoint-<step> folders, "
                 "or 'true' for the latest checkpoint of --output_dir. Its options are reused; the run continues in "
                 "that folder unless --output_dir is given (alias: --resume)")
      ->group(hf_group);
  app.add_option("--model", model_path,
                 "HF checkpoint folder or .safetensors to start from (e.g. weights/mit-b0; an encoder-only "
                 "checkpoint gets a fresh decode head for the dataset's labels), an earlier run's output, or a hub id "
                 "(e.g. nvidia/mit-b0: HF cache, else downloaded)")
      ->group(segml_group);
  std::string revision = "main";
  app.add_option("--revision", revision, "with a hub id as --model (e.g. nvidia/mit-b0): branch, tag or commit")
      ->capture_default_str()
      ->group(segml_group);
  app.add_option("--config", config_name, "Random initialisation from a preset instead: b0..b5 (default without --model: b0)")
      ->check(CLI::IsMember({"b0", "b1", "b2", "b3", "b4", "b5"}))
      ->group(segml_group);
  app.add_option("--data", data_dir,
                 "Dataset folder (id2label.json + {train,val,test}/{images,labels} or images/ + labels/). "
                 "Default: built-in synthetic street scenes, generated once into runs/synthetic-scenes")
      ->group(segml_group);
  flags.add(app, /*hf=*/false, segml_group);
  app.add_option("--crop-size", crop, "Training crop H or HxW; also the evaluation resize (default 512; 160 on the built-in data, so the default run takes a few minutes)")
      ->check(crop_size_check())
      ->group(segml_group);
  app.add_flag("--no-augment", no_augment,
               "No augmentation: resize whole images to the crop size (HF's tutorial) instead of random "
               "resize 0.5-2, crop (cat_max_ratio 0.75), flip, photometric distortion")
      ->group(segml_group);
  app.add_option("--subset", subset, "Train on the first N training images only (e.g. to overfit a few)")
      ->check(cli::positive_whole())
      ->group(segml_group);
  app.add_option("--threads", threads, "Compute threads (default: all cores / OMP_NUM_THREADS; with a resumed run: the saved run's)")
      ->check(cli::whole(1, 4096))
      ->group(segml_group);
  app.add_option("--max-pixels", max_pixels,
                 "Refuse dataset images with more pixels than this (read from the header, before decoding)")
      ->capture_default_str()
      ->check(cli::positive_whole())
      ->group(segml_group);
  app.add_option("--class-map", class_map, "JSON remapping the dataset's class ids (see docs/datasets.md)")->group(segml_group);
  // Data parallelism (mpirun -np N ...).
  const std::string dp_group = "Data-parallel training (mpirun -np N / srun; docs/distributed.md)";
  bool no_sync_bn = false, check_replicas = false;
  double bucket_cap_mb = train::TrainOptions().bucket_cap_mb;
  app.add_flag("--no-sync-bn", no_sync_bn,
               "BatchNorm statistics of each process's own batch (default: over every process's batch, SyncBN)")
      ->group(dp_group);
  app.add_option("--bucket-cap-mb", bucket_cap_mb, "Gradients are summed in buckets of about this many MiB")
      ->capture_default_str()
      ->check(CLI::Range(0.001, 4096.0))
      ->group(dp_group);
  app.add_flag("--check-replicas", check_replicas,
               "After every step, check that every process holds bit-identical parameters (on in debug builds)")
      ->group(dp_group);
  flags.add_aliases(app, alias_group);
  app.add_option("--resume", resume, "Alias of --resume_from_checkpoint (segml's earlier name)")->group(alias_group);
  CLI11_PARSE(app, argc, argv);
  auto given = [&](const char* flag) { return app.count(flag) > 0; };

  try {
    if (!job.world() && launcher_world_size() > 1)
      fail("started as one of ", launcher_world_size(), " processes by an MPI launcher, but this finetune_sidewalk was ",
           "built without MPI, so each process would train alone. Install MPI (Debian: apt install libopenmpi-dev ",
           "openmpi-bin) and rebuild, or run it as one process");
    if (given("--resume") && given("--resume_from_checkpoint"))
      fail("--resume_from_checkpoint and its alias --resume: give one of them");
    // Every table option given on the command line: name -> (flag as typed, value text).
    std::map<std::string, std::pair<std::string, std::string>> typed;
    for (const std::string& name : flags.names())
      if (const auto g = flags.given(name)) typed[name] = *g;
    auto has = [&](const char* name) { return typed.count(name) > 0; };
    const std::string output = has("output_dir") ? typed.at("output_dir").second : train::TrainOptions().output_dir;
    if (resume == "true" || resume == "True") resume = output;  // HF: the latest checkpoint of output_dir

    train::TrainOptions opt;
    std::string init;  // what the weights start from, for the log
    std::optional<train::ResumePoint> from;
    if (!resume.empty()) {
      from = train::resolve_resume(resume);
      for (const std::string& why : from->passed_over) std::printf("Passed over: %s\n", why.c_str());
      const nlohmann::json state = detail::read_json_file(from->state_dir / "trainer_state.json", "trainer state").at("segml");
      opt = train::TrainOptions::from_json(state.at("options"));
      const int64_t done = from->step;
      auto refuse = [&](const std::string& flag, const std::string& value, const std::string& was) {
        fail(flag, value.empty() ? "" : " " + value, " differs from the resumed run's ", was, ": it would change the ",
             "arithmetic of the ", done, " finished steps, so a resumed run keeps its value. To train on with other ",
             "settings, start a new run from its weights: --model ", from->state_dir.string());
      };
      auto overridden = [&](const std::string& flag, const std::string& was, const std::string& now) {
        if (was != now) std::printf("%s: %s (the saved run had %s)\n", flag.c_str(), now.c_str(), was.c_str());
      };
      // The table's options: `keep` ones refused when they differ, `change` ones taken and printed.
      if (has("max_steps") && has("num_train_epochs"))
        fail(typed.at("max_steps").first, " and ", typed.at("num_train_epochs").first, ": give one of them to extend a resumed run");
      for (const auto& [name, flag_value] : typed) {
        if (name == "output_dir") continue;  // below
        train::TrainOptions wanted = opt;
        OptionFlags::set(wanted, name, flag_value.second);
        const nlohmann::json was = opt.to_json().at(name), now = wanted.to_json().at(name);
        train::OnResume rule = train::OnResume::change;
        train::for_each_option(opt, [&](const train::OptionInfo& info, const auto&) {
          if (name == info.name) rule = info.on_resume;
        });
        if (rule == train::OnResume::keep) {
          if (was != now) refuse(flag_value.first, flag_value.second, was.dump());
          continue;
        }
        if (name == "max_steps") {
          overridden(flag_value.first, opt.max_steps > 0 ? was.dump() : nlohmann::json(opt.num_train_epochs).dump() + " epochs", now.dump());
          wanted.num_train_epochs = 0;
        } else if (name == "num_train_epochs") {
          overridden(flag_value.first, opt.max_steps > 0 ? nlohmann::json(opt.max_steps).dump() + " steps" : was.dump(), now.dump());
          wanted.max_steps = 0;
        } else {
          overridden(flag_value.first, was.dump(), now.dump());
        }
        opt = wanted;
      }
      // segml's program flags that would change the finished steps.
      auto keep = [&](const char* flag, bool same, const std::string& was) {
        if (given(flag) && !same) refuse(flag, "", was);
      };
      const std::string saved_data = opt.extra.value("data", ""), saved_map = opt.extra.value("class_map", "");
      auto text = [](const auto& v) {
        std::ostringstream os;
        os << v;
        return os.str();
      };
      keep("--crop-size", given("--crop-size") && *parse_size(crop) == std::pair{opt.crop_height, opt.crop_width},
           text(opt.crop_height) + "x" + text(opt.crop_width));
      keep("--no-augment", no_augment == !opt.augment, opt.augment ? "augmentation on" : "--no-augment");
      keep("--no-sync-bn", no_sync_bn == !opt.sync_bn, opt.sync_bn ? "SyncBN" : "--no-sync-bn");
      keep("--subset", subset == opt.extra.value("subset", int64_t{0}), text(opt.extra.value("subset", int64_t{0})));
      keep("--data", !saved_data.empty() && same_folder(data_dir, saved_data), saved_data.empty() ? "built-in data" : saved_data);
      keep("--class-map", !saved_map.empty() && same_folder(class_map, saved_map), saved_map.empty() ? "none" : saved_map);
      keep("--model", model_path == opt.extra.value("model", ""), opt.extra.value("model", "") == "" ? "none" : opt.extra.value("model", ""));
      keep("--config", config_name == opt.extra.value("config", ""), opt.extra.value("config", "") == "" ? "none" : opt.extra.value("config", ""));

      opt.output_dir = from->run_dir.string();
      if (has("output_dir") && !same_folder(output, from->run_dir)) {
        const std::vector<train::CheckpointRef> there = train::list_checkpoints(output);
        if (!there.empty())
          fail(typed.at("output_dir").first, " ", output, " already holds a training run (", there.back().dir.filename().string(),
               "); continue that one with --resume_from_checkpoint ", output, ", or choose an empty folder");
        overridden(typed.at("output_dir").first, opt.output_dir, output);
        opt.output_dir = output;
      }
      const int saved_threads = state.value("threads", 0);
      if (given("--threads") && threads != saved_threads)
        std::printf("--threads %d: warning: the saved run used %d threads; the continuation is not bit-identical to an "
                    "uninterrupted run\n", threads, saved_threads);
      else if (saved_threads > 0)
        threads = saved_threads;
      data_dir = saved_data;
      class_map = saved_map;
      subset = opt.extra.value("subset", int64_t{0});
      std::printf("Resuming %s at step %lld -> continuing in %s\n", from->state_dir.string().c_str(),
                  static_cast<long long>(done), opt.output_dir.c_str());
    } else if (!train::list_checkpoints(output).empty()) {
      fail("--output_dir ", output, " already holds a training run (", train::list_checkpoints(output).back().dir.filename().string(),
           "); continue it with --resume_from_checkpoint ", output, ", or choose another --output_dir (or delete the folder)");
    }
    if (threads > 0) set_num_threads(threads);
    set_max_image_pixels(max_pixels);

    const bool builtin = data_dir.empty();
    if (builtin) {
      data_dir = "runs/synthetic-scenes";
      std::printf("Data: built-in procedural street scenes in %s ", data_dir.c_str());
      std::fflush(stdout);
      // Data-parallel: rank 0 writes it, the others then read it.
      bool wrote = false;
      if (job.rank() == 0) wrote = write_synthetic_dataset(data_dir, 200, 24, 24, 320, 240, /*seed=*/0);
      if (job.world()) job.world()->barrier();
      if (job.rank() != 0) write_synthetic_dataset(data_dir, 200, 24, 24, 320, 240, /*seed=*/0);
      std::printf("(%s: 200 train, 24 val, 24 test, 320x240)\n", wrote ? "generated" : "reused");
    }

    if (!from) {
      // segml's program defaults, then every option as given.
      const auto [ch, cw] = *parse_size(crop.empty() ? (builtin ? "160" : "512") : crop);
      opt.crop_height = ch, opt.crop_width = cw;
      opt.augment = !no_augment;
      opt.sync_bn = !no_sync_bn;
      opt.learning_rate = model_path.empty() ? 1e-3 : 6e-5;
      if (!has("max_steps") && !has("num_train_epochs")) {
        if (builtin)
          opt.max_steps = 1000;
        else
          opt.num_train_epochs = 10;
      }
      for (const auto& [name, flag_value] : typed) OptionFlags::set(opt, name, flag_value.second);
      if (opt.max_steps <= 0 && opt.num_train_epochs <= 0)
        fail("give --max_steps > 0 or --num_train_epochs > 0 (HF: max_steps -1 means 'use num_train_epochs')");
      opt.extra = {{"data", builtin ? "" : data_dir}, {"class_map", class_map}, {"subset", subset},
                   {"model", model_path}, {"config", config_name}};
    }
    DatasetOptions dopt;
    dopt.seed = opt.seed;
    if (!class_map.empty()) dopt.class_map = class_map;
    SegmentationDataset train_ds = SegmentationDataset::open(data_dir, "train", dopt);
    if (subset > 0) train_ds = train_ds.subset(static_cast<size_t>(std::min<int64_t>(subset, int64_t(train_ds.size()))));
    std::optional<SegmentationDataset> val_ds;
    if (fs::is_directory(fs::path(data_dir) / "val" / "images") || fs::is_directory(fs::path(data_dir) / "images"))
      val_ds = SegmentationDataset::open(data_dir, "val", dopt);
    if (val_ds && val_ds->size() == 0) val_ds.reset();
    const uint64_t seed = opt.seed;
    const std::vector<std::string> labels = train::class_names(train_ds.id2label(), opt.reduce_labels);

    // The model: a resumed run, a checkpoint, or a fresh preset.
    std::optional<SegformerForSemanticSegmentation<float>> model;
    SegformerImageProcessor processor;
    if (from) {
      LoadOptions lo;
      lo.strict = true;
      model.emplace(from_pretrained(from->state_dir.string(), lo));
      processor = SegformerImageProcessor::from_pretrained(from->state_dir.string());
      processor.do_reduce_labels = false;
      init = "resumed";
    } else if (!model_path.empty()) {
      LoadOptions lo;
      lo.labels = labels;
      lo.ignore_mismatched_sizes = true;
      lo.seed = seed;
      lo.revision = revision;
      model.emplace(from_pretrained(model_path, lo));
      processor = SegformerImageProcessor::from_pretrained(model_path, nullptr, {revision});
      init = "from " + model_path;
    } else {
      SegformerConfig cfg = preset(config_name.empty() ? "b0" : config_name);
      cfg.set_labels(labels);
      model.emplace(cfg, seed);
      init = "random " + (config_name.empty() ? std::string("b0") : config_name);
    }
    model->generator().manual_seed(opt.seed);
    processor.height = opt.crop_height;
    processor.width = opt.crop_width;
    processor.do_reduce_labels = false;

    opt.communicator = job.world();
    opt.bucket_cap_mb = bucket_cap_mb;
    if (check_replicas) opt.check_replicas = true;
    train::Trainer trainer(*model, processor, train_ds, val_ds, opt);
    trainer.base_model = opt.extra.value("model", "");
    trainer.dataset_name = opt.extra.value("data", "") == "" ? "segml's built-in synthetic street scenes" : opt.extra.value("data", "");
    if (from) {
      if (trainer.total_steps() < from->step)
        fail(has("max_steps") ? typed.at("max_steps").first : typed.count("num_train_epochs") ? typed.at("num_train_epochs").first : std::string("the saved run"), " gives ",
             trainer.total_steps(), " steps in total, fewer than the ", from->step, " the resumed run has done");
      trainer.load_state(from->state_dir.string());
    } else {
      if (!has("eval_steps")) trainer.set_eval_every(std::max<int64_t>(1, trainer.total_steps() / 5));
    }
    // A test-only pause after each file of a saved state, to land kills inside saves.
    if (const char* pause = std::getenv("SEGML_TEST_SAVE_PAUSE_MS"))
      trainer.on_state_file = [ms = std::atoi(pause)](const std::string&) {
        std::this_thread::sleep_for(std::chrono::milliseconds(ms));
      };

    if (from && trainer.finished()) {
      trainer.run();  // trains nothing; makes sure the output folder holds the final model
      std::printf("The run is complete at step %lld of %lld: nothing to train. Extend it with\n  %s --resume_from_checkpoint %s --max_steps N  (N > %lld)\n",
                  static_cast<long long>(trainer.step()), static_cast<long long>(trainer.total_steps()), argv[0],
                  opt.output_dir.c_str(), static_cast<long long>(trainer.step()));
      return 0;
    }

    int64_t params = 0;
    nn::Visitor<float> count;
    count.parameter = [&](const std::string&, Var<float>& p) { params += p.numel(); };
    count.buffer = [](const std::string&, Tensor<float>&) {};
    model->visit(count);
    std::printf("Model: SegFormer hidden sizes [%lld..%lld], %.2fM parameters, %zu classes, %s\n",
                static_cast<long long>(model->config.hidden_sizes.front()),
                static_cast<long long>(model->config.hidden_sizes.back()), double(params) / 1e6, labels.size(),
                init.c_str());
    const std::string procs = job.size() > 1 ? " x " + std::to_string(job.size()) + " processes" : "";
    std::printf("Training: %zu images, %s %lldx%lld, batch %lld%s x %lld accumulation = %lld per step, %lld steps, %s lr "
                "%.3g (%s), %d threads%s -> %s\n",
                train_ds.size(), opt.augment ? "augmented crops" : "resized to", static_cast<long long>(opt.crop_height),
                static_cast<long long>(opt.crop_width), static_cast<long long>(opt.per_device_train_batch_size),
                procs.c_str(), static_cast<long long>(opt.gradient_accumulation_steps),
                static_cast<long long>(trainer.global_batch_size()), static_cast<long long>(trainer.total_steps()),
                opt.optimizer.c_str(), opt.learning_rate, opt.lr_scheduler_type.c_str(), num_threads(),
                job.size() > 1 ? " per process" : "", opt.output_dir.c_str());
    if (opt.max_grad_norm > 0)
      std::printf("Gradient clipping: max_grad_norm %g (HF's default 1.0; segml before did not clip; 0 turns it off)\n",
                  opt.max_grad_norm);
    else
      std::printf("Gradient clipping: off (max_grad_norm 0)\n");
    if (trainer.warmup_steps() > 0) std::printf("Warm-up: %lld steps\n", static_cast<long long>(trainer.warmup_steps()));
    if (trainer.options().eval_steps > 0)
      std::printf("Evaluating on %zu val images every %lld steps.\n", val_ds ? val_ds->size() : size_t{0},
                  static_cast<long long>(trainer.options().eval_steps));
    std::printf("Ctrl-C stops after the current step and saves a resumable state.\n");

    std::signal(SIGINT, on_signal);
    std::signal(SIGTERM, on_signal);
    const bool finished = trainer.run(&g_stop);
    if (!finished) {
      std::printf("Stopped at step %lld of %lld; state saved in %s/checkpoint-%lld. Continue with:\n  %s --resume_from_checkpoint %s\n",
                  static_cast<long long>(trainer.step()), static_cast<long long>(trainer.total_steps()),
                  opt.output_dir.c_str(), static_cast<long long>(trainer.step()), argv[0], opt.output_dir.c_str());
      return 0;
    }
    const auto& h = trainer.history();
    if (!h.empty())
      std::printf("Loss: %.4f at step %lld -> %.4f at step %lld\n", h.front().loss, static_cast<long long>(h.front().step),
                  h.back().loss, static_cast<long long>(h.back().step));
    if (!trainer.evals().empty()) {
      // With load_best_model_at_end the output folder holds the best evaluation's weights: show that one.
      const train::EvalRecord* shown = &trainer.evals().back();
      if (opt.load_best_model_at_end)
        for (const train::EvalRecord& e : trainer.evals())
          if (e.step == trainer.best_step()) shown = &e;
      std::printf("Validation (val split, %zu images, step %lld%s):\n", val_ds->size(), static_cast<long long>(shown->step),
                  opt.load_best_model_at_end ? (", the best by " + opt.best_metric_key()).c_str() : "");
      std::printf("%s", train::metrics_table(shown->metrics, labels).c_str());
    }
    std::printf("Saved the model to %s (config.json, model.safetensors, preprocessor_config.json) and the full state\n"
                "to %s/checkpoint-%lld; the log to %s/train_log.jsonl, the curves to %s/training_curves.svg and the\n"
                "model card to %s/README.md\n",
                opt.output_dir.c_str(), opt.output_dir.c_str(), static_cast<long long>(trainer.step()),
                opt.output_dir.c_str(), opt.output_dir.c_str(), opt.output_dir.c_str());
    return 0;
  } catch (const std::exception& e) {
    if (job.size() > 1) {  // the others may be waiting for this rank: end them all
      std::fprintf(stderr, "finetune_sidewalk: rank %d of %d: error: %s\n", job.rank(), job.size(), e.what());
      std::fflush(stderr);
      job.world()->abort(1);
      std::abort();
    }
    std::fprintf(stderr, "finetune_sidewalk: error: %s\n", e.what());
    return 1;
  }
}
