// examples/finetune_sidewalk, run as a program, against PyTorch: one step with
//   --optimizer sgd --lr 1 --weight-decay 0 --warmup-steps 0 --no-augment --steps 1 --max_grad_norm 0
// from a saved checkpoint must give the parameters of one torch.optim.SGD step of the reference model
// on the same batch (tools/fixtures/finetune_one_step.py, which also writes the checkpoint and the
// two-image dataset in tests/data/finetune_one_step). Checked: the logged loss (1e-5 relative), every
// parameter of the saved model.safetensors (1e-6 abs) and the BatchNorm running statistics (1e-5).
//
// The images already have the crop size, so --no-augment's resize is the identity (the resize itself
// is checked against PIL in test_image_processor); the dataset is exactly one batch, so the
// program's shuffle cannot change the loss or the gradients.
//
// Then resuming, driven as a user would: SIGKILL at 24 random instants (most inside saves, widened by
// the program's test-only SEGML_TEST_SAVE_PAUSE_MS), resumed each time, must end bit-identical to an
// uninterrupted run (every tensor of the final model and of the last optimizer state; the logged
// losses, steps 1..N once each); --resume of a checkpoint-N folder into another --output; a finished
// run not retrained and extended with --steps; arithmetic flags refused; --save-total-limit; mixed
// states refused; every numeric flag range-checked (HF's names and the aliases). HF TrainingArguments'
// names: --help lists them first; each sets the same field as its alias (two runs, one spelled each
// way, save the same options and the same weights); a name and its alias with different values are
// refused naming both; --resume_from_checkpoint true. Built only with the examples
// (tests/CMakeLists.txt passes the program's path as SEGML_FINETUNE_PROGRAM).
#include <doctest/doctest.h>

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <nlohmann/json.hpp>
#include <segml/io/safetensors.hpp>
#include <segml/train/trainer.hpp>

#include "support.hpp"

using namespace segml;

namespace {

std::string quote(const std::string& s) { return "'" + s + "'"; }

}  // namespace

TEST_CASE("finetune_sidewalk: one SGD step (lr 1, no augmentation) == torch.optim.SGD on the reference model") {
  const test::Fixture fx("finetune_one_step");
  const std::string data = std::string(SEGML_TEST_DATA_DIR) + "/finetune_one_step";
  test::TempDir out("finetune_one_step");
  std::string cmd = quote(SEGML_FINETUNE_PROGRAM) + " --model " + quote(data + "/init") + " --data " + quote(data) +
                    " --output " + quote(out.file()) + " --threads 1";
  for (const auto& a : nlohmann::json::parse(fx.file().metadata().at("args"))) cmd.append(" ").append(quote(a.get<std::string>()));
  cmd.append(" --max_grad_norm 0");  // the reference step is torch.optim.SGD's without clipping (HF's default clips at 1.0)
  cmd.append(" > ").append(quote(out.file("stdout.txt"))).append(" 2>&1");
  MESSAGE("running: " << cmd);
  const int status = std::system(cmd.c_str());
  if (status != 0) {
    std::ifstream log(out.file("stdout.txt"));
    FAIL("finetune_sidewalk exited with status " << status << ":\n" << std::string(std::istreambuf_iterator<char>(log), {}));
  }

  std::ifstream log(out.file("train_log.jsonl"));
  std::string first;
  REQUIRE(std::getline(log, first));
  const double got_loss = nlohmann::json::parse(first).at("loss").get<double>();
  const double want_loss = fx.get<double>("train.loss").data()[0];
  MESSAGE("loss: " << got_loss << " vs " << want_loss);
  CHECK(std::abs(got_loss - want_loss) <= 1e-5 * std::abs(want_loss));

  const safetensors::File saved(out.file("model.safetensors"));
  int compared = 0;
  double worst = 0;
  for (const std::string& name : fx.file().names()) {
    if (name.rfind("sgd.", 0) != 0) continue;
    const std::string key = name.substr(4);
    REQUIRE_MESSAGE(saved.contains(key), "model.safetensors has no " << key);
    const double d = test::max_abs_diff(saved.get<float>(key), fx.get(name));
    worst = std::max(worst, d);
    CHECK_MESSAGE(d <= 1e-6, key << ": max abs diff " << d);
    ++compared;
  }
  MESSAGE(compared << " parameters compared, worst max abs diff " << worst);
  CHECK(compared == 146 - 3);  // every parameter: the tiny model's state dict minus BatchNorm's 3 buffers
  test::compare("running_mean", saved.get<float>("decode_head.batch_norm.running_mean"), fx.get("train.running_mean"), 1e-5);
  test::compare("running_var", saved.get<float>("decode_head.batch_norm.running_var"), fx.get("train.running_var"), 1e-5);
}

