// segml/segformer.hpp: the one header users include.
//
// segml is a header-only C++20 library that trains and runs SegFormer semantic segmentation on the
// CPU. Layers, bottom to top (arrows point down only; see docs/architecture.md):
//   core/      Tensor, errors, ISA detection, threads, RNG, durable file writes
//   simd/      vector operations per ISA (AVX-512, AVX2, NEON, scalar) and the dispatch into them
//   kernels/   raw-pointer forward + backward kernels, each next to its scalar reference twin
//   autograd/  Var, the graph, backward(), gradcheck
//   ops/       differentiable functional ops (kernels + graph)
//   nn/        layers with HF-style parameter names
//   models/    SegformerConfig, SegformerForSemanticSegmentation; clip/ (CLIPTokenizer) and clipseg/
//              (CLIPSeg: zero-shot segmentation from text prompts, segml/clipseg.hpp)
//   io/        safetensors, config.json, images, image processor, from_pretrained / save_pretrained
//   data/      datasets, procedural street scenes (need stb for image files)
//   train/     optimizers, schedules, metrics
#pragma once

#include "segml/core/cpu.hpp"
#include "segml/core/error.hpp"
#include "segml/core/parallel.hpp"
#include "segml/core/random.hpp"
#include "segml/core/tensor.hpp"
#include "segml/autograd/variable.hpp"
#include "segml/autograd/gradcheck.hpp"
#include "segml/ops/activation.hpp"
#include "segml/ops/attention.hpp"
#include "segml/ops/concat.hpp"
#include "segml/ops/conv.hpp"
#include "segml/ops/dropout.hpp"
#include "segml/ops/elementwise.hpp"
#include "segml/ops/embedding.hpp"
#include "segml/ops/linear.hpp"
#include "segml/ops/loss.hpp"
#include "segml/ops/norm.hpp"
#include "segml/ops/resize.hpp"
#include "segml/nn/module.hpp"
#include "segml/models/config.hpp"
#include "segml/models/segformer.hpp"
#include "segml/models/segformer_inference.hpp"
#include "segml/io/safetensors.hpp"
#include "segml/io/checkpoint.hpp"
#include "segml/io/image.hpp"
#include "segml/io/image_processor.hpp"
#include "segml/io/overlay.hpp"
#include "segml/clipseg.hpp"
#include "segml/train/metrics.hpp"
#include "segml/train/optim.hpp"
#include "segml/train/schedule.hpp"
#if SEGML_HAVE_STB
#include "segml/data/dataset.hpp"
#include "segml/data/synthetic_scenes.hpp"
#include "segml/train/augment.hpp"
#include "segml/train/evaluation.hpp"
#include "segml/train/plot.hpp"
#include "segml/train/prefetch.hpp"
#include "segml/train/trainer.hpp"
#endif
