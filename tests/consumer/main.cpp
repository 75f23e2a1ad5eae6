#include <segml/segformer.hpp>

#include <cstdio>

int main() {
  segml::Tensor<float> t = segml::Tensor<float>::ones({2, 3});
  std::printf("consumer: segml found, tensor of %lld elements, isa %s, %d threads\n",
              static_cast<long long>(t.numel()), segml::isa_name(segml::isa()), segml::num_threads());
  return t.numel() == 6 ? 0 : 1;
}