// ---- Resuming, as a user drives it from the command line ----------------------------------------
// The tiny checkpoint and two 45x61 images of finetune_one_step, 32x32 augmented crops, one thread:
// a step takes milliseconds, so every run below is a fraction of a second.

namespace {

namespace fs = std::filesystem;

struct Outcome {
  int status = -1;     // exit code, or 128 + signal
  std::string output;  // stdout and stderr
};

std::vector<std::string> tiny_run(const std::string& out, int64_t steps) {
  const std::string data = std::string(SEGML_TEST_DATA_DIR) + "/finetune_one_step";
  return {"--model", data + "/init", "--data", data, "--output", out, "--steps", std::to_string(steps), "--threads", "1",
          "--workers", "1", "--batch-size", "1", "--crop-size", "32", "--lr", "3e-3"};
}

// Starts the program with `args`, output to `log`; `pause_ms` > 0 sets the test-only pause inside saves.
pid_t start(const std::vector<std::string>& args, const std::string& log, int pause_ms = 0) {
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) ::dup2(fd, 1), ::dup2(fd, 2);
    if (pause_ms > 0) ::setenv("SEGML_TEST_SAVE_PAUSE_MS", std::to_string(pause_ms).c_str(), 1);
    std::vector<char*> argv{const_cast<char*>(SEGML_FINETUNE_PROGRAM)};
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execv(SEGML_FINETUNE_PROGRAM, argv.data());
    ::_exit(127);
  }
  return pid;
}

Outcome finish(pid_t pid, const std::string& log) {
  int st = 0;
  REQUIRE(::waitpid(pid, &st, 0) == pid);
  std::ifstream in(log);
  return {WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st), std::string(std::istreambuf_iterator<char>(in), {})};
}

