// README.md's library snippet compiles and runs: the code between the markers below is the
// README's ```cpp block (after its #include line), checked line by line, and run on a small
// checkpoint saved under the README's folder name, in a fresh folder.
#include <doctest/doctest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include <segml/segformer.hpp>

#include "support.hpp"

namespace {

// The lines of `text` after the one where `begin` ends, up to the line containing `end`.
std::string between(const std::string& text, const std::string& begin, const std::string& end) {
  const size_t b = text.find(begin);
  REQUIRE_MESSAGE(b != std::string::npos, begin);
  const size_t from = text.find('\n', b + begin.size() - 1) + 1;
  const size_t e = text.find(end, from);
  REQUIRE_MESSAGE(e != std::string::npos, end);
  return text.substr(from, text.rfind('\n', e) + 1 - from);
}

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  REQUIRE_MESSAGE(in.good(), path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The snippet, as written in the README (indented by two spaces here).
void readme_snippet() {
  // README snippet begin
  // Run a model: load, preprocess, the inference engine, post-process, an overlay with its legend.
  auto model = segml::from_pretrained("weights/segformer-b0-finetuned-ade-512-512");
  auto processor = segml::SegformerImageProcessor::from_pretrained("weights/segformer-b0-finetuned-ade-512-512");
  segml::SegformerInference engine(model);                  // the way to run a model: no autograd, folded decode head
  segml::Image image = segml::load_image("street.jpg");
  segml::Tensor<float> logits = engine.run(processor.preprocess(image));  // (1, num_labels, H/4, W/4)
  segml::Tensor<int64_t> labels = processor.post_process_semantic_segmentation(logits, {{image.height, image.width}})[0];
  std::vector<segml::Rgb> colors = segml::class_colors(model.config.id2label);  // by class name (Cityscapes, ADE20K, CamVid)
  segml::save_png("overlay.png", segml::add_legend(segml::overlay(image, labels, 0.5, colors),
                                                   segml::class_histogram(labels), model.config.id2label, colors));

  // The autograd model is for training and for looking inside (hidden states, loss, gradients):
  segml::Tensor<int64_t> target = processor.preprocess_labels(segml::load_label_map("street_labels.png"));
  auto out = model.forward(segml::Var<float>(processor.preprocess(image)), &target);
  out.loss.backward();
  // README snippet end
  CHECK(std::isfinite(out.loss.data().data()[0]));
}

}  // namespace

TEST_CASE("README: the library snippet is the code compiled here, and it runs") {
  const std::string readme = read_text(std::string(SEGML_FIXTURE_DIR) + "/../../README.md");
  const std::string block = between(readme, "```cpp\n#include <segml/segformer.hpp>\n", "```");
  std::string mine;
  std::istringstream lines(between(read_text(__FILE__), "// README snippet begin", "// README snippet end"));
  for (std::string line; std::getline(lines, line);) mine += (line.size() >= 2 ? line.substr(2) : line) + "\n";
  CHECK_MESSAGE("\n" + mine == block, "README.md's snippet and tests/test_readme_snippet.cpp differ:\n" << block);

  segml::test::TempDir dir("readme_snippet");
  segml::SegformerConfig c = segml::test::tiny_segformer_config();
  c.set_labels({"road", "sidewalk", "sky"});
  segml::SegformerForSemanticSegmentation<float> model(c, 1);
  segml::SegformerImageProcessor p;
  p.height = p.width = 64;
  const nlohmann::json pre = p.to_json();
  segml::save_pretrained(model, dir.file("weights/segformer-b0-finetuned-ade-512-512"), &pre);
  std::filesystem::copy_file(std::string(SEGML_FIXTURE_DIR) + "/../data/street_375x500.png", dir.file("street.jpg"));
  segml::Image labels(375, 500, 1);
  for (int64_t i = 0; i < labels.height * labels.width; ++i) labels.data[size_t(i)] = uint8_t(i / (labels.width * 125));
  segml::save_png(dir.file("street_labels.png"), labels);
  const std::filesystem::path here = std::filesystem::current_path();
  REQUIRE(::chdir(dir.file().c_str()) == 0);
  readme_snippet();
  REQUIRE(::chdir(here.c_str()) == 0);
  const segml::Image overlay = segml::load_image(dir.file("overlay.png"));
  CHECK(overlay.width > 500);  // the image and its legend panel
  CHECK(overlay.height == 375);
}
