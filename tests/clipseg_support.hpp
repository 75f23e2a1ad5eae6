// tests/clipseg_support.hpp: reduced HF-layout CLIPSeg folders for the tests of the programs.
//
// write_tiny_clipseg_folder(folder, options) writes what `huggingface-cli download` gives for a
// CLIPSeg checkpoint, at toy sizes: config.json, model.safetensors (random weights; the head scaled up
// so that the logits spread around 0 and several prompts win somewhere), preprocessor_config.json
// (ViTImageProcessor, size height x width) and a CLIP tokenizer's vocab.json + merges.txt whose
// vocabulary is the letters with and without "</w>", '.', merges making "road</w>" and "car</w>",
// and the two specials (other characters are unknown to it).
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <segml/models/clipseg/pretrained_clipseg.hpp>

namespace segml::test {

struct TinyClipseg {
  int64_t height = 64, width = 64;      // the processor's size
  int64_t max_position_embeddings = 16;  // the text model's context
  int64_t vision_layers = 4;
  std::vector<int64_t> extract_layers{1, 2, 3};
  uint64_t seed = 3;
};

inline std::string write_tiny_clipseg_folder(const std::string& folder, const TinyClipseg& o = {}) {
  CLIPSegConfig c = CLIPSegConfig::rd64_refined();
  c.text_config.vocab_size = 100;
  c.text_config.hidden_size = 32;
  c.text_config.intermediate_size = 64;
  c.text_config.num_hidden_layers = 2;
  c.text_config.num_attention_heads = 2;
  c.text_config.max_position_embeddings = o.max_position_embeddings;
  c.vision_config.hidden_size = 32;
  c.vision_config.intermediate_size = 64;
  c.vision_config.num_hidden_layers = o.vision_layers;
  c.vision_config.num_attention_heads = 2;
  c.vision_config.image_size = 64;
  c.projection_dim = 24;
  c.reduce_dim = 16;
  c.decoder_num_attention_heads = 2;
  c.decoder_intermediate_size = 32;
  c.extract_layers = o.extract_layers;
  CLIPSegForImageSegmentation<float> model(c, o.seed);
  for (auto* t : {&model.decoder.tconv4.weight, &model.decoder.tconv4.bias}) {
    Tensor<float>& w = t->data();
    for (int64_t i = 0; i < w.numel(); ++i) w.data()[i] *= 20.0f;
  }
  const nlohmann::json pre = {{"do_resize", true},     {"size", {{"height", o.height}, {"width", o.width}}},
                              {"resample", 2},         {"do_rescale", true},
                              {"rescale_factor", 1 / 255.0}, {"do_normalize", true},
                              {"image_processor_type", "ViTImageProcessor"}};
  save_pretrained(model, folder, &pre);
  nlohmann::json vocab = nlohmann::json::object();
  int64_t id = 0;
  for (char ch = 'a'; ch <= 'z'; ++ch) vocab[std::string(1, ch)] = id++;
  for (char ch = 'a'; ch <= 'z'; ++ch) vocab[std::string(1, ch) + "</w>"] = id++;
  for (const char* t : {".", ".</w>", "ro", "roa", "road</w>", "ca", "car</w>", "<|startoftext|>", "<|endoftext|>"})
    vocab[t] = id++;
  std::ofstream(std::filesystem::path(folder) / "vocab.json", std::ios::binary) << vocab.dump();
  std::ofstream(std::filesystem::path(folder) / "merges.txt", std::ios::binary)
      << "#version: 0.2\nr o\nro a\nroa d</w>\nc a\nca r</w>\n";
  return folder;
}

}  // namespace segml::test