// Waits (up to 20 s) until the program's output contains `text`, or it has exited.
void wait_for_text(const std::string& log, const std::string& text, pid_t pid) {
  for (int i = 0; i < 20000; ++i) {
    std::ifstream in(log);
    if (std::string(std::istreambuf_iterator<char>(in), {}).find(text) != std::string::npos) return;
    siginfo_t info{};
    if (::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG | WNOWAIT) == 0 && info.si_pid == pid) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

Outcome run(const std::vector<std::string>& args, const std::string& log) { return finish(start(args, log), log); }

std::vector<std::string> operator+(std::vector<std::string> a, const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// The step records of a train_log.jsonl: (step, loss), in file order.
std::vector<std::pair<int64_t, double>> logged_steps(const fs::path& log) {
  std::vector<std::pair<int64_t, double>> out;
  std::ifstream in(log);
  for (std::string line; std::getline(in, line);) {
    const nlohmann::json j = nlohmann::json::parse(line);
    if (j.contains("loss")) out.emplace_back(j.at("step").get<int64_t>(), j.at("loss").get<double>());
  }
  return out;
}

// Every tensor of two safetensors files has the same bytes (names, dtypes, shapes and data).
void check_same_tensors(const fs::path& a, const fs::path& b) {
  const safetensors::File fa(a.string()), fb(b.string());
  REQUIRE(fa.names() == fb.names());
  int differ = 0;
  for (const std::string& n : fa.names()) {
    const Tensor<double> ta = fa.get<double>(n), tb = fb.get<double>(n);
    const bool same = ta.shape() == tb.shape() &&
                      std::memcmp(ta.data(), tb.data(), sizeof(double) * static_cast<size_t>(ta.numel())) == 0;
    if (!same) {
      ++differ;
      MESSAGE(n << " differs: max abs diff " << test::max_abs_diff(ta, tb));
    }
  }
  MESSAGE(fa.names().size() << " tensors compared, " << differ << " differ");
  CHECK(differ == 0);
}

// Strictly increasing steps 1..n and, when `want` is given, the same losses bit for bit.
void check_log(const fs::path& log, int64_t n, const std::vector<std::pair<int64_t, double>>* want = nullptr) {
  const auto got = logged_steps(log);
  REQUIRE_MESSAGE(got.size() == static_cast<size_t>(n), log.string() << " has " << got.size() << " step records, expected " << n);
  for (size_t i = 0; i < got.size(); ++i) {
    CHECK_MESSAGE(got[i].first == static_cast<int64_t>(i) + 1, "record " << i << " is step " << got[i].first);
    if (want) CHECK_MESSAGE(got[i].second == (*want)[i].second, "step " << i + 1 << ": loss " << got[i].second << " vs " << (*want)[i].second);
  }
}

// A snapshot of every file under a folder (path -> bytes), to prove it was left untouched.
std::map<std::string, std::string> snapshot(const fs::path& dir) {
  std::map<std::string, std::string> files;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file()) {
      std::ifstream in(e.path(), std::ios::binary);
      files[fs::relative(e.path(), dir).string()] = std::string(std::istreambuf_iterator<char>(in), {});
    }
  return files;
}

// The uninterrupted reference: `steps` steps saved every `save_every`, into a folder of `tmp`.
fs::path reference_run(const test::TempDir& tmp, int64_t steps, int64_t save_every) {
  const fs::path out = tmp.path / "uninterrupted";
  const Outcome r = run(tiny_run(out.string(), steps) + std::vector<std::string>{"--save-every", std::to_string(save_every)},
                        tmp.file("uninterrupted.txt"));
  REQUIRE_MESSAGE(r.status == 0, r.output);
  return out;
}

}  // namespace

TEST_CASE("finetune_sidewalk: SIGKILL at 24 random instants (most inside saves) and resumed each time == uninterrupted run") {
  test::TempDir tmp("resume_kills");
  const int64_t steps = 80;  // enough that 24 kills cannot outrun the training
  const fs::path ref = reference_run(tmp, steps, 2);
  const fs::path out = tmp.path / "killed";
  std::mt19937 rng(20261207);
  std::uniform_int_distribution<int> delay_ms(0, 120);
  int kills = 0, inside_saves = 0, resumed = 0;
  std::string starts;  // the newest checkpoint at each resume
  const auto t0 = std::chrono::steady_clock::now();
  for (int attempt = 0;; ++attempt) {
    const bool has_state = !train::list_checkpoints(out).empty();
    const std::vector<std::string> args =
        has_state ? std::vector<std::string>{"--resume", out.string()}
                  : tiny_run(out.string(), steps) + std::vector<std::string>{"--save-every", "2"};
    resumed += has_state;
    if (has_state) starts.append(" ").append(std::to_string(train::list_checkpoints(out).back().step));
    const std::string log = tmp.file("attempt" + std::to_string(attempt) + ".txt");
    const pid_t pid = start(args, log, /*pause_ms=*/10);  // >= 50 ms per save: 24 kills cannot outrun 40 saves
    if (kills < 24) {
      // One attempt in four dies during start-up (cleaning, rewriting the log); the others at a random
      // instant after their first step (the program flushes its banner then), so each can progress.
      if (rng() % 4 != 0) wait_for_text(log, "Ctrl-C stops", pid);
      std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms(rng)));
      ::kill(pid, SIGKILL);
    }
    const Outcome r = finish(pid, log);
    if (r.status == 128 + SIGKILL) {
      ++kills;
      for (const auto& e : fs::directory_iterator(out))
        if (e.path().filename().string().rfind(".checkpoint-", 0) == 0) {
          ++inside_saves;
          break;
        }
      // Whatever the instant, every published checkpoint is one complete state.
      for (const train::CheckpointRef& c : train::list_checkpoints(out)) CHECK_NOTHROW(train::verify_state(c.dir));
      continue;
    }
    REQUIRE_MESSAGE(r.status == 0, "attempt " << attempt << ":\n" << r.output);
    break;  // finished
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  MESSAGE(kills << " kills (" << inside_saves << " left a save unfinished), " << resumed << " resumes (from steps" << starts << "), " << seconds << " s");
  CHECK(kills >= 20);
  CHECK(inside_saves >= 5);
  CHECK(resumed >= 10);
  check_same_tensors(out / "model.safetensors", ref / "model.safetensors");
  check_same_tensors(out / ("checkpoint-" + std::to_string(steps)) / "optimizer.safetensors",
                     ref / ("checkpoint-" + std::to_string(steps)) / "optimizer.safetensors");
  const auto want = logged_steps(ref / "train_log.jsonl");
  check_log(out / "train_log.jsonl", steps, &want);
  for (const auto& e : fs::directory_iterator(out))  // no temporary survives the final run
    CHECK_MESSAGE(e.path().filename().string().find(".tmp") == std::string::npos, e.path());
}

