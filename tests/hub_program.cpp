// examples/segment run as a program with a hub id as --model, against the mock hub of
// tests/mock_hub.hpp on 127.0.0.1 (HF_ENDPOINT and HF_HUB_CACHE point the child process at it):
// the id is downloaded into the cache and gives the same mask as the same files in a local folder;
// --revision picks a branch; a second run works offline with the server stopped; an unknown repo
// is a clear error. Built with the examples when cpp-httplib is found (SEGML_SEGMENT_PROGRAM is
// the program's path).
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include <segml/io/image.hpp>

#include "mock_hub.hpp"
#include "support.hpp"

using namespace segml;
namespace fs = std::filesystem;

namespace {

const std::string kProgram = SEGML_SEGMENT_PROGRAM;

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// A 40 x 30 RGB picture with some structure.
void write_image(const std::string& path) {
  Image img(30, 40, 3);
  for (int64_t y = 0; y < 30; ++y)
    for (int64_t x = 0; x < 40; ++x)
      for (int64_t k = 0; k < 3; ++k)
        img.data[size_t((y * 40 + x) * 3 + k)] = static_cast<uint8_t>((x * 5 + y * 3 * (k + 1) + (x > 20 ? 120 : 0)) % 256);
  save_png(path, img);
}

}  // namespace

TEST_CASE("segment --model org/name: downloaded from the hub, same mask as the local folder, --revision, then offline") {
  test::MockHub hub;
  test::IsolatedHub iso(hub.endpoint());
  const auto main_files = test::tiny_segformer_repo({"sky", "road", "car"}, false, 3);
  const auto v1_files = test::tiny_segformer_repo({"a", "b", "c", "d", "e"}, true, 4);
  hub.add("org/street", main_files);
  hub.add("org/street", v1_files, "v1");
  const std::string dir = iso.dir.file("work");
  fs::create_directories(dir + "/local");
  for (const auto& [name, bytes] : main_files) std::ofstream(dir + "/local/" + name, std::ios::binary) << bytes;
  write_image(dir + "/street.png");

  const test::ProgramRun local = test::run_program(kProgram, "--model local --image street.png --output o0.png --mask m0.png", dir);
  REQUIRE_MESSAGE(local.status == 0, local.output);
  const test::ProgramRun remote = test::run_program(kProgram, "--model org/street --image street.png --output o1.png --mask m1.png", dir);
  REQUIRE_MESSAGE(remote.status == 0, remote.output);
  CHECK_MESSAGE(remote.output.find("model org/street: 3 labels") != std::string::npos, remote.output);
  CHECK_MESSAGE(remote.output.find("model.safetensors:") != std::string::npos, remote.output);  // the progress line
  CHECK(read_bytes(dir + "/m1.png") == read_bytes(dir + "/m0.png"));
  const std::string main_commit = test::commit_of("org/street@main");
  CHECK(fs::is_symlink(fs::path(iso.dir.file("cache")) / "models--org--street" / "snapshots" / main_commit / "model.safetensors"));

  const test::ProgramRun branch = test::run_program(kProgram, "--model org/street --revision v1 --image street.png --mask m2.png", dir);
  REQUIRE_MESSAGE(branch.status == 0, branch.output);
  CHECK_MESSAGE(branch.output.find("model org/street: 5 labels") != std::string::npos, branch.output);

  const test::ProgramRun absent = test::run_program(kProgram, "--model org/absent --image street.png", dir);
  CHECK(absent.status != 0);
  CHECK_MESSAGE(absent.output.find("repository 'org/absent' not found (HTTP 404 for " + hub.endpoint() +
                                   "/org/absent/resolve/main/config.json") != std::string::npos,
                absent.output);

  hub.stop();
  test::ScopedEnv off("HF_HUB_OFFLINE", "1");
  const test::ProgramRun offline = test::run_program(kProgram, "--model org/street --image street.png --mask m3.png", dir);
  REQUIRE_MESSAGE(offline.status == 0, offline.output);
  CHECK(read_bytes(dir + "/m3.png") == read_bytes(dir + "/m0.png"));
  const test::ProgramRun miss = test::run_program(kProgram, "--model org/other --image street.png", dir);
  CHECK(miss.status != 0);
  CHECK_MESSAGE(miss.output.find("'org/other' (revision 'main') is not available offline") != std::string::npos, miss.output);
}
