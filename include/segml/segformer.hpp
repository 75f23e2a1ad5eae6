// segml/segformer.hpp: the one header users include.
//
// segml is a header-only C++20 library that trains and runs SegFormer semantic segmentation on the
// CPU. Layers, bottom to top (arrows point down only):
//   core/      Tensor, errors, CPU/ISA dispatch, threads
//   kernels/   raw-pointer forward + backward kernels, each next to its scalar reference twin
//   autograd/  Var, the graph, backward(), gradcheck
//   ops/       differentiable functional ops (kernels + graph)
//   io/        safetensors
#pragma once

#include "segml/core/cpu.hpp"
#include "segml/core/error.hpp"
#include "segml/core/parallel.hpp"
#include "segml/core/tensor.hpp"
#include "segml/autograd/variable.hpp"
#include "segml/autograd/gradcheck.hpp"
#include "segml/io/safetensors.hpp"