TEST_CASE("finetune_sidewalk: --resume RUN/checkpoint-N --output NEW continues bit-identically and leaves RUN untouched") {
  test::TempDir tmp("resume_checkpoint");
  const fs::path ref = reference_run(tmp, 8, 2);
  const std::map<std::string, std::string> before = snapshot(ref);
  const fs::path other = tmp.path / "continued";
  const Outcome r = run({"--resume", (ref / "checkpoint-4").string(), "--output", other.string()}, tmp.file("continued.txt"));
  REQUIRE_MESSAGE(r.status == 0, r.output);
  MESSAGE(r.output);
  CHECK(r.output.find("at step 4") != std::string::npos);
  CHECK(r.output.find(other.string()) != std::string::npos);  // says where it continues
  CHECK(snapshot(ref) == before);
  check_same_tensors(other / "model.safetensors", ref / "model.safetensors");
  const auto want = logged_steps(ref / "train_log.jsonl");
  check_log(other / "train_log.jsonl", 8, &want);  // starts with the source's records up to step 4
  CHECK(fs::exists(other / "training_curves.svg"));
  CHECK(fs::exists(other / "checkpoint-8"));
  CHECK_FALSE(fs::exists(other / "checkpoint-4"));  // not copied: the source keeps it
}

TEST_CASE("finetune_sidewalk: a finished run is not retrained and --steps extends it in place") {
  test::TempDir tmp("resume_extend");
  const fs::path run_dir = reference_run(tmp, 6, 3);
  const std::map<std::string, std::string> finished = snapshot(run_dir);
  const Outcome again = run({"--resume", run_dir.string()}, tmp.file("again.txt"));
  REQUIRE_MESSAGE(again.status == 0, again.output);
  CHECK(again.output.find("complete at step 6") != std::string::npos);
  CHECK(snapshot(run_dir) == finished);  // nothing retrained, nothing rewritten

  const Outcome more = run({"--resume", run_dir.string(), "--steps", "9"}, tmp.file("more.txt"));
  REQUIRE_MESSAGE(more.status == 0, more.output);
  CHECK(more.output.find("--steps: 9") != std::string::npos);  // the override is printed
  check_log(run_dir / "train_log.jsonl", 9);
  const auto got = logged_steps(run_dir / "train_log.jsonl");
  CHECK(fs::exists(run_dir / "checkpoint-9"));
  CHECK(train::verify_state(run_dir / "checkpoint-9") == 9);
  CHECK(safetensors::File((run_dir / "model.safetensors").string()).metadata().at("step") == "9");
  // The first 6 steps are the finished run's own records.
  const std::string log6 = finished.at("train_log.jsonl");
  std::istringstream in6(log6);
  int64_t n = 0;
  for (std::string line; std::getline(in6, line);) {
    const nlohmann::json j = nlohmann::json::parse(line);
    if (!j.contains("loss")) continue;
    REQUIRE(n < static_cast<int64_t>(got.size()));
    CHECK(got[static_cast<size_t>(n)].second == j.at("loss").get<double>());
    ++n;
  }
  CHECK(n == 6);
}

