// segml/clipseg.hpp: zero-shot segmentation from text prompts with CLIPSeg (HF's
// CLIPSegForImageSegmentation, e.g. CIDAS/clipseg-rd64-refined). Also included by segml/segformer.hpp.
//   models/clip/      CLIPTokenizer (HF's slow CLIP tokenizer; Unicode through utf8proc when built with it)
//   models/clipseg/   CLIPSegConfig, CLIPSegForImageSegmentation (HF module names, autograd),
//                     clipseg_from_pretrained / save_pretrained, CLIPSegInference (the fast engine),
//                     the image processor and the zero-shot post-processing
// See docs/zero_shot.md.
#pragma once

#include "segml/models/clip/tokenization_clip.hpp"
#include "segml/models/clipseg/configuration_clipseg.hpp"
#include "segml/models/clipseg/modeling_clipseg.hpp"
#include "segml/models/clipseg/clipseg_inference.hpp"
#include "segml/models/clipseg/pretrained_clipseg.hpp"
#include "segml/models/clipseg/processing_clipseg.hpp"
