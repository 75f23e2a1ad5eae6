// Translation unit A of the link test: includes everything and uses a few entry points.
#include <segml/segformer.hpp>
#include <segml/models/clip/tokenization_clip.hpp>
#ifdef SEGML_HAVE_MPI
#include <segml/distributed/mpi.hpp>  // the one header that needs MPI
#endif

int tu_b_entry();

int main() {
  segml::Tensor<float> t = segml::Tensor<float>::ones({2, 3});
  const int b = tu_b_entry();
  return (t.numel() == 6 && b == 6) ? 0 : 1;
}