TEST_CASE("finetune_sidewalk: --resume refuses flags that change the finished steps and prints the ones it takes") {
  test::TempDir tmp("resume_refuse");
  const fs::path run_dir = reference_run(tmp, 4, 2);
  const std::map<std::string, std::string> before = snapshot(run_dir);
  for (const std::vector<std::string>& flags : std::vector<std::vector<std::string>>{
           {"--lr", "0.01"}, {"--batch-size", "2"}, {"--seed", "5"}, {"--optimizer", "sgd"}, {"--crop-size", "48"},
           {"--no-augment"}, {"--grad-accum", "2"}}) {
    const Outcome r = run(std::vector<std::string>{"--resume", (run_dir / "checkpoint-2").string()} + flags, tmp.file("refused.txt"));
    INFO(flags[0] << ": " << r.output);
    CHECK(r.status != 0);
    CHECK(r.output.find(flags[0]) != std::string::npos);
    CHECK(r.output.find("differs from the resumed run") != std::string::npos);
  }
  CHECK(snapshot(run_dir) == before);
  // The same value as saved is no change: accepted.
  const Outcome same = run({"--resume", run_dir.string(), "--lr", "3e-3", "--steps", "5", "--threads", "2"}, tmp.file("same.txt"));
  CHECK_MESSAGE(same.status == 0, same.output);
  CHECK(same.output.find("--threads 2: warning") != std::string::npos);
}

TEST_CASE("finetune_sidewalk: --save-total-limit keeps the newest checkpoints and the last step always has one") {
  test::TempDir tmp("resume_limit");
  const fs::path out = tmp.path / "run";
  const Outcome r = run(tiny_run(out.string(), 7) + std::vector<std::string>{"--save-every", "2", "--save-total-limit", "2"},
                        tmp.file("limit.txt"));
  REQUIRE_MESSAGE(r.status == 0, r.output);
  std::vector<int64_t> steps;
  for (const train::CheckpointRef& c : train::list_checkpoints(out)) steps.push_back(c.step);
  CHECK(steps == std::vector<int64_t>{6, 7});
  CHECK(train::verify_state(out / "checkpoint-7") == 7);
}

TEST_CASE("finetune_sidewalk: a checkpoint mixing files of two saves is refused with a clear error") {
  test::TempDir tmp("resume_mixed");
  const fs::path run_dir = reference_run(tmp, 4, 2);
  fs::copy(run_dir / "checkpoint-4", tmp.path / "final_state");
  // Step 4's weights in step 2's folder.
  fs::create_directories(tmp.path / "mixed");
  fs::create_directories(tmp.path / "renamed");
  fs::copy(run_dir / "checkpoint-2", tmp.path / "mixed" / "checkpoint-2");
  fs::copy_file(run_dir / "checkpoint-4" / "model.safetensors", tmp.path / "mixed" / "checkpoint-2" / "model.safetensors",
                fs::copy_options::overwrite_existing);
  const Outcome mixed = run({"--resume", (tmp.path / "mixed" / "checkpoint-2").string()}, tmp.file("mixed.txt"));
  CHECK_MESSAGE(mixed.status != 0, mixed.output);
  CHECK_MESSAGE(mixed.output.find("trainer_state.json is at step 2 but model.safetensors was saved at step 4") != std::string::npos,
                mixed.output);
  // A whole state under another step's name.
  fs::copy(run_dir / "checkpoint-2", tmp.path / "renamed" / "checkpoint-3");
  const Outcome renamed = run({"--resume", (tmp.path / "renamed" / "checkpoint-3").string()}, tmp.file("renamed.txt"));
  CHECK_MESSAGE(renamed.status != 0, renamed.output);
  CHECK_MESSAGE(renamed.output.find("named for step 3") != std::string::npos, renamed.output);
  // From the run folder, a mixed newest checkpoint is passed over (and said so) for the newest complete one.
  fs::copy_file(run_dir / "checkpoint-2" / "optimizer.safetensors", run_dir / "checkpoint-4" / "optimizer.safetensors",
                fs::copy_options::overwrite_existing);
  const Outcome latest = run({"--resume", run_dir.string()}, tmp.file("latest.txt"));
  REQUIRE_MESSAGE(latest.status == 0, latest.output);
  CHECK_MESSAGE(latest.output.find("at step 2") != std::string::npos, latest.output);
  CHECK_MESSAGE(latest.output.find("optimizer.safetensors was saved at step 2") != std::string::npos, latest.output);
  check_same_tensors(run_dir / "checkpoint-4" / "optimizer.safetensors", tmp.path / "final_state" / "optimizer.safetensors");
  check_log(run_dir / "train_log.jsonl", 4);
}

TEST_CASE("finetune_sidewalk: flags out of range or outside their list are refused naming the flag, the value and what is allowed") {
  test::TempDir tmp("flags");
  const std::string out = tmp.file("run");
  for (const std::vector<std::string>& flags : std::vector<std::vector<std::string>>{
           {"--steps", "-5"}, {"--epochs", "-1"}, {"--lr", "nan"}, {"--lr", "-1"}, {"--momentum", "nan"},
           {"--weight-decay", "-0.1"}, {"--clip-grad-norm", "-1"}, {"--warmup-steps", "-3"}, {"--save-every", "-1"},
           {"--save-total-limit", "-1"}, {"--subset", "-2"}, {"--eval-every", "-4"}, {"--threads", "0"},
           {"--workers", "-1"}, {"--batch-size", "0"}, {"--grad-accum", "0"}, {"--head-lr-mult", "0"},
           {"--crop-size", "100000"}, {"--crop-size", "8x8"}, {"--seed", "-1"}, {"--max-pixels", "0"},
           // HF's names get the same checks.
           {"--learning_rate", "nan"}, {"--num_train_epochs", "-0.5"}, {"--max_steps", "-2"}, {"--max_grad_norm", "-1"},
           {"--warmup_ratio", "1.5"}, {"--warmup_steps", "-1"}, {"--per_device_train_batch_size", "0"},
           {"--per_device_eval_batch_size", "0"}, {"--gradient_accumulation_steps", "0"}, {"--logging_steps", "0"},
           {"--eval_steps", "-1"}, {"--save_steps", "-1"}, {"--save_total_limit", "-1"}, {"--dataloader_num_workers", "-1"},
           {"--adam_beta1", "1.5"}, {"--adam_epsilon", "0"}, {"--weight_decay", "inf"},
           // Names outside HF's lists are refused with the list.
           {"--lr_scheduler_type", "cosine_with_restarts"}, {"--schedule", "step"}, {"--metric_for_best_model", "bleu"}}) {
    // Otherwise a valid one-step run, so an ignored flag would train and exit 0.
    std::vector<std::string> args = tiny_run(out, 1);
    args.insert(args.end(), flags.begin(), flags.end());
    const Outcome r = run(args, tmp.file("flag.txt"));
    INFO(flags[0] << " " << flags[1] << ": " << r.output);
    CHECK(r.status != 0);
    CHECK(r.output.find(flags[0]) != std::string::npos);
    CHECK(r.output.find(flags[1]) != std::string::npos);
    fs::remove_all(out);
  }
}

TEST_CASE("finetune_sidewalk: a dataset image above --max-pixels is refused from its header, naming the file and the limit") {
  test::TempDir tmp("max_pixels");
  std::vector<std::string> args = tiny_run(tmp.file("run"), 1);
  args.insert(args.end(), {"--max-pixels", "1000"});  // the images are 45x61 = 2745 pixels
  const Outcome r = run(args, tmp.file("out.txt"));
  INFO(r.output);
  CHECK(r.status != 0);
  CHECK(r.output.find(".png") != std::string::npos);
  CHECK(r.output.find("above the limit of 1000 pixels") != std::string::npos);
  CHECK(!fs::exists(tmp.path / "run" / "model.safetensors"));
}

// ---- HF TrainingArguments' names ------------------------------------------------------------------

namespace {

// For every option with an alias: two valid values, different from each other and from the default
// (the tiny run stays a few steps). A row added to the table with an alias must be added here.
const std::map<std::string, std::pair<std::string, std::string>>& alias_values() {
  static const std::map<std::string, std::pair<std::string, std::string>> v = {
      {"output_dir", {"", ""}},  // filled per test (a folder)
      {"learning_rate", {"0.002", "0.001"}},
      {"num_train_epochs", {"3", "4"}},
      {"max_steps", {"2", "3"}},
      {"per_device_train_batch_size", {"1", "2"}},
      {"gradient_accumulation_steps", {"2", "3"}},
      {"lr_scheduler_type", {"cosine", "polynomial"}},
      {"warmup_steps", {"1", "2"}},
      {"weight_decay", {"0.01", "0.02"}},
      {"max_grad_norm", {"0.5", "0.25"}},
      {"eval_steps", {"1", "2"}},
      {"save_steps", {"1", "2"}},
      {"save_total_limit", {"3", "4"}},
      {"dataloader_num_workers", {"1", "2"}},
  };
  return v;
}

const train::TrainOptions& default_options() {
  static const train::TrainOptions o;
  return o;
}

std::vector<std::string> tiny_base() {
  const std::string data = std::string(SEGML_TEST_DATA_DIR) + "/finetune_one_step";
  return {"--model", data + "/init", "--data", data, "--threads", "1", "--crop-size", "32"};
}

nlohmann::json saved_options(const fs::path& run_dir) {
  const train::CheckpointRef last = train::list_checkpoints(run_dir).back();
  std::ifstream in(last.dir / "trainer_state.json");
  return nlohmann::json::parse(in).at("segml").at("options");
}

}  // namespace

TEST_CASE("finetune_sidewalk: --help lists HF TrainingArguments' names first, then segml's flags, then the aliases") {
  test::TempDir tmp("help");
  const Outcome r = run({"--help"}, tmp.file("help.txt"));
  REQUIRE_MESSAGE(r.status == 0, r.output);
  const std::string& h = r.output;
  const size_t hf = h.find("HuggingFace TrainingArguments"), own = h.find("\nsegml"), aliases = h.find("Aliases");
  REQUIRE(hf != std::string::npos);
  REQUIRE(own != std::string::npos);
  REQUIRE(aliases != std::string::npos);
  CHECK(hf < own);
  CHECK(own < aliases);
  int hf_names = 0;
  train::for_each_option(default_options(), [&](const train::OptionInfo& info, const auto&) {
    if (!info.cli) return;
    const size_t at = h.find("--" + std::string(info.name) + " ");
    CHECK_MESSAGE(at != std::string::npos, "--help lacks --" << info.name);
    if (info.hf) {
      ++hf_names;
      CHECK_MESSAGE((at > hf && at < own), "--" << info.name << " is not in the HF group");
    }
    if (*info.alias) {
      const size_t a = h.find("--" + std::string(info.alias) + " ");
      CHECK_MESSAGE(a > aliases, "--" << info.alias << " is not among the aliases");
      CHECK_MESSAGE(h.find("(alias: --" + std::string(info.alias) + ")") != std::string::npos, "no alias note for " << info.name);
    }
  });
  CHECK(hf_names >= 20);
  CHECK(h.find("--resume_from_checkpoint") < own);
  CHECK(h.find("Default 1.0 like HF") != std::string::npos);  // max_grad_norm's change is said
}

TEST_CASE("finetune_sidewalk: each HF name sets the same field as its alias, and both with different values are refused") {
  test::TempDir tmp("hf_names");
  std::vector<std::string> by_name = tiny_base(), by_alias = tiny_base();
  const fs::path a = tmp.path / "by_name", b = tmp.path / "by_alias";
  int rows = 0;
  train::for_each_option(default_options(), [&](const train::OptionInfo& info, const auto&) {
    if (!info.cli || !*info.alias) return;
    ++rows;
    REQUIRE_MESSAGE(alias_values().count(info.name), "no test values for --" << info.name);
    std::string v = alias_values().at(info.name).first;
    by_name.insert(by_name.end(), {"--" + std::string(info.name), v.empty() ? a.string() : v});
    by_alias.insert(by_alias.end(), {"--" + std::string(info.alias), v.empty() ? b.string() : v});
  });
  CHECK(rows == static_cast<int>(alias_values().size()));
  const Outcome ra = run(by_name, tmp.file("by_name.txt")), rb = run(by_alias, tmp.file("by_alias.txt"));
  REQUIRE_MESSAGE(ra.status == 0, ra.output);
  REQUIRE_MESSAGE(rb.status == 0, rb.output);
  CHECK(ra.output.find("Gradient clipping: max_grad_norm 0.5") != std::string::npos);
  nlohmann::json oa = saved_options(a), ob = saved_options(b);
  CHECK(oa.at("output_dir") == a.string());
  CHECK(ob.at("output_dir") == b.string());
  oa.erase("output_dir"), ob.erase("output_dir");
  CHECK(oa == ob);
  const nlohmann::json defaults = train::TrainOptions().to_json();
  for (const auto& [name, values] : alias_values())
    if (name != "output_dir") CHECK_MESSAGE(oa.at(name) != defaults.at(name), name << " kept its default");
  check_same_tensors(a / "model.safetensors", b / "model.safetensors");
  CHECK(fs::exists(a / "README.md"));
  CHECK(fs::exists(a / "sample_overlay.png"));

  // Conflicts: refused before anything is written, naming both flags.
  train::for_each_option(default_options(), [&](const train::OptionInfo& info, const auto&) {
    if (!info.cli || !*info.alias) return;
    const auto& [v1, v2] = alias_values().at(info.name);
    const fs::path c = tmp.path / "conflict";
    std::vector<std::string> args = tiny_base();
    args.insert(args.end(), {"--" + std::string(info.name), v1.empty() ? c.string() : v1, "--" + std::string(info.alias),
                             v2.empty() ? (tmp.path / "other").string() : v2});
    const Outcome r = run(args, tmp.file("conflict.txt"));
    INFO(info.name << ": " << r.output);
    CHECK(r.status != 0);
    CHECK(r.output.find("--" + std::string(info.name) + " ") != std::string::npos);
    CHECK(r.output.find("alias --" + std::string(info.alias) + " ") != std::string::npos);
    CHECK(r.output.find("different values") != std::string::npos);
    CHECK_FALSE(fs::exists(c));
  });
  // The same value spelled two ways is no conflict; the default clips at 1.0 and says so.
  const Outcome same = run(tiny_base() + std::vector<std::string>{"--output_dir", (tmp.path / "same").string(), "--max_steps", "1",
                                                                  "--lr", "3e-3", "--learning_rate", "0.003"},
                           tmp.file("same.txt"));
  CHECK_MESSAGE(same.status == 0, same.output);
  CHECK(same.output.find("Gradient clipping: max_grad_norm 1 (HF's default 1.0") != std::string::npos);
}

TEST_CASE("finetune_sidewalk: --resume_from_checkpoint true continues from --output_dir's latest checkpoint") {
  test::TempDir tmp("resume_true");
  const fs::path out = tmp.path / "run";
  const std::vector<std::string> first = tiny_base() + std::vector<std::string>{"--output_dir", out.string(), "--max_steps", "2",
                                                                                "--save_steps", "1"};
  const Outcome r1 = run(first, tmp.file("first.txt"));
  REQUIRE_MESSAGE(r1.status == 0, r1.output);
  const Outcome r2 = run({"--resume_from_checkpoint", "true", "--output_dir", out.string(), "--max_steps", "3"}, tmp.file("second.txt"));
  REQUIRE_MESSAGE(r2.status == 0, r2.output);
  CHECK(r2.output.find("at step 2") != std::string::npos);
  CHECK(train::verify_state(out / "checkpoint-3") == 3);
  check_log(out / "train_log.jsonl", 3);
  // --resume and --resume_from_checkpoint together are refused.
  const Outcome both = run({"--resume_from_checkpoint", out.string(), "--resume", out.string()}, tmp.file("both.txt"));
  CHECK(both.status != 0);
  CHECK(both.output.find("--resume_from_checkpoint and its alias --resume") != std::string::npos);
}
